//! The controller test tier without a cluster: an in-memory API server behind a real
//! `kube::Client`, whose writes feed the same reflector stores (made lean the same way) the
//! controllers read. A test drives one reconcile at a time and asserts on the requests it made:
//! the planned writes, the status, and that a reconcile with nothing to do writes nothing.
//!
//! It answers what the controllers ask (create, server-side apply, status merge patch, merge patch,
//! get, delete, list of nothing) the way the API server does for a sole field manager; it is not
//! a general API server (no defaulting, no admission, no field ownership), which is what the
//! real-apiserver tests are for.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use http::{Request, Response, StatusCode};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::client::Body;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::Event;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::apply::apply_merge_patch;
use super::context::{Board, BoardTriggers, Config, Context, Stores};
use crate::crd::{MqttAcl, MqttBroker, MqttFirewall, MqttUser};
use crate::metrics::Metrics;

/// One request the controllers made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// HTTP method and what it did: `create`, `apply`, `status`, `merge`, `get`, `list`, `delete`.
    pub verb: &'static str,
    /// The resource (plural), e.g. `secrets`.
    pub resource: String,
    /// The object's name (empty for a create or a list).
    pub name: String,
}

impl Call {
    /// Whether this call changes something (everything but reads).
    pub fn is_write(&self) -> bool {
        !matches!(self.verb, "get" | "list")
    }
}

type Sink = Box<dyn Fn(Option<&Value>, Option<&Value>) + Send>;

#[derive(Default)]
struct State {
    /// Objects by (collection path, name).
    objects: BTreeMap<(String, String), Value>,
    resource_version: u64,
    calls: Vec<Call>,
    /// Feeds a resource's store: (previous, next); next None = deleted.
    sinks: HashMap<String, Sink>,
    /// Resources whose API is not served (a CRD that is not installed).
    missing: Vec<String>,
}

/// The in-memory API server, its client, and the controllers' context on it.
pub struct FakeCluster {
    state: Arc<Mutex<State>>,
    /// The context the reconciles run with.
    pub ctx: Arc<Context>,
    /// Which users and ACLs the broker's published outcomes woke.
    woken: Mutex<BoardTriggers>,
}

/// A store fed by the fake server; `lean` as in `controller::run`.
fn fed<K>(state: &Arc<Mutex<State>>, resource: &str, lean: fn(&mut K)) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Send + Sync + 'static,
{
    let (store, mut writer) = reflector::store::<K>();
    writer.apply_watcher_event(&Event::Init);
    writer.apply_watcher_event(&Event::InitDone);
    let writer = Mutex::new(writer);
    let object = move |v: &Value| {
        let mut o: K = serde_json::from_value(v.clone()).expect("the fake stores only valid objects");
        lean(&mut o);
        o
    };
    let sink: Sink = Box::new(move |previous, next| {
        let mut w = writer.lock().unwrap();
        match (previous, next) {
            (_, Some(v)) => w.apply_watcher_event(&Event::Apply(object(v))),
            (Some(v), None) => w.apply_watcher_event(&Event::Delete(object(v))),
            (None, None) => {}
        }
    });
    state.lock().unwrap().sinks.insert(resource.to_string(), sink);
    store
}

impl FakeCluster {
    /// An empty cluster and a context whose stores it feeds.
    pub fn new(config: Config) -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let client = Client::new(Server(state.clone()), "default");
        let stores = Stores {
            brokers: fed::<MqttBroker>(&state, "mqttbrokers", |_| {}),
            users: fed::<MqttUser>(&state, "mqttusers", super::lean::user),
            acls: fed::<MqttAcl>(&state, "mqttacls", |_| {}),
            firewalls: fed::<MqttFirewall>(&state, "mqttfirewalls", |_| {}),
            secrets: fed::<Secret>(&state, "secrets", super::lean::secret),
            watched_secrets: fed::<Secret>(&state, "watched-secrets", |_| {}),
            statefulsets: fed::<StatefulSet>(&state, "statefulsets", |_| {}),
            services: fed::<Service>(&state, "services", |_| {}),
            network_policies: fed::<NetworkPolicy>(&state, "networkpolicies", |_| {}),
            service_accounts: fed::<ServiceAccount>(&state, "serviceaccounts", |_| {}),
            pdbs: fed::<PodDisruptionBudget>(&state, "poddisruptionbudgets", |_| {}),
            pods: fed::<Pod>(&state, "pods", |_| {}),
            config_maps: fed::<ConfigMap>(&state, "configmaps", |_| {}),
        };
        let (board, woken) = Board::new();
        let reporter = Reporter { controller: "moat".into(), instance: None };
        let ctx = Arc::new(Context::new(client, config, stores, Metrics::default(), reporter, board));
        FakeCluster { state, ctx, woken: Mutex::new(woken) }
    }

    /// Creates `obj` as a client would (uid, resourceVersion, generation, creationTimestamp set).
    pub fn create<K: Resource<DynamicType = ()> + serde::Serialize>(&self, obj: &K) -> Value {
        let v = serde_json::to_value(obj).unwrap();
        let collection = collection_of::<K>(obj.meta().namespace.as_deref().unwrap_or("default"));
        let mut st = self.state.lock().unwrap();
        create(&mut st, &collection, v).expect("fixture names are unique")
    }

    /// Changes a stored object as someone else would (`edit` gets the whole object).
    pub fn edit<K: Resource<DynamicType = ()>>(&self, namespace: &str, name: &str, edit: impl FnOnce(&mut Value)) {
        let collection = collection_of::<K>(namespace);
        let mut st = self.state.lock().unwrap();
        let mut v = st.objects.get(&(collection.clone(), name.to_string())).cloned().expect("object to edit");
        edit(&mut v);
        let generation = v["metadata"]["generation"].as_i64();
        if let Some(g) = generation {
            v["metadata"]["generation"] = json!(g + 1);
        }
        store(&mut st, &collection, v);
    }

    /// A stored object.
    pub fn get<K: Resource<DynamicType = ()> + DeserializeOwned>(&self, namespace: &str, name: &str) -> Option<K> {
        let collection = collection_of::<K>(namespace);
        let st = self.state.lock().unwrap();
        st.objects.get(&(collection, name.to_string())).map(|v| serde_json::from_value(v.clone()).unwrap())
    }

    /// Stops serving `resource` (as if its CRD were not installed).
    pub fn uninstall(&self, resource: &str) {
        self.state.lock().unwrap().missing.push(resource.to_string());
    }

    /// The users the broker's published verdicts woke since the last call.
    pub fn woken_users(&self) -> Vec<String> {
        let mut w = self.woken.lock().unwrap();
        let mut out = vec![];
        while let Ok(r) = w.users.try_recv() {
            out.push(r.name.clone());
        }
        out
    }

    /// The requests made since the last call of this function.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.state.lock().unwrap().calls)
    }

    /// The writes made since the last [`Self::take_calls`] (Events aside).
    pub fn take_writes(&self) -> Vec<Call> {
        self.take_calls().into_iter().filter(|c| c.is_write() && c.resource != "events").collect()
    }
}

fn collection_of<K: Resource<DynamicType = ()>>(namespace: &str) -> String {
    let url = K::url_path(&(), Some(namespace));
    url.trim_end_matches('/').to_string()
}

fn now_rfc3339() -> String {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap().to_string()
}

fn store(st: &mut State, collection: &str, mut v: Value) -> Value {
    st.resource_version += 1;
    v["metadata"]["resourceVersion"] = json!(st.resource_version.to_string());
    let name = v["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let previous = st.objects.insert((collection.to_string(), name), v.clone());
    let resource = collection.rsplit('/').next().unwrap_or_default();
    if let Some(sink) = st.sinks.get(resource) {
        sink(previous.as_ref(), Some(&v));
    }
    // a Secret labelled for the watched cache also lands there (as the label-selected watch has it)
    if resource == "secrets"
        && v["metadata"]["labels"][crate::names::WATCH_LABEL] == "true"
        && let Some(sink) = st.sinks.get("watched-secrets")
    {
        sink(previous.as_ref(), Some(&v));
    }
    v
}

fn create(st: &mut State, collection: &str, mut v: Value) -> Result<Value, StatusCode> {
    let name = v["metadata"]["name"].as_str().unwrap_or_default().to_string();
    if st.objects.contains_key(&(collection.to_string(), name.clone())) {
        return Err(StatusCode::CONFLICT);
    }
    let meta = &mut v["metadata"];
    meta["uid"] = json!(format!("uid-{}-{}", name, st.resource_version + 1));
    meta["creationTimestamp"] = json!(now_rfc3339());
    if collection.contains("/apis/mqtt.moat.dev/") {
        meta["generation"] = json!(1);
    }
    Ok(store(st, collection, v))
}

/// The `tower::Service` the client talks to.
#[derive(Clone)]
struct Server(Arc<Mutex<State>>);

impl tower::Service<Request<Body>> for Server {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap_or_default();
            let content_type =
                parts.headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let mut st = state.lock().unwrap();
            let (code, out) = answer(&mut st, parts.method.as_str(), parts.uri.path(), &content_type, &bytes);
            Ok(Response::builder()
                .status(code)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::from(serde_json::to_vec(&out).unwrap()))
                .unwrap())
        })
    }
}

/// Splits `/api/v1/namespaces/ns/secrets/name/status` into (collection, name, subresource).
fn route(path: &str) -> (String, Option<String>, Option<String>) {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    // the resource follows `namespaces/<ns>`; cluster-scoped paths have it after the version
    let at = match parts.iter().position(|p| *p == "namespaces") {
        Some(i) if parts.len() > i + 2 => i + 2,
        _ => if parts[0] == "api" { 2 } else { 3 }.min(parts.len() - 1),
    };
    let collection = format!("/{}", parts[..=at].join("/"));
    (collection, parts.get(at + 1).map(|s| s.to_string()), parts.get(at + 2).map(|s| s.to_string()))
}

fn status_error(code: StatusCode, message: &str) -> (StatusCode, Value) {
    let reason = match code {
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::CONFLICT => "AlreadyExists",
        _ => "BadRequest",
    };
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
               "message": message, "code": code.as_u16()}),
    )
}

fn answer(st: &mut State, method: &str, path: &str, content_type: &str, body: &[u8]) -> (StatusCode, Value) {
    let (collection, name, sub) = route(path);
    let resource = collection.rsplit('/').next().unwrap_or_default().to_string();
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let key = (collection.clone(), name.clone().unwrap_or_default());
    let verb = match (method, &name, sub.as_deref()) {
        ("POST", None, _) => "create",
        ("PATCH", Some(_), Some("status")) => "status",
        ("PATCH", Some(_), _) if content_type.contains("apply-patch") => "apply",
        ("PATCH", Some(_), _) => "merge",
        ("GET", Some(_), _) => "get",
        ("GET", None, _) => "list",
        ("DELETE", Some(_), _) => "delete",
        _ => return status_error(StatusCode::BAD_REQUEST, "not supported by the fake"),
    };
    let object_name = name.clone().or_else(|| body["metadata"]["name"].as_str().map(String::from)).unwrap_or_default();
    st.calls.push(Call { verb, resource: resource.clone(), name: object_name.clone() });
    if st.missing.contains(&resource) {
        return status_error(StatusCode::NOT_FOUND, "the server could not find the requested resource");
    }
    let not_found = format!("{resource} \"{object_name}\" not found");
    match verb {
        "create" => match create(st, &collection, body) {
            Ok(v) => (StatusCode::CREATED, v),
            Err(code) => status_error(code, "already exists"),
        },
        "get" => match st.objects.get(&key) {
            Some(v) => (StatusCode::OK, v.clone()),
            None => status_error(StatusCode::NOT_FOUND, &not_found),
        },
        "list" => {
            let items: Vec<Value> =
                st.objects.iter().filter(|((c, _), _)| *c == collection).map(|(_, v)| v.clone()).collect();
            (StatusCode::OK, json!({"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items}))
        }
        "delete" => match st.objects.remove(&key) {
            Some(v) => {
                if let Some(sink) = st.sinks.get(&resource) {
                    sink(Some(&v), None);
                }
                (StatusCode::OK, v)
            }
            None => status_error(StatusCode::NOT_FOUND, &not_found),
        },
        _ => {
            let existing = st.objects.get(&key).cloned();
            let existing_rv = existing.as_ref().map(|v| v["metadata"]["resourceVersion"].clone());
            let next = match (verb, existing) {
                // a merge patch of the status may carry a resourceVersion to be current at
                ("status", Some(_)) | ("merge", Some(_)) if stale(&existing_rv, &body) => {
                    return (
                        StatusCode::CONFLICT,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict",
                               "message": "the object has been modified", "code": 409}),
                    );
                }
                ("status", Some(mut v)) if content_type.contains("merge-patch") => {
                    apply_merge_patch(&mut v["status"], &body["status"]);
                    v
                }
                ("status", Some(mut v)) => {
                    v["status"] = body["status"].clone();
                    v
                }
                ("merge", Some(mut v)) => {
                    apply_merge_patch(&mut v, &body);
                    v
                }
                // server-side apply by the only manager: its fields replace the object's
                ("apply", Some(v)) => {
                    let mut next = body.clone();
                    for keep in ["uid", "creationTimestamp", "generation"] {
                        next["metadata"][keep] = v["metadata"][keep].clone();
                    }
                    if !v["status"].is_null() {
                        next["status"] = v["status"].clone();
                    }
                    next
                }
                ("apply", None) => {
                    return match create(st, &collection, body) {
                        Ok(v) => (StatusCode::CREATED, v),
                        Err(code) => status_error(code, "already exists"),
                    };
                }
                _ => return status_error(StatusCode::NOT_FOUND, &not_found),
            };
            (StatusCode::OK, store(st, &collection, next))
        }
    }
}

/// Whether a patch carries a resourceVersion other than the stored object's.
fn stale(stored: &Option<Value>, patch: &Value) -> bool {
    let wanted = &patch["metadata"]["resourceVersion"];
    !wanted.is_null() && stored.as_ref() != Some(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_split_collection_name_and_subresource() {
        assert_eq!(route("/api/v1/namespaces/iot/secrets"), ("/api/v1/namespaces/iot/secrets".into(), None, None));
        assert_eq!(
            route("/apis/mqtt.moat.dev/v1alpha1/namespaces/iot/mqttusers/u1/status"),
            ("/apis/mqtt.moat.dev/v1alpha1/namespaces/iot/mqttusers".into(), Some("u1".into()), Some("status".into()))
        );
        assert_eq!(collection_of::<Secret>("iot"), "/api/v1/namespaces/iot/secrets");
    }
}
