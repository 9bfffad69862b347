//! `trace replay`: a trace against files on a mount, with an optional model of what was written.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use super::*;

// ---------------------------------------------------------------------- written model --

/// What was last written where on one volume: disjoint intervals `start -> (end, write seq)`.
/// Each write has its own sequence number, so neighbours never share one and never merge;
/// a new write splits the intervals it overlaps and replaces what it covers.
#[derive(Debug, Default)]
pub(crate) struct Written {
    pub(crate) map: BTreeMap<u64, (u64, u64)>,
}

impl Written {
    pub(crate) fn insert(&mut self, start: u64, end: u64, seq: u64) {
        // An interval starting before `start` and reaching into the write keeps its head (and
        // its tail, when it also reaches past the write).
        if let Some((&s, &(e, q))) = self.map.range(..start).next_back() {
            if e > start {
                self.map.insert(s, (start, q));
                if e > end {
                    self.map.insert(end, (e, q));
                }
            }
        }
        // Intervals starting inside the write lose what it covers.
        let inside: Vec<u64> = self.map.range(start..end).map(|(&s, _)| s).collect();
        for s in inside {
            let (e, q) = self.map.remove(&s).expect("key just listed");
            if e > end {
                self.map.insert(end, (e, q));
            }
        }
        self.map.insert(start, (end, seq));
    }

    /// The pieces of `[start, end)`: `(piece start, piece end, last write or None)`.
    pub(crate) fn pieces(&self, start: u64, end: u64) -> Vec<(u64, u64, Option<u64>)> {
        let mut out = Vec::new();
        let first = self
            .map
            .range(..=start)
            .next_back()
            .filter(|(_, &(e, _))| e > start);
        let rest = self.map.range(start.saturating_add(1)..end);
        let mut pos = start;
        for (&s, &(e, q)) in first.into_iter().chain(rest) {
            let s = s.max(start);
            if s > pos {
                out.push((pos, s, None));
            }
            let e = e.min(end);
            out.push((s, e, Some(q)));
            pos = e;
        }
        if pos < end {
            out.push((pos, end, None));
        }
        out
    }
}

// ------------------------------------------------------------------------------- pattern --

/// splitmix64's output function: a cheap, well-mixed 64-bit hash.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The bytes write number `seq` puts at `offset..offset + buf.len()`: a function of the
/// sequence number and the byte offset only, so a reader can recompute them, and random enough
/// that they are neither zeros nor compressible.
pub(crate) fn fill_pattern(seq: u64, offset: u64, buf: &mut [u8]) {
    let key = mix64(seq ^ 0x5eed_f00d_cafe_d00d);
    let mut pos = 0;
    while pos < buf.len() {
        let off = offset + pos as u64;
        let word = mix64(key ^ (off / 8)).to_le_bytes();
        let skip = (off % 8) as usize;
        let n = (8 - skip).min(buf.len() - pos);
        buf[pos..pos + n].copy_from_slice(&word[skip..skip + n]);
        pos += n;
    }
}

// -------------------------------------------------------------------------------- replay --

#[derive(Debug, Clone)]
pub struct ReplayOpts {
    /// Time compression factor (1.0 = real time); None = back to back.
    pub speed: Option<f64>,
    /// Check every read against a model of what the replay wrote.
    pub verify: bool,
    /// Replay only the first N records.
    pub limit: Option<u64>,
    /// Open the volume files with O_DIRECT: a block trace was recorded below the page
    /// cache, so its reads should reach the filesystem (FUSE takes any alignment).
    pub direct: bool,
}

/// A read that did not return what the model says the file holds.
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    pub volume: String,
    /// The first differing byte.
    pub offset: u64,
    pub read_offset: u64,
    pub read_size: u32,
    /// "zeros" (never written) or "write #N".
    pub expected: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayStats {
    pub requests: u64,
    pub reads: u64,
    pub writes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub elapsed_s: f64,
    pub iops: f64,
    /// How late requests were issued against the schedule (None when replaying --fast).
    pub lag_ms_max: Option<f64>,
    pub lag_ms_mean: Option<f64>,
    pub verified: bool,
    /// Reads whose data differed from the model.
    pub verify_errors: u64,
    pub mismatches: Vec<Mismatch>,
    pub volumes: u64,
}

pub(crate) struct Volume {
    file: File,
    path: PathBuf,
    written: Option<Written>,
}

/// Applies records to the volume files, in the order given.
pub(crate) struct Replayer {
    volumes: HashMap<String, Volume>,
    buf: Vec<u8>,
    expect: Vec<u8>,
    write_seq: u64,
    pub(crate) stats: ReplayStats,
}

impl Replayer {
    /// Opens (creating, sparse) `MOUNT/V` for every volume and extends it to at least its
    /// size; existing files are never shortened.
    pub(crate) fn new(
        mount: &Path,
        sizes: &BTreeMap<String, u64>,
        verify: bool,
        direct: bool,
    ) -> anyhow::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut volumes = HashMap::new();
        for (name, &size) in sizes {
            let path = mount.join(name);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(if direct { libc::O_DIRECT } else { 0 })
                .open(&path)
                .with_context(|| format!("{}: cannot open or create", path.display()))?;
            let len = file
                .metadata()
                .with_context(|| format!("{}: stat", path.display()))?
                .len();
            if verify && len > 0 {
                // The model assumes bytes the trace never wrote are zero.
                eprintln!(
                    "note: {} already exists ({len} bytes); --verify expects bytes this replay \
                     does not write to read as zeros",
                    path.display()
                );
            }
            if len < size {
                file.set_len(size).with_context(|| {
                    format!("{}: cannot extend to {size} bytes", path.display())
                })?;
            }
            volumes.insert(
                name.clone(),
                Volume {
                    file,
                    path,
                    written: verify.then(Written::default),
                },
            );
        }
        Ok(Replayer {
            volumes,
            buf: Vec::new(),
            expect: Vec::new(),
            write_seq: 0,
            stats: ReplayStats {
                verified: verify,
                volumes: sizes.len() as u64,
                ..ReplayStats::default()
            },
        })
    }

    pub(crate) fn apply(&mut self, r: &Record) -> anyhow::Result<()> {
        let vol = self
            .volumes
            .get_mut(&r.volume)
            .with_context(|| format!("volume {:?} was not in the first pass", r.volume))?;
        let size = r.size as usize;
        self.buf.resize(size, 0);
        let buf = &mut self.buf[..size];
        self.stats.requests += 1;
        match r.op {
            Op::Write => {
                self.write_seq += 1;
                fill_pattern(self.write_seq, r.offset, buf);
                vol.file.write_all_at(buf, r.offset).with_context(|| {
                    format!(
                        "{}: write of {size} bytes at {}",
                        vol.path.display(),
                        r.offset
                    )
                })?;
                if let Some(w) = &mut vol.written {
                    w.insert(r.offset, r.end(), self.write_seq);
                }
                self.stats.writes += 1;
                self.stats.bytes_written += u64::from(r.size);
            }
            Op::Read => {
                vol.file.read_exact_at(buf, r.offset).with_context(|| {
                    format!(
                        "{}: read of {size} bytes at {} (short read?)",
                        vol.path.display(),
                        r.offset
                    )
                })?;
                self.stats.reads += 1;
                self.stats.bytes_read += u64::from(r.size);
                if let Some(w) = &vol.written {
                    if let Some((offset, expected)) = check(w, r.offset, buf, &mut self.expect) {
                        self.stats.verify_errors += 1;
                        if self.stats.mismatches.len() < MISMATCHES_SHOWN_MAX {
                            self.stats.mismatches.push(Mismatch {
                                volume: r.volume.clone(),
                                offset,
                                read_offset: r.offset,
                                read_size: r.size,
                                expected: match expected {
                                    None => "zeros".into(),
                                    Some(q) => format!("write #{q}"),
                                },
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Compares data read at `offset` with the model: the first wrong byte's offset and what was
/// expected there, or None when all is right.
pub(crate) fn check(
    w: &Written,
    offset: u64,
    data: &[u8],
    expect: &mut Vec<u8>,
) -> Option<(u64, Option<u64>)> {
    for (s, e, seq) in w.pieces(offset, offset + data.len() as u64) {
        let got = &data[(s - offset) as usize..(e - offset) as usize];
        let bad = match seq {
            None => got.iter().position(|&b| b != 0),
            Some(q) => {
                expect.resize(got.len(), 0);
                fill_pattern(q, s, expect);
                got.iter().zip(expect.iter()).position(|(a, b)| a != b)
            }
        };
        if let Some(i) = bad {
            return Some((s + i as u64, seq));
        }
    }
    None
}

pub fn check_speed(speed: f64) -> anyhow::Result<()> {
    if !(speed.is_finite() && speed > 0.0) {
        bail!("speed must be a finite number above 0 (got {speed})");
    }
    Ok(())
}

/// The first pass: every volume's extent (the highest end offset of the first `limit`
/// records), so files exist at full size before the clock starts, and the records counted.
fn volume_sizes(trace: &Path, limit: u64) -> anyhow::Result<(BTreeMap<String, u64>, u64)> {
    let mut sizes: BTreeMap<String, u64> = BTreeMap::new();
    let mut total = 0u64;
    for r in open(trace)?.take(limit as usize) {
        let r = r?;
        total += 1;
        let end = r.end();
        match sizes.get_mut(&r.volume) {
            Some(s) => *s = (*s).max(end),
            None => {
                if sizes.len() == VOLUMES_MAX {
                    bail!(
                        "{}: more than {VOLUMES_MAX} volumes (one open file each)",
                        trace.display()
                    );
                }
                sizes.insert(r.volume, end);
            }
        }
    }
    Ok((sizes, total))
}

/// Replays `trace` against the files under `mount`; see the module comment.
pub fn replay(trace: &Path, mount: &Path, opts: &ReplayOpts) -> anyhow::Result<ReplayStats> {
    if let Some(s) = opts.speed {
        check_speed(s)?;
    }
    if !mount.is_dir() {
        bail!(
            "{}: not an existing directory (give the mount point)",
            mount.display()
        );
    }
    let limit = opts.limit.unwrap_or(u64::MAX);
    let (sizes, total) = volume_sizes(trace, limit)?;
    let mut rp = Replayer::new(mount, &sizes, opts.verify, opts.direct)?;

    let pb = progress_bar(total);
    let start = Instant::now();
    let mut t0 = None;
    let (mut lag_max_us, mut lag_sum_us) = (0u64, 0u128);
    // Second pass: one thread, file order.
    for r in open(trace)?.take(limit as usize) {
        let r = r?;
        if let Some(speed) = opts.speed {
            let t0 = *t0.get_or_insert(r.time_us);
            let due = Duration::from_secs_f64(r.time_us.saturating_sub(t0) as f64 / 1e6 / speed);
            let now = start.elapsed();
            if now < due {
                std::thread::sleep(due - now);
            } else {
                let lag = (now - due).as_micros() as u64;
                lag_max_us = lag_max_us.max(lag);
                lag_sum_us += u128::from(lag);
            }
        }
        rp.apply(&r)?;
        if let Some(pb) = &pb {
            if rp.stats.requests % 256 == 0 {
                pb.set_position(rp.stats.requests);
            }
        }
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let mut stats = rp.stats;
    stats.elapsed_s = start.elapsed().as_secs_f64();
    stats.iops = stats.requests as f64 / stats.elapsed_s.max(1e-9);
    if opts.speed.is_some() {
        stats.lag_ms_max = Some(lag_max_us as f64 / 1e3);
        stats.lag_ms_mean = Some(lag_sum_us as f64 / 1e3 / stats.requests.max(1) as f64);
    }
    Ok(stats)
}

pub(crate) fn progress_bar(len: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal().then(|| {
        let pb = indicatif::ProgressBar::new(len);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} replay [{bar:40}] {pos}/{len} requests {per_sec} ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb
    })
}
