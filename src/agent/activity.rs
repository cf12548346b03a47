//! What Mosquitto's own log says about its clients: connections accepted, logins refused and why,
//! and bursts of refused logins (suspicious activity). Pure: log lines in, counters and a verdict
//! out, the clock injected. Nothing here reads or keeps a credential: Mosquitto never logs
//! passwords, and the only username kept is whether a login was one of moat's canaries.
//!
//! Mosquitto 2.0 names neither address nor port in a refusal ("Client <unknown> disconnected, not
//! authorised."), only in the "New connection from A:p on port L." line before it; 2.1 adds
//! `[A:p]` to the refusal. The monitor pairs them: exactly with 2.1; with 2.0 a refusal is
//! attributed to a listener (or source) when every connection still in its handshake is on that
//! listener (from that source), else to `unknown` (and to the set of sources it may have come
//! from: it is moat's own when they all are). A TLS handshake that fails at once is logged
//! as "Client connection from A failed: ...", with the source but no port.
//!
//! moat attacks its own brokers at every audit (attestation). Refusals from the operator's
//! address are not suspicious: the agent learns that address from moat's canary logins and from
//! the callers of its `/status` (which only the operator's pods may reach), and judges a refusal
//! only once it is [`GRACE`] old, by when the canary login of the same audit has happened.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write;
use std::time::Duration;

use jiff::Timestamp;

/// Why a login was refused before a session began.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Unknown user, wrong password, no credentials (CONNACK "not authorised").
    NotAuthorised,
    /// The TLS handshake failed: plaintext on a TLS port, an old TLS version, a certificate the
    /// broker does not trust or has revoked, no certificate where one is required.
    Tls,
    /// A malformed or out-of-protocol first packet.
    Protocol,
    /// The listener's `max_connections` was reached.
    MaxConnections,
}

impl Reason {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotAuthorised => "not_authorised",
            Reason::Tls => "tls",
            Reason::Protocol => "protocol",
            Reason::MaxConnections => "max_connections",
        }
    }
}

/// How a connection that never became a session, or did, ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// A session began (CONNACK success).
    Accepted,
    /// The login was refused.
    Refused(Reason),
    /// Closed before any login: TCP health checks and port scans (no handshake, no CONNECT).
    Abandoned,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Refused(_) => "refused",
            Outcome::Abandoned => "abandoned",
        }
    }
}

/// One log line, as far as the monitor cares.
#[derive(Debug, PartialEq, Eq)]
enum Line<'a> {
    /// `New connection from A:p on port L.`
    Accepting { addr: &'a str, src: u16, listener: u16 },
    /// `New client connected from A:p as ID (p2, c1, k60, u'name').`
    Connected { addr: &'a str, src: u16, client: &'a str, username: Option<&'a str> },
    /// `OpenSSL Error[0]: ...`; `eof` when the peer closed without a handshake.
    Tls { eof: bool },
    /// `Client connection from A failed: <TLS error>.` (a handshake that failed at once, before
    /// any "New connection" line) or `... denied: max_connections exceeded.`; `None` for a
    /// peer that closed without a handshake.
    Rejected { addr: &'a str, reason: Option<Reason> },
    /// `Client ID [A:p] disconnected...` / `Client ID closed its connection.`
    Ended { client: &'a str, peer: Option<(&'a str, u16)>, how: Ended },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    NotAuthorised,
    Protocol,
    Closed,
    Other,
}

/// The message of a log line without Mosquitto's timestamp prefix (`<ts>: `, a prefix without
/// spaces), and the timestamp when it is moat's `%Y-%m-%dT%H:%M:%S` (UTC in a pod).
fn split_timestamp(line: &str) -> (Option<Timestamp>, &str) {
    match line.split_once(": ") {
        Some((ts, msg)) if !ts.is_empty() && !ts.contains(' ') => {
            let at = ts
                .parse::<jiff::civil::DateTime>()
                .ok()
                .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
                .map(|z| z.timestamp());
            (at, msg)
        }
        _ => (None, line),
    }
}

fn addr_port(s: &str) -> Option<(&str, u16)> {
    let (a, p) = s.rsplit_once(':')?;
    Some((a, p.parse().ok()?))
}

fn parse(msg: &str) -> Option<Line<'_>> {
    if let Some(rest) = msg.strip_prefix("New connection from ") {
        let (peer, listener) = rest.strip_suffix('.')?.split_once(" on port ")?;
        let (addr, src) = addr_port(peer)?;
        return Some(Line::Accepting { addr, src, listener: listener.parse().ok()? });
    }
    if let Some(rest) = msg.strip_prefix("New client connected from ") {
        let (peer, rest) = rest.split_once(" as ")?;
        let (addr, src) = addr_port(peer)?;
        let (client, props) = rest.rsplit_once(" (p")?;
        let username = props.split_once("u'").and_then(|(_, u)| u.strip_suffix("').")).filter(|u| !u.is_empty());
        return Some(Line::Connected { addr, src, client, username });
    }
    if let Some(rest) = msg.strip_prefix("Client connection from ") {
        if let Some((addr, error)) = rest.split_once(" failed: ") {
            let reason = (!error.contains("unexpected eof")).then_some(Reason::Tls);
            return Some(Line::Rejected { addr, reason });
        }
        let (addr, _) = rest.split_once(" denied: max_connections")?;
        return Some(Line::Rejected { addr, reason: Some(Reason::MaxConnections) });
    }
    if msg.starts_with("OpenSSL Error") {
        return Some(Line::Tls { eof: msg.contains("unexpected eof") });
    }
    let rest = msg.strip_prefix("Client ")?;
    let (who, what) = rest
        .split_once(" disconnected")
        .or_else(|| rest.split_once(" closed its connection").map(|(w, _)| (w, " closed")))
        .or_else(|| rest.split_once(" has exceeded timeout").map(|(w, _)| (w, " timeout")))?;
    let (client, peer) = match who.rsplit_once(" [") {
        Some((c, p)) => (c, p.strip_suffix(']').and_then(addr_port)),
        None => (who, None),
    };
    let what = what.to_ascii_lowercase();
    let how = if what.contains("not authorised") || what.contains("bad username or password") {
        Ended::NotAuthorised
    } else if what.contains("protocol error") || what.contains("malformed packet") {
        Ended::Protocol
    } else if what.contains("closed") {
        Ended::Closed
    } else {
        Ended::Other
    };
    Some(Line::Ended { client, peer, how })
}

/// Connections still in their handshake that the monitor keeps at most (a flood of half-open
/// connections must not grow the agent).
const MAX_PENDING: usize = 4096;
/// Sources of moat's own canary logins remembered.
const MAX_OWN: usize = 16;
/// Candidate sources of a refusal remembered (more: the source is unknown).
const MAX_CANDIDATES: usize = 8;
/// Refusals remembered for the window.
const MAX_RECENT: usize = 100_000;
/// The longest window a caller may ask about (refusals are kept this long).
pub const MAX_WINDOW: Duration = Duration::from_secs(3600);
/// How old a refusal must be before it is judged (moat's attestation logs its canary in within
/// this long of its refused attempts, so their source is known as moat's by then).
pub const GRACE: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Pending {
    addr: String,
    src: u16,
    listener: u16,
}

#[derive(Clone, Debug)]
struct Refusal {
    at: Timestamp,
    /// The sources it may have come from (one: attributed; none: unknown), sorted.
    sources: Vec<String>,
    reason: Reason,
}

/// Refused logins crossing the threshold within the window: suspicious activity.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Suspicion {
    /// Refused logins within the window (moat's own attestation attempts not counted).
    pub refused: u64,
    /// The window, in seconds.
    pub window_seconds: u64,
    /// The oldest of them.
    pub since: Option<Timestamp>,
    /// By reason (`not_authorised`, `tls`, `protocol`, `max_connections`).
    pub reasons: BTreeMap<String, u64>,
    /// The sources with the most refusals (address, or `unattributed`), most first, at most 5.
    pub sources: Vec<(String, u64)>,
}

impl Suspicion {
    /// One line for an Event: counts, reasons and sources; nothing a client sent.
    pub fn summary(&self) -> String {
        let reasons: Vec<String> = self.reasons.iter().map(|(r, n)| format!("{r} {n}")).collect();
        let sources: Vec<String> = self.sources.iter().map(|(s, n)| format!("{s} ({n})")).collect();
        format!(
            "{} refused logins within {}s ({}); from {}",
            self.refused,
            self.window_seconds,
            reasons.join(", "),
            sources.join(", ")
        )
    }
}

/// The monitor of one broker's log.
#[derive(Debug)]
pub struct Monitor {
    threshold: u64,
    window: Duration,
    pending: VecDeque<Pending>,
    sessions: std::collections::HashSet<String>,
    tls_error: Option<bool>,
    own: VecDeque<String>,
    recent: VecDeque<Refusal>,
    connections: BTreeMap<(String, &'static str), u64>,
    refusals: BTreeMap<(String, Reason, bool), u64>,
    lines: u64,
}

impl Monitor {
    /// A monitor that calls `threshold` refused logins within `window` suspicious (0: never)
    /// unless asked about another threshold and window.
    pub fn new(threshold: u64, window: Duration) -> Self {
        Self {
            threshold,
            window,
            pending: VecDeque::new(),
            sessions: Default::default(),
            tls_error: None,
            own: VecDeque::new(),
            recent: VecDeque::new(),
            connections: BTreeMap::new(),
            refusals: BTreeMap::new(),
            lines: 0,
        }
    }

    /// Takes one log line read at `now` (the line's own timestamp wins when it has one).
    pub fn observe(&mut self, line: &str, now: Timestamp) {
        self.lines += 1;
        let (at, msg) = split_timestamp(line);
        let at = at.unwrap_or(now);
        match parse(msg) {
            Some(Line::Accepting { addr, src, listener }) => {
                push_bounded(&mut self.pending, Pending { addr: addr.into(), src, listener }, MAX_PENDING);
            }
            Some(Line::Connected { addr, src, client, username }) => {
                let (listener, _) = self.take_pending(Some((addr, src)));
                self.tls_error = None;
                self.count(listener, Outcome::Accepted);
                self.sessions.insert(client.into());
                if username.is_some_and(|u| crate::validate::RESERVED_USERNAMES.contains(&u)) {
                    self.own_source(addr);
                }
            }
            Some(Line::Tls { eof }) => {
                self.tls_error.get_or_insert(eof);
            }
            Some(Line::Rejected { addr, reason }) => {
                let outcome = reason.map_or(Outcome::Abandoned, Outcome::Refused);
                self.refuse(None, vec![addr.to_string()], outcome, at);
            }
            Some(Line::Ended { client, peer, how }) => {
                if client != "<unknown>" && (self.sessions.remove(client) || how != Ended::NotAuthorised) {
                    // the end of a session (one that began before the agent read the log, or
                    // was taken over, is not known by id); only a refused CONNECT can name a
                    // client that never had a session
                    self.tls_error = None;
                    return;
                }
                let (listener, sources) = self.take_pending(peer);
                let outcome = match (self.tls_error.take(), how) {
                    (Some(true), _) => Outcome::Abandoned,
                    (Some(false), _) => Outcome::Refused(Reason::Tls),
                    (None, Ended::NotAuthorised) => Outcome::Refused(Reason::NotAuthorised),
                    (None, Ended::Protocol) => Outcome::Refused(Reason::Protocol),
                    (None, Ended::Closed | Ended::Other) => Outcome::Abandoned,
                };
                self.refuse(listener, sources, outcome, at);
            }
            None => {}
        }
    }

    /// Records `addr` as the operator's (its refusals are moat's own attestation).
    pub fn own_source(&mut self, addr: &str) {
        if !self.own.iter().any(|a| a == addr) {
            push_bounded(&mut self.own, addr.into(), MAX_OWN);
        }
    }

    /// Counts a connection that never became a session.
    fn refuse(&mut self, listener: Option<u16>, sources: Vec<String>, outcome: Outcome, at: Timestamp) {
        self.count(listener, outcome);
        if let Outcome::Refused(reason) = outcome {
            let r = Refusal { at, sources, reason };
            *self.refusals.entry((label(listener), reason, self.is_own(&r))).or_default() += 1;
            push_bounded(&mut self.recent, r, MAX_RECENT);
        }
    }

    /// Whether every source a refusal may have come from is the operator's.
    fn is_own(&self, r: &Refusal) -> bool {
        !r.sources.is_empty() && r.sources.iter().all(|s| self.own.contains(s))
    }

    /// Resolves the pending connection of `peer` (exact), or with no peer the oldest one: the
    /// listener when every candidate shares it, and the sources it may have come from.
    fn take_pending(&mut self, peer: Option<(&str, u16)>) -> (Option<u16>, Vec<String>) {
        if let Some((addr, src)) = peer {
            return match self.pending.iter().position(|p| p.addr == addr && p.src == src) {
                Some(i) => (self.pending.remove(i).map(|p| p.listener), vec![addr.to_string()]),
                None => (None, vec![addr.to_string()]),
            };
        }
        let Some(first) = self.pending.front() else { return (None, vec![]) };
        let listener = self.pending.iter().all(|p| p.listener == first.listener).then_some(first.listener);
        let sources: std::collections::BTreeSet<&str> = self.pending.iter().map(|p| p.addr.as_str()).collect();
        let sources =
            if sources.len() <= MAX_CANDIDATES { sources.into_iter().map(String::from).collect() } else { vec![] };
        self.pending.pop_front();
        (listener, sources)
    }

    fn count(&mut self, listener: Option<u16>, outcome: Outcome) {
        *self.connections.entry((label(listener), outcome.as_str())).or_default() += 1;
    }

    /// [`Monitor::suspicion_over`] the monitor's own threshold and window.
    pub fn suspicion(&mut self, now: Timestamp) -> Option<Suspicion> {
        self.suspicion_over(now, self.threshold, self.window)
    }

    /// Refused logins within `window` (at most [`MAX_WINDOW`]) before `now`, at least
    /// [`GRACE`] old, that were not moat's own attempts, when they reach `threshold` (0: never).
    pub fn suspicion_over(&mut self, now: Timestamp, threshold: u64, window: Duration) -> Option<Suspicion> {
        let window = window.min(MAX_WINDOW);
        let span = |d: Duration| jiff::SignedDuration::try_from(d).unwrap_or_default();
        let (kept, start, judged) = (now - span(MAX_WINDOW), now - span(window), now - span(GRACE));
        while self.recent.front().is_some_and(|r| r.at < kept) {
            self.recent.pop_front();
        }
        let theirs: Vec<&Refusal> =
            self.recent.iter().filter(|r| r.at >= start && r.at <= judged && !self.is_own(r)).collect();
        if threshold == 0 || (theirs.len() as u64) < threshold {
            return None;
        }
        let mut s = Suspicion {
            refused: theirs.len() as u64,
            window_seconds: window.as_secs(),
            since: theirs.first().map(|r| r.at),
            ..Default::default()
        };
        let mut sources: BTreeMap<String, u64> = BTreeMap::new();
        for r in &theirs {
            *s.reasons.entry(r.reason.as_str().into()).or_default() += 1;
            let source = match r.sources.as_slice() {
                [one] => one.clone(),
                _ => "unattributed".into(),
            };
            *sources.entry(source).or_default() += 1;
        }
        let mut sources: Vec<(String, u64)> = sources.into_iter().collect();
        sources.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        sources.truncate(5);
        s.sources = sources;
        Some(s)
    }

    /// The counters in the Prometheus text format (`moat_broker_*`).
    pub fn exposition(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP moat_broker_log_lines_total Lines of the broker's log read by the agent.");
        let _ = writeln!(out, "# TYPE moat_broker_log_lines_total counter");
        let _ = writeln!(out, "moat_broker_log_lines_total {}", self.lines);
        let _ = writeln!(
            out,
            "# HELP moat_broker_connections_total Client connections by listener port and result (accepted: a session began; refused: the login was refused; abandoned: closed before any login)."
        );
        let _ = writeln!(out, "# TYPE moat_broker_connections_total counter");
        for ((listener, result), n) in &self.connections {
            let _ = writeln!(out, "moat_broker_connections_total{{listener=\"{listener}\",result=\"{result}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP moat_broker_auth_failures_total Refused logins by listener port, reason (not_authorised, tls, protocol, max_connections) and origin (moat: the operator's own attestation; other)."
        );
        let _ = writeln!(out, "# TYPE moat_broker_auth_failures_total counter");
        for ((listener, reason, own), n) in &self.refusals {
            let origin = if *own { "moat" } else { "other" };
            let _ = writeln!(
                out,
                "moat_broker_auth_failures_total{{listener=\"{listener}\",reason=\"{}\",origin=\"{origin}\"}} {n}",
                reason.as_str()
            );
        }
    }
}

/// Appends to a queue kept at most `max` long (the oldest entry goes).
fn push_bounded<T>(queue: &mut VecDeque<T>, item: T, max: usize) {
    if queue.len() >= max {
        queue.pop_front();
    }
    queue.push_back(item);
}

fn label(listener: Option<u16>) -> String {
    listener.map(|l| l.to_string()).unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    /// Lines Mosquitto 2.0.11 wrote (Debian bookworm), one attempt of each kind, as captured.
    const MOSQUITTO_2_0: &str = "\
2026-12-07T11:39:36: New connection from 127.0.0.1:47638 on port 18883.
2026-12-07T11:39:36: New client connected from 127.0.0.1:47638 as auto-CBD6399C (p2, c1, k60, u'alice').
2026-12-07T11:39:36: New connection from 127.0.0.1:47654 on port 18883.
2026-12-07T11:39:36: Client <unknown> disconnected, not authorised.
2026-12-07T11:39:36: Client auto-CBD6399C disconnected.
2026-12-07T11:39:36: New connection from 127.0.0.1:47684 on port 18883.
2026-12-07T11:39:36: OpenSSL Error[0]: error:0A00010B:SSL routines::wrong version number
2026-12-07T11:39:36: Client <unknown> disconnected: Protocol error.
2026-12-07T11:39:36: New connection from 10.0.0.9:59624 on port 18884.
2026-12-07T11:39:36: OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed
2026-12-07T11:39:36: Client <unknown> disconnected: Protocol error.
2026-12-07T11:39:37: New connection from 10.0.0.1:52268 on port 18883.
2026-12-07T11:39:37: OpenSSL Error[0]: error:0A000126:SSL routines::unexpected eof while reading
2026-12-07T11:39:37: Client <unknown> disconnected: Protocol error.
2026-12-07T12:05:20: Client connection from 10.0.0.4 failed: error:0A000102:SSL routines::unsupported protocol.
2026-12-07T12:05:20: Client connection from 10.0.0.4 failed: error:0A000126:SSL routines::unexpected eof while reading.
2026-12-07T12:05:21: Client connection from 10.0.0.4 denied: max_connections exceeded.
";

    fn fed(text: &str, threshold: u64) -> Monitor {
        let mut m = Monitor::new(threshold, Duration::from_secs(60));
        for l in text.lines() {
            m.observe(l, t(0));
        }
        m
    }

    fn metrics(m: &Monitor) -> String {
        let mut s = String::new();
        m.exposition(&mut s);
        s
    }

    #[test]
    fn mosquitto_2_0_lines_count_by_listener_result_and_reason() {
        let m = fed(MOSQUITTO_2_0, 0);
        let s = metrics(&m);
        for want in [
            "moat_broker_connections_total{listener=\"18883\",result=\"accepted\"} 1",
            "moat_broker_connections_total{listener=\"18883\",result=\"refused\"} 2",
            "moat_broker_connections_total{listener=\"18884\",result=\"refused\"} 1",
            "moat_broker_connections_total{listener=\"18883\",result=\"abandoned\"} 1",
            "moat_broker_auth_failures_total{listener=\"18883\",reason=\"not_authorised\",origin=\"other\"} 1",
            "moat_broker_auth_failures_total{listener=\"18883\",reason=\"tls\",origin=\"other\"} 1",
            "moat_broker_auth_failures_total{listener=\"18884\",reason=\"tls\",origin=\"other\"} 1",
            "moat_broker_auth_failures_total{listener=\"unknown\",reason=\"tls\",origin=\"other\"} 1",
            "moat_broker_auth_failures_total{listener=\"unknown\",reason=\"max_connections\",origin=\"other\"} 1",
            "moat_broker_connections_total{listener=\"unknown\",result=\"abandoned\"} 1",
            "moat_broker_log_lines_total 17",
        ] {
            assert!(s.contains(want), "missing {want} in\n{s}");
        }
        assert!(m.pending.is_empty(), "every connection was resolved: {:?}", m.pending);
        assert!(m.sessions.is_empty(), "alice's session ended");
    }

    #[test]
    fn mosquitto_2_1_refusals_carry_their_peer() {
        let mut m = Monitor::new(1, Duration::from_secs(60));
        for l in [
            "New connection from 10.0.0.7:1000 on port 8883.",
            "New connection from 10.0.0.8:2000 on port 1883.",
            "Client <unknown> [10.0.0.8:2000] disconnected: bad username or password.",
            "Client <unknown> [10.0.0.7:1000] disconnected: not authorised.",
        ] {
            m.observe(l, t(10));
        }
        let s = metrics(&m);
        assert!(s.contains("listener=\"1883\",reason=\"not_authorised\",origin=\"other\"} 1"), "{s}");
        assert!(s.contains("listener=\"8883\",reason=\"not_authorised\",origin=\"other\"} 1"), "{s}");
        assert_eq!(m.suspicion(t(10)), None, "judged only once GRACE old");
        let v = m.suspicion(t(20)).unwrap();
        assert_eq!(v.sources, vec![("10.0.0.7".into(), 1), ("10.0.0.8".into(), 1)]);
    }

    #[test]
    fn mosquitto_2_0_refusals_are_attributed_only_when_unambiguous() {
        let mut m = Monitor::new(1, Duration::from_secs(60));
        m.observe("New connection from 10.0.0.7:1000 on port 8883.", t(0));
        m.observe("New connection from 10.0.0.8:2000 on port 8883.", t(0));
        m.observe("Client <unknown> disconnected, not authorised.", t(0));
        // same listener, two sources: the listener is known, the source is not
        let v = m.suspicion(t(10)).unwrap();
        assert_eq!(v.sources, vec![("unattributed".into(), 1)]);
        m.observe("New connection from 10.0.0.8:2001 on port 1883.", t(0));
        m.observe("Client <unknown> disconnected, not authorised.", t(0));
        let s = metrics(&m);
        assert!(s.contains("listener=\"8883\",reason=\"not_authorised\",origin=\"other\"} 1"), "{s}");
        assert!(s.contains("listener=\"unknown\",reason=\"not_authorised\",origin=\"other\"} 1"), "{s}");
        // every candidate source is moat's: moat's own
        m.own_source("10.0.0.7");
        m.own_source("10.0.0.8");
        assert_eq!(m.suspicion(t(10)), None);
    }

    #[test]
    fn a_burst_of_refusals_is_suspicious_until_it_leaves_the_window() {
        let mut m = Monitor::new(3, Duration::from_secs(60));
        for i in 0..3 {
            m.observe(&format!("New connection from 192.0.2.1:{} on port 8883.", 100 + i), t(i));
            m.observe("Client <unknown> disconnected, not authorised.", t(i));
        }
        assert_eq!(m.suspicion(t(11)), None, "the third is not GRACE old yet");
        let v = m.suspicion(t(12)).unwrap();
        assert_eq!(v.sources, vec![("192.0.2.1".into(), 3)]);
        assert_eq!(v.reasons, BTreeMap::from([("not_authorised".into(), 3)]));
        assert_eq!(v.since, Some(t(0)));
        assert!(v.summary().starts_with("3 refused logins within 60s (not_authorised 3); from 192.0.2.1 (3)"));
        assert_eq!(m.suspicion(t(59)).map(|s| s.refused), Some(3));
        assert_eq!(m.suspicion(t(61)), None, "the first refusal left the window");
        assert_eq!(
            m.suspicion_over(t(61), 3, Duration::from_secs(120)).map(|s| s.refused),
            Some(3),
            "kept for longer windows"
        );
        assert_eq!(m.suspicion_over(t(61), 4, Duration::from_secs(120)), None);
        assert!(Monitor::new(0, Duration::from_secs(60)).suspicion(t(0)).is_none());
    }

    #[test]
    fn refusals_from_the_source_of_moats_canary_logins_are_moats_own() {
        let mut m = Monitor::new(1, Duration::from_secs(60));
        m.observe("New connection from 10.1.0.5:1 on port 8883.", t(0));
        m.observe("New client connected from 10.1.0.5:1 as c (p5, c1, k10, u'_moat-canary-1').", t(0));
        m.observe("New connection from 10.1.0.5:2 on port 8883.", t(0));
        m.observe("Client <unknown> disconnected, not authorised.", t(0));
        assert_eq!(m.suspicion(t(10)), None, "the operator's anonymous CONNECT is not an attack");
        assert!(metrics(&m).contains("reason=\"not_authorised\",origin=\"moat\"} 1"));
        m.observe("New connection from 10.1.0.6:3 on port 8883.", t(0));
        m.observe("Client <unknown> disconnected, not authorised.", t(0));
        assert_eq!(m.suspicion(t(10)).map(|s| s.sources), Some(vec![("10.1.0.6".into(), 1)]));
        // a refusal before the canary login of the same audit is moat's too, once judged
        m.observe("Client connection from 10.1.0.9 failed: error:0A00010B:SSL routines::wrong version number.", t(20));
        assert_eq!(m.suspicion(t(25)).map(|s| s.refused), Some(1));
        m.observe("New connection from 10.1.0.9:1 on port 8883.", t(22));
        m.observe("New client connected from 10.1.0.9:1 as c (p5, c1, k10, u'_moat-canary-2').", t(22));
        assert_eq!(m.suspicion(t(30)).map(|s| s.refused), Some(1), "only 10.1.0.6's");
        // the caller of /status is the operator
        m.own_source("10.1.0.6");
        assert_eq!(m.suspicion(t(30)), None);
    }

    #[test]
    fn the_end_of_a_session_the_agent_never_saw_begin_is_no_refusal() {
        let mut m = Monitor::new(1, Duration::from_secs(60));
        m.observe("New connection from 10.0.0.9:5 on port 8883.", t(0));
        m.observe("Client old-session closed its connection.", t(0));
        m.observe("Client taken-over disconnected.", t(0));
        assert_eq!(m.pending.len(), 1, "the connection in its handshake is still pending");
        m.observe("Client <unknown> disconnected, not authorised.", t(0));
        assert_eq!(m.suspicion(t(10)).map(|s| s.sources), Some(vec![("10.0.0.9".into(), 1)]));
    }

    #[test]
    fn a_revoked_session_is_not_a_refused_login() {
        let mut m = Monitor::new(1, Duration::from_secs(60));
        m.observe("New connection from 10.0.0.7:1000 on port 8883.", t(0));
        m.observe("New client connected from 10.0.0.7:1000 as bob-1 (p2, c1, k60, u'bob').", t(0));
        m.observe("Client bob-1 disconnected, not authorised.", t(0));
        assert_eq!(m.suspicion(t(0)), None);
        assert!(!metrics(&m).contains("moat_broker_auth_failures_total{"));
    }

    #[test]
    fn timestamps_and_odd_lines() {
        assert_eq!(split_timestamp("2026-12-07T11:39:37: x: y").0, Some("2026-12-07T11:39:37Z".parse().unwrap()));
        assert_eq!(split_timestamp("OpenSSL Error[0]: e").1, "OpenSSL Error[0]: e");
        assert_eq!(split_timestamp("1733570000: New").1, "New");
        assert_eq!(
            parse("New connection from ::1:5555 on port 8883."),
            Some(Line::Accepting { addr: "::1", src: 5555, listener: 8883 })
        );
        assert_eq!(parse("Opening ipv4 listen socket on port 8883."), None);
        // a flood of half-open connections stays bounded
        let mut m = Monitor::new(0, Duration::from_secs(60));
        for i in 0..(MAX_PENDING + 10) {
            m.observe(&format!("New connection from 10.0.0.1:{} on port 1.", i % 60000), t(0));
        }
        assert_eq!(m.pending.len(), MAX_PENDING);
    }
}
