//! Fuzz target: the untagged startup packets a client sends first (`decode_startup`).
//!
//! Arbitrary bytes are what any TCP peer can send before authenticating, so the decoder must
//! never panic and never reserve more than the startup packet limit. Beyond that, it checks
//! that decoding is incremental: the same bytes delivered in two reads (split where the first
//! input byte says) give the same packets, the same error and the same bytes left over as one
//! read, and that a decoded
//! StartupMessage or CancelRequest encodes back to a packet that decodes to itself.
#![no_main]

use bytes::BytesMut;
use causeway::protocol::startup::{decode_startup, StartupMessage, StartupPacket};
use causeway::protocol::{ProtocolError, MAX_STARTUP_PACKET_LEN};
use libfuzzer_sys::fuzz_target;

/// What decoding a whole stream gave: the packets in order, then the error that stopped it
/// (if any) and the bytes left over.
type Outcome = (Vec<StartupPacket>, Option<ProtocolError>, Vec<u8>);

/// Decodes packets from `buf` until it is incomplete or invalid.
fn drain(buf: &mut BytesMut, out: &mut Vec<StartupPacket>) -> Option<ProtocolError> {
    loop {
        let (before, cap_before) = (buf.len(), buf.capacity());
        match decode_startup(buf) {
            Ok(Some(packet)) => {
                assert!(buf.len() < before, "a packet consumed nothing");
                out.push(packet);
            }
            Ok(None) => {
                // Incomplete: at most room for the rest of a legal packet may be reserved (a
                // growing buffer may double, hence the factor).
                assert!(buf.capacity() <= (2 * cap_before).max(2 * MAX_STARTUP_PACKET_LEN));
                return None;
            }
            Err(e) => {
                // A bad header consumes nothing; a bad body, that one packet.
                assert!(before - buf.len() <= MAX_STARTUP_PACKET_LEN);
                return Some(e);
            }
        }
    }
}

/// Feeds `parts` one after the other, decoding after each. Decoding stops at the first error;
/// the parts not fed by then count as left over.
fn decode_in_parts(parts: &[&[u8]]) -> Outcome {
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        buf.extend_from_slice(part);
        if let Some(e) = drain(&mut buf, &mut packets) {
            let left = [&buf[..]].into_iter().chain(parts[i + 1..].iter().copied());
            return (packets, Some(e), left.flatten().copied().collect());
        }
    }
    (packets, None, buf.to_vec())
}

/// A decoded packet re-encoded must decode to the same packet.
fn check_round_trip(packet: &StartupPacket) {
    let encoded = match packet {
        StartupPacket::Startup(m) if m.minor == 0 => {
            StartupMessage::encode(m.params.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        }
        StartupPacket::Cancel(key) => BytesMut::from(&key.to_request()[..]),
        _ => return,
    };
    if encoded.len() > MAX_STARTUP_PACKET_LEN {
        return;
    }
    let mut buf = encoded;
    let again = decode_startup(&mut buf).expect("re-encoded packet must decode");
    assert_eq!(again.as_ref(), Some(packet));
    assert!(buf.is_empty());
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let whole = decode_in_parts(&[stream]);
    let cut = (split as usize).min(stream.len());
    let parts = decode_in_parts(&[&stream[..cut], &stream[cut..]]);
    assert_eq!(whole, parts, "decoding depends on how the bytes were split");
    for packet in &whole.0 {
        if let StartupPacket::Startup(m) = packet {
            assert_eq!(m.major, 3);
            let _ = m.param("user");
            let _ = m.protocol_options().count();
        }
        check_round_trip(packet);
    }
    if let Some(e) = &whole.1 {
        let _ = (e.to_string(), e.sqlstate());
    }
});
