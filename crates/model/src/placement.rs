//! Which disks hold a shard's replicas: the one placement rule the planner, evacuation and
//! the fleet simulator (`foreshard sim`) share, so the simulator measures the daemon's rule,
//! and the risk interface (`RiskView`) that placement, recovery and evacuation read.
//!
//! - Disks at or above the warning threshold come last: a shard gets replicas on them only
//!   when too few disks below it are left (never all replicas on at-risk disks while enough
//!   healthy ones exist).
//! - Hot shards: most reliable disks first, then least full.
//! - General shards: least full first in 5% bands (so space stays balanced), the lower risk
//!   within a band.
//! - Never two replicas on one disk; replicas on distinct hosts, and on distinct racks where
//!   racks are labelled. Racks are given up first and hosts second, and only when no
//!   candidate is left (`Relaxed` says which).

use serde::{Deserialize, Serialize};

/// The kind of data a shard holds. `General` shards (the hash-addressed initial set and the
/// engine's overflow shards) take new, warm and cold data; `Hot` shards hold the hot
/// working set (and extents cooling off, until they turn cold), never cold data.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ShardClass {
    #[default]
    General,
    Hot,
}

impl ShardClass {
    pub fn name(self) -> &'static str {
        match self {
            ShardClass::General => "general",
            ShardClass::Hot => "hot",
        }
    }
}

/// Serialized by name (lower case) in JSON; by variant index (postcard) in the metadata, so
/// variants are only ever appended.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DiskState {
    Up,
    /// Probes failed or hung: still read and written, watched closely.
    Suspect,
    /// Never read or written again; its replicas are rebuilt elsewhere.
    Failed,
    /// Being emptied by `disk remove`: read as a source, never a target of new data.
    Draining,
    /// Emptied and released by `disk remove`.
    Removed,
}

impl DiskState {
    pub fn name(self) -> &'static str {
        match self {
            DiskState::Up => "up",
            DiskState::Suspect => "suspect",
            DiskState::Failed => "failed",
            DiskState::Draining => "draining",
            DiskState::Removed => "removed",
        }
    }
    /// Holds readable replicas (a source for reads and recovery).
    pub fn readable(self) -> bool {
        matches!(
            self,
            DiskState::Up | DiskState::Suspect | DiskState::Draining
        )
    }
}

/// The risk interface placement goes through: P(failure) per disk. The daemon's risk
/// service (`risk::service::View`) fills it; before its first round, and offline, every
/// disk has the same risk (`UniformRisk`).
pub trait RiskView: Send + Sync {
    fn disk_risk(&self, disk: u32) -> f64;
    /// Disks at or above this risk never hold every replica of a shard (when others can).
    fn risk_warn(&self) -> f64 {
        f64::INFINITY
    }
    /// P(shard loses every replica before its repair finishes); orders evacuation.
    fn shard_risk(&self, _shard: u32) -> f64 {
        0.0
    }
}

pub struct UniformRisk;

impl RiskView for UniformRisk {
    fn disk_risk(&self, _disk: u32) -> f64 {
        0.0
    }
}

/// A disk as placement sees it.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    pub id: u32,
    pub total_bytes: u64,
    pub used_bytes: u64,
    /// P(failure within the model's horizon); only comparisons with each other and with
    /// the warning threshold matter.
    pub risk: f64,
    /// The storage host the disk is in (0 on a single host).
    pub host: u32,
    /// The rack the host is in, when racks are labelled.
    pub rack: Option<u32>,
}

impl Candidate {
    pub fn site(&self) -> Site {
        Site {
            host: self.host,
            rack: self.rack,
        }
    }
}

/// Where a replica is: the host, and the rack when labelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Site {
    pub host: u32,
    pub rack: Option<u32>,
}

/// How far a placement had to give up spreading; ordered from none to the strongest.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Relaxed {
    /// Every replica on its own host and (where labelled) its own rack.
    #[default]
    None,
    /// Two replicas share a rack: too few racks had room.
    Rack,
    /// Two replicas share a host: too few hosts had room.
    Host,
}

/// The disks `place` chose, best first, and how far it relaxed the spreading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub disks: Vec<u32>,
    pub relaxed: Relaxed,
}

/// Width of the fullness bands general shards are spread by.
const FULLNESS_BAND: f64 = 0.05;

/// Up to `replicas` distinct disks for a shard of `class`, skipping `exclude` (disks that
/// already hold a replica of it), best first. The hosts and racks of the `exclude` disks
/// found in `disks` count as used (`place`'s `held`).
pub fn choose(
    disks: &[Candidate],
    class: ShardClass,
    replicas: usize,
    risk_warn: f64,
    exclude: &[u32],
) -> Vec<u32> {
    let held: Vec<Site> = disks
        .iter()
        .filter(|d| exclude.contains(&d.id))
        .map(Candidate::site)
        .collect();
    place(disks, class, replicas, risk_warn, exclude, &held).disks
}

/// Up to `replicas` distinct disks for a shard of `class`, best first by `order`, never one
/// of `exclude`. Each goes on a host not used yet and a rack not used yet (racks only where
/// labelled), counting `held`: the sites of the replicas the shard keeps. When no disk is
/// left on a new rack, racks are given up; when none is left on a new host, hosts too.
pub fn place(
    disks: &[Candidate],
    class: ShardClass,
    replicas: usize,
    risk_warn: f64,
    exclude: &[u32],
    held: &[Site],
) -> Placement {
    let mut c: Vec<&Candidate> = disks.iter().filter(|d| !exclude.contains(&d.id)).collect();
    c.sort_by(|a, b| order(a, b, class, risk_warn));
    let mut hosts: Vec<u32> = held.iter().map(|s| s.host).collect();
    let mut racks: Vec<u32> = held.iter().filter_map(|s| s.rack).collect();
    let mut out = Placement {
        disks: Vec::with_capacity(replicas),
        relaxed: Relaxed::None,
    };
    while out.disks.len() < replicas {
        let free = |d: &&&Candidate| !out.disks.contains(&d.id);
        let new_host = |d: &&&Candidate| !hosts.contains(&d.host);
        let new_rack = |d: &&&Candidate| d.rack.is_none_or(|r| !racks.contains(&r));
        let pick = c
            .iter()
            .find(|d| free(d) && new_host(d) && new_rack(d))
            .map(|d| (d, Relaxed::None))
            .or_else(|| {
                let d = c.iter().find(|d| free(d) && new_host(d))?;
                Some((d, Relaxed::Rack))
            })
            .or_else(|| Some((c.iter().find(free)?, Relaxed::Host)));
        let Some((d, relaxed)) = pick else {
            break;
        };
        out.disks.push(d.id);
        hosts.push(d.host);
        racks.extend(d.rack);
        out.relaxed = out.relaxed.max(relaxed);
    }
    out
}

fn fullness(d: &Candidate) -> f64 {
    d.used_bytes as f64 / d.total_bytes.max(1) as f64
}

/// Placement preference: `Less` = `a` is the better disk for a shard of `class`.
pub fn order(
    a: &Candidate,
    b: &Candidate,
    class: ShardClass,
    risk_warn: f64,
) -> std::cmp::Ordering {
    let at_risk = |d: &Candidate| d.risk >= risk_warn;
    let band = |d: &Candidate| (fullness(d) / FULLNESS_BAND).floor() as i64;
    at_risk(a)
        .cmp(&at_risk(b))
        .then_with(|| match class {
            ShardClass::Hot => a
                .risk
                .total_cmp(&b.risk)
                .then(fullness(a).total_cmp(&fullness(b))),
            ShardClass::General => band(a)
                .cmp(&band(b))
                .then(a.risk.total_cmp(&b.risk))
                .then(fullness(a).total_cmp(&fullness(b))),
        })
        .then(a.id.cmp(&b.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(id: u32, used: u64, risk: f64) -> Candidate {
        Candidate {
            id,
            total_bytes: 100,
            used_bytes: used,
            risk,
            host: 0,
            rack: None,
        }
    }

    /// A disk `used`% full on `host` in `rack`, at no risk.
    fn on(id: u32, used: u64, host: u32, rack: Option<u32>) -> Candidate {
        Candidate {
            host,
            rack,
            ..disk(id, used, 0.0)
        }
    }

    fn hosts_of(d: &[Candidate], chosen: &[u32]) -> Vec<u32> {
        chosen
            .iter()
            .map(|id| d.iter().find(|c| c.id == *id).expect("chosen").host)
            .collect()
    }

    #[test]
    fn at_risk_disks_only_when_nothing_else_is_left() {
        let d = [disk(0, 0, 0.5), disk(1, 90, 0.01), disk(2, 50, 0.02)];
        assert_eq!(choose(&d, ShardClass::General, 2, 0.2, &[]), vec![2, 1]);
        assert_eq!(choose(&d, ShardClass::Hot, 2, 0.2, &[]), vec![1, 2]);
        // Only one healthy disk left: the second replica has to go to the risky one.
        assert_eq!(choose(&d, ShardClass::General, 2, 0.2, &[2]), vec![1, 0]);
        // Excluded disks are never chosen, and fewer disks than replicas give fewer.
        assert_eq!(choose(&d, ShardClass::General, 3, 0.2, &[0, 1]), vec![2]);
    }

    #[test]
    fn general_balances_space_and_breaks_ties_by_risk() {
        let d = [disk(0, 10, 0.03), disk(1, 11, 0.01), disk(2, 60, 0.0)];
        // 10% and 11% full share a band: the lower risk wins; the empty-ish beat the full.
        assert_eq!(choose(&d, ShardClass::General, 2, 1.0, &[]), vec![1, 0]);
        // Hot: most reliable first whatever the fullness.
        assert_eq!(choose(&d, ShardClass::Hot, 2, 1.0, &[]), vec![2, 1]);
    }

    #[test]
    fn replicas_go_to_distinct_hosts_while_hosts_have_room() {
        // Host 0 has the two emptiest disks; today's rule would put both replicas there.
        let d = [
            on(0, 0, 0, None),
            on(1, 1, 0, None),
            on(2, 30, 1, None),
            on(3, 60, 2, None),
        ];
        let p = place(&d, ShardClass::General, 2, 1.0, &[], &[]);
        assert_eq!(p.disks, vec![0, 2]);
        assert_eq!(p.relaxed, Relaxed::None);
        let p = place(&d, ShardClass::General, 3, 1.0, &[], &[]);
        assert_eq!(p.disks, vec![0, 2, 3]);
        assert_eq!(p.relaxed, Relaxed::None);
        // Hosts run out: the fourth replica shares a host, and that is reported.
        let p = place(&d, ShardClass::General, 4, 1.0, &[], &[]);
        assert_eq!(p.disks, vec![0, 2, 3, 1]);
        assert_eq!(p.relaxed, Relaxed::Host);
    }

    #[test]
    fn replicas_go_to_distinct_racks_where_labelled() {
        // Rack 7: hosts 0 and 1 (the emptiest disks); rack 8: host 2.
        let d = [
            on(0, 0, 0, Some(7)),
            on(1, 1, 1, Some(7)),
            on(2, 60, 2, Some(8)),
        ];
        let p = place(&d, ShardClass::General, 2, 1.0, &[], &[]);
        assert_eq!(p.disks, vec![0, 2]);
        assert_eq!(p.relaxed, Relaxed::None);
        // Racks run out before hosts: distinct hosts still, racks relaxed.
        let p = place(&d, ShardClass::General, 3, 1.0, &[], &[]);
        assert_eq!(p.disks, vec![0, 2, 1]);
        assert_eq!(p.relaxed, Relaxed::Rack);
        // Unlabelled disks have no rack to clash with.
        let d = [
            on(0, 0, 0, Some(7)),
            on(1, 1, 1, Some(7)),
            on(2, 60, 2, None),
        ];
        let p = place(&d, ShardClass::General, 2, 1.0, &[], &[]);
        assert_eq!((p.disks, p.relaxed), (vec![0, 2], Relaxed::None));
    }

    #[test]
    fn held_and_excluded_hosts_count_as_used() {
        let d = [
            on(0, 0, 0, Some(1)),
            on(1, 1, 1, Some(1)),
            on(2, 60, 2, Some(2)),
        ];
        // Disk 0 holds a replica: host 0 and rack 1 are taken, so disk 1 is not next.
        assert_eq!(choose(&d, ShardClass::General, 1, 1.0, &[0]), vec![2]);
        // A kept replica that is no candidate (say, a full disk) still takes its host.
        let held = [Site {
            host: 2,
            rack: None,
        }];
        let p = place(&d, ShardClass::General, 1, 1.0, &[], &held);
        assert_eq!((p.disks, p.relaxed), (vec![0], Relaxed::None));
        let p = place(&d, ShardClass::General, 2, 1.0, &[], &held);
        assert_eq!((p.disks, p.relaxed), (vec![0, 1], Relaxed::Rack));
        // Every candidate's host already holds one: relaxed to a shared host.
        let held = [0, 1, 2].map(|host| Site { host, rack: None });
        let p = place(&d, ShardClass::General, 1, 1.0, &[], &held);
        assert_eq!((p.disks, p.relaxed), (vec![0], Relaxed::Host));
    }

    #[test]
    fn relaxed_names_are_lower_case() {
        let names = [Relaxed::None, Relaxed::Rack, Relaxed::Host]
            .map(|r| serde_json::to_string(&r).expect("serializes"));
        assert_eq!(
            names,
            ["\"none\"", "\"rack\"", "\"host\""].map(String::from)
        );
        let r: Relaxed = serde_json::from_str("\"rack\"").expect("parses");
        assert_eq!(r, Relaxed::Rack);
    }

    /// `choose` before hosts and racks: the single-host answer must stay exactly this.
    fn choose_single_host(
        disks: &[Candidate],
        class: ShardClass,
        replicas: usize,
        risk_warn: f64,
        exclude: &[u32],
    ) -> Vec<u32> {
        let mut c: Vec<&Candidate> = disks.iter().filter(|d| !exclude.contains(&d.id)).collect();
        c.sort_by(|a, b| order(a, b, class, risk_warn));
        let mut out: Vec<u32> = Vec::with_capacity(replicas);
        for d in c {
            if out.len() == replicas {
                break;
            }
            if !out.contains(&d.id) {
                out.push(d.id);
            }
        }
        out
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Few ids (so duplicates and excluded disks occur), fullness and risks with ties.
        fn candidate(hosts: u32) -> impl Strategy<Value = Candidate> {
            let risk = prop_oneof![Just(0.0), Just(0.01), Just(0.2), Just(0.5), 0.0..1.0f64];
            (0u32..24, 1u64..1_000, 0.0..=1.0f64, risk, 0..hosts).prop_map(
                |(id, total_bytes, f, risk, host)| Candidate {
                    id,
                    total_bytes,
                    used_bytes: (total_bytes as f64 * f) as u64,
                    risk,
                    host,
                    rack: None,
                },
            )
        }

        fn class() -> impl Strategy<Value = ShardClass> {
            prop_oneof![Just(ShardClass::General), Just(ShardClass::Hot)]
        }

        fn risk_warn() -> impl Strategy<Value = f64> {
            prop_oneof![Just(f64::INFINITY), Just(0.2), Just(0.0)]
        }

        /// Unique ids on up to 6 hosts.
        fn fleet() -> impl Strategy<Value = Vec<Candidate>> {
            prop::collection::vec(candidate(6), 0..16).prop_map(|mut v| {
                v.sort_by_key(|c| c.id);
                v.dedup_by_key(|c| c.id);
                v
            })
        }

        fn distinct<T: Ord>(mut v: Vec<T>) -> usize {
            v.sort();
            v.dedup();
            v.len()
        }

        proptest! {
            #[test]
            fn single_host_choices_are_unchanged(
                disks in prop::collection::vec(candidate(1), 0..16),
                class in class(),
                replicas in 1usize..=4,
                warn in risk_warn(),
                exclude in prop::collection::vec(0u32..24, 0..6),
            ) {
                let want = choose_single_host(&disks, class, replicas, warn, &exclude);
                prop_assert_eq!(choose(&disks, class, replicas, warn, &exclude), want);
            }

            #[test]
            fn never_two_replicas_on_one_host_or_rack_while_enough_exist(
                disks in fleet(),
                racks in any::<bool>(),
                class in class(),
                replicas in 1usize..=4,
                warn in risk_warn(),
                exclude in prop::collection::vec(0u32..24, 0..6),
            ) {
                // Labelled racks are a function of the host, as in a real cluster.
                let mut disks = disks;
                for c in &mut disks {
                    c.rack = racks.then_some(c.host % 3);
                }
                let eligible: Vec<&Candidate> =
                    disks.iter().filter(|d| !exclude.contains(&d.id)).collect();
                let p = place(&disks, class, replicas, warn, &exclude, &[]);
                prop_assert_eq!(p.disks.len(), replicas.min(eligible.len()));
                prop_assert_eq!(distinct(p.disks.clone()), p.disks.len());
                prop_assert!(p.disks.iter().all(|d| !exclude.contains(d)));
                let hosts = hosts_of(&disks, &p.disks);
                if distinct(eligible.iter().map(|c| c.host).collect()) >= replicas {
                    prop_assert_eq!(distinct(hosts.clone()), hosts.len());
                    prop_assert!(p.relaxed < Relaxed::Host);
                }
                let racks_of: Vec<u32> = hosts.iter().map(|h| h % 3).collect();
                if racks && distinct(eligible.iter().map(|c| c.host % 3).collect()) >= replicas {
                    prop_assert_eq!(distinct(racks_of.clone()), racks_of.len());
                    prop_assert_eq!(p.relaxed, Relaxed::None);
                }
                // Relaxed only reports what happened.
                if distinct(hosts.clone()) == hosts.len() {
                    prop_assert!(p.relaxed < Relaxed::Host);
                }
                // `choose`: the excluded disks' hosts are taken while others have room.
                let taken: Vec<u32> = disks
                    .iter()
                    .filter(|d| exclude.contains(&d.id))
                    .map(|d| d.host)
                    .collect();
                let free_hosts = eligible.iter().map(|c| c.host).filter(|h| !taken.contains(h));
                if distinct(free_hosts.collect()) >= replicas {
                    let chosen = choose(&disks, class, replicas, warn, &exclude);
                    let hosts = hosts_of(&disks, &chosen);
                    prop_assert!(hosts.iter().all(|h| !taken.contains(h)));
                    prop_assert_eq!(distinct(hosts.clone()), hosts.len());
                }
            }
        }
    }
}
