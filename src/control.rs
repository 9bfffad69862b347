//! The control socket: a Unix socket in the pool directory (mode 0600, so root or the pool's
//! owner only) through which the CLI asks a mounted pool for status, shards and fsck.
//! One JSON request line in, one JSON response line out.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::admin;
use crate::fs::Fs;
use crate::recovery::Orchestrator;

/// Requests larger than this are refused (they are a few bytes normally).
const REQUEST_BYTES_MAX: usize = 64 * 1024;
/// Concurrent connections served; more wait in the listen backlog.
const CONNECTIONS_MAX: usize = 16;

#[derive(Serialize, Deserialize, Debug)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Ping,
    Status,
    Shards,
    Fsck {
        repair: bool,
    },
    /// `disk` is an id or a disk directory path.
    DiskFail {
        disk: String,
    },
    DiskAdd {
        path: String,
    },
    DiskRemove {
        disk: String,
    },
    DiskFault {
        disk: String,
        eio_rate: Option<f64>,
        delay_ms: Option<u64>,
    },
    Recover,
    /// Heat report of the access analyzer (with an SVG heat map when `svg`).
    Heat {
        svg: bool,
    },
    /// Plans re-sharding; unless `dry_run`, starts the migration.
    Reshard {
        dry_run: bool,
    },
    /// Migration progress.
    Migration,
    /// Risk report; with `set`, new risk settings first (persisted).
    Risk {
        set: Option<crate::risk::service::RiskSettings>,
    },
    /// Blocks until no recovery is running (or `timeout_s`); answers with its status.
    RecoverWait {
        timeout_s: u64,
    },
}

/// What a request runs against: the core, and the recovery orchestrator of a mounted pool.
pub struct Services {
    pub fs: Arc<Fs>,
    pub recovery: Option<Arc<Orchestrator>>,
    pub access: Option<Arc<crate::access::Analyzer>>,
    pub sharding: Option<Arc<crate::sharding::Engine>>,
    pub risk: Option<Arc<crate::risk::service::RiskService>>,
    pub evacuator: Option<Arc<crate::sharding::evacuate::Evacuator>>,
}

impl Services {
    /// An unmounted pool: the core only.
    pub fn offline(fs: Arc<Fs>) -> Services {
        Services {
            fs,
            recovery: None,
            access: None,
            sharding: None,
            risk: None,
            evacuator: None,
        }
    }

    /// The mounted analyzer, or (unmounted) one loaded with what the last mount saved.
    fn analyzer(&self) -> anyhow::Result<Arc<crate::access::Analyzer>> {
        if let Some(a) = &self.access {
            return Ok(a.clone());
        }
        let a = crate::access::Analyzer::new(crate::access::AccessOptions::default());
        a.load(&self.fs.meta)?;
        let fs = self.fs.clone();
        a.set_resolver(Box::new(move |ino, index| {
            fs.meta.extent(ino, index).ok().flatten().map(|e| e.shard)
        }));
        Ok(a)
    }
}

/// Finds a disk by id or by its directory path.
pub fn resolve_disk(fs: &Fs, disk: &str) -> anyhow::Result<u32> {
    let disks = fs.store.disks();
    if let Ok(id) = disk.parse::<u32>() {
        if disks.iter().any(|d| d.id == id) {
            return Ok(id);
        }
        bail!("no disk {id} in this pool");
    }
    let p = Path::new(disk);
    let c = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    disks
        .iter()
        .find(|d| d.root == c || d.root == p)
        .map(|d| d.id)
        .ok_or_else(|| anyhow::anyhow!("{disk}: not a disk of this pool"))
}

/// Runs a request; `svc.recovery` is None when the pool is not mounted.
pub fn handle(svc: &Services, req: &Request) -> anyhow::Result<serde_json::Value> {
    let fs = &svc.fs;
    let mounted = svc.recovery.is_some();
    Ok(match req {
        Request::Ping => serde_json::json!("pong"),
        Request::Status => {
            let mut s = admin::status(fs, mounted)?;
            if let Some(o) = &svc.recovery {
                s.recovery = Some(o.status());
                s.agents = Some(o.agents.status());
            }
            s.access = svc.access.as_ref().map(|a| a.stats());
            s.migration = svc.sharding.as_ref().map(|e| e.status());
            s.risk = svc.risk.as_ref().map(|r| risk_report(svc, r));
            s.fuse = mounted.then(admin::FuseTransport::current);
            s.health = mounted.then(crate::supervise::health);
            serde_json::to_value(s)?
        }
        Request::Shards => serde_json::to_value(admin::shards(fs)?)?,
        Request::Fsck { repair } => serde_json::to_value(admin::fsck(fs, *repair)?)?,
        Request::DiskFail { disk } => {
            let id = resolve_disk(fs, disk)?;
            match &svc.recovery {
                Some(o) => o.fail_disk(id, "operator: foreshard disk fail"),
                None => fs.set_disk_state(id, crate::meta::DiskState::Failed)?,
            }
            serde_json::json!({ "disk": id, "state": "failed" })
        }
        Request::DiskAdd { path } => {
            let id = match &svc.recovery {
                Some(o) => o.add_disk(Path::new(path))?,
                None => {
                    let id = crate::recovery::add_disk(fs, Path::new(path))?;
                    crate::recovery::rebalance_onto(fs, id)?;
                    id
                }
            };
            serde_json::json!({ "disk": id })
        }
        Request::DiskRemove { disk } => {
            let id = resolve_disk(fs, disk)?;
            match &svc.recovery {
                Some(o) => o.drain_disk(id)?,
                None => bail!("the pool is not mounted: mount it to drain a disk"),
            }
            serde_json::json!({ "disk": id, "state": "draining" })
        }
        Request::DiskFault {
            disk,
            eio_rate,
            delay_ms,
        } => {
            if !mounted {
                bail!("the pool is not mounted: faults are injected into a running daemon");
            }
            let id = resolve_disk(fs, disk)?;
            let d = fs.store.disk(id).expect("resolved");
            let mut f = d.fault();
            if let Some(r) = eio_rate {
                if !(0.0..=1.0).contains(r) {
                    bail!("eio rate must be between 0 and 1");
                }
                f.eio_rate = *r;
            }
            if let Some(ms) = delay_ms {
                f.delay_ms = *ms;
            }
            d.set_fault(f);
            tracing::warn!(disk = id, ?f, "fault injection changed");
            serde_json::json!({ "disk": id, "fault": f })
        }
        Request::Recover => match &svc.recovery {
            Some(o) => serde_json::to_value(o.status())?,
            None => bail!("the pool is not mounted: recovery runs in the daemon"),
        },
        Request::Heat { svg } => {
            let a = svc.analyzer()?;
            let shard_max = svc.sharding.as_ref().map_or(
                crate::sharding::ShardingOptions::default().shard_bytes_max,
                |e| e.opts.shard_bytes_max,
            );
            let r = crate::sharding::report::heat_report(fs, &a, shard_max)?;
            let svg = if *svg {
                Some(crate::sharding::report::heat_svg(fs, &r)?)
            } else {
                None
            };
            serde_json::json!({ "report": r, "svg": svg })
        }
        Request::Reshard { dry_run } => {
            let summary = match &svc.sharding {
                Some(e) => e.reshard(*dry_run)?,
                None if *dry_run => {
                    let e = crate::sharding::Engine::new(
                        fs.clone(),
                        svc.analyzer()?,
                        crate::sharding::ShardingOptions::default(),
                        Box::new(|| false),
                    );
                    e.reshard(true)?
                }
                None => bail!("the pool is not mounted: re-sharding runs in the daemon (--dry-run works offline)"),
            };
            serde_json::to_value(summary)?
        }
        Request::Migration => match &svc.sharding {
            Some(e) => serde_json::to_value(e.status())?,
            None => bail!("the pool is not mounted: re-sharding runs in the daemon"),
        },
        Request::Risk { set } => match &svc.risk {
            Some(r) => {
                if let Some(new) = set {
                    r.set_settings(new.clone())?;
                    r.collect_round()?;
                }
                serde_json::to_value(risk_report(svc, r))?
            }
            None => {
                if let Some(new) = set {
                    crate::risk::service::save_settings(&fs.meta, new)?;
                }
                // Unmounted: one collection round now (health files, /sys, the history the
                // daemon kept) with the shipped model; no smartctl, no evacuation.
                let (model, name) = crate::risk::service::load_model(None)?;
                let r = crate::risk::service::RiskService::new(
                    fs.clone(),
                    model,
                    name,
                    crate::risk::service::RiskOptions {
                        smartctl: false,
                        ..Default::default()
                    },
                    Box::new(|| None),
                )?;
                r.collect_round()?;
                let mut v = serde_json::to_value(risk_report(svc, &r))?;
                v["mounted"] = serde_json::json!(false);
                v
            }
        },
        Request::RecoverWait { timeout_s } => match &svc.recovery {
            Some(o) => {
                let idle = o.wait_idle(Duration::from_secs(*timeout_s));
                let mut v = serde_json::to_value(o.status())?;
                v["idle"] = serde_json::json!(idle);
                v
            }
            None => bail!("the pool is not mounted: recovery runs in the daemon"),
        },
    })
}

/// The latest risk snapshot with the evacuation progress, shards cut to the riskiest.
fn risk_report(
    svc: &Services,
    r: &crate::risk::service::RiskService,
) -> crate::risk::service::Snapshot {
    let mut s = (*r.snapshot()).clone();
    s.shards.truncate(crate::risk::service::SHARDS_REPORTED_MAX);
    s.evacuation = svc.evacuator.as_ref().map(|e| e.status());
    s
}

/// Serves the socket on its own thread until the process exits.
pub fn serve(svc: Arc<Services>, path: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let std_listener = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("{}: cannot create control socket", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    std_listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::from_std(std_listener).expect("listener");
                let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let Ok(permit) = slots.clone().acquire_owned().await else {
                        break;
                    };
                    let svc = svc.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        let (rd, mut wr) = stream.into_split();
                        let mut line = String::new();
                        let mut rd = tokio::io::BufReader::new(rd).take(REQUEST_BYTES_MAX as u64);
                        if rd.read_line(&mut line).await.is_err() {
                            return;
                        }
                        let reply = match serde_json::from_str::<Request>(&line) {
                            Ok(req) => tokio::task::spawn_blocking(move || handle(&svc, &req))
                                .await
                                .unwrap_or_else(|e| Err(anyhow::anyhow!("handler panicked: {e}"))),
                            Err(e) => Err(anyhow::anyhow!("bad request: {e}")),
                        };
                        let out = match reply {
                            Ok(v) => serde_json::json!({ "ok": v }),
                            Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
                        };
                        let mut s = out.to_string();
                        s.push('\n');
                        let _ = wr.write_all(s.as_bytes()).await;
                    });
                }
            });
        })?;
    Ok(())
}

/// Sends a request to a mounted pool. Ok(None) when no daemon listens on the socket.
pub fn call(
    pool: &Path,
    req: &Request,
    timeout: Duration,
) -> anyhow::Result<Option<serde_json::Value>> {
    let path = pool.join(crate::pool::SOCKET_FILE);
    let mut s = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(_) => return Ok(None),
    };
    s.set_read_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut resp = String::new();
    BufReader::new(s)
        .read_line(&mut resp)
        .context("no answer from the daemon")?;
    let v: serde_json::Value = serde_json::from_str(&resp).context("bad answer from the daemon")?;
    if let Some(e) = v.get("error") {
        bail!("daemon: {}", e.as_str().unwrap_or("error"));
    }
    Ok(v.get("ok").cloned())
}
