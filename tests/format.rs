//! On-disk format versions: a pool made before formats were numbered (fixtures/pool-v1, made
//! by fixtures/make-pool-v1 with the binary of 869d384) is refused with advice, upgraded
//! (also after kill -9 in the middle), and a pool of a newer format is refused.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/pool-v1");

fn err(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The fixture copied into a temp dir, its disk paths pointed at the copies.
fn legacy_pool() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::Builder::new()
        .prefix("foreshard-format")
        .tempdir_in(std::env::var("FORESHARD_TEST_DIR").unwrap_or("/var/tmp".into()))
        .unwrap();
    sh_ok(
        &format!("cp -a {FIXTURE}/. {}/", t.path().display()),
        t.path(),
    );
    fs::create_dir(t.path().join("mnt")).unwrap();
    let meta = foreshard::meta::Meta::open(&t.path().join("pool/meta"), false).unwrap();
    assert_eq!(meta.format().unwrap(), 1, "the fixture is format 1");
    let mut b = meta.batch();
    for mut d in meta.disks().unwrap() {
        d.path = t.path().join(format!("disk{}", d.id)).display().to_string();
        b.put_disk(&d);
    }
    meta.write(b).unwrap();
    meta.sync_wal().unwrap();
    drop(meta);
    let pool = t.path().join("pool");
    (t, pool)
}

fn label_format(disk: &Path) -> u64 {
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(disk.join("foreshard.label")).unwrap()).unwrap();
    v["format"].as_u64().unwrap_or(1)
}

fn refused_with_upgrade_advice(pool: &Path) {
    let p = pool.to_str().unwrap();
    for cmd in ["status", "fsck", "shards"] {
        let o = run(&[cmd, p]);
        assert!(!o.status.success(), "{cmd} on a format-1 pool");
        assert!(err(&o).contains("foreshard upgrade"), "{cmd}: {}", err(&o));
    }
}

/// Mounts the upgraded pool and checks the fixture's files, symlink and xattr.
fn check_files(t: &Path, pool: &Path) {
    if !fuse_available() {
        return;
    }
    let mnt = t.join("mnt");
    run_ok(&["mount", pool.to_str().unwrap(), mnt.to_str().unwrap()]);
    let manifest = Path::new(FIXTURE).join("manifest");
    let out = sh(&format!("sha256sum -c {}", manifest.display()), &mnt);
    let link = fs::read_link(mnt.join("sub/link"));
    let x = sh(
        "python3 -c 'import os; print(os.getxattr(\"hello.txt\", \"user.note\").decode())'",
        &mnt,
    );
    run_ok(&["umount", mnt.to_str().unwrap()]);
    assert!(out.status.success(), "files differ: {}", err(&out));
    assert_eq!(link.unwrap(), Path::new("../hello.txt"));
    assert_eq!(
        String::from_utf8_lossy(&x.stdout).trim(),
        "kept",
        "{}",
        err(&x)
    );
}

fn fsck_clean(pool: &Path) {
    let o = run(&["fsck", pool.to_str().unwrap()]);
    assert!(o.status.success(), "fsck: {}", err(&o));
    assert!(err(&o).contains("clean"), "{}", err(&o));
}

#[test]
fn legacy_pool_is_refused_then_upgraded() {
    let (t, pool) = legacy_pool();
    refused_with_upgrade_advice(&pool);
    if fuse_available() {
        let o = run(&[
            "mount",
            pool.to_str().unwrap(),
            t.path().join("mnt").to_str().unwrap(),
        ]);
        assert!(!o.status.success());
        assert!(err(&o).contains("foreshard upgrade"), "mount: {}", err(&o));
    }
    let out = run_ok(&["upgrade", pool.to_str().unwrap()]);
    assert!(out.contains("from format 1 to 2"), "{out}");
    for d in ["disk0", "disk1"] {
        assert_eq!(label_format(&t.path().join(d)), 2, "{d}");
    }
    // Older pools' files are made private too.
    use std::os::unix::fs::PermissionsExt;
    let m = fs::metadata(&pool).unwrap().permissions().mode() & 0o777;
    assert_eq!(m, 0o700);
    fsck_clean(&pool);
    check_files(t.path(), &pool);
    let again = run_ok(&["upgrade", pool.to_str().unwrap()]);
    assert!(again.contains("already at format 2"), "{again}");
    fsck_clean(&pool);
}

/// Runs `upgrade` with the pause hook at `step`, waits until it pauses, and kills it -9.
fn kill_upgrade_at(pool: &Path, step: &str) {
    let mut c = Command::new(BIN)
        .args(["upgrade", pool.to_str().unwrap()])
        .env("FORESHARD_UPGRADE_PAUSE", step)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = c.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 256];
        let mut seen = String::new();
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.contains("paused") {
                let _ = tx.send(seen.clone());
            }
        }
    });
    let start = Instant::now();
    let said = rx.recv_timeout(Duration::from_secs(30));
    assert!(said.is_ok(), "upgrade never paused at {step}");
    unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
    c.wait().unwrap();
    eprintln!("killed upgrade at {step} after {:?}", start.elapsed());
}

#[test]
fn upgrade_killed_midway_is_finished_by_running_it_again() {
    for step in ["label", "config"] {
        let (t, pool) = legacy_pool();
        kill_upgrade_at(&pool, step);
        let labels: Vec<u64> = ["disk0", "disk1"]
            .iter()
            .map(|d| label_format(&t.path().join(d)))
            .collect();
        match step {
            "label" => assert_eq!(labels, [2, 1], "one label rewritten"),
            _ => assert_eq!(labels, [2, 2], "every label rewritten"),
        }
        // Still format 1: refused with the same advice until the upgrade is finished.
        refused_with_upgrade_advice(&pool);
        let out = run_ok(&["upgrade", pool.to_str().unwrap()]);
        assert!(out.contains("from format 1 to 2"), "{step}: {out}");
        fsck_clean(&pool);
        check_files(t.path(), &pool);
    }
}

#[test]
fn newer_format_is_refused_and_left_alone() {
    let t = tempfile::tempdir().unwrap();
    let pool = t.path().join("pool");
    let disks: Vec<PathBuf> = (0..2).map(|i| t.path().join(format!("d{i}"))).collect();
    for d in &disks {
        fs::create_dir(d).unwrap();
    }
    run_ok(&[
        "init",
        pool.to_str().unwrap(),
        "--disk",
        disks[0].to_str().unwrap(),
        "--disk",
        disks[1].to_str().unwrap(),
    ]);
    assert_eq!(label_format(&disks[0]), 2, "new pools are format 2");
    let p = pool.to_str().unwrap();
    // A label from a newer version (its upgrade interrupted after the labels, say).
    let label = disks[1].join("foreshard.label");
    let orig = fs::read(&label).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&orig).unwrap();
    v["format"] = 3.into();
    fs::write(&label, serde_json::to_vec(&v).unwrap()).unwrap();
    for cmd in [&["status", p][..], &["fsck", p][..], &["upgrade", p][..]] {
        let o = run(cmd);
        assert!(!o.status.success(), "{cmd:?} on a newer label");
        assert!(err(&o).contains("newer foreshard"), "{cmd:?}: {}", err(&o));
    }
    fs::write(&label, &orig).unwrap();
    run_ok(&["status", p]);
    // The metadata of a newer version.
    {
        let meta = foreshard::meta::Meta::open(&pool.join("meta"), false).unwrap();
        meta.set_format(3).unwrap();
    }
    for _ in 0..2 {
        for cmd in [
            &["status", p][..],
            &["fsck", p][..],
            &["shards", p][..],
            &["upgrade", p][..],
        ] {
            let o = run(cmd);
            assert!(!o.status.success(), "{cmd:?} on format 3");
            let e = err(&o);
            assert!(
                e.contains("format 3") && e.contains("newer foreshard"),
                "{cmd:?}: {e}"
            );
        }
    }
    if fuse_available() {
        let mnt = t.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let o = run(&["mount", p, mnt.to_str().unwrap()]);
        assert!(!o.status.success());
        assert!(err(&o).contains("newer foreshard"), "mount: {}", err(&o));
    }
}
