//! Reliability on the local control plane: operator crashes during a burst, two replicas under
//! churn, concurrent edits, and secret hygiene of everything the operator wrote.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use moat::crd::{MqttAcl, MqttBroker, MqttUser};

use crate::harness::*;

const T: Duration = Duration::from_secs(180);

fn users_yaml(range: std::ops::Range<usize>) -> String {
    range
        .map(|i| format!("apiVersion: mqtt.moat.dev/v1alpha1\nkind: MqttUser\nmetadata: {{name: dev-{i:04}}}\nspec: {{brokerRef: {{name: plant-a}}}}\n---\n"))
        .collect()
}

fn certificate_users_yaml(range: std::ops::Range<usize>) -> String {
    range
        .map(|i| format!("apiVersion: mqtt.moat.dev/v1alpha1\nkind: MqttUser\nmetadata: {{name: gw-{i:02}}}\nspec: {{brokerRef: {{name: plant-a}}, authentication: {{certificate: {{}}}}}}\n---\n"))
        .collect()
}

const BROKER: &str = r#"
apiVersion: mqtt.moat.dev/v1alpha1
kind: MqttBroker
metadata: {name: plant-a}
spec:
  version: "2.0.22"
  listeners:
  - {name: mqtts, port: 8883}
  - {name: mtls, port: 8884, authentication: Certificate}
"#;

/// Secret material that must never change once created: (secret, key) → value.
async fn material(client: &kube::Client, ns: &str) -> BTreeMap<(String, String), String> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut out = BTreeMap::new();
    for s in secrets.list(&ListParams::default().labels("app.kubernetes.io/managed-by=moat")).await.unwrap().items {
        let name = s.metadata.name.clone().unwrap();
        for (k, v) in s.data.iter().flatten() {
            let keep = matches!(k.as_str(), "password" | "tls.key" | "ca.key" | "fingerprint.key")
                || (name.ends_with("-mqtt-tls") && k == "tls.crt")
                || (name == "plant-a-ca" && k == "ca.crt");
            if keep {
                out.insert((name.clone(), k.clone()), String::from_utf8_lossy(&v.0).into_owned());
            }
        }
    }
    out
}

async fn passwd_users(client: &kube::Client, ns: &str) -> BTreeSet<String> {
    passwd_shards(client, ns, "plant-a")
        .await
        .iter()
        .filter_map(|s| s.data.as_ref()?.get("passwd").map(|p| String::from_utf8_lossy(&p.0).into_owned()))
        .collect::<String>()
        .lines()
        .filter(|l| !canary_line(l))
        .filter_map(|l| l.split(':').next().map(str::to_string))
        .collect()
}

async fn all_ready(client: &kube::Client, ns: &str, n: usize) -> bool {
    user_readiness(client, ns).await.unwrap() == (n, n)
}

#[tokio::test]
async fn killing_the_operator_during_a_200_user_burst_loses_and_regenerates_nothing() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "kill").await;
    apply_yaml(&client, &ns.name, BROKER).await;
    apply_yaml(&client, &ns.name, &(users_yaml(0..190) + &certificate_users_yaml(0..10))).await;

    let mut first_seen: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut changed = vec![];
    let mut kills = 0;
    for round in 0..5u64 {
        let mut op = Operator::start(&ns.name, OperatorOpts::default());
        // let it work for a while (0.3–1.8 s), then crash it hard, like an OOM kill
        tokio::time::sleep(Duration::from_millis(300 + (round * 7919 + rand::random::<u64>()) % 1500)).await;
        op.kill();
        kills += 1;
        for (k, v) in material(&client, &ns.name).await {
            match first_seen.get(&k) {
                Some(old) if *old != v => changed.push(k.clone()),
                Some(_) => {}
                None => {
                    first_seen.insert(k, v);
                }
            }
        }
    }
    let op = Operator::start(&ns.name, OperatorOpts::default());
    eventually(T, "200 Ready users after the crashes", || async {
        all_ready(&client, &ns.name, 200).await.then_some(())
    })
    .await;
    wait_condition::<MqttBroker>(&client, &ns.name, "plant-a", "Ready", "True", T).await;
    wait_quiet(&ns.name, Duration::from_secs(2), T).await;
    for (k, v) in material(&client, &ns.name).await {
        if first_seen.get(&k).is_some_and(|old| *old != v) {
            changed.push(k);
        }
    }
    assert!(changed.is_empty(), "credentials regenerated after {kills} crashes: {changed:?}");
    let users = passwd_users(&client, &ns.name).await;
    assert_eq!(users.len(), 190, "every password user is in the file exactly once");
    assert!((0..190).all(|i| users.contains(&format!("dev-{i:04}"))));
    drop(op);
}

async fn make_identity(name: &str) -> String {
    let manifests = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": OPERATOR_NS}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "moat"},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": OPERATOR_NS}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name, "namespace": OPERATOR_NS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "moat-self"},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": OPERATOR_NS}]},
    ]});
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("id.json");
    std::fs::write(&f, serde_json::to_string(&manifests).unwrap()).unwrap();
    let out = kubectl(&["apply", "--server-side", "-f", f.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    format!("system:serviceaccount:{OPERATOR_NS}:{name}")
}

/// Writes in `ns` by `identity` (from the audit log) with their timestamps.
fn writes_by(ns: &str, identity: &str) -> Vec<String> {
    audit_events(ns)
        .into_iter()
        .filter(|e| e["impersonatedUser"]["username"] == identity)
        .filter(|e| matches!(e["verb"].as_str(), Some("create" | "update" | "patch" | "delete")))
        .map(|e| e["requestReceivedTimestamp"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Declared state == applied state: the password file holds exactly the declared password users,
/// the ACL Secret exactly the declared ACLs.
async fn assert_converged(client: &kube::Client, ns: &str) {
    let users: Api<MqttUser> = Api::namespaced(client.clone(), ns);
    let acls: Api<MqttAcl> = Api::namespaced(client.clone(), ns);
    eventually(T, "the files to match the declared users and ACLs", || async {
        let declared_users: BTreeSet<String> = users
            .list(&Default::default())
            .await
            .ok()?
            .items
            .into_iter()
            .filter(|u| u.metadata.deletion_timestamp.is_none())
            .filter_map(|u| u.metadata.name)
            .collect();
        let declared_acls = acls.list(&Default::default()).await.ok()?.items;
        let in_file = passwd_users(client, ns).await;
        // every declared ACL is in effect for its generation, and the ACL file holds exactly the
        // users those ACLs name
        let applied = declared_acls.iter().all(|a| {
            a.status.as_ref().is_some_and(|st| {
                st.observed_generation == a.metadata.generation
                    && condition(a, "Ready").is_some_and(|c| c.0 == "True" || c.1 == "UsersNotReady")
            })
        });
        let named: BTreeSet<String> = declared_acls
            .iter()
            .flat_map(|a| a.spec.users.iter().filter(|u| declared_users.contains(*u)).cloned())
            .collect();
        let file = acl_file(client, ns, "plant-a").await?;
        let in_acl: BTreeSet<String> = moat::render::acl::parse(&file).ok()?.users.keys().cloned().collect();
        (in_file == declared_users && applied && in_acl == named && all_ready(client, ns, declared_users.len()).await)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn two_replicas_under_churn_never_both_write_and_converge() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "churn").await;
    let (id_a, id_b) = (make_identity("moat-replica-a").await, make_identity("moat-replica-b").await);
    let lease = vec!["--lease-duration-seconds".to_string(), "6".to_string()];
    let mut a = Operator::start(
        &ns.name,
        OperatorOpts { args: [lease.clone(), vec!["--as".into(), id_a.clone()]].concat(), ..Default::default() },
    );
    eventually(T, "replica a leads", || async { a.log().contains("became leader").then_some(()) }).await;
    let b = Operator::start(
        &ns.name,
        OperatorOpts { args: [lease, vec!["--as".into(), id_b.clone()]].concat(), ..Default::default() },
    );
    eventually(T, "replica b stands by", || async { b.log().contains("waiting to become leader").then_some(()) }).await;

    apply_yaml(&client, &ns.name, BROKER).await;
    let users: Api<MqttUser> = Api::namespaced(client.clone(), &ns.name);
    let brokers: Api<MqttBroker> = Api::namespaced(client.clone(), &ns.name);
    for burst in 0..3usize {
        apply_yaml(&client, &ns.name, &users_yaml(burst * 30..burst * 30 + 30)).await;
        let acl = format!(
            "apiVersion: mqtt.moat.dev/v1alpha1\nkind: MqttAcl\nmetadata: {{name: acl-{burst}}}\nspec: {{brokerRef: {{name: plant-a}}, users: [dev-{:04}], rules: [{{topic: t/{burst}/#, access: Read}}]}}\n",
            burst * 30
        );
        apply_yaml(&client, &ns.name, &acl).await;
        let patch = serde_json::json!({"spec": {"limits": {"maxQueuedMessages": 1000 + burst}}});
        brokers.patch("plant-a", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        for i in (burst * 30..burst * 30 + 30).step_by(3) {
            users.delete(&format!("dev-{i:04}"), &DeleteParams::default()).await.unwrap();
        }
    }
    assert_converged(&client, &ns.name).await;
    assert!(writes_by(&ns.name, &id_b).is_empty(), "the standby replica wrote while the leader was alive");
    assert!(!writes_by(&ns.name, &id_a).is_empty());

    // the leader crashes mid-churn: the standby takes over and finishes
    a.kill();
    let killed_at = jiff::Timestamp::now();
    apply_yaml(&client, &ns.name, &users_yaml(100..130)).await;
    eventually(T, "replica b leads", || async { b.log().contains("became leader").then_some(()) }).await;
    assert_converged(&client, &ns.name).await;
    let late_a: Vec<String> = writes_by(&ns.name, &id_a)
        .into_iter()
        .filter(|t| t.parse::<jiff::Timestamp>().is_ok_and(|t| t > killed_at))
        .collect();
    assert!(late_a.is_empty(), "the dead replica wrote: {late_a:?}");
    assert!(!writes_by(&ns.name, &id_b).is_empty());
}

#[tokio::test]
async fn concurrent_edits_converge_to_the_declared_state() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "edits").await;
    let _op = Operator::start(&ns.name, OperatorOpts::default());
    apply_yaml(&client, &ns.name, BROKER).await;
    let users: Api<MqttUser> = Api::namespaced(client.clone(), &ns.name);
    let acls: Api<MqttAcl> = Api::namespaced(client.clone(), &ns.name);
    let brokers: Api<MqttBroker> = Api::namespaced(client.clone(), &ns.name);
    // users, ACLs and the broker change at the same time, without waiting for each other
    let creator = {
        let (client, ns) = (client.clone(), ns.name.clone());
        tokio::spawn(async move {
            for chunk in 0..4usize {
                apply_yaml(&client, &ns, &users_yaml(chunk * 20..chunk * 20 + 20)).await;
                let acl = format!(
                    "apiVersion: mqtt.moat.dev/v1alpha1\nkind: MqttAcl\nmetadata: {{name: acl-{chunk}}}\nspec: {{brokerRef: {{name: plant-a}}, allUsers: true, rules: [{{topic: \"c/{chunk}/%u/#\", access: ReadWrite}}]}}\n"
                );
                apply_yaml(&client, &ns, &acl).await;
            }
        })
    };
    for i in 0..6u32 {
        let patch = serde_json::json!({"spec": {"limits": {"maxInflightMessages": 20 + i}, "logging": {"connectionMessages": i % 2 == 0}}});
        brokers.patch("plant-a", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    creator.await.unwrap();
    for i in (0..80).step_by(4) {
        let _ = users.delete(&format!("dev-{i:04}"), &DeleteParams::default()).await;
    }
    acls.delete("acl-1", &DeleteParams::default()).await.unwrap();
    assert_converged(&client, &ns.name).await;
    let conf = Api::<Secret>::namespaced(client.clone(), &ns.name).get("plant-a-config").await.unwrap();
    let conf = String::from_utf8(conf.data.unwrap()["mosquitto.conf"].0.clone()).unwrap();
    assert!(
        conf.contains("max_inflight_messages 25") && conf.contains("connection_messages false"),
        "the last broker edit wins"
    );
}

/// Nothing the operators wrote into Events or status carries a password or key material.
#[tokio::test]
async fn no_secret_value_appears_in_events_or_status() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "hygiene").await;
    let op = Operator::start(&ns.name, OperatorOpts::default());
    for f in [
        "examples/broker-production.yaml",
        "examples/user-password.yaml",
        "examples/user-certificate.yaml",
        "examples/user-byo-password.yaml",
    ] {
        apply_yaml(&client, &ns.name, &std::fs::read_to_string(repo().join(f)).unwrap()).await;
    }
    for u in ["sensor-17", "gateway-1", "dashboard"] {
        wait_condition::<MqttUser>(&client, &ns.name, u, "Ready", "True", T).await;
    }
    let secrets = crate::hygiene::stored_secret_values(&ns.name);
    assert!(secrets.len() >= 5);
    let events = serde_json::to_string(
        &Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns.name)
            .list(&Default::default())
            .await
            .unwrap()
            .items,
    )
    .unwrap();
    let mut statuses = String::new();
    for kind in ["mqttbrokers", "mqttusers", "mqttacls", "mqttfirewalls"] {
        statuses += &String::from_utf8_lossy(&kubectl(&["-n", &ns.name, "get", kind, "-o", "json"]).stdout);
    }
    for (what, text) in [("Events", &events), ("status", &statuses), ("operator log", &op.log())] {
        crate::hygiene::assert_absent(text, &secrets, what);
        assert!(!text.contains("PRIVATE KEY"), "{what} contains a private key");
    }
    crate::hygiene::check_log(&op.log());
}
