//! `foreshard heat`: hottest and coldest files and extents, correlated groups, the daily
//! profile, and an SVG heat map (extents by disk and shard, coloured by heat).

use std::collections::HashMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::access::{AccessStats, Analyzer, GroupRules, ShardProfile, Thresholds};
use crate::fs::Fs;
use crate::util::now_ms;

/// `foreshard shards`: every shard with its disks and extents.
#[derive(Serialize, Deserialize)]
pub struct ShardExtent {
    pub path: Option<String>,
    pub index: u64,
    pub ino: u64,
    pub version: u64,
    pub replicas: Vec<u32>,
}

#[derive(Serialize, Deserialize)]
pub struct ShardInfo {
    pub id: u32,
    pub epoch: u64,
    pub disks: Vec<u32>,
    /// "general" or "hot" (see `meta::ShardClass`).
    #[serde(default)]
    pub class: crate::meta::ShardClass,
    pub extents: Vec<ShardExtent>,
}

#[derive(Serialize, Deserialize)]
pub struct Shards {
    pub extent_size_bytes: u64,
    pub shards: Vec<ShardInfo>,
}

pub fn shards(fs: &Fs) -> anyhow::Result<Shards> {
    let paths = fs.paths()?;
    let mut shards: Vec<ShardInfo> = (0..fs.shard_count() as u32)
        .map(|id| {
            let s = fs.shard(id);
            ShardInfo {
                id,
                epoch: s.epoch,
                disks: s.disks.clone(),
                class: s.class,
                extents: Vec::new(),
            }
        })
        .collect();
    fs.meta.each_extent(|ino, index, e| {
        if let Some(s) = shards.get_mut(e.shard as usize) {
            s.extents.push(ShardExtent {
                path: paths.get(&ino).cloned(),
                index,
                ino,
                version: e.version,
                replicas: e.replicas,
            });
        }
    })?;
    Ok(Shards {
        extent_size_bytes: fs.cfg.extent_size,
        shards,
    })
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeatExtent {
    pub path: String,
    pub index: u64,
    pub ino: u64,
    /// Requests, exponentially weighted over about an hour (the class scale by default).
    pub read_heat: f64,
    pub write_heat: f64,
    /// read + write heat at the minute, hour and day scales.
    pub heat_by_scale: [f64; 3],
    pub class: String,
    pub shard: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeatFile {
    pub path: String,
    pub heat: f64,
    pub extents: usize,
    pub hot_extents: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupMember {
    pub path: String,
    pub index: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CoAccess {
    pub a: GroupMember,
    pub b: GroupMember,
    pub count: u32,
}

/// Pairs listed by `heat --json`.
pub const REPORT_PAIRS_MAX: usize = 1000;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeatReport {
    pub extent_size_bytes: u64,
    /// Which scale `read_heat`/`write_heat` and the classes use.
    pub class_scale: String,
    pub thresholds: Thresholds,
    /// Tracked extents of live files, hottest first.
    pub extents: Vec<HeatExtent>,
    /// Files, hottest first.
    pub files: Vec<HeatFile>,
    pub groups: Vec<Vec<GroupMember>>,
    /// The most frequent co-access pairs (up to `REPORT_PAIRS_MAX`), with their counts.
    pub pairs: Vec<CoAccess>,
    /// Requests per hour of day (UTC), over all shards.
    pub daily_profile: Vec<f64>,
    /// Lag-24 h autocorrelation of the pool's hourly requests (needs two days of history).
    pub daily_periodicity: Option<f64>,
    pub daily_peak_hours: Vec<u32>,
    pub shard_profiles: Vec<ShardProfile>,
    pub stats: AccessStats,
}

/// `shard_bytes_max` bounds the groups as the sharding engine does, so both show the same.
pub fn heat_report(fs: &Fs, a: &Analyzer, shard_bytes_max: u64) -> anyhow::Result<HeatReport> {
    let now = now_ms();
    a.classify(now);
    let paths = fs.paths()?;
    let scale = a.opts.class_scale.min(2);
    let extents = heat_extents(a, &paths, scale, now);
    let files = heat_files(&extents);
    let member = |(ino, index): (u64, u64)| {
        Some(GroupMember {
            path: paths.get(&ino)?.clone(),
            index,
        })
    };
    let groups = a
        .groups(GroupRules::for_shards(fs.extent_size(), shard_bytes_max))
        .into_iter()
        .map(|g| g.into_iter().filter_map(member).collect::<Vec<_>>())
        .filter(|g| g.len() >= 2)
        .collect();
    let pairs = a
        .top_pairs(REPORT_PAIRS_MAX)
        .into_iter()
        .filter_map(|((x, y), count)| {
            Some(CoAccess {
                a: member(x)?,
                b: member(y)?,
                count,
            })
        })
        .collect();
    let shard_profiles = a.profiles(now);
    let pool = a.pool_profile(now);
    let daily: Vec<f64> = pool.as_ref().map_or(vec![0.0; 24], |p| {
        p.by_hour.iter().map(|v| f64::from(*v)).collect()
    });
    Ok(HeatReport {
        extent_size_bytes: fs.extent_size(),
        class_scale: crate::access::SCALE_NAMES[scale].into(),
        thresholds: a.thresholds(),
        extents,
        files,
        groups,
        pairs,
        daily_profile: daily,
        daily_periodicity: pool.as_ref().and_then(|p| p.periodicity),
        daily_peak_hours: pool.map(|p| p.peak_hours).unwrap_or_default(),
        shard_profiles,
        stats: a.stats(),
    })
}

/// Every tracked extent of a named file with its heat, hottest first.
fn heat_extents(
    a: &Analyzer,
    paths: &HashMap<u64, String>,
    scale: usize,
    now: u64,
) -> Vec<HeatExtent> {
    let mut extents: Vec<HeatExtent> = a
        .extents()
        .into_iter()
        .filter_map(|((ino, index), h)| {
            let path = paths.get(&ino)?.clone();
            let (r, w) = h.at(scale, now);
            let by: Vec<f64> = (0..3)
                .map(|s| {
                    let (r, w) = h.at(s, now);
                    r + w
                })
                .collect();
            Some(HeatExtent {
                path,
                index,
                ino,
                read_heat: r,
                write_heat: w,
                heat_by_scale: [by[0], by[1], by[2]],
                class: h.class().name().into(),
                shard: h.shard(),
            })
        })
        .collect();
    extents.sort_by(|x, y| {
        (y.read_heat + y.write_heat)
            .total_cmp(&(x.read_heat + x.write_heat))
            .then(x.path.cmp(&y.path))
            .then(x.index.cmp(&y.index))
    });
    extents
}

/// Heat per file (the sum of its extents'), hottest first.
fn heat_files(extents: &[HeatExtent]) -> Vec<HeatFile> {
    let mut files: HashMap<&str, HeatFile> = HashMap::new();
    for e in extents {
        let f = files.entry(&e.path).or_insert_with(|| HeatFile {
            path: e.path.clone(),
            heat: 0.0,
            extents: 0,
            hot_extents: 0,
        });
        f.heat += e.read_heat + e.write_heat;
        f.extents += 1;
        f.hot_extents += usize::from(e.class == "hot");
    }
    let mut files: Vec<HeatFile> = files.into_values().collect();
    files.sort_by(|x, y| y.heat.total_cmp(&x.heat).then(x.path.cmp(&y.path)));
    files
}

/// The human report: top and bottom `n` of files and extents, groups, the daily profile.
pub fn heat_table(r: &HeatReport, n: usize) -> String {
    let mut o = String::new();
    let s = &r.stats;
    let _ = writeln!(
        o,
        "access analyzer: {} events ({} dropped), {} extents tracked, {} pairs, memory {} KiB (max {} KiB), cpu {} ms",
        s.events_applied,
        s.events_dropped,
        s.extents_tracked,
        s.pairs_tracked,
        s.memory_bytes >> 10,
        s.memory_bytes_max >> 10,
        s.cpu_ms
    );
    let _ = writeln!(
        o,
        "classes by {}-scale heat: hot >= {:.2} (stays hot above {:.2}), cold <= {:.2} (stays cold below {:.2})",
        r.class_scale, r.thresholds.hot_enter, r.thresholds.hot_leave, r.thresholds.cold_enter, r.thresholds.cold_leave
    );
    table_files_and_extents(&mut o, r, n);
    let _ = writeln!(o, "\ncorrelated groups: {}", r.groups.len());
    for g in r.groups.iter().take(n) {
        let members: Vec<String> = g
            .iter()
            .map(|m| format!("{}:{}", m.path, m.index))
            .collect();
        let _ = writeln!(o, "  [{}] {}", g.len(), members.join(" "));
    }
    table_daily(&mut o, r, n);
    o
}

fn table_files_and_extents(o: &mut String, r: &HeatReport, n: usize) {
    let _ = writeln!(o, "\nhottest files:");
    for f in r.files.iter().take(n) {
        let _ = writeln!(
            o,
            "  {:>10.2}  {:>4} extents ({} hot)  {}",
            f.heat, f.extents, f.hot_extents, f.path
        );
    }
    let _ = writeln!(o, "coldest files:");
    for f in r.files.iter().rev().take(n) {
        let _ = writeln!(
            o,
            "  {:>10.2}  {:>4} extents  {}",
            f.heat, f.extents, f.path
        );
    }
    let line = |e: &HeatExtent| {
        format!(
            "  {:>9.2} {:>9.2}  {:<5} shard {:>5}  {}:{}\n",
            e.read_heat,
            e.write_heat,
            e.class,
            e.shard.map_or("?".into(), |s| s.to_string()),
            e.path,
            e.index
        )
    };
    let _ = writeln!(o, "\nhottest extents (read heat, write heat):");
    for e in r.extents.iter().take(n) {
        *o += &line(e);
    }
    let _ = writeln!(o, "coldest extents:");
    for e in r.extents.iter().rev().take(n) {
        *o += &line(e);
    }
}

/// The pool's requests by hour as bars, its periodicity, and the rhythmic shards.
fn table_daily(o: &mut String, r: &HeatReport, n: usize) {
    let _ = writeln!(o, "\ndaily profile (requests by hour of day, UTC):");
    let max = r
        .daily_profile
        .iter()
        .copied()
        .fold(0.0, f64::max)
        .max(1e-9);
    for (h, v) in r.daily_profile.iter().enumerate() {
        let bar = "#".repeat((v / max * 40.0).round() as usize);
        let _ = writeln!(o, "  {h:02}:00 {v:>10.0} {bar}");
    }
    let _ = writeln!(
        o,
        "daily periodicity {}, peak hours {:?}",
        r.daily_periodicity
            .map_or("n/a (under two days of history)".into(), |p| format!(
                "{p:.2}"
            )),
        r.daily_peak_hours
    );
    let rhythmic: Vec<&ShardProfile> = r
        .shard_profiles
        .iter()
        .filter(|p| p.periodicity.is_some_and(|x| x >= 0.5))
        .collect();
    let _ = writeln!(o, "shards with a daily rhythm: {}", rhythmic.len());
    for p in rhythmic.iter().take(n) {
        let _ = writeln!(
            o,
            "  shard {:>5}: periodicity {:.2}, peak hours {:?}",
            p.shard,
            p.periodicity.unwrap_or(0.0),
            p.peak_hours
        );
    }
}

/// Extents drawn per shard block (the rest is summarised), to keep the picture light.
const SVG_EXTENTS_PER_SHARD_MAX: usize = 256;
const CELL_PX: usize = 9;
const ROW_CELLS: usize = 16;
const COLUMN_PX: usize = ROW_CELLS * CELL_PX + 24;

/// An SVG heat map: one column per disk, the shards holding a replica there as blocks,
/// one square per extent coloured by heat (log scale; grey = never seen), hot shards
/// outlined in red. Hovering shows path:index and heat.
pub fn heat_svg(fs: &Fs, r: &HeatReport) -> anyhow::Result<String> {
    let shards = shards(fs)?;
    let heat: HashMap<(u64, u64), (f64, &str)> = r
        .extents
        .iter()
        .map(|e| {
            (
                (e.ino, e.index),
                (e.read_heat + e.write_heat, e.class.as_str()),
            )
        })
        .collect();
    let max = r
        .extents
        .first()
        .map_or(1.0, |e| e.read_heat + e.write_heat)
        .max(1e-9);
    let disks = fs.store.disks();
    let mut cols: Vec<String> = Vec::new();
    let mut height = 0usize;
    for (ci, d) in disks.iter().enumerate() {
        let x0 = 10 + ci * COLUMN_PX;
        let mut y = 60usize;
        let mut body = format!(
            "<text x=\"{x0}\" y=\"40\" font-size=\"12\" font-weight=\"bold\">disk {} ({})</text>\n<text x=\"{x0}\" y=\"54\" font-size=\"9\" fill=\"#555\">{}</text>\n",
            d.id,
            d.state().name(),
            xml(&d.root.display().to_string())
        );
        for s in shards.shards.iter().filter(|s| s.disks.contains(&d.id)) {
            if !s.extents.is_empty() {
                y = svg_shard(&mut body, s, &heat, max, x0, y);
            }
        }
        height = height.max(y);
        cols.push(body);
    }
    let width = 20 + disks.len().max(1) * COLUMN_PX;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"18\" font-size=\"14\" font-weight=\"bold\">foreshard heat map: extents by disk and shard ({} scale; red outline = hot shard; grey = never accessed)</text>\n",
        height + 40,
        r.class_scale
    );
    for c in cols {
        svg += &c;
    }
    // Legend.
    let ly = height + 10;
    for i in 0..10 {
        let _ = writeln!(
            svg,
            "<rect x=\"{}\" y=\"{ly}\" width=\"14\" height=\"10\" fill=\"{}\"/>",
            10 + i * 14,
            ramp(i as f64 / 9.0)
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"156\" y=\"{}\" font-size=\"9\">cold -> hot (max heat {max:.1})</text>\n</svg>",
        ly + 9
    );
    Ok(svg)
}

/// One shard's block in a disk column at height `y`: title, outline, a square per extent
/// (up to `SVG_EXTENTS_PER_SHARD_MAX`). Returns the height below it.
fn svg_shard(
    body: &mut String,
    s: &ShardInfo,
    heat: &HashMap<(u64, u64), (f64, &str)>,
    max: f64,
    x0: usize,
    mut y: usize,
) -> usize {
    let shown = s.extents.len().min(SVG_EXTENTS_PER_SHARD_MAX);
    let rows = shown.div_ceil(ROW_CELLS);
    let hot = s.class == crate::meta::ShardClass::Hot;
    let _ = writeln!(
        body,
        "<text x=\"{x0}\" y=\"{}\" font-size=\"9\">shard {} ({}, {} extents)</text>",
        y + 9,
        s.id,
        s.class.name(),
        s.extents.len()
    );
    y += 12;
    let _ = writeln!(
        body,
        "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"{}\"/>",
        x0 - 2,
        y - 2,
        ROW_CELLS * CELL_PX + 3,
        rows * CELL_PX + 3,
        if hot { "#d7191c" } else { "#999" },
        if hot { 2 } else { 1 }
    );
    for (i, e) in s.extents.iter().take(shown).enumerate() {
        let (h, class) = heat
            .get(&(e.ino, e.index))
            .copied()
            .unwrap_or((0.0, "untracked"));
        let colour = if class == "untracked" {
            "#dddddd".to_string()
        } else {
            ramp((1.0 + h).ln() / (1.0 + max).ln())
        };
        let _ = writeln!(
            body,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{colour}\"><title>{}:{} heat {h:.2} ({class})</title></rect>",
            x0 + (i % ROW_CELLS) * CELL_PX,
            y + (i / ROW_CELLS) * CELL_PX,
            CELL_PX - 1,
            CELL_PX - 1,
            xml(e.path.as_deref().unwrap_or("(unlinked)")),
            e.index
        );
    }
    y += rows * CELL_PX + 8;
    if s.extents.len() > shown {
        let _ = writeln!(
            body,
            "<text x=\"{x0}\" y=\"{}\" font-size=\"9\">+{} more</text>",
            y + 2,
            s.extents.len() - shown
        );
        y += 12;
    }
    y
}

/// Blue -> pale yellow -> red.
fn ramp(t: f64) -> String {
    let t = t.clamp(0.0, 1.0);
    let (a, b, u) = if t < 0.5 {
        ((44.0, 123.0, 182.0), (255.0, 255.0, 191.0), t * 2.0)
    } else {
        ((255.0, 255.0, 191.0), (215.0, 25.0, 28.0), (t - 0.5) * 2.0)
    };
    let mix = |x: f64, y: f64| (x + (y - x) * u).round() as u8;
    format!(
        "#{:02x}{:02x}{:02x}",
        mix(a.0, b.0),
        mix(a.1, b.1),
        mix(a.2, b.2)
    )
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
