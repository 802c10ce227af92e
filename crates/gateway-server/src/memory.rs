//! Giving memory back to the operating system after connections leave (`[memory]`).
//!
//! The policy: glibc's allocator keeps the memory of freed connections (tens of MB after 10k
//! leave) for reuse, so the process's RSS stays at its peak. `malloc_trim` hands the free
//! pages back, but it briefly holds the allocator's locks, so it runs only when it is worth
//! it: every `memory.trim_interval_ms` (5 s) the open sockets (connections and handshakes, so a
//! flood of half-open peers counts too) are compared with their peak since the last look, and
//! the heap is trimmed once at least `memory.trim_min_drop` (256) of them *and* a quarter of
//! the peak have closed. `memory.trim = false` turns it off (for an allocator of one's own, or
//! to measure without it). Elsewhere than Linux with glibc there is nothing to trim.
//!
//! Besides, worker threads grow their heaps in 1 MiB steps (`M_TOP_PAD`) rather than a few
//! pages at a time: one `mprotect` per step instead of about one per new connection under a
//! burst; untouched pages are not resident, so this costs no memory.

use std::sync::Arc;

use tokio::sync::watch;

use crate::Counters;
use crate::config::MemoryConfig;

/// Whether the drop from `peak` to `now` open sockets is worth a trim.
fn worth_trimming(peak: u64, now: u64, min_drop: usize) -> bool {
    let dropped = peak.saturating_sub(now);
    dropped >= min_drop as u64 && now < peak - peak / 4
}

/// Runs the policy with the settings `settings` holds (a reload may change them).
pub(crate) async fn return_freed_memory(
    counters: Arc<Counters>,
    mut settings: watch::Receiver<MemoryConfig>,
) {
    let mut watching = true;
    loop {
        let current = *settings.borrow_and_update();
        if watching {
            tokio::select! {
                () = tokio::time::sleep(current.trim_interval) => {}
                changed = settings.changed() => {
                    // The sender is gone (no more reloads): keep the last settings.
                    watching = changed.is_ok();
                    continue;
                }
            }
        } else {
            tokio::time::sleep(current.trim_interval).await;
        }
        let peak = counters.take_peak();
        let now = counters.open_sockets();
        if current.trim && worth_trimming(peak, now, current.trim_min_drop) {
            trim();
        }
    }
}

/// Grows each worker thread's heap in 1 MiB steps (see the module's documentation).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // one FFI call into glibc, below
pub(crate) fn grow_heap_in_larger_steps() {
    const M_TOP_PAD: std::ffi::c_int = -2;
    unsafe extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }
    // SAFETY: mallopt takes two integers and only changes the allocator's tuning.
    unsafe {
        mallopt(M_TOP_PAD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn grow_heap_in_larger_steps() {}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // one FFI call into glibc, below
fn trim() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: malloc_trim takes no pointers and is thread-safe; 0 keeps no padding.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::worth_trimming;

    #[test]
    fn trims_only_after_a_large_drop_from_the_peak() {
        assert!(worth_trimming(10_000, 100, 256));
        assert!(!worth_trimming(10_000, 9_800, 256), "fewer than 256 closed");
        assert!(
            !worth_trimming(1_000, 760, 200),
            "less than a quarter closed"
        );
        assert!(worth_trimming(1_000, 700, 200));
        assert!(!worth_trimming(0, 0, 0), "nothing open, nothing closed");
        assert!(!worth_trimming(5, 9, 0), "more open than the peak");
    }
}
