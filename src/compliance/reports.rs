//! Compliance reports in the policy working group's APIs (pure): one report per broker, one
//! result per check, as an OpenReports `Report` (`openreports.io/v1alpha1`, the group's current
//! API) or a `wgpolicyk8s.io/v1alpha2` `PolicyReport`. `controller::report` writes them.

use kube::{Resource, ResourceExt};

use crate::crd::{CheckResult, ComplianceStatus, Severity};
use crate::names;

/// Which report APIs the operator writes (`moat run --reports`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Reports {
    /// Every API whose CRD is installed.
    #[default]
    All,
    /// Only OpenReports (`openreports.io/v1alpha1` `Report`).
    Openreports,
    /// Only `wgpolicyk8s.io/v1alpha2` `PolicyReport`.
    Policyreport,
    /// None.
    None,
}

impl Reports {
    /// The APIs written.
    pub fn apis(self) -> &'static [ReportApi] {
        match self {
            Reports::All => &[ReportApi::OpenReports, ReportApi::PolicyReport],
            Reports::Openreports => &[ReportApi::OpenReports],
            Reports::Policyreport => &[ReportApi::PolicyReport],
            Reports::None => &[],
        }
    }
}

/// A report API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReportApi {
    /// `openreports.io/v1alpha1` `Report`.
    OpenReports,
    /// `wgpolicyk8s.io/v1alpha2` `PolicyReport`.
    PolicyReport,
}

impl ReportApi {
    /// Group, version, kind and plural of the API's report resource.
    pub fn gvkp(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            ReportApi::OpenReports => ("openreports.io", "v1alpha1", "Report", "reports"),
            ReportApi::PolicyReport => ("wgpolicyk8s.io", "v1alpha2", "PolicyReport", "policyreports"),
        }
    }

    /// The kind, as in metrics and logs.
    pub fn kind(self) -> &'static str {
        match self {
            ReportApi::OpenReports => "Report",
            ReportApi::PolicyReport => "PolicyReport",
        }
    }

    /// A check's severity in this API: OpenReports has moat's five levels; `wgpolicyk8s.io`
    /// only high/medium/low, so critical counts as high and info as low there (the exact
    /// severity stays in the result's properties).
    fn severity(self, s: Severity) -> &'static str {
        match (self, s) {
            (ReportApi::OpenReports, s) => s.as_str(),
            (ReportApi::PolicyReport, Severity::Critical | Severity::High) => "high",
            (ReportApi::PolicyReport, Severity::Medium) => "medium",
            (ReportApi::PolicyReport, Severity::Low | Severity::Info) => "low",
        }
    }
}

/// Name of the report of `obj` (the same in every API): `moat-<broker>` for a broker,
/// `moat-<kind>-<name>` for an MqttAcl or MqttFirewall (`moat-mqttacl-clients`).
pub fn report_name<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    let kind = K::kind(&());
    match kind.as_ref() {
        "MqttBroker" => format!("moat-{}", obj.name_any()),
        _ => format!("moat-{}-{}", kind.to_lowercase(), obj.name_any()),
    }
}

/// A check's result in the report APIs: an Unknown check (one moat could not evaluate) is
/// `error`, which both APIs define as "could not be evaluated" (`skip` means "not selected").
fn result(r: CheckResult) -> &'static str {
    match r {
        CheckResult::Pass => "pass",
        CheckResult::Fail => "fail",
        CheckResult::Unknown => "error",
    }
}

/// The report of the compliance of `obj` (a broker, or an MqttAcl or MqttFirewall of `broker`) in
/// `api` (pure): the policy is the measure, the rule the check id, the object the scope (and the
/// report's owner), remediation and exact severity in the properties.
pub fn report<K: Resource<DynamicType = ()>>(
    api: ReportApi,
    obj: &K,
    broker: &str,
    compliance: &ComplianceStatus,
    now: jiff::Timestamp,
) -> serde_json::Value {
    let results: Vec<serde_json::Value> = compliance
        .checks
        .iter()
        .map(|c| {
            let mut properties = serde_json::json!({"severity": c.severity.as_str()});
            if !c.remediation.is_empty() {
                properties["remediation"] = c.remediation.clone().into();
            }
            serde_json::json!({
                "source": "moat",
                "policy": format!("moat-{}", c.measure.as_str()),
                "rule": c.id,
                "category": c.measure.as_str(),
                "severity": api.severity(c.severity),
                "result": result(c.result),
                "scored": true,
                "message": c.message,
                "timestamp": {"seconds": now.as_second(), "nanos": 0},
                "properties": properties,
            })
        })
        .collect();
    let count = |r: CheckResult| compliance.checks.iter().filter(|c| c.result == r).count();
    let (group, version, kind, _) = api.gvkp();
    let mut body = serde_json::json!({
        "apiVersion": format!("{group}/{version}"),
        "kind": kind,
        "metadata": {
            "name": report_name(obj),
            "namespace": obj.namespace(),
            "labels": {"app.kubernetes.io/managed-by": names::MANAGED_BY, names::BROKER_LABEL: broker},
            "ownerReferences": [obj.controller_owner_ref(&())],
        },
        "scope": {
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "name": obj.name_any(),
            "namespace": obj.namespace(),
            "uid": obj.uid(),
        },
        "summary": {"pass": count(CheckResult::Pass), "fail": count(CheckResult::Fail), "warn": 0, "error": count(CheckResult::Unknown), "skip": 0},
        "results": results,
    });
    if api == ReportApi::OpenReports {
        body["source"] = "moat".into();
    }
    body
}

/// Whether `existing` (a report read back from the API) already says what `desired` says: the
/// same scope, summary and results, each result's timestamp aside (a restarted operator then
/// leaves it alone instead of rewriting every report).
pub fn same_findings(existing: &serde_json::Value, desired: &serde_json::Value) -> bool {
    let results = |v: &serde_json::Value| {
        let mut r = v["results"].clone();
        for x in r.as_array_mut().into_iter().flatten() {
            if let Some(o) = x.as_object_mut() {
                o.remove("timestamp");
            }
        }
        r
    };
    existing["scope"] == desired["scope"]
        && existing["summary"] == desired["summary"]
        && results(existing) == results(desired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ComplianceCheck, Measure, MqttBroker};

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
            severity: if id == "MOAT-TLS-002" { Severity::Critical } else { Severity::High },
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
        for api in [ReportApi::OpenReports, ReportApi::PolicyReport] {
            let r = report(api, &broker, "plant-a", &status, "2026-01-01T00:00:00Z".parse().unwrap());
            let results = r["results"].as_array().unwrap();
            assert_eq!(results.len(), 3);
            assert_eq!(
                results.iter().map(|x| x["rule"].as_str().unwrap()).collect::<Vec<_>>(),
                vec!["MOAT-TLS-001", "MOAT-TLS-002", "MOAT-TLS-005"]
            );
            // Unknown is "could not be evaluated": error, not skip
            assert_eq!(results[2]["result"], "error");
            assert_eq!(r["summary"], serde_json::json!({"pass": 1, "fail": 1, "warn": 0, "error": 1, "skip": 0}));
            assert_eq!(results[1]["properties"]["remediation"], "fix it");
            assert_eq!(results[1]["properties"]["severity"], "critical");
            assert_eq!(r["scope"]["uid"], "u-1");
            // read back later: the same findings at another time are no news; another result is
            let later = report(api, &broker, "plant-a", &status, "2026-01-02T00:00:00Z".parse().unwrap());
            assert!(same_findings(&later, &r));
            let mut changed = status.clone();
            changed.checks[0].message = "other".into();
            assert!(!same_findings(
                &report(api, &broker, "plant-a", &changed, "2026-01-01T00:00:00Z".parse().unwrap()),
                &r
            ));
            assert!(!same_findings(&serde_json::json!({}), &r), "a report that is not there");
        }
        let open = report(ReportApi::OpenReports, &broker, "plant-a", &status, "2026-01-01T00:00:00Z".parse().unwrap());
        assert_eq!(
            (open["apiVersion"].as_str(), open["kind"].as_str()),
            (Some("openreports.io/v1alpha1"), Some("Report"))
        );
        assert_eq!(open["results"][1]["severity"], "critical", "OpenReports knows critical");
        let old = report(ReportApi::PolicyReport, &broker, "plant-a", &status, "2026-01-01T00:00:00Z".parse().unwrap());
        assert_eq!(
            (old["apiVersion"].as_str(), old["kind"].as_str()),
            (Some("wgpolicyk8s.io/v1alpha2"), Some("PolicyReport"))
        );
        assert_eq!(old["results"][1]["severity"], "high", "v1alpha2 has no critical");
        assert!(old.get("source").is_none());
    }

    #[test]
    fn acls_and_firewalls_get_reports_of_their_own() {
        let fw: crate::crd::MqttFirewall = serde_json::from_value(serde_json::json!({
            "apiVersion": "mqtt.moat.dev/v1alpha1", "kind": "MqttFirewall",
            "metadata": {"name": "edge", "namespace": "iot", "uid": "u-2"},
            "spec": {"brokerRef": {"name": "plant-a"}, "ingress": []}
        }))
        .unwrap();
        let status = crate::compliance::summarize(vec![], None);
        let r = report(ReportApi::OpenReports, &fw, "plant-a", &status, "2026-01-01T00:00:00Z".parse().unwrap());
        assert_eq!(r["metadata"]["name"], "moat-mqttfirewall-edge");
        assert_eq!(r["metadata"]["labels"][names::BROKER_LABEL], "plant-a");
        assert_eq!((r["scope"]["kind"].as_str(), r["scope"]["uid"].as_str()), (Some("MqttFirewall"), Some("u-2")));
        assert_eq!(r["metadata"]["ownerReferences"][0]["uid"], "u-2");
    }

    #[test]
    fn the_report_flag_selects_the_apis() {
        assert_eq!(Reports::All.apis(), &[ReportApi::OpenReports, ReportApi::PolicyReport]);
        assert_eq!(Reports::Openreports.apis(), &[ReportApi::OpenReports]);
        assert!(Reports::None.apis().is_empty());
    }
}
