//! The Kubernetes objects of a plan: Secrets, the trust-bundle ConfigMap, and the workload.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::broker::{BrokerPlan, ca_secret_data};
use crate::model::BrokerModel;
use crate::names;

/// A Secret of the broker with string data stored as `data` (so drift compares it exactly).
pub fn secret(
    model: &BrokerModel,
    name: String,
    component: &str,
    data: BTreeMap<String, String>,
    owner: Option<&OwnerReference>,
) -> Secret {
    Secret {
        metadata: ObjectMeta { owner_references: owner.map(|o| vec![o.clone()]), ..model.object_meta(name, component) },
        type_: Some("Opaque".into()),
        data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect()),
        ..Default::default()
    }
}

/// A per-user Secret (owned by the MqttUser, labelled with broker and user).
pub fn user_secret(
    model: &BrokerModel,
    user_object: &str,
    name: String,
    component: &str,
    data: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    owner: Option<&OwnerReference>,
) -> Secret {
    let mut s = secret(model, name, component, data, owner);
    s.metadata.labels.get_or_insert_with(Default::default).insert(names::USER_LABEL.into(), user_object.into());
    if !annotations.is_empty() {
        s.metadata.annotations = Some(annotations);
    }
    if component == "client-certificate" {
        s.type_ = Some("kubernetes.io/tls".into());
    }
    s
}

/// The broker's Secrets from a plan: CA (never mounted), TLS, config, ACL and password shards.
pub fn broker_secrets(model: &BrokerModel, plan: &BrokerPlan, owner: Option<&OwnerReference>) -> Vec<Secret> {
    let n = &model.name;
    let mut out = vec![
        secret(model, names::ca_secret(n), "ca", ca_secret_data(plan), owner),
        secret(
            model,
            names::tls_secret(n),
            "tls",
            BTreeMap::from([
                ("tls.crt".into(), plan.server.cert_pem.clone()),
                ("tls.key".into(), plan.server.key_pem.clone()),
                ("ca.crt".into(), plan.ca.trust_bundle()),
                ("crl.pem".into(), plan.crl_pem.clone()),
            ]),
            owner,
        ),
        secret(
            model,
            names::config_secret(n),
            "config",
            BTreeMap::from([("mosquitto.conf".into(), plan.config.text.clone())]),
            owner,
        ),
        secret(
            model,
            names::acl_secret(n),
            "acl",
            BTreeMap::from([("acl".into(), plan.acl_text.clone()), ("sources".into(), plan.acl_sources.clone())]),
            owner,
        ),
    ];
    for (i, shard) in plan.shards.iter().enumerate() {
        out.push(secret(model, names::passwd_secret(n, i), "passwd", shard.data(), owner));
    }
    out
}

/// The public trust bundle for clients (`ca.crt`: every CA of a rollover).
pub fn ca_bundle(model: &BrokerModel, plan: &BrokerPlan, owner: Option<&OwnerReference>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            owner_references: owner.map(|o| vec![o.clone()]),
            ..model.object_meta(names::ca_bundle_configmap(&model.name), "ca-bundle")
        },
        data: Some(BTreeMap::from([("ca.crt".into(), plan.ca.trust_bundle())])),
        ..Default::default()
    }
}
