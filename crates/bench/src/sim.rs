//! `foreshard-bench sim`: the fleet simulator at the size issue 6 asks for: `foreshard sim`
//! over 10,000 disks x 5 years generated from the shared Backblaze sample, its wall time
//! (the target: under a minute on a 2-core machine) and the policy table (the port of
//! scripts/bench-sim).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::peers::{Config, Kind};
use crate::render::{target_lines, Part, Table};
use crate::results::{self, Host, Params, Results, Sample, SIM_TESTS};
use crate::{cmd, io, log, ratios};

/// The shared data directory's sample, relative to the repository.
const DEFAULT_HEALTH: &str = "../shared/data/smart/backblaze_2013_sample.csv.gz";

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Runs 'foreshard sim --disks N --years Y --health FILE --seed S --json', which compares the
placement policies random, copyset, risk and risk+evacuate on one generated fleet (every disk
follows real drives' daily histories from FILE, failing when they failed), and reports its wall
time and the policy table. Fails when the simulation fails; a wall time of 60 s or more is a
MISS of the (informative) target. Needs no root. Data: Backblaze Hard Drive Data and Stats
(https://www.backblaze.com/cloud-storage/resources/hard-drive-test-data)."
)]
pub struct SimArgs {
    /// Backblaze-format daily SMART file [default: the shared data directory's
    /// backblaze_2013_sample.csv.gz; when that default is missing the benchmark prints
    /// "skipped" and exits 0]. Read in place.
    #[arg(long, value_name = "FILE")]
    pub health: Option<PathBuf>,
    /// Disks in the fleet.
    #[arg(long, default_value_t = 10000, value_parser = clap::value_parser!(u64).range(1..))]
    pub disks: u64,
    /// Simulated years.
    #[arg(long, default_value_t = 5.0)]
    pub years: f64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also write the bar chart to OUT.
    #[arg(long, value_name = "OUT")]
    pub svg: Option<PathBuf>,
    /// Write results as JSON here (foreshard sim's own JSON is under "extra").
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/var/tmp/foreshard-bench-sim.json"
    )]
    pub json: PathBuf,
    /// scripts/bench-sim: use the binary as it is (the harness never builds).
    #[arg(long)]
    pub no_build: bool,
    /// foreshard binary [default: $FORESHARD, else $CARGO_TARGET_DIR/release/foreshard].
    #[arg(long, value_name = "BIN")]
    pub foreshard: Option<PathBuf>,
    /// Also write the report into this document's bench:sim section.
    #[arg(long, value_name = "DOC")]
    pub render: Option<PathBuf>,
    /// Extra 'foreshard sim' options, after --.
    #[arg(last = true)]
    pub extra: Vec<String>,
}

pub fn run(a: SimArgs) -> anyhow::Result<()> {
    if a.years.is_nan() || a.years <= 0.0 {
        bail!("--years must be a positive number");
    }
    let health = match &a.health {
        Some(h) if !h.exists() => bail!("--health {}: no such file", h.display()),
        Some(h) => h.clone(),
        None => {
            let h = io::repo_root().join(DEFAULT_HEALTH);
            if !h.exists() {
                println!("foreshard-bench sim: skipped: the Backblaze sample {} is not there (use --health FILE)", h.display());
                return Ok(());
            }
            h
        }
    };
    let bin = io::foreshard_given(a.foreshard.as_deref())?;
    let date = cmd::Cmd::new("date").arg("-Is").ok().unwrap_or_default();
    let (years, disks, seed) = (a.years.to_string(), a.disks.to_string(), a.seed.to_string());
    let mut args: Vec<String> = ["sim", "--disks", &disks, "--years", &years, "--seed", &seed]
        .map(String::from)
        .into();
    args.extend(["--health".into(), health.display().to_string()]);
    if let Some(svg) = &a.svg {
        args.extend(["--svg".into(), svg.display().to_string()]);
    }
    args.extend(a.extra.iter().cloned());
    args.push("--json".into());
    log!("foreshard {}", args.join(" "));
    let t = Instant::now();
    let out = cmd::Cmd::new(&bin)
        .args(&args)
        .ok()
        .context("foreshard sim failed")?;
    let wall_s = t.elapsed().as_secs_f64();
    let sim: Value = serde_json::from_str(&out).context("foreshard sim --json printed no JSON")?;
    log!(
        "wall time {wall_s:.3} s for {disks} disks x {years} years on {} cores",
        io::nproc()
    );
    let host = io::host(date.trim(), 0, String::new(), String::new());
    let r = results_of(&bin, sim, wall_s, host)?;
    io::finish(&r, &a.json, a.render.as_deref())
}

/// The samples of one simulation: per policy, and the wall time as configuration "sim".
pub fn samples_of(sim: &Value, wall_s: f64) -> anyhow::Result<Vec<Sample>> {
    let policies = sim["policies"]
        .as_array()
        .context("foreshard sim --json has no policies")?;
    let mut v = Vec::new();
    let mut push = |config: &str, test: &str, value: Option<f64>| {
        if let Some(value) = value {
            let unit = results::unit_of(test).into();
            v.push(Sample {
                config: config.into(),
                test: test.into(),
                round: 1,
                value,
                unit,
            });
        }
    };
    for p in policies {
        let name = p["name"].as_str().context("a policy without a name")?;
        let f = |k: &str| p[k].as_f64();
        let tb = |k: &str| f(k).map(|b| b / 1e12);
        for (test, value) in [
            ("data_loss_events", f("data_loss_events")),
            ("expected_data_loss_events", f("expected_data_loss_events")),
            ("degraded_tb_hours", tb("degraded_byte_hours")),
            ("rebuilt_tb", tb("rebuilt_bytes")),
            ("migrated_tb", tb("migrated_bytes")),
            ("failures", f("failures")),
            ("evacuations_started", f("evacuations_started")),
            ("failures_after_evacuation", f("failures_after_evacuation")),
            ("mean_repair_hours", f("mean_repair_hours")),
        ] {
            push(name, test, value);
        }
    }
    push("sim", "wall_s", Some(wall_s));
    Ok(v)
}

fn results_of(bin: &Path, sim: Value, wall_s: f64, host: Host) -> anyhow::Result<Results> {
    let samples = samples_of(&sim, wall_s)?;
    let mut names: Vec<String> = Vec::new();
    for s in &samples {
        if !names.contains(&s.config) {
            names.push(s.config.clone());
        }
    }
    let version = cmd::version_of(&bin.to_string_lossy(), &["--version"]);
    let configs: Vec<Config> = names
        .into_iter()
        .map(|name| Config {
            detail: if name == "sim" {
                format!("{} ({version})", bin.display())
            } else {
                String::new()
            },
            name,
            kind: Kind::Foreshard,
            replicas: sim["params"]["replicas"].as_u64().unwrap_or(0) as u8,
            no_access: false,
            devfuse: false,
            before: false,
        })
        .collect();
    let summary = ratios::summarize("sim", &configs, &samples);
    let params = Params {
        runs: 1,
        command: io::command_line(),
        ..Params::default()
    };
    let mut r = Results::new("sim", io::commit(), host, params, configs, samples, summary);
    r.extra.insert("sim".into(), sim);
    Ok(r)
}

/// The fleet, the parameters and the wall time.
fn header(r: &Results) -> Vec<Part> {
    let (sim, fleet, p) = (
        &r.extra["sim"],
        &r.extra["sim"]["fleet"],
        &r.extra["sim"]["params"],
    );
    let pct = |k: &str| {
        fleet[k]
            .as_f64()
            .map_or("-".into(), |v| format!("{:.2}%", v * 100.0))
    };
    let wall = r.median("wall_s", "sim");
    vec![
        Part::Line(format!("foreshard fleet simulator benchmark: nproc={} kernel={} date={}", r.host.nproc, r.host.kernel, r.host.date)),
        Part::Line(format!(
            "{} disks x {} years, {} replicas, {:.0} GiB shards, {:.1} TB disks {:.0}% full, seed {}",
            fleet["disks"], fleet["years"], p["replicas"], p["shard_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 30) as f64,
            p["capacity_bytes"].as_f64().unwrap_or(0.0) / 1e12, p["fill"].as_f64().unwrap_or(0.0) * 100.0, p["seed"]
        )),
        Part::Line(format!("fleet: {} failures, annualized {} (the file's {}); data: {}", fleet["failures"], pct("fleet_afr"), pct("file_afr"), sim["data"].as_str().unwrap_or("?"))),
        Part::Line(format!(
            "wall time {} s ('simulated in' {:.2} s); commit {}",
            wall.map_or("-".into(), |w| format!("{w:.2}")), sim["elapsed_s"].as_f64().unwrap_or(0.0), r.commit.as_deref().unwrap_or("?")
        )),
    ]
}

/// The report: the fleet, the wall time, the policy table (a row per policy), targets.
pub fn parts(r: &Results) -> Vec<Part> {
    let mut v = header(r);
    v.push(Part::Gap);
    let tests = &SIM_TESTS[..9];
    let mut head = vec!["policy".to_string()];
    head.extend(tests.iter().map(|t| t.1.trim().to_string()));
    let rows = r
        .configs
        .iter()
        .filter(|c| c.name != "sim")
        .map(|c| {
            let mut row = vec![c.name.clone()];
            row.extend(tests.iter().map(|t| {
                let d = if t.0 == "expected_data_loss_events" {
                    4
                } else if t.0 == "mean_repair_hours" {
                    2
                } else if t.2 == "events" || t.2 == "disks" {
                    0
                } else {
                    1
                };
                r.median(t.0, &c.name)
                    .map_or("-".into(), |v| format!("{v:.d$}"))
            }));
            row
        })
        .collect();
    v.push(Part::Table(Table { head, rows }));
    v.push(Part::Gap);
    for s in &r.summary {
        if let results::Summary::Ratio {
            test,
            name,
            of_medians: Some(x),
            ..
        } = s
        {
            v.push(Part::Line(format!(
                "{name} {}: {x:.2}",
                test.replace('_', " ")
            )));
        }
    }
    v.push(Part::Gap);
    v.push(Part::Line("targets (informative):".into()));
    v.extend(
        target_lines(r)
            .into_iter()
            .map(|l| Part::Line(format!("  {l}"))),
    );
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_become_samples_in_tb_and_the_wall_time_a_sample_of_sim() {
        let sim: Value = serde_json::from_str(
            r#"{"policies": [{"name": "random", "data_loss_events": 0, "degraded_byte_hours": 2.5e12,
                "rebuilt_bytes": 8.8e13, "migrated_bytes": 0, "expected_data_loss_events": 0.16},
                {"name": "risk+evacuate", "data_loss_events": 0, "degraded_byte_hours": 1.25e12,
                "rebuilt_bytes": 4.4e13, "migrated_bytes": 1e14, "expected_data_loss_events": 0.04}]}"#,
        )
        .unwrap();
        let s = samples_of(&sim, 3.2).unwrap();
        let get = |c: &str, t: &str| {
            s.iter()
                .find(|x| x.config == c && x.test == t)
                .map(|x| x.value)
        };
        assert_eq!(get("random", "degraded_tb_hours"), Some(2.5));
        assert_eq!(get("risk+evacuate", "migrated_tb"), Some(100.0));
        assert_eq!(get("sim", "wall_s"), Some(3.2));
        assert_eq!(get("random", "failures"), None);
        let r = results_of(
            Path::new("/nonexistent/foreshard"),
            sim,
            3.2,
            Host::default(),
        )
        .unwrap();
        let ratio = r.summary.iter().find_map(|x| match x {
            results::Summary::Ratio {
                test, of_medians, ..
            } if test == "expected_data_loss_events" => *of_medians,
            _ => None,
        });
        assert!((ratio.unwrap() - 0.25).abs() < 1e-12);
        let status = r.summary.iter().find_map(|x| match x {
            results::Summary::Target { status, .. } => Some(status.clone()),
            _ => None,
        });
        assert_eq!(status.as_deref(), Some("PASS"));
        assert!(samples_of(&Value::Null, 1.0).is_err());
    }
}
