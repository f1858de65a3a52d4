//! Process and machine measurements read from `/proc` (Linux): peak RSS, CPU time, machine
//! load, disk usage of a directory, and the machine description for the report.

use serde::Serialize;
use std::path::Path;

/// A field of `/proc/<pid>/status` in bytes (`VmHWM`, `VmRSS`, ...; the file says kB).
fn status_field_bytes(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak resident set size (`VmHWM`) of a running process, in bytes.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    status_field_bytes(pid, "VmHWM:")
}

/// Current resident set size (`VmRSS`) of a running process, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_field_bytes(pid, "VmRSS:")
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions and touches no memory of ours.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// User plus system CPU seconds a running process has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks_per_second())
}

/// Busy and total CPU time of the whole machine so far (all cores, from `/proc/stat`), in
/// seconds. The difference of two readings gives the machine's load over an interval.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    /// Seconds not idle and not waiting for I/O, summed over cores.
    pub busy: f64,
    /// All seconds, summed over cores.
    pub total: f64,
}

impl MachineCpu {
    /// Reads `/proc/stat`.
    pub fn now() -> Self {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
            return Self::default();
        };
        let ticks: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let total: f64 = ticks.iter().take(8).sum();
        // idle (4th) and iowait (5th) are the not-busy ones.
        let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
        let hz = clock_ticks_per_second();
        Self {
            busy: (total - idle) / hz,
            total: total / hz,
        }
    }

    /// Busy cores on average between `earlier` and `self` (2.0 = two cores fully busy).
    pub fn busy_cores_since(&self, earlier: &Self, cores: usize) -> f64 {
        let total = self.total - earlier.total;
        if total <= 0.0 {
            return 0.0;
        }
        (self.busy - earlier.busy) / total * cores as f64
    }
}

/// Disk space used by a directory tree, like `du -s` (allocated blocks), in bytes. A missing
/// directory uses 0 bytes.
pub fn dir_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            total += dir_bytes(&entry.path());
        } else {
            total += meta.blocks() * 512;
        }
    }
    total
}

/// The pid of a local noida-db broker serving Kafka on `port`, found by its command line,
/// to report how much CPU the broker used during a run.
pub fn find_broker_pid(port: u16) -> Option<u32> {
    let wanted = port.to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_noida = args.first().is_some_and(|a| a.contains("noida-db"));
        let serves_port = args.windows(2).any(|w| {
            (w[0] == "--kafka-port" && w[1] == wanted) || w[0] == format!("--kafka-port={wanted}")
        });
        if is_noida && serves_port {
            return Some(pid);
        }
    }
    None
}

/// The machine a benchmark ran on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// `nproc`: CPUs this process may use.
    pub cores: usize,
    /// CPU model from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Physical memory in bytes (`MemTotal`).
    pub mem_total_bytes: u64,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// Describes this machine.
    pub fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total_bytes = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
        Self {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            mem_total_bytes,
            kernel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_a_peak_rss_and_cpu_time() {
        let pid = std::process::id();
        assert!(peak_rss_bytes(pid).is_some_and(|b| b > 0));
        assert!(rss_bytes(pid).is_some_and(|b| b > 0));
        assert!(cpu_seconds(pid).is_some());
    }

    #[test]
    fn missing_directory_uses_no_space() {
        assert_eq!(dir_bytes(Path::new("/nonexistent/exactly-bench")), 0);
    }
}
