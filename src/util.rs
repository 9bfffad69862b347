//! Small helpers every layer may use; imports nothing from the crate.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Microseconds on a monotonic clock (since its first use in this process).
pub fn mono_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Bytes for people: "512 B", "1.5 MiB" (binary units, one decimal).
pub fn fmt_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_are_formatted_in_binary_units() {
        assert_eq!(super::fmt_bytes(0), "0 B");
        assert_eq!(super::fmt_bytes(1023), "1023 B");
        assert_eq!(super::fmt_bytes(1536), "1.5 KiB");
        assert_eq!(super::fmt_bytes(3 << 30), "3.0 GiB");
        assert_eq!(super::fmt_bytes(u64::MAX), "16777216.0 TiB");
    }
}
