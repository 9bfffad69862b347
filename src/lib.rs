//! foreshard: a replicated, checksummed FUSE filesystem over several backing disks.
//! See ARCHITECTURE.md for the map of modules and their invariants.

pub mod access;
pub mod admin;
pub mod agents;
mod bufmem;
pub mod control;
pub mod daemon;
mod durable;
pub mod fs;
mod fuse;
pub mod meta;
mod metaspace;
mod placement;
pub mod pool;
pub mod recovery;
pub mod risk;
pub mod sharding;
pub mod sim;
pub mod store;
mod supervise;
pub mod trace;
pub mod upgrade;
pub mod util;
mod wake;
