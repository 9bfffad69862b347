//! The messages (postcard in a frame's meta), the error kinds and the per-block sums.

use std::io;

use serde::{Deserialize, Serialize};

/// One version of one extent; a version's bytes never change, so a write under it is
/// idempotent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExtentId {
    pub inode: u64,
    pub index: u64,
    pub version: u64,
}

/// Extents one `Scan` answer lists at most (40 bytes each: well under the meta limit).
pub const SCAN_PAGE_MAX: u32 = 4096;

/// blake3 of one block.
pub type Sum = [u8; 32];

/// Who a request is for: the server paces `Recovery` and `Migration` bytes, never `Client`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Class {
    Client,
    Recovery,
    Migration,
}

/// First frame on a connection, server to client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Challenge {
    pub proto: u16,
    pub nonce: [u8; 32],
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// The metadata term (`meta/active`'s create_revision); the fence refuses lower ones.
    pub term: u64,
    pub class: Class,
    pub op: Op,
    /// The server process the sender's disk numbers came from (`HelloOk.incarnation`);
    /// another one refuses with `Restarted` (its disks may be numbered otherwise). 0: any.
    pub incarnation: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Op {
    /// `mac` = keyed blake3 over the server's challenge and `nonce` (see `auth`).
    Hello {
        pool: String,
        host: String,
        proto: u16,
        nonce: [u8; 32],
        mac: [u8; 32],
    },
    /// Followed by `len` bytes in data chunks; `sums` has one entry per `block_bytes` block.
    Write {
        disk: u32,
        id: ExtentId,
        shard: u32,
        epoch: u64,
        len: u64,
        block_bytes: u32,
        sums: Vec<Sum>,
    },
    /// `sums` are those of the blocks `offset..offset + len` covers. The answer is the
    /// covered blocks whole (the last one short at the extent's end), so both ends verify.
    Read {
        disk: u32,
        id: ExtentId,
        offset: u64,
        len: u64,
        block_bytes: u32,
        sums: Vec<Sum>,
    },
    Sync {
        disk: u32,
        ids: Vec<ExtentId>,
    },
    /// `shard_epoch`: a placement change's removal is fenced by the shard's epoch; the
    /// reaper's (a version no record names any more) by the term only.
    Remove {
        disk: u32,
        id: ExtentId,
        shard_epoch: Option<(u32, u64)>,
    },
    /// Up to `limit` extents (at most [`SCAN_PAGE_MAX`]) in id order after `after`.
    Scan {
        disk: u32,
        after: Option<ExtentId>,
        limit: u32,
    },
    /// Start-up cleanup: the temporary files of interrupted writes and copies.
    RemoveTemps {
        disk: u32,
    },
    /// Recovery, target pull: the server reads the extent from the host at `src` (its disk
    /// `src_disk`), checks it against `sums` (the metadata host's), and stages it on
    /// `dst_disk` as the copy `tag`; the bytes never pass through the metadata host.
    CopyFrom {
        src: String,
        src_disk: u32,
        src_incarnation: u64,
        dst_disk: u32,
        id: ExtentId,
        len: u64,
        block_bytes: u32,
        sums: Vec<Sum>,
        shard: u32,
        epoch: u64,
        tag: u32,
    },
    /// Moves staged copy `tag` into place (the metadata host checked it may).
    Install {
        disk: u32,
        id: ExtentId,
        tag: u32,
        shard: u32,
        epoch: u64,
    },
    /// Drops staged copy `tag` (refused at its commit).
    Discard {
        disk: u32,
        id: ExtentId,
        tag: u32,
    },
    Probe {
        disk: u32,
    },
    Space {
        disk: u32,
    },
    /// Recovery, prepared before a failure: connect now (handshake included) to the
    /// extent services at `srcs`, the hosts this host's recovery copies would pull from,
    /// and keep the connections; at most [`CONNECT_SOURCES_MAX`] addresses.
    Connect {
        srcs: Vec<String>,
    },
}

/// Addresses one `Connect` may name (a host keeps at most 64 peer connections).
pub const CONNECT_SOURCES_MAX: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    HelloOk {
        host: String,
        disks: Vec<(u32, String)>,
        mac: [u8; 32],
        /// Random per server process: a client that sees it change knows the host
        /// restarted, and that files written before it and not yet synced may be gone.
        incarnation: u64,
    },
    Done,
    /// Followed by `len` bytes in data chunks.
    Data {
        len: u64,
    },
    Synced {
        failed: Vec<ExtentId>,
    },
    ProbeOk {
        us: u64,
    },
    SpaceOk {
        total_bytes: u64,
        free_bytes: u64,
    },
    /// (extent, file length); `more` when the page was full.
    Listing {
        extents: Vec<(ExtentId, u64)>,
        more: bool,
    },
    Removed {
        count: u64,
    },
    Err(WireError),
    /// Of a `Connect`'s addresses, those this host now holds a connection to.
    Connected {
        count: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WireError {
    /// The disk's fence holds `term` and, for the request's shard, `epoch`.
    #[error("fenced: the disk has seen term {term}, epoch {epoch}")]
    Fenced { term: u64, epoch: u64 },
    #[error("no such extent or disk")]
    NotFound,
    /// `block` counts from the extent's start.
    #[error("checksum mismatch in block {block}")]
    Checksum { block: u64 },
    #[error("I/O error, errno {errno}")]
    Io { errno: i32 },
    #[error("no space left on the disk")]
    NoSpace,
    #[error("frame or request too large")]
    TooLarge,
    #[error("server busy: receive buffers full")]
    Busy,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("server shutting down")]
    ShuttingDown,
    /// The request named disks by an earlier process's numbering.
    #[error("the storage host restarted: ask again with its new disk numbers")]
    Restarted,
}

impl WireError {
    /// A disk operation's error as the server answers it.
    pub fn from_disk(e: &io::Error) -> WireError {
        match e.raw_os_error() {
            Some(libc::ENOSPC) => WireError::NoSpace,
            Some(libc::ENOENT) => WireError::NotFound,
            Some(errno) => WireError::Io { errno },
            None if e.kind() == io::ErrorKind::NotFound => WireError::NotFound,
            None => WireError::Io { errno: libc::EIO },
        }
    }

    /// A socket's error on the client's side (time-outs and resets become their errno).
    pub fn from_transport(e: &io::Error) -> WireError {
        let errno = e.raw_os_error().unwrap_or(match e.kind() {
            io::ErrorKind::TimedOut => libc::ETIMEDOUT,
            io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe => libc::ECONNRESET,
            _ => libc::EIO,
        });
        WireError::Io { errno }
    }

    pub fn timed_out() -> WireError {
        WireError::Io {
            errno: libc::ETIMEDOUT,
        }
    }
}

/// What the local code already handles: `Io` is the errno itself, `NoSpace` ENOSPC,
/// `NotFound` ENOENT; the rest keep the `WireError` inside (`io::Error::get_ref`).
impl From<WireError> for io::Error {
    fn from(e: WireError) -> io::Error {
        match e {
            WireError::Io { errno } => io::Error::from_raw_os_error(errno),
            WireError::NoSpace => io::Error::from_raw_os_error(libc::ENOSPC),
            WireError::NotFound => io::Error::from_raw_os_error(libc::ENOENT),
            // The host, not the disk: handled as the network's (not counted on the disk).
            WireError::Restarted => io::Error::new(io::ErrorKind::ConnectionReset, e),
            other => io::Error::other(other),
        }
    }
}

/// Blocks of `block_bytes` that `len` bytes make (the last one may be short).
pub fn blocks_in(len: u64, block_bytes: u32) -> u64 {
    len.div_ceil(block_bytes as u64)
}

/// The sums a writer sends (computed once, from the bytes the metadata describes).
pub fn block_sums(data: &[u8], block_bytes: u32) -> Vec<Sum> {
    data.chunks(block_bytes as usize)
        .map(|b| *blake3::hash(b).as_bytes())
        .collect()
}

/// Checks `data`'s blocks against `sums`; `first_block` numbers the first one in the error.
pub fn verify_blocks(
    data: &[u8],
    block_bytes: u32,
    sums: &[Sum],
    first_block: u64,
) -> Result<(), WireError> {
    if blocks_in(data.len() as u64, block_bytes) != sums.len() as u64 {
        return Err(WireError::BadRequest(format!(
            "{} bytes in {block_bytes}-byte blocks against {} sums",
            data.len(),
            sums.len()
        )));
    }
    for (i, (block, sum)) in data.chunks(block_bytes as usize).zip(sums).enumerate() {
        // blake3::Hash compares in constant time; speed is what matters here, not secrecy.
        if blake3::hash(block).as_bytes() != sum {
            return Err(WireError::Checksum {
                block: first_block + i as u64,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_catch_a_flipped_byte_in_the_right_block() {
        let mut data = vec![7u8; 40_000];
        let sums = block_sums(&data, 16384);
        assert_eq!(sums.len(), 3);
        assert_eq!(verify_blocks(&data, 16384, &sums, 0), Ok(()));
        data[20_000] ^= 1;
        assert_eq!(
            verify_blocks(&data, 16384, &sums, 5),
            Err(WireError::Checksum { block: 6 })
        );
        assert!(matches!(
            verify_blocks(&data[..100], 16384, &sums, 0),
            Err(WireError::BadRequest(_))
        ));
    }

    #[test]
    fn errors_become_the_errno_the_local_code_counts() {
        let e: io::Error = WireError::Io { errno: libc::EIO }.into();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        let e: io::Error = WireError::NoSpace.into();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        let e = io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(WireError::from_disk(&e), WireError::NoSpace);
        let e = io::Error::new(io::ErrorKind::TimedOut, "t");
        assert_eq!(WireError::from_transport(&e), WireError::timed_out());
    }

    #[test]
    fn messages_survive_postcard() {
        let id = ExtentId {
            inode: 1,
            index: 2,
            version: 3,
        };
        let r = Request {
            term: 9,
            class: Class::Recovery,
            op: Op::Remove {
                disk: 4,
                id,
                shard_epoch: Some((5, 6)),
            },
            incarnation: 11,
        };
        let b = postcard::to_allocvec(&r).unwrap();
        let back: Request = postcard::from_bytes(&b).unwrap();
        assert!(
            matches!(back.op, Op::Remove { disk: 4, id: i, shard_epoch: Some((5, 6)) } if i == id)
        );
        let e = Response::Err(WireError::Fenced { term: 1, epoch: 2 });
        let b = postcard::to_allocvec(&e).unwrap();
        let back: Response = postcard::from_bytes(&b).unwrap();
        assert!(matches!(
            back,
            Response::Err(WireError::Fenced { term: 1, epoch: 2 })
        ));
    }
}
