//! Compliance on the local control plane: a hardened broker is Compliant, PolicyReports, audits.

use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use moat::crd::MqttBroker;

use crate::harness::*;

const T: Duration = Duration::from_secs(90);

#[tokio::test]
async fn a_hardened_broker_is_compliant_and_gets_a_policy_report() {
    setup().await;
    let out = kubectl(&["apply", "--server-side", "-f", policyreport_crd().to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = kubectl(&["wait", "--for=condition=Established", "crd/policyreports.wgpolicyk8s.io", "--timeout=60s"]);
    assert!(out.status.success());
    let client = admin().await;
    let ns = TestNs::new(&client, "compliant").await;
    let _op = Operator::start(&ns.name, OperatorOpts::default());
    for f in ["examples/broker-minimal.yaml", "tests/e2e/fixtures/plant-a-users.yaml"] {
        apply_yaml(&client, &ns.name, &std::fs::read_to_string(repo().join(f)).unwrap()).await;
    }
    let b: MqttBroker = wait_condition(&client, &ns.name, "plant-a", "Compliant", "True", T).await;
    let c = b.status.unwrap().compliance.unwrap();
    assert!(c.checks.iter().all(|x| x.result != moat::crd::CheckResult::Fail), "{:?}", c.checks);
    assert!(c.total >= 30, "only {} checks", c.total);

    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("wgpolicyk8s.io", "v1alpha2", "PolicyReport"),
        "policyreports",
    );
    let reports: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &ar);
    let report =
        eventually(T, "the PolicyReport", || async { reports.get_opt("moat-plant-a").await.ok().flatten() }).await;
    let results = report.data["results"].as_array().unwrap();
    assert_eq!(results.len() as u32, c.total, "one result per check");
    let rules: Vec<&str> = results.iter().map(|r| r["rule"].as_str().unwrap()).collect();
    for check in &c.checks {
        assert!(rules.contains(&check.id.as_str()), "no result for {}", check.id);
    }
    assert_eq!(report.data["scope"]["kind"], "MqttBroker");
    assert_eq!(report.data["summary"]["fail"], 0);
}

#[tokio::test]
async fn the_audit_advances_last_audit_time_and_nothing_else() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "audit").await;
    let _op = Operator::start(&ns.name, OperatorOpts::default());
    let yaml = r#"
apiVersion: mqtt.moat.dev/v1alpha1
kind: MqttBroker
metadata: {name: audited}
spec:
  version: "2.0.22"
  audit: {interval: 10s}
"#;
    apply_yaml(&client, &ns.name, yaml).await;
    wait_condition::<MqttBroker>(&client, &ns.name, "audited", "Ready", "True", T).await;
    wait_quiet(&ns.name, Duration::from_secs(2), T).await;
    let first: MqttBroker = get(&client, &ns.name, "audited").await.unwrap();
    let t1 = first.status.as_ref().unwrap().compliance.as_ref().unwrap().last_audit_time.clone().unwrap();
    let writes_before = operator_writes(&ns.name).len();
    let second: MqttBroker = eventually(Duration::from_secs(40), "the next audit", || async {
        let b: MqttBroker = get(&client, &ns.name, "audited").await?;
        let t = b.status.as_ref()?.compliance.as_ref()?.last_audit_time.clone()?;
        (t.0 > t1.0).then_some(b)
    })
    .await;
    let t2 = second.status.as_ref().unwrap().compliance.as_ref().unwrap().last_audit_time.clone().unwrap();
    let gap = t2.0.duration_since(t1.0).as_secs();
    assert!((10..=20).contains(&gap), "audits {gap}s apart with a 10s interval");
    let strip = |b: &MqttBroker| {
        let mut s = serde_json::to_value(b.status.as_ref().unwrap()).unwrap();
        s["compliance"]["lastAuditTime"] = serde_json::Value::Null;
        s
    };
    assert_eq!(strip(&first), strip(&second), "an audit with no findings changed more than lastAuditTime");
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
