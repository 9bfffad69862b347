//! A shard's loss risk: the probability that every replica is lost before a repair could
//! restore one, from its disks' failure probabilities and its repair time. The daemon
//! (`foreshard risk`, agent sizing) and the fleet simulator use the same functions.

/// The horizon the model's probabilities are for (P(fail within 30 days)), as a float for
/// rates: one number, the model's.
pub const HORIZON_DAYS: f64 = super::model::HORIZON_DAYS as f64;
const HORIZON_S: f64 = HORIZON_DAYS * 86_400.0;

/// Constant failure rate (per second) that gives probability `p` over the horizon.
pub fn hazard_per_s(p: f64) -> f64 {
    -(1.0 - p.clamp(0.0, 1.0 - 1e-12)).ln() / HORIZON_S
}

/// P(the disk fails within `secs`) at the rate implied by its horizon probability.
pub fn p_within(p: f64, secs: f64) -> f64 {
    1.0 - (-hazard_per_s(p) * secs.max(0.0)).exp()
}

/// Seconds to restore one replica of a shard: detection plus copying its bytes.
pub fn repair_seconds(shard_bytes: u64, rate_bytes_per_s: f64, detect_s: f64) -> f64 {
    detect_s + shard_bytes as f64 / rate_bytes_per_s.max(1.0)
}

/// P(all replicas of a shard are lost within the horizon): some replica disk fails first
/// (its horizon probability), and every other replica disk fails within the repair window
/// that follows. Failures are taken as independent; the sum over "which disk fails first"
/// is the union bound, tight while the probabilities are small. One replica: its disk's
/// probability.
pub fn loss_probability(disk_p: &[f64], repair_s: f64) -> f64 {
    let mut total = 0.0;
    for (i, p) in disk_p.iter().enumerate() {
        let rest: f64 = disk_p
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, q)| p_within(*q, repair_s))
            .product();
        total += p.clamp(0.0, 1.0) * rest;
    }
    total.clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_risk_follows_the_disks_and_the_repair_time() {
        // One replica: just the disk.
        assert!((loss_probability(&[0.05], 3600.0) - 0.05).abs() < 1e-12);
        let p = loss_probability(&[0.05, 0.05], 3600.0);
        // Two disks at 5%/30 days, one hour to repair: 2 * 0.05 * (1 - e^(-λ·3600)).
        let lambda = -(0.95f64).ln() / (30.0 * 86400.0);
        let want = 2.0 * 0.05 * (1.0 - (-lambda * 3600.0).exp());
        assert!((p - want).abs() < 1e-12, "{p} vs {want}");
        // Slower repair or a riskier disk: higher risk; a third replica: far lower.
        assert!(loss_probability(&[0.05, 0.05], 36_000.0) > p);
        assert!(loss_probability(&[0.5, 0.05], 3600.0) > p);
        assert!(loss_probability(&[0.05, 0.05, 0.05], 3600.0) < p / 100.0);
        // Certain failure of both within the window.
        assert!(loss_probability(&[1.0, 1.0], 1e9) > 0.99);
        assert!((p_within(0.05, HORIZON_DAYS * 86400.0) - 0.05).abs() < 1e-9);
        assert_eq!(repair_seconds(100 << 20, (10 << 20) as f64, 1.0), 11.0);
    }
}
