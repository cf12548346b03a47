//! Attacks that need a login, made with moat's canary identities (in no ACL): publish and read
//! what no rule grants, take over another user's session by its client id, and send an oversize
//! PUBLISH after logging in. MQTT 5, so that a refused PUBLISH is visible (PUBACK "not
//! authorized"). The server's chain is verified before any password is sent.
//!
//! Outcomes follow the probe's rule: a refusal is a Pass, an acceptance a Fail, and a login that
//! does not succeed (e.g. a pod that does not run the password file with the canary yet) Unknown.

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::Outcome::{self, Fail, Pass};
use super::modern::{self, Mode};
use super::mqtt::{self, Packet};

/// A login (a canary's username and password; never shown).
#[derive(Clone, Copy)]
pub struct Credentials<'a> {
    pub username: &'a str,
    pub password: &'a str,
}

impl fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, [redacted])", self.username)
    }
}

/// A password listener to log in to.
#[derive(Clone, Debug)]
pub struct LoginTarget<'a> {
    pub host: &'a str,
    pub port: u16,
    /// Name the server certificate must be valid for.
    pub server_name: &'a str,
    /// CA bundle (PEM) the served chain must verify against before a password is sent.
    pub ca_pem: &'a str,
    /// Limit for each network step.
    pub timeout: Duration,
}

/// How a session ended early.
#[derive(Debug)]
enum Ended {
    Closed,
    Io(String),
    TimedOut(Duration),
    Malformed(String),
    /// The broker sent DISCONNECT with this reason code.
    Disconnected(u8),
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Closed => f.write_str("the broker closed the connection"),
            Ended::Io(e) => write!(f, "I/O error: {e}"),
            Ended::TimedOut(t) => write!(f, "no answer within {t:?}"),
            Ended::Malformed(e) => f.write_str(e),
            Ended::Disconnected(rc) => write!(f, "DISCONNECT ({})", mqtt::reason_name(*rc)),
        }
    }
}

/// A logged-in MQTT 5 session.
struct Session {
    stream: TlsStream<TcpStream>,
    buf: Vec<u8>,
    timeout: Duration,
}

impl Session {
    /// Logs in with the first of `logins` the broker accepts (a pod may still run the previous
    /// canary logins). Err is the Unknown outcome.
    async fn open(target: &LoginTarget<'_>, logins: &[Credentials<'_>], client_id: &str) -> Result<Session, Outcome> {
        let port = target.port;
        let roots = modern::roots_from_pem(target.ca_pem).map_err(Outcome::Unknown)?;
        let mut refused = None;
        for login in logins {
            let (stream, _) =
                modern::handshake(target.host, port, target.server_name, Mode::Verify(roots.clone()), target.timeout)
                    .await;
            let stream = stream.map_err(|e| Outcome::Unknown(format!("port {port}: {e}")))?;
            let mut s = Session { stream, buf: vec![], timeout: target.timeout };
            let connect = mqtt::encode_connect_v5(client_id, login.username, login.password, 30);
            let reply = match s.send(&connect).await {
                Ok(()) => s.next().await,
                Err(e) => Err(e),
            };
            match reply {
                Ok(p) if p.kind() == mqtt::CONNACK && p.reason() == 0 => return Ok(s),
                Ok(p) if p.kind() == mqtt::CONNACK && matches!(p.reason(), 0x86 | 0x87) => refused = Some(p.reason()),
                Ok(p) => {
                    return Err(Outcome::Unknown(format!(
                        "port {port}: the canary login got packet type {} reason 0x{:02x} instead of a CONNACK",
                        p.kind(),
                        p.reason()
                    )));
                }
                Err(e) => return Err(Outcome::Unknown(format!("port {port}: the canary login failed: {e}"))),
            }
        }
        Err(Outcome::Unknown(match refused {
            Some(rc) => format!(
                "port {port} refused the canary login ({}): the pod does not run the password file with it yet",
                mqtt::reason_name(rc)
            ),
            None => "no canary login to try".into(),
        }))
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), Ended> {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Ended::Io(e.to_string())),
            Err(_) => Err(Ended::TimedOut(self.timeout)),
        }
    }

    /// The next whole packet, waiting at most `wait`.
    async fn next_within(&mut self, wait: Duration) -> Result<Packet, Ended> {
        let read = async {
            loop {
                if let Some(p) = mqtt::take_packet(&mut self.buf).map_err(Ended::Malformed)? {
                    return Ok(p);
                }
                let mut chunk = [0u8; 1024];
                match self.stream.read(&mut chunk).await {
                    Ok(0) => return Err(Ended::Closed),
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(Ended::Closed),
                    Err(e) => return Err(Ended::Io(e.to_string())),
                }
            }
        };
        tokio::time::timeout(wait, read).await.unwrap_or(Err(Ended::TimedOut(wait)))
    }

    async fn next(&mut self) -> Result<Packet, Ended> {
        self.next_within(self.timeout).await
    }

    /// Leaves politely; failures change nothing.
    async fn close(mut self) {
        let _ = self.send(&mqtt::DISCONNECT).await;
        let _ = tokio::time::timeout(self.timeout, self.stream.shutdown()).await;
    }
}

fn nonce() -> String {
    format!("{:012x}", rand::Rng::r#gen::<u64>(&mut rand::thread_rng()) & 0xffff_ffff_ffff)
}

/// Logs in as an identity in no ACL, subscribes to `#` and `$SYS/#` (Mosquitto grants every
/// SUBSCRIBE and filters on delivery), publishes at QoS 1 to a topic of its own and sends PINGREQ:
/// everything the broker sends before PINGRESP is its answer. `granted(topic, write)` says what
/// the rules for all users let it do (they apply to every login). Pass: the PUBLISH was refused
/// (PUBACK reason ≥ 0x80) unless granted, and every message that arrived is granted; Fail: an
/// ungranted PUBLISH was accepted or an ungranted message delivered (the ACL is not enforced).
pub async fn no_grants_refused(
    target: &LoginTarget<'_>,
    logins: &[Credentials<'_>],
    granted: &(dyn Fn(&str, bool) -> bool + Sync),
) -> Outcome {
    let port = target.port;
    let mut s = match Session::open(target, logins, &format!("moat-attest-{}", nonce())).await {
        Ok(s) => s,
        Err(unknown) => return unknown,
    };
    let topic = format!("moat/attestation/{}", nonce());
    // a PUBLISH the rules grant would reach real subscribers: it is not sent
    let may_publish = granted(&topic, true);
    let mut out = mqtt::encode_subscribe_v5(1, &["#", "$SYS/#"]);
    if !may_publish {
        out.extend(mqtt::encode_publish_v5(2, &topic, b"moat attestation: this message must not be accepted"));
    }
    out.extend(mqtt::PINGREQ);
    let mut puback = None;
    let mut delivered = false;
    let ended = match s.send(&out).await {
        Err(e) => Some(e),
        Ok(()) => loop {
            match s.next().await {
                Ok(p) if p.kind() == mqtt::PINGRESP => break None,
                Ok(p) if p.kind() == mqtt::PUBACK => puback = Some(p.reason()),
                Ok(p) if p.kind() == mqtt::PUBLISH => {
                    delivered |= !mqtt::publish_topic(&p).is_some_and(|t| granted(t, false));
                }
                Ok(p) if p.kind() == mqtt::DISCONNECT_KIND => {
                    break Some(Ended::Disconnected(p.reason()));
                }
                Ok(_) => {}
                Err(e) => break Some(e),
            }
        },
    };
    s.close().await;
    let who = "a login in no ACL";
    match (delivered, puback, ended) {
        (true, _, _) => Fail(format!(
            "port {port}: {who} received messages that no rule grants it after subscribing to '#' and '$SYS/#': the ACL is not enforced"
        )),
        (_, Some(rc), _) if rc < 0x80 => Fail(format!(
            "port {port}: {who} published to a topic no rule grants (PUBACK {}): the ACL is not enforced",
            mqtt::reason_name(rc)
        )),
        (false, None, None) if may_publish => Pass(format!(
            "port {port}: {who} received only what the rules for all users grant on '#' and '$SYS/#' (they grant its PUBLISH too, so none was sent)"
        )),
        (false, Some(rc), None) => Pass(format!(
            "port {port}: {who} was refused its PUBLISH (PUBACK {}) and received only what the rules for all users grant on '#' and '$SYS/#'",
            mqtt::reason_name(rc)
        )),
        (false, _, Some(e)) => Outcome::Unknown(format!("port {port}: the canary's session ended early: {e}")),
        (false, None, None) => Outcome::Unknown(format!("port {port}: no PUBACK before PINGRESP")),
    }
}

/// Logs in as `victim` with a client id, then as `attacker` with the same client id, then asks
/// the victim's session for PINGRESP. Pass: the victim's session is still up (client ids are
/// bound to usernames); Fail: the broker ended it (session taken over).
pub async fn takeover_refused(
    target: &LoginTarget<'_>,
    attacker: &[Credentials<'_>],
    victim: &[Credentials<'_>],
) -> Outcome {
    let port = target.port;
    let id = format!("moat-attest-{}", nonce());
    let mut v = match Session::open(target, victim, &id).await {
        Ok(s) => s,
        Err(unknown) => return unknown,
    };
    let a = match Session::open(target, attacker, &id).await {
        Ok(s) => s,
        Err(unknown) => {
            v.close().await;
            return unknown;
        }
    };
    // the broker ends a taken-over session before it answers the new CONNECT
    let answer = match v.send(&mqtt::PINGREQ).await {
        Ok(()) => v.next().await,
        Err(e) => Err(e),
    };
    a.close().await;
    let taken = |how: String| {
        Fail(format!(
            "port {port}: a second user logging in with the client id of another user's session ended that session ({how}): sessions can be taken over"
        ))
    };
    match answer {
        Ok(p) if p.kind() == mqtt::PINGRESP => {
            v.close().await;
            Pass(format!(
                "port {port}: a second user logging in with the client id of another user's session left that session up"
            ))
        }
        Ok(p) if p.kind() == mqtt::DISCONNECT_KIND => taken(format!("DISCONNECT {}", mqtt::reason_name(p.reason()))),
        Err(Ended::Closed | Ended::Io(_)) => taken("connection closed".into()),
        Ok(p) => Outcome::Unknown(format!("port {port}: packet type {} instead of PINGRESP", p.kind())),
        Err(e) => Outcome::Unknown(format!("port {port}: {e}")),
    }
}

/// Logs in, then starts a PUBLISH whose fixed header declares `max_packet_size + 1` bytes: a
/// broker that enforces the limit after login drops the client (Pass); one that keeps waiting for
/// the rest does not (Fail, after twice the timeout so that a slow broker does not fail).
pub async fn oversize_publish_refused(
    target: &LoginTarget<'_>,
    logins: &[Credentials<'_>],
    max_packet_size: u32,
) -> Outcome {
    let port = target.port;
    let declared = max_packet_size as usize + 1;
    let mut s = match Session::open(target, logins, &format!("moat-attest-{}", nonce())).await {
        Ok(s) => s,
        Err(unknown) => return unknown,
    };
    let mut start = vec![0x32];
    start.extend(mqtt::remaining_length(declared));
    start.extend_from_slice(&[0x00, 0x01, b'x', 0x00, 0x03, 0x00]);
    let dropped = Pass(format!(
        "port {port} dropped a logged-in client's PUBLISH declaring {declared} bytes (maxPacketSize + 1)"
    ));
    if s.send(&start).await.is_err() {
        return dropped;
    }
    let wait = target.timeout * 2;
    match s.next_within(wait).await {
        Err(Ended::Closed | Ended::Io(_)) => dropped,
        Ok(p) if p.kind() == mqtt::DISCONNECT_KIND => dropped,
        Ok(p) => Fail(format!(
            "port {port} answered a logged-in client's PUBLISH declaring {declared} bytes with packet type {}: maxPacketSize is not enforced",
            p.kind()
        )),
        Err(Ended::TimedOut(_)) => Fail(format!(
            "port {port} kept a logged-in client that declared a {declared}-byte PUBLISH for {wait:?}: maxPacketSize is not enforced"
        )),
        Err(e @ (Ended::Malformed(_) | Ended::Disconnected(_))) => Outcome::Unknown(format!("port {port}: {e}")),
    }
}
