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

/// The agent's `/metrics` once it holds every line of `want`.
async fn metrics_with(s: &Pod, want: &[String]) -> String {
    metrics_until(s, want, |_| true).await
}

/// Refused logins of `reason` on any listener.
fn refusals(metrics: &str, reason: &str) -> u64 {
    let label = format!("reason=\"{reason}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("moat_broker_auth_failures_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The agent's `/metrics` once it holds every line of `want` and `also` holds.
async fn metrics_until(s: &Pod, want: &[String], also: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let m = s.agent.get("/metrics").await;
        if want.iter().all(|w| m.lines().any(|l| l == w)) && also(&m) {
            return m;
        }
        assert!(std::time::Instant::now() < deadline, "missing {want:?} in\n{m}\nbroker log:\n{}", s.broker.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn refused(port: impl std::fmt::Display, reason: &str, n: usize) -> String {
    format!("moat_broker_auth_failures_total{{listener=\"{port}\",reason=\"{reason}\",origin=\"other\"}} {n}")
}

fn status(text: &str) -> moat::agent::AgentStatus {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_logins_are_counted_from_the_brokers_log_and_a_burst_is_suspicious() {
    let s = setup();
    let port = s.r.port(8883);
    let alice = creds(&s.r, "alice");
    drop(connect(&conn(&s, Some(alice.clone()))).await.expect("alice logs in"));
    let wrong = ("alice".to_string(), "Wrong-Passw0rd-Of-An-Attacker".to_string());
    for _ in 0..3 {
        assert!(matches!(connect(&conn(&s, Some(wrong.clone()))).await, Err(Refusal::Refused(_))));
    }
    assert!(matches!(connect(&conn(&s, None)).await, Err(Refusal::Refused(_))), "anonymous");
    let accepted = format!("moat_broker_connections_total{{listener=\"{port}\",result=\"accepted\"}} 1");
    metrics_with(&s, &[accepted.clone(), refused(port, "not_authorised", 4)]).await;
    // the fifth: plaintext MQTT on the TLS port, a failed handshake (when Mosquitto 2.0 finds
    // the bytes already there at accept, it logs the failure with the client's address only, so
    // its listener is `unknown`; else on the listener)
    let plain = Conn { port, credentials: Some(alice.clone()), ..Default::default() };
    assert!(connect(&plain).await.is_err(), "plaintext on a TLS port");
    let m = metrics_until(&s, &[accepted, refused(port, "not_authorised", 4)], |m| refusals(m, "tls") == 1).await;
    // five refusals within a minute are a burst, judged once GRACE old
    let deadline = std::time::Instant::now() + moat::agent::activity::GRACE + WAIT;
    let (st, burst) = loop {
        let st = s.agent.get("/status").await;
        if let Some(b) = status(&st).suspicious {
            break (st, b);
        }
        assert!(std::time::Instant::now() < deadline, "no burst on /status: {st}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(burst.refused, 5);
    assert_eq!(burst.sources, vec![("127.0.0.1".to_string(), 5)]);
    assert_eq!(burst.reasons, [("not_authorised".to_string(), 4), ("tls".to_string(), 1)].into());
    assert!(m.contains("moat_agent_files_info{config_sha256=\""), "{m}");
    assert!(m.contains("moat_agent_reloads_total{result=\"refused\"} 0"), "{m}");
    // nothing a client sent reaches the endpoints: no password, no username
    for text in [&m, &st] {
        assert!(!text.contains(&wrong.1) && !text.contains(&alice.1) && !text.contains("alice"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_rotates_the_brokers_log_without_losing_a_line() {
    let mut s = setup();
    s.agent = Agent::start_with(&s.volumes.root, &s.run, s.broker.pid(), &["--log-rotate-bytes", "2000"]);
    let port = s.r.port(8883);
    let wrong = ("bob".to_string(), "Wrong-Passw0rd-Of-An-Attacker".to_string());
    for _ in 0..12 {
        assert!(matches!(connect(&conn(&s, Some(wrong.clone()))).await, Err(Refusal::Refused(_))));
    }
    metrics_with(&s, &[refused(port, "not_authorised", 12)]).await;
    assert!(s.agent.wait_for("rotated the broker's log", 1, WAIT), "{}", s.agent.log());
    // Mosquitto reopened its log (a new file) and the agent reads that one now
    let log = log_dir(&s.run).join("mosquitto.log");
    for _ in 0..3 {
        assert!(matches!(connect(&conn(&s, Some(wrong.clone()))).await, Err(Refusal::Refused(_))));
    }
    metrics_with(&s, &[refused(port, "not_authorised", 15)]).await;
    assert!(std::fs::metadata(&log).unwrap().len() < 2000 + 200, "the new log file was started over");
    assert!(s.broker.alive());
}
