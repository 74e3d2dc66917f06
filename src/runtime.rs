//! A running node: binds, starts workers, health checks and the admin listener, then
//! follows signals (SIGHUP reload, SIGTERM/SIGINT drain) until it stops.
//!
//! Owns the control side of the process: the only place that replaces snapshots after a
//! reload, reacts to health verdicts and passive failures, and decides when workers stop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use serde::Serialize;

use crate::admin::AdminServer;
use crate::config::{self, Config, HealthConfig};
use crate::engine::listener::{bind_group, listener_key, BindSpec, Staged};
use crate::engine::tls_setup;
use crate::engine::worker::{self, WorkerHandle};
use crate::health::{
    CheckKind, CheckSpec, HealthChecker, HealthEvent, PassiveReporter, ProbeFailure, StatusMatch, Target,
    TlsVerify,
};
use crate::shared::{ControlEvent, Lifecycle, Shared, TlsState};

/// An address the node serves, for `--ready-file` and the start-up summary.
#[derive(Clone, Debug, Serialize)]
pub struct Endpoint {
    /// Role (`halb`, `admin`, `session-host`, ...).
    pub role: String,
    /// Name within the role.
    pub name: String,
    /// Bound address.
    pub address: SocketAddr,
}

/// A request to the control loop.
pub enum Command {
    /// Re-read the config file; the answer says whether the new one was taken.
    Reload(Option<Sender<Result<String, String>>>),
    /// Drain and stop.
    Shutdown,
}

/// How the node was started.
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// The file a reload re-reads (none: reload keeps the config).
    pub config_path: Option<PathBuf>,
    /// Validation relaxations used for reloads of the same kind of config.
    pub validate: config::ValidateOptions,
}

/// A started node.
pub struct Node {
    shared: Arc<Shared>,
    workers: Vec<WorkerHandle>,
    admin: Option<AdminServer>,
    health: Option<Checks>,
    /// The VRRP role (issue 6); stopped first on shutdown so the VIP moves before the drain.
    vrrp: Option<crate::halb_vrrp::VrrpRole>,
    // broker (issue 4): broker and host agent; stopped at the start of the drain.
    control_roles: Option<crate::broker_role::ControlRoles>,
    // ticket rotation (issue 3): re-reads and rotates the listeners' ticket key files.
    ticket_keys: Option<crate::tls::rotation::TicketRotation>,
    events: Receiver<ControlEvent>,
    commands: (Sender<Command>, Receiver<Command>),
    options: NodeOptions,
    /// Everything bound.
    pub endpoints: Vec<Endpoint>,
}

impl Node {
    /// Binds every listener, drops privileges if configured, and starts all threads.
    pub fn start(config: Config, options: NodeOptions) -> Result<Node, String> {
        let workers_n = config.worker_count();
        let mut config = config;
        // Bind everything first: errors surface here, and ports chosen by the kernel (port 0)
        // are written back so every worker and the endpoints list agree.
        let mut per_worker: Vec<Vec<(String, std::net::TcpListener)>> =
            (0..workers_n).map(|_| Vec::new()).collect();
        let mut endpoints = Vec::new();
        let halb = config
            .halb
            .iter_mut()
            .flat_map(|h| h.listener.iter_mut().map(|l| ("halb", l)));
        let gateway = config
            .gateway
            .iter_mut()
            .flat_map(|g| g.listener.iter_mut().map(|l| ("gateway", l)));
        for (role, l) in halb.chain(gateway) {
            let spec = BindSpec::of(l);
            let group = bind_group(&spec, workers_n).map_err(|e| format!("listener {:?}: {e}", l.name))?;
            l.bind = group[0].local_addr().map_err(|e| e.to_string())?;
            endpoints.push(Endpoint {
                role: role.into(),
                name: l.name.clone(),
                address: l.bind,
            });
            for (w, sock) in group.into_iter().enumerate() {
                per_worker[w].push((l.name.clone(), sock));
            }
        }
        let admin_listener = match &mut config.admin {
            Some(a) => {
                let l = std::net::TcpListener::bind(a.listen)
                    .map_err(|e| format!("admin listener {}: {e}", a.listen))?;
                a.listen = l.local_addr().map_err(|e| e.to_string())?;
                endpoints.push(Endpoint {
                    role: "admin".into(),
                    name: "admin".into(),
                    address: a.listen,
                });
                Some(l)
            }
            None => None,
        };
        // broker (issue 4): binds 20002/20003 and reads its keys before the privilege drop.
        let control_roles = Some(crate::broker_role::ControlRoles::start(
            &mut config,
            &mut endpoints,
        )?);
        // gateway (issue 5): the control client and the farm keys, read before the drop too.
        let gateway = crate::gateway_role::GatewayRuntime::start(&config)?;
        // Certificates are read before the privilege drop (key files are often root's only).
        let tls = build_listener_tls(&config)?;
        crate::privdrop::drop_privileges(config.node.user.as_deref(), config.node.group.as_deref())?;

        let (shared, events) = Shared::new(config);
        if let Some(g) = gateway {
            shared.set_gateway(g);
        }
        if let Some(c) = &control_roles {
            c.register_metrics(&shared);
        }
        if !tls.listeners.is_empty() || !tls.pools.is_empty() {
            shared.set_tls(tls);
        }
        let commands = crossbeam_channel::unbounded();
        // The workers accept once everything else holds its descriptors (a message on `go`):
        // clients queued in the backlogs meanwhile could otherwise take the last ones under a
        // low `ulimit -n`, and the node would fail to start the rest.
        let (go, go_rx) = crossbeam_channel::unbounded::<()>();
        let mut workers = Vec::new();
        let count = per_worker.len();
        for (id, listeners) in per_worker.into_iter().enumerate() {
            workers.push(
                worker::spawn(id, count, shared.clone(), listeners, go_rx.clone())
                    .map_err(|e| format!("worker {id}: {e}"))?,
            );
        }
        let health = start_health(&shared);
        // ticket rotation (issue 3): one timer for every listener's ticket key file.
        let ticket_keys = Some(crate::tls::rotation::TicketRotation::start(shared.clone())?);
        // VRRP last: the listeners (freebind on the VIP) serve as soon as it is ours.
        let vrrp = crate::halb_vrrp::VrrpRole::start(&shared)?;
        forward_signals(commands.0.clone())?;
        // The admin API answers once the node is whole: a script that waits for it and then
        // sends SIGHUP must not meet the default action of SIGHUP (the end of the process).
        let admin = match admin_listener {
            Some(l) => Some(
                AdminServer::spawn(l, shared.clone(), commands.0.clone())
                    .map_err(|e| format!("admin: {e}"))?,
            ),
            None => None,
        };
        for _ in &workers {
            let _ = go.send(());
        }
        tracing::info!(
            node = %shared.config().node_name(),
            workers = workers_n,
            version = env!("CARGO_PKG_VERSION"),
            "gatehouse started"
        );
        for e in &endpoints {
            tracing::info!(role = %e.role, name = %e.name, address = %e.address, "listening");
        }
        Ok(Node {
            shared,
            workers,
            admin,
            health,
            vrrp,
            control_roles,
            ticket_keys,
            events,
            commands,
            options,
            endpoints,
        })
    }

    /// A sender for commands (signals, the admin API and embedders use it).
    pub fn commands(&self) -> Sender<Command> {
        self.commands.0.clone()
    }

    /// The node's shared state (tests and the demo read metrics through it).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Runs the control loop until a shutdown command (or SIGTERM/SIGINT) has drained the
    /// node. SIGHUP reloads.
    pub fn run_until_stopped(mut self) -> Result<(), String> {
        crate::sd_notify::notify("READY=1");
        let cmd_rx = self.commands.1.clone();
        let events = self.events.clone();
        loop {
            select! {
                recv(cmd_rx) -> cmd => match cmd {
                    Ok(Command::Reload(reply)) => {
                        crate::sd_notify::notify("RELOADING=1");
                        let result = self.reload();
                        crate::sd_notify::notify("READY=1");
                        if let Some(reply) = reply {
                            let _ = reply.send(result);
                        }
                    }
                    Ok(Command::Shutdown) | Err(_) => break,
                },
                recv(events) -> ev => if let Ok(ev) = ev { self.on_event(ev) },
            }
        }
        self.drain();
        Ok(())
    }

    fn on_event(&mut self, event: ControlEvent) {
        match event {
            ControlEvent::PassiveDown {
                pool,
                backend,
                reason,
            } => {
                // The health checker owns the verdict: it marks the backend down (and logs it),
                // and `rise` good checks bring it back. Meanwhile the worker has taken the
                // backend out of rotation; if no verdict can follow (no checker for it any
                // more, a full queue), put it back rather than leave it out for good.
                let fall = self
                    .shared
                    .snapshot()
                    .pools
                    .iter()
                    .find(|p| p.name == pool)
                    .map_or(1, |p| p.passive_fall);
                tracing::warn!(pool = %pool, backend = %backend, "{fall} connects in a row failed: {reason}");
                let delivered = self.health.as_ref().is_some_and(|checks| {
                    checks
                        .ids
                        .get(&(pool.clone(), backend.clone()))
                        .is_some_and(|id| checks.reporter.passive_down(*id, fall, ProbeFailure::Io(reason)))
                });
                if !delivered {
                    self.shared.clear_passive_down(&pool, &backend);
                }
            }
        }
    }

    fn reload(&mut self) -> Result<String, String> {
        let Some(path) = self.options.config_path.clone() else {
            return Err("this node was started without a config file; nothing to reload".into());
        };
        let new = match config::load_file(&path) {
            Ok(c) => c,
            Err(errors) => {
                self.shared
                    .metrics
                    .reloads_failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                for e in &errors.0 {
                    tracing::error!("reload refused: {e}");
                }
                tracing::error!("reload refused: the previous configuration keeps serving");
                return Err(errors.to_string());
            }
        };
        let old = self.shared.config();
        let refuse = |e: String| {
            self.shared
                .metrics
                .reloads_failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!("reload refused: {e}; the previous configuration keeps serving");
            e
        };
        let staged = bind_new_listeners(&old, &new, self.workers.len()).map_err(refuse)?;
        let tls = build_listener_tls(&new).map_err(refuse)?;
        // broker (issue 4): SIGHUP reloads the farm file (and [ldap]) too; a farm that does
        // not load refuses the whole reload.
        let broker_note = match self.control_roles.as_ref().map(|c| c.reload(&new)) {
            Some(result) => result.map_err(refuse)?,
            None => None,
        };
        let mut notes = Vec::new();
        notes.extend(broker_note.as_deref());
        if old.worker_count() != new.worker_count() {
            notes.push("node.workers changes at the next restart");
        }
        if old.admin.as_ref().map(|a| a.listen) != new.admin.as_ref().map(|a| a.listen) {
            notes.push("admin.listen changes at the next restart");
        }
        if old.halb.as_ref().map(|h| &h.vrrp) != new.halb.as_ref().map(|h| &h.vrrp) {
            notes.push("halb.vrrp changes at the next restart (pool tracking follows the reload)");
        }
        if crate::gateway_role::control_settings(&old) != crate::gateway_role::control_settings(&new) {
            notes.push(
                "the gateway's id, site, brokers, member files and farm key change at the next restart",
            );
        }
        let mut new = new;
        // Keep the admin address actually bound (it may have been port 0).
        new.admin = old.admin.clone();
        if let Some(h) = self.health.take() {
            h.stop();
        }
        self.shared.stage_listeners(staged);
        self.shared.replace_config_and_tls(new, tls);
        // The new checkers judge afresh: reports the old ones took with them get no verdict.
        self.shared.clear_all_passive_down();
        self.health = start_health(&self.shared);
        self.shared
            .metrics
            .reloads_ok
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for n in &notes {
            tracing::warn!("reload: {n}");
        }
        tracing::info!(generation = self.shared.generation(), "configuration reloaded");
        Ok(if notes.is_empty() {
            "reloaded".into()
        } else {
            format!("reloaded; {}", notes.join("; "))
        })
    }

    fn drain(mut self) {
        // Hand the VIP over first (priority-0 advert), then drain (issue 6).
        if let Some(v) = self.vrrp.take() {
            v.shutdown();
        }
        // broker (issue 4): tell gateways to move on, stop the host agent.
        if let Some(c) = self.control_roles.take() {
            c.stop();
        }
        let deadline = self.shared.config().node.drain_timeout.get();
        crate::sd_notify::notify("STOPPING=1");
        tracing::info!(
            sessions = self.shared.connections.load(std::sync::atomic::Ordering::Relaxed),
            "draining: listeners closed, waiting up to {deadline:?} for sessions"
        );
        self.shared.set_lifecycle(Lifecycle::Draining);
        let start = Instant::now();
        let cmd_rx = self.commands.1.clone();
        while self.workers.iter().any(|w| !w.thread.is_finished()) {
            if start.elapsed() >= deadline {
                tracing::warn!("drain deadline passed: closing remaining sessions");
                break;
            }
            match cmd_rx.recv_timeout(Duration::from_millis(20)) {
                // A second SIGTERM/SIGINT stops at once.
                Ok(Command::Shutdown) => {
                    tracing::warn!("second stop request: closing remaining sessions now");
                    break;
                }
                Ok(Command::Reload(reply)) => match reply {
                    Some(reply) => {
                        let _ = reply.send(Err("the node is draining; reload refused".into()));
                    }
                    None => tracing::warn!("SIGHUP while draining: reload refused, the node is stopping"),
                },
                Err(_) => {}
            }
        }
        self.shared.set_lifecycle(Lifecycle::Stopping);
        for w in self.workers.drain(..) {
            let _ = w.thread.join();
        }
        if let Some(h) = self.health.take() {
            h.stop();
        }
        // ticket rotation (issue 3)
        if let Some(t) = self.ticket_keys.take() {
            t.stop();
        }
        if let Some(a) = self.admin.take() {
            a.stop();
        }
        tracing::info!(elapsed_ms = start.elapsed().as_millis() as u64, "stopped");
    }
}

/// The server configurations of the terminating listeners and the client configurations
/// of the re-encrypting pools of `config`.
fn build_listener_tls(config: &Config) -> Result<TlsState, String> {
    let mut out = TlsState::default();
    let node_name = config.node_name();
    let now = std::time::SystemTime::now();
    for l in config.listeners() {
        if l.tls.terminates() {
            let tls = tls_setup::build(l, &config.node, &node_name, now)
                .map_err(|e| format!("listener {:?}: TLS: {e}", l.name))?;
            out.listeners.insert(l.name.clone(), Arc::new(tls));
        }
    }
    for p in config.pools() {
        if let Some(t) = &p.tls {
            let tls = tls_setup::build_backend(t).map_err(|e| format!("pool {:?}: TLS: {e}", p.name))?;
            out.pools.insert(p.name.clone(), Arc::new(tls));
        }
    }
    Ok(out)
}

/// Binds every worker's socket of each listener `new` adds or changes, for the workers to
/// take, so that a reload that cannot bind them all (address in use, out of descriptors) is
/// refused as a whole rather than leaving a listener missing, or on some workers only. An
/// address this node did not listen on must have no listener of another process either.
fn bind_new_listeners(old: &Config, new: &Config, workers: usize) -> Result<Staged, String> {
    let key = |l: &crate::config::ListenerConfig| (l.name.clone(), listener_key(l));
    let old_keys: Vec<_> = old.listeners().map(key).collect();
    let old_addresses: Vec<_> = old.listeners().map(|l| l.bind).collect();
    let mut staged = Staged::new();
    for l in new.listeners() {
        if old_keys.contains(&key(l)) {
            continue;
        }
        let mut spec = BindSpec::of(l);
        let fail = |e: std::io::Error| format!("listener {:?}: {e}", l.name);
        if !old_addresses.contains(&l.bind) {
            crate::engine::listener::nobody_listens(&spec).map_err(fail)?;
        }
        for worker in 0..workers {
            let socket = crate::engine::listener::bind(&spec).map_err(fail)?;
            // Port 0: the first socket's port is the group's, as at start.
            spec.address = socket.local_addr().map_err(fail)?;
            staged.insert((l.name.clone(), worker), (listener_key(l), socket));
        }
    }
    Ok(staged)
}

fn forward_signals(commands: Sender<Command>) -> Result<(), String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM])
        .map_err(|e| format!("signals: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let cmd = if sig == SIGHUP {
                    tracing::info!("SIGHUP: reload requested");
                    Command::Reload(None)
                } else {
                    tracing::info!(signal = sig, "stop requested");
                    Command::Shutdown
                };
                if commands.send(cmd).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Converts a pool's `[health]` table into a check specification; `send_proxy` is the
/// pool's (its probes then start with a PROXY v2 LOCAL header).
pub fn check_spec(h: &HealthConfig, send_proxy: bool) -> Option<CheckSpec> {
    let verify = || match (&h.ca_file, h.insecure_skip_verify) {
        (_, true) => TlsVerify::InsecureSkipVerify,
        (Some(ca), false) => TlsVerify::CaFile(ca.clone()),
        (None, false) => TlsVerify::InsecureSkipVerify,
    };
    let expect: StatusMatch = h.expect.parse().ok()?;
    let kind = match h.check.as_str() {
        "tcp" => CheckKind::Tcp,
        "tls" => CheckKind::Tls {
            server_name: h.server_name.clone(),
            verify: verify(),
        },
        "http" => CheckKind::Http {
            path: h.path.clone(),
            host: h.host.clone(),
            expect,
            tls: None,
        },
        "https" => CheckKind::Http {
            path: h.path.clone(),
            host: h.host.clone(),
            expect,
            tls: Some((h.server_name.clone(), verify())),
        },
        _ => return None,
    };
    Some(CheckSpec {
        kind,
        interval: h.interval.get(),
        timeout: h.timeout.get(),
        rise: h.rise,
        fall: h.fall,
        send_proxy,
    })
}

/// The running health checks and how to reach a backend's checker.
struct Checks {
    checker: HealthChecker,
    reporter: PassiveReporter,
    ids: HashMap<(String, String), usize>,
}

impl Checks {
    fn stop(self) {
        self.checker.stop();
    }
}

fn start_health(shared: &Arc<Shared>) -> Option<Checks> {
    let snapshot = shared.snapshot();
    let config = snapshot.config.clone();
    let mut targets = Vec::new();
    let mut names: Vec<(String, String)> = Vec::new();
    // Configured pools come first in the snapshot, in config order.
    for (pc, plan) in config.pools().zip(snapshot.pools.iter()) {
        let Some(spec) = pc.health.as_ref().and_then(|h| check_spec(h, pc.send_proxy)) else {
            continue;
        };
        let spec = Arc::new(spec);
        for b in &plan.backends {
            // Backends in maintenance are checked too: when an operator sets them up again
            // their verdict must already be known (eligibility excludes them meanwhile).
            targets.push(Target {
                id: names.len(),
                name: format!("{}/{}", plan.name, b.name),
                addr: b.address,
                spec: spec.clone(),
                initial: b.health,
            });
            names.push((plan.name.clone(), b.name.to_string()));
        }
    }
    if targets.is_empty() {
        shared.set_health_statuses(Vec::new());
        return None;
    }
    let ids = names.iter().enumerate().map(|(i, k)| (k.clone(), i)).collect();
    let rows_names = names.clone();
    let publish_to = shared.clone();
    let shared = shared.clone();
    let on_change = Arc::new(move |ev: HealthEvent| {
        let Some((pool, backend)) = names.get(ev.id) else {
            return;
        };
        // The checker has logged the transition already.
        let health = ev.transition.to;
        shared
            .metrics
            .health_transitions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        shared.set_health(pool, backend, health);
    });
    let checker = HealthChecker::spawn(targets, on_change);
    let rows = rows_names
        .into_iter()
        .zip(checker.statuses().iter().cloned())
        .map(|((pool, backend), status)| (pool, backend, status))
        .collect();
    publish_to.set_health_statuses(rows);
    let reporter = checker.passive_reporter();
    Some(Checks {
        checker,
        reporter,
        ids,
    })
}
