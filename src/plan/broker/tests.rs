use std::time::Duration;

use super::*;
use crate::model::tests::minimal_spec;
use crate::render::config::{ConfigPaths, ListenerOverrides};

fn now() -> Timestamp {
    "2026-03-01T00:00:00Z".parse().unwrap()
}

fn model() -> BrokerModel {
    model_with(|_| {})
}

fn model_with(f: impl FnOnce(&mut crate::crd::MqttBrokerSpec)) -> BrokerModel {
    let mut spec = minimal_spec();
    spec.listeners.push(crate::crd::broker::Listener {
        name: "mtls".into(),
        port: 8884,
        authentication: crate::crd::broker::ListenerAuthentication::Certificate,
        ..spec.listeners[0].clone()
    });
    f(&mut spec);
    BrokerModel::from_spec("plant-a", "iot", &spec).unwrap()
}

fn user(name: &str, spec: serde_json::Value, created: &str) -> MqttUser {
    user_uid(name, &format!("uid-{name}"), spec, created)
}

fn user_uid(name: &str, uid: &str, spec: serde_json::Value, created: &str) -> MqttUser {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "mqtt.moat.dev/v1alpha1", "kind": "MqttUser",
        "metadata": {"name": name, "namespace": "iot", "creationTimestamp": created, "uid": uid, "generation": 1},
        "spec": spec,
    }))
    .unwrap()
}

fn cert_user(name: &str, extra: serde_json::Value, created: &str) -> MqttUser {
    let mut spec = serde_json::json!({"brokerRef": {"name": "plant-a"}, "authentication": {"certificate": {}}});
    merge(&mut spec, extra);
    user(name, spec, created)
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b) {
        for (k, v) in b {
            a.insert(k, v);
        }
    }
}

fn acl(name: &str, spec: serde_json::Value) -> MqttAcl {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "mqtt.moat.dev/v1alpha1", "kind": "MqttAcl",
        "metadata": {"name": name, "namespace": "iot", "generation": 3},
        "spec": spec,
    }))
    .unwrap()
}

fn found(p: &str, generated: bool) -> PasswordLookup {
    PasswordLookup::Found { password: Password(p.into()), generated }
}

fn view<'a>(u: &'a MqttUser, password: PasswordLookup, certificate: Option<Issued>) -> UserView<'a> {
    UserView { user: u, password, certificate, certificate_blocked: None }
}

fn run_with(m: &BrokerModel, users: &[UserView], acls: &[&MqttAcl], existing: Existing, at: Timestamp) -> BrokerPlan {
    plan(PlanInput {
        model: m,
        users,
        acls,
        existing,
        paths: &ConfigPaths::in_pod(),
        overrides: &ListenerOverrides::default(),
        extra_ips: &[],
        requests: &Default::default(),
        attestation: true,
        now: at,
    })
    .unwrap()
}

fn run(users: &[UserView], acls: &[&MqttAcl], existing: Existing, at: Timestamp) -> BrokerPlan {
    run_with(&model(), users, acls, existing, at)
}

fn holder<'a>(p: &'a BrokerPlan, name: &str) -> &'a Holder {
    match &p.verdicts[name].verdict {
        Verdict::Holder(h) => h,
        other => panic!("{name} is not a holder: {other:?}"),
    }
}

/// The objects of a plan, with a fixed agent image, version and operator and no firewalls.
fn objects_of(m: &BrokerModel, p: &BrokerPlan) -> crate::plan::objects::BrokerObjects {
    let operator =
        crate::render::network::OperatorIdentity { namespace: "moat-system".into(), pod_labels: Default::default() };
    let inputs = crate::plan::objects::ObjectInputs {
        agent_image: "moat",
        version: "2.0.22",
        partition: 0,
        firewalls: &[],
        operator: &operator,
        metrics_namespaces: &[],
    };
    crate::plan::objects::broker_objects(m, p, &inputs).unwrap()
}

fn crl_serials(p: &BrokerPlan) -> Vec<String> {
    crate::pki::parse_crls(&p.crl_pem).unwrap().into_iter().flat_map(|c| c.revoked_serials).collect()
}

fn serial(i: &Issued) -> String {
    crate::pki::inspect(&i.cert_pem).unwrap().serial_hex
}

fn parsed_acl(p: &BrokerPlan) -> crate::render::acl::ParsedAcl {
    crate::render::acl::parse(&p.acl_text()).unwrap()
}

fn plus(t: Timestamp, secs: u64) -> Timestamp {
    after(t, Duration::from_secs(secs))
}

#[test]
fn verdicts_cover_generated_weak_conflicting_and_invalid_users() {
    let a = user("sensor-1", serde_json::json!({"brokerRef": {"name": "plant-a"}}), "2026-01-01T00:00:00Z");
    let weak = user(
        "weak",
        serde_json::json!({"brokerRef": {"name": "plant-a"}, "authentication": {"password": {"secretRef": {"name": "s"}}}}),
        "2026-01-01T00:00:00Z",
    );
    let older = user(
        "first",
        serde_json::json!({"brokerRef": {"name": "plant-a"}, "username": "shared"}),
        "2026-01-01T00:00:00Z",
    );
    let newer = user(
        "second",
        serde_json::json!({"brokerRef": {"name": "plant-a"}, "username": "shared"}),
        "2026-01-02T00:00:00Z",
    );
    let bad =
        user("bad", serde_json::json!({"brokerRef": {"name": "plant-a"}, "username": "a:b"}), "2026-01-01T00:00:00Z");
    let views = vec![
        view(&a, found("generated-password-0123456789ABCDEF", true), None),
        view(&weak, found("password", false), None),
        view(&older, found("Another-Good-Passw0rd-For-Them1", false), None),
        view(&newer, found("Third-Good-Passw0rd-For-Them2!", false), None),
        view(&bad, found("irrelevant-Passw0rd-Long-Enough", false), None),
    ];
    let p = run(&views, &[], Existing::default(), now());
    assert_eq!(holder(&p, "sensor-1").password, Cred::InEffect);
    assert_eq!(p.verdicts["sensor-1"].verdict.in_effect(), Some("sensor-1"));
    assert_eq!(holder(&p, "weak").password, Cred::Weak);
    assert_eq!(p.verdicts["weak"].verdict.in_effect(), None);
    assert_eq!(holder(&p, "first").password, Cred::InEffect);
    assert_eq!(
        p.verdicts["second"].verdict,
        Verdict::UsernameConflict { username: "shared".into(), holder: "first".into() }
    );
    assert!(matches!(&p.verdicts["bad"].verdict, Verdict::Invalid(e) if e.field == "spec.username"));
    let passwd: String = p.shards.iter().map(|s| s.passwd.as_str()).collect();
    let users: Vec<&str> = passwd.lines().map(|l| l.split(':').next().unwrap()).collect();
    assert_eq!(
        users,
        vec!["_moat-canary-1", "_moat-canary-2", "sensor-1", "shared"],
        "weak, conflicting and invalid users never reach the file (the canary logins do)"
    );
    assert!(!passwd.contains("password"), "no clear-text password in the file");
    assert_eq!(p.hashes_computed, 4, "two users and two canary logins");
    // a verdict never says why a brought password is weak (that would depend on its value)
    assert!(!format!("{:?}", p.verdicts).contains("short"));
}

#[test]
fn a_second_plan_with_the_stored_material_changes_nothing_and_hashes_nothing() {
    let a = user("sensor-1", serde_json::json!({"brokerRef": {"name": "plant-a"}}), "2026-01-01T00:00:00Z");
    let gw = cert_user("gw", serde_json::json!({}), "2026-01-01T00:00:00Z");
    let first_views = vec![
        view(&a, found("generated-password-0123456789ABCDEF", true), None),
        view(&gw, PasswordLookup::NotUsed, None),
    ];
    let first = run(&first_views, &[], Existing::default(), now());
    assert_eq!(first.ca_transition, Some(CaTransition::Created));
    assert_eq!(first.server_renewal, Some(RenewReason::Missing));
    assert_eq!(first.client_certs["gw"].renewal, Some(RenewReason::Missing));
    let issued = first.client_certs["gw"].issued.clone();
    let views = vec![
        view(&a, found("generated-password-0123456789ABCDEF", true), None),
        view(&gw, PasswordLookup::NotUsed, Some(issued.clone())),
    ];
    let mut previous = first.clone();
    let mut shards = first.shards.clone();
    for hour in 1..=48 {
        let later = run(&views, &[], previous.to_existing().unwrap(), plus(now(), hour * 3600));
        // the canary logins alone are rotated, once a day (half an audit interval after it)
        if hour == 25 {
            assert_eq!(later.hashes_computed, 2);
            assert_eq!(later.canary_logins_replaced, previous.canary_logins);
            assert_ne!(later.shards, shards);
            shards = later.shards.clone();
        } else {
            assert_eq!((later.hashes_computed, &later.canary_logins_replaced), (0, &None), "hour {hour}");
        }
        assert_eq!(later.ca_transition, None);
        assert_eq!(later.server_renewal, None);
        assert_eq!(later.ca, first.ca);
        assert_eq!(later.server, first.server);
        assert_eq!(later.crl_pem, first.crl_pem);
        assert_eq!(later.shards, shards);
        assert_eq!(later.acl_parts, first.acl_parts);
        assert_eq!(later.config, first.config);
        assert_eq!(later.client_certs["gw"], ClientCert { issued: issued.clone(), renewal: None });
        assert_eq!(later.ledger, first.ledger);
        assert_eq!(later.canary, first.canary);
        assert!(later.newly_revoked.is_empty());
        previous = later;
    }
}

/// The revoked canary: in the CRL from the plan that issued it, kept while valid, renewed 30 days
/// before it expires (the old one stays revoked), and absent without a certificate listener.
#[test]
fn the_canary_is_revoked_when_issued_and_renewed_before_it_expires() {
    let first = run(&[], &[], Existing::default(), now());
    let canary = first.canary.clone().expect("a canary for the certificate listener");
    let info = crate::pki::inspect(&canary.cert_pem).unwrap();
    assert_eq!(info.subject_cn.as_deref(), Some(CANARY_USERNAME));
    assert!(crate::pki::signed_by(&canary.cert_pem, &first.ca.active.cert_pem));
    assert!(crl_serials(&first).contains(&serial(&canary)), "revoked in the plan that issued it");
    assert!(first.canary_issued_now);
    assert!(first.newly_revoked.is_empty(), "no MqttUser lost anything");
    assert!(first.next_event.is_some_and(|e| e <= plus(now(), 60 * 86_400)), "woken for its renewal");
    let data = ca_secret_data(&first);
    assert_eq!(ca_secret_extras(&data).unwrap().canary, Some(canary.clone()));

    let kept = run(&[], &[], first.to_existing().unwrap(), plus(now(), 59 * 86_400));
    assert_eq!(kept.canary, Some(canary.clone()));
    assert!(!kept.canary_issued_now);
    let renewed = run(&[], &[], kept.to_existing().unwrap(), plus(now(), 61 * 86_400));
    let next = renewed.canary.clone().unwrap();
    assert!(renewed.canary_issued_now);
    assert_ne!(serial(&next), serial(&canary));
    assert!(crl_serials(&renewed).contains(&serial(&next)) && crl_serials(&renewed).contains(&serial(&canary)));

    let no_mtls = model_with(|s| s.listeners.truncate(1));
    assert!(run_with(&no_mtls, &[], &[], Existing::default(), now()).canary.is_none());
}

/// Red team 2: the loser of a username conflict gets no certificate for it, and a certificate it
/// got while it held the username (an older claimant appeared later) is revoked, its identity cut.
#[test]
fn a_user_that_does_not_hold_its_username_gets_no_certificate_and_loses_an_earlier_one() {
    let alice = cert_user("alice", serde_json::json!({}), "2026-01-01T00:00:00Z");
    let mallory = cert_user("mallory", serde_json::json!({"username": "alice"}), "2026-01-02T00:00:00Z");
    let p = run(
        &[view(&alice, PasswordLookup::NotUsed, None), view(&mallory, PasswordLookup::NotUsed, None)],
        &[],
        Existing::default(),
        now(),
    );
    assert!(matches!(p.verdicts["mallory"].verdict, Verdict::UsernameConflict { .. }));
    assert!(!p.client_certs.contains_key("mallory"), "no certificate for CN=alice to mallory");
    assert!(p.client_certs.contains_key("alice"));

    // mallory alone first (the cache had not shown alice yet): it held the username ...
    let first = run(&[view(&mallory, PasswordLookup::NotUsed, None)], &[], Existing::default(), now());
    let stolen = first.client_certs["mallory"].issued.clone();
    // ... then alice, older, appears: mallory's certificate is revoked at once, the identity cut
    let later = run(
        &[view(&alice, PasswordLookup::NotUsed, None), view(&mallory, PasswordLookup::NotUsed, Some(stolen.clone()))],
        &[],
        first.to_existing().unwrap(),
        plus(now(), 5),
    );
    assert!(crl_serials(&later).contains(&serial(&stolen)));
    assert!(later.newly_revoked.iter().any(|(u, s, _)| u == "mallory" && *s == serial(&stolen)));
    assert!(!later.client_certs.contains_key("mallory"));
    // alice must wait until mallory's session has ended (pods restarted) before she gets CN=alice
    assert!(matches!(later.verdicts["alice"].verdict, Verdict::UsernameQuarantined { until: None, .. }));
    assert_eq!(later.blocked_identities, vec!["alice".to_string()]);
    assert_eq!(parsed_acl(&later).users["alice"].len(), 2, "the cut identity is denied every topic");
}

/// Red team 3: a password+certificate user whose password becomes weak keeps its per-user rules
/// (its Deny rules above all) while its certificate still logs in.
#[test]
fn dropping_out_of_the_password_file_never_widens_what_the_certificate_can_do() {
    let u = user(
        "dual",
        serde_json::json!({"brokerRef": {"name": "plant-a"},
            "authentication": {"password": {"secretRef": {"name": "s"}}, "certificate": {}}}),
        "2026-01-01T00:00:00Z",
    );
    let own = acl(
        "own",
        serde_json::json!({"brokerRef": {"name": "plant-a"}, "users": ["dual"],
            "rules": [{"topic": "plant/secret/#", "access": "Deny"}, {"topic": "plant/a/#", "access": "Read"}]}),
    );
    let everyone = acl(
        "everyone",
        serde_json::json!({"brokerRef": {"name": "plant-a"}, "allUsers": true, "rules": [{"topic": "plant/#", "access": "Read"}]}),
    );
    let strong = run(
        &[view(&u, found("Str0ng-and-Long-Password-Here!", false), None)],
        &[&own, &everyone],
        Existing::default(),
        now(),
    );
    let cert = strong.client_certs["dual"].issued.clone();
    let weak = run(
        &[view(&u, found("password", false), Some(cert.clone()))],
        &[&own, &everyone],
        strong.to_existing().unwrap(),
        plus(now(), 60),
    );
    let h = holder(&weak, "dual");
    assert_eq!((h.password.clone(), h.certificate.clone()), (Cred::Weak, Cred::InEffect));
    let passwd: String = weak.shards.iter().map(|s| s.passwd.as_str()).collect();
    assert!(!passwd.contains("dual:"), "the weak password is not in the file");
    let rules = &parsed_acl(&weak).users["dual"];
    assert!(rules.iter().any(|r| r.topic == "plant/secret/#" && r.access == AclAccess::Deny), "{rules:?}");
    assert!(!crl_serials(&weak).contains(&serial(&cert)), "the certificate itself stays valid");
}

/// Red team 6: every certificate moat issued and no longer stands behind is revoked: after a
/// renewal (once the overlap ends), when its Secret was deleted or edited, and when the user drops
/// certificate authentication.
#[test]
fn superseded_certificates_are_revoked() {
    let gw = cert_user(
        "gw",
        serde_json::json!({"authentication": {"certificate": {"validity": "48h", "renewBefore": "12h"}}}),
        "2026-01-01T00:00:00Z",
    );
    let first = run(&[view(&gw, PasswordLookup::NotUsed, None)], &[], Existing::default(), now());
    let c1 = first.client_certs["gw"].issued.clone();

    // renewal: the old certificate is retired, then revoked after the overlap
    let t = plus(now(), 37 * 3600);
    let renewed = run(&[view(&gw, PasswordLookup::NotUsed, Some(c1.clone()))], &[], first.to_existing().unwrap(), t);
    assert_eq!(renewed.client_certs["gw"].renewal, Some(RenewReason::RenewWindow));
    let c2 = renewed.client_certs["gw"].issued.clone();
    assert!(!crl_serials(&renewed).contains(&serial(&c1)), "clients get the overlap to switch");
    assert!(renewed.next_event.is_some_and(|e| e <= after(t, RENEWAL_OVERLAP)));
    let over = after(t, RENEWAL_OVERLAP);
    let retired =
        run(&[view(&gw, PasswordLookup::NotUsed, Some(c2.clone()))], &[], renewed.to_existing().unwrap(), over);
    assert!(crl_serials(&retired).contains(&serial(&c1)));
    assert!(retired.blocked_identities.is_empty(), "a renewal cuts no identity");

    // the Secret was deleted: the recorded certificate may have been copied; revoked, re-issued
    let lost = run(&[view(&gw, PasswordLookup::NotUsed, None)], &[], retired.to_existing().unwrap(), plus(over, 60));
    assert!(crl_serials(&lost).contains(&serial(&c2)));
    let c3 = lost.client_certs["gw"].issued.clone();
    assert_ne!(serial(&c3), serial(&c2));

    // the Secret was edited (another key): same
    let edited = Issued {
        cert_pem: c3.cert_pem.clone(),
        key_pem: crate::pki::new_ca("x", Duration::from_secs(86400 * 2), now()).unwrap().key_pem,
    };
    let after_edit =
        run(&[view(&gw, PasswordLookup::NotUsed, Some(edited))], &[], lost.to_existing().unwrap(), plus(over, 120));
    assert!(crl_serials(&after_edit).contains(&serial(&c3)));
    let c4 = after_edit.client_certs["gw"].issued.clone();

    // certificate authentication dropped: revoked, and no Secret content any more
    let pw_only = user("gw", serde_json::json!({"brokerRef": {"name": "plant-a"}}), "2026-01-01T00:00:00Z");
    let dropped = run(
        &[view(&pw_only, found("generated-password-0123456789ABCDEF", true), Some(c4.clone()))],
        &[],
        after_edit.to_existing().unwrap(),
        plus(over, 180),
    );
    assert!(crl_serials(&dropped).contains(&serial(&c4)));
    assert!(!dropped.client_certs.contains_key("gw"));
}

/// Red team 7: a deleted user's revoked certificate may keep a live session; its username is not
/// handed to a new MqttUser until that session has ended (pods restarted), or until the
/// certificate expires with `BlockUntilExpiry`.
#[test]
fn a_reused_username_waits_until_the_revoked_sessions_have_ended() {
    let old = cert_user("alice", serde_json::json!({}), "2026-01-01T00:00:00Z");
    let first = run(&[view(&old, PasswordLookup::NotUsed, None)], &[], Existing::default(), now());
    let c = first.client_certs["alice"].issued.clone();
    // deleted, and at once a new MqttUser alice (another uid) claims the username
    let new =
        user_uid("alice", "uid-alice-2", serde_json::json!({"brokerRef": {"name": "plant-a"}}), "2026-03-01T00:00:00Z");
    let t1 = plus(now(), 10);
    let gone = run(
        &[view(&new, found("generated-password-0123456789ABCDEF", true), None)],
        &[],
        first.to_existing().unwrap(),
        t1,
    );
    assert!(crl_serials(&gone).contains(&serial(&c)));
    assert!(matches!(gone.verdicts["alice"].verdict, Verdict::UsernameQuarantined { until: None, .. }));
    let passwd: String = gone.shards.iter().map(|s| s.passwd.as_str()).collect();
    assert!(!passwd.contains("alice:"), "the new user's password waits too");
    assert_eq!(gone.blocked_identities, vec!["alice".to_string()]);
    assert_eq!(gone.sessions_epoch, None, "a quiet period first (coalesces bulk deletions)");
    let due = gone.next_event.unwrap();
    assert!(due <= plus(t1, RESTART_QUIET.as_secs()));

    // the quiet period passes: moat asks for a restart
    let mut ex = gone.to_existing().unwrap();
    ex.sessions = Sessions { epoch: None, rolled_out: true };
    let asked = run(&[view(&new, found("generated-password-0123456789ABCDEF", true), None)], &[], ex, due);
    assert_eq!(asked.sessions_epoch, Some(due));
    assert!(matches!(asked.verdicts["alice"].verdict, Verdict::UsernameQuarantined { .. }));
    // rolling: still quarantined; rolled out: the username is handed over, the block lifted
    let mut ex = asked.to_existing().unwrap();
    ex.sessions = Sessions { epoch: Some(due), rolled_out: false };
    let rolling = run(&[view(&new, found("generated-password-0123456789ABCDEF", true), None)], &[], ex, plus(due, 5));
    assert!(matches!(rolling.verdicts["alice"].verdict, Verdict::UsernameQuarantined { .. }));
    let mut ex = rolling.to_existing().unwrap();
    ex.sessions = Sessions { epoch: Some(due), rolled_out: true };
    let done = run(&[view(&new, found("generated-password-0123456789ABCDEF", true), None)], &[], ex, plus(due, 30));
    assert_eq!(holder(&done, "alice").password, Cred::InEffect);
    assert!(done.blocked_identities.is_empty());
    assert!(crl_serials(&done).contains(&serial(&c)), "the certificate stays revoked until it expires");

    // BlockUntilExpiry: no restart, the username waits until the certificate expires
    let blocking = model_with(|s| s.security.revoked_sessions = crate::crd::broker::RevokedSessions::BlockUntilExpiry);
    let first = run_with(&blocking, &[view(&old, PasswordLookup::NotUsed, None)], &[], Existing::default(), now());
    let gone = run_with(
        &blocking,
        &[view(&new, found("generated-password-0123456789ABCDEF", true), None)],
        &[],
        first.to_existing().unwrap(),
        t1,
    );
    let expiry = crate::pki::inspect(&first.client_certs["alice"].issued.cert_pem).unwrap().not_after;
    assert_eq!(
        gone.verdicts["alice"].verdict,
        Verdict::UsernameQuarantined { username: "alice".into(), until: Some(expiry) }
    );
    assert_eq!(gone.sessions_epoch, None);
}

/// Red team 5: one MqttAcl cannot add more than its bound (it is invalid, and the users it lists
/// are denied everything: dropping it would drop its Deny rules), and the ACL file of 10,000
/// users with per-user rules is split into parts that each fit a Secret.
#[test]
fn acl_size_is_bounded_per_object_and_the_file_is_sharded() {
    let users: Vec<String> = (0..256).map(|i| format!("user-{i:03}")).collect();
    let rules: Vec<serde_json::Value> =
        (0..256).map(|i| serde_json::json!({"topic": format!("{}/{i}", "t".repeat(900)), "access": "Read"})).collect();
    let huge = acl("huge", serde_json::json!({"brokerRef": {"name": "plant-a"}, "users": users, "rules": rules}));
    let u0 = user("user-000", serde_json::json!({"brokerRef": {"name": "plant-a"}}), "2026-01-01T00:00:00Z");
    let deny = acl(
        "deny",
        serde_json::json!({"brokerRef": {"name": "plant-a"}, "users": ["user-000"], "rules": [{"topic": "a/#", "access": "Read"}]}),
    );
    let p = run(
        &[view(&u0, found("generated-password-0123456789ABCDEF", true), None)],
        &[&huge, &deny],
        Existing::default(),
        now(),
    );
    let o = p.acls.iter().find(|a| a.name == "huge").unwrap();
    assert!(o.invalid.as_ref().is_some_and(|e| e.message.contains("65536")), "{o:?}");
    let acl_file = p.acl_text();
    assert!(acl_file.len() < 4096, "the huge ACL added nothing");
    assert_eq!(parsed_acl(&p).users["user-000"], deny_all_rules(), "closed, not 'keep the other grants'");

    // 10,000 users, each with a per-user rule set
    let many: Vec<MqttUser> = (0..10_000)
        .map(|i| {
            user(&format!("u{i:05}"), serde_json::json!({"brokerRef": {"name": "plant-a"}}), "2026-01-01T00:00:00Z")
        })
        .collect();
    let views: Vec<UserView> =
        many.iter().map(|u| view(u, found("generated-password-0123456789ABCDEF", true), None)).collect();
    let acls: Vec<MqttAcl> = (0..10_000)
        .map(|i| {
            acl(
                &format!("a{i:05}"),
                serde_json::json!({"brokerRef": {"name": "plant-a"}, "users": [format!("u{i:05}")],
                "rules": [{"topic": format!("plant/a/devices/u{i:05}/telemetry/#"), "access": "Write"},
                          {"topic": format!("plant/a/devices/u{i:05}/commands/#"), "access": "Read"}]}),
            )
        })
        .collect();
    let refs: Vec<&MqttAcl> = acls.iter().collect();
    let m = model();
    let p = plan(PlanInput {
        model: &m,
        users: &views,
        acls: &refs,
        existing: Existing::default(),
        paths: &ConfigPaths::in_pod(),
        overrides: &ListenerOverrides::default(),
        extra_ips: &[],
        requests: &Default::default(),
        attestation: true,
        now: now(),
    })
    .unwrap();
    assert!(p.acl_parts.len() > 1, "one Secret would not hold it");
    assert!(
        p.acl_parts.iter().all(|part| part.text.len() + part.manifest.len() <= crate::render::shard::PART_MAX_BYTES)
    );
    let pairs: Vec<(&str, &str)> = p.acl_parts.iter().map(|x| (x.manifest.as_str(), x.text.as_str())).collect();
    let joined = crate::render::shard::join(&pairs).unwrap();
    assert_eq!(crate::render::acl::parse(&joined).unwrap().users.len(), 10_000);
}

#[test]
fn acl_rules_only_for_users_in_effect_and_patterns_for_all() {
    let a = user("sensor-1", serde_json::json!({"brokerRef": {"name": "plant-a"}}), "2026-01-01T00:00:00Z");
    let views = vec![view(&a, found("generated-password-0123456789ABCDEF", true), None)];
    let per_user = acl(
        "per-user",
        serde_json::json!({"brokerRef": {"name": "plant-a"}, "users": ["sensor-1", "ghost"],
        "rules": [{"topic": "plant/a/#", "access": "Read"}, {"topic": "#", "access": "ReadWrite"}]}),
    );
    let pattern = acl(
        "pattern",
        serde_json::json!({"brokerRef": {"name": "plant-a"}, "allUsers": true,
        "rules": [{"topic": "devices/%u/#", "access": "ReadWrite"}]}),
    );
    let p = run(&views, &[&per_user, &pattern], Existing::default(), now());
    let o = |n: &str| p.acls.iter().find(|a| a.name == n).unwrap().clone();
    assert_eq!(o("per-user").rule_lines, 2);
    assert_eq!(o("per-user").pending_users, vec!["ghost"]);
    assert!(o("per-user").warnings.iter().any(|w| matches!(w, RiskyGrant::WriteAll { .. })));
    assert_eq!(o("pattern").rule_lines, 1);
    let parsed = parsed_acl(&p);
    assert!(parsed.users.contains_key("sensor-1"));
    assert!(!parsed.users.contains_key("ghost"));
    assert_eq!(parsed.patterns.len(), 1);
}

#[test]
fn an_invalid_allusers_acl_suspends_every_pattern_rule() {
    let a = user("sensor-1", serde_json::json!({"brokerRef": {"name": "plant-a"}}), "2026-01-01T00:00:00Z");
    let views = vec![view(&a, found("generated-password-0123456789ABCDEF", true), None)];
    let grant = acl(
        "grant",
        serde_json::json!({"brokerRef": {"name": "plant-a"}, "allUsers": true, "rules": [{"topic": "plant/#", "access": "Read"}]}),
    );
    let broken = acl(
        "broken",
        serde_json::json!({"brokerRef": {"name": "plant-a"}, "allUsers": true,
        "rules": [{"topic": "plant/secret/#", "access": "Deny"}, {"topic": "a/#/b", "access": "Read"}]}),
    );
    let p = run(&views, &[&grant, &broken], Existing::default(), now());
    assert!(p.acls.iter().any(|a| a.name == "broken" && a.invalid.is_some()));
    assert!(parsed_acl(&p).patterns.is_empty(), "the grant would otherwise apply without the broken ACL's Deny");
}

#[test]
fn no_acls_render_a_deny_all_file() {
    let p = run(&[], &[], Existing::default(), now());
    let parsed = parsed_acl(&p);
    assert!(parsed.users.is_empty() && parsed.patterns.is_empty() && parsed.anonymous.is_empty());
    assert!(p.config.text.contains("acl_file /moat/run/acl"));
}

#[test]
fn a_stale_ledger_view_never_un_revokes() {
    let gw = cert_user("gw", serde_json::json!({}), "2026-01-01T00:00:00Z");
    let first = run(&[view(&gw, PasswordLookup::NotUsed, None)], &[], Existing::default(), now());
    let c = first.client_certs["gw"].issued.clone();
    let gone = run(&[], &[], first.to_existing().unwrap(), plus(now(), 60));
    assert!(crl_serials(&gone).contains(&serial(&c)));
    // the cache still shows the old ledger, merged with what was last written
    let mut ex = first.to_existing().unwrap();
    ex.ledger = first.ledger.merge(&gone.ledger);
    let again = run(&[], &[], ex, plus(now(), 120));
    assert!(crl_serials(&again).contains(&serial(&c)));
}

#[test]
fn risky_grants_are_named() {
    let r = |t: &str, a| AclRule { topic: t.into(), access: a };
    assert_eq!(risky_grants(&[r("#", AclAccess::Write)]).len(), 1);
    assert_eq!(risky_grants(&[r("+/#", AclAccess::ReadWrite)]).len(), 1);
    assert!(risky_grants(&[r("#", AclAccess::Read), r("a/#", AclAccess::Write)]).is_empty());
    assert_eq!(risky_grants(&[r("$SYS/#", AclAccess::Read)]).len(), 1);
    assert!(risky_grants(&[r("$SYS/broker/uptime", AclAccess::Read)]).is_empty());
}

/// What the kubelet mounts into the agent container from the StatefulSet's Secret volumes (as
/// paths under the Secrets directory), given the Secrets that exist.
fn kubelet_view(
    sts: &k8s_openapi::api::apps::v1::StatefulSet,
    secrets: &[k8s_openapi::api::core::v1::Secret],
) -> crate::render::bundle::Mounted {
    let pod = sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let agent = pod.containers.iter().find(|c| c.name == crate::render::workload::AGENT_CONTAINER).unwrap();
    let data = |name: &str, key: &str| {
        let s = secrets.iter().find(|s| s.metadata.name.as_deref() == Some(name))?;
        s.data.as_ref()?.get(key).map(|v| v.0.clone())
    };
    let mut out = crate::render::bundle::Mounted::new();
    for v in pod.volumes.iter().flatten() {
        let Some(m) = agent.volume_mounts.iter().flatten().find(|m| m.name == v.name) else { continue };
        let Some(dir) = m.mount_path.strip_prefix(&format!("{}/", crate::render::SECRETS_DIR)) else { continue };
        let mut sources = vec![];
        if let Some(s) = &v.secret {
            sources.push((s.secret_name.clone().unwrap(), s.items.clone().unwrap_or_default()));
        }
        for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(s) = &p.secret {
                sources.push((s.name.clone(), s.items.clone().unwrap_or_default()));
            }
        }
        for (name, items) in sources {
            for item in items {
                if let Some(bytes) = data(&name, &item.key) {
                    out.insert(format!("{dir}/{}", item.path), bytes);
                }
            }
        }
    }
    out
}

/// The operator's expected files are exactly what the agent installs from what the kubelet
/// mounts: the attestation compares like with like (several password shards).
#[test]
fn the_expected_files_are_what_the_agent_installs_from_the_pods_volumes() {
    let users: Vec<MqttUser> = (0..2000)
        .map(|i| {
            user(&format!("u{i:04}"), serde_json::json!({"brokerRef": {"name": "plant-a"}}), "2026-01-01T00:00:00Z")
        })
        .collect();
    let views: Vec<UserView> = users
        .iter()
        .map(|u| {
            view(u, found(&format!("generated-password-{}-0123456789", kube::ResourceExt::name_any(u)), true), None)
        })
        .collect();
    let own = acl(
        "own",
        serde_json::json!({"brokerRef": {"name": "plant-a"}, "allUsers": true, "rules": [{"topic": "devices/%u/#", "access": "ReadWrite"}]}),
    );
    let p = run(&views, &[&own], Existing::default(), now());
    assert!(p.shards.len() > 1, "several password shards");
    let objects = objects_of(&model(), &p);
    let mounted = kubelet_view(&objects.statefulset, &objects.secrets);
    let expected = crate::render::bundle::assemble(&objects.mounted("plant-a")).unwrap();
    assert_eq!(crate::render::bundle::assemble(&mounted).unwrap().digest(), expected.digest());
    // and the agent reads that layout from disk the same way
    let dir = tempfile::tempdir().unwrap();
    for (path, bytes) in &mounted {
        let file = dir.path().join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, bytes).unwrap();
    }
    assert_eq!(crate::agent::collect(dir.path()).unwrap().digest(), expected.digest());
}

/// The canary logins exist only while the operator attests the broker: in the password file and
/// the CA Secret then, in neither once attestation is off (by flag or by spec).
#[test]
fn the_canary_logins_exist_only_while_the_broker_is_attested() {
    let a = user("sensor-1", serde_json::json!({"brokerRef": {"name": "plant-a"}}), "2026-01-01T00:00:00Z");
    let views = vec![view(&a, found("generated-password-0123456789ABCDEF", true), None)];
    let m = model();
    let planned = |existing: Existing, attestation: bool| {
        plan(PlanInput {
            model: &m,
            users: &views,
            acls: &[],
            existing,
            paths: &ConfigPaths::in_pod(),
            overrides: &ListenerOverrides::default(),
            extra_ips: &[],
            requests: &Default::default(),
            attestation,
            now: now(),
        })
        .unwrap()
    };
    let passwd_users = |p: &BrokerPlan| -> Vec<String> {
        let text: String = p.shards.iter().map(|s| s.passwd.as_str()).collect();
        text.lines().map(|l| l.split(':').next().unwrap().to_owned()).collect()
    };
    let on = planned(Existing::default(), true);
    assert_eq!(passwd_users(&on), ["_moat-canary-1", "_moat-canary-2", "sensor-1"]);
    assert!(ca_secret_data(&on).contains_key(crate::plan::canary::KEY_LOGINS));
    let off = planned(on.to_existing().unwrap(), false);
    assert_eq!(passwd_users(&off), ["sensor-1"]);
    assert!(off.canary_logins.is_none() && !ca_secret_data(&off).contains_key(crate::plan::canary::KEY_LOGINS));
}

/// `spec.tls.server.issuerRef`: the certificate cert-manager issued is served as it is (no renewal
/// of moat's), its issuer's CA joins the clients' trust bundle but not the client-certificate
/// trust; without the issuerRef, or with a key that does not match, moat's own is served.
#[test]
fn a_server_certificate_from_cert_manager_is_served_and_its_ca_trusted() {
    use crate::pki::ServerNames;
    let day = std::time::Duration::from_secs(86400);
    let corporate = crate::pki::new_ca("Corporate CA", day * 365, now()).unwrap();
    let names = ServerNames { dns: vec!["plant-a.iot.svc".into()], ips: vec![] };
    let theirs = crate::pki::issue_server(&corporate, &names, day * 90, now()).unwrap();
    let external = |issued: Issued| ExternalServer { issued, ca_pem: corporate.cert_pem.clone() };
    let with_issuer = model_with(|s| {
        s.tls.server.issuer_ref = Some(crate::crd::broker::IssuerRef {
            name: "corporate".into(),
            kind: Default::default(),
            group: "cert-manager.io".into(),
        })
    });
    let existing = |e: Option<ExternalServer>| Existing { external_server: e, ..Existing::default() };

    let p = run_with(&with_issuer, &[], &[], existing(Some(external(theirs.clone()))), now());
    assert_eq!(p.server, theirs);
    assert_eq!(p.server_renewal, None);
    assert!(p.trust_bundle().contains(corporate.cert_pem.trim()));
    assert!(p.trust_bundle().starts_with(p.ca.trust_bundle().trim_end()), "moat's CAs stay first");
    assert!(!p.ca.trust_bundle().contains(corporate.cert_pem.trim()), "client certificates: moat's CA only");
    let objects = objects_of(&with_issuer, &p);
    let cert = objects.server_certificate.expect("a cert-manager Certificate");
    assert_eq!(
        cert["spec"]["issuerRef"],
        serde_json::json!({"name": "corporate", "kind": "Issuer", "group": "cert-manager.io"})
    );
    assert_eq!(cert["spec"]["secretTemplate"]["labels"]["mqtt.moat.dev/broker"], "plant-a");
    assert_eq!(cert["spec"]["privateKey"]["algorithm"], "ECDSA");
    assert!(objects.ca_bundle.data.unwrap()["ca.crt"].contains(corporate.cert_pem.trim()));

    // a key that does not belong to the certificate: moat's own
    let mismatched = Issued { key_pem: p.ca.active.key_pem.clone(), ..theirs.clone() };
    let p = run_with(&with_issuer, &[], &[], existing(Some(external(mismatched))), now());
    assert_ne!(p.server, theirs);
    assert_eq!(p.external_ca, None);
    // no issuerRef (removed): moat's own, and no Certificate
    let p = run_with(&model(), &[], &[], existing(Some(external(theirs.clone()))), now());
    assert_ne!(p.server, theirs);
    assert!(!p.trust_bundle().contains(corporate.cert_pem.trim()));
}
