//! The GlusterFS peer: glusterd (started here unless one runs already), a volume
//! `replica 2` over one brick per disk (distributed-replicated with 4 disks), mounted
//! through its FUSE client (`mount -t glusterfs`). Torn down with volume stop and delete.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::cmd::Cmd;
use crate::teardown::Teardown;
use crate::{log, mounts};

const VOLUME: &str = "foreshardbench";
const CLI_TIMEOUT: Duration = Duration::from_secs(120);

fn cli(args: &[&str]) -> Cmd {
    // --mode=script: no "are you sure" prompts (replica 2 asks about split-brain).
    Cmd::new("gluster")
        .arg("--mode=script")
        .args(args.iter().copied())
        .timeout(CLI_TIMEOUT)
}

/// Makes the volume; returns what to mount (`HOST:/VOLUME`).
pub fn make(work: &Path, disks: &[PathBuf], td: &mut Teardown) -> anyhow::Result<String> {
    if disks.len() < 2 || !disks.len().is_multiple_of(2) {
        bail!(
            "gluster replica 2 needs an even number of disks (have {})",
            disks.len()
        );
    }
    let host = brick_host()?;
    start_glusterd(work, td)?;
    if cli(&["volume", "info", VOLUME]).ok().is_ok() {
        log!("gluster: removing the volume {VOLUME} an earlier run left");
        delete_volume()?;
    }
    let mut bricks = Vec::new();
    for d in disks {
        let b = d.join("gluster").join("brick");
        fs::create_dir_all(&b)?;
        bricks.push(format!("{host}:{}", b.display()));
    }
    log!(
        "gluster: volume create {VOLUME} replica 2 {}",
        bricks.join(" ")
    );
    let mut create = vec!["volume", "create", VOLUME, "replica", "2"];
    create.extend(bricks.iter().map(String::as_str));
    // force: bricks may sit on the root filesystem (plain directories) or at a mount's top.
    create.push("force");
    cli(&create).ok().context("gluster volume create failed")?;
    td.push(format!("gluster volume delete {VOLUME}"), delete_volume);
    cli(&["volume", "start", VOLUME])
        .ok()
        .context("gluster volume start failed")?;
    Ok(format!("{host}:/{VOLUME}"))
}

fn delete_volume() -> anyhow::Result<()> {
    let stop = cli(&["volume", "stop", VOLUME, "force"])
        .uninterruptible()
        .run()?;
    let del = cli(&["volume", "delete", VOLUME]).uninterruptible().run()?;
    if !del.status.success() {
        bail!(
            "gluster volume delete {VOLUME}: {} {}",
            stop.stderr.trim(),
            del.stderr.trim()
        );
    }
    Ok(())
}

/// glusterd refuses bricks on loopback addresses: the machine's first address.
fn brick_host() -> anyhow::Result<String> {
    let out = Cmd::new("hostname").arg("-I").ok().unwrap_or_default();
    match out
        .split_whitespace()
        .find(|a| !a.starts_with("127.") && !a.contains(':'))
    {
        Some(a) => Ok(a.to_string()),
        None => {
            bail!("gluster: no non-loopback IPv4 address for the bricks (hostname -I: {out:?})")
        }
    }
}

/// Starts glusterd with a pid file under work/tmp unless one is running; the stack stops
/// it, and the brick and self-heal daemons it started, by their pids.
fn start_glusterd(work: &Path, td: &mut Teardown) -> anyhow::Result<()> {
    if !pids_named("glusterd").is_empty() {
        log!("gluster: using the glusterd that is running");
        return Ok(());
    }
    let pidfile = work.join("tmp").join("glusterd.pid");
    log!("gluster: starting glusterd");
    Cmd::new("glusterd")
        .arg("-p")
        .arg(&pidfile)
        .timeout(CLI_TIMEOUT)
        .ok()?;
    let pf = pidfile.clone();
    td.push("stop glusterd", move || stop_glusterd(&pf));
    for _ in 0..60 {
        if cli(&["pool", "list"]).ok().is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("glusterd did not answer within 30 s")
}

fn stop_glusterd(pidfile: &Path) -> anyhow::Result<()> {
    let main: Option<i32> = fs::read_to_string(pidfile)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    // The daemons glusterd started (bricks, self-heal) write pid files under /run/gluster.
    let mut pids: Vec<i32> = gluster_pidfiles(Path::new("/run/gluster"))
        .iter()
        .filter_map(|f| fs::read_to_string(f).ok()?.trim().parse().ok())
        .filter(|p| comm(*p).is_some_and(|c| c.starts_with("gluster")))
        .collect();
    pids.extend(main);
    for p in &pids {
        // SAFETY: kill(2) on a pid of a gluster process this run started.
        unsafe { libc::kill(*p, libc::SIGTERM) };
    }
    for _ in 0..50 {
        if pids.iter().all(|p| comm(*p).is_none()) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for p in pids.iter().filter(|p| comm(**p).is_some()) {
        // SAFETY: as above; it ignored SIGTERM for 10 s.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    Ok(())
}

fn gluster_pidfiles(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(gluster_pidfiles(&p));
        } else if p.extension().is_some_and(|x| x == "pid") {
            out.push(p);
        }
    }
    out
}

/// The command name of a live process.
fn comm(pid: i32) -> Option<String> {
    let c = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // A zombie is as good as gone.
    let zombie = state
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('Z'));
    (!zombie).then(|| c.trim().to_string())
}

fn pids_named(name: &str) -> Vec<i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| comm(*p).is_some_and(|c| c == name))
        .collect()
}

/// FUSE-mounts the volume at `mnt` and pushes its unmount.
pub fn mount(src: &str, mnt: &Path, td: &mut Teardown) -> anyhow::Result<()> {
    Cmd::new("mount")
        .args(["-t", "glusterfs", src])
        .arg(mnt)
        .timeout(CLI_TIMEOUT)
        .ok()?;
    let m = mnt.to_path_buf();
    td.push(format!("umount {}", mnt.display()), move || {
        mounts::umount(&m, None)
    });
    Ok(())
}
