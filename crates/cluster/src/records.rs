//! The values of the cluster map (docs/cluster.md, "The cluster map in etcd"): JSON, so that
//! `etcdctl get --prefix` can be read by people, each in an envelope with the format
//! version `v` and the `op` id of the change that wrote it (a retried CAS whose first try
//! did apply finds its own `op` and counts as applied).

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use foreshard_model::placement::{DiskState, ShardClass};

/// Format of every value; a reader refuses a newer one rather than guess at it.
pub const RECORD_VERSION: u32 = 1;
/// Largest value the map holds (a diskstat's health snapshot is the biggest, < 2 KiB).
pub const VALUE_BYTES_MAX: usize = 64 * 1024;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Envelope<T> {
    pub v: u32,
    pub op: u64,
    #[serde(flatten)]
    pub body: T,
}

pub fn encode<T: Serialize>(op: u64, body: &T) -> Vec<u8> {
    let env = Envelope {
        v: RECORD_VERSION,
        op,
        body,
    };
    serde_json::to_vec(&env).expect("map records always encode")
}

/// Decodes a value read from etcd; `key` names it in the error.
pub fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> anyhow::Result<Envelope<T>> {
    if bytes.len() > VALUE_BYTES_MAX {
        bail!(
            "cluster map record {key}: {} bytes, over the limit",
            bytes.len()
        );
    }
    let head: serde_json::Value = serde_json::from_slice(bytes)
        .with_context(|| format!("cluster map record {key}: not JSON"))?;
    match head.get("v").and_then(|v| v.as_u64()) {
        Some(v) if v == RECORD_VERSION as u64 => {}
        Some(v) => bail!(
            "cluster map record {key}: format {v}, this foreshard reads {RECORD_VERSION} \
             (written by a newer version?)"
        ),
        None => bail!("cluster map record {key}: no format version"),
    }
    serde_json::from_value(head).with_context(|| format!("cluster map record {key}: bad fields"))
}

/// The `op` of a stored value, if it has one (any version).
pub fn op_of(bytes: &[u8]) -> Option<u64> {
    let head: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    head.get("op")?.as_u64()
}

/// `hosts/<host>`: the host is alive (under its lease).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HostRec {
    /// Where its extent service listens, `ip:port`.
    pub addr: String,
    /// /proc/sys/kernel/random/boot_id: tells a restart of the same boot from another machine.
    pub boot_id: String,
    pub pid: u32,
    pub version: String,
    pub started_ms: u64,
}

/// A host's state, by the same names (and meaning, for the host as a whole) as a disk's.
pub type HostState = DiskState;

/// `hostinfo/<host>`: what outlives the lease.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HostInfo {
    pub rack: Option<String>,
    pub state: HostState,
    pub since_ms: u64,
    /// Rejoins with a new lease in the last day (a host risk signal).
    pub lease_flaps_day: u32,
}

/// `disks/<uuid>`: a disk some host registered, and the pool that claimed it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DiskRecord {
    pub host: String,
    pub path: String,
    pub rack: Option<String>,
    pub pool: Option<String>,
    /// The pool's disk id, the one extent records use.
    pub pool_disk: Option<u32>,
    pub state: DiskState,
    pub total_bytes: u64,
}

/// `pools/<pool>/shards/<shard>`: the truth for placements and epochs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardRecord {
    pub epoch: u64,
    pub disks: Vec<u32>,
    pub class: ShardClass,
}

/// `pools/<pool>/meta/active`, under the active metadata host's lease.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MetaActive {
    pub host: String,
    pub addr: String,
    pub started_ms: u64,
}

/// `pools/<pool>/meta/standby/<host>`, under the standby's lease: where the active metadata
/// host sends it the pool's metadata.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MetaStandby {
    pub addr: String,
    pub started_ms: u64,
}

/// `pools/<pool>/meta/sync`: the standby that may take over, and up to where it holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MetaSync {
    pub standby: Option<String>,
    pub seq: u64,
    /// The term `host` won at (0: written by a takeover's campaign, its own revision).
    pub term: i64,
    /// The metadata host whose copy is current (None in records of older versions).
    #[serde(default)]
    pub host: Option<String>,
}

impl MetaSync {
    /// Whether `host`, whose copy of the metadata held `terms`, holds the current copy
    /// (term 0: a takeover's own transaction, whose term is that transaction's revision).
    pub fn allows(&self, host: &str, terms: &[i64]) -> bool {
        match self.host.as_deref() {
            None => true,
            Some(h) => h == host && (self.term == 0 || terms.contains(&self.term)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard() -> ShardRecord {
        ShardRecord {
            epoch: 7,
            disks: vec![1, 4],
            class: ShardClass::Hot,
        }
    }

    #[test]
    fn round_trip_and_readable_json() {
        let b = encode(42, &shard());
        let text = String::from_utf8(b.clone()).unwrap();
        assert_eq!(
            text,
            r#"{"v":1,"op":42,"epoch":7,"disks":[1,4],"class":"hot"}"#
        );
        let env: Envelope<ShardRecord> = decode("k", &b).unwrap();
        assert_eq!((env.op, env.body), (42, shard()));
        assert_eq!(op_of(&b), Some(42));
    }

    #[test]
    fn newer_missing_or_bad_records_are_refused_with_the_key() {
        let newer = br#"{"v":2,"op":1,"epoch":7,"disks":[],"class":"hot"}"#;
        let e = decode::<ShardRecord>("/k/7", newer).unwrap_err();
        assert!(format!("{e:#}").contains("/k/7") && format!("{e:#}").contains("newer"));
        assert!(decode::<ShardRecord>("k", br#"{"op":1}"#).is_err());
        assert!(decode::<ShardRecord>("k", b"\xff\x00").is_err());
        let wrong = br#"{"v":1,"op":1,"epoch":"x","disks":[],"class":"hot"}"#;
        assert!(decode::<ShardRecord>("k", wrong).is_err());
        let huge = vec![b' '; VALUE_BYTES_MAX + 1];
        assert!(decode::<ShardRecord>("k", &huge).is_err());
    }
}
