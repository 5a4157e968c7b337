//! A minimal SCRAM-SHA-256 client for the idle-client mode, which opens thousands of
//! connections.
//!
//! It caches SaltedPassword per (salt, iterations): both proxies answer every login with the
//! same salt (causeway from its prepared verifier, PgBouncer from the verifier in its auth
//! file), so the 4096-iteration PBKDF2 runs once instead of once per connection, and the
//! client does not eat the CPU the proxy is being measured on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut u = hmac(password, &[salt, &1u32.to_be_bytes()]);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &[&u]);
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

/// SaltedPassword by (salt, iterations).
type SaltMap = HashMap<(Vec<u8>, u32), [u8; 32]>;

/// SaltedPassword cache shared by all connections.
#[derive(Clone, Default)]
pub struct SaltCache(Arc<Mutex<SaltMap>>);

/// One SCRAM exchange, client side.
pub struct ScramClient {
    nonce: String,
    client_first_bare: String,
    expected_server_signature: Option<[u8; 32]>,
}

impl ScramClient {
    /// Starts an exchange; the returned client-first-message goes into SASLInitialResponse.
    pub fn start() -> (ScramClient, String) {
        let mut raw = [0u8; 18];
        rand::fill(&mut raw);
        let nonce = STANDARD.encode(raw);
        // PostgreSQL and PgBouncer take the user from the startup packet; libpq sends n= empty.
        let client_first_bare = format!("n=,r={nonce}");
        let first = format!("n,,{client_first_bare}");
        (
            ScramClient {
                nonce,
                client_first_bare,
                expected_server_signature: None,
            },
            first,
        )
    }

    /// Answers the server-first-message with the client-final-message.
    pub fn respond(
        &mut self,
        server_first: &[u8],
        password: &[u8],
        cache: &SaltCache,
    ) -> Result<String, String> {
        let server_first = std::str::from_utf8(server_first).map_err(|e| e.to_string())?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in server_first.split(',') {
            match attr.split_at_checked(2) {
                Some(("r=", v)) => nonce = Some(v),
                Some(("s=", v)) => salt = STANDARD.decode(v).ok(),
                Some(("i=", v)) => iterations = v.parse::<u32>().ok(),
                _ => {}
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            return Err(format!("bad server-first-message {server_first:?}"));
        };
        if !nonce.starts_with(&self.nonce) || iterations == 0 || iterations > 100_000 {
            return Err("server nonce or iteration count not acceptable".into());
        }
        let key = (salt.clone(), iterations);
        let cached = cache
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .copied();
        let salted = match cached {
            Some(s) => s,
            None => {
                let s = salted_password(password, &salt, iterations);
                cache
                    .0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, s);
                s
            }
        };
        let client_key = hmac(&salted, &[b"Client Key"]);
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = hmac(&stored_key, &[auth_message.as_bytes()]);
        let mut proof = client_key;
        for (p, s) in proof.iter_mut().zip(signature) {
            *p ^= s;
        }
        let server_key = hmac(&salted, &[b"Server Key"]);
        self.expected_server_signature = Some(hmac(&server_key, &[auth_message.as_bytes()]));
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)))
    }

    /// Checks the server-final-message.
    pub fn finish(&self, server_final: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(server_final).map_err(|e| e.to_string())?;
        let v = text
            .strip_prefix("v=")
            .and_then(|v| STANDARD.decode(v).ok())
            .ok_or_else(|| format!("bad server-final-message {text:?}"))?;
        match self.expected_server_signature {
            Some(expected) if v == expected => Ok(()),
            _ => Err("server signature does not match".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's example exchange.
    #[test]
    fn rfc7677_vector() {
        let mut c = ScramClient {
            nonce: "rOprNGfwEbeRWgbNEkqO".into(),
            client_first_bare: "n=user,r=rOprNGfwEbeRWgbNEkqO".into(),
            expected_server_signature: None,
        };
        let server_first =
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let last = c
            .respond(server_first, b"pencil", &SaltCache::default())
            .unwrap();
        assert_eq!(
            last,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
             p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.finish(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
    }
}
