use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use foreshard::admin::{self, FsckReport, Shards};
use foreshard::control::{self, Request};
use foreshard::daemon;
use foreshard::fs::FsOptions;
use foreshard::pool::{self, InitArgs, Pool};

#[derive(Parser)]
#[command(
    name = "foreshard",
    version,
    about = "A replicated, checksummed FUSE filesystem over several backing disks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a pool: metadata under POOL, a label on each disk.
    Init {
        pool: PathBuf,
        /// A backing disk directory (give at least --replicas of them).
        #[arg(long = "disk", required = true)]
        disks: Vec<PathBuf>,
        #[arg(long, default_value_t = 2)]
        replicas: u32,
        #[arg(long, default_value = "1MiB")]
        extent_size: String,
    },
    /// Mount a pool (as a daemon unless --foreground).
    Mount {
        pool: PathBuf,
        mountpoint: PathBuf,
        #[arg(long)]
        foreground: bool,
        /// FUSE worker threads (default: one per CPU, at least 2; more threads help
        /// parallel I/O, fewer help a single stream of metadata operations).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
        threads: Option<u16>,
    },
    /// Unmount and wait for the daemon to finish.
    Umount { mountpoint: PathBuf },
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
}

/// Runs `req` on the mounted pool through its socket, or opens the pool directly.
fn ask(pool: &Path, req: Request, timeout: Duration) -> anyhow::Result<serde_json::Value> {
    if !pool.is_dir() {
        anyhow::bail!("{}: no such pool directory", pool.display());
    }
    if let Some(v) = control::call(pool, &req, timeout)? {
        return Ok(v);
    }
    let p = Pool::open(pool)?;
    let fs = p.fs(FsOptions::default())?;
    if matches!(req, Request::Fsck { .. }) {
        // The same crash recovery a mount does first, so debris of an interrupted write
        // (uncommitted extent files, inodes unlinked while open) is not reported as damage.
        let (freed, removed) = pool::cleanup(&fs)?;
        if freed + removed > 0 {
            eprintln!("crash recovery: {freed} orphaned inode(s) freed, {removed} uncommitted extent file(s) removed");
        }
    }
    control::handle(&fs, &req, false)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    const LONG: Duration = Duration::from_secs(24 * 3600);
    match cli.cmd {
        Cmd::Init {
            pool: p,
            disks,
            replicas,
            extent_size,
        } => {
            let extent_size = pool::parse_size(&extent_size)?;
            let cfg = pool::init(&InitArgs {
                pool: p.clone(),
                disks: disks.clone(),
                replicas,
                extent_size,
            })?;
            println!(
                "created pool {} at {}: {} disk(s), {} replica(s), extent {}, {} shards",
                cfg.pool_id,
                p.display(),
                disks.len(),
                cfg.replicas,
                admin::fmt_bytes(cfg.extent_size),
                cfg.shard_count
            );
        }
        Cmd::Mount {
            pool,
            mountpoint,
            foreground,
            threads,
        } => {
            daemon::mount(&daemon::MountArgs {
                pool,
                mountpoint,
                foreground,
                threads: threads.map(usize::from).unwrap_or_else(|| {
                    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 16))
                }),
            })?;
        }
        Cmd::Umount { mountpoint } => daemon::umount(&mountpoint)?,
        Cmd::Status { pool, json } => {
            let v = ask(&pool, Request::Status, Duration::from_secs(60))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let s: admin::Status = serde_json::from_value(v).context("bad status")?;
                print!("{}", admin::status_table(&s));
            }
        }
        Cmd::Shards { pool, json } => {
            let v = ask(&pool, Request::Shards, LONG)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let s: Shards = serde_json::from_value(v).context("bad shard list")?;
                print!("{}", admin::shards_table(&s));
            }
        }
        Cmd::Fsck { pool, repair, json } => {
            let v = ask(&pool, Request::Fsck { repair }, LONG)?;
            let r: FsckReport = serde_json::from_value(v).context("bad fsck report")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for p in &r.problems {
                    println!("{p}");
                }
                println!(
                    "fsck: {} inodes, {} extents, {} replicas ({}) verified; {} problem(s), {} repaired, {} left: {}",
                    r.inodes,
                    r.extents,
                    r.replicas_checked,
                    admin::fmt_bytes(r.bytes_verified),
                    r.problems.len(),
                    r.repaired,
                    r.unrepaired,
                    if r.clean { "clean" } else { "NOT CLEAN" }
                );
            }
            if !r.clean {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FORESHARD_LOG")
                .unwrap_or_else(|_| "warn,foreshard=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    match run(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("foreshard: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
