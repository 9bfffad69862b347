//! The foreground phase: how recovery shares bandwidth with a client reading under each
//! `--recovery-profile`. The reader is fio (sequential 1 MiB O_DIRECT reads of a warm client
//! file, one job, psync, time-based), alone and then with disk1 yanked under it.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::data::{self, DataSet};
use super::fs::{check_status, pool_up, wait_ready, yank, IDLE_TIMEOUT, RECOVERY_TIMEOUT};
use super::timing::{self, mibs, Poll, Timings};
use super::{Ctx, Record};
use crate::cmd::{Background, Cmd};
use crate::fio::{self, Dir};
use crate::pool::{self, Pool};
use crate::teardown::Teardown;
use crate::{log, mounts};

pub const PROFILES: [&str; 3] = ["high_client_ops", "balanced", "high_recovery_ops"];
/// The reader alone, in seconds.
pub const IDLE_S: u64 = 5;
/// The reader runs this long before the yank.
pub const LEAD: Duration = Duration::from_secs(1);
/// Status poll interval while the reader runs (both runs alike).
const POLL: Duration = Duration::from_millis(200);
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Recovery's nominal share of the bandwidth while clients are active.
pub fn nominal_share(profile: &str) -> Option<f64> {
    match profile {
        "high_client_ops" => Some(0.25),
        "balanced" => Some(0.5),
        "high_recovery_ops" => Some(0.9),
        _ => None,
    }
}

fn reader(name: &str, file: &Path, runtime_s: u64, extra: &[String]) -> anyhow::Result<Background> {
    let c = Cmd::new("fio")
        .arg(format!("--name={name}"))
        .arg(format!("--filename={}", file.display()));
    let c = c.args([
        "--rw=read",
        "--bs=1M",
        "--direct=1",
        "--ioengine=psync",
        "--numjobs=1",
        "--time_based",
    ]);
    c.arg(format!("--runtime={runtime_s}"))
        .arg("--output-format=json")
        .args(extra)
        .spawn()
}

fn bytes_read(p: &Pool) -> anyhow::Result<u64> {
    Ok(p.status()?["stats"]["bytes_read"].as_u64().unwrap_or(0))
}

/// Writes the client file (`bytes` random bytes, fsync) and returns its hash.
fn client_file(path: &Path, bytes: u64) -> anyhow::Result<blake3::Hash> {
    fs::create_dir_all(path.parent().expect("in a directory"))?;
    let mut f = fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut h = blake3::Hasher::new();
    let mut rest = bytes;
    while rest > 0 {
        let chunk = data::random(rest.min(64 << 20) as usize)?;
        f.write_all(&chunk)?;
        h.update(&chunk);
        rest -= chunk.len() as u64;
    }
    f.sync_all()?;
    // SAFETY: sync(2) takes no arguments.
    unsafe { libc::sync() };
    Ok(h.finalize())
}

/// The reader alone for IDLE_S with status polled as later: (MiB/s, bytes, ms, counted).
fn idle(p: &Pool, prof: &str, client: &Path) -> anyhow::Result<(f64, u64, u64, f64)> {
    log!("{prof}: foreground reader alone for {IDLE_S}s");
    let b0 = bytes_read(p)?;
    let mut fio = reader("fg-idle", client, IDLE_S, &[])?;
    while fio.running() {
        let _ = p.status();
        std::thread::sleep(POLL);
    }
    let o = fio.wait()?;
    if !o.status.success() {
        bail!("{prof}: fio failed ({}): {}", o.status, o.stderr.trim());
    }
    let counted_bytes = bytes_read(p)? - b0;
    let (b, ms) =
        fio::totals(&o.stdout, Dir::Read).with_context(|| format!("{prof}: fio's report"))?;
    if b == 0 || ms == 0 {
        bail!("{prof}: the foreground reader read nothing ({b} bytes in {ms} ms)");
    }
    let counted = counted_bytes as f64 / b as f64;
    if !(0.98..=1.02).contains(&counted) {
        log!("warning: {prof}: the daemon counted {counted_bytes} bytes of client reads, fio read {b} (O_DIRECT not passed through?)");
    }
    Ok((mibs(b as f64, ms as f64), b, ms, counted))
}

/// Polls status every POLL until recovery is done, recording each poll.
fn poll_recovery(
    p: &Pool,
    prof: &str,
    since: Instant,
    polls: &mut Vec<Poll>,
) -> anyhow::Result<Value> {
    let (mut fails, mut started) = (0, false);
    loop {
        match p.status() {
            Ok(st) => {
                fails = 0;
                let r = &st["recovery"];
                let read = st["stats"]["bytes_read"].as_u64().unwrap_or(0);
                polls.push((now_ms(), read, r["bytes_done"].as_u64().unwrap_or(0)));
                check_status(p, prof, &st)?;
                if r["state"] == json!("done") {
                    return Ok(st);
                }
                started |= r["state"] != json!("idle");
            }
            Err(e) if fails >= 100 => bail!(
                "{prof}: foreshard status failed 100 times in a row: {e:#}\n{}",
                p.log_tail()
            ),
            Err(_) => fails += 1,
        }
        if !started && since.elapsed() > IDLE_TIMEOUT {
            bail!(
                "{prof}: recovery still idle {IDLE_TIMEOUT:?} after the yank\n{}",
                p.log_tail()
            );
        }
        if since.elapsed() > RECOVERY_TIMEOUT {
            bail!("{prof}: recovery not done after {RECOVERY_TIMEOUT:?}");
        }
        std::thread::sleep(POLL);
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the run under the reader saw.
struct During {
    t0: u64,
    status: Value,
    log: Vec<(u64, u64)>,
    polls: Vec<Poll>,
}

/// The reader again, disk1 yanked LEAD in, stopped when recovery is done.
fn during(p: &Pool, prof: &str, client: &Path, tmp: &Path) -> anyhow::Result<During> {
    let prefix = tmp.join("fg-recovery");
    let runtime = LEAD.as_secs() + IDLE_TIMEOUT.as_secs() + RECOVERY_TIMEOUT.as_secs() + 60;
    let extra = [
        format!("--write_iops_log={}", prefix.display()),
        "--log_avg_msec=0".into(),
        "--log_unix_epoch=1".into(),
    ];
    let mut fio = reader("fg-recovery", client, runtime, &extra)?;
    std::thread::sleep(LEAD);
    if !fio.running() {
        let o = fio.wait()?;
        bail!("{prof}: fio exited before the yank: {}", o.stderr.trim());
    }
    let mut polls = vec![(now_ms(), bytes_read(p)?, 0)];
    log!(
        "{prof}: yanking {} under the foreground reader",
        p.disks.dirs[1].display()
    );
    let since = Instant::now();
    let t0 = yank(p, &p.disks.dirs[1])?.t0_ms;
    let status = poll_recovery(p, prof, since, &mut polls)?;
    let o = fio.interrupt(STOP_GRACE)?;
    fio::totals(&o.stdout, Dir::Read)
        .with_context(|| format!("{prof}: fio's report: {}", o.stderr.trim()))?;
    let log_path = tmp.join("fg-recovery_iops.1.log");
    let text = fs::read_to_string(&log_path)
        .with_context(|| format!("{prof}: fio wrote no per-read log"))?;
    let log = timing::read_log(&text)?;
    Ok(During {
        t0,
        status,
        log,
        polls,
    })
}

/// The foreground phase under `--recovery-profile PROF` (config fg-PROF).
pub fn run(ctx: &Ctx, prof: &str, set: &DataSet, td: &mut Teardown) -> anyhow::Result<Record> {
    let cfg = format!("fg-{prof}");
    let share_nominal =
        nominal_share(prof).with_context(|| format!("unknown recovery profile '{prof}'"))?;
    log!(
        "run {}/{}: foreground reads during recovery, --recovery-profile {prof}",
        ctx.run,
        ctx.plan.runs
    );
    let mark = td.len();
    let p = pool_up(
        ctx,
        &cfg,
        vec!["--recovery-profile".into(), prof.into()],
        td,
    )?;
    set.fill(&p.mnt.join("data"))?;
    let client = p.mnt.join("client/c0");
    let chash = client_file(&client, ctx.plan.client_bytes)?;
    let ready = wait_ready(&p, "pool")?;
    if ready["recovery"]["state"] != json!("idle") {
        bail!(
            "{prof}: recovery.state is {} before the yank: the daemon saw a failure already\n{}",
            ready["recovery"]["state"],
            p.log_tail()
        );
    }
    let d1 = pool::disk_id(&ready, &p.disks.dirs[1]);
    // The data set cold, the client file warm (read once), like a client's hot working set.
    mounts::drop_caches();
    data::hash_file(&client)?;
    let (idle_mibs, idle_b, idle_ms, counted) = idle(&p, prof, &client)?;
    let tmp = ctx.work.join("tmp").join(&cfg);
    fs::create_dir_all(&tmp)?;
    let d = during(&p, prof, &client, &tmp)?;
    let mut rec = measure(prof, share_nominal, idle_mibs, counted, &d, d1)?;
    set.verify(&p.mnt.join("data"), prof)?;
    if data::hash_file(&client)? != chash {
        bail!(
            "{prof}: DATA MISMATCH: {} differs from what was written",
            client.display()
        );
    }
    log!(
        "{prof}: {}",
        p.fsck()
            .with_context(|| format!("{prof}: after the recovery"))?
    );
    td.unwind_to(mark)?;
    fs::remove_dir_all(&tmp)?;
    rec.raw["fg_idle_bytes"] = json!(idle_b);
    rec.raw["fg_idle_ms"] = json!(idle_ms);
    Ok(rec)
}

/// The foreground measures of one profile's run.
fn measure(
    prof: &str,
    share_nominal: f64,
    idle_mibs: f64,
    counted: f64,
    d: &During,
    d1: Option<u64>,
) -> anyhow::Result<Record> {
    let t = Timings::from_status(&d.status)?;
    let warnings = t.warnings(d.t0, d1);
    let (det, done) = (t.detected_at_ms, t.done_at_ms);
    if done <= det {
        bail!(
            "{prof}: recovery window done_at_ms - detected_at_ms is {} ms",
            done as i64 - det as i64
        );
    }
    let win_ms = (done - det) as f64;
    let w = timing::window(&d.log, det, done, d.t0);
    let during = mibs(w.during_bytes as f64, win_ms);
    let rec_mibs = mibs(t.bytes_total as f64, win_ms);
    let share = if rec_mibs + during > 0.0 {
        rec_mibs / (rec_mibs + during)
    } else {
        0.0
    };
    let daemon = timing::daemon_window(&d.polls, det, done);
    let pre = (w.pre_ms > 0).then(|| mibs(w.pre_bytes as f64, w.pre_ms as f64));
    let m = t.measures(d.t0);
    log!(
        "{prof}: recovery {:.1} MiB in {win_ms} ms ({rec_mibs:.1} MiB/s); foreground {during:.1} MiB/s during it, {idle_mibs:.1} alone (kept {:.3}, recovery share {share:.3})",
        m.bytes_mib, during / idle_mibs
    );
    let mut warn = warnings;
    if w.last_ms < done {
        warn.push(format!(
            "the last foreground read completed {} ms before recovery was done",
            done - w.last_ms
        ));
    }
    if win_ms < 1000.0 {
        warn.push(format!("the recovery took only {win_ms} ms; foreground rates over so short a window are noisy (--fg-size)"));
    }
    warn.iter().for_each(|x| log!("warning: {prof}: {x}"));
    let values = vec![
        ("fg_idle_mibs", Some(idle_mibs)),
        ("fg_during_mibs", Some(during)),
        ("fg_kept", Some(during / idle_mibs)),
        ("rec_mibs", Some(rec_mibs)),
        ("rec_s", Some(win_ms / 1000.0)),
        ("rec_share", Some(share)),
        ("fg_pre_mibs", pre),
        ("fg_during_daemon_mibs", daemon.map(|d| d.0)),
        ("fg_idle_daemon_counted", Some(counted)),
        ("detect_ms", Some(m.detect_ms)),
        ("full_s", Some(m.full_s)),
    ];
    let raw = json!({
        "profile": prof, "share_nominal": share_nominal, "t0_ms": d.t0,
        "fg_during_bytes": w.during_bytes, "fg_during_daemon_window_ms": daemon.map(|d| d.1),
        "recovery": super::fs::without_shards(&d.status["recovery"]), "warnings": warn,
        "fg_timeline": timing::timeline(&d.log, d.t0),
        "status_timeline": d.polls.iter().map(|p| [p.0 as f64 - d.t0 as f64, p.1 as f64 / 1048576.0, p.2 as f64 / 1048576.0]).collect::<Vec<_>>(),
    });
    Ok(Record {
        config: format!("fg-{prof}"),
        values,
        raw,
    })
}
