//! The authentication state machine for one client, sans-I/O.
//!
//! After the startup packet, the session builds an [`AuthExchange`] from the user's [`Method`]
//! and [`StoredSecret`]. The exchange says what to send first ([`Step`]), then consumes the body
//! of each `p` message the client sends (the same tag carries `SASLInitialResponse`,
//! `SASLResponse` and `PasswordMessage`; which one it is depends on the state, exactly as in
//! PostgreSQL) until the client is authenticated or an error ends it.
//!
//! All client input is parsed here with bounds checks: no panics, and no allocation sized by a
//! length field the client chose (lengths are checked against the body actually received).

use std::fmt;
use std::str::FromStr;

use bytes::{BufMut, BytesMut};

use super::crypto::ct_eq;
use super::md5::{expected_response, md5_salt};
use super::passthrough::ScramKeys;
use super::scram::{ScramServer, SERVER_NONCE_LEN};
use super::secret::StoredSecret;
use super::AuthError;

/// Longest `p` message body accepted during authentication: PostgreSQL's
/// `PG_MAX_AUTH_TOKEN_LENGTH`. Also a sensible frame limit for the session while authenticating.
pub const MAX_AUTH_MESSAGE_LEN: usize = 65535;

/// How a user must authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Method {
    /// SCRAM-SHA-256 (the default): the password never crosses the wire and the client can
    /// check that the proxy knows the verifier.
    #[default]
    ScramSha256,
    /// The legacy md5 challenge-response. Like PostgreSQL, a user whose secret is a SCRAM
    /// verifier is authenticated with SCRAM instead, since md5 is impossible for them.
    Md5,
    /// No password: the client is accepted as whoever it says it is.
    Trust,
}

impl Method {
    /// The configuration name: `scram-sha-256`, `md5` or `trust` (as in `pg_hba.conf`).
    pub fn name(self) -> &'static str {
        match self {
            Method::ScramSha256 => "scram-sha-256",
            Method::Md5 => "md5",
            Method::Trust => "trust",
        }
    }
}

impl FromStr for Method {
    type Err = AuthError;

    /// Parses a configuration name, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Method::ScramSha256, Method::Md5, Method::Trust]
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
            .ok_or(AuthError::Config(
                "unknown authentication method (expected scram-sha-256, md5 or trust)",
            ))
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An `Authentication*` message ('R') for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    /// `AuthenticationOk` (code 0).
    Ok,
    /// `AuthenticationMD5Password` (code 5) with the salt to hash with.
    Md5 {
        /// Random salt for this attempt.
        salt: [u8; 4],
    },
    /// `AuthenticationSASL` (code 10) listing the mechanisms offered.
    Sasl {
        /// Mechanism names: [`super::SASL_MECHANISMS`], or [`super::SASL_MECHANISMS_PLUS`] on
        /// TLS.
        mechanisms: &'static [&'static str],
    },
    /// `AuthenticationSASLContinue` (code 11) with the next server message.
    SaslContinue(Vec<u8>),
    /// `AuthenticationSASLFinal` (code 12) with the server-final-message.
    SaslFinal(Vec<u8>),
}

impl AuthRequest {
    /// The request code that follows the length in the message.
    pub fn code(&self) -> i32 {
        match self {
            AuthRequest::Ok => 0,
            AuthRequest::Md5 { .. } => 5,
            AuthRequest::Sasl { .. } => 10,
            AuthRequest::SaslContinue(_) => 11,
            AuthRequest::SaslFinal(_) => 12,
        }
    }

    /// Appends the wire message to `dst`: `'R'`, int32 length (counting itself), int32 code,
    /// payload.
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            AuthRequest::Ok => write_request(dst, 0, &[]),
            AuthRequest::Md5 { salt } => write_request(dst, 5, &[salt]),
            AuthRequest::Sasl { mechanisms } => {
                // Each name as a C string, then an empty string ending the list.
                let mut payload = Vec::new();
                for mechanism in mechanisms.iter() {
                    payload.extend_from_slice(mechanism.as_bytes());
                    payload.push(0);
                }
                payload.push(0);
                write_request(dst, 10, &[&payload]);
            }
            AuthRequest::SaslContinue(data) => write_request(dst, 11, &[data]),
            AuthRequest::SaslFinal(data) => write_request(dst, 12, &[data]),
        }
    }
}

/// Writes one 'R' message with `code` and the concatenated `payload`.
fn write_request(dst: &mut BytesMut, code: i32, payload: &[&[u8]]) {
    let payload_len: usize = payload.iter().map(|p| p.len()).sum();
    // Our payloads are a few hundred bytes at most (a SCRAM message echoes a client nonce from a
    // body of at most MAX_AUTH_MESSAGE_LEN), far below the i32 limit.
    let len = i32::try_from(payload_len + 8).expect("authentication message under 2 GiB");
    dst.reserve(1 + 8 + payload_len);
    dst.put_u8(b'R');
    dst.put_i32(len);
    dst.put_i32(code);
    for part in payload {
        dst.put_slice(part);
    }
}

/// What the session does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this request, then read the client's next `p` message and pass its body to
    /// [`AuthExchange::receive`].
    Send(AuthRequest),
    /// The client is authenticated. Send `AuthenticationSASLFinal` with `sasl_final` if present
    /// (the SCRAM server signature), then `AuthenticationOk`; [`Step::encode`] does both.
    Done {
        /// The server-final-message, for SCRAM.
        sasl_final: Option<Vec<u8>>,
    },
}

impl Step {
    /// Appends everything this step sends to `dst`: the request for [`Step::Send`]; the
    /// optional `AuthenticationSASLFinal` and then `AuthenticationOk` for [`Step::Done`].
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            Step::Send(request) => request.encode(dst),
            Step::Done { sasl_final } => {
                if let Some(data) = sasl_final {
                    write_request(dst, 12, &[data]);
                }
                AuthRequest::Ok.encode(dst);
            }
        }
    }

    /// True for [`Step::Done`].
    pub fn is_done(&self) -> bool {
        matches!(self, Step::Done { .. })
    }
}

/// Where the exchange stands.
enum State {
    /// `AuthenticationSASL` sent; waiting for `SASLInitialResponse`.
    SaslInitial(ScramServer),
    /// The initial response carried no data, an empty `AuthenticationSASLContinue` was sent;
    /// waiting for a `SASLResponse` with the client-first-message for the mechanism chosen.
    SaslClientFirst(ScramServer, &'static str),
    /// Server-first sent; waiting for a `SASLResponse` with the client-final-message.
    SaslClientFinal(ScramServer),
    /// `AuthenticationMD5Password` sent; waiting for `PasswordMessage`.
    Md5 {
        /// The response that proves the password, `None` for a mock exchange.
        expected: Option<[u8; 35]>,
    },
    /// Authenticated.
    Done,
    /// Ended by an error.
    Failed,
}

/// The authentication exchange with one client.
///
/// ```text
/// let (mut exchange, mut step) = AuthExchange::new(method, user, &secret);
/// loop {
///     step.encode(&mut out); flush(out);
///     if step.is_done() { break }                 // authenticated
///     let body = read 'p' message body;          // error if another tag arrives
///     step = exchange.receive(&body)?;           // Err: send ErrorResponse(err.sqlstate())
/// }
/// ```
pub struct AuthExchange {
    /// Progress.
    state: State,
    /// What a successful SCRAM login revealed (see [`AuthExchange::learned_keys`]).
    learned: Option<ScramKeys>,
}

impl AuthExchange {
    /// Starts authenticating `user` (the startup packet's user) with `method` against `secret`,
    /// returning the exchange and the first step (for [`Method::Trust`], already
    /// [`Step::Done`]).
    ///
    /// A secret that cannot serve the method (an md5 hash with SCRAM) gives a mock exchange
    /// that fails with [`AuthError::InvalidPassword`]; better to reject such configurations at
    /// load time with [`StoredSecret::supports_scram`] / [`StoredSecret::supports_md5`]. With
    /// [`Method::Md5`] and a SCRAM verifier, SCRAM is used, as PostgreSQL does.
    pub fn new(method: Method, user: &str, secret: &StoredSecret) -> (Self, Step) {
        match method {
            Method::Trust => Self::trust(),
            Method::Md5 if secret.supports_md5() => {
                let salt = md5_salt();
                Self::md5(salt, expected_response(secret, user, salt))
            }
            Method::Md5 | Method::ScramSha256 => match secret.try_scram_verifier() {
                Some(verifier) => Self::scram(ScramServer::new(verifier.clone(), random_nonce())),
                None => {
                    // No SCRAM secret: run a mock exchange. The mock key is random per attempt;
                    // this user exists, so a changing salt reveals nothing new.
                    let mut key = [0u8; 32];
                    rand::fill(&mut key[..]);
                    Self::scram(ScramServer::mock(user, &key, random_nonce()))
                }
            },
        }
    }

    /// Starts a mock exchange for a user that is not in the configuration, so that the client
    /// cannot tell it apart from a wrong password: it asks for a password the way `method`
    /// would and always ends in [`AuthError::InvalidPassword`].
    ///
    /// `mock_secret` should be random per proxy process (e.g. generated at startup and kept in
    /// the app state): it makes the SCRAM salt stable per user name, like a real one, but
    /// unpredictable. For [`Method::Trust`] there is nothing to check and the step is
    /// [`Step::Done`]; whether unknown users may pass is the caller's decision.
    pub fn new_unknown_user(method: Method, user: &str, mock_secret: &[u8]) -> (Self, Step) {
        match method {
            Method::Trust => Self::trust(),
            Method::Md5 => Self::md5(md5_salt(), None),
            Method::ScramSha256 => {
                Self::scram(ScramServer::mock(user, mock_secret, random_nonce()))
            }
        }
    }

    /// Trust: authenticated straight away.
    fn trust() -> (Self, Step) {
        (
            AuthExchange {
                state: State::Done,
                learned: None,
            },
            Step::Done { sasl_final: None },
        )
    }

    /// md5: send the salt, expect `expected` (none: mock, always fails).
    fn md5(salt: [u8; 4], expected: Option<[u8; 35]>) -> (Self, Step) {
        (
            AuthExchange {
                state: State::Md5 { expected },
                learned: None,
            },
            Step::Send(AuthRequest::Md5 { salt }),
        )
    }

    /// SCRAM: offer the mechanisms, then run `server`.
    fn scram(server: ScramServer) -> (Self, Step) {
        (
            AuthExchange {
                state: State::SaslInitial(server),
                learned: None,
            },
            Step::Send(AuthRequest::Sasl {
                mechanisms: super::SASL_MECHANISMS,
            }),
        )
    }

    /// Offers SCRAM-SHA-256-PLUS besides SCRAM-SHA-256, binding to `end_point` (the
    /// `tls-server-end-point` hash of the certificate of the client's TLS session). Called on a
    /// fresh exchange, with its first step, before that step is sent; md5 and trust exchanges
    /// are returned as they are. Mock exchanges offer it too, so an unknown user looks the same.
    pub fn with_channel_binding(mut self, step: Step, end_point: &[u8]) -> (Self, Step) {
        match &mut self.state {
            State::SaslInitial(server) => {
                server.offer_channel_binding(end_point.to_vec());
                let mechanisms = server.mechanisms();
                (self, Step::Send(AuthRequest::Sasl { mechanisms }))
            }
            _ => (self, step),
        }
    }

    /// True once the client is authenticated.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// After a successful SCRAM login: the keys the client's proof revealed, which log in to
    /// a server holding the same verifier (pass-through, see [`super::passthrough`]). `None`
    /// for md5 and trust, and before the exchange is done.
    pub fn learned_keys(&self) -> Option<&ScramKeys> {
        self.learned.as_ref().filter(|_| self.is_done())
    }

    /// Consumes the body of the client's next `p` message (everything after the tag and the
    /// length) and returns the next step.
    ///
    /// Errors end the exchange (later calls fail too): [`AuthError::InvalidPassword`] means
    /// SQLSTATE `28P01`, [`AuthError::Protocol`] `08P01`; see [`AuthError::sqlstate`].
    pub fn receive(&mut self, body: &[u8]) -> Result<Step, AuthError> {
        // Take the state out; it is only put back (advanced) on success.
        let state = std::mem::replace(&mut self.state, State::Failed);
        if body.len() > MAX_AUTH_MESSAGE_LEN {
            return Err(AuthError::Protocol("authentication message is too long"));
        }
        match state {
            State::SaslInitial(mut server) => {
                let (mechanism, data) = parse_sasl_initial_response(body)?;
                match data {
                    Some(data) => {
                        let reply = server.client_first(mechanism, data)?;
                        self.state = State::SaslClientFinal(server);
                        Ok(Step::Send(AuthRequest::SaslContinue(reply)))
                    }
                    None => {
                        // No initial response: as in PostgreSQL, send an empty challenge; the
                        // client answers with its client-first-message in a SASLResponse.
                        let mechanism = server.mechanism(mechanism)?;
                        self.state = State::SaslClientFirst(server, mechanism);
                        Ok(Step::Send(AuthRequest::SaslContinue(Vec::new())))
                    }
                }
            }
            State::SaslClientFirst(mut server, mechanism) => {
                let reply = server.client_first(mechanism, body)?;
                self.state = State::SaslClientFinal(server);
                Ok(Step::Send(AuthRequest::SaslContinue(reply)))
            }
            State::SaslClientFinal(mut server) => {
                let reply = server.client_final(body)?;
                self.learned = server.learned_keys();
                self.state = State::Done;
                Ok(Step::Done {
                    sasl_final: Some(reply),
                })
            }
            State::Md5 { expected } => {
                let response = parse_password_message(body)?;
                // An empty password is simply wrong, as it is for PostgreSQL.
                match expected {
                    Some(expected) if ct_eq(&expected, response) => {
                        self.state = State::Done;
                        Ok(Step::Done { sasl_final: None })
                    }
                    _ => Err(AuthError::InvalidPassword),
                }
            }
            State::Done => Err(AuthError::Protocol(
                "unexpected password message after authentication",
            )),
            State::Failed => Err(AuthError::Protocol("authentication has already failed")),
        }
    }
}

/// Parses a `SASLInitialResponse` body: mechanism name (C string), int32 length of the initial
/// response (-1 for none), then exactly that many bytes.
fn parse_sasl_initial_response(body: &[u8]) -> Result<(&str, Option<&[u8]>), AuthError> {
    let nul = body
        .iter()
        .position(|&b| b == 0)
        .ok_or(AuthError::Protocol(
            "malformed SASLInitialResponse: unterminated mechanism name",
        ))?;
    let mechanism = std::str::from_utf8(&body[..nul]).map_err(|_| {
        AuthError::Protocol("malformed SASLInitialResponse: invalid mechanism name")
    })?;
    let rest = &body[nul + 1..];
    let (len, data) = rest.split_first_chunk::<4>().ok_or(AuthError::Protocol(
        "malformed SASLInitialResponse: truncated length",
    ))?;
    match i32::from_be_bytes(*len) {
        -1 if data.is_empty() => Ok((mechanism, None)),
        // Compare with what actually arrived; nothing is allocated from the claimed length.
        n if usize::try_from(n).is_ok_and(|n| n == data.len()) => Ok((mechanism, Some(data))),
        _ => Err(AuthError::Protocol(
            "malformed SASLInitialResponse: length does not match the message",
        )),
    }
}

/// Parses a `PasswordMessage` body: one C string filling the whole body.
fn parse_password_message(body: &[u8]) -> Result<&[u8], AuthError> {
    match body.split_last() {
        Some((0, password)) if !password.contains(&0) => Ok(password),
        _ => Err(AuthError::Protocol("invalid password packet size")),
    }
}

/// A fresh random server nonce from the thread-local CSPRNG.
fn random_nonce() -> [u8; SERVER_NONCE_LEN] {
    let mut nonce = [0u8; SERVER_NONCE_LEN];
    rand::fill(&mut nonce[..]);
    nonce
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::SASL_MECHANISMS;

    #[test]
    fn method_names() {
        for m in [Method::ScramSha256, Method::Md5, Method::Trust] {
            assert_eq!(m.name().parse::<Method>().unwrap(), m);
            assert_eq!(m.to_string(), m.name());
        }
        assert_eq!(
            "SCRAM-SHA-256".parse::<Method>().unwrap(),
            Method::ScramSha256
        );
        assert!("password".parse::<Method>().is_err());
        assert_eq!(Method::default(), Method::ScramSha256);
    }

    #[test]
    fn encodings() {
        let enc = |r: AuthRequest| {
            let mut b = BytesMut::new();
            r.encode(&mut b);
            b.to_vec()
        };
        assert_eq!(enc(AuthRequest::Ok), b"R\0\0\0\x08\0\0\0\0");
        assert_eq!(
            enc(AuthRequest::Md5 { salt: [1, 2, 3, 4] }),
            b"R\0\0\0\x0c\0\0\0\x05\x01\x02\x03\x04"
        );
        assert_eq!(
            enc(AuthRequest::Sasl {
                mechanisms: SASL_MECHANISMS
            }),
            b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0"
        );
        assert_eq!(
            enc(AuthRequest::SaslContinue(b"r=x".to_vec())),
            b"R\0\0\0\x0b\0\0\0\x0br=x"
        );
        assert_eq!(
            enc(AuthRequest::SaslFinal(b"v=y".to_vec())),
            b"R\0\0\0\x0b\0\0\0\x0cv=y"
        );
        let mut b = BytesMut::new();
        Step::Done {
            sasl_final: Some(b"v=y".to_vec()),
        }
        .encode(&mut b);
        assert_eq!(&b[..], b"R\0\0\0\x0b\0\0\0\x0cv=yR\0\0\0\x08\0\0\0\0");
    }

    #[test]
    fn sasl_initial_response_parsing() {
        let ok = b"SCRAM-SHA-256\0\0\0\0\x03abc";
        assert_eq!(
            parse_sasl_initial_response(ok).unwrap(),
            ("SCRAM-SHA-256", Some(&b"abc"[..]))
        );
        assert_eq!(
            parse_sasl_initial_response(b"SCRAM-SHA-256\0\xff\xff\xff\xff").unwrap(),
            ("SCRAM-SHA-256", None)
        );
        assert_eq!(
            parse_sasl_initial_response(b"M\0\0\0\0\0").unwrap(),
            ("M", Some(&b""[..]))
        );
        for bad in [
            &b""[..],
            b"SCRAM-SHA-256",
            b"SCRAM-SHA-256\0",
            b"SCRAM-SHA-256\0\0\0\0",
            b"SCRAM-SHA-256\0\0\0\0\x04abc",
            b"SCRAM-SHA-256\0\0\0\0\x02abc",
            b"SCRAM-SHA-256\0\x7f\xff\xff\xffabc",
            b"SCRAM-SHA-256\0\xff\xff\xff\xfeabc",
            b"SCRAM-SHA-256\0\xff\xff\xff\xffabc",
            b"\xff\0\0\0\0\0",
        ] {
            assert!(parse_sasl_initial_response(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn password_message_parsing() {
        assert_eq!(parse_password_message(b"abc\0").unwrap(), b"abc");
        assert_eq!(parse_password_message(b"\0").unwrap(), b"");
        for bad in [&b""[..], b"abc", b"a\0bc\0", b"abc\0\0"] {
            assert!(parse_password_message(bad).is_err(), "{bad:?}");
        }
    }
}
