//! `gatehouse demo` runs a broker and a host agent per stand-in host: the demo user logs in
//! and launches onto one of the stand-ins.

use std::process::{Command, Stdio};
use std::time::Duration;

use gatehouse::broker_role::{ClientSetup, ControlClient, MemberTls};
use gatehouse_control::message::{Launch, LaunchMode, Reply, Request};

use super::common::{bin, login, outcome, wait_for, Proc};

#[test]
fn demo_user_launches_onto_a_stand_in() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready.json");
    let log = dir.path().join("demo.log");
    let child = Command::new(bin())
        .args(["demo", "--ephemeral", "--ready-file", ready.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let farm = std::env::temp_dir().join(format!("gatehouse-demo-farm-{}", child.id()));
    let demo = Proc { child, log };
    assert!(
        wait_for(Duration::from_secs(15), || ready.exists()),
        "{}",
        demo.log_text()
    );
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    let endpoints = doc["endpoints"].as_array().unwrap();
    let find = |role: &str, name: &str| {
        endpoints
            .iter()
            .find(|e| e["role"] == role && e["name"] == name)
            .and_then(|e| e["address"].as_str())
            .map(|a| a.parse::<std::net::SocketAddr>().unwrap())
    };
    let gw = find("broker", "gateways").expect("broker endpoint listed");
    let stand_ins: Vec<std::net::SocketAddr> = (1..=3)
        .map(|i| find("session-host", &format!("host-{i}")).unwrap())
        .collect();
    // Every agent has reported once its link is up.
    assert!(demo.wait_log("host agent connected", 3, Duration::from_secs(10)));
    std::thread::sleep(Duration::from_millis(300));

    let tls = MemberTls {
        cert_file: farm.join("demo-gw-1.pem"),
        key_file: farm.join("demo-gw-1.key"),
        ca_file: farm.join("farm-ca.pem"),
    };
    let client = ControlClient::start(ClientSetup::new(
        "demo-gw-1",
        vec![gw],
        tls.client_config().unwrap(),
    ))
    .unwrap();
    let answer = client.call(login("demo", "demo")).unwrap();
    let Reply::LoginOk(ok) = answer.reply else {
        panic!("demo login: {}", outcome(&answer.reply))
    };
    assert_eq!(ok.resources.len(), 1);
    let launched = client
        .call(Request::Launch(Launch {
            session_token: ok.session_token,
            resource: ok.resources[0].id.clone(),
            mode: LaunchMode::Direct,
            client_addr: "127.0.0.1:50000".parse().unwrap(),
        }))
        .unwrap();
    let Reply::Launched(l) = launched.reply else {
        panic!("demo launch: {}", outcome(&launched.reply))
    };
    let target: std::net::SocketAddr = format!("{}:{}", l.host, l.port).parse().unwrap();
    assert!(
        stand_ins.contains(&target),
        "{target} is not a stand-in: {stand_ins:?}"
    );
    client.stop();
    demo.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        wait_for(Duration::from_secs(10), || !farm.exists()),
        "demo farm directory left behind"
    );
}
