//! `foreshard risk train|score|eval`: the failure model's own commands (no pool needed).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

use foreshard::risk::model::{self, evaluate, read, Model};

#[derive(Subcommand)]
pub enum RiskCmd {
    /// Fit the model on a Backblaze-format CSV (plain or gzip); held-out drives are kept
    /// aside (by a hash of the serial) for `eval`.
    Train {
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Share of drives held out for evaluation.
        #[arg(long, default_value_t = 0.3)]
        test_fraction: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Train only on days before this date (YYYY-MM-DD); eval then scores later days.
        #[arg(long)]
        train_before: Option<String>,
    },
    /// Score every row: CSV serial_number,date,p_fail_30d (each row from that drive's rows up
    /// to that day only).
    Score { model: PathBuf, data: PathBuf },
    /// Per-drive evaluation on the drives the model never saw.
    Eval {
        model: PathBuf,
        data: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn load(path: &PathBuf) -> anyhow::Result<Model> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    Model::from_text(&text).with_context(|| format!("{}: not a usable model", path.display()))
}

pub fn run(cmd: RiskCmd) -> anyhow::Result<i32> {
    match cmd {
        RiskCmd::Train {
            data,
            out,
            test_fraction,
            seed,
            train_before,
        } => train(&data, &out, test_fraction, seed, train_before.as_deref())?,
        RiskCmd::Score { model, data } => {
            let m = load(&model)?;
            let d = read(&data)?;
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            writeln!(w, "serial_number,date,p_fail_30d")?;
            for (serial, i) in &d.order {
                let rows = &d.drives[serial];
                let (p, _) = m.score(rows, *i, d.models.get(serial));
                writeln!(w, "{serial},{},{p:.6}", rows[*i].date)?;
            }
            w.flush()?;
        }
        RiskCmd::Eval { model, data, json } => eval(&model, &data, json)?,
    }
    Ok(0)
}

fn train(
    data: &Path,
    out: &Path,
    test_fraction: f64,
    seed: u64,
    train_before: Option<&str>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.0..1.0).contains(&test_fraction),
        "--test-fraction must be in [0, 1)"
    );
    let before = match train_before {
        Some(d) => Some(model::parse_day(d).with_context(|| format!("--train-before {d:?}"))?),
        None => None,
    };
    let d = read(data)?;
    let name = data
        .file_name()
        .map_or("?".into(), |n| n.to_string_lossy().into_owned());
    let m = Model::train(&d, test_fraction, seed, before, &name)?;
    std::fs::write(out, m.to_text()).with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!(
        "trained on {} drives ({} attributes found: {:?}); model written to {}",
        d.drives.len(),
        d.columns_found.len(),
        d.columns_found,
        out.display()
    );
    Ok(())
}

fn eval(model: &PathBuf, data: &Path, json: bool) -> anyhow::Result<()> {
    let m = load(model)?;
    let d = read(data)?;
    let e = evaluate(&m, &d)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&e)?);
        return Ok(());
    }
    println!(
        "held-out drives: {} ({} failed); data: Backblaze drive stats format\n\
         ROC AUC {:.3}\n\
         recall at 1% false alarms {:.1}% (precision {:.1}%), at 0.1%: {:.1}%\n\
         median days from first alarm (1% rate) to failure: {}\n\
         rule 'any of 5/187/188/197/198 > 0': recall {:.1}% at {:.1}% false alarms; \
         the model at that rate: {:.1}%",
        e.drives,
        e.failed,
        e.auc,
        e.recall_at_1pct * 100.0,
        e.precision_at_1pct * 100.0,
        e.recall_at_0_1pct * 100.0,
        e.median_days_alarm_to_failure_at_1pct
            .map_or("n/a".into(), |d| format!("{d:.0}")),
        e.rule_recall * 100.0,
        e.rule_false_alarm_rate * 100.0,
        e.model_recall_at_rule_rate * 100.0
    );
    Ok(())
}
