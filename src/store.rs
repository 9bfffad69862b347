//! Extent files on the backing disks, and their checksums.
//!
//! An extent version lives on each replica disk as `DISK/extents/BB/INO.INDEX.VERSION` (hex),
//! holding exactly the extent's valid bytes. Files are written once and never modified, except
//! by repair, which replaces a bad copy atomically (write a temp file, rename over it).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use lru::LruCache;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::bufmem;
use crate::durable;
use crate::meta::DiskState;
use crate::util::mono_us;

pub const LABEL_FILE: &str = "foreshard.label";
/// The health probe's file in each disk root.
pub const PROBE_FILE: &str = "foreshard.probe";
pub const EXTENT_DIR: &str = "extents";
/// Open backing files kept for reads; each costs one descriptor.
const FD_CACHE_ENTRIES_MAX: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExtentId {
    pub ino: u64,
    pub index: u64,
    pub version: u64,
}

impl ExtentId {
    fn file_name(&self) -> String {
        format!("{:x}.{:x}.{:x}", self.ino, self.index, self.version)
    }
    fn parse(name: &str) -> Option<ExtentId> {
        let mut it = name.split('.');
        let ino = u64::from_str_radix(it.next()?, 16).ok()?;
        let index = u64::from_str_radix(it.next()?, 16).ok()?;
        let version = u64::from_str_radix(it.next()?, 16).ok()?;
        if it.next().is_some() {
            return None;
        }
        Some(ExtentId {
            ino,
            index,
            version,
        })
    }
    fn bucket(&self) -> String {
        bucket_name(self.bucket_no())
    }
    fn bucket_no(&self) -> u16 {
        ((self.ino.wrapping_mul(31) ^ self.index) & 0xff) as u16
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Label {
    pub pool_id: String,
    pub disk_id: u32,
    /// On-disk format of the pool (`meta::FORMAT_VERSION`); labels written before formats
    /// were numbered have none and read as `FORMAT_LEGACY`.
    #[serde(default = "legacy_format")]
    pub format: u32,
}

fn legacy_format() -> u32 {
    crate::meta::FORMAT_LEGACY
}

impl Label {
    /// A label of the current format.
    pub fn new(pool_id: &str, disk_id: u32) -> Label {
        Label {
            pool_id: pool_id.to_string(),
            disk_id,
            format: crate::meta::FORMAT_VERSION,
        }
    }
}

/// Labels are a few dozen bytes; anything much larger is not ours.
const LABEL_BYTES_MAX: u64 = 64 * 1024;

pub fn read_label(root: &Path) -> anyhow::Result<Option<Label>> {
    let p = root.join(LABEL_FILE);
    let f = match open_plain(&p, false, false) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("{}: cannot read disk label", p.display()))
        }
    };
    let mut b = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(&f, LABEL_BYTES_MAX), &mut b)
        .with_context(|| format!("{}: cannot read disk label", p.display()))?;
    Ok(Some(serde_json::from_slice(&b).with_context(|| {
        format!("{}: corrupt disk label", p.display())
    })?))
}

/// Opens a file foreshard keeps in a disk root (probe, reservation, label) without following
/// a symlink, and refuses anything but a plain file with one link: whoever can write the root
/// must not make the daemon (root) overwrite a file elsewhere. New files are 0600.
pub fn open_plain(p: &Path, write: bool, create: bool) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(write)
        .create(create)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                io::Error::other(format!("{}: is a symlink; refused", p.display()))
            } else {
                e
            }
        })?;
    let md = f.metadata()?;
    if !md.is_file() || std::os::unix::fs::MetadataExt::nlink(&md) != 1 {
        return Err(io::Error::other(format!(
            "{}: not a plain file with one link; refused",
            p.display()
        )));
    }
    Ok(f)
}

/// Why other users could replace files in the disk root `root`, if they could: it is writable
/// by group or others, and not sticky with a trusted owner (root or us).
pub fn root_exposure(root: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let md = fs::metadata(root).ok()?;
    let mode = md.mode() & 0o7777;
    // SAFETY: geteuid cannot fail.
    let trusted_owner = md.uid() == 0 || md.uid() == unsafe { libc::geteuid() };
    let sticky_safe = mode & 0o1000 != 0 && trusted_owner;
    (mode & 0o022 != 0 && !sticky_safe)
        .then(|| format!("writable by other users (mode {mode:04o}; run chmod go-w on it)"))
}

/// Writes the label atomically: a fresh temp file (never through a symlink), fsync, rename,
/// then the directory's fsync.
pub fn write_label(root: &Path, label: &Label) -> anyhow::Result<()> {
    let tmp = root.join(format!("{LABEL_FILE}.tmp"));
    // A temp file left by a crash (or planted): unlinking removes the link, not its target.
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .with_context(|| format!("{}: cannot write label", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(label)?)?;
    f.sync_all()?;
    fs::rename(&tmp, root.join(LABEL_FILE))?;
    File::open(root)?.sync_all()?;
    let ext = root.join(EXTENT_DIR);
    if let Err(e) = fs::create_dir(&ext) {
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(e).with_context(|| format!("{}: cannot create", ext.display()));
        }
    }
    if !fs::symlink_metadata(&ext)?.is_dir() {
        bail!("{}: not a directory (a symlink?); refused", ext.display());
    }
    make_buckets(&ext).with_context(|| format!("{}: cannot create buckets", ext.display()))
}

/// Extent files are spread over this many bucket directories per disk (`ExtentId::bucket`).
const BUCKETS: u16 = 256;

fn bucket_name(n: u16) -> String {
    format!("{n:02x}")
}

/// Creates the bucket directories missing under a disk's `extents` directory and makes
/// their entries durable with one fsync, so that writes do not create them (a bucket made by
/// a write costs that write an fsync of `extents/`: a fresh pool's first 256 files per disk).
pub fn make_buckets(ext: &Path) -> io::Result<()> {
    let mut made = false;
    for b in 0..BUCKETS {
        match fs::create_dir(ext.join(bucket_name(b))) {
            Ok(()) => made = true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    if made {
        File::open(ext)?.sync_all()?;
    }
    Ok(())
}

/// Removes the (empty) bucket directories and the `extents` directory of a disk whose
/// labelling is rolled back; anything else is left alone.
pub fn remove_buckets(ext: &Path) {
    for b in 0..BUCKETS {
        let _ = fs::remove_dir(ext.join(bucket_name(b)));
    }
    let _ = fs::remove_dir(ext);
}

/// Alignment of O_DIRECT buffers, offsets and lengths (covers 512 B and 4 KiB logical blocks).
pub const DIRECT_ALIGN: usize = 4096;

/// Reads at least this long go around the page cache of the disk (see `read_verified_into`).
const DIRECT_READ_BYTES_MIN: usize = 256 << 10;

pub fn align_up(n: usize) -> usize {
    n.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN
}

/// True when O_DIRECT can move `buf` as it is: aligned address and length.
fn direct_capable(buf: &[u8]) -> bool {
    (buf.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN) && buf.len().is_multiple_of(DIRECT_ALIGN)
}

/// Page-aligned owned bytes, so O_DIRECT can read into or write from them. Derefs to its
/// `len` bytes; the allocation is rounded up to `DIRECT_ALIGN` and the bytes past `len` are
/// zeros.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    cap: usize,
    /// From `bufmem` (large buffers), else from the heap.
    mapped: bool,
}

// SAFETY: plain owned memory.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access is read-only (`Deref`).
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    fn layout(cap: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(cap.max(1), DIRECT_ALIGN).expect("valid buffer layout")
    }

    /// `len` bytes in an allocation rounded up to `DIRECT_ALIGN`, zeros from `head` on. The
    /// first `head` bytes are zeros or another buffer's old bytes; with `head_uninit` they may
    /// also be uninitialised, and the caller writes them before anything reads them.
    fn alloc(len: usize, head: usize, head_uninit: bool) -> AlignedBuf {
        let cap = align_up(len);
        let (ptr, mapped) = match (cap >= bufmem::BYTES_MIN)
            .then(|| bufmem::take(cap))
            .flatten()
        {
            Some((ptr, zeroed)) => {
                if !zeroed {
                    // SAFETY: `cap` bytes owned by this buffer from here on.
                    unsafe { std::ptr::write_bytes(ptr.as_ptr().add(head), 0, cap - head) };
                }
                (ptr, true)
            }
            None => (Self::heap(cap, head, head_uninit), false),
        };
        AlignedBuf {
            ptr,
            len,
            cap,
            mapped,
        }
    }

    /// `cap` bytes from the heap, as `alloc` promises them.
    fn heap(cap: usize, head: usize, head_uninit: bool) -> std::ptr::NonNull<u8> {
        let layout = Self::layout(cap);
        let ptr = if head_uninit && head > 0 {
            // SAFETY: layout has non-zero size; the tail is zeroed here, the head by the caller.
            unsafe {
                let p = std::alloc::alloc(layout);
                if !p.is_null() {
                    std::ptr::write_bytes(p.add(head), 0, cap - head);
                }
                p
            }
        } else {
            // SAFETY: layout has non-zero size.
            unsafe { std::alloc::alloc_zeroed(layout) }
        };
        std::ptr::NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
    }

    /// `len` zero bytes.
    pub fn new(len: usize) -> AlignedBuf {
        Self::alloc(len, 0, false)
    }

    /// `len` bytes of unspecified (but initialised) content, for a buffer about to be
    /// overwritten whole: a reused one is not zeroed first.
    pub fn for_overwrite(len: usize) -> AlignedBuf {
        Self::alloc(len, len, false)
    }

    /// An aligned copy of `data`.
    pub fn copy_of(data: &[u8]) -> AlignedBuf {
        let b = Self::alloc(data.len(), data.len(), true);
        // SAFETY: the buffer has `cap` >= `data.len()` bytes, is new and does not overlap
        // `data`; this writes the head `alloc` left to the caller.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), b.ptr.as_ptr(), data.len()) };
        b
    }
}

impl AlignedBuf {
    /// Shortens the buffer to `len` bytes (no-op when it is not longer); the bytes cut off
    /// become zeros, as the type promises.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            self[len..].fill(0);
            self.len = len;
        }
    }

    /// Bytes the allocation holds (what `set_len` may grow to).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Makes the buffer `len` bytes long, within its capacity: shrinking zeroes the bytes cut
    /// off, growing exposes zeros. For reuse: the kept bytes are whatever was there.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "AlignedBuf::set_len past capacity");
        self.truncate(len);
        self.len = len;
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.mapped {
            bufmem::give(self.ptr, self.cap);
        } else {
            // SAFETY: allocated in `alloc` with this layout.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.cap)) };
        }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` initialised bytes owned by this buffer.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` is unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

/// Creates a new file (never an existing one), with O_DIRECT when `direct` and the filesystem
/// takes it. Returns the file and whether it is O_DIRECT.
fn create_new(path: &Path, direct: bool) -> io::Result<(File, bool)> {
    let open = |flags: i32| {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(flags)
            .open(path)
    };
    if !direct {
        return Ok((open(0)?, false));
    }
    match open(libc::O_DIRECT) {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok((open(0)?, false)),
        Err(e) => Err(e),
    }
}

/// Creates the bucket directory of an extent file, but never the disk's `extents` directory
/// or anything above it: a disk that vanished must fail, not grow again on the parent fs.
fn make_bucket(path: &Path) -> io::Result<()> {
    let bucket = path.parent().expect("extent files live in a bucket");
    match fs::create_dir(bucket) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        Err(_) => Ok(()),
        // A new bucket's own entry must be durable before any file in it can be (buckets
        // are made at labelling and mount; this is for one removed meanwhile).
        Ok(()) => File::open(bucket.parent().expect("buckets live in extents/"))?.sync_all(),
    }
}

pub fn block_sums(data: &[u8], block_size: usize) -> Vec<[u8; 32]> {
    data.chunks(block_size)
        .map(|c| *blake3::hash(c).as_bytes())
        .collect()
}

/// Faults injected through the control socket (`scripts/inject eio|slow`), applied to every
/// extent read, write, sync and probe on the disk.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Fault {
    /// Fraction of operations that fail with EIO (0..=1).
    pub eio_rate: f64,
    /// Latency added to each operation.
    pub delay_ms: u64,
}

/// (shard, epoch) a write is made under: a storage host refuses it once it has seen a
/// higher epoch for the shard (docs/cluster.md, "Fencing on the data path").
pub type ShardEpoch = (u32, u64);

/// A disk a storage host serves over the extent service (docs/cluster.md): what `Store` and
/// `Disk` do to a local directory, done by the host that owns the disk. Errors come back as
/// the local ones (errno, checksum), so counting, skipping and repair work unchanged.
pub trait RemoteIo: Send + Sync {
    /// Writes a whole extent version (or replaces a bad copy of it: the bytes of a version
    /// never change), `sums` one per block; the host checks them before it writes.
    fn write(
        &self,
        id: &ExtentId,
        data: &[u8],
        sums: &[[u8; 32]],
        fence: ShardEpoch,
    ) -> io::Result<()>;
    /// `[off, off + buf.len())`, checked on both ends against `sums` (the whole extent's).
    fn read_into(
        &self,
        id: &ExtentId,
        sums: &[[u8; 32]],
        off: usize,
        buf: &mut [u8],
    ) -> Result<(), ReadError>;
    /// Makes the files durable; returns those that failed.
    fn sync(&self, ids: &[ExtentId]) -> io::Result<Vec<ExtentId>>;
    fn remove(&self, id: &ExtentId) -> io::Result<()>;
    /// The host's own probe of the disk; returns how long it took in microseconds.
    fn probe(&self) -> io::Result<u64>;
    fn space(&self) -> io::Result<(u64, u64)>;
    fn scan(&self) -> io::Result<Vec<(ExtentId, u64)>>;
    fn remove_temps(&self) -> io::Result<usize>;
    /// The host still serves this disk (by its cluster-wide uuid).
    fn check(&self) -> anyhow::Result<()>;
    /// Where the disk is served: its host's extent-service address, its number there, and
    /// the host process that numbers it so.
    fn locator(&self) -> io::Result<(String, u32, u64)>;
    /// Recovery: this disk's host pulls `id` from `src` (another remote disk) and stages it
    /// as copy `tag`, checked against `sums`; no byte passes through this host.
    fn stage_from(
        &self,
        src: &dyn RemoteIo,
        what: (&ExtentId, u64, u32),
        sums: &[[u8; 32]],
        fence: ShardEpoch,
    ) -> io::Result<()>;
    /// Recovery, prepared: this disk's host connects now to the hosts of `srcs` (the disks
    /// its copies would pull from); how many hosts it holds connections to.
    fn prepare_pulls(&self, srcs: &[Arc<dyn RemoteIo>]) -> io::Result<u32>;
    /// Moves staged copy `tag` into place.
    fn install(&self, id: &ExtentId, tag: u32, fence: ShardEpoch) -> io::Result<()>;
    fn discard(&self, id: &ExtentId, tag: u32) -> io::Result<()>;
    /// The storage host's number in the pool (placement's failure domain).
    fn host(&self) -> u32;
    /// How the host's link has behaved (a risk signal of the host, not the disk).
    fn host_signals(&self) -> HostSignals {
        HostSignals::default()
    }
    /// The failure detector found the host not answering (a probe hung or failed on the
    /// network): one outage of the host, however many of its disks say so.
    fn host_unreachable(&self) {}
}

/// What the metadata host saw of a storage host's link since the pool was mounted.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HostSignals {
    /// Times the link went from answering to a network error (a cut, a crash, a pause).
    pub outages: u64,
    /// Seconds the link has been watched.
    pub watched_s: f64,
}

pub struct Disk {
    pub id: u32,
    /// A local disk's directory; for a remote one, `node://HOST/UUID` (never opened).
    pub root: PathBuf,
    /// Set for a disk on another host: every operation goes over the extent service.
    pub remote: Option<Arc<dyn RemoteIo>>,
    state: RwLock<DiskState>,
    pub io_errors: AtomicU64,
    pub checksum_errors: AtomicU64,
    /// Probes that overran their deadline (late or hung); a risk signal.
    pub probe_timeouts: AtomicU64,
    /// Duration of the last completed probe (write, fsync, read back), in microseconds.
    pub probe_us_last: AtomicU64,
    /// Set when a write met ENOSPC (full is not failed); cleared by a later good write.
    pub full: std::sync::atomic::AtomicBool,
    fault: RwLock<Fault>,
    /// A fault is set: the read/write path looks at this load only, not at the lock.
    faulty: std::sync::atomic::AtomicBool,
    /// Its filesystem refused an O_DIRECT open, write or read: extents are written and read
    /// through the cache.
    pub no_direct: std::sync::atomic::AtomicBool,
    /// Extent writes, reads and probes in flight (`Disk::op`).
    ops_inflight: std::sync::atomic::AtomicU32,
    /// When one last finished, or the disk last went from idle to busy (`mono_us`).
    op_progress_us: AtomicU64,
}

/// A disk with operations in flight of which none has finished for this long is lagging
/// (stalled, or far behind): reads try its replicas last.
const LAGGING_AFTER_US: u64 = 1_000_000;

/// An operation in flight on a disk (see `Disk::is_lagging`).
pub(crate) struct DiskOp<'a>(&'a Disk);

impl Drop for DiskOp<'_> {
    fn drop(&mut self) {
        self.0.op_progress_us.store(mono_us(), Ordering::Relaxed);
        self.0.ops_inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Disk {
    pub fn new(id: u32, root: PathBuf, state: DiskState) -> Disk {
        Disk {
            id,
            root,
            remote: None,
            state: RwLock::new(state),
            io_errors: AtomicU64::new(0),
            checksum_errors: AtomicU64::new(0),
            probe_timeouts: AtomicU64::new(0),
            probe_us_last: AtomicU64::new(0),
            full: std::sync::atomic::AtomicBool::new(false),
            fault: RwLock::new(Fault::default()),
            faulty: std::sync::atomic::AtomicBool::new(false),
            no_direct: std::sync::atomic::AtomicBool::new(false),
            ops_inflight: std::sync::atomic::AtomicU32::new(0),
            op_progress_us: AtomicU64::new(mono_us()),
        }
    }
    /// A disk served by another host, reached through `io`.
    pub fn remote(id: u32, name: String, state: DiskState, io: Arc<dyn RemoteIo>) -> Disk {
        Disk {
            remote: Some(io),
            ..Disk::new(id, PathBuf::from(name), state)
        }
    }
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }
    /// The failure domain above the disk: 0 for every local disk.
    pub fn host(&self) -> u32 {
        self.remote.as_ref().map_or(0, |r| r.host())
    }
    /// Marks an operation in flight until the guard drops.
    pub(crate) fn op(&self) -> DiskOp<'_> {
        if self.ops_inflight.fetch_add(1, Ordering::Relaxed) == 0 {
            self.op_progress_us.store(mono_us(), Ordering::Relaxed);
        }
        DiskOp(self)
    }
    /// Operations are in flight and none has finished for `LAGGING_AFTER_US`.
    pub fn is_lagging(&self) -> bool {
        self.ops_inflight.load(Ordering::Relaxed) > 0
            && mono_us().saturating_sub(self.op_progress_us.load(Ordering::Relaxed))
                >= LAGGING_AFTER_US
    }
    pub fn state(&self) -> DiskState {
        *self.state.read()
    }
    pub fn set_state(&self, s: DiskState) {
        *self.state.write() = s;
    }
    /// Holds readable replicas (not failed or removed).
    pub fn is_up(&self) -> bool {
        self.state().readable()
    }
    /// May receive new data: new writes, recovery copies.
    pub fn accepts_data(&self) -> bool {
        matches!(self.state(), DiskState::Up | DiskState::Suspect)
    }
    pub fn fault(&self) -> Fault {
        *self.fault.read()
    }
    pub fn set_fault(&self, f: Fault) {
        *self.fault.write() = f;
        self.faulty.store(f != Fault::default(), Ordering::Relaxed);
    }
    /// Applies an injected fault to one operation: sleeps, then maybe fails with EIO.
    pub fn inject(&self) -> io::Result<()> {
        if !self.faulty.load(Ordering::Relaxed) {
            return Ok(());
        }
        let f = *self.fault.read();
        if f.delay_ms > 0 {
            // In steps, so that a delay taken off ends the operations waiting in it (a disk
            // that recovers), as it would on a real device.
            let until = std::time::Instant::now() + std::time::Duration::from_millis(f.delay_ms);
            while self.fault.read().delay_ms > 0 {
                let left = until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                std::thread::sleep(left.min(std::time::Duration::from_millis(50)));
            }
        }
        if f.eio_rate > 0.0 && rand::random::<f64>() < f.eio_rate {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }
    /// Counts an I/O error; ENOSPC only marks the disk full.
    pub fn note_error(&self, e: &io::Error) {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            self.full.store(true, Ordering::Relaxed);
        } else {
            self.io_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Health probe: writes a small file, fsyncs it, reads it back and compares. The caller
    /// runs it with a deadline (a hung disk never returns).
    pub fn probe(&self) -> io::Result<()> {
        self.probe_labelled(LABEL_FILE)
    }

    /// `probe` of a disk whose label is the file `label` (a storage host's disks carry the
    /// node label).
    pub fn probe_labelled(&self, label: &str) -> io::Result<()> {
        let _op = self.op();
        self.inject()?;
        if let Some(r) = &self.remote {
            return r.probe().map(|_| ());
        }
        let p = self.root.join(PROBE_FILE);
        let data: [u8; 64] = std::array::from_fn(|_| rand::random());
        // Never create the file when the disk root itself is gone.
        if !self.root.join(label).exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "disk root or label gone",
            ));
        }
        // Not truncated at open: the checks in open_plain come first.
        let f = open_plain(&p, true, true)?;
        f.write_all_at(&data, 0)?;
        f.set_len(data.len() as u64)?;
        f.sync_all()?;
        let mut back = [0u8; 64];
        f.read_exact_at(&mut back, 0)?;
        if back != data {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "probe read back different bytes",
            ));
        }
        Ok(())
    }
    pub fn extent_path(&self, id: &ExtentId) -> PathBuf {
        self.root
            .join(EXTENT_DIR)
            .join(id.bucket())
            .join(id.file_name())
    }

    /// Checks that the directory still carries this pool's label for this disk.
    pub fn check_label(&self, pool_id: &str) -> anyhow::Result<()> {
        if let Some(r) = &self.remote {
            return r.check();
        }
        match read_label(&self.root)? {
            Some(l) if l.pool_id == pool_id && l.disk_id == self.id => Ok(()),
            Some(l) => bail!(
                "{}: label says pool {} disk {}, expected pool {} disk {}",
                self.root.display(),
                l.pool_id,
                l.disk_id,
                pool_id,
                self.id
            ),
            None => bail!(
                "{}: disk label missing (disk replaced or not mounted?)",
                self.root.display()
            ),
        }
    }

    /// (total, free) bytes of the filesystem the disk lives on.
    pub fn space(&self) -> io::Result<(u64, u64)> {
        if let Some(r) = &self.remote {
            return r.space();
        }
        let s = statvfs(&self.root)?;
        Ok((s.0, s.1))
    }

    /// Every extent file on the disk (for orphan cleanup and fsck).
    pub fn scan(&self) -> io::Result<Vec<(ExtentId, u64)>> {
        if let Some(r) = &self.remote {
            return r.scan();
        }
        let mut out = Vec::new();
        let top = self.root.join(EXTENT_DIR);
        for b in fs::read_dir(&top)? {
            let b = b?;
            if !b.file_type()?.is_dir() {
                continue;
            }
            for e in fs::read_dir(b.path())? {
                let e = e?;
                let name = e.file_name();
                let name = name.to_string_lossy();
                if let Some(id) = ExtentId::parse(&name) {
                    // On a mounted pool the reaper may remove it meanwhile: gone, not listed.
                    match e.metadata() {
                        Ok(m) => out.push((id, m.len())),
                        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                        Err(err) => return Err(err),
                    }
                }
            }
        }
        Ok(out)
    }

    /// Removes the temp files of interrupted repairs and recovery copies (start-up cleanup
    /// only: on a mounted pool they may belong to an operation in flight). Returns how many.
    pub fn remove_temps(&self) -> io::Result<usize> {
        if let Some(r) = &self.remote {
            return r.remove_temps();
        }
        let mut n = 0;
        for b in fs::read_dir(self.root.join(EXTENT_DIR))? {
            let b = b?;
            if !b.file_type()?.is_dir() {
                continue;
            }
            for e in fs::read_dir(b.path())? {
                let e = e?;
                if e.file_name().to_string_lossy().ends_with(".tmp") {
                    fs::remove_file(e.path())?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

pub use foreshard_model::util::statvfs;

/// Errors of the network, never of a disk: a remote disk's host is unreachable, the disk
/// may be fine (not counted against the disk; the host grace applies).
pub fn is_network_error(e: &io::Error) -> bool {
    use io::ErrorKind as K;
    let kind = matches!(
        e.kind(),
        K::HostUnreachable | K::ConnectionRefused | K::ConnectionReset | K::TimedOut
    );
    kind || matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNREFUSED
                | libc::ECONNRESET
                | libc::ETIMEDOUT
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EPIPE
                | libc::ECONNABORTED
        )
    )
}

/// Staging files are the local recovery agents' (a remote host installs its own copies).
fn local_only(disk: &Disk) -> io::Result<()> {
    match disk.is_remote() {
        false => Ok(()),
        true => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("disk {} is on another host", disk.id),
        )),
    }
}

/// The set of disks and the extent I/O on them.
pub struct Store {
    disks: RwLock<Vec<Arc<Disk>>>,
    /// Open extent files by (disk, extent, opened with O_DIRECT).
    fds: Mutex<LruCache<(u32, ExtentId, bool), Arc<File>>>,
    pub block_size: usize,
}

impl Store {
    pub fn new(disks: Vec<Arc<Disk>>, block_size: usize) -> Store {
        Store {
            disks: RwLock::new(disks),
            fds: Mutex::new(LruCache::new(FD_CACHE_ENTRIES_MAX.try_into().unwrap())),
            block_size,
        }
    }

    pub fn disks(&self) -> Vec<Arc<Disk>> {
        self.disks.read().clone()
    }

    pub fn disk(&self, id: u32) -> Option<Arc<Disk>> {
        self.disks.read().iter().find(|d| d.id == id).cloned()
    }

    /// The disks of `ids` that hold readable replicas (not failed or removed).
    pub fn readable(&self, ids: &[u32]) -> Vec<u32> {
        let disks = self.disks.read();
        ids.iter()
            .copied()
            .filter(|id| disks.iter().any(|d| d.id == *id && d.is_up()))
            .collect()
    }

    pub fn add_disk(&self, d: Arc<Disk>) {
        self.disks.write().push(d);
    }

    /// Forgets cached open files of a disk (it failed: do not keep its files busy).
    pub fn drop_fds(&self, disk: u32) {
        let mut fds = self.fds.lock();
        let keys: Vec<_> = fds
            .iter()
            .filter(|((d, _, _), _)| *d == disk)
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            fds.pop(&k);
        }
    }

    /// Writes a copy of an extent version to a disk that is not among its replicas; a file
    /// left there by an earlier refused copy (no record names it) is replaced.
    pub fn write_copy(
        &self,
        disk: &Disk,
        id: &ExtentId,
        data: &[u8],
        fence: ShardEpoch,
    ) -> io::Result<()> {
        match self.write_extent(disk, id, data, fence) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove_extent(disk, id);
                self.write_extent(disk, id, data, fence)
            }
            r => r,
        }
    }

    /// A write to a remote disk: the host checks the block sums before it writes.
    fn write_remote(
        &self,
        disk: &Disk,
        r: &dyn RemoteIo,
        (id, data, sums): (&ExtentId, &[u8], Option<&[[u8; 32]]>),
        fence: ShardEpoch,
    ) -> io::Result<()> {
        let _op = disk.op();
        let res = disk.inject().and_then(|()| match sums {
            Some(sums) => r.write(id, data, sums, fence),
            None => r.write(id, data, &block_sums(data, self.block_size), fence),
        });
        match &res {
            Ok(()) => disk.full.store(false, Ordering::Relaxed),
            Err(e) => {
                if !is_network_error(e) {
                    disk.note_error(e);
                }
                tracing::warn!(disk = disk.id, "remote write of {id:?} failed: {e}");
            }
        }
        res
    }

    /// Writes one replica of an extent version under `fence` (a remote disk's host checks
    /// it). A local file must not exist yet.
    pub fn write_extent(
        &self,
        disk: &Disk,
        id: &ExtentId,
        data: &[u8],
        fence: ShardEpoch,
    ) -> io::Result<()> {
        self.write_extent_summed(disk, id, (data, None), fence)
    }

    /// `write_extent` with the version's block sums when the caller has them (the write
    /// path does): a remote disk's request carries them, so they are not computed again.
    pub fn write_extent_summed(
        &self,
        disk: &Disk,
        id: &ExtentId,
        (data, sums): (&[u8], Option<&[[u8; 32]]>),
        fence: ShardEpoch,
    ) -> io::Result<()> {
        if let Some(r) = &disk.remote {
            return self.write_remote(disk, r.as_ref(), (id, data, sums), fence);
        }
        let path = disk.extent_path(id);
        // Whole aligned extents skip this host's page cache (one copy less per byte written;
        // reads of recent data come from the FUSE page cache above). Others, and disks whose
        // filesystem refuses O_DIRECT, write through the cache.
        let direct =
            !data.is_empty() && direct_capable(data) && !disk.no_direct.load(Ordering::Relaxed);
        let _op = disk.op();
        let res = (|| {
            disk.inject()?;
            let (f, got_direct) = match create_new(&path, direct) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    make_bucket(&path)?;
                    create_new(&path, direct)?
                }
                r => r?,
            };
            if direct && !got_direct {
                disk.no_direct.store(true, Ordering::Relaxed);
            }
            let direct = got_direct;
            match f.write_all_at(data, 0) {
                Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                    // The filesystem takes O_DIRECT opens but not these writes: use the cache.
                    disk.no_direct.store(true, Ordering::Relaxed);
                    drop(f);
                    fs::remove_file(&path)?;
                    create_new(&path, false)?.0.write_all_at(data, 0)
                }
                r => r,
            }
        })();
        match &res {
            Ok(()) => disk.full.store(false, Ordering::Relaxed),
            Err(e) => disk.note_error(e),
        }
        if let Err(e) = &res {
            // Never remove a file some earlier write owns.
            if e.kind() != io::ErrorKind::AlreadyExists {
                let _ = fs::remove_file(&path);
            }
            tracing::warn!(disk = disk.id, "write of {} failed: {e}", path.display());
        }
        res
    }

    /// Replaces a bad copy of an extent version with `data` (already verified by the caller).
    pub fn rewrite_extent(
        &self,
        disk: &Disk,
        id: &ExtentId,
        data: &[u8],
        fence: ShardEpoch,
    ) -> io::Result<()> {
        if let Some(r) = &disk.remote {
            // The host replaces the file atomically (temp file and rename), as below.
            return self.write_remote(disk, r.as_ref(), (id, data, None), fence);
        }
        let path = disk.extent_path(id);
        make_bucket(&path)?;
        let tmp = path.with_extension("tmp");
        let _ = fs::remove_file(&tmp);
        {
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all_at(data, 0)?;
            f.sync_data()?;
        }
        fs::rename(&tmp, &path)?;
        self.forget_fds(disk, id);
        Ok(())
    }

    /// Where a recovery agent writes a copy before installing it (`tag` keeps concurrent
    /// agents apart; start-up cleanup removes leftovers, they end in `.tmp`).
    pub fn staging_path(&self, disk: &Disk, id: &ExtentId, tag: u32) -> PathBuf {
        let p = disk.extent_path(id);
        let mut name = p.file_name().expect("extent file name").to_os_string();
        name.push(format!(".r{tag}.tmp"));
        p.with_file_name(name)
    }

    /// Creates the staging file of a recovered copy (its bucket too, never the disk root);
    /// with `direct`, O_DIRECT when the disk's filesystem supports it: recovery writes skip
    /// the page cache (measured faster on loop-mounted ext4; O_DIRECT reads were slower, so
    /// sources are read through the cache). Returns the file and whether it is O_DIRECT.
    pub fn create_staging(
        &self,
        disk: &Disk,
        id: &ExtentId,
        tag: u32,
        direct: bool,
    ) -> io::Result<(File, bool)> {
        local_only(disk)?;
        disk.inject()?;
        let p = self.staging_path(disk, id, tag);
        make_bucket(&p)?;
        let _ = fs::remove_file(&p);
        create_new(&p, direct)
    }

    /// Copies `id` from `src` to staging copy `tag` on `dst`, both remote: `dst`'s host
    /// pulls it straight from `src`'s (docs/cluster.md, "recovery").
    pub fn stage_remote(
        &self,
        (dst, src): (&Disk, &Disk),
        (id, len, tag): (&ExtentId, u64, u32),
        sums: &[[u8; 32]],
        fence: ShardEpoch,
    ) -> io::Result<()> {
        let (Some(d), Some(s)) = (&dst.remote, &src.remote) else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a host-to-host copy needs two remote disks",
            ));
        };
        let _op = dst.op();
        dst.inject()?;
        d.stage_from(s.as_ref(), (id, len, tag), sums, fence)
    }

    /// Removes staged copy `tag` (its commit was refused).
    pub fn discard_staging(&self, disk: &Disk, id: &ExtentId, tag: u32) {
        let r = match &disk.remote {
            Some(r) => r.discard(id, tag),
            None => match fs::remove_file(self.staging_path(disk, id, tag)) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                r => r,
            },
        };
        if let Err(e) = r {
            tracing::warn!(disk = disk.id, "cannot remove staged copy of {id:?}: {e}");
        }
    }

    /// Moves a verified staging copy into place as the extent version's file (a remote
    /// disk's host checks `fence` first).
    pub fn install_staging(
        &self,
        disk: &Disk,
        id: &ExtentId,
        tag: u32,
        fence: ShardEpoch,
    ) -> io::Result<()> {
        if let Some(r) = &disk.remote {
            return r.install(id, tag, fence);
        }
        fs::rename(self.staging_path(disk, id, tag), disk.extent_path(id))?;
        self.forget_fds(disk, id);
        Ok(())
    }

    /// A local extent file, open for reading (the recovery agents' and migration's sources;
    /// a remote disk has none: its bytes come over the extent service).
    pub fn open_extent(&self, disk: &Disk, id: &ExtentId) -> io::Result<Arc<File>> {
        if disk.is_remote() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a remote disk's extents are read over the extent service",
            ));
        }
        disk.inject()?;
        self.open_cached(disk, id)
    }

    fn open_cached(&self, disk: &Disk, id: &ExtentId) -> io::Result<Arc<File>> {
        self.open_cached_as(disk, id, false)
    }

    fn open_cached_as(&self, disk: &Disk, id: &ExtentId, direct: bool) -> io::Result<Arc<File>> {
        let key = (disk.id, *id, direct);
        if let Some(f) = self.fds.lock().get(&key) {
            return Ok(f.clone());
        }
        let flags = if direct { libc::O_DIRECT } else { 0 };
        let f = Arc::new(
            OpenOptions::new()
                .read(true)
                .custom_flags(flags)
                .open(disk.extent_path(id))?,
        );
        self.fds.lock().put(key, f.clone());
        Ok(f)
    }

    fn forget_fds(&self, disk: &Disk, id: &ExtentId) {
        let mut fds = self.fds.lock();
        fds.pop(&(disk.id, *id, false));
        fds.pop(&(disk.id, *id, true));
    }

    /// Reads `[off, off+len)` of one replica and verifies every checksum block it covers.
    /// `off` must be block aligned; `len` ends at a block boundary or at the extent's end.
    pub fn read_verified(
        &self,
        disk: &Disk,
        id: &ExtentId,
        sums: &[[u8; 32]],
        off: usize,
        len: usize,
    ) -> Result<Vec<u8>, ReadError> {
        let mut buf = vec![0u8; len];
        self.read_verified_into(disk, id, sums, off, &mut buf)?;
        Ok(buf)
    }

    /// `read_verified` into a caller's buffer (saves a copy on the read path).
    pub fn read_verified_into(
        &self,
        disk: &Disk,
        id: &ExtentId,
        sums: &[[u8; 32]],
        off: usize,
        buf: &mut [u8],
    ) -> Result<(), ReadError> {
        debug_assert_eq!(off % self.block_size, 0);
        let _op = disk.op();
        if let Some(r) = &disk.remote {
            disk.inject().map_err(ReadError::Io)?;
            return r.read_into(id, sums, off, buf).inspect_err(|e| match e {
                ReadError::Io(e) if e.kind() != io::ErrorKind::NotFound && !is_network_error(e) => {
                    disk.io_errors.fetch_add(1, Ordering::Relaxed);
                }
                ReadError::Corrupt(_) => {
                    disk.checksum_errors.fetch_add(1, Ordering::Relaxed);
                }
                ReadError::Io(_) => {}
            });
        }
        let len = buf.len();
        // Large aligned reads skip this host's page cache (the extent was written past it
        // too): one copy and one page-cache fill less per byte. Small reads keep the cache,
        // which serves the rest of their checksum block to the next small read.
        let mut direct = len >= DIRECT_READ_BYTES_MIN
            && direct_capable(buf)
            && off.is_multiple_of(DIRECT_ALIGN)
            && !disk.no_direct.load(Ordering::Relaxed);
        let f = disk
            .inject()
            .and_then(|()| match self.open_cached_as(disk, id, direct) {
                Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                    disk.no_direct.store(true, Ordering::Relaxed);
                    direct = false;
                    self.open_cached(disk, id)
                }
                r => r,
            })
            .map_err(|e| {
                if e.kind() != io::ErrorKind::NotFound || !disk.root.join(LABEL_FILE).exists() {
                    disk.io_errors.fetch_add(1, Ordering::Relaxed);
                }
                ReadError::Io(e)
            })?;
        let mut done = 0;
        while done < len {
            match f.read_at(&mut buf[done..], (off + done) as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if direct && e.raw_os_error() == Some(libc::EINVAL) => {
                    // The filesystem opens with O_DIRECT but refuses these reads.
                    disk.no_direct.store(true, Ordering::Relaxed);
                    self.forget_fds(disk, id);
                    return self.read_verified_into(disk, id, sums, off, buf);
                }
                Err(e) => {
                    disk.io_errors.fetch_add(1, Ordering::Relaxed);
                    self.forget_fds(disk, id);
                    return Err(ReadError::Io(e));
                }
            }
        }
        if done < len {
            disk.checksum_errors.fetch_add(1, Ordering::Relaxed);
            return Err(ReadError::Corrupt(format!(
                "short file: {done} of {len} bytes"
            )));
        }
        for (i, chunk) in buf.chunks(self.block_size).enumerate() {
            let b = off / self.block_size + i;
            let want = sums
                .get(b)
                .ok_or_else(|| ReadError::Corrupt(format!("no checksum for block {b}")))?;
            if blake3::hash(chunk).as_bytes() != want {
                disk.checksum_errors.fetch_add(1, Ordering::Relaxed);
                return Err(ReadError::Corrupt(format!(
                    "checksum mismatch in block {b}"
                )));
            }
        }
        Ok(())
    }

    pub fn remove_extent(&self, disk: &Disk, id: &ExtentId) {
        if let Some(r) = &disk.remote {
            if let Err(e) = r.remove(id) {
                tracing::warn!(disk = disk.id, "cannot remove {:?}: {e}", id);
            }
            return;
        }
        self.forget_fds(disk, id);
        match fs::remove_file(disk.extent_path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(disk = disk.id, "cannot remove {:?}: {e}", id),
        }
    }

    /// Makes extent files durable: each file's data (fdatasync) and the entry naming it in
    /// its bucket directory (fsync), all in parallel. Files already removed are skipped.
    /// Returns the disks where something failed (their error counted).
    pub fn sync_extents(&self, files: &[(u32, ExtentId)]) -> HashMap<u32, io::Error> {
        let (remote, local): (Vec<_>, Vec<_>) = files
            .iter()
            .partition(|(d, _)| self.disk(*d).is_some_and(|x| x.is_remote()));
        if remote.is_empty() {
            return self.sync_local(files);
        }
        let local: Vec<(u32, ExtentId)> = local.into_iter().copied().collect();
        let mut per_disk: HashMap<u32, Vec<ExtentId>> = HashMap::new();
        for (d, id) in remote {
            per_disk.entry(*d).or_default().push(*id);
        }
        // Every remote disk's sync is one request, all of them and the local syncs at once.
        std::thread::scope(|s| {
            let hs: Vec<_> = per_disk
                .into_iter()
                .map(|(d, ids)| s.spawn(move || (d, self.sync_remote(d, &ids))))
                .collect();
            let mut failed = self.sync_local(&local);
            for h in hs {
                if let (d, Err(e)) = h.join().expect("remote sync") {
                    failed.insert(d, e);
                }
            }
            failed
        })
    }

    fn sync_remote(&self, d: u32, ids: &[ExtentId]) -> io::Result<()> {
        let disk = self.disk(d).expect("partitioned on it");
        let r = disk.remote.as_ref().expect("remote");
        let res = disk.inject().and_then(|()| r.sync(ids)).and_then(|bad| {
            // A file removed meanwhile (superseded, reaped) has nothing to sync, as locally.
            match bad.first() {
                None => Ok(()),
                Some(id) => Err(io::Error::other(format!(
                    "{} of {} extent file(s) not made durable, first {id:?}",
                    bad.len(),
                    ids.len()
                ))),
            }
        });
        if let Err(e) = &res {
            tracing::error!(disk = d, "cannot make extent files durable: {e}");
            if !is_network_error(e) {
                disk.note_error(e);
            }
        }
        res
    }

    fn sync_local(&self, files: &[(u32, ExtentId)]) -> HashMap<u32, io::Error> {
        let mut failed: HashMap<u32, io::Error> = HashMap::new();
        let mut targets = Vec::with_capacity(files.len() + files.len() / 4);
        let mut dirs: HashSet<(u32, u16)> = HashSet::new();
        let mut disks: HashMap<u32, Option<Arc<Disk>>> = HashMap::new();
        let mut per_disk: HashMap<u32, usize> = HashMap::new();
        for (d, id) in files {
            let disk = disks.entry(*d).or_insert_with(|| {
                let disk = self.disk(*d)?;
                // An injected fault applies once per disk and sync.
                match disk.inject() {
                    Ok(()) => Some(disk),
                    Err(e) => {
                        failed.insert(*d, e);
                        None
                    }
                }
            });
            let Some(disk) = disk else { continue };
            *per_disk.entry(*d).or_default() += 1;
            let path = disk.extent_path(id);
            if dirs.insert((*d, id.bucket_no())) {
                targets.push(durable::Target {
                    owner: *d,
                    path: path.parent().expect("bucket").to_path_buf(),
                    dir: true,
                });
            }
            targets.push(durable::Target {
                owner: *d,
                path,
                dir: false,
            });
        }
        for (d, n) in per_disk {
            if n < SYNCFS_FILES_MIN || failed.contains_key(&d) {
                continue;
            }
            if let Some(disk) = self.disk(d) {
                durable::syncfs_hint(&disk.root);
            }
        }
        for (d, e) in durable::sync(&targets) {
            failed.entry(d).or_insert(e);
        }
        for (d, e) in &failed {
            if let Some(disk) = self.disk(*d) {
                tracing::error!(disk = d, "cannot make extent files durable: {e}");
                disk.note_error(e);
            }
        }
        failed
    }
}

/// From this many files of one disk in one sync, the disk's filesystem is synced as a whole
/// first (one journal commit for all of them, where per-file fdatasyncs commit a few files
/// each); the per-file syncs that follow find the files clean and remain what guarantees
/// durability (syncfs is not forwarded by every filesystem).
const SYNCFS_FILES_MIN: usize = 32;

#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    Corrupt(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "I/O error: {e}"),
            ReadError::Corrupt(s) => write!(f, "corrupt: {s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Disk 0 of pool "p" at `root` (labelled, with its extents directory).
    fn labelled_disk(root: &Path) -> Disk {
        write_label(root, &Label::new("p", 0)).unwrap();
        Disk::new(0, root.to_path_buf(), DiskState::Up)
    }

    #[test]
    fn extent_names_round_trip() {
        let id = ExtentId {
            ino: 0x1234,
            index: 7,
            version: u64::MAX,
        };
        assert_eq!(ExtentId::parse(&id.file_name()), Some(id));
        assert_eq!(ExtentId::parse("12.3"), None);
        assert_eq!(ExtentId::parse("x.1.2"), None);
    }

    #[test]
    fn detects_flipped_byte_and_short_file() {
        let dir = tempfile::tempdir().unwrap();
        let disk = labelled_disk(dir.path());
        let store = Store::new(vec![], 4096);
        let id = ExtentId {
            ino: 5,
            index: 0,
            version: 1,
        };
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let sums = block_sums(&data, 4096);
        store.write_extent(&disk, &id, &data, (0, 1)).unwrap();
        assert_eq!(
            store.read_verified(&disk, &id, &sums, 4096, 4096).unwrap(),
            &data[4096..8192]
        );
        assert_eq!(
            store
                .read_verified(&disk, &id, &sums, 8192, 10_000 - 8192)
                .unwrap(),
            &data[8192..]
        );
        let mut bad = data.clone();
        bad[5000] ^= 1;
        store.rewrite_extent(&disk, &id, &bad, (0, 1)).unwrap();
        assert!(matches!(
            store.read_verified(&disk, &id, &sums, 4096, 4096),
            Err(ReadError::Corrupt(_))
        ));
        assert!(
            store.read_verified(&disk, &id, &sums, 0, 4096).is_ok(),
            "other blocks stay readable"
        );
        store
            .rewrite_extent(&disk, &id, &data[..9000], (0, 1))
            .unwrap();
        assert!(matches!(
            store.read_verified(&disk, &id, &sums, 8192, 10_000 - 8192),
            Err(ReadError::Corrupt(_))
        ));
        assert_eq!(disk.checksum_errors.load(Ordering::Relaxed), 2);
        assert!(
            store.write_extent(&disk, &id, &data, (0, 1)).is_err(),
            "versions are never overwritten"
        );
    }

    #[test]
    fn aligned_extents_are_written_direct_and_read_back() {
        let b = AlignedBuf::copy_of(&[7u8; 5000]);
        assert_eq!(b.as_ptr() as usize % DIRECT_ALIGN, 0);
        assert_eq!(b.len(), 5000);
        assert!(b.iter().all(|&x| x == 7));
        let dir = tempfile::tempdir().unwrap();
        let disk = labelled_disk(dir.path());
        let store = Store::new(vec![], 4096);
        let data: Vec<u8> = (0..(256u32 << 10)).map(|i| (i % 251) as u8).collect();
        // Aligned (O_DIRECT where the filesystem takes it) and unaligned (through the cache).
        for (version, buf) in [
            (1, AlignedBuf::copy_of(&data)),
            (2, AlignedBuf::copy_of(&data[..12_345])),
        ] {
            let id = ExtentId {
                ino: 9,
                index: 0,
                version,
            };
            store.write_extent(&disk, &id, &buf, (0, 1)).unwrap();
            let n = buf.len();
            let sums = block_sums(&buf, 4096);
            assert_eq!(
                store.read_verified(&disk, &id, &sums, 0, n).unwrap(),
                &data[..n],
                "version {version}"
            );
        }
    }

    #[test]
    fn reused_large_buffers_keep_their_zero_promises() {
        // Large buffers are recycled through `bufmem`: dirty one, free it, and the next ones
        // of its size still read as zeros where the type says so.
        let len = (384 << 10) + 1000;
        for _ in 0..4 {
            let mut b = AlignedBuf::new(len);
            assert!(b.iter().all(|&x| x == 0));
            b.fill(0xee);
            let mut o = AlignedBuf::for_overwrite(len - 5000);
            let cap = o.capacity();
            o.set_len(cap);
            assert!(o[len - 5000..].iter().all(|&x| x == 0));
            o.fill(0xdd);
            let data = vec![7u8; len - 100];
            let mut c = AlignedBuf::copy_of(&data);
            assert_eq!(&c[..], &data[..]);
            c.set_len(c.capacity());
            assert!(c[data.len()..].iter().all(|&x| x == 0));
            c.fill(0xcc);
        }
    }

    #[test]
    fn large_aligned_reads_go_direct_and_are_verified() {
        let dir = tempfile::tempdir().unwrap();
        let disk = labelled_disk(dir.path());
        let store = Store::new(vec![], 4096);
        let data: Vec<u8> = (0..(512u32 << 10)).map(|i| (i % 253) as u8).collect();
        let id = ExtentId {
            ino: 3,
            index: 1,
            version: 1,
        };
        store
            .write_extent(&disk, &id, &AlignedBuf::copy_of(&data), (0, 1))
            .unwrap();
        let sums = block_sums(&data, 4096);
        let mut buf = AlignedBuf::new(DIRECT_READ_BYTES_MIN);
        store
            .read_verified_into(&disk, &id, &sums, 4096, &mut buf)
            .unwrap();
        assert_eq!(&buf[..], &data[4096..4096 + DIRECT_READ_BYTES_MIN]);
        let direct_fd = store.fds.lock().contains(&(disk.id, id, true));
        assert!(
            direct_fd || disk.no_direct.load(Ordering::Relaxed),
            "a large aligned read must use O_DIRECT where the filesystem has it"
        );
        // A flipped byte is caught on the direct path too.
        let f = OpenOptions::new()
            .write(true)
            .open(disk.extent_path(&id))
            .unwrap();
        f.write_all_at(b"\xff", 4096 * 10 + 7).unwrap();
        f.sync_all().unwrap();
        let err = store
            .read_verified_into(&disk, &id, &sums, 4096, &mut buf)
            .unwrap_err();
        assert!(
            matches!(err, ReadError::Corrupt(ref m) if m.contains("block 10")),
            "{err}"
        );
        assert_eq!(disk.checksum_errors.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn vanished_disk_is_not_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("d");
        std::fs::create_dir(&root).unwrap();
        let disk = labelled_disk(&root);
        let store = Store::new(vec![], 4096);
        std::fs::rename(&root, dir.path().join("gone")).unwrap();
        let id = ExtentId {
            ino: 9,
            index: 0,
            version: 1,
        };
        assert!(store.write_extent(&disk, &id, b"x", (0, 1)).is_err());
        assert!(!root.exists(), "the disk directory must not be recreated");
        assert_eq!(disk.io_errors.load(Ordering::Relaxed), 1);
    }
}
