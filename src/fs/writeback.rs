//! Write-behind: complete extents are committed by committer threads while the writer goes
//! on. Versions are allocated at hand-off, so commits of one extent apply in hand-off order
//! whatever order the committers finish in; a handed-off extent stays readable in the node's
//! `inflight` map until committed.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::MutexGuard;

use super::{extent_files, CommitJob, Fs, FsResult, Node, NodeInner};
use crate::store::AlignedBuf;

impl Fs {
    pub(crate) fn async_commits(&self) -> bool {
        self.commit_tx.get().is_some()
    }

    /// Moves a complete extent buffer to the committers: it gets its version now (so commits
    /// of one extent are ordered by when they were handed off) and stays readable in
    /// `inflight` until committed.
    pub(crate) fn hand_off(
        &self,
        ino: u64,
        node: &Arc<Node>,
        n: &mut NodeInner,
        index: u64,
        data: Arc<AlignedBuf>,
    ) -> FsResult<CommitJob> {
        let version = self.meta.alloc_version()?;
        n.inflight.insert(index, (version, data.clone()));
        n.inflight_count += 1;
        Ok(CommitJob {
            ino,
            index,
            version,
            data,
            node: node.clone(),
        })
    }

    pub(crate) fn send_job(&self, job: CommitJob) {
        // Blocks when the queue is full: back-pressure on writers, bounded memory.
        if let Err(e) = self.commit_tx.get().expect("committers running").send(job) {
            self.run_job(e.0, false);
        }
    }

    /// Committer side: write the replicas without any lock, then switch the metadata under
    /// the node lock unless a newer version of the extent got there first. `parallel`
    /// writes the replicas at once (a flush waiting on one job; committers are already
    /// parallel among themselves).
    pub(crate) fn run_job(&self, job: CommitJob, parallel: bool) {
        // A panic while writing the replicas fails this commit like an I/O error (the data
        // goes back into the buffers): the committer thread and the writer waiting go on.
        let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::supervise::fault_point("commit");
            self.write_extent_version(job.ino, job.index, job.version, &job.data, parallel)
        }))
        .unwrap_or_else(|e| {
            crate::supervise::caught(&e, &format!("commit of {}:{}", job.ino, job.index));
            Err(super::Errno::EIO)
        });
        let mut n = job.node.inner.lock();
        let len = job.data.len() as u64;
        let latest = n.inflight.get(&job.index).map(|(v, _)| *v) == Some(job.version);
        if latest {
            n.inflight.remove(&job.index);
        }
        let res = res.and_then(|rec| {
            let rec = rec.expect("hand-offs are never empty");
            let cur = self.extent_rec(job.ino, job.index, &mut n)?;
            if cur.as_ref().is_some_and(|c| c.version > job.version) {
                self.remove_version(job.ino, job.index, &rec);
                return Ok(());
            }
            let mut b = self.meta.batch();
            b.put_extent(job.ino, job.index, &rec);
            let old_len = cur.as_ref().map_or(0, |c| u64::from(c.len));
            n.rec.alloc = (n.rec.alloc + u64::from(rec.len)).saturating_sub(old_len);
            b.put_inode(job.ino, &n.rec);
            self.mark_unsynced(extent_files(job.ino, job.index, &rec));
            if let Err(e) = self.meta.write(b) {
                self.remove_version(job.ino, job.index, &rec);
                n.rec.alloc = (n.rec.alloc + old_len).saturating_sub(u64::from(rec.len));
                return Err(e.into());
            }
            n.rec_dirty = false;
            self.stats.extents_committed.fetch_add(1, Ordering::Relaxed);
            n.extents.insert(job.index, Arc::new(rec));
            if let Some(c) = cur {
                self.remove_version(job.ino, job.index, &c);
            }
            Ok(())
        });
        if let Err(e) = res {
            tracing::error!(
                ino = job.ino,
                index = job.index,
                "background commit failed: errno {}",
                e.0
            );
            // Keep the data: back into the buffers (unless newer data is there) and report
            // the error at the next flush or fsync.
            n.async_err = Some(e);
            if latest && !n.dirty.contains_key(&job.index) {
                n.dirty.insert(job.index, job.data.to_vec());
                self.dirty_bytes.fetch_add(len, Ordering::Relaxed);
            }
        }
        self.dirty_bytes.fetch_sub(len, Ordering::Relaxed);
        n.inflight_count -= 1;
        drop(n);
        job.node.cv.notify_all();
    }

    /// Waits until the node's handed-off extents are committed; returns (and clears) the
    /// error of a failed background commit.
    pub(crate) fn wait_inflight(node: &Node, n: &mut MutexGuard<'_, NodeInner>) -> FsResult<()> {
        while n.inflight_count > 0 {
            node.cv.wait(n);
        }
        match n.async_err.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
