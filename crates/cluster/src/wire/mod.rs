//! The extent service (docs/cluster.md, "The extent service"): framed TCP on tokio between a
//! metadata host (the client) and the storage hosts that serve their disks with it.
//!
//! - [`frame`]: the 24-byte header and its limits, checked before anything is allocated.
//! - [`msg`]: the postcard messages, [`WireError`] and the per-block blake3 sums.
//! - [`Fence`]: the per-disk `foreshard.fence` log of the highest term and epochs seen.
//! - [`DiskBackend`]: what a server serves; [`DirBackend`] is one directory per disk.
//! - [`Server`] and [`Peer`] (async) / [`Client`] (blocking wrappers for non-async threads).
//!
//! Skipped here (later steps): Label, Fault, the WAL stream.

mod audit;
pub mod auth;
mod backend;
mod client;
mod fence;
pub mod frame;
mod lane;
pub mod msg;
mod pace;
mod server;

use std::time::Duration;

pub use audit::{Audit, AuditLine, AUDIT_BYTES_MAX};
pub use backend::{scan_page, DirBackend, DiskBackend, DiskInfo, Space};
pub use client::{Client, ClientConfig, CopyReq, Ctx, Peer, ReadReq, WriteReq};
pub use fence::{Fence, FenceGuard, FENCE_FILE};
pub use lane::{LANE_CONNS_MAX, LANE_READ_BYTES_MAX};
pub use msg::{
    block_sums, verify_blocks, Class, ExtentId, Sum, WireError, CONNECT_SOURCES_MAX, SCAN_PAGE_MAX,
};
pub use pace::Pacer;
pub use server::{Server, ServerConfig};

/// The protocol version `Hello` carries.
pub const PROTO: u16 = 5;
/// The pool's checksum block (`block_size`); requests carry theirs, this is the default.
pub const BLOCK_BYTES_DEFAULT: u32 = 16 * 1024;
/// Requests in flight on one connection; a caller beyond it waits for a slot.
pub const CONN_REQUESTS_MAX: usize = 16;
/// Data connections a client opens to one peer.
pub const PEER_CONNECTIONS_MAX: usize = 4;
/// Connections one server serves at once (4 hosts' metadata, recovery and lane
/// connections to it are a few dozen).
pub const SERVER_CONNECTIONS_MAX: usize = 256;
/// Receive (and read) buffers one server holds at once; `Busy` beyond it.
pub const SERVER_BUFFER_BYTES_MAX: usize = 256 << 20;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// No byte moving on a connection with a request in flight for this long frees the caller.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole client-class request gets `REQUEST_DEADLINE_BASE + len / REQUEST_BYTES_PER_S`.
pub const REQUEST_DEADLINE_BASE: Duration = Duration::from_secs(1);
pub const REQUEST_BYTES_PER_S: u64 = 32 << 20;
/// Pauses before the 2 further tries of an idempotent request (a write gets the first only).
pub const RETRY_DELAYS: [Duration; 2] = [Duration::from_millis(50), Duration::from_millis(200)];
