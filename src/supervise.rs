//! Supervised background threads. A named thread whose body panics is logged with its name,
//! the pool is reported degraded (`status`, with the reason), and the body is started again
//! after a pause. A thread that keeps panicking (or one whose state cannot be rebuilt) makes
//! the daemon refuse new writes instead of running half dead.
//!
//! Bodies are `FnMut`: whatever must survive a restart (a queue's receiver, a weak handle)
//! is captured by the closure, local state is rebuilt by the next call.

use std::collections::{HashSet, VecDeque};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Pause before a panicked body runs again (a body that panics at once must not spin).
const RESTART_PAUSE: Duration = Duration::from_millis(500);
/// Panics of one thread after which it is not restarted and writes are refused.
const RESTARTS_MAX: u32 = 5;
/// Panics kept for `status`.
const PANICS_KEPT_MAX: usize = 32;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Panic {
    pub thread: String,
    pub message: String,
    pub at_ms: u64,
    pub restarted: bool,
}

/// What `status` shows: "ok", "degraded" (a thread panicked and was restarted) or
/// "read-only" (writes are refused), with the panics behind it.
/// The daemon's health, as `status --json` spells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthState {
    #[default]
    #[serde(rename = "ok")]
    Ok,
    #[serde(rename = "degraded")]
    Degraded,
    #[serde(rename = "read-only")]
    ReadOnly,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Ok => "ok",
            HealthState::Degraded => "degraded",
            HealthState::ReadOnly => "read-only",
        }
    }
}

impl std::fmt::Display for HealthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Health {
    pub state: HealthState,
    pub writes_refused: Option<String>,
    pub panics: Vec<Panic>,
}

#[derive(Default)]
struct Registry {
    panics: VecDeque<Panic>,
    refused: Option<String>,
}

/// Set once writes are refused: the write path reads this, not the registry's lock.
static REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn registry() -> &'static Mutex<Registry> {
    static R: OnceLock<Mutex<Registry>> = OnceLock::new();
    R.get_or_init(|| Mutex::new(Registry::default()))
}

/// Starts `body` on a thread named `name`, supervised: a body that panics runs again, up to
/// `RESTARTS_MAX` times; then writes are refused.
pub fn spawn(
    name: impl Into<String>,
    mut body: impl FnMut() + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let name = name.into();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let mut panics = 0u32;
            loop {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut body));
                let Err(e) = r else { return };
                panics += 1;
                let restart = panics <= RESTARTS_MAX;
                record(&name, &panic_message(&e), restart);
                if !restart {
                    return;
                }
                std::thread::sleep(RESTART_PAUSE);
            }
        })
}

/// Records a panic caught by the thread itself around one piece of work (`what`), which it
/// failed cleanly; the thread goes on.
pub fn caught(e: &Box<dyn std::any::Any + Send>, what: &str) {
    let thread = std::thread::current().name().unwrap_or("?").to_string();
    record(&thread, &format!("{what}: {}", panic_message(e)), true);
}

fn panic_message(e: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = e.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = e.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

fn record(thread: &str, message: &str, restarted: bool) {
    // Computed here: supervise sits below every module it supervises (no import of theirs).
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut r = registry().lock();
    if restarted {
        tracing::error!(thread, "thread panicked: {message}; restarting it");
    } else {
        tracing::error!(
            thread,
            "thread panicked: {message}; not restarted: refusing writes"
        );
        refuse(&mut r, || format!("thread {thread} died: {message}"));
    }
    if r.panics.len() >= PANICS_KEPT_MAX {
        r.panics.pop_front();
    }
    r.panics.push_back(Panic {
        thread: thread.to_string(),
        message: message.to_string(),
        at_ms,
        restarted,
    });
}

/// Refuses new writes from now on, for `why` (a deposed metadata host: another took over).
pub fn refuse_writes(why: &str) {
    if refuse(&mut registry().lock(), || why.to_string()) {
        tracing::error!("refusing writes: {why}");
    }
}

/// The first reason is kept (returns whether this was it); the flag is what the write
/// path reads.
fn refuse(r: &mut Registry, why: impl FnOnce() -> String) -> bool {
    let first = r.refused.is_none();
    r.refused.get_or_insert_with(why);
    REFUSED.store(true, std::sync::atomic::Ordering::Relaxed);
    first
}

/// Whether new writes are refused (a thread that cannot go on died).
pub fn writes_refused() -> bool {
    REFUSED.load(std::sync::atomic::Ordering::Relaxed)
}

pub fn health() -> Health {
    let r = registry().lock();
    let state = if r.refused.is_some() {
        HealthState::ReadOnly
    } else if r.panics.is_empty() {
        HealthState::Ok
    } else {
        HealthState::Degraded
    };
    Health {
        state,
        writes_refused: r.refused.clone(),
        panics: r.panics.iter().cloned().collect(),
    }
}

/// A fault hook for tests: panics the first time a thread of kind `kind` (the name up to
/// its first '-') passes here, when `FORESHARD_PANIC_ONCE` lists that kind (comma list).
pub fn fault_point(kind: &str) {
    static ARMED: OnceLock<Option<Mutex<HashSet<String>>>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        let v = std::env::var("FORESHARD_PANIC_ONCE").ok()?;
        Some(Mutex::new(
            v.split(',').map(|s| s.trim().to_string()).collect(),
        ))
    });
    if let Some(set) = armed {
        if set.lock().remove(kind) {
            panic!("fault hook: {kind} panics once (FORESHARD_PANIC_ONCE)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_panicking_body_is_restarted_recorded_and_then_given_up_on() {
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let h = spawn("test-once", move || {
            if r.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("first run fails");
            }
        })
        .unwrap();
        h.join().unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 2, "restarted once, then ended");
        let hl = health();
        assert!(hl
            .panics
            .iter()
            .any(|p| p.thread == "test-once" && p.restarted && p.message == "first run fails"));
        assert_ne!(hl.state, HealthState::Ok);
    }
}
