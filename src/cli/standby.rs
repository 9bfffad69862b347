//! `foreshard standby`: keep a copy of a cluster pool's metadata on this host and take the
//! pool over (mount it here) when its active metadata host goes away (docs/cluster.md,
//! "The metadata host and its standby").

use std::path::PathBuf;

use foreshard::standby::follow::{run, StandbyArgs};

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
