//! Attestation of the files in force: each broker pod's agent reports the digest of the files
//! it installed and when; the operator compares it with the digest of what it wrote. That is the
//! evidence behind `status.files` (do the pods run what moat wrote?) and behind the revocation
//! deadline (when did a revocation reach every pod?).

use std::time::Duration;

use kube::ResourceExt;

use super::observe::Observed;
use crate::agent::AgentStatus;
pub use crate::plan::files::{Memo, PodFiles, RECHECK};
use crate::render::workload::AGENT_STATUS_PORT;

/// How long one pod may take to answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Asks every pod with an IP (in parallel) what it runs.
pub async fn attest(seen: &Observed, expected: &str) -> Vec<(String, PodFiles)> {
    let asks = seen.pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).filter_map(|p| {
        let ip = p.status.as_ref()?.pod_ip.clone()?;
        let name = p.name_any();
        Some(async move {
            let files = match tokio::time::timeout(TIMEOUT, fetch(&ip)).await {
                Err(_) => PodFiles::Unreachable(format!("no answer within {}s", TIMEOUT.as_secs())),
                Ok(Err(e)) => PodFiles::Unreachable(e),
                Ok(Ok(s)) => classify(&s, expected),
            };
            (name, files)
        })
    });
    let mut out = futures::future::join_all(asks).await;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn classify(s: &AgentStatus, expected: &str) -> PodFiles {
    match (&s.installed, s.installed_at) {
        (Some(d), Some(t)) if d == expected => PodFiles::Current(t),
        _ if s.refusing => PodFiles::Refusing,
        _ => PodFiles::Behind,
    }
}

/// `GET /status` from the agent at `ip`.
pub async fn fetch(ip: &str) -> Result<AgentStatus, String> {
    fetch_path(ip, "/status").await
}

/// `GET path` (`/status` with a query) from the agent at `ip`.
pub async fn fetch_path(ip: &str, path: &str) -> Result<AgentStatus, String> {
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
