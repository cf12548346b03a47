//! Minimal MQTT 3.1.1 CONNECT / CONNACK, enough to ask a broker whether it lets an anonymous client in.

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
