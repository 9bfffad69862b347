//! The client: a [`Peer`] holds up to `PEER_CONNECTIONS_MAX` authenticated connections to one
//! storage host, each carrying up to `CONN_REQUESTS_MAX` requests at once (a reader task
//! matches answers to callers by request id). A watchdog frees the callers of a connection
//! on which no byte moved for `stall_timeout` while a request was in flight.
//!
//! From a thread that is not a tokio worker, use [`Client`]: the same calls, blocking on a
//! multi-threaded runtime's `Handle` (the connections' tasks run on its workers).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::AbortHandle;

use super::auth::{hello_mac, macs_equal, server_mac};
use super::backend::Space;
use super::frame::{self, Header, KIND_CHALLENGE, KIND_DATA, KIND_REQUEST, KIND_RESPONSE};
use super::lane::{Lane, Tried, LANE_READ_BYTES_MAX};
use super::msg::{verify_blocks, Challenge, Class, ExtentId, Op, Request, Response, Sum};
use super::msg::{WireError, SCAN_PAGE_MAX};
use super::{CONNECT_TIMEOUT, CONN_REQUESTS_MAX, PEER_CONNECTIONS_MAX, PROTO};
use super::{REQUEST_BYTES_PER_S, REQUEST_DEADLINE_BASE, RETRY_DELAYS, STALL_TIMEOUT};

const READ_BUFFER_BYTES: usize = 64 << 10;
/// Deadline allowances of requests that carry no bytes but make the host work: a Sync
/// flushes up to an extent per file, a Scan page lists the whole disk (in bytes at the
/// deadline rate: 1 MiB is 31 ms at 32 MiB/s).
const SYNC_BYTES_PER_FILE: u64 = 1 << 20;
const SCAN_BYTES_ALLOWANCE: u64 = 128 << 20;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub pool: String,
    /// This host's name, sent in `Hello`.
    pub host: String,
    pub secret: [u8; 32],
    /// For the TCP connect and, again, for the hello exchange.
    pub connect_timeout: Duration,
    pub stall_timeout: Duration,
    /// A client-class request's deadline is `deadline_base + bytes / deadline_bytes_per_s`;
    /// recovery and migration requests (paced by the server) have the stall time-out only.
    pub deadline_base: Duration,
    pub deadline_bytes_per_s: u64,
    pub connections_max: usize,
    /// Pauses before the further tries (idempotent requests get all, a write the first).
    pub retry_delays: Vec<Duration>,
}

impl ClientConfig {
    pub fn new(pool: &str, host: &str, secret: [u8; 32]) -> ClientConfig {
        ClientConfig {
            pool: pool.to_string(),
            host: host.to_string(),
            secret,
            connect_timeout: CONNECT_TIMEOUT,
            stall_timeout: STALL_TIMEOUT,
            deadline_base: REQUEST_DEADLINE_BASE,
            deadline_bytes_per_s: REQUEST_BYTES_PER_S,
            connections_max: PEER_CONNECTIONS_MAX,
            retry_delays: RETRY_DELAYS.to_vec(),
        }
    }
}

/// What every request carries besides its own fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    pub term: u64,
    pub class: Class,
    /// The server process the request's disk numbers come from (0: any).
    pub incarnation: u64,
}

impl Ctx {
    pub fn new(term: u64, class: Class) -> Ctx {
        Ctx {
            term,
            class,
            incarnation: 0,
        }
    }
}

/// A write of one whole extent version; `sums` are the metadata's, one per block.
#[derive(Debug, Clone)]
pub struct WriteReq {
    pub disk: u32,
    pub id: ExtentId,
    pub shard: u32,
    pub epoch: u64,
    pub block_bytes: u32,
    pub sums: Vec<Sum>,
}

/// A recovery copy the target host pulls from `src` (`ip:port`, its disk `src_disk`).
#[derive(Debug, Clone)]
pub struct CopyReq {
    pub src: String,
    pub src_disk: u32,
    /// The source server process `src_disk` is numbered by (0: any).
    pub src_incarnation: u64,
    pub dst_disk: u32,
    pub id: ExtentId,
    pub len: u64,
    pub block_bytes: u32,
    /// The whole extent's, from the metadata.
    pub sums: Vec<Sum>,
    pub shard: u32,
    pub epoch: u64,
    pub tag: u32,
}

/// A read of `offset..offset + len`; `sums` are those of the blocks the range covers.
#[derive(Debug, Clone)]
pub struct ReadReq {
    pub disk: u32,
    pub id: ExtentId,
    pub offset: u64,
    pub len: u64,
    pub block_bytes: u32,
    pub sums: Vec<Sum>,
}

impl ReadReq {
    /// Picks the covered blocks' sums out of the whole extent's.
    pub fn covering(
        disk: u32,
        id: ExtentId,
        (offset, len): (u64, u64),
        block_bytes: u32,
        extent_sums: &[Sum],
    ) -> ReadReq {
        let bs = block_bytes.max(1) as u64;
        let first = (offset / bs) as usize;
        let end = (offset.saturating_add(len).div_ceil(bs) as usize).min(extent_sums.len());
        ReadReq {
            disk,
            id,
            offset,
            len,
            block_bytes,
            sums: extent_sums.get(first..end).unwrap_or_default().to_vec(),
        }
    }
}

/// Why a call failed: on the way (retried on another connection) or in the answer.
#[derive(Debug, Clone)]
enum Fail {
    Transport(WireError),
    Answer(WireError),
}

impl Fail {
    fn error(self) -> WireError {
        match self {
            Fail::Transport(e) | Fail::Answer(e) => e,
        }
    }
}

fn transport(e: io::Error) -> Fail {
    Fail::Transport(WireError::from_transport(&e))
}

fn reset() -> WireError {
    WireError::Io {
        errno: libc::ECONNRESET,
    }
}

/// The last time a byte moved on a connection, either way.
struct Progress {
    base: Instant,
    last_ms: AtomicU64,
}

impl Progress {
    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.base.elapsed().saturating_sub(last)
    }
}

/// A socket half that notes every byte moved in its connection's `Progress`.
struct Tracked<T> {
    inner: T,
    progress: Arc<Progress>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            me.progress.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_write(cx, b);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            me.progress.touch();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            me.progress.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

type Reader = BufReader<Tracked<OwnedReadHalf>>;
type Answer = Result<(Response, Vec<u8>), Fail>;

struct Pending {
    tx: oneshot::Sender<Answer>,
    /// The most data bytes the answer may carry (a longer one is a protocol error).
    data_bytes_max: u64,
}

struct Conn {
    id: u64,
    writer: tokio::sync::Mutex<Tracked<OwnedWriteHalf>>,
    pending: Mutex<HashMap<u64, Pending>>,
    slots: Semaphore,
    /// Callers assigned to this connection (picked, not yet finished).
    assigned: AtomicUsize,
    next_id: AtomicU64,
    progress: Arc<Progress>,
    dead: AtomicBool,
    killed: watch::Sender<bool>,
    reader: Mutex<Option<AbortHandle>>,
}

/// Kills the connection if a request's frames were not all sent (the caller gave up half
/// way, or the socket failed): the stream is out of step after that.
struct SendGuard<'a>(&'a Conn, bool);

impl Drop for SendGuard<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.kill(WireError::timed_out());
        }
    }
}

/// Removes a caller's pending entry however its call ends.
struct Unlist<'a>(&'a Conn, u64);

impl Drop for Unlist<'_> {
    fn drop(&mut self) {
        self.0.pending.lock().expect("pending lock").remove(&self.1);
    }
}

async fn read_meta<R: AsyncRead + Unpin, T: serde::de::DeserializeOwned>(
    rd: &mut R,
    kind: u8,
) -> Result<(Header, T), Fail> {
    let b = frame::read_header_bytes(rd)
        .await
        .map_err(transport)?
        .ok_or(Fail::Transport(reset()))?;
    let h = Header::decode(&b).map_err(|(_, e)| Fail::Transport(e))?;
    if h.kind != kind || h.payload_len != 0 {
        let e = WireError::BadRequest(format!("frame kind {} where {kind} was due", h.kind));
        return Err(Fail::Transport(e));
    }
    let meta = frame::read_vec(rd, h.meta_len as usize)
        .await
        .map_err(transport)?;
    let v = frame::decode_meta(&meta).map_err(Fail::Transport)?;
    Ok((h, v))
}

/// Answers the server's challenge and checks its answer: both ends prove the secret.
async fn handshake<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    rd: &mut R,
    wr: &mut W,
    cfg: &ClientConfig,
) -> Result<(String, Vec<(u32, String)>, u64), Fail> {
    let (_, ch): (_, Challenge) = read_meta(rd, KIND_CHALLENGE).await?;
    if ch.proto != PROTO {
        let e = WireError::BadRequest(format!("server speaks protocol {}", ch.proto));
        return Err(Fail::Answer(e));
    }
    let nonce: [u8; 32] = rand::random();
    let op = Op::Hello {
        pool: cfg.pool.clone(),
        host: cfg.host.clone(),
        proto: PROTO,
        nonce,
        mac: hello_mac(&cfg.secret, &ch.nonce, &nonce, &cfg.pool, &cfg.host),
    };
    let req = Request {
        term: 0,
        class: Class::Client,
        op,
        incarnation: 0,
    };
    let head = Header::new(KIND_REQUEST, 0, 0, 0);
    (frame::write_frame(wr, head, &frame::encode_meta(&req), &[], false).await)
        .map_err(transport)?;
    match read_meta(rd, KIND_RESPONSE).await?.1 {
        Response::HelloOk {
            host,
            disks,
            mac,
            incarnation,
        } => {
            if !macs_equal(&mac, &server_mac(&cfg.secret, &ch.nonce, &nonce, &host)) {
                let e = WireError::BadRequest("server failed authentication".into());
                return Err(Fail::Answer(e));
            }
            Ok((host, disks, incarnation))
        }
        Response::Err(e) => Err(Fail::Answer(e)),
        other => Err(Fail::Transport(unexpected(&other))),
    }
}

fn unexpected(r: &Response) -> WireError {
    WireError::BadRequest(format!("unexpected answer {r:?}"))
}

async fn within<T>(
    t: Duration,
    f: impl std::future::Future<Output = Result<T, Fail>>,
) -> Result<T, Fail> {
    tokio::time::timeout(t, f)
        .await
        .unwrap_or(Err(Fail::Transport(WireError::timed_out())))
}

/// A new connection, the server's host name, its disks and its incarnation.
type Hello = (Arc<Conn>, String, Vec<(u32, String)>, u64);

impl Conn {
    async fn open(addr: SocketAddr, cfg: &ClientConfig, id: u64) -> Result<Hello, Fail> {
        let connect = async { TcpStream::connect(addr).await.map_err(transport) };
        let stream = within(cfg.connect_timeout, connect).await?;
        frame::tune_socket(&stream);
        let progress = Arc::new(Progress {
            base: Instant::now(),
            last_ms: AtomicU64::new(0),
        });
        let (rd, wr) = stream.into_split();
        let track = |inner| Tracked {
            inner,
            progress: progress.clone(),
        };
        let mut rd = BufReader::with_capacity(READ_BUFFER_BYTES, track(rd));
        let mut wr = Tracked {
            inner: wr,
            progress: progress.clone(),
        };
        let (host, disks, incarnation) =
            within(cfg.connect_timeout, handshake(&mut rd, &mut wr, cfg)).await?;
        let conn = Arc::new(Conn {
            id,
            writer: tokio::sync::Mutex::new(wr),
            pending: Mutex::new(HashMap::new()),
            slots: Semaphore::new(CONN_REQUESTS_MAX),
            assigned: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            progress,
            dead: AtomicBool::new(false),
            killed: watch::channel(false).0,
            reader: Mutex::new(None),
        });
        let reader = tokio::spawn(read_loop(conn.clone(), rd)).abort_handle();
        *conn.reader.lock().expect("reader lock") = Some(reader);
        tokio::spawn(watchdog(Arc::downgrade(&conn), cfg.stall_timeout));
        Ok((conn, host, disks, incarnation))
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Fails every caller waiting on this connection and stops its reader; idempotent.
    fn kill(&self, e: WireError) {
        if self.dead.swap(true, Ordering::SeqCst) {
            return;
        }
        self.killed.send_replace(true);
        let pending = std::mem::take(&mut *self.pending.lock().expect("pending lock"));
        for (_, p) in pending {
            let _ = p.tx.send(Err(Fail::Transport(e.clone())));
        }
        if let Some(h) = self.reader.lock().expect("reader lock").take() {
            h.abort();
        }
    }

    async fn send(&self, id: u64, req: &Request, data: &[u8]) -> Result<(), Fail> {
        let mut w = self.writer.lock().await;
        let mut guard = SendGuard(self, true);
        let head = Header::new(KIND_REQUEST, id, 0, 0);
        let meta = frame::encode_meta(req);
        (frame::write_frame(&mut *w, head, &meta, &[], false).await).map_err(transport)?;
        let chunk = frame::PAYLOAD_BYTES_MAX as usize;
        let n = data.len().div_ceil(chunk);
        for (i, c) in data.chunks(chunk).enumerate() {
            let head = Header::new(KIND_DATA, id, 0, 0);
            (frame::write_frame(&mut *w, head, &[], c, i + 1 == n).await).map_err(transport)?;
        }
        guard.1 = false;
        Ok(())
    }

    /// One request on this connection: waits for a slot, sends, waits for the answer.
    async fn call(&self, req: &Request, data: &[u8], data_bytes_max: u64) -> Answer {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| Fail::Transport(reset()))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let entry = Pending { tx, data_bytes_max };
        self.pending.lock().expect("pending lock").insert(id, entry);
        let _unlist = Unlist(self, id);
        // After the insert: a kill either finds the entry or is seen here.
        if self.is_dead() {
            return Err(Fail::Transport(reset()));
        }
        self.progress.touch();
        let mut killed = self.killed.subscribe();
        tokio::select! {
            r = self.send(id, req, data) => r?,
            _ = killed.wait_for(|k| *k) => return Err(Fail::Transport(reset())),
        }
        match rx.await {
            Ok(Ok((Response::Err(e), _))) => Err(Fail::Answer(e)),
            Ok(r) => r,
            Err(_) => Err(Fail::Transport(reset())),
        }
    }
}

async fn watchdog(conn: Weak<Conn>, stall: Duration) {
    let tick = (stall / 4).max(Duration::from_millis(5));
    loop {
        tokio::time::sleep(tick).await;
        let Some(c) = conn.upgrade() else { return };
        if c.is_dead() {
            return;
        }
        let busy = !c.pending.lock().expect("pending lock").is_empty();
        if busy && c.progress.idle() > stall {
            tracing::debug!("extent connection stalled for {:?}", c.progress.idle());
            c.kill(WireError::timed_out());
            return;
        }
    }
}

async fn read_loop(conn: Arc<Conn>, mut rd: Reader) {
    let e = loop {
        if let Err(e) = read_answer(&conn, &mut rd).await {
            break e.error();
        }
    };
    conn.kill(e);
}

/// Reads one answer and its data chunks and hands them to the caller; an answer nobody
/// waits for any more (its caller gave up) is read and dropped.
async fn read_answer(conn: &Conn, rd: &mut Reader) -> Result<(), Fail> {
    let (h, resp): (_, Response) = read_meta(rd, KIND_RESPONSE).await?;
    let id = h.request_id;
    let max = (conn.pending.lock().expect("pending lock").get(&id)).map(|p| p.data_bytes_max);
    let data = match resp {
        Response::Data { len } => {
            if len > max.unwrap_or(super::SERVER_BUFFER_BYTES_MAX as u64) {
                let e = WireError::BadRequest("answer longer than the request".into());
                return Err(Fail::Transport(e));
            }
            read_chunks(rd, id, len, max.is_some()).await?
        }
        _ => Vec::new(),
    };
    if let Some(p) = conn.pending.lock().expect("pending lock").remove(&id) {
        let _ = p.tx.send(Ok((resp, data)));
    }
    Ok(())
}

async fn read_chunks(rd: &mut Reader, id: u64, len: u64, keep: bool) -> Result<Vec<u8>, Fail> {
    let mut buf = Vec::with_capacity(if keep { len as usize } else { 0 });
    let mut left = len;
    while left > 0 {
        let b = frame::read_header_bytes(rd)
            .await
            .map_err(transport)?
            .ok_or(Fail::Transport(reset()))?;
        let h = Header::decode(&b).map_err(|(_, e)| Fail::Transport(e))?;
        let n = h.payload_len as u64;
        if h.kind != KIND_DATA || h.request_id != id || h.meta_len != 0 || n == 0 || n > left {
            let e = WireError::BadRequest("bad data chunk in an answer".into());
            return Err(Fail::Transport(e));
        }
        if keep {
            (frame::read_append(rd, &mut buf, n as usize).await).map_err(transport)?;
        } else {
            frame::skip(rd, n).await.map_err(transport)?;
        }
        left -= n;
    }
    Ok(buf)
}

/// A caller's claim on a connection, for choosing the least busy one.
struct Lease(Arc<Conn>);

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.assigned.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connections to one storage host. Dropping it closes them.
pub struct Peer {
    addr: SocketAddr,
    cfg: ClientConfig,
    conns: Mutex<Vec<Arc<Conn>>>,
    opening: tokio::sync::Mutex<()>,
    next_conn: AtomicU64,
    host: String,
    /// The latest connection's `HelloOk`: which process, and its disks (a restarted host
    /// may number them otherwise). One value, so a disk number and the incarnation it is
    /// valid for are read together.
    view: Mutex<Arc<PeerView>>,
}

/// A storage host process as a connection's `HelloOk` described it.
#[derive(Debug)]
pub struct PeerView {
    pub incarnation: u64,
    /// (disk number, uuid).
    pub disks: Vec<(u32, String)>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        for c in self.conns.lock().expect("conns lock").drain(..) {
            c.kill(WireError::ShuttingDown);
        }
    }
}

fn expect_done(r: Response) -> Result<(), WireError> {
    match r {
        Response::Done => Ok(()),
        other => Err(unexpected(&other)),
    }
}

impl Peer {
    /// Opens the first connection (so a wrong address or secret shows here).
    pub async fn connect(addr: SocketAddr, cfg: ClientConfig) -> Result<Peer, WireError> {
        let (conn, host, disks, inc) = Conn::open(addr, &cfg, 0).await.map_err(Fail::error)?;
        Ok(Peer {
            addr,
            cfg,
            conns: Mutex::new(vec![conn]),
            opening: tokio::sync::Mutex::new(()),
            next_conn: AtomicU64::new(1),
            host,
            view: Mutex::new(Arc::new(PeerView {
                incarnation: inc,
                disks,
            })),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's host name, from its authenticated `HelloOk`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The server's disks: (pool disk, uuid).
    pub fn disks(&self) -> Vec<(u32, String)> {
        self.view().disks.clone()
    }

    /// The server process the latest connection reached: it changes when the host
    /// restarted (a file written before and not synced since may be gone).
    pub fn incarnation(&self) -> u64 {
        self.view().incarnation
    }

    /// Incarnation and disks, read together.
    pub fn view(&self) -> Arc<PeerView> {
        self.view.lock().expect("view lock").clone()
    }

    /// The least busy live connection other than `exclude`; None: open another one.
    fn choose(&self, exclude: Option<u64>) -> Option<Lease> {
        let mut conns = self.conns.lock().expect("conns lock");
        conns.retain(|c| !c.is_dead());
        let load = |c: &&Arc<Conn>| c.assigned.load(Ordering::Relaxed);
        let full = conns.len() >= self.cfg.connections_max.max(1);
        let others = conns.iter().filter(|c| Some(c.id) != exclude);
        let c = match others.min_by_key(load) {
            Some(c) if load(&c) == 0 || full => c.clone(),
            None if full => conns.first()?.clone(),
            _ => return None,
        };
        c.assigned.fetch_add(1, Ordering::Relaxed);
        Some(Lease(c))
    }

    async fn lease(&self, exclude: Option<u64>) -> Result<Lease, Fail> {
        if let Some(l) = self.choose(exclude) {
            return Ok(l);
        }
        let _one_at_a_time = self.opening.lock().await;
        if let Some(l) = self.choose(exclude) {
            return Ok(l);
        }
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (c, host, disks, inc) = Conn::open(self.addr, &self.cfg, id).await?;
        if let Err(e) = self.note_hello(host, disks, inc) {
            c.kill(WireError::ShuttingDown);
            return Err(e);
        }
        c.assigned.fetch_add(1, Ordering::Relaxed);
        self.conns.lock().expect("conns lock").push(c.clone());
        Ok(Lease(c))
    }

    /// A new connection's `HelloOk`: the same host (else refused), perhaps a new process.
    fn note_hello(&self, host: String, disks: Vec<(u32, String)>, inc: u64) -> Result<(), Fail> {
        if host != self.host {
            let e = format!("{} answers as host {host}, not {}", self.addr, self.host);
            return Err(Fail::Answer(WireError::BadRequest(e)));
        }
        let mut view = self.view.lock().expect("view lock");
        if view.incarnation != inc {
            tracing::warn!(host = %self.host, "storage host restarted (a new incarnation)");
            *view = Arc::new(PeerView {
                incarnation: inc,
                disks,
            });
        }
        Ok(())
    }

    /// A connection for a thread to use by itself, blocking ([`super::lane`]): connected
    /// and authenticated here, then handed over as a blocking socket.
    pub(super) async fn dial_blocking(&self) -> Result<std::net::TcpStream, WireError> {
        let mut stream = within(self.cfg.connect_timeout, async {
            TcpStream::connect(self.addr).await.map_err(transport)
        })
        .await
        .map_err(Fail::error)?;
        frame::tune_socket(&stream);
        let (rd, mut wr) = stream.split();
        let mut rd = BufReader::with_capacity(4096, rd);
        let hello = within(
            self.cfg.connect_timeout,
            handshake(&mut rd, &mut wr, &self.cfg),
        );
        let (host, disks, inc) = hello.await.map_err(Fail::error)?;
        // The server sends nothing unasked after its HelloOk: nothing can be left buffered.
        if !rd.buffer().is_empty() {
            return Err(WireError::BadRequest("bytes after the hello".into()));
        }
        drop(rd);
        self.note_hello(host, disks, inc).map_err(Fail::error)?;
        let sock = stream
            .into_std()
            .map_err(|e| WireError::from_transport(&e))?;
        sock.set_nonblocking(false)
            .map_err(|e| WireError::from_transport(&e))?;
        Ok(sock)
    }

    pub(super) fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    pub(super) fn deadline(&self, class: Class, bytes: u64) -> Option<Duration> {
        let rate = self.cfg.deadline_bytes_per_s.max(1);
        (class == Class::Client)
            .then(|| self.cfg.deadline_base + Duration::from_secs_f64(bytes as f64 / rate as f64))
    }

    /// Sends `req` (and `data`) with up to `retries` further tries on other connections,
    /// after transport failures and `Busy`; any other answer is final.
    async fn call(
        &self,
        req: Request,
        data: &[u8],
        data_bytes_max: u64,
        retries: usize,
    ) -> Result<(Response, Vec<u8>), WireError> {
        self.call_from(req, (data, data_bytes_max), retries, None)
            .await
    }

    /// `call` after `tried`: the error of a first try made elsewhere (the blocking lane's).
    async fn call_from(
        &self,
        req: Request,
        (data, data_bytes_max): (&[u8], u64),
        retries: usize,
        tried: Option<WireError>,
    ) -> Result<(Response, Vec<u8>), WireError> {
        let deadline = self.deadline(req.class, data.len() as u64 + data_bytes_max);
        let first = usize::from(tried.is_some());
        let (mut exclude, mut last) = (None, tried.unwrap_or_else(reset));
        for attempt in first..=retries {
            if attempt > 0 {
                let delays = &self.cfg.retry_delays;
                let pause = delays.get(attempt - 1).or(delays.last());
                tokio::time::sleep(pause.copied().unwrap_or_default()).await;
            }
            // The deadline covers getting a connection too: with the host unreachable,
            // callers would otherwise queue behind each other's connect time-outs.
            let used = AtomicU64::new(u64::MAX);
            let attempt = self.attempt(&req, (data, data_bytes_max), exclude, &used);
            let r = match deadline {
                Some(d) => within(d, attempt).await,
                None => attempt.await,
            };
            let used = used.load(Ordering::Relaxed);
            if used != u64::MAX {
                exclude = Some(used);
            }
            match r {
                Ok(v) => return Ok(v),
                Err(Fail::Answer(e)) if e != WireError::Busy => return Err(e),
                Err(f) => last = f.error(),
            }
        }
        Err(last)
    }

    /// One try of `call`: a connection other than `exclude` (its id left in `used`), then
    /// the request on it.
    async fn attempt(
        &self,
        req: &Request,
        (data, data_bytes_max): (&[u8], u64),
        exclude: Option<u64>,
        used: &AtomicU64,
    ) -> Answer {
        let lease = self.lease(exclude).await?;
        used.store(lease.0.id, Ordering::Relaxed);
        lease.0.call(req, data, data_bytes_max).await
    }

    fn request(ctx: Ctx, op: Op) -> Request {
        Request {
            term: ctx.term,
            class: ctx.class,
            op,
            incarnation: ctx.incarnation,
        }
    }

    /// Writes a whole extent version; retried once (a version's bytes never change).
    pub async fn write(&self, ctx: Ctx, w: &WriteReq, data: &[u8]) -> Result<(), WireError> {
        let op = Op::Write {
            disk: w.disk,
            id: w.id,
            shard: w.shard,
            epoch: w.epoch,
            len: data.len() as u64,
            block_bytes: w.block_bytes,
            sums: w.sums.clone(),
        };
        let (resp, _) = self.call(Self::request(ctx, op), data, 0, 1).await?;
        expect_done(resp)
    }

    /// Reads `r.offset..r.offset + r.len`, verified against `r.sums` here too.
    pub async fn read(&self, ctx: Ctx, r: &ReadReq) -> Result<Vec<u8>, WireError> {
        self.read_from(Self::read_request(ctx, r)?, r, None).await
    }

    /// `read` of `r`'s request (from `read_request`) after `tried`: the error of a first
    /// try made elsewhere (the blocking lane's).
    pub(super) async fn read_from(
        &self,
        (req, span): (Request, u64),
        r: &ReadReq,
        tried: Option<WireError>,
    ) -> Result<Vec<u8>, WireError> {
        let retries = self.cfg.retry_delays.len();
        let answer = self.call_from(req, (&[], span), retries, tried).await?;
        Self::read_answer(r, answer)
    }

    /// The request of a read, and the bytes its answer may carry (its whole blocks).
    pub(super) fn read_request(ctx: Ctx, r: &ReadReq) -> Result<(Request, u64), WireError> {
        let bs = r.block_bytes as u64;
        if bs == 0 || r.len == 0 {
            return Err(WireError::BadRequest("empty read or block size 0".into()));
        }
        let first = r.offset / bs;
        let span = (r.offset.saturating_add(r.len).div_ceil(bs) - first) * bs;
        let op = Op::Read {
            disk: r.disk,
            id: r.id,
            offset: r.offset,
            len: r.len,
            block_bytes: r.block_bytes,
            sums: r.sums.clone(),
        };
        Ok((Self::request(ctx, op), span))
    }

    /// A read's answer, its blocks verified, cut to the bytes asked for.
    pub(super) fn read_answer(
        r: &ReadReq,
        (resp, mut data): (Response, Vec<u8>),
    ) -> Result<Vec<u8>, WireError> {
        let bs = r.block_bytes as u64;
        let first = r.offset / bs;
        let Response::Data { .. } = resp else {
            return Err(unexpected(&resp));
        };
        verify_blocks(&data, r.block_bytes, &r.sums, first)?;
        let skip = (r.offset - first * bs) as usize;
        if data.len() < skip + r.len as usize {
            return Err(WireError::BadRequest("short read answer".into()));
        }
        data.truncate(skip + r.len as usize);
        data.drain(..skip);
        Ok(data)
    }

    /// Makes the extents durable on `disk`; returns those that failed.
    pub async fn sync(
        &self,
        ctx: Ctx,
        disk: u32,
        ids: &[ExtentId],
    ) -> Result<Vec<ExtentId>, WireError> {
        let op = Op::Sync {
            disk,
            ids: ids.to_vec(),
        };
        let retries = self.cfg.retry_delays.len();
        // The host flushes what the files hold: allow for an extent's worth of bytes each.
        let allowance = SYNC_BYTES_PER_FILE * ids.len() as u64;
        match self
            .call(Self::request(ctx, op), &[], allowance, retries)
            .await?
            .0
        {
            Response::Synced { failed } => Ok(failed),
            other => Err(unexpected(&other)),
        }
    }

    /// Removes an extent version; `shard_epoch` fences a placement change's removal.
    pub async fn remove(
        &self,
        ctx: Ctx,
        disk: u32,
        id: ExtentId,
        shard_epoch: Option<(u32, u64)>,
    ) -> Result<(), WireError> {
        let op = Op::Remove {
            disk,
            id,
            shard_epoch,
        };
        let retries = self.cfg.retry_delays.len();
        expect_done(self.call(Self::request(ctx, op), &[], 0, retries).await?.0)
    }

    /// Every extent on `disk` with its file length, a page at a time (one disk's listing
    /// is bounded by what it holds; pages keep each answer under the frame limits).
    pub async fn scan(&self, ctx: Ctx, disk: u32) -> Result<Vec<(ExtentId, u64)>, WireError> {
        let retries = self.cfg.retry_delays.len();
        let mut out: Vec<(ExtentId, u64)> = Vec::new();
        loop {
            let after = out.last().map(|e| e.0);
            let op = Op::Scan {
                disk,
                after,
                limit: SCAN_PAGE_MAX,
            };
            // The host walks its whole disk for each page.
            match self
                .call(Self::request(ctx, op), &[], SCAN_BYTES_ALLOWANCE, retries)
                .await?
                .0
            {
                Response::Listing { extents, more } => {
                    let ordered = extents
                        .first()
                        .is_none_or(|f| after.is_none_or(|a| f.0 > a));
                    if !ordered {
                        return Err(WireError::BadRequest("scan page out of order".into()));
                    }
                    out.extend(extents);
                    if !more {
                        return Ok(out);
                    }
                }
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// Has this host pull `c.id` from `c.src` and stage it as copy `c.tag` (recovery);
    /// not retried: the recovery's next pass plans it again.
    pub async fn copy_from(&self, ctx: Ctx, c: &CopyReq) -> Result<(), WireError> {
        let op = Op::CopyFrom {
            src: c.src.clone(),
            src_disk: c.src_disk,
            src_incarnation: c.src_incarnation,
            dst_disk: c.dst_disk,
            id: c.id,
            len: c.len,
            block_bytes: c.block_bytes,
            sums: c.sums.clone(),
            shard: c.shard,
            epoch: c.epoch,
            tag: c.tag,
        };
        expect_done(self.call(Self::request(ctx, op), &[], 0, 0).await?.0)
    }

    /// Moves staged copy `tag` into place under the shard's fence.
    pub async fn install(
        &self,
        ctx: Ctx,
        disk: u32,
        (id, tag): (ExtentId, u32),
        (shard, epoch): (u32, u64),
    ) -> Result<(), WireError> {
        let op = Op::Install {
            disk,
            id,
            tag,
            shard,
            epoch,
        };
        expect_done(self.call(Self::request(ctx, op), &[], 0, 1).await?.0)
    }

    pub async fn discard(
        &self,
        ctx: Ctx,
        disk: u32,
        id: ExtentId,
        tag: u32,
    ) -> Result<(), WireError> {
        let op = Op::Discard { disk, id, tag };
        let retries = self.cfg.retry_delays.len();
        expect_done(self.call(Self::request(ctx, op), &[], 0, retries).await?.0)
    }

    pub async fn remove_temps(&self, ctx: Ctx, disk: u32) -> Result<u64, WireError> {
        let req = Self::request(ctx, Op::RemoveTemps { disk });
        match self.call(req, &[], 0, 0).await?.0 {
            Response::Removed { count } => Ok(count),
            other => Err(unexpected(&other)),
        }
    }

    /// Asks the host to connect now to the extent services at `srcs` (its recovery copies'
    /// sources); how many it holds connections to.
    pub async fn connect_sources(&self, ctx: Ctx, srcs: &[String]) -> Result<u32, WireError> {
        let req = Self::request(
            ctx,
            Op::Connect {
                srcs: srcs.to_vec(),
            },
        );
        match self.call(req, &[], 0, 0).await?.0 {
            Response::Connected { count } => Ok(count),
            other => Err(unexpected(&other)),
        }
    }

    /// The disk's answer time for a small read, in microseconds (measured by the server).
    pub async fn probe(&self, ctx: Ctx, disk: u32) -> Result<u64, WireError> {
        let retries = self.cfg.retry_delays.len();
        let req = Self::request(ctx, Op::Probe { disk });
        match self.call(req, &[], 0, retries).await?.0 {
            Response::ProbeOk { us } => Ok(us),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn space(&self, ctx: Ctx, disk: u32) -> Result<Space, WireError> {
        let retries = self.cfg.retry_delays.len();
        let req = Self::request(ctx, Op::Space { disk });
        match self.call(req, &[], 0, retries).await?.0 {
            Response::SpaceOk {
                total_bytes,
                free_bytes,
            } => Ok(Space {
                total_bytes,
                free_bytes,
            }),
            other => Err(unexpected(&other)),
        }
    }
}

/// [`Peer`]'s calls for threads outside the runtime. `rt` must be a multi-threaded runtime's
/// handle (its workers run the connections' tasks); never call these from a worker thread.
pub struct Client {
    rt: tokio::runtime::Handle,
    peer: Arc<Peer>,
    lane: Lane,
}

impl Client {
    pub fn connect(
        rt: tokio::runtime::Handle,
        addr: SocketAddr,
        cfg: ClientConfig,
    ) -> Result<Client, WireError> {
        let peer = Arc::new(rt.block_on(Peer::connect(addr, cfg))?);
        Ok(Client {
            rt,
            peer,
            lane: Lane::new(),
        })
    }

    /// Lane connections open now ([`super::lane`]).
    pub fn lane_connections(&self) -> usize {
        self.lane.open()
    }

    pub fn peer(&self) -> &Arc<Peer> {
        &self.peer
    }

    pub fn write(&self, ctx: Ctx, w: &WriteReq, data: &[u8]) -> Result<(), WireError> {
        self.rt.block_on(self.peer.write(ctx, w, data))
    }

    /// A small client read takes the blocking lane first ([`super::lane`]).
    pub fn read(&self, ctx: Ctx, r: &ReadReq) -> Result<Vec<u8>, WireError> {
        let (req, span) = Peer::read_request(ctx, r)?;
        let deadline = self.peer.deadline(ctx.class, span);
        let tried = match deadline {
            Some(d) if span <= LANE_READ_BYTES_MAX => {
                self.lane.call((&self.peer, &self.rt), &req, span, d)
            }
            _ => Tried::Not,
        };
        // Busy and a failed connection go on through the peer, with the tries left.
        let tried = match tried {
            Tried::Transport(e) | Tried::Answer(Response::Err(e @ WireError::Busy), _) => Some(e),
            Tried::Answer(Response::Err(e), _) => return Err(e),
            Tried::Answer(resp, data) => return Peer::read_answer(r, (resp, data)),
            Tried::Not => None,
        };
        let sent = self.peer.read_from((req, span), r, tried);
        self.rt.block_on(sent)
    }

    pub fn sync(&self, ctx: Ctx, disk: u32, ids: &[ExtentId]) -> Result<Vec<ExtentId>, WireError> {
        self.rt.block_on(self.peer.sync(ctx, disk, ids))
    }

    pub fn remove(
        &self,
        ctx: Ctx,
        disk: u32,
        id: ExtentId,
        shard_epoch: Option<(u32, u64)>,
    ) -> Result<(), WireError> {
        self.rt
            .block_on(self.peer.remove(ctx, disk, id, shard_epoch))
    }

    pub fn scan(&self, ctx: Ctx, disk: u32) -> Result<Vec<(ExtentId, u64)>, WireError> {
        self.rt.block_on(self.peer.scan(ctx, disk))
    }

    pub fn remove_temps(&self, ctx: Ctx, disk: u32) -> Result<u64, WireError> {
        self.rt.block_on(self.peer.remove_temps(ctx, disk))
    }

    pub fn copy_from(&self, ctx: Ctx, c: &CopyReq) -> Result<(), WireError> {
        self.rt.block_on(self.peer.copy_from(ctx, c))
    }

    pub fn connect_sources(&self, ctx: Ctx, srcs: &[String]) -> Result<u32, WireError> {
        self.rt.block_on(self.peer.connect_sources(ctx, srcs))
    }

    pub fn install(
        &self,
        ctx: Ctx,
        disk: u32,
        id_tag: (ExtentId, u32),
        fence: (u32, u64),
    ) -> Result<(), WireError> {
        self.rt
            .block_on(self.peer.install(ctx, disk, id_tag, fence))
    }

    pub fn discard(&self, ctx: Ctx, disk: u32, id: ExtentId, tag: u32) -> Result<(), WireError> {
        self.rt.block_on(self.peer.discard(ctx, disk, id, tag))
    }

    pub fn probe(&self, ctx: Ctx, disk: u32) -> Result<u64, WireError> {
        self.rt.block_on(self.peer.probe(ctx, disk))
    }

    pub fn space(&self, ctx: Ctx, disk: u32) -> Result<Space, WireError> {
        self.rt.block_on(self.peer.space(ctx, disk))
    }
}
