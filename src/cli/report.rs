//! `foreshard status`, `shards`, `fsck`, `heat`, `recover`, `reshard`: reports, as tables
//! or JSON, and waiting for recovery or a migration with a progress bar.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::{ask, ask_as, LONG};
use foreshard::admin::{self, FsckReport};
use foreshard::api::{HeatAnswer, Request};
use foreshard::recovery::{RecoveryState, RecoveryStatus};
use foreshard::sharding::report::{heat_table, Shards};
use foreshard::sharding::{MigrationStatus, PlanSummary};

pub fn status(pool: PathBuf, json: bool) -> anyhow::Result<ExitCode> {
    let v = ask(&pool, Request::Status, Duration::from_secs(60))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let s: admin::Status = serde_json::from_value(v).context("bad status")?;
        print!("{}", admin::status_table(&s));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn shards(pool: PathBuf, json: bool) -> anyhow::Result<ExitCode> {
    let v = ask(&pool, Request::Shards, LONG)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let s: Shards = serde_json::from_value(v).context("bad shard list")?;
        print!("{}", admin::shards_table(&s));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn fsck(pool: PathBuf, repair: bool, json: bool) -> anyhow::Result<ExitCode> {
    let r: FsckReport = ask_as(&pool, Request::Fsck { repair }, LONG)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        for p in &r.problems {
            println!("{p}");
        }
        if r.debris > 0 {
            let what = if repair {
                "removed"
            } else {
                "left for the next mount or --repair to remove"
            };
            println!(
                "{} stray extent file(s) (no record names them): {what}",
                r.debris
            );
        }
        println!(
            "fsck: {} inodes, {} extents, {} replicas ({}) verified; {} problem(s), {} repaired, {} left: {}",
            r.inodes,
            r.extents,
            r.replicas_checked,
            foreshard::util::fmt_bytes(r.bytes_verified),
            r.problems.len(),
            r.repaired,
            r.unrepaired,
            if r.clean { "clean" } else { "NOT CLEAN" }
        );
    }
    if !r.clean {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn heat(
    pool: PathBuf,
    json: bool,
    svg: Option<PathBuf>,
    top: usize,
) -> anyhow::Result<ExitCode> {
    let HeatAnswer {
        report: r,
        svg: doc,
    } = ask_as(&pool, Request::Heat { svg: svg.is_some() }, LONG)?;
    if let (Some(path), Some(doc)) = (&svg, doc) {
        std::fs::write(path, doc).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("heat map written to {}", path.display());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", heat_table(&r, top));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn recover(pool: PathBuf, watch: bool, wait: bool, json: bool) -> anyhow::Result<ExitCode> {
    let v = if watch || wait {
        watch_recovery(&pool, watch && !json)?;
        ask(
            &pool,
            Request::RecoverWait {
                timeout_s: 24 * 3600,
            },
            LONG,
        )?
    } else {
        ask(&pool, Request::Recover, Duration::from_secs(60))?
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let r: RecoveryStatus = serde_json::from_value(v).context("bad recovery status")?;
        print!("{}", admin::recovery_line(&r));
        if !r.lost_shards.is_empty() {
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn reshard(pool: PathBuf, dry_run: bool, wait: bool, json: bool) -> anyhow::Result<ExitCode> {
    let s: PlanSummary = ask_as(&pool, Request::Reshard { dry_run }, LONG)?;
    if json && !wait {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else if !json {
        print!("{}", plan_text(&s, dry_run));
    }
    if wait && !dry_run {
        let m = watch_migration(&pool, !json)?;
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({"plan": s, "migration": m}))?
            );
        } else {
            print!("{}", admin::migration_line(&m));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How long `recover --watch/--wait` waits for a failure to be detected before saying idle
/// (detection takes well under a second).
const WATCH_IDLE_GRACE: Duration = Duration::from_secs(3);

/// Polls recovery status until it is done, with a progress bar on a terminal.
pub fn watch_recovery(pool: &Path, bar: bool) -> anyhow::Result<RecoveryStatus> {
    let pb = progress_bar(bar, "recovery");
    let mut last_line = std::time::Instant::now() - Duration::from_secs(10);
    let started = std::time::Instant::now();
    loop {
        let r: RecoveryStatus = ask_as(pool, Request::Recover, Duration::from_secs(30))?;
        match &pb {
            Some(pb) => {
                pb.set_length(r.bytes_total);
                pb.set_position(r.bytes_done);
                let per_shard: Vec<String> = r
                    .shards
                    .iter()
                    .filter(|s| s.bytes_done < s.bytes_total)
                    .take(4)
                    .map(|s| {
                        format!(
                            "shard {} {}%{}",
                            s.id,
                            s.bytes_done * 100 / s.bytes_total.max(1),
                            s.eta_s.map(|e| format!(" ETA {e:.0}s")).unwrap_or_default()
                        )
                    })
                    .collect();
                pb.set_message(per_shard.join(" "));
            }
            None if bar
                && r.state != RecoveryState::Idle
                && last_line.elapsed() >= Duration::from_secs(1) =>
            {
                last_line = std::time::Instant::now();
                eprint!("{}", admin::recovery_line(&r));
            }
            None => {}
        }
        // Right after a failure (e.g. `inject yank` then `recover --watch`) detection may
        // still be under way: give it a moment before reporting "idle".
        let grace = r.state == RecoveryState::Idle && started.elapsed() < WATCH_IDLE_GRACE;
        if r.state != RecoveryState::Running && !grace {
            if let Some(pb) = &pb {
                pb.finish_and_clear();
            }
            return Ok(r);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn plan_text(s: &PlanSummary, dry_run: bool) -> String {
    let mut reasons: Vec<String> = s
        .by_reason
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    reasons.sort();
    let mut o = format!(
        "{}{} extent move(s) ({}), {} shard(s) changed, {} formed; {} hot and {} cold extent(s), {} correlated group(s)\n",
        if dry_run { "plan (dry run): " } else { "plan: " },
        s.moves,
        foreshard::util::fmt_bytes(s.bytes_to_move),
        s.shards_changed,
        s.shards_formed,
        s.hot_extents,
        s.cold_extents,
        s.groups
    );
    if !reasons.is_empty() {
        o += &format!("  moves by reason: {}\n", reasons.join(", "));
    }
    for (path, index, from, to) in &s.sample {
        o += &format!("  {path}:{index}  shard {from} -> {to}\n");
    }
    if s.moves > s.sample.len() {
        o += &format!("  ... {} more\n", s.moves - s.sample.len());
    }
    o
}

/// Polls migration status until no move is left, with a progress bar on a terminal.
fn watch_migration(pool: &Path, bar: bool) -> anyhow::Result<MigrationStatus> {
    let pb = progress_bar(bar, "migration");
    loop {
        let m: MigrationStatus = ask_as(pool, Request::Migration, Duration::from_secs(30))?;
        if let Some(pb) = &pb {
            pb.set_length(m.bytes_total);
            pb.set_position(m.bytes_done);
            pb.set_message(format!("{}/{} moves", m.moves_done, m.moves_total));
        }
        if m.state == foreshard::sharding::MigrationState::Idle && m.pending_moves == 0 {
            if let Some(pb) = &pb {
                pb.finish_and_clear();
            }
            return Ok(m);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A byte progress bar on stderr when `bar` is asked for and stderr is a terminal.
fn progress_bar(bar: bool, what: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    (bar && std::io::stderr().is_terminal()).then(|| {
        let pb = indicatif::ProgressBar::new(0);
        let t = format!(
            "{{spinner}} {what} [{{bar:40}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} ETA {{eta}} {{msg}}"
        );
        pb.set_style(
            indicatif::ProgressStyle::with_template(&t)
                .expect("valid template")
                .progress_chars("=> "),
        );
        pb
    })
}
