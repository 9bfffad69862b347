//! Dynamic Sharding Engine (DSE): forms shards from heat classes and correlation groups
//! (`plan.rs`), places them through the risk interface, and migrates extents in the
//! background under a byte-rate budget, in small chunks, each move committed with a
//! compare-and-set on extent version and shard epochs (`Fs::commit_moves`). Pending moves
//! live in RocksDB (`CF_MOVES`), so a killed daemon resumes the migration at the next mount.

pub mod evacuate;
pub mod plan;
pub mod report;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::access::{Analyzer, Ext, GroupRules, HeatClass};
use crate::fs::shards::{MoveCommit, MoveOutcome, ShardDef};
use crate::fs::Fs;
use crate::meta::{ShardRec, CF_MOVES};
use crate::placement::{RiskView, UniformRisk};
use crate::store::ExtentId;
use crate::util::{self, now_ms};
use plan::{Plan, PlanDisk, PlanExtent, PlanInput, PlanRules, PlanShard, Target};

/// The re-sharding flags of `foreshard mount` (clap) and what the engine runs with; the
/// defaults are the flags' defaults.
#[derive(Clone, Debug, clap::Parser)]
pub struct ShardingOptions {
    /// Automatic re-sharding period in seconds (0: only `foreshard reshard`).
    #[arg(id = "reshard-interval-s", long = "reshard-interval-s", value_name = "RESHARD_INTERVAL_S", default_value = "600", value_parser = util::secs_or_never)]
    pub interval: std::option::Option<Duration>,
    /// Migration budget: bytes copied per second by re-sharding.
    #[arg(id = "migration-rate", long = "migration-rate", value_name = "MIGRATION_RATE", default_value = "16MiB", value_parser = util::parse_size)]
    pub rate_bytes_per_s: u64,
    /// Migration copies and commits this much at a time.
    #[arg(id = "migration-chunk", long = "migration-chunk", value_name = "MIGRATION_CHUNK", default_value = "8MiB", value_parser = util::parse_size)]
    pub chunk_bytes: u64,
    /// Largest shard the sharding engine forms or keeps.
    #[arg(id = "shard-size-max", long = "shard-size-max", value_name = "SHARD_SIZE_MAX", default_value = "256MiB", value_parser = util::parse_size)]
    pub shard_bytes_max: u64,
    /// Shards the engine formed that fall below this are merged.
    #[arg(id = "shard-size-min", long = "shard-size-min", value_name = "SHARD_SIZE_MIN", default_value = "4MiB", value_parser = util::parse_size)]
    pub shard_bytes_min: u64,
    // Not flags. A move refused this many times (concurrent writes) is dropped until the
    // next plan.
    #[arg(skip = 3u32)]
    pub move_retries_max: u32,
    // Shards with a daily peak are prepared (their data read ahead) this long before it...
    #[arg(skip = Duration::from_secs(3600))]
    pub prepare_lead: Duration,
    // ...reading at most this many bytes per shard.
    #[arg(skip = 256u64 << 20)]
    pub prepare_bytes_max: u64,
}

impl Default for ShardingOptions {
    fn default() -> Self {
        // The flags' defaults: one source for the CLI and the library.
        <Self as clap::Parser>::parse_from(["foreshard"])
    }
}

impl ShardingOptions {
    /// Refuses budgets the engine cannot run with, naming the flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.rate_bytes_per_s > 0,
            "--migration-rate must be above 0"
        );
        anyhow::ensure!(self.chunk_bytes > 0, "--migration-chunk must be above 0");
        anyhow::ensure!(
            self.shard_bytes_min <= self.shard_bytes_max,
            "--shard-size-min must not exceed --shard-size-max"
        );
        Ok(())
    }
}

/// What a plan would do, for `reshard --dry-run` and the log.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PlanSummary {
    pub shards_formed: usize,
    pub shards_changed: usize,
    pub moves: usize,
    pub bytes_to_move: u64,
    /// Moves by reason (hot, cold, group, size).
    pub by_reason: HashMap<String, usize>,
    pub hot_extents: usize,
    pub cold_extents: usize,
    pub groups: usize,
    /// Up to 20 of the moves: (path or ino, index, from shard, to shard or "new N").
    pub sample: Vec<(String, u64, u32, String)>,
}

/// The re-sharding migration's state, as `status --json` spells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrationState {
    #[default]
    #[serde(rename = "idle")]
    Idle,
    #[serde(rename = "migrating")]
    Migrating,
}

impl MigrationState {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationState::Idle => "idle",
            MigrationState::Migrating => "migrating",
        }
    }
}

impl std::fmt::Display for MigrationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MigrationStatus {
    /// idle or migrating.
    pub state: MigrationState,
    pub moves_total: u64,
    pub moves_done: u64,
    pub moves_retried: u64,
    pub moves_dropped: u64,
    /// Extent bytes of the moves, and of those done.
    pub bytes_total: u64,
    pub bytes_done: u64,
    /// Bytes written to target disks (a move writes one copy per target disk lacking one).
    pub bytes_copied: u64,
    pub rate_bytes_per_s_max: u64,
    /// Copy rate measured over the current (or last) migration (the budgeted quantity).
    pub rate_bytes_per_s: f64,
    pub elapsed_s: f64,
    /// Since the mount.
    pub bytes_moved_since_mount: u64,
    pub last_plan: Option<PlanSummary>,
    pub last_error: Option<String>,
    /// (shard, hour, day since the Unix epoch) prepared ahead of a daily peak.
    pub prepared: Vec<(u32, u32, u64)>,
    /// Moves recorded and not yet done (including a plan not yet picked up).
    pub pending_moves: u64,
}

impl MigrationStatus {
    fn start_migration(&mut self, moves: u64, bytes: u64) {
        self.state = MigrationState::Migrating;
        self.moves_total = moves;
        self.moves_done = 0;
        self.moves_retried = 0;
        self.moves_dropped = 0;
        self.bytes_total = bytes;
        self.bytes_done = 0;
        self.bytes_copied = 0;
        self.last_error = None;
        self.pending_moves = moves;
    }

    fn add_chunk(&mut self, r: &ChunkResult, t0: Instant, pending: u64) {
        self.moves_done += r.done.len() as u64;
        self.moves_retried += r.retried;
        self.moves_dropped += r.dropped;
        self.bytes_done += r.done_bytes;
        self.bytes_copied += r.copied;
        self.bytes_moved_since_mount += r.copied;
        self.elapsed_s = t0.elapsed().as_secs_f64();
        self.rate_bytes_per_s = self.bytes_copied as f64 / self.elapsed_s.max(1e-3);
        self.pending_moves = pending;
    }
}

/// What one migration chunk did.
#[derive(Default)]
struct ChunkResult {
    /// Moves finished (committed, or nothing left to do), with their target shards.
    done: Vec<(Ext, u32)>,
    done_bytes: u64,
    copied: u64,
    retried: u64,
    dropped: u64,
}

/// One move of a chunk before its commit.
enum MovePrep {
    /// The extent, its target shard or the need to move is gone: the record is dropped.
    Gone,
    /// A target disk cannot take data, or no good copy was readable (extent bytes).
    Incomplete(u64),
    /// Copies written: the commit, the extent's bytes and the bytes copied.
    Ready(MoveCommit, u64, u64),
}

pub struct Engine {
    pub fs: Arc<Fs>,
    pub analyzer: Arc<Analyzer>,
    pub opts: ShardingOptions,
    risk: RwLock<Arc<dyn RiskView>>,
    status: Mutex<MigrationStatus>,
    rounds: crate::wake::Rounds,
    /// Recovery has priority: migration pauses while this says so.
    busy: Box<dyn Fn() -> bool + Send + Sync>,
}

impl Engine {
    pub fn new(
        fs: Arc<Fs>,
        analyzer: Arc<Analyzer>,
        opts: ShardingOptions,
        busy: Box<dyn Fn() -> bool + Send + Sync>,
    ) -> Arc<Engine> {
        let rate = opts.rate_bytes_per_s;
        Arc::new(Engine {
            fs,
            analyzer,
            opts,
            risk: RwLock::new(Arc::new(UniformRisk)),
            status: Mutex::new(MigrationStatus {
                state: MigrationState::Idle,
                rate_bytes_per_s_max: rate,
                ..MigrationStatus::default()
            }),
            rounds: crate::wake::Rounds::default(),
            busy,
        })
    }

    pub fn set_risk(&self, r: Arc<dyn RiskView>) {
        *self.risk.write() = r;
    }

    /// Starts the engine thread: resumes pending moves, then plans on its timer and on
    /// demand, and prepares shards before their daily peak.
    pub fn start(self: &Arc<Self>) {
        let mut last_plan = Instant::now();
        crate::wake::Rounds::spawn(
            "sharding",
            self,
            |e| &e.rounds,
            move |e| {
                if let Err(err) = e.migrate() {
                    tracing::error!("migration: {err:#}");
                    e.status.lock().last_error = Some(format!("{err:#}"));
                }
                e.prepare_peaks();
                if e.opts.interval.is_none_or(|i| last_plan.elapsed() < i) {
                    return Duration::from_secs(5);
                }
                last_plan = Instant::now();
                match e.reshard(false) {
                    Ok(s) if s.moves > 0 => tracing::info!(
                        moves = s.moves,
                        bytes = s.bytes_to_move,
                        "re-sharding planned"
                    ),
                    Ok(_) => {}
                    Err(err) => tracing::warn!("re-sharding plan failed: {err:#}"),
                }
                // Straight on to the migration of what was planned.
                Duration::ZERO
            },
        );
    }

    pub fn shutdown(&self) {
        self.rounds.stop();
    }

    fn kick(&self) {
        self.rounds.kick();
    }

    pub fn status(&self) -> MigrationStatus {
        self.status.lock().clone()
    }

    /// Plans now; unless `dry_run`, forms the new shards, records the moves and wakes the
    /// migration.
    pub fn reshard(&self, dry_run: bool) -> anyhow::Result<PlanSummary> {
        let (plan, summary) = self.make_plan()?;
        if dry_run || plan.moves.is_empty() {
            return Ok(summary);
        }
        self.apply(&plan)?;
        self.status.lock().last_plan = Some(summary.clone());
        self.kick();
        Ok(summary)
    }

    fn make_plan(&self) -> anyhow::Result<(Plan, PlanSummary)> {
        let fs = &self.fs;
        let extents = self.plan_extents()?;
        let initial = fs.cfg.shard_count;
        let shards: Vec<PlanShard> = fs
            .shard_table()
            .into_iter()
            .enumerate()
            .map(|(i, s)| PlanShard {
                id: i as u32,
                class: s.class,
                epoch: s.epoch,
                disks: s.disks,
                initial: (i as u32) < initial,
            })
            .collect();
        let risk = self.risk.read().clone();
        let disks: Vec<PlanDisk> = fs
            .store
            .disks()
            .iter()
            .map(|d| {
                let (total, free) = d.space().unwrap_or((0, 0));
                PlanDisk {
                    id: d.id,
                    total_bytes: total,
                    used_bytes: total.saturating_sub(free),
                    risk: risk.disk_risk(d.id),
                    accepts_data: d.accepts_data() && total > 0,
                    host: d.host(),
                }
            })
            .collect();
        let rules = GroupRules::for_shards(fs.extent_size(), self.opts.shard_bytes_max);
        let groups = self.analyzer.groups(rules);
        let home = |e: Ext| fs.shard_of(e.0, e.1);
        let input = PlanInput {
            extents: &extents,
            shards: &shards,
            groups: &groups,
            disks: &disks,
            rules: PlanRules {
                shard_bytes_max: self.opts.shard_bytes_max,
                shard_bytes_min: self.opts.shard_bytes_min,
                replicas: fs.cfg.replicas as usize,
                risk_warn: risk.risk_warn(),
            },
            home: &home,
        };
        let plan = plan::plan(&input);
        let summary = self.summarize(&plan, &extents, groups.len());
        Ok((plan, summary))
    }

    /// Every extent with its heat class and current heat, for the planner.
    fn plan_extents(&self) -> anyhow::Result<Vec<PlanExtent>> {
        let now = now_ms();
        self.analyzer.classify(now);
        let heat: HashMap<Ext, crate::access::ExtentHeat> = crate::access::heat_map(&self.analyzer);
        let scale = self.analyzer.opts.class_scale.min(2);
        let mut extents = Vec::new();
        self.fs.meta.each_extent(|ino, index, e| {
            let (class, h) = match heat.get(&(ino, index)) {
                Some(x) => {
                    let (r, w) = x.at(scale, now);
                    (x.class(), r + w)
                }
                None => (HeatClass::Cold, 0.0),
            };
            extents.push(PlanExtent {
                ext: (ino, index),
                bytes: u64::from(e.len),
                shard: e.shard,
                class,
                heat: h,
            });
        })?;
        Ok(extents)
    }

    /// What `reshard` reports of a plan: counts, bytes, reasons and the first moves by path.
    fn summarize(&self, plan: &Plan, extents: &[PlanExtent], groups: usize) -> PlanSummary {
        let paths = self.fs.paths().unwrap_or_default();
        let mut by_reason: HashMap<String, usize> = HashMap::new();
        for m in &plan.moves {
            *by_reason.entry(m.reason.to_string()).or_default() += 1;
        }
        let count = |c: HeatClass| extents.iter().filter(|e| e.class == c).count();
        PlanSummary {
            shards_formed: plan.new_shards.len(),
            shards_changed: plan.shards_changed(),
            moves: plan.moves.len(),
            bytes_to_move: plan.bytes(),
            by_reason,
            hot_extents: count(HeatClass::Hot),
            cold_extents: count(HeatClass::Cold),
            groups,
            sample: plan
                .moves
                .iter()
                .take(20)
                .map(|m| {
                    let p = paths
                        .get(&m.ext.0)
                        .cloned()
                        .unwrap_or_else(|| format!("inode {}", m.ext.0));
                    let to = match m.to {
                        Target::Existing(s) => s.to_string(),
                        Target::New(i) => format!("new {i}"),
                    };
                    (p, m.ext.1, m.from, to)
                })
                .collect(),
        }
    }

    /// Forms the plan's shards and records its moves (one batch per 4096 moves).
    fn apply(&self, plan: &Plan) -> anyhow::Result<()> {
        let defs: Vec<ShardDef> = plan
            .new_shards
            .iter()
            .map(|s| ShardDef {
                id: s.reuse.map(|r| r.0),
                expect_epoch: s.reuse.map_or(0, |r| r.1),
                class: s.class,
                disks: s.disks.clone(),
            })
            .collect();
        let ids = self
            .fs
            .define_shards(defs)
            .map_err(|e| anyhow::anyhow!("cannot form shards: errno {}", e.0))?;
        let mut formed = Vec::with_capacity(ids.len());
        for r in ids {
            match r {
                Ok(id) => formed.push(id),
                Err(e) => anyhow::bail!("a shard changed while planning (errno {}); replan", e.0),
            }
        }
        for chunk in plan.moves.chunks(4096) {
            let mut b = self.fs.meta.batch();
            for m in chunk {
                let to = match m.to {
                    Target::Existing(s) => s,
                    Target::New(i) => formed[i],
                };
                b.put_move(m.ext.0, m.ext.1, to);
            }
            self.fs.meta.write(b)?;
        }
        self.status.lock().pending_moves += plan.moves.len() as u64;
        Ok(())
    }

    fn pending(&self) -> anyhow::Result<Vec<(Ext, u32)>> {
        let mut out = Vec::new();
        self.fs.meta.each_raw(CF_MOVES, |k, v| {
            anyhow::ensure!(k.len() == 16 && v.len() == 4, "corrupt pending move record");
            let ino = u64::from_be_bytes(k[..8].try_into().expect("8"));
            let index = u64::from_be_bytes(k[8..].try_into().expect("8"));
            out.push(((ino, index), u32::from_be_bytes(v.try_into().expect("4"))));
            Ok(())
        })?;
        Ok(out)
    }

    fn drop_move(&self, e: Ext) -> anyhow::Result<()> {
        let mut b = self.fs.meta.batch();
        b.del_move(e.0, e.1);
        self.fs.meta.write(b)
    }

    /// Runs every pending move, chunk by chunk, within the byte-rate budget.
    fn migrate(&self) -> anyhow::Result<()> {
        let fs = &self.fs;
        // (extent, target shard, bytes): the sizes, looked up once, shape the chunks.
        let mut pending: Vec<(Ext, u32, u64)> = Vec::new();
        for (e, to) in self.pending()? {
            let len = fs.meta.extent(e.0, e.1)?.map_or(0, |r| u64::from(r.len));
            pending.push((e, to, len));
        }
        if pending.is_empty() {
            // Not zeroed: moves a `reshard` recorded after the read above are counted
            // there, and the round it kicked runs them.
            return Ok(());
        }
        let total: u64 = pending.iter().map(|p| p.2).sum();
        self.status
            .lock()
            .start_migration(pending.len() as u64, total);
        tracing::info!(moves = pending.len(), bytes = total, "migration starts");
        let t0 = Instant::now();
        let mut retries: HashMap<Ext, u32> = HashMap::new();
        let mut budget_bytes = 0u64;
        while !pending.is_empty() && !self.rounds.stopped() {
            while (self.busy)() && !self.rounds.stopped() {
                std::thread::sleep(Duration::from_millis(200));
            }
            let (chunk, lens) = self.next_chunk(&mut pending);
            let (copied, outcomes) = self.move_chunk(&chunk)?;
            budget_bytes += copied;
            // Budget: bytes copied may not run ahead of rate x time.
            let ahead = budget_bytes as f64 / self.opts.rate_bytes_per_s.max(1) as f64
                - t0.elapsed().as_secs_f64();
            if ahead > 0.0 && !self.rounds.stopped() {
                std::thread::sleep(Duration::from_secs_f64(ahead));
            }
            let mut r = ChunkResult {
                copied,
                ..Default::default()
            };
            for (((e, to), o), len) in chunk.iter().zip(outcomes).zip(lens) {
                match o {
                    Some((MoveOutcome::Done, len)) => {
                        r.done.push((*e, *to));
                        r.done_bytes += len;
                    }
                    None => r.done.push((*e, *to)),
                    Some(_) => {
                        self.retry_or_drop(*e, *to, len, &mut retries, &mut pending, &mut r)?
                    }
                }
            }
            self.analyzer.moved(&r.done);
            self.status.lock().add_chunk(&r, t0, pending.len() as u64);
        }
        let mut st = self.status.lock();
        st.state = MigrationState::Idle;
        st.pending_moves = pending.len() as u64;
        tracing::info!(
            moves = st.moves_done,
            dropped = st.moves_dropped,
            bytes = st.bytes_done,
            secs = st.elapsed_s,
            "migration finished"
        );
        Ok(())
    }

    /// Takes moves off the end of `pending` until the chunk holds `chunk_bytes`.
    fn next_chunk(&self, pending: &mut Vec<(Ext, u32, u64)>) -> (Vec<(Ext, u32)>, Vec<u64>) {
        let mut chunk = Vec::new();
        let mut chunk_bytes = 0u64;
        let mut lens = Vec::new();
        while let Some((e, to, len)) = pending.pop() {
            chunk.push((e, to));
            lens.push(len);
            chunk_bytes += len;
            if chunk_bytes >= self.opts.chunk_bytes {
                break;
            }
        }
        (chunk, lens)
    }

    /// A move that did not complete goes back in the queue, until `move_retries_max`.
    fn retry_or_drop(
        &self,
        e: Ext,
        to: u32,
        len: u64,
        retries: &mut HashMap<Ext, u32>,
        pending: &mut Vec<(Ext, u32, u64)>,
        r: &mut ChunkResult,
    ) -> anyhow::Result<()> {
        let n = retries.entry(e).or_default();
        *n += 1;
        if *n > self.opts.move_retries_max {
            self.drop_move(e)?;
            r.dropped += 1;
        } else {
            r.retried += 1;
            pending.insert(0, (e, to, len));
        }
        Ok(())
    }

    /// Copies a chunk's extents to the disks of their target shards that lack them,
    /// syncs those disks, and commits the moves. Returns the bytes copied and per move its
    /// outcome (None: nothing to do, already there or gone).
    #[allow(clippy::type_complexity)]
    fn move_chunk(
        &self,
        chunk: &[(Ext, u32)],
    ) -> anyhow::Result<(u64, Vec<Option<(MoveOutcome, u64)>>)> {
        let fs = &self.fs;
        // Recovery installs and commits under the same guard: never both on one extent.
        let _guard = fs.recovery_guard();
        let mut commits: Vec<(usize, MoveCommit)> = Vec::new();
        let mut out: Vec<Option<(MoveOutcome, u64)>> = vec![None; chunk.len()];
        let mut lens = vec![0u64; chunk.len()];
        let mut copied = 0u64;
        let table = fs.shard_table();
        for (i, (ext, to)) in chunk.iter().enumerate() {
            match self.copy_for_move(&table, *ext, *to)? {
                MovePrep::Gone => self.drop_move(*ext)?,
                MovePrep::Incomplete(len) => {
                    lens[i] = len;
                    out[i] = Some((MoveOutcome::Incomplete, 0));
                }
                MovePrep::Ready(m, len, bytes) => {
                    lens[i] = len;
                    copied += bytes;
                    commits.push((i, m));
                }
            }
        }
        let files: Vec<(u32, ExtentId)> = commits
            .iter()
            .flat_map(|(_, m)| {
                let id = ExtentId {
                    ino: m.ino,
                    index: m.index,
                    version: m.version,
                };
                m.installed.iter().map(move |d| (*d, id))
            })
            .collect();
        if let Some((d, e)) = fs.store.sync_extents(&files).into_iter().next() {
            anyhow::bail!("cannot make migrated copies durable on disk {d}: {e}");
        }
        let moves: Vec<MoveCommit> = commits.iter().map(|(_, m)| m.clone()).collect();
        let outcomes = fs
            .commit_moves(&moves)
            .map_err(|e| anyhow::anyhow!("cannot commit moves: errno {}", e.0))?;
        for ((i, _), o) in commits.iter().zip(outcomes) {
            out[*i] = Some((o, lens[*i]));
        }
        Ok((copied, out))
    }

    /// Writes (not yet synced) the extent's copies on the target shard's disks that lack it.
    fn copy_for_move(&self, table: &[ShardRec], ext: Ext, to: u32) -> anyhow::Result<MovePrep> {
        let fs = &self.fs;
        let (ino, index) = ext;
        let Some(cur) = fs.meta.extent(ino, index)? else {
            return Ok(MovePrep::Gone);
        };
        let Some(to_rec) = table.get(to as usize) else {
            return Ok(MovePrep::Gone);
        };
        if cur.shard == to {
            return Ok(MovePrep::Gone);
        }
        let len = u64::from(cur.len);
        let have = fs.store.readable(&cur.replicas);
        let targets: Vec<u32> = to_rec
            .disks
            .iter()
            .copied()
            .filter(|d| !have.contains(d))
            .collect();
        if targets
            .iter()
            .any(|d| !fs.store.disk(*d).is_some_and(|x| x.accepts_data()))
        {
            return Ok(MovePrep::Incomplete(len));
        }
        let mut installed = Vec::new();
        let mut copied = 0u64;
        if !targets.is_empty() {
            let Some(data) = fs.copy_source(ino, index, &cur)? else {
                return Ok(MovePrep::Incomplete(len));
            };
            let id = ExtentId {
                ino,
                index,
                version: cur.version,
            };
            for d in &targets {
                let disk = fs.store.disk(*d).expect("checked above");
                match fs.store.write_copy(&disk, &id, &data, (to, to_rec.epoch)) {
                    Ok(()) => {
                        installed.push(*d);
                        copied += data.len() as u64;
                    }
                    Err(e) => {
                        tracing::warn!(disk = d, "migration copy failed: {e}");
                        break;
                    }
                }
            }
        }
        let m = MoveCommit {
            ino,
            index,
            version: cur.version,
            from: cur.shard,
            from_epoch: table[cur.shard as usize].epoch,
            to,
            to_epoch: to_rec.epoch,
            installed,
        };
        Ok(MovePrep::Ready(m, len, copied))
    }

    /// Reads ahead the data of shards whose daily peak starts within `prepare_lead`, once
    /// per peak.
    fn prepare_peaks(&self) {
        self.prepare_peaks_at(now_ms());
    }

    fn prepare_peaks_at(&self, now: u64) {
        let upcoming = self.analyzer.upcoming_peaks(now, self.opts.prepare_lead);
        for (shard, hour) in upcoming {
            // The peak starts within the lead time: its day is that of the next full hour.
            let day = (now / 3_600_000 + 1) / 24;
            if self.status.lock().prepared.contains(&(shard, hour, day)) {
                continue;
            }
            let bytes = self.prepare_shard(shard);
            tracing::info!(shard, hour, bytes, "prepared shard ahead of its daily peak");
            let mut st = self.status.lock();
            if st.prepared.len() >= 64 {
                st.prepared.remove(0);
            }
            st.prepared.push((shard, hour, day));
        }
    }

    fn prepare_shard(&self, shard: u32) -> u64 {
        let fs = &self.fs;
        let mut files = Vec::new();
        let mut bytes = 0u64;
        let _ = fs.meta.each_extent(|ino, index, e| {
            if e.shard == shard && bytes < self.opts.prepare_bytes_max {
                bytes += u64::from(e.len);
                files.push((ino, index, e));
            }
        });
        for (ino, index, e) in files {
            if let Some(d) = fs.store.readable(&e.replicas).first() {
                let disk = fs.store.disk(*d).expect("readable disk");
                if disk.is_remote() {
                    continue;
                }
                let id = ExtentId {
                    ino,
                    index,
                    version: e.version,
                };
                if let Ok(f) = std::fs::File::open(disk.extent_path(&id)) {
                    use std::os::fd::AsRawFd;
                    // SAFETY: advisory call on an fd we own.
                    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED) };
                }
            }
        }
        bytes
    }

    /// Blocks until no move is pending (or `timeout`); true when done.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let t0 = Instant::now();
        loop {
            let st = self.status();
            if st.state == MigrationState::Idle && st.pending_moves == 0 {
                return true;
            }
            if t0.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests;
