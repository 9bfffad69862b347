//! A host's membership: `hosts/<host>` under a lease, kept alive every TTL/3.
//!
//! The lease says "this host is alive" to the metadata host; safety never rests on it
//! (fencing does, on the data path). A host whose keep-alive answers ttl 0 lost its lease
//! (it was paused or cut off past the TTL): it joins again under a new lease and counts a
//! flap, a host risk signal. A stream error re-opens the keep-alive (the balancer picks a
//! member) until the last acknowledged deadline passes.

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use parking_lot::Mutex;

use crate::keys::check_name;
use crate::map::{Kv, Map};
use crate::records::{decode, encode, HostRec};

/// Shortest and longest lease: below 2 s one missed keep-alive ends it; past 5 minutes a
/// dead host stays "alive" too long.
pub const LEASE_TTL_S_MIN: i64 = 2;
pub const LEASE_TTL_S_MAX: i64 = 300;
/// How often a host that finds its name held by its own earlier incarnation looks again.
const HELD_POLL: Duration = Duration::from_millis(200);

/// What the keep-alive task shares with the rest of the node.
#[derive(Debug)]
pub struct LeaseState {
    pub lease: AtomicI64,
    pub flaps: AtomicU32,
    /// The lease is sure to live until here (monotonic): last acknowledged keep-alive's send
    /// time + its ttl. A holder must send nothing that depends on the lease past it.
    pub valid_until: Mutex<Instant>,
}

pub struct Membership {
    pub state: Arc<LeaseState>,
    task: tokio::task::JoinHandle<()>,
}

impl Membership {
    pub fn lease(&self) -> i64 {
        self.state.lease.load(Ordering::Acquire)
    }
    /// Stops the keep-alives and revokes the lease, which deletes `hosts/<host>` at once.
    pub async fn leave(self, map: &Map) -> anyhow::Result<()> {
        self.task.abort();
        map.revoke(self.lease()).await
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Joins as `host`: creates `hosts/<host>` under a new lease of `ttl_s`. The name held by
/// the same boot (a restart whose old lease has not lapsed yet) is waited for, at most one
/// TTL; held by another machine, it is refused with both addresses.
pub async fn join(map: &Map, host: &str, rec: &HostRec, ttl_s: i64) -> anyhow::Result<Membership> {
    check_name("host name", host)?;
    if !(LEASE_TTL_S_MIN..=LEASE_TTL_S_MAX).contains(&ttl_s) {
        bail!("lease TTL {ttl_s} s: use {LEASE_TTL_S_MIN} to {LEASE_TTL_S_MAX} s");
    }
    let value = encode(rand::random(), rec);
    let lease = claim(map, host, rec, &value, ttl_s).await?;
    let state = Arc::new(LeaseState {
        lease: AtomicI64::new(lease.0),
        flaps: AtomicU32::new(0),
        valid_until: Mutex::new(lease.1),
    });
    let task = tokio::spawn(keep_alive_loop(
        map.clone(),
        host.to_string(),
        rec.clone(),
        value,
        ttl_s,
        state.clone(),
    ));
    Ok(Membership { state, task })
}

/// Grants a lease and creates the host key under it; returns (lease, valid until).
async fn claim(
    map: &Map,
    host: &str,
    rec: &HostRec,
    value: &[u8],
    ttl_s: i64,
) -> anyhow::Result<(i64, Instant)> {
    let key = map.keys().host(host);
    let deadline = Instant::now() + Duration::from_secs(ttl_s as u64 + 2);
    loop {
        let sent = Instant::now();
        let lease = map.grant(ttl_s).await?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                value.to_vec(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.clone(), None)]);
        let r = map
            .retry("join", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        if r.succeeded() {
            return Ok((lease, sent + Duration::from_secs(ttl_s as u64)));
        }
        let _ = map.revoke(lease).await;
        let holder = held_by(&r.op_responses())?;
        check_holder(&key, rec, holder.as_ref(), Instant::now() < deadline)?;
        tokio::time::sleep(HELD_POLL).await;
    }
}

fn held_by(resps: &[TxnOpResponse]) -> anyhow::Result<Option<(Kv, HostRec)>> {
    for r in resps {
        if let TxnOpResponse::Get(g) = r {
            if let Some(kv) = g.kvs().first() {
                let kv = Kv::from_etcd(kv)?;
                let rec = decode::<HostRec>(&kv.key, &kv.value)?.body;
                return Ok(Some((kv, rec)));
            }
        }
    }
    Ok(None)
}

/// Whether to wait for the present holder of our name to go away.
fn check_holder(
    key: &str,
    me: &HostRec,
    holder: Option<&(Kv, HostRec)>,
    may_wait: bool,
) -> anyhow::Result<()> {
    let Some((_, them)) = holder else {
        return Ok(()); // gone in between: try again at once
    };
    if them.boot_id != me.boot_id {
        bail!(
            "{key} is held by another machine ({}, boot {}, pid {}); this one is {} \
             (boot {}): give this host another --name",
            them.addr,
            them.boot_id,
            them.pid,
            me.addr,
            me.boot_id
        );
    }
    if !may_wait {
        bail!(
            "{key} is still held by this machine's pid {} past its lease",
            them.pid
        );
    }
    tracing::info!(
        key,
        pid = them.pid,
        "name held by an earlier start: waiting for its lease"
    );
    Ok(())
}

async fn keep_alive_loop(
    map: Map,
    host: String,
    rec: HostRec,
    value: Vec<u8>,
    ttl_s: i64,
    state: Arc<LeaseState>,
) {
    loop {
        let lease = state.lease.load(Ordering::Acquire);
        match keep_alive(&map, lease, ttl_s, &state).await {
            Ok(()) => tracing::warn!(host, lease, "lease lapsed: joining again"),
            Err(e) => tracing::warn!(host, lease, "lease keep-alive lost: {e:#}"),
        }
        // Lapsed or unreachable past the deadline: a new lease, the same record.
        loop {
            match claim(&map, &host, &rec, &value, ttl_s).await {
                Ok((lease, until)) => {
                    state.lease.store(lease, Ordering::Release);
                    *state.valid_until.lock() = until;
                    state.flaps.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    tracing::warn!(host, "cannot join again: {e:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// Keeps `lease` alive until it lapses (Ok) or cannot be reached before its deadline (Err).
pub async fn keep_alive(
    map: &Map,
    lease: i64,
    ttl_s: i64,
    state: &LeaseState,
) -> anyhow::Result<()> {
    let period = Duration::from_millis((ttl_s as u64 * 1000 / 3).max(300));
    loop {
        let opened = map
            .retry("lease keep-alive", |mut c| async move {
                c.lease_keep_alive(lease).await
            })
            .await;
        let (mut keeper, mut stream) = match opened {
            Ok(ks) => ks,
            Err(e) if Instant::now() < *state.valid_until.lock() => {
                tracing::debug!("keep-alive stream: {e:#}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        loop {
            let sent = Instant::now();
            let answer = async {
                keeper.keep_alive().await?;
                stream.message().await
            };
            match tokio::time::timeout(period, answer).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                    *state.valid_until.lock() = sent + Duration::from_secs(r.ttl() as u64);
                }
                Ok(Ok(Some(_))) => return Ok(()),
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => break, // re-open on another member
            }
            tokio::time::sleep(period.saturating_sub(sent.elapsed())).await;
        }
        if Instant::now() >= *state.valid_until.lock() {
            return Err(anyhow::anyhow!(
                "no keep-alive answered before the lease's end"
            ))
            .context("etcd unreachable");
        }
    }
}
