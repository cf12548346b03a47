//! Services and NetworkPolicies of a broker: default-deny, firewall allows, the operator's probe path.

use std::collections::BTreeMap;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::crd::broker::ServiceType;
use crate::crd::firewall::MqttFirewallSpec;
use crate::model::BrokerModel;
use crate::names;
use crate::validate::FieldError;

fn service_ports(model: &BrokerModel) -> Vec<ServicePort> {
    model
        .spec
        .listeners
        .iter()
        .map(|l| ServicePort {
            name: Some(l.name.clone()),
            port: l.port,
            target_port: Some(IntOrString::Int(l.port)),
            protocol: Some("TCP".into()),
            ..Default::default()
        })
        .collect()
}

/// The client-facing Service. A LoadBalancer only admits `source_ranges` (the CIDRs of the
/// broker's MqttFirewalls) and keeps client source addresses (`externalTrafficPolicy: Local`) so
/// the NetworkPolicies' ipBlock rules see real client IPs. While no firewall admits any CIDR, a
/// LoadBalancer is withheld: the Service stays ClusterIP (an empty `loadBalancerSourceRanges`
/// would admit the whole internet).
pub fn service(model: &BrokerModel, source_ranges: &[String]) -> Service {
    let s = &model.spec.service;
    let withheld = s.type_ == ServiceType::LoadBalancer && source_ranges.is_empty();
    let type_ = if withheld { ServiceType::ClusterIP } else { s.type_ };
    let external = type_ != ServiceType::ClusterIP;
    let mut metadata = model.object_meta(model.service_name(), "broker");
    let mut annotations = s.annotations.clone();
    if withheld {
        annotations.insert(LB_WITHHELD_ANNOTATION.into(), "no MqttFirewall admits a client CIDR yet".into());
    }
    if !annotations.is_empty() {
        metadata.annotations = Some(annotations);
    }
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(type_.as_str().into()),
            selector: Some(names::selector_labels(&model.name)),
            ports: Some(service_ports(model)),
            external_traffic_policy: external.then(|| "Local".into()),
            load_balancer_source_ranges: (type_ == ServiceType::LoadBalancer).then(|| source_ranges.to_vec()),
            load_balancer_class: (type_ == ServiceType::LoadBalancer).then(|| s.load_balancer_class.clone()).flatten(),
            ..Default::default()
        }),
        status: None,
    }
}

/// Annotation on a broker Service whose LoadBalancer is withheld (no firewall CIDRs yet).
pub const LB_WITHHELD_ANNOTATION: &str = "mqtt.moat.dev/load-balancer-withheld";

/// The headless Service giving each broker pod a stable DNS name (covered by the server certificate).
pub fn headless_service(model: &BrokerModel) -> Service {
    Service {
        metadata: model.object_meta(model.headless_service_name(), "broker"),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(names::selector_labels(&model.name)),
            ports: Some(service_ports(model)),
            ..Default::default()
        }),
        status: None,
    }
}

/// Denies all ingress and egress of the broker pods; MqttFirewalls add allow policies next to it.
/// The broker needs no egress at all (no bridges, no DNS lookups), so none is opened.
pub fn default_deny(model: &BrokerModel) -> NetworkPolicy {
    NetworkPolicy {
        metadata: model.object_meta(names::default_deny_policy(&model.name), "firewall"),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(model.pod_selector()),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: None,
            egress: None,
        }),
    }
}

/// Where the operator runs, for the active-probe path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorIdentity {
    /// Namespace of the operator pods.
    pub namespace: String,
    /// Labels of the operator pods.
    pub pod_labels: BTreeMap<String, String>,
}

/// Name of the policy that lets the operator's probe reach the listeners.
pub fn probe_policy_name(broker: &str) -> String {
    format!("{broker}-moat-probe")
}

/// Allows only the operator's pods (by namespace name and pod labels) to reach the listeners,
/// for the active compliance probe, and the agent's status port, for the attestation of the
/// installed files. Never opens the broker to anything else.
pub fn probe_policy(model: &BrokerModel, operator: &OperatorIdentity) -> NetworkPolicy {
    let peer = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("kubernetes.io/metadata.name".into(), operator.namespace.clone())])),
            match_expressions: None,
        }),
        pod_selector: Some(LabelSelector { match_labels: Some(operator.pod_labels.clone()), match_expressions: None }),
        ip_block: None,
    };
    let ports = [ports(model, &[]), vec![tcp_port(super::workload::AGENT_STATUS_PORT.into())]].concat();
    ingress_policy(
        model,
        model.object_meta(probe_policy_name(&model.name), "firewall"),
        vec![NetworkPolicyIngressRule { from: Some(vec![peer]), ports: Some(ports) }],
    )
}

/// An Ingress policy selecting the broker's pods with these rules.
fn ingress_policy(model: &BrokerModel, metadata: ObjectMeta, rules: Vec<NetworkPolicyIngressRule>) -> NetworkPolicy {
    NetworkPolicy {
        metadata,
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(model.pod_selector()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(rules),
            egress: None,
        }),
    }
}

/// One TCP port of a policy rule.
fn tcp_port(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort { port: Some(IntOrString::Int(port)), protocol: Some("TCP".into()), end_port: None }
}

/// Name of the policy that lets monitoring scrape the agents' metrics.
pub fn metrics_policy_name(broker: &str) -> String {
    format!("{broker}-moat-metrics")
}

/// Admits pods of the monitoring namespaces to the agents' metrics port, and to nothing else;
/// none when no namespace is given (the port stays closed by the default-deny policy).
pub fn metrics_policy(model: &BrokerModel, namespaces: &[String]) -> Option<NetworkPolicy> {
    if namespaces.is_empty() {
        return None;
    }
    let peer = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "kubernetes.io/metadata.name".into(),
                operator: "In".into(),
                values: Some(
                    namespaces.iter().cloned().collect::<std::collections::BTreeSet<_>>().into_iter().collect(),
                ),
            }]),
        }),
        pod_selector: None,
        ip_block: None,
    };
    Some(ingress_policy(
        model,
        model.object_meta(metrics_policy_name(&model.name), "firewall"),
        vec![NetworkPolicyIngressRule {
            from: Some(vec![peer]),
            ports: Some(vec![tcp_port(super::workload::AGENT_METRICS_PORT.into())]),
        }],
    ))
}

fn ports(model: &BrokerModel, listener_names: &[String]) -> Vec<NetworkPolicyPort> {
    model
        .spec
        .listeners
        .iter()
        .filter(|l| listener_names.is_empty() || listener_names.contains(&l.name))
        .map(|l| tcp_port(l.port))
        .collect()
}

/// Name of the allow policy generated from the MqttFirewall `firewall`.
pub fn firewall_policy_name(broker: &str, firewall: &str) -> String {
    format!("{broker}-fw-{firewall}")
}

/// One normalized CIDR peer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct CidrPeer {
    net: IpNet,
    except: Vec<IpNet>,
}

fn normalize_peers(spec: &MqttFirewallSpec, rule: usize) -> Result<Vec<NetworkPolicyPeer>, FieldError> {
    let mut peers = vec![];
    let mut selectors: BTreeMap<String, NetworkPolicyPeer> = BTreeMap::new();
    for (j, p) in spec.ingress[rule].from.iter().enumerate() {
        let field = |f: &str| format!("spec.ingress[{rule}].from[{j}]{f}");
        match &p.cidr {
            Some(c) => {
                let net = crate::validate::cidr(c).map_err(|message| FieldError { field: field(".cidr"), message })?;
                let mut except = vec![];
                for (k, e) in p.except.iter().flatten().enumerate() {
                    let e = crate::validate::cidr(e)
                        .map_err(|message| FieldError { field: field(&format!(".except[{k}]")), message })?;
                    if !net.contains(&e) || e.prefix_len() <= net.prefix_len() {
                        return Err(FieldError {
                            field: field(&format!(".except[{k}]")),
                            message: format!("{e} is not strictly inside {net}"),
                        });
                    }
                    except.push(e);
                }
                except.sort();
                except.dedup();
                peers.push(CidrPeer { net, except });
            }
            None => {
                let peer = NetworkPolicyPeer {
                    ip_block: None,
                    namespace_selector: p.namespace_selector.clone(),
                    pod_selector: p.pod_selector.clone(),
                };
                // selectors are keyed by their JSON form: stable order, duplicates merged
                let key = serde_json::to_string(&peer).unwrap_or_default();
                selectors.insert(key, peer);
            }
        }
    }
    peers.sort();
    peers.dedup();
    // A plain CIDR inside another plain CIDR adds nothing.
    let plain: Vec<IpNet> = peers.iter().filter(|p| p.except.is_empty()).map(|p| p.net).collect();
    peers.retain(|p| !p.except.is_empty() || !plain.iter().any(|outer| *outer != p.net && outer.contains(&p.net)));
    let mut out: Vec<NetworkPolicyPeer> = peers
        .into_iter()
        .map(|p| NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: p.net.to_string(),
                except: (!p.except.is_empty()).then(|| p.except.iter().map(ToString::to_string).collect()),
            }),
            namespace_selector: None,
            pod_selector: None,
        })
        .collect();
    out.extend(selectors.into_values());
    Ok(out)
}

/// The allow policy of one MqttFirewall: its peers (normalized, deduplicated, in a stable order)
/// may reach the named listeners' ports (every listener when none are named).
pub fn firewall_policy(
    model: &BrokerModel,
    firewall: &str,
    spec: &MqttFirewallSpec,
) -> Result<NetworkPolicy, FieldError> {
    let mut ingress = vec![];
    for (i, rule) in spec.ingress.iter().enumerate() {
        for (j, name) in rule.listeners.iter().enumerate() {
            if !model.spec.listeners.iter().any(|l| &l.name == name) {
                return Err(FieldError {
                    field: format!("spec.ingress[{i}].listeners[{j}]"),
                    message: format!("broker {} has no listener named {name:?}", model.name),
                });
            }
        }
        ingress.push(NetworkPolicyIngressRule {
            from: Some(normalize_peers(spec, i)?),
            ports: Some(ports(model, &rule.listeners)),
        });
    }
    let mut metadata = model.object_meta(firewall_policy_name(&model.name, firewall), "firewall");
    metadata.labels.get_or_insert_with(Default::default).insert(FIREWALL_LABEL.into(), firewall.into());
    Ok(ingress_policy(model, metadata, ingress))
}

/// Label on a firewall's NetworkPolicy naming the MqttFirewall it came from.
pub const FIREWALL_LABEL: &str = "mqtt.moat.dev/firewall";

/// `loadBalancerSourceRanges` for a broker: every CIDR peer of its firewalls, normalized,
/// deduplicated and sorted (exceptions cannot be expressed there; the NetworkPolicies enforce them).
pub fn load_balancer_source_ranges<'a>(firewalls: impl IntoIterator<Item = &'a MqttFirewallSpec>) -> Vec<String> {
    let mut nets: Vec<IpNet> = firewalls
        .into_iter()
        .flat_map(|f| f.ingress.iter())
        .flat_map(|r| r.from.iter())
        .filter_map(|p| p.cidr.as_deref())
        .filter_map(|c| crate::validate::cidr(c).ok())
        .collect();
    nets.sort();
    nets.dedup();
    let all = nets.clone();
    nets.retain(|n| !all.iter().any(|outer| outer != n && outer.contains(n)));
    nets.iter().map(ToString::to_string).collect()
}

/// Whether a label selector holds for `labels`: every matchLabels pair and every expression (an
/// empty selector selects everything; an unknown operator selects nothing).
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = sel.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// A source of traffic to a broker pod, for [`admitted_by`]: an IP, and when it is a pod, its
/// namespace (name and labels) and labels.
pub struct Source<'a> {
    /// The source address.
    pub ip: std::net::IpAddr,
    /// The pod's namespace: name and labels.
    pub namespace: Option<(&'a str, BTreeMap<String, String>)>,
    /// The pod's labels.
    pub pod_labels: Option<BTreeMap<String, String>>,
}

fn peer_matches(peer: &NetworkPolicyPeer, policy_ns: &str, src: &Source) -> bool {
    if let Some(b) = &peer.ip_block {
        let within = |c: &str| c.parse::<IpNet>().is_ok_and(|n| n.contains(&src.ip));
        return within(&b.cidr) && !b.except.iter().flatten().any(|e| within(e));
    }
    let (Some((ns_name, ns_labels)), Some(pod_labels)) = (&src.namespace, &src.pod_labels) else { return false };
    let ns_ok = match &peer.namespace_selector {
        Some(sel) => selector_matches(sel, ns_labels),
        None => *ns_name == policy_ns,
    };
    ns_ok && peer.pod_selector.as_ref().is_none_or(|sel| selector_matches(sel, pod_labels))
}

/// The ingress NetworkPolicies among `policies` (all selecting the same pods) whose rules admit
/// `src` to `port`, by name, following the NetworkPolicy API's semantics (an absent or empty
/// `from` or `ports` admits everything; a peer without namespaceSelector means the policy's namespace).
/// moat uses it to know which vantage points its own policies admit, never as proof of what the
/// network does.
pub fn admitted_by(policies: &[NetworkPolicy], src: &Source, port: i32) -> Vec<String> {
    policies
        .iter()
        .filter(|p| {
            let Some(spec) = p.spec.as_ref() else { return false };
            let ns = p.metadata.namespace.as_deref().unwrap_or_default();
            spec.policy_types.iter().flatten().any(|t| t == "Ingress")
                && spec.ingress.iter().flatten().any(|rule| {
                    // an absent or empty list matches everything
                    let ports = rule.ports.as_deref().unwrap_or_default();
                    let from = rule.from.as_deref().unwrap_or_default();
                    let port_ok = ports.is_empty()
                        || ports.iter().any(|pp| pp.port.is_none() || pp.port == Some(IntOrString::Int(port)));
                    port_ok && (from.is_empty() || from.iter().any(|peer| peer_matches(peer, ns, src)))
                })
        })
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

/// Whether `src` reaches `port` on pods selected by exactly `policies` (test oracle of the
/// rendering tests: isolated by any ingress policy, then admitted by one).
#[cfg(test)]
pub(crate) fn allowed(policies: &[NetworkPolicy], src: &Source, port: i32) -> bool {
    let isolated = policies
        .iter()
        .any(|p| p.spec.as_ref().is_some_and(|s| s.policy_types.iter().flatten().any(|t| t == "Ingress")));
    !isolated || !admitted_by(policies, src, port).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::broker::{Listener, ListenerAuthentication};
    use crate::crd::firewall::{IngressRule, Peer};
    use crate::model::tests::minimal_spec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn model(f: impl FnOnce(&mut crate::crd::MqttBrokerSpec)) -> BrokerModel {
        let mut spec = minimal_spec();
        spec.listeners.push(Listener {
            name: "mtls".into(),
            port: 8884,
            authentication: ListenerAuthentication::Certificate,
            ..spec.listeners[0].clone()
        });
        f(&mut spec);
        BrokerModel::from_spec("plant-a", "iot", &spec).unwrap()
    }

    fn cidr(c: &str, except: &[&str]) -> Peer {
        Peer {
            cidr: Some(c.into()),
            except: (!except.is_empty()).then(|| except.iter().map(|s| s.to_string()).collect()),
            namespace_selector: None,
            pod_selector: None,
        }
    }

    fn fw(rules: Vec<(Vec<Peer>, Vec<&str>)>) -> MqttFirewallSpec {
        MqttFirewallSpec {
            broker_ref: crate::crd::BrokerRef { name: "plant-a".into() },
            ingress: rules
                .into_iter()
                .map(|(from, l)| IngressRule { from, listeners: l.into_iter().map(String::from).collect() })
                .collect(),
            allow_public_internet: false,
        }
    }

    fn ip(s: &str) -> Source<'static> {
        Source { ip: s.parse().unwrap(), namespace: None, pod_labels: None }
    }

    #[test]
    fn default_deny_selects_broker_pods_both_directions() {
        let p = default_deny(&model(|_| {}));
        assert_eq!(p.metadata.name.as_deref(), Some("plant-a-default-deny"));
        let s = p.spec.unwrap();
        assert_eq!(s.policy_types.unwrap(), vec!["Ingress", "Egress"]);
        assert!(s.ingress.is_none() && s.egress.is_none());
        assert_eq!(s.pod_selector.unwrap().match_labels.unwrap(), names::selector_labels("plant-a"));
    }

    #[test]
    fn cidr_peers_are_normalized_deduplicated_and_ordered() {
        let m = model(|_| {});
        let spec = fw(vec![(
            vec![
                cidr("10.20.1.7/16", &["10.20.9.1/24"]),
                cidr("192.168.1.0/24", &[]),
                cidr("192.168.1.128/25", &[]),
                cidr("10.20.0.0/16", &["10.20.9.0/24"]),
                cidr("fd00:10::1/64", &[]),
            ],
            vec![],
        )]);
        let p = firewall_policy(&m, "office", &spec).unwrap();
        let from = p.spec.unwrap().ingress.unwrap()[0].from.clone().unwrap();
        let blocks: Vec<(String, Option<Vec<String>>)> = from
            .iter()
            .map(|p| (p.ip_block.as_ref().unwrap().cidr.clone(), p.ip_block.as_ref().unwrap().except.clone()))
            .collect();
        assert_eq!(
            blocks,
            vec![
                ("10.20.0.0/16".into(), Some(vec!["10.20.9.0/24".into()])),
                ("192.168.1.0/24".into(), None),
                ("fd00:10::/64".into(), None),
            ]
        );
    }

    #[test]
    fn listener_scoping_and_semantics() {
        let m = model(|_| {});
        let spec = fw(vec![
            (vec![cidr("10.20.0.0/16", &["10.20.9.0/24"])], vec!["mqtts"]),
            (vec![cidr("fd00:10::/64", &[])], vec![]),
        ]);
        let policies = vec![default_deny(&m), firewall_policy(&m, "office", &spec).unwrap()];
        assert!(allowed(&policies, &ip("10.20.1.5"), 8883));
        assert!(!allowed(&policies, &ip("10.20.1.5"), 8884), "scoped to mqtts");
        assert!(!allowed(&policies, &ip("10.20.9.7"), 8883), "excepted");
        assert!(!allowed(&policies, &ip("10.21.0.1"), 8883));
        assert!(allowed(&policies, &ip("fd00:10::99"), 8884), "no listeners = all listeners");
        assert!(!allowed(&[default_deny(&m)], &ip("10.20.1.5"), 8883), "default deny alone blocks");
    }

    #[test]
    fn selector_peers_and_unknown_listeners() {
        let m = model(|_| {});
        let sel = |k: &str, v: &str| LabelSelector {
            match_labels: Some(BTreeMap::from([(k.to_string(), v.to_string())])),
            match_expressions: None,
        };
        let spec = fw(vec![(
            vec![Peer {
                cidr: None,
                except: None,
                namespace_selector: Some(sel("team", "sensors")),
                pod_selector: Some(sel("app", "gateway")),
            }],
            vec!["mtls"],
        )]);
        let policies = vec![default_deny(&m), firewall_policy(&m, "gw", &spec).unwrap()];
        let pod = |team: &str, app: &str| Source {
            ip: "10.244.0.9".parse().unwrap(),
            namespace: Some(("edge", BTreeMap::from([("team".to_string(), team.to_string())]))),
            pod_labels: Some(BTreeMap::from([("app".to_string(), app.to_string())])),
        };
        assert!(allowed(&policies, &pod("sensors", "gateway"), 8884));
        assert!(!allowed(&policies, &pod("sensors", "other"), 8884));
        assert!(!allowed(&policies, &pod("web", "gateway"), 8884));
        let bad = fw(vec![(vec![cidr("10.0.0.0/8", &[])], vec!["nope"])]);
        assert_eq!(firewall_policy(&m, "x", &bad).unwrap_err().field, "spec.ingress[0].listeners[0]");
        let outside = fw(vec![(vec![cidr("10.0.0.0/16", &["10.1.0.0/24"])], vec![])]);
        assert_eq!(firewall_policy(&m, "x", &outside).unwrap_err().field, "spec.ingress[0].from[0].except[0]");
    }

    #[test]
    fn probe_policy_only_admits_the_operator() {
        let m = model(|_| {});
        let op = OperatorIdentity {
            namespace: "moat-system".into(),
            pod_labels: BTreeMap::from([("app.kubernetes.io/name".to_string(), "moat".to_string())]),
        };
        let policies = vec![default_deny(&m), probe_policy(&m, &op)];
        let src = |ns: &'static str, app: &str| Source {
            ip: "10.244.1.1".parse().unwrap(),
            namespace: Some((ns, BTreeMap::from([("kubernetes.io/metadata.name".to_string(), ns.to_string())]))),
            pod_labels: Some(BTreeMap::from([("app.kubernetes.io/name".to_string(), app.to_string())])),
        };
        assert!(allowed(&policies, &src("moat-system", "moat"), 8883));
        assert!(allowed(&policies, &src("moat-system", "moat"), 8884));
        assert!(!allowed(&policies, &src("moat-system", "other"), 8883));
        assert!(!allowed(&policies, &src("iot", "moat"), 8883));
        assert!(!allowed(&policies, &ip("10.244.1.1"), 8883));
    }

    /// Which of moat's policies admit the outsider: none for label-scoped firewalls, the firewall
    /// itself when it admits every namespace (or by an expression the outsider's namespace meets).
    #[test]
    fn metrics_policy_admits_only_the_monitoring_namespaces_to_the_metrics_port() {
        let m = model(|_| {});
        assert!(metrics_policy(&m, &[]).is_none(), "no namespace: no policy, the port stays closed");
        let policies = vec![default_deny(&m), metrics_policy(&m, &["prom".into(), "prom".into()]).unwrap()];
        let src = |ns: &'static str| Source {
            ip: "10.244.2.2".parse().unwrap(),
            namespace: Some((ns, BTreeMap::from([("kubernetes.io/metadata.name".to_string(), ns.to_string())]))),
            pod_labels: Some(BTreeMap::new()),
        };
        let metrics = crate::render::workload::AGENT_METRICS_PORT.into();
        assert!(allowed(&policies, &src("prom"), metrics));
        assert!(!allowed(&policies, &src("prom"), 8883), "not the listeners");
        assert!(!allowed(&policies, &src("prom"), crate::render::workload::AGENT_STATUS_PORT.into()), "not the status");
        assert!(!allowed(&policies, &src("iot"), metrics));
        assert!(!allowed(&policies, &ip("10.244.2.2"), metrics));
    }

    #[test]
    fn admitted_by_names_the_policies_that_admit_a_pod() {
        let m = model(|_| {});
        let outsider = Source {
            ip: "10.88.0.9".parse().unwrap(),
            namespace: Some((
                "moat-outsider",
                BTreeMap::from([("kubernetes.io/metadata.name".into(), "moat-outsider".into())]),
            )),
            pod_labels: Some(BTreeMap::from([("mqtt.moat.dev/role".into(), "outsider".into())])),
        };
        let selector = |labels: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            match_expressions: Some(exprs),
        };
        let ns_peer =
            |sel: LabelSelector| Peer { cidr: None, except: None, namespace_selector: Some(sel), pod_selector: None };
        let edge =
            firewall_policy(&m, "edge", &fw(vec![(vec![ns_peer(selector(&[("team", "edge")], vec![]))], vec![])]))
                .unwrap();
        let everyone =
            firewall_policy(&m, "everyone", &fw(vec![(vec![ns_peer(selector(&[], vec![]))], vec!["mqtts"])])).unwrap();
        let not_edge = LabelSelectorRequirement {
            key: "team".into(),
            operator: "NotIn".into(),
            values: Some(vec!["edge".into()]),
        };
        let expr =
            firewall_policy(&m, "expr", &fw(vec![(vec![ns_peer(selector(&[], vec![not_edge]))], vec![])])).unwrap();
        let pods =
            firewall_policy(&m, "pods", &fw(vec![(vec![cidr("10.88.0.0/16", &["10.88.0.8/29"])], vec![])])).unwrap();
        let op = OperatorIdentity { namespace: "moat-system".into(), pod_labels: BTreeMap::new() };
        let policies = vec![default_deny(&m), probe_policy(&m, &op), edge, everyone.clone(), expr, pods];
        assert_eq!(admitted_by(&policies, &outsider, 8883), vec!["plant-a-fw-everyone", "plant-a-fw-expr"]);
        assert_eq!(admitted_by(&policies, &outsider, 8884), vec!["plant-a-fw-expr"], "everyone admits mqtts only");
        // an empty `from` list admits every source
        let mut open = everyone;
        open.spec.as_mut().unwrap().ingress.as_mut().unwrap()[0].from = Some(vec![]);
        assert_eq!(admitted_by(&[open], &outsider, 8883), vec!["plant-a-fw-everyone"]);
    }

    #[test]
    fn load_balancer_gets_source_ranges_and_local_traffic_policy() {
        let m = model(|s| s.service.type_ = ServiceType::LoadBalancer);
        let a = fw(vec![(vec![cidr("203.0.113.7/24", &[]), cidr("10.0.0.0/8", &["10.1.0.0/16"])], vec![])]);
        let b = fw(vec![(vec![cidr("10.2.0.0/16", &[]), cidr("2001:db8::/48", &[])], vec![])]);
        let ranges = load_balancer_source_ranges([&a, &b]);
        assert_eq!(ranges, vec!["10.0.0.0/8", "203.0.113.0/24", "2001:db8::/48"]);
        let svc = service(&m, &ranges).spec.unwrap();
        assert_eq!(svc.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(svc.load_balancer_source_ranges.unwrap(), ranges);
        assert_eq!(svc.external_traffic_policy.as_deref(), Some("Local"));
        let cluster = service(&model(|_| {}), &[]).spec.unwrap();
        assert!(cluster.load_balancer_source_ranges.is_none() && cluster.external_traffic_policy.is_none());
        // no firewall CIDRs: the LoadBalancer is withheld rather than open to everyone
        let withheld = service(&m, &[]);
        assert_eq!(withheld.spec.as_ref().unwrap().type_.as_deref(), Some("ClusterIP"));
        assert!(withheld.metadata.annotations.unwrap().contains_key(LB_WITHHELD_ANNOTATION));
    }

    #[test]
    fn services_expose_every_listener() {
        let m = model(|_| {});
        let svc = service(&m, &[]);
        let ports: Vec<(String, i32)> =
            svc.spec.unwrap().ports.unwrap().into_iter().map(|p| (p.name.unwrap(), p.port)).collect();
        assert_eq!(ports, vec![("mqtts".to_string(), 8883), ("mtls".to_string(), 8884)]);
        let h = headless_service(&m);
        assert_eq!(h.metadata.name.as_deref(), Some("plant-a-headless"));
        assert_eq!(h.spec.unwrap().cluster_ip.as_deref(), Some("None"));
    }
}
