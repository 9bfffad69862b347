//! The filesystem core: POSIX semantics over `meta` (RocksDB) and `store` (extent files).
//!
//! Free of FUSE types so tests drive it directly; `crate::fuse` is a thin adapter over it.
//!
//! Locking: `ns` serialises namespace changes (create, link, unlink, rename, setattr of nlink)
//! and node creation; each open inode has a `Node` whose mutex guards its attributes and
//! dirty extent buffers. Order: `ns` -> `nodes` map -> one node. Disk reads run with no lock.

mod barrier;
mod data;
mod ns;
mod readahead;
pub mod shards;
mod writeback;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use crate::meta::{DiskState, ExtentRec, InodeRec, Kind, Meta, PoolConfig, ShardRec};
use crate::store::{AlignedBuf, Disk, ExtentId, Store};

/// Complete extents queued for the committer threads (1 MiB each by default); a writer
/// blocks beyond it.
const COMMIT_QUEUE_MAX: usize = 8;
/// Threads writing handed-off extents to the disks.
const COMMITTERS: usize = 2;
/// File removals waiting for the reaper thread; beyond it they happen inline.
const REAP_QUEUE_MAX: usize = 65_536;
/// How often the reaper looks for work when its queue is empty.
const REAP_POLL: Duration = Duration::from_millis(20);
/// Longest a removal waits for the WAL to be synced by someone else before the reaper
/// syncs it itself (an old version's files go only once its replacement is durable).
const REAP_SYNC_DELAY: Duration = Duration::from_millis(500);
/// Extent files written but not yet made durable; beyond it the writer syncs them.
const UNSYNCED_FILES_MAX: usize = 65_536;

pub use ns::{SetAttr, TimeSet};

/// A POSIX error number (libc value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const EFBIG: Errno = Errno(libc::EFBIG);
    pub const E2BIG: Errno = Errno(libc::E2BIG);
    pub const ESTALE: Errno = Errno(libc::ESTALE);
    pub const EROFS: Errno = Errno(libc::EROFS);
}

impl From<anyhow::Error> for Errno {
    fn from(e: anyhow::Error) -> Errno {
        tracing::error!("metadata error: {e:#}");
        metadata_errno(&e)
    }
}

/// The errno for a metadata failure: ENOSPC when the metadata filesystem is full (RocksDB
/// reports it as an IO error with the strerror text), else EIO.
fn metadata_errno(e: &anyhow::Error) -> Errno {
    if crate::metaspace::is_no_space(e) {
        Errno::ENOSPC
    } else {
        Errno::EIO
    }
}

pub type FsResult<T> = Result<T, Errno>;

/// Who is asking (from the FUSE request).
#[derive(Clone, Copy, Debug, Default)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Ctx {
    pub fn root() -> Ctx {
        Ctx::default()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Bytes of disk used (one replica), in 512-byte units.
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub crtime: SystemTime,
    pub rdev: u32,
}

pub struct DirEntryOut {
    pub ino: u64,
    /// Pass back as the readdir offset to continue after this entry.
    pub offset: u64,
    pub kind: Kind,
    pub name: Vec<u8>,
}

pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

pub fn ns_to_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

pub fn time_to_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i64,
        Err(e) => -(e.duration().as_nanos() as i64),
    }
}

/// Counters shown by `status` and the metrics endpoint.
#[derive(Default)]
pub struct Stats {
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub extents_committed: AtomicU64,
    pub replica_read_failures: AtomicU64,
    pub repairs_done: AtomicU64,
    pub repairs_failed: AtomicU64,
    pub repairs_dropped: AtomicU64,
    pub degraded_writes: AtomicU64,
    /// Extents moved to another shard by re-sharding (agents' plans follow this too).
    pub extents_moved: AtomicU64,
}

#[derive(Serialize, Deserialize)]
pub struct StatsSnapshot {
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub extents_committed: u64,
    pub replica_read_failures: u64,
    pub repairs_done: u64,
    pub repairs_failed: u64,
    pub repairs_dropped: u64,
    pub degraded_writes: u64,
    pub extents_moved: u64,
    pub dirty_bytes: u64,
    pub open_nodes: usize,
    /// Sequential read-ahead: extents queued, used by readers (after waiting for the disk
    /// or not), failed (the reader read them itself), dropped unused; bytes held now.
    #[serde(default)]
    pub readahead_submitted: u64,
    #[serde(default)]
    pub readahead_hits: u64,
    #[serde(default)]
    pub readahead_waits: u64,
    #[serde(default)]
    pub readahead_failed: u64,
    #[serde(default)]
    pub readahead_evicted: u64,
    #[serde(default)]
    pub readahead_bytes: usize,
}

/// Tunables of a mounted pool, with their limits.
#[derive(Clone, Debug)]
pub struct FsOptions {
    /// Buffered (not yet committed) file data across all files; beyond it writers commit.
    pub dirty_bytes_max: u64,
    /// Repair requests waiting for the repair thread; more are dropped and counted.
    pub repair_queue_max: usize,
    /// How often buffered writes are committed in the background.
    pub flush_interval: Duration,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            dirty_bytes_max: 256 << 20,
            repair_queue_max: 1024,
            flush_interval: Duration::from_secs(5),
        }
    }
}

pub(crate) struct NodeInner {
    pub rec: InodeRec,
    /// Attributes changed in memory but not yet written to metadata.
    pub rec_dirty: bool,
    /// Uncommitted extent data by index; a buffer's length is the extent's valid length.
    pub dirty: BTreeMap<u64, Vec<u8>>,
    /// Extent records read recently; cleared when it grows past a bound.
    pub extents: HashMap<u64, Arc<ExtentRec>>,
    /// Latest handed-off (version, data) per extent index, readable until committed.
    pub inflight: BTreeMap<u64, (u64, Arc<AlignedBuf>)>,
    /// Handed-off extents not yet committed (several may share an index).
    pub inflight_count: usize,
    /// A failed background commit, reported by the next flush or fsync.
    pub async_err: Option<Errno>,
}

pub(crate) struct Node {
    pub inner: Mutex<NodeInner>,
    /// Signalled when a handed-off extent of this node is committed.
    pub cv: Condvar,
    /// Open handles and temporary users; the node leaves the map at zero. Changed under
    /// `ns` only, never under the node lock.
    pub refs: AtomicU32,
}

/// A complete extent on its way to the disks (see `Fs::hand_off`).
pub(crate) struct CommitJob {
    pub ino: u64,
    pub index: u64,
    pub version: u64,
    pub data: Arc<AlignedBuf>,
    pub node: Arc<Node>,
}

/// An extent file to remove once the batch that stopped naming it is durable: its WAL
/// sequence number (or a later one) is `seq`.
pub(crate) struct Reap {
    disk: u32,
    id: ExtentId,
    seq: u64,
    since: std::time::Instant,
}

pub(crate) struct RepairReq {
    pub ino: u64,
    pub index: u64,
    pub version: u64,
    pub disk: u32,
}

pub(crate) struct Handle {
    pub ino: u64,
    pub append: bool,
}

/// The truth for placements when it is not this pool's metadata (docs/cluster.md: etcd for
/// a cluster pool). `commit` applies each `(shard, new record)` if the shard is still at
/// the epoch before it, and says per change whether it did.
pub trait PlacementSink: Send + Sync {
    fn commit(&self, changes: &[(u32, ShardRec)]) -> anyhow::Result<Vec<bool>>;
}

pub struct Fs {
    pub meta: Arc<Meta>,
    pub store: Arc<Store>,
    pub cfg: PoolConfig,
    pub opts: FsOptions,
    pub stats: Stats,
    ns: Mutex<()>,
    nodes: Mutex<HashMap<u64, Arc<Node>>>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    /// Placement of every shard; changed only through `set_placement` (epoch fenced).
    shards: parking_lot::RwLock<Vec<ShardRec>>,
    /// Serialises placement changes and recovery commits against each other.
    placement_lock: Mutex<()>,
    /// Where placements are the truth before they are written here (a cluster pool's map
    /// in etcd); none for a single-host pool.
    placement_sink: std::sync::OnceLock<Arc<dyn PlacementSink>>,
    /// Serialises recovery installs (see `commit_recovered`).
    install_lock: Mutex<()>,
    dirty_bytes: AtomicU64,
    /// Extent files written and named (or about to be) by metadata but not yet durable.
    /// Every WAL sync first makes them durable (`sync_pending`, the metadata's barrier).
    unsynced: barrier::Unsynced,
    /// Syncs them, one worker per disk.
    sync_barrier: barrier::Barrier,
    repair_tx: SyncSender<RepairReq>,
    repair_rx: Mutex<Option<Receiver<RepairReq>>>,
    /// Extent files whose metadata is gone, removed off the request path. A crash before
    /// they are removed is harmless: start-up cleanup removes unreferenced files.
    reap_tx: SyncSender<Reap>,
    reap_rx: Mutex<Option<Receiver<Reap>>>,
    reap_pending: AtomicU64,
    /// Set once the committer threads run; until then commits are synchronous.
    commit_tx: OnceLock<SyncSender<CommitJob>>,
    /// Where reads and writes are reported (the access analyzer), when it runs.
    access: OnceLock<Arc<crate::access::Sink>>,
    /// Extents read ahead for sequential readers.
    ra: readahead::Readahead,
}

impl Fs {
    pub fn new(
        meta: Arc<Meta>,
        store: Arc<Store>,
        cfg: PoolConfig,
        opts: FsOptions,
    ) -> anyhow::Result<Arc<Fs>> {
        let mut shards: Vec<ShardRec> = Vec::with_capacity(cfg.shard_count as usize);
        for (id, rec) in meta.shards()? {
            anyhow::ensure!(
                id as usize == shards.len(),
                "shard table has a gap at shard {id}"
            );
            shards.push(rec);
        }
        // The first `shard_count` shards are addressed by hash; re-sharding adds more.
        anyhow::ensure!(
            shards.len() >= cfg.shard_count as usize,
            "shard table incomplete"
        );
        let (tx, rx) = sync_channel(opts.repair_queue_max);
        let (reap_tx, reap_rx) = sync_channel(REAP_QUEUE_MAX);
        let unsynced = barrier::Unsynced::default();
        let fs = Arc::new(Fs {
            meta,
            store: store.clone(),
            cfg,
            opts,
            stats: Stats::default(),
            ns: Mutex::new(()),
            nodes: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            shards: parking_lot::RwLock::new(shards),
            placement_lock: Mutex::new(()),
            placement_sink: std::sync::OnceLock::new(),
            install_lock: Mutex::new(()),
            dirty_bytes: AtomicU64::new(0),
            unsynced: unsynced.clone(),
            sync_barrier: barrier::Barrier::new(store.clone(), unsynced),
            repair_tx: tx,
            repair_rx: Mutex::new(Some(rx)),
            reap_tx,
            reap_rx: Mutex::new(Some(reap_rx)),
            reap_pending: AtomicU64::new(0),
            commit_tx: OnceLock::new(),
            access: OnceLock::new(),
            ra: readahead::Readahead::new(),
        });
        let weak = Arc::downgrade(&fs);
        fs.meta.set_barrier(Box::new(move || match weak.upgrade() {
            Some(fs) => fs.sync_pending(),
            None => Ok(0),
        }));
        Ok(fs)
    }

    /// Starts the background threads: repair (bad replicas found by reads are rewritten) and
    /// the flusher (commits buffered writes every few seconds, so that a crash loses at most
    /// that much unsynced data and buffers of files left open do not pile up).
    pub fn start_background(self: &Arc<Self>) {
        use crate::supervise::{fault_point, spawn};
        let weak = Arc::downgrade(self);
        let period = self.opts.flush_interval;
        spawn("flusher", move || loop {
            std::thread::sleep(period);
            let Some(fs) = weak.upgrade() else { break };
            fault_point("flusher");
            if fs.dirty_bytes.load(Ordering::Relaxed) > 0 {
                if let Err(e) = fs.flush_all() {
                    tracing::error!("background flush failed: errno {}", e.0);
                }
            }
        })
        .expect("spawn flusher thread");
        if self.commit_tx.get().is_none() {
            let (tx, rx) = sync_channel::<CommitJob>(COMMIT_QUEUE_MAX);
            let rx = Arc::new(Mutex::new(rx));
            for i in 0..COMMITTERS {
                let (fs, rx) = (Arc::downgrade(self), rx.clone());
                spawn(format!("commit-{i}"), move || loop {
                    let job = rx.lock().recv();
                    let Ok(job) = job else { break };
                    let Some(fs) = fs.upgrade() else { break };
                    fs.run_job(job, false);
                })
                .expect("spawn committer thread");
            }
            let _ = self.commit_tx.set(tx);
        }
        if let Some(rx) = self.reap_rx.lock().take() {
            let fs = Arc::downgrade(self);
            // The removals waiting survive a restart of the reaper (captured here).
            let mut waiting = std::collections::VecDeque::new();
            spawn("reaper", move || reaper(&fs, &rx, &mut waiting)).expect("spawn reaper thread");
        }
        if !self.ra.running() {
            // Workers per disk (up to a bound), so each disk reads its extents in order.
            let n = (self.store.disks().len() * readahead::WORKERS_PER_DISK)
                .clamp(1, readahead::WORKERS_MAX);
            let mut queues = Vec::with_capacity(n);
            for i in 0..n {
                let (tx, rx) = sync_channel::<readahead::Job>(readahead::QUEUE_MAX);
                let fs = Arc::downgrade(self);
                spawn(format!("readahead-{i}"), move || {
                    while let Ok(job) = rx.recv() {
                        let Some(fs) = fs.upgrade() else { break };
                        fault_point("readahead");
                        fs.run_read_ahead(job);
                    }
                })
                .expect("spawn read-ahead thread");
                queues.push(tx);
            }
            self.ra.set_workers(queues);
        }
        if let Some(rx) = self.repair_rx.lock().take() {
            let fs = Arc::downgrade(self);
            spawn("repair", move || {
                while let Ok(req) = rx.recv() {
                    let Some(fs) = fs.upgrade() else { break };
                    fault_point("repair");
                    fs.repair(&req);
                }
            })
            .expect("spawn repair thread");
        }
    }

    pub fn extent_size(&self) -> u64 {
        self.cfg.extent_size
    }

    /// EROFS once a background thread that cannot be restarted died: no new changes rather
    /// than changes half handled (`status` says why).
    pub(crate) fn writable(&self) -> FsResult<()> {
        if crate::supervise::writes_refused() {
            return Err(Errno::EROFS);
        }
        Ok(())
    }

    /// `writable`, and ENOSPC while the metadata filesystem is full (`metaspace`): what
    /// adds metadata is refused, what frees it goes through.
    pub(crate) fn growable(&self) -> FsResult<()> {
        self.writable()?;
        if self.meta.space_full() {
            return Err(Errno::ENOSPC);
        }
        Ok(())
    }

    /// Reports reads and writes to `sink` from now on.
    pub fn set_access(&self, sink: Arc<crate::access::Sink>) {
        let _ = self.access.set(sink);
    }

    /// Posts an access event for `[offset, offset + len)` of a file (never blocks).
    pub(crate) fn post_access(
        &self,
        ino: u64,
        offset: u64,
        len: usize,
        op: crate::access::AccessOp,
        stream: u64,
    ) {
        let Some(sink) = self.access.get() else {
            return;
        };
        if len == 0 {
            return;
        }
        let es = self.extent_size();
        let first = offset / es;
        let last = (offset + len as u64 - 1) / es;
        sink.post(crate::access::Event {
            ino,
            index: first,
            extents: (last - first + 1).min(u64::from(u16::MAX)) as u16,
            op,
            bytes: len.min(u32::MAX as usize) as u32,
            t_ms: crate::util::now_ms(),
            stream,
            shard: crate::access::SHARD_UNKNOWN,
        });
    }

    /// Where a new extent goes: the initial shard set, addressed by a hash of (inode, index).
    /// Re-sharding moves extents elsewhere; rewrites keep the extent's shard (`home_shard`).
    pub fn shard_of(&self, ino: u64, index: u64) -> u32 {
        let h = ino.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        ((h >> 17) % u64::from(self.cfg.shard_count)) as u32
    }

    pub fn shard(&self, id: u32) -> ShardRec {
        self.shards.read()[id as usize].clone()
    }

    /// The shard a new version of an extent is written to: the shard of its committed
    /// version, else the hash shard.
    pub(crate) fn home_shard(&self, ino: u64, index: u64) -> u32 {
        match self.meta.extent(ino, index) {
            Ok(Some(e)) if (e.shard as usize) < self.shards.read().len() => e.shard,
            _ => self.shard_of(ino, index),
        }
    }

    /// A shard's placement epoch (None: no such shard).
    pub fn shard_epoch(&self, id: u32) -> Option<u64> {
        self.shards.read().get(id as usize).map(|s| s.epoch)
    }

    pub fn shard_count(&self) -> usize {
        self.shards.read().len()
    }

    pub fn shard_table(&self) -> Vec<ShardRec> {
        self.shards.read().clone()
    }

    /// Disks of `ids` that take new data (writes go only there).
    /// The disks of `ids` new data goes to. A remote disk whose host does not answer
    /// (suspect) is skipped, so a write does not wait out time-outs: the extent is committed
    /// degraded and recovery tops it up once the host is back, or rebuilds it elsewhere.
    pub(crate) fn live_disks(&self, ids: &[u32]) -> Vec<Arc<Disk>> {
        ids.iter()
            .filter_map(|id| self.store.disk(*id))
            .filter(|d| d.accepts_data())
            .filter(|d| !(d.is_remote() && d.state() == crate::meta::DiskState::Suspect))
            .collect()
    }

    pub fn stats(&self) -> StatsSnapshot {
        let s = &self.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            bytes_read: l(&s.bytes_read),
            bytes_written: l(&s.bytes_written),
            extents_committed: l(&s.extents_committed),
            replica_read_failures: l(&s.replica_read_failures),
            repairs_done: l(&s.repairs_done),
            repairs_failed: l(&s.repairs_failed),
            repairs_dropped: l(&s.repairs_dropped),
            extents_moved: l(&s.extents_moved),
            degraded_writes: l(&s.degraded_writes),
            dirty_bytes: l(&self.dirty_bytes),
            open_nodes: self.nodes.lock().len(),
            readahead_submitted: l(&self.ra.stats.submitted),
            readahead_hits: l(&self.ra.stats.hits),
            readahead_waits: l(&self.ra.stats.waits),
            readahead_failed: l(&self.ra.stats.failed),
            readahead_evicted: l(&self.ra.stats.evicted),
            readahead_bytes: self.ra.bytes(),
        }
    }

    fn node(&self, ino: u64) -> Option<Arc<Node>> {
        self.nodes.lock().get(&ino).cloned()
    }

    /// Takes a reference on the inode's node, loading it when it is not in memory.
    /// Caller holds `ns`.
    fn acquire_locked(&self, ino: u64) -> FsResult<Arc<Node>> {
        if let Some(n) = self.node(ino) {
            // Not under the node lock: `ns` must never wait for one (a commit may hold it).
            n.refs.fetch_add(1, Ordering::SeqCst);
            return Ok(n);
        }
        let rec = self.meta.inode(ino)?.ok_or(Errno::ENOENT)?;
        let node = Arc::new(Node {
            inner: Mutex::new(NodeInner {
                rec,
                rec_dirty: false,
                dirty: BTreeMap::new(),
                extents: HashMap::new(),
                inflight: BTreeMap::new(),
                inflight_count: 0,
                async_err: None,
            }),
            cv: Condvar::new(),
            refs: AtomicU32::new(1),
        });
        self.nodes.lock().insert(ino, node.clone());
        Ok(node)
    }

    fn acquire(&self, ino: u64) -> FsResult<Arc<Node>> {
        let _g = self.ns.lock();
        self.acquire_locked(ino)
    }

    /// Drops a reference; the last one commits buffered data, persists attributes and, for an
    /// inode unlinked while open, frees it.
    fn release_node(&self, ino: u64) -> FsResult<()> {
        // The last reference's data is committed before taking `ns`: a stalled disk must
        // not hold up every open and create. Whatever comes in meanwhile is committed below.
        let flushed = match self.node(ino) {
            Some(node) if node.refs.load(Ordering::SeqCst) == 1 => {
                self.flush_node(ino, &node, &mut node.inner.lock())
            }
            _ => Ok(()),
        };
        let _g = self.ns.lock();
        let Some(node) = self.node(ino) else {
            return Ok(());
        };
        if node.refs.fetch_sub(1, Ordering::SeqCst) > 1 {
            return Ok(());
        }
        let mut n = node.inner.lock();
        let res = flushed
            .and_then(|()| Self::wait_inflight(&node, &mut n))
            .and_then(|()| self.commit_all(ino, &mut n));
        self.ra.forget(ino);
        if n.rec.nlink == 0 {
            self.nodes.lock().remove(&ino);
            drop(n);
            return self.delete_inode(ino).and(res);
        }
        self.persist_rec(ino, &mut n)?;
        // On failure the data stays in memory (at zero references) rather than be lost; a
        // later close or fsync retries.
        if res.is_ok() {
            self.nodes.lock().remove(&ino);
        }
        res
    }

    /// Current attributes of an inode: the node's while it is in memory, else the stored ones.
    fn rec(&self, ino: u64) -> FsResult<InodeRec> {
        if let Some(n) = self.node(ino) {
            return Ok(n.inner.lock().rec.clone());
        }
        self.meta.inode(ino)?.ok_or(Errno::ENOENT)
    }

    fn attr_of(&self, ino: u64, rec: &InodeRec) -> Attr {
        let blocks = if rec.kind == Kind::File {
            rec.alloc.div_ceil(4096) * 8
        } else {
            rec.size.div_ceil(512)
        };
        Attr {
            ino,
            kind: rec.kind,
            perm: rec.perm,
            nlink: rec.nlink,
            uid: rec.uid,
            gid: rec.gid,
            size: rec.size,
            blocks,
            atime: ns_to_time(rec.atime_ns),
            mtime: ns_to_time(rec.mtime_ns),
            ctime: ns_to_time(rec.ctime_ns),
            crtime: ns_to_time(rec.crtime_ns),
            rdev: rec.rdev,
        }
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        if let Some(n) = self.node(ino) {
            let n = n.inner.lock();
            let dirty: u64 = n.dirty.values().map(|d| d.len() as u64).sum();
            let mut a = self.attr_of(ino, &n.rec);
            a.blocks = (n.rec.alloc + dirty).div_ceil(4096) * 8;
            return Ok(a);
        }
        let rec = self.meta.inode(ino)?.ok_or(Errno::ENOENT)?;
        Ok(self.attr_of(ino, &rec))
    }

    pub fn statfs(&self) -> FsStat {
        let mut total = 0u64;
        let mut free = 0u64;
        let mut files_free = u64::MAX;
        for d in self.store.disks() {
            if !d.is_up() {
                continue;
            }
            if d.is_remote() && d.state() == crate::meta::DiskState::Suspect {
                // Its host does not answer: statfs must not wait on it.
            } else if d.is_remote() {
                // Files are the metadata host's to count; a remote disk gives bytes only.
                if let Ok((t, f)) = d.space() {
                    total += t;
                    free += f;
                }
            } else if let Ok((t, f, _, ff)) = crate::store::statvfs(&d.root) {
                total += t;
                free += f;
                files_free = files_free.min(ff);
            }
        }
        let r = u64::from(self.cfg.replicas.max(1));
        FsStat {
            total_bytes: total / r,
            free_bytes: free / r,
            files_free,
        }
    }

    /// Makes all data and metadata written so far durable on every live replica: the WAL
    /// sync runs the data barrier (`sync_pending`) first.
    pub fn sync_all(&self) -> FsResult<()> {
        self.meta.sync_wal().map_err(|e| {
            tracing::error!("cannot make metadata durable: {e:#}");
            metadata_errno(&e)
        })
    }

    /// Registers extent files about to be named by a metadata batch (call before writing
    /// it): no WAL sync happens before they are durable. Beyond `UNSYNCED_FILES_MAX` the
    /// caller makes them durable now (backpressure, like `dirty_bytes_max`).
    pub(crate) fn mark_unsynced(&self, files: impl IntoIterator<Item = (u32, ExtentId)>) {
        let full = {
            let mut u = self.unsynced.lock();
            u.extend(files);
            u.len() >= UNSYNCED_FILES_MAX
        };
        if full {
            if let Err(e) = self.sync_pending() {
                tracing::error!("cannot make extent files durable: {e:#}");
            }
        }
    }

    /// The data barrier: every registered extent version gets a durable copy (see
    /// `barrier`); files on disks that are gone or failed are dropped. Fails if every disk
    /// holding some version failed to sync it; its files stay registered.
    pub(crate) fn sync_pending(&self) -> anyhow::Result<usize> {
        self.sync_barrier.run()
    }

    /// Commits every buffered write of every open file (unmount, periodic flush).
    pub fn flush_all(&self) -> FsResult<()> {
        let nodes: Vec<(u64, Arc<Node>)> = self
            .nodes
            .lock()
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let mut res = Ok(());
        for (ino, node) in nodes {
            let mut n = node.inner.lock();
            if let Err(e) = self.flush_node(ino, &node, &mut n) {
                res = Err(e);
            }
        }
        res
    }

    /// Removes an extent file once the metadata batch that stopped naming it (written
    /// before this call) is durable: in the background when the reaper has room, else now,
    /// after a WAL sync.
    pub(crate) fn reap(&self, disk: u32, id: ExtentId) {
        let r = Reap {
            disk,
            id,
            seq: self.meta.last_seq(),
            since: std::time::Instant::now(),
        };
        if self.reap_rx.lock().is_some() {
            // No reaper thread (offline tools): remove now.
            self.reap_now(&r);
            return;
        }
        self.reap_pending.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.reap_tx.try_send(r) {
            let (std::sync::mpsc::TrySendError::Full(r)
            | std::sync::mpsc::TrySendError::Disconnected(r)) = e;
            self.reap_now(&r);
            self.reap_pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Removes a file now, syncing the WAL first if its batch may not be durable yet.
    fn reap_now(&self, r: &Reap) {
        if r.seq > self.meta.synced_seq() {
            if let Err(e) = self.meta.sync_wal() {
                // Keep the file: start-up cleanup removes it once nothing names it.
                tracing::error!("cannot sync metadata before removing a file: {e:#}");
                return;
            }
        }
        if let Some(d) = self.store.disk(r.disk) {
            self.store.remove_extent(&d, &r.id);
        }
    }

    /// Waits until queued file removals are done (before whole-pool checks).
    pub fn drain_reaper(&self) {
        if self.reap_pending.load(Ordering::SeqCst) > 0 {
            // Removals wait for their batches to be durable.
            if let Err(e) = self.sync_all() {
                tracing::warn!("drain_reaper: sync failed: errno {}", e.0);
            }
        }
        for _ in 0..10_000 {
            if self.reap_pending.load(Ordering::SeqCst) == 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn is_open(&self, ino: u64) -> bool {
        self.nodes.lock().contains_key(&ino)
    }

    /// Replaces (or with None deletes) an extent record only if it still has version
    /// `expect`: background work (repair, fsck, later migration) never undoes a newer write.
    pub fn cas_extent(
        &self,
        ino: u64,
        index: u64,
        expect: u64,
        rec: Option<&ExtentRec>,
    ) -> FsResult<bool> {
        let _g = self.ns.lock();
        let node = self.node(ino);
        let mut guard = node.as_ref().map(|n| n.inner.lock());
        let Some(cur) = self
            .meta
            .extent(ino, index)?
            .filter(|c| c.version == expect)
        else {
            return Ok(false);
        };
        let mut b = self.meta.batch();
        match rec {
            Some(r) => {
                // Copies this record adds (fsck's restored replicas): durable before it is.
                let added = extent_files(ino, index, r).filter(|(d, _)| !cur.replicas.contains(d));
                self.mark_unsynced(added.collect::<Vec<_>>());
                b.put_extent(ino, index, r)
            }
            None => b.del_extent(ino, index),
        }
        self.meta.write(b)?;
        if let Some(g) = guard.as_mut() {
            g.extents.remove(&index);
        }
        Ok(true)
    }

    /// Sets a disk's state in memory and in the disk table (survives restarts once the WAL is
    /// synced: the next fsync or recovery commit, which the WAL orders after it).
    pub fn set_disk_state(&self, id: u32, state: DiskState) -> anyhow::Result<()> {
        let d = self
            .store
            .disk(id)
            .ok_or_else(|| anyhow::anyhow!("no disk {id} in this pool"))?;
        let mut b = self.meta.batch();
        b.put_disk(&crate::meta::DiskRec {
            id,
            path: d.root.to_string_lossy().into_owned(),
            state,
        });
        self.meta.write(b)?;
        d.set_state(state);
        if !state.readable() {
            self.store.drop_fds(id);
        }
        Ok(())
    }

    /// Marks a disk failed (reads and writes bypass it from now on), persistently.
    pub fn fail_disk(&self, id: u32) {
        if let Err(e) = self.set_disk_state(id, DiskState::Failed) {
            tracing::error!(disk = id, "cannot persist failed state: {e:#}");
            if let Some(d) = self.store.disk(id) {
                d.set_state(DiskState::Failed);
                self.store.drop_fds(id);
            }
        }
    }

    /// Commits `changes` to the placement sink, if there is one, before they are written
    /// here; false when it refused any of them (all or nothing).
    pub(crate) fn placements_to_sink(&self, changes: &[(u32, ShardRec)]) -> FsResult<bool> {
        let Some(sink) = self.placement_sink.get() else {
            return Ok(true);
        };
        let applied = sink.commit(changes).map_err(|e| {
            tracing::error!("placement change refused by the cluster map: {e:#}");
            Errno::EIO
        })?;
        Ok(applied.iter().all(|ok| *ok))
    }

    /// Makes `sink` the truth for placements (once, before the pool serves).
    pub fn set_placement_sink(&self, sink: Arc<dyn PlacementSink>) {
        assert!(
            self.placement_sink.set(sink).is_ok(),
            "placement sink set twice"
        );
    }

    /// Changes a shard's placement if its epoch is still `expect_epoch`; raises the epoch and
    /// keeps the disk -> shard index in step, in one batch. Returns the new epoch.
    pub fn set_placement(&self, shard: u32, expect_epoch: u64, disks: Vec<u32>) -> FsResult<u64> {
        self.set_placements(vec![(shard, expect_epoch, disks)])?
            .pop()
            .expect("one result per change")
    }

    /// Several placement changes in one metadata batch (not synced: the WAL orders them
    /// before any extent commit that relies on them, and that commit's sync covers both).
    /// Each change is fenced by its expected epoch; returns per change the new epoch or
    /// ESTALE.
    pub fn set_placements(
        &self,
        changes: Vec<(u32, u64, Vec<u32>)>,
    ) -> FsResult<Vec<FsResult<u64>>> {
        let _g = self.placement_lock.lock();
        let mut b = self.meta.batch();
        let mut out = Vec::with_capacity(changes.len());
        let mut apply = Vec::new();
        let mut slots = Vec::new();
        for (shard, expect_epoch, disks) in changes {
            let old = self.shard(shard);
            if old.epoch != expect_epoch {
                out.push(Err(Errno::ESTALE));
                continue;
            }
            let mut seen = HashSet::new();
            assert!(
                disks.iter().all(|d| seen.insert(*d)),
                "two replicas of shard {shard} on one disk: {disks:?}"
            );
            let rec = ShardRec {
                epoch: old.epoch + 1,
                disks,
                class: old.class,
            };
            b.put_shard(shard, &rec);
            for d in &old.disks {
                if !rec.disks.contains(d) {
                    b.del_disk_shard(*d, shard);
                }
            }
            for d in &rec.disks {
                b.put_disk_shard(*d, shard);
            }
            slots.push(out.len());
            out.push(Ok(rec.epoch));
            apply.push((shard, rec));
        }
        if apply.is_empty() {
            return Ok(out);
        }
        if let Some(sink) = self.placement_sink.get() {
            // The map first: a crash between the two leaves the map ahead, which the next
            // open copies here; a change the map refuses is not made here either.
            let applied = sink.commit(&apply).map_err(|e| {
                tracing::error!("placement change refused by the cluster map: {e:#}");
                Errno::EIO
            })?;
            if applied.iter().any(|ok| !ok) {
                return self.set_placements_partly(apply, (&applied, &slots), out);
            }
        }
        self.meta.write(b)?;
        let mut t = self.shards.write();
        for (shard, rec) in apply {
            t[shard as usize] = rec;
        }
        Ok(out)
    }

    /// The changes of `set_placements` the sink applied (the others: ESTALE), written here.
    fn set_placements_partly(
        &self,
        apply: Vec<(u32, ShardRec)>,
        (applied, slots): (&[bool], &[usize]),
        mut out: Vec<FsResult<u64>>,
    ) -> FsResult<Vec<FsResult<u64>>> {
        let mut b = self.meta.batch();
        let mut keep = Vec::new();
        for (((shard, rec), ok), slot) in apply.into_iter().zip(applied).zip(slots) {
            if !ok {
                out[*slot] = Err(Errno::ESTALE);
                continue;
            }
            let old = self.shard(shard);
            for d in old.disks.iter().filter(|d| !rec.disks.contains(d)) {
                b.del_disk_shard(*d, shard);
            }
            for d in &rec.disks {
                b.put_disk_shard(*d, shard);
            }
            b.put_shard(shard, &rec);
            keep.push((shard, rec));
        }
        self.meta.write(b)?;
        let mut t = self.shards.write();
        for (shard, rec) in keep {
            t[shard as usize] = rec;
        }
        Ok(out)
    }

    /// The fencing checks of `commit_recovered`: Ok((record, shard)) when the copy may be
    /// committed, else the outcome.
    pub fn recovery_check(
        &self,
        ino: u64,
        index: u64,
        version: u64,
        epoch: u64,
        target: u32,
    ) -> FsResult<Result<(ExtentRec, ShardRec), RecoveryCommit>> {
        let Some(cur) = self.meta.extent(ino, index)? else {
            return Ok(Err(RecoveryCommit::Stale));
        };
        if cur.version != version {
            return Ok(Err(RecoveryCommit::Stale));
        }
        let shard = self.shard(cur.shard);
        if shard.epoch != epoch || !shard.disks.contains(&target) {
            return Ok(Err(RecoveryCommit::Fenced));
        }
        if cur.replicas.contains(&target) {
            return Ok(Err(RecoveryCommit::AlreadyThere));
        }
        Ok(Ok((cur, shard)))
    }

    /// Commits a recovered copy of an extent on `target`, fenced: refused when the extent
    /// changed version, or its shard's epoch is no longer `epoch`. `install` puts the file in
    /// place once the checks pass (without filesystem locks; the checks run again before
    /// the commit). Replicas no longer in the placement are dropped once the placement's
    /// disks all hold a copy. Returns what happened.
    pub fn commit_recovered(
        &self,
        ino: u64,
        index: u64,
        version: u64,
        epoch: u64,
        target: u32,
        install: impl FnOnce() -> std::io::Result<()>,
    ) -> FsResult<RecoveryCommit> {
        // Recovery installs one at a time; foreground I/O never waits on this lock, and no
        // filesystem lock is held across `install` (a rename may wait seconds for a journal
        // commit on a busy disk).
        let _i = self.install_lock.lock();
        if let Err(outcome) = self.recovery_check(ino, index, version, epoch, target)? {
            return Ok(outcome);
        }
        if let Err(e) = install() {
            tracing::warn!(
                disk = target,
                ino,
                index,
                "cannot install recovered copy: {e}"
            );
            return Err(Errno::EIO);
        }
        self.commit_installed(ino, index, version, epoch, target)
    }

    /// Held by a batch of recovery installs (`recovery_check`, install, `commit_installed`).
    pub fn recovery_guard(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.install_lock.lock()
    }

    /// Second half of `commit_recovered` for a copy already installed on `target`, with
    /// `recovery_guard` held since its check: re-checks under the locks, then commits, or
    /// removes the installed copy when the extent or the shard moved on meanwhile.
    pub fn commit_installed(
        &self,
        ino: u64,
        index: u64,
        version: u64,
        epoch: u64,
        target: u32,
    ) -> FsResult<RecoveryCommit> {
        let _p = self.placement_lock.lock();
        let _g = self.ns.lock();
        let node = self.node(ino);
        let mut guard = node.as_ref().map(|n| n.inner.lock());
        let id = ExtentId {
            ino,
            index,
            version,
        };
        let (cur, shard) = match self.recovery_check(ino, index, version, epoch, target)? {
            Ok(x) => x,
            Err(outcome) => {
                // Changed while the copy was installed: no record names this copy (the check
                // says the target is not a replica), and other installs wait for `_i`.
                if let Some(d) = self.store.disk(target) {
                    self.store.remove_extent(&d, &id);
                }
                return Ok(outcome);
            }
        };
        let (rec, dropped) = self.with_replica(&cur, &shard.disks, target);
        let mut b = self.meta.batch();
        b.put_extent(ino, index, &rec);
        // Callers sync their copies first; registering keeps that order if one does not.
        self.mark_unsynced([(target, id)]);
        self.meta.write(b)?;
        if let Some(g) = guard.as_mut() {
            g.extents.remove(&index);
        }
        for d in dropped {
            // Copies on readable disks that left the placement (drain): remove them.
            if self.store.disk(d).is_some_and(|x| x.is_up()) {
                self.reap(d, id);
            }
        }
        Ok(RecoveryCommit::Done)
    }

    /// `cur` with disk `id` among its replicas (recovery, `disk online`): once `placement`
    /// holds enough readable copies, copies outside it are dropped (returned, to be reaped
    /// after the record is written); until then every readable copy stays.
    pub(crate) fn with_replica(
        &self,
        cur: &ExtentRec,
        placement: &[u32],
        id: u32,
    ) -> (ExtentRec, Vec<u32>) {
        let readable = self.store.readable(&cur.replicas);
        let mut placed: Vec<u32> = readable
            .iter()
            .copied()
            .filter(|r| placement.contains(r))
            .collect();
        if !placed.contains(&id) {
            placed.push(id);
        }
        let complete = placed.len() >= placement.len().min(self.cfg.replicas as usize);
        let (replicas, dropped) = if complete {
            let dropped = cur
                .replicas
                .iter()
                .copied()
                .filter(|r| !placed.contains(r))
                .collect();
            (placed, dropped)
        } else {
            let mut r = readable;
            if !r.contains(&id) {
                r.push(id);
            }
            (r, Vec::new())
        };
        (
            ExtentRec {
                replicas,
                ..cur.clone()
            },
            dropped,
        )
    }
}

/// The files of one extent version: (disk, id) per replica.
pub(crate) fn extent_files(
    ino: u64,
    index: u64,
    rec: &ExtentRec,
) -> impl Iterator<Item = (u32, ExtentId)> + '_ {
    let id = ExtentId {
        ino,
        index,
        version: rec.version,
    };
    rec.replicas.iter().map(move |d| (*d, id))
}

/// The reaper thread: removes files whose removal is durable in metadata, syncing the WAL
/// itself when a removal has waited `REAP_SYNC_DELAY` (or its backlog is full).
fn reaper(
    fs: &std::sync::Weak<Fs>,
    rx: &Receiver<Reap>,
    waiting: &mut std::collections::VecDeque<Reap>,
) {
    loop {
        let mut closed = false;
        while waiting.len() < REAP_QUEUE_MAX {
            match rx.try_recv() {
                Ok(r) => waiting.push_back(r),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if waiting.is_empty() {
            if closed {
                return;
            }
            // Polled, not blocked on: a blocked receiver costs the request path a futex
            // wake per removed file.
            std::thread::sleep(REAP_POLL);
            continue;
        }
        let Some(fs) = fs.upgrade() else { return };
        crate::supervise::fault_point("reaper");
        let due = waiting
            .front()
            .is_some_and(|r| r.since.elapsed() >= REAP_SYNC_DELAY)
            || waiting.len() >= REAP_QUEUE_MAX;
        let newest = waiting.iter().map(|r| r.seq).max().unwrap_or(0);
        if due && newest > fs.meta.synced_seq() {
            if let Err(e) = fs.meta.sync_wal() {
                tracing::error!("reaper: cannot sync metadata: {e:#}");
            }
        }
        let synced = fs.meta.synced_seq();
        let before = waiting.len();
        waiting.retain(|r| {
            if r.seq > synced {
                return true;
            }
            if let Some(d) = fs.store.disk(r.disk) {
                fs.store.remove_extent(&d, &r.id);
            }
            false
        });
        let removed = before - waiting.len();
        fs.reap_pending.fetch_sub(removed as u64, Ordering::SeqCst);
        if removed == 0 {
            drop(fs);
            std::thread::sleep(REAP_POLL);
        }
    }
}

/// The outcome of `Fs::commit_recovered`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryCommit {
    Done,
    /// The target already holds a committed copy (another agent got there first).
    AlreadyThere,
    /// The extent was rewritten or deleted meanwhile: nothing to recover.
    Stale,
    /// The shard's placement changed since the plan was made (stale epoch).
    Fenced,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct FsStat {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub files_free: u64,
}

#[cfg(test)]
mod tests;
