//! Failure detection and the Recovery Orchestrator (RO).
//!
//! The monitor thread probes every disk each `probe_interval` (label check, then write +
//! fsync + read back of a small file under a deadline). A missing root or a wrong label fails
//! the disk at once; a probe that errs or hangs makes it suspect, `fail_after` in a row fail it.
//! `disk fail` does the same by hand.
//!
//! A failure (or a drain, or a new disk) wakes the recovery thread. It gives every shard that
//! names a disk that can no longer take data a new placement (the failed disk replaced by a
//! target: room, not already in the shard), raising the shard's epoch, then activates the
//! agents: pre-provisioned ones run straight from their plan, reactive ones are made and
//! planned now. Agents copy, verify and stage; the orchestrator checks and installs staged
//! copies (`Fs::recovery_check`), makes them durable (each file and its bucket directory
//! synced, `Store::sync_extents`) and commits each under the shard epoch
//! (`Fs::commit_installed`). Catch-up passes scan the metadata until no extent lacks a
//! replica, so writes racing with recovery and a second failure are covered. Progress is the
//! metadata itself (an extent's replicas), so after kill -9 the next mount resumes where it
//! stopped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::mpsc::sync_channel;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use crate::agents::{Agent, AgentPool, CopyFail, CopyItem, CopyResult};
use crate::fs::{Fs, RecoveryCommit};
use crate::meta::DiskState;
use crate::store::{Disk, ExtentId};

/// Catch-up passes after the first; each rescans the metadata.
const PASSES_MAX: usize = 50;
/// Verified copies waiting for the recovery committer (agents block beyond it).
const COMMIT_QUEUE_MAX: usize = 256;
/// Copies made durable and committed together at most.
const COMMIT_BATCH_MAX: usize = 256;
/// How long the recovery committer gathers copies before making them durable.
const COMMIT_INTERVAL: Duration = Duration::from_millis(250);

/// How recovery shares bandwidth with foreground I/O, after Ceph's mClock profiles: the share
/// of the bandwidth in use that recovery takes while clients are doing I/O (see `Limiter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Profile {
    HighClientOps,
    Balanced,
    HighRecoveryOps,
}

impl Profile {
    fn recovery_share(self) -> f64 {
        match self {
            Profile::HighClientOps => 0.25,
            Profile::Balanced => 0.5,
            Profile::HighRecoveryOps => 0.9,
        }
    }
}

/// The recovery flags of `foreshard mount` (clap) and what the detector and the Orchestrator
/// run with; the defaults are the flags' defaults.
#[derive(Clone, Debug, clap::Parser)]
pub struct RecoveryOptions {
    /// Recovery copy rate limit per second (e.g. 200MiB; 0 = none).
    #[arg(id = "recovery-rate", long = "recovery-rate", value_name = "RECOVERY_RATE", default_value = "0", value_parser = util::parse_size)]
    pub rate_bytes_max: u64,
    /// Recovery rate per second kept however busy clients are (mClock reservation).
    #[arg(id = "recovery-reservation", long = "recovery-reservation", value_name = "RECOVERY_RESERVATION", default_value = "8MiB", value_parser = util::parse_size)]
    pub reservation_bytes_per_s: u64,
    /// Recovery's share of bandwidth while clients do I/O (0.25, 0.5, 0.9).
    #[arg(
        id = "recovery-profile",
        long = "recovery-profile",
        value_name = "RECOVERY_PROFILE",
        value_enum,
        default_value = "balanced"
    )]
    pub profile: Profile,
    /// Disk health probe (write, fsync, read back) period in milliseconds.
    #[arg(id = "probe-interval-ms", long = "probe-interval-ms", value_name = "PROBE_INTERVAL_MS", default_value = "1000",
          value_parser = util::millis_in(Duration::from_millis(10), Duration::from_secs(60)))]
    pub probe_interval: Duration,
    /// A probe running longer than this counts as failed (milliseconds).
    #[arg(id = "probe-deadline-ms", long = "probe-deadline-ms", value_name = "PROBE_DEADLINE_MS", default_value = "1000",
          value_parser = util::millis_in(Duration::from_millis(10), Duration::from_secs(600)))]
    pub probe_deadline: Duration,
    /// A disk whose root or label vanished stays suspect this long (milliseconds)
    /// before it is failed and its data rebuilt elsewhere.
    #[arg(id = "missing-grace-ms", long = "missing-grace-ms", value_name = "MISSING_GRACE_MS", default_value = "10000",
          value_parser = util::millis_in(Duration::ZERO, Duration::from_secs(3600)))]
    pub missing_grace: Duration,
    /// A cluster pool: a storage host that cannot be reached (dead, cut off, paused) has
    /// its disks suspect this long (milliseconds) before they are failed and rebuilt on
    /// other hosts. A host back within it has nothing copied.
    #[arg(id = "host-grace-ms", long = "host-grace-ms", value_name = "HOST_GRACE_MS", default_value = "60000",
          value_parser = util::millis_in(Duration::ZERO, Duration::from_secs(3600)))]
    pub host_grace: Duration,
    // Not flags. How often labels and roots are checked and probe results collected.
    #[arg(skip = Duration::from_millis(50))]
    pub check_interval: Duration,
    // Failed probes in a row that turn a suspect disk into a failed one.
    #[arg(skip = 3u32)]
    pub fail_after: u32,
    // How often a stale plan is rebuilt.
    #[arg(skip = Duration::from_secs(2))]
    pub plan_refresh_interval: Duration,
}

impl Default for RecoveryOptions {
    fn default() -> Self {
        // The flags' defaults: one source for the CLI and the library.
        <Self as clap::Parser>::parse_from(["foreshard"])
    }
}

use crate::util::{self, now_ms};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Failure {
    pub disk: u32,
    pub reason: String,
    pub at_ms: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ShardProgress {
    pub id: u32,
    pub epoch: u64,
    pub disks: Vec<u32>,
    pub extents_total: u64,
    pub extents_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
    /// At this shard's own rate so far.
    #[serde(default)]
    pub eta_s: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LostShard {
    pub id: u32,
    pub extents: u64,
    /// Files with data in the lost extents (path from the mount root).
    pub files: Vec<String>,
}

/// A recovery's state, as `status --json` spells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecoveryState {
    #[default]
    #[serde(rename = "idle")]
    Idle,
    #[serde(rename = "running")]
    Running,
    #[serde(rename = "done")]
    Done,
}

impl RecoveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryState::Idle => "idle",
            RecoveryState::Running => "running",
            RecoveryState::Done => "done",
        }
    }
}

impl std::fmt::Display for RecoveryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RecoveryStatus {
    /// idle (nothing ever to do), running, done.
    pub state: RecoveryState,
    pub mode: String,
    pub failed_disks: Vec<u32>,
    pub failures: Vec<Failure>,
    pub detected_at_ms: Option<u64>,
    pub activated_at_ms: Option<u64>,
    pub first_extent_at_ms: Option<u64>,
    pub done_at_ms: Option<u64>,
    /// Failure detected -> first extent copied and verified on its target (monotonic clock).
    pub activation_us: Option<u64>,
    pub extents_total: u64,
    pub extents_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
    pub rate_bytes_per_s: f64,
    pub eta_s: Option<f64>,
    pub passes: u64,
    pub copy_errors: u64,
    pub fenced: u64,
    /// Shards that still need a target disk (no disk had room or all are in the shard).
    pub shards_without_target: Vec<u32>,
    pub lost_shards: Vec<LostShard>,
    /// The run picked up work left by an earlier daemon (kill -9 during recovery).
    pub resumed: bool,
    pub shards: Vec<ShardProgress>,
}

pub struct Orchestrator {
    pub fs: Arc<Fs>,
    pub agents: Arc<AgentPool>,
    pub opts: RecoveryOptions,
    status: Mutex<RecoveryStatus>,
    detected: Mutex<Option<Instant>>,
    first_extent: Mutex<Option<Instant>>,
    /// Guards `requested` changes against the recovery thread's check-then-wait.
    wake: Mutex<()>,
    cv: Condvar,
    /// Set while a run is active (a `wait` returns when it clears and nothing is pending).
    running: Mutex<bool>,
    /// Kicks asked for and kicks a finished run has covered (for `wait_idle`).
    requested: std::sync::atomic::AtomicU64,
    completed: std::sync::atomic::AtomicU64,
    run_cv: Condvar,
    limiter: Limiter,
    /// Disk risk for choosing recovery targets (uniform until the risk service runs).
    risk: parking_lot::RwLock<Arc<dyn crate::placement::RiskView>>,
    /// Remote disks failed because their host did not answer: brought back (`disk
    /// online`) when it answers again (`detect::host_returns`).
    host_failed: Mutex<HashSet<u32>>,
}

/// The recovery thread: a run at start-up, then one per kick (failure, drain, new disk),
/// or when a placement names a dead disk or writes went out with too few replicas.
fn recovery_loop(w: &std::sync::Weak<Orchestrator>) {
    if let Some(o) = w.upgrade() {
        // A run that panicked left `running` set: re-sharding and evacuation wait on it.
        if std::mem::replace(&mut *o.running.lock(), false) {
            o.run_cv.notify_all();
        }
    }
    let mut first = true;
    let mut degraded_seen = 0;
    // Kicks covered by the runs so far; `requested` beyond it means work.
    let mut seen = 0;
    loop {
        let Some(o) = w.upgrade() else { break };
        let woken = {
            let mut g = o.wake.lock();
            if o.requested.load(Ordering::SeqCst) == seen {
                o.cv.wait_for(&mut g, Duration::from_secs(1));
            }
            o.requested.load(Ordering::SeqCst) != seen
        };
        // Without a wake-up, work is a placement that names a dead disk, or extents
        // written with fewer replicas than wanted (a full disk).
        let degraded = o.fs.stats.degraded_writes.load(Ordering::Relaxed);
        let degraded_new = std::mem::replace(&mut degraded_seen, degraded) != degraded;
        if woken || degraded_new || o.needs_placement() {
            let asked = o.requested.load(Ordering::SeqCst);
            seen = asked;
            *o.running.lock() = true;
            crate::supervise::fault_point("recovery");
            if let Err(e) = o.run(first) {
                tracing::error!("recovery run failed: {e:#}");
            }
            o.completed.store(asked, Ordering::SeqCst);
            *o.running.lock() = false;
            o.run_cv.notify_all();
            first = false;
        }
    }
}

/// Holds the agents of a pass back until the leader's first copy is done (or a time-out).
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn release(&self) {
        *self.open.lock() = true;
        self.cv.notify_all();
    }

    fn wait(&self, timeout: Duration) {
        let mut open = self.open.lock();
        if !*open {
            self.cv.wait_for(&mut open, timeout);
        }
    }
}

/// What one commit batch did, added to the status at its end.
#[derive(Default)]
struct BatchCounts {
    bytes: u64,
    extents: u64,
    fenced: u64,
    errors: u64,
    /// Per shard: (extents, bytes) committed.
    per_shard: HashMap<u32, (u64, u64)>,
}

impl BatchCounts {
    fn count(&mut self, it: &CopyItem, r: crate::fs::FsResult<RecoveryCommit>) {
        match r {
            Ok(RecoveryCommit::Done) => {
                self.bytes += u64::from(it.len);
                self.extents += 1;
                let e = self.per_shard.entry(it.shard).or_default();
                e.0 += 1;
                e.1 += u64::from(it.len);
            }
            Ok(RecoveryCommit::Fenced) => self.fenced += 1,
            Ok(_) => {}
            Err(e) => {
                self.errors += 1;
                tracing::warn!(
                    ino = it.ino,
                    index = it.index,
                    "recovery commit failed: errno {}",
                    e.0
                );
            }
        }
    }

    fn add_to(&self, st: &mut RecoveryStatus) {
        st.bytes_done += self.bytes;
        st.extents_done += self.extents;
        st.fenced += self.fenced;
        st.copy_errors += self.errors;
        for sp in st.shards.iter_mut() {
            if let Some((e, b)) = self.per_shard.get(&sp.id) {
                sp.extents_done += e;
                sp.bytes_done += b;
            }
        }
    }
}

impl Orchestrator {
    /// Starts the monitor, planner and recovery threads. Work left by an earlier daemon is
    /// picked up at once.
    pub fn start(fs: Arc<Fs>, agents: Arc<AgentPool>, opts: RecoveryOptions) -> Arc<Orchestrator> {
        let o = Arc::new(Orchestrator {
            limiter: Limiter::new(&opts),
            risk: parking_lot::RwLock::new(Arc::new(crate::placement::UniformRisk)),
            fs,
            agents,
            opts,
            status: Mutex::new(RecoveryStatus {
                state: RecoveryState::Idle,
                ..Default::default()
            }),
            detected: Mutex::new(None),
            first_extent: Mutex::new(None),
            wake: Mutex::new(()),
            cv: Condvar::new(),
            running: Mutex::new(false),
            run_cv: Condvar::new(),
            requested: std::sync::atomic::AtomicU64::new(1),
            completed: std::sync::atomic::AtomicU64::new(0),
            host_failed: Mutex::new(HashSet::new()),
        });
        o.status.lock().mode = o.agents.status().mode;
        if let Err(e) = o.agents.provision() {
            tracing::error!("cannot create recovery agents: {e}");
        }
        for d in o.fs.store.disks() {
            if d.state() == DiskState::Failed {
                o.status.lock().failed_disks.push(d.id);
            }
        }
        use crate::supervise::{fault_point, spawn};
        let w = Arc::downgrade(&o);
        spawn("recovery", move || recovery_loop(&w)).expect("spawn recovery thread");
        let w = Arc::downgrade(&o);
        spawn("planner", move || loop {
            let Some(o) = w.upgrade() else { break };
            fault_point("planner");
            let interval = o.opts.plan_refresh_interval;
            if !*o.running.lock() && o.agents.plan_stale(&o.fs) {
                if let Err(e) = o.agents.refresh(&o.fs) {
                    tracing::error!("recovery plan refresh failed: {e:#}");
                }
            }
            drop(o);
            std::thread::sleep(interval);
        })
        .expect("spawn planner thread");
        let w = Arc::downgrade(&o);
        spawn("monitor", move || monitor(w.clone())).expect("spawn monitor thread");
        if o.fs.store.disks().iter().any(|d| d.is_remote()) {
            let w = Arc::downgrade(&o);
            spawn("host-returns", move || detect::host_returns(w.clone()))
                .expect("spawn host-returns thread");
        }
        o
    }

    pub fn kick(&self) {
        // Under the lock, so the recovery thread cannot miss it between check and wait.
        let _g = self.wake.lock();
        self.requested.fetch_add(1, Ordering::SeqCst);
        self.cv.notify_all();
    }

    /// Marks a disk failed (persistently) and starts recovery.
    pub fn fail_disk(&self, id: u32, reason: &str) {
        let Some(d) = self.fs.store.disk(id) else {
            return;
        };
        if d.state() == DiskState::Failed || d.state() == DiskState::Removed {
            return;
        }
        let now = Instant::now();
        self.fs.fail_disk(id);
        tracing::error!(disk = id, path = %d.root.display(), "disk failed: {reason}");
        {
            let mut det = self.detected.lock();
            let mut st = self.status.lock();
            if st.state != RecoveryState::Running || det.is_none() {
                *det = Some(now);
                *self.first_extent.lock() = None;
                st.detected_at_ms = Some(now_ms());
                st.first_extent_at_ms = None;
                st.activation_us = None;
                st.done_at_ms = None;
            }
            st.failed_disks.push(id);
            st.failures.push(Failure {
                disk: id,
                reason: reason.to_string(),
                at_ms: now_ms(),
            });
        }
        self.kick();
    }

    /// Brings a failed disk back (`disk online`), then lets recovery copy what it lacks.
    pub fn online_disk(&self, id: u32) -> anyhow::Result<OnlineReport> {
        let r = online_disk(&self.fs, id)?;
        self.status.lock().failed_disks.retain(|d| *d != id);
        self.kick();
        Ok(r)
    }

    /// The risk view recovery targets are chosen by.
    pub fn set_risk(&self, r: Arc<dyn crate::placement::RiskView>) {
        *self.risk.write() = r;
    }

    fn at_risk(&self) -> impl Fn(u32) -> bool {
        let r = self.risk.read().clone();
        move |d| r.disk_risk(d) >= r.risk_warn()
    }

    /// Starts draining a healthy disk: its replicas move elsewhere, then it is released.
    pub fn drain_disk(&self, id: u32) -> anyhow::Result<()> {
        let d = self
            .fs
            .store
            .disk(id)
            .with_context(|| format!("no disk {id} in this pool"))?;
        match d.state() {
            DiskState::Up | DiskState::Suspect => {}
            DiskState::Draining => return Ok(()),
            s => bail!("disk {id} is {}: nothing to drain", s.name()),
        }
        let others = self
            .fs
            .store
            .disks()
            .iter()
            .filter(|x| x.id != id && x.accepts_data())
            .count();
        if others < self.fs.cfg.replicas as usize {
            bail!(
                "cannot remove disk {id}: {others} other disk(s) left for {} replicas",
                self.fs.cfg.replicas
            );
        }
        self.fs.set_disk_state(id, DiskState::Draining)?;
        self.mark_started();
        self.kick();
        Ok(())
    }

    /// A drain starts the clock of the recovery pass that moves it. One lock at a time:
    /// `fail_disk` takes `detected` before `status`.
    fn mark_started(&self) {
        *self.detected.lock() = Some(Instant::now());
        self.status.lock().detected_at_ms = Some(now_ms());
    }

    /// Starts draining every disk of a storage host (`host drain`), as `drain_disk` does
    /// one: refused while the other hosts could not hold `replicas` copies on distinct
    /// hosts. Returns the disks now draining (failed ones have nothing left to move).
    pub fn drain_host(&self, host: &str) -> anyhow::Result<Vec<u32>> {
        let on_host = |d: &Disk| crate::cluster::on_host(d, host);
        let disks = self.fs.store.disks();
        let mine: Vec<&Arc<Disk>> = disks.iter().filter(|d| on_host(d)).collect();
        if mine.is_empty() {
            bail!("host {host} has no disk in this pool");
        }
        let others: HashSet<u32> = disks
            .iter()
            .filter(|d| !on_host(d) && d.accepts_data())
            .map(|d| d.host())
            .collect();
        if others.len() < self.fs.cfg.replicas as usize {
            bail!(
                "cannot drain host {host}: {} other host(s) take data, {} replicas need as many",
                others.len(),
                self.fs.cfg.replicas
            );
        }
        let mut out = Vec::new();
        for d in mine {
            if matches!(d.state(), DiskState::Up | DiskState::Suspect) {
                self.fs.set_disk_state(d.id, DiskState::Draining)?;
            }
            if d.state() == DiskState::Draining {
                out.push(d.id);
            }
        }
        tracing::warn!(host, disks = ?out, "host draining");
        self.mark_started();
        self.kick();
        Ok(out)
    }

    /// Adds disks that are already in the store and the metadata (`host add`) and moves
    /// some shard replicas onto each, as `add_disk` does for one.
    pub fn rebalance_new(&self, ids: &[u32]) -> anyhow::Result<()> {
        for id in ids {
            rebalance_onto(&self.fs, *id)?;
        }
        self.kick();
        Ok(())
    }

    /// Adds a new disk (labelled now) and moves some shard replicas onto it so that new data
    /// and recovery use it. Returns its id.
    pub fn add_disk(&self, path: &std::path::Path) -> anyhow::Result<u32> {
        let id = add_disk(&self.fs, path)?;
        rebalance_onto(&self.fs, id)?;
        self.kick();
        Ok(id)
    }

    /// True while a recovery pass runs (re-sharding waits for it).
    pub fn is_busy(&self) -> bool {
        *self.running.lock()
    }

    pub fn status(&self) -> RecoveryStatus {
        let mut st = self.status.lock().clone();
        if st.state == RecoveryState::Running {
            if let Some(t) = *self.detected.lock() {
                let secs = t.elapsed().as_secs_f64();
                if secs > 0.0 {
                    st.rate_bytes_per_s = st.bytes_done as f64 / secs;
                }
            }
            if st.rate_bytes_per_s > 0.0 {
                st.eta_s =
                    Some(st.bytes_total.saturating_sub(st.bytes_done) as f64 / st.rate_bytes_per_s);
            }
            let secs = st
                .activated_at_ms
                .map(|a| now_ms().saturating_sub(a) as f64 / 1e3)
                .unwrap_or(0.0);
            for sp in st.shards.iter_mut() {
                let left = sp.bytes_total.saturating_sub(sp.bytes_done) as f64;
                sp.eta_s = if left == 0.0 {
                    Some(0.0)
                } else if sp.bytes_done > 0 && secs > 0.0 {
                    Some(left / (sp.bytes_done as f64 / secs))
                } else {
                    None
                };
            }
        }
        st
    }

    /// Blocks until no recovery is running or pending (or `timeout`).
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let target = self.requested.load(Ordering::SeqCst);
        loop {
            let busy = *self.running.lock()
                || self.completed.load(Ordering::SeqCst) < target
                || self.needs_placement();
            if !busy {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            let mut r = self.running.lock();
            self.run_cv.wait_for(&mut r, Duration::from_millis(50));
        }
    }

    fn needs_placement(&self) -> bool {
        self.fs.shard_table().iter().any(|s| {
            s.disks.iter().any(|d| {
                self.fs
                    .store
                    .disk(*d)
                    .is_none_or(|x| !x.accepts_data() && x.state() != DiskState::Removed)
            })
        })
    }

    /// One recovery run: new placements, then copy passes until nothing is missing.
    fn run(&self, startup: bool) -> anyhow::Result<()> {
        let fs = &self.fs;
        let plan = self.agents.plan_for_recovery(fs);
        let t_act = Instant::now();
        // First pass: the pre-provisioned plan when there is one, else a scan (and at start-up,
        // when the plan may predate what an earlier daemon left).
        let first_plan = plan.as_ref().filter(|_| !startup);
        let from_plan = first_plan.is_some();
        let (moved, no_target, first_items) = self.first_pass_items(plan.as_deref(), startup)?;
        let n_items: usize = first_items.iter().map(|v| v.len()).sum();
        tracing::debug!(per_agent = ?first_items.iter().map(|v| v.len()).collect::<Vec<_>>(), "first pass");
        if n_items == 0 && moved == 0 && !self.needs_rescan()? {
            self.finish_drains()?;
            self.set_shards_without_target(no_target);
            return Ok(());
        }
        self.mark_running(startup, no_target, t_act);
        tracing::info!(
            items = n_items,
            shards_moved = moved,
            from_plan,
            "recovery activated"
        );
        let mut agents = self
            .agents
            .take()
            .context("cannot create recovery agents")?;
        if let Some(d) = *self.detected.lock() {
            tracing::debug!(
                "agents ready {} us after detection",
                d.elapsed().as_micros()
            );
        }
        if from_plan {
            // Truncating the reservation files takes milliseconds: not on the critical path.
            let (fs2, pool) = (self.fs.clone(), self.agents.clone());
            std::thread::spawn(move || pool.release_reservations(&fs2));
        }
        let fds = first_plan.map(|p| &p.fds);
        self.pass(&mut agents, first_items, fds);
        self.catch_up(&mut agents)?;
        self.agents.give_back(agents);
        self.finish_drains()?;
        fs.meta.sync_wal()?;
        self.mark_done();
        Ok(())
    }

    /// The first pass's new placements and copies per agent: from the pre-provisioned plan
    /// unless at start-up or without one, else from a scan. Returns (shards moved, shards
    /// without a target, items per agent).
    fn first_pass_items(
        &self,
        plan: Option<&crate::agents::Plan>,
        startup: bool,
    ) -> anyhow::Result<(usize, Vec<u32>, Vec<Vec<CopyItem>>)> {
        let fs = &self.fs;
        let hints = plan.map(|p| &p.targets);
        let Some(p) = plan.filter(|_| !startup) else {
            let (ex, shard_bytes) = scan(fs)?;
            let (moved, no_target) = replace_placements(fs, &shard_bytes, hints, &self.at_risk())?;
            let mut items = items_for(fs, &ex, &mut Vec::new());
            hot_first(fs, &mut items);
            return Ok((moved, no_target, deal(items, self.agents.agent_count())));
        };
        let (moved, no_target) = replace_placements(fs, &p.shard_bytes, hints, &self.at_risk())?;
        let items = p
            .assignment
            .iter()
            .map(|ranges| {
                let mut v: Vec<CopyItem> = ranges
                    .iter()
                    .flat_map(|r| items_for(fs, &p.extents[r.clone()], &mut Vec::new()))
                    .collect();
                // Files' extents in order: close to the order they lie on the disks.
                v.sort_unstable_by_key(|i| (i.ino, i.index));
                hot_first(fs, &mut v);
                v
            })
            .collect();
        Ok((moved, no_target, items))
    }

    /// Catch-up passes: writes that raced with the first pass, failed copies, a second
    /// failure, extents newer than the plan.
    fn catch_up(&self, agents: &mut [Agent]) -> anyhow::Result<()> {
        let fs = &self.fs;
        let mut last_missing = usize::MAX;
        for _ in 0..PASSES_MAX {
            let (ex, sb) = scan(fs)?;
            let (_, no_target) = replace_placements(fs, &sb, None, &self.at_risk())?;
            let mut lost = Vec::new();
            let items = items_for(fs, &ex, &mut lost);
            self.report_lost(&lost)?;
            self.set_shards_without_target(no_target);
            if items.is_empty() {
                break;
            }
            if items.len() >= last_missing {
                // No progress: wait a little (a disk may be flapping) before trying again.
                std::thread::sleep(Duration::from_millis(200));
            }
            last_missing = items.len();
            let n = agents.len().max(1);
            self.pass(agents, deal(items, n), None);
        }
        Ok(())
    }

    /// Status: running (counters reset unless it already was), activation and detection.
    fn mark_running(&self, startup: bool, no_target: Vec<u32>, t_act: Instant) {
        let mut st = self.status.lock();
        if st.state != RecoveryState::Running {
            st.passes = 0;
            st.bytes_done = 0;
            st.extents_done = 0;
            st.copy_errors = 0;
            st.fenced = 0;
            st.shards.clear();
            st.lost_shards.clear();
        }
        st.state = RecoveryState::Running;
        st.resumed |= startup;
        st.activated_at_ms = Some(now_ms());
        st.shards_without_target = no_target;
        if st.detected_at_ms.is_none() {
            st.detected_at_ms = Some(now_ms());
            *self.detected.lock() = Some(t_act);
        }
    }

    fn mark_done(&self) {
        let mut st = self.status.lock();
        st.state = RecoveryState::Done;
        st.done_at_ms = Some(now_ms());
        if let Some(t) = *self.detected.lock() {
            let secs = t.elapsed().as_secs_f64();
            if secs > 0.0 {
                st.rate_bytes_per_s = st.bytes_done as f64 / secs;
            }
        }
        st.eta_s = Some(0.0);
        tracing::info!(
            bytes = st.bytes_done,
            extents = st.extents_done,
            passes = st.passes,
            errors = st.copy_errors,
            "recovery done"
        );
    }

    /// Placement changes that were not followed by copies are found by a scan, so a run
    /// with nothing in the plan still checks the metadata once.
    fn needs_rescan(&self) -> anyhow::Result<bool> {
        let (ex, _) = scan(&self.fs)?;
        Ok(!items_for(&self.fs, &ex, &mut Vec::new()).is_empty())
    }

    fn set_shards_without_target(&self, s: Vec<u32>) {
        if !s.is_empty() {
            tracing::warn!(shards = ?s, "no target disk for these shards: they stay degraded");
        }
        self.status.lock().shards_without_target = s;
    }

    /// Runs one pass: every agent on its own thread with its items; commits in batches.
    fn pass(
        &self,
        agents: &mut [Agent],
        items: Vec<Vec<CopyItem>>,
        fds: Option<&HashMap<(u32, crate::store::ExtentId), Arc<std::fs::File>>>,
    ) {
        self.pass_totals(&items);
        // The first agent copies one extent alone before the others start (about a
        // millisecond): it proves source and target and marks activation without a
        // thundering herd on the CPUs.
        let gate = Gate {
            open: Mutex::new(self.first_extent.lock().is_some()),
            cv: Condvar::new(),
        };
        let gate = &gate;
        let mut leader = true;
        // Agents hand verified copies to one committer, which makes each batch durable (all
        // its files synced at once) while the agents keep copying.
        let (ctx, crx) = sync_channel::<(u32, CopyItem)>(COMMIT_QUEUE_MAX);
        std::thread::scope(|sc| {
            sc.spawn(move || self.committer(crx));
            for (agent, list) in agents.iter_mut().zip(items) {
                let ctx = ctx.clone();
                if list.is_empty() {
                    continue;
                }
                let lead = std::mem::replace(&mut leader, false);
                sc.spawn(move || self.agent_pass(agent, &list, fds, lead, gate, ctx));
            }
            drop(ctx);
        });
    }

    /// Status at the start of a pass: shards and totals grow by this pass's items.
    fn pass_totals(&self, items: &[Vec<CopyItem>]) {
        let mut st = self.status.lock();
        st.passes += 1;
        let mut per: BTreeMap<u32, ShardProgress> =
            st.shards.drain(..).map(|s| (s.id, s)).collect();
        let mut add_b = 0;
        let mut add_e = 0;
        for sp in per.values_mut() {
            sp.extents_total = sp.extents_done;
            sp.bytes_total = sp.bytes_done;
        }
        for it in items.iter().flatten() {
            let sp = per.entry(it.shard).or_insert_with(|| ShardProgress {
                id: it.shard,
                ..Default::default()
            });
            sp.extents_total += 1;
            sp.bytes_total += u64::from(it.len);
            add_b += u64::from(it.len);
            add_e += 1;
        }
        for (id, sp) in per.iter_mut() {
            let s = self.fs.shard(*id);
            sp.epoch = s.epoch;
            sp.disks = s.disks;
        }
        st.shards = per.into_values().collect();
        st.bytes_total = st.bytes_done + add_b;
        st.extents_total = st.extents_done + add_e;
    }

    /// Takes verified copies from the agents and commits them in batches.
    fn committer(&self, crx: std::sync::mpsc::Receiver<(u32, CopyItem)>) {
        while let Ok(first) = crx.recv() {
            // Fewer, larger batches: each sync of a target makes its filesystem (and on a
            // loop disk, the host file) flush, so it is worth amortising.
            let mut batch = vec![first];
            let until = Instant::now() + COMMIT_INTERVAL;
            while batch.len() < COMMIT_BATCH_MAX {
                let left = until.saturating_duration_since(Instant::now());
                match crx.recv_timeout(left) {
                    Ok(x) => batch.push(x),
                    Err(_) => break,
                }
            }
            self.commit(&mut batch);
        }
    }

    /// One agent's share of a pass; good copies go to the committer.
    fn agent_pass(
        &self,
        agent: &mut Agent,
        list: &[CopyItem],
        fds: Option<&HashMap<(u32, crate::store::ExtentId), Arc<std::fs::File>>>,
        lead: bool,
        gate: &Gate,
        ctx: std::sync::mpsc::SyncSender<(u32, CopyItem)>,
    ) {
        let opened = || {
            if lead {
                gate.release();
            }
        };
        if !lead {
            gate.wait(Duration::from_millis(20));
        }
        let tag = agent.id;
        let remote = list
            .first()
            .and_then(|it| self.fs.store.disk(it.target))
            .is_some_and(|d| d.is_remote());
        let before = |bytes| self.limiter.acquire(&self.fs, bytes);
        let mut done = |it: &CopyItem, res: CopyResult| {
            // The leader's first outcome, good or bad, lets the others go.
            opened();
            match res {
                Ok(()) => {
                    self.note_first_extent();
                    let _ = ctx.send((tag, it.clone()));
                }
                Err(CopyFail::Stale) => {}
                Err(CopyFail::Error(e)) => {
                    tracing::warn!(
                        ino = it.ino,
                        index = it.index,
                        target = it.target,
                        "recovery copy failed: {e}"
                    );
                    self.status.lock().copy_errors += 1;
                }
            }
        };
        if remote {
            // A cluster pool: each copy is the target host pulling from a source host.
            crate::agents::run_remote(&self.fs, tag, list, before, &mut done);
        } else {
            agent.run(&self.fs, list, fds, before, &mut done);
        }
        opened();
    }

    fn note_first_extent(&self) {
        let mut fe = self.first_extent.lock();
        if fe.is_none() {
            let now = Instant::now();
            *fe = Some(now);
            let mut st = self.status.lock();
            st.first_extent_at_ms = Some(now_ms());
            if let Some(d) = *self.detected.lock() {
                st.activation_us = Some(now.duration_since(d).as_micros() as u64);
            }
        }
    }

    /// Makes a batch of staged copies durable, installs and commits each under its shard
    /// epoch, then makes the renames and the metadata durable.
    fn commit(&self, batch: &mut Vec<(u32, CopyItem)>) {
        if batch.is_empty() {
            return;
        }
        let fs = &self.fs;
        let targets: HashSet<u32> = batch.iter().map(|i| i.1.target).collect();
        // Check and install every copy (renames), make data and renames durable (one
        // fdatasync per copy and fsync per bucket, all in parallel), then re-check and commit
        // each; the WAL sync makes the metadata durable after the files it names.
        let guard = fs.recovery_guard();
        let mut c = BatchCounts::default();
        let installed = self.install_batch(batch, &mut c);
        let t_sync = Instant::now();
        let files: Vec<(u32, ExtentId)> = installed.iter().map(|it| (it.target, it.id())).collect();
        let unsynced = fs.store.sync_extents(&files);
        let sync_us = t_sync.elapsed().as_micros();
        let n_installed = installed.len();
        for it in installed {
            if unsynced.contains_key(&it.target) {
                // Not durable: leave the extent to a later pass.
                if let Some(d) = fs.store.disk(it.target) {
                    fs.store.remove_extent(&d, &it.id());
                }
                c.errors += 1;
                continue;
            }
            c.count(
                &it,
                fs.commit_installed(it.ino, it.index, it.version, it.epoch, it.target),
            );
        }
        drop(guard);
        if let Err(e) = fs.meta.sync_wal() {
            tracing::error!("metadata sync after recovery commit failed: {e:#}");
        }
        tracing::debug!(
            extents = n_installed,
            targets = targets.len(),
            sync_us,
            "recovery batch committed"
        );
        c.add_to(&mut self.status.lock());
    }

    /// Checks each staged copy against the metadata and renames it into place; returns
    /// those installed (the others' staging files are removed).
    fn install_batch(
        &self,
        batch: &mut Vec<(u32, CopyItem)>,
        c: &mut BatchCounts,
    ) -> Vec<CopyItem> {
        let fs = &self.fs;
        let mut installed: Vec<CopyItem> = Vec::with_capacity(batch.len());
        for (tag, it) in batch.drain(..) {
            let Some(d) = fs.store.disk(it.target) else {
                continue;
            };
            let id = it.id();
            let discard = || fs.store.discard_staging(&d, &id, tag);
            match fs.recovery_check(it.ino, it.index, it.version, it.epoch, it.target) {
                Ok(Ok(_)) => match fs.store.install_staging(&d, &id, tag, (it.shard, it.epoch)) {
                    Ok(()) => installed.push(it),
                    Err(e) => {
                        c.errors += 1;
                        tracing::warn!(disk = it.target, "cannot install recovered copy: {e}");
                        discard();
                    }
                },
                Ok(Err(RecoveryCommit::Fenced)) => {
                    c.fenced += 1;
                    discard();
                }
                Ok(Err(_)) => discard(),
                Err(e) => {
                    c.errors += 1;
                    tracing::warn!(ino = it.ino, "recovery check failed: errno {}", e.0);
                    discard();
                }
            }
        }
        installed
    }

    fn report_lost(&self, lost: &[(u32, u64)]) -> anyhow::Result<()> {
        if lost.is_empty() {
            self.status.lock().lost_shards.clear();
            return Ok(());
        }
        let paths = self.fs.paths()?;
        let mut by: BTreeMap<u32, (u64, std::collections::BTreeSet<String>)> = BTreeMap::new();
        for (shard, ino) in lost {
            let e = by.entry(*shard).or_default();
            e.0 += 1;
            e.1.insert(
                paths
                    .get(ino)
                    .cloned()
                    .unwrap_or_else(|| format!("<inode {ino}, unlinked>")),
            );
        }
        let out: Vec<LostShard> = by
            .into_iter()
            .map(|(id, (n, files))| {
                let files: Vec<String> = files.into_iter().collect();
                tracing::error!(shard = id, extents = n, files = ?files, "shard lost every replica");
                LostShard {
                    id,
                    extents: n,
                    files,
                }
            })
            .collect();
        self.status.lock().lost_shards = out;
        Ok(())
    }

    /// Draining disks that no extent and no shard names any more are released.
    fn finish_drains(&self) -> anyhow::Result<()> {
        let draining: Vec<Arc<Disk>> = self
            .fs
            .store
            .disks()
            .into_iter()
            .filter(|d| d.state() == DiskState::Draining)
            .collect();
        if draining.is_empty() {
            return Ok(());
        }
        let mut used: HashSet<u32> = HashSet::new();
        self.fs
            .meta
            .each_extent(|_, _, e| used.extend(e.replicas))?;
        for s in self.fs.shard_table() {
            used.extend(s.disks);
        }
        for d in draining {
            if used.contains(&d.id) {
                continue;
            }
            self.fs.drain_reaper();
            self.fs.set_disk_state(d.id, DiskState::Removed)?;
            if d.is_remote() {
                tracing::info!(disk = d.id, path = %d.root.display(), "remote disk drained");
                continue;
            }
            let _ = std::fs::remove_dir_all(d.root.join("extents"));
            for f in [
                crate::store::LABEL_FILE,
                crate::store::PROBE_FILE,
                crate::agents::RESERVE_FILE,
            ] {
                let _ = std::fs::remove_file(d.root.join(f));
            }
            tracing::info!(disk = d.id, path = %d.root.display(), "disk drained and released");
        }
        Ok(())
    }
}

mod detect;
mod limiter;
mod online;
mod placement;
mod work;

use detect::monitor;
use limiter::Limiter;
pub use online::{online_disk, OnlineReport};
use placement::replace_placements;
pub use placement::{add_disk, rebalance_onto};
use work::{deal, hot_first, items_for, scan};

#[cfg(test)]
mod tests;
