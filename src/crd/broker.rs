//! `MqttBroker`: one hardened Eclipse Mosquitto broker (StatefulSet, Service, Secrets, policies).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{CertificateInfo, ComplianceStatus, GoDuration, MemberCounts, conditions_schema};

/// Desired state of a Mosquitto broker. Every default is the secure choice: a broker with only
/// `version` set has one TLS listener (8883, password authentication, TLS >= 1.2), no anonymous
/// access, a default-deny ACL and a default-deny NetworkPolicy.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "mqtt.moat.dev",
    version = "v1alpha1",
    kind = "MqttBroker",
    plural = "mqttbrokers",
    namespaced,
    status = "MqttBrokerStatus",
    shortname = "mqb",
    category = "moat",
    doc = "A hardened Eclipse Mosquitto broker managed by moat.",
    validation = Rule::new("size(self.metadata.name) <= 52").message("MqttBroker names are at most 52 characters (its StatefulSet's pod and revision names must fit in 63)"),
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Compliant","type":"string","jsonPath":".status.compliance.summary"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.version.current"}"#,
    printcolumn = r#"{"name":"Cert-Expiry","type":"string","jsonPath":".status.certificates.server.notAfter"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.listeners.all(l, self.listeners.exists_one(m, m.port == l.port))",
        "message": "listener ports must be unique"
    },
    {
        "rule": "self.listeners.exists(l, l.protocol == 'Mqtt')",
        "message": "at least one listener must use protocol Mqtt (Mosquitto 2.0 does not start with WebSockets listeners only)"
    },
    {
        "rule": "self.service.type != 'LoadBalancer' || self.listeners.all(l, l.tls.enabled)",
        "message": "a LoadBalancer Service must not expose plaintext listeners (set tls.enabled: true on every listener)"
    }
]))]
pub struct MqttBrokerSpec {
    /// Mosquitto version: an upstream `eclipse-mosquitto` image tag `MAJOR.MINOR.PATCH`, e.g. `2.0.22`.
    /// Checked against moat's security-patch catalog (status.version.knownCVEs).
    #[schemars(length(min = 5, max = 16), pattern(r"^[0-9]+\.[0-9]+\.[0-9]+$"))]
    pub version: String,

    /// Container image of the broker; the tag is always `version`.
    #[serde(default)]
    pub image: ImageSpec,

    /// Number of broker pods. Mosquitto does not cluster: each replica is an independent broker
    /// with the same users, ACLs and certificates. A PodDisruptionBudget is created when > 1.
    /// Default: 1.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 10))]
    pub replicas: i32,

    /// Network listeners. Default: one listener `mqtts` on port 8883 with TLS and password
    /// authentication. Mosquitto has no "optional client certificate" mode, so certificate
    /// (mTLS) authentication needs a listener of its own (`authentication: Certificate`).
    #[serde(default = "default_listeners")]
    #[schemars(length(min = 1, max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub listeners: Vec<Listener>,

    /// Certificate authority and server certificate lifetimes. moat runs its own CA per broker.
    #[serde(default)]
    pub tls: TlsSpec,

    /// Password hashing and the policy for passwords brought by users (`secretRef`).
    #[serde(default)]
    pub passwords: PasswordPolicy,

    /// Protocol and resource limits written into mosquitto.conf.
    #[serde(default)]
    pub limits: Limits,

    /// Broker logging (to stderr, so `kubectl logs` shows connections at once, and to a file that
    /// moat's agent reads for broker metrics and suspicious activity).
    #[serde(default)]
    pub logging: Logging,

    /// Message persistence. Off by default (the root filesystem stays read-only and no volume is needed).
    #[serde(default)]
    pub persistence: Persistence,

    /// Compute resources of the broker container. Default: requests cpu 50m / memory 64Mi, limits memory 256Mi.
    #[serde(default = "default_resources")]
    pub resources: ResourceRequirements,

    /// Version upgrade policy: manual, or automatic patch upgrades inside maintenance windows.
    #[serde(default)]
    pub upgrade: UpgradeSpec,

    /// Periodic compliance audit.
    #[serde(default)]
    pub audit: AuditSpec,

    /// The Service in front of the broker pods.
    #[serde(default)]
    pub service: ServiceSpec,

    /// Protocol-level security settings.
    #[serde(default)]
    pub security: SecuritySpec,

    /// Scheduling and metadata of the broker pods.
    #[serde(default)]
    pub pod: PodOptions,
}

fn default_replicas() -> i32 {
    1
}

/// The default listener set: `mqtts` on 8883, TLS >= 1.2, password authentication.
pub fn default_listeners() -> Vec<Listener> {
    vec![Listener {
        name: "mqtts".into(),
        port: 8883,
        protocol: ListenerProtocol::Mqtt,
        authentication: ListenerAuthentication::Password,
        tls: ListenerTls::default(),
        insecure_plaintext: false,
        max_connections: None,
    }]
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("50m".into())),
            ("memory".to_string(), Quantity("64Mi".into())),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), Quantity("256Mi".into()))])),
        ..Default::default()
    }
}

/// Broker container image.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Image repository; the tag is `spec.version`. Default: `eclipse-mosquitto`.
    #[serde(default = "default_repository")]
    #[schemars(length(min = 1, max = 255), pattern(r"^[a-z0-9]+([._/:-][a-z0-9]+)*$"))]
    pub repository: String,
    /// Image pull policy: Always, IfNotPresent or Never. Default: IfNotPresent.
    #[serde(default = "default_pull_policy")]
    #[schemars(extend("enum" = ["Always", "IfNotPresent", "Never"]))]
    pub pull_policy: String,
    /// Names of image pull Secrets in the broker's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub pull_secrets: Vec<String>,
}

fn default_repository() -> String {
    "eclipse-mosquitto".into()
}

fn default_pull_policy() -> String {
    "IfNotPresent".into()
}

impl Default for ImageSpec {
    fn default() -> Self {
        Self { repository: default_repository(), pull_policy: default_pull_policy(), pull_secrets: vec![] }
    }
}

/// One network listener of the broker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.tls.enabled || self.insecurePlaintext",
        "message": "a plaintext listener (tls.enabled: false) requires insecurePlaintext: true"
    },
    {
        "rule": "!self.insecurePlaintext || !self.tls.enabled",
        "message": "insecurePlaintext: true is only valid together with tls.enabled: false"
    },
    {
        "rule": "self.tls.enabled || self.authentication == 'Password'",
        "message": "certificate authentication needs TLS (tls.enabled: true)"
    },
    {
        "rule": "self.protocol == 'Mqtt' || self.authentication == 'Password'",
        "message": "certificate authentication is only possible on Mqtt listeners: Mosquitto does not load the CRL on WebSockets listeners, so revoked certificates would still connect"
    }
]))]
pub struct Listener {
    /// Listener name (also the Service port name): lower-case, at most 15 characters.
    #[schemars(length(min = 1, max = 15), pattern(r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// TCP port, 1024-65535 (the broker runs without privileges, so it cannot bind lower ports).
    #[schemars(range(min = 1024, max = 65535))]
    pub port: i32,
    /// Wire protocol: `Mqtt` (MQTT over TCP) or `WebSockets` (MQTT over WebSockets). Default: Mqtt.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// How clients authenticate: `Password` (username + password from the password file) or
    /// `Certificate` (mTLS client certificate issued by moat's CA; CN = username; revoked
    /// certificates are refused through a CRL; only on `Mqtt` listeners, because Mosquitto does
    /// not check the CRL on WebSockets listeners). Default: Password.
    #[serde(default)]
    pub authentication: ListenerAuthentication,
    /// TLS settings. TLS is on by default.
    #[serde(default)]
    pub tls: ListenerTls,
    /// Acknowledges that this listener sends credentials and messages in clear text. Required
    /// when `tls.enabled` is false; such a listener always fails the encryption check. Default: false.
    #[serde(default)]
    pub insecure_plaintext: bool,
    /// Maximum concurrent client connections on this listener. Default: `limits.maxConnections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: Option<i32>,
}

/// Listener wire protocol.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ListenerProtocol {
    #[default]
    Mqtt,
    WebSockets,
}

/// Listener authentication mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ListenerAuthentication {
    #[default]
    Password,
    Certificate,
}

/// TLS settings of one listener.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTls {
    /// Serve TLS with moat's server certificate. Default: true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Lowest TLS version accepted: `1.2` or `1.3`. Older versions are never accepted. Default: 1.2.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// OpenSSL cipher list for TLS 1.2 (Mosquitto `ciphers`). Default: Mosquitto's built-in list;
    /// on WebSockets listeners, where Mosquitto does not apply the minimum version, a list that
    /// enforces `minVersion` (setting one there makes it decide which versions below 1.3 work).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), pattern(r"^[A-Za-z0-9:+!@_.-]+$"))]
    pub ciphers: Option<String>,
    /// TLS 1.3 cipher suites (Mosquitto `ciphers_tls1.3`). Default: OpenSSL's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), pattern(r"^[A-Za-z0-9:_]+$"))]
    pub ciphers_tls13: Option<String>,
}

impl Default for ListenerTls {
    fn default() -> Self {
        Self { enabled: true, min_version: TlsVersion::default(), ciphers: None, ciphers_tls13: None }
    }
}

/// Minimum TLS protocol version.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

/// CA and server certificate policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Lifetime of the broker's CA. Default: validity 8760h (1 year), renewBefore 720h (30 days).
    /// A renewed CA is rolled over with trust overlap: it joins the trust bundle before anything
    /// is signed by it, and the old CA leaves only when no certificate it signed is still in use.
    #[serde(default = "default_ca_policy")]
    pub ca: CertificatePolicy,
    /// The broker's server certificate. Default: validity 2160h (90 days), renewBefore 360h (15 days).
    #[serde(default)]
    pub server: ServerCertificate,
    /// How long a new CA sits in the trust bundle before moat signs with it, so every pod and
    /// client has it first (mounted Secrets reach pods after 60-90 s). Default: 5m.
    #[serde(default = "default_trust_propagation")]
    pub trust_propagation_delay: GoDuration,
}

fn default_ca_policy() -> CertificatePolicy {
    CertificatePolicy { validity: GoDuration::new("8760h"), renew_before: GoDuration::new("720h") }
}

fn default_trust_propagation() -> GoDuration {
    GoDuration::new("5m")
}

impl Default for TlsSpec {
    fn default() -> Self {
        Self {
            ca: default_ca_policy(),
            server: ServerCertificate::default(),
            trust_propagation_delay: default_trust_propagation(),
        }
    }
}

/// Lifetime of a certificate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = crate::validate::lifetime::cel(&crate::validate::lifetime::CA_RULES)))]
pub struct CertificatePolicy {
    /// Certificate lifetime, e.g. `8760h`; at least 24h.
    pub validity: GoDuration,
    /// Renew this long before the certificate expires, e.g. `720h`; at least 1h and at most half
    /// of `validity`.
    pub renew_before: GoDuration,
}

/// Server certificate policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = crate::validate::lifetime::cel(&crate::validate::lifetime::LEAF_RULES)))]
pub struct ServerCertificate {
    /// Certificate lifetime; at least 1h. Default: 2160h (90 days).
    #[serde(default = "default_server_validity")]
    pub validity: GoDuration,
    /// Renew this long before expiry; at least 1m and at most half of `validity`. Default: 360h (15 days).
    #[serde(default = "default_server_renew_before")]
    pub renew_before: GoDuration,
    /// Extra DNS names for the server certificate (the Service and pod names are always included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(
            length(min = 1, max = 253),
            pattern(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        )
    )]
    pub dns_names: Vec<String>,
    /// Extra IP addresses for the server certificate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 2, max = 45)))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.all(ip, isIP(ip))", "message": "every entry must be an IP address"}]))]
    pub ip_addresses: Vec<String>,
    /// Take the server certificate from cert-manager instead of moat's CA (e.g. a corporate or
    /// public CA): moat requests it with a cert-manager `Certificate` `<broker>-server` (ECDSA
    /// P-256, the broker's names, `validity` and `renewBefore`), serves what cert-manager issues
    /// into the Secret `<broker>-server-cert`, reloads the broker when it is renewed (no restart)
    /// and adds the issuer's CA to the trust bundle ConfigMap. moat's own CA still signs client
    /// certificates and the CRL. Until cert-manager has issued, moat serves a certificate of its
    /// own CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
}

/// A cert-manager issuer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the Issuer (in the broker's namespace) or ClusterIssuer.
    #[schemars(length(min = 1, max = 253), pattern(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub name: String,
    /// `Issuer` (default) or `ClusterIssuer`.
    #[serde(default)]
    pub kind: IssuerKind,
    /// API group of the issuer. Default: cert-manager.io.
    #[serde(default = "default_issuer_group")]
    #[schemars(length(min = 1, max = 253), pattern(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub group: String,
}

/// The kind of a cert-manager issuer.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum IssuerKind {
    /// A namespaced Issuer.
    #[default]
    Issuer,
    /// A ClusterIssuer.
    ClusterIssuer,
}

fn default_issuer_group() -> String {
    "cert-manager.io".into()
}

fn default_server_validity() -> GoDuration {
    GoDuration::new("2160h")
}

fn default_server_renew_before() -> GoDuration {
    GoDuration::new("360h")
}

impl Default for ServerCertificate {
    fn default() -> Self {
        Self {
            validity: default_server_validity(),
            renew_before: default_server_renew_before(),
            dns_names: vec![],
            ip_addresses: vec![],
            issuer_ref: None,
        }
    }
}

/// Password hashing and the policy applied to passwords users bring (`secretRef`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PasswordPolicy {
    /// PBKDF2-HMAC-SHA512 iterations of the `$7$` password hashes. The broker recomputes the hash
    /// on every CONNECT on its single thread, so this caps the connect rate (about 950/s at 1000).
    /// Default: 1000.
    #[serde(default = "default_iterations")]
    #[schemars(range(min = 1000, max = 1000000))]
    pub hash_iterations: u32,
    /// Minimum length (characters) of a brought password. Default: 16.
    #[serde(default = "default_min_length")]
    #[schemars(range(min = 8, max = 256))]
    pub min_length: u32,
    /// Minimum number of character classes (lower case, upper case, digits, symbols) in a brought
    /// password. Default: 3.
    #[serde(default = "default_min_classes")]
    #[schemars(range(min = 0, max = 4))]
    pub min_character_classes: u32,
    /// Minimum estimated entropy (bits: length x log2 of the alphabet the password draws from) of
    /// a brought password. Default: 64.
    #[serde(default = "default_min_entropy")]
    #[schemars(range(min = 0, max = 512))]
    pub min_entropy_bits: u32,
    /// Length of generated passwords (alphabet of 62 letters and digits, ~5.95 bits each). Default: 32.
    #[serde(default = "default_generated_length")]
    #[schemars(range(min = 24, max = 128))]
    pub generated_length: u32,
}

fn default_iterations() -> u32 {
    1000
}
fn default_min_length() -> u32 {
    16
}
fn default_min_classes() -> u32 {
    3
}
fn default_min_entropy() -> u32 {
    64
}
fn default_generated_length() -> u32 {
    32
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            hash_iterations: default_iterations(),
            min_length: default_min_length(),
            min_character_classes: default_min_classes(),
            min_entropy_bits: default_min_entropy(),
            generated_length: default_generated_length(),
        }
    }
}

/// Protocol limits (mosquitto.conf).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.messageSizeLimit <= self.maxPacketSize",
        "message": "messageSizeLimit must not exceed maxPacketSize"
    }
]))]
pub struct Limits {
    /// Maximum concurrent connections per listener (`max_connections`). Default: 10000.
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_connections: i32,
    /// Largest MQTT packet accepted, bytes (`max_packet_size`); larger packets drop the client. Default: 1048576.
    #[serde(default = "default_max_packet")]
    #[schemars(range(min = 64, max = 268435455))]
    pub max_packet_size: u32,
    /// Largest message payload accepted, bytes (`message_size_limit`). Default: 262144.
    #[serde(default = "default_message_size")]
    #[schemars(range(min = 1, max = 268435455))]
    pub message_size_limit: u32,
    /// QoS 1/2 messages in flight per client (`max_inflight_messages`). Default: 20.
    #[serde(default = "default_inflight")]
    #[schemars(range(min = 1, max = 65535))]
    pub max_inflight_messages: u32,
    /// Messages queued per client while offline or over the in-flight limit (`max_queued_messages`). Default: 1000.
    #[serde(default = "default_queued")]
    #[schemars(range(min = 1, max = 1000000))]
    pub max_queued_messages: u32,
    /// Longest keep-alive a client may request, seconds (`max_keepalive`). Default: 3600.
    #[serde(default = "default_keepalive")]
    #[schemars(range(min = 10, max = 65535))]
    pub max_keepalive: u32,
}

fn default_max_connections() -> i32 {
    10000
}
fn default_max_packet() -> u32 {
    1_048_576
}
fn default_message_size() -> u32 {
    262_144
}
fn default_inflight() -> u32 {
    20
}
fn default_queued() -> u32 {
    1000
}
fn default_keepalive() -> u32 {
    3600
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: default_max_connections(),
            max_packet_size: default_max_packet(),
            message_size_limit: default_message_size(),
            max_inflight_messages: default_inflight(),
            max_queued_messages: default_queued(),
            max_keepalive: default_keepalive(),
        }
    }
}

/// Broker logging.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Logging {
    /// Log every client connect and disconnect (`connection_messages`). Default: true.
    #[serde(default = "default_true")]
    pub connection_messages: bool,
    /// Mosquitto log types: error, warning, notice, information, subscribe, unsubscribe, websockets.
    /// Default: error, warning, notice, information.
    #[serde(default = "default_log_types")]
    #[schemars(length(min = 1, max = 7))]
    pub types: Vec<LogType>,
    /// Refused logins (wrong or no credentials, failed TLS handshakes) within `failedLoginWindow`
    /// that make a burst suspicious: moat's agent counts them in the broker's log (which needs
    /// `connectionMessages`), and the operator records a `SuspiciousActivity` Warning Event on the
    /// MqttBroker (at most one per broker per 10 minutes). moat's own attestation attempts do not
    /// count. 0 turns the Event off. Default: 20.
    #[serde(default = "default_failed_login_threshold")]
    #[schemars(range(max = 1000000))]
    pub failed_login_threshold: u32,
    /// The window of `failedLoginThreshold`, 10s to 1h. Default: 1m.
    #[serde(default = "default_failed_login_window")]
    pub failed_login_window: GoDuration,
}

fn default_failed_login_threshold() -> u32 {
    20
}

fn default_failed_login_window() -> GoDuration {
    GoDuration::new("1m")
}

/// A Mosquitto `log_type`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogType {
    Error,
    Warning,
    Notice,
    Information,
    Subscribe,
    Unsubscribe,
    Websockets,
}

impl LogType {
    /// Mosquitto's name of the log type.
    pub fn as_str(self) -> &'static str {
        match self {
            LogType::Error => "error",
            LogType::Warning => "warning",
            LogType::Notice => "notice",
            LogType::Information => "information",
            LogType::Subscribe => "subscribe",
            LogType::Unsubscribe => "unsubscribe",
            LogType::Websockets => "websockets",
        }
    }
}

fn default_log_types() -> Vec<LogType> {
    vec![LogType::Error, LogType::Warning, LogType::Notice, LogType::Information]
}

fn default_true() -> bool {
    true
}

impl Default for Logging {
    fn default() -> Self {
        Self {
            connection_messages: true,
            types: default_log_types(),
            failed_login_threshold: default_failed_login_threshold(),
            failed_login_window: default_failed_login_window(),
        }
    }
}

/// Message persistence.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Persistence {
    /// Persist retained messages and durable sessions to a volume. Default: false.
    #[serde(default)]
    pub enabled: bool,
    /// Size of each pod's PersistentVolumeClaim. Default: 1Gi.
    #[serde(default = "default_pvc_size")]
    pub size: Quantity,
    /// StorageClass of the claims. Default: the cluster default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
    /// How often the in-memory database is saved (`autosave_interval`). Default: 30m.
    #[serde(default = "default_autosave")]
    pub autosave_interval: GoDuration,
}

fn default_pvc_size() -> Quantity {
    Quantity("1Gi".into())
}

fn default_autosave() -> GoDuration {
    GoDuration::new("30m")
}

impl Default for Persistence {
    fn default() -> Self {
        Self {
            enabled: false,
            size: default_pvc_size(),
            storage_class_name: None,
            autosave_interval: default_autosave(),
        }
    }
}

/// Version upgrade policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeSpec {
    /// `Manual`: moat only reports known CVEs; the user changes `version`.
    /// `AutoPatch`: moat moves the broker to the newest catalog version of the same minor line
    /// that fixes the known CVEs (never a downgrade, never another minor line), inside a maintenance window.
    /// Default: Manual.
    #[serde(default)]
    pub policy: UpgradePolicy,
    /// When automatic upgrades may start. Empty: any time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub maintenance_windows: Vec<MaintenanceWindow>,
    /// A pod that is not Ready this long after its update makes the upgrade roll back. Default: 5m.
    #[serde(default = "default_rollout_timeout")]
    pub rollout_timeout: GoDuration,
    /// An updated pod must stay Ready this long before the next pod is updated. Default: 30s.
    #[serde(default = "default_grace")]
    pub ready_grace_period: GoDuration,
}

fn default_rollout_timeout() -> GoDuration {
    GoDuration::new("5m")
}

fn default_grace() -> GoDuration {
    GoDuration::new("30s")
}

impl Default for UpgradeSpec {
    fn default() -> Self {
        Self {
            policy: UpgradePolicy::default(),
            maintenance_windows: vec![],
            rollout_timeout: default_rollout_timeout(),
            ready_grace_period: default_grace(),
        }
    }
}

/// Upgrade policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum UpgradePolicy {
    #[default]
    Manual,
    AutoPatch,
}

/// A recurring maintenance window.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindow {
    /// Start times as a 5-field cron expression (minute hour day-of-month month day-of-week),
    /// e.g. `0 2 * * SUN`. A schedule that never occurs is rejected.
    #[schemars(length(min = 9, max = 128), pattern(r"^\S+\s+\S+\s+\S+\s+\S+\s+\S+$"))]
    pub schedule: String,
    /// How long the window stays open after each start, e.g. `2h`.
    pub duration: GoDuration,
    /// IANA time zone of `schedule`. Default: UTC.
    #[serde(default = "default_tz")]
    #[schemars(length(min = 1, max = 64), pattern(r"^[A-Za-z0-9_+/-]+$"))]
    pub time_zone: String,
}

fn default_tz() -> String {
    "UTC".into()
}

/// Periodic compliance audit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "duration(self.interval) >= duration('10s')", "message": "audit interval must be at least 10s"}
]))]
pub struct AuditSpec {
    /// How often the broker and its managed objects are re-audited against the live cluster
    /// (drift is repaired and reported). Default: 1h.
    #[serde(default = "default_audit_interval")]
    pub interval: GoDuration,
}

fn default_audit_interval() -> GoDuration {
    GoDuration::new("1h")
}

impl Default for AuditSpec {
    fn default() -> Self {
        Self { interval: default_audit_interval() }
    }
}

/// The broker Service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type: ClusterIP, NodePort or LoadBalancer. A LoadBalancer gets
    /// `loadBalancerSourceRanges` from the brokers' MqttFirewall CIDRs; without any it is
    /// reported non-compliant. Default: ClusterIP.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Extra annotations on the Service (e.g. for a cloud load balancer).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// `loadBalancerClass` of a LoadBalancer Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub load_balancer_class: Option<String>,
}

/// Kubernetes Service type.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    /// Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Protocol-level security settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecuritySpec {
    /// Use the username as MQTT client id (`use_username_as_clientid`), so one user can never
    /// take over another user's session by reusing its client id. Default: true.
    #[serde(default = "default_true")]
    pub use_username_as_client_id: bool,
    /// Seconds between `$SYS` broker statistics updates; 0 disables `$SYS`. Reading `$SYS` still
    /// needs an explicit ACL. Default: 10.
    #[serde(default = "default_sys_interval")]
    #[schemars(range(min = 0, max = 86400))]
    pub sys_interval: u32,
    /// Let moat's operator attack each broker pod's listeners at every audit (TLS 1.0/1.1,
    /// anonymous, plaintext and oversize CONNECTs, a foreign CA's certificate, moat's revoked
    /// canary; logged in as moat's canary identities, which are in no ACL: PUBLISH, reading `#`
    /// and `$SYS/#`, client-id takeover, an oversize PUBLISH) and verify the served certificate
    /// (allowed by a dedicated NetworkPolicy from the operator's namespace only). `false` also
    /// removes the canary logins from the password file. Default: true.
    #[serde(default = "default_true")]
    pub active_probe: bool,
    /// How moat ends the live sessions of a client certificate it revokes because its owner lost
    /// the identity (user deleted, username lost to an older user): Mosquitto checks the CRL only
    /// at the TLS handshake, so such a session survives the revocation. Meanwhile moat denies the
    /// identity every topic. `RestartPods` (default): a rolling restart of the broker pods (one at
    /// a time, after 10 s without further revocations, at most 60 s after the first) ends those
    /// sessions; the username can be reused once it has completed. `BlockUntilExpiry`: no restart;
    /// the identity stays denied, and its username cannot be claimed by another MqttUser, until
    /// the revoked certificate expires.
    #[serde(default)]
    pub revoked_sessions: RevokedSessions,
    /// How long a revocation (a user deleted or losing its username, a password changed, a
    /// certificate revoked) and any other change of the broker's files may take to reach every
    /// broker pod, as attested by each pod's agent (`status.files`, `status.revocation.last`).
    /// Slower fails MOAT-AUTH-005 and MOAT-AUD-003. Default: 60s.
    #[serde(default = "default_revocation_deadline")]
    pub revocation_deadline: GoDuration,
}

fn default_revocation_deadline() -> GoDuration {
    GoDuration::new("60s")
}

/// What ends the live sessions of revoked client certificates.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RevokedSessions {
    /// A rolling restart of the broker pods.
    #[default]
    RestartPods,
    /// No restart: the identity is denied every topic and its username quarantined until the
    /// certificate expires.
    BlockUntilExpiry,
}

fn default_sys_interval() -> u32 {
    10
}

impl Default for SecuritySpec {
    fn default() -> Self {
        Self {
            use_username_as_client_id: true,
            sys_interval: default_sys_interval(),
            active_probe: true,
            revoked_sessions: RevokedSessions::default(),
            revocation_deadline: default_revocation_deadline(),
        }
    }
}

/// Scheduling and metadata of the broker pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOptions {
    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Extra pod labels (moat's own `app.kubernetes.io/*` labels cannot be overridden).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Node selector of the broker pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the broker pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// PriorityClass of the broker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// Observed state of a broker.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MqttBrokerStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (everything applied and the StatefulSet rolled out and ready) and `Compliant`
    /// (every compliance check passes), with reason and message.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Compliance of the broker, including what its users, ACLs and firewalls contribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compliance: Option<ComplianceStatus>,
    /// Running and target Mosquitto versions and the CVEs known for the running one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<VersionStatus>,
    /// The broker's CA and server certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificates: Option<CertificatesStatus>,
    /// In-cluster endpoints, one per listener.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// MqttUsers referencing this broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<MemberCounts>,
    /// MqttAcls referencing this broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acls: Option<MemberCounts>,
    /// MqttFirewalls referencing this broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewalls: Option<MemberCounts>,
    /// Progress of the current or last version upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeStatus>,
    /// Changes to managed objects made outside moat and repaired, newest first (the last 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<DriftRecord>,
    /// Whether the broker pods run the files moat wrote (attested by their agents; with
    /// `spec.security.activeProbe`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesStatus>,
    /// Revoked client certificates whose live sessions moat is ending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation: Option<RevocationStatus>,
    /// The last value of the `mqtt.moat.dev/audit` annotation that was handled (setting a new
    /// value asks for an audit now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_request: Option<String>,
}

/// One change to a managed object made outside moat.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DriftRecord {
    /// When moat found it.
    pub detected_at: Time,
    /// `<Kind> <name>` of the object.
    pub object: String,
    /// What changed: the first field path that no longer carried moat's value, or `deleted`.
    pub change: String,
    /// Whether moat restored the object.
    pub repaired: bool,
}

/// Ending the sessions of revoked client certificates.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevocationStatus {
    /// Usernames denied every topic because a revoked certificate of theirs may still be connected.
    #[serde(default)]
    pub blocked_identities: u32,
    /// When moat last restarted the broker pods to end such sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions_ended_at: Option<Time>,
    /// A restart to end such sessions is pending or rolling.
    #[serde(default)]
    pub restart_pending: bool,
    /// The last revocation moat timed: when it was decided and when every broker pod's agent
    /// had installed it (a password revocation ends the user's live sessions there and then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<RevocationRecord>,
}

/// One timed revocation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevocationRecord {
    /// What was revoked, e.g. `password of sensor-17`, `certificate 3fa1…` (several: the first
    /// and how many more).
    pub what: String,
    /// When moat decided it (and wrote the broker's files).
    pub revoked_at: Time,
    /// When every broker pod ran the files without it (unset while pending).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_effect_at: Option<Time>,
    /// Seconds from `revokedAt` to `inEffectAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u32>,
}

/// Whether the broker pods run the files moat wrote, as each pod's agent attests.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FilesStatus {
    /// Pods running the files moat wrote last, e.g. `3/3`.
    pub current: String,
    /// When moat wrote them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_at: Option<Time>,
    /// Since when every pod runs them (unset while a pod is behind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_effect_at: Option<Time>,
    /// Pods not running them, each with why (behind, refusing the files, or unreachable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
}

/// Version information.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionStatus {
    /// Version the broker pods run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Version moat is moving to (equal to current when nothing is pending).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// CVEs the security-patch catalog lists as fixed after `current` (upstream image tags;
    /// distribution builds may carry backports).
    #[serde(default, rename = "knownCVEs")]
    pub known_cves: Vec<KnownCve>,
}

/// A known vulnerability of the running version.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KnownCve {
    /// CVE identifier, e.g. `CVE-2024-8376`.
    pub id: String,
    /// critical, high, medium or low.
    pub severity: String,
    /// First version that fixes it.
    pub fixed_in: String,
    /// One-line description.
    pub summary: String,
}

/// Certificates of the broker.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificatesStatus {
    /// The CA that signs new certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CertificateInfo>,
    /// The server certificate served by every TLS listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<CertificateInfo>,
    /// CA rollover state: `Stable`, `Introducing` (new CA trusted, not yet signing) or
    /// `Migrating` (new CA signing, old CA still trusted until its leaves are replaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_rollover: Option<String>,
    /// Number of CAs in the trust bundle.
    #[serde(default)]
    pub trusted_cas: u32,
    /// Serials currently revoked by the CRL.
    #[serde(default)]
    pub revoked: u32,
    /// When the CRL expires: certificate clients keep working without the operator until then
    /// (OpenSSL refuses every client certificate once the CRL is past its nextUpdate). moat
    /// re-signs it two days before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_next_update: Option<Time>,
}

/// One in-cluster endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Listener name.
    pub listener: String,
    /// Service DNS name.
    pub host: String,
    /// Port.
    pub port: i32,
    /// `mqtts`, `mqtt`, `wss` or `ws`.
    pub scheme: String,
    /// Password or Certificate.
    pub authentication: String,
}

/// Upgrade progress.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeStatus {
    /// Pending, RollingOut, Verifying, Completed, RollingBack or Failed.
    pub phase: String,
    /// What is happening or went wrong.
    #[serde(default)]
    pub message: String,
    /// Version before the upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    /// Version being rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_version: Option<String>,
    /// When the upgrade started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the current phase began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_since: Option<Time>,
    /// When the pod being updated now was updated (its Ready timeout counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_started_at: Option<Time>,
    /// Pods already running `toVersion` (updated from the highest ordinal down).
    #[serde(default)]
    pub updated_replicas: i32,
}
