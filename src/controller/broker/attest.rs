//! Attestation of the files in force: each broker pod's agent reports the digest of the files
//! it installed and when; the operator compares it with the digest of what it wrote. That is the
//! evidence behind `status.files` (do the pods run what moat wrote?) and behind the revocation
//! deadline (when did a revocation reach every pod?).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::observe::Observed;
use crate::agent::AgentStatus;
pub use crate::plan::files::{Memo, PodFiles, RECHECK};
use crate::render::workload::AGENT_STATUS_PORT;

/// How long one pod may take to answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Asks every pod with an IP (in parallel) what it runs.
pub async fn attest(seen: &Observed, expected: &str) -> Vec<(String, PodFiles)> {
    ask(&seen.pods, "/status")
        .await
        .into_iter()
        .map(|(pod, answer)| {
            let files = match answer {
                Ok(s) => classify(&s, expected),
                Err(e) => {
                    if let Some(e) = &e {
                        tracing::debug!(%pod, error = %e, "the agent did not answer");
                    }
                    PodFiles::Unreachable(unreachable(e.as_deref()))
                }
            };
            (pod, files)
        })
        .collect()
}

/// `GET path` (`/status`, with a query or not) from the agent of every pod with an IP that is not
/// being deleted, in parallel, each within [`TIMEOUT`]: by pod name, the answer or why there is
/// none (`None`: no answer in time).
pub async fn ask(pods: &[Arc<Pod>], path: &str) -> Vec<(String, Result<AgentStatus, Option<String>>)> {
    let asks = pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).filter_map(|p| {
        let ip = p.status.as_ref()?.pod_ip.clone()?;
        let name = p.name_any();
        Some(async move {
            let answer = match tokio::time::timeout(TIMEOUT, fetch(&ip, path)).await {
                Err(_) => Err(None),
                Ok(answer) => answer.map_err(Some),
            };
            (name, answer)
        })
    });
    let mut out = futures::future::join_all(asks).await;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Why an agent did not answer, in words that stay the same from one attempt to the next (it
/// goes into the status: a connect that times out once and finds no route the next time must
/// not make a status write).
fn unreachable(error: Option<&str>) -> String {
    match error {
        Some(e) if e.contains("refused") => "connection refused".into(),
        Some(e) if e.starts_with("HTTP/") => format!("unexpected answer: {e}"),
        Some(e) if e.starts_with("unexpected answer") || e == "no HTTP response" => "unexpected answer".into(),
        _ => format!("no answer within {}s", TIMEOUT.as_secs()),
    }
}

fn classify(s: &AgentStatus, expected: &str) -> PodFiles {
    match (&s.installed, s.installed_at) {
        (Some(d), Some(t)) if d == expected => PodFiles::Current(t),
        _ if s.refusing => PodFiles::Refusing,
        _ => PodFiles::Behind,
    }
}

/// `GET path` from the agent at `ip`.
async fn fetch(ip: &str, path: &str) -> Result<AgentStatus, String> {
    let body = crate::probe::http_get(ip, AGENT_STATUS_PORT, path).await?;
    serde_json::from_str(&body).map_err(|e| format!("unexpected answer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn an_unreachable_agent_is_described_the_same_way_each_time() {
        let timeout = unreachable(None);
        assert_eq!(unreachable(Some("No route to host (os error 113)")), timeout);
        assert_eq!(unreachable(Some("Connection timed out (os error 110)")), timeout);
        assert_eq!(unreachable(Some("Connection refused (os error 111)")), "connection refused");
        assert_eq!(unreachable(Some("HTTP/1.1 404 Not Found")), "unexpected answer: HTTP/1.1 404 Not Found");
    }

    #[test]
    fn an_agent_answer_is_current_only_with_the_expected_digest() {
        let s = |d: &str, refusing| AgentStatus {
            installed: Some(d.into()),
            installed_at: Some(t(5)),
            refusing,
            suspicious: None,
        };
        assert_eq!(classify(&s("abc", false), "abc"), PodFiles::Current(t(5)));
        assert_eq!(classify(&s("old", false), "abc"), PodFiles::Behind);
        assert_eq!(classify(&s("old", true), "abc"), PodFiles::Refusing);
        assert_eq!(classify(&AgentStatus::default(), "abc"), PodFiles::Behind);
    }
}
