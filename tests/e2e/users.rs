//! Users against a real Mosquitto: generated and brought passwords, refusals, weak brought
//! passwords, password changes through `moat agent`, and a 1,000-user password file.

use std::time::Duration;

use crate::harness::*;

const USERS: &[&str] = &[
    "examples/broker-minimal.yaml",
    "tests/e2e/fixtures/plant-a-users.yaml",
    "tests/e2e/fixtures/plant-a-byo-users.yaml",
];
/// carol's brought password (tests/e2e/fixtures/plant-a-byo-users.yaml).
const CAROL: &str = "Tr4ffic-Lights-Blink-Amber-At-Dawn";
/// dave's brought password: a well-known password with digits and a symbol appended.
const DAVE: &str = "Password1234567890!";
const WAIT: Duration = Duration::from_secs(5);

fn pod() -> Pod {
    Pod::start(render(USERS, &[8883]), "plant-a", &[8883], &[])
}

fn login(pod: &Pod, user: &str, password: &str) -> Conn {
    Conn { credentials: Some((user.to_string(), password.to_string())), ..pod.tls(8883) }
}

fn generated(pod: &Pod, user: &str) -> String {
    pod.r.client_file(user, "password")
}

/// The usernames in a password file.
fn usernames(passwd: &str) -> Vec<String> {
    moat::render::passwd::parse_passwd(passwd).unwrap().into_iter().map(|(u, _)| u).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_and_brought_passwords_log_in_and_everything_else_is_refused() {
    let pod = pod();
    let installed = std::fs::read_to_string(pod.run.join("passwd")).unwrap();
    // moat's two canary logins (in no ACL, for the operator's attestation) and the users
    assert_eq!(usernames(&installed), ["_moat-canary-1", "_moat-canary-2", "alice", "bob", "carol"]);
    assert!(installed.lines().all(|l| l.contains(":$7$1000$")), "lines use the broker's iteration count");

    // Generated credentials connect.
    for user in ["alice", "bob"] {
        drop(connect_ok(&login(&pod, user, &generated(&pod, user)), user).await);
    }
    // Wrong password, another user's password, unknown user and no credentials are refused.
    assert_refused(&login(&pod, "alice", "not-alices-password-at-all"), "wrong password").await;
    assert_refused(&login(&pod, "alice", &generated(&pod, "bob")), "bob's password for alice").await;
    assert_refused(&login(&pod, "mallory", &generated(&pod, "alice")), "unknown user").await;
    assert_refused(&pod.tls(8883), "anonymous").await;

    // A brought password (Secret with stringData) works.
    drop(connect_ok(&login(&pod, "carol", CAROL), "carol with her brought password").await);

    // A weak brought password is reported by `moat render`, is not in the password file, and
    // the user cannot log in with it.
    assert!(
        pod.r.stderr.contains(
            "warning: MqttUser dave is not in effect: dave: password does not meet the broker's password policy"
        ),
        "moat render did not warn about dave:\n{}",
        pod.r.stderr
    );
    assert!(!pod.r.stderr.contains("carol"), "carol was reported:\n{}", pod.r.stderr);
    assert!(!installed.lines().any(|l| l.starts_with("dave:")), "dave is in the password file");
    assert!(!std::fs::read_to_string(pod.r.bundle.join("passwd")).unwrap().contains("dave:"));
    assert!(!pod.r.bundle.join("clients/dave").exists(), "credentials were written for dave");
    assert_refused(&login(&pod, "dave", DAVE), "dave with his weak password").await;
    assert!(pod.broker.wait_log(0, "u'carol'", WAIT), "{}", pod.broker.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_password_reaches_the_broker_through_the_agent() {
    let mut pod = pod();
    let pid = pod.broker.pid();
    let old = generated(&pod, "alice");
    let bob = ("bob".to_string(), generated(&pod, "bob"));
    let carol = ("carol".to_string(), CAROL.to_string());
    let mut alice_session = connect_ok(&login(&pod, "alice", &old), "alice before the change").await;
    let mut bob_session = connect_ok(&login(&pod, &bob.0, &bob.1), "bob before the change").await;

    let new = moat::render::passwd::generate_password(32);
    let files = shard_files(&pod.r, "plant-a", &[("alice".to_string(), new.clone()), bob.clone(), carol], 1000);
    let installed_before = std::fs::read_to_string(pod.run.join("passwd")).unwrap();
    pod.volumes.passwd.write(&files);
    pod.wait_reload();

    // Only alice's line changed (bob's and carol's hashes were reused).
    let installed = std::fs::read_to_string(pod.run.join("passwd")).unwrap();
    let changed: Vec<&str> = installed.lines().filter(|l| !installed_before.lines().any(|b| b == *l)).collect();
    assert_eq!(changed.len(), 1, "{installed}");
    assert!(changed[0].starts_with("alice:"));

    drop(connect_ok(&login(&pod, "alice", &new), "alice with her new password").await);
    assert_refused(&login(&pod, "alice", &old), "alice with her old password").await;
    // Mosquitto re-authenticates live sessions on reload: alice's old session is closed, bob's
    // (unchanged password) keeps working.
    assert!(alice_session.wait_closed(WAIT).await.is_some(), "alice's session with the old password survived");
    bob_session.subscribe_granted("home/bob/#").await;
    assert!(accepted(&bob_session.publish("home/bob/x", b"1").await));
    assert!(bob_session.expect_message("home/bob/x", b"1", WAIT).await, "bob's session stopped working");
    assert_eq!(pod.broker.pid(), pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_user_password_file_is_loaded_through_the_agent() {
    let mut pod = pod();
    let pid = pod.broker.pid();
    // Long (valid) usernames, so the file needs more than one shard Secret.
    let users: Vec<(String, String)> = (0..1000)
        .map(|i| {
            (
                format!("device-{i:04}.line-{}.plant-a.factory.example.com@{}", i % 7, "x".repeat(48)),
                moat::render::passwd::generate_password(32),
            )
        })
        .collect();
    assert!(users.iter().all(|(u, _)| moat::validate::username(u).is_ok()));
    let key = vec![7u8; 32];
    let assembly = moat::render::passwd::assemble(&users, &Default::default(), 10, &key).unwrap();
    assert_eq!(assembly.hashes_computed, 1000);
    let shards = moat::render::passwd::shard(&assembly.entries).unwrap();
    assert!(shards.len() >= 2, "expected several shards, got {}", shards.len());
    let mut files = std::collections::BTreeMap::new();
    for (i, s) in shards.iter().enumerate() {
        files.insert(format!("{i}/passwd"), s.passwd.clone().into_bytes());
        files.insert(format!("{i}/manifest"), s.manifest.clone().into_bytes());
    }
    let log_before = pod.broker.log().len();
    pod.volumes.passwd.write(&files);
    pod.wait_reload();
    let installed = std::fs::read_to_string(pod.run.join("passwd")).unwrap();
    // The agent concatenates the shards in order: the same lines as the unsharded file.
    let mut lines: Vec<&str> = installed.lines().collect();
    lines.sort_unstable();
    let expected = assembly.passwd_text();
    let mut expected: Vec<&str> = expected.lines().collect();
    expected.sort_unstable();
    assert!(lines == expected, "the installed file differs from the assembled users");
    let reload_log = pod.broker.log()[log_before..].to_string();
    assert!(!reload_log.contains("Error"), "the broker complained about the password file:\n{reload_log}");

    // A sample connects (first, last and every 97th); a wrong password is still refused; the
    // users of the previous file are gone.
    for (user, password) in users.iter().step_by(97).chain(users.last()) {
        drop(connect_ok(&login(&pod, user, password), user).await);
    }
    assert_refused(&login(&pod, &users[500].0, &users[501].1), "another user's password").await;
    assert_refused(&login(&pod, "alice", &generated(&pod, "alice")), "alice after she was removed").await;
    assert_eq!(pod.broker.pid(), pid);
}
