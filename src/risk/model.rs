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

#[path = "trees.rs"]
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

/// One day of one drive.
#[derive(Clone, Debug)]
pub struct Row {
    pub day: i64,
    pub date: String,
    pub failure: bool,
    /// Raw values of `ATTRS` (None: not in the file or empty).
    pub smart: [Option<f64>; ATTRS.len()],
}

/// A drive's days, in date order, as read (file order kept for scoring output).
pub struct Data {
    pub drives: HashMap<String, Vec<Row>>,
    /// Drive model (e.g. "Hitachi HDS5C3030ALA630") per serial, when the file has it.
    pub models: HashMap<String, String>,
    /// (serial, index into its rows) in file order.
    pub order: Vec<(String, usize)>,
    pub columns_found: Vec<u32>,
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    // Howard Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 of a YYYY-MM-DD date.
pub fn parse_day(s: &str) -> Option<i64> {
    let mut it = s.trim().split('-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let d: i64 = it.next()?.parse().ok()?;
    ((1..=12).contains(&m) && (1..=31).contains(&d) && it.next().is_none())
        .then(|| days_from_civil(y, m, d))
}

/// Reads a Backblaze-format CSV (plain or gzip).
pub fn read(path: &Path) -> anyhow::Result<Data> {
    let f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut r = BufReader::new(f);
    let gz = r.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let input: Box<dyn Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(r))
    } else {
        Box::new(r)
    };
    let mut lines = BufReader::new(input).lines();
    let header = lines
        .next()
        .context("empty file")?
        .with_context(|| format!("{}: line 1", path.display()))?;
    let cols: Vec<&str> = header.trim().split(',').collect();
    let find = |name: &str| cols.iter().position(|c| c.trim() == name);
    let (Some(c_date), Some(c_serial), Some(c_fail)) =
        (find("date"), find("serial_number"), find("failure"))
    else {
        bail!(
            "{}: header needs date, serial_number and failure columns",
            path.display()
        );
    };
    let c_attr: Vec<Option<usize>> = ATTRS
        .iter()
        .map(|a| find(&format!("smart_{a}_raw")))
        .collect();
    let c_model = find("model");
    let mut data = Data {
        drives: HashMap::new(),
        models: HashMap::new(),
        order: Vec::new(),
        columns_found: ATTRS
            .iter()
            .zip(&c_attr)
            .filter(|(_, c)| c.is_some())
            .map(|(a, _)| *a)
            .collect(),
    };
    for (n, line) in lines.enumerate() {
        let lno = n + 2;
        let line = line.with_context(|| format!("{}: line {lno}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let get = |c: usize| f.get(c).map(|s| s.trim()).unwrap_or("");
        let day = parse_day(get(c_date)).with_context(|| {
            format!("{}: line {lno}: bad date {:?}", path.display(), get(c_date))
        })?;
        let failure = match get(c_fail) {
            "1" => true,
            "0" | "" => false,
            x => bail!("{}: line {lno}: bad failure value {x:?}", path.display()),
        };
        let mut smart = [None; ATTRS.len()];
        for (i, c) in c_attr.iter().enumerate() {
            if let Some(c) = c {
                let v = get(*c);
                if !v.is_empty() {
                    smart[i] = Some(v.parse::<f64>().with_context(|| {
                        format!(
                            "{}: line {lno}: bad smart_{}_raw {v:?}",
                            path.display(),
                            ATTRS[i]
                        )
                    })?);
                }
            }
        }
        let serial = get(c_serial).to_string();
        if serial.is_empty() {
            bail!("{}: line {lno}: empty serial_number", path.display());
        }
        if let Some(c) = c_model {
            if !data.models.contains_key(&serial) {
                data.models.insert(serial.clone(), get(c).to_string());
            }
        }
        let rows = data.drives.entry(serial.clone()).or_default();
        rows.push(Row {
            day,
            date: get(c_date).to_string(),
            failure,
            smart,
        });
        data.order.push((serial, rows.len() - 1));
    }
    // Rows in date order per drive; `order` keeps pointing at the same rows.
    for (serial, rows) in data.drives.iter_mut() {
        if rows.windows(2).any(|w| w[0].day > w[1].day) {
            let mut idx: Vec<usize> = (0..rows.len()).collect();
            idx.sort_by_key(|i| rows[*i].day);
            let mut new_pos = vec![0; rows.len()];
            for (p, i) in idx.iter().enumerate() {
                new_pos[*i] = p;
            }
            let sorted: Vec<Row> = idx.iter().map(|i| rows[*i].clone()).collect();
            *rows = sorted;
            for o in data.order.iter_mut().filter(|o| &o.0 == serial) {
                o.1 = new_pos[o.1];
            }
        }
    }
    Ok(data)
}

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

    /// Fits on the training drives (and days): boosted trees on every drive's daily rows,
    /// each drive weighing the same, then Platt scaling on out-of-fold scores.
    pub fn train(
        data: &Data,
        test_fraction: f64,
        seed: u64,
        train_before_day: Option<i64>,
        name: &str,
    ) -> anyhow::Result<Model> {
        let mut serials: Vec<&String> = data.drives.keys().collect();
        serials.sort();
        serials.retain(|s| split_hash(s, seed) >= test_fraction);
        let seen = |r: &Row| train_before_day.is_none_or(|t| r.day < t);
        // Per drive model, over the training drives (and days): drives, failures, and each
        // drive's last power-on hours, reallocated sectors and highest pooled errors.
        #[derive(Default)]
        struct Acc {
            drives: f64,
            failed: f64,
            hours: Vec<f64>,
            at_least: [[f64; TAIL_GRID]; TAILS],
        }
        impl Acc {
            fn add(&mut self, o: &Acc) {
                self.drives += o.drives;
                self.failed += o.failed;
                self.hours.extend(&o.hours);
                for c in 0..TAILS {
                    for k in 0..TAIL_GRID {
                        self.at_least[c][k] += o.at_least[c][k];
                    }
                }
            }
        }
        let mut per_model: HashMap<&str, Acc> = HashMap::new();
        for s in &serials {
            let m = data.models.get(*s).map_or("", |m| m.as_str());
            let rows: Vec<&Row> = data.drives[*s].iter().filter(|r| seen(r)).collect();
            let Some(last) = rows.last() else { continue };
            let e = per_model.entry(m).or_default();
            e.drives += 1.0;
            e.failed += f64::from(u8::from(rows.iter().any(|r| r.failure)));
            e.hours.extend(known(last, 9));
            let history: Vec<Row> = rows.iter().map(|r| (*r).clone()).collect();
            for (c, v) in tail_values(&history).iter().enumerate() {
                for k in 0..TAIL_GRID {
                    e.at_least[c][k] += f64::from(u8::from(*v >= (1u64 << k) as f64));
                }
            }
        }
        let mut all = Acc::default();
        let mut names: Vec<&str> = per_model.keys().copied().collect();
        names.sort();
        for m in &names {
            all.add(&per_model[m]);
        }
        let fleet_rate = (all.failed + 1.0) / (all.drives + 2.0);
        let round = |x: f64| (x * 1e4).round() / 1e4;
        let fleet_tails: Vec<Vec<f64>> = all
            .at_least
            .iter()
            .map(|c| {
                c.iter()
                    .map(|c| ((c + 0.5) / (all.drives + 1.0)).ln())
                    .collect()
            })
            .collect();
        let fleet = DriveModel {
            name: String::new(),
            rate_log: 0.0,
            median_hours: median(&mut all.hours.clone()).unwrap_or(0.0),
            tails: fleet_tails
                .iter()
                .map(|t| t.iter().map(|v| round(*v)).collect())
                .collect(),
        };
        let k = MODEL_PRIOR_DRIVES;
        let drive_models: Vec<DriveModel> = names
            .iter()
            .filter(|m| !m.is_empty())
            .map(|m| {
                let a = per_model.get_mut(m).expect("listed");
                let rate = (a.failed + k * fleet_rate) / (a.drives + k);
                let tails = a
                    .at_least
                    .iter()
                    .zip(&fleet_tails)
                    .map(|(c, f)| {
                        c.iter()
                            .zip(f)
                            .map(|(c, f)| round(((c + k * f.exp()) / (a.drives + k)).ln()))
                            .collect()
                    })
                    .collect();
                DriveModel {
                    name: m.to_string(),
                    rate_log: round((rate / fleet_rate).ln()),
                    median_hours: median(&mut a.hours).unwrap_or(fleet.median_hours),
                    tails,
                }
            })
            .collect();
        let mut model = Model {
            version: 2,
            ensembles: Vec::new(),
            impute: vec![0.0; FEATURES.len()],
            logistic: None,
            test_fraction,
            seed,
            train_before_day,
            trained_on: name.to_string(),
            drive_models,
            fleet,
        };
        // One sample per training row.
        struct Sample {
            x: Vec<f64>,
            y: f64,
            /// The row has `HISTORY_DAYS` of history (growth features used).
            history: bool,
            /// For calibration: 1, or for a healthy row whose next 30 days are not all in the
            /// data (the drive's rows end sooner), the share that is. Such a row says "no
            /// failure in that many days", which for a small p is worth that share of a row
            /// saying "no failure in 30 days".
            exposure: f64,
            drive: usize,
            fold: u64,
        }
        let mut samples: Vec<Sample> = Vec::new();
        for (drive, s) in serials.iter().enumerate() {
            let rows = &data.drives[*s];
            let mut dm = model.drive_model(data.models.get(*s));
            // The drive model's failure rate without this drive (its own outcome must not
            // leak into its features).
            if let Some(a) = data.models.get(*s).and_then(|m| per_model.get(m.as_str())) {
                let failed = f64::from(u8::from(rows.iter().any(|r| r.failure && seen(r))));
                let rate = (a.failed - failed + k * fleet_rate) / (a.drives - 1.0 + k);
                dm.rate_log = (rate / fleet_rate).ln();
            }
            let fail_day = rows.iter().find(|r| r.failure).map(|r| r.day);
            let last_day = rows.last().map_or(0, |r| r.day);
            let fold = (split_hash(s, seed.wrapping_add(0x5eed)) * CALIBRATION_FOLDS as f64) as u64;
            for (i, r) in rows.iter().enumerate().take_while(|(_, r)| seen(r)) {
                let ahead = r.day + HORIZON_DAYS;
                samples.push(Sample {
                    x: features(rows, i, &dm).to_vec(),
                    y: f64::from(u8::from(fail_day.is_some_and(|f| f <= ahead))),
                    history: has_history(rows, i),
                    exposure: if fail_day.is_some() {
                        1.0
                    } else {
                        ((last_day - r.day) as f64 / HORIZON_DAYS as f64).clamp(0.0, 1.0)
                    },
                    drive,
                    fold,
                });
            }
        }
        anyhow::ensure!(!samples.is_empty(), "no training rows");
        anyhow::ensure!(
            samples.iter().any(|s| s.y > 0.0),
            "no failing drive in the training rows"
        );
        for f in 0..FEATURES.len() {
            let mut v: Vec<f64> = samples
                .iter()
                .map(|s| s.x[f])
                .filter(|v| !v.is_nan())
                .collect();
            let m = median(&mut v).unwrap_or(0.0);
            model.impute[f] = m;
            for s in samples.iter_mut() {
                if s.x[f].is_nan() {
                    s.x[f] = m;
                }
            }
        }
        // The design of one of the two models on the samples `pick` keeps: the short model
        // goes without the growth features; every drive's rows weigh 1 in all; failing rows
        // are up-weighted to `POSITIVE_SHARE` of the healthy ones' weight.
        let design = |kind: Kind, pick: &dyn Fn(&Sample) -> bool| {
            let keep: Vec<&Sample> = samples
                .iter()
                .filter(|s| (s.history || !kind.history) && pick(s))
                .collect();
            let mut per_drive: HashMap<usize, f64> = HashMap::new();
            for s in &keep {
                *per_drive.entry(s.drive).or_default() += 1.0;
            }
            let xs: Vec<Vec<f64>> = keep.iter().map(|s| view(&s.x, kind)).collect();
            let ys: Vec<f64> = keep.iter().map(|s| s.y).collect();
            let mut ws: Vec<f64> = keep.iter().map(|s| 1.0 / per_drive[&s.drive]).collect();
            let (wp, wn) = ys
                .iter()
                .zip(&ws)
                .fold((0.0, 0.0), |a, (y, w)| (a.0 + y * w, a.1 + (1.0 - y) * w));
            if wp > 0.0 {
                for (y, w) in ys.iter().zip(ws.iter_mut()) {
                    if *y > 0.0 {
                        *w *= POSITIVE_SHARE * wn / wp;
                    }
                }
            }
            (xs, ys, ws)
        };
        let p = params();
        let fit = |kind: Kind, pick: &dyn Fn(&Sample) -> bool| -> Option<Ensemble> {
            let (xs, ys, ws) = design(kind, pick);
            ys.iter().any(|y| *y > 0.0).then(|| {
                let (base, trees) = trees::fit(&xs, &ys, &ws, &p);
                Ensemble {
                    base,
                    trees,
                    calibration: (1.0, 0.0),
                }
            })
        };
        for kind in (0..KINDS).map(Kind::of) {
            let domain = |s: &Sample| s.history || !kind.history;
            // Out-of-fold log-odds of the rows, for calibration.
            let mut oof: Vec<Option<f64>> = vec![None; samples.len()];
            for k in 0..CALIBRATION_FOLDS {
                let Some(e) = fit(kind, &|s| s.fold != k) else {
                    continue;
                };
                for (i, s) in samples.iter().enumerate() {
                    if s.fold == k && domain(s) {
                        oof[i] = Some(e.raw(&view(&s.x, kind)).0);
                    }
                }
            }
            let mut e = fit(kind, &|_| true).context("no failing drive in the training rows")?;
            // Calibrated on all its rows, each row weighing as much as its outcome is known.
            let (mut z, mut y, mut w) = (Vec::new(), Vec::new(), Vec::new());
            for (s, o) in samples.iter().zip(&oof) {
                if let (true, Some(o)) = (domain(s), o) {
                    z.push(*o);
                    y.push(s.y);
                    w.push(s.exposure);
                }
            }
            e.calibration = platt(&z, &y, &w);
            model.ensembles.push(e);
        }
        Ok(model)
    }

    /// The model as a text file: one `key value...` line each, a tree per `tree` line.
    pub fn to_text(&self) -> String {
        let j = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut out = format!(
            "foreshard-risk-model 2\n\
             # P(fail within {HORIZON_DAYS} days) = sigmoid(a * (base + sum of tree outputs) + b), \
             gradient-boosted trees on the features below; ensemble 0: rows with 3 days of \
             history, of a known drive model; 1: less history; 2 and 3: the same, any drive model \
             (no drive-model features); data: Backblaze Hard Drive Data and Stats\n\
             trained_on {}\nfeatures {}\nsplit {} {}\ntrain_before_day {}\nimpute {}\n\
             # drive models: ln(failure rate / the fleet's), median power-on hours, ln P(at least \
             2^k) for k < {TAIL_GRID} of reallocated sectors and of pooled errors, name\n",
            self.trained_on,
            FEATURES.join(" "),
            self.test_fraction,
            self.seed,
            self.train_before_day
                .map_or("none".into(), |d| d.to_string()),
            j(&self.impute),
        );
        out += "# ensemble K base a b\n";
        for (k, e) in self.ensembles.iter().enumerate() {
            out += &format!(
                "ensemble {k} {} {} {}\n",
                e.base, e.calibration.0, e.calibration.1
            );
        }
        for d in std::iter::once(&self.fleet).chain(&self.drive_models) {
            out += &format!(
                "{} {} {} {} {}\n",
                if d.name.is_empty() {
                    "fleet"
                } else {
                    "drive_model"
                },
                d.rate_log,
                d.median_hours,
                d.tails.iter().map(|t| j(t)).collect::<Vec<_>>().join(" "),
                d.name
            );
        }
        for (k, e) in self.ensembles.iter().enumerate() {
            for t in &e.trees {
                out += &format!("tree {k} {}\n", t.to_line());
            }
        }
        out
    }

    /// Reads `to_text`'s form (version 2) or a version 1 file (logistic regression).
    pub fn from_text(text: &str) -> anyhow::Result<Model> {
        let mut lines = text.lines();
        let version = match lines.next().map(str::trim) {
            Some("foreshard-risk-model 2") => 2,
            Some("foreshard-risk-model 1") => 1,
            _ => bail!(
                "not a foreshard risk model (first line must be `foreshard-risk-model 2` or 1)"
            ),
        };
        let mut kv: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut drive_models = Vec::new();
        let mut ensembles: Vec<Ensemble> = (0..KINDS).map(|_| Ensemble::empty()).collect();
        let mut declared = [false; KINDS];
        let mut trained_on = String::new();
        let mut fleet = None;
        let names: &[&str] = if version == 2 {
            &FEATURES
        } else {
            &FEATURES_V1
        };
        for (n, l) in lines.enumerate() {
            let lno = n + 2;
            let l = l.trim();
            if version == 1 {
                // Version 1 named the data only in its comment.
                if let Some(rest) = l.split_once("; trained on ").map(|x| x.1) {
                    trained_on = rest.split(" (").next().unwrap_or(rest).to_string();
                }
            }
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let num = |s: &str| -> anyhow::Result<f64> {
                let v: f64 = s
                    .parse()
                    .with_context(|| format!("line {lno}: bad number {s:?}"))?;
                anyhow::ensure!(v.is_finite(), "line {lno}: number not finite");
                Ok(v)
            };
            if let Some(rest) = l.strip_prefix("trained_on ") {
                trained_on = rest.trim().to_string();
            } else if let Some(rest) = l.strip_prefix("model_rate ") {
                let (r, m) = rest
                    .split_once(' ')
                    .with_context(|| format!("line {lno}: model_rate RATE MODEL"))?;
                drive_models.push(DriveModel {
                    name: m.to_string(),
                    rate_log: num(r)?,
                    median_hours: 0.0,
                    tails: vec![Vec::new(); TAILS],
                });
            } else if let Some((is_fleet, rest)) = l
                .strip_prefix("drive_model ")
                .map(|r| (false, r))
                .or(l.strip_prefix("fleet ").map(|r| (true, r)))
            {
                let n = 2 + TAILS * TAIL_GRID;
                let mut it = rest.splitn(n + 1, ' ');
                let v = it
                    .by_ref()
                    .take(n)
                    .map(num)
                    .collect::<anyhow::Result<Vec<f64>>>()?;
                let name = it.next().unwrap_or("").trim().to_string();
                anyhow::ensure!(
                    v.len() == n && name.is_empty() == is_fleet,
                    "line {lno}: needs {n} numbers{}",
                    if is_fleet {
                        ""
                    } else {
                        " and the model's name"
                    }
                );
                let d = DriveModel {
                    name,
                    rate_log: v[0],
                    median_hours: v[1],
                    tails: v[2..].chunks(TAIL_GRID).map(<[f64]>::to_vec).collect(),
                };
                if is_fleet {
                    fleet = Some(d);
                } else {
                    drive_models.push(d);
                }
            } else if let Some(rest) = l.strip_prefix("ensemble ") {
                let v = rest
                    .split_whitespace()
                    .map(num)
                    .collect::<anyhow::Result<Vec<f64>>>()?;
                let k = v.first().map_or(KINDS, |k| *k as usize);
                anyhow::ensure!(
                    v.len() == 4 && k < KINDS && !declared[k] && v[2] > 0.0,
                    "line {lno}: ensemble K (< {KINDS}, once) base a (> 0) b"
                );
                declared[k] = true;
                ensembles[k].base = v[1];
                ensembles[k].calibration = (v[2], v[3]);
            } else if let Some(rest) = l.strip_prefix("tree ") {
                let (k, rest) = rest.split_once(' ').unwrap_or((rest, ""));
                let k: usize = k
                    .parse()
                    .ok()
                    .filter(|k| *k < KINDS)
                    .with_context(|| format!("line {lno}: tree K NODES..."))?;
                ensembles[k].trees.push(
                    Tree::from_line(rest, names.len())
                        .with_context(|| format!("line {lno}: bad tree"))?,
                );
            } else {
                let mut it = l.split_whitespace();
                let k = it.next().expect("nonempty line");
                anyhow::ensure!(
                    kv.insert(k, it.collect()).is_none(),
                    "line {lno}: {k} given twice"
                );
            }
        }
        let nums = |k: &str| -> anyhow::Result<Vec<f64>> {
            let v = kv
                .get(k)
                .with_context(|| format!("missing `{k}`"))?
                .iter()
                .map(|s| {
                    s.parse::<f64>()
                        .with_context(|| format!("`{k}`: bad number {s:?}"))
                })
                .collect::<anyhow::Result<Vec<f64>>>()?;
            anyhow::ensure!(
                v.iter().all(|x| x.is_finite()),
                "`{k}` has a non-finite number"
            );
            Ok(v)
        };
        let sized = |k: &str| -> anyhow::Result<Vec<f64>> {
            let v = nums(k)?;
            anyhow::ensure!(
                v.len() == names.len(),
                "`{k}` needs {} numbers",
                names.len()
            );
            Ok(v)
        };
        let one = |k: &str| -> anyhow::Result<f64> {
            nums(k)?
                .first()
                .copied()
                .with_context(|| format!("`{k}` is empty"))
        };
        let feats = kv.get("features").context("missing `features`")?;
        anyhow::ensure!(
            feats.as_slice() == names,
            "the model's features {feats:?} are not version {version}'s {names:?}"
        );
        let split = kv.get("split").context("missing `split`")?;
        anyhow::ensure!(split.len() == 2, "`split` needs test fraction and seed");
        let mut m = Model {
            version,
            ensembles: Vec::new(),
            impute: Vec::new(),
            logistic: None,
            test_fraction: split[0].parse().context("`split`: bad test fraction")?,
            seed: split[1].parse().context("`split`: bad seed")?,
            train_before_day: match kv.get("train_before_day").and_then(|v| v.first()) {
                Some(&"none") | None => None,
                Some(d) => Some(d.parse().context("`train_before_day`: bad day")?),
            },
            trained_on,
            drive_models,
            fleet: DriveModel {
                name: String::new(),
                rate_log: 0.0,
                median_hours: 0.0,
                tails: vec![Vec::new(); TAILS],
            },
        };
        if version == 1 {
            let lr = Logistic {
                weights: sized("weights")?,
                intercept: one("intercept")?,
                mean: sized("mean")?,
                std: sized("std")?,
            };
            anyhow::ensure!(lr.std.iter().all(|s| *s > 0.0), "`std` must be positive");
            m.logistic = Some(lr);
        } else {
            m.impute = sized("impute")?;
            m.fleet = fleet.context("missing `fleet`")?;
            for (k, e) in ensembles.iter().enumerate() {
                anyhow::ensure!(declared[k], "missing `ensemble {k}`");
                anyhow::ensure!(!e.trees.is_empty(), "ensemble {k} has no trees");
            }
            m.ensembles = ensembles;
        }
        Ok(m)
    }
}

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

pub fn evaluate(model: &Model, data: &Data) -> anyhow::Result<Eval> {
    // Per drive: highest score before the failure day (all days for healthy drives), the
    // days of each score, and the rule.
    struct D {
        failed: bool,
        fail_day: i64,
        scores: Vec<(i64, f64)>,
        rule: bool,
    }
    let mut ds = Vec::new();
    let mut bands = vec![(0usize, 0.0, 0.0); CALIBRATION_BANDS.len() - 1];
    let data_end = data
        .drives
        .values()
        .filter_map(|r| r.last())
        .map(|r| r.day)
        .max()
        .unwrap_or(0);
    for (s, rows) in &data.drives {
        let last_day = rows.last().map_or(0, |r| r.day);
        if !model.is_test(s) {
            continue;
        }
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
            let p = model.score(rows, i, data.models.get(s)).0;
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
        if scores.is_empty() {
            continue;
        }
        ds.push(D {
            failed: fail_day.is_some(),
            fail_day: fail_day.unwrap_or(i64::MAX),
            scores,
            rule: rule_hit,
        });
    }
    let max = |d: &D| d.scores.iter().map(|x| x.1).fold(0.0, f64::max);
    let mut neg: Vec<f64> = ds.iter().filter(|d| !d.failed).map(max).collect();
    let pos: Vec<f64> = ds.iter().filter(|d| d.failed).map(max).collect();
    anyhow::ensure!(
        !neg.is_empty() && !pos.is_empty(),
        "the held-out drives need failing and healthy ones"
    );
    neg.sort_by(f64::total_cmp);
    // AUC: P(score of a failing drive > a healthy one), ties half.
    let mut auc = 0.0;
    for p in &pos {
        let below = neg.partition_point(|x| x < p);
        let ties = neg.partition_point(|x| x <= p) - below;
        auc += (below as f64 + ties as f64 / 2.0) / neg.len() as f64;
    }
    auc /= pos.len() as f64;
    // Threshold at a false-alarm rate: the score above which that share of healthy drives lie.
    let thr = |rate: f64| -> f64 {
        let k = ((neg.len() as f64) * (1.0 - rate)).ceil() as usize;
        neg[k.min(neg.len() - 1)]
    };
    let recall = |t: f64| pos.iter().filter(|p| **p > t).count() as f64 / pos.len() as f64;
    let t1 = thr(0.01);
    let caught = pos.iter().filter(|p| **p > t1).count() as f64;
    let false_alarms = neg.iter().filter(|n| **n > t1).count() as f64;
    let mut lead: Vec<f64> = ds
        .iter()
        .filter(|d| d.failed)
        .filter_map(|d| {
            d.scores
                .iter()
                .find(|(_, s)| *s > t1)
                .map(|(day, _)| (d.fail_day - day) as f64)
        })
        .collect();
    lead.sort_by(f64::total_cmp);
    let healthy = ds.iter().filter(|d| !d.failed).count() as f64;
    let rule_fp = ds.iter().filter(|d| !d.failed && d.rule).count() as f64 / healthy;
    Ok(Eval {
        drives: ds.len(),
        failed: pos.len(),
        auc,
        recall_at_1pct: recall(t1),
        recall_at_0_1pct: recall(thr(0.001)),
        precision_at_1pct: caught / (caught + false_alarms).max(1.0),
        median_days_alarm_to_failure_at_1pct: (!lead.is_empty()).then(|| lead[lead.len() / 2]),
        rule_recall: ds.iter().filter(|d| d.failed && d.rule).count() as f64 / pos.len() as f64,
        rule_false_alarm_rate: rule_fp,
        model_recall_at_rule_rate: recall(thr(rule_fp)),
        p_at_1pct: t1,
        p_at_0_5pct: thr(0.005),
        calibration: bands
            .iter()
            .enumerate()
            .map(|(k, (n, p, f))| CalibrationBand {
                p_from: CALIBRATION_BANDS[k],
                p_to: CALIBRATION_BANDS[k + 1],
                rows: *n,
                mean_p: p / (*n).max(1) as f64,
                failed_within_30d: f / (*n).max(1) as f64,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> std::path::PathBuf {
        let p = dir.join("d.csv");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn columns_are_found_by_name_and_bad_rows_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "serial_number,extra,date,failure,smart_197_raw,smart_5_raw\nA,x,2013-04-10,0,1,2\nA,x,2013-04-11,1,,7\n",
        );
        let d = read(&p).unwrap();
        assert_eq!(d.columns_found, vec![5, 197]);
        let rows = &d.drives["A"];
        assert_eq!((rows[0].day + 1, rows[1].failure), (rows[1].day, true));
        assert_eq!(attr(&rows[1], 5), 7.0);
        assert_eq!(
            rows[1].smart[ATTRS.iter().position(|a| *a == 197).unwrap()],
            None
        );
        let p = write(dir.path(), "date,serial_number,failure\n2013-13-01,A,0\n");
        let e = format!("{:#}", read(&p).err().expect("bad date rejected"));
        assert!(e.contains("line 2") && e.contains("bad date"), "{e}");
        let p = write(dir.path(), "date,serial,failure\n");
        assert!(read(&p).is_err());
    }

    /// Drives whose reallocated count climbs fail; the model, trained on 70% of the drives,
    /// ranks the other 30% well, is deterministic, and survives its text form.
    #[test]
    fn trains_on_a_planted_signal_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::from("date,serial_number,model,capacity_bytes,failure,smart_5_raw,smart_9_raw,smart_194_raw\n");
        let mut x: u64 = 99;
        let mut rnd = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % 1000
        };
        for drive in 0..600 {
            let fails = drive % 20 == 0;
            let last = if fails { 20 + rnd() as i64 % 20 } else { 40 };
            let mut realloc = 0;
            for day in 0..last {
                if fails && day > last - 15 && rnd() < 400 {
                    realloc += 1 + rnd() % 5;
                }
                if !fails && rnd() < 3 {
                    realloc += 1;
                }
                let date = format!("2013-04-{:02}", 1 + day % 30);
                let date = if day >= 30 {
                    format!("2013-05-{:02}", day - 29)
                } else {
                    date
                };
                let failure = u8::from(fails && day == last - 1);
                text += &format!(
                    "{date},S{drive},M,1,{failure},{realloc},{},30\n",
                    1000 + day * 24
                );
            }
        }
        let p = write(dir.path(), &text);
        let d = read(&p).unwrap();
        let m = Model::train(&d, 0.3, 7, None, "planted").unwrap();
        let m2 = Model::train(&d, 0.3, 7, None, "planted").unwrap();
        assert_eq!(m.to_text(), m2.to_text(), "training is deterministic");
        let back = Model::from_text(&m.to_text()).unwrap();
        assert_eq!(back.to_text(), m.to_text());
        assert_eq!(back.trained_on, "planted");
        let rows = &d.drives["S0"];
        let dm = d.models.get("S0");
        assert!((back.score(rows, 5, dm).0 - m.score(rows, 5, dm).0).abs() < 1e-12);
        let e = evaluate(&back, &d).unwrap();
        assert!(e.auc > 0.9, "{e:?}");
        assert!(e.recall_at_1pct > 0.5, "{e:?}");
        assert!(Model::from_text("foreshard-risk-model 2\nfeatures a b\n").is_err());
        assert!(Model::from_text("hello").is_err());
        more_errors_never_lower_the_score(&m, &[None, Some(&"M".to_string())]);
    }

    const SHIPPED: &str = include_str!("../../fixtures/risk-model.txt");

    fn row(day: i64, s5: f64, s197: f64, hours: Option<f64>) -> Row {
        let mut smart = [None; ATTRS.len()];
        let at = |a: u32| ATTRS.iter().position(|x| *x == a).unwrap();
        smart[at(5)] = Some(s5);
        smart[at(197)] = Some(s197);
        smart[at(9)] = hours;
        Row {
            day,
            date: String::new(),
            failure: false,
            smart,
        }
    }

    /// Other things equal, a drive with more reallocated or pending sectors never scores
    /// lower: for a single row, and for a 10-day history whose counters are all scaled up.
    fn more_errors_never_lower_the_score(m: &Model, models: &[Option<&String>]) {
        let levels = [0.0, 1.0, 2.0, 5.0, 20.0, 100.0, 500.0, 2e3, 1e4, 1e5];
        for model in models {
            for hours in [None, Some(500.0), Some(20_000.0)] {
                for (k, a) in levels.iter().enumerate() {
                    for b in levels {
                        let one =
                            |s5: f64, s197: f64| m.score(&[row(0, s5, s197, hours)], 0, *model).0;
                        if let Some(a2) = levels.get(k + 1) {
                            assert!(one(*a2, b) >= one(*a, b), "{model:?} 5: {a} -> {a2}");
                            assert!(one(b, *a2) >= one(b, *a), "{model:?} 197: {a} -> {a2}");
                        }
                        // Ten days, counters climbing to (a, b); then all of them doubled.
                        let hist = |f: f64| -> Vec<Row> {
                            (0..10)
                                .map(|d| {
                                    let t = f * (d + 1) as f64 / 10.0;
                                    let h = hours.map(|h| h + 24.0 * d as f64);
                                    row(d, (a * t).round(), (b * t).round(), h)
                                })
                                .collect()
                        };
                        let (lo, hi) = (hist(1.0), hist(2.0));
                        for i in 0..10 {
                            let (p0, p1) = (m.score(&lo, i, *model).0, m.score(&hi, i, *model).0);
                            assert!(p1 >= p0, "{model:?} ({a}, {b}) day {i}: {p0} -> {p1}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_shipped_model_is_monotone_in_error_counters() {
        let m = Model::from_text(SHIPPED).unwrap();
        assert_eq!(m.version, 2);
        assert_eq!(m.trained_on, "backblaze_2013_sample.csv.gz");
        let seagate = "ST31500541AS".to_string();
        let hitachi = "Hitachi HDS722020ALA330".to_string();
        more_errors_never_lower_the_score(&m, &[None, Some(&seagate), Some(&hitachi)]);
    }

    /// The daemon often has a single row for a disk: large counters there must still raise
    /// the risk well above a clean disk's (to about what such rows of the training data
    /// showed: ~5% from 2,000 reallocated sectors alone, ~40% with pending sectors too), and
    /// the top factor must say why.
    #[test]
    fn a_single_row_with_large_counters_scores_high() {
        let m = Model::from_text(SHIPPED).unwrap();
        let models = ["", "ST31500541AS", "ST3000DM001", "Hitachi HDS5C3030ALA630"];
        for (name, hours) in models.iter().zip([None, Some(300.0), Some(30_000.0), None]) {
            let model = Some(name.to_string()).filter(|n| !n.is_empty());
            let score = |s5: f64, s197: f64| m.score(&[row(0, s5, s197, hours)], 0, model.as_ref());
            let p = |s5: f64, s197: f64| score(s5, s197).0;
            let clean = p(0.0, 0.0);
            let [realloc, pending, both] = [p(2000.0, 0.0), p(0.0, 200.0), p(2000.0, 200.0)];
            let all = format!("{name:?} {hours:?}: clean {clean}, 5: {realloc}, 197: {pending}");
            assert!(realloc > 8.0 * clean && pending > 8.0 * clean, "{all}");
            assert!(
                both >= realloc.max(pending) && both > 0.1,
                "{all}, both {both}"
            );
            if model.is_none() {
                // The daemon's usual case: a drive model the training data never saw.
                assert!(clean < 0.005 && realloc > 0.03 && pending > 0.02, "{all}");
                assert!(both > 0.25, "{all}, both {both}");
            }
            let top = |s5: f64, s197: f64| {
                let parts = score(s5, s197).1;
                parts.iter().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap().0
            };
            assert!(top(2000.0, 0.0).contains("reallocated"), "{all}");
            assert!(top(0.0, 200.0).contains("errors"), "{all}");
        }
    }

    /// Version 1 files (logistic regression) still load, keep their data's name, and score.
    #[test]
    fn version_1_files_still_load() {
        let text = "foreshard-risk-model 1\nmodel_rate 0.5 ST31500541AS\n\
            # logistic regression: P(fail within 30 days); trained on old.csv (Backblaze drive stats format)\n\
            features log_reallocated_5 log_pending_197 log_uncorrectable_198 log_reported_uncorrect_187 \
            log_command_timeout_188 any_error_counter growth_5_7d growth_197_7d growth_187_198_7d \
            power_on_years temperature_over_40c days_observed_log model_failure_rate_log\n\
            weights 1 0 0 0 0 0 0 0 0 0 0 0 1\nintercept -5\nmean 0 0 0 0 0 0 0 0 0 0 0 0 0\n\
            std 1 1 1 1 1 1 1 1 1 1 1 1 1\nsplit 0.3 1\ntrain_before_day none\n";
        let m = Model::from_text(text).unwrap();
        assert_eq!((m.version, m.trained_on.as_str()), (1, "old.csv"));
        let s = "ST31500541AS".to_string();
        let p = |s5: f64, model: Option<&String>| m.score(&[row(0, s5, 0.0, None)], 0, model).0;
        assert!((p(0.0, None) - sigmoid(-5.0)).abs() < 1e-12);
        assert!((p(0.0, Some(&s)) - sigmoid(-4.5)).abs() < 1e-12);
        assert!(p(100.0, None) > p(10.0, None));
    }
}
