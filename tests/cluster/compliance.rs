//! Compliance: a hardened broker on the real node is Compliant and gets a PolicyReport; audits
//! write only lastAuditTime; a broker whose pods cannot be probed is never Compliant.

use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use moat::crd::{CheckResult, MqttBroker};

use crate::harness::*;

const T: Duration = Duration::from_secs(180);

/// examples/broker-minimal.yaml as it is, only placed on the real node with an image built here
/// (2.0.21: the example's 2.0.22 has no local image).
fn minimal_on_the_real_node() -> String {
    let example = std::fs::read_to_string(repo().join("examples/broker-minimal.yaml")).unwrap();
    let placed = format!(
        "  version: \"2.0.21\"\n  image: {{repository: {BROKER_IMAGES}, pullPolicy: Never}}\n  pod: {REAL_NODE_POD}"
    );
    let out = example.replace("  version: \"2.0.22\"", &placed);
    assert_ne!(out, example, "examples/broker-minimal.yaml no longer pins 2.0.22");
    out
}

/// A hardened broker on the real node is Compliant, and its compliance reaches both report APIs
/// of the policy working group, validated by their upstream CRDs: an OpenReports `Report` and a
/// `wgpolicyk8s.io` `PolicyReport`, one result per check; its MqttAcl and MqttFirewall get their
/// own.
#[tokio::test]
async fn a_hardened_broker_is_compliant_and_gets_an_openreports_report_and_a_policy_report() {
    setup().await;
    for (crd, name) in [
        (upstream_crd("policyreport"), "policyreports.wgpolicyk8s.io"),
        (upstream_crd("openreports"), "reports.openreports.io"),
    ] {
        let out = kubectl(&["apply", "--server-side", "-f", crd.to_str().unwrap()]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = kubectl(&["wait", "--for=condition=Established", &format!("crd/{name}"), "--timeout=60s"]);
        assert!(out.status.success());
    }
    let client = admin().await;
    let ns = TestNs::new(&client, "compliant").await;
    let _op = Operator::start(&ns.name, real_node_operator());
    apply_yaml(&client, &ns.name, &minimal_on_the_real_node()).await;
    let users = std::fs::read_to_string(repo().join("tests/e2e/fixtures/plant-a-users.yaml")).unwrap();
    apply_yaml(&client, &ns.name, &users).await;
    let b: MqttBroker = wait_condition(&client, &ns.name, "plant-a", "Compliant", "True", T).await;
    let c = b.status.unwrap().compliance.unwrap();
    assert!(c.checks.iter().all(|x| x.result == CheckResult::Pass), "{:?}", c.checks);
    assert_eq!(c.summary, format!("{}/{}", c.total, c.total));
    assert!(c.total >= 30, "only {} checks", c.total);

    for (group, version, kind, plural) in [
        ("openreports.io", "v1alpha1", "Report", "reports"),
        ("wgpolicyk8s.io", "v1alpha2", "PolicyReport", "policyreports"),
    ] {
        let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        let reports: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &ar);
        // the report is written right after the status: wait for the one of this all-pass audit
        let report = eventually(T, &format!("the {kind} of the passing audit"), || async {
            let r = reports.get_opt("moat-plant-a").await.ok().flatten()?;
            (r.data["summary"]["pass"] == c.total).then_some(r)
        })
        .await;
        let results = report.data["results"].as_array().unwrap();
        assert_eq!(results.len() as u32, c.total, "{kind}: one result per check");
        let rules: Vec<&str> = results.iter().map(|r| r["rule"].as_str().unwrap()).collect();
        for check in &c.checks {
            assert!(rules.contains(&check.id.as_str()), "{kind}: no result for {}", check.id);
        }
        assert!(results.iter().all(|r| r["source"] == "moat" && r["policy"].as_str().unwrap().starts_with("moat-")));
        assert_eq!(report.data["scope"]["kind"], "MqttBroker");
        assert_eq!(report.data["summary"]["fail"], 0);
        assert_eq!(report.data["summary"]["error"], 0);
        assert_eq!(report.data["summary"]["skip"], 0);
    }

    // the broker's MqttAcl and MqttFirewall get reports of their own
    apply_yaml(
        &client,
        &ns.name,
        "apiVersion: mqtt.moat.dev/v1alpha1\nkind: MqttFirewall\nmetadata: {name: edge}\nspec:\n  brokerRef: {name: plant-a}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: edge}}}]\n",
    )
    .await;
    for (group, version, kind, plural) in [
        ("openreports.io", "v1alpha1", "Report", "reports"),
        ("wgpolicyk8s.io", "v1alpha2", "PolicyReport", "policyreports"),
    ] {
        let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        let reports: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &ar);
        for (name, scope) in [("moat-mqttacl-own-topics", "MqttAcl"), ("moat-mqttfirewall-edge", "MqttFirewall")] {
            let r =
                eventually(T, &format!("the {kind} {name}"), || async { reports.get_opt(name).await.ok().flatten() })
                    .await;
            assert_eq!(r.data["scope"]["kind"], scope);
            assert!(
                r.data["results"].as_array().unwrap().iter().all(|x| x["rule"].as_str().unwrap().starts_with("MOAT-"))
            );
            assert_eq!(r.metadata.labels.as_ref().unwrap()["mqtt.moat.dev/broker"], "plant-a");
        }
    }
}

#[tokio::test]
async fn the_audit_advances_last_audit_time_and_nothing_else() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "audit").await;
    let _op = Operator::start(&ns.name, real_node_operator());
    // three replicas: every audit attacks each of them (and sends the outsider at each)
    let extra = "  replicas: 3\n  audit: {interval: 10s}\n";
    apply_yaml(&client, &ns.name, &real_broker("audited", "2.0.21", None, extra)).await;
    wait_condition::<MqttBroker>(&client, &ns.name, "audited", "Compliant", "True", T).await;
    // settled: all three pods Ready and audited since (a pod Ready after an audit gets one of its own)
    live_pods(&client, &ns.name, "audited", 3).await;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns.name);
    let ready_since = pods
        .list(&kube::api::ListParams::default().labels("mqtt.moat.dev/broker=audited"))
        .await
        .unwrap()
        .items
        .iter()
        .flat_map(|p| p.status.as_ref().unwrap().conditions.clone().unwrap_or_default())
        .filter(|c| c.type_ == "Ready" && c.status == "True")
        .filter_map(|c| c.last_transition_time.map(|t| t.0))
        .max()
        .unwrap();
    eventually(T, "an audit after the last pod became Ready", || async {
        let b: MqttBroker = get(&client, &ns.name, "audited").await?;
        let c = b.status?.compliance?;
        let passed = c.checks.iter().all(|x| x.result == CheckResult::Pass);
        (c.last_audit_time?.0 >= ready_since && passed).then_some(())
    })
    .await;
    // every pod runs the files (the kubelet may refresh a pod's Secret volume late, and
    // the status records when they all do)
    eventually(T, "the files in effect on every pod", || async {
        let b: MqttBroker = get(&client, &ns.name, "audited").await?;
        b.status?.files?.in_effect_at.map(|_| ())
    })
    .await;
    wait_quiet(&ns.name, Duration::from_secs(2), T).await;
    // the writes are counted before the status is read: an audit between the two would otherwise
    // be in `first` but not among the writes that follow
    let writes_before = operator_writes(&ns.name).len();
    let first: MqttBroker = get(&client, &ns.name, "audited").await.unwrap();
    let t1 = first.status.as_ref().unwrap().compliance.as_ref().unwrap().last_audit_time.clone().unwrap();
    let second: MqttBroker = eventually(Duration::from_secs(40), "the next audit", || async {
        let b: MqttBroker = get(&client, &ns.name, "audited").await?;
        let t = b.status.as_ref()?.compliance.as_ref()?.last_audit_time.clone()?;
        (t.0 > t1.0).then_some(b)
    })
    .await;
    let t2 = second.status.as_ref().unwrap().compliance.as_ref().unwrap().last_audit_time.clone().unwrap();
    // the next audit is due one interval after the previous one ended: a gap of at most two
    // intervals means the audit of all three pods took less than one
    let gap = t2.0.duration_since(t1.0).as_secs();
    println!("audits of 3 replicas {gap}s apart with a 10s interval");
    assert!((10..=20).contains(&gap), "audits {gap}s apart with a 10s interval");
    let probed = second.status.as_ref().unwrap().compliance.as_ref().unwrap();
    for id in moat::compliance::PROBED_CHECKS {
        let c = probed.checks.iter().find(|c| c.id == *id).unwrap();
        assert_eq!(c.result, CheckResult::Pass, "{id}: {}", c.message);
    }
    for id in ["MOAT-AUTH-003", "MOAT-FW-004"] {
        let c = probed.checks.iter().find(|c| c.id == id).unwrap();
        assert!(c.message.starts_with("3 pod(s)"), "{id}: {}", c.message);
    }
    let strip = |b: &MqttBroker| {
        let mut s = serde_json::to_value(b.status.as_ref().unwrap()).unwrap();
        s["compliance"]["lastAuditTime"] = serde_json::Value::Null;
        s
    };
    let changed = json_changes(&strip(&first), &strip(&second), "status");
    assert!(changed.is_empty(), "an audit with no findings changed more than lastAuditTime:\n{}", changed.join("\n"));
    let writes: Vec<String> = operator_writes(&ns.name)[writes_before..]
        .iter()
        .map(|e| {
            let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
            format!("{} {}/{}", s(&e["verb"]), s(&e["objectRef"]["resource"]), s(&e["objectRef"]["subresource"]))
        })
        .collect();
    assert!(!writes.is_empty(), "the audit must write lastAuditTime");
    assert!(
        writes.iter().all(|w| w == "patch mqttbrokers/status"),
        "the audit wrote more than the broker status: {writes:?}"
    );
}

/// Where two JSON values differ: one line per changed leaf (arrays by index, the compliance
/// checks by id), so a failure names the field instead of printing two whole statuses.
fn json_changes(a: &serde_json::Value, b: &serde_json::Value, path: &str) -> Vec<String> {
    use serde_json::Value;
    let key = |i: usize, v: &Value| v.get("id").and_then(Value::as_str).map_or(i.to_string(), str::to_string);
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter()
                .flat_map(|k| {
                    let (p, q) = (x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null));
                    json_changes(p, q, &format!("{path}.{k}"))
                })
                .collect()
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .flat_map(|(i, (p, q))| json_changes(p, q, &format!("{path}[{}]", key(i, p))))
            .collect(),
        _ if a == b => vec![],
        _ => vec![format!("{path}: {a} -> {b}")],
    }
}

/// Honest status: a broker whose pods run on kwok's fake nodes cannot be probed (no container
/// answers), so the live checks are Unknown and the broker is not Compliant, whatever else passes.
#[tokio::test]
async fn a_broker_whose_pods_cannot_be_probed_is_not_compliant() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "unprobed").await;
    let _op = Operator::start(&ns.name, OperatorOpts::default());
    apply_yaml(&client, &ns.name, &std::fs::read_to_string(repo().join("examples/broker-minimal.yaml")).unwrap()).await;
    let b: MqttBroker = eventually(T, "an audit of the fake pods", || async {
        let b: MqttBroker = get(&client, &ns.name, "plant-a").await?;
        b.status.as_ref()?.compliance.as_ref()?.last_audit_time.as_ref()?;
        Some(b)
    })
    .await;
    let (status, reason, message) = condition(&b, "Compliant").unwrap();
    let c = b.status.as_ref().unwrap().compliance.clone().unwrap();
    let unknown: Vec<&str> =
        c.checks.iter().filter(|x| x.result == CheckResult::Unknown).map(|x| x.id.as_str()).collect();
    assert!(unknown.contains(&"MOAT-TLS-005"), "the live TLS check passed without a live broker: {:?}", c.checks);
    assert_eq!((status.as_str(), reason.as_str()), ("Unknown", "ChecksNotEvaluated"), "{message}");
    for id in &unknown {
        assert!(message.contains(id), "{message} does not name {id}");
    }
    assert!(c.summary.ends_with(&format!("({} unknown)", unknown.len())), "{}", c.summary);
}
