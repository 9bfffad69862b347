use rand::{Rng, SeedableRng};

use super::*;

const T0: u64 = 1_750_000_000_000;

fn ev(ino: u64, index: u64, op: AccessOp, t_ms: u64, stream: u64) -> Event {
    Event {
        ino,
        index,
        extents: 1,
        op,
        bytes: 4096,
        t_ms,
        stream,
        shard: (index % 8) as u32,
    }
}

#[test]
fn heat_decays_at_each_scale() {
    let a = Analyzer::new(AccessOptions::default());
    a.apply(&[ev(1, 0, AccessOp::Read, T0, 1)]);
    let h = a.heat((1, 0)).unwrap();
    let (r, w) = h.at(0, T0 + 60_000);
    assert!((r - (-1.0f64).exp()).abs() < 1e-3, "{r}");
    assert_eq!(w, 0.0);
    let (r_hour, _) = h.at(1, T0 + 60_000);
    assert!(r_hour > 0.98);
    let (r_day, _) = h.at(2, T0 + 86_400_000);
    assert!((r_day - (-1.0f64).exp()).abs() < 1e-3);
}

/// A planted hot set (10% of extents, 70% of requests) is found with precision and recall
/// of at least 0.9, and a hot extent that cools a little stays hot (hysteresis).
#[test]
fn planted_hot_set_is_found_and_classes_do_not_flap() {
    let a = Analyzer::new(AccessOptions::default());
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let hot: Vec<u64> = (0..20).map(|i| i * 10).collect();
    let mut events = Vec::new();
    for i in 0..20_000u64 {
        let index = if rng.random_bool(0.7) {
            hot[rng.random_range(0..hot.len())]
        } else {
            rng.random_range(0..200)
        };
        let op = if rng.random_bool(0.3) {
            AccessOp::Write
        } else {
            AccessOp::Read
        };
        events.push(ev(7, index, op, T0 + i, 1));
    }
    a.apply(&events);
    let now = T0 + 20_000;
    a.classify(now);
    let found: Vec<u64> = a
        .extents()
        .iter()
        .filter(|(_, h)| h.class() == HeatClass::Hot)
        .map(|((_, i), _)| *i)
        .collect();
    let hit = found.iter().filter(|i| hot.contains(i)).count() as f64;
    let (p, r) = (hit / found.len() as f64, hit / hot.len() as f64);
    assert!(p >= 0.9 && r >= 0.9, "precision {p} recall {r}");
    assert!(a
        .extents()
        .iter()
        .any(|(_, h)| h.class() == HeatClass::Cold));
    // Half an hour later with no traffic every heat halves about equally: quantiles move
    // with it, so nobody changes class.
    let before: Vec<(Ext, HeatClass)> = a.extents().iter().map(|(e, h)| (*e, h.class())).collect();
    a.classify(now + 1_800_000);
    for (e, c) in before {
        if a.thresholds().hot_enter > a.opts.hot_heat_min {
            assert_eq!(a.heat(e).unwrap().class(), c, "{e:?} flapped");
        }
    }
}

#[test]
fn full_queue_drops_and_counts() {
    let a = Analyzer::new(AccessOptions {
        queue_events_max: 4,
        ..AccessOptions::default()
    });
    let s = a.sink();
    for i in 0..10 {
        s.post(ev(1, i, AccessOp::Read, T0, 1));
    }
    let st = a.stats();
    assert_eq!((st.events_posted, st.events_dropped), (4, 6));
}

#[test]
fn co_accessed_extents_form_groups_per_stream() {
    let a = Analyzer::new(AccessOptions::default());
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut t = T0;
    let mut events = Vec::new();
    for _ in 0..400 {
        // Process 10 reads extents 0..4 of file 5 together; process 11 reads at random.
        for i in 0..4 {
            t += 1;
            events.push(ev(5, i, AccessOp::Read, t, 10));
        }
        for _ in 0..4 {
            t += 1;
            events.push(ev(6, rng.random_range(0..500), AccessOp::Read, t, 11));
        }
    }
    a.apply(&events);
    let gs = a.groups(GroupRules::default());
    assert_eq!(gs[0], vec![(5, 0), (5, 1), (5, 2), (5, 3)]);
    assert!(gs.iter().all(|g| g.iter().all(|e| e.0 == 5)), "{gs:?}");
}

/// Memory is bounded at one million extents: the table stops at its limit (evicting the
/// coldest) and its size stays within the stated bound.
#[test]
fn one_million_extents_stay_within_the_memory_bound() {
    let opts = AccessOptions {
        tracked_extents_max: 1_000_000,
        ..AccessOptions::default()
    };
    let a = Analyzer::new(opts);
    let mut batch = Vec::with_capacity(4096);
    for i in 0..1_050_000u64 {
        batch.push(ev(
            i / 1000 + 2,
            i % 1000,
            AccessOp::Read,
            T0 + i / 100,
            i % 64,
        ));
        if batch.len() == batch.capacity() {
            a.apply(&batch);
            batch.clear();
        }
    }
    a.apply(&batch);
    let st = a.stats();
    assert!(st.extents_tracked <= 1_000_000);
    assert!(st.extents_evicted >= 50_000);
    assert!(st.memory_bytes <= st.memory_bytes_max, "{st:?}");
    let per_extent = st.memory_bytes as f64 / st.extents_tracked as f64;
    assert!(per_extent < 160.0, "{per_extent} bytes per extent");
    eprintln!(
        "1M extents: {} extents tracked, {:.0} bytes/extent, {} MiB total (bound {} MiB)",
        st.extents_tracked,
        per_extent,
        st.memory_bytes >> 20,
        st.memory_bytes_max >> 20
    );
}

#[test]
fn summaries_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let meta = Meta::open(dir.path(), true).unwrap();
    let a = Analyzer::new(AccessOptions::default());
    let mut events = Vec::new();
    for i in 0..50 {
        events.push(ev(3, i % 5, AccessOp::Write, T0 + i, 4));
    }
    a.apply(&events);
    a.classify(T0 + 50);
    a.save(&meta).unwrap();
    let b = Analyzer::new(AccessOptions::default());
    assert_eq!(b.load(&meta).unwrap(), 5);
    let (ha, hb) = (a.heat((3, 2)).unwrap(), b.heat((3, 2)).unwrap());
    assert_eq!(ha.at(1, T0 + 60), hb.at(1, T0 + 60));
    assert_eq!(ha.class(), hb.class());
    assert_eq!(a.top_pairs(10), b.top_pairs(10));
    assert_eq!(b.profiles(T0).len(), a.profiles(T0).len());
}

#[test]
#[ignore]
fn cost_per_event() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let events: Vec<Event> = (0..1_000_000u64)
        .map(|i| {
            ev(
                rng.random_range(2..50),
                rng.random_range(0..2000),
                AccessOp::Read,
                T0 + i / 50,
                7,
            )
        })
        .collect();
    for p in [1.0, 0.14] {
        let a = Analyzer::new(AccessOptions::default());
        a.set_pair_sample(p);
        let t = std::time::Instant::now();
        for c in events.chunks(1024) {
            a.apply(c);
        }
        eprintln!(
            "pairs of {p} of events: {:.0} ns per event",
            t.elapsed().as_nanos() as f64 / 1e6
        );
    }
}
