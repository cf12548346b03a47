//! Writes each broker's compliance report ([`crate::compliance::reports`]) to every report API
//! the operator writes whose CRD is installed (skipped cleanly when it is not), at audits.

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use super::context::Context;
use crate::compliance::reports::{ReportApi, report, report_name, same_findings};
use crate::crd::ComplianceStatus;
use crate::names;

fn resource(api: ReportApi) -> ApiResource {
    let (group, version, kind, plural) = api.gvkp();
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// Writes the compliance report of `obj` (a broker, or an MqttAcl or MqttFirewall of `broker`) to
/// each API the operator writes whose CRD is installed, when the results changed since the last
/// write.
pub async fn write<K: Resource<DynamicType = ()>>(ctx: &Context, obj: &K, broker: &str, compliance: &ComplianceStatus) {
    let ns = obj.namespace().unwrap_or_default();
    let name = report_name(obj);
    let fingerprint = serde_json::to_string(&compliance.checks).unwrap_or_default();
    for &api in ctx.config.reports.apis() {
        let key = (ns.clone(), name.clone(), api);
        if ctx.reports.lock().unwrap().get(&key) == Some(&fingerprint) {
            continue;
        }
        let reports: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &resource(api));
        let body = report(api, obj, broker, compliance, ctx.clock.now());
        // nothing remembered (this operator just started): a report that already says the same
        // is left alone (one read instead of a write per report at every restart)
        let unknown = !ctx.reports.lock().unwrap().contains_key(&key);
        if unknown {
            let same = match reports.get(&name).await {
                Ok(existing) => same_findings(&serde_json::to_value(&existing).unwrap_or_default(), &body),
                // the API itself is missing (its CRD is not installed), not just this report
                Err(kube::Error::Api(e)) if e.code == 404 && !e.message.contains(&name) => {
                    tracing::debug!(kind = api.kind(), "report CRD not installed; skipping the report");
                    true
                }
                Err(_) => false,
            };
            if same {
                ctx.reports.lock().unwrap().insert(key, fingerprint.clone());
                continue;
            }
        }
        // strict: a field the installed CRD does not know is an error, not silently pruned
        let params = PatchParams::apply(names::FIELD_MANAGER).force().validation_strict();
        match reports.patch(&name, &params, &Patch::Apply(&body)).await {
            Ok(_) => {
                ctx.metrics.write(api.kind(), "apply");
                ctx.reports.lock().unwrap().insert(key, fingerprint.clone());
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {
                tracing::debug!(kind = api.kind(), "report CRD not installed; skipping the report");
                ctx.reports.lock().unwrap().insert(key, fingerprint.clone());
            }
            Err(e) => tracing::warn!(kind = api.kind(), error = %e, "could not write the report"),
        }
    }
}
