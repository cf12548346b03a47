//! Minimal MQTT: 3.1.1 CONNECT / CONNACK, enough to ask a broker whether it lets an anonymous
//! client in, and the few MQTT 5 packets a login attack needs (CONNECT with credentials,
//! SUBSCRIBE, PUBLISH at QoS 1, PINGREQ) with a reader of whole packets.

/// An MQTT 3.1.1 CONNECT with clean session, no username, no password, no will.
pub fn encode_connect(client_id: &str, keep_alive: u16) -> Vec<u8> {
    let id = client_id.as_bytes();
    let id_len = u16::try_from(id.len()).expect("client id fits in u16");
    let mut variable = Vec::with_capacity(12 + id.len());
    variable.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T']);
    variable.push(0x04); // protocol level 4 = 3.1.1
    variable.push(0x02); // connect flags: clean session only
    variable.extend_from_slice(&keep_alive.to_be_bytes());
    variable.extend_from_slice(&id_len.to_be_bytes());
    variable.extend_from_slice(id);

    let mut packet = vec![0x10];
    packet.extend(remaining_length(variable.len()));
    packet.extend_from_slice(&variable);
    packet
}

/// The MQTT variable-length encoding of a packet's "remaining length".
pub fn remaining_length(mut n: usize) -> Vec<u8> {
    let mut out = vec![];
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return out;
        }
    }
}

/// MQTT 3.1.1 DISCONNECT.
pub const DISCONNECT: [u8; 2] = [0xe0, 0x00];

/// A random client id `moat-probe-<12 hex digits>` (23 characters, the 3.1.1 guaranteed maximum).
pub fn random_client_id() -> String {
    let n: u64 = rand::Rng::r#gen(&mut rand::thread_rng());
    format!("moat-probe-{:012x}", n & 0xffff_ffff_ffff)
}

/// Appends an MQTT UTF-8 string or binary field (two-byte length, then the bytes).
fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("field fits in u16");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A packet: the fixed-header byte, the remaining length, the rest.
fn packet(first: u8, variable: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(remaining_length(variable.len()));
    out.extend_from_slice(variable);
    out
}

/// An MQTT 5 CONNECT with clean start, username and password, no properties, no will.
pub fn encode_connect_v5(client_id: &str, username: &str, password: &str, keep_alive: u16) -> Vec<u8> {
    let mut v = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0xc2];
    v.extend_from_slice(&keep_alive.to_be_bytes());
    v.push(0x00); // no properties
    for f in [client_id, username, password] {
        field(&mut v, f.as_bytes());
    }
    packet(0x10, &v)
}

/// An MQTT 5 SUBSCRIBE of `filters`, each at QoS 1.
pub fn encode_subscribe_v5(packet_id: u16, filters: &[&str]) -> Vec<u8> {
    let mut v = packet_id.to_be_bytes().to_vec();
    v.push(0x00);
    for f in filters {
        field(&mut v, f.as_bytes());
        v.push(0x01);
    }
    packet(0x82, &v)
}

/// An MQTT 5 PUBLISH at QoS 1 (not retained).
pub fn encode_publish_v5(packet_id: u16, topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![];
    field(&mut v, topic.as_bytes());
    v.extend_from_slice(&packet_id.to_be_bytes());
    v.push(0x00);
    v.extend_from_slice(payload);
    packet(0x32, &v)
}

/// PINGREQ: the broker answers PINGRESP after everything sent before it.
pub const PINGREQ: [u8; 2] = [0xc0, 0x00];

/// A whole packet read from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The fixed-header byte (type in the high nibble, flags in the low one).
    pub first: u8,
    /// Everything after the remaining length.
    pub body: Vec<u8>,
}

impl Packet {
    /// The packet type (1 CONNECT … 14 DISCONNECT).
    pub fn kind(&self) -> u8 {
        self.first >> 4
    }

    /// The reason code of an MQTT 5 CONNACK, PUBACK or DISCONNECT (0 when the packet omits it).
    pub fn reason(&self) -> u8 {
        let at = match self.kind() {
            2 => 1,
            4 => 2,
            _ => 0,
        };
        self.body.get(at).copied().unwrap_or(0)
    }
}

/// Packet types the login attack reads.
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const SUBACK: u8 = 9;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT_KIND: u8 = 14;

/// Takes one whole packet off the front of `buf` (None while it is incomplete; an error for a
/// remaining length longer than four bytes).
pub fn take_packet(buf: &mut Vec<u8>) -> Result<Option<Packet>, String> {
    let Some(&first) = buf.first() else { return Ok(None) };
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else { return Ok(None) };
        len |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            let start = 2 + i;
            if buf.len() < start + len {
                return Ok(None);
            }
            let body = buf[start..start + len].to_vec();
            buf.drain(..start + len);
            return Ok(Some(Packet { first, body }));
        }
    }
    Err(format!("malformed remaining length (bytes: {})", super::hex_prefix(buf)))
}

/// The topic of a PUBLISH packet (None when it does not parse).
pub fn publish_topic(p: &Packet) -> Option<&str> {
    let len = usize::from(u16::from_be_bytes([*p.body.first()?, *p.body.get(1)?]));
    std::str::from_utf8(p.body.get(2..2 + len)?).ok()
}

/// Name of an MQTT 5 reason code (the ones a login attack meets).
pub fn reason_name(rc: u8) -> &'static str {
    match rc {
        0x00 => "success",
        0x10 => "no matching subscribers",
        0x80 => "unspecified error",
        0x86 => "bad user name or password",
        0x87 => "not authorized",
        0x8e => "session taken over",
        0x95 => "packet too large",
        _ => "other",
    }
}

/// What the bytes received after CONNECT amount to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnackReply {
    NeedMore,
    Connack { session_present: bool, return_code: u8 },
    NotConnack(String),
}

/// Parse the first packet after CONNECT.
pub fn parse_connack(buf: &[u8]) -> ConnackReply {
    let header_ok = buf.iter().zip([0x20u8, 0x02]).all(|(got, want)| *got == want);
    match buf {
        _ if !header_ok => {
            ConnackReply::NotConnack(format!("first packet is not a CONNACK (bytes: {})", super::hex_prefix(buf)))
        }
        [_, _, flags, rc, ..] if *flags & 0xfe == 0 => {
            ConnackReply::Connack { session_present: *flags & 1 == 1, return_code: *rc }
        }
        [_, _, flags, _, ..] => {
            ConnackReply::NotConnack(format!("CONNACK with reserved flag bits set (0x{flags:02x})"))
        }
        _ => ConnackReply::NeedMore,
    }
}

/// Name of a 3.1.1 CONNACK return code.
pub fn return_code_name(rc: u8) -> &'static str {
    match rc {
        0 => "connection accepted",
        1 => "unacceptable protocol version",
        2 => "identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorised",
        _ => "invalid return code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_bytes() {
        let packet = encode_connect("moat-probe-0123456789ab", 30);
        let mut expected = vec![0x10, 35, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 23];
        expected.extend_from_slice(b"moat-probe-0123456789ab");
        assert_eq!(packet, expected);
    }

    #[test]
    fn connect_remaining_length_is_varint() {
        let id = "x".repeat(200);
        let packet = encode_connect(&id, 0);
        // 12 bytes of variable header + 200 = 212 = 0xd4 0x01
        assert_eq!(&packet[..3], &[0x10, 0xd4, 0x01]);
        assert_eq!(packet.len(), 3 + 212);
    }

    #[test]
    fn client_id_shape() {
        let id = random_client_id();
        assert_eq!(id.len(), 23);
        assert!(id.starts_with("moat-probe-"));
        assert!(id[11..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(random_client_id(), random_client_id());
    }

    #[test]
    fn v5_packets_and_the_packet_reader() {
        let connect = encode_connect_v5("id", "u", "pw", 30);
        assert_eq!(
            connect,
            [&[0x10, 22, 0, 4, b'M', b'Q', b'T', b'T', 5, 0xc2, 0, 30, 0][..], b"\0\x02id\0\x01u\0\x02pw"].concat()
        );
        assert_eq!(encode_subscribe_v5(1, &["#"]), vec![0x82, 7, 0, 1, 0, 0, 1, b'#', 1]);
        assert_eq!(encode_publish_v5(2, "t", b"x"), vec![0x32, 7, 0, 1, b't', 0, 2, 0, b'x']);
        // a PUBACK with reason, a short PUBACK (success), and an incomplete packet
        let mut buf = vec![0x40, 3, 0, 2, 0x87, 0x40, 2, 0, 3, 0x90];
        let first = take_packet(&mut buf).unwrap().unwrap();
        assert_eq!((first.kind(), first.reason()), (PUBACK, 0x87));
        assert_eq!(take_packet(&mut buf).unwrap().unwrap().reason(), 0);
        assert_eq!(take_packet(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[4, 0, 1, 0, 0x80]);
        assert_eq!(take_packet(&mut buf).unwrap().unwrap().kind(), SUBACK);
        assert!(buf.is_empty());
        assert!(take_packet(&mut vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
        let publish = Packet { first: 0x32, body: vec![0, 3, b'a', b'/', b'b', 0, 7, 0, b'x'] };
        assert_eq!(publish_topic(&publish), Some("a/b"));
        assert_eq!(publish_topic(&Packet { first: 0x30, body: vec![0, 9, b'a'] }), None);
        let connack = Packet { first: 0x20, body: vec![0, 0x86, 0] };
        assert_eq!((connack.kind(), reason_name(connack.reason())), (CONNACK, "bad user name or password"));
    }

    #[test]
    fn connack_parsing() {
        assert_eq!(parse_connack(&[]), ConnackReply::NeedMore);
        assert_eq!(parse_connack(&[0x20]), ConnackReply::NeedMore);
        assert_eq!(parse_connack(&[0x20, 0x02, 0x00]), ConnackReply::NeedMore);
        assert_eq!(
            parse_connack(&[0x20, 0x02, 0x00, 0x05]),
            ConnackReply::Connack { session_present: false, return_code: 5 }
        );
        assert_eq!(
            parse_connack(&[0x20, 0x02, 0x01, 0x00]),
            ConnackReply::Connack { session_present: true, return_code: 0 }
        );
        for bad in [&[0x30u8][..], &[0x20, 0x03], &[0x20, 0x02, 0x02, 0x00], b"HTTP/1.1"] {
            assert!(matches!(parse_connack(bad), ConnackReply::NotConnack(_)), "{bad:?}");
        }
    }
}
