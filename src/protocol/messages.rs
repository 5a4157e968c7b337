//! Messages the proxy writes itself, towards clients (errors, startup replies) and towards
//! servers (its own queries, Sync, Terminate).
//!
//! Backend-side messages are built with pgwire's message types, which keep the field layouts in
//! one well-tested place; the few frontend messages are one-liners on [`put_frame`].

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use pgwire::messages::response::{ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{
    BackendKeyData, NegotiateProtocolVersion, ParameterStatus, SecretKey,
};
use pgwire::messages::Message;

use super::backend::TxStatus;
use super::codec::{put_cstr, put_frame, put_frame_with};
use super::frontend::tag as ftag;
use super::sqlstate::{Severity, SqlState};
use super::startup::CancelKey;

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
    use crate::protocol::backend::{error_fields, ready_for_query as read_rfq};
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
}
