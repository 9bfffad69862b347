//! What a server serves: [`DiskBackend`], and [`DirBackend`], one directory per disk and
//! one file per extent version (the tests' backend; the store implements the trait later).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::msg::ExtentId;

/// One disk a server serves: its pool disk number, its uuid, and the directory its
/// `foreshard.fence` lives in.
#[derive(Debug, Clone)]
pub struct DiskInfo {
    pub disk: u32,
    pub uuid: String,
    pub fence_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub total_bytes: u64,
    pub free_bytes: u64,
}

/// Blocking calls; the server runs them on tokio's blocking pool. Errors map to the wire by
/// errno (`ENOSPC` is `NoSpace`, `ENOENT` `NotFound`, the rest `Io {errno}`).
pub trait DiskBackend: Send + Sync + 'static {
    fn disks(&self) -> Vec<DiskInfo>;
    /// Writes a whole extent version (the server has verified its sums).
    fn write_extent(&self, disk: u32, id: ExtentId, bytes: &[u8]) -> io::Result<()>;
    /// Up to `len` bytes from `offset`, fewer only at the extent's end.
    fn read(&self, disk: u32, id: ExtentId, offset: u64, len: u64) -> io::Result<Vec<u8>>;
    /// Makes the extents durable; returns those that failed.
    fn sync(&self, disk: u32, ids: &[ExtentId]) -> io::Result<Vec<ExtentId>>;
    /// Removes an extent version; a missing one is not an error (the call is retried).
    fn remove(&self, disk: u32, id: ExtentId) -> io::Result<()>;
    /// A small read that shows the disk answers.
    fn probe(&self, disk: u32) -> io::Result<()>;
    fn space(&self, disk: u32) -> io::Result<Space>;
    /// Up to `limit` extents in id order after `after`, with their file lengths; `true`
    /// when more follow.
    fn scan(
        &self,
        disk: u32,
        after: Option<ExtentId>,
        limit: usize,
    ) -> io::Result<(Vec<(ExtentId, u64)>, bool)>;
    /// Removes the temporary files of interrupted writes and copies; returns how many.
    fn remove_temps(&self, disk: u32) -> io::Result<u64>;
    /// Writes a recovered copy under its staging name (`tag` keeps copies apart).
    fn stage(&self, disk: u32, id: ExtentId, tag: u32, bytes: &[u8]) -> io::Result<()>;
    /// Renames staged copy `tag` to the extent's own name.
    fn install(&self, disk: u32, id: ExtentId, tag: u32) -> io::Result<()>;
    /// Removes staged copy `tag`; a missing one is not an error.
    fn discard(&self, disk: u32, id: ExtentId, tag: u32) -> io::Result<()>;
}

/// One page of `all` (any order) after `after`, for [`DiskBackend::scan`].
pub fn scan_page(
    mut all: Vec<(ExtentId, u64)>,
    after: Option<ExtentId>,
    limit: usize,
) -> (Vec<(ExtentId, u64)>, bool) {
    all.retain(|(id, _)| after.is_none_or(|a| *id > a));
    all.sort_unstable();
    let more = all.len() > limit;
    all.truncate(limit);
    (all, more)
}

const UUID_FILE: &str = "foreshard.uuid";
const EXTENTS_DIR: &str = "extents";

pub struct DirBackend {
    disks: HashMap<u32, (PathBuf, String)>,
}

fn disk_uuid(dir: &Path) -> io::Result<String> {
    let path = dir.join(UUID_FILE);
    match fs::read_to_string(&path) {
        Ok(s) => Ok(s.trim().to_string()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let uuid = format!("{:032x}", rand::random::<u128>());
            fs::write(&path, &uuid)?;
            Ok(uuid)
        }
        Err(e) => Err(e),
    }
}

fn not_found() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOENT)
}

impl DirBackend {
    /// `disks`: (pool disk, directory); the directories are made if missing.
    pub fn open(disks: &[(u32, PathBuf)]) -> io::Result<DirBackend> {
        let mut map = HashMap::new();
        for (disk, dir) in disks {
            fs::create_dir_all(dir.join(EXTENTS_DIR))?;
            map.insert(*disk, (dir.clone(), disk_uuid(dir)?));
        }
        Ok(DirBackend { disks: map })
    }

    /// As `open`, with each disk's uuid given (a node's label holds it) instead of read
    /// from or written to `foreshard.uuid`.
    pub fn with_uuids(disks: &[(u32, PathBuf, String)]) -> io::Result<DirBackend> {
        let mut map = HashMap::new();
        for (disk, dir, uuid) in disks {
            fs::create_dir_all(dir.join(EXTENTS_DIR))?;
            map.insert(*disk, (dir.clone(), uuid.clone()));
        }
        Ok(DirBackend { disks: map })
    }

    fn dir(&self, disk: u32) -> io::Result<&Path> {
        self.disks
            .get(&disk)
            .map(|(d, _)| d.as_path())
            .ok_or_else(not_found)
    }

    /// Where an extent version's file is (tests corrupt it there).
    pub fn extent_path(&self, disk: u32, id: ExtentId) -> io::Result<PathBuf> {
        let name = format!("{:016x}-{:016x}-{:016x}", id.inode, id.index, id.version);
        Ok(self.dir(disk)?.join(EXTENTS_DIR).join(name))
    }

    fn staging_path(&self, disk: u32, id: ExtentId, tag: u32) -> io::Result<PathBuf> {
        let p = self.extent_path(disk, id)?;
        Ok(p.with_extension(format!("r{tag}.tmp")))
    }

    fn parse_name(name: &str) -> Option<ExtentId> {
        let mut it = name.split('-').map(|p| u64::from_str_radix(p, 16).ok());
        let (inode, index, version) = (it.next()??, it.next()??, it.next()??);
        (it.next().is_none() && name.len() == 50).then_some(ExtentId {
            inode,
            index,
            version,
        })
    }
}

impl DiskBackend for DirBackend {
    fn disks(&self) -> Vec<DiskInfo> {
        let mut v: Vec<DiskInfo> = self
            .disks
            .iter()
            .map(|(&disk, (dir, uuid))| DiskInfo {
                disk,
                uuid: uuid.clone(),
                fence_dir: dir.clone(),
            })
            .collect();
        v.sort_by_key(|d| d.disk);
        v
    }

    fn write_extent(&self, disk: u32, id: ExtentId, bytes: &[u8]) -> io::Result<()> {
        let path = self.extent_path(disk, id)?;
        // A retried write may overlap the first try: each takes its own temporary name.
        let tmp = path.with_extension(format!("tmp{:016x}", rand::random::<u64>()));
        let r = File::create(&tmp)
            .and_then(|mut f| f.write_all(bytes))
            .and_then(|()| fs::rename(&tmp, &path));
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        r
    }

    fn read(&self, disk: u32, id: ExtentId, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let f = File::open(self.extent_path(disk, id)?)?;
        let size = f.metadata()?.len();
        let n = len.min(size.saturating_sub(offset)) as usize;
        let mut buf = vec![0u8; n];
        f.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn sync(&self, disk: u32, ids: &[ExtentId]) -> io::Result<Vec<ExtentId>> {
        let mut failed = Vec::new();
        for &id in ids {
            let path = self.extent_path(disk, id)?;
            if File::open(&path).and_then(|f| f.sync_data()).is_err() {
                failed.push(id);
            }
        }
        // The renames are durable once the directory is.
        if File::open(self.dir(disk)?.join(EXTENTS_DIR))
            .and_then(|d| d.sync_all())
            .is_err()
        {
            return Ok(ids.to_vec());
        }
        Ok(failed)
    }

    fn remove(&self, disk: u32, id: ExtentId) -> io::Result<()> {
        match fs::remove_file(self.extent_path(disk, id)?) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// Lists the extents directory: every disk has one, whichever way it was opened (a
    /// node's disks carry their uuid in the node label, not in `foreshard.uuid`).
    fn probe(&self, disk: u32) -> io::Result<()> {
        fs::read_dir(self.dir(disk)?.join(EXTENTS_DIR))?
            .next()
            .transpose()
            .map(|_| ())
    }

    fn space(&self, disk: u32) -> io::Result<Space> {
        let (total_bytes, free_bytes, _, _) = foreshard_model::util::statvfs(self.dir(disk)?)?;
        Ok(Space {
            total_bytes,
            free_bytes,
        })
    }

    fn scan(
        &self,
        disk: u32,
        after: Option<ExtentId>,
        limit: usize,
    ) -> io::Result<(Vec<(ExtentId, u64)>, bool)> {
        let mut all = Vec::new();
        for e in fs::read_dir(self.dir(disk)?.join(EXTENTS_DIR))? {
            let e = e?;
            if let Some(id) = Self::parse_name(&e.file_name().to_string_lossy()) {
                all.push((id, e.metadata()?.len()));
            }
        }
        Ok(scan_page(all, after, limit))
    }

    fn stage(&self, disk: u32, id: ExtentId, tag: u32, bytes: &[u8]) -> io::Result<()> {
        let mut f = File::create(self.staging_path(disk, id, tag)?)?;
        f.write_all(bytes)
    }

    fn install(&self, disk: u32, id: ExtentId, tag: u32) -> io::Result<()> {
        fs::rename(
            self.staging_path(disk, id, tag)?,
            self.extent_path(disk, id)?,
        )
    }

    fn discard(&self, disk: u32, id: ExtentId, tag: u32) -> io::Result<()> {
        match fs::remove_file(self.staging_path(disk, id, tag)?) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    fn remove_temps(&self, disk: u32) -> io::Result<u64> {
        let mut n = 0;
        for e in fs::read_dir(self.dir(disk)?.join(EXTENTS_DIR))? {
            let e = e?;
            if e.file_name().to_string_lossy().contains(".tmp") {
                fs::remove_file(e.path())?;
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_write_read_sync_remove() {
        let d = tempfile::tempdir().unwrap();
        let b = DirBackend::open(&[(3, d.path().join("d3"))]).unwrap();
        let id = ExtentId {
            inode: 1,
            index: 0,
            version: 2,
        };
        b.write_extent(3, id, b"hello world").unwrap();
        assert_eq!(b.read(3, id, 6, 100).unwrap(), b"world");
        assert_eq!(b.sync(3, &[id]).unwrap(), vec![]);
        let gone = ExtentId { version: 9, ..id };
        assert_eq!(b.sync(3, &[gone]).unwrap(), vec![gone]);
        b.remove(3, id).unwrap();
        b.remove(3, id).unwrap();
        assert_eq!(
            b.read(3, id, 0, 1).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(b.read(4, id, 0, 1).is_err());
        b.write_extent(3, gone, b"x").unwrap();
        std::fs::write(d.path().join("d3/extents/x.tmp1"), b"t").unwrap();
        let (page, more) = b.scan(3, None, 1).unwrap();
        assert_eq!((page, more), (vec![(gone, 1)], false));
        assert_eq!(b.scan(3, Some(gone), 10).unwrap().0, vec![]);
        assert_eq!(b.remove_temps(3).unwrap(), 1);
        b.stage(3, id, 7, b"copy").unwrap();
        assert_eq!(
            b.scan(3, None, 10).unwrap().0.len(),
            1,
            "a staged copy is not an extent"
        );
        b.install(3, id, 7).unwrap();
        assert_eq!(b.read(3, id, 0, 10).unwrap(), b"copy");
        b.stage(3, id, 8, b"again").unwrap();
        b.discard(3, id, 8).unwrap();
        b.discard(3, id, 8).unwrap();
        assert_eq!(b.remove_temps(3).unwrap(), 0);
        assert!(b.space(3).unwrap().total_bytes > 0);
        b.probe(3).unwrap();
        let uuid = b.disks()[0].uuid.clone();
        let again = DirBackend::open(&[(3, d.path().join("d3"))]).unwrap();
        assert_eq!(again.disks()[0].uuid, uuid);
    }
}
