//! `foreshard risk POOL`: each disk's failure risk and the risk settings; `risk train|
//! score|eval` (the model's own commands, in `risk_model.rs`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use super::{ask, ask_as};
use foreshard::api::{Request, RiskAnswer};

#[derive(clap::Args)]
pub struct RiskArgs {
    #[command(subcommand)]
    pub cmd: Option<super::risk_model::RiskCmd>,
    pub pool: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
    /// Set the directory of per-disk health files (absolute path of a directory).
    #[arg(long, conflicts_with = "no_health_dir")]
    pub health_dir: Option<PathBuf>,
    /// Stop reading health files.
    #[arg(long)]
    pub no_health_dir: bool,
    /// P(fail in 30 days) at which placement avoids a disk.
    #[arg(long)]
    pub warn: Option<f64>,
    /// P(fail in 30 days) at which a disk's replicas are moved off it.
    #[arg(long)]
    pub evacuate: Option<f64>,
}

pub fn run(a: RiskArgs) -> anyhow::Result<ExitCode> {
    let RiskArgs {
        cmd,
        pool,
        json,
        health_dir,
        no_health_dir,
        warn,
        evacuate,
    } = a;
    if let Some(cmd) = cmd {
        let code = super::risk_model::run(cmd)?;
        return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
    }
    let Some(pool) = pool else {
        anyhow::bail!("usage: foreshard risk POOL [--json] (or risk train|score|eval)");
    };
    if health_dir.is_some() || no_health_dir || warn.is_some() || evacuate.is_some() {
        let cur: RiskAnswer = ask_as(&pool, Request::Risk { set: None }, Duration::from_secs(60))?;
        let mut s = cur
            .snapshot
            .settings
            .context("the daemon reported no risk settings")?;
        if let Some(d) = health_dir {
            s.health_dir = Some(foreshard::risk::report::check_health_dir(&d)?);
        }
        if no_health_dir {
            s.health_dir = None;
        }
        s.warn = warn.unwrap_or(s.warn);
        s.evacuate = evacuate.unwrap_or(s.evacuate);
        s.validate()?;
        ask(
            &pool,
            Request::Risk { set: Some(s) },
            Duration::from_secs(60),
        )?;
    }
    let v = ask(&pool, Request::Risk { set: None }, Duration::from_secs(60))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", foreshard::risk::report::risk_text(&v)?);
    }
    Ok(ExitCode::SUCCESS)
}
