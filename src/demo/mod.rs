//! `gatehouse demo`: the whole farm that exists so far, on loopback, from an embedded config.
//!
//! Owns the demo's composition: stand-in session hosts (from `gatehouse-bench`), a broker and
//! host agents, two gateways, a forwarding gateway in front of them, the HALB in front of the
//! gateways (health-checked on `/health`), and the admin listener. Each role is a real node
//! (the same code as `gatehouse run`), several in this one process. It prints what runs and
//! what to try, and writes the `--ready-file` that scripts and tests wait for. With `--ha`
//! (root), [`ha`] adds a HALB pair with VRRP in network namespaces ([`netns`]) in front of
//! the same gateways.

mod ha;
mod netns;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use gatehouse_bench::standin::{Kind, StandIn, StandInHandle};

use crate::config::{self, Config, ValidateOptions};
use crate::runtime::{Command, Endpoint, Node, NodeOptions};

/// The embedded default config (the HALB node).
pub const DEMO_CONFIG: &str = include_str!("demo.toml");
/// The template of each demo gateway's config.
pub const GATEWAY_TEMPLATE: &str = include_str!("gateway.toml");
/// The template of the forwarding gateway's config.
pub const FORWARDER_TEMPLATE: &str = include_str!("forwarder.toml");

/// The stand-in session hosts: name and port on loopback.
const DEMO_HOSTS: [(&str, u16); 3] = [("host-1", 13391), ("host-2", 13392), ("host-3", 13393)];

/// Demo options from the command line.
pub struct DemoOptions {
    /// Write the endpoints here once everything accepts connections.
    pub ready_file: Option<std::path::PathBuf>,
    /// Let the kernel choose every port (for tests and for running several demos).
    pub ephemeral: bool,
    /// Also run a HALB pair with VRRP in network namespaces (root only).
    pub ha: bool,
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

/// Every config the demo runs, as `--print-config` shows them (with `ha`, also those of
/// `--ha`).
pub fn all_configs(ha: bool) -> String {
    let mut text = format!(
        "{DEMO_CONFIG}\n# ---- each gateway (gateway.toml) ----\n{GATEWAY_TEMPLATE}\n\
         # ---- the forwarding gateway (forwarder.toml) ----\n{FORWARDER_TEMPLATE}"
    );
    if ha {
        text.push_str(&format!(
            "\n# ---- with --ha, appended to each gateway (gateway-ha.toml) ----\n{}\n\
             # ---- with --ha, each HALB of the pair (halb-ha.toml) ----\n{}",
            ha::GATEWAY_HA_TEMPLATE,
            ha::HALB_HA_TEMPLATE
        ));
    }
    text
}

/// A node of the demo other than the HALB, running on its own thread.
struct SideNode {
    name: String,
    commands: crossbeam_channel::Sender<Command>,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

/// Starts a node from config text on its own thread; returns it and its endpoints.
fn start_side_node(name: &str, text: &str) -> Result<(SideNode, Vec<Endpoint>), String> {
    let options = ValidateOptions {
        allow_ephemeral_ports: true,
    };
    let config = config::load_str(text, &format!("<demo {name}>"), options).map_err(|e| e.to_string())?;
    let node = Node::start(config, NodeOptions::default())?;
    let endpoints = node.endpoints.clone();
    let commands = node.commands();
    let thread = std::thread::Builder::new()
        .name(format!("demo-{name}"))
        .spawn(move || node.run_until_stopped())
        .map_err(|e| format!("{name}: {e}"))?;
    let side = SideNode {
        name: name.to_string(),
        commands,
        thread,
    };
    Ok((side, endpoints))
}

/// Runs the demo until SIGINT/SIGTERM: stand-in hosts, a broker and host agents, two
/// gateways, a forwarding gateway in front of them, and the HALB in front of the gateways.
pub fn run(options: DemoOptions) -> Result<(), String> {
    // First, so that a refusal (not root, no `ip netns`) comes before anything starts; on every
    // later error return, dropping it stops the pair and removes the namespaces.
    let mut ha = if options.ha {
        Some(ha::HalbPair::prepare()?)
    } else {
        None
    };
    let port = |p: u16| SocketAddr::from(([127, 0, 0, 1], if options.ephemeral { 0 } else { p }));
    let mut hosts: Vec<(String, StandInHandle)> = Vec::new();
    for (name, p) in DEMO_HOSTS {
        let standin =
            StandIn::bind(Kind::Rdp, port(p)).map_err(|e| format!("stand-in {name} on {}: {e}", port(p)))?;
        hosts.push((name.to_string(), standin.spawn()));
    }
    let mut endpoints: Vec<Endpoint> = hosts
        .iter()
        .map(|(name, h)| Endpoint {
            role: "session-host".into(),
            name: name.clone(),
            address: h.local_addr(),
        })
        .collect();
    // broker (issue 4): a broker, and a host agent per stand-in host, in a throw-away farm.
    let stand_ins: Vec<(String, SocketAddr)> =
        hosts.iter().map(|(n, h)| (n.clone(), h.local_addr())).collect();
    let farm_dir = std::env::temp_dir().join(format!("gatehouse-demo-farm-{}", std::process::id()));
    let broker_ports = crate::broker_role::demo::demo_broker_ports(options.ephemeral);
    let control = crate::broker_role::demo::DemoControlPlane::start(&farm_dir, &stand_ins, broker_ports)?;
    endpoints.extend(control.endpoints());
    let broker = control.endpoints()[0].address;
    // gateway (issue 5): one certificate for both gateways, so clients can pin it.
    let pin = demo_certificate(&farm_dir, ha.as_ref().map(|h| h.vip().ip()))?;
    let mut side = Vec::new();
    let mut fronts = Vec::new();
    let mut dmz = Vec::new();
    let mut from_ha = Vec::new();
    for (i, id) in crate::broker_role::demo::DEMO_GATEWAYS.iter().enumerate() {
        let mut text = GATEWAY_TEMPLATE.to_string();
        if let Some(h) = &ha {
            text.push_str(
                &ha::GATEWAY_HA_TEMPLATE
                    .replace("{ha_bind}", &h.gateway_bind(options.ephemeral, i).to_string()),
            );
        }
        let text = text
            .replace("{id}", id)
            .replace("{bind}", &port(18441 + i as u16).to_string())
            .replace("{dmz}", &port(18451 + i as u16).to_string())
            .replace("{broker}", &broker.to_string())
            .replace("{dir}", &farm_dir.display().to_string());
        let (node, eps) = start_side_node(id, &text)?;
        for e in &eps {
            match e.name.as_str() {
                "front" => fronts.push(e.address),
                "from-dmz" => dmz.push(e.address),
                "from-ha" => from_ha.push(e.address),
                _ => {}
            }
        }
        endpoints.extend(eps.into_iter().map(|mut e| {
            e.name = format!("{id}/{}", e.name);
            e
        }));
        side.push(node);
    }
    let text = FORWARDER_TEMPLATE
        .replace("{bind}", &port(18443).to_string())
        .replace("{next1}", &dmz[0].to_string())
        .replace("{next2}", &dmz[1].to_string());
    let (node, eps) = start_side_node("demo-fw", &text)?;
    endpoints.extend(eps.into_iter().map(|mut e| {
        e.role = "forwarder".into();
        e
    }));
    side.push(node);
    // The HALB in front of the gateways' fronts.
    let mut config = demo_config();
    let halb = config.halb.as_mut().expect("demo config has a halb role");
    for pool in &mut halb.pool {
        for (b, front) in pool.backends.iter_mut().zip(&fronts) {
            b.address = *front;
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
    endpoints.extend(node.endpoints.iter().cloned());
    if let Some(h) = &mut ha {
        let gateways: [SocketAddr; 2] = from_ha
            .as_slice()
            .try_into()
            .map_err(|_| format!("expected two from-ha gateway listeners, found {}", from_ha.len()))?;
        h.start_nodes(gateways, &farm_dir)?;
        h.wait_for_master(Duration::from_secs(20))?;
        endpoints.extend(h.endpoints());
    }
    wait_accepting(&endpoints)?;
    print_summary(&endpoints, &pin, options.ephemeral);
    if let Some(h) = &ha {
        print!("{}", h.summary(&pin));
        let _ = std::io::stdout().flush();
    }
    if let Some(path) = &options.ready_file {
        write_ready_file(path, &endpoints, &pin, ha.as_ref().map(ha::HalbPair::ready_json))?;
    }
    // A signal during the start only set the pair's flag; the node's own handling starts now.
    if ha.as_ref().is_some_and(ha::HalbPair::interrupted) {
        return Err("interrupted during start-up".into());
    }
    let result = node.run_until_stopped();
    // The side nodes saw the same signal; if the HALB stopped for another reason, stop them.
    for s in side {
        let _ = s.commands.send(Command::Shutdown);
        match s.thread.join() {
            Ok(Err(e)) => tracing::warn!(node = %s.name, "stopped with an error: {e}"),
            Err(_) => tracing::warn!(node = %s.name, "thread panicked"),
            Ok(Ok(())) => {}
        }
    }
    control.stop(); // broker (issue 4)
    for (_, h) in hosts {
        h.stop();
    }
    drop(ha); // stops the HALB pair, then removes its namespaces
    result
}

/// Writes the gateways' shared self-signed certificate into the farm directory; returns its
/// SHA-256 fingerprint (hex), what `gatehouse connect --pin-sha256` takes. With `--ha` the
/// VIP is one more name, so clients that check names (not only the pin) accept it.
fn demo_certificate(dir: &Path, vip: Option<std::net::IpAddr>) -> Result<String, String> {
    use sha2::Digest;
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    names.extend(vip.map(|v| v.to_string()));
    let bundle = crate::tls::certs::generate_self_signed(
        &names,
        std::time::SystemTime::now(),
        Duration::from_secs(30 * 86_400),
    )
    .map_err(|e| e.to_string())?;
    bundle
        .write(&dir.join("gateway-cert.pem"), &dir.join("gateway-key.pem"))
        .map_err(|e| e.to_string())?;
    let digest = sha2::Sha256::digest(bundle.chain[0].as_ref());
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
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

fn print_summary(endpoints: &[Endpoint], pin: &str, ephemeral: bool) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "gatehouse demo: a farm on loopback\n");
    for e in endpoints {
        let _ = writeln!(out, "  {:<13} {:<20} {}", e.role, e.name, e.address);
    }
    let find = |role: &str| endpoints.iter().find(|e| e.role == role).map(|e| e.address);
    let (user, password) = crate::broker_role::demo::DEMO_USER;
    let _ = writeln!(out, "\nTry (user {user:?}, password {password:?}):");
    if let (Some(halb), Some(fw)) = (find("halb"), find("forwarder")) {
        // A port free now for `connect --listen` (two demos with --ephemeral must not print
        // the same one).
        let local = match ephemeral {
            true => std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_or(13390, |a| a.port()),
            false => 13390,
        };
        let _ = writeln!(
            out,
            "  GATEHOUSE_PASSWORD={password} {} connect --gateway {halb} --secondary {fw} --user {user} \\\n      \
             --mode gateway-ssl --pin-sha256 {pin} --listen 127.0.0.1:{local}\n  \
             xfreerdp /v:127.0.0.1:{local} /u:{user}    # through the HALB, a gateway tunnel, to a stand-in",
            gatehouse_command()
        );
        let _ = writeln!(
            out,
            "  xfreerdp /v:{halb} /u:{user}    # plain RDP: the gateway balances it through the broker"
        );
        let _ = writeln!(out, "  curl -sk https://{halb}/health");
        let _ = writeln!(
            out,
            "  {} rdp-profile --target {halb} --sessions 50 --duration 10s",
            bench_command()
        );
    }
    if let Some(admin) = find("admin") {
        let _ = writeln!(out, "  curl -s http://{admin}/api/v1/backends");
        let _ = writeln!(out, "  curl -s http://{admin}/metrics | grep gatehouse_backend");
        let _ = writeln!(
            out,
            "  curl -s -XPOST -d '{{\"state\":\"drain\"}}' http://{admin}/api/v1/backends/gateways/demo-gw-1"
        );
    }
    let _ = writeln!(
        out,
        "\nThe stand-in hosts answer the X.224 handshake only. Ctrl-C stops the demo."
    );
    let _ = out.flush();
}

/// How to run this binary again: its path (a fresh build is not on PATH), or its name.
fn gatehouse_command() -> String {
    std::env::current_exe().map_or_else(|_| "gatehouse".to_string(), |exe| exe.display().to_string())
}

/// How to run the load-test harness from here: the binary next to this one, or cargo.
fn bench_command() -> String {
    let sibling = std::env::current_exe().ok().and_then(|exe| {
        let bench = exe.with_file_name("gatehouse-bench");
        bench.exists().then(|| bench.display().to_string())
    });
    sibling.unwrap_or_else(|| "cargo run --release -p gatehouse-bench --".to_string())
}

fn write_ready_file(
    path: &Path,
    endpoints: &[Endpoint],
    pin: &str,
    ha: Option<serde_json::Value>,
) -> Result<(), String> {
    let mut doc = serde_json::json!({ "endpoints": endpoints, "gateway_pin_sha256": pin });
    if let Some(ha) = ha {
        doc["ha"] = ha;
    }
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
