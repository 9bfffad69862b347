//! The re-sharding planner: a pure function from (extents with heat class and shard,
//! correlation groups, shards, disks with risk and room) to a plan (shards to form, extents
//! to move). Rules:
//! - hot extents live in hot shards; cold extents never do (warm ones may stay either way:
//!   the hysteresis band, so an extent cooling off does not move twice);
//! - a correlated group lands in one shard of its kind when it fits (the shard already
//!   holding most of it, else a fresh one);
//! - shards stay at most `shard_bytes_max`; shards the engine formed that fall below
//!   `shard_bytes_min` are merged into another of their kind with room;
//! - new shards are placed by `place::choose` (hot: most reliable first; general: least
//!   full first; disks above the warning threshold last; never two replicas on one disk).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::access::{Ext, HeatClass};
use crate::meta::ShardClass;

use crate::placement::{self as place, Candidate};

#[derive(Clone, Debug)]
pub struct PlanExtent {
    pub ext: Ext,
    pub bytes: u64,
    pub shard: u32,
    pub class: HeatClass,
    /// Heat at the class scale (to pick which extents leave an overfull shard).
    pub heat: f64,
}

#[derive(Clone, Debug)]
pub struct PlanShard {
    pub id: u32,
    pub class: ShardClass,
    pub epoch: u64,
    pub disks: Vec<u32>,
    /// Addressed by hash (new data lands here): never re-formed.
    pub initial: bool,
}

#[derive(Clone, Debug)]
pub struct PlanDisk {
    pub id: u32,
    pub total_bytes: u64,
    pub used_bytes: u64,
    /// P(failure within 30 days), from the risk service (uniform before its first round).
    pub risk: f64,
    pub accepts_data: bool,
    /// Its storage host (0 on a single-host pool): replicas of a shard avoid sharing one.
    pub host: u32,
}

#[derive(Clone, Copy, Debug)]
pub struct PlanRules {
    pub shard_bytes_max: u64,
    pub shard_bytes_min: u64,
    pub replicas: usize,
    /// Disk risk at which placement avoids a disk (see `place`).
    pub risk_warn: f64,
}

/// Where a move goes: an existing shard or the n-th shard the plan forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Target {
    Existing(u32),
    New(usize),
}

#[derive(Clone, Debug, Serialize)]
pub struct NewShard {
    /// Re-form this empty shard instead of adding one (with its epoch, for fencing).
    pub reuse: Option<(u32, u64)>,
    pub class: ShardClass,
    pub disks: Vec<u32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Move {
    pub ext: Ext,
    pub from: u32,
    pub to: Target,
    pub bytes: u64,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Plan {
    pub new_shards: Vec<NewShard>,
    pub moves: Vec<Move>,
}

impl Plan {
    pub fn bytes(&self) -> u64 {
        self.moves.iter().map(|m| m.bytes).sum()
    }

    /// Shards that lose or gain extents, or are formed.
    pub fn shards_changed(&self) -> usize {
        let mut s: HashSet<Target> = HashSet::new();
        for m in &self.moves {
            s.insert(Target::Existing(m.from));
            s.insert(m.to);
        }
        s.len()
    }
}

/// What the planner works on.
pub struct PlanInput<'a> {
    pub extents: &'a [PlanExtent],
    pub shards: &'a [PlanShard],
    pub groups: &'a [Vec<Ext>],
    pub disks: &'a [PlanDisk],
    pub rules: PlanRules,
    /// Hash home of an extent (where a cold extent leaving a hot shard goes).
    pub home: &'a dyn Fn(Ext) -> u32,
}

struct Planner<'a> {
    input: &'a PlanInput<'a>,
    /// Planned bytes per target.
    bytes: HashMap<Target, u64>,
    class: HashMap<Target, ShardClass>,
    /// Planned location of every extent.
    at: HashMap<Ext, Target>,
    /// Planned bytes per disk (for balance).
    disk_used: HashMap<u32, u64>,
    plan: Plan,
    /// Empty engine-formed shards, reusable.
    free: Vec<(u32, u64)>,
    /// The shard new hot / overflow extents fill next.
    open: HashMap<ShardClass, Target>,
    grouped: HashSet<Ext>,
    /// The hash-addressed shards (never re-formed or merged).
    initial: HashSet<u32>,
    /// Size the hot shards are filled to: the hot set spread over one shard per
    /// `replicas` disks, so hot reads (and a failure's hot rebuild) spread over the disks.
    hot_fill: u64,
}

pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut p = Planner {
        input,
        bytes: HashMap::new(),
        class: HashMap::new(),
        at: HashMap::new(),
        disk_used: input.disks.iter().map(|d| (d.id, d.used_bytes)).collect(),
        plan: Plan::default(),
        free: Vec::new(),
        open: HashMap::new(),
        grouped: HashSet::new(),
        hot_fill: input.rules.shard_bytes_max,
        initial: input
            .shards
            .iter()
            .filter(|s| s.initial)
            .map(|s| s.id)
            .collect(),
    };
    let hot_bytes: u64 = input
        .extents
        .iter()
        .filter(|e| e.class == HeatClass::Hot)
        .map(|e| e.bytes)
        .sum();
    let usable = input.disks.iter().filter(|d| d.accepts_data).count();
    let sets = usable.div_ceil(input.rules.replicas.max(1)).max(1) as u64;
    p.hot_fill = hot_bytes.div_ceil(sets).clamp(
        input.rules.shard_bytes_min.max(1),
        input.rules.shard_bytes_max,
    );
    for s in input.shards {
        p.class.insert(Target::Existing(s.id), s.class);
        p.bytes.insert(Target::Existing(s.id), 0);
    }
    for e in input.extents {
        *p.bytes.entry(Target::Existing(e.shard)).or_default() += e.bytes;
        p.at.insert(e.ext, Target::Existing(e.shard));
    }
    p.free = input
        .shards
        .iter()
        .filter(|s| !s.initial && p.bytes[&Target::Existing(s.id)] == 0)
        .map(|s| (s.id, s.epoch))
        .rev()
        .collect();
    let by_ext: HashMap<Ext, &PlanExtent> = input.extents.iter().map(|e| (e.ext, e)).collect();
    p.place_groups(&by_ext);
    p.place_singles();
    p.enforce_max(&by_ext);
    p.merge_small();
    p.finish(&by_ext)
}

impl Planner<'_> {
    fn cap(&self) -> u64 {
        self.input.rules.shard_bytes_max
    }

    fn kind(c: HeatClass) -> Option<ShardClass> {
        match c {
            HeatClass::Hot => Some(ShardClass::Hot),
            HeatClass::Cold => Some(ShardClass::General),
            HeatClass::Warm => None,
        }
    }

    fn relocate(&mut self, e: Ext, bytes: u64, to: Target) {
        let from = self.at.insert(e, to).expect("planned extent");
        *self.bytes.get_mut(&from).expect("known shard") -= bytes;
        *self.bytes.entry(to).or_default() += bytes;
    }

    /// A shard the plan forms (an empty engine-formed one re-formed, else a new one).
    fn form(&mut self, class: ShardClass) -> Target {
        let disks = self.place(class);
        let reuse = self.free.pop();
        self.plan.new_shards.push(NewShard {
            reuse,
            class,
            disks,
        });
        let t = Target::New(self.plan.new_shards.len() - 1);
        self.bytes.insert(t, 0);
        self.class.insert(t, class);
        t
    }

    /// Disks for a new shard, by the shared placement rule (`place::choose`).
    fn place(&mut self, class: ShardClass) -> Vec<u32> {
        let c: Vec<Candidate> = self
            .input
            .disks
            .iter()
            .filter(|d| d.accepts_data)
            .map(|d| Candidate {
                id: d.id,
                total_bytes: d.total_bytes,
                used_bytes: self.disk_used[&d.id],
                risk: d.risk,
                host: d.host,
                rack: None,
            })
            .collect();
        let rules = self.input.rules;
        let disks = place::choose(&c, class, rules.replicas, rules.risk_warn, &[]);
        // Count the shard as filled to its cap for the next choice: spreads new shards.
        for d in &disks {
            *self.disk_used.get_mut(d).expect("known disk") += self.cap();
        }
        disks
    }

    fn fits(&self, t: Target, extra: u64) -> bool {
        self.bytes.get(&t).copied().unwrap_or(0) + extra <= self.cap()
    }

    /// How full `fill_target` fills a shard of `class`.
    fn fill_cap(&self, class: ShardClass) -> u64 {
        match class {
            ShardClass::Hot => self.hot_fill,
            ShardClass::General => self.cap(),
        }
    }

    /// The shard of `class` the next extents fill: the open one while it has room, else a
    /// non-full existing one (engine-formed, fullest first), else a new one.
    fn fill_target(&mut self, class: ShardClass, bytes: u64) -> Target {
        let fill = self.fill_cap(class);
        if let Some(t) = self.open.get(&class).copied() {
            if self.bytes[&t] + bytes <= fill {
                return t;
            }
        }
        let initial = &self.initial;
        let mut best: Option<(u64, Target)> = None;
        for (t, c) in &self.class {
            if *c != class || matches!(t, Target::Existing(id) if initial.contains(id)) {
                continue;
            }
            let b = self.bytes[t];
            if b > 0 && b + bytes <= fill && best.is_none_or(|(bb, bt)| (b, *t) > (bb, bt)) {
                best = Some((b, *t));
            }
        }
        let t = match best {
            Some((_, t)) => t,
            None => self.form(class),
        };
        self.open.insert(class, t);
        t
    }

    fn place_groups(&mut self, by_ext: &HashMap<Ext, &PlanExtent>) {
        for g in self.input.groups {
            let members: Vec<&PlanExtent> =
                g.iter().filter_map(|e| by_ext.get(e).copied()).collect();
            if members.len() < 2 {
                continue;
            }
            let hot = members.iter().filter(|e| e.class == HeatClass::Hot).count();
            let kind = if hot * 2 >= members.len() {
                ShardClass::Hot
            } else {
                ShardClass::General
            };
            // Members whose class forbids this kind leave the group.
            let members: Vec<&PlanExtent> = members
                .into_iter()
                .filter(|e| Self::kind(e.class).is_none_or(|k| k == kind))
                .collect();
            let total: u64 = members.iter().map(|e| e.bytes).sum();
            if members.len() < 2 || total > self.cap() {
                continue;
            }
            let mut held: BTreeMap<Target, u64> = BTreeMap::new();
            for e in &members {
                let t = self.at[&e.ext];
                if self.class[&t] == kind {
                    *held.entry(t).or_default() += e.bytes;
                }
            }
            // The shard of this kind holding most of the group, if the rest fits in it.
            let mut choice: Option<(u64, Target)> = None;
            for (t, h) in &held {
                if self.bytes[t] - h + total <= self.cap() && choice.is_none_or(|(ch, _)| *h > ch) {
                    choice = Some((*h, *t));
                }
            }
            let to = match choice {
                Some((_, t)) => t,
                None => self.form(kind),
            };
            for e in members {
                self.grouped.insert(e.ext);
                if self.at[&e.ext] != to {
                    self.relocate(e.ext, e.bytes, to);
                }
            }
        }
    }

    fn place_singles(&mut self) {
        let mut hot_out: Vec<&PlanExtent> = Vec::new();
        let mut cold_out: Vec<&PlanExtent> = Vec::new();
        for e in self.input.extents {
            if self.grouped.contains(&e.ext) {
                continue;
            }
            let here = self.class[&self.at[&e.ext]];
            match Self::kind(e.class) {
                Some(ShardClass::Hot) if here != ShardClass::Hot => hot_out.push(e),
                Some(ShardClass::General) if here == ShardClass::Hot => cold_out.push(e),
                _ => {}
            }
        }
        // Members of one correlated group (one that could not go whole to a hot shard)
        // fill the same hot shard: consecutive, strongest group first, then by heat.
        let group_of: HashMap<Ext, usize> = self
            .input
            .groups
            .iter()
            .enumerate()
            .flat_map(|(i, g)| g.iter().map(move |e| (*e, i)))
            .collect();
        hot_out.sort_by(|a, b| {
            let (ga, gb) = (group_of.get(&a.ext), group_of.get(&b.ext));
            ga.is_none()
                .cmp(&gb.is_none())
                .then(ga.cmp(&gb))
                .then(b.heat.total_cmp(&a.heat))
                .then(a.ext.cmp(&b.ext))
        });
        for e in hot_out {
            let t = self.fill_target(ShardClass::Hot, e.bytes);
            self.relocate(e.ext, e.bytes, t);
        }
        for e in cold_out {
            let home = Target::Existing((self.input.home)(e.ext));
            let t = if self.class.get(&home) == Some(&ShardClass::General)
                && self.fits(home, e.bytes)
            {
                home
            } else {
                self.fill_target(ShardClass::General, e.bytes)
            };
            self.relocate(e.ext, e.bytes, t);
        }
    }

    /// Overfull shards shed their coolest ungrouped extents into others of their kind.
    fn enforce_max(&mut self, by_ext: &HashMap<Ext, &PlanExtent>) {
        let mut over: Vec<Target> = self
            .bytes
            .iter()
            .filter(|(_, b)| **b > self.cap())
            .map(|(t, _)| *t)
            .collect();
        over.sort();
        for t in over {
            let class = self.class[&t];
            let mut inside: Vec<&PlanExtent> = self
                .at
                .iter()
                .filter(|(e, at)| **at == t && !self.grouped.contains(*e))
                .map(|(e, _)| by_ext[e])
                .collect();
            inside.sort_by(|a, b| a.heat.total_cmp(&b.heat).then(a.ext.cmp(&b.ext)));
            for e in inside {
                if self.bytes[&t] <= self.cap() {
                    break;
                }
                self.open.remove(&class);
                let to = self.fill_target(class, e.bytes);
                if to == t {
                    break;
                }
                self.relocate(e.ext, e.bytes, to);
            }
        }
    }

    /// Engine-formed shards below the minimum join another of their kind that has room.
    fn merge_small(&mut self) {
        let initial = self.initial.clone();
        let formed = |t: &Target| !matches!(t, Target::Existing(id) if initial.contains(id));
        let min = self.input.rules.shard_bytes_min;
        let mut small: Vec<(u64, Target)> = self
            .bytes
            .iter()
            .filter(|(t, b)| formed(t) && **b > 0 && **b < min)
            .map(|(t, b)| (*b, *t))
            .collect();
        small.sort();
        for (_, t) in small {
            let b = self.bytes[&t];
            if b == 0 || b >= min {
                continue;
            }
            let class = self.class[&t];
            let into = self
                .bytes
                .iter()
                .filter(|(o, ob)| **o != t && formed(o) && self.class[*o] == class && **ob > 0)
                .filter(|(_, ob)| **ob + b <= self.cap())
                .max_by_key(|(o, ob)| (**ob, std::cmp::Reverse(**o)))
                .map(|(o, _)| *o);
            let Some(into) = into else { continue };
            let members: Vec<Ext> = self
                .at
                .iter()
                .filter(|(_, at)| **at == t)
                .map(|(e, _)| *e)
                .collect();
            let sizes: HashMap<Ext, u64> = self
                .input
                .extents
                .iter()
                .filter(|e| members.contains(&e.ext))
                .map(|e| (e.ext, e.bytes))
                .collect();
            for e in members {
                self.relocate(e, sizes[&e], into);
            }
        }
    }

    fn finish(mut self, by_ext: &HashMap<Ext, &PlanExtent>) -> Plan {
        let mut moves: Vec<Move> = Vec::new();
        for (e, to) in &self.at {
            let x = by_ext[e];
            if *to == Target::Existing(x.shard) {
                continue;
            }
            let reason = if self.grouped.contains(e) {
                "group"
            } else if x.class == HeatClass::Hot {
                "hot"
            } else if x.class == HeatClass::Cold {
                "cold"
            } else {
                "size"
            };
            moves.push(Move {
                ext: *e,
                from: x.shard,
                to: *to,
                bytes: x.bytes,
                reason,
            });
        }
        moves.sort_by_key(|m| m.ext);
        // Shards the plan formed but filled with nothing are not formed.
        let used: HashSet<Target> = moves.iter().map(|m| m.to).collect();
        let mut renumber: HashMap<usize, usize> = HashMap::new();
        let mut kept = Vec::new();
        for (i, s) in std::mem::take(&mut self.plan.new_shards)
            .into_iter()
            .enumerate()
        {
            if used.contains(&Target::New(i)) {
                renumber.insert(i, kept.len());
                kept.push(s);
            }
        }
        for m in &mut moves {
            if let Target::New(i) = m.to {
                m.to = Target::New(renumber[&i]);
            }
        }
        Plan {
            new_shards: kept,
            moves,
        }
    }
}
