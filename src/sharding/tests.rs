use std::collections::HashSet;

use super::plan::*;
use super::*;
use crate::access::{AccessOptions, HeatClass};
use crate::fs::Ctx;
use crate::meta::{ShardClass, ROOT_INO};
use crate::pool::create_temp;

const ES: u64 = 64 * 1024;

fn pe(ino: u64, index: u64, shard: u32, class: HeatClass) -> PlanExtent {
    PlanExtent {
        ext: (ino, index),
        bytes: ES,
        shard,
        class,
        heat: match class {
            HeatClass::Hot => 10.0,
            HeatClass::Warm => 2.0,
            HeatClass::Cold => 0.0,
        },
    }
}

fn shards(n: u32) -> Vec<PlanShard> {
    (0..n)
        .map(|i| PlanShard {
            id: i,
            class: ShardClass::General,
            epoch: 1,
            disks: vec![i % 4, (i + 1) % 4],
            initial: true,
        })
        .collect()
}

fn disks(risks: &[f64]) -> Vec<PlanDisk> {
    risks
        .iter()
        .enumerate()
        .map(|(i, r)| PlanDisk {
            id: i as u32,
            total_bytes: 1 << 30,
            used_bytes: 0,
            risk: *r,
            accepts_data: true,
            host: 0,
        })
        .collect()
}

fn rules() -> PlanRules {
    PlanRules {
        shard_bytes_max: 16 * ES,
        shard_bytes_min: 2 * ES,
        replicas: 2,
        risk_warn: f64::INFINITY,
    }
}

/// Applies a plan to the extents' shard fields (new shards get ids after the table).
fn applied(extents: &[PlanExtent], p: &Plan, table: u32) -> Vec<(Ext, u32, HeatClass)> {
    let to: HashMap<Ext, u32> = p
        .moves
        .iter()
        .map(|m| {
            let id = match m.to {
                Target::Existing(s) => s,
                Target::New(i) => table + i as u32,
            };
            (m.ext, id)
        })
        .collect();
    extents
        .iter()
        .map(|e| (e.ext, to.get(&e.ext).copied().unwrap_or(e.shard), e.class))
        .collect()
}

#[test]
fn plan_separates_hot_from_cold_keeps_groups_and_places_hot_on_reliable_disks() {
    let mut ex = Vec::new();
    for i in 0..64u64 {
        let class = match i % 8 {
            0 => HeatClass::Hot,
            1 | 2 => HeatClass::Warm,
            _ => HeatClass::Cold,
        };
        ex.push(pe(1, i, (i % 8) as u32, class));
    }
    let groups = vec![vec![(1, 3), (1, 12), (1, 21)], vec![(1, 8), (1, 16)]];
    let table = shards(8);
    let d = disks(&[0.5, 0.01, 0.02, 0.9]);
    let home = |e: Ext| (e.1 % 8) as u32;
    let input = PlanInput {
        extents: &ex,
        shards: &table,
        groups: &groups,
        disks: &d,
        rules: rules(),
        home: &home,
    };
    let p = plan(&input);
    let after = applied(&ex, &p, 8);
    let class_of = |s: u32| -> ShardClass {
        if s < 8 {
            ShardClass::General
        } else {
            p.new_shards[(s - 8) as usize].class
        }
    };
    for (e, s, c) in &after {
        match c {
            HeatClass::Hot => assert_eq!(class_of(*s), ShardClass::Hot, "{e:?}"),
            HeatClass::Cold => assert_eq!(class_of(*s), ShardClass::General, "{e:?}"),
            HeatClass::Warm => {}
        }
    }
    for g in &groups {
        let s: HashSet<u32> = after
            .iter()
            .filter(|(e, _, _)| g.contains(e))
            .map(|(_, s, _)| *s)
            .collect();
        assert_eq!(s.len(), 1, "group {g:?} split over {s:?}");
    }
    for n in &p.new_shards {
        assert_eq!(n.disks.len(), 2);
        assert_ne!(n.disks[0], n.disks[1]);
        if n.class == ShardClass::Hot {
            let mut ds = n.disks.clone();
            ds.sort();
            assert_eq!(
                ds,
                vec![1, 2],
                "hot shard not on the two most reliable disks"
            );
        }
    }
    let mut bytes: HashMap<u32, u64> = HashMap::new();
    for (_, s, _) in &after {
        *bytes.entry(*s).or_default() += ES;
    }
    assert!(bytes.values().all(|b| *b <= rules().shard_bytes_max));
    // Applying the plan and planning again moves nothing (no flapping).
    let ex2: Vec<PlanExtent> = ex
        .iter()
        .zip(&after)
        .map(|(e, (_, s, _))| PlanExtent {
            shard: *s,
            ..e.clone()
        })
        .collect();
    let mut table2 = table.clone();
    for (i, n) in p.new_shards.iter().enumerate() {
        table2.push(PlanShard {
            id: 8 + i as u32,
            class: n.class,
            epoch: 1,
            disks: n.disks.clone(),
            initial: false,
        });
    }
    let input2 = PlanInput {
        extents: &ex2,
        shards: &table2,
        groups: &groups,
        disks: &d,
        rules: rules(),
        home: &home,
    };
    let p2 = plan(&input2);
    assert!(p2.moves.is_empty(), "second plan moves {:?}", p2.moves);
}

#[test]
fn overfull_shards_split_and_small_formed_shards_merge() {
    // 40 cold extents in one initial shard: over the 16-extent cap.
    let ex: Vec<PlanExtent> = (0..40).map(|i| pe(2, i, 0, HeatClass::Cold)).collect();
    let table = shards(4);
    let d = disks(&[0.0; 4]);
    let home = |_: Ext| 0u32;
    let p = plan(&PlanInput {
        extents: &ex,
        shards: &table,
        groups: &[],
        disks: &d,
        rules: rules(),
        home: &home,
    });
    let after = applied(&ex, &p, 4);
    let mut bytes: HashMap<u32, u64> = HashMap::new();
    for (_, s, _) in &after {
        *bytes.entry(*s).or_default() += ES;
    }
    assert!(bytes.values().all(|b| *b <= 16 * ES), "{bytes:?}");
    // Two formed hot shards of one extent each (below the 2-extent minimum) merge.
    let mut table = shards(2);
    for id in 2..4 {
        table.push(PlanShard {
            id,
            class: ShardClass::Hot,
            epoch: 1,
            disks: vec![0, 1],
            initial: false,
        });
    }
    let ex = vec![pe(3, 0, 2, HeatClass::Hot), pe(3, 1, 3, HeatClass::Hot)];
    let p = plan(&PlanInput {
        extents: &ex,
        shards: &table,
        groups: &[],
        disks: &d,
        rules: rules(),
        home: &home,
    });
    assert_eq!(p.moves.len(), 1);
    assert!(p.new_shards.is_empty());
}

fn write_file(fs: &Fs, name: &str, extents: usize, seed: u8) -> (u64, Vec<u8>) {
    let (a, fh) = fs
        .create(
            Ctx::root(),
            ROOT_INO,
            name.as_bytes(),
            0o644,
            0,
            libc::O_RDWR,
        )
        .unwrap();
    let d: Vec<u8> = (0..extents * ES as usize)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    fs.write(fh, 0, &d).unwrap();
    fs.release(fh).unwrap();
    (a.ino, d)
}

fn read_all(fs: &Fs, ino: u64, len: usize) -> Vec<u8> {
    fs.open(ino, libc::O_RDONLY).unwrap();
    fs.read(ino, 0, len as u32).unwrap()
}

/// End to end on the core: events from reads make extents hot and grouped; re-sharding
/// moves them (under a budget), no shard mixes hot and cold, groups share a shard, every
/// file reads back identical, and fsck is clean.
#[test]
fn reshard_moves_hot_and_grouped_extents_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, fs) = create_temp(dir.path(), 4, 2, ES).unwrap();
    let files: Vec<(u64, Vec<u8>)> = (0..6)
        .map(|i| write_file(&fs, &format!("f{i}"), 8, i as u8))
        .collect();
    let a = crate::access::Analyzer::new(AccessOptions::default());
    let fs2 = fs.clone();
    a.set_resolver(Box::new(move |ino, index| {
        fs2.meta.extent(ino, index).ok().flatten().map(|e| e.shard)
    }));
    // f0's extents are hot (read often at random); f1's extents 0..4 are read together by
    // process 7; the rest is read once.
    let t0 = crate::util::now_ms();
    let mut events = Vec::new();
    let ev = |ino, index, t, stream| crate::access::Event {
        ino,
        index,
        extents: 1,
        op: crate::access::AccessOp::Read,
        bytes: 4096,
        t_ms: t,
        stream,
        shard: crate::access::SHARD_UNKNOWN,
    };
    for round in 0..40u64 {
        for i in 0..8 {
            events.push(ev(files[0].0, i, t0 + round, 1));
        }
        for i in 0..4 {
            events.push(ev(files[1].0, i, t0 + round, 7));
        }
    }
    for (ino, _) in &files[2..] {
        for i in 0..8 {
            events.push(ev(*ino, i, t0, 100 + *ino));
        }
    }
    a.apply(&events);
    let opts = ShardingOptions {
        shard_bytes_max: 32 * ES,
        shard_bytes_min: 2 * ES,
        interval: None,
        rate_bytes_per_s: 64 << 20,
        chunk_bytes: 4 * ES,
        ..ShardingOptions::default()
    };
    let e = Engine::new(fs.clone(), a.clone(), opts, Box::new(|| false));
    let dry = e.reshard(true).unwrap();
    assert!(dry.moves > 0 && dry.bytes_to_move > 0, "{dry:?}");
    assert_eq!(fs.stats().extents_moved, 0, "dry run moved data");
    e.start();
    let s = e.reshard(false).unwrap();
    assert_eq!(s.moves, dry.moves);
    assert!(e.wait_idle(Duration::from_secs(60)), "{:?}", e.status());
    let st = e.status();
    assert_eq!(st.moves_done, s.moves as u64, "{st:?}");
    e.shutdown();
    let table = fs.shard_table();
    let heat = crate::access::heat_map(&a);
    let mut hot_shards = HashSet::new();
    let mut group_shards = HashSet::new();
    fs.meta
        .each_extent(|ino, index, x| {
            let class = heat
                .get(&(ino, index))
                .map_or(HeatClass::Cold, |h| h.class());
            let sc = table[x.shard as usize].class;
            match class {
                HeatClass::Hot => assert_eq!(sc, ShardClass::Hot),
                HeatClass::Cold => assert_eq!(sc, ShardClass::General),
                HeatClass::Warm => {}
            }
            if class == HeatClass::Hot {
                hot_shards.insert(x.shard);
            }
            if ino == files[1].0 && index < 4 {
                group_shards.insert(x.shard);
            }
            let mut r = x.replicas.clone();
            r.sort();
            let mut p = table[x.shard as usize].disks.clone();
            p.sort();
            assert_eq!(r, p, "replicas off the placement");
        })
        .unwrap();
    assert!(!hot_shards.is_empty());
    assert_eq!(group_shards.len(), 1, "group split over {group_shards:?}");
    for (ino, d) in &files {
        assert!(read_all(&fs, *ino, d.len()) == *d, "file {ino} changed");
    }
    fs.drain_reaper();
    let r = crate::admin::fsck(&fs, false).unwrap();
    assert!(r.clean, "{:?}", r.problems);
    // A second plan finds nothing to do.
    assert_eq!(e.reshard(true).unwrap().moves, 0);
}

/// A write that lands between a move's copy and its commit wins: the move is refused
/// (compare-and-set on the version), its copies are removed, the data is the new data.
#[test]
fn concurrent_write_wins_over_a_move() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, fs) = create_temp(dir.path(), 4, 2, ES).unwrap();
    let (ino, _) = write_file(&fs, "x", 1, 1);
    let cur = fs.meta.extent(ino, 0).unwrap().unwrap();
    let ids = fs
        .define_shards(vec![ShardDef {
            id: None,
            expect_epoch: 0,
            class: ShardClass::Hot,
            disks: (0..4u32).filter(|d| !cur.replicas.contains(d)).collect(),
        }])
        .unwrap();
    let to = *ids[0].as_ref().unwrap();
    let to_rec = fs.shard(to);
    let id = ExtentId {
        ino,
        index: 0,
        version: cur.version,
    };
    let data = fs.read_good_copy(ino, 0, &cur).unwrap();
    for d in &to_rec.disks {
        fs.store
            .write_extent(&fs.store.disk(*d).unwrap(), &id, &data, (to, to_rec.epoch))
            .unwrap();
    }
    // The concurrent write.
    let fh = fs.open(ino, libc::O_RDWR).unwrap();
    let new = vec![7u8; ES as usize];
    fs.write(fh, 0, &new).unwrap();
    fs.release(fh).unwrap();
    let m = MoveCommit {
        ino,
        index: 0,
        version: cur.version,
        from: cur.shard,
        from_epoch: fs.shard(cur.shard).epoch,
        to,
        to_epoch: to_rec.epoch,
        installed: to_rec.disks.clone(),
    };
    let out = fs.commit_moves(&[m]).unwrap();
    assert_eq!(out, vec![MoveOutcome::Stale]);
    for d in &to_rec.disks {
        assert!(!fs.store.disk(*d).unwrap().extent_path(&id).exists());
    }
    assert_eq!(read_all(&fs, ino, ES as usize), new);
    fs.drain_reaper();
    let r = crate::admin::fsck(&fs, false).unwrap();
    assert!(r.clean, "{:?}", r.problems);
}

/// A shard read every night at 02:00 for five days is prepared (its data read ahead) at
/// 01:30 on the sixth, and only once.
#[test]
fn nightly_shard_is_prepared_before_its_hour() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, fs) = create_temp(dir.path(), 4, 2, ES).unwrap();
    let (ino, _) = write_file(&fs, "nightly", 2, 3);
    let shard = fs.meta.extent(ino, 0).unwrap().unwrap().shard;
    let a = crate::access::Analyzer::new(AccessOptions::default());
    const DAY_MS: u64 = 86_400_000;
    let t0 = 1_700_000_000_000 / DAY_MS * DAY_MS;
    let mut events = Vec::new();
    for day in 0..5 {
        for m in 0..30 {
            events.push(crate::access::Event {
                ino,
                index: 0,
                extents: 1,
                op: crate::access::AccessOp::Read,
                bytes: 4096,
                t_ms: t0 + day * DAY_MS + 2 * 3_600_000 + m * 60_000,
                stream: 1,
                shard,
            });
        }
    }
    a.apply(&events);
    let e = Engine::new(
        fs.clone(),
        a,
        ShardingOptions::default(),
        Box::new(|| false),
    );
    e.prepare_peaks_at(t0 + 5 * DAY_MS + 3_600_000 + 1_800_000);
    assert_eq!(e.status().prepared, vec![(shard, 2, t0 / DAY_MS + 5)]);
    e.prepare_peaks_at(t0 + 5 * DAY_MS + 3_600_000 + 1_900_000);
    assert_eq!(e.status().prepared.len(), 1);
    // At noon nothing is coming.
    let e2 = Engine::new(
        fs.clone(),
        e.analyzer.clone(),
        ShardingOptions::default(),
        Box::new(|| false),
    );
    e2.prepare_peaks_at(t0 + 5 * DAY_MS + 12 * 3_600_000);
    assert!(e2.status().prepared.is_empty());
    // The next night it is prepared again.
    e.prepare_peaks_at(t0 + 6 * DAY_MS + 3_600_000 + 1_800_000);
    assert_eq!(e.status().prepared.len(), 2);
}

/// A committed move makes the recovery agents' plan stale (the planner thread rebuilds it).
#[test]
fn moves_refresh_the_agents_plan() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, fs) = create_temp(dir.path(), 4, 2, ES).unwrap();
    let (ino, _) = write_file(&fs, "x", 1, 9);
    let agents = crate::agents::AgentPool::new(
        crate::agents::AgentMode::Pool,
        crate::agents::AgentLimits::default(),
        ES as usize,
    );
    agents.refresh(&fs).unwrap();
    assert!(!agents.plan_stale(&fs));
    let cur = fs.meta.extent(ino, 0).unwrap().unwrap();
    let to = *fs
        .define_shards(vec![ShardDef {
            id: None,
            expect_epoch: 0,
            class: ShardClass::Hot,
            disks: cur.replicas.clone(),
        }])
        .unwrap()[0]
        .as_ref()
        .unwrap();
    // A new shard alone already changes the table the plan was made from.
    assert!(agents.plan_stale(&fs));
    agents.refresh(&fs).unwrap();
    assert!(!agents.plan_stale(&fs));
    let m = MoveCommit {
        ino,
        index: 0,
        version: cur.version,
        from: cur.shard,
        from_epoch: fs.shard(cur.shard).epoch,
        to,
        to_epoch: fs.shard(to).epoch,
        installed: Vec::new(),
    };
    assert_eq!(fs.commit_moves(&[m]).unwrap(), vec![MoveOutcome::Done]);
    assert!(agents.plan_stale(&fs), "a move must refresh the plan");
    agents.refresh(&fs).unwrap();
    let plan = agents.plan().unwrap();
    assert!(
        plan.extents.iter().any(|e| e.shard == to),
        "plan has the moved extent"
    );
}
