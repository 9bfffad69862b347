//! The server: one task per connection reads requests in order (a write's chunks right
//! after its request), handles each in its own task (the disk calls on the blocking pool),
//! and one writer task sends the answers, a read's bytes in chunks (paced for recovery and
//! migration). Up to `CONN_REQUESTS_MAX` requests of a connection are in hand at once.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::{AbortHandle, JoinHandle};

use super::audit::{Audit, AuditLine};
use super::auth::{hello_mac, macs_equal, server_mac};
use super::backend::DiskBackend;
use super::client::{ClientConfig, Peer};
use super::fence::Fence;
use super::frame::{self, Header, KIND_CHALLENGE, KIND_DATA, KIND_REQUEST, KIND_RESPONSE};
use super::msg::{
    blocks_in, verify_blocks, Challenge, Class, Op, Request, Response, Sum, WireError,
    SCAN_PAGE_MAX,
};
use super::pace::Pacer;
use super::STALL_TIMEOUT;
use super::{CONN_REQUESTS_MAX, PROTO, SERVER_BUFFER_BYTES_MAX, SERVER_CONNECTIONS_MAX};

use foreshard_model::util::now_ms;

/// A connection's read buffer: headers and small metas come in one syscall; a chunk larger
/// than this goes straight into its own buffer.
const READ_BUFFER_BYTES: usize = 64 << 10;
/// Source hosts a server keeps connections to for recovery pulls.
const PEERS_MAX: usize = 64;
pub const BLOCK_BYTES_MIN: u32 = 512;
pub const BLOCK_BYTES_MAX: u32 = 16 << 20;

pub struct ServerConfig {
    pub pool: String,
    /// This host's name, sent in `HelloOk`.
    pub host: String,
    pub secret: [u8; 32],
    /// A request's chunks, and each answer frame, must move within it.
    pub stall_timeout: Duration,
    pub buffer_bytes_max: usize,
    /// Tests only: flips the first byte of every read answer after the sender verified it,
    /// so the receiving side's check is what catches it.
    #[doc(hidden)]
    pub test_corrupt_sent: bool,
    /// Where each fenced request (write, remove) is logged, accepted or refused.
    pub audit: Option<Arc<Audit>>,
    /// This server process, told to clients in `HelloOk` (random at start).
    pub incarnation: u64,
    /// Connections served at once; one beyond it is closed at once.
    pub connections_max: usize,
}

impl ServerConfig {
    pub fn new(pool: &str, host: &str, secret: [u8; 32]) -> ServerConfig {
        ServerConfig {
            pool: pool.to_string(),
            host: host.to_string(),
            secret,
            stall_timeout: STALL_TIMEOUT,
            buffer_bytes_max: SERVER_BUFFER_BYTES_MAX,
            test_corrupt_sent: false,
            audit: None,
            incarnation: rand::random(),
            connections_max: SERVER_CONNECTIONS_MAX,
        }
    }
}

struct Shared {
    cfg: ServerConfig,
    backend: Arc<dyn DiskBackend>,
    fences: HashMap<u32, Arc<Fence>>,
    disks: Vec<(u32, String)>,
    buffers: Arc<Semaphore>,
    recovery: Pacer,
    migration: Pacer,
    stopping: AtomicBool,
    conns: Mutex<Vec<AbortHandle>>,
    /// Connections to the other hosts recovery copies are pulled from, by address.
    peers: tokio::sync::Mutex<HashMap<String, Arc<Peer>>>,
}

/// Serves until [`Server::shutdown`] or drop.
pub struct Server {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: AbortHandle,
}

/// What the writer task sends: a frame of `kind` with `meta`, then `payload` in chunks.
struct Out {
    id: u64,
    kind: u8,
    meta: Vec<u8>,
    payload: Vec<u8>,
    class: Class,
    close: bool,
    /// Buffer bytes and the connection slot, given back once sent.
    _hold: Vec<OwnedSemaphorePermit>,
}

impl Out {
    fn answer(id: u64, resp: &Response) -> Out {
        Out {
            id,
            kind: KIND_RESPONSE,
            meta: frame::encode_meta(resp),
            payload: Vec::new(),
            class: Class::Client,
            close: false,
            _hold: Vec::new(),
        }
    }

    fn refuse(id: u64, e: WireError) -> Out {
        Out::answer(id, &Response::Err(e))
    }

    fn closing(mut self) -> Out {
        self.close = true;
        self
    }
}

enum Inbound {
    Eof,
    Req(u64, Request),
    /// Answer and close: the stream cannot be trusted to be in step any more.
    Refuse(u64, WireError),
}

enum Received {
    Bytes(Vec<u8>, OwnedSemaphorePermit),
    /// Answer; the connection stays in step (the chunks were read and dropped).
    Answer(WireError),
    Close(WireError),
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn within<T>(t: Duration, f: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(t, f)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WireError> + Send + 'static,
) -> Result<T, WireError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(WireError::Io { errno: libc::EIO }))
}

fn check_blocks(len: u64, block_bytes: u32, sums: usize) -> Result<(), WireError> {
    if !(BLOCK_BYTES_MIN..=BLOCK_BYTES_MAX).contains(&block_bytes) {
        return Err(WireError::BadRequest(format!("block size {block_bytes}")));
    }
    if blocks_in(len, block_bytes) != sums as u64 {
        return Err(WireError::BadRequest(format!(
            "{len} bytes but {sums} sums"
        )));
    }
    Ok(())
}

impl Shared {
    /// The early, memory-only fence check of a write (before its bytes are taken); a
    /// refusal is logged as `admit_logged` logs one.
    fn check_logged(
        &self,
        disk: u32,
        term: u64,
        (shard, epoch): (u32, u64),
    ) -> Result<(), WireError> {
        let r = self.fence(disk)?.check(term, Some((shard, epoch)));
        if let (
            Some(a),
            Err(WireError::Fenced {
                term: ts,
                epoch: es,
            }),
        ) = (&self.cfg.audit, &r)
        {
            a.log(&AuditLine {
                ms: now_ms(),
                op: "write",
                disk,
                shard,
                epoch,
                term,
                accepted: false,
                term_seen: *ts,
                epoch_seen: *es,
            });
        }
        r
    }

    /// `fence.admit` for a mutating request, logged to the audit log when there is one.
    fn admit_logged<'f>(
        audit: Option<&Audit>,
        fence: &'f Fence,
        (op, disk, term): (&'static str, u32, u64),
        (shard, epoch): (u32, u64),
    ) -> Result<super::FenceGuard<'f>, WireError> {
        let r = fence.admit(term, Some((shard, epoch)));
        if let Some(a) = audit {
            let (accepted, term_seen, epoch_seen) = match &r {
                Ok(g) => (true, g.term(), g.epoch(shard)),
                Err(WireError::Fenced { term, epoch }) => (false, *term, *epoch),
                Err(_) => (false, 0, 0),
            };
            a.log(&AuditLine {
                ms: now_ms(),
                op,
                disk,
                shard,
                epoch,
                term,
                accepted,
                term_seen,
                epoch_seen,
            });
        }
        r
    }

    /// The connection to the host at `addr` (made on first use, kept: a recovery pulls
    /// many extents from the same few hosts).
    async fn peer(&self, addr: &str) -> Result<Arc<Peer>, WireError> {
        let mut peers = self.peers.lock().await;
        if let Some(p) = peers.get(addr) {
            return Ok(p.clone());
        }
        if peers.len() >= PEERS_MAX {
            // Bounded: the oldest is as good to drop as any (reconnected when needed).
            let k = peers.keys().next().cloned().expect("non-empty");
            peers.remove(&k);
        }
        let sa: SocketAddr = addr
            .parse()
            .map_err(|_| WireError::BadRequest(format!("source address {addr}")))?;
        let cfg = ClientConfig::new(&self.cfg.pool, &self.cfg.host, self.cfg.secret);
        let p = Arc::new(Peer::connect(sa, cfg).await?);
        peers.insert(addr.to_string(), p.clone());
        Ok(p)
    }

    fn fence(&self, disk: u32) -> Result<Arc<Fence>, WireError> {
        self.fences.get(&disk).cloned().ok_or(WireError::NotFound)
    }

    fn pacer(&self, class: Class) -> Option<&Pacer> {
        match class {
            Class::Client => None,
            Class::Recovery => Some(&self.recovery),
            Class::Migration => Some(&self.migration),
        }
    }

    fn buffers(&self, bytes: u64) -> Result<OwnedSemaphorePermit, WireError> {
        if bytes > self.cfg.buffer_bytes_max as u64 {
            return Err(WireError::TooLarge);
        }
        // An empty permit for 0 bytes keeps the callers uniform.
        (self.buffers.clone())
            .try_acquire_many_owned(bytes as u32)
            .map_err(|_| WireError::Busy)
    }
}

impl Server {
    pub async fn bind(
        addr: SocketAddr,
        cfg: ServerConfig,
        backend: Arc<dyn DiskBackend>,
    ) -> io::Result<Server> {
        Server::serve(TcpListener::bind(addr).await?, cfg, backend)
    }

    /// Opens every disk's fence (replaying it) and starts accepting.
    pub fn serve(
        listener: TcpListener,
        cfg: ServerConfig,
        backend: Arc<dyn DiskBackend>,
    ) -> io::Result<Server> {
        let mut fences = HashMap::new();
        let mut disks = Vec::new();
        for d in backend.disks() {
            fences.insert(d.disk, Arc::new(Fence::open(&d.fence_dir)?));
            disks.push((d.disk, d.uuid));
        }
        let shared = Arc::new(Shared {
            buffers: Arc::new(Semaphore::new(cfg.buffer_bytes_max)),
            cfg,
            backend,
            fences,
            disks,
            recovery: Pacer::default(),
            migration: Pacer::default(),
            stopping: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            peers: tokio::sync::Mutex::new(HashMap::new()),
        });
        let addr = listener.local_addr()?;
        let accept = tokio::spawn(accept_loop(shared.clone(), listener)).abort_handle();
        Ok(Server {
            shared,
            addr,
            accept,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Caps `class`'s bytes (sent and received) per second; 0 lifts the cap. The client
    /// class is never paced.
    pub fn set_rate(&self, class: Class, bytes_per_s: u64) {
        if let Some(p) = self.shared.pacer(class) {
            p.set_rate(bytes_per_s);
        }
    }

    /// The fence of one disk (for its term and epochs).
    pub fn fence(&self, disk: u32) -> Option<Arc<Fence>> {
        self.shared.fences.get(&disk).cloned()
    }

    /// Stops accepting and drops every connection. Disk calls already on the blocking pool
    /// run to their end.
    pub fn shutdown(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.accept.abort();
        for h in self.shared.conns.lock().expect("conns lock").drain(..) {
            h.abort();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn accept_loop(sh: Arc<Shared>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and the like: wait for descriptors instead of spinning.
                tracing::warn!("extent service accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut conns = sh.conns.lock().expect("conns lock");
        conns.retain(|h| !h.is_finished());
        if conns.len() >= sh.cfg.connections_max {
            // Closed before the challenge: the client's connect fails and it retries.
            tracing::warn!("extent service: {} connections, refusing one", conns.len());
            continue;
        }
        conns.push(tokio::spawn(serve_conn(sh.clone(), stream)).abort_handle());
    }
}

async fn serve_conn(sh: Arc<Shared>, stream: TcpStream) {
    frame::tune_socket(&stream);
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(READ_BUFFER_BYTES, rd);
    let (tx, rx) = mpsc::channel(CONN_REQUESTS_MAX + 1);
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    let writer = AbortOnDrop(tokio::spawn(write_loop(sh.clone(), wr.clone(), rx)));
    let mut writer = writer;
    if hello(&sh, &mut rd, &tx).await {
        tokio::select! {
            () = read_loop(&sh, &mut rd, (&tx, &wr)) => {}
            // The writer failed (a caller that stopped reading) or closed: stop reading too.
            _ = &mut writer.0 => return,
        }
    }
    drop(tx);
    // The answers in hand still go out; the writer ends when the last sender is gone.
    let _ = (&mut writer.0).await;
}

async fn read_request(rd: &mut BufReader<OwnedReadHalf>) -> Inbound {
    let b = match frame::read_header_bytes(rd).await {
        Ok(Some(b)) => b,
        Ok(None) | Err(_) => return Inbound::Eof,
    };
    let h = match Header::decode(&b) {
        Ok(h) => h,
        Err((id, e)) => return Inbound::Refuse(id, e),
    };
    if h.kind != KIND_REQUEST || h.payload_len != 0 {
        let e = WireError::BadRequest(format!("frame kind {} where a request was due", h.kind));
        return Inbound::Refuse(h.request_id, e);
    }
    let Ok(meta) = frame::read_vec(rd, h.meta_len as usize).await else {
        return Inbound::Eof;
    };
    match frame::decode_meta::<Request>(&meta) {
        Ok(req) => Inbound::Req(h.request_id, req),
        Err(e) => Inbound::Refuse(h.request_id, e),
    }
}

/// Sends the challenge and checks the client's `Hello` against it; false closes.
async fn hello(sh: &Shared, rd: &mut BufReader<OwnedReadHalf>, tx: &mpsc::Sender<Out>) -> bool {
    let nonce: [u8; 32] = rand::random();
    let challenge = Challenge {
        proto: PROTO,
        nonce,
    };
    let mut out = Out::answer(0, &Response::Done);
    (out.kind, out.meta) = (KIND_CHALLENGE, frame::encode_meta(&challenge));
    if tx.send(out).await.is_err() {
        return false;
    }
    let (id, req) = match tokio::time::timeout(sh.cfg.stall_timeout, read_request(rd)).await {
        Ok(Inbound::Req(id, req)) => (id, req),
        Ok(Inbound::Refuse(id, e)) => {
            let _ = tx.send(Out::refuse(id, e).closing()).await;
            return false;
        }
        Ok(Inbound::Eof) | Err(_) => return false,
    };
    let answer = match req.op {
        Op::Hello {
            pool,
            host,
            proto,
            nonce: theirs,
            mac,
        } if proto == PROTO && pool == sh.cfg.pool => {
            let want = hello_mac(&sh.cfg.secret, &nonce, &theirs, &pool, &host);
            macs_equal(&mac, &want).then(|| Response::HelloOk {
                host: sh.cfg.host.clone(),
                disks: sh.disks.clone(),
                mac: server_mac(&sh.cfg.secret, &nonce, &theirs, &sh.cfg.host),
                incarnation: sh.cfg.incarnation,
            })
        }
        _ => None,
    };
    let ok = answer.is_some();
    let refused = || Response::Err(WireError::BadRequest("hello refused".into()));
    let out = Out::answer(id, &answer.unwrap_or_else(refused));
    let sent = tx.send(if ok { out } else { out.closing() }).await;
    ok && sent.is_ok()
}

async fn read_loop(
    sh: &Arc<Shared>,
    rd: &mut BufReader<OwnedReadHalf>,
    (tx, wr): (&mpsc::Sender<Out>, &Writer),
) {
    let slots = Arc::new(Semaphore::new(CONN_REQUESTS_MAX));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (id, req) = match read_request(rd).await {
            Inbound::Eof => return,
            Inbound::Refuse(id, e) => {
                let _ = tx.send(Out::refuse(id, e).closing()).await;
                return;
            }
            Inbound::Req(id, req) => (id, req),
        };
        let payload = match &req.op {
            Op::Write { .. } => match receive_write(sh, rd, id, &req).await {
                Received::Bytes(buf, permit) => Some((buf, permit)),
                Received::Answer(e) => {
                    let mut out = Out::refuse(id, e);
                    out._hold.push(slot);
                    let _ = tx.send(out).await;
                    continue;
                }
                Received::Close(e) => {
                    let _ = tx.send(Out::refuse(id, e).closing()).await;
                    return;
                }
            },
            _ => None,
        };
        if sh.stopping.load(Ordering::SeqCst) {
            let _ = tx
                .send(Out::refuse(id, WireError::ShuttingDown).closing())
                .await;
            return;
        }
        let Some((req, slot)) = direct_read(sh, id, req, slot, (tx, wr)) else {
            continue;
        };
        tokio::spawn(handle(sh.clone(), id, req, payload, slot, tx.clone()));
    }
}

/// Reads the next data chunk's header of request `id` (at most `left` bytes); Err closes.
async fn chunk_header(
    rd: &mut BufReader<OwnedReadHalf>,
    id: u64,
    left: u64,
    stall: Duration,
) -> Result<Header, WireError> {
    let b = match within(stall, frame::read_header_bytes(rd)).await {
        Ok(Some(b)) => b,
        Ok(None) => return Err(WireError::BadRequest("end of stream in a write".into())),
        Err(e) => return Err(WireError::from_transport(&e)),
    };
    let h = Header::decode(&b).map_err(|(_, e)| e)?;
    if h.kind != KIND_DATA || h.request_id != id || h.meta_len != 0 {
        return Err(WireError::BadRequest("a write's chunk was due".into()));
    }
    if h.payload_len as u64 > left || h.payload_len == 0 {
        return Err(WireError::BadRequest(
            "chunks do not add up to the length".into(),
        ));
    }
    Ok(h)
}

/// Reads and drops a refused write's chunks, so the connection stays in step.
async fn drain_write(
    rd: &mut BufReader<OwnedReadHalf>,
    id: u64,
    len: u64,
    stall: Duration,
    refusal: WireError,
) -> Received {
    let mut left = len;
    while left > 0 {
        let h = match chunk_header(rd, id, left, stall).await {
            Ok(h) => h,
            Err(e) => return Received::Close(e),
        };
        if within(stall, frame::skip(rd, h.payload_len as u64))
            .await
            .is_err()
        {
            return Received::Close(WireError::timed_out());
        }
        left -= h.payload_len as u64;
    }
    Received::Answer(refusal)
}

/// Verifies the blocks of `buf` from `*verified` on that are whole (or the last one, once
/// all `len` bytes are in); the first bad one is the answer.
fn verify_whole(
    buf: &[u8],
    len: u64,
    block_bytes: u32,
    sums: &[Sum],
    verified: &mut usize,
) -> Result<(), WireError> {
    let bs = block_bytes as usize;
    while *verified < buf.len() && (*verified + bs <= buf.len() || buf.len() as u64 == len) {
        let end = (*verified + bs).min(buf.len());
        let block = *verified / bs;
        verify_blocks(
            &buf[*verified..end],
            block_bytes,
            &sums[block..][..1],
            block as u64,
        )?;
        *verified = end;
    }
    Ok(())
}

/// Appends a chunk of `n` bytes to `buf`; a paced class's in pieces that each wait for their
/// slot, so even at a low rate bytes keep moving within the sender's stall time-out.
async fn take_paced(
    pacer: Option<&Pacer>,
    rd: &mut BufReader<OwnedReadHalf>,
    buf: &mut Vec<u8>,
    n: u32,
    stall: Duration,
) -> io::Result<()> {
    let n = n as usize;
    let piece = pacer.map_or(n, Pacer::chunk_bytes);
    let mut got = 0;
    while got < n {
        let k = piece.min(n - got);
        if let Some(p) = pacer {
            p.take(k as u64).await;
        }
        within(stall, frame::read_append(rd, buf, k)).await?;
        got += k;
    }
    Ok(())
}

/// Takes a write's `len` bytes in chunks, verifying each block as soon as it is whole. A
/// refused write (bad sums, fenced, no buffers) still has its chunks read and dropped.
async fn receive_write(
    sh: &Shared,
    rd: &mut BufReader<OwnedReadHalf>,
    id: u64,
    req: &Request,
) -> Received {
    let Op::Write {
        disk,
        shard,
        epoch,
        len,
        block_bytes,
        ref sums,
        ..
    } = req.op
    else {
        unreachable!("receive_write takes writes")
    };
    let stall = sh.cfg.stall_timeout;
    if len > sh.cfg.buffer_bytes_max as u64 {
        // Dropped as it comes (no buffer), so the caller reads the answer, not a reset.
        return drain_write(rd, id, len, stall, WireError::TooLarge).await;
    }
    let admitted = check_blocks(len, block_bytes, sums.len())
        .and_then(|()| sh.check_logged(disk, req.term, (shard, epoch)))
        .and_then(|()| sh.buffers(len));
    let (mut buf, permit) = match admitted {
        Ok(p) => (Vec::with_capacity(len as usize), p),
        Err(refusal) => return drain_write(rd, id, len, stall, refusal).await,
    };
    let (mut verified, mut verdict) = (0usize, Ok(()));
    while (buf.len() as u64) < len {
        let h = match chunk_header(rd, id, len - buf.len() as u64, stall).await {
            Ok(h) => h,
            Err(e) => return Received::Close(e),
        };
        if let Err(e) = take_paced(sh.pacer(req.class), rd, &mut buf, h.payload_len, stall).await {
            return Received::Close(WireError::from_transport(&e));
        }
        if verdict.is_ok() {
            verdict = verify_whole(&buf, len, block_bytes, sums, &mut verified);
        }
    }
    match verdict {
        Err(e) => Received::Answer(e),
        Ok(()) => Received::Bytes(buf, permit),
    }
}

type Served = (Response, Vec<u8>, Option<OwnedSemaphorePermit>);

async fn handle(
    sh: Arc<Shared>,
    id: u64,
    req: Request,
    payload: Option<(Vec<u8>, OwnedSemaphorePermit)>,
    slot: OwnedSemaphorePermit,
    tx: mpsc::Sender<Out>,
) {
    let class = req.class;
    let (resp, data, permit) = serve(&sh, req, payload)
        .await
        .unwrap_or_else(|e| (Response::Err(e), Vec::new(), None));
    let mut out = Out::answer(id, &resp);
    out.payload = data;
    out.class = class;
    out._hold.push(slot);
    out._hold.extend(permit);
    let _ = tx.send(out).await;
}

async fn serve(
    sh: &Shared,
    req: Request,
    payload: Option<(Vec<u8>, OwnedSemaphorePermit)>,
) -> Result<Served, WireError> {
    let term = req.term;
    if req.incarnation != 0 && req.incarnation != sh.cfg.incarnation {
        return Err(WireError::Restarted);
    }
    match req.op {
        Op::Hello { .. } => Err(WireError::BadRequest("hello twice".into())),
        Op::Write {
            disk,
            id,
            shard,
            epoch,
            ..
        } => {
            let (fence, be) = (sh.fence(disk)?, sh.backend.clone());
            let audit = sh.cfg.audit.clone();
            let (buf, permit) = payload.expect("a write comes with its bytes");
            blocking(move || {
                let audit = audit.as_deref();
                let _seen =
                    Shared::admit_logged(audit, &fence, ("write", disk, term), (shard, epoch))?;
                (be.write_extent(disk, id, &buf)).map_err(|e| WireError::from_disk(&e))?;
                drop(permit);
                Ok((Response::Done, Vec::new(), None))
            })
            .await
        }
        op @ Op::Read { .. } => serve_read(sh, Read::of(term, op).expect("a read")).await,
        op @ Op::CopyFrom { .. } => serve_copy(sh, term, op).await,
        Op::Connect { srcs } => serve_connect(sh, srcs).await,
        op => serve_small(sh, term, op).await,
    }
}

/// Connect: makes (or keeps) the connections to the hosts recovery would pull from, one
/// after the other (each within the connect time-out); one that does not answer is
/// skipped, and its copies connect when they need it.
async fn serve_connect(sh: &Shared, srcs: Vec<String>) -> Result<Served, WireError> {
    if srcs.len() > super::CONNECT_SOURCES_MAX {
        return Err(WireError::BadRequest(format!("{} addresses", srcs.len())));
    }
    let mut count = 0;
    for a in srcs.iter().collect::<std::collections::BTreeSet<_>>() {
        match sh.peer(a).await {
            Ok(_) => count += 1,
            Err(e) => tracing::debug!("recovery source {a} not connected: {e}"),
        }
    }
    Ok((Response::Connected { count }, Vec::new(), None))
}

/// CopyFrom: pulls the extent from its source host (checked there and here against the
/// metadata host's sums), then stages it under the fence.
async fn serve_copy(sh: &Shared, term: u64, op: Op) -> Result<Served, WireError> {
    let Op::CopyFrom {
        src,
        src_disk,
        src_incarnation,
        dst_disk,
        id,
        len,
        block_bytes,
        sums,
        shard,
        epoch,
        tag,
    } = op
    else {
        unreachable!("serve matched it");
    };
    check_blocks(len, block_bytes, sums.len())?;
    // Refused before any byte moves when the fence already knows better.
    sh.check_logged(dst_disk, term, (shard, epoch))?;
    let peer = sh.peer(&src).await?;
    let ctx = super::Ctx {
        incarnation: src_incarnation,
        ..super::Ctx::new(term, Class::Recovery)
    };
    let read = super::ReadReq::covering(src_disk, id, (0, len), block_bytes, &sums);
    let data = peer.read(ctx, &read).await?;
    let (fence, be) = (sh.fence(dst_disk)?, sh.backend.clone());
    let audit = sh.cfg.audit.clone();
    blocking(move || {
        let _seen = Shared::admit_logged(
            audit.as_deref(),
            &fence,
            ("stage", dst_disk, term),
            (shard, epoch),
        )?;
        be.stage(dst_disk, id, tag, &data)
            .map_err(|e| WireError::from_disk(&e))?;
        Ok((Response::Done, Vec::new(), None))
    })
    .await
}

/// Sync, Remove, Scan, RemoveTemps, Probe and Space: no bytes either way.
async fn serve_small(sh: &Shared, term: u64, op: Op) -> Result<Served, WireError> {
    let (disk, mutation) = match op {
        Op::Sync { disk, .. }
        | Op::Probe { disk }
        | Op::Space { disk }
        | Op::Scan { disk, .. }
        | Op::RemoveTemps { disk }
        | Op::Discard { disk, .. } => (disk, None),
        Op::Remove {
            disk, shard_epoch, ..
        } => (disk, shard_epoch.map(|se| ("remove", se))),
        Op::Install {
            disk, shard, epoch, ..
        } => (disk, Some(("install", (shard, epoch)))),
        _ => unreachable!("serve takes the others"),
    };
    let (fence, be) = (sh.fence(disk)?, sh.backend.clone());
    let audit = sh.cfg.audit.clone();
    blocking(move || {
        let _seen = match mutation {
            Some((what, se)) => {
                Shared::admit_logged(audit.as_deref(), &fence, (what, disk, term), se)?
            }
            None => fence.admit(term, None)?,
        };
        let disk_err = |e: io::Error| WireError::from_disk(&e);
        let resp = match op {
            Op::Sync { ids, .. } => Response::Synced {
                failed: be.sync(disk, &ids).map_err(disk_err)?,
            },
            Op::Remove { id, .. } => be
                .remove(disk, id)
                .map(|()| Response::Done)
                .map_err(disk_err)?,
            Op::Scan { after, limit, .. } => {
                let limit = limit.clamp(1, SCAN_PAGE_MAX) as usize;
                let (extents, more) = be.scan(disk, after, limit).map_err(disk_err)?;
                Response::Listing { extents, more }
            }
            Op::RemoveTemps { .. } => Response::Removed {
                count: be.remove_temps(disk).map_err(disk_err)?,
            },
            Op::Install { id, tag, .. } => be
                .install(disk, id, tag)
                .map(|()| Response::Done)
                .map_err(disk_err)?,
            Op::Discard { id, tag, .. } => be
                .discard(disk, id, tag)
                .map(|()| Response::Done)
                .map_err(disk_err)?,
            Op::Probe { .. } => {
                let t = Instant::now();
                be.probe(disk).map_err(disk_err)?;
                Response::ProbeOk {
                    us: t.elapsed().as_micros() as u64,
                }
            }
            _ => {
                let s = be.space(disk).map_err(disk_err)?;
                Response::SpaceOk {
                    total_bytes: s.total_bytes,
                    free_bytes: s.free_bytes,
                }
            }
        };
        Ok((resp, Vec::new(), None))
    })
    .await
}

struct Read {
    term: u64,
    disk: u32,
    id: super::msg::ExtentId,
    offset: u64,
    len: u64,
    block_bytes: u32,
    sums: Vec<super::msg::Sum>,
}

impl Read {
    /// The read `op` asks for under `term`; None for any other op.
    fn of(term: u64, op: Op) -> Option<Read> {
        let Op::Read {
            disk,
            id,
            offset,
            len,
            block_bytes,
            sums,
        } = op
        else {
            return None;
        };
        Some(Read {
            term,
            disk,
            id,
            offset,
            len,
            block_bytes,
            sums,
        })
    }
}

/// Reads the whole blocks `offset..offset + len` covers and verifies them before sending.
async fn serve_read(sh: &Shared, r: Read) -> Result<Served, WireError> {
    let (span, permit) = read_admit(sh, &r)?;
    let (fence, be) = (sh.fence(r.disk)?, sh.backend.clone());
    let data = blocking(move || read_blocks(&fence, &*be, &r)).await?;
    debug_assert!(data.len() as u64 <= span);
    Ok((
        Response::Data {
            len: data.len() as u64,
        },
        data,
        Some(permit),
    ))
}

/// The blocks `first..end` of `block_bytes` (as u64, at least 1) that `offset..offset + len`
/// covers.
fn blocks_of(offset: u64, len: u64, block_bytes: u32) -> (u64, u64, u64) {
    let bs = block_bytes.max(1) as u64;
    (offset / bs, offset.saturating_add(len).div_ceil(bs), bs)
}

/// A read's checks before any disk work: its whole blocks' bytes and the buffers for them.
fn read_admit(sh: &Shared, r: &Read) -> Result<(u64, OwnedSemaphorePermit), WireError> {
    if r.len == 0 {
        return Err(WireError::BadRequest("empty read".into()));
    }
    let (first, end, bs) = blocks_of(r.offset, r.len, r.block_bytes);
    let span = (end - first) * bs;
    check_blocks(span, r.block_bytes, r.sums.len())?;
    Ok((span, sh.buffers(span)?))
}

/// On a blocking thread: the fence, then the blocks from the disk, verified.
fn read_blocks(fence: &Fence, be: &dyn DiskBackend, r: &Read) -> Result<Vec<u8>, WireError> {
    let (first, end, bs) = blocks_of(r.offset, r.len, r.block_bytes);
    let _seen = fence.admit(r.term, None)?;
    let data = (be.read(r.disk, r.id, first * bs, (end - first) * bs))
        .map_err(|e| WireError::from_disk(&e))?;
    if (data.len() as u64) < r.offset.saturating_add(r.len) - first * bs {
        return Err(WireError::BadRequest("read past the extent's end".into()));
    }
    verify_blocks(&data, r.block_bytes, &r.sums, first)?;
    Ok(data)
}

/// A connection's write half: the writer task's, and a direct read's while it answers.
type Writer = Arc<tokio::sync::Mutex<OwnedWriteHalf>>;

async fn write_loop(sh: Arc<Shared>, wr: Writer, mut rx: mpsc::Receiver<Out>) {
    while let Some(out) = rx.recv().await {
        let mut w = wr.lock().await;
        if send_out(&sh, &mut w, &out).await.is_err() || out.close {
            break;
        }
    }
    let _ = wr.lock().await.shutdown().await;
}

/// Client reads up to this size are answered from the blocking thread that read them.
const DIRECT_READ_BYTES_MAX: u64 = 64 << 10;

/// A small client read, answered by the blocking thread that reads it: it writes its own
/// answer, so neither a worker nor the writer task is woken for it (on 2 CPUs those
/// wake-ups were most of a small read's time on the server: docs/benchmarks.md, "Small
/// remote reads"). Anything else comes back to go through `handle`.
fn direct_read(
    sh: &Arc<Shared>,
    id: u64,
    req: Request,
    slot: OwnedSemaphorePermit,
    (tx, wr): (&mpsc::Sender<Out>, &Writer),
) -> Option<(Request, OwnedSemaphorePermit)> {
    let small = match &req.op {
        Op::Read {
            offset,
            len,
            block_bytes,
            ..
        } => {
            let (first, end, bs) = blocks_of(*offset, *len, *block_bytes);
            (end - first) * bs <= DIRECT_READ_BYTES_MAX
        }
        _ => false,
    };
    let current = req.incarnation == 0 || req.incarnation == sh.cfg.incarnation;
    if !small || req.class != Class::Client || !current {
        return Some((req, slot));
    }
    let r = Read::of(req.term, req.op).expect("matched above");
    let (sh, tx, wr) = (sh.clone(), tx.clone(), wr.clone());
    let rt = tokio::runtime::Handle::current();
    // Not awaited: the thread answers, and nothing waits on its end.
    drop(tokio::task::spawn_blocking(move || {
        let mut out = read_out(&sh, id, &r);
        out._hold.push(slot);
        let mut w = wr.blocking_lock();
        if rt.block_on(send_out(&sh, &mut w, &out)).is_err() {
            drop(w);
            // Broken or out of step: the writer task closes the connection.
            let _ = tx.try_send(Out::refuse(id, WireError::ShuttingDown).closing());
        }
    }));
    None
}

/// On a blocking thread: the answer to read `id`, its data and buffer permit in it.
fn read_out(sh: &Shared, id: u64, r: &Read) -> Out {
    let served = read_admit(sh, r).and_then(|(_, permit)| {
        let data = read_blocks(&*sh.fence(r.disk)?, &*sh.backend, r)?;
        Ok((data, permit))
    });
    match served {
        Ok((data, permit)) => {
            let len = data.len() as u64;
            let mut out = Out::answer(id, &Response::Data { len });
            out.payload = data;
            out._hold.push(permit);
            out
        }
        Err(e) => Out::refuse(id, e),
    }
}

async fn send_out(sh: &Shared, wr: &mut OwnedWriteHalf, out: &Out) -> io::Result<()> {
    let stall = sh.cfg.stall_timeout;
    // The answer's frame goes out with the first data chunk's: one write, one segment, for
    // a small read's whole answer.
    let mut head = Vec::with_capacity(2 * frame::HEADER_BYTES + out.meta.len());
    frame::push_head(
        &mut head,
        Header::new(out.kind, out.id, 0, 0),
        &out.meta,
        0,
        false,
    );
    let pacer = sh.pacer(out.class);
    let chunk = pacer.map_or(frame::PAYLOAD_BYTES_MAX as usize, Pacer::chunk_bytes);
    let n = out.payload.len().div_ceil(chunk);
    let mut flipped;
    for (i, mut c) in out.payload.chunks(chunk).enumerate() {
        if let Some(p) = pacer {
            p.take(c.len() as u64).await;
        }
        if sh.cfg.test_corrupt_sent && i == 0 {
            flipped = c.to_vec();
            flipped[0] ^= 1;
            c = &flipped;
        }
        let h = Header::new(KIND_DATA, out.id, 0, 0);
        frame::push_head(&mut head, h, &[], c.len(), i + 1 == n);
        within(stall, frame::write_parts(wr, &head, c)).await?;
        head.clear();
    }
    if !head.is_empty() {
        within(stall, frame::write_parts(wr, &head, &[])).await?;
    }
    Ok(())
}
