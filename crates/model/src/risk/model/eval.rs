//! Per-drive evaluation on held-out drives: AUC, recall at fixed false-alarm rates, the
//! SMART-counter rule for comparison, calibration bands.

use super::*;

/// Per-drive evaluation on the held-out drives.
#[derive(Clone, Debug, Serialize)]
pub struct Eval {
    pub drives: usize,
    pub failed: usize,
    pub auc: f64,
    pub recall_at_1pct: f64,
    pub recall_at_0_1pct: f64,
    pub precision_at_1pct: f64,
    pub median_days_alarm_to_failure_at_1pct: Option<f64>,
    /// The rule "any of 5/187/188/197/198 above zero" on the same drives.
    pub rule_recall: f64,
    pub rule_false_alarm_rate: f64,
    /// The model's recall at the rule's false-alarm rate.
    pub model_recall_at_rule_rate: f64,
    /// The p above which 1% (0.5%) of the healthy held-out drives score at some point: the
    /// alarm thresholds for those false-alarm rates.
    pub p_at_1pct: f64,
    pub p_at_0_5pct: f64,
    /// Calibration on the held-out rows scored (each a day of a held-out drive) whose next 30
    /// days are in the data: per band of p, how many rows, their mean p, and the share whose
    /// drive failed within 30 days.
    pub calibration: Vec<CalibrationBand>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CalibrationBand {
    pub p_from: f64,
    pub p_to: f64,
    pub rows: usize,
    pub mean_p: f64,
    pub failed_within_30d: f64,
}

const CALIBRATION_BANDS: [f64; 7] = [0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 1.0];

/// A held-out drive's scores: every day before its failure (all days for a healthy drive),
/// and whether the rule fired on one of them.
struct DriveScores {
    failed: bool,
    fail_day: i64,
    /// (day, p)
    scores: Vec<(i64, f64)>,
    rule: bool,
}

impl DriveScores {
    fn max(&self) -> f64 {
        self.scores.iter().map(|x| x.1).fold(0.0, f64::max)
    }
}

/// Per calibration band: rows, sum of p, rows whose drive failed within the horizon.
type Bands = Vec<(usize, f64, f64)>;

pub fn evaluate(model: &Model, data: &Data) -> anyhow::Result<Eval> {
    let mut ds = Vec::new();
    let mut bands: Bands = vec![(0usize, 0.0, 0.0); CALIBRATION_BANDS.len() - 1];
    let data_end = data
        .drives
        .values()
        .filter_map(|r| r.last())
        .map(|r| r.day)
        .max()
        .unwrap_or(0);
    for (s, rows) in &data.drives {
        if !model.is_test(s) {
            continue;
        }
        if let Some(d) = score_drive(model, rows, data.models.get(s), data_end, &mut bands) {
            ds.push(d);
        }
    }
    summarize(&ds, &bands)
}

/// Scores a held-out drive's days (only those after the training days, when the model was
/// trained on earlier days) and adds the rows whose outcome is known to the calibration
/// bands. None: no day scored.
fn score_drive(
    model: &Model,
    rows: &[Row],
    drive_model: Option<&String>,
    data_end: i64,
    bands: &mut Bands,
) -> Option<DriveScores> {
    let last_day = rows.last().map_or(0, |r| r.day);
    let fail_day = rows.iter().find(|r| r.failure).map(|r| r.day);
    let mut scores = Vec::new();
    let mut rule_hit = false;
    for i in 0..rows.len() {
        if fail_day.is_some_and(|f| rows[i].day >= f) {
            break;
        }
        if model.train_before_day.is_some_and(|t| rows[i].day < t) {
            // Only days the model never saw, when it was trained on earlier days.
            continue;
        }
        let p = model.score(rows, i, drive_model).0;
        scores.push((rows[i].day, p));
        // Calibration: only rows whose next 30 days are all in the data (or whose drive
        // failed), as the others' outcome is not known.
        let ahead = rows[i].day + HORIZON_DAYS;
        if ahead <= data_end && (fail_day.is_some() || ahead <= last_day) {
            let b = CALIBRATION_BANDS[1..].partition_point(|e| *e <= p);
            let band = &mut bands[b.min(CALIBRATION_BANDS.len() - 2)];
            band.0 += 1;
            band.1 += p;
            band.2 += f64::from(u8::from(fail_day.is_some_and(|f| f <= ahead)));
        }
        rule_hit |= rule(&rows[i]);
    }
    (!scores.is_empty()).then(|| DriveScores {
        failed: fail_day.is_some(),
        fail_day: fail_day.unwrap_or(i64::MAX),
        scores,
        rule: rule_hit,
    })
}

/// AUC: P(score of a failing drive > a healthy one), ties half (`neg` sorted).
fn auc(pos: &[f64], neg: &[f64]) -> f64 {
    let mut auc = 0.0;
    for p in pos {
        let below = neg.partition_point(|x| x < p);
        let ties = neg.partition_point(|x| x <= p) - below;
        auc += (below as f64 + ties as f64 / 2.0) / neg.len() as f64;
    }
    auc / pos.len() as f64
}

/// Days from each failing drive's first score above `t` to its failure, sorted.
fn lead_days(ds: &[DriveScores], t: f64) -> Vec<f64> {
    let mut lead: Vec<f64> = ds
        .iter()
        .filter(|d| d.failed)
        .filter_map(|d| {
            d.scores
                .iter()
                .find(|(_, s)| *s > t)
                .map(|(day, _)| (d.fail_day - day) as f64)
        })
        .collect();
    lead.sort_by(f64::total_cmp);
    lead
}

/// The bands as reported: per band of p, its mean p and the share that failed.
fn calibration(bands: &Bands) -> Vec<CalibrationBand> {
    bands
        .iter()
        .enumerate()
        .map(|(k, (n, p, f))| CalibrationBand {
            p_from: CALIBRATION_BANDS[k],
            p_to: CALIBRATION_BANDS[k + 1],
            rows: *n,
            mean_p: p / (*n).max(1) as f64,
            failed_within_30d: f / (*n).max(1) as f64,
        })
        .collect()
}

/// The per-drive figures, from each drive's highest score.
fn summarize(ds: &[DriveScores], bands: &Bands) -> anyhow::Result<Eval> {
    let mut neg: Vec<f64> = ds
        .iter()
        .filter(|d| !d.failed)
        .map(DriveScores::max)
        .collect();
    let pos: Vec<f64> = ds
        .iter()
        .filter(|d| d.failed)
        .map(DriveScores::max)
        .collect();
    anyhow::ensure!(
        !neg.is_empty() && !pos.is_empty(),
        "the held-out drives need failing and healthy ones"
    );
    neg.sort_by(f64::total_cmp);
    // Threshold at a false-alarm rate: the score above which that share of healthy drives lie.
    let thr = |rate: f64| -> f64 {
        let k = ((neg.len() as f64) * (1.0 - rate)).ceil() as usize;
        neg[k.min(neg.len() - 1)]
    };
    let recall = |t: f64| pos.iter().filter(|p| **p > t).count() as f64 / pos.len() as f64;
    let t1 = thr(0.01);
    let caught = pos.iter().filter(|p| **p > t1).count() as f64;
    let false_alarms = neg.iter().filter(|n| **n > t1).count() as f64;
    let lead = lead_days(ds, t1);
    let healthy = ds.iter().filter(|d| !d.failed).count() as f64;
    let rule_fp = ds.iter().filter(|d| !d.failed && d.rule).count() as f64 / healthy;
    Ok(Eval {
        drives: ds.len(),
        failed: pos.len(),
        auc: auc(&pos, &neg),
        recall_at_1pct: recall(t1),
        recall_at_0_1pct: recall(thr(0.001)),
        precision_at_1pct: caught / (caught + false_alarms).max(1.0),
        median_days_alarm_to_failure_at_1pct: (!lead.is_empty()).then(|| lead[lead.len() / 2]),
        rule_recall: ds.iter().filter(|d| d.failed && d.rule).count() as f64 / pos.len() as f64,
        rule_false_alarm_rate: rule_fp,
        model_recall_at_rule_rate: recall(thr(rule_fp)),
        p_at_1pct: t1,
        p_at_0_5pct: thr(0.005),
        calibration: calibration(bands),
    })
}
