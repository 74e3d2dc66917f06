//! `gatehouse connect`: the client side of the gateway's native protocol
//! (`src/gateway/CLIENT-API.md`).
//!
//! It logs in through a gateway (the primary, else the secondary), picks a resource, and
//! exposes the session on a local port so that any RDP client (xfreerdp, mstsc) can use it:
//! - Gateway and Gateway SSL modes: every local connection gets a fresh launch (tickets are
//!   single use) and its own tunnel through a gateway (`GET /api/v1/tunnel`, `101`, raw bytes).
//! - Direct and Direct SSL modes: one launch names the session host; every local connection
//!   is carried to that host and port by `gatehouse connect` itself.
//!
//! The SSL modes speak TLS to the gateway and check its certificate like a browser
//! (`trust`). Owns the client only: it shares no code with the gateway's server side, and
//! keeps its own copies of the API's JSON structs (`api`).
//!
//! Layout: `api` (wire format, sans I/O), `trust` (certificate rules), `transport` (one
//! connection with deadlines), `gateways` (primary/secondary and the requests), `relay`
//! (moving bytes), `cli` (flags, password, exit codes).

pub mod api;
pub mod cli;
pub mod gateways;
pub mod relay;
pub mod transport;
pub mod trust;

use std::fmt;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use api::{LaunchAnswer, Resource};
use gateways::GatewaySet;
use relay::RelayTotals;
use transport::Dialer;
pub use trust::Trust;

/// The guide's four connection modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Plain HTTP to the gateway, session through a tunnel.
    Gateway,
    /// TLS to the gateway, session through a tunnel inside it.
    GatewaySsl,
    /// Plain HTTP to the gateway, session straight to the host.
    Direct,
    /// TLS to the gateway, session straight to the host.
    DirectSsl,
}

impl Mode {
    /// The API talk is inside TLS.
    pub fn tls(self) -> bool {
        matches!(self, Mode::GatewaySsl | Mode::DirectSsl)
    }

    /// The session goes through a gateway tunnel.
    pub fn tunnels(self) -> bool {
        matches!(self, Mode::Gateway | Mode::GatewaySsl)
    }

    /// The `mode` field of a launch request.
    pub fn launch_mode(self) -> &'static str {
        if self.tunnels() {
            "gateway"
        } else {
            "direct"
        }
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "gateway" => Ok(Mode::Gateway),
            "gateway-ssl" => Ok(Mode::GatewaySsl),
            "direct" => Ok(Mode::Direct),
            "direct-ssl" => Ok(Mode::DirectSsl),
            _ => Err(format!(
                "unknown mode {s:?} (gateway, gateway-ssl, direct, direct-ssl)"
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Gateway => "gateway",
            Mode::GatewaySsl => "gateway-ssl",
            Mode::Direct => "direct",
            Mode::DirectSsl => "direct-ssl",
        })
    }
}

/// A password that does not show in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a password.
    pub fn new(password: impl Into<String>) -> Password {
        Password(password.into())
    }

    /// The password itself, for the login request only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// Everything `gatehouse connect` needs, resolved from its flags.
#[derive(Clone, Debug)]
pub struct Options {
    /// Gateways as `HOST:PORT`, primary first, then the secondary.
    pub gateways: Vec<String>,
    /// The user name.
    pub user: String,
    /// The user's password.
    pub password: Password,
    /// The resource to launch (id, or a unique name); `None`: the only one there is.
    pub resource: Option<String>,
    /// The connection mode.
    pub mode: Mode,
    /// Local address for RDP clients (port 0: the kernel picks).
    pub listen: SocketAddr,
    /// Certificate rule in the SSL modes.
    pub trust: Trust,
    /// Name checked in the gateway's certificate instead of the host of `--gateway`.
    pub server_name: Option<String>,
    /// Limit for connecting to a gateway, for its TLS handshake and for each of its answers.
    pub connect_timeout: Duration,
    /// Serve one local connection, then stop.
    pub once: bool,
}

impl Options {
    /// Options with the defaults of the command line: Gateway SSL mode, listening on
    /// `127.0.0.1:0`, the system CA bundle, a 5 s timeout.
    pub fn new(gateway: impl Into<String>, user: impl Into<String>, password: Password) -> Options {
        Options {
            gateways: vec![gateway.into()],
            user: user.into(),
            password,
            resource: None,
            mode: Mode::GatewaySsl,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            trust: Trust::system(),
            server_name: None,
            connect_timeout: Duration::from_secs(5),
            once: false,
        }
    }

    fn gateway_set(&self) -> Result<GatewaySet, ConnectError> {
        if self.gateways.is_empty() {
            return Err(ConnectError::Usage("no gateway given".to_string()));
        }
        let trust = self.mode.tls().then_some(&self.trust);
        let dialer = Dialer::new(trust, self.server_name.clone(), self.connect_timeout)?;
        Ok(GatewaySet::new(self.gateways.clone(), dialer))
    }
}

/// Why `gatehouse connect` stopped. Each kind has its own exit code ([`ConnectError::exit_code`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// Bad flags or values (exit 2).
    Usage(String),
    /// A local problem: a file, the listener, the terminal, a local socket (exit 1).
    Local(String),
    /// No gateway (or, in the direct modes, no session host) could be reached: each
    /// attempt and why it failed (exit 3).
    Unreachable(Vec<String>),
    /// A gateway answered something that is not the protocol (exit 3).
    Protocol(String),
    /// A gateway refused with `{"error","message"}` (exit 4).
    Refused {
        /// HTTP status.
        status: u16,
        /// The stable error code, e.g. `wrong_password`.
        code: String,
        /// Text for humans.
        message: String,
    },
    /// The gateway's certificate failed the trust rule (exit 5).
    Untrusted {
        /// The gateway (`HOST:PORT`).
        gateway: String,
        /// What failed, and against what it was checked.
        reason: String,
        /// SHA-256 of the certificate it presented, when it could be fetched.
        fingerprint: Option<String>,
    },
    /// The resource asked for is not offered, or none was asked for and there are
    /// several (exit 6).
    Resource(String),
}

impl ConnectError {
    /// The process exit code for this error (listed in `gatehouse connect --help`).
    pub fn exit_code(&self) -> u8 {
        match self {
            ConnectError::Local(_) => 1,
            ConnectError::Usage(_) => 2,
            ConnectError::Unreachable(_) | ConnectError::Protocol(_) => 3,
            ConnectError::Refused { .. } => 4,
            ConnectError::Untrusted { .. } => 5,
            ConnectError::Resource(_) => 6,
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Usage(m) | ConnectError::Local(m) | ConnectError::Resource(m) => f.write_str(m),
            ConnectError::Unreachable(attempts) => {
                write!(f, "no gateway could be reached: {}", attempts.join("; "))
            }
            ConnectError::Protocol(m) => write!(f, "gateway protocol error: {m}"),
            ConnectError::Refused { code, message, .. } => write!(f, "gateway refused: {code}: {message}"),
            ConnectError::Untrusted {
                gateway,
                reason,
                fingerprint,
            } => {
                write!(f, "the certificate of gateway {gateway} is not trusted: {reason}")?;
                match fingerprint {
                    Some(fp) => write!(
                        f,
                        "\nits SHA-256 fingerprint is {fp}\nif you know this is your gateway's certificate, \
                         run again with --pin-sha256 {fp} (or give the CA that issued it with --ca-file)"
                    ),
                    None => Ok(()),
                }
            }
        }
    }
}

impl std::error::Error for ConnectError {}

/// Where the local port leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Each local connection: a launch and a tunnel through a gateway.
    Tunnel,
    /// Each local connection: straight to this session host.
    Direct {
        /// Host name or address, as the gateway named it.
        host: String,
        /// Its port.
        port: u16,
    },
}

/// Logs in and returns the resources the user may launch (`--list`).
pub fn list(options: &Options) -> Result<Vec<Resource>, ConnectError> {
    let gateways = options.gateway_set()?;
    let login = gateways.login(&options.user, options.password.expose())?;
    Ok(login.resources)
}

/// Logs in, picks the resource, launches it in the direct modes, binds the local listener,
/// and serves local connections on a thread of its own. Returns once the listener is bound.
pub fn start(options: Options) -> Result<Running, ConnectError> {
    let gateways = options.gateway_set()?;
    let login = gateways.login(&options.user, options.password.expose())?;
    let (gateway, role) = gateways.current();
    let (gateway, role) = (gateway.to_string(), role);
    tracing::info!(user = %options.user, gateway = %gateway, "logged in through the {role} gateway");
    let resource = choose_resource(&login.resources, options.resource.as_deref())?;
    let target = if options.mode.tunnels() {
        Target::Tunnel
    } else {
        match gateways.launch(&login.session_token, &resource.id, "direct")? {
            LaunchAnswer::Direct { host, port } => Target::Direct { host, port },
            LaunchAnswer::Gateway { .. } => {
                return Err(ConnectError::Protocol(
                    "a direct-mode launch was answered with a gateway ticket".to_string(),
                ))
            }
        }
    };
    let listener = TcpListener::bind(options.listen)
        .map_err(|e| ConnectError::Local(format!("cannot listen on {}: {e}", options.listen)))?;
    let local_addr = listener
        .local_addr()
        .map_err(|e| ConnectError::Local(format!("listener address: {e}")))?;
    let stop = Arc::new(AtomicBool::new(false));
    let service = Arc::new(Service {
        gateways,
        user: options.user.clone(),
        password: options.password.clone(),
        token: parking_lot::Mutex::new(login.session_token),
        resource: resource.id.clone(),
        target: target.clone(),
        timeout: options.connect_timeout,
    });
    let thread = {
        let stop = stop.clone();
        let once = options.once;
        thread::Builder::new()
            .name("connect-accept".to_string())
            .spawn(move || accept_loop(listener, service, stop, once))
            .map_err(|e| ConnectError::Local(format!("cannot start a thread: {e}")))?
    };
    Ok(Running {
        local_addr,
        gateway,
        role,
        mode: options.mode,
        resource,
        target,
        stop,
        thread: Some(thread),
    })
}

/// `start`, print where to connect on stdout, then serve until the end (`--once`) or an error.
pub fn run(options: Options) -> Result<(), ConnectError> {
    let running = start(options)?;
    println!("{}", running.describe());
    running.wait()
}

/// A running client: the local listener and the thread that serves it.
pub struct Running {
    local_addr: SocketAddr,
    gateway: String,
    role: &'static str,
    mode: Mode,
    resource: Resource,
    target: Target,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), ConnectError>>>,
}

impl Running {
    /// The bound local address RDP clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The gateway that took the login (`HOST:PORT`) and its role (`primary`, `secondary`).
    pub fn login_gateway(&self) -> (&str, &'static str) {
        (&self.gateway, self.role)
    }

    /// The resource being served.
    pub fn resource(&self) -> &Resource {
        &self.resource
    }

    /// Where local connections go.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// What the user needs to know, as printed by the command (stable first words:
    /// `listening on ADDR`).
    pub fn describe(&self) -> String {
        let mut out = format!(
            "logged in through the {} gateway {}\nresource {} ({}, {}) in {} mode\n",
            self.role, self.gateway, self.resource.id, self.resource.kind, self.resource.name, self.mode
        );
        if let Target::Direct { host, port } = &self.target {
            out.push_str(&format!(
                "session host {}: gatehouse connect carries the session there itself\n",
                host_port(host, *port)
            ));
        }
        out.push_str(&format!(
            "listening on {addr}\nconnect your RDP client to it, e.g.: xfreerdp /v:{addr}",
            addr = self.local_addr
        ));
        out
    }

    /// Waits until the service ends: after the one connection with `--once`, or on a
    /// listener error.
    pub fn wait(mut self) -> Result<(), ConnectError> {
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(ConnectError::Local("the accept thread panicked".to_string())),
            None => Ok(()),
        }
    }

    /// Stops accepting local connections (sessions already open go on) and waits for the
    /// accept thread.
    pub fn stop(mut self) {
        self.signal_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn signal_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.local_addr, Duration::from_secs(1));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.signal_stop();
        }
    }
}

/// What each local connection needs, shared by the session threads.
struct Service {
    gateways: GatewaySet,
    user: String,
    /// Kept to log in again when the session token stops being valid (it expires on the
    /// broker, or a broker restart forgets it), so a long-running `connect` keeps working.
    password: Password,
    token: parking_lot::Mutex<String>,
    resource: String,
    target: Target,
    timeout: Duration,
}

impl Service {
    /// Runs `call` with the session token; when the gateway answers `session_invalid`,
    /// logs in again (once for all the threads that met the same stale token) and runs it
    /// once more. Returns what `call` returned and the token it used.
    fn with_session<T>(
        &self,
        call: impl Fn(&str) -> Result<T, ConnectError>,
    ) -> Result<(T, String), ConnectError> {
        let token = self.token.lock().clone();
        match call(&token) {
            Err(ConnectError::Refused {
                status: 401, code, ..
            }) if code == "session_invalid" => {
                let fresh = self.log_in_again(&token)?;
                Ok((call(&fresh)?, fresh))
            }
            other => other.map(|answer| (answer, token)),
        }
    }

    /// A valid token in place of `stale`: a new login, unless another thread has made one.
    fn log_in_again(&self, stale: &str) -> Result<String, ConnectError> {
        // Held across the login so that the threads behind it reuse its token.
        let mut token = self.token.lock();
        if *token != stale {
            return Ok(token.clone());
        }
        let login = self.gateways.login(&self.user, self.password.expose())?;
        let (gateway, role) = self.gateways.current();
        tracing::info!(
            user = %self.user,
            gateway = %gateway,
            "the session token is no longer valid (expired, or the broker forgot it): logged in again through the {role} gateway"
        );
        *token = login.session_token;
        Ok(token.clone())
    }

    /// Carries one local connection to its end.
    fn serve(&self, local: TcpStream) -> Result<RelayTotals, ConnectError> {
        let peer = local
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        let (remote, tls, early, via) = match &self.target {
            Target::Tunnel => {
                let (ticket, token) = self.with_session(|token| {
                    match self.gateways.launch(token, &self.resource, "gateway")? {
                        LaunchAnswer::Gateway { ticket } => Ok(ticket),
                        LaunchAnswer::Direct { .. } => Err(ConnectError::Protocol(
                            "a gateway-mode launch was answered with a direct host".to_string(),
                        )),
                    }
                })?;
                // The tunnel request carries the token the ticket was launched with.
                let tunnel = self.gateways.open_tunnel(&token, &ticket)?;
                let via = format!("tunnel through gateway {}", tunnel.gateway);
                (tunnel.socket, tunnel.tls, tunnel.early, via)
            }
            Target::Direct { host, port } => {
                let target = host_port(host, *port);
                let remote = transport::connect_tcp(&target, self.timeout).map_err(|why| {
                    ConnectError::Unreachable(vec![format!("session host {target}: {why}")])
                })?;
                (remote, None, Vec::new(), format!("direct to {target}"))
            }
        };
        tracing::info!(local = %peer, "session open: {via}");
        let totals = relay::relay(local, remote, tls, early)
            .map_err(|e| ConnectError::Local(format!("session from {peer} ({via}) ended: {e}")))?;
        tracing::info!(
            local = %peer,
            to_host = totals.to_remote,
            to_client = totals.to_local,
            "session closed: {via}"
        );
        Ok(totals)
    }
}

fn accept_loop(
    listener: TcpListener,
    service: Arc<Service>,
    stop: Arc<AtomicBool>,
    once: bool,
) -> Result<(), ConnectError> {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let local = match accepted {
            Ok((s, _)) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                continue
            }
            // Out of descriptors or memory for a moment: the sessions open keep going.
            Err(e) => {
                tracing::error!("accept on the local listener: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let _ = local.set_nodelay(true);
        if once {
            return service.serve(local).map(|_| ());
        }
        let service = service.clone();
        let spawned = thread::Builder::new()
            .name("connect-session".to_string())
            .spawn(move || {
                if let Err(e) = service.serve(local) {
                    tracing::error!("{e}");
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start a session thread: {e}");
        }
    }
}

/// Picks the resource: the one named (by id, else by a unique name), or the only one.
pub fn choose_resource(resources: &[Resource], wanted: Option<&str>) -> Result<Resource, ConnectError> {
    let offered = || {
        if resources.is_empty() {
            "the gateway offers no resource to this user".to_string()
        } else {
            let ids: Vec<String> = resources
                .iter()
                .map(|r| format!("{} ({}, {})", r.id, r.kind, r.name))
                .collect();
            format!("the gateway offers: {}", ids.join(", "))
        }
    };
    match wanted {
        Some(w) => {
            if let Some(r) = resources.iter().find(|r| r.id == w) {
                return Ok(r.clone());
            }
            let by_name: Vec<&Resource> = resources.iter().filter(|r| r.name == w).collect();
            match by_name.as_slice() {
                [one] => Ok((*one).clone()),
                _ => Err(ConnectError::Resource(format!(
                    "no resource {w:?}; {}",
                    offered()
                ))),
            }
        }
        None => match resources {
            [one] => Ok(one.clone()),
            _ => Err(ConnectError::Resource(format!(
                "choose one with --resource; {}",
                offered()
            ))),
        },
    }
}

/// `HOST:PORT`, with brackets around an IPv6 address.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests;
