//! Sans-I/O PostgreSQL v3 wire layer.
//!
//! Nothing here touches a socket: functions take byte buffers and return frames, views or
//! encoded bytes, so the same code serves the client side, the server side, tests and fuzzers.
//!
//! The proxy only *understands* a handful of messages (startup packets, ReadyForQuery,
//! ErrorResponse, ParameterStatus, BackendKeyData, Authentication, and the frontend messages the
//! router classifies). Everything else is forwarded as opaque frames: a tag byte, a length, and
//! bytes nobody looks at.
//!
//! Frames are checked against a maximum length *before* any memory is reserved for them, so a
//! peer cannot make the proxy allocate a size of its choosing.

pub mod backend;
pub mod batch;
pub mod codec;
pub mod frontend;
pub mod lsn;
pub mod messages;
pub mod sqlstate;
pub mod startup;

pub use batch::{Batch, FrameRef};
pub use codec::{decode_frame, peek_header, Frame, Header};
pub use lsn::Lsn;
pub use sqlstate::SqlState;

/// Length of a tagged frame header: one tag byte plus the int32 length.
pub const HEADER_LEN: usize = 5;

/// Largest startup packet accepted, as in PostgreSQL (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;

/// Largest message accepted from a client that has not authenticated yet (password and SASL
/// messages are small; PostgreSQL uses similar limits for them).
pub const MAX_PRE_AUTH_MESSAGE_LEN: usize = 10_000;

/// Default largest message accepted from an authenticated client or from a server.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 64 << 20;

/// Errors of the wire layer: the peer sent bytes that are not a valid message here.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// A frame announced a length above the configured maximum.
    #[error("message type {tag:?} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The frame's tag byte as a character (`'\0'` for untagged startup packets).
        tag: char,
        /// Announced length, including the length field itself.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A frame announced a length that cannot be valid (smaller than the length field).
    #[error("invalid length {len} for message type {tag:?}")]
    InvalidLength {
        /// The frame's tag byte as a character.
        tag: char,
        /// The announced length.
        len: i64,
    },
    /// A message's body does not have the shape its type requires.
    #[error("malformed {what} message: {reason}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A startup packet asked for a protocol major version other than 3.
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedVersion {
        /// Requested major version.
        major: u16,
        /// Requested minor version.
        minor: u16,
    },
    /// A message arrived that is not allowed in the current state.
    #[error("unexpected message type {tag:?} {context}")]
    Unexpected {
        /// The tag byte as a character.
        tag: char,
        /// Where it arrived (for the error text).
        context: &'static str,
    },
}

impl ProtocolError {
    /// The SQLSTATE a client sees for this error.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            ProtocolError::UnsupportedVersion { .. } => SqlState::FEATURE_NOT_SUPPORTED,
            _ => SqlState::PROTOCOL_VIOLATION,
        }
    }

    /// Shorthand for [`ProtocolError::Malformed`].
    pub(crate) fn malformed(what: &'static str, reason: &'static str) -> Self {
        ProtocolError::Malformed { what, reason }
    }
}

/// Reads a NUL-terminated string at the start of `buf`, returning it (without the NUL) and the
/// rest after the NUL.
pub(crate) fn split_cstr<'a>(
    buf: &'a [u8],
    what: &'static str,
) -> Result<(&'a [u8], &'a [u8]), ProtocolError> {
    match memchr(0, buf) {
        Some(i) => Ok((&buf[..i], &buf[i + 1..])),
        None => Err(ProtocolError::malformed(what, "missing string terminator")),
    }
}

/// Position of `needle` in `haystack`.
#[inline]
pub(crate) fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

/// Reads a big-endian i16 at the start of `buf`.
pub(crate) fn read_i16<'a>(
    buf: &'a [u8],
    what: &'static str,
) -> Result<(i16, &'a [u8]), ProtocolError> {
    if buf.len() < 2 {
        return Err(ProtocolError::malformed(what, "truncated"));
    }
    Ok((i16::from_be_bytes([buf[0], buf[1]]), &buf[2..]))
}

/// Reads a big-endian i32 at the start of `buf`.
pub(crate) fn read_i32<'a>(
    buf: &'a [u8],
    what: &'static str,
) -> Result<(i32, &'a [u8]), ProtocolError> {
    if buf.len() < 4 {
        return Err(ProtocolError::malformed(what, "truncated"));
    }
    Ok((
        i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]),
        &buf[4..],
    ))
}
