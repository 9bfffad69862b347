//! Co-access pairs: a bounded Space-Saving table over extent pairs, and the greedy grouping
//! of the co-access graph it yields.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// An extent: (inode, index).
pub type Ext = (u64, u64);
/// An unordered pair of extents, smaller first.
pub type Pair = (Ext, Ext);

pub fn pair(a: Ext, b: Ext) -> Pair {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// Space-Saving (Metwally et al. 2005) over pairs, set-associative so that an update costs
/// a hash and a scan of one set (no allocation, no ordered index): the table is `capacity`
/// slots in sets of `WAYS`; a pair lives in the set its hash picks; a new pair on a full set
/// takes over the set's smallest counter (count + 1, remembering that count as its possible
/// over-estimate). A set's minimum never falls, so a count never under-states the pair's
/// true count since the last ageing; frequent pairs stay. Memory is fixed.
pub struct SpaceSaving {
    slots: Vec<Slot>,
    len: usize,
}

#[derive(Clone, Copy, Default, Serialize, Deserialize)]
struct Slot {
    pair: Pair,
    /// 0 = empty.
    count: u32,
    err: u32,
}

/// Slots per set: a miss scans this many (4 x 40 bytes: three cache lines).
const WAYS: usize = 4;

/// Bytes one pair slot costs (the table is allocated whole).
pub const PAIR_BYTES: usize = std::mem::size_of::<Slot>();

/// What is persisted: the occupied slots.
#[derive(Serialize, Deserialize)]
pub struct SavedPairs(Vec<(Pair, u32, u32)>);

fn mix(p: &Pair) -> u64 {
    let mut h: u64 = 0x9E37_79B9_7F4A_7C15;
    for v in [p.0 .0, p.0 .1, p.1 .0, p.1 .1] {
        h = (h ^ v).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        h ^= h >> 29;
    }
    h
}

impl SpaceSaving {
    pub fn new(capacity: usize) -> SpaceSaving {
        assert!(capacity > 0, "a pair table needs room for one pair");
        let sets = capacity.div_ceil(WAYS);
        SpaceSaving {
            slots: vec![Slot::default(); sets * WAYS],
            len: 0,
        }
    }

    pub fn save(&self) -> SavedPairs {
        SavedPairs(
            self.slots
                .iter()
                .filter(|s| s.count > 0)
                .map(|s| (s.pair, s.count, s.err))
                .collect(),
        )
    }

    /// A table of `capacity` slots holding what `saved` held (as much as fits).
    pub fn restore(saved: SavedPairs, capacity: usize) -> SpaceSaving {
        let mut t = SpaceSaving::new(capacity.max(1));
        let mut items = saved.0;
        items.sort_by_key(|x| std::cmp::Reverse(x.1));
        for (p, c, e) in items {
            let set = t.set(&p);
            if let Some(i) = set.clone().find(|i| t.slots[*i].count == 0) {
                t.slots[i] = Slot {
                    pair: p,
                    count: c,
                    err: e,
                };
                t.len += 1;
            }
        }
        t
    }

    fn set(&self, p: &Pair) -> std::ops::Range<usize> {
        let sets = self.slots.len() / WAYS;
        let base = (mix(p) % sets as u64) as usize * WAYS;
        base..base + WAYS
    }

    pub fn add(&mut self, p: Pair) {
        let mut min = usize::MAX;
        for i in self.set(&p) {
            let s = &mut self.slots[i];
            if s.count > 0 && s.pair == p {
                s.count = s.count.saturating_add(1);
                return;
            }
            if min == usize::MAX || s.count < self.slots[min].count {
                min = i;
            }
        }
        let s = &mut self.slots[min];
        if s.count == 0 {
            self.len += 1;
        }
        *s = Slot {
            pair: p,
            count: s.count + 1,
            err: s.count,
        };
    }

    /// Halves every count (old behaviour fades); pairs that reach zero are dropped.
    pub fn age(&mut self) {
        for s in &mut self.slots {
            if s.count > 0 {
                s.count /= 2;
                s.err /= 2;
                if s.count == 0 {
                    self.len -= 1;
                }
            }
        }
    }

    /// (pair, count, over-estimate bound), largest count first.
    pub fn top(&self) -> Vec<(Pair, u32, u32)> {
        let mut v: Vec<(Pair, u32, u32)> = self
            .slots
            .iter()
            .filter(|s| s.count > 0)
            .map(|s| (s.pair, s.count, s.err))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the table holds (allocated whole at creation).
    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * PAIR_BYTES
    }
}

/// Rules for turning pair counts into groups.
#[derive(Clone, Copy, Debug)]
pub struct GroupRules {
    /// A pair seen fewer times than this is noise.
    pub pair_count_min: u32,
    /// count(a,b) / min(accesses(a), accesses(b)): how much of the rarer extent's use is
    /// shared with the other. Hot extents meet each other by chance often in absolute terms,
    /// but only for a small share of their accesses.
    pub association_min: f64,
    /// A group never grows beyond this (it must fit in one shard).
    pub group_extents_max: usize,
    /// Pairs that chance alone produces per pair of accesses: two extents with a and b
    /// accesses meet about chance x a x b times without any relation (so hot extents,
    /// which meet everything, are not grouped for that). 0 ignores chance.
    pub chance: f64,
    /// ...and a pair must beat chance clearly: (count - expected) / sqrt(expected) at least
    /// this (a Poisson z-score; rare extents meeting a hot one a few times do not pass).
    pub z_min: f64,
}

/// Extents in one correlated group at most (and never more than a shard holds).
pub const GROUP_EXTENTS_MAX: usize = 64;

impl GroupRules {
    /// The rules `heat` and the sharding engine share, for shards of `shard_bytes_max`.
    pub fn for_shards(extent_size: u64, shard_bytes_max: u64) -> GroupRules {
        GroupRules {
            group_extents_max: ((shard_bytes_max / extent_size.max(1)) as usize)
                .clamp(2, GROUP_EXTENTS_MAX),
            ..GroupRules::default()
        }
    }
}

impl Default for GroupRules {
    fn default() -> Self {
        GroupRules {
            pair_count_min: 8,
            association_min: 0.3,
            group_extents_max: GROUP_EXTENTS_MAX,
            chance: 0.0,
            z_min: 4.0,
        }
    }
}

/// Pairs seen together well beyond chance (given how often each is accessed), strongest
/// first: (association x count, pair).
fn strong_pairs(
    edges: &[(Pair, u32)],
    accesses: impl Fn(Ext) -> u32,
    rules: &GroupRules,
) -> Vec<(f64, Pair)> {
    let mut strong: Vec<(f64, Pair)> = edges
        .iter()
        .filter(|(_, c)| *c >= rules.pair_count_min)
        .filter_map(|(p, c)| {
            let (x, y) = (accesses(p.0), accesses(p.1));
            let expected = rules.chance * f64::from(x) * f64::from(y);
            let excess = f64::from(*c) - expected;
            if excess < rules.z_min * expected.max(1.0).sqrt() {
                return None;
            }
            let a = excess / f64::from(x.min(y).max(1));
            (a >= rules.association_min).then_some((a.min(1.0) * f64::from(*c), *p))
        })
        .collect();
    strong.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    strong
}

/// Greedy partition of the co-access graph (Kruskal-style agglomerative clustering with a
/// size cap): edges that pass the rules, strongest association first, join their two
/// groups unless the union would exceed the cap. Returns groups of two or more extents,
/// largest first.
pub fn groups(
    edges: &[(Pair, u32)],
    accesses: impl Fn(Ext) -> u32,
    rules: GroupRules,
) -> Vec<Vec<Ext>> {
    let strong = strong_pairs(edges, accesses, &rules);
    let mut id: HashMap<Ext, usize> = HashMap::new();
    let mut parent: Vec<usize> = Vec::new();
    let mut size: Vec<usize> = Vec::new();
    let mut node = |e: Ext, parent: &mut Vec<usize>, size: &mut Vec<usize>| {
        *id.entry(e).or_insert_with(|| {
            parent.push(parent.len());
            size.push(1);
            parent.len() - 1
        })
    };
    fn find(parent: &mut [usize], mut x: usize) -> usize {
        while parent[x] != x {
            parent[x] = parent[parent[x]];
            x = parent[x];
        }
        x
    }
    let mut members: Vec<Ext> = Vec::new();
    for (_, (a, b)) in &strong {
        let ia = node(*a, &mut parent, &mut size);
        let ib = node(*b, &mut parent, &mut size);
        if ia == members.len() {
            members.push(*a);
        }
        if ib == members.len() {
            members.push(*b);
        }
        let (ra, rb) = (find(&mut parent, ia), find(&mut parent, ib));
        if ra == rb || size[ra] + size[rb] > rules.group_extents_max {
            continue;
        }
        let (big, small) = if size[ra] >= size[rb] {
            (ra, rb)
        } else {
            (rb, ra)
        };
        parent[small] = big;
        size[big] += size[small];
    }
    let mut by_root: HashMap<usize, Vec<Ext>> = HashMap::new();
    for (i, e) in members.iter().enumerate() {
        let r = find(&mut parent, i);
        by_root.entry(r).or_default().push(*e);
    }
    let mut out: Vec<Vec<Ext>> = by_root.into_values().filter(|g| g.len() >= 2).collect();
    for g in &mut out {
        g.sort_unstable();
    }
    out.sort_by(|a, b| b.len().cmp(&a.len()).then(a[0].cmp(&b[0])));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn space_saving_keeps_frequent_pairs_in_bounded_memory() {
        let mut s = SpaceSaving::new(64);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for i in 0..20_000u64 {
            if i % 4 == 0 {
                s.add(pair((1, 1), (1, 2)));
            } else {
                s.add(pair(
                    (2, rng.random_range(0..1000)),
                    (3, rng.random_range(0..1000)),
                ));
            }
        }
        assert!(s.len() <= 64);
        let top = s.top();
        assert_eq!(top[0].0, pair((1, 1), (1, 2)));
        // Space-Saving never under-counts: the true count is 5000.
        assert!(top[0].1 >= 5000 && top[0].1 - top[0].2 <= 5000);
        s.age();
        assert_eq!(s.top()[0].0, pair((1, 1), (1, 2)));
    }

    /// Quality of the grouping on a planted co-access graph: groups are accessed together,
    /// hot extents meet everything by chance. Pair-level precision and recall >= 0.9.
    #[test]
    fn greedy_grouping_recovers_planted_groups() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let planted: Vec<Vec<Ext>> = (0..8u64)
            .map(|g| (0..4).map(|i| (10 + g, i)).collect())
            .collect();
        let hot: Vec<Ext> = (0..20).map(|i| (1, i)).collect();
        let mut stream: Vec<Ext> = Vec::new();
        for _ in 0..3000 {
            if rng.random_bool(0.2) {
                let mut g = planted[rng.random_range(0..planted.len())].clone();
                g.sort_by_key(|_| rng.random::<u32>());
                stream.extend(g);
            } else if rng.random_bool(0.7) {
                stream.push(hot[rng.random_range(0..hot.len())]);
            } else {
                stream.push((2, rng.random_range(0..400)));
            }
        }
        let mut s = SpaceSaving::new(4096);
        let mut acc: HashMap<Ext, u32> = HashMap::new();
        let window = 3;
        for (i, e) in stream.iter().enumerate() {
            *acc.entry(*e).or_default() += 1;
            for r in &stream[i.saturating_sub(window)..i] {
                if r != e {
                    s.add(pair(*e, *r));
                }
            }
        }
        let edges: Vec<(Pair, u32)> = s.top().into_iter().map(|(p, c, _)| (p, c)).collect();
        let rules = GroupRules {
            chance: 2.0 * window as f64 / stream.len() as f64,
            ..GroupRules::default()
        };
        let found = groups(&edges, |e| acc.get(&e).copied().unwrap_or(0), rules);
        let (p, r) = pair_precision_recall(&found, &planted);
        assert!(p >= 0.9 && r >= 0.9, "precision {p:.2} recall {r:.2}");
    }

    /// Precision and recall of "these two extents are in one group" over all pairs.
    pub fn pair_precision_recall(found: &[Vec<Ext>], truth: &[Vec<Ext>]) -> (f64, f64) {
        let pairs = |gs: &[Vec<Ext>]| -> std::collections::HashSet<Pair> {
            let mut out = std::collections::HashSet::new();
            for g in gs {
                for (i, a) in g.iter().enumerate() {
                    for b in &g[i + 1..] {
                        out.insert(pair(*a, *b));
                    }
                }
            }
            out
        };
        let (f, t) = (pairs(found), pairs(truth));
        let hit = f.intersection(&t).count() as f64;
        (hit / f.len().max(1) as f64, hit / t.len().max(1) as f64)
    }

    #[test]
    fn group_size_is_capped() {
        let edges: Vec<(Pair, u32)> = (0..9u64).map(|i| (pair((1, i), (1, i + 1)), 50)).collect();
        let rules = GroupRules {
            group_extents_max: 4,
            ..GroupRules::default()
        };
        let gs = groups(&edges, |_| 50, rules);
        assert!(gs.iter().all(|g| g.len() <= 4));
        assert_eq!(gs.iter().map(|g| g.len()).sum::<usize>(), 10);
    }
}
