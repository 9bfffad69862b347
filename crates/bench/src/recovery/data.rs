//! The data set of a recovery run: NFILES files, each a random 4 KiB head of its own and one
//! shared random body (so the files differ), written through a mount with an fsync of every
//! file, and read back cold and compared by hash.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::{log, mounts, signal};

pub const NFILES: usize = 16;
const HEAD: usize = 4096;

pub struct DataSet {
    /// Bytes of each file.
    pub file_bytes: usize,
    /// The shared body: bytes HEAD.. of every file (and the source of the plain copy).
    pub source: Vec<u8>,
    heads: Vec<Vec<u8>>,
    hashes: Vec<blake3::Hash>,
}

/// `n` random bytes.
pub fn random(n: usize) -> anyhow::Result<Vec<u8>> {
    let mut v = vec![0; n];
    fs::File::open("/dev/urandom")?.read_exact(&mut v)?;
    Ok(v)
}

impl DataSet {
    pub fn new(file_bytes: usize) -> anyhow::Result<DataSet> {
        if file_bytes < HEAD {
            bail!("files of {file_bytes} bytes are smaller than their {HEAD}-byte head");
        }
        let source = random(file_bytes)?;
        let mut heads = Vec::new();
        let mut hashes = Vec::new();
        for _ in 0..NFILES {
            let head = random(HEAD)?;
            let mut h = blake3::Hasher::new();
            h.update(&head).update(&source[HEAD..]);
            hashes.push(h.finalize());
            heads.push(head);
        }
        Ok(DataSet {
            file_bytes,
            source,
            heads,
            hashes,
        })
    }

    pub fn bytes(&self) -> u64 {
        (self.file_bytes * NFILES) as u64
    }

    fn name(dir: &Path, i: usize) -> PathBuf {
        dir.join(format!("f{i:02}"))
    }

    /// Writes the files into `dir`, then fsync of each (sync(2) alone does not reach a
    /// FUSE daemon's write buffers) and sync.
    pub fn fill(&self, dir: &Path) -> anyhow::Result<()> {
        fs::create_dir_all(dir)?;
        let mut files = Vec::new();
        for i in 0..NFILES {
            signal::check()?;
            let p = Self::name(dir, i);
            let mut f = fs::File::create(&p).with_context(|| format!("create {}", p.display()))?;
            f.write_all(&self.heads[i])?;
            f.write_all(&self.source[HEAD..])
                .with_context(|| format!("write {}", p.display()))?;
            files.push(f);
        }
        for f in &files {
            f.sync_all().context("fsync of the data set failed")?;
        }
        // SAFETY: sync(2) takes no arguments.
        unsafe { libc::sync() };
        Ok(())
    }

    /// Reads every file in `dir` back, cold, and compares its hash with what was written.
    pub fn verify(&self, dir: &Path, what: &str) -> anyhow::Result<()> {
        mounts::drop_caches();
        self.check(dir, what)
    }

    /// `verify` without dropping caches first.
    pub fn check(&self, dir: &Path, what: &str) -> anyhow::Result<()> {
        let mut bad = Vec::new();
        for i in 0..NFILES {
            let p = Self::name(dir, i);
            match hash_file(&p) {
                Ok(h) if h == self.hashes[i] => {}
                Ok(_) => bad.push(format!("{}: content differs", p.display())),
                Err(e) => bad.push(format!("{}: {e:#}", p.display())),
            }
        }
        if !bad.is_empty() {
            bail!(
                "{what}: DATA MISMATCH: files in {} differ from what was written:\n{}",
                dir.display(),
                bad.join("\n")
            );
        }
        log!("{what}: all {NFILES} files read back intact");
        Ok(())
    }

    /// `bytes` of the body as files of at most `file_bytes` in `dir` (the plain copy's
    /// stand-in for surviving replicas).
    pub fn write_plain(&self, dir: &Path, bytes: u64) -> anyhow::Result<Vec<PathBuf>> {
        fs::create_dir_all(dir)?;
        let (mut rest, mut out) = (bytes as usize, Vec::new());
        while rest > 0 {
            let n = rest.min(self.file_bytes);
            let p = dir.join(format!("p{:03}", out.len()));
            fs::write(&p, &self.source[..n]).with_context(|| format!("write {}", p.display()))?;
            out.push(p);
            rest -= n;
        }
        Ok(out)
    }
}

/// The blake3 hash of a file's content.
pub fn hash_file(p: &Path) -> anyhow::Result<blake3::Hash> {
    let mut f = fs::File::open(p)?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        signal::check()?;
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize());
        }
        h.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_set_verifies_and_a_flipped_byte_does_not() {
        let dir = std::env::temp_dir().join(format!("fsbench-data-{}", std::process::id()));
        let d = DataSet::new(3 * HEAD).unwrap();
        d.fill(&dir).unwrap();
        assert_eq!(
            fs::metadata(dir.join("f15")).unwrap().len(),
            3 * HEAD as u64
        );
        assert_ne!(
            fs::read(dir.join("f00")).unwrap(),
            fs::read(dir.join("f01")).unwrap()
        );
        d.check(&dir, "test").unwrap();
        let mut f = fs::read(dir.join("f03")).unwrap();
        f[5000] ^= 1;
        fs::write(dir.join("f03"), f).unwrap();
        let e = d.check(&dir, "test").unwrap_err();
        assert!(format!("{e:#}").contains("f03: content differs"), "{e:#}");
        let files = d.write_plain(&dir.join("p"), 7 * HEAD as u64).unwrap();
        let sizes: Vec<u64> = files
            .iter()
            .map(|p| fs::metadata(p).unwrap().len())
            .collect();
        assert_eq!(sizes, [3 * HEAD as u64, 3 * HEAD as u64, HEAD as u64]);
        fs::remove_dir_all(&dir).unwrap();
        assert!(DataSet::new(100).is_err());
    }
}
