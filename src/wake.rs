//! A wake-up a background thread sleeps on between rounds.

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
