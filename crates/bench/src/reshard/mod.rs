//! `foreshard-bench reshard`: what access-pattern re-sharding buys on a real block trace
//! (co-accessed pairs across shards, bytes one disk failure forces to be rebuilt for the hot
//! working set), before and after `foreshard reshard --wait`; what the migration costs; what
//! the access analyzer costs (the port of scripts/bench-reshard).

pub mod analyze;
pub mod report;
mod run;

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::peers::{Config, Kind};
use crate::results::{self, Host, Params, Results, Sample};
use crate::teardown::Teardown;
use crate::{cmd, io, mounts, ratios, tools};

pub const REPLICAS: u32 = 2;
pub const EXTENT_SIZE: &str = "1MiB";
/// The shared data directory's trace, relative to the repository.
const DEFAULT_TRACE: &str = "../shared/data/traces/hp_hplajw_1week.csv.gz";

#[derive(clap::Args, Debug)]
#[command(after_help = include_str!("about.txt"))]
pub struct ReshardArgs {
    /// Block trace to replay [default: the shared data directory's hp_hplajw_1week.csv.gz;
    /// when that default is missing the benchmark prints "skipped" and exits 0]. Read in
    /// place, e.g. fixtures/planted.csv.gz.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Backing disks (at least 2).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(2..=64))]
    pub disks: u64,
    /// Size of each disk image (sparse; at least 64M).
    #[arg(long, default_value = "2G")]
    pub disk_size: String,
    /// Repeat everything N times on fresh pools; medians, and every run in the JSON.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub runs: u32,
    /// Work directory (--work: the script's name for it).
    #[arg(
        long,
        alias = "work",
        default_value = "/var/tmp/foreshard-bench-reshard"
    )]
    pub dir: PathBuf,
    /// Write results as JSON here [default: DIR/results.json]; "-": to stdout (the report
    /// then goes to stderr).
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-")]
    pub json: Option<PathBuf>,
    /// Keep the raw JSON of every run (replay, heat, shards, status, reshard, fsck,
    /// before/after) in DIR.
    #[arg(long, value_name = "DIR")]
    pub raw: Option<PathBuf>,
    /// foreshard binary [default: $FORESHARD, else $CARGO_TARGET_DIR/release/foreshard].
    #[arg(long, value_name = "BIN")]
    pub foreshard: Option<PathBuf>,
    /// Extra 'foreshard mount' options, split on spaces [default: $FS_MOUNT_ARGS], e.g.
    /// "--shard-size-max 16MiB --shard-size-min 2MiB" for fixtures/planted.csv.gz.
    #[arg(long, value_name = "ARGS")]
    pub mount_args: Option<String>,
    /// Also write the report into this document's bench:reshard section.
    #[arg(long, value_name = "DOC")]
    pub render: Option<PathBuf>,
}

fn trace_of(a: &ReshardArgs) -> anyhow::Result<Option<PathBuf>> {
    let t = match &a.trace {
        Some(t) if !t.is_file() => bail!("--trace {}: no such file", t.display()),
        Some(t) => t.clone(),
        None => {
            let t = io::repo_root().join(DEFAULT_TRACE);
            if !t.exists() {
                return Ok(None);
            }
            t
        }
    };
    Ok(Some(std::fs::canonicalize(&t)?))
}

pub fn run(a: ReshardArgs) -> anyhow::Result<()> {
    let Some(trace) = trace_of(&a)? else {
        let t = io::repo_root().join(DEFAULT_TRACE);
        println!("foreshard-bench reshard: skipped: the default trace {} is not there (use --trace FILE, e.g. fixtures/planted.csv.gz)", t.display());
        return Ok(());
    };
    let disk_bytes = io::parse_size(&a.disk_size)?;
    if disk_bytes < 64 << 20 {
        bail!("--disk-size {} is too small (at least 64M)", a.disk_size);
    }
    io::need_root("must run as root (loop devices, mounts)")?;
    tools::ensure(&[tools::FUSE3, tools::EXT4])?;
    let bin = io::foreshard_given(a.foreshard.as_deref())?;
    let stats = trace_stats(&bin, &trace)?;
    let date = cmd::Cmd::new("date").arg("-Is").ok().unwrap_or_default();
    let work = io::work_dir(&a.dir)?;
    let mut td = Teardown::new();
    mounts::sweep(&work, Some(&bin)).context("cannot clean up leftovers")?;
    io::setup_work(&work, Some(bin.clone()), &mut td)?;
    let mount_args = a
        .mount_args
        .clone()
        .or_else(|| std::env::var("FS_MOUNT_ARGS").ok())
        .unwrap_or_default();
    let ctx = run::Ctx {
        bin,
        work,
        trace,
        requests: stats["requests"].as_u64().unwrap_or(0),
        ndisks: a.disks as usize,
        disk_bytes,
        mount_args: crate::pool::split_args(&mount_args),
        raw: a.raw.clone(),
    };
    let mut metrics = Vec::new();
    for r in 1..=a.runs {
        metrics.push(run::once(&ctx, r, a.runs, &mut td)?);
    }
    let host = io::host(
        date.trim(),
        ctx.ndisks,
        metrics[0]["disk_kind"].as_str().unwrap_or("?").into(),
        io::fuse_uring(true),
    );
    let r = results_of(&a, &ctx, stats, metrics, host);
    finish(&r, &ctx, a.json.as_deref(), a.render.as_deref())
}

fn finish(
    r: &Results,
    ctx: &run::Ctx,
    json: Option<&std::path::Path>,
    doc: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if json == Some(std::path::Path::new("-")) {
        eprint!("{}", crate::render::text(r));
        println!("{}", serde_json::to_string_pretty(r)?);
        return doc.map_or(Ok(()), |d| crate::render_into(r, d));
    }
    let path = json
        .map(PathBuf::from)
        .unwrap_or_else(|| ctx.work.join("results.json"));
    io::finish(r, &path, doc)
}

/// `foreshard trace stats TRACE --json`; the trace must have requests.
fn trace_stats(bin: &std::path::Path, trace: &std::path::Path) -> anyhow::Result<Value> {
    let out = cmd::Cmd::new(bin)
        .args(["trace", "stats"])
        .arg(trace)
        .arg("--json")
        .ok();
    let out = out.with_context(|| {
        format!(
            "foreshard trace stats {} failed (not a trace?)",
            trace.display()
        )
    })?;
    let v: Value =
        serde_json::from_str(&out).context("foreshard trace stats --json printed no JSON")?;
    if v["requests"].as_u64().unwrap_or(0) == 0 {
        bail!("trace {} has no requests", trace.display());
    }
    Ok(v)
}

/// (test, metrics path, scale) of the samples: before/after, and the run's own.
fn sample_paths() -> Vec<(&'static str, &'static str, f64)> {
    const MIB: f64 = 1.0 / 1048576.0;
    vec![
        ("cross_pairs", "pairs.W.cross", 1.0),
        ("cross_fraction", "pairs.W.cross_fraction", 100.0),
        (
            "cross_fraction_weighted",
            "pairs.W.cross_fraction_weighted",
            100.0,
        ),
        ("groups_split", "groups.W.split", 1.0),
        ("shards_per_group", "groups.W.shards_per_group_mean", 1.0),
        ("rebuild_median_mib", "rebuild.W.median_bytes", MIB),
        ("rebuild_max_mib", "rebuild.W.max_bytes", MIB),
        (
            "rebuild_median_nominal_mib",
            "rebuild.W.median_bytes_nominal",
            MIB,
        ),
        (
            "rebuild_max_nominal_mib",
            "rebuild.W.max_bytes_nominal",
            MIB,
        ),
        (
            "rebuild_all_median_mib",
            "rebuild.W.median_bytes_all_shards",
            MIB,
        ),
        ("shards", "shards.W.shards", 1.0),
        ("shards_with_hot", "shards.W.shards_with_hot", 1.0),
        ("hot_mib", "hot.bytes", MIB),
        ("bytes_moved_mib", "migration.bytes_moved", MIB),
        ("bytes_copied_mib", "migration.bytes_copied", MIB),
        ("migration_s", "migration.elapsed_s", 1.0),
        ("copy_rate_mibs", "migration.rate_bytes_per_s", MIB),
        ("gib_per_hour", "migration.bytes_per_hour", MIB / 1024.0),
        ("events_applied", "analyzer.events_applied", 1.0),
        ("analyzer_memory_kib", "analyzer.memory_bytes", 1.0 / 1024.0),
        (
            "analyzer_memory_max_kib",
            "analyzer.memory_bytes_max",
            1.0 / 1024.0,
        ),
        ("extents_tracked", "analyzer.extents_tracked", 1.0),
        ("pairs_tracked", "analyzer.pairs_tracked", 1.0),
        ("cpu_us_per_event", "analyzer.cpu_us_per_event", 1.0),
    ]
}

/// The samples of one run's metrics.
pub fn samples_of(m: &Value, round: u32) -> Vec<Sample> {
    let mut v = Vec::new();
    for (test, path, scale) in sample_paths() {
        let sides: &[&str] = if path.contains(".W.") {
            &["before", "after"]
        } else {
            &["run"]
        };
        for side in sides {
            if let Some(x) = analyze::num(m, &path.replace(".W.", &format!(".{side}."))) {
                let unit = results::unit_of(test).into();
                v.push(Sample {
                    config: side.to_string(),
                    test: test.into(),
                    round,
                    value: x * scale,
                    unit,
                });
            }
        }
    }
    v
}

fn results_of(
    a: &ReshardArgs,
    ctx: &run::Ctx,
    stats: Value,
    metrics: Vec<Value>,
    host: Host,
) -> Results {
    let samples: Vec<Sample> = metrics
        .iter()
        .zip(1..)
        .flat_map(|(m, r)| samples_of(m, r))
        .collect();
    let version = cmd::version_of(&ctx.bin.to_string_lossy(), &["--version"]);
    let detail = format!("{} ({version})", ctx.bin.display());
    let c = |name: &str, detail: String| Config {
        name: name.into(),
        kind: Kind::Foreshard,
        replicas: REPLICAS as u8,
        no_access: false,
        devfuse: false,
        before: false,
        detail,
    };
    let configs = vec![
        c("before", detail),
        c("after", String::new()),
        c("run", String::new()),
    ];
    let summary = ratios::summarize("reshard", &configs, &samples);
    let params = Params {
        runs: a.runs,
        command: io::command_line(),
        ..Params::default()
    };
    let mut r = Results::new(
        "reshard",
        io::commit(),
        host,
        params,
        configs,
        samples,
        summary,
    );
    let setup = json!({"trace": ctx.trace, "disk_bytes": ctx.disk_bytes, "replicas": REPLICAS,
        "extent_size": EXTENT_SIZE, "mount_args": format!("--reshard-interval-s 0 {}", ctx.mount_args.join(" ")).trim(),
        "replay": "--fast --direct --verify"});
    r.extra.insert("setup".into(), setup);
    r.extra.insert("trace_stats".into(), stats);
    r.extra.insert("runs".into(), Value::Array(metrics));
    r
}
