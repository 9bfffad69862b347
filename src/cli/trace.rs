//! The `foreshard trace` subcommands.

use std::path::PathBuf;

use clap::Subcommand;

use foreshard::trace::*;

// ----------------------------------------------------------------------------------- CLI --

pub(crate) fn parse_speed(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    check_speed(v).map_err(|e| e.to_string())?;
    Ok(v)
}

pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    foreshard::util::parse_size(s).map_err(|e| e.to_string())
}

#[derive(Subcommand, Debug)]
pub enum TraceCmd {
    /// Replay a block trace against files on a mount (volume V is the file MOUNT/V).
    Replay(ReplayArgs),
    /// Write a synthetic trace with a planted hot set, co-access groups and a daily cycle.
    Synth(SynthArgs),
    /// Summarize a trace: requests, read/write split, volumes, extents, span, skew.
    Stats(StatsArgs),
}

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// Trace file: CSV with header timestamp_us,op,offset_bytes,size_bytes,volume, or MSR
    /// Cambridge lines; plain or gzip.
    pub trace: PathBuf,
    /// Directory (usually a foreshard mount) holding the volume files.
    pub mount: PathBuf,
    /// Compress time this many times (1 = real time).
    #[arg(long, default_value_t = 1.0, value_parser = parse_speed, conflicts_with = "fast")]
    pub speed: f64,
    /// Issue requests back to back (order kept).
    #[arg(long)]
    pub fast: bool,
    /// Check every read against a model of what the replay wrote; mismatches exit 1.
    #[arg(long)]
    pub verify: bool,
    /// Replay only the first N requests.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Bypass the page cache (O_DIRECT), as the traced block I/O did; on a foreshard
    /// mount every request then reaches the filesystem and its access analyzer.
    #[arg(long)]
    pub direct: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct SynthArgs {
    /// Trace output (gzip when the name ends in .gz).
    #[arg(long)]
    pub out: PathBuf,
    /// Truth JSON output (default: OUT with .csv[.gz] replaced by .truth.json).
    #[arg(long)]
    pub truth: Option<PathBuf>,
    #[arg(long, default_value_t = SynthParams::default().seed)]
    pub seed: u64,
    #[arg(long, default_value_t = SynthParams::default().days)]
    pub days: u32,
    #[arg(long, default_value_t = SynthParams::default().volumes)]
    pub volumes: u32,
    #[arg(long, default_value_t = SynthParams::default().extents_per_volume)]
    pub extents_per_volume: u64,
    #[arg(long, default_value_t = SynthParams::default().requests)]
    pub requests: u64,
    #[arg(long, default_value = "1MiB", value_parser = parse_bytes)]
    pub extent_size: u64,
    /// Share of all extents that are hot.
    #[arg(long, default_value_t = SynthParams::default().hot_fraction)]
    pub hot_fraction: f64,
    /// Share of single requests going to the hot set.
    #[arg(long, default_value_t = SynthParams::default().hot_share)]
    pub hot_share: f64,
    #[arg(long, default_value_t = SynthParams::default().groups)]
    pub groups: u32,
    #[arg(long, default_value_t = SynthParams::default().group_size)]
    pub group_size: u32,
    /// Share of requests issued in group bursts.
    #[arg(long, default_value_t = SynthParams::default().burst_share)]
    pub burst_share: f64,
    /// Extents touched only during --night-hour.
    #[arg(long, default_value_t = SynthParams::default().nightly)]
    pub nightly: u32,
    #[arg(long, default_value_t = SynthParams::default().night_hour)]
    pub night_hour: u32,
    #[arg(long, default_value_t = SynthParams::default().write_fraction)]
    pub write_fraction: f64,
}

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    pub trace: PathBuf,
    #[arg(long, default_value = "1MiB", value_parser = parse_bytes)]
    pub extent_size: u64,
    #[arg(long)]
    pub json: bool,
}

/// Runs a `foreshard trace` command; returns the exit code.
pub fn run(cmd: TraceCmd) -> anyhow::Result<i32> {
    match cmd {
        TraceCmd::Replay(a) => replay_cmd(a),
        TraceCmd::Synth(a) => synth_cmd(a),
        TraceCmd::Stats(a) => stats_cmd(a),
    }
}

/// `trace replay`: exit 1 when `--verify` found a mismatch.
fn replay_cmd(a: ReplayArgs) -> anyhow::Result<i32> {
    use foreshard::util::fmt_bytes;
    let opts = ReplayOpts {
        direct: a.direct,
        speed: (!a.fast).then_some(a.speed),
        verify: a.verify,
        limit: a.limit,
    };
    let s = replay(&a.trace, &a.mount, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(if s.verify_errors > 0 { 1 } else { 0 });
    }
    println!(
        "replayed {} requests ({} reads, {} writes) on {} volume(s) in {:.2} s: \
         {:.0} IOPS, read {}, wrote {}",
        s.requests,
        s.reads,
        s.writes,
        s.volumes,
        s.elapsed_s,
        s.iops,
        fmt_bytes(s.bytes_read),
        fmt_bytes(s.bytes_written)
    );
    match (s.lag_ms_max, s.lag_ms_mean) {
        (Some(max), Some(mean)) => println!(
            "speed {}x: lag behind schedule max {max:.1} ms, mean {mean:.2} ms",
            a.speed
        ),
        _ => println!("fast: requests back to back, no schedule"),
    }
    if a.verify {
        for m in &s.mismatches {
            println!(
                "verify: MISMATCH {} at byte {} (read of {} at {}): expected {}",
                m.volume, m.offset, m.read_size, m.read_offset, m.expected
            );
        }
        println!(
            "verify: {} read(s) checked, {} mismatch(es)",
            s.reads, s.verify_errors
        );
    }
    Ok(if s.verify_errors > 0 { 1 } else { 0 })
}

fn synth_cmd(a: SynthArgs) -> anyhow::Result<i32> {
    let p = SynthParams {
        seed: a.seed,
        days: a.days,
        volumes: a.volumes,
        extents_per_volume: a.extents_per_volume,
        requests: a.requests,
        extent_size: a.extent_size,
        hot_fraction: a.hot_fraction,
        hot_share: a.hot_share,
        groups: a.groups,
        group_size: a.group_size,
        burst_share: a.burst_share,
        nightly: a.nightly,
        night_hour: a.night_hour,
        write_fraction: a.write_fraction,
        ..SynthParams::default()
    };
    let truth_path = a.truth.unwrap_or_else(|| default_truth_path(&a.out));
    let t = write_synth(&p, &a.out, &truth_path)?;
    println!(
        "wrote {} ({} requests over {} day(s), {} volume(s)) and {} ({} hot, {} groups of \
         {}, {} nightly extents)",
        a.out.display(),
        p.requests,
        p.days,
        p.volumes,
        truth_path.display(),
        t.hot.len(),
        t.groups.len(),
        p.group_size,
        t.nightly.len()
    );
    Ok(0)
}

fn stats_cmd(a: StatsArgs) -> anyhow::Result<i32> {
    use foreshard::util::fmt_bytes;
    let s = stats(&a.trace, a.extent_size)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(0);
    }
    let pct = |n: u64| 100.0 * n as f64 / s.requests.max(1) as f64;
    println!(
        "{} requests: {} reads ({:.0}%, {}), {} writes ({:.0}%, {})",
        s.requests,
        s.reads,
        pct(s.reads),
        fmt_bytes(s.bytes_read),
        s.writes,
        pct(s.writes),
        fmt_bytes(s.bytes_written)
    );
    for v in &s.volumes {
        println!(
            "  volume {}: {} requests, up to byte {}",
            v.name, v.requests, v.end_bytes
        );
    }
    println!(
        "span {:.1} h; {} distinct {} extents; top 10% of extents take {:.1}% of \
         accesses",
        s.span_hours,
        s.extents,
        fmt_bytes(s.extent_size_bytes),
        100.0 * s.top10_share
    );
    let hours: Vec<String> = s.requests_per_hour.iter().map(u64::to_string).collect();
    println!("requests by hour 0..23: {}", hours.join(" "));
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verify_mismatch_exits_1() {
        // A file with stray bytes where the trace reads space it never wrote.
        let d = tempfile::tempdir().unwrap();
        let trace = d.path().join("t.csv");
        let text = format!("{HEADER}\n0,W,0,4096,w\n1,R,0,8192,w\n");
        std::fs::write(&trace, text).unwrap();
        let mnt = d.path().join("m");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::write(mnt.join("w"), vec![7u8; 8192]).unwrap();
        let cmd = TraceCmd::Replay(ReplayArgs {
            trace,
            mount: mnt,
            speed: 1.0,
            fast: true,
            verify: true,
            limit: None,
            direct: false,
            json: true,
        });
        assert_eq!(run(cmd).unwrap(), 1);
    }

    #[test]
    fn trace_cli_checks_speed() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            cmd: TraceCmd,
        }
        let parse = |args: &[&str]| Cli::try_parse_from(["x"].iter().chain(args));
        assert!(parse(&["replay", "t", "m", "--speed", "0"]).is_err());
        assert!(parse(&["replay", "t", "m", "--speed", "inf"]).is_err());
        assert!(parse(&["replay", "t", "m", "--speed", "2", "--fast"]).is_err());
        match parse(&["replay", "t", "m", "--fast"]).unwrap().cmd {
            TraceCmd::Replay(a) => assert!(a.fast && a.speed == 1.0),
            _ => unreachable!(),
        }
        assert!(parse(&["synth", "--out", "x.csv", "--extent-size", "256KiB"]).is_ok());
    }
}
