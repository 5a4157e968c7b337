//! What the configuration stores for a user, and PostgreSQL's SCRAM verifier format.
//!
//! A user's secret can be written in the config the same three ways PostgreSQL stores
//! `pg_authid.rolpassword`: a plain password, a `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`
//! verifier, or an `md5<32 hex>` hash. The verifier and hash forms can be copied straight from a
//! PostgreSQL server. Parsing is strict because a typo in a verifier must be a configuration
//! error, not a plain password that happens to start with `SCRAM-SHA-256$`.
//!
//! Nothing in here ever prints a secret: `Debug` and `Display` are written by hand to redact.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

use super::crypto::{b64_decode, b64_decode_32, b64_encode, hmac_sha256, pbkdf2_block, sha256};
use super::AuthError;

/// Largest iteration count accepted in a SCRAM verifier.
///
/// PostgreSQL defaults to 4096. The bound exists to catch garbage (and a verifier that would
/// make every client spin for minutes), not to second-guess a deliberately high setting. Note
/// that some clients refuse much lower counts: tokio-postgres and pgjdbc cap at 100 000.
pub const MAX_SCRAM_ITERATIONS: u32 = 10_000_000;

/// Largest salt, in bytes, accepted in a SCRAM verifier (PostgreSQL uses 16).
pub const MAX_SCRAM_SALT_LEN: usize = 256;

/// Iteration count for verifiers built from plain passwords, PostgreSQL's default.
const DEFAULT_ITERATIONS: u32 = 4096;

/// Length of the salt in mock verifiers, PostgreSQL's default salt length.
const MOCK_SALT_LEN: usize = 16;

/// Prefix of a PostgreSQL SCRAM-SHA-256 verifier.
const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";

/// Longest verifier string worth parsing: prefix, 8 digits, a maximal salt and two keys fit
/// comfortably.
const MAX_VERIFIER_LEN: usize = 1024;

/// A SCRAM-SHA-256 verifier: everything the server side of SCRAM needs, and nothing that would
/// let someone log in directly (the password cannot be recovered from it, though it does allow
/// an offline dictionary attack, so it is still treated as a secret).
///
/// Always valid: construct it with [`ScramVerifier::new`], [`ScramVerifier::parse`] or
/// [`ScramVerifier::from_password`].
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    /// PBKDF2 iteration count, `1..=MAX_SCRAM_ITERATIONS`.
    iterations: u32,
    /// Salt, `1..=MAX_SCRAM_SALT_LEN` bytes.
    salt: Vec<u8>,
    /// `H(HMAC(SaltedPassword, "Client Key"))`.
    stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`.
    server_key: [u8; 32],
}

impl ScramVerifier {
    /// Builds a verifier from its parts, checking the iteration count and salt bounds.
    pub fn new(
        iterations: u32,
        salt: Vec<u8>,
        stored_key: [u8; 32],
        server_key: [u8; 32],
    ) -> Result<Self, AuthError> {
        if iterations == 0 {
            return Err(AuthError::Config(
                "SCRAM iteration count must be at least 1",
            ));
        }
        if iterations > MAX_SCRAM_ITERATIONS {
            return Err(AuthError::Config("SCRAM iteration count is too large"));
        }
        if salt.is_empty() {
            return Err(AuthError::Config("SCRAM salt is empty"));
        }
        if salt.len() > MAX_SCRAM_SALT_LEN {
            return Err(AuthError::Config("SCRAM salt is too long"));
        }
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }

    /// Parses PostgreSQL's format,
    /// `SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>`.
    ///
    /// Strict: decimal iterations without sign or leading zeros, canonical padded base64, keys of
    /// exactly 32 bytes, nothing extra. Never panics, whatever the input.
    pub fn parse(s: &str) -> Result<Self, AuthError> {
        if s.len() > MAX_VERIFIER_LEN {
            return Err(AuthError::Config("SCRAM verifier is too long"));
        }
        let rest = s
            .strip_prefix(SCRAM_PREFIX)
            .ok_or(AuthError::Config("not a SCRAM-SHA-256 verifier"))?;
        let (params, keys) = rest.split_once('$').ok_or(AuthError::Config(
            "SCRAM verifier is missing the '$' before the keys",
        ))?;
        let (iterations, salt) = params.split_once(':').ok_or(AuthError::Config(
            "SCRAM verifier is missing the ':' between iterations and salt",
        ))?;
        let (stored_key, server_key) = keys.split_once(':').ok_or(AuthError::Config(
            "SCRAM verifier is missing the ':' between StoredKey and ServerKey",
        ))?;

        let iterations = parse_iterations(iterations)?;
        // 4 base64 characters per 3 bytes, rounded up.
        let max_salt_text = MAX_SCRAM_SALT_LEN.div_ceil(3) * 4;
        let salt = b64_decode(salt, max_salt_text)
            .ok_or(AuthError::Config("SCRAM salt is not valid base64"))?;
        // Any stray '$' or ':' ends up in a key and fails the strict base64 decoding here.
        let stored_key = b64_decode_32(stored_key).ok_or(AuthError::Config(
            "SCRAM StoredKey is not 32 bytes of valid base64",
        ))?;
        let server_key = b64_decode_32(server_key).ok_or(AuthError::Config(
            "SCRAM ServerKey is not 32 bytes of valid base64",
        ))?;
        ScramVerifier::new(iterations, salt, stored_key, server_key)
    }

    /// Builds a verifier for a plain password with a fresh random 16-byte salt and 4096
    /// iterations, exactly as PostgreSQL would store it (including SASLprep of the password,
    /// which clients also apply, via postgres-protocol).
    ///
    /// Costs a few milliseconds of PBKDF2: do it once per configuration load, not per login
    /// ([`StoredSecret`] caches it).
    pub fn from_password(password: &str) -> Self {
        let encoded = postgres_protocol::password::scram_sha_256(password.as_bytes());
        // postgres-protocol always produces a well-formed verifier; should that ever change,
        // fall back to our own derivation (same salt size and iterations, minus SASLprep) rather
        // than panic.
        ScramVerifier::parse(&encoded).unwrap_or_else(|_| {
            let mut salt = [0u8; MOCK_SALT_LEN];
            rand::fill(&mut salt[..]);
            Self::derive_unprepared(password.as_bytes(), &salt, DEFAULT_ITERATIONS)
        })
    }

    /// Derives a verifier from password bytes that are already SASLprep-normalised (true of any
    /// ASCII password), a salt and an iteration count. Inputs are assumed in range.
    pub(crate) fn derive_unprepared(password: &[u8], salt: &[u8], iterations: u32) -> Self {
        let salted = pbkdf2_block(password, salt, iterations.max(1));
        let client_key = hmac_sha256(&salted, &[b"Client Key"]);
        ScramVerifier {
            iterations: iterations.max(1),
            salt: salt.to_vec(),
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, &[b"Server Key"]),
        }
    }

    /// A verifier for a user that does not exist, so that the exchange with an unknown user
    /// looks like one with a real user (PostgreSQL's "mock authentication").
    ///
    /// The salt is derived from `mock_secret` and the user name so it is stable across attempts
    /// (a salt that changed every time would give the game away) but unpredictable without the
    /// secret. The keys are never matched: the exchange is doomed anyway.
    pub(crate) fn mock(user: &str, mock_secret: &[u8]) -> Self {
        let digest = hmac_sha256(mock_secret, &[b"causeway mock salt\0", user.as_bytes()]);
        ScramVerifier {
            iterations: DEFAULT_ITERATIONS,
            salt: digest[..MOCK_SALT_LEN].to_vec(),
            stored_key: hmac_sha256(mock_secret, &[b"causeway mock stored key"]),
            server_key: hmac_sha256(mock_secret, &[b"causeway mock server key"]),
        }
    }

    /// Serialises to PostgreSQL's format; [`ScramVerifier::parse`] reads it back unchanged.
    ///
    /// Not a `Display` impl on purpose: formatting a verifier into a log line by accident should
    /// not be possible.
    pub fn to_postgres_string(&self) -> String {
        format!(
            "{SCRAM_PREFIX}{}:{}${}:{}",
            self.iterations,
            b64_encode(&self.salt),
            b64_encode(&self.stored_key),
            b64_encode(&self.server_key)
        )
    }

    /// PBKDF2 iteration count.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// Salt bytes (sent to clients in the clear, in the server-first-message).
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    /// StoredKey, `H(ClientKey)`.
    pub fn stored_key(&self) -> &[u8; 32] {
        &self.stored_key
    }

    /// ServerKey, used to sign the server-final-message.
    pub fn server_key(&self) -> &[u8; 32] {
        &self.server_key
    }
}

impl FromStr for ScramVerifier {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ScramVerifier::parse(s)
    }
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .field("salt_len", &self.salt.len())
            .field("keys", &"<redacted>")
            .finish()
    }
}

/// Parses the iteration field: 1 to 10 ASCII digits, no sign, no leading zero, in range.
fn parse_iterations(s: &str) -> Result<u32, AuthError> {
    let well_formed = !s.is_empty()
        && s.len() <= 10
        && s.bytes().all(|b| b.is_ascii_digit())
        && !(s.len() > 1 && s.starts_with('0'));
    if !well_formed {
        return Err(AuthError::Config(
            "SCRAM iteration count is not a decimal number",
        ));
    }
    let n: u64 = s
        .parse()
        .map_err(|_| AuthError::Config("SCRAM iteration count is not a decimal number"))?;
    match u32::try_from(n) {
        Ok(0) => Err(AuthError::Config(
            "SCRAM iteration count must be at least 1",
        )),
        Ok(n) if n <= MAX_SCRAM_ITERATIONS => Ok(n),
        _ => Err(AuthError::Config("SCRAM iteration count is too large")),
    }
}

/// What the configuration holds for one user.
///
/// Parsed from the config string with [`StoredSecret::parse`] (or `str::parse`):
/// - `SCRAM-SHA-256$...`: a SCRAM verifier; malformed is an error. Serves SCRAM only.
/// - `md5` followed by 32 hex digits: an md5 hash of password + user name, as PostgreSQL stores
///   it. Serves md5 only.
/// - anything else (non-empty, no NUL byte): a plain password. Serves both; its SCRAM verifier
///   is built on first use and cached.
///
/// `Debug` and `Display` say which kind it is, never its contents.
#[derive(Clone)]
pub struct StoredSecret {
    /// The parsed secret.
    kind: Kind,
}

/// The three kinds of stored secret.
#[derive(Clone)]
enum Kind {
    /// A plain password and its lazily built SCRAM verifier.
    Plain {
        /// The password as written in the configuration.
        password: String,
        /// Built on first SCRAM login (PBKDF2 is slow), then reused for the life of this
        /// secret, i.e. of the loaded configuration.
        verifier: OnceLock<ScramVerifier>,
    },
    /// A SCRAM-SHA-256 verifier.
    Scram(ScramVerifier),
    /// `md5(password + user)` as 32 lowercase hex digits.
    Md5([u8; 32]),
}

impl StoredSecret {
    /// Parses a secret from its configuration string (see the type's docs for the forms).
    ///
    /// Errors: a malformed `SCRAM-SHA-256$` verifier, an empty password, a NUL byte (a password
    /// message is a C string, so such a password could never be typed by a client).
    pub fn parse(s: &str) -> Result<Self, AuthError> {
        if s.starts_with(SCRAM_PREFIX) {
            return Ok(StoredSecret {
                kind: Kind::Scram(ScramVerifier::parse(s)?),
            });
        }
        if let Some(hash) = parse_md5_hash(s) {
            return Ok(StoredSecret {
                kind: Kind::Md5(hash),
            });
        }
        if s.is_empty() {
            return Err(AuthError::Config("password is empty"));
        }
        if s.contains('\0') {
            return Err(AuthError::Config("password contains a NUL byte"));
        }
        Ok(StoredSecret {
            kind: Kind::Plain {
                password: s.to_owned(),
                verifier: OnceLock::new(),
            },
        })
    }

    /// A secret holding an existing SCRAM verifier.
    pub fn from_verifier(verifier: ScramVerifier) -> Self {
        StoredSecret {
            kind: Kind::Scram(verifier),
        }
    }

    /// The plain password, if that is what the configuration holds.
    pub fn plain(&self) -> Option<&str> {
        match &self.kind {
            Kind::Plain { password, .. } => Some(password),
            _ => None,
        }
    }

    /// The stored `md5(password + user)` hash, if that is what this secret is: it is also what
    /// a server's md5 exchange needs, so it serves md5 pass-through.
    pub fn md5_hash(&self) -> Option<[u8; 32]> {
        match &self.kind {
            Kind::Md5(hash) => Some(*hash),
            _ => None,
        }
    }

    /// The SCRAM verifier, if that is what this secret is (not one built from a plain
    /// password): a server holding the same one accepts pass-through logins.
    pub fn stored_verifier(&self) -> Option<&ScramVerifier> {
        match &self.kind {
            Kind::Scram(v) => Some(v),
            _ => None,
        }
    }

    /// True if this secret can check an md5 response: a plain password or an md5 hash. (A SCRAM
    /// verifier cannot: md5 needs `md5(password + user)`, which it does not contain.)
    ///
    /// An md5 hash is tied to the user name it was computed with; that cannot be checked here.
    pub fn supports_md5(&self) -> bool {
        matches!(self.kind, Kind::Plain { .. } | Kind::Md5(_))
    }

    /// True if this secret can serve SCRAM-SHA-256: a plain password or a SCRAM verifier.
    pub fn supports_scram(&self) -> bool {
        matches!(self.kind, Kind::Plain { .. } | Kind::Scram(_))
    }

    /// The SCRAM verifier for this secret, or `None` for an md5 hash (which cannot serve SCRAM).
    ///
    /// For a plain password it is built on the first call (a few ms of PBKDF2 with a random
    /// salt) and cached, so later calls, and clones made after the first call, are cheap.
    pub fn try_scram_verifier(&self) -> Option<&ScramVerifier> {
        match &self.kind {
            Kind::Plain { password, verifier } => {
                Some(verifier.get_or_init(|| ScramVerifier::from_password(password)))
            }
            Kind::Scram(v) => Some(v),
            Kind::Md5(_) => None,
        }
    }

    /// The SCRAM verifier for this secret (a clone, cheap once built).
    ///
    /// For an md5 hash, which holds no SCRAM verifier, this returns a random verifier no
    /// password matches, so SCRAM logins fail the way a wrong password does (PostgreSQL behaves
    /// the same). Use [`StoredSecret::supports_scram`] to reject such configurations at load
    /// time instead.
    pub fn scram_verifier(&self) -> ScramVerifier {
        match self.try_scram_verifier() {
            Some(v) => v.clone(),
            None => {
                let mut key = [0u8; 32];
                rand::fill(&mut key[..]);
                ScramVerifier::mock("", &key)
            }
        }
    }

    /// Builds the SCRAM verifier now if this is a plain password, so the first login does not
    /// pay for it. Call it while loading the configuration (off the async runtime's hot path).
    pub fn prepare(&self) {
        let _ = self.try_scram_verifier();
    }

    /// The 32 lowercase hex digits of `md5(password + user)` (the "inner" md5 of PostgreSQL's
    /// md5 method), or `None` for a SCRAM verifier.
    pub(crate) fn md5_inner_hex(&self, user: &str) -> Option<[u8; 32]> {
        match &self.kind {
            Kind::Plain { password, .. } => {
                Some(super::md5::md5_hex(&[password.as_bytes(), user.as_bytes()]))
            }
            Kind::Md5(hash) => Some(*hash),
            Kind::Scram(_) => None,
        }
    }

    /// A short name for the kind of secret, for messages and logs.
    fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Plain { .. } => "plain password",
            Kind::Scram(_) => "SCRAM-SHA-256 verifier",
            Kind::Md5(_) => "md5 hash",
        }
    }
}

/// Recognises PostgreSQL's md5 form: `md5` and exactly 32 hex digits. PostgreSQL only accepts
/// lowercase; uppercase is accepted here too (and normalised) so that a hash pasted in capitals
/// does not silently become a plain password.
fn parse_md5_hash(s: &str) -> Option<[u8; 32]> {
    let hex = s.strip_prefix("md5")?;
    let bytes: [u8; 32] = hex.as_bytes().try_into().ok()?;
    if !bytes.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    Some(bytes.map(|b| b.to_ascii_lowercase()))
}

impl FromStr for StoredSecret {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StoredSecret::parse(s)
    }
}

impl PartialEq for StoredSecret {
    /// Compares the secrets as configured (for detecting changes on reload); the cached
    /// verifier of a plain password is ignored since its salt is random.
    fn eq(&self, other: &Self) -> bool {
        match (&self.kind, &other.kind) {
            (Kind::Plain { password: a, .. }, Kind::Plain { password: b, .. }) => a == b,
            (Kind::Scram(a), Kind::Scram(b)) => a == b,
            (Kind::Md5(a), Kind::Md5(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for StoredSecret {}

impl fmt::Debug for StoredSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoredSecret({} <redacted>)", self.kind_name())
    }
}

impl fmt::Display for StoredSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (redacted)", self.kind_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::RFC7677_VERIFIER;

    /// RFC 7677 section 3: user "user", password "pencil".
    const RFC_SALT_B64: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";

    fn rfc_verifier() -> ScramVerifier {
        ScramVerifier::parse(RFC7677_VERIFIER).unwrap()
    }

    #[test]
    fn rfc7677_verifier_known_answer() {
        let salt = b64_decode(RFC_SALT_B64, 100).unwrap();
        let derived = ScramVerifier::derive_unprepared(b"pencil", &salt, 4096);
        assert_eq!(derived.to_postgres_string(), RFC7677_VERIFIER);
    }

    #[test]
    fn round_trip() {
        let v = rfc_verifier();
        let s = v.to_postgres_string();
        assert!(s.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"));
        let back = ScramVerifier::parse(&s).unwrap();
        assert_eq!(back, v);
        assert_eq!(back.to_postgres_string(), s);
        assert_eq!(s.parse::<ScramVerifier>().unwrap(), v);
    }

    #[test]
    fn parses_postgres_protocol_verifier() {
        let s = postgres_protocol::password::scram_sha_256(b"secret");
        let v = ScramVerifier::parse(&s).unwrap();
        assert_eq!(v.iterations(), 4096);
        assert_eq!(v.salt().len(), 16);
        assert_eq!(v.to_postgres_string(), s);
    }

    #[test]
    fn from_password_is_postgres_shaped() {
        let v = ScramVerifier::from_password("pencil");
        assert_eq!(v.iterations(), 4096);
        assert_eq!(v.salt().len(), 16);
        // Same password and salt derive the same keys as our own PBKDF2 (ASCII: SASLprep is the
        // identity).
        let again = ScramVerifier::derive_unprepared(b"pencil", v.salt(), 4096);
        assert_eq!(again, v);
    }

    #[test]
    fn rejects_malformed_verifiers() {
        let good = rfc_verifier().to_postgres_string();
        let (head, keys) = good.rsplit_once('$').unwrap();
        let (stored, server) = keys.split_once(':').unwrap();
        let bad = [
            String::new(),
            "SCRAM-SHA-256$".to_string(),
            "SCRAM-SHA-256$4096".to_string(),
            "SCRAM-SHA-256$4096:".to_string(),
            format!("SCRAM-SHA-256$4096:{RFC_SALT_B64}"),
            format!("SCRAM-SHA-256$4096:{RFC_SALT_B64}$"),
            format!("{head}${stored}"),
            format!("{head}${stored}:"),
            format!("{head}${stored}:{server}:"),
            format!("{head}${stored}:{server}$"),
            format!("{head}${stored}:{server}x"),
            format!("{head}${server}"),
            format!("{head}$!{}:{server}", &stored[1..]),
            format!("{head}${}:{server}", &stored[..40]),
            format!("SCRAM-SHA-256$0:{RFC_SALT_B64}${stored}:{server}"),
            format!("SCRAM-SHA-256$04096:{RFC_SALT_B64}${stored}:{server}"),
            format!("SCRAM-SHA-256$+4096:{RFC_SALT_B64}${stored}:{server}"),
            format!("SCRAM-SHA-256$-1:{RFC_SALT_B64}${stored}:{server}"),
            format!("SCRAM-SHA-256$4294967295:{RFC_SALT_B64}${stored}:{server}"),
            format!("SCRAM-SHA-256$99999999999999999999:{RFC_SALT_B64}${stored}:{server}"),
            format!("SCRAM-SHA-256$10000001:{RFC_SALT_B64}${stored}:{server}"),
            format!("SCRAM-SHA-256$4096:${stored}:{server}"),
            format!("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ${stored}:{server}"),
            format!(
                "SCRAM-SHA-256$4096:{}${stored}:{server}",
                "QUFB".repeat(100)
            ),
            format!(
                "SCRAM-SHA-256$4096:{RFC_SALT_B64}${stored}:{server}{}",
                "A".repeat(2000)
            ),
            format!("scram-sha-256$4096:{RFC_SALT_B64}${stored}:{server}"),
            format!("SCRAM-SHA-256$4096:{RFC_SALT_B64}${stored} :{server}"),
        ];
        for s in &bad {
            let err = ScramVerifier::parse(s).expect_err(s);
            assert!(matches!(err, AuthError::Config(_)), "{s}: {err:?}");
        }
        // The largest allowed count still parses.
        let max = format!("SCRAM-SHA-256$10000000:{RFC_SALT_B64}${stored}:{server}");
        assert_eq!(ScramVerifier::parse(&max).unwrap().iterations(), 10_000_000);
    }

    #[test]
    fn verifier_parser_never_panics_on_prefixes_and_mutations() {
        let good = rfc_verifier().to_postgres_string();
        for end in 0..=good.len() {
            let _ = ScramVerifier::parse(&good[..end]);
            let _ = StoredSecret::parse(&good[..end]);
        }
        let bytes = good.as_bytes();
        for i in 0..bytes.len() {
            for b in [b'$', b':', b'=', b'0', b'\0', 0xff] {
                let mut m = bytes.to_vec();
                m[i] = b;
                let s = String::from_utf8_lossy(&m);
                let _ = ScramVerifier::parse(&s);
            }
        }
    }

    #[test]
    fn stored_secret_kinds() {
        let plain = StoredSecret::parse("hunter2").unwrap();
        assert_eq!(plain.plain(), Some("hunter2"));
        assert!(plain.supports_md5() && plain.supports_scram());

        let scram = StoredSecret::parse(&rfc_verifier().to_postgres_string()).unwrap();
        assert_eq!(scram.plain(), None);
        assert!(!scram.supports_md5() && scram.supports_scram());
        assert_eq!(scram.scram_verifier(), rfc_verifier());

        let md5 = StoredSecret::parse("md5ABCDEF0123456789abcdef0123456789").unwrap();
        assert!(md5.supports_md5() && !md5.supports_scram());
        assert_eq!(
            &md5.md5_inner_hex("anyone").unwrap(),
            b"abcdef0123456789abcdef0123456789"
        );
        assert!(md5.try_scram_verifier().is_none());
        // The fallback verifier is usable but random.
        assert_ne!(md5.scram_verifier(), md5.scram_verifier());

        // Not quite md5 hashes: plain passwords.
        for s in [
            "md5",
            "md5abc",
            "md5ABCDEF0123456789abcdef012345678g",
            "MD5abcdef0123456789abcdef0123456789",
        ] {
            assert_eq!(StoredSecret::parse(s).unwrap().plain(), Some(s));
        }

        assert!(StoredSecret::parse("").is_err());
        assert!(StoredSecret::parse("a\0b").is_err());
        assert!(matches!(
            "SCRAM-SHA-256$garbage".parse::<StoredSecret>(),
            Err(AuthError::Config(_))
        ));
    }

    #[test]
    fn plain_verifier_is_cached() {
        let plain = StoredSecret::parse("pencil").unwrap();
        plain.prepare();
        let a = plain.scram_verifier();
        let b = plain.scram_verifier();
        assert_eq!(a, b, "same salt: built once");
        assert_eq!(
            plain.clone().scram_verifier(),
            a,
            "clones share the built verifier"
        );
    }

    #[test]
    fn secrets_are_redacted() {
        let verifier = rfc_verifier();
        let encoded = verifier.to_postgres_string();
        let (_, keys) = encoded.rsplit_once('$').unwrap();
        let (stored_b64, server_b64) = keys.split_once(':').unwrap();
        for secret in [
            StoredSecret::parse("hunter2").unwrap(),
            StoredSecret::parse(&encoded).unwrap(),
            StoredSecret::parse("md5abcdef0123456789abcdef0123456789").unwrap(),
        ] {
            for out in [
                format!("{secret:?}"),
                format!("{secret}"),
                format!("{secret:#?}"),
            ] {
                assert!(out.contains("redacted"), "{out}");
                for leak in [
                    "hunter2",
                    stored_b64,
                    server_b64,
                    RFC_SALT_B64,
                    "abcdef0123",
                ] {
                    assert!(!out.contains(leak), "{out} leaks {leak}");
                }
            }
        }
        let dbg = format!("{verifier:?}");
        assert!(dbg.contains("4096") && dbg.contains("redacted"));
        assert!(!dbg.contains(stored_b64) && !dbg.contains(server_b64));
        assert!(!dbg.contains(&format!("{:?}", verifier.stored_key())));
    }

    #[test]
    fn mock_verifier_is_stable_per_user() {
        let a = ScramVerifier::mock("alice", b"k");
        assert_eq!(a, ScramVerifier::mock("alice", b"k"));
        assert_ne!(a.salt(), ScramVerifier::mock("bob", b"k").salt());
        assert_ne!(a.salt(), ScramVerifier::mock("alice", b"other").salt());
    }

    #[test]
    fn new_checks_bounds() {
        assert!(ScramVerifier::new(0, vec![1], [0; 32], [0; 32]).is_err());
        assert!(ScramVerifier::new(1, vec![], [0; 32], [0; 32]).is_err());
        assert!(ScramVerifier::new(1, vec![0; 257], [0; 32], [0; 32]).is_err());
        assert!(ScramVerifier::new(u32::MAX, vec![1], [0; 32], [0; 32]).is_err());
        assert!(ScramVerifier::new(1, vec![0; 256], [0; 32], [0; 32]).is_ok());
    }
}
