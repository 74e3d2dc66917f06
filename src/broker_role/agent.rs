//! The host agent: beside an RD Session Host, reports its sessions, CPU, memory and whether
//! its RDP port answers to every broker it is given (PROTOCOL.md §6.5), one thread per
//! broker, reconnecting with backoff.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use gatehouse_control::frame::{KeepaliveConfig, Role};
use gatehouse_control::message::{self, HostReport, Inbound, Reply, Request};

use super::link::{self, our_hello, Link};
use super::HostAgentSection;

/// Longest wait between two connection attempts to a broker.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// First wait after a failed attempt.
pub const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// How long the RDP port probe may take.
const RDP_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// A running host agent.
pub struct HostAgent {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl HostAgent {
    /// Starts one reporting thread per broker of `section`; `node` is the host's name.
    pub fn start(section: &HostAgentSection, node: &str) -> Result<HostAgent, String> {
        let tls = section.tls().client_config().map_err(|e| e.to_string())?;
        our_hello(Role::HostAgent, node)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for broker in &section.brokers {
            let ctx = AgentCtx {
                broker: *broker,
                node: node.to_string(),
                tls: tls.clone(),
                section: section.clone(),
                stop: stop.clone(),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("host-agent-{broker}"))
                    .spawn(move || ctx.run())
                    .map_err(|e| format!("cannot start a host-agent thread: {e}"))?,
            );
        }
        Ok(HostAgent { stop, threads })
    }

    /// Stops every thread.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

struct AgentCtx {
    broker: SocketAddr,
    node: String,
    tls: Arc<ClientConfig>,
    section: HostAgentSection,
    stop: Arc<AtomicBool>,
}

impl AgentCtx {
    fn run(self) {
        let mut backoff = MIN_BACKOFF;
        while !self.stop.load(Ordering::Relaxed) {
            match self.connect() {
                Ok(link) => {
                    backoff = MIN_BACKOFF;
                    tracing::info!(broker = %self.broker, "host agent connected");
                    let why = self.serve(link);
                    if self.stop.load(Ordering::Relaxed) {
                        // This node is stopping: an ending, not a fault.
                        tracing::info!(broker = %self.broker, "host agent link ended: {why}");
                    } else {
                        tracing::warn!(broker = %self.broker, "host agent link ended: {why}");
                    }
                }
                Err(e) => {
                    tracing::warn!(broker = %self.broker, "host agent cannot connect: {e}; retry in {backoff:?}")
                }
            }
            sleep_unless(&self.stop, backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn connect(&self) -> Result<Link, String> {
        let sock =
            TcpStream::connect_timeout(&self.broker, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("gatehouse-broker")
            .expect("a constant DNS name is valid");
        let conn = rustls::ClientConnection::new(self.tls.clone(), name).map_err(|e| e.to_string())?;
        let hello = our_hello(Role::HostAgent, &self.node)?;
        link::establish(
            sock,
            rustls::Connection::Client(conn),
            &hello,
            Role::Broker,
            KeepaliveConfig::default(),
        )
        .map_err(|e| e.to_string())
    }

    fn serve(&self, mut link: Link) -> String {
        let interval = self.section.report_interval.get();
        let mut next_report = Instant::now();
        let mut next_id = 1u64;
        while !self.stop.load(Ordering::Relaxed) {
            if Instant::now() >= next_report {
                next_report = Instant::now() + interval;
                let report = Request::HostReport(self.report());
                let mut out = Vec::new();
                if let Err(e) = message::encode_request(next_id, &report, link.max_frame_bytes(), &mut out) {
                    return format!("cannot encode a report: {e}");
                }
                next_id += 1;
                if let Err(e) = link.send(&out) {
                    return e.to_string();
                }
            }
            let frames = match link.poll(Duration::from_millis(50)) {
                Ok(f) => f,
                Err(e) => return e.to_string(),
            };
            for frame in frames {
                match message::decode(&frame) {
                    Ok(Inbound::Response {
                        reply: Reply::Refused(r),
                        ..
                    }) => {
                        tracing::warn!(broker = %self.broker, reason = r.reason.as_str(), "report refused: {:?}", r.detail)
                    }
                    Ok(_) => {}
                    Err(e) => tracing::info!(broker = %self.broker, "bad frame ignored: {e}"),
                }
            }
        }
        link.close();
        "stopped".into()
    }

    fn report(&self) -> HostReport {
        let s = &self.section;
        let mut sessions = s.sessions.clone();
        if let Some(path) = &s.sessions_file {
            if let Ok(text) = std::fs::read_to_string(path) {
                sessions.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_string),
                );
            }
        }
        sessions.truncate(gatehouse_control::message::MAX_SESSIONS_PER_REPORT);
        HostReport {
            host: self.node.clone(),
            sessions,
            cpu_percent: s.cpu_percent.unwrap_or_else(cpu_percent),
            mem_percent: s.mem_percent.unwrap_or_else(mem_percent),
            rdp_up: TcpStream::connect_timeout(&s.rdp_address, RDP_PROBE_TIMEOUT).is_ok(),
        }
    }
}

fn sleep_unless(stop: &AtomicBool, total: Duration) {
    let end = Instant::now() + total;
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// CPU load as a percentage: the 1-minute load average per core (`/proc/loadavg`), capped.
pub fn cpu_percent() -> u8 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| parse_loadavg(&t))
        .map_or(0, |load| percent(load / cores))
}

/// Memory in use as a percentage: 1 - MemAvailable / MemTotal (`/proc/meminfo`).
pub fn mem_percent() -> u8 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_meminfo(&t))
        .map_or(0, |(total, available)| {
            percent(1.0 - available as f64 / total.max(1) as f64)
        })
}

fn percent(fraction: f64) -> u8 {
    (fraction * 100.0).round().clamp(0.0, 100.0) as u8
}

fn parse_loadavg(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_parsers() {
        assert_eq!(parse_loadavg("0.52 0.40 0.33 1/234 5678\n"), Some(0.52));
        assert_eq!(parse_loadavg(""), None);
        let meminfo = "MemTotal:       16000000 kB\nMemFree:  1000 kB\nMemAvailable:    4000000 kB\n";
        assert_eq!(parse_meminfo(meminfo), Some((16_000_000, 4_000_000)));
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n"), None);
        assert_eq!(percent(0.754), 75);
        assert_eq!(percent(3.0), 100);
        assert_eq!(percent(-1.0), 0);
        assert!(cpu_percent() <= 100);
        assert!(mem_percent() <= 100);
    }
}
