//! ACLs and firewalls on the local control plane.

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, Patch, PatchParams};
use moat::crd::{MqttAcl, MqttFirewall};

use crate::harness::*;

const T: Duration = Duration::from_secs(90);

fn file(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap()
}

#[tokio::test]
async fn acls_land_in_the_broker_acl_secret_and_a_missing_broker_is_reported() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "acl").await;
    let _op = Operator::start(&ns.name, OperatorOpts::default());
    for f in [
        "examples/broker-production.yaml",
        "examples/user-password.yaml",
        "examples/acl-per-user.yaml",
        "examples/acl-pattern.yaml",
    ] {
        apply_yaml(&client, &ns.name, &file(f)).await;
    }
    let acl: MqttAcl = wait_condition(&client, &ns.name, "sensor-17-telemetry", "Ready", "True", T).await;
    assert_eq!(acl.status.as_ref().unwrap().rule_count, 3);
    assert!(acl.status.as_ref().unwrap().pending_users.is_empty());
    // dashboard-read names a user that does not exist here: its rules are kept out and reported
    let dash: MqttAcl = wait_condition(&client, &ns.name, "dashboard-read", "Ready", "False", T).await;
    let dash = eventually(T, "UsersNotReady", || {
        let (client, ns, d) = (client.clone(), ns.name.clone(), dash.clone());
        async move {
            let a: MqttAcl = get(&client, &ns, "dashboard-read").await.unwrap_or(d);
            (condition(&a, "Ready")?.1 == "UsersNotReady").then_some(a)
        }
    })
    .await;
    assert_eq!(dash.status.as_ref().unwrap().pending_users, vec!["dashboard"]);
    let text = eventually(T, "the rules in the ACL Secret", || async {
        let t = acl_file(&client, &ns.name, "plant-b").await?;
        t.contains("user sensor-17").then_some(t)
    })
    .await;
    assert!(text.contains("topic write plant/b/sensors/sensor-17/telemetry"), "{text}");
    assert!(text.contains("topic deny plant/b/commands/admin/#"), "{text}");
    assert!(text.contains("pattern readwrite devices/%u/#"), "{text}");
    assert!(!text.contains("user dashboard"), "rules of a user that does not exist reached the file");
    moat::render::acl::parse(&text).expect("the applied ACL parses as Mosquitto would");

    let orphan = r#"
apiVersion: mqtt.moat.dev/v1alpha1
kind: MqttAcl
metadata: {name: orphan}
spec:
  brokerRef: {name: no-such-broker}
  users: [sensor-17]
  rules: [{topic: a/b, access: Read}]
"#;
    apply_yaml(&client, &ns.name, orphan).await;
    let o: MqttAcl = wait_condition(&client, &ns.name, "orphan", "Ready", "False", T).await;
    assert_eq!(condition(&o, "Ready").unwrap().1, "BrokerNotFound");
}

#[tokio::test]
async fn firewalls_create_and_collect_policies_and_limit_load_balancers() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "fw").await;
    let _op = Operator::start(&ns.name, OperatorOpts::default());
    let broker = file("examples/broker-production.yaml").replace("type: ClusterIP", "type: LoadBalancer");
    apply_yaml(&client, &ns.name, &broker).await;
    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns.name);
    eventually(T, "the default-deny policy", || async { nps.get_opt("plant-b-default-deny").await.ok().flatten() })
        .await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let lb = eventually(T, "the broker Service", || async { svcs.get_opt("plant-b").await.ok().flatten() }).await;
    assert_eq!(
        lb.spec.as_ref().unwrap().type_.as_deref(),
        Some("ClusterIP"),
        "no firewall yet: the LoadBalancer is withheld"
    );

    apply_yaml(&client, &ns.name, &file("examples/firewall.yaml")).await;
    let fw: MqttFirewall = wait_condition(&client, &ns.name, "plant-b-clients", "Ready", "True", T).await;
    assert_eq!(fw.status.as_ref().unwrap().policies, vec!["plant-b-fw-plant-b-clients"]);
    let policy = nps.get("plant-b-fw-plant-b-clients").await.unwrap();
    let json = serde_json::to_string(&policy.spec).unwrap();
    assert!(json.contains("10.20.0.0/16") && json.contains("10.20.9.0/24") && json.contains("fd00:20::/64"), "{json}");
    let ranges = eventually(T, "a LoadBalancer with loadBalancerSourceRanges", || async {
        let s = svcs.get("plant-b").await.ok()?.spec?;
        (s.type_.as_deref() == Some("LoadBalancer")).then_some(s.load_balancer_source_ranges?)
    })
    .await;
    assert_eq!(ranges, vec!["10.20.0.0/16", "fd00:20::/64"]);

    // a hand edit of the generated policy is reverted
    let open_up = serde_json::json!({"spec": {"ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}});
    nps.patch("plant-b-fw-plant-b-clients", &PatchParams::default(), &Patch::Merge(&open_up)).await.unwrap();
    eventually(T, "the policy restored", || async {
        let p = nps.get("plant-b-fw-plant-b-clients").await.ok()?;
        let j = serde_json::to_string(&p.spec).ok()?;
        (j.contains("10.20.0.0/16") && !j.contains("0.0.0.0/0")).then_some(())
    })
    .await;

    // deleting the firewall garbage-collects its policy
    let fws: Api<MqttFirewall> = Api::namespaced(client.clone(), &ns.name);
    fws.delete("plant-b-clients", &Default::default()).await.unwrap();
    eventually(T, "the policy collected", || async {
        nps.get_opt("plant-b-fw-plant-b-clients").await.ok()?.is_none().then_some(())
    })
    .await;
    eventually(T, "the LoadBalancer withheld again", || async {
        let s = svcs.get("plant-b").await.ok()?.spec?;
        (s.type_.as_deref() == Some("ClusterIP") && s.load_balancer_source_ranges.is_none()).then_some(())
    })
    .await;

    // the public internet is refused at kubectl apply time
    let out = kubectl(&[
        "-n",
        &ns.name,
        "apply",
        "-f",
        repo().join("examples/invalid/firewall-public-ipv4.yaml").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("requires allowPublicInternet: true"));
}
