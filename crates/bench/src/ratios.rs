//! Which ratios and targets a run reports, and their values: the same as scripts/bench
//! printed (r1/raw, r1/mfs, r2/(raw/2), r2/mfs, analyzer on/off, uring/devfuse), plus
//! r2 against the btrfs and gluster peers and each configuration against its `@before`.

use crate::peers::Config;
use crate::results::{by_round, tests, ByRound, Sample, Summary};
use crate::stats;

/// `num / (den * den_scale)`.
#[derive(Clone, Debug, PartialEq)]
pub struct RatioDef {
    pub name: String,
    pub num: String,
    pub den: String,
    pub den_scale: f64,
    /// The tests it is computed for; empty: every test of the benchmark.
    pub only: Vec<&'static str>,
}

fn def(name: &str, num: &str, den: &str, den_scale: f64) -> RatioDef {
    RatioDef {
        name: name.into(),
        num: num.into(),
        den: den.into(),
        den_scale,
        only: Vec::new(),
    }
}

/// `def` for some tests only.
fn def_for(name: &str, num: &str, den: &str, only: &[&'static str]) -> RatioDef {
    RatioDef {
        only: only.to_vec(),
        ..def(name, num, den, 1.0)
    }
}

/// An informative target: `value op threshold`, the value being the ratio of medians named
/// `ratio`, or (when no ratio has that name) the median of the configuration so named.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetDef {
    pub test: &'static str,
    pub target: String,
    pub ratio: &'static str,
    pub threshold: f64,
    /// ">=", "<=" or "<".
    pub op: &'static str,
}

fn target(
    test: &'static str,
    what: impl Into<String>,
    ratio: &'static str,
    threshold: f64,
    op: &'static str,
) -> TargetDef {
    TargetDef {
        test,
        target: what.into(),
        ratio,
        threshold,
        op,
    }
}

/// Whether `v op threshold` holds.
pub fn holds(v: f64, op: &str, threshold: f64) -> bool {
    match op {
        "<=" => v <= threshold,
        "<" => v < threshold,
        _ => v >= threshold,
    }
}

/// The ratio columns for these configurations. The first four are always shown (as "-"
/// when a side is missing), the others only when both sides ran.
pub fn defs(bench: &str, configs: &[Config]) -> Vec<RatioDef> {
    let has = |n: &str| configs.iter().any(|c| c.name == n);
    match bench {
        "access" => return vec![def("on/off", "on", "off", 1.0)],
        "recovery" => return recovery_defs(),
        "reshard" => {
            let mut after = def("after/before", "after", "before", 1.0);
            after.only = crate::results::RESHARD_TESTS.iter().map(|t| t.0).collect();
            return vec![after];
        }
        "sim" => {
            let tests = &[
                "expected_data_loss_events",
                "degraded_tb_hours",
                "rebuilt_tb",
            ];
            return vec![def_for("evacuate/random", "risk+evacuate", "random", tests)];
        }
        _ => {}
    }
    if bench == "fsync" {
        let new_old = def("new/old", "new", "old", 1.0);
        return if has("old") { vec![new_old] } else { vec![] };
    }
    let mut v = vec![
        def("r1/raw", "fs-r1", "raw", 1.0),
        def("r1/mfs", "fs-r1", "mergerfs", 1.0),
        def("r2/(raw/2)", "fs-r2", "raw", 0.5),
        def("r2/mfs", "fs-r2", "mergerfs", 1.0),
    ];
    let optional = [
        def("r2/btrfs", "fs-r2", "btrfs", 1.0),
        def("r2/gluster", "fs-r2", "gluster", 1.0),
        // issue 5: the access analyzer's cost; fs-r2 runs it, fs-r2-noaccess does not
        def("analyzer on/off", "fs-r2", "fs-r2-noaccess", 1.0),
        // FUSE over io_uring queues (fs-r1) against /dev/fuse only (fs-r1-devfuse)
        def("uring/devfuse", "fs-r1", "fs-r1-devfuse", 1.0),
    ];
    v.extend(optional.into_iter().filter(|d| has(&d.num) && has(&d.den)));
    for c in configs.iter().filter(|c| c.before) {
        let after = c.name.trim_end_matches("@before");
        if has(after) {
            let short = after.trim_start_matches("fs-");
            v.push(def(&format!("{short} after/before"), after, &c.name, 1.0));
        }
    }
    v
}

/// scripts/bench-recovery's comparisons: the pool against btrfs replace (time), the plain
/// copy (rate) and the reactive agents (activation).
fn recovery_defs() -> Vec<RatioDef> {
    vec![
        def_for("pool/btrfs", "fs-pool", "btrfs", &["full_s"]),
        def_for("pool/plain", "fs-pool", "plain", &["rate_mibs"]),
        def_for("pool/reactive", "fs-pool", "fs-reactive", &["activate_ms"]),
    ]
}

/// The value of `d` for `test`: of the medians, and per round.
pub fn ratio_summary(d: &RatioDef, test: &str, br: &ByRound) -> Summary {
    let rounds_of = |c: &str| {
        br.get(test)
            .and_then(|m| m.get(c))
            .cloned()
            .unwrap_or_default()
    };
    let (num, mut den) = (rounds_of(&d.num), rounds_of(&d.den));
    den.values_mut().for_each(|v| *v *= d.den_scale);
    let med = |m: &std::collections::BTreeMap<u32, f64>| {
        stats::median(&m.values().copied().collect::<Vec<_>>())
    };
    let rounds = stats::round_ratios(&num, &den);
    let spread = stats::spread(&rounds);
    Summary::Ratio {
        test: test.into(),
        name: d.name.clone(),
        of_medians: stats::ratio(med(&num), med(&den)),
        rounds_median: stats::median(&rounds),
        rounds_min: spread.map(|s| s.0),
        rounds_max: spread.map(|s| s.1),
        rounds_geomean: stats::geomean(&rounds),
        rounds,
    }
}

/// The targets of a benchmark: scripts/bench's, scripts/bench-recovery's, bench-sim's.
pub fn target_defs(bench: &str, configs: &[Config]) -> Vec<TargetDef> {
    match bench {
        "io" => io_targets(configs),
        "recovery" => vec![
            target(
                "full_s",
                "pool time / btrfs time <= 1",
                "pool/btrfs",
                1.0,
                "<=",
            ),
            target(
                "rate_mibs",
                "pool rate / plain copy rate >= 0.8",
                "pool/plain",
                0.8,
                ">=",
            ),
            target(
                "activate_ms",
                "pool activation < 10 ms",
                "fs-pool",
                10.0,
                "<",
            ),
            target(
                "activate_ms",
                "pool activation <= 0.5x reactive",
                "pool/reactive",
                0.5,
                "<=",
            ),
        ],
        // issue 6: 10,000 disks x 5 years in under a minute
        "sim" => vec![target("wall_s", "wall time < 60 s", "sim", 60.0, "<")],
        _ => Vec::new(),
    }
}

fn io_targets(configs: &[Config]) -> Vec<TargetDef> {
    let mut t = vec![
        target(
            "seq_write",
            "fs-r1 seq write >= 0.9x raw",
            "r1/raw",
            0.9,
            ">=",
        ),
        target(
            "seq_write",
            "fs-r1 seq write >= mergerfs",
            "r1/mfs",
            1.0,
            ">=",
        ),
        target(
            "seq_write",
            "fs-r2 seq write >= 0.8x raw/2",
            "r2/(raw/2)",
            0.8,
            ">=",
        ),
        target(
            "seq_read_cold",
            "fs-r1 cold seq read >= 0.9x raw",
            "r1/raw",
            0.9,
            ">=",
        ),
        target(
            "seq_read_cold",
            "fs-r1 cold seq read >= mergerfs",
            "r1/mfs",
            1.0,
            ">=",
        ),
    ];
    let names = [
        ("randread_4k", "4k rand read"),
        ("randread_4k_direct", "4k rand read direct"),
        ("meta_create", "create"),
        ("meta_stat", "stat"),
        ("meta_unlink", "unlink"),
    ];
    for (test, name) in names {
        t.push(target(
            test,
            format!("fs-r1 {name} >= mergerfs"),
            "r1/mfs",
            1.0,
            ">=",
        ));
        t.push(target(
            test,
            format!("fs-r2 {name} >= mergerfs"),
            "r2/mfs",
            1.0,
            ">=",
        ));
    }
    if configs.iter().any(|c| c.name == "fs-r2-noaccess") {
        t.extend(analyzer_targets(&names[..2]));
    }
    t
}

/// issue 5: the access analyzer costs at most 3%.
fn analyzer_targets(rand: &[(&'static str, &str)]) -> Vec<TargetDef> {
    let reads = [
        ("seq_write", "seq write"),
        ("seq_read_cold", "cold seq read"),
    ];
    let all = reads.into_iter().chain(rand.iter().copied());
    all.map(|(test, name)| {
        let what = format!("analyzer on/off {name} >= 0.97");
        target(test, what, "analyzer on/off", 0.97, ">=")
    })
    .collect()
}

/// The whole summary: configurations, then ratios, then targets.
pub fn summarize(bench: &str, configs: &[Config], samples: &[Sample]) -> Vec<Summary> {
    let br = by_round(samples);
    let mut out = crate::results::config_summary(bench, configs, samples);
    let defs = defs(bench, configs);
    for (test, _, _) in tests(bench) {
        for d in defs
            .iter()
            .filter(|d| d.only.is_empty() || d.only.contains(&test))
        {
            out.push(ratio_summary(d, test, &br));
        }
    }
    for t in target_defs(bench, configs) {
        let is_ratio = defs.iter().any(|d| d.name == t.ratio);
        let value = out.iter().find_map(|s| match s {
            Summary::Ratio {
                test,
                name,
                of_medians,
                ..
            } if is_ratio && *test == t.test && name == t.ratio => *of_medians,
            Summary::Config {
                test,
                config,
                median,
                ..
            } if !is_ratio && *test == t.test && config == t.ratio => Some(*median),
            _ => None,
        });
        let status = match value {
            None => "n/a",
            Some(v) if holds(v, t.op, t.threshold) => "PASS",
            Some(_) => "MISS",
        };
        out.push(Summary::Target {
            test: t.test.into(),
            target: t.target,
            ratio: t.ratio.into(),
            threshold: t.threshold,
            op: t.op.into(),
            value,
            status: status.into(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peers::parse_list;

    fn sample(config: &str, test: &str, round: u32, value: f64) -> Sample {
        Sample {
            config: config.into(),
            test: test.into(),
            round,
            value,
            unit: "MiB/s".into(),
        }
    }

    #[test]
    fn defs_follow_the_configurations() {
        let names = |l: &str, b: bool| {
            defs("io", &parse_list(l, b).unwrap())
                .into_iter()
                .map(|d| d.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names("raw,r1", false),
            ["r1/raw", "r1/mfs", "r2/(raw/2)", "r2/mfs"]
        );
        let all = names(
            "raw,mergerfs,btrfs,gluster,r1,r2,r2-noaccess,r1-devfuse",
            false,
        );
        assert_eq!(
            &all[4..],
            ["r2/btrfs", "r2/gluster", "analyzer on/off", "uring/devfuse"]
        );
        assert_eq!(&names("r2", true)[4..], ["r2 after/before"]);
    }

    #[test]
    fn summary_has_medians_spreads_round_ratios_and_targets() {
        let configs = parse_list("raw,r2", true).unwrap();
        let mut s = Vec::new();
        for (r, raw, new, old) in [
            (1, 100.0, 60.0, 50.0),
            (2, 200.0, 90.0, 100.0),
            (3, 150.0, 70.0, 70.0),
        ] {
            s.push(sample("raw", "seq_write", r, raw));
            s.push(sample("fs-r2", "seq_write", r, new));
            s.push(sample("fs-r2@before", "seq_write", r, old));
        }
        let sum = summarize("io", &configs, &s);
        let cfg = sum
            .iter()
            .find(|x| matches!(x, Summary::Config { config, .. } if config == "fs-r2"))
            .unwrap();
        assert_eq!(
            *cfg,
            Summary::Config {
                test: "seq_write".into(),
                config: "fs-r2".into(),
                unit: "MiB/s".into(),
                median: 70.0,
                min: 60.0,
                max: 90.0,
                n: 3
            }
        );
        let ratio = |n: &str| {
            sum.iter()
                .find_map(|x| match x {
                    Summary::Ratio {
                        test,
                        name,
                        of_medians,
                        rounds,
                        rounds_median,
                        ..
                    } if test == "seq_write" && name == n => {
                        Some((*of_medians, rounds.clone(), *rounds_median))
                    }
                    _ => None,
                })
                .unwrap()
        };
        assert_eq!(
            ratio("r2 after/before"),
            (Some(1.0), vec![1.2, 0.9, 1.0], Some(1.0))
        );
        // r2 / (raw/2): medians 70 / 75; rounds 60/50, 90/100, 70/75.
        let (m, rounds, _) = ratio("r2/(raw/2)");
        assert!((m.unwrap() - 70.0 / 75.0).abs() < 1e-12);
        assert_eq!(rounds.len(), 3);
        assert_eq!(ratio("r1/raw"), (None, vec![], None));
        let status = |t: &str| {
            sum.iter()
                .find_map(|x| match x {
                    Summary::Target { target, status, .. } if target == t => Some(status.clone()),
                    _ => None,
                })
                .unwrap()
        };
        assert_eq!(status("fs-r2 seq write >= 0.8x raw/2"), "PASS");
        assert_eq!(status("fs-r1 seq write >= 0.9x raw"), "n/a");
    }

    #[test]
    fn analyzer_targets_in_scripts_bench_order() {
        let t = target_defs("io", &parse_list("r2,r2-noaccess", false).unwrap());
        let tail: Vec<&str> = t[t.len() - 4..].iter().map(|x| x.test).collect();
        assert_eq!(
            tail,
            [
                "seq_write",
                "seq_read_cold",
                "randread_4k",
                "randread_4k_direct"
            ]
        );
    }

    /// Four recovery configurations and their samples: pool/btrfs time 1.0 / 1.3, pool/plain
    /// rate 500 / 700, activation 12 ms against 30 ms.
    fn recovery_samples() -> (Vec<Config>, Vec<Sample>) {
        let c = |name: &str| Config {
            name: name.into(),
            kind: crate::peers::Kind::Foreshard,
            replicas: 2,
            no_access: false,
            devfuse: false,
            before: false,
            detail: String::new(),
        };
        let configs: Vec<Config> = ["fs-pool", "fs-reactive", "plain", "btrfs"].map(c).into();
        let s = |config: &str, test: &str, round, value| Sample {
            config: config.into(),
            test: test.into(),
            round,
            value,
            unit: String::new(),
        };
        let samples = vec![
            s("fs-pool", "full_s", 1, 0.8),
            s("btrfs", "full_s", 1, 1.6),
            s("fs-pool", "full_s", 2, 1.2),
            s("btrfs", "full_s", 2, 1.0),
            s("fs-pool", "rate_mibs", 1, 500.0),
            s("plain", "rate_mibs", 1, 700.0),
            s("fs-pool", "activate_ms", 1, 12.0),
            s("fs-reactive", "activate_ms", 1, 30.0),
        ];
        (configs, samples)
    }

    #[test]
    fn recovery_targets_compare_both_ways_and_on_a_median() {
        let (configs, samples) = recovery_samples();
        let sum = summarize("recovery", &configs, &samples);
        // Ratios only for their own tests: pool/btrfs on full_s, none on rate_mibs.
        let ratios: Vec<(&str, &str)> = sum
            .iter()
            .filter_map(|x| match x {
                Summary::Ratio { test, name, .. } => Some((test.as_str(), name.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(
            ratios,
            [
                ("activate_ms", "pool/reactive"),
                ("full_s", "pool/btrfs"),
                ("rate_mibs", "pool/plain")
            ]
        );
        let pool_btrfs = sum.iter().find_map(|x| match x {
            Summary::Ratio {
                name,
                of_medians,
                rounds,
                ..
            } if name == "pool/btrfs" => Some((*of_medians, rounds.clone())),
            _ => None,
        });
        assert_eq!(pool_btrfs, Some((Some(1.0 / 1.3), vec![0.5, 1.2])));
        let status = |t: &str| {
            sum.iter()
                .find_map(|x| match x {
                    Summary::Target {
                        target,
                        status,
                        value,
                        ..
                    } if target == t => Some((status.as_str(), *value)),
                    _ => None,
                })
                .unwrap()
        };
        assert_eq!(status("pool time / btrfs time <= 1").0, "PASS");
        assert_eq!(status("pool rate / plain copy rate >= 0.8").0, "MISS");
        // On fs-pool's median (12 ms), not a ratio.
        assert_eq!(status("pool activation < 10 ms"), ("MISS", Some(12.0)));
        assert_eq!(
            status("pool activation <= 0.5x reactive"),
            ("PASS", Some(0.4))
        );
        assert!(holds(1.0, "<=", 1.0) && !holds(1.0, "<", 1.0) && holds(2.0, ">=", 1.0));
    }
}
