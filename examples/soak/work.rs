//! The clients: each runs one kind of work in a loop through causeway until told to stop, and
//! records every outcome (latency of successes into the current window's histogram, failures
//! with their SQLSTATE and time).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls};

/// Longest any single operation may take before it counts as an error (`timeout`). Longer
/// than causeway's own waits (`pool.pool_timeout` 30 s, `routing.primary_wait` 10 s), so a
/// request causeway gives up on shows causeway's error rather than the client's impatience.
pub const OP_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between a client's operations.
const THINK: Duration = Duration::from_millis(5);
/// A client closes its connection properly (Terminate) and opens a new one this often.
const OPS_PER_CONNECTION: u64 = 500;

/// The kinds of work, one per client, assigned round robin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Simple-protocol reads.
    SimpleRead,
    /// Extended-protocol reads of a statement prepared once per connection.
    PreparedRead,
    /// Autocommit INSERTs (extended protocol).
    Write,
    /// BEGIN; INSERT ... RETURNING; UPDATE; SELECT; COMMIT (every tenth rolled back).
    Transaction,
    /// COPY FROM STDIN and COPY TO STDOUT, alternating.
    Copy,
    /// `SELECT pg_sleep(2)` cancelled after 100 ms with a CancelRequest.
    Cancel,
    /// Opens a connection, BEGINs, writes, then drops the socket without Terminate (half of
    /// the time while a statement is still running on the server).
    Vanish,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::SimpleRead,
        Kind::PreparedRead,
        Kind::Write,
        Kind::Transaction,
        Kind::Copy,
        Kind::Cancel,
        Kind::Vanish,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::SimpleRead => "simple_read",
            Kind::PreparedRead => "prepared_read",
            Kind::Write => "write",
            Kind::Transaction => "transaction",
            Kind::Copy => "copy",
            Kind::Cancel => "cancel",
            Kind::Vanish => "vanish",
        }
    }
}

/// One failed operation.
#[derive(Debug, Clone)]
pub struct Failure {
    /// When the failed operation began.
    pub started: Instant,
    /// When it failed.
    pub at: Instant,
    pub kind: Kind,
    /// SQLSTATE, or `closed` / `timeout` / `other`.
    pub code: String,
    pub message: String,
}

/// What all clients record into.
pub struct Shared {
    pub stop: AtomicBool,
    /// Latency (µs) of the successful operations of the current sampling window.
    pub window: Mutex<Histogram<u64>>,
    /// Successful operations per kind (index in [`Kind::ALL`]).
    pub ok: [AtomicU64; 7],
    pub failures: Mutex<Vec<Failure>>,
    /// Cancels whose statement finished anyway (the CancelRequest came too late or too early).
    pub cancels_missed: AtomicU64,
    /// Client connections currently open.
    pub connected: AtomicU64,
}

impl Shared {
    pub fn new() -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            window: Mutex::new(Histogram::new_with_bounds(1, 120_000_000, 3).expect("bounds")),
            ok: Default::default(),
            failures: Mutex::new(Vec::new()),
            cancels_missed: AtomicU64::new(0),
            connected: AtomicU64::new(0),
        }
    }

    fn success(&self, kind: Kind, started: Instant) {
        let us = started.elapsed().as_micros().clamp(1, 120_000_000) as u64;
        let _ = self.window.lock().unwrap().record(us);
        self.ok[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn failure(&self, kind: Kind, started: Instant, e: &OpError) {
        let (code, message) = match e {
            OpError::Pg(e) => (code(e), describe(e)),
            OpError::Timeout(step) => ("timeout".to_owned(), format!("no answer to {step}")),
        };
        self.failures.lock().unwrap().push(Failure {
            started,
            at: Instant::now(),
            kind,
            code,
            message,
        });
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// An error's kind: its SQLSTATE, or `closed` when the connection itself went away.
pub fn code(e: &tokio_postgres::Error) -> String {
    match e.code() {
        Some(code) => code.code().to_owned(),
        None if e.is_closed() => "closed".to_owned(),
        None => "other".to_owned(),
    }
}

/// An error's message: the server's (or causeway's) for an ErrorResponse, else the client
/// library's with its cause.
fn describe(e: &tokio_postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => db.message().to_owned(),
        (None, Some(cause)) => format!("{e}: {cause}"),
        (None, None) => e.to_string(),
    }
}

#[derive(Debug)]
enum OpError {
    Pg(tokio_postgres::Error),
    /// No answer to this step in time.
    Timeout(&'static str),
}

impl From<tokio_postgres::Error> for OpError {
    fn from(e: tokio_postgres::Error) -> Self {
        OpError::Pg(e)
    }
}

/// A client connection and its connection task.
struct Conn {
    client: Client,
    task: JoinHandle<()>,
    shared: Arc<Shared>,
    /// Prepared read statement, made on first use.
    prepared: Option<tokio_postgres::Statement>,
}

impl Conn {
    async fn open(conninfo: &str, shared: &Arc<Shared>) -> Result<Conn, OpError> {
        let (client, conn) =
            tokio::time::timeout(OP_TIMEOUT, tokio_postgres::connect(conninfo, NoTls))
                .await
                .map_err(|_| OpError::Timeout("connect"))??;
        shared.connected.fetch_add(1, Ordering::Relaxed);
        let counter = shared.clone();
        let task = tokio::spawn(async move {
            let _ = conn.await;
            counter.connected.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(Conn {
            client,
            task,
            shared: shared.clone(),
            prepared: None,
        })
    }

    /// Drops the socket without a Terminate message: the client vanished.
    fn vanish(self) {
        self.task.abort();
        // The aborted task never reaches its decrement.
        self.shared.connected.fetch_sub(1, Ordering::Relaxed);
    }

    /// Closes properly (Terminate) and waits for the connection task.
    async fn close(self) {
        drop(self.client);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// Runs `fut`, the operation's `step`, with [`OP_TIMEOUT`].
async fn timed<T>(
    step: &'static str,
    fut: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, OpError> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(OpError::Timeout(step)),
    }
}

/// One client of `kind` (number `id`) until `shared.stop`.
pub async fn client(kind: Kind, id: usize, conninfo: String, shared: Arc<Shared>) {
    let mut conn: Option<Conn> = None;
    let mut n: u64 = 0;
    while !shared.stopped() {
        n += 1;
        if kind == Kind::Vanish {
            let started = Instant::now();
            match vanish_once(&conninfo, &shared, id, n).await {
                Ok(()) => shared.success(kind, started),
                Err(e) => shared.failure(kind, started, &e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        if conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            if let Some(c) = conn.take() {
                c.close().await;
            }
        }
        let connecting = Instant::now();
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::open(&conninfo, &shared).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    shared.failure(kind, connecting, &e);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let started = Instant::now();
        let result = match kind {
            Kind::SimpleRead => simple_read(c).await,
            Kind::PreparedRead => prepared_read(c, n).await,
            Kind::Write => write(c, id, n).await,
            Kind::Transaction => transaction(c, id, n).await,
            Kind::Copy => copy(c, id, n).await,
            Kind::Cancel => cancel(c, &shared).await,
            Kind::Vanish => unreachable!("handled above"),
        };
        match result {
            Ok(()) => shared.success(kind, started),
            Err(e) => {
                shared.failure(kind, started, &e);
                // A timed-out or failed connection may be in any state: start afresh.
                if matches!(e, OpError::Timeout(_)) || c.client.is_closed() {
                    if let Some(c) = conn.take() {
                        c.vanish();
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if n % OPS_PER_CONNECTION == 0 {
            if let Some(c) = conn.take() {
                c.close().await;
            }
        }
        tokio::time::sleep(THINK).await;
    }
    if let Some(c) = conn.take() {
        c.close().await;
    }
}

async fn simple_read(c: &mut Conn) -> Result<(), OpError> {
    timed(
        "simple read",
        c.client
            .simple_query("SELECT id, v FROM soak_t ORDER BY id DESC LIMIT 10"),
    )
    .await
    .map(drop)
}

async fn prepared_read(c: &mut Conn, n: u64) -> Result<(), OpError> {
    let stmt = match &c.prepared {
        Some(s) => s.clone(),
        None => {
            let s = timed(
                "prepare",
                c.client
                    .prepare("SELECT id, v, note FROM soak_t WHERE id > $1 ORDER BY id LIMIT 5"),
            )
            .await?;
            c.prepared.insert(s).clone()
        }
    };
    let from = (n as i64 * 7919) % 10_000;
    timed("prepared read", c.client.query(&stmt, &[&from]))
        .await
        .map(drop)
}

async fn write(c: &mut Conn, id: usize, n: u64) -> Result<(), OpError> {
    let client = id as i32;
    let v = n as i32;
    timed(
        "insert",
        c.client.execute(
            "INSERT INTO soak_t (client, v, note) VALUES ($1, $2, 'w')",
            &[&client, &v],
        ),
    )
    .await
    .map(drop)
}

async fn transaction(c: &mut Conn, id: usize, n: u64) -> Result<(), OpError> {
    let sql = format!(
        "BEGIN; \
         WITH i AS (INSERT INTO soak_t (client, v, note) VALUES ({id}, {n}, 't') RETURNING id) \
         UPDATE soak_t SET v = v + 1 FROM i WHERE soak_t.id = i.id; \
         SELECT count(*) FROM soak_t WHERE client = {id} AND id > (SELECT max(id) - 100 FROM soak_t); \
         {end}",
        end = if n % 10 == 0 { "ROLLBACK" } else { "COMMIT" }
    );
    // A multi-statement transaction over the extended protocol as well, every other time.
    if n % 2 == 0 {
        timed(
            "multi-statement Query (BEGIN ... COMMIT)",
            c.client.batch_execute(&sql),
        )
        .await
    } else {
        let t = timed("BEGIN", c.client.transaction()).await?;
        let client = id as i32;
        let v = n as i32;
        let row = timed(
            "INSERT ... RETURNING in a transaction",
            t.query_one(
                "INSERT INTO soak_t (client, v, note) VALUES ($1, $2, 't') RETURNING id",
                &[&client, &v],
            ),
        )
        .await?;
        let new_id: i64 = row.get(0);
        timed(
            "UPDATE in a transaction",
            t.execute("UPDATE soak_t SET v = v + 1 WHERE id = $1", &[&new_id]),
        )
        .await?;
        timed(
            "SELECT in a transaction",
            t.query_one("SELECT v FROM soak_t WHERE id = $1", &[&new_id]),
        )
        .await?;
        timed("COMMIT", t.commit()).await
    }
}

async fn copy(c: &mut Conn, id: usize, n: u64) -> Result<(), OpError> {
    if n % 2 == 0 {
        let sink = timed(
            "COPY FROM STDIN start",
            c.client
                .copy_in::<_, bytes::Bytes>("COPY soak_copy (client, v, note) FROM STDIN"),
        )
        .await?;
        let mut rows = String::new();
        for i in 0..50 {
            rows.push_str(&format!("{id}\t{i}\tcopy row {n}\n"));
        }
        let fut = async move {
            let mut sink = std::pin::pin!(sink);
            sink.send(bytes::Bytes::from(rows)).await?;
            sink.finish().await
        };
        timed("COPY FROM STDIN data and CopyDone", fut)
            .await
            .map(drop)
    } else {
        let stream = timed(
            "COPY TO STDOUT start",
            c.client
                .copy_out("COPY (SELECT * FROM soak_copy ORDER BY id DESC LIMIT 200) TO STDOUT"),
        )
        .await?;
        let fut = async move {
            let mut stream = std::pin::pin!(stream);
            let mut bytes = 0usize;
            while let Some(chunk) = stream.next().await {
                bytes += chunk?.len();
            }
            Ok(bytes)
        };
        timed("COPY TO STDOUT rows", fut).await.map(drop)
    }
}

async fn cancel(c: &mut Conn, shared: &Shared) -> Result<(), OpError> {
    let token = c.client.cancel_token();
    let (result, cancelled) = tokio::join!(
        timed(
            "pg_sleep to cancel",
            c.client.simple_query("SELECT pg_sleep(2)")
        ),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            token.cancel_query(NoTls).await
        }
    );
    if let Err(e) = cancelled {
        return Err(OpError::Pg(e));
    }
    match result {
        Err(OpError::Pg(e))
            if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) =>
        {
            Ok(())
        }
        Ok(_) => {
            shared.cancels_missed.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Connects, opens a transaction, writes, and vanishes: the socket is dropped without
/// Terminate, with the transaction open (and, every other time, a statement running).
async fn vanish_once(
    conninfo: &str,
    shared: &Arc<Shared>,
    id: usize,
    n: u64,
) -> Result<(), OpError> {
    let c = Conn::open(conninfo, shared).await?;
    let sql = format!("BEGIN; INSERT INTO soak_t (client, v, note) VALUES ({id}, {n}, 'vanish')");
    if let Err(e) = timed(
        "BEGIN; INSERT before vanishing",
        c.client.batch_execute(&sql),
    )
    .await
    {
        c.vanish();
        return Err(e);
    }
    if n % 2 == 0 {
        // A statement in flight when the socket goes.
        let running = c.client.simple_query("SELECT pg_sleep(1)");
        let _ = tokio::time::timeout(Duration::from_millis(50), running).await;
    }
    c.vanish();
    Ok(())
}
