//! A whole small farm for gateway tests: farm CA and keys, a broker, stand-in session hosts
//! that record what they receive (and echo it), a host agent per host, and gateways as
//! child processes of the real binary.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{bin, free_port, run_cli, wait_for, Proc};

/// A stand-in session host: accepts, records the first bytes of each connection, echoes.
pub struct StandIn {
    pub name: String,
    pub addr: SocketAddr,
    /// The host's `address` in the farm file (its IP, or a name to look up).
    pub farm_address: String,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// The first up-to-4 KiB of each connection, in accept order (once read).
    pub received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl StandIn {
    /// Listens on a free loopback port and serves on a thread.
    pub fn start(name: &str) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        serve(listener, accepted.clone(), received.clone());
        StandIn {
            name: name.to_string(),
            addr,
            farm_address: addr.ip().to_string(),
            accepted,
            received,
        }
    }

    /// Like `start`, but the farm file names the host `localhost`, so the gateway must look
    /// the name up; it also listens on [::1] at the same port, as `localhost` may resolve to
    /// either.
    pub fn start_named(name: &str) -> StandIn {
        let mut s = StandIn::start(name);
        if let Ok(v6) = TcpListener::bind(("::1", s.addr.port())) {
            serve(v6, s.accepted.clone(), s.received.clone());
        }
        s.farm_address = "localhost".into();
        s
    }

    /// A host that is not ours (a real RDP server): nothing is recorded.
    pub fn external(name: &str, addr: SocketAddr) -> StandIn {
        StandIn {
            name: name.to_string(),
            addr,
            farm_address: addr.ip().to_string(),
            accepted: Arc::new(AtomicUsize::new(0)),
            received: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Connections that sent at least one byte (host agents' RDP probes connect and close
    /// without a byte, so they do not count).
    pub fn accepted(&self) -> usize {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| !r.is_empty())
            .count()
    }
}

/// Accepts on `listener`, records the first bytes of each connection, echoes.
fn serve(listener: TcpListener, accepted: Arc<AtomicUsize>, received: Arc<Mutex<Vec<Vec<u8>>>>) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            accepted.fetch_add(1, Ordering::SeqCst);
            let r = received.clone();
            std::thread::spawn(move || {
                let mut first = Vec::new();
                let mut buf = [0u8; 16384];
                let slot = {
                    let mut g = r.lock().unwrap();
                    g.push(Vec::new());
                    g.len() - 1
                };
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = conn.shutdown(std::net::Shutdown::Write);
                            return;
                        }
                        Ok(n) => {
                            if first.len() < 4096 {
                                first.extend_from_slice(&buf[..n.min(4096 - first.len())]);
                                r.lock().unwrap()[slot] = first.clone();
                            }
                            if conn.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
}

/// The farm: directory, broker, hosts, agents.
pub struct GatewayFarm {
    pub dir: tempfile::TempDir,
    pub hosts: Vec<StandIn>,
    pub broker: Proc,
    pub broker_gw: SocketAddr,
    /// The broker's admin listener (its /metrics).
    pub broker_admin: SocketAddr,
    pub agents: Vec<Proc>,
}

/// One gateway process and its addresses.
pub struct Gateway {
    pub proc: Proc,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
}

impl GatewayFarm {
    /// A farm with `n` stand-in hosts in pool `pool-a` of site `site-a` (resource
    /// `desktop-a`, group staff), users alice/right and bob/other; host 0 reports a session
    /// of `alice`. Gateways gw-a, gw-b (site-a), fw-1, fw-2 (forwarders) and gw-x (site-b)
    /// have certificates.
    pub fn start(n: usize) -> GatewayFarm {
        Self::start_with(n, None, false)
    }

    /// A farm of one stand-in host that the farm file names `localhost` (see
    /// [`StandIn::start_named`]).
    pub fn start_named_host() -> GatewayFarm {
        Self::start_with(1, None, true)
    }

    /// A farm whose only session host is the real RDP server at `real` (and users alice,
    /// bob and `real_user` with `real_password`, as on that server).
    pub fn start_real(real: SocketAddr, real_user: &str, real_password: &str) -> GatewayFarm {
        Self::start_with(0, Some((real, real_user, real_password)), false)
    }

    fn start_with(n: usize, real: Option<(SocketAddr, &str, &str)>, named: bool) -> GatewayFarm {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap().to_string();
        let out = run_cli(&["farm", "init", "--dir", &d], None);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut hosts: Vec<StandIn> = (0..n)
            .map(|i| {
                let name = format!("rdsh-{}", i + 1);
                if named {
                    StandIn::start_named(&name)
                } else {
                    StandIn::start(&name)
                }
            })
            .collect();
        if let Some((addr, _, _)) = real {
            hosts.push(StandIn::external("xrdp", addr));
        }
        let mut farm = String::from(
            "[[site]]\nname = \"site-a\"\ndefault_pool = \"pool-a\"\n\n[[site]]\nname = \"site-b\"\n\n\
             [[gateway]]\nname = \"gw-a\"\nsite = \"site-a\"\n\n[[gateway]]\nname = \"gw-b\"\nsite = \"site-a\"\n\n\
             [[gateway]]\nname = \"gw-x\"\nsite = \"site-b\"\n\n",
        );
        for h in &hosts {
            farm.push_str(&format!(
                "[[host]]\nname = \"{}\"\naddress = \"{}\"\nport = {}\nsite = \"site-a\"\nsession_limit = 50\n\n",
                h.name,
                h.farm_address,
                h.addr.port()
            ));
        }
        let names: Vec<String> = hosts.iter().map(|h| format!("\"{}\"", h.name)).collect();
        farm.push_str(&format!(
            "[[pool]]\nname = \"pool-a\"\nsite = \"site-a\"\nhosts = [{}]\n\n\
             [[group]]\nname = \"staff\"\n\n\
             [[resource]]\nid = \"desktop-a\"\nname = \"Office desktop\"\nkind = \"desktop\"\npool = \"pool-a\"\ngroups = [\"staff\"]\n\n\
             [balancing]\nhost_down_after = \"3s\"\n\n[login]\nuser_max_failures = 5\n\n\
             [launch]\nticket_lifetime = \"3s\"\n",
            names.join(", ")
        ));
        std::fs::write(dir.path().join("farm.toml"), farm).unwrap();
        for (name, role) in [
            ("broker-1", "broker"),
            ("gw-a", "gateway"),
            ("gw-b", "gateway"),
            ("gw-x", "gateway"),
        ] {
            let out = run_cli(&["farm", "issue", name, "--dir", &d, "--role", role], None);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        let p = |f: &str| dir.path().join(f).display().to_string();
        let broker_gw: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let agents_at: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let broker_admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = format!(
            "[node]\nname = \"broker-1\"\nworkers = 1\n\n[admin]\nlisten = \"{broker_admin}\"\n\n[broker]\ngateway_listen = \"{broker_gw}\"\nagent_listen = \"{agents_at}\"\n\
             farm_file = \"{}\"\nusers_file = \"{}\"\naudit_file = \"{}\"\nfarm_key_file = \"{}\"\n\
             cert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\nhash_threads = 2\n",
            p("farm.toml"),
            p("users.toml"),
            p("audit.log"),
            p("farm-keys.toml"),
            p("broker-1.pem"),
            p("broker-1.key"),
            p("farm-ca.pem"),
        );
        let broker_config = dir.path().join("broker-1.toml");
        std::fs::write(&broker_config, config).unwrap();
        let mut users = vec![("alice", "right"), ("bob", "other")];
        if let Some((_, user, pass)) = real {
            users.push((user, pass));
        }
        for (user, pass) in users {
            let out = run_cli(
                &[
                    "user",
                    "add",
                    user,
                    "--groups",
                    "staff",
                    "-c",
                    broker_config.to_str().unwrap(),
                ],
                Some(pass),
            );
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        let broker = spawn(
            dir.path(),
            "broker-1",
            &["run", "-c", broker_config.to_str().unwrap()],
        );
        assert!(
            wait_for(Duration::from_secs(10), || TcpStream::connect(broker_gw).is_ok()),
            "broker did not listen: {}",
            broker.log_text()
        );
        let mut agents = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            let out = run_cli(
                &["farm", "issue", &h.name, "--dir", &d, "--role", "host-agent"],
                None,
            );
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let mut args: Vec<String> = vec![
                "host-agent".into(),
                "--name".into(),
                h.name.clone(),
                "--broker".into(),
                agents_at.to_string(),
                "--cert".into(),
                p(&format!("{}.pem", h.name)),
                "--key".into(),
                p(&format!("{}.key", h.name)),
                "--ca".into(),
                p("farm-ca.pem"),
                "--rdp".into(),
                h.addr.to_string(),
                "--interval".into(),
                "500ms".into(),
                "--cpu".into(),
                // Host 0 is the busiest, so only affinity sends anyone there.
                (if i == 0 { 90 } else { 10 + 10 * i as u8 }).to_string(),
                "--mem".into(),
                "30".into(),
            ];
            if i == 0 {
                args.extend(["--session".into(), "alice".into()]);
            }
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            agents.push(spawn(dir.path(), &h.name, &refs));
        }
        let f = GatewayFarm {
            dir,
            hosts,
            broker,
            broker_gw,
            broker_admin,
            agents,
        };
        // Hosts are chosen once their agents reported (every 500 ms).
        std::thread::sleep(Duration::from_millis(1200));
        f
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The broker's /metrics text.
    pub fn broker_metrics(&self) -> String {
        crate::client::request(self.broker_admin, "GET", "/metrics", None, None)
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .unwrap_or_default()
    }

    /// The `[gateway]` section (brokers, member files) for gateway `id` of `site`.
    pub fn gateway_section(&self, id: &str, site: &str) -> String {
        let p = |f: &str| self.path(f).display().to_string();
        format!(
            "[gateway]\nid = \"{id}\"\nsite = \"{site}\"\nbrokers = [\"{}\"]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
             ca_file = \"{}\"\nfarm_key_file = \"{}\"\nrequest_timeout = \"3s\"\n\n",
            self.broker_gw,
            p(&format!("{id}.pem")),
            p(&format!("{id}.key")),
            p("farm-ca.pem"),
            p("farm-keys.toml"),
        )
    }

    /// Starts gateway `id` with one front listener (`tls = "auto"`, self-signed certificate,
    /// RDP balancing over desktop-a) plus `extra` TOML appended to its listener table.
    pub fn start_gateway(&self, id: &str, site: &str, extra: &str) -> Gateway {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let state = self.path(&format!("{id}-state"));
        let text = format!(
            "[node]\nname = \"{id}\"\nworkers = 2\nstate_dir = \"{}\"\n\n[admin]\nlisten = \"{admin}\"\n\n{}\
             [[gateway.listener]]\nname = \"front\"\nbind = \"{listen}\"\ntls = \"auto\"\nrdp_resource = \"desktop-a\"\n\
             handshake_timeout = \"2s\"\nconnect_timeout = \"1s\"\n{extra}\n",
            state.display(),
            self.gateway_section(id, site),
        );
        self.start_gateway_config(id, &text, listen, admin)
    }

    /// Starts a gateway process from a whole config text.
    pub fn start_gateway_config(
        &self,
        name: &str,
        text: &str,
        listen: SocketAddr,
        admin: SocketAddr,
    ) -> Gateway {
        let config = self.path(&format!("{name}.toml"));
        std::fs::write(&config, text).unwrap();
        let proc = spawn(self.dir.path(), name, &["run", "-c", config.to_str().unwrap()]);
        assert!(
            wait_for(Duration::from_secs(10), || TcpStream::connect(listen).is_ok()),
            "gateway {name} did not listen: {}",
            proc.log_text()
        );
        Gateway {
            proc,
            listen,
            admin,
            config,
        }
    }
}

impl Gateway {
    /// Waits until `GET /health` says a broker is connected.
    pub fn wait_healthy(&self) {
        let ok = wait_for(Duration::from_secs(10), || {
            crate::client::request(self.listen, "GET", "/health", None, None)
                .map(|r| r.status == 200)
                .unwrap_or(false)
        });
        assert!(ok, "gateway never healthy: {}", self.proc.log_text());
    }

    /// Waits until `healthy` (a custom probe) holds: for listeners that need a PROXY header.
    pub fn wait_healthy_via(&self, mut healthy: impl FnMut() -> bool) {
        let ok = wait_for(Duration::from_secs(10), &mut healthy);
        assert!(ok, "gateway never healthy: {}", self.proc.log_text());
    }

    /// The admin /metrics text.
    pub fn metrics(&self) -> String {
        crate::client::request(self.admin, "GET", "/metrics", None, None)
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .unwrap_or_default()
    }
}

fn spawn(dir: &std::path::Path, name: &str, args: &[&str]) -> Proc {
    let log = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new(bin())
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    Proc { child, log }
}
