//! A pool whose disks are on storage hosts (docs/cluster.md, step 8), the open side
//! (`init --cluster` is `cluster_init`). Opening one campaigns for the pool's `meta/active`
//! record (its create_revision is the term every extent request carries), copies the map's
//! placements over RocksDB's where they differ, and reaches each disk through its host's
//! extent service ([`crate::remote::RemoteDisk`]). Placement changes go to the map first
//! ([`crate::fs::PlacementSink`]).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Context};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use foreshard_cluster::batch::{Change, Expect};
use foreshard_cluster::campaign::{campaign, Active, Lineage};
use foreshard_cluster::keys::{shard_of_key, ClusterUrl};
use foreshard_cluster::map::{CasOutcome, Kv, Map};
use foreshard_cluster::node::{read_secret, DiskStat};
use foreshard_cluster::records::{decode, encode, HostRec, MetaActive, MetaSync, ShardRecord};
use foreshard_cluster::wire::{Client, ClientConfig};

use crate::meta::{Meta, PoolConfig, ShardRec, CF_CONFIG};
use crate::remote::{HostLink, RemoteDisk};
use crate::risk::collect::Health;
use crate::store::Disk;

/// The cluster record in the pool's config column family.
pub const CLUSTER_KEY: &[u8] = b"cluster";
/// A remote disk's `DiskRec.path`: `node://HOST/UUID`.
pub const REMOTE_SCHEME: &str = "node://";
/// The metadata host's lease: the pool counts as unmounted this long after a crash.
pub const META_LEASE_TTL_S: i64 = 10;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClusterConf {
    pub url: String,
    /// The pool's name in the map (`pools/<pool>/`): its pool id.
    pub pool: String,
    /// This metadata host's name in the cluster.
    pub host: String,
    pub secret_file: PathBuf,
    pub lease_ttl_s: i64,
    /// Set by a standby taking over: the `meta/sync` revision that named it, compared in
    /// the campaign (cleared once the mount won).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub takeover_sync_rev: Option<i64>,
}

pub fn remote_path(host: &str, uuid: &str) -> String {
    format!("{REMOTE_SCHEME}{host}/{uuid}")
}

/// (host, uuid) of a remote disk's path.
pub fn parse_remote(path: &str) -> Option<(&str, &str)> {
    path.strip_prefix(REMOTE_SCHEME)?.split_once('/')
}

/// Whether `d` is a disk of storage host `host`.
pub fn on_host(d: &Disk, host: &str) -> bool {
    parse_remote(&d.root.to_string_lossy()).is_some_and(|(h, _)| h == host)
}

pub fn conf_of(meta: &Meta) -> anyhow::Result<Option<ClusterConf>> {
    match meta.get_raw(CF_CONFIG, CLUSTER_KEY)? {
        None => Ok(None),
        Some(b) => Ok(Some(
            serde_json::from_slice(&b).context("corrupt cluster record in pool metadata")?,
        )),
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Two workers: keep-alives, the member health task and the extent connections' tasks;
    // the callers are the filesystem's own threads (blocking wrappers).
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fs-cluster")
        .enable_all()
        .build()?)
}

pub fn shard_record(s: &ShardRec) -> ShardRecord {
    ShardRecord {
        epoch: s.epoch,
        disks: s.disks.clone(),
        class: s.class,
    }
}

/// A cluster pool's standby metadata host as the active sees it (`status`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StandbyStatus {
    pub host: String,
    /// "copying" (the checkpoint), "catching up" (acking, not named yet) or "named" (in
    /// `meta/sync`: every fsync waits for its ack, and it takes over if this host goes).
    pub state: String,
    /// The last WAL sequence number it acknowledged.
    pub acked_seq: u64,
}

/// The open side: this host is the pool's active metadata host while this lives.
pub struct Cluster {
    rt: tokio::runtime::Runtime,
    pub map: Map,
    pub conf: ClusterConf,
    active: Mutex<Option<Active>>,
    term: Arc<std::sync::atomic::AtomicI64>,
    /// The term won at open: the one `meta/sync` names this copy's lineage with (a lease
    /// that lapsed and was won again raises `term`, not this).
    lineage: i64,
    /// Each shard record's mod_revision as last written or read (the CAS compare).
    shard_revs: Mutex<HashMap<u32, i64>>,
    health: tokio::task::JoinHandle<()>,
    secret: [u8; 32],
    /// One link per storage host the pool has disks on, and the host's number in the pool.
    links: Mutex<BTreeMap<String, (Arc<HostLink>, u32)>>,
    /// The standby, while one is connected (set by `standby::ship`).
    pub(crate) standby: Mutex<Option<StandbyStatus>>,
    /// `host add` and `host release` one at a time (pool disk ids, the map's disk records).
    pub(crate) admin: Mutex<()>,
    /// The map's `diskstat/` records by disk uuid, and when they were read.
    stats: Mutex<(Option<std::time::Instant>, Arc<StatsByUuid>)>,
}

type StatsByUuid = HashMap<String, DiskStat>;

/// `diskstat/` is read at most this often (once per risk round, not once per disk).
const STATS_MAX_AGE: std::time::Duration = std::time::Duration::from_millis(500);

impl Cluster {
    /// The hosts' latest disk stats (cached for `STATS_MAX_AGE`; the last good read while
    /// etcd does not answer).
    fn disk_stats(&self) -> Arc<StatsByUuid> {
        let mut g = self.stats.lock();
        if g.0.is_some_and(|t| t.elapsed() < STATS_MAX_AGE) {
            return g.1.clone();
        }
        let prefix = self.map.keys().disk_stats();
        match self.rt.block_on(self.map.read_prefix(&prefix)) {
            Ok(snap) => {
                let mut out = HashMap::new();
                for kv in snap.kvs {
                    match decode::<DiskStat>(&kv.key, &kv.value) {
                        Ok(st) => {
                            out.insert(kv.key.trim_start_matches(&prefix).to_string(), st.body);
                        }
                        Err(e) => tracing::warn!("{e:#}"),
                    }
                }
                *g = (Some(std::time::Instant::now()), Arc::new(out));
            }
            Err(e) => {
                // Not again until STATS_MAX_AGE: every remote disk of a round asks.
                g.0 = Some(std::time::Instant::now());
                tracing::warn!("cannot read disk stats from the cluster map: {e:#}");
            }
        }
        g.1.clone()
    }
}

impl crate::risk::service::RemoteHealth for Cluster {
    fn health(&self, d: &Disk) -> Option<Result<Health, String>> {
        let path = d.root.to_string_lossy();
        let (host, uuid) = parse_remote(&path)?;
        let stats = self.disk_stats();
        let st = stats.get(uuid)?;
        if let Some(e) = &st.health_error {
            return Some(Err(format!("host {host}: {e}")));
        }
        let v = st.health.clone()?;
        Some(match serde_json::from_value::<Health>(v) {
            Ok(mut h) => {
                h.source = format!("host {host}: {}", h.source);
                Ok(h)
            }
            Err(e) => Err(format!("host {host}: unreadable health snapshot: {e}")),
        })
    }
}

impl Cluster {
    pub fn term(&self) -> i64 {
        self.term.load(Ordering::Acquire)
    }
}

impl Cluster {
    /// Unmount: the pool is free for another metadata host at once, not after the TTL.
    /// Placement changes fail from here on.
    pub fn resign(&self) {
        if let Some(a) = self.active.lock().take() {
            if let Err(e) = self.rt.block_on(a.resign(&self.map)) {
                tracing::warn!("cannot give up the metadata lease: {e:#}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.health.abort();
        self.resign();
    }
}

/// Opens the cluster side of a pool: campaign, the map's placements copied over `meta`'s,
/// one extent-service connection per host. Returns the disks for the store.
/// `after_win` runs once the campaign is won, before the disks are reached (the copy's
/// lineage check: `standby::lineage::after_win`).
pub fn open(
    conf: &ClusterConf,
    (meta, cfg): (&Meta, &PoolConfig),
    (terms, after_win): (Vec<i64>, impl FnOnce(&Cluster) -> anyhow::Result<()>),
) -> anyhow::Result<(Arc<Cluster>, Vec<Arc<Disk>>)> {
    let url = ClusterUrl::parse(&conf.url)?;
    let secret = read_secret(&conf.secret_file)?;
    let rt = runtime()?;
    let map = rt.block_on(Map::connect(&url))?;
    // spawn_health spawns onto the runtime it is called in.
    let health = {
        let _in = rt.enter();
        map.spawn_health()
    };
    let me = MetaActive {
        host: conf.host.clone(),
        addr: String::new(),
        started_ms: crate::util::now_ms(),
    };
    let takeover = takeover_compare(&rt, &map, conf, &terms)?;
    let lineage = Lineage {
        terms,
        on_deposed: Arc::new(crate::supervise::refuse_writes),
    };
    let ttl = conf.lease_ttl_s;
    let active = rt.block_on(campaign(&map, &conf.pool, &me, ttl, (takeover, lineage)))?;
    let term = active.term.clone();
    let lineage = term.load(Ordering::Acquire);
    let (hosts, shards) = rt.block_on(read_hosts_and_shards(&map, &conf.pool))?;
    let shard_revs = reconcile_shards(meta, cfg, &shards)?;
    let cluster = Arc::new(Cluster {
        rt,
        map,
        conf: conf.clone(),
        active: Mutex::new(Some(active)),
        term,
        lineage,
        shard_revs: Mutex::new(shard_revs),
        health,
        secret,
        links: Mutex::new(BTreeMap::new()),
        admin: Mutex::new(()),
        standby: Mutex::new(None),
        stats: Mutex::new((None, Arc::new(HashMap::new()))),
    });
    if let Err(e) = after_win(&cluster) {
        cluster.resign();
        return Err(e);
    }
    if let Err(e) = cluster.free_stranded_claims(meta) {
        tracing::warn!("cannot check the map's disk claims: {e:#}");
    }
    let disks = remote_disks(&cluster, meta, &hosts)?;
    Ok((cluster, disks))
}

/// The `meta/sync` revision a standby's takeover compares, unless that takeover already
/// won (a crash after the win: `meta/sync` names this host, and a plain campaign is right).
/// Also refuses a plain mount of a copy that is behind before it campaigns (so it never
/// holds `meta/active`; `standby::lineage::check` checks again after the win).
fn takeover_compare(
    rt: &tokio::runtime::Runtime,
    map: &Map,
    conf: &ClusterConf,
    terms: &[i64],
) -> anyhow::Result<Option<(String, i64)>> {
    let cur = read_meta_sync(rt, map, &conf.pool)?;
    let Some(rev) = conf.takeover_sync_rev else {
        check_copy(cur.as_ref(), &conf.host, terms)?;
        return Ok(None);
    };
    if cur.is_some_and(|s| s.host.as_deref() == Some(conf.host.as_str())) {
        return Ok(None);
    }
    Ok(Some((map.keys().meta_sync(&conf.pool), rev)))
}

pub(crate) fn read_meta_sync(
    rt: &tokio::runtime::Runtime,
    map: &Map,
    pool: &str,
) -> anyhow::Result<Option<MetaSync>> {
    let key = map.keys().meta_sync(pool);
    match rt.block_on(map.get(&key))? {
        None => Ok(None),
        Some(kv) => Ok(Some(decode::<MetaSync>(&key, &kv.value)?.body)),
    }
}

/// Refuses a copy of the metadata (of `host`, which held `terms`) that `meta/sync` says is
/// not the current one.
pub(crate) fn check_copy(s: Option<&MetaSync>, host: &str, terms: &[i64]) -> anyhow::Result<()> {
    match s.filter(|s| !s.allows(host, terms)) {
        None => Ok(()),
        Some(s) => bail!(
            "this copy of the pool's metadata is out of date: host {} has held the pool since (term {}), a standby that took over. Mount it there, or run `foreshard standby` here for a fresh copy",
            s.host.as_deref().unwrap_or("?"),
            s.term
        ),
    }
}

/// Live hosts' addresses, and the pool's shard records.
async fn read_hosts_and_shards(
    map: &Map,
    pool: &str,
) -> anyhow::Result<(BTreeMap<String, String>, Vec<Kv>)> {
    let keys = map.keys();
    let mut hosts = BTreeMap::new();
    for kv in map.read_prefix(&keys.hosts()).await?.kvs {
        let rec = decode::<HostRec>(&kv.key, &kv.value)?.body;
        hosts.insert(
            kv.key.trim_start_matches(&keys.hosts()).to_string(),
            rec.addr,
        );
    }
    let shards = map.read_prefix(&keys.shards(pool)).await?.kvs;
    Ok((hosts, shards))
}

/// The map is the truth for placements: RocksDB records that differ are rewritten (a crash
/// between the map's commit and RocksDB's). Returns each shard's mod_revision.
fn reconcile_shards(
    meta: &Meta,
    cfg: &PoolConfig,
    kvs: &[Kv],
) -> anyhow::Result<HashMap<u32, i64>> {
    let mut revs = HashMap::new();
    let local: HashMap<u32, ShardRec> = meta.shards()?.into_iter().collect();
    let mut b = meta.batch();
    let mut fixed = 0;
    for kv in kvs {
        let shard = shard_of_key(&kv.key).with_context(|| format!("bad shard key {}", kv.key))?;
        let r = decode::<ShardRecord>(&kv.key, &kv.value)?.body;
        revs.insert(shard, kv.mod_revision);
        let old = local.get(&shard);
        if old.is_some_and(|o| o.epoch == r.epoch && o.disks == r.disks && o.class == r.class) {
            continue;
        }
        if let Some(o) = old.filter(|o| o.epoch > r.epoch) {
            // Every change goes to the map first: a newer record here means the map lost
            // one (restored from an old snapshot?). Neither side is safe to take.
            bail!(
                "shard {shard}: epoch {} here but {} in the cluster map; refusing to guess which placement holds the data",
                o.epoch,
                r.epoch
            );
        }
        if let Some(o) = old {
            for d in o.disks.iter().filter(|d| !r.disks.contains(d)) {
                b.del_disk_shard(*d, shard);
            }
        }
        for d in &r.disks {
            b.put_disk_shard(*d, shard);
        }
        let rec = ShardRec {
            epoch: r.epoch,
            disks: r.disks,
            class: r.class,
        };
        b.put_shard(shard, &rec);
        fixed += 1;
    }
    // Re-sharding adds shards past the initial count; the map must hold every one here.
    if let Some(s) = local.keys().find(|s| !revs.contains_key(s)) {
        bail!(
            "the cluster map lacks shard {s} (it holds {} shards, the pool {}, initially {})",
            revs.len(),
            local.len(),
            cfg.shard_count
        );
    }
    if fixed > 0 {
        tracing::warn!(fixed, "shard placements copied from the cluster map");
        meta.write(b)?;
        meta.sync_wal()?;
    }
    Ok(revs)
}

/// One link per storage host (connected on first use: a host that is down at mount has its
/// disks suspect, then failed after the host grace), one [`RemoteDisk`] per pool disk.
fn remote_disks(
    cluster: &Arc<Cluster>,
    meta: &Meta,
    hosts: &BTreeMap<String, String>,
) -> anyhow::Result<Vec<Arc<Disk>>> {
    let recs = meta.disks()?;
    let mut names: Vec<&str> = Vec::new();
    for rec in &recs {
        let Some((host, _)) = parse_remote(&rec.path) else {
            bail!(
                "disk {} ({}): a local disk in a cluster pool",
                rec.id,
                rec.path
            );
        };
        if !names.contains(&host) {
            names.push(host);
        }
    }
    names.sort_unstable();
    // Host numbers in name order at open; a host added later gets the next one.
    for n in &names {
        cluster.link(n);
    }
    let mut disks = Vec::new();
    for rec in &recs {
        let (host, uuid) = parse_remote(&rec.path).expect("checked above");
        if !hosts.contains_key(host) {
            eprintln!(
                "warning: disk {} ({}): host {host} is not alive",
                rec.id, rec.path
            );
        }
        disks.push(cluster.remote_disk(rec.id, (host, uuid), rec.state));
    }
    Ok(disks)
}

impl Cluster {
    /// The link to `host` and its number in the pool, made now if there is none.
    fn link(self: &Arc<Self>, host: &str) -> (Arc<HostLink>, u32) {
        let mut links = self.links.lock();
        let next = 1 + links.len() as u32;
        links
            .entry(host.to_string())
            .or_insert_with(|| {
                // Parsed at open, so it parses here.
                let url = ClusterUrl::parse(&self.conf.url).expect("parsed at open");
                let link = host_link(self, (host, &url.cluster), self.secret);
                (Arc::new(link), next)
            })
            .clone()
    }

    /// A store disk for pool disk `id`, disk `uuid` on `host`.
    pub(crate) fn remote_disk(
        self: &Arc<Self>,
        id: u32,
        (host, uuid): (&str, &str),
        state: crate::meta::DiskState,
    ) -> Arc<Disk> {
        let (link, host_no) = self.link(host);
        let io = RemoteDisk::new(link, uuid, host_no, self.term.clone());
        Arc::new(Disk::remote(
            id,
            remote_path(host, uuid),
            state,
            Arc::new(io),
        ))
    }

    pub(crate) fn lineage_term(&self) -> i64 {
        self.lineage
    }

    pub(crate) fn secret(&self) -> [u8; 32] {
        self.secret
    }

    pub(crate) fn rt(&self) -> &tokio::runtime::Runtime {
        &self.rt
    }

    /// The term compare for map changes; an error once resigned.
    pub(crate) fn term_compare(&self) -> anyhow::Result<foreshard_cluster::batch::Term> {
        self.active
            .lock()
            .as_ref()
            .map(|a| a.term())
            .context("resigned")
    }
}

/// Connects to `host` at the address its live `hosts/` record gives (a host that is not
/// alive in the map is unreachable).
fn host_link(cluster: &Arc<Cluster>, (host, pool): (&str, &str), secret: [u8; 32]) -> HostLink {
    let (map, rt) = (cluster.map.clone(), cluster.rt.handle().clone());
    let cfg = ClientConfig::new(pool, &cluster.conf.host, secret);
    let name = host.to_string();
    let connect = Box::new(move || -> std::io::Result<Client> {
        let unreachable =
            |why: String| std::io::Error::new(std::io::ErrorKind::HostUnreachable, why);
        let key = map.keys().host(&name);
        let kv = rt
            .block_on(map.get(&key))
            .map_err(|e| unreachable(format!("cluster map: {e:#}")))?
            .ok_or_else(|| unreachable(format!("host {name} is not alive in the cluster map")))?;
        let rec = decode::<HostRec>(&key, &kv.value)
            .map_err(|e| unreachable(format!("{e:#}")))?
            .body;
        let addr = rec
            .addr
            .parse()
            .map_err(|_| unreachable(format!("host {name}: bad address {}", rec.addr)))?;
        Ok(Client::connect(rt.clone(), addr, cfg.clone())?)
    });
    HostLink::new(host, connect)
}

impl crate::fs::PlacementSink for Cluster {
    fn commit(&self, changes: &[(u32, ShardRec)]) -> anyhow::Result<Vec<bool>> {
        let keys = self.map.keys();
        let op = rand::random();
        let list: Vec<Change> = {
            let revs = self.shard_revs.lock();
            changes
                .iter()
                .map(|(s, rec)| {
                    let expect = revs.get(s).map_or(Expect::Absent, |r| Expect::Revision(*r));
                    let value = encode(op, &shard_record(rec));
                    Change::put(keys.shard(&self.conf.pool, *s), expect, value)
                })
                .collect()
        };
        let term = self.term_compare()?;
        let outcomes = self.rt.block_on(self.map.commit(op, list, Some(&term)))?;
        let mut out = Vec::with_capacity(changes.len());
        let mut revs = self.shard_revs.lock();
        for (batch, outcome) in outcomes {
            let applied = match outcome {
                CasOutcome::Applied { revision } => {
                    for c in &batch {
                        revs.extend(shard_of_key(&c.key).map(|s| (s, revision)));
                    }
                    true
                }
                CasOutcome::Conflict { current } => {
                    for kv in &current {
                        revs.extend(shard_of_key(&kv.key).map(|s| (s, kv.mod_revision)));
                    }
                    false
                }
                CasOutcome::Deposed => bail!("this host is no longer the active metadata host"),
            };
            out.extend(std::iter::repeat_n(applied, batch.len()));
        }
        Ok(out)
    }
}
