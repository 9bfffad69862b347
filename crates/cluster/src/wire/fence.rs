//! The per-disk fence (docs/cluster.md, "Fencing on the data path"): the highest term and
//! the highest epoch per shard a disk has seen, in `DIR/foreshard.fence`, so the fence
//! travels with the data it protects.
//!
//! The file is an append-only log of 16-byte records `kind u8, reserved u8, shard u32,
//! value u64, check u16` (little-endian; `check` is the first 2 bytes of blake3 over the
//! first 14, standing in for a crc16). It is replayed at open and rewritten whole (tmp +
//! rename) when it holds 4x the live records.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard};

use super::msg::WireError;

pub const FENCE_FILE: &str = "foreshard.fence";
const RECORD_BYTES: usize = 16;
const KIND_TERM: u8 = 1;
const KIND_EPOCH: u8 = 2;
/// Below this many records the log is never compacted (a few raises are not worth it).
const COMPACT_RECORDS_MIN: usize = 64;
const COMPACT_FACTOR: usize = 4;

pub struct Fence {
    dir: PathBuf,
    table: RwLock<Table>,
    /// Requests refused so far (for the node's counters).
    refused: AtomicU64,
}

struct Table {
    term: u64,
    epochs: HashMap<u32, u64>,
    file: File,
    records: usize,
}

/// Held while a request is served, so a raise (which takes the write lock) is ordered
/// wholly before or after it.
pub struct FenceGuard<'a>(RwLockReadGuard<'a, Table>);

impl FenceGuard<'_> {
    /// The fence as the admitted request sees it (read from the held lock: asking the
    /// `Fence` again while holding it could wait behind a writer).
    pub fn term(&self) -> u64 {
        self.0.term
    }
    pub fn epoch(&self, shard: u32) -> u64 {
        self.0.epochs.get(&shard).copied().unwrap_or(0)
    }
}

enum Judge {
    Admit,
    Raise,
    Refuse(WireError),
}

fn record(kind: u8, shard: u32, value: u64) -> [u8; RECORD_BYTES] {
    let mut r = [0u8; RECORD_BYTES];
    r[0] = kind;
    r[2..6].copy_from_slice(&shard.to_le_bytes());
    r[6..14].copy_from_slice(&value.to_le_bytes());
    let check = blake3::hash(&r[..14]);
    r[14..16].copy_from_slice(&check.as_bytes()[..2]);
    r
}

/// `(kind, shard, value)`, or None for a torn or damaged record.
fn parse(r: &[u8]) -> Option<(u8, u32, u64)> {
    let check = blake3::hash(&r[..14]);
    if r[14..16] != check.as_bytes()[..2] || !matches!(r[0], KIND_TERM | KIND_EPOCH) {
        return None;
    }
    let shard = u32::from_le_bytes(r[2..6].try_into().ok()?);
    Some((r[0], shard, u64::from_le_bytes(r[6..14].try_into().ok()?)))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Fence {
    /// Replays `dir/foreshard.fence` (made empty if absent). A torn last record (a crash
    /// during an append that was never acknowledged) is cut off; damage before the last
    /// record is an error, since it could hide a raise.
    pub fn open(dir: &Path) -> io::Result<Fence> {
        let path = dir.join(FENCE_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (mut term, mut epochs, mut records) = (0u64, HashMap::new(), 0usize);
        for (i, r) in bytes.chunks(RECORD_BYTES).enumerate() {
            let last = (i + 1) * RECORD_BYTES >= bytes.len();
            match (r.len() == RECORD_BYTES).then(|| parse(r)).flatten() {
                Some((KIND_TERM, _, v)) => term = term.max(v),
                Some((_, shard, v)) => {
                    let e = epochs.entry(shard).or_insert(0);
                    *e = v.max(*e);
                }
                None if last => {
                    file.set_len((i * RECORD_BYTES) as u64)?;
                    file.sync_data()?;
                    break;
                }
                None => {
                    let msg = format!("{}: damaged record {i}", path.display());
                    return Err(io::Error::new(io::ErrorKind::InvalidData, msg));
                }
            }
            records += 1;
        }
        let table = Table {
            term,
            epochs,
            file,
            records,
        };
        Ok(Fence {
            dir: dir.to_path_buf(),
            table: RwLock::new(table),
            refused: AtomicU64::new(0),
        })
    }

    pub fn term(&self) -> u64 {
        self.table.read().expect("fence lock").term
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn refuse(&self, e: WireError, term: u64, shard_epoch: Option<(u32, u64)>) -> WireError {
        self.refused.fetch_add(1, Ordering::Relaxed);
        tracing::info!(dir = %self.dir.display(), term, ?shard_epoch, seen = %e, "fenced");
        e
    }

    pub fn epoch(&self, shard: u32) -> u64 {
        let t = self.table.read().expect("fence lock");
        t.epochs.get(&shard).copied().unwrap_or(0)
    }

    fn judge(t: &Table, term: u64, shard_epoch: Option<(u32, u64)>) -> Judge {
        let (shard, epoch) = shard_epoch.unwrap_or((0, 0));
        let seen = t.epochs.get(&shard).copied().unwrap_or(0);
        let fenced = WireError::Fenced {
            term: t.term,
            epoch: seen,
        };
        if term < t.term || (shard_epoch.is_some() && epoch < seen) {
            Judge::Refuse(fenced)
        } else if term > t.term || (shard_epoch.is_some() && epoch > seen) {
            Judge::Raise
        } else {
            Judge::Admit
        }
    }

    /// The memory-only check (no raise): a server uses it to refuse a stale write before it
    /// takes the write's bytes; [`Fence::admit`] decides.
    pub fn check(&self, term: u64, shard_epoch: Option<(u32, u64)>) -> Result<(), WireError> {
        match Self::judge(&self.table.read().expect("fence lock"), term, shard_epoch) {
            Judge::Refuse(e) => Err(self.refuse(e, term, shard_epoch)),
            _ => Ok(()),
        }
    }

    /// Admits a request with `term` and, for a mutating one, `(shard, epoch)`: a higher
    /// value is made durable first (append + fdatasync), a lower one is refused with the
    /// values seen. Blocks on the disk when it raises.
    pub fn admit(
        &self,
        term: u64,
        shard_epoch: Option<(u32, u64)>,
    ) -> Result<FenceGuard<'_>, WireError> {
        loop {
            {
                let t = self.table.read().expect("fence lock");
                match Self::judge(&t, term, shard_epoch) {
                    Judge::Admit => return Ok(FenceGuard(t)),
                    Judge::Refuse(e) => return Err(self.refuse(e, term, shard_epoch)),
                    Judge::Raise => {}
                }
            }
            let mut t = self.table.write().expect("fence lock");
            if let Judge::Raise = Self::judge(&t, term, shard_epoch) {
                self.raise(&mut t, term, shard_epoch)
                    .map_err(|e| WireError::from_disk(&e))?;
            }
            // Judged again under the read lock: another raise may have come in between.
        }
    }

    fn raise(&self, t: &mut Table, term: u64, shard_epoch: Option<(u32, u64)>) -> io::Result<()> {
        let mut buf = Vec::with_capacity(2 * RECORD_BYTES);
        if term > t.term {
            buf.extend_from_slice(&record(KIND_TERM, 0, term));
        }
        if let Some((shard, epoch)) = shard_epoch {
            if epoch > t.epochs.get(&shard).copied().unwrap_or(0) {
                buf.extend_from_slice(&record(KIND_EPOCH, shard, epoch));
            }
        }
        t.file.write_all(&buf)?;
        t.file.sync_data()?;
        // Only what is durable counts as seen.
        t.term = t.term.max(term);
        if let Some((shard, epoch)) = shard_epoch {
            let e = t.epochs.entry(shard).or_insert(0);
            *e = epoch.max(*e);
        }
        t.records += buf.len() / RECORD_BYTES;
        let live = 1 + t.epochs.len();
        if t.records > COMPACT_RECORDS_MIN && t.records > COMPACT_FACTOR * live {
            self.compact(t)?;
        }
        Ok(())
    }

    /// The disk left its pool (its record names none): the pool's shard epochs are
    /// forgotten, durably, so the next pool's shards start low. The term stays: terms are
    /// etcd revisions, so every later metadata host's is higher, and a stale one stays
    /// refused. True when there was something to forget.
    pub fn release(&self) -> io::Result<bool> {
        let mut t = self.table.write().expect("fence lock");
        if t.epochs.is_empty() {
            return Ok(false);
        }
        t.epochs.clear();
        self.compact(&mut t)?;
        Ok(true)
    }

    /// Rewrites the live table to a temporary file and renames it over the log.
    fn compact(&self, t: &mut Table) -> io::Result<()> {
        let tmp = self.dir.join(format!("{FENCE_FILE}.tmp"));
        let mut buf = Vec::with_capacity((1 + t.epochs.len()) * RECORD_BYTES);
        buf.extend_from_slice(&record(KIND_TERM, 0, t.term));
        let mut shards: Vec<_> = t.epochs.iter().collect();
        shards.sort();
        for (&shard, &epoch) in shards {
            buf.extend_from_slice(&record(KIND_EPOCH, shard, epoch));
        }
        let mut f = File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join(FENCE_FILE))?;
        sync_dir(&self.dir)?;
        t.file = OpenOptions::new()
            .append(true)
            .open(self.dir.join(FENCE_FILE))?;
        t.records = buf.len() / RECORD_BYTES;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_disk_forgets_epochs_not_the_term() {
        let d = tempfile::tempdir().unwrap();
        let f = Fence::open(d.path()).unwrap();
        drop(f.admit(7, Some((3, 9))).unwrap());
        assert!(f.release().unwrap());
        assert!(!f.release().unwrap());
        let f = Fence::open(d.path()).unwrap();
        assert_eq!((f.term(), f.epoch(3)), (7, 0));
        drop(f.admit(8, Some((3, 1))).unwrap());
        assert_eq!(
            f.admit(6, None).err(),
            Some(WireError::Fenced { term: 8, epoch: 0 })
        );
    }

    fn fenced(term: u64, epoch: u64) -> Result<(), WireError> {
        Err(WireError::Fenced { term, epoch })
    }

    #[test]
    fn raises_refuses_and_replays() {
        let d = tempfile::tempdir().unwrap();
        let f = Fence::open(d.path()).unwrap();
        assert!(f.admit(5, Some((3, 10))).is_ok());
        assert!(f.admit(5, None).is_ok());
        assert_eq!(f.admit(4, None).map(|_| ()), fenced(5, 0));
        assert_eq!(f.admit(5, Some((3, 9))).map(|_| ()), fenced(5, 10));
        assert_eq!(f.check(6, Some((3, 9))), fenced(5, 10));
        assert!(f.admit(5, Some((4, 1))).is_ok());
        assert_eq!(f.refused(), 3);
        drop(f);
        let f = Fence::open(d.path()).unwrap();
        assert_eq!((f.term(), f.epoch(3), f.epoch(4)), (5, 10, 1));
        assert_eq!(f.refused(), 0, "counted per process, not kept");
        assert_eq!(f.admit(5, Some((3, 9))).map(|_| ()), fenced(5, 10));
    }

    #[test]
    fn torn_tail_is_cut_and_damage_before_it_refused() {
        let d = tempfile::tempdir().unwrap();
        let f = Fence::open(d.path()).unwrap();
        drop(f.admit(2, Some((1, 1))).unwrap());
        drop(f);
        let path = d.path().join(FENCE_FILE);
        let mut bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 2 * RECORD_BYTES);
        bytes.extend_from_slice(&[1, 0, 0]);
        fs::write(&path, &bytes).unwrap();
        let f = Fence::open(d.path()).unwrap();
        assert_eq!((f.term(), f.epoch(1)), (2, 1));
        drop(f);
        assert_eq!(fs::metadata(&path).unwrap().len(), 2 * RECORD_BYTES as u64);
        bytes[3] ^= 0xff;
        fs::write(&path, &bytes[..2 * RECORD_BYTES]).unwrap();
        assert!(Fence::open(d.path()).is_err());
    }

    #[test]
    fn compaction_keeps_the_live_table() {
        let d = tempfile::tempdir().unwrap();
        let f = Fence::open(d.path()).unwrap();
        for e in 1..=200u64 {
            f.admit(e / 50 + 1, Some(((e % 2) as u32, e))).unwrap();
        }
        let len = fs::metadata(d.path().join(FENCE_FILE)).unwrap().len() as usize;
        assert!(
            len <= (COMPACT_RECORDS_MIN + 2) * RECORD_BYTES,
            "{len} bytes"
        );
        drop(f);
        let f = Fence::open(d.path()).unwrap();
        assert_eq!((f.term(), f.epoch(0), f.epoch(1)), (5, 200, 199));
    }
}
