//! Asking the memory system for a cache line ahead of its use, so that the misses of many
//! packets overlap instead of following one another (`Interface::receive_batch`). A hint:
//! it changes no result, only when the data arrives.

/// Start loading the cache line holding `r` into every cache level, without waiting for it.
/// A no-op where the target has no prefetch instruction we reach safely.
#[inline(always)]
pub(crate) fn prefetch<T>(r: &T) {
    // `safe_arch` wraps the SSE instruction, part of every x86_64 target; a prefetch neither
    // faults nor has any architectural effect.
    #[cfg(target_arch = "x86_64")]
    safe_arch::prefetch_t0(r);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}
