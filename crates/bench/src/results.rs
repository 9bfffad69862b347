//! The results schema (`foreshard-bench/1`): one JSON document per run with the host, the
//! configurations, every sample, and a summary (per test and configuration: median and
//! spread; per ratio: ratio of medians and per-round ratios; the targets).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::peers::Config;
use crate::stats;

pub const SCHEMA: &str = "foreshard-bench/1";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub schema: String,
    /// Which benchmark: "io" (fio and metadata).
    pub bench: String,
    pub host: Host,
    /// The source tree's commit (short hash), if known.
    pub commit: Option<String>,
    pub params: Params,
    pub configs: Vec<Config>,
    pub samples: Vec<Sample>,
    pub summary: Vec<Summary>,
    /// What a benchmark measures besides samples (access: the analyzer's own counters).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, serde_json::Value>,
}

impl Results {
    /// A results document of this schema.
    pub fn new(
        bench: &str,
        commit: Option<String>,
        host: Host,
        params: Params,
        configs: Vec<Config>,
        samples: Vec<Sample>,
        summary: Vec<Summary>,
    ) -> Results {
        Results {
            schema: SCHEMA.into(),
            bench: bench.into(),
            host,
            commit,
            params,
            configs,
            samples,
            summary,
            extra: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Host {
    pub hostname: String,
    pub nproc: usize,
    pub kernel: String,
    /// ISO 8601 start of the run.
    pub date: String,
    pub ndisks: usize,
    pub disk_kind: String,
    /// /sys/module/fuse/parameters/enable_uring ("Y", "N", or "absent").
    pub fuse_enable_uring: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Params {
    pub file_mib: u64,
    pub nfiles: usize,
    pub meta_bytes: usize,
    pub runtime_s: u64,
    pub runs: u32,
    pub interleave: bool,
    pub remount_before_cold_read: bool,
    pub mergerfs_opts: String,
    pub fio_version: String,
    /// The command line of the run.
    pub command: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub config: String,
    pub test: String,
    pub round: u32,
    pub value: f64,
    pub unit: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Summary {
    /// One configuration's values for one test.
    Config {
        test: String,
        config: String,
        unit: String,
        median: f64,
        min: f64,
        max: f64,
        n: usize,
    },
    /// `num / den` for one test: of the medians, and round by round.
    Ratio {
        test: String,
        name: String,
        of_medians: Option<f64>,
        rounds: Vec<f64>,
        rounds_median: Option<f64>,
        rounds_min: Option<f64>,
        rounds_max: Option<f64>,
        #[serde(default)]
        rounds_geomean: Option<f64>,
    },
    /// An informative target: PASS when `value op threshold`; the value is the ratio of
    /// medians named `ratio`, or the median of the configuration so named.
    Target {
        test: String,
        target: String,
        ratio: String,
        threshold: f64,
        #[serde(default = "at_least")]
        op: String,
        value: Option<f64>,
        status: String,
    },
}

fn at_least() -> String {
    ">=".into()
}

/// A test: id, label, unit.
pub type Test = (&'static str, &'static str, &'static str);

/// The tests of the io benchmark.
pub const IO_TESTS: [Test; 7] = [
    ("seq_write", "seq write 1M (MiB/s)", "MiB/s"),
    ("seq_read_cold", "cold seq read 1M (MiB/s)", "MiB/s"),
    ("randread_4k", "4k rand read warm (IOPS)", "IOPS"),
    ("randread_4k_direct", "4k rand read O_DIRECT (IOPS)", "IOPS"),
    ("meta_create", "create (files/s)", "ops/s"),
    ("meta_stat", "stat cold (files/s)", "ops/s"),
    ("meta_unlink", "unlink (files/s)", "ops/s"),
];

/// The tests of the fsync benchmark (scripts/bench-fsync's workloads).
pub const FSYNC_TESTS: [Test; 4] = [
    (
        "fsync4k",
        "fsync4k (fio 4 KiB randwrite, fsync each, IOPS)",
        "IOPS",
    ),
    (
        "cfsync",
        "cfsync (create + 4 KiB + fsync + close, files/s)",
        "ops/s",
    ),
    (
        "create",
        "create (create + 1 KiB + close, files/s)",
        "ops/s",
    ),
    (
        "overwrite",
        "overwrite (pwrite 8 B into 3000 files + close, ops/s)",
        "ops/s",
    ),
];

/// The tests of the access benchmark (scripts/bench-access's workloads, and the daemon's CPU
/// for each: per pass over the file for sequential I/O, per request for random reads).
pub const ACCESS_TESTS: [Test; 6] = [
    ("seq_write", "1 MiB seq write + fsync (MiB/s)", "MiB/s"),
    ("seq_read", "1 MiB seq read, cold (MiB/s)", "MiB/s"),
    (
        "randread_direct",
        "4 KiB rand read O_DIRECT, 4 jobs (IOPS)",
        "IOPS",
    ),
    ("seq_write_cpu", "daemon CPU per pass, seq write (ms)", "ms"),
    ("seq_read_cpu", "daemon CPU per pass, seq read (ms)", "ms"),
    (
        "randread_direct_cpu",
        "daemon CPU per request, rand read (us)",
        "us",
    ),
];

/// The recovery benchmark's tests of each configuration (scripts/bench-recovery's table).
pub const RECOVERY_TESTS: [Test; 5] = [
    ("detect_ms", "detection latency (ms)", "ms"),
    ("activate_ms", "activation latency (ms)", "ms"),
    ("full_s", "time to full replication (s)", "s"),
    ("rate_mibs", "rate (MiB/s)", "MiB/s"),
    ("bytes_mib", "data re-replicated (MiB)", "MiB"),
];

/// The recovery benchmark's foreground phase, per recovery profile (fg-PROFILE).
pub const FOREGROUND_TESTS: [Test; 9] = [
    ("fg_idle_mibs", "fg idle MiB/s", "MiB/s"),
    ("fg_during_mibs", "fg during rec. MiB/s", "MiB/s"),
    ("fg_kept", "fg kept", "ratio"),
    ("rec_mibs", "recovery MiB/s", "MiB/s"),
    ("rec_s", "recovery s", "s"),
    ("rec_share", "recovery share", "ratio"),
    ("fg_pre_mibs", "fg before the yank MiB/s", "MiB/s"),
    (
        "fg_during_daemon_mibs",
        "fg during, daemon-counted MiB/s",
        "MiB/s",
    ),
    (
        "fg_idle_daemon_counted",
        "daemon-counted / fio bytes, idle",
        "ratio",
    ),
];

/// The re-sharding benchmark's measures of the pool before and after `reshard --wait`.
pub const RESHARD_TESTS: [Test; 12] = [
    (
        "cross_pairs",
        "co-accessed pairs in different shards",
        "pairs",
    ),
    ("cross_fraction", "  fraction (%)", "%"),
    (
        "cross_fraction_weighted",
        "  weighted by co-access count (%)",
        "%",
    ),
    (
        "groups_split",
        "co-access groups spanning > 1 shard",
        "groups",
    ),
    ("shards_per_group", "  mean shards per group", "shards"),
    (
        "rebuild_median_mib",
        "single-disk failure, MiB rebuilt for the hot set: median over disks",
        "MiB",
    ),
    ("rebuild_max_mib", "  max over disks", "MiB"),
    (
        "rebuild_median_nominal_mib",
        "  nominal (extents x extent size): median",
        "MiB",
    ),
    ("rebuild_max_nominal_mib", "  nominal: max", "MiB"),
    (
        "rebuild_all_median_mib",
        "  for scale: all shards on the disk, median",
        "MiB",
    ),
    ("shards", "shards", "shards"),
    ("shards_with_hot", "  holding a hot extent", "shards"),
];

/// The re-sharding benchmark's measures of the run (configuration "run").
pub const RESHARD_RUN_TESTS: [Test; 12] = [
    ("hot_mib", "hot working set (MiB of data)", "MiB"),
    ("bytes_moved_mib", "migration: bytes moved (MiB)", "MiB"),
    (
        "bytes_copied_mib",
        "  bytes copied to target disks (MiB)",
        "MiB",
    ),
    ("migration_s", "  elapsed (s)", "s"),
    (
        "copy_rate_mibs",
        "  copy rate bytes_copied / elapsed (MiB/s)",
        "MiB/s",
    ),
    ("gib_per_hour", "  the same in GiB per hour", "GiB/h"),
    ("events_applied", "analyzer: events applied", "events"),
    ("analyzer_memory_kib", "  memory (KiB)", "KiB"),
    ("analyzer_memory_max_kib", "  memory bound (KiB)", "KiB"),
    ("extents_tracked", "  extents tracked", "extents"),
    ("pairs_tracked", "  pairs tracked", "pairs"),
    ("cpu_us_per_event", "  CPU per event (us)", "us"),
];

/// The simulator benchmark's measures per placement policy, and its wall time ("sim").
pub const SIM_TESTS: [Test; 10] = [
    ("data_loss_events", "data-loss events", "events"),
    (
        "expected_data_loss_events",
        "expected loss events",
        "events",
    ),
    ("degraded_tb_hours", "degraded TB-hours", "TB-h"),
    ("rebuilt_tb", "rebuilt TB", "TB"),
    ("migrated_tb", "migrated TB", "TB"),
    ("failures", "failures", "disks"),
    ("evacuations_started", "evacuated disks", "disks"),
    (
        "failures_after_evacuation",
        "  of them failed later",
        "disks",
    ),
    ("mean_repair_hours", "mean repair (h)", "h"),
    ("wall_s", "wall time (s)", "s"),
];

/// The tests of a benchmark.
pub fn tests(bench: &str) -> Vec<Test> {
    match bench {
        "fsync" => FSYNC_TESTS.to_vec(),
        "access" => ACCESS_TESTS.to_vec(),
        "recovery" => [&RECOVERY_TESTS[..], &FOREGROUND_TESTS].concat(),
        "reshard" => [&RESHARD_TESTS[..], &RESHARD_RUN_TESTS].concat(),
        "sim" => SIM_TESTS.to_vec(),
        _ => IO_TESTS.to_vec(),
    }
}

/// A test's unit (test ids are unique over all benchmarks).
pub fn unit_of(test: &str) -> &'static str {
    let benches = ["io", "fsync", "access", "recovery", "reshard", "sim"];
    let all: Vec<Test> = benches.iter().flat_map(|b| tests(b)).collect();
    all.iter().find(|t| t.0 == test).map_or("", |t| t.2)
}

/// test -> config -> round -> value.
pub type ByRound = BTreeMap<String, BTreeMap<String, BTreeMap<u32, f64>>>;

pub fn by_round(samples: &[Sample]) -> ByRound {
    let mut m = ByRound::new();
    for s in samples {
        let rounds = m
            .entry(s.test.clone())
            .or_default()
            .entry(s.config.clone())
            .or_default();
        rounds.insert(s.round, s.value);
    }
    m
}

/// Median and spread of every test and configuration that has samples.
pub fn config_summary(bench: &str, configs: &[Config], samples: &[Sample]) -> Vec<Summary> {
    let br = by_round(samples);
    let mut out = Vec::new();
    for (test, _, unit) in tests(bench) {
        for c in configs {
            let Some(rounds) = br.get(test).and_then(|m| m.get(&c.name)) else {
                continue;
            };
            let v: Vec<f64> = rounds.values().copied().collect();
            let (Some(median), Some((min, max))) = (stats::median(&v), stats::spread(&v)) else {
                continue;
            };
            out.push(Summary::Config {
                test: test.into(),
                config: c.name.clone(),
                unit: unit.into(),
                median,
                min,
                max,
                n: v.len(),
            });
        }
    }
    out
}

impl Results {
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn read(path: &Path) -> anyhow::Result<Results> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let r: Results = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a results file", path.display()))?;
        if r.schema != SCHEMA {
            bail!(
                "{}: schema {:?}, this harness reads {SCHEMA:?}",
                path.display(),
                r.schema
            );
        }
        Ok(r)
    }

    /// The median of `config` for `test`, from the summary.
    pub fn median(&self, test: &str, config: &str) -> Option<f64> {
        self.summary.iter().find_map(|s| match s {
            Summary::Config {
                test: t,
                config: c,
                median,
                ..
            } if t == test && c == config => Some(*median),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::parse_list;

    #[test]
    fn a_results_file_reads_back_and_other_schemas_are_refused() {
        let configs = parse_list("raw,r2", false).unwrap();
        let samples = vec![Sample {
            config: "fs-r2".into(),
            test: "seq_write".into(),
            round: 1,
            value: 512.5,
            unit: "MiB/s".into(),
        }];
        let r = Results {
            schema: SCHEMA.into(),
            bench: "io".into(),
            host: Host::default(),
            commit: Some("abc1234".into()),
            params: Params::default(),
            summary: crate::ratios::summarize("io", &configs, &samples),
            configs,
            samples,
            extra: BTreeMap::new(),
        };
        let path =
            std::env::temp_dir().join(format!("fsbench-results-{}.json", std::process::id()));
        r.write(&path).unwrap();
        let back = Results::read(&path).unwrap();
        assert_eq!(back.samples, r.samples);
        assert_eq!(back.summary, r.summary);
        assert_eq!(back.median("seq_write", "fs-r2"), Some(512.5));
        assert_eq!(back.median("seq_write", "raw"), None);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""kind": "config""#) && text.contains(r#""kind": "target""#));
        std::fs::write(&path, text.replace(SCHEMA, "foreshard-bench/0")).unwrap();
        assert!(Results::read(&path).is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
