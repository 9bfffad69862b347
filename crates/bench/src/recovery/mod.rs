//! `foreshard-bench recovery`: how fast foreshard restores redundancy after a disk is
//! yanked (pool and reactive agents), against a plain parallel copy and btrfs RAID1
//! `replace`, and how recovery shares bandwidth with a foreground reader under each
//! `--recovery-profile` (the port of scripts/bench-recovery).

mod copy;
mod data;
mod fg;
mod fs;
pub mod report;
mod timing;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::peers::{Config, Kind};
use crate::results::{self, Host, Params, Results, Sample};
use crate::teardown::Teardown;
use crate::{cmd, io, log, mounts, ratios, tools};

pub const REPLICAS: u32 = 2;
pub use fg::PROFILES;

pub const ABOUT: &str = include_str!("about.txt");

#[derive(clap::Args, Debug)]
#[command(after_help = ABOUT)]
pub struct RecoveryArgs {
    /// Data to write, e.g. 1G, 512M (at least 16M).
    #[arg(long, default_value = "1G")]
    pub size: String,
    /// Backing disks (3 to 64: 2 replicas need a third disk to re-replicate to).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(3..=64))]
    pub disks: u64,
    /// Size of each disk image (sparse) [default: max(4G, 6*D/N), D the larger of SIZE and
    /// FG_SIZE plus the client file].
    #[arg(long, value_name = "SIZE")]
    pub disk_size: Option<String>,
    /// Work directory (--work: the script's name for it).
    #[arg(
        long,
        alias = "work",
        default_value = "/var/tmp/foreshard-bench-recovery"
    )]
    pub dir: PathBuf,
    /// Repeat everything N times, report medians.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,
    /// Leave out btrfs.
    #[arg(long)]
    pub skip_btrfs: bool,
    /// Leave out both foreshard runs (the plain copy then moves 2*SIZE/N bytes) and the
    /// foreground phase.
    #[arg(long)]
    pub skip_foreshard: bool,
    /// Leave out the foreground phase.
    #[arg(long)]
    pub skip_foreground: bool,
    /// Data set of the foreground phase [default: half of --size; at least 16M]; the client
    /// file is min(1 GiB, FG_SIZE/2) on top.
    #[arg(long, value_name = "SIZE")]
    pub fg_size: Option<String>,
    /// Write results as JSON here [default: DIR/results.json].
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// scripts/bench-recovery: do not build foreshard first (the harness never builds).
    #[arg(long)]
    pub no_build: bool,
    /// foreshard binary [default: $FORESHARD, else $CARGO_TARGET_DIR/release/foreshard].
    #[arg(long, value_name = "BIN")]
    pub foreshard: Option<PathBuf>,
    /// Extra options of the recovery runs' foreshard mount, split on spaces [default:
    /// $FS_MOUNT_ARGS], e.g. "--agents-max 4 --agent-queue-depth 8".
    #[arg(long, value_name = "ARGS")]
    pub mount_args: Option<String>,
    /// Every pool is mounted with this --missing-grace-ms: 0 fails a vanished disk at once,
    /// so that detection measures the daemon, not the grace period (default 10 s).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub missing_grace_ms: u64,
    /// Also write the report into this document's bench:recovery section.
    #[arg(long, value_name = "DOC")]
    pub render: Option<PathBuf>,
}

/// The resolved sizes.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub runs: u32,
    pub ndisks: usize,
    pub file_bytes: usize,
    pub data_bytes: u64,
    /// 0 without the foreground phase.
    pub fg_file_bytes: usize,
    pub client_bytes: u64,
    pub disk_bytes: u64,
    pub fs: bool,
    pub fg: bool,
    pub btrfs: bool,
}

fn size_of(s: &str, what: &str) -> anyhow::Result<u64> {
    io::parse_size(s)
        .with_context(|| format!("{what} must look like 512M, 1G, 1GiB or a byte count, not '{s}'"))
}

pub fn plan(a: &RecoveryArgs) -> anyhow::Result<Plan> {
    let size = size_of(&a.size, "--size")?;
    if size < 16 << 20 {
        bail!("--size {} is too small (at least 16M)", a.size);
    }
    let n = a.disks as usize;
    let file_bytes = (size / data::NFILES as u64) as usize;
    let data_bytes = (file_bytes * data::NFILES) as u64;
    let fg = !a.skip_foreshard && !a.skip_foreground;
    let (mut fg_file_bytes, mut client_bytes) = (0, 0);
    if fg {
        let fgb = a
            .fg_size
            .as_deref()
            .map_or(Ok(size / 2), |s| size_of(s, "--fg-size"))?;
        if fgb < 16 << 20 {
            bail!(
                "--fg-size {} MiB is too small (at least 16M; by default half of --size)",
                fgb >> 20
            );
        }
        fg_file_bytes = (fgb / data::NFILES as u64) as usize;
        client_bytes = ((fg_file_bytes * data::NFILES) as u64 / 2).min(1 << 30) >> 20 << 20;
    }
    let max = data_bytes.max((fg_file_bytes * data::NFILES) as u64 + client_bytes);
    let disk_bytes = match &a.disk_size {
        Some(s) => size_of(s, "--disk-size")?,
        None => (6 * max / n as u64).max(4 << 30),
    };
    // After the failure the 2 replicas live on N-1 disks; room for ext4/btrfs.
    let need = 2 * max / (n as u64 - 1) + (256 << 20);
    if disk_bytes < need {
        bail!(
            "--disk-size {} MiB is too small for {} MiB of data on {n} disks (need >= {} MiB)",
            disk_bytes >> 20,
            max >> 20,
            need >> 20
        );
    }
    Ok(Plan {
        runs: a.runs,
        ndisks: n,
        file_bytes,
        data_bytes,
        fg_file_bytes,
        client_bytes,
        disk_bytes,
        fs: !a.skip_foreshard,
        fg,
        btrfs: !a.skip_btrfs,
    })
}

/// What every run needs.
pub struct Ctx {
    pub bin: Option<PathBuf>,
    pub work: PathBuf,
    pub plan: Plan,
    /// --mount-args of the recovery runs.
    pub mount_args: Vec<String>,
    pub missing_grace_ms: u64,
    pub run: u32,
}

impl Ctx {
    pub fn bin(&self) -> &Path {
        self.bin.as_deref().expect("resolved when foreshard runs")
    }
}

/// One configuration's measures in one run, and what else it saw (for the JSON).
pub struct Record {
    pub config: String,
    pub values: Vec<(&'static str, Option<f64>)>,
    pub raw: Value,
}

impl Record {
    fn new(cfg: &str, m: &timing::Measures) -> Record {
        let values = vec![
            ("detect_ms", Some(m.detect_ms)),
            ("activate_ms", m.activate_ms),
            ("full_s", Some(m.full_s)),
            ("rate_mibs", m.rate_mibs),
            ("bytes_mib", Some(m.bytes_mib)),
        ];
        Record {
            config: cfg.into(),
            values,
            raw: Value::Null,
        }
    }
}

fn preflight(a: &RecoveryArgs, p: &Plan) -> anyhow::Result<Option<PathBuf>> {
    io::need_root("must run as root (loop devices, mounts, drop_caches)")?;
    let mut needs = vec![tools::EXT4];
    if p.fs {
        needs.push(tools::FUSE3);
    }
    if p.btrfs {
        needs.push(tools::BTRFS);
    }
    if p.fg {
        needs.push(tools::FIO);
    }
    tools::ensure(&needs)?;
    if !p.fs {
        return Ok(None);
    }
    let bin = io::foreshard_given(a.foreshard.as_deref())?;
    let help = cmd::Cmd::new(&bin)
        .args(["mount", "--help"])
        .ok()
        .unwrap_or_default();
    for (flag, need) in [
        ("--agents", true),
        ("--recovery-profile", p.fg),
        ("--missing-grace-ms", true),
    ] {
        if need && !help.contains(flag) {
            bail!("{} has no 'mount {flag}' (an old build?)", bin.display());
        }
    }
    Ok(Some(bin))
}

/// Free space the run needs in the work directory's filesystem.
fn check_space(work: &Path, p: &Plan) -> anyhow::Result<()> {
    let max = p
        .data_bytes
        .max((p.fg_file_bytes * data::NFILES) as u64 + p.client_bytes);
    let need = 5 * max / 2 + (p.file_bytes + p.fg_file_bytes) as u64 + (1 << 30);
    let c = std::ffi::CString::new(work.as_os_str().as_encoded_bytes())?;
    // SAFETY: statvfs(3) into a zeroed struct we own, with a NUL-terminated path.
    let avail = unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut s) != 0 {
            return Ok(());
        }
        s.f_bavail as u64 * s.f_frsize as u64
    };
    if avail < need {
        bail!(
            "{} has {} MiB free; this needs about {} MiB",
            work.display(),
            avail >> 20,
            need >> 20
        );
    }
    Ok(())
}

pub fn run(a: RecoveryArgs) -> anyhow::Result<()> {
    let p = plan(&a)?;
    let bin = preflight(&a, &p)?;
    let date = cmd::Cmd::new("date").arg("-Is").ok().unwrap_or_default();
    let work = io::work_dir(&a.dir)?;
    if p.fg && work.to_string_lossy().contains(':') {
        bail!("--dir must not contain ':' (fio file names; or --skip-foreground)");
    }
    check_space(&work, &p)?;
    let json = a.json.clone().unwrap_or_else(|| work.join("results.json"));
    let mut td = Teardown::new();
    mounts::sweep(&work, bin.as_deref()).context("cannot clean up leftovers")?;
    io::setup_work(&work, bin.clone(), &mut td)?;
    let mount_args = a
        .mount_args
        .clone()
        .or_else(|| std::env::var("FS_MOUNT_ARGS").ok())
        .unwrap_or_default();
    let mut ctx = Ctx {
        bin,
        work,
        plan: p,
        mount_args: crate::pool::split_args(&mount_args),
        missing_grace_ms: a.missing_grace_ms,
        run: 0,
    };
    let mut records = Vec::new();
    for run in 1..=ctx.plan.runs {
        ctx.run = run;
        records.push((run, one_run(&ctx, &mut td)?));
    }
    let host = io::host(
        date.trim(),
        ctx.plan.ndisks,
        format!("loop-ext4 ({} MiB images)", ctx.plan.disk_bytes >> 20),
        io::fuse_uring(ctx.bin.is_some()),
    );
    let r = results_of(&a, &ctx, records, host);
    io::finish(&r, &json, a.render.as_deref())
}

/// Every configuration once, on fresh disks each.
fn one_run(ctx: &Ctx, td: &mut Teardown) -> anyhow::Result<Vec<Record>> {
    let p = &ctx.plan;
    let set = data::DataSet::new(p.file_bytes)?;
    let mut out = Vec::new();
    if p.fs {
        out.push(fs::run(ctx, "pool", &set, td)?);
        out.push(fs::run(ctx, "reactive", &set, td)?);
    }
    // As many bytes as the pool run re-replicated; 2*SIZE/N without one.
    let pool_bytes = out
        .first()
        .and_then(|r| r.raw["recovery"]["bytes_total"].as_u64())
        .filter(|b| *b > 0);
    let bytes = pool_bytes.unwrap_or(2 * p.data_bytes / p.ndisks as u64);
    out.push(copy::plain(ctx, &set, bytes, td)?);
    if p.btrfs {
        out.push(copy::btrfs(ctx, &set, td)?);
    }
    if p.fg {
        let fgset = data::DataSet::new(p.fg_file_bytes)?;
        for prof in PROFILES {
            out.push(fg::run(ctx, prof, &fgset, td)?);
        }
    }
    Ok(out)
}

fn configs(ctx: &Ctx) -> Vec<Config> {
    let c = |name: &str, kind: Kind, detail: String| Config {
        name: name.into(),
        kind,
        replicas: if kind == Kind::Foreshard {
            REPLICAS as u8
        } else {
            0
        },
        no_access: false,
        devfuse: false,
        before: false,
        detail,
    };
    let p = &ctx.plan;
    let bin = ctx.bin.as_deref().map(|b| {
        format!(
            "{} ({})",
            b.display(),
            cmd::version_of(&b.to_string_lossy(), &["--version"])
        )
    });
    let mut v = Vec::new();
    if let Some(bin) = &bin {
        let extra = if ctx.mount_args.is_empty() {
            String::new()
        } else {
            format!(" {}", ctx.mount_args.join(" "))
        };
        for mode in ["pool", "reactive"] {
            v.push(c(
                &format!("fs-{mode}"),
                Kind::Foreshard,
                format!("--agents {mode}{extra}; {bin}"),
            ));
        }
    }
    v.push(c(
        "plain",
        Kind::Raw,
        "2 parallel cp + sync of the same bytes between surviving disks".into(),
    ));
    if p.btrfs {
        v.push(c(
            "btrfs",
            Kind::Btrfs,
            format!(
                "RAID1, btrfs replace ({})",
                cmd::version_of("btrfs", &["--version"])
            ),
        ));
    }
    if p.fg {
        for prof in PROFILES {
            v.push(c(
                &format!("fg-{prof}"),
                Kind::Foreshard,
                format!("--recovery-profile {prof}"),
            ));
        }
    }
    v
}

fn results_of(
    a: &RecoveryArgs,
    ctx: &Ctx,
    records: Vec<(u32, Vec<Record>)>,
    host: Host,
) -> Results {
    let p = &ctx.plan;
    let mut samples = Vec::new();
    let mut runs = Vec::new();
    for (round, recs) in records {
        let mut raw = serde_json::Map::new();
        for r in recs {
            for (test, v) in r.values.iter().filter_map(|(t, v)| v.map(|v| (*t, v))) {
                let unit = results::unit_of(test).into();
                samples.push(Sample {
                    config: r.config.clone(),
                    test: test.into(),
                    round,
                    value: v,
                    unit,
                });
            }
            raw.insert(r.config, r.raw);
        }
        runs.push(json!({"run": round, "configs": raw}));
    }
    let configs = configs(ctx);
    let summary = ratios::summarize("recovery", &configs, &samples);
    let params = Params {
        file_mib: p.data_bytes >> 20,
        nfiles: data::NFILES,
        meta_bytes: 0,
        runtime_s: fg::IDLE_S,
        runs: p.runs,
        interleave: false,
        remount_before_cold_read: false,
        mergerfs_opts: String::new(),
        fio_version: if p.fg {
            cmd::version_of("fio", &["--version"])
        } else {
            String::new()
        },
        command: io::command_line(),
    };
    let mut r = Results::new(
        "recovery",
        io::commit(),
        host,
        params,
        configs,
        samples,
        summary,
    );
    let setup = json!({
        "disk_mib": p.disk_bytes >> 20, "replicas": REPLICAS, "data_mib": p.data_bytes >> 20,
        "fg_data_mib": (p.fg_file_bytes * data::NFILES) >> 20, "fg_client_mib": p.client_bytes >> 20,
        "fg_profiles": if p.fg { PROFILES.to_vec() } else { vec![] }, "fg_idle_s": fg::IDLE_S,
        "fg_lead_s": fg::LEAD.as_secs(), "mount_args": a.mount_args.clone().unwrap_or_else(|| ctx.mount_args.join(" ")),
        "missing_grace_ms": ctx.missing_grace_ms,
        "fg_reader": "fio --rw=read --bs=1M --direct=1 --ioengine=psync --numjobs=1 --time_based, one client file",
    });
    r.extra.insert("setup".into(), setup);
    r.extra.insert("fg_ordering".into(), report::ordering(&r));
    r.extra.insert("runs".into(), Value::Array(runs));
    log!("recovery: {} samples", r.samples.len());
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: RecoveryArgs,
    }

    fn plan_of(args: &[&str]) -> anyhow::Result<Plan> {
        plan(&T::try_parse_from(std::iter::once("x").chain(args.iter().copied()))?.a)
    }

    #[test]
    fn sizes_follow_the_script() {
        let p = plan_of(&["--size", "256M"]).unwrap();
        assert_eq!((p.file_bytes, p.data_bytes), (16 << 20, 256 << 20));
        // fg: half of --size as data, half of that (whole MiB) as the client file
        assert_eq!((p.fg_file_bytes, p.client_bytes), (8 << 20, 64 << 20));
        assert_eq!(p.disk_bytes, 4 << 30);
        assert!(p.fs && p.fg && p.btrfs);
        let p = plan_of(&["--size", "64G", "--disks", "8"]).unwrap();
        assert_eq!(
            (p.client_bytes, p.disk_bytes),
            (1 << 30, 6 * (64 << 30) / 8)
        );
        let p = plan_of(&["--skip-foreshard"]).unwrap();
        assert!(!p.fs && !p.fg && p.client_bytes == 0);
        assert!(plan_of(&["--size", "8M"]).is_err());
        assert!(plan_of(&["--disks", "2"]).is_err());
        assert!(plan_of(&["--size", "1G", "--disk-size", "512M"]).is_err());
        assert!(plan_of(&["--fg-size", "1M"]).is_err());
        assert!(plan_of(&["--fg-size", "1M", "--skip-foreground"]).is_ok());
    }
}
