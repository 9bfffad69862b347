//! File data: buffered writes, extent commits, verified reads, truncation, repair.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::MutexGuard;

use super::{
    extent_files, now_ns, readahead, CommitJob, Errno, Fs, FsResult, Handle, Node, NodeInner,
    RepairReq,
};
use crate::access::AccessOp;
use crate::meta::{Batch, ExtentRec, Kind};
use crate::store::{block_sums, AlignedBuf, Disk, ExtentId, ReadError};

/// Bound on cached extent records per open file.
const NODE_EXTENT_CACHE_MAX: usize = 4096;
/// Largest file: the index of any extent must fit comfortably in u64 offsets.
pub const FILE_SIZE_MAX: u64 = 1 << 50;

/// The part of a byte range `[offset, end)` that falls in one extent.
struct Piece {
    index: u64,
    /// Offset inside the extent.
    start: usize,
    len: usize,
    /// Offset inside the caller's buffer.
    at: usize,
}

/// What `plan_read` leaves to read without the node lock.
struct ReadPlan {
    /// (offset in the reply, extent index, its record, offset in the extent, length)
    plan: Vec<(usize, u64, Arc<ExtentRec>, usize, usize)>,
    /// Allocated when buffered data was copied in.
    out: Option<AlignedBuf>,
    out_len: usize,
    /// The request reaches the end of the file: data past it in an extent is never read.
    to_eof: bool,
}

/// Splits `[offset, end)` at extent boundaries.
fn pieces(offset: u64, end: u64, es: u64) -> impl Iterator<Item = Piece> {
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let index = pos / es;
        let stop = ((index + 1) * es).min(end);
        let p = Piece {
            index,
            start: (pos % es) as usize,
            len: (stop - pos) as usize,
            at: (pos - offset) as usize,
        };
        pos = stop;
        Some(p)
    })
}

impl Fs {
    pub fn open(&self, ino: u64, flags: i32) -> FsResult<u64> {
        let node = self.acquire(ino)?;
        if node.inner.lock().rec.kind == Kind::Dir && (flags & libc::O_ACCMODE) != libc::O_RDONLY {
            drop(node);
            self.release_node(ino)?;
            return Err(Errno::EISDIR);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(
            fh,
            Handle {
                ino,
                append: flags & libc::O_APPEND != 0,
            },
        );
        Ok(fh)
    }

    /// Close of one handle: buffered data is committed (visible to a crash-restart, not yet
    /// durable: that is fsync's job).
    pub fn release(&self, fh: u64) -> FsResult<()> {
        let h = self.handles.lock().remove(&fh).ok_or(Errno::EBADF)?;
        self.release_node(h.ino)
    }

    pub fn flush(&self, ino: u64) -> FsResult<()> {
        let Some(node) = self.node(ino) else {
            return Ok(());
        };
        let mut n = node.inner.lock();
        self.flush_node(ino, &node, &mut n)
    }

    /// Whether a flush or close of `ino` may wait long on a disk: it has commits in flight, or
    /// buffers whose shard has a lagging disk (`Disk::is_lagging`), or its node is busy.
    /// Others commit to healthy disks in well under a millisecond and need no worker.
    pub fn flush_may_wait(&self, ino: u64) -> bool {
        let Some(node) = self.node(ino) else {
            return false;
        };
        let Some(n) = node.inner.try_lock() else {
            return true;
        };
        if n.inflight_count > 0 {
            return true;
        }
        let mut shards: Vec<u32> = n.dirty.keys().map(|i| self.home_shard(ino, *i)).collect();
        drop(n);
        shards.sort_unstable();
        shards.dedup();
        shards.into_iter().any(|s| {
            self.shard(s)
                .disks
                .iter()
                .any(|d| self.store.disk(*d).is_some_and(|d| d.is_lagging()))
        })
    }

    /// Commits a node's buffered writes and attributes, writing the extents without the node
    /// lock (as the committers do): a stalled disk holds up this file's flush, not every
    /// request or namespace change that looks at the node meanwhile.
    pub(crate) fn flush_node(
        &self,
        ino: u64,
        node: &Arc<Node>,
        n: &mut MutexGuard<'_, NodeInner>,
    ) -> FsResult<()> {
        Self::wait_inflight(node, n)?;
        // Empty buffers (truncations to an extent boundary) only delete: no disk writes.
        let empty: Vec<u64> = n
            .dirty
            .iter()
            .filter(|(_, d)| d.is_empty())
            .map(|(i, _)| *i)
            .collect();
        if !empty.is_empty() {
            self.commit(ino, n, &empty, None, None)?;
        }
        let mut jobs = Vec::with_capacity(n.dirty.len());
        let mut handed = Ok(());
        let indices: Vec<u64> = n.dirty.keys().copied().collect();
        for index in indices {
            let buf = Arc::new(AlignedBuf::copy_of(&n.dirty[&index]));
            // Out of `dirty` only once the job exists; its bytes stay counted until the
            // job is done (`run_job`).
            match self.hand_off(ino, node, n, index, buf) {
                Ok(job) => jobs.push(job),
                Err(e) => {
                    handed = Err(e);
                    break;
                }
            }
            n.dirty.remove(&index);
        }
        // Jobs handed off are run even when a later hand-off failed (waiters count them).
        if !jobs.is_empty() {
            MutexGuard::unlocked(n, || {
                for job in jobs {
                    self.run_job(job, true);
                }
            });
        }
        Self::wait_inflight(node, n)?;
        handed?;
        self.persist_rec(ino, n)
    }

    /// Writes the node's attributes to metadata if they changed in memory (and the inode still
    /// has a name; an orphan is about to be freed).
    pub(crate) fn persist_rec(&self, ino: u64, n: &mut NodeInner) -> FsResult<()> {
        if n.rec_dirty && n.rec.nlink > 0 {
            let mut b = self.meta.batch();
            b.put_inode(ino, &n.rec);
            self.meta.write(b)?;
            n.rec_dirty = false;
        }
        Ok(())
    }

    pub fn fsync(&self, ino: u64) -> FsResult<()> {
        self.flush(ino)?;
        self.sync_all()
    }

    pub(crate) fn extent_rec(
        &self,
        ino: u64,
        index: u64,
        n: &mut NodeInner,
    ) -> FsResult<Option<Arc<ExtentRec>>> {
        if let Some(e) = n.extents.get(&index) {
            return Ok(Some(e.clone()));
        }
        let Some(e) = self.meta.extent(ino, index)? else {
            return Ok(None);
        };
        if n.extents.len() >= NODE_EXTENT_CACHE_MAX {
            n.extents.clear();
        }
        let e = Arc::new(e);
        n.extents.insert(index, e.clone());
        Ok(Some(e))
    }

    pub fn read(&self, ino: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        self.read_as(ino, offset, size, 0).map(|b| b.to_vec())
    }

    /// `read` on behalf of `stream` (a process or handle, for the access analyzer), into a
    /// page-aligned buffer (large reads go straight from the disks into it).
    pub fn read_as(&self, ino: u64, offset: u64, size: u32, stream: u64) -> FsResult<AlignedBuf> {
        self.read_ahead(ino, offset, size);
        let r = self.read_retrying(ino, offset, size);
        if let Ok(d) = &r {
            self.post_access(ino, offset, d.len(), AccessOp::Read, stream);
        }
        r
    }

    fn read_retrying(&self, ino: u64, offset: u64, size: u32) -> FsResult<AlignedBuf> {
        for attempt in 0.. {
            match self.read_once(ino, offset, size) {
                // An extent file replaced by a concurrent commit vanishes under the reader:
                // look the extent up again.
                Err(Errno::ENOENT) if attempt < 3 => {
                    if let Some(node) = self.node(ino) {
                        node.inner.lock().extents.clear();
                    }
                }
                // Still gone after looking again: the data is lost, not the file.
                Err(Errno::ENOENT) => {
                    tracing::error!(ino, offset, "every replica of the data is missing");
                    return Err(Errno::EIO);
                }
                r => return r,
            }
        }
        unreachable!()
    }

    fn read_once(&self, ino: u64, offset: u64, size: u32) -> FsResult<AlignedBuf> {
        let node = self.node(ino).ok_or(Errno::EBADF)?;
        // Plan under the node lock, read disks without it.
        let Some(p) = self.plan_read(ino, &node, offset, size)? else {
            return Ok(AlignedBuf::new(0));
        };
        let out_len = p.out_len;
        // One whole extent read ahead (or all of it before the end of the file): its buffer is
        // the reply. A request for part of an extent leaves the buffer to the next ones.
        if let ([(0, index, e, 0, len)], None) = (&p.plan[..], &p.out) {
            if *len == out_len
                && (e.len as usize == out_len || p.to_eof && e.len as usize > out_len)
            {
                if let Some(buf) = self.ra.get(ino, *index, e.version, true) {
                    // The slot is gone now: a buffer another reader still holds is copied,
                    // not read again.
                    let mut buf = Arc::try_unwrap(buf).unwrap_or_else(|b| AlignedBuf::copy_of(&b));
                    buf.truncate(out_len);
                    self.count_read(out_len);
                    return Ok(buf);
                }
            }
        }
        let mut out = p.out.unwrap_or_else(|| AlignedBuf::new(out_len));
        let bs = self.store.block_size;
        for (at, index, e, start, len) in p.plan {
            let n = len.min(e.len as usize - start);
            let dst = &mut out[at..at + n];
            let last_use = start + n == e.len as usize || p.to_eof && at + n == out_len;
            if let Some(buf) = self.ra.get(ino, index, e.version, last_use) {
                dst.copy_from_slice(&buf[start..start + n]);
                if let Ok(buf) = Arc::try_unwrap(buf) {
                    self.ra.recycle(buf);
                }
                continue;
            }
            let aligned = start % bs == 0 && ((start + n) % bs == 0 || start + n == e.len as usize);
            if aligned && self.read_direct(ino, index, &e, start, dst) {
                continue;
            }
            let data = self.read_extent(ino, index, &e, start, start + len)?;
            out[at..at + data.len()].copy_from_slice(&data);
        }
        self.count_read(out.len());
        Ok(out)
    }

    /// Under the node lock: copies what is buffered (dirty or in flight) into the reply and
    /// lists the extent parts to read from disks; updates atime (relatime). None when the
    /// request starts at or past the end of the file.
    fn plan_read(
        &self,
        ino: u64,
        node: &Node,
        offset: u64,
        size: u32,
    ) -> FsResult<Option<ReadPlan>> {
        let mut n = node.inner.lock();
        if n.rec.kind == Kind::Dir {
            return Err(Errno::EISDIR);
        }
        let end = (offset + u64::from(size)).min(n.rec.size);
        if offset >= end {
            return Ok(None);
        }
        let out_len = (end - offset) as usize;
        let mut p = ReadPlan {
            plan: Vec::new(),
            out: None,
            out_len,
            to_eof: end == n.rec.size,
        };
        for Piece {
            index,
            start,
            len,
            at,
        } in pieces(offset, end, self.extent_size())
        {
            let buffered = n
                .dirty
                .get(&index)
                .map(|b| b.as_slice())
                .or_else(|| n.inflight.get(&index).map(|(_, d)| &d[..]));
            if let Some(buf) = buffered {
                if start < buf.len() {
                    let m = len.min(buf.len() - start);
                    let o = p.out.get_or_insert_with(|| AlignedBuf::new(out_len));
                    o[at..at + m].copy_from_slice(&buf[start..start + m]);
                }
            } else if let Some(e) = self.extent_rec(ino, index, &mut n)? {
                if start < e.len as usize {
                    p.plan.push((at, index, e, start, len));
                }
            }
        }
        // relatime: update atime when it is older than the last change or a day old.
        let now = now_ns();
        let r = &mut n.rec;
        if r.atime_ns <= r.mtime_ns
            || r.atime_ns <= r.ctime_ns
            || now - r.atime_ns > 86_400_000_000_000
        {
            r.atime_ns = now;
            n.rec_dirty = true;
        }
        Ok(Some(p))
    }

    /// Hands back a buffer `read_as` returned, once its data is sent: whole-extent buffers
    /// are reused for read-ahead.
    pub fn recycle(&self, buf: AlignedBuf) {
        if buf.capacity() == crate::store::align_up(self.extent_size() as usize) {
            self.ra.recycle(buf);
        }
    }

    fn count_read(&self, bytes: usize) {
        self.stats
            .bytes_read
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Starts reading ahead when `[offset, offset + size)` continues a sequential stream.
    fn read_ahead(&self, ino: u64, offset: u64, size: u32) {
        let (first, last) = self
            .ra
            .observe(ino, offset, size as usize, self.extent_size());
        if first >= last {
            return;
        }
        let Some(node) = self.node(ino) else {
            return;
        };
        let mut jobs = Vec::new();
        {
            let mut n = node.inner.lock();
            let size = n.rec.size;
            for index in first..last {
                if index * self.extent_size() >= size {
                    break;
                }
                // Buffered data is newer than any extent version on disk.
                if n.dirty.contains_key(&index) || n.inflight.contains_key(&index) {
                    continue;
                }
                if let Ok(Some(e)) = self.extent_rec(ino, index, &mut n) {
                    jobs.push((index, e));
                }
            }
        }
        for (index, rec) in jobs {
            let Some(disk) = self.replica_order(ino, index, &rec).first().map(|d| d.id) else {
                continue;
            };
            if !self.ra.submit(readahead::Job {
                ino,
                index,
                rec,
                disk,
            }) {
                break;
            }
        }
    }

    /// A read-ahead worker's job: the whole extent from its preferred replica, verified. On
    /// any failure the reader takes the usual path (other replicas, repair).
    pub(crate) fn run_read_ahead(&self, job: readahead::Job) {
        let e = &job.rec;
        let mut buf = self.ra.buffer(e.len as usize);
        let ok = self.read_direct(job.ino, job.index, e, 0, &mut buf);
        self.ra
            .complete(job.ino, job.index, e.version, ok.then_some(buf));
    }

    /// Reads `[start, end)` of an extent (clipped to its length) from the first replica that
    /// returns verified data; when none has the whole range, block by block from any replica.
    /// Bad replicas are queued for repair.
    pub(crate) fn read_extent(
        &self,
        ino: u64,
        index: u64,
        e: &ExtentRec,
        start: usize,
        end: usize,
    ) -> FsResult<Vec<u8>> {
        let (buf, bad) = self.read_extent_quiet(ino, index, e, start, end)?;
        for d in bad {
            self.queue_repair(ino, index, e.version, d);
        }
        Ok(buf)
    }

    /// Fast path for block-aligned reads: straight into the caller's buffer from the preferred
    /// replica, verified. False when it failed (the caller takes the general path).
    fn read_direct(
        &self,
        ino: u64,
        index: u64,
        e: &ExtentRec,
        start: usize,
        dst: &mut [u8],
    ) -> bool {
        let id = ExtentId {
            ino,
            index,
            version: e.version,
        };
        // Only the preferred replica: on any failure the general path reads, counts and repairs.
        self.replica_order(ino, index, e).first().is_some_and(|d| {
            self.store
                .read_verified_into(d, &id, &e.sums, start, dst)
                .is_ok()
        })
    }

    /// The live replicas of an extent in the order reads try them; the starting replica
    /// varies with the extent so reads spread over the disks, and lagging disks come last
    /// (a stalled disk holds up only the reads that have no other copy), as do remote disks
    /// whose host does not answer (suspect: each try would wait out a time-out).
    fn replica_order(&self, ino: u64, index: u64, e: &ExtentRec) -> Vec<Arc<crate::store::Disk>> {
        let n = e.replicas.len();
        let first = ((ino ^ index) as usize) % n.max(1);
        let mut order: Vec<_> = (0..n)
            .filter_map(|k| self.store.disk(e.replicas[(first + k) % n]))
            .filter(|d| d.is_up())
            .collect();
        order.sort_by_key(|d| {
            d.is_lagging() || (d.is_remote() && d.state() == crate::meta::DiskState::Suspect)
        });
        order
    }

    /// `read_extent` without queueing repairs: returns the data and the replicas found bad.
    fn read_extent_quiet(
        &self,
        ino: u64,
        index: u64,
        e: &ExtentRec,
        start: usize,
        end: usize,
    ) -> FsResult<(Vec<u8>, Vec<u32>)> {
        let bs = self.store.block_size;
        let len = e.len as usize;
        let end = end.min(len);
        if start >= end {
            return Ok((Vec::new(), Vec::new()));
        }
        let b0 = start / bs * bs;
        let b1 = end.div_ceil(bs).saturating_mul(bs).min(len);
        let id = ExtentId {
            ino,
            index,
            version: e.version,
        };
        let order = self.replica_order(ino, index, e);
        let mut bad: Vec<u32> = Vec::new();
        let mut missing = 0;
        for disk in &order {
            match self.store.read_verified(disk, &id, &e.sums, b0, b1 - b0) {
                Ok(buf) => return Ok((buf[start - b0..end - b0].to_vec(), bad)),
                Err(ReadError::Io(err)) if err.kind() == std::io::ErrorKind::NotFound => {
                    missing += 1;
                    bad.push(disk.id);
                }
                Err(err) => {
                    self.stats
                        .replica_read_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        disk = disk.id,
                        ino,
                        index,
                        version = e.version,
                        "bad replica: {err}"
                    );
                    bad.push(disk.id);
                }
            }
        }
        if missing == bad.len() && missing > 0 {
            // Every replica vanished: most likely replaced by a newer version meanwhile.
            return Err(Errno::ENOENT);
        }
        // No replica has the whole range intact: take each block from any copy that has it.
        let out = self.read_blockwise(&order, &id, &e.sums, b0..b1)?;
        Ok((out[start - b0..end - b0].to_vec(), bad))
    }

    /// Bytes `range` (whole blocks) of the extent, each block from the first replica in
    /// `order` that has it intact.
    fn read_blockwise(
        &self,
        order: &[Arc<Disk>],
        id: &ExtentId,
        sums: &[[u8; 32]],
        range: std::ops::Range<usize>,
    ) -> FsResult<Vec<u8>> {
        let bs = self.store.block_size;
        let mut out = Vec::with_capacity(range.len());
        for b in range.clone().step_by(bs) {
            let blen = bs.min(range.end - b);
            let got = order
                .iter()
                .find_map(|d| self.store.read_verified(d, id, sums, b, blen).ok());
            match got {
                Some(block) => out.extend_from_slice(&block),
                None => {
                    tracing::error!(
                        ino = id.ino,
                        index = id.index,
                        version = id.version,
                        block = b / bs,
                        "no good replica of this block"
                    );
                    return Err(Errno::EIO);
                }
            }
        }
        Ok(out)
    }

    fn queue_repair(&self, ino: u64, index: u64, version: u64, disk: u32) {
        if self
            .repair_tx
            .try_send(RepairReq {
                ino,
                index,
                version,
                disk,
            })
            .is_err()
        {
            self.stats.repairs_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Rewrites a bad copy from a good replica, if the extent still has that version.
    pub(crate) fn repair(&self, req: &RepairReq) {
        let res = (|| -> anyhow::Result<bool> {
            let Some(e) = self.meta.extent(req.ino, req.index)? else {
                return Ok(false);
            };
            if e.version != req.version || !e.replicas.contains(&req.disk) {
                return Ok(false);
            }
            let data = self
                .read_good_copy(req.ino, req.index, &e)
                .ok_or_else(|| anyhow::anyhow!("no good replica"))?;
            let disk = self
                .store
                .disk(req.disk)
                .ok_or_else(|| anyhow::anyhow!("disk gone"))?;
            let id = ExtentId {
                ino: req.ino,
                index: req.index,
                version: e.version,
            };
            let fence = (e.shard, self.shard(e.shard).epoch);
            self.store.rewrite_extent(&disk, &id, &data, fence)?;
            Ok(true)
        })();
        match res {
            Ok(true) => {
                self.stats.repairs_done.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    disk = req.disk,
                    ino = req.ino,
                    index = req.index,
                    "replica repaired"
                );
            }
            Ok(false) => {}
            Err(e) => {
                self.stats.repairs_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    disk = req.disk,
                    ino = req.ino,
                    index = req.index,
                    "repair failed: {e:#}"
                );
            }
        }
    }

    /// The whole extent, verified (assembled block by block from all replicas if need be).
    pub(crate) fn read_good_copy(&self, ino: u64, index: u64, e: &ExtentRec) -> Option<Vec<u8>> {
        self.read_extent_quiet(ino, index, e, 0, e.len as usize)
            .ok()
            .map(|(b, _)| b)
    }

    /// Data for copying an extent to another disk (migration, evacuation): a good copy,
    /// checked against the extent's checksums before anything is written with it.
    /// Ok(None): no replica is readable.
    pub(crate) fn copy_source(
        &self,
        ino: u64,
        index: u64,
        e: &ExtentRec,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        let Some(data) = self.read_good_copy(ino, index, e) else {
            return Ok(None);
        };
        let sums = block_sums(&data, self.store.block_size);
        anyhow::ensure!(sums == e.sums, "copy of {ino}:{index} does not verify");
        Ok(Some(data))
    }

    /// A write with the handle's open flags (O_APPEND as opened).
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<usize> {
        self.write_as(fh, offset, data, fh | 1 << 63, None)
    }

    /// `write` on behalf of `stream` (a process or handle, for the access analyzer).
    /// `append`: whether this write appends, from the write's own flags (fcntl can change
    /// O_APPEND after open; page-cache writeback never appends); None: as the handle was
    /// opened.
    pub fn write_as(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        stream: u64,
        append: Option<bool>,
    ) -> FsResult<usize> {
        let r = self.write_inner(fh, offset, data, append);
        if let Ok((ino, at)) = r {
            self.post_access(ino, at, data.len(), AccessOp::Write, stream);
        }
        r.map(|_| data.len())
    }

    /// Returns the inode and the offset written (O_APPEND moves it to the end).
    fn write_inner(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        append: Option<bool>,
    ) -> FsResult<(u64, u64)> {
        self.growable()?;
        let (ino, append) = {
            let h = self.handles.lock();
            let h = h.get(&fh).ok_or(Errno::EBADF)?;
            (h.ino, append.unwrap_or(h.append))
        };
        let node = self.node(ino).ok_or(Errno::EBADF)?;
        let es = self.extent_size();
        let mut jobs = Vec::new();
        let mut n = node.inner.lock();
        let offset = if append { n.rec.size } else { offset };
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        if end > FILE_SIZE_MAX {
            return Err(Errno::EFBIG);
        }
        // Hand-offs go to the committers after the node lock is released (they need it).
        let res = (|| -> FsResult<()> {
            for piece in pieces(offset, end, es) {
                let src = &data[piece.at..piece.at + piece.len];
                self.write_piece(ino, &node, &mut n, &piece, src, &mut jobs)?;
            }
            self.stats
                .bytes_written
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            if self.dirty_bytes.load(Ordering::Relaxed) > self.opts.dirty_bytes_max {
                self.commit_all(ino, &mut n)?;
            }
            Ok(())
        })();
        drop(n);
        for job in jobs {
            self.send_job(job);
        }
        res?;
        Ok((ino, offset))
    }

    /// One extent's part of a write, under the node lock: a whole extent is committed (or
    /// handed to a committer, in `jobs`) straight from `src`; a part goes to the extent's dirty
    /// buffer, committed once the write reaches the extent's end.
    fn write_piece(
        &self,
        ino: u64,
        node: &Arc<Node>,
        n: &mut NodeInner,
        piece: &Piece,
        src: &[u8],
        jobs: &mut Vec<CommitJob>,
    ) -> FsResult<()> {
        let es = self.extent_size();
        let (index, start, len) = (piece.index, piece.start, piece.len);
        let stop = index * es + (start + len) as u64;
        let now = now_ns();
        // The size covers the data before it is committed, so no extent lies past the end.
        n.rec.size = n.rec.size.max(stop);
        n.rec.mtime_ns = now;
        n.rec.ctime_ns = now;
        n.rec_dirty = true;
        if start == 0 && len == es as usize && !n.dirty.contains_key(&index) {
            // A whole extent: commit it straight from the request, no buffering.
            if self.async_commits() {
                let buf = Arc::new(AlignedBuf::copy_of(src));
                jobs.push(self.hand_off(ino, node, n, index, buf)?);
                self.dirty_bytes.fetch_add(len as u64, Ordering::Relaxed);
            } else {
                self.commit(ino, n, &[index], None, Some(src))?;
            }
            return Ok(());
        }
        if !n.dirty.contains_key(&index) {
            let buf = self.load_for_write(ino, index, start, len, n)?;
            self.dirty_bytes
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
            n.dirty.insert(index, buf);
        }
        let buf = n.dirty.get_mut(&index).expect("inserted above");
        if buf.len() < start + len {
            self.dirty_bytes
                .fetch_add((start + len - buf.len()) as u64, Ordering::Relaxed);
            buf.resize(start + len, 0);
        }
        buf[start..start + len].copy_from_slice(src);
        // A write that reaches the end of an extent most likely moves on: commit it now.
        if start + len == es as usize {
            if self.async_commits() {
                let buf = Arc::new(AlignedBuf::copy_of(&n.dirty[&index]));
                // The buffer leaves `dirty` only once the job exists (a failed version
                // allocation leaves it dirty).
                jobs.push(self.hand_off(ino, node, n, index, buf)?);
                n.dirty.remove(&index);
            } else {
                self.commit(ino, n, &[index], None, None)?;
            }
        }
        Ok(())
    }

    /// The current contents of an extent about to be partly overwritten.
    fn load_for_write(
        &self,
        ino: u64,
        index: u64,
        start: usize,
        len: usize,
        n: &mut NodeInner,
    ) -> FsResult<Vec<u8>> {
        if let Some((_, data)) = n.inflight.get(&index) {
            return Ok(data.to_vec());
        }
        let Some(e) = self.extent_rec(ino, index, n)? else {
            return Ok(Vec::new());
        };
        if start == 0 && len >= e.len as usize {
            return Ok(Vec::new());
        }
        let mut buf = self.read_extent(ino, index, &e, 0, e.len as usize)?;
        // Bytes past the file size are never visible; drop them.
        let keep = n
            .rec
            .size
            .saturating_sub(index * self.extent_size())
            .min(buf.len() as u64);
        buf.truncate(keep as usize);
        Ok(buf)
    }

    pub(crate) fn commit_all(&self, ino: u64, n: &mut NodeInner) -> FsResult<()> {
        if n.dirty.is_empty() {
            return Ok(());
        }
        let idx: Vec<u64> = n.dirty.keys().copied().collect();
        self.commit(ino, n, &idx, None, None)
    }

    /// Writes the dirty buffers `indices` as new extent versions on every live replica of
    /// their shards, then switches the metadata in one batch (with `extra` changes and the
    /// inode), then removes the old versions.
    /// `direct` is the data of the single index in `indices` when it is not buffered.
    pub(crate) fn commit(
        &self,
        ino: u64,
        n: &mut NodeInner,
        indices: &[u64],
        extra: Option<Batch<'_>>,
        direct: Option<&[u8]>,
    ) -> FsResult<()> {
        debug_assert!(direct.is_none() || indices.len() == 1);
        let mut batch = extra.unwrap_or_else(|| self.meta.batch());
        let new_recs = self.write_versions(ino, n, indices, direct)?;
        let mut written: Vec<(u64, ExtentRec)> = Vec::new();
        let mut old: Vec<(u64, Arc<ExtentRec>)> = Vec::new();
        for (index, rec) in new_recs {
            if let Some(prev) = self.extent_rec(ino, index, n)? {
                old.push((index, prev));
            }
            batch.put_extent(ino, index, &rec);
            written.push((index, rec));
        }
        // Empty buffers (a truncation to an extent boundary) just delete the extent.
        for &index in indices {
            if n.dirty.get(&index).is_some_and(|d| d.is_empty()) {
                if let Some(prev) = self.extent_rec(ino, index, n)? {
                    old.push((index, prev));
                }
                batch.del_extent(ino, index);
            }
        }
        let mut alloc = n.rec.alloc as i64;
        for (_, rec) in &written {
            alloc += i64::from(rec.len);
        }
        for (_, prev) in &old {
            alloc -= i64::from(prev.len);
        }
        let alloc_before = n.rec.alloc;
        n.rec.alloc = alloc.max(0) as u64;
        batch.put_inode(ino, &n.rec);
        for (index, rec) in &written {
            self.mark_unsynced(extent_files(ino, *index, rec));
        }
        if let Err(e) = self.meta.write(batch) {
            n.rec.alloc = alloc_before;
            for (index, rec) in &written {
                self.remove_version(ino, *index, rec);
            }
            return Err(e.into());
        }
        n.rec_dirty = false;
        for &index in indices {
            if let Some(d) = n.dirty.remove(&index) {
                self.dirty_bytes
                    .fetch_sub(d.len() as u64, Ordering::Relaxed);
            }
            n.extents.remove(&index);
        }
        for (index, rec) in written {
            n.extents.insert(index, Arc::new(rec));
            self.stats.extents_committed.fetch_add(1, Ordering::Relaxed);
        }
        for (index, prev) in old {
            self.remove_version(ino, index, &prev);
        }
        Ok(())
    }

    /// Writes a new version of each extent in `indices` (from `direct`, else its dirty
    /// buffer) to its replicas. On an error the buffers stay dirty and the files of the
    /// versions written so far are removed: no record names them yet.
    fn write_versions(
        &self,
        ino: u64,
        n: &NodeInner,
        indices: &[u64],
        direct: Option<&[u8]>,
    ) -> FsResult<Vec<(u64, ExtentRec)>> {
        let mut new_recs: Vec<(u64, ExtentRec)> = Vec::new();
        let mut write_one = |index: u64, data: &[u8]| -> FsResult<()> {
            let version = self.meta.alloc_version()?;
            if let Some(rec) = self.write_extent_version(ino, index, version, data, true)? {
                new_recs.push((index, rec));
            }
            Ok(())
        };
        let mut res = Ok(());
        for &index in indices {
            if let Some(data) = direct.or_else(|| n.dirty.get(&index).map(|d| d.as_slice())) {
                res = write_one(index, data);
                if res.is_err() {
                    break;
                }
            }
        }
        if let Err(e) = res {
            for (index, rec) in new_recs {
                self.remove_version(ino, index, &rec);
            }
            return Err(e);
        }
        Ok(new_recs)
    }

    pub(crate) fn remove_version(&self, ino: u64, index: u64, rec: &ExtentRec) {
        for (d, id) in extent_files(ino, index, rec) {
            self.reap(d, id);
        }
    }

    /// Writes the extent file on each disk, in parallel threads when asked and useful.
    /// Remote replicas are always written in parallel (each waits for a network round trip).
    fn write_replicas(
        &self,
        disks: &[Arc<Disk>],
        (id, fence): (&ExtentId, crate::store::ShardEpoch),
        (data, sums): (&[u8], &[[u8; 32]]),
        parallel: bool,
    ) -> Vec<(u32, std::io::Result<()>)> {
        let parallel = parallel || disks.iter().any(|d| d.is_remote());
        let write = |d: &Arc<Disk>| {
            let r = self
                .store
                .write_extent_summed(d, id, (data, Some(sums)), fence);
            (d.id, r)
        };
        if disks.len() == 1 || !parallel {
            return disks.iter().map(write).collect();
        }
        std::thread::scope(|s| {
            let hs: Vec<_> = disks.iter().map(|d| s.spawn(move || write(d))).collect();
            hs.into_iter()
                .map(|h| h.join().expect("replica writer"))
                .collect()
        })
    }

    /// Writes one new version of an extent to the live disks of its shard (the replicas in
    /// parallel when `parallel`; committer threads are already parallel among themselves).
    /// Returns None for an empty buffer (nothing to store).
    pub(crate) fn write_extent_version(
        &self,
        ino: u64,
        index: u64,
        version: u64,
        data: &[u8],
        parallel: bool,
    ) -> FsResult<Option<ExtentRec>> {
        if data.is_empty() {
            return Ok(None);
        }
        assert!(
            data.len() as u64 <= self.extent_size(),
            "extent buffer larger than the extent size"
        );
        let shard = self.home_shard(ino, index);
        let placement = self.shard(shard);
        let disks = self.live_disks(&placement.disks);
        if disks.is_empty() {
            tracing::error!(shard, "no live disk to write to");
            return Err(Errno::EIO);
        }
        let id = ExtentId {
            ino,
            index,
            version,
        };
        let sums = block_sums(data, self.store.block_size);
        debug_assert_eq!(sums.len(), data.len().div_ceil(self.store.block_size));
        let fence = (shard, placement.epoch);
        let results = self.write_replicas(&disks, (&id, fence), (data, &sums), parallel);
        let mut replicas = Vec::new();
        let mut nospace = false;
        for (d, r) in results {
            match r {
                Ok(()) => replicas.push(d),
                Err(e) => nospace |= e.raw_os_error() == Some(libc::ENOSPC),
            }
        }
        if replicas.is_empty() {
            return Err(if nospace { Errno::ENOSPC } else { Errno::EIO });
        }
        if replicas.len() < self.cfg.replicas as usize {
            self.stats.degraded_writes.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                ino,
                index,
                "extent committed with {} of {} replicas",
                replicas.len(),
                self.cfg.replicas
            );
        }
        Ok(Some(ExtentRec {
            version,
            len: data.len() as u32,
            shard,
            replicas,
            sums,
        }))
    }

    /// Sets the size of a file (caller holds a node reference). Shrinking drops whole extents
    /// past the end and rewrites the boundary extent, all in one metadata batch; if anything
    /// fails (the boundary extent unreadable, its rewrite refused) nothing changes.
    pub(crate) fn set_size(&self, ino: u64, n: &mut NodeInner, size: u64) -> FsResult<()> {
        if size > FILE_SIZE_MAX {
            return Err(Errno::EFBIG);
        }
        let es = self.extent_size();
        if size >= n.rec.size {
            n.rec.size = size;
            n.rec_dirty = true;
            return Ok(());
        }
        let keep_extents = size.div_ceil(es);
        // Everything that can fail before anything changes.
        let (doomed, gone) = self.extents_from(ino, n, keep_extents)?;
        let boundary = self.boundary_read(ino, n, size)?;
        let saved = (n.rec.size, n.rec.alloc, n.rec_dirty);
        let mut batch = self.meta.batch();
        for i in doomed {
            batch.del_extent(ino, i);
        }
        for (_, e) in &gone {
            n.rec.alloc = n.rec.alloc.saturating_sub(u64::from(e.len));
        }
        n.rec.size = size;
        n.rec_dirty = true;
        let (aside, indices, inserted) = self.set_tail_aside(n, size, boundary);
        match self.commit(ino, n, &indices, Some(batch), None) {
            Ok(()) => {
                let bytes: usize = aside.iter().map(|(_, d)| d.len()).sum();
                self.dirty_bytes.fetch_sub(bytes as u64, Ordering::Relaxed);
                for (i, e) in gone {
                    n.extents.remove(&i);
                    self.remove_version(ino, i, &e);
                }
                Ok(())
            }
            Err(e) => {
                self.undo_shrink(n, saved, aside, inserted);
                Err(e)
            }
        }
    }

    /// Extents of the file from `first` on: their indices, and the records of those that
    /// exist (their versions are removed once the shrink is committed).
    #[allow(clippy::type_complexity)]
    fn extents_from(
        &self,
        ino: u64,
        n: &mut NodeInner,
        first: u64,
    ) -> FsResult<(Vec<u64>, Vec<(u64, Arc<ExtentRec>)>)> {
        let mut doomed = Vec::new();
        self.meta.extents_of(ino, first, |i, _| {
            doomed.push(i);
            true
        })?;
        let mut gone = Vec::new();
        for i in &doomed {
            if let Some(e) = self.extent_rec(ino, *i, n)? {
                gone.push((*i, e));
            }
        }
        Ok((doomed, gone))
    }

    /// Dirty buffers past the new end (whole ones, and the boundary's tail) leave the node
    /// only if the shrink commits; until then they are kept aside. A boundary read from
    /// disk becomes the boundary's dirty buffer. Returns (aside, boundary index to commit,
    /// the index inserted).
    #[allow(clippy::type_complexity)]
    fn set_tail_aside(
        &self,
        n: &mut NodeInner,
        size: u64,
        boundary: Option<Vec<u8>>,
    ) -> (Vec<(u64, Vec<u8>)>, Vec<u64>, Option<u64>) {
        let es = self.extent_size();
        let mut aside: Vec<(u64, Vec<u8>)> = Vec::new();
        let drop_dirty: Vec<u64> = n
            .dirty
            .range(size.div_ceil(es)..)
            .map(|(i, _)| *i)
            .collect();
        for i in drop_dirty {
            aside.push((i, n.dirty.remove(&i).expect("listed")));
        }
        let mut indices = Vec::new();
        let mut inserted = None;
        if size.is_multiple_of(es) {
            return (aside, indices, inserted);
        }
        let index = size / es;
        let keep = (size % es) as usize;
        match boundary {
            Some(buf) => {
                self.dirty_bytes
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
                n.dirty.insert(index, buf);
                indices.push(index);
                inserted = Some(index);
            }
            None => {
                if let Some(d) = n.dirty.get_mut(&index) {
                    if d.len() > keep {
                        aside.push((index, d.split_off(keep)));
                    }
                    indices.push(index);
                }
            }
        }
        (aside, indices, inserted)
    }

    /// The boundary extent's kept bytes when a shrink to `size` must rewrite it from disk
    /// (it is not buffered and holds bytes past `size`).
    fn boundary_read(&self, ino: u64, n: &mut NodeInner, size: u64) -> FsResult<Option<Vec<u8>>> {
        let es = self.extent_size();
        let (index, keep) = (size / es, (size % es) as usize);
        if keep == 0 || n.dirty.contains_key(&index) {
            return Ok(None);
        }
        match self.extent_rec(ino, index, n)? {
            Some(e) if e.len as usize > keep => {
                Ok(Some(self.read_extent(ino, index, &e, 0, keep)?))
            }
            _ => Ok(None),
        }
    }

    /// Puts a node back as it was before a shrink whose commit failed: the attributes, the
    /// buffers set aside, and no boundary buffer read from disk (`inserted`) left behind.
    fn undo_shrink(
        &self,
        n: &mut NodeInner,
        saved: (u64, u64, bool),
        aside: Vec<(u64, Vec<u8>)>,
        inserted: Option<u64>,
    ) {
        (n.rec.size, n.rec.alloc, n.rec_dirty) = saved;
        if let Some(d) = inserted.and_then(|i| n.dirty.remove(&i)) {
            self.dirty_bytes
                .fetch_sub(d.len() as u64, Ordering::Relaxed);
        }
        // Bytes set aside were never taken off `dirty_bytes`.
        for (i, tail) in aside {
            match n.dirty.get_mut(&i) {
                Some(d) => d.extend_from_slice(&tail),
                None => {
                    n.dirty.insert(i, tail);
                }
            }
        }
    }

    /// Removes an inode with no links and no users: metadata first (one batch), then files.
    pub(crate) fn delete_inode(&self, ino: u64) -> FsResult<()> {
        let mut b = self.meta.batch();
        let exts = self.delete_inode_into(ino, &mut b)?;
        self.meta.write(b)?;
        self.remove_versions(ino, exts);
        Ok(())
    }

    /// Adds the removal of an inode's records to `b`; returns the extents whose files must be
    /// removed once `b` is written.
    pub(crate) fn delete_inode_into(
        &self,
        ino: u64,
        b: &mut Batch<'_>,
    ) -> FsResult<Vec<(u64, ExtentRec)>> {
        let mut exts = Vec::new();
        self.meta.extents_of(ino, 0, |i, e| {
            exts.push((i, e));
            true
        })?;
        for (i, _) in &exts {
            b.del_extent(ino, *i);
        }
        for (name, _) in self.meta.xattrs_of(ino)? {
            b.del_xattr(ino, &name);
        }
        b.del_inode(ino);
        b.del_orphan(ino);
        Ok(exts)
    }

    pub(crate) fn remove_versions(&self, ino: u64, exts: Vec<(u64, ExtentRec)>) {
        for (i, e) in exts {
            self.remove_version(ino, i, &e);
        }
    }

    /// fallocate: mode 0 extends the size (checking there is room); KEEP_SIZE only checks room.
    pub fn fallocate(&self, ino: u64, offset: u64, length: u64, mode: i32) -> FsResult<()> {
        self.growable()?;
        if mode & !libc::FALLOC_FL_KEEP_SIZE != 0 {
            return Err(Errno::EOPNOTSUPP);
        }
        let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
        let need = length.saturating_mul(u64::from(self.cfg.replicas));
        let st = self.statfs();
        if need > st.free_bytes.saturating_mul(u64::from(self.cfg.replicas)) {
            return Err(Errno::ENOSPC);
        }
        if mode & libc::FALLOC_FL_KEEP_SIZE != 0 {
            return Ok(());
        }
        let node = self.acquire(ino)?;
        let res = (|| {
            let mut n = node.inner.lock();
            if n.rec.kind != Kind::File {
                return Err(Errno::EINVAL);
            }
            if end > n.rec.size {
                Self::wait_inflight(&node, &mut n)?;
                self.set_size(ino, &mut n, end)?;
                n.rec.ctime_ns = now_ns();
                n.rec.mtime_ns = n.rec.ctime_ns;
                self.persist_rec(ino, &mut n)?;
            }
            Ok(())
        })();
        drop(node);
        self.release_node(ino)?;
        res
    }
}
