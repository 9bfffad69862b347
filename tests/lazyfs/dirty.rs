//! The unsynced state of one file: dirty pages laid over the bytes its underlying file held
//! at the last sync. Nothing here reaches the underlying file before `write_back`, so a
//! killed layer loses exactly the unsynced writes and truncates.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Granularity of the in-memory copy. Small enough that a 16-byte overwrite of a large file
/// costs one page, large enough that a 1 MiB write is a few hundred map entries.
pub const PAGE_BYTES: u64 = 4096;

pub struct Dirty {
    /// Page index -> the page's current bytes (bytes past `size` are zero).
    pages: BTreeMap<u64, Box<[u8]>>,
    /// The file's current size (what getattr reports).
    pub size: u64,
    /// Underlying bytes at or past this offset are no longer part of the file (a truncate
    /// cut them off since the last sync): they read as zeros. Never above `size`.
    base_len: u64,
    /// When the file first became dirty (a counter): the oldest is written back first when
    /// the layer's memory bound is reached.
    pub since: u64,
}

/// Reads `buf.len()` bytes at `off` of the synced state: the underlying bytes below
/// `base_len`, zeros past it or past the underlying file's end.
fn read_base(file: &File, off: u64, buf: &mut [u8], base_len: u64) -> io::Result<()> {
    buf.fill(0);
    let want = (buf.len() as u64).min(base_len.saturating_sub(off)) as usize;
    let mut done = 0;
    while done < want {
        match file.read_at(&mut buf[done..want], off + done as u64) {
            Ok(0) => break, // underlying end: the rest stays zero
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Dirty {
    /// A clean start: the file is what its underlying file holds, `len` bytes.
    pub fn new(len: u64, since: u64) -> Dirty {
        Dirty {
            pages: BTreeMap::new(),
            size: len,
            base_len: len,
            since,
        }
    }

    /// Memory held by the copy.
    pub fn bytes(&self) -> u64 {
        self.pages.len() as u64 * PAGE_BYTES
    }

    /// The page at `idx`, loaded from the synced state at its first write.
    fn page_mut(&mut self, file: &File, idx: u64) -> io::Result<&mut [u8]> {
        if !self.pages.contains_key(&idx) {
            let mut p = vec![0u8; PAGE_BYTES as usize].into_boxed_slice();
            read_base(file, idx * PAGE_BYTES, &mut p, self.base_len)?;
            self.pages.insert(idx, p);
        }
        Ok(self.pages.get_mut(&idx).expect("inserted above"))
    }

    pub fn write(&mut self, file: &File, off: u64, data: &[u8]) -> io::Result<()> {
        let mut done = 0usize;
        while done < data.len() {
            let pos = off + done as u64;
            let at = (pos % PAGE_BYTES) as usize;
            let n = (PAGE_BYTES as usize - at).min(data.len() - done);
            let page = self.page_mut(file, pos / PAGE_BYTES)?;
            page[at..at + n].copy_from_slice(&data[done..done + n]);
            done += n;
        }
        self.size = self.size.max(off + data.len() as u64);
        Ok(())
    }

    /// Up to `len` bytes at `off`, cut at the current size.
    pub fn read(&self, file: &File, off: u64, len: usize) -> io::Result<Vec<u8>> {
        let end = self.size.min(off.saturating_add(len as u64));
        if off >= end {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; (end - off) as usize];
        read_base(file, off, &mut buf, self.base_len)?;
        let first = off / PAGE_BYTES;
        let last = (end - 1) / PAGE_BYTES;
        for (idx, page) in self.pages.range(first..=last) {
            let start = idx * PAGE_BYTES;
            // The overlap of this page with [off, end).
            let from = start.max(off);
            let to = (start + PAGE_BYTES).min(end);
            buf[(from - off) as usize..(to - off) as usize]
                .copy_from_slice(&page[(from - start) as usize..(to - start) as usize]);
        }
        Ok(buf)
    }

    pub fn truncate(&mut self, len: u64) {
        if len < self.size {
            // Pages wholly past the end go; the boundary page's tail becomes zeros, so a
            // later growth reads zeros there as it must.
            let keep_pages = len.div_ceil(PAGE_BYTES);
            self.pages.split_off(&keep_pages);
            if let Some(p) = self.pages.get_mut(&(len / PAGE_BYTES)) {
                p[(len % PAGE_BYTES) as usize..].fill(0);
            }
            self.base_len = self.base_len.min(len);
        }
        self.size = len;
    }

    /// Makes the underlying file hold exactly the current contents, synced: cut it where
    /// the synced bytes stop counting, write the dirty pages, set the size, fdatasync.
    pub fn write_back(&self, file: &File) -> io::Result<()> {
        file.set_len(self.base_len)?;
        for (idx, page) in &self.pages {
            let start = idx * PAGE_BYTES;
            if start >= self.size {
                break;
            }
            let n = PAGE_BYTES.min(self.size - start) as usize;
            file.write_all_at(&page[..n], start)?;
        }
        file.set_len(self.size)?;
        file.sync_data()
    }
}
