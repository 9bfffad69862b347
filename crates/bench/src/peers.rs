//! The configurations a run compares: `raw` (a directory on disk0), `mergerfs` over the
//! disks, `btrfs` RAID1 over loop devices, `gluster` replica 2 over bricks on the disks,
//! and foreshard pools (`fs-r1`, `fs-r2`, `fs-r2-noaccess`, `fs-r1-devfuse`, and each of
//! them as `NAME@before` for the `--before` binary). `prepare` makes a configuration's
//! long-lived parts once per run; `up` mounts it, pushing the unmount on the stack.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::cmd::Cmd;
use crate::teardown::Teardown;
use crate::{btrfs, disks, gluster, log, mounts};

/// 'foreshard mount' returns once the daemon serves; 'umount' waits for its flush.
const FS_MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
const FS_UMOUNT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Raw,
    Mergerfs,
    Btrfs,
    Gluster,
    Foreshard,
}

/// One configuration, e.g. `fs-r2-noaccess` or `fs-r2@before`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub name: String,
    pub kind: Kind,
    /// foreshard: replicas, `--no-access`, `--io-uring off`, the --before binary.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replicas: u8,
    #[serde(default, skip_serializing_if = "is_false")]
    pub no_access: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub devfuse: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub before: bool,
    /// What ran it: the foreshard binary and its --version, mergerfs -o ..., etc.
    #[serde(default)]
    pub detail: String,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

/// Canonical order and spelling.
pub const NAMES: [&str; 8] = [
    "raw",
    "mergerfs",
    "btrfs",
    "gluster",
    "fs-r1",
    "fs-r2",
    "fs-r2-noaccess",
    "fs-r1-devfuse",
];

fn canonical(name: &str) -> Option<&'static str> {
    let n = match name {
        "mfs" => "mergerfs",
        "glusterfs" => "gluster",
        "r1" | "r2" | "r2-noaccess" | "r1-devfuse" => {
            return NAMES.iter().copied().find(|c| c[3..] == *name)
        }
        other => other,
    };
    NAMES.iter().copied().find(|c| *c == n)
}

/// `--configs` to configurations in canonical order, each once; with `before`, every
/// foreshard configuration is followed by its `@before` twin.
pub fn parse_list(list: &str, before: bool) -> anyhow::Result<Vec<Config>> {
    let mut picked = Vec::new();
    for c in list.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        let Some(n) = canonical(c) else {
            bail!(
                "unknown configuration '{c}' in --configs (use {})",
                short_names()
            );
        };
        picked.push(n);
    }
    let mut out = Vec::new();
    for n in NAMES.iter().filter(|n| picked.contains(n)) {
        out.push(config(n, false));
        if before && n.starts_with("fs-") {
            out.push(config(n, true));
        }
    }
    if out.is_empty() {
        bail!("--configs selects nothing");
    }
    Ok(out)
}

fn short_names() -> String {
    "raw,mergerfs,btrfs,gluster,r1,r2,r2-noaccess,r1-devfuse".into()
}

fn config(name: &str, before: bool) -> Config {
    let kind = match name {
        "raw" => Kind::Raw,
        "mergerfs" => Kind::Mergerfs,
        "btrfs" => Kind::Btrfs,
        "gluster" => Kind::Gluster,
        _ => Kind::Foreshard,
    };
    let fs = kind == Kind::Foreshard;
    Config {
        name: if before {
            format!("{name}@before")
        } else {
            name.to_string()
        },
        kind,
        replicas: if fs {
            name[4..5].parse().expect("fs-rN")
        } else {
            0
        },
        no_access: name.ends_with("-noaccess"),
        devfuse: name.ends_with("-devfuse"),
        before,
        detail: String::new(),
    }
}

/// What the configurations are made on.
pub struct Env {
    pub work: PathBuf,
    pub disks: disks::Disks,
    pub img_bytes: u64,
    pub mergerfs_opts: String,
    pub foreshard: Option<PathBuf>,
    pub before: Option<PathBuf>,
}

impl Env {
    pub fn mnt(&self, c: &Config) -> PathBuf {
        match c.kind {
            Kind::Raw => self.disks.dirs[0].join("raw"),
            _ => self.work.join("mnt").join(&c.name),
        }
    }

    fn bin(&self, c: &Config) -> &Path {
        let b = if c.before {
            &self.before
        } else {
            &self.foreshard
        };
        b.as_deref()
            .expect("foreshard binaries resolved before configurations are made")
    }

    fn pool(&self, c: &Config) -> PathBuf {
        self.work.join("pool").join(&c.name)
    }
}

/// What `prepare` made that `up` needs.
#[derive(Default)]
pub struct Prepared {
    pub btrfs_dev: Option<String>,
    pub gluster_src: Option<String>,
}

/// Makes the long-lived parts of `c` (pool, btrfs filesystem, gluster volume).
pub fn prepare(env: &Env, c: &Config, p: &mut Prepared, td: &mut Teardown) -> anyhow::Result<()> {
    match c.kind {
        Kind::Raw | Kind::Mergerfs => Ok(()),
        Kind::Btrfs => {
            p.btrfs_dev = Some(btrfs::make(
                &env.work,
                env.disks.dirs.len(),
                env.img_bytes,
                env.disks.loops,
                td,
            )?);
            Ok(())
        }
        Kind::Gluster => {
            p.gluster_src = Some(gluster::make(&env.work, &env.disks.dirs, td)?);
            Ok(())
        }
        Kind::Foreshard => fs_init(env, c),
    }
}

fn fs_init(env: &Env, c: &Config) -> anyhow::Result<()> {
    let mut cmd = Cmd::new(env.bin(c)).arg("init").arg(env.pool(c));
    for d in &env.disks.dirs {
        let dir = d.join(&c.name);
        fs::create_dir_all(&dir)?;
        cmd = cmd.arg("--disk").arg(dir);
    }
    cmd = cmd.args(["--replicas", &c.replicas.to_string()]);
    log!(
        "{}: foreshard init {} --replicas {}",
        c.name,
        env.pool(c).display(),
        c.replicas
    );
    cmd.ok()
        .with_context(|| format!("{}: foreshard init failed", c.name))?;
    Ok(())
}

/// Mounts `c` (nothing for raw) and pushes its unmount.
pub fn up(env: &Env, c: &Config, p: &Prepared, td: &mut Teardown) -> anyhow::Result<()> {
    let mnt = env.mnt(c);
    fs::create_dir_all(&mnt)?;
    match c.kind {
        Kind::Raw => return Ok(()),
        Kind::Mergerfs => mergerfs_up(env, &mnt, td)?,
        Kind::Btrfs => {
            disks::mount_dev("btrfs", p.btrfs_dev.as_deref().expect("prepared"), &mnt, td)?
        }
        Kind::Gluster => gluster::mount(p.gluster_src.as_deref().expect("prepared"), &mnt, td)?,
        Kind::Foreshard => fs_up(env, c, &mnt, td)?,
    }
    for _ in 0..20 {
        if mounts::at(&mnt).is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("{}: nothing mounted at {}", c.name, mnt.display())
}

fn mergerfs_up(env: &Env, mnt: &Path, td: &mut Teardown) -> anyhow::Result<()> {
    let mut branches = Vec::new();
    for d in &env.disks.dirs {
        let b = d.join("mergerfs");
        fs::create_dir_all(&b)?;
        branches.push(b.to_string_lossy().into_owned());
    }
    Cmd::new("mergerfs")
        .args(["-o", &env.mergerfs_opts, &branches.join(":")])
        .arg(mnt)
        .ok()
        .context("mergerfs mount failed")?;
    let m = mnt.to_path_buf();
    td.push(format!("umount {}", mnt.display()), move || {
        mounts::umount(&m, None)
    });
    Ok(())
}

fn fs_up(env: &Env, c: &Config, mnt: &Path, td: &mut Teardown) -> anyhow::Result<()> {
    let bin = env.bin(c).to_path_buf();
    let mut cmd = Cmd::new(&bin).arg("mount");
    if c.no_access {
        cmd = cmd.arg("--no-access");
    }
    if c.devfuse {
        cmd = cmd.args(["--io-uring", "off"]);
    }
    let cmd = cmd.arg(env.pool(c)).arg(mnt).timeout(FS_MOUNT_TIMEOUT);
    let m = mnt.to_path_buf();
    let b = bin.clone();
    // Pushed first: a mount that failed half-way still gets unmounted.
    td.push(format!("foreshard umount {}", mnt.display()), move || {
        fs_umount(&b, &m)
    });
    if let Err(e) = cmd.ok() {
        if mounts::at(mnt).is_none() {
            let pool = env.pool(c);
            bail!("{}: {e:#}; see {}/foreshard.log", c.name, pool.display());
        }
        log!("warning: {}: 'foreshard mount' did not return in time although {} is mounted (a foreshard bug); continuing", c.name, mnt.display());
    }
    Ok(())
}

/// `foreshard umount` (which waits for the daemon's flush); a failure is an error of the
/// run, but the mount is removed anyway so that the teardown can go on.
pub fn fs_umount(bin: &Path, mnt: &Path) -> anyhow::Result<()> {
    if mounts::at(mnt).is_none() {
        return Ok(());
    }
    let r = Cmd::new(bin)
        .arg("umount")
        .arg(mnt)
        .timeout(FS_UMOUNT_TIMEOUT)
        .uninterruptible()
        .ok();
    if let Err(e) = r {
        let _ = mounts::umount(mnt, None);
        return Err(e.context(format!("foreshard umount {} failed", mnt.display())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[Config]) -> Vec<&str> {
        v.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn list_is_canonical_and_deduplicated() {
        let v = parse_list("r2,raw,mfs,gluster,fs-r2,btrfs", false).unwrap();
        assert_eq!(names(&v), ["raw", "mergerfs", "btrfs", "gluster", "fs-r2"]);
        assert_eq!(v[4].replicas, 2);
        assert!(parse_list("raw,zfs", false).is_err());
        assert!(parse_list(",", false).is_err());
    }

    #[test]
    fn before_adds_a_twin_per_foreshard_config() {
        let v = parse_list("raw,r2-noaccess,r1", true).unwrap();
        assert_eq!(
            names(&v),
            [
                "raw",
                "fs-r1",
                "fs-r1@before",
                "fs-r2-noaccess",
                "fs-r2-noaccess@before"
            ]
        );
        assert!(v[4].before && v[4].no_access && v[4].replicas == 2);
        assert!(!v[3].before);
    }
}
