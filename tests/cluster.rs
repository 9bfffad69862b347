//! `foreshard node` as a storage host of a cluster: three etcd members and the node in
//! network namespaces (crates/cluster/tests/net), as root.

#[path = "../crates/cluster/tests/net/mod.rs"]
mod net;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use foreshard_cluster::keys::ClusterUrl;
use foreshard_cluster::map::Map;
use foreshard_cluster::records::{decode, DiskRecord, HostRec};
use foreshard_cluster::wire::{
    block_sums, Class, ClientConfig, Ctx, ExtentId, Peer, ReadReq, WriteReq,
};
use net::{rt, wait_for, Net};

const BIN: &str = env!("CARGO_BIN_EXE_foreshard");

const SECRET: [u8; 32] = [0x5a; 32];

fn secret_file(dir: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("secret");
    std::fs::write(&p, SECRET).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.display().to_string()
}

fn node_args(net: &Net, url: &str, disks: &[&Path]) -> Vec<String> {
    let mut a: Vec<String> = ["node", "--cluster", url, "--name", "s1", "--rack", "r1"]
        .map(String::from)
        .to_vec();
    a.extend(["--listen".into(), format!("{}:7070", net.ip("s1"))]);
    a.extend(["--lease-ttl-s".into(), "2".into()]);
    a.extend(["--secret-file".into(), secret_file(&net.dir)]);
    a.extend([
        "--audit-log".into(),
        net.dir.join("audit.log").display().to_string(),
    ]);
    for d in disks {
        a.extend(["--disk".into(), d.display().to_string()]);
    }
    a
}

#[test]
fn a_node_joins_dies_and_comes_back() {
    if !net::available() {
        return;
    }
    let mut net = Net::new(&["e1", "e2", "e3", "s1"]);
    let url = net.etcd(&["e1", "e2", "e3"], "t");
    let disks = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let dp: Vec<&Path> = disks.iter().map(|d| d.path()).collect();
    let args = node_args(&net, &url, &dp);
    let pid = net.spawn("s1", BIN, &args, "node1.log");
    rt().block_on(async {
        let map = Map::connect(&ClusterUrl::parse(&url).unwrap())
            .await
            .unwrap();
        let k = map.keys().clone();
        let first = wait_for(&map, &k.host("s1"), true, Duration::from_secs(20))
            .await
            .unwrap();
        let disks = map.read_prefix(&k.disks()).await.unwrap();
        assert_eq!(disks.kvs.len(), 2);
        for kv in &disks.kvs {
            let d = decode::<DiskRecord>(&kv.key, &kv.value).unwrap().body;
            assert_eq!((d.host.as_str(), d.rack.as_deref()), ("s1", Some("r1")));
        }
        let v = hosts_json(&url);
        assert_eq!(v["hosts"][0]["name"], "s1");
        assert_eq!(v["hosts"][0]["alive"], true);
        assert_eq!(v["hosts"][0]["rack"], "r1");
        assert_eq!(v["hosts"][0]["disks"].as_array().unwrap().len(), 2);
        assert!(v["hosts"][0]["disks"][0]["free_bytes"].as_u64().unwrap() > 0);
        let host = decode::<HostRec>(&first.key, &first.value).unwrap().body;
        extents_over_the_network(&host.addr).await;
        // kill -9: nobody revokes the lease; it lapses within its TTL (+1 s).
        net.signal(pid, libc::SIGKILL);
        let t0 = Instant::now();
        wait_for(&map, &k.host("s1"), false, Duration::from_secs(10)).await;
        let lived = t0.elapsed();
        assert!(
            lived < Duration::from_secs(3) + Duration::from_millis(500),
            "{lived:?}"
        );
        // Started again on the same disks: the same uuids, a new lease.
        let pid2 = net.spawn("s1", BIN, &args, "node2.log");
        let back = wait_for(&map, &k.host("s1"), true, Duration::from_secs(20))
            .await
            .unwrap();
        assert_ne!(back.lease, first.lease);
        assert_eq!(map.read_prefix(&k.disks()).await.unwrap().kvs.len(), 2);
        // SIGTERM: it leaves at once (the lease revoked, not left to lapse) and exits 0.
        net.signal(pid2, libc::SIGTERM);
        wait_for(&map, &k.host("s1"), false, Duration::from_millis(1500)).await;
        // The key goes with the lease; the process finishes its shut-down just after.
        let st = net.wait_exit(pid2, Duration::from_secs(10));
        assert!(st.is_some_and(|s| s.success()), "{st:?}");
    });
    let audit = std::fs::read_to_string(net.dir.join("audit.log")).unwrap();
    assert!(
        audit.contains(r#""op":"write""#) && audit.contains(r#""accepted":true"#),
        "{audit}"
    );
    let log = std::fs::read_to_string(net.dir.join("node2.log")).unwrap();
    assert!(
        log.contains("joined cluster t") && log.contains("left the cluster"),
        "{log}"
    );
}

fn hosts_json(url: &str) -> serde_json::Value {
    let o = Command::new(BIN)
        .args(["hosts", "--cluster", url, "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = Command::new(BIN)
        .args(["hosts", "--cluster", url])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("s1"));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The node serves its disks: a write and a partial read through the extent service, and
/// a connection with the wrong secret refused.
async fn extents_over_the_network(addr: &str) {
    let addr = addr.parse().unwrap();
    let wrong = ClientConfig::new("t", "intruder", [0x11; 32]);
    assert!(
        Peer::connect(addr, wrong).await.is_err(),
        "wrong secret let in"
    );
    let peer = Peer::connect(addr, ClientConfig::new("t", "m1", SECRET))
        .await
        .unwrap();
    assert_eq!(peer.host(), "s1");
    assert_eq!(peer.disks().len(), 2);
    let ctx0 = Ctx::new(1, Class::Client);
    for disk in 0..2 {
        peer.probe(ctx0, disk).await.unwrap();
    }
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let bs: u32 = 16 * 1024;
    let sums = block_sums(&data, bs);
    let id = ExtentId {
        inode: 5,
        index: 1,
        version: 9,
    };
    let ctx = Ctx::new(1, Class::Client);
    let w = WriteReq {
        disk: 1,
        id,
        shard: 3,
        epoch: 1,
        block_bytes: bs,
        sums: sums.clone(),
    };
    peer.write(ctx, &w, &data).await.unwrap();
    let r = ReadReq::covering(1, id, (40_000, 100_000), bs, &sums);
    assert_eq!(peer.read(ctx, &r).await.unwrap(), &data[40_000..140_000]);
}

#[test]
fn bad_node_arguments_fail_clearly() {
    let d = tempfile::tempdir().unwrap();
    let disk = d.path().display().to_string();
    let secret = secret_file(d.path());
    let cases: [(&[&str], &str); 6] = [
        (
            &["--cluster", "http://x:1", "--disk", &disk, "--name", "a"],
            "etcd://",
        ),
        (
            &["--cluster", "etcd://127.0.0.1:1", "--disk", &disk],
            "--recovery-mib-s",
        ),
        (
            &["--cluster", "etcd://127.0.0.1:1", "--disk", &disk],
            "advertise",
        ),
        (
            &[
                "--cluster",
                "etcd://127.0.0.1:1",
                "--disk",
                "/nonexistent-fs",
                "--name",
                "a",
                "--listen",
                "127.0.0.1:7070",
            ],
            "no such directory",
        ),
        (
            &[
                "--cluster",
                "etcd://127.0.0.1:1",
                "--disk",
                &disk,
                "--name",
                "a/b",
                "--listen",
                "127.0.0.1:7070",
            ],
            "host name",
        ),
        // Nothing listens on port 1: a clear error within the connect time-out.
        (
            &[
                "--cluster",
                "etcd://127.0.0.1:1",
                "--disk",
                &disk,
                "--name",
                "a",
                "--listen",
                "127.0.0.1:7070",
            ],
            "etcd",
        ),
    ];
    for (i, (args, want)) in cases.into_iter().enumerate() {
        let t0 = Instant::now();
        // The second case: a rate cap out of range.
        let cap: &[&str] = if i == 1 {
            &["--recovery-mib-s", "100001"]
        } else {
            &[]
        };
        let o = Command::new(BIN)
            .arg("node")
            .args(args)
            .args(cap)
            .args(["--secret-file", &secret])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{args:?} took {:?}",
            t0.elapsed()
        );
    }
}
