//! Client-facing authentication, sans-I/O.
//!
//! Towards its clients causeway plays the PostgreSQL server: it asks for a password the way
//! PostgreSQL would and checks it against the secret in the proxy's configuration, before any
//! server connection is involved. This module holds everything needed for that and does no I/O:
//! the session task feeds it message bodies and writes out what it returns.
//!
//! - [`StoredSecret`] / [`ScramVerifier`]: what the configuration holds for a user (a plain
//!   password, a PostgreSQL `SCRAM-SHA-256$...` verifier, or an `md5...` hash).
//! - [`ScramServer`]: the server side of SCRAM-SHA-256 (RFC 5802 / RFC 7677, as PostgreSQL
//!   profiles it).
//! - [`md5_salt`] / [`verify_md5`]: the legacy md5 challenge-response.
//! - [`PassThrough`] / [`ScramKeysClient`]: logging in to a server as a client whose password
//!   causeway never had (the keys its SCRAM login revealed, or a stored md5 hash).
//! - [`AuthExchange`]: the state machine tying it together for one client, producing
//!   [`AuthRequest`]s (`Authentication*` messages) and consuming the bodies of the client's `p`
//!   messages.
//!
//! Errors are one enum, [`AuthError`], that tells a wrong password (SQLSTATE `28P01`) from a
//! protocol violation (SQLSTATE `08P01`).

mod crypto;
mod exchange;
mod md5;
mod passthrough;
mod scram;
mod secret;
#[cfg(test)]
mod tests;

pub use exchange::{AuthExchange, AuthRequest, Method, Step, MAX_AUTH_MESSAGE_LEN};
pub use md5::{md5_salt, verify_md5};
pub use passthrough::{PassThrough, ScramKeys, ScramKeysClient};
pub use scram::{
    ScramServer, SASL_MECHANISMS, SASL_MECHANISMS_PLUS, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
    SERVER_NONCE_LEN,
};
pub use secret::{ScramVerifier, StoredSecret, MAX_SCRAM_ITERATIONS, MAX_SCRAM_SALT_LEN};

use crate::protocol::SqlState;

/// Everything that can go wrong in the authentication layer.
///
/// The variants are deliberately coarse: what a client is told must not help an attacker (a
/// wrong password and an unknown user look the same), while the session needs to know which
/// SQLSTATE to send ([`AuthError::sqlstate`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The client proved no knowledge of the password: wrong password, unknown user, or a user
    /// whose stored secret cannot serve the requested method. SQLSTATE `28P01`.
    #[error("password authentication failed")]
    InvalidPassword,
    /// The client sent something that is not a valid message for this point of the exchange
    /// (malformed, truncated, out of order, unsupported option such as channel binding).
    /// SQLSTATE `08P01`.
    #[error("authentication protocol violation: {0}")]
    Protocol(&'static str),
    /// Something in the configuration could not be parsed: a malformed `SCRAM-SHA-256$`
    /// verifier, an empty password, an unknown method name. Raised at load time, never during a
    /// client's exchange.
    #[error("invalid authentication configuration: {0}")]
    Config(&'static str),
}

impl AuthError {
    /// True if the client failed to prove the password (maps to SQLSTATE `28P01`,
    /// `invalid_password`).
    pub fn is_invalid_password(&self) -> bool {
        matches!(self, AuthError::InvalidPassword)
    }

    /// True if the client violated the protocol (maps to SQLSTATE `08P01`,
    /// `protocol_violation`).
    pub fn is_protocol_violation(&self) -> bool {
        matches!(self, AuthError::Protocol(_))
    }

    /// The SQLSTATE to report for this error: `28P01` for a failed password, `08P01` for a
    /// protocol violation, `F0000` (`config_file_error`) for a configuration error.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            AuthError::InvalidPassword => SqlState::INVALID_PASSWORD,
            AuthError::Protocol(_) => SqlState::PROTOCOL_VIOLATION,
            AuthError::Config(_) => SqlState::CONFIG_FILE_ERROR,
        }
    }
}
