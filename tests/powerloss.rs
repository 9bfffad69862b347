//! Power-loss tests (issue 18): the pool's disks and its metadata directory live on lazyfs
//! (tests/lazyfs), a FUSE layer that keeps file data in memory until the file is fsync'ed.
//! A power cut is SIGKILL of the daemon and of the layer: what the layer had not synced is
//! gone. After each cut the pool is mounted again and checked against a model of what the
//! workload made durable: every byte a returned fsync covered is there, every durable file
//! reads as one of the contents the model allows (never EIO, never missing, never a mix),
//! and fsck is clean. Recovery, migration and evacuation run during the workload in some
//! rounds, so cuts land inside them too.
//!
//! FORESHARD_POWERLOSS_ROUNDS (default 20) sets the number of cuts, FORESHARD_POWERLOSS_SEED
//! the seed (printed at the start; default from the clock).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The pool's extent size: small, so files span several extents.
const EXTENT_BYTES: u64 = 256 << 10;
/// Names the workload uses in w/ (plus w/tmp for atomic replaces).
const NAMES: usize = 12;
/// Static files in s/ (2 MiB each): data for recovery, migration and evacuation to move.
const STATIC_FILES: usize = 8;
const STATIC_BYTES: usize = 2 << 20;
/// Disks given failing SMART counters over a run.
const EVACUATIONS_MAX: usize = 3;
/// How long an evacuation round waits for the evacuation to start (it may not: the disk's
/// copies may already be gone, or the score may stay under the threshold).
const EVACUATION_START_WAIT: Duration = Duration::from_secs(10);
/// How long recovery and evacuation may take to finish after a remount.
const SETTLE_SECS: u64 = 60;
/// How long a layer may take to mount.
const MOUNT_WAIT: Duration = Duration::from_secs(10);

/// FUSE is required under CI (CI=true): a missing FUSE fails the test there.
fn fuse_or_skip() -> bool {
    if fuse_available() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but FUSE is not available: the power-loss tests cannot run"
    );
    false
}

/// The lazyfs example binary, next to this test's deps directory.
fn lazyfs_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let release = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = release.join("examples").join("lazyfs");
    assert!(
        bin.exists(),
        "{} missing: `cargo test` builds it (cargo build --release --examples)",
        bin.display()
    );
    bin
}

fn is_mounted(mnt: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let m = mnt.to_str().unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == Some(m))
}

fn lazy_umount(mnt: &Path) {
    let _ = Command::new("fusermount3")
        .arg("-uz")
        .arg(mnt)
        .stderr(Stdio::null())
        .status();
}

/// A running lazyfs process: `under` mounted at `mnt`.
struct Layer {
    under: PathBuf,
    mnt: PathBuf,
    child: Option<Child>,
}

/// Starts lazyfs and waits until it is mounted.
fn spawn_layer(under: &Path, mnt: &Path) -> Child {
    let mut child = Command::new(lazyfs_bin())
        .arg(under)
        .arg(mnt)
        .stdin(Stdio::null())
        .spawn()
        .expect("start lazyfs");
    let t0 = Instant::now();
    while !is_mounted(mnt) {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("lazyfs exited before mounting {}: {st}", mnt.display());
        }
        assert!(t0.elapsed() < MOUNT_WAIT, "lazyfs did not mount");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

impl Layer {
    fn start(under: &Path, mnt: &Path) -> Layer {
        Layer {
            under: under.to_path_buf(),
            mnt: mnt.to_path_buf(),
            child: Some(spawn_layer(under, mnt)),
        }
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// The power cut for the layer: SIGKILL (unsynced data is gone), clear the dead mount.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        lazy_umount(&self.mnt);
    }

    fn restart(&mut self) {
        self.kill();
        self.child = Some(spawn_layer(&self.under, &self.mnt));
    }
}

impl Drop for Layer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(std::env::var("FORESHARD_TEST_DIR").unwrap_or("/var/tmp".into()))
        .unwrap()
}

#[test]
fn lazyfs_keeps_only_what_was_fsynced() {
    if !fuse_or_skip() {
        return;
    }
    let tmp = tempdir("foreshard-lazyfs");
    let (under, mnt) = (tmp.path().join("under"), tmp.path().join("mnt"));
    fs::create_dir(&under).unwrap();
    fs::create_dir(&mnt).unwrap();
    let mut layer = Layer::start(&under, &mnt);
    let (old, new) = (pattern(300_000, 1), pattern(300_000, 2));
    // synced: written and fsync'ed; unsynced: written only; over: synced, then overwritten
    // and truncated without fsync; moved: renamed (namespace: durable at once).
    fs::write(mnt.join("unsynced"), &new).unwrap();
    let mut f = File::create(mnt.join("synced")).unwrap();
    f.write_all(&new).unwrap();
    f.sync_all().unwrap();
    let mut f = File::create(mnt.join("over")).unwrap();
    f.write_all(&old).unwrap();
    f.sync_data().unwrap();
    f.write_all_at(b"fresh bytes", 1000).unwrap();
    f.set_len(5000).unwrap();
    drop(f);
    fs::rename(mnt.join("unsynced"), mnt.join("moved")).unwrap();
    // O_DIRECT opens work (foreshard writes extents that way).
    let d = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(mnt.join("synced"))
        .expect("O_DIRECT open on lazyfs");
    let mut head = vec![0u8; 4096];
    d.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, new[..4096]);
    // Before the cut the mount shows every write.
    assert_eq!(fs::read(mnt.join("moved")).unwrap(), new);
    let over = fs::read(mnt.join("over")).unwrap();
    assert_eq!(over.len(), 5000);
    assert_eq!(&over[1000..1011], b"fresh bytes");
    // Nothing unsynced reached the underlying directory.
    assert_eq!(fs::read(under.join("over")).unwrap(), old);
    assert_eq!(fs::metadata(under.join("moved")).unwrap().len(), 0);
    drop(d);
    layer.restart(); // the cut
    assert_eq!(fs::read(mnt.join("synced")).unwrap(), new);
    assert_eq!(fs::read(mnt.join("over")).unwrap(), old);
    assert_eq!(fs::read(mnt.join("moved")).unwrap(), b"");
    assert!(
        !mnt.join("unsynced").exists(),
        "a rename is durable at once"
    );
    // syncfs is not forwarded by the kernel: it makes nothing durable.
    fs::write(mnt.join("moved"), &new).unwrap();
    let f = File::open(&mnt).unwrap();
    assert_eq!(
        unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&f)) },
        0
    );
    layer.restart();
    assert_eq!(fs::read(mnt.join("moved")).unwrap(), b"");
}

/// One file's contents as the model knows them.
struct InoModel {
    /// What the workload last wrote.
    current: Vec<u8>,
    /// Contents a cut may leave, oldest first: [0] is what the last returned fsync covered
    /// (the empty file of create before any), the rest were written since, in order.
    allowed: Vec<blake3::Hash>,
    /// False from create until the first fsync returned: the first write may span extents,
    /// so a cut may leave any part of it; only readability is checked then.
    settled: bool,
}

/// What a cut may leave of every name the workload touched.
#[derive(Default)]
struct Model {
    inos: HashMap<u64, InoModel>,
    /// Name (relative to the mount) -> entry states a cut may leave: [0] is what the last
    /// returned fsync of its directory covered, the rest came later. None: absent.
    names: BTreeMap<String, Vec<Option<u64>>>,
    next_ino: u64,
}

impl Model {
    fn cur(&self, name: &str) -> Option<u64> {
        self.names.get(name).and_then(|s| *s.last().unwrap())
    }

    fn new_ino(&mut self, settled: bool) -> u64 {
        self.next_ino += 1;
        let m = InoModel {
            current: Vec::new(),
            allowed: vec![blake3::hash(b"")],
            settled,
        };
        self.inos.insert(self.next_ino, m);
        self.next_ino
    }

    /// Called before the operation: the cut may come before or after it.
    fn set_name(&mut self, name: &str, to: Option<u64>) {
        self.names.entry(name.into()).or_insert(vec![None]).push(to);
    }

    fn set_content(&mut self, ino: u64, data: Vec<u8>) {
        let m = self.inos.get_mut(&ino).unwrap();
        m.allowed.push(blake3::hash(&data));
        m.current = data;
    }

    fn file_synced(&mut self, ino: u64) {
        let m = self.inos.get_mut(&ino).unwrap();
        m.allowed = vec![blake3::hash(&m.current)];
        m.settled = true;
    }

    fn dir_synced(&mut self, dir: &str) {
        for (n, s) in self.names.iter_mut() {
            if Path::new(n).parent() == Some(Path::new(dir)) {
                let last = *s.last().unwrap();
                *s = vec![last];
            }
        }
    }
}

/// Reads a file wholly; its content or a description of the failure.
fn observe(path: &Path) -> Result<Option<Vec<u8>>, String> {
    match fs::read(path) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("read error: {e}")),
    }
}

fn describe(model: &Model, states: &[Option<u64>]) -> String {
    let s: Vec<String> = states
        .iter()
        .map(|s| match s {
            None => "absent".into(),
            Some(i) => {
                let m = &model.inos[i];
                let lens: Vec<String> = m.allowed.iter().map(|h| h.to_hex()[..8].into()).collect();
                format!(
                    "ino{i}{}[{}]",
                    if m.settled { "" } else { "?" },
                    lens.join(",")
                )
            }
        })
        .collect();
    s.join(" | ")
}

/// Checks what the mount holds against the model; returns every violation.
fn check(model: &Model, mnt: &Path) -> Vec<String> {
    drop_caches();
    let mut bad = Vec::new();
    for dir in ["w", "s"] {
        for e in fs::read_dir(mnt.join(dir)).unwrap() {
            let n = format!("{dir}/{}", e.unwrap().file_name().to_string_lossy());
            if !model.names.contains_key(&n) {
                bad.push(format!("{n}: a name the workload never made"));
            }
        }
    }
    for (name, states) in &model.names {
        let got = match observe(&mnt.join(name)) {
            Ok(g) => g,
            Err(e) => {
                bad.push(format!("{name}: {e}; allowed: {}", describe(model, states)));
                continue;
            }
        };
        let ok = states.iter().any(|s| match (s, &got) {
            (None, None) => true,
            (Some(i), Some(d)) => {
                let m = &model.inos[i];
                !m.settled || m.allowed.contains(&blake3::hash(d))
            }
            _ => false,
        });
        if !ok {
            let what = match &got {
                None => "missing".to_string(),
                Some(d) => format!("{} bytes, {}", d.len(), &blake3::hash(d).to_hex()[..8]),
            };
            bad.push(format!(
                "{name}: {what}; allowed: {}",
                describe(model, states)
            ));
        }
    }
    bad
}

fn fsync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// After a check: what the mount holds becomes the model, made durable (fsync of every file
/// and directory), and a leftover w/tmp goes.
fn rebase(mnt: &Path) -> Model {
    let mut m = Model::default();
    let _ = fs::remove_file(mnt.join("w/tmp"));
    for dir in ["w", "s"] {
        for e in fs::read_dir(mnt.join(dir)).unwrap() {
            let name = format!("{dir}/{}", e.unwrap().file_name().to_string_lossy());
            let f = File::open(mnt.join(&name)).unwrap();
            f.sync_all().unwrap();
            let ino = m.new_ino(true);
            m.set_content(ino, fs::read(mnt.join(&name)).unwrap());
            m.file_synced(ino);
            m.names.insert(name, vec![Some(ino)]);
        }
        fsync_dir(&mnt.join(dir)).unwrap();
    }
    m
}

/// The workload: one thread of file operations on the mount, recording in the model what a
/// cut may leave before each operation and what became durable after each returned fsync.
struct Workload {
    mnt: PathBuf,
    model: Model,
    rng: StdRng,
    ops: u64,
    fsyncs: u64,
}

impl Workload {
    fn p(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    fn maybe_fsync_dir(&mut self, dir: &str) -> io::Result<()> {
        if self.rng.random_bool(0.6) {
            fsync_dir(&self.p(dir))?;
            self.model.dir_synced(dir);
        }
        Ok(())
    }

    fn maybe_fsync(&mut self, f: &File, ino: u64) -> io::Result<()> {
        if self.rng.random_bool(0.5) {
            f.sync_all()?;
            self.model.file_synced(ino);
            self.fsyncs += 1;
        }
        Ok(())
    }

    /// Atomic replace: write w/tmp (any size, several extents), fsync, rename over `name`.
    fn replace(&mut self, name: &str) -> io::Result<()> {
        let len = match self.rng.random_range(0..4) {
            0 => self.rng.random_range(0..4096),
            3 => self.rng.random_range(0..1_200_000),
            _ => self.rng.random_range(0..600_000),
        };
        let data = pattern(len, self.rng.random());
        let ino = self.model.new_ino(false);
        self.model.set_name("w/tmp", Some(ino));
        let mut f = File::create(self.p("w/tmp"))?;
        self.model.set_content(ino, data.clone());
        f.write_all(&data)?;
        f.sync_all()?;
        self.model.file_synced(ino);
        self.fsyncs += 1;
        drop(f);
        self.model.set_name("w/tmp", None);
        self.model.set_name(name, Some(ino));
        fs::rename(self.p("w/tmp"), self.p(name))?;
        self.maybe_fsync_dir("w")
    }

    /// A few bytes in place, inside one extent (a write across extents may tear when cut).
    fn overwrite(&mut self, name: &str, ino: u64) -> io::Result<()> {
        let mut data = self.model.inos[&ino].current.clone();
        if data.is_empty() {
            return self.append(name, ino);
        }
        let off = self.rng.random_range(0..data.len() as u64);
        let room = (EXTENT_BYTES - off % EXTENT_BYTES).min(data.len() as u64 - off);
        let n = self.rng.random_range(1..=room.min(64)) as usize;
        let bytes = pattern(n, self.rng.random());
        data[off as usize..off as usize + n].copy_from_slice(&bytes);
        self.model.set_content(ino, data);
        let f = OpenOptions::new().write(true).open(self.p(name))?;
        f.write_all_at(&bytes, off)?;
        self.maybe_fsync(&f, ino)
    }

    /// Appends inside the last extent (or one new extent).
    fn append(&mut self, name: &str, ino: u64) -> io::Result<()> {
        let mut data = self.model.inos[&ino].current.clone();
        let size = data.len() as u64;
        let room = EXTENT_BYTES - size % EXTENT_BYTES;
        let n = self.rng.random_range(1..=room.min(100_000)) as usize;
        let bytes = pattern(n, self.rng.random());
        data.extend_from_slice(&bytes);
        self.model.set_content(ino, data);
        let f = OpenOptions::new().write(true).open(self.p(name))?;
        f.write_all_at(&bytes, size)?;
        self.maybe_fsync(&f, ino)
    }

    /// Shrinking or growing truncate (one metadata batch either way).
    fn truncate(&mut self, name: &str, ino: u64) -> io::Result<()> {
        let mut data = self.model.inos[&ino].current.clone();
        let len = if !data.is_empty() && self.rng.random_bool(0.5) {
            self.rng.random_range(0..data.len())
        } else {
            data.len() + self.rng.random_range(1..300_000)
        };
        data.resize(len, 0);
        self.model.set_content(ino, data);
        let f = OpenOptions::new().write(true).open(self.p(name))?;
        f.set_len(len as u64)?;
        self.maybe_fsync(&f, ino)
    }

    fn unlink(&mut self, name: &str) -> io::Result<()> {
        self.model.set_name(name, None);
        fs::remove_file(self.p(name))?;
        self.maybe_fsync_dir("w")
    }

    /// Renames `name` to another name (over it if it exists).
    fn rename(&mut self, name: &str, ino: u64) -> io::Result<()> {
        let to = format!("w/f{}", self.rng.random_range(0..NAMES));
        if to == name {
            return Ok(());
        }
        self.model.set_name(name, None);
        self.model.set_name(&to, Some(ino));
        fs::rename(self.p(name), self.p(&to))?;
        self.maybe_fsync_dir("w")
    }

    fn step(&mut self) -> io::Result<()> {
        self.ops += 1;
        let name = format!("w/f{}", self.rng.random_range(0..NAMES));
        match (self.model.cur(&name), self.rng.random_range(0..10)) {
            (None, _) | (Some(_), 0..=1) => self.replace(&name),
            (Some(i), 2..=3) => self.overwrite(&name, i),
            (Some(i), 4..=5) => self.append(&name, i),
            (Some(i), 6..=7) => self.truncate(&name, i),
            (Some(_), 8) => self.unlink(&name),
            (Some(i), _) => self.rename(&name, i),
        }
    }
}

/// What runs beside the workload in a round.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Background {
    Nothing,
    Recovery,
    Migration,
    Evacuation,
}

/// The pool on lazyfs: disks L/dN and POOL/meta -> L/meta, L being the layer's mount.
/// Field order is drop order: the pool (unmounted through the layer) before the layer.
struct Rig {
    p: Pool,
    layer: Layer,
    _ltmp: tempfile::TempDir,
    health: PathBuf,
    /// Disks by id: (path, failed).
    disks: Vec<(PathBuf, bool)>,
    evacuated: Vec<usize>,
    seed: u64,
    seed_rng: StdRng,
}

/// Background work runs slowly (a few MiB/s) so that cuts land inside it.
const MOUNT_OPTS: [&str; 17] = [
    "--risk-interval-s",
    "1",
    "--no-smartctl",
    "--reshard-interval-s",
    "0",
    "--migration-rate",
    "1MiB",
    "--migration-chunk",
    "256KiB",
    "--recovery-rate",
    "4MiB",
    "--recovery-reservation",
    "2MiB",
    "--shard-size-max",
    "16MiB",
    "--shard-size-min",
    "2MiB",
];

impl Rig {
    fn new(seed: u64) -> Rig {
        let ltmp = tempdir("foreshard-lazy");
        let under = ltmp.path().join("under");
        let l = ltmp.path().join("L");
        for d in ["d0", "d1", "d2", "d3", "meta"] {
            fs::create_dir_all(under.join(d)).unwrap();
        }
        fs::create_dir(&l).unwrap();
        let layer = Layer::start(&under, &l);
        let tmp = tempdir("foreshard-powerloss");
        let pool = tmp.path().join("pool");
        let mnt = tmp.path().join("mnt");
        let health = tmp.path().join("health");
        fs::create_dir(&mnt).unwrap();
        fs::create_dir(&health).unwrap();
        let disks: Vec<PathBuf> = (0..4).map(|i| l.join(format!("d{i}"))).collect();
        let mut args = vec!["init", pool.to_str().unwrap()];
        for d in &disks {
            args.extend(["--disk", d.to_str().unwrap()]);
        }
        args.extend(["--replicas", "2", "--extent-size", "256KiB"]);
        run_ok(&args);
        // The metadata moves onto the layer: RocksDB opens POOL/meta through the symlink.
        for e in fs::read_dir(pool.join("meta")).unwrap() {
            let e = e.unwrap();
            fs::rename(e.path(), under.join("meta").join(e.file_name())).unwrap();
        }
        fs::remove_dir(pool.join("meta")).unwrap();
        std::os::unix::fs::symlink(l.join("meta"), pool.join("meta")).unwrap();
        let h = health.to_str().unwrap();
        let ps = pool.to_str().unwrap();
        run_ok(&[
            "risk",
            ps,
            "--health-dir",
            h,
            "--warn",
            "0.06",
            "--evacuate",
            "0.12",
        ]);
        let p = Pool {
            tmp,
            pool,
            mnt,
            disks: disks.clone(),
            mounted: false,
        };
        Rig {
            p,
            layer,
            _ltmp: ltmp,
            health,
            disks: disks.into_iter().map(|d| (d, false)).collect(),
            evacuated: Vec::new(),
            seed,
            seed_rng: StdRng::seed_from_u64(seed),
        }
    }

    fn mount(&mut self) {
        self.p.mount_with(&MOUNT_OPTS);
    }

    fn pool(&self) -> String {
        self.p.pool.to_str().unwrap().to_string()
    }

    /// The cut: SIGKILL the daemon, at once SIGKILL the layer, clear both mounts, start the
    /// layer again on the same underlying directory.
    fn power_cut(&mut self) {
        let pid = self.p.daemon_pid().expect("daemon pid");
        let lpid = self.layer.pid();
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::kill(lpid, libc::SIGKILL);
        }
        self.layer.kill();
        self.p.crash();
        self.layer.restart();
    }
}

fn static_files(w: &mut Workload) -> io::Result<()> {
    fs::create_dir(w.p("w"))?;
    fs::create_dir(w.p("s"))?;
    for i in 0..STATIC_FILES {
        let name = format!("s/s{i}");
        let ino = w.model.new_ino(false);
        w.model.set_name(&name, Some(ino));
        let data = pattern(STATIC_BYTES, 1000 + i as u64);
        let mut f = File::create(w.p(&name))?;
        w.model.set_content(ino, data.clone());
        f.write_all(&data)?;
        f.sync_all()?;
        w.model.file_synced(ino);
    }
    fsync_dir(&w.p("s"))?;
    w.model.dir_synced("s");
    fsync_dir(&w.mnt)
}

/// A smartmon.sh-style textfile for one disk (as tests/risk.rs writes them).
fn prom(realloc: u64, pending: u64, uncorrectable: u64) -> String {
    format!(
        "smartmon_reallocated_sector_ct_raw_value{{disk=\"/dev/sdb\",type=\"sat\",smart_id=\"5\"}} {realloc}\n\
         smartmon_current_pending_sector_raw_value{{disk=\"/dev/sdb\",type=\"sat\",smart_id=\"197\"}} {pending}\n\
         smartmon_offline_uncorrectable_raw_value{{disk=\"/dev/sdb\",type=\"sat\",smart_id=\"198\"}} {uncorrectable}\n\
         smartmon_power_on_hours_raw_value{{disk=\"/dev/sdb\",type=\"sat\",smart_id=\"9\"}} 21000\n\
         smartmon_temperature_celsius_raw_value{{disk=\"/dev/sdb\",type=\"sat\",smart_id=\"194\"}} 36\n"
    )
}

impl Rig {
    /// Disk ids neither failed nor evacuated.
    fn healthy(&self) -> Vec<usize> {
        (0..self.disks.len())
            .filter(|i| !self.disks[*i].1 && !self.evacuated.contains(i))
            .collect()
    }

    /// Adds fresh disks until four healthy ones take data; returns what it did.
    fn top_up(&mut self) -> String {
        let mut note = String::new();
        while self.healthy().len() < 4 {
            let id = self.disks.len();
            let path = self.layer.mnt.join(format!("d{id}"));
            fs::create_dir(&path).unwrap();
            run_ok(&["disk", "add", &self.pool(), path.to_str().unwrap()]);
            self.disks.push((path, false));
            note += &format!("added disk {id}, ");
        }
        note
    }

    /// A healthy disk that held data before this round (a fresh one has nothing to move).
    fn victim(&mut self, fresh_from: usize) -> usize {
        let h: Vec<usize> = self
            .healthy()
            .into_iter()
            .filter(|d| *d < fresh_from)
            .collect();
        h[self.seed_rng.random_range(0..h.len())]
    }

    /// Fails a healthy disk: recovery copies its replicas while the workload runs.
    fn start_recovery(&mut self) -> String {
        let fresh_from = self.disks.len();
        let note = self.top_up();
        let victim = self.victim(fresh_from);
        run_ok(&["disk", "fail", &self.pool(), &victim.to_string()]);
        self.disks[victim].1 = true;
        format!("{note}failed disk {victim}")
    }

    /// Makes the first static files hot (reads through to the daemon) and re-shards: the
    /// plan moves them to hot shards at the migration budget.
    fn start_migration(&mut self) -> String {
        for _ in 0..4 {
            drop_caches();
            for i in 0..4 {
                let _ = fs::read(self.p.mnt.join(format!("s/s{i}")));
            }
        }
        std::thread::sleep(Duration::from_millis(100)); // the analyzer polls every 20 ms
        let out = run_ok(&["reshard", &self.pool(), "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        format!("reshard: {} moves", v["moves"])
    }

    /// Failing SMART counters for a healthy disk: its risk crosses the evacuation threshold
    /// at the next collection (1 s) and its replicas move off.
    fn start_evacuation(&mut self) -> String {
        let fresh_from = self.disks.len();
        let note = self.top_up();
        let id = self.victim(fresh_from);
        let file = self.health.join(format!("{id}.prom"));
        fs::write(file.with_extension("tmp"), prom(5000, 2000, 2000)).unwrap();
        fs::rename(file.with_extension("tmp"), &file).unwrap();
        self.evacuated.push(id);
        // The score follows at the next collection: start the clock once copies run.
        let t0 = Instant::now();
        while t0.elapsed() < EVACUATION_START_WAIT {
            if self.in_flight().contains(&Background::Evacuation) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        format!("{note}failing counters for disk {id}")
    }

    fn start(&mut self, bg: Background) -> String {
        match bg {
            Background::Nothing => String::new(),
            Background::Recovery => self.start_recovery(),
            Background::Migration => self.start_migration(),
            Background::Evacuation => self.start_evacuation(),
        }
    }

    /// What the daemon was doing just before the cut (from `status --json`).
    fn in_flight(&self) -> Vec<Background> {
        let o = run(&["status", &self.pool(), "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let mut out = Vec::new();
        if v["recovery"]["state"] == "running" {
            out.push(Background::Recovery);
        }
        let m = &v["migration"];
        if (m["state"] != "idle" && !m["state"].is_null()) || m["pending_moves"].as_u64() > Some(0)
        {
            out.push(Background::Migration);
        }
        if v["risk"]["evacuation"]["state"] == "evacuating" {
            out.push(Background::Evacuation);
        }
        out
    }

    /// Waits until nothing is left under-replicated and no recovery or evacuation runs
    /// (fsck counts a replica still to be rebuilt as a problem). Pending re-sharding moves
    /// may stay: the next mount resumes them.
    fn settle(&self) -> serde_json::Value {
        self.p
            .wait_status(SETTLE_SECS, "recovery and evacuation done", |v| {
                v["recovery"]["state"] != "running"
                    && v["risk"]["evacuation"]["state"] != "evacuating"
                    && v["replica_health"]["under_replicated"] == 0
            })
    }

    /// What runs beside this round's workload: each kind in turn; evacuations stop after
    /// `EVACUATIONS_MAX` (an evacuated disk stays at risk and takes no more data).
    fn pick(&mut self, round: usize) -> Background {
        const KINDS: [Background; 4] = [
            Background::Recovery,
            Background::Migration,
            Background::Evacuation,
            Background::Nothing,
        ];
        let k = KINDS[round % KINDS.len()];
        if k == Background::Evacuation && self.evacuated.len() >= EVACUATIONS_MAX {
            return Background::Nothing;
        }
        k
    }
}

/// Runs the workload on its own thread until the cut; returns it with the first error that
/// came before the cut (errors after it are the cut's).
fn run_workload(
    w: Workload,
    cut: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Workload, Option<String>)> {
    std::thread::spawn(move || {
        let mut w = w;
        while !cut.load(Ordering::SeqCst) {
            if let Err(e) = w.step() {
                let early = !cut.load(Ordering::SeqCst);
                let msg = early.then(|| format!("op {} failed: {e}", w.ops));
                return (w, msg);
            }
        }
        (w, None)
    })
}

fn log_tail(p: &Pool) -> String {
    let log = fs::read_to_string(p.pool.join("foreshard.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// Totals over a run, for the closing line.
#[derive(Default)]
struct Tally {
    ops: u64,
    fsyncs: u64,
    /// Background work the daemon reported running just before a cut, by kind.
    caught: BTreeMap<String, u32>,
}

impl Workload {
    fn new(mnt: &Path, model: Model, rng: &mut StdRng) -> Workload {
        Workload {
            mnt: mnt.to_path_buf(),
            model,
            rng: StdRng::seed_from_u64(rng.random()),
            ops: 0,
            fsyncs: 0,
        }
    }
}

/// One round: background work and the workload, the cut at a random moment, then the
/// checks (model, fsck after umount); returns the next round's workload.
fn round(rig: &mut Rig, rng: &mut StdRng, w: Workload, round: usize, t: &mut Tally) -> Workload {
    let bg = rig.pick(round);
    let note = rig.start(bg);
    let cut = Arc::new(AtomicBool::new(false));
    let h = run_workload(w, cut.clone());
    let cut_after = Duration::from_millis(rng.random_range(200..2500));
    std::thread::sleep(cut_after);
    let busy = rig.in_flight();
    cut.store(true, Ordering::SeqCst);
    rig.power_cut();
    let (done, early) = h.join().unwrap();
    for b in &busy {
        *t.caught.entry(format!("{b:?}")).or_default() += 1;
    }
    let what = format!(
        "seed {} round {round}: {bg:?} ({note}), cut after {cut_after:?}",
        rig.seed
    );
    eprintln!("{what} and {} ops; in flight: {busy:?}", done.ops);
    (t.ops, t.fsyncs) = (t.ops + done.ops, t.fsyncs + done.fsyncs);
    if let Some(e) = early {
        panic!("{what}: before the cut, {e}");
    }
    rig.mount();
    let bad = check(&done.model, &rig.p.mnt);
    assert!(
        bad.is_empty(),
        "{what}: {} violations after the cut:\n{}\nforeshard.log:\n{}",
        bad.len(),
        bad[..bad.len().min(25)].join("\n"),
        log_tail(&rig.p)
    );
    let model = rebase(&rig.p.mnt);
    rig.settle();
    rig.p.umount();
    let (clean, out) = rig.p.fsck(false);
    assert!(clean, "{what}: fsck after the cut: {out}");
    rig.mount();
    Workload::new(&rig.p.mnt, model, rng)
}

#[test]
fn power_cuts_lose_no_fsynced_byte() {
    if !fuse_or_skip() {
        return;
    }
    let t0 = Instant::now();
    let rounds = env_u64("FORESHARD_POWERLOSS_ROUNDS").unwrap_or(20) as usize;
    let seed = env_u64("FORESHARD_POWERLOSS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    eprintln!("powerloss: seed {seed}, {rounds} cuts (FORESHARD_POWERLOSS_SEED={seed})");
    let mut rig = Rig::new(seed);
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    rig.mount();
    let mut w = Workload::new(&rig.p.mnt, Model::default(), &mut rng);
    static_files(&mut w).unwrap();
    let mut t = Tally::default();
    for r in 0..rounds {
        w = round(&mut rig, &mut rng, w, r, &mut t);
    }
    rig.p.umount();
    eprintln!(
        "powerloss: seed {seed}, {rounds} cuts, {} operations, {} fsyncs, in flight at a cut: \
         {:?}, {:.0?}",
        t.ops,
        t.fsyncs,
        t.caught,
        t0.elapsed()
    );
}
