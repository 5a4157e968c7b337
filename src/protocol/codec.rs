//! Framing: tagged frames (`tag`, int32 length, body) cut out of a read buffer.
//!
//! Decoding is incremental and cancellation-safe by construction: the caller owns a `BytesMut`,
//! appends whatever the socket gave (`read_buf`), and calls [`decode_frame`] until it returns
//! `Ok(None)`. Partial bytes stay in the buffer, so a read raced inside `select!` and dropped
//! loses nothing. A complete frame is cut off with `split_to().freeze()`: no copy.
//!
//! The announced length is checked against the caller's limit before anything is reserved, and
//! room for the rest of a legal frame grows with the bytes that actually arrive (at most
//! [`GROW_MIN`] or as much as has arrived, at a time): a client announcing a 64 MiB message and
//! sending 5 bytes of it costs 64 KiB, not 64 MiB.

use bytes::{BufMut, Bytes, BytesMut};

use super::{ProtocolError, HEADER_LEN};

/// Room reserved at once for an incomplete frame, at least (a frame's missing part, if
/// smaller): beyond it the buffer grows by as much as has arrived.
pub const GROW_MIN: usize = 64 * 1024;

/// A frame header: tag byte and total length of the frame (tag + length field + body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The message type byte.
    pub tag: u8,
    /// Length of the whole frame in bytes, tag included (announced length + 1).
    pub frame_len: usize,
}

/// Reads a frame header at the start of `buf` without consuming anything.
///
/// Returns `Ok(None)` when fewer than five bytes are available. Fails when the announced length
/// is below 4 (impossible) or above `max` (refused before any allocation).
#[inline]
pub fn peek_header(buf: &[u8], max: usize) -> Result<Option<Header>, ProtocolError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(ProtocolError::InvalidLength {
            tag: tag as char,
            len: len as i64,
        });
    }
    let len = len as usize;
    if len > max {
        return Err(ProtocolError::TooLarge {
            tag: tag as char,
            len,
            max,
        });
    }
    Ok(Some(Header {
        tag,
        frame_len: len + 1,
    }))
}

/// One complete tagged frame, header included, sharing the read buffer's memory.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// Tag byte, length and body; always at least [`HEADER_LEN`] bytes with a consistent length.
    raw: Bytes,
}

impl Frame {
    /// Builds a frame from a tag and a body (used for messages the proxy writes itself).
    pub fn new(tag: u8, body: &[u8]) -> Frame {
        let mut buf = BytesMut::with_capacity(HEADER_LEN + body.len());
        put_frame(&mut buf, tag, body);
        Frame { raw: buf.freeze() }
    }

    /// Wraps bytes already known to hold exactly one well-formed frame.
    fn from_raw(raw: Bytes) -> Frame {
        debug_assert!(raw.len() >= HEADER_LEN);
        Frame { raw }
    }

    /// The message type byte.
    #[inline]
    pub fn tag(&self) -> u8 {
        self.raw[0]
    }

    /// The body: everything after the length field.
    #[inline]
    pub fn body(&self) -> &[u8] {
        &self.raw[HEADER_LEN..]
    }

    /// The whole frame as it travels on the wire.
    #[inline]
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Consumes the frame, returning its wire bytes.
    #[inline]
    pub fn into_raw(self) -> Bytes {
        self.raw
    }

    /// Length of the frame on the wire.
    #[inline]
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Always false: a frame has at least a header. Present for API symmetry with `len`.
    #[inline]
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl std::fmt::Debug for Frame {
    // Bodies can hold passwords or row data: show the type and size only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({:?}, {} bytes)", self.tag() as char, self.len())
    }
}

/// Cuts the next complete frame off the front of `buf`.
///
/// `Ok(None)` means "incomplete, read more": the buffer is left untouched except that room for
/// the rest of a legal frame may be reserved.
pub fn decode_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Frame>, ProtocolError> {
    let Some(header) = peek_header(buf, max)? else {
        return Ok(None);
    };
    if buf.len() < header.frame_len {
        let missing = header.frame_len - buf.len();
        buf.reserve(missing.min(buf.len().max(GROW_MIN)));
        return Ok(None);
    }
    Ok(Some(Frame::from_raw(
        buf.split_to(header.frame_len).freeze(),
    )))
}

/// Appends a frame with the given tag and body to `dst`.
pub fn put_frame(dst: &mut BytesMut, tag: u8, body: &[u8]) {
    dst.reserve(HEADER_LEN + body.len());
    dst.put_u8(tag);
    dst.put_i32((body.len() + 4) as i32);
    dst.put_slice(body);
}

/// Appends a frame whose body is written by `fill`, patching the length afterwards.
pub fn put_frame_with(dst: &mut BytesMut, tag: u8, fill: impl FnOnce(&mut BytesMut)) {
    let start = dst.len();
    dst.put_u8(tag);
    dst.put_i32(0);
    fill(dst);
    let len = (dst.len() - start - 1) as i32;
    dst[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// Appends a frame whose body is `parts` one after the other, with one reservation and the
/// header written at once (the Bind rewrite on every prepared query: fewer, larger copies).
#[inline]
pub fn put_frame_parts(dst: &mut BytesMut, tag: u8, parts: &[&[u8]]) {
    let body: usize = parts.iter().map(|p| p.len()).sum();
    dst.reserve(HEADER_LEN + body);
    let len = ((body + 4) as i32).to_be_bytes();
    dst.extend_from_slice(&[tag, len[0], len[1], len[2], len[3]]);
    for p in parts {
        dst.extend_from_slice(p);
    }
}

/// Appends a NUL-terminated string.
pub fn put_cstr(dst: &mut BytesMut, s: &[u8]) {
    dst.put_slice(s);
    dst.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_stream() -> Vec<u8> {
        let mut b = BytesMut::new();
        put_frame(&mut b, b'Q', b"select 1\0");
        put_frame(&mut b, b'S', b"");
        put_frame(&mut b, b'D', &[0, 1, 0, 0, 0, 3, b'a', b'b', b'c']);
        put_frame(&mut b, b'Z', b"I");
        b.to_vec()
    }

    fn decode_all(input: &[u8], max: usize) -> Result<Vec<Frame>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(f) = decode_frame(&mut buf, max)? {
            out.push(f);
        }
        assert!(buf.is_empty(), "left over bytes");
        Ok(out)
    }

    #[test]
    fn round_trips_frames() {
        let stream = sample_stream();
        let frames = decode_all(&stream, 1 << 20).unwrap();
        let tags: Vec<u8> = frames.iter().map(Frame::tag).collect();
        assert_eq!(tags, b"QSDZ");
        assert_eq!(frames[0].body(), b"select 1\0");
        assert_eq!(frames[1].body(), b"");
        let rebuilt: Vec<u8> = frames.iter().flat_map(|f| f.raw().to_vec()).collect();
        assert_eq!(rebuilt, stream);
        assert_eq!(Frame::new(b'Q', b"select 1\0"), frames[0]);
    }

    #[test]
    fn every_split_point_decodes_the_same() {
        let stream = sample_stream();
        let expected = decode_all(&stream, 1 << 20).unwrap();
        for cut in 0..=stream.len() {
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                buf.extend_from_slice(part);
                while let Some(f) = decode_frame(&mut buf, 1 << 20).unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, expected, "cut at {cut}");
            assert!(buf.is_empty());
        }
        // One byte at a time.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in &stream {
            buf.put_u8(*b);
            while let Some(f) = decode_frame(&mut buf, 1 << 20).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn rejects_oversized_before_allocating() {
        let mut buf = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        let err = decode_frame(&mut buf, 1 << 20).unwrap_err();
        assert!(matches!(err, ProtocolError::TooLarge { tag: 'Q', .. }));
        assert!(
            buf.capacity() < 1 << 20,
            "must not reserve the announced size"
        );
    }

    #[test]
    fn room_grows_with_the_bytes_that_arrive() {
        let max = 64 << 20;
        let mut buf = BytesMut::new();
        buf.put_u8(b'Q');
        buf.put_i32(max as i32 - 1);
        assert!(decode_frame(&mut buf, max).unwrap().is_none());
        assert!(
            buf.capacity() <= 2 * GROW_MIN,
            "a 64 MiB announcement reserved {} bytes",
            buf.capacity()
        );
        // As bytes arrive, room stays within a small multiple of them.
        while buf.len() < 4 << 20 {
            let room = buf.capacity() - buf.len();
            buf.put_bytes(b'x', room.max(1));
            assert!(decode_frame(&mut buf, max).unwrap().is_none());
            assert!(buf.capacity() <= 2 * buf.len() + 2 * GROW_MIN);
        }
    }

    #[test]
    fn rejects_impossible_lengths() {
        for len in [-1i32, 0, 3, i32::MIN] {
            let mut buf = BytesMut::new();
            buf.put_u8(b'Q');
            buf.put_i32(len);
            assert!(matches!(
                decode_frame(&mut buf, 1 << 20),
                Err(ProtocolError::InvalidLength { .. })
            ));
        }
    }

    #[test]
    fn put_frame_parts_is_put_frame() {
        let mut a = BytesMut::new();
        put_frame_parts(&mut a, b'B', &[b"p\0", b"cw_1", b"\0rest"]);
        let mut b = BytesMut::new();
        put_frame(&mut b, b'B', b"p\0cw_1\0rest");
        assert_eq!(a, b);
    }

    #[test]
    fn put_frame_with_patches_length() {
        let mut a = BytesMut::new();
        put_frame_with(&mut a, b'C', |b| put_cstr(b, b"SELECT 1"));
        let mut b = BytesMut::new();
        put_frame(&mut b, b'C', b"SELECT 1\0");
        assert_eq!(a, b);
    }
}
