//! The process's own numbers under their standard Prometheus names (`process_*`), read from
//! `/proc/self` at scrape time with the `procfs` crate. Elsewhere than Linux they are left out.

/// One reading of `/proc/self`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ProcessStats {
    /// User and system CPU time, in seconds.
    pub cpu_seconds: f64,
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    pub open_fds: u64,
    /// The soft open-file limit.
    pub max_fds: u64,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
    pub threads: u64,
}

/// Reads `/proc/self`; `None` where it cannot be read (not Linux).
pub(crate) fn read() -> Option<ProcessStats> {
    let me = procfs::process::Process::myself().ok()?;
    let stat = me.stat().ok()?;
    let ticks = procfs::ticks_per_second() as f64;
    let boot = procfs::boot_time_secs().ok()? as f64;
    let (max_fds, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?;
    Some(ProcessStats {
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
        resident_memory_bytes: stat.rss * procfs::page_size(),
        virtual_memory_bytes: stat.vsize,
        open_fds: me.fd_count().ok()? as u64,
        max_fds,
        start_time_seconds: boot + stat.starttime as f64 / ticks,
        threads: stat.num_threads.max(0) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn this_process_reads_plausibly() {
        let stats = read().expect("/proc/self is readable on Linux");
        assert!(stats.resident_memory_bytes > 1024 * 1024);
        assert!(stats.open_fds >= 3 && stats.open_fds <= stats.max_fds);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        assert!(stats.start_time_seconds <= now + 1.0 && stats.start_time_seconds > now - 3600.0);
        assert!(stats.threads >= 1);
    }
}
