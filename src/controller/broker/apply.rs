//! Apply: writes what differs, in an order that fails safe.
//!
//! 1. the certificate ledger: a certificate is recorded before it can reach a user Secret;
//! 2. CA, TLS (server certificate, trust bundle, CRL) and the password shards: revocations and
//!    removed or rotated passwords take effect even if a later write fails;
//! 3. ACL parts and config, then the users' certificate Secrets (only if the ledger was written);
//! 4. trust bundle, ServiceAccount, Services, NetworkPolicies, StatefulSet, PDB;
//! 5. obsolete objects (surplus shards, parts, certificate Secrets of users that lost them);
//!
//! and waits until the cache shows every Secret it wrote, so the next reconcile reads its own
//! writes (a stale read could otherwise re-issue a certificate that was just issued).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

use super::Decided;
use super::observe::Observed;
use crate::controller::apply::{self as ap, Applier, Drift, owned_by};
use crate::controller::context::{Context, Stores};
use crate::controller::secrets::secret_text;
use crate::controller::{Error, Result};
use crate::crd::MqttBroker;
use crate::names;
use crate::plan::objects::CLIENT_CERTIFICATE_COMPONENT;

/// What the apply step did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Objects written or deleted.
    pub changed: usize,
    /// Changes made outside moat that were repaired.
    pub drift: Vec<Drift>,
}

/// cert-manager's `Certificate` API.
fn certificate_api(ctx: &Context, ns: &str) -> kube::Api<kube::api::DynamicObject> {
    let gvk = kube::api::GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate");
    kube::Api::namespaced_with(ctx.client.clone(), ns, &kube::api::ApiResource::from_gvk(&gvk))
}

/// Applies the server certificate's cert-manager `Certificate` unless it already has this spec
/// and owner (no write when nothing changed); returns the writes made.
async fn apply_server_certificate(
    ctx: &Context,
    owner: &OwnerReference,
    ns: &str,
    desired: &serde_json::Value,
) -> Result<usize> {
    let api = certificate_api(ctx, ns);
    let name = desired["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let current = api.get_opt(&name).await?;
    let current = current.map(|c| serde_json::to_value(c).unwrap_or_default());
    let ours = current.as_ref().is_some_and(|c| {
        c["spec"] == desired["spec"]
            && c["metadata"]["ownerReferences"].as_array().is_some_and(|o| o.iter().any(|r| r["uid"] == owner.uid))
    });
    if ours {
        return Ok(0);
    }
    let mut object = desired.clone();
    object["metadata"]["ownerReferences"] = serde_json::json!([owner]);
    ctx.metrics.write("Certificate", "apply");
    api.patch(
        &name,
        &kube::api::PatchParams::apply(crate::names::FIELD_MANAGER).force(),
        &kube::api::Patch::Apply(&object),
    )
    .await?;
    Ok(1)
}

/// The sharded files of a broker (`<broker>-<what>-<n>`): password shards, ACL parts, ledger parts.
const SHARDED: [&str; 3] = ["passwd", "acl", "certs"];

/// For each sharded file, the largest part count the observed parts' manifests
/// (`"<n> <checksum>"`) announce: how many parts the file had when last written.
fn announced_parts<'a>(
    broker: &str,
    manifests: impl Iterator<Item = (&'a str, String)>,
) -> BTreeMap<&'static str, usize> {
    let mut announced = BTreeMap::new();
    for (secret, manifest) in manifests {
        let Some(what) = SHARDED.into_iter().find(|what| names::part_index(broker, what, secret).is_some()) else {
            continue;
        };
        if let Some(n) = manifest.split(' ').next().and_then(|n| n.parse::<usize>().ok()) {
            let max = announced.entry(what).or_insert(n);
            *max = (*max).max(n);
        }
    }
    announced
}

/// Whether `secret` is a part of a sharded file that the file grows into now: not part 0 (which
/// always exists once the broker is established), and past the part count its file's observed
/// manifests announce. A missing part an observed manifest announces was deleted by someone: drift.
fn grows_into(broker: &str, secret: &str, announced: &BTreeMap<&'static str, usize>) -> bool {
    let part = SHARDED.into_iter().find_map(|what| names::part_index(broker, what, secret).map(|i| (what, i)));
    let Some((what, i)) = part else { return false };
    i > 0 && announced.get(what).is_none_or(|n| i >= *n)
}

/// Writes the decided objects of `broker`.
pub async fn apply(
    ctx: &Context,
    broker: &MqttBroker,
    model: &crate::model::BrokerModel,
    owner: &OwnerReference,
    seen: &Observed,
    decided: &Decided,
) -> Result<Applied> {
    let ns = broker.namespace().unwrap_or_default();
    let name = broker.name_any();
    let established = broker.status.as_ref().is_some_and(|s| s.certificates.is_some());
    let mut ap = Applier::new(ctx, owner, established);
    let objects = &decided.objects;
    let mut written: Vec<String> = vec![];

    // 1-3: the broker's Secrets in order (ledger, CA, TLS, passwd, ACL, config); parts a sharded
    // file grows into first (alone they change nothing: a reader waits for every part), so that
    // a write failing halfway never leaves a manifest announcing a part that is not there
    let manifests = seen.secrets.iter().filter_map(|(n, s)| Some((n.as_str(), secret_text(s, "manifest")?)));
    let announced = announced_parts(&name, manifests);
    let (grown, rest): (Vec<&Secret>, Vec<&Secret>) =
        objects.secrets.iter().partition(|s| grows_into(&name, &s.name_any(), &announced));
    for (secret, new) in grown.into_iter().map(|s| (s, true)).chain(rest.into_iter().map(|s| (s, false))) {
        let mut s = secret.clone();
        let observed = seen.secrets.get(&s.name_any()).cloned();
        let before = ap.changed;
        match new {
            true => ap.apply_new(&mut s, observed.as_deref()).await?,
            false => ap.apply(&mut s, observed.as_deref()).await?,
        }
        if ap.changed > before {
            written.push(s.name_any());
        }
    }
    // users' certificate Secrets, each owned by its user, several at a time
    let users = seen.users_by_name();
    let jobs = crate::plan::objects::user_secrets(model, &decided.plan).filter_map(|(user, desired)| {
        let owner = users.get(user.as_str())?.controller_owner_ref(&())?;
        let observed = seen.labelled.get(&desired.name_any()).cloned();
        Some((desired, observed, owner))
    });
    let writes: Vec<(String, Result<ap::Ensured>)> = futures::stream::iter(jobs)
        .map(|(mut desired, observed, owner)| async move {
            let r = ap::ensure(ctx, &mut desired, observed.as_deref(), &owner, false).await;
            (desired.name_any(), r)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for (secret, r) in writes {
        match r {
            Ok(e) if e.applied != ap::Applied::Unchanged => {
                ap.changed += 1;
                written.push(secret);
            }
            Ok(_) => {}
            // one user's colliding Secret name blocks only that user (the user reports it)
            Err(Error::NameConflict { .. }) => {
                tracing::warn!(%secret, "certificate Secret name taken by another object")
            }
            Err(e) => return Err(e),
        }
    }

    // 4: the rest
    let mut ca_bundle = objects.ca_bundle.clone();
    ap.apply(&mut ca_bundle, seen.ca_bundle.as_deref()).await?;
    let mut sa = objects.service_account.clone();
    ap.apply(&mut sa, seen.service_account.as_deref()).await?;
    let mut svc = objects.service.clone();
    ap.apply(&mut svc, seen.service.as_deref()).await?;
    let mut headless = objects.headless.clone();
    ap.apply(&mut headless, seen.headless.as_deref()).await?;
    let mut deny = objects.default_deny.clone();
    ap.apply(&mut deny, seen.network_policy(&names::default_deny_policy(&name)).as_deref()).await?;
    let probe_name = crate::render::network::probe_policy_name(&name);
    ap.apply_or_delete(objects.probe_policy.clone(), seen.network_policy(&probe_name), &ns, &probe_name).await?;
    let metrics_name = crate::render::network::metrics_policy_name(&name);
    ap.apply_or_delete(objects.metrics_policy.clone(), seen.network_policy(&metrics_name), &ns, &metrics_name).await?;
    let mut sts = objects.statefulset.clone();
    ap.apply(&mut sts, seen.statefulset.as_deref()).await?;
    ap.apply_or_delete(objects.pdb.clone(), seen.pdb.clone(), &ns, &name).await?;
    if let Some(cert) = &objects.server_certificate {
        ap.changed += apply_server_certificate(ctx, owner, &ns, cert).await?;
    }

    // 5: what is no longer wanted
    let wanted: Vec<String> = objects.secrets.iter().map(|s| s.name_any()).collect();
    for (sname, s) in &seen.secrets {
        let surplus =
            SHARDED.iter().any(|what| names::part_index(&name, what, sname).is_some()) && !wanted.contains(sname);
        if surplus || *sname == names::legacy_acl_secret(&name) {
            ap::delete_as::<Secret>(ctx, &ns, sname).await?;
            ap.changed += 1;
            written.push(sname.clone());
        }
        let _ = s;
    }
    for (sname, s) in &seen.labelled {
        let is_cert =
            s.labels().get("app.kubernetes.io/component").map(String::as_str) == Some(CLIENT_CERTIFICATE_COMPONENT);
        let user = s.labels().get(names::USER_LABEL);
        let kept = user.is_some_and(|u| decided.plan.client_certs.contains_key(u));
        let users_own = user
            .and_then(|u| users.get(u.as_str()))
            .and_then(|u| u.controller_owner_ref(&()))
            .is_some_and(|o| owned_by(&**s, &o));
        if is_cert && !kept && users_own {
            // its certificate was revoked by the plan: the Secret goes too
            ap::delete_as::<Secret>(ctx, &ns, sname).await?;
            ap.changed += 1;
            written.push(sname.clone());
        }
    }
    for ordinal in &decided.step.delete_pods {
        let pod = format!("{name}-{ordinal}");
        tracing::info!(broker = %name, %pod, "deleting a pod stuck on the wrong version");
        ap::delete_as::<Pod>(ctx, &ns, &pod).await?;
    }

    let (drift, mut changed) = (ap.drift, ap.changed);
    read_own_writes(&ctx.stores, &ns, seen, &written).await;
    if written.iter().any(|n| is_mounted(&name, n)) {
        changed += nudge_pods(ctx, &ns, &name, seen).await?;
    }
    Ok(Applied { changed, drift })
}

/// Whether `secret` is mounted into the broker's pods (the agent installs it).
fn is_mounted(broker: &str, secret: &str) -> bool {
    secret == names::config_secret(broker)
        || secret == names::tls_secret(broker)
        || names::part_index(broker, "acl", secret).is_some()
        || names::passwd_shard_index(broker, secret).is_some()
}

/// Annotation on broker pods: a digest of the resourceVersions of the Secrets they should have
/// mounted (a new value makes the kubelet sync the pod).
pub const MOUNTED_REVISION_ANNOTATION: &str = "mqtt.moat.dev/mounted-secrets";

/// Tells the kubelet to refresh the broker pods' Secret volumes now. A kubelet re-reads mounted
/// Secrets only on its periodic pod sync (60-90 s: measured 87 s on the real node), but syncs a pod
/// at once when the pod changes; an annotation naming the Secrets' new revisions does that, so a
/// removed user, a rotated password or a revocation reaches the agent within seconds (measured
/// 0.2 s), without touching the pod template (no restart). Returns the pods written.
async fn nudge_pods(ctx: &Context, ns: &str, broker: &str, seen: &Observed) -> Result<usize> {
    let mut revisions: Vec<String> = ctx
        .stores
        .secrets_of(ns, broker)
        .iter()
        .filter(|s| is_mounted(broker, &s.name_any()))
        .map(|s| format!("{}@{}", s.name_any(), s.resource_version().unwrap_or_default()))
        .collect();
    revisions.sort();
    let revision = crate::digest_of(&revisions);
    let api: kube::Api<Pod> = kube::Api::namespaced(ctx.client.clone(), ns);
    let mut written = 0;
    for pod in seen.pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
        if pod.annotations().get(MOUNTED_REVISION_ANNOTATION) == Some(&revision) {
            continue;
        }
        let patch = serde_json::json!({"metadata": {"annotations": {MOUNTED_REVISION_ANNOTATION: revision}}});
        ctx.metrics.write("Pod", "annotate");
        match api.patch(&pod.name_any(), &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await {
            Ok(_) => written += 1,
            // a pod that went away needs no refresh
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(written)
}

/// Waits (at most 10 s) until the Secret cache no longer shows what it showed before this
/// reconcile for every Secret written: then the next reconcile starts from these writes.
async fn read_own_writes(s: &Stores, ns: &str, seen: &Observed, written: &[String]) {
    if written.is_empty() {
        return;
    }
    let before: BTreeMap<&String, Option<String>> =
        written.iter().map(|n| (n, seen.labelled.get(n).and_then(|x| x.resource_version()))).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let caught_up = before.iter().all(|(n, old)| {
            let now: Option<Arc<Secret>> = Stores::get(&s.secrets, ns, n);
            now.and_then(|x| x.resource_version()) != *old
        });
        if caught_up || tokio::time::Instant::now() >= deadline {
            if !caught_up {
                tracing::warn!(namespace = ns, "the Secret cache did not show this reconcile's writes within 10 s");
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::{announced_parts, grows_into};

    #[test]
    fn a_part_is_new_only_past_the_count_the_observed_manifests_announce() {
        let announced =
            |parts: &[(&'static str, &str)]| announced_parts("b", parts.iter().map(|(n, m)| (*n, m.to_string())));
        // two shards of three observed: the third was deleted (drift), a fourth is growth
        let two_of_three = announced(&[("b-passwd-0", "3 ab"), ("b-passwd-1", "3 ab")]);
        assert!(!grows_into("b", "b-passwd-2", &two_of_three));
        assert!(grows_into("b", "b-passwd-3", &two_of_three));
        // part 0 is never growth; another file's manifests do not count
        assert!(!grows_into("b", "b-passwd-0", &two_of_three));
        assert!(grows_into("b", "b-acl-1", &two_of_three));
        // nothing observed, or a manifest that cannot be read: growth (restored, not reported)
        assert!(grows_into("b", "b-certs-1", &announced(&[])));
        assert!(grows_into("b", "b-certs-1", &announced(&[("b-certs-0", "x")])));
    }
}
