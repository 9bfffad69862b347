//! The standby's side (`foreshard standby`): registers `meta/standby/<host>` under a lease,
//! takes the active host's checkpoint and WAL batches, applies and syncs them before it
//! acks, and takes over when `meta/active` is gone while `meta/sync` names it: it stops
//! acking, writes its own cluster record into its copy (with the `meta/sync` revision to
//! compare in the campaign), gives up its registration and mounts.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use parking_lot::Mutex;
use rocksdb::{WriteBatch, WriteOptions, DB};

use foreshard_cluster::batch::{Change, Expect};
use foreshard_cluster::keys::ClusterUrl;
use foreshard_cluster::map::{CasOutcome, Map};
use foreshard_cluster::member::{keep_alive, LeaseState};
use foreshard_cluster::records::{decode, encode, MetaActive, MetaStandby, MetaSync};
use foreshard_cluster::wire::auth;

use crate::cluster::{ClusterConf, CLUSTER_KEY};
use crate::meta::CF_CONFIG;
use crate::pool::{PoolLock, META_DIR};
use crate::standby::{
    check_file_name, recv, send, Msg, CHECKPOINT_FILES_MAX, CHECKPOINT_FILE_BYTES_MAX, IDLE_TIMEOUT,
};

const INCOMING_DIR: &str = "meta.incoming";
const OLD_DIR: &str = "meta.old";
/// `foreshard promote` makes it: the standby asks the active to hand over.
pub const PROMOTE_FILE: &str = "promote.request";
/// Metadata links at once (handshakes included).
const CONNECTIONS_MAX: usize = 4;
/// How often the standby looks at `meta/active` and `meta/sync`.
const WATCH_POLL: Duration = Duration::from_millis(250);

pub struct StandbyArgs {
    pub pool_dir: PathBuf,
    pub url: String,
    /// The pool's id in the map (`init` prints it).
    pub pool: String,
    pub host: String,
    pub secret_file: PathBuf,
    pub listen: String,
    pub lease_ttl_s: i64,
}

/// The standby's copy of the pool's metadata: applies batches exactly as the active wrote
/// them (same sequence numbers), nothing else.
pub struct Follower {
    db: DB,
}

impl Follower {
    pub fn open(dir: &Path) -> anyhow::Result<Follower> {
        Ok(Follower {
            db: crate::meta::open_raw(dir)?,
        })
    }

    pub fn latest(&self) -> u64 {
        self.db.latest_sequence_number()
    }

    /// One batch, which must start right after the last one.
    pub fn apply(&self, seq: u64, data: &[u8]) -> anyhow::Result<()> {
        let last = self.latest();
        if seq != last + 1 {
            bail!("batch at sequence {seq}, but this copy ends at {last}");
        }
        let wb = WriteBatch::from_data(data);
        let n = wb.len() as u64;
        if n == 0 {
            return Ok(()); // takes no sequence number on the active either
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        self.db.write_opt(wb, &wo)?;
        if self.latest() != seq + n - 1 {
            bail!(
                "batch at {seq} of {n} records ends at {}, not {}",
                self.latest(),
                seq + n - 1
            );
        }
        Ok(())
    }

    pub fn sync(&self) -> anyhow::Result<()> {
        Ok(self.db.flush_wal(true)?)
    }

    pub fn conf(&self) -> anyhow::Result<ClusterConf> {
        let cf = self.db.cf_handle(CF_CONFIG).context("no config family")?;
        let b = self
            .db
            .get_cf(cf, CLUSTER_KEY)?
            .context("the copy has no cluster record (not a cluster pool?)")?;
        serde_json::from_slice(&b).context("corrupt cluster record")
    }

    /// Writes (synced) the cluster record the takeover's mount reads.
    pub fn set_conf(&self, conf: &ClusterConf) -> anyhow::Result<()> {
        let cf = self.db.cf_handle(CF_CONFIG).context("no config family")?;
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        let mut wb = WriteBatch::default();
        wb.put_cf(cf, CLUSTER_KEY, serde_json::to_vec(conf)?);
        Ok(self.db.write_opt(wb, &wo)?)
    }
}

struct Shared {
    a: StandbyArgs,
    secret: [u8; 32],
    rt: tokio::runtime::Runtime,
    map: Map,
    follower: Mutex<Option<Follower>>,
    /// A takeover began: nothing more is acked or accepted.
    stop: AtomicBool,
    /// `foreshard promote` asked for a handover (told to the active in every ack).
    handover: AtomicBool,
    conns: AtomicUsize,
    session: Mutex<()>,
}

/// Runs the standby until it has taken over and `mount` (the takeover's mount, in the
/// foreground) returns.
pub fn run(a: StandbyArgs, mount: impl Fn() -> anyhow::Result<()>) -> anyhow::Result<()> {
    foreshard_cluster::keys::check_name("host name", &a.host)?;
    let url = ClusterUrl::parse(&a.url)?;
    let secret = foreshard_cluster::node::read_secret(&a.secret_file)?;
    std::fs::create_dir_all(&a.pool_dir)
        .with_context(|| format!("{}: cannot create", a.pool_dir.display()))?;
    let mut lock = Some(PoolLock::take(&a.pool_dir)?);
    restore_interrupted_swap(&a.pool_dir)?;
    // A request of an earlier run is not this one's.
    let _ = std::fs::remove_file(a.pool_dir.join(PROMOTE_FILE));
    let rt = crate::cluster::runtime()?;
    let map = rt.block_on(Map::connect(&url))?;
    let listener =
        TcpListener::bind(&a.listen).with_context(|| format!("--listen {}", a.listen))?;
    let meta = a.pool_dir.join(META_DIR);
    let follower = match meta.join("CURRENT").exists() {
        true => Some(Follower::open(&meta)?),
        false => None,
    };
    let sh = Arc::new(Shared {
        a,
        secret,
        rt,
        map,
        follower: Mutex::new(follower),
        stop: AtomicBool::new(false),
        handover: AtomicBool::new(false),
        conns: AtomicUsize::new(0),
        session: Mutex::new(()),
    });
    let mut reg = register(&sh)?;
    let s2 = sh.clone();
    std::thread::Builder::new()
        .name("standby-accept".into())
        .spawn(move || accept(&s2, listener))?;
    tracing::info!(
        "standby {} of pool {} on {}",
        sh.a.host,
        sh.a.pool,
        sh.a.listen
    );
    loop {
        let rev = wait_for_takeover(&sh);
        sh.stop.store(true, Ordering::SeqCst);
        prepare_takeover(&sh, rev)?;
        let _ = std::fs::remove_file(sh.a.pool_dir.join(PROMOTE_FILE));
        reg.0.abort();
        let _ = sh
            .rt
            .block_on(sh.map.revoke(reg.1.lease.load(Ordering::Acquire)));
        drop(lock.take());
        tracing::warn!(
            "the active metadata host is gone and meta/sync names this standby: taking over"
        );
        let Err(e) = mount() else { return Ok(()) };
        // Lost the race (the active won its lease again, say): a standby again.
        tracing::error!("takeover failed: {e:#}; standing by again");
        lock = Some(PoolLock::take(&sh.a.pool_dir)?);
        *sh.follower.lock() = Some(Follower::open(&meta)?);
        sh.handover.store(false, Ordering::SeqCst);
        sh.stop.store(false, Ordering::SeqCst);
        reg = register(&sh)?;
    }
}

/// Polls until this standby may take over; returns the `meta/sync` revision to compare.
fn wait_for_takeover(sh: &Shared) -> i64 {
    loop {
        std::thread::sleep(WATCH_POLL);
        let promote = sh.a.pool_dir.join(PROMOTE_FILE).exists();
        if promote && !sh.handover.swap(true, Ordering::SeqCst) {
            tracing::warn!("promote: asking the active metadata host to hand over");
        }
        match may_take_over(sh) {
            Ok(Some(rev)) => return rev,
            Ok(None) => {}
            Err(e) => tracing::warn!("cannot read the pool's metadata records: {e:#}"),
        }
    }
}

/// The `meta/sync` revision to take over with: `meta/active` gone, `meta/sync` naming this
/// host, and a copy loaded.
fn may_take_over(sh: &Shared) -> anyhow::Result<Option<i64>> {
    let keys = sh.map.keys();
    if sh
        .rt
        .block_on(sh.map.get(&keys.meta_active(&sh.a.pool)))?
        .is_some()
    {
        return Ok(None);
    }
    let key = keys.meta_sync(&sh.a.pool);
    let Some(kv) = sh.rt.block_on(sh.map.get(&key))? else {
        return Ok(None);
    };
    let rec = decode::<MetaSync>(&key, &kv.value)?.body;
    if rec.standby.as_deref() != Some(sh.a.host.as_str()) || sh.follower.lock().is_none() {
        return Ok(None);
    }
    Ok(Some(kv.mod_revision))
}

/// Closes the copy after writing this host's cluster record into it.
fn prepare_takeover(sh: &Shared, rev: i64) -> anyhow::Result<()> {
    // Waits for a batch being applied: acks sent after this are of synced batches.
    let f = sh.follower.lock().take().context("no copy")?;
    let mut conf = f.conf()?;
    conf.url = sh.a.url.clone();
    conf.host = sh.a.host.clone();
    conf.secret_file = std::fs::canonicalize(&sh.a.secret_file)?;
    conf.lease_ttl_s = sh.a.lease_ttl_s;
    conf.takeover_sync_rev = Some(rev);
    f.set_conf(&conf)?;
    tracing::info!("copy at sequence {} handed to the mount", f.latest());
    Ok(())
}

/// `meta/standby/<host>` under a lease, kept alive (made again after a lapse).
fn register(sh: &Shared) -> anyhow::Result<(tokio::task::JoinHandle<()>, Arc<LeaseState>)> {
    let key = sh.map.keys().meta_standby(&sh.a.pool, &sh.a.host);
    let rec = MetaStandby {
        addr: sh.a.listen.clone(),
        started_ms: crate::util::now_ms(),
    };
    let (map, ttl) = (sh.map.clone(), sh.a.lease_ttl_s);
    let lease = sh.rt.block_on(put_leased(&map, &key, &rec, ttl))?;
    let state = Arc::new(LeaseState {
        lease: AtomicI64::new(lease),
        flaps: AtomicU32::new(0),
        valid_until: parking_lot::Mutex::new(std::time::Instant::now()),
    });
    let st = state.clone();
    let task = sh.rt.spawn(async move {
        loop {
            let lease = st.lease.load(Ordering::Acquire);
            if let Err(e) = keep_alive(&map, lease, ttl, &st).await {
                tracing::warn!("standby registration: {e:#}");
            }
            match put_leased(&map, &key, &rec, ttl).await {
                Ok(l) => st.lease.store(l, Ordering::Release),
                Err(e) => {
                    tracing::warn!("cannot register the standby again: {e:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    Ok((task, state))
}

async fn put_leased(map: &Map, key: &str, rec: &MetaStandby, ttl: i64) -> anyhow::Result<i64> {
    let lease = map.grant(ttl).await?;
    for _ in 0..3 {
        let expect = match map.get(key).await? {
            Some(kv) => Expect::Revision(kv.mod_revision),
            None => Expect::Absent,
        };
        let op = rand::random();
        let mut c = Change::put(key.to_string(), expect, encode(op, rec));
        c.lease = lease;
        if let CasOutcome::Applied { .. } = map.cas(op, &[c], None).await? {
            return Ok(lease);
        }
    }
    bail!("{key} kept changing")
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A checkpoint swap cut short: the old copy comes back.
fn restore_interrupted_swap(dir: &Path) -> anyhow::Result<()> {
    let (meta, old) = (dir.join(META_DIR), dir.join(OLD_DIR));
    if !meta.join("CURRENT").exists() && old.join("CURRENT").exists() {
        if meta.exists() {
            std::fs::remove_dir_all(&meta)?;
        }
        std::fs::rename(&old, &meta)?;
    }
    Ok(())
}

fn accept(sh: &Arc<Shared>, listener: TcpListener) {
    for conn in listener.incoming() {
        // Taking over (or mounted): no links; a failed takeover stands by again.
        let Ok(s) = conn else { continue };
        if sh.stop.load(Ordering::SeqCst) {
            continue;
        }
        // A thread per connection (a few at most), so one that never says hello cannot
        // keep the active out.
        if sh.conns.fetch_add(1, Ordering::SeqCst) >= CONNECTIONS_MAX {
            sh.conns.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let sh = sh.clone();
        let spawned = std::thread::Builder::new()
            .name("standby-link".into())
            .spawn(move || {
                let peer = s.peer_addr().map_or("?".into(), |a| a.to_string());
                if let Err(e) = serve(&sh, s) {
                    tracing::warn!("metadata link from {peer}: {e:#}");
                }
                sh.conns.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            tracing::error!("cannot start a thread for a metadata link");
        }
    }
}

fn serve(sh: &Shared, s: TcpStream) -> anyhow::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IDLE_TIMEOUT))?;
    s.set_write_timeout(Some(IDLE_TIMEOUT))?;
    let mut rd = std::io::BufReader::with_capacity(256 << 10, s.try_clone()?);
    let mut wr = s;
    let active = hello(sh, &mut rd, &mut wr)?;
    // One active's session at a time (a newer one waits for the idle time-out of an
    // older, dead one).
    let _session = sh.session.lock();
    let files = receive_checkpoint(sh, &mut rd)?;
    let seq = swap_in(sh)?;
    tracing::info!("checkpoint from {active}: {files} files, at sequence {seq}");
    send(&mut wr, &Msg::Loaded { seq }, &[])?;
    let mut buf = Vec::new();
    loop {
        let m = recv(&mut rd, &mut buf)?;
        let g = sh.follower.lock();
        let Some(f) = g.as_ref().filter(|_| !sh.stop.load(Ordering::SeqCst)) else {
            let _ = send(
                &mut wr,
                &Msg::Refused {
                    why: "taking over".into(),
                },
                &[],
            );
            bail!("taking over: link closed");
        };
        match m {
            Msg::Batch { seq } => f.apply(seq, &buf)?,
            Msg::Sync { seq } => {
                if f.latest() != seq {
                    bail!("sync at {seq}, but the copy ends at {}", f.latest());
                }
                f.sync()?;
                drop(g);
                let handover = sh.handover.load(Ordering::SeqCst);
                send(&mut wr, &Msg::Ack { seq, handover }, &[])?;
            }
            m => bail!("unexpected {m:?}"),
        }
    }
}

/// Checks the active's proof of the secret and its term; returns its host name.
fn hello(sh: &Shared, rd: &mut impl Read, wr: &mut TcpStream) -> anyhow::Result<String> {
    let sn: [u8; 32] = rand::random();
    send(wr, &Msg::Challenge { nonce: sn }, &[])?;
    let mut buf = Vec::new();
    let Msg::Hello {
        pool,
        host,
        term,
        nonce,
        mac,
    } = recv(rd, &mut buf)?
    else {
        bail!("no hello");
    };
    let ok = pool == sh.a.pool
        && auth::macs_equal(
            &mac,
            &auth::hello_mac(&sh.secret, &sn, &nonce, &pool, &host),
        );
    if !ok {
        let why = "wrong pool or secret".to_string();
        let _ = send(wr, &Msg::Refused { why: why.clone() }, &[]);
        bail!("{why} (host {host:?}, pool {pool:?})");
    }
    // Only the pool's current active: a deposed one's checkpoint would replace a newer copy.
    let key = sh.map.keys().meta_active(&sh.a.pool);
    let cur = sh.rt.block_on(sh.map.get(&key))?;
    let current = cur.as_ref().is_some_and(|kv| {
        kv.create_revision == term
            && decode::<MetaActive>(&key, &kv.value).is_ok_and(|r| r.body.host == host)
    });
    if !current || sh.stop.load(Ordering::SeqCst) {
        let why = format!("{host} under term {term} is not the pool's active metadata host");
        let _ = send(wr, &Msg::Refused { why: why.clone() }, &[]);
        bail!("{why}");
    }
    let mac = auth::server_mac(&sh.secret, &sn, &nonce, &sh.a.host);
    send(wr, &Msg::HelloOk { mac }, &[])?;
    Ok(host)
}

/// The checkpoint's files into `meta.incoming`, each checked and synced.
fn receive_checkpoint(sh: &Shared, rd: &mut impl Read) -> anyhow::Result<u32> {
    let inc = sh.a.pool_dir.join(INCOMING_DIR);
    if inc.exists() {
        std::fs::remove_dir_all(&inc)?;
    }
    std::fs::create_dir(&inc)?;
    let mut buf = Vec::new();
    let mut files = 0u32;
    loop {
        match recv(rd, &mut buf)? {
            Msg::File { name, len, sum } => {
                check_file_name(&name)?;
                if len > CHECKPOINT_FILE_BYTES_MAX || files >= CHECKPOINT_FILES_MAX {
                    bail!("checkpoint over the limits ({files} files, {name}: {len} bytes)");
                }
                receive_file(rd, &inc.join(&name), len, &sum)
                    .with_context(|| format!("checkpoint file {name}"))?;
                files += 1;
            }
            Msg::CheckpointDone { files: n } if n == files => break,
            m => bail!("unexpected {m:?} in a checkpoint of {files} files"),
        }
    }
    sync_dir(&inc)?;
    Ok(files)
}

fn receive_file(rd: &mut impl Read, path: &Path, len: u64, sum: &[u8; 32]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    let mut h = blake3::Hasher::new();
    let mut left = len;
    let mut buf = Vec::new();
    while left > 0 {
        match recv(rd, &mut buf)? {
            Msg::Data if buf.len() as u64 <= left => {}
            m => bail!("{m:?} ({} bytes) with {left} bytes left", buf.len()),
        }
        h.update(&buf);
        f.write_all(&buf)?;
        left -= buf.len() as u64;
    }
    if h.finalize().as_bytes() != sum {
        bail!("checksum mismatch");
    }
    f.sync_all()?;
    Ok(())
}

/// Replaces the copy with the received checkpoint; returns its last sequence number.
fn swap_in(sh: &Shared) -> anyhow::Result<u64> {
    let dir = &sh.a.pool_dir;
    let (meta, old, inc) = (
        dir.join(META_DIR),
        dir.join(OLD_DIR),
        dir.join(INCOMING_DIR),
    );
    let mut g = sh.follower.lock();
    if sh.stop.load(Ordering::SeqCst) {
        bail!("taking over");
    }
    *g = None;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    if meta.exists() {
        std::fs::rename(&meta, &old)?;
    }
    std::fs::rename(&inc, &meta)?;
    sync_dir(dir)?;
    let f = match Follower::open(&meta) {
        Ok(f) => f,
        Err(e) => {
            // The old copy back: it may still be the one meta/sync names.
            let _ = std::fs::rename(&meta, dir.join(INCOMING_DIR));
            if old.exists() {
                std::fs::rename(&old, &meta)?;
                *g = Follower::open(&meta).ok();
            }
            return Err(e.context("the received checkpoint does not open"));
        }
    };
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    let seq = f.latest();
    *g = Some(f);
    Ok(seq)
}
