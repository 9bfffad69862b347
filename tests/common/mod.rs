//! Helpers for tests that run the real binary and mount real FUSE filesystems.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_foreshard");

/// FUSE tests need /dev/fuse, fusermount3 and root; without them they are skipped with a note.
pub fn fuse_available() -> bool {
    let ok = Path::new("/dev/fuse").exists()
        && Command::new("fusermount3").arg("-V").output().is_ok()
        && unsafe { libc::geteuid() } == 0;
    if !ok {
        // Under CI a FUSE test that does not run must not pass.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but FUSE is missing: FUSE tests need root, /dev/fuse and fusermount3"
        );
        eprintln!("SKIP: FUSE tests need root, /dev/fuse and fusermount3 (run scripts/test)");
    }
    ok
}

pub fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run foreshard")
}

pub fn run_ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "foreshard {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn sh(cmd: &str, dir: &Path) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .expect("run bash")
}

pub fn sh_ok(cmd: &str, dir: &Path) -> String {
    let o = sh(cmd, dir);
    assert!(
        o.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub struct Pool {
    pub tmp: tempfile::TempDir,
    pub pool: PathBuf,
    pub mnt: PathBuf,
    pub disks: Vec<PathBuf>,
    pub mounted: bool,
}

impl Pool {
    pub fn new(disks: usize, replicas: u32, extent_size: &str) -> Pool {
        let tmp = tempfile::Builder::new()
            .prefix("foreshard-test")
            .tempdir_in(std::env::var("FORESHARD_TEST_DIR").unwrap_or("/var/tmp".into()))
            .unwrap();
        let pool = tmp.path().join("pool");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let disks: Vec<PathBuf> = (0..disks)
            .map(|i| tmp.path().join(format!("disk{i}")))
            .collect();
        let mut args = vec!["init".to_string(), pool.display().to_string()];
        for d in &disks {
            std::fs::create_dir(d).unwrap();
            args.push("--disk".into());
            args.push(d.display().to_string());
        }
        args.extend([
            "--replicas".into(),
            replicas.to_string(),
            "--extent-size".into(),
            extent_size.into(),
        ]);
        run_ok(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
        Pool {
            tmp,
            pool,
            mnt,
            disks,
            mounted: false,
        }
    }

    pub fn mount(&mut self) {
        self.mount_with(&[]);
    }

    pub fn mount_with(&mut self, extra: &[&str]) {
        let mut a = vec![
            "mount",
            self.pool.to_str().unwrap(),
            self.mnt.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        // scripts/test runs the FUSE suite once more with FORESHARD_TEST_IO_URING=off, so both
        // request transports (io_uring queues, /dev/fuse) go through every test.
        let transport = std::env::var("FORESHARD_TEST_IO_URING").ok();
        if let Some(t) = &transport {
            if !extra.contains(&"--io-uring") {
                a.extend(["--io-uring", t.as_str()]);
            }
        }
        run_ok(&a);
        self.mounted = true;
    }

    /// Runs `foreshard debug inject` on this pool; returns its stdout.
    pub fn inject(&self, args: &[&str]) -> String {
        let o = Command::new(BIN)
            .args(["debug", "inject", "--pool"])
            .arg(&self.pool)
            .args(args)
            .output()
            .expect("run foreshard debug inject");
        assert!(
            o.status.success(),
            "inject {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Polls `status --json` until `f` holds (panics after `secs`).
    pub fn wait_status(
        &self,
        secs: u64,
        what: &str,
        f: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let v = self.json(&["status"]);
            if f(&v) {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "timed out waiting for {what}: {v:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn umount(&mut self) {
        let o = run(&["umount", self.mnt.to_str().unwrap()]);
        if !o.status.success() {
            let log = std::fs::read_to_string(self.pool.join("foreshard.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "foreshard umount failed: {}\ndaemon log (last 60 lines):\n{}",
                String::from_utf8_lossy(&o.stderr),
                tail.join("\n")
            );
        }
        self.mounted = false;
        // The daemon must not unmount its path again once it is gone (fuser's is_mounted):
        // that could take down a filesystem mounted there since.
        let log = std::fs::read_to_string(self.pool.join("foreshard.log")).unwrap_or_default();
        assert!(
            !log.contains("Failed to umount"),
            "the daemon unmounted an unmounted path again: {log}"
        );
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn daemon_pid(&self) -> Option<i32> {
        let s = std::fs::read_to_string(self.pool.join("daemon.pid")).ok()?;
        s.lines().next()?.trim().parse().ok()
    }

    /// kill -9 the daemon and clear its dead mount.
    pub fn crash(&mut self) {
        let pid = self.daemon_pid().expect("daemon pid");
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let start = Instant::now();
        while unsafe { libc::kill(pid, 0) } == 0 && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = Command::new("fusermount3")
            .arg("-uz")
            .arg(&self.mnt)
            .status();
        self.mounted = false;
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push(self.pool.to_str().unwrap());
        a.push("--json");
        serde_json::from_str(&run_ok(&a)).expect("json output")
    }

    pub fn fsck(&self, repair: bool) -> (bool, String) {
        fsck_at(&self.pool, repair)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if self.mounted {
            let o = run(&["umount", self.mnt.to_str().unwrap()]);
            if !o.status.success() {
                let _ = Command::new("fusermount3")
                    .arg("-uz")
                    .arg(&self.mnt)
                    .status();
            }
        }
    }
}

/// `foreshard fsck POOL [--repair]`: (exit 0, stdout and stderr).
pub fn fsck_at(pool: &Path, repair: bool) -> (bool, String) {
    let mut a = vec!["fsck", pool.to_str().unwrap()];
    if repair {
        a.push("--repair");
    }
    let o = run(&a);
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

pub fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Drops clean page cache, so the next reads go through the daemon to the disks.
pub fn drop_caches() {
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

pub fn check_all(files: &HashMap<PathBuf, blake3::Hash>) {
    drop_caches();
    for (path, h) in files {
        let got = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(&blake3::hash(&got), h, "{} differs", path.display());
    }
}

/// Reads every file over and over on another thread until stopped; counts reads and errors.
pub struct Reader {
    stop: Arc<AtomicBool>,
    reads: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    h: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    pub fn start(files: &HashMap<PathBuf, blake3::Hash>) -> Reader {
        let files = files.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let (s, r, e) = (stop.clone(), reads.clone(), errors.clone());
        let h = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                drop_caches();
                for (path, h) in &files {
                    match std::fs::read(path) {
                        Ok(d) if blake3::hash(&d) == *h => {}
                        Ok(_) => {
                            eprintln!("{}: wrong data", path.display());
                            e.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(err) => {
                            eprintln!("{}: {err}", path.display());
                            e.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    r.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Reader {
            stop,
            reads,
            errors,
            h: Some(h),
        }
    }

    /// Stops and returns (reads, errors).
    pub fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.h.take().unwrap().join().unwrap();
        (
            self.reads.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

pub fn disk_state(v: &serde_json::Value, id: u64) -> String {
    v["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"].as_u64() == Some(id))
        .map(|d| d["state"].as_str().unwrap().to_string())
        .unwrap()
}

/// `foreshard risk POOL --health-dir H --warn W --evacuate E`, which must succeed.
pub fn set_risk(pool: &str, health: &Path, warn: &str, evacuate: &str) {
    let h = health.to_str().unwrap();
    run_ok(&[
        "risk",
        pool,
        "--health-dir",
        h,
        "--warn",
        warn,
        "--evacuate",
        evacuate,
    ]);
}

/// The ids of the disks `status --json` says are up.
pub fn up_disks(st: &serde_json::Value) -> HashSet<u64> {
    st["disks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["state"] == "up")
        .map(|d| d["id"].as_u64().unwrap())
        .collect()
}

/// Every extent has `replicas` copies on distinct disks that are up, and the shards
/// report no failed disk; fsck (every replica verified) is clean.
pub fn assert_fully_replicated(p: &Pool) {
    let st = p.json(&["status"]);
    let up = up_disks(&st);
    assert_eq!(st["replica_health"]["under_replicated"], 0, "{st:#}");
    let shards = p.json(&["shards"]);
    let mut n = 0;
    for s in shards["shards"].as_array().unwrap() {
        for e in s["extents"].as_array().unwrap() {
            let reps: Vec<u64> = e["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_u64().unwrap())
                .collect();
            let distinct: HashSet<u64> = reps.iter().copied().collect();
            assert_eq!(distinct.len(), 2, "extent {e} of shard {}", s["id"]);
            assert_eq!(reps.len(), 2, "extent {e}");
            assert!(
                distinct.is_subset(&up),
                "extent {e} on a disk not up: {up:?}"
            );
            n += 1;
        }
    }
    assert!(n > 0);
    let (clean, out) = p.fsck(false);
    assert!(clean, "{out}");
}
