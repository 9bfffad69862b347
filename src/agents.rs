//! Pre-Provisioned Recovery Agent Pool (PRAP).
//!
//! Recovery agents are made before any disk fails. Each agent owns an io_uring ring with
//! registered buffers (one per in-flight extent). The pool keeps a recovery plan, refreshed
//! when placement or data changes: every extent grouped by shard with its replicas and
//! checksums, the slice of shards each agent copies, the target disk per (shard, failing
//! disk) with that space reserved on the target (`foreshard.reserve`, fallocate'd), and open
//! handles to the replica files. When a disk fails the orchestrator (`crate::recovery`) hands
//! each agent its part of the plan: no metadata scan, no allocation, no open before the first
//! copy starts.
//!
//! `AgentMode::Reactive` makes nothing in advance: agents, rings, buffers and the work list
//! are created after the failure, as a system without a pool would, so the benefit can be
//! measured in the same run.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use io_uring::{opcode, types, IoUring};

use crate::store::{align_up, AlignedBuf};
use crate::util;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::fs::Fs;
use crate::meta::ShardRec;
use crate::store::ExtentId;

/// Name of the space reservation file on each disk (space kept for planned recovery copies).
pub const RESERVE_FILE: &str = "foreshard.reserve";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum AgentMode {
    /// Agents, rings, buffers, plans and reservations exist before a failure.
    Pool,
    /// Everything is created after the failure (for comparison).
    Reactive,
}

/// Global limits of the pool: every agent is one thread and one ring at activation. The agent
/// flags of `foreshard mount` (clap); the defaults are the flags' defaults.
#[derive(Clone, Debug, Serialize, Deserialize, clap::Parser)]
pub struct AgentLimits {
    /// Most recovery agents (each one io_uring ring and one thread while recovering).
    #[arg(id = "agents-max", long = "agents-max", value_name = "AGENTS_MAX", default_value = "8", value_parser = util::count_in(1, 256))]
    pub agents_max: usize,
    /// Registered buffer memory over all agents.
    #[arg(id = "agent-buffer-max", long = "agent-buffer-max", value_name = "AGENT_BUFFER_MAX", default_value = "64MiB", value_parser = util::parse_size)]
    pub buffer_bytes_max: u64,
    /// Extents each agent keeps in flight.
    #[arg(id = "agent-queue-depth", long = "agent-queue-depth", value_name = "AGENT_QUEUE_DEPTH", default_value = "4", value_parser = util::count_in(1, 64))]
    pub queue_depth: usize,
    // Not flags. Replica files the plan keeps open over all agents.
    #[arg(skip = 2048usize)]
    pub fds_max: usize,
    // Share of a disk's free space the plan may reserve for recovery copies.
    #[arg(skip = 0.5)]
    pub reserve_fraction_max: f64,
    // Extents the plan holds (about `PLAN_BYTES_PER_EXTENT` each).
    #[arg(skip = 1usize << 18)]
    pub plan_extents_max: usize,
}

impl Default for AgentLimits {
    fn default() -> Self {
        // The flags' defaults: one source for the CLI and the library.
        <Self as clap::Parser>::parse_from(["foreshard"])
    }
}

/// One extent copy: from the first source that verifies to `target`.
#[derive(Clone, Debug)]
pub struct CopyItem {
    pub ino: u64,
    pub index: u64,
    pub version: u64,
    pub len: u32,
    pub shard: u32,
    /// Shard epoch the copy was planned under; the commit is refused under another.
    pub epoch: u64,
    pub sources: Vec<u32>,
    pub target: u32,
    /// Block checksums; None for plan items (looked up when the copy starts, so the plan
    /// stays small: see `PLAN_BYTES_PER_EXTENT`).
    pub sums: Option<Arc<Vec<[u8; 32]>>>,
}

impl CopyItem {
    pub fn id(&self) -> ExtentId {
        ExtentId {
            ino: self.ino,
            index: self.index,
            version: self.version,
        }
    }
}

/// An extent as the plan knows it.
#[derive(Clone, Debug)]
pub struct PlanExtent {
    pub ino: u64,
    pub index: u64,
    pub version: u64,
    pub len: u32,
    pub shard: u32,
    pub replicas: Vec<u32>,
    pub sums: Option<Arc<Vec<[u8; 32]>>>,
}

impl PlanExtent {
    /// From an extent record; `sums` kept only when asked (plans look them up later).
    pub fn new(ino: u64, index: u64, e: crate::meta::ExtentRec, keep_sums: bool) -> PlanExtent {
        PlanExtent {
            ino,
            index,
            version: e.version,
            len: e.len,
            shard: e.shard,
            replicas: e.replicas,
            sums: keep_sums.then(|| Arc::new(e.sums)),
        }
    }
}

/// Memory of one planned extent, about (the record and its replica list; checksums are not
/// kept). `AgentLimits::plan_extents_max` bounds the plan with it.
pub const PLAN_BYTES_PER_EXTENT: usize = std::mem::size_of::<PlanExtent>() + 16;

/// The precomputed recovery plan.
pub struct Plan {
    pub built_at: Instant,
    pub build_ms: f64,
    /// Shard epochs and the commit counter the plan was made from (to know when it is stale).
    pub epochs: Vec<u64>,
    pub committed_seen: u64,
    /// The risk weights (`AgentPool::set_risk` generation) the agents were sized by.
    pub risk_gen: u64,
    /// Every extent, grouped by shard (`shard_ranges` index into it).
    pub extents: Vec<PlanExtent>,
    pub shard_ranges: Vec<Range<usize>>,
    pub shard_bytes: Vec<u64>,
    pub shard_agents: Vec<u32>,
    /// Per agent: the slices of `extents` it copies (from several shards).
    pub assignment: Vec<Vec<Range<usize>>>,
    /// (shard, failing disk) -> target disk.
    pub targets: HashMap<(u32, u32), u32>,
    pub reserved: HashMap<u32, u64>,
    /// Open replica files, (disk, extent) -> file.
    pub fds: HashMap<(u32, ExtentId), Arc<File>>,
}

impl Plan {
    /// No shard's placement changed since the plan was made.
    pub fn placement_current(&self, fs: &Fs) -> bool {
        let table = fs.shard_table();
        table
            .iter()
            .map(|s| s.epoch)
            .eq(self.epochs.iter().copied())
    }
}

/// The item's block sums: carried, or looked up (Stale when the extent moved on).
fn item_sums(fs: &Fs, it: &CopyItem) -> Result<Arc<Vec<[u8; 32]>>, CopyFail> {
    match &it.sums {
        Some(x) => Ok(x.clone()),
        None => match fs.meta.extent(it.ino, it.index) {
            Ok(Some(r)) if r.version == it.version => Ok(Arc::new(r.sums)),
            Ok(_) => Err(CopyFail::Stale),
            Err(e) => Err(format!("metadata: {e:#}").into()),
        },
    }
}

/// A cluster pool's share of a recovery pass for one agent: every disk is on a storage
/// host, so each copy is the target's host pulling the extent from a source's host
/// (`Store::stage_remote`); no byte passes through this host and no ring is needed. The
/// agents run in parallel as on one host, each one copy at a time; sources are tried in
/// order.
pub fn run_remote(
    fs: &Fs,
    tag: u32,
    items: &[CopyItem],
    mut before: impl FnMut(u64),
    done: &mut dyn FnMut(&CopyItem, CopyResult),
) {
    for it in items {
        let r = copy_remote(fs, tag, it, &mut before);
        done(it, r);
    }
}

fn copy_remote(fs: &Fs, tag: u32, it: &CopyItem, before: &mut dyn FnMut(u64)) -> CopyResult {
    if fs.shard_epoch(it.shard) != Some(it.epoch) {
        return Err(CopyFail::Stale);
    }
    let sums = item_sums(fs, it)?;
    let dst = fs
        .store
        .disk(it.target)
        .filter(|d| d.accepts_data())
        .ok_or_else(|| format!("target disk {} not available", it.target))?;
    before(u64::from(it.len));
    let mut last = "no readable source".to_string();
    for s in &it.sources {
        let Some(src) = fs.store.disk(*s).filter(|d| d.is_up()) else {
            continue;
        };
        let what = (&it.id(), u64::from(it.len), tag);
        match fs
            .store
            .stage_remote((&dst, &src), what, &sums, (it.shard, it.epoch))
        {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("from disk {} to disk {}: {e}", src.id, dst.id),
        }
    }
    Err(last.into())
}

/// One recovery agent: a ring and its registered buffers.
pub struct Agent {
    pub id: u32,
    ring: IoUring,
    bufs: Vec<AlignedBuf>,
}

/// Why a copy did not happen.
#[derive(Debug)]
pub enum CopyFail {
    /// The extent was rewritten or removed since it was planned (nothing to recover).
    Stale,
    Error(String),
}

impl From<String> for CopyFail {
    fn from(s: String) -> Self {
        CopyFail::Error(s)
    }
}

/// What an agent reports per item.
pub type CopyResult = Result<(), CopyFail>;

enum Slot {
    Free,
    Reading {
        item: usize,
        sums: Arc<Vec<[u8; 32]>>,
        _src: Arc<File>,
    },
    Writing {
        item: usize,
        dst: File,
        /// Bytes written (the extent's length rounded up for O_DIRECT; trimmed after).
        wlen: u32,
    },
}

/// One `Agent::run`: what each buffer slot is doing and which items are still to start.
struct CopyRun<'a> {
    fs: &'a Fs,
    items: &'a [CopyItem],
    fds: Option<&'a HashMap<(u32, ExtentId), Arc<File>>>,
    slots: Vec<Slot>,
    /// The first item not started yet.
    next: usize,
    /// Slots with an operation in flight.
    busy: usize,
    /// Operations allowed in flight (1 until the first copy completes, then every slot).
    window: usize,
    done: &'a mut dyn FnMut(&CopyItem, CopyResult),
}

impl CopyRun<'_> {
    /// Starts items on free slots, up to the window.
    fn start(&mut self, agent: &mut Agent, before: &mut dyn FnMut(u64)) {
        for s in 0..self.slots.len() {
            if !matches!(self.slots[s], Slot::Free)
                || self.next >= self.items.len()
                || self.busy >= self.window
            {
                continue;
            }
            let i = self.next;
            self.next += 1;
            self.start_item(agent, s, i, before);
        }
    }

    fn start_item(&mut self, agent: &mut Agent, s: usize, i: usize, before: &mut dyn FnMut(u64)) {
        let (fs, items) = (self.fs, self.items);
        let it = &items[i];
        if it.len as usize > agent.bufs[s].len() {
            let e = "extent larger than the agent's buffers".to_string();
            (self.done)(it, Err(e.into()));
            return;
        }
        if fs.shard_epoch(it.shard) != Some(it.epoch) {
            // The shard was placed anew (a disk came back online, a migration): the commit
            // would be refused, so the bytes are not copied at all.
            (self.done)(it, Err(CopyFail::Stale));
            return;
        }
        let sums = match item_sums(fs, it) {
            Ok(s) => s,
            Err(e) => return (self.done)(it, Err(e)),
        };
        before(u64::from(it.len));
        let Some(src) = agent.open_source(fs, it, self.fds) else {
            // No source opened: the general path tries every replica.
            match agent.fallback(fs, it, s) {
                Ok(()) => self.stage(agent, s, i),
                Err(e) => (self.done)(it, Err(e)),
            }
            return;
        };
        let e = opcode::ReadFixed::new(
            types::Fd(src.as_raw_fd()),
            agent.bufs[s].as_mut_ptr(),
            align_up(it.len as usize) as u32,
            s as u16,
        )
        .offset(0)
        .build()
        .user_data(s as u64);
        agent.submit(&e);
        self.slots[s] = Slot::Reading {
            item: i,
            sums,
            _src: src,
        };
        self.busy += 1;
    }

    /// Writes slot `s`'s verified bytes to a staging file on the item's target.
    fn stage(&mut self, agent: &mut Agent, s: usize, item: usize) {
        let it = &self.items[item];
        match agent.stage(self.fs, it, s) {
            Ok((dst, wlen)) => {
                self.slots[s] = Slot::Writing { item, dst, wlen };
                self.busy += 1;
            }
            Err(e) => (self.done)(it, Err(e.into())),
        }
    }

    fn complete(&mut self, agent: &mut Agent, s: usize, res: i32) {
        self.busy -= 1;
        match std::mem::replace(&mut self.slots[s], Slot::Free) {
            Slot::Reading { item, sums, .. } => self.read_done(agent, s, item, &sums, res),
            Slot::Writing { item, dst, wlen } => self.write_done(agent, item, dst, wlen, res),
            Slot::Free => unreachable!("completion for an idle slot"),
        }
    }

    /// A read completed: verified, else read again from the other replicas; then staged.
    fn read_done(&mut self, agent: &mut Agent, s: usize, item: usize, sums: &[[u8; 32]], res: i32) {
        let (fs, items) = (self.fs, self.items);
        let it = &items[item];
        let len = it.len as usize;
        let bs = fs.store.block_size;
        let good = res == it.len as i32
            && len.div_ceil(bs) == sums.len()
            && agent.bufs[s][..len]
                .chunks(bs)
                .zip(sums.iter())
                .all(|(c, want)| blake3::hash(c).as_bytes() == want);
        if !good {
            if let Some(d) = fs.store.disk(it.sources[0]) {
                if res < 0 {
                    d.io_errors.fetch_add(1, Ordering::Relaxed);
                } else {
                    d.checksum_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            tracing::warn!(
                agent = agent.id,
                ino = it.ino,
                index = it.index,
                "recovery source bad (result {res}); trying other replicas"
            );
            if let Err(e) = agent.fallback(fs, it, s) {
                (self.done)(it, Err(e));
                return;
            }
        }
        self.stage(agent, s, item);
    }

    /// A staging write completed: trimmed to the extent's length and reported.
    fn write_done(&mut self, agent: &Agent, item: usize, dst: File, wlen: u32, res: i32) {
        let (fs, items) = (self.fs, self.items);
        let it = &items[item];
        self.window = self.slots.len();
        // An O_DIRECT write covers whole blocks: cut the file to the extent.
        let trimmed =
            res == wlen as i32 && (wlen == it.len || dst.set_len(u64::from(it.len)).is_ok());
        drop(dst);
        if trimmed {
            (self.done)(it, Ok(()));
            return;
        }
        if let Some(d) = fs.store.disk(it.target) {
            let e = if res < 0 {
                io::Error::from_raw_os_error(-res)
            } else {
                io::Error::from_raw_os_error(libc::EIO)
            };
            d.note_error(&e);
            let _ = std::fs::remove_file(fs.store.staging_path(&d, &it.id(), agent.id));
        }
        let e = format!("write to disk {} failed ({res})", it.target);
        (self.done)(it, Err(e.into()));
    }

    /// The ring failed: every item in flight or not started fails.
    fn abort(&mut self, e: &io::Error) {
        let items = self.items;
        for s in 0..self.slots.len() {
            let item = match std::mem::replace(&mut self.slots[s], Slot::Free) {
                Slot::Reading { item, .. } | Slot::Writing { item, .. } => item,
                Slot::Free => continue,
            };
            (self.done)(&items[item], Err(format!("io_uring: {e}").into()));
        }
        for it in &items[self.next..] {
            (self.done)(it, Err(format!("io_uring: {e}").into()));
        }
    }
}

impl Agent {
    pub fn new(id: u32, buf_bytes: usize, depth: usize) -> io::Result<Agent> {
        let ring = IoUring::new((depth * 2).next_power_of_two() as u32)?;
        let bufs: Vec<AlignedBuf> = (0..depth)
            .map(|_| AlignedBuf::new(align_up(buf_bytes)))
            .collect();
        let iov: Vec<libc::iovec> = bufs
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: the buffers live as long as the ring (both owned by the agent) and are
        // never reallocated.
        unsafe { ring.submitter().register_buffers(&iov)? };
        Ok(Agent { id, ring, bufs })
    }

    /// Queues one operation on a registered buffer. The caller keeps the buffer's slot and
    /// its file alive (in `slots`) until the completion arrives.
    fn submit(&mut self, e: &io_uring::squeue::Entry) {
        // SAFETY: see above; at most `depth` operations are in flight and the ring has room
        // for twice that.
        unsafe {
            self.ring
                .submission()
                .push(e)
                .expect("ring sized for depth")
        };
    }

    pub fn buffer_bytes(&self) -> u64 {
        self.bufs.iter().map(|b| b.len() as u64).sum()
    }

    /// Copies `items` with up to one in-flight extent per buffer: read (fixed buffer) ->
    /// verify every block's checksum -> write a staging file on the target (fixed buffer).
    /// A source that fails or does not verify is bypassed through `Fs::read_good_copy` (all
    /// replicas, block by block). `before` runs before each read (rate limit); `done` gets
    /// each item once its staged copy is written and verified.
    pub fn run(
        &mut self,
        fs: &Fs,
        items: &[CopyItem],
        fds: Option<&HashMap<(u32, ExtentId), Arc<File>>>,
        mut before: impl FnMut(u64),
        mut done: impl FnMut(&CopyItem, CopyResult),
    ) {
        let depth = self.bufs.len();
        let mut r = CopyRun {
            fs,
            items,
            fds,
            slots: (0..depth).map(|_| Slot::Free).collect(),
            next: 0,
            busy: 0,
            // Slow start: one extent in flight until the first completes, so the first copy
            // is not queued behind every agent's whole window (it marks activation).
            window: 1,
            done: &mut done,
        };
        loop {
            r.start(self, &mut before);
            if r.busy == 0 {
                break;
            }
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                // The ring itself failed: finish every in-flight item on the slow path.
                tracing::error!(agent = self.id, "io_uring failed: {e}");
                r.abort(&e);
                return;
            }
            let cqes: Vec<(usize, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data() as usize, c.result()))
                .collect();
            for (s, res) in cqes {
                r.complete(self, s, res);
            }
        }
    }

    fn open_source(
        &self,
        fs: &Fs,
        it: &CopyItem,
        fds: Option<&HashMap<(u32, ExtentId), Arc<File>>>,
    ) -> Option<Arc<File>> {
        let d = fs.store.disk(*it.sources.first()?)?;
        if !d.is_up() {
            return None;
        }
        if let Some(f) = fds.and_then(|m| m.get(&(d.id, it.id()))) {
            if d.inject().is_err() {
                return None;
            }
            return Some(f.clone());
        }
        fs.store.open_extent(&d, &it.id()).ok()
    }

    /// Fills buffer `s` with a verified copy assembled from any replica.
    fn fallback(&mut self, fs: &Fs, it: &CopyItem, s: usize) -> CopyResult {
        let rec = fs
            .meta
            .extent(it.ino, it.index)
            .map_err(|e| CopyFail::Error(e.to_string()))?
            .filter(|r| r.version == it.version)
            .ok_or(CopyFail::Stale)?;
        let data = fs
            .read_good_copy(it.ino, it.index, &rec)
            .ok_or_else(|| CopyFail::Error("no good replica".into()))?;
        self.bufs[s][..data.len()].copy_from_slice(&data);
        Ok(())
    }

    /// Creates the staging file on the target (O_DIRECT where supported) and queues the
    /// write of buffer `s` to it. Returns the file and the bytes the write covers.
    fn stage(&mut self, fs: &Fs, it: &CopyItem, s: usize) -> Result<(File, u32), String> {
        let d = fs
            .store
            .disk(it.target)
            .filter(|d| d.accepts_data())
            .ok_or_else(|| format!("target disk {} not available", it.target))?;
        let (f, direct) = fs
            .store
            .create_staging(&d, &it.id(), self.id, true)
            .map_err(|e| {
                d.note_error(&e);
                format!("disk {}: {e}", d.id)
            })?;
        let len = it.len as usize;
        let wlen = if direct { align_up(len) } else { len };
        // Bytes past the extent's end are zeros, never a previous extent's data.
        self.bufs[s][len..wlen].fill(0);
        let e = opcode::WriteFixed::new(
            types::Fd(f.as_raw_fd()),
            self.bufs[s].as_ptr(),
            wlen as u32,
            s as u16,
        )
        .offset(0)
        .build()
        .user_data(s as u64);
        self.submit(&e);
        Ok((f, wlen as u32))
    }
}

/// Agent counts and memory, shown by `status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AgentStatus {
    pub mode: String,
    /// The plan is built and the agents exist (always true in reactive mode: nothing to make).
    pub ready: bool,
    pub agents: usize,
    pub rings: usize,
    pub buffer_bytes: u64,
    pub agents_max: usize,
    pub queue_depth: usize,
    pub buffer_bytes_max: u64,
    pub fds_open: usize,
    pub fds_max: usize,
    pub plan_extents: usize,
    /// Memory the plan takes, about.
    pub plan_bytes: u64,
    pub plan_extents_max: usize,
    pub plan_age_ms: u64,
    pub plan_build_ms: f64,
    pub reserved_bytes: u64,
    /// A cluster pool: (target host, source host) pairs the plan's copies would use, and
    /// the connections the target hosts said they hold for them.
    pub source_links_wanted: u64,
    pub source_links_ready: u64,
}

pub struct AgentPool {
    pub mode: AgentMode,
    pub limits: AgentLimits,
    extent_bytes: usize,
    idle: Mutex<Vec<Agent>>,
    made: AtomicUsize,
    plan: RwLock<Option<Arc<Plan>>>,
    ready: AtomicBool,
    /// Risk weight of a shard (its loss risk from the risk service; uniform before that).
    risk: RwLock<Arc<dyn Fn(u32) -> f64 + Send + Sync>>,
    /// Raised by each `set_risk`: the plan is re-sized when it moves.
    risk_gen: std::sync::atomic::AtomicU64,
    /// A cluster pool's connections from target hosts to their sources.
    links: crate::source_links::SourceLinks,
}

impl AgentPool {
    pub fn new(mode: AgentMode, limits: AgentLimits, extent_bytes: usize) -> AgentPool {
        AgentPool {
            mode,
            limits,
            extent_bytes,
            idle: Mutex::new(Vec::new()),
            made: AtomicUsize::new(0),
            plan: RwLock::new(None),
            ready: AtomicBool::new(mode == AgentMode::Reactive),
            risk: RwLock::new(Arc::new(|_| 1.0)),
            risk_gen: std::sync::atomic::AtomicU64::new(0),
            links: Default::default(),
        }
    }

    /// Agents allowed by the limits (threads, and buffer memory at `queue_depth` extents each).
    pub fn agent_count(&self) -> usize {
        let per = (self.limits.queue_depth * self.extent_bytes) as u64;
        let by_mem = (self.limits.buffer_bytes_max / per.max(1)) as usize;
        self.limits.agents_max.min(by_mem).max(1)
    }

    /// New risk weights per shard; the planner re-sizes the agents at its next refresh.
    pub fn set_risk(&self, f: Arc<dyn Fn(u32) -> f64 + Send + Sync>) {
        *self.risk.write() = f;
        self.risk_gen.fetch_add(1, Ordering::Relaxed);
    }

    fn make_agents(&self, n: usize) -> io::Result<Vec<Agent>> {
        (0..n)
            .map(|_| {
                let id = self.made.fetch_add(1, Ordering::Relaxed) as u32;
                Agent::new(id, self.extent_bytes, self.limits.queue_depth)
            })
            .collect()
    }

    /// Pool mode: creates the agents (rings, registered buffers) once.
    pub fn provision(&self) -> io::Result<()> {
        if self.mode != AgentMode::Pool {
            return Ok(());
        }
        let mut idle = self.idle.lock();
        if idle.is_empty() {
            *idle = self.make_agents(self.agent_count())?;
        }
        Ok(())
    }

    /// Agents for a recovery: the pre-made ones, or (reactive) new ones.
    pub fn take(&self) -> io::Result<Vec<Agent>> {
        match self.mode {
            AgentMode::Pool => {
                let mut idle = self.idle.lock();
                if idle.is_empty() {
                    drop(idle);
                    return self.make_agents(self.agent_count());
                }
                Ok(std::mem::take(&mut *idle))
            }
            AgentMode::Reactive => self.make_agents(self.agent_count()),
        }
    }

    pub fn give_back(&self, agents: Vec<Agent>) {
        if self.mode == AgentMode::Pool {
            let mut idle = self.idle.lock();
            if idle.is_empty() {
                *idle = agents;
            }
        }
    }

    pub fn plan(&self) -> Option<Arc<Plan>> {
        self.plan.read().clone()
    }

    /// True when the plan no longer matches placement or data.
    pub fn plan_stale(&self, fs: &Fs) -> bool {
        let Some(p) = self.plan() else { return true };
        p.committed_seen != data_changes(fs)
            || p.risk_gen != self.risk_gen.load(Ordering::Relaxed)
            || !p.placement_current(fs)
    }

    /// The plan while its replica lists can still be trusted: no shard's placement changed
    /// since it was made. (A plan from before the last recovery's placements would copy
    /// every extent that recovery already restored again.) Writes after the plan are found
    /// by the catch-up scan.
    pub fn plan_for_recovery(&self, fs: &Fs) -> Option<Arc<Plan>> {
        self.plan().filter(|p| p.placement_current(fs))
    }

    /// Rebuilds the plan from the metadata (pool mode), then reserves target space.
    pub fn refresh(&self, fs: &Fs) -> anyhow::Result<()> {
        if self.mode != AgentMode::Pool {
            return Ok(());
        }
        let t0 = Instant::now();
        let committed_seen = data_changes(fs);
        let table = fs.shard_table();
        let (extents, shard_ranges, shard_bytes) =
            plan_extents(fs, table.len(), self.limits.plan_extents_max)?;
        let agents = self.agent_count();
        let risk_gen = self.risk_gen.load(Ordering::Relaxed);
        let risk = self.risk.read().clone();
        let weight: Vec<f64> = (0..table.len())
            .map(|s| risk(s as u32) * shard_bytes[s] as f64)
            .collect();
        let (shard_agents, fail_disks) = agents_per_shard(&table, &weight, &shard_bytes, agents);
        let assignment = assign_slices(&table, &extents, &shard_ranges, &shard_agents, agents);
        let (targets, reserved) = plan_targets(fs, &table, fail_disks, &shard_bytes);
        let fds = open_replicas(fs, &extents, self.limits.fds_max);
        let reserved = self.reserve(fs, reserved);
        self.links.prepare(fs, &targets);
        let plan = Plan {
            built_at: Instant::now(),
            build_ms: t0.elapsed().as_secs_f64() * 1e3,
            epochs: table.iter().map(|s| s.epoch).collect(),
            committed_seen,
            risk_gen,
            extents,
            shard_ranges,
            shard_bytes,
            shard_agents,
            assignment,
            targets,
            reserved,
            fds,
        };
        *self.plan.write() = Some(Arc::new(plan));
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Sizes each disk's reservation file (fallocate) to the bytes planned onto it, within
    /// `reserve_fraction_max` of its free space. Returns what was reserved.
    fn reserve(&self, fs: &Fs, want: HashMap<u32, u64>) -> HashMap<u32, u64> {
        let mut out = HashMap::new();
        for d in fs.store.disks() {
            // A remote disk's space is reserved by its host (docs/cluster.md, step 9).
            if !d.accepts_data() || d.is_remote() {
                continue;
            }
            let p = d.root.join(RESERVE_FILE);
            let have = std::fs::symlink_metadata(&p).map(|m| m.len()).unwrap_or(0);
            let free = d.space().map(|s| s.1).unwrap_or(0) + have;
            let bytes = want
                .get(&d.id)
                .copied()
                .unwrap_or(0)
                .min((free as f64 * self.limits.reserve_fraction_max) as u64);
            if bytes == have {
                out.insert(d.id, bytes);
                continue;
            }
            if !d.root.join(crate::store::LABEL_FILE).exists() {
                continue;
            }
            // Never through a symlink or a hard link planted in the disk root.
            let res = crate::store::open_plain(&p, true, true).and_then(|f| {
                f.set_len(0)?;
                if bytes > 0 {
                    // SAFETY: valid descriptor; allocates real blocks (not a hole).
                    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, bytes as i64) };
                    if r != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            });
            match res {
                Ok(()) => {
                    out.insert(d.id, bytes);
                }
                Err(e) => tracing::warn!(disk = d.id, "cannot reserve {bytes} bytes: {e}"),
            }
        }
        out
    }

    /// Frees the reservations (at activation: the copies take that space now).
    pub fn release_reservations(&self, fs: &Fs) {
        for d in fs.store.disks().iter().filter(|d| !d.is_remote()) {
            let p = d.root.join(RESERVE_FILE);
            if let Ok(f) = crate::store::open_plain(&p, true, false) {
                let _ = f.set_len(0);
            }
        }
    }

    pub fn status(&self) -> AgentStatus {
        let plan = self.plan();
        let idle = self.idle.lock();
        let agents = match self.mode {
            AgentMode::Pool => idle.len(),
            AgentMode::Reactive => 0,
        };
        AgentStatus {
            mode: match self.mode {
                AgentMode::Pool => "pool".into(),
                AgentMode::Reactive => "reactive".into(),
            },
            ready: self.ready.load(Ordering::Acquire),
            agents,
            rings: agents,
            buffer_bytes: idle.iter().map(|a| a.buffer_bytes()).sum(),
            agents_max: self.limits.agents_max,
            queue_depth: self.limits.queue_depth,
            buffer_bytes_max: self.limits.buffer_bytes_max,
            fds_open: plan.as_ref().map_or(0, |p| p.fds.len()),
            fds_max: self.limits.fds_max,
            plan_extents: plan.as_ref().map_or(0, |p| p.extents.len()),
            plan_bytes: plan
                .as_ref()
                .map_or(0, |p| (p.extents.len() * PLAN_BYTES_PER_EXTENT) as u64),
            plan_extents_max: self.limits.plan_extents_max,
            plan_age_ms: plan
                .as_ref()
                .map_or(0, |p| p.built_at.elapsed().as_millis() as u64),
            plan_build_ms: plan.as_ref().map_or(0.0, |p| p.build_ms),
            reserved_bytes: plan.as_ref().map_or(0, |p| p.reserved.values().sum()),
            source_links_wanted: self.links.wanted(),
            source_links_ready: self.links.ready(),
        }
    }
}

/// Changes a plan depends on: extents written and extents moved between shards.
fn data_changes(fs: &Fs) -> u64 {
    fs.stats.extents_committed.load(Ordering::Relaxed)
        + fs.stats.extents_moved.load(Ordering::Relaxed)
}

/// The plan's extents, each shard's range of them, each shard's bytes.
type ShardExtents = (Vec<PlanExtent>, Vec<Range<usize>>, Vec<u64>);

/// Shards' extents (at most `extents_max`, the rest is found by the orchestrator's catch-up
/// scan), grouped by shard: the list, each shard's range in it and its bytes.
fn plan_extents(fs: &Fs, nshards: usize, extents_max: usize) -> anyhow::Result<ShardExtents> {
    let mut by_shard: Vec<Vec<PlanExtent>> = vec![Vec::new(); nshards];
    let mut planned = 0usize;
    fs.meta.view().each_extent(|ino, index, e| {
        if planned >= extents_max {
            return;
        }
        planned += 1;
        if let Some(v) = by_shard.get_mut(e.shard as usize) {
            v.push(PlanExtent::new(ino, index, e, false));
        }
    })?;
    let mut extents = Vec::new();
    let mut shard_ranges = Vec::with_capacity(nshards);
    let mut shard_bytes = Vec::with_capacity(nshards);
    for v in by_shard {
        let start = extents.len();
        shard_bytes.push(v.iter().map(|e| u64::from(e.len)).sum::<u64>());
        extents.extend(v);
        shard_ranges.push(start..extents.len());
    }
    Ok((extents, shard_ranges, shard_bytes))
}

/// Agents per shard, proportional to risk x size, scaled so that the shards hit by the
/// worst single-disk failure use all agents together. Also returns the disks holding any
/// shard (each a failure to plan for), sorted.
fn agents_per_shard(
    table: &[ShardRec],
    weight: &[f64],
    shard_bytes: &[u64],
    agents: usize,
) -> (Vec<u32>, Vec<u32>) {
    let mut per_disk: HashMap<u32, f64> = HashMap::new();
    for (s, rec) in table.iter().enumerate() {
        for d in &rec.disks {
            *per_disk.entry(*d).or_default() += weight[s];
        }
    }
    let w_max = per_disk.values().copied().fold(0.0, f64::max);
    let shard_agents = (0..table.len())
        .map(|s| {
            if shard_bytes[s] == 0 || w_max <= 0.0 {
                0
            } else {
                ((agents as f64 * weight[s] / w_max).round() as u32).clamp(1, agents as u32)
            }
        })
        .collect();
    let mut fail_disks: Vec<u32> = per_disk.keys().copied().collect();
    fail_disks.sort_unstable();
    (shard_agents, fail_disks)
}

/// Slices of each shard's extents to agents: biggest first, to the agent whose busiest disk
/// of that shard has the least planned bytes, so every single-disk failure spreads over all
/// agents.
fn assign_slices(
    table: &[ShardRec],
    extents: &[PlanExtent],
    shard_ranges: &[Range<usize>],
    shard_agents: &[u32],
    agents: usize,
) -> Vec<Vec<Range<usize>>> {
    let mut slices: Vec<(u32, Range<usize>, u64)> = Vec::new();
    for s in 0..table.len() {
        let n = shard_agents[s] as usize;
        if n == 0 {
            continue;
        }
        let r = shard_ranges[s].clone();
        let per = r.len().div_ceil(n);
        for k in 0..n {
            let a = r.start + k * per;
            let b = (a + per).min(r.end);
            if a < b {
                let bytes = extents[a..b].iter().map(|e| u64::from(e.len)).sum();
                slices.push((s as u32, a..b, bytes));
            }
        }
    }
    slices.sort_by_key(|x| std::cmp::Reverse(x.2));
    let mut load: Vec<HashMap<u32, u64>> = vec![HashMap::new(); agents];
    let mut assignment: Vec<Vec<Range<usize>>> = vec![Vec::new(); agents];
    for (s, r, bytes) in slices {
        let disks = &table[s as usize].disks;
        let a = (0..agents)
            .min_by_key(|a| {
                disks
                    .iter()
                    .map(|d| load[*a].get(d).copied().unwrap_or(0))
                    .max()
                    .unwrap_or(0)
            })
            .expect("at least one agent");
        for d in disks {
            *load[a].entry(*d).or_default() += bytes;
        }
        assignment[a].push(r);
    }
    assignment
}

/// Targets per (shard, failing disk): the disk with the most room left after the copies
/// already planned for that failure; and per target the most bytes any one failure sends it.
fn plan_targets(
    fs: &Fs,
    table: &[ShardRec],
    fail_disks: Vec<u32>,
    shard_bytes: &[u64],
) -> (HashMap<(u32, u32), u32>, HashMap<u32, u64>) {
    let mut targets = HashMap::new();
    let mut reserved: HashMap<u32, u64> = HashMap::new();
    let live: Vec<(u32, u64)> = fs
        .store
        .disks()
        .iter()
        .filter(|d| d.accepts_data() && !d.full.load(Ordering::Relaxed))
        .map(|d| (d.id, d.space().map(|s| s.1).unwrap_or(0)))
        .collect();
    for f in fail_disks {
        let mut need: HashMap<u32, u64> = HashMap::new();
        for (s, rec) in table.iter().enumerate() {
            if !rec.disks.contains(&f) {
                continue;
            }
            let t = live
                .iter()
                .filter(|(d, _)| !rec.disks.contains(d))
                .max_by_key(|(d, free)| free.saturating_sub(need.get(d).copied().unwrap_or(0)));
            if let Some((t, _)) = t {
                targets.insert((s as u32, f), *t);
                *need.entry(*t).or_default() += shard_bytes[s];
            }
        }
        for (t, n) in need {
            let r = reserved.entry(t).or_default();
            *r = (*r).max(n);
        }
    }
    (targets, reserved)
}

/// Opens the planned extents' replica files, within the descriptor budget.
fn open_replicas(
    fs: &Fs,
    extents: &[PlanExtent],
    fds_max: usize,
) -> HashMap<(u32, ExtentId), Arc<File>> {
    let mut fds = HashMap::new();
    for e in extents {
        for d in &e.replicas {
            if fds.len() >= fds_max {
                return fds;
            }
            let Some(disk) = fs.store.disk(*d).filter(|x| x.is_up() && !x.is_remote()) else {
                continue;
            };
            let id = ExtentId {
                ino: e.ino,
                index: e.index,
                version: e.version,
            };
            if let Ok(f) = File::open(disk.extent_path(&id)) {
                fds.insert((*d, id), Arc::new(f));
            }
        }
    }
    fds
}
