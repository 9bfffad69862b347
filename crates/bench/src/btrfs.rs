//! The btrfs peer: RAID1 for data and metadata (`mkfs.btrfs -d raid1 -m raid1`) over N loop
//! devices of the disks' size, on images of their own in work/img (btrfs needs block
//! devices, so it cannot share the ext4 disks).

use std::path::Path;

use anyhow::{bail, Context};

use crate::cmd::Cmd;
use crate::disks;
use crate::log;
use crate::teardown::Teardown;

/// Makes the filesystem and returns the device to mount it from.
pub fn make(
    work: &Path,
    n: usize,
    img_bytes: u64,
    loops: bool,
    td: &mut Teardown,
) -> anyhow::Result<String> {
    if !loops {
        bail!("btrfs needs loop devices, and they do not work here (or --plain-dirs was given)");
    }
    if n < 2 {
        bail!("btrfs RAID1 needs at least 2 devices");
    }
    let devs = devices(work, "btrfs", n, img_bytes, td)?;
    mkfs(&devs)?;
    Ok(devs[0].clone())
}

/// `n` loop devices over sparse images work/img/PREFIXi.img, forgotten by the kernel's
/// btrfs device list and detached again by the stack.
pub fn devices(
    work: &Path,
    prefix: &str,
    n: usize,
    img_bytes: u64,
    td: &mut Teardown,
) -> anyhow::Result<Vec<String>> {
    let mut devs = Vec::new();
    for i in 0..n {
        let img = work.join("img").join(format!("{prefix}{i}.img"));
        disks::sparse_image(&img, img_bytes, td)?;
        devs.push(disks::attach(&img, td)?);
    }
    let forget = devs.clone();
    // Runs before the loop devices go: the kernel keeps a registered btrfs device list.
    td.push("btrfs device scan --forget", move || {
        for d in &forget {
            let _ = Cmd::new("btrfs")
                .args(["device", "scan", "--forget", d])
                .uninterruptible()
                .run();
        }
        Ok(())
    });
    Ok(devs)
}

/// `mkfs.btrfs -d raid1 -m raid1` over `devs`, and a device scan.
pub fn mkfs(devs: &[String]) -> anyhow::Result<()> {
    log!("btrfs: mkfs.btrfs -d raid1 -m raid1 {}", devs.join(" "));
    Cmd::new("mkfs.btrfs")
        .args(["-f", "-d", "raid1", "-m", "raid1"])
        .args(devs)
        .ok()
        .context("mkfs.btrfs failed")?;
    Cmd::new("btrfs").args(["device", "scan"]).args(devs).ok()?;
    Ok(())
}
