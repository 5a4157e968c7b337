//! Session start: TLS (an SSLRequest, or PostgreSQL 17's direct TLS), the other untagged
//! packets (GSSENCRequest refused; cancel), the StartupMessage, protocol version negotiation, the
//! client certificate checks (`client_cert = "verify-full"`, `auth = "cert"`), and client
//! authentication against the proxy's own user list.
//!
//! Everything here happens before any server is involved; the whole phase runs under
//! `startup_timeout` and reads at most [`MAX_STARTUP_PACKET_LEN`] /
//! [`auth::MAX_AUTH_MESSAGE_LEN`] bytes per message, so an unauthenticated peer cannot hold
//! memory or a task for long.
//!
//! [`MAX_STARTUP_PACKET_LEN`]: crate::protocol::MAX_STARTUP_PACKET_LEN

use bytes::{Bytes, BytesMut};
use std::sync::Arc;

use super::client::ClientConn;
use super::context::SessionCtx;
use super::SessionError;
use crate::auth::{self, AuthExchange, PassThrough};
use crate::backend::connection::ServerAuth;
use crate::config::{AuthMethod, ClientCertMode, ClientTlsMode};
use crate::net::tls::{self, ClientTls};
use crate::protocol::frontend::tag as ftag;
use crate::protocol::messages::{self, ProxyError};
use crate::protocol::startup::{decode_startup, StartupMessage, StartupPacket};
use crate::protocol::{decode_frame, SqlState};

/// A client that passed startup and authentication.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Role name (shared with the cancel registry's `ClientInfo` and the user slot: one copy
    /// per client, issue 17).
    pub user: Arc<str>,
    /// Database name as the client asked for it (shared as `user` is).
    pub database: Arc<str>,
    /// Session parameters from the startup packet (and its `options`), to apply on every server
    /// connection that serves the client.
    pub params: Vec<(String, String)>,
    /// What the client's authentication gave to log in to the servers with (pass-through:
    /// the keys its SCRAM login revealed, or an `auth_query` user's secret); `None` when the
    /// configuration says it all.
    pub server_auth: Option<ServerAuth>,
    /// The user was found by `auth_query`, not in `[[users]]`.
    pub auth_query: bool,
}

/// How the startup phase ended.
pub enum Outcome {
    /// Go on with a session.
    Session(Accepted),
    /// Nothing more to do: a cancel request was handled or the client left.
    Done,
}

/// Runs the startup phase.
pub async fn handshake(ctx: &SessionCtx, client: &mut ClientConn) -> Result<Outcome, SessionError> {
    let settings = ctx.settings_full();
    let tls = settings.client_tls.as_ref();
    if let Some(tls) = tls {
        // Only when TLS is on: one peek per connection, before anything is read.
        if client.rbuf.is_empty()
            && client.peek_first_byte().await? == Some(tls::TLS_HANDSHAKE_RECORD)
        {
            start_direct_tls(client, tls).await?;
        }
    }
    let mut asked = Asked::default();
    let startup = loop {
        let packet = loop {
            if let Some(p) = decode_startup(&mut client.rbuf)? {
                break p;
            }
            if client.read_some().await? == 0 {
                return Ok(Outcome::Done);
            }
        };
        match packet {
            StartupPacket::SslRequest => {
                answer_encryption(client, Encryption::Tls, tls, &mut asked).await?
            }
            StartupPacket::GssEncRequest => {
                answer_encryption(client, Encryption::Gss, tls, &mut asked).await?
            }
            StartupPacket::Cancel(key) => {
                if let Some(target) = ctx.cancels().lookup(key) {
                    let timeout = ctx.settings().config.pool.server_connect_timeout;
                    super::cancel::send_cancel(&target, timeout).await;
                }
                return Ok(Outcome::Done);
            }
            StartupPacket::Startup(m) => break m,
        }
    };
    if !client.is_tls() && tls.is_some_and(|t| t.mode == ClientTlsMode::Require) {
        return Err(SessionError::Fatal(ProxyError::fatal(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            "connection without TLS refused: causeway requires TLS (client_tls.mode = \"require\"); \
             connect with sslmode=require or stronger",
        )));
    }
    let mut accepted = accept_startup(client, &startup)?;
    // A TLS-only user, refused before any password exchange, as PostgreSQL's `hostssl` lines
    // refuse at pg_hba time. Only a configured user with the flag gets this answer; an unknown
    // name still goes through the mock exchange (28P01).
    if !client.is_tls()
        && settings
            .users
            .get(&*accepted.user)
            .is_some_and(|u| u.config.require_tls)
    {
        return Err(SessionError::Fatal(ProxyError::fatal(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            format!(
                "connection without TLS refused: user \"{}\" requires TLS (require_tls = true \
                 in its [[users]] entry); connect with sslmode=require or stronger",
                accepted.user
            ),
        )));
    }
    let cert_matches = check_client_cert(ctx, client, &accepted.user)?;
    let login = authenticate(ctx, client, &accepted.user, cert_matches).await?;
    accepted.server_auth = login.server_auth;
    accepted.auth_query = login.auth_query;
    Ok(Outcome::Session(accepted))
}

/// The client certificate checks, made before any password exchange: under
/// `client_tls.client_cert = "verify-full"` a TLS client's certificate must name (CN) the user
/// it logs in as, whoever that is; a certificate user (`auth = "cert"`) must come over TLS with
/// such a certificate. Either way FATAL 28000, as PostgreSQL's `cert` method answers. The
/// verify-full check compares the certificate with the name asked for, not with the user
/// list, so it tells nothing about which users exist; an unknown name that matches goes on to
/// the mock exchange (28P01). Returns whether the certificate names the user.
fn check_client_cert(
    ctx: &SessionCtx,
    client: &ClientConn,
    user: &str,
) -> Result<bool, SessionError> {
    let settings = ctx.settings_full();
    let verify_full = client.is_tls()
        && settings
            .client_tls
            .as_ref()
            .is_some_and(|t| t.client_cert == Some(ClientCertMode::VerifyFull));
    let cert_user = settings
        .users
        .get(user)
        .is_some_and(|u| u.config.auth == AuthMethod::Cert);
    let name = client
        .stream()
        .peer_certificate()
        .and_then(tls::subject_common_name);
    let matches = name.as_deref() == Some(user);
    if (verify_full || cert_user) && !matches {
        let why = match (&name, client.is_tls()) {
            (_, false) => "the connection is not TLS, so there is no client certificate".to_owned(),
            (None, true) => "the client certificate names no user (no CN)".to_owned(),
            (Some(cn), true) => format!("the client certificate is for \"{cn}\""),
        };
        return Err(SessionError::Fatal(ProxyError::fatal(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            format!("certificate authentication failed for user \"{user}\": {why}"),
        )));
    }
    Ok(matches)
}

/// The encryption an untagged request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encryption {
    /// SSLRequest.
    Tls,
    /// GSSENCRequest.
    Gss,
}

/// The encryption requests a client has made (PostgreSQL takes each at most once).
#[derive(Debug, Default)]
struct Asked {
    /// An SSLRequest came.
    tls: bool,
    /// A GSSENCRequest came.
    gss: bool,
}

/// Answers an SSLRequest or GSSENCRequest: the one place that decides whether a client's
/// connection gets encrypted. The client then sends its StartupMessage (or another request),
/// through TLS if the answer was 'S'.
///
/// GSS encryption is not supported ('N'); TLS is, when `[client_tls]` is on. Bytes the client
/// sent behind its SSLRequest were read in clear text and must not pass for encrypted ones
/// (CVE-2021-23214 in PostgreSQL, CVE-2021-23222 in libpq): such a client is refused before
/// the 'S'. Each request is taken once, and none inside TLS.
async fn answer_encryption(
    client: &mut ClientConn,
    request: Encryption,
    tls: Option<&ClientTls>,
    asked: &mut Asked,
) -> Result<(), SessionError> {
    let (seen, name) = match request {
        Encryption::Tls => (&mut asked.tls, "SSLRequest"),
        Encryption::Gss => (&mut asked.gss, "GSSENCRequest"),
    };
    if std::mem::replace(seen, true) || client.is_tls() {
        return Err(SessionError::Fatal(ProxyError::fatal(
            SqlState::PROTOCOL_VIOLATION,
            format!("unexpected {name}: encryption was already negotiated on this connection"),
        )));
    }
    let tls = match (request, tls) {
        (Encryption::Tls, Some(tls)) => tls,
        _ => {
            client.push_bytes(Bytes::from_static(b"N"));
            client.flush().await?;
            return Ok(());
        }
    };
    if !client.rbuf.is_empty() {
        return Err(SessionError::Fatal(ProxyError::fatal(
            SqlState::PROTOCOL_VIOLATION,
            "received unencrypted data after SSL request",
        )));
    }
    client.push_bytes(Bytes::from_static(b"S"));
    client.flush().await?;
    client.start_tls(tls.config.clone()).await?;
    Ok(())
}

/// PostgreSQL 17's direct TLS: the connection opens with a ClientHello, which must ask for the
/// ALPN protocol `postgresql` (so that no other protocol's client lands here by mistake).
async fn start_direct_tls(client: &mut ClientConn, tls: &ClientTls) -> Result<(), SessionError> {
    client.start_tls(tls.config.clone()).await?;
    if client.stream().alpn_protocol() != Some(tls::ALPN_POSTGRESQL) {
        return Err(SessionError::Fatal(ProxyError::fatal(
            SqlState::PROTOCOL_VIOLATION,
            "received direct SSL connection request without ALPN protocol negotiation extension",
        )));
    }
    Ok(())
}

/// Checks the StartupMessage and extracts user, database and parameters.
fn accept_startup(client: &mut ClientConn, m: &StartupMessage) -> Result<Accepted, SessionError> {
    if let Some(r) = m.param("replication") {
        if !matches!(r, "false" | "off" | "no" | "0") {
            return Err(SessionError::Fatal(ProxyError::fatal(
                SqlState::FEATURE_NOT_SUPPORTED,
                "replication connections are not supported by causeway; connect to the node directly",
            )));
        }
    }
    let user = match m.param("user") {
        Some(u) if !u.is_empty() => u.to_owned(),
        _ => {
            return Err(SessionError::Fatal(ProxyError::fatal(
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                "no PostgreSQL user name specified in startup packet",
            )))
        }
    };
    let database = match m.param("database") {
        Some(d) if !d.is_empty() => d.to_owned(),
        _ => user.clone(),
    };
    let unsupported: Vec<String> = m.protocol_options().map(str::to_owned).collect();
    if m.minor > 0 || !unsupported.is_empty() {
        let mut b = BytesMut::new();
        messages::negotiate_protocol_version(&mut b, unsupported);
        client.push(b);
    }
    let mut params = Vec::new();
    for (k, v) in &m.params {
        match k.as_str() {
            "user" | "database" | "replication" => {}
            "options" => params.extend(parse_options(v)?),
            k if k.starts_with("_pq_.") => {}
            _ => params.push((k.clone(), v.clone())),
        }
    }
    Ok(Accepted {
        user: user.into(),
        database: database.into(),
        params,
        server_auth: None,
        auth_query: false,
    })
}

/// Parses the `options` startup parameter: `-c name=value`, `-cname=value` and `--name=value`
/// switches separated by spaces (a backslash escapes the next character, as in libpq).
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, SessionError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let bad = |w: &str| {
        SessionError::Fatal(ProxyError::fatal(
            SqlState::FEATURE_NOT_SUPPORTED,
            format!(
                "unsupported startup option {w:?}: causeway accepts -c name=value and --name=value"
            ),
        ))
    };
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next().ok_or_else(|| bad(&w))?
        } else if let Some(rest) = w.strip_prefix("-c") {
            rest.to_owned()
        } else if let Some(rest) = w.strip_prefix("--") {
            rest.to_owned()
        } else {
            return Err(bad(&w));
        };
        let (name, value) = setting.split_once('=').ok_or_else(|| bad(&setting))?;
        // PostgreSQL treats '-' in a switch name as '_'.
        out.push((name.replace('-', "_"), value.to_owned()));
    }
    Ok(out)
}

/// What authentication gave, besides letting the client in.
#[derive(Default)]
struct Login {
    /// See [`Accepted::server_auth`].
    server_auth: Option<ServerAuth>,
    /// See [`Accepted::auth_query`].
    auth_query: bool,
}

/// Runs the authentication exchange for `user`: a configured user, else (with `[auth_query]`)
/// one the primary knows, else an unknown user who cannot get in.
async fn authenticate(
    ctx: &SessionCtx,
    client: &mut ClientConn,
    user: &str,
    cert_matches: bool,
) -> Result<Login, SessionError> {
    // Kept across the exchange's awaits: an `Arc`, not a guard.
    let settings = ctx.settings_full();
    let configured = settings.users.get(user);
    // Configured users never wait for (nor cost) a lookup.
    let found = match (configured, &settings.auth_query) {
        (None, Some(auth_query)) => auth_query.lookup(user, ctx.topology()).await.map_err(|e| {
            // The details (which server, the lookup role's errors) are the operator's.
            tracing::warn!(user, error = %e, "auth_query lookup failed");
            SessionError::Fatal(ProxyError::fatal(
                SqlState::CONNECTION_FAILURE,
                format!("could not look up user \"{user}\" (auth_query); the proxy's log says why"),
            ))
        })?,
        _ => None,
    };
    let (exchange, step) = match (configured.map(|e| (&e.secret, e.method)), &found) {
        (Some((Some(secret), method)), _) => AuthExchange::new(method, user, secret),
        // `check_client_cert` refused such a user without a matching certificate already;
        // this keeps the door shut should the order ever change.
        _ if configured.is_some_and(|e| e.config.auth == AuthMethod::Cert) && !cert_matches => {
            return Err(SessionError::Fatal(ProxyError::fatal(
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                format!("certificate authentication failed for user \"{user}\""),
            )));
        }
        (Some((None, auth::Method::Trust)), _) => {
            let mut b = BytesMut::new();
            messages::authentication_ok(&mut b);
            client.push(b);
            return Ok(Login::default());
        }
        // Configuration validation requires a password unless the user is trust; should a
        // user still come without one, no password can match.
        (Some((None, method)), _) => {
            AuthExchange::new_unknown_user(method, user, ctx.mock_secret())
        }
        (None, Some(found)) => AuthExchange::new(found.method(), user, &found.secret),
        // A user causeway does not know (nor `auth_query` finds) goes through the exchange a
        // configured user gets by default (SCRAM, with a salt stable per name) and fails as a
        // wrong password does (28P01): the list of users cannot be probed.
        (None, None) => {
            AuthExchange::new_unknown_user(auth::Method::ScramSha256, user, ctx.mock_secret())
        }
    };
    // On TLS, SCRAM-SHA-256-PLUS too, bound to the certificate this session was made with.
    let tls = settings.client_tls.as_ref().filter(|_| client.is_tls());
    let (mut exchange, mut step) = match tls.and_then(|t| t.end_point.as_deref()) {
        Some(end_point) => exchange.with_channel_binding(step, end_point),
        None => (exchange, step),
    };
    loop {
        let mut b = BytesMut::new();
        step.encode(&mut b);
        client.push(b);
        if step.is_done() {
            let learned = exchange.learned_keys();
            return Ok(match &found {
                Some(found) => Login {
                    server_auth: Some(found.server_auth(learned)),
                    auth_query: true,
                },
                // A configured verifier without server_password: log in to the servers with
                // the keys this login revealed.
                None => Login {
                    server_auth: learned
                        .filter(|_| {
                            let secret = configured.and_then(|e| e.secret.as_ref());
                            secret.is_some_and(|s| s.stored_verifier().is_some())
                        })
                        .map(|keys| ServerAuth::pass_through(PassThrough::Scram(keys.clone()))),
                    auth_query: false,
                },
            });
        }
        client.flush().await?;
        let frame = loop {
            if let Some(f) = decode_frame(&mut client.rbuf, auth::MAX_AUTH_MESSAGE_LEN)? {
                break f;
            }
            if client.read_some().await? == 0 {
                return Err(SessionError::Closed);
            }
        };
        if frame.tag() != ftag::PASSWORD {
            return Err(SessionError::Fatal(ProxyError::fatal(
                SqlState::PROTOCOL_VIOLATION,
                format!(
                    "expected password response, got message type {:?}",
                    frame.tag() as char
                ),
            )));
        }
        step = exchange.receive(frame.body()).map_err(|e| {
            let code = if e.is_invalid_password() {
                SqlState::INVALID_PASSWORD
            } else {
                SqlState::PROTOCOL_VIOLATION
            };
            let message = if e.is_invalid_password() {
                format!("password authentication failed for user \"{user}\"")
            } else {
                e.to_string()
            };
            SessionError::Fatal(ProxyError::fatal(code, message))
        })?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_parsed_like_libpq() {
        let o = parse_options("-c search_path=a,b --statement-timeout=5s -cwork_mem=64MB").unwrap();
        assert_eq!(
            o,
            vec![
                ("search_path".into(), "a,b".into()),
                ("statement_timeout".into(), "5s".into()),
                ("work_mem".into(), "64MB".into()),
            ]
        );
        let o = parse_options(r"-c application_name=my\ app").unwrap();
        assert_eq!(o, vec![("application_name".into(), "my app".into())]);
        assert!(parse_options("-B 100").is_err());
        assert!(parse_options("-c").is_err());
        assert!(parse_options("-c novalue").is_err());
        assert!(parse_options("").unwrap().is_empty());
    }
}
