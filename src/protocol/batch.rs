//! A request's frames kept as the bytes they arrived in, with their boundaries.
//!
//! A client's request (Bind, Describe, Execute, Sync, say) usually arrives in one read. Its
//! frames are cut off the read buffer together, as one `Bytes` chunk, and the batch records
//! where each frame starts and ends in it: one reference count taken and given back per
//! request, instead of one per frame (a `Bytes` per frame cost ~100 instructions each: the
//! split, the freeze, the move into the list and the drop; issue 17). A request whose frames
//! arrive in several reads holds one chunk per read (never copied); a frame never spans two
//! chunks.

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use super::{Frame, HEADER_LEN};

/// Where a frame is: its chunk, and its bytes in that chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct At {
    chunk: u32,
    start: u32,
    end: u32,
}

/// The frames of one request (or of part of one), in order.
///
/// Frames are added in two steps while a read buffer is scanned: [`Batch::note`] records a
/// complete frame still at the front of the buffer, and [`Batch::cut`] cuts every frame noted
/// since the last cut off the buffer as one chunk. Between the two, the noted frames count in
/// [`Batch::frame_count`] and [`Batch::is_empty`] but cannot be read: every frame is cut
/// before the batch is read.
#[derive(Default, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The frames' bytes, one chunk per cut.
    chunks: SmallVec<[Bytes; 1]>,
    /// Each frame's place, in order.
    frames: SmallVec<[At; 5]>,
}

/// One frame of a [`Batch`], borrowed.
#[derive(Clone, Copy)]
pub struct FrameRef<'a> {
    chunk: &'a Bytes,
    start: usize,
    end: usize,
}

impl<'a> FrameRef<'a> {
    /// The message type byte.
    #[inline]
    pub fn tag(&self) -> u8 {
        self.chunk[self.start]
    }

    /// The whole frame as it travels on the wire.
    #[inline]
    pub fn raw(&self) -> &'a [u8] {
        &self.chunk[self.start..self.end]
    }

    /// The body: everything after the length field.
    #[inline]
    pub fn body(&self) -> &'a [u8] {
        &self.chunk[self.start + HEADER_LEN..self.end]
    }

    /// Length of the frame on the wire.
    #[inline]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Always false: a frame has at least a header. Present for API symmetry with `len`.
    #[inline]
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The frame's wire bytes from `from` on (0 is the tag), sharing the batch's memory.
    #[inline]
    pub fn bytes_from(&self, from: usize) -> Bytes {
        self.chunk.slice(self.start + from..self.end)
    }
}

/// Frames of a [`Batch`] copied on unchanged into an output buffer: frames that follow each
/// other in one chunk (a Describe, Execute and Sync behind a rewritten Bind) are copied with
/// one `extend_from_slice`. Whatever else is written to the output must come after a
/// [`Passthrough::flush`].
#[derive(Default)]
pub struct Passthrough<'a> {
    /// The run of frames not copied yet: its chunk, and its bytes there.
    chunk: Option<&'a Bytes>,
    start: usize,
    end: usize,
}

impl<'a> Passthrough<'a> {
    /// Adds `frame` to the run (copying the run first if `frame` does not continue it).
    #[inline]
    pub fn add(&mut self, frame: FrameRef<'a>, out: &mut BytesMut) {
        if let Some(chunk) = self.chunk {
            if std::ptr::eq(chunk, frame.chunk) && self.end == frame.start {
                self.end = frame.end;
                return;
            }
            out.extend_from_slice(&chunk[self.start..self.end]);
        }
        *self = Passthrough {
            chunk: Some(frame.chunk),
            start: frame.start,
            end: frame.end,
        };
    }

    /// Copies the run to `out`.
    #[inline]
    pub fn flush(&mut self, out: &mut BytesMut) {
        if let Some(chunk) = self.chunk.take() {
            out.extend_from_slice(&chunk[self.start..self.end]);
        }
    }
}

impl std::fmt::Debug for FrameRef<'_> {
    // Bodies can hold passwords or row data: show the type and size only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame({:?}, {} bytes)", self.tag() as char, self.len())
    }
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Whether the batch has no frame (noted frames not yet cut count).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// How many frames the batch has (noted frames not yet cut count).
    #[inline]
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }

    /// Bytes of all its frames (cut ones).
    pub fn byte_len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    /// Drops every frame.
    #[inline]
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.frames.clear();
    }

    /// The frames, in order. Every noted frame must have been cut.
    #[inline]
    pub fn iter(&self) -> Frames<'_> {
        Frames {
            chunks: &self.chunks,
            frames: self.frames.iter(),
        }
    }

    /// Records a complete frame at `start..end` of the buffer being scanned, whose front
    /// holds the frames noted since the last [`Batch::cut`]: it becomes the batch's at the next
    /// cut. The caller bounds what it notes between cuts below 4 GiB.
    #[inline]
    pub fn note(&mut self, start: usize, end: usize) {
        debug_assert!(start < end && end <= u32::MAX as usize);
        self.frames.push(At {
            chunk: self.chunks.len() as u32,
            start: start as u32,
            end: end as u32,
        });
    }

    /// Cuts the first `len` bytes of `buf`, the frames noted since the last cut, off as the
    /// batch's next chunk (nothing when `len` is 0).
    #[inline]
    pub fn cut(&mut self, buf: &mut BytesMut, len: usize) {
        if len > 0 {
            self.chunks.push(buf.split_to(len).freeze());
        }
    }

    /// Appends a frame decoded on its own.
    pub fn push(&mut self, frame: Frame) {
        let len = frame.len();
        self.frames.push(At {
            chunk: self.chunks.len() as u32,
            start: 0,
            end: len as u32,
        });
        self.chunks.push(frame.into_raw());
    }
}

/// The frames of a [`Batch`], in order.
#[derive(Clone)]
pub struct Frames<'a> {
    chunks: &'a [Bytes],
    frames: std::slice::Iter<'a, At>,
}

impl<'a> Iterator for Frames<'a> {
    type Item = FrameRef<'a>;

    #[inline]
    fn next(&mut self) -> Option<FrameRef<'a>> {
        let at = self.frames.next()?;
        Some(FrameRef {
            chunk: &self.chunks[at.chunk as usize],
            start: at.start as usize,
            end: at.end as usize,
        })
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.frames.size_hint()
    }
}

impl<'a> IntoIterator for &'a Batch {
    type Item = FrameRef<'a>;
    type IntoIter = Frames<'a>;

    #[inline]
    fn into_iter(self) -> Frames<'a> {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::put_frame;
    use bytes::BufMut;

    fn frames(spec: &[(u8, &[u8])]) -> BytesMut {
        let mut b = BytesMut::new();
        for (tag, body) in spec {
            put_frame(&mut b, *tag, body);
        }
        b
    }

    #[test]
    fn noted_frames_are_cut_as_one_chunk_and_read_back() {
        let mut buf = frames(&[
            (b'B', b"\0s1\0\0\0\0\0\0\0"),
            (b'E', b"\0\0\0\0\0"),
            (b'S', b""),
        ]);
        buf.put_u8(b'Q'); // the start of the next request stays
        let mut batch = Batch::new();
        let mut at = 0;
        for len in [15, 10, 5] {
            batch.note(at, at + len);
            at += len;
        }
        assert_eq!(batch.frame_count(), 3);
        batch.cut(&mut buf, at);
        assert_eq!(&buf[..], b"Q");
        let tags: Vec<u8> = batch.iter().map(|f| f.tag()).collect();
        assert_eq!(tags, b"BES");
        let f: Vec<FrameRef<'_>> = batch.iter().collect();
        assert_eq!(f[0].body(), b"\0s1\0\0\0\0\0\0\0");
        assert_eq!(f[1].len(), 10);
        assert_eq!(f[2].raw(), b"S\0\0\0\x04");
        assert_eq!(&f[0].bytes_from(6)[..], b"s1\0\0\0\0\0\0\0");
        assert_eq!(batch.byte_len(), 30);
    }

    #[test]
    fn passthrough_copies_runs_in_order() {
        let mut batch = Batch::new();
        let mut first = frames(&[(b'B', b"\0\0\0\0\0\0\0"), (b'E', b"\0\0\0\0\0")]);
        batch.note(0, 12);
        batch.note(12, 22);
        batch.cut(&mut first, 22);
        batch.push(Frame::new(b'S', b""));
        let mut out = BytesMut::new();
        let mut run = Passthrough::default();
        for (i, f) in batch.iter().enumerate() {
            if i == 0 {
                // Rewritten: whatever ran before is copied first.
                run.flush(&mut out);
                out.extend_from_slice(b"<B>");
            } else {
                run.add(f, &mut out);
            }
        }
        run.flush(&mut out);
        let mut want = BytesMut::from(&b"<B>"[..]);
        want.extend_from_slice(&frames(&[(b'E', b"\0\0\0\0\0"), (b'S', b"")]));
        assert_eq!(out, want);
    }

    #[test]
    fn frames_of_several_reads_keep_their_order() {
        let mut batch = Batch::new();
        let mut first = frames(&[(b'P', b"\0select 1\0\0\0")]);
        batch.note(0, first.len());
        let n = first.len();
        batch.cut(&mut first, n);
        batch.push(Frame::new(b'D', b"P\0"));
        let mut third = frames(&[(b'E', b"\0\0\0\0\0"), (b'S', b"")]);
        batch.note(0, 10);
        batch.note(10, 15);
        batch.cut(&mut third, 15);
        let tags: Vec<u8> = batch.iter().map(|f| f.tag()).collect();
        assert_eq!(tags, b"PDES");
        assert_eq!(batch.iter().nth(1).unwrap().body(), b"P\0");
        batch.clear();
        assert!(batch.is_empty());
        assert_eq!(batch.byte_len(), 0);
    }
}
