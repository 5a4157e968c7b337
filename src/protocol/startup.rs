//! Untagged packets a client sends before the message stream starts: StartupMessage,
//! SSLRequest, GSSENCRequest and CancelRequest.
//!
//! They have no tag byte (just an int32 length and an int32 code), which is why decoding depends
//! on connection state: the session calls [`decode_startup`] until a StartupMessage has been
//! accepted, and [`super::decode_frame`] afterwards.

use bytes::BytesMut;

use super::{memchr, ProtocolError, MAX_STARTUP_PACKET_LEN};

/// Request code of an SSLRequest (1234.5679).
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
/// Request code of a GSSENCRequest (1234.5680).
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
/// Request code of a CancelRequest (1234.5678).
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// The protocol version causeway speaks on both sides: 3.0.
pub const PROTOCOL_V3_0: i32 = 3 << 16;

/// A decoded untagged packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// The client asks whether TLS is available.
    SslRequest,
    /// The client asks whether GSSAPI encryption is available.
    GssEncRequest,
    /// The client asks to cancel the query running on another connection.
    Cancel(CancelKey),
    /// The client opens a session.
    Startup(StartupMessage),
}

/// The key that identifies a session for cancellation: process id and secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelKey {
    /// The (possibly proxy-made) process id.
    pub pid: i32,
    /// The secret that goes with it.
    pub secret: i32,
}

impl CancelKey {
    /// Encodes a CancelRequest packet carrying this key.
    pub fn to_request(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        out[0..4].copy_from_slice(&16i32.to_be_bytes());
        out[4..8].copy_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
        out[8..12].copy_from_slice(&self.pid.to_be_bytes());
        out[12..16].copy_from_slice(&self.secret.to_be_bytes());
        out
    }
}

/// A StartupMessage: the protocol version and the session's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// Requested major version (always 3 once accepted).
    pub major: u16,
    /// Requested minor version; above 0 is answered with NegotiateProtocolVersion.
    pub minor: u16,
    /// Parameters in the order sent (`user`, `database`, `application_name`, `options`, ...).
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// The value of a parameter, if sent.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Names of `_pq_.` protocol options, which causeway does not support; they are listed in
    /// NegotiateProtocolVersion.
    pub fn protocol_options(&self) -> impl Iterator<Item = &str> {
        self.params
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| k.starts_with("_pq_."))
    }

    /// Encodes a StartupMessage (protocol 3.0) with the given parameters.
    pub fn encode<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> BytesMut {
        let mut buf = BytesMut::with_capacity(128);
        buf.extend_from_slice(&[0, 0, 0, 0]);
        buf.extend_from_slice(&PROTOCOL_V3_0.to_be_bytes());
        for (k, v) in params {
            buf.extend_from_slice(k.as_bytes());
            buf.extend_from_slice(&[0]);
            buf.extend_from_slice(v.as_bytes());
            buf.extend_from_slice(&[0]);
        }
        buf.extend_from_slice(&[0]);
        let len = buf.len() as i32;
        buf[0..4].copy_from_slice(&len.to_be_bytes());
        buf
    }
}

/// Cuts the next untagged packet off the front of `buf`.
///
/// `Ok(None)` means incomplete. The length is checked against [`MAX_STARTUP_PACKET_LEN`] before
/// anything is reserved.
pub fn decode_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, ProtocolError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 {
        return Err(ProtocolError::InvalidLength {
            tag: '\0',
            len: len as i64,
        });
    }
    let len = len as usize;
    if len > MAX_STARTUP_PACKET_LEN {
        return Err(ProtocolError::TooLarge {
            tag: '\0',
            len,
            max: MAX_STARTUP_PACKET_LEN,
        });
    }
    if buf.len() < len {
        buf.reserve(len - buf.len());
        return Ok(None);
    }
    let packet = buf.split_to(len);
    parse_startup(&packet[4..]).map(Some)
}

/// Parses the packet after its length field.
fn parse_startup(body: &[u8]) -> Result<StartupPacket, ProtocolError> {
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let rest = &body[4..];
    match code {
        SSL_REQUEST_CODE if rest.is_empty() => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE if rest.is_empty() => Ok(StartupPacket::GssEncRequest),
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => Err(ProtocolError::malformed(
            "encryption request",
            "unexpected bytes after the code",
        )),
        CANCEL_REQUEST_CODE => {
            // Protocol 3.0 keys are 4 bytes; longer 3.2 keys cannot match a key we issued.
            if rest.len() != 8 {
                return Err(ProtocolError::malformed("CancelRequest", "bad length"));
            }
            Ok(StartupPacket::Cancel(CancelKey {
                pid: i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]),
                secret: i32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]),
            }))
        }
        version => {
            let major = (version >> 16) as u16;
            let minor = (version & 0xffff) as u16;
            if major != 3 {
                return Err(ProtocolError::UnsupportedVersion { major, minor });
            }
            Ok(StartupPacket::Startup(StartupMessage {
                major,
                minor,
                params: parse_params(rest)?,
            }))
        }
    }
}

/// Parses `name\0value\0...\0`.
fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, ProtocolError> {
    const WHAT: &str = "startup packet";
    let mut params = Vec::new();
    loop {
        match rest {
            [0] => return Ok(params),
            [] => return Err(ProtocolError::malformed(WHAT, "missing terminator")),
            _ => {}
        }
        let name_end =
            memchr(0, rest).ok_or(ProtocolError::malformed(WHAT, "unterminated name"))?;
        let name = &rest[..name_end];
        rest = &rest[name_end + 1..];
        let value_end =
            memchr(0, rest).ok_or(ProtocolError::malformed(WHAT, "unterminated value"))?;
        let value = &rest[..value_end];
        rest = &rest[value_end + 1..];
        if name.is_empty() {
            return Err(ProtocolError::malformed(WHAT, "empty parameter name"));
        }
        let utf8 = |b: &[u8]| {
            std::str::from_utf8(b)
                .map(str::to_owned)
                .map_err(|_| ProtocolError::malformed(WHAT, "parameter is not valid UTF-8"))
        };
        params.push((utf8(name)?, utf8(value)?));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, rest: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((8 + rest.len()) as i32).to_be_bytes());
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(rest);
        v
    }

    fn decode_whole(bytes: &[u8]) -> Result<Option<StartupPacket>, ProtocolError> {
        let mut buf = BytesMut::from(bytes);
        let r = decode_startup(&mut buf);
        if matches!(r, Ok(Some(_))) {
            assert!(buf.is_empty());
        }
        r
    }

    #[test]
    fn startup_round_trip_and_every_cut() {
        let encoded = StartupMessage::encode([("user", "app"), ("database", "db1")]);
        let expected = StartupPacket::Startup(StartupMessage {
            major: 3,
            minor: 0,
            params: vec![
                ("user".into(), "app".into()),
                ("database".into(), "db1".into()),
            ],
        });
        assert_eq!(decode_whole(&encoded).unwrap(), Some(expected.clone()));
        for cut in 0..encoded.len() {
            let mut buf = BytesMut::from(&encoded[..cut]);
            assert_eq!(decode_startup(&mut buf).unwrap(), None, "cut {cut}");
            buf.extend_from_slice(&encoded[cut..]);
            assert_eq!(decode_startup(&mut buf).unwrap(), Some(expected.clone()));
        }
    }

    #[test]
    fn special_requests() {
        assert_eq!(
            decode_whole(&packet(SSL_REQUEST_CODE, b"")).unwrap(),
            Some(StartupPacket::SslRequest)
        );
        assert_eq!(
            decode_whole(&packet(GSSENC_REQUEST_CODE, b"")).unwrap(),
            Some(StartupPacket::GssEncRequest)
        );
        let key = CancelKey {
            pid: 42,
            secret: -7,
        };
        assert_eq!(
            decode_whole(&key.to_request()).unwrap(),
            Some(StartupPacket::Cancel(key))
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode_whole(&packet(2 << 16, b"\0")).is_err());
        assert!(decode_whole(&packet(PROTOCOL_V3_0, b"user\0app")).is_err());
        assert!(decode_whole(&packet(PROTOCOL_V3_0, b"user\0app\0")).is_err());
        assert!(decode_whole(&packet(PROTOCOL_V3_0, b"\0x\0\0")).is_err());
        assert!(decode_whole(&packet(PROTOCOL_V3_0, b"user\0\xff\0\0")).is_err());
        assert!(decode_whole(&packet(CANCEL_REQUEST_CODE, b"1234")).is_err());
        assert!(decode_whole(&[0, 0, 0, 3, 0, 0, 0, 0]).is_err());
        assert!(matches!(
            decode_whole(&[0x7f, 0xff, 0xff, 0xff]),
            Err(ProtocolError::TooLarge { .. })
        ));
        // "GET / HTTP/1.1" read as a length is far over the limit.
        assert!(decode_whole(b"GET / HTTP/1.1\r\n").is_err());
    }

    #[test]
    fn minor_version_and_options_are_reported() {
        let mut rest = Vec::new();
        rest.extend_from_slice(b"user\0u\0_pq_.foo\0bar\0\0");
        match decode_whole(&packet((3 << 16) | 2, &rest)).unwrap() {
            Some(StartupPacket::Startup(m)) => {
                assert_eq!(m.minor, 2);
                assert_eq!(m.protocol_options().collect::<Vec<_>>(), vec!["_pq_.foo"]);
                assert_eq!(m.param("user"), Some("u"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x1234_5678u32;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let n = (seed % 40) as usize;
            let mut v = Vec::with_capacity(n + 8);
            let len = 8 + (seed >> 8) % 40;
            v.extend_from_slice(&len.to_be_bytes());
            v.extend_from_slice(&[0, 3, 0, 0]);
            for i in 0..n {
                v.push((seed.rotate_left(i as u32) & 0xff) as u8);
            }
            let mut buf = BytesMut::from(&v[..]);
            let _ = decode_startup(&mut buf);
        }
    }
}
