//! The parts of foreshard that are plain computation: the disk failure model and shard loss
//! risk (`risk`), the placement rule (`placement`), the fleet simulator (`sim`), block-trace
//! tools (`trace`) and small helpers (`util`). Apart from the filesystem so that they build
//! and test in seconds without RocksDB or FUSE (`cargo test -p foreshard-model`); the
//! `foreshard` crate re-exports them under the same paths.

pub mod placement;
pub mod risk;
pub mod sim;
pub mod trace;
pub mod util;
