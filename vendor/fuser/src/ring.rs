//! FUSE over io_uring (Linux 6.14+, `fuse.enable_uring=1`): one queue per CPU.
//!
//! Added for foreshard (not in the crates.io release). With /dev/fuse, the thread that reads
//! a request is woken on whatever CPU the scheduler picks, usually an idle one, and the
//! reply wakes the caller on another: two cross-CPU wake-ups per request. With io_uring the
//! kernel hands a request to the queue of the CPU it was issued on, so the daemon thread
//! bound to that CPU serves it and the caller is woken where it slept.
//!
//! Protocol (linux/Documentation/filesystems/fuse-io-uring.rst, fs/fuse/dev_uring.c):
//! every entry is a 288-byte header buffer (`in_out` 128 | `op_in` 128 | `ring_ent_in_out`
//! 32) and a payload buffer of at least the connection's max payload. `REGISTER` hands an
//! entry to the kernel; its completion means a request is in the buffers: the
//! `fuse_in_header` in `in_out`, the per-op argument struct in `op_in`, everything else
//! (names, write data) in the payload, `payload_sz` bytes long. `COMMIT_AND_FETCH` hands
//! back the reply (`fuse_out_header` in `in_out`, every out argument in the payload) and
//! re-arms the entry. FORGET, INTERRUPT and notifications keep using /dev/fuse.

use std::alloc::Layout;
use std::fmt;
use std::io;
use std::io::IoSlice;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::os::fd::FromRawFd;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use io_uring::IoUring;
use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types;
use log::debug;
use log::error;
use log::warn;
use parking_lot::Mutex;

use crate::Filesystem;
use crate::channel::Channel;
use crate::ll::Operation;
use crate::request::RequestWithSender;
use crate::session::SessionEventLoop;

const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// `struct fuse_uring_req_header`: in_out (128) | op_in (128) | ring_ent_in_out (32).
const HDR_BYTES: usize = 288;
const OP_IN_OFF: usize = 128;
const ENT_IN_OUT_OFF: usize = 256;
const IN_HEADER_BYTES: usize = 40;
const OUT_HEADER_BYTES: usize = 16;
/// Room in front of the payload for the in-header and op struct, so a request is parsed
/// in place (write data is not copied). Page-sized to keep the payload page-aligned.
const SLACK_BYTES: usize = 4096;
const EVENTFD_TAG: u64 = u64::MAX;
/// Most memory all ring entries may take; beyond it (very many CPUs) /dev/fuse is used.
const RING_BYTES_MAX: usize = 512 << 20;
/// How often a thread blocked on its ring looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(200);
/// Entries a thread may add beyond its `depth` while requests it handed to other threads
/// (an fsync waiting on a disk) hold entries: the kernel queues a CPU's requests behind its
/// own entries only, so two such requests would otherwise stop that CPU's every request.
const SPARE_ENTRIES_PER_THREAD: usize = 4;
/// Memory all spare entries of the process may take (made only when needed, kept after).
const SPARE_BYTES_MAX: usize = 64 << 20;
static SPARE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Ring threads serving requests now (one session per process in practice).
pub(crate) static THREADS_LIVE: AtomicUsize = AtomicUsize::new(0);

/// One ring entry's buffers, owned by its ring thread; shared with the reply sender.
struct Entry {
    hdr: *mut u8,
    /// `SLACK_BYTES` of slack, then the payload buffer.
    buf: *mut u8,
    payload_bytes: usize,
    reply: Mutex<ReplyState>,
    /// iovec[2] the kernel reads at REGISTER; must stay put while registered.
    iov: [libc::iovec; 2],
}

// SAFETY: the raw buffers are only written by the one reply (under `reply`) or by the ring
// thread while no reply can be in flight for the entry.
unsafe impl Send for Entry {}
unsafe impl Sync for Entry {}

#[derive(Default)]
struct ReplyState {
    /// The request in flight was parsed from the payload: a reply goes to `staged` and is
    /// copied into place once the request is no longer borrowed.
    staged_mode: bool,
    staged: Vec<u8>,
    replied: bool,
    /// Set when dispatch returned without a reply: the late reply must wake the ring thread.
    detached: bool,
    payload_sz: u32,
}

impl ReplyState {
    /// Ready for the next request (keeps the staging buffer's capacity).
    fn reset(&mut self, staged_mode: bool) {
        self.staged_mode = staged_mode;
        self.staged.clear();
        self.replied = false;
        self.detached = false;
        self.payload_sz = 0;
    }
}

impl Entry {
    fn new(payload_bytes: usize) -> Box<Entry> {
        let hdr = alloc(HDR_BYTES, 64);
        let buf = alloc(SLACK_BYTES + payload_bytes, 4096);
        Box::new(Entry {
            hdr,
            buf,
            payload_bytes,
            reply: Mutex::new(ReplyState::default()),
            iov: [
                libc::iovec {
                    iov_base: hdr.cast(),
                    iov_len: HDR_BYTES,
                },
                libc::iovec {
                    // SAFETY: within the allocation above.
                    iov_base: unsafe { buf.add(SLACK_BYTES) }.cast(),
                    iov_len: payload_bytes,
                },
            ],
        })
    }

    fn payload(&self) -> *mut u8 {
        // SAFETY: within the allocation.
        unsafe { self.buf.add(SLACK_BYTES) }
    }

    /// The request's unique id (the kernel's commit id for it), from `ring_ent_in_out`.
    fn commit_id(&self) -> u64 {
        // SAFETY: within the header buffer; the kernel wrote it with the request.
        unsafe {
            self.hdr
                .add(ENT_IN_OUT_OFF + 8)
                .cast::<u64>()
                .read_unaligned()
        }
    }
}

/// A reply carrying only `-errno`.
fn error_header(unique: u64, errno: i32) -> [u8; OUT_HEADER_BYTES] {
    let mut h = [0u8; OUT_HEADER_BYTES];
    h[0..4].copy_from_slice(&(OUT_HEADER_BYTES as u32).to_ne_bytes());
    h[4..8].copy_from_slice(&(-errno).to_ne_bytes());
    h[8..16].copy_from_slice(&unique.to_ne_bytes());
    h
}

impl Drop for Entry {
    fn drop(&mut self) {
        // SAFETY: allocated in `Entry::new` with these layouts.
        unsafe {
            std::alloc::dealloc(self.hdr, Layout::from_size_align_unchecked(HDR_BYTES, 64));
            std::alloc::dealloc(
                self.buf,
                Layout::from_size_align_unchecked(SLACK_BYTES + self.payload_bytes, 4096),
            );
        }
    }
}

fn alloc(bytes: usize, align: usize) -> *mut u8 {
    let layout = Layout::from_size_align(bytes, align).expect("ring buffer layout");
    // SAFETY: non-zero size.
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    if p.is_null() {
        std::alloc::handle_alloc_error(layout);
    }
    p
}

/// Where a reply to a ring request goes.
#[derive(Clone)]
pub(crate) struct RingSender {
    ent: Arc<Entry>,
    index: usize,
    late: Arc<LateReplies>,
}

impl fmt::Debug for RingSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RingSender({})", self.index)
    }
}

/// Replies sent after their dispatch returned (the filesystem replied from another thread).
struct LateReplies {
    ready: Mutex<Vec<usize>>,
    eventfd: OwnedFd,
}

impl RingSender {
    pub(crate) fn send(&self, data: &[IoSlice<'_>]) -> io::Result<()> {
        let total: usize = data.iter().map(|s| s.len()).sum();
        let mut st = self.ent.reply.lock();
        if st.replied {
            return Err(io::Error::other("second reply to one request"));
        }
        if total < OUT_HEADER_BYTES || total - OUT_HEADER_BYTES > self.ent.payload_bytes {
            // Answer EIO rather than leave the request (and its caller) hanging.
            let h = error_header(self.ent.commit_id(), libc::EIO);
            drop(st);
            self.send(&[IoSlice::new(&h)])?;
            return Err(io::Error::other(format!(
                "reply of {total} bytes does not fit the ring entry: answered EIO"
            )));
        }
        // Gather: header bytes into `in_out`, the rest into the payload (or staging).
        let mut hdr_off = 0usize;
        let mut pay_off = 0usize;
        let staged = st.staged_mode;
        for s in data {
            let mut s: &[u8] = s;
            if hdr_off < OUT_HEADER_BYTES {
                let n = (OUT_HEADER_BYTES - hdr_off).min(s.len());
                // SAFETY: hdr has HDR_BYTES; n + hdr_off <= 16.
                unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), self.ent.hdr.add(hdr_off), n) };
                hdr_off += n;
                s = &s[n..];
            }
            if s.is_empty() {
                continue;
            }
            if staged {
                st.staged.extend_from_slice(s);
            } else {
                // SAFETY: total - 16 <= payload_bytes (checked above); the request in
                // flight does not borrow the payload (not staged mode).
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        s.as_ptr(),
                        self.ent.payload().add(pay_off),
                        s.len(),
                    )
                };
            }
            pay_off += s.len();
        }
        st.payload_sz = pay_off as u32;
        st.replied = true;
        if st.detached {
            drop(st);
            self.late.ready.lock().push(self.index);
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
            unsafe {
                libc::write(
                    self.late.eventfd.as_raw_fd(),
                    (&raw const one).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
        }
        Ok(())
    }
}

/// The ring threads of one session.
pub(crate) struct Rings {
    threads: Vec<thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Rings {
    /// Starts `per_queue` threads per possible CPU, bound to it, each registering `depth`
    /// entries on that CPU's queue (a request that blocks one thread leaves the others to
    /// serve the CPU; one answered later from another thread holds its entry, and the thread
    /// adds a spare: `add_spare`). Returns once every entry is registered (or an error).
    pub(crate) fn start<FS: Filesystem>(
        proto: &SessionEventLoop<FS>,
        per_queue: usize,
        depth: usize,
        payload_bytes: usize,
    ) -> io::Result<Rings> {
        let cpus = possible_cpus()?;
        // Fault injection for tests: the threads of this queue fail to start.
        let fail_queue: Option<usize> = std::env::var("FUSER_RING_FAIL_QUEUE")
            .ok()
            .and_then(|v| v.parse().ok());
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let (tx, rx) = std::sync::mpsc::channel::<(usize, io::Result<()>)>();
        for (qid, k) in (0..cpus).flat_map(|q| (0..per_queue).map(move |k| (q, k))) {
            let el = SessionEventLoop {
                thread_name: format!("fuse-ring-{qid}.{k}"),
                ch: proto.ch.clone(),
                filesystem: proto.filesystem.clone(),
                allowed: proto.allowed,
                session_owner: proto.session_owner,
            };
            let stop = stop.clone();
            let ttx = tx.clone();
            let spawned = thread::Builder::new()
                .name(format!("fuse-ring-{qid}.{k}"))
                .spawn(move || {
                    pin_to(qid);
                    if fail_queue == Some(qid) {
                        let e = io::Error::other(format!("queue {qid}: injected failure"));
                        let _ = ttx.send((qid, Err(e)));
                        return;
                    }
                    let mut q = match Queue::new(&el.ch, qid as u16, depth, payload_bytes) {
                        Ok(q) => q,
                        Err(e) => {
                            let _ = ttx.send((qid, Err(e)));
                            return;
                        }
                    };
                    if let Err(e) = q.register() {
                        let _ = ttx.send((qid, Err(e)));
                        q.abandon();
                        return;
                    }
                    THREADS_LIVE.fetch_add(1, Ordering::Relaxed);
                    let _ = ttx.send((qid, Ok(())));
                    drop(ttx);
                    if let Err(e) = q.serve(&el, &stop) {
                        error!("fuse ring queue {qid}: {e}");
                    }
                    THREADS_LIVE.fetch_sub(1, Ordering::Relaxed);
                    q.abandon();
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    let _ = tx.send((qid, Err(e)));
                }
            }
        }
        drop(tx);
        let rings = Rings { threads, stop };
        let mut served = vec![false; cpus];
        let mut failed = None;
        for _ in 0..cpus * per_queue {
            match rx.recv() {
                Ok((qid, Ok(()))) => served[qid] = true,
                Ok((_, Err(e))) => failed = Some(e),
                Err(_) => {
                    failed = Some(io::Error::other("fuse ring thread died"));
                    break;
                }
            }
        }
        if served.iter().all(|&s| s) {
            // Every queue has an entry: the kernel now sends requests to the rings. Threads
            // that failed leave their CPU to its other threads.
            if let Some(e) = failed {
                warn!(
                    "fuse ring: {e}; {} of {} threads serve",
                    THREADS_LIVE.load(Ordering::Relaxed),
                    cpus * per_queue
                );
            }
            return Ok(rings);
        }
        // Some CPU has no entry, so the ring never becomes ready and the kernel would hold
        // every request back waiting for it: a REGISTER it refuses turns io_uring off for
        // this connection and requests flow through /dev/fuse again.
        let e = failed.unwrap_or_else(|| io::Error::other("a queue has no entries"));
        if let Err(d) = refuse_register(proto.ch.as_fd().as_raw_fd()) {
            error!("fuse ring: cannot fall back to /dev/fuse: {d}");
        }
        rings.join();
        Err(e)
    }

    /// Stops the threads (after the connection ended) and waits for them.
    pub(crate) fn join(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn possible_cpus() -> io::Result<usize> {
    // "0-3" or "0,2-5": the kernel makes num_possible_cpus() queues.
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut n = 0usize;
    for part in s.trim().split(',') {
        let mut it = part.split('-');
        let a: usize = it.next().unwrap_or("0").parse().map_err(io::Error::other)?;
        let b: usize = match it.next() {
            Some(b) => b.parse().map_err(io::Error::other)?,
            None => a,
        };
        n += b.saturating_sub(a) + 1;
    }
    if n == 0 {
        return Err(io::Error::other(
            "no CPUs in /sys/devices/system/cpu/possible",
        ));
    }
    Ok(n)
}

/// Checked at INIT, before granting FUSE_OVER_IO_URING: once granted, the kernel holds every
/// request back until each CPU's queue has an entry, so the rings must be able to start.
pub(crate) fn preflight(per_queue: usize, depth: usize, payload_bytes: usize) -> io::Result<()> {
    if per_queue == 0 || depth == 0 {
        return Err(io::Error::other("no ring threads configured"));
    }
    let cpus = possible_cpus()?;
    let bytes = cpus * per_queue * depth * (payload_bytes + SLACK_BYTES + HDR_BYTES);
    if bytes > RING_BYTES_MAX {
        return Err(io::Error::other(format!(
            "{cpus} CPUs x {per_queue} x {depth} entries would take {} MiB (limit {} MiB)",
            bytes >> 20,
            RING_BYTES_MAX >> 20
        )));
    }
    // io_uring may be disabled (kernel.io_uring_disabled) or filtered (seccomp).
    IoUring::<squeue::Entry128, cqueue::Entry>::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(4)?;
    Ok(())
}

/// Sends a REGISTER for a queue that does not exist; the kernel answers EINVAL and turns
/// io_uring off for the connection.
fn refuse_register(fd: i32) -> io::Result<()> {
    let mut ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(2)?;
    let mut cmd = [0u8; 80];
    cmd[16..18].copy_from_slice(&u16::MAX.to_ne_bytes());
    let sqe = opcode::UringCmd80::new(types::Fd(fd), CMD_REGISTER)
        .cmd(cmd)
        .build();
    // SAFETY: the SQE points at no buffers (the kernel rejects the qid before any iovec).
    unsafe { ring.submission().push(&sqe) }
        .map_err(|_| io::Error::other("submission queue full"))?;
    ring.submit_and_wait(1)?;
    match ring.completion().next().map(|c| c.result()) {
        Some(r) if r == -libc::EINVAL => Ok(()),
        other => Err(io::Error::other(format!("unexpected answer {other:?}"))),
    }
}

fn pin_to(cpu: usize) {
    // SAFETY: plain cpu_set_t manipulation and sched_setaffinity on this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            // An offline CPU: its queue still needs entries, the thread just floats.
            debug!(
                "fuse ring {cpu}: not pinned: {}",
                io::Error::last_os_error()
            );
        }
    }
}

struct Queue {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    fd: i32,
    qid: u16,
    ents: Vec<Arc<Entry>>,
    /// Entries the thread keeps ready for requests (more are added while some are detached).
    depth: usize,
    payload_bytes: usize,
    /// Entries whose request was handed to another thread and is not answered yet.
    detached: usize,
    late: Arc<LateReplies>,
    live: usize,
    eventfd_buf: Box<u64>,
    /// Completions seen while registering, handled first by `serve`.
    backlog: Vec<(u64, i32)>,
}

impl Queue {
    fn new(ch: &Channel, qid: u16, depth: usize, payload_bytes: usize) -> io::Result<Queue> {
        // Made and used by this thread only; the kernel's work for a request (copying it into
        // the entry) then runs when the thread waits for completions, not by interrupting it.
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(((depth + SPARE_ENTRIES_PER_THREAD) as u32 + 2).next_power_of_two())?;
        // SAFETY: eventfd returns a new fd or -1.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: efd is a fresh descriptor we own.
        let eventfd = unsafe { OwnedFd::from_raw_fd(efd) };
        Ok(Queue {
            ring,
            fd: ch.as_fd().as_raw_fd(),
            qid,
            ents: (0..depth)
                .map(|_| Arc::from(Entry::new(payload_bytes)))
                .collect(),
            depth,
            payload_bytes,
            detached: 0,
            late: Arc::new(LateReplies {
                ready: Mutex::new(Vec::new()),
                eventfd,
            }),
            live: 0,
            eventfd_buf: Box::new(0),
            backlog: Vec::new(),
        })
    }

    /// Ends the queue: the ring is closed (the kernel cancels its registered entries), the
    /// buffers are leaked unless every entry is already done, as the kernel may still be
    /// writing into them; the eventfd read's 8-byte buffer always is.
    fn abandon(mut self) {
        if self.live > 0 {
            std::mem::forget(std::mem::take(&mut self.ents));
        }
        Box::leak(std::mem::replace(&mut self.eventfd_buf, Box::new(0)));
        drop(self);
    }

    fn cmd(&self, op: u32, index: usize, commit_id: u64) -> squeue::Entry128 {
        // struct fuse_uring_cmd_req { u64 flags; u64 commit_id; u16 qid; u8 pad[6]; }
        let mut cmd = [0u8; 80];
        cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        cmd[16..18].copy_from_slice(&self.qid.to_ne_bytes());
        let e = &self.ents[index];
        let sqe = opcode::UringCmd80::new(types::Fd(self.fd), op)
            .cmd(cmd)
            .addr(Some(e.iov.as_ptr() as u64))
            .build()
            .user_data(index as u64);
        set_len(sqe, 2)
    }

    fn push(&mut self, sqe: squeue::Entry128) -> io::Result<()> {
        loop {
            // SAFETY: the buffers an SQE points at (entry iovecs, eventfd_buf) live as long
            // as the queue, which outlives the ring's use of them.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    fn arm_eventfd(&mut self) -> io::Result<()> {
        let read = opcode::Read::new(
            types::Fd(self.late.eventfd.as_raw_fd()),
            (&raw mut *self.eventfd_buf).cast(),
            8,
        )
        .build()
        .user_data(EVENTFD_TAG);
        self.push(read.into())
    }

    fn register(&mut self) -> io::Result<()> {
        self.live = self.ents.len();
        for i in 0..self.ents.len() {
            let sqe = self.cmd(CMD_REGISTER, i, 0);
            self.push(sqe)?;
        }
        self.arm_eventfd()?;
        self.ring.submit()?;
        // A REGISTER that fails completes at once; give the kernel a moment to say so.
        let ts = types::Timespec::new().nsec(20_000_000);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
            Err(e) => return Err(e),
        }
        let seen: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for &(ud, res) in &seen {
            if ud != EVENTFD_TAG && res < 0 {
                return Err(io::Error::from_raw_os_error(-res));
            }
        }
        // Requests already: handled first by serve().
        self.backlog = seen;
        self.live = self.ents.len();
        Ok(())
    }

    fn serve<FS: Filesystem>(
        &mut self,
        el: &SessionEventLoop<FS>,
        stop: &AtomicBool,
    ) -> io::Result<()> {
        let mut cqes = std::mem::take(&mut self.backlog);
        let ts = types::Timespec::from(STOP_POLL);
        loop {
            for (ud, res) in cqes.drain(..) {
                if ud == EVENTFD_TAG {
                    if res < 0 {
                        warn!("fuse ring {}: eventfd read: {res}", self.qid);
                    }
                    let ready = std::mem::take(&mut *self.late.ready.lock());
                    for i in ready {
                        self.detached = self.detached.saturating_sub(1);
                        self.commit(i);
                    }
                    self.arm_eventfd()?;
                    continue;
                }
                let i = ud as usize;
                if res < 0 {
                    // The connection is going away (ENOTCONN, ECANCELED) or the entry was
                    // refused: either way it is no longer ours to serve.
                    self.live -= 1;
                    if ![
                        libc::ENOTCONN,
                        libc::ECANCELED,
                        libc::ECONNABORTED,
                        libc::ENODEV,
                    ]
                    .contains(&-res)
                    {
                        warn!(
                            "fuse ring {} entry {i}: {}",
                            self.qid,
                            io::Error::from_raw_os_error(-res)
                        );
                    }
                    continue;
                }
                self.handle(i, el);
            }
            if self.live == 0 || stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                    ) => {}
                Err(e) => return Err(e),
            }
            cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        }
    }

    /// Parses the request in entry `i`, dispatches it and commits the reply (unless the
    /// filesystem replies later from another thread).
    fn handle<FS: Filesystem>(&mut self, i: usize, el: &SessionEventLoop<FS>) {
        let e = self.ents[i].clone();
        // SAFETY: the kernel filled the header buffer before completing the command; no
        // one else touches it until we commit.
        let hdr = unsafe { std::slice::from_raw_parts(e.hdr, HDR_BYTES) };
        let in_len = u32::from_ne_bytes(hdr[0..4].try_into().unwrap()) as usize;
        let payload_sz = u32::from_ne_bytes(
            hdr[ENT_IN_OUT_OFF + 16..ENT_IN_OUT_OFF + 20]
                .try_into()
                .unwrap(),
        ) as usize;
        let op_sz = in_len.checked_sub(IN_HEADER_BYTES + payload_sz);
        let Some(op_sz) = op_sz.filter(|&n| n <= 128 && payload_sz <= e.payload_bytes) else {
            error!(
                "fuse ring {}: malformed request (len {in_len}, payload {payload_sz})",
                self.qid
            );
            return self.reply_error(i, libc::EIO);
        };
        e.reply.lock().reset(payload_sz > 0);
        // Lay the in-header and op struct out right before the payload, so the request is
        // one contiguous /dev/fuse-style message and write data is not copied.
        let mut copied: Vec<u64>;
        let data: &[u8] = if op_sz % 8 == 0 {
            let start = SLACK_BYTES - IN_HEADER_BYTES - op_sz;
            // SAFETY: [start, SLACK_BYTES) lies in the slack area of our allocation; the
            // payload follows it; nothing else uses the slack.
            unsafe {
                let base = e.buf.add(start);
                std::ptr::copy_nonoverlapping(hdr.as_ptr(), base, IN_HEADER_BYTES);
                std::ptr::copy_nonoverlapping(
                    hdr.as_ptr().add(OP_IN_OFF),
                    base.add(IN_HEADER_BYTES),
                    op_sz,
                );
                std::slice::from_raw_parts(base, in_len)
            }
        } else {
            copied = vec![0u64; in_len.div_ceil(8)];
            // SAFETY: `copied` has at least in_len bytes.
            unsafe {
                let base = copied.as_mut_ptr().cast::<u8>();
                std::ptr::copy_nonoverlapping(hdr.as_ptr(), base, IN_HEADER_BYTES);
                std::ptr::copy_nonoverlapping(
                    hdr.as_ptr().add(OP_IN_OFF),
                    base.add(IN_HEADER_BYTES),
                    op_sz,
                );
                std::ptr::copy_nonoverlapping(
                    e.payload(),
                    base.add(IN_HEADER_BYTES + op_sz),
                    payload_sz,
                );
                std::slice::from_raw_parts(base, in_len)
            }
        };
        let sender = RingSender {
            ent: e.clone(),
            index: i,
            late: self.late.clone(),
        };
        match RequestWithSender::new_ring(el.ch.sender(), sender, data) {
            Some(req) => {
                if let Ok(Operation::Destroy(_)) = req.request.operation() {
                    req.reply::<crate::ReplyEmpty>().ok();
                } else {
                    // A panicking handler must not leave the caller waiting on this entry:
                    // its reply's drop answers EIO, and the entry is committed below.
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        req.dispatch(el);
                    }));
                    if r.is_err() {
                        error!("fuse ring {}: request handler panicked", self.qid);
                    }
                }
            }
            None => {
                drop(e);
                return self.reply_error(i, libc::EIO);
            }
        }
        let mut st = e.reply.lock();
        if st.replied {
            drop(st);
            self.commit(i);
        } else {
            // The filesystem kept the reply to answer later: its sender wakes us.
            st.detached = true;
            drop(st);
            self.detached += 1;
            self.add_spare();
        }
    }

    /// Registers one more entry when detached requests leave fewer than `depth` entries to
    /// take new requests, within `SPARE_ENTRIES_PER_THREAD` and `SPARE_BYTES_MAX`.
    fn add_spare(&mut self) {
        let ready = self.ents.len() - self.detached.min(self.ents.len());
        if ready >= self.depth || self.ents.len() >= self.depth + SPARE_ENTRIES_PER_THREAD {
            return;
        }
        let bytes = self.payload_bytes + SLACK_BYTES + HDR_BYTES;
        let taken = SPARE_BYTES.fetch_add(bytes, Ordering::Relaxed);
        if taken + bytes > SPARE_BYTES_MAX {
            SPARE_BYTES.fetch_sub(bytes, Ordering::Relaxed);
            return;
        }
        self.ents.push(Arc::from(Entry::new(self.payload_bytes)));
        let sqe = self.cmd(CMD_REGISTER, self.ents.len() - 1, 0);
        match self.push(sqe) {
            Ok(()) => self.live += 1,
            Err(e) => error!("fuse ring {}: cannot add an entry: {e}", self.qid),
        }
    }

    fn reply_error(&mut self, i: usize, errno: i32) {
        let e = &self.ents[i];
        let h = error_header(e.commit_id(), errno);
        e.reply.lock().reset(false);
        let sender = RingSender {
            ent: e.clone(),
            index: i,
            late: self.late.clone(),
        };
        if let Err(e) = sender.send(&[IoSlice::new(&h)]) {
            error!("fuse ring {}: cannot answer a request: {e}", self.qid);
        }
        self.commit(i);
    }

    /// Puts a finished reply in place and hands the entry back to the kernel.
    fn commit(&mut self, i: usize) {
        let e = self.ents[i].clone();
        let commit_id;
        {
            let mut st = e.reply.lock();
            if st.staged_mode && !st.staged.is_empty() {
                // SAFETY: staged.len() == payload_sz <= payload_bytes (checked in send);
                // the request that borrowed the payload is gone.
                unsafe {
                    std::ptr::copy_nonoverlapping(st.staged.as_ptr(), e.payload(), st.staged.len())
                };
                st.staged.clear();
            }
            // SAFETY: header buffer is ours until the commit is submitted.
            unsafe {
                let p = e.hdr.add(ENT_IN_OUT_OFF + 16).cast::<u32>();
                p.write_unaligned(st.payload_sz);
            }
            commit_id = e.commit_id();
            st.detached = false;
        }
        let sqe = self.cmd(CMD_COMMIT_AND_FETCH, i, commit_id);
        if let Err(e) = self.push(sqe) {
            // Only a broken ring gets here; the entry is lost to this queue.
            error!("fuse ring {}: cannot commit a reply: {e}", self.qid);
            self.live -= 1;
        }
    }
}

fn set_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    // SAFETY: Entry128 is repr(C) over io_uring_sqe (64 bytes) + 64 bytes of command; `len`
    // sits at byte 24 of io_uring_sqe (uapi layout, stable).
    unsafe {
        let mut raw: [u8; 128] = std::mem::transmute(sqe);
        raw[24..28].copy_from_slice(&len.to_ne_bytes());
        std::mem::transmute(raw)
    }
}
