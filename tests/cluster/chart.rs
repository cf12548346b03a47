//! The Helm chart: lint, template (cluster and namespaced mode), server-side dry-run, install and
//! uninstall, least-privilege RBAC (every rule needed; namespaced mode cannot read other
//! namespaces' Secrets), and leader election between two operator processes.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use moat::crd::MqttBroker;

use crate::harness::*;

const T: Duration = Duration::from_secs(90);
/// How long a broker must stay not Ready when a chart RBAC rule is missing: three retries of a
/// failed reconcile (requeued after 5 s).
const RBAC_WINDOW: Duration = Duration::from_secs(15);

fn chart() -> String {
    repo().join("charts/moat").to_str().unwrap().to_string()
}

fn ok(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn template(namespace: &str, extra: &[&str]) -> String {
    let chart = chart();
    let mut args = vec!["template", "moat", &chart, "--kube-version", "1.36.3", "--namespace", namespace];
    args.extend_from_slice(extra);
    ok(helm(&args), "helm template")
}

#[tokio::test]
async fn the_chart_lints_renders_and_dry_runs_in_both_modes() {
    setup().await;
    let client = admin().await;
    let lint = ok(helm(&["lint", &chart(), "--strict"]), "helm lint");
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    ok(
        helm(&["lint", &chart(), "--strict", "--set", "watchNamespaces={a,b}", "--set", "crds.templated=true"]),
        "helm lint namespaced",
    );

    let release_ns = TestNs::new(&client, "chart").await;
    let watched = TestNs::new(&client, "chart-watched").await;
    let default = template(&release_ns.name, &[]);
    for kind in
        ["kind: Deployment", "kind: ClusterRole", "kind: ClusterRoleBinding", "kind: ServiceAccount", "kind: Service"]
    {
        assert!(default.contains(kind), "{kind} missing");
    }
    // the outsider gets a namespace of its own; a server-side dry run cannot create it, so the
    // dry runs place the outsider in an existing one
    assert!(default.contains(&format!("kind: Namespace\nmetadata:\n  name: {}-outsider", release_ns.name)));
    let outsider = TestNs::new(&client, "chart-outsider").await;
    let outside =
        [format!("outsider.namespace={}", outsider.name), "outsider.createNamespace=false".to_string()].join(",");
    let default = template(&release_ns.name, &["--set", &outside]);
    let out = apply_stdin(&default, &["--dry-run=server"]);
    assert!(out.status.success(), "dry-run (cluster mode): {}", String::from_utf8_lossy(&out.stderr));

    let namespaced =
        template(&release_ns.name, &["--set", &format!("watchNamespaces={{{}}}", watched.name), "--set", &outside]);
    // no cluster-wide access in namespaced mode: the one cluster-scoped grant is reading the
    // outsider's own Namespace object, by name
    for doc in serde_norway::Deserializer::from_str(&namespaced) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["kind"] == "ClusterRole" {
            let only = serde_json::json!([{"apiGroups": [""], "resources": ["namespaces"], "resourceNames": [outsider.name], "verbs": ["get"]}]);
            assert_eq!(v["rules"], only, "namespaced mode must not grant cluster-wide access");
        }
    }
    assert!(namespaced.contains(&format!("namespace: {}", watched.name)));
    assert!(namespaced.contains(&format!("--watch-namespaces={}", watched.name)));
    let out = apply_stdin(&namespaced, &["--dry-run=server"]);
    assert!(out.status.success(), "dry-run (namespaced): {}", String::from_utf8_lossy(&out.stderr));

    // monitoring: the PrometheusRule carries the rule file promtool tests, the ConfigMap the dashboard
    let monitoring = template(
        &release_ns.name,
        &[
            "--set",
            "metrics.prometheusRule.enabled=true,metrics.grafanaDashboard.enabled=true",
            "--show-only",
            "templates/monitoring.yaml",
        ],
    );
    let rules: serde_json::Value = serde_norway::from_str(
        &std::fs::read_to_string(repo().join("charts/moat/files/prometheus-rules.yaml")).unwrap(),
    )
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("charts/moat/files/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut kinds = vec![];
    for doc in serde_norway::Deserializer::from_str(&monitoring) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        match v["kind"].as_str() {
            Some("PrometheusRule") => assert_eq!(v["spec"], rules, "the PrometheusRule is the tested rule file"),
            Some("ConfigMap") => {
                assert_eq!(v["metadata"]["labels"]["grafana_dashboard"], "1");
                let json: serde_json::Value = serde_json::from_str(v["data"]["moat.json"].as_str().unwrap()).unwrap();
                assert_eq!(json, dashboard);
            }
            _ => continue,
        }
        kinds.push(v["kind"].as_str().unwrap().to_string());
    }
    assert_eq!(kinds.len(), 2, "{monitoring}");

    // the agents' metrics: the operator is told which namespaces may scrape them, and the
    // PodMonitor selects the broker pods (as moat labels them) on the agent's named port
    let agents = template(
        &release_ns.name,
        &["--set", "metrics.agentMetrics.namespaces={prom},metrics.agentMetrics.podMonitor.enabled=true"],
    );
    assert!(agents.contains("- --agent-metrics-namespaces=prom"), "{agents}");
    let monitor = serde_norway::Deserializer::from_str(&agents)
        .map(|d| -> serde_json::Value { serde::Deserialize::deserialize(d).unwrap() })
        .find(|v| v["kind"] == "PodMonitor")
        .expect("a PodMonitor");
    let pod_labels = moat::names::labels("plant-a", "broker");
    for (k, v) in monitor["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(pod_labels.get(k).map(String::as_str), v.as_str(), "PodMonitor selects {k}={v}");
    }
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["port"], moat::render::workload::AGENT_METRICS_PORT_NAME);
    assert_eq!(monitor["spec"]["namespaceSelector"]["any"], true);

    let templated = template(&release_ns.name, &["--set", "crds.templated=true"]);
    assert_eq!(templated.matches("helm.sh/resource-policy: keep").count(), 4, "the four CRDs, kept on uninstall");
}

#[tokio::test]
async fn helm_install_and_uninstall_succeed() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "helm").await;
    let release = format!("moat-{}", &ns.name[ns.name.len() - 6..]);
    ok(helm(&["install", &release, &chart(), "--namespace", &ns.name, "--wait", "--timeout", "90s"]), "helm install");
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let d = deploys.get(&release).await.unwrap();
    let pod = d.spec.unwrap().template.spec.unwrap();
    let sc = pod.containers[0].security_context.clone().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.capabilities.unwrap().drop.unwrap(), vec!["ALL"]);
    assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
    assert!(ok(helm(&["status", &release, "--namespace", &ns.name]), "helm status").contains("deployed"));
    ok(helm(&["uninstall", &release, "--namespace", &ns.name, "--wait"]), "helm uninstall");
    assert!(deploys.get_opt(&release).await.unwrap().is_none());
    // CRDs installed from crds/ stay (Helm never deletes them)
    assert!(kubectl(&["get", "crd", "mqttbrokers.mqtt.moat.dev"]).status.success());
}

/// The chart's cluster-mode rules without the rule for `resource`, bound to a new ServiceAccount.
fn identity_without(resource: &str) -> String {
    let sa = format!("moat-minus-{resource}");
    let rendered = template(OPERATOR_NS, &["--show-only", "templates/rbac.yaml"]);
    let mut rules: Vec<serde_json::Value> = vec![];
    for doc in serde_norway::Deserializer::from_str(&rendered) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["kind"] == "ClusterRole" {
            rules = v["rules"].as_array().unwrap().clone();
        }
    }
    let before = rules.len();
    rules.retain(|r| !r["resources"].as_array().unwrap().iter().any(|x| x == resource));
    assert_eq!(rules.len(), before - 1, "exactly one chart rule covers {resource}");
    let manifests = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": OPERATOR_NS}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": sa}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": sa},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": sa},
         "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": OPERATOR_NS}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": sa, "namespace": OPERATOR_NS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "moat-self"},
         "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": OPERATOR_NS}]},
    ]});
    let out = apply_stdin(&serde_json::to_string(&manifests).unwrap(), &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    format!("system:serviceaccount:{OPERATOR_NS}:{sa}")
}

/// Removing the Secret rule, or the NetworkPolicy rule, from the chart breaks the operator: the
/// rules are needed (and the full set is sufficient: every other cluster test uses it).
#[tokio::test]
async fn every_rbac_rule_is_needed_secrets_and_network_policies() {
    setup().await;
    let client = admin().await;
    for resource in ["secrets", "networkpolicies"] {
        let identity = identity_without(resource);
        let ns = TestNs::new(&client, &format!("rbac-{resource}")).await;
        let op = Operator::start(&ns.name, OperatorOpts { args: vec!["--as".into(), identity], ..Default::default() });
        apply_yaml(&client, &ns.name, &std::fs::read_to_string(repo().join("examples/broker-minimal.yaml")).unwrap())
            .await;
        let denied = eventually(T, "a Forbidden error in the operator log", || async {
            let log = op.log();
            log.lines().find(|l| l.contains("forbidden") && l.contains(resource)).map(str::to_string)
        })
        .await;
        assert!(denied.contains(resource));
        // not only at the first denial: the operator keeps retrying (failed reconciles requeue
        // after 5 s) and the broker must stay not Ready throughout
        holds_for(RBAC_WINDOW, &format!("the broker became Ready without {resource} access"), || async {
            let b: Option<MqttBroker> = get(&client, &ns.name, "plant-a").await;
            b.and_then(|b| condition(&b, "Ready")).is_none_or(|c| c.0 != "True")
        })
        .await;
    }
}

#[tokio::test]
async fn namespaced_mode_cannot_read_secrets_of_other_namespaces() {
    setup().await;
    let client = admin().await;
    let release_ns = TestNs::new(&client, "nsmode").await;
    let watched = TestNs::new(&client, "nsmode-a").await;
    let other = TestNs::new(&client, "nsmode-b").await;
    let rbac = template(
        &release_ns.name,
        &[
            "--set",
            &format!("watchNamespaces={{{}}}", watched.name),
            "--show-only",
            "templates/rbac.yaml",
            "--show-only",
            "templates/serviceaccount.yaml",
        ],
    );
    let out = apply_stdin(&rbac, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let identity = format!("system:serviceaccount:{}:moat", release_ns.name);
    let can = |verb: &str, ns: &str| {
        let out = kubectl(&["auth", "can-i", verb, "secrets", "-n", ns, "--as", &identity]);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    assert!(can("get", &watched.name) && can("list", &watched.name));
    assert!(!can("get", &other.name) && !can("list", &other.name) && !can("list", "kube-system"));
    assert!(
        !String::from_utf8_lossy(
            &kubectl(&["auth", "can-i", "list", "secrets", "--all-namespaces", "--as", &identity]).stdout
        )
        .contains("yes")
    );

    // and the operator with that identity reconciles the watched namespace
    let _op = Operator::start(
        &watched.name,
        OperatorOpts {
            args: vec!["--as".into(), identity, "--operator-namespace".into(), release_ns.name.clone()],
            ..Default::default()
        },
    );
    apply_yaml(&client, &watched.name, &std::fs::read_to_string(repo().join("examples/broker-minimal.yaml")).unwrap())
        .await;
    wait_condition::<MqttBroker>(&client, &watched.name, "plant-a", "Ready", "True", T).await;
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over() {
    setup().await;
    let client = admin().await;
    let ns = TestNs::new(&client, "leader").await;
    let opts = OperatorOpts { args: vec!["--lease-duration-seconds".into(), "6".into()], ..Default::default() };
    let mut a = Operator::start(&ns.name, opts.clone());
    eventually(T, "the first operator leads", || async { a.log().contains("became leader").then_some(()) }).await;
    let mut b = Operator::start(&ns.name, opts);
    eventually(T, "the second operator waits", || async { b.log().contains("waiting to become leader").then_some(()) })
        .await;
    apply_yaml(&client, &ns.name, &std::fs::read_to_string(repo().join("examples/broker-minimal.yaml")).unwrap()).await;
    wait_condition::<MqttBroker>(&client, &ns.name, "plant-a", "Ready", "True", T).await;
    assert!(a.log().contains("reconciled broker"));
    assert!(!b.log().contains("became leader") && !b.log().contains("reconciled broker"), "the standby reconciled");

    // the leader dies (no graceful release): the standby takes over within the lease duration
    a.kill();
    let killed = std::time::Instant::now();
    eventually(Duration::from_secs(30), "the standby leads", || async {
        b.log().contains("became leader").then_some(())
    })
    .await;
    assert!(killed.elapsed() <= Duration::from_secs(6 + 5), "takeover took {:?}", killed.elapsed());
    apply_yaml(
        &client,
        &ns.name,
        &std::fs::read_to_string(repo().join("tests/e2e/fixtures/plant-a-users.yaml")).unwrap(),
    )
    .await;
    wait_condition::<moat::crd::MqttUser>(&client, &ns.name, "alice", "Ready", "True", T).await;
    assert!(b.alive());
}
