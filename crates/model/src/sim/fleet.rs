//! The simulated fleet's health: real drives' daily risk scores and failures, stitched into
//! one timeline per disk slot.
//!
//! Each slot follows the daily history of a randomly drawn real drive, then of another one,
//! and so on. When the drawn drive failed on its day k (Backblaze's `failure` = 1 on its last
//! row), the simulated disk fails on that day (at a uniform random second) and is replaced by
//! a fresh, empty disk that follows a new draw; a drive whose rows simply end (it left the file
//! or the file ended) hands over to another draw on the same disk. Drawing drives uniformly
//! makes the fleet's failures per disk-day those of the file (renewal-reward), so the fleet is
//! calibrated to the file's failure rate; the scores before each failure are that drive's own.

use std::path::Path;

use anyhow::{ensure, Context};
use rand::rngs::StdRng;
use rand::Rng;

use crate::risk::model::{read, Model};
use crate::risk::shard::HORIZON_DAYS;

pub const DAY_S: f64 = 86_400.0;
const DAYS_PER_YEAR: f64 = 365.25;

/// Daily risk scores of the real drives the fleet is made of.
pub struct Health {
    /// Per drive (sorted by serial): P(fail within 30 days) from its rows up to and including
    /// each row, i.e. known at the end of that day.
    pub scores: Vec<Vec<f32>>,
    /// The drive failed on its last row.
    pub failed: Vec<bool>,
    /// Drives in the file, and whether only the ones the model was not trained on are used.
    pub drives_in_file: usize,
    pub held_out_only: bool,
    /// The file's annualized failure rate over the drives used: failures / drive-years.
    pub file_afr: f64,
    /// P(fail within the horizon) of a drive nothing is known about yet (a fresh disk's first
    /// day): the file's daily failure rate over the horizon.
    pub prior_p: f64,
}

impl Health {
    /// Reads a Backblaze-format file and scores every day of every drive used, once.
    pub fn load(path: &Path, model: &Model, all_drives: bool) -> anyhow::Result<Health> {
        let data = read(path)?;
        ensure!(
            !data.drives.is_empty(),
            "{}: no drive rows (not a Backblaze-format file?)",
            path.display()
        );
        // Sorted: HashMap order would make the fleet depend on the process, not the seed.
        let mut serials: Vec<&String> = data.drives.keys().collect();
        serials.sort();
        let mut scores = Vec::new();
        let mut failed = Vec::new();
        let (mut days, mut failures) = (0u64, 0u64);
        for s in serials {
            if !all_drives && !model.is_test(s) {
                continue;
            }
            let rows = &data.drives[s];
            // A drive is gone after its failure row (Backblaze's rule); ignore anything after.
            let end = rows
                .iter()
                .position(|r| r.failure)
                .map_or(rows.len(), |i| i + 1);
            let model_name = data.models.get(s);
            scores.push(
                (0..end)
                    .map(|i| model.score(&rows[..end], i, model_name).0 as f32)
                    .collect(),
            );
            let f = rows[end - 1].failure;
            failed.push(f);
            days += end as u64;
            failures += u64::from(f);
        }
        ensure!(
            !scores.is_empty(),
            "{}: none of its {} drives was held out from the model's training; \
             use --all-drives to simulate with drives the model has seen",
            path.display(),
            data.drives.len()
        );
        let daily = failures as f64 / days as f64;
        Ok(Health {
            scores,
            failed,
            drives_in_file: data.drives.len(),
            held_out_only: !all_drives,
            file_afr: daily * DAYS_PER_YEAR,
            prior_p: 1.0 - (1.0 - daily).powf(HORIZON_DAYS),
        })
    }

    pub fn drives(&self) -> usize {
        self.scores.len()
    }

    pub fn failing_drives(&self) -> usize {
        self.failed.iter().filter(|f| **f).count()
    }
}

/// A stretch of one slot's timeline that follows one real drive.
#[derive(Clone, Debug)]
pub struct Seg {
    pub drive: u32,
    pub start_day: u32,
    /// The drive's row on `start_day` (the first segment starts inside a drive's history).
    pub first_row: u32,
    pub days: u32,
    /// The disk fails at this time (seconds since the start) at the end of the segment.
    pub fail_s: Option<f64>,
}

/// Every slot's timeline up to `days`: the same for every policy.
pub struct Fleet {
    pub slots: Vec<Vec<Seg>>,
    pub days: u32,
    pub failures: u64,
}

impl Fleet {
    pub fn generate(h: &Health, disks: usize, days: u32, rng: &mut StdRng) -> Fleet {
        let mut slots = Vec::with_capacity(disks);
        let mut failures = 0;
        for _ in 0..disks {
            let mut segs = Vec::new();
            let mut day = 0u32;
            let mut first = true;
            while day < days {
                let drive = rng.random_range(0..h.drives());
                let len = h.scores[drive].len() as u32;
                // The first segment starts anywhere in its drive's history, so the slots do
                // not all begin with a drive's first day (and its prior) at once.
                let first_row = if first { rng.random_range(0..len) } else { 0 };
                first = false;
                let n = len - first_row;
                let fail_s = h.failed[drive]
                    .then(|| f64::from(day + n - 1) * DAY_S + rng.random_range(0.0..DAY_S));
                let fail_s = fail_s.filter(|t| *t < f64::from(days) * DAY_S);
                failures += u64::from(fail_s.is_some());
                segs.push(Seg {
                    drive: drive as u32,
                    start_day: day,
                    first_row,
                    days: n,
                    fail_s,
                });
                day += n;
            }
            slots.push(segs);
        }
        Fleet {
            slots,
            days,
            failures,
        }
    }

    /// Failures per disk-year of the generated fleet.
    pub fn afr(&self) -> f64 {
        self.failures as f64 / (self.slots.len() as f64 * f64::from(self.days) / DAYS_PER_YEAR)
    }
}

pub fn days_for_years(years: f64) -> u32 {
    (years * DAYS_PER_YEAR).round().max(1.0) as u32
}

/// P(fail within the horizon) of the segment's drive as known on `day` (from its rows up to
/// the day before: a day's SMART snapshot is only known once the day is over); None on the
/// drive's first day, when nothing is known of it yet (placement then uses `prior_p`, and
/// nothing is evacuated on no evidence).
pub fn score_on(h: &Health, seg: &Seg, day: u32) -> Option<f64> {
    let row = seg.first_row + (day - seg.start_day);
    (row > 0).then(|| f64::from(h.scores[seg.drive as usize][row as usize - 1]))
}

/// The model for `--model`: the file given, or the one shipped in `fixtures/` (built in, so
/// the command works from any directory).
pub fn load_model(path: Option<&Path>) -> anyhow::Result<Model> {
    const SHIPPED: &str = include_str!("../../../../fixtures/risk-model.txt");
    match path {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("--model {}", p.display()))?;
            Model::from_text(&text).with_context(|| format!("{}: not a usable model", p.display()))
        }
        None => Model::from_text(SHIPPED).context("the shipped model fixtures/risk-model.txt"),
    }
}
