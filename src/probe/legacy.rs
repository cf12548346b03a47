//! Legacy-TLS check: hand-built TLS 1.0 / TLS 1.1 ClientHellos (rustls cannot speak these versions)
//! and a classifier for the first bytes the server sends back.
//!
//! The encoder and the classifier are pure and unit-tested on byte vectors; [`attempt`] is the thin
//! I/O shell around them.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `client_version` of a TLS 1.0 ClientHello.
pub const TLS1_0: u16 = 0x0301;
/// `client_version` of a TLS 1.1 ClientHello.
pub const TLS1_1: u16 = 0x0302;

/// Classic (pre-AEAD) suites a TLS 1.0/1.1 server can pick with an ECDSA or RSA certificate.
///
/// `TLS_FALLBACK_SCSV` (0x5600) is deliberately absent: it would make a server that supports newer
/// versions abort with `inappropriate_fallback` instead of answering for the offered version.
pub const LEGACY_CIPHER_SUITES: &[u16] = &[
    0xc00a, // TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA
    0xc009, // TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA
    0xc014, // TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA
    0xc013, // TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA
    0x0039, // TLS_DHE_RSA_WITH_AES_256_CBC_SHA
    0x0033, // TLS_DHE_RSA_WITH_AES_128_CBC_SHA
    0x0035, // TLS_RSA_WITH_AES_256_CBC_SHA
    0x002f, // TLS_RSA_WITH_AES_128_CBC_SHA
    0xc008, // TLS_ECDHE_ECDSA_WITH_3DES_EDE_CBC_SHA
    0xc012, // TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA
    0x000a, // TLS_RSA_WITH_3DES_EDE_CBC_SHA
    0x00ff, // TLS_EMPTY_RENEGOTIATION_INFO_SCSV
];

/// Named groups offered in `supported_groups`: x25519, secp256r1, secp384r1, secp521r1.
pub const LEGACY_GROUPS: &[u16] = &[0x001d, 0x0017, 0x0018, 0x0019];

const CONTENT_ALERT: u8 = 0x15;
const CONTENT_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const HANDSHAKE_SERVER_HELLO: u8 = 0x02;
const EXT_SERVER_NAME: u16 = 0x0000;
const EXT_SUPPORTED_GROUPS: u16 = 0x000a;
const EXT_EC_POINT_FORMATS: u16 = 0x000b;
/// Largest legal TLSCiphertext fragment (2^14 + 2048).
const MAX_RECORD: usize = 16384 + 2048;

/// Human name of a TLS protocol version number.
pub fn version_name(version: u16) -> String {
    match version {
        0x0300 => "SSL 3.0".into(),
        0x0301 => "TLS 1.0".into(),
        0x0302 => "TLS 1.1".into(),
        0x0303 => "TLS 1.2".into(),
        0x0304 => "TLS 1.3".into(),
        other => format!("version 0x{other:04x}"),
    }
}

/// Name of a TLS alert description (RFC 5246 / 8446).
pub fn alert_name(description: u8) -> &'static str {
    match description {
        0 => "close_notify",
        10 => "unexpected_message",
        20 => "bad_record_mac",
        22 => "record_overflow",
        40 => "handshake_failure",
        42 => "bad_certificate",
        47 => "illegal_parameter",
        48 => "unknown_ca",
        50 => "decode_error",
        51 => "decrypt_error",
        70 => "protocol_version",
        71 => "insufficient_security",
        80 => "internal_error",
        86 => "inappropriate_fallback",
        90 => "user_canceled",
        109 => "missing_extension",
        110 => "unsupported_extension",
        112 => "unrecognized_name",
        116 => "certificate_required",
        120 => "no_application_protocol",
        _ => "unknown alert",
    }
}

/// The SNI host name for `server_name`, or `None` when it must not be sent (IP literals, empty or
/// non-ASCII names, names too long for the extension).
fn sni_host(server_name: &str) -> Option<&str> {
    let name = server_name.trim_end_matches('.');
    let usable = !name.is_empty()
        && name.len() <= 253
        && name.is_ascii()
        && name.parse::<std::net::IpAddr>().is_err()
        && !name.contains(|c: char| c.is_ascii_whitespace() || c.is_ascii_control());
    usable.then_some(name)
}

fn push_u16(buf: &mut Vec<u8>, value: usize) {
    let value = u16::try_from(value).expect("length fits in u16");
    buf.extend_from_slice(&value.to_be_bytes());
}

fn push_u24(buf: &mut Vec<u8>, value: usize) {
    assert!(value < 1 << 24, "length fits in u24");
    buf.extend_from_slice(&(value as u32).to_be_bytes()[1..]);
}

fn push_extension(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    buf.extend_from_slice(&kind.to_be_bytes());
    push_u16(buf, data.len());
    buf.extend_from_slice(data);
}

/// One TLS record (record-layer version 0x0301) holding a ClientHello with `client_version =
/// version`, no `supported_versions` extension, [`LEGACY_CIPHER_SUITES`], null compression, SNI
/// (for DNS names only), `supported_groups` and `ec_point_formats`.
pub fn encode_client_hello(version: u16, server_name: &str, random: &[u8; 32]) -> Vec<u8> {
    let mut body = Vec::with_capacity(160);
    body.extend_from_slice(&version.to_be_bytes());
    body.extend_from_slice(random);
    body.push(0); // empty session id
    push_u16(&mut body, LEGACY_CIPHER_SUITES.len() * 2);
    for suite in LEGACY_CIPHER_SUITES {
        body.extend_from_slice(&suite.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // one compression method: null

    let mut extensions = Vec::new();
    if let Some(host) = sni_host(server_name) {
        let mut sni = Vec::with_capacity(host.len() + 5);
        push_u16(&mut sni, host.len() + 3); // server_name_list length
        sni.push(0); // name_type host_name
        push_u16(&mut sni, host.len());
        sni.extend_from_slice(host.as_bytes());
        push_extension(&mut extensions, EXT_SERVER_NAME, &sni);
    }
    let mut groups = Vec::with_capacity(2 + LEGACY_GROUPS.len() * 2);
    push_u16(&mut groups, LEGACY_GROUPS.len() * 2);
    for group in LEGACY_GROUPS {
        groups.extend_from_slice(&group.to_be_bytes());
    }
    push_extension(&mut extensions, EXT_SUPPORTED_GROUPS, &groups);
    push_extension(&mut extensions, EXT_EC_POINT_FORMATS, &[1, 0]); // uncompressed only
    push_u16(&mut body, extensions.len());
    body.extend_from_slice(&extensions);

    let mut handshake = Vec::with_capacity(body.len() + 4);
    handshake.push(HANDSHAKE_CLIENT_HELLO);
    push_u24(&mut handshake, body.len());
    handshake.extend_from_slice(&body);

    let mut record = Vec::with_capacity(handshake.len() + 5);
    record.push(CONTENT_HANDSHAKE);
    record.extend_from_slice(&TLS1_0.to_be_bytes());
    push_u16(&mut record, handshake.len());
    record.extend_from_slice(&handshake);
    record
}

/// What the first bytes from the server amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerReply {
    /// Not enough bytes yet to decide.
    NeedMore,
    /// The first record is an alert.
    Alert { level: u8, description: u8 },
    /// The first handshake message is a ServerHello.
    ServerHello { version: u16, cipher_suite: u16 },
    /// The connection ended (EOF or reset) before the server sent a single byte.
    Closed,
    /// Anything else: not TLS, a protocol violation, or a truncated reply.
    Malformed(String),
}

/// Classify the bytes received so far. `eof` says the peer will send nothing more.
pub fn classify_reply(buf: &[u8], eof: bool) -> ServerReply {
    let mut handshake = Vec::new();
    let mut pos = 0;
    while buf.len() - pos >= 5 {
        let header = &buf[pos..pos + 5];
        let (content_type, major) = (header[0], header[1]);
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if major != 3 || !matches!(content_type, CONTENT_ALERT | CONTENT_HANDSHAKE) {
            return ServerReply::Malformed(format!(
                "reply is not a TLS alert or handshake record (first bytes: {})",
                super::hex_prefix(&buf[pos..])
            ));
        }
        if len > MAX_RECORD {
            return ServerReply::Malformed(format!("TLS record length {len} exceeds the maximum"));
        }
        if buf.len() - pos - 5 < len {
            break;
        }
        let fragment = &buf[pos + 5..pos + 5 + len];
        pos += 5 + len;
        if content_type == CONTENT_ALERT {
            if !handshake.is_empty() {
                return ServerReply::Malformed("alert in the middle of the first handshake message".into());
            }
            return match fragment {
                [level, description, ..] => ServerReply::Alert { level: *level, description: *description },
                _ => ServerReply::Malformed(format!("alert record of {len} bytes")),
            };
        }
        handshake.extend_from_slice(fragment);
        if let Some(&kind) = handshake.first()
            && kind != HANDSHAKE_SERVER_HELLO
        {
            return ServerReply::Malformed(format!("first handshake message has type {kind}, not ServerHello"));
        }
        // type(1) length(3) server_version(2) random(32) session_id_len(1)
        if handshake.len() >= 39 {
            let session_id_len = usize::from(handshake[38]);
            if session_id_len > 32 {
                return ServerReply::Malformed(format!("ServerHello session id of {session_id_len} bytes"));
            }
            let suite_at = 39 + session_id_len;
            if handshake.len() >= suite_at + 2 {
                return ServerReply::ServerHello {
                    version: u16::from_be_bytes([handshake[4], handshake[5]]),
                    cipher_suite: u16::from_be_bytes([handshake[suite_at], handshake[suite_at + 1]]),
                };
            }
        }
    }
    if !eof {
        ServerReply::NeedMore
    } else if buf.is_empty() {
        ServerReply::Closed
    } else {
        ServerReply::Malformed(format!(
            "connection closed after {} bytes without a complete alert or ServerHello",
            buf.len()
        ))
    }
}

/// What a reply means for the offered legacy version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LegacyVerdict {
    /// The server explicitly refused the version (alert `protocol_version`).
    Refused(String),
    /// The server hung up without a ServerHello and without an error alert (plain close, reset or
    /// `close_notify`). Counts as a refusal only for an endpoint known to speak modern TLS.
    ClosedWithoutAlert(String),
    /// The server agreed to a legacy version (ServerHello with a version ≤ the offered one).
    Accepted(String),
    /// Anything else, with the reason; never counts as a refusal.
    Ambiguous(String),
}

/// Judge a final [`ServerReply`] to a ClientHello offering `offered`.
pub fn judge(offered: u16, reply: &ServerReply) -> LegacyVerdict {
    match *reply {
        ServerReply::Alert { description: 70, .. } => LegacyVerdict::Refused("alert protocol_version".into()),
        ServerReply::Alert { level: 1, description: 0 } => {
            LegacyVerdict::ClosedWithoutAlert("closed with close_notify, no ServerHello".into())
        }
        ServerReply::Alert { level, description } => LegacyVerdict::Ambiguous(format!(
            "alert {} ({description}, level {level}): the ClientHello was rejected, but not explicitly for its \
             version (the server might accept {} with other parameters)",
            alert_name(description),
            version_name(offered)
        )),
        ServerReply::ServerHello { version, cipher_suite } if (0x0300..=offered).contains(&version) => {
            LegacyVerdict::Accepted(format!(
                "ServerHello agreeing to {} (cipher suite 0x{cipher_suite:04x})",
                version_name(version)
            ))
        }
        ServerReply::ServerHello { version, .. } => LegacyVerdict::Ambiguous(format!(
            "ServerHello with {} although at most {} was offered (protocol violation)",
            version_name(version),
            version_name(offered)
        )),
        ServerReply::Closed => LegacyVerdict::ClosedWithoutAlert("connection closed without an alert".into()),
        ServerReply::Malformed(ref reason) => LegacyVerdict::Ambiguous(reason.clone()),
        ServerReply::NeedMore => LegacyVerdict::Ambiguous("incomplete reply".into()),
    }
}

/// Result of one legacy attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// No TCP connection (the reason).
    Unreachable(String),
    /// Connected; what the server's reply means.
    Judged(LegacyVerdict),
}

/// Connect, send a ClientHello offering `version`, and judge the reply.
pub async fn attempt(host: &str, port: u16, server_name: &str, version: u16, timeout: Duration) -> Attempt {
    let mut stream = match super::connect(host, port, timeout).await {
        Ok(stream) => stream,
        Err(reason) => return Attempt::Unreachable(reason),
    };
    let mut random = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut random);
    let hello = encode_client_hello(version, server_name, &random);
    let exchange = async {
        if let Err(err) = stream.write_all(&hello).await {
            return if is_hangup(&err) {
                judge(version, &ServerReply::Closed)
            } else {
                LegacyVerdict::Ambiguous(format!("sending the ClientHello failed: {err}"))
            };
        }
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        loop {
            let eof = match stream.read(&mut chunk).await {
                Ok(0) => true,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    false
                }
                Err(err) if is_hangup(&err) => true,
                Err(err) => return LegacyVerdict::Ambiguous(format!("reading the reply failed: {err}")),
            };
            match classify_reply(&buf, eof) {
                ServerReply::NeedMore => continue,
                reply => return judge(version, &reply),
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(verdict) => Attempt::Judged(verdict),
        Err(_) => Attempt::Judged(LegacyVerdict::Ambiguous(format!("no complete reply within {timeout:?}"))),
    }
}

fn is_hangup(err: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    matches!(err.kind(), ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANDOM: [u8; 32] = [0xab; 32];

    /// Minimal independent parser of the hello, for the assertions.
    struct Parsed {
        record_version: u16,
        client_version: u16,
        random: Vec<u8>,
        suites: Vec<u16>,
        compression: Vec<u8>,
        extensions: Vec<(u16, Vec<u8>)>,
    }

    fn be16(b: &[u8]) -> u16 {
        u16::from_be_bytes([b[0], b[1]])
    }

    fn parse(bytes: &[u8]) -> Parsed {
        assert_eq!(bytes[0], 0x16, "handshake record");
        let record_len = usize::from(be16(&bytes[3..]));
        assert_eq!(bytes.len(), 5 + record_len, "record length covers exactly the rest");
        let hs = &bytes[5..];
        assert_eq!(hs[0], 1, "ClientHello");
        let hs_len = (usize::from(hs[1]) << 16) | (usize::from(hs[2]) << 8) | usize::from(hs[3]);
        assert_eq!(hs.len(), 4 + hs_len, "handshake length covers exactly the body");
        let b = &hs[4..];
        let client_version = be16(b);
        let random = b[2..34].to_vec();
        assert_eq!(b[34], 0, "empty session id");
        let mut p = 35;
        let suites_len = usize::from(be16(&b[p..]));
        p += 2;
        let suites = b[p..p + suites_len].chunks(2).map(be16).collect();
        p += suites_len;
        let comp_len = usize::from(b[p]);
        let compression = b[p + 1..p + 1 + comp_len].to_vec();
        p += 1 + comp_len;
        let ext_len = usize::from(be16(&b[p..]));
        p += 2;
        assert_eq!(b.len(), p + ext_len, "extensions block ends the body");
        let mut extensions = Vec::new();
        while p < b.len() {
            let kind = be16(&b[p..]);
            let len = usize::from(be16(&b[p + 2..]));
            extensions.push((kind, b[p + 4..p + 4 + len].to_vec()));
            p += 4 + len;
        }
        assert_eq!(p, b.len());
        Parsed { record_version: be16(&bytes[1..]), client_version, random, suites, compression, extensions }
    }

    fn ext(parsed: &Parsed, kind: u16) -> Option<&[u8]> {
        parsed.extensions.iter().find(|(k, _)| *k == kind).map(|(_, d)| d.as_slice())
    }

    #[test]
    fn hello_layout_for_both_versions() {
        for version in [TLS1_0, TLS1_1] {
            let bytes = encode_client_hello(version, "broker.example", &RANDOM);
            let p = parse(&bytes);
            assert_eq!(p.record_version, 0x0301);
            assert_eq!(p.client_version, version);
            assert_eq!(p.random, RANDOM.to_vec());
            assert_eq!(p.suites, LEGACY_CIPHER_SUITES.to_vec());
            assert_eq!(p.compression, vec![0]);
            let kinds: Vec<u16> = p.extensions.iter().map(|(k, _)| *k).collect();
            assert_eq!(kinds, vec![0x0000, 0x000a, 0x000b]);
        }
    }

    #[test]
    fn hello_extensions_content() {
        let p = parse(&encode_client_hello(TLS1_1, "broker.example", &RANDOM));
        let mut sni = vec![0x00, 0x11, 0x00, 0x00, 0x0e];
        sni.extend_from_slice(b"broker.example");
        assert_eq!(ext(&p, 0x0000), Some(sni.as_slice()));
        assert_eq!(ext(&p, 0x000a), Some([0x00, 0x08, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18, 0x00, 0x19].as_slice()));
        assert_eq!(ext(&p, 0x000b), Some([0x01, 0x00].as_slice()));
    }

    #[test]
    fn hello_never_claims_newer_versions_or_fallback() {
        let p = parse(&encode_client_hello(TLS1_0, "broker.example", &RANDOM));
        assert!(ext(&p, 43).is_none(), "no supported_versions extension");
        assert!(ext(&p, 13).is_none(), "no signature_algorithms (TLS 1.2 only)");
        assert!(!p.suites.contains(&0x5600), "no TLS_FALLBACK_SCSV");
        // Only pre-TLS-1.2 suites: no GCM/CHACHA/TLS 1.3 suites.
        for suite in [0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xcca8, 0xcca9] {
            assert!(!p.suites.contains(&suite), "suite {suite:04x} must not be offered");
        }
    }

    #[test]
    fn hello_omits_sni_for_ip_and_empty_names() {
        for name in ["127.0.0.1", "::1", "", "bad name"] {
            let p = parse(&encode_client_hello(TLS1_0, name, &RANDOM));
            assert!(ext(&p, 0).is_none(), "no SNI for {name:?}");
            assert!(ext(&p, 0x000a).is_some());
        }
        let p = parse(&encode_client_hello(TLS1_0, "broker.example.", &RANDOM));
        assert!(ext(&p, 0).unwrap().ends_with(b"broker.example"), "trailing dot stripped");
    }

    /// A handshake record holding a ServerHello for `version` with a `sid`-byte session id.
    fn server_hello(version: u16, suite: u16, sid: usize) -> Vec<u8> {
        let mut body = version.to_be_bytes().to_vec();
        body.extend_from_slice(&[7; 32]);
        body.push(sid as u8);
        body.extend(std::iter::repeat_n(9, sid));
        body.extend_from_slice(&suite.to_be_bytes());
        body.push(0);
        let mut hs = vec![2, 0, 0, body.len() as u8];
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 0x03, (version & 0xff) as u8, 0, hs.len() as u8];
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn classifies_alerts() {
        let alert = [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 70];
        assert_eq!(classify_reply(&alert, false), ServerReply::Alert { level: 2, description: 70 });
        assert_eq!(
            judge(TLS1_1, &classify_reply(&alert, false)),
            LegacyVerdict::Refused("alert protocol_version".into())
        );
        // internal_error (what Debian's default OpenSSL sends) and handshake_failure are ambiguous.
        for desc in [80u8, 40, 50, 71] {
            let reply = classify_reply(&[0x15, 0x03, 0x02, 0x00, 0x02, 0x02, desc], true);
            assert!(matches!(judge(TLS1_0, &reply), LegacyVerdict::Ambiguous(_)), "alert {desc}");
        }
        let close_notify = classify_reply(&[0x15, 0x03, 0x01, 0x00, 0x02, 0x01, 0x00], true);
        assert!(matches!(judge(TLS1_0, &close_notify), LegacyVerdict::ClosedWithoutAlert(_)));
    }

    #[test]
    fn classifies_server_hello_accepting_or_violating() {
        for (offered, answered) in [(TLS1_0, TLS1_0), (TLS1_1, TLS1_1), (TLS1_1, TLS1_0)] {
            let bytes = server_hello(answered, 0xc00a, 32);
            let reply = classify_reply(&bytes, false);
            assert_eq!(reply, ServerReply::ServerHello { version: answered, cipher_suite: 0xc00a });
            assert!(matches!(judge(offered, &reply), LegacyVerdict::Accepted(ref m) if m.contains("c00a")));
        }
        let reply = classify_reply(&server_hello(0x0303, 0xc02b, 0), false);
        assert!(matches!(judge(TLS1_1, &reply), LegacyVerdict::Ambiguous(ref m) if m.contains("violation")));
    }

    #[test]
    fn waits_for_partial_replies_and_reassembles_fragments() {
        let bytes = server_hello(TLS1_1, 0xc013, 16);
        for cut in 0..bytes.len() {
            assert_eq!(classify_reply(&bytes[..cut], false), ServerReply::NeedMore, "cut at {cut}");
            let truncated = classify_reply(&bytes[..cut], true);
            if cut == 0 {
                assert_eq!(truncated, ServerReply::Closed);
            } else {
                assert!(matches!(truncated, ServerReply::Malformed(_)), "cut at {cut}: {truncated:?}");
            }
        }
        // The same handshake message split over two records.
        let hs = &bytes[5..];
        let (a, b) = hs.split_at(20);
        let mut split = vec![0x16, 0x03, 0x02, 0x00, a.len() as u8];
        split.extend_from_slice(a);
        split.extend_from_slice(&[0x16, 0x03, 0x02, 0x00, b.len() as u8]);
        split.extend_from_slice(b);
        assert_eq!(classify_reply(&split, false), ServerReply::ServerHello { version: TLS1_1, cipher_suite: 0xc013 });
    }

    #[test]
    fn non_tls_and_odd_replies_are_ambiguous() {
        let cases: [&[u8]; 5] = [
            b"HTTP/1.1 400 Bad Request\r\n\r\n",
            &[0x20, 0x02, 0x00, 0x05, 0x00],                // an MQTT CONNACK
            &[0x16, 0x03, 0x01, 0x00, 0x04, 0x0b, 0, 0, 0], // Certificate first
            &[0x17, 0x03, 0x01, 0x00, 0x01, 0x00],          // application data
            &[0x15, 0x03, 0x01, 0x00, 0x01, 0x02],          // 1-byte alert
        ];
        for bytes in cases {
            let reply = classify_reply(bytes, true);
            assert!(matches!(reply, ServerReply::Malformed(_)), "{bytes:?} -> {reply:?}");
            assert!(matches!(judge(TLS1_0, &reply), LegacyVerdict::Ambiguous(_)));
        }
        assert!(matches!(judge(TLS1_0, &ServerReply::Closed), LegacyVerdict::ClosedWithoutAlert(_)));
    }
}
