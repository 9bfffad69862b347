//! FUSE integration tests: mount a temporary pool and use it with std::fs and shell tools.

mod common;

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn mounted(disks: usize, replicas: u32) -> Option<Pool> {
    if !fuse_available() {
        return None;
    }
    let mut p = Pool::new(disks, replicas, "1MiB");
    p.mount();
    Some(p)
}

#[test]
fn files_dirs_links_and_attributes() {
    let Some(p) = mounted(3, 2) else { return };
    let f = p.path("hello.txt");
    fs::write(&f, b"hello world").unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"hello world");
    // O_APPEND
    let mut a = OpenOptions::new().append(true).open(&f).unwrap();
    a.write_all(b"!!").unwrap();
    // ioctl: a file is not a terminal (isatty on every Python open), and says so quietly.
    use std::os::fd::AsRawFd;
    // SAFETY: valid open descriptor.
    assert_eq!(unsafe { libc::isatty(a.as_raw_fd()) }, 0);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENOTTY)
    );
    drop(a);
    assert_eq!(fs::read_to_string(&f).unwrap(), "hello world!!");
    let log = fs::read_to_string(p.pool.join("foreshard.log")).unwrap_or_default();
    assert!(!log.contains("Not Implemented"), "{log}");
    // mkdir / rmdir ENOTEMPTY
    fs::create_dir(p.path("d")).unwrap();
    fs::write(p.path("d/x"), b"x").unwrap();
    assert_eq!(
        fs::remove_dir(p.path("d")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    // rename: replace, across dirs, directory rename
    fs::write(p.path("d/y"), b"y").unwrap();
    fs::rename(p.path("d/x"), p.path("d/y")).unwrap();
    assert_eq!(fs::read(p.path("d/y")).unwrap(), b"x");
    fs::create_dir(p.path("e")).unwrap();
    fs::rename(p.path("d/y"), p.path("e/z")).unwrap();
    fs::rename(p.path("d"), p.path("e/d2")).unwrap();
    assert!(p.path("e/d2").is_dir());
    assert_eq!(fs::metadata(p.path("e")).unwrap().nlink(), 3);
    // hard links
    fs::hard_link(p.path("e/z"), p.path("z2")).unwrap();
    assert_eq!(fs::metadata(p.path("z2")).unwrap().nlink(), 2);
    fs::remove_file(p.path("e/z")).unwrap();
    assert_eq!(fs::metadata(p.path("z2")).unwrap().nlink(), 1);
    // symlinks
    std::os::unix::fs::symlink("hello.txt", p.path("ln")).unwrap();
    assert_eq!(
        fs::read_link(p.path("ln")).unwrap().to_str().unwrap(),
        "hello.txt"
    );
    assert_eq!(fs::read(p.path("ln")).unwrap(), b"hello world!!");
    // chmod / chown / utimens and ctime rules
    let before = fs::metadata(&f).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    let m = fs::metadata(&f).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600);
    assert!(
        m.ctime_nsec() != before.ctime_nsec() || m.ctime() != before.ctime(),
        "chmod changes ctime"
    );
    assert_eq!(
        (m.mtime(), m.mtime_nsec()),
        (before.mtime(), before.mtime_nsec()),
        "chmod keeps mtime"
    );
    std::os::unix::fs::chown(&f, Some(1234), Some(5678)).unwrap();
    let m = fs::metadata(&f).unwrap();
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    let times = [
        libc::timespec {
            tv_sec: 1_000_000,
            tv_nsec: 5,
        },
        libc::timespec {
            tv_sec: 2_000_000,
            tv_nsec: 7,
        },
    ];
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, cstr(&f).as_ptr(), times.as_ptr(), 0) },
        0
    );
    let m = fs::metadata(&f).unwrap();
    assert_eq!(
        (m.atime(), m.atime_nsec(), m.mtime(), m.mtime_nsec()),
        (1_000_000, 5, 2_000_000, 7)
    );
    // xattrs
    let name = CString::new("user.color").unwrap();
    xattr_set(&f, "user.color", b"blue");
    let mut buf = [0u8; 16];
    let n = unsafe {
        libc::getxattr(
            cstr(&f).as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            16,
        )
    };
    assert_eq!(&buf[..n as usize], b"blue");
    // statfs: capacity of 3 disks divided by 2 replicas
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(cstr(&p.mnt).as_ptr(), &mut st) }, 0);
    let mut raw: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::statvfs(cstr(&p.disks[0]).as_ptr(), &mut raw) },
        0
    );
    let ours = st.f_blocks * st.f_frsize;
    let want = raw.f_blocks * raw.f_frsize * 3 / 2;
    assert!(ours.abs_diff(want) < want / 100, "statfs {ours} vs {want}");
    let (clean, out) = p.fsck(false);
    assert!(clean, "{out}");
}

#[test]
fn sparse_large_truncate_fallocate_unlink_open() {
    let Some(p) = mounted(2, 2) else { return };
    let f = p.path("sparse");
    let mut h = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&f)
        .unwrap();
    let far = 5u64 << 30;
    h.seek(SeekFrom::Start(far)).unwrap();
    h.write_all(b"tail").unwrap();
    h.sync_all().unwrap();
    let m = fs::metadata(&f).unwrap();
    assert_eq!(m.len(), far + 4);
    assert!(
        m.blocks() * 512 < 4 << 20,
        "holes use no disk: {} blocks",
        m.blocks()
    );
    let used: u64 = p.json(&["status"])["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["used_bytes"].as_u64().unwrap())
        .sum();
    assert!(
        used <= 2 * (1 << 20),
        "disks hold only the written extent: {used}"
    );
    let mut b = [1u8; 8];
    h.seek(SeekFrom::Start(far - 4)).unwrap();
    h.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"\0\0\0\0tail");
    // truncate shrink and grow
    h.set_len(10).unwrap();
    h.set_len(3 << 20).unwrap();
    let all = fs::read(&f).unwrap();
    assert_eq!(all.len(), 3 << 20);
    assert!(all.iter().all(|x| *x == 0));
    // fallocate mode 0 extends
    assert_eq!(
        unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&h), 0, 0, 5 << 20) },
        0
    );
    assert_eq!(fs::metadata(&f).unwrap().len(), 5 << 20);
    // unlink while open: still readable through the handle
    h.seek(SeekFrom::Start(0)).unwrap();
    h.write_all(b"kept").unwrap();
    fs::remove_file(&f).unwrap();
    assert!(!f.exists());
    let mut b = [0u8; 4];
    h.seek(SeekFrom::Start(0)).unwrap();
    h.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"kept");
    drop(h);
    let (clean, out) = p.fsck(false);
    assert!(clean, "{out}");
}

#[test]
fn big_file_roundtrip_and_fsync() {
    let Some(p) = mounted(4, 2) else { return };
    let data = pattern(37 << 20, 1);
    let f = p.path("big");
    let mut h = File::create(&f).unwrap();
    for c in data.chunks(1 << 20) {
        h.write_all(c).unwrap();
    }
    h.sync_all().unwrap();
    drop(h);
    assert_eq!(blake3::hash(&fs::read(&f).unwrap()), blake3::hash(&data));
    let s = p.json(&["shards"]);
    let n: usize = s["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sh| sh["extents"].as_array().unwrap().len())
        .sum();
    assert_eq!(n, 37);
    assert_eq!(s["extent_size_bytes"], 1 << 20);
    let e = &s["shards"]
        .as_array()
        .unwrap()
        .iter()
        .find(|sh| !sh["extents"].as_array().unwrap().is_empty())
        .unwrap()["extents"][0];
    assert_eq!(e["path"], "/big");
    let st = p.json(&["status"]);
    let reps: u64 = st["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["extents"].as_u64().unwrap())
        .sum();
    assert_eq!(reps, 74, "37 extents x 2 replicas");
}

#[test]
fn shared_writable_mmap() {
    let Some(p) = mounted(2, 1) else { return };
    let f = p.path("mm");
    let h = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&f)
        .unwrap();
    h.set_len(8192).unwrap();
    unsafe {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&h);
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        assert_ne!(ptr, libc::MAP_FAILED);
        let s = std::slice::from_raw_parts_mut(ptr as *mut u8, 8192);
        s[100..105].copy_from_slice(b"mmap!");
        assert_eq!(libc::msync(ptr, 8192, libc::MS_SYNC), 0);
        libc::munmap(ptr, 8192);
    }
    drop(h);
    assert_eq!(&fs::read(&f).unwrap()[100..105], b"mmap!");
}

#[test]
fn readdir_while_changing() {
    let Some(p) = mounted(2, 1) else { return };
    fs::create_dir(p.path("many")).unwrap();
    for i in 0..2000 {
        File::create(p.path(&format!("many/f{i:05}"))).unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    let mut it = fs::read_dir(p.path("many")).unwrap();
    for _ in 0..700 {
        let e = it.next().unwrap().unwrap();
        assert!(seen.insert(e.file_name()));
    }
    // Remove some that were listed, add new ones; the rest must still come exactly once.
    let gone: Vec<_> = seen.iter().take(300).cloned().collect();
    for g in &gone {
        fs::remove_file(p.path("many").join(g)).unwrap();
    }
    for i in 0..100 {
        File::create(p.path(&format!("many/new{i}"))).unwrap();
    }
    for e in it {
        let name = e.unwrap().file_name();
        assert!(seen.insert(name.clone()), "{name:?} listed twice");
    }
    for i in 0..2000 {
        let n = std::ffi::OsString::from(format!("f{i:05}"));
        assert!(seen.contains(&n), "{n:?} never listed");
    }
}

#[test]
fn permissions_are_enforced() {
    let Some(p) = mounted(2, 1) else { return };
    fs::create_dir(p.path("private")).unwrap();
    fs::set_permissions(p.path("private"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(p.path("ro.txt"), b"x").unwrap();
    fs::set_permissions(p.path("ro.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&p.mnt, fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |cmd: &str| {
        sh(
            &format!("setpriv --reuid=65534 --regid=65534 --clear-groups bash -c '{cmd}'"),
            Path::new("/"),
        )
    };
    let mnt = p.mnt.display();
    assert!(as_nobody(&format!("cat {mnt}/ro.txt")).status.success());
    assert!(
        !as_nobody(&format!("echo y >> {mnt}/ro.txt"))
            .status
            .success(),
        "write to 0644 root file"
    );
    assert!(
        !as_nobody(&format!("ls {mnt}/private")).status.success(),
        "list 0700 root dir"
    );
    assert!(
        !as_nobody(&format!("touch {mnt}/new")).status.success(),
        "create in 0755 root dir"
    );
}

#[test]
fn shell_tools_cp_tar_rsync_git_sqlite() {
    let Some(p) = mounted(3, 2) else { return };
    let src = p.tmp.path().join("src");
    fs::create_dir_all(src.join("sub/deeper")).unwrap();
    for i in 0..50 {
        fs::write(
            src.join(format!("sub/f{i}")),
            pattern(i * 3000 + 1, i as u64),
        )
        .unwrap();
    }
    fs::write(src.join("sub/deeper/big"), pattern(3 << 20, 99)).unwrap();
    std::os::unix::fs::symlink("f1", src.join("sub/link")).unwrap();
    let mnt = p.mnt.clone();
    let m = mnt.display();
    let s = src.display();
    sh_ok(
        &format!("cp -a {s} {m}/cp && diff -r {s} {m}/cp"),
        Path::new("/"),
    );
    sh_ok(&format!("tar -C {s} -cf {s}.tar . && mkdir {m}/tar && tar -C {m}/tar -xf {s}.tar && diff -r {s} {m}/tar"), Path::new("/"));
    sh_ok(
        &format!("rsync -a {s}/ {m}/rsync/ && diff -r {s} {m}/rsync"),
        Path::new("/"),
    );
    // git: a local repository cloned onto the mount, then a commit there.
    sh_ok(
        &format!(
            "git init -q {s}.git && cd {s}.git && cp -a {s}/sub . && git add -A && git -c user.email=t@t -c user.name=t commit -qm init && \
             git clone -q {s}.git {m}/clone && cd {m}/clone && git fsck --full && echo more > new && git add new && \
             git -c user.email=t@t -c user.name=t commit -qm second && git log --oneline | wc -l"
        ),
        Path::new("/"),
    );
    if sh("command -v sqlite3", Path::new("/")).status.success() {
        let out = sh_ok(
            &format!(
                "sqlite3 {m}/db.sqlite 'create table t(a integer primary key, b text); \
                 with recursive c(x) as (select 1 union all select x+1 from c where x<20000) insert into t(b) select hex(randomblob(50)) from c; \
                 pragma integrity_check; select count(*) from t;'"
            ),
            Path::new("/"),
        );
        assert_eq!(out.trim(), "ok\n20000");
    } else {
        eprintln!("SKIP sqlite3 part: sqlite3 not installed");
    }
    let (clean, out) = p.fsck(false);
    assert!(clean, "{out}");
}

#[test]
fn cargo_build_on_the_mount() {
    let Some(p) = mounted(2, 2) else { return };
    let m = p.mnt.display();
    let out = sh_ok(
        &format!("cd {m} && cargo new -q --vcs none hello && cd hello && CARGO_TARGET_DIR=target cargo build -q --offline && ./target/debug/hello"),
        Path::new("/"),
    );
    assert_eq!(out.trim(), "Hello, world!");
}

#[test]
fn corrupted_replicas_are_bypassed_and_repaired() {
    if !fuse_available() {
        return;
    }
    let mut p = Pool::new(3, 2, "1MiB");
    p.mount();
    let mut files = Vec::new();
    for i in 0..8 {
        let d = pattern((i + 1) * 700_000, i as u64 + 7);
        fs::write(p.path(&format!("f{i}")), &d).unwrap();
        files.push(d);
    }
    p.umount();
    // Damage every replica file on disk 0 (the other copy of each extent is elsewhere):
    // flipped bytes, a truncated file, a deleted file.
    let victims = walk(&p.disks[0].join("extents"));
    assert!(victims.len() >= 4, "disk 0 holds replicas");
    for (k, e) in victims.iter().enumerate() {
        match k % 3 {
            0 => {
                let mut b = fs::read(e).unwrap();
                let at = b.len() / 2;
                b[at] ^= 0x5a;
                fs::write(e, b).unwrap();
            }
            1 => fs::write(e, b"short").unwrap(),
            _ => fs::remove_file(e).unwrap(),
        }
    }
    let (clean, out) = p.fsck(false);
    assert!(!clean, "fsck sees the damage: {out}");
    p.mount();
    for (i, d) in files.iter().enumerate() {
        assert_eq!(
            &fs::read(p.path(&format!("f{i}"))).unwrap(),
            d,
            "f{i}: reads return good data"
        );
    }
    let st = p.json(&["status"]);
    assert!(
        st["stats"]["replica_read_failures"].as_u64().unwrap() > 0,
        "bad reads are counted"
    );
    p.umount();
    let (clean, out) = p.fsck(true);
    assert!(clean, "fsck --repair: {out}");
    let (clean, out) = p.fsck(false);
    assert!(clean, "after repair: {out}");
    for e in &victims {
        assert!(e.exists(), "{} restored", e.display());
    }
}

pub fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn vanished_disk_reads_and_writes_continue() {
    let Some(mut p) = mounted(3, 2) else { return };
    let mut files = Vec::new();
    for i in 0..6 {
        let d = pattern(2_500_000 + i * 1000, 40 + i as u64);
        fs::write(p.path(&format!("v{i}")), &d).unwrap();
        files.push(d);
    }
    // The disk directory disappears under the running daemon (as `inject yank` will do).
    let gone = p.tmp.path().join("disk0.gone");
    fs::rename(&p.disks[0], &gone).unwrap();
    sh_ok("sync; echo 3 > /proc/sys/vm/drop_caches", Path::new("/"));
    for (i, d) in files.iter().enumerate() {
        assert!(
            &fs::read(p.path(&format!("v{i}"))).unwrap() == d,
            "v{i} readable without disk 0"
        );
    }
    let fresh = pattern(16_000_000, 77);
    fs::write(p.path("after"), &fresh).unwrap();
    assert!(fs::read(p.path("after")).unwrap() == fresh);
    assert!(
        !p.disks[0].exists(),
        "the vanished disk directory is not recreated"
    );
    // The monitor fails the disk and recovery rebuilds its replicas on the other two.
    let st = p.wait_status(60, "recovery done", |v| {
        v["disks"][0]["state"] == "failed" && v["recovery"]["state"] == "done"
    });
    assert_eq!(st["replica_health"]["under_replicated"], 0, "{st:#}");
    assert!(!p.disks[0].exists(), "not recreated by recovery either");
    p.umount();
    fs::rename(&gone, &p.disks[0]).unwrap();
}

#[test]
fn fsck_of_a_busy_mounted_pool_reports_no_false_damage() {
    let Some(p) = mounted(3, 2) else { return };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..2u64)
        .map(|t| {
            let (mnt, stop) = (p.mnt.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let d = pattern(200_000 + (i as usize % 7) * 300_000, i);
                    fs::write(mnt.join(format!("w{t}-{}", i % 50)), &d).unwrap();
                    i += 1;
                }
                i
            })
        })
        .collect();
    for _ in 0..10 {
        let (clean, out) = p.fsck(false);
        assert!(clean, "fsck during writes: {out}");
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in writers {
        assert!(w.join().unwrap() > 0);
    }
    let (clean, out) = p.fsck(true);
    assert!(clean, "{out}");
}

/// Voluntary context switches of the daemon's io_uring queue threads: each request a ring
/// thread serves ends with it waiting on its ring again.
fn ring_thread_switches(pid: i32) -> u64 {
    let mut n = 0;
    for t in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("fuse-ring-") {
            continue;
        }
        let st = fs::read_to_string(t.path().join("status")).unwrap_or_default();
        n += st
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap());
    }
    n
}

fn transport(p: &Pool) -> (String, u64) {
    let s: serde_json::Value =
        serde_json::from_str(&run_ok(&["status", p.pool.to_str().unwrap(), "--json"])).unwrap();
    (
        s["fuse"]["transport"].as_str().unwrap().to_string(),
        s["fuse"]["ring_threads"].as_u64().unwrap(),
    )
}

/// Creates, writes, renames, links, reads back and removes `n` files with xattrs in `dir`.
fn churn(dir: &Path, n: usize) {
    fs::create_dir(dir).unwrap();
    for i in 0..n {
        let f = dir.join(format!("f{i}"));
        let data: Vec<u8> = (0..4096 + i * 37).map(|b| (b * 7 + i) as u8).collect();
        fs::write(&f, &data).unwrap();
        xattr_set(&f, "user.n", format!("{i}").as_bytes());
        let g = dir.join(format!("g{i}"));
        fs::rename(&f, &g).unwrap();
        fs::hard_link(&g, &f).unwrap();
        assert_eq!(fs::metadata(&g).unwrap().nlink(), 2);
        assert_eq!(fs::read(&f).unwrap(), data);
        fs::remove_file(&g).unwrap();
    }
    let listed = fs::read_dir(dir).unwrap().count();
    assert_eq!(listed, n);
    for i in 0..n {
        fs::remove_file(dir.join(format!("f{i}"))).unwrap();
    }
    fs::remove_dir(dir).unwrap();
}

fn xattr_set(p: &Path, name: &str, v: &[u8]) {
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and buffer.
    let r = unsafe { libc::setxattr(cstr(p).as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    assert_eq!(
        r,
        0,
        "setxattr {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

#[test]
fn requests_go_over_io_uring_when_the_kernel_offers_it() {
    if !fuse_available() {
        return;
    }
    let offered = fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .is_ok_and(|s| s.trim() == "Y");
    let mut p = Pool::new(3, 2, "64KiB");

    // Explicitly off: everything through /dev/fuse, no ring threads.
    p.mount_with(&["--io-uring", "off"]);
    assert_eq!(transport(&p), ("/dev/fuse".to_string(), 0));
    let pid = p.daemon_pid().unwrap();
    churn(&p.mnt.join("off"), 50);
    assert_eq!(ring_thread_switches(pid), 0);
    p.umount();

    p.mount_with(&["--io-uring", "auto"]);
    let (t, threads) = transport(&p);
    if !offered {
        eprintln!("SKIP (io_uring part): /sys/module/fuse/parameters/enable_uring is not Y");
        assert_eq!(
            (t.as_str(), threads),
            ("/dev/fuse", 0),
            "falls back to /dev/fuse"
        );
        return;
    }
    let cpus = fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    let possible = cpus
        .trim()
        .split(',')
        .map(|r| r.rsplit('-').next().unwrap().parse::<u64>().unwrap() + 1)
        .max()
        .unwrap();
    assert_eq!(t, "io_uring");
    assert_eq!(threads, 2 * possible, "two ring threads per possible CPU");
    let pid = p.daemon_pid().unwrap();
    let before = ring_thread_switches(pid);
    churn(&p.mnt.join("on"), 200);
    // 200 files x (create, write, setxattr, rename, link, stat, read, unlink x2, ...) requests.
    let served = ring_thread_switches(pid) - before;
    assert!(served >= 1000, "ring threads served only {served} requests");
    // A large write and read-back, so whole-extent payloads cross the ring both ways.
    let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    fs::write(p.mnt.join("big"), &big).unwrap();
    File::open(p.mnt.join("big")).unwrap().sync_all().unwrap();
    p.umount();
    p.mount_with(&["--io-uring", "auto"]);
    assert_eq!(fs::read(p.mnt.join("big")).unwrap(), big);
    p.umount();

    // A CPU queue whose threads cannot start: the kernel would hold every request back
    // waiting for the ring; the daemon must turn io_uring off and serve through /dev/fuse.
    let o = std::process::Command::new(BIN)
        .args(["mount", p.pool.to_str().unwrap(), p.mnt.to_str().unwrap()])
        .args(["--io-uring", "auto"])
        .env("FUSER_RING_FAIL_QUEUE", "0")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    p.mounted = true;
    // Fails fast (instead of hanging the suite) if requests are stuck.
    sh_ok("timeout 30 ls -l big", &p.mnt);
    assert_eq!(transport(&p), ("/dev/fuse".to_string(), 0));
    churn(&p.mnt.join("fallback"), 20);
    assert_eq!(fs::read(p.mnt.join("big")).unwrap(), big);
    p.umount();
    let log = fs::read_to_string(p.pool.join("foreshard.log")).unwrap();
    assert!(log.contains("injected failure"), "the fallback is logged");
    let fsck = run(&["fsck", p.pool.to_str().unwrap()]);
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

fn is_mounted(mnt: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let want = mnt.to_str().unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == Some(want))
}

#[test]
fn sigterm_on_a_busy_mount_detaches_it_and_exits_after_the_last_close() {
    let Some(mut p) = mounted(2, 1) else { return };
    let pid = p.daemon_pid().unwrap();
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 253) as u8).collect();
    let mut f = File::create(p.path("busy")).unwrap();
    f.write_all(&chunk).unwrap();
    // SAFETY: plain kill(2).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let start = std::time::Instant::now();
    while is_mounted(&p.mnt) {
        assert!(
            start.elapsed().as_secs() < 10,
            "still mounted 10 s after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Detached, not gone: the open file keeps working and the daemon keeps serving it.
    // SAFETY: signal 0 only checks that the process exists.
    assert_eq!(
        unsafe { libc::kill(pid, 0) },
        0,
        "the daemon waits for the last close"
    );
    f.write_all(&chunk).unwrap();
    f.sync_all().unwrap();
    drop(f);
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(
            start.elapsed().as_secs() < 60,
            "daemon still running after the last close"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    p.mounted = false;
    p.mount();
    let got = fs::read(p.path("busy")).unwrap();
    assert_eq!(got.len(), 2 << 20);
    assert!(got[..1 << 20] == chunk[..] && got[1 << 20..] == chunk[..]);
    p.umount();
    let fsck = run(&["fsck", p.pool.to_str().unwrap()]);
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

#[test]
fn append_follows_fcntl_and_rename_over_an_empty_dir_counts_links() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let Some(p) = mounted(2, 1) else { return };
    let f = p.path("fcntl");
    fs::write(&f, b"0123456789").unwrap();
    let a = OpenOptions::new().append(true).read(true).open(&f).unwrap();
    // SAFETY: valid open descriptor; clears O_APPEND.
    assert_eq!(unsafe { libc::fcntl(a.as_raw_fd(), libc::F_SETFL, 0) }, 0);
    a.write_at(b"XY", 0).unwrap();
    drop(a);
    assert_eq!(fs::read(&f).unwrap(), b"XY23456789");
    // mv -T a b: a directory over an empty one in the same parent.
    fs::create_dir(p.path("top")).unwrap();
    fs::create_dir(p.path("top/a")).unwrap();
    fs::create_dir(p.path("top/b")).unwrap();
    assert_eq!(fs::metadata(p.path("top")).unwrap().nlink(), 4);
    fs::rename(p.path("top/a"), p.path("top/b")).unwrap();
    assert_eq!(fs::metadata(p.path("top")).unwrap().nlink(), 3);
    let mut p = p;
    p.umount();
    let (clean, out) = p.fsck(false);
    assert!(clean, "{out}");
}

/// The `--json` commands and fields docs/json-api.md documents: one `## \`foreshard ...\``
/// heading per command, then a table whose first column is a field path.
fn documented_json() -> Vec<(Vec<String>, Vec<String>)> {
    let doc = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/json-api.md")).unwrap();
    let mut out: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    for line in doc.lines() {
        if let Some(cmd) = line.strip_prefix("## `foreshard ") {
            let args = cmd
                .trim_end_matches('`')
                .split(' ')
                .map(String::from)
                .collect();
            out.push((args, Vec::new()));
        } else if let (Some(field), Some(last)) = (line.strip_prefix("| `"), out.last_mut()) {
            last.1.push(field.split('`').next().unwrap().to_string());
        }
    }
    out
}

/// Whether `path` (`a.b`, `a[].b`: in every element of `a`, which must not be empty) is in `v`.
fn has_field(v: &serde_json::Value, path: &str) -> bool {
    let (head, rest) = match path.split_once('.') {
        Some((h, r)) => (h, Some(r)),
        None => (path, None),
    };
    let (key, each) = match head.strip_suffix("[]") {
        Some(k) => (k, true),
        None => (head, false),
    };
    let Some(x) = v.as_object().and_then(|o| o.get(key)) else {
        return false;
    };
    match (rest, each) {
        (None, false) => true,
        (None, true) => x.is_array(),
        (Some(r), false) => has_field(x, r),
        (Some(r), true) => x
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|e| has_field(e, r))),
    }
}

#[test]
fn json_api_documented_fields_are_present() {
    let Some(p) = mounted(3, 2) else { return };
    for i in 0..4 {
        fs::write(p.path(&format!("j{i}")), pattern(300 << 10, i)).unwrap();
        assert_eq!(
            fs::read(p.path(&format!("j{i}"))).unwrap(),
            pattern(300 << 10, i)
        );
    }
    // The risk service's first round fills the per-disk risks.
    p.wait_status(60, "risk for every disk", |v| {
        v["risk"]["disks"].as_array().is_some_and(|d| d.len() == 3)
    });
    let sections = documented_json();
    assert!(
        sections.len() >= 7,
        "docs/json-api.md lists {} commands",
        sections.len()
    );
    let pool = p.pool.to_str().unwrap();
    for (cmd, fields) in sections {
        assert!(!fields.is_empty(), "{cmd:?} documents no field");
        let args: Vec<&str> = cmd
            .iter()
            .map(|a| if a == "POOL" { pool } else { a.as_str() })
            .collect();
        let v: serde_json::Value = serde_json::from_str(&run_ok(&args)).unwrap();
        for f in &fields {
            assert!(
                has_field(&v, f),
                "`foreshard {}` lacks {f}: {v:#}",
                cmd.join(" ")
            );
        }
    }
}
