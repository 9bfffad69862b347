//! `foreshard-bench io`: fio and metadata workloads on foreshard against one raw disk,
//! mergerfs, btrfs RAID1 and GlusterFS replica 2, all in one run over the same disks (the
//! port of scripts/bench).

use std::fs;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::fio::{self, Dir, Metric};
use crate::peers::{self, Config, Env, Kind, Prepared};
use crate::results::{self, Host, Params, Results, Sample};
use crate::teardown::Teardown;
use crate::{cmd, disks, log, meta, mounts, ratios, render, tools};

pub const NDISKS: usize = 4;
pub const META_BYTES: usize = 1024;

/// mergerfs options, chosen to be a fair, commonly recommended setup (see --help).
pub const MERGERFS_OPTS: &str = "cache.files=partial,dropcacheonclose=true,category.create=mfs,func.getattr=newest,moveonenospc=true,minfreespace=64M,fsname=mergerfs-bench";

pub const ABOUT: &str = r#"Benchmarks, in a single run, the same workloads on:
  raw       one backing disk used directly (a directory on disk0's filesystem)
  mergerfs  mergerfs over the 4 disks (-o: see --mergerfs-opts)
  btrfs     btrfs RAID1 (mkfs.btrfs -d raid1 -m raid1) over 4 loop devices of --size
            (images of their own in DIR/img; needs loop devices); only with --configs
  gluster   GlusterFS replica 2 over one brick per disk (2 x 2 distributed-replicated),
            FUSE-mounted with mount -t glusterfs; glusterd is started unless it runs;
            only with --configs
  fs-r1     foreshard --replicas 1 over the 4 disks
  fs-r2     foreshard --replicas 2 over the 4 disks
  fs-r2-noaccess
            as fs-r2 (own pool, same disks) but mounted with --no-access: no access
            analyzer (fs-r1 and fs-r2 run it, the daemon's default); only with --configs,
            e.g. --configs r2,r2-noaccess --interleave
  fs-r1-devfuse
            as fs-r1 (own pool, same disks) but mounted with --io-uring off: FUSE requests
            through /dev/fuse only; fs-r1 uses one io_uring queue per CPU when the kernel
            has FUSE over io_uring (the benchmark turns /sys/module/fuse/parameters/
            enable_uring on; it only lets daemons that ask for it use io_uring, mergerfs
            does not); only with --configs, e.g. --configs r1,r1-devfuse --interleave
  NAME@before
            with --before BIN: every foreshard configuration once more with BIN, its own
            pool on the same disks, in the same rounds; the report adds after/before
Backing disks are 4 loop-mounted ext4 images (sparse files), or plain directories on the
work directory's filesystem if loop devices do not work. foreshard pool metadata (POOL)
lives on the work directory's filesystem. Missing tools (fio, mergerfs, btrfs-progs,
glusterfs-server) are installed with apt-get.

Workloads (fio: ioengine=psync, buffered I/O, fallocate=none):
  seq write      fresh 1 GiB file, bs=1M, numjobs=1, end_fsync=1 -> MiB/s
  cold seq read  sync + drop_caches (and the daemon remounted), then read the file,
                 bs=1M -> MiB/s
  4k rand read   bs=4k, numjobs=4, group_reporting, time_based 15 s, WARM: runs right
                 after the reads above without invalidating the page cache -> IOPS
  4k rand read O_DIRECT
                 the same with --direct=1: every read reaches the filesystem -> IOPS
  metadata       create N files of 1024 bytes (open/write/close), stat them all, unlink
                 them all; each phase starts after sync + drop_caches -> ops/s per phase
Each test is repeated --runs times; the table shows the median. With fs-r2 and
fs-r2-noaccess both selected, the report adds "analyzer on/off" = median(fs-r2) /
median(fs-r2-noaccess) for every test (and, if the runs were interleaved, the median of
the per-round ratios); with fs-r1 and fs-r1-devfuse, "uring/devfuse"; with --before,
"NAME after/before" and its table; with btrfs or gluster, r2/btrfs and r2/gluster.
Results are one JSON
document (schema foreshard-bench/1: host, configs, samples, summary); `foreshard-bench
render FILE` prints its report again, `--render DOC` writes it into DOC's
<!-- bench:io begin --> ... <!-- bench:io end --> section.

Targets (informative, PASS/MISS; the exit status does not depend on them):
  fs-r1 seq write and seq read >= 0.9x raw and >= mergerfs
  fs-r2 seq write >= 0.8x (raw/2)
  fs-r1 and fs-r2 random read and metadata (each phase) >= mergerfs
  analyzer on/off >= 0.97 for seq write, seq read and 4k random reads
  (issue 5: the access analyzer costs at most 3%)"#;

#[derive(clap::Args, Debug)]
#[command(after_help = ABOUT)]
pub struct IoArgs {
    /// Work directory.
    #[arg(long, default_value = "/var/tmp/foreshard-bench")]
    pub dir: PathBuf,
    /// Size of each disk image, e.g. 4G.
    #[arg(long, default_value = "4G")]
    pub size: String,
    /// Smoke run: 256 MiB file, 2000 files, 5 s random read, 1 run (explicit options win).
    #[arg(long)]
    pub quick: bool,
    /// Repetitions per test [default: 3, 1 with --quick].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: Option<u32>,
    /// fio file size in MiB [default: 1024, 256 with --quick].
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    pub file_size: Option<u64>,
    /// Metadata file count [default: 10000, 2000 with --quick].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub files: Option<u64>,
    /// Random read runtime in seconds [default: 15, 5 with --quick].
    #[arg(long, value_name = "SEC", value_parser = clap::value_parser!(u64).range(1..))]
    pub runtime: Option<u64>,
    /// Comma list of raw,mergerfs,btrfs,gluster,r1,r2,r2-noaccess,r1-devfuse.
    #[arg(long, default_value = "raw,mergerfs,r1,r2")]
    pub configs: String,
    /// Run in rounds: each round runs every test once on every configuration (the order
    /// reversed every other round), so slow drift of a noisy machine hits them alike;
    /// default: all runs of one configuration, then the next.
    #[arg(long)]
    pub interleave: bool,
    /// Write results as JSON here [default: DIR/results.json].
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Do not try loop devices; use plain directories.
    #[arg(long)]
    pub plain_dirs: bool,
    /// foreshard binary [default: $CARGO_TARGET_DIR/release/foreshard, CARGO_TARGET_DIR
    /// defaulting to ~/.cache/foreshard/target].
    #[arg(long, value_name = "BIN")]
    pub foreshard: Option<PathBuf>,
    /// A second foreshard binary, run as NAME@before for every foreshard configuration.
    #[arg(long, value_name = "BIN")]
    pub before: Option<PathBuf>,
    /// scripts/bench: build foreshard even with --foreshard (the harness never builds).
    #[arg(long)]
    pub build: bool,
    /// scripts/bench: use the default binary as it is, without building.
    #[arg(long)]
    pub no_build: bool,
    /// Do not remount before cold reads.
    #[arg(long)]
    pub no_remount: bool,
    /// Replace the mergerfs -o options, e.g. with cache.files=off.
    #[arg(long, value_name = "O", default_value = MERGERFS_OPTS)]
    pub mergerfs_opts: String,
    /// Also write the report into this document's bench:io section.
    #[arg(long, value_name = "DOC")]
    pub render: Option<PathBuf>,
}

/// The resolved options.
pub struct Plan {
    pub runs: u32,
    pub file_mib: u64,
    pub nfiles: usize,
    pub runtime_s: u64,
    pub img_bytes: u64,
    pub configs: Vec<Config>,
}

/// Sizes like 4G, 512M, 2GiB, 65536.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim().trim_end_matches(['b', 'B']).trim_end_matches('i');
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .with_context(|| format!("bad --size '{s}' (use e.g. 4G)"))?;
    let shift = match unit {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => bail!("bad --size '{s}' (use e.g. 4G)"),
    };
    n.checked_mul(1 << shift)
        .with_context(|| format!("--size '{s}' is too large"))
}

pub fn plan(a: &IoArgs) -> anyhow::Result<Plan> {
    let q = a.quick;
    let p = Plan {
        runs: a.runs.unwrap_or(if q { 1 } else { 3 }),
        file_mib: a.file_size.unwrap_or(if q { 256 } else { 1024 }),
        nfiles: a.files.unwrap_or(if q { 2000 } else { 10000 }) as usize,
        runtime_s: a.runtime.unwrap_or(if q { 5 } else { 15 }),
        img_bytes: parse_size(&a.size)?,
        configs: peers::parse_list(&a.configs, a.before.is_some())?,
    };
    let need = p.file_mib * 1024 * 1024 * 3 / 2 + (256 << 20);
    if p.img_bytes < need {
        bail!(
            "--size {} is too small for a {} MiB test file (need >= {} MiB)",
            a.size,
            p.file_mib,
            need >> 20
        );
    }
    Ok(p)
}

fn needs(configs: &[Config], plain: bool) -> Vec<(&'static str, &'static str)> {
    let has = |k: Kind| configs.iter().any(|c| c.kind == k);
    let mut v = vec![tools::FIO];
    if has(Kind::Mergerfs) {
        v.push(tools::MERGERFS);
    }
    if has(Kind::Mergerfs) || has(Kind::Foreshard) || has(Kind::Gluster) {
        v.push(tools::FUSE3);
    }
    if !plain || has(Kind::Btrfs) {
        v.push(tools::EXT4);
    }
    if has(Kind::Btrfs) {
        v.push(tools::BTRFS);
    }
    if has(Kind::Gluster) {
        v.extend([tools::GLUSTERD, tools::GLUSTER_MOUNT]);
    }
    v
}

/// Refuses to run without root; `msg` says what needs it.
pub fn need_root(msg: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{msg}");
    }
    Ok(())
}

/// The foreshard binary to run: the option, else $FORESHARD (as scripts/lib.sh names it),
/// else the release build; it must be an executable.
pub fn foreshard_given(option: Option<&Path>) -> anyhow::Result<PathBuf> {
    let given = option
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("FORESHARD").map(PathBuf::from));
    executable(&foreshard_bin(given.as_deref()), "foreshard binary")
}

/// The foreshard binary: --foreshard, else the release build in the target directory.
pub fn foreshard_bin(given: Option<&Path>) -> PathBuf {
    given.map(Path::to_path_buf).unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
                Path::new(&home).join(".cache/foreshard/target")
            });
        target.join("release/foreshard")
    })
}

pub fn executable(p: &Path, what: &str) -> anyhow::Result<PathBuf> {
    let abs = fs::canonicalize(p).with_context(|| {
        format!(
            "{what} {} does not exist (build it, or give --foreshard BIN)",
            p.display()
        )
    })?;
    if !cmd::is_executable(&abs) {
        bail!("{what} {} is not executable", abs.display());
    }
    Ok(abs)
}

pub fn work_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let w = fs::canonicalize(dir)?;
    if w == Path::new("/") {
        bail!("--dir must not be /");
    }
    if w.to_string_lossy().chars().any(char::is_whitespace) {
        bail!("--dir must not contain whitespace");
    }
    Ok(w)
}

/// Checks and tools before anything is made: root, packages, the binaries. Returns the
/// foreshard binary (when a configuration needs it) and the --before binary.
fn preflight(a: &IoArgs, p: &Plan) -> anyhow::Result<(Option<PathBuf>, Option<PathBuf>)> {
    need_root("must run as root (loop devices, mounts, drop_caches)")?;
    tools::ensure(&needs(&p.configs, a.plain_dirs))?;
    let has_fs = p.configs.iter().any(|c| c.kind == Kind::Foreshard);
    let fs_bin = match has_fs {
        true => Some(executable(
            &foreshard_bin(a.foreshard.as_deref()),
            "foreshard binary",
        )?),
        false => None,
    };
    let before = a
        .before
        .as_deref()
        .map(|b| executable(b, "--before binary"));
    Ok((fs_bin, before.transpose()?))
}

/// The run: tools, disks, configurations, rounds, results; everything made is undone
/// when `td` drops at the end (also on error or a caught signal).
pub fn run(a: IoArgs) -> anyhow::Result<()> {
    let p = plan(&a)?;
    let date = cmd::Cmd::new("date").arg("-Is").ok().unwrap_or_default();
    let date = date.trim().to_string();
    log!("machine: nproc={} kernel={} date={date}", nproc(), kernel());
    let (fs_bin, before) = preflight(&a, &p)?;
    let work = work_dir(&a.dir)?;
    let json = a.json.clone().unwrap_or_else(|| work.join("results.json"));
    let mut td = Teardown::new();
    if !mounts::under(&work).is_empty() || !mounts::loops_under(&work).is_empty() {
        log!(
            "removing leftovers of an earlier run under {}",
            work.display()
        );
    }
    mounts::sweep(&work, fs_bin.as_deref()).context("cannot clean up leftovers")?;
    setup_work(&work, fs_bin.clone(), &mut td)?;
    let d = disks::setup(&work, NDISKS, p.img_bytes, &a.size, a.plain_dirs, &mut td)?;
    let names: Vec<String> = d.dirs.iter().map(|x| x.display().to_string()).collect();
    log!("disks: {} ({})", names.join(" "), d.kind);
    let uring = fuse_uring(fs_bin.is_some());
    let env = Env {
        work,
        disks: d,
        img_bytes: p.img_bytes,
        mergerfs_opts: a.mergerfs_opts.clone(),
        foreshard: fs_bin,
        before,
    };
    let mut ctx = Ctx {
        env,
        prepared: Prepared::default(),
        plan: p,
        remount: !a.no_remount,
        samples: Vec::new(),
    };
    let configs = describe(&ctx.env, &ctx.plan.configs);
    for c in &configs {
        peers::prepare(&ctx.env, c, &mut ctx.prepared, &mut td)?;
    }
    rounds(&mut ctx, &configs, a.interleave, &mut td)?;
    let host = host(date, NDISKS, ctx.env.disks.kind.clone(), uring);
    finish(
        &results_of(&a, &ctx, configs, host),
        &json,
        a.render.as_deref(),
    )?;
    let work = ctx.env.work.clone();
    drop(td);
    if !mounts::under(&work).is_empty() || !mounts::loops_under(&work).is_empty() {
        log!(
            "warning: cleanup incomplete; check 'findmnt | grep {}' and 'losetup -a'",
            work.display()
        );
    }
    Ok(())
}

/// Writes the results and prints (and with --render writes) the report.
pub fn finish(r: &Results, json: &Path, render: Option<&Path>) -> anyhow::Result<()> {
    r.write(json)?;
    print!("{}", render::text(r));
    println!("\nresults written to {}", json.display());
    if let Some(doc) = render {
        crate::render_into(r, doc)?;
    }
    Ok(())
}

/// The work directory's parts, removed at the very end (when nothing is mounted there
/// any more), and a sweep just before that for whatever the stack could not undo.
pub fn setup_work(work: &Path, fs_bin: Option<PathBuf>, td: &mut Teardown) -> anyhow::Result<()> {
    const PARTS: [&str; 5] = ["img", "disk", "mnt", "pool", "tmp"];
    for part in PARTS {
        fs::create_dir_all(work.join(part))?;
    }
    let w = work.to_path_buf();
    td.push(
        format!("remove {}/{{{}}}", work.display(), PARTS.join(",")),
        move || {
            if !mounts::under(&w).is_empty() {
                bail!(
                    "something is still mounted under {}; not deleting files there",
                    w.display()
                );
            }
            for part in PARTS {
                fs::remove_dir_all(w.join(part)).or_else(disks::ignore_missing)?;
            }
            // The work directory too, when nothing else (results.json) is in it.
            let _ = fs::remove_dir(&w);
            Ok(())
        },
    );
    let w = work.to_path_buf();
    td.push(format!("sweep {}", work.display()), move || {
        mounts::sweep(&w, fs_bin.as_deref())
    });
    Ok(())
}

/// The kernel's FUSE-over-io_uring switch, turned on first when `enable` (foreshard
/// configurations use it; daemons that do not ask for it are not affected).
pub fn fuse_uring(enable: bool) -> String {
    let p = Path::new("/sys/module/fuse/parameters/enable_uring");
    let read = || fs::read_to_string(p).map(|s| s.trim().to_string());
    match read() {
        Err(_) => "absent".into(),
        Ok(v) if v == "Y" || !enable => v,
        Ok(v) => {
            if fs::write(p, "Y").is_ok() {
                log!("enabled FUSE over io_uring ({} = Y)", p.display());
            }
            read().unwrap_or(v)
        }
    }
}

/// The configurations with what ran them, for the report.
pub fn describe(env: &Env, configs: &[Config]) -> Vec<Config> {
    let n = env.disks.dirs.len();
    configs
        .iter()
        .map(|c| {
            let detail = match c.kind {
                Kind::Raw => format!("a directory on disk0 ({})", env.mnt(c).display()),
                Kind::Mergerfs => cmd::version_of("mergerfs", &["--version"]),
                Kind::Btrfs => format!(
                    "mkfs.btrfs -d raid1 -m raid1 over {n} loop devices ({})",
                    cmd::version_of("btrfs", &["--version"])
                ),
                Kind::Gluster => format!(
                    "replica 2 over {n} bricks on the disks, FUSE mount ({})",
                    cmd::version_of("glusterd", &["--version"])
                ),
                Kind::Foreshard => {
                    let bin = if c.before {
                        &env.before
                    } else {
                        &env.foreshard
                    };
                    let bin = bin.as_deref().expect("resolved");
                    format!(
                        "{} ({})",
                        bin.display(),
                        cmd::version_of(&bin.to_string_lossy(), &["--version"])
                    )
                }
            };
            Config {
                detail,
                ..c.clone()
            }
        })
        .collect()
}

struct Ctx {
    env: Env,
    prepared: Prepared,
    plan: Plan,
    remount: bool,
    samples: Vec<Sample>,
}

fn rounds(
    ctx: &mut Ctx,
    configs: &[Config],
    interleave: bool,
    td: &mut Teardown,
) -> anyhow::Result<()> {
    let runs = ctx.plan.runs;
    if !interleave {
        for c in configs {
            bench_config(ctx, c, 1..=runs, td)?;
        }
        return Ok(());
    }
    for round in 1..=runs {
        // ABBA: every other round in reverse, so no configuration always goes first.
        let mut order: Vec<&Config> = configs.iter().collect();
        if round.is_multiple_of(2) {
            order.reverse();
        }
        for c in order {
            bench_config(ctx, c, round..=round, td)?;
        }
    }
    Ok(())
}

fn record(ctx: &mut Ctx, c: &Config, test: &str, round: u32, value: f64) {
    let unit = results::unit_of(test);
    log!(
        "{}: {test} run {round}/{}: {value:.1} {unit}",
        c.name,
        ctx.plan.runs
    );
    ctx.samples.push(Sample {
        config: c.name.clone(),
        test: test.into(),
        round,
        value,
        unit: unit.into(),
    });
}

/// Runs `rounds` of every test on `c`, mounted for the purpose.
fn bench_config(
    ctx: &mut Ctx,
    c: &Config,
    rounds: RangeInclusive<u32>,
    td: &mut Teardown,
) -> anyhow::Result<()> {
    let mnt = ctx.env.mnt(c);
    log!(
        "=== {} (at {}), runs {}..{} of {}",
        c.name,
        mnt.display(),
        rounds.start(),
        rounds.end(),
        ctx.plan.runs
    );
    let mark = td.len();
    peers::up(&ctx.env, c, &ctx.prepared, td)?;
    let dir = mnt.join("bench");
    fs::create_dir_all(&dir)?;
    let file = dir.join("fio.dat");
    bench_fio(ctx, c, &file, rounds.clone(), mark, td)?;
    fs::remove_file(&file).or_else(disks::ignore_missing)?;
    for r in rounds {
        let m = meta::run(
            &dir.join(format!("meta-{r}")),
            ctx.plan.nfiles,
            META_BYTES,
            true,
        )
        .with_context(|| format!("{}: metadata test failed", c.name))?;
        record(ctx, c, "meta_create", r, m.create);
        record(ctx, c, "meta_stat", r, m.stat);
        record(ctx, c, "meta_unlink", r, m.unlink);
    }
    let _ = fs::remove_dir(&dir);
    td.unwind_to(mark)
}

fn bench_fio(
    ctx: &mut Ctx,
    c: &Config,
    file: &Path,
    rounds: RangeInclusive<u32>,
    mark: usize,
    td: &mut Teardown,
) -> anyhow::Result<()> {
    let tmp = ctx.env.work.join("tmp");
    let common = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        v.push(format!("--filename={}", file.display()));
        v.push(format!("--size={}m", ctx.plan.file_mib));
        v.extend(["--ioengine=psync", "--direct=0", "--fallocate=none"].map(String::from));
        v
    };
    let out = |test: &str, r: u32| tmp.join(format!("{}-{test}-{r}.json", c.name));
    let write = common(&[
        "--name=seqwrite",
        "--rw=write",
        "--bs=1M",
        "--numjobs=1",
        "--end_fsync=1",
    ]);
    let read = common(&["--name=seqread", "--rw=read", "--bs=1M", "--numjobs=1"]);
    let runtime = format!("--runtime={}", ctx.plan.runtime_s);
    let rand = [
        "--rw=randread",
        "--bs=4k",
        "--numjobs=4",
        "--group_reporting",
        "--time_based",
        &runtime,
    ];
    let warm = common(&[&["--name=randread"], &rand[..], &["--invalidate=0"]].concat());
    // O_DIRECT: every read goes through the filesystem (daemon) rather than the page cache.
    let mut direct = common(&[&["--name=randreadd"], &rand[..]].concat());
    direct.push("--direct=1".into());
    for r in rounds.clone() {
        fs::remove_file(file).or_else(disks::ignore_missing)?;
        mounts::drop_caches();
        let v = fio::run(&out("seq_write", r), &write, Dir::Write, Metric::Bandwidth)?;
        record(ctx, c, "seq_write", r, v);
    }
    for r in rounds.clone() {
        if ctx.remount && c.kind != Kind::Raw {
            td.unwind_to(mark)?;
            peers::up(&ctx.env, c, &ctx.prepared, td)?;
        }
        mounts::drop_caches();
        let v = fio::run(
            &out("seq_read_cold", r),
            &read,
            Dir::Read,
            Metric::Bandwidth,
        )?;
        record(ctx, c, "seq_read_cold", r, v);
    }
    for (test, args) in [("randread_4k", &warm), ("randread_4k_direct", &direct)] {
        for r in rounds.clone() {
            let v = fio::run(&out(test, r), args, Dir::Read, Metric::Iops)?;
            record(ctx, c, test, r, v);
        }
    }
    Ok(())
}

fn results_of(a: &IoArgs, ctx: &Ctx, configs: Vec<Config>, host: Host) -> Results {
    let p = &ctx.plan;
    let params = Params {
        file_mib: p.file_mib,
        nfiles: p.nfiles,
        meta_bytes: META_BYTES,
        runtime_s: p.runtime_s,
        runs: p.runs,
        interleave: a.interleave,
        remount_before_cold_read: ctx.remount,
        mergerfs_opts: a.mergerfs_opts.clone(),
        fio_version: cmd::version_of("fio", &["--version"]),
        command: command_line(),
    };
    let summary = ratios::summarize("io", &configs, &ctx.samples);
    Results::new(
        "io",
        commit(),
        host,
        params,
        configs,
        ctx.samples.clone(),
        summary,
    )
}

/// This run's command line, the program by its name only.
pub fn command_line() -> Vec<String> {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(a0) = args.first_mut() {
        *a0 = Path::new(a0.as_str())
            .file_name()
            .map_or(a0.clone(), |n| n.to_string_lossy().into_owned());
    }
    args
}

/// The source tree: $FORESHARD_REPO (the scripts set it), else the tree this harness was
/// built from.
pub fn repo_root() -> PathBuf {
    std::env::var_os("FORESHARD_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// The source tree's commit: $FORESHARD_REPO (scripts/bench sets it), else the tree this
/// harness was built from.
pub fn commit() -> Option<String> {
    let repo = repo_root();
    let out = cmd::Cmd::new("git")
        .arg("-C")
        .arg(repo)
        .args(["rev-parse", "--short", "HEAD"])
        .ok()
        .ok()?;
    Some(out.trim().to_string()).filter(|s| !s.is_empty())
}

/// The machine a run is on, for the results' header.
pub fn host(date: impl Into<String>, ndisks: usize, disk_kind: String, uring: String) -> Host {
    Host {
        hostname: hostname(),
        nproc: nproc(),
        kernel: kernel(),
        date: date.into(),
        ndisks,
        disk_kind,
        fuse_enable_uring: uring,
    }
}

pub fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn kernel() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        io: IoArgs,
    }

    fn plan_of(args: &[&str]) -> anyhow::Result<Plan> {
        let t = T::try_parse_from(std::iter::once("x").chain(args.iter().copied()))?;
        plan(&t.io)
    }

    #[test]
    fn quick_sets_defaults_that_explicit_options_override() {
        let p = plan_of(&["--quick", "--runs", "2"]).unwrap();
        assert_eq!(
            (p.runs, p.file_mib, p.nfiles, p.runtime_s),
            (2, 256, 2000, 5)
        );
        let p = plan_of(&[]).unwrap();
        assert_eq!(
            (p.runs, p.file_mib, p.nfiles, p.runtime_s),
            (3, 1024, 10000, 15)
        );
        assert_eq!(p.img_bytes, 4 << 30);
        assert!(plan_of(&["--runs", "0"]).is_err());
        assert!(
            plan_of(&["--size", "1G"]).is_err(),
            "1 GiB images cannot hold a 1 GiB file"
        );
        assert!(plan_of(&["--size", "1G", "--file-size", "256"]).is_ok());
    }

    #[test]
    fn sizes_parse_like_numfmt_iec() {
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("65536").unwrap(), 65536);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        assert!(parse_size("4X").is_err());
        assert!(parse_size("").is_err());
    }
}
