//! The cluster map against a real etcd cluster: three members in network namespaces
//! (tests/net), as root. Step 2 and 3 of docs/cluster.md's plan.

mod net;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use foreshard_cluster::batch::{Change, Expect, Term};
use foreshard_cluster::keys::ClusterUrl;
use foreshard_cluster::map::{CasOutcome, Map};
use foreshard_cluster::member::join;
use foreshard_cluster::records::{encode, HostRec};
use foreshard_cluster::watch::{MapWatch, WatchEvent};
use net::{rt, wait_for, Net};

fn cluster() -> Option<(Net, ClusterUrl)> {
    if !net::available() {
        return None;
    }
    let mut net = Net::new(&["e1", "e2", "e3"]);
    let url = net.etcd(&["e1", "e2", "e3"], "t");
    Some((net, ClusterUrl::parse(&url).unwrap()))
}

fn host_rec(boot: &str) -> HostRec {
    HostRec {
        addr: "10.0.0.9:7070".into(),
        boot_id: boot.into(),
        pid: std::process::id(),
        version: "test".into(),
        started_ms: 0,
    }
}

fn put(key: &str, n: u64) -> Change {
    Change::put(
        key.into(),
        Expect::Absent,
        encode(n, &serde_json::json!({ "n": n })),
    )
}

/// The child side of `a_paused_member_loses_its_lease_and_joins_again`: joins and holds.
#[test]
#[ignore]
fn child_member() {
    let Ok(url) = std::env::var("FSC_CHILD_URL") else {
        return;
    };
    rt().block_on(async {
        let map = Map::connect(&ClusterUrl::parse(&url).unwrap())
            .await
            .unwrap();
        let m = join(&map, "s1", &host_rec("child"), 2).await.unwrap();
        println!("joined lease {}", m.lease());
        tokio::time::sleep(Duration::from_secs(600)).await;
    });
}

#[test]
fn cas_conflicts_and_the_term_fence() {
    let Some((_net, url)) = cluster() else { return };
    rt().block_on(async {
        let map = Map::connect(&url).await.unwrap();
        let k = map.keys().clone();
        let a = k.shard("p", 1);
        let r = map.cas(1, &[put(&a, 1)], None).await.unwrap();
        let CasOutcome::Applied { .. } = r else {
            panic!("{r:?}")
        };
        // Creating it again: refused, and the current record comes back in the same answer.
        match map.cas(2, &[put(&a, 2)], None).await.unwrap() {
            CasOutcome::Conflict { current } => {
                assert_eq!(current.len(), 1);
                assert_eq!(current[0].value, encode(1, &serde_json::json!({ "n": 1 })));
            }
            other => panic!("{other:?}"),
        }
        // A retry of the applied batch (same op, same values) counts as applied.
        assert!(matches!(
            map.cas(1, &[put(&a, 1)], None).await.unwrap(),
            CasOutcome::Applied { .. }
        ));
        let rev = map.get(&a).await.unwrap().unwrap().mod_revision;
        let upd = |rev, n| {
            Change::put(
                a.clone(),
                Expect::Revision(rev),
                encode(n, &serde_json::json!({ "n": n })),
            )
        };
        assert!(matches!(
            map.cas(3, &[upd(rev, 3)], None).await.unwrap(),
            CasOutcome::Applied { .. }
        ));
        assert!(matches!(
            map.cas(4, &[upd(rev, 4)], None).await.unwrap(),
            CasOutcome::Conflict { .. }
        ));
        // The term: a change under a term that no longer holds is Deposed.
        let active = k.meta_active("p");
        map.cas(5, &[put(&active, 5)], None).await.unwrap();
        let term_rev = map.get(&active).await.unwrap().unwrap().create_revision;
        let t = Term {
            key: active.clone(),
            create_revision: term_rev,
        };
        let b = k.shard("p", 2);
        assert!(matches!(
            map.cas(6, &[put(&b, 6)], Some(&t)).await.unwrap(),
            CasOutcome::Applied { .. }
        ));
        let old = map.get(&active).await.unwrap().unwrap();
        map.cas(7, &[Change::delete(active.clone(), old.mod_revision)], None)
            .await
            .unwrap();
        map.cas(8, &[put(&active, 8)], None).await.unwrap(); // another host's term
        assert_eq!(
            map.cas(9, &[put(&k.shard("p", 3), 9)], Some(&t))
                .await
                .unwrap(),
            CasOutcome::Deposed
        );
        assert!(map.get(&k.shard("p", 3)).await.unwrap().is_none());
        // 250 records: three transactions, one snapshot read of them all.
        let many: Vec<Change> = (100..350).map(|s| put(&k.shard("q", s), 10)).collect();
        let outs = map.commit(10, many, None).await.unwrap();
        assert_eq!(
            outs.iter().map(|o| o.0.len()).collect::<Vec<_>>(),
            [100, 100, 50]
        );
        assert!(outs
            .iter()
            .all(|o| matches!(o.1, CasOutcome::Applied { .. })));
        assert_eq!(
            map.read_prefix(&k.shards("q")).await.unwrap().kvs.len(),
            250
        );
    });
}

#[test]
fn two_joins_of_one_name() {
    let Some((_net, url)) = cluster() else { return };
    rt().block_on(async {
        let map = Map::connect(&url).await.unwrap();
        let first = join(&map, "s1", &host_rec("boot-a"), 2).await.unwrap();
        // Another machine under the same name: refused, naming both.
        let e = join(&map, "s1", &host_rec("boot-b"), 2)
            .await
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("another machine"), "{e:#}");
        // The same boot (a restart): waits for the old lease, then joins.
        drop(first); // keep-alives stop; the lease lapses within its TTL
        let t0 = Instant::now();
        let second = join(&map, "s1", &host_rec("boot-a"), 2).await.unwrap();
        let waited = t0.elapsed();
        assert!(waited < Duration::from_secs(4), "waited {waited:?}");
        let held = map.get(&map.keys().host("s1")).await.unwrap().unwrap();
        assert_eq!(held.lease, second.lease());
        second.leave(&map).await.unwrap();
        assert!(map.get(&map.keys().host("s1")).await.unwrap().is_none());
    });
}

#[test]
fn a_paused_member_loses_its_lease_and_joins_again() {
    let Some((mut net, url)) = cluster() else {
        return;
    };
    let exe = std::env::current_exe().unwrap();
    let url_s = format!(
        "etcd://{}/{}",
        url.endpoints
            .iter()
            .map(|e| e.trim_start_matches("http://"))
            .collect::<Vec<_>>()
            .join(","),
        url.cluster
    );
    let pid = spawn_child(&mut net, &exe, &url_s);
    rt().block_on(async {
        let map = Map::connect(&url).await.unwrap();
        let key = map.keys().host("s1");
        let first = wait_for(&map, &key, true, Duration::from_secs(20))
            .await
            .unwrap();
        net.signal(pid, libc::SIGSTOP);
        let t0 = Instant::now();
        wait_for(&map, &key, false, Duration::from_secs(10)).await;
        let gone = t0.elapsed();
        // TTL 2 s (+ 1 s for the keep-alive period and etcd's own lease checks).
        assert!(
            gone <= Duration::from_secs(3) + Duration::from_millis(500),
            "lease lived {gone:?}"
        );
        net.signal(pid, libc::SIGCONT);
        let back = wait_for(&map, &key, true, Duration::from_secs(10))
            .await
            .unwrap();
        assert_ne!(back.lease, first.lease, "rejoined under a new lease");
    });
}

fn spawn_child(net: &mut Net, exe: &std::path::Path, url: &str) -> u32 {
    // `ip netns exec` keeps the environment; the child test joins from inside e1.
    std::env::set_var("FSC_CHILD_URL", url);
    let args = ["child_member", "--exact", "--ignored", "--nocapture"].map(String::from);
    let pid = net.spawn("e1", exe.to_str().unwrap(), &args, "child.log");
    std::env::remove_var("FSC_CHILD_URL");
    pid
}

#[test]
fn a_watch_across_a_compaction_converges_to_a_fresh_read() {
    let Some((_net, url)) = cluster() else { return };
    rt().block_on(async {
        let map = Map::connect(&url).await.unwrap();
        let prefix = map.keys().shards("p");
        let k = |s| map.keys().shard("p", s);
        for s in 0..20 {
            map.cas(s as u64, &[put(&k(s), s as u64)], None)
                .await
                .unwrap();
        }
        let snap = map.read_prefix(&prefix).await.unwrap();
        let mut mine: BTreeMap<String, Vec<u8>> = snap
            .kvs
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect();
        let mut w = MapWatch::start(&map, &prefix, snap.revision).await.unwrap();
        for s in 20..30 {
            map.cas(s as u64, &[put(&k(s), s as u64)], None)
                .await
                .unwrap();
        }
        let old = map.get(&k(3)).await.unwrap().unwrap();
        map.cas(99, &[Change::delete(k(3), old.mod_revision)], None)
            .await
            .unwrap();
        let mut resyncs = apply(&mut w, &mut mine, 11).await;
        assert_eq!(resyncs, 0);
        // A watcher that falls behind a compaction reads again and still converges.
        let behind = w.revision();
        drop(w);
        for s in 30..40 {
            map.cas(s as u64, &[put(&k(s), s as u64)], None)
                .await
                .unwrap();
        }
        let now = map.read_prefix(&prefix).await.unwrap().revision;
        map.compact(now).await.unwrap();
        let mut w = MapWatch::start(&map, &prefix, behind).await.unwrap();
        resyncs += apply(&mut w, &mut mine, 1).await;
        assert_eq!(resyncs, 1);
        let fresh = map.read_prefix(&prefix).await.unwrap();
        let want: BTreeMap<String, Vec<u8>> =
            fresh.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
        assert_eq!(mine, want);
        assert_eq!(want.len(), 39);
    });
}

/// Applies `n` events to `mine`; returns how many were resyncs.
async fn apply(w: &mut MapWatch, mine: &mut BTreeMap<String, Vec<u8>>, n: usize) -> usize {
    let mut resyncs = 0;
    for _ in 0..n {
        let ev = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("no event")
            .unwrap();
        match ev {
            WatchEvent::Put(kv) => {
                mine.insert(kv.key, kv.value);
            }
            WatchEvent::Delete { key, .. } => {
                mine.remove(&key);
            }
            WatchEvent::Resync(s) => {
                resyncs += 1;
                *mine = s.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
            }
        }
    }
    resyncs
}

#[test]
fn a_member_cut_off_gives_no_stale_read() {
    let Some((net, url)) = cluster() else { return };
    rt().block_on(async {
        let map = Map::connect(&url).await.unwrap();
        let key = map.keys().pool_config("p");
        map.cas(1, &[put(&key, 1)], None).await.unwrap();
        // A client that can only reach e3.
        let only3 = ClusterUrl {
            endpoints: vec![url.endpoints[2].clone()],
            cluster: url.cluster.clone(),
        };
        let m3 = Map::connect(&only3).await.unwrap();
        assert!(m3.get(&key).await.unwrap().is_some());
        net.cut("e3");
        let old = map.get(&key).await.unwrap().unwrap();
        let new = encode(2, &serde_json::json!({ "n": 2 }));
        let ch = Change::put(key.clone(), Expect::Revision(old.mod_revision), new.clone());
        assert!(matches!(
            map.cas(2, &[ch], None).await.unwrap(),
            CasOutcome::Applied { .. }
        ));
        // Cut off, e3 still holds the old value; a linearizable read must not return it.
        match m3.get(&key).await {
            Ok(Some(kv)) => assert_eq!(kv.value, new, "stale read from a cut-off member"),
            Ok(None) => panic!("record vanished"),
            Err(e) => eprintln!("cut-off member refused, as it should: {e:#}"),
        }
        net.heal("e3");
        let t0 = Instant::now();
        loop {
            if let Ok(Some(kv)) = m3.get(&key).await {
                assert_eq!(kv.value, new);
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "e3 never caught up");
        }
    });
}

#[test]
fn the_map_outlives_its_leader() {
    let Some((mut net, url)) = cluster() else {
        return;
    };
    let tag = net.tag().to_string();
    rt().block_on(async {
        let map = Map::connect(&url).await.unwrap();
        let health = map.spawn_health();
        let key = map.keys().pool_config("p");
        map.cas(0, &[put(&key, 0)], None).await.unwrap();
        let leader = net.leader().expect("a leader");
        let (mut ok, mut failed, mut gap_max) = (0, 0, Duration::ZERO);
        let mut last_ok = Instant::now();
        let t0 = Instant::now();
        let mut killed = false;
        while t0.elapsed() < Duration::from_secs(8) {
            if !killed && t0.elapsed() > Duration::from_secs(1) {
                net.kill(&leader);
                killed = true;
            }
            let cur = map.get(&key).await.ok().flatten();
            let r = match cur {
                Some(kv) => {
                    let n = ok as u64 + 1;
                    let ch = Change::put(
                        key.clone(),
                        Expect::Revision(kv.mod_revision),
                        encode(n, &serde_json::json!({ "n": n })),
                    );
                    map.cas(n, &[ch], None).await.ok()
                }
                None => None,
            };
            if matches!(r, Some(CasOutcome::Applied { .. })) {
                ok += 1;
                gap_max = gap_max.max(last_ok.elapsed());
                last_ok = Instant::now();
            } else {
                failed += 1;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        health.abort();
        eprintln!(
            "leader {leader} killed: {ok} CAS applied, {failed} failed, longest gap {gap_max:?}"
        );
        assert!(ok >= 30, "only {ok} CAS applied");
        assert!(
            gap_max < Duration::from_secs(5),
            "map unavailable for {gap_max:?}"
        );
    });
    drop(net);
    assert!(
        Net::namespaces_of(&tag).is_empty(),
        "namespaces left behind"
    );
}

#[test]
fn a_node_registers_its_disks_and_leaves() {
    use foreshard_cluster::node::{Node, NodeConfig};
    use foreshard_cluster::records::{decode, DiskRecord};
    let Some((_net, url)) = cluster() else { return };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let cfg = |name: &str, adopt| NodeConfig {
        name: name.into(),
        disks: dirs.iter().map(|d| d.path().to_path_buf()).collect(),
        rack: Some("r1".into()),
        addr: "10.0.0.9:7070".into(),
        lease_ttl_s: 3,
        adopt,
    };
    rt().block_on(async {
        let map = Map::connect(&url).await.unwrap();
        let node = Node::start(&map, cfg("s1", false)).await.unwrap();
        let uuids: Vec<String> = node.disks.iter().map(|d| d.0.clone()).collect();
        let k = map.keys().clone();
        for u in &uuids {
            let kv = map.get(&k.disk(u)).await.unwrap().expect("disk record");
            let rec = decode::<DiskRecord>(&kv.key, &kv.value).unwrap().body;
            assert_eq!(
                (rec.host.as_str(), rec.rack.as_deref(), rec.pool),
                ("s1", Some("r1"), None)
            );
            let st = map.get(&k.disk_stat(u)).await.unwrap().expect("diskstat");
            assert_eq!(st.lease, node.membership.lease());
        }
        assert!(map.get(&k.host_info("s1")).await.unwrap().is_some());
        let stop = tokio::time::sleep(Duration::from_millis(300));
        node.run(&map, Duration::from_millis(100), stop)
            .await
            .unwrap();
        // Left: the host and its stats are gone at once; the disks stay registered.
        assert!(map.get(&k.host("s1")).await.unwrap().is_none());
        assert!(map.get(&k.disk_stat(&uuids[0])).await.unwrap().is_none());
        assert!(map.get(&k.disk(&uuids[0])).await.unwrap().is_some());
        // Its disks under another name: refused, then adopted with the same uuids.
        let e = Node::start(&map, cfg("s2", false)).await.err().unwrap();
        assert!(format!("{e:#}").contains("--adopt"), "{e:#}");
        let again = Node::start(&map, cfg("s2", true)).await.unwrap();
        assert_eq!(
            again.disks.iter().map(|d| d.0.clone()).collect::<Vec<_>>(),
            uuids
        );
        let kv = map.get(&k.disk(&uuids[1])).await.unwrap().unwrap();
        assert_eq!(
            decode::<DiskRecord>(&kv.key, &kv.value).unwrap().body.host,
            "s2"
        );
    });
}
