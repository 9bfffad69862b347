//! `foreshard disk fail|online|add|remove|fault`: a disk's life cycle.

use std::path::PathBuf;

use anyhow::Context;

use super::{ask, ask_as, LONG};
use foreshard::admin::Status;
use foreshard::api::DiskAnswer;
use foreshard::api::Request;
use foreshard::meta::DiskState;

#[derive(clap::Subcommand)]
pub enum DiskCmd {
    /// Mark a disk failed now (DISK: id or path); recovery starts at once.
    Fail { pool: PathBuf, disk: String },
    /// Bring a failed disk back whose label matches: its files are verified, intact current
    /// copies are replicas again, stale ones removed; recovery copies only what it lacks.
    Online {
        pool: PathBuf,
        disk: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a disk directory that belongs to no pool (its other files are left alone); it
    /// takes a share of the shards, new data and recovery copies.
    Add { pool: PathBuf, dir: PathBuf },
    /// Drain a healthy disk (its replicas move elsewhere), then release it.
    Remove {
        pool: PathBuf,
        disk: String,
        /// Return at once instead of waiting for the drain.
        #[arg(long)]
        no_wait: bool,
    },
    /// Inject faults into a mounted pool's disk layer (scripts/inject eio|slow).
    Fault {
        pool: PathBuf,
        disk: String,
        /// Fraction of operations failing with EIO (0 clears).
        #[arg(long)]
        eio_rate: Option<f64>,
        /// Latency added to each operation (0 clears).
        #[arg(long)]
        delay_ms: Option<u64>,
    },
}

pub fn run(cmd: DiskCmd) -> anyhow::Result<()> {
    let (pool, req) = match cmd {
        DiskCmd::Fail { pool, disk } => (pool, Request::DiskFail { disk }),
        DiskCmd::Add { pool, dir } => (
            pool,
            Request::DiskAdd {
                path: std::path::absolute(&dir)?.to_string_lossy().into_owned(),
            },
        ),
        DiskCmd::Remove {
            pool,
            disk,
            no_wait,
        } => return remove(pool, disk, no_wait),
        DiskCmd::Online { pool, disk, json } => return online(pool, disk, json),
        DiskCmd::Fault {
            pool,
            disk,
            eio_rate,
            delay_ms,
        } => {
            if eio_rate.is_none() && delay_ms.is_none() {
                anyhow::bail!("give --eio-rate and/or --delay-ms");
            }
            (
                pool,
                Request::DiskFault {
                    disk,
                    eio_rate,
                    delay_ms,
                },
            )
        }
    };
    let v = ask(&pool, req, LONG)?;
    println!("{v}");
    Ok(())
}

/// Drains the disk and, unless `no_wait`, waits until it is released.
fn remove(pool: PathBuf, disk: String, no_wait: bool) -> anyhow::Result<()> {
    let answer: DiskAnswer = ask_as(&pool, Request::DiskRemove { disk }, LONG)?;
    let id = answer.disk;
    println!("disk {id} draining");
    if no_wait {
        return Ok(());
    }
    super::report::watch_recovery(&pool, true)?;
    ask(
        &pool,
        Request::RecoverWait {
            timeout_s: 24 * 3600,
        },
        LONG,
    )?;
    let s: Status = ask_as(&pool, Request::Status, LONG)?;
    let state = s.disks.into_iter().find(|d| d.id == id).map(|d| d.state);
    println!("disk {id}: {}", state.map_or("?", |s| s.name()));
    if state != Some(DiskState::Removed) {
        anyhow::bail!("disk {id} is not drained (no room on the other disks?)");
    }
    Ok(())
}

fn online(pool: PathBuf, disk: String, json: bool) -> anyhow::Result<()> {
    let v = ask(&pool, Request::DiskOnline { disk }, LONG)?;
    if json {
        println!("{v}");
        return Ok(());
    }
    let r: foreshard::recovery::OnlineReport =
        serde_json::from_value(v).context("bad answer from the daemon")?;
    println!(
        "disk {} online: {} extent files, {} intact reused ({}), {} stale, {} damaged and {} redundant removed, {} shard(s) rejoined",
        r.disk,
        r.files,
        r.reused_extents,
        foreshard::util::fmt_bytes(r.reused_bytes),
        r.stale_removed,
        r.damaged_removed,
        r.redundant_removed,
        r.shards_rejoined
    );
    Ok(())
}
