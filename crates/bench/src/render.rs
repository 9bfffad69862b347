//! The report of a results file: the terminal table scripts/bench printed (medians, ratio
//! columns, PASS/MISS per row), the targets, the pair tables (analyzer on/off, after/before),
//! and the same as Markdown for a marked section of docs/benchmarks.md.

use anyhow::bail;

use crate::results::{tests, Results, Summary};
use crate::{peers, ratios};

/// Rows of cells; rendered aligned for a terminal or as a Markdown table.
pub struct Table {
    pub head: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// Left-aligned first column, the rest right-aligned, two spaces apart.
    pub fn text(&self) -> String {
        let all = || std::iter::once(&self.head).chain(&self.rows);
        let widths: Vec<usize> = (0..self.head.len())
            .map(|i| all().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        let line = |r: &[String]| {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (c, w))| {
                    if i == 0 {
                        format!("{c:<w$}")
                    } else {
                        format!("{c:>w$}")
                    }
                })
                .collect();
            cells.join("  ").trim_end().to_string()
        };
        let mut out = vec![line(&self.head)];
        out.push(
            widths
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .join("  "),
        );
        out.extend(self.rows.iter().map(|r| line(r)));
        out.join("\n") + "\n"
    }

    pub fn markdown(&self) -> String {
        let row = |r: &[String]| format!("| {} |", r.join(" | "));
        let mut out = vec![row(&self.head)];
        out.push(format!("|{}|", vec!["---"; self.head.len()].join("|")));
        out.extend(self.rows.iter().map(|r| row(r)));
        out.join("\n") + "\n"
    }
}

/// Values as scripts/bench printed them: one decimal below 1000, none above.
pub fn fmt(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v < 1000.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.0}"),
    }
}

fn fmt2(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

fn ratio_of(r: &Results, test: &str, name: &str) -> Option<f64> {
    r.summary.iter().find_map(|s| match s {
        Summary::Ratio {
            test: t,
            name: n,
            of_medians,
            ..
        } if t == test && n == name => *of_medians,
        _ => None,
    })
}

fn targets(r: &Results) -> Vec<(&str, &str, Option<f64>, &str)> {
    let iter = r.summary.iter().filter_map(|s| match s {
        Summary::Target {
            test,
            target,
            value,
            status,
            ..
        } => Some((test.as_str(), target.as_str(), *value, status.as_str())),
        _ => None,
    });
    iter.collect()
}

/// PASS, MISS (any target of the row missed) or n/a.
fn row_status(r: &Results, test: &str) -> &'static str {
    let st: Vec<&str> = targets(r)
        .into_iter()
        .filter(|t| t.0 == test && t.3 != "n/a")
        .map(|t| t.3)
        .collect();
    match (st.is_empty(), st.contains(&"MISS")) {
        (true, _) => "n/a",
        (false, true) => "MISS",
        (false, false) => "PASS",
    }
}

/// The configuration columns: those that ran; for io also raw, mergerfs, fs-r1 and fs-r2
/// when they did not (as "-"), as scripts/bench showed them, in canonical order.
fn columns(r: &Results) -> Vec<String> {
    let mut names: Vec<String> = r.configs.iter().map(|c| c.name.clone()).collect();
    if r.bench != "io" {
        return names;
    }
    for base in ["raw", "mergerfs", "fs-r1", "fs-r2"] {
        if !names.iter().any(|n| n == base) {
            names.push(base.into());
        }
    }
    let key = |n: &String| {
        let plain = n.trim_end_matches("@before");
        (
            peers::NAMES.iter().position(|c| *c == plain),
            n.ends_with("@before"),
        )
    };
    names.sort_by_key(key);
    names
}

/// The main table: one row per test, a column per configuration and per ratio.
pub fn main_table(r: &Results) -> Table {
    let defs = ratios::defs(&r.bench, &r.configs);
    let with_targets = !ratios::target_defs(&r.bench, &r.configs).is_empty();
    let columns = columns(r);
    let mut head = vec!["test".to_string()];
    head.extend(columns.iter().cloned());
    head.extend(defs.iter().map(|d| d.name.clone()));
    if with_targets {
        head.push("targets".into());
    }
    let rows = tests(&r.bench)
        .iter()
        .map(|(test, label, _)| {
            let mut row = vec![label.to_string()];
            row.extend(columns.iter().map(|c| fmt(r.median(test, c))));
            row.extend(defs.iter().map(|d| fmt2(ratio_of(r, test, &d.name))));
            if with_targets {
                row.push(row_status(r, test).into());
            }
            row
        })
        .collect();
    Table { head, rows }
}

/// `num` against `den` per test: medians, spreads and (interleaved) the median of the
/// ratios of runs made in the same round.
pub fn pair_table(r: &Results, ratio: &str, num: &str, den: &str) -> Option<Table> {
    let spread = |test: &str, c: &str| {
        r.summary.iter().find_map(|s| match s {
            Summary::Config {
                test: t,
                config,
                min,
                max,
                ..
            } if t == test && config == c => {
                Some(format!("{}..{}", fmt(Some(*min)), fmt(Some(*max))))
            }
            _ => None,
        })
    };
    let mut head: Vec<String> = [
        "test",
        num,
        den,
        &format!("{num}/{den}"),
        &format!("{num} min..max"),
        &format!("{den} min..max"),
    ]
    .map(String::from)
    .into();
    if r.params.interleave {
        head.push("median of round ratios".into());
        head.push("geomean".into());
        head.push("rounds".into());
    }
    let mut rows = Vec::new();
    for &(test, label, _) in tests(&r.bench) {
        let (Some(a), Some(b)) = (r.median(test, num), r.median(test, den)) else {
            continue;
        };
        let mut row = vec![
            label.to_string(),
            fmt(Some(a)),
            fmt(Some(b)),
            format!("{:.3}", a / b),
        ];
        row.push(spread(test, num).unwrap_or_default());
        row.push(spread(test, den).unwrap_or_default());
        if r.params.interleave {
            let rm = r.summary.iter().find_map(|s| match s {
                Summary::Ratio {
                    test: t,
                    name,
                    rounds_median,
                    rounds_geomean,
                    rounds,
                    ..
                } if t == test && name == ratio => {
                    Some((*rounds_median, *rounds_geomean, rounds.as_slice()))
                }
                _ => None,
            });
            let (med, geo, rounds) = rm.unwrap_or((None, None, &[]));
            row.push(med.map_or("-".into(), |v| format!("{v:.3}")));
            row.push(geo.map_or("-".into(), |v| format!("{v:.3}")));
            let each: Vec<String> = rounds.iter().map(|v| format!("{v:.2}")).collect();
            row.push(each.join(" "));
        }
        rows.push(row);
    }
    (!rows.is_empty()).then_some(Table { head, rows })
}

/// The pairs that get a table of their own: analyzer on/off and each after/before.
fn pairs(r: &Results) -> Vec<(String, String, String)> {
    let pair_defs = ratios::defs(&r.bench, &r.configs).into_iter().filter(|d| {
        let paired = ["analyzer on/off", "new/old", "on/off"];
        paired.contains(&d.name.as_str()) || d.name.ends_with("after/before")
    });
    pair_defs.map(|d| (d.name, d.num, d.den)).collect()
}

fn header_lines(r: &Results) -> Vec<String> {
    let (h, p) = (&r.host, &r.params);
    let order = if p.interleave { ", interleaved" } else { "" };
    let mut v = vec![format!(
        "foreshard benchmark: nproc={} kernel={} date={}",
        h.nproc, h.kernel, h.date
    )];
    if r.bench == "access" {
        v.push(format!(
            "disks: {} x {}; 2 replicas; file {} MiB; rand read {} s; rounds {} (median){order}",
            h.ndisks, h.disk_kind, p.file_mib, p.runtime_s, p.runs
        ));
    } else if r.bench == "fsync" {
        v.push(format!(
            "disks: {} x {}; 2 replicas, a fresh pool per round and binary; fio {} MiB file, {} s; {} files; rounds {} (median){order}",
            h.ndisks, h.disk_kind, p.file_mib, p.runtime_s, p.nfiles, p.runs
        ));
    } else {
        v.push(format!(
            "disks: {} x {}; file {} MiB; {} files of {} B; rand read {} s; runs {} (median){order}",
            h.ndisks, h.disk_kind, p.file_mib, p.nfiles, p.meta_bytes, p.runtime_s, p.runs
        ));
        v.push(format!("mergerfs -o {}", p.mergerfs_opts));
    }
    for c in r.configs.iter().filter(|c| !c.detail.is_empty()) {
        v.push(format!("{}: {}", c.name, c.detail));
    }
    v.push(format!(
        "commit: {}; kernel FUSE over io_uring: {}",
        r.commit.as_deref().unwrap_or("?"),
        h.fuse_enable_uring
    ));
    v
}

/// The analyzer's own counters (access benchmark): events, CPU per event, memory.
fn analyzer_line(r: &Results) -> Option<String> {
    let a = r.extra.get("analyzer")?;
    let n = |k: &str| a.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
    let per_event_us = n("cpu_ms") * 1000.0 / n("events_applied").max(1.0);
    Some(format!(
        "analyzer: {} events ({} dropped), cpu {} ms = {per_event_us:.2} us per event, memory {} KiB",
        n("events_applied"),
        n("events_dropped"),
        n("cpu_ms"),
        n("memory_bytes") as u64 >> 10
    ))
}

/// The terminal report.
pub fn text(r: &Results) -> String {
    let mut out = String::from("\n");
    for l in header_lines(r) {
        out += &l;
        out.push('\n');
    }
    out += "\n";
    out += &main_table(r).text();
    if let Some(line) = analyzer_line(r) {
        out += &format!("\n{line}\n");
    }
    let t = targets(r);
    if !t.is_empty() {
        out += "\ntargets (informative):\n";
    }
    for (_, target, value, status) in t {
        let v = value.map_or("-".into(), |v| format!("{v:.2}x"));
        out += &format!("  {status:<4}  {target:<44} {v}\n");
    }
    for (ratio, num, den) in pairs(r) {
        if let Some(t) = pair_table(r, &ratio, &num, &den) {
            out += &format!(
                "\n{ratio}: {num} / {den}, medians of {} runs{}:\n",
                r.params.runs,
                if r.params.interleave {
                    ", interleaved"
                } else {
                    ""
                }
            );
            out += &t.text();
        }
    }
    out
}

/// The Markdown section for docs/benchmarks.md.
pub fn markdown(r: &Results) -> String {
    let mut out = format!(
        "Generated by `foreshard-bench render` from a `{}` results file.\n\n",
        r.schema
    );
    out += &format!("`{}` ({})\n\n", r.params.command.join(" "), r.host.date);
    for l in &header_lines(r)[1..] {
        out += &format!("- {l}\n");
    }
    out += "\n";
    out += &main_table(r).markdown();
    let t = targets(r);
    let missed: Vec<&str> = t.iter().filter(|x| x.3 == "MISS").map(|x| x.1).collect();
    let passed = t.iter().filter(|x| x.3 == "PASS").count();
    out += &format!(
        "\nTargets: {passed} PASS, {} MISS{}{}\n",
        missed.len(),
        if missed.is_empty() { "" } else { ": " },
        missed.join("; ")
    );
    for (ratio, num, den) in pairs(r) {
        if let Some(t) = pair_table(r, &ratio, &num, &den) {
            out += &format!("\n{ratio} ({num} / {den}):\n\n{}", t.markdown());
        }
    }
    out
}

/// `doc` with the lines between the marker lines `<!-- bench:NAME begin -->` and
/// `<!-- bench:NAME end -->` replaced by `body`; the markers stay. Markers count only as
/// lines of their own, so prose may quote them.
pub fn replace_section(doc: &str, name: &str, body: &str) -> anyhow::Result<String> {
    let begin = format!("<!-- bench:{name} begin -->");
    let end = format!("<!-- bench:{name} end -->");
    let lines: Vec<&str> = doc.split_inclusive('\n').collect();
    let at = |m: &str| -> Vec<usize> {
        (0..lines.len())
            .filter(|i| lines[*i].trim_end() == m)
            .collect()
    };
    let (bs, es) = (at(&begin), at(&end));
    let (b, e) = match (bs.as_slice(), es.as_slice()) {
        (&[b], &[e]) if b < e => (b, e),
        ([], _) | (_, []) => bail!("no '{begin}' ... '{end}' marker lines in the document"),
        _ => bail!("marker lines '{begin}' and '{end}' out of order or repeated"),
    };
    let mut out: String = lines[..=b].concat();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out += body.trim_end_matches('\n');
    out.push('\n');
    out += &lines[e..].concat();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_is_replaced_between_the_markers_only() {
        let doc =
            "# t\n\nbefore\n<!-- bench:io begin -->\nold\nrows\n<!-- bench:io end -->\nafter\n";
        let new = replace_section(doc, "io", "new table\n").unwrap();
        assert_eq!(
            new,
            "# t\n\nbefore\n<!-- bench:io begin -->\nnew table\n<!-- bench:io end -->\nafter\n"
        );
        // Idempotent: a second render gives the same document.
        assert_eq!(replace_section(&new, "io", "new table").unwrap(), new);
        assert!(replace_section(doc, "fsync", "x").is_err());
        let reversed = "<!-- bench:io end -->\n<!-- bench:io begin -->\n";
        assert!(replace_section(reversed, "io", "x").is_err());
        let twice = "<!-- bench:io begin -->\n<!-- bench:io begin -->\n<!-- bench:io end -->\n";
        assert!(replace_section(twice, "io", "x").is_err());
        // Quoted in prose, a marker is not one.
        let prose =
            "see `<!-- bench:io begin -->`\n<!-- bench:io begin -->\nold\n<!-- bench:io end -->";
        assert_eq!(
            replace_section(prose, "io", "new").unwrap(),
            "see `<!-- bench:io begin -->`\n<!-- bench:io begin -->\nnew\n<!-- bench:io end -->"
        );
    }

    #[test]
    fn tables_align_and_format_like_scripts_bench() {
        let t = Table {
            head: vec!["test".into(), "raw".into()],
            rows: vec![
                vec!["seq write".into(), fmt(Some(1234.56))],
                vec!["stat".into(), fmt(Some(12.34))],
            ],
        };
        assert_eq!(
            t.text(),
            "test        raw\n---------  ----\nseq write  1235\nstat       12.3\n"
        );
        assert_eq!(
            t.markdown(),
            "| test | raw |\n|---|---|\n| seq write | 1235 |\n| stat | 12.3 |\n"
        );
        assert_eq!(fmt(None), "-");
    }
}
