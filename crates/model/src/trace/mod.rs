//! Block traces: a reader (our CSV or the MSR Cambridge format, plain or gzip), replay against
//! files on a mount (optionally verifying every read against a model of what was written),
//! summary statistics, and a synthetic trace generator with a planted hot set, co-access groups
//! and a daily cycle (with a truth file saying what was planted).
//!
//! Volume `V` of a trace is the file `MOUNT/V`; byte offsets map 1:1 onto it.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

mod replay;
mod synth;

pub use replay::*;
pub use synth::*;

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
pub(crate) const COLUMNS: [&str; 5] =
    ["timestamp_us", "op", "offset_bytes", "size_bytes", "volume"];
pub(crate) const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// MSR Cambridge timestamps are Windows FILETIME: 100 ns ticks.
pub(crate) const FILETIME_TICKS_PER_US: u64 = 10;
pub(crate) const MSR_COLUMNS: usize = 7;
pub(crate) const US_PER_HOUR: u64 = 3_600_000_000;
pub(crate) const US_PER_DAY: u64 = 24 * US_PER_HOUR;
/// Synthetic requests are whole 4 KiB blocks (the usual block and page size).
pub(crate) const BLOCK_BYTES: u64 = 4096;

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
pub(crate) enum Format {
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

pub(crate) fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

pub(crate) fn num<T: std::str::FromStr>(field: &str, what: &str) -> anyhow::Result<T> {
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

pub(crate) fn write_lines(w: &mut impl Write, records: &[Record]) -> std::io::Result<()> {
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

#[cfg(test)]
mod tests;
