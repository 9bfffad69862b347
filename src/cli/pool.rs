//! `foreshard init`, `mount`, `umount`, `upgrade`: a pool's life cycle.

use std::path::PathBuf;

use foreshard::access::AccessOptions;
use foreshard::agents::{AgentLimits, AgentMode};
use foreshard::daemon;
use foreshard::pool;
use foreshard::recovery::RecoveryOptions;
use foreshard::risk::service::RiskOptions;
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
    #[arg(
        long = "disk",
        required_unless_present = "cluster",
        conflicts_with = "cluster"
    )]
    pub disks: Vec<PathBuf>,
    /// Make a pool over the storage hosts of this cluster (etcd://HOST:PORT[,...][/CLUSTER]):
    /// it claims every free disk they registered (`foreshard node`).
    #[arg(long, requires = "secret_file")]
    pub cluster: Option<String>,
    /// The cluster's shared secret (as given to `foreshard node`).
    #[arg(long, value_name = "FILE", requires = "cluster")]
    pub secret_file: Option<PathBuf>,
    /// This host's name in the cluster [default: the hostname].
    #[arg(long, requires = "cluster")]
    pub name: Option<String>,
    /// The metadata host's lease (2 to 300 s): a standby takes over this long after the
    /// mount's host stops answering.
    #[arg(long, requires = "cluster", default_value_t = foreshard::cluster::META_LEASE_TTL_S)]
    pub lease_ttl_s: i64,
    #[arg(long, default_value_t = 2)]
    pub replicas: u32,
    #[arg(long, default_value = "1MiB", value_parser = util::parse_size)]
    pub extent_size: u64,
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
        cluster,
        secret_file,
        name,
        lease_ttl_s,
    } = a;
    let health_dir = health_dir
        .map(|d| foreshard::risk::report::check_health_dir(&d))
        .transpose()?;
    let args = pool::InitArgs {
        pool: p.clone(),
        disks: disks.clone(),
        replicas,
        extent_size,
        health_dir,
    };
    let (cfg, ndisks) = match cluster {
        None => (pool::init(&args)?, disks.len()),
        Some(url) => {
            let c = foreshard::cluster_init::ClusterArgs {
                url,
                secret_file: secret_file.expect("clap: required with --cluster"),
                host: match name {
                    Some(n) => n,
                    None => super::node::hostname()?,
                },
                lease_ttl_s,
            };
            let cfg = foreshard::cluster_init::init(&args, &c)?;
            let meta = foreshard::meta::Meta::open(&p.join(pool::META_DIR), false)?;
            (cfg, meta.disks()?.len())
        }
    };
    println!(
        "created pool {} at {}: {} disk(s), {} replica(s), extent {}, {} shards",
        cfg.pool_id,
        p.display(),
        ndisks,
        cfg.replicas,
        foreshard::util::fmt_bytes(cfg.extent_size),
        cfg.shard_count
    );
    Ok(())
}

#[derive(Clone, clap::Args)]
pub struct MountCmd {
    pub pool: PathBuf,
    pub mountpoint: PathBuf,
    #[arg(long)]
    pub foreground: bool,
    /// FUSE worker threads, 1 to 64 (default: one per CPU, at least 2 and at most 16;
    /// more threads help parallel I/O, fewer help a single stream of metadata operations).
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
    #[command(flatten)]
    pub agent_limits: AgentLimits,
    #[command(flatten)]
    pub recovery: RecoveryOptions,
    /// Run without the access analyzer (and so without re-sharding).
    #[arg(long)]
    pub no_access: bool,
    #[command(flatten)]
    pub sharding: ShardingOptions,
    #[command(flatten)]
    pub risk: RiskOptions,
    /// Failure model file (default: the shipped model, trained on Backblaze data).
    #[arg(long)]
    pub risk_model: Option<PathBuf>,
}

pub fn mount(a: MountCmd) -> anyhow::Result<()> {
    if let Some(m) = &a.risk_model {
        // Refused before daemonizing, with the reason.
        foreshard::risk::service::load_model(Some(m))?;
    }
    a.sharding.validate()?;
    daemon::mount(&daemon::MountArgs {
        threads: a.threads.map(usize::from).unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 16))
        }),
        io_uring: a.io_uring == IoUringMode::Auto,
        agent_mode: a.agents,
        agent_limits: a.agent_limits,
        recovery: a.recovery,
        access: (!a.no_access).then(AccessOptions::default),
        sharding: a.sharding,
        risk: a.risk,
        risk_model: a.risk_model.map(|m| std::fs::canonicalize(&m).unwrap_or(m)),
        pool: a.pool,
        mountpoint: a.mountpoint,
        foreground: a.foreground,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::MountCmd;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        mount: MountCmd,
    }

    fn parse(flags: &[&str]) -> Result<MountCmd, String> {
        let args = ["foreshard", "POOL", "MNT"].iter().chain(flags);
        Cli::try_parse_from(args)
            .map(|c| c.mount)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn mount_flags_fill_the_daemon_options_with_their_defaults() {
        let m = parse(&[]).unwrap();
        assert_eq!(m.recovery.probe_interval, Duration::from_secs(1));
        assert_eq!(m.recovery.missing_grace, Duration::from_secs(10));
        assert_eq!(m.recovery.reservation_bytes_per_s, 8 << 20);
        assert_eq!(m.recovery.fail_after, 3);
        assert_eq!(m.sharding.interval, Some(Duration::from_secs(600)));
        assert_eq!(m.sharding.rate_bytes_per_s, 16 << 20);
        assert_eq!(m.agent_limits.agents_max, 8);
        assert_eq!(m.agent_limits.buffer_bytes_max, 64 << 20);
        assert_eq!(m.agent_limits.fds_max, 2048);
        assert_eq!(m.risk.interval, Duration::from_secs(60));
        assert!(m.risk.smartctl);
    }

    #[test]
    fn mount_flags_take_units_and_refuse_out_of_range_values() {
        let m = parse(&[
            "--probe-interval-ms=250",
            "--missing-grace-ms=2s",
            "--reshard-interval-s=0",
            "--migration-rate=1MiB",
            "--agents-max=16",
            "--no-smartctl",
        ])
        .unwrap();
        assert_eq!(m.recovery.probe_interval, Duration::from_millis(250));
        assert_eq!(m.recovery.missing_grace, Duration::from_secs(2));
        assert_eq!(m.sharding.interval, None);
        assert_eq!(m.sharding.rate_bytes_per_s, 1 << 20);
        assert_eq!(m.agent_limits.agents_max, 16);
        assert!(!m.risk.smartctl);
        for (flag, want) in [
            ("--probe-interval-ms=5", "--probe-interval-ms"),
            ("--agents-max=0", "--agents-max"),
            ("--agent-queue-depth=65", "--agent-queue-depth"),
            ("--migration-rate=1XB", "--migration-rate"),
            ("--risk-interval-s=0", "--risk-interval-s"),
        ] {
            let Err(e) = parse(&[flag]) else {
                panic!("{flag} was accepted")
            };
            assert!(e.contains(want), "{flag}: {e}");
        }
    }
}
