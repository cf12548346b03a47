//! `moat agent` with a real Mosquitto: Secret updates reach the broker by SIGHUP (no restart),
//! and an invalid ACL never does.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use crate::harness::*;

const WAIT: Duration = Duration::from_secs(15);

/// The minimal broker as a pod: the agent's init run installs the files, Mosquitto starts on
/// them, and `moat agent` watches the mounted Secrets.
fn setup() -> Pod {
    Pod::start(render(MINIMAL, &[8883]), "plant-a", &[8883], &[])
}

fn creds(r: &Rendered, user: &str) -> (String, String) {
    (user.to_string(), r.client_file(user, "password"))
}

fn conn(s: &Pod, c: Option<(String, String)>) -> Conn {
    Conn { credentials: c, ..s.tls(8883) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_init_mode_installs_private_regular_files() {
    let s = setup();
    for (file, mode) in
        [("passwd", 0o600), ("acl", 0o600), ("tls/tls.key", 0o600), ("tls/tls.crt", 0o640), ("mosquitto.conf", 0o640)]
    {
        let meta = std::fs::symlink_metadata(s.run.join(file)).unwrap();
        assert!(meta.file_type().is_file(), "{file} is not a regular file");
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_password_file_reaches_the_running_broker_without_a_restart() {
    let mut s = setup();
    let pid = s.broker.pid();
    let alice = creds(&s.r, "alice");
    let bob = creds(&s.r, "bob");
    let carol = ("carol".to_string(), "Carol-Generated-Passw0rd-For-Tests".to_string());
    assert!(
        matches!(connect(&conn(&s, Some(carol.clone()))).await, Err(Refusal::Refused(_))),
        "carol does not exist yet"
    );

    // add carol: Kubernetes swaps ..data; the agent validates, installs and SIGHUPs
    let files = shard_files(&s.r, "plant-a", &[alice.clone(), bob.clone(), carol.clone()], 1000);
    s.volumes.passwd.write(&files);
    assert!(s.agent.wait_for("sent SIGHUP", 1, WAIT), "agent did not reload: {}", s.agent.log());
    assert!(s.broker.wait_log(0, "Reloading config", WAIT), "{}", s.broker.log());
    let c = connect(&conn(&s, Some(carol.clone()))).await;
    assert!(c.is_ok(), "carol after reload: {:?}", c.err());

    // remove bob: his live session is dropped and he cannot log in again
    let mut bob_session = connect(&conn(&s, Some(bob.clone()))).await.expect("bob connects before removal");
    s.volumes.passwd.write(&shard_files(&s.r, "plant-a", &[alice.clone(), carol.clone()], 1000));
    assert!(s.agent.wait_for("sent SIGHUP", 2, WAIT), "{}", s.agent.log());
    assert!(bob_session.wait_closed(WAIT).await.is_some(), "bob's live session survived his removal");
    assert!(matches!(connect(&conn(&s, Some(bob))).await, Err(Refusal::Refused(_))), "bob can still log in");
    assert!(connect(&conn(&s, Some(alice))).await.is_ok(), "alice is unaffected");
    assert_eq!(s.broker.pid(), pid);
    assert!(s.broker.alive(), "the broker was restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_acl_is_refused_and_the_old_acl_stays_enforced() {
    let mut s = setup();
    let mut bob = connect(&conn(&s, Some(creds(&s.r, "bob")))).await.unwrap();
    // bob may only read public/#: his publish to public/x is refused
    assert_eq!(bob.publish("public/x", b"1").await, puback_not_authorized());

    // an ACL with a syntax error (Mosquitto 2.0 would fail OPEN on it at reload)
    let bad = "user bob\ntopic readwrite #\nbogus line\n".to_string();
    s.volumes.write_acl(&bad);
    assert!(s.agent.wait_for("refusing the updated broker files", 1, WAIT), "{}", s.agent.log());
    assert!(s.agent.log().contains("ACL file refused"), "{}", s.agent.log());
    assert!(!s.agent.log().contains("sent SIGHUP"), "the agent reloaded an invalid ACL");
    assert_eq!(bob.publish("public/x", b"2").await, puback_not_authorized(), "the old ACL must stay in force");
    let installed = std::fs::read_to_string(s.run.join("acl")).unwrap();
    assert!(!installed.contains("bogus"), "the invalid ACL was installed");
}

/// Why the agent validates: Debian's Mosquitto 2.0 given the same invalid ACL directly (no agent)
/// fails open at reload and lets bob publish anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_agent_mosquitto_fails_open_on_the_same_acl() {
    let s = setup();
    let bob = conn(&s, Some(creds(&s.r, "bob")));
    drop(s.agent);
    let mut bob = connect(&bob).await.unwrap();
    assert_eq!(bob.publish("public/x", b"1").await, puback_not_authorized());
    std::fs::write(s.run.join("acl"), "user bob\ntopic readwrite #\nbogus line\n").unwrap();
    s.broker.reload();
    let reason = bob.publish("public/x", b"2").await;
    assert!(accepted(&reason), "expected Mosquitto 2.0 to fail open, got {reason}");
}
