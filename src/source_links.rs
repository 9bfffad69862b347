//! A cluster pool's recovery connections, made before a failure (as the agents' plan and
//! buffers are): for every storage host the plan names as a copy target, the hosts it
//! would pull from (the other replicas of those shards) are asked to be connected now
//! (`RemoteIo::prepare_pulls`, the extent service's `Connect`), so the first copy after a
//! failure does not wait for a connection and its handshake.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::fs::Fs;
use crate::store::RemoteIo;

/// target host -> the source hosts its planned copies pull from.
type Wanted = BTreeMap<u32, BTreeSet<u32>>;

/// While some wanted connection is missing (a host restarted or did not answer), asked
/// again at most this often.
const RETRY_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct SourceLinks {
    /// What was last asked for, and when (asked again when the plan's hosts change, or
    /// after `RETRY_INTERVAL` while connections are missing).
    asked: Mutex<(Wanted, Option<Instant>)>,
    /// One preparation at a time, on its own thread.
    busy: Arc<AtomicBool>,
    /// Connections the target hosts hold to their sources, as they last answered.
    ready: Arc<AtomicU64>,
    /// Pairs (target host, source host) the plan wants.
    wanted: AtomicU64,
}

impl SourceLinks {
    pub fn ready(&self) -> u64 {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn wanted(&self) -> u64 {
        self.wanted.load(Ordering::Relaxed)
    }

    /// After a plan: `targets` maps (shard, failing disk) to the disk its copy goes to.
    /// Does nothing on a single-host pool (no remote disk).
    pub fn prepare(&self, fs: &Fs, targets: &HashMap<(u32, u32), u32>) {
        let remote: HashMap<u32, Arc<dyn RemoteIo>> = fs
            .store
            .disks()
            .into_iter()
            .filter(|d| d.accepts_data())
            .filter_map(|d| Some((d.id, d.remote.clone()?)))
            .collect();
        if remote.is_empty() {
            return;
        }
        let want = wanted(fs, targets, &remote);
        let pairs: u64 = want.values().map(|s| s.len() as u64).sum();
        self.wanted.store(pairs, Ordering::Relaxed);
        {
            let asked = self.asked.lock();
            let missing =
                self.ready() < pairs && asked.1.is_none_or(|t| t.elapsed() >= RETRY_INTERVAL);
            if (asked.0 == want && !missing) || self.busy.swap(true, Ordering::AcqRel) {
                return;
            }
        }
        *self.asked.lock() = (want.clone(), Some(Instant::now()));
        // One disk per host stands for it (a host's disks share its connections).
        let mut by_host: HashMap<u32, Arc<dyn RemoteIo>> = HashMap::new();
        for r in remote.values() {
            by_host.entry(r.host()).or_insert_with(|| r.clone());
        }
        let (busy, ready) = (self.busy.clone(), self.ready.clone());
        let spawned = std::thread::Builder::new()
            .name("source-links".into())
            .spawn(move || {
                let mut n = 0;
                for (t, srcs) in &want {
                    let srcs: Vec<Arc<dyn RemoteIo>> = srcs
                        .iter()
                        .filter_map(|h| by_host.get(h).cloned())
                        .collect();
                    match by_host.get(t).map(|d| d.prepare_pulls(&srcs)) {
                        Some(Ok(k)) => n += u64::from(k),
                        Some(Err(e)) => tracing::debug!(host = t, "recovery links: {e}"),
                        None => {}
                    }
                }
                ready.store(n, Ordering::Relaxed);
                busy.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.busy.store(false, Ordering::Release);
            self.asked.lock().1 = None;
        }
    }
}

/// For each target host of the plan, the other hosts holding replicas of its shards.
fn wanted(
    fs: &Fs,
    targets: &HashMap<(u32, u32), u32>,
    remote: &HashMap<u32, Arc<dyn RemoteIo>>,
) -> Wanted {
    let table = fs.shard_table();
    let host = |d: &u32| remote.get(d).map(|r| r.host());
    let mut want = Wanted::new();
    for ((shard, failing), target) in targets {
        let (Some(s), Some(t)) = (table.get(*shard as usize), host(target)) else {
            continue;
        };
        for h in s.disks.iter().filter(|d| *d != failing).filter_map(host) {
            if h != t {
                want.entry(t).or_default().insert(h);
            }
        }
    }
    want
}
