//! `foreshard upgrade POOL`: brings a pool of an older on-disk format to `FORMAT_VERSION`.
//!
//! Crash-safe and idempotent: the labels are rewritten first (each atomically), the config
//! record last with a synced write, and the pool's format is the config record's. A kill at
//! any point leaves a pool of the old format (labels already new are accepted: a label's
//! content is the same in formats 1 and 2) that `upgrade` finishes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context};

use crate::meta::{DiskState, Meta, FORMAT_VERSION};
use crate::pool::{self, PoolLock, Umask};
use crate::store::{read_label, write_label, Label};

/// Test hook: `FORESHARD_UPGRADE_PAUSE=label` stops after the first label is rewritten,
/// `=config` after every label and before the config record (tests kill -9 it there).
const PAUSE_ENV: &str = "FORESHARD_UPGRADE_PAUSE";
/// Files under `meta/` visited when making them private (RocksDB keeps a few dozen).
const META_FILES_MAX: usize = 100_000;

#[derive(Debug, Default)]
pub struct Report {
    pub from: u32,
    pub to: u32,
    pub labels_written: usize,
    /// Disks whose label could not be rewritten (missing, unreadable, another pool's),
    /// with the reason: they are marked failed at the next mount, as before.
    pub skipped: Vec<String>,
}

pub fn upgrade(dir: &Path) -> anyhow::Result<Report> {
    if !pool::is_pool(dir) {
        bail!("{}: not a foreshard pool", dir.display());
    }
    let _mask = Umask::private();
    let _lock = PoolLock::take(dir)?;
    // Refuses a newer format before writing anything.
    let meta = Meta::open(&dir.join(pool::META_DIR), false)?;
    let from = meta.format()?;
    let cfg = meta
        .config()?
        .context("pool metadata has no configuration record")?;
    let mut r = Report {
        from,
        to: FORMAT_VERSION,
        ..Default::default()
    };
    for rec in meta.disks()? {
        if rec.state == DiskState::Removed {
            continue;
        }
        let root = Path::new(&rec.path);
        let l = match read_label(root) {
            Ok(Some(l)) if l.pool_id == cfg.pool_id && l.disk_id == rec.id => l,
            Ok(Some(l)) => {
                r.skipped.push(format!(
                    "disk {} ({}): label of pool {} disk {}",
                    rec.id, rec.path, l.pool_id, l.disk_id
                ));
                continue;
            }
            Ok(None) => {
                r.skipped
                    .push(format!("disk {} ({}): no label", rec.id, rec.path));
                continue;
            }
            Err(e) => {
                r.skipped
                    .push(format!("disk {} ({}): {e:#}", rec.id, rec.path));
                continue;
            }
        };
        if l.format > FORMAT_VERSION {
            bail!(
                "disk {} ({}): label format {} was written by a newer foreshard; use that version",
                rec.id,
                rec.path,
                l.format
            );
        }
        if l.format < FORMAT_VERSION {
            write_label(root, &Label::new(&cfg.pool_id, rec.id))
                .with_context(|| format!("disk {} ({})", rec.id, rec.path))?;
            r.labels_written += 1;
            pause("label");
        }
    }
    pause("config");
    make_private(dir)?;
    if from < FORMAT_VERSION {
        meta.set_format(FORMAT_VERSION)?;
    }
    Ok(r)
}

/// Waits forever when the test hook names `step` (the test kills the process there).
fn pause(step: &str) {
    if std::env::var(PAUSE_ENV).is_ok_and(|v| v == step) {
        eprintln!("upgrade: paused after step {step} ({PAUSE_ENV})");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// Pools made before format 2 have a 0755 directory and 0644 metadata, log and pid file:
/// makes them the owner's only, as `init` makes them now.
fn make_private(dir: &Path) -> anyhow::Result<()> {
    let set = |p: &Path, mode: u32| {
        fs::set_permissions(p, fs::Permissions::from_mode(mode))
            .with_context(|| format!("{}: cannot change its mode", p.display()))
    };
    set(dir, 0o700)?;
    let meta_dir = dir.join(pool::META_DIR);
    set(&meta_dir, 0o700)?;
    for e in fs::read_dir(&meta_dir)?.take(META_FILES_MAX) {
        let e = e?;
        if e.file_type()?.is_file() {
            set(&e.path(), 0o600)?;
        }
    }
    for f in [pool::LOG_FILE, pool::LOCK_FILE, crate::daemon::PID_FILE] {
        let p = dir.join(f);
        if fs::symlink_metadata(&p).is_ok_and(|m| !m.file_type().is_symlink()) {
            set(&p, 0o600)?;
        }
    }
    Ok(())
}
