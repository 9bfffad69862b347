//! foreshard across hosts (issue 20, design in docs/cluster.md): the cluster map kept in
//! etcd (hosts under leases, disks, shards, the active metadata host) and the extent service
//! storage hosts serve their disks with. No RocksDB and no FUSE here, so `cargo test -p
//! foreshard-cluster` builds in minutes on a fresh machine; a single-host pool never runs
//! any of it.

pub mod batch;
pub mod campaign;
pub mod keys;
pub mod map;
pub mod member;
pub mod node;
pub mod records;
pub mod view;
pub mod watch;
pub mod wire;
