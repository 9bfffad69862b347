//! The failure model: logistic regression of "the drive fails within 30 days" on features of
//! its SMART history up to that day (never later rows), trained on Backblaze-format daily
//! records (data: Backblaze Hard Drive Data and Stats). Columns are found by header name, so
//! files with few attributes (2013: 1, 5, 9, 194, 197) and many work alike.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{bail, Context};
use serde::Serialize;

/// Days ahead a score predicts.
pub const HORIZON_DAYS: i64 = 30;
/// The growth features compare with the drive's row this many days earlier.
const GROWTH_DAYS: i64 = 7;
/// Newton iterations when fitting; L2 penalty on the weights (not the intercept).
const FIT_ITERATIONS: usize = 25;
const L2: f64 = 1.0;
/// SMART attributes the model reads (raw values), when the file has them.
pub const ATTRS: [u32; 8] = [1, 5, 9, 187, 188, 194, 197, 198];
/// The "any of these above zero" rule's attributes.
const RULE_ATTRS: [u32; 5] = [5, 187, 188, 197, 198];

pub const FEATURES: [&str; 13] = [
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
/// Drives of prior weight when a drive model's failure rate is estimated from few drives.
const MODEL_PRIOR_DRIVES: f64 = 50.0;

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
    let i = ATTRS.iter().position(|x| *x == a).expect("known attribute");
    r.smart[i].unwrap_or(0.0).max(0.0)
}

/// Features of `rows[i]` from rows[..=i] only; `model_rate` is ln(failure rate of the drive's
/// model / the fleet's), from the training drives.
pub fn features(rows: &[Row], i: usize, model_rate: f64) -> [f64; FEATURES.len()] {
    let r = &rows[i];
    let earlier = rows[..i]
        .iter()
        .rev()
        .find(|p| r.day - p.day >= GROWTH_DAYS)
        .or(rows.first());
    let growth = |a: u32| earlier.map_or(0.0, |p| (attr(r, a) - attr(p, a)).max(0.0));
    let l = |x: f64| (1.0 + x).ln();
    let any = RULE_ATTRS.iter().any(|a| attr(r, *a) > 0.0);
    let temp = attr(r, 194);
    // Attribute 194's raw value can be packed (min/max in the upper bytes): keep the low byte.
    let temp = if temp > 255.0 {
        (temp as u64 & 0xff) as f64
    } else {
        temp
    };
    [
        l(attr(r, 5)),
        l(attr(r, 197)),
        l(attr(r, 198)),
        l(attr(r, 187)),
        l(attr(r, 188)),
        f64::from(u8::from(any)),
        l(growth(5)),
        l(growth(197)),
        l(growth(187) + growth(198)),
        attr(r, 9) / 8766.0,
        (temp - 40.0).max(0.0) / 10.0,
        l((r.day - rows[0].day) as f64),
        model_rate,
    ]
}

/// The rule: any of 5/187/188/197/198 above zero.
pub fn rule(r: &Row) -> bool {
    RULE_ATTRS.iter().any(|a| attr(r, *a) > 0.0)
}

#[derive(Clone, Debug, Serialize)]
pub struct Model {
    pub weights: Vec<f64>,
    pub intercept: f64,
    /// Feature scaling (mean, std) from the training rows.
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Drives with `split_hash(serial) < test_cut` were held out for evaluation.
    pub test_fraction: f64,
    pub seed: u64,
    /// Training rows were before this day (None: all days).
    pub train_before_day: Option<i64>,
    pub trained_on: String,
    /// ln(failure rate of a drive model / the fleet's) from the training drives.
    pub model_rates: Vec<(String, f64)>,
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

impl Model {
    pub fn is_test(&self, serial: &str) -> bool {
        split_hash(serial, self.seed) < self.test_fraction
    }

    pub fn model_rate(&self, model: Option<&String>) -> f64 {
        model
            .and_then(|m| self.model_rates.iter().find(|(n, _)| n == m))
            .map_or(0.0, |(_, r)| *r)
    }

    /// P(fail within `HORIZON_DAYS`) for `rows[i]` of a drive of `model`, and each
    /// feature's contribution.
    pub fn score(
        &self,
        rows: &[Row],
        i: usize,
        model: Option<&String>,
    ) -> (f64, Vec<(&'static str, f64)>) {
        let x = features(rows, i, self.model_rate(model));
        let mut z = self.intercept;
        let mut parts = Vec::with_capacity(x.len());
        for (k, v) in x.iter().enumerate() {
            let c = self.weights[k] * (v - self.mean[k]) / self.std[k];
            z += c;
            parts.push((FEATURES[k], c));
        }
        (sigmoid(z), parts)
    }

    /// Fits on the training drives (and days): L2-regularised logistic regression by Newton's
    /// method on standardised features.
    // Dense linear algebra reads clearest with indices.
    #[allow(clippy::needless_range_loop)]
    pub fn train(
        data: &Data,
        test_fraction: f64,
        seed: u64,
        train_before_day: Option<i64>,
        name: &str,
    ) -> anyhow::Result<Model> {
        let mut xs: Vec<[f64; FEATURES.len()]> = Vec::new();
        let mut ys: Vec<f64> = Vec::new();
        let mut serials: Vec<&String> = data.drives.keys().collect();
        serials.sort();
        serials.retain(|s| split_hash(s, seed) >= test_fraction);
        // Failure rate per drive model, over the training drives (and days), smoothed
        // toward the fleet's.
        let mut per_model: HashMap<&str, (f64, f64)> = HashMap::new();
        for s in &serials {
            let m = data.models.get(*s).map_or("", |m| m.as_str());
            let failed = data.drives[*s]
                .iter()
                .any(|r| r.failure && train_before_day.is_none_or(|t| r.day < t));
            let e = per_model.entry(m).or_default();
            e.0 += 1.0;
            e.1 += f64::from(u8::from(failed));
        }
        let (n_all, f_all) = per_model
            .values()
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        let fleet = (f_all + 1.0) / (n_all + 2.0);
        let mut model_rates: Vec<(String, f64)> = per_model
            .iter()
            .filter(|(m, _)| !m.is_empty())
            .map(|(m, (n, f))| {
                let rate = (f + MODEL_PRIOR_DRIVES * fleet) / (n + MODEL_PRIOR_DRIVES);
                (m.to_string(), (rate / fleet).ln())
            })
            .collect();
        model_rates.sort_by(|a, b| a.0.cmp(&b.0));
        let rate_of = |s: &String| {
            data.models
                .get(s)
                .and_then(|m| model_rates.iter().find(|(n, _)| n == m))
                .map_or(0.0, |(_, r)| *r)
        };
        for s in serials {
            let rows = &data.drives[s];
            let mr = rate_of(s);
            let fail_day = rows.iter().find(|r| r.failure).map(|r| r.day);
            for i in 0..rows.len() {
                if train_before_day.is_some_and(|t| rows[i].day >= t) {
                    break;
                }
                xs.push(features(rows, i, mr));
                ys.push(f64::from(u8::from(
                    fail_day.is_some_and(|f| f - rows[i].day <= HORIZON_DAYS),
                )));
            }
        }
        let n = xs.len();
        anyhow::ensure!(n > 0, "no training rows");
        anyhow::ensure!(
            ys.iter().any(|y| *y > 0.0),
            "no failing drive in the training rows"
        );
        let d = FEATURES.len();
        let mut mean = vec![0.0; d];
        let mut std = vec![0.0; d];
        for x in &xs {
            for k in 0..d {
                mean[k] += x[k] / n as f64;
            }
        }
        for x in &xs {
            for k in 0..d {
                std[k] += (x[k] - mean[k]).powi(2) / n as f64;
            }
        }
        for s in &mut std {
            *s = s.sqrt().max(1e-9);
        }
        // Newton: w has d weights + intercept (last).
        let m = d + 1;
        let mut w = vec![0.0; m];
        let base = ys.iter().sum::<f64>() / n as f64;
        w[d] = (base / (1.0 - base)).ln();
        let z = |x: &[f64; FEATURES.len()]| -> Vec<f64> {
            let mut v: Vec<f64> = (0..d).map(|k| (x[k] - mean[k]) / std[k]).collect();
            v.push(1.0);
            v
        };
        let loss = |w: &[f64]| -> f64 {
            let mut l = 0.0;
            for (x, y) in xs.iter().zip(&ys) {
                let zz: f64 = z(x).iter().zip(w).map(|(a, b)| a * b).sum();
                // log(1 + e^z) - y z, computed stably.
                l += zz.max(0.0) + (-zz.abs()).exp().ln_1p() - y * zz;
            }
            l + L2 / 2.0 * w[..d].iter().map(|v| v * v).sum::<f64>()
        };
        for _ in 0..FIT_ITERATIONS {
            let mut g = vec![0.0; m];
            let mut h = vec![vec![0.0; m]; m];
            for (x, y) in xs.iter().zip(&ys) {
                let v = z(x);
                let p = sigmoid(v.iter().zip(&w).map(|(a, b)| a * b).sum());
                let r = p * (1.0 - p);
                for a in 0..m {
                    g[a] += (p - y) * v[a];
                    for b in 0..=a {
                        h[a][b] += r * v[a] * v[b];
                    }
                }
            }
            for a in 0..m {
                for b in 0..a {
                    h[b][a] = h[a][b];
                }
                if a < d {
                    g[a] += L2 * w[a];
                    h[a][a] += L2;
                }
            }
            let step = solve(h, g).context("singular Hessian")?;
            // Damped Newton: halve the step until the penalised loss does not rise (pure
            // Newton diverges on rare, nearly separable events).
            let before = loss(&w);
            let mut t = 1.0;
            let mut next: Vec<f64>;
            loop {
                next = w.iter().zip(&step).map(|(a, s)| a - t * s).collect();
                if loss(&next) <= before || t < 1e-6 {
                    break;
                }
                t /= 2.0;
            }
            let change = w
                .iter()
                .zip(&next)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            w = next;
            if change < 1e-7 {
                break;
            }
        }
        Ok(Model {
            intercept: w[d],
            weights: w[..d].to_vec(),
            mean,
            std,
            test_fraction,
            seed,
            train_before_day,
            trained_on: name.to_string(),
            model_rates,
        })
    }

    /// The model as a small text file: one `key value...` line each.
    pub fn to_text(&self) -> String {
        let j = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.10e}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let rates: String = self
            .model_rates
            .iter()
            .map(|(m, r)| format!("model_rate {r:.6} {m}\n"))
            .collect();
        "foreshard-risk-model 1\n".to_string()
            + &rates
            + &format!(
            "# logistic regression: P(fail within {HORIZON_DAYS} days); trained on {} (Backblaze drive stats format)\nfeatures {}\nweights {}\nintercept {:.10e}\nmean {}\nstd {}\nsplit {} {}\ntrain_before_day {}\n",
            self.trained_on,
            FEATURES.join(" "),
            j(&self.weights),
            self.intercept,
            j(&self.mean),
            j(&self.std),
            self.test_fraction,
            self.seed,
            self.train_before_day.map_or("none".into(), |d| d.to_string())
        )
    }

    pub fn from_text(text: &str) -> anyhow::Result<Model> {
        let mut kv: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut model_rates = Vec::new();
        let mut lines = text.lines();
        anyhow::ensure!(
            lines.next().map(str::trim) == Some("foreshard-risk-model 1"),
            "not a foreshard risk model (first line must be `foreshard-risk-model 1`)"
        );
        for (n, l) in lines.enumerate() {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            if let Some(rest) = l.strip_prefix("model_rate ") {
                let (r, m) = rest
                    .split_once(' ')
                    .with_context(|| format!("line {}: model_rate RATE MODEL", n + 2))?;
                let r: f64 = r
                    .parse()
                    .with_context(|| format!("line {}: bad model rate {r:?}", n + 2))?;
                anyhow::ensure!(r.is_finite(), "line {}: model rate not finite", n + 2);
                model_rates.push((m.to_string(), r));
                continue;
            }
            let mut it = l.split_whitespace();
            let k = it.next().expect("nonempty line");
            anyhow::ensure!(
                kv.insert(k, it.collect()).is_none(),
                "line {}: {k} given twice",
                n + 2
            );
        }
        let nums = |k: &str| -> anyhow::Result<Vec<f64>> {
            kv.get(k)
                .with_context(|| format!("missing `{k}`"))?
                .iter()
                .map(|s| {
                    s.parse::<f64>()
                        .with_context(|| format!("`{k}`: bad number {s:?}"))
                })
                .collect()
        };
        let feats = kv.get("features").context("missing `features`")?;
        anyhow::ensure!(
            feats.as_slice() == FEATURES,
            "the model's features {:?} are not this version's {:?}",
            feats,
            FEATURES
        );
        let (weights, mean, std) = (nums("weights")?, nums("mean")?, nums("std")?);
        for (k, v) in [("weights", &weights), ("mean", &mean), ("std", &std)] {
            anyhow::ensure!(
                v.len() == FEATURES.len(),
                "`{k}` needs {} numbers",
                FEATURES.len()
            );
            anyhow::ensure!(
                v.iter().all(|x| x.is_finite()),
                "`{k}` has a non-finite number"
            );
        }
        anyhow::ensure!(std.iter().all(|s| *s > 0.0), "`std` must be positive");
        let intercept = *nums("intercept")?.first().context("`intercept` is empty")?;
        let split = kv.get("split").context("missing `split`")?;
        anyhow::ensure!(split.len() == 2, "`split` needs test fraction and seed");
        Ok(Model {
            weights,
            intercept,
            mean,
            std,
            test_fraction: split[0].parse().context("`split`: bad test fraction")?,
            seed: split[1].parse().context("`split`: bad seed")?,
            train_before_day: match kv.get("train_before_day").and_then(|v| v.first()) {
                Some(&"none") | None => None,
                Some(d) => Some(d.parse().context("`train_before_day`: bad day")?),
            },
            trained_on: String::new(),
            model_rates,
        })
    }
}

/// Gaussian elimination with partial pivoting.
#[allow(clippy::needless_range_loop)]
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for c in 0..n {
        let p = (c..n).max_by(|x, y| a[*x][c].abs().total_cmp(&a[*y][c].abs()))?;
        if a[p][c].abs() < 1e-12 {
            return None;
        }
        a.swap(c, p);
        b.swap(c, p);
        for r in c + 1..n {
            let f = a[r][c] / a[c][c];
            for k in c..n {
                a[r][k] -= f * a[c][k];
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        let s: f64 = (r + 1..n).map(|k| a[r][k] * x[k]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    Some(x)
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
}

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
    for (s, rows) in &data.drives {
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
            scores.push((rows[i].day, model.score(rows, i, data.models.get(s)).0));
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
        let rows = &d.drives["S0"];
        let dm = d.models.get("S0");
        assert!((back.score(rows, 5, dm).0 - m.score(rows, 5, dm).0).abs() < 1e-9);
        let e = evaluate(&back, &d).unwrap();
        assert!(e.auc > 0.9, "{e:?}");
        assert!(e.recall_at_1pct > 0.5, "{e:?}");
        assert!(Model::from_text("foreshard-risk-model 1\nfeatures a b\n").is_err());
        assert!(Model::from_text("hello").is_err());
    }
}
