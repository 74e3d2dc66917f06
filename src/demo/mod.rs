//! `gatehouse demo`: the whole farm that exists so far, on loopback, from an embedded config.
//!
//! Owns the demo's composition: stand-in session hosts (from `gatehouse-bench`), the HALB in
//! front of them with health checks, and the admin listener. It prints what runs and what to
//! try, and writes the `--ready-file` that scripts and tests wait for.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use gatehouse_bench::standin::{Kind, StandIn, StandInHandle};

use crate::config::{self, Config, ValidateOptions};
use crate::runtime::{Endpoint, Node, NodeOptions};

/// The embedded default config.
pub const DEMO_CONFIG: &str = include_str!("demo.toml");

/// Demo options from the command line.
pub struct DemoOptions {
    /// Write the endpoints here once everything accepts connections.
    pub ready_file: Option<std::path::PathBuf>,
    /// Let the kernel choose every port (for tests and for running several demos).
    pub ephemeral: bool,
}

/// The demo config, parsed and validated.
pub fn demo_config() -> Config {
    config::load_str(
        DEMO_CONFIG,
        "<embedded demo.toml>",
        ValidateOptions {
            allow_ephemeral_ports: true,
        },
    )
    .expect("the embedded demo config is valid (checked by a unit test)")
}

/// Runs the demo until SIGINT/SIGTERM.
pub fn run(options: DemoOptions) -> Result<(), String> {
    let mut config = demo_config();
    let mut hosts: Vec<(String, StandInHandle)> = Vec::new();
    let halb = config.halb.as_mut().expect("demo config has a halb role");
    for pool in &mut halb.pool {
        for b in &mut pool.backends {
            let addr = if options.ephemeral {
                SocketAddr::from(([127, 0, 0, 1], 0))
            } else {
                b.address
            };
            let standin =
                StandIn::bind(Kind::Rdp, addr).map_err(|e| format!("stand-in {} on {addr}: {e}", b.name))?;
            b.address = standin.local_addr();
            hosts.push((b.name.clone(), standin.spawn()));
        }
    }
    if options.ephemeral {
        for l in &mut halb.listener {
            l.bind.set_port(0);
        }
        if let Some(a) = &mut config.admin {
            a.listen.set_port(0);
        }
    }
    let node = Node::start(config, NodeOptions::default())?;
    let mut endpoints: Vec<Endpoint> = hosts
        .iter()
        .map(|(name, h)| Endpoint {
            role: "session-host".into(),
            name: name.clone(),
            address: h.local_addr(),
        })
        .collect();
    endpoints.extend(node.endpoints.iter().cloned());
    // broker (issue 4): a broker, and a host agent per stand-in host, in a throw-away farm.
    let stand_ins: Vec<(String, SocketAddr)> =
        hosts.iter().map(|(n, h)| (n.clone(), h.local_addr())).collect();
    let farm_dir = std::env::temp_dir().join(format!("gatehouse-demo-farm-{}", std::process::id()));
    let broker_ports = crate::broker_role::demo::demo_broker_ports(options.ephemeral);
    let control = crate::broker_role::demo::DemoControlPlane::start(&farm_dir, &stand_ins, broker_ports)?;
    endpoints.extend(control.endpoints());
    wait_accepting(&endpoints)?;
    print_summary(&endpoints);
    if let Some(path) = &options.ready_file {
        write_ready_file(path, &endpoints)?;
    }
    let result = node.run_until_stopped();
    control.stop(); // broker (issue 4)
    for (_, h) in hosts {
        h.stop();
    }
    result
}

fn wait_accepting(endpoints: &[Endpoint]) -> Result<(), String> {
    for e in endpoints {
        let mut ok = false;
        for _ in 0..50 {
            if TcpStream::connect_timeout(&e.address, Duration::from_millis(200)).is_ok() {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !ok {
            return Err(format!(
                "{} {} on {} does not accept connections",
                e.role, e.name, e.address
            ));
        }
    }
    Ok(())
}

fn print_summary(endpoints: &[Endpoint]) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "gatehouse demo: a farm on loopback\n");
    for e in endpoints {
        let _ = writeln!(out, "  {:<13} {:<8} {}", e.role, e.name, e.address);
    }
    let find = |role: &str| endpoints.iter().find(|e| e.role == role).map(|e| e.address);
    let _ = writeln!(out, "\nTry:");
    if let Some(halb) = find("halb") {
        let _ = writeln!(
            out,
            "  xfreerdp /v:{halb} /u:USER    # reaches a stand-in host, which answers the X.224 handshake only"
        );
        let _ = writeln!(
            out,
            "  {} rdp-profile --target {halb} --sessions 50 --duration 10s",
            bench_command()
        );
    }
    if let Some(admin) = find("admin") {
        let _ = writeln!(out, "  curl -s http://{admin}/api/v1/backends");
        let _ = writeln!(out, "  curl -s http://{admin}/metrics | grep gatehouse_backend");
        let _ = writeln!(out, "  curl -s -XPOST -d '{{\"state\":\"drain\"}}' http://{admin}/api/v1/backends/session-hosts/host-1");
    }
    let _ = writeln!(out, "\nCtrl-C stops the demo.");
    let _ = out.flush();
}

/// How to run the load-test harness from here: the binary next to this one, or cargo.
fn bench_command() -> String {
    let sibling = std::env::current_exe().ok().and_then(|exe| {
        let bench = exe.with_file_name("gatehouse-bench");
        bench.exists().then(|| bench.display().to_string())
    });
    sibling.unwrap_or_else(|| "cargo run --release -p gatehouse-bench --".to_string())
}

fn write_ready_file(path: &Path, endpoints: &[Endpoint]) -> Result<(), String> {
    let doc = serde_json::json!({ "endpoints": endpoints });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{doc}\n")).map_err(|e| format!("ready file {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("ready file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_config_is_valid() {
        let c = demo_config();
        assert!(c.halb.is_some());
    }
}
