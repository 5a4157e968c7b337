//! Backend (server → client) messages: type bytes, the few bodies the proxy reads (DataRow
//! among them, for the proxy's own queries), and the [`ReplyScanner`] that walks a reply
//! stream without decoding rows.
//!
//! The scanner is the hot path of every query. It peeks at frame headers only; runs of frames
//! nobody needs to read (RowDescription, DataRow, CommandComplete, ...) come back as one
//! "pass these n bytes through" step, even when the last frame of the run is still incomplete,
//! so a 100 MB row streams to the client without ever being held whole.

use super::{codec::Header, peek_header, read_i16, read_i32, split_cstr, ProtocolError, SqlState};

/// Backend message type bytes.
pub mod tag {
    /// Authentication request (all kinds).
    pub const AUTHENTICATION: u8 = b'R';
    /// BackendKeyData.
    pub const BACKEND_KEY_DATA: u8 = b'K';
    /// BindComplete.
    pub const BIND_COMPLETE: u8 = b'2';
    /// CloseComplete.
    pub const CLOSE_COMPLETE: u8 = b'3';
    /// CommandComplete.
    pub const COMMAND_COMPLETE: u8 = b'C';
    /// CopyBothResponse (replication only).
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    /// CopyData.
    pub const COPY_DATA: u8 = b'd';
    /// CopyDone.
    pub const COPY_DONE: u8 = b'c';
    /// CopyInResponse.
    pub const COPY_IN_RESPONSE: u8 = b'G';
    /// CopyOutResponse.
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    /// DataRow.
    pub const DATA_ROW: u8 = b'D';
    /// EmptyQueryResponse.
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    /// ErrorResponse.
    pub const ERROR_RESPONSE: u8 = b'E';
    /// NegotiateProtocolVersion.
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    /// NoData.
    pub const NO_DATA: u8 = b'n';
    /// NoticeResponse.
    pub const NOTICE_RESPONSE: u8 = b'N';
    /// NotificationResponse.
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    /// ParameterDescription.
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    /// ParameterStatus.
    pub const PARAMETER_STATUS: u8 = b'S';
    /// ParseComplete.
    pub const PARSE_COMPLETE: u8 = b'1';
    /// PortalSuspended.
    pub const PORTAL_SUSPENDED: u8 = b's';
    /// ReadyForQuery.
    pub const READY_FOR_QUERY: u8 = b'Z';
    /// RowDescription.
    pub const ROW_DESCRIPTION: u8 = b'T';
}

/// Transaction status carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxStatus {
    /// `I`: not in a transaction block.
    #[default]
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block (queries are rejected until it ends).
    Failed,
}

impl TxStatus {
    /// The status byte on the wire.
    pub fn as_byte(&self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }

    /// Whether a transaction block is open (`T` or `E`).
    pub fn is_in_transaction(&self) -> bool {
        !matches!(self, TxStatus::Idle)
    }
}

/// Reads the status of a ReadyForQuery body.
pub fn ready_for_query(body: &[u8]) -> Result<TxStatus, ProtocolError> {
    match body {
        [b'I'] => Ok(TxStatus::Idle),
        [b'T'] => Ok(TxStatus::InTransaction),
        [b'E'] => Ok(TxStatus::Failed),
        _ => Err(ProtocolError::malformed("ReadyForQuery", "bad status")),
    }
}

/// The fields of an ErrorResponse or NoticeResponse that the proxy looks at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ErrorFields {
    /// Non-localized severity (`V`), falling back to the localized one (`S`).
    pub severity: String,
    /// SQLSTATE (`C`).
    pub code: String,
    /// Primary message (`M`).
    pub message: String,
}

impl ErrorFields {
    /// Whether the server ends the connection after this error (FATAL or PANIC).
    pub fn is_fatal(&self) -> bool {
        self.severity == "FATAL" || self.severity == "PANIC"
    }

    /// Whether the error's SQLSTATE is one of `codes`.
    pub fn has_code(&self, codes: &[SqlState]) -> bool {
        codes.iter().any(|c| self.code == *c)
    }
}

/// Reads an ErrorResponse or NoticeResponse body.
pub fn error_fields(body: &[u8]) -> Result<ErrorFields, ProtocolError> {
    const WHAT: &str = "ErrorResponse";
    let mut out = ErrorFields::default();
    let mut localized_severity = String::new();
    let mut rest = body;
    loop {
        let (&field, after) = rest
            .split_first()
            .ok_or(ProtocolError::malformed(WHAT, "missing terminator"))?;
        if field == 0 {
            break;
        }
        let (value, after) = split_cstr(after, WHAT)?;
        let value = String::from_utf8_lossy(value);
        match field {
            b'V' => out.severity = value.into_owned(),
            b'S' => localized_severity = value.into_owned(),
            b'C' => out.code = value.into_owned(),
            b'M' => out.message = value.into_owned(),
            _ => {}
        }
        rest = after;
    }
    if out.severity.is_empty() {
        out.severity = localized_severity;
    }
    Ok(out)
}

/// Reads a ParameterStatus body: name and value.
pub fn parameter_status(body: &[u8]) -> Result<(&str, &str), ProtocolError> {
    const WHAT: &str = "ParameterStatus";
    let (name, rest) = split_cstr(body, WHAT)?;
    let (value, _) = split_cstr(rest, WHAT)?;
    let s = |b| std::str::from_utf8(b).map_err(|_| ProtocolError::malformed(WHAT, "not UTF-8"));
    Ok((s(name)?, s(value)?))
}

/// Reads a BackendKeyData body (protocol 3.0: pid and a 4-byte secret).
pub fn backend_key_data(body: &[u8]) -> Result<super::startup::CancelKey, ProtocolError> {
    let (pid, rest) = read_i32(body, "BackendKeyData")?;
    let (secret, _) = read_i32(rest, "BackendKeyData")?;
    Ok(super::startup::CancelKey { pid, secret })
}

/// The column values of a DataRow, in order; `None` is SQL NULL.
///
/// Made by [`data_row_columns`], which checks the whole body first, so iterating cannot fail
/// and never allocates.
#[derive(Debug, Clone)]
pub struct DataRowColumns<'a> {
    /// The columns not returned yet, each an int32 length (-1 for NULL) and its bytes.
    rest: &'a [u8],
    /// How many columns `rest` holds.
    remaining: usize,
}

/// Reads a DataRow body: checks the column count against the column lengths and the body's
/// end, then hands out the values without copying them.
pub fn data_row_columns(body: &[u8]) -> Result<DataRowColumns<'_>, ProtocolError> {
    const WHAT: &str = "DataRow";
    let (count, columns) = read_i16(body, WHAT)?;
    let count =
        usize::try_from(count).map_err(|_| ProtocolError::malformed(WHAT, "negative count"))?;
    let mut rest = columns;
    for _ in 0..count {
        let (len, after) = read_i32(rest, WHAT)?;
        rest = match len {
            -1 => after,
            len => usize::try_from(len)
                .ok()
                .and_then(|len| after.get(len..))
                .ok_or(ProtocolError::malformed(WHAT, "bad column length"))?,
        };
    }
    if !rest.is_empty() {
        return Err(ProtocolError::malformed(
            WHAT,
            "bytes after the last column",
        ));
    }
    Ok(DataRowColumns {
        rest: columns,
        remaining: count,
    })
}

impl<'a> Iterator for DataRowColumns<'a> {
    type Item = Option<&'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // `data_row_columns` checked every length, so these lookups only fail on a bug; they
        // end the iteration rather than panic.
        let (len, after) = self.rest.split_first_chunk::<4>()?;
        let Ok(len) = usize::try_from(i32::from_be_bytes(*len)) else {
            self.rest = after;
            return Some(None);
        };
        let value = after.get(..len)?;
        self.rest = &after[len..];
        Some(Some(value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for DataRowColumns<'_> {}

/// An authentication request from a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest<'a> {
    /// Authenticated.
    Ok,
    /// Send the password in clear text.
    Cleartext,
    /// Send an md5 hash salted with these bytes.
    Md5 {
        /// The 4-byte salt.
        salt: [u8; 4],
    },
    /// Start a SASL exchange with one of these mechanisms.
    Sasl {
        /// NUL-separated mechanism names, as sent.
        mechanisms: &'a [u8],
    },
    /// SASL challenge.
    SaslContinue(&'a [u8]),
    /// SASL outcome data.
    SaslFinal(&'a [u8]),
    /// A method causeway does not implement (Kerberos, GSSAPI, SSPI).
    Unsupported(i32),
}

/// Reads an Authentication body.
pub fn auth_request(body: &[u8]) -> Result<AuthRequest<'_>, ProtocolError> {
    let (code, rest) = read_i32(body, "Authentication")?;
    Ok(match code {
        0 => AuthRequest::Ok,
        3 => AuthRequest::Cleartext,
        5 => match rest {
            [a, b, c, d] => AuthRequest::Md5 {
                salt: [*a, *b, *c, *d],
            },
            _ => {
                return Err(ProtocolError::malformed(
                    "AuthenticationMD5Password",
                    "bad salt",
                ))
            }
        },
        10 => AuthRequest::Sasl { mechanisms: rest },
        11 => AuthRequest::SaslContinue(rest),
        12 => AuthRequest::SaslFinal(rest),
        other => AuthRequest::Unsupported(other),
    })
}

/// One step of [`ReplyScanner::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The first `n` bytes of the buffer are frames (the last possibly incomplete) the caller did
    /// not ask to inspect: forward or drop them as a block.
    Passthrough(usize),
    /// A complete frame of an inspected type starts at the front of the buffer.
    Inspect(Header),
    /// Nothing can be said until more bytes arrive.
    NeedMore,
}

/// Walks a reply stream frame by frame, remembering how much of a passthrough frame is still to
/// come between reads.
#[derive(Debug, Default, Clone)]
pub struct ReplyScanner {
    /// Bytes of the current passthrough frame that have not been seen yet; 0 at a frame boundary.
    remaining: usize,
}

impl ReplyScanner {
    /// Whether the scanner stands at a frame boundary.
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// Looks at the front of `buf` (bytes not yet consumed) and says what to do with it.
    ///
    /// `inspect` selects the types the caller must see whole (they are limited to
    /// `max_inspect` bytes); all other frames are passed through without limit. After
    /// `Passthrough(n)` the caller consumes exactly `n` bytes; after `Inspect(h)` exactly
    /// `h.frame_len` bytes.
    #[inline]
    pub fn step(
        &mut self,
        buf: &[u8],
        max_inspect: usize,
        inspect: impl Fn(u8) -> bool,
    ) -> Result<Step, ProtocolError> {
        let mut pos = 0;
        if buf.is_empty() {
            return Ok(Step::NeedMore);
        }
        if self.remaining > 0 {
            let take = self.remaining.min(buf.len());
            self.remaining -= take;
            pos = take;
            if self.remaining > 0 {
                return Ok(Step::Passthrough(pos));
            }
        }
        // Passthrough frames are not limited: the proxy never holds one whole.
        while let Some(h) = peek_header(&buf[pos..], i32::MAX as usize)? {
            if inspect(h.tag) {
                if pos > 0 {
                    return Ok(Step::Passthrough(pos));
                }
                if h.frame_len > max_inspect {
                    return Err(ProtocolError::TooLarge {
                        tag: h.tag as char,
                        len: h.frame_len - 1,
                        max: max_inspect,
                    });
                }
                if buf.len() < h.frame_len {
                    return Ok(Step::NeedMore);
                }
                return Ok(Step::Inspect(h));
            }
            let available = buf.len() - pos;
            if available >= h.frame_len {
                pos += h.frame_len;
            } else {
                self.remaining = h.frame_len - available;
                pos = buf.len();
                break;
            }
        }
        Ok(if pos > 0 {
            Step::Passthrough(pos)
        } else {
            Step::NeedMore
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::put_frame;
    use bytes::BytesMut;

    fn reply() -> Vec<u8> {
        let mut b = BytesMut::new();
        put_frame(
            &mut b,
            b'T',
            &[
                0, 1, b'a', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        );
        for i in 0..5u8 {
            put_frame(&mut b, b'D', &[0, 1, 0, 0, 0, 1, b'0' + i]);
        }
        put_frame(&mut b, b'S', b"TimeZone\0UTC\0");
        put_frame(&mut b, b'C', b"SELECT 5\0");
        put_frame(&mut b, b'Z', b"T");
        b.to_vec()
    }

    /// Drives the scanner over `input` delivered in the given chunk sizes; returns the
    /// passthrough bytes concatenated and the inspected frames in order.
    fn run(input: &[u8], chunks: &[usize]) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut scanner = ReplyScanner::default();
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let mut passed = Vec::new();
        let mut inspected = Vec::new();
        let mut chunk_iter = chunks.iter().cycle();
        loop {
            match scanner
                .step(&buf, 1 << 20, |t| matches!(t, b'Z' | b'S'))
                .unwrap()
            {
                Step::Passthrough(n) => passed.extend_from_slice(&buf.split_to(n)),
                Step::Inspect(h) => inspected.push(buf.split_to(h.frame_len).to_vec()),
                Step::NeedMore => {
                    if fed == input.len() {
                        break;
                    }
                    let n = (*chunk_iter.next().unwrap()).min(input.len() - fed).max(1);
                    buf.extend_from_slice(&input[fed..fed + n]);
                    fed += n;
                }
            }
        }
        assert!(buf.is_empty());
        (passed, inspected)
    }

    #[test]
    fn scanner_splits_passthrough_and_inspected_at_any_chunking() {
        let input = reply();
        let (all_passed, all_inspected) = run(&input, &[input.len()]);
        assert_eq!(all_inspected.len(), 2);
        assert_eq!(all_inspected[0][0], b'S');
        assert_eq!(all_inspected[1], vec![b'Z', 0, 0, 0, 5, b'T']);
        let mut rebuilt = all_passed.clone();
        rebuilt.truncate(input.len());
        for chunk in 1..input.len() {
            let (p, i) = run(&input, &[chunk]);
            assert_eq!(p, all_passed, "chunk {chunk}");
            assert_eq!(i, all_inspected, "chunk {chunk}");
        }
        for cut in 0..input.len() {
            let (p, i) = run(&input, &[cut.max(1), input.len()]);
            assert_eq!(
                (p, i),
                (all_passed.clone(), all_inspected.clone()),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn large_passthrough_frame_streams_without_being_whole() {
        let mut b = BytesMut::new();
        put_frame(&mut b, b'D', &vec![7u8; 100_000]);
        let mut scanner = ReplyScanner::default();
        let first = &b[..1000];
        assert_eq!(
            scanner.step(first, 100, |t| t == b'Z').unwrap(),
            Step::Passthrough(1000)
        );
        assert!(!scanner.at_boundary());
        let rest = &b[1000..];
        assert_eq!(
            scanner.step(rest, 100, |t| t == b'Z').unwrap(),
            Step::Passthrough(rest.len())
        );
        assert!(scanner.at_boundary());
    }

    #[test]
    fn oversized_inspected_frame_is_an_error() {
        let mut b = BytesMut::new();
        put_frame(&mut b, b'E', &vec![b'x'; 1000]);
        let mut scanner = ReplyScanner::default();
        assert!(scanner.step(&b, 100, |t| t == b'E').is_err());
    }

    /// A DataRow body with these values.
    fn row(values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = (values.len() as i16).to_be_bytes().to_vec();
        for v in values {
            match v {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b
    }

    #[test]
    fn data_row_columns_hand_out_values_and_nulls() {
        let values: [Option<&[u8]>; 4] = [Some(b"search_path"), None, Some(b""), Some(b"a, b")];
        let body = row(&values);
        let cols = data_row_columns(&body).unwrap();
        assert_eq!(cols.len(), 4);
        assert_eq!(cols.collect::<Vec<_>>(), values);
        assert_eq!(data_row_columns(&row(&[])).unwrap().count(), 0);
    }

    #[test]
    fn data_row_columns_reject_malformed_bodies() {
        let body = row(&[Some(b"0/3000060"), None, Some(b"xy")]);
        // Cut anywhere: the count no longer matches what is there.
        for cut in 0..body.len() {
            assert!(data_row_columns(&body[..cut]).is_err(), "cut {cut}");
        }
        let mut longer = body.clone();
        longer.push(0);
        assert!(data_row_columns(&longer).is_err(), "trailing byte");
        assert!(data_row_columns(&[0xff, 0xff]).is_err(), "negative count");
        let mut bad_len = row(&[Some(b"x")]);
        bad_len[2..6].copy_from_slice(&(-2i32).to_be_bytes());
        assert!(data_row_columns(&bad_len).is_err(), "length -2");
        bad_len[2..6].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(data_row_columns(&bad_len).is_err(), "length past the end");
        // A count far above what the body holds is refused without reading past it.
        assert!(data_row_columns(&[0x7f, 0xff, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn reads_bodies() {
        assert_eq!(ready_for_query(b"E").unwrap(), TxStatus::Failed);
        assert!(ready_for_query(b"").is_err());
        let e = error_fields(b"SERROR\0VERROR\0C25006\0Mcannot execute\0\0").unwrap();
        assert_eq!(e.code, "25006");
        assert_eq!(e.message, "cannot execute");
        assert!(e.has_code(&[
            SqlState::ADMIN_SHUTDOWN,
            SqlState::READ_ONLY_SQL_TRANSACTION
        ]));
        assert!(!e.has_code(&[SqlState::ADMIN_SHUTDOWN]));
        assert!(!e.is_fatal());
        assert!(error_fields(b"SERROR\0C25006").is_err());
        assert_eq!(parameter_status(b"a\0b\0").unwrap(), ("a", "b"));
        assert_eq!(
            auth_request(&[0, 0, 0, 5, 1, 2, 3, 4]).unwrap(),
            AuthRequest::Md5 { salt: [1, 2, 3, 4] }
        );
        assert!(auth_request(&[0, 0, 0, 5, 1]).is_err());
        assert!(auth_request(&[0, 0]).is_err());
        for cut in 0..8 {
            let _ = backend_key_data(&[0, 0, 0, 1, 0, 0, 0, 2][..cut]);
        }
    }
}
