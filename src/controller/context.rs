//! Shared state of the controllers: client, reflector stores, configuration, clock, metrics, events.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource};

use crate::crd::{MqttAcl, MqttBroker, MqttFirewall, MqttUser};
use crate::metrics::Metrics;
use crate::render::network::OperatorIdentity;

/// Operator configuration (from `moat run` flags).
#[derive(Clone, Debug)]
pub struct Config {
    /// Image of `moat agent` in broker pods.
    pub agent_image: String,
    /// Where the operator runs (for the probe NetworkPolicy).
    pub operator: OperatorIdentity,
    /// Maximum concurrent reconciles per controller.
    pub concurrency: u16,
    /// Debounce of bursts of triggers for one object.
    pub debounce: Duration,
    /// Added to the wall clock (test hook to move time forward; never set in production).
    pub clock_offset: Duration,
    /// Whether the operator actively probes broker endpoints.
    pub active_probe: bool,
    /// ConfigMap (in the operator namespace) that extends the security-patch catalog.
    pub catalog_configmap: Option<String>,
    /// Where the outsider runs (the vantage point no MqttFirewall admits), if anywhere.
    pub outsider: Option<Outsider>,
    /// The report APIs compliance is written to.
    pub reports: crate::compliance::reports::Reports,
    /// Namespaces whose pods may scrape the broker agents' `/metrics`.
    pub agent_metrics_namespaces: Vec<String>,
    /// How often the broker agents are asked for bursts of refused logins.
    pub activity_interval: Duration,
}

/// Where `moat outsider` runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outsider {
    /// Its namespace (its pods carry `mqtt.moat.dev/role=outsider`).
    pub namespace: String,
    /// The port of its `GET /dial`.
    pub port: u16,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            agent_image: format!("ghcr.io/moat-dev/moat:{}", env!("CARGO_PKG_VERSION")),
            operator: OperatorIdentity {
                namespace: "moat-system".into(),
                pod_labels: BTreeMap::from([("app.kubernetes.io/name".into(), "moat".into())]),
            },
            concurrency: 16,
            debounce: Duration::from_millis(500),
            clock_offset: Duration::ZERO,
            active_probe: true,
            catalog_configmap: None,
            outsider: None,
            reports: Default::default(),
            agent_metrics_namespaces: vec![],
            activity_interval: Duration::from_secs(15),
        }
    }
}

/// Reflector stores (all reads during reconciles come from here, never from the API).
#[derive(Clone)]
pub struct Stores {
    /// MqttBrokers.
    pub brokers: Store<MqttBroker>,
    /// MqttUsers.
    pub users: Store<MqttUser>,
    /// MqttAcls.
    pub acls: Store<MqttAcl>,
    /// MqttFirewalls.
    pub firewalls: Store<MqttFirewall>,
    /// Secrets moat manages (label `app.kubernetes.io/managed-by=moat`).
    pub secrets: Store<Secret>,
    /// Secrets referenced by users (label `mqtt.moat.dev/watch=true`).
    pub watched_secrets: Store<Secret>,
    /// Broker StatefulSets.
    pub statefulsets: Store<StatefulSet>,
    /// Broker Services.
    pub services: Store<Service>,
    /// Broker NetworkPolicies.
    pub network_policies: Store<NetworkPolicy>,
    /// Broker ServiceAccounts.
    pub service_accounts: Store<ServiceAccount>,
    /// Broker PodDisruptionBudgets.
    pub pdbs: Store<PodDisruptionBudget>,
    /// Broker pods.
    pub pods: Store<Pod>,
    /// ConfigMaps moat manages (trust bundles).
    pub config_maps: Store<ConfigMap>,
}

impl Stores {
    /// Whether every reflector has completed its initial list. Reconciles wait for it: deciding
    /// from a half-filled cache could, for example, take an existing password for a missing one.
    pub fn ready(&self) -> bool {
        use futures::FutureExt;
        fn r<K>(s: &Store<K>) -> bool
        where
            K: Resource + Clone + 'static,
            K::DynamicType: Eq + std::hash::Hash + Clone,
        {
            s.wait_until_ready().now_or_never().is_some_and(|x| x.is_ok())
        }
        r(&self.brokers)
            && r(&self.users)
            && r(&self.acls)
            && r(&self.firewalls)
            && r(&self.secrets)
            && r(&self.watched_secrets)
            && r(&self.statefulsets)
            && r(&self.services)
            && r(&self.network_policies)
            && r(&self.service_accounts)
            && r(&self.pdbs)
            && r(&self.pods)
            && r(&self.config_maps)
    }

    /// Cached object by namespace and name.
    pub fn get<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>>
    where
        K: Resource + Clone + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        store.get(&ObjectRef::new(name).within(namespace))
    }

    /// Users referencing broker `namespace/broker`.
    pub fn users_of(&self, namespace: &str, broker: &str) -> Vec<Arc<MqttUser>> {
        self.users.state_filter(|u| in_broker(u, namespace, &u.spec.broker_ref.name, broker))
    }

    /// ACLs referencing broker `namespace/broker`.
    pub fn acls_of(&self, namespace: &str, broker: &str) -> Vec<Arc<MqttAcl>> {
        self.acls.state_filter(|a| in_broker(a, namespace, &a.spec.broker_ref.name, broker))
    }

    /// Firewalls referencing broker `namespace/broker`.
    pub fn firewalls_of(&self, namespace: &str, broker: &str) -> Vec<Arc<MqttFirewall>> {
        self.firewalls.state_filter(|f| in_broker(f, namespace, &f.spec.broker_ref.name, broker))
    }

    /// Managed Secrets labelled as belonging to broker `namespace/broker`.
    pub fn secrets_of(&self, namespace: &str, broker: &str) -> Vec<Arc<Secret>> {
        labelled_of(&self.secrets, namespace, broker)
    }
}

fn in_broker<K: Resource>(obj: &K, namespace: &str, reference: &str, broker: &str) -> bool {
    obj.meta().namespace.as_deref() == Some(namespace) && reference == broker
}

/// Cached objects in `namespace` labelled as belonging to `broker` (the store is filtered in
/// place, not copied).
pub fn labelled_of<K>(store: &Store<K>, namespace: &str, broker: &str) -> Vec<Arc<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store.state_filter(|o| {
        o.meta().namespace.as_deref() == Some(namespace)
            && o.meta().labels.as_ref().and_then(|l| l.get(crate::names::BROKER_LABEL)).map(String::as_str)
                == Some(broker)
    })
}

/// The clock of the controllers: wall time plus a test-only offset.
#[derive(Clone, Copy, Debug, Default)]
pub struct Clock {
    offset: Duration,
}

impl Clock {
    /// A clock `offset` ahead of wall time.
    pub fn with_offset(offset: Duration) -> Self {
        Self { offset }
    }
    /// Now, in whole seconds (the precision of Kubernetes timestamps, so a value decided now and
    /// read back from a status or annotation compares equal).
    pub fn now(&self) -> jiff::Timestamp {
        let wall = jiff::Timestamp::now();
        let offset = jiff::SignedDuration::try_from(self.offset).unwrap_or(jiff::SignedDuration::ZERO);
        let t = wall.checked_add(offset).unwrap_or(wall);
        jiff::Timestamp::from_second(t.as_second()).unwrap_or(t)
    }
}

/// What the broker controller last decided and applied for one broker: the verdict of every
/// user and the outcome of every ACL. The user and ACL controllers read it instead of deciding
/// again, and are woken only when their own entry changes.
#[derive(Clone, Debug, PartialEq)]
pub enum Published {
    /// The broker's spec is invalid: nothing of it is in effect.
    BrokerInvalid(String),
    /// The plan's outcomes, applied.
    Applied {
        /// Verdict per MqttUser name.
        users: Arc<BTreeMap<String, crate::plan::broker::UserOutcome>>,
        /// Outcome per MqttAcl name.
        acls: BTreeMap<String, crate::plan::broker::AclOutcome>,
    },
}

/// The published outcomes of every broker, and the channels that wake the user and ACL controllers.
pub struct Board {
    published: Mutex<HashMap<(String, String), Arc<Published>>>,
    users: tokio::sync::mpsc::UnboundedSender<ObjectRef<MqttUser>>,
    acls: tokio::sync::mpsc::UnboundedSender<ObjectRef<MqttAcl>>,
}

/// The receiving ends of a [`Board`]'s wake-ups.
pub struct BoardTriggers {
    /// MqttUsers whose verdict changed.
    pub users: tokio::sync::mpsc::UnboundedReceiver<ObjectRef<MqttUser>>,
    /// MqttAcls whose outcome changed.
    pub acls: tokio::sync::mpsc::UnboundedReceiver<ObjectRef<MqttAcl>>,
}

impl Board {
    /// An empty board and its wake-up receivers.
    pub fn new() -> (Board, BoardTriggers) {
        let (users, users_rx) = tokio::sync::mpsc::unbounded_channel();
        let (acls, acls_rx) = tokio::sync::mpsc::unbounded_channel();
        (Board { published: Default::default(), users, acls }, BoardTriggers { users: users_rx, acls: acls_rx })
    }

    /// What was published for broker `namespace/broker`.
    pub fn get(&self, namespace: &str, broker: &str) -> Option<Arc<Published>> {
        self.published.lock().unwrap().get(&(namespace.to_string(), broker.to_string())).cloned()
    }

    /// Publishes the outcomes of a reconcile and wakes the users and ACLs whose entry changed
    /// (including those that appeared or disappeared). Nothing is woken when nothing changed.
    pub fn publish(&self, namespace: &str, broker: &str, next: Published) {
        let key = (namespace.to_string(), broker.to_string());
        let next = Arc::new(next);
        // stored before anyone is woken (a woken controller reads the new verdicts), and not
        // copied: at 10,000 users every copy of the verdicts is megabytes at the burst's peak
        let previous = self.published.lock().unwrap().insert(key, next.clone());
        let empty = Published::Applied { users: Default::default(), acls: BTreeMap::new() };
        let previous = previous.as_deref().unwrap_or(&empty);
        if previous == &*next {
            return;
        }
        let (pu, pa, nu, na) = match (previous, &*next) {
            (Published::Applied { users: pu, acls: pa }, Published::Applied { users: nu, acls: na }) => {
                (Some(pu), Some(pa), Some(nu), Some(na))
            }
            (Published::Applied { users: pu, acls: pa }, _) => (Some(pu), Some(pa), None, None),
            (_, Published::Applied { users: nu, acls: na }) => (None, None, Some(nu), Some(na)),
            _ => (None, None, None, None),
        };
        for name in changed(pu.map(|u| &**u), nu.map(|u| &**u)) {
            let _ = self.users.send(ObjectRef::new(&name).within(namespace));
        }
        for name in changed(pa, na) {
            let _ = self.acls.send(ObjectRef::new(&name).within(namespace));
        }
    }

    /// Forgets a deleted broker.
    pub fn forget(&self, namespace: &str, broker: &str) {
        self.published.lock().unwrap().remove(&(namespace.to_string(), broker.to_string()));
    }
}

/// Keys whose entry differs between two maps (either may be absent: then every key of the other).
fn changed<V: PartialEq>(a: Option<&BTreeMap<String, V>>, b: Option<&BTreeMap<String, V>>) -> Vec<String> {
    let empty = BTreeMap::new();
    let (a, b) = (a.unwrap_or(&empty), b.unwrap_or(&empty));
    let mut out: Vec<String> = a.iter().filter(|(k, v)| b.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
    out.extend(b.keys().filter(|k| !a.contains_key(*k)).cloned());
    out
}

/// How long a generated name found taken is not tried again.
pub const NAME_CONFLICT_RETRY: Duration = Duration::from_secs(300);

/// Everything a reconcile needs.
pub struct Context {
    /// API client (the chart's ServiceAccount identity in production and in tests).
    pub client: Client,
    /// Operator configuration.
    pub config: Config,
    /// Reflector stores.
    pub stores: Stores,
    /// Metrics.
    pub metrics: Metrics,
    /// Kubernetes Event recorder.
    pub recorder: Recorder,
    /// Clock.
    pub clock: Clock,
    /// What the broker controller published for each broker.
    pub board: Board,
    /// The certificate ledger each broker reconcile last wrote (merged into what the cache
    /// shows, so a stale cache can never un-revoke a certificate).
    pub ledgers: Mutex<HashMap<(String, String), crate::plan::ledger::Ledger>>,
    /// The rollout state each broker reconcile last applied, and when (preferred over an older
    /// cached status, so a stale status can never bypass the upgrade's health gate).
    pub rollouts: Mutex<HashMap<(String, String), crate::upgrade::Applied>>,
    /// The drift records each broker reconcile last wrote (merged with the cached status, so a
    /// reconcile that starts from a stale status never drops a record).
    pub drift: Mutex<HashMap<(String, String), Vec<crate::crd::broker::DriftRecord>>>,
    /// The files each broker's pods should run and what their agents last said (attestation).
    pub files: Mutex<HashMap<(String, String), crate::plan::files::Memo>>,
    /// How long each broker's last reconcile took to observe, plan and apply (its children's
    /// debounce waits in proportion during a burst: see [`super::broker_max_wait`]).
    pub broker_took: Mutex<HashMap<(String, String), std::time::Duration>>,
    /// Generated Secret names found taken by objects moat did not create, with their holder and
    /// when (namespace, name → holder); retried after [`NAME_CONFLICT_RETRY`].
    pub name_conflicts: Mutex<HashMap<(String, String), (String, std::time::Instant)>>,
    /// The security-patch catalog in force (built in, extended by the operator's ConfigMap).
    pub catalog: CatalogCell,
    /// Last PolicyReport content written per broker (skips unchanged writes).
    pub reports: Mutex<HashMap<(String, String, crate::compliance::reports::ReportApi), String>>,
}

/// The catalog in force, replaced whenever the override ConfigMap changes.
pub struct CatalogCell(std::sync::RwLock<Arc<crate::upgrade::Catalog>>);

impl CatalogCell {
    /// The built-in catalog.
    pub fn builtin() -> Self {
        Self(std::sync::RwLock::new(Arc::new(crate::upgrade::Catalog::builtin().clone())))
    }
}

/// Keeps [`Context::catalog`] equal to the built-in catalog extended by the override ConfigMap
/// (key `catalog.yaml` of `config.catalog_configmap` in the operator namespace), from a watch:
/// no API read per reconcile. A broken override is reported and ignored.
pub fn watch_catalog(client: Client, config: &Config, ctx: Arc<Context>) -> futures::future::BoxFuture<'static, ()> {
    use futures::{FutureExt, StreamExt};
    use kube::runtime::{WatchStreamExt, watcher};
    let Some(name) = config.catalog_configmap.clone() else { return futures::future::pending().boxed() };
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, &config.operator.namespace);
    let wc = watcher::Config::default().fields(&format!("metadata.name={name}"));
    watcher(api, wc)
        .default_backoff()
        .applied_objects()
        .for_each(move |cm| {
            let builtin = crate::upgrade::Catalog::builtin().clone();
            let next = match cm.as_ref().ok().and_then(|c| c.data.as_ref()).and_then(|d| d.get("catalog.yaml")) {
                Some(yaml) => match builtin.merge_yaml(yaml) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(configmap = %name, error = %e, "catalog override refused; the built-in catalog stays in force");
                        builtin
                    }
                },
                None => builtin,
            };
            *ctx.catalog.0.write().unwrap() = Arc::new(next);
            futures::future::ready(())
        })
        .boxed()
}

impl Context {
    /// The context of the controllers: `stores` fed by the caller, `board` published to by the
    /// broker controller, the clock `config.clock_offset` ahead, Events as `reporter`.
    pub fn new(
        client: Client,
        config: Config,
        stores: Stores,
        metrics: Metrics,
        reporter: kube::runtime::events::Reporter,
        board: Board,
    ) -> Self {
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            clock: Clock::with_offset(config.clock_offset),
            config,
            stores,
            metrics,
            board,
            ledgers: Default::default(),
            rollouts: Default::default(),
            name_conflicts: Default::default(),
            drift: Default::default(),
            files: Default::default(),
            broker_took: Default::default(),
            reports: Default::default(),
            catalog: CatalogCell::builtin(),
        }
    }

    /// The security-patch catalog in force.
    pub fn catalog(&self) -> Arc<crate::upgrade::Catalog> {
        self.catalog.0.read().unwrap().clone()
    }

    /// Publishes a Kubernetes Event about `obj` (best effort: a failed Event never fails a reconcile).
    /// Events with the same reason and note are aggregated into one series; different notes make
    /// separate Events (so each drift or check transition stays visible).
    pub async fn event<K>(&self, obj: &K, type_: EventType, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let reference: ObjectReference = obj.object_ref(&());
        let action = format!("{reason}-{}", crate::digest_of(&note));
        let ev = Event { type_, reason: reason.into(), note: Some(note), action, secondary: None };
        self.metrics.write("Event", "create");
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            tracing::warn!(error = %e, reason, "could not publish an Event");
        }
    }
}
