//! The blocking lane: a small client read from a thread outside the runtime (the daemon's
//! FUSE threads) goes over a connection that the calling thread writes and reads itself.
//!
//! Why: through [`Peer`] the answer arrives on the connection's reader task (a runtime
//! worker woken by epoll) and is handed to the caller (a second wake-up). On a small read
//! that hand-off is a large share of the time (docs/benchmarks.md, "Small remote reads").
//! Here the caller sleeps in `read(2)` on its own socket and the kernel wakes it.
//!
//! Bounded: `LANE_CONNS_MAX` connections per peer, each used by one caller at a time; a
//! caller that finds none free, or a read larger than `LANE_READ_BYTES_MAX`, takes the
//! multiplexed connections. A lane connection that fails is dropped, and the request goes
//! on through [`Peer`] with the tries that are left.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::client::Peer;
use super::frame::{self, Header, HEADER_BYTES, KIND_DATA, KIND_REQUEST, KIND_RESPONSE};
use super::msg::{Request, Response, WireError};

/// Blocking connections per peer: one per concurrent small reader.
pub const LANE_CONNS_MAX: usize = 4;
/// Reads (their whole checksum blocks) up to this size take the lane.
pub const LANE_READ_BYTES_MAX: u64 = 64 << 10;

/// How one try on the lane ended.
pub(super) enum Tried {
    /// No lane connection was free (or the read is not for the lane): nothing was sent.
    Not,
    /// The connection failed (dropped now); the caller goes on with the next try.
    Transport(WireError),
    /// The server's answer (which may be an error such as a fence).
    Answer(Response, Vec<u8>),
}

struct LaneConn {
    s: TcpStream,
    next_id: u64,
}

/// The idle lane connections to one peer.
pub(super) struct Lane {
    idle: Mutex<Vec<LaneConn>>,
    /// Open connections, idle or in use.
    open: AtomicUsize,
}

impl Lane {
    pub(super) fn new() -> Lane {
        Lane {
            idle: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
        }
    }

    /// Open lane connections (for tests and status).
    pub(super) fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// A free connection, or a new one while fewer than `LANE_CONNS_MAX` are open.
    fn take(
        &self,
        peer: &Arc<Peer>,
        rt: &tokio::runtime::Handle,
    ) -> Result<Option<LaneConn>, WireError> {
        if let Some(c) = self.idle.lock().expect("lane lock").pop() {
            return Ok(Some(c));
        }
        let grew = self
            .open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < LANE_CONNS_MAX).then_some(n + 1)
            });
        if grew.is_err() {
            return Ok(None);
        }
        match rt.block_on(peer.dial_blocking()) {
            Ok(s) => Ok(Some(LaneConn { s, next_id: 1 })),
            Err(e) => {
                self.open.fetch_sub(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    /// One try of `req` (whose answer carries at most `data_bytes_max` bytes) on a lane
    /// connection, within `deadline`.
    pub(super) fn call(
        &self,
        (peer, rt): (&Arc<Peer>, &tokio::runtime::Handle),
        req: &Request,
        data_bytes_max: u64,
        deadline: Duration,
    ) -> Tried {
        let mut c = match self.take(peer, rt) {
            Ok(Some(c)) => c,
            Ok(None) => return Tried::Not,
            Err(e) => return Tried::Transport(e),
        };
        let stall = peer.config().stall_timeout;
        match exchange(
            &mut c,
            req,
            data_bytes_max,
            Instant::now() + deadline,
            stall,
        ) {
            Ok((resp, data)) => {
                self.idle.lock().expect("lane lock").push(c);
                Tried::Answer(resp, data)
            }
            Err(e) => {
                // Out of step or broken: never used again.
                self.open.fetch_sub(1, Ordering::SeqCst);
                Tried::Transport(e)
            }
        }
    }
}

fn io_err(e: io::Error) -> WireError {
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        return WireError::timed_out();
    }
    WireError::from_transport(&e)
}

/// Reads exactly `buf.len()` bytes, each wait bounded by what is left of `until` and by
/// `stall` (no byte for that long: the host hangs).
fn read_until(
    s: &mut TcpStream,
    buf: &mut [u8],
    until: Instant,
    stall: Duration,
) -> Result<(), WireError> {
    let mut got = 0;
    while got < buf.len() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(WireError::timed_out());
        }
        s.set_read_timeout(Some(left.min(stall))).map_err(io_err)?;
        match s.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(WireError::from_transport(
                    &io::ErrorKind::UnexpectedEof.into(),
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    Ok(())
}

fn read_header(s: &mut TcpStream, until: Instant, stall: Duration) -> Result<Header, WireError> {
    let mut b = [0u8; HEADER_BYTES];
    read_until(s, &mut b, until, stall)?;
    Header::decode(&b).map_err(|(_, e)| e)
}

/// Sends the request and reads its answer and data chunks (each checked against the
/// request id and the size asked for before anything is allocated).
fn exchange(
    c: &mut LaneConn,
    req: &Request,
    data_bytes_max: u64,
    until: Instant,
    stall: Duration,
) -> Result<(Response, Vec<u8>), WireError> {
    let id = c.next_id;
    c.next_id += 1;
    let meta = frame::encode_meta(req);
    let mut out = Header::new(KIND_REQUEST, id, meta.len(), 0)
        .encode()
        .to_vec();
    out.extend_from_slice(&meta);
    c.s.set_write_timeout(Some(stall)).map_err(io_err)?;
    c.s.write_all(&out).map_err(io_err)?;
    let h = read_header(&mut c.s, until, stall)?;
    if h.kind != KIND_RESPONSE || h.request_id != id || h.payload_len != 0 {
        return Err(WireError::BadRequest("an answer out of step".into()));
    }
    let mut meta = vec![0u8; h.meta_len as usize];
    read_until(&mut c.s, &mut meta, until, stall)?;
    let resp: Response = frame::decode_meta(&meta)?;
    let Response::Data { len } = resp else {
        return Ok((resp, Vec::new()));
    };
    if len > data_bytes_max {
        return Err(WireError::BadRequest(
            "answer longer than the request".into(),
        ));
    }
    let mut data = vec![0u8; len as usize];
    let mut at = 0usize;
    while at < data.len() {
        let h = read_header(&mut c.s, until, stall)?;
        let n = h.payload_len as usize;
        if h.kind != KIND_DATA
            || h.request_id != id
            || h.meta_len != 0
            || n == 0
            || n > data.len() - at
        {
            return Err(WireError::BadRequest("bad data chunk in an answer".into()));
        }
        read_until(&mut c.s, &mut data[at..at + n], until, stall)?;
        at += n;
    }
    Ok((resp, data))
}
