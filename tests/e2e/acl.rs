//! ACLs against a real Mosquitto with real clients: delivery of allowed publishes, refusal of
//! denied ones, SUBSCRIBE not being checked, `%u` isolation, `$SYS`, revocation on a live
//! subscription through `moat agent`, and a bounded fuzz test of hostile (valid) rules.

use std::collections::BTreeMap;
use std::time::Duration;

use moat::crd::{AclAccess, AclRule};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::harness::*;

const ACL: &[&str] = &["tests/e2e/fixtures/broker-acl.yaml"];
const WAIT: Duration = Duration::from_secs(5);
/// How long to look for a message that must not arrive, after a control subscriber already
/// received a later publish from the same client (Mosquitto handles a client's packets in order,
/// so a forbidden delivery would have come first).
const QUIET: Duration = Duration::from_millis(200);

fn pod() -> Pod {
    Pod::start(render(ACL, &[8883]), "plant-c", &[8883], &[])
}

async fn session(pod: &Pod, user: &str) -> Session {
    let password = pod.r.client_file(user, "password");
    connect_ok(&Conn { credentials: Some((user.to_string(), password)), ..pod.tls(8883) }, user).await
}

fn topics(messages: &[(String, Vec<u8>)]) -> Vec<&str> {
    messages.iter().map(|(t, _)| t.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_publishes_are_delivered_and_denied_ones_are_refused_and_dropped() {
    let pod = pod();
    let mut alice = session(&pod, "alice").await;
    let mut bob = session(&pod, "bob").await;
    // bob may read all of public/#, so only alice's write grant stands between him and public/secret.
    bob.subscribe_granted("public/#").await;

    assert!(accepted(&alice.publish("public/news", b"n1").await));
    assert!(bob.expect_message("public/news", b"n1", WAIT).await, "an allowed publish was not delivered");

    // Denied by alice's `deny public/secret/#`: v5 PUBACK NotAuthorized, nothing delivered.
    assert_eq!(alice.publish("public/secret/plans", b"s").await, puback_not_authorized());
    // bob may only read: his publish is refused too.
    assert_eq!(bob.publish("public/news", b"forged").await, puback_not_authorized());
    assert!(accepted(&alice.publish("public/after", b"n2").await));
    assert!(bob.expect_message("public/after", b"n2", WAIT).await);
    let seen = bob.drain(QUIET).await;
    assert!(seen.is_empty(), "unexpected deliveries: {:?}", topics(&seen));
}

/// Mosquitto's acl_file backend does not check SUBSCRIBE (it returns success for every
/// subscription); it enforces READ per message on delivery. So a subscription to a topic the
/// user may not read is acknowledged with a granted QoS, and then nothing is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_to_an_unreadable_topic_succeeds_but_delivers_nothing() {
    let pod = pod();
    let mut bob = session(&pod, "bob").await;
    let mut wide = session(&pod, "wide").await;
    let codes = bob.subscribe("private/#").await;
    assert!(granted(&codes), "expected Mosquitto to grant the SUBSCRIBE (acl_file does not check it): {codes:?}");
    wide.subscribe_granted("private/#").await;

    assert!(accepted(&wide.publish("private/diary", b"secret").await));
    assert!(wide.expect_message("private/diary", b"secret", WAIT).await, "the control subscriber got nothing");
    let seen = bob.drain(QUIET).await;
    assert!(seen.is_empty(), "bob read a topic he may not read: {:?}", topics(&seen));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_u_patterns_isolate_users_from_each_other() {
    let pod = pod();
    let mut alice = session(&pod, "alice").await;
    let mut bob = session(&pod, "bob").await;
    alice.subscribe_granted("home/alice/#").await;
    bob.subscribe_granted("home/bob/#").await;
    // bob's subscription to alice's tree is acknowledged (not checked) ...
    bob.subscribe_granted("home/alice/#").await;

    assert!(accepted(&alice.publish("home/alice/lights", b"on").await));
    assert!(alice.expect_message("home/alice/lights", b"on", WAIT).await, "alice does not own home/alice");
    // ... but delivers nothing of it.
    assert!(accepted(&bob.publish("home/bob/door", b"shut").await));
    assert!(bob.expect_message("home/bob/door", b"shut", WAIT).await, "bob does not own home/bob");
    let seen = bob.drain(QUIET).await;
    assert!(seen.is_empty(), "bob read alice's topics: {:?}", topics(&seen));
    // Neither may write into the other's tree.
    assert_eq!(bob.publish("home/alice/lights", b"off").await, puback_not_authorized());
    assert_eq!(alice.publish("home/bob/door", b"open").await, puback_not_authorized());
    let seen = alice.drain(QUIET).await;
    assert!(seen.is_empty(), "bob wrote into alice's tree: {:?}", topics(&seen));
}

/// Mosquitto 2.0 looks at a user's own rules (MqttAcls listing the user: `user` blocks) first, where
/// a matching Deny refuses and a matching grant allows, and only then at the `allUsers` rules
/// (`pattern` lines). So an `allUsers` Deny overrides `allUsers` grants, but not a grant of an
/// MqttAcl that lists the user (docs/security-guide.md, ACL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_all_users_deny_beats_all_users_grants_but_not_a_per_user_grant() {
    let pod = pod();
    let mut alice = session(&pod, "alice").await; // home/%u/# via allUsers
    let mut wide = session(&pod, "wide").await; // readwrite # via an MqttAcl listing her
    assert!(accepted(&alice.publish("home/alice/lights", b"on").await), "control: alice owns home/alice");
    assert_eq!(
        alice.publish("home/alice/locked/door", b"open").await,
        puback_not_authorized(),
        "the allUsers Deny did not beat the allUsers grant"
    );
    wide.subscribe_granted("home/+/locked/#").await;
    let reason = wide.publish("home/alice/locked/door", b"open").await;
    assert!(accepted(&reason), "expected wide's own grant to win over the allUsers Deny, got {reason}");
    assert!(wide.expect_message("home/alice/locked/door", b"open", WAIT).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_does_not_reach_sys_but_an_explicit_sys_grant_does() {
    let pod = pod();
    let mut wide = session(&pod, "wide").await; // readwrite #
    let mut sysreader = session(&pod, "sysreader").await; // read $SYS/broker/uptime
    wide.subscribe_granted("$SYS/#").await;
    sysreader.subscribe_granted("$SYS/#").await;

    // sys_interval 1: two uptime messages arrive within a few seconds; the retained
    // $SYS/broker/version (delivered at subscribe time if readable) never does.
    for _ in 0..2 {
        let (topic, _) = sysreader.next_message(WAIT).await.expect("no $SYS message for the explicit grant");
        assert_eq!(topic, "$SYS/broker/uptime", "sysreader read beyond its grant");
    }
    let seen = wide.drain(QUIET).await;
    assert!(seen.is_empty(), "readwrite # reached $SYS: {:?}", topics(&seen));
    // '#' still works for ordinary topics (the control for the line above).
    wide.subscribe_granted("plant/#").await;
    assert!(accepted(&wide.publish("plant/line-1", b"x").await));
    assert!(wide.expect_message("plant/line-1", b"x", WAIT).await);
    // And nobody may write $SYS.
    assert_eq!(wide.publish("$SYS/broker/uptime", b"0 seconds").await, puback_not_authorized());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_acl_revokes_access_on_a_live_subscription() {
    let mut pod = pod();
    let pid = pod.broker.pid();
    let mut alice = session(&pod, "alice").await;
    let mut bob = session(&pod, "bob").await;
    alice.subscribe_granted("public/#").await;
    bob.subscribe_granted("public/#").await;
    assert!(accepted(&alice.publish("public/a", b"1").await));
    assert!(bob.expect_message("public/a", b"1", WAIT).await, "bob did not read public/a before the removal");

    // Delete MqttAcl bob-public: the ACL is re-rendered by the pure renderer without bob's
    // rules and delivered through the agent.
    let parsed = moat::render::acl::parse(&std::fs::read_to_string(pod.run.join("acl")).unwrap()).unwrap();
    let mut users = parsed.users.clone();
    assert_eq!(users.remove("bob"), Some(vec![AclRule { topic: "public/#".into(), access: AclAccess::Read }]));
    let acl = moat::render::acl::render(&users, &parsed.patterns).unwrap();
    pod.volumes.write_acl(&acl);
    pod.wait_reload();

    assert!(accepted(&alice.publish("public/b", b"2").await));
    assert!(alice.expect_message("public/b", b"2", WAIT).await, "the control subscriber got nothing");
    let seen = bob.drain(QUIET).await;
    assert!(seen.is_empty(), "bob's live subscription still delivers: {:?}", topics(&seen));
    assert!(!bob.is_closed(), "bob was disconnected instead of losing access");
    // His own tree (pattern rule) still works.
    bob.subscribe_granted("home/bob/#").await;
    assert!(accepted(&bob.publish("home/bob/x", b"3").await));
    assert!(bob.expect_message("home/bob/x", b"3", WAIT).await);
    assert_eq!(pod.broker.pid(), pid);
}

// ---------------------------------------------------------------------------------------------
// Fuzz: hostile but valid usernames and topics.

/// One generated ACL input.
#[derive(Clone, Debug)]
struct Case {
    users: BTreeMap<String, Vec<AclRule>>,
    patterns: Vec<AclRule>,
}

/// Characters a topic level may hold that are awkward for line-based, space-separated files,
/// shells, C strings and UTF-8 handling (none is whitespace, a control character or `+#/`).
const LEVEL_CHARS: &[char] = &[
    'a', 'z', 'A', '0', '9', '-', '_', '.', '%', '$', '\\', '"', '\'', '`', ':', ';', '*', '!', '?', '&', '|', '<',
    '>', '(', ')', '[', ']', '{', '}', '=', '~', '^', ',', '@', 'é', 'ß', '中', '🦀', '\u{a0}', '\u{2028}', '\u{feff}',
    '\u{85}',
];

fn level() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(LEVEL_CHARS), 1..6).prop_map(|c| c.into_iter().collect())
}

fn topic(all_users: bool) -> impl Strategy<Value = String> {
    let lvl = if all_users {
        prop_oneof![6 => level(), 2 => Just("+".to_string()), 1 => Just("%u".to_string()), 1 => Just("%c".to_string())]
            .boxed()
    } else {
        prop_oneof![6 => level(), 2 => Just("+".to_string())].boxed()
    };
    (prop::collection::vec(lvl, 1..5), any::<bool>(), 0u8..10).prop_map(|(levels, hash, sys)| {
        let mut t = levels.join("/");
        if sys == 0 {
            t = format!("$SYS/{t}");
        }
        if hash {
            t.push_str("/#");
        }
        t
    })
}

fn access() -> impl Strategy<Value = AclAccess> {
    prop::sample::select(vec![AclAccess::Read, AclAccess::Write, AclAccess::ReadWrite, AclAccess::Deny])
}

fn rule(all_users: bool) -> impl Strategy<Value = AclRule> {
    prop_oneof![9 => (topic(all_users), access()), 1 => (Just("#".to_string()), access())].prop_map(
        |(topic, access)| {
            // $SYS only with Read or Deny (validation); everything else keeps the drawn access.
            let access = if topic.starts_with('$') && matches!(access, AclAccess::Write | AclAccess::ReadWrite) {
                AclAccess::Read
            } else {
                access
            };
            AclRule { topic, access }
        },
    )
}

fn username() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[A-Za-z0-9][A-Za-z0-9._@-]{0,20}",
        1 => prop::sample::select(vec!["user", "topic", "pattern", "deny", "readwrite", "0", "a@b.c", "x..y"])
            .prop_map(str::to_string),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::btree_map(username(), prop::collection::vec(rule(false), 0..4), 1..4),
        prop::collection::vec(rule(true), 0..3),
    )
        .prop_map(|(users, patterns)| Case { users, patterns })
}

/// MQTT topic matching as Mosquitto does it (`mosquitto_topic_matches_sub`), for the fuzz oracle.
fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') != filter.starts_with('$') {
        return false;
    }
    let (f, t): (Vec<&str>, Vec<&str>) = (filter.split('/').collect(), topic.split('/').collect());
    for (i, level) in f.iter().enumerate() {
        match *level {
            "#" => return true,
            "+" if i < t.len() => {}
            l if i < t.len() && l == t[i] => {}
            _ => return false,
        }
    }
    f.len() == t.len()
}

/// A concrete topic matched by `filter` for client `user` (client id = username).
fn instance(filter: &str, user: &str) -> String {
    filter
        .split('/')
        .map(|l| match l {
            "+" | "#" => "x",
            "%u" | "%c" => user,
            l => l,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether Mosquitto accepts `topic` as a PUBLISH topic (its UTF-8 check refuses C1 controls and
/// non-characters, which moat's validation lets through: such a rule is harmless but can never
/// match a message).
fn publishable(topic: &str) -> bool {
    topic.chars().all(|c| {
        let c = c as u32;
        !(0x80..=0x9f).contains(&c) && !(0xfdd0..=0xfdef).contains(&c) && c & 0xfffe != 0xfffe
    })
}

/// The user's own rules and the pattern rules with `%u`/`%c` expanded (client id = username).
fn effective(case: &Case, user: &str) -> (Vec<AclRule>, Vec<AclRule>) {
    let own = case.users.get(user).cloned().unwrap_or_default();
    let expand =
        |t: &str| t.split('/').map(|l| if l == "%u" || l == "%c" { user } else { l }).collect::<Vec<_>>().join("/");
    let patterns = case.patterns.iter().map(|r| AclRule { topic: expand(&r.topic), access: r.access }).collect();
    (own, patterns)
}

/// Whether Mosquitto 2.0 lets `user` publish to `topic`, in its order of evaluation
/// (`mosquitto_acl_check_default`): the user's own denials, the user's own grants, then pattern
/// denials, then pattern grants; nothing matched means denied. (So a user's own grant wins over
/// an allUsers Deny.)
fn expected_write(case: &Case, user: &str, topic: &str) -> bool {
    let (own, patterns) = effective(case, user);
    for tier in [own, patterns] {
        let hits: Vec<&AclRule> = tier.iter().filter(|r| matches(&r.topic, topic)).collect();
        if hits.iter().any(|r| r.access == AclAccess::Deny) {
            return false;
        }
        if hits.iter().any(|r| matches!(r.access, AclAccess::Write | AclAccess::ReadWrite)) {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_valid_rules_render_parse_back_and_load_into_mosquitto() {
    let samples = std::sync::Mutex::new(Vec::<(Case, String)>::new());
    let count = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config { cases: 200, failure_persistence: None, ..Config::default() });
    runner
        .run(&case(), |case| {
            for (user, rules) in &case.users {
                prop_assume!(moat::validate::username(user).is_ok());
                for r in rules {
                    prop_assume!(moat::validate::topic_filter(&r.topic, false, r.access).is_ok());
                }
            }
            for r in &case.patterns {
                prop_assume!(moat::validate::topic_filter(&r.topic, true, r.access).is_ok());
            }
            let text = moat::render::acl::render(&case.users, &case.patterns)
                .map_err(|e| TestCaseError::fail(format!("render refused valid input: {e}")))?;
            // No line can be anything but a comment, a blank, or one of the three keywords.
            for line in text.lines() {
                prop_assert!(
                    line.is_empty()
                        || line.starts_with('#')
                        || line.starts_with("user ")
                        || line.starts_with("topic ")
                        || line.starts_with("pattern "),
                    "unexpected line {line:?}"
                );
            }
            // The parser (the agent's check, mirroring Mosquitto) reads back exactly the input.
            let parsed = moat::render::acl::parse(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(parsed.rule_set(), moat::render::acl::RuleSet::new(&case.users, &case.patterns));
            prop_assert!(parsed.anonymous.is_empty());
            if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst).is_multiple_of(20) {
                samples.lock().unwrap().push((case.clone(), text));
            }
            Ok(())
        })
        .unwrap();
    let samples = samples.into_inner().unwrap();
    assert!(samples.len() >= 10, "only {} samples", samples.len());
    let (mut checked_allow, mut checked_deny) = (0, 0);
    for (case, text) in &samples {
        let (allow, deny) = load_into_mosquitto(case, text).await;
        checked_allow += allow;
        checked_deny += deny;
    }
    // The behavioural checks must actually have run on a good share of the samples.
    assert!(
        checked_allow >= 3 && checked_deny >= 5,
        "only {checked_allow} allowed / {checked_deny} denied publishes checked"
    );
}

/// Starts a fresh Mosquitto with the ACL (a parse error is fatal at startup), reloads it (an
/// error would be logged and fail open), then checks one allowed and one ungranted publish per
/// user where the oracle can tell. Returns how many allowed / denied publishes were checked.
async fn load_into_mosquitto(case: &Case, acl: &str) -> (usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_offset(&[0]);
    let password = "fuzz-Password-0123456789";
    let passwd: String = case
        .users
        .keys()
        .map(|u| moat::render::passwd::hash_line(u, password, 1, &[7u8; 12]).unwrap() + "\n")
        .collect();
    std::fs::write(dir.path().join("passwd"), passwd).unwrap();
    std::fs::write(dir.path().join("acl"), acl).unwrap();
    std::fs::write(
        dir.path().join("mosquitto.conf"),
        format!(
            "allow_anonymous false\npassword_file ./passwd\nacl_file ./acl\nlog_dest stderr\n\
             persistence false\nlistener {port} 127.0.0.1\n"
        ),
    )
    .unwrap();
    let broker = Broker::start(dir.path(), &[port], &[]);
    broker.reload();

    let (mut allowed, mut denied) = (0, 0);
    for user in case.users.keys() {
        let conn = Conn {
            port,
            credentials: Some((user.clone(), password.to_string())),
            client_id: Some(user.clone()),
            ..Default::default()
        };
        let mut s = connect_ok(&conn, &format!("{user} on the fuzz broker")).await;
        let (own, patterns) = effective(case, user);
        let grant = own
            .iter()
            .chain(&patterns)
            .filter(|r| matches!(r.access, AclAccess::Write | AclAccess::ReadWrite))
            .map(|r| instance(&r.topic, user))
            .find(|t| publishable(t) && expected_write(case, user, t));
        if let Some(t) = grant {
            let reason = s.publish(&t, b"fuzz").await;
            assert!(accepted(&reason), "{user} may write {t:?} per\n{acl}\nbut got {reason}");
            allowed += 1;
        }
        let ungranted = format!("moat-fuzz-{:08x}/x", rand::random::<u32>());
        if !own.iter().chain(&patterns).any(|r| matches(&r.topic, &ungranted)) {
            assert_eq!(s.publish(&ungranted, b"fuzz").await, puback_not_authorized(), "{user}: default deny\n{acl}");
            denied += 1;
        }
    }
    // The connections above were served after the reload finished (one thread): any complaint
    // about the ACL is in the log by now.
    let log = broker.log();
    assert!(!log.contains("Error") && !log.contains("Invalid"), "Mosquitto refused the ACL:\n{acl}\n---\n{log}");
    (allowed, denied)
}
