//! The control socket: a Unix socket in the pool directory (mode 0600 from creation, peers
//! checked: root or the pool's owner only) through which the CLI asks a mounted pool for
//! status, shards and fsck.
//! One JSON request line in, one JSON response line out.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::admin;
use crate::api::{
    DiskAnswer, HeatAnswer, HostAnswer, RecoverWaitAnswer, Reply, Request, Response, RiskAnswer,
};
use crate::fs::Fs;
use crate::meta::DiskState;
use crate::recovery::Orchestrator;

/// Requests larger than this are refused (they are a few bytes normally).
const REQUEST_BYTES_MAX: usize = 64 * 1024;
/// Concurrent connections served; more wait in the listen backlog.
const CONNECTIONS_MAX: usize = 16;

/// What a request runs against: the core, and the recovery orchestrator of a mounted pool.
pub struct Services {
    pub fs: Arc<Fs>,
    pub recovery: Option<Arc<Orchestrator>>,
    pub access: Option<Arc<crate::access::Analyzer>>,
    pub sharding: Option<Arc<crate::sharding::Engine>>,
    pub risk: Option<Arc<crate::risk::service::RiskService>>,
    pub evacuator: Option<Arc<crate::sharding::evacuate::Evacuator>>,
    /// A cluster pool's map side (`host add|drain|remove`).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

impl Services {
    /// An unmounted pool: the core only.
    pub fn offline(fs: Arc<Fs>) -> Services {
        Services {
            fs,
            recovery: None,
            access: None,
            sharding: None,
            risk: None,
            evacuator: None,
            cluster: None,
        }
    }

    /// The mounted analyzer, or (unmounted) one loaded with what the last mount saved.
    /// The recovery orchestrator, which only a mounted pool has.
    fn orchestrator(&self) -> anyhow::Result<&Arc<Orchestrator>> {
        self.recovery
            .as_ref()
            .context("the pool is not mounted: recovery runs in the daemon")
    }

    fn analyzer(&self) -> anyhow::Result<Arc<crate::access::Analyzer>> {
        if let Some(a) = &self.access {
            return Ok(a.clone());
        }
        let a = crate::access::Analyzer::new(crate::access::AccessOptions::default());
        a.load(&self.fs.meta)?;
        let fs = self.fs.clone();
        a.set_resolver(Box::new(move |ino, index| {
            fs.meta.extent(ino, index).ok().flatten().map(|e| e.shard)
        }));
        Ok(a)
    }
}

/// Finds a disk by id or by its directory path.
pub fn resolve_disk(fs: &Fs, disk: &str) -> anyhow::Result<u32> {
    let disks = fs.store.disks();
    if let Ok(id) = disk.parse::<u32>() {
        if disks.iter().any(|d| d.id == id) {
            return Ok(id);
        }
        bail!("no disk {id} in this pool");
    }
    let p = Path::new(disk);
    let c = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    // A removed disk that was added again has two ids for one path: the live one first.
    let by_path = |d: &&Arc<crate::store::Disk>| d.root == c || d.root == p;
    disks
        .iter()
        .filter(by_path)
        .min_by_key(|d| d.state() == DiskState::Removed)
        .map(|d| d.id)
        .ok_or_else(|| anyhow::anyhow!("{disk}: not a disk of this pool"))
}

/// Runs a request; `svc.recovery` is None when the pool is not mounted.
pub fn handle(svc: &Services, req: &Request) -> anyhow::Result<Response> {
    let fs = &svc.fs;
    Ok(match req {
        Request::Ping => Response::Pong("pong"),
        Request::Status => Response::Status(Box::new(status(svc)?)),
        Request::Shards => Response::Shards(crate::sharding::report::shards(fs)?),
        Request::Fsck { repair } => Response::Fsck(admin::fsck(fs, *repair)?),
        Request::DiskFail { .. }
        | Request::DiskAdd { .. }
        | Request::DiskRemove { .. }
        | Request::DiskFault { .. } => Response::Disk(disk_request(svc, req)?),
        Request::DiskOnline { disk } => {
            let id = resolve_disk(fs, disk)?;
            Response::Online(match &svc.recovery {
                Some(o) => o.online_disk(id)?,
                None => crate::recovery::online_disk(fs, id)?,
            })
        }
        Request::Recover => Response::Recovery(svc.orchestrator()?.status()),
        Request::Heat { svg } => Response::Heat(Box::new(heat(svc, *svg)?)),
        Request::Reshard { dry_run } => Response::Plan(reshard(svc, *dry_run)?),
        Request::Migration => match &svc.sharding {
            Some(e) => Response::Migration(e.status()),
            None => bail!("the pool is not mounted: re-sharding runs in the daemon"),
        },
        Request::Risk { set } => Response::Risk(Box::new(risk(svc, set.as_ref())?)),
        Request::HostAdd { .. } | Request::HostDrain { .. } | Request::HostRelease { .. } => {
            Response::Host(host_request(svc, req)?)
        }
        Request::RecoverWait { timeout_s } => {
            let o = svc.orchestrator()?;
            let idle = o.wait_idle(Duration::from_secs(*timeout_s));
            let status = o.status();
            Response::RecoverWait(RecoverWaitAnswer { status, idle })
        }
    })
}

fn status(svc: &Services) -> anyhow::Result<admin::Status> {
    let mounted = svc.recovery.is_some();
    let mut s = admin::status(&svc.fs, mounted)?;
    if let Some(o) = &svc.recovery {
        s.recovery = Some(o.status());
        s.agents = Some(o.agents.status());
    }
    s.access = svc.access.as_ref().map(|a| a.stats());
    s.migration = svc.sharding.as_ref().map(|e| e.status());
    s.risk = svc.risk.as_ref().map(|r| risk_report(svc, r));
    s.fuse = mounted.then(admin::FuseTransport::current);
    s.health = mounted.then(crate::supervise::health);
    s.standby = svc.cluster.as_ref().and_then(|c| c.standby.lock().clone());
    Ok(s)
}

/// `disk fail|add|remove|fault`.
fn disk_request(svc: &Services, req: &Request) -> anyhow::Result<DiskAnswer> {
    let fs = &svc.fs;
    let answer = |disk, state: Option<DiskState>| DiskAnswer {
        disk,
        state,
        fault: None,
    };
    match req {
        Request::DiskFail { disk } => {
            let id = resolve_disk(fs, disk)?;
            match &svc.recovery {
                Some(o) => o.fail_disk(id, "operator: foreshard disk fail"),
                None => fs.set_disk_state(id, DiskState::Failed)?,
            }
            Ok(answer(id, Some(DiskState::Failed)))
        }
        Request::DiskAdd { path } => {
            let id = match &svc.recovery {
                Some(o) => o.add_disk(Path::new(path))?,
                None => {
                    let id = crate::recovery::add_disk(fs, Path::new(path))?;
                    crate::recovery::rebalance_onto(fs, id)?;
                    id
                }
            };
            Ok(answer(id, None))
        }
        Request::DiskRemove { disk } => {
            let id = resolve_disk(fs, disk)?;
            match &svc.recovery {
                Some(o) => o.drain_disk(id)?,
                None => bail!("the pool is not mounted: mount it to drain a disk"),
            }
            Ok(answer(id, Some(DiskState::Draining)))
        }
        Request::DiskFault {
            disk,
            eio_rate,
            delay_ms,
        } => disk_fault(svc, disk, *eio_rate, *delay_ms),
        _ => bail!("not a disk request"),
    }
}

/// `host add|drain|remove` on a mounted cluster pool.
fn host_request(svc: &Services, req: &Request) -> anyhow::Result<HostAnswer> {
    let o = svc.orchestrator()?;
    let Some(c) = &svc.cluster else {
        bail!("not a cluster pool: its disks are local (disk add|remove)");
    };
    let (host, disks) = match req {
        Request::HostAdd { host } => {
            let ids = c.add_host(&svc.fs, host)?;
            o.rebalance_new(&ids)?;
            (host, ids)
        }
        Request::HostDrain { host } => {
            // One host change at a time: a drain's host count must not race an add.
            let _one = c.admin.lock();
            (host, o.drain_host(host)?)
        }
        Request::HostRelease { host } => (host, c.release_host(&svc.fs, host)?),
        _ => bail!("not a host request"),
    };
    Ok(HostAnswer {
        host: host.clone(),
        disks,
    })
}

fn disk_fault(
    svc: &Services,
    disk: &str,
    eio_rate: Option<f64>,
    delay_ms: Option<u64>,
) -> anyhow::Result<DiskAnswer> {
    if svc.recovery.is_none() {
        bail!("the pool is not mounted: faults are injected into a running daemon");
    }
    let id = resolve_disk(&svc.fs, disk)?;
    let d = svc.fs.store.disk(id).expect("resolved");
    let mut f = d.fault();
    if let Some(r) = eio_rate {
        if !(0.0..=1.0).contains(&r) {
            bail!("eio rate must be between 0 and 1");
        }
        f.eio_rate = r;
    }
    if let Some(ms) = delay_ms {
        f.delay_ms = ms;
    }
    d.set_fault(f);
    tracing::warn!(disk = id, ?f, "fault injection changed");
    Ok(DiskAnswer {
        disk: id,
        state: None,
        fault: Some(f),
    })
}

fn heat(svc: &Services, svg: bool) -> anyhow::Result<HeatAnswer> {
    let a = svc.analyzer()?;
    let shard_max = svc.sharding.as_ref().map_or(
        crate::sharding::ShardingOptions::default().shard_bytes_max,
        |e| e.opts.shard_bytes_max,
    );
    let report = crate::sharding::report::heat_report(&svc.fs, &a, shard_max)?;
    let svg = if svg {
        Some(crate::sharding::report::heat_svg(&svc.fs, &report)?)
    } else {
        None
    };
    Ok(HeatAnswer { report, svg })
}

fn reshard(svc: &Services, dry_run: bool) -> anyhow::Result<crate::sharding::PlanSummary> {
    match &svc.sharding {
        Some(e) => e.reshard(dry_run),
        None if dry_run => {
            let e = crate::sharding::Engine::new(
                svc.fs.clone(),
                svc.analyzer()?,
                crate::sharding::ShardingOptions::default(),
                Box::new(|| false),
            );
            e.reshard(true)
        }
        None => bail!(
            "the pool is not mounted: re-sharding runs in the daemon (--dry-run works offline)"
        ),
    }
}

fn risk(
    svc: &Services,
    set: Option<&crate::risk::service::RiskSettings>,
) -> anyhow::Result<RiskAnswer> {
    let fs = &svc.fs;
    if let Some(r) = &svc.risk {
        if let Some(new) = set {
            r.set_settings(new.clone())?;
            r.collect_round()?;
        }
        let snapshot = risk_report(svc, r);
        return Ok(RiskAnswer {
            snapshot,
            mounted: None,
        });
    }
    if let Some(new) = set {
        crate::risk::service::save_settings(&fs.meta, new)?;
    }
    // Unmounted: one collection round now (health files, /sys, the history the daemon
    // kept) with the shipped model; no smartctl, no evacuation.
    let (model, name) = crate::risk::service::load_model(None)?;
    let r = crate::risk::service::RiskService::new(
        fs.clone(),
        model,
        name,
        crate::risk::service::RiskOptions {
            smartctl: false,
            ..Default::default()
        },
        Box::new(|| None),
    )?;
    r.collect_round()?;
    Ok(RiskAnswer {
        snapshot: risk_report(svc, &r),
        mounted: Some(false),
    })
}

/// The latest risk snapshot with the evacuation progress, shards cut to the riskiest.
fn risk_report(
    svc: &Services,
    r: &crate::risk::service::RiskService,
) -> crate::risk::service::Snapshot {
    let mut s = (*r.snapshot()).clone();
    s.shards.truncate(crate::risk::service::SHARDS_REPORTED_MAX);
    s.evacuation = svc.evacuator.as_ref().map(|e| e.status());
    s
}

/// An idle client is dropped after this long without a full request line, so idle
/// connections cannot hold every slot.
const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// A client must have taken its whole answer within this (a `shards --json` of a large pool
/// is megabytes).
const CLIENT_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long shutdown waits for requests already running (an fsck of a large pool can take
/// long; `umount` waits up to 120 s for the daemon).
const SHUTDOWN_WAIT_MAX: Duration = Duration::from_secs(60);
/// Refused connections logged at most every this many (a flood must not fill the log).
const REFUSED_LOG_EVERY: u64 = 1000;

/// The marker field of the answer a daemon that is shutting down gives: the CLI waits.
pub const SHUTTING_DOWN: &str = "shutting_down";

/// Gate between the socket and shutdown: once stopped, requests are answered "shutting
/// down" without running, and `stop` returns when those already running are done.
#[derive(Default)]
pub struct Control {
    state: parking_lot::Mutex<(bool, usize)>,
    done: parking_lot::Condvar,
}

impl Control {
    /// Enters a request; false once stopping.
    fn enter(&self) -> bool {
        let mut st = self.state.lock();
        if st.0 {
            return false;
        }
        st.1 += 1;
        true
    }
    fn leave(&self) {
        let mut st = self.state.lock();
        st.1 -= 1;
        self.done.notify_all();
    }
    /// Refuses new requests and waits (bounded) for running ones.
    pub fn stop(&self) {
        let deadline = std::time::Instant::now() + SHUTDOWN_WAIT_MAX;
        let mut st = self.state.lock();
        st.0 = true;
        while st.1 > 0 && !self.done.wait_until(&mut st, deadline).timed_out() {}
        if st.1 > 0 {
            tracing::warn!("{} control request(s) still running at shutdown", st.1);
        }
    }
}

/// Counts a running request out when dropped (a panicking handler too).
struct Leave(Arc<Control>);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// Root and the pool's owner (the owner of the pool directory) may use the socket.
fn peer_allowed(stream: &tokio::net::UnixStream, owner_uid: u32) -> Result<(), String> {
    match stream.peer_cred() {
        Ok(c) if c.uid() == 0 || c.uid() == owner_uid => Ok(()),
        Ok(c) => Err(format!(
            "permission denied: uid {} is neither root nor the pool's owner",
            c.uid()
        )),
        Err(e) => Err(format!("cannot check the caller's credentials: {e}")),
    }
}

fn answer_line(reply: anyhow::Result<Response>) -> String {
    let reply = match reply {
        Ok(r) => Reply::Ok(Box::new(r)),
        Err(e) => Reply::Error(format!("{e:#}")),
    };
    let mut s = serde_json::to_string(&reply)
        .unwrap_or_else(|e| format!("{{\"error\":\"cannot encode the answer: {e}\"}}"));
    s.push('\n');
    s
}

/// One client: a request line within `CLIENT_IDLE_TIMEOUT`, its answer taken within
/// `CLIENT_ANSWER_TIMEOUT`.
async fn serve_client(stream: tokio::net::UnixStream, svc: Arc<Services>, gate: Arc<Control>) {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut rd = tokio::io::BufReader::new(rd).take(REQUEST_BYTES_MAX as u64);
    match tokio::time::timeout(CLIENT_IDLE_TIMEOUT, rd.read_line(&mut line)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return,
    }
    let out = match serde_json::from_str::<Request>(&line) {
        // Only waits for recovery: shutdown need not wait for it (the client sees EOF).
        Ok(req @ Request::RecoverWait { .. }) => {
            let reply = tokio::task::spawn_blocking(move || handle(&svc, &req))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("handler panicked: {e}")));
            answer_line(reply)
        }
        // enter() counts the request in when it returns true (the next arm runs it).
        Ok(_) if !gate.enter() => {
            let mut s = serde_json::json!({
                "error": "the daemon is shutting down",
                "shutting_down": true,
            })
            .to_string();
            s.push('\n');
            s
        }
        Ok(req) => {
            let g = Leave(gate.clone());
            let reply = tokio::task::spawn_blocking(move || {
                let _g = g;
                handle(&svc, &req)
            })
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("handler panicked: {e}")));
            answer_line(reply)
        }
        Err(e) => answer_line(Err(anyhow::anyhow!("bad request: {e}"))),
    };
    let _ = tokio::time::timeout(CLIENT_ANSWER_TIMEOUT, wr.write_all(out.as_bytes())).await;
}

/// Serves the socket on its own thread until the process exits; `Control::stop` ends the
/// serving of requests. The socket is created 0600 (umask around bind: never open to others
/// in between) and answers root and the pool directory's owner only.
pub fn serve(svc: Arc<Services>, path: &Path) -> anyhow::Result<Arc<Control>> {
    use std::os::unix::fs::MetadataExt;
    let owner_uid = std::fs::metadata(path.parent().unwrap_or(Path::new("/")))?.uid();
    let _ = std::fs::remove_file(path);
    let std_listener = {
        let _mask = crate::pool::Umask::private();
        std::os::unix::net::UnixListener::bind(path)
            .with_context(|| format!("{}: cannot create control socket", path.display()))?
    };
    std_listener.set_nonblocking(true)?;
    let gate = Arc::new(Control::default());
    let g = gate.clone();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(accept_loop(std_listener, svc, g, owner_uid));
        })?;
    Ok(gate)
}

async fn accept_loop(
    std_listener: std::os::unix::net::UnixListener,
    svc: Arc<Services>,
    gate: Arc<Control>,
    owner_uid: u32,
) {
    let listener = tokio::net::UnixListener::from_std(std_listener).expect("listener");
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let mut refused = 0u64;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        if let Err(why) = peer_allowed(&stream, owner_uid) {
            if refused.is_multiple_of(REFUSED_LOG_EVERY) {
                tracing::warn!("control socket: {why} (refused {} so far)", refused + 1);
            }
            refused += 1;
            // One small line into an empty socket buffer: never blocks.
            let _ = stream.try_write(answer_line(Err(anyhow::anyhow!(why))).as_bytes());
            continue;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let (svc, gate) = (svc.clone(), gate.clone());
        tokio::spawn(async move {
            let _permit = permit;
            serve_client(stream, svc, gate).await;
        });
    }
}

/// What the daemon answered.
pub enum Answer {
    Ok(serde_json::Value),
    /// No daemon listens on the socket.
    NoDaemon,
    /// The daemon is shutting down (it said so, or closed the connection without an answer).
    ShuttingDown,
}

/// Sends a request to a mounted pool.
pub fn call(pool: &Path, req: &Request, timeout: Duration) -> anyhow::Result<Answer> {
    let path = pool.join(crate::pool::SOCKET_FILE);
    let mut s = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
            "{}: permission denied (only root and the pool's owner may use it)",
            path.display()
        ),
        Err(_) => return Ok(Answer::NoDaemon),
    };
    s.set_read_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    // A failed write still reads on: a daemon that refused us left its reason to read.
    let _ = s.write_all(line.as_bytes());
    let mut resp = String::new();
    match BufReader::new(s).read_line(&mut resp) {
        // Closed without an answer (reset: with our request unread): the daemon is exiting.
        Ok(0) => return Ok(Answer::ShuttingDown),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            return Ok(Answer::ShuttingDown)
        }
        Ok(_) => {}
        Err(e) => return Err(e).context("no answer from the daemon"),
    }
    let v: serde_json::Value = serde_json::from_str(&resp).context("bad answer from the daemon")?;
    if v.get(SHUTTING_DOWN).is_some() {
        return Ok(Answer::ShuttingDown);
    }
    if let Some(e) = v.get("error") {
        bail!("daemon: {}", e.as_str().unwrap_or("error"));
    }
    Ok(Answer::Ok(v.get("ok").cloned().unwrap_or_default()))
}
