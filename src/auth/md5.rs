//! PostgreSQL's legacy md5 password method, server side.
//!
//! The server sends `AuthenticationMD5Password` with a random 4-byte salt; the client answers
//! with a `PasswordMessage` holding `"md5" + hex(md5(hex(md5(password + user)) + salt))`. The
//! inner `hex(md5(password + user))` is exactly what PostgreSQL stores as `md5...`, so either a
//! plain password or such a hash can check the response. md5 is weak (the stored hash is a
//! password equivalent); it is here for old clients only, SCRAM is the default.

use ::md5::{Digest, Md5};

use super::crypto::ct_eq;
use super::secret::StoredSecret;

/// A fresh random salt for `AuthenticationMD5Password`, from the thread-local CSPRNG. Use a new
/// one for every attempt: a reused salt lets a recorded response be replayed.
pub fn md5_salt() -> [u8; 4] {
    let mut salt = [0u8; 4];
    rand::fill(&mut salt[..]);
    salt
}

/// Checks a client's md5 response for `user` against `stored` and the `salt` that was sent.
///
/// `client_response` is the content of the `PasswordMessage` without its terminating NUL,
/// i.e. `md5` followed by 32 lowercase hex digits. Returns false for a wrong response and for a
/// secret that cannot do md5 (a SCRAM verifier). The comparison is constant-time.
pub fn verify_md5(
    stored: &StoredSecret,
    user: &str,
    salt: [u8; 4],
    client_response: &[u8],
) -> bool {
    match expected_response(stored, user, salt) {
        Some(expected) => ct_eq(&expected, client_response),
        None => false,
    }
}

/// The response a client that knows the password would send, or `None` if `stored` cannot
/// serve md5.
pub(crate) fn expected_response(
    stored: &StoredSecret,
    user: &str,
    salt: [u8; 4],
) -> Option<[u8; 35]> {
    let inner = stored.md5_inner_hex(user)?;
    Some(salted_response(&inner, salt))
}

/// `"md5" + hex(md5(inner_hex + salt))`.
pub(crate) fn salted_response(inner_hex: &[u8; 32], salt: [u8; 4]) -> [u8; 35] {
    let outer = md5_hex(&[inner_hex, &salt]);
    let mut out = [0u8; 35];
    out[..3].copy_from_slice(b"md5");
    out[3..].copy_from_slice(&outer);
    out
}

/// Lowercase hex of the md5 of the concatenated `parts`, as 32 ASCII bytes.
pub(crate) fn md5_hex(parts: &[&[u8]]) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    let digest: [u8; 16] = hasher.finalize().into();
    let mut out = [0u8; 32];
    for (i, b) in digest.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0x0f)];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The libpq formula, computed independently with the md-5 crate and `format!`.
    fn libpq_response(password: &str, user: &str, salt: [u8; 4]) -> String {
        let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let inner = hex(&Md5::digest(format!("{password}{user}").as_bytes()));
        let mut outer_input = inner.into_bytes();
        outer_input.extend_from_slice(&salt);
        format!("md5{}", hex(&Md5::digest(&outer_input)))
    }

    #[test]
    fn known_value() {
        // md5("") = d41d8cd98f00b204e9800998ecf8427e
        assert_eq!(&md5_hex(&[b""]), b"d41d8cd98f00b204e9800998ecf8427e");
        // postgres-protocol's `md5("pencil", "user")`, the value `pg_authid` would hold.
        let stored = postgres_protocol::password::md5(b"pencil", "user");
        assert_eq!(stored.len(), 35);
        assert_eq!(&md5_hex(&[b"pencil", b"user"])[..], &stored.as_bytes()[3..]);
        assert_eq!(stored, "md520c46e3762c864548e296b33c3406aa9");
    }

    #[test]
    fn fixed_response() {
        // Password "pencil", user "user", salt 01 02 03 04: the test's own rendition of the
        // libpq formula, our implementation and a value computed outside Rust must all agree.
        let expected = libpq_response("pencil", "user", [1, 2, 3, 4]);
        let secret = StoredSecret::parse("pencil").unwrap();
        assert!(verify_md5(
            &secret,
            "user",
            [1, 2, 3, 4],
            expected.as_bytes()
        ));
        assert_eq!(
            &expected_response(&secret, "user", [1, 2, 3, 4]).unwrap()[..],
            expected.as_bytes()
        );
        assert_eq!(expected, FIXED_PENCIL_USER_1234);
    }

    /// `"md5" + hex(md5(hex(md5("penciluser")) + [1, 2, 3, 4]))`, computed with Python's hashlib;
    /// `hex(md5("penciluser"))` is `20c46e3762c864548e296b33c3406aa9`.
    const FIXED_PENCIL_USER_1234: &str = "md54376eb6913b38f9aaff38dc7cf19ca76";

    #[test]
    fn plain_and_hash_agree_with_libpq() {
        for (password, user) in [("pencil", "user"), ("s3cr\u{e9}t", "\u{fc}ser"), ("x", "")] {
            let salt = md5_salt();
            let response = libpq_response(password, user, salt);
            let plain = StoredSecret::parse(password).unwrap();
            let hashed =
                StoredSecret::parse(&postgres_protocol::password::md5(password.as_bytes(), user))
                    .unwrap();
            for secret in [&plain, &hashed] {
                assert!(verify_md5(secret, user, salt, response.as_bytes()));
                // Wrong salt, wrong user, truncated, with NUL, uppercase: all refused.
                let other_salt = [salt[0] ^ 1, salt[1], salt[2], salt[3]];
                assert!(!verify_md5(secret, user, other_salt, response.as_bytes()));
                assert!(!verify_md5(secret, user, salt, &response.as_bytes()[..34]));
                assert!(!verify_md5(
                    secret,
                    user,
                    salt,
                    format!("{response}\0").as_bytes()
                ));
                assert!(!verify_md5(
                    secret,
                    user,
                    salt,
                    response.to_uppercase().as_bytes()
                ));
                assert!(!verify_md5(secret, user, salt, b""));
            }
            // For a plain password the user name is part of the hash; a stored hash has its user
            // name baked in, so only the plain secret can notice a different user.
            assert!(!verify_md5(&plain, "other", salt, response.as_bytes()));
            let wrong = libpq_response("wrong", user, salt);
            assert!(!verify_md5(&plain, user, salt, wrong.as_bytes()));
        }
    }

    #[test]
    fn scram_verifier_cannot_do_md5() {
        let secret =
            StoredSecret::parse(&postgres_protocol::password::scram_sha_256(b"pencil")).unwrap();
        let response = libpq_response("pencil", "user", [1, 2, 3, 4]);
        assert!(!verify_md5(
            &secret,
            "user",
            [1, 2, 3, 4],
            response.as_bytes()
        ));
    }

    #[test]
    fn salts_differ() {
        // 2^-32 chance of a false failure per pair; three draws make a fluke negligible.
        let a = md5_salt();
        assert!(a != md5_salt() || a != md5_salt());
    }
}
