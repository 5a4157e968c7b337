//! Fuzz target: the client authentication state machine (`AuthExchange`), which parses the
//! bodies of a client's `p` messages: `SASLInitialResponse`, `SASLResponse` (SCRAM) and
//! `PasswordMessage` (md5), plus `verify_md5` on arbitrary responses.
//!
//! Input layout: byte 0 picks the method and stored secret (SCRAM verifier, md5 hash, plain
//! password with md5, unknown users, trust); then messages, each a big-endian u16 length and
//! that many bytes (a short last one takes what is left). Checked: no panic; whatever the
//! exchange sends encodes to an `Authentication` message that causeway's own server-side
//! reader (`protocol::backend::auth_request`) reads back with the same code; once an exchange
//! failed or finished it accepts nothing more; and `is_done` agrees with the steps.
#![no_main]

use bytes::BytesMut;
use causeway::auth::{verify_md5, AuthExchange, Method, ScramVerifier, Step, StoredSecret};
use causeway::protocol::backend::{auth_request, AuthRequest as Wire};
use causeway::protocol::{decode_frame, DEFAULT_MAX_MESSAGE_LEN};
use libfuzzer_sys::fuzz_target;

/// RFC 7677 section 3: the verifier of password "pencil".
const RFC7677_VERIFIER: &str = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\
    WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";

/// `md5` + hex(md5("pencil" + "user")), as PostgreSQL stores it.
const MD5_HASH: &str = "md520c46e3762c864548e296b33c3406aa9";

/// The user name the exchanges run for.
const USER: &str = "user";

/// Starts the exchange the selector byte asks for. Plain passwords are only used with md5:
/// SCRAM would derive a verifier (4096 rounds of PBKDF2) on every input.
fn start(selector: u8) -> (AuthExchange, Step, StoredSecret) {
    let scram = StoredSecret::from_verifier(ScramVerifier::parse(RFC7677_VERIFIER).unwrap());
    let md5 = StoredSecret::parse(MD5_HASH).unwrap();
    let plain = StoredSecret::parse("pencil").unwrap();
    let (exchange, step, secret) = match selector % 7 {
        0 => with(Method::ScramSha256, scram),
        1 => with(Method::Md5, md5),
        2 => with(Method::Md5, plain),
        // md5 asked for, but only a SCRAM verifier is stored: SCRAM runs, as in PostgreSQL.
        3 => with(Method::Md5, scram),
        // SCRAM asked for, but only an md5 hash is stored: a mock exchange.
        4 => with(Method::ScramSha256, md5),
        5 => {
            let method = if selector & 0x80 != 0 {
                Method::Md5
            } else {
                Method::ScramSha256
            };
            let (e, s) = AuthExchange::new_unknown_user(method, "nobody", b"mock secret");
            (e, s, md5)
        }
        _ => with(Method::Trust, plain),
    };
    (exchange, step, secret)
}

/// `AuthExchange::new` for `USER`, keeping the secret.
fn with(method: Method, secret: StoredSecret) -> (AuthExchange, Step, StoredSecret) {
    let (exchange, step) = AuthExchange::new(method, USER, &secret);
    (exchange, step, secret)
}

/// Encodes `step` and reads every message back with the client-side reader.
fn check_encoding(step: &Step) {
    let mut wire = BytesMut::new();
    step.encode(&mut wire);
    let mut codes = Vec::new();
    while let Some(frame) = decode_frame(&mut wire, DEFAULT_MAX_MESSAGE_LEN).unwrap() {
        assert_eq!(frame.tag(), b'R');
        let request = auth_request(frame.body()).expect("our own request must read back");
        codes.push(match request {
            Wire::Ok => 0,
            Wire::Md5 { .. } => 5,
            Wire::Sasl { .. } => 10,
            Wire::SaslContinue(_) => 11,
            Wire::SaslFinal(_) => 12,
            other => panic!("unexpected request {other:?}"),
        });
    }
    assert!(wire.is_empty(), "trailing bytes after the requests");
    match step {
        Step::Send(request) => assert_eq!(codes, [request.code()]),
        Step::Done {
            sasl_final: Some(_),
        } => assert_eq!(codes, [12, 0]),
        Step::Done { sasl_final: None } => assert_eq!(codes, [0]),
    }
}

/// Splits the input into length-prefixed messages.
fn messages(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [hi, lo, rest @ ..] = data {
        let n = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
        out.push(&rest[..n]);
        data = &rest[n..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (mut exchange, step, secret) = start(selector);
    check_encoding(&step);
    let mut ended = step.is_done();
    for body in messages(rest) {
        let _ = verify_md5(&secret, USER, [1, 2, 3, 4], body);
        let result = exchange.receive(body);
        if ended {
            // Finished or failed: nothing more is accepted.
            assert!(result.is_err(), "a message was accepted after the end");
            continue;
        }
        match result {
            Ok(next) => {
                check_encoding(&next);
                assert_eq!(exchange.is_done(), next.is_done());
                ended = next.is_done();
            }
            Err(e) => {
                assert!(!exchange.is_done());
                let _ = (e.to_string(), e.sqlstate());
                ended = true;
            }
        }
    }
});
