//! A broker with three host agents reporting different loads: launches (through the gateway
//! control client) go to the least loaded; a host whose agent dies is not chosen once its
//! reports are older than `host_down_after`.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use gatehouse_control::message::{Launch, LaunchMode, Reply, Request, Secret};

use super::common::{login, outcome, Farm, HOSTS};

fn launch(token: &Secret) -> Request {
    Request::Launch(Launch {
        session_token: token.clone(),
        resource: "desktop-a".into(),
        mode: LaunchMode::Gateway,
        client_addr: "192.0.2.10:50000".parse().unwrap(),
    })
}

#[test]
fn launches_go_to_the_least_loaded_live_host() {
    let farm = Farm::new();
    let broker = farm.start_broker("broker-1");
    // Stand-in RDP ports so the agents report rdp_up.
    let rdp: Vec<TcpListener> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let loads = [70u8, 10, 40];
    let mut agents: Vec<_> = HOSTS
        .iter()
        .zip(loads)
        .zip(&rdp)
        .map(|((h, cpu), l)| Some(farm.start_agent(h.name, &[broker.agents], cpu, l.local_addr().unwrap())))
        .collect();
    assert!(
        broker
            .proc
            .wait_log("role=host-agent", 3, Duration::from_secs(10)),
        "agents did not connect: {}",
        broker.proc.log_text()
    );
    // One report period so that every agent's first report is in.
    std::thread::sleep(Duration::from_millis(700));

    let client = farm.client(&[broker.gw]);
    let answer = client.call(login("alice", "right")).expect("login answered");
    let Reply::LoginOk(ok) = answer.reply else {
        panic!("login refused: {:?}", answer.reply)
    };
    let chosen = |client: &gatehouse::broker_role::ControlClient| {
        let a = client.call(launch(&ok.session_token)).expect("launch answered");
        match a.reply {
            Reply::Launched(l) => {
                assert!(l.ticket.is_some(), "gateway mode carries a ticket");
                l.host
            }
            other => panic!("launch refused: {}", outcome(&other)),
        }
    };
    // rdsh-2 reports 10 % CPU against 70 % and 40 %.
    assert_eq!(chosen(&client), "127.0.1.2");

    // Kill rdsh-2's agent: within host_down_after (2 s) plus a report period it is down,
    // and the launch (no affinity to a down host) goes to rdsh-3 (40 %).
    let killed = Instant::now();
    agents[1].take();
    let mut moved_after = None;
    while killed.elapsed() < Duration::from_secs(6) {
        if chosen(&client) == "127.0.1.3" {
            moved_after = Some(killed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let moved_after = moved_after.expect("rdsh-2 still chosen 6 s after its agent died");
    eprintln!("dead host no longer chosen after {} ms", moved_after.as_millis());
    assert!(
        moved_after >= Duration::from_millis(1500),
        "down too early: {moved_after:?}"
    );
    drop(agents);
}
