//! The data barrier behind every WAL sync, on one sync worker per disk: a disk that stalls
//! delays only the extent versions that have no durable copy on another disk.
//!
//! Invariant kept: when the barrier returns Ok, every extent version registered before it
//! started has at least one replica whose file is durable (fdatasync of the file, fsync of its
//! bucket directory). Replicas still syncing on a lagging disk are waited for until that
//! disk's sync has run `LAGGARD_WAIT` (a disk already that late is not waited for at all),
//! then left to their worker: a power cut before it finishes leaves a copy that fails its
//! checksum, which reads skip and repair, as for any bad replica.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::store::{ExtentId, Store};
use crate::util::mono_us;

/// How long a barrier whose versions all have a durable copy still waits for the other
/// replicas (a healthy disk finishes in milliseconds; a stalled one is left behind).
const LAGGARD_WAIT: Duration = Duration::from_millis(300);
/// How often a barrier looks again at workers busy with another barrier's files.
const BUSY_POLL: Duration = Duration::from_millis(2);

pub(crate) type Unsynced = Arc<Mutex<Pending>>;

/// The extent files named (or about to be) by metadata batches and not yet durable.
#[derive(Default)]
pub(crate) struct Pending {
    files: HashSet<(u32, ExtentId)>,
    /// Versions with a durable copy whose other copies are still registered (a barrier
    /// that finds only their lagging copies does not wait for them).
    anchored: HashSet<ExtentId>,
}

impl Pending {
    pub(crate) fn extend(&mut self, files: impl IntoIterator<Item = (u32, ExtentId)>) {
        self.files.extend(files);
    }
    pub(crate) fn len(&self) -> usize {
        self.files.len()
    }
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
    fn contains(&self, f: &(u32, ExtentId)) -> bool {
        self.files.contains(f)
    }
    /// `files` are durable: no longer registered, and their versions have a copy.
    fn synced(&mut self, files: &[(u32, ExtentId)], disks: &[u32]) {
        for f in files {
            self.files.remove(f);
            self.anchored.insert(f.1);
        }
        for (_, id) in files {
            if !disks.iter().any(|d| self.files.contains(&(*d, *id))) {
                self.anchored.remove(id);
            }
        }
    }
    /// A file on a disk that is gone: forgotten (its copy does not count).
    fn drop_file(&mut self, f: &(u32, ExtentId), disks: &[u32]) {
        self.files.remove(f);
        if !disks.iter().any(|d| self.files.contains(&(*d, f.1))) {
            self.anchored.remove(&f.1);
        }
    }
}

struct Worker {
    tx: SyncSender<Job>,
    /// Set by the barrier that hands it a job, cleared by the worker when the job is done:
    /// one job per disk at a time, so a stalled disk never collects a queue.
    busy: Arc<AtomicBool>,
    /// When the current job was handed over (`mono_us`), while `busy`.
    since_us: AtomicU64,
}

struct Job {
    files: Vec<(u32, ExtentId)>,
    done: SyncSender<(u32, Option<std::io::Error>)>,
}

pub(crate) struct Barrier {
    store: Arc<Store>,
    unsynced: Unsynced,
    workers: Mutex<HashMap<u32, Arc<Worker>>>,
}

impl Barrier {
    pub(crate) fn new(store: Arc<Store>, unsynced: Unsynced) -> Barrier {
        Barrier {
            store,
            unsynced,
            workers: Mutex::new(HashMap::new()),
        }
    }

    /// The barrier (see the module doc). Files on disks that are failed or gone are dropped
    /// (their copies do not count). Fails when some version has no durable copy because
    /// every disk holding it failed to sync. Returns how many files it found registered.
    pub(crate) fn run(&self) -> anyhow::Result<usize> {
        let Some(mut by_disk) = self.pending() else {
            return Ok(0);
        };
        let count = by_disk.values().map(Vec::len).sum();
        let mut versions: HashMap<ExtentId, Vec<u32>> = HashMap::new();
        for (d, ids) in &by_disk {
            for id in ids {
                versions.entry(*id).or_default().push(*d);
            }
        }
        let (tx, rx) = sync_channel(by_disk.len());
        let mut failed: HashMap<u32, std::io::Error> = HashMap::new();
        let mut running: HashSet<u32> = HashSet::new();
        let start = Instant::now();
        loop {
            by_disk.retain(|d, ids| !self.try_send(*d, ids, &tx, &mut running));
            let (durable, all) = self.progress(&versions, &failed, &self.lagging());
            if all || (durable && start.elapsed() >= LAGGARD_WAIT) {
                return Ok(count);
            }
            if let Some((d, e)) = self.hopeless(&versions, &failed, &by_disk, &running) {
                anyhow::bail!("disk {d}: {e}");
            }
            let wait = if by_disk.is_empty() {
                LAGGARD_WAIT.saturating_sub(start.elapsed()).max(BUSY_POLL)
            } else {
                BUSY_POLL
            };
            match rx.recv_timeout(wait) {
                Ok((d, e)) => {
                    running.remove(&d);
                    if let Some(e) = e {
                        failed.insert(d, e);
                    }
                }
                Err(_) => continue,
            }
        }
    }

    /// The registered files on readable disks, by disk; the others are dropped.
    fn pending(&self) -> Option<HashMap<u32, Vec<ExtentId>>> {
        let files: Vec<(u32, ExtentId)> = self.unsynced.lock().files.iter().copied().collect();
        if files.is_empty() {
            return None;
        }
        let mut by_disk: HashMap<u32, Vec<ExtentId>> = HashMap::new();
        let mut gone = Vec::new();
        for (d, id) in files {
            if self.store.disk(d).is_some_and(|x| x.is_up()) {
                by_disk.entry(d).or_default().push(id);
            } else {
                gone.push((d, id));
            }
        }
        let disks = self.disk_ids();
        let mut u = self.unsynced.lock();
        for f in &gone {
            u.drop_file(f, &disks);
        }
        Some(by_disk)
    }

    /// Hands disk `d`'s files (those still registered) to its worker if it is idle.
    /// True when nothing is left to hand over for `d`.
    fn try_send(
        &self,
        d: u32,
        ids: &[ExtentId],
        tx: &SyncSender<(u32, Option<std::io::Error>)>,
        running: &mut HashSet<u32>,
    ) -> bool {
        let w = self.worker(d);
        if w.busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        w.since_us.store(mono_us(), Ordering::Release);
        let files: Vec<(u32, ExtentId)> = {
            let u = self.unsynced.lock();
            ids.iter()
                .filter(|id| u.contains(&(d, **id)))
                .map(|id| (d, *id))
                .collect()
        };
        if files.is_empty() {
            w.busy.store(false, Ordering::Release);
            return true;
        }
        let job = Job {
            files,
            done: tx.clone(),
        };
        if w.tx.try_send(job).is_err() {
            // Only if the worker thread is gone: a new one next time.
            w.busy.store(false, Ordering::Release);
            self.workers.lock().remove(&d);
            return false;
        }
        running.insert(d);
        true
    }

    /// (every version has a durable copy, every file is durable or on a failed or lagging
    /// disk).
    fn progress(
        &self,
        versions: &HashMap<ExtentId, Vec<u32>>,
        failed: &HashMap<u32, std::io::Error>,
        lagging: &HashSet<u32>,
    ) -> (bool, bool) {
        let u = self.unsynced.lock();
        let mut durable = true;
        let mut all = true;
        for (id, disks) in versions {
            let mut any = u.anchored.contains(id);
            for d in disks {
                if !u.contains(&(*d, *id)) {
                    any = true;
                } else if !failed.contains_key(d) && !lagging.contains(d) {
                    all = false;
                }
            }
            durable &= any;
        }
        (durable, all && durable)
    }

    /// A version whose every disk failed to sync it (none is still trying): the error.
    fn hopeless(
        &self,
        versions: &HashMap<ExtentId, Vec<u32>>,
        failed: &HashMap<u32, std::io::Error>,
        unsent: &HashMap<u32, Vec<ExtentId>>,
        running: &HashSet<u32>,
    ) -> Option<(u32, String)> {
        let u = self.unsynced.lock();
        versions.iter().find_map(|(id, disks)| {
            let lost = !u.anchored.contains(id)
                && disks.iter().all(|d| {
                    u.contains(&(*d, *id))
                        && failed.contains_key(d)
                        && !running.contains(d)
                        && !unsent.contains_key(d)
                });
            lost.then(|| (disks[0], failed[&disks[0]].to_string()))
        })
    }

    /// Disks whose worker has been on one job for `LAGGARD_WAIT` or more.
    fn lagging(&self) -> HashSet<u32> {
        let now = mono_us();
        let wait = LAGGARD_WAIT.as_micros() as u64;
        self.workers
            .lock()
            .iter()
            .filter(|(_, w)| {
                w.busy.load(Ordering::Acquire)
                    && now.saturating_sub(w.since_us.load(Ordering::Acquire)) >= wait
            })
            .map(|(d, _)| *d)
            .collect()
    }

    fn disk_ids(&self) -> Vec<u32> {
        self.store.disks().iter().map(|x| x.id).collect()
    }

    fn worker(&self, d: u32) -> Arc<Worker> {
        let mut ws = self.workers.lock();
        if let Some(w) = ws.get(&d) {
            return w.clone();
        }
        let (tx, rx) = sync_channel::<Job>(1);
        let busy = Arc::new(AtomicBool::new(false));
        let (store, unsynced, b) = (self.store.clone(), self.unsynced.clone(), busy.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("sync-{d}"))
            .spawn(move || sync_worker(d, &store, &unsynced, &b, &rx));
        if let Err(e) = spawned {
            tracing::error!(disk = d, "cannot start a sync worker: {e}");
        }
        let w = Arc::new(Worker {
            tx,
            busy,
            since_us: AtomicU64::new(0),
        });
        ws.insert(d, w.clone());
        w
    }
}

/// Syncs one job at a time; what became durable leaves the registered set.
fn sync_worker(d: u32, store: &Store, unsynced: &Unsynced, busy: &AtomicBool, rx: &Receiver<Job>) {
    while let Ok(job) = rx.recv() {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.sync_extents(&job.files)
        }));
        let err = match r {
            Ok(mut failed) => failed.remove(&d),
            Err(_) => Some(std::io::Error::other("sync worker panicked")),
        };
        if err.is_none() {
            let disks: Vec<u32> = store.disks().iter().map(|x| x.id).collect();
            unsynced.lock().synced(&job.files, &disks);
        }
        busy.store(false, Ordering::Release);
        let _ = job.done.send((d, err));
    }
}
