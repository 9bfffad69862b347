//! All metadata lives in RocksDB, one column family per kind of record.
//!
//! Keys are big-endian so that iteration order is numeric order: a file's extents come out by
//! index, a directory's entries by name cookie. Values are postcard-encoded records. Every change
//! that must be atomic (a rename, an extent commit with its inode size) goes in one `Batch`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context};
use parking_lot::Mutex;
use rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

pub const CF_CONFIG: &str = "config";
pub const CF_INODES: &str = "inodes";
pub const CF_DIRENTS: &str = "dirents";
pub const CF_EXTENTS: &str = "extents";
pub const CF_SHARDS: &str = "shards";
pub const CF_DISK_SHARDS: &str = "disk_shards";
pub const CF_DISKS: &str = "disks";
pub const CF_XATTRS: &str = "xattrs";
pub const CF_ORPHANS: &str = "orphans";
/// Access-analyzer summaries (heat per extent, co-access pairs, hour-of-day profiles).
pub const CF_ACCESS: &str = "access";
/// Pending shard moves of a re-sharding migration: (ino, index) -> target shard. A move's key
/// is deleted in the batch that commits it, so a restart resumes where the migration stopped.
pub const CF_MOVES: &str = "moves";
const ALL_CFS: [&str; 11] = [
    CF_CONFIG,
    CF_INODES,
    CF_DIRENTS,
    CF_EXTENTS,
    CF_SHARDS,
    CF_DISK_SHARDS,
    CF_DISKS,
    CF_XATTRS,
    CF_ORPHANS,
    CF_ACCESS,
    CF_MOVES,
];

pub const ROOT_INO: u64 = 1;
/// Counters are reserved in blocks so that a crash never hands out a number twice, while the
/// common path does not write the counter at all.
const COUNTER_BLOCK: u64 = 1 << 20;
/// How long a write waits for RocksDB to recover from a full metadata filesystem (it
/// retries every 5 s: two tries).
const FULL_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(12);
/// A WAL sync runs barrier passes outside the gate until one finds at most this many files
/// (or `BARRIER_PASSES_MAX` have run): the pass under the gate is left with few.
const GATED_FILES_MAX: usize = 64;
const BARRIER_PASSES_MAX: usize = 4;
/// A key never written: deleting it is the probe write that shows RocksDB takes writes again.
const SPACE_PROBE_KEY: &[u8] = b"space-probe";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl Kind {
    pub fn from_mode(mode: u32) -> Option<Kind> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => Kind::File,
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFLNK => Kind::Symlink,
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFSOCK => Kind::Socket,
            libc::S_IFCHR => Kind::CharDev,
            libc::S_IFBLK => Kind::BlockDev,
            _ => return None,
        })
    }
}

/// The pool's on-disk format, under `FORMAT_KEY` in `config` (4 bytes, big-endian) and in
/// every disk label. Pools made before formats were numbered have neither: `FORMAT_LEGACY`.
/// Format 2 adds only the numbers (and private file modes), so its records decode as 1's did.
pub const FORMAT_VERSION: u32 = 2;
pub const FORMAT_LEGACY: u32 = 1;
pub const FORMAT_KEY: &[u8] = b"format";

/// Pool-wide settings fixed at `init`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PoolConfig {
    pub pool_id: String,
    pub replicas: u32,
    pub extent_size: u64,
    /// Checksum block size; a read verifies only the blocks it touches.
    pub block_size: u32,
    pub shard_count: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InodeRec {
    pub kind: Kind,
    /// Permission bits including suid/sgid/sticky (no file type bits).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub crtime_ns: i64,
    pub rdev: u32,
    /// Parent directory, kept for directories only (they have exactly one).
    pub parent: u64,
    pub symlink: Option<Vec<u8>>,
    /// Bytes of committed extent data (one copy), for `st_blocks`.
    pub alloc: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ExtentRec {
    /// Unique per write of this extent; names the extent files, so a new version never
    /// overwrites the old one in place.
    pub version: u64,
    /// Valid bytes in the extent file (at most the extent size); bytes past it read as zeros.
    pub len: u32,
    pub shard: u32,
    /// Disks that hold a complete copy of this version.
    pub replicas: Vec<u32>,
    /// blake3 of each checksum block of the extent's data.
    pub sums: Vec<[u8; 32]>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardRec {
    /// Raised whenever `disks` changes; commits under an older epoch are refused.
    pub epoch: u64,
    pub disks: Vec<u32>,
    /// What the sharding engine keeps in this shard.
    pub class: ShardClass,
}

/// Part of the metadata format (postcard, by variant index); defined beside the placement
/// rule that reads it.
pub use crate::placement::ShardClass;

/// Part of the metadata format (postcard, by variant index) and of the cluster map (JSON, by
/// name); defined beside the placement rule, where both crates reach it.
pub use crate::placement::DiskState;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DiskRec {
    pub id: u32,
    pub path: String,
    pub state: DiskState,
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("in-memory record always encodes")
}

pub fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> anyhow::Result<T> {
    postcard::from_bytes(bytes).with_context(|| format!("corrupt {what} record in metadata"))
}

pub fn ino_key(ino: u64) -> [u8; 8] {
    ino.to_be_bytes()
}

pub fn extent_key(ino: u64, index: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&ino.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

/// Directory entries are keyed by (parent, cookie, name). The cookie is a stable hash of the
/// name, so a readdir offset stays valid while other entries come and go.
pub fn name_cookie(name: &[u8]) -> u64 {
    let h = blake3::hash(name);
    let v = u64::from_be_bytes(h.as_bytes()[..8].try_into().unwrap());
    // Offsets 0..=2 are start, "." and "..".
    (v >> 2) + 3
}

pub fn dirent_key(parent: u64, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(16 + name.len());
    k.extend_from_slice(&parent.to_be_bytes());
    k.extend_from_slice(&name_cookie(name).to_be_bytes());
    k.extend_from_slice(name);
    k
}

pub fn xattr_key(ino: u64, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + name.len());
    k.extend_from_slice(&ino.to_be_bytes());
    k.extend_from_slice(name);
    k
}

pub fn disk_shard_key(disk: u32, shard: u32) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&disk.to_be_bytes());
    k[4..].copy_from_slice(&shard.to_be_bytes());
    k
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirentVal {
    pub ino: u64,
    pub kind: Kind,
}

pub struct DirEntry {
    pub cookie: u64,
    pub name: Vec<u8>,
    pub ino: u64,
    pub kind: Kind,
}

pub struct Meta {
    db: DB,
    next_ino: AtomicU64,
    next_version: AtomicU64,
    /// The counters' durable reservations: no number at or above one is handed out.
    ino_durable: AtomicU64,
    version_durable: AtomicU64,
    reserve_lock: Mutex<()>,
    /// Highest WAL sequence known durable (every batch at or below it survives a power cut),
    /// here and, while one is named, on the standby metadata host.
    synced_seq: AtomicU64,
    /// Highest WAL sequence durable here (the standby is sent batches up to it).
    local_synced: AtomicU64,
    /// Waits until the standby holds a sequence number (see `set_replica`).
    replica: parking_lot::RwLock<Option<ReplicaWait>>,
    /// Written batches kept for the standby's shipper (from `start_tap`).
    tap: std::sync::OnceLock<crate::waltap::WalTap>,
    /// Makes the data files named by written batches durable; runs before every WAL sync, so
    /// durable metadata never names an extent file whose bytes are not durable.
    barrier: parking_lot::RwLock<Option<DataBarrier>>,
    /// Taken shared by every batch write and exclusively by a WAL sync between its last
    /// barrier and the sync, so no batch slips in whose files the barrier did not see.
    gate: parking_lot::RwLock<()>,
    /// The metadata filesystem's free space and the reserve that lets frees through when
    /// it is full.
    space: crate::metaspace::MetaSpace,
}

/// See `Meta::set_barrier`. Returns how many files it made durable.
pub type DataBarrier = Box<dyn Fn() -> anyhow::Result<usize> + Send + Sync>;
/// See `Meta::set_replica`.
pub type ReplicaWait = Box<dyn Fn(u64) -> anyhow::Result<()> + Send + Sync>;

/// A set of changes applied atomically by `Meta::write`.
pub struct Batch<'a> {
    meta: &'a Meta,
    wb: WriteBatch,
}

impl Batch<'_> {
    fn put(&mut self, cf: &str, k: &[u8], v: &[u8]) {
        let cf = self.meta.cf(cf);
        self.wb.put_cf(cf, k, v);
    }
    fn del(&mut self, cf: &str, k: &[u8]) {
        let cf = self.meta.cf(cf);
        self.wb.delete_cf(cf, k);
    }
    pub fn put_inode(&mut self, ino: u64, rec: &InodeRec) {
        self.put(CF_INODES, &ino_key(ino), &encode(rec));
    }
    pub fn del_inode(&mut self, ino: u64) {
        self.del(CF_INODES, &ino_key(ino));
    }
    pub fn put_dirent(&mut self, parent: u64, name: &[u8], ino: u64, kind: Kind) {
        self.put(
            CF_DIRENTS,
            &dirent_key(parent, name),
            &encode(&DirentVal { ino, kind }),
        );
    }
    pub fn del_dirent(&mut self, parent: u64, name: &[u8]) {
        self.del(CF_DIRENTS, &dirent_key(parent, name));
    }
    pub fn put_extent(&mut self, ino: u64, index: u64, rec: &ExtentRec) {
        assert!(
            !rec.replicas.is_empty(),
            "an extent with no replica must not be committed"
        );
        self.put(CF_EXTENTS, &extent_key(ino, index), &encode(rec));
    }
    pub fn del_extent(&mut self, ino: u64, index: u64) {
        self.del(CF_EXTENTS, &extent_key(ino, index));
    }
    pub fn put_xattr(&mut self, ino: u64, name: &[u8], value: &[u8]) {
        self.put(CF_XATTRS, &xattr_key(ino, name), value);
    }
    pub fn del_xattr(&mut self, ino: u64, name: &[u8]) {
        self.del(CF_XATTRS, &xattr_key(ino, name));
    }
    pub fn put_orphan(&mut self, ino: u64) {
        self.put(CF_ORPHANS, &ino_key(ino), &[]);
    }
    pub fn del_orphan(&mut self, ino: u64) {
        self.del(CF_ORPHANS, &ino_key(ino));
    }
    pub fn put_shard(&mut self, id: u32, rec: &ShardRec) {
        self.put(CF_SHARDS, &id.to_be_bytes(), &encode(rec));
    }
    pub fn put_disk_shard(&mut self, disk: u32, shard: u32) {
        self.put(CF_DISK_SHARDS, &disk_shard_key(disk, shard), &[]);
    }
    pub fn del_disk_shard(&mut self, disk: u32, shard: u32) {
        self.del(CF_DISK_SHARDS, &disk_shard_key(disk, shard));
    }
    pub fn put_disk(&mut self, rec: &DiskRec) {
        self.put(CF_DISKS, &rec.id.to_be_bytes(), &encode(rec));
    }
    pub fn put_raw(&mut self, cf: &str, k: &[u8], v: &[u8]) {
        self.put(cf, k, v);
    }
    pub fn del_raw(&mut self, cf: &str, k: &[u8]) {
        self.del(cf, k);
    }
    pub fn put_move(&mut self, ino: u64, index: u64, to_shard: u32) {
        self.put(CF_MOVES, &extent_key(ino, index), &to_shard.to_be_bytes());
    }
    pub fn del_move(&mut self, ino: u64, index: u64) {
        self.del(CF_MOVES, &extent_key(ino, index));
    }
    pub fn put_config(&mut self, cfg: &PoolConfig) {
        self.put(CF_CONFIG, b"pool", &encode(cfg));
    }
    pub fn is_empty(&self) -> bool {
        self.wb.is_empty()
    }
}

fn read_format(db: &DB) -> anyhow::Result<u32> {
    let cf = db.cf_handle(CF_CONFIG).context("no config column family")?;
    match db.get_cf(cf, FORMAT_KEY)? {
        None => Ok(FORMAT_LEGACY),
        Some(v) => Ok(u32::from_be_bytes(
            v.as_slice().try_into().context("corrupt format record")?,
        )),
    }
}

/// The metadata database of `dir` opened as it is, with the pool's options and column
/// families, for a standby's copy (`standby::Follower`): no counters, no writes.
pub(crate) fn open_raw(dir: &Path) -> anyhow::Result<DB> {
    let sizes = crate::metaspace::Sizes::of(dir);
    let mut opts = db_options(&sizes);
    opts.create_if_missing(false);
    let cfs = ALL_CFS
        .iter()
        .chain([&rocksdb::DEFAULT_COLUMN_FAMILY_NAME])
        .map(|n| ColumnFamilyDescriptor::new(*n, db_options(&sizes)));
    DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| open_error(dir, &e))
}

/// RocksDB's open error in the user's terms: in use, no space, or what it said.
fn open_error(dir: &Path, e: &rocksdb::Error) -> anyhow::Error {
    let msg = e.to_string();
    if msg.contains("lock") {
        anyhow::anyhow!(
            "{}: metadata is in use by another process (pool mounted?): {msg}",
            dir.display()
        )
    } else if msg.contains("No space left on device") {
        anyhow::anyhow!("{}: {msg}", full_no_reserve(dir))
    } else {
        anyhow::anyhow!("{}: cannot open metadata: {msg}", dir.display())
    }
}

/// What opening a pool on a full metadata filesystem with its reserve used up says.
fn full_no_reserve(dir: &Path) -> String {
    format!(
        "{}: cannot open metadata: its filesystem is full (and no reserve is left): free space on it, then try again",
        dir.display()
    )
}

fn db_options(sizes: &crate::metaspace::Sizes) -> Options {
    // No preallocation: it reserves over a write buffer's worth per WAL, which a small
    // metadata filesystem cannot hold, and which a partly failed fallocate leaves allocated
    // when the filesystem fills. (rust-rocksdb has no setter: the options string. It is
    // applied first, since it resets the other column family options.)
    let mut o = Options::default()
        .get_options_from_string("allow_fallocate=false")
        .expect("a valid options string");
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    // Bounded memory: small write buffers, a capped number of them. Smaller still on a small
    // metadata filesystem: RocksDB resumes after ENOSPC only with a write buffer's worth
    // free, which the released reserve must give it.
    o.set_write_buffer_size(sizes.write_buffer_bytes as usize);
    o.set_max_write_buffer_number(3);
    o.set_max_background_jobs(2);
    o.set_keep_log_file_num(4);
    o.set_max_log_file_size(sizes.log_file_bytes as usize);
    o
}

impl Meta {
    /// Opens the metadata store of an existing pool (or creates an empty one when `create`).
    pub fn open(dir: &Path, create: bool) -> anyhow::Result<Meta> {
        if !create && !dir.join("CURRENT").exists() {
            bail!(
                "{}: no foreshard metadata here (not a pool?)",
                dir.display()
            );
        }
        let sizes = crate::metaspace::Sizes::of(dir);
        // Before RocksDB's open, which may flush what its WAL replays: on a full filesystem
        // that needs the reserve released.
        let space = crate::metaspace::MetaSpace::open(dir, &sizes);
        let mut opts = db_options(&sizes);
        if !create {
            opts.create_if_missing(false);
        }
        // The unused default column family too: rust-rocksdb would open it with RocksDB's
        // defaults (64 MiB write buffers), and RocksDB's resume after ENOSPC waits for the
        // largest write buffer's worth of free space.
        let cfs = ALL_CFS
            .iter()
            .chain([&rocksdb::DEFAULT_COLUMN_FAMILY_NAME])
            .map(|n| ColumnFamilyDescriptor::new(*n, db_options(&sizes)));
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| open_error(dir, &e))?;
        // Before any write (the counters below): a newer format is left exactly as it is.
        let format = read_format(&db)?;
        if format > FORMAT_VERSION {
            bail!(
                "{}: pool format {format} was made by a newer foreshard (this one reads formats up to {FORMAT_VERSION}); use that newer version",
                dir.display()
            );
        }
        let meta = Meta {
            db,
            next_ino: AtomicU64::new(0),
            next_version: AtomicU64::new(0),
            ino_durable: AtomicU64::new(0),
            version_durable: AtomicU64::new(0),
            reserve_lock: Mutex::new(()),
            synced_seq: AtomicU64::new(0),
            local_synced: AtomicU64::new(0),
            replica: parking_lot::RwLock::new(None),
            tap: std::sync::OnceLock::new(),
            barrier: parking_lot::RwLock::new(None),
            gate: parking_lot::RwLock::new(()),
            space,
        };

        meta.reserve_counters(dir)?;
        Ok(meta)
    }

    /// Reserves the next block of inode numbers and extent versions, synced.
    fn reserve_counters(&self, dir: &Path) -> anyhow::Result<()> {
        let meta = self;
        let ino = meta.counter("ino_reserved")?.max(ROOT_INO + 1);
        let ver = meta.counter("version_reserved")?.max(1);
        meta.next_ino.store(ino, Ordering::SeqCst);
        meta.next_version.store(ver, Ordering::SeqCst);
        // Everything below the reservation may have been handed out before a crash. The
        // counter writes sync the WAL, so whatever recovery replayed from it (maybe only in
        // the page cache after a killed daemon) is durable before anyone acts on it:
        // start-up cleanup deletes the files that this state no longer names.
        meta.set_counter("ino_reserved", ino + COUNTER_BLOCK)
            .and_then(|_| meta.set_counter("version_reserved", ver + COUNTER_BLOCK))
            .map_err(|e| {
                if crate::metaspace::is_no_space(&e) {
                    anyhow::anyhow!("{}: {e:#}", full_no_reserve(dir))
                } else {
                    e
                }
            })?;
        meta.ino_durable
            .store(ino + COUNTER_BLOCK, Ordering::SeqCst);
        meta.version_durable
            .store(ver + COUNTER_BLOCK, Ordering::SeqCst);
        Ok(())
    }

    /// The pool's on-disk format (`FORMAT_LEGACY` when the key is absent).
    pub fn format(&self) -> anyhow::Result<u32> {
        read_format(&self.db)
    }

    /// Records the pool's format, synced (the last step of `foreshard upgrade`).
    pub fn set_format(&self, v: u32) -> anyhow::Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .put_cf_opt(self.cf(CF_CONFIG), FORMAT_KEY, v.to_be_bytes(), &wo)?;
        Ok(())
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    fn counter(&self, name: &str) -> anyhow::Result<u64> {
        match self.db.get_cf(self.cf(CF_CONFIG), name.as_bytes())? {
            None => Ok(0),
            Some(v) => Ok(u64::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .with_context(|| format!("corrupt counter {name}"))?,
            )),
        }
    }

    fn set_counter(&self, name: &str, v: u64) -> anyhow::Result<()> {
        let mut b = self.batch();
        b.put_raw(CF_CONFIG, name.as_bytes(), &v.to_be_bytes());
        self.write(b)?;
        // A synced write syncs the whole WAL: it goes through the data barrier like any sync.
        self.sync_wal()
    }

    /// Hands out the next number of a counter. The reservation is moved on, durably, while
    /// half a block is still left, so one failed reservation (a full metadata disk) costs
    /// nothing; a number past the durable reservation is never handed out.
    fn alloc(&self, ctr: &AtomicU64, durable: &AtomicU64, name: &str) -> anyhow::Result<u64> {
        let v = ctr.fetch_add(1, Ordering::SeqCst);
        if v + COUNTER_BLOCK / 2 >= durable.load(Ordering::SeqCst) {
            let _g = self.reserve_lock.lock();
            if v + COUNTER_BLOCK / 2 >= durable.load(Ordering::SeqCst) {
                let next = v + 2 * COUNTER_BLOCK;
                match self.set_counter(name, next) {
                    Ok(()) => durable.store(next, Ordering::SeqCst),
                    Err(e) => tracing::error!("cannot persist counter {name}: {e:#}"),
                }
            }
        }
        if v >= durable.load(Ordering::SeqCst) {
            bail!("counter {name}: no durable reservation for {v}");
        }
        Ok(v)
    }

    pub fn alloc_ino(&self) -> anyhow::Result<u64> {
        self.alloc(&self.next_ino, &self.ino_durable, "ino_reserved")
    }

    pub fn alloc_version(&self) -> anyhow::Result<u64> {
        self.alloc(
            &self.next_version,
            &self.version_durable,
            "version_reserved",
        )
    }

    pub fn batch(&self) -> Batch<'_> {
        Batch {
            meta: self,
            wb: WriteBatch::default(),
        }
    }

    /// Applies a batch atomically. Not synced: `sync_wal` makes it durable (fsync path).
    /// Data files the batch names must be registered with the barrier's owner before.
    /// While the metadata filesystem is full a failed write waits (bounded) for RocksDB to
    /// recover into the released reserve (it retries every 5 s): requests that add
    /// metadata are refused before they get here, so what waits frees space (`rm`).
    pub fn write(&self, b: Batch<'_>) -> anyhow::Result<()> {
        let again = self.space.full().then(|| b.wb.data().to_vec());
        let r = self.write_once(b.wb);
        let Some(data) = again else {
            return r;
        };
        let start = std::time::Instant::now();
        let mut r = r;
        while r.as_ref().is_err_and(crate::metaspace::is_no_space)
            && start.elapsed() < FULL_WAIT_MAX
        {
            std::thread::sleep(std::time::Duration::from_millis(100));
            r = self.write_once(WriteBatch::from_data(&data));
        }
        r
    }

    fn write_once(&self, wb: WriteBatch) -> anyhow::Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        let _g = self.gate.read();
        let Some(tap) = self.tap.get() else {
            let r = self.db.write_opt(wb, &wo);
            return self.check_space(r.map_err(anyhow::Error::from));
        };
        let (data, records) = (wb.data().to_vec(), wb.len() as u64);
        // One writer at a time: the last sequence number after the write is this batch's.
        let _one = tap.order.lock();
        let before = self.db.latest_sequence_number();
        let r = self.db.write_opt(wb, &wo);
        let last = self.db.latest_sequence_number();
        // Anything else that took sequence numbers: leave it to the WAL.
        if r.is_ok() && records > 0 && last - before == records {
            tap.push(before + 1, records, data);
        }
        self.check_space(r.map_err(anyhow::Error::from))
    }

    /// Keeps written batches in memory (at most `bytes_max`) for `batches_since`.
    pub fn start_tap(&self, bytes_max: usize) {
        let _ = self.tap.set(crate::waltap::WalTap::new(bytes_max));
    }

    /// `wal_since`, served from the batches kept in memory where it can.
    pub fn batches_since(
        &self,
        after: u64,
        upto: u64,
        mut f: impl FnMut(u64, &[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        let mut last = after;
        if let Some(tap) = self.tap.get() {
            for (first, records, data) in tap.since(after, upto) {
                f(first, &data)?;
                last = first + records - 1;
            }
        }
        if last < upto {
            last = self.wal_since(last, upto, f)?;
        }
        Ok(last)
    }

    /// Notes a full metadata filesystem behind a failed write (releases the reserve).
    fn check_space<T>(&self, r: anyhow::Result<T>) -> anyhow::Result<T> {
        if let Err(e) = &r {
            if crate::metaspace::is_no_space(e) {
                self.space.on_full("a metadata write failed");
            }
        }
        r
    }

    /// Whether requests that add metadata are refused (the metadata filesystem is full).
    pub fn space_full(&self) -> bool {
        self.space.is_full(|| {
            let mut b = self.batch();
            b.del_raw(CF_CONFIG, SPACE_PROBE_KEY);
            self.write_once(b.wb)
        })
    }

    pub fn space_status(&self) -> crate::metaspace::SpaceStatus {
        self.space.status()
    }

    /// Installs the data barrier (the open filesystem's pending extent files).
    pub fn set_barrier(&self, f: DataBarrier) {
        *self.barrier.write() = Some(f);
    }

    /// Makes every batch written so far durable, after the data files they name (barrier).
    pub fn sync_wal(&self) -> anyhow::Result<()> {
        let barrier = self.barrier.read();
        if let Some(b) = barrier.as_ref() {
            // Most pending files are synced here, with batches still flowing; passes again
            // while many were registered meanwhile, since the last pass holds up every
            // batch writer (a 140 ms pass there made overwrites stall as long).
            let mut passes = 1;
            while b()? > GATED_FILES_MAX && passes < BARRIER_PASSES_MAX {
                passes += 1;
            }
        }
        let w = self.gate.write();
        let seq = self.sync_gated(barrier.as_ref())?;
        // Writers go on while the standby acknowledges (a network round trip).
        drop(w);
        if let Some(wait) = self.replica.read().as_ref() {
            wait(seq)?;
        }
        self.synced_seq.fetch_max(seq, Ordering::SeqCst);
        Ok(())
    }

    /// Under the gate (no batch in flight): the files of batches written since the last
    /// barrier pass (few), then the WAL; returns the sequence number now durable here.
    fn sync_gated(&self, barrier: Option<&DataBarrier>) -> anyhow::Result<u64> {
        if let Some(b) = barrier {
            b()?;
        }
        let seq = self.db.latest_sequence_number();
        self.check_space(self.db.flush_wal(true).map_err(anyhow::Error::from))?;
        self.local_synced.fetch_max(seq, Ordering::SeqCst);
        Ok(seq)
    }

    /// Makes every WAL sync wait for `wait(seq)` after its own (the standby's ack, or its
    /// removal from the cluster map's `meta/sync`); an error fails the sync.
    pub fn set_replica(&self, wait: ReplicaWait) {
        *self.replica.write() = Some(wait);
    }

    /// Every batch at or below this sequence number is durable here (maybe not yet on the
    /// standby).
    pub fn local_synced_seq(&self) -> u64 {
        self.local_synced.load(Ordering::SeqCst)
    }

    /// A RocksDB checkpoint of the metadata in `dir` (hard links where it can), of a state
    /// whose batches are durable and whose named data files too (the barrier ran first).
    pub fn checkpoint(&self, dir: &Path) -> anyhow::Result<()> {
        let barrier = self.barrier.read();
        let _w = self.gate.write();
        self.sync_gated(barrier.as_ref())?;
        rocksdb::checkpoint::Checkpoint::new(&self.db)?
            .create_checkpoint(dir)
            .with_context(|| format!("metadata checkpoint in {}", dir.display()))
    }

    /// Calls `f(seq, batch)` for each batch after sequence number `after` that starts at or
    /// below `upto`, in order; returns the last sequence number handed over (`after` if
    /// none). Fails once the WAL holding `after + 1` is gone (the caller starts again
    /// from a checkpoint).
    fn wal_since(
        &self,
        after: u64,
        upto: u64,
        mut f: impl FnMut(u64, &[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        let mut last = after;
        for item in self.db.get_updates_since(after)? {
            let (seq, wb) = item?;
            if seq > upto {
                break;
            }
            if seq != last + 1 {
                bail!("metadata WAL: batch at {seq} after {last} (a gap: the WAL was recycled)");
            }
            f(seq, wb.data())?;
            last = seq + wb.len() as u64 - 1;
        }
        Ok(last)
    }

    /// The sequence number of the last batch written (durable or not).
    pub fn last_seq(&self) -> u64 {
        self.db.latest_sequence_number()
    }

    /// Every batch at or below this sequence number is durable.
    pub fn synced_seq(&self) -> u64 {
        self.synced_seq.load(Ordering::SeqCst)
    }

    fn get<T: DeserializeOwned>(&self, cf: &str, key: &[u8]) -> anyhow::Result<Option<T>> {
        match self.db.get_pinned_cf(self.cf(cf), key)? {
            None => Ok(None),
            Some(v) => Ok(Some(decode(cf, &v)?)),
        }
    }

    pub fn get_raw(&self, cf: &str, key: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    pub fn config(&self) -> anyhow::Result<Option<PoolConfig>> {
        self.get(CF_CONFIG, b"pool")
    }

    pub fn inode(&self, ino: u64) -> anyhow::Result<Option<InodeRec>> {
        self.get(CF_INODES, &ino_key(ino))
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> anyhow::Result<Option<DirentVal>> {
        self.get(CF_DIRENTS, &dirent_key(parent, name))
    }

    pub fn extent(&self, ino: u64, index: u64) -> anyhow::Result<Option<ExtentRec>> {
        self.get(CF_EXTENTS, &extent_key(ino, index))
    }

    pub fn xattr(&self, ino: u64, name: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(self.cf(CF_XATTRS), xattr_key(ino, name))?)
    }

    /// Calls `f` for each entry of `prefix` in key order, from `start` on, until it returns false.
    fn scan(
        &self,
        cf: &str,
        prefix: &[u8],
        start: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let it = self
            .db
            .iterator_cf(self.cf(cf), IteratorMode::From(start, Direction::Forward));
        for item in it {
            let (k, v) = item?;
            if !k.starts_with(prefix) || !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    /// Entries of `dir` whose cookie is at least `from_cookie`, in cookie order.
    pub fn read_dir(
        &self,
        dir: u64,
        from_cookie: u64,
        mut f: impl FnMut(DirEntry) -> bool,
    ) -> anyhow::Result<()> {
        let prefix = dir.to_be_bytes();
        let mut start = prefix.to_vec();
        start.extend_from_slice(&from_cookie.to_be_bytes());
        self.scan(CF_DIRENTS, &prefix, &start, |k, v| {
            let val: DirentVal = decode("dirent", v)?;
            let cookie = u64::from_be_bytes(k[8..16].try_into().unwrap());
            Ok(f(DirEntry {
                cookie,
                name: k[16..].to_vec(),
                ino: val.ino,
                kind: val.kind,
            }))
        })
    }

    pub fn dir_is_empty(&self, dir: u64) -> anyhow::Result<bool> {
        let mut empty = true;
        self.read_dir(dir, 0, |_| {
            empty = false;
            false
        })?;
        Ok(empty)
    }

    /// Extents of `ino` with index >= `from`, in index order.
    pub fn extents_of(
        &self,
        ino: u64,
        from: u64,
        mut f: impl FnMut(u64, ExtentRec) -> bool,
    ) -> anyhow::Result<()> {
        let prefix = ino.to_be_bytes();
        self.scan(CF_EXTENTS, &prefix, &extent_key(ino, from), |k, v| {
            let index = u64::from_be_bytes(k[8..16].try_into().unwrap());
            Ok(f(index, decode("extent", v)?))
        })
    }

    pub fn xattrs_of(&self, ino: u64) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let prefix = ino.to_be_bytes();
        let mut out = Vec::new();
        self.scan(CF_XATTRS, &prefix, &prefix, |k, v| {
            out.push((k[8..].to_vec(), v.to_vec()));
            Ok(true)
        })?;
        Ok(out)
    }

    /// A consistent view for whole-pool walks (fsck, status, shards).
    pub fn view(&self) -> View<'_> {
        View {
            meta: self,
            snap: self.db.snapshot(),
        }
    }

    pub fn all<T: DeserializeOwned>(&self, cf: &str) -> anyhow::Result<Vec<(Vec<u8>, T)>> {
        self.view().all(cf)
    }

    pub fn keys(&self, cf: &str) -> anyhow::Result<Vec<Vec<u8>>> {
        self.view().keys(cf)
    }

    pub fn each_raw(
        &self,
        cf: &str,
        f: impl FnMut(&[u8], &[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        self.view().each_raw(cf, f)
    }

    pub fn each_extent(&self, f: impl FnMut(u64, u64, ExtentRec)) -> anyhow::Result<()> {
        self.view().each_extent(f)
    }

    pub fn shards(&self) -> anyhow::Result<Vec<(u32, ShardRec)>> {
        Ok(self
            .all::<ShardRec>(CF_SHARDS)?
            .into_iter()
            .map(|(k, v)| (u32::from_be_bytes(k[..4].try_into().unwrap()), v))
            .collect())
    }

    pub fn disks(&self) -> anyhow::Result<Vec<DiskRec>> {
        Ok(self
            .all::<DiskRec>(CF_DISKS)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    pub fn shards_of_disk(&self, disk: u32) -> anyhow::Result<Vec<u32>> {
        let prefix = disk.to_be_bytes();
        let mut out = Vec::new();
        self.scan(CF_DISK_SHARDS, &prefix, &prefix, |k, _| {
            out.push(u32::from_be_bytes(k[4..8].try_into().unwrap()));
            Ok(true)
        })?;
        Ok(out)
    }
}

/// A read-only view of all metadata at one instant (a RocksDB snapshot), so a walk never sees
/// half of a concurrent change (fsck on a mounted pool).
pub struct View<'a> {
    meta: &'a Meta,
    snap: rocksdb::Snapshot<'a>,
}

impl View<'_> {
    fn iter(&self, cf: &str) -> rocksdb::DBIterator<'_> {
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_snapshot(&self.snap);
        self.meta
            .db
            .iterator_cf_opt(self.meta.cf(cf), ro, IteratorMode::Start)
    }

    /// Every record of a column family, decoded.
    pub fn all<T: DeserializeOwned>(&self, cf: &str) -> anyhow::Result<Vec<(Vec<u8>, T)>> {
        let mut out = Vec::new();
        for item in self.iter(cf) {
            let (k, v) = item?;
            out.push((k.to_vec(), decode(cf, &v)?));
        }
        Ok(out)
    }

    /// Every (key, value) of `cf`, unencoded, in key order.
    pub fn each_raw(
        &self,
        cf: &str,
        mut f: impl FnMut(&[u8], &[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        for item in self.iter(cf) {
            let (k, v) = item?;
            f(&k, &v)?;
        }
        Ok(())
    }

    pub fn keys(&self, cf: &str) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for item in self.iter(cf) {
            out.push(item?.0.to_vec());
        }
        Ok(out)
    }

    pub fn each_extent(&self, mut f: impl FnMut(u64, u64, ExtentRec)) -> anyhow::Result<()> {
        for item in self.iter(CF_EXTENTS) {
            let (k, v) = item?;
            let ino = u64::from_be_bytes(k[..8].try_into().unwrap());
            let index = u64::from_be_bytes(k[8..16].try_into().unwrap());
            f(ino, index, decode("extent", &v)?);
        }
        Ok(())
    }
}
