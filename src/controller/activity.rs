//! Suspicious activity at the brokers: every `activity_interval` the operator asks each broker
//! pod's agent whether its log shows a burst of refused logins (`spec.logging.failedLoginThreshold`
//! within `failedLoginWindow`, moat's own attestation attempts not counted), and records a
//! `SuspiciousActivity` Warning Event on the MqttBroker and the `moat_suspicious_activity`
//! counter, at most once per broker per [`COOLDOWN`]. It only reads unless there is something
//! to report: no status writes, nothing when all is quiet.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::ResourceExt;
use kube::runtime::events::EventType;

use super::context::{Context, labelled_of};
use crate::agent::activity::Suspicion;
use crate::crd::MqttBroker;

/// Least time between two `SuspiciousActivity` Events of one broker (an ongoing attack is one
/// Event every 10 minutes, not one per poll).
pub const COOLDOWN: Duration = Duration::from_secs(600);
/// Agents asked at once.
const PARALLEL: usize = 32;

/// The Event note for the pods that report a burst, or none when no pod does or the broker was
/// reported less than [`COOLDOWN`] ago.
pub fn due(bursts: &[(String, Suspicion)], last: Option<Instant>, now: Instant) -> Option<String> {
    if bursts.is_empty() || last.is_some_and(|t| now.duration_since(t) < COOLDOWN) {
        return None;
    }
    Some(bursts.iter().map(|(pod, s)| format!("{pod}: {}", s.summary())).collect::<Vec<_>>().join("; "))
}

/// Polls the agents until the operator stops.
pub async fn watch(ctx: Arc<Context>) {
    let mut last: HashMap<(String, String), Instant> = HashMap::new();
    loop {
        tokio::time::sleep(ctx.config.activity_interval).await;
        if !ctx.stores.ready() {
            continue;
        }
        let brokers: Vec<Arc<MqttBroker>> =
            ctx.stores.brokers.state().into_iter().filter(|b| b.spec.logging.failed_login_threshold > 0).collect();
        let asks = brokers.into_iter().map(|b| {
            let ctx = ctx.clone();
            async move {
                let bursts = bursts(&ctx, &b).await;
                (b, bursts)
            }
        });
        let answers: Vec<_> = futures::stream::iter(asks).buffer_unordered(PARALLEL).collect().await;
        for (broker, bursts) in answers {
            let key = (broker.namespace().unwrap_or_default(), broker.name_any());
            let Some(note) = due(&bursts, last.get(&key).copied(), Instant::now()) else { continue };
            last.insert(key.clone(), Instant::now());
            tracing::warn!(namespace = %key.0, broker = %key.1, %note, "suspicious activity");
            ctx.metrics
                .suspicious_activity
                .get_or_create(&crate::metrics::BrokerLabels { namespace: key.0, broker: key.1 })
                .inc();
            ctx.event(&*broker, EventType::Warning, "SuspiciousActivity", note).await;
        }
        // forget brokers that are gone
        last.retain(|(ns, name), _| super::context::Stores::get(&ctx.stores.brokers, ns, name).is_some());
    }
}

/// The bursts the broker's running pods report now, by pod name.
async fn bursts(ctx: &Context, broker: &MqttBroker) -> Vec<(String, Suspicion)> {
    // the broker's threshold and window go with the question (changing them restarts nothing)
    let logging = &broker.spec.logging;
    let Ok(window) = logging.failed_login_window.parse() else { return vec![] };
    let path = crate::agent::status_path(logging.failed_login_threshold.into(), window);
    let pods = labelled_of(&ctx.stores.pods, &broker.namespace().unwrap_or_default(), &broker.name_any());
    let answers = super::broker::attest::ask(&pods, &path).await;
    answers.into_iter().filter_map(|(pod, answer)| Some((pod, answer.ok()?.suspicious?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_reported_once_per_cooldown() {
        let s = Suspicion { refused: 30, window_seconds: 60, ..Default::default() };
        let bursts = vec![("plant-0".to_string(), s)];
        let t0 = Instant::now();
        let note = due(&bursts, None, t0).expect("first burst is reported");
        assert!(note.starts_with("plant-0: 30 refused logins within 60s"), "{note}");
        assert_eq!(due(&bursts, Some(t0), t0 + Duration::from_secs(599)), None);
        assert!(due(&bursts, Some(t0), t0 + COOLDOWN).is_some());
        assert_eq!(due(&[], None, t0), None, "quiet brokers are not reported");
    }
}
