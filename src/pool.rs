//! Creating and opening a pool: metadata directory, disk labels, the lock, start-up cleanup.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::fs::{Fs, FsOptions};
use crate::meta::{
    DiskRec, DiskState, InodeRec, Kind, Meta, PoolConfig, ShardClass, ShardRec, FORMAT_VERSION,
    ROOT_INO,
};
use crate::store::{read_label, write_label, Disk, Label, Store};

pub const META_DIR: &str = "meta";
pub const LOCK_FILE: &str = "lock";
pub const LOG_FILE: &str = "foreshard.log";
pub const SOCKET_FILE: &str = "control.sock";
/// Checksum block size; smaller than the 64 KiB bound so a 4 KiB read verifies little.
pub const BLOCK_SIZE_BYTES: u32 = 16 * 1024;
pub const EXTENT_SIZE_MIN: u64 = 64 * 1024;
pub const EXTENT_SIZE_MAX: u64 = 64 << 20;
/// Shards in a new pool: enough for every disk pair to share work in a rebuild.
const SHARDS_MIN: u32 = 64;
const SHARDS_MAX: u32 = 4096;

pub struct InitArgs {
    pub pool: PathBuf,
    pub disks: Vec<PathBuf>,
    pub replicas: u32,
    pub extent_size: u64,
    /// Per-disk health files (checked, absolute).
    pub health_dir: Option<PathBuf>,
}

/// Every `r`-subset of `0..n`, in lexicographic order, up to `SHARDS_MAX` of them.
fn combinations(n: usize, r: usize) -> Vec<Vec<usize>> {
    combinations_capped(n, r, SHARDS_MAX as usize)
}

/// The first `cap` `r`-subsets of `0..n`, in lexicographic order.
fn combinations_capped(n: usize, r: usize, cap: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut cur: Vec<usize> = (0..r).collect();
    if r == 0 || r > n {
        return out;
    }
    loop {
        out.push(cur.clone());
        let mut i = r;
        while i > 0 && cur[i - 1] == n - r + i - 1 {
            i -= 1;
        }
        if i == 0 || out.len() >= cap {
            return out;
        }
        cur[i - 1] += 1;
        for j in i..r {
            cur[j] = cur[j - 1] + 1;
        }
    }
}

/// The initial placement: shards cycle through every combination of `replicas` disks, so
/// each disk holds about the same number of shards and every pair shares some.
pub fn initial_shards(disk_ids: &[u32], replicas: usize) -> Vec<ShardRec> {
    initial_shards_on(disk_ids, &vec![0; disk_ids.len()], replicas)
}

/// `initial_shards` over disks on hosts (`hosts[i]` is disk i's): only combinations whose
/// disks are all on distinct hosts, while the disks span `replicas` hosts (else every
/// combination, as on one host).
pub fn initial_shards_on(disk_ids: &[u32], hosts: &[u32], replicas: usize) -> Vec<ShardRec> {
    let distinct: HashSet<u32> = hosts.iter().copied().collect();
    let mut combos = combinations(disk_ids.len(), replicas);
    if distinct.len() >= replicas && distinct.len() > 1 {
        // Enumerated further than the cap, so spread ones are not cut off early.
        combos = combinations_capped(disk_ids.len(), replicas, 16 * SHARDS_MAX as usize)
            .into_iter()
            .filter(|c| c.iter().map(|&i| hosts[i]).collect::<HashSet<_>>().len() == c.len())
            .take(SHARDS_MAX as usize)
            .collect();
        if combos.is_empty() {
            combos = combinations(disk_ids.len(), replicas);
        }
    }
    let count = (combos.len() as u32).clamp(SHARDS_MIN, SHARDS_MAX) as usize;
    (0..count)
        .map(|i| {
            let c = &combos[i % combos.len()];
            // Rotate so the first (preferred-read) replica varies too.
            let rot = (i / combos.len()) % replicas;
            let disks = (0..replicas)
                .map(|k| disk_ids[c[(k + rot) % replicas]])
                .collect();
            ShardRec {
                epoch: 1,
                disks,
                class: ShardClass::General,
            }
        })
        .collect()
}

pub fn init(a: &InitArgs) -> anyhow::Result<PoolConfig> {
    check_init_args(a)?;
    if a.disks.len() < a.replicas as usize {
        bail!(
            "{} disk(s) given but --replicas {} needs at least that many distinct disks",
            a.disks.len(),
            a.replicas
        );
    }
    let canon = check_disks(a)?;
    init_with(a, |meta_dir, pool_id| {
        write_new_pool(a, meta_dir, &canon, pool_id).inspect_err(|_| {
            // Leave no label of this pool behind.
            for c in &canon {
                if read_label(c)
                    .ok()
                    .flatten()
                    .is_some_and(|l| l.pool_id == pool_id)
                {
                    let _ = fs::remove_file(c.join(crate::store::LABEL_FILE));
                    crate::store::remove_buckets(&c.join("extents"));
                }
            }
        })
    })
}

/// Makes the pool directory and lets `write(meta dir, pool id)` fill it; on an error
/// leaves nothing behind (metadata, and the pool directory if it was made here).
pub(crate) fn init_with(
    a: &InitArgs,
    write: impl FnOnce(&Path, &str) -> anyhow::Result<PoolConfig>,
) -> anyhow::Result<PoolConfig> {
    check_init_args(a)?;
    let meta_dir = a.pool.join(META_DIR);
    let pool_id = format!("{:032x}", rand::random::<u128>());
    // Metadata, lock and log are the owner's only (names, symlink targets, xattr values).
    let _mask = Umask::private();
    let created_pool_dir = !a.pool.exists();
    let old_mode = fs::metadata(&a.pool).map(|m| m.mode() & 0o7777).ok();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&a.pool)
        .and_then(|_| fs::set_permissions(&a.pool, fs::Permissions::from_mode(0o700)))
        .with_context(|| format!("{}: cannot create pool directory", a.pool.display()))?;
    let res = write(&meta_dir, &pool_id);
    if res.is_err() {
        let _ = fs::remove_dir_all(&meta_dir);
        let _ = fs::remove_file(a.pool.join(crate::metaspace::RESERVE_FILE));
        if created_pool_dir {
            let _ = fs::remove_dir(&a.pool);
        } else if let Some(m) = old_mode {
            let _ = fs::set_permissions(&a.pool, fs::Permissions::from_mode(m));
        }
    }
    res
}

/// The checks on `init`'s arguments that need no disk.
fn check_init_args(a: &InitArgs) -> anyhow::Result<()> {
    if a.replicas == 0 {
        bail!("--replicas must be at least 1");
    }
    if !a.extent_size.is_power_of_two()
        || !(EXTENT_SIZE_MIN..=EXTENT_SIZE_MAX).contains(&a.extent_size)
    {
        bail!("--extent-size must be a power of two between 64KiB and 64MiB");
    }
    if a.pool.join(META_DIR).exists() {
        bail!("{}: a pool already exists here", a.pool.display());
    }
    if a.pool.exists() && !a.pool.is_dir() {
        bail!("{}: exists and is not a directory", a.pool.display());
    }
    Ok(())
}

/// Every disk checked before anything changes: a directory, given once, not writable by
/// others, not in a pool, not inside the pool directory. Returns their canonical paths.
fn check_disks(a: &InitArgs) -> anyhow::Result<Vec<PathBuf>> {
    let mut seen_paths: HashMap<PathBuf, &Path> = HashMap::new();
    let mut seen_ids: HashMap<(u64, u64), &Path> = HashMap::new();
    let mut devs: HashMap<u64, &Path> = HashMap::new();
    let mut canon = Vec::new();
    for d in &a.disks {
        let md = fs::metadata(d).with_context(|| format!("disk {}: cannot access", d.display()))?;
        if !md.is_dir() {
            bail!("disk {}: not a directory", d.display());
        }
        let c =
            fs::canonicalize(d).with_context(|| format!("disk {}: cannot resolve", d.display()))?;
        if let Some(prev) = seen_paths.insert(c.clone(), d) {
            bail!(
                "disk {} given twice (same as {})",
                d.display(),
                prev.display()
            );
        }
        if let Some(prev) = seen_ids.insert((md.dev(), md.ino()), d) {
            bail!(
                "disk {} is the same directory as {}",
                d.display(),
                prev.display()
            );
        }
        check_disk_owner(a, d, &c)?;
        if let Some(prev) = devs.insert(md.dev(), d) {
            tracing::warn!(
                "disks {} and {} share one filesystem: one failure domain, replicas on them do not protect against its loss",
                prev.display(),
                d.display()
            );
            eprintln!(
                "warning: disks {} and {} share one filesystem (one failure domain)",
                prev.display(),
                d.display()
            );
        }
        canon.push(c);
    }
    Ok(canon)
}

/// Refuses a disk others could write, one labelled by a pool, one inside the pool directory.
fn check_disk_owner(a: &InitArgs, d: &Path, c: &Path) -> anyhow::Result<()> {
    if let Some(why) = crate::store::root_exposure(c) {
        bail!(
            "disk {}: {why}: whoever can write it could make foreshard overwrite files",
            d.display()
        );
    }
    if let Some(l) = read_label(c)? {
        bail!(
            "disk {} already belongs to pool {} (as disk {})",
            d.display(),
            l.pool_id,
            l.disk_id
        );
    }
    if c.starts_with(a.pool.canonicalize().unwrap_or_else(|_| a.pool.clone())) {
        bail!("disk {} lies inside the pool directory", d.display());
    }
    Ok(())
}

/// The new pool's metadata in one synced batch, then the disk labels.
fn write_new_pool(
    a: &InitArgs,
    meta_dir: &Path,
    canon: &[PathBuf],
    pool_id: &str,
) -> anyhow::Result<PoolConfig> {
    let ids: Vec<u32> = (0..canon.len() as u32).collect();
    let shards = initial_shards(&ids, a.replicas as usize);
    let disks: Vec<DiskRec> = canon
        .iter()
        .enumerate()
        .map(|(i, c)| DiskRec {
            id: i as u32,
            path: c.to_string_lossy().into_owned(),
            state: DiskState::Up,
        })
        .collect();
    let cfg = write_pool_meta(a, meta_dir, (&disks, &shards), pool_id, &[])?;
    // Labels last: a disk carries this pool's label only once the metadata naming it is
    // durable.
    for (i, c) in canon.iter().enumerate() {
        write_label(c, &Label::new(pool_id, i as u32))?;
    }
    Ok(cfg)
}

pub(crate) fn pool_config(a: &InitArgs, pool_id: &str, shard_count: u32) -> PoolConfig {
    PoolConfig {
        pool_id: pool_id.to_string(),
        replicas: a.replicas,
        extent_size: a.extent_size,
        block_size: BLOCK_SIZE_BYTES.min(a.extent_size as u32),
        shard_count,
    }
}

/// A new pool's metadata (config, disks, shards, root, and `extra` config records) in one
/// synced batch.
pub(crate) fn write_pool_meta(
    a: &InitArgs,
    meta_dir: &Path,
    (disks, shards): (&[DiskRec], &[ShardRec]),
    pool_id: &str,
    extra: &[(&[u8], Vec<u8>)],
) -> anyhow::Result<PoolConfig> {
    let cfg = pool_config(a, pool_id, shards.len() as u32);
    let meta = Meta::open(meta_dir, true)?;
    let mut b = meta.batch();
    b.put_config(&cfg);
    b.put_raw(
        crate::meta::CF_CONFIG,
        crate::meta::FORMAT_KEY,
        &crate::meta::FORMAT_VERSION.to_be_bytes(),
    );
    if a.health_dir.is_some() {
        let s = crate::risk::service::RiskSettings {
            health_dir: a.health_dir.clone(),
            ..Default::default()
        };
        s.validate()?;
        b.put_raw(
            crate::meta::CF_CONFIG,
            crate::risk::service::SETTINGS_KEY,
            &serde_json::to_vec(&s)?,
        );
    }
    for (k, v) in extra {
        b.put_raw(crate::meta::CF_CONFIG, k, v);
    }
    for d in disks {
        b.put_disk(d);
    }
    for (i, s) in shards.iter().enumerate() {
        b.put_shard(i as u32, s);
        for d in &s.disks {
            b.put_disk_shard(*d, i as u32);
        }
    }
    b.put_inode(ROOT_INO, &root_inode());
    meta.write(b)?;
    meta.sync_wal()?;
    Ok(cfg)
}

/// The root directory, owned by whoever makes the pool.
fn root_inode() -> InodeRec {
    let now = crate::fs::now_ns();
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    InodeRec {
        kind: Kind::Dir,
        perm: 0o755,
        uid,
        gid,
        nlink: 2,
        size: 0,
        atime_ns: now,
        mtime_ns: now,
        ctime_ns: now,
        crtime_ns: now,
        rdev: 0,
        parent: ROOT_INO,
        symlink: None,
        alloc: 0,
    }
}

/// Sets the process umask to 0o077 (files 0600, directories 0700 from creation: RocksDB has
/// no mode option) and restores the old one when dropped. The umask is per process.
pub struct Umask(libc::mode_t);

impl Umask {
    pub fn private() -> Umask {
        // SAFETY: umask cannot fail.
        Umask(unsafe { libc::umask(0o077) })
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::umask(self.0) };
    }
}

/// An exclusive lock on the pool, held by the daemon (or an offline command) for its life.
/// The file is held only for its lock.
pub struct PoolLock(#[allow(dead_code)] File);

/// `PoolLock::take` failed because another process holds the lock (the CLI waits on it).
#[derive(Debug, thiserror::Error)]
#[error("{0}: pool is in use (mounted, or another foreshard command is running)")]
pub struct PoolBusy(pub String);

impl PoolLock {
    pub fn take(pool: &Path) -> anyhow::Result<PoolLock> {
        let p = pool.join(LOCK_FILE);
        let f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&p)
            .with_context(|| format!("{}: cannot create lock file", p.display()))?;
        // SAFETY: valid descriptor.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(PoolBusy(pool.display().to_string()).into());
        }
        Ok(PoolLock(f))
    }
}

pub fn is_pool(pool: &Path) -> bool {
    pool.join(META_DIR).join("CURRENT").exists()
}

pub struct Pool {
    pub dir: PathBuf,
    pub meta: Arc<Meta>,
    pub store: Arc<Store>,
    pub cfg: PoolConfig,
    /// A cluster pool's side in etcd (this host is its active metadata host meanwhile).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    pub _lock: PoolLock,
}

impl Pool {
    /// Opens a pool for exclusive use; disks whose label is wrong or missing are marked failed.
    pub fn open(dir: &Path) -> anyhow::Result<Pool> {
        if !dir.is_dir() {
            bail!("{}: no such pool directory", dir.display());
        }
        if !is_pool(dir) {
            bail!(
                "{}: not a foreshard pool (no metadata; run `foreshard init` first)",
                dir.display()
            );
        }
        let lock = PoolLock::take(dir)?;
        let meta = Arc::new(Meta::open(&dir.join(META_DIR), false)?);
        let format = meta.format()?;
        if format < FORMAT_VERSION {
            bail!(
                "{}: pool format {format} (made by an older foreshard); run `foreshard upgrade {}` first (quick, and safe to run again)",
                dir.display(),
                dir.display()
            );
        }
        let cfg = meta
            .config()?
            .context("pool metadata has no configuration record")?;
        let (cluster, disks) = match crate::cluster::conf_of(&meta)? {
            Some(conf) => {
                let (c, disks) = crate::cluster::open(
                    &conf,
                    (&meta, &cfg),
                    (crate::standby::lineage::held_terms(&meta)?, |c| {
                        crate::standby::lineage::after_win(c, &meta)
                    }),
                )
                .with_context(|| format!("cluster {}", conf.url))?;
                (Some(c), disks)
            }
            None => (None, local_disks(&meta, &cfg)?),
        };
        let store = Arc::new(Store::new(disks, cfg.block_size as usize));
        Ok(Pool {
            dir: dir.to_path_buf(),
            meta,
            store,
            cfg,
            cluster,
            _lock: lock,
        })
    }

    pub fn fs(&self, opts: FsOptions) -> anyhow::Result<Arc<Fs>> {
        let fs = Fs::new(
            self.meta.clone(),
            self.store.clone(),
            self.cfg.clone(),
            opts,
        )?;
        if let Some(c) = &self.cluster {
            fs.set_placement_sink(c.clone());
        }
        Ok(fs)
    }
}

/// The disks of a single-host pool; those whose label is wrong or missing are marked failed.
fn local_disks(meta: &Meta, cfg: &PoolConfig) -> anyhow::Result<Vec<Arc<Disk>>> {
    {
        let mut disks = Vec::new();
        for rec in meta.disks()? {
            let disk = Disk::new(rec.id, PathBuf::from(&rec.path), rec.state);
            if rec.state != DiskState::Removed {
                check_disk_format(&disk)?;
                if let Some(why) = crate::store::root_exposure(&disk.root) {
                    // The daemon's stderr is its log.
                    eprintln!("warning: disk {} ({}): {why}", rec.id, rec.path);
                }
            }
            if rec.state != DiskState::Failed {
                if let Err(e) = disk.check_label(&cfg.pool_id) {
                    tracing::error!("disk {} marked failed: {e:#}", rec.id);
                    eprintln!("warning: disk {} ({}) unusable: {e:#}", rec.id, rec.path);
                    disk.set_state(DiskState::Failed);
                }
            }
            disks.push(Arc::new(disk));
        }
        Ok(disks)
    }
}

/// A label from a newer foreshard (an interrupted upgrade by it, say) stops the open: this
/// version cannot know what else changed.
fn check_disk_format(disk: &Disk) -> anyhow::Result<()> {
    if let Ok(Some(l)) = read_label(&disk.root) {
        if l.format > FORMAT_VERSION {
            bail!(
                "disk {} ({}): label format {} was written by a newer foreshard (this one reads formats up to {FORMAT_VERSION}); use that newer version",
                disk.id,
                disk.root.display(),
                l.format
            );
        }
    }
    Ok(())
}

/// Start-up cleanup after a crash: frees inodes that were unlinked while open, and removes
/// extent files that no committed metadata refers to (written but never committed, or
/// replaced but not yet removed). Returns (inodes freed, files removed).
pub fn cleanup(fs: &Fs) -> anyhow::Result<(usize, usize)> {
    let orphans = fs.meta.keys(crate::meta::CF_ORPHANS)?;
    for k in &orphans {
        let ino = u64::from_be_bytes(k[..8].try_into().context("corrupt orphan key")?);
        fs.delete_inode(ino)
            .map_err(|e| anyhow::anyhow!("cannot free orphan inode {ino}: errno {}", e.0))?;
    }
    let mut live: HashSet<(u32, u64, u64, u64)> = HashSet::new();
    fs.meta.each_extent(|ino, index, e| {
        for d in &e.replicas {
            live.insert((*d, ino, index, e.version));
        }
    })?;
    let mut removed = 0;
    for disk in fs.store.disks() {
        if !disk.is_up() {
            continue;
        }
        removed += disk
            .remove_temps()
            .with_context(|| format!("cannot remove temp files on disk {}", disk.id))?;
        for (id, _) in disk
            .scan()
            .with_context(|| format!("cannot scan disk {}", disk.id))?
        {
            if !live.contains(&(disk.id, id.ino, id.index, id.version)) {
                fs.store.remove_extent(&disk, &id);
                removed += 1;
            }
        }
    }
    Ok((orphans.len(), removed))
}

/// A fresh pool in `dir` with `disks` plain-directory disks, opened (for tests and tools).
pub fn create_temp(
    dir: &Path,
    disks: usize,
    replicas: u32,
    extent_size: u64,
) -> anyhow::Result<(Pool, Arc<Fs>)> {
    let ds: Vec<PathBuf> = (0..disks).map(|i| dir.join(format!("disk{i}"))).collect();
    for d in &ds {
        fs::create_dir_all(d)?;
    }
    init(&InitArgs {
        pool: dir.join("pool"),
        disks: ds,
        replicas,
        extent_size,
        health_dir: None,
    })?;
    let p = Pool::open(&dir.join("pool"))?;
    let f = p.fs(FsOptions::default())?;
    f.start_background();
    Ok((p, f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_balanced_and_distinct() {
        let ids = [0, 1, 2, 3];
        let shards = initial_shards(&ids, 2);
        assert!(shards.len() >= SHARDS_MIN as usize);
        let mut per_disk = [0usize; 4];
        for s in &shards {
            assert_eq!(s.disks.len(), 2);
            assert_ne!(s.disks[0], s.disks[1]);
            for d in &s.disks {
                per_disk[*d as usize] += 1;
            }
        }
        let (mn, mx) = (
            per_disk.iter().min().unwrap(),
            per_disk.iter().max().unwrap(),
        );
        assert!(mx - mn <= 2, "unbalanced: {per_disk:?}");
        assert_eq!(combinations(5, 3).len(), 10);
    }

    #[test]
    fn initial_shards_spread_over_hosts() {
        // 4 hosts x 2 disks: every shard's replicas on distinct hosts, all disks used.
        let ids: Vec<u32> = (0..8).collect();
        let hosts: Vec<u32> = ids.iter().map(|i| 1 + i / 2).collect();
        let shards = initial_shards_on(&ids, &hosts, 2);
        assert!(shards.len() >= SHARDS_MIN as usize);
        let mut used = HashSet::new();
        for s in &shards {
            assert_ne!(hosts[s.disks[0] as usize], hosts[s.disks[1] as usize]);
            used.extend(s.disks.iter().copied());
        }
        assert_eq!(used.len(), 8);
        // Two hosts, three replicas: not enough hosts, so every combination (as today).
        let two: Vec<u32> = ids.iter().map(|i| i % 2).collect();
        assert_eq!(initial_shards_on(&ids, &two, 3), initial_shards(&ids, 3));
        // One host: exactly today's answer.
        assert_eq!(initial_shards_on(&ids, &[0; 8], 2), initial_shards(&ids, 2));
    }
}
