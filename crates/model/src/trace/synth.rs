//! `trace stats` and `trace synth` (planted hot set, co-access groups, nightly set, daily cycle).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Serialize;

use super::*;

// --------------------------------------------------------------------------------- stats --

#[derive(Debug, Clone, Serialize)]
pub struct VolumeStats {
    pub name: String,
    pub requests: u64,
    /// Highest end offset touched.
    pub end_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TraceStats {
    pub requests: u64,
    pub reads: u64,
    pub writes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub volumes: Vec<VolumeStats>,
    pub extent_size_bytes: u64,
    /// Distinct (volume, offset / extent size) touched.
    pub extents: u64,
    pub span_hours: f64,
    /// Share of extent accesses (a request counts once per extent it touches) that go to the
    /// busiest 10% of extents (rounded up).
    pub top10_share: f64,
    /// Requests by hour of the day (time_us / 1 h mod 24).
    pub requests_per_hour: Vec<u64>,
}

pub fn stats(trace: &Path, extent_size: u64) -> anyhow::Result<TraceStats> {
    if extent_size == 0 {
        bail!("extent size must be above 0");
    }
    let (mut requests, mut reads, mut bytes_read, mut bytes_written) = (0u64, 0u64, 0u64, 0u64);
    let mut vol_ids: HashMap<String, usize> = HashMap::new();
    let mut vols: Vec<VolumeStats> = Vec::new();
    let mut extents: HashMap<(usize, u64), u64> = HashMap::new();
    let mut per_hour = vec![0u64; 24];
    let (mut first, mut last) = (None, 0u64);
    for r in open(trace)? {
        let r = r?;
        requests += 1;
        match r.op {
            Op::Read => {
                reads += 1;
                bytes_read += u64::from(r.size);
            }
            Op::Write => bytes_written += u64::from(r.size),
        }
        first.get_or_insert(r.time_us);
        last = last.max(r.time_us);
        per_hour[((r.time_us / US_PER_HOUR) % 24) as usize] += 1;
        let id = match vol_ids.get(&r.volume) {
            Some(&id) => id,
            None => {
                vols.push(VolumeStats {
                    name: r.volume.clone(),
                    requests: 0,
                    end_bytes: 0,
                });
                vol_ids.insert(r.volume.clone(), vols.len() - 1);
                vols.len() - 1
            }
        };
        vols[id].requests += 1;
        vols[id].end_bytes = vols[id].end_bytes.max(r.end());
        for e in r.offset / extent_size..=(r.end() - 1) / extent_size {
            *extents.entry((id, e)).or_default() += 1;
        }
    }
    let mut counts: Vec<u64> = extents.values().copied().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let top = counts.len().div_ceil(10);
    let accesses: u64 = counts.iter().sum();
    vols.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(TraceStats {
        requests,
        reads,
        writes: requests - reads,
        bytes_read,
        bytes_written,
        volumes: vols,
        extent_size_bytes: extent_size,
        extents: counts.len() as u64,
        span_hours: first.map_or(0.0, |f| (last - f) as f64 / US_PER_HOUR as f64),
        top10_share: counts[..top].iter().sum::<u64>() as f64 / accesses.max(1) as f64,
        requests_per_hour: per_hour,
    })
}

// ----------------------------------------------------------------------------- synthetic --

/// Parameters of the synthetic trace. Time 0 is midnight of day 0; the hour of a timestamp is
/// `time_us / 1 h mod 24` (local time stored as if UTC, like the real traces).
#[derive(Debug, Clone, Serialize)]
pub struct SynthParams {
    pub seed: u64,
    pub days: u32,
    pub volumes: u32,
    pub extents_per_volume: u64,
    pub extent_size: u64,
    pub requests: u64,
    /// Share of all extents that are hot.
    pub hot_fraction: f64,
    /// Share of single (non-burst, non-nightly) requests that go to the hot set.
    pub hot_share: f64,
    pub groups: u32,
    pub group_size: u32,
    /// Share of requests issued as group bursts (every member once, back to back).
    pub burst_share: f64,
    /// Share of single requests to one group member alone.
    pub group_single_share: f64,
    /// Extents touched only during `night_hour`, every day.
    pub nightly: u32,
    pub night_hour: u32,
    /// Share of requests going to the nightly extents.
    pub nightly_share: f64,
    pub write_fraction: f64,
    pub request_bytes_min: u64,
    pub request_bytes_max: u64,
    /// Busy hours `[day_start_hour, day_end_hour)` get `day_weight` times the traffic per hour.
    pub day_start_hour: u32,
    pub day_end_hour: u32,
    pub day_weight: u32,
}

impl Default for SynthParams {
    fn default() -> Self {
        SynthParams {
            seed: 42,
            days: 3,
            volumes: 2,
            extents_per_volume: 64,
            extent_size: 1 << 20,
            requests: 20_000,
            hot_fraction: 0.1,
            hot_share: 0.7,
            groups: 6,
            group_size: 4,
            burst_share: 0.15,
            group_single_share: 0.02,
            nightly: 4,
            night_hour: 2,
            nightly_share: 0.02,
            write_fraction: 0.3,
            request_bytes_min: 4 << 10,
            request_bytes_max: 64 << 10,
            day_start_hour: 8,
            day_end_hour: 18,
            day_weight: 4,
        }
    }
}

/// An extent as `shards --json` names it: the file on the mount and offset / extent size.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ExtentRef {
    pub path: String,
    pub index: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VolumeSize {
    pub name: String,
    /// extents_per_volume x extent size (the replayed file is as long as the highest end
    /// offset the trace touches).
    pub size_bytes: u64,
}

/// What the generator planted.
#[derive(Debug, Clone, Serialize)]
pub struct Truth {
    pub extent_size_bytes: u64,
    pub hot: Vec<ExtentRef>,
    pub groups: Vec<Vec<ExtentRef>>,
    pub nightly: Vec<ExtentRef>,
    pub night_hour: u32,
    pub volumes: Vec<VolumeSize>,
    pub params: SynthParams,
}

/// Why a synthetic record was emitted (for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Single,
    /// Burst number n, on a group.
    Burst {
        burst: u64,
        group: usize,
    },
    Nightly,
}

/// A deterministic generator (splitmix64) so fixtures do not depend on `rand`'s versions.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    /// Uniform in 0..n (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    pub(crate) fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }

    pub(crate) fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

impl SynthParams {
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        let share = |name: &str, v: f64| -> anyhow::Result<()> {
            if !(0.0..=1.0).contains(&v) {
                bail!("{name} must be within 0..1 (got {v})");
            }
            Ok(())
        };
        share("hot_fraction", self.hot_fraction)?;
        share("hot_share", self.hot_share)?;
        share("burst_share", self.burst_share)?;
        share("group_single_share", self.group_single_share)?;
        share("nightly_share", self.nightly_share)?;
        share("write_fraction", self.write_fraction)?;
        if self.burst_share + self.nightly_share > 1.0 {
            bail!("burst_share + nightly_share must not exceed 1");
        }
        if self.days == 0 || self.volumes == 0 || self.extents_per_volume == 0 {
            bail!("days, volumes and extents per volume must be at least 1");
        }
        if self.requests == 0 {
            bail!("requests must be at least 1");
        }
        if self.extent_size == 0 || !self.extent_size.is_multiple_of(BLOCK_BYTES) {
            bail!("extent size must be a positive multiple of {BLOCK_BYTES} bytes");
        }
        if self.request_bytes_min == 0
            || !self.request_bytes_min.is_multiple_of(BLOCK_BYTES)
            || !self.request_bytes_max.is_multiple_of(BLOCK_BYTES)
            || self.request_bytes_min > self.request_bytes_max
            || self.request_bytes_max > u64::from(REQUEST_BYTES_MAX)
        {
            bail!(
                "request sizes must be multiples of {BLOCK_BYTES} bytes with 0 < min <= max <= \
                 {REQUEST_BYTES_MAX}"
            );
        }
        if self.request_bytes_min > self.extent_size {
            bail!("the smallest request must fit in one extent");
        }
        if self.groups > 0 && self.group_size < 2 {
            bail!("a co-access group needs at least 2 members");
        }
        if self.night_hour >= 24
            || self.day_start_hour > self.day_end_hour
            || self.day_end_hour > 24
        {
            bail!("hours must be within 0..24 with day_start_hour <= day_end_hour");
        }
        if self.day_weight == 0 {
            bail!("day_weight must be at least 1");
        }
        let planted = self.hot_count() + self.group_members() + u64::from(self.nightly);
        if planted >= self.total_extents() {
            bail!(
                "hot set, groups and nightly extents ({planted}) must leave at least one of the \
                 {} extents for background traffic",
                self.total_extents()
            );
        }
        Ok(())
    }

    pub(crate) fn total_extents(&self) -> u64 {
        u64::from(self.volumes) * self.extents_per_volume
    }

    pub(crate) fn hot_count(&self) -> u64 {
        let n = (self.hot_fraction * self.total_extents() as f64).round() as u64;
        if self.hot_fraction > 0.0 {
            n.max(1)
        } else {
            0
        }
    }

    pub(crate) fn group_members(&self) -> u64 {
        u64::from(self.groups) * u64::from(self.group_size)
    }

    pub(crate) fn volume_name(v: u64) -> String {
        format!("vol{v}")
    }

    /// A random hour of the daily cycle: busy hours weigh `day_weight`, others 1.
    pub(crate) fn cycle_hour(&self, rng: &mut Rng) -> u64 {
        let busy = |h: u32| (self.day_start_hour..self.day_end_hour).contains(&h);
        let weight = |h: u32| if busy(h) { self.day_weight } else { 1 };
        let mut r = rng.below((0..24).map(|h| u64::from(weight(h))).sum());
        for h in 0..24 {
            let w = u64::from(weight(h));
            if r < w {
                return u64::from(h);
            }
            r -= w;
        }
        unreachable!("r is below the sum of the weights")
    }
}

/// An extent of the synthetic trace: (volume number, index in the volume).
type Extent = (u64, u64);

/// Where the generator plants what: disjoint sets of extents, each sorted.
struct Layout {
    hot: Vec<Extent>,
    groups: Vec<Vec<Extent>>,
    /// The groups' members, in shuffled order (single requests to a group member pick here).
    grouped: Vec<Extent>,
    nightly: Vec<Extent>,
    /// The rest, in shuffled order: background traffic.
    cold: Vec<Extent>,
}

/// An event of the trace: time, kind, extents touched back to back.
type Event = (u64, Kind, Vec<Extent>);

/// Generates the synthetic trace: records in time order with why each was emitted, and the
/// truth. Deterministic for given parameters.
pub fn synth(p: &SynthParams) -> anyhow::Result<(Vec<(Record, Kind)>, Truth)> {
    p.check()?;
    let mut rng = Rng(p.seed);
    let layout = layout(p, &mut rng);
    let mut events = events(p, &mut rng, &layout);
    // Stable: events at the same microsecond keep their generation order.
    events.sort_by_key(|e| e.0);
    let out = records(p, &mut rng, events);
    Ok((out, truth(p, &layout)))
}

/// Every extent shuffled, then cut into the hot set, groups and nightly set.
fn layout(p: &SynthParams, rng: &mut Rng) -> Layout {
    // (volume, index) pairs, shuffled: hot set, groups and nightly set are disjoint slices.
    let mut all: Vec<Extent> = (0..u64::from(p.volumes))
        .flat_map(|v| (0..p.extents_per_volume).map(move |i| (v, i)))
        .collect();
    rng.shuffle(&mut all);
    let (hot, rest) = all.split_at(p.hot_count() as usize);
    let (grouped, rest) = rest.split_at(p.group_members() as usize);
    let (nightly, cold) = rest.split_at(p.nightly as usize);
    let mut hot = hot.to_vec();
    hot.sort_unstable();
    let mut nightly = nightly.to_vec();
    nightly.sort_unstable();
    let groups: Vec<Vec<Extent>> = grouped
        .chunks(p.group_size.max(1) as usize)
        .map(|g| {
            let mut g = g.to_vec();
            g.sort_unstable();
            g
        })
        .collect();
    Layout {
        hot,
        groups,
        grouped: grouped.to_vec(),
        nightly,
        cold: cold.to_vec(),
    }
}

/// A random midnight within the trace's days.
fn day_us(p: &SynthParams, rng: &mut Rng) -> u64 {
    rng.below(u64::from(p.days)) * US_PER_DAY
}

/// The nightly requests, then the group bursts, then the single requests (unsorted).
fn events(p: &SynthParams, rng: &mut Rng, l: &Layout) -> Vec<Event> {
    let mut events: Vec<Event> = Vec::new();
    let nightly_n = if l.nightly.is_empty() {
        0
    } else {
        (p.requests as f64 * p.nightly_share).round() as u64
    };
    for _ in 0..nightly_n {
        let t = day_us(p, rng)
            + u64::from(p.night_hour) * US_PER_HOUR
            + rng.below(US_PER_HOUR - US_PER_HOUR / 10);
        events.push((t, Kind::Nightly, vec![rng.pick(&l.nightly)]));
    }
    let bursts = if l.groups.is_empty() {
        0
    } else {
        (p.requests as f64 * p.burst_share / f64::from(p.group_size)).round() as u64
    };
    for burst in 0..bursts {
        let t = day_us(p, rng) + p.cycle_hour(rng) * US_PER_HOUR + rng.below(US_PER_HOUR);
        let group = rng.below(l.groups.len() as u64) as usize;
        let mut members = l.groups[group].clone();
        rng.shuffle(&mut members);
        events.push((t, Kind::Burst { burst, group }, members));
    }
    let singles = p
        .requests
        .saturating_sub(nightly_n + bursts * u64::from(p.group_size));
    for _ in 0..singles {
        let t = day_us(p, rng) + p.cycle_hour(rng) * US_PER_HOUR + rng.below(US_PER_HOUR);
        let e = if !l.hot.is_empty() && rng.chance(p.hot_share) {
            rng.pick(&l.hot)
        } else if !l.grouped.is_empty() && rng.chance(p.group_single_share) {
            rng.pick(&l.grouped)
        } else {
            rng.pick(&l.cold)
        };
        events.push((t, Kind::Single, vec![e]));
    }
    events
}

/// One record per extent of each event (sorted by time), with a random size, place in the
/// extent and operation.
fn records(p: &SynthParams, rng: &mut Rng, events: Vec<Event>) -> Vec<(Record, Kind)> {
    // Records: strictly increasing times, so a burst's records are consecutive by
    // construction and nothing can land between them.
    const BURST_GAP_US: u64 = 50;
    let blocks = |bytes: u64| bytes / BLOCK_BYTES;
    let size_max = p.request_bytes_max.min(p.extent_size);
    let mut out = Vec::with_capacity(p.requests as usize);
    let mut prev: Option<u64> = None;
    for (t, kind, extents) in events {
        for (v, index) in extents {
            let time_us = prev.map_or(t, |pt| t.max(pt + BURST_GAP_US));
            prev = Some(time_us);
            let size = BLOCK_BYTES
                * (blocks(p.request_bytes_min)
                    + rng.below(blocks(size_max) - blocks(p.request_bytes_min) + 1));
            let within = BLOCK_BYTES * rng.below(blocks(p.extent_size - size) + 1);
            let op = if rng.chance(p.write_fraction) {
                Op::Write
            } else {
                Op::Read
            };
            out.push((
                Record {
                    time_us,
                    op,
                    offset: index * p.extent_size + within,
                    size: size as u32,
                    volume: SynthParams::volume_name(v),
                },
                kind,
            ));
        }
    }
    out
}

/// What was planted where, as `shards --json` names extents.
fn truth(p: &SynthParams, l: &Layout) -> Truth {
    let eref = |&(v, index): &Extent| ExtentRef {
        path: format!("/{}", SynthParams::volume_name(v)),
        index,
    };
    Truth {
        extent_size_bytes: p.extent_size,
        hot: l.hot.iter().map(eref).collect(),
        groups: l
            .groups
            .iter()
            .map(|g| g.iter().map(eref).collect())
            .collect(),
        nightly: l.nightly.iter().map(eref).collect(),
        night_hour: p.night_hour,
        volumes: (0..u64::from(p.volumes))
            .map(|v| VolumeSize {
                name: SynthParams::volume_name(v),
                size_bytes: p.extents_per_volume * p.extent_size,
            })
            .collect(),
        params: p.clone(),
    }
}

/// Writes the synthetic trace to `out` and the truth JSON to `truth_path`.
pub fn write_synth(p: &SynthParams, out: &Path, truth_path: &Path) -> anyhow::Result<Truth> {
    let (records, truth) = synth(p)?;
    let records: Vec<Record> = records.into_iter().map(|(r, _)| r).collect();
    write_csv(out, &records)?;
    let json = serde_json::to_string_pretty(&truth)? + "\n";
    std::fs::write(truth_path, json)
        .with_context(|| format!("{}: cannot write", truth_path.display()))?;
    Ok(truth)
}

/// `x.csv.gz` / `x.csv` -> `x.truth.json`.
pub fn default_truth_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let stem = name.strip_suffix(".gz").unwrap_or(&name);
    let stem = stem.strip_suffix(".csv").unwrap_or(stem);
    out.with_file_name(format!("{stem}.truth.json"))
}
