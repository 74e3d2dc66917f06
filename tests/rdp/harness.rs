//! A real RDP server (Debian's xrdp 0.9.21 + xrdp-sesman + xorgxrdp) and a real RDP client
//! (FreeRDP 2.11's `xfreerdp` under `xvfb-run`) for end-to-end tests.
//!
//! One private xrdp per test binary, started on first use ([`require`]) and torn down when the
//! binary exits. A login is judged only by xrdp's own log: `login successful for user USER` or
//! `login failed for user USER` written after the attempt started ([`xfreerdp_login`]).
//!
//! How the private server is isolated (and why):
//! - xrdp 0.9.21 has `-c` for its own xrdp.ini, but it reads the sesman port from the compiled-in
//!   `/etc/xrdp/sesman.ini`, writes its pid file to the compiled-in `/run/xrdp/xrdp.pid` and
//!   talks to Xorg through the compiled-in `/run/xrdp/sockdir`. So `-c` alone cannot give a
//!   private sesman port. Instead the pair runs under `unshare --mount --pid`: inside that
//!   mount namespace a private copy of the config is bind-mounted over `/etc/xrdp`, a private
//!   directory over `/run/xrdp`, and a private `/tmp` (Xorg's `/tmp/.X11-unix/X10` and
//!   `/tmp/.X10-lock`: a killed Xorg leaves them behind, and sesman then skips that display
//!   number forever, until `MaxSessions` displays are used up). Nothing on the host changes
//!   except the test user; a system xrdp on 3389/3350, if any, is not disturbed.
//! - The ports are 33890 (xrdp) and 33891 (sesman) when free, else free ports picked at
//!   start. sesman 0.9.21 with `ListenAddress=127.0.0.1` was seen listening on `[::1]`, so
//!   readiness is checked in both /proc/net/tcp and /proc/net/tcp6.
//! - The private files live in `/var/tmp/gatehouse-rdp-PID`, not `/tmp`: `/tmp` is replaced
//!   inside the namespace, and xrdp (user `xrdp`) must reach its log directory.
//! - xrdp runs as user `xrdp` (`setpriv`), like Debian's unit. It needs the snakeoil key, which
//!   only the `ssl-cert` group may read: the private config holds a copy owned by `xrdp`
//!   instead of adding `xrdp` to `ssl-cert` on the host.
//!
//! Teardown, so that no xrdp, sesman, Xorg or session process outlives `cargo test`:
//! - The namespace's first process (pid 1 inside) is a small `sh` that starts sesman and xrdp
//!   and then blocks reading its stdin, a pipe whose only write end is held by the test binary.
//! - At a normal exit, an `atexit` hook closes that write end and waits for `unshare`: the
//!   `sh` sends SIGTERM to everything in the namespace (Xorg removes its sockets), waits
//!   0.5 s and exits; when a pid namespace's init exits the kernel SIGKILLs every process left
//!   in it (sessions that called setsid included) and `unshare` returns only after they are
//!   all gone. So the teardown is finished before the test binary's exit status is reported.
//! - If the test binary dies any other way (SIGKILL, abort), the kernel closes the write end:
//!   the same teardown runs, just not waited for. `unshare --kill-child` covers `unshare`
//!   itself being killed. A Drop guard on a static would never run, and PR_SET_PDEATHSIG
//!   fires when the spawning *thread* exits (a test thread), so neither is used.
//!
//! Other pitfalls seen while building this:
//! - `xfreerdp` never exits on its own after a login (nor after a failed one): the verdict comes
//!   from the server log, and the client is stopped by the harness. Stopping it: SIGINT to
//!   `xfreerdp` only, so that `xvfb-run` still runs its EXIT trap (kills Xvfb, which removes
//!   `/tmp/.X99-lock`, and deletes its temp dir); SIGKILL to the whole process group only if
//!   that does not end it. `timeout -s INT 20` bounds a client the harness lost track of.
//! - `xvfb-run -a` picks a display number by looking for free lock files and races with a
//!   concurrent `xvfb-run -a`; logins are serialized by a mutex (also what makes "the log lines
//!   after the offset belong to this attempt" true).
//! - A successful login takes about 2 s; a wrong password about 3.5 s (PAM's failure delay).
//!   A second login of the same user reconnects to the existing session (`Policy=Default`,
//!   `KillDisconnected=false`) and xrdp logs the same `login successful` line.
//! - Every TCP connection xrdp accepts, even one closed at once, is logged as
//!   `Socket N: AF_INET connection received from ...`: that is what [`xrdp_connections`]
//!   counts. A TCP health check against xrdp counts too.
//! - `pam_systemd` in Debian's common-session fails quietly without logind; the session still
//!   starts. `~/.xsession` running `exec sleep 900` stands in for a desktop.

#![allow(dead_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::IntoRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// The test user created on this machine for RDP logins (also meant to be the broker's user).
pub const TEST_USER: &str = "ghrdp";
/// Its password.
pub const TEST_PASSWORD: &str = "gh-rdp-Pass1";

/// Preferred loopback port of the private xrdp (3389 is left to a system xrdp).
const PREFERRED_XRDP_PORT: u16 = 33890;
/// Preferred loopback port of the private sesman (3350 is left to a system sesman).
const PREFERRED_SESMAN_PORT: u16 = 33891;
/// The client's own time limit (`timeout -s INT`), seconds.
const CLIENT_TIMEOUT_SECS: u64 = 20;
/// The harness gives up waiting for a verdict a little after the client's limit.
const VERDICT_DEADLINE: Duration = Duration::from_secs(CLIENT_TIMEOUT_SECS + 2);
/// Lines of client output kept in a [`LoginOutcome`].
const CLIENT_TAIL_LINES: usize = 25;

/// Programs the harness runs; a missing one means "skip" (or a failure under `CI=true`).
const TOOLS: &[&str] = &[
    "xrdp",
    "xrdp-sesman",
    "xfreerdp",
    "xvfb-run",
    "Xvfb",
    "xauth",
    "timeout",
    "unshare",
    "setpriv",
    "mount",
    "useradd",
    "chpasswd",
];
/// Files from xorgxrdp and Xorg that sessions need.
const FILES: &[&str] = &[
    "/usr/lib/xorg/Xorg",
    "/usr/lib/xorg/modules/drivers/xrdpdev_drv.so",
    "/etc/X11/xrdp/xorg.conf",
    "/etc/xrdp/startwm.sh",
    "/etc/xrdp/key.pem",
    "/etc/xrdp/cert.pem",
];

/// The running private xrdp + sesman pair.
#[derive(Debug)]
pub struct Xrdp {
    /// Where xrdp listens (loopback).
    pub addr: SocketAddr,
    /// Where sesman listens (loopback; xrdp finds it through the private sesman.ini).
    pub sesman_port: u16,
    /// Private directory: `etc/` (config), `run/`, `tmp/`, `log/`, `clients/`.
    pub dir: PathBuf,
}

impl Xrdp {
    /// xrdp's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("log/xrdp.log")
    }

    /// sesman's log file.
    pub fn sesman_log_path(&self) -> PathBuf {
        self.dir.join("log/sesman.log")
    }

    /// xrdp's whole log so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    /// sesman's whole log so far.
    pub fn sesman_log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.sesman_log_path()).unwrap_or_default()).into_owned()
    }

    /// TCP connections xrdp has accepted since it started (its `connection received` lines).
    pub fn connections(&self) -> usize {
        count_connections(&self.log())
    }
}

/// How a login attempt ended, as xrdp's log tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// xrdp logged `login successful for user USER` after the attempt started.
    Success,
    /// xrdp logged `login failed for user USER` after the attempt started.
    Failed,
    /// The client ended (exit code, if any) before xrdp logged either line.
    ClientExited(Option<i32>),
    /// Neither line and the client still running at the deadline.
    TimedOut,
}

/// The result of [`xfreerdp_login`], with what is needed to diagnose it.
#[derive(Debug, Clone)]
pub struct LoginOutcome {
    /// The verdict.
    pub verdict: Verdict,
    /// From starting the client to the verdict.
    pub elapsed: Duration,
    /// Connections xrdp accepted during the attempt (logins are serialized, so they are this
    /// attempt's unless something else talks to xrdp at the same time).
    pub xrdp_connections: usize,
    /// The last lines of the client's output (stdout and stderr).
    pub client_tail: String,
    /// xrdp's log lines written during the attempt.
    pub server_log: String,
}

impl LoginOutcome {
    /// Whether xrdp logged a successful login.
    pub fn succeeded(&self) -> bool {
        self.verdict == Verdict::Success
    }

    /// Panics with the diagnostics unless the login succeeded.
    pub fn assert_success(&self, what: &str) {
        assert!(self.succeeded(), "{what}: expected a successful login\n{self}");
    }
}

impl std::fmt::Display for LoginOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "verdict {:?} after {:.2?}, xrdp accepted {} connection(s)\n--- xrdp log during the attempt ---\n{}\n--- client output (tail) ---\n{}",
            self.verdict, self.elapsed, self.xrdp_connections, self.server_log, self.client_tail
        )
    }
}

static XRDP: OnceLock<Result<Xrdp, String>> = OnceLock::new();
/// Serializes logins (xvfb-run -a races; log attribution needs one attempt at a time).
static LOGIN: Mutex<()> = Mutex::new(());
/// Serializes useradd/chpasswd.
static USERS: Mutex<()> = Mutex::new(());
/// Write end of the namespace supervisor's stdin; closing it tears the namespace down.
static CTL_FD: AtomicI32 = AtomicI32::new(-1);
/// Pid of `unshare`, waited for at exit.
static SUPERVISOR_PID: AtomicI32 = AtomicI32::new(0);
/// Numbering of client output files.
static ATTEMPT: AtomicUsize = AtomicUsize::new(0);
/// The private directory, removed by the exit hook.
static DIR: OnceLock<PathBuf> = OnceLock::new();

/// Whether RDP tests can run here. `Some` with the running private xrdp; `None` after a loud
/// message when root or a program is missing (then the caller returns: the test is skipped).
/// Under `CI=true` a missing prerequisite panics instead. A start-up failure with every
/// prerequisite present always panics.
pub fn require(test: &str) -> Option<&'static Xrdp> {
    if let Some(why) = missing_prerequisite() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: prerequisite missing under CI=true: {why}");
        }
        let bar = "#".repeat(78);
        let _ = writeln!(
            std::io::stderr().lock(),
            "\n{bar}\n## SKIPPED {test}: {why}\n## needs root and: apt-get install -y --no-install-recommends xrdp xorgxrdp \
             freerdp2-x11 xvfb xauth (CI=true fails instead)\n{bar}\n"
        );
        return None;
    }
    match XRDP.get_or_init(start) {
        Ok(x) => Some(x),
        Err(e) => panic!("{test}: the private xrdp did not start: {e}"),
    }
}

/// Where the private xrdp listens. Panics if [`require`] has not started it.
pub fn xrdp_address() -> SocketAddr {
    running().addr
}

/// TCP connections the private xrdp has accepted so far. Compare before/after to assert "the
/// host saw no connection" (hold [`login_lock`] around it if logins may run concurrently).
pub fn xrdp_connections() -> usize {
    running().connections()
}

/// The lock that serializes logins; hold it to count xrdp connections without interference.
/// Not reentrant: do not call [`xfreerdp_login`] while holding it (it takes it itself).
pub fn login_lock() -> MutexGuard<'static, ()> {
    LOGIN.lock().unwrap_or_else(|e| e.into_inner())
}

fn running() -> &'static Xrdp {
    match XRDP.get() {
        Some(Ok(x)) => x,
        _ => panic!("the private xrdp is not running: call rdp_harness::require first"),
    }
}

/// Logs in with `xfreerdp` to `target` (xrdp itself, or anything that should carry RDP to
/// it) and judges the attempt by xrdp's log. See [`xfreerdp_login_with`].
pub fn xfreerdp_login(target: SocketAddr, user: &str, password: &str) -> LoginOutcome {
    xfreerdp_login_with(target, user, password, &[])
}

/// Like [`xfreerdp_login`], with extra xfreerdp arguments (for example `/g:HOST:PORT`,
/// `/gt:http`, `/load-balance-info:...`). Runs
/// `timeout -s INT 20 xvfb-run -a xfreerdp /v:HOST:PORT /u:USER /p:PASS /cert:ignore
/// /log-level:INFO EXTRA...`, in its own process group, one attempt at a time; the verdict is
/// the first `login successful for user USER ` / `login failed for user USER` line xrdp writes
/// after the attempt started; the client is stopped as soon as the verdict is in.
pub fn xfreerdp_login_with(target: SocketAddr, user: &str, password: &str, extra: &[&str]) -> LoginOutcome {
    let x = running();
    let _turn = login_lock();
    let n = ATTEMPT.fetch_add(1, Ordering::Relaxed);
    let out_path = x.dir.join(format!("clients/login-{n}.out"));
    let out = std::fs::File::create(&out_path).expect("client output file");
    let err = out.try_clone().expect("client output file");
    let host = match target {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    let log_path = x.log_path();
    let offset = file_len(&log_path);
    let start = Instant::now();
    let mut cmd = Command::new("timeout");
    cmd.args([
        "-s",
        "INT",
        &CLIENT_TIMEOUT_SECS.to_string(),
        "xvfb-run",
        "-a",
        "xfreerdp",
    ])
    .arg(format!("/v:{host}"))
    .arg(format!("/u:{user}"))
    .arg(format!("/p:{password}"))
    .args(["/cert:ignore", "/log-level:INFO"])
    .args(extra)
    .stdin(Stdio::null())
    .stdout(out)
    .stderr(err)
    .process_group(0);
    let mut child = cmd.spawn().expect("start timeout/xvfb-run/xfreerdp");
    let pgid = child.id() as i32;

    let ok = format!("login successful for user {user} ");
    let failed_line = format!("login failed for user {user}");
    let judge = |text: &str| -> Option<Verdict> {
        text.lines().find_map(|l| {
            if l.contains(&ok) {
                Some(Verdict::Success)
            } else if l.trim_end().ends_with(&failed_line) {
                Some(Verdict::Failed)
            } else {
                None
            }
        })
    };
    let mut exited_at: Option<(Instant, Option<i32>)> = None;
    let verdict = loop {
        if let Some(v) = judge(&read_from(&log_path, offset)) {
            break v;
        }
        if exited_at.is_none() {
            if let Ok(Some(status)) = child.try_wait() {
                exited_at = Some((Instant::now(), status.code()));
            }
        }
        // A client that ended gets 0.5 s more for xrdp's log line to be written.
        if let Some((when, code)) = exited_at {
            if when.elapsed() > Duration::from_millis(500) {
                break Verdict::ClientExited(code);
            }
        }
        if start.elapsed() > VERDICT_DEADLINE {
            break Verdict::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let elapsed = start.elapsed();
    stop_client(&mut child, pgid);
    let server_log = read_from(&log_path, offset);
    LoginOutcome {
        verdict,
        elapsed,
        xrdp_connections: count_connections(&server_log),
        client_tail: tail(
            &String::from_utf8_lossy(&std::fs::read(&out_path).unwrap_or_default()),
            CLIENT_TAIL_LINES,
        ),
        server_log,
    }
}

/// Stops a client: SIGINT to `xfreerdp` alone (xvfb-run's EXIT trap then sends SIGTERM to
/// Xvfb and removes its temp dir), waits up to 3 s for every live member of the process group
/// to be gone, and only then SIGKILLs what is left. Reaps `timeout`.
///
/// Pitfall: `xvfb-run` does not wait for Xvfb after its SIGTERM, so `timeout` (our child) exits
/// while Xvfb is still removing `/tmp/.X99-lock`; a SIGKILL to the group at that moment
/// leaves the lock and socket behind, and every later `xvfb-run -a` takes the next number.
fn stop_client(child: &mut std::process::Child, pgid: i32) {
    use nix::sys::signal::{kill, killpg, Signal};
    use nix::unistd::Pid;
    let clients = group_members(pgid, Some("xfreerdp"));
    if clients.is_empty() && !group_members(pgid, None).is_empty() {
        // No xfreerdp (not started yet, or already gone): interrupt the whole group.
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGINT);
    }
    for pid in clients {
        let _ = kill(Pid::from_raw(pid), Signal::SIGINT);
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        let _ = child.try_wait();
        if group_members(pgid, None).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !group_members(pgid, None).is_empty() {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    let _ = child.wait();
}

/// Live (not zombie) pids in process group `pgid`, optionally only those whose command name
/// is `comm`, from /proc.
fn group_members(pgid: i32, comm: Option<&str>) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // pid (comm) state ppid pgrp ...: comm may hold spaces, so split at the last ')'.
            let Some((head, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let name = head.split_once('(').map(|(_, n)| n).unwrap_or("");
            let mut fields = rest.split_whitespace();
            let state = fields.next().unwrap_or("");
            let pgrp = fields.nth(1).and_then(|v| v.parse::<i32>().ok());
            pgrp == Some(pgid) && state != "Z" && comm.is_none_or(|c| c == name)
        })
        .collect()
}

/// Creates (or updates) a local user for RDP logins: home directory, `password`, and a
/// `~/.xsession` that runs `exec sleep 900`. Idempotent. Needs root.
pub fn ensure_user(name: &str, password: &str) {
    let _g = USERS.lock().unwrap_or_else(|e| e.into_inner());
    let exists = Command::new("id")
        .arg("-u")
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !exists {
        run(Command::new("useradd").args(["-m", "-s", "/bin/sh", name]));
    }
    let mut chpasswd = Command::new("chpasswd")
        .stdin(Stdio::piped())
        .spawn()
        .expect("chpasswd");
    chpasswd
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{name}:{password}\n").as_bytes())
        .expect("write to chpasswd");
    assert!(
        chpasswd.wait().expect("chpasswd").success(),
        "chpasswd for {name} failed"
    );
    let home = home_of(name).unwrap_or_else(|| panic!("no home directory for {name}"));
    let xsession = home.join(".xsession");
    std::fs::write(
        &xsession,
        "#!/bin/sh\n# written by gatehouse's RDP test harness\nexec sleep 900\n",
    )
    .expect("write ~/.xsession");
    run(Command::new("chmod").arg("755").arg(&xsession));
    run(Command::new("chown").arg(format!("{name}:")).arg(&xsession));
}

fn home_of(name: &str) -> Option<PathBuf> {
    let out = Command::new("getent").args(["passwd", name]).output().ok()?;
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    line.trim_end()
        .split(':')
        .nth(5)
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

fn missing_prerequisite() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (creates a user, mounts in a private namespace)".into());
    }
    if let Some(t) = TOOLS.iter().find(|t| which(t).is_none()) {
        return Some(format!("{t} not installed"));
    }
    if let Some(f) = FILES.iter().find(|f| !Path::new(f).exists()) {
        return Some(format!("{f} missing"));
    }
    None
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(tool)).find(|p| p.is_file())
}

/// `preferred` when nothing listens on it (IPv4 and IPv6 loopback), else a free port.
fn pick_port(preferred: u16, avoid: u16) -> u16 {
    let v6 = TcpListener::bind(("::1", 0)).is_ok();
    let free = |p: u16| {
        TcpListener::bind(("127.0.0.1", p)).is_ok() && (!v6 || TcpListener::bind(("::1", p)).is_ok())
    };
    if preferred != avoid && free(preferred) {
        return preferred;
    }
    loop {
        let p = crate::common::free_port();
        if p != avoid && free(p) {
            return p;
        }
    }
}

/// The namespace's init. `$1` is the private directory. Starts sesman and xrdp, then blocks
/// on stdin; at EOF it asks everything to stop and exits (the kernel kills the rest).
const SUPERVISOR: &str = r#"set -eu
D=$1
mkdir -p /run/xrdp
mount --bind "$D/etc" /etc/xrdp
mount --bind "$D/run" /run/xrdp
mount --bind "$D/tmp" /tmp
# as /usr/share/xrdp/socksetup does, in the private /run/xrdp
mkdir -p /run/xrdp/sockdir /tmp/.X11-unix
chown root:xrdp /run/xrdp /run/xrdp/sockdir
chmod 2775 /run/xrdp
chmod 3777 /run/xrdp/sockdir
chmod 1777 /tmp /tmp/.X11-unix
xrdp-sesman --nodaemon --config /etc/xrdp/sesman.ini >"$D/log/sesman.out" 2>&1 </dev/null &
setpriv --reuid=xrdp --regid=xrdp --init-groups -- xrdp --nodaemon --config /etc/xrdp/xrdp.ini >"$D/log/xrdp.out" 2>&1 </dev/null &
echo "supervisor: sesman and xrdp started"
read -r _ || true
echo "supervisor: stopping"
kill -s TERM -1 2>/dev/null || true
sleep 0.5
"#;

fn start() -> Result<Xrdp, String> {
    ensure_user(TEST_USER, TEST_PASSWORD);
    let port = pick_port(PREFERRED_XRDP_PORT, 0);
    let sesman_port = pick_port(PREFERRED_SESMAN_PORT, port);
    remove_stale_dirs();
    let dir = PathBuf::from(format!("/var/tmp/gatehouse-rdp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["etc", "run", "tmp", "log", "clients"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| format!("create {}: {e}", dir.display()))?;
    }
    let _ = DIR.set(dir.clone());
    run(Command::new("chmod").arg("755").arg(&dir));
    // The keymaps, startwm.sh, reconnectwm.sh and pulse/ of the system config; then our own
    // ini files, and key/cert as plain files xrdp may read.
    run(Command::new("cp")
        .arg("-a")
        .arg("/etc/xrdp/.")
        .arg(dir.join("etc")));
    for f in ["key.pem", "cert.pem"] {
        let _ = std::fs::remove_file(dir.join("etc").join(f));
        std::fs::copy(Path::new("/etc/xrdp").join(f), dir.join("etc").join(f))
            .map_err(|e| format!("copy /etc/xrdp/{f}: {e}"))?;
    }
    run(Command::new("chown").arg("xrdp:").arg(dir.join("etc/key.pem")));
    run(Command::new("chmod").arg("600").arg(dir.join("etc/key.pem")));
    run(Command::new("chown").arg("xrdp:").arg(dir.join("log")));
    std::fs::write(dir.join("etc/xrdp.ini"), xrdp_ini(port, &dir)).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("etc/sesman.ini"), sesman_ini(sesman_port, &dir)).map_err(|e| e.to_string())?;

    let supervisor_log = std::fs::File::create(dir.join("log/supervisor.out")).map_err(|e| e.to_string())?;
    let mut child = Command::new("unshare")
        .args([
            "--mount",
            "--pid",
            "--fork",
            "--mount-proc",
            "--propagation",
            "private",
            "--kill-child",
        ])
        .args(["sh", "-c", SUPERVISOR, "sh"])
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(supervisor_log.try_clone().map_err(|e| e.to_string())?)
        .stderr(supervisor_log)
        .spawn()
        .map_err(|e| format!("unshare: {e}"))?;
    let ctl = child.stdin.take().expect("piped stdin");
    // O_CLOEXEC (std's pipes), so no other child inherits the write end.
    CTL_FD.store(ctl.into_raw_fd(), Ordering::SeqCst);
    SUPERVISOR_PID.store(child.id() as i32, Ordering::SeqCst);
    // SAFETY: registering a plain extern "C" fn with no captured state.
    unsafe { libc::atexit(teardown) };

    let x = Xrdp {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        sesman_port,
        dir,
    };
    let start = Instant::now();
    while !(listening(port) && listening(sesman_port)) {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "namespace supervisor exited ({status}): {}",
                diagnostics(&x)
            ));
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!(
                "xrdp/sesman not listening after 10 s: {}",
                diagnostics(&x)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // `child` is dropped without waiting; the exit hook reaps it by pid.
    Ok(x)
}

/// Removes private directories of earlier test binaries that died without their exit hook
/// (SIGKILL): `/var/tmp/gatehouse-rdp-PID` whose PID is gone.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir("/var/tmp") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("gatehouse-rdp-")) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn diagnostics(x: &Xrdp) -> String {
    let read = |p: &str| std::fs::read_to_string(x.dir.join(p)).unwrap_or_default();
    format!(
        "\n--- supervisor ---\n{}\n--- xrdp.out ---\n{}\n--- xrdp.log ---\n{}\n--- sesman.out ---\n{}\n--- sesman.log ---\n{}",
        read("log/supervisor.out"),
        read("log/xrdp.out"),
        read("log/xrdp.log"),
        read("log/sesman.out"),
        read("log/sesman.log")
    )
}

/// Runs at exit: closes the supervisor's stdin and waits (up to 5 s) for the namespace to be
/// gone, then removes the private directory (kept with `GATEHOUSE_RDP_KEEP=1`).
extern "C" fn teardown() {
    let fd = CTL_FD.swap(-1, Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: our own descriptor, closed once (swapped out above).
        unsafe { libc::close(fd) };
    }
    let pid = SUPERVISOR_PID.swap(0, Ordering::SeqCst);
    if pid > 0 {
        let start = Instant::now();
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our own child with a valid status pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            if r != 0 {
                break;
            }
            if start.elapsed() > Duration::from_secs(5) {
                // --kill-child makes unshare's death take the namespace with it.
                // SAFETY: plain kill + waitpid on our own child.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if std::env::var_os("GATEHOUSE_RDP_KEEP").is_none() {
        if let Some(dir) = DIR.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn xrdp_ini(port: u16, dir: &Path) -> String {
    format!(
        "; private xrdp.ini of gatehouse's RDP test harness\n\
[Globals]\n\
ini_version=1\n\
fork=true\n\
port=tcp://127.0.0.1:{port}\n\
tcp_nodelay=true\n\
tcp_keepalive=true\n\
security_layer=negotiate\n\
crypt_level=high\n\
certificate=\n\
key_file=\n\
ssl_protocols=TLSv1.2, TLSv1.3\n\
autorun=\n\
allow_channels=true\n\
allow_multimon=true\n\
bitmap_cache=true\n\
bitmap_compression=true\n\
bulk_compression=true\n\
max_bpp=32\n\
new_cursors=true\n\
use_fastpath=both\n\
\n\
[Logging]\n\
LogFile={log}\n\
LogLevel=INFO\n\
EnableSyslog=false\n\
\n\
[Channels]\n\
rdpdr=true\n\
rdpsnd=true\n\
drdynvc=true\n\
cliprdr=true\n\
rail=true\n\
xrdpvr=true\n\
tcutils=true\n\
\n\
[Xorg]\n\
name=Xorg\n\
lib=libxup.so\n\
username=ask\n\
password=ask\n\
ip=127.0.0.1\n\
port=-1\n\
code=20\n",
        log = dir.join("log/xrdp.log").display()
    )
}

fn sesman_ini(port: u16, dir: &Path) -> String {
    format!(
        "; private sesman.ini of gatehouse's RDP test harness (xrdp reads ListenPort from here)\n\
[Globals]\n\
ListenAddress=127.0.0.1\n\
ListenPort={port}\n\
EnableUserWindowManager=true\n\
UserWindowManager=startwm.sh\n\
DefaultWindowManager=startwm.sh\n\
ReconnectScript=reconnectwm.sh\n\
\n\
[Security]\n\
AllowRootLogin=false\n\
MaxLoginRetry=4\n\
TerminalServerUsers=tsusers\n\
TerminalServerAdmins=tsadmins\n\
AlwaysGroupCheck=false\n\
\n\
[Sessions]\n\
X11DisplayOffset=10\n\
MaxSessions=50\n\
KillDisconnected=false\n\
DisconnectedTimeLimit=0\n\
IdleTimeLimit=0\n\
Policy=Default\n\
\n\
[Logging]\n\
LogFile={log}\n\
LogLevel=INFO\n\
EnableSyslog=false\n\
\n\
[Xorg]\n\
param=/usr/lib/xorg/Xorg\n\
param=-config\n\
param=xrdp/xorg.conf\n\
param=-noreset\n\
param=-nolisten\n\
param=tcp\n\
param=-logfile\n\
param=.xorgxrdp.%s.log\n\
\n\
[Chansrv]\n\
FuseMountName=thinclient_drives\n\
FileUmask=077\n\
\n\
[ChansrvLogging]\n\
LogLevel=INFO\n\
EnableSyslog=false\n",
        log = dir.join("log/sesman.log").display()
    )
}

/// Whether something listens on loopback `port` (IPv4 or IPv6), from /proc/net/tcp{,6}.
fn listening(port: u16) -> bool {
    let want = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() > 3 && cols[1].ends_with(&want) && cols[3] == "0A"
            })
    })
}

/// xrdp's "connection accepted" lines in `log`.
fn count_connections(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("connection received from"))
        .count()
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The file's bytes from `offset` on, as text.
fn read_from(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut buf = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_end(&mut buf);
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
