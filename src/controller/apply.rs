//! Applying desired objects: compare with the cached observed object first, server-side apply
//! (field manager `moat`, forced) only when something moat owns differs.
//!
//! The comparison is what keeps moat quiet (a reconcile with nothing to do makes zero writes) and
//! what detects drift: [`drift`] returns the first path where the live object no longer carries a
//! value moat set, e.g. `spec.template.spec.containers[0].securityContext.runAsNonRoot`.

use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::context::Context;
use super::{Error, Result};
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
        if let Some(same) = super::lean::lean_data_matches(&want, &have) {
            // a lean cache keeps only the digest of the data (see `lean`)
            if !same {
                return Some("data (differs from what moat applied)".into());
            }
        } else if want != have {
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

/// The JSON merge patch (RFC 7386) that turns `from` into `to`, or `None` when they are equal:
/// changed members (objects recursively), removed members as `null`, arrays whole.
pub fn merge_patch(from: &Value, to: &Value) -> Option<Value> {
    match (from.as_object(), to.as_object()) {
        (Some(f), Some(t)) => {
            let mut patch = serde_json::Map::new();
            for (k, tv) in t {
                let changed = match f.get(k) {
                    Some(fv) if fv.is_object() && tv.is_object() => merge_patch(fv, tv),
                    Some(fv) if fv == tv => None,
                    _ => Some(tv.clone()),
                };
                if let Some(v) = changed {
                    patch.insert(k.clone(), v);
                }
            }
            for k in f.keys().filter(|k| !t.contains_key(*k)) {
                patch.insert(k.clone(), Value::Null);
            }
            (!patch.is_empty()).then_some(Value::Object(patch))
        }
        _ => (from != to).then(|| to.clone()),
    }
}

/// Applies a JSON merge patch (RFC 7386) to `target`, as the API server does.
pub fn apply_merge_patch(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let t = target.as_object_mut().expect("made an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            apply_merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
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
///
/// An object missing from the cache is *created* (never server-side applied), so an object of the
/// same name that moat did not create is never taken over: the apiserver answers 409 and the
/// caller decides (see [`ensure`]).
pub async fn apply<K>(client: &Client, desired: &K, observed: Option<&K>) -> kube::Result<(Applied, Option<String>)>
where
    K: Resource<Scope = NamespaceResourceScope> + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let ns = desired.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), &ns);
    let desired_json = with_type_meta::<K>(serde_json::to_value(desired).map_err(kube::Error::SerdeError)?);
    let outcome = match observed {
        None => {
            let obj: K = serde_json::from_value(desired_json).map_err(kube::Error::SerdeError)?;
            let pp = kube::api::PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
            let created = api.create(&pp, &obj).await?;
            return Ok((Applied::Created, created.resource_version()));
        }
        Some(o) => {
            let observed_json = serde_json::to_value(o).map_err(kube::Error::SerdeError)?;
            match drift(&desired_json, &with_type_meta::<K>(observed_json)) {
                None => return Ok((Applied::Unchanged, o.resource_version())),
                Some(path) => Applied::Updated(path),
            }
        }
    };
    let patched = api
        .patch(&desired.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&desired_json))
        .await?;
    Ok((outcome, patched.resource_version()))
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

// ----------------------------------------------------------------------------------------------
// The controllers' apply layer: ownership, the applied-hash stamp, drift and metrics.

/// Annotation with the hash of what moat last applied (drift = the object differs but carries
/// the hash of the current desired state, i.e. someone else changed it).
pub const APPLIED_HASH_ANNOTATION: &str = "mqtt.moat.dev/applied-hash";

/// What [`ensure`] did.
pub struct Ensured {
    /// Whether anything was written.
    pub applied: Applied,
    /// Drift that was found and repaired (the object carried moat's hash but differed).
    pub drift: Option<Drift>,
    /// The object's resourceVersion after this call.
    pub resource_version: Option<String>,
}

/// One change of a managed object made outside moat, found and repaired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    /// Kind of the object.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// The first field path that no longer carried moat's value, or `deleted`.
    pub change: String,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.change.as_str() {
            "deleted" => write!(f, "{} {} was deleted outside moat", self.kind, self.name),
            path => write!(f, "{} {} changed outside moat at {path}", self.kind, self.name),
        }
    }
}

/// Who controls an object: the uid of its controller owner reference, if any.
pub fn controller_uid<K: Resource>(obj: &K) -> Option<&str> {
    obj.meta().owner_references.as_ref()?.iter().find(|o| o.controller == Some(true)).map(|o| o.uid.as_str())
}

/// Whether `obj` is controlled by the object with uid `owner`.
pub fn owned_by<K: Resource>(obj: &K, owner: &OwnerReference) -> bool {
    controller_uid(obj) == Some(owner.uid.as_str())
}

fn name_conflict<K: Resource<DynamicType = ()>>(name: &str, holder: Option<&K>) -> Error {
    let holder = holder
        .and_then(|h| h.meta().owner_references.as_ref()?.iter().find(|o| o.controller == Some(true)))
        .map(|o| format!("{} {}", o.kind, o.name))
        .unwrap_or_else(|| "an object moat did not create".into());
    Error::NameConflict { kind: K::kind(&()).into_owned(), name: name.to_string(), holder }
}

/// Applies `desired` (controlled by `owner`, stamped with the hash of its desired state) unless
/// the observed object already matches. Never touches an object of that name that `owner` does
/// not control ([`Error::NameConflict`]): generated names of different objects can collide, and
/// moat must not adopt (or hand out) what belongs to someone else. Reports drift when the
/// observed object carries the current hash but differs (someone else changed what moat applied),
/// or when an object that moat had already applied (`established`) is missing (someone deleted it).
pub async fn ensure<K>(
    ctx: &Context,
    desired: &mut K,
    observed: Option<&K>,
    owner: &OwnerReference,
    established: bool,
) -> Result<Ensured>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
{
    if let Some(o) = observed
        && !owned_by(o, owner)
    {
        return Err(name_conflict(&desired.name_any(), Some(o)));
    }
    desired.meta_mut().owner_references = Some(vec![owner.clone()]);
    let hash = crate::digest_of(desired);
    desired
        .meta_mut()
        .annotations
        .get_or_insert_with(Default::default)
        .insert(APPLIED_HASH_ANNOTATION.into(), hash.clone());
    let (applied, resource_version) = match apply(&ctx.client, desired, observed).await {
        Ok(a) => a,
        Err(kube::Error::Api(e)) if e.code == 409 && observed.is_none() => {
            // a foreign object, or one an earlier reconcile created that the cache has not
            // shown yet: never write from a stale view (the desired state may depend on it)
            let api: Api<K> = Api::namespaced(ctx.client.clone(), &desired.namespace().unwrap_or_default());
            return Err(match api.get_opt(&desired.name_any()).await? {
                Some(l) if owned_by(&l, owner) => {
                    Error::StaleCache { kind: K::kind(&()).into_owned(), name: desired.name_any() }
                }
                other => name_conflict(&desired.name_any(), other.as_ref()),
            });
        }
        Err(e) => return Err(e.into()),
    };
    if applied != Applied::Unchanged {
        ctx.metrics.write(&K::kind(&()), "apply");
    }
    let change = match (&applied, observed) {
        (Applied::Updated(path), Some(o)) if o.annotations().get(APPLIED_HASH_ANNOTATION) == Some(&hash) => {
            Some(path.clone())
        }
        (Applied::Created, None) if established => Some("deleted".to_string()),
        _ => None,
    };
    let drift = change.map(|change| Drift { kind: K::kind(&()).into_owned(), name: desired.name_any(), change });
    if let Some(d) = &drift {
        tracing::warn!(drift = %d, "drift detected and repaired");
    }
    Ok(Ensured { applied, drift, resource_version })
}

/// Deletes `namespace/name` (counted in the write metrics); already gone is success.
pub async fn delete_as<K>(ctx: &Context, namespace: &str, name: &str) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + DeserializeOwned + Clone + Debug,
{
    ctx.metrics.write(&K::kind(&()), "delete");
    delete::<K>(&ctx.client, namespace, name).await?;
    Ok(())
}

/// Applies one owner's objects in order and accumulates what changed and what drifted.
pub struct Applier<'a> {
    /// The controller context.
    pub ctx: &'a Context,
    /// The owner of every object.
    pub owner: &'a OwnerReference,
    /// moat has applied this owner's objects before: a missing object was deleted by someone (drift).
    pub established: bool,
    /// Drift found and repaired.
    pub drift: Vec<Drift>,
    /// Objects written.
    pub changed: usize,
}

impl<'a> Applier<'a> {
    /// An applier for `owner`'s objects.
    pub fn new(ctx: &'a Context, owner: &'a OwnerReference, established: bool) -> Self {
        Self { ctx, owner, established, drift: vec![], changed: 0 }
    }

    /// [`ensure`]s one object.
    pub async fn apply<K>(&mut self, desired: &mut K, observed: Option<&K>) -> Result<()>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
    {
        self.apply_as(desired, observed, self.established).await
    }

    /// [`Self::apply`] of an object that may be new although the owner is established (a part
    /// added as a sharded file grows): when missing it is created, not reported as deleted.
    pub async fn apply_new<K>(&mut self, desired: &mut K, observed: Option<&K>) -> Result<()>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
    {
        self.apply_as(desired, observed, false).await
    }

    async fn apply_as<K>(&mut self, desired: &mut K, observed: Option<&K>, established: bool) -> Result<()>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
    {
        let outcome = ensure(self.ctx, desired, observed, self.owner, established).await?;
        if outcome.applied != Applied::Unchanged {
            self.changed += 1;
        }
        if let Some(d) = outcome.drift {
            let kind = crate::metrics::KindLabels { kind: K::kind(&()).into_owned() };
            self.ctx.metrics.drift_repaired.get_or_create(&kind).inc();
            self.drift.push(d);
        }
        Ok(())
    }

    /// Applies `desired`, or deletes the observed object when it is no longer wanted (only if
    /// the owner controls it).
    pub async fn apply_or_delete<K>(
        &mut self,
        desired: Option<K>,
        observed: Option<Arc<K>>,
        ns: &str,
        name: &str,
    ) -> Result<()>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
    {
        match (desired, observed) {
            (Some(mut d), observed) => self.apply(&mut d, observed.as_deref()).await,
            (None, Some(o)) if owned_by(&*o, self.owner) => {
                delete_as::<K>(self.ctx, ns, name).await?;
                self.changed += 1;
                Ok(())
            }
            (None, _) => Ok(()),
        }
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

    #[test]
    fn a_merge_patch_carries_only_the_changes_and_turns_one_value_into_the_other() {
        let from = json!({"a": 1, "gone": {"x": 1}, "nested": {"keep": "k", "change": 1, "drop": true},
                          "list": [{"id": "A", "passed": true}], "same": [1, 2]});
        let to = json!({"a": 1, "nested": {"keep": "k", "change": 2}, "list": [{"id": "A", "passed": false}],
                        "same": [1, 2], "new": "n"});
        let patch = merge_patch(&from, &to).unwrap();
        assert_eq!(
            patch,
            json!({"gone": null, "nested": {"change": 2, "drop": null}, "list": [{"id": "A", "passed": false}], "new": "n"})
        );
        let mut applied = from.clone();
        apply_merge_patch(&mut applied, &patch);
        assert_eq!(applied, to);
        assert_eq!(merge_patch(&to, &to), None);
        // from nothing: the whole value; to an empty object: every member removed
        let mut applied = Value::Null;
        apply_merge_patch(&mut applied, &merge_patch(&Value::Null, &to).unwrap());
        assert_eq!(applied, to);
        assert_eq!(merge_patch(&json!({"a": 1}), &json!({})), Some(json!({"a": null})));
    }

    #[test]
    fn drift_compares_a_desired_secret_with_a_lean_one_by_digest() {
        use super::super::lean::{self, tests::user_secret};
        use k8s_openapi::ByteString;
        use k8s_openapi::api::core::v1::Secret;
        let whole = user_secret(&[("username", "u"), ("password", "p"), ("port", "1883")]);
        let mut lean = whole.clone();
        lean::secret(&mut lean);
        let with_kind = |s: &Secret| {
            let mut v = serde_json::to_value(s).unwrap();
            v["kind"] = "Secret".into();
            v
        };
        assert_eq!(drift(&with_kind(&whole), &with_kind(&lean)), None);
        let mut moved = whole.clone();
        moved.data.as_mut().unwrap().insert("port".into(), ByteString(b"8883".to_vec()));
        assert_eq!(
            drift(&with_kind(&moved), &with_kind(&lean)).as_deref(),
            Some("data (differs from what moat applied)")
        );
    }
}
