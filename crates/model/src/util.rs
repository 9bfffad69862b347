//! Small helpers every layer may use (clock, units and their parsing and formatting);
//! imports nothing from the crate.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// (total bytes, available bytes, inodes, free inodes) of the filesystem holding `p`.
pub fn statvfs(p: &std::path::Path) -> std::io::Result<(u64, u64, u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and s a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let f = s.f_frsize;
    Ok((s.f_blocks * f, s.f_bavail * f, s.f_files, s.f_ffree))
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

/// Parses durations like `250ms`, `10s`, `5m`, `1h`; a bare number is in `bare` units (so
/// `--probe-interval-ms 250` keeps meaning 250 ms).
pub fn parse_duration(s: &str, bare: Duration) -> anyhow::Result<Duration> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().with_context(|| format!("bad duration {s:?}"))?;
    let unit = match unit.trim().to_ascii_lowercase().as_str() {
        "" => bare,
        "ms" => Duration::from_millis(1),
        "s" => Duration::from_secs(1),
        "m" | "min" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => bail!("bad duration unit in {s:?} (use ms, s, m or h)"),
    };
    u32::try_from(n)
        .ok()
        .and_then(|n| unit.checked_mul(n))
        .with_context(|| format!("duration {s:?} too long"))
}

/// A value parser (for clap) of a duration within `lo..=hi`; bare numbers are milliseconds.
pub fn millis_in(
    lo: Duration,
    hi: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s| duration_in(s, Duration::from_millis(1), lo, hi)
}

/// A value parser (for clap) of a duration within `lo..=hi`; bare numbers are seconds.
pub fn secs_in(
    lo: Duration,
    hi: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s| duration_in(s, Duration::from_secs(1), lo, hi)
}

/// A value parser (for clap) of a period in seconds where 0 means never.
pub fn secs_or_never(s: &str) -> Result<Option<Duration>, String> {
    let d = parse_duration(s, Duration::from_secs(1)).map_err(|e| format!("{e:#}"))?;
    Ok((!d.is_zero()).then_some(d))
}

fn duration_in(s: &str, bare: Duration, lo: Duration, hi: Duration) -> Result<Duration, String> {
    let d = parse_duration(s, bare).map_err(|e| format!("{e:#}"))?;
    if d < lo || d > hi {
        return Err(format!("{s} is not in {lo:?}..={hi:?}"));
    }
    Ok(d)
}

/// A value parser (for clap) of a count within `lo..=hi`.
pub fn count_in(
    lo: usize,
    hi: usize,
) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    move |s| {
        let n: usize = s
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a number"))?;
        if n < lo || n > hi {
            return Err(format!("{n} is not in {lo}..={hi}"));
        }
        Ok(n)
    }
}

/// mountinfo writes space, tab, newline and backslash in paths as octal escapes (`\040`).
pub fn unescape_mount_field(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let oct = s
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (s[i], oct) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_escapes_are_decoded() {
        use super::unescape_mount_field as u;
        assert_eq!(u(br"/a\040b\134c"), b"/a b\\c".to_vec());
        assert_eq!(u(br"/x\0"), br"/x\0".to_vec());
        assert_eq!(u(b"/plain"), b"/plain".to_vec());
    }

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

    #[test]
    fn durations_parse_with_units_and_bare_numbers_in_the_flag_unit() {
        use std::time::Duration as D;
        let ms = D::from_millis(1);
        assert_eq!(
            super::parse_duration("250", ms).unwrap(),
            D::from_millis(250)
        );
        assert_eq!(
            super::parse_duration("250ms", D::from_secs(1)).unwrap(),
            250 * ms
        );
        assert_eq!(super::parse_duration("10s", ms).unwrap(), D::from_secs(10));
        assert_eq!(super::parse_duration("5m", ms).unwrap(), D::from_secs(300));
        assert_eq!(super::parse_duration("1h", ms).unwrap(), D::from_secs(3600));
        assert!(super::parse_duration("1d", ms).is_err());
        assert!(super::parse_duration("", ms).is_err());
        assert!(super::parse_duration("99999999999h", ms).is_err());
        let p = super::millis_in(D::from_millis(10), D::from_secs(60));
        assert_eq!(p("1s").unwrap(), D::from_secs(1));
        assert!(p("9").is_err() && p("61s").is_err());
        assert_eq!(super::secs_or_never("0").unwrap(), None);
        assert_eq!(
            super::secs_or_never("10m").unwrap(),
            Some(D::from_secs(600))
        );
        let c = super::count_in(1, 256);
        assert_eq!(c("8").unwrap(), 8);
        assert!(c("0").is_err() && c("257").is_err() && c("x").is_err());
    }
}
