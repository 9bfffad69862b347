//! A wake-up a background thread sleeps on between rounds, and the loop of such a thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// `kick` wakes the sleeper at once; without one it wakes after its timeout. A kick that
/// comes while the thread is working is kept for its next `wait` (never lost).
#[derive(Default)]
pub struct Wake {
    kicked: Mutex<bool>,
    cv: Condvar,
}

impl Wake {
    pub fn kick(&self) {
        *self.kicked.lock() = true;
        self.cv.notify_all();
    }

    /// Sleeps until kicked or `timeout`, and consumes the kick.
    pub fn wait(&self, timeout: Duration) {
        let mut k = self.kicked.lock();
        if !*k {
            self.cv.wait_for(&mut k, timeout);
        }
        *k = false;
    }
}

/// The wake-up and stop flag of a background thread that works in rounds (the sharding
/// engine, evacuation, the risk service): `kick` starts a round at once, `stop` ends the
/// thread at its next check.
#[derive(Default)]
pub struct Rounds {
    wake: Wake,
    stop: AtomicBool,
}

impl Rounds {
    pub fn kick(&self) {
        self.wake.kick();
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.kick();
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Starts the supervised thread `name`: while `owner` lives and is not stopped, one
    /// `round`, then a sleep of what it returns (cut short by a kick). The thread holds only
    /// a weak reference between rounds, so dropping the owner ends it.
    pub fn spawn<T: Send + Sync + 'static>(
        name: &'static str,
        owner: &Arc<T>,
        rounds: fn(&T) -> &Rounds,
        mut round: impl FnMut(&T) -> Duration + Send + 'static,
    ) {
        let w: Weak<T> = Arc::downgrade(owner);
        crate::supervise::spawn(name, move || loop {
            let Some(o) = w.upgrade() else { break };
            if rounds(&o).stopped() {
                break;
            }
            crate::supervise::fault_point(name);
            let pause = round(&o);
            if !pause.is_zero() {
                rounds(&o).wake.wait(pause);
            }
        })
        .unwrap_or_else(|e| panic!("spawn {name} thread: {e}"));
    }
}
