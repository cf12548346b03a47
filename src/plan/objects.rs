//! The Kubernetes objects of a plan, built in one place for the broker controller and `moat render`:
//! the broker's Secrets (CA, TLS, config, ACL parts, password shards, certificate ledger), the
//! trust-bundle ConfigMap, the users' certificate Secrets, the workload, Services and policies.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::PlanError;
use super::broker::{BrokerPlan, ca_secret_data};
use crate::crd::MqttFirewallSpec;
use crate::model::BrokerModel;
use crate::names;
use crate::render::network::{self, OperatorIdentity};
use crate::render::workload::{self, WorkloadParams};

/// Component label of users' certificate Secrets.
pub const CLIENT_CERTIFICATE_COMPONENT: &str = "client-certificate";

/// A Secret of the broker with string data stored as `data` (so drift compares it exactly).
pub fn secret(model: &BrokerModel, name: String, component: &str, data: BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: model.object_meta(name, component),
        type_: Some("Opaque".into()),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect()),
        ..Default::default()
    }
}

/// A per-user Secret (labelled with broker and user; the caller makes the MqttUser its owner).
pub fn user_secret(
    model: &BrokerModel,
    user_object: &str,
    name: String,
    component: &str,
    data: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
) -> Secret {
    let mut s = secret(model, name, component, data);
    s.metadata.labels.get_or_insert_with(Default::default).insert(names::USER_LABEL.into(), user_object.into());
    if !annotations.is_empty() {
        s.metadata.annotations = Some(annotations);
    }
    if component == CLIENT_CERTIFICATE_COMPONENT {
        s.type_ = Some("kubernetes.io/tls".into());
    }
    s
}

/// Everything a broker reconcile applies for a plan but its users' certificate Secrets (see
/// [`user_secrets`]); owners are set by the apply step.
pub struct BrokerObjects {
    /// The broker's Secrets, in the order they must be written: the certificate ledger first
    /// (a certificate is recorded before it reaches a user Secret), then CA, TLS (CRL), password
    /// shards (revocations of passwords), ACL parts and config.
    pub secrets: Vec<Secret>,
    /// The public trust bundle.
    pub ca_bundle: ConfigMap,
    /// The broker's ServiceAccount.
    pub service_account: ServiceAccount,
    /// The client Service.
    pub service: Service,
    /// The headless Service.
    pub headless: Service,
    /// The default-deny NetworkPolicy.
    pub default_deny: NetworkPolicy,
    /// The NetworkPolicy admitting the operator's probe, when probing is on.
    pub probe_policy: Option<NetworkPolicy>,
    /// The NetworkPolicy admitting the monitoring namespaces to the agents' metrics port.
    pub metrics_policy: Option<NetworkPolicy>,
    /// The workload.
    pub statefulset: StatefulSet,
    /// The PodDisruptionBudget (replicas > 1).
    pub pdb: Option<PodDisruptionBudget>,
    /// The cert-manager `Certificate` of the server certificate (`spec.tls.server.issuerRef`).
    pub server_certificate: Option<serde_json::Value>,
}

/// What the objects need beyond the plan.
pub struct ObjectInputs<'a> {
    /// Image of `moat agent`.
    pub agent_image: &'a str,
    /// Mosquitto version in the pod template (the upgrade state machine decides it).
    pub version: &'a str,
    /// StatefulSet partition.
    pub partition: i32,
    /// The broker's firewalls that are valid (only they contribute LoadBalancer source ranges:
    /// invalid means closed).
    pub firewalls: &'a [&'a MqttFirewallSpec],
    /// The operator, for the probe policy.
    pub operator: &'a OperatorIdentity,
    /// Namespaces whose pods may scrape the agents' `/metrics` (none: the port stays closed).
    pub metrics_namespaces: &'a [String],
}

/// Every object of a plan.
pub fn broker_objects(
    model: &BrokerModel,
    plan: &BrokerPlan,
    inputs: &ObjectInputs,
) -> Result<BrokerObjects, PlanError> {
    let n = &model.name;
    let mut secrets = vec![];
    for (i, part) in plan.ledger_parts()?.into_iter().enumerate() {
        secrets.push(secret(
            model,
            names::ledger_secret(n, i),
            "certificate-ledger",
            BTreeMap::from([("records".into(), part.text), ("manifest".into(), part.manifest)]),
        ));
    }
    secrets.push(secret(model, names::ca_secret(n), "ca", ca_secret_data(plan)));
    let mut tls = BTreeMap::from([
        ("tls.crt".into(), plan.server.cert_pem.clone()),
        ("tls.key".into(), plan.server.key_pem.clone()),
        ("ca.crt".into(), plan.ca.trust_bundle()),
        ("crl.pem".into(), plan.crl_pem.clone()),
    ]);
    if let Some(r) = &plan.server_renewal_handled {
        tls.insert(super::broker::KEY_RENEWAL_HANDLED.into(), r.clone());
    }
    secrets.push(secret(model, names::tls_secret(n), "tls", tls));
    for (i, shard) in plan.shards.iter().enumerate() {
        secrets.push(secret(model, names::passwd_secret(n, i), "passwd", shard.data()));
    }
    for (i, part) in plan.acl_parts.iter().enumerate() {
        secrets.push(secret(
            model,
            names::acl_secret(n, i),
            "acl",
            BTreeMap::from([("acl".into(), part.text.clone()), ("manifest".into(), part.manifest.clone())]),
        ));
    }
    secrets.push(secret(
        model,
        names::config_secret(n),
        "config",
        BTreeMap::from([("mosquitto.conf".into(), plan.config.text.clone())]),
    ));
    let params = WorkloadParams {
        agent_image: inputs.agent_image.to_string(),
        version: inputs.version.to_string(),
        partition: inputs.partition,
        restart_hash: plan.config.restart_hash.clone(),
        passwd_slots: workload::passwd_slots(plan.shards.len()),
        acl_slots: workload::passwd_slots(plan.acl_parts.len()),
        sessions_epoch: plan.sessions_epoch,
    };
    let ranges = network::load_balancer_source_ranges(inputs.firewalls.iter().copied());
    Ok(BrokerObjects {
        secrets,
        ca_bundle: ca_bundle(model, plan),
        service_account: workload::service_account(model),
        service: network::service(model, &ranges),
        headless: network::headless_service(model),
        default_deny: network::default_deny(model),
        probe_policy: model.spec.security.active_probe.then(|| network::probe_policy(model, inputs.operator)),
        metrics_policy: network::metrics_policy(model, inputs.metrics_namespaces),
        statefulset: workload::statefulset(model, &params),
        pdb: workload::pod_disruption_budget(model),
        server_certificate: server_certificate(model),
    })
}

/// Users' certificate Secrets with their MqttUser's name (each owned by its user), made one at a
/// time as they are taken: 10,000 of them made at once, and copied, were ≈ 80 MB at a burst's peak.
pub fn user_secrets<'a>(model: &'a BrokerModel, plan: &'a BrokerPlan) -> impl Iterator<Item = (String, Secret)> + 'a {
    let trust_bundle = plan.trust_bundle();
    plan.client_certs.iter().map(move |(user, cert)| {
        let s = user_secret(
            model,
            user,
            names::certificate_secret(user),
            CLIENT_CERTIFICATE_COMPONENT,
            super::user::certificate_data(model, &cert.issued, &trust_bundle),
            BTreeMap::new(),
        );
        (user.clone(), s)
    })
}

/// The cert-manager `Certificate` (cert-manager.io/v1) that asks the broker's issuer for its
/// server certificate: the names, lifetime and key type moat would use itself; the Secret is
/// labelled as the broker's, so moat's cache sees it and its renewal reaches the pods.
pub fn server_certificate(model: &BrokerModel) -> Option<serde_json::Value> {
    let issuer = model.spec.tls.server.issuer_ref.as_ref()?;
    let labels = model.labels("server-certificate");
    let ips: Vec<String> = model.server_ip_addresses().iter().map(|ip| ip.to_string()).collect();
    let d = &model.durations;
    Some(serde_json::json!({
        "apiVersion": "cert-manager.io/v1",
        "kind": "Certificate",
        "metadata": {
            "name": names::server_certificate(&model.name),
            "namespace": model.namespace,
            "labels": labels,
        },
        "spec": {
            "secretName": names::server_certificate_secret(&model.name),
            "secretTemplate": {"labels": labels},
            "dnsNames": model.server_dns_names(),
            "ipAddresses": ips,
            "duration": format!("{}s", d.server_validity.as_secs()),
            "renewBefore": format!("{}s", d.server_renew_before.as_secs()),
            "privateKey": {"algorithm": "ECDSA", "size": 256, "encoding": "PKCS8", "rotationPolicy": "Always"},
            "usages": ["server auth", "digital signature"],
            "issuerRef": {
                "name": issuer.name,
                "kind": format!("{:?}", issuer.kind),
                "group": issuer.group,
            },
        },
    }))
}

impl BrokerObjects {
    /// The broker's Secrets as a pod mounts them (the workload's volumes), for
    /// [`crate::render::bundle::assemble`]: what the pods' agents install when they are current.
    pub fn mounted(&self, broker: &str) -> crate::render::bundle::Mounted {
        let mut out = crate::render::bundle::Mounted::new();
        for s in &self.secrets {
            let name = s.metadata.name.as_deref().unwrap_or_default();
            let dir = if name == names::config_secret(broker) {
                "config".to_string()
            } else if name == names::tls_secret(broker) {
                "tls".to_string()
            } else if let Some(n) = names::passwd_shard_index(broker, name) {
                format!("passwd/{n}")
            } else if let Some(n) = names::part_index(broker, "acl", name) {
                format!("acl/{n}")
            } else {
                continue;
            };
            for (k, v) in s.data.iter().flatten() {
                out.insert(format!("{dir}/{k}"), v.0.clone());
            }
        }
        out
    }
}

/// The public trust bundle for clients (`ca.crt`: every CA of a rollover).
pub fn ca_bundle(model: &BrokerModel, plan: &BrokerPlan) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta { ..model.object_meta(names::ca_bundle_configmap(&model.name), "ca-bundle") },
        data: Some(BTreeMap::from([("ca.crt".into(), plan.trust_bundle())])),
        ..Default::default()
    }
}
