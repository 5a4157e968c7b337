//! Small cryptographic helpers shared by the SCRAM and md5 code: HMAC-SHA-256, SHA-256, strict
//! base64, and the one constant-time comparison every secret check goes through (so there is a
//! single routine to audit).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// HMAC-SHA-256 of the concatenation of `parts` under `key`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC is defined for keys of any length (long keys are hashed first), so this never fails.
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Standard base64 with padding, as PostgreSQL writes it.
pub(crate) fn b64_encode(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// Strict standard base64 decoding (padding required, no stray bits), refusing text longer than
/// `max_text_len` before decoding so an oversized attribute cannot make us allocate much.
pub(crate) fn b64_decode(text: &str, max_text_len: usize) -> Option<Vec<u8>> {
    if text.len() > max_text_len {
        return None;
    }
    STANDARD.decode(text).ok()
}

/// Decodes base64 that must hold exactly 32 bytes (SCRAM keys, proofs and signatures).
pub(crate) fn b64_decode_32(text: &str) -> Option<[u8; 32]> {
    // 32 bytes encode to exactly 44 characters with padding.
    if text.len() != 44 {
        return None;
    }
    let bytes = b64_decode(text, 44)?;
    bytes.try_into().ok()
}

/// Compares two byte strings in time that depends only on their lengths.
///
/// Used for every comparison involving secret-derived data (the SCRAM StoredKey check, the md5
/// response) so that response timing does not reveal how many leading bytes matched. Lengths
/// are not secret here (they are fixed by the algorithms), so an early return on a length
/// mismatch is fine.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold back into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// PBKDF2-HMAC-SHA-256 with a single 32-byte output block: `Hi()` from RFC 5802 (the
/// SaltedPassword of SCRAM).
pub(crate) fn pbkdf2_block(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut u = hmac_sha256(password, &[salt, &1u32.to_be_bytes()]);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac_sha256(password, &[&u]);
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_behaves_like_eq() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(!ct_eq(b"\x00bc", b"abc"));
    }

    #[test]
    fn b64_decode_is_strict() {
        assert_eq!(b64_decode("YQ==", 100).unwrap(), b"a");
        assert!(b64_decode("YQ", 100).is_none(), "padding required");
        assert!(b64_decode("YR==", 100).is_none(), "stray bits refused");
        assert!(b64_decode("Y Q==", 100).is_none());
        assert!(b64_decode("YQ==", 3).is_none(), "length cap");
        assert!(b64_decode_32(&"A".repeat(43)).is_none());
    }

    #[test]
    fn pbkdf2_known_answer() {
        // RFC 7914 section 11: PBKDF2-HMAC-SHA256("passwd", "salt", 1), first 32 bytes.
        let out = pbkdf2_block(b"passwd", b"salt", 1);
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc"
        );
    }

    #[test]
    fn hmac_sha256_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
