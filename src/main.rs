use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// `foreshard mount --io-uring`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum IoUringMode {
    Auto,
    Off,
}

use foreshard::access::AccessOptions;
use foreshard::admin::{self, FsckReport};
use foreshard::agents::{AgentLimits, AgentMode};
use foreshard::control::{self, Request};
use foreshard::daemon;
use foreshard::fs::FsOptions;
use foreshard::pool::{self, InitArgs, Pool};
use foreshard::recovery::{Profile, RecoveryOptions, RecoveryState};
use foreshard::sharding::report::{heat_table, HeatReport, Shards};
use foreshard::sharding::{MigrationStatus, PlanSummary, ShardingOptions};

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
        /// Directory of per-disk health files (`<disk id>.json` smartctl --json output,
        /// `<disk id>.prom` node_exporter textfile); change it later with `risk POOL`.
        #[arg(long)]
        health_dir: Option<PathBuf>,
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
        /// FUSE requests over io_uring, one queue per CPU served on that CPU (`auto`: when
        /// the kernel offers it: Linux 6.14+ with /sys/module/fuse/parameters/enable_uring
        /// = Y; `off`: /dev/fuse only). FORGET and interrupts always use /dev/fuse.
        #[arg(long, value_enum, default_value = "auto")]
        io_uring: IoUringMode,
        /// Recovery agents: `pool` (made before any failure) or `reactive` (made after it).
        #[arg(long, value_enum, default_value = "pool")]
        agents: AgentMode,
        /// Most recovery agents (each one io_uring ring and one thread while recovering).
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
        agents_max: u16,
        /// Registered buffer memory over all agents.
        #[arg(long, default_value = "64MiB")]
        agent_buffer_max: String,
        /// Extents each agent keeps in flight.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        agent_queue_depth: u16,
        /// Recovery copy rate limit per second (e.g. 200MiB; 0 = none).
        #[arg(long, default_value = "0")]
        recovery_rate: String,
        /// Recovery rate per second kept however busy clients are (mClock reservation).
        #[arg(long, default_value = "8MiB")]
        recovery_reservation: String,
        /// Recovery's share of bandwidth while clients do I/O (0.25, 0.5, 0.9).
        #[arg(long, value_enum, default_value = "balanced")]
        recovery_profile: Profile,
        /// Disk health probe (write, fsync, read back) period in milliseconds.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60000))]
        probe_interval_ms: u64,
        /// A probe running longer than this counts as failed (milliseconds).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=600000))]
        probe_deadline_ms: u64,
        /// A disk whose root or label vanished stays suspect this long (milliseconds)
        /// before it is failed and its data rebuilt elsewhere.
        #[arg(long, default_value_t = 10000, value_parser = clap::value_parser!(u64).range(0..=3600000))]
        missing_grace_ms: u64,
        /// Run without the access analyzer (and so without re-sharding).
        #[arg(long)]
        no_access: bool,
        /// Automatic re-sharding period in seconds (0: only `foreshard reshard`).
        #[arg(long, default_value_t = 600)]
        reshard_interval_s: u64,
        /// Migration budget: bytes copied per second by re-sharding.
        #[arg(long, default_value = "16MiB")]
        migration_rate: String,
        /// Migration copies and commits this much at a time.
        #[arg(long, default_value = "8MiB")]
        migration_chunk: String,
        /// Largest shard the sharding engine forms or keeps.
        #[arg(long, default_value = "256MiB")]
        shard_size_max: String,
        /// Shards the engine formed that fall below this are merged.
        #[arg(long, default_value = "4MiB")]
        shard_size_min: String,
        /// Seconds between risk collections (health files, smartctl, /sys stats).
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
        risk_interval_s: u64,
        /// Failure model file (default: the shipped model, trained on Backblaze data).
        #[arg(long)]
        risk_model: Option<PathBuf>,
        /// Never run smartctl (health files and foreshard's own signals only).
        #[arg(long)]
        no_smartctl: bool,
    },
    /// Disk life cycle: fail, add, remove (drain), fault injection.
    Disk {
        #[command(subcommand)]
        cmd: DiskCmd,
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
    Risk {
        #[command(subcommand)]
        cmd: Option<foreshard::risk::RiskCmd>,
        pool: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        /// Set the directory of per-disk health files (absolute path of a directory).
        #[arg(long, conflicts_with = "no_health_dir")]
        health_dir: Option<PathBuf>,
        /// Stop reading health files.
        #[arg(long)]
        no_health_dir: bool,
        /// P(fail in 30 days) at which placement avoids a disk.
        #[arg(long)]
        warn: Option<f64>,
        /// P(fail in 30 days) at which a disk's replicas are moved off it.
        #[arg(long)]
        evacuate: Option<f64>,
    },
    /// Fleet simulator: compare placement policies over years of real drive histories.
    Sim(foreshard::sim::SimArgs),
    /// Block traces: replay against a mount, synthesize, summarize.
    Trace {
        #[command(subcommand)]
        cmd: foreshard::trace::TraceCmd,
    },
}

#[derive(Subcommand)]
enum DiskCmd {
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
    /// Add a new, empty disk directory; it takes new data and recovery copies.
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

/// How long `recover --watch/--wait` waits for a failure to be detected before saying idle
/// (detection takes well under a second).
const WATCH_IDLE_GRACE: Duration = Duration::from_secs(3);

/// Polls recovery status until it is done, with a progress bar on a terminal.
fn watch_recovery(pool: &Path, bar: bool) -> anyhow::Result<serde_json::Value> {
    use std::io::IsTerminal;
    let pb = (bar && std::io::stderr().is_terminal()).then(|| {
        let pb = indicatif::ProgressBar::new(0);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} recovery [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb
    });
    let mut last_line = std::time::Instant::now() - Duration::from_secs(10);
    let started = std::time::Instant::now();
    loop {
        let v = ask(pool, Request::Recover, Duration::from_secs(30))?;
        let r: foreshard::recovery::RecoveryStatus =
            serde_json::from_value(v.clone()).context("bad recovery status")?;
        match &pb {
            Some(pb) => {
                pb.set_length(r.bytes_total);
                pb.set_position(r.bytes_done);
                let per_shard: Vec<String> = r
                    .shards
                    .iter()
                    .filter(|s| s.bytes_done < s.bytes_total)
                    .take(4)
                    .map(|s| {
                        format!(
                            "shard {} {}%{}",
                            s.id,
                            s.bytes_done * 100 / s.bytes_total.max(1),
                            s.eta_s.map(|e| format!(" ETA {e:.0}s")).unwrap_or_default()
                        )
                    })
                    .collect();
                pb.set_message(per_shard.join(" "));
            }
            None if bar
                && r.state != RecoveryState::Idle
                && last_line.elapsed() >= Duration::from_secs(1) =>
            {
                last_line = std::time::Instant::now();
                eprint!("{}", admin::recovery_line(&r));
            }
            None => {}
        }
        // Right after a failure (e.g. `inject yank` then `recover --watch`) detection may
        // still be under way: give it a moment before reporting "idle".
        let grace = r.state == RecoveryState::Idle && started.elapsed() < WATCH_IDLE_GRACE;
        if r.state != RecoveryState::Running && !grace {
            if let Some(pb) = &pb {
                pb.finish_and_clear();
            }
            return Ok(v);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn plan_text(s: &PlanSummary, dry_run: bool) -> String {
    let mut reasons: Vec<String> = s
        .by_reason
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    reasons.sort();
    let mut o = format!(
        "{}{} extent move(s) ({}), {} shard(s) changed, {} formed; {} hot and {} cold extent(s), {} correlated group(s)\n",
        if dry_run { "plan (dry run): " } else { "plan: " },
        s.moves,
        foreshard::util::fmt_bytes(s.bytes_to_move),
        s.shards_changed,
        s.shards_formed,
        s.hot_extents,
        s.cold_extents,
        s.groups
    );
    if !reasons.is_empty() {
        o += &format!("  moves by reason: {}\n", reasons.join(", "));
    }
    for (path, index, from, to) in &s.sample {
        o += &format!("  {path}:{index}  shard {from} -> {to}\n");
    }
    if s.moves > s.sample.len() {
        o += &format!("  ... {} more\n", s.moves - s.sample.len());
    }
    o
}

/// Polls migration status until no move is left, with a progress bar on a terminal.
fn watch_migration(pool: &Path, bar: bool) -> anyhow::Result<MigrationStatus> {
    use std::io::IsTerminal;
    let pb = (bar && std::io::stderr().is_terminal()).then(|| {
        let pb = indicatif::ProgressBar::new(0);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} migration [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb
    });
    loop {
        let v = ask(pool, Request::Migration, Duration::from_secs(30))?;
        let m: MigrationStatus = serde_json::from_value(v).context("bad migration status")?;
        if let Some(pb) = &pb {
            pb.set_length(m.bytes_total);
            pb.set_position(m.bytes_done);
            pb.set_message(format!("{}/{} moves", m.moves_done, m.moves_total));
        }
        if m.state == foreshard::sharding::MigrationState::Idle && m.pending_moves == 0 {
            if let Some(pb) = &pb {
                pb.finish_and_clear();
            }
            return Ok(m);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// How long a command waits for a daemon that is shutting down (or starting) to let go of
/// the pool (`fusermount3 -u` returns before the daemon has flushed and exited).
const DAEMON_WAIT: Duration = Duration::from_secs(30);

/// Runs `req` on the mounted pool through its socket, or opens the pool directly; waits
/// (bounded) while a daemon shuts down.
fn ask(pool: &Path, req: Request, timeout: Duration) -> anyhow::Result<serde_json::Value> {
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
                Err(e) if e.downcast_ref::<pool::PoolBusy>().is_some() => Some(e),
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

fn ask_offline(pool: &Path, req: &Request) -> anyhow::Result<serde_json::Value> {
    // RocksDB files it creates are private, like the daemon's.
    let _mask = pool::Umask::private();
    let p = Pool::open(pool)?;
    let fs = p.fs(FsOptions::default())?;
    if matches!(req, Request::Fsck { repair: true }) {
        // The same crash recovery a mount does first (a plain fsck changes nothing: it
        // counts debris of an interrupted write instead).
        let (freed, removed) = pool::cleanup(&fs)?;
        if freed + removed > 0 {
            eprintln!("crash recovery: {freed} orphaned inode(s) freed, {removed} uncommitted extent file(s) removed");
        }
    }
    control::handle(&control::Services::offline(fs), req)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    const LONG: Duration = Duration::from_secs(24 * 3600);
    match cli.cmd {
        Cmd::Init {
            pool: p,
            disks,
            replicas,
            extent_size,
            health_dir,
        } => {
            let extent_size = pool::parse_size(&extent_size)?;
            let health_dir = health_dir
                .map(|d| foreshard::risk::report::check_health_dir(&d))
                .transpose()?;
            let cfg = pool::init(&InitArgs {
                pool: p.clone(),
                disks: disks.clone(),
                replicas,
                extent_size,
                health_dir,
            })?;
            println!(
                "created pool {} at {}: {} disk(s), {} replica(s), extent {}, {} shards",
                cfg.pool_id,
                p.display(),
                disks.len(),
                cfg.replicas,
                foreshard::util::fmt_bytes(cfg.extent_size),
                cfg.shard_count
            );
        }
        Cmd::Mount {
            pool,
            mountpoint,
            foreground,
            threads,
            io_uring,
            agents,
            agents_max,
            agent_buffer_max,
            agent_queue_depth,
            recovery_rate,
            recovery_reservation,
            recovery_profile,
            probe_interval_ms,
            probe_deadline_ms,
            missing_grace_ms,
            no_access,
            reshard_interval_s,
            migration_rate,
            migration_chunk,
            shard_size_max,
            shard_size_min,
            risk_interval_s,
            risk_model,
            no_smartctl,
        } => {
            if let Some(m) = &risk_model {
                // Refused before daemonizing, with the reason.
                foreshard::risk::service::load_model(Some(m))?;
            }
            let sharding = ShardingOptions {
                interval: (reshard_interval_s > 0).then(|| Duration::from_secs(reshard_interval_s)),
                rate_bytes_per_s: pool::parse_size(&migration_rate).context("--migration-rate")?,
                chunk_bytes: pool::parse_size(&migration_chunk).context("--migration-chunk")?,
                shard_bytes_max: pool::parse_size(&shard_size_max).context("--shard-size-max")?,
                shard_bytes_min: pool::parse_size(&shard_size_min).context("--shard-size-min")?,
                ..ShardingOptions::default()
            };
            anyhow::ensure!(
                sharding.rate_bytes_per_s > 0,
                "--migration-rate must be above 0"
            );
            anyhow::ensure!(
                sharding.chunk_bytes > 0,
                "--migration-chunk must be above 0"
            );
            anyhow::ensure!(
                sharding.shard_bytes_min <= sharding.shard_bytes_max,
                "--shard-size-min must not exceed --shard-size-max"
            );
            let buffer_bytes_max =
                pool::parse_size(&agent_buffer_max).context("--agent-buffer-max")?;
            let rate_bytes_max = pool::parse_size(&recovery_rate).context("--recovery-rate")?;
            let reservation_bytes_per_s =
                pool::parse_size(&recovery_reservation).context("--recovery-reservation")?;
            daemon::mount(&daemon::MountArgs {
                pool,
                mountpoint,
                foreground,
                threads: threads.map(usize::from).unwrap_or_else(|| {
                    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 16))
                }),
                io_uring: io_uring == IoUringMode::Auto,
                agent_mode: agents,
                agent_limits: AgentLimits {
                    agents_max: usize::from(agents_max),
                    queue_depth: usize::from(agent_queue_depth),
                    buffer_bytes_max,
                    ..AgentLimits::default()
                },
                recovery: RecoveryOptions {
                    rate_bytes_max,
                    profile: recovery_profile,
                    reservation_bytes_per_s,
                    probe_interval: Duration::from_millis(probe_interval_ms),
                    probe_deadline: Duration::from_millis(probe_deadline_ms),
                    missing_grace: Duration::from_millis(missing_grace_ms),
                    ..RecoveryOptions::default()
                },
                access: (!no_access).then(AccessOptions::default),
                sharding,
                risk: foreshard::risk::service::RiskOptions {
                    interval: Duration::from_secs(risk_interval_s),
                    smartctl: !no_smartctl,
                },
                risk_model: risk_model.map(|m| std::fs::canonicalize(&m).unwrap_or(m)),
            })?;
        }
        Cmd::Disk { cmd } => {
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
                } => {
                    let v = ask(&pool, Request::DiskRemove { disk }, LONG)?;
                    let id = v["disk"].as_u64().unwrap_or(u64::MAX);
                    println!("disk {id} draining");
                    if no_wait {
                        return Ok(ExitCode::SUCCESS);
                    }
                    watch_recovery(&pool, true)?;
                    ask(
                        &pool,
                        Request::RecoverWait {
                            timeout_s: 24 * 3600,
                        },
                        LONG,
                    )?;
                    let s = ask(&pool, Request::Status, LONG)?;
                    let state = s["disks"]
                        .as_array()
                        .and_then(|a| a.iter().find(|d| d["id"].as_u64() == Some(id)))
                        .and_then(|d| d["state"].as_str())
                        .unwrap_or("?")
                        .to_string();
                    println!("disk {id}: {state}");
                    if state != "removed" {
                        anyhow::bail!("disk {id} is not drained (no room on the other disks?)");
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                DiskCmd::Online { pool, disk, json } => {
                    let v = ask(&pool, Request::DiskOnline { disk }, LONG)?;
                    if json {
                        println!("{v}");
                        return Ok(ExitCode::SUCCESS);
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
                    return Ok(ExitCode::SUCCESS);
                }
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
        }
        Cmd::Recover {
            pool,
            watch,
            wait,
            json,
        } => {
            let v = if watch || wait {
                watch_recovery(&pool, watch && !json)?;
                ask(
                    &pool,
                    Request::RecoverWait {
                        timeout_s: 24 * 3600,
                    },
                    LONG,
                )?
            } else {
                ask(&pool, Request::Recover, Duration::from_secs(60))?
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let r: foreshard::recovery::RecoveryStatus =
                    serde_json::from_value(v).context("bad recovery status")?;
                print!("{}", admin::recovery_line(&r));
                if !r.lost_shards.is_empty() {
                    return Ok(ExitCode::from(1));
                }
            }
        }
        Cmd::Umount { mountpoint } => daemon::umount(&mountpoint)?,
        Cmd::Upgrade { pool } => {
            let r = foreshard::upgrade::upgrade(&pool)?;
            for s in &r.skipped {
                eprintln!("warning: {s}: label left as it is (the disk is failed at mount)");
            }
            if r.from == r.to {
                println!("{}: already at format {}", pool.display(), r.to);
            } else {
                println!(
                    "upgraded {} from format {} to {} ({} label(s) rewritten)",
                    pool.display(),
                    r.from,
                    r.to,
                    r.labels_written
                );
            }
        }
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
                if r.debris > 0 {
                    let what = if repair {
                        "removed"
                    } else {
                        "left for the next mount or --repair to remove"
                    };
                    println!(
                        "{} stray extent file(s) (no record names them): {what}",
                        r.debris
                    );
                }
                println!(
                    "fsck: {} inodes, {} extents, {} replicas ({}) verified; {} problem(s), {} repaired, {} left: {}",
                    r.inodes,
                    r.extents,
                    r.replicas_checked,
                    foreshard::util::fmt_bytes(r.bytes_verified),
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
        Cmd::Heat {
            pool,
            json,
            svg,
            top,
        } => {
            let v = ask(&pool, Request::Heat { svg: svg.is_some() }, LONG)?;
            if let (Some(path), Some(doc)) = (&svg, v["svg"].as_str()) {
                std::fs::write(path, doc)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                eprintln!("heat map written to {}", path.display());
            }
            let r: HeatReport =
                serde_json::from_value(v["report"].clone()).context("bad heat report")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", heat_table(&r, top));
            }
        }
        Cmd::Reshard {
            pool,
            dry_run,
            wait,
            json,
        } => {
            let v = ask(&pool, Request::Reshard { dry_run }, LONG)?;
            let s: PlanSummary = serde_json::from_value(v).context("bad plan")?;
            if json && !wait {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else if !json {
                print!("{}", plan_text(&s, dry_run));
            }
            if wait && !dry_run {
                let m = watch_migration(&pool, !json)?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &serde_json::json!({"plan": s, "migration": m})
                        )?
                    );
                } else {
                    print!("{}", admin::migration_line(&m));
                }
            }
        }
        Cmd::Risk { cmd: Some(cmd), .. } => {
            let code = foreshard::risk::run(cmd)?;
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        Cmd::Risk {
            cmd: None,
            pool,
            json,
            health_dir,
            no_health_dir,
            warn,
            evacuate,
        } => {
            let Some(pool) = pool else {
                anyhow::bail!("usage: foreshard risk POOL [--json] (or risk train|score|eval)");
            };
            if health_dir.is_some() || no_health_dir || warn.is_some() || evacuate.is_some() {
                let cur = ask(&pool, Request::Risk { set: None }, Duration::from_secs(60))?;
                let mut s: foreshard::risk::service::RiskSettings =
                    serde_json::from_value(cur["settings"].clone()).context("bad risk settings")?;
                if let Some(d) = health_dir {
                    s.health_dir = Some(foreshard::risk::report::check_health_dir(&d)?);
                }
                if no_health_dir {
                    s.health_dir = None;
                }
                s.warn = warn.unwrap_or(s.warn);
                s.evacuate = evacuate.unwrap_or(s.evacuate);
                s.validate()?;
                ask(
                    &pool,
                    Request::Risk { set: Some(s) },
                    Duration::from_secs(60),
                )?;
            }
            let v = ask(&pool, Request::Risk { set: None }, Duration::from_secs(60))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", foreshard::risk::report::risk_text(&v)?);
            }
        }
        Cmd::Sim(args) => {
            let code = foreshard::sim::run(args)?;
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        Cmd::Trace { cmd } => {
            let code = foreshard::trace::run(cmd)?;
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
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
