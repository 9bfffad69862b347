//! Frames: a 24-byte header (`magic "FSX1", kind u8, flags u8, reserved u16, request_id u64,
//! meta_len u32, payload_len u32`, little-endian), `meta_len` bytes of postcard, then
//! `payload_len` raw bytes. Both lengths are checked by [`Header::decode`], before a reader
//! allocates anything for them.

use std::io::{self, IoSlice};

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::msg::WireError;

pub const MAGIC: [u8; 4] = *b"FSX1";
pub const HEADER_BYTES: usize = 24;
/// A 64 MiB extent's 4,096 block sums at 32 B are 128 KiB; the rest is slack.
pub const META_BYTES_MAX: u32 = 256 << 10;
/// One chunk; a larger extent is several chunks under one request id.
pub const PAYLOAD_BYTES_MAX: u32 = 1 << 20;

/// Server to client, first on every connection: `msg::Challenge`.
pub const KIND_CHALLENGE: u8 = 1;
/// Client to server: `msg::Request`, no payload.
pub const KIND_REQUEST: u8 = 2;
/// Either way: one chunk of a write's or a read's bytes, no meta.
pub const KIND_DATA: u8 = 3;
/// Server to client: `msg::Response`, no payload.
pub const KIND_RESPONSE: u8 = 4;
/// On the last data chunk of a request (for debugging; lengths come from the meta).
pub const FLAG_LAST: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub flags: u8,
    pub request_id: u64,
    pub meta_len: u32,
    pub payload_len: u32,
}

impl Header {
    pub fn new(kind: u8, request_id: u64, meta_len: usize, payload_len: usize) -> Header {
        Header {
            kind,
            flags: 0,
            request_id,
            meta_len: meta_len as u32,
            payload_len: payload_len as u32,
        }
    }

    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = self.kind;
        b[5] = self.flags;
        b[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        b[16..20].copy_from_slice(&self.meta_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.payload_len.to_le_bytes());
        b
    }

    /// The header, or the request id (for the error answer) and why it is refused.
    pub fn decode(b: &[u8; HEADER_BYTES]) -> Result<Header, (u64, WireError)> {
        let request_id = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
        if b[0..4] != MAGIC {
            return Err((request_id, WireError::BadRequest("bad magic".into())));
        }
        let h = Header {
            kind: b[4],
            flags: b[5],
            request_id,
            meta_len: u32::from_le_bytes(b[16..20].try_into().expect("4 bytes")),
            payload_len: u32::from_le_bytes(b[20..24].try_into().expect("4 bytes")),
        };
        if h.meta_len > META_BYTES_MAX || h.payload_len > PAYLOAD_BYTES_MAX {
            return Err((request_id, WireError::TooLarge));
        }
        Ok(h)
    }
}

/// TCP_NODELAY (a request's small frames go at once) and SO_KEEPALIVE (a peer that vanished
/// without a reset is noticed on an idle connection too). The buffer sizes stay with the
/// kernel's autotuning, which setting them would turn off.
pub fn tune_socket(s: &tokio::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let _ = s.set_nodelay(true);
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a c_int option of the size passed.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

pub fn encode_meta<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("postcard encodes every message type")
}

pub fn decode_meta<T: DeserializeOwned>(b: &[u8]) -> Result<T, WireError> {
    postcard::from_bytes(b).map_err(|e| WireError::BadRequest(format!("meta: {e}")))
}

/// Writes one frame: header and meta in one buffer, the payload straight from the caller's
/// slice (no copy), both in vectored writes.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    header: Header,
    meta: &[u8],
    payload: &[u8],
    last: bool,
) -> io::Result<()> {
    let mut head = Vec::with_capacity(HEADER_BYTES + meta.len());
    push_head(&mut head, header, meta, payload.len(), last);
    write_parts(w, &head, payload).await
}

/// Appends a frame's header and meta to `buf` (its payload of `payload_len` follows).
pub fn push_head(
    buf: &mut Vec<u8>,
    mut header: Header,
    meta: &[u8],
    payload_len: usize,
    last: bool,
) {
    header.meta_len = meta.len() as u32;
    header.payload_len = payload_len as u32;
    if last {
        header.flags |= FLAG_LAST;
    }
    buf.extend_from_slice(&header.encode());
    buf.extend_from_slice(meta);
}

/// Writes `head` then `payload` (no copy of it), in vectored writes.
pub async fn write_parts<W: AsyncWrite + Unpin>(
    w: &mut W,
    head: &[u8],
    payload: &[u8],
) -> io::Result<()> {
    let (mut a, mut b) = (head, payload);
    while !a.is_empty() {
        let n = w
            .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n < a.len() {
            a = &a[n..];
        } else {
            b = &b[n - a.len()..];
            a = &[];
        }
    }
    w.write_all(b).await
}

/// Reads 24 bytes; `Ok(None)` on a clean end of stream before the first byte.
pub async fn read_header_bytes<R: AsyncRead + Unpin>(
    r: &mut R,
) -> io::Result<Option<[u8; HEADER_BYTES]>> {
    let mut b = [0u8; HEADER_BYTES];
    let mut got = 0;
    while got < HEADER_BYTES {
        let n = r.read(&mut b[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    Ok(Some(b))
}

/// Reads `n` bytes (already checked against a limit) into a new buffer.
pub async fn read_vec<R: AsyncRead + Unpin>(r: &mut R, n: usize) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; n];
    r.read_exact(&mut v).await?;
    Ok(v)
}

/// Appends exactly `n` bytes to `buf`, read straight into its spare room (no zeroing first:
/// at 1 MiB chunks that was a tenth of a receive's time).
pub async fn read_append<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    n: usize,
) -> io::Result<()> {
    buf.reserve(n);
    let mut limited = r.take(n as u64);
    while limited.limit() > 0 {
        if limited.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// Reads and drops `n` bytes through a small buffer (keeps a connection in step after a
/// refused write without holding its bytes).
pub async fn skip<R: AsyncRead + Unpin>(r: &mut R, mut n: u64) -> io::Result<()> {
    let mut scratch = [0u8; 16 << 10];
    while n > 0 {
        let want = scratch.len().min(n as usize);
        r.read_exact(&mut scratch[..want]).await?;
        n -= want as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_limits() {
        let h = Header::new(KIND_DATA, 7, 12, 4096);
        assert_eq!(Header::decode(&h.encode()), Ok(h));
        let mut big = h;
        big.meta_len = META_BYTES_MAX + 1;
        assert_eq!(Header::decode(&big.encode()), Err((7, WireError::TooLarge)));
        big = h;
        big.payload_len = PAYLOAD_BYTES_MAX + 1;
        assert_eq!(Header::decode(&big.encode()), Err((7, WireError::TooLarge)));
        let mut b = h.encode();
        b[0] = b'X';
        assert!(matches!(
            Header::decode(&b),
            Err((7, WireError::BadRequest(_)))
        ));
    }

    #[tokio::test]
    async fn vectored_frame_reads_back() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let payload: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let p2 = payload.clone();
        let w = tokio::spawn(async move {
            write_frame(&mut a, Header::new(KIND_DATA, 3, 0, 0), b"meta", &p2, true).await
        });
        let hb = read_header_bytes(&mut b).await.unwrap().unwrap();
        let h = Header::decode(&hb).unwrap();
        assert_eq!((h.meta_len, h.payload_len, h.flags), (4, 10_000, FLAG_LAST));
        assert_eq!(read_vec(&mut b, 4).await.unwrap(), b"meta");
        assert_eq!(read_vec(&mut b, 10_000).await.unwrap(), payload);
        w.await.unwrap().unwrap();
    }
}
