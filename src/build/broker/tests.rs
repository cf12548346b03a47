use std::time::Duration;

use super::*;
use crate::model::tests::minimal_spec;
use crate::render::config::{ConfigPaths, ListenerOverrides};

fn now() -> Timestamp {
    "2026-03-01T00:00:00Z".parse().unwrap()
}

fn model() -> BrokerModel {
    let mut spec = minimal_spec();
    spec.listeners.push(crate::crd::broker::Listener {
        name: "mtls".into(),
        port: 8884,
        authentication: crate::crd::broker::ListenerAuthentication::Certificate,
        ..spec.listeners[0].clone()
    });
    BrokerModel::from_spec("plant-a", "iot", &spec).unwrap()
}

fn user(name: &str, spec: serde_json::Value, created: &str) -> MqttUser {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "mqtt.moat.dev/v1alpha1", "kind": "MqttUser",
        "metadata": {"name": name, "namespace": "iot", "creationTimestamp": created, "uid": format!("uid-{name}")},
        "spec": spec,
    }))
    .unwrap()
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

fn run(users: &[UserView], acls: &[&MqttAcl], existing: Existing, at: Timestamp) -> BrokerPlan {
    let m = model();
    plan(PlanInput {
        model: &m,
        users,
        acls,
        existing,
        paths: &ConfigPaths::in_pod(),
        overrides: &ListenerOverrides::default(),
        extra_ips: &[],
        now: at,
    })
    .unwrap()
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
        UserView { user: &a, password: found("generated-password-0123456789ABCDEF", true), certificate: None },
        UserView { user: &weak, password: found("password", false), certificate: None },
        UserView { user: &older, password: found("Another-Good-Passw0rd-For-Them1", false), certificate: None },
        UserView { user: &newer, password: found("Third-Good-Passw0rd-For-Them2!", false), certificate: None },
        UserView { user: &bad, password: found("irrelevant-Passw0rd-Long-Enough", false), certificate: None },
    ];
    let p = run(&views, &[], Existing::default(), now());
    assert!(
        matches!(&p.verdicts["sensor-1"], Verdict::InEffect { username, password: true, .. } if username == "sensor-1")
    );
    assert!(matches!(&p.verdicts["weak"], Verdict::WeakPassword(_)));
    assert!(matches!(&p.verdicts["first"], Verdict::InEffect { .. }));
    assert_eq!(p.verdicts["second"], Verdict::UsernameConflict { username: "shared".into(), holder: "first".into() });
    assert!(matches!(&p.verdicts["bad"], Verdict::Invalid(e) if e.field == "spec.username"));
    let passwd: String = p.shards.iter().map(|s| s.passwd.as_str()).collect();
    let users: Vec<&str> = passwd.lines().map(|l| l.split(':').next().unwrap()).collect();
    assert_eq!(users, vec!["sensor-1", "shared"], "weak, conflicting and invalid users never reach the file");
    assert!(!passwd.contains("password"), "no clear-text password in the file");
    assert_eq!(p.hashes_computed, 2);
}

#[test]
fn a_second_plan_with_the_stored_material_changes_nothing_and_hashes_nothing() {
    let a = user("sensor-1", serde_json::json!({"brokerRef": {"name": "plant-a"}}), "2026-01-01T00:00:00Z");
    let views =
        vec![UserView { user: &a, password: found("generated-password-0123456789ABCDEF", true), certificate: None }];
    let first = run(&views, &[], Existing::default(), now());
    assert_eq!(first.ca_transition, Some(CaTransition::Created));
    assert_eq!(first.server_renewal, Some(RenewReason::Missing));
    let mut previous = first.clone();
    for hour in 1..=48 {
        let later = run(&views, &[], previous.to_existing().unwrap(), after(now(), Duration::from_secs(hour * 3600)));
        assert_eq!(later.hashes_computed, 0);
        assert_eq!(later.ca_transition, None);
        assert_eq!(later.server_renewal, None);
        assert_eq!(later.ca, first.ca);
        assert_eq!(later.server, first.server);
        assert_eq!(later.crl_pem, first.crl_pem);
        assert_eq!(later.shards, first.shards);
        assert_eq!(later.config, first.config);
        previous = later;
    }
}

#[test]
fn a_deleted_certificate_user_is_revoked_in_the_crl() {
    let first = run(&[], &[], Existing::default(), now());
    let cert = crate::pki::issue_client(&first.ca.active, "gw", Duration::from_secs(86400 * 30), now()).unwrap();
    let mut gw = user(
        "gw",
        serde_json::json!({"brokerRef": {"name": "plant-a"}, "authentication": {"certificate": {}}}),
        "2026-01-01T00:00:00Z",
    );
    let views = vec![UserView { user: &gw, password: PasswordLookup::NotUsed, certificate: Some(cert.clone()) }];
    let live = run(&views, &[], first.to_existing().unwrap(), now());
    assert!(matches!(&live.verdicts["gw"], Verdict::InEffect { certificate: true, password: false, .. }));
    assert!(live.revoked.is_empty());
    gw.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
    let views = vec![UserView { user: &gw, password: PasswordLookup::NotUsed, certificate: Some(cert.clone()) }];
    let gone = run(&views, &[], live.to_existing().unwrap(), now());
    assert_eq!(gone.newly_revoked, vec!["gw".to_string()]);
    let serial = crate::pki::inspect(&cert.cert_pem).unwrap().serial_hex;
    let crls = crate::pki::parse_crls(&gone.crl_pem).unwrap();
    assert!(crls.iter().any(|c| c.revoked_serials.contains(&serial)), "the CRL revokes the deleted user's serial");
    // the live session of the revoked identity loses every topic (the CRL only acts at handshake)
    crate::render::acl::parse(&gone.acl_text).unwrap();
    assert_eq!(gone.revoked_users.keys().collect::<Vec<_>>(), vec!["gw"]);
    assert!(gone.acl_text.contains("user gw\ntopic deny #\ntopic deny $SYS/#"), "{}", gone.acl_text);
    // idempotent: a further plan neither revokes again nor re-signs
    let again = run(&views, &[], gone.to_existing().unwrap(), now());
    assert!(again.newly_revoked.is_empty());
    assert_eq!(again.crl_pem, gone.crl_pem);
}

#[test]
fn acl_rules_only_for_users_in_effect_and_patterns_for_all() {
    let a = user("sensor-1", serde_json::json!({"brokerRef": {"name": "plant-a"}}), "2026-01-01T00:00:00Z");
    let views =
        vec![UserView { user: &a, password: found("generated-password-0123456789ABCDEF", true), certificate: None }];
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
    let invalid = acl(
        "invalid",
        serde_json::json!({"brokerRef": {"name": "plant-a"}, "users": ["sensor-1"],
        "rules": [{"topic": "a/#/b", "access": "Read"}]}),
    );
    let p = run(&views, &[&per_user, &pattern, &invalid], Existing::default(), now());
    let o = |n: &str| p.acls.iter().find(|a| a.name == n).unwrap().clone();
    assert_eq!(o("per-user").rule_lines, 2);
    assert_eq!(o("per-user").pending_users, vec!["ghost"]);
    assert!(o("per-user").warnings.iter().any(|w| w.contains("'#'")));
    assert_eq!(o("pattern").rule_lines, 1);
    assert!(o("invalid").invalid.is_some());
    let parsed = crate::render::acl::parse(&p.acl_text).unwrap();
    assert!(parsed.users.contains_key("sensor-1"));
    assert!(!parsed.users.contains_key("ghost"));
    assert_eq!(parsed.patterns.len(), 1);
    assert_eq!(p.acl_sources, "pattern 3 1\nper-user 3 2\n");
}

#[test]
fn no_acls_render_a_deny_all_file() {
    let p = run(&[], &[], Existing::default(), now());
    let parsed = crate::render::acl::parse(&p.acl_text).unwrap();
    assert!(parsed.users.is_empty() && parsed.patterns.is_empty() && parsed.anonymous.is_empty());
    assert!(p.config.text.contains("acl_file /moat/run/acl"));
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
