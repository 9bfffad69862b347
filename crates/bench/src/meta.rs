//! The metadata test: create N files of a few bytes (open, write, close), stat them all,
//! unlink them all; every phase starts after sync + drop_caches, so stat and unlink are
//! cold. Results in operations per second.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};

use crate::{mounts, signal};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MetaRates {
    pub create: f64,
    pub stat: f64,
    pub unlink: f64,
}

/// How often (in files) the loops look for a caught signal.
const CHECK_EVERY: usize = 256;

/// Runs the three phases in a new directory `dir` (removed again); `cold`: drop caches
/// before each phase.
pub fn run(dir: &Path, n: usize, bytes: usize, cold: bool) -> anyhow::Result<MetaRates> {
    fs::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let names: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("f{i:06}"))).collect();
    let buf = vec![b'x'; bytes];
    let settle = || {
        if cold {
            mounts::drop_caches()
        }
    };
    settle();
    let create = timed(n, || create_all(&names, &buf))?;
    settle();
    let stat = timed(n, || stat_all(&names, bytes as u64))?;
    settle();
    let unlink = timed(n, || unlink_all(&names))?;
    fs::remove_dir(dir)?;
    Ok(MetaRates {
        create,
        stat,
        unlink,
    })
}

/// Operations per second of `n` operations done by `f`.
fn timed(n: usize, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(n as f64 / t.elapsed().as_secs_f64().max(1e-9))
}

fn create_all(names: &[PathBuf], buf: &[u8]) -> anyhow::Result<()> {
    for (i, p) in names.iter().enumerate() {
        if i % CHECK_EVERY == 0 {
            signal::check()?;
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(p)
            .with_context(|| format!("create {}", p.display()))?;
        if !buf.is_empty() {
            f.write_all(buf)
                .with_context(|| format!("write {}", p.display()))?;
        }
        // The close is part of what is measured, as in the python loop it replaces.
        drop(f);
    }
    Ok(())
}

fn stat_all(names: &[PathBuf], size: u64) -> anyhow::Result<()> {
    for (i, p) in names.iter().enumerate() {
        if i % CHECK_EVERY == 0 {
            signal::check()?;
        }
        let m = fs::metadata(p).with_context(|| format!("stat {}", p.display()))?;
        if m.len() != size {
            bail!("{}: size {}, expected {size}", p.display(), m.len());
        }
    }
    Ok(())
}

fn unlink_all(names: &[PathBuf]) -> anyhow::Result<()> {
    for (i, p) in names.iter().enumerate() {
        if i % CHECK_EVERY == 0 {
            signal::check()?;
        }
        fs::remove_file(p).with_context(|| format!("unlink {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_the_three_phases_and_cleans_up() {
        let base = std::env::temp_dir().join(format!("fsbench-meta-{}", std::process::id()));
        fs::create_dir_all(&base).unwrap();
        let dir = base.join("m");
        let r = run(&dir, 50, 16, false).unwrap();
        assert!(r.create > 0.0 && r.stat > 0.0 && r.unlink > 0.0, "{r:?}");
        assert!(!dir.exists());
        // Warm here: dropping caches would hit the whole (shared) machine.
        // An existing directory is refused rather than mixed into.
        fs::create_dir(&dir).unwrap();
        assert!(run(&dir, 1, 1, false).is_err());
        fs::remove_dir_all(&base).unwrap();
    }
}
