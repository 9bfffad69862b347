//! `foreshard init`, `mount`, `umount`, `upgrade`: a pool's life cycle.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use foreshard::access::AccessOptions;
use foreshard::agents::{AgentLimits, AgentMode};
use foreshard::daemon;
use foreshard::pool;
use foreshard::recovery::{Profile, RecoveryOptions};
use foreshard::sharding::ShardingOptions;
use foreshard::util;

/// `foreshard mount --io-uring`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IoUringMode {
    Auto,
    Off,
}

#[derive(clap::Args)]
pub struct InitCmd {
    pub pool: PathBuf,
    /// A backing disk directory (give at least --replicas of them).
    #[arg(long = "disk", required = true)]
    pub disks: Vec<PathBuf>,
    #[arg(long, default_value_t = 2)]
    pub replicas: u32,
    #[arg(long, default_value = "1MiB")]
    pub extent_size: String,
    /// Directory of per-disk health files (`<disk id>.json` smartctl --json output,
    /// `<disk id>.prom` node_exporter textfile); change it later with `risk POOL`.
    #[arg(long)]
    pub health_dir: Option<PathBuf>,
}

pub fn init(a: InitCmd) -> anyhow::Result<()> {
    let InitCmd {
        pool: p,
        disks,
        replicas,
        extent_size,
        health_dir,
    } = a;
    let extent_size = util::parse_size(&extent_size)?;
    let health_dir = health_dir
        .map(|d| foreshard::risk::report::check_health_dir(&d))
        .transpose()?;
    let cfg = pool::init(&pool::InitArgs {
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
    Ok(())
}

#[derive(clap::Args)]
pub struct MountCmd {
    pub pool: PathBuf,
    pub mountpoint: PathBuf,
    #[arg(long)]
    pub foreground: bool,
    /// FUSE worker threads (default: one per CPU, at least 2; more threads help
    /// parallel I/O, fewer help a single stream of metadata operations).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: Option<u16>,
    /// FUSE requests over io_uring, one queue per CPU served on that CPU (`auto`: when
    /// the kernel offers it: Linux 6.14+ with /sys/module/fuse/parameters/enable_uring
    /// = Y; `off`: /dev/fuse only). FORGET and interrupts always use /dev/fuse.
    #[arg(long, value_enum, default_value = "auto")]
    pub io_uring: IoUringMode,
    /// Recovery agents: `pool` (made before any failure) or `reactive` (made after it).
    #[arg(long, value_enum, default_value = "pool")]
    pub agents: AgentMode,
    /// Most recovery agents (each one io_uring ring and one thread while recovering).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub agents_max: u16,
    /// Registered buffer memory over all agents.
    #[arg(long, default_value = "64MiB")]
    pub agent_buffer_max: String,
    /// Extents each agent keeps in flight.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub agent_queue_depth: u16,
    /// Recovery copy rate limit per second (e.g. 200MiB; 0 = none).
    #[arg(long, default_value = "0")]
    pub recovery_rate: String,
    /// Recovery rate per second kept however busy clients are (mClock reservation).
    #[arg(long, default_value = "8MiB")]
    pub recovery_reservation: String,
    /// Recovery's share of bandwidth while clients do I/O (0.25, 0.5, 0.9).
    #[arg(long, value_enum, default_value = "balanced")]
    pub recovery_profile: Profile,
    /// Disk health probe (write, fsync, read back) period in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60000))]
    pub probe_interval_ms: u64,
    /// A probe running longer than this counts as failed (milliseconds).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=600000))]
    pub probe_deadline_ms: u64,
    /// A disk whose root or label vanished stays suspect this long (milliseconds)
    /// before it is failed and its data rebuilt elsewhere.
    #[arg(long, default_value_t = 10000, value_parser = clap::value_parser!(u64).range(0..=3600000))]
    pub missing_grace_ms: u64,
    /// Run without the access analyzer (and so without re-sharding).
    #[arg(long)]
    pub no_access: bool,
    /// Automatic re-sharding period in seconds (0: only `foreshard reshard`).
    #[arg(long, default_value_t = 600)]
    pub reshard_interval_s: u64,
    /// Migration budget: bytes copied per second by re-sharding.
    #[arg(long, default_value = "16MiB")]
    pub migration_rate: String,
    /// Migration copies and commits this much at a time.
    #[arg(long, default_value = "8MiB")]
    pub migration_chunk: String,
    /// Largest shard the sharding engine forms or keeps.
    #[arg(long, default_value = "256MiB")]
    pub shard_size_max: String,
    /// Shards the engine formed that fall below this are merged.
    #[arg(long, default_value = "4MiB")]
    pub shard_size_min: String,
    /// Seconds between risk collections (health files, smartctl, /sys stats).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub risk_interval_s: u64,
    /// Failure model file (default: the shipped model, trained on Backblaze data).
    #[arg(long)]
    pub risk_model: Option<PathBuf>,
    /// Never run smartctl (health files and foreshard's own signals only).
    #[arg(long)]
    pub no_smartctl: bool,
}

pub fn mount(a: MountCmd) -> anyhow::Result<()> {
    if let Some(m) = &a.risk_model {
        // Refused before daemonizing, with the reason.
        foreshard::risk::service::load_model(Some(m))?;
    }
    let sharding = sharding_options(&a)?;
    let recovery = recovery_options(&a)?;
    let buffer_bytes_max = util::parse_size(&a.agent_buffer_max).context("--agent-buffer-max")?;
    daemon::mount(&daemon::MountArgs {
        threads: a.threads.map(usize::from).unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 16))
        }),
        io_uring: a.io_uring == IoUringMode::Auto,
        agent_mode: a.agents,
        agent_limits: AgentLimits {
            agents_max: usize::from(a.agents_max),
            queue_depth: usize::from(a.agent_queue_depth),
            buffer_bytes_max,
            ..AgentLimits::default()
        },
        recovery,
        access: (!a.no_access).then(AccessOptions::default),
        sharding,
        risk: foreshard::risk::service::RiskOptions {
            interval: Duration::from_secs(a.risk_interval_s),
            smartctl: !a.no_smartctl,
        },
        risk_model: a.risk_model.map(|m| std::fs::canonicalize(&m).unwrap_or(m)),
        pool: a.pool,
        mountpoint: a.mountpoint,
        foreground: a.foreground,
    })
}

fn sharding_options(a: &MountCmd) -> anyhow::Result<ShardingOptions> {
    let s = ShardingOptions {
        interval: (a.reshard_interval_s > 0).then(|| Duration::from_secs(a.reshard_interval_s)),
        rate_bytes_per_s: util::parse_size(&a.migration_rate).context("--migration-rate")?,
        chunk_bytes: util::parse_size(&a.migration_chunk).context("--migration-chunk")?,
        shard_bytes_max: util::parse_size(&a.shard_size_max).context("--shard-size-max")?,
        shard_bytes_min: util::parse_size(&a.shard_size_min).context("--shard-size-min")?,
        ..ShardingOptions::default()
    };
    anyhow::ensure!(s.rate_bytes_per_s > 0, "--migration-rate must be above 0");
    anyhow::ensure!(s.chunk_bytes > 0, "--migration-chunk must be above 0");
    anyhow::ensure!(
        s.shard_bytes_min <= s.shard_bytes_max,
        "--shard-size-min must not exceed --shard-size-max"
    );
    Ok(s)
}

fn recovery_options(a: &MountCmd) -> anyhow::Result<RecoveryOptions> {
    Ok(RecoveryOptions {
        rate_bytes_max: util::parse_size(&a.recovery_rate).context("--recovery-rate")?,
        profile: a.recovery_profile,
        reservation_bytes_per_s: util::parse_size(&a.recovery_reservation)
            .context("--recovery-reservation")?,
        probe_interval: Duration::from_millis(a.probe_interval_ms),
        probe_deadline: Duration::from_millis(a.probe_deadline_ms),
        missing_grace: Duration::from_millis(a.missing_grace_ms),
        ..RecoveryOptions::default()
    })
}

pub fn upgrade(pool: PathBuf) -> anyhow::Result<()> {
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
    Ok(())
}
