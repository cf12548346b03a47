//! The broker workload: StatefulSet (Mosquitto + `moat agent`), ServiceAccount, PodDisruptionBudget.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, LocalObjectReference, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecretProjection, SecretVolumeSource, SecurityContext, ServiceAccount,
    TCPSocketAction, Volume, VolumeMount, VolumeProjection, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::BrokerModel;
use crate::names;
use crate::render::{DATA_DIR, LOG_DIR, LOG_FILE, RUN_DIR, SECRETS_DIR};

/// UID and GID of the `mosquitto` user in the official image.
pub const MOSQUITTO_UID: i64 = 1883;
/// Pod template annotation whose change restarts the broker pods (listener options changed).
pub const RESTART_HASH_ANNOTATION: &str = "mqtt.moat.dev/restart-hash";
/// Name of the broker container.
pub const BROKER_CONTAINER: &str = "mosquitto";
/// Name of the agent sidecar.
pub const AGENT_CONTAINER: &str = "moat-agent";
/// Name of the agent's status port (the operator's attestation reads it; no Service exposes it).
pub const AGENT_STATUS_PORT_NAME: &str = "agent-status";
/// The agent's status port in broker pods.
pub const AGENT_STATUS_PORT: u16 = 9883;
/// Name of the agent's metrics port (admitted only from the namespaces the operator is told).
pub const AGENT_METRICS_PORT_NAME: &str = "agent-metrics";
/// The agent's metrics port in broker pods.
pub const AGENT_METRICS_PORT: u16 = 9884;

/// What the workload needs beyond the broker model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadParams {
    /// Image of `moat agent` (the operator image).
    pub agent_image: String,
    /// Mosquitto version in the pod template (the upgrade state machine decides it).
    pub version: String,
    /// StatefulSet rolling-update partition (pods with a lower ordinal keep the old template).
    pub partition: i32,
    /// [`crate::render::config::RenderedConfig::restart_hash`].
    pub restart_hash: String,
    /// Number of password-shard slots mounted (shard Secrets beyond the live count are optional,
    /// so the file can grow without a pod restart until the slots run out).
    pub passwd_slots: usize,
    /// Number of ACL-part slots mounted (as for the password file).
    pub acl_slots: usize,
    /// When moat last restarted the pods to end the sessions of revoked certificates (a new
    /// value rolls the pods).
    pub sessions_epoch: Option<jiff::Timestamp>,
}

/// Pod template annotation: the restart epoch that ends the sessions of revoked certificates.
pub const SESSIONS_EPOCH_ANNOTATION: &str = "mqtt.moat.dev/sessions-epoch";

/// Number of shard slots to mount for `shards` live shards (password file or ACL parts): at least
/// 4, then the next power of two, so growing from 1 to 4, or 5 to 8, shards changes nothing in the
/// pod template.
pub fn passwd_slots(shards: usize) -> usize {
    shards.max(4).next_power_of_two()
}

/// The pod's and containers' hardened security settings (restricted Pod Security Standard).
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(MOSQUITTO_UID),
        run_as_group: Some(MOSQUITTO_UID),
        privileged: Some(false),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
        ..Default::default()
    }
}

fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(MOSQUITTO_UID),
        run_as_group: Some(MOSQUITTO_UID),
        fs_group: Some(MOSQUITTO_UID),
        fs_group_change_policy: Some("OnRootMismatch".into()),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), localhost_profile: None }),
        ..Default::default()
    }
}

fn secret_volume(name: &str, secret: String, keys: &[&str]) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            default_mode: Some(0o440),
            items: Some(
                keys.iter()
                    .map(|k| k8s_openapi::api::core::v1::KeyToPath { key: (*k).into(), path: (*k).into(), mode: None })
                    .collect(),
            ),
            optional: None,
        }),
        ..Default::default()
    }
}

/// A memory-backed emptyDir of at most `size`.
fn memory_volume(name: &str, size: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(Quantity(size.into())),
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: String, read_only: bool) -> VolumeMount {
    // the apiserver drops `readOnly: false` (omitempty): render it only when true
    VolumeMount { name: name.into(), mount_path: path, read_only: read_only.then_some(true), ..Default::default() }
}

fn agent_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), Quantity("10m".into())),
            ("memory".into(), Quantity("16Mi".into())),
        ])),
        limits: Some(BTreeMap::from([("memory".into(), Quantity("64Mi".into()))])),
        ..Default::default()
    }
}

/// The broker StatefulSet: Mosquitto plus the `moat agent` sidecar (shared process namespace so
/// the agent can SIGHUP Mosquitto), an init container that installs the files before Mosquitto
/// starts, no service account token, a read-only root filesystem and every capability dropped.
pub fn statefulset(model: &BrokerModel, params: &WorkloadParams) -> StatefulSet {
    let spec = &model.spec;
    let selector = names::selector_labels(&model.name);
    let mut pod_labels = spec.pod.labels.clone();
    pod_labels.extend(model.labels("broker"));
    let mut pod_annotations = spec.pod.annotations.clone();
    pod_annotations.insert(RESTART_HASH_ANNOTATION.into(), params.restart_hash.clone());
    if let Some(epoch) = params.sessions_epoch {
        pod_annotations.insert(SESSIONS_EPOCH_ANNOTATION.into(), epoch.to_string());
    }

    let secret_mounts = vec![
        mount("config", format!("{SECRETS_DIR}/config"), true),
        mount("tls", format!("{SECRETS_DIR}/tls"), true),
        mount("acl", format!("{SECRETS_DIR}/acl"), true),
        mount("passwd", format!("{SECRETS_DIR}/passwd"), true),
    ];
    let agent_args = |once: bool| {
        let mut args = vec!["agent".to_string()];
        if once {
            args.push("--once".into());
        }
        args.extend([format!("--source={SECRETS_DIR}"), format!("--target={RUN_DIR}")]);
        if !once {
            args.extend([
                format!("--status-addr=0.0.0.0:{AGENT_STATUS_PORT}"),
                format!("--metrics-addr=0.0.0.0:{AGENT_METRICS_PORT}"),
                format!("--log-file={LOG_FILE}"),
            ]);
        }
        args
    };
    let mut agent_mounts = secret_mounts.clone();
    agent_mounts.push(mount("run", RUN_DIR.into(), false));
    // the agent reads Mosquitto's log and rotates it (rename + SIGHUP)
    agent_mounts.push(mount("log", LOG_DIR.into(), false));

    let first_port = spec.listeners.first().map(|l| l.port).unwrap_or(8883);
    let tcp_probe = |period: i32, failures: i32| Probe {
        tcp_socket: Some(TCPSocketAction { port: IntOrString::Int(first_port), host: None }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(3),
        ..Default::default()
    };

    let mut broker_mounts = vec![mount("run", RUN_DIR.into(), true), mount("log", LOG_DIR.into(), false)];
    if spec.persistence.enabled {
        broker_mounts.push(mount("data", DATA_DIR.into(), false));
    }

    let broker = Container {
        name: BROKER_CONTAINER.into(),
        image: Some(format!("{}:{}", spec.image.repository, params.version)),
        image_pull_policy: Some(spec.image.pull_policy.clone()),
        command: Some(vec!["/usr/sbin/mosquitto".into(), "-c".into(), format!("{RUN_DIR}/mosquitto.conf")]),
        ports: Some(
            spec.listeners
                .iter()
                .map(|l| ContainerPort {
                    name: Some(l.name.clone()),
                    container_port: l.port,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
                .collect(),
        ),
        readiness_probe: Some(tcp_probe(10, 3)),
        liveness_probe: Some(tcp_probe(20, 6)),
        resources: Some(spec.resources.clone()),
        security_context: Some(container_security_context()),
        volume_mounts: Some(broker_mounts),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    let agent = |name: &str, once: bool| Container {
        name: name.into(),
        image: Some(params.agent_image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(agent_args(once)),
        ports: (!once).then(|| {
            [(AGENT_STATUS_PORT_NAME, AGENT_STATUS_PORT), (AGENT_METRICS_PORT_NAME, AGENT_METRICS_PORT)]
                .into_iter()
                .map(|(name, port)| ContainerPort {
                    name: Some(name.into()),
                    container_port: port.into(),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                })
                .collect()
        }),
        resources: Some(agent_resources()),
        security_context: Some(container_security_context()),
        volume_mounts: Some(agent_mounts.clone()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };

    let parts = |slots: usize, secret: &dyn Fn(usize) -> String, key: &str| -> Vec<VolumeProjection> {
        (0..slots)
            .map(|n| VolumeProjection {
                secret: Some(SecretProjection {
                    name: secret(n),
                    optional: Some(true),
                    items: Some(
                        [key, "manifest"]
                            .iter()
                            .map(|k| k8s_openapi::api::core::v1::KeyToPath {
                                key: (*k).into(),
                                path: format!("{n}/{k}"),
                                mode: None,
                            })
                            .collect(),
                    ),
                }),
                ..Default::default()
            })
            .collect()
    };
    let passwd_sources = parts(params.passwd_slots, &|n| names::passwd_secret(&model.name, n), "passwd");
    let acl_sources = parts(params.acl_slots, &|n| names::acl_secret(&model.name, n), "acl");

    let volumes = vec![
        secret_volume("config", names::config_secret(&model.name), &["mosquitto.conf"]),
        secret_volume("tls", names::tls_secret(&model.name), &["tls.crt", "tls.key", "ca.crt", "crl.pem"]),
        Volume {
            name: "acl".into(),
            projected: Some(ProjectedVolumeSource { default_mode: Some(0o440), sources: Some(acl_sources) }),
            ..Default::default()
        },
        Volume {
            name: "passwd".into(),
            projected: Some(ProjectedVolumeSource { default_mode: Some(0o440), sources: Some(passwd_sources) }),
            ..Default::default()
        },
        memory_volume("run", "64Mi"),
        // the agent rotates at 1 MiB: the file and its rotated predecessor stay far below this
        memory_volume("log", "16Mi"),
    ];

    let volume_claim_templates = spec.persistence.enabled.then(|| {
        vec![PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                labels: Some(model.labels("data")),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: spec.persistence.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".into(), spec.persistence.size.clone())])),
                    limits: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]
    });

    StatefulSet {
        metadata: model.object_meta(model.name.clone(), "broker"),
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(model.headless_service_name()),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector { match_labels: Some(selector), match_expressions: None },
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    partition: Some(params.partition),
                    max_unavailable: None,
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(pod_annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(model.name.clone()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    share_process_namespace: Some(true),
                    security_context: Some(pod_security_context()),
                    init_containers: Some(vec![agent("moat-agent-init", true)]),
                    containers: vec![broker, agent(AGENT_CONTAINER, false)],
                    volumes: Some(volumes),
                    image_pull_secrets: (!spec.image.pull_secrets.is_empty()).then(|| {
                        spec.image.pull_secrets.iter().map(|n| LocalObjectReference { name: n.clone() }).collect()
                    }),
                    node_selector: (!spec.pod.node_selector.is_empty()).then(|| spec.pod.node_selector.clone()),
                    tolerations: (!spec.pod.tolerations.is_empty()).then(|| spec.pod.tolerations.clone()),
                    priority_class_name: spec.pod.priority_class_name.clone(),
                    termination_grace_period_seconds: Some(30),
                    ..Default::default()
                }),
            },
            volume_claim_templates,
            ..Default::default()
        }),
        status: None,
    }
}

/// The broker's own ServiceAccount: no RBAC, token never mounted.
pub fn service_account(model: &BrokerModel) -> ServiceAccount {
    ServiceAccount {
        metadata: model.object_meta(model.name.clone(), "broker"),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

/// A PodDisruptionBudget allowing one broker pod down at a time (only when replicas > 1).
pub fn pod_disruption_budget(model: &BrokerModel) -> Option<PodDisruptionBudget> {
    (model.spec.replicas > 1).then(|| PodDisruptionBudget {
        metadata: model.object_meta(model.name.clone(), "broker"),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(model.pod_selector()),
            ..Default::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::minimal_spec;

    fn params() -> WorkloadParams {
        WorkloadParams {
            agent_image: "ghcr.io/moat-dev/moat:0.1.0".into(),
            version: "2.0.22".into(),
            partition: 0,
            restart_hash: "abc".into(),
            passwd_slots: 4,
            acl_slots: 4,
            sessions_epoch: None,
        }
    }

    fn model(f: impl FnOnce(&mut crate::crd::MqttBrokerSpec)) -> BrokerModel {
        let mut spec = minimal_spec();
        f(&mut spec);
        BrokerModel::from_spec("plant-a", "iot", &spec).unwrap()
    }

    fn pod(sts: &StatefulSet) -> &PodSpec {
        sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    #[test]
    fn every_container_is_hardened() {
        let sts = statefulset(&model(|_| {}), &params());
        let p = pod(&sts);
        assert_eq!(p.automount_service_account_token, Some(false));
        assert_eq!(p.share_process_namespace, Some(true));
        let psc = p.security_context.as_ref().unwrap();
        assert_eq!(
            (psc.run_as_non_root, psc.run_as_user, psc.run_as_group, psc.fs_group),
            (Some(true), Some(1883), Some(1883), Some(1883))
        );
        assert_eq!(psc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let all: Vec<&Container> = p.containers.iter().chain(p.init_containers.as_ref().unwrap()).collect();
        assert_eq!(all.len(), 3);
        for c in all {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
            assert_eq!(sc.run_as_non_root, Some(true), "{}", c.name);
            assert_eq!(sc.run_as_user, Some(1883), "{}", c.name);
            assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_string()][..]), "{}", c.name);
            assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault", "{}", c.name);
            assert!(c.resources.is_some(), "{}", c.name);
        }
    }

    #[test]
    fn broker_container_runs_the_version_with_probes_on_the_tls_port() {
        let sts = statefulset(&model(|s| s.image.repository = "registry.example/mosquitto".into()), &params());
        let c = &pod(&sts).containers[0];
        assert_eq!(c.name, BROKER_CONTAINER);
        assert_eq!(c.image.as_deref(), Some("registry.example/mosquitto:2.0.22"));
        assert_eq!(c.command.as_ref().unwrap(), &["/usr/sbin/mosquitto", "-c", "/moat/run/mosquitto.conf"]);
        let port = |p: &Option<Probe>| p.as_ref().unwrap().tcp_socket.as_ref().unwrap().port.clone();
        assert_eq!(port(&c.readiness_probe), IntOrString::Int(8883));
        assert_eq!(port(&c.liveness_probe), IntOrString::Int(8883));
        assert_eq!(c.ports.as_ref().unwrap()[0].name.as_deref(), Some("mqtts"));
        // Mosquitto only reads the run dir, which only the agent writes.
        assert_eq!(c.volume_mounts.as_ref().unwrap()[0].read_only, Some(true));
    }

    #[test]
    fn restart_hash_partition_and_slots_come_from_params() {
        let mut p = params();
        p.partition = 2;
        p.passwd_slots = 8;
        let sts = statefulset(&model(|s| s.replicas = 3), &p);
        let s = sts.spec.as_ref().unwrap();
        assert_eq!(s.update_strategy.as_ref().unwrap().rolling_update.as_ref().unwrap().partition, Some(2));
        assert_eq!(s.template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()[RESTART_HASH_ANNOTATION], "abc");
        let passwd = pod(&sts).volumes.as_ref().unwrap().iter().find(|v| v.name == "passwd").unwrap();
        let sources = passwd.projected.as_ref().unwrap().sources.as_ref().unwrap();
        assert_eq!(sources.len(), 8);
        assert_eq!(sources[7].secret.as_ref().unwrap().name, "plant-a-passwd-7");
        assert_eq!(sources[7].secret.as_ref().unwrap().optional, Some(true));
    }

    #[test]
    fn slots_grow_in_powers_of_two() {
        assert_eq!((0..=9).map(passwd_slots).collect::<Vec<_>>(), vec![4, 4, 4, 4, 4, 8, 8, 8, 8, 16]);
    }

    #[test]
    fn the_ca_secret_is_never_mounted() {
        let sts = statefulset(&model(|_| {}), &params());
        let json = serde_json::to_string(&sts).unwrap();
        assert!(!json.contains("plant-a-ca\""), "{json}");
    }

    #[test]
    fn persistence_adds_a_claim_and_a_data_mount() {
        let sts = statefulset(&model(|s| s.persistence.enabled = true), &params());
        let s = sts.spec.as_ref().unwrap();
        assert_eq!(s.volume_claim_templates.as_ref().unwrap()[0].metadata.name.as_deref(), Some("data"));
        let mounts = pod(&sts).containers[0].volume_mounts.as_ref().unwrap();
        assert!(mounts.iter().any(|m| m.mount_path == DATA_DIR && m.read_only.is_none()));
        assert!(statefulset(&model(|_| {}), &params()).spec.unwrap().volume_claim_templates.is_none());
    }

    #[test]
    fn service_account_has_no_token_and_pdb_only_with_replicas() {
        assert_eq!(service_account(&model(|_| {})).automount_service_account_token, Some(false));
        assert!(pod_disruption_budget(&model(|_| {})).is_none());
        let pdb = pod_disruption_budget(&model(|s| s.replicas = 3)).unwrap();
        assert_eq!(pdb.spec.unwrap().max_unavailable, Some(IntOrString::Int(1)));
    }
}
