//! Fuzz target: the SCRAM-SHA-256 server (`ScramServer`) on arbitrary client messages, and
//! the parsers of stored secrets (`ScramVerifier::parse`, `StoredSecret::parse`).
//!
//! Input layout: the client-first-message, a 0xFF byte, the client-final-message (0xFF never
//! occurs in UTF-8, so it cannot be part of a well-formed message); the whole input is also
//! parsed as a verifier string. The server uses RFC 7677's verifier and server nonce, so the
//! seed corpus holds a complete, valid exchange and the fuzzer mutates from there. Checked: no
//! panic; the exchange authenticates exactly when `client_final` succeeds; a finished or
//! failed exchange accepts nothing more; a verifier that parses prints back to the same text
//! (parsing is strict and canonical), and every stored secret can say what it supports.
#![no_main]

use causeway::auth::{ScramServer, ScramVerifier, StoredSecret, SCRAM_SHA_256};
use libfuzzer_sys::fuzz_target;

/// RFC 7677 section 3: the verifier of password "pencil".
const RFC7677_VERIFIER: &str = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\
    WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";

/// RFC 7677 section 3: the server's part of the nonce.
const RFC7677_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";

/// Runs one exchange: client-first, then (if that was accepted) client-final.
fn exchange(verifier: &ScramVerifier, first: &[u8], last: &[u8]) {
    let mut server = ScramServer::with_nonce_string(verifier.clone(), RFC7677_SERVER_NONCE)
        .expect("the RFC nonce is valid");
    let Ok(server_first) = server.client_first(SCRAM_SHA_256, first) else {
        assert!(!server.is_authenticated());
        // An exchange that failed stays failed.
        assert!(server.client_first(SCRAM_SHA_256, first).is_err());
        assert!(server.client_final(last).is_err());
        return;
    };
    let server_first = String::from_utf8(server_first).expect("server-first is text");
    assert!(server_first.starts_with("r=") && server_first.contains(RFC7677_SERVER_NONCE));
    let result = server.client_final(last);
    assert_eq!(server.is_authenticated(), result.is_ok());
    if let Ok(server_final) = &result {
        assert!(server_final.starts_with(b"v="));
    }
    // One exchange, one outcome: a second client-final is refused either way.
    assert!(server.client_final(last).is_err());
}

/// Parses `text` as a stored secret and a verifier.
fn secrets(text: &[u8]) {
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    if let Ok(v) = ScramVerifier::parse(text) {
        assert_eq!(v.to_postgres_string(), text);
        assert!(v.iterations() >= 1 && !v.salt().is_empty());
    }
    if let Ok(secret) = StoredSecret::parse(text) {
        // Only ask for the verifier when it is not built from a plain password: that would
        // run 4096 rounds of PBKDF2 per input and starve the fuzzer.
        if secret.plain().is_none() {
            let _ = secret.try_scram_verifier();
        }
        assert!(secret.supports_md5() || secret.supports_scram());
        let _ = (format!("{secret:?}"), secret.to_string());
    }
}

fuzz_target!(|data: &[u8]| {
    let verifier = ScramVerifier::parse(RFC7677_VERIFIER).expect("RFC verifier");
    let (first, last) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    exchange(&verifier, first, last);
    secrets(data);
});
