//! Soaks of a pool over four hosts, behind `scripts/test --soak` (ignored otherwise): the
//! same faults as the quick tests, again and again on one pool, with the same checks after
//! every round.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::*;

fn disks_of<'a>(v: &'a serde_json::Value, host: &str) -> Vec<&'a serde_json::Value> {
    let disks = v["disks"].as_array().unwrap().iter();
    disks.filter(|d| d["host"] == host).collect()
}

/// Waits until `host`'s disks are failed and a recovery detected after `since_ms` (the
/// daemon's wall clock) is done; that recovery's (bytes copied, ms detection -> done).
fn wait_rebuilt(m: &Mounted, host: &str, since_ms: u64) -> (u64, u64) {
    let v = m.fsp.wait_status(120, &format!("{host} rebuilt"), |v| {
        let r = &v["recovery"];
        let failed = disks_of(v, host).iter().all(|d| d["state"] == "failed");
        // A new failure sets detected_at_ms (and clears done_at_ms) before its run starts.
        let detected = r["detected_at_ms"].as_u64().filter(|d| *d >= since_ms);
        let done = r["done_at_ms"].as_u64();
        failed && r["state"] == "done" && detected.is_some() && done >= detected
    });
    let r = &v["recovery"];
    let ms = r["done_at_ms"].as_u64().unwrap() - r["detected_at_ms"].as_u64().unwrap();
    (r["bytes_done"].as_u64().unwrap(), ms)
}

fn now_ms() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    t.unwrap().as_millis() as u64
}

/// One fault of the rotation on `host` (or an etcd member); what was done, for the log.
fn inject(c: &mut Cluster, m: &Mounted, kind: usize, host: &str, cycle: usize) -> String {
    let t_ms = now_ms();
    match kind {
        0 => {
            c.net.kill(host);
            let (b, ms) = wait_rebuilt(m, host, t_ms);
            c.spawn_node(host, &format!("{host}.log.{cycle}"));
            format!("{host} killed (-9): {b} bytes rebuilt in {ms} ms, then started again")
        }
        1 => {
            c.net.cut(host);
            let (b, ms) = wait_rebuilt(m, host, t_ms);
            c.net.heal(host);
            format!("{host} cut off past its grace: {b} bytes rebuilt in {ms} ms, then healed")
        }
        2 => {
            let pid = c.net.pid(host);
            c.net.signal(pid, libc::SIGSTOP);
            let (b, ms) = wait_rebuilt(m, host, t_ms);
            c.net.signal(pid, libc::SIGCONT);
            format!("{host} paused past its grace: {b} bytes rebuilt in {ms} ms, then continued")
        }
        3 => {
            c.net.cut(host);
            std::thread::sleep(Duration::from_millis(1200)); // grace 2 s
            c.net.heal(host);
            format!("{host} cut off 1.2 s, within its grace")
        }
        _ => {
            let e = c.net.leader().unwrap_or_else(|| "e1".into());
            c.net.kill(&e);
            std::thread::sleep(Duration::from_secs(2));
            c.net.restart_etcd(&e, &format!("{e}.log.{cycle}"));
            c.net.wait_healthy(&["e1", "e2", "e3"]);
            format!("etcd member {e} (the leader) killed, started again 2 s later")
        }
    }
}

/// Soak (`scripts/test --soak`; FSX_SOAK_CYCLES, default 10): storage-host and etcd faults
/// in turn on one 4-host pool (grace 2 s) under a writer fsyncing every file: a host
/// killed (-9) and started again, cut off past its grace and healed, paused (SIGSTOP) past
/// its grace and continued, cut off within its grace and healed, the etcd leader killed and
/// started again; the hosts in turn. After each: every disk up again and the pool fully
/// replicated within 120 s, every file any cycle acknowledged identical; at the end fsck
/// clean and no stale epoch or term accepted in any host's audit log.
#[test]
#[ignore = "a soak: scripts/test --soak"]
fn soak_storage_host_and_etcd_faults_again_and_again() {
    if !net::available() || !fuse_available() {
        return;
    }
    let cycles = env_or("FSX_SOAK_CYCLES", 10);
    let (mut c, m) = mounted_cluster(2000);
    let hosts = ["s1", "s2", "s3", "s4"];
    let mut acked: BTreeMap<PathBuf, Vec<u8>> = fill(&m.mnt, 8);
    let mut healed = vec![];
    for cycle in 0..cycles {
        let host = hosts[cycle % hosts.len()];
        let dir = m.mnt.join(format!("c{cycle}"));
        std::fs::create_dir(&dir).unwrap();
        let w = writer(&dir, 20);
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        let what = inject(&mut c, &m, cycle % 5, host, cycle);
        let got = w.join().unwrap();
        assert!(got.len() >= 10, "cycle {cycle}: {} of 20 writes", got.len());
        acked.extend(got);
        m.fsp
            .wait_status(120, "every disk up, fully replicated", |v| {
                let disks = v["disks"].as_array().unwrap();
                disks.iter().all(|d| d["state"] == "up")
                    && v["replica_health"]["under_replicated"] == 0
                    && v["recovery"]["state"] != "running"
            });
        healed.push(t0.elapsed().as_secs_f64());
        common::drop_caches();
        check_files(&acked);
        eprintln!(
            "cycle {cycle}: {what}; every disk up and fully replicated {:.1} s after the fault; {} acknowledged files identical",
            healed[cycle],
            acked.len()
        );
    }
    common::assert_fully_replicated(&m.fsp);
    let (clean, report) = m.fsp.fsck(false);
    assert!(clean, "{report}");
    let lines = check_audit_logs(&c);
    healed.sort_by(f64::total_cmp);
    eprintln!(
        "{cycles} faults: back to full replication in median {:.1} s, max {:.1} s; {} files intact; {lines} audit lines, no stale epoch or term accepted",
        healed[cycles / 2],
        healed[cycles - 1],
        acked.len()
    );
}

/// Soak (`scripts/test --soak`; FSX_SOAK_CYCLES, default 6): the metadata host killed over
/// and over under an fsync writer, each time taken over by the standby, and a new standby
/// started (with a fresh copy) on the host that died. After every takeover every fsync
/// acknowledged in any earlier cycle is on the new mount, identical; at the end fsck is
/// clean and no storage host accepted a stale epoch or term.
#[test]
#[ignore = "a soak: scripts/test --soak"]
fn soak_metadata_host_killed_again_and_again() {
    if !net::available() || !fuse_available() {
        return;
    }
    let cycles = env_or("FSX_SOAK_CYCLES", 6);
    let (c, m, sb) = mounted_with_standby(&[]);
    // (pool dir, mount point) of the active; relative path -> bytes of every acked file.
    let (mut active_pool, mut active_mnt) = (m.fsp.pool.clone(), m.mnt.clone());
    let mut acked: BTreeMap<PathBuf, Vec<u8>> = BTreeMap::new();
    let mut standby = sb;
    let mut old: Vec<Standby> = Vec::new();
    let mut took = Vec::new();
    for cycle in 0..cycles {
        wait_named(&c, &m.pool_id, Some(standby.name()), &standby);
        let dir = active_mnt.join(format!("c{cycle}"));
        std::fs::create_dir(&dir).unwrap();
        let w = writer(&dir, 40);
        std::thread::sleep(Duration::from_millis(300 + 150 * (cycle as u64 % 4)));
        unsafe { libc::kill(pid_of(&active_pool), libc::SIGKILL) };
        let t_kill = Instant::now();
        for (p, d) in w.join().unwrap() {
            acked.insert(p.strip_prefix(&active_mnt).unwrap().to_path_buf(), d);
        }
        let _ = std::process::Command::new("fusermount3")
            .arg("-uz")
            .arg(&active_mnt)
            .status();
        standby.wait_mounted(60);
        took.push(t_kill.elapsed().as_secs_f64());
        let files: BTreeMap<PathBuf, Vec<u8>> = acked
            .iter()
            .map(|(p, d)| (standby.mnt.join(p), d.clone()))
            .collect();
        common::drop_caches();
        check_files(&files);
        eprintln!(
            "cycle {cycle}: {} acknowledged files in all, taken over by {} in {:.1} s",
            acked.len(),
            standby.name(),
            took[cycle]
        );
        // The host that died comes back as the standby, with a fresh copy.
        let dead = if standby.name() == "m2" { "m1" } else { "m2" };
        let next = Standby::start_as(
            &c,
            &m.pool_id,
            dead,
            cycle + 1,
            &["--host-grace-ms", "2000"],
        );
        active_pool = standby.pool.clone();
        active_mnt = standby.mnt.clone();
        old.push(std::mem::replace(&mut standby, next));
    }
    let fsp = common::Pool {
        tmp: tempfile::tempdir().unwrap(),
        pool: active_pool,
        mnt: active_mnt,
        disks: vec![],
        mounted: false,
    };
    let (clean, report) = fsp.fsck(false);
    assert!(clean, "{report}");
    check_audit_logs(&c);
    took.sort_by(f64::total_cmp);
    eprintln!(
        "{cycles} takeovers: median {:.1} s, max {:.1} s (lease 3 s), {} files intact",
        took[cycles / 2],
        took[cycles - 1],
        acked.len()
    );
    drop(standby);
    drop(old);
}
