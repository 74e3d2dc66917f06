//! TLS passthrough end to end: `openssl s_server` backends behind a passthrough listener,
//! s_client sees the backend's certificate (not the proxy's), and SNI routes pick the pool.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;
use crate::tls_offload::{have_tool, s_client, subject};

/// An `openssl s_server` with the certificate for `name`, killed on drop.
fn s_server(ca: &TestCa, name: &str) -> (Proc, SocketAddr) {
    let (c, k) = ca.leaf(name);
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new("openssl")
        .arg("s_server")
        .arg("-accept")
        .arg(addr.to_string())
        .arg("-cert")
        .arg(&c)
        .arg("-key")
        .arg(&k)
        .arg("-quiet")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let p = Proc { child };
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
        "s_server for {name} did not start"
    );
    (p, addr)
}

fn passthrough_config(
    admin: SocketAddr,
    listen: SocketAddr,
    p: SocketAddr,
    p1: SocketAddr,
    p2: SocketAddr,
    state: &Path,
) -> String {
    format!(
        "[node]\nworkers = 2\nlog_level = \"info\"\ndrain_timeout = \"2s\"\nstate_dir = \"{}\"\n\n[admin]\nlisten = \"{admin}\"\n\n[halb]\n\
         [[halb.listener]]\nname = \"pass\"\nbind = \"{listen}\"\npool = \"p\"\ntls = \"passthrough\"\nhandshake_timeout = \"2s\"\n\
         sni_routes = [\n  {{ names = [\"a.example\"], pool = \"p1\" }},\n  {{ names = [\"*.b.example\"], pool = \"p2\" }},\n]\n\n\
         [[halb.pool]]\nname = \"p\"\nbackends = [ {{ name = \"default\", address = \"{p}\" }} ]\n\n\
         [[halb.pool]]\nname = \"p1\"\nbackends = [ {{ name = \"one\", address = \"{p1}\" }} ]\n\n\
         [[halb.pool]]\nname = \"p2\"\nbackends = [ {{ name = \"two\", address = \"{p2}\" }} ]\n",
        state.display()
    )
}

#[test]
fn passthrough_shows_the_backends_certificate_and_routes_by_sni() {
    if !have_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "Passthrough Test CA");
    let (_s0, p) = s_server(&ca, "default.example");
    let (_s1, p1) = s_server(&ca, "a.example");
    let (_s2, p2) = s_server(&ca, "x.b.example");
    let (admin, listen) = addrs();
    let g = Gatehouse::start(&passthrough_config(admin, listen, p, p1, p2, dir.path()), admin);
    let ca_file = ca.ca_file.display().to_string();
    for (sni, expect_cn, backend) in [
        ("a.example", "a.example", ("p1", "one")),
        ("x.b.example", "x.b.example", ("p2", "two")),
        ("other.example", "default.example", ("p", "default")),
    ] {
        let out = s_client(listen, &["-servername", sni, "-CAfile", &ca_file], None);
        assert!(
            out.stdout.contains("Verify return code: 0 (ok)"),
            "{sni}: {}\n{}",
            out.stdout,
            out.stderr
        );
        assert!(
            subject(&out).contains(&format!("CN = {expect_cn}")),
            "{sni}: expected the backend's certificate {expect_cn}, got {}",
            subject(&out)
        );
        assert_eq!(g.backend_total(backend.0, backend.1), 1.0, "{sni} went elsewhere");
    }
    // Plain bytes on a passthrough listener are refused and counted.
    let mut s = connect_from(listen, None).unwrap();
    std::io::Write::write_all(&mut s, b"hello\r\n").unwrap();
    let seen = read_outcome(&mut s, Duration::from_secs(3));
    assert!(matches!(seen, Seen::Eof | Seen::Reset), "{seen:?}");
    assert_eq!(
        g.wait_metric(
            "gatehouse_tls_refused_total{reason=\"not_tls\"}",
            1.0,
            Duration::from_secs(3)
        ),
        1.0
    );
}
