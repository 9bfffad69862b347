//! `foreshard mount` and `foreshard umount`: the daemon's life cycle.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::fs::FsOptions;
use crate::fuse::{config, FuseFs};
use crate::pool::{self, Pool};

pub const PID_FILE: &str = "daemon.pid";
/// How long `umount` waits for the daemon to finish flushing and exit.
const UMOUNT_WAIT_SECS_MAX: u64 = 120;

pub struct MountArgs {
    pub pool: PathBuf,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub threads: usize,
    /// Serve FUSE requests over io_uring (one queue per CPU) when the kernel offers it.
    pub io_uring: bool,
    pub agent_mode: crate::agents::AgentMode,
    pub agent_limits: crate::agents::AgentLimits,
    pub recovery: crate::recovery::RecoveryOptions,
    /// The access analyzer's limits; None runs without it (and without re-sharding).
    pub access: Option<crate::access::AccessOptions>,
    pub sharding: crate::sharding::ShardingOptions,
    pub risk: crate::risk::service::RiskOptions,
    /// Failure model file; None uses the shipped one.
    pub risk_model: Option<PathBuf>,
}

fn check_mountpoint(mp: &Path) -> anyhow::Result<PathBuf> {
    match fs::metadata(mp) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("mountpoint {}: not a directory", mp.display()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            // A daemon that died (kill -9) leaves its mount behind; clear it.
            eprintln!(
                "note: {} is a stale mount of a dead daemon; unmounting it",
                mp.display()
            );
            lazy_unmount(mp)?;
        }
        Err(e) => bail!("mountpoint {}: {e}", mp.display()),
    }
    let c = fs::canonicalize(mp).with_context(|| format!("mountpoint {}", mp.display()))?;
    if mount_source(&c)?.is_some() {
        bail!(
            "mountpoint {}: something is already mounted there",
            mp.display()
        );
    }
    Ok(c)
}

fn lazy_unmount(mp: &Path) -> anyhow::Result<()> {
    let ok = std::process::Command::new("fusermount3")
        .arg("-uz")
        .arg(mp)
        .status()
        .is_ok_and(|s| s.success())
        || std::process::Command::new("umount")
            .arg("-l")
            .arg(mp)
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        bail!("cannot unmount {}", mp.display());
    }
    Ok(())
}

/// Raises the kernel's readahead for our mount (the FUSE init reply can only lower it from
/// the 128 KiB default), so sequential reads arrive as 1 MiB requests.
fn set_readahead(mp: &Path, kib: u32) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let want = mp.to_string_lossy().replace(' ', "\\040");
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() > 4 && f[4] == want {
            let p = format!("/sys/class/bdi/{}/read_ahead_kb", f[2]);
            if let Err(e) = fs::write(&p, kib.to_string()) {
                tracing::warn!("cannot set readahead ({p}): {e}");
            }
        }
    }
}

/// The (source, fstype) of whatever is mounted exactly at `mp`, from /proc/self/mountinfo.
fn mount_source(mp: &Path) -> anyhow::Result<Option<(String, String)>> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    let want = mp.to_string_lossy().replace(' ', "\\040");
    let mut found = None;
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 10 || f[4] != want {
            continue;
        }
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if let (Some(t), Some(s)) = (f.get(sep + 1), f.get(sep + 2)) {
            found = Some((s.to_string(), t.to_string()));
        }
    }
    Ok(found)
}

/// Mounts the pool; unless `foreground`, returns once the daemon has mounted (or failed).
/// How long `mount` waits for an earlier daemon of the pool that is shutting down
/// (`fusermount3 -u` returns before it has flushed and exited) or another command.
const POOL_WAIT_MAX: Duration = Duration::from_secs(30);

/// Returns once nothing holds the pool (bounded, saying so); refuses a pool whose daemon
/// is serving a mount.
fn wait_for_pool(pool_dir: &Path) -> anyhow::Result<()> {
    use crate::api::Request;
    use crate::control::{call, Answer};
    let start = Instant::now();
    let mut said = false;
    loop {
        match call(pool_dir, &Request::Ping, Duration::from_secs(5))? {
            // `fusermount3 -u` returns before the daemon sees its session end: a daemon
            // whose mount is gone is shutting down, though it still answers.
            Answer::Ok(_) if daemon_mount_gone(pool_dir) => {}
            Answer::Ok(_) => bail!(
                "{}: pool is in use: already mounted (its daemon answers)",
                pool_dir.display()
            ),
            Answer::ShuttingDown => {}
            Answer::NoDaemon => match pool::PoolLock::take(pool_dir) {
                Ok(_) => return Ok(()),
                Err(e) if e.downcast_ref::<pool::PoolBusy>().is_none() => return Err(e),
                Err(_) => {}
            },
        }
        if start.elapsed() >= POOL_WAIT_MAX {
            bail!(
                "{}: still in use after {}s (a daemon shutting down, or another foreshard command)",
                pool_dir.display(),
                POOL_WAIT_MAX.as_secs()
            );
        }
        if !said {
            said = true;
            eprintln!(
                "foreshard: waiting for the earlier daemon of {} to finish shutting down, up to {}s",
                pool_dir.display(),
                POOL_WAIT_MAX.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// True when the pool's daemon has mounted (its pid file names the mountpoint) and that
/// mount is no longer there. A daemon still starting (no pid file yet) is serving.
fn daemon_mount_gone(pool_dir: &Path) -> bool {
    let Ok(pid) = fs::read_to_string(pool_dir.join(PID_FILE)) else {
        return false;
    };
    let Some(mp) = pid.lines().nth(1).filter(|l| !l.is_empty()) else {
        return false;
    };
    matches!(mount_source(Path::new(mp)), Ok(m) if !m.as_ref().is_some_and(|(_, t)| t.starts_with("fuse")))
}

pub fn mount(a: &MountArgs) -> anyhow::Result<()> {
    let pool_dir =
        fs::canonicalize(&a.pool).with_context(|| format!("pool {}", a.pool.display()))?;
    if !pool::is_pool(&pool_dir) {
        bail!(
            "{}: not a foreshard pool (run `foreshard init` first)",
            a.pool.display()
        );
    }
    let mp = check_mountpoint(&a.mountpoint)?;
    wait_for_pool(&pool_dir)?;
    // For the daemon's life: metadata, log, pid file and socket are created 0600 (RocksDB
    // has no mode option). Files in the mount are not affected (their modes come from
    // the callers), extent files are created 0600 anyway.
    std::mem::forget(pool::Umask::private());
    if a.foreground {
        return run(&pool_dir, &mp, a, None);
    }
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    // SAFETY: the process is single-threaded here (nothing has spawned threads yet).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors come from pipe2 above and are owned once each.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    if pid > 0 {
        drop(wr);
        return wait_for_daemon(rd, &pool_dir);
    }
    drop(rd);
    // SAFETY: plain libc calls in the child.
    unsafe { libc::setsid() };
    log_to_pool(&pool_dir);
    let mut wr = fs::File::from(wr);
    match run(&pool_dir, &mp, a, Some(&mut wr)) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            let _ = write!(wr, "err {e:#}");
            eprintln!("mount failed: {e:#}");
            std::process::exit(1)
        }
    }
}

/// The parent's side of the start-up pipe: the daemon writes "ok" and keeps running, or
/// "err ..." and exits.
fn wait_for_daemon(rd: OwnedFd, pool_dir: &Path) -> anyhow::Result<()> {
    let mut f = fs::File::from(rd);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = f.read(&mut chunk)?;
        buf.extend_from_slice(&chunk[..n]);
        if n == 0 || buf.starts_with(b"ok") {
            break;
        }
    }
    let msg = String::from_utf8_lossy(&buf).into_owned();
    match msg.strip_prefix("ok") {
        Some(_) => Ok(()),
        None if msg.is_empty() => {
            bail!(
                "daemon exited during start-up; see {}",
                pool_dir.join(pool::LOG_FILE).display()
            )
        }
        None => bail!("{}", msg.trim_start_matches("err ")),
    }
}

/// The daemon's stdout and stderr go to `POOL/foreshard.log` (private).
fn log_to_pool(pool_dir: &Path) {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(pool_dir.join(pool::LOG_FILE));
    if let Ok(log) = log {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::PermissionsExt;
        // A log an older version made readable by everyone (names of files) becomes private.
        let _ = log.set_permissions(fs::Permissions::from_mode(0o600));
        // SAFETY: valid descriptors.
        unsafe {
            libc::dup2(log.as_raw_fd(), 1);
            libc::dup2(log.as_raw_fd(), 2);
        }
    }
}

/// Blocks SIGINT/SIGTERM in every thread (call before spawning any) so one thread can wait
/// for them and unmount cleanly.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Recovery agents keep replica files open: allow as many descriptors as the hard limit.
fn raise_fd_limit() {
    let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer; setrlimit with soft <= hard.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn run(
    pool_dir: &Path,
    mp: &Path,
    a: &MountArgs,
    notify: Option<&mut fs::File>,
) -> anyhow::Result<()> {
    let sigs = block_signals();
    let pool = Pool::open(pool_dir)?;
    let fs = pool.fs(FsOptions::default())?;
    prepare(&fs)?;
    fs.start_background();
    raise_fd_limit();
    let svc = start_services(&fs, a, pool.cluster.clone())?;
    let mut shipper = pool
        .cluster
        .as_ref()
        .map(|c| crate::standby::ship::start(pool.meta.clone(), c.clone(), pool_dir))
        .transpose()?;
    let control = crate::control::serve(
        Arc::new(crate::control::Services {
            fs: fs.clone(),
            recovery: Some(svc.orchestrator.clone()),
            access: svc.analyzer.clone(),
            sharding: svc.engine.clone(),
            risk: Some(svc.risk.clone()),
            evacuator: Some(svc.evacuator.clone()),
            cluster: pool.cluster.clone(),
        }),
        &pool_dir.join(pool::SOCKET_FILE),
    )?;
    let mut cfg = config(a.threads, a.io_uring);
    let p = pool_dir.to_string_lossy();
    if !p.contains([',', ' ', '\\']) {
        cfg.mount_options[0] = fuser::MountOption::FSName(format!("foreshard:{p}"));
    }
    let mut session = fuser::Session::new(FuseFs::new(fs.clone(), a.io_uring), mp, &cfg)
        .with_context(|| format!("cannot mount on {}", mp.display()))?;
    set_readahead(mp, crate::fuse::MAX_WRITE_BYTES / 1024);
    fs::write(
        pool_dir.join(PID_FILE),
        format!("{}\n{}\n", std::process::id(), mp.display()),
    )?;
    spawn_signal_thread(sigs, session.unmount_callable(), mp.to_path_buf())?;
    // The parent returns (and scripts go on) once every FUSE worker and ring queue serves.
    let mut notify = notify;
    let res = session.run_with(|| serving(pool_dir, mp, notify.take()));
    // Shutting down: control requests are answered "shutting down" (the CLI waits for the
    // pool's lock, which this process holds until it exits) once those running are done.
    control.stop();
    let _ = fs::remove_file(pool_dir.join(pool::SOCKET_FILE));
    svc.stop(&fs)?;
    // Before the lease goes: the standby is dropped from meta/sync (or kept for a handover).
    shipper.as_mut().map(crate::standby::ship::Shipper::stop);
    if let Some(c) = &pool.cluster {
        c.resign();
    }
    let _ = fs::remove_file(pool_dir.join(PID_FILE));
    tracing::info!("unmounted");
    // The lock goes with the process: background threads may still hold the metadata, and
    // a CLI that took the lock before they let go would find RocksDB's own lock held.
    std::mem::forget(pool._lock);
    res.context("FUSE session ended with an error")
}

/// Before serving: bucket directories on disks labelled before they were made up front
/// (off the write path), then the start-up crash cleanup.
fn prepare(fs: &crate::fs::Fs) -> anyhow::Result<()> {
    for d in fs
        .store
        .disks()
        .iter()
        .filter(|d| d.is_up() && !d.is_remote())
    {
        if let Err(e) = crate::store::make_buckets(&d.root.join(crate::store::EXTENT_DIR)) {
            tracing::warn!(disk = d.id, "cannot create bucket directories: {e}");
        }
    }
    let (freed, removed) = pool::cleanup(fs)?;
    if freed + removed > 0 {
        tracing::info!("start-up cleanup: {freed} orphaned inode(s) freed, {removed} stray extent file(s) removed");
    }
    Ok(())
}

/// The daemon's background services, started in dependency order.
struct Services {
    orchestrator: Arc<crate::recovery::Orchestrator>,
    analyzer: Option<Arc<crate::access::Analyzer>>,
    evacuator: Arc<crate::sharding::evacuate::Evacuator>,
    engine: Option<Arc<crate::sharding::Engine>>,
    risk: Arc<crate::risk::service::RiskService>,
}

fn start_services(
    fs: &Arc<crate::fs::Fs>,
    a: &MountArgs,
    cluster: Option<Arc<crate::cluster::Cluster>>,
) -> anyhow::Result<Services> {
    let agents = Arc::new(crate::agents::AgentPool::new(
        a.agent_mode,
        a.agent_limits.clone(),
        fs.extent_size() as usize,
    ));
    let orchestrator = crate::recovery::Orchestrator::start(fs.clone(), agents, a.recovery.clone());
    let analyzer = a.access.clone().map(|opts| start_analyzer(fs, opts));
    let evacuator = {
        let o = orchestrator.clone();
        let ev = crate::sharding::evacuate::Evacuator::new(
            fs.clone(),
            a.sharding.rate_bytes_per_s,
            a.sharding.chunk_bytes,
            Box::new(move || o.is_busy()),
        );
        ev.start();
        ev
    };
    let engine = analyzer.as_ref().map(|an| {
        let o = orchestrator.clone();
        let ev = evacuator.clone();
        // Evacuation and re-sharding share the migration budget: re-sharding waits.
        let e = crate::sharding::Engine::new(
            fs.clone(),
            an.clone(),
            a.sharding.clone(),
            Box::new(move || o.is_busy() || ev.is_active()),
        );
        e.start();
        e
    });
    let risk = start_risk(fs, a, &orchestrator, (engine.clone(), &evacuator), cluster)?;
    Ok(Services {
        orchestrator,
        analyzer,
        evacuator,
        engine,
        risk,
    })
}

/// The access analyzer with its saved summaries, fed by the core.
fn start_analyzer(
    fs: &Arc<crate::fs::Fs>,
    opts: crate::access::AccessOptions,
) -> Arc<crate::access::Analyzer> {
    let an = crate::access::Analyzer::new(opts);
    match an.load(&fs.meta) {
        Ok(n) if n > 0 => tracing::info!("access analyzer: {n} extent summaries loaded"),
        Ok(_) => {}
        Err(e) => tracing::warn!("access summaries not loaded: {e:#}"),
    }
    let meta = fs.meta.clone();
    an.set_resolver(Box::new(move |ino, index| {
        meta.extent(ino, index).ok().flatten().map(|e| e.shard)
    }));
    an.start(Some(fs.meta.clone()));
    fs.set_access(an.sink());
    an
}

impl Services {
    /// After the FUSE session: the background movers stop, everything buffered is flushed
    /// and synced (the kernel may not send DESTROY, e.g. after a lazy unmount), and the
    /// access summaries are saved.
    fn stop(&self, fs: &crate::fs::Fs) -> anyhow::Result<()> {
        if let Some(e) = &self.engine {
            e.shutdown();
        }
        self.evacuator.stop();
        self.risk.stop();
        fs.flush_all()
            .and_then(|_| fs.sync_all())
            .map_err(|e| anyhow::anyhow!("final flush failed: errno {}", e.0))?;
        if let Some(an) = &self.analyzer {
            if let Err(e) = an.save(&fs.meta).and_then(|_| fs.meta.sync_wal()) {
                tracing::warn!("cannot save access summaries: {e:#}");
            }
        }
        Ok(())
    }
}

/// SIGINT, SIGTERM and SIGHUP (blocked in every thread) unmount; a busy mount is detached.
/// Once every FUSE worker and ring queue serves: logged, and the parent told.
fn serving(pool_dir: &Path, mp: &Path, notify: Option<&mut fs::File>) {
    let ring = fuser::io_uring_threads();
    let via = if ring > 0 {
        format!("io_uring, {ring} threads")
    } else {
        "/dev/fuse".into()
    };
    let (pd, m) = (pool_dir.display(), mp.display());
    tracing::info!("mounted {pd} on {m} (fuse requests via {via})");
    if let Some(w) = notify {
        if let Err(e) = w.write_all(b"ok") {
            tracing::warn!("cannot tell the parent we are mounted: {e}");
        }
    }
}

fn spawn_signal_thread(
    sigs: libc::sigset_t,
    mut unmounter: fuser::SessionUnmounter,
    signal_mp: PathBuf,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: sigs is a valid set; sig a valid out-pointer.
            unsafe { libc::sigwait(&sigs, &mut sig) };
            tracing::info!("signal {sig}: unmounting");
            let Err(e) = unmounter.unmount() else {
                return;
            };
            // Files still open (SIGTERM at shutdown, say): detach the mount now; the kernel
            // ends the session, and the daemon flushes and exits, when the last one closes.
            tracing::warn!("unmount failed ({e}): busy; detaching it (lazy unmount)");
            match lazy_unmount(&signal_mp) {
                Ok(()) => return,
                Err(e) => tracing::error!("{e:#}; still serving (send the signal again)"),
            }
        })?;
    Ok(())
}

/// Starts the risk service and connects its snapshots to placement (the sharding engine
/// and recovery), the agent pool (agents per shard by loss risk x size) and evacuation.
fn start_risk(
    fs: &Arc<crate::fs::Fs>,
    a: &MountArgs,
    orchestrator: &Arc<crate::recovery::Orchestrator>,
    (engine, evacuator): (
        Option<Arc<crate::sharding::Engine>>,
        &Arc<crate::sharding::evacuate::Evacuator>,
    ),
    cluster: Option<Arc<crate::cluster::Cluster>>,
) -> anyhow::Result<Arc<crate::risk::service::RiskService>> {
    use crate::placement::RiskView;
    let (model, name) = crate::risk::service::load_model(a.risk_model.as_deref())?;
    let o = orchestrator.clone();
    let svc = crate::risk::service::RiskService::new(
        fs.clone(),
        model,
        name,
        a.risk.clone(),
        Box::new(move || {
            let r = o.status().rate_bytes_per_s;
            (r > 0.0).then_some(r)
        }),
    )?;
    let o = orchestrator.clone();
    let ev = evacuator.clone();
    let last_sig: parking_lot::Mutex<Vec<i32>> = parking_lot::Mutex::new(Vec::new());
    svc.on_update(Box::new(move |snap, view| {
        let v: Arc<dyn RiskView> = view.clone();
        if let Some(e) = &engine {
            e.set_risk(v.clone());
        }
        o.set_risk(v.clone());
        // Agents per shard by risk x size (a floor keeps every shard with data covered),
        // re-sized when a shard's risk moves by a factor of 2 or more.
        let sig: Vec<i32> = snap
            .shards
            .iter()
            .map(|s| s.p_loss_30d.max(1e-300).log2().floor() as i32)
            .collect();
        let mut last = last_sig.lock();
        if *last != sig {
            *last = sig;
            let w = view.clone();
            o.agents
                .set_risk(Arc::new(move |s| w.shard_risk(s).max(1e-12)));
        }
        drop(last);
        // Evacuate above the threshold; keep evacuating until the risk falls below the
        // warning level (hysteresis: a score hovering at the threshold does not flap).
        let settings = snap.settings.clone().unwrap_or_default();
        let cur = ev.status().disks;
        let disks: Vec<u32> = snap
            .disks
            .iter()
            .filter(|d| {
                d.p_fail_30d >= settings.evacuate
                    || (cur.contains(&d.id) && d.p_fail_30d >= settings.warn)
            })
            .map(|d| d.id)
            .collect();
        ev.set(disks, v);
    }));
    if let Some(c) = cluster {
        svc.set_remote_health(c);
    }
    svc.start();
    Ok(svc)
}

/// Unmounts a foreshard mount and waits for its daemon to finish and exit.
/// A process that has exited but whose parent has not reaped it yet (a daemon run as a
/// child, as `foreshard standby` runs the mount) counts as gone.
fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

pub fn umount(mp: &Path) -> anyhow::Result<()> {
    let c = fs::canonicalize(mp).or_else(|e| {
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            Ok(mp.to_path_buf())
        } else {
            Err(e)
        }
    });
    let c = c.with_context(|| format!("mountpoint {}", mp.display()))?;
    let Some((source, fstype)) = mount_source(&c)? else {
        bail!("{}: nothing is mounted there", mp.display());
    };
    if !fstype.contains("foreshard") && !source.starts_with("foreshard") {
        bail!(
            "{}: not a foreshard mount ({fstype} from {source})",
            mp.display()
        );
    }
    let pid = source
        .strip_prefix("foreshard:")
        .and_then(|p| fs::read_to_string(Path::new(p).join(PID_FILE)).ok())
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
    let st = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(&c)
        .status();
    if !st.is_ok_and(|s| s.success()) {
        let st = std::process::Command::new("umount").arg(&c).status();
        if !st.is_ok_and(|s| s.success()) {
            bail!("cannot unmount {} (busy?)", mp.display());
        }
    }
    if let Some(pid) = pid {
        let start = Instant::now();
        // SAFETY: kill with signal 0 only checks existence.
        while unsafe { libc::kill(pid, 0) } == 0 && !is_zombie(pid) {
            if start.elapsed() > Duration::from_secs(UMOUNT_WAIT_SECS_MAX) {
                bail!("daemon {pid} still running {UMOUNT_WAIT_SECS_MAX}s after unmount");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}
