//! The standby metadata host (docs/cluster.md, "The metadata host and its standby").
//!
//! The active metadata host (the mount) sends a standby a RocksDB checkpoint of the pool's
//! metadata, then every WAL batch once it is durable there ([`ship`]); every WAL sync
//! (fsync) waits for the standby's ack of it, or for the standby's removal from the cluster
//! map's `meta/sync` when no ack comes in time. The standby ([`follow`]) applies and syncs
//! what it gets before it acks, and takes over (mounts) when the active's lease lapses,
//! through a campaign that compares the `meta/sync` revision that named it: it holds every
//! batch an acknowledged fsync depended on.
//!
//! The link is a small framed protocol over one TCP connection (the extent service's frames
//! carry extents, not streams of batches): a 16-byte header (`"FSM1"`, kind, meta length,
//! payload length, both checked before anything is allocated), JSON meta, raw payload. The
//! active connects (it learns the standby's address from `meta/standby/<host>`), and both
//! sides prove the pool secret with the extent service's challenge-response.

pub mod lineage;
pub mod ship;

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

const MAGIC: [u8; 4] = *b"FSM1";
const HEADER_BYTES: usize = 16;
const META_BYTES_MAX: u32 = 64 << 10;
/// One checkpoint chunk, or one WAL batch (a batch over it is refused by the sender).
pub const PAYLOAD_BYTES_MAX: u32 = 8 << 20;
/// A WAL sync waits this long for the standby's ack before it drops the standby.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// With nothing to send, the active sends a sync point this often (the standby's idle
/// limit is `IDLE_TIMEOUT`).
pub const HEARTBEAT: Duration = Duration::from_millis(500);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A checkpoint of at most this many files, each at most this big, is accepted.
pub const CHECKPOINT_FILES_MAX: u32 = 100_000;
pub const CHECKPOINT_FILE_BYTES_MAX: u64 = 64 << 30;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Msg {
    /// Standby to active, first: the nonce the active's Hello must cover.
    Challenge {
        nonce: [u8; 32],
    },
    Hello {
        pool: String,
        host: String,
        term: i64,
        nonce: [u8; 32],
        mac: [u8; 32],
    },
    HelloOk {
        mac: [u8; 32],
    },
    /// A checkpoint file; `len` bytes follow in `Data` frames.
    File {
        name: String,
        len: u64,
        sum: [u8; 32],
    },
    Data,
    CheckpointDone {
        files: u32,
    },
    /// The checkpoint is in place and open: the standby holds every batch up to `seq`.
    Loaded {
        seq: u64,
    },
    /// One WAL batch (payload), whose first sequence number is `seq`.
    Batch {
        seq: u64,
    },
    /// Every batch up to `seq` is sent: sync them and ack.
    Sync {
        seq: u64,
    },
    /// `handover`: the standby was asked to take over (`foreshard promote`): the active
    /// unmounts, keeping it named, so it takes over as soon as the lease is revoked.
    Ack {
        seq: u64,
        #[serde(default)]
        handover: bool,
    },
    Refused {
        why: String,
    },
}

pub fn send(w: &mut impl Write, m: &Msg, payload: &[u8]) -> anyhow::Result<()> {
    let meta = serde_json::to_vec(m)?;
    if meta.len() > META_BYTES_MAX as usize || payload.len() > PAYLOAD_BYTES_MAX as usize {
        bail!(
            "standby frame too big ({} + {} bytes)",
            meta.len(),
            payload.len()
        );
    }
    let mut h = [0u8; HEADER_BYTES];
    h[0..4].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&(meta.len() as u32).to_le_bytes());
    h[12..16].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    w.write_all(&h)?;
    w.write_all(&meta)?;
    w.write_all(payload)?;
    Ok(())
}

/// The next frame: its message and payload (read into `buf`, reused).
pub fn recv(r: &mut impl Read, buf: &mut Vec<u8>) -> anyhow::Result<Msg> {
    let mut h = [0u8; HEADER_BYTES];
    r.read_exact(&mut h).context("standby link")?;
    if h[0..4] != MAGIC {
        bail!("standby link: not a foreshard metadata stream");
    }
    let meta_len = u32::from_le_bytes(h[8..12].try_into().unwrap());
    let payload_len = u32::from_le_bytes(h[12..16].try_into().unwrap());
    if meta_len > META_BYTES_MAX || payload_len > PAYLOAD_BYTES_MAX {
        bail!("standby link: frame of {meta_len} + {payload_len} bytes, over the limits");
    }
    let mut meta = vec![0u8; meta_len as usize];
    r.read_exact(&mut meta).context("standby link")?;
    buf.resize(payload_len as usize, 0);
    r.read_exact(buf).context("standby link")?;
    serde_json::from_slice(&meta).context("standby link: bad message")
}

/// A checkpoint file name as sent: one plain component (RocksDB's names), nothing that
/// could leave the directory it is written into.
pub fn check_file_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        bail!("standby link: bad checkpoint file name {name:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_oversize_or_foreign_ones_are_refused() {
        let mut wire = Vec::new();
        send(&mut wire, &Msg::Batch { seq: 7 }, b"abc").unwrap();
        let ack = Msg::Ack {
            seq: 9,
            handover: false,
        };
        send(&mut wire, &ack, b"").unwrap();
        let mut r = &wire[..];
        let mut buf = Vec::new();
        assert_eq!(recv(&mut r, &mut buf).unwrap(), Msg::Batch { seq: 7 });
        assert_eq!(buf, b"abc");
        assert_eq!(recv(&mut r, &mut buf).unwrap(), ack);
        assert!(recv(&mut r, &mut buf).is_err(), "end of stream");

        let mut big = wire.clone();
        big[12..16].copy_from_slice(&(PAYLOAD_BYTES_MAX + 1).to_le_bytes());
        let e = recv(&mut &big[..], &mut buf).unwrap_err();
        assert!(format!("{e:#}").contains("over the limits"), "{e:#}");
        let mut foreign = wire;
        foreign[0] = b'X';
        assert!(recv(&mut &foreign[..], &mut buf).is_err());
        assert!(send(&mut Vec::new(), &Msg::Data, &vec![0; 9 << 20]).is_err());
    }

    #[test]
    fn checkpoint_file_names_stay_in_their_directory() {
        for ok in ["CURRENT", "000012.sst", "MANIFEST-000005", "OPTIONS-000007"] {
            check_file_name(ok).unwrap();
        }
        for bad in ["", ".", "..", "../x", "a/b", "/etc/passwd", "a\0b"] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
    }
}
