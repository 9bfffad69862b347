//! Running fio with `--output-format=json` and reading bandwidth or IOPS from its report.

use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::cmd::Cmd;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Read,
    Write,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// MiB/s, summed over jobs.
    Bandwidth,
    /// Operations per second, summed over jobs.
    Iops,
}

#[derive(Deserialize)]
struct Report {
    jobs: Vec<Job>,
}

#[derive(Deserialize)]
struct Job {
    #[serde(default)]
    jobname: String,
    #[serde(default)]
    error: i64,
    read: Stats,
    write: Stats,
}

#[derive(Deserialize)]
struct Stats {
    /// Bytes/s; older fio versions only have `bw` in KiB/s.
    bw_bytes: Option<f64>,
    #[serde(default)]
    bw: f64,
    #[serde(default)]
    iops: f64,
    #[serde(default)]
    io_bytes: u64,
    /// ms
    #[serde(default)]
    runtime: u64,
}

fn report(text: &str) -> anyhow::Result<Report> {
    let start = text.find('{').context("no JSON object in fio's output")?;
    let report: Report = serde_json::from_str(&text[start..]).context("cannot parse fio's JSON")?;
    if report.jobs.is_empty() {
        bail!("fio reported no jobs");
    }
    if let Some(j) = report.jobs.iter().find(|j| j.error != 0) {
        bail!("fio job {} reported error {}", j.jobname, j.error);
    }
    Ok(report)
}

/// (bytes, runtime in ms) of the first job's `dir` side: what a stopped time-based job did.
pub fn totals(text: &str, dir: Dir) -> anyhow::Result<(u64, u64)> {
    let j = &report(text)?.jobs[0];
    let s = if dir == Dir::Read { &j.read } else { &j.write };
    Ok((s.io_bytes, s.runtime))
}

/// The value of `metric` for `dir` in fio's JSON report `text` (which may start with
/// non-JSON lines, as some fio versions print notes first).
pub fn parse(text: &str, dir: Dir, metric: Metric) -> anyhow::Result<f64> {
    let report = report(text)?;
    let total: f64 = report
        .jobs
        .iter()
        .map(|j| {
            let s = if dir == Dir::Read { &j.read } else { &j.write };
            match metric {
                Metric::Bandwidth => s.bw_bytes.unwrap_or(s.bw * 1024.0) / 1048576.0,
                Metric::Iops => s.iops,
            }
        })
        .sum();
    Ok(total)
}

/// Runs `fio --output-format=json --output=OUT ARGS...` and returns the value read from OUT.
pub fn run(out: &Path, args: &[String], dir: Dir, metric: Metric) -> anyhow::Result<f64> {
    let o = Cmd::new("fio")
        .arg("--output-format=json")
        .arg(format!("--output={}", out.display()))
        .args(args)
        .run()?;
    let text = std::fs::read_to_string(out).unwrap_or_default();
    if !o.status.success() {
        bail!(
            "fio failed ({}): fio {}\n{}{}\n{}",
            o.status,
            args.join(" "),
            o.stdout.trim(),
            o.stderr.trim(),
            text.trim()
        );
    }
    parse(&text, dir, metric).with_context(|| format!("fio {}", args.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEQWRITE: &str = include_str!("../tests/fixtures/fio-seqwrite.json");
    const RANDREAD: &str = include_str!("../tests/fixtures/fio-randread.json");

    #[test]
    fn reads_bandwidth_and_iops_from_captured_reports() {
        // fio-3.33, 16 MiB written with bs=1M: the write side's bw_bytes is 798915047.
        let bw = parse(SEQWRITE, Dir::Write, Metric::Bandwidth).unwrap();
        let expect = 798915047.0 / 1048576.0;
        assert!((bw - expect).abs() < 1e-6, "{bw} vs {expect}");
        assert_eq!(parse(SEQWRITE, Dir::Read, Metric::Bandwidth).unwrap(), 0.0);
        let iops = parse(RANDREAD, Dir::Read, Metric::Iops).unwrap();
        assert!((iops - 1093857.994042).abs() < 1e-6, "{iops}");
        let (bytes, ms) = totals(SEQWRITE, Dir::Write).unwrap();
        assert_eq!(bytes, 16 << 20);
        assert!(ms > 0);
    }

    #[test]
    fn sums_jobs_skips_leading_notes_and_rejects_errors() {
        let job = |bw: u64, err: i32| {
            format!(
                r#"{{"jobname":"j","error":{err},"read":{{"bw_bytes":{bw},"bw":0,"iops":10.5}},
                "write":{{"bw":2048,"iops":1}}}}"#
            )
        };
        let two = format!(
            "note: a line\n{{\"jobs\":[{},{}]}}",
            job(1048576, 0),
            job(3145728, 0)
        );
        assert_eq!(parse(&two, Dir::Read, Metric::Bandwidth).unwrap(), 4.0);
        assert_eq!(parse(&two, Dir::Read, Metric::Iops).unwrap(), 21.0);
        // No bw_bytes: bw is KiB/s.
        assert_eq!(parse(&two, Dir::Write, Metric::Bandwidth).unwrap(), 4.0);
        let bad = format!("{{\"jobs\":[{}]}}", job(1, 5));
        assert!(parse(&bad, Dir::Read, Metric::Iops).is_err());
        assert!(parse("fio: no output", Dir::Read, Metric::Iops).is_err());
        assert!(parse("{\"jobs\":[]}", Dir::Read, Metric::Iops).is_err());
    }
}
