//! A pacer per rate-capped class: each chunk takes the next `len / rate` slot of time and
//! waits for its start, so over any window the bytes are at most rate x window + one chunk.
//! No credit builds up while idle (no burst after a quiet spell).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::frame::PAYLOAD_BYTES_MAX;

/// Chunks of a paced stream take about this long each, so a low rate never leaves a
/// connection without a byte moving for long.
const PACED_CHUNK_TIME_S_INV: u64 = 20;
const PACED_CHUNK_BYTES_MIN: u64 = 16 << 10;

#[derive(Default)]
pub struct Pacer {
    /// 0: unlimited.
    bytes_per_s: AtomicU64,
    next: Mutex<Option<Instant>>,
}

impl Pacer {
    pub fn set_rate(&self, bytes_per_s: u64) {
        self.bytes_per_s.store(bytes_per_s, Ordering::Relaxed);
    }

    pub fn rate(&self) -> u64 {
        self.bytes_per_s.load(Ordering::Relaxed)
    }

    /// The chunk size to send a paced stream in.
    pub fn chunk_bytes(&self) -> usize {
        match self.rate() {
            0 => PAYLOAD_BYTES_MAX as usize,
            r => {
                (r / PACED_CHUNK_TIME_S_INV).clamp(PACED_CHUNK_BYTES_MIN, PAYLOAD_BYTES_MAX as u64)
                    as usize
            }
        }
    }

    /// Waits until `bytes` may move.
    pub async fn take(&self, bytes: u64) {
        let rate = self.rate();
        if rate == 0 {
            return;
        }
        let start = {
            let mut next = self.next.lock().expect("pacer lock");
            let now = Instant::now();
            let start = next.map_or(now, |n| n.max(now));
            *next = Some(start + Duration::from_secs_f64(bytes as f64 / rate as f64));
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn holds_the_rate() {
        let p = Pacer::default();
        p.set_rate(10 << 20);
        let t = Instant::now();
        for _ in 0..11 {
            p.take(256 << 10).await;
        }
        // 10 chunks' slots have passed before the 11th starts: 2.5 MiB at 10 MiB/s.
        let s = t.elapsed().as_secs_f64();
        assert!((0.24..0.35).contains(&s), "{s} s");
        p.set_rate(0);
        let t = Instant::now();
        p.take(1 << 30).await;
        assert!(t.elapsed() < Duration::from_millis(50));
    }
}
