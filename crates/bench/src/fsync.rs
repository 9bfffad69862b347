//! `foreshard-bench fsync`: fsync-heavy and metadata workloads, two foreshard binaries (and
//! the raw disk) in interleaved rounds, each on a fresh 2-replica pool over 4 loop-mounted
//! ext4 disks (the port of scripts/bench-fsync).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;

use crate::fio::{self, Dir, Metric};
use crate::peers::{self, Config, Env, Kind, Prepared};
use crate::results::{self, Host, Params, Results, Sample};
use crate::teardown::Teardown;
use crate::{disks, io, log, mounts, ratios, signal, tools};

const DISK_SIZE: &str = "2G";
const FIO_MIB: u64 = 64;
const FIO_RUNTIME_S: u64 = 10;
const CFSYNC_FILES: usize = 300;
const CREATE_FILES: usize = 3000;

pub const ABOUT: &str = r#"Workloads (each foreshard run on a fresh 2-replica pool over 4 loop-mounted ext4 disks of 2G):
  fsync4k   fio randwrite bs=4k, fsync after every write, 64 MiB file, 10 s -> IOPS
  cfsync    create, write 4 KiB, fsync, close, 300 files (then fsync the directory) -> files/s
  create    create, write 1 KiB, close, 3000 files (no fsync)                       -> files/s
  overwrite pwrite 8 bytes into the 3000 files, close                               -> ops/s
            (each overwrite replaces an extent version: the reaper's and barrier's cost)
raw = the same workloads in a directory of disk0's filesystem. Rounds run new old raw, and
old raw new every other round; the report gives medians (min..max) and new/old per round.
Needs root (loop devices, mounts)."#;

#[derive(clap::Args, Debug)]
#[command(after_help = ABOUT)]
pub struct FsyncArgs {
    /// The binary to compare against ("old"); without it only new and raw run.
    #[arg(long, value_name = "BIN")]
    pub old: Option<PathBuf>,
    /// The binary under test ("new") [default: $FORESHARD, else
    /// $CARGO_TARGET_DIR/release/foreshard].
    #[arg(long, value_name = "BIN")]
    pub new: Option<PathBuf>,
    /// Rounds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Work directory.
    #[arg(long, default_value = "/var/tmp/foreshard-bench-fsync")]
    pub dir: PathBuf,
    /// Write results as JSON here [default: DIR/results.json].
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Do not try loop devices; use plain directories.
    #[arg(long)]
    pub plain_dirs: bool,
    /// Also write the report into this document's bench:fsync section.
    #[arg(long, value_name = "DOC")]
    pub render: Option<PathBuf>,
}

fn fs_config(name: &str, before: bool) -> Config {
    Config {
        name: name.into(),
        kind: Kind::Foreshard,
        replicas: 2,
        no_access: false,
        devfuse: false,
        before,
        detail: String::new(),
    }
}

/// raw, then old (with --old), then new; "old" is the Env's `before` binary.
fn configs(with_old: bool) -> Vec<Config> {
    let raw = Config {
        kind: Kind::Raw,
        replicas: 0,
        ..fs_config("raw", false)
    };
    let mut v = vec![raw];
    if with_old {
        v.push(fs_config("old", true));
    }
    v.push(fs_config("new", false));
    v
}

/// The whole run; everything made is undone when `td` drops.
pub fn run(a: FsyncArgs) -> anyhow::Result<()> {
    io::need_root("needs root (loop devices, mounts)")?;
    tools::ensure(&[tools::FIO, tools::FUSE3, tools::EXT4])?;
    // $FORESHARD, as scripts/lib.sh names the binary the scripts run.
    let given = a
        .new
        .clone()
        .or_else(|| std::env::var_os("FORESHARD").map(PathBuf::from));
    let new = io::executable(
        &io::foreshard_bin(given.as_deref()),
        "foreshard binary (--new)",
    )?;
    let old = a
        .old
        .as_deref()
        .map(|b| io::executable(b, "--old binary"))
        .transpose()?;
    let date = crate::cmd::Cmd::new("date")
        .arg("-Is")
        .ok()
        .unwrap_or_default();
    let work = io::work_dir(&a.dir)?;
    let json = a.json.clone().unwrap_or_else(|| work.join("results.json"));
    let mut td = Teardown::new();
    mounts::sweep(&work, Some(&new)).context("cannot clean up leftovers")?;
    io::setup_work(&work, Some(new.clone()), &mut td)?;
    let bytes = io::parse_size(DISK_SIZE)?;
    let d = disks::setup(&work, io::NDISKS, bytes, DISK_SIZE, a.plain_dirs, &mut td)?;
    let uring = io::fuse_uring(true);
    let env = Env {
        work,
        disks: d,
        img_bytes: bytes,
        mergerfs_opts: String::new(),
        foreshard: Some(new),
        before: old,
    };
    let configs = io::describe(&env, &configs(env.before.is_some()));
    let mut samples = Vec::new();
    for round in 1..=a.rounds {
        for c in round_order(&configs, round) {
            run_config(&env, c, round, &mut samples, &mut td)?;
        }
    }
    let host = io::host(date.trim(), io::NDISKS, env.disks.kind.clone(), uring);
    let r = results_of(&a, configs, samples, host);
    io::finish(&r, &json, a.render.as_deref())?;
    Ok(())
}

/// new old raw, and old raw new every other round (as scripts/bench-fsync).
fn round_order(configs: &[Config], round: u32) -> Vec<&Config> {
    let names: [&str; 3] = if round.is_multiple_of(2) {
        ["old", "raw", "new"]
    } else {
        ["new", "old", "raw"]
    };
    names
        .iter()
        .filter_map(|n| configs.iter().find(|c| c.name == *n))
        .collect()
}

/// One round of `c`: a fresh pool (or raw directory), the workloads, everything removed.
fn run_config(
    env: &Env,
    c: &Config,
    round: u32,
    samples: &mut Vec<Sample>,
    td: &mut Teardown,
) -> anyhow::Result<()> {
    let mark = td.len();
    let mut parts: Vec<PathBuf> = env.disks.dirs.iter().map(|d| d.join(&c.name)).collect();
    parts.push(env.work.join("pool").join(&c.name));
    for p in &parts {
        fs::remove_dir_all(p).or_else(disks::ignore_missing)?;
    }
    td.push(
        format!("remove {}'s pool and directories", c.name),
        move || {
            for p in &parts {
                fs::remove_dir_all(p).or_else(disks::ignore_missing)?;
            }
            Ok(())
        },
    );
    let dir = if c.kind == Kind::Raw {
        env.mnt(c)
    } else {
        peers::prepare(env, c, &mut Prepared::default(), td)?;
        peers::up(env, c, &Prepared::default(), td)?;
        env.mnt(c).join("b")
    };
    fs::create_dir_all(&dir)?;
    let json = env
        .work
        .join("tmp")
        .join(format!("fio-{}-{round}.json", c.name));
    let mut got = vec![("fsync4k", fsync4k(&dir, &json)?)];
    let w = dir.join("w");
    fs::create_dir_all(&w)?;
    got.push((
        "cfsync",
        cfsync(&w).with_context(|| format!("{}: cfsync", c.name))?,
    ));
    got.push((
        "create",
        create(&w).with_context(|| format!("{}: create", c.name))?,
    ));
    got.push((
        "overwrite",
        overwrite(&w).with_context(|| format!("{}: overwrite", c.name))?,
    ));
    let line: Vec<String> = got.iter().map(|(t, v)| format!("{t} {v:.1}")).collect();
    log!("round {round} {}: {}", c.name, line.join("  "));
    for (test, value) in got {
        let unit = results::unit_of(test).to_string();
        samples.push(Sample {
            config: c.name.clone(),
            test: test.into(),
            round,
            value,
            unit,
        });
    }
    if c.kind == Kind::Raw {
        fs::remove_dir_all(&dir)?;
    }
    td.unwind_to(mark)
}

fn fsync4k(dir: &Path, json: &Path) -> anyhow::Result<f64> {
    let args = [
        "--name=fsync4k".to_string(),
        format!("--filename={}", dir.join("fio.dat").display()),
        format!("--size={FIO_MIB}m"),
        "--rw=randwrite".into(),
        "--bs=4k".into(),
        "--fsync=1".into(),
        "--ioengine=psync".into(),
        "--time_based".into(),
        format!("--runtime={FIO_RUNTIME_S}"),
    ];
    fio::run(json, &args, Dir::Write, Metric::Iops)
}

fn names(dir: &Path, prefix: char, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| dir.join(format!("{prefix}{i:05}")))
        .collect()
}

fn new_file(p: &Path) -> anyhow::Result<fs::File> {
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(p);
    f.with_context(|| format!("create {}", p.display()))
}

/// Operations per second of `n` operations done by `f`, with a signal check per op.
fn rate(n: usize, mut f: impl FnMut(usize) -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let t = Instant::now();
    for i in 0..n {
        signal::check()?;
        f(i)?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64().max(1e-9))
}

/// create + 4 KiB + fsync + close per file; the directory's fsync at the end is timed too.
fn cfsync(dir: &Path) -> anyhow::Result<f64> {
    let files = names(dir, 's', CFSYNC_FILES);
    let buf = [b'y'; 4096];
    let t = Instant::now();
    rate(files.len(), |i| {
        let mut f = new_file(&files[i])?;
        f.write_all(&buf)?;
        Ok(f.sync_all()?)
    })?;
    fs::File::open(dir)?.sync_all()?;
    Ok(files.len() as f64 / t.elapsed().as_secs_f64().max(1e-9))
}

/// create + 1 KiB + close per file.
fn create(dir: &Path) -> anyhow::Result<f64> {
    let files = names(dir, 'c', CREATE_FILES);
    let buf = [b'x'; 1024];
    rate(files.len(), |i| Ok(new_file(&files[i])?.write_all(&buf)?))
}

/// 8 bytes written at offset 100 of each file `create` made, then close.
fn overwrite(dir: &Path) -> anyhow::Result<f64> {
    let files = names(dir, 'c', CREATE_FILES);
    rate(files.len(), |i| {
        let f = fs::OpenOptions::new().write(true).open(&files[i]);
        let f = f.with_context(|| format!("open {}", files[i].display()))?;
        Ok(f.write_all_at(b"12345678", 100)?)
    })
}

fn results_of(a: &FsyncArgs, configs: Vec<Config>, samples: Vec<Sample>, host: Host) -> Results {
    let params = Params {
        file_mib: FIO_MIB,
        nfiles: CREATE_FILES,
        meta_bytes: 1024,
        runtime_s: FIO_RUNTIME_S,
        runs: a.rounds,
        interleave: true,
        remount_before_cold_read: false,
        mergerfs_opts: String::new(),
        fio_version: crate::cmd::version_of("fio", &["--version"]),
        command: io::command_line(),
    };
    let summary = ratios::summarize("fsync", &configs, &samples);
    Results::new(
        "fsync",
        io::commit(),
        host,
        params,
        configs,
        samples,
        summary,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_alternate_like_bench_fsync() {
        let c = configs(true);
        let order = |r| {
            round_order(&c, r)
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(order(1), ["new", "old", "raw"]);
        assert_eq!(order(2), ["old", "raw", "new"]);
        let c = configs(false);
        assert_eq!(
            round_order(&c, 2)
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["raw", "new"]
        );
    }

    #[test]
    fn workloads_create_overwrite_and_refuse_existing_files() {
        let dir = std::env::temp_dir().join(format!("fsbench-fsync-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        assert!(create(&dir).unwrap() > 0.0);
        assert!(overwrite(&dir).unwrap() > 0.0);
        let f = fs::read(dir.join("c00007")).unwrap();
        assert_eq!(
            (f.len(), &f[100..108], f[99]),
            (1024, &b"12345678"[..], b'x')
        );
        // A second create finds the files there: O_EXCL, as the python loop had.
        assert!(create(&dir).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
