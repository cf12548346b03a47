//! The attempt from outside every firewall (MOAT-FW-004): the outsider pod, in a namespace no
//! MqttFirewall admits, dials every listener of every broker pod; the network must refuse it.
//! Two reads per audit (the outsider's pods and namespace), no writes.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};

use super::Decided;
use super::observe::Observed;
use crate::controller::context::Outsider;
use crate::model::BrokerModel;
use crate::probe::Outcome;
use crate::probe::outsider::{self, Answer, ROLE_LABEL};
use crate::render::network::{self, Source};

/// How long one of the outsider's connection attempts may take (its `--timeout`), and how much
/// longer the whole request may.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(8);

/// The outsider pod the operator asks.
struct Vantage {
    namespace: String,
    namespace_labels: BTreeMap<String, String>,
    pod: String,
    pod_labels: BTreeMap<String, String>,
    ip: IpAddr,
}

impl Vantage {
    fn describe(&self) -> String {
        format!("{}/{} ({})", self.namespace, self.pod, self.ip)
    }
}

/// A Ready outsider pod with an IP (the first by name) and its namespace's labels.
async fn locate(client: &Client, o: &Outsider) -> Result<Vantage, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &o.namespace);
    let list = pods
        .list(&ListParams::default().labels(&format!("{ROLE_LABEL}=outsider")))
        .await
        .map_err(|e| format!("cannot list the outsider pods in namespace {}: {e}", o.namespace))?;
    let mut ready: Vec<(String, IpAddr, BTreeMap<String, String>)> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            let is_ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
            let ip = status.pod_ip.as_deref()?.parse().ok()?;
            is_ready.then(|| (p.name_any(), ip, p.labels().clone()))
        })
        .collect();
    ready.sort_by(|a, b| a.0.cmp(&b.0));
    let Some((pod, ip, pod_labels)) = ready.into_iter().next() else {
        return Err(format!("no Ready outsider pod in namespace {}", o.namespace));
    };
    let ns: Api<Namespace> = Api::all(client.clone());
    let namespace = ns.get(&o.namespace).await.map_err(|e| format!("cannot read namespace {}: {e}", o.namespace))?;
    Ok(Vantage { namespace: o.namespace.clone(), namespace_labels: namespace.labels().clone(), pod, pod_labels, ip })
}

/// One outcome per listener port of each broker pod with an IP, by pod name.
pub async fn attempt(
    client: &Client,
    outsider: Option<&Outsider>,
    model: &BrokerModel,
    seen: &Observed,
    decided: &Decided,
) -> BTreeMap<String, Vec<Outcome>> {
    let ports: Vec<u16> = model.spec.listeners.iter().map(|l| l.port as u16).collect();
    let pods: Vec<(String, IpAddr)> = seen
        .pods
        .iter()
        .filter_map(|p| Some((p.name_any(), p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()?)))
        .collect();
    let all = |why: String| pods.iter().map(|(n, _)| (n.clone(), vec![Outcome::Unknown(why.clone())])).collect();
    let Some(o) = outsider else {
        return all("no outsider configured (the chart's outsider.enabled; operator flag --outsider-namespace)".into());
    };
    let vantage = match locate(client, o).await {
        Ok(v) => v,
        Err(why) => return all(why),
    };
    let targets: Vec<SocketAddr> =
        pods.iter().flat_map(|(_, ip)| ports.iter().map(|&port| SocketAddr::new(*ip, port))).collect();
    let ip = vantage.ip.to_string();
    let answers = match tokio::time::timeout(REQUEST_TIMEOUT, outsider::ask(&ip, o.port, &targets)).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => return all(format!("the outsider {} did not answer: {e}", vantage.describe())),
        Err(_) => return all(format!("the outsider {} did not answer in time", vantage.describe())),
    };
    // what moat's own policies admit (the firewalls and the probe path): an outsider they admit
    // cannot show a refusal
    let mut policies: Vec<_> =
        seen.firewalls.iter().filter_map(|f| network::firewall_policy(model, &f.name_any(), &f.spec).ok()).collect();
    policies.extend(decided.objects.probe_policy.clone());
    policies.extend(decided.objects.metrics_policy.clone());
    let source = Source {
        ip: vantage.ip,
        namespace: Some((&vantage.namespace, vantage.namespace_labels.clone())),
        pod_labels: Some(vantage.pod_labels.clone()),
    };
    let from = vantage.describe();
    pods.iter()
        .map(|(name, ip)| {
            let outcomes = ports
                .iter()
                .map(|&port| {
                    let to = SocketAddr::new(*ip, port);
                    let answer = answers.iter().find(|d| d.to == to).map(|d| &d.answer);
                    let outcome = match answer {
                        Some(a) => outsider::judge(
                            a,
                            &from,
                            &network::admitted_by(&policies, &source, port.into()),
                            DIAL_TIMEOUT,
                        ),
                        None => outsider::judge(
                            &Answer::Failed { error: "not in the outsider's answer".into() },
                            &from,
                            &[],
                            DIAL_TIMEOUT,
                        ),
                    };
                    with_port(port, outcome)
                })
                .collect();
            (name.clone(), outcomes)
        })
        .collect()
}

fn with_port(port: u16, o: Outcome) -> Outcome {
    match o {
        Outcome::Pass(m) => Outcome::Pass(format!("port {port}: {m}")),
        Outcome::Fail(m) => Outcome::Fail(format!("port {port}: {m}")),
        Outcome::Unknown(m) => Outcome::Unknown(format!("port {port}: {m}")),
    }
}
