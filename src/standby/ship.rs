//! The active metadata host's side: finds the pool's standby in the map, sends it a
//! checkpoint and then the WAL up to what is durable here, and names it in `meta/sync` once
//! its acks cover everything synced so far. Every WAL sync waits for an ack that covers it
//! while the standby is named (or being named); one that gets none within `ACK_TIMEOUT`
//! first removes the standby from `meta/sync` (a failed removal fails the sync: EIO).

use std::io::{BufWriter, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use parking_lot::{Condvar, Mutex};

use foreshard_cluster::batch::{Change, Expect};
use foreshard_cluster::map::CasOutcome;
use foreshard_cluster::records::{decode, encode, MetaStandby, MetaSync};
use foreshard_cluster::wire::auth;

use super::{recv, send, Msg, ACK_TIMEOUT, CONNECT_TIMEOUT, HEARTBEAT, IDLE_TIMEOUT};
use crate::cluster::Cluster;
use crate::meta::Meta;

/// Pause between sessions (a standby that is down, refuses, or fell behind).
const RETRY: Duration = Duration::from_secs(1);
const CHUNK_BYTES: usize = 1 << 20;
/// Written batches kept in memory for the standby; one that falls further behind reads
/// them from the WAL.
const TAP_BYTES_MAX: usize = 32 << 20;

#[derive(Clone, Debug, PartialEq)]
enum Naming {
    /// Not in `meta/sync`: syncs do not wait.
    None,
    /// Acks must reach `need` (everything synced when naming began) before it is named;
    /// syncs wait for acks meanwhile.
    Pending {
        need: u64,
    },
    Named {
        host: String,
    },
}

struct St {
    naming: Naming,
    acked: u64,
    /// The highest sequence number a sync waits for (the shipper's cue).
    target: u64,
    stop: bool,
    /// The standby asked to take over: the unmount keeps it named.
    handover: bool,
}

/// What the WAL syncs and the shipper share.
pub struct Replica {
    st: Mutex<St>,
    cv: Condvar,
    /// One `meta/sync` change at a time.
    etcd: Mutex<()>,
    cluster: Arc<Cluster>,
}

/// The shipping thread; stopped (and the standby dropped from `meta/sync`) at unmount.
pub struct Shipper {
    replica: Arc<Replica>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Shipper {
    pub fn stop(&mut self) {
        self.replica.st.lock().stop = true;
        self.replica.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts shipping `meta` to the pool's standby (when one registers) and makes every WAL
/// sync wait for it.
pub fn start(meta: Arc<Meta>, cluster: Arc<Cluster>, pool_dir: &Path) -> anyhow::Result<Shipper> {
    let replica = Arc::new(Replica {
        st: Mutex::new(St {
            naming: Naming::None,
            acked: 0,
            target: 0,
            stop: false,
            handover: false,
        }),
        cv: Condvar::new(),
        etcd: Mutex::new(()),
        cluster,
    });
    let r = replica.clone();
    meta.set_replica(Box::new(move |seq| r.wait(seq)));
    let r = replica.clone();
    let dir = pool_dir.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("standby-ship".into())
        .spawn(move || run(meta, r, dir))?;
    Ok(Shipper {
        replica,
        thread: Some(thread),
    })
}

impl Replica {
    /// A WAL sync's wait: returns once the standby acked `seq`, or is not named (any more).
    fn wait(&self, seq: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + ACK_TIMEOUT;
        let mut g = self.st.lock();
        if g.target < seq {
            g.target = seq;
            self.cv.notify_all();
        }
        loop {
            if g.naming == Naming::None || g.acked >= seq {
                return Ok(());
            }
            if self.cv.wait_until(&mut g, deadline).timed_out() {
                drop(g);
                return self.unname(&format!(
                    "no ack of sequence {seq} within {} ms",
                    ACK_TIMEOUT.as_millis()
                ));
            }
        }
    }

    /// What `status` shows of the standby (None: no link).
    fn show(&self, view: Option<(&str, &str, u64)>) {
        *self.cluster.standby.lock() =
            view.map(|(host, state, acked_seq)| crate::cluster::StandbyStatus {
                host: host.to_string(),
                state: state.to_string(),
                acked_seq,
            });
    }

    fn acked(&self, seq: u64) {
        self.st.lock().acked = seq;
        self.cv.notify_all();
    }

    /// Waits until a sync needs more than `sent`, the heartbeat is due, or a stop.
    fn wait_work(&self, sent: u64) -> bool {
        let deadline = Instant::now() + HEARTBEAT;
        let mut g = self.st.lock();
        while !g.stop && g.target <= sent {
            if self.cv.wait_until(&mut g, deadline).timed_out() {
                break;
            }
        }
        !g.stop
    }

    fn stopped(&self) -> bool {
        self.st.lock().stop
    }

    fn named(&self) -> bool {
        matches!(self.st.lock().naming, Naming::Named { .. })
    }

    /// Unmounting for a handover: the standby stays named, to take over.
    fn handing_over(&self) -> bool {
        let g = self.st.lock();
        g.stop && g.handover
    }

    /// After an ack of `acked`: starts naming the standby, or names it once its acks cover
    /// everything synced when naming started (syncs returned before then did not wait).
    fn after_ack(&self, meta: &Meta, host: &str, acked: u64) -> anyhow::Result<()> {
        let mut g = self.st.lock();
        match g.naming.clone() {
            Naming::None => {
                // Read under the lock that makes Pending visible: a sync that saw None
                // (and did not wait) published its sequence number before.
                g.naming = Naming::Pending {
                    need: meta.local_synced_seq(),
                };
            }
            Naming::Pending { need } if acked >= need => {
                drop(g);
                let _e = self.etcd.lock();
                let mut g = self.st.lock();
                if g.naming != (Naming::Pending { need }) {
                    return Ok(()); // dropped meanwhile: start again at the next ack
                }
                // Named before the write: a write that applied but did not answer must
                // be undone by `unname` (it writes None only for a named standby).
                g.naming = Naming::Named {
                    host: host.to_string(),
                };
                drop(g);
                put_sync(&self.cluster, Some(host), acked)?;
                tracing::info!("standby {host} named in meta/sync at sequence {acked}");
            }
            _ => {}
        }
        Ok(())
    }

    /// Removes the standby from `meta/sync` (before any sync returns without its ack).
    fn unname(&self, why: &str) -> anyhow::Result<()> {
        if self.handing_over() {
            // A sync after the shipper stopped: dropping the standby now would cancel the
            // handover (it takes over only while named). The mount is going anyway.
            bail!("handing over to the standby: no more syncs ({why})");
        }
        let _e = self.etcd.lock();
        let naming = self.st.lock().naming.clone();
        match naming {
            Naming::None => return Ok(()),
            Naming::Pending { .. } => {}
            Naming::Named { host } => {
                put_sync(&self.cluster, None, 0)
                    .with_context(|| format!("cannot drop standby {host} ({why})"))?;
                tracing::warn!("standby {host} dropped from meta/sync: {why}");
            }
        }
        self.st.lock().naming = Naming::None;
        self.cv.notify_all();
        Ok(())
    }

    /// The pool's registered standby: (host, address), the first by name.
    fn find_standby(&self) -> anyhow::Result<Option<(String, String)>> {
        let c = &self.cluster;
        let prefix = c.map.keys().meta_standbys(&c.conf.pool);
        let snap = c.rt().block_on(c.map.read_prefix(&prefix))?;
        let Some(kv) = snap.kvs.first() else {
            return Ok(None);
        };
        let rec = decode::<MetaStandby>(&kv.key, &kv.value)?.body;
        Ok(Some((kv.key[prefix.len()..].to_string(), rec.addr)))
    }
}

/// Writes `meta/sync` under this host's term: the standby that may take over (None: no
/// one). Deposed (another host took over): writes are refused from here on.
pub fn put_sync(c: &Cluster, standby: Option<&str>, seq: u64) -> anyhow::Result<()> {
    let key = c.map.keys().meta_sync(&c.conf.pool);
    let term = c.term_compare()?;
    for _ in 0..3 {
        let cur = c.rt().block_on(c.map.get(&key))?;
        let expect = cur
            .as_ref()
            .map_or(Expect::Absent, |kv| Expect::Revision(kv.mod_revision));
        let op = rand::random();
        let rec = MetaSync {
            standby: standby.map(str::to_string),
            seq,
            term: c.lineage_term(),
            host: Some(c.conf.host.clone()),
        };
        let change = Change::put(key.clone(), expect, encode(op, &rec));
        match c.rt().block_on(c.map.cas(op, &[change], Some(&term)))? {
            CasOutcome::Applied { .. } => return Ok(()),
            CasOutcome::Conflict { .. } => continue,
            CasOutcome::Deposed => {
                crate::supervise::refuse_writes(
                    "another metadata host took over the pool (this one was deposed)",
                );
                bail!("this host is no longer the active metadata host");
            }
        }
    }
    bail!("{key} kept changing under this host")
}

fn run(meta: Arc<Meta>, r: Arc<Replica>, dir: PathBuf) {
    while !r.stopped() {
        match r.find_standby() {
            Ok(Some((host, addr))) => {
                if let Err(e) = session(&meta, &r, &dir, (&host, &addr)) {
                    tracing::warn!("standby {host} ({addr}): {e:#}");
                }
                r.show(None);
                if r.handing_over() {
                    break;
                }
                if let Err(e) = r.unname("its link ended") {
                    tracing::error!("{e:#}");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("cannot read the pool's standbys: {e:#}"),
        }
        let mut g = r.st.lock();
        if !g.stop {
            r.cv.wait_for(&mut g, RETRY);
        }
    }
    if r.handing_over() {
        tracing::info!("handed over: the standby stays named in meta/sync");
    } else if let Err(e) = r.unname("unmounted") {
        tracing::warn!("{e:#}");
    }
}

fn session(meta: &Meta, r: &Replica, dir: &Path, (host, addr): (&str, &str)) -> anyhow::Result<()> {
    let sa = addr
        .to_socket_addrs()?
        .next()
        .context("address resolves to nothing")?;
    let s = TcpStream::connect_timeout(&sa, CONNECT_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IDLE_TIMEOUT))?;
    s.set_write_timeout(Some(IDLE_TIMEOUT))?;
    let mut rd = s.try_clone()?;
    let mut wr = BufWriter::with_capacity(256 << 10, s);
    hello(&mut rd, &mut wr, r, host)?;
    let t0 = Instant::now();
    r.show(Some((host, "copying", 0)));
    // From before the checkpoint: every batch after it is kept.
    meta.start_tap(TAP_BYTES_MAX);
    let (files, bytes) = send_checkpoint(&mut wr, meta, dir)?;
    let mut buf = Vec::new();
    let seq = match recv(&mut rd, &mut buf)? {
        Msg::Loaded { seq } => seq,
        Msg::Refused { why } => bail!("refused the checkpoint: {why}"),
        m => bail!("unexpected {m:?} after the checkpoint"),
    };
    tracing::info!(
        "standby {host}: checkpoint of {files} files ({bytes} bytes) loaded at sequence {seq} in {} ms",
        t0.elapsed().as_millis()
    );
    r.acked(seq);
    stream(&mut rd, &mut wr, meta, r, (host, seq))
}

fn hello(
    rd: &mut impl Read,
    wr: &mut BufWriter<TcpStream>,
    r: &Replica,
    host: &str,
) -> anyhow::Result<()> {
    let c = &r.cluster;
    let secret = c.secret();
    let mut buf = Vec::new();
    let Msg::Challenge { nonce: sn } = recv(rd, &mut buf)? else {
        bail!("no challenge");
    };
    let cn: [u8; 32] = rand::random();
    let mac = auth::hello_mac(&secret, &sn, &cn, &c.conf.pool, &c.conf.host);
    let hello = Msg::Hello {
        pool: c.conf.pool.clone(),
        host: c.conf.host.clone(),
        term: c.term(),
        nonce: cn,
        mac,
    };
    send(wr, &hello, &[])?;
    wr.flush()?;
    match recv(rd, &mut buf)? {
        Msg::HelloOk { mac }
            if auth::macs_equal(&mac, &auth::server_mac(&secret, &sn, &cn, host)) =>
        {
            Ok(())
        }
        Msg::HelloOk { .. } => bail!("it does not know the pool secret"),
        Msg::Refused { why } => bail!("refused: {why}"),
        m => bail!("unexpected {m:?}"),
    }
}

/// A checkpoint of `meta`, sent file by file; returns (files, bytes).
fn send_checkpoint(
    wr: &mut BufWriter<TcpStream>,
    meta: &Meta,
    dir: &Path,
) -> anyhow::Result<(u32, u64)> {
    let tmp = dir.join(format!("standby-checkpoint.{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    meta.checkpoint(&tmp)?;
    let res = send_files(wr, &tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    res
}

fn send_files(wr: &mut BufWriter<TcpStream>, dir: &Path) -> anyhow::Result<(u32, u64)> {
    let (mut files, mut bytes) = (0u32, 0u64);
    let mut chunk = vec![0u8; CHUNK_BYTES];
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if !e.file_type()?.is_file() {
            continue;
        }
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let mut h = blake3::Hasher::new();
        std::io::copy(&mut std::fs::File::open(&path)?, &mut h)?;
        let len = std::fs::metadata(&path)?.len();
        let sum = *h.finalize().as_bytes();
        send(wr, &Msg::File { name, len, sum }, &[])?;
        let mut f = std::fs::File::open(&path)?;
        let mut left = len;
        while left > 0 {
            let n = (left as usize).min(CHUNK_BYTES);
            f.read_exact(&mut chunk[..n])?;
            send(wr, &Msg::Data, &chunk[..n])?;
            left -= n as u64;
        }
        files += 1;
        bytes += len;
    }
    send(wr, &Msg::CheckpointDone { files }, &[])?;
    wr.flush()?;
    Ok((files, bytes))
}

/// WAL batches up to what is durable here, a sync point, the standby's ack; again.
fn stream(
    rd: &mut impl Read,
    wr: &mut BufWriter<TcpStream>,
    meta: &Meta,
    r: &Replica,
    (host, mut sent): (&str, u64),
) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    loop {
        let upto = meta.local_synced_seq();
        if upto > sent {
            sent =
                meta.batches_since(sent, upto, |seq, data| send(wr, &Msg::Batch { seq }, data))?;
        }
        send(wr, &Msg::Sync { seq: sent }, &[])?;
        wr.flush()?;
        match recv(rd, &mut buf)? {
            Msg::Ack { seq, handover } if seq == sent => {
                if handover && r.named() && !std::mem::replace(&mut r.st.lock().handover, true) {
                    tracing::warn!(
                        "standby {host} asks to take over (foreshard promote): unmounting"
                    );
                    // The signal thread unmounts; syncs until then still wait for acks.
                    // SAFETY: plain kill of this process.
                    unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
                }
            }
            Msg::Refused { why } => bail!("stopped: {why}"),
            m => bail!("unexpected {m:?} for the sync at {sent}"),
        }
        r.acked(sent);
        r.after_ack(meta, host, sent)?;
        let state = if r.named() { "named" } else { "catching up" };
        r.show(Some((host, state, sent)));
        if !r.wait_work(sent) {
            return Ok(());
        }
    }
}
