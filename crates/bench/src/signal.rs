//! SIGINT/SIGTERM become a flag: the run stops at its next check (commands being waited for
//! are killed) and unwinds its teardown stack, instead of dying with mounts left behind.

use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::bail;

/// The signal that arrived, 0 while none has.
static CAUGHT: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    // Only an atomic store: nothing else is async-signal-safe here.
    CAUGHT.store(sig, Ordering::SeqCst);
}

/// Installs the handlers for SIGINT and SIGTERM.
pub fn install() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a handler that only stores to an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// The signal caught so far, if any.
pub fn caught() -> Option<i32> {
    match CAUGHT.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Fails once a signal has arrived.
pub fn check() -> anyhow::Result<()> {
    if let Some(s) = caught() {
        bail!("interrupted by signal {s}");
    }
    Ok(())
}

/// The exit status a shell gives a process killed by `sig`.
pub fn exit_code(sig: i32) -> i32 {
    128 + sig
}
