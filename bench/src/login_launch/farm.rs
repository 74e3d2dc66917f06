//! The farm under test: a directory with the farm CA and member certificates (made by the
//! `gatehouse farm init|issue` commands), a farm file of sites, hosts, pools, groups and
//! resources, a users file of argon2id hashes, and a broker started as `gatehouse run`.
//!
//! The texts of the farm file and the users file are built by pure functions (tested
//! against the parsers of `gatehouse_control`); the I/O is in [`FarmDir`] and
//! [`BrokerProcess`]. The broker is the real binary, as the end-to-end tests of gatehouse
//! run it: this crate cannot link gatehouse (gatehouse depends on it).

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::{OsRng, StdRng};
use rand::{Rng, SeedableRng};

use gatehouse_control::broker::UserDb;

use crate::BenchError;

/// The broker's node name (its certificate CN and hello name).
pub const BROKER_NODE: &str = "broker-1";
/// The group every user belongs to; it may launch every resource.
pub const STAFF_GROUP: &str = "staff";
/// Sessions a host takes at most.
pub const SESSION_LIMIT: u32 = 250;

/// The shape of the generated farm.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Session hosts, spread over the sites in file order.
    pub hosts: usize,
    /// Sites (each with one gateway, a desktop pool and an application pool).
    pub sites: usize,
    /// Users of the users file.
    pub users: usize,
}

/// One host's load as its stand-in agent reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLoad {
    /// The host's name (its agent's node name).
    pub host: String,
    /// CPU percentage.
    pub cpu_percent: u8,
    /// Memory percentage.
    pub mem_percent: u8,
    /// Users with a session on the host (stand-in names, none of them farm users).
    pub sessions: Vec<String>,
}

impl Layout {
    /// Name of site `s` (0-based).
    pub fn site(s: usize) -> String {
        format!("site-{}", s + 1)
    }

    /// Name of the gateway of site `s`.
    pub fn gateway(s: usize) -> String {
        format!("gw-{}", s + 1)
    }

    /// Name of host `h`.
    pub fn host(h: usize) -> String {
        format!("rdsh-{:03}", h + 1)
    }

    /// Name of user `u`.
    pub fn user(u: usize) -> String {
        format!("user{:05}", u + 1)
    }

    /// The resources of site `s`: its desktop and its application.
    pub fn resources(s: usize) -> [String; 2] {
        [format!("desktop-{}", s + 1), format!("app-{}", s + 1)]
    }

    /// The site of host `h`: hosts are cut into `sites` contiguous runs.
    pub fn site_of_host(&self, h: usize) -> usize {
        h * self.sites / self.hosts
    }

    /// Checks the numbers before anything is written.
    pub fn check(&self) -> Result<(), BenchError> {
        if self.sites == 0 || self.users == 0 {
            return Err(BenchError::Usage("--sites and --users must be at least 1".into()));
        }
        if self.hosts < 2 * self.sites {
            return Err(BenchError::Usage(
                "--hosts must be at least twice --sites (a desktop and an application pool per site)".into(),
            ));
        }
        if self.hosts > 999 || self.users > 99_999 || self.sites > 64 {
            return Err(BenchError::Usage(
                "at most 999 hosts, 99,999 users and 64 sites".into(),
            ));
        }
        Ok(())
    }

    /// The farm file (control/FARM.md): per site a gateway, a desktop pool of three quarters
    /// of its hosts and an application pool of the rest, both resources open to `staff`;
    /// host addresses in 198.18.0.0/15 (RFC 2544's benchmarking range: never dialled).
    pub fn farm_text(&self) -> String {
        let mut t = String::from("# gatehouse-bench login-launch: generated farm\n\n");
        for s in 0..self.sites {
            let _ = write!(
                t,
                "[[site]]\nname = \"{}\"\ndefault_pool = \"desktops-{n}\"\n\n[[gateway]]\nname = \"{}\"\nsite = \"{}\"\n\n",
                Layout::site(s),
                Layout::gateway(s),
                Layout::site(s),
                n = s + 1
            );
        }
        for h in 0..self.hosts {
            let _ = write!(
                t,
                "[[host]]\nname = \"{}\"\naddress = \"198.18.{}.{}\"\nsite = \"{}\"\nsession_limit = {SESSION_LIMIT}\n\n",
                Layout::host(h),
                h / 250,
                h % 250 + 1,
                Layout::site(self.site_of_host(h))
            );
        }
        let _ = write!(t, "[[group]]\nname = \"{STAFF_GROUP}\"\n\n");
        for s in 0..self.sites {
            let hosts: Vec<usize> = (0..self.hosts).filter(|&h| self.site_of_host(h) == s).collect();
            // At least one host in each pool (check() keeps two per site).
            let cut = (hosts.len() * 3 / 4).clamp(1, hosts.len() - 1);
            let list = |hs: &[usize]| {
                hs.iter()
                    .map(|&h| format!("\"{}\"", Layout::host(h)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let [desktop, app] = Layout::resources(s);
            let _ = write!(
                t,
                "[[pool]]\nname = \"desktops-{n}\"\nsite = \"{site}\"\nhosts = [{}]\n\n\
                 [[pool]]\nname = \"apps-{n}\"\nsite = \"{site}\"\nhosts = [{}]\n\n\
                 [[resource]]\nid = \"{desktop}\"\nname = \"Office desktop {n}\"\nkind = \"desktop\"\npool = \"desktops-{n}\"\ngroups = [\"{STAFF_GROUP}\"]\n\n\
                 [[resource]]\nid = \"{app}\"\nname = \"Accounting {n}\"\nkind = \"application\"\npool = \"apps-{n}\"\ngroups = [\"{STAFF_GROUP}\"]\n\n",
                list(&hosts[..cut]),
                list(&hosts[cut..]),
                n = s + 1,
                site = Layout::site(s),
            );
        }
        t
    }

    /// Reported loads: CPU 5-90 %, memory 20-85 %, 0-100 stand-in sessions, and every 25th
    /// host at its session limit (so the broker skips it), all from `seed`.
    pub fn host_loads(&self, seed: u64) -> Vec<HostLoad> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..self.hosts)
            .map(|h| {
                let host = Layout::host(h);
                let n = if h % 25 == 24 {
                    SESSION_LIMIT as usize
                } else {
                    rng.gen_range(0..=100)
                };
                HostLoad {
                    sessions: (0..n).map(|i| format!("seat-{host}-{i}")).collect(),
                    cpu_percent: rng.gen_range(5..=90),
                    mem_percent: rng.gen_range(20..=85),
                    host,
                }
            })
            .collect()
    }
}

/// The users file text: user `u` with `hashes[u % hashes.len()]` and group `staff`.
pub fn users_text(users: usize, hashes: &[String]) -> String {
    let mut t = String::with_capacity(users * 160);
    t.push_str("# gatehouse-bench login-launch: generated users\n\n");
    for u in 0..users {
        let _ = write!(
            t,
            "[[user]]\nname = \"{}\"\nhash = \"{}\"\ngroups = [\"{STAFF_GROUP}\"]\n\n",
            Layout::user(u),
            hashes[u % hashes.len()]
        );
    }
    t
}

/// The password of user `u` when every user has their own hash; with one shared hash,
/// every user has the password of user 0.
pub fn password(u: usize) -> String {
    format!("pw-{}", Layout::user(u))
}

/// How the users' hashes were made.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Hashing {
    /// Distinct hashes written (1: one hash shared by every user).
    pub distinct: usize,
    /// Threads that computed them.
    pub threads: usize,
    /// Wall time of all hashing.
    pub elapsed_s: f64,
    /// Wall time of one hash (the first one, alone).
    pub one_hash_ms: f64,
    /// What `users` distinct hashes would take on every CPU given, from `one_hash_ms`.
    pub projected_all_distinct_s: f64,
}

/// argon2id PHC strings at the users file's default cost (that of `gatehouse user add`):
/// `distinct` of them, for users 0..distinct (password [`password`]), on `threads` threads.
pub fn make_hashes(
    users: usize,
    distinct: usize,
    threads: usize,
) -> Result<(Vec<String>, Hashing), BenchError> {
    let hash_of = |u: usize| -> Result<String, BenchError> {
        let mut db = UserDb::default();
        let name = Layout::user(u);
        db.add(&name, &password(u), Vec::new(), &mut OsRng)
            .map_err(|e| BenchError::Usage(format!("hashing a password: {e}")))?;
        Ok(db.user(&name).map(|x| x.hash().to_string()).unwrap_or_default())
    };
    let cpus = threads.max(1);
    let threads = cpus.min(distinct.max(1));
    let start = Instant::now();
    let first = hash_of(0)?;
    let one = start.elapsed();
    let mut hashes = vec![first];
    if distinct > 1 {
        let rest: Vec<Result<Vec<String>, BenchError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let hash_of = &hash_of;
                    scope.spawn(move || (1..distinct).filter(|u| u % threads == t).map(hash_of).collect())
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(BenchError::Usage("a hashing thread panicked".into())))
                })
                .collect()
        });
        let mut per_thread = Vec::new();
        for r in rest {
            per_thread.push(r?.into_iter());
        }
        // Interleave back into user order (thread t took users t, t + threads, ...).
        for u in 1..distinct {
            let next = per_thread[u % threads].next();
            hashes.push(next.ok_or_else(|| BenchError::Usage("a hashing thread lost a hash".into()))?);
        }
    }
    let hashing = Hashing {
        distinct,
        threads,
        elapsed_s: start.elapsed().as_secs_f64(),
        one_hash_ms: one.as_secs_f64() * 1e3,
        projected_all_distinct_s: one.as_secs_f64() * users as f64 / cpus as f64,
    };
    Ok((hashes, hashing))
}

/// A farm directory: kept when given, a temporary one removed on drop otherwise.
pub struct FarmDir {
    path: PathBuf,
    _temp: Option<tempfile::TempDir>,
    gatehouse: PathBuf,
}

impl FarmDir {
    /// Uses `dir` (created if missing; must not hold a farm yet), or a fresh temporary one.
    pub fn new(dir: Option<&Path>, gatehouse: &Path) -> Result<FarmDir, BenchError> {
        FarmDir::with_prefix(dir, gatehouse, "gatehouse-login-launch.")
    }

    /// As [`FarmDir::new`], naming a temporary directory `PREFIX...`.
    pub fn with_prefix(dir: Option<&Path>, gatehouse: &Path, prefix: &str) -> Result<FarmDir, BenchError> {
        if !gatehouse.is_file() {
            return Err(BenchError::Usage(format!(
                "no gatehouse binary at {} (build it with `cargo build --release -p gatehouse`, or pass --gatehouse)",
                gatehouse.display()
            )));
        }
        let (path, temp) = match dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|e| BenchError::Usage(format!("{}: {e}", d.display())))?;
                (d.to_path_buf(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix(prefix)
                    .tempdir()
                    .map_err(|e| BenchError::Usage(format!("temporary directory: {e}")))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        Ok(FarmDir {
            path,
            _temp: temp,
            gatehouse: gatehouse.to_path_buf(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A file of the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// A file of the directory as a string for a config file.
    pub fn file_text(&self, name: &str) -> String {
        self.file(name).display().to_string()
    }

    /// The farm CA certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.file("farm-ca.pem")
    }

    /// `gatehouse farm init`, then `gatehouse farm issue` for the broker, one gateway per
    /// site and one host agent per host.
    pub fn make_pki(&self, layout: &Layout) -> Result<(), BenchError> {
        self.init_ca()?;
        let mut members = vec![(BROKER_NODE.to_string(), "broker")];
        members.extend((0..layout.sites).map(|s| (Layout::gateway(s), "gateway")));
        members.extend((0..layout.hosts).map(|h| (Layout::host(h), "host-agent")));
        for (name, role) in &members {
            self.issue(name, role)?;
        }
        Ok(())
    }

    /// `gatehouse farm init`: the farm CA and ticket keys.
    pub fn init_ca(&self) -> Result<(), BenchError> {
        let d = self.path.display().to_string();
        self.gatehouse_cli(&["farm", "init", "--dir", &d])
    }

    /// `gatehouse farm issue NAME --role ROLE` (`broker`, `gateway` or `host-agent`):
    /// `NAME.pem` and `NAME.key`.
    pub fn issue(&self, name: &str, role: &str) -> Result<(), BenchError> {
        let d = self.path.display().to_string();
        self.gatehouse_cli(&["farm", "issue", name, "--dir", &d, "--role", role])
    }

    /// Writes `text` into the directory's file `name`.
    pub fn write(&self, name: &str, text: &str) -> Result<(), BenchError> {
        write(&self.file(name), text)
    }

    /// Writes the farm file and the users file, checking both with the broker's parsers.
    pub fn write_files(&self, layout: &Layout, hashes: &[String]) -> Result<(), BenchError> {
        self.write_farm(&layout.farm_text())?;
        self.write_users(layout.users, hashes)
    }

    /// Writes `farm.toml` after checking it with the broker's parser.
    pub fn write_farm(&self, farm: &str) -> Result<(), BenchError> {
        gatehouse_control::broker::Farm::parse(farm)
            .map_err(|e| BenchError::Usage(format!("generated farm file: {e}")))?;
        self.write("farm.toml", farm)
    }

    /// Writes `users.toml` ([`users_text`]) and checks it with the broker's parser.
    pub fn write_users(&self, users: usize, hashes: &[String]) -> Result<(), BenchError> {
        self.write("users.toml", &users_text(users, hashes))?;
        UserDb::load(&self.file("users.toml"))
            .map_err(|e| BenchError::Usage(format!("generated users file: {e}")))?;
        Ok(())
    }

    /// Starts `gatehouse run` as broker-1 on two free loopback ports with `hash_threads`
    /// password threads, and waits until its gateway port accepts.
    pub fn start_broker(&self, hash_threads: usize) -> Result<BrokerProcess, BenchError> {
        let gateway_addr = free_loopback_addr()?;
        let agent_addr = free_loopback_addr()?;
        let p = |f: &str| self.file_text(f);
        let config = format!(
            "[node]\nname = \"{BROKER_NODE}\"\nworkers = 1\nlog_level = \"warn\"\n\n[broker]\n\
             gateway_listen = \"{gateway_addr}\"\nagent_listen = \"{agent_addr}\"\n\
             farm_file = \"{}\"\nusers_file = \"{}\"\naudit_file = \"{}\"\nfarm_key_file = \"{}\"\n\
             cert_file = \"{}\"\nkey_file = \"{}\"\nca_file = \"{}\"\nhash_threads = {hash_threads}\n",
            p("farm.toml"),
            p("users.toml"),
            p("audit.log"),
            p("farm-keys.toml"),
            p(&format!("{BROKER_NODE}.pem")),
            p(&format!("{BROKER_NODE}.key")),
            p("farm-ca.pem"),
        );
        let node = self.start_node(BROKER_NODE, &config, gateway_addr)?;
        Ok(BrokerProcess {
            node,
            gateway_addr,
            agent_addr,
        })
    }

    /// Writes `NAME.toml` with `config`, starts `gatehouse run -c NAME.toml` (stderr into
    /// `NAME.log`) and waits up to 20 s until `ready` accepts a TCP connection.
    pub fn start_node(&self, name: &str, config: &str, ready: SocketAddr) -> Result<NodeProcess, BenchError> {
        let config_file = self.file(&format!("{name}.toml"));
        write(&config_file, config)?;
        let log = self.file(&format!("{name}.log"));
        let log_file =
            std::fs::File::create(&log).map_err(|e| BenchError::Usage(format!("{}: {e}", log.display())))?;
        let child = Command::new(&self.gatehouse)
            .arg("run")
            .arg("-c")
            .arg(&config_file)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| BenchError::Usage(format!("cannot start {}: {e}", self.gatehouse.display())))?;
        let mut node = NodeProcess {
            name: name.to_string(),
            child,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect_timeout(&ready, Duration::from_millis(200)).is_ok() {
                return Ok(node);
            }
            if let Ok(Some(status)) = node.child.try_wait() {
                return Err(BenchError::TargetDead {
                    target: ready,
                    reason: format!("{name} exited ({status}): {}", node.log_tail()),
                });
            }
            if Instant::now() >= deadline {
                return Err(BenchError::TargetDead {
                    target: ready,
                    reason: format!("{name} not listening after 20 s: {}", node.log_tail()),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn gatehouse_cli(&self, args: &[&str]) -> Result<(), BenchError> {
        let out = Command::new(&self.gatehouse)
            .args(args)
            .env_remove("GATEHOUSE_PASSWORD")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| BenchError::Usage(format!("cannot run {}: {e}", self.gatehouse.display())))?;
        if !out.status.success() {
            return Err(BenchError::Usage(format!(
                "gatehouse {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }
}

/// A `gatehouse run` child process (broker, gateway, ...); killed and reaped on drop.
pub struct NodeProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl NodeProcess {
    /// Its node name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its pid (for CPU and memory samples).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines of its log (warnings and errors only when it runs at `warn`).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The broker child process; killed and reaped on drop.
pub struct BrokerProcess {
    node: NodeProcess,
    /// Where gateways connect.
    pub gateway_addr: SocketAddr,
    /// Where host agents connect.
    pub agent_addr: SocketAddr,
}

impl BrokerProcess {
    /// Its pid (for CPU and memory samples).
    pub fn pid(&self) -> u32 {
        self.node.pid()
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        self.node.alive()
    }

    /// The last lines of its log (warnings and errors only: it runs at `warn`).
    pub fn log_tail(&self) -> String {
        self.node.log_tail()
    }
}

fn write(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|e| BenchError::Usage(format!("{}: {e}", path.display())))
}

/// A loopback port that was free a moment ago.
pub fn free_loopback_addr() -> Result<SocketAddr, BenchError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| BenchError::Usage(format!("no free loopback port: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn farm_text_parses_and_splits_sites_and_pools() {
        let layout = Layout {
            hosts: 100,
            sites: 2,
            users: 10,
        };
        let farm = gatehouse_control::broker::Farm::parse(&layout.farm_text()).unwrap();
        assert_eq!(farm.hosts().len(), 100);
        assert_eq!(farm.sites().len(), 2);
        assert_eq!(farm.pools().len(), 4);
        assert_eq!(farm.resources().len(), 4);
        let per_site = |s: &str| farm.hosts().iter().filter(|h| h.site == s).count();
        assert_eq!((per_site("site-1"), per_site("site-2")), (50, 50));
        assert!(farm.gateway("gw-2").is_some_and(|g| g.site == "site-2"));
        // The smallest farm: one desktop host and one application host.
        let tiny = Layout {
            hosts: 2,
            sites: 1,
            users: 1,
        };
        let farm = gatehouse_control::broker::Farm::parse(&tiny.farm_text()).unwrap();
        assert_eq!(farm.pools().len(), 2);
        assert!(Layout {
            hosts: 3,
            sites: 2,
            users: 1
        }
        .check()
        .is_err());
    }

    #[test]
    fn users_text_parses_and_shares_or_spreads_hashes() {
        let (hashes, h) = make_hashes(5, 2, 2).unwrap();
        assert_eq!((hashes.len(), h.distinct), (2, 2));
        assert_ne!(hashes[0], hashes[1], "fresh salts");
        let db = UserDb::parse(&users_text(5, &hashes)).unwrap();
        assert_eq!(db.len(), 5);
        // User u has the password of user u % distinct: user00003 (u = 2) that of user 0.
        assert!(matches!(
            db.verify("user00003", &password(0)),
            gatehouse_control::broker::AuthOutcome::Accepted { .. }
        ));
        // User 3 shares user 1's hash (3 % 2), so user 1's password opens it.
        assert!(matches!(
            db.verify("user00004", &password(1)),
            gatehouse_control::broker::AuthOutcome::Accepted { .. }
        ));
        assert!(!matches!(
            db.verify("user00004", &password(3)),
            gatehouse_control::broker::AuthOutcome::Accepted { .. }
        ));
    }

    #[test]
    fn host_loads_are_seeded_and_bounded() {
        let layout = Layout {
            hosts: 50,
            sites: 1,
            users: 1,
        };
        let a = layout.host_loads(7);
        assert_eq!(a, layout.host_loads(7));
        assert_ne!(a, layout.host_loads(8));
        assert!(a
            .iter()
            .all(|l| (5..=90).contains(&l.cpu_percent) && (20..=85).contains(&l.mem_percent)));
        assert_eq!(
            a[24].sessions.len(),
            SESSION_LIMIT as usize,
            "every 25th host is full"
        );
    }
}
