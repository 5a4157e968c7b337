//! End-to-end tests of the authentication layer: real client implementations (postgres-protocol's
//! SCRAM client, the libpq md5 formula) against [`AuthExchange`] over encoded wire messages, and
//! robustness loops that feed truncated, mutated and random input to every state.

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use rand::RngExt;

use super::*;

/// The verifier PostgreSQL would store for RFC 7677's example (password "pencil", salt
/// `W22ZaJ0SNY7soEsUEjb6gQ==`, 4096 iterations). Computed independently with Python's hashlib
/// (`pbkdf2_hmac`, `hmac`); `secret::tests::rfc7677_verifier_known_answer` checks our derivation
/// against it. Parsing it is much cheaper than deriving it in a debug build.
pub(crate) const RFC7677_VERIFIER: &str = "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$\
    WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=";

/// Decodes one encoded 'R' message into (code, payload), checking the framing.
fn decode_request(wire: &[u8]) -> (i32, Vec<u8>) {
    assert_eq!(wire[0], b'R');
    let len = i32::from_be_bytes(wire[1..5].try_into().unwrap()) as usize;
    assert_eq!(len + 1, wire.len(), "exactly one message");
    let code = i32::from_be_bytes(wire[5..9].try_into().unwrap());
    (code, wire[9..].to_vec())
}

/// Encodes a step and decodes the single request it sends.
fn sent(step: &Step) -> (i32, Vec<u8>) {
    let mut buf = BytesMut::new();
    step.encode(&mut buf);
    decode_request(&buf)
}

/// Body of a `SASLInitialResponse`.
fn sasl_initial(mechanism: &str, data: Option<&[u8]>) -> Vec<u8> {
    let mut body = mechanism.as_bytes().to_vec();
    body.push(0);
    match data {
        Some(data) => {
            body.extend_from_slice(&(data.len() as i32).to_be_bytes());
            body.extend_from_slice(data);
        }
        None => body.extend_from_slice(&(-1i32).to_be_bytes()),
    }
    body
}

/// Body of a `PasswordMessage`.
fn password_message(password: &[u8]) -> Vec<u8> {
    let mut body = password.to_vec();
    body.push(0);
    body
}

/// Runs a SCRAM login with postgres-protocol's client, the way tokio-postgres does, checking
/// every message the exchange produces. Returns the exchange's error, if any.
fn scram_login(
    exchange: &mut AuthExchange,
    first: Step,
    password: &[u8],
    cb: ChannelBinding,
) -> Result<(), AuthError> {
    let (code, payload) = sent(&first);
    assert_eq!(code, 10);
    assert_eq!(payload, b"SCRAM-SHA-256\0\0");

    let mut client = ScramSha256::new(password, cb);
    let step = exchange.receive(&sasl_initial(SCRAM_SHA_256, Some(client.message())))?;
    let (code, server_first) = sent(&step);
    assert_eq!(code, 11);
    client
        .update(&server_first)
        .expect("client accepts server-first");

    let step = exchange.receive(client.message())?;
    let Step::Done {
        sasl_final: Some(server_final),
    } = &step
    else {
        panic!("expected Done with a server-final-message, got {step:?}");
    };
    // The client checks the server signature: proof that the proxy holds the right verifier.
    client
        .finish(server_final)
        .expect("client verifies the server signature");
    let mut wire = BytesMut::new();
    step.encode(&mut wire);
    let (final_msg, ok) = wire.split_at(wire.len() - 9);
    assert_eq!(decode_request(final_msg), (12, server_final.clone()));
    assert_eq!(decode_request(ok), (0, vec![]));
    assert!(exchange.is_done());
    Ok(())
}

fn scram_secrets(password: &str) -> Vec<(&'static str, StoredSecret)> {
    vec![
        ("plain", StoredSecret::parse(password).unwrap()),
        (
            "verifier string",
            StoredSecret::parse(&postgres_protocol::password::scram_sha_256(
                password.as_bytes(),
            ))
            .unwrap(),
        ),
    ]
}

#[test]
fn scram_with_postgres_protocol_client() {
    for (what, secret) in scram_secrets("correct horse") {
        for method in [Method::ScramSha256, Method::Md5] {
            if method == Method::Md5 && secret.supports_md5() {
                continue; // that one does md5, tested below
            }
            // Right password, both gs2 flags the client can send without TLS.
            for cb in [ChannelBinding::unsupported(), ChannelBinding::unrequested()] {
                let (mut ex, first) = AuthExchange::new(method, "alice", &secret);
                scram_login(&mut ex, first, b"correct horse", cb)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                // Nothing further is accepted.
                assert!(ex.receive(b"x").unwrap_err().is_protocol_violation());
            }
            // Wrong password.
            let (mut ex, first) = AuthExchange::new(method, "alice", &secret);
            let err = scram_login(
                &mut ex,
                first,
                b"wrong horse",
                ChannelBinding::unsupported(),
            )
            .unwrap_err();
            assert!(err.is_invalid_password(), "{what}: {err:?}");
            assert_eq!(err.sqlstate(), "28P01");
            assert!(!ex.is_done());
            assert!(ex.receive(b"x").unwrap_err().is_protocol_violation());
        }
    }
}

/// Copied from a real PostgreSQL 15.18 (`SELECT rolpassword FROM pg_authid`) after
/// `CREATE ROLE alice LOGIN PASSWORD 'pencil'` with `password_encryption = 'scram-sha-256'`.
const PG15_ALICE_SCRAM: &str = "SCRAM-SHA-256$4096:M7Nw/ojwRFmCEVYeF4il0w==$\
    1Rtn+k1lm+neabVWxYT/5j8uNbSdwyBwlk48MStGpQo=:9RNKAuQrI6DgZZAA/jAhs+N3P15VRVtFiDL7MXIqY/o=";

/// Same server, `CREATE ROLE bob LOGIN PASSWORD 'pencil'` with `password_encryption = 'md5'`.
const PG15_BOB_MD5: &str = "md5e4f70fb0b8f2745aa7a69557c80cbd0c";

#[test]
fn secrets_from_a_real_postgres() {
    let verifier = ScramVerifier::parse(PG15_ALICE_SCRAM).unwrap();
    assert_eq!(verifier.to_postgres_string(), PG15_ALICE_SCRAM);
    assert_eq!(
        ScramVerifier::derive_unprepared(b"pencil", verifier.salt(), 4096),
        verifier
    );
    let secret = StoredSecret::parse(PG15_ALICE_SCRAM).unwrap();
    let (mut ex, first) = AuthExchange::new(Method::ScramSha256, "alice", &secret);
    scram_login(&mut ex, first, b"pencil", ChannelBinding::unsupported()).unwrap();
    let (mut ex, first) = AuthExchange::new(Method::ScramSha256, "alice", &secret);
    let err = scram_login(&mut ex, first, b"Pencil", ChannelBinding::unsupported()).unwrap_err();
    assert!(err.is_invalid_password());

    assert_eq!(
        postgres_protocol::password::md5(b"pencil", "bob"),
        PG15_BOB_MD5
    );
    let secret = StoredSecret::parse(PG15_BOB_MD5).unwrap();
    let salt = [0xde, 0xad, 0xbe, 0xef];
    let response = md5::salted_response(b"e4f70fb0b8f2745aa7a69557c80cbd0c", salt);
    assert!(verify_md5(&secret, "bob", salt, &response));
    assert!(!verify_md5(&secret, "bob", [0; 4], &response));
}

#[test]
fn scram_direct_with_server_api() {
    let verifier =
        ScramVerifier::parse(&postgres_protocol::password::scram_sha_256(b"pw")).unwrap();
    let mut server = ScramServer::with_random_nonce(verifier);
    let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
    let first = server
        .client_first(SCRAM_SHA_256, client.message())
        .unwrap();
    client.update(&first).unwrap();
    let fin = server.client_final(client.message()).unwrap();
    client.finish(&fin).unwrap();
    assert!(server.is_authenticated());
}

#[test]
fn scram_applies_saslprep_like_postgres() {
    // U+00A0 (no-break space) is mapped to U+0020 by SASLprep, on both sides.
    let secret = StoredSecret::parse("pass\u{a0}word").unwrap();
    for typed in ["pass\u{a0}word", "pass word"] {
        let (mut ex, first) = AuthExchange::new(Method::ScramSha256, "u", &secret);
        scram_login(
            &mut ex,
            first,
            typed.as_bytes(),
            ChannelBinding::unsupported(),
        )
        .unwrap_or_else(|e| panic!("{typed:?}: {e}"));
    }
}

#[test]
fn scram_channel_binding_is_refused_clearly() {
    let secret = StoredSecret::parse("pw").unwrap();
    let (mut ex, _) = AuthExchange::new(Method::ScramSha256, "u", &secret);
    let client = ScramSha256::new(b"pw", ChannelBinding::tls_server_end_point(vec![1, 2, 3]));
    let err = ex
        .receive(&sasl_initial(SCRAM_SHA_256, Some(client.message())))
        .unwrap_err();
    assert!(err.is_protocol_violation());
    assert_eq!(err.sqlstate(), "08P01");
    assert!(err.to_string().contains("channel binding"), "{err}");

    let (mut ex, _) = AuthExchange::new(Method::ScramSha256, "u", &secret);
    let err = ex
        .receive(&sasl_initial("SCRAM-SHA-256-PLUS", Some(client.message())))
        .unwrap_err();
    assert!(err.is_protocol_violation());
}

#[test]
fn scram_without_initial_response() {
    // SASLInitialResponse with length -1: the client-first comes in the next SASLResponse.
    let secret = StoredSecret::parse("pw").unwrap();
    let (mut ex, _) = AuthExchange::new(Method::ScramSha256, "u", &secret);
    let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
    let step = ex.receive(&sasl_initial(SCRAM_SHA_256, None)).unwrap();
    assert_eq!(sent(&step), (11, vec![]));
    let (_, first) = sent(&ex.receive(client.message()).unwrap());
    client.update(&first).unwrap();
    let Step::Done {
        sasl_final: Some(fin),
    } = ex.receive(client.message()).unwrap()
    else {
        panic!("expected Done");
    };
    client.finish(&fin).unwrap();

    let (mut ex, _) = AuthExchange::new(Method::ScramSha256, "u", &secret);
    assert!(ex.receive(&sasl_initial("PLAIN", None)).is_err());
}

#[test]
fn md5_through_the_exchange() {
    use ::md5::{Digest, Md5};
    let libpq = |password: &str, user: &str, salt: &[u8]| {
        let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let inner = hex(&Md5::digest(format!("{password}{user}").as_bytes()));
        format!(
            "md5{}",
            hex(&Md5::digest([inner.as_bytes(), salt].concat()))
        )
    };
    let secrets = [
        StoredSecret::parse("s3cret").unwrap(),
        StoredSecret::parse(&postgres_protocol::password::md5(b"s3cret", "bob")).unwrap(),
    ];
    for secret in &secrets {
        let (mut ex, first) = AuthExchange::new(Method::Md5, "bob", secret);
        let (code, salt) = sent(&first);
        assert_eq!(code, 5);
        assert_eq!(salt.len(), 4);
        let step = ex
            .receive(&password_message(libpq("s3cret", "bob", &salt).as_bytes()))
            .unwrap();
        assert_eq!(step, Step::Done { sasl_final: None });
        assert_eq!(sent(&step), (0, vec![]));
        assert!(ex.is_done());

        for wrong in [
            password_message(libpq("wrong", "bob", &salt).as_bytes()),
            password_message(libpq("s3cret", "alice", &salt).as_bytes()),
            password_message(b""),
            password_message(b"s3cret"),
            // Replaying the first exchange's correct answer: a fresh salt (equal to the old one
            // with probability 2^-32) makes it wrong.
            password_message(libpq("s3cret", "bob", &salt).as_bytes()),
        ] {
            let (mut ex, _) = AuthExchange::new(Method::Md5, "bob", secret);
            let err = ex.receive(&wrong).unwrap_err();
            assert!(err.is_invalid_password(), "{err:?}");
        }
        let (mut ex, _) = AuthExchange::new(Method::Md5, "bob", secret);
        assert!(ex
            .receive(b"no terminator")
            .unwrap_err()
            .is_protocol_violation());
    }
}

#[test]
fn md5_method_with_scram_verifier_uses_scram() {
    let secret = StoredSecret::parse(&postgres_protocol::password::scram_sha_256(b"pw")).unwrap();
    let (mut ex, first) = AuthExchange::new(Method::Md5, "u", &secret);
    scram_login(&mut ex, first, b"pw", ChannelBinding::unsupported()).unwrap();
}

#[test]
fn scram_method_with_md5_hash_fails_like_a_wrong_password() {
    let secret = StoredSecret::parse(&postgres_protocol::password::md5(b"pw", "u")).unwrap();
    let (mut ex, first) = AuthExchange::new(Method::ScramSha256, "u", &secret);
    let err = scram_login(&mut ex, first, b"pw", ChannelBinding::unsupported()).unwrap_err();
    assert!(err.is_invalid_password());
}

#[test]
fn trust() {
    let secret = StoredSecret::parse("unused").unwrap();
    let (mut ex, first) = AuthExchange::new(Method::Trust, "u", &secret);
    assert!(first.is_done() && ex.is_done());
    assert_eq!(sent(&first), (0, vec![]));
    assert!(ex.receive(b"pw\0").is_err());
    let (ex, first) = AuthExchange::new_unknown_user(Method::Trust, "nobody", b"k");
    assert!(first.is_done() && ex.is_done());
}

#[test]
fn unknown_users_look_like_wrong_passwords() {
    let key = b"per-process mock secret";
    let mut salts = Vec::new();
    for _ in 0..2 {
        let (mut ex, first) = AuthExchange::new_unknown_user(Method::ScramSha256, "ghost", key);
        assert_eq!(sent(&first).0, 10);
        let mut client = ScramSha256::new(b"guess", ChannelBinding::unsupported());
        let step = ex
            .receive(&sasl_initial(SCRAM_SHA_256, Some(client.message())))
            .unwrap();
        let (_, server_first) = sent(&step);
        let salt = String::from_utf8(server_first.clone())
            .unwrap()
            .split(',')
            .nth(1)
            .unwrap()
            .to_owned();
        salts.push(salt);
        client.update(&server_first).unwrap();
        let err = ex.receive(client.message()).unwrap_err();
        assert_eq!(err, AuthError::InvalidPassword);
    }
    assert_eq!(salts[0], salts[1], "mock salt is stable per user");

    let (mut ex, first) = AuthExchange::new_unknown_user(Method::Md5, "ghost", key);
    assert_eq!(sent(&first).0, 5);
    let err = ex.receive(&password_message(b"md5whatever")).unwrap_err();
    assert_eq!(err, AuthError::InvalidPassword);
}

#[test]
fn oversized_message_is_refused() {
    let secret = StoredSecret::parse("pw").unwrap();
    let (mut ex, _) = AuthExchange::new(Method::Md5, "u", &secret);
    let big = vec![b'a'; MAX_AUTH_MESSAGE_LEN + 1];
    assert!(ex.receive(&big).unwrap_err().is_protocol_violation());
}

/// The three client messages of a successful SCRAM login, recorded against fresh exchanges
/// that replay the same server nonce, so each prefix can be fed at the right state.
struct Recorded {
    initial: Vec<u8>,
    final_msg: Vec<u8>,
    verifier: ScramVerifier,
}

fn record() -> Recorded {
    let verifier =
        ScramVerifier::parse(&postgres_protocol::password::scram_sha_256(b"pw")).unwrap();
    let mut server = ScramServer::new(verifier.clone(), [9; SERVER_NONCE_LEN]);
    let mut client = ScramSha256::new(b"pw", ChannelBinding::unsupported());
    let initial = sasl_initial(SCRAM_SHA_256, Some(client.message()));
    client
        .update(
            &server
                .client_first(SCRAM_SHA_256, client.message())
                .unwrap(),
        )
        .unwrap();
    let final_msg = client.message().to_vec();
    server.client_final(&final_msg).unwrap();
    Recorded {
        initial,
        final_msg,
        verifier,
    }
}

/// A SCRAM exchange positioned after `initial`, with the recorded nonce.
fn scram_after_initial(rec: &Recorded) -> ScramServer {
    let mut server = ScramServer::new(rec.verifier.clone(), [9; SERVER_NONCE_LEN]);
    let (_, data) = rec.initial.split_at(SCRAM_SHA_256.len() + 1 + 4);
    server.client_first(SCRAM_SHA_256, data).unwrap();
    server
}

#[test]
fn recorded_exchange_replays() {
    let rec = record();
    let mut server = scram_after_initial(&rec);
    assert!(server.client_final(&rec.final_msg).is_ok());
}

#[test]
fn every_prefix_is_handled_without_panic() {
    let rec = record();
    let secret = StoredSecret::from_verifier(rec.verifier.clone());
    // SASLInitialResponse: every strict prefix breaks the length field or the data length.
    for end in 0..rec.initial.len() {
        let (mut ex, _) = AuthExchange::new(Method::ScramSha256, "u", &secret);
        let err = ex.receive(&rec.initial[..end]).unwrap_err();
        assert!(err.is_protocol_violation(), "prefix {end}: {err:?}");
    }
    // client-first prefixes straight into the SCRAM server (some are valid: shorter nonce).
    let data = &rec.initial[SCRAM_SHA_256.len() + 5..];
    for end in 0..=data.len() {
        let mut server = ScramServer::new(rec.verifier.clone(), [9; SERVER_NONCE_LEN]);
        let _ = server.client_first(SCRAM_SHA_256, &data[..end]);
    }
    // client-final: every strict prefix fails (the proof is last and fixed-length), as a
    // protocol violation, never as a wrong password.
    for end in 0..rec.final_msg.len() {
        let mut server = scram_after_initial(&rec);
        let err = server.client_final(&rec.final_msg[..end]).unwrap_err();
        assert!(err.is_protocol_violation(), "prefix {end}: {err:?}");
    }
    // PasswordMessage prefixes.
    let md5_secret = StoredSecret::parse("pw").unwrap();
    let body = password_message(b"md50123456789abcdef0123456789abcdef");
    for end in 0..=body.len() {
        let (mut ex, _) = AuthExchange::new(Method::Md5, "u", &md5_secret);
        assert!(ex.receive(&body[..end]).is_err());
    }
}

#[test]
fn mutated_and_random_input_never_panics() {
    let rec = record();
    let secret = StoredSecret::from_verifier(rec.verifier.clone());
    let md5_secret = StoredSecret::parse("pw").unwrap();
    let mut rng = rand::rng();

    // Single-byte mutations of the recorded messages. Every byte of a client-final-message
    // matters (channel binding, nonce, canonical base64 proof), so each mutation must fail;
    // mutations of the initial response may or may not be valid, they just must not panic.
    let interesting = [0u8, b',', b'=', b'n', b'p', b'r', b'c', 0xff, b'A'];
    for i in 0..rec.final_msg.len() {
        for &b in &interesting {
            let mut m = rec.final_msg.clone();
            if m[i] == b {
                continue;
            }
            m[i] = b;
            let mut server = scram_after_initial(&rec);
            assert!(server.client_final(&m).is_err(), "mutation {i}={b}");
        }
    }
    for i in 0..rec.initial.len() {
        for &b in &interesting {
            let mut m = rec.initial.clone();
            m[i] = b;
            let (mut ex, _) = AuthExchange::new(Method::ScramSha256, "u", &secret);
            let _ = ex.receive(&m);
        }
    }

    // Random bodies at every state.
    for _ in 0..2000 {
        let len = rng.random_range(0..200);
        let mut body = vec![0u8; len];
        rand::fill(&mut body[..]);
        // Sometimes give it a plausible start so the parsers get further.
        match rng.random_range(0..4) {
            0 => body
                .splice(0..0, b"SCRAM-SHA-256\0".iter().copied())
                .for_each(drop),
            1 => body
                .splice(0..0, b"n,,n=,r=".iter().copied())
                .for_each(drop),
            2 => body
                .splice(0..0, b"c=biws,r=".iter().copied())
                .for_each(drop),
            _ => {}
        }

        let (mut ex, _) = AuthExchange::new(Method::ScramSha256, "u", &secret);
        assert!(ex.receive(&body).is_err());
        let mut server = ScramServer::new(rec.verifier.clone(), [9; SERVER_NONCE_LEN]);
        let _ = server.client_first(SCRAM_SHA_256, &body);
        let mut server = scram_after_initial(&rec);
        assert!(server.client_final(&body).is_err());
        let (mut ex, _) = AuthExchange::new(Method::Md5, "u", &md5_secret);
        assert!(ex.receive(&body).is_err());
        let _ = StoredSecret::parse(&String::from_utf8_lossy(&body));
        let _ = ScramVerifier::parse(&String::from_utf8_lossy(&body));
    }
}

#[test]
fn error_classification() {
    assert!(AuthError::InvalidPassword.is_invalid_password());
    assert!(!AuthError::InvalidPassword.is_protocol_violation());
    assert!(AuthError::Protocol("x").is_protocol_violation());
    assert_eq!(AuthError::Protocol("x").sqlstate(), "08P01");
    assert_eq!(AuthError::Config("x").sqlstate(), "F0000");
    assert_eq!(SASL_MECHANISMS, &["SCRAM-SHA-256"]);
}

/// Runs SCRAM with channel binding offered (`end_point`) and the client choosing `mechanism`
/// with `cb`; the exchange's error, if any.
fn scram_login_plus(
    mechanism: &str,
    cb: ChannelBinding,
    end_point: &[u8],
) -> Result<(), AuthError> {
    let secret = StoredSecret::parse("correct horse").unwrap();
    let (ex, first) = AuthExchange::new(Method::ScramSha256, "u", &secret);
    let (mut ex, first) = ex.with_channel_binding(first, end_point);
    let (code, payload) = sent(&first);
    assert_eq!(code, 10);
    assert_eq!(payload, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
    let mut client = ScramSha256::new(b"correct horse", cb);
    let step = ex.receive(&sasl_initial(mechanism, Some(client.message())))?;
    client
        .update(&sent(&step).1)
        .expect("client accepts server-first");
    let step = ex.receive(client.message())?;
    let Step::Done {
        sasl_final: Some(server_final),
    } = &step
    else {
        panic!("expected Done, got {step:?}");
    };
    client.finish(server_final).expect("server signature");
    Ok(())
}

#[test]
fn scram_plus_binds_to_the_certificate_hash_and_refuses_a_downgrade() {
    let hash = [7u8; 32];
    let bound = |h: &[u8]| ChannelBinding::tls_server_end_point(h.to_vec());
    scram_login_plus(SCRAM_SHA_256_PLUS, bound(&hash), &hash).expect("PLUS with the right hash");
    // A man in the middle terminates TLS with its own certificate: the client binds to that.
    let err = scram_login_plus(SCRAM_SHA_256_PLUS, bound(&[8u8; 32]), &hash).unwrap_err();
    assert!(err.is_protocol_violation(), "{err}");
    // 'y': the client could bind but was told the server cannot; PLUS was offered, so someone
    // removed it on the way.
    let err = scram_login_plus(SCRAM_SHA_256, ChannelBinding::unrequested(), &hash).unwrap_err();
    assert!(err.is_protocol_violation(), "{err}");
    assert!(err.to_string().contains("negotiation error"), "{err}");
    // 'n': a client without channel binding still logs in with plain SCRAM.
    scram_login_plus(SCRAM_SHA_256, ChannelBinding::unsupported(), &hash).expect("plain SCRAM");
    // Binding data under the plain mechanism, and PLUS without binding data, are refused.
    assert!(scram_login_plus(SCRAM_SHA_256, bound(&hash), &hash).is_err());
    assert!(scram_login_plus(SCRAM_SHA_256_PLUS, ChannelBinding::unsupported(), &hash).is_err());
}

#[test]
fn md5_exchanges_ignore_channel_binding() {
    let secret = StoredSecret::parse("pw").unwrap();
    let (ex, first) = AuthExchange::new(Method::Md5, "bob", &secret);
    let (_, first) = ex.with_channel_binding(first, &[1; 32]);
    assert_eq!(sent(&first).0, 5);
}
