//! The health-gated rollout state machine, as a pure function.
//!
//! The broker runs as a StatefulSet with `updateStrategy.rollingUpdate.partition`. To move from
//! `from_version` to `to_version`, moat sets the pod template to `to_version` and lowers the
//! partition one ordinal at a time from the highest down; every updated pod must become Ready
//! within the rollout timeout and then stay Ready for the ready grace period before the next one
//! is updated. A pod that does not make it triggers a rollback of the whole StatefulSet.
//!
//! ```text
//! from                      when                                             to           Event reason
//! idle¹                     desired != running, may not start               Pending      UpgradePending
//! idle¹ / Pending           desired != running, may start                   RollingOut   UpgradeStarted
//! Pending                   desired changed to yet another version          Pending      UpgradePending
//! Pending                   desired == running again                        (none)       UpgradeCancelled
//! RollingOut                pod k runs to_version and is Ready              Verifying    PodVerifying
//! RollingOut                pod k not Ready within timeout of its update    RollingBack  UpgradeRollingBack
//! Verifying                 pod k Ready for the grace period, more to go    RollingOut   PodUpdated
//! Verifying                 ... and it was the last pod (ordinal 0)         Completed    UpgradeCompleted
//! Verifying                 pod k un-Ready (timeout not yet reached)        RollingOut   PodNotReady
//! Verifying                 pod k un-Ready after the timeout                RollingBack  UpgradeRollingBack
//! RollingBack               every pod runs from_version and is Ready        Failed       UpgradeFailed
//! RollingOut/Verifying/     desired changed (for RollingBack: to neither    RollingOut   UpgradeRestarted
//!   RollingBack               version), from the same from_version
//!
//! ¹ idle: no state, Completed, or Failed. Failed stays Failed while desired == its to_version.
//! ```
//!
//! The target pod is `k = replicas - 1 - updated`. While rolling out or verifying, the template
//! is `to_version` and the partition `k`; Completed and idle use partition 0; RollingBack and
//! Failed put the template back on `from_version` with partition 0.
//!
//! [`step`] takes the observed world ([`RolloutInput`]) and the previous [`RolloutState`] and
//! returns what the StatefulSet should look like ([`RolloutStep`]). It never reads the clock;
//! with the same input it always returns the same output, and a step that changes nothing
//! returns the state unchanged and no transition, so reconciling again is a no-op.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

use crate::crd::broker::UpgradeStatus;

/// Event reason: an upgrade waits for a maintenance window.
pub const REASON_PENDING: &str = "UpgradePending";
/// Event reason: a pending upgrade was dropped because `spec.version` is the running version again.
pub const REASON_CANCELLED: &str = "UpgradeCancelled";
/// Event reason: a rollout started (template changed, first pod being updated).
pub const REASON_STARTED: &str = "UpgradeStarted";
/// Event reason: the desired version changed during a rollout; it starts over towards the new one.
pub const REASON_RESTARTED: &str = "UpgradeRestarted";
/// Event reason: the updated pod is Ready and is being verified for the ready grace period.
pub const REASON_VERIFYING: &str = "PodVerifying";
/// Event reason: the pod under verification turned un-Ready; waiting for it again.
pub const REASON_POD_NOT_READY: &str = "PodNotReady";
/// Event reason: a pod passed verification and the next pod is being updated.
pub const REASON_POD_UPDATED: &str = "PodUpdated";
/// Event reason: every pod runs the new version and passed verification.
pub const REASON_COMPLETED: &str = "UpgradeCompleted";
/// Event reason: a pod was not Ready in time; the StatefulSet goes back to the old version.
pub const REASON_ROLLING_BACK: &str = "UpgradeRollingBack";
/// Event reason: the rollback finished; the upgrade failed and is not retried automatically.
pub const REASON_FAILED: &str = "UpgradeFailed";

/// Phase of an upgrade. `Display`/`FromStr` use exactly these names (as in `status.upgrade.phase`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// A version change waits for a maintenance window.
    Pending,
    /// The template is on `to_version`; the target pod is being replaced and must become Ready.
    RollingOut,
    /// The target pod runs `to_version` and is Ready; it must stay Ready for the grace period.
    Verifying,
    /// Every pod runs `to_version` and passed verification.
    Completed,
    /// A pod failed; the template is back on `from_version` and broken pods are replaced.
    RollingBack,
    /// The rollback finished. Not retried until the desired version changes.
    Failed,
}

impl Phase {
    /// All phases.
    pub const ALL: [Phase; 6] =
        [Phase::Pending, Phase::RollingOut, Phase::Verifying, Phase::Completed, Phase::RollingBack, Phase::Failed];

    /// The name used in status and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::RollingOut => "RollingOut",
            Phase::Verifying => "Verifying",
            Phase::Completed => "Completed",
            Phase::RollingBack => "RollingBack",
            Phase::Failed => "Failed",
        }
    }

    /// True while pods are being changed (RollingOut, Verifying, RollingBack).
    pub fn in_progress(self) -> bool {
        matches!(self, Phase::RollingOut | Phase::Verifying | Phase::RollingBack)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Phase {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| format!("unknown upgrade phase {s:?}"))
    }
}

/// The state of the current or last upgrade, carried from one reconcile to the next
/// (persisted in `status.upgrade`, see [`RolloutState::to_status`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutState {
    /// Current phase.
    pub phase: Phase,
    /// Version before the upgrade (the rollback target).
    pub from_version: String,
    /// Version being rolled out.
    pub to_version: String,
    /// When this attempt began (for Pending: since when it waits).
    pub started_at: Timestamp,
    /// When the current phase began.
    pub phase_since: Timestamp,
    /// When the update of the current target pod began (its partition was set). The rollout
    /// timeout counts from here, also after the pod turned un-Ready during verification.
    pub pod_started_at: Timestamp,
    /// Pods verified on `to_version`, counted from the highest ordinal down.
    pub updated: i32,
    /// Human-readable description of the phase.
    pub message: String,
}

impl RolloutState {
    /// The state as `MqttBroker.status.upgrade`.
    pub fn to_status(&self) -> UpgradeStatus {
        UpgradeStatus {
            phase: self.phase.to_string(),
            message: self.message.clone(),
            from_version: Some(self.from_version.clone()),
            to_version: Some(self.to_version.clone()),
            started_at: Some(Time(self.started_at)),
            phase_since: Some(Time(self.phase_since)),
            pod_started_at: Some(Time(self.pod_started_at)),
            updated_replicas: self.updated,
        }
    }

    /// Rebuilds the state from `status.upgrade`; `None` when a field is missing or the phase
    /// is unknown (a status written before `podStartedAt` existed uses `phaseSince` for it).
    pub fn from_status(status: &UpgradeStatus) -> Option<RolloutState> {
        let phase_since = status.phase_since.as_ref()?.0;
        Some(RolloutState {
            phase: status.phase.parse().ok()?,
            from_version: status.from_version.clone()?,
            to_version: status.to_version.clone()?,
            started_at: status.started_at.as_ref()?.0,
            phase_since,
            pod_started_at: status.pod_started_at.as_ref().map_or(phase_since, |t| t.0),
            updated: status.updated_replicas,
            message: status.message.clone(),
        })
    }
}

/// What moat observes of one broker pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    /// StatefulSet ordinal.
    pub ordinal: i32,
    /// Mosquitto version from the pod's image tag; `None` when it cannot be read.
    pub version: Option<String>,
    /// The pod's Ready condition is True (and it is not terminating).
    pub ready: bool,
    /// When the Ready condition last changed (its `lastTransitionTime`), if known.
    pub ready_since: Option<Timestamp>,
}

/// Everything [`step`] needs to decide.
#[derive(Clone, Debug)]
pub struct RolloutInput<'a> {
    /// StatefulSet name: pod `k` is `{name}-{k}` in messages.
    pub name: &'a str,
    /// Desired number of pods (`spec.replicas`).
    pub replicas: i32,
    /// The pods that exist.
    pub pods: &'a [PodView],
    /// Version the broker should run (`spec.version`, or the AutoPatch target).
    pub desired: &'a str,
    /// Version in the StatefulSet's pod template now. Pass `desired` for a StatefulSet that does
    /// not exist yet (a new broker starts on its version without a rollout).
    pub running: &'a str,
    /// The state returned by the previous step (from status), if any.
    pub state: Option<&'a RolloutState>,
    /// An upgrade may start now: a maintenance window is open, or the user changed
    /// `spec.version` explicitly.
    pub may_start: bool,
    /// A pod that is not Ready this long after its update makes the upgrade roll back.
    pub rollout_timeout: Duration,
    /// An updated pod must stay Ready this long before the next one is updated.
    pub ready_grace: Duration,
    /// The current time.
    pub now: Timestamp,
}

/// A phase change, to be reported as a Kubernetes Event on the MqttBroker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Event reason (one of the `REASON_*` constants).
    pub reason: &'static str,
    /// Event message.
    pub message: String,
}

/// What the StatefulSet should look like after this step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutStep {
    /// State to persist; `None` when there is no upgrade to report.
    pub state: Option<RolloutState>,
    /// Mosquitto version for the StatefulSet's pod template.
    pub template_version: String,
    /// `updateStrategy.rollingUpdate.partition`: pods with an ordinal >= this run the template.
    pub partition: i32,
    /// Pods to delete so the StatefulSet recreates them from the template: pods that should run
    /// the template version but run another one and are not Ready. A StatefulSet does not
    /// replace a broken pod by itself (e.g. after the template was reverted).
    pub delete_pods: Vec<i32>,
    /// Set exactly when the phase changed (or a pending upgrade changed its target).
    pub transition: Option<Transition>,
}

/// A rollout state as a reconcile applied it, and when (`None`: no rollout).
pub type Applied = (Timestamp, Option<RolloutState>);

/// The rollout state to continue from: the one in the broker's status, or the one this operator
/// last applied (at `applied_at`; `None` = no rollout) when that is at least as new. A reconcile can
/// start from a broker object that predates the operator's own last status write (it was woken by
/// the StatefulSet change that reconcile made): continuing from that stale state (e.g. the previous
/// upgrade's `Completed` while the template already carries the next version) would set the
/// partition to 0 and let the StatefulSet replace every pod without the health gate.
pub fn latest_state(stored: Option<RolloutState>, applied: Option<Applied>) -> Option<RolloutState> {
    let stored_at = stored.as_ref().map(|s| s.started_at.max(s.phase_since).max(s.pod_started_at));
    match applied {
        Some((applied_at, state)) if stored_at.is_none_or(|t| applied_at >= t) => state,
        _ => stored,
    }
}

/// Computes the next rollout step. Pure and deterministic; see the module documentation.
pub fn step(input: &RolloutInput) -> RolloutStep {
    match input.state {
        Some(state) if state.phase.in_progress() => in_progress(input, state),
        Some(state) if state.phase == Phase::Pending => pending(input, state),
        other => idle(input, other),
    }
}

/// No upgrade running: nothing yet, or the last one Completed or Failed.
fn idle(input: &RolloutInput, state: Option<&RolloutState>) -> RolloutStep {
    if input.desired == input.running {
        return unchanged(state, input.running, 0, vec![]);
    }
    if let Some(failed) = state.filter(|s| s.phase == Phase::Failed && s.to_version == input.desired) {
        // No automatic retry of a version that failed; a different desired version starts anew.
        return unchanged(Some(failed), &failed.from_version, 0, vec![]);
    }
    if input.may_start { start(input, input.running, REASON_STARTED) } else { wait(input, input.now) }
}

fn pending(input: &RolloutInput, state: &RolloutState) -> RolloutStep {
    if input.desired == input.running {
        return RolloutStep {
            state: None,
            template_version: input.running.to_string(),
            partition: 0,
            delete_pods: vec![],
            transition: Some(Transition {
                reason: REASON_CANCELLED,
                message: format!(
                    "upgrade from {} to {} cancelled: the desired version is {} again",
                    state.from_version, state.to_version, input.running
                ),
            }),
        };
    }
    if input.may_start {
        return start(input, input.running, REASON_STARTED);
    }
    if state.to_version != input.desired || state.from_version != input.running {
        return wait(input, state.started_at);
    }
    unchanged(Some(state), input.running, 0, vec![])
}

/// Enter (or re-enter, with a new target) Pending.
fn wait(input: &RolloutInput, since: Timestamp) -> RolloutStep {
    let message = format!("upgrade from {} to {} is waiting for the maintenance window", input.running, input.desired);
    RolloutStep {
        state: Some(RolloutState {
            phase: Phase::Pending,
            from_version: input.running.to_string(),
            to_version: input.desired.to_string(),
            started_at: since,
            phase_since: input.now,
            pod_started_at: input.now,
            updated: 0,
            message: message.clone(),
        }),
        template_version: input.running.to_string(),
        partition: 0,
        delete_pods: vec![],
        transition: Some(Transition { reason: REASON_PENDING, message }),
    }
}

/// Start a rollout from `from` to the desired version with the highest ordinal.
fn start(input: &RolloutInput, from: &str, reason: &'static str) -> RolloutStep {
    let to = input.desired;
    let state = RolloutState {
        phase: Phase::RollingOut,
        from_version: from.to_string(),
        to_version: to.to_string(),
        started_at: input.now,
        phase_since: input.now,
        pod_started_at: input.now,
        updated: 0,
        message: String::new(),
    };
    if input.replicas <= 0 {
        return complete(input, &state, 0);
    }
    let k = input.replicas - 1;
    let what = if from == to { format!("reverting to {to}") } else { format!("upgrading from {from} to {to}") };
    let message = format!(
        "{what} one pod at a time, starting with {} (rollout timeout {}, ready grace {})",
        pod_name(input, k),
        human(input.rollout_timeout),
        human(input.ready_grace)
    );
    let state = RolloutState { message: format!("updating {} to {to}", pod_name(input, k)), ..state };
    RolloutStep {
        delete_pods: stuck_pods(input, k, to),
        state: Some(state),
        template_version: to.to_string(),
        partition: k,
        transition: Some(Transition { reason, message }),
    }
}

fn in_progress(input: &RolloutInput, state: &RolloutState) -> RolloutStep {
    let retarget = match state.phase {
        // Going back to from_version is what RollingBack does anyway.
        Phase::RollingBack => input.desired != state.to_version && input.desired != state.from_version,
        _ => input.desired != state.to_version,
    };
    if retarget {
        // Start over towards the new version from the same baseline, regardless of the window:
        // the maintenance is already under way.
        return start(input, &state.from_version, REASON_RESTARTED);
    }
    let target = input.replicas - 1 - state.updated;
    match state.phase {
        Phase::RollingBack => rolling_back(input, state),
        _ if target < 0 => complete(input, state, state.updated.max(input.replicas)),
        Phase::RollingOut => rolling_out(input, state, target),
        _ => verifying(input, state, target),
    }
}

fn rolling_out(input: &RolloutInput, state: &RolloutState, k: i32) -> RolloutStep {
    let to = &state.to_version;
    if is_ready_on(pod(input, k), to) {
        let message = format!(
            "{} runs {to} and is Ready; verifying that it stays Ready for {}",
            pod_name(input, k),
            human(input.ready_grace)
        );
        return RolloutStep {
            state: Some(RolloutState {
                phase: Phase::Verifying,
                phase_since: input.now,
                message: message.clone(),
                ..state.clone()
            }),
            template_version: to.clone(),
            partition: k,
            delete_pods: vec![],
            transition: Some(Transition { reason: REASON_VERIFYING, message }),
        };
    }
    if input.now >= plus(state.pod_started_at, input.rollout_timeout) {
        return roll_back(input, state, k);
    }
    unchanged(Some(state), to, k, stuck_pods(input, k, to))
}

fn verifying(input: &RolloutInput, state: &RolloutState, k: i32) -> RolloutStep {
    let to = &state.to_version;
    let target = pod(input, k);
    if !is_ready_on(target, to) {
        if input.now >= plus(state.pod_started_at, input.rollout_timeout) {
            return roll_back(input, state, k);
        }
        let message = format!(
            "{} turned un-Ready during verification; waiting for it to be Ready again until {}",
            pod_name(input, k),
            plus(state.pod_started_at, input.rollout_timeout)
        );
        return RolloutStep {
            state: Some(RolloutState {
                phase: Phase::RollingOut,
                phase_since: input.now,
                message: message.clone(),
                ..state.clone()
            }),
            template_version: to.clone(),
            partition: k,
            delete_pods: stuck_pods(input, k, to),
            transition: Some(Transition { reason: REASON_POD_NOT_READY, message }),
        };
    }
    // Ready since the pod's own Ready transition when known (catches flaps between reconciles),
    // otherwise since verification began.
    let ready_since = target.and_then(|p| p.ready_since).unwrap_or(state.phase_since);
    if input.now < plus(ready_since, input.ready_grace) {
        return unchanged(Some(state), to, k, vec![]);
    }
    let updated = state.updated + 1;
    if updated >= input.replicas {
        return complete(input, state, updated);
    }
    let next = k - 1;
    let message = format!(
        "{} verified on {to}; updating {} ({updated}/{} done)",
        pod_name(input, k),
        pod_name(input, next),
        input.replicas
    );
    RolloutStep {
        delete_pods: stuck_pods(input, next, to),
        state: Some(RolloutState {
            phase: Phase::RollingOut,
            phase_since: input.now,
            pod_started_at: input.now,
            updated,
            message: message.clone(),
            ..state.clone()
        }),
        template_version: to.clone(),
        partition: next,
        transition: Some(Transition { reason: REASON_POD_UPDATED, message }),
    }
}

fn complete(input: &RolloutInput, state: &RolloutState, updated: i32) -> RolloutStep {
    let to = &state.to_version;
    let message = format!(
        "upgrade from {} to {to} completed: {} {to} and passed verification",
        state.from_version,
        every_pod_runs(input.replicas)
    );
    RolloutStep {
        state: Some(RolloutState {
            phase: Phase::Completed,
            phase_since: input.now,
            updated,
            message: message.clone(),
            ..state.clone()
        }),
        template_version: to.clone(),
        partition: 0,
        delete_pods: vec![],
        transition: Some(Transition { reason: REASON_COMPLETED, message }),
    }
}

/// Why the rollout failed; used for RollingBack and Failed alike.
fn failure(input: &RolloutInput, state: &RolloutState, k: i32) -> String {
    format!(
        "{} was not Ready on {} within the rollout timeout of {} after its update",
        pod_name(input, k),
        state.to_version,
        human(input.rollout_timeout)
    )
}

fn roll_back(input: &RolloutInput, state: &RolloutState, k: i32) -> RolloutStep {
    let from = &state.from_version;
    let message = format!("{}; rolling back to {from}", failure(input, state, k));
    RolloutStep {
        delete_pods: stuck_pods(input, 0, from),
        state: Some(RolloutState {
            phase: Phase::RollingBack,
            phase_since: input.now,
            message: message.clone(),
            ..state.clone()
        }),
        template_version: from.clone(),
        partition: 0,
        transition: Some(Transition { reason: REASON_ROLLING_BACK, message }),
    }
}

fn rolling_back(input: &RolloutInput, state: &RolloutState) -> RolloutStep {
    let from = &state.from_version;
    let all_back = (0..input.replicas).all(|i| is_ready_on(pod(input, i), from));
    if !all_back {
        return unchanged(Some(state), from, 0, stuck_pods(input, 0, from));
    }
    // The pod that failed is the one that was being updated when the rollback began.
    let failed_pod = (input.replicas - 1 - state.updated).max(0);
    let message = format!(
        "upgrade from {from} to {} failed: {}; rolled back, {} {from} and {} Ready. \
         Not retried automatically: set spec.version to another version to try again",
        state.to_version,
        failure(input, state, failed_pod),
        every_pod_runs(input.replicas),
        if input.replicas == 1 { "is" } else { "are" }
    );
    RolloutStep {
        state: Some(RolloutState {
            phase: Phase::Failed,
            phase_since: input.now,
            message: message.clone(),
            ..state.clone()
        }),
        template_version: from.clone(),
        partition: 0,
        delete_pods: vec![],
        transition: Some(Transition { reason: REASON_FAILED, message }),
    }
}

fn unchanged(state: Option<&RolloutState>, template: &str, partition: i32, delete_pods: Vec<i32>) -> RolloutStep {
    RolloutStep {
        state: state.cloned(),
        template_version: template.to_string(),
        partition,
        delete_pods,
        transition: None,
    }
}

fn pod<'a>(input: &RolloutInput<'a>, ordinal: i32) -> Option<&'a PodView> {
    input.pods.iter().find(|p| p.ordinal == ordinal)
}

fn is_ready_on(pod: Option<&PodView>, version: &str) -> bool {
    pod.is_some_and(|p| p.ready && p.version.as_deref() == Some(version))
}

/// Pods in `[partition, replicas)` that run a known version other than `template` and are not
/// Ready: the StatefulSet controller waits on them forever, so they must be deleted.
fn stuck_pods(input: &RolloutInput, partition: i32, template: &str) -> Vec<i32> {
    let mut stuck: Vec<i32> = input
        .pods
        .iter()
        .filter(|p| p.ordinal >= partition && p.ordinal < input.replicas && !p.ready)
        .filter(|p| p.version.as_deref().is_some_and(|v| v != template))
        .map(|p| p.ordinal)
        .collect();
    stuck.sort_unstable();
    stuck.dedup();
    stuck
}

/// "the pod runs" / "all 3 pods run".
fn every_pod_runs(replicas: i32) -> String {
    match replicas {
        1 => "the pod runs".to_string(),
        n => format!("all {} pods run", n.max(0)),
    }
}

fn pod_name(input: &RolloutInput, ordinal: i32) -> String {
    format!("pod {}-{ordinal}", input.name)
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(d).unwrap_or(Timestamp::MAX)
}

/// `5m`, `30s`, `1h 30m`.
fn human(d: Duration) -> String {
    match SignedDuration::try_from(d) {
        Ok(d) => format!("{d:#}"),
        Err(_) => format!("{}s", d.as_secs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::window::{Window, is_open};

    const FROM: &str = "2.0.15";
    const TO: &str = "2.0.22";
    const TIMEOUT: Duration = Duration::from_secs(300);
    const GRACE: Duration = Duration::from_secs(30);

    fn t0() -> Timestamp {
        "2026-03-10T02:00:00Z".parse().unwrap()
    }

    fn at(secs: i64) -> Timestamp {
        t0() + SignedDuration::from_secs(secs)
    }

    /// `n` pods, all on `version` and Ready for a long time.
    fn pods(n: i32, version: &str) -> Vec<PodView> {
        (0..n)
            .map(|ordinal| PodView {
                ordinal,
                version: Some(version.into()),
                ready: true,
                ready_since: Some("2026-01-01T00:00:00Z".parse().unwrap()),
            })
            .collect()
    }

    fn set_pod(pods: &mut [PodView], ordinal: i32, version: &str, ready_since: Option<Timestamp>) {
        let p = &mut pods[ordinal as usize];
        p.version = Some(version.into());
        p.ready = ready_since.is_some();
        p.ready_since = ready_since;
    }

    /// A harness that plays the controller: feeds each step's state into the next.
    struct World {
        replicas: i32,
        pods: Vec<PodView>,
        desired: String,
        running: String,
        state: Option<RolloutState>,
        may_start: bool,
        events: Vec<(&'static str, String)>,
    }

    impl World {
        fn new(replicas: i32) -> Self {
            World {
                replicas,
                pods: pods(replicas, FROM),
                desired: TO.into(),
                running: FROM.into(),
                state: None,
                may_start: true,
                events: vec![],
            }
        }

        fn input(&self, now: Timestamp) -> RolloutInput<'_> {
            RolloutInput {
                name: "broker",
                replicas: self.replicas,
                pods: &self.pods,
                desired: &self.desired,
                running: &self.running,
                state: self.state.as_ref(),
                may_start: self.may_start,
                rollout_timeout: TIMEOUT,
                ready_grace: GRACE,
                now,
            }
        }

        /// One reconcile: step, check idempotency of the result, apply it.
        fn reconcile(&mut self, now: Timestamp) -> RolloutStep {
            let out = step(&self.input(now));
            assert_eq!(step(&self.input(now)), out, "step is deterministic");
            if let Some(t) = &out.transition {
                self.events.push((t.reason, t.message.clone()));
            }
            self.state = out.state.clone();
            self.running = out.template_version.clone();
            out
        }

        fn phase(&self) -> Option<Phase> {
            self.state.as_ref().map(|s| s.phase)
        }

        /// Reconciling again with the same observation changes nothing.
        fn assert_settled(&mut self, now: Timestamp) {
            let before = self.state.clone();
            let out = self.reconcile(now);
            assert_eq!(out.transition, None, "no transition expected at {now}: {:?}", out.state);
            assert_eq!(out.state, before, "state must be unchanged");
        }
    }

    /// A stale status (the previous upgrade's Completed) must not win over the rollout this
    /// operator applied since: continuing from it would set the partition to 0 (no health gate).
    #[test]
    fn the_applied_rollout_wins_over_a_stale_status() {
        let mut w = World::new(2);
        w.reconcile(at(0));
        let rolling = w.state.clone().unwrap();
        assert_eq!(rolling.phase, Phase::RollingOut);
        let stale = RolloutState { phase: Phase::Completed, phase_since: at(-60), ..rolling.clone() };
        assert_eq!(latest_state(Some(stale.clone()), Some((at(0), Some(rolling.clone())))), Some(rolling.clone()));
        // what the stale state alone would do: the template already carries TO, so partition 0
        w.state = Some(stale.clone());
        assert_eq!(step(&w.input(at(1))).partition, 0);
        // a newer status (another leader went on) wins over an older memory, and so does the
        // status when this operator has applied nothing yet
        let newer = RolloutState { phase: Phase::Verifying, phase_since: at(5), ..rolling.clone() };
        assert_eq!(latest_state(Some(newer.clone()), Some((at(0), Some(rolling.clone())))), Some(newer.clone()));
        assert_eq!(latest_state(Some(stale.clone()), None), Some(stale));
        // a rollout this operator ended (None) is not revived by a stale status
        assert_eq!(latest_state(Some(rolling), Some((at(10), None))), None);
    }

    #[test]
    fn steady_when_desired_is_running() {
        let mut w = World::new(3);
        w.desired = FROM.into();
        let out = w.reconcile(at(0));
        assert_eq!(
            out,
            RolloutStep {
                state: None,
                template_version: FROM.into(),
                partition: 0,
                delete_pods: vec![],
                transition: None
            }
        );
        w.assert_settled(at(10));
    }

    #[test]
    fn full_rollout_one_pod_at_a_time_from_the_top() {
        let mut w = World::new(3);
        let out = w.reconcile(at(0));
        assert_eq!((w.phase(), out.template_version.as_str(), out.partition), (Some(Phase::RollingOut), TO, 2));
        assert_eq!(out.transition.as_ref().unwrap().reason, REASON_STARTED);
        w.assert_settled(at(5));

        let mut now = 10;
        for (k, done) in [(2, 1), (1, 2), (0, 3)] {
            // The StatefulSet replaced pod k; it becomes Ready.
            set_pod(&mut w.pods, k, TO, Some(at(now)));
            let out = w.reconcile(at(now));
            assert_eq!((w.phase(), out.partition), (Some(Phase::Verifying), k), "pod {k}");
            assert_eq!(out.transition.unwrap().reason, REASON_VERIFYING);
            w.assert_settled(at(now + 29));

            now += 30;
            let out = w.reconcile(at(now));
            assert_eq!(w.state.as_ref().unwrap().updated, done);
            if k > 0 {
                assert_eq!(
                    (w.phase(), out.partition, out.template_version.as_str()),
                    (Some(Phase::RollingOut), k - 1, TO)
                );
                let t = out.transition.unwrap();
                assert_eq!(t.reason, REASON_POD_UPDATED);
                assert!(t.message.contains(&format!("pod broker-{k} verified on {TO}")), "{}", t.message);
                w.assert_settled(at(now + 1));
            } else {
                assert_eq!((w.phase(), out.partition, out.template_version.as_str()), (Some(Phase::Completed), 0, TO));
                assert_eq!(out.transition.unwrap().reason, REASON_COMPLETED);
            }
            now += 5;
        }
        // Afterwards: steady on the new version, the Completed state kept as history.
        w.assert_settled(at(now + 3600));
        assert_eq!(w.running, TO);
        let reasons: Vec<_> = w.events.iter().map(|e| e.0).collect();
        assert_eq!(
            reasons,
            [
                REASON_STARTED,
                REASON_VERIFYING,
                REASON_POD_UPDATED,
                REASON_VERIFYING,
                REASON_POD_UPDATED,
                REASON_VERIFYING,
                REASON_COMPLETED
            ]
        );
        let status = w.state.as_ref().unwrap().to_status();
        assert_eq!((status.phase.as_str(), status.updated_replicas), ("Completed", 3));
    }

    #[test]
    fn waits_outside_the_window_and_starts_when_it_opens() {
        let windows = [Window::parse(&crate::crd::broker::MaintenanceWindow {
            schedule: "0 2 * * *".into(),
            duration: crate::crd::common::GoDuration::new("1h"),
            time_zone: "UTC".into(),
        })
        .unwrap()];
        let mut w = World::new(2);
        let before: Timestamp = "2026-03-10T01:30:00Z".parse().unwrap();
        w.may_start = is_open(&windows, before);
        let out = w.reconcile(before);
        assert_eq!((w.phase(), out.template_version.as_str(), out.partition), (Some(Phase::Pending), FROM, 0));
        let t = out.transition.unwrap();
        assert_eq!(t.reason, REASON_PENDING);
        assert!(t.message.contains("waiting for the maintenance window"), "{}", t.message);
        let later: Timestamp = "2026-03-10T01:59:59Z".parse().unwrap();
        w.may_start = is_open(&windows, later);
        w.assert_settled(later);

        let opened: Timestamp = "2026-03-10T02:00:00Z".parse().unwrap();
        w.may_start = is_open(&windows, opened);
        let out = w.reconcile(opened);
        assert_eq!((w.phase(), out.template_version.as_str(), out.partition), (Some(Phase::RollingOut), TO, 1));
        assert_eq!(out.transition.unwrap().reason, REASON_STARTED);
        assert_eq!(w.state.as_ref().unwrap().started_at, opened);
    }

    #[test]
    fn pending_follows_a_new_target_and_is_cancelled_when_reverted() {
        let mut w = World::new(1);
        w.may_start = false;
        w.reconcile(at(0));
        let since = w.state.as_ref().unwrap().started_at;
        w.desired = "2.0.21".into();
        let out = w.reconcile(at(10));
        assert_eq!(out.transition.unwrap().reason, REASON_PENDING);
        let s = w.state.as_ref().unwrap();
        assert_eq!((s.phase, s.to_version.as_str(), s.started_at), (Phase::Pending, "2.0.21", since));
        w.assert_settled(at(20));

        w.desired = FROM.into();
        let out = w.reconcile(at(30));
        assert_eq!((out.state, out.transition.unwrap().reason), (None, REASON_CANCELLED));
        w.assert_settled(at(40));
    }

    #[test]
    fn timeout_rolls_back_then_fails_and_is_not_retried() {
        let mut w = World::new(3);
        w.reconcile(at(0));
        // Pod 2 is recreated on the new version but never becomes Ready.
        set_pod(&mut w.pods, 2, TO, None);
        w.assert_settled(at(299));
        let out = w.reconcile(at(300));
        assert_eq!(w.phase(), Some(Phase::RollingBack));
        assert_eq!((out.template_version.as_str(), out.partition, out.delete_pods.clone()), (FROM, 0, vec![2]));
        let t = out.transition.unwrap();
        assert_eq!(t.reason, REASON_ROLLING_BACK);
        assert!(
            t.message.contains("pod broker-2") && t.message.contains(TO) && t.message.contains("5m"),
            "{}",
            t.message
        );
        // Still broken: the delete request is repeated, nothing else changes.
        let again = w.reconcile(at(310));
        assert_eq!((again.transition, again.delete_pods), (None, vec![2]));

        // The deleted pod comes back on the old version and becomes Ready.
        set_pod(&mut w.pods, 2, FROM, Some(at(320)));
        let out = w.reconcile(at(330));
        assert_eq!((w.phase(), out.template_version.as_str(), out.partition), (Some(Phase::Failed), FROM, 0));
        assert!(out.delete_pods.is_empty());
        let t = out.transition.unwrap();
        assert_eq!(t.reason, REASON_FAILED);
        for needle in ["pod broker-2", TO, FROM, "5m", "failed"] {
            assert!(t.message.contains(needle), "{needle:?} missing in {}", t.message);
        }

        // Failed stays Failed while the same version is desired, window or not.
        w.assert_settled(at(3600));
        w.may_start = false;
        w.assert_settled(at(7200));
        assert_eq!(w.running, FROM);

        // A different desired version starts a new rollout (here: Pending, the window is closed).
        w.desired = "2.0.21".into();
        let out = w.reconcile(at(7300));
        assert_eq!((w.phase(), out.transition.unwrap().reason), (Some(Phase::Pending), REASON_PENDING));
        w.may_start = true;
        let out = w.reconcile(at(7400));
        let s = w.state.as_ref().unwrap();
        assert_eq!((s.phase, s.from_version.as_str(), s.to_version.as_str()), (Phase::RollingOut, FROM, "2.0.21"));
        assert_eq!(out.partition, 2);
    }

    #[test]
    fn rollback_only_finishes_when_every_pod_is_back_and_ready() {
        let mut w = World::new(3);
        w.reconcile(at(0));
        // Pod 2 passes, pod 1 fails.
        set_pod(&mut w.pods, 2, TO, Some(at(10)));
        w.reconcile(at(10));
        w.reconcile(at(40));
        assert_eq!((w.phase(), w.state.as_ref().unwrap().updated), (Some(Phase::RollingOut), 1));
        set_pod(&mut w.pods, 1, TO, None);
        let out = w.reconcile(at(40 + 300));
        assert_eq!((w.phase(), out.delete_pods), (Some(Phase::RollingBack), vec![1]));
        assert!(out.transition.unwrap().message.contains("pod broker-1"));
        // Pod 1 is back; pod 2 (Ready on the new version) is being replaced by the StatefulSet.
        set_pod(&mut w.pods, 1, FROM, Some(at(350)));
        set_pod(&mut w.pods, 2, TO, None);
        let out = w.reconcile(at(360));
        assert_eq!((out.transition, out.delete_pods), (None, vec![2]));
        set_pod(&mut w.pods, 2, FROM, Some(at(370)));
        let out = w.reconcile(at(380));
        assert_eq!(w.phase(), Some(Phase::Failed));
        assert!(out.transition.unwrap().message.contains("pod broker-1 was not Ready on 2.0.22"));
    }

    #[test]
    fn un_ready_during_verification_goes_back_with_the_original_timeout() {
        let mut w = World::new(2);
        w.reconcile(at(0));
        set_pod(&mut w.pods, 1, TO, Some(at(100)));
        assert_eq!(w.reconcile(at(100)).transition.unwrap().reason, REASON_VERIFYING);
        // Flaps before the grace period is over.
        set_pod(&mut w.pods, 1, TO, None);
        let out = w.reconcile(at(120));
        assert_eq!((w.phase(), out.partition), (Some(Phase::RollingOut), 1));
        assert_eq!(out.transition.unwrap().reason, REASON_POD_NOT_READY);
        assert_eq!(w.state.as_ref().unwrap().pod_started_at, at(0), "timeout still counts from the pod's update");
        w.assert_settled(at(150));
        // Ready again, verified again, with the grace measured from the new Ready transition.
        set_pod(&mut w.pods, 1, TO, Some(at(200)));
        w.reconcile(at(200));
        assert_eq!(w.phase(), Some(Phase::Verifying));
        w.assert_settled(at(229));
        let out = w.reconcile(at(230));
        assert_eq!((w.phase(), out.partition), (Some(Phase::RollingOut), 0));

        // Another run: the flap happens after the pod's timeout has expired → straight to RollingBack.
        let mut w = World::new(2);
        w.reconcile(at(0));
        set_pod(&mut w.pods, 1, TO, Some(at(290)));
        w.reconcile(at(290));
        set_pod(&mut w.pods, 1, TO, None);
        let out = w.reconcile(at(301));
        assert_eq!((w.phase(), out.transition.unwrap().reason), (Some(Phase::RollingBack), REASON_ROLLING_BACK));
    }

    #[test]
    fn grace_counts_from_the_pods_own_ready_transition() {
        let mut w = World::new(1);
        w.reconcile(at(0));
        // moat saw it Ready at 100, but the pod re-became Ready at 120 between two reconciles.
        set_pod(&mut w.pods, 0, TO, Some(at(100)));
        w.reconcile(at(100));
        set_pod(&mut w.pods, 0, TO, Some(at(120)));
        w.assert_settled(at(130));
        w.assert_settled(at(149));
        assert_eq!(w.reconcile(at(150)).transition.unwrap().reason, REASON_COMPLETED);
    }

    #[test]
    fn a_desired_change_mid_rollout_restarts_from_the_same_baseline() {
        let mut w = World::new(3);
        w.reconcile(at(0));
        set_pod(&mut w.pods, 2, TO, Some(at(10)));
        w.reconcile(at(10));
        w.reconcile(at(40));
        assert_eq!(w.state.as_ref().unwrap().updated, 1);
        // Meanwhile a newer patch is wanted; the window has closed but the rollout is under way.
        w.desired = "2.0.23".into();
        w.may_start = false;
        let out = w.reconcile(at(50));
        let s = w.state.as_ref().unwrap();
        assert_eq!(
            (s.phase, s.from_version.as_str(), s.to_version.as_str(), s.updated),
            (Phase::RollingOut, FROM, "2.0.23", 0)
        );
        assert_eq!((out.template_version.as_str(), out.partition), ("2.0.23", 2));
        assert_eq!(out.transition.unwrap().reason, REASON_RESTARTED);
        w.assert_settled(at(60));

        // During a rollback a change back to from_version is not a restart.
        set_pod(&mut w.pods, 2, "2.0.23", None);
        w.reconcile(at(50 + 300));
        assert_eq!(w.phase(), Some(Phase::RollingBack));
        w.desired = FROM.into();
        w.assert_settled(at(400));
        // ...but another version is.
        w.desired = TO.into();
        w.may_start = true;
        let out = w.reconcile(at(410));
        assert_eq!((w.phase(), out.transition.unwrap().reason), (Some(Phase::RollingOut), REASON_RESTARTED));
        assert_eq!(w.state.as_ref().unwrap().from_version, FROM);
    }

    #[test]
    fn a_stuck_pod_is_deleted_while_rolling_out() {
        let mut w = World::new(2);
        // Pod 1 crash-loops on the old version before the rollout reaches it.
        set_pod(&mut w.pods, 1, FROM, None);
        let out = w.reconcile(at(0));
        assert_eq!(out.delete_pods, vec![1]);
        // Pods on the template version or with an unknown version are never deleted.
        w.pods[1].version = None;
        assert!(w.reconcile(at(1)).delete_pods.is_empty());
    }

    #[test]
    fn status_round_trip() {
        let mut w = World::new(2);
        w.reconcile(at(0));
        let state = w.state.clone().unwrap();
        let back = RolloutState::from_status(&state.to_status()).unwrap();
        assert_eq!(back, state);
        for phase in Phase::ALL {
            assert_eq!(phase.to_string().parse::<Phase>().unwrap(), phase);
        }
        assert!("Unknown".parse::<Phase>().is_err());
        assert!(RolloutState::from_status(&UpgradeStatus::default()).is_none());
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(json["phase"], "RollingOut");
        assert_eq!(serde_json::from_value::<RolloutState>(json).unwrap(), state);
    }

    #[test]
    fn every_state_settles_under_a_fixed_observation() {
        // Whatever the state, repeating step with the same observation reaches a fixed point
        // within a few transitions and then stays there.
        let observations: Vec<Vec<PodView>> = vec![
            pods(3, FROM),
            pods(3, TO),
            {
                let mut p = pods(3, FROM);
                set_pod(&mut p, 2, TO, None);
                p
            },
            {
                let mut p = pods(3, FROM);
                set_pod(&mut p, 2, TO, Some(at(0)));
                p
            },
        ];
        for pods in observations {
            for may_start in [false, true] {
                for desired in [FROM, TO] {
                    let mut w = World::new(3);
                    w.pods = pods.clone();
                    w.desired = desired.into();
                    w.may_start = may_start;
                    let now = at(1000);
                    for _ in 0..8 {
                        w.reconcile(now);
                    }
                    w.assert_settled(now);
                }
            }
        }
    }
}
