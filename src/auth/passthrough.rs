//! Pass-through authentication: logging in to PostgreSQL as a client without knowing its
//! password, sans-I/O.
//!
//! When causeway holds only a user's SCRAM verifier (from the configuration or from
//! `auth_query`), it cannot derive the password PostgreSQL asks for. But a client that
//! authenticated with SCRAM against that verifier revealed its `ClientKey` on the way:
//! `ClientProof XOR HMAC(StoredKey, AuthMessage)` ([`super::ScramServer`] computes it to check
//! the proof). `ClientKey` plus the verifier (salt, iteration count, `ServerKey`) is all the
//! client side of SCRAM needs, provided the server holds the same verifier: same salt, same
//! iteration count. [`ScramKeys`] is that bundle and [`ScramKeysClient`] runs the client side
//! with it, checking the server's signature with `ServerKey`, so a server that does not hold
//! the verifier cannot pass for one that does.
//!
//! md5 needs even less: the stored `md5...` hash is the secret the md5 exchange uses, so
//! [`PassThrough::Md5`] answers md5 requests directly.
//!
//! Nothing in here prints a key: `Debug` is written by hand.

use std::fmt;

use super::crypto::{b64_decode, b64_decode_32, b64_encode, ct_eq, hmac_sha256, sha256};
use super::secret::{ScramVerifier, MAX_SCRAM_SALT_LEN};
use super::AuthError;

/// Number of random bytes in the client nonce (as libpq: 18, i.e. 24 base64 characters).
const CLIENT_NONCE_LEN: usize = 18;

/// What a client's SCRAM login revealed: enough to log in to a server that holds the same
/// verifier. Equal keys mean the same verifier (`StoredKey = H(ClientKey)`).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    /// PBKDF2 iteration count of the verifier.
    iterations: u32,
    /// Salt of the verifier.
    salt: Vec<u8>,
    /// `HMAC(SaltedPassword, "Client Key")`, learned from the client's proof.
    client_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`, from the verifier.
    server_key: [u8; 32],
}

impl ScramKeys {
    /// The keys for `verifier`, given the `client_key` a client's proof revealed; `None` when
    /// that key does not hash to the verifier's StoredKey.
    pub fn new(verifier: &ScramVerifier, client_key: [u8; 32]) -> Option<ScramKeys> {
        ct_eq(&sha256(&client_key), verifier.stored_key()).then(|| ScramKeys {
            iterations: verifier.iterations(),
            salt: verifier.salt().to_vec(),
            client_key,
            server_key: *verifier.server_key(),
        })
    }

    /// True if these keys belong to `verifier`.
    pub fn matches(&self, verifier: &ScramVerifier) -> bool {
        self.iterations == verifier.iterations()
            && self.salt == verifier.salt()
            && ct_eq(&sha256(&self.client_key), verifier.stored_key())
            && ct_eq(&self.server_key, verifier.server_key())
    }
}

impl fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramKeys")
            .field("iterations", &self.iterations)
            .field("keys", &"<redacted>")
            .finish()
    }
}

/// A secret causeway can log in to a server with, standing in for a password it does not
/// have.
#[derive(Clone, PartialEq, Eq)]
pub enum PassThrough {
    /// Keys a client's SCRAM login revealed (serves SCRAM only).
    Scram(ScramKeys),
    /// `md5(password + user)` as 32 lowercase hex digits, as PostgreSQL stores it (serves md5
    /// only).
    Md5([u8; 32]),
}

impl PassThrough {
    /// The md5 response to a server's `AuthenticationMD5Password` with `salt`, or `None` for
    /// SCRAM keys.
    pub fn md5_response(&self, salt: [u8; 4]) -> Option<[u8; 35]> {
        match self {
            PassThrough::Md5(hash) => Some(super::md5::salted_response(hash, salt)),
            PassThrough::Scram(_) => None,
        }
    }

    /// The SCRAM keys, or `None` for an md5 hash.
    pub fn scram_keys(&self) -> Option<&ScramKeys> {
        match self {
            PassThrough::Scram(keys) => Some(keys),
            PassThrough::Md5(_) => None,
        }
    }

    /// "SCRAM keys" or "md5 hash", for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            PassThrough::Scram(_) => "SCRAM keys learned from the client's login",
            PassThrough::Md5(_) => "md5 hash",
        }
    }
}

impl fmt::Debug for PassThrough {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PassThrough({} <redacted>)", self.kind_name())
    }
}

/// Where the client exchange stands.
enum State {
    /// client-first built; waiting for the server-first-message.
    ServerFirst,
    /// client-final sent; waiting for the server-final-message, which must carry this
    /// signature.
    ServerFinal([u8; 32]),
    /// The server proved it holds the verifier.
    Done,
    /// An error ended the exchange.
    Failed,
}

/// The client side of SCRAM-SHA-256 (no channel binding) with [`ScramKeys`] instead of a
/// password.
///
/// ```text
/// client_first()                  -> SASLInitialResponse data
/// server_first(SASLContinue data) -> SASLResponse data
/// server_final(SASLFinal data)    -> Ok: the server knows the verifier
/// ```
pub struct ScramKeysClient {
    /// The keys.
    keys: ScramKeys,
    /// client-first-message-bare, `n=,r=<nonce>`.
    client_first_bare: String,
    /// Progress.
    state: State,
}

impl ScramKeysClient {
    /// Starts an exchange with a fresh random nonce.
    pub fn new(keys: ScramKeys) -> ScramKeysClient {
        let mut nonce = [0u8; CLIENT_NONCE_LEN];
        rand::fill(&mut nonce[..]);
        ScramKeysClient::with_nonce(keys, &b64_encode(&nonce))
    }

    /// Starts an exchange with `nonce` (printable, no comma; tests use fixed ones).
    fn with_nonce(keys: ScramKeys, nonce: &str) -> ScramKeysClient {
        ScramKeysClient {
            keys,
            // The user name is the startup packet's; PostgreSQL ignores this one (libpq sends
            // it empty).
            client_first_bare: format!("n=,r={nonce}"),
            state: State::ServerFirst,
        }
    }

    /// The client-first-message: no channel binding (`n,,`), as postgres-protocol's client
    /// does for server connections.
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// Handles the server-first-message and returns the client-final-message.
    ///
    /// Refuses a server whose salt or iteration count differs from the keys' verifier: it
    /// holds another verifier (the password was changed), and no proof made with these keys
    /// could convince it.
    pub fn server_first(&mut self, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        if !matches!(self.state, State::ServerFirst) {
            return Err(AuthError::Protocol("unexpected SCRAM server-first-message"));
        }
        self.state = State::Failed;
        let msg = std::str::from_utf8(data)
            .map_err(|_| AuthError::Protocol("SCRAM server-first-message is not valid UTF-8"))?;
        let mut attrs = msg.split(',');
        let (Some(nonce), Some(salt), Some(iterations)) = (
            attrs.next().and_then(|a| a.strip_prefix("r=")),
            attrs.next().and_then(|a| a.strip_prefix("s=")),
            attrs.next().and_then(|a| a.strip_prefix("i=")),
        ) else {
            return Err(AuthError::Protocol("malformed SCRAM server-first-message"));
        };
        let client_nonce = &self.client_first_bare["n=,r=".len()..];
        if nonce.len() <= client_nonce.len() || !nonce.starts_with(client_nonce) {
            return Err(AuthError::Protocol(
                "SCRAM server nonce does not extend the client's",
            ));
        }
        let max_salt_text = MAX_SCRAM_SALT_LEN.div_ceil(3) * 4;
        let salt = b64_decode(salt, max_salt_text)
            .ok_or(AuthError::Protocol("SCRAM server sent an invalid salt"))?;
        if salt != self.keys.salt || iterations.parse::<u32>().ok() != Some(self.keys.iterations) {
            return Err(AuthError::Protocol(
                "the server's SCRAM verifier (salt or iteration count) differs from the one the \
                 client logged in with; was the password changed on the server?",
            ));
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message: [&[u8]; 5] = [
            self.client_first_bare.as_bytes(),
            b",",
            msg.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let stored_key = sha256(&self.keys.client_key);
        let signature = hmac_sha256(&stored_key, &auth_message);
        let mut proof = self.keys.client_key;
        for (p, s) in proof.iter_mut().zip(signature) {
            *p ^= s;
        }
        self.state = State::ServerFinal(hmac_sha256(&self.keys.server_key, &auth_message));
        Ok(format!("{without_proof},p={}", b64_encode(&proof)).into_bytes())
    }

    /// Checks the server-final-message: the server's signature must be the one only a holder
    /// of the verifier's ServerKey can make.
    pub fn server_final(&mut self, data: &[u8]) -> Result<(), AuthError> {
        let State::ServerFinal(expected) = std::mem::replace(&mut self.state, State::Failed) else {
            return Err(AuthError::Protocol("unexpected SCRAM server-final-message"));
        };
        let msg = std::str::from_utf8(data)
            .map_err(|_| AuthError::Protocol("SCRAM server-final-message is not valid UTF-8"))?;
        if msg.starts_with("e=") {
            return Err(AuthError::InvalidPassword);
        }
        let signature = msg
            .split(',')
            .next()
            .and_then(|a| a.strip_prefix("v="))
            .and_then(b64_decode_32)
            .ok_or(AuthError::Protocol("malformed SCRAM server-final-message"))?;
        if !ct_eq(&signature, &expected) {
            return Err(AuthError::Protocol(
                "the server's SCRAM signature is wrong: it does not hold the user's verifier",
            ));
        }
        self.state = State::Done;
        Ok(())
    }

    /// True once the server's signature checked out.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{ScramServer, SCRAM_SHA_256};

    /// A client that knows the password logs in to our server; the keys it revealed then log
    /// in to a second server holding the same verifier, which accepts the proof, and the
    /// client accepts the server's signature.
    #[test]
    fn keys_learned_from_one_login_log_in_to_a_server_with_the_same_verifier() {
        let verifier = ScramVerifier::from_password("pencil");
        let keys = learn_keys(&verifier, "pencil").expect("right password");
        assert!(keys.matches(&verifier));
        assert!(
            !keys.matches(&ScramVerifier::from_password("pencil")),
            "other salt"
        );

        let mut server = ScramServer::new(verifier.clone(), [7; 18]);
        let mut client = ScramKeysClient::new(keys);
        let server_first = server
            .client_first(SCRAM_SHA_256, &client.client_first())
            .unwrap();
        let client_final = client.server_first(&server_first).unwrap();
        let server_final = server.client_final(&client_final).unwrap();
        assert!(server.is_authenticated());
        client.server_final(&server_final).unwrap();
        assert!(client.is_done());
    }

    #[test]
    fn a_server_with_another_verifier_is_refused_before_any_proof() {
        let verifier = ScramVerifier::from_password("pencil");
        let keys = learn_keys(&verifier, "pencil").unwrap();
        // The password changed on the server: new salt.
        let mut server = ScramServer::new(ScramVerifier::from_password("pencil2"), [7; 18]);
        let mut client = ScramKeysClient::new(keys);
        let server_first = server
            .client_first(SCRAM_SHA_256, &client.client_first())
            .unwrap();
        let err = client.server_first(&server_first).unwrap_err();
        assert!(err.to_string().contains("password changed"), "{err}");
    }

    #[test]
    fn a_forged_server_signature_is_refused() {
        let verifier = ScramVerifier::from_password("pencil");
        let keys = learn_keys(&verifier, "pencil").unwrap();
        let mut client = ScramKeysClient::with_nonce(keys, "abc");
        let salt = b64_encode(verifier.salt());
        let first = format!("r=abcdef,s={salt},i=4096");
        client.server_first(first.as_bytes()).unwrap();
        let forged = format!("v={}", b64_encode(&[0u8; 32]));
        assert!(client.server_final(forged.as_bytes()).is_err());
        assert!(!client.is_done());
    }

    #[test]
    fn malformed_server_messages_are_errors_not_panics() {
        let verifier = ScramVerifier::from_password("pencil");
        let keys = learn_keys(&verifier, "pencil").unwrap();
        for bad in [
            &b""[..],
            b"r=abc",
            b"r=ab,s=AAAA,i=4096",
            b"r=abcd,s=!!,i=4096",
            b"r=abcd,i=4096,s=AAAA",
            b"\xff",
        ] {
            let mut client = ScramKeysClient::with_nonce(keys.clone(), "abc");
            assert!(client.server_first(bad).is_err(), "{bad:?}");
            assert!(client.server_final(b"v=x").is_err());
        }
    }

    #[test]
    fn wrong_password_reveals_no_keys() {
        let verifier = ScramVerifier::from_password("pencil");
        assert!(learn_keys(&verifier, "wrong").is_none());
    }

    #[test]
    fn md5_pass_through_answers_like_libpq() {
        let stored = postgres_protocol::password::md5(b"pencil", "user");
        let hash: [u8; 32] = stored.as_bytes()[3..].try_into().unwrap();
        let expected =
            postgres_protocol::authentication::md5_hash(b"user", b"pencil", [1, 2, 3, 4]);
        let got = PassThrough::Md5(hash).md5_response([1, 2, 3, 4]).unwrap();
        assert_eq!(&got[..], expected.as_bytes());
        let keys = learn_keys(&ScramVerifier::from_password("x"), "x").unwrap();
        assert!(PassThrough::Scram(keys).md5_response([0; 4]).is_none());
    }

    #[test]
    fn debug_redacts() {
        let keys = learn_keys(&ScramVerifier::from_password("pencil"), "pencil").unwrap();
        let out = format!("{:?} {:?}", keys, PassThrough::Scram(keys.clone()));
        assert!(out.contains("redacted"), "{out}");
        assert!(!out.contains(&format!("{:?}", keys.client_key)));
    }

    /// Runs a client login with `password` (postgres-protocol's client) against `verifier`
    /// and returns the keys the server side learned.
    fn learn_keys(verifier: &ScramVerifier, password: &str) -> Option<ScramKeys> {
        use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
        let mut server = ScramServer::new(verifier.clone(), [9; 18]);
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let first = server
            .client_first(SCRAM_SHA_256, client.message())
            .unwrap();
        client.update(&first).unwrap();
        let fin = server.client_final(client.message()).ok()?;
        client.finish(&fin).unwrap();
        server.learned_keys()
    }
}
