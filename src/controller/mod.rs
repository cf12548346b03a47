//! Controllers: the I/O shell around the pure core.
//!
//! Each reconcile follows *dereference → validate → build → apply → status*: it reads only from
//! reflector stores, hands everything to pure functions (`model`, `build`, `render`, `pki`,
//! `compliance`, `upgrade`), applies what differs with server-side apply and writes status only
//! when it changed. One reflector per resource type is shared by all controllers.

pub mod acl;
pub mod apply;
pub mod broker;
pub mod conditions;
pub mod context;
pub mod firewall;
pub mod index;
pub mod report;
pub mod user;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, ReflectHandle, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

pub use context::{Clock, Config, Context, Stores};

use crate::crd::{MqttAcl, MqttBroker, MqttFirewall, MqttUser};
use crate::metrics::{ErrorLabels, Metrics};
use crate::names;
use crate::validate::FieldError;

/// Errors of a reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object's spec is invalid (reported as `Ready=False, reason=InvalidSpec`); retried only
    /// when the object changes.
    #[error("{0}")]
    InvalidSpec(FieldError),
    /// The Kubernetes API failed; retried with backoff.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Certificate material could not be produced or read.
    #[error("certificates: {0}")]
    Pki(String),
    /// Anything else; retried with backoff.
    #[error("{0}")]
    Other(String),
    /// An object moat would generate already exists and belongs to someone else (generated
    /// names of different objects can collide); moat never takes it over.
    #[error("{kind} {name} already exists and belongs to {holder}: rename one of the two objects")]
    NameConflict {
        /// Kind of the contested object.
        kind: String,
        /// Its name.
        name: String,
        /// Who controls it.
        holder: String,
    },
}

impl Error {
    /// Stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Kube(_) => "kube",
            Error::Pki(_) => "pki",
            Error::Other(_) => "other",
            Error::NameConflict { .. } => "name_conflict",
        }
    }
}

/// Result of a reconcile.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which namespaces the operator watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (cluster-wide RBAC).
    All,
    /// One namespace (namespaced RBAC: a Role in that namespace).
    Namespace(String),
}

/// An Api for `K` in the watched scope.
pub(crate) fn api<K>(client: &Client, scope: &Scope) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match scope {
        Scope::All => Api::all(client.clone()),
        Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
    }
}

/// A shared reflector: its store, subscriptions for controllers, and the future that drives it.
struct Shared<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store: Store<K>,
    writer: Option<reflector::store::Writer<K>>,
}

impl<K> Shared<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    fn new() -> Self {
        let (store, writer) = reflector::store_shared(1024);
        Self { store, writer: Some(writer) }
    }

    fn subscribe(&self) -> ReflectHandle<K> {
        self.writer.as_ref().expect("subscribe before driving").subscribe().expect("shared store")
    }

    /// The future that keeps the store in sync (managed fields stripped to save memory).
    fn drive(&mut self, api: Api<K>, wc: watcher::Config) -> futures::future::BoxFuture<'static, ()> {
        let writer = self.writer.take().expect("drive once");
        watcher(api, wc)
            .default_backoff()
            .modify(|o: &mut K| {
                o.meta_mut().managed_fields = None;
                if let Some(a) = o.meta_mut().annotations.as_mut() {
                    a.remove("kubectl.kubernetes.io/last-applied-configuration");
                }
            })
            .reflect_shared(writer)
            .for_each(|ev| async move {
                if let Err(e) = ev {
                    tracing::warn!(error = %e, kind = %K::kind(&()), "watch error (retrying)");
                }
            })
            .boxed()
    }
}

fn managed() -> watcher::Config {
    watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={}", names::MANAGED_BY))
}

fn broker_of_label<K: ResourceExt>(obj: &K) -> Option<ObjectRef<MqttBroker>> {
    let broker = obj.labels().get(names::BROKER_LABEL)?;
    Some(ObjectRef::new(broker).within(&obj.namespace()?))
}

/// Runs every controller for `scope` until `shutdown` resolves.
pub async fn run(
    client: Client,
    config: Config,
    metrics: Metrics,
    scope: Scope,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = shutdown.shared();
    let mut brokers = Shared::<MqttBroker>::new();
    let mut users = Shared::<MqttUser>::new();
    let mut acls = Shared::<MqttAcl>::new();
    let mut firewalls = Shared::<MqttFirewall>::new();
    let mut secrets = Shared::<Secret>::new();
    let mut watched = Shared::<Secret>::new();
    let mut sts = Shared::<StatefulSet>::new();
    let mut svcs = Shared::<Service>::new();
    let mut nps = Shared::<NetworkPolicy>::new();
    let mut sas = Shared::<ServiceAccount>::new();
    let mut pdbs = Shared::<PodDisruptionBudget>::new();
    let mut pods = Shared::<Pod>::new();
    let mut cms = Shared::<ConfigMap>::new();

    let stores = Stores {
        brokers: brokers.store.clone(),
        users: users.store.clone(),
        acls: acls.store.clone(),
        firewalls: firewalls.store.clone(),
        secrets: secrets.store.clone(),
        watched_secrets: watched.store.clone(),
        statefulsets: sts.store.clone(),
        services: svcs.store.clone(),
        network_policies: nps.store.clone(),
        service_accounts: sas.store.clone(),
        pdbs: pdbs.store.clone(),
        pods: pods.store.clone(),
        config_maps: cms.store.clone(),
    };
    let reporter = Reporter {
        controller: "moat".into(),
        instance: std::env::var("POD_NAME").ok().or_else(|| std::env::var("HOSTNAME").ok()),
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        clock: Clock::with_offset(config.clock_offset),
        config: config.clone(),
        stores: stores.clone(),
        metrics,
        recorder: Recorder::new(client.clone(), reporter),
        applied: Default::default(),
        reports: Default::default(),
    });
    let cc = kube::runtime::controller::Config::default().concurrency(config.concurrency).debounce(config.debounce);

    // --- MqttBroker controller: aggregates everything of one broker.
    let s = stores.clone();
    let broker_ctl = Controller::for_shared_stream(brokers.subscribe(), stores.brokers.clone())
        .with_config(cc.clone())
        .watches_shared_stream(users.subscribe(), |u: Arc<MqttUser>| {
            u.namespace().map(|ns| ObjectRef::new(&u.spec.broker_ref.name).within(&ns))
        })
        .watches_shared_stream(acls.subscribe(), |a: Arc<MqttAcl>| {
            a.namespace().map(|ns| ObjectRef::new(&a.spec.broker_ref.name).within(&ns))
        })
        .watches_shared_stream(firewalls.subscribe(), |f: Arc<MqttFirewall>| {
            f.namespace().map(|ns| ObjectRef::new(&f.spec.broker_ref.name).within(&ns))
        })
        .watches_shared_stream(secrets.subscribe(), |o: Arc<Secret>| broker_of_label(&*o))
        .watches_shared_stream(watched.subscribe(), move |o: Arc<Secret>| {
            user::users_referencing(&s, &o)
                .into_iter()
                .filter_map(|u| u.namespace().map(|ns| ObjectRef::new(&u.spec.broker_ref.name).within(&ns)))
                .collect::<Vec<_>>()
        })
        .watches_shared_stream(sts.subscribe(), |o: Arc<StatefulSet>| broker_of_label(&*o))
        .watches_shared_stream(svcs.subscribe(), |o: Arc<Service>| broker_of_label(&*o))
        .watches_shared_stream(nps.subscribe(), |o: Arc<NetworkPolicy>| broker_of_label(&*o))
        .watches_shared_stream(sas.subscribe(), |o: Arc<ServiceAccount>| broker_of_label(&*o))
        .watches_shared_stream(pdbs.subscribe(), |o: Arc<PodDisruptionBudget>| broker_of_label(&*o))
        .watches_shared_stream(pods.subscribe(), |o: Arc<Pod>| broker_of_label(&*o))
        .watches_shared_stream(cms.subscribe(), |o: Arc<ConfigMap>| broker_of_label(&*o))
        .graceful_shutdown_on(shutdown.clone())
        .run(broker::reconcile, error_policy::<MqttBroker>, ctx.clone())
        .for_each(|_| futures::future::ready(()));

    // --- MqttUser controller: credentials of one user, and its status.
    let (s1, s2, s3) = (stores.clone(), stores.clone(), stores.clone());
    let user_ctl = Controller::for_shared_stream(users.subscribe(), stores.users.clone())
        .with_config(cc.clone())
        .watches_shared_stream(secrets.subscribe(), move |o: Arc<Secret>| user::users_for_managed_secret(&s1, &o))
        .watches_shared_stream(watched.subscribe(), move |o: Arc<Secret>| {
            user::users_referencing(&s2, &o).iter().map(|u| ObjectRef::from_obj(&**u)).collect::<Vec<_>>()
        })
        .watches_shared_stream(brokers.subscribe(), move |b: Arc<MqttBroker>| {
            let ns = b.namespace().unwrap_or_default();
            s3.users_of(&ns, &b.name_any()).iter().map(|u| ObjectRef::from_obj(&**u)).collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.clone())
        .run(user::reconcile, error_policy::<MqttUser>, ctx.clone())
        .for_each(|_| futures::future::ready(()));

    // --- MqttAcl controller: validation and status of one ACL.
    let (s1, s2, s3) = (stores.clone(), stores.clone(), stores.clone());
    let acl_ctl = Controller::for_shared_stream(acls.subscribe(), stores.acls.clone())
        .with_config(cc.clone())
        .watches_shared_stream(secrets.subscribe(), move |o: Arc<Secret>| match broker_of_label(&*o) {
            Some(b) if o.labels().get("app.kubernetes.io/component").map(String::as_str) == Some("acl") => s1
                .acls_of(b.namespace.as_deref().unwrap_or_default(), &b.name)
                .iter()
                .map(|a| ObjectRef::from_obj(&**a))
                .collect(),
            _ => vec![],
        })
        .watches_shared_stream(brokers.subscribe(), move |b: Arc<MqttBroker>| {
            let ns = b.namespace().unwrap_or_default();
            s2.acls_of(&ns, &b.name_any()).iter().map(|a| ObjectRef::from_obj(&**a)).collect::<Vec<_>>()
        })
        .watches_shared_stream(users.subscribe(), move |u: Arc<MqttUser>| {
            let ns = u.namespace().unwrap_or_default();
            s3.acls_of(&ns, &u.spec.broker_ref.name).iter().map(|a| ObjectRef::from_obj(&**a)).collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.clone())
        .run(acl::reconcile, error_policy::<MqttAcl>, ctx.clone())
        .for_each(|_| futures::future::ready(()));

    // --- MqttFirewall controller: the allow NetworkPolicy of one firewall.
    let s1 = stores.clone();
    let fw_ctl = Controller::for_shared_stream(firewalls.subscribe(), stores.firewalls.clone())
        .with_config(cc)
        .watches_shared_stream(nps.subscribe(), |o: Arc<NetworkPolicy>| {
            let fw = o.labels().get(crate::render::network::FIREWALL_LABEL)?;
            Some(ObjectRef::new(fw).within(&o.namespace()?))
        })
        .watches_shared_stream(brokers.subscribe(), move |b: Arc<MqttBroker>| {
            let ns = b.namespace().unwrap_or_default();
            s1.firewalls_of(&ns, &b.name_any()).iter().map(|f| ObjectRef::from_obj(&**f)).collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.clone())
        .run(firewall::reconcile, error_policy::<MqttFirewall>, ctx.clone())
        .for_each(|_| futures::future::ready(()));

    let watched_cfg = watcher::Config::default().labels(&format!("{}=true", names::WATCH_LABEL));
    let drivers = futures::future::join_all(vec![
        brokers.drive(api(&client, &scope), watcher::Config::default()),
        users.drive(api(&client, &scope), watcher::Config::default()),
        acls.drive(api(&client, &scope), watcher::Config::default()),
        firewalls.drive(api(&client, &scope), watcher::Config::default()),
        secrets.drive(api(&client, &scope), managed()),
        watched.drive(api(&client, &scope), watched_cfg),
        sts.drive(api(&client, &scope), managed()),
        svcs.drive(api(&client, &scope), managed()),
        nps.drive(api(&client, &scope), managed()),
        sas.drive(api(&client, &scope), managed()),
        pdbs.drive(api(&client, &scope), managed()),
        pods.drive(api(&client, &scope), managed()),
        cms.drive(api(&client, &scope), managed()),
    ]);

    tokio::select! {
        _ = drivers => {},
        _ = futures::future::join4(broker_ctl, user_ctl, acl_ctl, fw_ctl) => {},
    }
}

/// Writes `status` unless it equals `previous` (a reconcile with nothing to report writes
/// nothing), with server-side apply (field manager `moat`): fields moat no longer sets are
/// removed, conditions merge by type.
pub async fn write_status<K, S>(ctx: &Context, obj: &K, previous: &S, status: &S) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    S: serde::Serialize + PartialEq,
{
    if status == previous {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    ctx.metrics.write(&K::kind(&()), "status");
    api.patch_status(
        &obj.name_any(),
        &kube::api::PatchParams::apply(names::FIELD_MANAGER).force(),
        &kube::api::Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// The `Compliant` condition: True when no check fails. Checks that could not be evaluated
/// (`Unknown`, e.g. the active probe cannot reach the broker) are named in the message and never
/// counted as passed in `compliance.passed`.
pub fn compliant_condition(c: &crate::crd::ComplianceStatus) -> conditions::Cond {
    use crate::crd::{CONDITION_COMPLIANT, CheckResult};
    let ids = |r: CheckResult| c.checks.iter().filter(|x| x.result == r).map(|x| x.id.as_str()).collect::<Vec<_>>();
    let (failed, unknown) = (ids(CheckResult::Fail), ids(CheckResult::Unknown));
    let unknown_note =
        if unknown.is_empty() { String::new() } else { format!("; not evaluated: {}", unknown.join(", ")) };
    if failed.is_empty() {
        conditions::Cond::ok(
            CONDITION_COMPLIANT,
            "NoFailingChecks",
            format!("{} of {} checks pass{unknown_note}", c.passed, c.total),
        )
    } else {
        conditions::Cond::not(
            CONDITION_COMPLIANT,
            "ChecksFailing",
            format!("failing: {}{unknown_note}", failed.join(", ")),
        )
    }
}

/// Reports a reconcile that stopped on an error the object's owner must act on (a name
/// conflict): `Ready=False` with the error as message, `Compliant` Unknown. Written only when it
/// changed.
pub async fn report_error<K>(ctx: &Context, obj: &K, err: &Error) -> Result<()>
where
    K: conditions::Reported,
{
    let reason = match err {
        Error::NameConflict { .. } => "NameConflict",
        _ => return Ok(()),
    };
    let previous = obj.current_status();
    let mut status = previous.clone();
    let generation = obj.meta().generation;
    let conds = K::conditions_of(&mut status);
    *conds = conditions::merge(
        conds,
        vec![
            conditions::Cond::not(crate::crd::CONDITION_READY, reason, err.to_string()),
            conditions::Cond::unknown(crate::crd::CONDITION_COMPLIANT, reason, "not evaluated: the object is blocked"),
        ],
        generation,
        ctx.clock.now(),
    );
    write_status(ctx, obj, &previous, &status).await
}

/// Runs one reconcile with its metrics; errors the owner must see are reported in status.
pub(crate) async fn observed_reconcile<K, F>(kind: &str, obj: &K, ctx: &Context, run: F) -> Result<Action>
where
    K: conditions::Reported,
    F: Future<Output = Result<Action>>,
{
    if !ctx.stores.ready() {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let started = std::time::Instant::now();
    let result = run.await;
    ctx.metrics.observe_reconcile(kind, started.elapsed());
    if let Err(e) = &result {
        report_error(ctx, obj, e).await?;
    }
    result
}

/// Invalid input waits for the object to change; everything else retries with a delay.
fn error_policy<K: Resource<DynamicType = ()>>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .errors
        .get_or_create(&ErrorLabels { kind: K::kind(&()).into_owned(), reason: err.metric_label().into() })
        .inc();
    match err {
        Error::InvalidSpec(_) => Action::await_change(),
        // someone must rename or delete an object first; its deletion may not be watched
        Error::NameConflict { .. } => Action::requeue(Duration::from_secs(30)),
        _ => {
            tracing::warn!(kind = %K::kind(&()), name = %obj.meta().name.as_deref().unwrap_or(""), error = %err, "reconcile failed; retrying");
            Action::requeue(Duration::from_secs(5))
        }
    }
}
