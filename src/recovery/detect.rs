//! Failure detection: the monitor thread (labels, roots, probes with deadlines).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Orchestrator;
use crate::meta::DiskState;
use crate::store::{read_label, Disk};

enum ProbeMsg {
    Go,
}

/// What the label check found wrong.
enum Hard {
    /// Root or label missing: maybe back soon (suspect for `missing_grace`).
    Gone(String),
    /// Another pool's or disk's label: swapped, fails at once.
    Wrong(String),
}

enum Probe {
    Ok,
    Late(String),
    Failed(String),
    /// Hung past `HANG_FAIL_FACTOR` deadlines while its peers answered: the disk has been
    /// failed already.
    Hung,
    /// A remote disk's host did not answer (refused, reset, timed out, hung): the host's
    /// grace applies, not the disk's probe count.
    Unreachable(String),
}

/// A probe still running after this many deadlines fails the disk (it hangs), if its peers
/// show that the hang is the disk's own (`hang_is_the_disks`).
const HANG_FAIL_FACTOR: u32 = 10;

/// Whether a hung probe is the disk's fault: more than half of the other live disks answered
/// a probe in time while it hung. When they hang too, the host or the device under them all
/// stalls (seen here: a build's writeback stalled four loop disks on one virtual disk for
/// 10 s), and failing them would take every replica of the data out of the pool at once.
/// A peer answers when a probe it was sent after the hang began met its deadline (a probe
/// already in flight when the stall began does not count).
fn hang_is_the_disks(peers_answering: usize, peers: usize) -> bool {
    2 * peers_answering > peers
}

struct Prober {
    tx: SyncSender<ProbeMsg>,
    rx: Receiver<(std::io::Result<()>, Duration)>,
    busy: bool,
    sent: Instant,
    /// Deadlines the running probe has overrun so far (each counts as one failure).
    overruns: u32,
    fails: u32,
    io_errors_seen: u64,
    /// When the last probe that met its deadline was sent.
    answered: Option<Instant>,
    /// The running probe's hang was put down to a stall of its peers too (logged once).
    stall_noted: bool,
    /// A remote disk's host has not answered since (reset by an answer).
    unreachable_since: Option<Instant>,
}

fn spawn_prober(d: Arc<Disk>) -> Prober {
    let (tx, rx_go) = sync_channel::<ProbeMsg>(1);
    let (tx_res, rx) = sync_channel(1);
    std::thread::Builder::new()
        .name(format!("probe-{}", d.id))
        .spawn(move || {
            while let Ok(ProbeMsg::Go) = rx_go.recv() {
                let t = Instant::now();
                let r = d.probe();
                if tx_res.send((r, t.elapsed())).is_err() {
                    break;
                }
            }
        })
        .expect("spawn probe thread");
    Prober {
        tx,
        rx,
        busy: false,
        sent: Instant::now(),
        overruns: 0,
        fails: 0,
        io_errors_seen: 0,
        answered: None,
        stall_noted: false,
        unreachable_since: None,
    }
}

/// The label check of one disk: false when the disk is not to be probed now (its root or
/// label is missing: suspect, failed once `missing_grace` has passed; or another label:
/// failed at once).
fn root_present(o: &Orchestrator, d: &Arc<Disk>, missing: &mut HashMap<u32, Instant>) -> bool {
    if d.is_remote() {
        // Its host checks its own disks; the probe (over the extent service) decides.
        return true;
    }
    let hard = match read_label(&d.root) {
        Ok(Some(l)) if l.pool_id == o.fs.cfg.pool_id && l.disk_id == d.id => None,
        Ok(Some(l)) => Some(Hard::Wrong(format!(
            "label mismatch: pool {} disk {} found (disk swapped?)",
            l.pool_id, l.disk_id
        ))),
        Ok(None) if !d.root.exists() => Some(Hard::Gone("disk root gone".to_string())),
        Ok(None) => Some(Hard::Gone(
            "disk label missing (disk unmounted or replaced by an empty directory)".into(),
        )),
        // Unreadable label: the probe decides.
        Err(_) => None,
    };
    match hard {
        Some(Hard::Gone(why)) => {
            let since = *missing.entry(d.id).or_insert_with(|| {
                tracing::warn!(
                    disk = d.id,
                    "disk suspect: {why}; failed in {} ms unless it comes back",
                    o.opts.missing_grace.as_millis()
                );
                Instant::now()
            });
            if since.elapsed() >= o.opts.missing_grace {
                o.fail_disk(d.id, &why);
                missing.remove(&d.id);
            } else if d.state() == DiskState::Up {
                let _ = o.fs.set_disk_state(d.id, DiskState::Suspect);
            }
            false
        }
        Some(Hard::Wrong(why)) => {
            o.fail_disk(d.id, &why);
            false
        }
        None => {
            if missing.remove(&d.id).is_some() {
                tracing::info!(disk = d.id, "disk root and label are back");
                if d.state() == DiskState::Suspect {
                    let _ = o.fs.set_disk_state(d.id, DiskState::Up);
                }
            }
            true
        }
    }
}

/// Every `check_interval`: the label and root of each disk (a yanked or swapped disk fails
/// at once), the result of its last probe, and a new probe when one is due: every
/// `probe_interval`, and at once while the disk is suspect or its I/O error count rose.
pub(super) fn monitor(w: std::sync::Weak<Orchestrator>) {
    let mut probers: HashMap<u32, Prober> = HashMap::new();
    // Disks whose root or label went missing, since when (failed after `missing_grace`).
    let mut missing: HashMap<u32, Instant> = HashMap::new();
    loop {
        let Some(o) = w.upgrade() else { break };
        crate::supervise::fault_point("monitor");
        let tick = Instant::now();
        let watched: Vec<Arc<Disk>> =
            o.fs.store
                .disks()
                .into_iter()
                .filter(|d| d.is_up())
                .collect();
        let answered: Vec<(u32, Option<Instant>)> = watched
            .iter()
            .map(|d| (d.id, probers.get(&d.id).and_then(|p| p.answered)))
            .collect();
        for d in &watched {
            if !root_present(&o, d, &mut missing) {
                probers.remove(&d.id);
                continue;
            }
            let p = probers
                .entry(d.id)
                .or_insert_with(|| spawn_prober(d.clone()));
            if !check_disk(&o, d, p, &answered, watched.len()) {
                probers.remove(&d.id);
            }
        }
        probers.retain(|id, _| o.fs.store.disk(*id).is_some_and(|d| d.is_up()));
        let interval = o.opts.check_interval;
        drop(o);
        let spent = tick.elapsed();
        if spent < interval {
            std::thread::sleep(interval - spent);
        }
    }
}

/// How often the disks of hosts that did not answer are tried again.
const HOST_RETURN_INTERVAL: Duration = Duration::from_secs(2);

/// A host that answers again after its disks were failed: each of them goes through `disk
/// online` (its copies verified; intact current ones become replicas again, the disk
/// rejoins shards where it holds more than recovery put elsewhere), so what it holds is
/// reused, not copied again. Its own thread: a probe of a host still away takes seconds.
pub(super) fn host_returns(w: std::sync::Weak<Orchestrator>) {
    loop {
        let Some(o) = w.upgrade() else { break };
        let ids: Vec<u32> = o.host_failed.lock().iter().copied().collect();
        for id in ids {
            let back =
                o.fs.store
                    .disk(id)
                    .filter(|d| d.state() == DiskState::Failed);
            let Some(d) = back else {
                o.host_failed.lock().remove(&id);
                continue;
            };
            if d.probe().is_err() {
                continue;
            }
            match o.online_disk(id) {
                Ok(r) => {
                    tracing::info!(disk = id, ?r, "host back: disk online again");
                    o.host_failed.lock().remove(&id);
                }
                Err(e) => tracing::warn!(disk = id, "host back, disk stays failed: {e:#}"),
            }
        }
        drop(o);
        std::thread::sleep(HOST_RETURN_INTERVAL);
    }
}

/// A remote disk whose host does not answer: suspect, failed once `host_grace` has passed
/// since the host last answered. Returns false when the disk failed.
fn host_unreachable(o: &Orchestrator, d: &Arc<Disk>, p: &mut Prober, e: &str) -> bool {
    if p.unreachable_since.is_none() {
        // A host risk signal: counted once per outage of the host, not per disk or probe.
        if let Some(r) = &d.remote {
            r.host_unreachable();
        }
    }
    let since = *p.unreachable_since.get_or_insert_with(Instant::now);
    if since.elapsed() >= o.opts.host_grace {
        let why = format!(
            "host unreachable for {} ms (grace {} ms), last: {e}",
            since.elapsed().as_millis(),
            o.opts.host_grace.as_millis()
        );
        o.host_failed.lock().insert(d.id);
        o.fail_disk(d.id, &why);
        return false;
    }
    if d.state() == DiskState::Up {
        tracing::warn!(disk = d.id, "disk suspect: its host does not answer: {e}");
        let _ = o.fs.set_disk_state(d.id, DiskState::Suspect);
    }
    true
}

/// One disk's turn: the running probe's outcome applied to its state, room checked, and a
/// new probe sent when one is due. Returns false when the disk failed.
fn check_disk(
    o: &Orchestrator,
    d: &Arc<Disk>,
    p: &mut Prober,
    answered: &[(u32, Option<Instant>)],
    watched: usize,
) -> bool {
    let outcome = if p.busy {
        probe_outcome(o, d, p, answered, watched)
    } else {
        None
    };
    match outcome {
        Some(Probe::Unreachable(e)) => {
            if !host_unreachable(o, d, p, &e) {
                return false;
            }
        }
        Some(Probe::Ok) => {
            p.fails = 0;
            if p.unreachable_since.take().is_some() {
                // Extents written meanwhile went without this replica: top them up.
                tracing::info!(disk = d.id, "host answers again");
                o.kick();
            }
            if d.state() == DiskState::Suspect {
                tracing::info!(disk = d.id, "disk healthy again");
                let _ = o.fs.set_disk_state(d.id, DiskState::Up);
            }
        }
        Some(Probe::Late(e)) if d.state() == DiskState::Up => {
            tracing::warn!(disk = d.id, "disk suspect: {e}");
            let _ = o.fs.set_disk_state(d.id, DiskState::Suspect);
        }
        Some(Probe::Failed(e)) => {
            p.fails += 1;
            if p.fails >= o.opts.fail_after {
                let why = format!("{} probes in a row failed, last: {e}", p.fails);
                o.fail_disk(d.id, &why);
                return false;
            } else if d.state() == DiskState::Up {
                tracing::warn!(disk = d.id, "disk suspect: probe failed: {e}");
                let _ = o.fs.set_disk_state(d.id, DiskState::Suspect);
            }
        }
        Some(Probe::Hung) => return false,
        Some(Probe::Late(_)) | None => {}
    }
    // Full is not failed: once there is room again the disk takes copies again.
    if d.full.load(Ordering::Relaxed) && d.space().is_ok_and(|s| s.1 >= 2 * o.fs.extent_size()) {
        d.full.store(false, Ordering::Relaxed);
        tracing::info!(disk = d.id, "disk has room again");
        o.kick();
    }
    let errors = d.io_errors.load(Ordering::Relaxed);
    let due = p.fails > 0
        || d.state() == DiskState::Suspect
        || errors > p.io_errors_seen
        || p.sent.elapsed() >= o.opts.probe_interval;
    if !p.busy && due && p.tx.try_send(ProbeMsg::Go).is_ok() {
        p.busy = true;
        p.sent = Instant::now();
        p.overruns = 0;
        p.stall_noted = false;
        p.io_errors_seen = errors;
    }
    true
}

/// The outcome of a probe that returned after `took`.
fn finished(
    d: &Disk,
    p: &mut Prober,
    (r, took): (std::io::Result<()>, Duration),
    deadline: Duration,
) -> Probe {
    p.busy = false;
    d.probe_us_last
        .store(took.as_micros() as u64, Ordering::Relaxed);
    if took > deadline && p.overruns == 0 {
        d.probe_timeouts.fetch_add(1, Ordering::Relaxed);
    }
    match r {
        Ok(()) if took > deadline => Probe::Late(format!(
            "probe took {} ms (deadline {} ms)",
            took.as_millis(),
            deadline.as_millis()
        )),
        Ok(()) => {
            p.answered = Some(p.sent);
            Probe::Ok
        }
        Err(e) if d.is_remote() && crate::store::is_network_error(&e) => {
            Probe::Unreachable(e.to_string())
        }
        Err(e) => Probe::Failed(e.to_string()),
    }
}

/// Outcome of the running probe: Ok, late (suspect only: a busy disk can take seconds to
/// fsync), failed (an error), hung past `HANG_FAIL_FACTOR` deadlines (failed here), or
/// nothing yet.
fn probe_outcome(
    o: &Orchestrator,
    d: &Disk,
    p: &mut Prober,
    answered: &[(u32, Option<Instant>)],
    watched: usize,
) -> Option<Probe> {
    let deadline = o.opts.probe_deadline;
    if let Ok((r, took)) = p.rx.try_recv() {
        return Some(finished(d, p, (r, took), deadline));
    }
    let peers_answered = answered
        .iter()
        .filter(|(id, t)| *id != d.id && t.is_some_and(|t| t > p.sent))
        .count();
    if p.sent.elapsed() > deadline * HANG_FAIL_FACTOR && d.is_remote() {
        // A remote probe hangs when its host does (paused): the host's grace decides.
        let why = format!(
            "host hung for more than {} ms",
            p.sent.elapsed().as_millis()
        );
        return Some(Probe::Unreachable(why));
    }
    if p.sent.elapsed() > deadline * HANG_FAIL_FACTOR
        && hang_is_the_disks(peers_answered, watched - 1)
    {
        let why = format!(
            "probe hung for more than {} ms",
            (deadline * HANG_FAIL_FACTOR).as_millis()
        );
        o.fail_disk(d.id, &why);
        return Some(Probe::Hung);
    }
    if p.sent.elapsed() <= deadline * (p.overruns + 1) {
        return None;
    }
    if p.overruns >= HANG_FAIL_FACTOR && !p.stall_noted {
        p.stall_noted = true;
        tracing::warn!(
            disk = d.id,
            "probe hung for more than {} ms, and most other disks do not answer either: a \
             stall under all of them, not this disk's failure; it stays suspect",
            (deadline * p.overruns).as_millis()
        );
    }
    p.overruns += 1;
    d.probe_timeouts.fetch_add(1, Ordering::Relaxed);
    Some(Probe::Late(format!(
        "probe hung for more than {} ms",
        (deadline * p.overruns).as_millis()
    )))
}

#[cfg(test)]
mod tests {
    use super::hang_is_the_disks;

    #[test]
    fn a_hang_is_blamed_on_the_disk_only_when_most_peers_answer() {
        // One disk of four hangs while the others answer: that disk.
        assert!(hang_is_the_disks(3, 3));
        assert!(hang_is_the_disks(2, 3));
        assert!(hang_is_the_disks(1, 1));
        // Every disk hangs at once, or half of them: the host, not the disks.
        assert!(!hang_is_the_disks(0, 3));
        assert!(!hang_is_the_disks(1, 2));
        // No peer to compare with: a hang alone never fails the only disk.
        assert!(!hang_is_the_disks(0, 0));
    }
}
