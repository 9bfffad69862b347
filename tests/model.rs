//! Reference-model property test: random operations against the core and against a simple
//! in-memory model, compared after every step.

use std::collections::{BTreeMap, HashMap};

use foreshard::fs::{Ctx, Errno, Fs, SetAttr};
use foreshard::meta::{Kind, ROOT_INO};
use foreshard::store::Fault;
use proptest::prelude::*;

const ES: u64 = 64 * 1024;
const DIRS: [&str; 2] = ["d0", "d1"];
const NAMES: [&str; 3] = ["a", "b", "c"];

#[derive(Clone, Debug)]
enum Op {
    Create(usize),
    /// `append`: the write's own O_APPEND (fcntl may set or clear it after open).
    Write {
        f: usize,
        off: u64,
        len: usize,
        seed: u8,
        append: bool,
    },
    Truncate {
        f: usize,
        size: u64,
    },
    /// A truncate while every disk fails I/O: it succeeds (nothing to read or write) or
    /// fails and changes nothing.
    FailingTruncate {
        f: usize,
        size: u64,
    },
    Rename(usize, usize),
    Link(usize, usize),
    Unlink(usize),
    Mkdir(usize),
    Rmdir(usize),
    Close(usize),
    Read {
        f: usize,
        off: u64,
        len: u32,
    },
}

/// File paths: names in the root and in each directory.
fn paths() -> Vec<String> {
    let mut v: Vec<String> = NAMES.iter().map(|n| n.to_string()).collect();
    for d in DIRS {
        for n in NAMES {
            v.push(format!("{d}/{n}"));
        }
    }
    v
}

fn op() -> impl Strategy<Value = Op> {
    let np = paths().len();
    prop_oneof![
        3 => (0..np).prop_map(Op::Create),
        6 => (0..np, 0..3 * ES, 1..(ES as usize + 5000), any::<u8>(), prop::bool::weighted(0.2)).prop_map(|(f, off, len, seed, append)| Op::Write { f, off, len, seed, append }),
        2 => (0..np, 0..3 * ES).prop_map(|(f, size)| Op::Truncate { f, size }),
        1 => (0..np, 0..3 * ES).prop_map(|(f, size)| Op::FailingTruncate { f, size }),
        2 => (0..np, 0..np).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => (0..np, 0..np).prop_map(|(a, b)| Op::Link(a, b)),
        2 => (0..np).prop_map(Op::Unlink),
        1 => (0..DIRS.len()).prop_map(Op::Mkdir),
        1 => (0..DIRS.len()).prop_map(Op::Rmdir),
        2 => (0..np).prop_map(Op::Close),
        3 => (0..np, 0..3 * ES, 1..(2 * ES as u32)).prop_map(|(f, off, len)| Op::Read { f, off, len }),
    ]
}

#[derive(Default)]
struct Model {
    dirs: Vec<String>,
    names: BTreeMap<String, u64>,
    data: HashMap<u64, Vec<u8>>,
    next: u64,
}

impl Model {
    fn dir_of(p: &str) -> Option<&str> {
        p.split_once('/').map(|(d, _)| d)
    }
    fn parent_exists(&self, p: &str) -> bool {
        Self::dir_of(p).is_none_or(|d| self.dirs.iter().any(|x| x == d))
    }
    fn links(&self, id: u64) -> u32 {
        self.names.values().filter(|v| **v == id).count() as u32
    }
}

/// Fields drop in order: the filesystem and the pool close before the directory goes.
struct Harness {
    fs: std::sync::Arc<Fs>,
    /// One open handle per inode, to exercise buffered data and unlink-while-open.
    open: HashMap<u64, u64>,
    _p: foreshard::pool::Pool,
    _t: tempfile::TempDir,
}

impl Harness {
    fn resolve_parent(&self, p: &str) -> Result<(u64, String), Errno> {
        match p.split_once('/') {
            None => Ok((ROOT_INO, p.to_string())),
            Some((d, n)) => Ok((self.fs.lookup(ROOT_INO, d.as_bytes())?.ino, n.to_string())),
        }
    }
    fn lookup(&self, p: &str) -> Result<u64, Errno> {
        let (parent, n) = self.resolve_parent(p)?;
        Ok(self.fs.lookup(parent, n.as_bytes())?.ino)
    }
    /// Sets (or with the default, clears) a fault on every disk.
    fn faults(&self, f: Fault) {
        for d in self._p.store.disks() {
            d.set_fault(f);
        }
    }
    fn handle(&mut self, ino: u64) -> u64 {
        if let Some(h) = self.open.get(&ino) {
            return *h;
        }
        let h = self.fs.open(ino, libc::O_RDWR).unwrap();
        self.open.insert(ino, h);
        h
    }
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn run(ops: Vec<Op>) {
    let t = tempfile::tempdir().unwrap();
    let (p, fs) = foreshard::pool::create_temp(t.path(), 3, 2, ES).unwrap();
    let mut h = Harness {
        _t: t,
        _p: p,
        fs,
        open: HashMap::new(),
    };
    let mut m = Model::default();
    let ps = paths();
    let c = Ctx::root();
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Create(i) => {
                let p = &ps[i];
                let want_ok = m.parent_exists(p) && !m.names.contains_key(p);
                let got = h.resolve_parent(p).and_then(|(parent, n)| {
                    h.fs.mknod(c, parent, n.as_bytes(), libc::S_IFREG | 0o644, 0, 0)
                });
                assert_eq!(got.is_ok(), want_ok, "step {step}: create {p}: {got:?}");
                if want_ok {
                    m.next += 1;
                    m.names.insert(p.clone(), m.next);
                    m.data.insert(m.next, Vec::new());
                }
            }
            Op::Write {
                f,
                off,
                len,
                seed,
                append,
            } => {
                let p = &ps[f];
                let Some(id) = m.names.get(p).copied() else {
                    continue;
                };
                let ino = h.lookup(p).unwrap();
                let fh = h.handle(ino);
                let buf = bytes(len, seed);
                let got = h.fs.write_as(fh, off, &buf, 1, Some(append));
                assert_eq!(got.unwrap(), len);
                let d = m.data.get_mut(&id).unwrap();
                let off = if append { d.len() as u64 } else { off };
                let end = off as usize + len;
                if d.len() < end {
                    d.resize(end, 0);
                }
                d[off as usize..end].copy_from_slice(&buf);
            }
            Op::Truncate { f, size } => {
                let p = &ps[f];
                let Some(id) = m.names.get(p).copied() else {
                    continue;
                };
                let ino = h.lookup(p).unwrap();
                h.fs.setattr(
                    c,
                    ino,
                    &SetAttr {
                        size: Some(size),
                        ..Default::default()
                    },
                )
                .unwrap();
                m.data.get_mut(&id).unwrap().resize(size as usize, 0);
            }
            Op::FailingTruncate { f, size } => {
                let p = &ps[f];
                let Some(id) = m.names.get(p).copied() else {
                    continue;
                };
                let ino = h.lookup(p).unwrap();
                h.handle(ino);
                // Buffered writes of other files are committed first: a background commit
                // while the faults go on disk by disk would write one replica of two.
                h.fs.flush_all().unwrap();
                let fault = Fault {
                    eio_rate: 1.0,
                    delay_ms: 0,
                };
                h.faults(fault);
                let sa = SetAttr {
                    size: Some(size),
                    ..Default::default()
                };
                let got = h.fs.setattr(c, ino, &sa);
                h.faults(Fault::default());
                match got {
                    Ok(_) => m.data.get_mut(&id).unwrap().resize(size as usize, 0),
                    Err(e) => assert_eq!(e, Errno::EIO, "step {step}: failing truncate"),
                }
            }
            Op::Rename(a, b) => {
                let (pa, pb) = (&ps[a], &ps[b]);
                let want_ok = m.names.contains_key(pa) && m.parent_exists(pb);
                let got = h.resolve_parent(pa).and_then(|(fa, na)| {
                    let (fb, nb) = h.resolve_parent(pb)?;
                    h.fs.rename(fa, na.as_bytes(), fb, nb.as_bytes(), 0)
                });
                assert_eq!(
                    got.is_ok(),
                    want_ok,
                    "step {step}: rename {pa} {pb}: {got:?}"
                );
                let same = m.names.contains_key(pa) && m.names.get(pa) == m.names.get(pb);
                if want_ok && !same {
                    let id = m.names.remove(pa).unwrap();
                    m.names.insert(pb.clone(), id);
                }
            }
            Op::Link(a, b) => {
                let (pa, pb) = (&ps[a], &ps[b]);
                let want_ok =
                    m.names.contains_key(pa) && m.parent_exists(pb) && !m.names.contains_key(pb);
                let got = h.lookup(pa).and_then(|ino| {
                    let (fb, nb) = h.resolve_parent(pb)?;
                    h.fs.link(ino, fb, nb.as_bytes())
                });
                assert_eq!(got.is_ok(), want_ok, "step {step}: link {pa} {pb}: {got:?}");
                if want_ok {
                    let id = m.names[pa];
                    m.names.insert(pb.clone(), id);
                }
            }
            Op::Unlink(i) => {
                let p = &ps[i];
                let want_ok = m.names.contains_key(p);
                let got = h
                    .resolve_parent(p)
                    .and_then(|(parent, n)| h.fs.unlink(parent, n.as_bytes()));
                assert_eq!(got.is_ok(), want_ok, "step {step}: unlink {p}: {got:?}");
                if want_ok {
                    m.names.remove(p);
                }
            }
            Op::Mkdir(i) => {
                let d = DIRS[i];
                let want_ok = !m.dirs.iter().any(|x| x == d);
                let got = h.fs.mkdir(c, ROOT_INO, d.as_bytes(), 0o755, 0);
                assert_eq!(got.is_ok(), want_ok, "step {step}: mkdir {d}: {got:?}");
                if want_ok {
                    m.dirs.push(d.to_string());
                }
            }
            Op::Rmdir(i) => {
                let d = DIRS[i];
                let exists = m.dirs.iter().any(|x| x == d);
                let empty = !m.names.keys().any(|k| Model::dir_of(k) == Some(d));
                let got = h.fs.rmdir(ROOT_INO, d.as_bytes());
                match (exists, empty) {
                    (false, _) => assert_eq!(got, Err(Errno::ENOENT), "step {step}"),
                    (true, false) => assert_eq!(got, Err(Errno::ENOTEMPTY), "step {step}"),
                    (true, true) => {
                        assert_eq!(got, Ok(()), "step {step}");
                        m.dirs.retain(|x| x != d);
                    }
                }
            }
            Op::Close(i) => {
                if let Ok(ino) = h.lookup(&ps[i]) {
                    if let Some(fh) = h.open.remove(&ino) {
                        h.fs.release(fh).unwrap();
                    }
                }
            }
            Op::Read { f, off, len } => {
                let p = &ps[f];
                let Some(id) = m.names.get(p).copied() else {
                    continue;
                };
                let ino = h.lookup(p).unwrap();
                h.handle(ino);
                let d = &m.data[&id];
                let s = (off as usize).min(d.len());
                let e = (off as usize + len as usize).min(d.len());
                assert_eq!(
                    h.fs.read(ino, off, len).unwrap(),
                    &d[s..e],
                    "step {step}: read {p}"
                );
            }
        }
        // Compare the whole visible tree after every step.
        let mut listed: Vec<String> = Vec::new();
        for (dir, prefix) in
            std::iter::once((ROOT_INO, String::new())).chain(m.dirs.iter().map(|d| {
                (
                    h.fs.lookup(ROOT_INO, d.as_bytes()).unwrap().ino,
                    format!("{d}/"),
                )
            }))
        {
            for e in h.fs.readdir(dir, 0).unwrap() {
                if e.name != b"." && e.name != b".." && e.kind != Kind::Dir {
                    listed.push(format!("{prefix}{}", String::from_utf8_lossy(&e.name)));
                }
            }
        }
        listed.sort();
        let want: Vec<String> = m.names.keys().cloned().collect();
        assert_eq!(listed, want, "step {step}: listing");
        for (p, id) in &m.names {
            let ino = h.lookup(p).unwrap();
            let a = h.fs.getattr(ino).unwrap();
            assert_eq!(a.size, m.data[id].len() as u64, "step {step}: size of {p}");
            assert_eq!(a.nlink, m.links(*id), "step {step}: nlink of {p}");
        }
    }
    // Close everything; contents survive commits and the pool checks clean.
    for (_, fh) in h.open.drain() {
        h.fs.release(fh).unwrap();
    }
    for (p, id) in &m.names {
        let ino = h.lookup(p).unwrap();
        let fh = h.fs.open(ino, libc::O_RDONLY).unwrap();
        let d = &m.data[id];
        assert_eq!(
            &h.fs.read(ino, 0, d.len() as u32 + 1).unwrap(),
            d,
            "final content of {p}"
        );
        h.fs.release(fh).unwrap();
    }
    let r = foreshard::admin::fsck(&h.fs, false).unwrap();
    assert!(r.clean, "fsck: {:?}", r.problems);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn core_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops);
    }
}
