//! The risk service of a mounted pool: on a timer, collects each disk's health (metrics
//! file, smartctl, /sys/block stats, fullness, and what foreshard itself saw on the disk),
//! keeps a daily history per disk, scores it with the model, and publishes a snapshot that
//! placement (`placement::RiskView`), the agent pool and proactive evacuation read.
//!
//! foreshard's own signals are mapped onto the SMART counters the model was trained on, so
//! they land on the same risk scale: checksum failures and I/O errors are unreadable
//! sectors as the disk would count them (197, current pending), probe time-outs and slow
//! intervals (latency far above the disk's own baseline) are command time-outs (188). The
//! model pools 197, 198, 187 and 188 into one error-counter feature (`ERROR_ATTRS` in
//! foreshard-model's `risk::model`), so these move the score as pending sectors would,
//! although the 2013 training data has only 197.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use super::collect::{self, DiskStats, Health};
use super::model::{Model, Row, ATTRS};
use super::shard::{loss_probability, repair_seconds};
use crate::fs::Fs;
use crate::meta::CF_CONFIG;
use crate::util;

/// The model shipped with foreshard (trained on the Backblaze 2013 sample), built in so an
/// installed binary has it without the source tree.
pub const SHIPPED_MODEL: &str = include_str!("../../fixtures/risk-model.txt");
/// Daily rows kept per disk: the model looks back 7 days; a month is plenty of context.
const HISTORY_DAYS_MAX: usize = 40;
/// smartctl runs at most this often per disk and is killed after the timeout: a SMART query
/// can stall a busy disk for a moment.
const SMARTCTL_INTERVAL: Duration = Duration::from_secs(600);
const SMARTCTL_TIMEOUT: Duration = Duration::from_secs(10);
/// Per-shard bytes are summed by a metadata scan at most this often.
const SHARD_SCAN_INTERVAL: Duration = Duration::from_secs(60);
/// A sampling interval is slow when a disk's latency exceeds its baseline by this factor
/// (and by `SLOW_MS_MIN` at least, so idle-disk jitter does not count).
const SLOW_FACTOR: f64 = 5.0;
const SLOW_MS_MIN: f64 = 20.0;
/// Weight of a new latency sample in the baseline (a slow average: days, not minutes).
const BASELINE_ALPHA: f64 = 0.02;
/// Factors shown per disk.
const FACTORS_MAX: usize = 4;
/// Repair rate assumed before any recovery has been measured (one disk's sequential rate).
const REPAIR_RATE_DEFAULT_BYTES_PER_S: f64 = 100.0 * 1024.0 * 1024.0;
/// Seconds from a failure to its detection (probes every second, failed after a few).
const DETECT_S: f64 = 5.0;
/// Shards listed in reports (highest loss risk first).
pub const SHARDS_REPORTED_MAX: usize = 50;

/// Risk settings of a pool, kept in its metadata (changeable with `foreshard risk POOL`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RiskSettings {
    /// Directory with `<disk id>.json` (smartctl --json) / `<disk id>.prom` files.
    pub health_dir: Option<PathBuf>,
    /// P(fail in 30 days) at which a disk is "at risk": placement avoids it.
    pub warn: f64,
    /// P(fail in 30 days) at which its replicas are moved off (proactive evacuation).
    pub evacuate: f64,
}

impl Default for RiskSettings {
    fn default() -> Self {
        // On held-out Backblaze drives (shipped model, seeds 1-5), p = 0.065 is about the 1%
        // false-alarm point and 0.13 about 0.5%.
        RiskSettings {
            health_dir: None,
            warn: 0.06,
            evacuate: 0.12,
        }
    }
}

impl RiskSettings {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.warn) && (0.0..=1.0).contains(&self.evacuate),
            "risk thresholds are probabilities between 0 and 1"
        );
        anyhow::ensure!(
            self.warn <= self.evacuate,
            "the warning threshold ({}) must not exceed the evacuation threshold ({})",
            self.warn,
            self.evacuate
        );
        if let Some(d) = &self.health_dir {
            anyhow::ensure!(
                d.is_absolute(),
                "health directory {} must be an absolute path",
                d.display()
            );
        }
        Ok(())
    }
}

pub const SETTINGS_KEY: &[u8] = b"risk";
const OWN_KEY_PREFIX: &str = "risk-own/";
const HISTORY_KEY_PREFIX: &str = "risk-history/";

pub fn load_settings(meta: &crate::meta::Meta) -> anyhow::Result<RiskSettings> {
    match meta.get_raw(CF_CONFIG, SETTINGS_KEY)? {
        None => Ok(RiskSettings::default()),
        Some(v) => serde_json::from_slice(&v)
            .map_err(|e| anyhow::anyhow!("corrupt risk settings in metadata: {e}")),
    }
}

pub fn save_settings(meta: &crate::meta::Meta, s: &RiskSettings) -> anyhow::Result<()> {
    s.validate()?;
    let mut b = meta.batch();
    b.put_raw(CF_CONFIG, SETTINGS_KEY, &serde_json::to_vec(s)?);
    meta.write(b)?;
    meta.sync_wal()?;
    Ok(())
}

/// One contribution to a disk's score (log-odds, positive raises the risk).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Factor {
    pub name: String,
    pub contribution: f64,
}

/// What foreshard itself saw on a disk (cumulative over mounts).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct OwnSignals {
    pub io_errors: u64,
    pub checksum_errors: u64,
    pub probe_timeouts: u64,
    /// Sampling intervals with latency above `SLOW_FACTOR` x baseline.
    pub slow_intervals: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DiskRisk {
    pub id: u32,
    pub path: String,
    pub p_fail_30d: f64,
    /// ok, warn (placement avoids it) or evacuate.
    pub level: String,
    pub factors: Vec<Factor>,
    /// Where the SMART data came from (none, smartctl /dev/X, file X.json, ...).
    pub source: String,
    /// Whole block device under the disk directory, when there is one.
    pub device: Option<String>,
    /// The last collection problem (malformed file with its line, smartctl error).
    pub health_error: Option<String>,
    pub health: Option<Health>,
    pub own: OwnSignals,
    pub fullness: f64,
    pub probe_ms_last: Option<f64>,
    pub read_ms_per_io: Option<f64>,
    pub write_ms_per_io: Option<f64>,
    pub latency_ms_baseline: Option<f64>,
    /// Daily rows of history the score used.
    pub days: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardRisk {
    pub id: u32,
    pub disks: Vec<u32>,
    pub bytes: u64,
    /// Seconds a repair of one replica would take (detection + copy at the repair rate).
    pub repair_s: f64,
    /// P(every replica lost before a repair finishes), within 30 days.
    pub p_loss_30d: f64,
}

/// The published result of a collection round.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub model: String,
    pub settings: Option<RiskSettings>,
    pub disks: Vec<DiskRisk>,
    /// Highest loss risk first (at most `SHARDS_REPORTED_MAX` in reports).
    pub shards: Vec<ShardRisk>,
    pub shards_total: usize,
    pub repair_rate_bytes_per_s: f64,
    pub rounds: u64,
    pub updated_ms: u64,
    pub evacuation: Option<crate::sharding::evacuate::EvacuationStatus>,
}

impl Snapshot {
    pub fn disk_p(&self, id: u32) -> Option<f64> {
        self.disks.iter().find(|d| d.id == id).map(|d| d.p_fail_30d)
    }
}

/// `RiskView` over a snapshot: what placement and evacuation read.
pub struct View {
    p: HashMap<u32, f64>,
    warn: f64,
    shard_loss: HashMap<u32, f64>,
}

impl crate::placement::RiskView for View {
    fn disk_risk(&self, disk: u32) -> f64 {
        self.p.get(&disk).copied().unwrap_or(0.0)
    }
    fn risk_warn(&self) -> f64 {
        self.warn
    }
    fn shard_risk(&self, shard: u32) -> f64 {
        self.shard_loss.get(&shard).copied().unwrap_or(0.0)
    }
}

/// Per-disk collection state between rounds.
#[derive(Default)]
struct Track {
    rows: Vec<Row>,
    model_name: Option<String>,
    last_good: Option<Health>,
    source: String,
    error: Option<String>,
    stat_prev: Option<DiskStats>,
    latency_baseline_ms: Option<f64>,
    /// Own counters persisted by earlier mounts, and this mount's slow intervals.
    own_base: OwnSignals,
    slow_intervals: u64,
    smartctl_next: Option<Instant>,
    device: Option<collect::BlockDev>,
    device_checked: bool,
    read_ms: Option<f64>,
    write_ms: Option<f64>,
}

/// The risk flags of `foreshard mount` (clap) and what the risk thread runs with.
#[derive(Clone, Debug, clap::Parser)]
pub struct RiskOptions {
    /// Seconds between risk collections (health files, smartctl, /sys stats).
    #[arg(id = "risk-interval-s", long = "risk-interval-s", value_name = "RISK_INTERVAL_S", default_value = "60",
          value_parser = util::secs_in(Duration::from_secs(1), Duration::from_secs(86400)))]
    pub interval: Duration,
    /// Never run smartctl (health files and foreshard's own signals only).
    #[arg(id = "no-smartctl", long = "no-smartctl", action = clap::ArgAction::SetFalse)]
    pub smartctl: bool,
}

impl Default for RiskOptions {
    fn default() -> Self {
        // The flags' defaults: one source for the CLI and the library.
        <Self as clap::Parser>::parse_from(["foreshard"])
    }
}

type Hook = Box<dyn Fn(&Snapshot, &Arc<View>) + Send + Sync>;

pub struct RiskService {
    fs: Arc<Fs>,
    model: Model,
    model_name: String,
    opts: RiskOptions,
    settings: RwLock<RiskSettings>,
    tracks: Mutex<HashMap<u32, Track>>,
    snapshot: RwLock<Arc<Snapshot>>,
    hooks: Mutex<Vec<Hook>>,
    shard_bytes: Mutex<(Option<Instant>, Vec<u64>)>,
    /// Measured recovery rate, when a recovery has run (bytes/s).
    repair_rate: Box<dyn Fn() -> Option<f64> + Send + Sync>,
    rounds: crate::wake::Rounds,
    remote_health: RwLock<Option<Arc<dyn RemoteHealth>>>,
}

/// Health read elsewhere: a cluster pool's storage hosts publish their disks' SMART.
pub trait RemoteHealth: Send + Sync {
    /// The disk's latest snapshot, or why there is none; None without a source.
    fn health(&self, disk: &crate::store::Disk) -> Option<Result<Health, String>>;
}

fn today() -> i64 {
    (crate::util::now_ms() / 86_400_000) as i64
}

impl RiskService {
    pub fn new(
        fs: Arc<Fs>,
        model: Model,
        model_name: String,
        opts: RiskOptions,
        repair_rate: Box<dyn Fn() -> Option<f64> + Send + Sync>,
    ) -> anyhow::Result<Arc<RiskService>> {
        let settings = load_settings(&fs.meta)?;
        let svc = Arc::new(RiskService {
            fs,
            model,
            model_name,
            opts,
            settings: RwLock::new(settings),
            tracks: Mutex::new(HashMap::new()),
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            hooks: Mutex::new(Vec::new()),
            shard_bytes: Mutex::new((None, Vec::new())),
            repair_rate,
            rounds: crate::wake::Rounds::default(),
            remote_health: RwLock::new(None),
        });
        svc.load_history();
        Ok(svc)
    }

    /// Where remote disks' health comes from (a cluster pool: the storage hosts).
    pub fn set_remote_health(&self, src: Arc<dyn RemoteHealth>) {
        *self.remote_health.write() = Some(src);
    }

    /// Called with every new snapshot (placement, agents, evacuation subscribe here).
    pub fn on_update(&self, f: Hook) {
        self.hooks.lock().push(f);
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().clone()
    }

    pub fn settings(&self) -> RiskSettings {
        self.settings.read().clone()
    }

    /// Changes the settings (persisted) and collects again at once.
    pub fn set_settings(&self, s: RiskSettings) -> anyhow::Result<()> {
        save_settings(&self.fs.meta, &s)?;
        *self.settings.write() = s;
        self.kick();
        Ok(())
    }

    pub fn kick(&self) {
        self.rounds.kick();
    }

    pub fn stop(&self) {
        self.rounds.stop();
    }

    pub fn start(self: &Arc<Self>) {
        crate::wake::Rounds::spawn(
            "risk",
            self,
            |s| &s.rounds,
            |s| {
                if let Err(e) = s.collect_round() {
                    tracing::error!("risk collection: {e:#}");
                }
                s.opts.interval
            },
        );
    }

    fn load_history(&self) {
        let mut tracks = self.tracks.lock();
        let r = self.fs.meta.each_raw(CF_CONFIG, |k, v| {
            let Ok(k) = std::str::from_utf8(k) else {
                return Ok(());
            };
            if let Some(id) = k.strip_prefix(OWN_KEY_PREFIX) {
                if let (Ok(id), Ok(own)) = (id.parse::<u32>(), serde_json::from_slice(v)) {
                    tracks.entry(id).or_default().own_base = own;
                }
            } else if let Some(id) = k.strip_prefix(HISTORY_KEY_PREFIX) {
                if let (Ok(id), Ok(h)) = (id.parse::<u32>(), serde_json::from_slice::<Saved>(v)) {
                    let t = tracks.entry(id).or_default();
                    t.rows = h.rows.into_iter().map(Into::into).collect();
                    t.model_name = h.model_name;
                }
            }
            Ok(())
        });
        if let Err(e) = r {
            tracing::warn!("risk history not loaded: {e:#}");
        }
    }

    /// One collection round over every readable disk, then scoring and publishing.
    pub fn collect_round(&self) -> anyhow::Result<()> {
        let settings = self.settings();
        let disks = self.fs.store.disks();
        let day = today();
        let mut out = Vec::new();
        let mut batch = self.fs.meta.batch();
        {
            let mut tracks = self.tracks.lock();
            for d in disks.iter().filter(|d| d.is_up()) {
                let t = tracks.entry(d.id).or_default();
                self.collect_disk(d, t, &settings);
                out.push(self.score_disk(d, t, &settings, day, &mut batch)?);
            }
        }
        self.fs.meta.write(batch)?;
        let p: HashMap<u32, f64> = out.iter().map(|d| (d.id, d.p_fail_30d)).collect();
        let rate = (self.repair_rate)()
            .filter(|r| *r > 0.0)
            .unwrap_or(REPAIR_RATE_DEFAULT_BYTES_PER_S);
        let shards = self.shard_risks(&p, rate)?;
        let view = Arc::new(View {
            p,
            warn: settings.warn,
            shard_loss: shards.iter().map(|s| (s.id, s.p_loss_30d)).collect(),
        });
        let prev_rounds = self.snapshot.read().rounds;
        let snap = Snapshot {
            model: self.model_name.clone(),
            settings: Some(settings),
            disks: out,
            shards_total: shards.len(),
            shards,
            repair_rate_bytes_per_s: rate,
            rounds: prev_rounds + 1,
            updated_ms: crate::util::now_ms(),
            evacuation: None,
        };
        for h in self.hooks.lock().iter() {
            h(&snap, &view);
        }
        *self.snapshot.write() = Arc::new(snap);
        Ok(())
    }

    /// Today's row for the disk from what was just collected, scored; the row history and
    /// own signals go into `batch` (they survive a restart).
    fn score_disk(
        &self,
        d: &crate::store::Disk,
        t: &mut Track,
        settings: &RiskSettings,
        day: i64,
        batch: &mut crate::meta::Batch,
    ) -> anyhow::Result<DiskRisk> {
        let own = OwnSignals {
            io_errors: t.own_base.io_errors + d.io_errors.load(Ordering::Relaxed),
            checksum_errors: t.own_base.checksum_errors + d.checksum_errors.load(Ordering::Relaxed),
            probe_timeouts: t.own_base.probe_timeouts + d.probe_timeouts.load(Ordering::Relaxed),
            slow_intervals: t.own_base.slow_intervals + t.slow_intervals,
        };
        let row = today_row(day, t.last_good.as_ref(), &own);
        match t.rows.last_mut() {
            Some(last) if last.day == day => *last = row,
            _ => t.rows.push(row),
        }
        if t.rows.len() > HISTORY_DAYS_MAX {
            let cut = t.rows.len() - HISTORY_DAYS_MAX;
            t.rows.drain(..cut);
        }
        if let Some(m) = t.last_good.as_ref().and_then(|h| h.model_name.clone()) {
            t.model_name = Some(m);
        }
        let (p, mut parts) = self
            .model
            .score(&t.rows, t.rows.len() - 1, t.model_name.as_ref());
        let p = match &d.remote {
            Some(r) => with_host_risk(p, r.host_signals(), &mut parts),
            None => p,
        };
        batch.put_raw(
            CF_CONFIG,
            format!("{OWN_KEY_PREFIX}{}", d.id).as_bytes(),
            &serde_json::to_vec(&own)?,
        );
        let saved = Saved {
            model_name: t.model_name.clone(),
            rows: t.rows.iter().map(SavedRow::from).collect(),
        };
        batch.put_raw(
            CF_CONFIG,
            format!("{HISTORY_KEY_PREFIX}{}", d.id).as_bytes(),
            &serde_json::to_vec(&saved)?,
        );
        Ok(disk_risk(d, t, settings, p, parts, own))
    }

    /// Each shard's chance of losing every replica before a repair, riskiest first.
    fn shard_risks(&self, p: &HashMap<u32, f64>, rate: f64) -> anyhow::Result<Vec<ShardRisk>> {
        let bytes = self.shard_bytes()?;
        let mut shards: Vec<ShardRisk> = self
            .fs
            .shard_table()
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let b = bytes.get(i).copied().unwrap_or(0);
                let repair_s = repair_seconds(b, rate, DETECT_S);
                // A disk without a score (failed, removed) is certain to be gone.
                let ps: Vec<f64> = s
                    .disks
                    .iter()
                    .map(|d| p.get(d).copied().unwrap_or(1.0))
                    .collect();
                ShardRisk {
                    id: i as u32,
                    disks: s.disks,
                    bytes: b,
                    repair_s,
                    p_loss_30d: loss_probability(&ps, repair_s),
                }
            })
            .collect();
        shards.sort_by(|a, b| b.p_loss_30d.total_cmp(&a.p_loss_30d).then(a.id.cmp(&b.id)));
        Ok(shards)
    }

    /// Bytes per shard (one copy), from a metadata scan at most every `SHARD_SCAN_INTERVAL`.
    fn shard_bytes(&self) -> anyhow::Result<Vec<u64>> {
        let mut g = self.shard_bytes.lock();
        if g.0.is_some_and(|t| t.elapsed() < SHARD_SCAN_INTERVAL) {
            return Ok(g.1.clone());
        }
        let mut v = vec![0u64; self.fs.shard_count()];
        self.fs.meta.each_extent(|_, _, e| {
            if let Some(b) = v.get_mut(e.shard as usize) {
                *b += u64::from(e.len);
            }
        })?;
        *g = (Some(Instant::now()), v.clone());
        Ok(v)
    }

    /// A remote disk's SMART, as its storage host published it.
    fn collect_remote(&self, d: &crate::store::Disk, t: &mut Track) {
        let Some(src) = self.remote_health.read().clone() else {
            return;
        };
        match src.health(d) {
            Some(Ok(h)) => {
                t.source = h.source.clone();
                t.last_good = Some(h);
                t.error = None;
            }
            Some(Err(e)) => t.error = Some(e),
            None => {}
        }
    }

    fn collect_disk(&self, d: &crate::store::Disk, t: &mut Track, s: &RiskSettings) {
        if !t.device_checked {
            t.device_checked = true;
            // A remote disk's device is its host's to read (its SMART comes in diskstat).
            if !d.is_remote() {
                t.device = collect::block_device_of(&d.root).ok().flatten();
            }
        }
        // Health: the metrics file wins; else the storage host's, else smartctl.
        let from_file = s
            .health_dir
            .as_deref()
            .is_some_and(|dir| read_file(dir, d, t));
        if !from_file && d.is_remote() {
            self.collect_remote(d, t);
        }
        if !from_file && self.opts.smartctl {
            if let Some(dev) = t.device.clone().filter(collect::has_smart) {
                if t.smartctl_next.is_none_or(|n| Instant::now() >= n) {
                    t.smartctl_next = Some(Instant::now() + SMARTCTL_INTERVAL);
                    match collect::run_smartctl(&dev, SMARTCTL_TIMEOUT) {
                        Ok(h) => {
                            t.source = h.source.clone();
                            t.last_good = Some(h);
                            t.error = None;
                        }
                        Err(e) => t.error = Some(format!("smartctl /dev/{}: {e}", dev.name)),
                    }
                }
            }
        }
        if t.source.is_empty() {
            t.source = "none".into();
        }
        // Latency from the kernel's counters, against the disk's own baseline.
        if let Some(dev) = &t.device {
            let p = Path::new("/sys/block").join(&dev.name).join("stat");
            if let Ok(text) = std::fs::read_to_string(&p) {
                if let Ok(now) = collect::parse_sysfs_stat(&text) {
                    if let Some(prev) = &t.stat_prev {
                        let (r, w) = collect::latency(prev, &now);
                        t.read_ms = r;
                        t.write_ms = w;
                        if let Some(ms) = r.into_iter().chain(w).reduce(f64::max) {
                            let base = *t.latency_baseline_ms.get_or_insert(ms);
                            if ms > base * SLOW_FACTOR && ms > SLOW_MS_MIN {
                                t.slow_intervals += 1;
                            } else {
                                t.latency_baseline_ms = Some(base + BASELINE_ALPHA * (ms - base));
                            }
                        }
                    }
                    t.stat_prev = Some(now);
                }
            }
        }
    }
}

/// Weight of one outage per day of a storage host's link in its hazard. There is no
/// host-failure data to fit it on (docs/cluster.md, "Open questions"): at 0.02 a host that
/// drops out 3 times in a day reaches the default warning level (0.06) on its own.
const HOST_OUTAGE_WEIGHT: f64 = 0.02;

/// A remote disk's risk is that of its disk or its host failing:
/// `1 - (1 - p_disk)(1 - p_host)`, `p_host = 1 - exp(-w * outages per day)` (at least a
/// day counted, so a fresh mount's first outage is not a daily rate of hundreds).
fn with_host_risk(
    p: f64,
    s: crate::store::HostSignals,
    parts: &mut Vec<(&'static str, f64)>,
) -> f64 {
    let days = (s.watched_s / 86_400.0).max(1.0);
    let hazard = HOST_OUTAGE_WEIGHT * s.outages as f64 / days;
    if hazard <= 0.0 {
        return p;
    }
    parts.push(("host_outages_per_day", hazard));
    let p_host = 1.0 - (-hazard).exp();
    1.0 - (1.0 - p) * (1.0 - p_host)
}

/// The disk's health file in `dir`, if there is one (a bad one is noted, and still wins
/// over the other sources: the operator put it there).
fn read_file(dir: &Path, d: &crate::store::Disk, t: &mut Track) -> bool {
    let mut from_file = false;
    match collect::read_health_file(dir, d.id) {
        Some(Ok(h)) => {
            t.source = h.source.clone();
            t.last_good = Some(h);
            t.error = None;
            from_file = true;
        }
        Some(Err(e)) => {
            let msg = e.to_string();
            if t.error.as_deref() != Some(msg.as_str()) {
                tracing::warn!(disk = d.id, "health file ignored: {msg}");
            }
            t.error = Some(msg);
            from_file = true;
        }
        None => {}
    }
    from_file
}

/// The disk's report line: its score, top factors, level and what was collected.
fn disk_risk(
    d: &crate::store::Disk,
    t: &Track,
    settings: &RiskSettings,
    p: f64,
    parts: Vec<(&'static str, f64)>,
    own: OwnSignals,
) -> DiskRisk {
    let mut factors: Vec<Factor> = parts
        .into_iter()
        .filter(|(_, c)| *c > 0.0)
        .map(|(n, c)| Factor {
            name: n.to_string(),
            contribution: c,
        })
        .collect();
    factors.sort_by(|a, b| b.contribution.total_cmp(&a.contribution));
    factors.truncate(FACTORS_MAX);
    let (total, free) = d.space().unwrap_or((0, 0));
    let level = if p >= settings.evacuate {
        "evacuate"
    } else if p >= settings.warn {
        "warn"
    } else {
        "ok"
    };
    let probe_us = d.probe_us_last.load(Ordering::Relaxed);
    DiskRisk {
        id: d.id,
        path: d.root.display().to_string(),
        p_fail_30d: p,
        level: level.into(),
        factors,
        source: t.source.clone(),
        device: t.device.as_ref().map(|b| b.name.clone()),
        health_error: t.error.clone(),
        health: t.last_good.clone(),
        own,
        fullness: if total > 0 {
            1.0 - free as f64 / total as f64
        } else {
            0.0
        },
        probe_ms_last: (probe_us > 0).then(|| probe_us as f64 / 1000.0),
        read_ms_per_io: t.read_ms,
        write_ms_per_io: t.write_ms,
        latency_ms_baseline: t.latency_baseline_ms,
        days: t.rows.len(),
    }
}

/// Today's model row: SMART values (when known) plus foreshard's own counters mapped onto
/// the attributes they correspond to.
fn today_row(day: i64, h: Option<&Health>, own: &OwnSignals) -> Row {
    let mut smart = h.map_or([None; ATTRS.len()], |h| h.model_attrs());
    let mut add = |attr: u32, v: u64| {
        if v > 0 {
            let i = ATTRS
                .iter()
                .position(|a| *a == attr)
                .expect("model attribute");
            smart[i] = Some(smart[i].unwrap_or(0.0) + v as f64);
        }
    };
    add(197, own.io_errors + own.checksum_errors);
    add(188, own.probe_timeouts + own.slow_intervals);
    Row {
        day,
        date: String::new(),
        failure: false,
        smart,
    }
}

/// A day of history as persisted.
#[derive(Serialize, Deserialize)]
struct SavedRow {
    day: i64,
    smart: Vec<Option<f64>>,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    model_name: Option<String>,
    rows: Vec<SavedRow>,
}

impl From<&Row> for SavedRow {
    fn from(r: &Row) -> Self {
        SavedRow {
            day: r.day,
            smart: r.smart.to_vec(),
        }
    }
}

impl From<SavedRow> for Row {
    fn from(r: SavedRow) -> Self {
        let mut smart = [None; ATTRS.len()];
        for (i, v) in r.smart.into_iter().take(ATTRS.len()).enumerate() {
            smart[i] = v;
        }
        Row {
            day: r.day,
            date: String::new(),
            failure: false,
            smart,
        }
    }
}

/// Reads the model a mount uses: `path`, or the shipped one.
pub fn load_model(path: Option<&Path>) -> anyhow::Result<(Model, String)> {
    match path {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            let m = Model::from_text(&text)
                .map_err(|e| anyhow::anyhow!("{}: not a usable model: {e:#}", p.display()))?;
            Ok((m, p.display().to_string()))
        }
        None => {
            let m = Model::from_text(SHIPPED_MODEL).expect("the shipped model parses");
            let name = format!("shipped ({})", m.trained_on);
            Ok((m, name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_outages_add_the_hosts_risk_to_its_disks() {
        let sig = |outages, days: f64| crate::store::HostSignals {
            outages,
            watched_s: days * 86_400.0,
        };
        let mut parts = Vec::new();
        assert_eq!(with_host_risk(0.01, sig(0, 0.1), &mut parts), 0.01);
        assert!(parts.is_empty());
        // Three outages within the first day: about the warning level on their own.
        let p = with_host_risk(0.0, sig(3, 0.01), &mut parts);
        assert!((p - (1.0 - (-0.06f64).exp())).abs() < 1e-12, "{p}");
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].0, "host_outages_per_day");
        assert!((parts[0].1 - 0.06).abs() < 1e-12, "{parts:?}");
        // Combined with the disk's own: more than either.
        let both = with_host_risk(0.05, sig(3, 0.5), &mut Vec::new());
        assert!(both > 0.05 && both > p && both < 0.05 + p, "{both}");
        // The same outages over ten days weigh a tenth.
        let spread = with_host_risk(0.0, sig(3, 10.0), &mut Vec::new());
        assert!(
            (spread - (1.0 - (-0.006f64).exp())).abs() < 1e-12,
            "{spread}"
        );
    }

    #[test]
    fn own_signals_raise_the_model_counters() {
        let own = OwnSignals {
            io_errors: 2,
            checksum_errors: 3,
            probe_timeouts: 1,
            slow_intervals: 1,
        };
        let r = today_row(10, None, &own);
        let at = |a: u32| r.smart[ATTRS.iter().position(|x| *x == a).unwrap()];
        assert_eq!(at(197), Some(5.0));
        assert_eq!(at(188), Some(2.0));
        assert_eq!(at(5), None);
        let (m, _) = load_model(None).unwrap();
        let clean = today_row(10, None, &OwnSignals::default());
        let (p0, _) = m.score(std::slice::from_ref(&clean), 0, None);
        let (p1, _) = m.score(std::slice::from_ref(&r), 0, None);
        assert!(
            p1 > p0,
            "checksum failures must raise the risk: {p0} -> {p1}"
        );
        let saved = SavedRow::from(&r);
        let back: Row = serde_json::from_slice::<SavedRow>(&serde_json::to_vec(&saved).unwrap())
            .unwrap()
            .into();
        assert_eq!(back.smart, r.smart);
    }

    #[test]
    fn settings_are_checked() {
        assert!(RiskSettings::default().validate().is_ok());
        let bad = RiskSettings {
            warn: 0.5,
            evacuate: 0.2,
            ..RiskSettings::default()
        };
        assert!(bad.validate().is_err());
        let rel = RiskSettings {
            health_dir: Some("rel/dir".into()),
            ..RiskSettings::default()
        };
        assert!(rel.validate().is_err());
    }
}
