//! `foreshard node`: run this machine as a storage host of a cluster (docs/cluster.md):
//! join under a lease, register the disks with host and rack, publish their space, serve
//! their extents (the extent service, `wire`), leave on SIGINT or SIGTERM.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use parking_lot::Mutex;

use foreshard::remote::StoreBackend;
use foreshard::util::fmt_bytes;
use foreshard_cluster::keys::ClusterUrl;
use foreshard_cluster::map::Map;
use foreshard_cluster::node::{
    check_config, read_secret, HealthFn, Node, NodeConfig, DISKSTAT_INTERVAL,
};
use foreshard_cluster::records::{decode, DiskRecord};
use foreshard_cluster::view::{read_view, ClusterView};
use foreshard_cluster::wire::{Audit, Class, Fence, Server, ServerConfig};

#[derive(clap::Args)]
pub struct NodeCmd {
    /// The etcd members and the cluster's name: etcd://HOST:PORT[,HOST:PORT...][/CLUSTER]
    #[arg(long)]
    cluster: String,
    /// A directory this host serves (repeat for each disk).
    #[arg(long = "disk", value_name = "DIR", required = true)]
    disks: Vec<PathBuf>,
    /// Failure domain above the host (a rack, a room); replicas avoid sharing one.
    #[arg(long)]
    rack: Option<String>,
    /// This host's name in the cluster [default: the hostname].
    #[arg(long)]
    name: Option<String>,
    /// Where the extent service listens.
    #[arg(long, default_value = "0.0.0.0:7070")]
    listen: SocketAddr,
    /// The address other hosts reach this one at [default: --listen, which must then name
    /// an address, not 0.0.0.0].
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// The host counts as gone this long after its last keep-alive (2 to 300).
    #[arg(long, default_value_t = 10)]
    lease_ttl_s: i64,
    /// Take disks whose label names another host (a disk moved between chassis).
    #[arg(long)]
    adopt: bool,
    /// The secret the cluster's hosts share (32 bytes or 64 hex digits, mode 600): every
    /// extent-service connection proves it both ways.
    #[arg(long, value_name = "FILE")]
    secret_file: PathBuf,
    /// Log every write and remove the fence accepted or refused, one JSON line each
    /// (rotated to FILE.1 at 64 MiB).
    #[arg(long, value_name = "FILE")]
    audit_log: Option<PathBuf>,
    /// Directory with SMART health files, `N.json` (smartctl --json) or `N.prom` (a
    /// node_exporter textfile) for the N-th --disk, counting from 0; they win over smartctl.
    #[arg(long, value_name = "DIR")]
    health_dir: Option<PathBuf>,
    /// Never run smartctl on the disks' devices (health files only).
    #[arg(long)]
    no_smartctl: bool,
    /// Seconds between publishing each disk's space and health to the cluster map.
    #[arg(long, default_value_t = DISKSTAT_INTERVAL.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    stat_interval_s: u64,
    /// Caps the recovery copies this host serves and receives, MiB/s (0: no cap). Client
    /// reads and writes are never capped.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    recovery_mib_s: u64,
    /// Caps migration copies (evacuation, re-sharding, drains), MiB/s (0: no cap).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    migration_mib_s: u64,
}

/// The node's health source: the N-th disk's file in `dir`, else smartctl on the block
/// device under the disk directory (when it has SMART and `smartctl` is allowed).
fn health_source(dir: Option<PathBuf>, smartctl: bool) -> HealthFn {
    use foreshard::risk::collect;
    type Reading = Result<collect::Health, String>;
    // smartctl wakes the drive and may take seconds: at most once per SMARTCTL_INTERVAL per
    // disk, its last answer published in between (a health file is read every time).
    let last: Mutex<HashMap<usize, (Instant, Reading)>> = Mutex::new(HashMap::new());
    Arc::new(move |i, disk| {
        let file = match &dir {
            Some(d) => collect::read_health_file(d, i as u32).map(|r| r.map_err(|e| e.to_string())),
            None => None,
        };
        let snap = file.or_else(|| {
            let mut last = last.lock();
            if let Some((_, r)) = last
                .get(&i)
                .filter(|(at, _)| at.elapsed() < SMARTCTL_INTERVAL)
            {
                return Some(r.clone());
            }
            let dev = collect::block_device_of(disk).ok().flatten()?;
            let r = (smartctl && collect::has_smart(&dev))
                .then(|| collect::run_smartctl(&dev, SMARTCTL_TIMEOUT))?;
            last.insert(i, (Instant::now(), r.clone()));
            Some(r)
        });
        match snap {
            Some(Ok(h)) => (serde_json::to_value(&h).ok(), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        }
    })
}

/// How often the node runs smartctl on a disk.
const SMARTCTL_INTERVAL: Duration = Duration::from_secs(600);

/// smartctl is killed after this (a hung device must not hold the stats up).
const SMARTCTL_TIMEOUT: Duration = Duration::from_secs(20);

pub fn run(a: NodeCmd) -> anyhow::Result<()> {
    let url = ClusterUrl::parse(&a.cluster)?;
    let addr = match a.advertise {
        Some(ad) => ad,
        None if !a.listen.ip().is_unspecified() => a.listen,
        None => bail!(
            "--listen {} is not an address others can reach: give --advertise IP:PORT",
            a.listen
        ),
    };
    let name = match a.name {
        Some(n) => n,
        None => hostname()?,
    };
    let config = NodeConfig {
        name,
        disks: a.disks,
        rack: a.rack,
        addr: addr.to_string(),
        lease_ttl_s: a.lease_ttl_s,
        adopt: a.adopt,
    };
    // Two threads: etcd keep-alives and diskstat puts are all this process does besides
    // serving, and they must not wait behind each other.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let audit = match &a.audit_log {
        Some(p) => Some(Arc::new(
            Audit::open(p).with_context(|| format!("--audit-log {}", p.display()))?,
        )),
        None => None,
    };
    if let Some(d) = &a.health_dir {
        if !d.is_dir() {
            bail!("--health-dir {}: not a directory", d.display());
        }
    }
    let stats = (
        health_source(a.health_dir, !a.no_smartctl),
        Duration::from_secs(a.stat_interval_s),
    );
    let rates_mib_s = [a.recovery_mib_s, a.migration_mib_s];
    rt.block_on(serve(
        url,
        config,
        (a.listen, audit, rates_mib_s),
        &a.secret_file,
        stats,
    ))
}

async fn serve(
    url: ClusterUrl,
    config: NodeConfig,
    (listen, audit, [recovery_mib_s, migration_mib_s]): (SocketAddr, Option<Arc<Audit>>, [u64; 2]),
    secret_file: &Path,
    (health_fn, stat_interval): (HealthFn, Duration),
) -> anyhow::Result<()> {
    // Local mistakes first, before anything waits on the network.
    check_config(&config)?;
    let secret = read_secret(secret_file)?;
    // Listening before joining: once others see the host, its address answers.
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}"))?;
    let map = Map::connect(&url).await?;
    let health = map.spawn_health();
    let mut node = Node::start(&map, config).await?;
    node.health = Some(health_fn);
    if let Err(e) = node.publish_stats(&map).await {
        tracing::warn!("diskstat: {e:#}");
    }
    let disks: Vec<(u32, PathBuf, String)> = (0u32..)
        .zip(&node.disks)
        .map(|(i, (uuid, dir))| (i, dir.clone(), uuid.clone()))
        .collect();
    let block = foreshard_cluster::wire::BLOCK_BYTES_DEFAULT as usize;
    let backend = Arc::new(StoreBackend::open(&disks, block)?);
    let mut scfg = ServerConfig::new(&url.cluster, &node.config.name, secret);
    scfg.audit = audit;
    let server = Server::serve(listener, scfg, backend)?;
    server.set_rate(Class::Recovery, recovery_mib_s << 20);
    server.set_rate(Class::Migration, migration_mib_s << 20);
    println!(
        "node {} joined cluster {} (lease {}): {}",
        node.config.name,
        url.cluster,
        node.membership.lease(),
        node.disks
            .iter()
            .map(|(u, d)| format!("{} = {u}", d.display()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let fences: Vec<(String, Arc<Fence>)> = (0u32..)
        .zip(&node.disks)
        .filter_map(|(i, (uuid, _))| Some((uuid.clone(), server.fence(i)?)))
        .collect();
    let released = tokio::spawn(forget_released(map.clone(), fences, stat_interval));
    let r = node.run(&map, stat_interval, stop_signal()).await;
    released.abort();
    server.shutdown();
    health.abort();
    r.context("leaving the cluster")?;
    println!("node left the cluster");
    Ok(())
}

/// Forgets the shard epochs of disks whose record names no pool any more (`host remove`
/// released them), so that the next pool to claim one starts its shards' epochs low.
async fn forget_released(map: Map, disks: Vec<(String, Arc<Fence>)>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        for (uuid, fence) in &disks {
            let key = map.keys().disk(uuid);
            let Ok(Some(kv)) = map.get(&key).await else {
                continue;
            };
            let free = decode::<DiskRecord>(&key, &kv.value).is_ok_and(|r| r.body.pool.is_none());
            if !free {
                continue;
            }
            match tokio::task::block_in_place(|| fence.release()) {
                Ok(true) => {
                    tracing::info!(disk = %uuid, "released by its pool: shard epochs forgotten")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(disk = %uuid, "cannot clear the fence of a released disk: {e}")
                }
            }
        }
    }
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers the node runs until killed; its lease then lapses.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}

pub fn hostname() -> anyhow::Result<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("reading the hostname: give --name")?;
    Ok(h.trim().to_string())
}

#[derive(clap::Args)]
pub struct HostsCmd {
    /// The etcd members and the cluster's name: etcd://HOST:PORT[,HOST:PORT...][/CLUSTER]
    #[arg(long)]
    cluster: String,
    #[arg(long)]
    json: bool,
}

/// `foreshard hosts`: the cluster map's hosts and disks, at one etcd revision.
pub fn hosts(a: HostsCmd) -> anyhow::Result<()> {
    let url = ClusterUrl::parse(&a.cluster)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let view = rt.block_on(async {
        let map = Map::connect(&url).await?;
        read_view(&map, &url.cluster).await
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", render_hosts(&view));
    }
    if !view.bad_records.is_empty() {
        bail!(
            "{} cluster map record(s) could not be read",
            view.bad_records.len()
        );
    }
    Ok(())
}

fn render_hosts(v: &ClusterView) -> String {
    use std::fmt::Write;
    let alive = v.hosts.iter().filter(|h| h.alive).count();
    let mut out = format!(
        "cluster {} (etcd revision {}): {} host(s), {alive} alive\n",
        v.cluster,
        v.revision,
        v.hosts.len()
    );
    let opt = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "{:<16} {:<6} {:<9} {:<21} {:<8} {:>5}",
        "host", "alive", "state", "addr", "rack", "disks"
    );
    for h in &v.hosts {
        let state = h
            .state
            .map_or("-".into(), |s| format!("{s:?}").to_lowercase());
        let alive = if h.alive { "yes" } else { "NO" };
        let _ = writeln!(
            out,
            "{:<16} {:<6} {:<9} {:<21} {:<8} {:>5}",
            h.name,
            alive,
            state,
            opt(&h.addr),
            opt(&h.rack),
            h.disks.len()
        );
    }
    let _ = writeln!(
        out,
        "\n{:<32} {:<16} {:<9} {:<10} {:>10} {:>10}  path",
        "disk", "host", "state", "pool", "used", "free"
    );
    for h in &v.hosts {
        for d in &h.disks {
            let bytes = |b: Option<u64>| b.map_or("-".into(), fmt_bytes);
            let state = d.record.state.name();
            let _ = writeln!(
                out,
                "{:<32} {:<16} {:<9} {:<10} {:>10} {:>10}  {}",
                d.uuid,
                h.name,
                state,
                opt(&d.record.pool),
                bytes(d.used_bytes),
                bytes(d.free_bytes),
                d.record.path
            );
        }
    }
    for b in &v.bad_records {
        let _ = writeln!(out, "unreadable: {b}");
    }
    out
}
