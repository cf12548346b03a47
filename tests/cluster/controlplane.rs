//! The local control plane itself is real and complete (issue: local Kubernetes control plane).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams, PostParams};

use crate::harness::*;

#[tokio::test]
async fn apiserver_is_ready() {
    let client = admin().await;
    let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
    let body = client.request_text(req).await.expect("/readyz answers");
    assert_eq!(body.trim(), "ok");
}

#[tokio::test]
async fn at_least_two_fake_nodes_are_ready() {
    let client = admin().await;
    let nodes = Api::<Node>::all(client).list(&ListParams::default().labels("type=kwok")).await.unwrap();
    let ready = nodes
        .items
        .iter()
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count();
    assert!(ready >= 2, "only {ready} Ready kwok nodes");
}

#[tokio::test]
async fn a_deployment_is_scheduled_onto_a_kwok_node_and_becomes_ready() {
    let client = admin().await;
    let ns = TestNs::new(&client, "cp").await;
    let deploy: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]}}
        }
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), &ns.name).create(&PostParams::default(), &deploy).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let nodes = eventually(Duration::from_secs(60), "2 Ready pods on kwok nodes", || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await.ok()?;
        let ready: Vec<String> = list
            .items
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect();
        (ready.len() == 2).then_some(ready)
    })
    .await;
    assert!(nodes.iter().all(|n| n.starts_with("kwok-node-")), "{nodes:?}");
    let deploys: Api<Deployment> = Api::namespaced(client, &ns.name);
    eventually(Duration::from_secs(30), "Deployment Available", || async {
        let d = deploys.get("web").await.ok()?;
        (d.status?.available_replicas == Some(2)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_network_policy_is_stored_and_read_back() {
    let client = admin().await;
    let ns = TestNs::new(&client, "cp").await;
    let np: NetworkPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "deny-all"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                 "ingress": [{"from": [{"ipBlock": {"cidr": "10.20.0.0/16", "except": ["10.20.9.0/24"]}}], "ports": [{"port": 8883, "protocol": "TCP"}]}]}
    }))
    .unwrap();
    let api: Api<NetworkPolicy> = Api::namespaced(client, &ns.name);
    api.create(&PostParams::default(), &np).await.unwrap();
    let back = api.get("deny-all").await.unwrap();
    assert_eq!(back.spec, np.spec);
}
