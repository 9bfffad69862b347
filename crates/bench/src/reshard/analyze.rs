//! The metrics of one re-sharding run, from the snapshots before and after `reshard --wait`
//! (heat, shards and status JSON, the extent files' sizes): the same document
//! scripts/bench-reshard's python made, field for field.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Map, Value};

use crate::stats;

/// What one snapshot holds.
#[derive(Default)]
pub struct Snapshot {
    pub heat: Value,
    pub shards: Value,
    pub status: Value,
    /// Bytes of every extent file (INO.INDEX.VERSION, hex) on the backing disks.
    pub sizes: HashMap<String, u64>,
    /// The daemon's VmRSS and VmHWM in bytes.
    pub mem: BTreeMap<String, u64>,
}

/// Everything a run measured.
pub struct Run {
    pub before: Snapshot,
    pub after: Snapshot,
    pub replay: Value,
    pub reshard: Value,
    pub fsck: Value,
    pub disk_kind: String,
    pub trace_requests: u64,
    pub events_wait_ms: u64,
    pub reshard_wall_ms: u64,
}

type Key = (String, u64);

fn key(e: &Value) -> Key {
    (
        e["path"].as_str().unwrap_or("").to_string(),
        e["index"].as_u64().unwrap_or(0),
    )
}

struct Layout<'a> {
    es: u64,
    at: HashMap<Key, u64>,
    bytes: HashMap<Key, u64>,
    shards: &'a [Value],
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

fn layout<'a>(w: &str, s: &'a Snapshot, warnings: &mut Vec<String>) -> Layout<'a> {
    let es = s.shards["extent_size_bytes"].as_u64().unwrap_or(0);
    let (mut at, mut bytes, mut missing, mut off) = (HashMap::new(), HashMap::new(), 0, 0);
    for sh in arr(&s.shards["shards"]) {
        let disks: BTreeSet<u64> = arr(&sh["disks"]).iter().filter_map(Value::as_u64).collect();
        for e in arr(&sh["extents"]) {
            at.insert(key(e), sh["id"].as_u64().unwrap_or(0));
            let n = |k: &str| e[k].as_u64().unwrap_or(0);
            let name = format!("{:x}.{:x}.{:x}", n("ino"), n("index"), n("version"));
            let b = s.sizes.get(&name).copied().unwrap_or_else(|| {
                missing += 1;
                es
            });
            bytes.insert(key(e), b);
            if arr(&e["replicas"])
                .iter()
                .filter_map(Value::as_u64)
                .any(|r| !disks.contains(&r))
            {
                off += 1;
            }
        }
    }
    if missing > 0 {
        warnings.push(format!(
            "{w}: {missing} extents have no extent file on their disks; counted as {es} bytes"
        ));
    }
    if off > 0 {
        warnings.push(format!(
            "{w}: {off} extents have a replica outside their shard's disks"
        ));
    }
    Layout {
        es,
        at,
        bytes,
        shards: arr(&s.shards["shards"]),
    }
}

fn cross(placed: &[&Value], l: &Layout) -> Value {
    let c: Vec<&&Value> = placed
        .iter()
        .filter(|p| l.at.get(&key(&p["a"])) != l.at.get(&key(&p["b"])))
        .collect();
    let count = |p: &Value| p["count"].as_f64().unwrap_or(0.0);
    let (n, wt) = (placed.len(), placed.iter().map(|p| count(p)).sum::<f64>());
    let cw: f64 = c.iter().map(|p| count(p)).sum();
    json!({"pairs": n, "cross": c.len(), "cross_fraction": (n > 0).then(|| c.len() as f64 / n as f64),
           "weight": wt, "cross_weight": cw, "cross_fraction_weighted": (wt > 0.0).then(|| cw / wt)})
}

fn groups(heat: &Value, l: &Layout) -> Value {
    let g: Vec<BTreeSet<u64>> = arr(&heat["groups"])
        .iter()
        .map(|grp| {
            arr(grp)
                .iter()
                .filter_map(|e| l.at.get(&key(e)).copied())
                .collect::<BTreeSet<u64>>()
        })
        .filter(|x| !x.is_empty())
        .collect();
    let mean =
        (!g.is_empty()).then(|| g.iter().map(|x| x.len() as f64).sum::<f64>() / g.len() as f64);
    json!({"groups": g.len(), "split": g.iter().filter(|x| x.len() > 1).count(), "shards_per_group_mean": mean})
}

fn hot_set(heat: &Value) -> BTreeSet<Key> {
    arr(&heat["extents"])
        .iter()
        .filter(|e| e["class"] == json!("hot"))
        .map(key)
        .collect()
}

fn rebuild(l: &Layout, disks: &[(u64, String)], hot: &BTreeSet<Key>) -> Value {
    let mut rows = Vec::new();
    for (did, path) in disks {
        let on: Vec<&Value> = l
            .shards
            .iter()
            .filter(|s| arr(&s["disks"]).iter().any(|d| d.as_u64() == Some(*did)))
            .collect();
        let has_hot = |s: &&&Value| arr(&s["extents"]).iter().any(|e| hot.contains(&key(e)));
        let exposed: Vec<&&Value> = on.iter().filter(has_hot).collect();
        let ext = |ss: &[&Value]| {
            ss.iter()
                .flat_map(|s| arr(&s["extents"]))
                .map(key)
                .collect::<Vec<_>>()
        };
        let exp_ext = ext(&exposed.iter().map(|s| **s).collect::<Vec<_>>());
        let sum = |ks: &[Key]| ks.iter().map(|k| l.bytes[k]).sum::<u64>();
        rows.push(json!({
            "disk": did, "path": path, "shards": on.len(), "hot_shards": exposed.len(),
            "extents": exp_ext.len(), "hot_extents": exp_ext.iter().filter(|k| hot.contains(*k)).count(),
            "bytes": sum(&exp_ext), "bytes_nominal": exp_ext.len() as u64 * l.es,
            "bytes_all_shards": sum(&ext(&on)),
        }));
    }
    let col = |k: &str| {
        rows.iter()
            .map(|r| r[k].as_f64().unwrap_or(0.0))
            .collect::<Vec<_>>()
    };
    let max = |k: &str| {
        col(k)
            .into_iter()
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
    };
    json!({"median_bytes": stats::median(&col("bytes")), "max_bytes": max("bytes"),
           "median_bytes_nominal": stats::median(&col("bytes_nominal")), "max_bytes_nominal": max("bytes_nominal"),
           "median_bytes_all_shards": stats::median(&col("bytes_all_shards")), "per_disk": rows})
}

fn shard_summary(l: &Layout, hot: &BTreeSet<Key>) -> Value {
    let mut cls = BTreeMap::<String, u64>::new();
    for s in l.shards {
        *cls.entry(s["class"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    let with_hot = l
        .shards
        .iter()
        .filter(|s| arr(&s["extents"]).iter().any(|e| hot.contains(&key(e))))
        .count();
    let empty = l
        .shards
        .iter()
        .filter(|s| arr(&s["extents"]).is_empty())
        .count();
    json!({"shards": l.shards.len(), "by_class": cls, "extents": l.at.len(),
           "bytes": l.bytes.values().sum::<u64>(), "shards_with_hot": with_hot, "empty": empty})
}

fn pick(v: &Value, keys: &[&str]) -> Map<String, Value> {
    keys.iter()
        .map(|k| (k.to_string(), v[*k].clone()))
        .collect()
}

fn migration(r: &Run, warnings: &mut Vec<String>) -> Value {
    let mut plan = r.reshard["plan"].as_object().cloned().unwrap_or_default();
    plan.remove("sample");
    let mig = &r.reshard["migration"];
    let elapsed = mig["elapsed_s"].as_f64().filter(|e| *e != 0.0);
    let rate = elapsed.and_then(|e| mig["bytes_copied"].as_f64().map(|b| b / e));
    let budget = mig["rate_bytes_per_s_max"]
        .as_f64()
        .filter(|b| *b != 0.0)
        .or_else(|| r.before.status["migration"]["rate_bytes_per_s_max"].as_f64());
    if plan.get("moves").and_then(Value::as_u64).unwrap_or(0) == 0 {
        warnings.push("the re-sharding plan moves nothing".into());
    }
    json!({"plan": plan, "moves_done": mig["moves_done"], "moves_dropped": mig["moves_dropped"],
           "moves_retried": mig["moves_retried"], "bytes_moved": mig["bytes_done"],
           "bytes_copied": mig["bytes_copied"], "elapsed_s": mig["elapsed_s"],
           "wall_s": r.reshard_wall_ms as f64 / 1000.0, "rate_bytes_per_s": rate,
           "rate_bytes_per_s_reported": mig["rate_bytes_per_s"], "budget_bytes_per_s": budget,
           "bytes_per_hour": rate.map(|x| x * 3600.0),
           "budget_bytes_per_hour": budget.filter(|b| *b != 0.0).map(|b| b * 3600.0),
           "last_error": mig["last_error"]})
}

fn analyzer(st: &Value, mem: &BTreeMap<String, u64>) -> Value {
    let keys = [
        "events_posted",
        "events_applied",
        "events_dropped",
        "extents_tracked",
        "extents_evicted",
        "pairs_tracked",
        "shards_profiled",
        "memory_bytes",
        "memory_bytes_max",
        "cpu_ms",
    ];
    let mut m = pick(st, &keys);
    let ev = st["events_applied"].as_f64().unwrap_or(0.0);
    let per = (ev > 0.0).then(|| st["cpu_ms"].as_f64().unwrap_or(0.0) * 1000.0 / ev);
    m.insert("cpu_us_per_event".into(), json!(per));
    let d: Map<String, Value> = mem.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    m.insert("daemon".into(), Value::Object(d));
    Value::Object(m)
}

fn pairs_and_groups(
    r: &Run,
    lb: &Layout,
    la: &Layout,
    warnings: &mut Vec<String>,
) -> (Value, Value) {
    let heat = &r.before.heat;
    let pairs = arr(&heat["pairs"]);
    let placed: Vec<&Value> = pairs
        .iter()
        .filter(|p| lb.at.contains_key(&key(&p["a"])) && lb.at.contains_key(&key(&p["b"])))
        .collect();
    let lost = placed
        .iter()
        .filter(|p| !la.at.contains_key(&key(&p["a"])) || !la.at.contains_key(&key(&p["b"])))
        .count();
    if lost > 0 {
        warnings.push(format!(
            "{lost} co-accessed pairs have an extent that is in no shard after re-sharding"
        ));
    }
    let pair_m = json!({"listed": pairs.len(), "tracked": heat["stats"]["pairs_tracked"],
        "unplaced": pairs.len() - placed.len(), "before": cross(&placed, lb), "after": cross(&placed, la)});
    let sizes: Vec<usize> = arr(&heat["groups"]).iter().map(|g| arr(g).len()).collect();
    let group_m =
        json!({"heat_groups": sizes, "before": groups(heat, lb), "after": groups(heat, la)});
    (pair_m, group_m)
}

fn hot_and_rebuild(
    r: &Run,
    lb: &Layout,
    la: &Layout,
    warnings: &mut Vec<String>,
) -> (Value, Value, Value) {
    let (hot, hot_after) = (hot_set(&r.before.heat), hot_set(&r.after.heat));
    let placed: Vec<&Key> = hot.iter().filter(|k| lb.at.contains_key(*k)).collect();
    if hot != hot_after {
        let common = hot.intersection(&hot_after).count();
        warnings.push(format!("the hot set changed between the snapshots ({} before, {} after, {common} in common); the failure metric uses the set measured before", hot.len(), hot_after.len()));
    }
    let hot_m = json!({"extents": hot.len(), "placed": placed.len(),
        "bytes": placed.iter().map(|k| lb.bytes[*k]).sum::<u64>(), "bytes_nominal": placed.len() as u64 * lb.es,
        "extents_after_classification": hot_after.len(), "same_set_after": hot == hot_after});
    let disks: Vec<(u64, String)> = arr(&r.before.status["disks"])
        .iter()
        .map(|d| {
            (
                d["id"].as_u64().unwrap_or(0),
                d["path"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let rebuild_m =
        json!({"before": rebuild(lb, &disks, &hot), "after": rebuild(la, &disks, &hot)});
    let (sb, sa) = (shard_summary(lb, &hot), shard_summary(la, &hot));
    if sb["extents"] != sa["extents"] || sb["bytes"] != sa["bytes"] {
        warnings.push(format!("the pool's extents changed over the re-sharding: {} extents / {} bytes before, {} / {} after", sb["extents"], sb["bytes"], sa["extents"], sa["bytes"]));
    }
    (hot_m, rebuild_m, json!({"before": sb, "after": sa}))
}

/// The metrics document of one run.
pub fn analyze(r: &Run) -> Value {
    let mut warnings = Vec::new();
    let lb = layout("before", &r.before, &mut warnings);
    let la = layout("after", &r.after, &mut warnings);
    let (pair_m, group_m) = pairs_and_groups(r, &lb, &la, &mut warnings);
    let (hot_m, rebuild_m, shards_m) = hot_and_rebuild(r, &lb, &la, &mut warnings);
    let mig_m = migration(r, &mut warnings);
    let hs = &r.before.heat["stats"];
    let mut an = analyzer(hs, &r.before.mem);
    an["after_reshard"] = analyzer(&r.after.heat["stats"], &r.after.mem);
    let mut replay = pick(
        &r.replay,
        &[
            "requests",
            "reads",
            "writes",
            "bytes_read",
            "bytes_written",
            "elapsed_s",
            "iops",
            "verified",
            "verify_errors",
        ],
    );
    replay.insert(
        "mismatches".into(),
        json!(arr(&r.replay["mismatches"]).len()),
    );
    json!({
        "disk_kind": r.disk_kind, "extent_size_bytes": lb.es, "replay": replay,
        "events": {"trace_requests": r.trace_requests, "applied": hs["events_applied"],
                   "dropped": hs["events_dropped"], "wait_ms": r.events_wait_ms},
        "pairs": pair_m, "groups": group_m, "hot": hot_m, "rebuild": rebuild_m, "shards": shards_m,
        "migration": mig_m, "analyzer": an,
        "fsck": pick(&r.fsck, &["clean", "inodes", "extents", "replicas_checked", "bytes_verified"]),
        "warnings": warnings,
    })
}

/// The value at a dotted path of a metrics document, as a number.
pub fn num(m: &Value, path: &str) -> Option<f64> {
    path.split('.').try_fold(m, |v, k| v.get(k))?.as_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(i: u64) -> Value {
        json!({"path": "/f", "ino": 2, "index": i, "version": 1, "replicas": [0, 1]})
    }

    /// 4 extents in 2 shards before (0,1 | 2,3), all in one after; extents 0 and 2 are
    /// hot, pairs 0-2 (count 3) and 0-1 (count 1).
    fn sample_run() -> Run {
        let shards = |groups: &[&[u64]]| {
            let s: Vec<Value> = groups.iter().enumerate().map(|(id, g)| {
                json!({"id": id, "disks": [0, 1], "class": "hot", "extents": g.iter().map(|i| ext(*i)).collect::<Vec<_>>()})
            }).collect();
            json!({"extent_size_bytes": 1048576, "shards": s})
        };
        let heat = json!({
            "extents": [{"path": "/f", "index": 0, "class": "hot"}, {"path": "/f", "index": 2, "class": "hot"}, {"path": "/f", "index": 1, "class": "cold"}],
            "pairs": [{"a": {"path": "/f", "index": 0}, "b": {"path": "/f", "index": 2}, "count": 3},
                      {"a": {"path": "/f", "index": 0}, "b": {"path": "/f", "index": 1}, "count": 1},
                      {"a": {"path": "/f", "index": 0}, "b": {"path": "/f", "index": 9}, "count": 5}],
            "groups": [[{"path": "/f", "index": 0}, {"path": "/f", "index": 2}]],
            "stats": {"events_applied": 1000, "cpu_ms": 2, "pairs_tracked": 3, "memory_bytes": 4096}});
        let status = json!({"disks": [{"id": 0, "path": "/d0"}, {"id": 1, "path": "/d1"}, {"id": 2, "path": "/d2"}]});
        let sizes: HashMap<String, u64> =
            (0..4).map(|i| (format!("2.{i:x}.1"), 1000 + i)).collect();
        let snap = |g: &[&[u64]]| Snapshot {
            heat: heat.clone(),
            shards: shards(g),
            status: status.clone(),
            sizes: sizes.clone(),
            ..Snapshot::default()
        };
        Run {
            before: snap(&[&[0, 1], &[2, 3]]),
            after: snap(&[&[0, 1, 2, 3]]),
            replay: json!({"requests": 10, "mismatches": []}),
            reshard: json!({"plan": {"moves": 2, "sample": [1]}, "migration": {"bytes_copied": 32e6, "elapsed_s": 2.0, "bytes_done": 2000, "rate_bytes_per_s_max": 16777216}}),
            fsck: json!({"clean": true, "extents": 4}),
            disk_kind: "loop-ext4".into(),
            trace_requests: 10,
            events_wait_ms: 5,
            reshard_wall_ms: 2500,
        }
    }

    #[test]
    fn pairs_groups_and_rebuild_bytes_before_and_after() {
        let m = analyze(&sample_run());
        assert_eq!(num(&m, "pairs.unplaced"), Some(1.0));
        assert_eq!(
            (num(&m, "pairs.before.cross"), num(&m, "pairs.after.cross")),
            (Some(1.0), Some(0.0))
        );
        assert_eq!(num(&m, "pairs.before.cross_fraction_weighted"), Some(0.75));
        assert_eq!(
            (
                num(&m, "groups.before.split"),
                num(&m, "groups.after.split")
            ),
            (Some(1.0), Some(0.0))
        );
        assert_eq!(num(&m, "hot.bytes"), Some(1000.0 + 1002.0));
        // disks 0 and 1 hold both shards (both have a hot extent), disk 2 none
        assert_eq!(num(&m, "rebuild.before.max_bytes"), Some(4006.0));
        assert_eq!(num(&m, "rebuild.before.median_bytes"), Some(4006.0));
        assert_eq!(
            num(&m, "rebuild.before.median_bytes_nominal"),
            Some(4.0 * 1048576.0)
        );
        assert_eq!(num(&m, "shards.after.shards"), Some(1.0));
        assert_eq!(num(&m, "migration.rate_bytes_per_s"), Some(16e6));
        assert_eq!(num(&m, "migration.wall_s"), Some(2.5));
        assert_eq!(num(&m, "analyzer.cpu_us_per_event"), Some(2.0));
        assert_eq!(m["migration"]["plan"].get("sample"), None);
        assert!(
            m["warnings"].as_array().unwrap().is_empty(),
            "{}",
            m["warnings"]
        );
    }

    #[test]
    fn missing_extent_files_count_as_whole_extents_with_a_warning() {
        let mut r = sample_run();
        r.after.sizes.remove("2.3.1");
        r.reshard["plan"]["moves"] = json!(0);
        let m = analyze(&r);
        let w: Vec<&str> = m["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            w.iter()
                .any(|x| x.starts_with("after: 1 extents have no extent file")),
            "{w:?}"
        );
        assert!(w.iter().any(|x| x.contains("moves nothing")), "{w:?}");
        assert!(w.iter().any(|x| x.contains("extents changed")), "{w:?}");
        assert_eq!(
            num(&m, "rebuild.after.max_bytes"),
            Some(1000.0 + 1001.0 + 1002.0 + 1048576.0)
        );
    }
}
