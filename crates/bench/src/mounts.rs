//! The mount table, unmounting with retries, loop devices, dropping caches, and the sweep
//! that removes whatever an earlier (killed) run left under the work directory.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::bail;

use crate::cmd::Cmd;
use crate::log;

/// One line of /proc/mounts.
pub struct Mount {
    pub source: String,
    pub target: PathBuf,
    pub fstype: String,
}

/// /proc/mounts, octal escapes (`\040` for a space) decoded.
pub fn table() -> Vec<Mount> {
    let text = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (s, t, ty) = (f.next()?, f.next()?, f.next()?);
            Some(Mount {
                source: unescape(s),
                target: PathBuf::from(unescape(t)),
                fstype: ty.to_string(),
            })
        })
        .collect()
}

/// mountinfo's octal escapes decoded (foreshard-model's, which `debug inject` uses too).
fn unescape(s: &str) -> String {
    String::from_utf8_lossy(&foreshard_model::util::unescape_mount_field(s.as_bytes())).into_owned()
}

/// The last mount at `path` (the one visible there), if any.
pub fn at(path: &Path) -> Option<Mount> {
    table().into_iter().rev().find(|m| m.target == path)
}

/// Mountpoints strictly under `dir`, deepest first.
pub fn under(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = table()
        .into_iter()
        .map(|m| m.target)
        .filter(|t| t != dir && t.starts_with(dir))
        .collect();
    v.sort();
    v.dedup();
    v.reverse();
    v
}

/// Unmounts whatever is at `path`, retrying while busy, then lazily. `foreshard` (the
/// binary) unmounts foreshard mounts so that their daemon finishes its flush.
pub fn umount(path: &Path, foreshard: Option<&Path>) -> anyhow::Result<()> {
    for i in 0..10 {
        let Some(m) = at(path) else { return Ok(()) };
        let is_fs = m.fstype == "fuse.foreshard" || m.source.starts_with("foreshard");
        let tried = match (is_fs, foreshard) {
            (true, Some(bin)) => Cmd::new(bin)
                .arg("umount")
                .arg(path)
                .timeout(Duration::from_secs(300))
                .uninterruptible()
                .ok()
                .map(drop),
            _ => Err(anyhow::anyhow!("")),
        };
        if tried.is_err() {
            let fuse = m.fstype.starts_with("fuse");
            let prog = if fuse { "fusermount3" } else { "umount" };
            let flag = if fuse { Some("-u") } else { None };
            let c = Cmd::new(prog).args(flag).arg(path).uninterruptible();
            if c.ok().is_err() && fuse {
                let _ = Cmd::new("umount").arg(path).uninterruptible().ok();
            }
        }
        if at(path).is_none() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(if i < 4 { 1 } else { 2 }));
    }
    log!("{} stays busy; detaching it lazily", path.display());
    let _ = Cmd::new("umount")
        .arg("-l")
        .arg(path)
        .uninterruptible()
        .ok();
    if at(path).is_some() {
        bail!("cannot unmount {}", path.display());
    }
    Ok(())
}

/// Attaches `img` to a free loop device (direct I/O when the kernel allows it: no double
/// caching in the loop device and the image's file) and returns the device.
pub fn loop_attach(img: &Path) -> anyhow::Result<String> {
    let direct = Cmd::new("losetup")
        .args(["--find", "--show", "--direct-io=on"])
        .arg(img);
    let dev = match direct.ok() {
        Ok(d) => d,
        Err(_) => Cmd::new("losetup")
            .args(["--find", "--show"])
            .arg(img)
            .ok()?,
    };
    Ok(dev.trim().to_string())
}

pub fn loop_detach(dev: &str) -> anyhow::Result<()> {
    Cmd::new("losetup")
        .args(["-d", dev])
        .uninterruptible()
        .ok()
        .map(drop)
}

/// The file behind loop device `dev`, None when it is not attached.
pub fn loop_backing(dev: &str) -> Option<PathBuf> {
    let out = Cmd::new("losetup")
        .args(["-n", "-O", "BACK-FILE", dev])
        .uninterruptible()
        .ok()
        .ok()?;
    let b = out.trim().trim_end_matches(" (deleted)");
    (!b.is_empty()).then(|| PathBuf::from(b))
}

/// Loop devices backed by files under `dir`.
pub fn loops_under(dir: &Path) -> Vec<String> {
    let out = Cmd::new("losetup")
        .args(["-n", "-O", "NAME,BACK-FILE", "-l"])
        .run();
    let text = out.map(|o| o.stdout).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (dev, back) = l.trim().split_once(char::is_whitespace)?;
            Path::new(back.trim())
                .starts_with(dir)
                .then(|| dev.to_string())
        })
        .collect()
}

/// Unmounts everything under `dir` and detaches the loop devices of its images: what an
/// earlier run left, or what this one's stack could not undo.
pub fn sweep(dir: &Path, foreshard: Option<&Path>) -> anyhow::Result<()> {
    let mut first_err = None;
    for m in under(dir) {
        if let Err(e) = umount(&m, foreshard) {
            first_err.get_or_insert(e);
        }
    }
    for dev in loops_under(dir) {
        let _ = Cmd::new("btrfs")
            .args(["device", "scan", "--forget", &dev])
            .uninterruptible()
            .run();
        if let Err(e) = loop_detach(&dev) {
            first_err.get_or_insert(e);
        }
    }
    first_err.map_or(Ok(()), Err)
}

static DROP_WARNED: AtomicBool = AtomicBool::new(false);

/// sync, then drop the page cache, dentries and inodes (warns once when it cannot).
pub fn drop_caches() {
    // SAFETY: sync(2) takes no arguments.
    unsafe { libc::sync() };
    if std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_err()
        && !DROP_WARNED.swap(true, Ordering::Relaxed)
    {
        log!("warning: cannot drop caches; 'cold' results are warm");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_decodes_octal_escapes() {
        assert_eq!(unescape(r"/var/tmp/a\040b"), "/var/tmp/a b");
        assert_eq!(unescape(r"/x\\y"), r"/x\\y");
        assert_eq!(unescape(r"/plain"), "/plain");
    }
}
