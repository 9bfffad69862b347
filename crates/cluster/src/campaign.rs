//! The active metadata host (docs/cluster.md, "The metadata host and its standby"):
//! `pools/<pool>/meta/active` created under the host's lease. The create_revision of that
//! record is the metadata **term**: every extent request carries it, every map change made
//! by the metadata host compares it, and a storage host refuses a lower one. etcd's own
//! election API is not used: the term as a fencing token is what makes two holders across a
//! pause harmless.

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::batch::{Change, Expect, Term};
use crate::map::{CasOutcome, Kv, Map};
use crate::member::{keep_alive, LeaseState, LEASE_TTL_S_MAX, LEASE_TTL_S_MIN};
use crate::records::{decode, encode, MetaActive, MetaSync};

/// How often a host waiting for its own earlier incarnation's record looks again.
const HELD_POLL: Duration = Duration::from_millis(250);

/// This host is the pool's active metadata host while its lease lives.
pub struct Active {
    pub key: String,
    /// The current term (create_revision of our record): raised when the lease lapsed and
    /// the host won again.
    pub term: Arc<AtomicI64>,
    pub lease: Arc<LeaseState>,
    /// Times the lease lapsed and the record was won again.
    pub rewins: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl Active {
    pub fn term(&self) -> Term {
        Term {
            key: self.key.clone(),
            create_revision: self.term.load(Ordering::Acquire),
        }
    }
    /// Gives the pool up at once (unmount): the record goes with the lease.
    pub async fn resign(self, map: &Map) -> anyhow::Result<()> {
        self.task.abort();
        map.revoke(self.lease.lease.load(Ordering::Acquire)).await
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the metadata host's copy is: the terms it held (`MetaSync::allows`), and what to do
/// when it turns out deposed (another host's copy became current while its lease lapsed).
#[derive(Clone)]
pub struct Lineage {
    pub terms: Vec<i64>,
    pub on_deposed: Arc<dyn Fn(&str) + Send + Sync>,
}

/// What a win compares of `meta/sync` besides `meta/active` being free.
#[derive(Clone)]
enum Guard {
    /// A standby's takeover: the revision that named it; the record is reset.
    Takeover { key: String, rev: i64 },
    /// A lease won again: the record as read (checked to name this copy), left as it is.
    Unchanged(Kv),
}

/// Becomes the active metadata host of `pool`, or says who is. A record held by this same
/// host name (a crashed mount whose lease has not lapsed) is waited for, at most one TTL.
/// `takeover` (a standby's) goes in the winning transaction: the `meta/sync` change that
/// compares the revision at which it named this standby, so only that standby can win.
pub async fn campaign(
    map: &Map,
    pool: &str,
    me: &MetaActive,
    ttl_s: i64,
    (takeover, lineage): (Option<(String, i64)>, Lineage),
) -> anyhow::Result<Active> {
    if !(LEASE_TTL_S_MIN..=LEASE_TTL_S_MAX).contains(&ttl_s) {
        bail!("lease TTL {ttl_s} s: use {LEASE_TTL_S_MIN} to {LEASE_TTL_S_MAX} s");
    }
    let key = map.keys().meta_active(pool);
    let guard = takeover.map(|(key, rev)| Guard::Takeover { key, rev });
    let (term, lease, until) = win(map, &key, me, ttl_s, guard).await?;
    let mut lineage = lineage;
    lineage.terms.push(term);
    let state = Arc::new(LeaseState {
        lease: AtomicI64::new(lease),
        flaps: AtomicU32::new(0),
        valid_until: parking_lot::Mutex::new(until),
    });
    let term = Arc::new(AtomicI64::new(term));
    let rewins = Arc::new(AtomicU32::new(0));
    let task = tokio::spawn(hold(
        map.clone(),
        (key.clone(), map.keys().meta_sync(pool), me.clone(), ttl_s),
        lineage,
        state.clone(),
        term.clone(),
        rewins.clone(),
    ));
    Ok(Active {
        key,
        term,
        lease: state,
        rewins,
        task,
    })
}

/// Creates the record under a new lease; returns (term, lease, valid until).
async fn win(
    map: &Map,
    key: &str,
    me: &MetaActive,
    ttl_s: i64,
    guard: Option<Guard>,
) -> anyhow::Result<(i64, i64, Instant)> {
    let deadline = Instant::now() + Duration::from_secs(ttl_s as u64 + 2);
    loop {
        let sent = Instant::now();
        let lease = map.grant(ttl_s).await?;
        let op = rand::random();
        let mut change = Change::put(key.to_string(), Expect::Absent, encode(op, me));
        change.lease = lease;
        let mut batch = vec![change];
        match &guard {
            Some(Guard::Takeover { key, rev }) => {
                // The takeover resets meta/sync: the new active has no standby yet.
                let none = MetaSync {
                    standby: None,
                    seq: 0,
                    term: 0,
                    host: Some(me.host.clone()),
                };
                let expect = Expect::Revision(*rev);
                batch.push(Change::put(key.clone(), expect, encode(op, &none)));
            }
            Some(Guard::Unchanged(kv)) => {
                let expect = Expect::Revision(kv.mod_revision);
                batch.push(Change::put(kv.key.clone(), expect, kv.value.clone()));
            }
            None => {}
        }
        match map.cas(op, &batch, None).await? {
            CasOutcome::Applied { revision } => {
                return Ok((revision, lease, sent + Duration::from_secs(ttl_s as u64)))
            }
            CasOutcome::Deposed => unreachable!("no term compared"),
            CasOutcome::Conflict { current } => {
                let _ = map.revoke(lease).await;
                let Some(kv) = current.iter().find(|kv| kv.key == key) else {
                    match guard {
                        Some(Guard::Takeover { .. }) => bail!("{key} is free but meta/sync changed since it named this standby: the active host dropped it (a standby that fell behind) or the pool was mounted meanwhile"),
                        Some(Guard::Unchanged(_)) => bail!("meta/sync changed while this host's lease was lapsed"),
                        None => {}
                    }
                    continue;
                };
                let them = decode::<MetaActive>(key, &kv.value)?.body;
                if them.host != me.host {
                    bail!(
                        "the pool is active on host {} ({}) since {} ms: unmount it there, or wait for its lease to lapse",
                        them.host,
                        them.addr,
                        them.started_ms
                    );
                }
                if Instant::now() >= deadline {
                    bail!("{key} is still held by this host past its lease: is the pool mounted here already?");
                }
                tracing::info!(
                    key,
                    "held by an earlier mount of this host: waiting for its lease"
                );
                tokio::time::sleep(HELD_POLL).await;
            }
        }
    }
}

/// Keeps the lease alive; when it lapses, wins the record again under a new term (the
/// storage hosts then refuse anything sent under the old one).
async fn hold(
    map: Map,
    (key, sync_key, me, ttl_s): (String, String, MetaActive, i64),
    lineage: Lineage,
    state: Arc<LeaseState>,
    term: Arc<AtomicI64>,
    rewins: Arc<AtomicU32>,
) {
    loop {
        let lease = state.lease.load(Ordering::Acquire);
        match keep_alive(&map, lease, ttl_s, &state).await {
            Ok(()) => tracing::error!(key, lease, "metadata lease lapsed: campaigning again"),
            Err(e) => tracing::error!(key, lease, "metadata lease lost: {e:#}"),
        }
        loop {
            let guard = match rewin_guard(&map, &sync_key, &me.host, &lineage).await {
                Ok(Some(g)) => g,
                Ok(None) => return, // deposed: another copy is current
                Err(e) => {
                    tracing::error!(key, "cannot read meta/sync: {e:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            match win(&map, &key, &me, ttl_s, guard).await {
                Ok((t, lease, until)) => {
                    state.lease.store(lease, Ordering::Release);
                    *state.valid_until.lock() = until;
                    term.store(t, Ordering::Release);
                    rewins.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(key, term = t, "active again under a new term");
                    break;
                }
                Err(e) => {
                    tracing::error!(key, "cannot become active again: {e:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// What a lease won again compares: `meta/sync` as it is, when it still names this copy.
/// None (and `on_deposed`) when another host's copy became current meanwhile: winning
/// again would make this one's stale metadata the pool's.
async fn rewin_guard(
    map: &Map,
    sync_key: &str,
    host: &str,
    lineage: &Lineage,
) -> anyhow::Result<Option<Option<Guard>>> {
    let Some(kv) = map.get(sync_key).await? else {
        return Ok(Some(None));
    };
    let rec = decode::<MetaSync>(sync_key, &kv.value)?.body;
    if !rec.allows(host, &lineage.terms) {
        let why = format!(
            "host {} holds the pool's current metadata (term {}): this host was deposed",
            rec.host.as_deref().unwrap_or("?"),
            rec.term
        );
        tracing::error!("{why}; not campaigning again");
        (lineage.on_deposed)(&why);
        return Ok(None);
    }
    Ok(Some(Some(Guard::Unchanged(kv))))
}
