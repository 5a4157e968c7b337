//! `[auth_query]`: users who are not in `[[users]]`, looked up on the primary (PgBouncer's
//! `auth_user` + `auth_query`).
//!
//! A login for a name the configuration does not list runs the configured query, with the
//! name as `$1`, over a connection of its own made as `auth_query.user` (never as the client),
//! with `[server_tls]` as the watcher and the catalog loader use it. The query returns the
//! name and the stored secret (`pg_authid.rolpassword`: a SCRAM verifier or an md5 hash);
//! the client then authenticates against that secret exactly as against a configured one, and
//! causeway logs in to the servers as the client by pass-through (see `auth::passthrough`).
//!
//! What is found is cached, at most `cache_size` names, for `cache_ttl`; the next login after
//! that looks the name up again (a refresh: a dropped user is refused, a changed password takes
//! effect). A name not found is remembered for `negative_ttl` in a cache of its own (so a flood
//! of made-up names cannot push real users out), which bounds the lookups one unknown name
//! causes, and goes through the same mock SCRAM exchange as any unknown user: 28P01, no way to
//! tell it from a wrong password. Concurrent logins of one name share one lookup.
//!
//! Configured users never come here: the session looks in `[[users]]` first, so they pay
//! nothing. The cache belongs to the settings: a reload starts with an empty one.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::auth::{self, PassThrough, ScramKeys, StoredSecret};
use crate::backend::connection::ServerAuth;
use crate::config::AuthQueryConfig;
use crate::net::server_tls::ServerTls;
use crate::topology::TopologyHandle;

/// `application_name` of the lookup connection (what `pg_stat_activity` shows).
pub const APPLICATION_NAME: &str = "causeway-auth-query";

/// Why a lookup could not be done (as opposed to a name not found).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    /// No primary, nor a standby to fall back on, within the connect timeout.
    #[error("no server is available to look the user up on")]
    NoServer,
    /// Connecting or querying failed.
    #[error("auth_query on {addr}: {reason}")]
    Failed {
        /// host:port of the node.
        addr: String,
        /// What went wrong (never a secret: the server's message or a timeout).
        reason: String,
    },
}

/// A user the query found.
#[derive(Debug)]
pub struct Found {
    /// The stored secret the client must prove it knows.
    pub secret: StoredSecret,
    /// When it was read from the server.
    fetched: Instant,
}

impl Found {
    /// The method the client authenticates with: the one its stored secret belongs to, as
    /// PostgreSQL would choose (md5 for an md5 hash, else SCRAM-SHA-256).
    pub fn method(&self) -> auth::Method {
        if self.secret.md5_hash().is_some() {
            auth::Method::Md5
        } else {
            auth::Method::ScramSha256
        }
    }

    /// What causeway logs in to the servers with once the client authenticated: the md5 hash
    /// itself, the keys its SCRAM login revealed (`learned`), or a plain password should the
    /// query return one.
    pub fn server_auth(&self, learned: Option<&ScramKeys>) -> ServerAuth {
        if let Some(hash) = self.secret.md5_hash() {
            return ServerAuth::PassThrough {
                secret: Arc::new(PassThrough::Md5(hash)),
                since: self.fetched,
            };
        }
        if let Some(plain) = self.secret.plain() {
            return ServerAuth::Password(plain.to_owned());
        }
        match learned {
            Some(keys) => ServerAuth::PassThrough {
                secret: Arc::new(PassThrough::Scram(keys.clone())),
                since: self.fetched,
            },
            None => ServerAuth::None,
        }
    }
}

/// The outcome of one lookup, shared by the logins that waited for it.
type Outcome = Result<Option<Arc<Found>>, LookupError>;

/// Names with their value and when it was stored; at most `cap`, the oldest going first.
struct Bounded<T> {
    /// Most entries.
    cap: usize,
    /// Value, when stored, and its place in `order`.
    map: HashMap<String, (T, Instant, u64)>,
    /// Names by insertion sequence, oldest first.
    order: BTreeMap<u64, String>,
    /// Next sequence number.
    next: u64,
}

impl<T: Clone> Bounded<T> {
    fn new(cap: usize) -> Self {
        Bounded {
            cap: cap.max(1),
            map: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
        }
    }

    /// The value for `name` if stored less than `ttl` before `now`.
    fn fresh(&self, name: &str, now: Instant, ttl: Duration) -> Option<T> {
        let (value, at, _) = self.map.get(name)?;
        (now.saturating_duration_since(*at) < ttl).then(|| value.clone())
    }

    fn insert(&mut self, name: &str, value: T, now: Instant) {
        self.remove(name);
        let seq = self.next;
        self.next += 1;
        self.map.insert(name.to_owned(), (value, now, seq));
        self.order.insert(seq, name.to_owned());
        while self.map.len() > self.cap {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.map.remove(&oldest);
        }
    }

    fn remove(&mut self, name: &str) {
        if let Some((_, _, seq)) = self.map.remove(name) {
            self.order.remove(&seq);
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// The caches and the lookups in flight.
struct Cache {
    /// Users found.
    found: Bounded<Arc<Found>>,
    /// Names not found.
    missing: Bounded<()>,
    /// One lookup per name at a time: logins of a name being looked up wait for its outcome.
    in_flight: HashMap<String, Arc<OnceCell<Outcome>>>,
}

/// The lookup connection: which node it is on, and the prepared query.
struct Conn {
    /// The node.
    node: usize,
    /// Its address, `host:port` (for errors).
    addr: String,
    /// The client (queries are pipelined: several lookups share it at once).
    client: tokio_postgres::Client,
    /// The configured query, prepared.
    statement: tokio_postgres::Statement,
}

/// Looks users up, caches what it finds. One per settings generation.
pub struct AuthQuery {
    /// The role the lookup logs in as (`auth_query.user`).
    user: String,
    /// Its password (`auth_query.password`).
    password: Option<String>,
    /// The query, `$1` the user name (`auth_query.query`).
    query: String,
    /// The database the lookup connects to (`auth_query.database`).
    database: String,
    /// How long a user found is used without a new lookup (`auth_query.cache_ttl`).
    cache_ttl: Duration,
    /// How long a name not found stays so (`auth_query.negative_ttl`).
    negative_ttl: Duration,
    /// `[server_tls]`.
    tls: Arc<ServerTls>,
    /// Limit for connecting, and for one query.
    timeout: Duration,
    /// Caches and lookups in flight (never held across an await).
    cache: Mutex<Cache>,
    /// The connection, made on first use and again after an error or a change of primary;
    /// the async lock is held only while one is made.
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    /// Queries run so far (what the caches saved shows against the logins).
    lookups: AtomicU64,
}

impl std::fmt::Debug for AuthQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthQuery")
            .field("user", &self.user)
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl AuthQuery {
    /// A lookup with empty caches and no connection yet.
    pub fn new(auth_query: &AuthQueryConfig, tls: Arc<ServerTls>, timeout: Duration) -> AuthQuery {
        let cache = Cache {
            found: Bounded::new(auth_query.cache_size),
            missing: Bounded::new(auth_query.cache_size),
            in_flight: HashMap::new(),
        };
        AuthQuery {
            user: auth_query.user.clone(),
            password: auth_query.password.as_ref().map(|p| p.expose().to_owned()),
            query: auth_query.query.clone(),
            database: auth_query.database.clone(),
            cache_ttl: auth_query.cache_ttl,
            negative_ttl: auth_query.negative_ttl,
            tls,
            timeout,
            cache: Mutex::new(cache),
            conn: tokio::sync::Mutex::new(None),
            lookups: AtomicU64::new(0),
        }
    }

    /// The user named `user`: from the cache while fresh, else from the server (one lookup
    /// per name at a time). `Ok(None)`: no such user, or one without a usable secret.
    pub async fn lookup(&self, user: &str, topology: &TopologyHandle) -> Outcome {
        let cell = {
            let now = Instant::now();
            let mut cache = self.cache.lock();
            if let Some(found) = cache.found.fresh(user, now, self.cache_ttl) {
                return Ok(Some(found));
            }
            if cache.missing.fresh(user, now, self.negative_ttl).is_some() {
                return Ok(None);
            }
            cache.in_flight.entry(user.to_owned()).or_default().clone()
        };
        // The first caller runs the query; should it give up (its client left), the next
        // waiter runs it instead.
        let outcome = cell
            .get_or_init(|| self.query(user, topology))
            .await
            .clone();
        let mut cache = self.cache.lock();
        // The first caller back records the outcome; errors are not cached.
        if cache
            .in_flight
            .get(user)
            .is_some_and(|c| Arc::ptr_eq(c, &cell))
        {
            cache.in_flight.remove(user);
            let now = Instant::now();
            match &outcome {
                Ok(Some(found)) => {
                    cache.missing.remove(user);
                    cache.found.insert(user, found.clone(), now);
                }
                Ok(None) => {
                    cache.found.remove(user);
                    cache.missing.insert(user, (), now);
                }
                Err(_) => {}
            }
        }
        outcome
    }

    /// Queries run since these settings were loaded.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// Users found and names not found in the caches now.
    pub fn cached(&self) -> (usize, usize) {
        let cache = self.cache.lock();
        (cache.found.len(), cache.missing.len())
    }

    /// Runs the query for `user` on the primary (or, with none, an eligible standby: roles
    /// and their secrets are replicated).
    async fn query(&self, user: &str, topology: &TopologyHandle) -> Outcome {
        let conn = self.connection(topology).await?;
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let failed = |reason: String| LookupError::Failed {
            addr: conn.addr.clone(),
            reason,
        };
        let rows =
            match tokio::time::timeout(self.timeout, conn.client.query(&conn.statement, &[&user]))
                .await
            {
                Ok(Ok(rows)) => rows,
                Ok(Err(e)) => {
                    self.forget(&conn).await;
                    return Err(failed(e.to_string()));
                }
                Err(_) => {
                    self.forget(&conn).await;
                    return Err(failed(format!("no answer within {:?}", self.timeout)));
                }
            };
        let row = match rows.as_slice() {
            [] => return Ok(None),
            [row] => row,
            _ => {
                return Err(failed(
                    "the query returned more than one row for one user name".to_owned(),
                ))
            }
        };
        if row.len() < 2 {
            return Err(failed(
                "the query must return two columns: the user name and its stored secret".to_owned(),
            ));
        }
        let name: Option<String> = row.try_get(0).map_err(|e| failed(e.to_string()))?;
        let secret: Option<String> = row.try_get(1).map_err(|e| failed(e.to_string()))?;
        // A role without a password (NULL), or a function's empty record: no login, as with
        // PostgreSQL. A row for another name means a sloppy query: refused all the same.
        let (Some(name), Some(secret)) = (name, secret) else {
            return Ok(None);
        };
        if name != user {
            tracing::warn!(
                user,
                "auth_query returned a row for another user name; login refused"
            );
            return Ok(None);
        }
        match StoredSecret::parse(&secret) {
            Ok(secret) => Ok(Some(Arc::new(Found {
                secret,
                fetched: Instant::now(),
            }))),
            Err(e) => {
                // The message names what is wrong, never the secret.
                tracing::warn!(user, error = %e, "auth_query returned an unusable secret; login refused");
                Ok(None)
            }
        }
    }

    /// The lookup connection to the node to ask now, made if needed.
    async fn connection(&self, topology: &TopologyHandle) -> Result<Arc<Conn>, LookupError> {
        // The node and its address from one snapshot (nodes come and go at run time).
        let pick = |t: &crate::topology::Topology| {
            let node = t
                .primary
                .or_else(|| t.nodes.iter().position(|n| n.is_eligible_standby()))?;
            let n = t.nodes.get(node)?;
            Some((node, n.host.clone(), n.port))
        };
        let target = match pick(&topology.load()) {
            Some(t) => t,
            None => {
                topology
                    .wait_until(self.timeout, |t| pick(t).is_some())
                    .await;
                pick(&topology.load()).ok_or(LookupError::NoServer)?
            }
        };
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            if conn.node == target.0 && !conn.client.is_closed() {
                return Ok(conn.clone());
            }
        }
        *slot = None;
        let conn = Arc::new(self.connect(target).await?);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Connects to `node` at `host:port` as `auth_query.user` and prepares the query.
    async fn connect(&self, (node, host, port): (usize, String, u16)) -> Result<Conn, LookupError> {
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let failed = |reason: String| LookupError::Failed {
            addr: addr.clone(),
            reason,
        };
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&host)
            .port(port)
            .user(&self.user)
            .dbname(&self.database)
            .application_name(APPLICATION_NAME)
            .connect_timeout(self.timeout);
        if let Some(p) = &self.password {
            cfg.password(p);
        }
        let work = async {
            let (client, _driver) = self.tls.connect_monitor(&mut cfg).await?;
            let statement = client.prepare(&self.query).await?;
            Ok::<_, tokio_postgres::Error>(Conn {
                node,
                addr: addr.clone(),
                client,
                statement,
            })
        };
        match tokio::time::timeout(self.timeout * 2, work).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => Err(failed(format!(
                "could not connect within {:?}",
                self.timeout * 2
            ))),
        }
    }

    /// Drops `conn` if it is still the current connection (after an error on it).
    async fn forget(&self, conn: &Arc<Conn>) {
        let mut slot = self.conn.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_keeps_the_newest_and_expires() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut b: Bounded<u32> = Bounded::new(2);
        b.insert("a", 1, t0);
        b.insert("b", 2, t0);
        b.insert("a", 3, t0);
        b.insert("c", 4, t0);
        assert_eq!(b.len(), 2);
        assert_eq!(b.fresh("b", t0, ttl), None, "oldest evicted");
        assert_eq!(b.fresh("a", t0, ttl), Some(3), "re-inserted counts as new");
        assert_eq!(b.fresh("c", t0, ttl), Some(4));
        assert_eq!(b.fresh("c", t0 + ttl, ttl), None, "expired");
        assert_eq!(b.fresh("c", t0, Duration::ZERO), None, "ttl 0 never fresh");
        b.remove("c");
        assert_eq!(b.len(), 1);
        assert_eq!(b.order.len(), 1);
    }

    fn found(secret: &str) -> Found {
        Found {
            secret: StoredSecret::parse(secret).unwrap(),
            fetched: Instant::now(),
        }
    }

    #[test]
    fn method_and_server_auth_follow_the_secret() {
        let md5 = found("md50123456789abcdef0123456789abcdef");
        assert_eq!(md5.method(), auth::Method::Md5);
        assert!(matches!(
            md5.server_auth(None),
            ServerAuth::PassThrough { .. }
        ));
        let verifier = postgres_protocol::password::scram_sha_256(b"pw");
        let scram = found(&verifier);
        assert_eq!(scram.method(), auth::Method::ScramSha256);
        assert!(matches!(scram.server_auth(None), ServerAuth::None));
        let plain = found("pw");
        assert!(matches!(plain.server_auth(None), ServerAuth::Password(_)));
    }

    #[tokio::test]
    async fn no_server_is_an_error_not_a_not_found() {
        let cfg = AuthQueryConfig {
            user: "lookup".into(),
            password: None,
            query: crate::config::DEFAULT_AUTH_QUERY.into(),
            database: "postgres".into(),
            cache_size: 10,
            cache_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
        };
        let aq = AuthQuery::new(
            &cfg,
            Arc::new(ServerTls::disabled()),
            Duration::from_millis(50),
        );
        let topology = TopologyHandle::new(crate::topology::Topology::initial(&[
            "127.0.0.1:1".to_owned()
        ]));
        assert!(matches!(
            aq.lookup("x", &topology).await,
            Err(LookupError::NoServer)
        ));
        assert_eq!(aq.cached(), (0, 0), "errors are not cached");
    }
}
