//! The command line: `Cli` and one file per command group; each command asks the mounted
//! pool's daemon over its socket, or opens the pool itself when it is not mounted.

mod debug;
mod disk;
mod host;
mod node;
mod pool;
mod report;
mod risk;
mod risk_model;
mod standby;
mod trace;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use foreshard::api::Request;
use foreshard::control;
use foreshard::fs::FsOptions;
use foreshard::pool::Pool;

/// How long commands that may run for hours (drains, fsck, waits) wait for an answer.
const LONG: Duration = Duration::from_secs(24 * 3600);

#[derive(Parser)]
#[command(
    name = "foreshard",
    version,
    about = "A replicated, checksummed FUSE filesystem over several backing disks"
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a pool: metadata under POOL, a label on each disk.
    Init(pool::InitCmd),
    /// Mount a pool (as a daemon unless --foreground).
    Mount(pool::MountCmd),
    /// Disk life cycle: fail, add, remove (drain), fault injection.
    Disk {
        #[command(subcommand)]
        cmd: disk::DiskCmd,
    },
    /// Recovery progress; --watch shows a progress bar until it is done.
    Recover {
        pool: PathBuf,
        #[arg(long)]
        watch: bool,
        /// Block until no recovery is running.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Unmount and wait for the daemon to finish.
    Umount { mountpoint: PathBuf },
    /// Bring a pool made by an older foreshard to this version's on-disk format (unmounted;
    /// safe to interrupt and run again).
    Upgrade { pool: PathBuf },
    /// Disks, shards and replica health.
    Status {
        pool: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Every shard with its epoch, disks and extents.
    Shards {
        pool: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Verify every replica and the metadata; --repair fixes what it can.
    Fsck {
        pool: PathBuf,
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
    /// Hottest and coldest files and extents, correlated groups, the daily profile.
    Heat {
        pool: PathBuf,
        #[arg(long)]
        json: bool,
        /// Also write an SVG heat map (extents by disk and shard) to FILE.
        #[arg(long, value_name = "FILE")]
        svg: Option<PathBuf>,
        /// Lines per list in the table.
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Re-shape shards by heat and co-access now: prints the plan and starts the migration.
    Reshard {
        pool: PathBuf,
        /// Print the plan (shards changed, bytes to move) without changing anything.
        #[arg(long)]
        dry_run: bool,
        /// Block until the migration has finished (progress bar on a terminal).
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Disk failure model: train, score and evaluate on Backblaze-format SMART records.
    /// Failure risk: `risk POOL` reports each disk's P(fail within 30 days) with its top
    /// factors and the shards most at risk, and changes the risk settings;
    /// `risk train|score|eval` work on Backblaze-format drive data.
    #[command(args_conflicts_with_subcommands = true)]
    Risk(risk::RiskArgs),
    /// Fleet simulator: compare placement policies over years of real drive histories.
    Sim(foreshard::sim::SimArgs),
    /// Block traces: replay against a mount, synthesize, summarize.
    Trace {
        #[command(subcommand)]
        cmd: trace::TraceCmd,
    },
    /// Run this machine as a storage host of a cluster: join etcd, register and serve disks.
    Node(node::NodeCmd),
    /// Keep a copy of a cluster pool's metadata here; mount the pool here when its active
    /// metadata host goes away (runs in the foreground until then, and mounted after).
    Standby(standby::StandbyCmd),
    /// Make the standby running on POOL the active metadata host now: the active one
    /// syncs, unmounts and hands over (clean; no acknowledged fsync is lost).
    Promote(standby::PromoteCmd),
    /// The cluster's hosts and disks, from the cluster map in etcd.
    Hosts(node::HostsCmd),
    /// A cluster pool's storage hosts: add (claim its disks), drain, remove (drain, release).
    Host {
        #[command(subcommand)]
        cmd: host::HostCmd,
    },
    /// Tools for testing: fault injection (yank, bitrot, eio, slow, full, crash, ...).
    Debug {
        #[command(subcommand)]
        cmd: debug::DebugCmd,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ok = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
    match cli.cmd {
        Cmd::Init(a) => ok(pool::init(a)),
        Cmd::Mount(a) => ok(pool::mount(a)),
        Cmd::Disk { cmd } => ok(disk::run(cmd)),
        Cmd::Recover {
            pool,
            watch,
            wait,
            json,
        } => report::recover(pool, watch, wait, json),
        Cmd::Umount { mountpoint } => ok(foreshard::daemon::umount(&mountpoint)),
        Cmd::Upgrade { pool } => ok(pool::upgrade(pool)),
        Cmd::Status { pool, json } => report::status(pool, json),
        Cmd::Shards { pool, json } => report::shards(pool, json),
        Cmd::Fsck { pool, repair, json } => report::fsck(pool, repair, json),
        Cmd::Heat {
            pool,
            json,
            svg,
            top,
        } => report::heat(pool, json, svg, top),
        Cmd::Reshard {
            pool,
            dry_run,
            wait,
            json,
        } => report::reshard(pool, dry_run, wait, json),
        Cmd::Risk(a) => risk::run(a),
        Cmd::Sim(args) => code(foreshard::sim::run(args)?),
        Cmd::Trace { cmd } => code(trace::run(cmd)?),
        Cmd::Node(a) => ok(node::run(a)),
        Cmd::Hosts(a) => ok(node::hosts(a)),
        Cmd::Standby(a) => ok(standby::standby(a)),
        Cmd::Promote(a) => ok(standby::promote(a)),
        Cmd::Host { cmd } => ok(host::run(cmd)),
        Cmd::Debug { cmd } => ok(debug::run(cmd)),
    }
}

/// A subcommand's exit code (0..=255; anything else is 1).
fn code(c: i32) -> anyhow::Result<ExitCode> {
    Ok(ExitCode::from(u8::try_from(c).unwrap_or(1)))
}

/// How long a command waits for a daemon that is shutting down (or starting) to let go of
/// the pool (`fusermount3 -u` returns before the daemon has flushed and exited).
const DAEMON_WAIT: Duration = Duration::from_secs(30);

/// Runs `req` on the mounted pool through its socket, or opens the pool directly; waits
/// (bounded) while a daemon shuts down.
pub fn ask(pool: &Path, req: Request, timeout: Duration) -> anyhow::Result<serde_json::Value> {
    if !pool.is_dir() {
        anyhow::bail!("{}: no such pool directory", pool.display());
    }
    let start = std::time::Instant::now();
    let mut said = false;
    loop {
        let busy = match control::call(pool, &req, timeout)? {
            control::Answer::Ok(v) => return Ok(v),
            control::Answer::ShuttingDown => None,
            control::Answer::NoDaemon => match ask_offline(pool, &req) {
                Err(e) if e.downcast_ref::<foreshard::pool::PoolBusy>().is_some() => Some(e),
                r => return r,
            },
        };
        if start.elapsed() >= DAEMON_WAIT {
            return Err(busy.unwrap_or_else(|| {
                anyhow::anyhow!(
                    "{}: the daemon is still shutting down after {}s",
                    pool.display(),
                    DAEMON_WAIT.as_secs()
                )
            }));
        }
        if !said {
            said = true;
            eprintln!(
                "foreshard: waiting for the daemon of {} to finish shutting down (or starting up), up to {}s",
                pool.display(),
                DAEMON_WAIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ask`, the answer decoded as the type `foreshard::api` says the request gets.
pub fn ask_as<T: serde::de::DeserializeOwned>(
    pool: &Path,
    req: Request,
    timeout: Duration,
) -> anyhow::Result<T> {
    let v = ask(pool, req, timeout)?;
    serde_json::from_value(v).map_err(|e| anyhow::anyhow!("bad answer from the daemon: {e}"))
}

fn ask_offline(pool: &Path, req: &Request) -> anyhow::Result<serde_json::Value> {
    // RocksDB files it creates are private, like the daemon's.
    let _mask = foreshard::pool::Umask::private();
    if matches!(
        req,
        Request::HostAdd { .. } | Request::HostDrain { .. } | Request::HostRelease { .. }
    ) {
        // Before opening: opening a cluster pool campaigns for it.
        anyhow::bail!("the pool is not mounted: mount it to use host add|drain|remove");
    }
    let p = Pool::open(pool)?;
    let fs = p.fs(FsOptions::default())?;
    if matches!(req, Request::Fsck { repair: true }) {
        // The same crash recovery a mount does first (a plain fsck changes nothing: it
        // counts debris of an interrupted write instead).
        let (freed, removed) = foreshard::pool::cleanup(&fs)?;
        if freed + removed > 0 {
            eprintln!("crash recovery: {freed} orphaned inode(s) freed, {removed} uncommitted extent file(s) removed");
        }
    }
    let answer = control::handle(&control::Services::offline(fs), req)?;
    Ok(serde_json::to_value(answer)?)
}

#[cfg(test)]
mod tests {
    /// Two flattened option structs with a field of one name give two arguments one id; a
    /// release build then parses one of them silently wrong (clap checks only in debug).
    fn assert_unique_ids(cmd: &clap::Command, path: &str) {
        let mut ids = std::collections::HashSet::new();
        for a in cmd.get_arguments() {
            assert!(
                ids.insert(a.get_id().clone()),
                "{path}: two arguments with id {}",
                a.get_id()
            );
        }
        for sub in cmd.get_subcommands() {
            assert_unique_ids(sub, &format!("{path} {}", sub.get_name()));
        }
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        assert_unique_ids(&super::Cli::command(), "foreshard");
    }
}
