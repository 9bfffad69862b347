//! `foreshard standby`: keep a copy of a cluster pool's metadata on this host and take the
//! pool over (mount it here) when its active metadata host goes away (docs/cluster.md,
//! "The metadata host and its standby").

use std::path::PathBuf;

use foreshard::standby_host::{run, StandbyArgs};

use super::pool::MountCmd;

#[derive(clap::Args)]
pub struct StandbyCmd {
    /// POOL (this host's copy of the pool's metadata; made if missing) and MOUNTPOINT
    /// (where the pool is mounted at a takeover), then the mount's options.
    #[command(flatten)]
    mount: MountCmd,
    /// The etcd members and the cluster's name: etcd://HOST:PORT[,HOST:PORT...][/CLUSTER]
    #[arg(long)]
    cluster: String,
    /// The pool's id in the cluster map (`init` prints it; `foreshard hosts` lists pools).
    #[arg(long = "pool-id")]
    pool_id: String,
    /// This host's name in the cluster [default: the hostname].
    #[arg(long)]
    name: Option<String>,
    /// Where the active metadata host sends the metadata (an address it can reach).
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// The cluster's shared secret (as for `foreshard node`).
    #[arg(long, value_name = "FILE")]
    secret_file: PathBuf,
    /// The standby's registration, and after a takeover the metadata lease (2 to 300).
    #[arg(long, default_value_t = foreshard::cluster::META_LEASE_TTL_S)]
    lease_ttl_s: i64,
}

pub fn standby(a: StandbyCmd) -> anyhow::Result<()> {
    if a.listen.ip().is_unspecified() {
        anyhow::bail!(
            "--listen {}: give the address the active host reaches this one at",
            a.listen
        );
    }
    let host = match a.name {
        Some(n) => n,
        None => super::node::hostname()?,
    };
    let args = StandbyArgs {
        pool_dir: a.mount.pool.clone(),
        url: a.cluster,
        pool: a.pool_id,
        host,
        secret_file: a.secret_file,
        listen: a.listen.to_string(),
        lease_ttl_s: a.lease_ttl_s,
    };
    let mut m = a.mount;
    // This process has threads (the map's runtime): no fork.
    m.foreground = true;
    run(args, move || super::pool::mount(m.clone()))
}

#[derive(clap::Args)]
pub struct PromoteCmd {
    /// The standby's copy of the pool (the POOL `foreshard standby` runs with).
    pool: PathBuf,
    /// Give up after this long.
    #[arg(long, default_value_t = 60)]
    timeout_s: u64,
}

/// Asks the standby running on `pool` to take over: it tells the active host, which
/// unmounts keeping it named; then it mounts. Waits until it has.
pub fn promote(a: PromoteCmd) -> anyhow::Result<()> {
    use foreshard::standby_host::PROMOTE_FILE;
    let pid_file = a.pool.join(foreshard::daemon::PID_FILE);
    if daemon_alive(&pid_file) {
        anyhow::bail!("{}: mounted here already", a.pool.display());
    }
    match foreshard::pool::PoolLock::take(&a.pool) {
        Ok(_free) => anyhow::bail!(
            "{}: no standby runs on it (start `foreshard standby` first)",
            a.pool.display()
        ),
        Err(e) if e.is::<foreshard::pool::PoolBusy>() => {}
        Err(e) => return Err(e),
    }
    std::fs::write(a.pool.join(PROMOTE_FILE), b"")?;
    let t0 = std::time::Instant::now();
    while !daemon_alive(&pid_file) {
        if t0.elapsed().as_secs() >= a.timeout_s {
            let _ = std::fs::remove_file(a.pool.join(PROMOTE_FILE));
            anyhow::bail!(
                "no takeover within {} s (is the standby named in meta/sync? see its log)",
                a.timeout_s
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    println!(
        "{}: taken over in {:.1} s",
        a.pool.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn daemon_alive(pid_file: &std::path::Path) -> bool {
    let pid = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
    // SAFETY: signal 0 only checks that the process exists.
    pid.is_some_and(|p| unsafe { libc::kill(p, 0) } == 0)
}
