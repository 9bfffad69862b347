//! The recovery bandwidth limiter (after mClock: limit, reservation, weight).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::RecoveryOptions;
use crate::fs::Fs;

/// Paces recovery reads, after mClock: a limit (`rate_bytes_max`), a reservation recovery
/// always gets, and while clients do I/O a weight: recovery takes `share` of the bandwidth in
/// use (clients' measured rate x share / (1 - share)), or `share` of its own unloaded rate if
/// that is more.
pub(super) struct Limiter {
    rate_max: u64,
    reservation: u64,
    share: f64,
    st: Mutex<LimState>,
}

struct LimState {
    /// Bytes recovery may read now (token bucket, at most `LIMITER_BURST` worth).
    tokens: f64,
    refilled: Instant,
    fg_bytes: u64,
    window_start: Instant,
    window_bytes: u64,
    /// Clients' rate (smoothed over windows) and recovery's rate while clients were idle.
    fg_rate: f64,
    unloaded_rate: f64,
}

/// Measurement window of client and recovery rates.
const LIMITER_WINDOW: Duration = Duration::from_millis(100);
/// A window longer than this spans time with no recovery running (the limiter is only
/// asked while recovery copies): client bytes in it, e.g. files written long before the
/// failure, are no measure of the clients now, so it starts a new window instead.
const LIMITER_WINDOW_STALE: Duration = Duration::from_millis(300);
/// Longest a waiting agent sleeps before the allowed rate is looked at again.
const LIMITER_RECHECK: Duration = Duration::from_millis(10);
/// Burst recovery may take at once (seconds of the allowed rate).
const LIMITER_BURST_S: f64 = 0.05;

impl Limiter {
    pub(super) fn new(opts: &RecoveryOptions) -> Limiter {
        let now = Instant::now();
        Limiter {
            rate_max: opts.rate_bytes_max,
            reservation: opts.reservation_bytes_per_s,
            share: opts.profile.recovery_share(),
            st: Mutex::new(LimState {
                tokens: 0.0,
                refilled: now,
                fg_bytes: 0,
                window_start: now,
                window_bytes: 0,
                fg_rate: 0.0,
                unloaded_rate: 0.0,
            }),
        }
    }

    /// Recovery bytes/s allowed with clients at `fg_rate` (infinite: no pacing).
    pub(super) fn allowed(&self, fg_rate: f64, unloaded_rate: f64) -> f64 {
        let limit = if self.rate_max > 0 {
            self.rate_max as f64
        } else {
            f64::INFINITY
        };
        if fg_rate <= 0.0 {
            return limit;
        }
        let by_weight = fg_rate * self.share / (1.0 - self.share);
        let by_unloaded = self.share * unloaded_rate;
        limit.min(by_weight.max(by_unloaded).max(self.reservation as f64))
    }

    /// Clients' rate as last measured (bytes/s).
    #[cfg(test)]
    pub(super) fn client_rate(&self) -> f64 {
        self.st.lock().fg_rate
    }

    /// Waits until recovery may read `bytes`; the allowed rate is re-evaluated while waiting,
    /// so a rate that rises (clients went idle) takes effect at once and no debt piles up.
    pub(super) fn acquire(&self, fs: &Fs, bytes: u64) {
        loop {
            let wait = {
                let mut st = self.st.lock();
                let now = Instant::now();
                let w = now.duration_since(st.window_start);
                let fg = fs.stats.bytes_read.load(Ordering::Relaxed)
                    + fs.stats.bytes_written.load(Ordering::Relaxed);
                if w >= LIMITER_WINDOW_STALE {
                    st.fg_rate = 0.0;
                    st.fg_bytes = fg;
                    st.window_start = now;
                    st.window_bytes = 0;
                } else if w >= LIMITER_WINDOW {
                    let secs = w.as_secs_f64();
                    let r = fg.saturating_sub(st.fg_bytes) as f64 / secs;
                    // Smoothed, so one quiet window does not swing the allowance.
                    st.fg_rate = if r == 0.0 {
                        0.0
                    } else {
                        0.5 * st.fg_rate + 0.5 * r
                    };
                    st.fg_bytes = fg;
                    if r == 0.0 {
                        let rr = st.window_bytes as f64 / secs;
                        st.unloaded_rate = st.unloaded_rate.max(rr);
                    }
                    st.window_start = now;
                    st.window_bytes = 0;
                }
                let rate = self.allowed(st.fg_rate, st.unloaded_rate);
                if !rate.is_finite() {
                    st.window_bytes += bytes;
                    st.tokens = 0.0;
                    st.refilled = now;
                    return;
                }
                let dt = now.duration_since(st.refilled).as_secs_f64();
                st.refilled = now;
                let cap = (rate * LIMITER_BURST_S).max(bytes as f64);
                st.tokens = (st.tokens + dt * rate).min(cap);
                if st.tokens >= bytes as f64 {
                    st.tokens -= bytes as f64;
                    st.window_bytes += bytes;
                    return;
                }
                Duration::from_secs_f64((bytes as f64 - st.tokens) / rate).min(LIMITER_RECHECK)
            };
            std::thread::sleep(wait);
        }
    }
}
