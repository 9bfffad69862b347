//! Time-of-day patterns per shard: 24 hour-of-day buckets and a daily-periodicity signal
//! from the last week of hourly counts.

use serde::{Deserialize, Serialize};

/// Hours of history kept per shard (one week): enough for a lag-24 h autocorrelation over
/// several days.
pub const HISTORY_HOURS: usize = 168;
/// Hour-of-day buckets lose this share per day, so the profile follows changing habits.
const DAILY_KEEP: f64 = 0.85;
/// Bytes one shard profile costs (the struct plus its map slot).
pub const PROFILE_BYTES: usize = std::mem::size_of::<Profile>() + 16;

#[derive(Clone, Serialize, Deserialize)]
pub struct Profile {
    /// Requests per hour for the last `HISTORY_HOURS` hours, indexed by absolute hour mod
    /// the length.
    #[serde(with = "serde_big_array")]
    hourly: [u32; HISTORY_HOURS],
    /// The absolute hour (since the Unix epoch) of the newest bucket.
    last_hour: u64,
    /// The first hour seen: periodicity needs two full days.
    first_hour: u64,
    /// Decayed requests per hour of day (0..24, UTC).
    by_hour: [f32; 24],
    last_day: u64,
}

mod serde_big_array {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::HISTORY_HOURS;

    pub fn serialize<S: Serializer>(a: &[u32; HISTORY_HOURS], s: S) -> Result<S::Ok, S::Error> {
        a.as_slice().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u32; HISTORY_HOURS], D::Error> {
        let v = Vec::<u32>::deserialize(d)?;
        v.try_into()
            .map_err(|_| serde::de::Error::custom("hourly history of the wrong length"))
    }
}

impl Profile {
    pub fn new(t_s: u64) -> Profile {
        Profile {
            hourly: [0; HISTORY_HOURS],
            last_hour: t_s / 3600,
            first_hour: t_s / 3600,
            by_hour: [0.0; 24],
            last_day: t_s / 86_400,
        }
    }

    fn advance(&mut self, hour: u64) {
        if hour <= self.last_hour {
            return;
        }
        let gap = (hour - self.last_hour).min(HISTORY_HOURS as u64);
        for h in 1..=gap {
            self.hourly[((self.last_hour + h) % HISTORY_HOURS as u64) as usize] = 0;
        }
        self.last_hour = hour;
        let day = hour / 24;
        if day > self.last_day {
            let k = DAILY_KEEP.powi((day - self.last_day).min(1000) as i32) as f32;
            self.by_hour.iter_mut().for_each(|v| *v *= k);
            self.last_day = day;
        }
    }

    pub fn record(&mut self, t_s: u64, n: u32) {
        let hour = t_s / 3600;
        self.advance(hour);
        if hour + HISTORY_HOURS as u64 <= self.last_hour {
            return; // older than the history
        }
        let slot = &mut self.hourly[(hour % HISTORY_HOURS as u64) as usize];
        *slot = slot.saturating_add(n);
        self.by_hour[(hour % 24) as usize] += n as f32;
        self.first_hour = self.first_hour.min(hour);
    }

    pub fn by_hour(&self) -> [f32; 24] {
        self.by_hour
    }

    /// Pearson correlation of the hourly series with itself a day earlier, over the kept
    /// history up to `now`; None until two full days were seen or when the series is flat.
    pub fn periodicity(&self, now_s: u64) -> Option<f64> {
        let now = now_s / 3600;
        let start = self
            .first_hour
            .max((now + 1).saturating_sub(HISTORY_HOURS as u64));
        if now < start + 48 {
            return None;
        }
        let at = |h: u64| -> f64 {
            if h > self.last_hour || h + (HISTORY_HOURS as u64) <= self.last_hour {
                0.0
            } else {
                f64::from(self.hourly[(h % HISTORY_HOURS as u64) as usize])
            }
        };
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for h in start + 24..now {
            xs.push(at(h));
            ys.push(at(h - 24));
        }
        pearson(&xs, &ys)
    }

    /// Hours of the day whose share of the daily traffic is at least twice the even share.
    pub fn peak_hours(&self) -> Vec<u32> {
        let total: f32 = self.by_hour.iter().sum();
        if total <= 0.0 {
            return Vec::new();
        }
        (0..24)
            .filter(|h| self.by_hour[*h as usize] / total >= 2.0 / 24.0)
            .collect()
    }

    /// The next peak hour that starts within `lead_s` of `now`, for a shard with a clear
    /// daily rhythm (periodicity at least `periodicity_min`).
    pub fn upcoming_peak(&self, now_s: u64, lead_s: u64, periodicity_min: f64) -> Option<u32> {
        if self.periodicity(now_s)? < periodicity_min {
            return None;
        }
        let peaks = self.peak_hours();
        let next_hour_start = (now_s / 3600 + 1) * 3600;
        if next_hour_start - now_s > lead_s {
            return None;
        }
        let h = ((next_hour_start / 3600) % 24) as u32;
        peaks.contains(&h).then_some(h)
    }
}

fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len() as f64;
    if x.len() < 2 {
        return None;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx <= 0.0 || syy <= 0.0 {
        return None;
    }
    Some(sxy / (sxx * syy).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;
    const T0: u64 = 1_700_000_000 / DAY * DAY; // a midnight (UTC)

    #[test]
    fn nightly_shard_is_recognised_before_its_hour() {
        let mut p = Profile::new(T0);
        for day in 0..5 {
            for m in 0..60 {
                p.record(T0 + day * DAY + 2 * 3600 + m * 60, 3);
            }
        }
        let now = T0 + 5 * DAY + 3600 + 1800; // 01:30 on day 5
        let per = p.periodicity(now).unwrap();
        assert!(per > 0.8, "periodicity {per}");
        assert_eq!(p.peak_hours(), vec![2]);
        assert_eq!(p.upcoming_peak(now, 3600, 0.5), Some(2));
        assert_eq!(p.upcoming_peak(T0 + 5 * DAY + 12 * 3600, 3600, 0.5), None);
    }

    #[test]
    fn irregular_traffic_has_low_periodicity() {
        let mut p = Profile::new(T0);
        let mut x: u64 = 12345;
        for _ in 0..3000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            p.record(T0 + x % (5 * DAY), 1);
        }
        let per = p.periodicity(T0 + 5 * DAY).unwrap();
        assert!(per < 0.4, "periodicity {per}");
        assert!(p.upcoming_peak(T0 + 5 * DAY - 1800, 3600, 0.5).is_none());
    }

    #[test]
    fn young_profile_has_no_signal() {
        let mut p = Profile::new(T0);
        p.record(T0 + 100, 5);
        assert_eq!(p.periodicity(T0 + DAY), None);
    }
}
