//! Installing the tools a run needs: the Debian packages of the missing commands, as
//! scripts/lib.sh's ensure_pkgs does (apt-get install, and once more after apt-get update).

use anyhow::bail;

use crate::cmd::{on_path, Cmd};
use crate::log;

/// The command each package provides, for the checks.
pub const FIO: (&str, &str) = ("fio", "fio");
pub const MERGERFS: (&str, &str) = ("mergerfs", "mergerfs");
pub const FUSE3: (&str, &str) = ("fusermount3", "fuse3");
pub const EXT4: (&str, &str) = ("mkfs.ext4", "e2fsprogs");
pub const BTRFS: (&str, &str) = ("mkfs.btrfs", "btrfs-progs");
pub const GLUSTERD: (&str, &str) = ("glusterd", "glusterfs-server");
pub const GLUSTER_MOUNT: (&str, &str) = ("mount.glusterfs", "glusterfs-client");

/// The packages of `needs` whose command is not on $PATH, each once.
pub fn missing(needs: &[(&str, &str)]) -> Vec<String> {
    let mut pkgs: Vec<String> = Vec::new();
    for (prog, pkg) in needs {
        if !on_path(prog) && !pkgs.iter().any(|p| p == pkg) {
            pkgs.push(pkg.to_string());
        }
    }
    pkgs
}

/// Installs the packages of the commands in `needs` that are missing.
pub fn ensure(needs: &[(&str, &str)]) -> anyhow::Result<()> {
    let pkgs = missing(needs);
    if pkgs.is_empty() {
        return Ok(());
    }
    log!("installing missing packages: {}", pkgs.join(" "));
    std::env::set_var("DEBIAN_FRONTEND", "noninteractive");
    let install = || {
        Cmd::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&pkgs)
            .ok()
    };
    if install().is_err() {
        log!("install failed; running apt-get update and retrying");
        Cmd::new("apt-get").args(["update", "-qq"]).ok()?;
        install()?;
    }
    let still = missing(needs);
    if !still.is_empty() {
        bail!("installed, but still missing: {}", still.join(" "));
    }
    Ok(())
}
