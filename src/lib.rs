//! foreshard: a replicated, checksummed FUSE filesystem over several backing disks.
//! See ARCHITECTURE.md for the map of modules and their invariants.

pub mod access;
pub mod admin;
pub mod agents;
pub mod api;
mod bufmem;
pub mod cluster;
mod cluster_hosts;
pub mod cluster_init;
pub mod control;
pub mod daemon;
mod durable;
pub mod fs;
mod fuse;
pub mod inject;
pub mod meta;
mod metaspace;
pub mod pool;
pub mod recovery;
pub mod remote;
pub mod risk;
pub mod sharding;
pub mod source_links;
pub mod standby;
pub mod standby_host;
pub mod store;
mod supervise;
pub mod upgrade;
mod wake;
mod waltap;

// Plain computation lives in the foreshard-model crate (no RocksDB, no FUSE); the same paths
// as before work here.
use foreshard_model::placement;
pub use foreshard_model::{sim, trace, util};
