//! The server side: connections to PostgreSQL nodes and the pools that hold them.
//!
//! A session asks a [`pool::Pool`] for a server connection to one node ("check out"), uses it
//! for a transaction or a whole session, and gives it back ("check in"). Everything about a
//! node's role lives in [`crate::topology`]; this module only knows addresses.

pub mod cancel;
pub mod connection;
pub mod outbound;
pub mod pool;
pub mod replies;
pub mod statements;
pub mod stream;

pub use connection::{ServerConn, ServerParams};
pub use pool::{Lease, Pool, PoolKey, Pools};

use crate::protocol::backend::ErrorFields;
use crate::protocol::{ProtocolError, SqlState};

/// Errors of the server side.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// TCP connect to a node failed.
    #[error("could not connect to server {addr}: {source}")]
    Connect {
        /// host:port of the node.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A socket operation on an established connection failed.
    #[error("server connection to {addr} failed: {source}")]
    Io {
        /// host:port of the node.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The server closed the connection.
    #[error("server {addr} closed the connection unexpectedly")]
    Closed {
        /// host:port of the node.
        addr: String,
    },
    /// Something took longer than its limit.
    #[error("timed out {what} (server {addr})")]
    Timeout {
        /// What was being waited for.
        what: &'static str,
        /// host:port of the node.
        addr: String,
    },
    /// The server sent bytes that are not valid protocol.
    #[error("protocol error from server {addr}: {source}")]
    Protocol {
        /// host:port of the node.
        addr: String,
        /// What was wrong.
        source: ProtocolError,
    },
    /// The server answered with an ErrorResponse (bad password, unknown database, ...).
    #[error("server {addr}: {} ({})", .fields.message, .fields.code)]
    Server {
        /// host:port of the node.
        addr: String,
        /// The server's error fields, passed on to the client unchanged.
        fields: ErrorFields,
    },
    /// The server asked for an authentication method causeway cannot perform.
    #[error("server {addr} requested unsupported authentication: {what}")]
    UnsupportedAuth {
        /// host:port of the node.
        addr: String,
        /// Which method.
        what: String,
    },
    /// TLS towards the server was required and could not be set up (refused, or the
    /// certificate failed its check).
    #[error("server {addr}: TLS: {reason}")]
    Tls {
        /// host:port of the node.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The server asked for a password and none is configured for this user.
    #[error("server {addr} requested a password for user {user:?} and none is configured")]
    NoPassword {
        /// host:port of the node.
        addr: String,
        /// The user.
        user: String,
    },
    /// No server connection became free within `pool_timeout`.
    #[error("no server connection available in pool {pool} within {waited_ms} ms")]
    PoolTimeout {
        /// The pool's name (`user@database on host:port`).
        pool: String,
        /// How long the request waited.
        waited_ms: u128,
    },
}

impl BackendError {
    /// The SQLSTATE a client sees for this error.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            BackendError::Connect { .. }
            | BackendError::Timeout { .. }
            | BackendError::Tls { .. } => SqlState::UNABLE_TO_ESTABLISH_CONNECTION,
            BackendError::Io { .. } | BackendError::Closed { .. } => SqlState::CONNECTION_FAILURE,
            BackendError::Protocol { .. } => SqlState::PROTOCOL_VIOLATION,
            BackendError::Server { .. } => SqlState::CONNECTION_EXCEPTION,
            BackendError::UnsupportedAuth { .. } | BackendError::NoPassword { .. } => {
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            }
            BackendError::PoolTimeout { .. } => SqlState::TOO_MANY_CONNECTIONS,
        }
    }

    /// The server's own error fields, when the server reported the error.
    pub fn server_fields(&self) -> Option<&ErrorFields> {
        match self {
            BackendError::Server { fields, .. } => Some(fields),
            _ => None,
        }
    }
}
