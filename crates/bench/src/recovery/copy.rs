//! The comparisons: a plain parallel copy of the same bytes between surviving disks (the
//! practical limit), and btrfs RAID1 restoring redundancy with `btrfs replace`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use super::data::DataSet;
use super::{Ctx, Record};
use crate::cmd::Cmd;
use crate::teardown::Teardown;
use crate::{btrfs, disks, log, mounts};

fn timed_record(cfg: &str, bytes: u64, secs: f64) -> Record {
    let mib = bytes as f64 / 1048576.0;
    let values = vec![
        ("detect_ms", None),
        ("activate_ms", None),
        ("full_s", Some(secs)),
        ("rate_mibs", Some(mib / secs.max(1e-9))),
        ("bytes_mib", Some(mib)),
    ];
    Record {
        config: cfg.into(),
        values,
        raw: json!({"bytes": bytes}),
    }
}

/// A directory of `ctx.work` for one configuration, removed again by the stack.
fn own_dir(ctx: &Ctx, name: &str, td: &mut Teardown) -> anyhow::Result<PathBuf> {
    let dir = ctx.work.join(name);
    fs::remove_dir_all(&dir).or_else(disks::ignore_missing)?;
    fs::create_dir_all(&dir)?;
    let d = dir.clone();
    td.push(format!("remove {}", dir.display()), move || {
        if !mounts::under(&d).is_empty() {
            bail!("something is still mounted under {}", d.display());
        }
        Ok(fs::remove_dir_all(&d).or_else(disks::ignore_missing)?)
    });
    Ok(dir)
}

/// `bytes` (what the pool run re-replicated) as files on disk0 and disk2, half each; each
/// disk copies its half to another surviving disk, both at once, then sync of the targets.
pub fn plain(ctx: &Ctx, data: &DataSet, bytes: u64, td: &mut Teardown) -> anyhow::Result<Record> {
    log!("run {}/{}: plain parallel copy", ctx.run, ctx.plan.runs);
    let mark = td.len();
    let dir = own_dir(ctx, "plain", td)?;
    let label = format!("{} MiB", ctx.plan.disk_bytes >> 20);
    let d = disks::setup(
        &dir,
        ctx.plan.ndisks,
        ctx.plan.disk_bytes,
        &label,
        false,
        td,
    )?;
    let dd = &d.dirs;
    let (h2, h0) = (bytes / 2, bytes - bytes / 2);
    let ta = if dd.len() >= 4 { &dd[3] } else { &dd[2] };
    let streams = [
        (&dd[0], ta, h0, "copy-disk0"),
        (&dd[2], &dd[0], h2, "copy-disk2"),
    ];
    let mut jobs = Vec::new();
    for (src, dst, n, name) in streams {
        let files = data.write_plain(&src.join("src"), n)?;
        fs::create_dir_all(dst.join(name))?;
        jobs.push(Cmd::new("cp").arg("--").args(files).arg(dst.join(name)));
    }
    mounts::drop_caches();
    log!(
        "plain: copying {:.1} + {:.1} MiB in parallel",
        h0 as f64 / 1048576.0,
        h2 as f64 / 1048576.0
    );
    let t = Instant::now();
    let results: Vec<anyhow::Result<String>> = std::thread::scope(|s| {
        jobs.iter()
            .map(|j| s.spawn(|| j.ok()))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().expect("cp thread"))
            .collect()
    });
    for r in results {
        r.context("plain: cp failed")?;
    }
    Cmd::new("sync").arg("-f").arg(ta).arg(&dd[0]).ok()?;
    let secs = t.elapsed().as_secs_f64();
    if fs::read(dd[0].join("src/p000"))? != fs::read(ta.join("copy-disk0/p000"))? {
        bail!("plain: the copy differs from its source");
    }
    log!("plain: {:.1} MiB in {secs:.2} s", bytes as f64 / 1048576.0);
    let mut rec = timed_record("plain", bytes, secs);
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    rec.raw["streams"] = json!(format!(
        "{}->{}, {}->{}",
        name(&dd[0]),
        name(ta),
        name(&dd[2]),
        name(&dd[0])
    ));
    td.unwind_to(mark)?;
    Ok(rec)
}

/// One device of `btrfs filesystem show` and its data bytes from `usage -b`.
#[derive(Clone, Debug, PartialEq)]
pub struct Device {
    pub devid: u64,
    pub path: String,
    /// Σ over profiles of its chunk bytes x the profile's used fraction.
    pub data_bytes: u64,
    pub chunk_bytes: u64,
}

/// Parses `btrfs filesystem show MNT` and `btrfs filesystem usage -b MNT`.
pub fn devices(show: &str, usage: &str) -> anyhow::Result<Vec<Device>> {
    let mut devs = Vec::new();
    for l in show.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 8 && f[0] == "devid" && f[6] == "path" {
            devs.push((f[1].parse::<u64>()?, f[7].to_string()));
        }
    }
    if devs.is_empty() {
        bail!("no devices in btrfs filesystem show:\n{show}");
    }
    let mut used = std::collections::HashMap::<String, (f64, u64)>::new();
    let mut frac: Option<f64> = None;
    for l in usage.lines() {
        if let Some(f) = profile_fraction(l) {
            frac = Some(f);
            continue;
        }
        if !l.starts_with([' ', '\t']) {
            frac = None;
            continue;
        }
        let f: Vec<&str> = l.split_whitespace().collect();
        if let (Some(fr), [path, n]) = (frac, f.as_slice()) {
            if let (true, Ok(n)) = (path.starts_with('/'), n.parse::<u64>()) {
                let e = used.entry(path.to_string()).or_default();
                *e = (e.0 + n as f64 * fr, e.1 + n);
            }
        }
    }
    Ok(devs
        .into_iter()
        .map(|(devid, path)| {
            let (u, a) = used.get(&path).copied().unwrap_or_default();
            Device {
                devid,
                path,
                data_bytes: u.round() as u64,
                chunk_bytes: a,
            }
        })
        .collect())
}

/// "Data,RAID1: Size:N, Used:M (..)" -> M / N.
fn profile_fraction(l: &str) -> Option<f64> {
    let (head, rest) = l.split_once(": Size:")?;
    if head.contains(' ') || !head.contains(',') {
        return None;
    }
    let (size, rest) = rest.split_once(", Used:")?;
    let used = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    let (size, used): (f64, f64) = (size.trim().parse().ok()?, used.parse().ok()?);
    Some(if size > 0.0 { used / size } else { 0.0 })
}

/// The device to fail: disk1 unless it holds less than a quarter of an even share, then the
/// one holding the most data (btrfs allocates in chunks of up to 1 GiB).
pub fn pick_failed<'a>(devs: &'a [Device], disk1: &str, even_share: u64) -> Option<&'a Device> {
    let d1 = devs.iter().find(|d| d.path == disk1)?;
    if d1.data_bytes * 4 >= even_share {
        return Some(d1);
    }
    // rev: the first of equals, as the script took it
    devs.iter().rev().max_by_key(|d| d.data_bytes)
}

fn btrfs_text(args: &[&str], mnt: &Path) -> anyhow::Result<String> {
    Cmd::new("btrfs").args(args.iter().copied()).arg(mnt).ok()
}

/// btrfs RAID1 on N loop devices plus a spare, the data set; the failed device's loop
/// device detached, the filesystem mounted degraded, and `btrfs replace start -B` timed.
pub fn btrfs(ctx: &Ctx, data: &DataSet, td: &mut Teardown) -> anyhow::Result<Record> {
    log!("run {}/{}: btrfs RAID1 replace", ctx.run, ctx.plan.runs);
    let mark = td.len();
    let dir = own_dir(ctx, "btrfs", td)?;
    let n = ctx.plan.ndisks;
    let devs = btrfs::devices(&dir, "b", n + 1, ctx.plan.disk_bytes, td)?;
    let spare = devs[n].clone();
    btrfs::mkfs(&devs[..n])?;
    let mnt = dir.join("mnt");
    fs::create_dir_all(&mnt)?;
    disks::mount_dev("btrfs", &devs[0], &mnt, td)?;
    log!("btrfs: writing the data set on {}", devs[..n].join(" "));
    data.fill(&mnt.join("data"))?;
    let fail = failed_device(&mnt, &devs[..n], 2 * data.bytes() / n as u64)?;
    degrade(&mnt, &devs[..n], &fail, td)?;
    let secs = replace(&mnt, fail.devid, &spare)?;
    log!("btrfs: replace took {secs:.2} s");
    data.verify(&mnt.join("data"), "btrfs")?;
    let mut rec = timed_record("btrfs", fail.data_bytes, secs);
    rec.raw = json!({"failed_devid": fail.devid, "bytes": fail.data_bytes, "chunk_bytes": fail.chunk_bytes});
    td.unwind_to(mark)?;
    Ok(rec)
}

/// The device to fail (see `pick_failed`), from the mounted filesystem's usage.
fn failed_device(mnt: &Path, devs: &[String], even: u64) -> anyhow::Result<Device> {
    let found = devices(
        &btrfs_text(&["filesystem", "show"], mnt)?,
        &btrfs_text(&["filesystem", "usage", "-b"], mnt)?,
    )?;
    let fail = pick_failed(&found, &devs[1], even)
        .context("btrfs: disk1's device is not in 'btrfs filesystem show'")?
        .clone();
    if fail.path != devs[1] {
        log!(
            "btrfs: disk1 holds too little data; failing devid {} ({}) with {} bytes instead",
            fail.devid,
            fail.path,
            fail.data_bytes
        );
    }
    Ok(fail)
}

/// The disk fails: unmount, the kernel forgets the device, its loop device goes away; then
/// the filesystem is mounted degraded from a remaining device.
fn degrade(mnt: &Path, devs: &[String], fail: &Device, td: &mut Teardown) -> anyhow::Result<()> {
    let remain = devs
        .iter()
        .find(|d| **d != fail.path)
        .expect("2 or more devices")
        .clone();
    mounts::umount(mnt, None)?;
    let _ = Cmd::new("btrfs")
        .args(["device", "scan", "--forget", &fail.path])
        .run();
    mounts::loop_detach(&fail.path)?;
    mounts::drop_caches();
    Cmd::new("mount")
        .args(["-t", "btrfs", "-o", "degraded", &remain])
        .arg(mnt)
        .ok()
        .context("btrfs: degraded mount failed")?;
    let m = mnt.to_path_buf();
    td.push(format!("umount {}", mnt.display()), move || {
        mounts::umount(&m, None)
    });
    let m = mnt.to_path_buf();
    // An interrupted replace goes on in the kernel; cancel it before unmounting.
    td.push("btrfs replace cancel", move || {
        let _ = Cmd::new("btrfs")
            .args(["replace", "cancel"])
            .arg(&m)
            .uninterruptible()
            .run();
        Ok(())
    });
    if !btrfs_text(&["filesystem", "show"], mnt)
        .unwrap_or_default()
        .to_lowercase()
        .contains("missing")
    {
        log!("warning: btrfs: no device reported missing after the degraded mount");
    }
    Ok(())
}

/// `btrfs replace start -B DEVID SPARE MNT`, checked; its time in seconds.
fn replace(mnt: &Path, devid: u64, spare: &str) -> anyhow::Result<f64> {
    log!("btrfs: btrfs replace start -B {devid} {spare}");
    let t = Instant::now();
    let c = Cmd::new("btrfs")
        .args(["replace", "start", "-B", &devid.to_string(), spare])
        .arg(mnt);
    c.timeout(Duration::from_secs(1800))
        .ok()
        .context("btrfs replace failed")?;
    let secs = t.elapsed().as_secs_f64();
    let st = btrfs_text(&["replace", "status", "-1"], mnt)?;
    if !st.contains("finished") {
        bail!("btrfs replace did not finish: {st}");
    }
    if btrfs_text(&["filesystem", "show"], mnt)?
        .to_lowercase()
        .contains("missing")
    {
        bail!("btrfs: a device is still missing after the replace");
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOW: &str = "Label: none  uuid: 0b5c\n\tTotal devices 3 FS bytes used 1.00GiB\n\tdevid    1 size 4.00GiB used 2.01GiB path /dev/loop3\n\tdevid    2 size 4.00GiB used 1.00GiB path /dev/loop4\n\tdevid    3 size 4.00GiB used 1.01GiB path /dev/loop5\n";
    const USAGE: &str = "Overall:\n    Device size:\t\t 12884901888\n    Used:\t\t  2147483648\n\nData,RAID1: Size:1073741824, Used:536870912 (50.00%)\n   /dev/loop3\t1073741824\n   /dev/loop4\t1073741824\n\nMetadata,RAID1: Size:268435456, Used:0 (0.00%)\n   /dev/loop3\t268435456\n   /dev/loop5\t268435456\n\nUnallocated:\n   /dev/loop3\t 3000000000\n   /dev/loop5\t 3000000000\n";

    #[test]
    fn btrfs_devices_hold_their_chunks_times_the_used_fraction() {
        let d = devices(SHOW, USAGE).unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!((d[0].devid, d[0].path.as_str()), (1, "/dev/loop3"));
        assert_eq!(
            (d[0].data_bytes, d[0].chunk_bytes),
            (536870912, 1073741824 + 268435456)
        );
        assert_eq!(
            (d[1].data_bytes, d[2].data_bytes, d[2].chunk_bytes),
            (536870912, 0, 268435456)
        );
        assert!(devices("nothing", USAGE).is_err());
        // disk1 (loop5) holds nothing: the device with the most data fails instead
        assert_eq!(pick_failed(&d, "/dev/loop5", 1 << 20).unwrap().devid, 1);
        assert_eq!(pick_failed(&d, "/dev/loop4", 1 << 20).unwrap().devid, 2);
        assert_eq!(pick_failed(&d, "/dev/loop9", 1), None);
    }
}
