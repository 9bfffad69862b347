//! The foreshard runs: a fresh pool, the data set, disk1 yanked, the time until redundancy
//! is back from the daemon's own timestamps, then the data re-hashed and fsck.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::timing::{self, Timings};
use super::{data::DataSet, Ctx, Record};
use crate::cmd::Cmd;
use crate::pool::{self, Pool};
use crate::teardown::Teardown;
use crate::{log, mounts};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Recovery must at least start within this after the yank ...
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// ... and be done within this.
pub const RECOVERY_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often 'recover --wait' is asked again (it asks the daemon at its own interval; the
/// times are the daemon's, so the interval does not change them).
const POLL: Duration = Duration::from_millis(200);

/// A fresh pool of `cfg` with `mount_args` (plus --missing-grace-ms).
pub fn pool_up(
    ctx: &Ctx,
    cfg: &str,
    mount_args: Vec<String>,
    td: &mut Teardown,
) -> anyhow::Result<Pool> {
    let mut args = mount_args;
    args.extend([
        "--missing-grace-ms".into(),
        ctx.missing_grace_ms.to_string(),
    ]);
    let spec = pool::Spec {
        bin: ctx.bin(),
        dir: ctx.work.join(cfg),
        ndisks: ctx.plan.ndisks,
        disk_bytes: ctx.plan.disk_bytes,
        need_loops: true,
        init_args: vec!["--replicas".into(), super::REPLICAS.to_string()],
        mount_args: args,
    };
    pool::up(&spec, td).with_context(|| format!("{cfg}: cannot make the pool"))
}

/// Polls status until `.agents.ready`; returns the last status.
pub fn wait_ready(p: &Pool, mode: &str) -> anyhow::Result<Value> {
    let t = Instant::now();
    loop {
        let st = p.status();
        if let Ok(st) = &st {
            if !st["agents"].is_object() || !st["recovery"].is_object() {
                bail!("foreshard status --json has no .agents/.recovery objects (an old build?)");
            }
            if st["agents"]["ready"] == json!(true) {
                if st["agents"]["mode"].as_str().is_some_and(|m| m != mode) {
                    log!(
                        "warning: agents.mode is {}, expected {mode}",
                        st["agents"]["mode"]
                    );
                }
                log!(
                    "{mode}: agents ready after {} ms: {}",
                    t.elapsed().as_millis(),
                    st["agents"]
                );
                return Ok(st.clone());
            }
        }
        if t.elapsed() > READY_TIMEOUT {
            bail!(
                "{mode}: agents not ready {READY_TIMEOUT:?} after the fill (last: {st:?})\n{}",
                p.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `foreshard debug inject --pool POOL yank DISK`: returns T0 (Unix ms) and how long it took.
/// T0 is taken just before the command, as scripts/bench-recovery took it before its
/// `umount -l`: the time it prints is when umount2 returned, and the daemon may notice the
/// disk gone while the call is still on its way back (a few ms).
pub fn yank(p: &Pool, disk: &Path) -> anyhow::Result<Yank> {
    let t0_ms = super::fg::now_ms();
    let c = Cmd::new(&p.bin)
        .args(["debug", "inject", "--pool"])
        .arg(&p.pool);
    let out = c.arg("yank").arg(disk).ok()?;
    let at =
        timing::yank_ms(&out).with_context(|| format!("inject yank printed '{}'", out.trim()))?;
    Ok(Yank {
        t0_ms,
        yanked_at_ms: at,
    })
}

/// When a yank started, and the time `foreshard debug inject yank` printed.
pub struct Yank {
    pub t0_ms: u64,
    pub yanked_at_ms: u64,
}

/// The checks of every status while recovering: mounted, nothing lost.
pub fn check_status(p: &Pool, what: &str, st: &Value) -> anyhow::Result<()> {
    if st["mounted"] == json!(false) {
        bail!(
            "{what}: the pool is no longer mounted (daemon gone?) during recovery\n{}",
            p.log_tail()
        );
    }
    let lost = &st["recovery"]["lost_shards"];
    if lost.as_array().is_some_and(|a| !a.is_empty()) {
        bail!("{what}: recovery reports lost shards: {lost}");
    }
    Ok(())
}

/// `foreshard recover --wait` until `.recovery.state` is done; returns the last status.
pub fn wait_recovery(p: &Pool, what: &str, t0: Instant) -> anyhow::Result<Value> {
    loop {
        let c = Cmd::new(&p.bin)
            .arg("recover")
            .arg(&p.pool)
            .args(["--wait", "--json"]);
        let out = c
            .timeout(RECOVERY_TIMEOUT)
            .ok()
            .map_err(|e| anyhow::anyhow!("{what}: {e:#}\n{}", p.log_tail()))?;
        let state = serde_json::from_str::<Value>(&out)
            .ok()
            .and_then(|v| v["state"].as_str().map(String::from));
        let st = p
            .status()
            .map_err(|e| anyhow::anyhow!("{what}: {e:#}\n{}", p.log_tail()))?;
        check_status(p, what, &st)?;
        if st["recovery"]["state"] == json!("done") {
            return Ok(st);
        }
        if state.as_deref() == Some("idle") && t0.elapsed() > IDLE_TIMEOUT {
            bail!("{what}: recovery still idle {IDLE_TIMEOUT:?} after the yank (the failure was not detected)\n{}", p.log_tail());
        }
        if t0.elapsed() > RECOVERY_TIMEOUT {
            bail!("{what}: recovery not done after {RECOVERY_TIMEOUT:?}");
        }
        std::thread::sleep(POLL);
    }
}

/// One recovery measurement with `--agents MODE` (config fs-MODE).
pub fn run(ctx: &Ctx, mode: &str, data: &DataSet, td: &mut Teardown) -> anyhow::Result<Record> {
    let cfg = format!("fs-{mode}");
    log!(
        "run {}/{}: foreshard --agents {mode}",
        ctx.run,
        ctx.plan.runs
    );
    let mark = td.len();
    let mut args = vec!["--agents".to_string(), mode.to_string()];
    args.extend(ctx.mount_args.iter().cloned());
    let p = pool_up(ctx, &cfg, args, td)?;
    log!(
        "{mode}: writing {} files of {:.1} MiB",
        super::data::NFILES,
        data.file_bytes as f64 / 1048576.0
    );
    let t = Instant::now();
    data.fill(&p.mnt.join("data"))?;
    let fill_s = t.elapsed().as_secs_f64();
    let ready = wait_ready(&p, mode)?;
    let disk1 = &p.disks.dirs[1];
    let d1 = pool::disk_id(&ready, disk1);
    if ready["recovery"]["state"] != json!("idle") {
        log!(
            "warning: {mode}: recovery.state is {} before the yank",
            ready["recovery"]["state"]
        );
    }
    mounts::drop_caches();
    log!("{mode}: yanking {}", disk1.display());
    let since = Instant::now();
    let y = yank(&p, disk1)?;
    let t0 = y.t0_ms;
    let st = wait_recovery(&p, mode, since)?;
    let t = Timings::from_status(&st)?;
    let m = t.measures(t0);
    let warnings = t.warnings(t0, d1);
    warnings.iter().for_each(|w| log!("warning: {mode}: {w}"));
    log!(
        "{mode}: detected after {} ms, first extent {} later, done after {:.0} ms, {:.1} MiB re-replicated",
        m.detect_ms,
        m.activate_ms.map_or("never".into(), |a| format!("{a} ms")),
        m.full_s * 1000.0,
        m.bytes_mib
    );
    data.verify(&p.mnt.join("data"), mode)?;
    log!(
        "{mode}: {}",
        p.fsck()
            .with_context(|| format!("{mode}: after the recovery"))?
    );
    td.unwind_to(mark)?;
    let mut rec = Record::new(&cfg, &m);
    rec.raw = json!({
        "t0_ms": t0, "yanked_at_ms": y.yanked_at_ms, "fill_s": fill_s, "agents": ready["agents"],
        "disk1_id": d1, "recovery": without_shards(&st["recovery"]), "warnings": warnings,
    });
    Ok(rec)
}

/// `.recovery` without its per-shard list (long, and not needed for the report).
pub fn without_shards(r: &Value) -> Value {
    let mut r = r.clone();
    if let Some(o) = r.as_object_mut() {
        o.remove("shards");
    }
    r
}
