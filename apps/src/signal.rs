//! SIGINT/SIGTERM turned into a flag the main loop polls.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    // Only async-signal-safe work here: an atomic swap, and `_exit` on a second signal so a
    // stuck process can still be interrupted.
    if STOP.swap(true, Ordering::SeqCst) {
        // SAFETY: `_exit` is async-signal-safe and takes no pointers.
        unsafe { libc::_exit(130) };
    }
}

/// Install handlers for SIGINT and SIGTERM; returns the flag they set.
///
/// The handlers are installed without `SA_RESTART`, so a blocking `poll` returns early with
/// `EINTR` and the loop sees the flag at once.
pub fn install() -> io::Result<&'static AtomicBool> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: an all-zero `sigaction` is a valid value (empty mask, no flags); we fill in a
        // handler with the signature `sa_handler` expects, and pass valid pointers to
        // `sigemptyset` and `sigaction` (a null old-action pointer is allowed).
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = 0;
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(&STOP)
}

/// Whether a stop signal has arrived.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}
