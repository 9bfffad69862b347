//! The disk failure model trained on Backblaze-format SMART records (`model`) and what it
//! means for a shard: P(every replica lost before repair) (`shard`). The collectors and the
//! daemon's scoring service live in the `foreshard` crate (`foreshard::risk`).

pub mod model;
pub mod shard;
