//! SIGHUP reloads the broker's farm file: new resources and `[ldap]` settings take effect,
//! sessions survive, and a broken file is refused with its `file:line` while the running
//! farm keeps serving.

use std::time::Duration;

use gatehouse_control::message::{ListResources, Reply, Request, Secret};

use super::common::{login, outcome, Farm};

fn resources(reply: &Reply) -> Vec<String> {
    match reply {
        Reply::LoginOk(ok) => ok.resources.iter().map(|r| r.id.clone()).collect(),
        Reply::Resources(r) => r.resources.iter().map(|r| r.id.clone()).collect(),
        other => panic!("no resources: {other:?}"),
    }
}

#[test]
fn sighup_reloads_the_farm_file_and_refuses_a_broken_one() {
    let farm = Farm::new();
    let broker = farm.start_broker("broker-1");
    let client = farm.client(&[broker.gw]);
    let call = |request: Request| client.call(request).unwrap().reply;
    let first = call(login("alice", "right"));
    assert_eq!(resources(&first), ["desktop-a"]);
    let Reply::LoginOk(ok) = first else { unreachable!() };
    let list = || {
        call(Request::ListResources(ListResources {
            session_token: Secret::new(ok.session_token.expose()),
        }))
    };
    let hup = |n: usize, what: &str| {
        broker.proc.signal(nix::sys::signal::Signal::SIGHUP);
        assert!(
            broker.proc.wait_log(what, n, Duration::from_secs(5)),
            "no {what:?} after SIGHUP: {}",
            broker.proc.log_text()
        );
    };

    // 1. A new resource and an [ldap] section (a directory nobody listens on).
    let original = std::fs::read_to_string(farm.path("farm.toml")).unwrap();
    let dead = super::common::free_port();
    let grown = format!(
        "{original}\n[[resource]]\nid = \"notes-app\"\nname = \"Notes\"\nkind = \"application\"\npool = \"pool-a\"\ngroups = [\"staff\"]\n\n\
         [ldap]\nurl = \"ldap://127.0.0.1:{dead}\"\ntimeout = \"1s\"\ndn_template = \"uid={{user}},ou=people,dc=example,dc=org\"\n"
    );
    std::fs::write(farm.path("farm.toml"), &grown).unwrap();
    hup(1, "farm file reloaded");
    // The session from before the reload still works and sees the new resource.
    assert_eq!(resources(&list()), ["desktop-a", "notes-app"]);
    // Names the users file does not have now go to the directory.
    let reply = call(login("zed", "pw"));
    assert_eq!(outcome(&reply), "directory_unavailable", "{reply:?}");

    // 2. A broken file: refused with file and line, the previous farm keeps serving.
    let broken = grown.replace(
        "pool = \"pool-a\"\ngroups = [\"staff\"]\n\n[ldap]",
        "pool = \"pool-x\"\ngroups = [\"staff\"]\n\n[ldap]",
    );
    assert_ne!(broken, grown);
    std::fs::write(farm.path("farm.toml"), &broken).unwrap();
    hup(1, "reload refused");
    let line = broken.lines().position(|l| l.contains("pool-x")).unwrap() + 1;
    let path = farm.path("farm.toml").display().to_string();
    let log = broker.proc.log_text();
    assert!(
        log.contains(&format!(
            "{path}:{line}:1: resource[1].pool: unknown pool \"pool-x\""
        )),
        "{log}"
    );
    assert_eq!(resources(&list()), ["desktop-a", "notes-app"]);
    assert_eq!(
        resources(&call(login("alice", "right"))),
        ["desktop-a", "notes-app"]
    );

    // 3. Back to the original: the resource and the directory are gone again.
    std::fs::write(farm.path("farm.toml"), &original).unwrap();
    hup(2, "farm file reloaded");
    assert_eq!(resources(&list()), ["desktop-a"]);
    assert_eq!(outcome(&call(login("zed", "pw"))), "unknown_user");
}
