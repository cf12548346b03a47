//! PolicyReport output (`wgpolicyk8s.io/v1alpha2`): one report per broker, one result per check,
//! written at audits when the CRD exists (skipped cleanly when it does not).

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use super::context::Context;
use crate::crd::{CheckResult, ComplianceStatus, MqttBroker, Severity};
use crate::names;

/// Name of a broker's PolicyReport.
pub fn report_name(broker: &str) -> String {
    format!("moat-{broker}")
}

/// The PolicyReport of a broker's compliance (pure).
pub fn policy_report(broker: &MqttBroker, compliance: &ComplianceStatus, now: jiff::Timestamp) -> serde_json::Value {
    let result = |r: CheckResult| match r {
        CheckResult::Pass => "pass",
        CheckResult::Fail => "fail",
        CheckResult::Unknown => "skip",
    };
    let results: Vec<serde_json::Value> = compliance
        .checks
        .iter()
        .map(|c| {
            serde_json::json!({
                "source": "moat",
                "policy": format!("moat-{}", c.measure.as_str()),
                "rule": c.id,
                "category": c.measure.as_str(),
                // wgpolicyk8s.io/v1alpha2 only knows high/medium/low: critical counts as high, info
                // as low; the exact severity stays in properties.
                "severity": match c.severity {
                    Severity::Critical | Severity::High => "high",
                    Severity::Medium => "medium",
                    Severity::Low | Severity::Info => "low",
                },
                "result": result(c.result),
                "scored": true,
                "message": c.message,
                "timestamp": {"seconds": now.as_second(), "nanos": 0},
                "properties": if c.remediation.is_empty() {
                    serde_json::json!({"severity": c.severity.as_str()})
                } else {
                    serde_json::json!({"severity": c.severity.as_str(), "remediation": c.remediation})
                },
            })
        })
        .collect();
    let count = |r: CheckResult| compliance.checks.iter().filter(|c| c.result == r).count();
    serde_json::json!({
        "apiVersion": "wgpolicyk8s.io/v1alpha2",
        "kind": "PolicyReport",
        "metadata": {
            "name": report_name(&broker.name_any()),
            "namespace": broker.namespace(),
            "labels": {"app.kubernetes.io/managed-by": names::MANAGED_BY, names::BROKER_LABEL: broker.name_any()},
            "ownerReferences": [broker.controller_owner_ref(&())],
        },
        "scope": {
            "apiVersion": MqttBroker::api_version(&()),
            "kind": MqttBroker::kind(&()),
            "name": broker.name_any(),
            "namespace": broker.namespace(),
            "uid": broker.uid(),
        },
        "summary": {"pass": count(CheckResult::Pass), "fail": count(CheckResult::Fail), "warn": 0, "error": 0, "skip": count(CheckResult::Unknown)},
        "results": results,
    })
}

/// Writes the PolicyReport when the CRD is installed and the results changed since the last write.
pub async fn write(ctx: &Context, broker: &MqttBroker, compliance: &ComplianceStatus) {
    let ns = broker.namespace().unwrap_or_default();
    let key = (ns.clone(), broker.name_any());
    let fingerprint = serde_json::to_string(&compliance.checks).unwrap_or_default();
    if ctx.reports.lock().unwrap().get(&key) == Some(&fingerprint) {
        return;
    }
    let gvk = GroupVersionKind::gvk("wgpolicyk8s.io", "v1alpha2", "PolicyReport");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "policyreports");
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &ar);
    let body = policy_report(broker, compliance, ctx.clock.now());
    match api
        .patch(
            &report_name(&broker.name_any()),
            &PatchParams::apply(names::FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
    {
        Ok(_) => {
            ctx.metrics.write("PolicyReport", "apply");
            ctx.reports.lock().unwrap().insert(key, fingerprint);
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {
            tracing::debug!("PolicyReport CRD not installed; skipping the report");
            ctx.reports.lock().unwrap().insert(key, fingerprint);
        }
        Err(e) => tracing::warn!(error = %e, "could not write the PolicyReport"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ComplianceCheck, Measure};

    #[test]
    fn one_result_per_check_with_the_check_id_as_rule() {
        let broker: MqttBroker = serde_json::from_value(serde_json::json!({
            "apiVersion": "mqtt.moat.dev/v1alpha1", "kind": "MqttBroker",
            "metadata": {"name": "plant-a", "namespace": "iot", "uid": "u-1"}, "spec": {"version": "2.0.22"}
        }))
        .unwrap();
        let check = |id: &str, result| ComplianceCheck {
            id: id.into(),
            measure: Measure::Encryption,
            severity: Severity::High,
            passed: result == CheckResult::Pass,
            result,
            message: "m".into(),
            remediation: if result == CheckResult::Pass { String::new() } else { "fix it".into() },
        };
        let status = crate::compliance::summarize(
            vec![
                check("MOAT-TLS-001", CheckResult::Pass),
                check("MOAT-TLS-005", CheckResult::Unknown),
                check("MOAT-TLS-002", CheckResult::Fail),
            ],
            None,
        );
        let r = policy_report(&broker, &status, "2026-01-01T00:00:00Z".parse().unwrap());
        let results = r["results"].as_array().unwrap();
        assert_eq!(results.len(), 3);
        assert_eq!(
            results.iter().map(|x| x["rule"].as_str().unwrap()).collect::<Vec<_>>(),
            vec!["MOAT-TLS-001", "MOAT-TLS-002", "MOAT-TLS-005"]
        );
        assert_eq!(r["summary"], serde_json::json!({"pass": 1, "fail": 1, "warn": 0, "error": 0, "skip": 1}));
        assert_eq!(results[1]["properties"]["remediation"], "fix it");
        assert_eq!(r["scope"]["uid"], "u-1");
    }
}
