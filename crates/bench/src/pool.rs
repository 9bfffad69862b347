//! One foreshard pool on fresh disks of its own, as the recovery and re-sharding benchmarks
//! use them: loop-mounted ext4 disks under a directory of its own, `foreshard init`,
//! `foreshard mount`, and `foreshard status --json`; all of it undone by the stack.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

use crate::cmd::Cmd;
use crate::teardown::Teardown;
use crate::{disks, log, mounts, peers};

const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
const STATUS_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Pool {
    pub bin: PathBuf,
    /// The pool directory (metadata, daemon.pid, foreshard.log).
    pub pool: PathBuf,
    pub mnt: PathBuf,
    pub disks: disks::Disks,
}

/// What a pool is made of.
pub struct Spec<'a> {
    pub bin: &'a Path,
    /// Everything of the pool lives here; removed again by the stack.
    pub dir: PathBuf,
    pub ndisks: usize,
    pub disk_bytes: u64,
    /// Plain directories are accepted (re-sharding); a benchmark that yanks disks refuses them.
    pub need_loops: bool,
    pub init_args: Vec<String>,
    pub mount_args: Vec<String>,
}

/// Makes the disks, the pool and its mount.
pub fn up(s: &Spec, td: &mut Teardown) -> anyhow::Result<Pool> {
    fs::remove_dir_all(&s.dir).or_else(disks::ignore_missing)?;
    fs::create_dir_all(&s.dir)?;
    let d = s.dir.clone();
    td.push(format!("remove {}", s.dir.display()), move || {
        if !mounts::under(&d).is_empty() {
            bail!("something is still mounted under {}", d.display());
        }
        Ok(fs::remove_dir_all(&d).or_else(disks::ignore_missing)?)
    });
    let label = format!("{} MiB", s.disk_bytes >> 20);
    let plain = false;
    let d = disks::setup(&s.dir, s.ndisks, s.disk_bytes, &label, plain, td)?;
    if s.need_loops && !d.loops {
        bail!("the disks are plain directories (loop devices unavailable?); this benchmark needs real disks to yank");
    }
    let p = Pool {
        bin: s.bin.to_path_buf(),
        pool: s.dir.join("pool"),
        mnt: s.dir.join("mnt"),
        disks: d,
    };
    let mut init = Cmd::new(&p.bin).arg("init").arg(&p.pool);
    for disk in &p.disks.dirs {
        init = init.arg("--disk").arg(disk);
    }
    init.args(&s.init_args)
        .ok()
        .context("foreshard init failed")?;
    p.mount(&s.mount_args, td)?;
    Ok(p)
}

impl Pool {
    fn mount(&self, args: &[String], td: &mut Teardown) -> anyhow::Result<()> {
        fs::create_dir_all(&self.mnt)?;
        let (b, m) = (self.bin.clone(), self.mnt.clone());
        // Pushed first: a mount that failed half-way still gets unmounted.
        td.push(
            format!("foreshard umount {}", self.mnt.display()),
            move || peers::fs_umount(&b, &m),
        );
        log!("foreshard mount {} {}", self.mnt.display(), args.join(" "));
        let mount = Cmd::new(&self.bin)
            .arg("mount")
            .arg(&self.pool)
            .arg(&self.mnt);
        let r = mount.args(args).timeout(MOUNT_TIMEOUT).ok();
        if let Err(e) = r {
            bail!("{e:#}\n{}", self.log_tail());
        }
        for _ in 0..50 {
            if mounts::at(&self.mnt).is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("nothing mounted at {}", self.mnt.display())
    }

    /// `foreshard status POOL --json`.
    pub fn status(&self) -> anyhow::Result<Value> {
        let out = Cmd::new(&self.bin)
            .arg("status")
            .arg(&self.pool)
            .arg("--json")
            .timeout(STATUS_TIMEOUT)
            .ok()?;
        serde_json::from_str(&out).context("foreshard status --json printed no JSON")
    }

    /// `foreshard SUB POOL ARGS --json`, parsed.
    pub fn json(&self, sub: &str, args: &[&str], timeout: Duration) -> anyhow::Result<Value> {
        let c = Cmd::new(&self.bin)
            .arg(sub)
            .arg(&self.pool)
            .args(args.iter().copied());
        let out = c.arg("--json").timeout(timeout).ok();
        let out = out.map_err(|e| anyhow::anyhow!("{e:#}\n{}", self.log_tail()))?;
        serde_json::from_str(&out)
            .with_context(|| format!("foreshard {sub} --json printed no JSON"))
    }

    /// The last lines of the daemon's log, to explain a failure.
    pub fn log_tail(&self) -> String {
        let log = self.pool.join("foreshard.log");
        let text = fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("--- last lines of {}:\n{tail}", log.display())
    }

    /// `foreshard fsck POOL` must pass; returns its last line.
    pub fn fsck(&self) -> anyhow::Result<String> {
        let c = Cmd::new(&self.bin).arg("fsck").arg(&self.pool);
        let o = c.timeout(Duration::from_secs(1800)).run()?;
        if !o.status.success() {
            bail!(
                "foreshard fsck {} failed:\n{}{}",
                self.pool.display(),
                o.stdout,
                o.stderr
            );
        }
        Ok(o.stdout.lines().last().unwrap_or("").to_string())
    }

    /// The daemon's pid (POOL/daemon.pid).
    pub fn daemon_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.pool.join("daemon.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }
}

/// The id of the disk at `path` in a status document's `disks`.
pub fn disk_id(status: &Value, path: &Path) -> Option<u64> {
    let real = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let disks = status["disks"].as_array()?;
    disks.iter().find_map(|d| {
        let p = Path::new(d["path"].as_str()?);
        (p == path || p == real).then(|| d["id"].as_u64())?
    })
}

/// Options as a shell would split them ($FS_MOUNT_ARGS and --mount-args: no quoting).
pub fn split_args(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_ids_are_found_by_path() {
        let st: Value = serde_json::from_str(
            r#"{"disks": [{"id": 0, "path": "/nonexistent/d0"}, {"id": 7, "path": "/nonexistent/d1"}]}"#,
        )
        .unwrap();
        assert_eq!(disk_id(&st, Path::new("/nonexistent/d1")), Some(7));
        assert_eq!(disk_id(&st, Path::new("/nonexistent/d2")), None);
        assert_eq!(disk_id(&Value::Null, Path::new("/x")), None);
        assert_eq!(
            split_args(" --agents-max 4  --x"),
            ["--agents-max", "4", "--x"]
        );
    }
}
