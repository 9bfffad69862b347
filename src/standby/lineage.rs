//! Which copy of a cluster pool's metadata is current. After a standby took over, the old
//! active host's copy is behind: mounting it again would fork the pool's history (and its
//! start-up cleanup would delete extent files only the newer copy names). `meta/sync`
//! names the host whose copy is current and the term it won at; each copy keeps the terms
//! it held (its own and, through checkpoints, those of the copies it came from). A mount
//! goes ahead only when `meta/sync` names this host under one of them.

use anyhow::Context;

use crate::cluster::{Cluster, CLUSTER_KEY};
use crate::meta::{Meta, CF_CONFIG};

const TERMS_KEY: &[u8] = b"cluster_terms";
/// Terms kept per copy (older ones cannot be current any more: each open notes its own).
const TERMS_KEPT: usize = 32;

pub fn held_terms(meta: &Meta) -> anyhow::Result<Vec<i64>> {
    match meta.get_raw(CF_CONFIG, TERMS_KEY)? {
        None => Ok(Vec::new()),
        Some(b) => serde_json::from_slice(&b).context("corrupt cluster_terms record"),
    }
}

/// Refuses a copy that is not the current one (see the module doc).
pub fn check(c: &Cluster, meta: &Meta) -> anyhow::Result<()> {
    let s = crate::cluster::read_meta_sync(c.rt(), &c.map, &c.conf.pool)?;
    crate::cluster::check_copy(s.as_ref(), &c.conf.host, &held_terms(meta)?)
}

/// After the campaign: checks the copy, notes the term in it (durably, before the map
/// names it), names this host in `meta/sync` with no standby, and spends a takeover's
/// revision.
pub fn after_win(c: &Cluster, meta: &Meta) -> anyhow::Result<()> {
    check(c, meta)?;
    let mut terms = held_terms(meta)?;
    // The term meta/sync names this copy with (not a later re-win's).
    terms.push(c.lineage_term());
    let drop_n = terms.len().saturating_sub(TERMS_KEPT);
    terms.drain(..drop_n);
    let mut b = meta.batch();
    b.put_raw(CF_CONFIG, TERMS_KEY, &serde_json::to_vec(&terms)?);
    if c.conf.takeover_sync_rev.is_some() {
        let mut conf = c.conf.clone();
        conf.takeover_sync_rev = None;
        b.put_raw(CF_CONFIG, CLUSTER_KEY, &serde_json::to_vec(&conf)?);
    }
    meta.write(b)?;
    meta.sync_wal()?;
    // A new term starts without a standby: one is named again once it holds a copy.
    crate::standby::ship::put_sync(c, None, 0)
}
