//! What is applied for a broker, parsed once per change of its Secrets (memoized by
//! resourceVersion), so thousands of user reconciles do not each re-parse the password file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use super::context::{Context, Stores};
use crate::build::broker::ca_secret_extras;
use crate::names;
use crate::pki::CaSet;

/// Parsed applied artifacts of one broker.
#[derive(Default, Debug)]
pub struct AppliedIndex {
    /// resourceVersions this index was built from.
    pub versions: Vec<String>,
    /// username → fingerprint of the password line in the applied shards.
    pub fingerprints: HashMap<String, String>,
    /// fingerprint → usernames (password reuse).
    pub by_fingerprint: HashMap<String, Vec<String>>,
    /// MqttAcl name → (generation, rule lines) in the applied ACL Secret.
    pub acls: HashMap<String, (i64, u32)>,
    /// The broker's CA set.
    pub ca: Option<CaSet>,
    /// Fingerprint key.
    pub fingerprint_key: Option<Vec<u8>>,
    /// Serials in the revocation ledger.
    pub revoked: HashSet<String>,
}

/// One key of a Secret as text (None when absent or not UTF-8): decodes only that key.
pub fn secret_text(s: &Secret, key: &str) -> Option<String> {
    s.data.as_ref()?.get(key).and_then(|b| String::from_utf8(b.0.clone()).ok())
}

/// The certificate and private key of a TLS Secret (`tls.crt`, `tls.key`).
pub fn issued_from(s: &Secret) -> Option<crate::pki::Issued> {
    Some(crate::pki::Issued { cert_pem: secret_text(s, "tls.crt")?, key_pem: secret_text(s, "tls.key")? })
}

/// Decoded string data of a Secret.
pub fn secret_strings(s: &Secret) -> BTreeMap<String, String> {
    s.data.iter().flatten().filter_map(|(k, v)| String::from_utf8(v.0.clone()).ok().map(|t| (k.clone(), t))).collect()
}

/// The applied index of broker `namespace/broker` (rebuilt only when one of its Secrets changed).
pub fn applied(ctx: &Context, namespace: &str, broker: &str) -> Arc<AppliedIndex> {
    // Direct lookups by name: this runs in every user reconcile, so it must not scan the store.
    let get = |name: &str| Stores::get(&ctx.stores.secrets, namespace, name);
    let mut rel: Vec<Arc<Secret>> =
        [names::acl_secret(broker), names::ca_secret(broker)].iter().filter_map(|n| get(n)).collect();
    // shards are numbered densely from 0 (the broker controller deletes the surplus tail)
    rel.extend((0..).map_while(|i| get(&names::passwd_secret(broker, i))));
    let versions: Vec<String> =
        rel.iter().map(|s| format!("{}@{}", s.name_any(), s.resource_version().unwrap_or_default())).collect();
    let key = (namespace.to_string(), broker.to_string());
    if let Some(memo) = ctx.applied.lock().unwrap().get(&key)
        && memo.versions == versions
    {
        return memo.clone();
    }
    let mut index = AppliedIndex { versions, ..Default::default() };
    for s in &rel {
        let n = s.name_any();
        if n == names::ca_secret(broker) {
            let data = secret_strings(s);
            index.ca = CaSet::from_secret_data(&data).ok();
            if let Ok((key, revoked)) = ca_secret_extras(&data) {
                index.fingerprint_key = key;
                index.revoked = revoked.into_iter().map(|r| r.serial_hex).collect();
            }
        } else if n == names::acl_secret(broker) {
            for line in secret_text(s, "sources").unwrap_or_default().lines() {
                let mut parts = line.split(' ');
                if let (Some(name), Some(g), Some(l)) = (parts.next(), parts.next(), parts.next()) {
                    index.acls.insert(name.to_string(), (g.parse().unwrap_or_default(), l.parse().unwrap_or_default()));
                }
            }
        } else if let Some(fps) = secret_text(s, crate::render::passwd::KEY_FINGERPRINTS)
            && let Ok(parsed) = crate::render::passwd::parse_fingerprints(&fps)
        {
            index.fingerprints.extend(parsed);
        }
    }
    for (user, fp) in &index.fingerprints {
        index.by_fingerprint.entry(fp.clone()).or_default().push(user.clone());
    }
    let index = Arc::new(index);
    ctx.applied.lock().unwrap().insert(key, index.clone());
    index
}
