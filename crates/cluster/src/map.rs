//! The cluster map over etcd (etcd-client): linearizable paged reads at one revision,
//! compare-and-swap transactions with the metadata term, watches that survive compaction,
//! and a member health task.
//!
//! What the member kill on this machine showed (docs/cluster.md): etcd-client balances over
//! a fixed endpoint set and keeps sending to a dead member. So unary requests get a short
//! time-out and up to `TRIES_MAX` tries (the balancer usually picks another member), and
//! the health task takes a member that fails twice out of the set until it answers again.

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, Context};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
    TxnOpResponse,
};

use crate::batch::{split, Change, Expect, Term};
use crate::keys::{prefix_end, ClusterUrl, Keys};
use crate::records::op_of;

/// Unary requests: short, so a dead member costs little before the retry.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Tries of one unary request (the first and two retries).
pub const TRIES_MAX: usize = 3;
/// Keys per page of a prefix read: about 0.5 MB of shard records, under tonic's 4 MiB.
pub const PAGE_KEYS: i64 = 4096;
/// Records one prefix read returns at most (16 pages of shards, hosts, disks).
pub const READ_KEYS_MAX: usize = 1 << 20;
const RETRY_PAUSES_MS: [u64; TRIES_MAX - 1] = [50, 200];
/// How often the health task asks each member for its status.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// One record as read, with the revisions CAS compares against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

impl Kv {
    pub(crate) fn from_etcd(kv: &KeyValue) -> anyhow::Result<Kv> {
        Ok(Kv {
            key: kv
                .key_str()
                .map_err(|e| anyhow!("cluster map key is not UTF-8: {e}"))?
                .to_string(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            lease: kv.lease(),
        })
    }
}

/// A prefix as of one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub revision: i64,
    pub kvs: Vec<Kv>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    Applied {
        revision: i64,
    },
    /// A record was not as expected: the batch's records as they are now (absent ones left
    /// out), read in the same round trip.
    Conflict {
        current: Vec<Kv>,
    },
    /// The term compare failed: another metadata host has taken over.
    Deposed,
}

/// A connection to the etcd members of one cluster (clones share the connection).
#[derive(Clone)]
pub struct Map {
    client: Client,
    keys: Keys,
    url: ClusterUrl,
}

impl Map {
    pub async fn connect(url: &ClusterUrl) -> anyhow::Result<Map> {
        let client = Client::connect(&url.endpoints, Some(options()))
            .await
            .with_context(|| format!("cannot reach etcd at {}", url.endpoints.join(",")))?;
        Ok(Map {
            client,
            keys: Keys::new(&url.cluster)?,
            url: url.clone(),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Runs `f` up to TRIES_MAX times while it fails, pausing between tries.
    pub(crate) async fn retry<T, F, Fut>(&self, what: &str, mut f: F) -> anyhow::Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut last = None;
        for i in 0..TRIES_MAX {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(RETRY_PAUSES_MS[i - 1])).await;
            }
            match tokio::time::timeout(REQUEST_TIMEOUT, f(self.client.clone())).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => last = Some(e.to_string()),
                Err(_) => last = Some(format!("no answer within {REQUEST_TIMEOUT:?}")),
            }
            tracing::debug!(what, try_ = i + 1, error = ?last, "etcd request failed");
        }
        Err(anyhow!(
            "cluster map {what} failed {TRIES_MAX} times (etcd at {}): {}",
            self.url.endpoints.join(","),
            last.unwrap_or_default()
        ))
    }

    /// One record, linearizable.
    pub async fn get(&self, key: &str) -> anyhow::Result<Option<Kv>> {
        let r = self
            .retry("get", |mut c| {
                let key = key.to_string();
                async move { c.get(key, None).await }
            })
            .await?;
        r.kvs().first().map(Kv::from_etcd).transpose()
    }

    /// Every record under `prefix`, in key order, all pages read at the first page's
    /// revision so that they are one snapshot.
    pub async fn read_prefix(&self, prefix: &str) -> anyhow::Result<Snapshot> {
        let end = prefix_end(prefix);
        let mut from = prefix.as_bytes().to_vec();
        let mut snap = Snapshot::default();
        loop {
            let opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(PAGE_KEYS)
                .with_revision(snap.revision);
            let r = self
                .retry("read", |mut c| {
                    let (from, opts) = (from.clone(), opts.clone());
                    async move { c.get(from, Some(opts)).await }
                })
                .await?;
            if snap.revision == 0 {
                snap.revision = r.header().map_or(0, |h| h.revision());
            }
            for kv in r.kvs() {
                snap.kvs.push(Kv::from_etcd(kv)?);
            }
            if snap.kvs.len() > READ_KEYS_MAX {
                return Err(anyhow!("{prefix}: more than {READ_KEYS_MAX} records"));
            }
            match (r.more(), r.kvs().last()) {
                (true, Some(last)) => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(snap),
            }
        }
    }

    /// Applies one batch (at most TXN_RECORDS_MAX records) atomically if every record is as
    /// expected and, with `term`, the metadata term still holds. `op` must be the one the
    /// batch's values carry: a retry of a batch whose first try did apply sees its own `op`
    /// on every record and reports Applied.
    pub async fn cas(
        &self,
        op: u64,
        batch: &[Change],
        term: Option<&Term>,
    ) -> anyhow::Result<CasOutcome> {
        let txn = build_txn(batch, term);
        let r = self
            .retry("compare-and-swap", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        let revision = r.header().map_or(0, |h| h.revision());
        if r.succeeded() {
            return Ok(CasOutcome::Applied { revision });
        }
        let mut current = Vec::new();
        let mut term_now = None;
        for resp in r.op_responses() {
            if let TxnOpResponse::Get(g) = resp {
                for kv in g.kvs() {
                    let kv = Kv::from_etcd(kv)?;
                    match term {
                        Some(t) if kv.key == t.key => term_now = Some(kv.create_revision),
                        _ => current.push(kv),
                    }
                }
            }
        }
        if term.is_some_and(|t| term_now != Some(t.create_revision)) {
            return Ok(CasOutcome::Deposed);
        }
        if already_applied(op, batch, &current) {
            return Ok(CasOutcome::Applied { revision });
        }
        Ok(CasOutcome::Conflict { current })
    }

    /// Any number of changes, as several batches in order (`split`); one outcome per batch.
    /// Values must carry `op` (records::encode with the same op).
    pub async fn commit(
        &self,
        op: u64,
        changes: Vec<Change>,
        term: Option<&Term>,
    ) -> anyhow::Result<Vec<(Vec<Change>, CasOutcome)>> {
        let mut out = Vec::new();
        for batch in split(changes, term)? {
            let r = self.cas(op, &batch, term).await?;
            out.push((batch, r));
        }
        Ok(out)
    }

    /// A new lease of `ttl_s` seconds; returns its id.
    pub async fn grant(&self, ttl_s: i64) -> anyhow::Result<i64> {
        let r = self
            .retry("lease grant", |mut c| async move {
                c.lease_grant(ttl_s, None).await
            })
            .await?;
        Ok(r.id())
    }

    /// Ends `lease` now: the records under it are deleted at once, not after its TTL.
    pub async fn revoke(&self, lease: i64) -> anyhow::Result<()> {
        self.retry("lease revoke", |mut c| async move {
            c.lease_revoke(lease).await
        })
        .await?;
        Ok(())
    }

    /// Deletes every record under `prefix` (a failed `init` takes back what it wrote).
    pub async fn delete_prefix(&self, prefix: &str) -> anyhow::Result<()> {
        self.retry("delete", |mut c| {
            let p = prefix.to_string();
            let o = etcd_client::DeleteOptions::new().with_prefix();
            async move { c.delete(p, Some(o)).await }
        })
        .await?;
        Ok(())
    }

    /// Drops history before `revision` (the active metadata host does it every 5 minutes).
    pub async fn compact(&self, revision: i64) -> anyhow::Result<()> {
        self.retry("compact", |mut c| async move {
            c.compact(
                revision,
                Some(etcd_client::CompactionOptions::new().with_physical()),
            )
            .await
        })
        .await?;
        Ok(())
    }

    /// Asks each member for its status every HEALTH_INTERVAL; a member that fails twice in a
    /// row is taken out of the client's endpoint set, and put back when it answers again.
    /// Runs until the returned handle is aborted.
    pub fn spawn_health(&self) -> tokio::task::JoinHandle<()> {
        let client = self.client.clone();
        let endpoints = self.url.endpoints.clone();
        tokio::spawn(async move { health_loop(client, endpoints).await })
    }
}

fn options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_require_leader(true)
}

fn build_txn(batch: &[Change], term: Option<&Term>) -> Txn {
    let mut when = Vec::with_capacity(batch.len() + 1);
    let mut then = Vec::with_capacity(batch.len());
    let mut or_else = Vec::with_capacity(batch.len() + 1);
    for c in batch {
        when.push(match c.expect {
            Expect::Absent => Compare::create_revision(c.key.clone(), CompareOp::Equal, 0),
            Expect::Revision(r) => Compare::mod_revision(c.key.clone(), CompareOp::Equal, r),
        });
        then.push(match &c.value {
            Some(v) => {
                let opts = (c.lease != 0).then(|| PutOptions::new().with_lease(c.lease));
                TxnOp::put(c.key.clone(), v.clone(), opts)
            }
            None => TxnOp::delete(c.key.clone(), None),
        });
        or_else.push(TxnOp::get(c.key.clone(), None));
    }
    if let Some(t) = term {
        when.push(Compare::create_revision(
            t.key.clone(),
            CompareOp::Equal,
            t.create_revision,
        ));
        or_else.push(TxnOp::get(t.key.clone(), None));
    }
    Txn::new().when(when).and_then(then).or_else(or_else)
}

/// True when every record of `batch` is as the batch would have left it, with our `op`.
fn already_applied(op: u64, batch: &[Change], current: &[Kv]) -> bool {
    batch.iter().all(|c| {
        let now = current.iter().find(|kv| kv.key == c.key);
        match (&c.value, now) {
            (Some(v), Some(kv)) => kv.value == *v && op_of(&kv.value) == Some(op),
            (None, None) => true,
            _ => false,
        }
    })
}

async fn health_loop(client: Client, endpoints: Vec<String>) {
    let mut probes = Vec::new();
    for e in &endpoints {
        probes.push(Client::connect([e.as_str()], Some(options())).await.ok());
    }
    let mut fails = vec![0u32; endpoints.len()];
    let mut out = vec![false; endpoints.len()];
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    loop {
        tick.tick().await;
        for i in 0..endpoints.len() {
            let ok = match probes[i].as_mut() {
                Some(c) => matches!(
                    tokio::time::timeout(HEALTH_INTERVAL, c.status()).await,
                    Ok(Ok(_))
                ),
                None => {
                    probes[i] = Client::connect([endpoints[i].as_str()], Some(options()))
                        .await
                        .ok();
                    false
                }
            };
            fails[i] = if ok { 0 } else { fails[i] + 1 };
            if fails[i] >= 2 && !out[i] && out.iter().filter(|o| !**o).count() > 1 {
                out[i] = client.remove_endpoint(&endpoints[i]).await.is_ok();
                tracing::warn!(member = %endpoints[i], "etcd member not answering: left out");
            } else if ok && out[i] {
                out[i] = client.add_endpoint(&endpoints[i]).await.is_err();
                tracing::info!(member = %endpoints[i], "etcd member answers again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &[u8]) -> Kv {
        Kv {
            key: key.into(),
            value: value.to_vec(),
            create_revision: 1,
            mod_revision: 2,
            lease: 0,
        }
    }

    #[test]
    fn a_conflict_that_holds_our_own_values_was_applied() {
        let v = crate::records::encode(7, &serde_json::json!({"x": 1}));
        let batch = vec![
            Change::put("/a".into(), Expect::Absent, v.clone()),
            Change::delete("/b".into(), 3),
        ];
        assert!(already_applied(7, &batch, &[kv("/a", &v)]));
        // Another writer's op, a record still there, or a missing put: a real conflict.
        assert!(!already_applied(8, &batch, &[kv("/a", &v)]));
        assert!(!already_applied(
            7,
            &batch,
            &[kv("/a", &v), kv("/b", b"{}")]
        ));
        assert!(!already_applied(7, &batch, &[]));
    }
}
