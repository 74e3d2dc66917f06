//! Test-only backends on loopback: scripted TCP servers, a TLS server with a generated PKI,
//! and a listener whose accept queue is full (what a stopped process looks like).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use socket2::{Domain, Socket, Type};

/// A loopback server that runs `serve` on its own thread for each accepted connection, until
/// stopped or dropped (then the listening socket is closed: new connects are refused).
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on `addr` (port 0 for a fresh port, or a previous server's address to come
    /// back on the same port).
    pub(crate) fn start(addr: SocketAddr, serve: impl Fn(TcpStream) + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind(addr).expect("loopback bind for a test server");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener for a test server");
        let addr = listener.local_addr().expect("bound listener has an address");
        let stop = Arc::new(AtomicBool::new(false));
        let serve = Arc::new(serve);
        let stop_flag = stop.clone();
        let thread = thread::spawn(move || {
            while !stop_flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let serve = serve.clone();
                        thread::spawn(move || serve(stream));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Server {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Closes the listening socket and waits for the accept thread to end.
    pub(crate) fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A fresh loopback address with port 0.
pub(crate) fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A loopback port where nothing listens (bound, then released).
pub(crate) fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind(any_port()).expect("loopback bind");
    listener.local_addr().expect("bound listener has an address")
}

/// Reads a request head (up to the blank line, at most 16 KiB, 2 s), then sends `response`.
pub(crate) fn answer_http<S: Read + Write>(stream: &mut S, response: &[u8]) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let _ = stream.write_all(response);
    let _ = stream.flush();
}

/// Holds the connection open, answering nothing, until the client goes away.
pub(crate) fn say_nothing(mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = io::copy(&mut stream, &mut io::sink());
}

/// A listening socket that never accepts. With `fill_queue`, its accept queue is filled so
/// further SYNs are dropped and connects hang (as with a stopped process under load);
/// without, connects complete in the kernel and nothing ever answers.
pub(crate) struct StuckListener {
    pub(crate) addr: SocketAddr,
    _listener: Socket,
    _fillers: Vec<Socket>,
}

impl StuckListener {
    pub(crate) fn new(fill_queue: bool) -> StuckListener {
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("tcp socket");
        listener
            .bind(&any_port().into())
            .expect("loopback bind for a stuck listener");
        let backlog = if fill_queue { 0 } else { 128 };
        listener.listen(backlog).expect("listen");
        let addr = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("bound listener has an inet address");
        let mut fillers = Vec::new();
        if fill_queue {
            // Linux admits backlog+1 connections; keep connecting until one hangs.
            for _ in 0..16 {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("tcp socket");
                let hung = s
                    .connect_timeout(&addr.into(), Duration::from_millis(100))
                    .is_err();
                fillers.push(s);
                if hung {
                    break;
                }
            }
        }
        StuckListener {
            addr,
            _listener: listener,
            _fillers: fillers,
        }
    }
}

/// A CA, a server certificate it signed for `127.0.0.1` and `backend.test`, the CA written
/// to a PEM file, and a rustls server configuration presenting the server certificate.
pub(crate) struct TestPki {
    pub(crate) ca_file: PathBuf,
    pub(crate) server_config: Arc<ServerConfig>,
}

impl TestPki {
    pub(crate) fn new() -> TestPki {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        // A distinct CA name per PKI, so a wrong CA is an unknown issuer, not a name clash.
        let serial = NEXT.fetch_add(1, Ordering::SeqCst);
        let ca_key = KeyPair::generate().expect("key generation");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("gatehouse test CA {serial}"));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key).expect("self-signed CA");

        let leaf_key = KeyPair::generate().expect("key generation");
        let leaf_params = CertificateParams::new(vec!["127.0.0.1".to_string(), "backend.test".to_string()])
            .expect("leaf params");
        let leaf = leaf_params
            .signed_by(&leaf_key, &ca, &ca_key)
            .expect("leaf signed by CA");

        let ca_file =
            std::env::temp_dir().join(format!("gh-health-ca-{}-{}.pem", std::process::id(), serial));
        std::fs::write(&ca_file, ca.pem()).expect("temp dir is writable");

        let provider = crate::tls::provider();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let server_config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the provider supports the default versions")
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
            .expect("matching certificate and key");
        TestPki {
            ca_file,
            server_config: Arc::new(server_config),
        }
    }

    /// A TLS server: handshake, then answer one HTTP request with `response` when given,
    /// else wait for the client to close.
    pub(crate) fn server(&self, response: Option<&'static [u8]>) -> Server {
        let config = self.server_config.clone();
        Server::start(any_port(), move |sock| {
            let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
            let Ok(conn) = ServerConnection::new(config.clone()) else {
                return;
            };
            let mut tls = StreamOwned::new(conn, sock);
            match response {
                Some(resp) => answer_http(&mut tls, resp),
                None => {
                    let _ = io::copy(&mut tls, &mut io::sink());
                }
            }
        })
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.ca_file);
    }
}
