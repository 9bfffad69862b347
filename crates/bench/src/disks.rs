//! The backing disks: N loop-mounted ext4 images (sparse files), or plain directories on
//! the work directory's filesystem when loop devices do not work (or `--plain-dirs`).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cmd::Cmd;
use crate::log;
use crate::mounts;
use crate::teardown::Teardown;

pub struct Disks {
    pub dirs: Vec<PathBuf>,
    /// e.g. "loop-ext4 (4G images)", for the report.
    pub kind: String,
    /// Whether they are loop devices (btrfs needs them).
    pub loops: bool,
}

/// Makes `n` disks under `work` (images in work/img, mounted at work/disk/diskI).
pub fn setup(
    work: &Path,
    n: usize,
    img_bytes: u64,
    size_label: &str,
    plain: bool,
    td: &mut Teardown,
) -> anyhow::Result<Disks> {
    if !plain {
        log!(
            "creating {n} loop-mounted ext4 images of {size_label} in {}/img",
            work.display()
        );
        let mark = td.len();
        match loop_disks(work, n, img_bytes, td) {
            Ok(dirs) => {
                let kind = format!("loop-ext4 ({size_label} images)");
                return Ok(Disks {
                    dirs,
                    kind,
                    loops: true,
                });
            }
            Err(e) => {
                log!("warning: loop devices do not work here ({e:#}); using plain directories");
                td.unwind_to(mark)
                    .context("cannot undo the failed loop setup")?;
            }
        }
    }
    let mut dirs = Vec::new();
    for i in 0..n {
        let d = work.join("disk").join(format!("disk{i}"));
        fs::create_dir_all(&d)?;
        dirs.push(d);
    }
    let fstype = Cmd::new("findmnt")
        .args(["-no", "FSTYPE", "-T"])
        .arg(work)
        .ok();
    let fstype = fstype
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let kind = format!("plain directories on {fstype} (one filesystem)");
    Ok(Disks {
        dirs,
        kind,
        loops: false,
    })
}

/// A sparse image of `bytes` at `img` (removed again by the stack).
pub fn sparse_image(img: &Path, bytes: u64, td: &mut Teardown) -> anyhow::Result<()> {
    fs::create_dir_all(img.parent().expect("image in a directory"))?;
    let f = fs::File::create(img).with_context(|| format!("cannot create {}", img.display()))?;
    f.set_len(bytes)?;
    let owned = img.to_path_buf();
    td.push(format!("remove {}", img.display()), move || {
        Ok(fs::remove_file(&owned).or_else(ignore_missing)?)
    });
    Ok(())
}

/// A loop device over `img`, detached again by the stack, unless it was detached already
/// (a benchmark's failed disk): the number may belong to someone else by then.
pub fn attach(img: &Path, td: &mut Teardown) -> anyhow::Result<String> {
    let dev = mounts::loop_attach(img)?;
    let d = dev.clone();
    let back = img.to_path_buf();
    td.push(format!("losetup -d {dev}"), move || {
        if mounts::loop_backing(&d).is_some_and(|b| b == back) {
            mounts::loop_detach(&d)?;
        }
        Ok(())
    });
    Ok(dev)
}

fn loop_disks(
    work: &Path,
    n: usize,
    bytes: u64,
    td: &mut Teardown,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for i in 0..n {
        let img = work.join("img").join(format!("disk{i}.img"));
        let dir = work.join("disk").join(format!("disk{i}"));
        fs::create_dir_all(&dir)?;
        sparse_image(&img, bytes, td)?;
        // Inode tables and journal initialised now, so that ext4lazyinit does not write in
        // the background while we measure.
        Cmd::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-m",
                "0",
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
            ])
            .arg(&img)
            .ok()?;
        let dev = attach(&img, td)?;
        mount_dev("ext4", &dev, &dir, td)?;
        dirs.push(dir);
    }
    Ok(dirs)
}

/// `mount -t FSTYPE DEV DIR`, unmounted again by the stack.
pub fn mount_dev(fstype: &str, dev: &str, dir: &Path, td: &mut Teardown) -> anyhow::Result<()> {
    Cmd::new("mount").args(["-t", fstype, dev]).arg(dir).ok()?;
    let d = dir.to_path_buf();
    td.push(format!("umount {}", dir.display()), move || {
        mounts::umount(&d, None)
    });
    Ok(())
}

pub fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}
