//! Disk failure end to end, on real mounts: failures injected with `foreshard debug inject`
//! (yank, eio, slow, bitrot, crash), recovery to full replication checked through the CLI,
//! every file's blake3 checked during and after. Plain-directory disks, so no loop devices needed.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use common::*;

const FILE_BYTES: usize = 8 << 20;

fn mounted(disks: usize, extra: &[&str]) -> Option<Pool> {
    if !fuse_available() {
        return None;
    }
    let mut p = Pool::new(disks, 2, "1MiB");
    p.mount_with(extra);
    Some(p)
}

/// Writes `n` files of 8 MiB (fsync'ed); returns path -> blake3.
fn fill(p: &Pool, n: usize) -> HashMap<PathBuf, blake3::Hash> {
    (0..n)
        .map(|i| {
            let path = p.path(&format!("f{i:03}"));
            let data = pattern(FILE_BYTES, i as u64 + 1);
            std::fs::write(&path, &data).unwrap();
            std::fs::File::open(&path).unwrap().sync_all().unwrap();
            (path, blake3::hash(&data))
        })
        .collect()
}

fn recovery_done(v: &serde_json::Value) -> bool {
    v["recovery"]["state"] == "done"
}

#[test]
fn yanked_disk_is_rebuilt_while_files_are_read() {
    let Some(p) = mounted(4, &[]) else { return };
    let files = fill(&p, 32); // 256 MiB
    p.wait_status(60, "agents ready", |v| v["agents"]["ready"] == true);
    let reader = Reader::start(&files);
    std::thread::sleep(Duration::from_millis(300));
    let out = p.inject(&["yank", p.disks[1].to_str().unwrap()]);
    assert!(out.contains("yanked"), "{out}");
    let v = p.wait_status(120, "recovery done", recovery_done);
    let (reads, errors) = reader.finish();
    assert_eq!(errors, 0, "reads failed during recovery");
    assert!(reads > 0);
    assert_eq!(disk_state(&v, 1), "failed");
    let r = &v["recovery"];
    assert!(
        r["failures"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("gone"),
        "{r:#}"
    );
    assert!(r["bytes_done"].as_u64().unwrap() >= 100 << 20, "{r:#}");
    assert_eq!(r["bytes_done"], r["bytes_total"]);
    assert!(r["activation_us"].as_u64().is_some());
    assert!(r["lost_shards"].as_array().unwrap().is_empty());
    check_all(&files);
    assert_fully_replicated(&p);
    // New writes after the failure land on live disks with full replication too.
    let more = fill_named(&p, "after", 3);
    check_all(&more);
    assert_fully_replicated(&p);
    // `recover` reports the finished run.
    let o = run_ok(&["recover", p.pool.to_str().unwrap()]);
    assert!(o.contains("done"), "{o}");
}

fn fill_named(p: &Pool, prefix: &str, n: usize) -> HashMap<PathBuf, blake3::Hash> {
    (0..n)
        .map(|i| {
            let path = p.path(&format!("{prefix}{i}"));
            let data = pattern(3 << 20, 1000 + i as u64);
            std::fs::write(&path, &data).unwrap();
            (path, blake3::hash(&data))
        })
        .collect()
}

#[test]
fn eio_disk_is_failed_and_rebuilt() {
    let Some(p) = mounted(4, &[]) else { return };
    let files = fill(&p, 8);
    // A few errors: reads bypass them, the disk stays in use.
    p.inject(&["eio", "2", "0.05"]);
    check_all(&files);
    // Every operation fails: the probe fails the disk and recovery rebuilds its replicas.
    p.inject(&["eio", "2", "1"]);
    let v = p.wait_status(30, "disk 2 failed", |v| disk_state(v, 2) == "failed");
    let why = v["recovery"]["failures"][0]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(why.contains("probes in a row failed"), "{why}");
    check_all(&files);
    p.wait_status(120, "recovery done", recovery_done);
    check_all(&files);
    assert_fully_replicated(&p);
}

#[test]
fn slow_disk_serves_then_fails_past_the_deadline() {
    let Some(p) = mounted(
        4,
        &["--probe-interval-ms", "100", "--probe-deadline-ms", "300"],
    ) else {
        return;
    };
    let files = fill(&p, 6);
    // Slow but within the deadline: correct data, disk stays up.
    p.inject(&["slow", "3", "20"]);
    check_all(&files);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(disk_state(&p.json(&["status"]), 3), "up");
    // Slower than the deadline: suspect only (a busy disk can take seconds to fsync).
    p.inject(&["slow", "3", "600"]);
    p.wait_status(30, "disk 3 suspect", |v| disk_state(v, 3) == "suspect");
    check_all(&files);
    assert_eq!(disk_state(&p.json(&["status"]), 3), "suspect");
    // Hung (10 deadlines without an answer): failed, then rebuilt elsewhere.
    p.inject(&["slow", "3", "5000"]);
    let v = p.wait_status(30, "disk 3 failed", |v| disk_state(v, 3) == "failed");
    let why = v["recovery"]["failures"][0]["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(why.contains("hung"), "{why}");
    p.wait_status(120, "recovery done", recovery_done);
    check_all(&files);
    assert_fully_replicated(&p);
}

#[test]
fn bitrot_is_bypassed_and_repaired() {
    let Some(p) = mounted(3, &[]) else { return };
    let files = fill(&p, 6);
    let out = p.inject(&["bitrot", p.disks[0].to_str().unwrap(), "8"]);
    assert!(out.contains("damaged"), "{out}");
    check_all(&files);
    let (clean, out) = p.fsck(true);
    assert!(clean || out.contains("repaired"), "{out}");
    let (clean, out) = p.fsck(false);
    assert!(clean, "after repair: {out}");
}

#[test]
fn crash_during_recovery_resumes_after_remount() {
    let Some(mut p) = mounted(4, &["--recovery-rate", "16MiB"]) else {
        return;
    };
    let files = fill(&p, 16); // 128 MiB; ~64 MiB to rebuild at 16 MiB/s
    p.wait_status(60, "agents ready", |v| v["agents"]["ready"] == true);
    p.inject(&["yank", p.disks[2].to_str().unwrap()]);
    p.wait_status(30, "recovery under way", |v| {
        v["recovery"]["state"] == "running" && v["recovery"]["bytes_done"].as_u64() > Some(0)
    });
    let out = p.inject(&["crash"]);
    assert!(out.contains("killed"), "{out}");
    p.crash(); // clears the dead mount
    p.mount();
    let v = p.wait_status(120, "resumed recovery done", recovery_done);
    assert_eq!(v["recovery"]["resumed"], true, "{:#}", v["recovery"]);
    assert_eq!(
        disk_state(&v, 2),
        "failed",
        "failed state survives the crash"
    );
    check_all(&files);
    assert_fully_replicated(&p);
}

#[test]
fn second_failure_during_recovery_reports_lost_shards() {
    let Some(p) = mounted(4, &["--recovery-rate", "4MiB"]) else {
        return;
    };
    let files = fill(&p, 12);
    p.wait_status(60, "agents ready", |v| v["agents"]["ready"] == true);
    let pool = p.pool.to_str().unwrap();
    run_ok(&["disk", "fail", pool, "1"]);
    p.inject(&["fail", "2"]);
    let v = p.wait_status(180, "recovery done", recovery_done);
    let r = &v["recovery"];
    let lost = r["lost_shards"].as_array().unwrap();
    assert!(
        !lost.is_empty(),
        "shards on disks 1+2 must be reported lost: {r:#}"
    );
    let mut lost_files: HashSet<PathBuf> = HashSet::new();
    for l in lost {
        assert!(l["extents"].as_u64().unwrap() > 0);
        for f in l["files"].as_array().unwrap() {
            lost_files.insert(p.mnt.join(f.as_str().unwrap().trim_start_matches('/')));
        }
    }
    assert!(!lost_files.is_empty(), "lost shards name their files");
    drop_caches();
    for (path, h) in &files {
        match std::fs::read(path) {
            Ok(d) => {
                assert!(
                    !lost_files.contains(path),
                    "{} lost but readable",
                    path.display()
                );
                assert_eq!(&blake3::hash(&d), h);
            }
            Err(e) => {
                assert!(
                    lost_files.contains(path),
                    "{}: {e} but not reported",
                    path.display()
                );
                assert_eq!(e.raw_os_error(), Some(libc::EIO));
            }
        }
    }
    let o = run(&["recover", pool]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "recover exits 1 when data is lost"
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("LOST shard"));
    // Everything that survived is back to two copies on the two live disks.
    let shards = p.json(&["shards"]);
    for s in shards["shards"].as_array().unwrap() {
        for e in s["extents"].as_array().unwrap() {
            let reps = e["replicas"].as_array().unwrap();
            if reps.iter().any(|r| r == 0 || r == 3) {
                assert_eq!(reps.len(), 2, "survivor {e} not fully replicated");
            }
        }
    }
}

#[test]
fn disk_remove_drains_and_disk_add_takes_data() {
    let Some(p) = mounted(4, &[]) else { return };
    let files = fill(&p, 8);
    let pool = p.pool.to_str().unwrap();
    let out = run_ok(&["disk", "remove", pool, "3"]);
    assert!(out.contains("removed"), "{out}");
    let v = p.json(&["status"]);
    assert_eq!(disk_state(&v, 3), "removed");
    assert_eq!(v["disks"][3]["extents"], 0);
    check_all(&files);
    assert_fully_replicated(&p);
    let nd = p.tmp.path().join("new-disk");
    std::fs::create_dir(&nd).unwrap();
    let out = run_ok(&["disk", "add", pool, nd.to_str().unwrap()]);
    assert!(out.contains("\"disk\":4"), "{out}");
    run_ok(&["recover", pool, "--wait"]);
    let v = p.json(&["status"]);
    assert!(v["disks"][4]["shards"].as_u64().unwrap() > 0, "{v:#}");
    assert!(v["disks"][4]["extents"].as_u64().unwrap() > 0, "{v:#}");
    check_all(&files);
    assert_fully_replicated(&p);
    // Refusals: the same disk twice, a missing directory, an unknown disk.
    assert!(!run(&["disk", "add", pool, nd.to_str().unwrap()])
        .status
        .success());
    assert!(!run(&["disk", "add", pool, "/nonexistent/x"])
        .status
        .success());
    let o = run(&["disk", "fail", pool, "9"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no disk 9"));
}

#[test]
fn full_disk_is_full_not_failed() {
    if !fuse_available() {
        return;
    }
    let mut p = Pool::new(3, 2, "1MiB");
    // Disk 0 becomes a 12 MiB tmpfs (same label and contents).
    let d0 = p.disks[0].clone();
    let keep = p.tmp.path().join("disk0.keep");
    std::fs::rename(&d0, &keep).unwrap();
    std::fs::create_dir(&d0).unwrap();
    sh_ok(
        &format!(
            "mount -t tmpfs -o size=12m tmpfs {0} && cp -a {1}/. {0}/",
            d0.display(),
            keep.display()
        ),
        std::path::Path::new("/"),
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _u = Unmount(d0.clone());
    p.mount();
    let files = fill(&p, 6); // 48 MiB: disk 0's shards cannot all fit
    check_all(&files);
    let v = p.json(&["status"]);
    assert_eq!(disk_state(&v, 0), "up", "a full disk is not failed: {v:#}");
    assert!(v["disks"][0]["full"] == true, "{v:#}");
    assert!(v["stats"]["degraded_writes"].as_u64().unwrap() > 0);
    // Room again (all but one file removed): the full flag clears and recovery brings the
    // degraded extents back to two copies.
    let mut files = files;
    let keep: PathBuf = files.keys().next().unwrap().clone();
    for f in files.keys().filter(|f| **f != keep) {
        std::fs::remove_file(f).unwrap();
    }
    files.retain(|f, _| *f == keep);
    p.wait_status(60, "degraded extents re-replicated", |v| {
        v["replica_health"]["under_replicated"] == 0
    });
    check_all(&files);
    p.umount();
}

#[test]
fn a_disk_renamed_away_briefly_is_suspect_then_up_not_failed() {
    let Some(p) = mounted(3, &[]) else { return };
    let files = fill(&p, 4);
    let aside = p.disks[1].with_extension("away");
    std::fs::rename(&p.disks[1], &aside).unwrap();
    let v = p.wait_status(5, "disk 1 suspect", |v| disk_state(v, 1) == "suspect");
    assert_eq!(disk_state(&v, 0), "up");
    std::thread::sleep(Duration::from_millis(500));
    std::fs::rename(&aside, &p.disks[1]).unwrap();
    p.wait_status(5, "disk 1 up again", |v| disk_state(v, 1) == "up");
    // Well past the moment it would have been failed without the grace period.
    std::thread::sleep(Duration::from_secs(2));
    let v = p.json(&["status"]);
    assert_eq!(disk_state(&v, 1), "up", "{v:#}");
    check_all(&files);
    // Gone for longer than the grace period (here 1 s): failed and rebuilt.
    let mut p = p;
    p.umount();
    p.mount_with(&["--missing-grace-ms", "1000"]);
    std::fs::rename(&p.disks[1], &aside).unwrap();
    let v = p.wait_status(30, "disk 1 failed", |v| disk_state(v, 1) == "failed");
    let why = v["recovery"]["failures"][0]["reason"]
        .as_str()
        .unwrap_or("");
    assert!(why.contains("gone"), "{why}");
    p.wait_status(60, "recovery done", recovery_done);
    check_all(&files);
}

#[test]
fn every_kind_of_thread_that_panics_is_reported_and_restarted() {
    if !fuse_available() {
        return;
    }
    let mut p = Pool::new(3, 2, "1MiB");
    let kinds = "flusher,commit,reaper,readahead,repair,recovery,planner,monitor,sharding,risk,access,fuse-statfs";
    let mut a = vec!["mount", p.pool.to_str().unwrap(), p.mnt.to_str().unwrap()];
    let transport = std::env::var("FORESHARD_TEST_IO_URING").ok();
    if let Some(t) = &transport {
        a.extend(["--io-uring", t.as_str()]);
    }
    let out = std::process::Command::new(BIN)
        .args(&a)
        .env("FORESHARD_PANIC_ONCE", kinds)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p.mounted = true;
    // Work that passes every hook: writes (commit, reaper on overwrite), a read-ahead
    // stream, a bad replica (repair), a disk failure (recovery, planner).
    let files = fill(&p, 3);
    for (path, _) in files.iter().take(1) {
        let mut data = std::fs::read(path).unwrap();
        data[5] ^= 1;
        std::fs::write(path, &data).unwrap();
        data[5] ^= 1;
        std::fs::write(path, &data).unwrap();
    }
    let r = std::panic::catch_unwind(|| check_all(&files));
    if r.is_err() {
        let log = std::fs::read_to_string(p.pool.join("foreshard.log")).unwrap_or_default();
        panic!("reads failed; daemon log:\n{log}");
    }
    // statfs panics once: EIO, and the mount answers the next one.
    let df = |mnt: &std::path::Path| {
        let c = std::ffi::CString::new(mnt.to_str().unwrap()).unwrap();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: valid path and out-pointer.
        unsafe { libc::statvfs(c.as_ptr(), &mut st) }
    };
    let first = df(&p.mnt);
    assert_eq!(
        df(&p.mnt),
        0,
        "the session goes on after a handler panicked"
    );
    assert!(first != 0 || df(&p.mnt) == 0);
    run_ok(&["disk", "fail", p.pool.to_str().unwrap(), "2"]);
    p.wait_status(60, "recovery done, fully replicated", |v| {
        recovery_done(v) && v["replica_health"]["under_replicated"] == 0
    });
    // Bad replicas on disk 0 (disk 1 holds the good copies now): reads queue repairs, the
    // first one panics the repair thread, later reads queue them again.
    p.inject(&["bitrot", p.disks[0].to_str().unwrap(), "1000"]);
    for _ in 0..2 {
        if std::panic::catch_unwind(|| check_all(&files)).is_err() {
            let log = std::fs::read_to_string(p.pool.join("foreshard.log")).unwrap_or_default();
            panic!("reads failed; daemon log:\n{log}");
        }
    }
    // Each hooked kind panicked once, is named, and was restarted.
    let v = p.wait_status(30, "panics reported", |v| {
        v["health"]["panics"]
            .as_array()
            .is_some_and(|a| a.len() >= 11)
    });
    assert_eq!(v["health"]["state"], "degraded", "{:#}", v["health"]);
    let panics = v["health"]["panics"].as_array().unwrap();
    for kind in [
        "flusher",
        "commit",
        "reaper",
        "readahead",
        "recovery",
        "planner",
        "monitor",
        "repair",
        "sharding",
        "risk",
        "access",
    ] {
        assert!(
            panics
                .iter()
                .any(|x| x["thread"].as_str().unwrap_or("").starts_with(kind)
                    && x["restarted"] == true),
            "{kind} not reported: {:#}",
            v["health"]
        );
    }
    let status = run_ok(&["status", p.pool.to_str().unwrap()]);
    assert!(status.contains("pool DEGRADED"), "{status}");
    // Everything still works: new data, reads, and a clean pool.
    let more = fill_named(&p, "after", 2);
    check_all(&more);
    check_all(&files);
    // Copies the reads never looked at are still bad: an online repair, then a clean pool.
    p.fsck(true);
    p.umount();
    let (clean, out) = p.fsck(false);
    assert!(clean, "{out}");
}

/// Bytes of extent files under a disk directory.
fn extent_bytes(disk: &std::path::Path) -> u64 {
    let mut n = 0;
    for b in std::fs::read_dir(disk.join("extents")).unwrap() {
        for f in std::fs::read_dir(b.unwrap().path()).unwrap() {
            n += f.unwrap().metadata().unwrap().len();
        }
    }
    n
}

fn online(p: &Pool, disk: &str) -> serde_json::Value {
    let out = run_ok(&["disk", "online", p.pool.to_str().unwrap(), disk, "--json"]);
    serde_json::from_str(&out).expect("json report")
}

#[test]
fn a_failed_disk_brought_back_online_is_reused_not_copied_again() {
    // Slow recovery, so most of the disk is still to copy when it comes back.
    let Some(p) = mounted(3, &["--recovery-rate", "1MiB", "--missing-grace-ms", "300"]) else {
        return;
    };
    let mut files = fill(&p, 6);
    let held = extent_bytes(&p.disks[1]);
    // Refused while the disk is up.
    let o = run(&["disk", "online", p.pool.to_str().unwrap(), "1"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not failed"));
    // An extent disk 1 holds (file names are inode.index.version in hex), to rewrite.
    let on1: HashSet<(u64, u64)> = std::fs::read_dir(p.disks[1].join("extents"))
        .unwrap()
        .flat_map(|b| std::fs::read_dir(b.unwrap().path()).unwrap())
        .filter_map(|f| {
            let name = f.unwrap().file_name().into_string().unwrap();
            let mut it = name.split('.').map(|x| u64::from_str_radix(x, 16).ok());
            Some((it.next()??, it.next()??))
        })
        .collect();
    let (f0, index) = files
        .keys()
        .find_map(|f| {
            use std::os::unix::fs::MetadataExt;
            let ino = std::fs::metadata(f).unwrap().ino();
            (0..8)
                .find(|i| on1.contains(&(ino, *i)))
                .map(|i| (f.clone(), i))
        })
        .expect("disk 1 holds extents of the files");
    let aside = p.disks[1].with_extension("away");
    std::fs::rename(&p.disks[1], &aside).unwrap();
    p.wait_status(30, "disk 1 failed", |v| disk_state(v, 1) == "failed");
    // While it is away: that 1 MiB extent rewritten (its copy there goes stale) and a new
    // file.
    let mut data = std::fs::read(&f0).unwrap();
    let at = index as usize * (1 << 20);
    data[at..at + (1 << 20)].fill(0x5a);
    std::fs::write(&f0, &data).unwrap();
    std::fs::File::open(&f0).unwrap().sync_all().unwrap();
    files.insert(f0, blake3::hash(&data));
    let g = p.path("new");
    let gd = pattern(1 << 20, 99);
    std::fs::write(&g, &gd).unwrap();
    std::fs::File::open(&g).unwrap().sync_all().unwrap();
    files.insert(g, blake3::hash(&gd));
    // Recovery copies meanwhile (at 1 MiB/s), then the disk is back: the same directory,
    // label and files.
    std::thread::sleep(Duration::from_secs(2));
    std::fs::rename(&aside, &p.disks[1]).unwrap();
    let r = online(&p, "1");
    assert!(
        r["reused_bytes"].as_u64().unwrap() > held / 2,
        "{r:#} of {held}"
    );
    assert!(r["stale_removed"].as_u64().unwrap() >= 1, "{r:#}");
    assert_eq!(r["damaged_removed"], 0, "{r:#}");
    let v = p.wait_status(120, "recovery done, fully replicated", |v| {
        recovery_done(v) && v["replica_health"]["under_replicated"] == 0
    });
    assert_eq!(disk_state(&v, 1), "up");
    // Every recovery run since the mount (each reports its own bytes; a run that starts
    // after another finished counts from zero in the status).
    let log = std::fs::read_to_string(p.pool.join("foreshard.log")).unwrap();
    let copied: u64 = log
        .lines()
        .filter(|l| l.contains("recovery done"))
        .filter_map(|l| {
            l.split("bytes=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(log.contains("recovery done"), "{log}");
    eprintln!("disk online: {r}; recovery copied {copied} of {held} bytes the disk held");
    assert!(
        copied < held / 4,
        "recovery copied {copied} bytes of the {held} the disk held: {v:#}"
    );
    check_all(&files);
    assert_fully_replicated(&p);
    let (clean, out) = p.fsck(false);
    assert!(clean, "{out}");
    assert!(!out.contains("debris") || out.contains("0 debris"), "{out}");
}

#[test]
fn a_one_replica_pool_gets_its_data_back_from_a_disk_brought_online() {
    if !fuse_available() {
        return;
    }
    let mut p = Pool::new(2, 1, "1MiB");
    p.mount();
    let files = fill(&p, 2);
    run_ok(&["disk", "fail", p.pool.to_str().unwrap(), "0"]);
    p.wait_status(30, "disk 0 failed", |v| disk_state(v, 0) == "failed");
    drop_caches();
    let lost = files
        .keys()
        .filter(|f| std::fs::read(f).map_err(|e| e.raw_os_error()) == Err(Some(libc::EIO)))
        .count();
    assert!(lost > 0, "every file has extents on disk 0: reads fail");
    let r = online(&p, "0");
    assert!(r["reused_extents"].as_u64().unwrap() > 0, "{r:#}");
    p.wait_status(60, "recovery done", |v| {
        recovery_done(v) && disk_state(v, 0) == "up"
    });
    check_all(&files);
    let (clean, out) = p.fsck(false);
    assert!(clean, "{out}");
    // Not failed again: refused, and so is a disk that is not in the pool.
    let o = run(&["disk", "online", p.pool.to_str().unwrap(), "7"]);
    assert!(!o.status.success());
}

/// Runs this thread, and the threads it starts from now on, on its current CPU only.
fn pin_to_one_cpu() {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; both calls only read and write it.
    unsafe {
        let cpu = libc::sched_getcpu().max(0) as usize;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

/// Disks (by index in `p.disks`) holding an extent file of inode `ino`.
fn disks_of(p: &Pool, ino: u64) -> HashSet<usize> {
    let prefix = format!("{ino:x}.");
    (0..p.disks.len())
        .filter(|i| {
            std::fs::read_dir(p.disks[*i].join("extents"))
                .unwrap()
                .flat_map(|b| std::fs::read_dir(b.unwrap().path()).unwrap())
                .any(|f| {
                    f.unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with(&prefix)
                })
        })
        .collect()
}

#[test]
fn a_stalled_disk_does_not_delay_fsync_of_files_elsewhere() {
    // Probes must not fail the stalled disk during the measurement. Over the default
    // transport (FUSE over io_uring where the kernel has it) a CPU's requests go to its own
    // 2 request threads: the test runs on one CPU, and besides the stuck writer's fsync it
    // sends more requests for the stalled file (a stat, an open, a read), each of which
    // once waited on a ring thread for the stuck commit's node lock (and the open held the
    // namespace lock meanwhile), holding up every other file's fsync for 20 s. And a close
    // of the stalled file (below) holds a second ring entry of the CPU.
    let Some(p) = mounted(3, &["--probe-deadline-ms", "60000"]) else {
        return;
    };
    pin_to_one_cpu();
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    // Small files (one extent, one shard each), sorted by whether disk 0 holds them.
    let (mut on0, mut off0) = (Vec::new(), Vec::new());
    for i in 0..40 {
        let f = p.path(&format!("s{i:02}"));
        std::fs::write(&f, pattern(64 << 10, i)).unwrap();
        std::fs::File::open(&f).unwrap().sync_all().unwrap();
        let ino = std::fs::metadata(&f).unwrap().ino();
        if disks_of(&p, ino).contains(&0) {
            on0.push(f);
        } else {
            off0.push(f);
        }
    }
    assert!(!on0.is_empty() && !off0.is_empty(), "{on0:?} {off0:?}");
    p.inject(&["slow", "0", "20000"]);
    // A writer stuck on disk 0: its write and fsync wait for the disk.
    let slow = on0[0].clone();
    let stuck = std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new().write(true).open(&slow).unwrap();
        f.write_all(&pattern(64 << 10, 77)).unwrap();
        f.sync_all().unwrap();
    });
    std::thread::sleep(Duration::from_millis(500));
    // A second request that waits for disk 0 from this CPU: the flush of a close of the
    // stalled file waits for the stuck commit (so does any fd of it closed by a child that
    // another test forks and execs meanwhile). Each such request holds one of the CPU's
    // ring entries until it is answered; with no entry left, the kernel queued every other
    // request of this CPU behind them (seen in CI: 20 s).
    let slow = on0[0].clone();
    let closer = std::thread::spawn(move || drop(std::fs::File::open(&slow).unwrap()));
    std::thread::sleep(Duration::from_millis(100));
    let slow = on0[0].clone();
    let others = std::thread::spawn(move || {
        // By now disk 0 is lagging (nothing done for over a second): reads of the stalled
        // file take its other copy. (A write would wait in the kernel for the fsync.)
        std::thread::sleep(Duration::from_millis(1500));
        let t = std::time::Instant::now();
        std::fs::metadata(&slow).unwrap();
        let mut got = Vec::new();
        let mut f = std::fs::File::open(&slow).unwrap();
        std::io::Read::read_to_end(&mut f, &mut got).unwrap();
        let took = t.elapsed();
        assert!(
            got == pattern(64 << 10, 77),
            "the stalled file reads back wrong"
        );
        // Its close waits in the kernel for the fsync.
        (f, took)
    });
    // Measured all the while the writer is stuck: in its extent write, in its commit and
    // in the data barrier of its fsync (each waits for disk 0).
    let mut took = Vec::new();
    let started = std::time::Instant::now();
    while !stuck.is_finished() && started.elapsed() < Duration::from_secs(90) {
        let n = took.len();
        let f = &off0[n % off0.len()];
        let t = std::time::Instant::now();
        let mut h = std::fs::OpenOptions::new().write(true).open(f).unwrap();
        h.write_all(&pattern(64 << 10, 78 + n as u64)).unwrap();
        h.sync_all().unwrap();
        took.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    took.sort();
    let worst = took.last().copied().unwrap_or_default();
    eprintln!(
        "{} write + fsync while disk 0 stalled: median {:?}, worst {worst:?}; stalled writer \
         done after {:?}",
        took.len(),
        took.get(took.len() / 2).copied().unwrap_or_default(),
        started.elapsed()
    );
    p.inject(&["slow", "0", "0"]);
    stuck.join().unwrap();
    closer.join().unwrap();
    let (f, took) = others.join().unwrap();
    drop(f);
    assert!(
        took < Duration::from_secs(1),
        "stat, open and read of a file with a copy on the stalled disk took {took:?}"
    );
    assert!(
        worst < Duration::from_secs(1),
        "write + fsync of a file not on the stalled disk took {worst:?}"
    );
}
