//! The MqttUser controller: the user's generated password, and its status from the verdict the
//! broker controller published (who holds the username, which credentials are in effect, its
//! certificate) — it never decides conflicts or password strength itself. A reconcile is:
//!
//! observe (the user, its broker, the published verdict, its credentials Secret) → model
//! (validate the spec) → plan (the generated password) → apply (the credentials Secret) →
//! status (pure).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::apply::{self, owned_by};
use super::conditions::{self, Cond};
use super::context::{Context, Published, Stores};
use super::secrets::secret_text;
use super::{Error, Result};
use crate::compliance::{self, UserFacts};
use crate::crd::{CONDITION_COMPLIANT, CONDITION_READY, CertificateInfo, MqttUser, MqttUserStatus};
use crate::model::BrokerModel;
use crate::names;
use crate::plan::broker::{Cred, Holder, UserOutcome, Verdict};
use crate::plan::objects::user_secret;
use crate::plan::user::{
    self as pu, GeneratedCredentials, ROTATED_AT_ANNOTATION, ROTATION_HANDLED_ANNOTATION, StoredCredentials,
};
use crate::plan::{Password, PasswordDigest};

/// Finalizer of earlier moat versions (revocation now works from the certificate ledger, with or
/// without the user object): removed when found.
pub const LEGACY_FINALIZER: &str = "mqtt.moat.dev/revoke-certificate";

/// How long a new user may wait for the broker's verdict before its status says so.
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

/// The user a per-user Secret belongs to.
pub fn users_for_managed_secret(_s: &Stores, secret: &Secret) -> Vec<ObjectRef<MqttUser>> {
    match (secret.namespace(), secret.labels().get(names::USER_LABEL)) {
        (Some(ns), Some(user)) => vec![ObjectRef::new(user).within(&ns)],
        _ => vec![],
    }
}

/// Reconciles one MqttUser.
pub async fn reconcile(user: Arc<MqttUser>, ctx: Arc<Context>) -> Result<Action> {
    super::observed_reconcile("MqttUser", &*user, &ctx, run(&user, &ctx)).await
}

/// Where the user's broker stands.
enum BrokerState {
    Missing,
    Invalid(String),
    /// Not reconciled yet since this operator started (its verdicts will wake us).
    NotPublished,
    Ready(Box<(BrokerModel, Option<UserOutcome>)>),
}

/// What a reconcile reads (from the stores and the broker controller's board only).
struct Observed {
    broker: BrokerState,
    /// The user's credentials Secret, when this user owns it.
    credentials: Option<Arc<Secret>>,
    /// The digest of the brought password (when its Secret may be used and holds the key).
    byo_password: Option<PasswordDigest>,
    owner: OwnerReference,
}

fn observe(ctx: &Context, user: &MqttUser) -> Observed {
    let ns = user.namespace().unwrap_or_default();
    let name = user.name_any();
    let broker_name = &user.spec.broker_ref.name;
    let broker = match Stores::get(&ctx.stores.brokers, &ns, broker_name) {
        None => BrokerState::Missing,
        Some(b) => match (BrokerModel::new(&b), ctx.board.get(&ns, broker_name).as_deref()) {
            (Err(e), _) => BrokerState::Invalid(e.to_string()),
            (_, Some(Published::BrokerInvalid(e))) => BrokerState::Invalid(e.clone()),
            (Ok(_), None) => BrokerState::NotPublished,
            (Ok(m), Some(Published::Applied { users, .. })) => {
                BrokerState::Ready(Box::new((m, users.get(&name).cloned())))
            }
        },
    };
    let owner = user.controller_owner_ref(&()).expect("stored objects have a uid");
    let credentials =
        Stores::get(&ctx.stores.secrets, &ns, &names::credentials_secret(&name)).filter(|s| owned_by(&**s, &owner));
    let byo_password = user.spec.authentication.password.as_ref().and_then(|p| p.secret_ref.as_ref()).and_then(|r| {
        let s = crate::controller::broker::observe::byo_secret(&ctx.stores, &ns, &name, &r.name)?;
        secret_text(&s, &r.key).map(|p| Password(p).digest())
    });
    Observed { broker, credentials, byo_password, owner }
}

/// The user's spec, parsed once, and its broker.
struct UserModel {
    username: String,
    rotate_after: Option<Duration>,
    /// moat generates the password (password authentication without a secretRef).
    generated_password: bool,
    /// The broker's model and its verdict on this user (None: the broker has not published yet).
    broker: Option<(BrokerModel, Option<UserOutcome>)>,
}

/// Why a user cannot be modelled: each is a status of its own.
enum Blocked {
    InvalidSpec(crate::validate::FieldError),
    BrokerMissing,
    BrokerInvalid(String),
}

fn model(user: &MqttUser, seen: Observed) -> std::result::Result<UserModel, Blocked> {
    let username = crate::validate::user_spec(&user.name_any(), &user.spec).map_err(Blocked::InvalidSpec)?;
    let broker = match seen.broker {
        BrokerState::Missing => return Err(Blocked::BrokerMissing),
        BrokerState::Invalid(e) => return Err(Blocked::BrokerInvalid(e)),
        BrokerState::NotPublished => None,
        BrokerState::Ready(ready) => Some(*ready),
    };
    let password = user.spec.authentication.password.as_ref();
    Ok(UserModel {
        username,
        rotate_after: password.and_then(|p| p.rotate_after.as_ref()).and_then(|d| d.parse().ok()),
        generated_password: password.is_some_and(|p| p.secret_ref.is_none()),
        broker,
    })
}

/// Reports a user that cannot be modelled; an invalid spec is an error (not retried until the
/// spec changes), the others wait for the broker to change.
async fn report_blocked(
    ctx: &Context,
    user: &MqttUser,
    blocked: Blocked,
    previous: &MqttUserStatus,
    now: jiff::Timestamp,
) -> Result<Action> {
    let broker = &user.spec.broker_ref.name;
    let ns = user.namespace().unwrap_or_default();
    let (ready, compliant) = match &blocked {
        Blocked::InvalidSpec(e) => (Cond::not(CONDITION_READY, "InvalidSpec", e.to_string()), "the spec is invalid"),
        Blocked::BrokerMissing => (conditions::broker_not_found(broker, &ns), "no broker to evaluate against"),
        Blocked::BrokerInvalid(e) => {
            let message = format!("MqttBroker {broker} is invalid: {e}");
            (Cond::not(CONDITION_READY, "BrokerInvalid", message), "no broker to evaluate against")
        }
    };
    let compliant = Cond::unknown(CONDITION_COMPLIANT, ready.reason.clone(), compliant);
    let conds = vec![ready, compliant];
    write_conditions(ctx, user, previous, conds, now).await?;
    match blocked {
        Blocked::InvalidSpec(e) => Err(Error::InvalidSpec(e)),
        _ => Ok(Action::await_change()),
    }
}

/// Reconciles one MqttUser: observe → model → plan and apply (the generated password) → status.
async fn run(user: &MqttUser, ctx: &Context) -> Result<Action> {
    if user.metadata.deletion_timestamp.is_some() {
        if user.finalizers().iter().any(|f| f == LEGACY_FINALIZER) {
            remove_legacy_finalizer(ctx, user).await?;
        }
        return Ok(Action::await_change());
    }
    let now = ctx.clock.now();
    let previous = user.status.clone().unwrap_or_default();
    let seen = observe(ctx, user);
    let (owner, credentials, byo_password) = (seen.owner.clone(), seen.credentials.clone(), seen.byo_password.clone());
    let model = match model(user, seen) {
        Ok(m) => m,
        Err(blocked) => return report_blocked(ctx, user, blocked, &previous, now).await,
    };
    let Some((broker, outcome)) = &model.broker else {
        return Ok(Action::await_change()); // the broker's first verdicts will wake us
    };
    let generated = match model.generated_password {
        true => {
            Some(ensure_credentials(ctx, user, broker, &model, &owner, credentials.as_deref(), &previous, now).await?)
        }
        false => None,
    };
    let password = generated.as_ref().map_or(byo_password, |g| Some(g.password.digest()));
    let decided = decide_status(
        user,
        &model,
        broker,
        outcome.as_ref().filter(|o| o.generation == user.metadata.generation),
        password.as_ref(),
        generated.as_ref(),
        &previous,
        now,
    );
    if first_status_can_wait(user, &previous, &decided, now) {
        return Ok(Action::requeue(FIRST_STATUS_GRACE));
    }
    // the cache keeps a lean status (see `lean`): compared in that form
    if super::lean::user_status(&decided.status) != previous {
        super::write_status(ctx, user, &previous, &decided.status).await?;
    }
    certificate_metric(ctx, user, &decided.status);
    let next_rotation = generated.and_then(|g| pu::next_rotation(g.rotated_at, model.rotate_after));
    Ok(match next_rotation.filter(|t| *t > now) {
        Some(t) => super::wake_at(ctx, t),
        None => Action::await_change(),
    })
}

/// A new user whose only wait is the broker's next files gets its first status with the
/// outcome (the verdict wakes it), not a transient one: half the status writes of a bulk apply.
fn first_status_can_wait(user: &MqttUser, previous: &MqttUserStatus, decided: &Decided, now: jiff::Timestamp) -> bool {
    let seconds_old = user.metadata.creation_timestamp.as_ref().map(|t| now.duration_since(t.0).as_secs());
    previous.conditions.is_empty()
        && decided.waiting
        && seconds_old.is_some_and(|a| (0..FIRST_STATUS_GRACE.as_secs() as i64).contains(&a))
}

fn certificate_metric(ctx: &Context, user: &MqttUser, status: &MqttUserStatus) {
    let Some(t) = status.certificate.as_ref().and_then(|c| c.not_after.as_ref()) else { return };
    let labels = crate::metrics::CertLabels {
        namespace: user.namespace().unwrap_or_default(),
        broker: user.spec.broker_ref.name.clone(),
        role: "client".into(),
        name: user.name_any(),
    };
    ctx.metrics.cert_expiry.get_or_create(&labels).set(t.0.as_second());
}

/// The generated password: decided from the stored one, written when new or rotated.
#[allow(clippy::too_many_arguments)]
async fn ensure_credentials(
    ctx: &Context,
    user: &MqttUser,
    broker: &BrokerModel,
    model: &UserModel,
    owner: &OwnerReference,
    observed: Option<&Secret>,
    previous: &MqttUserStatus,
    now: jiff::Timestamp,
) -> Result<GeneratedCredentials> {
    let name = user.name_any();
    let g = pu::generated_password(user, broker, &stored_credentials(observed), model.rotate_after, now);
    let mut annotations = BTreeMap::from([(ROTATED_AT_ANNOTATION.to_string(), g.rotated_at.to_string())]);
    if let Some(h) = &g.rotation_handled {
        annotations.insert(ROTATION_HANDLED_ANNOTATION.into(), h.clone());
    }
    let mut desired = user_secret(
        broker,
        &name,
        names::credentials_secret(&name),
        "credentials",
        pu::credentials_data(broker, &model.username, &g.password),
        annotations,
    );
    // (a Secret of ours the cache does not show yet is StaleCache: never a second password)
    apply::ensure(ctx, &mut desired, observed, owner, false).await?;
    // the first password of a new user is not news (one Event per created user would double the
    // API writes of a bulk apply); regenerations and rotations are
    if let Some(why) = g.regenerated
        && (why != pu::Regenerate::Missing || previous.password_version.is_some())
    {
        ctx.event(user, EventType::Normal, why.reason(), format!("password generated ({why:?})")).await;
    }
    Ok(g)
}

/// The status decided for a user.
struct Decided {
    status: MqttUserStatus,
    /// The only thing missing is the broker's next verdict.
    waiting: bool,
}

/// The user's status from the broker's verdict (pure).
#[allow(clippy::too_many_arguments)]
fn decide_status(
    user: &MqttUser,
    model: &UserModel,
    broker: &BrokerModel,
    outcome: Option<&UserOutcome>,
    password: Option<&PasswordDigest>,
    generated: Option<&GeneratedCredentials>,
    previous: &MqttUserStatus,
    now: jiff::Timestamp,
) -> Decided {
    let (username, rotate_after) = (model.username.as_str(), model.rotate_after);
    let broker_name = &user.spec.broker_ref.name;
    let wants_password = user.spec.authentication.password.is_some();
    let wants_cert = user.spec.authentication.certificate.is_some();
    let byo = user.spec.authentication.password.as_ref().and_then(|p| p.secret_ref.as_ref());
    let listeners_ok =
        (!wants_password || broker.has_password_listener()) && (!wants_cert || broker.has_certificate_listener());
    let mut waiting = false;
    let holder: Option<&Holder> = match outcome.map(|o| &o.verdict) {
        Some(Verdict::Holder(h)) => Some(h),
        _ => None,
    };
    let ready = match outcome.map(|o| &o.verdict) {
        None => {
            waiting = true;
            Cond::not(CONDITION_READY, "WaitingForBroker", "the broker has not decided on this version of the user yet")
        }
        Some(Verdict::Invalid(e)) => Cond::not(CONDITION_READY, "InvalidSpec", e.to_string()),
        Some(Verdict::Deleting) => Cond::not(CONDITION_READY, "Deleting", "being deleted"),
        Some(Verdict::UsernameConflict { username, holder }) => Cond::not(
            CONDITION_READY,
            "UsernameConflict",
            format!(
                "username {username} is already used by MqttUser {holder}: no credential of this user is in effect"
            ),
        ),
        Some(Verdict::UsernameQuarantined { username, until }) => Cond::not(
            CONDITION_READY,
            "UsernameQuarantined",
            match until {
                Some(t) => format!(
                    "a revoked certificate of the previous owner of {username} may still be connected: the username is handed over when it expires at {t}"
                ),
                None => format!(
                    "a revoked certificate of the previous owner of {username} may still be connected: the username is handed over once the broker pods have restarted (under way)"
                ),
            },
        ),
        Some(Verdict::Holder(h)) => {
            let stale = wants_password && h.password == Cred::InEffect && h.password_digest.as_ref() != password;
            match (&h.password, &h.certificate) {
                _ if stale => {
                    waiting = true;
                    Cond::not(
                        CONDITION_READY,
                        "WaitingForBroker",
                        "the password is not yet in the broker's password file",
                    )
                }
                (Cred::Weak, _) => Cond::not(
                    CONDITION_READY,
                    "WeakPassword",
                    format!(
                        "the password in Secret {} does not meet the broker's password policy (spec.passwords of MqttBroker {broker_name}); it is not in effect",
                        byo.map(|r| r.name.as_str()).unwrap_or("?")
                    ),
                ),
                // the password this controller generated, which the broker has not read yet
                (Cred::Unavailable(_), _) if generated.is_some() => {
                    waiting = true;
                    Cond::not(
                        CONDITION_READY,
                        "WaitingForBroker",
                        "the generated password is not yet in the broker's password file",
                    )
                }
                (Cred::Unavailable(why), _) => Cond::not(CONDITION_READY, "PasswordUnavailable", why.clone()),
                (Cred::Pending(why), _) | (_, Cred::Pending(why)) => {
                    Cond::not(CONDITION_READY, "CertificatePending", why.clone())
                }
                (p, c) if (!wants_password || *p == Cred::InEffect) && (!wants_cert || *c == Cred::InEffect) => {
                    Cond::ok(
                        CONDITION_READY,
                        "Ready",
                        format!("{username} is in effect on {broker_name} (its pods load it within seconds)"),
                    )
                }
                _ => {
                    waiting = true;
                    Cond::not(CONDITION_READY, "WaitingForBroker", "not yet in the broker's files")
                }
            }
        }
    };

    let rotated_at = match (generated, holder) {
        (Some(g), _) => Some(g.rotated_at),
        // a brought password: first seen when its version changed
        (None, Some(h)) if h.password_version.is_some() && h.password_version != previous.password_version => Some(now),
        (None, Some(h)) if h.password_version.is_some() => previous.password_rotated_at.as_ref().map(|t| t.0),
        _ => None,
    };
    let certificate = holder.and_then(|h| h.cert.as_ref()).map(|c| CertificateInfo {
        serial: Some(c.serial_hex.clone()),
        not_after: Some(Time(c.not_after)),
        renewal_time: Some(Time(c.renewal_time)),
    });
    let facts = UserFacts {
        password_auth: wants_password,
        generated: generated.is_some(),
        weak_password: holder.is_some_and(|h| h.password == Cred::Weak),
        rotate_after,
        password_age: rotated_at.map(|t| Duration::from_secs(now.duration_since(t).as_secs().max(0) as u64)),
        reused: holder.is_some_and(|h| h.reused),
        certificate_auth: wants_cert,
        certificate: holder.and_then(|h| h.cert.as_ref()).map(|c| (c.not_after, c.renewal_time)),
        has_usable_listener: listeners_ok,
        now,
    };
    let summary = compliance::summarize(compliance::evaluate_user(&facts), None);
    let compliant = super::compliant_condition(&summary);
    let status = MqttUserStatus {
        observed_generation: user.metadata.generation,
        conditions: conditions::merge(&previous.conditions, vec![ready, compliant], user.metadata.generation, now),
        compliance: Some(summary),
        username: Some(username.to_string()),
        authentication: Some(
            match (wants_password, wants_cert) {
                (true, true) => "Password+Certificate",
                (true, false) => "Password",
                _ => "Certificate",
            }
            .into(),
        ),
        credentials_secret: generated.map(|_| names::credentials_secret(&user.name_any())),
        certificate_secret: certificate.as_ref().map(|_| names::certificate_secret(&user.name_any())),
        password_rotated_at: rotated_at.map(Time),
        password_version: holder.and_then(|h| h.password_version.clone()),
        certificate,
    };
    Decided { status, waiting }
}

async fn write_conditions(
    ctx: &Context,
    user: &MqttUser,
    previous: &MqttUserStatus,
    conds: Vec<Cond>,
    now: jiff::Timestamp,
) -> Result<()> {
    let status = MqttUserStatus {
        observed_generation: user.metadata.generation,
        conditions: conditions::merge(&previous.conditions, conds, user.metadata.generation, now),
        // nothing to evaluate against (and the cache keeps no checks to copy)
        compliance: None,
        ..previous.clone()
    };
    super::write_status(ctx, user, previous, &status).await
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

async fn remove_legacy_finalizer(ctx: &Context, user: &MqttUser) -> Result<()> {
    let api: Api<MqttUser> = Api::namespaced(ctx.client.clone(), &user.namespace().unwrap_or_default());
    let finalizers: Vec<&String> = user.finalizers().iter().filter(|f| *f != LEGACY_FINALIZER).collect();
    let patch = serde_json::json!({"metadata": {"finalizers": finalizers, "resourceVersion": user.resource_version()}});
    ctx.metrics.write("MqttUser", "finalizer");
    match api.patch(&user.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
