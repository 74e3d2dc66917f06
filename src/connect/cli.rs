//! The `gatehouse connect` flags, the password (environment, stdin or a prompt without echo,
//! never a flag), and exit codes.
//!
//! Owns only the translation from the command line to [`super::Options`] and from
//! [`super::ConnectError`] to an exit code; the work is in [`super::run`] and [`super::list`].

use std::fs::OpenOptions;
use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::trust::{self, Trust};
use super::{ConnectError, Mode, Options, Password};

/// The environment variable read for the password.
pub const PASSWORD_ENV: &str = "GATEHOUSE_PASSWORD";

const AFTER_HELP: &str = "\
Password: from --password-stdin (first line of stdin), else the environment variable
GATEHOUSE_PASSWORD, else asked on the terminal without echo. Never a flag.

Modes: gateway-ssl (the default) and direct-ssl log in over TLS. gateway and direct talk
plain HTTP to the gateway: the password crosses the network unencrypted, so use them only
on a network you trust.

Certificates (gateway-ssl, direct-ssl): checked against --ca-file (default: the system
bundle /etc/ssl/certs/ca-certificates.crt), or the leaf's --pin-sha256; an untrusted
certificate stops the client and prints its fingerprint, unless --insecure.

Exit codes:
  0  done (--list printed, or the --once session ended)
  1  local problem (listener, files, terminal, a session's socket)
  2  bad flags or values
  3  no gateway reachable (refused, timed out, broken answers), or session host unreachable
  4  the gateway refused (prints `gateway refused: CODE: MESSAGE`)
  5  the gateway's certificate is not trusted
  6  resource unknown, or several offered and none chosen with --resource";

/// `gatehouse connect`: log in through a gateway and expose a session on a local port.
#[derive(clap::Args, Debug)]
#[command(after_help = AFTER_HELP)]
pub struct ConnectArgs {
    /// The primary gateway.
    #[arg(long, value_name = "HOST:PORT")]
    gateway: String,
    /// The secondary gateway, tried when the primary fails or does not answer in time.
    #[arg(long, value_name = "HOST:PORT")]
    secondary: Option<String>,
    /// The user name.
    #[arg(short, long)]
    user: String,
    /// The resource to launch (its id, or a unique name); default: the only one offered.
    #[arg(short, long, value_name = "ID")]
    resource: Option<String>,
    /// Connection mode: gateway-ssl, direct-ssl, or (password unencrypted) gateway, direct.
    #[arg(short, long, default_value = "gateway-ssl", value_parser = parse_mode)]
    mode: Mode,
    /// Local address for RDP clients (port 0: any free port, printed).
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    listen: SocketAddr,
    /// Print the resources the user may launch (id, kind, name; tab-separated) and exit.
    #[arg(long)]
    list: bool,
    /// PEM file of the CA certificates that may issue the gateway's certificate.
    #[arg(long, value_name = "FILE", group = "trust")]
    ca_file: Option<PathBuf>,
    /// Trust exactly the gateway certificate with this SHA-256 (hex, colons allowed).
    #[arg(long, value_name = "HEX", group = "trust")]
    pin_sha256: Option<String>,
    /// Accept any gateway certificate (anyone in the path can read the session).
    #[arg(long, group = "trust")]
    insecure: bool,
    /// Name to check in the gateway's certificate (default: the host of --gateway).
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// Limit for connecting to a gateway, its TLS handshake, and each of its answers.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = gatehouse_bench::net::parse_duration)]
    connect_timeout: Duration,
    /// Serve one local connection, then exit.
    #[arg(long)]
    once: bool,
    /// Read the password from the first line of stdin.
    #[arg(long)]
    password_stdin: bool,
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
}

/// Runs `gatehouse connect` and maps the outcome to an exit code.
pub fn run(args: ConnectArgs) -> ExitCode {
    match run_inner(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn run_inner(args: ConnectArgs) -> Result<(), ConnectError> {
    let list = args.list;
    let options = options(args)?;
    if list {
        for r in super::list(&options)? {
            println!("{}\t{}\t{}", r.id, r.kind, r.name);
        }
        return Ok(());
    }
    super::run(options)
}

/// Turns the flags into options, asking for the password as the flags say.
fn options(args: ConnectArgs) -> Result<Options, ConnectError> {
    let trust = if let Some(hex) = &args.pin_sha256 {
        Trust::Pinned(trust::parse_pin(hex).map_err(ConnectError::Usage)?)
    } else if args.insecure {
        Trust::Insecure
    } else if let Some(path) = &args.ca_file {
        Trust::CaFile(path.clone())
    } else {
        Trust::system()
    };
    if !args.mode.tls() {
        tracing::warn!(
            "mode {} logs in without TLS: the password crosses the network unencrypted (use {}-ssl outside a trusted network)",
            args.mode,
            args.mode
        );
        if args.pin_sha256.is_some() || args.insecure || args.ca_file.is_some() {
            tracing::warn!("mode {} does not use TLS: certificate flags ignored", args.mode);
        }
    }
    let password = password(&args.user, &args.gateway, args.password_stdin)?;
    let mut gateways = vec![args.gateway];
    gateways.extend(args.secondary);
    Ok(Options {
        gateways,
        user: args.user,
        password,
        resource: args.resource,
        mode: args.mode,
        listen: args.listen,
        trust,
        server_name: args.server_name,
        connect_timeout: args.connect_timeout,
        once: args.once,
    })
}

fn password(user: &str, gateway: &str, from_stdin: bool) -> Result<Password, ConnectError> {
    if from_stdin {
        let mut line = String::new();
        io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| ConnectError::Local(format!("reading the password from stdin: {e}")))?;
        return Ok(Password::new(line.trim_end_matches(['\r', '\n'])));
    }
    if let Ok(p) = std::env::var(PASSWORD_ENV) {
        return Ok(Password::new(p));
    }
    prompt(&format!("password for {user} at {gateway}: ")).map_err(|e| {
        ConnectError::Local(format!(
            "cannot ask for the password ({e}): set {PASSWORD_ENV} or use --password-stdin"
        ))
    })
}

/// Asks on the controlling terminal with echo off.
fn prompt(question: &str) -> io::Result<Password> {
    let tty = OpenOptions::new().read(true).write(true).open("/dev/tty")?;
    let _quiet = EchoOff::new(&tty)?;
    (&tty).write_all(question.as_bytes())?;
    (&tty).flush()?;
    let mut line = String::new();
    io::BufReader::new(&tty).read_line(&mut line)?;
    (&tty).write_all(b"\n")?;
    Ok(Password::new(line.trim_end_matches(['\r', '\n'])))
}

/// Terminal echo off on one terminal until dropped.
struct EchoOff {
    fd: i32,
    saved: libc::termios,
}

impl EchoOff {
    fn new(tty: &std::fs::File) -> io::Result<EchoOff> {
        let fd = tty.as_raw_fd();
        // SAFETY: termios is plain data; tcgetattr fills it and it is used only on success.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: a valid termios from tcgetattr with one flag cleared, on an open fd.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(EchoOff { fd, saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `new` on the same fd, still open (the guard
        // lives shorter than the file it borrows from).
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}
