//! Balancing: weighted round-robin, least-connections, source-hash stickiness and the share
//! that moves when a backend leaves. One worker, so counts are exact.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use crate::common::*;

fn count(names: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for n in names {
        *m.entry(n.clone()).or_insert(0) += 1;
    }
    m
}

#[test]
fn weighted_round_robin_one_two_three() {
    let s: Vec<NameServer> = ["w1", "w2", "w3"].iter().map(|n| NameServer::start(n)).collect();
    let (admin, listen) = addrs();
    let g = Gatehouse::start(
        &config_full(
            admin,
            listen,
            1,
            "",
            "algorithm = \"round-robin\"",
            "",
            &[
                ("w1", s[0].addr, "weight = 1"),
                ("w2", s[1].addr, "weight = 2"),
                ("w3", s[2].addr, "weight = 3"),
            ],
        ),
        admin,
    );
    let names: Vec<String> = (0..60)
        .map(|_| who_answers(listen, None).expect("served").0)
        .collect();
    let c = count(&names);
    let totals: Vec<f64> = ["w1", "w2", "w3"]
        .iter()
        .map(|b| g.backend_total("p", b))
        .collect();
    println!("balancing wrr 1:2:3 over 60: answers {c:?}, backend_connections_total {totals:?}");
    assert_eq!(
        (c.get("w1"), c.get("w2"), c.get("w3")),
        (Some(&10), Some(&20), Some(&30)),
        "answers by backend"
    );
    assert_eq!(totals, vec![10.0, 20.0, 30.0]);
}

#[test]
fn least_connections_spreads_held_connections() {
    let s: Vec<NameServer> = ["l1", "l2", "l3"].iter().map(|n| NameServer::start(n)).collect();
    let (admin, listen) = addrs();
    let g = Gatehouse::start(
        &config_full(
            admin,
            listen,
            1,
            "",
            "algorithm = \"least-connections\"",
            "",
            &[
                ("l1", s[0].addr, ""),
                ("l2", s[1].addr, ""),
                ("l3", s[2].addr, ""),
            ],
        ),
        admin,
    );
    let mut held = Vec::new();
    let mut names = Vec::new();
    for _ in 0..9 {
        let (n, stream) = who_answers(listen, None).expect("served");
        names.push(n);
        held.push(stream);
    }
    let c = count(&names);
    let active: Vec<u64> = ["l1", "l2", "l3"]
        .iter()
        .map(|b| g.backend("p", b)["active"].as_u64().unwrap_or(0))
        .collect();
    println!("balancing least-connections, 9 held: answers {c:?}, active {active:?}");
    assert_eq!(
        (c.get("l1"), c.get("l2"), c.get("l3")),
        (Some(&3), Some(&3), Some(&3))
    );
    assert_eq!(active, vec![3, 3, 3]);
    // Free two slots on one backend: the next two go there.
    let idx: Vec<usize> = (0..9).filter(|i| names[*i] == "l2").take(2).collect();
    for i in idx.iter().rev() {
        held.remove(*i);
    }
    assert!(wait_until(std::time::Duration::from_secs(3), || g
        .backend("p", "l2")["active"]
        == 1));
    let next: Vec<String> = (0..2)
        .map(|_| {
            let (n, s) = who_answers(listen, None).expect("served");
            held.push(s);
            n
        })
        .collect();
    println!("balancing least-connections: after freeing two on l2, next went to {next:?}");
    assert_eq!(next, vec!["l2".to_string(), "l2".to_string()]);
}

#[test]
fn source_hash_is_sticky_and_moves_only_the_leaving_share() {
    let names = ["s1", "s2", "s3", "s4"];
    let s: Vec<NameServer> = names.iter().map(|n| NameServer::start(n)).collect();
    let (admin, listen) = addrs();
    let backends: Vec<(&str, std::net::SocketAddr, &str)> =
        names.iter().zip(&s).map(|(n, srv)| (*n, srv.addr, "")).collect();
    let g = Gatehouse::start(
        &config_full(admin, listen, 1, "", "algorithm = \"source-hash\"", "", &backends),
        admin,
    );
    let ips: Vec<IpAddr> = (10..70u8)
        .map(|x| IpAddr::V4(Ipv4Addr::new(127, 0, 0, x)))
        .collect();
    let map = |ips: &[IpAddr]| -> Vec<String> {
        ips.iter()
            .map(|ip| who_answers(listen, Some(*ip)).expect("served").0)
            .collect()
    };
    let first = map(&ips);
    let again = map(&ips);
    assert_eq!(first, again, "same source, same backend on reconnect");
    println!("balancing source-hash: 60 sources spread {:?}", count(&first));
    g.set_state("p", "s2", "maintenance");
    let after = map(&ips);
    let mut moved = 0;
    let mut wrongly_moved = Vec::new();
    for ((ip, before), now) in ips.iter().zip(&first).zip(&after) {
        if before == "s2" {
            assert_ne!(now, "s2", "{ip} still on the backend in maintenance");
            moved += 1;
        } else if before != now {
            wrongly_moved.push(format!("{ip}: {before}->{now}"));
        }
    }
    println!(
        "balancing source-hash: s2 to maintenance moved {moved}/60 sources ({:.0}%), others moved: {}",
        moved as f64 * 100.0 / 60.0,
        wrongly_moved.len()
    );
    assert!(
        wrongly_moved.is_empty(),
        "sources of other backends moved: {wrongly_moved:?}"
    );
    assert!(
        (5..=25).contains(&moved),
        "roughly a quarter should move, moved {moved}"
    );
    g.set_state("p", "s2", "up");
    assert_eq!(
        map(&ips),
        first,
        "sources return to their backend when it is back"
    );
}
