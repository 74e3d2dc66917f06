//! `gatehouse user add|del|passwd|list` against a broker config, the running broker picking
//! up changes, and login throttling recorded in the audit log.

use std::time::Duration;

use super::common::{login, outcome, run_cli, Farm};

#[test]
fn user_cli_round_trip_with_a_running_broker() {
    let farm = Farm::new();
    let broker = farm.start_broker("broker-1");
    let cfg = broker.config.to_str().unwrap();
    let client = farm.client(&[broker.gw]);

    let reloads = |n: usize| {
        broker
            .proc
            .wait_log("users file reloaded", n, Duration::from_secs(5))
    };
    farm.add_user(&broker.config, "bob", "first");
    let list = run_cli(&["user", "list", "-c", cfg], None);
    let text = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(
        text.contains("alice\tgroups=staff") && text.contains("bob\tgroups=staff"),
        "{text}"
    );
    assert!(!text.contains("argon2"), "list must not print hashes");
    // The broker reloads the users file within a second or so. (Logins are not polled:
    // each refusal would count towards bob's lock-out.)
    assert!(reloads(1), "{}", broker.proc.log_text());
    assert_eq!(
        outcome(&client.call(login("bob", "first")).unwrap().reply),
        "login_ok"
    );

    let out = run_cli(&["user", "passwd", "bob", "-c", cfg], Some("second"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(reloads(2));
    assert_eq!(
        outcome(&client.call(login("bob", "first")).unwrap().reply),
        "wrong_password"
    );
    assert_eq!(
        outcome(&client.call(login("bob", "second")).unwrap().reply),
        "login_ok"
    );

    let out = run_cli(&["user", "del", "bob", "-c", cfg], None);
    assert!(out.status.success());
    let list = run_cli(&["user", "list", "-c", cfg], None);
    assert!(!String::from_utf8_lossy(&list.stdout).contains("bob"));
    assert!(reloads(3));
    assert_eq!(
        outcome(&client.call(login("bob", "second")).unwrap().reply),
        "unknown_user"
    );
    // Without GATEHOUSE_PASSWORD and with no terminal, the password is read from stdin
    // (empty here): refused, and never taken from the command line.
    let out = run_cli(&["user", "add", "carol", "-c", cfg], None);
    assert!(!out.status.success());
}

#[test]
fn throttling_is_in_the_audit_log() {
    let farm = Farm::new();
    let broker = farm.start_broker("broker-1");
    let client = farm.client(&[broker.gw]);
    // user_max_failures = 3: three wrong guesses are checked, the fourth is refused unchecked,
    // and so is the right password afterwards.
    let mut seen = Vec::new();
    for password in ["w1", "w2", "w3", "w4", "right"] {
        seen.push(outcome(&client.call(login("alice", password)).unwrap().reply));
    }
    assert_eq!(
        seen,
        [
            "wrong_password",
            "wrong_password",
            "wrong_password",
            "user_locked",
            "user_locked"
        ]
    );
    let audit = std::fs::read_to_string(farm.path("broker-1-audit.log")).unwrap();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["action"] == "login")
        .collect();
    assert_eq!(lines.len(), 5, "{audit}");
    assert_eq!(lines[0]["result"]["refused"], "wrong_password");
    assert_eq!(lines[3]["result"]["refused"], "user_locked");
    assert!(lines[3]["detail"]
        .as_str()
        .unwrap()
        .contains("password not checked"));
    assert_eq!(lines[4]["gateway"], "gw-a");
    assert!(
        !audit.contains("w1") && !audit.contains("right\""),
        "credentials in the audit log"
    );
}

#[test]
fn a_login_the_gateway_stopped_waiting_for_is_not_checked() {
    // In a logon storm the hash pool's queue can outlast a gateway's request timeout; a check
    // started after it is work for nobody and delays every later login.
    let farm = Farm::new();
    let broker = farm.start_broker("broker-1");
    let client = farm.client(&[broker.gw]);
    let with_wait = |password: &str, wait_ms: Option<u32>| {
        let mut request = login("alice", password);
        if let gatehouse_control::message::Request::Login(l) = &mut request {
            l.wait_ms = wait_ms;
        }
        client.call(request).unwrap().reply
    };
    // Gone before the check could start (0 ms): refused unchecked, with the reason.
    let stale = with_wait("w1", Some(0));
    assert_eq!(outcome(&stale), "internal");
    let gatehouse_control::message::Reply::Refused(r) = &stale else {
        unreachable!()
    };
    assert!(
        r.detail.as_deref().unwrap_or("").contains("stopped waiting"),
        "{r:?}"
    );
    // Not a guess: alice is not nearer her lock-out (3 failures), and a login that is
    // waited for is checked.
    for password in ["w2", "w3"] {
        assert_eq!(outcome(&with_wait(password, Some(5_000))), "wrong_password");
    }
    assert_eq!(outcome(&with_wait("right", Some(5_000))), "login_ok");
    let audit = std::fs::read_to_string(farm.path("broker-1-audit.log")).unwrap();
    assert!(
        audit.contains("the gateway stopped waiting before the password check began"),
        "{audit}"
    );
}

#[test]
fn a_gateway_flooding_logins_does_not_hold_back_another_gateways() {
    // The broker's password checks wait in one queue for its hash threads. A gateway in a
    // logon storm (or a faulty one) may fill only its share of it, and the hash threads take
    // the gateways' checks in turn: another gateway's login waits for about one check.
    let farm = Farm::new();
    farm.add_gateway("gw-b");
    let broker = farm.start_broker("broker-1");
    let flooder = farm.client(&[broker.gw]);
    let other = farm.client_as("gw-b", &[broker.gw]);
    let (tx, answers) = crossbeam_channel::unbounded();
    let sink = gatehouse::broker_role::AnswerSink::new(tx, None);
    for tag in 0..300 {
        flooder.submit(tag, login("alice", "right"), &sink);
    }
    // Past its share (a quarter of the 1,024 places), gw-a is refused at once.
    let start = std::time::Instant::now();
    loop {
        let a = answers
            .recv_timeout(Duration::from_secs(10))
            .expect("gw-a refused past its share");
        match a.result.map(|r| r.reply) {
            Ok(gatehouse_control::message::Reply::Refused(r)) => {
                assert_eq!(
                    r.detail.as_deref(),
                    Some("too many password checks queued from this gateway"),
                    "{r:?}"
                );
                break;
            }
            Ok(reply) => assert_eq!(outcome(&reply), "login_ok"),
            Err(e) => panic!("{e} after {:?}", start.elapsed()),
        }
    }
    // gw-b's login, sent while gw-a has about 250 checks queued, waits for about one of them.
    let (tx_b, answers_b) = crossbeam_channel::unbounded();
    other.submit(
        1,
        login("alice", "right"),
        &gatehouse::broker_role::AnswerSink::new(tx_b, None),
    );
    let sent = std::time::Instant::now();
    // (gw-a's refusals past its share may still be on their way: not counted.)
    let mut a_answered_meanwhile = 0;
    let b = loop {
        a_answered_meanwhile += answers
            .try_iter()
            .filter(|a| matches!(&a.result, Ok(r) if outcome(&r.reply) == "login_ok"))
            .count();
        if let Ok(b) = answers_b.recv_timeout(Duration::from_millis(1)) {
            break b;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(20),
            "gw-b's login not answered"
        );
    };
    assert_eq!(outcome(&b.result.unwrap().reply), "login_ok");
    println!(
        "gw-b answered after {:?}, while {a_answered_meanwhile} of gw-a's queued checks were answered",
        sent.elapsed()
    );
    assert!(
        a_answered_meanwhile <= 16,
        "gw-b's login waited behind {a_answered_meanwhile} of gw-a's checks"
    );
    // About 44 refusals in well under a second: one log line, not one each.
    let log = broker.proc.log_text();
    let lines = log
        .lines()
        .filter(|l| l.contains("login refused: too many password checks queued from this gateway"))
        .count();
    assert!((1..=2).contains(&lines), "{lines} lines:\n{log}");
}

#[test]
fn check_reports_broken_broker_files_at_their_keys() {
    let farm = Farm::new();
    farm.issue("broker-1", "broker");
    let config = farm.broker_config(
        "broker-1",
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    );
    let cfg = config.to_str().unwrap();
    let out = run_cli(&["check", "-q", "-c", cfg], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(farm.path("farm.toml"), "[[site]]\nname = \"a\"\nbogus = 1\n").unwrap();
    std::fs::write(
        farm.path("farm-keys.toml"),
        "[[key]]\nid = 1\nsecret = \"00\"\ncurrent = true\n",
    )
    .unwrap();
    let out = run_cli(&["check", "-q", "-c", cfg], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("broker.farm_file") && err.contains("bogus"), "{err}");
    assert!(
        err.contains("broker.farm_key_file") && err.contains("64 hex digits"),
        "{err}"
    );

    // What `run` would refuse, `check` refuses: an audit file in a missing directory, a key
    // of another member, one port for both listeners.
    farm.issue("broker-2", "broker");
    let text = std::fs::read_to_string(&config).unwrap();
    let audit = farm.path("broker-1-audit.log").display().to_string();
    let key = farm.path("broker-1.key").display().to_string();
    let broken = text
        .replace(&audit, "/nonexistent/dir/audit.log")
        .replace(&key, &farm.path("broker-2.key").display().to_string())
        .replace("agent_listen = \"127.0.0.1:2\"", "agent_listen = \"0.0.0.0:1\"");
    std::fs::write(&config, broken).unwrap();
    let out = run_cli(&["check", "-q", "-c", cfg], None);
    let err = String::from_utf8_lossy(&out.stderr);
    println!("check: {err}");
    assert!(
        err.contains("broker.audit_file: cannot create /nonexistent/dir/audit.log: /nonexistent/dir is not a directory"),
        "{err}"
    );
    assert!(
        err.contains("broker.cert_file")
            && err.contains("broker-2.key: the private key does not belong to the certificate"),
        "{err}"
    );
    assert!(
        err.contains("broker.agent_listen: port 1 is already taken: broker.gateway_listen binds 127.0.0.1:1"),
        "{err}"
    );
}
