//! Block traces: a reader (our CSV or the MSR Cambridge format, plain or gzip), replay against
//! files on a mount (optionally verifying every read against a model of what was written),
//! summary statistics, and a synthetic trace generator with a planted hot set, co-access groups
//! and a daily cycle (with a truth file saying what was planted).
//!
//! Volume `V` of a trace is the file `MOUNT/V`; byte offsets map 1:1 onto it.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Subcommand;
use serde::Serialize;

/// Largest request accepted; anything bigger is taken for a parse error (real traces stay far
/// below this, and each request is one buffer in memory during replay).
pub const REQUEST_BYTES_MAX: u32 = 64 << 20;
/// Highest end offset of a request: file offsets are `off_t` (signed 64 bit).
pub const END_BYTES_MAX: u64 = i64::MAX as u64;
/// How far a timestamp may lie before the latest one seen. Real traces carry small jitter
/// (requests logged by completion); more than this means an unsorted or corrupt file.
pub const TIME_BACKWARDS_US_MAX: u64 = 1_000_000;
/// A volume name is one path component; Linux limits those to 255 bytes.
pub const VOLUME_NAME_BYTES_MAX: usize = 255;
/// Volumes replayed at once (one open file each).
pub const VOLUMES_MAX: usize = 4096;
/// Mismatches kept with details for the report (all are counted).
pub const MISMATCHES_SHOWN_MAX: usize = 5;
/// Our CSV header; columns are found by name, so order and extra columns do not matter.
pub const HEADER: &str = "timestamp_us,op,offset_bytes,size_bytes,volume";
const COLUMNS: [&str; 5] = ["timestamp_us", "op", "offset_bytes", "size_bytes", "volume"];
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// MSR Cambridge timestamps are Windows FILETIME: 100 ns ticks.
const FILETIME_TICKS_PER_US: u64 = 10;
const MSR_COLUMNS: usize = 7;
const US_PER_HOUR: u64 = 3_600_000_000;
const US_PER_DAY: u64 = 24 * US_PER_HOUR;
/// Synthetic requests are whole 4 KiB blocks (the usual block and page size).
const BLOCK_BYTES: u64 = 4096;

// ------------------------------------------------------------------------------- records --

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        match s.to_ascii_lowercase().as_str() {
            "r" | "read" => Some(Op::Read),
            "w" | "write" => Some(Op::Write),
            _ => None,
        }
    }

    fn letter(self) -> char {
        match self {
            Op::Read => 'R',
            Op::Write => 'W',
        }
    }
}

/// One request. `time_us` is as stored in our CSV, and relative to the first record for MSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub time_us: u64,
    pub op: Op,
    pub offset: u64,
    pub size: u32,
    pub volume: String,
}

impl Record {
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.size)
    }
}

/// Checks that `name` can be used as the file `MOUNT/name`: one non-empty path component.
pub fn check_volume_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() {
        bail!("empty volume name");
    }
    if name == "." || name == ".." {
        bail!("volume name {name:?} is not a file name");
    }
    if name.contains('/') || name.contains('\0') {
        bail!("volume name {name:?} contains '/' or NUL (it must be one path component)");
    }
    if name.len() > VOLUME_NAME_BYTES_MAX {
        bail!(
            "volume name of {} bytes is longer than {VOLUME_NAME_BYTES_MAX}",
            name.len()
        );
    }
    Ok(())
}

// -------------------------------------------------------------------------------- reader --

#[derive(Debug, Clone, Copy)]
enum Format {
    /// Our CSV: column index of each of `COLUMNS`, and how many columns a line has.
    Csv { col: [usize; 5], width: usize },
    /// MSR Cambridge: Timestamp,Hostname,DiskNumber,Type,Offset,Size,ResponseTime.
    Msr,
}

/// Streams the records of a trace file in file order (never sorted). The first error ends it.
pub struct Reader {
    path: PathBuf,
    input: BufReader<Box<dyn Read + Send>>,
    format: Option<Format>,
    line_no: u64,
    line: Vec<u8>,
    /// MSR: the first record's FILETIME, subtracted from every record.
    time_base_ticks: Option<u64>,
    time_latest_us: u64,
    done: bool,
}

/// Opens a trace: gzip (by magic bytes) or plain; our CSV or MSR Cambridge (by the first line).
pub fn open(path: &Path) -> anyhow::Result<Reader> {
    let mut file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut magic = [0u8; 2];
    let n = read_up_to(&mut file, &mut magic).with_context(|| format!("{}", path.display()))?;
    file.seek(SeekFrom::Start(0))
        .with_context(|| format!("{}: cannot seek (a regular file is needed)", path.display()))?;
    let raw: Box<dyn Read + Send> = if n == 2 && magic == GZIP_MAGIC {
        // Multi-member: `cat a.gz b.gz` and some compressors produce several members.
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok(Reader {
        path: path.to_path_buf(),
        input: BufReader::with_capacity(1 << 16, raw),
        format: None,
        line_no: 0,
        line: Vec::new(),
        time_base_ticks: None,
        time_latest_us: 0,
        done: false,
    })
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn num<T: std::str::FromStr>(field: &str, what: &str) -> anyhow::Result<T> {
    field
        .parse()
        .map_err(|_| anyhow::anyhow!("bad {what} {field:?} (not a non-negative integer)"))
}

impl Reader {
    /// The next non-empty line (without line end), or None at the end of the file.
    fn next_line(&mut self) -> anyhow::Result<Option<String>> {
        loop {
            self.line.clear();
            let n = self
                .input
                .read_until(b'\n', &mut self.line)
                .with_context(|| {
                    format!(
                        "{}:{}: read error (truncated or corrupt gzip?)",
                        self.path.display(),
                        self.line_no + 1
                    )
                })?;
            if n == 0 {
                return Ok(None);
            }
            self.line_no += 1;
            let text = std::str::from_utf8(&self.line).map_err(|_| {
                anyhow::anyhow!("{}:{}: not UTF-8 text", self.path.display(), self.line_no)
            })?;
            let text = text.trim_end_matches(['\n', '\r']);
            if !text.trim().is_empty() {
                return Ok(Some(text.to_string()));
            }
        }
    }

    /// Decides the format from the first line; true when that line is a record (MSR).
    fn detect(first: &str) -> anyhow::Result<(Format, bool)> {
        let fields: Vec<String> = first
            .split(',')
            .map(|f| f.trim().to_ascii_lowercase())
            .collect();
        if fields.iter().any(|f| COLUMNS.contains(&f.as_str())) {
            let mut col = [0usize; 5];
            let mut missing = Vec::new();
            for (i, name) in COLUMNS.iter().enumerate() {
                match fields.iter().position(|f| f == name) {
                    Some(p) => col[i] = p,
                    None => missing.push(*name),
                }
            }
            if !missing.is_empty() {
                bail!(
                    "header lacks column(s) {} (expected {HEADER:?}, or MSR Cambridge lines \
                     without a header)",
                    missing.join(", ")
                );
            }
            return Ok((
                Format::Csv {
                    col,
                    width: fields.len(),
                },
                false,
            ));
        }
        if fields.len() == MSR_COLUMNS && Op::parse(&fields[3]).is_some() {
            return Ok((Format::Msr, true));
        }
        bail!(
            "unknown format: the first line is neither the header {HEADER:?} nor an MSR \
             Cambridge record (Timestamp,Hostname,DiskNumber,Type,Offset,Size,ResponseTime)"
        )
    }

    fn parse(&mut self, format: Format, line: &str) -> anyhow::Result<Record> {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        // MSR: FILETIME ticks, made relative to the first record before rounding to us.
        let mut ticks = None;
        let (time_us, op, offset, size, volume) = match format {
            Format::Csv { col, width } => {
                if fields.len() != width {
                    bail!("{} columns, the header has {width}", fields.len());
                }
                let op = fields[col[1]];
                (
                    num::<u64>(fields[col[0]], "timestamp_us")?,
                    Op::parse(op)
                        .with_context(|| format!("bad op {op:?} (R, W, Read or Write)"))?,
                    num::<u64>(fields[col[2]], "offset_bytes")?,
                    num::<u64>(fields[col[3]], "size_bytes")?,
                    fields[col[4]].to_string(),
                )
            }
            Format::Msr => {
                if fields.len() != MSR_COLUMNS {
                    bail!(
                        "{} columns, MSR Cambridge lines have {MSR_COLUMNS}",
                        fields.len()
                    );
                }
                let t = num::<u64>(fields[0], "Timestamp")?;
                ticks = Some(t);
                let disk = num::<u64>(fields[2], "DiskNumber")?;
                let op = fields[3];
                (
                    t / FILETIME_TICKS_PER_US,
                    Op::parse(op).with_context(|| format!("bad Type {op:?} (Read or Write)"))?,
                    num::<u64>(fields[4], "Offset")?,
                    num::<u64>(fields[5], "Size")?,
                    format!("{}_{disk}", fields[1]),
                )
            }
        };
        if size == 0 || size > u64::from(REQUEST_BYTES_MAX) {
            bail!("size {size} is outside 1..={REQUEST_BYTES_MAX} bytes");
        }
        match offset.checked_add(size) {
            Some(end) if end <= END_BYTES_MAX => {}
            _ => bail!("offset {offset} + size {size} is beyond the largest file offset"),
        }
        check_volume_name(&volume)?;
        if time_us.saturating_add(TIME_BACKWARDS_US_MAX) < self.time_latest_us {
            bail!(
                "timestamp goes back {:.3} s from an earlier record (the trace must be in time \
                 order; up to {} ms back is tolerated)",
                (self.time_latest_us - time_us) as f64 / 1e6,
                TIME_BACKWARDS_US_MAX / 1000
            );
        }
        self.time_latest_us = self.time_latest_us.max(time_us);
        let time_us = match ticks {
            None => time_us,
            Some(t) => {
                t.saturating_sub(*self.time_base_ticks.get_or_insert(t)) / FILETIME_TICKS_PER_US
            }
        };
        Ok(Record {
            time_us,
            op,
            offset,
            size: size as u32,
            volume,
        })
    }

    fn next_record(&mut self) -> anyhow::Result<Option<Record>> {
        let Some(line) = self.next_line()? else {
            return Ok(None);
        };
        let (format, line) = match self.format {
            Some(f) => (f, line),
            None => {
                let (f, is_record) = Self::detect(&line).map_err(|e| {
                    anyhow::anyhow!("{}:{}: {e}", self.path.display(), self.line_no)
                })?;
                self.format = Some(f);
                if is_record {
                    (f, line)
                } else {
                    match self.next_line()? {
                        Some(l) => (f, l),
                        None => return Ok(None),
                    }
                }
            }
        };
        self.parse(format, &line)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", self.path.display(), self.line_no))
    }
}

impl Iterator for Reader {
    type Item = anyhow::Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_record() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Writes records as our CSV (gzip when the name ends in `.gz`).
pub fn write_csv(path: &Path, records: &[Record]) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("{}: cannot create", path.display()))?;
    let result = if path.extension().is_some_and(|e| e == "gz") {
        // flate2's default gzip header has mtime 0, so the same records give the same bytes.
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        let mut w = BufWriter::new(gz);
        write_lines(&mut w, records)
            .and_then(|()| w.into_inner().map_err(|e| e.into_error()))
            // Dropping the encoder would finish the stream but swallow errors.
            .and_then(|gz| gz.finish())
            .map(drop)
    } else {
        let mut w = BufWriter::new(file);
        write_lines(&mut w, records).and_then(|()| w.flush())
    };
    result.with_context(|| format!("{}: write error", path.display()))
}

fn write_lines(w: &mut impl Write, records: &[Record]) -> std::io::Result<()> {
    writeln!(w, "{HEADER}")?;
    for r in records {
        writeln!(
            w,
            "{},{},{},{},{}",
            r.time_us,
            r.op.letter(),
            r.offset,
            r.size,
            r.volume
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------- written model --

/// What was last written where on one volume: disjoint intervals `start -> (end, write seq)`.
/// Each write has its own sequence number, so neighbours never share one and never merge;
/// a new write splits the intervals it overlaps and replaces what it covers.
#[derive(Debug, Default)]
struct Written {
    map: BTreeMap<u64, (u64, u64)>,
}

impl Written {
    fn insert(&mut self, start: u64, end: u64, seq: u64) {
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
    fn pieces(&self, start: u64, end: u64) -> Vec<(u64, u64, Option<u64>)> {
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
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The bytes write number `seq` puts at `offset..offset + buf.len()`: a function of the
/// sequence number and the byte offset only, so a reader can recompute them, and random enough
/// that they are neither zeros nor compressible.
fn fill_pattern(seq: u64, offset: u64, buf: &mut [u8]) {
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

struct Volume {
    file: File,
    path: PathBuf,
    written: Option<Written>,
}

/// Applies records to the volume files, in the order given.
struct Replayer {
    volumes: HashMap<String, Volume>,
    buf: Vec<u8>,
    expect: Vec<u8>,
    write_seq: u64,
    stats: ReplayStats,
}

impl Replayer {
    /// Opens (creating, sparse) `MOUNT/V` for every volume and extends it to at least its
    /// size; existing files are never shortened.
    fn new(
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

    fn apply(&mut self, r: &Record) -> anyhow::Result<()> {
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
fn check(
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

fn check_speed(speed: f64) -> anyhow::Result<()> {
    if !(speed.is_finite() && speed > 0.0) {
        bail!("speed must be a finite number above 0 (got {speed})");
    }
    Ok(())
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

    // First pass: every volume's extent, so files exist at full size before the clock starts.
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

fn progress_bar(len: u64) -> Option<indicatif::ProgressBar> {
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

// --------------------------------------------------------------------------------- stats --

#[derive(Debug, Clone, Serialize)]
pub struct VolumeStats {
    pub name: String,
    pub requests: u64,
    /// Highest end offset touched.
    pub end_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TraceStats {
    pub requests: u64,
    pub reads: u64,
    pub writes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub volumes: Vec<VolumeStats>,
    pub extent_size_bytes: u64,
    /// Distinct (volume, offset / extent size) touched.
    pub extents: u64,
    pub span_hours: f64,
    /// Share of extent accesses (a request counts once per extent it touches) that go to the
    /// busiest 10% of extents (rounded up).
    pub top10_share: f64,
    /// Requests by hour of the day (time_us / 1 h mod 24).
    pub requests_per_hour: Vec<u64>,
}

pub fn stats(trace: &Path, extent_size: u64) -> anyhow::Result<TraceStats> {
    if extent_size == 0 {
        bail!("extent size must be above 0");
    }
    let (mut requests, mut reads, mut bytes_read, mut bytes_written) = (0u64, 0u64, 0u64, 0u64);
    let mut vol_ids: HashMap<String, usize> = HashMap::new();
    let mut vols: Vec<VolumeStats> = Vec::new();
    let mut extents: HashMap<(usize, u64), u64> = HashMap::new();
    let mut per_hour = vec![0u64; 24];
    let (mut first, mut last) = (None, 0u64);
    for r in open(trace)? {
        let r = r?;
        requests += 1;
        match r.op {
            Op::Read => {
                reads += 1;
                bytes_read += u64::from(r.size);
            }
            Op::Write => bytes_written += u64::from(r.size),
        }
        first.get_or_insert(r.time_us);
        last = last.max(r.time_us);
        per_hour[((r.time_us / US_PER_HOUR) % 24) as usize] += 1;
        let id = match vol_ids.get(&r.volume) {
            Some(&id) => id,
            None => {
                vols.push(VolumeStats {
                    name: r.volume.clone(),
                    requests: 0,
                    end_bytes: 0,
                });
                vol_ids.insert(r.volume.clone(), vols.len() - 1);
                vols.len() - 1
            }
        };
        vols[id].requests += 1;
        vols[id].end_bytes = vols[id].end_bytes.max(r.end());
        for e in r.offset / extent_size..=(r.end() - 1) / extent_size {
            *extents.entry((id, e)).or_default() += 1;
        }
    }
    let mut counts: Vec<u64> = extents.values().copied().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    let top = counts.len().div_ceil(10);
    let accesses: u64 = counts.iter().sum();
    vols.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(TraceStats {
        requests,
        reads,
        writes: requests - reads,
        bytes_read,
        bytes_written,
        volumes: vols,
        extent_size_bytes: extent_size,
        extents: counts.len() as u64,
        span_hours: first.map_or(0.0, |f| (last - f) as f64 / US_PER_HOUR as f64),
        top10_share: counts[..top].iter().sum::<u64>() as f64 / accesses.max(1) as f64,
        requests_per_hour: per_hour,
    })
}

// ----------------------------------------------------------------------------- synthetic --

/// Parameters of the synthetic trace. Time 0 is midnight of day 0; the hour of a timestamp is
/// `time_us / 1 h mod 24` (local time stored as if UTC, like the real traces).
#[derive(Debug, Clone, Serialize)]
pub struct SynthParams {
    pub seed: u64,
    pub days: u32,
    pub volumes: u32,
    pub extents_per_volume: u64,
    pub extent_size: u64,
    pub requests: u64,
    /// Share of all extents that are hot.
    pub hot_fraction: f64,
    /// Share of single (non-burst, non-nightly) requests that go to the hot set.
    pub hot_share: f64,
    pub groups: u32,
    pub group_size: u32,
    /// Share of requests issued as group bursts (every member once, back to back).
    pub burst_share: f64,
    /// Share of single requests to one group member alone.
    pub group_single_share: f64,
    /// Extents touched only during `night_hour`, every day.
    pub nightly: u32,
    pub night_hour: u32,
    /// Share of requests going to the nightly extents.
    pub nightly_share: f64,
    pub write_fraction: f64,
    pub request_bytes_min: u64,
    pub request_bytes_max: u64,
    /// Busy hours `[day_start_hour, day_end_hour)` get `day_weight` times the traffic per hour.
    pub day_start_hour: u32,
    pub day_end_hour: u32,
    pub day_weight: u32,
}

impl Default for SynthParams {
    fn default() -> Self {
        SynthParams {
            seed: 42,
            days: 3,
            volumes: 2,
            extents_per_volume: 64,
            extent_size: 1 << 20,
            requests: 20_000,
            hot_fraction: 0.1,
            hot_share: 0.7,
            groups: 6,
            group_size: 4,
            burst_share: 0.15,
            group_single_share: 0.02,
            nightly: 4,
            night_hour: 2,
            nightly_share: 0.02,
            write_fraction: 0.3,
            request_bytes_min: 4 << 10,
            request_bytes_max: 64 << 10,
            day_start_hour: 8,
            day_end_hour: 18,
            day_weight: 4,
        }
    }
}

/// An extent as `shards --json` names it: the file on the mount and offset / extent size.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ExtentRef {
    pub path: String,
    pub index: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VolumeSize {
    pub name: String,
    /// extents_per_volume x extent size (the replayed file is as long as the highest end
    /// offset the trace touches).
    pub size_bytes: u64,
}

/// What the generator planted.
#[derive(Debug, Clone, Serialize)]
pub struct Truth {
    pub extent_size_bytes: u64,
    pub hot: Vec<ExtentRef>,
    pub groups: Vec<Vec<ExtentRef>>,
    pub nightly: Vec<ExtentRef>,
    pub night_hour: u32,
    pub volumes: Vec<VolumeSize>,
    pub params: SynthParams,
}

/// Why a synthetic record was emitted (for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Single,
    /// Burst number n, on a group.
    Burst {
        burst: u64,
        group: usize,
    },
    Nightly,
}

/// A deterministic generator (splitmix64) so fixtures do not depend on `rand`'s versions.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

impl SynthParams {
    fn check(&self) -> anyhow::Result<()> {
        let share = |name: &str, v: f64| -> anyhow::Result<()> {
            if !(0.0..=1.0).contains(&v) {
                bail!("{name} must be within 0..1 (got {v})");
            }
            Ok(())
        };
        share("hot_fraction", self.hot_fraction)?;
        share("hot_share", self.hot_share)?;
        share("burst_share", self.burst_share)?;
        share("group_single_share", self.group_single_share)?;
        share("nightly_share", self.nightly_share)?;
        share("write_fraction", self.write_fraction)?;
        if self.burst_share + self.nightly_share > 1.0 {
            bail!("burst_share + nightly_share must not exceed 1");
        }
        if self.days == 0 || self.volumes == 0 || self.extents_per_volume == 0 {
            bail!("days, volumes and extents per volume must be at least 1");
        }
        if self.requests == 0 {
            bail!("requests must be at least 1");
        }
        if self.extent_size == 0 || !self.extent_size.is_multiple_of(BLOCK_BYTES) {
            bail!("extent size must be a positive multiple of {BLOCK_BYTES} bytes");
        }
        if self.request_bytes_min == 0
            || !self.request_bytes_min.is_multiple_of(BLOCK_BYTES)
            || !self.request_bytes_max.is_multiple_of(BLOCK_BYTES)
            || self.request_bytes_min > self.request_bytes_max
            || self.request_bytes_max > u64::from(REQUEST_BYTES_MAX)
        {
            bail!(
                "request sizes must be multiples of {BLOCK_BYTES} bytes with 0 < min <= max <= \
                 {REQUEST_BYTES_MAX}"
            );
        }
        if self.request_bytes_min > self.extent_size {
            bail!("the smallest request must fit in one extent");
        }
        if self.groups > 0 && self.group_size < 2 {
            bail!("a co-access group needs at least 2 members");
        }
        if self.night_hour >= 24
            || self.day_start_hour > self.day_end_hour
            || self.day_end_hour > 24
        {
            bail!("hours must be within 0..24 with day_start_hour <= day_end_hour");
        }
        if self.day_weight == 0 {
            bail!("day_weight must be at least 1");
        }
        let planted = self.hot_count() + self.group_members() + u64::from(self.nightly);
        if planted >= self.total_extents() {
            bail!(
                "hot set, groups and nightly extents ({planted}) must leave at least one of the \
                 {} extents for background traffic",
                self.total_extents()
            );
        }
        Ok(())
    }

    fn total_extents(&self) -> u64 {
        u64::from(self.volumes) * self.extents_per_volume
    }

    fn hot_count(&self) -> u64 {
        let n = (self.hot_fraction * self.total_extents() as f64).round() as u64;
        if self.hot_fraction > 0.0 {
            n.max(1)
        } else {
            0
        }
    }

    fn group_members(&self) -> u64 {
        u64::from(self.groups) * u64::from(self.group_size)
    }

    fn volume_name(v: u64) -> String {
        format!("vol{v}")
    }

    /// A random hour of the daily cycle: busy hours weigh `day_weight`, others 1.
    fn cycle_hour(&self, rng: &mut Rng) -> u64 {
        let busy = |h: u32| (self.day_start_hour..self.day_end_hour).contains(&h);
        let weight = |h: u32| if busy(h) { self.day_weight } else { 1 };
        let mut r = rng.below((0..24).map(|h| u64::from(weight(h))).sum());
        for h in 0..24 {
            let w = u64::from(weight(h));
            if r < w {
                return u64::from(h);
            }
            r -= w;
        }
        unreachable!("r is below the sum of the weights")
    }
}

/// An extent of the synthetic trace: (volume number, index in the volume).
type Extent = (u64, u64);

/// Generates the synthetic trace: records in time order with why each was emitted, and the
/// truth. Deterministic for given parameters.
pub fn synth(p: &SynthParams) -> anyhow::Result<(Vec<(Record, Kind)>, Truth)> {
    p.check()?;
    let mut rng = Rng(p.seed);
    // (volume, index) pairs, shuffled: hot set, groups and nightly set are disjoint slices.
    let mut all: Vec<Extent> = (0..u64::from(p.volumes))
        .flat_map(|v| (0..p.extents_per_volume).map(move |i| (v, i)))
        .collect();
    rng.shuffle(&mut all);
    let (hot, rest) = all.split_at(p.hot_count() as usize);
    let (grouped, rest) = rest.split_at(p.group_members() as usize);
    let (nightly, cold) = rest.split_at(p.nightly as usize);
    let mut hot = hot.to_vec();
    hot.sort_unstable();
    let mut nightly = nightly.to_vec();
    nightly.sort_unstable();
    let groups: Vec<Vec<Extent>> = grouped
        .chunks(p.group_size.max(1) as usize)
        .map(|g| {
            let mut g = g.to_vec();
            g.sort_unstable();
            g
        })
        .collect();

    // Events: (time, kind, extents touched back to back).
    let day_us = |rng: &mut Rng| rng.below(u64::from(p.days)) * US_PER_DAY;
    let mut events: Vec<(u64, Kind, Vec<Extent>)> = Vec::new();
    let nightly_n = if nightly.is_empty() {
        0
    } else {
        (p.requests as f64 * p.nightly_share).round() as u64
    };
    for _ in 0..nightly_n {
        let t = day_us(&mut rng)
            + u64::from(p.night_hour) * US_PER_HOUR
            + rng.below(US_PER_HOUR - US_PER_HOUR / 10);
        events.push((t, Kind::Nightly, vec![rng.pick(&nightly)]));
    }
    let bursts = if groups.is_empty() {
        0
    } else {
        (p.requests as f64 * p.burst_share / f64::from(p.group_size)).round() as u64
    };
    for burst in 0..bursts {
        let t = day_us(&mut rng) + p.cycle_hour(&mut rng) * US_PER_HOUR + rng.below(US_PER_HOUR);
        let group = rng.below(groups.len() as u64) as usize;
        let mut members = groups[group].clone();
        rng.shuffle(&mut members);
        events.push((t, Kind::Burst { burst, group }, members));
    }
    let singles = p
        .requests
        .saturating_sub(nightly_n + bursts * u64::from(p.group_size));
    for _ in 0..singles {
        let t = day_us(&mut rng) + p.cycle_hour(&mut rng) * US_PER_HOUR + rng.below(US_PER_HOUR);
        let e = if !hot.is_empty() && rng.chance(p.hot_share) {
            rng.pick(&hot)
        } else if !grouped.is_empty() && rng.chance(p.group_single_share) {
            rng.pick(grouped)
        } else {
            rng.pick(cold)
        };
        events.push((t, Kind::Single, vec![e]));
    }
    // Stable: events at the same microsecond keep their generation order.
    events.sort_by_key(|e| e.0);

    // Records: strictly increasing times, so a burst's records are consecutive by
    // construction and nothing can land between them.
    const BURST_GAP_US: u64 = 50;
    let blocks = |bytes: u64| bytes / BLOCK_BYTES;
    let size_max = p.request_bytes_max.min(p.extent_size);
    let mut out = Vec::with_capacity(p.requests as usize);
    let mut prev: Option<u64> = None;
    for (t, kind, extents) in events {
        for (v, index) in extents {
            let time_us = prev.map_or(t, |pt| t.max(pt + BURST_GAP_US));
            prev = Some(time_us);
            let size = BLOCK_BYTES
                * (blocks(p.request_bytes_min)
                    + rng.below(blocks(size_max) - blocks(p.request_bytes_min) + 1));
            let within = BLOCK_BYTES * rng.below(blocks(p.extent_size - size) + 1);
            let op = if rng.chance(p.write_fraction) {
                Op::Write
            } else {
                Op::Read
            };
            out.push((
                Record {
                    time_us,
                    op,
                    offset: index * p.extent_size + within,
                    size: size as u32,
                    volume: SynthParams::volume_name(v),
                },
                kind,
            ));
        }
    }
    let eref = |&(v, index): &Extent| ExtentRef {
        path: format!("/{}", SynthParams::volume_name(v)),
        index,
    };
    let truth = Truth {
        extent_size_bytes: p.extent_size,
        hot: hot.iter().map(eref).collect(),
        groups: groups
            .iter()
            .map(|g| g.iter().map(eref).collect())
            .collect(),
        nightly: nightly.iter().map(eref).collect(),
        night_hour: p.night_hour,
        volumes: (0..u64::from(p.volumes))
            .map(|v| VolumeSize {
                name: SynthParams::volume_name(v),
                size_bytes: p.extents_per_volume * p.extent_size,
            })
            .collect(),
        params: p.clone(),
    };
    Ok((out, truth))
}

/// Writes the synthetic trace to `out` and the truth JSON to `truth_path`.
pub fn write_synth(p: &SynthParams, out: &Path, truth_path: &Path) -> anyhow::Result<Truth> {
    let (records, truth) = synth(p)?;
    let records: Vec<Record> = records.into_iter().map(|(r, _)| r).collect();
    write_csv(out, &records)?;
    let json = serde_json::to_string_pretty(&truth)? + "\n";
    std::fs::write(truth_path, json)
        .with_context(|| format!("{}: cannot write", truth_path.display()))?;
    Ok(truth)
}

/// `x.csv.gz` / `x.csv` -> `x.truth.json`.
fn default_truth_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let stem = name.strip_suffix(".gz").unwrap_or(&name);
    let stem = stem.strip_suffix(".csv").unwrap_or(stem);
    out.with_file_name(format!("{stem}.truth.json"))
}

// ----------------------------------------------------------------------------------- CLI --

fn parse_speed(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    check_speed(v).map_err(|e| e.to_string())?;
    Ok(v)
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    crate::pool::parse_size(s).map_err(|e| e.to_string())
}

#[derive(Subcommand, Debug)]
pub enum TraceCmd {
    /// Replay a block trace against files on a mount (volume V is the file MOUNT/V).
    Replay {
        /// Trace file: CSV with header timestamp_us,op,offset_bytes,size_bytes,volume, or MSR
        /// Cambridge lines; plain or gzip.
        trace: PathBuf,
        /// Directory (usually a foreshard mount) holding the volume files.
        mount: PathBuf,
        /// Compress time this many times (1 = real time).
        #[arg(long, default_value_t = 1.0, value_parser = parse_speed, conflicts_with = "fast")]
        speed: f64,
        /// Issue requests back to back (order kept).
        #[arg(long)]
        fast: bool,
        /// Check every read against a model of what the replay wrote; mismatches exit 1.
        #[arg(long)]
        verify: bool,
        /// Replay only the first N requests.
        #[arg(long)]
        limit: Option<u64>,
        /// Bypass the page cache (O_DIRECT), as the traced block I/O did; on a foreshard
        /// mount every request then reaches the filesystem and its access analyzer.
        #[arg(long)]
        direct: bool,
        #[arg(long)]
        json: bool,
    },
    /// Write a synthetic trace with a planted hot set, co-access groups and a daily cycle.
    Synth {
        /// Trace output (gzip when the name ends in .gz).
        #[arg(long)]
        out: PathBuf,
        /// Truth JSON output (default: OUT with .csv[.gz] replaced by .truth.json).
        #[arg(long)]
        truth: Option<PathBuf>,
        #[arg(long, default_value_t = SynthParams::default().seed)]
        seed: u64,
        #[arg(long, default_value_t = SynthParams::default().days)]
        days: u32,
        #[arg(long, default_value_t = SynthParams::default().volumes)]
        volumes: u32,
        #[arg(long, default_value_t = SynthParams::default().extents_per_volume)]
        extents_per_volume: u64,
        #[arg(long, default_value_t = SynthParams::default().requests)]
        requests: u64,
        #[arg(long, default_value = "1MiB", value_parser = parse_bytes)]
        extent_size: u64,
        /// Share of all extents that are hot.
        #[arg(long, default_value_t = SynthParams::default().hot_fraction)]
        hot_fraction: f64,
        /// Share of single requests going to the hot set.
        #[arg(long, default_value_t = SynthParams::default().hot_share)]
        hot_share: f64,
        #[arg(long, default_value_t = SynthParams::default().groups)]
        groups: u32,
        #[arg(long, default_value_t = SynthParams::default().group_size)]
        group_size: u32,
        /// Share of requests issued in group bursts.
        #[arg(long, default_value_t = SynthParams::default().burst_share)]
        burst_share: f64,
        /// Extents touched only during --night-hour.
        #[arg(long, default_value_t = SynthParams::default().nightly)]
        nightly: u32,
        #[arg(long, default_value_t = SynthParams::default().night_hour)]
        night_hour: u32,
        #[arg(long, default_value_t = SynthParams::default().write_fraction)]
        write_fraction: f64,
    },
    /// Summarize a trace: requests, read/write split, volumes, extents, span, skew.
    Stats {
        trace: PathBuf,
        #[arg(long, default_value = "1MiB", value_parser = parse_bytes)]
        extent_size: u64,
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `foreshard trace` command; returns the exit code.
pub fn run(cmd: TraceCmd) -> anyhow::Result<i32> {
    use crate::admin::fmt_bytes;
    match cmd {
        TraceCmd::Replay {
            trace,
            mount,
            speed,
            fast,
            verify,
            limit,
            direct,
            json,
        } => {
            let opts = ReplayOpts {
                direct,
                speed: (!fast).then_some(speed),
                verify,
                limit,
            };
            let s = replay(&trace, &mount, &opts)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!(
                    "replayed {} requests ({} reads, {} writes) on {} volume(s) in {:.2} s: \
                     {:.0} IOPS, read {}, wrote {}",
                    s.requests,
                    s.reads,
                    s.writes,
                    s.volumes,
                    s.elapsed_s,
                    s.iops,
                    fmt_bytes(s.bytes_read),
                    fmt_bytes(s.bytes_written)
                );
                match (s.lag_ms_max, s.lag_ms_mean) {
                    (Some(max), Some(mean)) => println!(
                        "speed {speed}x: lag behind schedule max {max:.1} ms, mean {mean:.2} ms"
                    ),
                    _ => println!("fast: requests back to back, no schedule"),
                }
                if verify {
                    for m in &s.mismatches {
                        println!(
                            "verify: MISMATCH {} at byte {} (read of {} at {}): expected {}",
                            m.volume, m.offset, m.read_size, m.read_offset, m.expected
                        );
                    }
                    println!(
                        "verify: {} read(s) checked, {} mismatch(es)",
                        s.reads, s.verify_errors
                    );
                }
            }
            Ok(if s.verify_errors > 0 { 1 } else { 0 })
        }
        TraceCmd::Synth {
            out,
            truth,
            seed,
            days,
            volumes,
            extents_per_volume,
            requests,
            extent_size,
            hot_fraction,
            hot_share,
            groups,
            group_size,
            burst_share,
            nightly,
            night_hour,
            write_fraction,
        } => {
            let p = SynthParams {
                seed,
                days,
                volumes,
                extents_per_volume,
                requests,
                extent_size,
                hot_fraction,
                hot_share,
                groups,
                group_size,
                burst_share,
                nightly,
                night_hour,
                write_fraction,
                ..SynthParams::default()
            };
            let truth_path = truth.unwrap_or_else(|| default_truth_path(&out));
            let t = write_synth(&p, &out, &truth_path)?;
            println!(
                "wrote {} ({} requests over {} day(s), {} volume(s)) and {} ({} hot, {} groups of \
                 {}, {} nightly extents)",
                out.display(),
                p.requests,
                p.days,
                p.volumes,
                truth_path.display(),
                t.hot.len(),
                t.groups.len(),
                p.group_size,
                t.nightly.len()
            );
            Ok(0)
        }
        TraceCmd::Stats {
            trace,
            extent_size,
            json,
        } => {
            let s = stats(&trace, extent_size)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                let pct = |n: u64| 100.0 * n as f64 / s.requests.max(1) as f64;
                println!(
                    "{} requests: {} reads ({:.0}%, {}), {} writes ({:.0}%, {})",
                    s.requests,
                    s.reads,
                    pct(s.reads),
                    fmt_bytes(s.bytes_read),
                    s.writes,
                    pct(s.writes),
                    fmt_bytes(s.bytes_written)
                );
                for v in &s.volumes {
                    println!(
                        "  volume {}: {} requests, up to byte {}",
                        v.name, v.requests, v.end_bytes
                    );
                }
                println!(
                    "span {:.1} h; {} distinct {} extents; top 10% of extents take {:.1}% of \
                     accesses",
                    s.span_hours,
                    s.extents,
                    fmt_bytes(s.extent_size_bytes),
                    100.0 * s.top10_share
                );
                let hours: Vec<String> = s.requests_per_hour.iter().map(u64::to_string).collect();
                println!("requests by hour 0..23: {}", hours.join(" "));
            }
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const REAL_TRACE: &str = "/work/shared/data/traces/hp_hplajw_1week.csv.gz";

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        if name.ends_with(".gz") {
            let mut e = flate2::write::GzEncoder::new(
                File::create(&p).unwrap(),
                flate2::Compression::fast(),
            );
            e.write_all(text.as_bytes()).unwrap();
            e.finish().unwrap();
        } else {
            std::fs::write(&p, text).unwrap();
        }
        p
    }

    fn read_all(p: &Path) -> anyhow::Result<Vec<Record>> {
        open(p)?.collect()
    }

    fn rec(time_us: u64, op: Op, offset: u64, size: u32, volume: &str) -> Record {
        Record {
            time_us,
            op,
            offset,
            size,
            volume: volume.into(),
        }
    }

    #[test]
    fn trace_parses_our_csv_plain_and_gzip() {
        let d = tempfile::tempdir().unwrap();
        let text = "timestamp_us,op,offset_bytes,size_bytes,volume\n\
                    100,R,4096,4096,a\n\
                    150,w,0,512,b\r\n\
                    \n\
                    149,Write,8192,1024,a\n";
        let want = vec![
            rec(100, Op::Read, 4096, 4096, "a"),
            rec(150, Op::Write, 0, 512, "b"),
            rec(149, Op::Write, 8192, 1024, "a"),
        ];
        assert_eq!(read_all(&write(d.path(), "t.csv", text)).unwrap(), want);
        assert_eq!(read_all(&write(d.path(), "t.csv.gz", text)).unwrap(), want);
        // Gzip is found by its magic bytes, not the name; two members are read as one stream.
        let p = d.path().join("two-members");
        let mut bytes = std::fs::read(d.path().join("t.csv.gz")).unwrap();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b"200,R,0,1,c\n").unwrap();
        bytes.extend(e.finish().unwrap());
        std::fs::write(&p, bytes).unwrap();
        assert_eq!(read_all(&p).unwrap().len(), 4);
        // Columns are found by name: another order and an extra column.
        let p = write(
            d.path(),
            "o.csv",
            "volume,size_bytes,extra,offset_bytes,op,timestamp_us\nv,8,x,16,READ,7\n",
        );
        assert_eq!(read_all(&p).unwrap(), vec![rec(7, Op::Read, 16, 8, "v")]);
        // A header alone, and an empty file, hold no records.
        assert!(read_all(&write(d.path(), "h.csv", &format!("{HEADER}\n")))
            .unwrap()
            .is_empty());
        assert!(read_all(&write(d.path(), "e.csv", "")).unwrap().is_empty());
    }

    #[test]
    fn trace_parses_msr_cambridge() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "CAMRESHMSA01-lvm1.csv",
            "128166372003061629,hm,1,Read,3218989056,4096,5566\n\
             128166372016382155,hm,1,Write,3219001344,65536,6320\n\
             128166372026382245,src1,0,read,0,512,100\n",
        );
        let got = read_all(&p).unwrap();
        assert_eq!(
            got,
            vec![
                rec(0, Op::Read, 3218989056, 4096, "hm_1"),
                rec(1332052, Op::Write, 3219001344, 65536, "hm_1"),
                rec(2332061, Op::Read, 0, 512, "src1_0"),
            ]
        );
    }

    #[test]
    fn trace_rejects_bad_lines_with_line_number() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            ("1,X,0,4096,a", "bad op"),
            ("1,R,0,0,a", "outside 1..="),
            ("1,R,0,67108865,a", "outside 1..="),
            (
                "1,R,18446744073709551615,4096,a",
                "beyond the largest file offset",
            ),
            (
                "1,R,9223372036854775807,1,a",
                "beyond the largest file offset",
            ),
            ("1,R,-5,4096,a", "bad offset_bytes"),
            ("1,R,0,4096", "4 columns"),
            ("x,R,0,4096,a", "bad timestamp_us"),
            ("1,R,0,4096,a", "goes back"),
        ];
        for (line, what) in cases {
            let text = format!("{HEADER}\n5000000,R,0,4096,a\n{line}\n");
            let p = write(d.path(), "bad.csv", &text);
            let err = format!("{:#}", read_all(&p).unwrap_err());
            assert!(
                err.contains("bad.csv:3:") && err.contains(what),
                "{line:?}: {err}"
            );
        }
        let p = write(d.path(), "nohdr.csv", "time,op,offset\n1,R,0\n");
        let err = format!("{:#}", read_all(&p).unwrap_err());
        assert!(
            err.contains("nohdr.csv:1:") && err.contains("size_bytes"),
            "{err}"
        );
        let p = write(d.path(), "junk.csv", "1 2 3\n");
        let err = format!("{:#}", read_all(&p).unwrap_err());
        assert!(err.contains("junk.csv:1: unknown format"), "{err}");
        let p = write(
            d.path(),
            "msr.csv",
            "1,h,0,Read,0,4096,1\n1,h,x,Read,0,4096,1\n",
        );
        let err = format!("{:#}", read_all(&p).unwrap_err());
        assert!(err.contains("msr.csv:2: bad DiskNumber"), "{err}");
        // A truncated gzip stream is an error, not a silent end.
        let full =
            std::fs::read(write(d.path(), "t.gz", &format!("{HEADER}\n1,R,0,1,a\n"))).unwrap();
        std::fs::write(d.path().join("cut.gz"), &full[..full.len() - 6]).unwrap();
        assert!(read_all(&d.path().join("cut.gz")).is_err());
        // Small jitter backwards is kept in file order.
        let p = write(
            d.path(),
            "j.csv",
            &format!("{HEADER}\n2000000,R,0,1,a\n1500000,R,0,1,a\n"),
        );
        assert_eq!(read_all(&p).unwrap()[1].time_us, 1_500_000);
    }

    #[test]
    fn trace_rejects_bad_volume_names() {
        let d = tempfile::tempdir().unwrap();
        let long = "v".repeat(VOLUME_NAME_BYTES_MAX + 1);
        for name in ["", ".", "..", "a/b", "/abs", "a\0b", long.as_str()] {
            let p = write(d.path(), "v.csv", &format!("{HEADER}\n1,R,0,1,{name}\n"));
            let err = format!("{:#}", read_all(&p).unwrap_err());
            assert!(
                err.contains("v.csv:2:") && err.contains("volume"),
                "{name:?}: {err}"
            );
        }
        let ok = "v".repeat(VOLUME_NAME_BYTES_MAX);
        let p = write(d.path(), "v.csv", &format!("{HEADER}\n1,R,0,1,{ok}\n"));
        assert_eq!(read_all(&p).unwrap().len(), 1);
    }

    #[test]
    fn trace_written_model_splits_and_replaces() {
        let mut w = Written::default();
        w.insert(0, 100, 1);
        w.insert(40, 60, 2); // splits 1
        w.insert(90, 120, 3); // cuts 1's tail
        w.insert(10, 45, 4); // cuts 1's middle piece and 2's head
        let got: Vec<_> = w.map.iter().map(|(&s, &(e, q))| (s, e, q)).collect();
        assert_eq!(
            got,
            vec![
                (0, 10, 1),
                (10, 45, 4),
                (45, 60, 2),
                (60, 90, 1),
                (90, 120, 3)
            ]
        );
        assert_eq!(
            w.pieces(50, 130),
            vec![
                (50, 60, Some(2)),
                (60, 90, Some(1)),
                (90, 120, Some(3)),
                (120, 130, None)
            ]
        );
        w.insert(200, 210, 5);
        assert_eq!(
            w.pieces(115, 205),
            vec![(115, 120, Some(3)), (120, 200, None), (200, 205, Some(5))]
        );
        w.insert(0, 300, 6); // covers all
        assert_eq!(w.pieces(0, 400), vec![(0, 300, Some(6)), (300, 400, None)]);
        // A byte-by-byte reference model agrees on random writes.
        let mut rng = Rng(7);
        let mut w = Written::default();
        let mut bytes = vec![None; 512];
        for q in 1..400 {
            let s = rng.below(500);
            let e = s + 1 + rng.below(512 - s - 1);
            w.insert(s, e, q);
            bytes[s as usize..e as usize].fill(Some(q));
        }
        for (s, e, q) in w.pieces(0, 512) {
            assert!(bytes[s as usize..e as usize].iter().all(|&b| b == q));
        }
    }

    #[test]
    fn trace_pattern_depends_on_seq_and_offset_only() {
        let mut a = vec![0u8; 100];
        fill_pattern(9, 13, &mut a);
        let mut b = vec![0u8; 50];
        fill_pattern(9, 50, &mut b);
        assert_eq!(&a[37..87], &b[..]);
        let mut c = vec![0u8; 100];
        fill_pattern(10, 13, &mut c);
        assert_ne!(a, c);
        assert!(a.iter().filter(|&&x| x == 0).count() < 10);
    }

    fn small_params() -> SynthParams {
        SynthParams {
            extents_per_volume: 16,
            extent_size: 256 << 10,
            requests: 3000,
            groups: 2,
            nightly: 2,
            ..SynthParams::default()
        }
    }

    #[test]
    fn trace_synth_is_deterministic() {
        let d = tempfile::tempdir().unwrap();
        let files = |seed: u64, tag: &str| {
            let p = SynthParams {
                seed,
                ..small_params()
            };
            let (out, truth) = (
                d.path().join(format!("{tag}.csv.gz")),
                d.path().join(format!("{tag}.json")),
            );
            write_synth(&p, &out, &truth).unwrap();
            (std::fs::read(out).unwrap(), std::fs::read(truth).unwrap())
        };
        let a = files(1, "a");
        assert_eq!(a, files(1, "b"));
        let c = files(2, "c");
        assert_ne!(a.0, c.0);
        assert_ne!(a.1, c.1);
    }

    #[test]
    fn trace_synth_plants_what_the_truth_says() {
        let p = SynthParams::default();
        let (records, truth) = synth(&p).unwrap();
        assert_eq!(records.len() as u64, p.requests);
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("p.csv.gz");
        let t = write_synth(&p, &out, &d.path().join("p.json")).unwrap();
        let parsed = read_all(&out).unwrap();
        assert_eq!(parsed.len(), records.len());
        assert!(parsed.iter().zip(&records).all(|(a, (b, _))| a == b));
        assert_eq!(t.hot, truth.hot);

        let ext = |r: &Record| ExtentRef {
            path: format!("/{}", r.volume),
            index: r.offset / p.extent_size,
        };
        // Every request stays inside one extent, 4 KiB aligned, 4..64 KiB.
        for (r, _) in &records {
            assert_eq!(r.offset / p.extent_size, (r.end() - 1) / p.extent_size);
            assert!(r.offset % 4096 == 0 && r.size % 4096 == 0);
            assert!((4096..=65536).contains(&r.size));
        }
        assert!(records.windows(2).all(|w| w[0].0.time_us < w[1].0.time_us));
        // The planted sets are disjoint and as large as asked.
        let hot: BTreeSet<_> = truth.hot.iter().cloned().collect();
        let nightly: BTreeSet<_> = truth.nightly.iter().cloned().collect();
        let grouped: BTreeSet<_> = truth.groups.iter().flatten().cloned().collect();
        assert_eq!(hot.len(), 13); // 10% of 128
        assert_eq!(nightly.len(), 4);
        assert_eq!(grouped.len(), 24);
        assert_eq!(truth.groups.len(), 6);
        assert!(hot.is_disjoint(&nightly) && hot.is_disjoint(&grouped));
        assert!(nightly.is_disjoint(&grouped));
        // The hot set takes about hot_share of the single requests.
        let singles: Vec<&Record> = records
            .iter()
            .filter(|(_, k)| *k == Kind::Single)
            .map(|(r, _)| r)
            .collect();
        let hot_singles = singles.iter().filter(|r| hot.contains(&ext(r))).count();
        let share = hot_singles as f64 / singles.len() as f64;
        assert!((share - p.hot_share).abs() < 0.03, "hot share {share}");
        // 13 hot extents take ~70% of single requests: far above any other extent.
        let mut counts: HashMap<ExtentRef, usize> = HashMap::new();
        for r in &singles {
            *counts.entry(ext(r)).or_default() += 1;
        }
        let coldest_hot = hot.iter().map(|e| counts[e]).min().unwrap();
        let busiest_other = counts
            .iter()
            .filter(|(e, _)| !hot.contains(e))
            .map(|(_, &c)| c)
            .max()
            .unwrap();
        assert!(
            coldest_hot > 3 * busiest_other,
            "{coldest_hot} vs {busiest_other}"
        );
        // Every burst is consecutive and touches each member of its group once.
        let mut i = 0;
        let mut bursts = 0;
        while i < records.len() {
            if let Kind::Burst { burst, group } = records[i].1 {
                let n = p.group_size as usize;
                let run = &records[i..i + n];
                assert!(
                    run.iter().all(|(_, k)| *k == records[i].1),
                    "burst {burst} split"
                );
                let members: BTreeSet<_> = run.iter().map(|(r, _)| ext(r)).collect();
                let want: BTreeSet<_> = truth.groups[group].iter().cloned().collect();
                assert_eq!(members, want);
                bursts += 1;
                i += n;
            } else {
                i += 1;
            }
        }
        assert_eq!(bursts, 750); // 15% of 20000 requests in bursts of 4
                                 // Nightly extents are touched only during the night hour, and on every day.
        let mut days = BTreeSet::new();
        for (r, k) in &records {
            if nightly.contains(&ext(r)) {
                assert_eq!(*k, Kind::Nightly);
                assert_eq!((r.time_us / US_PER_HOUR) % 24, u64::from(p.night_hour));
                days.insert(r.time_us / US_PER_DAY);
            }
        }
        assert_eq!(days.len(), p.days as usize);
        // Daily cycle: a busy hour sees several times the traffic of a quiet one.
        let mut per_hour = [0u64; 24];
        for (r, _) in &records {
            per_hour[((r.time_us / US_PER_HOUR) % 24) as usize] += 1;
        }
        let day: u64 = per_hour[8..18].iter().sum::<u64>() / 10;
        let night: u64 = (per_hour[..2].iter().sum::<u64>()
            + per_hour[3..8].iter().sum::<u64>()
            + per_hour[18..].iter().sum::<u64>())
            / 13;
        assert!(day > 3 * night, "day {day}/h vs night {night}/h");
        // The truth names volumes and extents as the mount sees them.
        assert_eq!(truth.volumes[1].name, "vol1");
        assert_eq!(truth.volumes[1].size_bytes, 64 << 20);
        assert!(truth
            .hot
            .iter()
            .all(|e| e.index < 64 && e.path.starts_with("/vol")));
    }

    #[test]
    fn trace_synth_rejects_impossible_params() {
        let bad = [
            SynthParams {
                extents_per_volume: 10,
                ..SynthParams::default()
            },
            SynthParams {
                extent_size: 1000,
                ..SynthParams::default()
            },
            SynthParams {
                hot_share: 1.5,
                ..SynthParams::default()
            },
            SynthParams {
                night_hour: 24,
                ..SynthParams::default()
            },
        ];
        for p in bad {
            assert!(synth(&p).is_err(), "{p:?}");
        }
    }

    fn fast(verify: bool) -> ReplayOpts {
        ReplayOpts {
            speed: None,
            verify,
            limit: None,
            direct: false,
        }
    }

    #[test]
    fn trace_replay_verifies_synthetic_trace() {
        let d = tempfile::tempdir().unwrap();
        let mount = d.path().join("mnt");
        std::fs::create_dir(&mount).unwrap();
        let trace = d.path().join("s.csv");
        let (records, _) = synth(&small_params()).unwrap();
        let records: Vec<Record> = records.into_iter().map(|(r, _)| r).collect();
        write_csv(&trace, &records).unwrap();
        let s = replay(&trace, &mount, &fast(true)).unwrap();
        assert_eq!(s.verify_errors, 0, "{:?}", s.mismatches);
        assert_eq!(s.requests, 3000);
        assert_eq!(s.reads + s.writes, 3000);
        assert_eq!(s.volumes, 2);
        assert!(s.lag_ms_max.is_none());
        for v in ["vol0", "vol1"] {
            let end = records
                .iter()
                .filter(|r| r.volume == v)
                .map(Record::end)
                .max()
                .unwrap();
            assert_eq!(std::fs::metadata(mount.join(v)).unwrap().len(), end);
        }
        // A limit replays only the first requests (not verified: the files now hold data
        // this shorter replay does not write).
        let again = replay(
            &trace,
            &mount,
            &ReplayOpts {
                limit: Some(100),
                ..fast(false)
            },
        )
        .unwrap();
        assert_eq!(again.requests, 100);
    }

    #[test]
    fn trace_replay_sparse_reads_zeros_and_sizes() {
        let d = tempfile::tempdir().unwrap();
        let trace = write(
            d.path(),
            "t.csv",
            &format!(
                "{HEADER}\n\
                 0,W,1048576,8192,a\n\
                 1,R,0,4096,a\n\
                 2,R,1044480,8192,a\n\
                 3,W,1050624,4096,a\n\
                 4,R,1048576,8192,a\n\
                 5,R,5000000,100,b\n"
            ),
        );
        let s = replay(&trace, d.path(), &fast(true)).unwrap();
        assert_eq!(s.verify_errors, 0, "{:?}", s.mismatches);
        assert_eq!((s.reads, s.writes), (4, 2));
        assert_eq!(
            (s.bytes_read, s.bytes_written),
            (4096 + 8192 + 8192 + 100, 12288)
        );
        let a = std::fs::read(d.path().join("a")).unwrap();
        assert_eq!(a.len(), 1048576 + 8192);
        assert!(a[..1048576].iter().all(|&b| b == 0));
        assert!(a[1048576..].iter().filter(|&&b| b == 0).count() < 200);
        // The second write replaced the tail of the first.
        let mut want = vec![0u8; 4096];
        fill_pattern(2, 1050624, &mut want);
        assert_eq!(&a[1050624..1054720], &want[..]);
        let b = std::fs::metadata(d.path().join("b")).unwrap();
        assert_eq!(b.len(), 5000100);
        // Sparse: the never-written volume has (almost) no blocks.
        use std::os::unix::fs::MetadataExt;
        assert!(b.blocks() * 512 < 1 << 20, "{} blocks", b.blocks());
        // An existing longer file is never shortened.
        let big = d.path().join("a");
        File::options()
            .write(true)
            .open(&big)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        replay(&trace, d.path(), &fast(false)).unwrap();
        assert_eq!(std::fs::metadata(&big).unwrap().len(), 4 << 20);
    }

    #[test]
    fn trace_replay_verify_catches_tampering() {
        let d = tempfile::tempdir().unwrap();
        let mut sizes = BTreeMap::new();
        sizes.insert("v".to_string(), 1 << 20);
        let mut rp = Replayer::new(d.path(), &sizes, true, false).unwrap();
        rp.apply(&rec(0, Op::Write, 4096, 8192, "v")).unwrap();
        rp.apply(&rec(1, Op::Read, 0, 16384, "v")).unwrap();
        assert_eq!(rp.stats.verify_errors, 0);
        // Someone else changes a written byte and a never-written one.
        let f = File::options()
            .read(true)
            .write(true)
            .open(d.path().join("v"))
            .unwrap();
        let mut byte = [0u8];
        f.read_exact_at(&mut byte, 5000).unwrap();
        f.write_all_at(&[!byte[0]], 5000).unwrap();
        f.write_all_at(&[1], 20000).unwrap();
        rp.apply(&rec(2, Op::Read, 4096, 4096, "v")).unwrap();
        rp.apply(&rec(3, Op::Read, 16384, 8192, "v")).unwrap();
        rp.apply(&rec(4, Op::Read, 8192, 4096, "v")).unwrap();
        assert_eq!(rp.stats.verify_errors, 2);
        let m = &rp.stats.mismatches;
        assert_eq!((m[0].offset, m[0].expected.as_str()), (5000, "write #1"));
        assert_eq!((m[1].offset, m[1].expected.as_str()), (20000, "zeros"));

        // Through replay(): a file with stray bytes where the trace reads unwritten space.
        let trace = write(
            d.path(),
            "t.csv",
            &format!("{HEADER}\n0,W,0,4096,w\n1,R,0,8192,w\n"),
        );
        let mnt = d.path().join("m");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::write(mnt.join("w"), vec![7u8; 8192]).unwrap();
        let s = replay(&trace, &mnt, &fast(true)).unwrap();
        assert_eq!(s.verify_errors, 1);
        assert_eq!(s.mismatches[0].offset, 4096);
        assert_eq!(
            run(TraceCmd::Replay {
                trace,
                mount: mnt,
                speed: 1.0,
                fast: true,
                verify: true,
                limit: None,
                direct: false,
                json: true,
            })
            .unwrap(),
            1
        );
    }

    #[test]
    fn trace_replay_errors_are_clear() {
        let d = tempfile::tempdir().unwrap();
        let trace = write(d.path(), "t.csv", &format!("{HEADER}\n0,R,0,10,a\n"));
        let err = replay(&trace, &d.path().join("nope"), &fast(false)).unwrap_err();
        assert!(
            format!("{err:#}").contains("not an existing directory"),
            "{err:#}"
        );
        let err = replay(&d.path().join("missing.csv"), d.path(), &fast(false)).unwrap_err();
        assert!(
            format!("{err:#}").contains("missing.csv: cannot open"),
            "{err:#}"
        );
        for speed in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let opts = ReplayOpts {
                speed: Some(speed),
                ..fast(false)
            };
            assert!(replay(&trace, d.path(), &opts).is_err());
        }
    }

    #[test]
    fn trace_replay_keeps_the_schedule() {
        let d = tempfile::tempdir().unwrap();
        // 300 ms of trace at 10x: about 30 ms.
        let trace = write(
            d.path(),
            "t.csv",
            &format!("{HEADER}\n1000000,W,0,4096,a\n1150000,R,0,4096,a\n1300000,R,0,4096,a\n"),
        );
        let opts = ReplayOpts {
            speed: Some(10.0),
            ..fast(true)
        };
        let s = replay(&trace, d.path(), &opts).unwrap();
        assert!(s.elapsed_s >= 0.03, "{}", s.elapsed_s);
        assert!(s.lag_ms_max.is_some() && s.lag_ms_mean.is_some());
        assert_eq!(s.verify_errors, 0);
    }

    #[test]
    fn trace_cli_checks_speed() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(subcommand)]
            cmd: TraceCmd,
        }
        let parse = |args: &[&str]| Cli::try_parse_from(["x"].iter().chain(args));
        assert!(parse(&["replay", "t", "m", "--speed", "0"]).is_err());
        assert!(parse(&["replay", "t", "m", "--speed", "inf"]).is_err());
        assert!(parse(&["replay", "t", "m", "--speed", "2", "--fast"]).is_err());
        match parse(&["replay", "t", "m", "--fast"]).unwrap().cmd {
            TraceCmd::Replay { speed, fast, .. } => assert!(fast && speed == 1.0),
            _ => unreachable!(),
        }
        assert!(parse(&["synth", "--out", "x.csv", "--extent-size", "256KiB"]).is_ok());
        assert_eq!(
            default_truth_path(Path::new("f/planted.csv.gz")),
            Path::new("f/planted.truth.json")
        );
    }

    #[test]
    fn trace_real_hplajw_parses() {
        let path = Path::new(REAL_TRACE);
        if !path.exists() {
            eprintln!("skipping trace_real_hplajw_parses: {REAL_TRACE} is absent");
            return;
        }
        let s = stats(path, 1 << 20).unwrap();
        assert_eq!(s.requests, 44_519);
        assert_eq!(s.volumes.len(), 2);
        assert_eq!(s.volumes[0].name, "hplajw_disk0");
        assert_eq!((s.reads, s.writes), (13_040, 31_479));
        assert_eq!(s.extents, 257);
        assert!((s.span_hours - 167.5).abs() < 0.1, "{}", s.span_hours);
        assert!((s.top10_share - 0.72).abs() < 0.02, "{}", s.top10_share);
    }
}
