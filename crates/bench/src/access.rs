//! `foreshard-bench access`: what the access analyzer costs. Two pools mounted side by side
//! on plain-directory disks, `on` (the analyzer, the daemon's default) and `off`
//! (`--no-access`), the same fio jobs on each in ABBA rounds; medians, the ratio of medians,
//! the geometric mean of the round ratios, and the daemon's CPU (the port of
//! scripts/bench-access).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::cmd::Cmd;
use crate::fio::{self, Dir, Metric};
use crate::peers::{self, Config, Env, Kind, Prepared};
use crate::results::{self, Host, Params, Results, Sample};
use crate::teardown::Teardown;
use crate::{disks, io, log, mounts, ratios, tools};

pub const TESTS: [&str; 3] = ["seq_write", "seq_read", "randread_direct"];

#[derive(clap::Args, Debug)]
pub struct AccessArgs {
    /// ABBA rounds.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Random read runtime in seconds.
    #[arg(long, value_name = "SEC", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub runtime: u64,
    /// fio file size (e.g. 1g, 256m).
    #[arg(long, default_value = "1g")]
    pub size: String,
    /// Comma list of seq_write,seq_read,randread_direct (seq_read reads seq_write's file).
    #[arg(long, default_value = "seq_write,seq_read,randread_direct")]
    pub tests: String,
    /// Work directory (--work: scripts/bench-access's name for it).
    #[arg(
        long,
        alias = "work",
        default_value = "/var/tmp/foreshard-bench-access"
    )]
    pub dir: PathBuf,
    /// foreshard binary [default: $FORESHARD, else $CARGO_TARGET_DIR/release/foreshard].
    #[arg(long, value_name = "BIN")]
    pub foreshard: Option<PathBuf>,
    /// Write results as JSON here [default: DIR/results.json].
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also write the report into this document's bench:access section.
    #[arg(long, value_name = "DOC")]
    pub render: Option<PathBuf>,
}

/// The tests in order, checked.
pub fn parse_tests(list: &str) -> anyhow::Result<Vec<&'static str>> {
    let mut picked = Vec::new();
    for t in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        match TESTS.iter().find(|x| **x == t) {
            Some(x) => picked.push(*x),
            None => bail!("unknown test {t} (use {})", TESTS.join(",")),
        }
    }
    if picked.contains(&"seq_read") && !picked.contains(&"seq_write") {
        bail!("seq_read reads the file seq_write writes: give both");
    }
    let v: Vec<&str> = TESTS
        .iter()
        .copied()
        .filter(|t| picked.contains(t))
        .collect();
    if v.is_empty() {
        bail!("--tests selects nothing");
    }
    Ok(v)
}

fn pool_config(name: &str, no_access: bool) -> Config {
    Config {
        name: name.into(),
        kind: Kind::Foreshard,
        replicas: 2,
        no_access,
        devfuse: false,
        before: false,
        detail: String::new(),
    }
}

/// The daemon's CPU time (user + system) so far, in ms.
fn daemon_cpu_ms(pool: &Path) -> anyhow::Result<f64> {
    let pidfile = pool.join("daemon.pid");
    let text = fs::read_to_string(&pidfile)
        .with_context(|| format!("cannot read {}", pidfile.display()))?;
    let pid = text.lines().next().unwrap_or("").trim();
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("no daemon with pid {pid}"))?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = stat.rsplit_once(") ").context("bad /proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf(3) has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 * 1000.0 / hz)
}

/// One test on one pool: (value, daemon CPU: ms per pass, or us per request).
fn one(env: &Env, c: &Config, test: &str, size: &str, runtime: u64) -> anyhow::Result<(f64, f64)> {
    let file = env.mnt(c).join("f");
    let out = env
        .work
        .join("tmp")
        .join(format!("fio-{}-{test}.json", c.name));
    let mut args = vec![
        format!("--filename={}", file.display()),
        format!("--size={size}"),
        "--ioengine=psync".into(),
    ];
    let pool = env.work.join("pool").join(&c.name);
    if test == "seq_write" {
        fs::remove_file(&file).or_else(disks::ignore_missing)?;
    }
    if test != "randread_direct" {
        mounts::drop_caches();
    }
    let cpu0 = daemon_cpu_ms(&pool)?;
    let v = match test {
        "seq_write" => {
            args.extend(
                [
                    "--name=w",
                    "--rw=write",
                    "--bs=1M",
                    "--end_fsync=1",
                    "--fallocate=none",
                ]
                .map(String::from),
            );
            fio::run(&out, &args, Dir::Write, Metric::Bandwidth)?
        }
        "seq_read" => {
            args.extend(["--name=r", "--rw=read", "--bs=1M"].map(String::from));
            fio::run(&out, &args, Dir::Read, Metric::Bandwidth)?
        }
        _ => {
            args.extend(
                [
                    "--name=rd",
                    "--rw=randread",
                    "--bs=4k",
                    "--numjobs=4",
                    "--group_reporting",
                    "--time_based",
                    "--direct=1",
                ]
                .map(String::from),
            );
            args.push(format!("--runtime={runtime}"));
            fio::run(&out, &args, Dir::Read, Metric::Iops)?
        }
    };
    let cpu_ms = daemon_cpu_ms(&pool)? - cpu0;
    let cpu = if test == "randread_direct" {
        cpu_ms * 1000.0 / (v * runtime as f64).max(1e-9)
    } else {
        cpu_ms
    };
    Ok((v, cpu))
}

pub fn run(a: AccessArgs) -> anyhow::Result<()> {
    let tests = parse_tests(&a.tests)?;
    let file_mib = io::parse_size(&a.size)? >> 20;
    io::need_root("run as root (drop_caches, mounts)")?;
    tools::ensure(&[tools::FIO, tools::FUSE3])?;
    let bin = io::foreshard_given(a.foreshard.as_deref())?;
    let date = Cmd::new("date").arg("-Is").ok().unwrap_or_default();
    let work = io::work_dir(&a.dir)?;
    let json = a.json.clone().unwrap_or_else(|| work.join("results.json"));
    let mut td = Teardown::new();
    mounts::sweep(&work, Some(&bin)).context("cannot clean up leftovers")?;
    io::setup_work(&work, Some(bin.clone()), &mut td)?;
    let d = disks::setup(&work, io::NDISKS, 0, "-", true, &mut td)?;
    let uring = io::fuse_uring(true);
    let env = Env {
        work,
        disks: d,
        img_bytes: 0,
        mergerfs_opts: String::new(),
        foreshard: Some(bin.clone()),
        before: None,
    };
    let configs = io::describe(&env, &[pool_config("on", false), pool_config("off", true)]);
    for c in &configs {
        peers::prepare(&env, c, &mut Prepared::default(), &mut td)?;
        peers::up(&env, c, &Prepared::default(), &mut td)?;
    }
    log!(
        "analyzer on vs off: {} ABBA rounds, fio runtime {}s, file {}",
        a.rounds,
        a.runtime,
        a.size
    );
    let samples = rounds(&env, &configs, &tests, &a)?;
    let status = Cmd::new(&bin)
        .arg("status")
        .arg(env.work.join("pool/on"))
        .arg("--json")
        .ok()?;
    let status: serde_json::Value =
        serde_json::from_str(&status).context("foreshard status --json")?;
    let host = io::host(date.trim(), io::NDISKS, env.disks.kind.clone(), uring);
    let r = results_of(
        &a,
        file_mib,
        configs,
        samples,
        host,
        status["access"].clone(),
    );
    io::finish(&r, &json, a.render.as_deref())?;
    Ok(())
}

/// Per round and test: on then off in odd rounds, off then on in even ones.
fn rounds(
    env: &Env,
    configs: &[Config],
    tests: &[&str],
    a: &AccessArgs,
) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for round in 1..=a.rounds {
        for test in tests {
            let mut order: Vec<&Config> = configs.iter().collect();
            if round.is_multiple_of(2) {
                order.reverse();
            }
            let mut line = Vec::new();
            for c in order {
                let (v, cpu) = one(env, c, test, &a.size, a.runtime)?;
                line.push(format!("{} {v:.1} (cpu {cpu:.2})", c.name));
                let cpu_test = format!("{test}_cpu");
                for (t, value) in [(test.to_string(), v), (cpu_test, cpu)] {
                    let unit = results::unit_of(&t).to_string();
                    samples.push(Sample {
                        config: c.name.clone(),
                        test: t,
                        round,
                        value,
                        unit,
                    });
                }
            }
            log!("round {round} {test}: {}", line.join(", "));
        }
    }
    Ok(samples)
}

fn results_of(
    a: &AccessArgs,
    file_mib: u64,
    configs: Vec<Config>,
    samples: Vec<Sample>,
    host: Host,
    analyzer: serde_json::Value,
) -> Results {
    let params = Params {
        file_mib,
        nfiles: 0,
        meta_bytes: 0,
        runtime_s: a.runtime,
        runs: a.rounds,
        interleave: true,
        remount_before_cold_read: false,
        mergerfs_opts: String::new(),
        fio_version: crate::cmd::version_of("fio", &["--version"]),
        command: io::command_line(),
    };
    let summary = ratios::summarize("access", &configs, &samples);
    let mut extra = std::collections::BTreeMap::new();
    if !analyzer.is_null() {
        extra.insert("analyzer".to_string(), analyzer);
    }
    Results {
        extra,
        ..Results::new(
            "access",
            io::commit(),
            host,
            params,
            configs,
            samples,
            summary,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tests_are_checked_and_ordered() {
        assert_eq!(
            parse_tests("randread_direct,seq_write,seq_read").unwrap(),
            TESTS
        );
        assert_eq!(parse_tests("seq_write").unwrap(), ["seq_write"]);
        assert!(parse_tests("seq_read").is_err());
        assert!(parse_tests("fsync").is_err());
        assert!(parse_tests("").is_err());
    }
}
