//! Health-gated rolling upgrades with kwok pods: AutoPatch inside a window rolls pod by pod; a
//! version whose pods never become Ready is rolled back.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use moat::crd::MqttBroker;

use crate::harness::*;

const T: Duration = Duration::from_secs(120);

fn broker_yaml(version: &str, policy: &str) -> String {
    format!(
        r#"
apiVersion: mqtt.moat.dev/v1alpha1
kind: MqttBroker
metadata: {{name: fleet}}
spec:
  version: "{version}"
  replicas: 3
  upgrade:
    policy: {policy}
    maintenanceWindows: [{{schedule: "* * * * *", duration: 1h}}]
    rolloutTimeout: 20s
    readyGracePeriod: 2s
"#
    )
}

#[tokio::test]
async fn auto_patch_rolls_a_vulnerable_broker_pod_by_pod_to_the_patched_version() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "upgrade").await;
    // start on 2.0.15 with Manual: no upgrade, CVEs reported
    let _op = Operator::start(&ns.name, OperatorOpts::default());
    apply_yaml(&client, &ns.name, &broker_yaml("2.0.15", "Manual")).await;
    let b: MqttBroker = wait_condition(&client, &ns.name, "fleet", "Ready", "True", T).await;
    let v = b.status.as_ref().unwrap().version.clone().unwrap();
    assert_eq!(v.current.as_deref(), Some("2.0.15"));
    assert!(!v.known_cves.is_empty(), "2.0.15 has known CVEs in the catalog");
    let check = b
        .status
        .as_ref()
        .unwrap()
        .compliance
        .as_ref()
        .unwrap()
        .checks
        .iter()
        .find(|c| c.id == "MOAT-UPD-001")
        .cloned()
        .unwrap();
    assert!(!check.passed);

    // switch to AutoPatch (the window is always open): record the order pods change image in
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let watcher = {
        let pods = pods.clone();
        tokio::spawn(async move {
            let mut order: Vec<String> = vec![];
            let deadline = tokio::time::Instant::now() + T;
            while tokio::time::Instant::now() < deadline {
                for (pod, image) in broker_images(&pods, "fleet").await {
                    if image.ends_with(":2.0.22") && !order.contains(&pod) {
                        order.push(pod);
                    }
                }
                if order.len() == 3 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            order
        })
    };
    apply_yaml(&client, &ns.name, &broker_yaml("2.0.15", "AutoPatch")).await;
    let done: MqttBroker = eventually(T, "upgrade Completed", || async {
        let b: MqttBroker = get(&client, &ns.name, "fleet").await?;
        (b.status.as_ref()?.upgrade.as_ref()?.phase == "Completed").then_some(b)
    })
    .await;
    let order = watcher.await.unwrap();
    assert_eq!(
        order,
        vec!["fleet-2", "fleet-1", "fleet-0"],
        "pods must be updated one at a time from the highest ordinal"
    );
    let done: MqttBroker = eventually(T, "status current = 2.0.22", || {
        let (client, ns) = (client.clone(), ns.name.clone());
        let d = done.clone();
        async move {
            let b: MqttBroker = get(&client, &ns, "fleet").await.unwrap_or(d);
            (b.status.as_ref()?.version.as_ref()?.current.as_deref() == Some("2.0.22")).then_some(b)
        }
    })
    .await;
    let v = done.status.as_ref().unwrap().version.clone().unwrap();
    assert_eq!(v.target.as_deref(), Some("2.0.22"));
    assert!(v.known_cves.is_empty(), "{:?}", v.known_cves);
    assert!(broker_images(&pods, "fleet").await.values().all(|i| i == "eclipse-mosquitto:2.0.22"));
    let events = events_for(&client, &ns.name, "fleet").await;
    for reason in ["UpgradeStarted", "PodUpdated", "UpgradeCompleted"] {
        assert!(events.iter().any(|(r, _)| r == reason), "no {reason} Event: {events:?}");
    }
}

#[tokio::test]
async fn a_version_whose_pods_never_become_ready_is_rolled_back() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "rollback").await;
    let _op = Operator::start(&ns.name, OperatorOpts::default());
    apply_yaml(&client, &ns.name, &broker_yaml("2.0.22", "Manual")).await;
    wait_condition::<MqttBroker>(&client, &ns.name, "fleet", "Ready", "True", T).await;

    // 2.0.99 is the kwok marker image whose pods never become Ready (hack/local-cluster.sh)
    let api: Api<MqttBroker> = Api::namespaced(client.clone(), &ns.name);
    let patch = serde_json::json!({"spec": {"version": "2.0.99"}});
    api.patch("fleet", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let failed: MqttBroker = eventually(T, "upgrade Failed", || async {
        let b: MqttBroker = get(&client, &ns.name, "fleet").await?;
        (b.status.as_ref()?.upgrade.as_ref()?.phase == "Failed").then_some(b)
    })
    .await;
    let up = failed.status.as_ref().unwrap().upgrade.clone().unwrap();
    assert!(up.message.contains("fleet-2") && up.message.contains("2.0.99"), "{}", up.message);
    let (status, reason, _) = condition(&failed, "Ready").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "UpgradeFailed"));
    // the broker still serves the old version on every pod
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    eventually(T, "all pods back on 2.0.22 and Ready", || async {
        let list = pods.list(&ListParams::default().labels("mqtt.moat.dev/broker=fleet")).await.ok()?.items;
        let ok = list.len() == 3
            && list.iter().all(|p| {
                p.spec.as_ref().is_some_and(|s| s.containers[0].image.as_deref() == Some("eclipse-mosquitto:2.0.22"))
                    && p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            });
        ok.then_some(())
    })
    .await;
    assert_eq!(failed.status.as_ref().unwrap().version.as_ref().unwrap().current.as_deref(), Some("2.0.22"));
    let events = events_for(&client, &ns.name, "fleet").await;
    assert!(events.iter().any(|(r, _)| r == "UpgradeRollingBack"), "{events:?}");
    assert!(events.iter().any(|(r, _)| r == "UpgradeFailed"), "{events:?}");
}
