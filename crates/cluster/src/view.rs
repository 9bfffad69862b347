//! What the cluster map says about hosts and disks, as one snapshot (`foreshard hosts`):
//! which hosts are alive (their lease key exists), their state and rack, and their disks
//! with space. Read from etcd at one revision, so the tables never mix two moments.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::map::{Kv, Map};
use crate::node::DiskStat;
use crate::records::{decode, DiskRecord, HostInfo, HostRec, HostState};

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HostView {
    pub name: String,
    /// Its lease is alive (`hosts/<name>` exists).
    pub alive: bool,
    pub addr: Option<String>,
    pub rack: Option<String>,
    pub state: Option<HostState>,
    pub pid: Option<u32>,
    pub version: Option<String>,
    pub disks: Vec<DiskView>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DiskView {
    pub uuid: String,
    #[serde(flatten)]
    pub record: DiskRecord,
    /// From `diskstat/` (present while the host is alive).
    pub used_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ClusterView {
    pub cluster: String,
    /// The etcd revision every record was read at.
    pub revision: i64,
    pub hosts: Vec<HostView>,
    /// Records that did not decode (named, not hidden): a newer writer or damage.
    pub bad_records: Vec<String>,
}

fn tail<'a>(kv: &'a Kv, prefix: &str) -> &'a str {
    kv.key.strip_prefix(prefix).unwrap_or(&kv.key)
}

fn host<'a>(hosts: &'a mut BTreeMap<String, HostView>, name: &str) -> &'a mut HostView {
    hosts.entry(name.to_string()).or_insert_with(|| HostView {
        name: name.to_string(),
        alive: false,
        addr: None,
        rack: None,
        state: None,
        pid: None,
        version: None,
        disks: Vec::new(),
    })
}

/// What one snapshot holds, sorted by record kind.
#[derive(Default)]
struct Parts {
    hosts: BTreeMap<String, HostView>,
    disks: Vec<(String, DiskRecord)>,
    stats: BTreeMap<String, DiskStat>,
}

impl Parts {
    fn absorb(&mut self, k: &crate::keys::Keys, kv: &Kv) -> anyhow::Result<()> {
        let (hp, ip, dp, sp) = (k.hosts(), k.host_infos(), k.disks(), k.disk_stats());
        if kv.key.starts_with(&hp) {
            let rec = decode::<HostRec>(&kv.key, &kv.value)?.body;
            let h = host(&mut self.hosts, tail(kv, &hp));
            h.alive = true;
            h.addr = Some(rec.addr);
            h.pid = Some(rec.pid);
            h.version = Some(rec.version);
        } else if kv.key.starts_with(&ip) {
            let info = decode::<HostInfo>(&kv.key, &kv.value)?.body;
            let h = host(&mut self.hosts, tail(kv, &ip));
            h.rack = info.rack;
            h.state = Some(info.state);
        } else if kv.key.starts_with(&dp) {
            let rec = decode::<DiskRecord>(&kv.key, &kv.value)?.body;
            self.disks.push((tail(kv, &dp).to_string(), rec));
        } else if kv.key.starts_with(&sp) {
            let st = decode::<DiskStat>(&kv.key, &kv.value)?.body;
            self.stats.insert(tail(kv, &sp).to_string(), st);
        }
        Ok(())
    }
}

/// Hosts (alive or not) with their disks, read at one revision.
pub async fn read_view(map: &Map, cluster: &str) -> anyhow::Result<ClusterView> {
    let k = map.keys();
    let snap = map.read_prefix(&k.all()).await?;
    let mut parts = Parts::default();
    let mut bad_records = Vec::new();
    for kv in &snap.kvs {
        if let Err(e) = parts.absorb(k, kv) {
            bad_records.push(format!("{e:#}"));
        }
    }
    let Parts {
        mut hosts,
        disks,
        stats,
    } = parts;
    for (uuid, record) in disks {
        let st = stats.get(&uuid);
        host(&mut hosts, &record.host.clone()).disks.push(DiskView {
            used_bytes: st.map(|s| s.used_bytes),
            free_bytes: st.map(|s| s.free_bytes),
            uuid,
            record,
        });
    }
    Ok(ClusterView {
        cluster: cluster.to_string(),
        revision: snap.revision,
        hosts: hosts.into_values().collect(),
        bad_records,
    })
}
