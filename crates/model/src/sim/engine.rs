//! The discrete-event simulation of one placement policy on a generated fleet.
//!
//! Events (a min-heap by time, ties by insertion order, so a seed gives one result): the daily
//! risk update, disk failures (from the fleet's timeline, the same for every policy), failure
//! detection (repairs start), repair completions and evacuation copy completions.
//!
//! Bandwidth, equal for every policy: a repair copies one shard at `repair_bytes_per_s`, and
//! each disk takes part (as source or target) in at most `repair_streams` repairs at once;
//! a repair waits for a free stream on both disks (booked ahead, so the wait is known when it
//! is scheduled). Evacuation copies have their own budget: one copy at a time per evacuating
//! disk at `evacuate_bytes_per_s`. Copy bytes are counted when a copy completes.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::fleet::{score_on, Fleet, Health, DAY_S};
use crate::placement::ShardClass;
use crate::placement::{place, Candidate, Relaxed, Site};
use crate::risk::shard::{loss_probability, p_within, repair_seconds};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Random,
    Copyset,
    Risk,
    RiskEvacuate,
}

impl Policy {
    pub const ALL: [Policy; 4] = [
        Policy::Random,
        Policy::Copyset,
        Policy::Risk,
        Policy::RiskEvacuate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Random => "random",
            Policy::Copyset => "copyset",
            Policy::Risk => "risk",
            Policy::RiskEvacuate => "risk+evacuate",
        }
    }
}

/// Everything a run depends on besides the fleet.
#[derive(Clone, Debug, Serialize)]
pub struct Params {
    pub disks: usize,
    pub replicas: usize,
    pub capacity_bytes: u64,
    pub fill: f64,
    pub shard_bytes: u64,
    pub repair_bytes_per_s: f64,
    pub repair_streams: usize,
    pub detect_s: f64,
    pub risk_warn: f64,
    pub evacuate_p: f64,
    pub evacuate_bytes_per_s: f64,
    /// Copyset permutations (each disk is in this many copysets).
    pub scatter: usize,
    /// Disks sampled per risk-aware placement (power of k choices).
    pub sample: usize,
    /// Storage hosts: disk `d` is on host `d % hosts`. Left out of the JSON at 1, so
    /// single-host reports stay as they were.
    #[serde(skip_serializing_if = "is_one")]
    pub hosts: usize,
    pub seed: u64,
    /// Check the bookkeeping invariants every simulated day (tests).
    #[serde(skip)]
    pub check_invariants: bool,
}

/// One policy's results.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Outcome {
    pub name: String,
    /// Shards that lost every replica (each counted once; it is then re-created elsewhere).
    pub data_loss_events: u64,
    pub lost_bytes: u64,
    /// Sum over shards of bytes x hours with fewer than the full replica count live.
    pub degraded_byte_hours: f64,
    /// Bytes copied to restore replicas after failures.
    pub rebuilt_bytes: u64,
    /// Bytes copied off at-risk disks before they failed (evacuation).
    pub migrated_bytes: u64,
    pub failures: u64,
    /// Failures of disks that still held replicas.
    pub failures_with_data: u64,
    pub evacuations_started: u64,
    /// Failures of disks that were being or had been evacuated (the alarms that came true).
    pub failures_after_evacuation: u64,
    pub repairs: u64,
    pub max_degraded_shards: u64,
    /// Expected data-loss events: per shard repair, the probability that every disk still
    /// holding it fails before the repair is done (`risk::shard::p_within` of each disk's
    /// current risk over the repair's wait and copy time), summed. Far less noisy than the
    /// counted events when those are rare; it assumes the model's probabilities are right.
    pub expected_data_loss_events: f64,
    /// Repair attempts that found no disk with room (each retried the next day).
    pub repairs_stalled: u64,
    /// Mean hours from a failure to the replica restored (detection, wait, copy).
    pub mean_repair_hours: f64,
    pub shards: u64,
    /// Placements (new shards, repair and evacuation targets) that put a replica on a host
    /// already holding one of the shard's; counted with more than one host only.
    #[serde(skip_serializing_if = "is_zero")]
    pub shared_host_placements: u64,
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone, Copy)]
struct Copy {
    id: u64,
    target: u32,
    /// Evacuation copy from this disk; None: a repair.
    evac_from: Option<u32>,
    /// When the replica was lost (repairs; for the mean repair time).
    since: f64,
}

#[derive(Default)]
struct Shard {
    live: Vec<u32>,
    copies: Vec<Copy>,
    degraded_since: Option<f64>,
}

#[derive(Default)]
struct Disk {
    /// Bytes of live replicas plus bytes reserved by copies to it.
    used: u64,
    shards: Vec<u32>,
    /// Copies in flight to this disk: (shard, copy id).
    incoming: Vec<(u32, u64)>,
    /// Takes no new data (being evacuated, or evacuated and waiting to be replaced).
    retired: bool,
    /// Time each repair stream is free from.
    lanes: Vec<f64>,
    p: f64,
    /// Shards still to evacuate, the next one last.
    evac_queue: Vec<u32>,
    evac_busy: bool,
    /// Copysets this disk belongs to.
    copysets: Vec<u32>,
}

enum Kind {
    Day(u32),
    Fail(u32),
    Detect(Vec<u32>),
    CopyDone { shard: u32, id: u64 },
}

struct Ev {
    t: f64,
    seq: u64,
    kind: Kind,
}

impl PartialEq for Ev {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Ev {}
impl PartialOrd for Ev {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ev {
    fn cmp(&self, o: &Self) -> Ordering {
        self.t.total_cmp(&o.t).then(self.seq.cmp(&o.seq))
    }
}

/// Mixed into the seed so placement draws do not repeat the fleet generator's draws.
const PLACEMENT_STREAM: u64 = 0x05ee_d0f9_1ace;

/// Tries at sampling before placement falls back to scanning every disk.
const SAMPLE_TRIES_PER_DISK: usize = 8;

struct Sim<'a> {
    p: &'a Params,
    policy: Policy,
    health: &'a Health,
    fleet: &'a Fleet,
    rng: StdRng,
    disks: Vec<Disk>,
    shards: Vec<Shard>,
    copysets: Vec<Vec<u32>>,
    /// Per slot: the index of the segment (real drive's history) the slot is in.
    cursor: Vec<usize>,
    heap: BinaryHeap<Reverse<Ev>>,
    seq: u64,
    next_copy: u64,
    degraded_now: u64,
    stalled: Vec<u32>,
    repair_hours_sum: f64,
    out: Outcome,
}

pub fn run(p: &Params, policy: Policy, health: &Health, fleet: &Fleet) -> Outcome {
    let mut s = Sim::new(p, policy, health, fleet);
    s.start();
    let end = f64::from(fleet.days) * DAY_S;
    while let Some(Reverse(ev)) = s.heap.pop() {
        if ev.t >= end {
            break;
        }
        match ev.kind {
            Kind::Day(d) => s.day(ev.t, d),
            Kind::Fail(d) => s.fail(ev.t, d),
            Kind::Detect(list) => {
                for sh in list {
                    s.request_repairs(ev.t, sh);
                }
            }
            Kind::CopyDone { shard, id } => s.copy_done(ev.t, shard, id),
        }
    }
    s.finish(end)
}

impl<'a> Sim<'a> {
    /// An empty fleet: no shards, no events.
    fn new(p: &'a Params, policy: Policy, health: &'a Health, fleet: &'a Fleet) -> Sim<'a> {
        Sim {
            p,
            policy,
            health,
            fleet,
            // Placement's own random draws; the failures come from `fleet`, the same for every
            // policy.
            rng: StdRng::seed_from_u64(p.seed ^ PLACEMENT_STREAM),
            disks: (0..p.disks)
                .map(|_| Disk {
                    lanes: vec![0.0; p.repair_streams],
                    ..Disk::default()
                })
                .collect(),
            shards: Vec::new(),
            copysets: Vec::new(),
            cursor: vec![0; p.disks],
            heap: BinaryHeap::new(),
            seq: 0,
            next_copy: 0,
            degraded_now: 0,
            stalled: Vec::new(),
            repair_hours_sum: 0.0,
            out: Outcome {
                name: policy.name().into(),
                ..Outcome::default()
            },
        }
    }

    /// Day 0: copysets (for that policy), the disks' first risks and failures, the initial
    /// fill and the first day's event.
    fn start(&mut self) {
        let (p, health, fleet) = (self.p, self.health, self.fleet);
        if self.policy == Policy::Copyset {
            self.make_copysets();
        }
        for d in 0..p.disks {
            self.disks[d].p = score_on(health, &fleet.slots[d][0], 0).unwrap_or(health.prior_p);
            if let Some(t) = fleet.slots[d].iter().find_map(|g| g.fail_s) {
                self.push(t, Kind::Fail(d as u32));
            }
        }
        self.fill();
        self.push(DAY_S, Kind::Day(1));
    }

    /// The outcome at time `end`: shards still degraded count up to the end.
    fn finish(mut self, end: f64) -> Outcome {
        for sh in &self.shards {
            if let Some(since) = sh.degraded_since {
                self.out.degraded_byte_hours += self.p.shard_bytes as f64 * (end - since) / 3600.0;
            }
        }
        if self.out.repairs > 0 {
            self.out.mean_repair_hours = self.repair_hours_sum / self.out.repairs as f64;
        }
        self.out.shards = self.shards.len() as u64;
        if self.p.check_invariants {
            self.check();
        }
        self.out
    }
}

impl Sim<'_> {
    fn push(&mut self, t: f64, kind: Kind) {
        self.seq += 1;
        self.heap.push(Reverse(Ev {
            t,
            seq: self.seq,
            kind,
        }));
    }

    /// Copysets (Cidon et al., "Copysets: Reducing the Frequency of Data Loss in Cloud
    /// Storage", USENIX ATC 2013): `scatter` random permutations of the disks, each cut into
    /// groups of `replicas`; the last short group is completed from its permutation's start.
    fn make_copysets(&mut self) {
        let (n, r) = (self.p.disks, self.p.replicas);
        for _ in 0..self.p.scatter.max(1) {
            let mut perm: Vec<u32> = (0..n as u32).collect();
            perm.shuffle(&mut self.rng);
            for start in (0..n).step_by(r) {
                let mut set: Vec<u32> = perm[start..(start + r).min(n)].to_vec();
                let mut k = 0;
                while set.len() < r {
                    if !set.contains(&perm[k]) {
                        set.push(perm[k]);
                    }
                    k += 1;
                }
                let id = self.copysets.len() as u32;
                for d in &set {
                    self.disks[*d as usize].copysets.push(id);
                }
                self.copysets.push(set);
            }
        }
    }

    /// The initial data: shards of `replicas` copies until the fleet is `fill` full.
    fn fill(&mut self) {
        let p = self.p;
        let total = p.disks as f64 * p.capacity_bytes as f64 * p.fill;
        let n = (total / (p.replicas as f64 * p.shard_bytes as f64)) as usize;
        self.shards.reserve(n);
        for _ in 0..n {
            let targets = self.place(&[], p.replicas);
            if targets.len() < p.replicas {
                break;
            }
            let id = self.shards.len() as u32;
            for d in &targets {
                let disk = &mut self.disks[*d as usize];
                disk.used += p.shard_bytes;
                disk.shards.push(id);
            }
            self.shards.push(Shard {
                live: targets,
                ..Shard::default()
            });
        }
    }

    fn eligible(&self, d: u32) -> bool {
        let disk = &self.disks[d as usize];
        !disk.retired && disk.used + self.p.shard_bytes <= self.p.capacity_bytes
    }

    /// `n` more disks for a shard held by (or being copied to) `holders`, by the policy.
    fn place(&mut self, holders: &[u32], n: usize) -> Vec<u32> {
        let targets = self.place_by_policy(holders, n);
        self.count_shared(holders, &targets);
        targets
    }

    fn place_by_policy(&mut self, holders: &[u32], n: usize) -> Vec<u32> {
        match self.policy {
            Policy::Random => self.place_random(holders, n),
            Policy::Copyset => if holders.is_empty() {
                self.place_copyset_new()
            } else {
                self.place_copyset_repair(holders)
            }
            .unwrap_or_else(|| self.place_random(holders, n)),
            Policy::Risk | Policy::RiskEvacuate => self.place_risk(holders, holders, n),
        }
    }

    fn host(&self, d: u32) -> u32 {
        d % self.p.hosts as u32
    }

    /// Whether the fleet has enough hosts for `n` more replicas beside `held`'s.
    fn hosts_suffice(&self, held: usize, n: usize) -> bool {
        self.p.hosts > 1 && self.p.hosts >= held + n
    }

    fn count_shared(&mut self, held: &[u32], targets: &[u32]) {
        if self.p.hosts == 1 {
            return;
        }
        let mut hosts: Vec<u32> = held.iter().chain(targets).map(|d| self.host(*d)).collect();
        let n = hosts.len();
        hosts.sort_unstable();
        hosts.dedup();
        if hosts.len() < n {
            self.out.shared_host_placements += 1;
        }
    }

    /// Random distinct disks, on hosts the shard does not use yet while the fleet has
    /// enough hosts.
    fn place_random(&mut self, holders: &[u32], n: usize) -> Vec<u32> {
        let spread = self.hosts_suffice(holders.len(), n);
        let mut out: Vec<u32> = Vec::with_capacity(n);
        let fits = |s: &Self, out: &[u32], d: u32, spread: bool| {
            s.eligible(d)
                && !holders.contains(&d)
                && !out.contains(&d)
                && (!spread || holders.iter().chain(out).all(|h| s.host(*h) != s.host(d)))
        };
        for _ in 0..SAMPLE_TRIES_PER_DISK * 8 * n {
            if out.len() == n {
                return out;
            }
            let d = self.rng.random_range(0..self.p.disks as u32);
            if fits(self, &out, d, spread) {
                out.push(d);
            }
        }
        // A nearly full fleet: take any disks with room (new hosts first), from a random
        // start.
        let start = self.rng.random_range(0..self.p.disks);
        for spread in [spread, false] {
            for k in 0..self.p.disks {
                if out.len() == n {
                    break;
                }
                let d = ((start + k) % self.p.disks) as u32;
                if fits(self, &out, d, spread) {
                    out.push(d);
                }
            }
        }
        out
    }

    /// The daemon's rule (`placement::place`) over a random sample of `sample` disks (power
    /// of k choices: sorting 10,000 disks for each of 200,000 shards would dominate the run,
    /// and the best of a random 32 is close to the best of all in fullness and risk), never
    /// on `holders`, on hosts `held` does not use while it can. Falls back to every disk
    /// when the sample is short of disks, or of hosts while the fleet has enough.
    fn place_risk(&mut self, holders: &[u32], held: &[u32], n: usize) -> Vec<u32> {
        let k = self.p.sample.max(n);
        let mut cands: Vec<Candidate> = Vec::with_capacity(k);
        for _ in 0..k * SAMPLE_TRIES_PER_DISK {
            if cands.len() == k {
                break;
            }
            let d = self.rng.random_range(0..self.p.disks as u32);
            if self.eligible(d) && !cands.iter().any(|c| c.id == d) {
                cands.push(self.candidate(d));
            }
        }
        let sites: Vec<Site> = held.iter().map(|d| self.candidate(*d).site()).collect();
        let warn = self.p.risk_warn;
        let out = place(&cands, ShardClass::General, n, warn, holders, &sites);
        let spread = out.relaxed == Relaxed::None || !self.hosts_suffice(held.len(), n);
        if out.disks.len() == n && spread {
            return out.disks;
        }
        let all: Vec<Candidate> = (0..self.p.disks as u32)
            .filter(|d| self.eligible(*d))
            .map(|d| self.candidate(d))
            .collect();
        place(&all, ShardClass::General, n, warn, holders, &sites).disks
    }

    fn candidate(&self, d: u32) -> Candidate {
        let disk = &self.disks[d as usize];
        Candidate {
            id: d,
            total_bytes: self.p.capacity_bytes,
            used_bytes: disk.used,
            risk: disk.p,
            host: self.host(d),
            rack: None,
        }
    }

    fn place_copyset_new(&mut self) -> Option<Vec<u32>> {
        for _ in 0..SAMPLE_TRIES_PER_DISK * 8 {
            let c = self.rng.random_range(0..self.copysets.len());
            if self.copysets[c].iter().all(|d| self.eligible(*d)) {
                return Some(self.copysets[c].clone());
            }
        }
        None
    }

    /// A disk that keeps the shard inside one copyset: a member of a copyset holding all of
    /// `holders`, the one whose repair stream frees first (ties: random).
    fn place_copyset_repair(&mut self, holders: &[u32]) -> Option<Vec<u32>> {
        let mut best: Vec<u32> = Vec::new();
        let mut best_t = f64::INFINITY;
        for c in &self.disks[holders[0] as usize].copysets {
            let set = &self.copysets[*c as usize];
            if !holders.iter().all(|h| set.contains(h)) {
                continue;
            }
            for d in set {
                if holders.contains(d) || best.contains(d) || !self.eligible(*d) {
                    continue;
                }
                let t = self.lane_free(*d).1;
                if t < best_t {
                    best.clear();
                    best_t = t;
                }
                if t <= best_t {
                    best.push(*d);
                }
            }
        }
        (!best.is_empty()).then(|| vec![best[self.rng.random_range(0..best.len())]])
    }

    /// The disk's earliest free repair stream: (index, time).
    fn lane_free(&self, d: u32) -> (usize, f64) {
        let lanes = &self.disks[d as usize].lanes;
        let mut i = 0;
        for (k, t) in lanes.iter().enumerate() {
            if *t < lanes[i] {
                i = k;
            }
        }
        (i, lanes[i])
    }

    fn holders(&self, sh: u32) -> Vec<u32> {
        let s = &self.shards[sh as usize];
        s.live
            .iter()
            .copied()
            .chain(s.copies.iter().map(|c| c.target))
            .collect()
    }

    fn day(&mut self, t: f64, day: u32) {
        let evacuate = self.policy == Policy::RiskEvacuate;
        let fleet = self.fleet;
        let mut stuck = Vec::new();
        for d in 0..self.p.disks {
            let segs = &fleet.slots[d];
            let mut changed = false;
            while self.cursor[d] + 1 < segs.len() && segs[self.cursor[d] + 1].start_day <= day {
                self.cursor[d] += 1;
                changed = true;
            }
            let seg = &segs[self.cursor[d]];
            let disk = &mut self.disks[d];
            let score = score_on(self.health, seg, day);
            disk.p = score.unwrap_or(self.health.prior_p);
            // An evacuated disk is swapped for a fresh one when the slot moves on to the next
            // drive's history (failed disks were replaced when they failed).
            if changed
                && disk.retired
                && disk.shards.is_empty()
                && disk.incoming.is_empty()
                && !disk.evac_busy
            {
                disk.retired = false;
            }
            if disk.retired && !disk.evac_busy && !disk.evac_queue.is_empty() {
                stuck.push(d as u32);
            }
            if evacuate && !disk.retired && score.is_some_and(|p| p >= self.p.evacuate_p) {
                self.start_evacuation(t, d as u32);
            }
        }
        // Evacuations that found no room earlier.
        for d in stuck {
            self.next_evacuation(t, d);
        }
        let mut stalled = std::mem::take(&mut self.stalled);
        stalled.sort_unstable();
        stalled.dedup();
        for sh in stalled {
            self.request_repairs(t, sh);
        }
        if self.p.check_invariants {
            self.check();
        }
        if day + 1 < self.fleet.days {
            self.push(f64::from(day + 1) * DAY_S, Kind::Day(day + 1));
        }
    }

    fn fail(&mut self, t: f64, d: u32) {
        self.out.failures += 1;
        // Replace the disk at once with a fresh, empty one (the same slot and copysets).
        let disk = &mut self.disks[d as usize];
        let held = std::mem::take(&mut disk.shards);
        let incoming = std::mem::take(&mut disk.incoming);
        let evacuating = disk.evac_busy;
        if disk.retired {
            self.out.failures_after_evacuation += 1;
        }
        disk.used = 0;
        disk.retired = false;
        disk.evac_queue.clear();
        disk.evac_busy = false;
        disk.lanes.fill(t);
        disk.p = self.health.prior_p;
        if !held.is_empty() {
            self.out.failures_with_data += 1;
        }
        let mut detect = Vec::new();
        // Copies to the failed disk are void; their shards need another target.
        for (sh, id) in incoming {
            let s = &mut self.shards[sh as usize];
            if let Some(i) = s.copies.iter().position(|c| c.id == id) {
                let c = s.copies.remove(i);
                match c.evac_from {
                    Some(src) => self.evac_aborted(t, src, sh),
                    None => detect.push(sh),
                }
            }
        }
        // An evacuation copy from the failed disk is void too.
        if evacuating {
            for sh in &held {
                let s = &mut self.shards[*sh as usize];
                if let Some(i) = s.copies.iter().position(|c| c.evac_from == Some(d)) {
                    let c = s.copies.remove(i);
                    self.release(c.target, *sh, c.id);
                }
            }
        }
        for sh in held {
            let s = &mut self.shards[sh as usize];
            s.live.retain(|x| *x != d);
            if s.live.is_empty() {
                self.lose(t, sh);
                continue;
            }
            if s.degraded_since.is_none() {
                s.degraded_since = Some(t);
                self.degraded_now += 1;
                self.out.max_degraded_shards = self.out.max_degraded_shards.max(self.degraded_now);
            }
            detect.push(sh);
        }
        if !detect.is_empty() {
            self.push(t + self.p.detect_s, Kind::Detect(detect));
        }
        // The slot's next failure.
        let segs = &self.fleet.slots[d as usize];
        let next = segs.iter().filter_map(|g| g.fail_s).find(|f| *f > t);
        if let Some(f) = next {
            self.push(f, Kind::Fail(d));
        }
    }

    /// A copy to `target` is void: give its reserved space back.
    fn release(&mut self, target: u32, sh: u32, id: u64) {
        let disk = &mut self.disks[target as usize];
        if let Some(i) = disk.incoming.iter().position(|x| *x == (sh, id)) {
            disk.incoming.swap_remove(i);
            disk.used -= self.p.shard_bytes;
        }
    }

    /// Every replica is gone: a data-loss event. The shard is re-created elsewhere (from
    /// outside the fleet, not counted as rebuilt) so the run goes on.
    fn lose(&mut self, t: f64, sh: u32) {
        self.out.data_loss_events += 1;
        self.out.lost_bytes += self.p.shard_bytes;
        let copies = std::mem::take(&mut self.shards[sh as usize].copies);
        for c in copies {
            self.release(c.target, sh, c.id);
            if let Some(src) = c.evac_from {
                self.evac_aborted(t, src, sh);
            }
        }
        let s = &mut self.shards[sh as usize];
        if let Some(since) = s.degraded_since.take() {
            self.out.degraded_byte_hours += self.p.shard_bytes as f64 * (t - since) / 3600.0;
            self.degraded_now -= 1;
        }
        let targets = self.place(&[], self.p.replicas);
        for d in &targets {
            let disk = &mut self.disks[*d as usize];
            disk.used += self.p.shard_bytes;
            disk.shards.push(sh);
        }
        let s = &mut self.shards[sh as usize];
        s.live = targets;
        if s.live.len() < self.p.replicas {
            s.degraded_since = Some(t);
            self.degraded_now += 1;
            self.stalled.push(sh);
        }
    }

    /// Starts repairs for every replica the shard is missing (not already being copied).
    fn request_repairs(&mut self, t: f64, sh: u32) {
        let s = &self.shards[sh as usize];
        if s.live.is_empty() {
            return;
        }
        let repairing = s.copies.iter().filter(|c| c.evac_from.is_none()).count();
        let missing = self.p.replicas.saturating_sub(s.live.len() + repairing);
        let since = s.degraded_since.unwrap_or(t);
        let mut last_done = t;
        for _ in 0..missing {
            let holders = self.holders(sh);
            let Some(&target) = self.place(&holders, 1).first() else {
                self.out.repairs_stalled += 1;
                self.stalled.push(sh);
                return;
            };
            // Source: the live replica whose repair stream frees first.
            let live = self.shards[sh as usize].live.clone();
            let (src, (src_lane, src_t)) = live
                .iter()
                .map(|d| (*d, self.lane_free(*d)))
                .min_by(|a, b| a.1 .1.total_cmp(&b.1 .1).then(a.0.cmp(&b.0)))
                .expect("a live replica");
            let (tgt_lane, tgt_t) = self.lane_free(target);
            let start = t.max(src_t).max(tgt_t);
            let done = start + repair_seconds(self.p.shard_bytes, self.p.repair_bytes_per_s, 0.0);
            self.disks[src as usize].lanes[src_lane] = done;
            self.disks[target as usize].lanes[tgt_lane] = done;
            let id = self.book(target, sh, None, since);
            self.push(done, Kind::CopyDone { shard: sh, id });
            last_done = last_done.max(done);
        }
        if missing > 0 {
            let window = last_done - since;
            self.out.expected_data_loss_events += self.shards[sh as usize]
                .live
                .iter()
                .map(|d| p_within(self.disks[*d as usize].p, window))
                .product::<f64>();
        }
    }

    /// Reserves space on `target` for a copy of `sh` and records the copy.
    fn book(&mut self, target: u32, sh: u32, evac_from: Option<u32>, since: f64) -> u64 {
        self.next_copy += 1;
        let id = self.next_copy;
        let disk = &mut self.disks[target as usize];
        debug_assert!(disk.used + self.p.shard_bytes <= self.p.capacity_bytes);
        disk.used += self.p.shard_bytes;
        disk.incoming.push((sh, id));
        self.shards[sh as usize].copies.push(Copy {
            id,
            target,
            evac_from,
            since,
        });
        id
    }

    fn copy_done(&mut self, t: f64, sh: u32, id: u64) {
        let s = &mut self.shards[sh as usize];
        let Some(i) = s.copies.iter().position(|c| c.id == id) else {
            return; // cancelled: its target failed or the shard was lost
        };
        let c = s.copies.remove(i);
        let bytes = self.p.shard_bytes;
        let tgt = &mut self.disks[c.target as usize];
        if let Some(k) = tgt.incoming.iter().position(|x| *x == (sh, id)) {
            tgt.incoming.swap_remove(k);
        }
        tgt.shards.push(sh);
        let target_retired = tgt.retired;
        match c.evac_from {
            None => {
                self.out.rebuilt_bytes += bytes;
                self.out.repairs += 1;
                self.repair_hours_sum += (t - c.since) / 3600.0;
                let s = &mut self.shards[sh as usize];
                s.live.push(c.target);
                if s.live.len() >= self.p.replicas {
                    if let Some(since) = s.degraded_since.take() {
                        self.out.degraded_byte_hours += bytes as f64 * (t - since) / 3600.0;
                        self.degraded_now -= 1;
                    }
                }
            }
            Some(src) => {
                self.out.migrated_bytes += bytes;
                let s = &mut self.shards[sh as usize];
                if let Some(k) = s.live.iter().position(|x| *x == src) {
                    s.live[k] = c.target;
                } else {
                    s.live.push(c.target);
                }
                let disk = &mut self.disks[src as usize];
                if let Some(k) = disk.shards.iter().position(|x| *x == sh) {
                    disk.shards.swap_remove(k);
                    disk.used -= bytes;
                }
                disk.evac_busy = false;
                self.next_evacuation(t, src);
            }
        }
        // A repair that lands on a disk retired meanwhile is evacuated in turn.
        if target_retired {
            self.disks[c.target as usize].evac_queue.insert(0, sh);
            self.next_evacuation(t, c.target);
        }
    }

    /// The disk crossed the evacuation threshold: it takes no new data, and its shards are
    /// copied away, the highest loss risk first.
    fn start_evacuation(&mut self, t: f64, d: u32) {
        self.out.evacuations_started += 1;
        let repair_s = repair_seconds(
            self.p.shard_bytes,
            self.p.repair_bytes_per_s,
            self.p.detect_s,
        );
        let disk = &self.disks[d as usize];
        let mut q: Vec<(f64, u32)> = disk
            .shards
            .iter()
            .map(|sh| {
                let ps: Vec<f64> = self.shards[*sh as usize]
                    .live
                    .iter()
                    .map(|x| self.disks[*x as usize].p)
                    .collect();
                (loss_probability(&ps, repair_s), *sh)
            })
            .collect();
        // Ascending, so the riskiest is popped first.
        q.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)));
        let disk = &mut self.disks[d as usize];
        disk.retired = true;
        disk.evac_queue = q.into_iter().map(|x| x.1).collect();
        self.next_evacuation(t, d);
    }

    fn next_evacuation(&mut self, t: f64, d: u32) {
        if self.disks[d as usize].evac_busy {
            return;
        }
        while let Some(sh) = self.disks[d as usize].evac_queue.pop() {
            if !self.shards[sh as usize].live.contains(&d) {
                continue;
            }
            let holders = self.holders(sh);
            // The evacuating disk's host is given up with it.
            let held: Vec<u32> = holders.iter().copied().filter(|h| *h != d).collect();
            let targets = self.place_risk(&holders, &held, 1);
            self.count_shared(&held, &targets);
            let Some(&target) = targets.first() else {
                // No room anywhere now: try again at the next daily update.
                self.disks[d as usize].evac_queue.push(sh);
                return;
            };
            self.book(target, sh, Some(d), t);
            self.disks[d as usize].evac_busy = true;
            let done = t + self.p.shard_bytes as f64 / self.p.evacuate_bytes_per_s.max(1.0);
            let id = self.next_copy;
            self.push(done, Kind::CopyDone { shard: sh, id });
            return;
        }
    }

    /// An evacuation copy from `src` of `sh` died with its target: queue the shard again.
    fn evac_aborted(&mut self, t: f64, src: u32, sh: u32) {
        let disk = &mut self.disks[src as usize];
        disk.evac_busy = false;
        disk.evac_queue.push(sh);
        self.next_evacuation(t, src);
    }

    /// Bookkeeping invariants: space is the sum of replicas and reservations, never over
    /// capacity; a shard never has more than `replicas` live copies or live + repairs, nor
    /// two on one disk; disks and shards agree on who holds what.
    fn check(&self) {
        let b = self.p.shard_bytes;
        for (i, d) in self.disks.iter().enumerate() {
            assert_eq!(
                d.used,
                b * (d.shards.len() + d.incoming.len()) as u64,
                "disk {i}: used bytes"
            );
            assert!(d.used <= self.p.capacity_bytes, "disk {i} over capacity");
            for sh in &d.shards {
                assert!(self.shards[*sh as usize].live.contains(&(i as u32)));
            }
        }
        let mut degraded = 0;
        for (i, s) in self.shards.iter().enumerate() {
            let repairs = s.copies.iter().filter(|c| c.evac_from.is_none()).count();
            assert!(s.live.len() <= self.p.replicas, "shard {i}: {:?}", s.live);
            assert!(s.live.len() + repairs <= self.p.replicas, "shard {i}");
            let mut h = self.holders(i as u32);
            h.sort_unstable();
            h.dedup();
            assert_eq!(
                h.len(),
                s.live.len() + s.copies.len(),
                "shard {i}: twice on a disk"
            );
            for d in &s.live {
                assert!(self.disks[*d as usize].shards.contains(&(i as u32)));
            }
            assert_eq!(
                s.degraded_since.is_some(),
                s.live.len() < self.p.replicas,
                "shard {i}: degraded state"
            );
            degraded += u64::from(s.degraded_since.is_some());
        }
        assert_eq!(degraded, self.degraded_now);
    }
}
