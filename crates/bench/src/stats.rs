//! Medians, spreads and ratios: the arithmetic of the summary.

use std::collections::BTreeMap;

/// The median (mean of the middle two for an even count); None for no values.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// (min, max); None for no values.
pub fn spread(values: &[f64]) -> Option<(f64, f64)> {
    let mut it = values.iter().copied().filter(|x| x.is_finite());
    let first = it.next()?;
    Some(it.fold((first, first), |(lo, hi), x| (lo.min(x), hi.max(x))))
}

/// a / b, None when either is missing or b is 0.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

/// The geometric mean of positive values (it cancels an order effect that multiplies
/// alternate rounds' ratios by x and 1/x); None when there are none or one is not positive.
pub fn geomean(values: &[f64]) -> Option<f64> {
    if values.is_empty() || !values.iter().all(|v| v.is_finite() && *v > 0.0) {
        return None;
    }
    Some((values.iter().map(|v| v.ln()).sum::<f64>() / values.len() as f64).exp())
}

/// The ratios num[r] / den[r] of the rounds both have, in round order: runs made in the
/// same round saw the same state of a noisy machine.
pub fn round_ratios(num: &BTreeMap<u32, f64>, den: &BTreeMap<u32, f64>) -> Vec<f64> {
    num.iter()
        .filter_map(|(r, a)| ratio(Some(*a), den.get(r).copied()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_even_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn geomean_of_reciprocal_pairs_is_one() {
        assert!((geomean(&[2.0, 0.5]).unwrap() - 1.0).abs() < 1e-12);
        assert!((geomean(&[4.0, 1.0]).unwrap() - 2.0).abs() < 1e-12);
        assert_eq!(geomean(&[]), None);
        assert_eq!(geomean(&[1.0, 0.0]), None);
    }

    #[test]
    fn spread_is_min_and_max() {
        assert_eq!(spread(&[2.0, 9.0, -1.0]), Some((-1.0, 9.0)));
        assert_eq!(spread(&[]), None);
    }

    #[test]
    fn ratios_pair_rounds_and_skip_missing_or_zero() {
        let num = BTreeMap::from([(1, 10.0), (2, 30.0), (3, 5.0), (4, 8.0)]);
        let den = BTreeMap::from([(1, 5.0), (2, 10.0), (4, 0.0)]);
        assert_eq!(round_ratios(&num, &den), [2.0, 3.0]);
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), None), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
    }
}
