//! Users on the local control plane: a burst of users, stable credentials, policy on brought
//! passwords, rotation followed from the referenced Secret.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams};
use moat::crd::MqttUser;

use crate::harness::*;

const T: Duration = Duration::from_secs(120);

fn data(s: &Secret, key: &str) -> Option<String> {
    s.data.as_ref()?.get(key).map(|b| String::from_utf8(b.0.clone()).unwrap())
}

/// The assembled password file of a broker (every shard Secret).
async fn passwd_file(client: &kube::Client, ns: &str, broker: &str) -> String {
    passwd_shards(client, ns, broker).await.iter().filter_map(|s| data(s, "passwd")).collect()
}

fn users_yaml(n: usize) -> String {
    (0..n)
        .map(|i| format!("apiVersion: mqtt.moat.dev/v1alpha1\nkind: MqttUser\nmetadata: {{name: device-{i:04}}}\nspec: {{brokerRef: {{name: plant-a}}}}\n---\n"))
        .collect()
}

/// A credentials Secret edited by hand (a connection hint) is restored, and its user stays Ready
/// without a status write: the broker still has the same password in effect. (The user controller
/// compared the Secret's resourceVersion, which the restore changes: Ready went to
/// WaitingForBroker and back, two status writes for nothing.)
#[tokio::test]
async fn a_credentials_secret_restored_after_a_hand_edit_leaves_its_user_ready_without_a_status_write() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "restore").await;
    let _op = Operator::start(&ns.name, OperatorOpts::default());
    apply_yaml(&client, &ns.name, &std::fs::read_to_string(repo().join("examples/broker-minimal.yaml")).unwrap()).await;
    apply_yaml(&client, &ns.name, &users_yaml(1)).await;
    wait_condition::<MqttUser>(&client, &ns.name, "device-0000", "Ready", "True", T).await;
    wait_quiet(&ns.name, Duration::from_secs(2), T).await;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let name = moat::names::credentials_secret("device-0000");
    let host = data(&secrets.get(&name).await.unwrap(), "host").expect("a host hint");
    let before = operator_writes(&ns.name).len();
    let tamper = serde_json::json!({"stringData": {"host": "elsewhere.example"}});
    secrets.patch(&name, &PatchParams::default(), &Patch::Merge(&tamper)).await.unwrap();
    eventually(T, "the hint restored", || async {
        (data(&secrets.get(&name).await.ok()?, "host")? == host).then_some(())
    })
    .await;
    wait_quiet(&ns.name, Duration::from_secs(3), T).await;
    let status_writes: Vec<String> = operator_writes(&ns.name)[before..]
        .iter()
        .filter(|e| e["objectRef"]["resource"] == "mqttusers" && e["objectRef"]["subresource"] == "status")
        .map(|e| format!("{} {}", e["verb"], e["objectRef"]["name"]))
        .collect();
    assert!(status_writes.is_empty(), "user status written after the restore: {status_writes:?}");
    let user: MqttUser = get(&client, &ns.name, "device-0000").await.unwrap();
    assert_eq!(condition(&user, "Ready").map(|c| c.0).as_deref(), Some("True"));
}

#[tokio::test]
async fn two_hundred_users_become_ready_and_their_passwords_never_change() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "users").await;
    let mut op = Operator::start(&ns.name, OperatorOpts::default());
    apply_yaml(&client, &ns.name, &std::fs::read_to_string(repo().join("examples/broker-minimal.yaml")).unwrap()).await;
    apply_yaml(&client, &ns.name, &users_yaml(200)).await;
    eventually(T, "200 Ready users", || async { (ready_users(&client, &ns.name).await == 200).then_some(()) }).await;
    let file = passwd_file(&client, &ns.name, "plant-a").await;
    let lines = user_lines(&file);
    assert_eq!(lines.len(), 200, "one password line per user");
    assert!(lines.iter().all(|l| l.starts_with("device-") && l.contains(":$7$1000$")));

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let passwords = |list: Vec<Secret>| -> BTreeMap<String, String> {
        list.into_iter().filter_map(|s| Some((s.metadata.name.clone()?, data(&s, "password")?))).collect()
    };
    let creds = ListParams::default().labels("app.kubernetes.io/component=credentials");
    let before = passwords(secrets.list(&creds).await.unwrap().items);
    assert_eq!(before.len(), 200);
    let passwd_before = file.clone();

    // an operator restart and three forced reconciles change no password and re-hash nothing
    op.stop();
    let op = Operator::start(&ns.name, OperatorOpts::default());
    let users: Api<MqttUser> = Api::namespaced(client.clone(), &ns.name);
    for round in 0..3 {
        for u in ["device-0000", "device-0100", "device-0199"] {
            let patch = serde_json::json!({"metadata": {"annotations": {"moat.test/poke": round.to_string()}}});
            users.patch(u, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        }
        let b: Api<moat::crd::MqttBroker> = Api::namespaced(client.clone(), &ns.name);
        let patch = serde_json::json!({"metadata": {"annotations": {"moat.test/poke": round.to_string()}}});
        b.patch("plant-a", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    }
    wait_quiet(&ns.name, Duration::from_secs(3), T).await;
    let after = passwords(secrets.list(&creds).await.unwrap().items);
    assert_eq!(before, after, "a generated password changed");
    assert_eq!(passwd_file(&client, &ns.name, "plant-a").await, passwd_before, "password lines were re-hashed");
    assert_eq!(op.counter("moat_password_hashes_total"), 0.0, "the restarted operator re-hashed passwords");
    assert_eq!(op.counter("moat_certificates_issued_total"), 0.0, "the restarted operator re-issued certificates");
    let all_secret_text: String = secrets
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .flat_map(|s| s.data.iter().flatten().map(|(_, v)| String::from_utf8_lossy(&v.0).to_string()))
        .collect();
    for pw in before.values().take(5) {
        assert!(!op.log().contains(pw.as_str()), "a password appeared in the operator log");
        assert_eq!(
            all_secret_text.matches(pw.as_str()).count(),
            1,
            "a password appears outside its credentials Secret"
        );
    }
}

#[tokio::test]
async fn a_weak_brought_password_is_refused_and_a_rotated_one_is_followed() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "byo").await;
    let _op = Operator::start(&ns.name, OperatorOpts::default());
    apply_yaml(&client, &ns.name, &std::fs::read_to_string(repo().join("examples/broker-minimal.yaml")).unwrap()).await;
    let yaml = brought_password_user("weakling", "weak-pw", "password123")
        + &brought_password_user("dashboard", "good-pw", "Tr0ub4dor-and-3-more-Words!");
    apply_yaml(&client, &ns.name, &yaml).await;
    let weak: MqttUser = wait_condition(&client, &ns.name, "weakling", "Ready", "False", T).await;
    let good: MqttUser = wait_condition(&client, &ns.name, "dashboard", "Ready", "True", T).await;
    let weak = eventually(T, "WeakPassword reason", || {
        let client = client.clone();
        let ns = ns.name.clone();
        let w = weak.clone();
        async move {
            let u: MqttUser = get(&client, &ns, "weakling").await.unwrap_or(w);
            (condition(&u, "Ready")?.1 == "WeakPassword").then_some(u)
        }
    })
    .await;
    let (_, _, message) = condition(&weak, "Ready").unwrap();
    assert!(!message.contains("password123"), "the refused password leaked into status: {message}");
    let file = passwd_file(&client, &ns.name, "plant-a").await;
    assert!(!file.contains("weakling"), "a weak password reached the broker");
    assert!(file.contains("dashboard:"));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);

    // rotate the brought password: the broker's line and the user's passwordVersion follow
    let version_before = good.status.as_ref().unwrap().password_version.clone();
    let line_before = file.lines().find(|l| l.starts_with("dashboard:")).unwrap().to_string();
    let rotate = serde_json::json!({"stringData": {"password": "An0ther-Str0ng-Passphrase-2027"}});
    secrets.patch("good-pw", &PatchParams::default(), &Patch::Merge(&rotate)).await.unwrap();
    eventually(T, "the rotated password in the broker's file", || async {
        let f = passwd_file(&client, &ns.name, "plant-a").await;
        f.lines().find(|l| l.starts_with("dashboard:")).filter(|l| *l != line_before).map(|_| ())
    })
    .await;
    let rotated: MqttUser = eventually(T, "a new passwordVersion", || async {
        let u: MqttUser = get(&client, &ns.name, "dashboard").await?;
        let v = u.status.as_ref()?.password_version.clone();
        (v != version_before && condition(&u, "Ready")?.0 == "True").then_some(u)
    })
    .await;
    assert!(rotated.status.unwrap().password_rotated_at.is_some());
}

/// examples/app-binding.yaml binds an application to a password user the servicebinding.io way:
/// every key its projected volume names exists in the user's credentials Secret (with the
/// binding's `type` and `provider`) and in the broker's CA ConfigMap.
#[tokio::test]
async fn the_binding_example_finds_every_key_it_projects() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "binding").await;
    let _op = Operator::start(&ns.name, OperatorOpts::default());
    for f in ["examples/broker-production.yaml", "examples/user-password.yaml"] {
        apply_yaml(&client, &ns.name, &std::fs::read_to_string(repo().join(f)).unwrap()).await;
    }
    wait_condition::<MqttUser>(&client, &ns.name, "sensor-17", "Ready", "True", T).await;
    let example: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(repo().join("examples/app-binding.yaml")).unwrap()).unwrap();
    let sources = example["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"].as_array().unwrap().clone();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let keys = |s: &serde_json::Value| -> Vec<String> {
        s["items"].as_array().unwrap().iter().map(|i| i["key"].as_str().unwrap().to_string()).collect()
    };
    for source in &sources {
        if let Some(name) = source["secret"]["name"].as_str() {
            let secret = eventually(T, name, || async { secrets.get_opt(name).await.ok().flatten() }).await;
            for key in keys(&source["secret"]) {
                assert!(data(&secret, &key).is_some_and(|v| !v.is_empty()), "{name} has no {key}");
            }
            assert_eq!(data(&secret, "type").as_deref(), Some("mqtt"));
            assert_eq!(data(&secret, "provider").as_deref(), Some("moat"));
        }
        if let Some(name) = source["configMap"]["name"].as_str() {
            let map = maps.get(name).await.unwrap();
            for key in keys(&source["configMap"]) {
                let value =
                    map.data.as_ref().and_then(|d| d.get(&key)).unwrap_or_else(|| panic!("{name} has no {key}"));
                assert!(value.contains("BEGIN CERTIFICATE"), "{name}/{key}");
            }
        }
    }
    assert_eq!(sources.len(), 2, "the credentials Secret and the trust bundle");
}
