//! Fitting the model on the training drives: what the features know of each drive model,
//! one sample per training row, then per kind of row boosted trees calibrated by Platt
//! scaling on out-of-fold scores.

use super::*;

/// Per drive model, over the training drives (and days): drives, failures, and each
/// drive's last power-on hours, reallocated sectors and highest pooled errors.
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

/// One sample per training row.
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

/// The training drives (sorted by serial) and days.
struct TrainSet<'a> {
    data: &'a Data,
    serials: Vec<&'a String>,
    seed: u64,
    train_before_day: Option<i64>,
}

/// The drive-model statistics the samples' features are computed from.
struct DriveStats<'a> {
    per_model: HashMap<&'a str, Acc>,
    /// The fleet's smoothed failure rate, the prior of a drive model with few drives.
    fleet_rate: f64,
}

/// Rounded to 4 decimals, so that the model file stays short.
fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

impl<'a> TrainSet<'a> {
    fn seen(&self, r: &Row) -> bool {
        self.train_before_day.is_none_or(|t| r.day < t)
    }

    fn per_model(&self) -> HashMap<&'a str, Acc> {
        let data = self.data;
        let mut per_model: HashMap<&'a str, Acc> = HashMap::new();
        for s in &self.serials {
            let m = data.models.get(*s).map_or("", |m| m.as_str());
            let rows: Vec<&Row> = data.drives[*s].iter().filter(|r| self.seen(r)).collect();
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
        per_model
    }

    /// One sample per training row of every training drive.
    fn samples(&self, model: &Model, stats: &DriveStats) -> Vec<Sample> {
        let mut samples: Vec<Sample> = Vec::new();
        for (drive, s) in self.serials.iter().enumerate() {
            let rows = &self.data.drives[*s];
            let dm = self.drive_model_without(model, stats, s);
            let fail_day = rows.iter().find(|r| r.failure).map(|r| r.day);
            let last_day = rows.last().map_or(0, |r| r.day);
            let fold =
                (split_hash(s, self.seed.wrapping_add(0x5eed)) * CALIBRATION_FOLDS as f64) as u64;
            for (i, r) in rows.iter().enumerate().take_while(|(_, r)| self.seen(r)) {
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
        samples
    }

    /// The drive model of serial `s` with its failure rate computed without this drive (its
    /// own outcome must not leak into its features).
    fn drive_model_without(&self, model: &Model, stats: &DriveStats, s: &str) -> DriveModel {
        let rows = &self.data.drives[s];
        let mut dm = model.drive_model(self.data.models.get(s));
        let (k, fleet_rate) = (MODEL_PRIOR_DRIVES, stats.fleet_rate);
        if let Some(a) = self
            .data
            .models
            .get(s)
            .and_then(|m| stats.per_model.get(m.as_str()))
        {
            let failed = f64::from(u8::from(rows.iter().any(|r| r.failure && self.seen(r))));
            let rate = (a.failed - failed + k * fleet_rate) / (a.drives - 1.0 + k);
            dm.rate_log = (rate / fleet_rate).ln();
        }
        dm
    }
}

/// All training drives' statistics, summed in name order (not the HashMap's).
fn fleet_totals(per_model: &HashMap<&str, Acc>) -> Acc {
    let mut all = Acc::default();
    let mut names: Vec<&str> = per_model.keys().copied().collect();
    names.sort();
    for m in &names {
        all.add(&per_model[m]);
    }
    all
}

/// The fleet's drive model, and its ln P(at least 2^k) tails before rounding (the drive
/// models are smoothed toward them).
fn fleet_model(all: &Acc) -> (DriveModel, Vec<Vec<f64>>) {
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
            .map(|t| t.iter().map(|v| round4(*v)).collect())
            .collect(),
    };
    (fleet, fleet_tails)
}

/// Every named drive model (sorted by name), smoothed toward the fleet by
/// `MODEL_PRIOR_DRIVES`. Sorts each model's hours in place (for the median).
fn named_models(
    stats: &mut DriveStats,
    fleet: &DriveModel,
    fleet_tails: &[Vec<f64>],
) -> Vec<DriveModel> {
    let (k, fleet_rate) = (MODEL_PRIOR_DRIVES, stats.fleet_rate);
    let mut names: Vec<&str> = stats.per_model.keys().copied().collect();
    names.sort();
    names
        .iter()
        .filter(|m| !m.is_empty())
        .map(|m| {
            let a = stats.per_model.get_mut(m).expect("listed");
            let rate = (a.failed + k * fleet_rate) / (a.drives + k);
            let tails = a
                .at_least
                .iter()
                .zip(fleet_tails)
                .map(|(c, f)| {
                    c.iter()
                        .zip(f)
                        .map(|(c, f)| round4(((c + k * f.exp()) / (a.drives + k)).ln()))
                        .collect()
                })
                .collect();
            DriveModel {
                name: m.to_string(),
                rate_log: round4((rate / fleet_rate).ln()),
                median_hours: median(&mut a.hours).unwrap_or(fleet.median_hours),
                tails,
            }
        })
        .collect()
}

/// Per feature, the samples' median (NaN values left out) replaces their NaN values; the
/// medians are returned for the model to impute scored rows the same way.
fn impute(samples: &mut [Sample]) -> Vec<f64> {
    let mut impute = vec![0.0; FEATURES.len()];
    for (f, slot) in impute.iter_mut().enumerate() {
        let mut v: Vec<f64> = samples
            .iter()
            .map(|s| s.x[f])
            .filter(|v| !v.is_nan())
            .collect();
        let m = median(&mut v).unwrap_or(0.0);
        *slot = m;
        for s in samples.iter_mut() {
            if s.x[f].is_nan() {
                s.x[f] = m;
            }
        }
    }
    impute
}

/// Fits the ensembles of one kind of row on the samples (out-of-fold and final fits share
/// the design).
struct Fitter<'s> {
    samples: &'s [Sample],
    params: trees::Params,
}

/// Rows, labels and weights of one fit.
type Design = (Vec<Vec<f64>>, Vec<f64>, Vec<f64>);

impl Fitter<'_> {
    /// The design of the ensemble of `kind` on the samples `pick` keeps: the short model goes
    /// without the growth features; every drive's rows weigh 1 in all; failing rows are
    /// up-weighted to `POSITIVE_SHARE` of the healthy ones' weight.
    fn design(&self, kind: Kind, pick: &dyn Fn(&Sample) -> bool) -> Design {
        let keep: Vec<&Sample> = self
            .samples
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
    }

    /// None when the picked samples have no failing row.
    fn fit(&self, kind: Kind, pick: &dyn Fn(&Sample) -> bool) -> Option<Ensemble> {
        let (xs, ys, ws) = self.design(kind, pick);
        ys.iter().any(|y| *y > 0.0).then(|| {
            let (base, trees) = trees::fit(&xs, &ys, &ws, &self.params);
            Ensemble {
                base,
                trees,
                calibration: (1.0, 0.0),
            }
        })
    }

    /// Out-of-fold log-odds of the samples in `kind`'s domain, for calibration.
    fn out_of_fold(&self, kind: Kind) -> Vec<Option<f64>> {
        let domain = |s: &Sample| s.history || !kind.history;
        let mut oof: Vec<Option<f64>> = vec![None; self.samples.len()];
        for k in 0..CALIBRATION_FOLDS {
            let Some(e) = self.fit(kind, &|s| s.fold != k) else {
                continue;
            };
            for (i, s) in self.samples.iter().enumerate() {
                if s.fold == k && domain(s) {
                    oof[i] = Some(e.raw(&view(&s.x, kind)).0);
                }
            }
        }
        oof
    }

    /// `kind`'s ensemble on all samples, calibrated on all its rows' out-of-fold log-odds,
    /// each row weighing as much as its outcome is known.
    fn calibrated(&self, kind: Kind) -> anyhow::Result<Ensemble> {
        let domain = |s: &Sample| s.history || !kind.history;
        let oof = self.out_of_fold(kind);
        let mut e = self
            .fit(kind, &|_| true)
            .context("no failing drive in the training rows")?;
        let (mut z, mut y, mut w) = (Vec::new(), Vec::new(), Vec::new());
        for (s, o) in self.samples.iter().zip(&oof) {
            if let (true, Some(o)) = (domain(s), o) {
                z.push(*o);
                y.push(s.y);
                w.push(s.exposure);
            }
        }
        e.calibration = platt(&z, &y, &w);
        Ok(e)
    }
}

impl Model {
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
        let set = TrainSet {
            data,
            serials,
            seed,
            train_before_day,
        };
        let per_model = set.per_model();
        let all = fleet_totals(&per_model);
        let mut stats = DriveStats {
            // Smoothed: one failure and one survivor added.
            fleet_rate: (all.failed + 1.0) / (all.drives + 2.0),
            per_model,
        };
        let (fleet, fleet_tails) = fleet_model(&all);
        let drive_models = named_models(&mut stats, &fleet, &fleet_tails);
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
        let mut samples = set.samples(&model, &stats);
        anyhow::ensure!(!samples.is_empty(), "no training rows");
        anyhow::ensure!(
            samples.iter().any(|s| s.y > 0.0),
            "no failing drive in the training rows"
        );
        model.impute = impute(&mut samples);
        let fitter = Fitter {
            samples: &samples,
            params: params(),
        };
        for kind in (0..KINDS).map(Kind::of) {
            model.ensembles.push(fitter.calibrated(kind)?);
        }
        Ok(model)
    }
}
