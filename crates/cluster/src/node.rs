//! A storage host (`foreshard node`): joins the cluster under a lease, registers its disks
//! with host and rack, and keeps their space in `diskstat/` (docs/cluster.md, "Membership,
//! failure detection, grace"). Serving the disks' extents is the extent service's part.
//!
//! Each disk directory carries `foreshard.node`, a label with the disk's cluster-wide uuid
//! and the host it belongs to, so a disk keeps its identity when its path changes and a disk
//! moved between chassis is noticed (refused unless `adopt`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use foreshard_model::util::{now_ms, statvfs};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::batch::{Change, Expect};
use crate::keys::check_name;
use crate::map::{CasOutcome, Map};
use crate::member::{join, Membership};
use crate::records::{decode, encode, DiskRecord, DiskState, HostInfo, HostRec, HostState};

pub const NODE_LABEL: &str = "foreshard.node";
/// Disks one host serves at most.
pub const NODE_DISKS_MAX: usize = 64;
/// How often each disk's space and counters go to `diskstat/`.
pub const DISKSTAT_INTERVAL: Duration = Duration::from_secs(60);
const LABEL_BYTES_MAX: u64 = 4096;

/// The label in each disk directory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeLabel {
    pub v: u32,
    pub uuid: String,
    pub host: String,
}

/// What `foreshard node` was given.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    pub disks: Vec<PathBuf>,
    pub rack: Option<String>,
    /// Where the extent service listens, as others reach it.
    pub addr: String,
    pub lease_ttl_s: i64,
    /// Take disks whose label names another host.
    pub adopt: bool,
}

/// `diskstat/<uuid>`: space and health, under the host's lease (gone with the host).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DiskStat {
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub updated_ms: u64,
    /// The disk's latest SMART snapshot as the node read it (the metadata host's risk
    /// model scores it); opaque here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<serde_json::Value>,
    /// Why there is no snapshot (a malformed health file, smartctl failing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_error: Option<String>,
}

/// A health snapshot bigger than this is not published (an error instead): the map's
/// values stay small.
pub const HEALTH_BYTES_MAX: usize = 4 * 1024;

/// What a node reads for disk number `i` (in `--disk` order) at `dir`: a snapshot, or why
/// there is none; (None, None) when it has no source.
pub type HealthFn =
    Arc<dyn Fn(usize, &Path) -> (Option<serde_json::Value>, Option<String>) + Send + Sync>;

pub struct Node {
    pub config: NodeConfig,
    /// (uuid, directory) of each disk, in the order given.
    pub disks: Vec<(String, PathBuf)>,
    pub membership: Membership,
    /// Where SMART comes from for `diskstat` (none: space only).
    pub health: Option<HealthFn>,
}

/// This boot's id: a restart of the same boot waits for its old lease, another machine with
/// the same name is refused.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

impl Node {
    /// Labels the disks, joins, and registers host and disks. Checks everything local
    /// before anything is written to the map.
    pub async fn start(map: &Map, config: NodeConfig) -> anyhow::Result<Node> {
        check_config(&config)?;
        let mut disks = Vec::new();
        for d in &config.disks {
            let label = label_disk(d, &config.name, config.adopt)?;
            disks.push((label.uuid, d.clone()));
        }
        let rec = HostRec {
            addr: config.addr.clone(),
            boot_id: boot_id(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_ms: now_ms(),
        };
        let membership = join(map, &config.name, &rec, config.lease_ttl_s).await?;
        register_host(map, &config).await?;
        for (uuid, dir) in &disks {
            register_disk(map, &config, uuid, dir).await?;
        }
        let node = Node {
            config,
            disks,
            membership,
            health: None,
        };
        node.publish_stats(map).await?;
        Ok(node)
    }

    /// Puts each disk's space under the host's lease (one writer: a plain put).
    pub async fn publish_stats(&self, map: &Map) -> anyhow::Result<()> {
        let lease = self.membership.lease();
        for (i, (uuid, dir)) in self.disks.iter().enumerate() {
            let (total, free) = space(dir)?;
            // A health file read or smartctl may block: off the runtime's async workers.
            let (mut health, mut health_error) = match &self.health {
                Some(f) => tokio::task::block_in_place(|| f(i, dir)),
                None => (None, None),
            };
            let bytes = health.as_ref().map_or(0, |h| h.to_string().len());
            if bytes > HEALTH_BYTES_MAX {
                health = None;
                health_error = Some(format!(
                    "health snapshot of {bytes} bytes (over {HEALTH_BYTES_MAX}) not published"
                ));
            }
            let stat = DiskStat {
                used_bytes: total - free,
                free_bytes: free,
                updated_ms: now_ms(),
                health,
                health_error,
            };
            let key = map.keys().disk_stat(uuid);
            let value = encode(rand::random(), &stat);
            map.retry("diskstat", |mut c| {
                let (k, v) = (key.clone(), value.clone());
                let o = etcd_client::PutOptions::new().with_lease(lease);
                async move { c.put(k, v, Some(o)).await }
            })
            .await?;
        }
        Ok(())
    }

    /// Publishes stats every `interval` until `stop` resolves, then leaves the cluster
    /// (the lease is revoked: the host is gone at once, not after its TTL).
    pub async fn run(
        self,
        map: &Map,
        interval: Duration,
        stop: impl std::future::Future,
    ) -> anyhow::Result<()> {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tick.tick() => {
                    if let Err(e) = self.publish_stats(map).await {
                        tracing::warn!("diskstat: {e:#}");
                    }
                }
            }
        }
        self.membership.leave(map).await
    }
}

/// Checks names and disk directories (nothing is written).
pub fn check_config(c: &NodeConfig) -> anyhow::Result<()> {
    check_name("host name", &c.name)?;
    if let Some(r) = &c.rack {
        check_name("rack", r)?;
    }
    if c.disks.is_empty() || c.disks.len() > NODE_DISKS_MAX {
        bail!(
            "a node serves 1 to {NODE_DISKS_MAX} disks (--disk DIR), got {}",
            c.disks.len()
        );
    }
    let mut seen = std::collections::HashSet::new();
    for d in &c.disks {
        let real = d
            .canonicalize()
            .with_context(|| format!("disk {}: no such directory", d.display()))?;
        if !real.is_dir() {
            bail!("disk {}: not a directory", d.display());
        }
        if !seen.insert(real.clone()) {
            bail!("disk {} given twice", real.display());
        }
    }
    Ok(())
}

/// Longest secret file: 32 raw bytes or 64 hex digits and a newline.
const SECRET_FILE_BYTES_MAX: u64 = 128;

/// The secret the cluster's hosts prove to each other on every extent-service connection:
/// a file of 32 raw bytes or 64 hex digits, a regular file that only its owner can read
/// (anyone else who reads it can talk to every node).
pub fn read_secret(path: &Path) -> anyhow::Result<[u8; 32]> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("secret file {}", path.display()))?;
    if !meta.is_file() || meta.len() > SECRET_FILE_BYTES_MAX {
        bail!(
            "secret file {}: not a regular file of 32 bytes or 64 hex digits",
            path.display()
        );
    }
    if meta.mode() & 0o077 != 0 || meta.uid() != unsafe { libc::geteuid() } {
        bail!(
            "secret file {}: must be owned by this user and private (chmod 600), is mode {:o} uid {}",
            path.display(),
            meta.mode() & 0o7777,
            meta.uid()
        );
    }
    let bytes = std::fs::read(path)?;
    let text = String::from_utf8_lossy(&bytes);
    let hex = text.trim();
    let mut out = [0u8; 32];
    if bytes.len() == 32 {
        out.copy_from_slice(&bytes);
        return Ok(out);
    }
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "secret file {}: not 32 bytes or 64 hex digits",
            path.display()
        );
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex");
    }
    Ok(out)
}

/// Reads the disk's label, or writes a new one (durably: file, then directory).
pub fn label_disk(dir: &Path, host: &str, adopt: bool) -> anyhow::Result<NodeLabel> {
    let path = dir.join(NODE_LABEL);
    match read_label(&path)? {
        Some(l) if l.host == host || adopt => {
            if l.host != host {
                write_label(
                    dir,
                    &NodeLabel {
                        host: host.into(),
                        ..l.clone()
                    },
                )?;
                tracing::warn!(disk = %dir.display(), from = %l.host, "disk adopted");
            }
            Ok(NodeLabel {
                host: host.into(),
                ..l
            })
        }
        Some(l) => bail!(
            "disk {} belongs to host {} (uuid {}): give --adopt to move it to {host}",
            dir.display(),
            l.host,
            l.uuid
        ),
        None => {
            let l = NodeLabel {
                v: 1,
                uuid: new_uuid(),
                host: host.into(),
            };
            write_label(dir, &l)?;
            Ok(l)
        }
    }
}

fn read_label(path: &Path) -> anyhow::Result<Option<NodeLabel>> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    };
    if !meta.is_file() || meta.len() > LABEL_BYTES_MAX {
        bail!(
            "{}: not a node label (a regular file under {LABEL_BYTES_MAX} bytes)",
            path.display()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    let l: NodeLabel = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: corrupt node label", path.display()))?;
    if l.v != 1 || check_name("host", &l.host).is_err() || !valid_uuid(&l.uuid) {
        bail!(
            "{}: corrupt node label (version {}, host {:?}, uuid {:?})",
            path.display(),
            l.v,
            l.host,
            l.uuid
        );
    }
    Ok(Some(l))
}

fn write_label(dir: &Path, l: &NodeLabel) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = dir.join(format!("{NODE_LABEL}.tmp"));
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("{}", tmp.display()))?;
    f.write_all(&serde_json::to_vec(l)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(NODE_LABEL))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

fn new_uuid() -> String {
    let b: [u8; 16] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn valid_uuid(u: &str) -> bool {
    u.len() == 32 && u.bytes().all(|b| b.is_ascii_hexdigit())
}

/// (total, free) bytes of the filesystem under `dir`.
pub fn space(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let (total, free, _, _) = statvfs(dir).with_context(|| format!("statvfs {}", dir.display()))?;
    Ok((total, free))
}

/// Creates `hostinfo/<host>` if absent; a rack given later than the first start is kept
/// as it was (changing it is `host set-rack`'s).
async fn register_host(map: &Map, c: &NodeConfig) -> anyhow::Result<()> {
    let info = HostInfo {
        rack: c.rack.clone(),
        state: HostState::Up,
        since_ms: now_ms(),
        lease_flaps_day: 0,
    };
    let key = map.keys().host_info(&c.name);
    let ch = Change::put(key.clone(), Expect::Absent, encode(rand::random(), &info));
    if let CasOutcome::Conflict { current } = map.cas(0, &[ch], None).await? {
        let have = decode::<HostInfo>(&key, &current[0].value)?.body;
        if have.rack != c.rack {
            tracing::warn!(rack = ?have.rack, given = ?c.rack, "host keeps the rack it registered with");
        }
    }
    Ok(())
}

/// Creates `disks/<uuid>` if absent; one registered by another host is taken over only
/// with `adopt` (the label check above already refused it otherwise).
async fn register_disk(map: &Map, c: &NodeConfig, uuid: &str, dir: &Path) -> anyhow::Result<()> {
    let key = map.keys().disk(uuid);
    let (total, _) = space(dir)?;
    let fresh = DiskRecord {
        host: c.name.clone(),
        path: dir.display().to_string(),
        rack: c.rack.clone(),
        pool: None,
        pool_disk: None,
        state: DiskState::Up,
        total_bytes: total,
    };
    let op = rand::random();
    let ch = Change::put(key.clone(), Expect::Absent, encode(op, &fresh));
    let CasOutcome::Conflict { current } = map.cas(op, &[ch], None).await? else {
        return Ok(());
    };
    let kv = &current[0];
    let have = decode::<DiskRecord>(&key, &kv.value)?.body;
    if have.host != c.name && !c.adopt {
        bail!(
            "disk {uuid} ({}) is registered to host {}: give --adopt",
            dir.display(),
            have.host
        );
    }
    // Same disk, maybe a new path, host or size: keep its pool membership and state.
    let rec = DiskRecord {
        pool: have.pool,
        pool_disk: have.pool_disk,
        state: have.state,
        ..fresh
    };
    let op = rand::random();
    let ch = Change::put(
        key.clone(),
        Expect::Revision(kv.mod_revision),
        encode(op, &rec),
    );
    match map.cas(op, &[ch], None).await? {
        CasOutcome::Applied { .. } => Ok(()),
        other => bail!("disk {uuid}: record changed while registering ({other:?}): start again"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_kept_refused_or_adopted() {
        let d = tempfile::tempdir().unwrap();
        let a = label_disk(d.path(), "s1", false).unwrap();
        assert!(valid_uuid(&a.uuid));
        assert_eq!(label_disk(d.path(), "s1", false).unwrap(), a);
        let e = label_disk(d.path(), "s2", false).unwrap_err();
        assert!(e.to_string().contains("--adopt"), "{e}");
        let b = label_disk(d.path(), "s2", true).unwrap();
        assert_eq!((b.uuid.as_str(), b.host.as_str()), (a.uuid.as_str(), "s2"));
        assert_eq!(label_disk(d.path(), "s2", false).unwrap(), b);
    }

    #[test]
    fn corrupt_or_strange_labels_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(NODE_LABEL);
        for bad in [
            &b"{"[..],
            br#"{"v":1,"uuid":"x","host":"s1"}"#,
            br#"{"v":1,"uuid":"00000000000000000000000000000000","host":"a/b"}"#,
        ] {
            std::fs::write(&p, bad).unwrap();
            assert!(label_disk(d.path(), "s1", true).is_err());
        }
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &p).unwrap();
        assert!(label_disk(d.path(), "s1", true).is_err());
    }

    #[test]
    fn secrets_must_be_private_and_well_formed() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secret");
        let set = |bytes: &[u8], mode: u32| {
            std::fs::write(&p, bytes).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        set(format!("{}\n", "ab".repeat(32)).as_bytes(), 0o600);
        assert_eq!(read_secret(&p).unwrap(), [0xab; 32]);
        set(&[7u8; 32], 0o400);
        assert_eq!(read_secret(&p).unwrap(), [7; 32]);
        set(&[7u8; 32], 0o640);
        assert!(read_secret(&p)
            .unwrap_err()
            .to_string()
            .contains("chmod 600"));
        for bad in [&b"short"[..], &[b'z'; 64][..], &[1u8; 33][..]] {
            set(bad, 0o600);
            assert!(read_secret(&p).is_err(), "{bad:?}");
        }
        assert!(read_secret(&d.path().join("none")).is_err());
    }

    #[test]
    fn configs_are_checked_before_anything_is_written() {
        let d = tempfile::tempdir().unwrap();
        let cfg = |disks: Vec<PathBuf>| NodeConfig {
            name: "s1".into(),
            disks,
            rack: None,
            addr: "x:1".into(),
            lease_ttl_s: 10,
            adopt: false,
        };
        assert!(check_config(&cfg(vec![])).is_err());
        assert!(check_config(&cfg(vec![d.path().join("nope")])).is_err());
        assert!(check_config(&cfg(vec![d.path().into(), d.path().join(".")])).is_err());
        check_config(&cfg(vec![d.path().into()])).unwrap();
        assert!(!d.path().join(NODE_LABEL).exists());
    }
}
