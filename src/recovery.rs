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
//! planned now. Agents copy, verify and stage; the orchestrator makes staged copies durable
//! (syncfs) and commits each under the shard epoch (`Fs::commit_recovered`). Catch-up passes
//! scan the metadata until no extent lacks a replica, so writes racing with recovery and a
//! second failure are covered. Progress is the metadata itself (an extent's replicas), so
//! after kill -9 the next mount resumes where it stopped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use crate::agents::{Agent, AgentPool, CopyFail, CopyItem, CopyResult, PlanExtent};
use crate::fs::{Fs, RecoveryCommit};
use crate::meta::DiskState;
use crate::store::{read_label, Disk};

/// Catch-up passes after the first; each rescans the metadata.
const PASSES_MAX: usize = 50;
/// Verified copies waiting for the recovery committer (agents block beyond it).
const COMMIT_QUEUE_MAX: usize = 256;
/// Copies made durable and committed together at most.
const COMMIT_BATCH_MAX: usize = 256;
/// How long the recovery committer gathers copies before making them durable.
const COMMIT_INTERVAL: Duration = Duration::from_millis(250);

/// How recovery shares bandwidth with foreground I/O, after Ceph's mClock profiles: the share
/// of recovery's own unloaded rate it keeps while clients are doing I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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

impl std::str::FromStr for Profile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "high_client_ops" => Ok(Profile::HighClientOps),
            "balanced" => Ok(Profile::Balanced),
            "high_recovery_ops" => Ok(Profile::HighRecoveryOps),
            _ => Err(format!(
                "unknown profile {s:?} (high_client_ops, balanced, high_recovery_ops)"
            )),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RecoveryOptions {
    /// Label and root checks, and collection of probe results.
    pub check_interval: Duration,
    /// Write + fsync + read-back probe of each healthy disk.
    pub probe_interval: Duration,
    /// A probe still running after this counts as failed (the disk hangs).
    pub probe_deadline: Duration,
    /// Failed probes in a row that turn a suspect disk into a failed one.
    pub fail_after: u32,
    /// Recovery copy rate limit in bytes/s (0: none).
    pub rate_bytes_max: u64,
    /// Recovery rate kept however busy clients are (mClock reservation).
    pub reservation_bytes_per_s: u64,
    pub profile: Profile,
    /// How often a stale plan is rebuilt.
    pub plan_refresh_interval: Duration,
}

impl Default for RecoveryOptions {
    fn default() -> Self {
        RecoveryOptions {
            check_interval: Duration::from_millis(50),
            probe_interval: Duration::from_millis(1000),
            probe_deadline: Duration::from_millis(1000),
            fail_after: 3,
            rate_bytes_max: 0,
            reservation_bytes_per_s: 8 << 20,
            profile: Profile::Balanced,
            plan_refresh_interval: Duration::from_secs(2),
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

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

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RecoveryStatus {
    /// idle (nothing ever to do), running, done.
    pub state: String,
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

/// Paces recovery reads, after mClock: a limit (`rate_bytes_max`), a reservation recovery
/// always gets, and while clients do I/O a weight: recovery takes `share` of the bandwidth in
/// use (clients' measured rate x share / (1 - share)), or `share` of its own unloaded rate if
/// that is more.
struct Limiter {
    rate_max: u64,
    reservation: u64,
    share: f64,
    st: Mutex<LimState>,
}

struct LimState {
    /// Bytes recovery may read now (token bucket, at most `LIMITER_BURST` worth).
    tokens: f64,
    refilled: Instant,
    fg_bytes: u64,
    window_start: Instant,
    window_bytes: u64,
    /// Clients' rate (smoothed over windows) and recovery's rate while clients were idle.
    fg_rate: f64,
    unloaded_rate: f64,
}

/// Measurement window of client and recovery rates.
const LIMITER_WINDOW: Duration = Duration::from_millis(100);
/// Longest a waiting agent sleeps before the allowed rate is looked at again.
const LIMITER_RECHECK: Duration = Duration::from_millis(10);
/// Burst recovery may take at once (seconds of the allowed rate).
const LIMITER_BURST_S: f64 = 0.05;

impl Limiter {
    fn new(opts: &RecoveryOptions) -> Limiter {
        let now = Instant::now();
        Limiter {
            rate_max: opts.rate_bytes_max,
            reservation: opts.reservation_bytes_per_s,
            share: opts.profile.recovery_share(),
            st: Mutex::new(LimState {
                tokens: 0.0,
                refilled: now,
                fg_bytes: 0,
                window_start: now,
                window_bytes: 0,
                fg_rate: 0.0,
                unloaded_rate: 0.0,
            }),
        }
    }

    /// Recovery bytes/s allowed with clients at `fg_rate` (infinite: no pacing).
    fn allowed(&self, fg_rate: f64, unloaded_rate: f64) -> f64 {
        let limit = if self.rate_max > 0 {
            self.rate_max as f64
        } else {
            f64::INFINITY
        };
        if fg_rate <= 0.0 {
            return limit;
        }
        let by_weight = fg_rate * self.share / (1.0 - self.share);
        let by_unloaded = self.share * unloaded_rate;
        limit.min(by_weight.max(by_unloaded).max(self.reservation as f64))
    }

    /// Waits until recovery may read `bytes`; the allowed rate is re-evaluated while waiting,
    /// so a rate that rises (clients went idle) takes effect at once and no debt piles up.
    fn acquire(&self, fs: &Fs, bytes: u64) {
        loop {
            let wait = {
                let mut st = self.st.lock();
                let now = Instant::now();
                let w = now.duration_since(st.window_start);
                if w >= LIMITER_WINDOW {
                    let fg = fs.stats.bytes_read.load(Ordering::Relaxed)
                        + fs.stats.bytes_written.load(Ordering::Relaxed);
                    let secs = w.as_secs_f64();
                    let r = fg.saturating_sub(st.fg_bytes) as f64 / secs;
                    // Smoothed, so one quiet window does not swing the allowance.
                    st.fg_rate = if r == 0.0 {
                        0.0
                    } else {
                        0.5 * st.fg_rate + 0.5 * r
                    };
                    st.fg_bytes = fg;
                    if r == 0.0 {
                        let rr = st.window_bytes as f64 / secs;
                        st.unloaded_rate = st.unloaded_rate.max(rr);
                    }
                    st.window_start = now;
                    st.window_bytes = 0;
                }
                let rate = self.allowed(st.fg_rate, st.unloaded_rate);
                if !rate.is_finite() {
                    st.window_bytes += bytes;
                    st.tokens = 0.0;
                    st.refilled = now;
                    return;
                }
                let dt = now.duration_since(st.refilled).as_secs_f64();
                st.refilled = now;
                let cap = (rate * LIMITER_BURST_S).max(bytes as f64);
                st.tokens = (st.tokens + dt * rate).min(cap);
                if st.tokens >= bytes as f64 {
                    st.tokens -= bytes as f64;
                    st.window_bytes += bytes;
                    return;
                }
                Duration::from_secs_f64((bytes as f64 - st.tokens) / rate).min(LIMITER_RECHECK)
            };
            std::thread::sleep(wait);
        }
    }
}

pub struct Orchestrator {
    pub fs: Arc<Fs>,
    pub agents: Arc<AgentPool>,
    pub opts: RecoveryOptions,
    status: Mutex<RecoveryStatus>,
    detected: Mutex<Option<Instant>>,
    first_extent: Mutex<Option<Instant>>,
    wake: Mutex<bool>,
    cv: Condvar,
    /// Set while a run is active (a `wait` returns when it clears and nothing is pending).
    running: Mutex<bool>,
    /// Kicks asked for and kicks a finished run has covered (for `wait_idle`).
    requested: std::sync::atomic::AtomicU64,
    completed: std::sync::atomic::AtomicU64,
    run_cv: Condvar,
    limiter: Limiter,
}

impl Orchestrator {
    /// Starts the monitor, planner and recovery threads. Work left by an earlier daemon is
    /// picked up at once.
    pub fn start(fs: Arc<Fs>, agents: Arc<AgentPool>, opts: RecoveryOptions) -> Arc<Orchestrator> {
        let o = Arc::new(Orchestrator {
            limiter: Limiter::new(&opts),
            fs,
            agents,
            opts,
            status: Mutex::new(RecoveryStatus {
                state: "idle".into(),
                ..Default::default()
            }),
            detected: Mutex::new(None),
            first_extent: Mutex::new(None),
            wake: Mutex::new(true),
            cv: Condvar::new(),
            running: Mutex::new(false),
            run_cv: Condvar::new(),
            requested: std::sync::atomic::AtomicU64::new(1),
            completed: std::sync::atomic::AtomicU64::new(0),
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
        let w = Arc::downgrade(&o);
        std::thread::Builder::new()
            .name("recovery".into())
            .spawn(move || {
                let mut first = true;
                let mut degraded_seen = 0;
                loop {
                    let Some(o) = w.upgrade() else { break };
                    let woken = {
                        let mut wk = o.wake.lock();
                        if !*wk {
                            o.cv.wait_for(&mut wk, Duration::from_secs(1));
                        }
                        std::mem::replace(&mut *wk, false)
                    };
                    // Without a wake-up, work is a placement that names a dead disk, or
                    // extents written with fewer replicas than wanted (a full disk).
                    let degraded = o.fs.stats.degraded_writes.load(Ordering::Relaxed);
                    let degraded_new = std::mem::replace(&mut degraded_seen, degraded) != degraded;
                    if woken || degraded_new || o.needs_placement() {
                        let asked = o.requested.load(Ordering::SeqCst);
                        *o.running.lock() = true;
                        if let Err(e) = o.run(first) {
                            tracing::error!("recovery run failed: {e:#}");
                        }
                        o.completed.store(asked, Ordering::SeqCst);
                        *o.running.lock() = false;
                        o.run_cv.notify_all();
                        first = false;
                    }
                }
            })
            .expect("spawn recovery thread");
        let w = Arc::downgrade(&o);
        std::thread::Builder::new()
            .name("planner".into())
            .spawn(move || loop {
                let Some(o) = w.upgrade() else { break };
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
        std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || monitor(w))
            .expect("spawn monitor thread");
        o
    }

    pub fn kick(&self) {
        self.requested.fetch_add(1, Ordering::SeqCst);
        *self.wake.lock() = true;
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
            if st.state != "running" || det.is_none() {
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
        {
            let mut st = self.status.lock();
            st.detected_at_ms = Some(now_ms());
            *self.detected.lock() = Some(Instant::now());
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

    pub fn status(&self) -> RecoveryStatus {
        let mut st = self.status.lock().clone();
        if st.state == "running" {
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
        let plan = self.agents.plan();
        let t_act = Instant::now();
        // First pass: the pre-provisioned plan when there is one, else a scan.
        let (extents, shard_bytes, from_plan) = match &plan {
            Some(p) if !startup => (None, p.shard_bytes.clone(), true),
            _ => {
                let (ex, sb) = scan(fs)?;
                (Some(ex), sb, false)
            }
        };
        let targets = plan.as_ref().map(|p| &p.targets);
        let (moved, no_target) = replace_placements(fs, &shard_bytes, targets)?;
        let first_items: Vec<Vec<CopyItem>> = match (&extents, &plan) {
            (None, Some(p)) => p
                .assignment
                .iter()
                .map(|ranges| {
                    let mut v: Vec<CopyItem> = ranges
                        .iter()
                        .flat_map(|r| items_for(fs, &p.extents[r.clone()], &mut Vec::new()))
                        .collect();
                    // Files' extents in order: close to the order they lie on the disks.
                    v.sort_unstable_by_key(|i| (i.ino, i.index));
                    v
                })
                .collect(),
            (Some(ex), _) => {
                let mut lost = Vec::new();
                let items = items_for(fs, ex, &mut lost);
                deal(items, self.agents.agent_count())
            }
            (None, None) => unreachable!("no plan means a scan"),
        };
        let n_items: usize = first_items.iter().map(|v| v.len()).sum();
        tracing::debug!(per_agent = ?first_items.iter().map(|v| v.len()).collect::<Vec<_>>(), "first pass");
        if n_items == 0 && moved == 0 && !self.needs_rescan()? {
            self.finish_drains()?;
            self.set_shards_without_target(no_target);
            return Ok(());
        }
        {
            let mut st = self.status.lock();
            if st.state != "running" {
                st.passes = 0;
                st.bytes_done = 0;
                st.extents_done = 0;
                st.copy_errors = 0;
                st.fenced = 0;
                st.shards.clear();
                st.lost_shards.clear();
            }
            st.state = "running".into();
            st.resumed |= startup;
            st.activated_at_ms = Some(now_ms());
            st.shards_without_target = no_target;
            if st.detected_at_ms.is_none() {
                st.detected_at_ms = Some(now_ms());
                *self.detected.lock() = Some(t_act);
            }
        }
        tracing::info!(
            items = n_items,
            shards_moved = moved,
            from_plan,
            "recovery activated"
        );
        let since = |what: &str| {
            if let Some(d) = *self.detected.lock() {
                tracing::info!(
                    "recovery {what}: {} us after detection",
                    d.elapsed().as_micros()
                );
            }
        };
        since("planned");
        let mut agents = self
            .agents
            .take()
            .context("cannot create recovery agents")?;
        since("agents ready");
        if from_plan {
            // Truncating the reservation files takes milliseconds: not on the critical path.
            let (fs2, pool) = (self.fs.clone(), self.agents.clone());
            std::thread::spawn(move || pool.release_reservations(&fs2));
        }
        since("reservations released");
        let fds = plan.as_ref().filter(|_| from_plan).map(|p| &p.fds);
        self.pass(&mut agents, first_items, fds);
        // Catch-up passes: writes that raced with the first pass, failed copies, a second
        // failure, extents newer than the plan.
        let mut last_missing = usize::MAX;
        for _ in 0..PASSES_MAX {
            let (ex, sb) = scan(fs)?;
            let (_, no_target) = replace_placements(fs, &sb, None)?;
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
            self.pass(&mut agents, deal(items, n), None);
        }
        self.agents.give_back(agents);
        self.finish_drains()?;
        fs.meta.sync_wal()?;
        {
            let mut st = self.status.lock();
            st.state = "done".into();
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
        Ok(())
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
        {
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
        // The first agent copies one extent alone before the others start (about a
        // millisecond): it proves source and target and marks activation without a
        // thundering herd on the CPUs.
        let gate = (
            Mutex::new(self.first_extent.lock().is_some()),
            Condvar::new(),
        );
        let gate = &gate;
        let mut leader = true;
        // Agents hand verified copies to one committer, which makes each batch durable with
        // one syncfs per target disk while the agents keep copying.
        let (ctx, crx) = sync_channel::<(u32, CopyItem)>(COMMIT_QUEUE_MAX);
        std::thread::scope(|sc| {
            sc.spawn(move || {
                while let Ok(first) = crx.recv() {
                    // Fewer, larger batches: each syncfs of a target makes its filesystem
                    // (and on a loop disk, the host file) flush, so it is worth amortising.
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
            });
            for (agent, list) in agents.iter_mut().zip(items) {
                let ctx = ctx.clone();
                if list.is_empty() {
                    continue;
                }
                let lead = std::mem::replace(&mut leader, false);
                sc.spawn(move || {
                    if !lead {
                        let mut open = gate.0.lock();
                        if !*open {
                            gate.1.wait_for(&mut open, Duration::from_millis(20));
                        }
                    }
                    let tag = agent.id;
                    agent.run(
                        &self.fs,
                        &list,
                        fds,
                        |bytes| self.limiter.acquire(&self.fs, bytes),
                        |it: &CopyItem, res: CopyResult| match res {
                            Ok(()) => {
                                self.note_first_extent();
                                if lead {
                                    *gate.0.lock() = true;
                                    gate.1.notify_all();
                                }
                                let _ = ctx.send((tag, it.clone()));
                            }
                            Err(CopyFail::Stale) => {
                                if lead {
                                    *gate.0.lock() = true;
                                    gate.1.notify_all();
                                }
                            }
                            Err(CopyFail::Error(e)) => {
                                if lead {
                                    *gate.0.lock() = true;
                                    gate.1.notify_all();
                                }
                                tracing::warn!(
                                    ino = it.ino,
                                    index = it.index,
                                    target = it.target,
                                    "recovery copy failed: {e}"
                                );
                                self.status.lock().copy_errors += 1;
                            }
                        },
                    );
                    if lead {
                        *gate.0.lock() = true;
                        gate.1.notify_all();
                    }
                });
            }
            drop(ctx);
        });
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
        // One syncfs per target filesystem, all in parallel.
        let sync = |ts: &HashSet<u32>| -> bool {
            std::thread::scope(|s| {
                let hs: Vec<_> = ts
                    .iter()
                    .map(|t| {
                        s.spawn(move || {
                            fs.store
                                .disk(*t)
                                .is_some_and(|d| fs.store.sync_disk(&d).is_ok())
                        })
                    })
                    .collect();
                hs.into_iter().all(|h| h.join().unwrap_or(false))
            })
        };
        // Check and install every copy (renames), make data and renames durable with one
        // syncfs per target, then re-check and commit each; the WAL sync makes the metadata
        // durable after the files it names.
        let guard = fs.recovery_guard();
        let mut done_b = 0u64;
        let mut done_e = 0u64;
        let mut fenced = 0u64;
        let mut errors = 0u64;
        let mut per: HashMap<u32, (u64, u64)> = HashMap::new();
        let mut installed: Vec<CopyItem> = Vec::with_capacity(batch.len());
        for (tag, it) in batch.drain(..) {
            let Some(d) = fs.store.disk(it.target) else {
                continue;
            };
            let id = it.id();
            let staged = fs.store.staging_path(&d, &id, tag);
            match fs.recovery_check(it.ino, it.index, it.version, it.epoch, it.target) {
                Ok(Ok(_)) => match fs.store.install_staging(&d, &id, tag) {
                    Ok(()) => installed.push(it),
                    Err(e) => {
                        errors += 1;
                        tracing::warn!(disk = it.target, "cannot install recovered copy: {e}");
                        let _ = std::fs::remove_file(&staged);
                    }
                },
                Ok(Err(RecoveryCommit::Fenced)) => {
                    fenced += 1;
                    let _ = std::fs::remove_file(&staged);
                }
                Ok(Err(_)) => {
                    let _ = std::fs::remove_file(&staged);
                }
                Err(e) => {
                    errors += 1;
                    tracing::warn!(ino = it.ino, "recovery check failed: errno {}", e.0);
                    let _ = std::fs::remove_file(&staged);
                }
            }
        }
        let t_sync = Instant::now();
        let synced = sync(&targets);
        let sync_us = t_sync.elapsed().as_micros();
        let n_installed = installed.len();
        for it in installed {
            if !synced {
                // Not durable: leave the extent to a later pass.
                if let Some(d) = fs.store.disk(it.target) {
                    fs.store.remove_extent(&d, &it.id());
                }
                errors += 1;
                continue;
            }
            match fs.commit_installed(it.ino, it.index, it.version, it.epoch, it.target) {
                Ok(RecoveryCommit::Done) => {
                    done_b += u64::from(it.len);
                    done_e += 1;
                    let e = per.entry(it.shard).or_default();
                    e.0 += 1;
                    e.1 += u64::from(it.len);
                }
                Ok(RecoveryCommit::Fenced) => fenced += 1,
                Ok(_) => {}
                Err(e) => {
                    errors += 1;
                    tracing::warn!(
                        ino = it.ino,
                        index = it.index,
                        "recovery commit failed: errno {}",
                        e.0
                    );
                }
            }
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
        let mut st = self.status.lock();
        st.bytes_done += done_b;
        st.extents_done += done_e;
        st.fenced += fenced;
        st.copy_errors += errors;
        for sp in st.shards.iter_mut() {
            if let Some((e, b)) = per.get(&sp.id) {
                sp.extents_done += e;
                sp.bytes_done += b;
            }
        }
    }

    fn report_lost(&self, lost: &[(u32, u64)]) -> anyhow::Result<()> {
        if lost.is_empty() {
            self.status.lock().lost_shards.clear();
            return Ok(());
        }
        let paths = crate::admin::paths(&self.fs)?;
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
            let _ = std::fs::remove_dir_all(d.root.join("extents"));
            for f in [
                crate::store::LABEL_FILE,
                "foreshard.probe",
                crate::agents::RESERVE_FILE,
            ] {
                let _ = std::fs::remove_file(d.root.join(f));
            }
            tracing::info!(disk = d.id, path = %d.root.display(), "disk drained and released");
        }
        Ok(())
    }
}

/// Every extent (as plan extents) and the bytes per shard, from one metadata snapshot.
fn scan(fs: &Fs) -> anyhow::Result<(Vec<PlanExtent>, Vec<u64>)> {
    let mut ex = Vec::new();
    let mut bytes = vec![0u64; fs.cfg.shard_count as usize];
    fs.meta.view().each_extent(|ino, index, e| {
        if let Some(b) = bytes.get_mut(e.shard as usize) {
            *b += u64::from(e.len);
        }
        ex.push(PlanExtent {
            ino,
            index,
            version: e.version,
            len: e.len,
            shard: e.shard,
            replicas: e.replicas,
            sums: Some(Arc::new(e.sums)),
        });
    })?;
    Ok((ex, bytes))
}

/// The copies that bring `extents` to their shard's current placement; extents with no
/// readable replica go to `lost` as (shard, inode).
fn items_for(fs: &Fs, extents: &[PlanExtent], lost: &mut Vec<(u32, u64)>) -> Vec<CopyItem> {
    let disks: HashMap<u32, Arc<Disk>> = fs.store.disks().into_iter().map(|d| (d.id, d)).collect();
    let readable = |d: &u32| disks.get(d).is_some_and(|x| x.is_up());
    // A full disk (ENOSPC) is not failed, but takes no copies until a write there succeeds.
    let accepts = |d: &u32| {
        disks
            .get(d)
            .is_some_and(|x| x.accepts_data() && !x.full.load(Ordering::Relaxed))
    };
    let table = fs.shard_table();
    let mut out = Vec::new();
    for e in extents {
        let Some(shard) = table.get(e.shard as usize) else {
            continue;
        };
        let mut sources: Vec<u32> = e.replicas.iter().copied().filter(readable).collect();
        let missing: Vec<u32> = shard
            .disks
            .iter()
            .copied()
            .filter(|d| accepts(d) && !e.replicas.contains(d))
            .collect();
        if missing.is_empty() {
            continue;
        }
        if sources.is_empty() {
            lost.push((e.shard, e.ino));
            continue;
        }
        // Spread reads over the surviving copies.
        let k = ((e.ino ^ e.index) as usize) % sources.len();
        sources.rotate_left(k);
        for t in missing {
            out.push(CopyItem {
                ino: e.ino,
                index: e.index,
                version: e.version,
                len: e.len,
                shard: e.shard,
                epoch: shard.epoch,
                sources: sources.clone(),
                target: t,
                sums: e.sums.clone(),
            });
        }
    }
    out
}

/// Deals items to `n` agents so each gets a share of every shard and target (`items` come
/// in (inode, index) order, so each agent's list stays in that order).
fn deal(items: Vec<CopyItem>, n: usize) -> Vec<Vec<CopyItem>> {
    let mut out: Vec<Vec<CopyItem>> = (0..n.max(1)).map(|_| Vec::new()).collect();
    let len = out.len();
    for (i, it) in items.into_iter().enumerate() {
        out[i % len].push(it);
    }
    out
}

/// Gives every shard that names a disk no longer taking data a new placement. Targets: the
/// plan's when still valid, else the disk with the most free space after the copies already
/// assigned. Returns (shards changed, shards left without a target).
fn replace_placements(
    fs: &Fs,
    shard_bytes: &[u64],
    planned: Option<&HashMap<(u32, u32), u32>>,
) -> anyhow::Result<(usize, Vec<u32>)> {
    let disks = fs.store.disks();
    let mut room: HashMap<u32, u64> = disks
        .iter()
        .filter(|d| d.accepts_data() && !d.full.load(Ordering::Relaxed))
        .map(|d| (d.id, d.space().map(|s| s.1).unwrap_or(0)))
        .collect();
    let state: HashMap<u32, DiskState> = disks.iter().map(|d| (d.id, d.state())).collect();
    let mut moved = 0;
    let mut no_target = Vec::new();
    let mut changes = Vec::new();
    for (s, rec) in fs.shard_table().into_iter().enumerate() {
        let s = s as u32;
        let bad: Vec<u32> = rec
            .disks
            .iter()
            .copied()
            .filter(|d| !matches!(state.get(d), Some(DiskState::Up | DiskState::Suspect)))
            .collect();
        let short = rec.disks.len() < fs.cfg.replicas as usize;
        if bad.is_empty() && !short {
            continue;
        }
        let need = shard_bytes.get(s as usize).copied().unwrap_or(0);
        let mut new = rec.disks.clone();
        let pick = |new: &Vec<u32>, room: &HashMap<u32, u64>, hint: Option<u32>| -> Option<u32> {
            if let Some(h) = hint {
                if !new.contains(&h) && room.get(&h).is_some_and(|r| *r >= need) {
                    return Some(h);
                }
            }
            room.iter()
                .filter(|(d, r)| !new.contains(d) && **r >= need)
                .max_by_key(|(d, r)| (**r, std::cmp::Reverse(**d)))
                .map(|(d, _)| *d)
        };
        for b in &bad {
            let hint = planned.and_then(|p| p.get(&(s, *b)).copied());
            match pick(&new, &room, hint) {
                Some(t) => {
                    let pos = new.iter().position(|x| x == b).expect("bad disk in shard");
                    new[pos] = t;
                    *room.get_mut(&t).expect("target has room") -= need;
                }
                None if state.get(b) == Some(&DiskState::Draining) => {}
                None => new.retain(|x| x != b),
            }
        }
        while new.len() < fs.cfg.replicas as usize {
            match pick(&new, &room, None) {
                Some(t) => {
                    new.push(t);
                    *room.get_mut(&t).expect("target has room") -= need;
                }
                None => break,
            }
        }
        if new.len() < fs.cfg.replicas as usize
            || new
                .iter()
                .any(|d| state.get(d) == Some(&DiskState::Draining))
        {
            no_target.push(s);
        }
        if new != rec.disks {
            changes.push((s, rec.epoch, new));
        }
    }
    let log: Vec<(u32, Vec<u32>)> = changes.iter().map(|c| (c.0, c.2.clone())).collect();
    for ((s, to), r) in log.into_iter().zip(
        fs.set_placements(changes)
            .map_err(|e| anyhow::anyhow!("placement change failed: errno {}", e.0))?,
    ) {
        match r {
            Ok(epoch) => {
                moved += 1;
                tracing::info!(shard = s, epoch, to = ?to, "shard placement changed");
            }
            Err(e) => tracing::warn!(shard = s, "placement change refused: errno {}", e.0),
        }
    }
    Ok((moved, no_target))
}

/// Checks and labels a new disk directory and adds it to the pool. Returns its id.
pub fn add_disk(fs: &Fs, path: &std::path::Path) -> anyhow::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    let md =
        std::fs::metadata(path).with_context(|| format!("{}: cannot access", path.display()))?;
    if !md.is_dir() {
        bail!("{}: not a directory", path.display());
    }
    let c = std::fs::canonicalize(path)?;
    if let Some(l) = read_label(&c)? {
        bail!(
            "{}: already belongs to pool {} (as disk {})",
            path.display(),
            l.pool_id,
            l.disk_id
        );
    }
    let mut next = 0;
    for d in fs.store.disks() {
        next = next.max(d.id + 1);
        if d.state() == DiskState::Removed {
            continue;
        }
        if d.root == c {
            bail!("{}: already disk {} of this pool", path.display(), d.id);
        }
        if let Ok(m) = std::fs::metadata(&d.root) {
            if (m.dev(), m.ino()) == (md.dev(), md.ino()) {
                bail!("{}: same directory as disk {}", path.display(), d.id);
            }
            if m.dev() == md.dev() {
                tracing::warn!(
                    "disk {} shares a filesystem with disk {}: one failure domain",
                    c.display(),
                    d.id
                );
            }
        }
    }
    crate::store::write_label(
        &c,
        &crate::store::Label {
            pool_id: fs.cfg.pool_id.clone(),
            disk_id: next,
        },
    )?;
    let mut b = fs.meta.batch();
    b.put_disk(&crate::meta::DiskRec {
        id: next,
        path: c.to_string_lossy().into_owned(),
        state: DiskState::Up,
    });
    fs.meta.write(b)?;
    fs.meta.sync_wal()?;
    fs.store
        .add_disk(Arc::new(Disk::new(next, c.clone(), DiskState::Up)));
    tracing::info!(disk = next, path = %c.display(), "disk added");
    Ok(next)
}

/// Moves shard replicas onto a new disk until it holds its share of shard slots (taken from
/// the disks that hold the most). The recovery thread then copies the data.
pub fn rebalance_onto(fs: &Fs, new: u32) -> anyhow::Result<()> {
    let table = fs.shard_table();
    let live: HashSet<u32> = fs
        .store
        .disks()
        .iter()
        .filter(|d| d.accepts_data())
        .map(|d| d.id)
        .collect();
    let slots: usize = table.iter().map(|s| s.disks.len()).sum();
    let want = slots / live.len().max(1);
    let mut count: HashMap<u32, usize> = HashMap::new();
    for s in &table {
        for d in &s.disks {
            *count.entry(*d).or_default() += 1;
        }
    }
    let mut have = count.get(&new).copied().unwrap_or(0);
    let mut changed: HashSet<u32> = HashSet::new();
    while have < want {
        let Some((&from, _)) = count
            .iter()
            .filter(|(d, _)| **d != new)
            .max_by_key(|(d, c)| (**c, std::cmp::Reverse(**d)))
        else {
            break;
        };
        let Some((sid, rec)) = table.iter().enumerate().find(|(i, s)| {
            s.disks.contains(&from) && !s.disks.contains(&new) && !changed.contains(&(*i as u32))
        }) else {
            count.remove(&from);
            continue;
        };
        let sid = sid as u32;
        let disks: Vec<u32> = rec
            .disks
            .iter()
            .map(|d| if *d == from { new } else { *d })
            .collect();
        fs.set_placement(sid, rec.epoch, disks)
            .map_err(|e| anyhow::anyhow!("placement of shard {sid}: errno {}", e.0))?;
        changed.insert(sid);
        *count.get_mut(&from).expect("counted") -= 1;
        have += 1;
    }
    Ok(())
}

enum ProbeMsg {
    Go,
}

enum Probe {
    Ok,
    Late(String),
    Failed(String),
}

/// A probe still running after this many deadlines fails the disk (it hangs).
const HANG_FAIL_FACTOR: u32 = 10;

struct Prober {
    tx: SyncSender<ProbeMsg>,
    rx: Receiver<(std::io::Result<()>, Duration)>,
    busy: bool,
    sent: Instant,
    /// Deadlines the running probe has overrun so far (each counts as one failure).
    overruns: u32,
    fails: u32,
    io_errors_seen: u64,
}

fn spawn_prober(d: Arc<Disk>) -> Prober {
    let (tx, rx_go) = sync_channel::<ProbeMsg>(1);
    let (tx_res, rx) = sync_channel(1);
    std::thread::Builder::new()
        .name(format!("probe-{}", d.id))
        .spawn(move || {
            while let Ok(ProbeMsg::Go) = rx_go.recv() {
                let t = Instant::now();
                let r = d.probe();
                if tx_res.send((r, t.elapsed())).is_err() {
                    break;
                }
            }
        })
        .expect("spawn probe thread");
    Prober {
        tx,
        rx,
        busy: false,
        sent: Instant::now(),
        overruns: 0,
        fails: 0,
        io_errors_seen: 0,
    }
}

/// Every `check_interval`: the label and root of each disk (a yanked or swapped disk fails
/// at once), the result of its last probe, and a new probe when one is due: every
/// `probe_interval`, and at once while the disk is suspect or its I/O error count rose.
fn monitor(w: std::sync::Weak<Orchestrator>) {
    let mut probers: HashMap<u32, Prober> = HashMap::new();
    loop {
        let Some(o) = w.upgrade() else { break };
        let tick = Instant::now();
        let deadline = o.opts.probe_deadline;
        let watched: Vec<Arc<Disk>> =
            o.fs.store
                .disks()
                .into_iter()
                .filter(|d| d.is_up())
                .collect();
        for d in &watched {
            let hard = match read_label(&d.root) {
                Ok(Some(l)) if l.pool_id == o.fs.cfg.pool_id && l.disk_id == d.id => None,
                Ok(Some(l)) => Some(format!(
                    "label mismatch: pool {} disk {} found (disk swapped?)",
                    l.pool_id, l.disk_id
                )),
                Ok(None) if !d.root.exists() => Some("disk root gone".to_string()),
                Ok(None) => Some(
                    "disk label missing (disk unmounted or replaced by an empty directory)".into(),
                ),
                // Unreadable label: the probe decides.
                Err(_) => None,
            };
            if let Some(why) = hard {
                o.fail_disk(d.id, &why);
                probers.remove(&d.id);
                continue;
            }
            let p = probers
                .entry(d.id)
                .or_insert_with(|| spawn_prober(d.clone()));
            // Outcome of the running probe: Ok, late (suspect only: a busy disk can take
            // seconds to fsync), or failed (an error, or hung past HANG_FAIL_FACTOR deadlines).
            let mut outcome: Option<Probe> = None;
            if p.busy {
                match p.rx.try_recv() {
                    Ok((r, took)) => {
                        p.busy = false;
                        outcome = Some(match r {
                            Ok(()) if took > deadline => Probe::Late(format!(
                                "probe took {} ms (deadline {} ms)",
                                took.as_millis(),
                                deadline.as_millis()
                            )),
                            Ok(()) => Probe::Ok,
                            Err(e) => Probe::Failed(e.to_string()),
                        });
                    }
                    Err(_) if p.sent.elapsed() > deadline * HANG_FAIL_FACTOR => {
                        o.fail_disk(
                            d.id,
                            &format!(
                                "probe hung for more than {} ms",
                                (deadline * HANG_FAIL_FACTOR).as_millis()
                            ),
                        );
                        probers.remove(&d.id);
                        continue;
                    }
                    Err(_) if p.sent.elapsed() > deadline * (p.overruns + 1) => {
                        p.overruns += 1;
                        outcome = Some(Probe::Late(format!(
                            "probe hung for more than {} ms",
                            (deadline * p.overruns).as_millis()
                        )));
                    }
                    Err(_) => {}
                }
            }
            match outcome {
                Some(Probe::Ok) => {
                    p.fails = 0;
                    if d.state() == DiskState::Suspect {
                        tracing::info!(disk = d.id, "disk healthy again");
                        let _ = o.fs.set_disk_state(d.id, DiskState::Up);
                    }
                }
                Some(Probe::Late(e)) if d.state() == DiskState::Up => {
                    tracing::warn!(disk = d.id, "disk suspect: {e}");
                    let _ = o.fs.set_disk_state(d.id, DiskState::Suspect);
                }
                Some(Probe::Failed(e)) => {
                    p.fails += 1;
                    if p.fails >= o.opts.fail_after {
                        let why = format!("{} probes in a row failed, last: {e}", p.fails);
                        o.fail_disk(d.id, &why);
                        probers.remove(&d.id);
                        continue;
                    } else if d.state() == DiskState::Up {
                        tracing::warn!(disk = d.id, "disk suspect: probe failed: {e}");
                        let _ = o.fs.set_disk_state(d.id, DiskState::Suspect);
                    }
                }
                Some(Probe::Late(_)) | None => {}
            }
            // Full is not failed: once there is room again the disk takes copies again.
            if d.full.load(Ordering::Relaxed)
                && d.space().is_ok_and(|s| s.1 >= 2 * o.fs.extent_size())
            {
                d.full.store(false, Ordering::Relaxed);
                tracing::info!(disk = d.id, "disk has room again");
                o.kick();
            }
            let errors = d.io_errors.load(Ordering::Relaxed);
            let due = p.fails > 0
                || d.state() == DiskState::Suspect
                || errors > p.io_errors_seen
                || p.sent.elapsed() >= o.opts.probe_interval;
            if !p.busy && due && p.tx.try_send(ProbeMsg::Go).is_ok() {
                p.busy = true;
                p.sent = Instant::now();
                p.overruns = 0;
                p.io_errors_seen = errors;
            }
        }
        probers.retain(|id, _| o.fs.store.disk(*id).is_some_and(|d| d.is_up()));
        let interval = o.opts.check_interval;
        drop(o);
        let spent = tick.elapsed();
        if spent < interval {
            std::thread::sleep(interval - spent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agents::{AgentLimits, AgentMode};
    use crate::fs::Ctx;
    use crate::meta::ROOT_INO;
    use crate::pool::create_temp;

    const ES: u64 = 64 * 1024;

    fn data(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
            .collect()
    }

    /// Writes `files` files of `extents` extents each; returns (ino, data).
    fn fill(fs: &Fs, files: usize, extents: usize) -> Vec<(u64, Vec<u8>)> {
        (0..files)
            .map(|i| {
                let name = format!("f{i}");
                let (a, fh) = fs
                    .create(
                        Ctx::root(),
                        ROOT_INO,
                        name.as_bytes(),
                        0o644,
                        0,
                        libc::O_RDWR,
                    )
                    .unwrap();
                let d = data(extents * ES as usize - 100, i as u8);
                fs.write(fh, 0, &d).unwrap();
                fs.release(fh).unwrap();
                (a.ino, d)
            })
            .collect()
    }

    fn check_full(fs: &Fs, files: &[(u64, Vec<u8>)]) {
        fs.meta
            .each_extent(|ino, index, e| {
                let live: HashSet<u32> = e
                    .replicas
                    .iter()
                    .copied()
                    .filter(|d| fs.store.disk(*d).is_some_and(|x| x.accepts_data()))
                    .collect();
                assert_eq!(
                    live.len(),
                    fs.cfg.replicas as usize,
                    "extent {ino}.{index} has replicas {:?}",
                    e.replicas
                );
                assert_eq!(
                    live.len(),
                    e.replicas.len(),
                    "dead replica left in the record"
                );
            })
            .unwrap();
        for (ino, d) in files {
            let fh = fs.open(*ino, libc::O_RDONLY).unwrap();
            assert_eq!(&fs.read(*ino, 0, d.len() as u32).unwrap(), d);
            fs.release(fh).unwrap();
        }
    }

    fn orchestrator(fs: &Arc<Fs>, mode: AgentMode) -> Arc<Orchestrator> {
        let agents = Arc::new(AgentPool::new(
            mode,
            AgentLimits {
                agents_max: 3,
                queue_depth: 2,
                ..AgentLimits::default()
            },
            ES as usize,
        ));
        let o = Orchestrator::start(
            fs.clone(),
            agents,
            RecoveryOptions {
                check_interval: Duration::from_millis(20),
                probe_interval: Duration::from_millis(100),
                plan_refresh_interval: Duration::from_millis(50),
                ..RecoveryOptions::default()
            },
        );
        assert!(o.wait_idle(Duration::from_secs(30)));
        o
    }

    fn recover_after_failure(mode: AgentMode) {
        let t = tempfile::tempdir().unwrap();
        let (_p, fs) = create_temp(t.path(), 4, 2, ES).unwrap();
        let files = fill(&fs, 6, 5);
        let o = orchestrator(&fs, mode);
        if mode == AgentMode::Pool {
            o.agents.refresh(&fs).unwrap();
            let st = o.agents.status();
            assert!(
                st.ready && st.agents == 3 && st.plan_extents == 30,
                "{st:?}"
            );
        }
        o.fail_disk(1, "test");
        assert!(o.wait_idle(Duration::from_secs(60)));
        let st = o.status();
        assert_eq!(st.state, "done");
        assert!(
            st.bytes_done > 0 && st.bytes_done == st.bytes_total,
            "{st:?}"
        );
        assert!(st.activation_us.is_some());
        assert!(st.lost_shards.is_empty());
        for s in fs.shard_table() {
            assert!(!s.disks.contains(&1), "failed disk still placed");
            assert_eq!(s.disks.len(), 2);
        }
        check_full(&fs, &files);
        assert_eq!(
            crate::admin::fsck(&fs, false).unwrap().problems,
            Vec::<String>::new()
        );
    }

    #[test]
    fn limiter_follows_the_profile() {
        let mk = |profile, rate_bytes_max| {
            Limiter::new(&RecoveryOptions {
                profile,
                rate_bytes_max,
                ..RecoveryOptions::default()
            })
        };
        let mib = (1u64 << 20) as f64;
        let l = mk(Profile::Balanced, 0);
        assert!(l.allowed(0.0, 0.0).is_infinite(), "idle clients: no pacing");
        assert_eq!(
            l.allowed(300.0 * mib, 0.0),
            300.0 * mib,
            "balanced: half each"
        );
        assert_eq!(l.allowed(300.0 * mib, 1000.0 * mib), 500.0 * mib);
        let c = mk(Profile::HighClientOps, 0);
        assert_eq!(c.allowed(300.0 * mib, 0.0), 100.0 * mib, "clients get 3/4");
        assert_eq!(c.allowed(1.0, 0.0), 8.0 * mib, "the reservation holds");
        let r = mk(Profile::HighRecoveryOps, 200 << 20);
        assert_eq!(r.allowed(300.0 * mib, 0.0), 200.0 * mib, "the limit holds");
        assert_eq!(r.allowed(0.0, 0.0), 200.0 * mib);
    }

    #[test]
    fn pool_agents_restore_every_replica() {
        recover_after_failure(AgentMode::Pool);
    }

    #[test]
    fn reactive_agents_restore_every_replica() {
        recover_after_failure(AgentMode::Reactive);
    }

    #[test]
    fn stale_epoch_is_fenced_and_racing_agents_commit_once() {
        let t = tempfile::tempdir().unwrap();
        let (_p, fs) = create_temp(t.path(), 4, 2, ES).unwrap();
        let files = fill(&fs, 1, 1);
        let ino = files[0].0;
        let e = fs.meta.extent(ino, 0).unwrap().unwrap();
        let shard = fs.shard(e.shard);
        let failed = shard.disks[0];
        let survivor = shard.disks[1];
        fs.fail_disk(failed);
        let spare: Vec<u32> = (0..4).filter(|d| !shard.disks.contains(d)).collect();
        // Recovery A moves the shard to spare[0]; recovery B (planned before) to spare[1].
        let epoch_a = fs
            .set_placement(e.shard, shard.epoch, vec![spare[0], survivor])
            .unwrap();
        assert_eq!(
            fs.set_placement(e.shard, shard.epoch, vec![spare[1], survivor]),
            Err(crate::fs::Errno::ESTALE),
            "a placement change under a stale epoch is refused"
        );
        let good = fs.read_good_copy(ino, 0, &e).unwrap();
        let id = crate::store::ExtentId {
            ino,
            index: 0,
            version: e.version,
        };
        let stage = |target: u32, tag: u32| {
            let d = fs.store.disk(target).unwrap();
            use std::os::unix::fs::FileExt;
            let f = fs.store.create_staging(&d, &id, tag).unwrap();
            f.write_all_at(&good, 0).unwrap();
            d
        };
        // Stale agent of B: fenced, its copy never installed.
        let db = stage(spare[1], 7);
        let r = fs
            .commit_recovered(ino, 0, e.version, shard.epoch, spare[1], || {
                fs.store.install_staging(&db, &id, 7)
            })
            .unwrap();
        assert_eq!(r, RecoveryCommit::Fenced);
        assert!(
            !db.extent_path(&id).exists(),
            "a fenced copy is not installed"
        );
        // Two agents of A racing on the same extent and target: one commit.
        let da = stage(spare[0], 1);
        stage(spare[0], 2);
        let results: Vec<RecoveryCommit> = std::thread::scope(|s| {
            let hs: Vec<_> = [1u32, 2]
                .into_iter()
                .map(|tag| {
                    let (fs, da, id, t0) = (&fs, &da, &id, spare[0]);
                    s.spawn(move || {
                        fs.commit_recovered(ino, 0, e.version, epoch_a, t0, || {
                            fs.store.install_staging(da, id, tag)
                        })
                        .unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            results
                .iter()
                .filter(|r| **r == RecoveryCommit::Done)
                .count(),
            1,
            "{results:?}"
        );
        assert!(results.contains(&RecoveryCommit::AlreadyThere));
        let after = fs.meta.extent(ino, 0).unwrap().unwrap();
        let mut reps = after.replicas.clone();
        reps.sort_unstable();
        let mut want = vec![survivor, spare[0]];
        want.sort_unstable();
        assert_eq!(
            reps, want,
            "exactly one copy committed, the failed disk dropped"
        );
        // A write since the plan: the extent's version moved on, the copy is stale.
        let fh = fs.open(ino, libc::O_RDWR).unwrap();
        fs.write(fh, 0, b"new").unwrap();
        fs.release(fh).unwrap();
        let r = fs
            .commit_recovered(ino, 0, e.version, epoch_a, spare[0], || Ok(()))
            .unwrap();
        assert_eq!(r, RecoveryCommit::Stale);
    }

    #[test]
    fn drain_moves_replicas_and_releases_the_disk() {
        let t = tempfile::tempdir().unwrap();
        let (_p, fs) = create_temp(t.path(), 4, 2, ES).unwrap();
        let files = fill(&fs, 4, 4);
        let o = orchestrator(&fs, AgentMode::Pool);
        o.drain_disk(2).unwrap();
        assert!(o.wait_idle(Duration::from_secs(60)));
        let d = fs.store.disk(2).unwrap();
        assert_eq!(d.state(), DiskState::Removed);
        assert!(
            !d.root.join(crate::store::LABEL_FILE).exists(),
            "label released"
        );
        check_full(&fs, &files);
        // A new disk takes a share of the shards and their data.
        let nd = t.path().join("new");
        std::fs::create_dir(&nd).unwrap();
        let id = o.add_disk(&nd).unwrap();
        assert!(o.wait_idle(Duration::from_secs(60)));
        let placed = fs
            .shard_table()
            .iter()
            .filter(|s| s.disks.contains(&id))
            .count();
        assert!(placed >= 64 * 2 / 4 - 1, "new disk got {placed} shards");
        check_full(&fs, &files);
        let mut on_new = 0;
        fs.meta
            .each_extent(|_, _, e| on_new += usize::from(e.replicas.contains(&id)))
            .unwrap();
        assert!(on_new > 0, "data moved onto the new disk");
        assert!(o.add_disk(&nd).is_err(), "a disk cannot be added twice");
    }

    #[test]
    fn probe_fails_missing_and_relabelled_disks() {
        let t = tempfile::tempdir().unwrap();
        let (_p, fs) = create_temp(t.path(), 3, 2, ES).unwrap();
        let files = fill(&fs, 2, 3);
        let o = orchestrator(&fs, AgentMode::Pool);
        // Disk 0 swapped for another pool's disk: label mismatch.
        crate::store::write_label(
            &fs.store.disk(0).unwrap().root,
            &crate::store::Label {
                pool_id: "other".into(),
                disk_id: 0,
            },
        )
        .unwrap();
        let t0 = Instant::now();
        while fs.store.disk(0).unwrap().state() != DiskState::Failed {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "label mismatch not detected"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(o.wait_idle(Duration::from_secs(60)));
        assert!(o.status().failures[0].reason.contains("label mismatch"));
        // 3 disks, 2 replicas, one failed: every extent still has 2 copies.
        check_full(&fs, &files);
        // Disk 1 returns EIO on every operation: suspect, then failed after 3 probes.
        fs.store.disk(1).unwrap().set_fault(crate::store::Fault {
            eio_rate: 1.0,
            delay_ms: 0,
        });
        let t0 = Instant::now();
        while fs.store.disk(1).unwrap().state() != DiskState::Failed {
            assert!(t0.elapsed() < Duration::from_secs(5), "EIO disk not failed");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(o.wait_idle(Duration::from_secs(60)));
        // One disk left for 2 replicas: nothing lost, but shards lack a second target.
        let st = o.status();
        assert!(st.lost_shards.is_empty());
        assert!(!st.shards_without_target.is_empty());
        for (ino, d) in &files {
            let fh = fs.open(*ino, libc::O_RDONLY).unwrap();
            assert_eq!(&fs.read(*ino, 0, d.len() as u32).unwrap(), d);
            fs.release(fh).unwrap();
        }
    }
}
