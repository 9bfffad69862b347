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
//! - Never two replicas on one disk.

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
}

/// Width of the fullness bands general shards are spread by.
const FULLNESS_BAND: f64 = 0.05;

/// Up to `replicas` distinct disks for a shard of `class`, skipping `exclude` (disks that
/// already hold a replica of it), best first.
pub fn choose(
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
        }
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
}
