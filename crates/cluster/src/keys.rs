//! Where each record of the cluster map lives in etcd (docs/cluster.md, "The cluster map in
//! etcd"), and the `--cluster` URL that names the etcd members and the cluster.
//!
//! Every key is under `/foreshard/<cluster>/`. Names that become key parts (cluster, host,
//! pool) are checked here, once, so that no name can reach into another record's keys
//! (a host called `a/../b` or one with a NUL would).

use anyhow::{bail, Context};

/// Longest host, pool or cluster name: keys stay short and fit any table column.
pub const NAME_BYTES_MAX: usize = 64;
/// More members than this is a mistake in the URL (etcd clusters have 3, 5 or 7).
pub const ENDPOINTS_MAX: usize = 16;

/// What `--cluster etcd://h1:2379,h2:2379/lab` says: the members and the cluster's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterUrl {
    /// `http://host:port` for each member, in the order given.
    pub endpoints: Vec<String>,
    pub cluster: String,
}

impl ClusterUrl {
    pub fn parse(url: &str) -> anyhow::Result<ClusterUrl> {
        let rest = url.strip_prefix("etcd://").with_context(|| {
            format!("--cluster {url:?}: expected etcd://HOST:PORT[,HOST:PORT...][/CLUSTER]")
        })?;
        let (hosts, cluster) = match rest.split_once('/') {
            Some((h, c)) if !c.is_empty() => (h, c),
            Some((h, _)) => (h, "default"),
            None => (rest, "default"),
        };
        check_name("cluster name", cluster)?;
        let mut endpoints = Vec::new();
        for hp in hosts.split(',') {
            let (host, port) = hp
                .rsplit_once(':')
                .with_context(|| format!("--cluster {url:?}: member {hp:?} has no :PORT"))?;
            let port: u16 = port
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .with_context(|| format!("--cluster {url:?}: bad port in {hp:?}"))?;
            let host_ok = !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b));
            if !host_ok {
                bail!("--cluster {url:?}: bad member host {host:?}");
            }
            endpoints.push(format!("http://{host}:{port}"));
        }
        if endpoints.len() > ENDPOINTS_MAX {
            bail!("--cluster {url:?}: more than {ENDPOINTS_MAX} members");
        }
        Ok(ClusterUrl {
            endpoints,
            cluster: cluster.to_string(),
        })
    }
}

/// Host, pool and cluster names: 1 to 64 of `[A-Za-z0-9._-]`, not starting with a dot.
pub fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= NAME_BYTES_MAX
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        bail!(
            "{what} {name:?}: use 1 to {NAME_BYTES_MAX} letters, digits, '.', '_' or '-' \
             (not starting with '.')"
        );
    }
    Ok(())
}

/// The keys of one cluster. Built only from checked names.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(cluster: &str) -> anyhow::Result<Keys> {
        check_name("cluster name", cluster)?;
        Ok(Keys {
            prefix: format!("/foreshard/{cluster}/"),
        })
    }
    /// Everything of this cluster (a watch or a dump).
    pub fn all(&self) -> String {
        self.prefix.clone()
    }
    /// `hosts/<host>`: present while the host's lease lives.
    pub fn host(&self, host: &str) -> String {
        format!("{}hosts/{host}", self.prefix)
    }
    pub fn hosts(&self) -> String {
        format!("{}hosts/", self.prefix)
    }
    pub fn host_info(&self, host: &str) -> String {
        format!("{}hostinfo/{host}", self.prefix)
    }
    pub fn host_infos(&self) -> String {
        format!("{}hostinfo/", self.prefix)
    }
    pub fn disk(&self, uuid: &str) -> String {
        format!("{}disks/{uuid}", self.prefix)
    }
    pub fn disks(&self) -> String {
        format!("{}disks/", self.prefix)
    }
    pub fn disk_stat(&self, uuid: &str) -> String {
        format!("{}diskstat/{uuid}", self.prefix)
    }
    pub fn disk_stats(&self) -> String {
        format!("{}diskstat/", self.prefix)
    }
    pub fn pool_config(&self, pool: &str) -> String {
        format!("{}pools/{pool}/config", self.prefix)
    }
    /// Shard keys sort by shard number (fixed-width hex), so a paged read is in shard order.
    pub fn shard(&self, pool: &str, shard: u32) -> String {
        format!("{}pools/{pool}/shards/{shard:08x}", self.prefix)
    }
    pub fn shards(&self, pool: &str) -> String {
        format!("{}pools/{pool}/shards/", self.prefix)
    }
    /// Its create_revision is the metadata term.
    pub fn meta_active(&self, pool: &str) -> String {
        format!("{}pools/{pool}/meta/active", self.prefix)
    }
    pub fn meta_sync(&self, pool: &str) -> String {
        format!("{}pools/{pool}/meta/sync", self.prefix)
    }
    /// A standby metadata host's address, under its lease.
    pub fn meta_standby(&self, pool: &str, host: &str) -> String {
        format!("{}pools/{pool}/meta/standby/{host}", self.prefix)
    }
    pub fn meta_standbys(&self, pool: &str) -> String {
        format!("{}pools/{pool}/meta/standby/", self.prefix)
    }
    pub fn drain(&self, pool: &str, host: &str) -> String {
        format!("{}pools/{pool}/drains/{host}", self.prefix)
    }
}

/// The shard number in a key made by `Keys::shard`, or None for any other key.
pub fn shard_of_key(key: &str) -> Option<u32> {
    let (_, hex) = key.rsplit_once("/shards/")?;
    if hex.len() != 8 {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// The end of a prefix range for etcd: the prefix with its last byte raised by one.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls() {
        let u = ClusterUrl::parse("etcd://10.0.0.1:2379,e2:2380/lab").unwrap();
        assert_eq!(u.endpoints, ["http://10.0.0.1:2379", "http://e2:2380"]);
        assert_eq!(u.cluster, "lab");
        assert_eq!(ClusterUrl::parse("etcd://h:1").unwrap().cluster, "default");
        assert_eq!(ClusterUrl::parse("etcd://h:1/").unwrap().cluster, "default");
        for bad in [
            "http://h:1",
            "etcd://h",
            "etcd://h:0",
            "etcd://h:99999",
            "etcd://:1",
            "etcd://h:1/a/b",
            "etcd://h:1/..",
            "etcd://h/x:1",
            "etcd://h:1,,g:2",
        ] {
            assert!(ClusterUrl::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn names_cannot_reach_other_keys() {
        for bad in ["", "a/b", "..", ".x", "a b", "a\0b", &"x".repeat(65)] {
            assert!(check_name("host", bad).is_err(), "{bad:?} accepted");
        }
        check_name("host", "s1.rack-2_a").unwrap();
        assert!(Keys::new("a/b").is_err());
    }

    #[test]
    fn shard_keys_sort_and_parse() {
        let k = Keys::new("lab").unwrap();
        assert_eq!(k.shard("p", 10), "/foreshard/lab/pools/p/shards/0000000a");
        assert!(k.shard("p", 9) < k.shard("p", 10));
        assert!(k.shard("p", 255) < k.shard("p", 256));
        assert_eq!(shard_of_key(&k.shard("p", 77)), Some(77));
        assert_eq!(shard_of_key(&k.pool_config("p")), None);
        assert!(k.shard("p", 1).starts_with(&k.shards("p")));
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }
}
