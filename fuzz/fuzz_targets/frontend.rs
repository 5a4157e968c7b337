//! Fuzz target: tagged frames from an authenticated client (`decode_frame`) and the zero-copy
//! views of the frontend messages the router reads (`query_text`, `parse`, `bind`,
//! `describe_or_close`, `execute`).
//!
//! The first two input bytes pick the frame length limit (small limits reach the "too large"
//! path), the third where the stream is split into two reads; the rest is the stream. Checked:
//! no panic; a frame is exactly its announced length; frames put back together are the bytes
//! consumed; two reads decode like one; nothing is reserved for a frame over the limit; and
//! every view, whatever the frame's tag, only ever returns parts of the body it was given.
#![no_main]

use bytes::{Bytes, BytesMut};
use causeway::protocol::frontend::{
    bind, describe_or_close, execute, is_known_tag, parse, query_text, Target,
};
use causeway::protocol::{decode_frame, Frame, ProtocolError, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

/// Frames in order, the error that stopped decoding (if any), and the bytes left over.
type Outcome = (Vec<Frame>, Option<ProtocolError>, Vec<u8>);

/// Feeds `parts` one after the other, cutting frames after each. Decoding stops at the first
/// error; the parts not fed by then count as left over.
fn decode_in_parts(parts: &[&[u8]], max: usize) -> Outcome {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        buf.extend_from_slice(part);
        loop {
            let (before, cap_before) = (buf.len(), buf.capacity());
            match decode_frame(&mut buf, max) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => {
                    // At most the rest of a legal frame is reserved (a growing buffer may
                    // double).
                    assert!(buf.capacity() <= (2 * cap_before).max(2 * (max + HEADER_LEN)));
                    break;
                }
                Err(e) => {
                    assert_eq!(buf.len(), before, "an error consumed bytes");
                    let left = [&buf[..]].into_iter().chain(parts[i + 1..].iter().copied());
                    return (frames, Some(e), left.flatten().copied().collect());
                }
            }
        }
    }
    (frames, None, buf.to_vec())
}

/// Whether `part` lies inside `whole` (views must borrow from the body, never elsewhere).
fn within(part: &[u8], whole: &[u8]) -> bool {
    let (w, p) = (whole.as_ptr() as usize, part.as_ptr() as usize);
    part.is_empty() || (p >= w && p + part.len() <= w + whole.len())
}

/// Runs every view over `body` and checks what the successful ones return.
fn check_views(body: &[u8]) {
    if let Ok(text) = query_text(body) {
        assert!(within(text, body));
        assert_eq!(text.len() + 1, body.len());
    }
    if let Ok(p) = parse(body) {
        assert!(within(p.name, body) && within(p.query, body));
        assert!(p.param_types >= 0);
        let tail = p.name.len() + p.query.len() + 2 + 2;
        assert_eq!(body.len(), tail + 4 * p.param_types as usize);
    }
    if let Ok(b) = bind(body) {
        assert!(within(b.portal, body) && within(b.statement, body));
        assert!(!b.portal.contains(&0) && !b.statement.contains(&0));
    }
    if let Ok(target) = describe_or_close(body) {
        let name = match target {
            Target::Statement(n) | Target::Portal(n) => n,
        };
        assert!(within(name, body));
        assert_eq!(name.len() + 2, body.len());
    }
    if let Ok(e) = execute(body) {
        assert!(within(e.portal, body));
    }
}

fuzz_target!(|data: &[u8]| {
    let [a, b, split, stream @ ..] = data else {
        return;
    };
    // Limits from 0 up to 64 KiB: the small ones make "too large" reachable.
    let max = usize::from(u16::from_be_bytes([*a, *b]));
    let whole = decode_in_parts(&[stream], max);
    let cut = usize::from(*split).min(stream.len());
    let parts = decode_in_parts(&[&stream[..cut], &stream[cut..]], max);
    assert_eq!(whole, parts, "decoding depends on how the bytes were split");

    let (frames, error, rest) = &whole;
    let consumed: Vec<u8> = frames.iter().flat_map(|f| f.raw().to_vec()).collect();
    assert_eq!(&stream[..consumed.len()], &consumed[..]);
    assert_eq!(consumed.len() + rest.len(), stream.len());
    for frame in frames {
        let raw: &Bytes = frame.raw();
        let announced = i32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]);
        assert_eq!(announced as usize + 1, frame.len());
        assert!(frame.len() <= max + 1 && frame.len() >= HEADER_LEN);
        assert_eq!(frame.tag(), raw[0]);
        let _ = is_known_tag(frame.tag());
        check_views(frame.body());
    }
    if let Some(e) = error {
        let _ = (e.to_string(), e.sqlstate());
    }
    // The views are also called on raw bodies that never went through the framing.
    check_views(stream);
});
