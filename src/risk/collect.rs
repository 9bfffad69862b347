//! Disk-health collectors for the failure model (issue 6): a disk's SMART snapshot from
//! smartctl's JSON (run here, or written to a file by the operator's own tooling), from a
//! node_exporter textfile written by the smartmon scripts, I/O latency from
//! `/sys/block/<dev>/stat`, and which block device a pool disk's directory lives on.
//!
//! Everything here is a pure parser or a bounded probe: no pool state, no background work. The
//! caller decides how often to collect and what a failure to collect means.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::model::ATTRS;

/// smartctl's JSON for one disk is 5-40 KiB (`-x` with long logs stays well under 1 MiB);
/// anything bigger is not smartctl and is refused rather than buffered.
const SMARTCTL_OUTPUT_BYTES_MAX: usize = 4 << 20;
/// Same bound for health files an operator's tooling drops next to the pool.
const HEALTH_FILE_BYTES_MAX: usize = 4 << 20;
/// How often a running smartctl is checked for exit: short next to the 1-3 s smartctl
/// takes, long enough that waiting costs nothing measurable.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// One disk's health as last collected.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// ATA attribute id -> raw count, for every attribute the source reported. Packed raw
    /// fields are already decoded to their leading count (see `raw_count`).
    pub smart: BTreeMap<u32, u64>,
    pub temperature_c: Option<f64>,
    pub power_on_hours: Option<u64>,
    pub model_name: Option<String>,
    pub serial: Option<String>,
    /// The drive's own overall verdict (`smartctl -H`); None when the source did not say.
    pub smart_passed: Option<bool>,
    pub nvme: Option<NvmeHealth>,
    /// Where the snapshot came from, for messages: "smartctl /dev/sda", "file 3.json".
    pub source: String,
}

/// The NVMe SMART / Health Information log page (NVMe base spec, log identifier 02h), as
/// smartctl decodes it. Fields are optional so a hand-written or older document with some of
/// them missing still yields the rest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NvmeHealth {
    /// Bit field: 0 spare below threshold, 1 temperature, 2 reliability degraded, 3 read-only,
    /// 4 volatile backup failed.
    pub critical_warning: Option<u64>,
    pub media_errors: Option<u64>,
    /// Vendor estimate of life used, may exceed 100.
    pub percentage_used: Option<u64>,
    pub available_spare: Option<u64>,
    pub available_spare_threshold: Option<u64>,
    pub num_err_log_entries: Option<u64>,
    pub unsafe_shutdowns: Option<u64>,
    pub power_on_hours: Option<u64>,
}

impl Health {
    /// The model's inputs, in `model::ATTRS` order (1, 5, 9, 187, 188, 194, 197, 198).
    ///
    /// The model was fit on ATA raw values, so ATA attributes go in as they are, except:
    /// - 194 comes from `temperature_c` when known: drives pack min/max into the upper bytes
    ///   of the raw field, and only the current temperature is comparable across drives.
    /// - 9 falls back to `power_on_hours` when the drive has no attribute 9 (NVMe, SAS).
    ///
    /// NVMe drives have no ATA attributes; their health log's documented equivalents stand in:
    /// - `media_errors` (unrecovered data integrity errors) -> 187 (reported uncorrectable)
    ///   and 197 (sectors the drive could not read), the two counters whose growth the model
    ///   weighs most;
    /// - `critical_warning != 0` -> 5 = 1: the drive itself declared its spare, reliability or
    ///   media degraded, which is what a reallocation event says on a disk; 1 is the smallest
    ///   count that reads as "an event happened" without inventing a magnitude. 0 otherwise;
    /// - `power_on_hours` -> 9 and the temperature -> 194;
    /// - `num_err_log_entries` is left out: it counts host-side command errors (aborted
    ///   commands, invalid fields during probing), which grow on healthy drives;
    /// - 1, 188 and 198 have no equivalent and stay None.
    pub fn model_attrs(&self) -> [Option<f64>; ATTRS.len()] {
        let mut out = [None; ATTRS.len()];
        for (slot, &id) in out.iter_mut().zip(ATTRS.iter()) {
            *slot = self.model_attr(id);
        }
        out
    }

    fn model_attr(&self, id: u32) -> Option<f64> {
        let ata = self.smart.get(&id).map(|&v| v as f64);
        let nvme = self.nvme.as_ref();
        match id {
            194 => self.temperature_c.or(ata),
            9 => ata.or(self.power_on_hours.map(|h| h as f64)),
            5 => ata.or_else(|| {
                nvme?
                    .critical_warning
                    .map(|w| if w != 0 { 1.0 } else { 0.0 })
            }),
            187 | 197 => ata.or_else(|| Some(nvme?.media_errors? as f64)),
            _ => ata,
        }
    }
}

/// Why a document could not be read. `line` is 1-based when the format has lines to blame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub line: Option<usize>,
    pub msg: String,
}

impl ParseError {
    fn new(msg: impl Into<String>) -> ParseError {
        ParseError {
            line: None,
            msg: msg.into(),
        }
    }

    fn at(line: usize, msg: impl Into<String>) -> ParseError {
        ParseError {
            line: Some(line),
            msg: msg.into(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}", self.msg),
            None => f.write_str(&self.msg),
        }
    }
}

impl std::error::Error for ParseError {}

/// A JSON number as a count. Counters wider than 64 bits (NVMe's are 128-bit) arrive as
/// floats and saturate, which still reads as "very many".
fn json_u64(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

/// The decimal number a string starts with ("37 (Min/Max 18/45)" -> 37).
fn leading_u64(s: &str) -> Option<u64> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s[..end].parse().ok()
}

/// The count an attribute's raw field stands for. `raw.value` is the whole 48-bit field, which
/// for some attributes packs several numbers: 194 "37 (Min/Max 18/45)" is 193274708005, 9
/// "22843h+25m+42.123s" keeps milliseconds in the upper bytes, Seagate's 188 "0 0 0" is three
/// 16-bit counters. `raw.string` is decoded with smartctl's drive database and starts with the
/// count itself, so its leading number wins; hex renderings ("0x...") are the field verbatim
/// and fall back to `raw.value`, as do strings without a leading number.
fn raw_count(value: Option<u64>, string: Option<&str>) -> Option<u64> {
    string
        .map(str::trim_start)
        .filter(|s| !s.starts_with("0x"))
        .and_then(leading_u64)
        .or(value)
}

/// Reads a smartctl 7.x `--json` document (`-a` or `-x`; ATA, NVMe, or SCSI's common fields).
///
/// smartctl reports failure in two ways, kept apart on purpose: exit-status bits 0-1 (command
/// line not understood, device could not be opened or identified) mean there is no health data
/// and give an error with smartctl's own messages; the higher bits (3: the drive says it is
/// failing, 4-5: attributes at or below threshold, 6-7: error and self-test logs have entries)
/// are findings about the disk and are exactly what must not be lost, so they give
/// `smart_passed = Some(false)` (bit 3) and the data. Error messages next to data (bit 2: a
/// log could not be read) are dropped for the same reason: a dying disk often fails some
/// commands. A document with no SMART data at all is an error. `source` is the device the
/// document names ("/dev/sda"), for the caller to qualify.
pub fn parse_smartctl_json(text: &str) -> Result<Health, ParseError> {
    let doc: Value = serde_json::from_str(text).map_err(|e| {
        // serde_json's message ends in " at line L column C"; the line goes into `line`.
        let full = e.to_string();
        let msg = full
            .rsplit_once(" at line ")
            .map_or(full.as_str(), |(m, _)| m);
        ParseError {
            line: (e.line() > 0).then_some(e.line()),
            msg: format!("not JSON: {msg} (column {})", e.column()),
        }
    })?;
    if !doc.is_object() {
        return Err(ParseError::new(
            "not a smartctl JSON document (not an object)",
        ));
    }
    let (status, errors) = smartctl_status(&doc)?;
    let mut h = Health {
        source: doc
            .pointer("/device/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        ..Health::default()
    };
    let table = doc.get("ata_smart_attributes");
    if let Some(t) = table {
        h.smart = ata_attributes(t)?;
    }
    let log = doc.get("nvme_smart_health_information_log");
    if let Some(log) = log {
        h.nvme = Some(nvme_log(log)?);
    }
    h.temperature_c = doc
        .pointer("/temperature/current")
        .and_then(Value::as_f64)
        .or_else(|| log?.get("temperature")?.as_f64())
        .or_else(|| h.smart.get(&194).map(|&t| t as f64));
    h.power_on_hours = doc
        .pointer("/power_on_time/hours")
        .and_then(json_u64)
        .or_else(|| h.nvme.as_ref()?.power_on_hours);
    let text_field = |k: &str| {
        doc.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
    };
    h.model_name = text_field("model_name").or_else(|| text_field("scsi_model_name"));
    h.serial = text_field("serial_number");
    let passed = doc.pointer("/smart_status/passed").and_then(Value::as_bool);
    h.smart_passed = if status & 0b1000 != 0 {
        Some(false)
    } else {
        passed
    };
    if table.is_none() && log.is_none() && passed.is_none() {
        return Err(ParseError::new(if errors.is_empty() {
            "no SMART data in the document".to_string()
        } else {
            errors.join("; ")
        }));
    }
    Ok(h)
}

/// smartctl's exit status and error messages; bits 0-1 (no data at all) are an error.
fn smartctl_status(doc: &Value) -> Result<(u64, Vec<&str>), ParseError> {
    let errors: Vec<&str> = doc
        .pointer("/smartctl/messages")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .filter(|m| m.get("severity").and_then(Value::as_str) == Some("error"))
                .filter_map(|m| m.get("string").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    // Absent in hand-written documents: nothing failed.
    let status = doc
        .pointer("/smartctl/exit_status")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if status & 0b11 != 0 {
        let what = if errors.is_empty() {
            if status & 1 != 0 {
                "command line not understood".to_string()
            } else {
                "device open failed".to_string()
            }
        } else {
            errors.join("; ")
        };
        return Err(ParseError::new(format!(
            "smartctl exit status {status}: {what}"
        )));
    }
    Ok((status, errors))
}

/// The ATA attribute table: id -> raw count.
fn ata_attributes(t: &Value) -> Result<BTreeMap<u32, u64>, ParseError> {
    let rows = t
        .get("table")
        .and_then(Value::as_array)
        .ok_or_else(|| ParseError::new("ata_smart_attributes has no table (expected an array)"))?;
    let mut out = BTreeMap::new();
    for (i, row) in rows.iter().enumerate() {
        let id = row
            .get("id")
            .and_then(Value::as_u64)
            .filter(|id| (1..=255).contains(id))
            .ok_or_else(|| {
                ParseError::new(format!(
                    "ata_smart_attributes.table[{i}]: no attribute id in 1..=255"
                ))
            })?;
        let raw = row.get("raw");
        let value = raw.and_then(|r| r.get("value")).and_then(json_u64);
        let string = raw.and_then(|r| r.get("string")).and_then(Value::as_str);
        let count = raw_count(value, string).ok_or_else(|| {
            ParseError::new(format!(
                "ata_smart_attributes.table[{i}] (id {id}): no raw value"
            ))
        })?;
        out.insert(id as u32, count);
    }
    Ok(out)
}

fn nvme_log(log: &Value) -> Result<NvmeHealth, ParseError> {
    if !log.is_object() {
        return Err(ParseError::new(
            "nvme_smart_health_information_log is not an object",
        ));
    }
    let f = |k: &str| log.get(k).and_then(json_u64);
    Ok(NvmeHealth {
        critical_warning: f("critical_warning"),
        media_errors: f("media_errors"),
        percentage_used: f("percentage_used"),
        available_spare: f("available_spare"),
        available_spare_threshold: f("available_spare_threshold"),
        num_err_log_entries: f("num_err_log_entries"),
        unsafe_shutdowns: f("unsafe_shutdowns"),
        power_on_hours: f("power_on_hours"),
    })
}

/// One sample line of the Prometheus text exposition format.
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

impl Sample<'_> {
    fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.as_str())
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Parses `name{label="value",...} value [timestamp]`, with `\\`, `\"` and `\n` escapes in
/// label values.
fn parse_sample(line: &str) -> Result<Sample<'_>, String> {
    let end = line.find(|c: char| !is_name_char(c)).unwrap_or(line.len());
    let name = &line[..end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err("no metric name".into());
    }
    let mut rest = &line[end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            if rest.is_empty() {
                return Err("unterminated label set (no '}')".into());
            }
            let n_end = rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len());
            let key = &rest[..n_end];
            if key.is_empty() {
                return Err(format!("bad label name at {:?}", truncate(rest)));
            }
            rest = rest[n_end..].trim_start();
            rest = rest
                .strip_prefix('=')
                .ok_or_else(|| format!("label {key}: expected '='"))?
                .trim_start();
            rest = rest
                .strip_prefix('"')
                .ok_or_else(|| format!("label {key}: value not quoted"))?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let close = loop {
                match chars.next() {
                    None => return Err(format!("unterminated value of label {key}")),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        Some((_, c)) => return Err(format!("label {key}: bad escape \\{c}")),
                        None => return Err(format!("unterminated value of label {key}")),
                    },
                    Some((_, c)) => value.push(c),
                }
            };
            labels.push((key, value));
            rest = rest[close + 1..].trim_start();
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.starts_with('}') {
                if rest.is_empty() {
                    return Err("unterminated label set (no '}')".into());
                }
                return Err(format!("expected ',' or '}}' at {:?}", truncate(rest)));
            }
        }
    } else if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
        return Err(format!(
            "unexpected {:?} after the metric name",
            truncate(rest)
        ));
    }
    let mut fields = rest.split_whitespace();
    let v = fields.next().ok_or("no value")?;
    let value: f64 = v
        .parse()
        .map_err(|_| format!("value {v:?} is not a number"))?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("timestamp {ts:?} is not an integer"))?;
    }
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected {extra:?} after the value"));
    }
    Ok(Sample {
        name,
        labels,
        value,
    })
}

fn truncate(s: &str) -> &str {
    s.char_indices().nth(20).map_or(s, |(i, _)| &s[..i])
}

/// ATA ids of the attribute names smartctl's drive database gives them (lowercased, '-' as
/// '_', as the smartmon scripts write them). Used only when a line has no `smart_id`.
const ATTR_IDS: [(&str, u32); 24] = [
    ("raw_read_error_rate", 1),
    ("spin_up_time", 3),
    ("start_stop_count", 4),
    ("reallocated_sector_ct", 5),
    ("seek_error_rate", 7),
    ("power_on_hours", 9),
    ("spin_retry_count", 10),
    ("power_cycle_count", 12),
    ("runtime_bad_block", 183),
    ("end_to_end_error", 184),
    ("reported_uncorrect", 187),
    ("command_timeout", 188),
    ("airflow_temperature_cel", 190),
    ("g_sense_error_rate", 191),
    ("power_off_retract_count", 192),
    ("load_cycle_count", 193),
    ("temperature_celsius", 194),
    ("hardware_ecc_recovered", 195),
    ("reallocated_event_count", 196),
    ("current_pending_sector", 197),
    ("offline_uncorrectable", 198),
    ("udma_crc_error_count", 199),
    ("total_lbas_written", 241),
    ("total_lbas_read", 242),
];

/// Names whose `smart_id` label smartmon.sh gets wrong on its SCSI path: it labels the grown
/// defect list 12 (the power-cycle id) and LBAs written 242 (LBAs read). The grown defect list
/// is SCSI's count of remapped blocks, the documented counterpart of ATA 5.
const SMART_ID_OVERRIDES: [(&str, u32); 2] =
    [("grown_defects_count", 5), ("total_lbas_written", 241)];

fn attr_id(name: &str) -> Option<u32> {
    ATTR_IDS.iter().find(|(n, _)| *n == name).map(|(_, id)| *id)
}

/// Reads a node_exporter textfile as written by smartmon.sh (`smartmon_<attribute>_raw_value
/// {disk=..,type=..,smart_id=".."}`) or smartmon.py (`smartmon_attr_raw_value{name=..}`), plus
/// the `device_info` and `device_smart_healthy` families. Other families and comments are
/// skipped, but every line must be well-formed: a torn or hand-edited file is reported with
/// its line number rather than half-read.
///
/// The scripts write one file for all disks; this reads the first `disk` label it meets and
/// ignores lines about other disks, so the operator's file for pool disk N should name only
/// that disk (or name it first). `source` is that disk's label. smartmon.sh prints raw values
/// with `%e` (7 significant digits), so large counters arrive rounded; counts are rounded to
/// the nearest integer.
pub fn parse_textfile(text: &str) -> Result<Health, ParseError> {
    let mut h = Health::default();
    // The first disk's `disk` and `type` labels: disks behind a RAID card share `disk`
    // ("/dev/bus/0") and differ in `type` ("sat+megaraid,0").
    let mut disk: Option<(String, Option<String>)> = None;
    let mut standby = false;
    for (i, raw_line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw_line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let s = parse_sample(line).map_err(|m| ParseError::at(line_no, m))?;
        let Some(family) = s.name.strip_prefix("smartmon_") else {
            continue;
        };
        if let Some(d) = s.label("disk") {
            let t = s.label("type");
            match &disk {
                None => disk = Some((d.to_string(), t.map(String::from))),
                Some((fd, ft)) => {
                    let other_type = matches!((ft, t), (Some(a), Some(b)) if a != b);
                    if fd != d || other_type {
                        continue;
                    }
                }
            }
        }
        let nonempty = |k: &str| s.label(k).filter(|v| !v.is_empty()).map(String::from);
        match family {
            "device_info" => {
                h.model_name = nonempty("device_model").or_else(|| nonempty("product"));
                h.serial = nonempty("serial_number");
            }
            "device_smart_healthy" => h.smart_passed = Some(s.value != 0.0),
            "device_active" => standby = s.value == 0.0,
            _ => textfile_attr(&mut h, &s, family, line_no)?,
        }
    }
    let disk = disk.map(|(d, _)| d);
    if h.smart.is_empty() && h.smart_passed.is_none() {
        let d = disk.as_deref().unwrap_or("any disk");
        return Err(ParseError::new(if standby {
            format!("{d} was in standby when the script ran: no SMART data")
        } else {
            format!("no SMART data for {d}")
        }));
    }
    h.source = disk.unwrap_or_default();
    Ok(h)
}

/// One `smartmon_*_raw_value` sample into `h.smart` (other families are ignored).
fn textfile_attr(
    h: &mut Health,
    s: &Sample,
    family: &str,
    line_no: usize,
) -> Result<(), ParseError> {
    let id = if family == "attr_raw_value" {
        s.label("name").and_then(attr_id)
    } else if let Some(attr) = family.strip_suffix("_raw_value") {
        let fixed = SMART_ID_OVERRIDES.iter().find(|(n, _)| *n == attr);
        match (fixed, s.label("smart_id")) {
            (Some((_, id)), _) => Some(*id),
            (None, Some(sid)) => Some(sid.parse::<u32>().map_err(|_| {
                ParseError::at(line_no, format!("smart_id {sid:?} is not a number"))
            })?),
            (None, None) => attr_id(attr),
        }
    } else {
        None
    };
    let Some(id) = id else { return Ok(()) };
    if !(s.value.is_finite() && s.value >= 0.0) {
        return Err(ParseError::at(
            line_no,
            format!("{}: {} is not a count", s.name, s.value),
        ));
    }
    h.smart.insert(id, s.value.round() as u64);
    match id {
        194 => h.temperature_c = Some(s.value),
        9 => h.power_on_hours = Some(s.value.round() as u64),
        _ => {}
    }
    Ok(())
}

/// `/sys/block/<dev>/stat` (Documentation/block/stat.rst). Times are milliseconds; sectors
/// are 512 bytes whatever the device's sector size.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStats {
    pub read_ios: u64,
    pub read_merges: u64,
    pub read_sectors: u64,
    pub read_ticks_ms: u64,
    pub write_ios: u64,
    pub write_merges: u64,
    pub write_sectors: u64,
    pub write_ticks_ms: u64,
    pub in_flight: u64,
    pub io_ticks_ms: u64,
    pub time_in_queue_ms: u64,
    /// Discard fields: kernels from 4.18 on.
    pub discard_ios: Option<u64>,
    pub discard_merges: Option<u64>,
    pub discard_sectors: Option<u64>,
    pub discard_ticks_ms: Option<u64>,
    /// Flush fields: kernels from 5.5 on.
    pub flush_ios: Option<u64>,
    pub flush_ticks_ms: Option<u64>,
}

const STAT_FIELDS: [&str; 17] = [
    "read I/Os",
    "read merges",
    "read sectors",
    "read ticks",
    "write I/Os",
    "write merges",
    "write sectors",
    "write ticks",
    "in_flight",
    "io_ticks",
    "time_in_queue",
    "discard I/Os",
    "discard merges",
    "discard sectors",
    "discard ticks",
    "flush I/Os",
    "flush ticks",
];

/// Parses the one line of a block device's `stat` file. The field count says which kernel
/// wrote it (11, 15 or 17); any other count is not that file.
pub fn parse_sysfs_stat(text: &str) -> Result<DiskStats, ParseError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if ![11, 15, 17].contains(&words.len()) {
        return Err(ParseError::new(format!(
            "{} fields, expected 11, 15 or 17",
            words.len()
        )));
    }
    let mut v = [0u64; 17];
    for (i, w) in words.iter().enumerate() {
        v[i] = w.parse().map_err(|_| {
            ParseError::new(format!(
                "field {} ({}): {w:?} is not a count",
                i + 1,
                STAT_FIELDS[i]
            ))
        })?;
    }
    let opt = |i: usize| (i < words.len()).then_some(v[i]);
    Ok(DiskStats {
        read_ios: v[0],
        read_merges: v[1],
        read_sectors: v[2],
        read_ticks_ms: v[3],
        write_ios: v[4],
        write_merges: v[5],
        write_sectors: v[6],
        write_ticks_ms: v[7],
        in_flight: v[8],
        io_ticks_ms: v[9],
        time_in_queue_ms: v[10],
        discard_ios: opt(11),
        discard_merges: opt(12),
        discard_sectors: opt(13),
        discard_ticks_ms: opt(14),
        flush_ios: opt(15),
        flush_ticks_ms: opt(16),
    })
}

/// Mean milliseconds per completed read and per completed write between two snapshots of the
/// same device. None for a direction with no I/O in the interval, and when a counter went
/// backwards (device removed and re-added, or a 32-bit kernel's counter wrapped): a guess
/// there would read as a latency spike.
pub fn latency(prev: &DiskStats, now: &DiskStats) -> (Option<f64>, Option<f64>) {
    let per_io = |ios: fn(&DiskStats) -> u64, ticks: fn(&DiskStats) -> u64| {
        let n = ios(now).checked_sub(ios(prev)).filter(|&n| n > 0)?;
        let ms = ticks(now).checked_sub(ticks(prev))?;
        Some(ms as f64 / n as f64)
    };
    (
        per_io(|d| d.read_ios, |d| d.read_ticks_ms),
        per_io(|d| d.write_ios, |d| d.write_ticks_ms),
    )
}

/// The block device a path's filesystem lives on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDev {
    /// The whole device ("sda", "nvme0n1", "loop3"): SMART and `/sys/block/<name>` are per
    /// whole device, not per partition.
    pub name: String,
    /// The partition the filesystem is on ("sda1", "nvme0n1p2"), if any.
    pub partition: Option<String>,
    pub major: u32,
    pub minor: u32,
}

/// Which block device holds `path`. Ok(None) when no single one does: filesystems with
/// anonymous device numbers (major 0: tmpfs, overlayfs, btrfs, NFS, FUSE) or a number sysfs
/// does not know.
pub fn block_device_of(path: &Path) -> std::io::Result<Option<BlockDev>> {
    block_device_of_in(path, Path::new("/sys"))
}

/// `block_device_of` against another sysfs root, so tests can use a fake tree.
pub(crate) fn block_device_of_in(
    path: &Path,
    sys_root: &Path,
) -> std::io::Result<Option<BlockDev>> {
    let dev = std::fs::metadata(path)?.dev();
    block_device_by_number(libc::major(dev), libc::minor(dev), sys_root)
}

/// Resolves MAJ:MIN through `/sys/dev/block/MAJ:MIN`, a symlink to the device's directory in
/// the device tree; a partition's directory has a `partition` file and sits inside its disk's
/// directory, which is how the whole disk is found without parsing names (nvme0n1p1,
/// mmcblk0p1 and sda1 name partitions differently).
pub(crate) fn block_device_by_number(
    major: u32,
    minor: u32,
    sys_root: &Path,
) -> std::io::Result<Option<BlockDev>> {
    if major == 0 {
        return Ok(None);
    }
    let link = sys_root.join("dev/block").join(format!("{major}:{minor}"));
    let dir = match std::fs::canonicalize(&link) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let name_of = |p: &Path| -> std::io::Result<String> {
        p.file_name()
            .and_then(|n| n.to_str())
            .map(String::from)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: no device name", p.display()),
                )
            })
    };
    let (name, partition) = if dir.join("partition").exists() {
        let disk = dir.parent().unwrap_or(Path::new(""));
        (name_of(disk)?, Some(name_of(&dir)?))
    } else {
        (name_of(&dir)?, None)
    };
    Ok(Some(BlockDev {
        name,
        partition,
        major,
        minor,
    }))
}

/// Whether asking smartctl about the device can give health data: SCSI/SATA (sd*), NVMe and
/// old IDE (hd*) disks. Everything else is refused without running smartctl, because it would
/// only fail: loop, ram, zram, nbd, rbd and pmem devices are memory or files; dm-* and md*
/// are made of other disks (their members are what to check); sr is optical; virtio (vd*),
/// Xen (xvd*) and mmcblk have no SMART interface.
pub fn has_smart(dev: &BlockDev) -> bool {
    ["sd", "nvme", "hd"].iter().any(|p| dev.name.starts_with(p))
}

/// Runs `smartctl --json -a /dev/<name>` and parses its output. smartctl can hang for minutes
/// on a dying disk (each command waits out the drive's error recovery), so it is killed after
/// `timeout`; its output is capped at 4 MiB. Needs root (or CAP_SYS_RAWIO) on most systems;
/// without it the error names smartctl's permission message.
pub fn run_smartctl(dev: &BlockDev, timeout: Duration) -> Result<Health, String> {
    let path = format!("/dev/{}", dev.name);
    let mut cmd = Command::new("smartctl");
    cmd.args(["--json", "-a", &path]);
    let mut h = run_json_command(cmd, timeout, SMARTCTL_OUTPUT_BYTES_MAX)
        .map_err(|e| format!("smartctl {path}: {e}"))?;
    h.source = format!("smartctl {path}");
    Ok(h)
}

/// Spawns `cmd`, reads at most `output_bytes_max` bytes of its stdout, and parses them as
/// smartctl JSON. Its exit code is not looked at: smartctl's is a bit field that is also in
/// the document, where `parse_smartctl_json` reads it.
fn run_json_command(
    mut cmd: Command,
    timeout: Duration,
    output_bytes_max: usize,
) -> Result<Health, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("smartctl not installed".into())
        }
        Err(e) => return Err(format!("cannot run smartctl: {e}")),
    };
    let Some(stdout) = child.stdout.take() else {
        abandon(child);
        return Err("no stdout pipe".into());
    };
    // A thread drains the pipe so a child writing more than the pipe buffer is not blocked
    // while this thread polls; past the cap it stops reading and drops the pipe, so the child
    // gets EPIPE instead of waiting for the timeout.
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let r = stdout
            .take(output_bytes_max as u64 + 1)
            .read_to_end(&mut buf);
        r.map(|_| buf)
    });
    let deadline = Instant::now() + timeout;
    let mut status = None;
    loop {
        if status.is_none() {
            match child.try_wait() {
                Ok(s) => status = s,
                Err(e) => {
                    abandon(child);
                    return Err(format!("waiting for smartctl: {e}"));
                }
            }
        }
        if status.is_some() && reader.is_finished() {
            break;
        }
        if Instant::now() >= deadline {
            // The reader is left to finish on its own once the pipe closes.
            abandon(child);
            return Err(format!(
                "no answer within {} ms, killed",
                timeout.as_millis()
            ));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    let out = reader
        .join()
        .map_err(|_| "output reader panicked".to_string())?
        .map_err(|e| format!("reading output: {e}"))?;
    if out.len() > output_bytes_max {
        return Err(format!("output over {output_bytes_max} bytes"));
    }
    let text = String::from_utf8(out).map_err(|_| "output is not UTF-8".to_string())?;
    if text.trim().is_empty() {
        let code = status.map_or("?".to_string(), |s| s.to_string());
        return Err(format!("no output ({code})"));
    }
    parse_smartctl_json(&text).map_err(|e| e.to_string())
}

/// Kills a child without waiting for it here: smartctl stuck in an ioctl on a dying disk is in
/// uninterruptible sleep and dies only when the kernel gives up on the command, which can take
/// minutes. A thread reaps it then, so no zombie is left and the caller is not held up.
fn abandon(mut child: std::process::Child) {
    let _ = child.kill();
    std::thread::spawn(move || child.wait());
}

/// A health file that exists but could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileError {
    /// The file's name in its directory ("3.json").
    pub file: String,
    pub line: Option<usize>,
    pub msg: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file, self.msg),
            None => write!(f, "{}: {}", self.file, self.msg),
        }
    }
}

impl std::error::Error for FileError {}

fn read_capped(path: &Path, bytes_max: usize) -> std::io::Result<String> {
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(bytes_max as u64 + 1)
        .read_to_end(&mut buf)?;
    if buf.len() > bytes_max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("over {bytes_max} bytes"),
        ));
    }
    String::from_utf8(buf)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))
}

/// Health of pool disk `disk_id` from a file the operator's tooling maintains in `dir`, for
/// hosts where foreshard may not run smartctl itself (no root, disks behind a RAID card or in
/// another machine): `<id>.json` (smartctl's JSON) if present, else `<id>.prom` (a
/// smartmon textfile). None when neither exists; a file that exists but cannot be read or
/// parsed is an error naming it, never a silent fallback to the other file.
///
/// The file is opened once and read to the end, so a writer that replaces it with rename(2)
/// (as the textfile collector documentation asks: write a temporary file, then rename) is
/// seen either whole-old or whole-new. A writer that rewrites in place can be seen
/// half-written; that shows up as a parse error, not as wrong values.
pub fn read_health_file(dir: &Path, disk_id: u32) -> Option<Result<Health, FileError>> {
    type Parser = fn(&str) -> Result<Health, ParseError>;
    let kinds: [(&str, Parser); 2] = [("json", parse_smartctl_json), ("prom", parse_textfile)];
    for (ext, parse) in kinds {
        let file = format!("{disk_id}.{ext}");
        let path: PathBuf = dir.join(&file);
        let text = match read_capped(&path, HEALTH_FILE_BYTES_MAX) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Some(Err(FileError {
                    file,
                    line: None,
                    msg: e.to_string(),
                }))
            }
        };
        return Some(match parse(&text) {
            Ok(mut h) => {
                h.source = if h.source.is_empty() {
                    format!("file {file}")
                } else {
                    format!("file {file} ({})", h.source)
                };
                Ok(h)
            }
            Err(e) => Err(FileError {
                file,
                line: e.line,
                msg: e.msg,
            }),
        });
    }
    None
}

#[cfg(test)]
mod tests;
