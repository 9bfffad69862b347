//! Predictive Failure Model (PFM): the model trained on Backblaze-format SMART records and
//! shard loss risk (`model`, `shard`: in the foreshard-model crate), the collectors (`collect.rs`: smartctl
//! JSON, node_exporter textfiles, /sys/block stats, device discovery), the service that
//! scores each disk of a mounted pool on a timer and publishes the risk placement,
//! agents and evacuation use (`service.rs`) and the
//! `foreshard risk POOL` report (`report.rs`).

pub mod collect;
pub mod report;
pub mod service;

pub use foreshard_model::risk::{model, shard};
