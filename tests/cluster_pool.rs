//! A pool over storage hosts (docs/cluster.md, step 8): three etcd members and four
//! `foreshard node`s in network namespaces (crates/cluster/tests/net), the metadata host is
//! this process's namespace (it reaches every host through its own veth), as root.

#[path = "../crates/cluster/tests/net/mod.rs"]
mod net;

mod common;

#[path = "cluster_pool/bench.rs"]
mod bench;
#[path = "cluster_pool/soak.rs"]
mod soak;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{fuse_available, pattern, run, run_ok};
use foreshard_cluster::keys::ClusterUrl;
use foreshard_cluster::map::Map;
use foreshard_cluster::records::{decode, DiskRecord, MetaActive, ShardRecord};
use net::{rt, Net};

const BIN: &str = env!("CARGO_BIN_EXE_foreshard");
const SECRET: [u8; 32] = [0x3c; 32];

struct Cluster {
    net: Net,
    url: String,
    secret: String,
    /// Each storage host's disk directories.
    disks: BTreeMap<String, Vec<PathBuf>>,
    tmp: tempfile::TempDir,
    /// The test's runtime: the map's connection lives on it.
    rt: tokio::runtime::Runtime,
    map: Map,
}

/// A size from the environment (the benches' and soaks' FSX_* knobs), else `default`.
fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).map_or(default, |v| v.parse().expect(name))
}

fn secret_file(dir: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("secret");
    std::fs::write(&p, SECRET).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p.display().to_string()
}

/// etcd x3 and `hosts` storage hosts with two disks each, all registered.
fn cluster(hosts: &[&str]) -> Cluster {
    cluster_started(hosts, hosts.len())
}

/// etcd x3 and namespaces for `hosts`, of which the first `started` run a node now (the
/// others through `Cluster::start_node`).
fn cluster_started(hosts: &[&str], started: usize) -> Cluster {
    let mut names = vec!["e1", "e2", "e3"];
    names.extend_from_slice(hosts);
    let mut net = Net::new(&names);
    let url = net.etcd(&["e1", "e2", "e3"], "pool");
    let tmp = tempfile::Builder::new()
        .prefix("foreshard-cluster")
        .tempdir_in(std::env::var("FORESHARD_TEST_DIR").unwrap_or("/var/tmp".into()))
        .unwrap();
    let secret = secret_file(tmp.path());
    let rt = rt();
    let map = rt
        .block_on(Map::connect(&ClusterUrl::parse(&url).unwrap()))
        .unwrap();
    let mut c = Cluster {
        net,
        url,
        secret,
        disks: BTreeMap::new(),
        tmp,
        rt,
        map,
    };
    for h in &hosts[..started] {
        c.start_node(h);
    }
    c.wait_disks(2 * started);
    c
}

impl Cluster {
    fn health_dir(&self, h: &str) -> PathBuf {
        self.tmp.path().join(format!("{h}-health"))
    }

    /// `foreshard node` on host `h` with two new disk directories.
    fn start_node(&mut self, h: &str) {
        let ds: Vec<PathBuf> = (0..2)
            .map(|i| self.tmp.path().join(format!("{h}-d{i}")))
            .collect();
        for d in &ds {
            std::fs::create_dir(d).unwrap();
        }
        // SMART from health files (N.prom for the N-th disk), published every second.
        std::fs::create_dir(self.health_dir(h)).unwrap();
        self.disks.insert(h.to_string(), ds);
        self.spawn_node(h, &format!("{h}.log"));
    }

    /// `foreshard node` on `h` again (after a kill), with the disks it had; logs to `log`.
    fn spawn_node(&mut self, h: &str, log: &str) -> u32 {
        let mut a: Vec<String> = ["node", "--cluster", &self.url, "--name", h]
            .map(String::from)
            .to_vec();
        a.extend(["--listen".into(), format!("{}:7070", self.net.ip(h))]);
        a.extend(["--lease-ttl-s".into(), "3".into(), "--secret-file".into()]);
        a.push(self.secret.clone());
        let audit = self.tmp.path().join(format!("{h}.audit"));
        a.extend(["--audit-log".into(), audit.display().to_string()]);
        for d in &self.disks[h] {
            a.extend(["--disk".into(), d.display().to_string()]);
        }
        let health = self.health_dir(h);
        a.extend(["--health-dir".into(), health.display().to_string()]);
        a.extend(["--no-smartctl", "--stat-interval-s", "1"].map(String::from));
        self.net.spawn(h, BIN, &a, log)
    }
}

impl Cluster {
    fn get(&self, key: &str) -> Option<foreshard_cluster::map::Kv> {
        self.rt.block_on(self.map.get(key)).unwrap()
    }

    fn wait_disks(&self, n: usize) {
        let t0 = Instant::now();
        let map = &self.map;
        loop {
            let (hosts, disks) = self.rt.block_on(async {
                let k = map.keys();
                let h = map.read_prefix(&k.hosts()).await.unwrap().kvs.len();
                (h, map.read_prefix(&k.disks()).await.unwrap().kvs.len())
            });
            if disks >= n && hosts * 2 >= n {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "{disks} of {n} disks registered: {}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for h in self.disks.keys() {
            let log = std::fs::read_to_string(self.net.dir.join(format!("{h}.log")));
            out += &format!("--- {h}\n{}\n", log.unwrap_or_default());
        }
        out
    }

    fn init_args(&self, pool: &Path) -> Vec<String> {
        let p = pool.display().to_string();
        ["init", &p, "--cluster", &self.url, "--replicas", "2"]
            .into_iter()
            .chain(["--secret-file", &self.secret, "--name", "m1"])
            .map(String::from)
            .collect()
    }

    /// `foreshard mount`; on a failure the hosts' logs and the daemon's go in the panic.
    fn mount(&self, pool: &str, mnt: &str) {
        let o = run(&["mount", pool, mnt]);
        if !o.status.success() {
            let log = std::fs::read_to_string(Path::new(pool).join("foreshard.log"));
            panic!(
                "mount failed: {}\n{}--- daemon\n{}",
                String::from_utf8_lossy(&o.stderr),
                self.logs(),
                log.unwrap_or_default()
            );
        }
    }

    /// Extent files (not temporaries) on each host's disks.
    fn files_per_host(&self) -> BTreeMap<String, usize> {
        let hosts = self.disks.keys();
        hosts
            .map(|h| (h.clone(), self.extent_sizes(h).len()))
            .collect()
    }

    /// The sizes of the extent files (not temporaries) on `h`'s disks.
    fn extent_sizes(&self, h: &str) -> Vec<u64> {
        let mut out = Vec::new();
        for d in &self.disks[h] {
            for b in std::fs::read_dir(d.join("extents")).unwrap().flatten() {
                for e in std::fs::read_dir(b.path()).into_iter().flatten().flatten() {
                    if !e.file_name().to_string_lossy().ends_with(".tmp") {
                        out.push(e.metadata().map_or(0, |m| m.len()));
                    }
                }
            }
        }
        out
    }
}

/// The pool's shards in the map, and which host each pool disk is on.
fn shards_and_hosts(c: &Cluster, pool_id: &str) -> (Vec<ShardRecord>, HashMap<u32, String>) {
    let map = &c.map;
    c.rt.block_on(async {
        let k = map.keys();
        let shards = map.read_prefix(&k.shards(pool_id)).await.unwrap().kvs;
        let shards = shards
            .iter()
            .map(|kv| decode::<ShardRecord>(&kv.key, &kv.value).unwrap().body)
            .collect();
        let mut hosts = HashMap::new();
        for kv in map.read_prefix(&k.disks()).await.unwrap().kvs {
            let d = decode::<DiskRecord>(&kv.key, &kv.value).unwrap().body;
            if d.pool.as_deref() == Some(pool_id) {
                hosts.insert(d.pool_disk.unwrap(), d.host);
            }
        }
        (shards, hosts)
    })
}

fn write_files(mnt: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    std::fs::create_dir(mnt.join("dir")).unwrap();
    for (i, len) in [
        0usize,
        1,
        4095,
        16_384,
        100_000,
        1 << 20,
        (3 << 20) + 17,
        9 << 20,
    ]
    .into_iter()
    .enumerate()
    {
        let p = mnt.join(format!("dir/f{i}"));
        let data = pattern(len, i as u64 + 1);
        std::fs::write(&p, &data).unwrap();
        std::fs::File::open(&p).unwrap().sync_all().unwrap();
        files.insert(p, data);
    }
    files
}

fn check_files(files: &BTreeMap<PathBuf, Vec<u8>>) {
    for (p, data) in files {
        let got = std::fs::read(p).unwrap();
        assert!(
            got == *data,
            "{} differs ({} vs {} bytes)",
            p.display(),
            got.len(),
            data.len()
        );
    }
}

#[test]
fn a_pool_over_four_hosts_writes_reads_and_remounts() {
    if !net::available() || !fuse_available() {
        return;
    }
    let c = cluster(&["s1", "s2", "s3", "s4"]);
    let pool = c.tmp.path().join("pool");
    let mnt = c.tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let a = c.init_args(&pool);
    let out = run_ok(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert!(out.contains("8 disk(s), 2 replica(s)"), "{out}");
    let pool_id = out.split_whitespace().nth(2).unwrap().to_string();
    // Every shard's two replicas on two hosts (4 hosts, 2 replicas: always possible).
    let (shards, host_of) = shards_and_hosts(&c, &pool_id);
    assert!(shards.len() >= 64, "{} shards", shards.len());
    assert_eq!(host_of.len(), 8);
    for s in &shards {
        assert_eq!(s.disks.len(), 2);
        assert_ne!(host_of[&s.disks[0]], host_of[&s.disks[1]], "{s:?}");
    }
    // A second init finds no free disk.
    let again = c.tmp.path().join("pool2");
    let o = run(&c
        .init_args(&again)
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>());
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("free disk"),
        "{o:?}"
    );
    assert!(!again.join("meta").exists());

    let (p, m) = (pool.to_str().unwrap(), mnt.to_str().unwrap());
    c.mount(p, m);
    let active_key = c.map.keys().meta_active(&pool_id);
    let active = c.get(&active_key);
    let active = decode::<MetaActive>("active", &active.expect("meta/active").value).unwrap();
    assert_eq!(active.body.host, "m1");
    let files = write_files(&mnt);
    let st: serde_json::Value = serde_json::from_str(&run_ok(&["status", p, "--json"])).unwrap();
    let hosts: Vec<&str> = st["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["host"].as_str().unwrap())
        .collect();
    assert_eq!(
        hosts,
        ["s1", "s1", "s2", "s2", "s3", "s3", "s4", "s4"],
        "{st:#}"
    );
    let text = run_ok(&["status", p]);
    let s1 = text
        .lines()
        .find(|l| l.starts_with("s1 "))
        .unwrap_or_default();
    assert!(s1.contains("2 up"), "{text}");
    common::drop_caches();
    check_files(&files);
    // The bytes are on the storage hosts, spread over all four.
    let per_host = c.files_per_host();
    assert!(per_host.values().all(|n| *n > 0), "{per_host:?}");
    let total: usize = per_host.values().sum();
    assert!(total >= 2 * 12, "{per_host:?}");
    run_ok(&["umount", m]);
    // Unmounted: the metadata lease is given back at once, not left to lapse.
    assert!(c.get(&active_key).is_none());
    let (ok, report) = common::fsck_at(&pool, false);
    assert!(ok, "{report}");
    c.mount(p, m);
    check_files(&files);
    // A removed file's extents go from the hosts too (through the reaper, once the
    // removal is durable): 9 extents x 2 replicas.
    std::fs::remove_file(mnt.join("dir/f7")).unwrap();
    let t0 = Instant::now();
    loop {
        let after: usize = c.files_per_host().values().sum();
        if after == total - 18 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{after} files left of {total}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    run_ok(&["umount", m]);
    let (ok, report) = common::fsck_at(&pool, false);
    assert!(ok && report.contains("clean"), "{report}");
}

#[test]
fn bad_cluster_init_arguments_fail_clearly() {
    let d = tempfile::tempdir().unwrap();
    let pool = d.path().join("pool");
    let p = pool.to_str().unwrap();
    let secret = secret_file(d.path());
    let cases: [(&[&str], &str); 4] = [
        (
            &["init", p, "--cluster", "etcd://127.0.0.1:1"],
            "--secret-file",
        ),
        (
            &[
                "init",
                p,
                "--cluster",
                "etcd://127.0.0.1:1",
                "--secret-file",
                &secret,
                "--disk",
                "/tmp",
            ],
            "cannot be used with",
        ),
        (
            &["init", p, "--cluster", "http://x", "--secret-file", &secret],
            "etcd://",
        ),
        // Nothing listens on port 1: a clear error, and no pool left behind.
        (
            &[
                "init",
                p,
                "--cluster",
                "etcd://127.0.0.1:1",
                "--secret-file",
                &secret,
                "--name",
                "m1",
            ],
            "etcd",
        ),
    ];
    for (args, want) in cases {
        let o = run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!pool.join("meta").exists(), "{args:?} left a pool");
    }
}

/// No accepted fenced request (write, stage, install) on any disk of the hosts' audit logs
/// has an epoch below one the same disk accepted earlier for the shard, or a lower term.
fn check_audit_logs(c: &Cluster) -> usize {
    let mut lines = 0;
    for h in c.disks.keys() {
        let path = c.tmp.path().join(format!("{h}.audit"));
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut max: HashMap<(u64, u64), u64> = HashMap::new();
        let mut term_max: HashMap<u64, u64> = HashMap::new();
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            if v["accepted"] != true {
                continue;
            }
            let (disk, shard) = (v["disk"].as_u64().unwrap(), v["shard"].as_u64().unwrap());
            let (epoch, term) = (v["epoch"].as_u64().unwrap(), v["term"].as_u64().unwrap());
            let m = max.entry((disk, shard)).or_default();
            assert!(epoch >= *m, "{h}: stale epoch accepted: {l}");
            *m = epoch;
            let t = term_max.entry(disk).or_default();
            assert!(term >= *t, "{h}: stale term accepted: {l}");
            *t = term;
            lines += 1;
        }
    }
    lines
}

/// A storage host killed (-9) while files are written and fsynced: its disks go suspect,
/// then failed after the host grace; every shard it held is rebuilt on the other three
/// hosts (each target pulling from a source host); no acknowledged write is lost, the
/// files read back identical, fsck is clean, and no host accepted a stale epoch.
#[test]
fn a_host_killed_during_writes_is_rebuilt_on_the_others() {
    if !net::available() || !fuse_available() {
        return;
    }
    let (mut c, m) = mounted_cluster(2000);
    let files = fill(&m.mnt, 24);
    // The agents' connections, made before the failure: every target host holds one to
    // each host it would pull from.
    let v = m.fsp.wait_status(30, "recovery links ready", |v| {
        let a = &v["agents"];
        a["source_links_wanted"].as_u64() > Some(0)
            && a["source_links_ready"] == a["source_links_wanted"]
    });
    eprintln!(
        "recovery links before the kill: {}",
        v["agents"]["source_links_ready"]
    );
    let writer = writer(&m.mnt, 40);
    std::thread::sleep(Duration::from_millis(400));
    let t_kill = Instant::now();
    c.net.kill("s2");
    let acked = writer.join().unwrap();
    assert!(
        acked.len() >= 30,
        "{} of 40 writes acknowledged",
        acked.len()
    );
    let v = m
        .fsp
        .wait_status(120, "recovery done with s2's disks failed", |v| {
            failed_disks(v) == 2 && v["recovery"]["state"] == "done"
        });
    let rebuilt_s = t_kill.elapsed().as_secs_f64();
    let why = v["recovery"]["failures"][0]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(why.contains("host unreachable"), "{why}");
    eprintln!(
        "host s2 killed: full replication after {rebuilt_s:.1} s (grace 2 s), {} bytes copied",
        v["recovery"]["bytes_done"]
    );
    common::drop_caches();
    check_files(&files);
    check_files(&acked);
    assert_spread_without(&c, &m.pool_id, "s2");
    common::assert_fully_replicated(&m.fsp);
    let n = check_audit_logs(&c);
    assert!(n > 100, "{n} audit lines");
}

/// Every shard on two distinct live hosts, none on `gone`.
fn assert_spread_without(c: &Cluster, pool_id: &str, gone: &str) {
    let (shards, host_of) = shards_and_hosts(c, pool_id);
    for s in &shards {
        let hs: Vec<&str> = s.disks.iter().map(|d| host_of[d].as_str()).collect();
        assert!(
            hs.len() == 2 && hs[0] != hs[1] && !hs.contains(&gone),
            "{s:?} on {hs:?}"
        );
    }
}

fn failed_disks(v: &serde_json::Value) -> usize {
    let disks = v["disks"].as_array().unwrap();
    disks.iter().filter(|d| d["state"] == "failed").count()
}

/// A mounted 4-host pool.
struct Mounted {
    pool_id: String,
    mnt: PathBuf,
    /// The pool as the common helpers take it (status, shards, fsck); not unmounted by it.
    fsp: common::Pool,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = run(&["umount", self.mnt.to_str().unwrap()]);
    }
}

/// Four storage hosts, a pool over them mounted with `--host-grace-ms grace_ms`.
fn mounted_cluster(grace_ms: u32) -> (Cluster, Mounted) {
    let grace = grace_ms.to_string();
    mount_over(
        cluster(&["s1", "s2", "s3", "s4"]),
        &[],
        &["--host-grace-ms", &grace],
    )
}

/// A pool over every host of `c` that runs a node, mounted; the nodes of `late` start
/// between init and mount (registered, free). A node started after the mount would hold
/// the FUSE mount alive in its namespace's copy of the mount table after unmount.
fn mount_over(mut c: Cluster, late: &[&str], mount_args: &[&str]) -> (Cluster, Mounted) {
    let pool = c.tmp.path().join("pool");
    let mnt = c.tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let args = c.init_args(&pool);
    let out = run_ok(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let pool_id = out.split_whitespace().nth(2).unwrap().to_string();
    for h in late {
        c.start_node(h);
    }
    c.wait_disks(2 * c.disks.len());
    let (p, m) = (pool.to_str().unwrap(), mnt.to_str().unwrap());
    let o = run(&[&["mount", p, m], mount_args].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let fsp = common::Pool {
        tmp: tempfile::tempdir().unwrap(),
        pool,
        mnt: mnt.clone(),
        disks: vec![],
        mounted: false,
    };
    (c, Mounted { pool_id, mnt, fsp })
}

/// `n` files of about 1 MiB, each fsynced.
fn fill(mnt: &Path, n: usize) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    for i in 0..n {
        let path = mnt.join(format!("f{i:02}"));
        let data = pattern((1 << 20) + i * 4099, i as u64 + 7);
        std::fs::write(&path, &data).unwrap();
        std::fs::File::open(&path).unwrap().sync_all().unwrap();
        files.insert(path, data);
    }
    files
}

/// Writes `n` files one every 50 ms in the background; returns those whose fsync returned.
fn writer(mnt: &Path, n: usize) -> std::thread::JoinHandle<BTreeMap<PathBuf, Vec<u8>>> {
    let mnt = mnt.to_path_buf();
    std::thread::spawn(move || {
        let mut done = BTreeMap::new();
        for i in 0..n {
            let path = mnt.join(format!("w{i:02}"));
            let data = pattern(700_000 + i * 777, i as u64 + 100);
            let ok =
                std::fs::write(&path, &data).and_then(|()| std::fs::File::open(&path)?.sync_all());
            if ok.is_ok() {
                done.insert(path, data);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        done
    })
}

/// A host cut off at its switch port for 3 s, within its 20 s grace: its disks go suspect
/// and come back up; nothing is rebuilt elsewhere, writes meanwhile skip it (committed
/// degraded) and are topped up once it answers; reads never fail.
#[test]
fn a_host_cut_off_within_its_grace_is_not_rebuilt() {
    if !net::available() || !fuse_available() {
        return;
    }
    let (c, m) = mounted_cluster(20_000);
    let files = fill(&m.mnt, 16);
    c.net.cut("s3");
    let t0 = Instant::now();
    let writer = writer(&m.mnt, 20);
    let mut reads = 0;
    while t0.elapsed() < Duration::from_secs(3) {
        common::drop_caches();
        check_files(&files);
        reads += files.len();
    }
    let acked = writer.join().unwrap();
    assert_eq!(acked.len(), 20, "writes failed while a host was cut off");
    let v = m.fsp.json(&["status"]);
    let suspect = v["disks"].as_array().unwrap().iter();
    let suspect = suspect.filter(|d| d["state"] == "suspect").count();
    assert_eq!(suspect, 2, "{v:#}");
    c.net.heal("s3");
    let v = m
        .fsp
        .wait_status(60, "s3's disks up, replicas topped up", |v| {
            let up = v["disks"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["state"] == "up");
            up && v["replica_health"]["under_replicated"] == 0
                && v["recovery"]["state"] != "running"
        });
    assert_eq!(failed_disks(&v), 0);
    let failures = v["recovery"]["failures"].as_array().map_or(0, |f| f.len());
    assert_eq!(failures, 0, "{v:#}");
    eprintln!(
        "s3 cut off 3 s: {reads} file reads, {} bytes topped up afterwards",
        v["recovery"]["bytes_done"]
    );
    check_files(&files);
    check_files(&acked);
    common::assert_fully_replicated(&m.fsp);
}

/// A host paused (SIGSTOP) past its lease and its grace: rebuilt on the other hosts under
/// new epochs. Continued (SIGCONT), it comes back as `disk online` brings a disk back: its
/// copies are verified, intact ones reused where it rejoins a shard, the rest removed; no
/// host's audit log shows a stale write accepted, and the files are intact.
#[test]
fn a_paused_host_is_rebuilt_and_fenced_when_it_wakes() {
    if !net::available() || !fuse_available() {
        return;
    }
    let (c, m) = mounted_cluster(2000);
    let files = fill(&m.mnt, 16);
    let pid = c.net.pid("s4");
    c.net.signal(pid, libc::SIGSTOP);
    let writer = writer(&m.mnt, 20);
    let v = m
        .fsp
        .wait_status(120, "s4's disks failed and rebuilt", |v| {
            failed_disks(v) == 2 && v["recovery"]["state"] == "done"
        });
    let acked = writer.join().unwrap();
    let why = v["recovery"]["failures"][0]["reason"].as_str().unwrap();
    assert!(why.contains("host"), "{why}");
    assert_spread_without(&c, &m.pool_id, "s4");
    c.net.signal(pid, libc::SIGCONT);
    m.fsp.wait_status(60, "s4's disks online again", |v| {
        failed_disks(v) == 0 && v["replica_health"]["under_replicated"] == 0
    });
    // A disk is up (in status) a moment before its "host back" line is logged.
    let t0 = Instant::now();
    let back = loop {
        let log = std::fs::read_to_string(m.fsp.pool.join("foreshard.log")).unwrap();
        let back: Vec<String> = log
            .lines()
            .filter(|l| l.contains("host back"))
            .map(String::from)
            .collect();
        if back.len() >= 2 {
            break back;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{log}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(back.len(), 2, "{back:#?}");
    eprintln!("s4 continued:\n{}", back.join("\n"));
    common::drop_caches();
    check_files(&files);
    check_files(&acked);
    common::assert_fully_replicated(&m.fsp);
    check_audit_logs(&c);
}

/// A disk yanked on s3 while host s2 is down (killed, within its grace): the yanked disk
/// fails on its own, then s2's after the grace; the shards that had both replicas on s2 and
/// that disk are reported lost with their files (exactly the files that no longer read,
/// with EIO), everything else reads back identical and is rebuilt to two copies on two of
/// the live hosts.
#[test]
fn a_disk_yanked_while_another_host_is_down() {
    if !net::available() || !fuse_available() {
        return;
    }
    let (mut c, m) = mounted_cluster(6000);
    let files = fill(&m.mnt, 32);
    c.net.kill("s2");
    m.fsp.wait_status(30, "s2's disks suspect", |v| {
        let d = v["disks"].as_array().unwrap();
        d.iter().filter(|d| d["state"] == "suspect").count() == 2
    });
    // The shards holding data with both replicas on s2 and the disk to be yanked (4).
    let before = m.fsp.json(&["shards"]);
    let doomed = before["shards"].as_array().unwrap().iter().filter(|s| {
        let on = |d: &serde_json::Value| [2, 3, 4].contains(&d.as_u64().unwrap());
        let empty = s["extents"].as_array().unwrap().is_empty();
        !empty && s["disks"].as_array().unwrap().iter().all(on)
    });
    let doomed = doomed.count();
    let yanked = c.disks["s3"][0].clone();
    std::fs::rename(&yanked, yanked.with_extension("yanked")).unwrap();
    let v = m
        .fsp
        .wait_status(120, "three disks failed, recovery done", |v| {
            failed_disks(v) == 3 && v["recovery"]["state"] == "done"
        });
    let failed: Vec<u64> = v["disks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["state"] == "failed")
        .map(|d| d["id"].as_u64().unwrap())
        .collect();
    assert_eq!(failed, [2, 3, 4], "{v:#}");
    let lost = v["recovery"]["lost_shards"].as_array().unwrap();
    assert_eq!(lost.len(), doomed, "{:#}", v["recovery"]);
    let mut lost_files = std::collections::HashSet::new();
    for l in lost {
        for f in l["files"].as_array().unwrap() {
            lost_files.insert(m.mnt.join(f.as_str().unwrap().trim_start_matches('/')));
        }
    }
    eprintln!(
        "s2 down, s3's disk 4 yanked: {} shard(s) lost ({} file(s)); the passes:",
        lost.len(),
        lost_files.len(),
    );
    common::drop_caches();
    check_lost(&files, &lost_files);
    // Every surviving extent has two copies on two live disks of distinct hosts.
    let (_, host_of) = shards_and_hosts(&c, &m.pool_id);
    let shards = m.fsp.json(&["shards"]);
    for s in shards["shards"].as_array().unwrap() {
        for e in s["extents"].as_array().unwrap() {
            let reps = disk_ids(&e["replicas"]);
            if reps.iter().all(|r| failed.contains(&(*r as u64))) {
                continue;
            }
            assert_eq!(reps.len(), 2, "survivor {e} not fully replicated");
            assert_ne!(host_of[&reps[0]], host_of[&reps[1]], "{e}");
            assert!(reps.iter().all(|r| !failed.contains(&(*r as u64))), "{e}");
        }
    }
    check_audit_logs(&c);
    let log = std::fs::read_to_string(m.fsp.pool.join("foreshard.log")).unwrap();
    let passes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("recovery done") || l.contains("recovery activated"))
        .collect();
    eprintln!("{}", passes.join("\n"));
}

/// The etcd leader killed (-9) while files are written, then a storage host killed: the
/// metadata host keeps its lease and term through the two members left, the host's
/// failure is handled and every shard rebuilt on the others (placement CASes through the
/// new leader), no acknowledged write is lost, and the map and the pool's metadata agree
/// on every shard's epoch and disks (no change lost or applied twice).
#[test]
fn the_etcd_leader_killed_during_writes_and_a_recovery() {
    if !net::available() || !fuse_available() {
        return;
    }
    let (mut c, m) = mounted_cluster(2000);
    let files = fill(&m.mnt, 16);
    let active_key = c.map.keys().meta_active(&m.pool_id);
    let term = c.get(&active_key).expect("meta/active").create_revision;
    let writer = writer(&m.mnt, 40);
    let leader = c.net.leader().expect("an etcd leader");
    c.net.kill(&leader);
    std::thread::sleep(Duration::from_millis(300));
    c.net.kill("s3");
    let t_kill = Instant::now();
    let acked = writer.join().unwrap();
    assert!(
        acked.len() >= 30,
        "{} of 40 writes acknowledged",
        acked.len()
    );
    let v = m
        .fsp
        .wait_status(120, "s3 rebuilt with etcd on two members", |v| {
            failed_disks(v) == 2 && v["recovery"]["state"] == "done"
        });
    eprintln!(
        "etcd leader {leader} and s3 killed: full replication {:.1} s after (grace 2 s), {} bytes rebuilt",
        t_kill.elapsed().as_secs_f64(),
        v["recovery"]["bytes_done"]
    );
    let now = c.get(&active_key).expect("meta/active kept");
    assert_eq!(now.create_revision, term, "the metadata host lost its term");
    assert_spread_without(&c, &m.pool_id, "s3");
    let map_shards: HashMap<u32, ShardRecord> = c.rt.block_on(async {
        let kvs = c.map.read_prefix(&c.map.keys().shards(&m.pool_id)).await;
        let kvs = kvs.unwrap().kvs;
        kvs.iter()
            .map(|kv| {
                let id = foreshard_cluster::keys::shard_of_key(&kv.key).unwrap();
                (id, decode::<ShardRecord>(&kv.key, &kv.value).unwrap().body)
            })
            .collect()
    });
    let local = m.fsp.json(&["shards"]);
    let local = local["shards"].as_array().unwrap();
    assert_eq!(local.len(), map_shards.len());
    for l in local {
        let r = &map_shards[&(l["id"].as_u64().unwrap() as u32)];
        let disks = disk_ids(&l["disks"]);
        assert_eq!(
            (l["epoch"].as_u64().unwrap(), disks),
            (r.epoch, r.disks.clone()),
            "{l}"
        );
    }
    common::drop_caches();
    check_files(&files);
    check_files(&acked);
    common::assert_fully_replicated(&m.fsp);
    check_audit_logs(&c);
}

/// Exactly the files reported lost fail to read (EIO); the others read back identical.
fn check_lost(files: &BTreeMap<PathBuf, Vec<u8>>, lost: &std::collections::HashSet<PathBuf>) {
    for (path, data) in files {
        match std::fs::read(path) {
            Ok(d) => {
                assert!(!lost.contains(path), "{} lost but readable", path.display());
                assert!(d == *data, "{} differs", path.display());
            }
            Err(e) => {
                assert!(lost.contains(path), "{}: {e}, not reported", path.display());
                assert_eq!(e.raw_os_error(), Some(libc::EIO));
            }
        }
    }
}

/// Four hosts, a pool over them mounted with the risk service every second, migrations
/// at 64 MiB/s, no re-sharding and the host grace given; risk levels warn 0.06, evacuate
/// 0.07 (healthy disks here score about 0.002).
fn mounted_for_risk(grace_ms: &str) -> (Cluster, Mounted) {
    let args = [
        "--host-grace-ms",
        grace_ms,
        "--risk-interval-s",
        "1",
        "--no-smartctl",
    ];
    let more = ["--migration-rate", "64MiB", "--reshard-interval-s", "0"];
    let cm = mount_over(
        cluster(&["s1", "s2", "s3", "s4"]),
        &[],
        &[&args[..], &more].concat(),
    );
    let p = cm.1.fsp.pool.to_str().unwrap().to_string();
    run_ok(&["risk", &p, "--warn", "0.06", "--evacuate", "0.07"]);
    cm
}

/// Waits (60 s) until evacuation reports both `ids` evacuated; otherwise fails with the
/// disks' risk, the evacuation status and `why`.
fn wait_evacuated(m: &Mounted, ids: [u64; 2], why: &str) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let v = m.fsp.json(&["status"]);
        let ev = v["risk"]["evacuation"]["evacuated"].as_array();
        let done = |id: u64| ev.is_some_and(|a| a.iter().any(|x| x.as_u64() == Some(id)));
        if ids.iter().all(|i| done(*i)) {
            return v;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let r = m.fsp.json(&["risk"]);
            panic!(
                "{ids:?} not evacuated: {:#}\n{:#}\n{why}",
                r["disks"], v["risk"]
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A smartmon-style textfile with climbing error counters.
fn failing_prom() -> String {
    [
        "smartmon_reallocated_sector_ct_raw_value{disk=\"/dev/sdb\",smart_id=\"5\"} 5000",
        "smartmon_current_pending_sector_raw_value{disk=\"/dev/sdb\",smart_id=\"197\"} 2000",
        "smartmon_offline_uncorrectable_raw_value{disk=\"/dev/sdb\",smart_id=\"198\"} 2000",
        "smartmon_power_on_hours_raw_value{disk=\"/dev/sdb\",smart_id=\"9\"} 21000",
        "",
    ]
    .join("\n")
}

/// A storage host whose SMART goes bad (health files on the host, published in its
/// diskstat): the metadata host scores its disks at the evacuation level and moves every
/// replica off them to the other hosts while the files stay readable; killed afterwards,
/// the host's failure rebuilds nothing.
#[test]
fn a_host_whose_smart_goes_bad_is_evacuated_before_it_fails() {
    if !net::available() || !fuse_available() {
        return;
    }
    let (mut c, m) = mounted_for_risk("2000");
    let files = fill(&m.mnt, 24);
    for i in 0..2 {
        let f = c.health_dir("s2").join(format!("{i}.prom"));
        std::fs::write(f.with_extension("tmp"), failing_prom()).unwrap();
        std::fs::rename(f.with_extension("tmp"), &f).unwrap();
    }
    let t0 = Instant::now();
    let v = wait_evacuated(&m, [2, 3], "s2's SMART");
    let evac_s = t0.elapsed().as_secs_f64();
    let risk = m.fsp.json(&["risk"]);
    let d2 = risk["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == 2)
        .unwrap();
    assert_eq!(d2["level"], "evacuate", "{d2:#}");
    assert!(d2["source"].as_str().unwrap().contains("host s2"), "{d2:#}");
    for d in v["disks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["host"] == "s2")
    {
        assert_eq!(
            (d["extents"].as_u64(), d["shards"].as_u64()),
            (Some(0), Some(0)),
            "{d:#}"
        );
    }
    eprintln!(
        "s2's SMART bad: evacuated in {evac_s:.1} s, {} bytes moved",
        v["risk"]["evacuation"]["bytes_done"]
    );
    assert_spread_without(&c, &m.pool_id, "s2");
    c.net.kill("s2");
    let v = m.fsp.wait_status(60, "s2's disks failed", |v| {
        failed_disks(v) == 2 && v["recovery"]["state"] != "running"
    });
    assert_eq!(v["recovery"]["bytes_done"], 0, "{:#}", v["recovery"]);
    let log = std::fs::read_to_string(m.fsp.pool.join("foreshard.log")).unwrap();
    let copied: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("recovery done") && !l.contains("bytes=0 "))
        .collect();
    assert!(copied.is_empty(), "the failure rebuilt data: {copied:?}");
    common::drop_caches();
    check_files(&files);
    common::assert_fully_replicated(&m.fsp);
}

/// A storage host whose link keeps dropping (cut off and back four times, each within
/// its grace): the metadata host counts the outages, its disks' risk rises by the host's
/// share until they reach the evacuation level, and their replicas move to the other
/// hosts; the other hosts' disks stay ok.
#[test]
fn a_flapping_host_is_scored_and_evacuated() {
    if !net::available() || !fuse_available() {
        return;
    }
    let (c, m) = mounted_for_risk("20000");
    let files = fill(&m.mnt, 16);
    let log_path = m.fsp.pool.join("foreshard.log");
    let outages_seen = || {
        let log = std::fs::read_to_string(&log_path).unwrap();
        log.lines()
            .filter(|l| l.contains("stopped answering"))
            .count()
    };
    for i in 0..4 {
        // Cut until the metadata host has seen the link fail (a suspect disk alone may
        // be a late probe that then answers: no outage).
        c.net.cut("s3");
        let t0 = Instant::now();
        while outages_seen() <= i {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "cut {i} not noticed"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c.net.heal("s3");
        m.fsp.wait_status(30, "s3 up", |v| {
            v["disks"]
                .as_array()
                .unwrap()
                .iter()
                .all(|d| d["state"] == "up")
        });
    }
    let log = std::fs::read_to_string(m.fsp.pool.join("foreshard.log")).unwrap();
    let outages: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("stopped answering"))
        .collect();
    assert!(outages.len() >= 4, "{outages:#?}");
    let v = wait_evacuated(&m, [4, 5], &format!("{outages:#?}"));
    let risk = m.fsp.json(&["risk"]);
    for d in risk["disks"].as_array().unwrap() {
        let host_factor = d["factors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "host_outages_per_day");
        let on_s3 = d["id"] == 4 || d["id"] == 5;
        assert_eq!(host_factor, on_s3, "{d:#}");
        assert_eq!(d["level"] == "evacuate", on_s3, "{d:#}");
    }
    eprintln!(
        "s3 dropped out {} times: its disks at p {} and {}, {} bytes evacuated",
        outages.len(),
        risk["disks"][4]["p_fail_30d"],
        risk["disks"][5]["p_fail_30d"],
        v["risk"]["evacuation"]["bytes_done"]
    );
    assert_spread_without(&c, &m.pool_id, "s3");
    common::drop_caches();
    check_files(&files);
    common::assert_fully_replicated(&m.fsp);
}

/// `host add` claims a fifth host's disks into the mounted pool and moves shards onto
/// them; `host remove` drains a host while files are written (every replica moves to the
/// other hosts, with progress), then frees its disks in the map, where `host add` can take
/// them again. Files intact, every shard on two hosts, fsck clean, audit logs clean.
#[test]
fn hosts_are_added_drained_and_removed() {
    if !net::available() || !fuse_available() {
        return;
    }
    // s5's node starts after init, which claims every free disk.
    let c = cluster_started(&["s1", "s2", "s3", "s4", "s5"], 4);
    let (c, m) = mount_over(c, &["s5"], &["--host-grace-ms", "20000"]);
    let p = m.fsp.pool.to_str().unwrap().to_string();
    let files = fill(&m.mnt, 16);
    let t0 = Instant::now();
    let out = run_ok(&["host", "add", &p, "s5"]);
    assert!(out.contains("[8, 9] added"), "{out}");
    wait_moved(&m, "shards moved onto s5");
    eprintln!(
        "host s5 added, shards moved in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let (shards, host_of) = shards_and_hosts(&c, &m.pool_id);
    let on_s5 = shards
        .iter()
        .filter(|s| s.disks.iter().any(|d| host_of[d] == "s5"))
        .count();
    assert!(
        on_s5 >= shards.len() / 5,
        "{on_s5} of {} shards on s5",
        shards.len()
    );
    assert_spread_without(&c, &m.pool_id, "none");
    assert!(c.files_per_host()["s5"] > 0);

    let writer = writer(&m.mnt, 20);
    let t0 = Instant::now();
    let out = run_ok(&["host", "remove", &p, "s1"]);
    let drain_s = t0.elapsed().as_secs_f64();
    assert!(out.contains("drained") && out.contains("released"), "{out}");
    let acked = writer.join().unwrap();
    assert_eq!(acked.len(), 20, "writes failed during the drain");
    assert_spread_without(&c, &m.pool_id, "s1");
    let free: Vec<DiskRecord> = disk_records(&c)
        .into_iter()
        .filter(|d| d.host == "s1")
        .collect();
    assert!(free.iter().all(|d| d.pool.is_none()), "{free:?}");
    assert_eq!(c.files_per_host()["s1"], 0, "extent files left on s1");
    // The node forgets the pool's shard epochs of its released disks (the term stays): a
    // fence of one 16-byte record.
    for d in &c.disks["s1"] {
        let fence = d.join(foreshard_cluster::wire::FENCE_FILE);
        let t0 = Instant::now();
        while std::fs::metadata(&fence).unwrap().len() != 16 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "{} kept its epochs",
                fence.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let v = m.fsp.json(&["status"]);
    let removed = v["disks"].as_array().unwrap().iter();
    assert_eq!(removed.filter(|d| d["state"] == "removed").count(), 2);
    eprintln!("host s1 drained and released in {drain_s:.1} s\n{out}");
    common::drop_caches();
    check_files(&files);
    check_files(&acked);
    common::assert_fully_replicated(&m.fsp);
    // Bad hosts and a second release are refused, nothing changed.
    let o = run(&["host", "remove", &p, "s1"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("released already"),
        "{o:?}"
    );
    let o = run(&["host", "drain", &p, "s9"]);
    assert!(!o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no disk in this pool"));
    let o = run(&["host", "add", &p, "s2"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no free disk"),
        "{o:?}"
    );
    // The released disks can be claimed again (under new ids).
    let t0 = Instant::now();
    let out = run_ok(&["host", "add", &p, "s1"]);
    assert!(out.contains("[10, 11] added"), "{out}");
    // Once: the disks are in use again under 10 and 11.
    let o = run(&["host", "add", &p, "s1"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no free disk"),
        "{o:?}"
    );
    wait_moved(&m, "shards back on s1");
    assert!(c.files_per_host()["s1"] > 0);
    eprintln!("host s1 added again in {:.1} s", t0.elapsed().as_secs_f64());
    assert_spread_without(&c, &m.pool_id, "none");
    check_files(&files);
    check_audit_logs(&c);
    let (ok, report) = common::fsck_at(&m.fsp.pool, false);
    assert!(ok, "{report}");
}

/// A JSON array of disk ids (a shard's disks, an extent's replicas).
fn disk_ids(v: &serde_json::Value) -> Vec<u32> {
    let ids = v.as_array().unwrap().iter();
    ids.map(|d| d.as_u64().unwrap() as u32).collect()
}

/// Waits (up to 60 s) until every extent is on exactly its shard's disks: the moves the
/// placement changes asked for are copied.
fn wait_moved(m: &Mounted, what: &str) {
    let t0 = Instant::now();
    loop {
        let v = m.fsp.json(&["shards"]);
        let shards = v["shards"].as_array().unwrap();
        let sorted = |v: &serde_json::Value| {
            let mut ids = disk_ids(v);
            ids.sort_unstable();
            ids
        };
        let off = shards.iter().any(|s| {
            let want = sorted(&s["disks"]);
            let extents = s["extents"].as_array().unwrap();
            extents.iter().any(|e| sorted(&e["replicas"]) != want)
        });
        if !off {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{what}: {v:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every disk record in the map.
fn disk_records(c: &Cluster) -> Vec<DiskRecord> {
    let map = &c.map;
    c.rt.block_on(async {
        let kvs = map.read_prefix(&map.keys().disks()).await.unwrap().kvs;
        kvs.iter()
            .map(|kv| decode::<DiskRecord>(&kv.key, &kv.value).unwrap().body)
            .collect()
    })
}

/// One round's MiB/s: a `mib` MiB file written in 1 MiB writes then fsynced, and read back
/// cold (caches dropped) in 1 MiB reads.
/// `foreshard standby` in this process's namespace (host `name`), with its own pool copy
/// and mount point; killed (and its mount cleared) when dropped.
struct Standby {
    name: String,
    child: std::process::Child,
    pool: PathBuf,
    mnt: PathBuf,
    log: PathBuf,
}

impl Standby {
    fn start(c: &Cluster, pool_id: &str, name: &str, extra: &[&str]) -> Standby {
        Standby::start_as(c, pool_id, name, 0, extra)
    }

    /// The `generation`-th standby run of `name`: its own directories and port.
    fn start_as(
        c: &Cluster,
        pool_id: &str,
        name: &str,
        generation: usize,
        extra: &[&str],
    ) -> Standby {
        let pool = c.tmp.path().join(format!("{name}-pool{generation}"));
        let mnt = c.tmp.path().join(format!("{name}-mnt{generation}"));
        std::fs::create_dir(&mnt).unwrap();
        let log = c.tmp.path().join(format!("{name}-{generation}.log"));
        let listen = format!("{}:{}", c.net.root_ip(), 7300 + generation);
        let (p, m) = (pool.to_str().unwrap(), mnt.to_str().unwrap());
        let mut args = vec!["standby", p, m, "--cluster", &c.url, "--pool-id", pool_id];
        args.extend(["--name", name, "--listen", &listen, "--lease-ttl-s", "3"]);
        args.extend(["--secret-file", &c.secret]);
        args.extend(extra);
        let child = std::process::Command::new(BIN)
            .args(&args)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Standby {
            name: name.to_string(),
            child,
            pool,
            mnt,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn name(&self) -> &str {
        &self.name
    }

    /// Waits until the standby has mounted the pool (it took over); returns the wait.
    fn wait_mounted(&mut self, secs: u64) -> Duration {
        let t0 = Instant::now();
        let want = format!(" {} ", self.mnt.display());
        loop {
            let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
            if mounts.contains(&want) {
                return t0.elapsed();
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("standby exited ({st}):\n{}", self.log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "no takeover in {secs} s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let _ = run(&["umount", self.mnt.to_str().unwrap()]);
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::process::Command::new("fusermount3")
            .arg("-uz")
            .arg(&self.mnt)
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// `files` (written under `from`) read back identical under `to`, caches dropped first.
fn check_moved(files: &BTreeMap<PathBuf, Vec<u8>>, from: &Path, to: &Path) {
    common::drop_caches();
    let moved: BTreeMap<PathBuf, Vec<u8>> = files
        .iter()
        .map(|(p, d)| (to.join(p.strip_prefix(from).unwrap()), d.clone()))
        .collect();
    check_files(&moved);
}

/// Waits until `meta/sync` names `standby` (it holds a copy and acks the WAL).
fn wait_named(c: &Cluster, pool_id: &str, standby: Option<&str>, sb: &Standby) -> Duration {
    let t0 = Instant::now();
    let key = c.map.keys().meta_sync(pool_id);
    loop {
        let named = c.get(&key).and_then(|kv| {
            decode::<foreshard_cluster::records::MetaSync>(&key, &kv.value)
                .unwrap()
                .body
                .standby
        });
        if named.as_deref() == standby {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "meta/sync names {named:?}, not {standby:?}:\n{}",
            sb.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A cluster pool over four hosts with a 3 s metadata lease, mounted, and a standby `m2`.
fn mounted_with_standby(extra: &[&str]) -> (Cluster, Mounted, Standby) {
    let c = cluster(&["s1", "s2", "s3", "s4"]);
    let pool = c.tmp.path().join("pool");
    let mnt = c.tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut args = c.init_args(&pool);
    args.extend(["--lease-ttl-s".to_string(), "3".to_string()]);
    let out = run_ok(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let pool_id = out.split_whitespace().nth(2).unwrap().to_string();
    let sb = Standby::start(
        &c,
        &pool_id,
        "m2",
        &[&["--host-grace-ms", "2000"], extra].concat(),
    );
    let (p, m) = (pool.to_str().unwrap(), mnt.to_str().unwrap());
    let o = run(&["mount", p, m, "--host-grace-ms", "2000"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let fsp = common::Pool {
        tmp: tempfile::tempdir().unwrap(),
        pool,
        mnt: mnt.clone(),
        disks: vec![],
        mounted: false,
    };
    (c, Mounted { pool_id, mnt, fsp }, sb)
}

/// kill -9 of the metadata host under an fsync writer: the standby takes over once the
/// lease lapses (3 s), and every fsync the old mount acknowledged is on the new one, the
/// files are identical, fsck is clean, no host accepted a stale epoch or term.
#[test]
fn a_standby_takes_over_when_the_metadata_host_is_killed() {
    if !net::available() || !fuse_available() {
        return;
    }
    let (c, m, mut sb) = mounted_with_standby(&[]);
    let named = wait_named(&c, &m.pool_id, Some("m2"), &sb);
    eprintln!(
        "standby named in meta/sync {:.2} s after the mount",
        named.as_secs_f64()
    );
    let v = m.fsp.wait_status(10, "the standby in status", |v| {
        v["standby"]["state"] == "named"
    });
    assert_eq!(v["standby"]["host"], "m2", "{v}");
    let text = run_ok(&["status", m.fsp.pool.to_str().unwrap()]);
    assert!(text.contains("standby m2: named"), "{text}");
    let files = fill(&m.mnt, 8);
    let writer = writer(&m.mnt, 60);
    std::thread::sleep(Duration::from_millis(800));
    let pid = m.fsp.daemon_pid().expect("daemon pid");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let t_kill = Instant::now();
    let acked = writer.join().unwrap();
    let _ = std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(&m.mnt)
        .status();
    assert!(acked.len() >= 5, "{} writes acknowledged", acked.len());
    sb.wait_mounted(60);
    let took = t_kill.elapsed();
    eprintln!(
        "metadata host killed after {} acknowledged fsyncs: the standby mounted {:.1} s later (lease 3 s)",
        acked.len(),
        took.as_secs_f64()
    );
    check_moved(&files, &m.mnt, &sb.mnt);
    check_moved(&acked, &m.mnt, &sb.mnt);
    let fsp2 = common::Pool {
        tmp: tempfile::tempdir().unwrap(),
        pool: sb.pool.clone(),
        mnt: sb.mnt.clone(),
        disks: vec![],
        mounted: false,
    };
    eprintln!("files checked at {:.1} s", t_kill.elapsed().as_secs_f64());
    let (clean, report) = fsp2.fsck(false);
    assert!(clean, "{report}");
    eprintln!("fsck done at {:.1} s", t_kill.elapsed().as_secs_f64());
    let active = c.get(&c.map.keys().meta_active(&m.pool_id)).unwrap();
    let rec = decode::<MetaActive>("active", &active.value).unwrap().body;
    assert_eq!(rec.host, "m2");
    // The new mount writes under its term.
    let extra = sb.mnt.join("after-takeover");
    std::fs::write(&extra, b"new term").unwrap();
    std::fs::File::open(&extra).unwrap().sync_all().unwrap();
    check_audit_logs(&c);
    eprintln!("done at {:.1} s", t_kill.elapsed().as_secs_f64());
    drop(sb);
    eprintln!("standby stopped at {:.1} s", t_kill.elapsed().as_secs_f64());
}

/// Writes and fsyncs `path`; returns how long the fsync took, or the error.
fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<Duration> {
    std::fs::write(path, data)?;
    let t0 = Instant::now();
    std::fs::File::open(path)?.sync_all()?;
    Ok(t0.elapsed())
}

fn meta_sync_names(c: &Cluster, pool_id: &str) -> Option<String> {
    let key = c.map.keys().meta_sync(pool_id);
    let kv = c.get(&key)?;
    decode::<foreshard_cluster::records::MetaSync>(&key, &kv.value)
        .unwrap()
        .body
        .standby
}

/// A standby paused (SIGSTOP) for 2 s: the next fsync waits for its ack for the ack
/// time-out (1 s), drops it from meta/sync, and only then returns; later fsyncs do not
/// wait. Continued, it is named again, and a takeover after that holds the files written
/// while it was dropped.
#[test]
fn a_paused_standby_is_dropped_from_meta_sync_and_named_again() {
    if !net::available() || !fuse_available() {
        return;
    }
    let (c, m, mut sb) = mounted_with_standby(&[]);
    wait_named(&c, &m.pool_id, Some("m2"), &sb);
    let mut files = fill(&m.mnt, 3);
    let quick = write_synced(&m.mnt.join("named"), b"while named").unwrap();
    files.insert(m.mnt.join("named"), b"while named".to_vec());
    let spid = sb.child.id();
    c.net.signal(spid, libc::SIGSTOP);
    let data = pattern(300_000, 41);
    let slow = write_synced(&m.mnt.join("paused1"), &data).unwrap();
    // Removed from meta/sync before the fsync returned.
    assert_eq!(meta_sync_names(&c, &m.pool_id), None);
    files.insert(m.mnt.join("paused1"), data);
    let data = pattern(200_000, 42);
    let after = write_synced(&m.mnt.join("paused2"), &data).unwrap();
    files.insert(m.mnt.join("paused2"), data);
    eprintln!(
        "fsync with the standby named {:.0} ms; the first with it paused {:.0} ms; the next {:.0} ms",
        quick.as_secs_f64() * 1e3,
        slow.as_secs_f64() * 1e3,
        after.as_secs_f64() * 1e3
    );
    assert!(slow >= Duration::from_millis(900), "{slow:?}");
    assert!(after < Duration::from_millis(900), "{after:?}");
    std::thread::sleep(Duration::from_millis(1500));
    c.net.signal(spid, libc::SIGCONT);
    let back = wait_named(&c, &m.pool_id, Some("m2"), &sb);
    eprintln!("named again {:.2} s after SIGCONT", back.as_secs_f64());
    let data = pattern(100_000, 43);
    write_synced(&m.mnt.join("named-again"), &data).unwrap();
    files.insert(m.mnt.join("named-again"), data);
    let pid = m.fsp.daemon_pid().expect("daemon pid");
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(&m.mnt)
        .status();
    sb.wait_mounted(60);
    check_moved(&files, &m.mnt, &sb.mnt);
}

/// The metadata host paused (SIGSTOP) past its 3 s lease: the standby takes over. The old
/// host, continued, acknowledges no fsync (the standby no longer acks, and its meta/sync
/// change fails the term compare), refuses writes from then on, and no storage host
/// accepts its writes (fenced by term); the new mount has every earlier file and none of
/// the old host's later ones.
#[test]
fn a_deposed_metadata_host_is_fenced_and_goes_read_only() {
    if !net::available() || !fuse_available() {
        return;
    }
    let (c, m, mut sb) = mounted_with_standby(&[]);
    wait_named(&c, &m.pool_id, Some("m2"), &sb);
    let files = fill(&m.mnt, 4);
    let pid = m.fsp.daemon_pid().expect("daemon pid");
    c.net.signal(pid as u32, libc::SIGSTOP);
    sb.wait_mounted(60);
    let data = pattern(500_000, 77);
    write_synced(&sb.mnt.join("new"), &data).unwrap();
    c.net.signal(pid as u32, libc::SIGCONT);
    let mut refused = 0;
    let mut errors = Vec::new();
    for i in 0..8 {
        let p = m.mnt.join(format!("late{i}"));
        match write_synced(&p, &pattern(100_000, i)) {
            Ok(t) => panic!("the deposed host acknowledged an fsync ({t:?})"),
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => refused += 1,
            Err(e) => errors.push(e.to_string()),
        }
    }
    eprintln!("deposed host: {refused} of 8 writes refused (EROFS), the others failed: {errors:?}");
    assert!(refused > 0, "the deposed host never refused writes (EROFS)");
    check_moved(&files, &m.mnt, &sb.mnt);
    assert_eq!(std::fs::read(sb.mnt.join("new")).unwrap(), data);
    for i in 0..8 {
        assert!(!sb.mnt.join(format!("late{i}")).exists(), "late{i}");
    }
    check_audit_logs(&c);
    // The new host unmounts: the old one, still running, must not win the pool back with
    // its stale copy (its lease task sees meta/sync name m2 and gives up).
    run_ok(&["umount", sb.mnt.to_str().unwrap()]);
    std::thread::sleep(Duration::from_secs(3));
    let active = c.get(&c.map.keys().meta_active(&m.pool_id));
    assert!(
        active.is_none(),
        "the deposed host won the pool back: {active:?}"
    );
    drop(m);
}

/// `foreshard promote` on the standby's copy while a writer fsyncs on the active: the
/// active host syncs, unmounts keeping the standby named, and the standby mounts; every
/// acknowledged fsync is there.
#[test]
fn promote_hands_the_pool_over_to_the_standby() {
    if !net::available() || !fuse_available() {
        return;
    }
    let (c, m, sb) = mounted_with_standby(&[]);
    wait_named(&c, &m.pool_id, Some("m2"), &sb);
    let files = fill(&m.mnt, 4);
    let pid = m.fsp.daemon_pid().expect("daemon pid");
    // In a directory of the pool: once the old mount is detached, a write to the bare
    // mount point's directory would succeed and be counted.
    let dir = m.mnt.join("w");
    std::fs::create_dir(&dir).unwrap();
    let writer = writer(&dir, 30);
    std::thread::sleep(Duration::from_millis(500));
    let out = run_ok(&["promote", sb.pool.to_str().unwrap()]);
    eprintln!("{}", out.trim());
    let acked = writer.join().unwrap();
    assert!(acked.len() >= 3, "{} acknowledged", acked.len());
    // The old daemon is gone (it unmounted).
    let t0 = Instant::now();
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "old daemon still runs"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    check_moved(&files, &m.mnt, &sb.mnt);
    check_moved(&acked, &m.mnt, &sb.mnt);
    // Nothing to promote a second time: it is mounted.
    let o = run(&["promote", sb.pool.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("mounted here already"));
    // The old host's copy is behind now: with m2 unmounted, it must not mount (a forked
    // history), and nothing it holds changes the pool.
    run_ok(&["umount", sb.mnt.to_str().unwrap()]);
    let o = run(&[
        "mount",
        m.fsp.pool.to_str().unwrap(),
        m.mnt.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("out of date"), "{err}");
    assert!(c.get(&c.map.keys().meta_active(&m.pool_id)).is_none());
}

/// The daemon pid a pool directory's pid file names.
fn pid_of(pool: &Path) -> i32 {
    let s = std::fs::read_to_string(pool.join("daemon.pid")).expect("daemon pid file");
    s.lines().next().unwrap().trim().parse().unwrap()
}
