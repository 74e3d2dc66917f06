//! CPU time and resident memory of the processes under test, read from /proc.
//!
//! Owns the parsing of `/proc/PID/stat` (utime + stime, proc(5) fields 14 and 15, in clock
//! ticks) and `/proc/PID/status` (`VmRSS`). The scenarios sample before and after their
//! measured window; the difference is what the proxy spent on the load.

use std::fs;
use std::io;

/// One reading of a process: CPU seconds used since it started and its resident set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcSample {
    /// The process id.
    pub pid: u32,
    /// utime + stime in seconds (all threads).
    pub cpu_s: f64,
    /// VmRSS in bytes.
    pub rss_bytes: u64,
}

/// Reads a sample of `pid`; the error names the pid.
pub fn sample(pid: u32) -> io::Result<ProcSample> {
    let name = |what: &str, e: io::Error| io::Error::new(e.kind(), format!("pid {pid}: {what}: {e}"));
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| name("stat", e))?;
    let ticks = parse_stat_cpu_ticks(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("pid {pid}: unparsable /proc stat"),
        )
    })?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| name("status", e))?;
    let rss_kib = parse_status_rss_kib(&status).unwrap_or(0);
    Ok(ProcSample {
        pid,
        cpu_s: ticks as f64 / clock_ticks_per_second(),
        rss_bytes: rss_kib * 1024,
    })
}

/// utime + stime (clock ticks) from the text of `/proc/PID/stat`.
///
/// The command name (field 2) may hold spaces and parentheses, so fields are counted from
/// the last `)`: after it come field 3 (state) onwards; utime is field 14, stime field 15.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` in KiB from the text of `/proc/PID/status`.
pub fn parse_status_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..].split_whitespace().next()?.parse().ok()
}

/// sysconf(_SC_CLK_TCK), the unit of utime and stime.
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_name() {
        let stat = "4242 (my (odd) proc) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 3 0 12345 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("12 (x) S 1"), None);
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn parses_status_rss() {
        let status = "Name:\thaproxy\nVmPeak:\t  100 kB\nVmRSS:\t   20480 kB\nThreads:\t1\n";
        assert_eq!(parse_status_rss_kib(status), Some(20480));
        assert_eq!(parse_status_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0);
        assert!(s.cpu_s >= 0.0);
        assert!(sample(u32::MAX).is_err());
    }
}
