//! `kubectl moat` through the real kubectl: the plugin binary found on PATH, against the local
//! control plane.

use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use moat::crd::{MqttBroker, MqttUser};

use crate::harness::*;

const T: Duration = Duration::from_secs(120);

/// `kubectl moat ARGS` with this build's `kubectl-moat` first on PATH.
fn kubectl_moat(args: &[&str]) -> Output {
    let plugin = std::path::Path::new(env!("CARGO_BIN_EXE_kubectl-moat"));
    let path = format!("{}:{}", plugin.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    Command::new(bin_dir().join("kubectl"))
        .env("KUBECONFIG", kubeconfig())
        .env("PATH", path)
        .arg("moat")
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: Output) -> String {
    assert!(out.status.success(), "kubectl moat failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn kubectl_moat_prints_compliance_explains_checks_and_client_commands() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "plugin").await;
    let _op = Operator::start(&ns.name, OperatorOpts::default());
    apply_yaml(&client, &ns.name, &std::fs::read_to_string(repo().join("examples/broker-minimal.yaml")).unwrap()).await;
    apply_yaml(
        &client,
        &ns.name,
        "apiVersion: mqtt.moat.dev/v1alpha1\nkind: MqttUser\nmetadata: {name: sensor-1}\nspec: {brokerRef: {name: plant-a}}\n",
    )
    .await;
    wait_condition::<MqttUser>(&client, &ns.name, "sensor-1", "Ready", "True", T).await;
    // kwok's pods cannot be probed: an audited broker whose live checks are Unknown
    eventually(T, "the first audit", || async {
        let b: MqttBroker = get(&client, &ns.name, "plant-a").await?;
        b.status?.compliance?.last_audit_time.map(|_| ())
    })
    .await;

    let json: serde_json::Value =
        serde_json::from_str(&stdout(kubectl_moat(&["status", "-n", &ns.name, "-o", "json"]))).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{json}");
    assert_eq!((rows[0]["namespace"].as_str(), rows[0]["name"].as_str()), (Some(ns.name.as_str()), Some("plant-a")));
    assert_eq!(rows[0]["compliant"], "Unknown");
    assert_eq!(rows[0]["measures"].as_object().unwrap().len(), 10, "every measure");
    let unknown: Vec<&str> = rows[0]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["result"] == "Unknown")
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert!(unknown.contains(&"MOAT-AUTH-003"), "{json}");

    // -A, a table without colour when piped; --context as kubectl has it
    let table = stdout(kubectl_moat(&["status", "-A", "--context", "moat-local"]));
    assert!(table.starts_with("NAMESPACE") && table.contains(&ns.name) && !table.contains('\x1b'), "{table}");
    assert!(table.contains("UNKNOWN MOAT-AUTH-003"), "{table}");
    assert!(!kubectl_moat(&["status", "-A", "--context", "no-such-context"]).status.success());

    let explained = stdout(kubectl_moat(&["explain", "MOAT-FW-004"]));
    assert!(explained.contains("outsider") && explained.contains("#firewall"), "{explained}");

    // creds: a command to paste, the password only on request
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let s = secrets.get("sensor-1-mqtt-credentials").await.unwrap();
    let password = String::from_utf8(s.data.unwrap()["password"].0.clone()).unwrap();
    let hidden = stdout(kubectl_moat(&["creds", "sensor-1", "-n", &ns.name]));
    assert!(hidden.contains(&format!("-h plant-a.{}.svc -p 8883 --cafile ca.crt -u sensor-1", ns.name)), "{hidden}");
    assert!(!hidden.contains(&password), "the password is printed only with --show-password");
    let shown = stdout(kubectl_moat(&["creds", "sensor-1", "-n", &ns.name, "--show-password"]));
    assert!(shown.contains(&format!("-P '{password}'")));
}
