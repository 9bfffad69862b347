//! One re-sharding run: a fresh pool, the trace replayed through it, the analyzer drained,
//! the "before" snapshot, `reshard --wait`, the "after" snapshot, fsck.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::analyze::{self, Snapshot};
use crate::cmd::Cmd;
use crate::pool::{self, Pool};
use crate::teardown::Teardown;
use crate::{log, signal};

/// The analyzer must have every replayed request within this.
const EVENTS_TIMEOUT: Duration = Duration::from_secs(300);
/// 'reshard --wait' (the migration runs at 16 MiB/s by default).
const RESHARD_TIMEOUT: Duration = Duration::from_secs(7200);
const REPLAY_TIMEOUT: Duration = Duration::from_secs(7200);

pub struct Ctx {
    pub bin: PathBuf,
    pub work: PathBuf,
    pub trace: PathBuf,
    /// The trace's requests ('trace stats').
    pub requests: u64,
    pub ndisks: usize,
    pub disk_bytes: u64,
    pub mount_args: Vec<String>,
    pub raw: Option<PathBuf>,
}

/// heat, shards and status as JSON, the size of every extent file, the daemon's memory.
fn snapshot(p: &Pool) -> anyhow::Result<(Snapshot, Value)> {
    let t = Duration::from_secs(120);
    let (heat, shards, status) = (
        p.json("heat", &[], t)?,
        p.json("shards", &[], t)?,
        p.json("status", &[], t)?,
    );
    let mut sizes = HashMap::new();
    for d in status["disks"].as_array().map_or(&[][..], Vec::as_slice) {
        let dir = Path::new(d["path"].as_str().unwrap_or("")).join("extents");
        extent_sizes(&dir, &mut sizes);
    }
    let mut mem = BTreeMap::new();
    if let Some(pid) = p.daemon_pid() {
        let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        for (k, name) in [("VmRSS:", "rss_bytes"), ("VmHWM:", "rss_peak_bytes")] {
            let kib = text.lines().find_map(|l| {
                l.strip_prefix(k)?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            });
            kib.map(|v| mem.insert(name.to_string(), v * 1024));
        }
    }
    let raw = json!({"heat": heat, "shards": shards, "status": status});
    Ok((
        Snapshot {
            heat,
            shards,
            status,
            sizes,
            mem,
        },
        raw,
    ))
}

/// name -> largest size of the files under `dir`, recursively.
fn extent_sizes(dir: &Path, out: &mut HashMap<String, u64>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            extent_sizes(&e.path(), out);
        } else if let Ok(m) = e.metadata() {
            let n = out
                .entry(e.file_name().to_string_lossy().into_owned())
                .or_default();
            *n = (*n).max(m.len());
        }
    }
}

/// `trace replay TRACE MNT --fast --direct --verify --json`; mismatches are an error.
fn replay(ctx: &Ctx, p: &Pool) -> anyhow::Result<Value> {
    log!(
        "replaying {} ({} requests): trace replay --fast --direct --verify",
        ctx.trace.display(),
        ctx.requests
    );
    let t = Instant::now();
    let c = Cmd::new(&ctx.bin)
        .args(["trace", "replay"])
        .arg(&ctx.trace)
        .arg(&p.mnt);
    let o = c
        .args(["--fast", "--direct", "--verify", "--json"])
        .timeout(REPLAY_TIMEOUT)
        .run()?;
    if !o.status.success() {
        bail!(
            "trace replay exited {} (a mismatch exits 1):\n{}{}\n{}",
            o.status,
            o.stdout,
            o.stderr,
            p.log_tail()
        );
    }
    let v: Value =
        serde_json::from_str(&o.stdout).context("trace replay --json printed no JSON")?;
    let mism = v["mismatches"].as_array().map_or(0, Vec::len);
    if v["verified"] != json!(true) || v["verify_errors"] != json!(0) || mism != 0 {
        bail!(
            "replay verification failed: verified={} verify_errors={} mismatches={mism}",
            v["verified"],
            v["verify_errors"]
        );
    }
    if v["requests"].as_u64() != Some(ctx.requests) {
        log!(
            "warning: replay issued {} requests, trace stats counted {}",
            v["requests"],
            ctx.requests
        );
    }
    log!(
        "replayed {} requests in {} ms, verified, 0 mismatches",
        v["requests"],
        t.elapsed().as_millis()
    );
    Ok(v)
}

/// Polls status until the analyzer applied every trace request; returns the wait in ms.
fn wait_events(ctx: &Ctx, p: &Pool) -> anyhow::Result<u64> {
    let t = Instant::now();
    let (mut prev, mut changed) = (None, Instant::now());
    loop {
        signal::check()?;
        let st = p
            .status()
            .context("foreshard status failed while waiting for the analyzer")?;
        let a = &st["access"];
        let n = |k: &str| a[k].as_u64().unwrap_or(0);
        let (posted, applied, dropped) =
            (n("events_posted"), n("events_applied"), n("events_dropped"));
        if applied >= ctx.requests {
            if applied > ctx.requests {
                log!("warning: the analyzer applied {applied} events for {} trace requests (posted {posted}, dropped {dropped})", ctx.requests);
            }
            if dropped > 0 {
                log!("warning: the analyzer dropped {dropped} events");
            }
            log!(
                "analyzer: {applied} events applied ({dropped} dropped) after {} ms of waiting",
                t.elapsed().as_millis()
            );
            return Ok(t.elapsed().as_millis() as u64);
        }
        if prev != Some((posted, applied, dropped)) {
            (prev, changed) = (Some((posted, applied, dropped)), Instant::now());
        }
        if applied + dropped == posted && changed.elapsed() > Duration::from_secs(10) {
            bail!("the analyzer stopped at {applied} events applied of {} trace requests (posted {posted}, dropped {dropped})\n{}", ctx.requests, p.log_tail());
        }
        if t.elapsed() > EVENTS_TIMEOUT {
            bail!(
                "the analyzer has {applied} of {} events after {EVENTS_TIMEOUT:?}",
                ctx.requests
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn mount(ctx: &Ctx, r: u32, td: &mut Teardown) -> anyhow::Result<Pool> {
    let mut mount_args = vec!["--reshard-interval-s".to_string(), "0".into()];
    mount_args.extend(ctx.mount_args.iter().cloned());
    let spec = pool::Spec {
        bin: &ctx.bin,
        dir: ctx.work.join(format!("run{r}")),
        ndisks: ctx.ndisks,
        disk_bytes: ctx.disk_bytes,
        need_loops: false,
        init_args: [
            "--replicas",
            &super::REPLICAS.to_string(),
            "--extent-size",
            super::EXTENT_SIZE,
        ]
        .map(String::from)
        .into(),
        mount_args,
    };
    let p = pool::up(&spec, td)?;
    if !p.disks.loops {
        log!(
            "warning: loop devices unavailable: the disks are plain directories on one filesystem"
        );
    }
    let st = p.status()?;
    if !st["access"].is_object() {
        bail!("status --json has no .access object: is the analyzer off (--no-access in the mount options) or the build old?");
    }
    log!(
        "mounted; migration budget {} bytes/s",
        st["migration"]["rate_bytes_per_s_max"]
    );
    Ok(p)
}

/// `reshard --wait --json`: the migration must finish its plan. Returns it and its wall ms.
fn reshard(p: &Pool) -> anyhow::Result<(Value, u64)> {
    log!("foreshard reshard --wait --json");
    let t = Instant::now();
    let v = p.json("reshard", &["--wait"], RESHARD_TIMEOUT)?;
    let wall_ms = t.elapsed().as_millis() as u64;
    let (moves, done) = (
        v["plan"]["moves"].as_u64().unwrap_or(0),
        v["migration"]["moves_done"].as_u64().unwrap_or(0),
    );
    if moves == 0 {
        log!("warning: the re-sharding plan moves nothing");
    }
    if done != moves {
        bail!(
            "the migration did {done} of {moves} moves (last_error: {})",
            v["migration"]["last_error"]
        );
    }
    if !v["migration"]["last_error"].is_null() {
        log!(
            "warning: migration last_error: {}",
            v["migration"]["last_error"]
        );
    }
    log!(
        "reshard: {moves} moves, {:.1} MiB, done in {wall_ms} ms",
        v["plan"]["bytes_to_move"].as_f64().unwrap_or(0.0) / 1048576.0
    );
    Ok((v, wall_ms))
}

/// One measurement on a fresh pool; returns its metrics document.
pub fn once(ctx: &Ctx, r: u32, runs: u32, td: &mut Teardown) -> anyhow::Result<Value> {
    log!(
        "run {r}/{runs}: {} on {} disks, {} replicas",
        ctx.trace.display(),
        ctx.ndisks,
        super::REPLICAS
    );
    let mark = td.len();
    let p = mount(ctx, r, td)?;
    let replay = replay(ctx, &p)?;
    let events_wait_ms = wait_events(ctx, &p)?;
    log!("snapshot before re-sharding");
    let (before, raw_before) = snapshot(&p)?;
    let (reshard, reshard_wall_ms) = reshard(&p)?;
    log!("snapshot after re-sharding");
    let (after, raw_after) = snapshot(&p)?;
    let fsck = p.json("fsck", &[], Duration::from_secs(1800));
    let fsck = fsck.ok().filter(|f| f["clean"] == json!(true));
    let fsck = fsck.with_context(|| {
        format!(
            "foreshard fsck {} is not clean after re-sharding",
            p.pool.display()
        )
    })?;
    log!(
        "fsck: clean ({} extents, {} replicas)",
        fsck["extents"],
        fsck["replicas_checked"]
    );
    let kind = if p.disks.loops {
        "loop-ext4"
    } else {
        "directories"
    };
    let run = analyze::Run {
        before,
        after,
        replay,
        reshard,
        fsck,
        disk_kind: kind.into(),
        trace_requests: ctx.requests,
        events_wait_ms,
        reshard_wall_ms,
    };
    let m = analyze::analyze(&run);
    if let Some(dir) = &ctx.raw {
        let d = dir.join(format!("run{r}"));
        fs::create_dir_all(&d)?;
        let all = json!({"replay": run.replay, "reshard": run.reshard, "fsck": run.fsck, "before": raw_before, "after": raw_after, "metrics": m});
        fs::write(d.join("raw.json"), serde_json::to_string_pretty(&all)?)?;
    }
    td.unwind_to(mark)?;
    Ok(m)
}
