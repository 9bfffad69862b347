//! The work list of a recovery pass: which extent copies bring the pool back to its
//! placements, from a metadata scan or from the agents' plan.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::agents::{CopyItem, PlanExtent};
use crate::fs::Fs;
use crate::store::Disk;

/// Every extent (as plan extents) and the bytes per shard, from one metadata snapshot.
pub(super) fn scan(fs: &Fs) -> anyhow::Result<(Vec<PlanExtent>, Vec<u64>)> {
    let mut ex = Vec::new();
    let mut bytes = vec![0u64; fs.shard_count()];
    fs.meta.view().each_extent(|ino, index, e| {
        if let Some(b) = bytes.get_mut(e.shard as usize) {
            *b += u64::from(e.len);
        }
        ex.push(PlanExtent::new(ino, index, e, true));
    })?;
    Ok((ex, bytes))
}

/// The copies that bring `extents` to their shard's current placement; extents with no
/// readable replica go to `lost` as (shard, inode).
pub(super) fn items_for(
    fs: &Fs,
    extents: &[PlanExtent],
    lost: &mut Vec<(u32, u64)>,
) -> Vec<CopyItem> {
    let disks: HashMap<u32, Arc<Disk>> = fs.store.disks().into_iter().map(|d| (d.id, d)).collect();
    let readable = |d: &u32| disks.get(d).is_some_and(|x| x.is_up());
    // A full disk (ENOSPC) is not failed, but takes no copies until a write there succeeds.
    let accepts = |d: &u32| {
        disks
            .get(d)
            .is_some_and(|x| x.accepts_data() && !x.full.load(Ordering::Relaxed))
    };
    let table = fs.shard_table();
    let mut out = Vec::new();
    for e in extents {
        let Some(shard) = table.get(e.shard as usize) else {
            continue;
        };
        let mut sources: Vec<u32> = e.replicas.iter().copied().filter(readable).collect();
        let missing: Vec<u32> = shard
            .disks
            .iter()
            .copied()
            .filter(|d| accepts(d) && !e.replicas.contains(d))
            .collect();
        if missing.is_empty() {
            continue;
        }
        if sources.is_empty() {
            lost.push((e.shard, e.ino));
            continue;
        }
        // Spread reads over the surviving copies.
        let k = ((e.ino ^ e.index) as usize) % sources.len();
        sources.rotate_left(k);
        for t in missing {
            out.push(CopyItem {
                ino: e.ino,
                index: e.index,
                version: e.version,
                len: e.len,
                shard: e.shard,
                epoch: shard.epoch,
                sources: sources.clone(),
                target: t,
                sums: e.sums.clone(),
            });
        }
    }
    out
}

/// Deals items to `n` agents so each gets a share of every shard and target (`items` come
/// in (inode, index) order, so each agent's list stays in that order).
pub(super) fn deal(items: Vec<CopyItem>, n: usize) -> Vec<Vec<CopyItem>> {
    let mut out: Vec<Vec<CopyItem>> = (0..n.max(1)).map(|_| Vec::new()).collect();
    let len = out.len();
    for (i, it) in items.into_iter().enumerate() {
        out[i % len].push(it);
    }
    out
}

/// Hot shards' copies first (stable: the disk order stays within each class), so the
/// working set regains its redundancy before the cold data.
pub(super) fn hot_first(fs: &Fs, items: &mut [CopyItem]) {
    let table = fs.shard_table();
    items.sort_by_key(|i| {
        table
            .get(i.shard as usize)
            .is_none_or(|s| s.class != crate::meta::ShardClass::Hot)
    });
}
