//! Prometheus metrics of the operator (served on `/metrics`).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels: which kind a reconcile was for.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// MqttBroker, MqttUser, MqttAcl or MqttFirewall.
    pub kind: String,
}

/// Labels: a reconcile error by kind and category.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Kind reconciled.
    pub kind: String,
    /// Error category (stable, e.g. `kube`, `invalid_spec`).
    pub reason: String,
}

/// Labels of a per-broker series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BrokerLabels {
    /// Namespace of the broker.
    pub namespace: String,
    /// Name of the broker.
    pub broker: String,
}

/// Labels of a failing-checks series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MeasureLabels {
    /// Namespace of the broker.
    pub namespace: String,
    /// Name of the broker.
    pub broker: String,
    /// Security measure.
    pub measure: String,
}

/// Labels of a certificate expiry series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    /// Namespace.
    pub namespace: String,
    /// Broker the certificate belongs to.
    pub broker: String,
    /// `ca`, `server` or `client`.
    pub role: String,
    /// Object the certificate was issued for (the broker or the MqttUser).
    pub name: String,
}

/// Labels of an API write counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// Resource kind written.
    pub kind: String,
    /// `apply`, `delete`, `status` or `event`.
    pub verb: String,
}

/// All operator metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Reconciles by kind.
    pub reconciles: Family<KindLabels, Counter>,
    /// Failed reconciles by kind and reason.
    pub errors: Family<ErrorLabels, Counter>,
    /// Reconcile durations by kind.
    pub duration: Family<KindLabels, Histogram>,
    /// Failing compliance checks by broker and measure.
    pub failing_checks: Family<MeasureLabels, Gauge>,
    /// Certificate expiry (Unix seconds).
    pub cert_expiry: Family<CertLabels, Gauge>,
    /// Time of the last completed audit (Unix seconds).
    pub last_audit: Family<BrokerLabels, Gauge>,
    /// Known CVEs of the running broker version.
    pub known_cves: Family<BrokerLabels, Gauge>,
    /// PBKDF2 password hashes computed (steady state: none).
    pub password_hashes: Counter,
    /// Certificates issued, by role.
    pub certificates_issued: Family<KindLabels, Counter>,
    /// API writes made by moat.
    pub writes: Family<WriteLabels, Counter>,
    /// Drift found and repaired, by kind of object.
    pub drift_repaired: Family<KindLabels, Counter>,
    /// nextUpdate of each broker's CRL (Unix seconds): certificate clients stop working then
    /// unless moat re-signs it.
    pub crl_next_update: Family<BrokerLabels, Gauge>,
    /// Seconds the broker's last timed revocation took to reach every pod (attested).
    pub revocation_seconds: Family<BrokerLabels, Gauge>,
    /// Broker pods running the files moat wrote last (attested), and all pods asked.
    pub pods_current: Family<BrokerLabels, Gauge>,
    /// Bursts of refused logins reported by broker agents (each a `SuspiciousActivity` Event).
    pub suspicious_activity: Family<BrokerLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16))),
            failing_checks: Family::default(),
            cert_expiry: Family::default(),
            last_audit: Family::default(),
            known_cves: Family::default(),
            password_hashes: Counter::default(),
            certificates_issued: Family::default(),
            writes: Family::default(),
            drift_repaired: Family::default(),
            crl_next_update: Family::default(),
            revocation_seconds: Family::default(),
            pods_current: Family::default(),
            suspicious_activity: Family::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under the `moat_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("moat");
        r.register("reconciles", "Reconciles by kind", self.reconciles.clone());
        r.register("reconcile_errors", "Failed reconciles by kind and reason", self.errors.clone());
        r.register("reconcile_duration_seconds", "Reconcile duration by kind", self.duration.clone());
        r.register(
            "compliance_checks_failing",
            "Failing compliance checks by broker and measure",
            self.failing_checks.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "Certificate notAfter (Unix seconds)",
            self.cert_expiry.clone(),
        );
        r.register(
            "last_audit_timestamp_seconds",
            "Time of the broker's last compliance audit",
            self.last_audit.clone(),
        );
        r.register("broker_known_cves", "Known CVEs of the running broker version", self.known_cves.clone());
        r.register("password_hashes", "PBKDF2 password hashes computed", self.password_hashes.clone());
        r.register("certificates_issued", "Certificates issued by role", self.certificates_issued.clone());
        r.register("api_writes", "Kubernetes API writes made by moat", self.writes.clone());
        r.register(
            "drift_repaired",
            "Managed objects found changed outside moat and repaired",
            self.drift_repaired.clone(),
        );
        r.register(
            "crl_next_update_timestamp_seconds",
            "nextUpdate of the broker's CRL (certificate clients are refused after it unless re-signed)",
            self.crl_next_update.clone(),
        );
        r.register(
            "revocation_seconds",
            "Seconds the last revocation (user removed, password changed, certificate revoked) took to reach every broker pod, as their agents attest",
            self.revocation_seconds.clone(),
        );
        r.register(
            "broker_pods_current_files",
            "Broker pods whose agent attests the files moat wrote last",
            self.pods_current.clone(),
        );
        r.register(
            "suspicious_activity",
            "Bursts of refused logins at a broker (failedLoginThreshold within failedLoginWindow), each recorded as a SuspiciousActivity Event",
            self.suspicious_activity.clone(),
        );
    }

    /// Records one reconcile of `kind` that took `took`.
    pub fn observe_reconcile(&self, kind: &str, took: Duration) {
        let l = KindLabels { kind: kind.into() };
        self.reconciles.get_or_create(&l).inc();
        self.duration.get_or_create(&l).observe(took.as_secs_f64());
    }

    /// Counts one API write.
    pub fn write(&self, kind: &str, verb: &str) {
        self.writes.get_or_create(&WriteLabels { kind: kind.into(), verb: verb.into() }).inc();
    }
}

/// A registry with the metrics registered, and the metrics handle.
pub fn registry() -> (Arc<Registry>, Metrics) {
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    (Arc::new(registry), metrics)
}

/// Renders the registry in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exposed_with_the_moat_prefix() {
        let (registry, m) = registry();
        m.observe_reconcile("MqttBroker", Duration::from_millis(3));
        m.write("Secret", "apply");
        m.cert_expiry
            .get_or_create(&CertLabels {
                namespace: "n".into(),
                broker: "b".into(),
                role: "server".into(),
                name: "b".into(),
            })
            .set(1_800_000_000);
        let text = encode(&registry);
        assert!(text.contains("moat_reconciles_total{kind=\"MqttBroker\"} 1"), "{text}");
        assert!(text.contains("moat_api_writes_total{kind=\"Secret\",verb=\"apply\"} 1"), "{text}");
        assert!(text.contains("moat_certificate_expiry_timestamp_seconds{namespace=\"n\",broker=\"b\",role=\"server\",name=\"b\"} 1800000000"), "{text}");
    }
}
