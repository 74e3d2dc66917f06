//! Helpers for end-to-end tests: start the real binary, stand-ins and small in-test servers,
//! read the admin API, and wait for conditions with generous deadlines.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A one-shot in-test backend running `serve` on its first connection; its answer comes
/// back on the channel.
pub fn backend<T: Send + 'static>(
    serve: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> (SocketAddr, std::sync::mpsc::Receiver<T>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((s, _)) = l.accept() {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = tx.send(serve(s));
        }
    });
    (addr, rx)
}

/// A backend for `rounds` connections that each read 5 bytes, answer 3,000 and close with a
/// reset (SO_LINGER 0) at once, so the answer and the RST arrive together; returns its
/// address and the answer.
pub fn answer_then_reset_backend(rounds: usize) -> (SocketAddr, Vec<u8>) {
    let answer: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let sent = answer.clone();
    std::thread::spawn(move || {
        for conn in l.incoming().take(rounds) {
            let Ok(mut s) = conn else { continue };
            let mut b = [0u8; 5];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(&sent);
            }
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
        }
    });
    (addr, answer)
}

/// Everything `s` yields until its end (EOF, a reset or any error).
pub fn read_until_end(s: &mut impl Read) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = s.read(&mut chunk) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
    }
    got
}

/// Path of the gatehouse binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gatehouse"))
}

#[path = "../support/ports.rs"]
mod ports;
pub use ports::free_port;

// Not every test binary that includes this module makes certificates.
#[path = "../support/test_ca.rs"]
#[allow(dead_code)]
mod test_ca;
#[allow(unused_imports)]
pub use test_ca::TestCa;

/// A child process killed (and reaped) on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }
    /// Waits for exit up to `timeout`; returns the exit status if it exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
    /// CPU seconds (user + system) used so far, from /proc/PID/stat.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
            + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        ticks / 100.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGCONT,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `gatehouse run` with its config file and log.
pub struct Gatehouse {
    pub proc: Proc,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub admin: SocketAddr,
}

impl Gatehouse {
    /// Writes `config` (which must have an `[admin]` on `admin`) and starts the node.
    pub fn start(config: &str, admin: SocketAddr) -> Gatehouse {
        Self::start_with(config, admin, |_| {})
    }

    /// Like `start`, with a hook to adjust the command (limits, environment).
    pub fn start_with(config: &str, admin: SocketAddr, adjust: impl FnOnce(&mut Command)) -> Gatehouse {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("gatehouse.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("gatehouse.log")).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("run")
            .arg("-c")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .env("NO_COLOR", "1");
        adjust(&mut cmd);
        let child = cmd.spawn().expect("start gatehouse");
        let mut g = Gatehouse {
            proc: Proc { child },
            dir,
            config_path,
            admin,
        };
        let ok = wait_until(Duration::from_secs(10), || {
            http(admin, "GET", "/api/v1/status", "").is_some()
        });
        if !ok {
            let status = g.proc.child.try_wait();
            panic!("gatehouse did not come up ({status:?}); log:\n{}", g.log());
        }
        g
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gatehouse.log")).unwrap_or_default()
    }

    /// A metric's value (`name{labels}` exactly as exposed), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let (_, body) = http(self.admin, "GET", "/metrics", "").expect("metrics");
        body.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .map(|v| v.trim().parse().unwrap_or(0.0))
            })
            .unwrap_or(0.0)
    }

    pub fn backends(&self) -> serde_json::Value {
        let (_, body) = http(self.admin, "GET", "/api/v1/backends", "").expect("backends");
        serde_json::from_str(&body).unwrap()
    }

    /// One backend's JSON object.
    pub fn backend(&self, pool: &str, name: &str) -> serde_json::Value {
        let all = self.backends();
        for p in all["pools"].as_array().unwrap() {
            if p["pool"] == pool {
                for b in p["backends"].as_array().unwrap() {
                    if b["name"] == name {
                        return b.clone();
                    }
                }
            }
        }
        panic!("no backend {pool}/{name} in {all}");
    }

    pub fn set_state(&self, pool: &str, backend: &str, state: &str) {
        let (status, body) = http(
            self.admin,
            "POST",
            &format!("/api/v1/backends/{pool}/{backend}"),
            &format!("{{\"state\":\"{state}\"}}"),
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
    }

    pub fn rewrite_config(&self, config: &str) {
        std::fs::write(&self.config_path, config).unwrap();
    }
}

/// A minimal HTTP/1.1 request; returns status and body.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    http_within(
        addr,
        method,
        path,
        body,
        Duration::from_millis(500),
        Duration::from_secs(10),
    )
}

/// [`http`] with its own connect and read timeouts.
pub fn http_within(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    connect: Duration,
    read: Duration,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, connect).ok()?;
    s.set_read_timeout(Some(read)).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Starts `gatehouse standin` as its own process (so it can be killed or stopped).
pub fn standin(kind: &str) -> (Proc, SocketAddr) {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new(bin())
        .args(["standin", "--kind", kind, "--listen", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Proc { child };
    assert!(
        wait_until(Duration::from_secs(5), || TcpStream::connect(addr).is_ok()),
        "stand-in did not start"
    );
    (p, addr)
}

/// An in-test server that writes its name to every client, then keeps the connection open
/// until the client closes (so connection counts stay up while a test holds it).
pub struct NameServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl NameServer {
    pub fn start(name: &str) -> NameServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let name = name.to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Acquire) {
                    return;
                }
                let Ok(mut s) = conn else { continue };
                let name = name.clone();
                std::thread::spawn(move || {
                    let _ = s.write_all(format!("{name}\n").as_bytes());
                    let mut sink = [0u8; 1024];
                    while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
                });
            }
        });
        NameServer { addr, stop }
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Connects (optionally from a given local IP) and reads the first line the backend sends.
pub fn who_answers(target: SocketAddr, from: Option<std::net::IpAddr>) -> Option<(String, TcpStream)> {
    let s = match from {
        Some(ip) => {
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
            sock.bind(&SocketAddr::new(ip, 0).into()).ok()?;
            sock.connect_timeout(&target.into(), Duration::from_secs(2))
                .ok()?;
            TcpStream::from(sock)
        }
        None => TcpStream::connect_timeout(&target, Duration::from_secs(2)).ok()?,
    };
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let mut r = &s;
    while r.read(&mut byte).ok()? == 1 {
        if byte[0] == b'\n' {
            return Some((String::from_utf8_lossy(&line).into_owned(), s));
        }
        line.push(byte[0]);
    }
    None
}

/// A config with one listener on `listen` balancing over `backends` (name, address).
pub fn simple_config(
    admin: SocketAddr,
    listen: SocketAddr,
    pool_extra: &str,
    listener_extra: &str,
    backends: &[(&str, SocketAddr)],
) -> String {
    let full: Vec<(&str, SocketAddr, &str)> = backends.iter().map(|(n, a)| (*n, *a, "")).collect();
    config_full(admin, listen, 2, "", pool_extra, listener_extra, &full)
}

/// A config with one listener `front` on `listen` over pool `p`; each backend is
/// (name, address, extra inline fields such as `weight = 2`).
pub fn config_full(
    admin: SocketAddr,
    listen: SocketAddr,
    workers: usize,
    node_extra: &str,
    pool_extra: &str,
    listener_extra: &str,
    backends: &[(&str, SocketAddr, &str)],
) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(n, a, extra)| {
            let extra = if extra.is_empty() {
                String::new()
            } else {
                format!(", {extra}")
            };
            format!("  {{ name = \"{n}\", address = \"{a}\"{extra} }},")
        })
        .collect();
    format!(
        "[node]\nworkers = {workers}\nlog_level = \"info\"\ndrain_timeout = \"2s\"\n{node_extra}\n\n[admin]\nlisten = \"{admin}\"\n\n[halb]\n[[halb.listener]]\nname = \"front\"\nbind = \"{listen}\"\npool = \"p\"\n{listener_extra}\n\n[[halb.pool]]\nname = \"p\"\n{pool_extra}\nbackends = [\n{}\n]\n",
        list.join("\n")
    )
}

/// Two fresh loopback addresses: (admin, listener).
pub fn addrs() -> (SocketAddr, SocketAddr) {
    let a = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let l = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    (a, l)
}

/// Starts `gatehouse standin` on a given address (to bring a killed one back on its port).
pub fn standin_at(kind: &str, addr: SocketAddr) -> Proc {
    let child = Command::new(bin())
        .args(["standin", "--kind", kind, "--listen", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Proc { child };
    assert!(
        wait_until(Duration::from_secs(5), || TcpStream::connect(addr).is_ok()),
        "stand-in on {addr} did not start"
    );
    p
}

/// An in-test echo server (a thread per connection). With a name, it first writes
/// `name\n`, then echoes everything; it half-closes when the client does.
pub struct EchoServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl EchoServer {
    pub fn start(name: Option<&str>) -> EchoServer {
        Self::start_on("127.0.0.1:0".parse().unwrap(), name)
    }

    pub fn start_on(bind: SocketAddr, name: Option<&str>) -> EchoServer {
        let listener = TcpListener::bind(bind).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let name = name.map(str::to_string);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::Acquire) {
                    return;
                }
                let Ok(mut s) = conn else { continue };
                let name = name.clone();
                std::thread::spawn(move || {
                    if let Some(n) = name {
                        if s.write_all(format!("{n}\n").as_bytes()).is_err() {
                            return;
                        }
                    }
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = s.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        EchoServer { addr, stop }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Connects to `target` from `from` (any 127.0.0.0/8 or ::1 address) or from the default.
pub fn connect_from(target: SocketAddr, from: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let domain = if target.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
    if let Some(ip) = from {
        sock.bind(&SocketAddr::new(ip, 0).into())?;
    }
    sock.connect_timeout(&target.into(), Duration::from_secs(2))?;
    let s = TcpStream::from(sock);
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// Writes `msg` and reads the same number of bytes back; true when they match.
pub fn echo_round_trip(s: &mut TcpStream, msg: &[u8]) -> bool {
    if s.write_all(msg).is_err() {
        return false;
    }
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).is_ok() && back == msg
}

/// A fresh connection through `target` that echoes a message intact.
pub fn echo_once(target: SocketAddr) -> bool {
    match connect_from(target, None) {
        Ok(mut s) => echo_round_trip(&mut s, b"ping through gatehouse\n"),
        Err(_) => false,
    }
}

/// What a client sees after its connection was (or was not) closed by the other end.
#[derive(PartialEq, Eq)]
pub enum Seen {
    /// Read returned 0.
    Eof,
    /// Read failed with ECONNRESET.
    Reset,
    /// Some bytes arrived.
    Data(Vec<u8>),
    /// Nothing within the timeout.
    Silent,
    /// Another error.
    Other(String),
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Seen::Eof => f.write_str("Eof"),
            Seen::Reset => f.write_str("Reset"),
            Seen::Data(d) => write!(f, "Data({:?})", String::from_utf8_lossy(d)),
            Seen::Silent => f.write_str("Silent"),
            Seen::Other(e) => write!(f, "Other({e})"),
        }
    }
}

/// Connects to `target`, sends `msg` and classifies what comes back within `timeout`. A proxy
/// that refuses at once (say, when its backend's handshake fails right after the accept) may
/// reset the connection before `connect` has returned: that counts as [`Seen::Reset`] too.
pub fn send_and_see(target: SocketAddr, msg: &[u8], timeout: Duration) -> Seen {
    match connect_from(target, None) {
        Ok(mut s) => {
            // A write into a connection the proxy already closed fails; the read says how.
            let _ = s.write_all(msg);
            read_outcome(&mut s, timeout)
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Seen::Reset,
        Err(e) => panic!("connect to {target}: {e}"),
    }
}

/// Reads once with `timeout` and classifies the result.
pub fn read_outcome(s: &mut TcpStream, timeout: Duration) -> Seen {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(0) => Seen::Eof,
        Ok(n) => Seen::Data(buf[..n].to_vec()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Seen::Reset,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
            Seen::Silent
        }
        Err(e) => Seen::Other(e.to_string()),
    }
}

impl Gatehouse {
    /// Sends a signal to the node.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        self.proc.signal(sig);
    }

    /// Waits until a metric reaches at least `value`; returns the last value read.
    pub fn wait_metric(&self, series: &str, value: f64, timeout: Duration) -> f64 {
        let mut last = 0.0;
        wait_until(timeout, || {
            last = self.metric(series);
            last >= value
        });
        last
    }

    /// The backend's health as the admin API says (`up` / `down`).
    pub fn health(&self, pool: &str, name: &str) -> String {
        self.backend(pool, name)["health"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// `gatehouse_backend_connections_total` of one backend.
    pub fn backend_total(&self, pool: &str, name: &str) -> f64 {
        self.metric(&format!(
            "gatehouse_backend_connections_total{{pool=\"{pool}\",backend=\"{name}\"}}"
        ))
    }

    /// `gatehouse_connections_closed_total{reason=...}`.
    pub fn closed(&self, reason: &str) -> f64 {
        self.metric(&format!(
            "gatehouse_connections_closed_total{{reason=\"{reason}\"}}"
        ))
    }
}

impl Gatehouse {
    /// Asserts that once every client is gone the node holds no connection and no backend
    /// slot (no counter leaked on an error path).
    pub fn assert_nothing_held(&self) {
        let clean = wait_until(Duration::from_secs(5), || {
            self.metric("gatehouse_connections_active") == 0.0
                && self.backends()["pools"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|p| p["backends"].as_array().cloned().unwrap_or_default())
                    .all(|b| b["active"] == 0)
        });
        assert!(
            clean,
            "connections still counted after every client left: active {}, backends {}",
            self.metric("gatehouse_connections_active"),
            self.backends()
        );
    }
}
