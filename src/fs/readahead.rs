//! Sequential read-ahead in the daemon. While a file is read in order with large requests,
//! the next extents are read and verified in the background, so that every disk holding
//! the file works at once and each reads its extents in file order. The kernel's own
//! read-ahead keeps only a request or two in flight, which leaves most disks idle.
//!
//! Buffers are keyed by extent version: a version's bytes never change (a write makes a
//! new version), so a buffer is either exactly the extent's data or ignored.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use lru::LruCache;
use parking_lot::{Condvar, Mutex};

use crate::meta::ExtentRec;
use crate::store::AlignedBuf;

/// How far ahead of a stream's latest request extents are read. Several extents per disk, so
/// a disk that is slow for a moment does not leave the others idle once they finish theirs
/// (1 GiB cold reads, 4 disks: 32 MiB beat 8 MiB in 20 of 27 paired rounds, median +8%).
pub(crate) const WINDOW_BYTES: u64 = 32 << 20;
/// Memory held by read-ahead buffers, pending and ready, over all streams: two full windows.
pub(crate) const BYTES_MAX: usize = 64 << 20;
/// Smaller requests neither start nor extend a stream: random and small reads stay as they
/// are (the kernel's sequential read-ahead sends at least this much).
const READ_BYTES_MIN: usize = 128 << 10;
/// Sequential requests in a row before read-ahead starts.
const SEQ_READS_MIN: u32 = 2;
/// Files followed at once.
const STREAMS_MAX: usize = 64;
/// Workers per disk: two keep a read in flight on the disk while the other verifies.
pub(crate) const WORKERS_PER_DISK: usize = 2;
/// Worker threads; each serves the disks whose id maps to it, in submission order.
pub(crate) const WORKERS_MAX: usize = 16;
/// Jobs queued per worker; more are not read ahead.
pub(crate) const QUEUE_MAX: usize = 64;
/// Spare buffers kept for reuse by the workers: a reused buffer costs no page faults and no
/// zeroing (a fresh megabyte costs both, on every extent).
const SPARE_BUFS_MAX: usize = 8;
/// Longest a reader waits for a read-ahead in flight before reading the extent itself.
const WAIT_MAX: Duration = Duration::from_secs(2);

/// One extent to read ahead.
pub(crate) struct Job {
    pub ino: u64,
    pub index: u64,
    pub rec: Arc<ExtentRec>,
    /// The preferred replica's disk: picks the workers that read the job.
    pub disk: u32,
}

struct Stream {
    /// End of the furthest request seen.
    frontier: u64,
    /// Extents below this index are read ahead already (or were never needed).
    ahead: u64,
    seq_reads: u32,
}

enum Slot {
    Pending,
    Ready(Arc<AlignedBuf>),
}

struct Entry {
    version: u64,
    slot: Slot,
    bytes: usize,
    /// Insertion order, for evicting the oldest ready buffer.
    seq: u64,
}

struct Inner {
    streams: LruCache<u64, Stream>,
    slots: HashMap<(u64, u64), Entry>,
    /// Sum of the slots' bytes.
    bytes: usize,
    seq: u64,
}

impl Inner {
    fn insert(&mut self, key: (u64, u64), e: Entry) {
        self.bytes += e.bytes;
        if let Some(old) = self.slots.insert(key, e) {
            self.bytes -= old.bytes;
        }
    }

    fn remove(&mut self, key: (u64, u64)) -> Option<Entry> {
        let e = self.slots.remove(&key)?;
        self.bytes -= e.bytes;
        Some(e)
    }

    /// Frees the oldest buffer no reader took; false when every slot is still being read.
    fn evict_oldest(&mut self) -> bool {
        let oldest = self
            .slots
            .iter()
            .filter(|(_, e)| matches!(e.slot, Slot::Ready(_)))
            .min_by_key(|(_, e)| e.seq)
            .map(|(k, _)| *k);
        oldest.and_then(|k| self.remove(k)).is_some()
    }
}

#[derive(Default)]
pub struct Stats {
    pub submitted: AtomicU64,
    pub hits: AtomicU64,
    pub waits: AtomicU64,
    pub failed: AtomicU64,
    pub evicted: AtomicU64,
}

pub(crate) struct Readahead {
    inner: Mutex<Inner>,
    /// `inner.bytes`, readable without the lock: reads skip the lookup when nothing is held.
    held: AtomicUsize,
    cv: Condvar,
    workers: OnceLock<Vec<SyncSender<Job>>>,
    spare: Mutex<Vec<AlignedBuf>>,
    pub stats: Stats,
}

impl Readahead {
    pub(crate) fn new() -> Readahead {
        Readahead {
            inner: Mutex::new(Inner {
                streams: LruCache::new(NonZeroUsize::new(STREAMS_MAX).expect("non-zero")),
                slots: HashMap::new(),
                bytes: 0,
                seq: 0,
            }),
            held: AtomicUsize::new(0),
            cv: Condvar::new(),
            workers: OnceLock::new(),
            spare: Mutex::new(Vec::new()),
            stats: Stats::default(),
        }
    }

    /// Installs the workers' queues; until then nothing is read ahead.
    pub(crate) fn set_workers(&self, workers: Vec<SyncSender<Job>>) {
        let _ = self.workers.set(workers);
    }

    pub(crate) fn running(&self) -> bool {
        self.workers.get().is_some_and(|w| !w.is_empty())
    }

    /// Runs `f` on the locked state, then publishes the bytes held and wakes waiting readers.
    fn update<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut g = self.inner.lock();
        let r = f(&mut g);
        self.held.store(g.bytes, Relaxed);
        drop(g);
        self.cv.notify_all();
        r
    }

    /// Notes a request for `[offset, offset + len)` of `ino`; returns the extent indices to
    /// read ahead now (none unless the file is being read in order with large requests).
    pub(crate) fn observe(&self, ino: u64, offset: u64, len: usize, es: u64) -> (u64, u64) {
        if len < READ_BYTES_MIN || !self.running() || es == 0 || es as usize > BYTES_MAX / 4 {
            return (0, 0);
        }
        let end = offset + len as u64;
        let mut g = self.inner.lock();
        let s = g.streams.get_or_insert_mut(ino, || Stream {
            frontier: offset,
            ahead: 0,
            seq_reads: 0,
        });
        // Requests of one stream arrive slightly out of order (several FUSE threads).
        if offset.abs_diff(s.frontier) <= WINDOW_BYTES {
            s.seq_reads = s.seq_reads.saturating_add(1);
            s.frontier = s.frontier.max(end);
        } else {
            *s = Stream {
                frontier: end,
                ahead: 0,
                seq_reads: 1,
            };
        }
        if s.seq_reads < SEQ_READS_MIN {
            return (0, 0);
        }
        // The extent at the frontier is likely requested by the kernel already.
        let first = s.ahead.max(s.frontier / es + 1);
        let last = (s.frontier + WINDOW_BYTES).div_ceil(es);
        if first >= last {
            return (0, 0);
        }
        s.ahead = last;
        (first, last)
    }

    /// Queues an extent for its disk's worker (true also when it is queued already). False
    /// when the memory bound or the queue is full: the reader will read the extent itself.
    pub(crate) fn submit(&self, job: Job) -> bool {
        let Some(workers) = self.workers.get().filter(|w| !w.is_empty()) else {
            return false;
        };
        let key = (job.ino, job.index);
        let bytes = job.rec.len as usize;
        let reserved = self.update(|g| {
            if g.slots.contains_key(&key) {
                return None;
            }
            while g.bytes + bytes > BYTES_MAX {
                if !g.evict_oldest() {
                    return Some(false);
                }
                self.stats.evicted.fetch_add(1, Relaxed);
            }
            g.seq += 1;
            let entry = Entry {
                version: job.rec.version,
                slot: Slot::Pending,
                bytes,
                seq: g.seq,
            };
            g.insert(key, entry);
            Some(true)
        });
        match reserved {
            None => return true,
            Some(false) => return false,
            Some(true) => {}
        }
        // A disk's extents alternate between its workers.
        let w = (job.disk as usize * WORKERS_PER_DISK + job.index as usize % WORKERS_PER_DISK)
            % workers.len();
        if workers[w].try_send(job).is_err() {
            self.update(|g| g.remove(key));
            return false;
        }
        self.stats.submitted.fetch_add(1, Relaxed);
        true
    }

    /// A worker's result: the verified extent, or None when the read failed (the reader
    /// then reads, counts and repairs as usual).
    pub(crate) fn complete(&self, ino: u64, index: u64, version: u64, buf: Option<AlignedBuf>) {
        let failed = buf.is_none();
        self.update(|g| {
            // Nobody reads the file any more (closed, or its stream was pushed out).
            let buf = buf.filter(|_| g.streams.contains(&ino));
            let Some(e) = g.slots.get_mut(&(ino, index)) else {
                return;
            };
            if e.version != version || !matches!(e.slot, Slot::Pending) {
                return;
            }
            match buf {
                Some(buf) => e.slot = Slot::Ready(Arc::new(buf)),
                None => {
                    g.remove((ino, index));
                    if failed {
                        self.stats.failed.fetch_add(1, Relaxed);
                    }
                }
            }
        });
    }

    /// The read-ahead data of an extent version, waiting for it if it is being read.
    /// `last_use`: the reader is done with the extent after this, so the slot is freed.
    pub(crate) fn get(
        &self,
        ino: u64,
        index: u64,
        version: u64,
        last_use: bool,
    ) -> Option<Arc<AlignedBuf>> {
        if self.held.load(Relaxed) == 0 {
            return None;
        }
        let key = (ino, index);
        let deadline = Instant::now() + WAIT_MAX;
        let mut g = self.inner.lock();
        let mut waited = false;
        loop {
            let e = g.slots.get(&key)?;
            match &e.slot {
                // Written since: the old version's data is of no use.
                Slot::Ready(_) if e.version != version => {
                    g.remove(key);
                    self.held.store(g.bytes, Relaxed);
                    return None;
                }
                Slot::Pending if e.version != version => return None,
                Slot::Ready(buf) => {
                    let buf = buf.clone();
                    if last_use {
                        g.remove(key);
                        self.held.store(g.bytes, Relaxed);
                    }
                    self.stats.hits.fetch_add(1, Relaxed);
                    if waited {
                        self.stats.waits.fetch_add(1, Relaxed);
                    }
                    return Some(buf);
                }
                Slot::Pending => {
                    waited = true;
                    if self.cv.wait_until(&mut g, deadline).timed_out() {
                        return None;
                    }
                }
            }
        }
    }

    /// Drops what was read ahead for a file (its last handle closed).
    pub(crate) fn forget(&self, ino: u64) {
        self.update(|g| {
            g.streams.pop(&ino);
            // A pending slot stays until its worker completes it (and drops the buffer).
            let gone: Vec<_> = g
                .slots
                .iter()
                .filter(|(&(i, _), e)| i == ino && matches!(e.slot, Slot::Ready(_)))
                .map(|(k, _)| *k)
                .collect();
            for k in gone {
                g.remove(k);
            }
        });
    }

    /// A buffer of `len` bytes for a worker to read into (its contents are stale bytes).
    pub(crate) fn buffer(&self, len: usize) -> AlignedBuf {
        match self.spare.lock().pop() {
            Some(mut b) if b.capacity() >= len => {
                b.set_len(len);
                b
            }
            _ => AlignedBuf::for_overwrite(len),
        }
    }

    /// Keeps a buffer nobody needs any more for a later `buffer`, up to a bound.
    pub(crate) fn recycle(&self, buf: AlignedBuf) {
        let mut spare = self.spare.lock();
        if spare.len() < SPARE_BUFS_MAX {
            spare.push(buf);
        }
    }

    /// Bytes held now (pending and ready).
    pub(crate) fn bytes(&self) -> usize {
        self.held.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{sync_channel, Receiver};

    const ES: u64 = 1 << 20;

    fn with_worker() -> (Readahead, Receiver<Job>) {
        let ra = Readahead::new();
        let (tx, rx) = sync_channel(QUEUE_MAX);
        ra.set_workers(vec![tx]);
        (ra, rx)
    }

    fn job(ino: u64, index: u64, version: u64, len: u32) -> Job {
        Job {
            ino,
            index,
            rec: Arc::new(ExtentRec {
                version,
                len,
                shard: 0,
                replicas: vec![0],
                sums: Vec::new(),
            }),
            disk: 0,
        }
    }

    /// Plays the worker for the next queued job: the read succeeds.
    fn serve_next(ra: &Readahead, rx: &Receiver<Job>) {
        let j = rx.recv().unwrap();
        let buf = AlignedBuf::new(j.rec.len as usize);
        ra.complete(j.ino, j.index, j.rec.version, Some(buf));
    }

    #[test]
    fn only_large_sequential_requests_start_a_stream() {
        let (ra, _rx) = with_worker();
        // Small requests, in order or not, never read ahead.
        for i in 0..10 {
            assert_eq!(ra.observe(1, i * 4096, 4096, ES), (0, 0));
        }
        // Large random requests neither.
        for off in [500 * ES, 3 * ES, 900 * ES, 40 * ES] {
            assert_eq!(ra.observe(2, off, ES as usize, ES), (0, 0));
        }
        // In order: the second request starts the window past the next extent.
        assert_eq!(ra.observe(3, 0, ES as usize, ES), (0, 0));
        let w = WINDOW_BYTES / ES;
        assert_eq!(ra.observe(3, ES, ES as usize, ES), (3, 2 + w));
        // The window slides by what was read; slightly out-of-order requests still count.
        assert_eq!(ra.observe(3, 3 * ES, ES as usize, ES), (2 + w, 4 + w));
        assert_eq!(ra.observe(3, 2 * ES, ES as usize, ES), (0, 0));
        // A jump starts over.
        assert_eq!(ra.observe(3, 100 * ES, ES as usize, ES), (0, 0));
        assert_eq!(ra.observe(3, 101 * ES, ES as usize, ES), (103, 102 + w));
    }

    #[test]
    fn no_workers_no_read_ahead() {
        let ra = Readahead::new();
        assert_eq!(ra.observe(1, 0, ES as usize, ES), (0, 0));
        assert_eq!(ra.observe(1, ES, ES as usize, ES), (0, 0));
        assert!(!ra.submit(job(1, 2, 1, 100)));
    }

    #[test]
    fn readers_get_the_right_version_and_wait_for_pending_reads() {
        let (ra, rx) = with_worker();
        ra.observe(7, 0, ES as usize, ES);
        assert!(ra.submit(job(7, 2, 5, 8192)));
        assert!(ra.submit(job(7, 2, 5, 8192)), "queued already");
        assert_eq!(ra.stats.submitted.load(Relaxed), 1, "one read per extent");
        let ra = Arc::new(ra);
        let worker = {
            let ra = ra.clone();
            std::thread::spawn(move || {
                let j = rx.recv().unwrap();
                std::thread::sleep(Duration::from_millis(50));
                ra.complete(
                    j.ino,
                    j.index,
                    j.rec.version,
                    Some(AlignedBuf::copy_of(&[9; 8192])),
                );
                rx
            })
        };
        // Another version of the extent is not served.
        assert!(ra.get(7, 2, 4, false).is_none());
        let b = ra.get(7, 2, 5, false).expect("waited for the pending read");
        assert_eq!(&b[..], &[9u8; 8192][..]);
        assert_eq!(ra.stats.waits.load(Relaxed), 1);
        drop(b);
        let b = ra
            .get(7, 2, 5, true)
            .expect("still there until its last use");
        assert!(Arc::try_unwrap(b).is_ok(), "the last user owns the buffer");
        assert!(ra.get(7, 2, 5, true).is_none());
        assert_eq!(ra.bytes(), 0);
        let rx = worker.join().unwrap();
        // A failed read frees its slot: the reader reads the extent itself.
        assert!(ra.submit(job(7, 3, 1, 4096)));
        let j = rx.recv().unwrap();
        ra.complete(j.ino, j.index, j.rec.version, None);
        assert!(ra.get(7, 3, 1, true).is_none());
        assert_eq!(ra.stats.failed.load(Relaxed), 1);
        assert_eq!(ra.bytes(), 0);
    }

    #[test]
    fn memory_is_bounded_and_closed_files_let_go() {
        let (ra, rx) = with_worker();
        ra.observe(1, 0, ES as usize, ES);
        let n = BYTES_MAX as u64 / ES;
        for i in 0..n {
            assert!(ra.submit(job(1, i, 1, ES as u32)));
        }
        // Full of pending reads: nothing can be evicted, so nothing more is queued.
        assert!(!ra.submit(job(1, n, 1, ES as u32)));
        assert_eq!(ra.bytes(), BYTES_MAX);
        for _ in 0..n {
            serve_next(&ra, &rx);
        }
        // Ready buffers nobody took: the oldest make room.
        assert!(ra.submit(job(1, n, 1, ES as u32)));
        assert_eq!(ra.stats.evicted.load(Relaxed), 1);
        assert!(ra.get(1, 0, 1, false).is_none(), "the oldest went");
        assert!(ra.bytes() <= BYTES_MAX);
        // Closing the file drops its ready buffers; its pending read is dropped on arrival.
        ra.forget(1);
        assert_eq!(ra.bytes(), ES as usize);
        serve_next(&ra, &rx);
        assert_eq!(ra.bytes(), 0);
        assert_eq!(ra.stats.failed.load(Relaxed), 0);
    }

    #[test]
    fn spare_buffers_are_reused_up_to_a_bound() {
        let ra = Readahead::new();
        let mut b = AlignedBuf::new(ES as usize);
        b[..4].copy_from_slice(b"data");
        let p = b.as_ptr();
        ra.recycle(b);
        // A shorter request reuses it; the bytes past the new length read as zeros.
        let b = ra.buffer(5000);
        assert_eq!(b.as_ptr(), p, "reused");
        assert_eq!(b.len(), 5000);
        assert_eq!(&b[..4], b"data");
        ra.recycle(b);
        let b = ra.buffer(ES as usize);
        assert_eq!(b.as_ptr(), p);
        assert!(b[5000..].iter().all(|&x| x == 0));
        // Too small for the request: a fresh buffer.
        ra.recycle(AlignedBuf::new(4096));
        assert_ne!(ra.buffer(ES as usize).as_ptr(), p);
        for _ in 0..2 * SPARE_BUFS_MAX {
            ra.recycle(AlignedBuf::new(4096));
        }
        assert_eq!(ra.spare.lock().len(), SPARE_BUFS_MAX);
    }
}
