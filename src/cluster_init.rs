//! `init --cluster` (docs/cluster.md, step 8): claims the free disks the storage hosts
//! registered in the etcd map, writes the pool's config and shards there first, then the
//! pool's own metadata (RocksDB) naming each disk `node://HOST/UUID`. Apart from `cluster`
//! (the open side) because it builds on `pool`, which opens through `cluster`.

use std::path::PathBuf;

use anyhow::{bail, Context};

use foreshard_cluster::batch::{Change, Expect};
use foreshard_cluster::keys::ClusterUrl;
use foreshard_cluster::map::{CasOutcome, Map};
use foreshard_cluster::node::read_secret;
use foreshard_cluster::records::{decode, encode, DiskRecord};

use crate::cluster::{remote_path, runtime, shard_record, ClusterConf, CLUSTER_KEY};
use crate::meta::{DiskRec, DiskState, PoolConfig, ShardRec};

/// A registered disk `init` (or `host add`) may claim.
pub(crate) struct FreeDisk {
    pub uuid: String,
    pub rec: DiskRecord,
    pub revision: i64,
}

/// The disks no pool has claimed (or `also` has), on hosts that are alive, in (host, path)
/// order.
pub(crate) async fn free_disks(map: &Map, also: Option<&str>) -> anyhow::Result<Vec<FreeDisk>> {
    let keys = map.keys();
    let hosts = map.read_prefix(&keys.hosts()).await?;
    let alive: Vec<String> = hosts
        .kvs
        .iter()
        .map(|kv| kv.key.trim_start_matches(&keys.hosts()).to_string())
        .collect();
    let snap = map.read_prefix(&keys.disks()).await?;
    let mut out = Vec::new();
    for kv in &snap.kvs {
        let rec = decode::<DiskRecord>(&kv.key, &kv.value)?.body;
        let claimable = rec.pool.is_none() || (also.is_some() && rec.pool.as_deref() == also);
        if claimable && rec.state == DiskState::Up && alive.contains(&rec.host) {
            out.push(FreeDisk {
                uuid: kv.key.trim_start_matches(&keys.disks()).to_string(),
                rec,
                revision: kv.mod_revision,
            });
        }
    }
    out.sort_by(|a, b| (&a.rec.host, &a.rec.path).cmp(&(&b.rec.host, &b.rec.path)));
    Ok(out)
}

/// What `init --cluster` is given besides the common arguments.
pub struct ClusterArgs {
    pub url: String,
    pub secret_file: PathBuf,
    /// This host's name [default: the hostname].
    pub host: String,
    /// The metadata lease.
    pub lease_ttl_s: i64,
}

/// Claims the free disks, writes config and shards to the map, then the pool's metadata.
pub fn init(a: &crate::pool::InitArgs, c: &ClusterArgs) -> anyhow::Result<PoolConfig> {
    let url = ClusterUrl::parse(&c.url)?;
    read_secret(&c.secret_file)?;
    foreshard_cluster::keys::check_name("host name", &c.host)?;
    if !(2..=300).contains(&c.lease_ttl_s) {
        bail!("--lease-ttl-s {}: use 2 to 300 s", c.lease_ttl_s);
    }
    let secret_file = std::fs::canonicalize(&c.secret_file)
        .with_context(|| format!("--secret-file {}", c.secret_file.display()))?;
    let rt = runtime()?;
    let map = rt.block_on(Map::connect(&url))?;
    let free = rt.block_on(free_disks(&map, None))?;
    let hosts: Vec<&str> = {
        let mut h: Vec<&str> = free.iter().map(|d| d.rec.host.as_str()).collect();
        h.dedup();
        h
    };
    if free.len() < a.replicas as usize {
        bail!(
            "the cluster map has {} free disk(s) on live hosts; --replicas {} needs at least that many (start `foreshard node` on the storage hosts)",
            free.len(),
            a.replicas
        );
    }
    if hosts.len() < a.replicas as usize {
        eprintln!(
            "warning: {} host(s) for {} replicas: some shards keep two replicas on one host",
            hosts.len(),
            a.replicas
        );
    }
    crate::pool::init_with(a, |meta_dir, pool_id| {
        let conf = ClusterConf {
            url: c.url.clone(),
            pool: pool_id.to_string(),
            host: c.host.clone(),
            secret_file: secret_file.clone(),
            lease_ttl_s: c.lease_ttl_s,
            takeover_sync_rev: None,
        };
        let (disks, shards) = layout(&free, &hosts, a.replicas as usize);
        let cfg = crate::pool::pool_config(a, pool_id, shards.len() as u32);
        rt.block_on(claim(&map, &conf, (&free, &cfg), &shards))?;
        let extra = [(CLUSTER_KEY, serde_json::to_vec(&conf)?)];
        let res = crate::pool::write_pool_meta(a, meta_dir, (&disks, &shards), pool_id, &extra);
        if res.is_err() {
            rt.block_on(release(&map, &conf.pool, &free));
        }
        res
    })
}

/// The pool's disks (ids in (host, path) order) and its initial shards over them.
fn layout(free: &[FreeDisk], hosts: &[&str], replicas: usize) -> (Vec<DiskRec>, Vec<ShardRec>) {
    let host_no = |h: &str| 1 + hosts.iter().position(|x| *x == h).expect("listed") as u32;
    let ids: Vec<u32> = (0..free.len() as u32).collect();
    let on: Vec<u32> = free.iter().map(|d| host_no(&d.rec.host)).collect();
    let shards = crate::pool::initial_shards_on(&ids, &on, replicas);
    let disks = free
        .iter()
        .zip(&ids)
        .map(|(d, id)| DiskRec {
            id: *id,
            path: remote_path(&d.rec.host, &d.uuid),
            state: DiskState::Up,
        })
        .collect();
    (disks, shards)
}

/// One commit: the disk claims first (a disk claimed meanwhile fails the first transaction,
/// so nothing is claimed), then the config and the shards.
async fn claim(
    map: &Map,
    conf: &ClusterConf,
    (free, cfg): (&[FreeDisk], &PoolConfig),
    shards: &[ShardRec],
) -> anyhow::Result<()> {
    let keys = map.keys();
    let op = rand::random();
    let mut changes = Vec::new();
    for (i, d) in free.iter().enumerate() {
        let rec = DiskRecord {
            pool: Some(conf.pool.clone()),
            pool_disk: Some(i as u32),
            ..d.rec.clone()
        };
        let key = keys.disk(&d.uuid);
        changes.push(Change::put(
            key,
            Expect::Revision(d.revision),
            encode(op, &rec),
        ));
    }
    let key = keys.pool_config(&conf.pool);
    changes.push(Change::put(key, Expect::Absent, encode(op, cfg)));
    for (i, s) in shards.iter().enumerate() {
        let key = keys.shard(&conf.pool, i as u32);
        changes.push(Change::put(
            key,
            Expect::Absent,
            encode(op, &shard_record(s)),
        ));
    }
    for (batch, outcome) in map.commit(op, changes, None).await? {
        if let CasOutcome::Conflict { .. } | CasOutcome::Deposed = outcome {
            release(map, &conf.pool, free).await;
            bail!(
                "the cluster map changed meanwhile ({} and {} more record(s) not as read): run init again",
                batch[0].key,
                batch.len() - 1
            );
        }
    }
    Ok(())
}

/// Best effort after a failed init: the disks this pool claimed are free again, its config
/// and shards gone.
async fn release(map: &Map, pool: &str, free: &[FreeDisk]) {
    let keys = map.keys();
    for d in free {
        let key = keys.disk(&d.uuid);
        if let Ok(Some(kv)) = map.get(&key).await {
            let mine = decode::<DiskRecord>(&key, &kv.value)
                .is_ok_and(|r| r.body.pool.as_deref() == Some(pool));
            if mine {
                let op = rand::random();
                let back = Change::put(key, Expect::Revision(kv.mod_revision), encode(op, &d.rec));
                let _ = map.cas(op, &[back], None).await;
            }
        }
    }
    let _ = map
        .delete_prefix(&format!("{}pools/{pool}/", keys.all()))
        .await;
}
