//! The idle-client mode: open N authenticated connections to a proxy, in bounded batches, and
//! see how much its resident memory grows per connection.
//!
//! A client counts as authenticated once it has received AuthenticationOk. PgBouncer then sends
//! ReadyForQuery at once; causeway (session pooling today) first checks out a server connection,
//! so past its pool size the remaining clients stay authenticated but parked in the pool queue
//! (the harness sets `pool_timeout = "0"` so they wait instead of failing). Both kinds are
//! counted and reported.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use causeway::protocol::backend::{self as be, AuthRequest};
use causeway::protocol::messages;
use causeway::protocol::startup::StartupMessage;
use causeway::protocol::{decode_frame, DEFAULT_MAX_MESSAGE_LEN};

use crate::procs;
use crate::scram::{SaltCache, ScramClient};

/// What the idle clients saw after sending their SCRAM proof.
#[derive(Default)]
pub struct Counters {
    /// AuthenticationOk received.
    pub auth_ok: AtomicU64,
    /// ReadyForQuery received.
    pub ready: AtomicU64,
    /// ErrorResponse after authentication.
    pub errors: AtomicU64,
    /// Connection closed by the proxy after authentication.
    pub closed: AtomicU64,
}

/// The outcome of one mode run.
#[derive(Debug, Clone, Default)]
pub struct MemoryResult {
    pub proxy: String,
    pub requested: usize,
    /// Logins completed: AuthenticationOk received, or the SCRAM proof sent and no answer
    /// (neither an error nor a disconnection) within [`PARKED_AFTER`].
    pub authenticated: usize,
    pub failed: usize,
    pub auth_ok: u64,
    pub ready: u64,
    pub errors_after_auth: u64,
    pub closed_after_auth: u64,
    pub rss_before: u64,
    pub rss_after: u64,
    pub rss_after_close: u64,
    pub connect_seconds: f64,
    pub proxy_cpu_seconds: f64,
    /// With all the idle clients connected: how long one more client took from connecting
    /// to its ReadyForQuery (`None` if it did not get there within 10 s).
    pub one_more_login: Option<Duration>,
    pub first_error: Option<String>,
}

impl MemoryResult {
    pub fn bytes_per_client(&self) -> Option<f64> {
        (self.authenticated > 0)
            .then(|| (self.rss_after as f64 - self.rss_before as f64) / self.authenticated as f64)
    }
}

/// A client that sent its SCRAM proof and heard nothing for this long counts as logged in and
/// parked: causeway verifies the proof at once but sends SASLFinal and AuthenticationOk only
/// together with the welcome, once a server connection is free.
pub const PARKED_AFTER: Duration = Duration::from_millis(500);

/// Logs in and then holds the connection open, reading whatever comes.
async fn idle_client(
    port: u16,
    user: &'static str,
    password: &'static str,
    database: &'static str,
    cache: SaltCache,
    authenticated: oneshot::Sender<Result<(), String>>,
    counters: Arc<Counters>,
) {
    let mut auth_tx = Some(authenticated);
    let fail = |tx: &mut Option<oneshot::Sender<Result<(), String>>>, e: String| {
        if let Some(tx) = tx.take() {
            let _ = tx.send(Err(e));
        }
    };
    let mut stream = match TcpStream::connect(("127.0.0.1", port)).await {
        Ok(s) => s,
        Err(e) => return fail(&mut auth_tx, format!("connect: {e}")),
    };
    let startup = StartupMessage::encode([
        ("user", user),
        ("database", database),
        ("application_name", "loadbench-idle"),
    ]);
    if let Err(e) = stream.write_all(&startup).await {
        return fail(&mut auth_tx, format!("send startup: {e}"));
    }
    let mut rbuf = BytesMut::with_capacity(1024);
    let mut scram: Option<ScramClient> = None;
    let mut proof_sent = false;
    loop {
        let frame = loop {
            match decode_frame(&mut rbuf, DEFAULT_MAX_MESSAGE_LEN) {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(e) => return fail(&mut auth_tx, e.to_string()),
            }
            let read = if proof_sent && auth_tx.is_some() {
                match tokio::time::timeout(PARKED_AFTER, stream.read_buf(&mut rbuf)).await {
                    Ok(r) => r,
                    Err(_) => {
                        // Logged in from the client's side; the proxy holds the answer back.
                        if let Some(tx) = auth_tx.take() {
                            let _ = tx.send(Ok(()));
                        }
                        continue;
                    }
                }
            } else {
                stream.read_buf(&mut rbuf).await
            };
            match read {
                Ok(0) | Err(_) => {
                    if auth_tx.is_none() {
                        counters.closed.fetch_add(1, Ordering::Relaxed);
                    }
                    return fail(&mut auth_tx, "connection closed".into());
                }
                Ok(_) => {}
            }
        };
        match frame.tag() {
            be::tag::AUTHENTICATION => {
                let mut out = BytesMut::new();
                match be::auth_request(frame.body()) {
                    Ok(AuthRequest::Ok) => {
                        counters.auth_ok.fetch_add(1, Ordering::Relaxed);
                        if let Some(tx) = auth_tx.take() {
                            let _ = tx.send(Ok(()));
                        }
                        continue;
                    }
                    Ok(AuthRequest::Sasl { .. }) => {
                        let (client, first) = ScramClient::start();
                        scram = Some(client);
                        messages::sasl_initial_response(
                            &mut out,
                            "SCRAM-SHA-256",
                            first.as_bytes(),
                        );
                    }
                    Ok(AuthRequest::SaslContinue(data)) => {
                        let Some(client) = scram.as_mut() else {
                            return fail(&mut auth_tx, "SASLContinue before SASL".into());
                        };
                        match client.respond(data, password.as_bytes(), &cache) {
                            Ok(last) => {
                                messages::sasl_response(&mut out, last.as_bytes());
                                proof_sent = true;
                            }
                            Err(e) => return fail(&mut auth_tx, e),
                        }
                    }
                    Ok(AuthRequest::SaslFinal(data)) => {
                        if let Err(e) = scram
                            .as_ref()
                            .map_or(Err("no SCRAM".into()), |c| c.finish(data))
                        {
                            return fail(&mut auth_tx, e);
                        }
                        continue;
                    }
                    Ok(AuthRequest::Cleartext) => messages::password(&mut out, password.as_bytes()),
                    Ok(other) => {
                        return fail(
                            &mut auth_tx,
                            format!("unsupported authentication {other:?}"),
                        )
                    }
                    Err(e) => return fail(&mut auth_tx, e.to_string()),
                }
                if let Err(e) = stream.write_all(&out).await {
                    return fail(&mut auth_tx, format!("send auth: {e}"));
                }
            }
            be::tag::ERROR_RESPONSE => {
                let msg = be::error_fields(frame.body())
                    .map(|f| format!("{} {}: {}", f.severity, f.code, f.message))
                    .unwrap_or_else(|e| e.to_string());
                if auth_tx.is_none() {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                }
                return fail(&mut auth_tx, msg);
            }
            be::tag::READY_FOR_QUERY => {
                counters.ready.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// Opens `n` idle authenticated clients to the proxy on `port` (process `pid`), `batch` at a
/// time, and measures its RSS before, with all of them open, and after they are closed.
pub fn measure(
    proxy: &str,
    pid: u32,
    port: u16,
    n: usize,
    batch: usize,
    settle: Duration,
) -> Result<MemoryResult, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let user = crate::proxies::USER;
    let password = crate::proxies::PASSWORD;
    let database = crate::proxies::DATABASE;
    runtime.block_on(async move {
        let cache = SaltCache::default();
        let counters = Arc::new(Counters::default());
        // Every client of this measurement: the same proxy, account and salt cache.
        let client =
            |tx, counters| idle_client(port, user, password, database, cache.clone(), tx, counters);
        // One client first, closed again, so lazily built state (runtime, pool, caches) is in the
        // baseline, not in the per-client figure.
        {
            let mut warm = JoinSet::new();
            let (tx, rx) = oneshot::channel();
            warm.spawn(client(tx, Arc::new(Counters::default())));
            match tokio::time::timeout(Duration::from_secs(30), rx).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => return Err(format!("{proxy}: warm-up client failed: {e}")),
                _ => return Err(format!("{proxy}: warm-up client timed out")),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            warm.abort_all();
            while warm.join_next().await.is_some() {}
            tokio::time::sleep(settle).await;
        }
        let mut result = MemoryResult {
            proxy: proxy.to_owned(),
            requested: n,
            rss_before: procs::status_bytes(pid, "VmRSS").unwrap_or(0),
            ..MemoryResult::default()
        };
        let cpu_before = procs::tree_cpu_seconds(pid);
        let started = Instant::now();
        let mut clients = JoinSet::new();
        let mut opened = 0;
        while opened < n {
            let this_batch = batch.min(n - opened);
            let mut waits = Vec::with_capacity(this_batch);
            for _ in 0..this_batch {
                let (tx, rx) = oneshot::channel();
                clients.spawn(client(tx, counters.clone()));
                waits.push(rx);
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            for rx in waits {
                match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok(Ok(()))) => result.authenticated += 1,
                    Ok(Ok(Err(e))) => {
                        result.failed += 1;
                        result.first_error.get_or_insert(e);
                    }
                    _ => {
                        result.failed += 1;
                        result.first_error.get_or_insert("timed out".into());
                    }
                }
            }
            opened += this_batch;
            if result.failed > n / 100 + 10 {
                result.first_error = result
                    .first_error
                    .map(|e| format!("{e} (stopped after {} failures)", result.failed));
                break;
            }
        }
        result.connect_seconds = started.elapsed().as_secs_f64();
        tokio::time::sleep(settle).await;
        result.rss_after = procs::status_bytes(pid, "VmRSS").unwrap_or(0);
        result.proxy_cpu_seconds = procs::tree_cpu_seconds(pid) - cpu_before;
        // One more client, the (n+1)th: is it still served at once?
        {
            let ready = Arc::new(Counters::default());
            let (tx, _rx) = oneshot::channel();
            let begun = Instant::now();
            clients.spawn(client(tx, ready.clone()));
            while begun.elapsed() < Duration::from_secs(10) {
                if ready.ready.load(Ordering::Relaxed) > 0 {
                    result.one_more_login = Some(begun.elapsed());
                    break;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        result.ready = counters.ready.load(Ordering::Relaxed);
        result.auth_ok = counters.auth_ok.load(Ordering::Relaxed);
        result.errors_after_auth = counters.errors.load(Ordering::Relaxed);
        result.closed_after_auth = counters.closed.load(Ordering::Relaxed);
        clients.abort_all();
        while clients.join_next().await.is_some() {}
        tokio::time::sleep(settle * 2).await;
        result.rss_after_close = procs::status_bytes(pid, "VmRSS").unwrap_or(0);
        Ok(result)
    })
}
