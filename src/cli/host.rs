//! `foreshard host add|drain|remove`: a storage host's disks in and out of a mounted
//! cluster pool, as `disk add|remove` does for one disk.

use std::path::PathBuf;

use super::{ask_as, LONG};
use foreshard::admin::Status;
use foreshard::api::{HostAnswer, Request};
use foreshard::meta::DiskState;

#[derive(clap::Subcommand)]
pub enum HostCmd {
    /// Claim the free disks HOST registered (`foreshard node`): they take a share of the
    /// shards, new data and recovery copies.
    Add { pool: PathBuf, host: String },
    /// Move every replica off HOST's disks (to disks on other hosts), with progress; its
    /// disks stay claimed by the pool, out of use (`host add` takes them back).
    Drain {
        pool: PathBuf,
        host: String,
        /// Return at once instead of waiting for the drain.
        #[arg(long)]
        no_wait: bool,
    },
    /// Drain HOST, then give its disks back to the cluster (free for any pool); the host
    /// can then be stopped.
    Remove { pool: PathBuf, host: String },
}

pub fn run(cmd: HostCmd) -> anyhow::Result<()> {
    match cmd {
        HostCmd::Add { pool, host } => {
            let a: HostAnswer = ask_as(&pool, Request::HostAdd { host }, LONG)?;
            println!("host {}: disk(s) {:?} added", a.host, a.disks);
            Ok(())
        }
        HostCmd::Drain {
            pool,
            host,
            no_wait,
        } => drain(&pool, &host, !no_wait),
        HostCmd::Remove { pool, host } => {
            drain(&pool, &host, true)?;
            let req = Request::HostRelease { host: host.clone() };
            let a: HostAnswer = ask_as(&pool, req, LONG)?;
            println!("host {host}: disk(s) {:?} released to the cluster", a.disks);
            Ok(())
        }
    }
}

/// Starts the drain and, when `wait`, follows it to the end: every disk of the host
/// removed (a failed disk has been rebuilt elsewhere already).
fn drain(pool: &std::path::Path, host: &str, wait: bool) -> anyhow::Result<()> {
    let req = Request::HostDrain { host: host.into() };
    let a: HostAnswer = ask_as(pool, req, LONG)?;
    println!("host {host}: disk(s) {:?} draining", a.disks);
    if !wait {
        return Ok(());
    }
    super::report::watch_recovery(pool, true)?;
    let timeout_s = 24 * 3600;
    let _: serde_json::Value = ask_as(pool, Request::RecoverWait { timeout_s }, LONG)?;
    let s: Status = ask_as(pool, Request::Status, LONG)?;
    let left: Vec<String> = s
        .disks
        .iter()
        .filter(|d| a.disks.contains(&d.id) && d.state != DiskState::Removed)
        .map(|d| format!("disk {} {}", d.id, d.state.name()))
        .collect();
    if !left.is_empty() {
        anyhow::bail!(
            "host {host} is not drained ({}): no room on the other hosts?",
            left.join(", ")
        );
    }
    println!("host {host}: drained");
    Ok(())
}
