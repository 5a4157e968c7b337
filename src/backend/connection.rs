//! One connection from causeway to a PostgreSQL server: connect, authenticate, and the state a
//! session needs to relay through it (read/write buffers, reply scanner, who owns each pending
//! reply, transaction status, the parameters the server reported).
//!
//! Authentication towards servers uses postgres-protocol's SCRAM-SHA-256 client and md5 hash
//! with a password; without one ([`ServerAuth::PassThrough`]) it answers with the keys a
//! client's SCRAM login revealed (`auth::ScramKeysClient`) or the stored md5 hash.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use std::sync::Arc;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::AsyncWrite;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::replies::{ReplyCursor, ReplyOwner, RequestTrack};
use super::statements::ServerStatements;
use super::stream::ServerStream;
use super::BackendError;
use crate::config::ServerTlsMode;
use crate::net::server_tls::ServerTls;
use crate::protocol::backend::{self as be, tag as btag, AuthRequest, ReplyScanner, TxStatus};
use crate::protocol::startup::{CancelKey, StartupMessage, SSL_REQUEST_CODE};
use crate::protocol::{decode_frame, messages, Frame, ProtocolError, DEFAULT_MAX_MESSAGE_LEN};

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ConnectTarget {
    /// The node's slot in the topology.
    pub node: usize,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Role name on the server.
    pub user: String,
    /// Database name on the server.
    pub database: String,
    /// What proves to the server that causeway may log in as `user`.
    pub auth: ServerAuth,
    /// Set `TCP_NODELAY` on the socket (`proxy.tcp_nodelay`).
    pub nodelay: bool,
    /// TCP keepalive idle time (`proxy.tcp_keepalive`); `None` leaves it off.
    pub keepalive: Option<std::time::Duration>,
    /// TLS towards the server (`[server_tls]`).
    pub tls: Arc<ServerTls>,
}

/// What causeway proves to a server that it may log in as a user.
#[derive(Clone)]
pub enum ServerAuth {
    /// Nothing: the server must let the user in without a password.
    None,
    /// A plain password (`server_password`, or a plain `password`): serves every method.
    Password(String),
    /// A secret standing in for a password causeway does not have (pass-through): the keys a
    /// client's SCRAM login revealed, or a stored md5 hash.
    PassThrough {
        /// The secret.
        secret: Arc<crate::auth::PassThrough>,
        /// When it was learned: of two different secrets for one user, the newer one is what
        /// the server holds now (a password changed on the server).
        since: Instant,
    },
}

impl ServerAuth {
    /// A pass-through secret learned now.
    pub fn pass_through(secret: crate::auth::PassThrough) -> ServerAuth {
        ServerAuth::PassThrough {
            secret: Arc::new(secret),
            since: Instant::now(),
        }
    }

    /// True if both hold the same secret (when it was learned does not matter).
    pub fn same_secret(&self, other: &ServerAuth) -> bool {
        match (self, other) {
            (ServerAuth::None, ServerAuth::None) => true,
            (ServerAuth::Password(a), ServerAuth::Password(b)) => a == b,
            (
                ServerAuth::PassThrough { secret: a, .. },
                ServerAuth::PassThrough { secret: b, .. },
            ) => a == b,
            _ => false,
        }
    }

    /// True if a pool made with `self` must give way to one made with `newer`: both are
    /// pass-through secrets, they differ, and `newer` was learned later (the client that
    /// logged in with it proved the password the server holds now).
    pub fn is_superseded_by(&self, newer: &ServerAuth) -> bool {
        match (self, newer) {
            (
                ServerAuth::PassThrough {
                    secret: a,
                    since: old,
                },
                ServerAuth::PassThrough {
                    secret: b,
                    since: new,
                },
            ) => a != b && new > old,
            _ => false,
        }
    }
}

impl std::fmt::Debug for ServerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerAuth::None => f.write_str("None"),
            ServerAuth::Password(_) => f.write_str("Password(***)"),
            ServerAuth::PassThrough { secret, .. } => write!(f, "{secret:?}"),
        }
    }
}

/// The client side of a SCRAM exchange with a server.
enum Sasl {
    /// With the password (postgres-protocol's client).
    Password(ScramSha256),
    /// With keys a client's login revealed (pass-through).
    Keys(crate::auth::ScramKeysClient),
}

impl ConnectTarget {
    /// `host:port`, for messages.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Opens the TCP connection to `target`, with `TCP_NODELAY` as `proxy.tcp_nodelay` says
/// (small request/reply messages should not wait for Nagle's algorithm).
async fn open_socket(target: &ConnectTarget) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
    // Best effort, as on client sockets: a socket without the option still works.
    let _ = stream.set_nodelay(target.nodelay);
    crate::net::keepalive::set(&stream, target.keepalive);
    Ok(stream)
}

/// Asks for TLS as `[server_tls]` says (SSLRequest, then a handshake verified per the mode),
/// or not at all under `disable`.
///
/// The answer is read one byte straight off the socket, so bytes a man in the middle sends
/// after the 'S' stay in the socket and go to rustls as (invalid) TLS records, never to the
/// protocol as if the server had sent them (the CVE-2021-23222 class of bug).
async fn negotiate_tls(
    mut socket: TcpStream,
    target: &ConnectTarget,
    addr: &str,
) -> Result<ServerStream, BackendError> {
    // The node's own settings when `[[nodes]]` overrides `[server_tls]` for it.
    let tls = target.tls.for_node(&target.host, target.port);
    let Some(config) = &tls.config else {
        return Ok(ServerStream::Tcp(socket));
    };
    let io = |source| BackendError::Io {
        addr: addr.to_owned(),
        source,
    };
    let refuse = |reason: String| BackendError::Tls {
        addr: addr.to_owned(),
        reason,
    };
    let mut request = [0u8; 8];
    request[..4].copy_from_slice(&8i32.to_be_bytes());
    request[4..].copy_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
    socket.write_all(&request).await.map_err(io)?;
    let mut answer = [0u8; 1];
    socket.read_exact(&mut answer).await.map_err(io)?;
    match answer[0] {
        b'S' => {
            let host = tls.server_name.as_deref().unwrap_or(&target.host);
            let name = ServerTls::server_name(host).map_err(refuse)?;
            let session = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, socket)
                .await
                .map_err(|e| refuse(format!("TLS handshake failed: {e}")))?;
            Ok(ServerStream::tls(session))
        }
        b'N' if tls.mode == ServerTlsMode::Prefer => Ok(ServerStream::Tcp(socket)),
        b'N' => Err(refuse(format!(
            "the server does not accept TLS and {} is \"{}\"",
            if std::ptr::eq(tls, &*target.tls) {
                "server_tls.mode"
            } else {
                "the node's tls_mode (or server_tls.mode)"
            },
            tls.mode.as_str()
        ))),
        other => Err(refuse(format!(
            "the server answered the SSLRequest with byte {other:#04x}, not 'S' or 'N'"
        ))),
    }
}

/// Parameters as the server reported them (ParameterStatus), plus what the proxy set itself.
#[derive(Debug, Clone, Default)]
pub struct ServerParams {
    /// Every ParameterStatus the server sent, by the name it used (`DateStyle`, `TimeZone`...).
    pub reported: HashMap<String, String>,
    /// Parameters the proxy SET on this connection since it was last reset, by lower-case
    /// name, holding the client's value (which the server may have normalized when reporting).
    pub applied: BTreeMap<String, String>,
    /// Fingerprint of the client parameters this connection was last brought in line with;
    /// 0 once anything may have changed since (a reported value changed, a reset).
    pub synced: u64,
}

impl ServerParams {
    /// Records a ParameterStatus body in `reported`; a changed value means the connection may
    /// no longer match the client it was last brought in line with.
    pub(super) fn record(&mut self, body: &[u8]) -> Result<(), ProtocolError> {
        let (name, value) = be::parameter_status(body)?;
        match self.reported.get_mut(name) {
            Some(v) if v == value => {}
            Some(v) => {
                *v = value.to_owned();
                self.synced = 0;
            }
            None => {
                self.reported.insert(name.to_owned(), value.to_owned());
                self.synced = 0;
            }
        }
        Ok(())
    }
}

/// An authenticated server connection.
pub struct ServerConn {
    /// The socket, or the TLS session over it.
    pub(super) stream: ServerStream,
    /// Bytes read from the server and not consumed yet.
    pub(super) rbuf: BytesMut,
    /// Bytes waiting to be written to the server.
    pub(super) wbuf: BytesMut,
    /// Position in the reply stream (at a frame boundary or inside a passthrough frame).
    pub(super) scanner: ReplyScanner,
    /// One entry per ReadyForQuery still to come, oldest first.
    pub(super) pending: VecDeque<ReplyOwner>,
    /// Transaction status from the last ReadyForQuery.
    pub(super) status: TxStatus,
    /// Set when the connection must not be reused (I/O error, FATAL, protocol error).
    pub(super) broken: bool,
    /// Reported and applied parameters.
    pub(super) params: ServerParams,
    /// Named statements prepared on this connection.
    pub(super) statements: ServerStatements,
    /// Requests in flight.
    pub(super) track: RequestTrack,
    /// Where reading the replies has got to (see [`super::replies`]).
    pub(super) cursor: ReplyCursor,
    /// Node index in the configuration.
    node: usize,
    /// host:port, for messages.
    addr: String,
    /// Where a CancelRequest for this connection goes: host, port and the server process's
    /// key. Shared, so that pointing a client's cancel slot at it allocates nothing.
    cancel: Arc<super::cancel::CancelTarget>,
    /// When the connection was established (for `server_lifetime`).
    created: Instant,
    /// When the connection was last checked in (for `server_idle_timeout`).
    pub(crate) last_used: Instant,
    /// When the connection is past `server_lifetime` or `server_idle_timeout`, whichever
    /// comes first (kept by the pool whenever `last_used` changes; `None`: never).
    pub(crate) expires: Option<Instant>,
    /// The node's role epoch when the connection was made (see
    /// [`crate::topology::NodeState::role_epoch`]).
    pub(crate) role_epoch: u64,
}

impl std::fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConn")
            .field("addr", &self.addr)
            .field("pid", &self.cancel.key.pid)
            .field("status", &self.status)
            .field("pending", &self.pending.len())
            .field("broken", &self.broken)
            .finish()
    }
}

impl ServerConn {
    /// Connects and authenticates, within `timeout` for the whole handshake.
    pub async fn connect(
        target: &ConnectTarget,
        timeout: Duration,
    ) -> Result<ServerConn, BackendError> {
        let addr = target.addr();
        match tokio::time::timeout(timeout, Self::connect_inner(target, addr.clone())).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Timeout {
                what: "connecting and authenticating",
                addr,
            }),
        }
    }

    async fn connect_inner(
        target: &ConnectTarget,
        addr: String,
    ) -> Result<ServerConn, BackendError> {
        let socket = open_socket(target)
            .await
            .map_err(|source| BackendError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let stream = negotiate_tls(socket, target, &addr).await?;
        let now = Instant::now();
        let mut conn = ServerConn {
            stream,
            rbuf: BytesMut::with_capacity(8192),
            wbuf: BytesMut::with_capacity(1024),
            scanner: ReplyScanner::default(),
            pending: VecDeque::new(),
            status: TxStatus::Idle,
            broken: false,
            params: ServerParams::default(),
            statements: ServerStatements::default(),
            track: RequestTrack::default(),
            cursor: ReplyCursor::default(),
            node: target.node,
            addr,
            cancel: Arc::new(super::cancel::CancelTarget {
                host: target.host.clone(),
                port: target.port,
                key: CancelKey { pid: 0, secret: 0 },
            }),
            created: now,
            last_used: now,
            expires: None,
            role_epoch: 0,
        };
        let startup = StartupMessage::encode([
            ("user", target.user.as_str()),
            ("database", target.database.as_str()),
        ]);
        conn.write_all(&startup).await?;
        conn.authenticate(target).await?;
        // After authentication: ParameterStatus, BackendKeyData, then ReadyForQuery.
        loop {
            let frame = conn.read_frame().await?;
            match frame.tag() {
                btag::PARAMETER_STATUS => conn.record_parameter(frame.body())?,
                btag::BACKEND_KEY_DATA => {
                    let key = be::backend_key_data(frame.body()).map_err(|e| conn.proto(e))?;
                    Arc::make_mut(&mut conn.cancel).key = key;
                }
                btag::READY_FOR_QUERY => {
                    conn.status = be::ready_for_query(frame.body()).map_err(|e| conn.proto(e))?;
                    return Ok(conn);
                }
                btag::ERROR_RESPONSE => return Err(conn.server_error(&frame)),
                btag::NOTICE_RESPONSE | btag::NEGOTIATE_PROTOCOL_VERSION => {}
                t => {
                    return Err(conn.proto(ProtocolError::Unexpected {
                        tag: t as char,
                        context: "during server startup",
                    }))
                }
            }
        }
    }

    /// Runs the authentication exchange the server asks for.
    async fn authenticate(&mut self, target: &ConnectTarget) -> Result<(), BackendError> {
        let mut scram: Option<Sasl> = None;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag() {
                btag::AUTHENTICATION => {}
                btag::ERROR_RESPONSE => return Err(self.server_error(&frame)),
                btag::NOTICE_RESPONSE => continue,
                t => {
                    return Err(self.proto(ProtocolError::Unexpected {
                        tag: t as char,
                        context: "during server authentication",
                    }))
                }
            }
            let request = be::auth_request(frame.body()).map_err(|e| self.proto(e))?;
            let mut out = BytesMut::new();
            match request {
                // A SCRAM exchange that was started must have ended with the server's
                // signature: a server (or whoever answers in its place) that does not know the
                // password could otherwise just say Ok.
                AuthRequest::Ok if scram.is_some() => {
                    return Err(self.sasl_error(std::io::Error::other(
                        "the server skipped its final signature: it did not prove that it \
                         knows the password",
                    )))
                }
                AuthRequest::Ok => return Ok(()),
                AuthRequest::Cleartext
                    if !self.stream.is_tls() && !target.tls.allow_cleartext_without_tls =>
                {
                    return Err(BackendError::UnsupportedAuth {
                        addr: self.addr.clone(),
                        what: "a cleartext password over a connection without TLS (refused: \
                               anyone on the path could read it; \
                               server_tls.allow_cleartext_without_tls = true allows it)"
                            .to_owned(),
                    });
                }
                AuthRequest::Cleartext => {
                    messages::password(&mut out, self.password(target, "password")?.as_bytes());
                }
                AuthRequest::Md5 { salt } => match &target.auth {
                    ServerAuth::PassThrough { secret, .. } => {
                        let response = secret
                            .md5_response(salt)
                            .ok_or_else(|| self.pass_through_cannot("md5", secret.kind_name()))?;
                        messages::password(&mut out, &response);
                    }
                    _ => {
                        let hash = postgres_protocol::authentication::md5_hash(
                            target.user.as_bytes(),
                            self.password(target, "md5")?.as_bytes(),
                            salt,
                        );
                        messages::password(&mut out, hash.as_bytes());
                    }
                },
                AuthRequest::Sasl { mechanisms } => {
                    let offered = mechanisms
                        .split(|&b| b == 0)
                        .any(|m| m == crate::auth::SCRAM_SHA_256.as_bytes());
                    if !offered {
                        return Err(BackendError::UnsupportedAuth {
                            addr: self.addr.clone(),
                            what: format!(
                                "SASL mechanisms {:?}",
                                String::from_utf8_lossy(mechanisms)
                            ),
                        });
                    }
                    let client = match &target.auth {
                        ServerAuth::PassThrough { secret, .. } => {
                            let keys = secret.scram_keys().ok_or_else(|| {
                                self.pass_through_cannot("SCRAM-SHA-256", secret.kind_name())
                            })?;
                            Sasl::Keys(crate::auth::ScramKeysClient::new(keys.clone()))
                        }
                        _ => Sasl::Password(ScramSha256::new(
                            self.password(target, "SCRAM-SHA-256")?.as_bytes(),
                            ChannelBinding::unsupported(),
                        )),
                    };
                    let first = match &client {
                        Sasl::Password(c) => c.message().to_vec(),
                        Sasl::Keys(c) => c.client_first(),
                    };
                    messages::sasl_initial_response(&mut out, crate::auth::SCRAM_SHA_256, &first);
                    scram = Some(client);
                }
                AuthRequest::SaslContinue(data) => {
                    match scram.take().ok_or_else(|| self.unexpected_sasl())? {
                        Sasl::Password(mut client) => {
                            check_iterations(data).map_err(|e| self.sasl_error(e))?;
                            // This step runs PBKDF2 (4096 rounds by default, about a
                            // millisecond): off the async workers, so a burst of new server
                            // connections does not stall every session.
                            let data = data.to_vec();
                            let client = tokio::task::spawn_blocking(move || {
                                client.update(&data).map(|()| client)
                            })
                            .await
                            .map_err(|e| self.sasl_error(std::io::Error::other(e.to_string())))?
                            .map_err(|e| self.sasl_error(e))?;
                            messages::sasl_response(&mut out, client.message());
                            scram = Some(Sasl::Password(client));
                        }
                        // No PBKDF2 here: the keys are already derived.
                        Sasl::Keys(mut client) => {
                            let reply = client
                                .server_first(data)
                                .map_err(|e| self.sasl_error(std::io::Error::other(e)))?;
                            messages::sasl_response(&mut out, &reply);
                            scram = Some(Sasl::Keys(client));
                        }
                    }
                }
                AuthRequest::SaslFinal(data) => {
                    match scram.take().ok_or_else(|| self.unexpected_sasl())? {
                        Sasl::Password(mut client) => {
                            client.finish(data).map_err(|e| self.sasl_error(e))?
                        }
                        Sasl::Keys(mut client) => client
                            .server_final(data)
                            .map_err(|e| self.sasl_error(std::io::Error::other(e)))?,
                    }
                    continue;
                }
                AuthRequest::Unsupported(code) => {
                    return Err(BackendError::UnsupportedAuth {
                        addr: self.addr.clone(),
                        what: format!("authentication request code {code}"),
                    })
                }
            }
            self.write_all(&out).await?;
        }
    }

    /// The plain password for `method`; a pass-through secret is not one.
    fn password<'a>(
        &self,
        target: &'a ConnectTarget,
        method: &str,
    ) -> Result<&'a str, BackendError> {
        match &target.auth {
            ServerAuth::Password(p) => Ok(p),
            ServerAuth::PassThrough { secret, .. } => {
                Err(self.pass_through_cannot(method, secret.kind_name()))
            }
            ServerAuth::None => Err(BackendError::NoPassword {
                addr: self.addr.clone(),
                user: target.user.clone(),
            }),
        }
    }

    /// The server asked for `method`, which the pass-through secret (`kind`) cannot serve.
    fn pass_through_cannot(&self, method: &str, kind: &str) -> BackendError {
        BackendError::UnsupportedAuth {
            addr: self.addr.clone(),
            what: format!(
                "{method}, which causeway cannot answer with the {kind} it holds for this user \
                 (no plain password: set server_password, or make the server use the method \
                 the user's stored secret belongs to)"
            ),
        }
    }

    fn unexpected_sasl(&self) -> BackendError {
        self.proto(ProtocolError::Unexpected {
            tag: 'R',
            context: "(SASL step without SASL start)",
        })
    }

    fn sasl_error(&self, e: std::io::Error) -> BackendError {
        BackendError::UnsupportedAuth {
            addr: self.addr.clone(),
            what: format!("SCRAM exchange failed: {e}"),
        }
    }

    // === accessors ===

    /// Node index in the configuration.
    pub fn node(&self) -> usize {
        self.node
    }

    /// host:port of the server.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The server's process id and cancel secret.
    pub fn cancel_key(&self) -> CancelKey {
        self.cancel.key
    }

    /// Where a CancelRequest for this connection's process must go.
    pub fn cancel_target(&self) -> Arc<super::cancel::CancelTarget> {
        self.cancel.clone()
    }

    /// Whether a cancel for this connection's process may still be on its way: someone holds
    /// its target besides the connection (a cancel being sent keeps its copy until the server
    /// closed the cancel connection, that is until the process was signalled). The session's
    /// own copy is given up before the connection goes back to the pool.
    pub fn cancel_in_flight(&self) -> bool {
        Arc::strong_count(&self.cancel) > 1
    }

    /// Transaction status from the last ReadyForQuery.
    pub fn status(&self) -> TxStatus {
        self.status
    }

    /// The server's reported parameters.
    pub fn params(&self) -> &ServerParams {
        &self.params
    }

    /// When the connection was established.
    pub fn created(&self) -> Instant {
        self.created
    }

    /// Whether the connection must not be reused.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Marks the connection as not reusable.
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Whether the connection is between requests: nothing pending in either direction, not
    /// inside a reply frame, not in a transaction, nothing broken. Only such a connection can
    /// serve another client.
    pub fn is_idle(&self) -> bool {
        !self.broken
            && self.pending.is_empty()
            && !self.track.unsynced
            && self.scanner.at_boundary()
            && self.rbuf.is_empty()
            && self.wbuf.is_empty()
            && self.status == TxStatus::Idle
    }

    /// Whether an idle connection is still usable: the socket has not been closed and the
    /// server has sent nothing while idle (an idle server speaks only to say it is going away,
    /// or to deliver something a pinned session asked for, which never reaches the pool).
    /// Non-blocking: one `try_read`.
    pub fn is_alive(&mut self) -> bool {
        if self.broken {
            return false;
        }
        if self.stream.idle_and_open() {
            true
        } else {
            self.broken = true;
            false
        }
    }

    /// The node's role epoch when the connection was made.
    pub fn role_epoch(&self) -> u64 {
        self.role_epoch
    }

    // === the session relay's I/O ===

    /// Bytes waiting to be written to the server.
    #[inline]
    pub fn out_len(&self) -> usize {
        self.wbuf.len()
    }

    /// Writes what is queued now, as far as the socket takes it without waiting; errors and a
    /// full socket are left to [`Self::poll_flush_out`], which sees them again.
    #[inline]
    pub fn try_flush(&mut self) {
        if !self.wbuf.is_empty() {
            if let Ok(n) = self.stream.try_write(&self.wbuf) {
                self.wbuf.advance(n);
            }
        }
    }

    /// Polls writing the queued bytes; what was written leaves the queue.
    #[inline]
    pub fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, &self.wbuf);
        if let Poll::Ready(Ok(n)) = r {
            self.wbuf.advance(n);
        }
        r
    }

    /// Makes room in the read buffer for the next read, before the relay's wait.
    #[inline]
    pub fn prepare_read(&mut self) {
        if self.rbuf.capacity() - self.rbuf.len() < 4096 {
            self.rbuf.reserve(16 * 1024);
        }
    }

    /// Polls reading more of the server's bytes (cancel-safe: a read completes or does
    /// nothing).
    #[inline]
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.rbuf)
    }

    /// Queues bytes the client sends straight through (COPY data).
    #[inline]
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.wbuf.extend_from_slice(bytes);
    }

    // === simple I/O used outside the session relay ===

    /// Writes all of `bytes` now (startup, internal queries).
    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        if let Err(source) = self.stream.write_all(bytes).await {
            self.broken = true;
            return Err(BackendError::Io {
                addr: self.addr.clone(),
                source,
            });
        }
        Ok(())
    }

    /// Reads one whole frame (used only for small control messages, never for relayed rows).
    async fn read_frame(&mut self) -> Result<Frame, BackendError> {
        loop {
            match decode_frame(&mut self.rbuf, DEFAULT_MAX_MESSAGE_LEN) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(e) => return Err(self.proto(e)),
            }
            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                self.rbuf.reserve(8192);
            }
            match self.stream.read_buf(&mut self.rbuf).await {
                Ok(0) => {
                    self.broken = true;
                    return Err(BackendError::Closed {
                        addr: self.addr.clone(),
                    });
                }
                Ok(_) => {}
                Err(source) => {
                    self.broken = true;
                    return Err(BackendError::Io {
                        addr: self.addr.clone(),
                        source,
                    });
                }
            }
        }
    }

    /// Runs one internal simple query on an idle connection and waits for its ReadyForQuery,
    /// swallowing the reply. Returns the server's error, if any, as `Ok(Err(fields))`.
    pub async fn run_internal(
        &mut self,
        sql: &str,
        timeout: Duration,
    ) -> Result<Result<(), be::ErrorFields>, BackendError> {
        Ok(self.query_internal(sql, timeout, |_| {}).await?.map(|_| ()))
    }

    /// Runs one internal simple query on an idle connection, handing each DataRow body to
    /// `on_row`. Returns the server's error, if any, as `Ok(Err(fields))`.
    pub async fn query_internal(
        &mut self,
        sql: &str,
        timeout: Duration,
        mut on_row: impl FnMut(&[u8]),
    ) -> Result<Result<(), be::ErrorFields>, BackendError> {
        debug_assert!(self.pending.is_empty() && self.scanner.at_boundary());
        self.statements.unnamed = None;
        let mut out = BytesMut::with_capacity(sql.len() + 8);
        messages::query(&mut out, sql);
        let addr = self.addr.clone();
        let work = async {
            self.write_all(&out).await?;
            let mut error = None;
            loop {
                let frame = self.read_frame().await?;
                match frame.tag() {
                    btag::READY_FOR_QUERY => {
                        self.status =
                            be::ready_for_query(frame.body()).map_err(|e| self.proto(e))?;
                        return Ok(match error {
                            Some(e) => Err(e),
                            None => Ok(()),
                        });
                    }
                    btag::DATA_ROW => on_row(frame.body()),
                    btag::ERROR_RESPONSE => {
                        let fields = be::error_fields(frame.body()).map_err(|e| self.proto(e))?;
                        if fields.is_fatal() {
                            self.broken = true;
                        }
                        error.get_or_insert(fields);
                    }
                    btag::PARAMETER_STATUS => self.record_parameter(frame.body())?,
                    _ => {}
                }
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => {
                self.broken = true;
                Err(BackendError::Timeout {
                    what: "running an internal query",
                    addr,
                })
            }
        }
    }

    /// Records a ParameterStatus body in `params.reported`.
    pub(crate) fn record_parameter(&mut self, body: &[u8]) -> Result<(), BackendError> {
        self.params.record(body).map_err(|e| self.proto(e))
    }

    /// Waits for the replies to the proxy's own queries still owed (a read-your-writes probe
    /// sent behind the client's last request), so that a connection whose client left right
    /// after its reply is reusable. Does nothing if a client request is pending.
    pub async fn finish_proxy_replies(&mut self, timeout: Duration) -> Result<(), BackendError> {
        if self.pending.is_empty()
            || self
                .pending
                .iter()
                .any(|o| matches!(o, ReplyOwner::Client { .. }))
            || !self.scanner.at_boundary()
        {
            return Ok(());
        }
        let addr = self.addr.clone();
        let work = async {
            let out = self.wbuf.split();
            if !out.is_empty() {
                self.write_all(&out).await?;
            }
            while !self.pending.is_empty() {
                let frame = self.read_frame().await?;
                match frame.tag() {
                    btag::READY_FOR_QUERY => {
                        self.status =
                            be::ready_for_query(frame.body()).map_err(|e| self.proto(e))?;
                        self.pending.pop_front();
                    }
                    btag::PARAMETER_STATUS => self.record_parameter(frame.body())?,
                    _ => {}
                }
            }
            Ok(())
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => {
                self.broken = true;
                Err(BackendError::Timeout {
                    what: "waiting for the proxy's own replies",
                    addr,
                })
            }
        }
    }

    /// Ends a COPY FROM STDIN whose client went away, with CopyFail (and Sync for the extended
    /// protocol), and waits for the server's ReadyForQuery: the COPY is rolled back cleanly
    /// and the connection is usable again. Closing the socket instead would make the server
    /// log "protocol synchronization was lost".
    pub async fn abort_copy(&mut self, timeout: Duration) -> Result<(), BackendError> {
        let Some(extended) = self.track.copy_in.take() else {
            return Ok(());
        };
        let mut out = BytesMut::new();
        crate::protocol::codec::put_frame_with(
            &mut out,
            crate::protocol::frontend::tag::COPY_FAIL,
            |b| crate::protocol::codec::put_cstr(b, b"client connection closed"),
        );
        if extended {
            messages::sync(&mut out);
        }
        // Data the client sent that is still buffered goes first.
        let mut all = self.wbuf.split();
        all.extend_from_slice(&out);
        let addr = self.addr.clone();
        let work = async {
            self.write_all(&all).await?;
            loop {
                let frame = self.read_frame().await?;
                if frame.tag() == btag::READY_FOR_QUERY {
                    self.status = be::ready_for_query(frame.body()).map_err(|e| self.proto(e))?;
                    self.pending.clear();
                    return Ok(());
                }
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => {
                self.broken = true;
                Err(BackendError::Timeout {
                    what: "ending an abandoned COPY",
                    addr,
                })
            }
        }
    }

    /// Closes the connection: a clean one gets Terminate first (best effort); a broken one (mid
    /// COPY, mid reply, after a protocol error) is just dropped, since any message sent into
    /// such a state would make the server log a protocol error.
    pub async fn close(mut self) {
        if self.broken || !self.pending.is_empty() || !self.scanner.at_boundary() {
            return;
        }
        let mut out = BytesMut::new();
        messages::terminate(&mut out);
        let _ = tokio::time::timeout(Duration::from_millis(100), self.stream.write_all(&out)).await;
    }

    pub(crate) fn proto(&self, source: ProtocolError) -> BackendError {
        BackendError::Protocol {
            addr: self.addr.clone(),
            source,
        }
    }

    pub(crate) fn server_error(&self, frame: &Frame) -> BackendError {
        match be::error_fields(frame.body()) {
            Ok(fields) => BackendError::Server {
                addr: self.addr.clone(),
                fields,
            },
            Err(e) => self.proto(e),
        }
    }
}

/// Refuses a server-first-message whose PBKDF2 iteration count is above what causeway accepts
/// in a verifier: the count is the server's choice, and each iteration is CPU time here.
fn check_iterations(server_first: &[u8]) -> std::io::Result<()> {
    let iterations = std::str::from_utf8(server_first)
        .ok()
        .and_then(|m| m.split(',').find_map(|a| a.strip_prefix("i=")))
        .and_then(|i| i.parse::<u64>().ok());
    match iterations {
        Some(n) if n > u64::from(crate::auth::MAX_SCRAM_ITERATIONS) => {
            Err(std::io::Error::other(format!(
                "the server asks for {n} PBKDF2 iterations, more than {}",
                crate::auth::MAX_SCRAM_ITERATIONS
            )))
        }
        // Anything malformed is the SCRAM client's to refuse.
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
