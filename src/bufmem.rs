//! Memory for large I/O buffers: 2 MiB-aligned anonymous mappings advised for transparent
//! huge pages, cut into equal pieces and recycled through a bounded free list.
//!
//! Why: an O_DIRECT read or write into memory of scattered 4 KiB pages carries one DMA
//! segment per page, and block devices cap the segments per request (a loop device: 128 of
//! at most 64 KiB), so a 1 MiB request is split and every part costs the device per page.
//! Physically contiguous memory moves the same bytes in a few segments. Measured on this
//! project's benchmark disks (loop devices over one virtual disk), reading a pool's 1 MiB
//! extent files with O_DIRECT, 2 readers per disk: 964-1038 MiB/s into 4 KiB pages,
//! 2037-2441 MiB/s into (hugetlbfs) huge pages, four alternating pairs; a 1 GiB cold read
//! through the mount with these buffers: 922-1223 -> 1362-1638 MiB/s. Where the kernel has no
//! huge page to give (THP off, memory fragmented) the mapping gets ordinary pages and works
//! as before.

use std::ptr::NonNull;
use std::sync::Mutex;

/// Buffers at least this long come from here; smaller ones gain little from contiguity.
pub(crate) const BYTES_MIN: usize = 256 << 10;

/// Transparent huge page size on x86-64 and most arm64 kernels; a mapping aligned to it can
/// be backed by whole huge pages.
const HUGE_PAGE: usize = 2 << 20;

/// Idle pieces kept for reuse, in bytes; a reused piece skips mmap, the page faults and the
/// zeroing of a new one. Past this, freed pieces go back to the kernel.
const FREE_BYTES_MAX: usize = 32 << 20;

struct FreeList {
    /// (address, capacity, known to be zeros) of idle pieces.
    pieces: Vec<(usize, usize, bool)>,
    bytes: usize,
}

struct Pool {
    free: Mutex<FreeList>,
    bytes_max: usize,
}

static POOL: Pool = Pool::new(FREE_BYTES_MAX);

/// A piece of `cap` bytes (a multiple of 4 KiB, at least `BYTES_MIN`), page-aligned, and
/// whether its bytes are known to be zero (a new mapping) rather than stale. None when the
/// kernel refuses the mapping; the caller then uses the heap.
pub(crate) fn take(cap: usize) -> Option<(NonNull<u8>, bool)> {
    POOL.take(cap)
}

/// Returns a piece from `take`; it is kept for reuse or unmapped.
pub(crate) fn give(ptr: NonNull<u8>, cap: usize) {
    POOL.give(ptr.as_ptr() as usize, cap, false)
}

impl Pool {
    const fn new(bytes_max: usize) -> Pool {
        Pool {
            free: Mutex::new(FreeList {
                pieces: Vec::new(),
                bytes: 0,
            }),
            bytes_max,
        }
    }

    fn free_list(&self) -> std::sync::MutexGuard<'_, FreeList> {
        // The list is consistent after every statement, so a panic elsewhere cannot spoil it.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, cap: usize) -> Option<(NonNull<u8>, bool)> {
        debug_assert!(cap >= BYTES_MIN && cap.is_multiple_of(4096));
        {
            let mut free = self.free_list();
            if let Some(i) = free.pieces.iter().position(|&(_, c, _)| c == cap) {
                let (addr, _, zeroed) = free.pieces.swap_remove(i);
                free.bytes -= cap;
                return NonNull::new(addr as *mut u8).map(|p| (p, zeroed));
            }
        }
        let region = cap.next_multiple_of(HUGE_PAGE);
        let start = map_aligned(region)?;
        // The rest of the region becomes more pieces of the same size: extents, and so
        // buffers, are mostly one size, and a 1 MiB buffer alone would waste half a huge page.
        let pieces = region / cap;
        for k in 1..pieces {
            self.give(start + k * cap, cap, true);
        }
        unmap(start + pieces * cap, region - pieces * cap);
        NonNull::new(start as *mut u8).map(|p| (p, true))
    }

    fn give(&self, addr: usize, cap: usize, zeroed: bool) {
        {
            let mut free = self.free_list();
            if free.bytes + cap <= self.bytes_max {
                free.pieces.push((addr, cap, zeroed));
                free.bytes += cap;
                return;
            }
        }
        unmap(addr, cap);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for &(addr, cap, _) in &self.free_list().pieces {
            unmap(addr, cap);
        }
    }
}

/// `len` bytes (a multiple of `HUGE_PAGE`) of zeroed anonymous memory at a `HUGE_PAGE`
/// boundary, advised for huge pages.
fn map_aligned(len: usize) -> Option<usize> {
    let span = len + HUGE_PAGE;
    // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    let base = p as usize;
    let start = base.next_multiple_of(HUGE_PAGE);
    unmap(base, start - base);
    unmap(start + len, base + span - (start + len));
    // SAFETY: [start, start + len) is mapped above and owned here. Failure (no THP support)
    // only means ordinary pages.
    unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
    Some(start)
}

fn unmap(addr: usize, len: usize) {
    if len == 0 {
        return;
    }
    // SAFETY: callers pass a page-aligned range they own and no longer reference.
    let r = unsafe { libc::munmap(addr as *mut libc::c_void, len) };
    debug_assert_eq!(r, 0, "munmap of an owned range failed");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr((p, _): &(NonNull<u8>, bool)) -> usize {
        p.as_ptr() as usize
    }

    #[test]
    fn pieces_are_aligned_disjoint_and_reused() {
        let pool = Pool::new(FREE_BYTES_MAX);
        let cap = 640 << 10;
        // Three pieces fit a huge page: six take two mappings.
        let got: Vec<(NonNull<u8>, bool)> = (0..6).map(|_| pool.take(cap).unwrap()).collect();
        assert!(got.iter().all(|&(_, zeroed)| zeroed));
        let mut addrs: Vec<usize> = got.iter().map(addr).collect();
        assert!(addrs.iter().all(|a| a.is_multiple_of(4096)));
        assert!(addrs[0].is_multiple_of(HUGE_PAGE));
        addrs.sort();
        assert!(
            addrs.windows(2).all(|w| w[1] - w[0] >= cap),
            "pieces overlap"
        );
        for p in &addrs {
            // Every byte is writable.
            // SAFETY: `cap` bytes owned by this test.
            unsafe { std::ptr::write_bytes(*p as *mut u8, 0xab, cap) };
        }
        for &a in &addrs {
            pool.give(a, cap, false);
        }
        // The freed pieces come back, stale, before anything new is mapped; another size
        // does not take them.
        let other = pool.take(1 << 20).unwrap();
        assert!(!addrs.contains(&addr(&other)));
        pool.give(addr(&other), 1 << 20, false);
        let mut again: Vec<usize> = (0..6)
            .map(|_| pool.take(cap).unwrap())
            .inspect(|&(_, zeroed)| assert!(!zeroed))
            .map(|p| addr(&p))
            .collect();
        again.sort();
        assert_eq!(again, addrs);
        for a in again {
            pool.give(a, cap, false);
        }
    }

    #[test]
    fn the_free_list_stays_within_its_bound() {
        let pool = Pool::new(8 << 20);
        let cap = 2 << 20;
        let got: Vec<(NonNull<u8>, bool)> = (0..7).map(|_| pool.take(cap).unwrap()).collect();
        for p in &got {
            pool.give(addr(p), cap, false);
        }
        assert_eq!(pool.free_list().bytes, 8 << 20);
        assert_eq!(pool.free_list().pieces.len(), 4);
    }
}
