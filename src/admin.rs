//! The admin listener: Prometheus metrics and a small JSON API, loopback by default.
//!
//! Owns the admin HTTP endpoint. It reads the current snapshot and counters, sets backend
//! administrative states and asks the control loop for reloads; it never touches sessions.
//!
//! | method | path | does |
//! | --- | --- | --- |
//! | GET | `/metrics` | Prometheus text |
//! | GET | `/api/v1/status` | node, generation, connections, lifecycle |
//! | GET | `/api/v1/backends` | pools and backends with states and counters |
//! | POST | `/api/v1/backends/POOL/BACKEND` | body `{"state": "up"\|"drain"\|"maintenance"}` |
//! | POST | `/api/v1/reload` | re-read the config file |

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::config::AdminState;
use crate::runtime::Command;
use crate::shared::Shared;

const MAX_REQUEST: usize = 16 * 1024;
const MAX_CLIENTS: usize = 16;
/// A whole request (head and body) must arrive within this from the accept: a timeout per
/// read let a client that sends a byte every few seconds hold its slot for ever, and 16 of
/// them held the API.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// The running admin listener.
pub struct AdminServer {
    stop: Arc<AtomicBool>,
    address: std::net::SocketAddr,
    thread: std::thread::JoinHandle<()>,
}

impl AdminServer {
    /// Serves on `listener` in a background thread.
    pub fn spawn(
        listener: TcpListener,
        shared: Arc<Shared>,
        commands: Sender<Command>,
    ) -> io::Result<AdminServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let address = listener.local_addr()?;
        let flag = stop.clone();
        let clients = Arc::new(AtomicUsize::new(0));
        // A descriptor in reserve, taken before the workers accept: when clients have taken
        // every other one, the API still answers, so an operator can see why. (While the
        // thread waits in accept(2), the kernel holds one more for it: the number accept
        // will return.)
        let mut reserve = open_reserve();
        let thread = std::thread::Builder::new().name("admin".into()).spawn(move || {
            // At the descriptor limit accept(2) fails at once, pending client or not: one
            // warning per streak of failures, not ten a second.
            let mut failing = false;
            for conn in listener.incoming() {
                if flag.load(Ordering::Acquire) {
                    return;
                }
                let stream = match conn {
                    Ok(s) => s,
                    Err(e) if out_of_descriptors(&e) && reserve.is_some() => {
                        tracing::warn!("admin: out of descriptors; accepting with the one in reserve");
                        reserve = None;
                        continue;
                    }
                    Err(e) => {
                        // Out of descriptors (or a transient error): back off, do not spin.
                        if !failing {
                            tracing::warn!("admin accept failed: {e}; retrying every 100 ms");
                            failing = true;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                        if reserve.is_none() {
                            reserve = open_reserve();
                        }
                        continue;
                    }
                };
                if std::mem::take(&mut failing) {
                    tracing::info!("admin accepting again");
                }
                if reserve.is_none() {
                    reserve = open_reserve();
                }
                if clients.load(Ordering::Acquire) >= MAX_CLIENTS {
                    let _ = respond(&stream, 503, "text/plain", "too many admin clients\n");
                    continue;
                }
                clients.fetch_add(1, Ordering::AcqRel);
                let (shared, commands, slot) = (shared.clone(), commands.clone(), clients.clone());
                let spawned = std::thread::Builder::new()
                    .name("admin-client".into())
                    .spawn(move || {
                        let _ = serve(stream, &shared, &commands);
                        slot.fetch_sub(1, Ordering::AcqRel);
                    });
                if let Err(e) = spawned {
                    // The closure never ran: give its slot back here.
                    clients.fetch_sub(1, Ordering::AcqRel);
                    tracing::warn!("admin: cannot start a client thread: {e}");
                }
            }
        })?;
        Ok(AdminServer {
            stop,
            address,
            thread,
        })
    }

    /// Stops the listener thread.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_millis(200));
        let _ = self.thread.join();
    }
}

/// The admin thread's spare descriptor (`None` while spent, or when none is left).
fn open_reserve() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

/// EMFILE (this process) or ENFILE (the whole system).
fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == nix::libc::EMFILE || code == nix::libc::ENFILE)
}

fn serve(mut stream: TcpStream, shared: &Shared, commands: &Sender<Command>) -> io::Result<()> {
    let deadline = std::time::Instant::now() + REQUEST_DEADLINE;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    // One read, bounded by what is left of the deadline: Ok(None) when it passed.
    let read = |stream: &mut TcpStream, chunk: &mut [u8]| -> io::Result<Option<usize>> {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(chunk) {
            Ok(n) => Ok(Some(n)),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(e),
        }
    };
    let too_slow = |stream: &TcpStream| {
        let text = format!("request not complete within {}s\n", REQUEST_DEADLINE.as_secs());
        respond(stream, 408, "text/plain", &text)
    };
    let (method, path, body) = loop {
        let n = match read(&mut stream, &mut chunk)? {
            None => return too_slow(&stream),
            Some(0) => return Ok(()),
            Some(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return respond(&stream, 413, "text/plain", "request too large\n");
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(head)) => {
                let len = match crate::gateway::http::content_length(req.headers) {
                    Ok(len) => len.unwrap_or(0),
                    Err(why) => return respond(&stream, 400, "text/plain", &format!("bad request: {why}\n")),
                };
                if len > MAX_REQUEST {
                    return respond(&stream, 413, "text/plain", "body too large\n");
                }
                let method = req.method.unwrap_or("").to_string();
                let path = req.path.unwrap_or("").to_string();
                while buf.len() < head + len {
                    match read(&mut stream, &mut chunk)? {
                        None => return too_slow(&stream),
                        Some(0) => {
                            let text = "bad request: the body ended before its Content-Length\n";
                            return respond(&stream, 400, "text/plain", text);
                        }
                        Some(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                break (method, path, buf[head..head + len].to_vec());
            }
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return respond(&stream, 400, "text/plain", &format!("bad request: {e}\n")),
        }
    };
    route(&stream, shared, commands, &method, &path, &body)
}

fn route(
    stream: &TcpStream,
    shared: &Shared,
    commands: &Sender<Command>,
    method: &str,
    path: &str,
    body: &[u8],
) -> io::Result<()> {
    let path = path.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        ("GET", ["metrics"]) => {
            let text = shared.render_metrics();
            respond(stream, 200, "text/plain; version=0.0.4", &text)
        }
        ("GET", ["api", "v1", "status"]) => {
            let snapshot = shared.snapshot();
            let status = serde_json::json!({
                "node": snapshot.config.node_name(),
                "version": env!("CARGO_PKG_VERSION"),
                // The snapshot's number: a reload, a health verdict or an admin state
                // change each make a new one. `reloads` counts successful reloads.
                "generation": snapshot.generation,
                "reloads": shared.metrics.reloads_ok.load(Ordering::Relaxed),
                "lifecycle": format!("{:?}", shared.lifecycle()).to_lowercase(),
                "connections": shared.connections.load(Ordering::Relaxed),
                "listeners": snapshot.listeners.iter().map(|l| serde_json::json!({
                    "name": l.config.name, "bind": l.config.bind.to_string(), "pool": l.config.pool,
                })).collect::<Vec<_>>(),
            });
            respond(stream, 200, "application/json", &format!("{status}\n"))
        }
        ("GET", ["api", "v1", "backends"]) => respond(
            stream,
            200,
            "application/json",
            &format!("{}\n", shared.snapshot().backends_json()),
        ),
        ("POST" | "PUT", ["api", "v1", "backends", pool, backend]) => {
            let state = serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("state")?.as_str().map(str::to_string));
            let Some(state) = state else {
                return respond(
                    stream,
                    400,
                    "application/json",
                    "{\"error\":\"body must be {\\\"state\\\": \\\"up|drain|maintenance\\\"}\"}\n",
                );
            };
            let state: AdminState = match state.parse() {
                Ok(s) => s,
                Err(e) => {
                    return respond(
                        stream,
                        400,
                        "application/json",
                        &format!("{}\n", serde_json::json!({"error": e})),
                    )
                }
            };
            if shared.set_admin_state(pool, backend, state) {
                tracing::info!(pool = %pool, backend = %backend, state = state.as_str(), "backend state set through the admin API");
                respond(
                    stream,
                    200,
                    "application/json",
                    &format!(
                        "{}\n",
                        serde_json::json!({"pool": pool, "backend": backend, "state": state.as_str()})
                    ),
                )
            } else {
                respond(
                    stream,
                    404,
                    "application/json",
                    &format!(
                        "{}\n",
                        serde_json::json!({"error": format!("no backend {backend:?} in pool {pool:?}")})
                    ),
                )
            }
        }
        ("POST", ["api", "v1", "reload"]) => {
            let (tx, rx) = crossbeam_channel::bounded(1);
            if commands.send(Command::Reload(Some(tx))).is_err() {
                return respond(
                    stream,
                    503,
                    "application/json",
                    "{\"error\":\"node is stopping\"}\n",
                );
            }
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(Ok(msg)) => respond(
                    stream,
                    200,
                    "application/json",
                    &format!("{}\n", serde_json::json!({"result": msg})),
                ),
                Ok(Err(errors)) => respond(
                    stream,
                    422,
                    "application/json",
                    &format!("{}\n", serde_json::json!({"error": errors})),
                ),
                Err(_) => respond(
                    stream,
                    504,
                    "application/json",
                    "{\"error\":\"reload did not answer\"}\n",
                ),
            }
        }
        (_, parts) => match allowed_methods(parts) {
            Some(allow) => respond_with(
                stream,
                405,
                "text/plain",
                &format!("Allow: {allow}\r\n"),
                &format!("method not allowed (use {allow})\n"),
            ),
            None => respond(
                stream,
                404,
                "text/plain",
                "not found (try /metrics, /api/v1/status, /api/v1/backends)\n",
            ),
        },
    }
}

/// The methods a known resource answers (for a 405's `Allow`); `None`: no such resource.
fn allowed_methods(parts: &[&str]) -> Option<&'static str> {
    match parts {
        ["metrics"] | ["api", "v1", "status"] | ["api", "v1", "backends"] => Some("GET"),
        ["api", "v1", "backends", _, _] => Some("POST, PUT"),
        ["api", "v1", "reload"] => Some("POST"),
        _ => None,
    }
}

fn respond(stream: &TcpStream, status: u16, content_type: &str, body: &str) -> io::Result<()> {
    respond_with(stream, status, content_type, "", body)
}

/// An answer with `headers` (whole lines, each ending in CRLF) besides the usual ones.
fn respond_with(
    mut stream: &TcpStream,
    status: u16,
    content_type: &str,
    headers: &str,
    body: &str,
) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    };
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
