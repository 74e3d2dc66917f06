//! The lab of the VRRP end-to-end tests: network namespaces on a bridge, the real `gatehouse`
//! binary and keepalived started in them, VIP watchers, gateway stand-ins and a client prober.
//!
//! Every namespace is named `ghh<pid><tag>-<member>` and deleted on drop; addresses come from
//! 10.213.0.0/24 and exist only inside the namespaces. Nothing is joined to the root namespace.

#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gatehouse_vrrp::linux::netlink::Netlink;

/// The VIP of every test.
pub const VIP: &str = "10.213.0.100";
/// Port the HALB listeners serve on the VIP.
pub const VIP_PORT: u16 = 3389;
/// The interface name inside every member namespace.
pub const IFACE: &str = "ghv0";
/// Gateway stand-ins (in member `g`), reachable from both HALBs.
pub const GATEWAYS: [&str; 3] = ["10.213.0.11", "10.213.0.12", "10.213.0.13"];
/// Port of the gateway stand-ins.
pub const GATEWAY_PORT: u16 = 3390;
/// The client's address (member `c`).
pub const CLIENT: &str = "10.213.0.50";

/// Namespaces around one bridge, deleted on drop.
pub struct Lab {
    pub bridge: String,
    pub members: Vec<(String, String)>,
    pub dir: PathBuf,
}

impl Lab {
    /// Build a bridge namespace and one namespace per `(member, addresses)`, each joined to
    /// the bridge by a veth named [`IFACE`] on its side.
    pub fn create(tag: char, members: &[(&str, &[&str])]) -> Lab {
        let base = format!("ghh{}{tag}", std::process::id());
        let dir = std::env::temp_dir().join(&base);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut lab = Lab {
            bridge: format!("{base}-br"),
            members: Vec::new(),
            dir,
        };
        // From here on Drop removes whatever was made.
        ip(&["netns", "add", &lab.bridge]);
        ip(&[
            "-n",
            &lab.bridge,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", &lab.bridge, "link", "set", "br0", "up"]);
        for (k, (member, addrs)) in members.iter().enumerate() {
            let ns = format!("{base}-{member}");
            ip(&["netns", "add", &ns]);
            lab.members.push((member.to_string(), ns.clone()));
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            let port = format!("p{k}");
            ip(&[
                "-n",
                &lab.bridge,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                IFACE,
                "netns",
                &ns,
            ]);
            ip(&["-n", &lab.bridge, "link", "set", &port, "master", "br0", "up"]);
            for a in addrs.iter() {
                ip(&["-n", &ns, "addr", "add", a, "dev", IFACE]);
            }
            ip(&["-n", &ns, "link", "set", IFACE, "up"]);
        }
        // Carrier comes up through linkwatch, up to a second late; start from a settled link.
        for (_, ns) in &lab.members {
            let ns = ns.clone();
            wait_until(Duration::from_secs(3), || link_up(&ns))
                .unwrap_or_else(|| panic!("carrier of {ns} did not come up"));
        }
        lab
    }

    /// The namespace of `member`.
    pub fn ns(&self, member: &str) -> String {
        self.members
            .iter()
            .find(|(m, _)| m == member)
            .map(|(_, ns)| ns.clone())
            .unwrap_or_else(|| panic!("no member {member}"))
    }

    /// A file in the lab's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, ns) in &self.members {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.bridge]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Run `ip ARGS`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Whether [`IFACE`] in `ns` has its carrier (operstate UP).
pub fn link_up(ns: &str) -> bool {
    Command::new("ip")
        .args(["-n", ns, "-br", "link", "show", "dev", IFACE])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().nth(1) == Some("UP"))
        .unwrap_or(false)
}

/// Check root and tools; `false` after a loud message means skip. Under `CI=true` a missing
/// prerequisite fails the test instead.
pub fn ready(test: &str, tools: &[&str]) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let missing = if !root {
        Some("not root".to_string())
    } else {
        ["ip"]
            .iter()
            .chain(tools)
            .find(|t| which(t).is_none())
            .map(|t| format!("{t} not installed"))
    };
    let Some(why) = missing else { return true };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: prerequisite missing under CI=true: {why}");
    }
    let bar = "#".repeat(70);
    // Straight to the stderr handle so the harness does not swallow it.
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n{bar}\n## SKIPPED {test}: {why} (needs root, iproute2, {tools:?}; CI=true fails instead)\n{bar}\n"
    );
    false
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(tool)).find(|p| p.is_file())
}

/// Run `f` on a new thread inside namespace `ns` and return its result.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    spawn_in_ns(ns, f).join().expect("namespace thread panicked")
}

/// Start `f` on a new thread inside namespace `ns`.
pub fn spawn_in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: a valid namespace fd; setns changes only this thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// Poll `pred` every 2 ms; how long it took, `None` after `limit`.
pub fn wait_until(limit: Duration, mut pred: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if pred() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Milliseconds with one decimal, for the printed measurements.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Watches whether one namespace holds the VIP, polling rtnetlink every millisecond, and keeps
/// the times it changed.
pub struct VipWatch {
    changes: Arc<Mutex<Vec<(Instant, bool)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl VipWatch {
    /// Start watching [`IFACE`] of `ns`.
    pub fn start(ns: &str) -> VipWatch {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (changes.clone(), stop.clone());
        let vip: IpAddr = VIP.parse().expect("constant");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = spawn_in_ns(ns, move || {
            let mut nl = Netlink::open().expect("netlink");
            let mut last = None;
            while !s.load(Ordering::Relaxed) {
                let has = nl
                    .addresses()
                    .map(|a| a.iter().any(|x| x.addr == vip))
                    .unwrap_or(false);
                if last != Some(has) {
                    c.lock().unwrap().push((Instant::now(), has));
                    if last.is_none() {
                        let _ = ready_tx.send(());
                    }
                    last = Some(has);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(2))
            .expect("VIP watch started");
        VipWatch {
            changes,
            stop,
            thread: Some(thread),
        }
    }

    /// Whether the VIP is there now (as of the last poll).
    pub fn holds(&self) -> bool {
        self.changes.lock().unwrap().last().is_some_and(|c| c.1)
    }

    /// When the VIP was (last) gained at or after `t`, if it was.
    pub fn gained_after(&self, t: Instant) -> Option<Instant> {
        self.changes
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.0 >= t && c.1)
            .map(|c| c.0)
            .next()
    }

    /// The change log.
    pub fn changes(&self) -> Vec<(Instant, bool)> {
        self.changes.lock().unwrap().clone()
    }

    /// Wait until the VIP is held (`true`) or not (`false`); the time it took.
    pub fn wait(&self, held: bool, limit: Duration) -> Option<Duration> {
        wait_until(limit, || self.holds() == held)
    }
}

impl Drop for VipWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Longest time after `from` during which both watches held the VIP at once.
pub fn longest_overlap(a: &VipWatch, b: &VipWatch, from: Instant, until: Instant) -> Duration {
    let (ca, cb) = (a.changes(), b.changes());
    let at = |log: &[(Instant, bool)], t: Instant| log.iter().rev().find(|c| c.0 <= t).is_some_and(|c| c.1);
    let mut edges: Vec<Instant> = ca
        .iter()
        .chain(cb.iter())
        .map(|c| c.0)
        .filter(|t| *t > from && *t < until)
        .collect();
    edges.push(from);
    edges.push(until);
    edges.sort();
    let mut longest = Duration::ZERO;
    let mut since: Option<Instant> = None;
    for t in edges {
        let both = at(&ca, t) && at(&cb, t);
        match (both, since) {
            (true, None) => since = Some(t),
            (false, Some(s)) => {
                longest = longest.max(t - s);
                since = None;
            }
            _ => {}
        }
    }
    if let Some(s) = since {
        longest = longest.max(until - s);
    }
    longest
}

/// Settings of one gatehouse HALB node in the lab.
#[derive(Clone)]
pub struct HalbSpec {
    pub priority: u8,
    pub preempt: bool,
    pub vrid: u8,
    /// Run VRRP (false: only the listener, for a keepalived-managed VIP).
    pub vrrp: bool,
    /// Appended to the `[[halb.vrrp]]` section (tracking keys).
    pub vrrp_extra: String,
    /// Appended to the file (more pools).
    pub extra: String,
}

impl HalbSpec {
    pub fn new(priority: u8) -> HalbSpec {
        HalbSpec {
            priority,
            preempt: true,
            vrid: 51,
            vrrp: true,
            vrrp_extra: String::new(),
            extra: String::new(),
        }
    }

    /// The config file: one worker, admin on the namespace's loopback, a listener on the VIP
    /// (freebind) over the gateway stand-ins by source hash, 0.1 s adverts.
    pub fn config(&self) -> String {
        let backends: Vec<String> = GATEWAYS
            .iter()
            .map(|g| format!("{{ address = \"{g}:{GATEWAY_PORT}\" }}"))
            .collect();
        let mut s = format!(
            "[node]\nworkers = 1\ndrain_timeout = \"1s\"\nlog_level = \"info\"\n\n\
             [admin]\nlisten = \"127.0.0.1:9900\"\n\n\
             [[halb.listener]]\nname = \"rdp\"\nbind = \"{VIP}:{VIP_PORT}\"\npool = \"gw\"\nfreebind = true\n\
             connect_timeout = \"300ms\"\n\n\
             [[halb.pool]]\nname = \"gw\"\nalgorithm = \"source-hash\"\nbackends = [{}]\n",
            backends.join(", ")
        );
        if self.vrrp {
            s.push_str(&format!(
                "\n[[halb.vrrp]]\nname = \"vi1\"\ninterface = \"{IFACE}\"\nvrid = {}\npriority = {}\n\
                 advert_interval = \"100ms\"\nvips = [\"{VIP}/24\"]\npreempt = {}\ngarp_repeat = 2\n",
                self.vrid, self.priority, self.preempt
            ));
            s.push_str(&self.vrrp_extra);
        }
        s.push_str(&self.extra);
        s
    }
}

/// The real `gatehouse` binary running in a namespace; SIGKILLed and reaped on drop.
pub struct Gatehouse {
    pub child: Child,
    pub ns: String,
    pub log: PathBuf,
}

impl Gatehouse {
    /// `ip netns exec NS gatehouse run -c FILE`; waits until the admin listener answers.
    pub fn start(lab: &Lab, member: &str, spec: &HalbSpec) -> Gatehouse {
        let ns = lab.ns(member);
        let conf = lab.path(&format!("{member}.toml"));
        std::fs::write(&conf, spec.config()).expect("write config");
        let log = lab.path(&format!("{member}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        // `ip netns exec` execs in place: the child's pid is gatehouse's.
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(env!("CARGO_BIN_EXE_gatehouse"))
            .arg("run")
            .arg("-c")
            .arg(&conf)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup log"))
            .stderr(out)
            .spawn()
            .expect("start gatehouse");
        let mut g = Gatehouse { child, ns, log };
        let up = wait_until(Duration::from_secs(5), || {
            if let Ok(Some(st)) = g.child.try_wait() {
                panic!("gatehouse in {member} exited with {st}:\n{}", g.log_text());
            }
            g.metrics().is_some()
        });
        assert!(
            up.is_some(),
            "gatehouse in {member} did not come up:\n{}",
            g.log_text()
        );
        g
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Send a signal to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Wait for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut status = None;
        wait_until(limit, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The Prometheus text from the admin listener, `None` if it does not answer.
    pub fn metrics(&self) -> Option<String> {
        in_ns(&self.ns, || {
            let mut s =
                TcpStream::connect_timeout(&"127.0.0.1:9900".parse().ok()?, Duration::from_millis(200))
                    .ok()?;
            s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .ok()?;
            let mut body = String::new();
            s.read_to_string(&mut body).ok()?;
            body.contains("200").then_some(body)
        })
    }

    /// One series' value (`name{labels}` as exposed), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Reads `series` until it equals `value` or `limit` passes (one scrape can fail on a
    /// loaded machine: the admin connect has a short timeout); returns the last value read.
    pub fn metric_reaches(&self, series: &str, value: f64, limit: Duration) -> f64 {
        let mut last = self.metric(series);
        let _ = wait_until(limit, || {
            last = self.metric(series);
            last == value
        });
        last
    }

    /// The VRRP state of instance `vi1` as the metrics report it.
    pub fn state(&self) -> String {
        let m = self.metrics().unwrap_or_default();
        for st in ["initialize", "backup", "master", "fault"] {
            if m.contains(&format!(
                "gatehouse_vrrp_state{{instance=\"vi1\",state=\"{st}\"}} 1"
            )) {
                return st.to_string();
            }
        }
        "unknown".to_string()
    }
}

impl Drop for Gatehouse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// keepalived 2.2.7 (VRRP only) in a namespace with its own files; stopped on drop.
pub struct Keepalived {
    pub child: Child,
    dir: PathBuf,
}

impl Keepalived {
    pub fn start(lab: &Lab, member: &str, priority: u8, vrid: u8) -> Keepalived {
        let ns = lab.ns(member);
        let dir = lab.path(&format!("keepalived-{member}"));
        std::fs::create_dir_all(&dir).expect("keepalived dir");
        let conf = dir.join("keepalived.conf");
        std::fs::write(
            &conf,
            format!(
                "global_defs {{\n  router_id ghh_{member}\n  vrrp_version 3\n  vrrp_garp_master_repeat 2\n}}\n\
                 vrrp_instance VI_GHH {{\n  state BACKUP\n  interface {IFACE}\n  virtual_router_id {vrid}\n  \
                 priority {priority}\n  advert_int 0.1\n  virtual_ipaddress {{\n    {VIP}/24\n  }}\n}}\n"
            ),
        )
        .expect("write keepalived.conf");
        // A SIGKILLed keepalived leaves its pid files; never read (or kill) a stale pid.
        let _ = std::fs::remove_file(dir.join("vrrp.pid"));
        let _ = std::fs::remove_file(dir.join("keepalived.pid"));
        let log = File::create(dir.join("log")).expect("log");
        // -P: VRRP only; -R: do not respawn a killed child (a crash must stay a crash).
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "keepalived",
                "-n",
                "-l",
                "-D",
                "-P",
                "-R",
                "-f",
            ])
            .arg(&conf)
            .arg("-p")
            .arg(dir.join("keepalived.pid"))
            .arg("-r")
            .arg(dir.join("vrrp.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("start keepalived");
        let k = Keepalived { child, dir };
        wait_until(Duration::from_secs(3), || k.vrrp_pid().is_some()).expect("keepalived VRRP child started");
        k
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    pub fn vrrp_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("vrrp.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGKILL the parent and the VRRP child, as a crash of the daemon would.
    pub fn crash(&mut self) {
        let child = self.vrrp_pid();
        let _ = self.child.kill();
        if let Some(p) = child {
            // SAFETY: kill(2) on the pid keepalived wrote for its own VRRP child.
            unsafe { libc::kill(p, libc::SIGKILL) };
            let _ = std::fs::remove_file(self.dir.join("vrrp.pid"));
        }
        let _ = self.child.wait();
    }

    /// SIGTERM (graceful: priority-0 advert) and wait for the exit.
    pub fn stop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = wait_until(Duration::from_secs(3), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.crash();
    }
}

/// A TCP listener bound inside namespace `ns` (a socket keeps the namespace it was made in);
/// the kernel completes handshakes from the backlog, which is all a TCP health check needs.
pub fn listen_in(ns: &str, addr: SocketAddr) -> TcpListener {
    in_ns(ns, move || TcpListener::bind(addr).expect("bind in namespace"))
}

/// Gateway stand-ins in one namespace: each accepts, writes its name and a newline, closes.
pub struct Gateways {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Gateways {
    pub fn start(ns: &str) -> Gateways {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = spawn_in_ns(ns, move || {
            let listeners: Vec<(String, TcpListener)> = GATEWAYS
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    let l = TcpListener::bind((g.parse::<IpAddr>().expect("constant"), GATEWAY_PORT))
                        .expect("bind gateway stand-in");
                    l.set_nonblocking(true).expect("nonblocking");
                    (format!("gw{}", i + 1), l)
                })
                .collect();
            let _ = tx.send(());
            while !s.load(Ordering::Relaxed) {
                let mut idle = true;
                for (name, l) in &listeners {
                    if let Ok((mut c, _)) = l.accept() {
                        idle = false;
                        let _ = c.write_all(format!("{name}\n").as_bytes());
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_micros(500));
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(2))
            .expect("gateways listening");
        Gateways {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Gateways {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One connection attempt of the client prober.
#[derive(Clone, Debug)]
pub struct Probe {
    /// When the attempt started.
    pub at: Instant,
    /// The gateway that answered, or what went wrong.
    pub outcome: Result<String, String>,
}

/// A client in a namespace that keeps opening connections to VIP:port and reads which gateway
/// answered.
pub struct Prober {
    stop: Arc<AtomicBool>,
    probes: Arc<Mutex<Vec<Probe>>>,
    thread: Option<JoinHandle<()>>,
}

impl Prober {
    /// `connect_timeout` bounds the time a lost SYN costs (the retransmit would take 1 s).
    pub fn start(ns: &str, connect_timeout: Duration) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let probes = Arc::new(Mutex::new(Vec::new()));
        let (s, p) = (stop.clone(), probes.clone());
        let target: SocketAddr = (VIP.parse::<IpAddr>().expect("constant"), VIP_PORT).into();
        let thread = spawn_in_ns(ns, move || {
            while !s.load(Ordering::Relaxed) {
                let at = Instant::now();
                let outcome = TcpStream::connect_timeout(&target, connect_timeout)
                    .and_then(|c| {
                        c.set_read_timeout(Some(Duration::from_millis(500)))?;
                        let mut line = String::new();
                        BufReader::new(c).read_line(&mut line)?;
                        Ok(line)
                    })
                    .map_err(|e| e.kind().to_string())
                    .and_then(|l| {
                        let l = l.trim().to_string();
                        if l.is_empty() {
                            Err("closed".into())
                        } else {
                            Ok(l)
                        }
                    });
                let ok = outcome.is_ok();
                p.lock().unwrap().push(Probe { at, outcome });
                std::thread::sleep(Duration::from_millis(if ok { 5 } else { 2 }));
            }
        });
        Prober {
            stop,
            probes,
            thread: Some(thread),
        }
    }

    pub fn probes(&self) -> Vec<Probe> {
        self.probes.lock().unwrap().clone()
    }

    /// Wait until `n` attempts have succeeded since `from`.
    pub fn wait_successes(&self, from: Instant, n: usize, limit: Duration) -> Option<Duration> {
        wait_until(limit, || {
            self.probes()
                .iter()
                .filter(|p| p.at >= from && p.outcome.is_ok())
                .count()
                >= n
        })
    }

    pub fn stop(mut self) -> Vec<Probe> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.probes()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Failed attempts in `[from, to)` and the longest time between two answered connections
/// across it (starting from the last answer before `from`).
pub fn gap_stats(probes: &[Probe], from: Instant, to: Instant) -> (usize, Duration) {
    let window: Vec<&Probe> = probes.iter().filter(|p| p.at >= from && p.at < to).collect();
    let failed = window.iter().filter(|p| p.outcome.is_err()).count();
    let mut longest = Duration::ZERO;
    // The gap that spans `from` starts at the last answered connection before it.
    let mut last_ok: Option<Instant> = probes
        .iter()
        .filter(|p| p.at < from && p.outcome.is_ok())
        .map(|p| p.at)
        .next_back();
    for p in window.iter().filter(|p| p.outcome.is_ok()) {
        if let Some(l) = last_ok {
            longest = longest.max(p.at - l);
        }
        last_ok = Some(p.at);
    }
    (failed, longest)
}

/// The distinct gateways that answered in `[from, to)`.
pub fn gateways_seen(probes: &[Probe], from: Instant, to: Instant) -> Vec<String> {
    let mut seen: Vec<String> = probes
        .iter()
        .filter(|p| p.at >= from && p.at < to)
        .filter_map(|p| p.outcome.clone().ok())
        .collect();
    seen.sort();
    seen.dedup();
    seen
}
