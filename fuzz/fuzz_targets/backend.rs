//! Fuzz target: the server reply stream (`ReplyScanner::step`) and the backend message readers
//! (`ready_for_query`, `error_fields`, `parameter_status`, `auth_request`, `backend_key_data`).
//!
//! Input layout: byte 0 picks which tags the caller inspects (one bit per tag of `INSPECTABLE`),
//! bytes 1-2 the inspect limit, byte 3 how many chunk sizes follow, then the chunk sizes (one
//! byte each, the reads the socket delivers, cycled), then the stream. Checked: no panic, no
//! endless loop; every step obeys its contract (a passthrough is non-empty and within the
//! buffer, an inspected frame is whole, of an inspected type and within the limit); the bytes
//! handed out (passed through plus inspected) are exactly the stream's prefix, in order; and a
//! stream delivered in small reads scans like one delivered whole: same bytes passed through,
//! same frames inspected, same bytes left, and an error in one delivery is an error in the
//! other.
#![no_main]

use bytes::{Buf, BytesMut};
use causeway::protocol::backend::{
    auth_request, backend_key_data, error_fields, parameter_status, ready_for_query, tag,
    ReplyScanner, Step,
};
use libfuzzer_sys::fuzz_target;

/// The tags the proxy reads whole in practice, selectable by the input's first byte.
const INSPECTABLE: [u8; 8] = [
    tag::READY_FOR_QUERY,
    tag::PARAMETER_STATUS,
    tag::ERROR_RESPONSE,
    tag::COMMAND_COMPLETE,
    tag::COPY_IN_RESPONSE,
    tag::NOTICE_RESPONSE,
    tag::BACKEND_KEY_DATA,
    tag::AUTHENTICATION,
];

/// What scanning a whole stream gave.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// Passthrough bytes, concatenated.
    passed: Vec<u8>,
    /// Inspected frames, whole, in order.
    inspected: Vec<Vec<u8>>,
    /// Whether a step failed (scanning stops there).
    failed: bool,
    /// Bytes still in the buffer at the end.
    left: Vec<u8>,
}

/// Scans `stream` delivered in reads of the given sizes (cycled; an empty list means one read
/// of everything).
fn scan(stream: &[u8], chunks: &[usize], mask: u8, max_inspect: usize) -> Outcome {
    let inspect = |t: u8| {
        INSPECTABLE
            .iter()
            .enumerate()
            .any(|(i, &x)| x == t && mask & (1 << i) != 0)
    };
    let mut scanner = ReplyScanner::default();
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut sizes = chunks.iter().cycle();
    let mut out = Outcome {
        passed: Vec::new(),
        inspected: Vec::new(),
        failed: false,
        left: Vec::new(),
    };
    let mut handed_out = Vec::new();
    loop {
        match scanner.step(&buf, max_inspect, inspect) {
            Ok(Step::Passthrough(n)) => {
                assert!(
                    n > 0 && n <= buf.len(),
                    "passthrough of {n} of {}",
                    buf.len()
                );
                let part = buf.split_to(n);
                out.passed.extend_from_slice(&part);
                handed_out.extend_from_slice(&part);
            }
            Ok(Step::Inspect(h)) => {
                assert!(inspect(h.tag), "inspected a tag not asked for");
                assert!(h.frame_len <= buf.len() && h.frame_len <= max_inspect);
                assert!(scanner.at_boundary());
                assert_eq!(buf[0], h.tag);
                let frame = buf.split_to(h.frame_len);
                handed_out.extend_from_slice(&frame);
                check_body(h.tag, &frame[5..]);
                out.inspected.push(frame.to_vec());
            }
            Ok(Step::NeedMore) => {
                if fed == stream.len() {
                    break;
                }
                let n = sizes.next().copied().unwrap_or(stream.len());
                let n = n.clamp(1, stream.len() - fed);
                buf.extend_from_slice(&stream[fed..fed + n]);
                fed += n;
            }
            Err(e) => {
                let _ = (e.to_string(), e.sqlstate());
                out.failed = true;
                break;
            }
        }
    }
    assert_eq!(&stream[..handed_out.len()], &handed_out[..]);
    out.left = buf.chunk().to_vec();
    out
}

/// Runs the reader that goes with `tag` (and, for robustness, every other one) over `body`.
fn check_body(tag: u8, body: &[u8]) {
    let rfq = ready_for_query(body);
    if tag == tag::READY_FOR_QUERY {
        assert_eq!(rfq.is_ok(), matches!(body, [b'I' | b'T' | b'E']));
    }
    if let Ok(status) = rfq {
        assert_eq!([status.as_byte()], body);
    }
    if let Ok(fields) = error_fields(body) {
        let _ = fields.is_fatal();
    }
    if let Ok((name, value)) = parameter_status(body) {
        assert!(name.len() + value.len() + 2 <= body.len());
    }
    let _ = auth_request(body);
    let _ = backend_key_data(body);
}

fuzz_target!(|data: &[u8]| {
    let [mask, hi, lo, n_chunks, rest @ ..] = data else {
        return;
    };
    let max_inspect = usize::from(u16::from_be_bytes([*hi, *lo]));
    let n_chunks = usize::from(*n_chunks % 16).min(rest.len());
    let (chunks, stream) = rest.split_at(n_chunks);
    let chunks: Vec<usize> = chunks.iter().map(|&c| usize::from(c)).collect();

    let whole = scan(stream, &[], *mask, max_inspect);
    let pieces = scan(stream, &chunks, *mask, max_inspect);
    if whole.failed || pieces.failed {
        // Where exactly a bad header is noticed depends on the reads; that it is does not.
        assert_eq!(whole.failed, pieces.failed, "{whole:?} vs {pieces:?}");
    } else {
        assert_eq!(whole, pieces, "scanning depends on how the bytes arrived");
    }
    check_body(0, stream);
});
