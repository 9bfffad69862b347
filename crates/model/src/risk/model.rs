//! The failure model: P(the drive fails within 30 days) from features of its SMART history up
//! to that day (never later rows), trained on Backblaze-format daily records (data: Backblaze
//! Hard Drive Data and Stats). Columns are found by header name, so files with few attributes
//! (2013: 1, 5, 9, 194, 197) and many work alike.
//!
//! The learner is gradient boosting of depth-1 trees (`trees.rs`), i.e. an additive model: a
//! step function per feature, monotone in the error counters (more reallocated / pending /
//! uncorrectable sectors never lower the score). Every training drive weighs the same however
//! many days it was seen (long-lived healthy drives do not dominate). Scores are calibrated
//! (Platt scaling on out-of-fold scores of the training drives, using only rows whose next 30
//! days are in the data) so that p is a real probability of failing within 30 days. There are
//! four ensembles (`Kind`): with or without a few days of history, and with or without a drive
//! model the training data knows, so that a disk seen for the first time or of a new model is
//! scored on what it shows. Model files of version 1 (logistic regression) are still read.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{bail, Context};
use serde::Serialize;

pub mod trees;
use trees::Tree;

/// Days ahead a score predicts.
pub const HORIZON_DAYS: i64 = 30;
/// The growth features compare with the drive's row this many days earlier (or its first
/// row, if later).
const GROWTH_DAYS: i64 = 7;
/// Rows with this many days of history before them are scored with the growth features;
/// others (a disk seen for the first time) without.
const HISTORY_DAYS: i64 = 3;
/// SMART attributes the model reads (raw values), when the file has them.
pub const ATTRS: [u32; 8] = [1, 5, 9, 187, 188, 194, 197, 198];
/// The "any of these above zero" rule's attributes.
const RULE_ATTRS: [u32; 5] = [5, 187, 188, 197, 198];
/// Sector-error counters other than reallocations, pooled into one feature: pending (197),
/// uncorrectable (198), reported uncorrectable (187), command time-outs (188). Only 197 is in
/// the 2013 data; pooling lets newer files and foreshard's own signals (mapped onto 197/188)
/// use what was learnt from it.
const ERROR_ATTRS: [u32; 4] = [197, 198, 187, 188];

pub const FEATURES: [&str; 10] = [
    "log_reallocated_5",
    "log_pending_errors",
    "log_max_pending_errors",
    "growth_5_7d",
    "growth_errors_7d",
    "power_on_years",
    "age_vs_model_log",
    "model_failure_rate_log",
    "rarity_5_in_model",
    "rarity_errors_in_model",
];
/// Features the score never decreases in (error counters and their growth, the drive
/// model's failure rate).
const MONOTONE: [i8; FEATURES.len()] = [1, 1, 1, 1, 1, 0, 0, 1, 1, 1];
/// The features that need some history, and those left out for a drive model the
/// training data does not know (power-on years too: in the training data it mostly stands
/// for the drive model, as each model's drives are of an age).
const GROWTH_FEATURES: [usize; 2] = [3, 4];
const DRIVE_MODEL_FEATURES: [usize; 5] = [5, 6, 7, 8, 9];
/// The model is four ensembles, by what a row's drive offers (`Kind::index`).
const KINDS: usize = 4;

/// What a row offers: `HISTORY_DAYS` of history (else the growth features are left out) and a drive
/// model the training data knows (else the drive-model features are left out). Each kind
/// has its own ensemble, trained on all training rows seen that way, so that a disk seen for
/// the first time, or of a model never seen in training, is scored on what it shows rather
/// than as if its counters had been steady or its model average.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Kind {
    pub history: bool,
    pub known_model: bool,
}

impl Kind {
    fn index(self) -> usize {
        usize::from(!self.history) + 2 * usize::from(!self.known_model)
    }

    fn of(index: usize) -> Kind {
        Kind {
            history: index & 1 == 0,
            known_model: index & 2 == 0,
        }
    }
}
/// The rarity features look counters up at 1, 2, 4, ... 65536: reallocated sectors (5) and
/// pooled errors (highest so far).
const TAILS: usize = 2;
const TAIL_GRID: usize = 17;
/// Drives of prior weight when a drive model's failure rate is estimated from few drives.
const MODEL_PRIOR_DRIVES: f64 = 50.0;
/// Folds of the training drives for the out-of-fold scores calibration is fitted on.
const CALIBRATION_FOLDS: u64 = 4;

pub use data::{parse_day, read, Data, Row};

fn attr(r: &Row, a: u32) -> f64 {
    known(r, a).unwrap_or(0.0)
}

/// A raw value the row has (and is a usable count).
fn known(r: &Row, a: u32) -> Option<f64> {
    let i = ATTRS.iter().position(|x| *x == a).expect("known attribute");
    r.smart[i].filter(|v| v.is_finite()).map(|v| v.max(0.0))
}

/// Pooled sector errors other than reallocations.
fn errors(r: &Row) -> f64 {
    ERROR_ATTRS.iter().map(|a| attr(r, *a)).sum()
}

/// Attribute 194's raw value can be packed (min/max in the upper bytes): keep the low byte.
fn temperature(r: &Row) -> Option<f64> {
    known(r, 194).map(|t| {
        if t > 255.0 {
            (t as u64 & 0xff) as f64
        } else {
            t
        }
    })
}

/// What the features know of a drive model, from the training drives.
#[derive(Clone, Debug, Serialize)]
pub struct DriveModel {
    pub name: String,
    /// ln(its failure rate / the fleet's), smoothed toward the fleet's.
    pub rate_log: f64,
    /// Median power-on hours of its drives.
    pub median_hours: f64,
    /// Per counter of `tail_values`: ln P(a drive of this model has at least 2^k of it), k <
    /// `TAIL_GRID` (smoothed toward the fleet's).
    pub tails: Vec<Vec<f64>>,
}

/// The counters the rarity features look up, as of the last of `history`.
fn tail_values(history: &[Row]) -> [f64; TAILS] {
    let last = &history[history.len() - 1];
    [
        attr(last, 5),
        history.iter().map(errors).fold(0.0, f64::max),
    ]
}

/// How rare a counter value is among drives of a model: -ln P(at least this much).
fn rarity(tail: &[f64], v: f64) -> f64 {
    if v < 1.0 || tail.is_empty() {
        return 0.0;
    }
    -tail[(v.log2().floor() as usize).min(tail.len() - 1)]
}

/// Features of `rows[i]` from rows[..=i] only, for a drive of model `dm`. NaN: unknown (the
/// model substitutes its training median).
pub fn features(rows: &[Row], i: usize, dm: &DriveModel) -> [f64; FEATURES.len()] {
    let r = &rows[i];
    let history = &rows[..=i];
    let earlier = rows[..i]
        .iter()
        .rev()
        .find(|p| r.day - p.day >= GROWTH_DAYS)
        .or(rows[..i].first());
    let growth = |f: fn(&Row) -> f64| earlier.map_or(0.0, |p| (f(r) - f(p)).max(0.0));
    let realloc = |q: &Row| attr(q, 5);
    let l = |x: f64| x.max(0.0).ln_1p();
    let max_errors = history.iter().map(errors).fold(0.0, f64::max);
    let hours = known(r, 9);
    let tv = tail_values(history);
    [
        l(realloc(r)),
        l(errors(r)),
        l(max_errors),
        l(growth(realloc)),
        l(growth(errors)),
        hours.map_or(f64::NAN, |h| h / 8766.0),
        hours.map_or(f64::NAN, |h| ((1.0 + h) / (1.0 + dm.median_hours)).ln()),
        dm.rate_log,
        rarity(&dm.tails[0], tv[0]),
        rarity(&dm.tails[1], tv[1]),
    ]
}

/// A row's features as the ensemble of `kind` sees them.
fn view(x: &[f64], kind: Kind) -> Vec<f64> {
    let mut x = x.to_vec();
    if !kind.history {
        for f in GROWTH_FEATURES {
            x[f] = 0.0;
        }
    }
    if !kind.known_model {
        for f in DRIVE_MODEL_FEATURES {
            x[f] = 0.0;
        }
    }
    x
}

/// Whether `rows[i]` has `HISTORY_DAYS` of history before it (growth features), or not (for
/// short histories: a disk seen for the first time must be scored on what it shows).
pub fn has_history(rows: &[Row], i: usize) -> bool {
    rows[..i]
        .iter()
        .any(|p| rows[i].day - p.day >= HISTORY_DAYS)
}

/// The rule: any of 5/187/188/197/198 above zero.
pub fn rule(r: &Row) -> bool {
    RULE_ATTRS.iter().any(|a| attr(r, *a) > 0.0)
}

/// The first model's logistic regression (files of version 1), kept so that such files
/// still load.
#[derive(Clone, Debug, Serialize)]
pub struct Logistic {
    pub weights: Vec<f64>,
    pub intercept: f64,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

const FEATURES_V1: [&str; 13] = [
    "log_reallocated_5",
    "log_pending_197",
    "log_uncorrectable_198",
    "log_reported_uncorrect_187",
    "log_command_timeout_188",
    "any_error_counter",
    "growth_5_7d",
    "growth_197_7d",
    "growth_187_198_7d",
    "power_on_years",
    "temperature_over_40c",
    "days_observed_log",
    "model_failure_rate_log",
];

fn features_v1(rows: &[Row], i: usize, model_rate: f64) -> [f64; FEATURES_V1.len()] {
    let r = &rows[i];
    let earlier = rows[..i]
        .iter()
        .rev()
        .find(|p| r.day - p.day >= GROWTH_DAYS)
        .or(rows.first());
    let growth = |a: u32| earlier.map_or(0.0, |p| (attr(r, a) - attr(p, a)).max(0.0));
    let l = |x: f64| (1.0 + x).ln();
    let temp = temperature(r).unwrap_or(0.0);
    [
        l(attr(r, 5)),
        l(attr(r, 197)),
        l(attr(r, 198)),
        l(attr(r, 187)),
        l(attr(r, 188)),
        f64::from(u8::from(rule(r))),
        l(growth(5)),
        l(growth(197)),
        l(growth(187) + growth(198)),
        attr(r, 9) / 8766.0,
        (temp - 40.0).max(0.0) / 10.0,
        l((r.day - rows[0].day) as f64),
        model_rate,
    ]
}

/// Boosted trees and their calibration: p = sigmoid(a * (base + sum of trees) + b).
#[derive(Clone, Debug, Serialize)]
pub struct Ensemble {
    pub base: f64,
    pub trees: Vec<Tree>,
    pub calibration: (f64, f64),
}

impl Ensemble {
    fn empty() -> Ensemble {
        Ensemble {
            base: 0.0,
            trees: Vec::new(),
            calibration: (1.0, 0.0),
        }
    }

    /// The log-odds before calibration and each feature's share of them.
    fn raw(&self, x: &[f64]) -> (f64, Vec<f64>) {
        let mut contrib = vec![0.0; x.len()];
        let mut z = self.base;
        for t in &self.trees {
            z += t.explain(x, &mut contrib).0;
        }
        z += contrib.iter().sum::<f64>();
        (z, contrib)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Model {
    /// File format: 2 (boosted trees), or 1 (logistic regression, from older files).
    pub version: u32,
    /// By `Kind::index` (version 2 files; empty for version 1).
    pub ensembles: Vec<Ensemble>,
    /// Per feature, the value a row without it gets (the training rows' median).
    pub impute: Vec<f64>,
    /// Version 1 files only.
    pub logistic: Option<Logistic>,
    /// Drives with `split_hash(serial) < test_fraction` were held out for evaluation.
    pub test_fraction: f64,
    pub seed: u64,
    /// Training rows were before this day (None: all days).
    pub train_before_day: Option<i64>,
    pub trained_on: String,
    /// Per drive model (by name, sorted), from the training drives.
    pub drive_models: Vec<DriveModel>,
    /// The whole fleet (for drives of unknown model).
    pub fleet: DriveModel,
}

/// Which side of the train/test split a drive is on: a stable hash of its serial.
pub fn split_hash(serial: &str, seed: u64) -> f64 {
    let h = blake3::hash(format!("{seed}:{serial}").as_bytes());
    let v = u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"));
    (v >> 11) as f64 / (1u64 << 53) as f64
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

fn median(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    (!v.is_empty()).then(|| v[v.len() / 2])
}

/// The learner's settings. Depth-1 trees make the model additive (a sum of one step function
/// per feature), which generalised better than deeper trees with ~50 failing training drives;
/// chosen on splits other than the ones the README reports.
fn params() -> trees::Params {
    trees::Params {
        rounds: 400,
        depth: 1,
        eta: 0.05,
        lambda: 1.0,
        min_child_hess: 0.0,
        // A step needs 0.2% of the drives (each drive's rows weigh 1 in all) on each side.
        min_child_share: 0.002,
        min_gain: 0.0,
        bins: 32,
        monotone: MONOTONE.to_vec(),
    }
}

/// Failing drives' rows are up-weighted to this share of the healthy ones' weight, so that
/// the trees see them; calibration maps the scores back to real probabilities.
const POSITIVE_SHARE: f64 = 0.1;

/// Platt scaling: (a, b) minimising the weighted log loss of sigmoid(a z + b) on (z, y, w),
/// a > 0 (kept near 1 by a light penalty).
fn platt(z: &[f64], y: &[f64], w: &[f64]) -> (f64, f64) {
    let (mut a, mut b) = (1.0, 0.0);
    let loss = |a: f64, b: f64| -> f64 {
        z.iter()
            .zip(y)
            .zip(w)
            .map(|((z, y), w)| {
                let t = a * z + b;
                w * (t.max(0.0) + (-t.abs()).exp().ln_1p() - y * t)
            })
            .sum::<f64>()
            + 1e-3 * (a - 1.0).powi(2)
    };
    for _ in 0..50 {
        let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (2e-3 * (a - 1.0), 0.0, 2e-3, 0.0, 0.0);
        for ((z, y), w) in z.iter().zip(y).zip(w) {
            let p = sigmoid(a * z + b);
            let r = w * p * (1.0 - p);
            ga += w * (p - y) * z;
            gb += w * (p - y);
            haa += r * z * z;
            hab += r * z;
            hbb += r;
        }
        let det = haa * hbb - hab * hab;
        if det.abs() < 1e-12 {
            break;
        }
        let (da, db) = ((hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det);
        let before = loss(a, b);
        let mut t = 1.0;
        while t > 1e-6 && loss(a - t * da, b - t * db) > before {
            t /= 2.0;
        }
        let (na, nb) = (a - t * da, b - t * db);
        let done = (na - a).abs() + (nb - b).abs() < 1e-9;
        a = na.max(0.05);
        b = nb;
        if done {
            break;
        }
    }
    (a, b)
}

impl Model {
    pub fn is_test(&self, serial: &str) -> bool {
        split_hash(serial, self.seed) < self.test_fraction
    }

    /// What the model knows of a drive model (the fleet's average for an unknown one).
    pub fn drive_model(&self, model: Option<&String>) -> DriveModel {
        model
            .and_then(|m| self.drive_models.iter().find(|d| &d.name == m))
            .unwrap_or(&self.fleet)
            .clone()
    }

    fn row(&self, rows: &[Row], i: usize, model: Option<&String>) -> [f64; FEATURES.len()] {
        let mut x = features(rows, i, &self.drive_model(model));
        for (v, m) in x.iter_mut().zip(&self.impute) {
            if v.is_nan() {
                *v = *m;
            }
        }
        x
    }

    /// P(fail within `HORIZON_DAYS`) for `rows[i]` of a drive of `model` (from rows[..=i]
    /// only), and each feature's contribution to its log-odds (positive: raises the risk).
    pub fn score(
        &self,
        rows: &[Row],
        i: usize,
        model: Option<&String>,
    ) -> (f64, Vec<(&'static str, f64)>) {
        if let Some(lr) = &self.logistic {
            let x = features_v1(rows, i, self.drive_model(model).rate_log);
            let mut z = lr.intercept;
            let mut parts = Vec::with_capacity(x.len());
            for (k, v) in x.iter().enumerate() {
                let c = lr.weights[k] * (v - lr.mean[k]) / lr.std[k];
                z += c;
                parts.push((FEATURES_V1[k], c));
            }
            return (sigmoid(z), parts);
        }
        let kind = Kind {
            history: has_history(rows, i),
            known_model: model.is_some_and(|m| self.drive_models.iter().any(|d| &d.name == m)),
        };
        let e = &self.ensembles[kind.index()];
        let (z, contrib) = e.raw(&view(&self.row(rows, i, model), kind));
        let (a, b) = e.calibration;
        let parts = FEATURES
            .iter()
            .zip(&contrib)
            .map(|(n, c)| (*n, a * c))
            .collect();
        (sigmoid(a * z + b), parts)
    }
}

pub use eval::{evaluate, CalibrationBand, Eval};

// Reading Backblaze-format files, the held-out evaluation, the text form and training live
// in child modules (they use the model's private helpers).
mod data;
mod eval;
mod text;
mod train;

#[cfg(test)]
mod tests;
