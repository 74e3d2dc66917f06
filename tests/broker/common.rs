//! Helpers: a farm directory with its CA and member certificates, brokers and host agents
//! as child processes (killed on drop), and a gateway control client.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gatehouse::broker_role::{ClientSetup, ControlClient, MemberTls};
use gatehouse_control::message::{Login, Reply, Request, Secret};

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

/// A child process killed (and reaped) on drop; its stderr goes to `log`.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
    }
    /// The log so far, without terminal colour codes.
    pub fn log_text(&self) -> String {
        let raw = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // CSI: ESC [ ... final byte in @..~
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) && d != '[' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }
    /// Waits until the log contains `needle` `count` times.
    pub fn wait_log(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        wait_for(timeout, || self.log_text().matches(needle).count() >= count)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` every 20 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Runs the binary to completion with `args` (and an optional password in the environment).
pub fn run_cli(args: &[&str], password: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).stdin(Stdio::null());
    match password {
        Some(p) => cmd.env("GATEHOUSE_PASSWORD", p),
        None => cmd.env_remove("GATEHOUSE_PASSWORD"),
    };
    cmd.output().unwrap()
}

/// The farm: a temporary directory with the CA, the ticket key, the farm file and users.
pub struct Farm {
    pub dir: tempfile::TempDir,
}

/// One session host of the farm file.
pub struct HostSpec {
    pub name: &'static str,
    pub address: &'static str,
}

pub const HOSTS: [HostSpec; 3] = [
    HostSpec {
        name: "rdsh-1",
        address: "127.0.1.1",
    },
    HostSpec {
        name: "rdsh-2",
        address: "127.0.1.2",
    },
    HostSpec {
        name: "rdsh-3",
        address: "127.0.1.3",
    },
];

impl Farm {
    /// `farm init`, the farm file (one site, three hosts, `host_down_after = 2s`, three
    /// failures lock a user) and user alice (password "right", group staff).
    pub fn new() -> Farm {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let out = run_cli(&["farm", "init", "--dir", d], None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut farm = String::from(
            "[[site]]\nname = \"site-a\"\ndefault_pool = \"pool-a\"\n\n[[gateway]]\nname = \"gw-a\"\nsite = \"site-a\"\n\n",
        );
        for h in &HOSTS {
            farm.push_str(&format!(
                "[[host]]\nname = \"{}\"\naddress = \"{}\"\nsite = \"site-a\"\nsession_limit = 50\n\n",
                h.name, h.address
            ));
        }
        farm.push_str(
            "[[pool]]\nname = \"pool-a\"\nsite = \"site-a\"\nhosts = [\"rdsh-1\", \"rdsh-2\", \"rdsh-3\"]\n\n\
             [[group]]\nname = \"staff\"\n\n\
             [[resource]]\nid = \"desktop-a\"\nname = \"Office desktop\"\nkind = \"desktop\"\npool = \"pool-a\"\ngroups = [\"staff\"]\n\n\
             [balancing]\nsessions_weight = 0.0\nhost_down_after = \"2s\"\n\n\
             [login]\nuser_max_failures = 3\n",
        );
        std::fs::write(dir.path().join("farm.toml"), farm).unwrap();
        let f = Farm { dir };
        f.issue("gw-a", "gateway");
        f
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// `farm issue NAME --role ROLE`.
    pub fn issue(&self, name: &str, role: &str) {
        let d = self.dir.path().to_str().unwrap();
        let out = run_cli(&["farm", "issue", name, "--dir", d, "--role", role], None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn tls(&self, name: &str) -> MemberTls {
        MemberTls {
            cert_file: self.path(&format!("{name}.pem")),
            key_file: self.path(&format!("{name}.key")),
            ca_file: self.path("farm-ca.pem"),
        }
    }

    /// Writes the config of broker `name` (users file shared by all brokers of the farm).
    pub fn broker_config(&self, name: &str, gw: SocketAddr, agents: SocketAddr) -> PathBuf {
        let p = |f: &str| self.path(f).display().to_string();
        let text = format!(
            "[node]\nname = \"{name}\"\nworkers = 1\n\n[broker]\ngateway_listen = \"{gw}\"\nagent_listen = \"{agents}\"\n\
             farm_file = \"{}\"\nusers_file = \"{}\"\naudit_file = \"{}\"\nfarm_key_file = \"{}\"\n\
             cert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\nhash_threads = 1\n",
            p("farm.toml"),
            p("users.toml"),
            p(&format!("{name}-audit.log")),
            p("farm-keys.toml"),
            p(&format!("{name}.pem")),
            p(&format!("{name}.key")),
            p("farm-ca.pem"),
        );
        let path = self.path(&format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Adds user `name` with `password` through the CLI of `config`.
    pub fn add_user(&self, config: &Path, name: &str, password: &str) {
        let out = run_cli(
            &[
                "user",
                "add",
                name,
                "--groups",
                "staff",
                "-c",
                config.to_str().unwrap(),
            ],
            Some(password),
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    /// Starts broker `name` on fresh ports and waits until it accepts.
    pub fn start_broker(&self, name: &str) -> Broker {
        self.issue(name, "broker");
        let gw: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let agents: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = self.broker_config(name, gw, agents);
        if !self.path("users.toml").exists() {
            self.add_user(&config, "alice", "right");
        }
        let proc = self.spawn(name, &["run", "-c", config.to_str().unwrap()]);
        assert!(
            wait_for(Duration::from_secs(10), || TcpStream::connect(gw).is_ok()),
            "broker {name} did not listen: {}",
            proc.log_text()
        );
        Broker {
            proc,
            gw,
            agents,
            config,
        }
    }

    /// Starts a host agent for `host` reporting `cpu`% to `brokers`; its RDP port is `rdp`.
    pub fn start_agent(&self, host: &str, brokers: &[SocketAddr], cpu: u8, rdp: SocketAddr) -> Proc {
        self.issue(host, "host-agent");
        let cert = self.path(&format!("{host}.pem"));
        let key = self.path(&format!("{host}.key"));
        let ca = self.path("farm-ca.pem");
        let mut args: Vec<String> = vec!["host-agent".into(), "--name".into(), host.into()];
        for b in brokers {
            args.push("--broker".into());
            args.push(b.to_string());
        }
        for (flag, v) in [("--cert", &cert), ("--key", &key), ("--ca", &ca)] {
            args.push(flag.into());
            args.push(v.display().to_string());
        }
        args.extend([
            "--rdp".into(),
            rdp.to_string(),
            "--interval".into(),
            "500ms".into(),
            "--cpu".into(),
            cpu.to_string(),
            "--mem".into(),
            "30".into(),
        ]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn(host, &refs)
    }

    fn spawn(&self, name: &str, args: &[&str]) -> Proc {
        let log = self.path(&format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin())
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Proc { child, log }
    }

    /// Adds gateway `name` to site-a in the farm file and issues its certificate (before the
    /// brokers start).
    pub fn add_gateway(&self, name: &str) {
        let farm = std::fs::read_to_string(self.path("farm.toml")).unwrap();
        let farm = format!("[[gateway]]\nname = \"{name}\"\nsite = \"site-a\"\n\n{farm}");
        std::fs::write(self.path("farm.toml"), farm).unwrap();
        self.issue(name, "gateway");
    }

    /// A control client for gateway gw-a over `brokers` (primary first), once every
    /// broker's link is up (so the primary is the one in use).
    pub fn client(&self, brokers: &[SocketAddr]) -> ControlClient {
        self.client_as("gw-a", brokers)
    }

    /// [`Farm::client`] for gateway `name`.
    pub fn client_as(&self, name: &str, brokers: &[SocketAddr]) -> ControlClient {
        let tls = self.tls(name).client_config().unwrap();
        let client = ControlClient::start(ClientSetup::new(name, brokers.to_vec(), tls)).unwrap();
        assert!(
            wait_for(Duration::from_secs(10), || client.connected_brokers().len()
                == brokers.len()),
            "links not up: {:?}",
            client.connected_brokers()
        );
        client
    }
}

/// A running broker.
pub struct Broker {
    pub proc: Proc,
    pub gw: SocketAddr,
    pub agents: SocketAddr,
    pub config: PathBuf,
}

/// A login request from a fixed client address.
pub fn login(user: &str, password: &str) -> Request {
    Request::Login(Login {
        user: user.into(),
        password: Secret::new(password),
        second_factor: None,
        client_addr: "192.0.2.10:50000".parse().unwrap(),
        wait_ms: None,
    })
}

/// The refusal reason of a reply, or "ok".
pub fn outcome(reply: &Reply) -> String {
    match reply {
        Reply::Refused(r) => r.reason.as_str().to_string(),
        other => other.name().to_string(),
    }
}
