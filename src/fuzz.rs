//! Hostile-input property tests across every renderer and parser: either validation rejects the
//! input with a clear error, or what is rendered parses back to exactly the intended entries —
//! never an extra line, user or rule — and nothing panics.
//!
//! Case counts: 256 per property by default (`make test`); longer runs with
//! `PROPTEST_CASES=100000 cargo test --lib fuzz`.

use std::collections::BTreeSet;

use proptest::prelude::*;

use crate::crd::{AclAccess, AclRule, GoDuration, MqttAcl, MqttBrokerSpec, MqttUser};
use crate::model::BrokerModel;
use crate::model::tests::minimal_spec;
use crate::plan::Password;
use crate::plan::broker::{Cred, Existing, PasswordLookup, PlanInput, UserView, Verdict, deny_all_rules, plan};
use crate::render::config::{ConfigPaths, ListenerOverrides, render};

fn cases() -> ProptestConfig {
    ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256))
}

/// Strings that mix valid characters with everything Mosquitto or YAML could misread.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9._@-]{1,20}",
        "[A-Za-z0-9]{1,8}[\\n\\r\\t \\x00:#+/%$]{1,3}[A-Za-z0-9]{0,8}",
        "(topic|user|pattern|listener|allow_anonymous) (readwrite|true|#)",
        "\\PC{0,24}",
        "[a-z]{1,6}(/[a-z+#%uc]{0,4}){0,5}",
        Just(String::new()),
        Just("#".to_string()),
        Just("$SYS/#".to_string()),
        Just("a\nuser root".to_string()),
    ]
}

const CONFIG_KEYWORDS: &[&str] = &[
    "per_listener_settings",
    "allow_anonymous",
    "password_file",
    "acl_file",
    "set_tcp_nodelay",
    "max_packet_size",
    "message_size_limit",
    "max_inflight_messages",
    "max_queued_messages",
    "max_keepalive",
    "sys_interval",
    "log_dest",
    "log_type",
    "connection_messages",
    "log_timestamp",
    "log_timestamp_format",
    "persistence",
    "persistence_location",
    "autosave_interval",
    "listener",
    "protocol",
    "max_connections",
    "use_username_as_clientid",
    "certfile",
    "keyfile",
    "tls_version",
    "ciphers",
    "ciphers_tls1.3",
    "cafile",
    "crlfile",
    "require_certificate",
    "use_identity_as_username",
];

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn mosquitto_conf_never_gains_a_line(
        version in prop_oneof![Just("2.0.22".to_string()), hostile()],
        repo in prop_oneof![Just("eclipse-mosquitto".to_string()), hostile()],
        name in prop_oneof![Just("mqtts".to_string()), hostile()],
        ciphers in proptest::option::of(prop_oneof![Just("ECDHE-ECDSA-AES128-GCM-SHA256".to_string()), hostile()]),
        suites in proptest::option::of(prop_oneof![Just("TLS_AES_128_GCM_SHA256".to_string()), hostile()]),
        dns in proptest::collection::vec(hostile(), 0..3),
        packet in 0u32..300_000_000,
    ) {
        let mut spec: MqttBrokerSpec = minimal_spec();
        spec.version = version;
        spec.image.repository = repo;
        spec.listeners[0].name = name;
        spec.listeners[0].tls.ciphers = ciphers.clone();
        spec.listeners[0].tls.ciphers_tls13 = suites;
        spec.tls.server.dns_names = dns;
        spec.limits.max_packet_size = packet;
        spec.limits.message_size_limit = packet.min(262_144);
        if let Ok(model) = BrokerModel::from_spec("b", "ns", &spec) {
            let conf = render(&model, &ConfigPaths::in_pod(), &ListenerOverrides::default()).text;
            let lines: Vec<&str> = conf.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
            for l in &lines {
                let key = l.split(' ').next().unwrap();
                prop_assert!(CONFIG_KEYWORDS.contains(&key), "unexpected line {l:?}");
                prop_assert!(!l.chars().any(|c| c.is_control()), "control character in {l:?}");
            }
            prop_assert_eq!(lines.iter().filter(|l| l.starts_with("listener ")).count(), 1);
            prop_assert_eq!(lines.iter().filter(|l| **l == "allow_anonymous false").count(), 1);
            prop_assert!(!conf.contains("allow_anonymous true"));
            if let Some(c) = ciphers {
                let want = format!("ciphers {c}");
                prop_assert!(lines.contains(&want.as_str()));
            }
        }
    }

    #[test]
    fn durations_parse_or_are_rejected_without_panicking(text in "\\PC{0,12}|[0-9]{1,6}(h|m|s|ms|d|x)([0-9]{1,3}(h|m|s))?") {
        if let Ok(d) = GoDuration::new(text.clone()).parse() {
            prop_assert!(text.chars().next().is_some_and(|c| c.is_ascii_digit()), "{text:?} -> {d:?}");
            prop_assert!(!text.is_empty());
        }
    }

    #[test]
    fn maintenance_windows_parse_or_are_rejected_without_panicking(
        fields in proptest::collection::vec("[0-9*/,-]{1,5}|MON|SUN|JAN|\\PC{0,4}", 1..7),
        duration in "[0-9]{1,3}(h|m|s)|\\PC{0,4}",
    ) {
        let w = crate::crd::broker::MaintenanceWindow { schedule: fields.join(" "), duration: GoDuration::new(duration), time_zone: "UTC".into() };
        if let Ok(window) = crate::upgrade::Window::parse(&w) {
            let now: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
            // a valid window opens within its validity horizon
            prop_assert!(window.next_start(now).is_some());
        }
    }

    #[test]
    fn firewall_peers_render_only_normalized_networks(
        cidr in prop_oneof!["(10|172|192|100|8)\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}/[0-9]{1,2}", "fd[0-9a-f]{2}:[0-9a-f]{1,4}::[0-9a-f]{0,4}/[0-9]{1,3}", hostile()],
        except in proptest::collection::vec(prop_oneof!["10\\.[0-9]{1,3}\\.[0-9]{1,3}\\.0/2[4-9]", hostile()], 0..3),
        public in any::<bool>(),
    ) {
        let spec: crate::crd::MqttFirewallSpec = serde_json::from_value(serde_json::json!({
            "brokerRef": {"name": "b"},
            "allowPublicInternet": public,
            "ingress": [{"from": [{"cidr": cidr, "except": except}]}],
        })).unwrap();
        let model = BrokerModel::from_spec("b", "ns", &minimal_spec()).unwrap();
        if crate::validate::firewall_spec(&spec).is_ok() {
            let policy = crate::render::network::firewall_policy(&model, "fw", &spec);
            prop_assert!(policy.is_ok(), "validated spec failed to render: {policy:?}");
            for rule in policy.unwrap().spec.unwrap().ingress.unwrap() {
                for peer in rule.from.unwrap() {
                    let block = peer.ip_block.unwrap();
                    let net: ipnet::IpNet = block.cidr.parse().unwrap();
                    prop_assert_eq!(net, net.trunc(), "not normalized");
                    prop_assert!(public || !crate::validate::covers_public_internet(&net));
                    for e in block.except.unwrap_or_default() {
                        let e: ipnet::IpNet = e.parse().unwrap();
                        prop_assert!(net.contains(&e) && e.prefix_len() > net.prefix_len());
                    }
                }
            }
        }
    }

    #[test]
    fn the_broker_files_carry_exactly_the_users_and_rules_in_effect(
        users in proptest::collection::vec((hostile(), hostile(), any::<bool>()), 1..5),
        rules in proptest::collection::vec((hostile(), 0usize..4, any::<bool>()), 1..5),
    ) {
        let model = BrokerModel::from_spec("b", "ns", &minimal_spec()).unwrap();
        let objects: Vec<MqttUser> = users.iter().enumerate().map(|(i, (name, _, _))| serde_json::from_value(serde_json::json!({
            "apiVersion": "mqtt.moat.dev/v1alpha1", "kind": "MqttUser",
            "metadata": {"name": format!("u{i}"), "namespace": "ns", "creationTimestamp": format!("2026-01-0{}T00:00:00Z", i + 1)},
            "spec": {"brokerRef": {"name": "b"}, "username": name, "authentication": {"password": {"secretRef": {"name": "s"}}}},
        })).unwrap()).collect();
        let views: Vec<UserView> = objects.iter().zip(&users).map(|(u, (_, pw, generated))| UserView {
            user: u,
            password: PasswordLookup::Found { password: Password(pw.clone()), generated: *generated },
            certificate: None,
            certificate_blocked: None,
        }).collect();
        let access = [AclAccess::Read, AclAccess::Write, AclAccess::ReadWrite, AclAccess::Deny];
        let acl_rules: Vec<AclRule> = rules.iter().map(|(t, a, _)| AclRule { topic: t.clone(), access: access[*a] }).collect();
        let all_users = rules[0].2;
        let listed: Vec<String> = users.iter().map(|(n, _, _)| n.clone()).collect();
        let acl: MqttAcl = serde_json::from_value(serde_json::json!({
            "apiVersion": "mqtt.moat.dev/v1alpha1", "kind": "MqttAcl",
            "metadata": {"name": "a", "namespace": "ns", "generation": 1},
            "spec": {"brokerRef": {"name": "b"}, "allUsers": all_users, "users": if all_users { vec![] } else { listed.clone() }, "rules": acl_rules},
        })).unwrap();
        let mut model_fast = model.clone();
        model_fast.spec.passwords.hash_iterations = 1000;
        let p = plan(PlanInput {
            model: &model_fast,
            users: &views,
            acls: &[&acl],
            existing: Existing::default(),
            paths: &ConfigPaths::in_pod(),
            overrides: &ListenerOverrides::default(),
            extra_ips: &[],
            requests: &Default::default(),
            attestation: true,
            now: "2026-02-01T00:00:00Z".parse().unwrap(),
        }).unwrap();
        let in_effect: BTreeSet<String> = p.verdicts.values().filter_map(|o| match &o.verdict {
            Verdict::Holder(h) if h.password == Cred::InEffect => Some(h.username.clone()),
            _ => None,
        }).collect();
        let passwd: String = p.shards.iter().map(|s| s.passwd.as_str()).collect();
        let parsed = crate::render::passwd::parse_passwd(&passwd).unwrap();
        let mut in_file: BTreeSet<String> = parsed.iter().map(|(u, _)| u.clone()).collect();
        prop_assert_eq!(parsed.len(), in_file.len(), "duplicate lines");
        for reserved in crate::validate::RESERVED_USERNAMES {
            prop_assert!(in_file.remove(reserved), "the canary login {} is in the file", reserved);
        }
        prop_assert_eq!(&in_file, &in_effect, "password file users differ from the users in effect");
        // every user in effect passed validation and (brought passwords) the policy
        for (name, pw, generated) in &users {
            if in_effect.contains(name) {
                prop_assert!(crate::validate::username(name).is_ok());
                if !generated {
                    prop_assert!(crate::validate::password_strength(pw, name, &model.spec.passwords).is_ok());
                }
            }
        }
        let acl_parsed = crate::render::acl::parse(&p.acl_text()).unwrap();
        prop_assert!(acl_parsed.anonymous.is_empty(), "rules for anonymous clients");
        let outcome = &p.acls[0];
        if outcome.invalid.is_some() {
            // invalid means closed: nothing of it reaches the file, the users it lists get nothing
            prop_assert!(acl_parsed.patterns.is_empty(), "an invalid ACL reached the file");
            for rules in acl_parsed.users.values() {
                prop_assert_eq!(rules, &deny_all_rules());
            }
        } else if all_users {
            prop_assert_eq!(acl_parsed.patterns.len(), rules.iter().map(|r| (r.0.clone(), r.1)).collect::<BTreeSet<_>>().len());
        } else {
            let users_in_acl: BTreeSet<String> = acl_parsed.users.keys().cloned().collect();
            let expected: BTreeSet<String> = listed.iter().filter(|u| in_effect.contains(*u)).cloned().collect();
            prop_assert_eq!(users_in_acl, expected);
        }
    }

    #[test]
    fn moat_render_never_panics_on_hostile_yaml(doc in prop_oneof![
        "\\PC{0,200}",
        "kind: (MqttBroker|MqttUser|MqttAcl|MqttFirewall|Secret)\\napiVersion: mqtt.moat.dev/v1alpha1\\nmetadata: \\{name: [a-z]{1,5}\\}\\nspec: \\PC{0,60}",
    ]) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("in.yaml");
        std::fs::write(&f, doc).unwrap();
        let args = crate::cmd::render::RenderArgs {
            files: vec![f],
            out: dir.path().join("out"),
            namespace: "default".into(),
            broker: None,
            bind_address: None,
            port_offset: 0,
            agent_image: "moat".into(),
        };
        // an error is fine; a panic fails the property
        let _ = crate::cmd::render::run(args);
    }
}
