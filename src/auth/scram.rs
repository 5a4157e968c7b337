//! The server side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL profiles it, sans-I/O.
//!
//! The proxy checks a client's proof against a [`ScramVerifier`] without ever seeing the
//! password. Two messages arrive from the client (client-first, client-final) and two go back
//! (server-first, server-final); [`ScramServer`] turns each incoming message into the outgoing
//! one or an error. Transport (the `AuthenticationSASL*` / `SASLInitialResponse` framing) is
//! [`super::AuthExchange`]'s business.
//!
//! PostgreSQL specifics followed here (see the PostgreSQL docs, "SASL Authentication"):
//! - the user name in the client-first-message is ignored: the user is the one from the startup
//!   packet, and libpq sends `n=` empty;
//! - no authorization identity (`a=`) and no mandatory extensions (`m=`);
//! - channel binding: on a TLS connection the session offers `SCRAM-SHA-256-PLUS` with
//!   `tls-server-end-point` (the hash of the proxy's certificate, RFC 5929) besides
//!   `SCRAM-SHA-256`; the client's `c=` must then carry that hash, which a man in the middle
//!   holding another certificate cannot match. With PLUS offered, a `y` flag ("I could bind but
//!   think you cannot") means someone stripped PLUS from the list on the way: refused, as RFC
//!   5802 section 6 says. Without TLS a `p=` flag is refused and `n` and `y` are accepted.

use std::str;

use super::crypto::{b64_decode, b64_decode_32, b64_encode, ct_eq, hmac_sha256, sha256};
use super::passthrough::ScramKeys;
use super::secret::ScramVerifier;
use super::AuthError;

/// The SASL mechanism name for SCRAM-SHA-256.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";

/// The SASL mechanism name for SCRAM-SHA-256 with channel binding.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// The SASL mechanisms the proxy offers on a plain connection, in `AuthenticationSASL`.
pub const SASL_MECHANISMS: &[&str] = &[SCRAM_SHA_256];

/// The SASL mechanisms offered on a TLS connection, PLUS first as PostgreSQL lists them.
pub const SASL_MECHANISMS_PLUS: &[&str] = &[SCRAM_SHA_256_PLUS, SCRAM_SHA_256];

/// The only channel-binding type offered (the one libpq and PostgreSQL implement).
const TLS_SERVER_END_POINT: &str = "tls-server-end-point";

/// Longest `c=` value accepted: base64 of a gs2 header and a SHA-512 hash, with room to spare.
const MAX_CBIND_B64_LEN: usize = 256;

/// Number of random bytes in the server's nonce (PostgreSQL uses 18, i.e. 24 base64 chars).
pub const SERVER_NONCE_LEN: usize = 18;

/// The gs2 channel-binding flag the client sent in its client-first-message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gs2Flag<'a> {
    /// `n`: the client does not support channel binding.
    No,
    /// `y`: the client supports channel binding but thinks the server does not: fine when the
    /// server really does not offer it, a downgrade attack when it does.
    ClientCapable,
    /// `p=type`: the client binds to the channel with this type.
    Binding(&'a str),
}

/// Where the exchange stands.
enum State {
    /// Waiting for the client-first-message.
    ClientFirst,
    /// Server-first sent; waiting for the client-final-message.
    ClientFinal {
        /// What the client's `c=` must decode to: its gs2 header, then the channel-binding
        /// data when it binds.
        cbind_input: Vec<u8>,
        /// client-first-message-bare, part of the AuthMessage.
        client_first_bare: String,
        /// server-first-message as sent, part of the AuthMessage.
        server_first: String,
        /// Client nonce followed by server nonce, which client-final must repeat.
        nonce: String,
    },
    /// The client proved knowledge of the password.
    Authenticated,
    /// An error ended the exchange.
    Failed,
}

/// The server side of one SCRAM-SHA-256 exchange.
///
/// ```text
/// client-first  --client_first()-->  server-first  (AuthenticationSASLContinue)
/// client-final  --client_final()-->  server-final  (AuthenticationSASLFinal), then AuthenticationOk
/// ```
///
/// Any error ends the exchange: further calls fail with a protocol violation.
pub struct ScramServer {
    /// The user's verifier.
    verifier: ScramVerifier,
    /// The server's part of the nonce, printable and comma-free.
    server_nonce: String,
    /// Set for mock exchanges (unknown user, unusable secret): the proof is still computed and
    /// compared, so timing matches a real exchange, but the result is always failure.
    doomed: bool,
    /// `tls-server-end-point` data when the connection is TLS and PLUS is offered.
    end_point: Option<Vec<u8>>,
    /// The ClientKey the client's proof revealed, once it checked out (for pass-through
    /// logins to servers, see [`super::passthrough`]).
    client_key: Option<[u8; 32]>,
    /// Progress.
    state: State,
}

impl ScramServer {
    /// Starts an exchange against `verifier`, with `server_nonce` fresh random bytes (base64
    /// encoded into the nonce, as PostgreSQL does).
    pub fn new(verifier: ScramVerifier, server_nonce: [u8; SERVER_NONCE_LEN]) -> Self {
        ScramServer {
            verifier,
            server_nonce: b64_encode(&server_nonce),
            doomed: false,
            end_point: None,
            client_key: None,
            state: State::ClientFirst,
        }
    }

    /// Starts an exchange with a fresh random nonce from the thread-local CSPRNG.
    pub fn with_random_nonce(verifier: ScramVerifier) -> Self {
        let mut nonce = [0u8; SERVER_NONCE_LEN];
        rand::fill(&mut nonce[..]);
        ScramServer::new(verifier, nonce)
    }

    /// Starts an exchange using `server_nonce` verbatim as the server's part of the nonce. It
    /// must be non-empty printable ASCII without commas. Meant for tests against fixed vectors
    /// such as RFC 7677's; real exchanges should use [`ScramServer::new`].
    pub fn with_nonce_string(
        verifier: ScramVerifier,
        server_nonce: &str,
    ) -> Result<Self, AuthError> {
        if !is_valid_nonce(server_nonce) {
            return Err(AuthError::Config(
                "SCRAM server nonce must be printable ASCII without commas",
            ));
        }
        Ok(ScramServer {
            verifier,
            server_nonce: server_nonce.to_owned(),
            doomed: false,
            end_point: None,
            client_key: None,
            state: State::ClientFirst,
        })
    }

    /// A mock exchange for a user that does not exist (or cannot do SCRAM): it runs like a real
    /// one, with a salt that is stable per user name (derived from `mock_secret`, which should be
    /// random per proxy process and not known to clients), and always ends in
    /// [`AuthError::InvalidPassword`]. This keeps a client from learning which users exist.
    pub fn mock(user: &str, mock_secret: &[u8], server_nonce: [u8; SERVER_NONCE_LEN]) -> Self {
        let mut server = ScramServer::new(ScramVerifier::mock(user, mock_secret), server_nonce);
        server.doomed = true;
        server
    }

    /// Offers SCRAM-SHA-256-PLUS, binding to `end_point` (the `tls-server-end-point` hash of
    /// the certificate the client's TLS session was made with).
    pub fn offer_channel_binding(&mut self, end_point: Vec<u8>) {
        self.end_point = Some(end_point);
    }

    /// The mechanisms to list in `AuthenticationSASL`.
    pub fn mechanisms(&self) -> &'static [&'static str] {
        if self.end_point.is_some() {
            SASL_MECHANISMS_PLUS
        } else {
            SASL_MECHANISMS
        }
    }

    /// The offered mechanism `name` the client selected, or a protocol violation.
    pub fn mechanism(&self, name: &str) -> Result<&'static str, AuthError> {
        self.mechanisms()
            .iter()
            .find(|m| **m == name)
            .copied()
            .ok_or(AuthError::Protocol(
                "client selected an invalid SASL authentication mechanism",
            ))
    }

    /// What the client's `c=` must carry for `gs2` under `mechanism`, or why the combination
    /// is refused (PostgreSQL's checks in `read_client_first_message`).
    fn cbind_input(&self, mechanism: &str, gs2: Gs2Flag<'_>) -> Result<Vec<u8>, AuthError> {
        let plus = mechanism == SCRAM_SHA_256_PLUS;
        match (gs2, plus, &self.end_point) {
            (Gs2Flag::Binding(TLS_SERVER_END_POINT), true, Some(end_point)) => {
                let mut input = format!("p={TLS_SERVER_END_POINT},,").into_bytes();
                input.extend_from_slice(end_point);
                Ok(input)
            }
            (Gs2Flag::Binding(_), true, _) => Err(AuthError::Protocol(
                "unsupported SCRAM channel-binding type (only tls-server-end-point)",
            )),
            (_, true, _) => Err(AuthError::Protocol(
                "the client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include \
                 channel binding data",
            )),
            (Gs2Flag::Binding(_), false, Some(_)) => Err(AuthError::Protocol(
                "the client selected SCRAM-SHA-256 without channel binding, but the SCRAM \
                 message includes channel binding data",
            )),
            (Gs2Flag::Binding(_), false, None) => Err(AuthError::Protocol(
                "client requires SCRAM channel binding, but the proxy does not offer \
                 SCRAM-SHA-256-PLUS (no TLS)",
            )),
            (Gs2Flag::ClientCapable, false, Some(_)) => Err(AuthError::Protocol(
                "SCRAM channel binding negotiation error: the client supports SCRAM channel \
                 binding but thinks the server does not; this server does",
            )),
            (Gs2Flag::ClientCapable, false, None) => Ok(b"y,,".to_vec()),
            (Gs2Flag::No, false, _) => Ok(b"n,,".to_vec()),
        }
    }

    /// True once the client's proof has been verified.
    pub fn is_authenticated(&self) -> bool {
        matches!(self.state, State::Authenticated)
    }

    /// What the client's proof revealed, once it was verified: the keys that log in to a
    /// server holding the same verifier ([`super::passthrough`]). `None` before that, and
    /// always for a mock exchange.
    pub fn learned_keys(&self) -> Option<ScramKeys> {
        if !self.is_authenticated() || self.doomed {
            return None;
        }
        ScramKeys::new(&self.verifier, self.client_key?)
    }

    /// Handles the client-first-message (the data of `SASLInitialResponse`) for the chosen
    /// `mechanism`, returning the server-first-message to send in `AuthenticationSASLContinue`.
    pub fn client_first(&mut self, mechanism: &str, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        if !matches!(self.state, State::ClientFirst) {
            self.state = State::Failed;
            return Err(AuthError::Protocol("unexpected SCRAM client-first-message"));
        }
        // Whatever happens below, this exchange does not accept a second client-first.
        self.state = State::Failed;
        let mechanism = self.mechanism(mechanism)?;
        let first = parse_client_first(data)?;
        let cbind_input = self.cbind_input(mechanism, first.gs2)?;
        let nonce = format!("{}{}", first.client_nonce, self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            b64_encode(self.verifier.salt()),
            self.verifier.iterations()
        );
        let reply = server_first.clone().into_bytes();
        self.state = State::ClientFinal {
            cbind_input,
            client_first_bare: first.bare.to_owned(),
            server_first,
            nonce,
        };
        Ok(reply)
    }

    /// Handles the client-final-message (the data of `SASLResponse`): checks the channel-binding
    /// echo and the nonce, then the proof. Returns the server-final-message (`v=<signature>`) to
    /// send in `AuthenticationSASLFinal`, after which the client is authenticated.
    ///
    /// A wrong proof is [`AuthError::InvalidPassword`]; anything malformed is
    /// [`AuthError::Protocol`].
    pub fn client_final(&mut self, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        let State::ClientFinal {
            cbind_input,
            client_first_bare,
            server_first,
            nonce,
        } = std::mem::replace(&mut self.state, State::Failed)
        else {
            return Err(AuthError::Protocol("unexpected SCRAM client-final-message"));
        };
        let msg = str::from_utf8(data)
            .map_err(|_| AuthError::Protocol("SCRAM client-final-message is not valid UTF-8"))?;
        let parsed = parse_client_final(msg)?;
        let echoed = b64_decode(parsed.channel_binding, MAX_CBIND_B64_LEN);
        if !echoed.is_some_and(|c| ct_eq(&c, &cbind_input)) {
            return Err(AuthError::Protocol(
                "unexpected SCRAM channel-binding attribute in client-final-message",
            ));
        }
        if parsed.nonce != nonce {
            return Err(AuthError::Protocol(
                "SCRAM nonce in client-final-message does not match",
            ));
        }

        // AuthMessage = client-first-message-bare "," server-first-message ","
        //               client-final-message-without-proof
        let auth_message: [&[u8]; 5] = [
            client_first_bare.as_bytes(),
            b",",
            server_first.as_bytes(),
            b",",
            parsed.without_proof.as_bytes(),
        ];
        // ClientProof = ClientKey XOR HMAC(StoredKey, AuthMessage), so recover ClientKey and check
        // that it hashes to StoredKey. The comparison is constant-time so that response timing
        // says nothing about how close a forged proof came to secret-derived data.
        let client_signature = hmac_sha256(self.verifier.stored_key(), &auth_message);
        let mut client_key = parsed.proof;
        for (k, s) in client_key.iter_mut().zip(client_signature) {
            *k ^= s;
        }
        let matches = ct_eq(&sha256(&client_key), self.verifier.stored_key());
        if !matches || self.doomed {
            return Err(AuthError::InvalidPassword);
        }

        let server_signature = hmac_sha256(self.verifier.server_key(), &auth_message);
        self.client_key = Some(client_key);
        self.state = State::Authenticated;
        Ok(format!("v={}", b64_encode(&server_signature)).into_bytes())
    }
}

/// The parts of a client-first-message the server needs.
struct ClientFirst<'a> {
    /// The channel-binding flag.
    gs2: Gs2Flag<'a>,
    /// client-first-message-bare: everything after the gs2 header.
    bare: &'a str,
    /// The client's nonce.
    client_nonce: &'a str,
}

/// Parses `gs2-header client-first-message-bare`:
/// `(n|y|p=name) "," [a=authzid] "," [m=ext ","] n=user "," r=nonce ["," ext]*`.
fn parse_client_first(data: &[u8]) -> Result<ClientFirst<'_>, AuthError> {
    let msg = str::from_utf8(data)
        .map_err(|_| AuthError::Protocol("SCRAM client-first-message is not valid UTF-8"))?;
    if msg.is_empty() {
        return Err(AuthError::Protocol("SCRAM client-first-message is empty"));
    }
    let mut parts = msg.splitn(3, ',');
    let (Some(cbind), Some(authzid), Some(bare)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Protocol(
            "malformed SCRAM client-first-message: incomplete gs2 header",
        ));
    };
    let gs2 = match cbind {
        "n" => Gs2Flag::No,
        "y" => Gs2Flag::ClientCapable,
        _ if cbind.starts_with("p=") => Gs2Flag::Binding(&cbind[2..]),
        _ => {
            return Err(AuthError::Protocol(
                "malformed SCRAM client-first-message: unexpected channel-binding flag",
            ))
        }
    };
    if !authzid.is_empty() {
        return Err(AuthError::Protocol(
            "client uses a SCRAM authorization identity, which is not supported",
        ));
    }

    let mut attrs = bare.split(',');
    let first_attr = attrs.next().unwrap_or_default();
    if first_attr.starts_with("m=") {
        return Err(AuthError::Protocol(
            "client requires an unsupported SCRAM extension",
        ));
    }
    // The user name's value is ignored, as PostgreSQL does: the authenticated user is the one
    // from the startup packet (libpq sends an empty `n=`). It only has to be syntactically there.
    if !first_attr.starts_with("n=") {
        return Err(AuthError::Protocol(
            "malformed SCRAM client-first-message: expected user name attribute",
        ));
    }
    let client_nonce =
        attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(AuthError::Protocol(
                "malformed SCRAM client-first-message: expected nonce attribute",
            ))?;
    if !is_valid_nonce(client_nonce) {
        return Err(AuthError::Protocol(
            "malformed SCRAM client-first-message: invalid nonce",
        ));
    }
    // Optional extensions: PostgreSQL supports none and ignores them, but they must be
    // well-formed attributes.
    if !attrs.all(is_attribute) {
        return Err(AuthError::Protocol(
            "malformed SCRAM client-first-message: invalid extension attribute",
        ));
    }
    Ok(ClientFirst {
        gs2,
        bare,
        client_nonce,
    })
}

/// The parts of a client-final-message.
struct ClientFinal<'a> {
    /// client-final-message-without-proof, part of the AuthMessage.
    without_proof: &'a str,
    /// The `c=` value (base64 of the gs2 header).
    channel_binding: &'a str,
    /// The `r=` value.
    nonce: &'a str,
    /// The decoded `p=` value.
    proof: [u8; 32],
}

/// Parses `c=cbind "," r=nonce ["," ext]* "," p=proof`.
fn parse_client_final(msg: &str) -> Result<ClientFinal<'_>, AuthError> {
    // The proof is the last attribute; no attribute value can contain a comma, so the last
    // ",p=" starts it.
    let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(AuthError::Protocol(
        "malformed SCRAM client-final-message: expected proof attribute at the end",
    ))?;
    let proof = b64_decode_32(proof).ok_or(AuthError::Protocol(
        "malformed SCRAM client-final-message: invalid proof",
    ))?;
    let mut attrs = without_proof.split(',');
    let channel_binding =
        attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(AuthError::Protocol(
                "malformed SCRAM client-final-message: expected channel-binding attribute",
            ))?;
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or(AuthError::Protocol(
            "malformed SCRAM client-final-message: expected nonce attribute",
        ))?;
    if !attrs.all(is_attribute) {
        return Err(AuthError::Protocol(
            "malformed SCRAM client-final-message: invalid extension attribute",
        ));
    }
    Ok(ClientFinal {
        without_proof,
        channel_binding,
        nonce,
        proof,
    })
}

/// RFC 5802 `printable`: `%x21-2B / %x2D-7E` (visible ASCII except comma), at least one.
fn is_valid_nonce(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// A generic attribute: one ASCII letter, `=`, then a value (which cannot contain a comma, as
/// attributes were split on commas).
fn is_attribute(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b'='
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::crypto::b64_decode;

    // RFC 7677 section 3.
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_verifier() -> ScramVerifier {
        ScramVerifier::parse(crate::auth::tests::RFC7677_VERIFIER).unwrap()
    }

    fn rfc_server() -> ScramServer {
        ScramServer::with_nonce_string(rfc_verifier(), SERVER_NONCE).unwrap()
    }

    #[test]
    fn rfc7677_vector() {
        let mut server = rfc_server();
        let first = server
            .client_first(SCRAM_SHA_256, CLIENT_FIRST.as_bytes())
            .unwrap();
        assert_eq!(str::from_utf8(&first).unwrap(), SERVER_FIRST);
        let fin = server.client_final(CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(str::from_utf8(&fin).unwrap(), SERVER_FINAL);
        assert!(server.is_authenticated());
        // Nothing more is accepted.
        assert!(server.client_final(CLIENT_FINAL.as_bytes()).is_err());
    }

    #[test]
    fn rfc7677_vector_with_wrong_password_fails() {
        let salt = b64_decode("W22ZaJ0SNY7soEsUEjb6gQ==", 100).unwrap();
        let verifier = ScramVerifier::derive_unprepared(b"pencil2", &salt, 4096);
        let mut server = ScramServer::with_nonce_string(verifier, SERVER_NONCE).unwrap();
        server
            .client_first(SCRAM_SHA_256, CLIENT_FIRST.as_bytes())
            .unwrap();
        let err = server.client_final(CLIENT_FINAL.as_bytes()).unwrap_err();
        assert!(err.is_invalid_password(), "{err:?}");
        assert!(!server.is_authenticated());
    }

    #[test]
    fn user_name_and_extensions_in_client_first_are_ignored() {
        // A different user name changes client-first-bare, hence AuthMessage, so the RFC proof no
        // longer applies; but the exchange must proceed to the proof check.
        let mut server = rfc_server();
        let first = server
            .client_first(
                SCRAM_SHA_256,
                b"n,,n=someone=2Celse,r=rOprNGfwEbeRWgbNEkqO,x=ext",
            )
            .unwrap();
        assert_eq!(str::from_utf8(&first).unwrap(), SERVER_FIRST);
        let err = server.client_final(CLIENT_FINAL.as_bytes()).unwrap_err();
        assert!(err.is_invalid_password());
    }

    #[test]
    fn y_flag_requires_matching_echo() {
        let mut server = rfc_server();
        server
            .client_first(SCRAM_SHA_256, b"y,,n=user,r=rOprNGfwEbeRWgbNEkqO")
            .unwrap();
        // c=biws is the echo for "n,,", not "y,,".
        let err = server.client_final(CLIENT_FINAL.as_bytes()).unwrap_err();
        assert!(err.is_protocol_violation(), "{err:?}");

        let mut server = rfc_server();
        server
            .client_first(SCRAM_SHA_256, b"y,,n=user,r=rOprNGfwEbeRWgbNEkqO")
            .unwrap();
        let fin = CLIENT_FINAL.replace("c=biws", "c=eSws");
        // Echo accepted; the RFC proof was computed for "n,," so the proof itself fails.
        let err = server.client_final(fin.as_bytes()).unwrap_err();
        assert!(err.is_invalid_password(), "{err:?}");
    }

    #[test]
    fn client_first_rejections() {
        let cases: &[(&str, &[u8])] = &[
            ("empty", b""),
            ("channel binding", b"p=tls-server-end-point,,n=,r=abc"),
            ("bad flag", b"x,,n=,r=abc"),
            ("authzid", b"n,a=admin,n=,r=abc"),
            ("extension m", b"n,,m=ext,n=,r=abc"),
            ("no user", b"n,,r=abc"),
            ("no nonce", b"n,,n="),
            ("empty nonce", b"n,,n=,r="),
            ("nonce with space", b"n,,n=,r=a b"),
            ("nonce non-ascii", "n,,n=,r=é".as_bytes()),
            ("trailing comma", b"n,,n=,r=abc,"),
            ("bad extension", b"n,,n=,r=abc,1=x"),
            ("gs2 only", b"n,,"),
            ("half gs2", b"n,"),
            ("not utf8", b"n,,n=\xff,r=abc"),
        ];
        for (what, data) in cases {
            let mut server = rfc_server();
            let err = server.client_first(SCRAM_SHA_256, data).unwrap_err();
            assert!(err.is_protocol_violation(), "{what}: {err:?}");
        }
        let mut server = rfc_server();
        let err = server
            .client_first("SCRAM-SHA-256-PLUS", CLIENT_FIRST.as_bytes())
            .unwrap_err();
        assert!(err.is_protocol_violation());
        let msg = ScramServer::with_nonce_string(rfc_verifier(), SERVER_NONCE)
            .unwrap()
            .client_first(SCRAM_SHA_256, b"p=tls-server-end-point,,n=,r=abc")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("channel binding"), "{msg}");
    }

    #[test]
    fn client_final_rejections() {
        let wrong_nonce = CLIENT_FINAL.replace("k0,p=", "k1,p=");
        let short_nonce = CLIENT_FINAL.replace("$k0,p=", ",p=");
        let bad_b64 = CLIENT_FINAL.replace("dHzb", "dHz!");
        let short_proof = CLIENT_FINAL.replace("iz7AndVQ=", "iz7And==");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("wrong nonce", wrong_nonce.into_bytes()),
            ("nonce prefix only", short_nonce.into_bytes()),
            ("bad base64", bad_b64.into_bytes()),
            ("short proof", short_proof.into_bytes()),
            (
                "missing proof",
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".to_vec(),
            ),
            (
                "missing c",
                CLIENT_FINAL.replace("c=biws,", "").into_bytes(),
            ),
            (
                "wrong c",
                CLIENT_FINAL
                    .replace("c=biws", "c=cD10bHMtc2VydmVyLWVuZC1wb2ludCws")
                    .into_bytes(),
            ),
            ("proof not last", format!("{CLIENT_FINAL},x=1").into_bytes()),
            (
                "bad extension",
                CLIENT_FINAL.replace(",p=", ",=x,p=").into_bytes(),
            ),
            (
                "not utf8",
                CLIENT_FINAL.replace("c=biws", "c=\u{fffd}").into_bytes(),
            ),
        ];
        for (what, data) in cases {
            let mut server = rfc_server();
            server
                .client_first(SCRAM_SHA_256, CLIENT_FIRST.as_bytes())
                .unwrap();
            let err = server.client_final(&data).unwrap_err();
            assert!(err.is_protocol_violation(), "{what}: {err:?}");
            // The exchange is over after an error.
            assert!(server.client_final(CLIENT_FINAL.as_bytes()).is_err());
        }
        // Extensions before the proof are allowed but change AuthMessage.
        let mut server = rfc_server();
        server
            .client_first(SCRAM_SHA_256, CLIENT_FIRST.as_bytes())
            .unwrap();
        let err = server
            .client_final(CLIENT_FINAL.replace(",p=", ",x=y,p=").as_bytes())
            .unwrap_err();
        assert!(err.is_invalid_password());
    }

    #[test]
    fn out_of_order_calls_fail() {
        let mut server = rfc_server();
        assert!(server
            .client_final(CLIENT_FINAL.as_bytes())
            .unwrap_err()
            .is_protocol_violation());
        let mut server = rfc_server();
        server
            .client_first(SCRAM_SHA_256, CLIENT_FIRST.as_bytes())
            .unwrap();
        assert!(server
            .client_first(SCRAM_SHA_256, CLIENT_FIRST.as_bytes())
            .is_err());
        // The failed duplicate ended the exchange.
        assert!(server.client_final(CLIENT_FINAL.as_bytes()).is_err());
    }

    #[test]
    fn mock_exchange_always_fails_with_invalid_password() {
        let mut server = ScramServer::mock("ghost", b"process secret", [7; SERVER_NONCE_LEN]);
        let first = server
            .client_first(SCRAM_SHA_256, CLIENT_FIRST.as_bytes())
            .unwrap();
        let first = String::from_utf8(first).unwrap();
        assert!(first.starts_with("r=rOprNGfwEbeRWgbNEkqO"));
        assert!(first.ends_with(",i=4096"));
        let nonce = first.split(',').next().unwrap();
        let fin = format!("c=biws,{nonce},p={}", b64_encode(&[0u8; 32]));
        assert_eq!(
            server.client_final(fin.as_bytes()).unwrap_err(),
            AuthError::InvalidPassword
        );
    }

    #[test]
    fn server_nonce_is_base64_of_bytes() {
        let mut server = ScramServer::new(rfc_verifier(), [0xff; SERVER_NONCE_LEN]);
        let first = server.client_first(SCRAM_SHA_256, b"n,,n=,r=abc").unwrap();
        let expected = format!("r=abc{},", "/".repeat(24));
        assert!(str::from_utf8(&first).unwrap().starts_with(&expected));
        assert!(ScramServer::with_nonce_string(rfc_verifier(), "a,b").is_err());
        assert!(ScramServer::with_nonce_string(rfc_verifier(), "").is_err());
    }
}
