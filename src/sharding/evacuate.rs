//! Proactive evacuation: replicas move off disks whose failure risk crossed the evacuation
//! threshold, before they fail. Highest-risk shards first, under the migration byte
//! budget; the disk stays readable (it is a source for reads and copies) until each
//! extent's new copy is committed, and then its copy there is removed.
//!
//! Per shard: its placement swaps each evacuating disk for a target chosen by the shared
//! placement rule (`place`), raising the epoch; then every extent of the shard is copied
//! to the target, verified against its checksums, synced, and committed under that epoch
//! (`Fs::commit_installed`, the same fenced commit recovery uses, which drops the copy on
//! the disk that left the placement). A crash midway leaves placements that name disks
//! lacking copies: the recovery scan at start-up completes them. Passes repeat until no
//! extent needs a copy (writes racing with a placement change are caught by the next).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::fs::{Fs, RecoveryCommit};
use crate::placement::{self as place, Candidate};
use crate::placement::{RiskView, UniformRisk};
use crate::store::ExtentId;

/// Copy passes per round; a pass finds extents written while the previous one ran.
const PASSES_MAX: usize = 8;
/// How often the evacuation thread looks for work when nobody wakes it.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Proactive evacuation's state, as `status --json` spells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EvacuationState {
    #[default]
    #[serde(rename = "idle")]
    Idle,
    #[serde(rename = "evacuating")]
    Evacuating,
}

impl EvacuationState {
    pub fn as_str(self) -> &'static str {
        match self {
            EvacuationState::Idle => "idle",
            EvacuationState::Evacuating => "evacuating",
        }
    }
}

impl std::fmt::Display for EvacuationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EvacuationStatus {
    /// idle or evacuating.
    pub state: EvacuationState,
    /// Disks being (or to be) emptied because of their risk.
    pub disks: Vec<u32>,
    /// Of those, disks that no shard and no extent names any more.
    pub evacuated: Vec<u32>,
    pub shards_total: u64,
    pub shards_done: u64,
    pub extents_done: u64,
    /// Extent bytes still on evacuating disks at the start of the round, and copied since.
    pub bytes_total: u64,
    pub bytes_done: u64,
    pub rate_bytes_per_s_max: u64,
    pub rate_bytes_per_s: f64,
    /// Shards no other disk could take (no room, or too few disks below the thresholds).
    pub shards_without_target: Vec<u32>,
    /// Since the mount.
    pub bytes_moved_since_mount: u64,
    pub last_error: Option<String>,
}

pub struct Evacuator {
    fs: Arc<Fs>,
    rate_bytes_per_s: u64,
    chunk_bytes: u64,
    risk: RwLock<Arc<dyn RiskView>>,
    /// Disks to empty (set by the risk service).
    want: Mutex<Vec<u32>>,
    status: Mutex<EvacuationStatus>,
    active: AtomicBool,
    rounds: crate::wake::Rounds,
    /// Recovery has priority: evacuation pauses while this says so.
    busy: Box<dyn Fn() -> bool + Send + Sync>,
}

/// One extent to copy: (ino, index, bytes).
type Item = (u64, u64, u64);

impl Evacuator {
    pub fn new(
        fs: Arc<Fs>,
        rate_bytes_per_s: u64,
        chunk_bytes: u64,
        busy: Box<dyn Fn() -> bool + Send + Sync>,
    ) -> Arc<Evacuator> {
        Arc::new(Evacuator {
            fs,
            rate_bytes_per_s,
            chunk_bytes: chunk_bytes.max(1),
            risk: RwLock::new(Arc::new(UniformRisk)),
            want: Mutex::new(Vec::new()),
            status: Mutex::new(EvacuationStatus {
                state: EvacuationState::Idle,
                rate_bytes_per_s_max: rate_bytes_per_s,
                ..EvacuationStatus::default()
            }),
            active: AtomicBool::new(false),
            rounds: crate::wake::Rounds::default(),
            busy,
        })
    }

    /// The disks to empty and the risk view to order shards and choose targets by.
    pub fn set(&self, mut disks: Vec<u32>, risk: Arc<dyn RiskView>) {
        disks.sort_unstable();
        disks.dedup();
        *self.risk.write() = risk;
        let changed = {
            let mut w = self.want.lock();
            let changed = *w != disks;
            *w = disks.clone();
            changed
        };
        self.status.lock().disks = disks;
        if changed {
            self.kick();
        }
    }

    /// Evacuation is copying (re-sharding migration waits: they share the byte budget).
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    pub fn status(&self) -> EvacuationStatus {
        self.status.lock().clone()
    }

    pub fn kick(&self) {
        self.rounds.kick();
    }

    pub fn stop(&self) {
        self.rounds.stop();
    }

    pub fn start(self: &Arc<Self>) {
        crate::wake::Rounds::spawn(
            "evacuate",
            self,
            |e| &e.rounds,
            |e| {
                if let Err(err) = e.round() {
                    tracing::error!("evacuation: {err:#}");
                    e.status.lock().last_error = Some(format!("{err:#}"));
                }
                e.active.store(false, Ordering::Relaxed);
                IDLE_CHECK
            },
        );
    }

    /// Extents that need a copy because of the evacuation, by shard: extents of shards
    /// whose placement names an evacuating disk, and extents whose placement disks lack a
    /// copy while one lies on an evacuating disk.
    /// Also returns the evacuating disks that still hold a copy of something.
    #[allow(clippy::type_complexity)]
    fn scan(&self, evac: &HashSet<u32>) -> anyhow::Result<(HashMap<u32, Vec<Item>>, HashSet<u32>)> {
        let fs = &self.fs;
        let table = fs.shard_table();
        let mut out: HashMap<u32, Vec<Item>> = HashMap::new();
        let mut holding: HashSet<u32> = HashSet::new();
        fs.meta.each_extent(|ino, index, e| {
            holding.extend(e.replicas.iter().filter(|d| evac.contains(d)));
            let Some(rec) = table.get(e.shard as usize) else {
                return;
            };
            let placed_on_evac = rec.disks.iter().any(|d| evac.contains(d));
            let copy_on_evac = e.replicas.iter().any(|d| evac.contains(d));
            let missing = rec.disks.iter().any(|d| !e.replicas.contains(d));
            if placed_on_evac || (copy_on_evac && missing) {
                out.entry(e.shard)
                    .or_default()
                    .push((ino, index, u64::from(e.len)));
            }
        })?;
        // Empty shards too: new data must not land on the disk.
        for (i, rec) in table.iter().enumerate() {
            if rec.disks.iter().any(|d| evac.contains(d)) {
                out.entry(i as u32).or_default();
            }
        }
        Ok((out, holding))
    }

    fn round(&self) -> anyhow::Result<()> {
        let fs = &self.fs;
        let want0 = self.want.lock().clone();
        let evac: HashSet<u32> = want0
            .iter()
            .copied()
            .filter(|d| fs.store.disk(*d).is_some_and(|x| x.is_up()))
            .collect();
        if evac.is_empty() {
            let mut st = self.status.lock();
            st.state = EvacuationState::Idle;
            return Ok(());
        }
        let t0 = Instant::now();
        let mut budget_bytes = 0u64;
        let mut started = false;
        for _pass in 0..PASSES_MAX {
            let (work, _) = self.scan(&evac)?;
            if work.is_empty() {
                break;
            }
            let risk = self.risk.read().clone();
            let mut shards: Vec<u32> = work.keys().copied().collect();
            shards.sort_by(|a, b| {
                risk.shard_risk(*b)
                    .total_cmp(&risk.shard_risk(*a))
                    .then(a.cmp(b))
            });
            if !started {
                started = true;
                self.mark_started(
                    &evac,
                    shards.len(),
                    work.values().flatten().map(|i| i.2).sum(),
                );
            }
            let mut progress = false;
            for s in shards {
                if self.rounds.stopped() || *self.want.lock() != want0 {
                    // Told to stop, or the set of disks changed: a new round re-plans.
                    return Ok(());
                }
                while (self.busy)() && !self.rounds.stopped() {
                    std::thread::sleep(Duration::from_millis(200));
                }
                progress |=
                    self.evacuate_shard(s, &evac, &*risk, &work[&s], t0, &mut budget_bytes)?;
            }
            if !progress {
                break;
            }
        }
        fs.meta.sync_wal()?;
        fs.drain_reaper();
        self.finish_round(&evac, started)
    }

    fn mark_started(&self, evac: &HashSet<u32>, shards: usize, bytes: u64) {
        self.active.store(true, Ordering::Relaxed);
        let mut st = self.status.lock();
        st.state = EvacuationState::Evacuating;
        st.shards_total = shards as u64;
        st.shards_done = 0;
        st.extents_done = 0;
        st.bytes_total = bytes;
        st.bytes_done = 0;
        st.shards_without_target.clear();
        st.last_error = None;
        tracing::info!(disks = ?evac, shards, bytes, "evacuation starts");
    }

    /// Places shard `s` off the evacuating disks and copies its extents there, chunk by
    /// chunk within the byte-rate budget. Returns whether anything changed.
    fn evacuate_shard(
        &self,
        s: u32,
        evac: &HashSet<u32>,
        risk: &dyn RiskView,
        items: &[Item],
        t0: Instant,
        budget_bytes: &mut u64,
    ) -> anyhow::Result<bool> {
        let before = self.fs.shard(s).epoch;
        let Some(epoch) = self.replace(s, evac, risk)? else {
            return Ok(false);
        };
        let mut progress = epoch != before;
        for chunk in chunks(items, self.chunk_bytes) {
            let (copied, done) = self.copy_chunk(s, epoch, chunk)?;
            progress |= done > 0;
            *budget_bytes += copied;
            let ahead = *budget_bytes as f64 / self.rate_bytes_per_s.max(1) as f64
                - t0.elapsed().as_secs_f64();
            if ahead > 0.0 && !self.rounds.stopped() {
                std::thread::sleep(Duration::from_secs_f64(ahead));
            }
            let mut st = self.status.lock();
            st.extents_done += done;
            st.bytes_done += copied;
            st.bytes_moved_since_mount += copied;
            st.rate_bytes_per_s = st.bytes_done as f64 / t0.elapsed().as_secs_f64();
        }
        self.status.lock().shards_done += 1;
        Ok(progress)
    }

    /// Which disks hold nothing any more (evacuated), then idle.
    fn finish_round(&self, evac: &HashSet<u32>, started: bool) -> anyhow::Result<()> {
        let fs = &self.fs;
        let (_, holding) = self.scan(evac)?;
        let mut st = self.status.lock();
        st.evacuated = evac
            .iter()
            .copied()
            .filter(|d| !holding.contains(d) && !names_disk(fs, *d))
            .collect();
        st.evacuated.sort_unstable();
        if started {
            tracing::info!(
                bytes = st.bytes_done,
                shards = st.shards_done,
                evacuated = ?st.evacuated,
                "evacuation round done"
            );
        }
        st.state = EvacuationState::Idle;
        Ok(())
    }

    /// Swaps the evacuating disks in shard `s`'s placement for targets; returns the
    /// placement's epoch, or None when no disk can take it.
    fn replace(
        &self,
        s: u32,
        evac: &HashSet<u32>,
        risk: &dyn RiskView,
    ) -> anyhow::Result<Option<u64>> {
        let fs = &self.fs;
        let rec = fs.shard(s);
        if !rec.disks.iter().any(|d| evac.contains(d)) {
            return Ok(Some(rec.epoch));
        }
        let cands: Vec<Candidate> = fs
            .store
            .disks()
            .iter()
            .filter(|d| {
                d.accepts_data() && !evac.contains(&d.id) && !d.full.load(Ordering::Relaxed)
            })
            .filter_map(|d| {
                let (total, free) = d.space().ok()?;
                Some(Candidate {
                    id: d.id,
                    total_bytes: total,
                    used_bytes: total.saturating_sub(free),
                    risk: risk.disk_risk(d.id),
                    host: d.host(),
                    rack: None,
                })
            })
            .collect();
        let mut disks = rec.disks.clone();
        for i in 0..disks.len() {
            if !evac.contains(&disks[i]) {
                continue;
            }
            let exclude: Vec<u32> = rec.disks.iter().chain(disks.iter()).copied().collect();
            match place::choose(&cands, rec.class, 1, risk.risk_warn(), &exclude).first() {
                Some(t) => disks[i] = *t,
                None => {
                    let mut st = self.status.lock();
                    if !st.shards_without_target.contains(&s) {
                        st.shards_without_target.push(s);
                        tracing::warn!(shard = s, "evacuation: no disk can take this shard");
                    }
                    return Ok(None);
                }
            }
        }
        match fs.set_placement(s, rec.epoch, disks.clone()) {
            Ok(epoch) => {
                tracing::info!(shard = s, from = ?rec.disks, to = ?disks, epoch, "evacuating shard");
                Ok(Some(epoch))
            }
            // Changed meanwhile (recovery, re-sharding): the next pass sees the new one.
            Err(_) => Ok(None),
        }
    }

    /// Copies a chunk of shard `s`'s extents to the placement disks lacking them, syncs,
    /// and commits each under `epoch`. Returns (bytes copied, extents committed).
    fn copy_chunk(&self, s: u32, epoch: u64, chunk: &[Item]) -> anyhow::Result<(u64, u64)> {
        let fs = &self.fs;
        // Recovery installs and commits under the same guard: never both on one extent.
        let _guard = fs.recovery_guard();
        let rec = fs.shard(s);
        if rec.epoch != epoch {
            return Ok((0, 0));
        }
        let mut copied = 0u64;
        let mut written: Vec<(u32, ExtentId)> = Vec::new();
        for (ino, index, _) in chunk {
            copied += self.write_lacking(s, &rec.disks, *ino, *index, &mut written)?;
        }
        let unsynced = fs.store.sync_extents(&written);
        let mut done = 0u64;
        for (t, id) in written {
            if unsynced.contains_key(&t) {
                if let Some(d) = fs.store.disk(t) {
                    fs.store.remove_extent(&d, &id);
                }
                continue;
            }
            let (ino, index) = (id.ino, id.index);
            match fs.commit_installed(ino, index, id.version, epoch, t) {
                Ok(RecoveryCommit::Done) => done += 1,
                Ok(_) => {}
                Err(e) => tracing::warn!(ino, index, "evacuation commit failed: errno {}", e.0),
            }
        }
        Ok((copied, done))
    }

    /// Writes (not yet synced) the extent's copies on the placement disks lacking one;
    /// returns the bytes written, the copies go to `written`.
    fn write_lacking(
        &self,
        s: u32,
        placement: &[u32],
        ino: u64,
        index: u64,
        written: &mut Vec<(u32, ExtentId)>,
    ) -> anyhow::Result<u64> {
        let fs = &self.fs;
        let Some(cur) = fs.meta.extent(ino, index)? else {
            return Ok(0);
        };
        if cur.shard != s {
            return Ok(0);
        }
        let have = fs.store.readable(&cur.replicas);
        let lacking: Vec<u32> = placement
            .iter()
            .copied()
            .filter(|d| !have.contains(d))
            .collect();
        if lacking.is_empty() {
            return Ok(0);
        }
        let Some(data) = fs.copy_source(ino, index, &cur)? else {
            tracing::warn!(ino, index, "evacuation: no good copy to read");
            return Ok(0);
        };
        let id = ExtentId {
            ino,
            index,
            version: cur.version,
        };
        let mut copied = 0u64;
        for t in lacking {
            let Some(disk) = fs.store.disk(t).filter(|d| d.accepts_data()) else {
                continue;
            };
            match fs
                .store
                .write_copy(&disk, &id, &data, (s, fs.shard(s).epoch))
            {
                Ok(()) => {
                    copied += data.len() as u64;
                    written.push((t, id));
                }
                Err(e) => tracing::warn!(disk = t, "evacuation copy failed: {e}"),
            }
        }
        Ok(copied)
    }
}

/// True when a shard placement still names disk `d`.
fn names_disk(fs: &Fs, d: u32) -> bool {
    fs.shard_table().iter().any(|s| s.disks.contains(&d))
}

/// Splits items into runs of about `bytes_max` bytes.
fn chunks(items: &[Item], bytes_max: u64) -> Vec<&[Item]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut acc = 0u64;
    for (i, it) in items.iter().enumerate() {
        acc += it.2;
        if acc >= bytes_max {
            out.push(&items[start..=i]);
            start = i + 1;
            acc = 0;
        }
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}
