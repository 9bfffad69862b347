//! The model's text file format (version 2; version 1 files still load).

use super::*;

impl Model {
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
