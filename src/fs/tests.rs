use super::*;
use crate::meta::ROOT_INO;
use crate::pool::create_temp;

const ES: u64 = 64 * 1024;

fn setup(disks: usize, replicas: u32) -> (tempfile::TempDir, crate::pool::Pool, Arc<Fs>) {
    let t = tempfile::tempdir().unwrap();
    let (p, f) = create_temp(t.path(), disks, replicas, ES).unwrap();
    (t, p, f)
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn extent_files(p: &crate::pool::Pool, fs: &Fs) -> usize {
    fs.drain_reaper();
    p.store
        .disks()
        .iter()
        .map(|d| d.scan().unwrap().len())
        .sum()
}

#[test]
fn write_read_across_extents_with_replicas() {
    let (_t, p, fs) = setup(3, 2);
    let (a, fh) = fs
        .create(Ctx::root(), ROOT_INO, b"f", 0o644, 0o022, libc::O_RDWR)
        .unwrap();
    assert_eq!(a.perm, 0o644);
    let data = pattern(3 * ES as usize + 123, 7);
    assert_eq!(fs.write(fh, 0, &data).unwrap(), data.len());
    assert_eq!(
        fs.read(a.ino, 0, data.len() as u32 + 10).unwrap(),
        data,
        "reads see buffered data"
    );
    fs.release(fh).unwrap();
    assert_eq!(extent_files(&p, &fs), 4 * 2, "4 extents x 2 replicas");
    let fh = fs.open(a.ino, libc::O_RDONLY).unwrap();
    assert_eq!(
        fs.read(a.ino, ES - 10, 30).unwrap(),
        &data[ES as usize - 10..ES as usize + 20]
    );
    assert_eq!(fs.getattr(a.ino).unwrap().size, data.len() as u64);
    fs.release(fh).unwrap();
}

#[test]
fn sparse_holes_read_zero_and_use_no_disk() {
    let (_t, p, fs) = setup(2, 2);
    let (a, fh) = fs
        .create(Ctx::root(), ROOT_INO, b"s", 0o644, 0, libc::O_RDWR)
        .unwrap();
    let far = 5 * (1u64 << 30); // past 4 GiB
    fs.write(fh, far, b"end").unwrap();
    fs.flush(a.ino).unwrap();
    assert_eq!(fs.getattr(a.ino).unwrap().size, far + 3);
    assert_eq!(fs.read(a.ino, far - 2, 5).unwrap(), b"\0\0end");
    assert_eq!(fs.read(a.ino, 12345, 100).unwrap(), vec![0u8; 100]);
    assert_eq!(
        extent_files(&p, &fs),
        2,
        "only the written extent is stored (x2 replicas)"
    );
    assert!(fs.getattr(a.ino).unwrap().blocks <= 16);
    fs.release(fh).unwrap();
}

#[test]
fn truncate_shrink_then_grow_reads_zeros() {
    let (_t, _p, fs) = setup(2, 1);
    let (a, fh) = fs
        .create(Ctx::root(), ROOT_INO, b"t", 0o644, 0, libc::O_RDWR)
        .unwrap();
    let data = pattern(2 * ES as usize, 1);
    fs.write(fh, 0, &data).unwrap();
    fs.flush(a.ino).unwrap();
    let sa = |size| SetAttr {
        size: Some(size),
        ..Default::default()
    };
    fs.setattr(Ctx::root(), a.ino, &sa(100)).unwrap();
    fs.setattr(Ctx::root(), a.ino, &sa(ES + 50)).unwrap();
    let got = fs.read(a.ino, 0, (ES + 50) as u32).unwrap();
    assert_eq!(&got[..100], &data[..100]);
    assert!(
        got[100..].iter().all(|b| *b == 0),
        "no stale bytes after shrink+grow"
    );
    fs.release(fh).unwrap();
}

#[test]
fn append_uses_current_size() {
    let (_t, _p, fs) = setup(2, 1);
    let (a, fh) = fs
        .create(Ctx::root(), ROOT_INO, b"log", 0o644, 0, libc::O_RDWR)
        .unwrap();
    fs.write(fh, 0, b"hello ").unwrap();
    let ah = fs.open(a.ino, libc::O_WRONLY | libc::O_APPEND).unwrap();
    fs.write(ah, 0, b"world").unwrap();
    assert_eq!(fs.read(a.ino, 0, 100).unwrap(), b"hello world");
    fs.release(ah).unwrap();
    fs.release(fh).unwrap();
}

#[test]
fn unlink_while_open_keeps_data_until_release() {
    let (_t, p, fs) = setup(2, 2);
    let (a, fh) = fs
        .create(Ctx::root(), ROOT_INO, b"u", 0o644, 0, libc::O_RDWR)
        .unwrap();
    fs.write(fh, 0, b"still here").unwrap();
    fs.flush(a.ino).unwrap();
    fs.unlink(ROOT_INO, b"u").unwrap();
    assert_eq!(fs.lookup(ROOT_INO, b"u"), Err(Errno::ENOENT));
    assert_eq!(fs.read(a.ino, 0, 100).unwrap(), b"still here");
    assert_eq!(fs.getattr(a.ino).unwrap().nlink, 0);
    fs.release(fh).unwrap();
    assert_eq!(fs.getattr(a.ino), Err(Errno::ENOENT));
    assert_eq!(extent_files(&p, &fs), 0);
    assert!(crate::admin::fsck(&fs, false).unwrap().clean);
}

#[test]
fn rename_rules() {
    let (_t, _p, fs) = setup(2, 1);
    let c = Ctx::root();
    let d1 = fs.mkdir(c, ROOT_INO, b"d1", 0o755, 0).unwrap();
    let d2 = fs.mkdir(c, ROOT_INO, b"d2", 0o755, 0).unwrap();
    let sub = fs.mkdir(c, d1.ino, b"sub", 0o755, 0).unwrap();
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 4);
    assert_eq!(
        fs.rename(ROOT_INO, b"d1", sub.ino, b"x", 0),
        Err(Errno::EINVAL),
        "into own subtree"
    );
    assert_eq!(fs.rmdir(ROOT_INO, b"d1"), Err(Errno::ENOTEMPTY));
    fs.rename(d1.ino, b"sub", d2.ino, b"sub2", 0).unwrap();
    assert_eq!(fs.getattr(d1.ino).unwrap().nlink, 2);
    assert_eq!(fs.getattr(d2.ino).unwrap().nlink, 3);
    assert_eq!(fs.lookup(sub.ino, b"..").unwrap().ino, d2.ino);
    // Replace an existing file atomically; the old target's inode goes away.
    let (a, fh) = fs
        .create(c, ROOT_INO, b"a", 0o644, 0, libc::O_RDWR)
        .unwrap();
    fs.write(fh, 0, b"A").unwrap();
    fs.release(fh).unwrap();
    let (b, fh) = fs
        .create(c, ROOT_INO, b"b", 0o644, 0, libc::O_RDWR)
        .unwrap();
    fs.release(fh).unwrap();
    fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0).unwrap();
    assert_eq!(fs.lookup(ROOT_INO, b"b").unwrap().ino, a.ino);
    assert_eq!(fs.getattr(b.ino), Err(Errno::ENOENT));
    assert_eq!(
        fs.rename(ROOT_INO, b"b", ROOT_INO, b"d2", 0),
        Err(Errno::EISDIR)
    );
    assert_eq!(
        fs.rename(ROOT_INO, b"d1", ROOT_INO, b"d2", 0),
        Err(Errno::ENOTEMPTY)
    );
    assert_eq!(
        fs.rename(ROOT_INO, b"b", ROOT_INO, b"d1", libc::RENAME_NOREPLACE),
        Err(Errno::EEXIST)
    );
    fs.rename(ROOT_INO, b"b", ROOT_INO, b"d1", libc::RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(fs.lookup(ROOT_INO, b"d1").unwrap().ino, a.ino);
    assert!(crate::admin::fsck(&fs, false).unwrap().clean);
}

#[test]
fn hard_links_count() {
    let (_t, _p, fs) = setup(2, 1);
    let c = Ctx::root();
    let (a, fh) = fs
        .create(c, ROOT_INO, b"a", 0o644, 0, libc::O_RDWR)
        .unwrap();
    fs.release(fh).unwrap();
    let d = fs.mkdir(c, ROOT_INO, b"d", 0o755, 0).unwrap();
    assert_eq!(fs.link(a.ino, d.ino, b"l").unwrap().nlink, 2);
    assert_eq!(fs.link(d.ino, ROOT_INO, b"dl"), Err(Errno::EPERM));
    fs.unlink(ROOT_INO, b"a").unwrap();
    assert_eq!(fs.getattr(a.ino).unwrap().nlink, 1);
    fs.unlink(d.ino, b"l").unwrap();
    assert_eq!(fs.getattr(a.ino), Err(Errno::ENOENT));
}

#[test]
fn corrupt_replica_is_bypassed_and_repaired() {
    let (_t, p, fs) = setup(2, 2);
    let (a, fh) = fs
        .create(Ctx::root(), ROOT_INO, b"c", 0o644, 0, libc::O_RDWR)
        .unwrap();
    let data = pattern(ES as usize, 3);
    fs.write(fh, 0, &data).unwrap();
    fs.release(fh).unwrap();
    // Flip a byte in a different block of each copy: no replica is whole, every block has
    // a good copy somewhere. Reads stay correct and both copies get repaired.
    let mut paths = Vec::new();
    for (victim, at) in [(0u32, 1000usize), (1, 40_000)] {
        let d = p.store.disk(victim).unwrap();
        let (id, _) = d.scan().unwrap()[0];
        let path = d.extent_path(&id);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[at] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        paths.push(path);
    }
    let fh = fs.open(a.ino, libc::O_RDONLY).unwrap();
    assert!(
        fs.read(a.ino, 0, ES as u32).unwrap() == data,
        "reads return good data"
    );
    fs.release(fh).unwrap();
    for path in &paths {
        for _ in 0..300 {
            if std::fs::read(path).unwrap() == data {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            std::fs::read(path).unwrap() == data,
            "{} repaired",
            path.display()
        );
    }
    // The counter moves just after the repaired copy is in place.
    for _ in 0..300 {
        if fs.stats().repairs_done >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(fs.stats().repairs_done >= 2);
    assert!(crate::admin::fsck(&fs, false).unwrap().clean);
}

#[test]
fn fsck_repairs_bad_and_missing_replicas() {
    let (_t, p, fs) = setup(3, 2);
    let (a, fh) = fs
        .create(Ctx::root(), ROOT_INO, b"f", 0o644, 0, libc::O_RDWR)
        .unwrap();
    fs.write(fh, 0, &pattern(4 * ES as usize, 9)).unwrap();
    fs.release(fh).unwrap();
    let disk = p.store.disk(0).unwrap();
    let files = disk.scan().unwrap();
    assert!(!files.is_empty());
    std::fs::remove_file(disk.extent_path(&files[0].0)).unwrap();
    let d1 = p.store.disk(1).unwrap();
    let (id1, _) = *d1
        .scan()
        .unwrap()
        .iter()
        .find(|(id, _)| (id.ino, id.index) != (files[0].0.ino, files[0].0.index))
        .unwrap();
    std::fs::write(d1.extent_path(&id1), b"garbage").unwrap();
    let r = crate::admin::fsck(&fs, false).unwrap();
    assert!(!r.clean);
    assert_eq!(r.unrepaired, 2, "{:?}", r.problems);
    let r = crate::admin::fsck(&fs, true).unwrap();
    assert!(r.clean, "{:?}", r.problems);
    assert!(crate::admin::fsck(&fs, false).unwrap().clean);
    let fh = fs.open(a.ino, libc::O_RDONLY).unwrap();
    assert_eq!(
        fs.read(a.ino, 0, 4 * ES as u32).unwrap(),
        pattern(4 * ES as usize, 9)
    );
    fs.release(fh).unwrap();
}

#[test]
fn readdir_offsets_survive_concurrent_changes() {
    let (_t, _p, fs) = setup(2, 1);
    let c = Ctx::root();
    for i in 0..600 {
        fs.mknod(
            c,
            ROOT_INO,
            format!("f{i}").as_bytes(),
            libc::S_IFREG | 0o644,
            0,
            0,
        )
        .unwrap();
    }
    let first = fs.readdir(ROOT_INO, 0).unwrap();
    assert_eq!(first.len(), 512);
    let mut seen: Vec<Vec<u8>> = first.iter().map(|e| e.name.clone()).collect();
    let last = first.last().unwrap().offset;
    // Remove entries already listed and add new ones; nothing that stayed is missed or repeated.
    for e in first.iter().skip(2).take(100) {
        fs.unlink(ROOT_INO, &e.name).unwrap();
    }
    for i in 0..50 {
        fs.mknod(
            c,
            ROOT_INO,
            format!("new{i}").as_bytes(),
            libc::S_IFREG | 0o644,
            0,
            0,
        )
        .unwrap();
    }
    let mut off = last;
    loop {
        let more = fs.readdir(ROOT_INO, off).unwrap();
        if more.is_empty() {
            break;
        }
        off = more.last().unwrap().offset;
        seen.extend(more.into_iter().map(|e| e.name));
    }
    let uniq: std::collections::HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(uniq.len(), seen.len(), "no entry listed twice");
    for i in 0..600 {
        assert!(uniq.contains(format!("f{i}").as_bytes()), "f{i} missing");
    }
}

#[test]
fn xattr_flags_and_sizes() {
    let (_t, _p, fs) = setup(2, 1);
    let a = fs
        .mknod(Ctx::root(), ROOT_INO, b"x", libc::S_IFREG | 0o644, 0, 0)
        .unwrap();
    assert_eq!(
        fs.setxattr(a.ino, b"user.k", b"v", libc::XATTR_REPLACE),
        Err(Errno::ENODATA)
    );
    fs.setxattr(a.ino, b"user.k", b"v", libc::XATTR_CREATE)
        .unwrap();
    assert_eq!(
        fs.setxattr(a.ino, b"user.k", b"v", libc::XATTR_CREATE),
        Err(Errno::EEXIST)
    );
    assert_eq!(fs.getxattr(a.ino, b"user.k").unwrap(), b"v");
    fs.setxattr(a.ino, b"user.j", b"w", 0).unwrap();
    assert_eq!(fs.listxattr(a.ino).unwrap(), b"user.j\0user.k\0");
    fs.removexattr(a.ino, b"user.k").unwrap();
    assert_eq!(fs.getxattr(a.ino, b"user.k"), Err(Errno::ENODATA));
}

#[test]
fn restart_cleans_uncommitted_files_and_orphans() {
    let t = tempfile::tempdir().unwrap();
    let ino;
    {
        let (p, fs) = create_temp(t.path(), 2, 2, ES).unwrap();
        let (a, fh) = fs
            .create(Ctx::root(), ROOT_INO, b"o", 0o644, 0, libc::O_RDWR)
            .unwrap();
        ino = a.ino;
        fs.write(fh, 0, &pattern(2 * ES as usize, 1)).unwrap();
        fs.flush(a.ino).unwrap();
        fs.unlink(ROOT_INO, b"o").unwrap();
        // A stray file as left by a crash between data write and commit.
        let d = p.store.disk(0).unwrap();
        let stray = crate::store::ExtentId {
            ino: 999,
            index: 0,
            version: 12345,
        };
        p.store.write_extent(&d, &stray, b"junk", (0, 1)).unwrap();
        // "Crash": drop without release.
    }
    // Background threads may hold the old Fs for a moment after the drop (they upgrade a
    // weak reference for each piece of work); the daemon never reopens in-process.
    let mut tries = 0;
    let p = loop {
        match crate::pool::Pool::open(&t.path().join("pool")) {
            Ok(p) => break p,
            Err(e) if tries < 100 => {
                tries += 1;
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => panic!("reopen: {e:#}"),
        }
    };
    let fs = p.fs(FsOptions::default()).unwrap();
    let (freed, removed) = crate::pool::cleanup(&fs).unwrap();
    assert_eq!(freed, 1);
    assert_eq!(
        removed, 1,
        "the orphan's files go with it; only the stray is left"
    );
    assert_eq!(fs.getattr(ino), Err(Errno::ENOENT));
    assert!(crate::admin::fsck(&fs, false).unwrap().clean);
}

#[test]
fn shard_hash_spreads_extents() {
    let (_t, _p, fs) = setup(3, 2);
    let n = fs.cfg.shard_count as usize;
    let mut count = vec![0usize; n];
    for ino in 1_048_576..1_048_576 + 500u64 {
        for index in 0..20 {
            count[fs.shard_of(ino, index) as usize] += 1;
        }
    }
    let mean = 500 * 20 / n;
    for (s, c) in count.iter().enumerate() {
        assert!(
            *c > mean / 2 && *c < mean * 3 / 2,
            "shard {s}: {c} extents, mean {mean}"
        );
    }
}

#[test]
fn requests_smaller_than_an_extent_share_its_read_ahead() {
    let t = tempfile::tempdir().unwrap();
    let es = 1u64 << 20;
    let (_p, fs) = create_temp(t.path(), 3, 1, es).unwrap();
    let (a, fh) = fs
        .create(Ctx::root(), ROOT_INO, b"big", 0o644, 0, libc::O_RDWR)
        .unwrap();
    let extents = 12;
    let data = pattern(extents * es as usize, 3);
    fs.write(fh, 0, &data).unwrap();
    fs.release(fh).unwrap();
    let fh = fs.open(a.ino, libc::O_RDONLY).unwrap();
    let chunk = es as usize / 4;
    let mut got = Vec::new();
    for off in (0..data.len()).step_by(chunk) {
        got.extend(fs.read(a.ino, off as u64, chunk as u32).unwrap());
    }
    assert!(got == data);
    // Extents 1.. are read ahead; each serves all four of its requests (the first request
    // used to take the buffer as its reply, and the other three read the disks again).
    let hits = fs.stats().readahead_hits;
    assert!(hits >= 4 * (extents as u64 - 2), "read-ahead hits: {hits}");
    fs.release(fh).unwrap();
}

#[test]
fn sequential_reads_are_read_ahead_verified_and_current() {
    let (_t, p, fs) = setup(3, 2);
    let (a, fh) = fs
        .create(Ctx::root(), ROOT_INO, b"seq", 0o644, 0, libc::O_RDWR)
        .unwrap();
    let extents = 40;
    let mut data = pattern(extents * ES as usize, 5);
    fs.write(fh, 0, &data).unwrap();
    fs.release(fh).unwrap();
    // Bad copies on one disk: read-ahead from them fails over to the reader's usual path.
    let d0 = p.store.disk(0).unwrap();
    for (id, _) in d0.scan().unwrap() {
        let path = d0.extent_path(&id);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[100] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
    }
    let chunk = 2 * ES as usize;
    let read_all = |fs: &Fs| {
        let mut got = Vec::new();
        for off in (0..data.len()).step_by(chunk) {
            got.extend(fs.read(a.ino, off as u64, chunk as u32).unwrap());
        }
        got
    };
    let fh = fs.open(a.ino, libc::O_RDONLY).unwrap();
    assert!(read_all(&fs) == data, "read-ahead data is the file's data");
    let st = fs.stats();
    assert!(
        st.readahead_hits > 0,
        "read-ahead used: {}",
        st.readahead_hits
    );
    assert!(
        st.readahead_failed > 0,
        "bad copies on disk 0 seen by read-ahead"
    );
    fs.release(fh).unwrap();
    // Read the first half again (a new stream) so extents further on are read ahead, then
    // change one of them: the reader gets the new data, not the read-ahead old version.
    let fh = fs.open(a.ino, libc::O_RDWR).unwrap();
    let submitted = fs.stats().readahead_submitted;
    let half = extents / 2 * ES as usize;
    for off in (0..half).step_by(chunk) {
        fs.read(a.ino, off as u64, chunk as u32).unwrap();
    }
    assert!(fs.stats().readahead_submitted > submitted);
    let changed = half + ES as usize + 7;
    fs.write(fh, changed as u64, b"new bytes").unwrap();
    fs.flush(a.ino).unwrap();
    data[changed..changed + 9].copy_from_slice(b"new bytes");
    let mut rest = Vec::new();
    for off in (half..data.len()).step_by(chunk) {
        rest.extend(fs.read(a.ino, off as u64, chunk as u32).unwrap());
    }
    assert!(rest == data[half..], "reads after a write see the write");
    fs.release(fh).unwrap();
    // Closing lets go of the read-ahead buffers (reads still in flight drop theirs).
    for _ in 0..300 {
        if fs.stats().readahead_bytes == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(fs.stats().readahead_bytes, 0);
}

#[test]
fn append_is_decided_per_write() {
    let (_t, _p, fs) = setup(2, 1);
    let (a, fh) = fs
        .create(
            Ctx::root(),
            ROOT_INO,
            b"fcntl",
            0o644,
            0,
            libc::O_RDWR | libc::O_APPEND,
        )
        .unwrap();
    fs.write(fh, 0, b"0123456789").unwrap();
    // fcntl(F_SETFL, 0) cleared O_APPEND: the write's own flags say so.
    fs.write_as(fh, 0, b"XY", 1, Some(false)).unwrap();
    assert_eq!(fs.read(a.ino, 0, 100).unwrap(), b"XY23456789");
    // And set again: the write goes to the end whatever offset it carries.
    fs.write_as(fh, 3, b"Z", 1, Some(true)).unwrap();
    assert_eq!(fs.read(a.ino, 0, 100).unwrap(), b"XY23456789Z");
    fs.release(fh).unwrap();
}

#[test]
fn a_failed_truncate_changes_nothing() {
    let (_t, p, fs) = setup(2, 2);
    let (a, fh) = fs
        .create(Ctx::root(), ROOT_INO, b"t", 0o644, 0, libc::O_RDWR)
        .unwrap();
    let data = pattern(3 * ES as usize, 5);
    fs.write(fh, 0, &data).unwrap();
    fs.flush(a.ino).unwrap();
    fs.drain_reaper();
    // Every copy of the boundary extent (index 1) corrupt: the shrink cannot rewrite it.
    for d in p.store.disks() {
        for (id, _) in d.scan().unwrap() {
            if id.index == 1 {
                let path = d.extent_path(&id);
                let mut bytes = std::fs::read(&path).unwrap();
                bytes[10] ^= 0xff;
                std::fs::write(&path, &bytes).unwrap();
            }
        }
    }
    fs.write(fh, 3 * ES - 4, b"tail").unwrap();
    let sa = SetAttr {
        size: Some(ES + ES / 2),
        ..Default::default()
    };
    assert_eq!(fs.setattr(Ctx::root(), a.ino, &sa), Err(Errno::EIO));
    assert_eq!(fs.getattr(a.ino).unwrap().size, 3 * ES, "size unchanged");
    let mut want = data[2 * ES as usize..].to_vec();
    let n = want.len();
    want[n - 4..].copy_from_slice(b"tail");
    assert_eq!(
        fs.read(a.ino, 2 * ES, ES as u32).unwrap(),
        want,
        "the extent past the new size and its buffered write are kept"
    );
    assert_eq!(fs.read(a.ino, 0, 10).unwrap(), &data[..10]);
    fs.release(fh).unwrap();
    assert_eq!(fs.getattr(a.ino).unwrap().size, 3 * ES);
}

#[test]
fn a_directory_renamed_over_an_empty_one_keeps_link_counts() {
    let (_t, _p, fs) = setup(2, 1);
    let c = Ctx::root();
    fs.mkdir(c, ROOT_INO, b"a", 0o755, 0).unwrap();
    fs.mkdir(c, ROOT_INO, b"b", 0o755, 0).unwrap();
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 4);
    fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0).unwrap();
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 3);
    let d = fs.mkdir(c, ROOT_INO, b"d", 0o755, 0).unwrap();
    fs.mkdir(c, d.ino, b"e", 0o755, 0).unwrap();
    fs.rename(ROOT_INO, b"b", d.ino, b"e", 0).unwrap();
    assert_eq!(fs.getattr(ROOT_INO).unwrap().nlink, 3, "root: . .. d");
    assert_eq!(fs.getattr(d.ino).unwrap().nlink, 3, "d: . .. e");
    assert!(crate::admin::fsck(&fs, false).unwrap().clean);
}

#[test]
fn a_read_with_every_replica_missing_is_eio() {
    let (_t, p, fs) = setup(2, 2);
    let (a, fh) = fs
        .create(Ctx::root(), ROOT_INO, b"m", 0o644, 0, libc::O_RDWR)
        .unwrap();
    fs.write(fh, 0, &pattern(ES as usize, 9)).unwrap();
    fs.release(fh).unwrap();
    for d in p.store.disks() {
        for (id, _) in d.scan().unwrap() {
            std::fs::remove_file(d.extent_path(&id)).unwrap();
        }
    }
    let fh = fs.open(a.ino, libc::O_RDONLY).unwrap();
    assert_eq!(fs.read(a.ino, 0, 100), Err(Errno::EIO));
    fs.release(fh).unwrap();
}

#[test]
fn old_versions_go_only_after_their_replacement_is_durable() {
    let (_t, p, fs) = setup(2, 2);
    fs.start_background();
    let (a, fh) = fs
        .create(Ctx::root(), ROOT_INO, b"o", 0o644, 0, libc::O_RDWR)
        .unwrap();
    fs.write(fh, 0, &pattern(ES as usize, 1)).unwrap();
    fs.fsync(a.ino).unwrap();
    let synced = fs.meta.synced_seq();
    fs.write(fh, 4, b"new!").unwrap();
    fs.flush(a.ino).unwrap();
    assert!(
        fs.meta.last_seq() > synced,
        "the overwrite is not durable yet"
    );
    let count = || {
        p.store
            .disks()
            .iter()
            .map(|d| d.scan().unwrap().len())
            .sum::<usize>()
    };
    // Well within the reaper's delay: both versions are still there.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        count(),
        4,
        "old version kept while its replacement is not durable"
    );
    assert!(fs.meta.synced_seq() < fs.meta.last_seq());
    // The reaper syncs the WAL itself after a bounded delay, then removes.
    let t0 = std::time::Instant::now();
    while count() > 2 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(count(), 2);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(
        fs.unsynced.lock().is_empty(),
        "the barrier synced the new files"
    );
    fs.release(fh).unwrap();
}

#[test]
fn a_full_metadata_disk_is_enospc_not_eio() {
    let full =
        anyhow::anyhow!("IO error: No space left on device: While appending to file: 000012.log");
    assert_eq!(
        super::metadata_errno(&full.context("write batch")),
        Errno::ENOSPC
    );
    let io = anyhow::Error::from(std::io::Error::from_raw_os_error(libc::ENOSPC));
    assert_eq!(super::metadata_errno(&io), Errno::ENOSPC);
    let other = anyhow::anyhow!("Corruption: block checksum mismatch");
    assert_eq!(super::metadata_errno(&other), Errno::EIO);
}

#[test]
fn a_commit_waiting_on_a_slow_disk_holds_no_lock_others_need() {
    use crate::store::Fault;
    let (_t, p, fs) = setup(2, 2);
    let (a, fh) = fs
        .create(Ctx::root(), ROOT_INO, b"slow", 0o644, 0, libc::O_RDWR)
        .unwrap();
    fs.write(fh, 0, b"buffered").unwrap();
    let slow = |ms| {
        for d in p.store.disks() {
            d.set_fault(Fault {
                delay_ms: ms,
                ..Fault::default()
            });
        }
    };
    slow(10_000);
    // The last close commits: its extent write waits on the disks.
    let f2 = fs.clone();
    let closer = std::thread::spawn(move || f2.release(fh));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !closer.is_finished(),
        "the close did not wait for the disks"
    );
    assert!(fs.ns.try_lock().is_some(), "ns held across an extent write");
    let node = fs.node(a.ino).expect("still open");
    assert!(
        node.inner.try_lock().is_some(),
        "node lock held across an extent write"
    );
    // So the file can be looked at, opened and read (from the data on its way) meanwhile.
    assert_eq!(fs.getattr(a.ino).unwrap().size, 8);
    let fh2 = fs.open(a.ino, libc::O_RDONLY).unwrap();
    assert_eq!(fs.read(a.ino, 0, 8).unwrap(), b"buffered");
    assert!(!closer.is_finished());
    slow(0);
    closer.join().unwrap().unwrap();
    fs.release(fh2).unwrap();
    let fh = fs.open(a.ino, libc::O_RDONLY).unwrap();
    assert_eq!(fs.read(a.ino, 0, 8).unwrap(), b"buffered");
    fs.release(fh).unwrap();
    assert_eq!(extent_files(&p, &fs), 2, "one extent, two replicas");
}

/// A placement sink (a cluster pool's etcd map) that refuses or accepts, recording what it
/// was asked.
struct Sink {
    accept: std::sync::atomic::AtomicBool,
    seen: Mutex<Vec<(u32, ShardRec)>>,
}

impl PlacementSink for Sink {
    fn commit(&self, changes: &[(u32, ShardRec)]) -> anyhow::Result<Vec<bool>> {
        self.seen.lock().extend(changes.iter().cloned());
        let ok = self.accept.load(Ordering::SeqCst);
        Ok(vec![ok; changes.len()])
    }
}

#[test]
fn placements_and_new_shards_go_to_the_sink_first() {
    let t = tempfile::tempdir().unwrap();
    let (_p, fs) = create_temp(t.path(), 3, 2, ES).unwrap();
    let sink = Arc::new(Sink {
        accept: std::sync::atomic::AtomicBool::new(false),
        seen: Mutex::new(Vec::new()),
    });
    fs.set_placement_sink(sink.clone());
    let before = fs.shard(0);
    let shards = fs.shard_table().len();
    // Refused by the map: nothing changes here.
    assert_eq!(
        fs.set_placement(0, before.epoch, vec![1, 2]),
        Err(Errno::ESTALE)
    );
    let def = || crate::fs::shards::ShardDef {
        id: None,
        expect_epoch: 0,
        class: crate::meta::ShardClass::Hot,
        disks: vec![0, 2],
    };
    assert_eq!(
        fs.define_shards(vec![def()]).unwrap(),
        vec![Err(Errno::ESTALE)]
    );
    assert_eq!(fs.shard(0), before);
    assert_eq!(fs.shard_table().len(), shards);
    assert_eq!(fs.meta.shards().unwrap().len(), shards);
    assert_eq!(sink.seen.lock().len(), 2);
    // Accepted: written here too, with the epochs the map was given.
    sink.accept.store(true, Ordering::SeqCst);
    assert_eq!(
        fs.set_placement(0, before.epoch, vec![1, 2]),
        Ok(before.epoch + 1)
    );
    let new = fs.define_shards(vec![def()]).unwrap()[0].unwrap();
    assert_eq!(new as usize, shards);
    let seen = sink.seen.lock().clone();
    assert_eq!(seen[2], (0, fs.shard(0)));
    assert_eq!(seen[3], (new, fs.shard(new)));
    assert_eq!(fs.meta.shards().unwrap().len(), shards + 1);
}
