//! What the server process costs, read from `/proc/<pid>`: resident memory and CPU time.

use std::time::Duration;

/// Resident set size in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// CPU time used so far by every thread of the process, from each thread's `schedstat`
/// (nanoseconds on CPU): finer than the clock ticks of `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        // A thread may exit between listing and reading.
        if let Ok(text) = std::fs::read_to_string(path) {
            total += text.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(Duration::from_nanos(total))
}

/// CPU time used so far by this process (the load generator): the servers share the cores
/// with it, so what it spends is not available to them.
pub fn own_cpu_time() -> Duration {
    cpu_time(std::process::id()).unwrap_or_default()
}

/// Samples both around a piece of work.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub rss: u64,
    pub cpu: Duration,
}

impl Sample {
    pub fn take(pid: Option<u32>) -> Option<Sample> {
        let pid = pid?;
        Some(Sample {
            rss: rss_bytes(pid)?,
            cpu: cpu_time(pid)?,
        })
    }
}

/// CPU time per unit of work, in microseconds.
pub fn per_unit_us(cpu: Duration, units: u64) -> f64 {
    cpu.as_secs_f64() * 1e6 / units.max(1) as f64
}

/// Server CPU time per unit of work between two samples, in microseconds.
pub fn cpu_per_us(before: Option<Sample>, after: Option<Sample>, units: u64) -> Option<f64> {
    let (before, after) = (before?, after?);
    Some(per_unit_us(after.cpu - before.cpu, units))
}

/// The server processes of a run: one node (`--pid`), or several nodes (`--pids`) whose CPU is
/// summed and also reported per node, plus the broker server (`--broker-pid`), reported apart.
#[derive(Debug, Clone, Default)]
pub struct Servers {
    pub nodes: Vec<u32>,
    /// Whether to report per node too (`--pids` was given): single-node runs keep their output.
    pub per_node: bool,
    pub broker: Option<u32>,
}

/// One [`Sample`] per node, and the broker's.
#[derive(Debug, Clone)]
pub struct Samples {
    pub nodes: Vec<Option<Sample>>,
    /// Copied from [`Servers::per_node`].
    pub per_node: bool,
    pub broker: Option<Sample>,
}

impl Servers {
    pub fn sample(&self) -> Samples {
        Samples {
            nodes: self
                .nodes
                .iter()
                .map(|&pid| Sample::take(Some(pid)))
                .collect(),
            per_node: self.per_node,
            broker: Sample::take(self.broker),
        }
    }
}

impl Samples {
    /// RSS and CPU added up over the nodes; `None` when no node or any node could not be read.
    pub fn total(&self) -> Option<Sample> {
        if self.nodes.is_empty() {
            return None;
        }
        self.nodes.iter().try_fold(
            Sample {
                rss: 0,
                cpu: Duration::ZERO,
            },
            |sum, node| {
                let node = (*node)?;
                Some(Sample {
                    rss: sum.rss + node.rss,
                    cpu: sum.cpu + node.cpu,
                })
            },
        )
    }
}
