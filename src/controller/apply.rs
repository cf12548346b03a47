//! Applying desired objects: compare with the cached observed object first, server-side apply
//! (field manager `moat`, forced) only when something moat owns differs.
//!
//! The comparison is what keeps moat quiet (a reconcile with nothing to do makes zero writes) and
//! what detects drift: [`drift`] returns the first path where the live object no longer carries a
//! value moat set, e.g. `spec.template.spec.containers[0].securityContext.runAsNonRoot`.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::names::FIELD_MANAGER;

/// Returns the first path at which `observed` does not carry what `desired` asks for, or `None`
/// when every value moat sets is present and equal.
///
/// Objects are compared as subsets (the apiserver adds defaults and other managers add fields);
/// arrays must have the same length with each element a subset; `metadata` is compared only on
/// labels, annotations and ownerReferences; a Secret's or ConfigMap's `data` must match exactly
/// (no extra keys either).
pub fn drift(desired: &Value, observed: &Value) -> Option<String> {
    let mut desired = desired.clone();
    if let Some(meta) = desired.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.retain(|k, _| matches!(k.as_str(), "labels" | "annotations" | "ownerReferences"));
    }
    let exact_data = matches!(desired.get("kind").and_then(Value::as_str), Some("Secret" | "ConfigMap"));
    if exact_data {
        let want = desired.get("data").cloned().unwrap_or(Value::Object(Default::default()));
        let have = observed.get("data").cloned().unwrap_or(Value::Object(Default::default()));
        if want != have {
            let keys = |v: &Value| v.as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
            let (w, h) = (keys(&want), keys(&have));
            let changed: Vec<&String> = w.iter().filter(|k| want.get(k.as_str()) != have.get(k.as_str())).collect();
            let extra: Vec<&String> = h.iter().filter(|k| !w.contains(k)).collect();
            return Some(format!("data (changed keys: {changed:?}, unexpected keys: {extra:?})"));
        }
        if let Some(obj) = desired.as_object_mut() {
            obj.remove("data");
        }
    }
    subset_drift(&desired, observed, String::new())
}

fn subset_drift(desired: &Value, observed: &Value, path: String) -> Option<String> {
    match (desired, observed) {
        (Value::Null, _) => None,
        (Value::Object(d), Value::Object(o)) => d.iter().find_map(|(k, dv)| {
            let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
            match o.get(k) {
                Some(ov) => subset_drift(dv, ov, p),
                None if dv.is_null() => None,
                None if dv.as_object().is_some_and(|m| m.values().all(Value::is_null)) => None,
                None => Some(p),
            }
        }),
        (Value::Array(d), Value::Array(o)) => {
            if d.len() != o.len() {
                return Some(format!("{path} (length {} != {})", o.len(), d.len()));
            }
            d.iter().zip(o).enumerate().find_map(|(i, (dv, ov))| subset_drift(dv, ov, format!("{path}[{i}]")))
        }
        (Value::Number(d), Value::Number(o)) => (d.as_f64() != o.as_f64()).then_some(path),
        (d, o) => (d != o).then_some(path),
    }
}

/// Outcome of [`apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The object already matched; nothing was written.
    Unchanged,
    /// The object did not exist and was created.
    Created,
    /// The object existed but differed (the path says where) and was updated.
    Updated(String),
}

/// Applies `desired` unless `observed` (from a reflector cache) already carries it.
pub async fn apply<K>(client: &Client, desired: &K, observed: Option<&K>) -> kube::Result<Applied>
where
    K: Resource<Scope = NamespaceResourceScope> + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let mut desired_json = serde_json::to_value(desired).map_err(kube::Error::SerdeError)?;
    let outcome = match observed {
        None => Applied::Created,
        Some(o) => {
            let observed_json = serde_json::to_value(o).map_err(kube::Error::SerdeError)?;
            // apiVersion/kind are not part of the typed struct's serialization in k8s-openapi
            match drift(&with_type_meta::<K>(desired_json.clone()), &with_type_meta::<K>(observed_json)) {
                None => return Ok(Applied::Unchanged),
                Some(path) => Applied::Updated(path),
            }
        }
    };
    desired_json = with_type_meta::<K>(desired_json);
    let ns = desired.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    api.patch(&desired.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&desired_json)).await?;
    Ok(outcome)
}

fn with_type_meta<K: Resource>(mut v: Value) -> Value
where
    K::DynamicType: Default,
{
    if let Some(obj) = v.as_object_mut() {
        let dt = K::DynamicType::default();
        obj.insert("apiVersion".into(), Value::String(K::api_version(&dt).into_owned()));
        obj.insert("kind".into(), Value::String(K::kind(&dt).into_owned()));
        obj.remove("status");
    }
    v
}

/// Deletes an object, treating "already gone" as success.
pub async fn delete<K>(client: &Client, namespace: &str, name: &str) -> kube::Result<bool>
where
    K: Resource<Scope = NamespaceResourceScope> + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_added_by_the_server_are_not_drift() {
        let desired = json!({"kind": "Service", "metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"ports": [{"port": 8883}]}});
        let observed = json!({"kind": "Service", "metadata": {"name": "a", "uid": "u", "labels": {"x": "1", "y": "2"}},
            "spec": {"ports": [{"port": 8883, "protocol": "TCP"}], "clusterIP": "10.96.0.5"}});
        assert_eq!(drift(&desired, &observed), None);
    }

    #[test]
    fn a_relaxed_security_context_is_drift_with_its_path() {
        let desired =
            json!({"spec": {"template": {"spec": {"containers": [{"securityContext": {"runAsNonRoot": true}}]}}}});
        let observed =
            json!({"spec": {"template": {"spec": {"containers": [{"securityContext": {"runAsNonRoot": false}}]}}}});
        assert_eq!(
            drift(&desired, &observed).as_deref(),
            Some("spec.template.spec.containers[0].securityContext.runAsNonRoot")
        );
        let removed = json!({"spec": {"template": {"spec": {"containers": [{"securityContext": {}}]}}}});
        assert!(drift(&desired, &removed).is_some());
        let extra_container =
            json!({"spec": {"template": {"spec": {"containers": [{"securityContext": {"runAsNonRoot": true}}, {}]}}}});
        assert!(drift(&desired, &extra_container).unwrap().contains("length"));
    }

    #[test]
    fn secret_data_must_match_exactly() {
        let desired = json!({"kind": "Secret", "data": {"a": "eA=="}});
        assert_eq!(drift(&desired, &json!({"kind": "Secret", "data": {"a": "eA=="}})), None);
        let changed = drift(&desired, &json!({"kind": "Secret", "data": {"a": "eQ=="}})).unwrap();
        assert!(changed.contains("\"a\""), "{changed}");
        let extra = drift(&desired, &json!({"kind": "Secret", "data": {"a": "eA==", "b": "eA=="}})).unwrap();
        assert!(extra.contains("unexpected keys: [\"b\"]"), "{extra}");
    }

    #[test]
    fn only_labels_annotations_and_owners_of_metadata_count() {
        let desired = json!({"metadata": {"name": "a", "namespace": "n", "labels": {"x": "1"}}});
        assert_eq!(drift(&desired, &json!({"metadata": {"labels": {"x": "1"}}})), None);
        assert_eq!(drift(&desired, &json!({"metadata": {"labels": {"x": "2"}}})).as_deref(), Some("metadata.labels.x"));
    }

    #[test]
    fn numbers_compare_by_value() {
        assert_eq!(drift(&json!({"a": 1}), &json!({"a": 1.0})), None);
        assert!(drift(&json!({"a": 1}), &json!({"a": 2})).is_some());
    }
}
