//! The admin commands of the control plane: `gatehouse farm init|issue`, `gatehouse user
//! add|del|passwd|list -c BROKER_CONFIG`, and `gatehouse host-agent --broker ...`.
//!
//! Passwords come from the `GATEHOUSE_PASSWORD` environment variable or a prompt without
//! echo, never from the command line (where `ps` and shell history would show them).

use std::io::{BufRead, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use gatehouse_control::broker::UserDb;

use super::farm_pki::{self, MemberRole};
use super::{HostAgent, HostAgentSection};
use crate::config::HumanDuration;

/// The environment variable a password may come from.
pub const PASSWORD_ENV: &str = "GATEHOUSE_PASSWORD";

/// `gatehouse farm ...`
#[derive(Args, Debug)]
pub struct FarmArgs {
    #[command(subcommand)]
    command: FarmCmd,
}

#[derive(Subcommand, Debug)]
enum FarmCmd {
    /// Make a farm CA and the farm ticket key (key id 1) in a directory.
    Init {
        /// The farm directory.
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Issue a member certificate and key signed by the farm CA.
    Issue {
        /// The member's node name (its hello name and certificate CN).
        name: String,
        /// The farm directory (from `farm init`).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// The member's role: broker, gateway, host-agent or halb.
        #[arg(long)]
        role: MemberRole,
    },
}

/// `gatehouse user ...`
#[derive(Args, Debug)]
pub struct UserArgs {
    #[command(subcommand)]
    command: UserCmd,
}

#[derive(Subcommand, Debug)]
enum UserCmd {
    /// Add a user (password from GATEHOUSE_PASSWORD or a prompt).
    Add {
        /// The user name.
        name: String,
        /// Groups, comma-separated.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// The broker config naming the users file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Remove a user.
    Del {
        /// The user name.
        name: String,
        /// The broker config naming the users file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Set a user's password (from GATEHOUSE_PASSWORD or a prompt).
    Passwd {
        /// The user name.
        name: String,
        /// The broker config naming the users file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// List users, their groups and flags (never hashes).
    List {
        /// The broker config naming the users file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// `gatehouse host-agent --broker ADDR ...`: a one-role node.
#[derive(Args, Debug)]
pub struct HostAgentArgs {
    /// A broker's host-agent address (repeat for several brokers).
    #[arg(long = "broker", required = true, value_name = "ADDR")]
    brokers: Vec<SocketAddr>,
    /// This host's node name (as in the farm file and its certificate).
    #[arg(long)]
    name: String,
    /// The agent's farm certificate.
    #[arg(long, value_name = "FILE")]
    cert: PathBuf,
    /// Its key.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The farm CA certificate.
    #[arg(long, value_name = "FILE")]
    ca: PathBuf,
    /// The host's RDP port to probe.
    #[arg(long, default_value = "127.0.0.1:3389")]
    rdp: SocketAddr,
    /// Time between reports (`2s`, `500ms`).
    #[arg(long, default_value = "2s", value_parser = positive_duration)]
    interval: HumanDuration,
    /// A user with a session (stand-in hosts; repeat).
    #[arg(long = "session")]
    sessions: Vec<String>,
    /// A file with one user per line, re-read before each report.
    #[arg(long)]
    sessions_file: Option<PathBuf>,
    /// Report this CPU percentage instead of the load average.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    cpu: Option<u8>,
    /// Report this memory percentage instead of /proc/meminfo.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    mem: Option<u8>,
}

/// A duration longer than zero (the config key `report_interval` refuses zero too).
fn positive_duration(text: &str) -> Result<HumanDuration, String> {
    let d = text.parse::<HumanDuration>().map_err(|e| e.to_string())?;
    if d.get().is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// Runs `gatehouse farm ...`.
pub fn run_farm(args: FarmArgs) -> ExitCode {
    let result = match args.command {
        FarmCmd::Init { dir } => farm_pki::farm_init(&dir).map(|init| {
            println!("farm CA: {}", init.ca_cert.display());
            println!(
                "farm CA key: {} (mode 0600; keep it offline)",
                init.ca_key.display()
            );
            println!(
                "farm ticket keys: {} (key id {}; copy to every broker and gateway)",
                init.keys.display(),
                init.key_id
            );
        }),
        FarmCmd::Issue { name, dir, role } => {
            let existed = dir.join(format!("{name}.pem")).exists();
            farm_pki::farm_issue(&dir, &name, role).map(|files| {
                if existed {
                    eprintln!(
                        "note: replaced the previous certificate and key of {name}; a node running with them keeps them until it restarts"
                    );
                }
                println!("certificate: {}", files.cert.display());
                println!("key: {} (mode 0600)", files.key.display());
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Runs `gatehouse user ...`.
pub fn run_user(args: UserArgs) -> ExitCode {
    match user_command(args.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn users_file(config: &Path) -> Result<PathBuf, String> {
    let cfg = crate::config::load_file(config).map_err(|e| e.to_string())?;
    cfg.broker
        .map(|b| b.users_file)
        .ok_or_else(|| format!("{}: no [broker] section", config.display()))
}

fn user_command(cmd: UserCmd) -> Result<(), String> {
    let mut rng = rand::rngs::OsRng;
    match cmd {
        UserCmd::Add { name, groups, config } => {
            let path = users_file(&config)?;
            let mut db = UserDb::load_or_new(&path).map_err(|e| e.to_string())?;
            if db.user(&name).is_some() {
                return Err(format!("user {name:?} already exists"));
            }
            let password = read_password(&format!("password for {name}: "))?;
            db.add(&name, &password, groups, &mut rng)
                .map_err(|e| e.to_string())?;
            db.save(&path).map_err(|e| e.to_string())?;
            println!("added {name}");
        }
        UserCmd::Del { name, config } => {
            let path = users_file(&config)?;
            let mut db = UserDb::load(&path).map_err(|e| e.to_string())?;
            db.remove(&name).map_err(|e| e.to_string())?;
            db.save(&path).map_err(|e| e.to_string())?;
            println!("removed {name}");
        }
        UserCmd::Passwd { name, config } => {
            let path = users_file(&config)?;
            let mut db = UserDb::load(&path).map_err(|e| e.to_string())?;
            if db.user(&name).is_none() {
                return Err(format!("no user {name:?}"));
            }
            let password = read_password(&format!("new password for {name}: "))?;
            db.set_password(&name, &password, &mut rng)
                .map_err(|e| e.to_string())?;
            db.save(&path).map_err(|e| e.to_string())?;
            println!("password of {name} changed");
        }
        UserCmd::List { config } => {
            let path = users_file(&config)?;
            let db = UserDb::load_or_new(&path).map_err(|e| e.to_string())?;
            for u in db.users() {
                let mut flags = Vec::new();
                if u.disabled {
                    flags.push("disabled");
                }
                if u.locked {
                    flags.push("locked");
                }
                println!("{}\tgroups={}\t{}", u.name, u.groups.join(","), flags.join(","));
            }
        }
    }
    Ok(())
}

/// The password from `GATEHOUSE_PASSWORD`, else a prompt on the terminal without echo (or a
/// line of a piped stdin).
fn read_password(prompt: &str) -> Result<String, String> {
    if let Ok(p) = std::env::var(PASSWORD_ENV) {
        return Ok(p);
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password: {e}"))?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let echo_off = EchoOff::new();
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    drop(echo_off);
    eprintln!();
    read.map_err(|e| format!("cannot read the password: {e}"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Runs `gatehouse host-agent ...` until SIGTERM or SIGINT.
pub fn run_host_agent(args: HostAgentArgs) -> ExitCode {
    let section = HostAgentSection {
        brokers: args.brokers,
        report_interval: args.interval,
        rdp_address: args.rdp,
        sessions: args.sessions,
        sessions_file: args.sessions_file,
        cpu_percent: args.cpu,
        mem_percent: args.mem,
        cert_file: args.cert,
        key_file: args.key,
        ca_file: args.ca,
    };
    let agent = match HostAgent::start(&section, &args.name) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let signals =
        signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT]);
    match signals {
        Ok(mut s) => {
            let _ = s.forever().next();
        }
        Err(e) => {
            eprintln!("error: signals: {e}");
            return ExitCode::from(1);
        }
    }
    agent.stop();
    ExitCode::SUCCESS
}

/// Turns terminal echo off on stdin until dropped.
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> Self {
        // SAFETY: termios is plain data; tcgetattr fills it and we only use it on success.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return Self(None);
        }
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: a valid termios from tcgetattr with one flag cleared.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &quiet) };
        Self(Some(saved))
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: restores the settings read in `new`.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved) };
        }
    }
}
