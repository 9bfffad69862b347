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
    Fsck { repair: bool },
}

/// Runs a request on `fs`; `mounted` says whether a daemon serves it (shown by `status`).
pub fn handle(fs: &Fs, req: &Request, mounted: bool) -> anyhow::Result<serde_json::Value> {
    Ok(match req {
        Request::Ping => serde_json::json!("pong"),
        Request::Status => serde_json::to_value(admin::status(fs, mounted)?)?,
        Request::Shards => serde_json::to_value(admin::shards(fs)?)?,
        Request::Fsck { repair } => serde_json::to_value(admin::fsck(fs, *repair)?)?,
    })
}

/// Serves the socket on its own thread until the process exits.
pub fn serve(fs: Arc<Fs>, path: &Path) -> anyhow::Result<()> {
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
                    let fs = fs.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        let (rd, mut wr) = stream.into_split();
                        let mut line = String::new();
                        let mut rd = tokio::io::BufReader::new(rd).take(REQUEST_BYTES_MAX as u64);
                        if rd.read_line(&mut line).await.is_err() {
                            return;
                        }
                        let reply = match serde_json::from_str::<Request>(&line) {
                            Ok(req) => tokio::task::spawn_blocking(move || handle(&fs, &req, true))
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
