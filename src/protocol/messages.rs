//! Messages the proxy writes itself, towards clients (errors, startup replies) and towards
//! servers (its own queries, Sync, Terminate).
//!
//! Errors, notices and startup replies are built with pgwire's message types, which keep their
//! field layouts in one well-tested place. The frontend messages, the extended-protocol
//! acknowledgements and the result messages of the proxy's own `SHOW causeway.*` answers are a
//! few fixed fields each: they are written on [`put_frame`] without allocating, and the tests
//! check them against pgwire's decoders.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use pgwire::messages::response::{ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{
    BackendKeyData, NegotiateProtocolVersion, ParameterStatus, SecretKey,
};
use pgwire::messages::Message;

use super::backend::{tag as btag, TxStatus};
use super::codec::{put_cstr, put_frame, put_frame_with};
use super::frontend::tag as ftag;
use super::sqlstate::{Severity, SqlState};
use super::startup::CancelKey;

/// Type OID of `text`: every column the proxy answers with itself is text.
const TEXT_OID: u32 = 25;

/// Encodes a pgwire message. Encoding only fails for messages above pgwire's own size limits,
/// which the short messages built here never reach; such a bug is logged, not panicked on.
fn encode(msg: &impl Message, dst: &mut BytesMut) {
    if let Err(e) = msg.encode(dst) {
        tracing::error!(error = %e, "could not encode a protocol message");
    }
}

/// An error or notice the proxy reports to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyError {
    /// ERROR, FATAL, NOTICE or WARNING.
    pub severity: Severity,
    /// SQLSTATE (a server's own code when passing a server error on).
    pub code: Cow<'static, str>,
    /// Primary message.
    pub message: String,
    /// Optional detail line.
    pub detail: Option<String>,
    /// Optional hint line.
    pub hint: Option<String>,
}

impl ProxyError {
    /// An ERROR: the request failed, the session goes on.
    pub fn error(code: SqlState, message: impl Into<String>) -> Self {
        ProxyError {
            severity: Severity::Error,
            code: Cow::Borrowed(code.code()),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// A FATAL error: the connection is closed after it.
    pub fn fatal(code: SqlState, message: impl Into<String>) -> Self {
        ProxyError {
            severity: Severity::Fatal,
            ..Self::error(code, message)
        }
    }

    /// A server's error passed on with its own code and message, at the given severity.
    pub fn from_server(fields: &super::backend::ErrorFields, severity: Severity) -> Self {
        ProxyError {
            severity,
            code: Cow::Owned(fields.code.clone()),
            message: fields.message.clone(),
            detail: None,
            hint: None,
        }
    }

    /// Adds a detail line.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds a hint line.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    fn fields(&self) -> Vec<(u8, String)> {
        let sev = self.severity.as_str().to_owned();
        let mut fields = vec![
            (b'S', sev.clone()),
            (b'V', sev),
            (b'C', self.code.clone().into_owned()),
            (b'M', self.message.clone()),
        ];
        if let Some(d) = &self.detail {
            fields.push((b'D', d.clone()));
        }
        if let Some(h) = &self.hint {
            fields.push((b'H', h.clone()));
        }
        fields
    }

    /// Appends this as an ErrorResponse (or NoticeResponse for NOTICE/WARNING).
    pub fn encode(&self, dst: &mut BytesMut) {
        match self.severity {
            Severity::Error | Severity::Fatal => encode(&ErrorResponse::new(self.fields()), dst),
            Severity::Notice | Severity::Warning => {
                encode(&NoticeResponse::new(self.fields()), dst)
            }
        }
    }

    /// This error as standalone wire bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(64 + self.message.len());
        self.encode(&mut b);
        b.freeze()
    }
}

/// Appends AuthenticationOk.
pub fn authentication_ok(dst: &mut BytesMut) {
    put_frame(dst, b'R', &0i32.to_be_bytes());
}

/// Appends a ParameterStatus.
pub fn parameter_status(dst: &mut BytesMut, name: &str, value: &str) {
    encode(
        &ParameterStatus::new(name.to_owned(), value.to_owned()),
        dst,
    );
}

/// Appends a BackendKeyData with a protocol 3.0 (4-byte) secret.
pub fn backend_key_data(dst: &mut BytesMut, key: CancelKey) {
    encode(
        &BackendKeyData::new(key.pid, SecretKey::I32(key.secret)),
        dst,
    );
}

/// Appends a ReadyForQuery.
pub fn ready_for_query(dst: &mut BytesMut, status: TxStatus) {
    let status = match status {
        TxStatus::Idle => TransactionStatus::Idle,
        TxStatus::InTransaction => TransactionStatus::Transaction,
        TxStatus::Failed => TransactionStatus::Error,
    };
    encode(&ReadyForQuery::new(status), dst);
}

/// Appends a ParseComplete.
pub fn parse_complete(dst: &mut BytesMut) {
    put_frame(dst, btag::PARSE_COMPLETE, b"");
}

/// Appends a BindComplete.
pub fn bind_complete(dst: &mut BytesMut) {
    put_frame(dst, btag::BIND_COMPLETE, b"");
}

/// Appends a CloseComplete.
pub fn close_complete(dst: &mut BytesMut) {
    put_frame(dst, btag::CLOSE_COMPLETE, b"");
}

/// Appends a NoData (a described statement or portal returns no rows).
pub fn no_data(dst: &mut BytesMut) {
    put_frame(dst, btag::NO_DATA, b"");
}

/// Appends a ParameterDescription naming the type OID of each parameter (none for the
/// statements the proxy answers itself).
pub fn parameter_description(dst: &mut BytesMut, types: &[u32]) {
    put_frame_with(dst, btag::PARAMETER_DESCRIPTION, |b| {
        b.put_i16(count(types.len()));
        for &oid in types {
            b.put_u32(oid);
        }
    });
}

/// Appends a RowDescription of text columns in text format, not from any table.
pub fn row_description(dst: &mut BytesMut, columns: &[&str]) {
    put_frame_with(dst, btag::ROW_DESCRIPTION, |b| {
        b.put_i16(count(columns.len()));
        for name in columns {
            put_cstr(b, name.as_bytes());
            // Table OID and column number: 0, not a table column.
            b.put_i32(0);
            b.put_i16(0);
            b.put_u32(TEXT_OID);
            // Type length (-1: variable), type modifier (-1: none), format (0: text).
            b.put_i16(-1);
            b.put_i32(-1);
            b.put_i16(0);
        }
    });
}

/// Appends a DataRow; `None` is SQL NULL.
pub fn data_row(dst: &mut BytesMut, values: &[Option<&[u8]>]) {
    put_frame_with(dst, btag::DATA_ROW, |b| {
        b.put_i16(count(values.len()));
        for value in values {
            match value {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
                None => b.put_i32(-1),
            }
        }
    });
}

/// Appends a CommandComplete with its tag (`SET`, `SHOW`, `SELECT 1`, ...).
pub fn command_complete(dst: &mut BytesMut, tag: &str) {
    put_frame_with(dst, btag::COMMAND_COMPLETE, |b| put_cstr(b, tag.as_bytes()));
}

/// Type OID of `int8`, for the admin console's counters (psql aligns them as numbers).
pub const INT8_OID: u32 = 20;

/// Appends a RowDescription of columns in text format with the given type OIDs (the text of
/// each value must be valid input for its type); [`row_description`] is the all-text case.
pub fn row_description_typed(dst: &mut BytesMut, columns: &[(&str, u32)]) {
    put_frame_with(dst, btag::ROW_DESCRIPTION, |b| {
        b.put_i16(count(columns.len()));
        for (name, oid) in columns {
            put_cstr(b, name.as_bytes());
            b.put_i32(0);
            b.put_i16(0);
            b.put_u32(*oid);
            // Type length: 8 for int8, -1 (variable) otherwise; no modifier; text format.
            b.put_i16(if *oid == INT8_OID { 8 } else { -1 });
            b.put_i32(-1);
            b.put_i16(0);
        }
    });
}

/// Appends an EmptyQueryResponse (the answer to a query string with no statement).
pub fn empty_query_response(dst: &mut BytesMut) {
    put_frame(dst, btag::EMPTY_QUERY_RESPONSE, b"");
}

/// A column or parameter count as the wire's int16. The proxy's own messages have a handful;
/// PostgreSQL itself never sends more than 1664 columns.
fn count(n: usize) -> i16 {
    debug_assert!(n <= i16::MAX as usize, "{n} columns do not fit a message");
    n as i16
}

/// Appends a NegotiateProtocolVersion naming minor version 0 and the unsupported options.
pub fn negotiate_protocol_version(dst: &mut BytesMut, unsupported: Vec<String>) {
    encode(&NegotiateProtocolVersion::new(0, unsupported), dst);
}

/// Appends a simple Query message.
pub fn query(dst: &mut BytesMut, sql: &str) {
    put_frame_with(dst, ftag::QUERY, |b| put_cstr(b, sql.as_bytes()));
}

/// Appends a Sync message.
pub fn sync(dst: &mut BytesMut) {
    put_frame(dst, ftag::SYNC, b"");
}

/// Appends a Terminate message.
pub fn terminate(dst: &mut BytesMut) {
    put_frame(dst, ftag::TERMINATE, b"");
}

/// Appends a PasswordMessage (cleartext or md5 response).
pub fn password(dst: &mut BytesMut, password: &[u8]) {
    put_frame_with(dst, ftag::PASSWORD, |b| put_cstr(b, password));
}

/// Appends a SASLInitialResponse.
pub fn sasl_initial_response(dst: &mut BytesMut, mechanism: &str, data: &[u8]) {
    put_frame_with(dst, ftag::PASSWORD, |b| {
        put_cstr(b, mechanism.as_bytes());
        b.put_i32(data.len() as i32);
        b.put_slice(data);
    });
}

/// Appends a SASLResponse.
pub fn sasl_response(dst: &mut BytesMut, data: &[u8]) {
    put_frame(dst, ftag::PASSWORD, data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::backend::{data_row_columns, error_fields, ready_for_query as read_rfq};
    use crate::protocol::decode_frame;

    #[test]
    fn error_round_trips_through_our_reader() {
        let e = ProxyError::fatal(SqlState::INVALID_PASSWORD, "password authentication failed")
            .with_hint("check the password");
        let mut b = BytesMut::from(&e.to_bytes()[..]);
        let f = decode_frame(&mut b, 1 << 20).unwrap().unwrap();
        assert_eq!(f.tag(), b'E');
        let fields = error_fields(f.body()).unwrap();
        assert_eq!(fields.code, "28P01");
        assert!(fields.is_fatal());
        assert_eq!(fields.message, "password authentication failed");
    }

    #[test]
    fn ready_for_query_round_trips() {
        for s in [TxStatus::Idle, TxStatus::InTransaction, TxStatus::Failed] {
            let mut b = BytesMut::new();
            ready_for_query(&mut b, s);
            let f = decode_frame(&mut b, 100).unwrap().unwrap();
            assert_eq!(read_rfq(f.body()).unwrap(), s);
        }
    }

    #[test]
    fn frontend_messages_have_right_lengths() {
        let mut b = BytesMut::new();
        query(&mut b, "select 1");
        sync(&mut b);
        terminate(&mut b);
        sasl_initial_response(&mut b, "SCRAM-SHA-256", b"n,,n=,r=abc");
        let tags: Vec<u8> = std::iter::from_fn(|| decode_frame(&mut b, 100).unwrap())
            .map(|f| f.tag())
            .collect();
        assert_eq!(tags, b"QSXp");
    }

    /// Decodes one frame of `bytes` with pgwire's decoder for `M`, which must take all of it.
    fn pgwire_decode<M: Message>(bytes: &[u8]) -> M {
        let mut b = BytesMut::from(bytes);
        let ctx =
            pgwire::messages::DecodeContext::new(pgwire::messages::ProtocolVersion::PROTOCOL3_0);
        let m = M::decode(&mut b, &ctx).unwrap().unwrap();
        assert!(b.is_empty(), "pgwire left {b:?}");
        m
    }

    #[test]
    fn show_answer_is_byte_for_byte_what_postgres_clients_expect() {
        let mut b = BytesMut::new();
        row_description(&mut b, &["causeway.min_lsn"]);
        data_row(&mut b, &[Some(b"0/3000060")]);
        command_complete(&mut b, "SHOW");
        // The bytes the session wrote by hand before these builders existed.
        let mut expected = Vec::new();
        expected.extend_from_slice(b"T\0\0\0\x29\0\x01causeway.min_lsn\0");
        expected.extend_from_slice(b"\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0");
        expected.extend_from_slice(b"D\0\0\0\x13\0\x01\0\0\0\x090/3000060");
        expected.extend_from_slice(b"C\0\0\0\x09SHOW\0");
        assert_eq!(&b[..], &expected[..]);
    }

    #[test]
    fn result_messages_decode_with_pgwire() {
        use pgwire::messages::data::{DataRow, RowDescription};
        use pgwire::messages::response::CommandComplete;

        let mut b = BytesMut::new();
        row_description(&mut b, &["a", "bc"]);
        let rd: RowDescription = pgwire_decode(&b);
        let names: Vec<_> = rd.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a", "bc"]);
        assert!(rd
            .fields
            .iter()
            .all(|f| f.type_id == TEXT_OID && f.format_code == 0 && f.type_size == -1));

        let mut b = BytesMut::new();
        data_row(&mut b, &[Some(b"x"), None, Some(b"")]);
        let dr: DataRow = pgwire_decode(&b);
        assert_eq!(dr.field_count, 3);
        let f = decode_frame(&mut b, 100).unwrap().unwrap();
        let cols: Vec<_> = data_row_columns(f.body()).unwrap().collect();
        assert_eq!(cols, [Some(&b"x"[..]), None, Some(&b""[..])]);

        let mut b = BytesMut::new();
        command_complete(&mut b, "SELECT 1");
        let cc: CommandComplete = pgwire_decode(&b);
        assert_eq!(cc.tag, "SELECT 1");
    }

    #[test]
    fn extended_protocol_acknowledgements() {
        use pgwire::messages::data::{NoData, ParameterDescription};

        let mut b = BytesMut::new();
        parse_complete(&mut b);
        bind_complete(&mut b);
        close_complete(&mut b);
        no_data(&mut b);
        assert_eq!(&b[..], b"1\0\0\0\x042\0\0\0\x043\0\0\0\x04n\0\0\0\x04");
        let _: NoData = pgwire_decode(&b[15..]);

        let mut b = BytesMut::new();
        parameter_description(&mut b, &[]);
        assert_eq!(&b[..], b"t\0\0\0\x06\0\0");
        let pd: ParameterDescription = pgwire_decode(&b);
        assert!(pd.types.is_empty());
        let mut b = BytesMut::new();
        parameter_description(&mut b, &[23, TEXT_OID]);
        let pd: ParameterDescription = pgwire_decode(&b);
        assert_eq!(pd.types, [23, TEXT_OID]);
    }
}
