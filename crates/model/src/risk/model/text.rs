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
        let mut parsed = Parsed::new(version);
        for (n, l) in lines.enumerate() {
            parsed.line(n + 2, l.trim())?;
        }
        parsed.finish()
    }
}

/// A number on line `lno` of a model file (finite).
fn number(lno: usize, s: &str) -> anyhow::Result<f64> {
    let v: f64 = s
        .parse()
        .with_context(|| format!("line {lno}: bad number {s:?}"))?;
    anyhow::ensure!(v.is_finite(), "line {lno}: number not finite");
    Ok(v)
}

/// What the lines of a model file have given so far; `finish` checks that nothing is
/// missing and builds the model.
struct Parsed<'t> {
    version: u32,
    /// The features of the file's version.
    names: &'static [&'static str],
    /// `key value...` lines not read as they come (each key once).
    kv: HashMap<&'t str, Vec<&'t str>>,
    drive_models: Vec<DriveModel>,
    ensembles: Vec<Ensemble>,
    /// The `ensemble K` lines seen.
    declared: [bool; KINDS],
    trained_on: String,
    fleet: Option<DriveModel>,
}

impl<'t> Parsed<'t> {
    fn new(version: u32) -> Parsed<'t> {
        Parsed {
            version,
            names: if version == 2 {
                &FEATURES
            } else {
                &FEATURES_V1
            },
            kv: HashMap::new(),
            drive_models: Vec::new(),
            ensembles: (0..KINDS).map(|_| Ensemble::empty()).collect(),
            declared: [false; KINDS],
            trained_on: String::new(),
            fleet: None,
        }
    }

    /// Line `lno` (trimmed), after the first.
    fn line(&mut self, lno: usize, l: &'t str) -> anyhow::Result<()> {
        if self.version == 1 {
            // Version 1 named the data only in its comment.
            if let Some(rest) = l.split_once("; trained on ").map(|x| x.1) {
                self.trained_on = rest.split(" (").next().unwrap_or(rest).to_string();
            }
        }
        if l.is_empty() || l.starts_with('#') {
            return Ok(());
        }
        if let Some(rest) = l.strip_prefix("trained_on ") {
            self.trained_on = rest.trim().to_string();
        } else if let Some(rest) = l.strip_prefix("model_rate ") {
            let (r, m) = rest
                .split_once(' ')
                .with_context(|| format!("line {lno}: model_rate RATE MODEL"))?;
            self.drive_models.push(DriveModel {
                name: m.to_string(),
                rate_log: number(lno, r)?,
                median_hours: 0.0,
                tails: vec![Vec::new(); TAILS],
            });
        } else if let Some((is_fleet, rest)) = l
            .strip_prefix("drive_model ")
            .map(|r| (false, r))
            .or(l.strip_prefix("fleet ").map(|r| (true, r)))
        {
            self.drive_model(lno, is_fleet, rest)?;
        } else if let Some(rest) = l.strip_prefix("ensemble ") {
            self.ensemble(lno, rest)?;
        } else if let Some(rest) = l.strip_prefix("tree ") {
            self.tree(lno, rest)?;
        } else {
            let mut it = l.split_whitespace();
            let k = it.next().expect("nonempty line");
            anyhow::ensure!(
                self.kv.insert(k, it.collect()).is_none(),
                "line {lno}: {k} given twice"
            );
        }
        Ok(())
    }

    /// A `drive_model` line, or the `fleet` line (the same numbers, no name).
    fn drive_model(&mut self, lno: usize, is_fleet: bool, rest: &str) -> anyhow::Result<()> {
        let n = 2 + TAILS * TAIL_GRID;
        let mut it = rest.splitn(n + 1, ' ');
        let v = it
            .by_ref()
            .take(n)
            .map(|s| number(lno, s))
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
            self.fleet = Some(d);
        } else {
            self.drive_models.push(d);
        }
        Ok(())
    }

    /// An `ensemble K base a b` line.
    fn ensemble(&mut self, lno: usize, rest: &str) -> anyhow::Result<()> {
        let v = rest
            .split_whitespace()
            .map(|s| number(lno, s))
            .collect::<anyhow::Result<Vec<f64>>>()?;
        let k = v.first().map_or(KINDS, |k| *k as usize);
        anyhow::ensure!(
            v.len() == 4 && k < KINDS && !self.declared[k] && v[2] > 0.0,
            "line {lno}: ensemble K (< {KINDS}, once) base a (> 0) b"
        );
        self.declared[k] = true;
        self.ensembles[k].base = v[1];
        self.ensembles[k].calibration = (v[2], v[3]);
        Ok(())
    }

    /// A `tree K NODES...` line.
    fn tree(&mut self, lno: usize, rest: &str) -> anyhow::Result<()> {
        let (k, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let k: usize = k
            .parse()
            .ok()
            .filter(|k| *k < KINDS)
            .with_context(|| format!("line {lno}: tree K NODES..."))?;
        self.ensembles[k].trees.push(
            Tree::from_line(rest, self.names.len())
                .with_context(|| format!("line {lno}: bad tree"))?,
        );
        Ok(())
    }

    /// The finite numbers of key `k`.
    fn nums(&self, k: &str) -> anyhow::Result<Vec<f64>> {
        let v = self
            .kv
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
    }

    /// Key `k`'s numbers, one per feature.
    fn sized(&self, k: &str) -> anyhow::Result<Vec<f64>> {
        let v = self.nums(k)?;
        anyhow::ensure!(
            v.len() == self.names.len(),
            "`{k}` needs {} numbers",
            self.names.len()
        );
        Ok(v)
    }

    /// Key `k`'s first number.
    fn one(&self, k: &str) -> anyhow::Result<f64> {
        self.nums(k)?
            .first()
            .copied()
            .with_context(|| format!("`{k}` is empty"))
    }

    /// The model, once every line is read: the lines every version has, then the version's
    /// own.
    fn finish(mut self) -> anyhow::Result<Model> {
        let (version, names) = (self.version, self.names);
        let feats = self.kv.get("features").context("missing `features`")?;
        anyhow::ensure!(
            feats.as_slice() == names,
            "the model's features {feats:?} are not version {version}'s {names:?}"
        );
        let split = self.kv.get("split").context("missing `split`")?;
        anyhow::ensure!(split.len() == 2, "`split` needs test fraction and seed");
        let mut m = Model {
            version,
            ensembles: Vec::new(),
            impute: Vec::new(),
            logistic: None,
            test_fraction: split[0].parse().context("`split`: bad test fraction")?,
            seed: split[1].parse().context("`split`: bad seed")?,
            train_before_day: match self.kv.get("train_before_day").and_then(|v| v.first()) {
                Some(&"none") | None => None,
                Some(d) => Some(d.parse().context("`train_before_day`: bad day")?),
            },
            trained_on: std::mem::take(&mut self.trained_on),
            drive_models: std::mem::take(&mut self.drive_models),
            fleet: DriveModel {
                name: String::new(),
                rate_log: 0.0,
                median_hours: 0.0,
                tails: vec![Vec::new(); TAILS],
            },
        };
        if version == 1 {
            let lr = Logistic {
                weights: self.sized("weights")?,
                intercept: self.one("intercept")?,
                mean: self.sized("mean")?,
                std: self.sized("std")?,
            };
            anyhow::ensure!(lr.std.iter().all(|s| *s > 0.0), "`std` must be positive");
            m.logistic = Some(lr);
        } else {
            m.impute = self.sized("impute")?;
            m.fleet = self.fleet.take().context("missing `fleet`")?;
            for (k, e) in self.ensembles.iter().enumerate() {
                anyhow::ensure!(self.declared[k], "missing `ensemble {k}`");
                anyhow::ensure!(!e.trees.is_empty(), "ensemble {k} has no trees");
            }
            m.ensembles = self.ensembles;
        }
        Ok(m)
    }
}
