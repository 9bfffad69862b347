//! Small helpers every layer may use (clock, units and their parsing and formatting);
//! imports nothing from the crate.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};

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

/// Parses sizes like `1MiB`, `64k`, `1048576`.
pub fn parse_size(s: &str) -> anyhow::Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().with_context(|| format!("bad size {s:?}"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => bail!("bad size unit in {s:?} (use KiB, MiB or GiB)"),
    };
    n.checked_mul(mult)
        .with_context(|| format!("size {s:?} too large"))
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

    #[test]
    fn sizes_parse() {
        assert_eq!(super::parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(super::parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(super::parse_size("4096").unwrap(), 4096);
        assert!(super::parse_size("1XB").is_err());
        assert!(super::parse_size("").is_err());
    }
}
