//! The validated broker model: what the build step renders from, derived once from the spec.
//!
//! `BrokerModel::new` is the broker half of the pipeline's *validate* step: everything the CRD
//! schema cannot express is checked here (and reported as `Ready=False, reason=InvalidSpec` with
//! a message naming the field); everything downstream may assume a consistent spec.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::crd::broker::{ListenerAuthentication, ListenerProtocol, MqttBrokerSpec};
use crate::crd::{GoDuration, MqttBroker};
use crate::names;
use crate::validate::{FieldError, lifetime};

/// Kubernetes cluster domain used in generated DNS names.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// A broker spec that passed validation, with its durations parsed and its identity resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct BrokerModel {
    /// Name of the MqttBroker.
    pub name: String,
    /// Namespace of the MqttBroker.
    pub namespace: String,
    /// The validated spec.
    pub spec: MqttBrokerSpec,
    /// Parsed durations of the spec.
    pub durations: Durations,
}

/// Every duration of a broker spec, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Durations {
    /// CA lifetime.
    pub ca_validity: Duration,
    /// CA renewal margin.
    pub ca_renew_before: Duration,
    /// Server certificate lifetime.
    pub server_validity: Duration,
    /// Server certificate renewal margin.
    pub server_renew_before: Duration,
    /// Delay between trusting a new CA and signing with it.
    pub trust_propagation: Duration,
    /// Compliance audit period.
    pub audit_interval: Duration,
    /// Upgrade: time a pod has to become Ready.
    pub rollout_timeout: Duration,
    /// Upgrade: time an updated pod must stay Ready.
    pub ready_grace: Duration,
    /// Persistence autosave period.
    pub autosave_interval: Duration,
    /// How long files (and revocations) may take to reach every pod.
    pub revocation_deadline: Duration,
    /// The window of the failed-login threshold.
    pub failed_login_window: Duration,
}

fn duration(field: &str, d: &GoDuration) -> Result<Duration, FieldError> {
    let parsed = d.parse().map_err(|message| FieldError { field: field.into(), message })?;
    if parsed.is_zero() {
        return Err(FieldError { field: field.into(), message: "must be greater than zero".into() });
    }
    Ok(parsed)
}

impl BrokerModel {
    /// Validates a broker and builds its model.
    pub fn new(broker: &MqttBroker) -> Result<Self, FieldError> {
        let name = broker.metadata.name.clone().unwrap_or_default();
        let namespace = broker.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        Self::from_spec(&name, &namespace, &broker.spec)
    }

    /// Validates a spec for the broker `namespace/name` and builds its model.
    pub fn from_spec(name: &str, namespace: &str, spec: &MqttBrokerSpec) -> Result<Self, FieldError> {
        if name.is_empty() || name.len() > 52 {
            return Err(FieldError { field: "metadata.name".into(), message: "must be 1 to 52 characters".into() });
        }
        let tls = &spec.tls;
        let durations = Durations {
            ca_validity: duration("spec.tls.ca.validity", &tls.ca.validity)?,
            ca_renew_before: duration("spec.tls.ca.renewBefore", &tls.ca.renew_before)?,
            server_validity: duration("spec.tls.server.validity", &tls.server.validity)?,
            server_renew_before: duration("spec.tls.server.renewBefore", &tls.server.renew_before)?,
            trust_propagation: duration("spec.tls.trustPropagationDelay", &tls.trust_propagation_delay)?,
            audit_interval: duration("spec.audit.interval", &spec.audit.interval)?,
            rollout_timeout: duration("spec.upgrade.rolloutTimeout", &spec.upgrade.rollout_timeout)?,
            ready_grace: duration("spec.upgrade.readyGracePeriod", &spec.upgrade.ready_grace_period)?,
            autosave_interval: duration("spec.persistence.autosaveInterval", &spec.persistence.autosave_interval)?,
            revocation_deadline: duration("spec.security.revocationDeadline", &spec.security.revocation_deadline)?,
            failed_login_window: duration("spec.logging.failedLoginWindow", &spec.logging.failed_login_window)?,
        };
        if !(Duration::from_secs(10)..=Duration::from_secs(3600)).contains(&durations.failed_login_window) {
            return Err(FieldError {
                field: "spec.logging.failedLoginWindow".into(),
                message: "must be within 10s and 1h".into(),
            });
        }
        lifetime::CA.check("spec.tls.ca", durations.ca_validity, durations.ca_renew_before)?;
        lifetime::LEAF.check("spec.tls.server", durations.server_validity, durations.server_renew_before)?;
        if durations.audit_interval < Duration::from_secs(10) {
            return Err(FieldError { field: "spec.audit.interval".into(), message: "must be at least 10s".into() });
        }
        if spec.listeners.is_empty() {
            return Err(FieldError {
                field: "spec.listeners".into(),
                message: "at least one listener is required".into(),
            });
        }
        for (i, l) in spec.listeners.iter().enumerate() {
            let field = |f: &str| format!("spec.listeners[{i}].{f}");
            if spec.listeners.iter().filter(|m| m.name == l.name).count() > 1 {
                return Err(FieldError {
                    field: field("name"),
                    message: format!("duplicate listener name {:?}", l.name),
                });
            }
            if spec.listeners.iter().filter(|m| m.port == l.port).count() > 1 {
                return Err(FieldError {
                    field: field("port"),
                    message: format!("duplicate listener port {}", l.port),
                });
            }
            if !(1024..=65535).contains(&l.port) {
                return Err(FieldError { field: field("port"), message: "must be within 1024-65535".into() });
            }
            if !l.tls.enabled && !l.insecure_plaintext {
                return Err(FieldError {
                    field: field("insecurePlaintext"),
                    message: "a plaintext listener (tls.enabled: false) requires insecurePlaintext: true".into(),
                });
            }
            if !l.tls.enabled && l.authentication == ListenerAuthentication::Certificate {
                return Err(FieldError {
                    field: field("authentication"),
                    message: "certificate authentication needs TLS (tls.enabled: true)".into(),
                });
            }
            if l.protocol != ListenerProtocol::Mqtt && l.authentication == ListenerAuthentication::Certificate {
                return Err(FieldError {
                    field: field("authentication"),
                    message: "certificate authentication is only possible on Mqtt listeners: Mosquitto does not \
                              load the CRL on WebSockets listeners, so revoked certificates would still connect"
                        .into(),
                });
            }
        }
        check_strings(spec)?;
        check_ranges(spec)?;
        if spec.limits.message_size_limit > spec.limits.max_packet_size {
            return Err(FieldError {
                field: "spec.limits.messageSizeLimit".into(),
                message: "must not exceed spec.limits.maxPacketSize".into(),
            });
        }
        for (i, ip) in spec.tls.server.ip_addresses.iter().enumerate() {
            if ip.parse::<IpAddr>().is_err() {
                return Err(FieldError {
                    field: format!("spec.tls.server.ipAddresses[{i}]"),
                    message: format!("{ip:?} is not an IP address"),
                });
            }
        }
        Ok(Self { name: name.to_string(), namespace: namespace.to_string(), spec: spec.clone(), durations })
    }

    /// Name of the client-facing Service (same as the broker).
    pub fn service_name(&self) -> String {
        self.name.clone()
    }

    /// Name of the headless Service that gives each pod a stable DNS name.
    pub fn headless_service_name(&self) -> String {
        format!("{}-headless", self.name)
    }

    /// DNS names the server certificate must cover: the Service in all its forms, every pod's
    /// stable name, then the extra names from the spec (deduplicated, in a stable order).
    pub fn server_dns_names(&self) -> Vec<String> {
        let svc = self.service_name();
        let ns = &self.namespace;
        let headless = self.headless_service_name();
        let mut out = vec![
            svc.clone(),
            format!("{svc}.{ns}"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.{CLUSTER_DOMAIN}"),
        ];
        for i in 0..self.spec.replicas {
            out.push(format!("{}-{i}.{headless}.{ns}.svc", self.name));
            out.push(format!("{}-{i}.{headless}.{ns}.svc.{CLUSTER_DOMAIN}", self.name));
        }
        for extra in &self.spec.tls.server.dns_names {
            if !out.contains(extra) {
                out.push(extra.clone());
            }
        }
        out
    }

    /// Extra IP addresses of the server certificate.
    pub fn server_ip_addresses(&self) -> Vec<IpAddr> {
        self.spec.tls.server.ip_addresses.iter().filter_map(|ip| ip.parse().ok()).collect()
    }

    /// Whether any listener uses client certificate authentication (needs the CA bundle + CRL).
    pub fn has_certificate_listener(&self) -> bool {
        self.spec.listeners.iter().any(|l| l.authentication == ListenerAuthentication::Certificate)
    }

    /// Whether any listener uses password authentication.
    pub fn has_password_listener(&self) -> bool {
        self.spec.listeners.iter().any(|l| l.authentication == ListenerAuthentication::Password)
    }

    /// Common name of this broker's CA (a generation timestamp is added by the PKI).
    pub fn ca_common_name(&self) -> String {
        format!("moat CA {}/{}", self.namespace, self.name)
    }

    /// Standard labels for a generated object of this broker.
    pub fn labels(&self, component: &str) -> std::collections::BTreeMap<String, String> {
        names::labels(&self.name, component)
    }

    /// Metadata of a generated object of this broker: name, namespace and standard labels.
    pub fn object_meta(&self, name: String, component: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels(component)),
            ..Default::default()
        }
    }

    /// Selects the broker's pods.
    pub fn pod_selector(&self) -> LabelSelector {
        LabelSelector { match_labels: Some(names::selector_labels(&self.name)), match_expressions: None }
    }
}

/// The schema's string patterns, again, for everything that reaches a rendered file (the offline
/// `moat render` path has no admission, and defense in depth costs nothing).
fn check_strings(spec: &MqttBrokerSpec) -> Result<(), FieldError> {
    let err = |field: &str, what: &str| Err(FieldError::new(field, what));
    let version_ok = {
        let parts: Vec<&str> = spec.version.split('.').collect();
        parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    if !version_ok {
        return err("spec.version", "must be MAJOR.MINOR.PATCH (digits), e.g. 2.0.22");
    }
    let repo = &spec.image.repository;
    let repo_ok = !repo.is_empty()
        && repo.len() <= 255
        && repo.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._/:-".contains(&b))
        && repo.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && repo.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if !repo_ok {
        return err("spec.image.repository", "must be a lower-case image repository");
    }
    for (i, l) in spec.listeners.iter().enumerate() {
        let name_ok = !l.name.is_empty()
            && l.name.len() <= 15
            && l.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && l.name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
            && !l.name.ends_with('-');
        if !name_ok {
            return err(
                &format!("spec.listeners[{i}].name"),
                "must be a lower-case DNS label of at most 15 characters",
            );
        }
        let cipher_ok = |c: &str, extra: &[u8]| {
            !c.is_empty() && c.len() <= 1024 && c.bytes().all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
        };
        if l.tls.ciphers.as_deref().is_some_and(|c| !cipher_ok(c, b":+!@_.-")) {
            return err(
                &format!("spec.listeners[{i}].tls.ciphers"),
                "must be an OpenSSL cipher list ([A-Za-z0-9:+!@_.-])",
            );
        }
        if l.tls.ciphers_tls13.as_deref().is_some_and(|c| !cipher_ok(c, b":_")) {
            return err(
                &format!("spec.listeners[{i}].tls.ciphersTls13"),
                "must be a TLS 1.3 suite list ([A-Za-z0-9:_])",
            );
        }
    }
    for (i, d) in spec.tls.server.dns_names.iter().enumerate() {
        let host = d.strip_prefix("*.").unwrap_or(d);
        let ok = !host.is_empty()
            && d.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !ok {
            return err(&format!("spec.tls.server.dnsNames[{i}]"), "must be a lower-case DNS name");
        }
    }
    Ok(())
}

/// The schema's numeric ranges, again (rendered into mosquitto.conf and the workload).
fn check_ranges(spec: &MqttBrokerSpec) -> Result<(), FieldError> {
    let range = |field: &str, v: i64, min: i64, max: i64| {
        if (min..=max).contains(&v) {
            Ok(())
        } else {
            Err(FieldError::new(field, format!("must be within {min}-{max}")))
        }
    };
    let l = &spec.limits;
    range("spec.replicas", spec.replicas.into(), 1, 10)?;
    range("spec.limits.maxConnections", l.max_connections.into(), 1, 1_000_000)?;
    range("spec.limits.maxPacketSize", l.max_packet_size.into(), 64, 268_435_455)?;
    range("spec.limits.messageSizeLimit", l.message_size_limit.into(), 1, 268_435_455)?;
    range("spec.limits.maxInflightMessages", l.max_inflight_messages.into(), 1, 65535)?;
    range("spec.limits.maxQueuedMessages", l.max_queued_messages.into(), 1, 1_000_000)?;
    range("spec.limits.maxKeepalive", l.max_keepalive.into(), 10, 65535)?;
    range("spec.security.sysInterval", spec.security.sys_interval.into(), 0, 86400)?;
    range("spec.passwords.hashIterations", spec.passwords.hash_iterations.into(), 1000, 1_000_000)?;
    range("spec.passwords.generatedLength", spec.passwords.generated_length.into(), 24, 128)?;
    for (i, l) in spec.listeners.iter().enumerate() {
        if let Some(m) = l.max_connections {
            range(&format!("spec.listeners[{i}].maxConnections"), m.into(), 1, 1_000_000)?;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::crd::broker::{Listener, ListenerTls};

    /// A broker spec with only `version` set, as the apiserver would default it.
    pub(crate) fn minimal_spec() -> MqttBrokerSpec {
        serde_json::from_value(serde_json::json!({"version": "2.0.22"})).unwrap()
    }

    #[test]
    fn minimal_spec_is_valid_and_secure_by_default() {
        let m = BrokerModel::from_spec("plant-a", "iot", &minimal_spec()).unwrap();
        assert_eq!(m.spec.listeners.len(), 1);
        let l = &m.spec.listeners[0];
        assert!(l.tls.enabled && !l.insecure_plaintext);
        assert_eq!(l.port, 8883);
        assert_eq!(m.durations.ca_validity, Duration::from_secs(8760 * 3600));
    }

    #[test]
    fn server_names_cover_service_forms_and_pods() {
        let mut spec = minimal_spec();
        spec.replicas = 2;
        spec.tls.server.dns_names = vec!["mqtt.example.com".into(), "plant-a".into()];
        let m = BrokerModel::from_spec("plant-a", "iot", &spec).unwrap();
        assert_eq!(
            m.server_dns_names(),
            vec![
                "plant-a",
                "plant-a.iot",
                "plant-a.iot.svc",
                "plant-a.iot.svc.cluster.local",
                "plant-a-0.plant-a-headless.iot.svc",
                "plant-a-0.plant-a-headless.iot.svc.cluster.local",
                "plant-a-1.plant-a-headless.iot.svc",
                "plant-a-1.plant-a-headless.iot.svc.cluster.local",
                "mqtt.example.com",
            ]
        );
    }

    #[test]
    fn invalid_specs_name_the_field() {
        type Mutation = Box<dyn Fn(&mut MqttBrokerSpec)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|s| s.tls.ca.renew_before = GoDuration::new("9000h")), "spec.tls.ca.renewBefore"),
            (Box::new(|s| s.tls.server.validity = GoDuration::new("banana")), "spec.tls.server.validity"),
            (Box::new(|s| s.limits.message_size_limit = s.limits.max_packet_size + 1), "spec.limits.messageSizeLimit"),
            (
                Box::new(|s| {
                    s.listeners.push(Listener {
                        name: "plain".into(),
                        port: 1883,
                        tls: ListenerTls { enabled: false, ..Default::default() },
                        ..s.listeners[0].clone()
                    })
                }),
                "spec.listeners[1].insecurePlaintext",
            ),
            (
                Box::new(|s| s.listeners.push(Listener { name: "dup".into(), ..s.listeners[0].clone() })),
                "spec.listeners[0].port",
            ),
            (Box::new(|s| s.audit.interval = GoDuration::new("1s")), "spec.audit.interval"),
            (
                Box::new(|s| {
                    s.listeners.push(Listener {
                        name: "wss".into(),
                        port: 8443,
                        protocol: ListenerProtocol::WebSockets,
                        authentication: ListenerAuthentication::Certificate,
                        ..s.listeners[0].clone()
                    })
                }),
                "spec.listeners[1].authentication",
            ),
            (Box::new(|s| s.tls.server.ip_addresses = vec!["10.0.0.300".into()]), "spec.tls.server.ipAddresses[0]"),
        ];
        for (mutate, field) in cases {
            let mut spec = minimal_spec();
            mutate(&mut spec);
            let err = BrokerModel::from_spec("b", "ns", &spec).unwrap_err();
            assert_eq!(err.field, field, "{err:?}");
        }
    }
}
