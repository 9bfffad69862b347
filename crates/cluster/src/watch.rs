//! Watching a prefix of the map from the revision of the read it follows.
//!
//! A watch whose start revision was compacted away is cancelled by etcd with
//! `compact_revision > 0`: the events in between are gone, so the watcher reads the whole
//! prefix again and hands it over as `Resync`, then watches from that read. A watcher that
//! applies events and resyncs always ends at the map a fresh read shows.

use anyhow::{anyhow, bail};
use etcd_client::{EventType, WatchOptions, WatchStream};

use crate::map::{Kv, Map, Snapshot};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    Put(Kv),
    /// The record under `key` was deleted (a lease lapsed, or a change deleted it).
    Delete {
        key: String,
        revision: i64,
    },
    /// History was compacted past where the watch was: this is the prefix as of now, and it
    /// replaces whatever the watcher held.
    Resync(Snapshot),
}

pub struct MapWatch {
    map: Map,
    prefix: String,
    stream: Option<WatchStream>,
    /// Last revision handed out; a restart resumes after it.
    revision: i64,
    pending: std::collections::VecDeque<WatchEvent>,
}

/// Events held at most before they are handed out (one etcd response's worth and more).
const PENDING_EVENTS_MAX: usize = 1 << 16;

impl MapWatch {
    /// Watches `prefix` for changes after `revision` (the revision of a `read_prefix`).
    pub async fn start(map: &Map, prefix: &str, revision: i64) -> anyhow::Result<MapWatch> {
        let mut w = MapWatch {
            map: map.clone(),
            prefix: prefix.to_string(),
            stream: None,
            revision,
            pending: Default::default(),
        };
        w.reopen().await?;
        Ok(w)
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The next change, in revision order. A broken stream is re-opened after the last
    /// revision handed out, so nothing is lost or repeated.
    pub async fn next(&mut self) -> anyhow::Result<WatchEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            let Some(stream) = self.stream.as_mut() else {
                self.reopen().await?;
                continue;
            };
            match stream.message().await {
                Ok(Some(resp)) if resp.canceled() => {
                    if resp.compact_revision() <= 0 {
                        bail!(
                            "watch of {} cancelled: {}",
                            self.prefix,
                            resp.cancel_reason()
                        );
                    }
                    self.resync(resp.compact_revision()).await?;
                }
                Ok(Some(resp)) => self.take_events(resp.events())?,
                Ok(None) | Err(_) => {
                    tracing::debug!(prefix = %self.prefix, "watch stream ended: re-opening");
                    self.stream = None;
                }
            }
        }
    }

    fn take_events(&mut self, events: &[etcd_client::Event]) -> anyhow::Result<()> {
        if self.pending.len() + events.len() > PENDING_EVENTS_MAX {
            bail!(
                "watch of {}: more than {PENDING_EVENTS_MAX} events pending",
                self.prefix
            );
        }
        for ev in events {
            let Some(kv) = ev.kv() else { continue };
            let kv = Kv::from_etcd(kv)?;
            self.revision = self.revision.max(kv.mod_revision);
            self.pending.push_back(match ev.event_type() {
                EventType::Put => WatchEvent::Put(kv),
                EventType::Delete => WatchEvent::Delete {
                    key: kv.key,
                    revision: kv.mod_revision,
                },
            });
        }
        Ok(())
    }

    /// The events since `revision` are gone: read the prefix whole and go on from there.
    async fn resync(&mut self, compact_revision: i64) -> anyhow::Result<()> {
        tracing::info!(prefix = %self.prefix, compact_revision, "watch behind a compaction: reading again");
        let snap = self.map.read_prefix(&self.prefix).await?;
        self.revision = snap.revision;
        self.pending.clear();
        self.pending.push_back(WatchEvent::Resync(snap));
        self.stream = None;
        Ok(())
    }

    async fn reopen(&mut self) -> anyhow::Result<()> {
        loop {
            match open(&self.map, &self.prefix, self.revision).await? {
                Ok(s) => {
                    self.stream = Some(s);
                    return Ok(());
                }
                Err(compact_revision) => self.resync(compact_revision).await?,
            }
        }
    }
}

/// A watch from `after + 1`, or Err(compact revision) when that is compacted away.
async fn open(map: &Map, prefix: &str, after: i64) -> anyhow::Result<Result<WatchStream, i64>> {
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(after + 1);
    let mut s = map
        .retry("watch", |mut c| {
            let (p, o) = (prefix.to_string(), opts.clone());
            async move { c.watch(p, Some(o)).await }
        })
        .await?;
    // etcd confirms the watch first; a compacted start revision cancels it, in that first
    // answer or (handled by `next`) the one after.
    match s.message().await {
        Ok(Some(r)) if r.canceled() && r.compact_revision() > 0 => Ok(Err(r.compact_revision())),
        Ok(Some(r)) if r.canceled() => {
            bail!("watch of {prefix} not created: {}", r.cancel_reason())
        }
        Ok(Some(r)) if r.created() && r.events().is_empty() => Ok(Ok(s)),
        Ok(Some(_)) => bail!("watch of {prefix}: events before it was created"),
        Ok(None) => bail!("watch of {prefix}: stream closed at once"),
        Err(e) => Err(anyhow!("watch of {prefix}: {e}")),
    }
}
