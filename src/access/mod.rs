//! Volume Access Pattern Analyzer (VAPA): sees every read and write of the FUSE path as a
//! small event, and turns the stream into per-extent heat at three time scales, hot and
//! cold classes (quantiles with hysteresis), co-access pairs and groups, and hour-of-day
//! profiles per shard. Memory is bounded by `AccessOptions`; summaries persist in RocksDB.

pub mod pairs;
pub mod temporal;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::meta::{Meta, CF_ACCESS};
pub use pairs::{Ext, GroupRules, Pair, SpaceSaving};
use temporal::Profile;

/// Time constants of the three heat scales: about a minute, an hour, a day.
pub const SCALES_S: [f64; 3] = [60.0, 3600.0, 86_400.0];
pub const SCALE_NAMES: [&str; 3] = ["minute", "hour", "day"];
/// Shard id of an event whose shard the posting path does not know (buffered writes).
pub const SHARD_UNKNOWN: u32 = u32::MAX;
/// Extents one event may name (a request spans at most this many; more are not counted).
const EVENT_EXTENTS_MAX: u16 = 4;
/// Events taken from the queue per lock of the state.
const BATCH_EVENTS_MAX: usize = 1024;
/// How often the analyzer drains the queue (at 100k requests/s, 2000 events wait: well
/// inside `queue_events_max`).
const POLL_INTERVAL: Duration = Duration::from_millis(20);

#[derive(Clone, Debug)]
pub struct AccessOptions {
    /// Events queued between the FUSE path and the analyzer; beyond it events are dropped
    /// (and counted) rather than slowing I/O.
    pub queue_events_max: usize,
    /// Extents tracked; beyond it the coldest sixteenth is forgotten.
    pub tracked_extents_max: usize,
    /// Co-access pairs counted (Space-Saving capacity).
    pub pairs_max: usize,
    /// Processes/handles whose recent extents are remembered for pairing.
    pub streams_max: usize,
    /// Two accesses of one stream closer than this may form a pair...
    pub pair_window_ms: u64,
    /// ...among the stream's last few distinct extents.
    pub pair_recent_max: usize,
    /// Events per second whose pairs are counted; above it a random sample of that many is
    /// (access counts for the association follow the same sample), so the pair table's cost
    /// stays bounded however fast requests come.
    pub pair_events_per_s_max: u64,
    /// Shards with an hour-of-day profile.
    pub shards_max: usize,
    /// Which heat scale (index into `SCALES_S`) decides the class.
    pub class_scale: usize,
    /// Quantiles of heat: enter hot at or above `hot_enter`, leave below `hot_leave`;
    /// enter cold at or below `cold_enter`, leave above `cold_leave`.
    pub hot_enter_quantile: f64,
    pub hot_leave_quantile: f64,
    pub cold_enter_quantile: f64,
    pub cold_leave_quantile: f64,
    /// An extent needs at least this heat to be hot, so a quiet pool has no hot set.
    pub hot_heat_min: f64,
    pub classify_interval: Duration,
    pub save_interval: Duration,
    /// Pair counts and access counts halve this often, so old habits fade.
    pub age_interval: Duration,
}

impl Default for AccessOptions {
    fn default() -> Self {
        AccessOptions {
            queue_events_max: 65_536,
            tracked_extents_max: 1 << 20,
            pairs_max: 65_536,
            streams_max: 4096,
            pair_window_ms: 1000,
            pair_recent_max: 2,
            pair_events_per_s_max: 10_000,
            shards_max: 16_384,
            class_scale: 1,
            hot_enter_quantile: 0.9,
            hot_leave_quantile: 0.75,
            cold_enter_quantile: 0.3,
            cold_leave_quantile: 0.5,
            hot_heat_min: 3.0,
            classify_interval: Duration::from_secs(5),
            save_interval: Duration::from_secs(60),
            age_interval: Duration::from_secs(3600),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessOp {
    Read,
    Write,
}

/// One request seen by the FUSE path: 40 bytes, posted without blocking.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub ino: u64,
    /// First extent of the request, and how many it spans.
    pub index: u64,
    pub extents: u16,
    pub op: AccessOp,
    pub bytes: u32,
    pub t_ms: u64,
    /// The process (pid), or the file handle when the pid is unknown: accesses of one
    /// stream close in time are co-accesses.
    pub stream: u64,
    pub shard: u32,
}

use crate::util::now_ms;

/// The posting end, held by the filesystem core.
pub struct Sink {
    tx: SyncSender<Event>,
    posted: AtomicU64,
    dropped: AtomicU64,
}

impl Sink {
    /// Never blocks: a full queue drops the event and counts it.
    pub fn post(&self, ev: Event) {
        match self.tx.try_send(ev) {
            Ok(()) => {
                self.posted.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum HeatClass {
    Hot,
    Warm,
    Cold,
}

impl HeatClass {
    pub fn name(self) -> &'static str {
        match self {
            HeatClass::Hot => "hot",
            HeatClass::Warm => "warm",
            HeatClass::Cold => "cold",
        }
    }
}

/// What is kept per tracked extent (48 bytes; with its key and map slot about 74 bytes at
/// the map's 7/8 load, up to twice that just after the map grows).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct ExtentHeat {
    read: [f32; 3],
    write: [f32; 3],
    last_ms: u64,
    /// Accesses since the last ageing (halved with the pair counts, which it normalises).
    accesses: u32,
    shard: u32,
    class: HeatClass,
    #[serde(skip)]
    dirty: bool,
}

impl ExtentHeat {
    fn new(t_ms: u64) -> ExtentHeat {
        ExtentHeat {
            read: [0.0; 3],
            write: [0.0; 3],
            last_ms: t_ms,
            accesses: 0,
            shard: SHARD_UNKNOWN,
            class: HeatClass::Warm,
            dirty: true,
        }
    }

    fn decay_to(&mut self, t_ms: u64) {
        if t_ms <= self.last_ms {
            return;
        }
        let dt = (t_ms - self.last_ms) as f64 / 1000.0;
        for (i, tau) in SCALES_S.iter().enumerate() {
            let k = decay(dt / tau) as f32;
            self.read[i] *= k;
            self.write[i] *= k;
        }
        self.last_ms = t_ms;
    }

    /// (read, write) heat at `scale`, decayed to `t_ms` (requests, exponentially weighted).
    pub fn at(&self, scale: usize, t_ms: u64) -> (f64, f64) {
        let dt = t_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        let k = (-dt / SCALES_S[scale]).exp();
        (
            f64::from(self.read[scale]) * k,
            f64::from(self.write[scale]) * k,
        )
    }

    pub fn class(&self) -> HeatClass {
        self.class
    }

    pub fn shard(&self) -> Option<u32> {
        (self.shard != SHARD_UNKNOWN).then_some(self.shard)
    }
}

/// exp(-x); for small x (the common case: an extent seen again well within a scale) a
/// second-order series, accurate to 1e-6 for x < 1/64, instead of a libm call per scale.
fn decay(x: f64) -> f64 {
    if x < 1.0 / 64.0 {
        1.0 - x + x * x / 2.0
    } else {
        (-x).exp()
    }
}

/// Recent distinct extents of one stream, newest last.
#[derive(Default)]
struct Recent(Vec<(Ext, u64)>);

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Thresholds {
    pub hot_enter: f64,
    pub hot_leave: f64,
    pub cold_enter: f64,
    pub cold_leave: f64,
}

/// Fast hashing for the per-event maps: keys are our own numbers, not attacker-chosen.
type FastMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;

struct State {
    extents: FastMap<Ext, ExtentHeat>,
    pairs: SpaceSaving,
    streams: lru::LruCache<u64, Recent, rustc_hash::FxBuildHasher>,
    shards: FastMap<u32, Profile>,
    /// The whole pool's hour-of-day profile.
    pool: Option<Profile>,
    thresholds: Thresholds,
    /// Extents forgotten since the last save (their persisted summaries go too).
    evicted: Vec<Ext>,
    evictions: u64,
    events: u64,
    /// Share of events whose pairs are counted (see `pair_events_per_s_max`).
    pair_sample: f64,
    rng: u64,
}

/// Looks up the shard of an extent the event did not name.
pub type ShardResolver = Box<dyn Fn(u64, u64) -> Option<u32> + Send + Sync>;

pub struct Analyzer {
    pub opts: AccessOptions,
    state: Mutex<State>,
    sink: Arc<Sink>,
    rx: Mutex<Option<Receiver<Event>>>,
    resolver: Mutex<Option<ShardResolver>>,
    /// CPU time of the analyzer thread.
    cpu_ns: AtomicU64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccessStats {
    pub events_posted: u64,
    pub events_dropped: u64,
    pub events_applied: u64,
    pub extents_tracked: usize,
    pub extents_evicted: u64,
    pub pairs_tracked: usize,
    pub shards_profiled: usize,
    pub memory_bytes: usize,
    pub memory_bytes_max: usize,
    pub cpu_ms: u64,
}

impl Analyzer {
    pub fn new(opts: AccessOptions) -> Arc<Analyzer> {
        let (tx, rx) = sync_channel(opts.queue_events_max);
        let streams = NonZeroUsize::new(opts.streams_max.max(1)).expect("nonzero");
        Arc::new(Analyzer {
            state: Mutex::new(State {
                extents: FastMap::default(),
                pairs: SpaceSaving::new(opts.pairs_max.max(1)),
                streams: lru::LruCache::with_hasher(streams, rustc_hash::FxBuildHasher),
                shards: FastMap::default(),
                pool: None,
                thresholds: Thresholds::default(),
                evicted: Vec::new(),
                evictions: 0,
                events: 0,
                pair_sample: 1.0,
                rng: 0x2545_F491_4F6C_DD1D,
            }),
            sink: Arc::new(Sink {
                tx,
                posted: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            }),
            rx: Mutex::new(Some(rx)),
            resolver: Mutex::new(None),
            cpu_ns: AtomicU64::new(0),
            opts,
        })
    }

    pub fn sink(&self) -> Arc<Sink> {
        self.sink.clone()
    }

    pub fn set_resolver(&self, r: ShardResolver) {
        *self.resolver.lock() = Some(r);
    }

    /// Starts the analyzer thread: applies events, classifies, ages and saves on timers.
    pub fn start(self: &Arc<Self>, meta: Option<Arc<Meta>>) {
        let Some(rx) = self.rx.lock().take() else {
            return;
        };
        let weak: Weak<Analyzer> = Arc::downgrade(self);
        crate::supervise::spawn("access", move || {
            let (mut classified, mut saved, mut aged) =
                (Instant::now(), Instant::now(), Instant::now());
            let mut batch = Vec::with_capacity(BATCH_EVENTS_MAX);
            let mut polled = Instant::now();
            let mut posted_before = 0u64;
            loop {
                // Poll rather than block on the queue: a blocked receiver makes every
                // post a futex wake-up on the FUSE thread and a context switch here.
                std::thread::sleep(POLL_INTERVAL);
                let Some(a) = weak.upgrade() else { break };
                crate::supervise::fault_point("access");
                let mut gone = false;
                // Pair sampling from the rate of events since the last poll.
                let posted = a.sink.posted.load(Ordering::Relaxed);
                let secs = polled.elapsed().as_secs_f64().max(1e-3);
                polled = Instant::now();
                let rate = posted.saturating_sub(posted_before) as f64 / secs;
                posted_before = posted;
                a.set_pair_sample(a.opts.pair_events_per_s_max as f64 / rate.max(1.0));
                loop {
                    while batch.len() < BATCH_EVENTS_MAX {
                        match rx.try_recv() {
                            Ok(ev) => batch.push(ev),
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => {
                                gone = true;
                                break;
                            }
                        }
                    }
                    if batch.is_empty() {
                        break;
                    }
                    a.apply(&batch);
                    batch.clear();
                }
                if gone {
                    break;
                }
                if classified.elapsed() >= a.opts.classify_interval {
                    a.classify(now_ms());
                    classified = Instant::now();
                }
                if aged.elapsed() >= a.opts.age_interval {
                    a.age();
                    aged = Instant::now();
                }
                if let Some(m) = &meta {
                    if saved.elapsed() >= a.opts.save_interval {
                        if let Err(e) = a.save(m) {
                            tracing::warn!("cannot save access summaries: {e:#}");
                        }
                        saved = Instant::now();
                    }
                }
                a.cpu_ns.store(thread_cpu_ns(), Ordering::Relaxed);
            }
        })
        .expect("spawn access thread");
    }

    /// Counts pairs for this share of events (1 = all).
    pub fn set_pair_sample(&self, p: f64) {
        self.state.lock().pair_sample = p.clamp(1e-4, 1.0);
    }

    /// Applies events (the analyzer thread; tests call it directly).
    pub fn apply(&self, events: &[Event]) {
        let resolver = self.resolver.lock();
        let mut st = self.state.lock();
        for ev in events {
            self.apply_one(&mut st, ev, resolver.as_ref());
        }
    }

    fn apply_one(&self, st: &mut State, ev: &Event, resolver: Option<&ShardResolver>) {
        st.events += 1;
        st.pool
            .get_or_insert_with(|| Profile::new(ev.t_ms / 1000))
            .record(ev.t_ms / 1000, 1);
        let n = ev.extents.clamp(1, EVENT_EXTENTS_MAX);
        let sampled = st.pair_sample >= 1.0 || {
            st.rng ^= st.rng << 13;
            st.rng ^= st.rng >> 7;
            st.rng ^= st.rng << 17;
            ((st.rng >> 11) as f64 / (1u64 << 53) as f64) < st.pair_sample
        };
        for k in 0..u64::from(n) {
            let e = (ev.ino, ev.index + k);
            if !st.extents.contains_key(&e) && st.extents.len() >= self.opts.tracked_extents_max {
                self.evict(st, ev.t_ms);
            }
            let h = st.extents.entry(e).or_insert_with(|| {
                let mut h = ExtentHeat::new(ev.t_ms);
                if ev.shard == SHARD_UNKNOWN {
                    if let Some(r) = resolver {
                        h.shard = r(e.0, e.1).unwrap_or(SHARD_UNKNOWN);
                    }
                }
                h
            });
            h.decay_to(ev.t_ms);
            let side = match ev.op {
                AccessOp::Read => &mut h.read,
                AccessOp::Write => &mut h.write,
            };
            side.iter_mut().for_each(|v| *v += 1.0);
            if sampled {
                h.accesses = h.accesses.saturating_add(1);
            }
            if ev.shard != SHARD_UNKNOWN && k == 0 {
                h.shard = ev.shard;
            }
            h.dirty = true;
            let shard = h.shard;
            if shard != SHARD_UNKNOWN {
                let room = st.shards.len() < self.opts.shards_max;
                if let Some(p) = st.shards.get_mut(&shard) {
                    p.record(ev.t_ms / 1000, 1);
                } else if room {
                    let mut p = Profile::new(ev.t_ms / 1000);
                    p.record(ev.t_ms / 1000, 1);
                    st.shards.insert(shard, p);
                }
            }
            self.pair_with_recent(st, ev.stream, e, ev.t_ms, sampled);
        }
    }

    /// Pairs `e` with the stream's recent extents (counted when `count`; the recent list
    /// follows every event either way).
    fn pair_with_recent(&self, st: &mut State, stream: u64, e: Ext, t_ms: u64, count: bool) {
        let window = self.opts.pair_window_ms;
        let recent = st.streams.get_or_insert_mut(stream, Recent::default);
        let mut found = [None; 8];
        if count {
            for (slot, (r, t)) in found.iter_mut().zip(recent.0.iter()) {
                if *r != e && t_ms.saturating_sub(*t) <= window {
                    *slot = Some(pairs::pair(*r, e));
                }
            }
        }
        recent.0.retain(|(r, _)| *r != e);
        recent.0.push((e, t_ms));
        if recent.0.len() > self.opts.pair_recent_max.min(found.len()) {
            recent.0.remove(0);
        }
        for p in found.into_iter().flatten() {
            st.pairs.add(p);
        }
    }

    /// Forgets the coldest sixteenth of the tracked extents (by day-scale heat).
    fn evict(&self, st: &mut State, t_ms: u64) {
        let mut heats: Vec<(f64, Ext)> = st
            .extents
            .iter()
            .map(|(e, h)| {
                let (r, w) = h.at(2, t_ms);
                (r + w, *e)
            })
            .collect();
        let k = (heats.len() / 16).max(1);
        heats.select_nth_unstable_by(k - 1, |a, b| a.0.total_cmp(&b.0));
        for (_, e) in &heats[..k] {
            st.extents.remove(e);
            st.evicted.push(*e);
        }
        st.evictions += k as u64;
    }

    /// Recomputes the quantile thresholds and moves extents between classes, with
    /// hysteresis: hot until heat falls below the lower `hot_leave` quantile, cold until it
    /// rises above `cold_leave`.
    pub fn classify(&self, t_ms: u64) {
        let o = &self.opts;
        let resolver = self.resolver.lock();
        let mut st = self.state.lock();
        // Extents first seen as buffered writes learn their shard once committed.
        if let Some(r) = resolver.as_ref() {
            for (e, h) in st.extents.iter_mut() {
                if h.shard == SHARD_UNKNOWN {
                    if let Some(s) = r(e.0, e.1) {
                        h.shard = s;
                        h.dirty = true;
                    }
                }
            }
        }
        let scale = o.class_scale.min(2);
        let mut heats: Vec<f64> = st
            .extents
            .values()
            .map(|h| {
                let (r, w) = h.at(scale, t_ms);
                r + w
            })
            .collect();
        if heats.is_empty() {
            return;
        }
        heats.sort_unstable_by(f64::total_cmp);
        let q = |p: f64| heats[((heats.len() - 1) as f64 * p).round() as usize];
        let th = Thresholds {
            hot_enter: q(o.hot_enter_quantile).max(o.hot_heat_min),
            hot_leave: q(o.hot_leave_quantile).min(q(o.hot_enter_quantile).max(o.hot_heat_min)),
            cold_enter: q(o.cold_enter_quantile),
            cold_leave: q(o.cold_leave_quantile),
        };
        st.thresholds = th;
        for h in st.extents.values_mut() {
            let (r, w) = h.at(scale, t_ms);
            let heat = r + w;
            let next = match h.class {
                HeatClass::Hot if heat >= th.hot_leave => HeatClass::Hot,
                HeatClass::Cold if heat <= th.cold_leave => HeatClass::Cold,
                _ if heat >= th.hot_enter => HeatClass::Hot,
                _ if heat <= th.cold_enter => HeatClass::Cold,
                _ => HeatClass::Warm,
            };
            if next != h.class {
                h.class = next;
                h.dirty = true;
            }
        }
    }

    /// Halves pair and access counts.
    pub fn age(&self) {
        let mut st = self.state.lock();
        st.pairs.age();
        for h in st.extents.values_mut() {
            h.accesses /= 2;
            h.dirty = true;
        }
    }

    pub fn thresholds(&self) -> Thresholds {
        self.state.lock().thresholds
    }

    /// Every tracked extent with its summary.
    pub fn extents(&self) -> Vec<(Ext, ExtentHeat)> {
        self.state
            .lock()
            .extents
            .iter()
            .map(|(e, h)| (*e, *h))
            .collect()
    }

    pub fn heat(&self, e: Ext) -> Option<ExtentHeat> {
        self.state.lock().extents.get(&e).copied()
    }

    /// The sharding engine moved extents: their events now count for the new shard.
    pub fn moved(&self, moves: &[(Ext, u32)]) {
        let mut st = self.state.lock();
        for (e, s) in moves {
            if let Some(h) = st.extents.get_mut(e) {
                h.shard = *s;
                h.dirty = true;
            }
        }
    }

    /// Correlated groups from the pair table.
    pub fn groups(&self, rules: GroupRules) -> Vec<Vec<Ext>> {
        let st = self.state.lock();
        let total: u64 = st.extents.values().map(|h| u64::from(h.accesses)).sum();
        // Each access pairs with up to `pair_recent_max` earlier ones; both directions.
        let rules = GroupRules {
            chance: 2.0 * self.opts.pair_recent_max as f64 / total.max(1) as f64,
            ..rules
        };
        let edges: Vec<(Pair, u32)> = st.pairs.top().into_iter().map(|(p, c, _)| (p, c)).collect();
        pairs::groups(
            &edges,
            |e| st.extents.get(&e).map_or(0, |h| h.accesses),
            rules,
        )
    }

    pub fn top_pairs(&self, n: usize) -> Vec<(Pair, u32)> {
        let st = self.state.lock();
        st.pairs
            .top()
            .into_iter()
            .take(n)
            .map(|(p, c, _)| (p, c))
            .collect()
    }

    /// Per shard: hour-of-day requests, periodicity, peak hours.
    pub fn profiles(&self, now_ms: u64) -> Vec<ShardProfile> {
        let st = self.state.lock();
        let mut out: Vec<ShardProfile> = st
            .shards
            .iter()
            .map(|(s, p)| ShardProfile {
                shard: *s,
                by_hour: p.by_hour().to_vec(),
                periodicity: p.periodicity(now_ms / 1000),
                peak_hours: p.peak_hours(),
            })
            .collect();
        out.sort_by_key(|p| p.shard);
        out
    }

    /// The pool-wide hour-of-day profile and its periodicity.
    pub fn pool_profile(&self, now_ms: u64) -> Option<ShardProfile> {
        let st = self.state.lock();
        st.pool.as_ref().map(|p| ShardProfile {
            shard: SHARD_UNKNOWN,
            by_hour: p.by_hour().to_vec(),
            periodicity: p.periodicity(now_ms / 1000),
            peak_hours: p.peak_hours(),
        })
    }

    /// Shards with a daily rhythm whose peak hour starts within `lead`.
    pub fn upcoming_peaks(&self, now_ms: u64, lead: Duration) -> Vec<(u32, u32)> {
        let st = self.state.lock();
        let mut out: Vec<(u32, u32)> = st
            .shards
            .iter()
            .filter_map(|(s, p)| {
                p.upcoming_peak(now_ms / 1000, lead.as_secs(), 0.5)
                    .map(|h| (*s, h))
            })
            .collect();
        out.sort_unstable();
        out
    }

    pub fn stats(&self) -> AccessStats {
        let st = self.state.lock();
        AccessStats {
            events_posted: self.sink.posted.load(Ordering::Relaxed),
            events_dropped: self.sink.dropped.load(Ordering::Relaxed),
            events_applied: st.events,
            extents_tracked: st.extents.len(),
            extents_evicted: st.evictions,
            pairs_tracked: st.pairs.len(),
            shards_profiled: st.shards.len(),
            memory_bytes: memory_bytes(&st, &self.opts),
            memory_bytes_max: self.memory_bytes_max(),
            cpu_ms: self.cpu_ns.load(Ordering::Relaxed) / 1_000_000,
        }
    }

    /// The most the analyzer's tables can take with these options (the extent map at its
    /// emptiest load after growing: twice its slots).
    pub fn memory_bytes_max(&self) -> usize {
        let o = &self.opts;
        o.tracked_extents_max * 2 * EXTENT_SLOT_BYTES
            + o.pairs_max * pairs::PAIR_BYTES
            + o.shards_max * temporal::PROFILE_BYTES
            + o.streams_max * (64 + o.pair_recent_max * 24)
            + o.queue_events_max * std::mem::size_of::<Event>()
    }

    /// Writes changed summaries to RocksDB (extents one key each, pairs and profiles as
    /// one value each).
    pub fn save(&self, meta: &Meta) -> anyhow::Result<()> {
        let mut b = meta.batch();
        {
            let mut st = self.state.lock();
            for e in std::mem::take(&mut st.evicted) {
                b.del_raw(CF_ACCESS, &extent_key(e));
            }
            for (e, h) in st.extents.iter_mut() {
                if h.dirty {
                    b.put_raw(CF_ACCESS, &extent_key(*e), &postcard::to_allocvec(h)?);
                    h.dirty = false;
                }
            }
            b.put_raw(
                CF_ACCESS,
                b"pairs",
                &postcard::to_allocvec(&st.pairs.save())?,
            );
            let shards: Vec<(&u32, &Profile)> = st.shards.iter().collect();
            b.put_raw(CF_ACCESS, b"shards", &postcard::to_allocvec(&shards)?);
            if let Some(p) = &st.pool {
                b.put_raw(CF_ACCESS, b"pool", &postcard::to_allocvec(p)?);
            }
        }
        meta.write(b)?;
        Ok(())
    }

    /// Loads what an earlier mount learned. A damaged summary is skipped with a warning:
    /// it is advice, not data.
    pub fn load(&self, meta: &Meta) -> anyhow::Result<usize> {
        let mut st = self.state.lock();
        let mut bad = 0;
        meta.each_raw(CF_ACCESS, |k, v| {
            if k.len() == 17 && k[0] == b'e' {
                let e = (
                    u64::from_be_bytes(k[1..9].try_into().expect("8 bytes")),
                    u64::from_be_bytes(k[9..17].try_into().expect("8 bytes")),
                );
                match postcard::from_bytes::<ExtentHeat>(v) {
                    Ok(h) if st.extents.len() < self.opts.tracked_extents_max => {
                        st.extents.insert(e, h);
                    }
                    Ok(_) => {}
                    Err(_) => bad += 1,
                }
            } else if k == b"pairs" {
                match postcard::from_bytes::<pairs::SavedPairs>(v) {
                    Ok(p) => st.pairs = SpaceSaving::restore(p, self.opts.pairs_max),
                    Err(_) => bad += 1,
                }
            } else if k == b"pool" {
                match postcard::from_bytes::<Profile>(v) {
                    Ok(p) => st.pool = Some(p),
                    Err(_) => bad += 1,
                }
            } else if k == b"shards" {
                match postcard::from_bytes::<Vec<(u32, Profile)>>(v) {
                    Ok(ps) => {
                        st.shards = ps.into_iter().take(self.opts.shards_max).collect();
                    }
                    Err(_) => bad += 1,
                }
            }
            Ok(())
        })?;
        if bad > 0 {
            tracing::warn!("{bad} access summaries could not be decoded and were skipped");
        }
        Ok(st.extents.len())
    }
}

/// Bytes of one slot of the extent map: key, value, control byte.
pub const EXTENT_SLOT_BYTES: usize =
    std::mem::size_of::<Ext>() + std::mem::size_of::<ExtentHeat>() + 1;

fn memory_bytes(st: &State, o: &AccessOptions) -> usize {
    st.extents.capacity() * EXTENT_SLOT_BYTES
        + st.pairs.memory_bytes()
        + st.shards.capacity() * temporal::PROFILE_BYTES
        + st.streams.len() * (64 + o.pair_recent_max * 24)
}

fn extent_key(e: Ext) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = b'e';
    k[1..9].copy_from_slice(&e.0.to_be_bytes());
    k[9..].copy_from_slice(&e.1.to_be_bytes());
    k
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShardProfile {
    pub shard: u32,
    pub by_hour: Vec<f32>,
    pub periodicity: Option<f64>,
    pub peak_hours: Vec<u32>,
}

/// Heat per extent in a map, for reports and the planner.
pub fn heat_map(a: &Analyzer) -> HashMap<Ext, ExtentHeat> {
    a.extents().into_iter().collect()
}

#[cfg(test)]
mod tests;
