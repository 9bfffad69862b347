//! The arithmetic of a recovery run, kept apart from the I/O so that it can be tested: the
//! daemon's timestamps out of `status --json`, the latencies and rates made of them, the
//! foreground reader's window out of fio's per-read log, and the profile ordering check.

use anyhow::{bail, Context};
use serde_json::Value;

const MIB: f64 = 1048576.0;

/// What `.recovery` of a finished run says (Unix ms timestamps of the daemon's clock).
#[derive(Clone, Debug, PartialEq)]
pub struct Timings {
    pub detected_at_ms: u64,
    pub first_extent_at_ms: Option<u64>,
    pub done_at_ms: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
    pub rate_bytes_per_s: Option<f64>,
    pub failed_disks: Vec<u64>,
}

impl Timings {
    /// From a status document whose recovery is done.
    pub fn from_status(st: &Value) -> anyhow::Result<Timings> {
        let r = &st["recovery"];
        let need = |k: &str| {
            r[k].as_u64()
                .with_context(|| format!("recovery is done but .recovery has no usable {k}: {r}"))
        };
        let failed = r["failed_disks"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64));
        Ok(Timings {
            detected_at_ms: need("detected_at_ms")?,
            first_extent_at_ms: r["first_extent_at_ms"].as_u64(),
            done_at_ms: need("done_at_ms")?,
            bytes_total: need("bytes_total")?,
            bytes_done: r["bytes_done"].as_u64().unwrap_or(0),
            rate_bytes_per_s: r["rate_bytes_per_s"].as_f64(),
            failed_disks: failed.map(Iterator::collect).unwrap_or_default(),
        })
    }

    /// The measures of scripts/bench-recovery, T0 being the yank.
    pub fn measures(&self, t0_ms: u64) -> Measures {
        let (det, done) = (self.detected_at_ms as f64, self.done_at_ms as f64);
        let window_ms = done - det;
        Measures {
            detect_ms: det - t0_ms as f64,
            activate_ms: self.first_extent_at_ms.map(|f| f as f64 - det),
            full_s: (done - t0_ms as f64) / 1000.0,
            rate_mibs: (window_ms > 0.0).then(|| mibs(self.bytes_total as f64, window_ms)),
            bytes_mib: self.bytes_total as f64 / MIB,
        }
    }

    /// What looks wrong, as warnings (the run goes on).
    pub fn warnings(&self, t0_ms: u64, disk1: Option<u64>) -> Vec<String> {
        let mut w = Vec::new();
        if let Some(id) = disk1.filter(|id| !self.failed_disks.contains(id)) {
            w.push(format!(
                "failed_disks is {:?}, expected it to contain disk1's id {id}",
                self.failed_disks
            ));
        }
        if self.bytes_done != self.bytes_total {
            w.push(format!(
                "bytes_done {} != bytes_total {}",
                self.bytes_done, self.bytes_total
            ));
        }
        if self.detected_at_ms < t0_ms {
            w.push(format!(
                "detected_at_ms is before T0 (by {} ms)",
                t0_ms - self.detected_at_ms
            ));
        }
        if self.first_extent_at_ms.is_none() && self.bytes_total > 0 {
            w.push(format!(
                "first_extent_at_ms is null although {} bytes were copied",
                self.bytes_total
            ));
        }
        w
    }
}

/// detection = detected - T0; activation = first extent - detected; time to full
/// replication = done - T0; rate = bytes / (done - detected).
#[derive(Clone, Debug, PartialEq)]
pub struct Measures {
    pub detect_ms: f64,
    pub activate_ms: Option<f64>,
    pub full_s: f64,
    pub rate_mibs: Option<f64>,
    pub bytes_mib: f64,
}

/// MiB/s of `bytes` in `ms`.
pub fn mibs(bytes: f64, ms: f64) -> f64 {
    bytes / MIB / (ms / 1000.0)
}

/// The T of `foreshard debug inject yank`'s "yanked DISK at SECS.NANOS", in Unix ms.
pub fn yank_ms(out: &str) -> anyhow::Result<u64> {
    let line = out
        .lines()
        .find(|l| l.starts_with("yanked "))
        .context("no 'yanked ... at T' line")?;
    let t = line
        .rsplit_once(" at ")
        .context("no ' at T' in the yank line")?
        .1
        .trim();
    let (s, frac) = t.split_once('.').unwrap_or((t, "0"));
    let secs: u64 = s.parse().with_context(|| format!("bad time '{t}'"))?;
    let ms: u64 = format!("{frac:0<3}")[..3]
        .parse()
        .with_context(|| format!("bad time '{t}'"))?;
    Ok(secs * 1000 + ms)
}

/// One completed read of fio's per-read log: (completion time in Unix ms, bytes).
pub fn read_log(text: &str) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut v = Vec::new();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        // time, 1, direction, bytes, offset[, priority]
        let f: Vec<&str> = l.split(',').map(str::trim).collect();
        if f.len() < 4 {
            bail!("bad fio log line '{l}'");
        }
        let t = f[0]
            .parse()
            .with_context(|| format!("bad fio log line '{l}'"))?;
        v.push((
            t,
            f[3].parse()
                .with_context(|| format!("bad fio log line '{l}'"))?,
        ));
    }
    if v.is_empty() {
        bail!("fio's per-read log is empty");
    }
    Ok(v)
}

/// The foreground reads around a recovery.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// Bytes of reads completed in (detected, done].
    pub during_bytes: u64,
    /// Bytes of reads completed in the last 500 ms before the yank, and that span in ms.
    pub pre_bytes: u64,
    pub pre_ms: u64,
    pub first_ms: u64,
    pub last_ms: u64,
}

pub fn window(log: &[(u64, u64)], det: u64, done: u64, t0: u64) -> Window {
    let first = log.first().map_or(0, |r| r.0);
    let p0 = t0.saturating_sub(500).max(first);
    let sum = |a: u64, b: u64| {
        log.iter()
            .filter(|r| r.0 > a && r.0 <= b)
            .map(|r| r.1)
            .sum()
    };
    Window {
        during_bytes: sum(det, done),
        pre_bytes: sum(p0, t0),
        pre_ms: t0.saturating_sub(p0),
        first_ms: first,
        last_ms: log.last().map_or(0, |r| r.0),
    }
}

/// A status poll during the foreground run: (Unix ms, stats.bytes_read, recovery.bytes_done).
pub type Poll = (u64, u64, u64);

/// The daemon's view of the foreground rate: client bytes between the last poll at or
/// before detection and the first at or after done; (MiB/s, window ms).
pub fn daemon_window(polls: &[Poll], det: u64, done: u64) -> Option<(f64, u64)> {
    let a = polls.iter().rev().find(|p| p.0 <= det)?;
    let b = polls.iter().find(|p| p.0 >= done)?;
    (b.0 > a.0).then(|| {
        (
            mibs(b.1.saturating_sub(a.1) as f64, (b.0 - a.0) as f64),
            b.0 - a.0,
        )
    })
}

/// The foreground MiB/s per 250 ms bucket, [ms relative to the yank, MiB/s].
pub fn timeline(log: &[(u64, u64)], t0: u64) -> Vec<[f64; 2]> {
    let bucket = |t: u64| (t as i64 - t0 as i64).div_euclid(250);
    let (Some(lo), Some(hi)) = (
        log.first().map(|r| bucket(r.0)),
        log.last().map(|r| bucket(r.0)),
    ) else {
        return Vec::new();
    };
    let mut sums = vec![0u64; (hi - lo + 1) as usize];
    for r in log {
        sums[(bucket(r.0) - lo) as usize] += r.1;
    }
    let at = |i: usize| ((lo + i as i64) * 250) as f64;
    sums.iter()
        .enumerate()
        .map(|(i, b)| [at(i), *b as f64 / MIB * 4.0])
        .collect()
}

/// Whether `vals` strictly decrease (`desc`) or increase; None with fewer than 2 or a gap.
pub fn ordered(vals: &[Option<f64>], desc: bool) -> Option<bool> {
    let v: Option<Vec<f64>> = vals.iter().copied().collect();
    let v = v.filter(|v| v.len() >= 2)?;
    Some(
        v.windows(2)
            .all(|w| if desc { w[0] > w[1] } else { w[0] < w[1] }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DONE: &str = r#"{"mounted": true, "recovery": {"state": "done", "failed_disks": [1],
        "detected_at_ms": 1000030, "first_extent_at_ms": 1000037, "done_at_ms": 1000790,
        "bytes_total": 522190848, "bytes_done": 522190848, "rate_bytes_per_s": 6.8e8,
        "lost_shards": []}}"#;

    #[test]
    fn timings_and_measures_come_from_the_daemon_timestamps() {
        let t = Timings::from_status(&serde_json::from_str(DONE).unwrap()).unwrap();
        assert_eq!(
            (t.detected_at_ms, t.first_extent_at_ms, t.done_at_ms),
            (1000030, Some(1000037), 1000790)
        );
        let m = t.measures(1000001);
        assert_eq!((m.detect_ms, m.activate_ms), (29.0, Some(7.0)));
        assert!((m.full_s - 0.789).abs() < 1e-9);
        // 498 MiB in the 760 ms from detection to done
        assert!((m.rate_mibs.unwrap() - 498.0 / 0.76).abs() < 1e-6);
        assert_eq!(m.bytes_mib, 498.0);
        assert!(t.warnings(1000001, Some(1)).is_empty());
        let w = t.warnings(1000040, Some(2));
        assert!(
            w[0].contains("disk1's id 2") && w[1].contains("before T0"),
            "{w:?}"
        );
    }

    #[test]
    fn a_status_without_timestamps_is_refused_and_no_first_extent_is_none() {
        let st: Value =
            serde_json::from_str(r#"{"recovery": {"state": "done", "detected_at_ms": 5}}"#)
                .unwrap();
        assert!(Timings::from_status(&st).is_err());
        let st: Value = serde_json::from_str(
            r#"{"recovery": {"detected_at_ms": 5, "done_at_ms": 5, "bytes_total": 0, "first_extent_at_ms": null}}"#,
        )
        .unwrap();
        let m = Timings::from_status(&st).unwrap().measures(1);
        assert_eq!((m.activate_ms, m.rate_mibs, m.detect_ms), (None, None, 4.0));
    }

    #[test]
    fn yank_lines_give_unix_ms() {
        assert_eq!(
            yank_ms("yanked /d/disk1 at 1765000000.123456789\n").unwrap(),
            1765000000123
        );
        assert_eq!(yank_ms("note\nyanked /d at 17.5").unwrap(), 17500);
        assert!(yank_ms("killed 12").is_err());
    }

    #[test]
    fn the_foreground_window_counts_reads_between_detection_and_done() {
        let log = read_log("1000, 1, 0, 1048576, 0\n1400, 1, 0, 1048576, 0\n1600,1,0,1048576,0,0\n2100, 1, 0, 524288, 0\n").unwrap();
        let w = window(&log, 1500, 2100, 1450);
        assert_eq!(
            (w.during_bytes, w.pre_bytes, w.pre_ms),
            (1048576 + 524288, 1048576, 450)
        );
        assert_eq!((w.first_ms, w.last_ms), (1000, 2100));
        assert!(read_log("").is_err() && read_log("1, 2").is_err());
        let polls = [
            (1000, 0, 0),
            (1490, 100 << 20, 0),
            (1800, 150 << 20, 5),
            (2200, 300 << 20, 9),
        ];
        let (rate, ms) = daemon_window(&polls, 1500, 2100).unwrap();
        assert_eq!(ms, 710);
        assert!((rate - 200.0 / 0.71).abs() < 1e-9);
        assert_eq!(daemon_window(&polls, 900, 2100), None);
        let tl = timeline(&log, 1450);
        assert_eq!(tl.first().unwrap()[0], -500.0);
        assert_eq!(tl.len(), 5);
        assert_eq!(tl[1], [-250.0, 4.0]);
    }

    #[test]
    fn ordering_needs_strict_order_and_every_value() {
        assert_eq!(
            ordered(&[Some(0.9), Some(0.5), Some(0.2)], true),
            Some(true)
        );
        assert_eq!(ordered(&[Some(0.9), Some(0.9)], true), Some(false));
        assert_eq!(ordered(&[Some(1.0), Some(2.0)], false), Some(true));
        assert_eq!(ordered(&[Some(1.0), None], false), None);
        assert_eq!(ordered(&[Some(1.0)], false), None);
    }
}
