//! The control API: what the CLI asks a pool (`Request`) and what it answers (`Response`),
//! shared by the daemon (`control`) and the CLI. One JSON line each way on the socket:
//! `{"cmd": ...}` in, `{"ok": ANSWER}` or `{"error": "..."}` out. `Response` serializes
//! untagged, so ANSWER is the answer type's own JSON: what `--json` prints, documented in
//! docs/json-api.md.

use serde::{Deserialize, Serialize};

use crate::admin::{FsckReport, Status};
use crate::meta::DiskState;
use crate::recovery::{OnlineReport, RecoveryStatus};
use crate::risk::service::{RiskSettings, Snapshot};
use crate::sharding::report::{HeatReport, Shards};
use crate::sharding::{MigrationStatus, PlanSummary};
use crate::store::Fault;

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
    DiskOnline {
        disk: String,
    },
    DiskFault {
        disk: String,
        eio_rate: Option<f64>,
        delay_ms: Option<u64>,
    },
    /// A cluster pool: claim a storage host's free disks (`host add`).
    HostAdd {
        host: String,
    },
    /// A cluster pool: drain every disk of a storage host.
    HostDrain {
        host: String,
    },
    /// A cluster pool: give a drained host's disks back to the cluster (`host remove`).
    HostRelease {
        host: String,
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
        set: Option<RiskSettings>,
    },
    /// Blocks until no recovery is running (or `timeout_s`); answers with its status.
    RecoverWait {
        timeout_s: u64,
    },
}

/// One answer per kind of request.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Response {
    /// `Ping`: "pong".
    Pong(&'static str),
    Status(Box<Status>),
    Shards(Shards),
    Fsck(FsckReport),
    /// `DiskFail`, `DiskAdd`, `DiskRemove`, `DiskFault`.
    Disk(DiskAnswer),
    Online(OnlineReport),
    /// `HostAdd`, `HostDrain`, `HostRelease`.
    Host(HostAnswer),
    /// `Recover`.
    Recovery(RecoveryStatus),
    RecoverWait(RecoverWaitAnswer),
    Heat(Box<HeatAnswer>),
    /// `Reshard`.
    Plan(PlanSummary),
    Migration(MigrationStatus),
    Risk(Box<RiskAnswer>),
}

/// What disk requests answer: the disk, and its new state or fault settings.
#[derive(Serialize, Deserialize, Debug)]
pub struct DiskAnswer {
    pub disk: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<DiskState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

/// What host requests answer: the host, and the pool disks the request added, set
/// draining or released.
#[derive(Serialize, Deserialize, Debug)]
pub struct HostAnswer {
    pub host: String,
    pub disks: Vec<u32>,
}

/// What `Request::Heat` answers.
#[derive(Serialize, Deserialize, Debug)]
pub struct HeatAnswer {
    pub report: HeatReport,
    pub svg: Option<String>,
}

/// What `Request::RecoverWait` answers: the recovery status, and whether it went idle
/// before the time-out.
#[derive(Serialize, Deserialize, Debug)]
pub struct RecoverWaitAnswer {
    #[serde(flatten)]
    pub status: RecoveryStatus,
    pub idle: bool,
}

/// What `Request::Risk` answers: the latest snapshot; `mounted: false` when an unmounted
/// pool made it (one round with the shipped model, no smartctl).
#[derive(Serialize, Deserialize, Debug)]
pub struct RiskAnswer {
    #[serde(flatten)]
    pub snapshot: Snapshot,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mounted: Option<bool>,
}

/// The line the socket carries back: `{"ok": ANSWER}` or `{"error": "..."}`.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Ok(Box<Response>),
    Error(String),
}
