//! `foreshard sim`: a discrete-event simulation of a fleet of disks over years, comparing
//! placement policies at equal repair bandwidth, with the daemon's own placement rule
//! (`placement`), failure model (`risk::model`) and shard loss / repair-time functions
//! (`risk::shard`).
//!
//! Disk health and failures come from a Backblaze-format file (data: Backblaze Hard Drive Data
//! and Stats, https://www.backblaze.com/cloud-storage/resources/hard-drive-test-data): every
//! simulated disk follows real drives' daily histories one after another (`fleet.rs`), so the
//! failure rate is the file's and the risk scores before each failure are the real drive's.
//! By default only drives the model was not trained on are used, so the risk-aware policies
//! are not scored on the model's own training data. The simulation itself is in `engine.rs`,
//! the table, JSON and SVG in `report.rs`.

mod engine;
mod fleet;
mod report;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;

pub use engine::{Outcome, Params, Policy};
pub use fleet::{Fleet, Health};

pub const BACKBLAZE_URL: &str =
    "https://www.backblaze.com/cloud-storage/resources/hard-drive-test-data";

const BYTES_PER_TB: f64 = 1e12;
const BYTES_PER_MB: f64 = 1e6;
const BYTES_PER_GIB: f64 = (1u64 << 30) as f64;
/// Upper bounds that keep a run's memory and time sane.
const DISKS_MAX: usize = 1_000_000;
const YEARS_MAX: f64 = 100.0;

/// What `foreshard sim --help` says after the options.
const HELP_AFTER: &str = "\
Every disk follows the daily SMART history of a randomly drawn real drive from FILE, then of \
another, and fails when that drive failed (a fresh empty disk then replaces it), so the fleet's \
failure rate is the file's and the risk scores before each failure are real. By default only \
drives the failure model was not trained on are drawn.

Policies, on the same fleet and failures, at equal repair bandwidth:
  random         replicas on random distinct disks (creation and repair targets)
  copyset        replicas only inside a copyset (Cidon et al., USENIX ATC 2013)
  risk           the daemon's placement rule (placement::place) on current disk risks,
                 over a random sample of --sample disks per placement
  risk+evacuate  risk, plus: a disk whose risk reaches --evacuate-p takes no new data and its
                 shards are copied away (highest shard loss risk first) under
                 --evacuate-rate-mb-s

Data: Backblaze Hard Drive Data and Stats
(https://www.backblaze.com/cloud-storage/resources/hard-drive-test-data).";

#[derive(clap::Args, Debug, Clone)]
#[command(after_long_help = HELP_AFTER)]
pub struct SimArgs {
    /// Disks in the fleet.
    #[arg(long)]
    pub disks: usize,
    /// Simulated time in years.
    #[arg(long)]
    pub years: f64,
    /// Backblaze-format daily SMART file (CSV, plain or gzip) the fleet is generated from.
    #[arg(long, value_name = "FILE")]
    pub health: PathBuf,
    /// Seed: the same seed gives the same fleet, failures and results.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Also write a bar chart of the results as SVG to OUT.
    #[arg(long, value_name = "OUT")]
    pub svg: Option<PathBuf>,
    /// Failure model file (default: fixtures/risk-model.txt, built into the binary).
    #[arg(long, value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// Replicas per shard.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// Capacity of each disk in TB (10^12 bytes).
    #[arg(long, default_value_t = 4.0)]
    pub capacity_tb: f64,
    /// Share of the fleet's capacity filled with replicas at the start.
    #[arg(long, default_value_t = 0.7)]
    pub fill: f64,
    /// Shard size in GiB (the unit of placement and repair).
    #[arg(long, default_value_t = 64.0)]
    pub shard_size_gib: f64,
    /// Repair copy rate of one shard stream in MB/s (the same for every policy).
    #[arg(long, default_value_t = 100.0)]
    pub repair_rate_mb_s: f64,
    /// Repair streams a disk takes part in at once, as source or target (per-disk repair
    /// bandwidth = this x --repair-rate-mb-s).
    #[arg(long, default_value_t = 2)]
    pub repair_streams: usize,
    /// Time from a disk failure to its repairs starting, in seconds.
    #[arg(long, default_value_t = 300.0)]
    pub detect_s: f64,
    /// Warning threshold on P(fail within 30 days): placement puts a shard's replicas on
    /// disks at or above it only when nothing else is left (the daemon's rule and default).
    #[arg(long, default_value_t = 0.06)]
    pub risk_warn: f64,
    /// Evacuation threshold on P(fail within 30 days) (risk+evacuate); the daemon's default,
    /// about the shipped model's 0.5% false-alarm point per drive on held-out drives.
    #[arg(long, default_value_t = 0.12)]
    pub evacuate_p: f64,
    /// Migration budget of an evacuating disk in MB/s (one shard copy at a time).
    #[arg(long, default_value_t = 50.0)]
    pub evacuate_rate_mb_s: f64,
    /// Copyset scatter: permutations of the disks cut into copysets (each disk is in this
    /// many copysets).
    #[arg(long, default_value_t = 4)]
    pub scatter: usize,
    /// Disks sampled per risk-aware placement; the daemon's rule picks the best of them.
    #[arg(long, default_value_t = 32)]
    pub sample: usize,
    /// Storage hosts; disk d is on host d mod N. Random and risk placement put a shard's
    /// replicas on distinct hosts while enough have room; copysets ignore hosts. Hosts do
    /// not fail here, only disks.
    #[arg(long, default_value_t = 1)]
    pub hosts: usize,
    /// Generate the fleet from every drive in FILE, also those the model was trained on
    /// (default: only the held-out drives, so risk is not scored on training data).
    #[arg(long)]
    pub all_drives: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct FleetSummary {
    pub disks: usize,
    pub years: f64,
    pub days: u32,
    pub failures: u64,
    /// Failures per disk-year of the simulated fleet, and of the file's drives used.
    pub fleet_afr: f64,
    pub file_afr: f64,
    pub drives_in_file: usize,
    pub drives_used: usize,
    pub failing_drives_used: usize,
    /// Only drives the model was not trained on were used.
    pub held_out_only: bool,
    pub health_file: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    pub policies: Vec<Outcome>,
    pub fleet: FleetSummary,
    pub params: Params,
    pub data: String,
    pub elapsed_s: f64,
}

impl SimArgs {
    fn params(&self) -> anyhow::Result<Params> {
        ensure!(
            (1..=DISKS_MAX).contains(&self.disks),
            "--disks must be between 1 and {DISKS_MAX}"
        );
        ensure!(self.replicas >= 1, "--replicas must be at least 1");
        ensure!(
            self.replicas <= self.disks,
            "--replicas {} needs at least {} disks (--disks {})",
            self.replicas,
            self.replicas,
            self.disks
        );
        ensure!(
            self.years > 0.0 && self.years <= YEARS_MAX,
            "--years must be above 0 and at most {YEARS_MAX}"
        );
        ensure!(
            self.fill > 0.0 && self.fill < 1.0,
            "--fill must be above 0 and below 1"
        );
        ensure!(
            self.capacity_tb > 0.0 && self.capacity_tb.is_finite(),
            "--capacity-tb must be positive"
        );
        ensure!(
            self.shard_size_gib > 0.0
                && self.shard_size_gib * BYTES_PER_GIB <= self.capacity_tb * BYTES_PER_TB,
            "--shard-size-gib must be positive and fit on a disk (--capacity-tb)"
        );
        for (name, v) in [
            ("--repair-rate-mb-s", self.repair_rate_mb_s),
            ("--evacuate-rate-mb-s", self.evacuate_rate_mb_s),
        ] {
            ensure!(v > 0.0 && v.is_finite(), "{name} must be positive");
        }
        ensure!(
            self.repair_streams >= 1,
            "--repair-streams must be at least 1"
        );
        ensure!(
            self.detect_s >= 0.0 && self.detect_s.is_finite(),
            "--detect-s must be 0 or more"
        );
        for (name, v) in [
            ("--risk-warn", self.risk_warn),
            ("--evacuate-p", self.evacuate_p),
        ] {
            ensure!(v > 0.0 && v <= 1.0, "{name} must be above 0 and at most 1");
        }
        ensure!(self.scatter >= 1, "--scatter must be at least 1");
        ensure!(self.sample >= 1, "--sample must be at least 1");
        ensure!(
            (1..=self.disks).contains(&self.hosts),
            "--hosts must be between 1 and --disks"
        );
        Ok(Params {
            disks: self.disks,
            replicas: self.replicas,
            capacity_bytes: (self.capacity_tb * BYTES_PER_TB) as u64,
            fill: self.fill,
            shard_bytes: (self.shard_size_gib * BYTES_PER_GIB) as u64,
            repair_bytes_per_s: self.repair_rate_mb_s * BYTES_PER_MB,
            repair_streams: self.repair_streams,
            detect_s: self.detect_s,
            risk_warn: self.risk_warn,
            evacuate_p: self.evacuate_p,
            evacuate_bytes_per_s: self.evacuate_rate_mb_s * BYTES_PER_MB,
            scatter: self.scatter,
            sample: self.sample,
            hosts: self.hosts,
            seed: self.seed,
            check_invariants: false,
        })
    }
}

/// Runs every policy on the same generated fleet.
pub fn simulate(args: &SimArgs) -> anyhow::Result<SimReport> {
    let params = args.params()?;
    simulate_with(args, params)
}

fn simulate_with(args: &SimArgs, params: Params) -> anyhow::Result<SimReport> {
    let started = Instant::now();
    let model = fleet::load_model(args.model.as_deref())?;
    let health = Health::load(&args.health, &model, args.all_drives)
        .with_context(|| format!("--health {}", args.health.display()))?;
    let days = fleet::days_for_years(args.years);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let fleet = Fleet::generate(&health, params.disks, days, &mut rng);
    // One thread per policy: they share the fleet read-only and are independent.
    let policies: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = Policy::ALL
            .iter()
            .map(|pol| {
                let (params, health, fleet) = (&params, &health, &fleet);
                s.spawn(move || engine::run(params, *pol, health, fleet))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a policy's simulation panicked"))
            .collect()
    });
    Ok(SimReport {
        fleet: FleetSummary {
            disks: params.disks,
            years: args.years,
            days,
            failures: fleet.failures,
            fleet_afr: fleet.afr(),
            file_afr: health.file_afr,
            drives_in_file: health.drives_in_file,
            drives_used: health.drives(),
            failing_drives_used: health.failing_drives(),
            held_out_only: health.held_out_only,
            health_file: args.health.display().to_string(),
        },
        policies,
        params,
        data: format!("Backblaze Hard Drive Data and Stats, {BACKBLAZE_URL}"),
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

pub fn run(args: SimArgs) -> anyhow::Result<i32> {
    let r = simulate(&args)?;
    if let Some(out) = &args.svg {
        std::fs::write(out, report::svg(&r))
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", report::table(&r));
        if let Some(out) = &args.svg {
            println!("chart written to {}", out.display());
        }
    }
    Ok(0)
}
