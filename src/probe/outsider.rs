//! The outsider: moat's vantage point in a namespace no MqttFirewall admits.
//!
//! `moat outsider` runs as its own Deployment (the chart's `outsider`), with no ServiceAccount
//! token and no rights. It serves `GET /dial?to=IP:PORT,IP:PORT…`: for each target it opens a TCP
//! connection, closes it at once (no byte is sent) and answers how the attempt ended. At every
//! audit the operator asks it to dial each listener of each broker pod and [`judge`]s the answers:
//! the network must refuse them. Only IP literals are dialled (no DNS), at most
//! [`MAX_TARGETS`] per request; its own NetworkPolicy admits only the operator's pods.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Outcome;

/// The port `moat outsider` listens on by default (the chart's `outsider.port`).
pub const PORT: u16 = 8089;
/// Most targets one request may name.
pub const MAX_TARGETS: usize = 256;
/// Label (value `outsider`) the operator finds the outsider pods by.
pub const ROLE_LABEL: &str = "mqtt.moat.dev/role";

/// `moat outsider` arguments.
#[derive(clap::Args, Debug)]
pub struct OutsiderArgs {
    /// Address to serve `GET /dial` and `GET /healthz` on.
    #[arg(long, default_value = "0.0.0.0:8089")]
    pub listen: SocketAddr,
    /// How long one connection attempt may take before it counts as dropped.
    #[arg(long, default_value = "2s", value_parser = super::parse_timeout)]
    pub timeout: Duration,
}

/// How one connection attempt ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "camelCase")]
pub enum Answer {
    /// The TCP handshake completed: the network let the outsider in.
    Connected,
    /// Refused (a TCP reset or an ICMP port-unreachable, as a REJECT rule sends).
    Refused,
    /// No answer within the timeout (as a DROP rule does).
    Timeout,
    /// Any other error (no route, host unreachable, …).
    Failed {
        /// The error, as the operating system said it.
        error: String,
    },
}

/// One target and its answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dialed {
    /// The address dialled.
    pub to: SocketAddr,
    /// How it ended.
    #[serde(flatten)]
    pub answer: Answer,
}

/// Parses the `to` query value: comma-separated `IP:PORT` literals (IPv6 in brackets).
pub fn parse_targets(to: &str) -> Result<Vec<SocketAddr>, String> {
    let targets: Vec<SocketAddr> = to
        .split(',')
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<SocketAddr>().map_err(|_| format!("{t:?} is not IP:PORT")))
        .collect::<Result<_, _>>()?;
    match targets.len() {
        0 => Err("no target".into()),
        n if n > MAX_TARGETS => Err(format!("{n} targets, at most {MAX_TARGETS}")),
        _ if targets.iter().any(|t| t.port() == 0) => Err("port 0".into()),
        _ => Ok(targets),
    }
}

/// Opens a TCP connection to `to` and closes it again.
pub async fn dial(to: SocketAddr, timeout: Duration) -> Answer {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(to)).await {
        Err(_) => Answer::Timeout,
        Ok(Ok(_stream)) => Answer::Connected,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Answer::Refused,
        Ok(Err(e)) => Answer::Failed { error: e.to_string() },
    }
}

/// Dials every target at once.
pub async fn dial_all(targets: &[SocketAddr], timeout: Duration) -> Vec<Dialed> {
    futures::future::join_all(targets.iter().map(|&to| async move { Dialed { to, answer: dial(to, timeout).await } }))
        .await
}

/// What the attempt from the outsider at `from` says about the network, given the moat
/// NetworkPolicies that admit the outsider on that port (`admitted_by`; normally none).
pub fn judge(answer: &Answer, from: &str, admitted_by: &[String], timeout: Duration) -> Outcome {
    if !admitted_by.is_empty() {
        return Outcome::Unknown(format!(
            "{from} is admitted by {} (an MqttFirewall or the probe path admits the outsider's namespace), so the attempt cannot show a refusal",
            admitted_by.join(", ")
        ));
    }
    match answer {
        Answer::Connected => Outcome::Fail(format!(
            "a TCP connection from {from} was accepted: the network admits a namespace no MqttFirewall admits"
        )),
        // a REJECT and a DROP both keep the outsider out, and which one a client sees varies from
        // attempt to attempt (the kernel rate-limits the ICMP a REJECT answers with): one text for
        // both, so the status does not change between audits that found the same thing
        Answer::Refused | Answer::Timeout => Outcome::Pass(format!(
            "blocked by the network from {from} (refused, or no answer within {}s)",
            timeout.as_secs()
        )),
        Answer::Failed { error } => Outcome::Unknown(format!("the attempt from {from} failed: {error}")),
    }
}

/// Serves `GET /dial` and `GET /healthz` until the process ends.
pub async fn run(args: OutsiderArgs) -> i32 {
    match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => {
            tracing::info!(addr = %args.listen, "serving /dial");
            match serve(listener, args.timeout).await {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!(error = %e, "the dial endpoint stopped");
                    1
                }
            }
        }
        Err(e) => {
            tracing::error!(addr = %args.listen, error = %e, "cannot serve /dial");
            1
        }
    }
}

/// Serves `GET /dial` and `GET /healthz` on `listener`.
pub async fn serve(listener: tokio::net::TcpListener, timeout: Duration) -> std::io::Result<()> {
    use axum::extract::RawQuery;
    use axum::http::StatusCode;
    use axum::routing::get;
    let app = axum::Router::new().route("/healthz", get(|| async { "ok" })).route(
        "/dial",
        get(move |RawQuery(q): RawQuery| async move {
            let to = q.as_deref().unwrap_or_default().split('&').find_map(|kv| kv.strip_prefix("to="));
            let targets = match parse_targets(to.unwrap_or_default()) {
                Ok(t) => t,
                Err(e) => return (StatusCode::BAD_REQUEST, e),
            };
            let dialed = dial_all(&targets, timeout).await;
            tracing::info!(targets = targets.len(), "dialled");
            (StatusCode::OK, serde_json::to_string(&dialed).unwrap_or_default())
        }),
    );
    axum::serve(listener, app).await
}

/// Asks the outsider at `ip` to dial `targets` (plain HTTP/1.0; the answer is small JSON).
pub async fn ask(ip: &str, port: u16, targets: &[SocketAddr]) -> Result<Vec<Dialed>, String> {
    let to: Vec<String> = targets.iter().map(ToString::to_string).collect();
    let body = super::http_get(ip, port, &format!("/dial?to={}", to.join(","))).await?;
    serde_json::from_str(&body).map_err(|e| format!("unexpected answer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_ip_literals_with_a_port_and_bounded_in_number() {
        assert_eq!(
            parse_targets("10.88.0.5:8883,[fd00::1]:1883").unwrap(),
            vec!["10.88.0.5:8883".parse().unwrap(), "[fd00::1]:1883".parse().unwrap()]
        );
        assert!(parse_targets("broker.example:8883").is_err(), "no DNS names");
        assert!(parse_targets("10.0.0.1").is_err(), "a port is needed");
        assert!(parse_targets("10.0.0.1:0").is_err());
        assert!(parse_targets("").is_err());
        let many = vec!["10.0.0.1:1"; MAX_TARGETS + 1].join(",");
        assert!(parse_targets(&many).is_err());
    }

    #[test]
    fn only_a_refusal_by_the_network_passes_and_an_admitted_outsider_proves_nothing() {
        let t = Duration::from_secs(2);
        let from = "moat-outsider/outsider-0 (10.88.0.9)";
        assert!(judge(&Answer::Refused, from, &[], t).is_pass());
        assert!(judge(&Answer::Timeout, from, &[], t).is_pass());
        // the same evidence either way: a refusal one audit and a timeout the next is no change
        assert_eq!(judge(&Answer::Refused, from, &[], t), judge(&Answer::Timeout, from, &[], t));
        let open = judge(&Answer::Connected, from, &[], t);
        assert!(matches!(open, Outcome::Fail(ref m) if m.contains(from)), "{open:?}");
        let odd = Answer::Failed { error: "No route to host".into() };
        assert!(matches!(judge(&odd, from, &[], t), Outcome::Unknown(_)));
        let admitted = vec!["plant-fw-everyone".to_string()];
        for a in [Answer::Connected, Answer::Refused, Answer::Timeout] {
            assert!(
                matches!(judge(&a, from, &admitted, t), Outcome::Unknown(ref m) if m.contains("plant-fw-everyone"))
            );
        }
    }

    #[test]
    fn answers_travel_as_json() {
        let d = vec![
            Dialed { to: "10.0.0.1:8883".parse().unwrap(), answer: Answer::Connected },
            Dialed { to: "10.0.0.1:8884".parse().unwrap(), answer: Answer::Failed { error: "x".into() } },
        ];
        let text = serde_json::to_string(&d).unwrap();
        assert!(text.contains(r#""answer":"connected""#), "{text}");
        assert_eq!(serde_json::from_str::<Vec<Dialed>>(&text).unwrap(), d);
    }

    /// The server against real sockets: a listening port connects, a closed one is refused.
    #[tokio::test]
    async fn the_outsider_dials_real_sockets_over_http() {
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let outsider = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = outsider.local_addr().unwrap().port();
        tokio::spawn(serve(outsider, Duration::from_secs(2)));
        let targets = [open.local_addr().unwrap(), closed];
        let answers = ask("127.0.0.1", port, &targets).await.unwrap();
        assert_eq!(answers[0], Dialed { to: targets[0], answer: Answer::Connected });
        assert_eq!(answers[1], Dialed { to: closed, answer: Answer::Refused });
        let refused = super::super::http_get("127.0.0.1", port, "/dial?to=example.org:80").await;
        assert!(refused.is_err_and(|e| e.contains("400")));
    }
}
