//! The standard `process_*` metrics of this process, read from `/proc` at
//! each scrape.
//!
//! Our own rather than the `prometheus` crate's `process` collector: that
//! one (0.14) keeps `process_cpu_seconds_total` in an integer counter and
//! divides clock ticks by `CLK_TCK` in integers, so the CPU time moves in
//! whole seconds (0 after 0.98 s of CPU) and a `rate()` of it is flat or a
//! comb. Here every value is an `f64`: CPU time to the clock tick (10 ms).
//! Names and help as the Prometheus client libraries write them. Linux
//! only: elsewhere (no `/proc/self`) a scrape has none of them.

use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, Opts};

/// The `process_*` metrics of the calling process.
pub struct ProcessCollector {
    cpu: Counter,
    open_fds: Gauge,
    max_fds: Gauge,
    virtual_memory: Gauge,
    resident_memory: Gauge,
    start_time: Gauge,
    threads: Gauge,
    /// Held while the CPU counter is brought up to the kernel's figure, so
    /// two scrapes at once cannot both add the same difference.
    cpu_update: Mutex<()>,
}

/// What `/proc/self/stat` tells, in the units we export.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    pub threads: f64,
    /// Seconds after boot the process started.
    pub started_after_boot: f64,
    pub virtual_bytes: f64,
    pub resident_bytes: f64,
}

impl Stat {
    /// Parses `/proc/<pid>/stat` (proc(5)). The command name (field 2) is in
    /// parentheses and may hold spaces and parentheses itself, so fields are
    /// counted from the last `)`.
    pub fn parse(text: &str, ticks_per_second: f64, page_size: f64) -> Option<Stat> {
        let rest = &text[text.rfind(')')? + 1..];
        // Field n of proc(5) (1-based) is at index n - 3 after the name.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field =
            |n: usize| -> Option<f64> { fields.get(n - 3)?.parse::<u64>().ok().map(|v| v as f64) };
        Some(Stat {
            cpu_seconds: (field(14)? + field(15)?) / ticks_per_second,
            threads: field(20)?,
            started_after_boot: field(22)? / ticks_per_second,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * page_size,
        })
    }
}

impl ProcessCollector {
    pub fn new() -> Self {
        let counter = |name: &str, help: &str| {
            Counter::with_opts(Opts::new(name, help)).expect("valid metric")
        };
        let gauge =
            |name: &str, help: &str| Gauge::with_opts(Opts::new(name, help)).expect("valid metric");
        let collector = ProcessCollector {
            cpu: counter(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
            ),
            open_fds: gauge("process_open_fds", "Number of open file descriptors."),
            max_fds: gauge(
                "process_max_fds",
                "Maximum number of open file descriptors.",
            ),
            virtual_memory: gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            ),
            resident_memory: gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            start_time: gauge(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
            ),
            threads: gauge("process_threads", "Number of OS threads in the process."),
            cpu_update: Mutex::new(()),
        };
        // The start time never changes: read once.
        if let (Some(stat), Some(boot)) = (read_stat(), boot_time()) {
            collector.start_time.set(boot + stat.started_after_boot);
        }
        collector
    }

    fn all(&self) -> [&dyn Collector; 7] {
        [
            &self.cpu,
            &self.open_fds,
            &self.max_fds,
            &self.virtual_memory,
            &self.resident_memory,
            &self.start_time,
            &self.threads,
        ]
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.all().into_iter().flat_map(|c| c.desc()).collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        // No /proc (not Linux, or hidden): nothing rather than zeros.
        let Some(stat) = read_stat() else {
            return Vec::new();
        };
        {
            let _one_at_a_time = self.cpu_update.lock().unwrap_or_else(|e| e.into_inner());
            let ahead = stat.cpu_seconds - self.cpu.get();
            // The kernel's figure only grows; a counter must not go back.
            if ahead > 0.0 {
                self.cpu.inc_by(ahead);
            }
        }
        self.threads.set(stat.threads);
        self.virtual_memory.set(stat.virtual_bytes);
        self.resident_memory.set(stat.resident_bytes);
        if let Some(n) = open_fds() {
            self.open_fds.set(n);
        }
        if let Some(n) = max_fds() {
            self.max_fds.set(n);
        }
        self.all().into_iter().flat_map(|c| c.collect()).collect()
    }
}

fn sysconf(name: libc::c_int) -> Option<f64> {
    // SAFETY: sysconf reads a system constant; no memory is handed over.
    let v = unsafe { libc::sysconf(name) };
    (v > 0).then_some(v as f64)
}

fn read_stat() -> Option<Stat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    Stat::parse(
        &text,
        sysconf(libc::_SC_CLK_TCK)?,
        sysconf(libc::_SC_PAGESIZE)?,
    )
}

/// Boot time, Unix seconds (`btime` of `/proc/stat`).
fn boot_time() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("btime "))?;
    line.trim().parse::<u64>().ok().map(|v| v as f64)
}

/// Entries of `/proc/self/fd` (the directory's own descriptor included, as
/// every client library counts it).
fn open_fds() -> Option<f64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as f64)
}

/// The soft limit on open files (`Max open files` of `/proc/self/limits`);
/// none when unlimited.
fn max_fds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    soft.parse::<u64>().ok().map(|v| v as f64)
}

#[cfg(test)]
mod tests;
