//! The MqttUser controller: the user's own credentials (generated password, client certificate),
//! the revocation finalizer, and status (Ready once the broker's applied files carry the user).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::conditions::{self, Cond};
use super::context::{Context, Stores};
use super::index::{applied, issued_from, secret_text};
use super::{Error, Result};
use crate::build::Password;
use crate::build::objects::user_secret;
use crate::build::user::{self as bu, ROTATED_AT_ANNOTATION, ROTATION_HANDLED_ANNOTATION, StoredCredentials};
use crate::compliance::{self, UserFacts};
use crate::crd::{CONDITION_COMPLIANT, CONDITION_READY, CertificateInfo, MqttUser, MqttUserStatus};
use crate::model::BrokerModel;
use crate::names;

/// Finalizer that keeps a certificate user until its certificate is in the broker's revocation list.
pub const REVOKE_FINALIZER: &str = "mqtt.moat.dev/revoke-certificate";

/// How long a new user may wait for the broker's password file before its status says so.
const FIRST_STATUS_GRACE: Duration = Duration::from_secs(10);

/// Users whose `secretRef` names `secret`.
pub fn users_referencing(s: &Stores, secret: &Secret) -> Vec<Arc<MqttUser>> {
    let ns = secret.metadata.namespace.as_deref();
    let name = secret.name_any();
    s.users.state_filter(|u| {
        u.metadata.namespace.as_deref() == ns
            && u.spec
                .authentication
                .password
                .as_ref()
                .and_then(|p| p.secret_ref.as_ref())
                .is_some_and(|r| r.name == name)
    })
}

/// Users to reconcile when a managed Secret changes: the owner of a per-user Secret, or every user
/// of the broker when its password shards or CA changed.
pub fn users_for_managed_secret(s: &Stores, secret: &Secret) -> Vec<ObjectRef<MqttUser>> {
    let Some(ns) = secret.namespace() else { return vec![] };
    if let Some(user) = secret.labels().get(names::USER_LABEL) {
        return vec![ObjectRef::new(user).within(&ns)];
    }
    let component = secret.labels().get("app.kubernetes.io/component").map(String::as_str);
    match (secret.labels().get(names::BROKER_LABEL), component) {
        (Some(broker), Some("passwd" | "ca")) => {
            s.users_of(&ns, broker).iter().map(|u| ObjectRef::from_obj(&**u)).collect()
        }
        _ => vec![],
    }
}

/// Reconciles one MqttUser.
pub async fn reconcile(user: Arc<MqttUser>, ctx: Arc<Context>) -> Result<Action> {
    super::observed_reconcile("MqttUser", &*user, &ctx, reconcile_inner(&user, &ctx)).await
}

async fn reconcile_inner(user: &MqttUser, ctx: &Context) -> Result<Action> {
    let ns = user.namespace().unwrap_or_default();
    let name = user.name_any();
    let now = ctx.clock.now();
    let previous = user.status.clone().unwrap_or_default();
    let broker_name = user.spec.broker_ref.name.clone();
    let s = &ctx.stores;
    let wants_cert = user.spec.authentication.certificate.is_some();
    let has_finalizer = user.finalizers().iter().any(|f| f == REVOKE_FINALIZER);

    if user.metadata.deletion_timestamp.is_some() {
        if has_finalizer && revocation_done(ctx, user, &ns, &broker_name) {
            remove_finalizer(ctx, user).await?;
        }
        return Ok(Action::await_change());
    }
    if wants_cert && !has_finalizer {
        add_finalizer(ctx, user).await?;
    }

    let mut status = MqttUserStatus { observed_generation: user.metadata.generation, ..previous.clone() };
    let Some(broker) = Stores::get(&s.brokers, &ns, &broker_name) else {
        status.conditions = conditions::merge(
            &previous.conditions,
            vec![
                Cond::not(
                    CONDITION_READY,
                    "BrokerNotFound",
                    format!("MqttBroker {broker_name} does not exist in namespace {ns}"),
                ),
                Cond::unknown(CONDITION_COMPLIANT, "BrokerNotFound", "no broker to evaluate against"),
            ],
            user.metadata.generation,
            now,
        );
        super::write_status(ctx, user, &previous, &status).await?;
        return Ok(Action::await_change());
    };
    let model = match BrokerModel::new(&broker) {
        Ok(m) => m,
        Err(e) => {
            status.conditions = conditions::merge(
                &previous.conditions,
                vec![
                    Cond::not(CONDITION_READY, "BrokerInvalid", format!("MqttBroker {broker_name} is invalid: {e}")),
                    Cond::unknown(CONDITION_COMPLIANT, "BrokerInvalid", ""),
                ],
                user.metadata.generation,
                now,
            );
            super::write_status(ctx, user, &previous, &status).await?;
            return Ok(Action::await_change());
        }
    };
    let username = match crate::validate::user_spec(&name, &user.spec) {
        Ok(u) => u,
        Err(e) => {
            status.conditions = conditions::merge(
                &previous.conditions,
                vec![
                    Cond::not(CONDITION_READY, "InvalidSpec", e.to_string()),
                    Cond::unknown(CONDITION_COMPLIANT, "InvalidSpec", "the spec is invalid"),
                ],
                user.metadata.generation,
                now,
            );
            super::write_status(ctx, user, &previous, &status).await?;
            return Err(Error::InvalidSpec(e));
        }
    };
    let owner = user.controller_owner_ref(&()).expect("stored objects have a uid");
    let index = applied(ctx, &ns, &broker_name);
    let mut next: Vec<jiff::Timestamp> = vec![];
    let mut problems: Vec<(&'static str, String)> = vec![];

    // --- password
    let mut password: Option<(Password, bool)> = None;
    let mut rotated_at = previous.password_rotated_at.as_ref().map(|t| t.0);
    let rotate_after =
        user.spec.authentication.password.as_ref().and_then(|p| p.rotate_after.as_ref()).and_then(|d| d.parse().ok());
    if let Some(p) = &user.spec.authentication.password {
        match &p.secret_ref {
            None => {
                let secret_name = names::credentials_secret(&name);
                let mut observed = Stores::get(&s.secrets, &ns, &secret_name);
                if observed.is_none() && previous.credentials_secret.is_some() {
                    // moat created it before: confirm it is really gone before generating a new
                    // password (never regenerate a password that still exists)
                    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
                    observed = api.get_opt(&secret_name).await?.map(Arc::new);
                }
                let stored = stored_credentials(observed.as_deref());
                let g = bu::generated_password(user, &model, &stored, rotate_after, now);
                let mut annotations = BTreeMap::from([(ROTATED_AT_ANNOTATION.to_string(), g.rotated_at.to_string())]);
                if let Some(h) = &g.rotation_handled {
                    annotations.insert(ROTATION_HANDLED_ANNOTATION.into(), h.clone());
                }
                let mut desired = user_secret(
                    &model,
                    &name,
                    secret_name,
                    "credentials",
                    bu::credentials_data(&model, &username, &g.password),
                    annotations,
                    None,
                );
                super::apply::ensure(ctx, &mut desired, observed.as_deref(), &owner, false).await?;
                // (the first password of a new user is not news: one Event per created user
                // would double the API writes of a bulk apply; regenerations and rotations are)
                if let Some(why) = g.regenerated
                    && (why != bu::Regenerate::Missing || previous.password_version.is_some())
                {
                    ctx.event(user, EventType::Normal, why.reason(), format!("password generated ({why:?})")).await;
                }
                rotated_at = Some(g.rotated_at);
                next.extend(bu::next_rotation(g.rotated_at, rotate_after));
                password = Some((g.password, true));
            }
            Some(r) => match byo_password(ctx, &ns, &r.name, &r.key).await? {
                Ok(pw) => password = Some((pw, false)),
                Err(why) => problems.push(("PasswordUnavailable", why)),
            },
        }
    }
    let fingerprint = match (&password, &index.fingerprint_key) {
        (Some((pw, _)), Some(key)) => Some(crate::render::passwd::fingerprint(key, &pw.0)),
        _ => None,
    };
    let version =
        fingerprint.as_ref().map(|f| f.chars().filter(|c| c.is_ascii_alphanumeric()).take(8).collect::<String>());
    if let Some((_, false)) = &password
        && version.is_some()
        && version != previous.password_version
    {
        rotated_at = Some(now);
    }
    let weak = match &password {
        Some((pw, false)) => {
            crate::validate::password_strength(&pw.0, &username, &model.spec.passwords).err().map(|w| w.to_string())
        }
        _ => None,
    };
    if let Some(w) = &weak {
        problems.push((
            "WeakPassword",
            format!(
                "the password in Secret {} fails the broker's policy: {w}",
                user.spec
                    .authentication
                    .password
                    .as_ref()
                    .and_then(|p| p.secret_ref.as_ref())
                    .map(|r| r.name.clone())
                    .unwrap_or_default()
            ),
        ));
    }

    // --- username conflicts: the oldest claimant keeps the username
    let me = (user.metadata.creation_timestamp.as_ref().map(|t| t.0), name.clone());
    // (one pass over the store without copying it: this runs for every user of a 10,000-user broker)
    let claims = |o: &MqttUser| {
        o.metadata.namespace.as_deref() == Some(ns.as_str())
            && o.spec.broker_ref.name == broker_name
            && o.metadata.deletion_timestamp.is_none()
            && o.spec.username.as_deref().or(o.metadata.name.as_deref()) == Some(username.as_str())
            && o.metadata.name.as_deref() != Some(name.as_str())
    };
    let age = |o: &Arc<MqttUser>| (o.metadata.creation_timestamp.as_ref().map(|t| t.0), o.name_any());
    if let Some(holder) = s
        .users
        .state_filter(claims)
        .into_iter()
        .filter(|o| age(o) < me && crate::validate::user_spec(&o.name_any(), &o.spec).is_ok())
        .min_by_key(age)
        .map(|o| o.name_any())
    {
        problems.push(("UsernameConflict", format!("username {username} is already used by MqttUser {holder}")));
    }

    // --- certificate
    let mut cert_info = None;
    if let Some(c) = &user.spec.authentication.certificate {
        match &index.ca {
            None => problems.push(("CertificatePending", "waiting for the broker's CA".into())),
            Some(ca) => {
                let validity = c.validity.parse().map_err(Error::Other)?;
                let renew = c.renew_before.parse().map_err(Error::Other)?;
                let secret_name = names::certificate_secret(&name);
                let observed = Stores::get(&s.secrets, &ns, &secret_name);
                let existing = observed.as_deref().and_then(issued_from);
                let decided = bu::client_certificate(&username, existing.as_ref(), ca, validity, renew, now)
                    .map_err(|e| Error::Pki(e.to_string()))?;
                let mut desired = user_secret(
                    &model,
                    &name,
                    secret_name.clone(),
                    "client-certificate",
                    bu::certificate_data(&model, &decided.issued, ca),
                    BTreeMap::new(),
                    None,
                );
                super::apply::ensure(ctx, &mut desired, observed.as_deref(), &owner, false).await?;
                if let Some(r) = decided.renewal {
                    ctx.metrics
                        .certificates_issued
                        .get_or_create(&crate::metrics::KindLabels { kind: "client".into() })
                        .inc();
                    let reason =
                        if r == crate::pki::RenewReason::Missing { "CertificateIssued" } else { "CertificateRenewed" };
                    ctx.event(
                        user,
                        EventType::Normal,
                        reason,
                        format!("client certificate for {username} issued ({})", r.as_str()),
                    )
                    .await;
                }
                if let Ok(info) = crate::pki::inspect(&decided.issued.cert_pem) {
                    next.extend(crate::pki::leaf_next_event(&info, renew, now));
                    ctx.metrics
                        .cert_expiry
                        .get_or_create(&crate::metrics::CertLabels {
                            namespace: ns.clone(),
                            broker: broker_name.clone(),
                            role: "client".into(),
                            name: name.clone(),
                        })
                        .set(info.not_after.as_second());
                    status.certificate = Some(CertificateInfo {
                        serial: Some(info.serial_hex.clone()),
                        not_after: Some(Time(info.not_after)),
                        renewal_time: Some(Time(crate::pki::renewal_time(&info, renew))),
                    });
                    cert_info = Some(info);
                }
                status.certificate_secret = Some(secret_name);
            }
        }
    }

    // --- ready: the broker's applied files carry this user
    let in_passwd = match (&fingerprint, password.is_some()) {
        (Some(fp), true) => index.fingerprints.get(&username) == Some(fp),
        _ => user.spec.authentication.password.is_none(),
    };
    if problems.is_empty() && user.spec.authentication.password.is_some() && !in_passwd {
        problems.push(("WaitingForBroker", "the password is not yet in the broker's applied password file".into()));
    }
    // A new user whose only wait is the broker's next password file gets its first status with the
    // outcome (the shard update wakes it), not a transient one: half the status writes of a bulk apply.
    let seconds_old = user.metadata.creation_timestamp.as_ref().map(|t| now.duration_since(t.0).as_secs());
    if previous.conditions.is_empty()
        && matches!(problems.as_slice(), [("WaitingForBroker", _)])
        && seconds_old.is_some_and(|a| (0..FIRST_STATUS_GRACE.as_secs() as i64).contains(&a))
    {
        return Ok(Action::requeue(FIRST_STATUS_GRACE));
    }
    let ready = match problems.first() {
        None => Cond::ok(CONDITION_READY, "Ready", format!("{username} can connect to {broker_name}")),
        Some((reason, msg)) => Cond::not(CONDITION_READY, *reason, msg.clone()),
    };

    // --- compliance
    let reused_with: Vec<String> = fingerprint
        .as_ref()
        .and_then(|fp| index.by_fingerprint.get(fp))
        .map(|users| users.iter().filter(|u| **u != username).cloned().collect())
        .unwrap_or_default();
    let facts = UserFacts {
        password_auth: user.spec.authentication.password.is_some(),
        generated: matches!(password, Some((_, true))),
        weak_password: weak,
        rotate_after,
        password_age: rotated_at.map(|t| Duration::from_secs(now.duration_since(t).as_secs().max(0) as u64)),
        reused_with,
        certificate_auth: wants_cert,
        certificate: cert_info,
        cert_renew_before: user
            .spec
            .authentication
            .certificate
            .as_ref()
            .and_then(|c| c.renew_before.parse().ok())
            .unwrap_or_default(),
        has_usable_listener: (user.spec.authentication.password.is_none() || model.has_password_listener())
            && (!wants_cert || model.has_certificate_listener()),
        now,
    };
    let checks = compliance::evaluate_user(&facts);
    let summary = compliance::summarize(checks, None);
    let compliant = super::compliant_condition(&summary);

    status.conditions = conditions::merge(&previous.conditions, vec![ready, compliant], user.metadata.generation, now);
    status.compliance = Some(summary);
    status.username = Some(username);
    status.authentication = Some(
        match (user.spec.authentication.password.is_some(), wants_cert) {
            (true, true) => "Password+Certificate",
            (true, false) => "Password",
            _ => "Certificate",
        }
        .into(),
    );
    status.credentials_secret = matches!(password, Some((_, true))).then(|| names::credentials_secret(&name));
    if !wants_cert {
        status.certificate_secret = None;
        status.certificate = None;
    }
    status.password_rotated_at = rotated_at.filter(|_| password.is_some()).map(Time);
    status.password_version = version;
    super::write_status(ctx, user, &previous, &status).await?;

    let wake = next.into_iter().filter(|t| *t > now).min();
    Ok(match wake {
        Some(t) => Action::requeue(crate::pki::requeue_after(t, now).max(Duration::from_secs(1))),
        None => Action::await_change(),
    })
}

fn stored_credentials(secret: Option<&Secret>) -> StoredCredentials {
    let Some(s) = secret else { return StoredCredentials::default() };
    let ann = s.annotations();
    StoredCredentials {
        password: secret_text(s, "password").map(Password),
        rotated_at: ann.get(ROTATED_AT_ANNOTATION).and_then(|t| t.parse().ok()),
        rotation_handled: ann.get(ROTATION_HANDLED_ANNOTATION).cloned(),
    }
}

/// A brought password: from the watched-Secret cache; a referenced Secret that is not labelled yet
/// is read once directly and labelled so the cache (bounded by that label) picks it up.
async fn byo_password(
    ctx: &Context,
    ns: &str,
    secret: &str,
    key: &str,
) -> Result<std::result::Result<Password, String>> {
    let cached = Stores::get(&ctx.stores.watched_secrets, ns, secret);
    let found = match cached {
        Some(s) => Some((*s).clone()),
        None => {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
            match api.get_opt(secret).await? {
                None => None,
                Some(s) => {
                    let patch = serde_json::json!({"metadata": {"labels": {names::WATCH_LABEL: "true"}}});
                    ctx.metrics.write("Secret", "label");
                    api.patch(secret, &PatchParams::default(), &Patch::Merge(&patch)).await?;
                    Some(s)
                }
            }
        }
    };
    Ok(match found {
        None => Err(format!("Secret {secret} not found")),
        Some(s) => match secret_text(&s, key) {
            Some(pw) => Ok(Password(pw)),
            None => Err(format!("Secret {secret} has no key {key}")),
        },
    })
}

/// The certificate of a deleted user is revoked (or there is nothing to revoke).
fn revocation_done(ctx: &Context, user: &MqttUser, ns: &str, broker: &str) -> bool {
    if Stores::get(&ctx.stores.brokers, ns, broker).is_none() {
        return true; // no broker left to trust the certificate
    }
    let Some(secret) = Stores::get(&ctx.stores.secrets, ns, &names::certificate_secret(&user.name_any())) else {
        return true;
    };
    let Some(cert) = secret_text(&secret, "tls.crt") else { return true };
    let Ok(info) = crate::pki::inspect(&cert) else { return true };
    applied(ctx, ns, broker).revoked.contains(&info.serial_hex)
}

async fn add_finalizer(ctx: &Context, user: &MqttUser) -> Result<()> {
    let api: Api<MqttUser> = Api::namespaced(ctx.client.clone(), &user.namespace().unwrap_or_default());
    let mut finalizers = user.finalizers().to_vec();
    finalizers.push(REVOKE_FINALIZER.into());
    let patch = serde_json::json!({"metadata": {"finalizers": finalizers, "resourceVersion": user.resource_version()}});
    ctx.metrics.write("MqttUser", "finalizer");
    api.patch(&user.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

async fn remove_finalizer(ctx: &Context, user: &MqttUser) -> Result<()> {
    let api: Api<MqttUser> = Api::namespaced(ctx.client.clone(), &user.namespace().unwrap_or_default());
    let finalizers: Vec<&String> = user.finalizers().iter().filter(|f| *f != REVOKE_FINALIZER).collect();
    let patch = serde_json::json!({"metadata": {"finalizers": finalizers, "resourceVersion": user.resource_version()}});
    ctx.metrics.write("MqttUser", "finalizer");
    match api.patch(&user.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
