//! Observe: everything a broker reconcile reads, taken from the reflector stores once (no API
//! reads), and the stored material parsed into the plan's inputs.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, PodSpec, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;

use crate::controller::apply::{controller_uid, owned_by};
use crate::controller::context::{Stores, labelled_of};
use crate::controller::secrets::{issued_from, secret_strings, secret_text};
use crate::crd::{MqttAcl, MqttBroker, MqttFirewall, MqttUser};
use crate::names;
use crate::plan::Password;
use crate::plan::broker::{self as bp, Existing, PasswordLookup, Sessions, UserView};
use crate::plan::ledger::Ledger;
use crate::render::workload;
use crate::upgrade::PodView;

/// A snapshot of everything of one broker in the caches.
pub struct Observed {
    /// The broker's annotations (administrator requests).
    pub broker_annotations: std::collections::BTreeMap<String, String>,
    /// The broker's MqttUsers.
    pub users: Vec<Arc<MqttUser>>,
    /// Its MqttAcls.
    pub acls: Vec<Arc<MqttAcl>>,
    /// Its MqttFirewalls.
    pub firewalls: Vec<Arc<MqttFirewall>>,
    /// Secrets labelled for the broker, by name (its own and its users').
    pub labelled: BTreeMap<String, Arc<Secret>>,
    /// The broker's own Secrets (controlled by it), by name.
    pub secrets: BTreeMap<String, Arc<Secret>>,
    /// The StatefulSet.
    pub statefulset: Option<Arc<StatefulSet>>,
    /// The broker's pods.
    pub pods: Vec<Arc<Pod>>,
    /// The client and headless Services.
    pub service: Option<Arc<Service>>,
    /// The headless Service.
    pub headless: Option<Arc<Service>>,
    /// The ServiceAccount.
    pub service_account: Option<Arc<ServiceAccount>>,
    /// The PodDisruptionBudget.
    pub pdb: Option<Arc<PodDisruptionBudget>>,
    /// The trust-bundle ConfigMap.
    pub ca_bundle: Option<Arc<ConfigMap>>,
    /// Every NetworkPolicy of the namespace (moat's and anyone else's).
    pub network_policies: Vec<Arc<NetworkPolicy>>,
}

impl Observed {
    /// The broker's MqttUsers by object name.
    pub fn users_by_name(&self) -> std::collections::HashMap<&str, &MqttUser> {
        self.users.iter().filter_map(|u| Some((u.metadata.name.as_deref()?, &**u))).collect()
    }

    /// Reads the caches for `broker`.
    pub fn read(s: &Stores, broker: &MqttBroker, owner: &OwnerReference) -> Observed {
        let ns = broker.namespace().unwrap_or_default();
        let name = broker.name_any();
        let labelled: BTreeMap<String, Arc<Secret>> =
            s.secrets_of(&ns, &name).into_iter().map(|x| (x.name_any(), x)).collect();
        let secrets =
            labelled.iter().filter(|(_, x)| owned_by(&***x, owner)).map(|(k, v)| (k.clone(), v.clone())).collect();
        Observed {
            broker_annotations: broker.annotations().clone(),
            users: s.users_of(&ns, &name),
            acls: s.acls_of(&ns, &name),
            firewalls: s.firewalls_of(&ns, &name),
            labelled,
            secrets,
            statefulset: Stores::get(&s.statefulsets, &ns, &name),
            pods: labelled_of(&s.pods, &ns, &name),
            service: Stores::get(&s.services, &ns, &name),
            headless: Stores::get(&s.services, &ns, &format!("{name}-headless")),
            service_account: Stores::get(&s.service_accounts, &ns, &name),
            pdb: Stores::get(&s.pdbs, &ns, &name),
            ca_bundle: Stores::get(&s.config_maps, &ns, &names::ca_bundle_configmap(&name)),
            network_policies: s.network_policies.state_filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str())),
        }
    }

    /// A managed NetworkPolicy of the namespace by name.
    pub fn network_policy(&self, name: &str) -> Option<Arc<NetworkPolicy>> {
        self.network_policies.iter().find(|p| p.name_any() == name).cloned()
    }

    /// The material stored for the broker, merged with the ledger this operator last wrote.
    pub fn existing(&self, broker: &str, last_written: Option<&Ledger>) -> Result<Existing, ObserveError> {
        let mut ex = Existing::default();
        if let Some(s) = self.secrets.get(&names::ca_secret(broker)) {
            let data = secret_strings(s);
            ex.ca = Some(
                crate::pki::CaSet::from_secret_data(&data)
                    .map_err(|e| ObserveError::Corrupt { secret: names::ca_secret(broker), why: e.to_string() })?,
            );
            let extras = bp::ca_secret_extras(&data)
                .map_err(|e| ObserveError::Corrupt { secret: names::ca_secret(broker), why: e.to_string() })?;
            ex.fingerprint_key = extras.fingerprint_key;
            ex.legacy_revoked = extras.legacy_revoked;
            ex.canary = extras.canary;
            ex.canary_logins = extras.canary_logins;
            ex.ca_rotation_handled = data.get(bp::KEY_ROTATION_HANDLED).cloned();
        }
        // cert-manager's Secret is labelled as the broker's (the Certificate's secretTemplate) but
        // not owned by it: taken only when cert-manager says it holds the broker's Certificate
        let from_cert_manager = |s: &&Arc<Secret>| {
            s.annotations().get("cert-manager.io/certificate-name") == Some(&names::server_certificate(broker))
        };
        if let Some(s) = self.labelled.get(&names::server_certificate_secret(broker)).filter(from_cert_manager) {
            ex.external_server = issued_from(s)
                .map(|issued| bp::ExternalServer { issued, ca_pem: secret_text(s, "ca.crt").unwrap_or_default() });
        }
        if let Some(s) = self.secrets.get(&names::tls_secret(broker)) {
            ex.server = issued_from(s);
            ex.crl_pem = secret_text(s, "crl.pem");
            ex.server_renewal_handled = secret_text(s, bp::KEY_RENEWAL_HANDLED);
        }
        let mut shards: Vec<(usize, String, String)> = vec![];
        let mut ledger_texts: Vec<String> = vec![];
        for (n, s) in &self.secrets {
            if let Some(i) = names::passwd_shard_index(broker, n) {
                shards.push((
                    i,
                    secret_text(s, "passwd").unwrap_or_default(),
                    secret_text(s, "fingerprints").unwrap_or_default(),
                ));
            } else if names::part_index(broker, "certs", n).is_some() {
                ledger_texts.push(secret_text(s, "records").unwrap_or_default());
            }
        }
        shards.sort();
        let pairs: Vec<(String, String)> = shards.into_iter().map(|(_, p, f)| (p, f)).collect();
        // A corrupt shard only costs re-hashing: start from what can be read.
        ex.passwd = crate::render::passwd::previous_from_shards(&pairs).unwrap_or_default();
        let texts: Vec<&str> = ledger_texts.iter().map(String::as_str).collect();
        let (ledger, unreadable) = Ledger::decode(&texts);
        if unreadable > 0 {
            tracing::warn!(broker, unreadable, "certificate ledger lines that cannot be read were skipped");
        }
        ex.ledger = match last_written {
            Some(l) => ledger.merge(l),
            None => ledger,
        };
        ex.sessions = self.sessions();
        Ok(ex)
    }

    /// The restart epoch in the StatefulSet's template, and whether every pod runs it.
    fn sessions(&self) -> Sessions {
        let Some(sts) = &self.statefulset else { return Sessions::default() };
        let epoch = sts
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(workload::SESSIONS_EPOCH_ANNOTATION))
            .and_then(|t| t.parse().ok());
        let st = sts.status.clone().unwrap_or_default();
        let want = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let rolled_out = st.observed_generation >= sts.metadata.generation
            && st.update_revision.is_some()
            && st.current_revision == st.update_revision
            && st.updated_replicas.unwrap_or(0) >= want
            && st.ready_replicas.unwrap_or(0) >= want;
        Sessions { epoch, rolled_out }
    }

    /// How the broker sees each user; `conflicts` are Secret names found taken by objects moat
    /// did not create (not in the caches), with their holder.
    pub fn user_views(
        &self,
        s: &Stores,
        conflicts: &std::collections::HashMap<(String, String), String>,
    ) -> Vec<UserView<'_>> {
        self.users.iter().map(|u| user_view(s, &self.labelled, conflicts, u)).collect()
    }

    /// The broker's pods as the upgrade state machine sees them.
    pub fn pod_views(&self) -> Vec<PodView> {
        self.pods
            .iter()
            .filter_map(|p| {
                let ordinal = p.name_any().rsplit('-').next()?.parse().ok()?;
                let version = image_tag(broker_image(p.spec.as_ref()?)?);
                let ready_cond = p.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready").cloned();
                let ready =
                    p.metadata.deletion_timestamp.is_none() && ready_cond.as_ref().is_some_and(|c| c.status == "True");
                Some(PodView {
                    ordinal,
                    version,
                    ready,
                    ready_since: ready_cond.and_then(|c| c.last_transition_time).map(|t| t.0),
                })
            })
            .collect()
    }

    /// The Mosquitto version of the StatefulSet's template.
    pub fn template_version(&self) -> Option<String> {
        image_tag(broker_image(self.statefulset.as_ref()?.spec.as_ref()?.template.spec.as_ref()?)?)
    }
}

/// Stored material that cannot be read (moat never overwrites it blindly: a CA Secret that does
/// not parse would otherwise be replaced by a new CA, distrusting every client).
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// A Secret of the broker is corrupt.
    #[error("Secret {secret} cannot be read: {why}")]
    Corrupt {
        /// The Secret.
        secret: String,
        /// Why.
        why: String,
    },
}

/// How the broker sees one user: its password (from its credentials Secret, or the referenced
/// Secret) and its client certificate (from its certificate Secret) — only Secrets it controls.
pub fn user_view<'a>(
    s: &Stores,
    labelled: &BTreeMap<String, Arc<Secret>>,
    conflicts: &std::collections::HashMap<(String, String), String>,
    u: &'a MqttUser,
) -> UserView<'a> {
    let ns = u.namespace().unwrap_or_default();
    let object = u.name_any();
    // a colliding name (another user's or a broker's Secret) never hands this user someone
    // else's password or certificate
    let own = |name: String| {
        labelled
            .get(&name)
            .filter(|x| controller_uid(&***x).is_some() && controller_uid(&***x) == u.metadata.uid.as_deref())
    };
    let password = match &u.spec.authentication.password {
        None => PasswordLookup::NotUsed,
        Some(p) => match &p.secret_ref {
            None => match own(names::credentials_secret(&object)).and_then(|x| secret_text(x, "password")) {
                Some(pw) => PasswordLookup::Found { password: Password(pw), generated: true },
                None => PasswordLookup::Missing("credentials not generated yet".into()),
            },
            Some(r) => match byo_secret(s, &ns, &object, &r.name) {
                None => PasswordLookup::Missing(byo_unavailable(&object, &r.name)),
                Some(sec) => match secret_text(&sec, &r.key) {
                    Some(pw) => PasswordLookup::Found { password: Password(pw), generated: false },
                    None => PasswordLookup::Missing(format!("Secret {} has no key {}", r.name, r.key)),
                },
            },
        },
    };
    let cert_name = names::certificate_secret(&object);
    let certificate = own(cert_name.clone()).and_then(|x| issued_from(x));
    let certificate_blocked = match labelled.get(&cert_name) {
        Some(x) if own(cert_name.clone()).is_none() => Some(format!(
            "the certificate Secret name {cert_name} is taken by {}",
            x.owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
                .map_or("an object moat did not create".to_string(), |o| format!("{} {}", o.kind, o.name))
        )),
        _ => conflicts
            .get(&(ns.clone(), cert_name.clone()))
            .map(|holder| format!("the certificate Secret name {cert_name} is taken by {holder}")),
    };
    UserView { user: u, password, certificate, certificate_blocked }
}

/// The Secret a `secretRef` of MqttUser `user` names, only if that Secret opted in for this user:
/// labelled [`names::WATCH_LABEL`]`=true` (so it is in the watched cache; moat never reads or
/// labels a Secret on its own) and annotated [`names::PASSWORD_FOR_ANNOTATION`] with the user's
/// name. Any other Secret of the namespace is invisible, whether it exists or not: a `secretRef`
/// cannot be used to learn anything about Secrets its author may not read.
pub fn byo_secret(s: &Stores, ns: &str, user: &str, secret: &str) -> Option<Arc<Secret>> {
    Stores::get(&s.watched_secrets, ns, secret).filter(|x| names::password_for(x.annotations(), user))
}

/// The one message for a `secretRef` Secret that cannot be used (missing or not opted in alike).
pub fn byo_unavailable(user: &str, secret: &str) -> String {
    format!(
        "Secret {secret} is not available to MqttUser {user}: it must exist, carry the label {}=true and the \
         annotation {}: {user}",
        names::WATCH_LABEL,
        names::PASSWORD_FOR_ANNOTATION
    )
}

/// The image of the broker container of a pod spec.
pub fn broker_image(pod: &PodSpec) -> Option<&str> {
    pod.containers.iter().find(|c| c.name == workload::BROKER_CONTAINER)?.image.as_deref()
}

/// The tag of an image reference (the Mosquitto version for the broker image).
pub fn image_tag(image: &str) -> Option<String> {
    image.rsplit_once(':').map(|(_, v)| v.to_string())
}
