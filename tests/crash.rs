//! Crash test: a writer loop with fsyncs, `kill -9` of the daemon at random moments, remount:
//! every fsync'ed byte is present and fsck is clean.

mod common;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const BLOCK: usize = 48 * 1024;

fn block(i: u64) -> Vec<u8> {
    pattern(BLOCK, i + 1)
}

#[test]
fn kill_9_loses_no_fsynced_byte() {
    if !fuse_available() {
        return;
    }
    let rounds: u64 = std::env::var("FORESHARD_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut p = Pool::new(3, 2, "256KiB");
    let durable_blocks = Arc::new(AtomicU64::new(0));
    let durable_state = Arc::new(AtomicU64::new(0));
    let mut rng = 0x1234_5678u64;
    for round in 0..rounds {
        p.mount();
        // What survived the previous crash.
        let log = p.path("log");
        let have = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let d = durable_blocks.load(Ordering::SeqCst);
        assert!(
            have >= d * BLOCK as u64,
            "round {round}: log has {have} bytes, {d} blocks were fsynced"
        );
        let f = fs::File::open(&log).ok();
        for i in 0..d {
            let mut buf = vec![0u8; BLOCK];
            f.as_ref()
                .unwrap()
                .read_exact_at(&mut buf, i * BLOCK as u64)
                .unwrap();
            assert!(buf == block(i), "round {round}: fsynced block {i} damaged");
        }
        if d > 0 {
            let s: u64 = fs::read_to_string(p.path("state"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            assert!(
                s >= durable_state.load(Ordering::SeqCst),
                "round {round}: state went back"
            );
        }
        // Start where the durable part ends (rewriting a torn tail).
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (mnt, stop, db, ds) = (
                p.mnt.clone(),
                stop.clone(),
                durable_blocks.clone(),
                durable_state.clone(),
            );
            std::thread::spawn(move || {
                let run = || -> std::io::Result<()> {
                    let f = OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(mnt.join("log"))?;
                    let mut next = db.load(Ordering::SeqCst);
                    let mut st = ds.load(Ordering::SeqCst);
                    while !stop.load(Ordering::SeqCst) {
                        for _ in 0..3 {
                            f.write_all_at(&block(next), next * BLOCK as u64)?;
                            next += 1;
                        }
                        f.sync_all()?;
                        db.store(next, Ordering::SeqCst);
                        // Atomic replace: write, fsync, rename.
                        st += 1;
                        let mut t = fs::File::create(mnt.join("state.tmp"))?;
                        writeln!(t, "{st}")?;
                        t.sync_all()?;
                        fs::rename(mnt.join("state.tmp"), mnt.join("state"))?;
                        fs::File::open(&mnt)?.sync_all()?;
                        ds.store(st, Ordering::SeqCst);
                    }
                    Ok(())
                };
                let _ = run();
            })
        };
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(100 + rng % 400));
        p.crash();
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        let (clean, out) = p.fsck(false);
        assert!(clean, "round {round}: fsck after crash: {out}");
    }
    assert!(
        durable_blocks.load(Ordering::SeqCst) > rounds,
        "the writer made progress"
    );
    p.mount();
    let (clean, out) = p.fsck(false);
    assert!(clean, "{out}");
}
