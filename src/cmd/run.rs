//! `moat run`: the operator process — client, CRD check, health and metrics endpoints, leader
//! election, controllers, graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use kube::api::{Api, ListParams};
use kube::{Client, Config};

use crate::controller::{self, Scope};
use crate::crd::MqttBroker;

/// Command-line options of `moat run`.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Namespaces to watch (comma-separated). Empty: all namespaces.
    #[arg(long, env = "MOAT_WATCH_NAMESPACES", value_delimiter = ',')]
    pub watch_namespaces: Vec<String>,
    /// Image of `moat agent` in broker pods. Default: this operator's image.
    #[arg(long, env = "MOAT_AGENT_IMAGE")]
    pub agent_image: Option<String>,
    /// Namespace the operator runs in (Lease, catalog ConfigMap, probe NetworkPolicy).
    #[arg(long, env = "POD_NAMESPACE", default_value = "moat-system")]
    pub operator_namespace: String,
    /// Identity in the leader-election Lease. Default: POD_NAME, else the host name.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Address of the health (`/healthz`, `/readyz`) and metrics (`/metrics`) endpoint.
    #[arg(long, env = "MOAT_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Maximum concurrent reconciles per controller.
    #[arg(long, env = "MOAT_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Coalesce bursts of changes to one object within this window (a broker whose users, ACLs
    /// or Secrets keep changing is reconciled at least every 2 s all the same).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub debounce: Duration,
    /// Elect a leader with a Lease so several replicas are safe (only the leader reconciles).
    #[arg(long, env = "MOAT_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "moat-leader")]
    pub lease_name: String,
    /// Lease duration in seconds (a standby takes over at most this long after the leader dies).
    #[arg(long, default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// Attack every broker pod at its audits (see `spec.security.activeProbe`); `false` also
    /// removes the canary logins from every broker's password file.
    #[arg(long, env = "MOAT_ACTIVE_PROBE", default_value_t = true, action = clap::ArgAction::Set)]
    pub active_probe: bool,
    /// Namespace of the outsider (`moat outsider`, pods labelled `mqtt.moat.dev/role=outsider`),
    /// the vantage point no MqttFirewall admits: at each audit it tries every listener of every
    /// broker pod and the network must refuse it (MOAT-FW-004). Unset: that check is Unknown.
    #[arg(long, env = "MOAT_OUTSIDER_NAMESPACE")]
    pub outsider_namespace: Option<String>,
    /// Port the outsider serves `GET /dial` on.
    #[arg(long, env = "MOAT_OUTSIDER_PORT", default_value_t = crate::probe::outsider::PORT)]
    pub outsider_port: u16,
    /// Compliance reports: `all` writes an OpenReports `Report` and a `wgpolicyk8s.io`
    /// `PolicyReport` per broker, each only when its CRD is installed.
    #[arg(long, env = "MOAT_REPORTS", value_enum, default_value_t = crate::compliance::reports::Reports::All)]
    pub reports: crate::compliance::reports::Reports,
    /// Namespaces (comma-separated) whose pods may scrape the broker agents' `/metrics` (port
    /// 9884): each broker gets a NetworkPolicy `<broker>-moat-metrics` admitting them to that
    /// port only. Empty: the port stays closed.
    #[arg(long, env = "MOAT_AGENT_METRICS_NAMESPACES", value_delimiter = ',')]
    pub agent_metrics_namespaces: Vec<String>,
    /// How often the broker agents are asked for bursts of refused logins (SuspiciousActivity).
    #[arg(long, env = "MOAT_ACTIVITY_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub activity_interval: Duration,
    /// ConfigMap in the operator namespace that extends the security-patch catalog (key `catalog.yaml`).
    #[arg(long, env = "MOAT_CATALOG_CONFIGMAP")]
    pub catalog_configmap: Option<String>,
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Act as this user (impersonation), e.g. `system:serviceaccount:moat-system:moat`.
    #[arg(long = "as")]
    pub impersonate: Option<String>,
    /// Groups to impersonate with --as.
    #[arg(long = "as-group")]
    pub impersonate_groups: Vec<String>,
    /// Test hook: move the operator's clock forward (e.g. `720h`). Only in builds with the
    /// `test-hooks` feature (the cluster tests); release builds do not have it.
    #[cfg(feature = "test-hooks")]
    #[arg(long, hide = true, env = "MOAT_UNSAFE_CLOCK_OFFSET", value_parser = parse_duration)]
    pub unsafe_clock_offset: Option<Duration>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::crd::GoDuration::new(s).parse()
}

/// Builds a client from the flags (kubeconfig, impersonation).
pub async fn client(
    kubeconfig: Option<&PathBuf>,
    impersonate: Option<&str>,
    groups: &[String],
) -> anyhow::Result<Client> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc =
                kube::config::Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
            Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => Config::infer().await?,
    };
    if let Some(user) = impersonate {
        config.auth_info.impersonate = Some(user.to_string());
        if !groups.is_empty() {
            config.auth_info.impersonate_groups = Some(groups.to_vec());
        }
    }
    Ok(Client::try_from(config)?)
}

/// Fails with an install hint when the CRDs are missing.
async fn check_crds(client: &Client, scope: &Scope) -> anyhow::Result<()> {
    let api: Api<MqttBroker> = controller::api(client, scope);
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => anyhow::bail!(
            "the moat CRDs are not installed (mqttbrokers.mqtt.moat.dev not found): install the Helm chart, or `kubectl apply --server-side -f crds/`"
        ),
        Err(e) => Err(e).context("cannot list MqttBrokers (check the operator's RBAC)"),
    }
}

async fn serve(
    addr: SocketAddr,
    ready: Arc<AtomicBool>,
    registry: Arc<prometheus_client::registry::Registry>,
) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready.load(Ordering::Relaxed) {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { crate::metrics::encode(&registry) }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "serving /healthz, /readyz and /metrics");
    axum::serve(listener, app).await?;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}

/// Runs the operator until SIGTERM/SIGINT.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = client(args.kubeconfig.as_ref(), args.impersonate.as_deref(), &args.impersonate_groups).await?;
    let scopes: Vec<Scope> = if args.watch_namespaces.is_empty() {
        vec![Scope::All]
    } else {
        args.watch_namespaces.iter().map(|ns| Scope::Namespace(ns.clone())).collect()
    };
    for scope in &scopes {
        check_crds(&client, scope).await?;
    }
    let (registry, metrics) = crate::metrics::registry();
    let ready = Arc::new(AtomicBool::new(false));
    let server = tokio::spawn(serve(args.http_addr, ready.clone(), registry));

    let mut config = controller::Config {
        concurrency: args.concurrency.max(1),
        debounce: args.debounce,
        #[cfg(feature = "test-hooks")]
        clock_offset: args.unsafe_clock_offset.unwrap_or_default(),
        active_probe: args.active_probe,
        catalog_configmap: args.catalog_configmap.clone(),
        reports: args.reports,
        agent_metrics_namespaces: args.agent_metrics_namespaces.iter().filter(|n| !n.is_empty()).cloned().collect(),
        activity_interval: args.activity_interval.max(Duration::from_secs(1)),
        outsider: args
            .outsider_namespace
            .clone()
            .filter(|n| !n.is_empty())
            .map(|namespace| controller::Outsider { namespace, port: args.outsider_port }),
        ..Default::default()
    };
    if let Some(image) = &args.agent_image {
        config.agent_image = image.clone();
    }
    config.operator.namespace = args.operator_namespace.clone();
    if !config.clock_offset.is_zero() {
        tracing::warn!(offset = ?config.clock_offset, "UNSAFE: the operator clock is moved forward (test hook)");
    }

    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("moat-{}", std::process::id()));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop = async move {
        let mut rx = stop_rx;
        let _ = rx.wait_for(|s| *s).await;
    };

    let mut lease_task = None;
    if args.leader_elect {
        let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
            .with_namespace(&args.operator_namespace)
            .with_identity(&identity)
            .with_duration(args.lease_duration_seconds)
            .with_grace(2)
            .with_field_manager(crate::names::FIELD_MANAGER)
            .build()
            .await
            .context("setting up leader election")?;
        let (mut channel, task) = manager.watch().await;
        tracing::info!(%identity, lease = %args.lease_name, "waiting to become leader");
        ready.store(true, Ordering::Relaxed);
        loop {
            if *channel.borrow_and_update() {
                break;
            }
            tokio::select! {
                changed = channel.changed() => { changed.context("leader election stopped")?; }
                _ = shutdown_signal() => { drop(channel); let _ = task.await; return Ok(()); }
            }
        }
        tracing::info!(%identity, "became leader; starting controllers");
        lease_task = Some((channel, task));
    } else {
        ready.store(true, Ordering::Relaxed);
    }

    let stop = stop.shared_boxed();
    let mut controllers = tokio::task::JoinSet::new();
    for scope in scopes {
        tracing::info!(?scope, "starting controllers");
        controllers.spawn(controller::run(client.clone(), config.clone(), metrics.clone(), scope, stop.clone()));
    }

    let lost_leadership = async {
        match &mut lease_task {
            Some((channel, _)) => loop {
                if channel.changed().await.is_err() || !*channel.borrow() {
                    return;
                }
            },
            None => futures::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown_signal() => {
            let _ = stop_tx.send(true);
            while controllers.join_next().await.is_some() {}
        }
        _ = lost_leadership => {
            anyhow::bail!("lost leadership of Lease {}; exiting so a fresh process rejoins the election", args.lease_name);
        }
        res = server => {
            res??;
        }
        _ = async { while controllers.join_next().await.is_some() {} } => {
            anyhow::bail!("controllers stopped unexpectedly");
        }
    }
    if let Some((channel, task)) = lease_task {
        drop(channel); // closing the channel makes the lease task release the Lease
        let _ = task.await;
    }
    Ok(())
}

trait SharedBoxed: std::future::Future<Output = ()> + Send + Sync + Sized + 'static {
    fn shared_boxed(
        self,
    ) -> futures::future::Shared<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>> {
        use futures::FutureExt;
        let boxed: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>> = Box::pin(self);
        boxed.shared()
    }
}

impl<F: std::future::Future<Output = ()> + Send + Sync + 'static> SharedBoxed for F {}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: super::RunArgs,
    }

    /// The clock hook exists only in test builds (`--features test-hooks`).
    #[test]
    fn the_clock_hook_is_only_in_test_builds() {
        let parsed = Cli::try_parse_from(["moat", "--unsafe-clock-offset", "1h"]);
        assert_eq!(parsed.is_ok(), cfg!(feature = "test-hooks"));
    }
}
