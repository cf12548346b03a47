//! The chart's monitoring: its alert rules and Grafana dashboard only use metrics a live operator
//! exports (a renamed metric fails here), and the rules behave as their promtool tests say.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use crate::harness::*;

const T: Duration = Duration::from_secs(120);

/// Every `moat_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("moat_") {
        let tail = &rest[i..];
        let end =
            tail.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The series names a `/metrics` text can have: each family's `# TYPE` with its type's suffixes
/// (a counter's family is named without `_total` in OpenMetrics, the operator's format, and with
/// it in the Prometheus text format, the agents').
fn exported(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        match kind {
            "counter" => {
                names.insert(format!("{}_total", name.trim_end_matches("_total")));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

#[tokio::test]
async fn the_alert_rules_and_the_dashboard_use_metrics_a_live_operator_exports() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "monitoring").await;
    // a live operator with every series the rules and the dashboard read: a broker on the real
    // node (certificates, CRL, audits, attested files), a revocation timed by its agents, a drift
    // repaired, and a reconcile that fails (an invalid spec)
    let mut opts = real_node_operator();
    opts.args.extend(["--agent-metrics-namespaces".into(), ns.name.clone(), "--activity-interval".into(), "1s".into()]);
    let op = Operator::start(&ns.name, opts);
    let logging = "  logging: {failedLoginThreshold: 3}\n";
    apply_yaml(&client, &ns.name, &real_broker("plant-m", "2.0.21", None, logging)).await;
    apply_yaml(
        &client,
        &ns.name,
        "apiVersion: mqtt.moat.dev/v1alpha1\nkind: MqttUser\nmetadata: {name: leaver}\nspec: {brokerRef: {name: plant-m}}\n",
    )
    .await;
    let never = "apiVersion: mqtt.moat.dev/v1alpha1\nkind: MqttBroker\nmetadata: {name: never}\nspec:\n  version: \"2.0.22\"\n  upgrade:\n    policy: AutoPatch\n    maintenanceWindows: [{schedule: \"0 0 30 2 *\", duration: 1h}]\n";
    apply_yaml(&client, &ns.name, never).await;
    wait_condition::<moat::crd::MqttUser>(&client, &ns.name, "leaver", "Ready", "True", T).await;
    wait_condition::<moat::crd::MqttBroker>(&client, &ns.name, "plant-m", "Compliant", "True", T).await;
    let out = kubectl(&["-n", &ns.name, "delete", "mqttuser", "leaver"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = kubectl(&["-n", &ns.name, "delete", "networkpolicy", "plant-m-default-deny"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // refused logins from a source that is not the operator's (the test host is where the
    // operator runs, so the host's address is moat's own): `moat probe` in the broker pod's own
    // network namespace tries anonymous, plaintext and TLS 1.0/1.1 against the pod's address
    let pod = live_pods(&client, &ns.name, "plant-m", 1).await.remove(0);
    let pid = mosquitto_pid(&pod.container_id).to_string();
    let probe = Command::new("nsenter")
        .args(["-t", &pid, "-n", env!("CARGO_BIN_EXE_moat"), "probe", "--host", &pod.ip, "--port", "8883"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&probe.stdout).contains("anonymous refused    PASS"), "{probe:?}");
    let (reason, note) = eventually(T, "a SuspiciousActivity Event on plant-m", || async {
        events_for(&client, &ns.name, "plant-m").await.into_iter().find(|(r, _)| r == "SuspiciousActivity")
    })
    .await;
    assert!(
        note.starts_with(&format!("{}: ", pod.name)) && note.contains(&format!("from {} (", pod.ip)),
        "{reason}: {note}"
    );
    assert!(note.contains("not_authorised 1") && note.contains("tls "), "{note}");
    // the agent's metrics (node-local traffic reaches the pod; elsewhere only the metrics namespaces do)
    let agent = moat::probe::http_get(&pod.ip, moat::render::workload::AGENT_METRICS_PORT, "/metrics").await.unwrap();
    assert!(
        agent.contains(
            "moat_broker_auth_failures_total{listener=\"8883\",reason=\"not_authorised\",origin=\"other\"} 1"
        ),
        "{agent}"
    );
    let policy = kubectl(&["-n", &ns.name, "get", "networkpolicy", "plant-m-moat-metrics", "-o", "json"]);
    let policy: serde_json::Value = serde_json::from_slice(&policy.stdout).expect("the metrics NetworkPolicy");
    let ingress = &policy["spec"]["ingress"][0];
    assert_eq!(ingress["ports"], serde_json::json!([{"port": 9884, "protocol": "TCP"}]));
    assert_eq!(ingress["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"], serde_json::json!([ns.name]));

    let wanted = [
        "moat_suspicious_activity_total{",
        "moat_revocation_seconds{",
        "moat_reconcile_errors_total{",
        "moat_drift_repaired_total{",
        "moat_last_audit_timestamp_seconds{",
    ];
    let scrape = eventually(T, "every series in the operator's metrics", || async {
        let m = op.metrics();
        wanted.iter().all(|w| m.contains(w)).then_some(m)
    })
    .await;
    let mut exported = exported(&scrape);
    exported.extend(self::exported(&agent));
    assert!(
        exported.contains("moat_reconciles_total") && exported.contains("moat_certificate_expiry_timestamp_seconds")
    );

    let rules = std::fs::read_to_string(repo().join("charts/moat/files/prometheus-rules.yaml")).unwrap();
    let dashboard = std::fs::read_to_string(repo().join("charts/moat/files/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string()))
        .chain(std::iter::once(dashboard["templating"]["list"][1]["query"].as_str().unwrap().to_string()))
        .collect();
    for (what, text) in [("the alert rules", rules), ("the dashboard", exprs.join("\n"))] {
        let used = metric_names(&text);
        assert!(used.len() >= 5, "{what} use only {used:?}");
        let unknown: Vec<&String> = used.difference(&exported).collect();
        assert!(unknown.is_empty(), "{what} use metrics the operator does not export: {unknown:?}");
    }

    let promtool = promtool();
    let check = Command::new(&promtool)
        .args(["check", "rules", repo().join("charts/moat/files/prometheus-rules.yaml").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(check.status.success(), "promtool check rules: {}", String::from_utf8_lossy(&check.stdout));
    let test = Command::new(&promtool)
        .args(["test", "rules", repo().join("tests/prometheus/moat-rules.test.yaml").to_str().unwrap()])
        .output()
        .unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&test.stdout), String::from_utf8_lossy(&test.stderr));
    assert!(test.status.success() && report.contains("SUCCESS"), "promtool test rules:\n{report}");
}
