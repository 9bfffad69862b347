use super::*;
use crate::agents::{AgentLimits, AgentMode};
use crate::fs::Ctx;
use crate::meta::ROOT_INO;
use crate::pool::create_temp;

const ES: u64 = 64 * 1024;

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

/// Writes `files` files of `extents` extents each; returns (ino, data).
fn fill(fs: &Fs, files: usize, extents: usize) -> Vec<(u64, Vec<u8>)> {
    (0..files)
        .map(|i| {
            let name = format!("f{i}");
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
            let d = data(extents * ES as usize - 100, i as u8);
            fs.write(fh, 0, &d).unwrap();
            fs.release(fh).unwrap();
            (a.ino, d)
        })
        .collect()
}

fn check_full(fs: &Fs, files: &[(u64, Vec<u8>)]) {
    fs.meta
        .each_extent(|ino, index, e| {
            let live: HashSet<u32> = e
                .replicas
                .iter()
                .copied()
                .filter(|d| fs.store.disk(*d).is_some_and(|x| x.accepts_data()))
                .collect();
            assert_eq!(
                live.len(),
                fs.cfg.replicas as usize,
                "extent {ino}.{index} has replicas {:?}",
                e.replicas
            );
            assert_eq!(
                live.len(),
                e.replicas.len(),
                "dead replica left in the record"
            );
        })
        .unwrap();
    for (ino, d) in files {
        let fh = fs.open(*ino, libc::O_RDONLY).unwrap();
        assert_eq!(&fs.read(*ino, 0, d.len() as u32).unwrap(), d);
        fs.release(fh).unwrap();
    }
}

/// Polls `cond` until it holds; fails the test with `what` after `secs` seconds.
fn wait_until(secs: u64, what: &str, cond: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(secs), "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn orchestrator(fs: &Arc<Fs>, mode: AgentMode) -> Arc<Orchestrator> {
    orchestrator_with(fs, mode, RecoveryOptions::default().probe_deadline)
}

fn orchestrator_with(fs: &Arc<Fs>, mode: AgentMode, probe_deadline: Duration) -> Arc<Orchestrator> {
    let agents = Arc::new(AgentPool::new(
        mode,
        AgentLimits {
            agents_max: 3,
            queue_depth: 2,
            ..AgentLimits::default()
        },
        ES as usize,
    ));
    let o = Orchestrator::start(
        fs.clone(),
        agents,
        RecoveryOptions {
            check_interval: Duration::from_millis(20),
            probe_interval: Duration::from_millis(100),
            plan_refresh_interval: Duration::from_millis(50),
            probe_deadline,
            ..RecoveryOptions::default()
        },
    );
    assert!(o.wait_idle(Duration::from_secs(30)));
    o
}

fn recover_after_failure(mode: AgentMode) {
    let t = tempfile::tempdir().unwrap();
    let (_p, fs) = create_temp(t.path(), 4, 2, ES).unwrap();
    let files = fill(&fs, 6, 5);
    let o = orchestrator(&fs, mode);
    if mode == AgentMode::Pool {
        o.agents.refresh(&fs).unwrap();
        let st = o.agents.status();
        assert!(
            st.ready && st.agents == 3 && st.plan_extents == 30,
            "{st:?}"
        );
    }
    o.fail_disk(1, "test");
    assert!(o.wait_idle(Duration::from_secs(60)));
    let st = o.status();
    assert_eq!(st.state, RecoveryState::Done);
    assert!(
        st.bytes_done > 0 && st.bytes_done == st.bytes_total,
        "{st:?}"
    );
    assert!(st.activation_us.is_some());
    assert!(st.lost_shards.is_empty());
    for s in fs.shard_table() {
        assert!(!s.disks.contains(&1), "failed disk still placed");
        assert_eq!(s.disks.len(), 2);
    }
    check_full(&fs, &files);
    assert_eq!(
        crate::admin::fsck(&fs, false).unwrap().problems,
        Vec::<String>::new()
    );
}

#[test]
fn agents_follow_shard_risk_times_size() {
    let t = tempfile::tempdir().unwrap();
    let (_p, fs) = create_temp(t.path(), 4, 2, ES).unwrap();
    fill(&fs, 8, 6);
    let pool = AgentPool::new(
        AgentMode::Pool,
        AgentLimits {
            agents_max: 8,
            queue_depth: 1,
            ..AgentLimits::default()
        },
        ES as usize,
    );
    pool.refresh(&fs).unwrap();
    let p = pool.plan().unwrap();
    let with_data: Vec<u32> = (0..p.shard_bytes.len() as u32)
        .filter(|s| p.shard_bytes[*s as usize] > 0)
        .collect();
    assert!(with_data.len() >= 2);
    let risky = with_data[0];
    let calm = with_data[1];
    let before = (
        p.shard_agents[risky as usize],
        p.shard_agents[calm as usize],
    );
    assert!(!pool.plan_stale(&fs));
    // One shard 50 times riskier: it gets more agents, a calm one keeps at least one.
    pool.set_risk(Arc::new(move |s| if s == risky { 50.0 } else { 1.0 }));
    assert!(pool.plan_stale(&fs), "new risk weights make the plan stale");
    pool.refresh(&fs).unwrap();
    let p = pool.plan().unwrap();
    let after = (
        p.shard_agents[risky as usize],
        p.shard_agents[calm as usize],
    );
    assert!(after.0 > before.0, "{before:?} -> {after:?}");
    assert!(after.0 > after.1 && after.1 >= 1, "{after:?}");
    assert!(after.0 as usize <= pool.agent_count());
}

#[test]
fn limiter_follows_the_profile() {
    let mk = |profile, rate_bytes_max| {
        Limiter::new(&RecoveryOptions {
            profile,
            rate_bytes_max,
            ..RecoveryOptions::default()
        })
    };
    let mib = (1u64 << 20) as f64;
    let l = mk(Profile::Balanced, 0);
    assert!(l.allowed(0.0, 0.0).is_infinite(), "idle clients: no pacing");
    assert_eq!(
        l.allowed(300.0 * mib, 0.0),
        300.0 * mib,
        "balanced: half each"
    );
    assert_eq!(l.allowed(300.0 * mib, 1000.0 * mib), 500.0 * mib);
    let c = mk(Profile::HighClientOps, 0);
    assert_eq!(c.allowed(300.0 * mib, 0.0), 100.0 * mib, "clients get 3/4");
    assert_eq!(c.allowed(1.0, 0.0), 8.0 * mib, "the reservation holds");
    let r = mk(Profile::HighRecoveryOps, 200 << 20);
    assert_eq!(r.allowed(300.0 * mib, 0.0), 200.0 * mib, "the limit holds");
    assert_eq!(r.allowed(0.0, 0.0), 200.0 * mib);
}

/// Client bytes from before a recovery (e.g. the files written an hour earlier) must not
/// pace its start; client bytes during it must.
#[test]
fn limiter_ignores_client_bytes_from_before_recovery() {
    let t = tempfile::tempdir().unwrap();
    let (_p, fs) = create_temp(t.path(), 3, 2, ES).unwrap();
    let l = Limiter::new(&RecoveryOptions::default());
    fs.stats
        .bytes_written
        .fetch_add(1 << 30, std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(350));
    l.acquire(&fs, 1 << 20);
    assert_eq!(l.client_rate(), 0.0, "an old fill is not client load now");
    fs.stats
        .bytes_read
        .fetch_add(64 << 20, std::sync::atomic::Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(120));
    l.acquire(&fs, 1 << 20);
    assert!(
        l.client_rate() > 0.0,
        "reads during recovery are client load"
    );
}

#[test]
fn pool_agents_restore_every_replica() {
    recover_after_failure(AgentMode::Pool);
}

#[test]
fn reactive_agents_restore_every_replica() {
    recover_after_failure(AgentMode::Reactive);
}

#[test]
fn stale_epoch_is_fenced_and_racing_agents_commit_once() {
    let t = tempfile::tempdir().unwrap();
    let (_p, fs) = create_temp(t.path(), 4, 2, ES).unwrap();
    let files = fill(&fs, 1, 1);
    let ino = files[0].0;
    let e = fs.meta.extent(ino, 0).unwrap().unwrap();
    let shard = fs.shard(e.shard);
    let failed = shard.disks[0];
    let survivor = shard.disks[1];
    fs.fail_disk(failed);
    let spare: Vec<u32> = (0..4).filter(|d| !shard.disks.contains(d)).collect();
    // Recovery A moves the shard to spare[0]; recovery B (planned before) to spare[1].
    let epoch_a = fs
        .set_placement(e.shard, shard.epoch, vec![spare[0], survivor])
        .unwrap();
    assert_eq!(
        fs.set_placement(e.shard, shard.epoch, vec![spare[1], survivor]),
        Err(crate::fs::Errno::ESTALE),
        "a placement change under a stale epoch is refused"
    );
    let good = fs.read_good_copy(ino, 0, &e).unwrap();
    let id = crate::store::ExtentId {
        ino,
        index: 0,
        version: e.version,
    };
    let stage = |target: u32, tag: u32| {
        let d = fs.store.disk(target).unwrap();
        use std::os::unix::fs::FileExt;
        let (f, _) = fs.store.create_staging(&d, &id, tag, false).unwrap();
        f.write_all_at(&good, 0).unwrap();
        d
    };
    // Stale agent of B: fenced, its copy never installed.
    let db = stage(spare[1], 7);
    let r = fs
        .commit_recovered(ino, 0, e.version, shard.epoch, spare[1], || {
            fs.store.install_staging(&db, &id, 7, (0, 0))
        })
        .unwrap();
    assert_eq!(r, RecoveryCommit::Fenced);
    assert!(
        !db.extent_path(&id).exists(),
        "a fenced copy is not installed"
    );
    // Two agents of A racing on the same extent and target: one commit.
    let da = stage(spare[0], 1);
    stage(spare[0], 2);
    let results: Vec<RecoveryCommit> = std::thread::scope(|s| {
        let hs: Vec<_> = [1u32, 2]
            .into_iter()
            .map(|tag| {
                let (fs, da, id, t0) = (&fs, &da, &id, spare[0]);
                s.spawn(move || {
                    fs.commit_recovered(ino, 0, e.version, epoch_a, t0, || {
                        fs.store.install_staging(da, id, tag, (0, 0))
                    })
                    .unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        results
            .iter()
            .filter(|r| **r == RecoveryCommit::Done)
            .count(),
        1,
        "{results:?}"
    );
    assert!(results.contains(&RecoveryCommit::AlreadyThere));
    let after = fs.meta.extent(ino, 0).unwrap().unwrap();
    let mut reps = after.replicas.clone();
    reps.sort_unstable();
    let mut want = vec![survivor, spare[0]];
    want.sort_unstable();
    assert_eq!(
        reps, want,
        "exactly one copy committed, the failed disk dropped"
    );
    // A write since the plan: the extent's version moved on, the copy is stale.
    let fh = fs.open(ino, libc::O_RDWR).unwrap();
    fs.write(fh, 0, b"new").unwrap();
    fs.release(fh).unwrap();
    let r = fs
        .commit_recovered(ino, 0, e.version, epoch_a, spare[0], || Ok(()))
        .unwrap();
    assert_eq!(r, RecoveryCommit::Stale);
}

#[test]
fn drain_moves_replicas_and_releases_the_disk() {
    let t = tempfile::tempdir().unwrap();
    let (_p, fs) = create_temp(t.path(), 4, 2, ES).unwrap();
    let files = fill(&fs, 4, 4);
    let o = orchestrator(&fs, AgentMode::Pool);
    o.drain_disk(2).unwrap();
    assert!(o.wait_idle(Duration::from_secs(60)));
    let d = fs.store.disk(2).unwrap();
    assert_eq!(d.state(), DiskState::Removed);
    assert!(
        !d.root.join(crate::store::LABEL_FILE).exists(),
        "label released"
    );
    check_full(&fs, &files);
    // A new disk takes a share of the shards and their data.
    let nd = t.path().join("new");
    std::fs::create_dir(&nd).unwrap();
    let id = o.add_disk(&nd).unwrap();
    assert!(o.wait_idle(Duration::from_secs(60)));
    let placed = fs
        .shard_table()
        .iter()
        .filter(|s| s.disks.contains(&id))
        .count();
    assert!(placed >= 64 * 2 / 4 - 1, "new disk got {placed} shards");
    check_full(&fs, &files);
    let mut on_new = 0;
    fs.meta
        .each_extent(|_, _, e| on_new += usize::from(e.replicas.contains(&id)))
        .unwrap();
    assert!(on_new > 0, "data moved onto the new disk");
    assert!(o.add_disk(&nd).is_err(), "a disk cannot be added twice");
}

#[test]
fn probe_fails_missing_and_relabelled_disks() {
    let t = tempfile::tempdir().unwrap();
    let (_p, fs) = create_temp(t.path(), 3, 2, ES).unwrap();
    let files = fill(&fs, 2, 3);
    let o = orchestrator(&fs, AgentMode::Pool);
    // Disk 0 swapped for another pool's disk: label mismatch.
    crate::store::write_label(
        &fs.store.disk(0).unwrap().root,
        &crate::store::Label::new("other", 0),
    )
    .unwrap();
    wait_until(5, "label mismatch not detected", || {
        fs.store.disk(0).unwrap().state() == DiskState::Failed
    });
    assert!(o.wait_idle(Duration::from_secs(60)));
    assert!(o.status().failures[0].reason.contains("label mismatch"));
    // 3 disks, 2 replicas, one failed: every extent still has 2 copies.
    check_full(&fs, &files);
    // Disk 1 returns EIO on every operation: suspect, then failed after 3 probes.
    fs.store.disk(1).unwrap().set_fault(crate::store::Fault {
        eio_rate: 1.0,
        delay_ms: 0,
    });
    wait_until(5, "EIO disk not failed", || {
        fs.store.disk(1).unwrap().state() == DiskState::Failed
    });
    assert!(o.wait_idle(Duration::from_secs(60)));
    // One disk left for 2 replicas: nothing lost, but shards lack a second target.
    let st = o.status();
    assert!(st.lost_shards.is_empty());
    assert!(!st.shards_without_target.is_empty());
    for (ino, d) in &files {
        let fh = fs.open(*ino, libc::O_RDONLY).unwrap();
        assert_eq!(&fs.read(*ino, 0, d.len() as u32).unwrap(), d);
        fs.release(fh).unwrap();
    }
}

#[test]
fn a_stall_under_every_disk_fails_none_but_one_hung_disk_fails() {
    let t = tempfile::tempdir().unwrap();
    let (_p, fs) = create_temp(t.path(), 4, 2, ES).unwrap();
    let files = fill(&fs, 2, 3);
    // Hung = 10 deadlines (0.5 s) without an answer.
    let o = orchestrator_with(&fs, AgentMode::Pool, Duration::from_millis(50));
    let slow = |d: u32, delay_ms: u64| {
        fs.store.disk(d).unwrap().set_fault(crate::store::Fault {
            eio_rate: 0.0,
            delay_ms,
        })
    };
    let states =
        || -> Vec<DiskState> { (0..4).map(|d| fs.store.disk(d).unwrap().state()).collect() };
    // Every disk's probe takes 1.5 s: three hang thresholds, and no disk answers meanwhile.
    for d in 0..4 {
        slow(d, 1500);
    }
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(4) {
        assert!(
            !states().contains(&DiskState::Failed),
            "a stall shared by every disk failed one: {:?}",
            states()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(states(), vec![DiskState::Suspect; 4]);
    // The stall ends: every disk is up again, nothing moved, nothing lost.
    for d in 0..4 {
        slow(d, 0);
    }
    wait_until(10, "disks not up again after the stall", || {
        states() == vec![DiskState::Up; 4]
    });
    assert!(o.status().failures.is_empty());
    check_full(&fs, &files);
    // One disk hangs while the others answer: that disk fails and is rebuilt elsewhere.
    slow(2, 5000);
    wait_until(10, "hung disk not failed", || {
        fs.store.disk(2).unwrap().state() == DiskState::Failed
    });
    assert!(o.status().failures[0].reason.contains("hung"));
    assert_eq!(
        states().iter().filter(|s| **s == DiskState::Failed).count(),
        1
    );
    slow(2, 0);
    assert!(o.wait_idle(Duration::from_secs(60)));
    check_full(&fs, &files);
}

/// Two disks failing together: the run after the first recovery (kicked by the second
/// failure) must not take the pre-failure plan again, whose replica lists predate the
/// first run's copies: it copied every extent a second time and reported 0 bytes done.
#[test]
fn a_second_run_does_not_copy_again_from_the_old_plan() {
    let t = tempfile::tempdir().unwrap();
    // Three replicas: two failed disks lose nothing.
    let (_p, fs) = create_temp(t.path(), 6, 3, ES).unwrap();
    let files = fill(&fs, 6, 5);
    let o = orchestrator(&fs, AgentMode::Pool);
    o.agents.refresh(&fs).unwrap();
    o.fail_disk(1, "test");
    o.fail_disk(2, "test");
    assert!(o.wait_idle(Duration::from_secs(60)));
    // A run kicked right after (as a second failure's detection does).
    o.kick();
    assert!(o.wait_idle(Duration::from_secs(60)));
    let st = o.status();
    assert_eq!(st.state, RecoveryState::Done);
    assert!(
        st.bytes_done > 0 && st.bytes_done == st.bytes_total,
        "{st:?}"
    );
    check_full(&fs, &files);
}
