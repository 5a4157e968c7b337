//! Authentication and hostile or broken input, through the proxy in front of a real cluster:
//! the right SQLSTATE comes back, the connection is closed when it must be, nothing hangs, and
//! the proxy keeps serving well-behaved clients afterwards.
mod common;

use std::time::{Duration, Instant};

use causeway::cluster::{APP_MD5_PASSWORD, APP_MD5_USER, APP_PASSWORD, APP_TRUST_USER, APP_USER};
use common::raw::{self, Closed, RawConn};
use common::{connect_direct, sqlstate, Proxy};
use tokio_postgres::error::SqlState;

/// The proxy still serves an ordinary client.
async fn still_serves(proxy: &Proxy) {
    let client = proxy.connect().await;
    let n: i32 = client.query_one("select 41 + 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 42);
}

/// Reads until the proxy closes the connection (within 3 s) and returns the one ErrorResponse
/// it must have sent first.
async fn fatal_then_closed(conn: &mut RawConn) -> causeway::protocol::backend::ErrorFields {
    let msgs = match conn.recv_until_closed(Duration::from_secs(3)).await {
        Ok(m) => m,
        Err(m) => panic!("connection still open after 3 s; got {m:?}"),
    };
    let errors: Vec<_> = msgs.iter().filter(|m| m.tag == b'E').collect();
    assert_eq!(
        errors.len(),
        1,
        "expected exactly one ErrorResponse: {msgs:?}"
    );
    let e = errors[0].error();
    assert_eq!(e.severity, "FATAL", "{e:?}");
    e
}

// === authentication ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_28p01() {
    let proxy = common::start_proxy().await;
    let err = proxy
        .connect_as(APP_USER, "not-the-password", "postgres")
        .await
        .expect_err("wrong SCRAM password must be refused");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
    let err = proxy
        .connect_as(APP_MD5_USER, "not-the-password", "postgres")
        .await
        .expect_err("wrong md5 password must be refused");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
    still_serves(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_user_fails_as_a_wrong_password_does() {
    let proxy = common::start_proxy().await;
    // A user causeway does not know gets the same SCRAM exchange and the same 28P01 as a known
    // user with a wrong password: the user list cannot be probed.
    let err = proxy
        .connect_as("no_such_user", "whatever", "postgres")
        .await
        .expect_err("unknown user must be refused");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
    let wrong = proxy
        .connect_as(causeway::cluster::APP_USER, "not-the-password", "postgres")
        .await
        .expect_err("wrong password must be refused");
    assert_eq!(wrong.code(), err.code(), "{wrong}");
    // A startup packet without a user name at all.
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(&raw::startup(&[("database", "postgres")])).await;
    assert_eq!(fatal_then_closed(&mut conn).await.code, "28000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_auth_method_logs_in_as_its_user() {
    let proxy = common::start_proxy().await;
    for (user, password, method) in [
        (APP_USER, APP_PASSWORD, 10),        // AuthenticationSASL
        (APP_MD5_USER, APP_MD5_PASSWORD, 5), // AuthenticationMD5Password
        (APP_TRUST_USER, "ignored", 0),      // AuthenticationOk at once
    ] {
        let client = proxy
            .connect_as(user, password, "postgres")
            .await
            .unwrap_or_else(|e| panic!("{user} cannot log in: {e}"));
        let row = client
            .query_one("select current_user::text, session_user::text", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, &str>(0), user);
        assert_eq!(row.get::<_, &str>(1), user);

        // The proxy asks for the method configured for the user.
        let mut conn = RawConn::connect(proxy.addr).await;
        conn.send(&raw::startup(&[("user", user), ("database", "postgres")]))
            .await;
        let m = conn.recv().await;
        assert_eq!(m.tag, b'R', "{m:?}");
        assert_eq!(m.int32(), method, "authentication request for {user}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_password_message_is_refused() {
    let proxy = common::start_proxy().await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(&raw::startup(&[
        ("user", APP_USER),
        ("database", "postgres"),
    ]))
    .await;
    assert_eq!(conn.recv().await.tag, b'R');
    // A SASLInitialResponse announcing 1 GB.
    let started = Instant::now();
    let _ = conn.try_send(&[b'p', 0x40, 0, 0, 0]).await;
    assert_eq!(fatal_then_closed(&mut conn).await.code, "08P01");
    assert!(started.elapsed() < Duration::from_secs(2));
    still_serves(&proxy).await;
}

// === broken startup ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_startup_gets_08p01_and_the_proxy_goes_on() {
    let proxy = common::start_proxy().await;
    let cases: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        // Length below the minimum.
        &[0, 0, 0, 3, 0, 0, 0, 0],
        // A startup packet claiming 2 GB.
        &[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0],
        // A well-sized 3.0 packet whose parameters are not terminated.
        &[0, 0, 0, 14, 0, 3, 0, 0, b'u', b's', b'e', b'r', 0, b'x'],
    ];
    for bytes in cases {
        let mut conn = RawConn::connect(proxy.addr).await;
        let started = Instant::now();
        conn.send(bytes).await;
        let e = fatal_then_closed(&mut conn).await;
        assert_eq!(e.code, "08P01", "{bytes:?}: {e:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    still_serves(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_clients_are_closed_after_startup_timeout() {
    let proxy = common::start_proxy_with("startup_timeout = \"1s\"", "").await;
    // Connects and sends nothing.
    let mut silent = RawConn::connect(proxy.addr).await;
    // Sends half a startup packet and stalls.
    let mut slow = RawConn::connect(proxy.addr).await;
    slow.send(&raw::startup(&[("user", APP_USER)])[..10]).await;
    // Logs in, then stalls in the middle of SCRAM.
    let mut stalled = RawConn::connect(proxy.addr).await;
    stalled
        .send(&raw::startup(&[
            ("user", APP_USER),
            ("database", "postgres"),
        ]))
        .await;
    assert_eq!(stalled.recv().await.tag, b'R');
    // Logs in completely, then stays idle longer than the startup timeout: not affected.
    let (mut idle, _) = raw::login_trust(proxy.addr, APP_TRUST_USER, "postgres").await;

    let started = Instant::now();
    for conn in [&mut silent, &mut slow, &mut stalled] {
        match conn.recv_until_closed(Duration::from_secs(4)).await {
            Ok(msgs) => assert!(msgs.iter().all(|m| m.tag == b'E'), "{msgs:?}"),
            Err(msgs) => panic!("still open after {:?}: {msgs:?}", started.elapsed()),
        }
    }
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(3), "closed after {elapsed:?}");
    if elapsed < Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_millis(1500) - elapsed).await;
    }
    let msgs = idle.simple_query("select 1").await;
    assert!(raw::first_error(&msgs).is_none(), "{msgs:?}");
    still_serves(&proxy).await;
}

// === messages after login ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_announcing_2gb_is_refused_at_once() {
    let proxy = common::start_proxy().await;
    let (mut conn, _) = raw::login_trust(proxy.addr, APP_TRUST_USER, "postgres").await;
    let started = Instant::now();
    conn.send(&[b'Q', 0x7f, 0xff, 0xff, 0xff]).await;
    let e = fatal_then_closed(&mut conn).await;
    assert_eq!(e.code, "08P01", "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // An unknown message type is a protocol violation too.
    let (mut conn, _) = raw::login_trust(proxy.addr, APP_TRUST_USER, "postgres").await;
    conn.send(&raw::frame(b'!', b"hello")).await;
    assert_eq!(fatal_then_closed(&mut conn).await.code, "08P01");
    still_serves(&proxy).await;
}

/// PostgreSQL reads one message at a time: requests sent before a bad message are answered
/// before the FATAL. Pipelining drivers (tokio-postgres, pgjdbc batches) rely on it to attach
/// the error to the right request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_before_a_bad_message_are_answered_first() {
    let proxy = common::start_proxy().await;
    let (mut conn, _) = raw::login_trust(proxy.addr, APP_TRUST_USER, "postgres").await;
    let mut bytes = raw::query("select pg_sleep(0.3)::text, 'first'");
    bytes.extend_from_slice(&[b'Q', 0x7f, 0xff, 0xff, 0xff]);
    conn.send(&bytes).await;
    let msgs = conn
        .recv_until_closed(Duration::from_secs(5))
        .await
        .expect("closed after the bad message");
    let tags: Vec<u8> = msgs.iter().map(|m| m.tag).collect();
    assert_eq!(tags, b"TDCZE", "{msgs:?}");
    assert_eq!(msgs[1].data_row()[1].as_deref(), Some("first"));
    assert_eq!(msgs[4].sqlstate().as_deref(), Some("08P01"));
}

/// The proxy refuses a message while the client is still sending it, with a large reply to an
/// earlier request still on its way to a client that reads slowly. Closing a socket with unread
/// bytes makes the kernel send a reset, and a reset throws away whatever the proxy's socket
/// has not delivered yet: the client must still get the whole reply, the FATAL, then EOF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_and_error_are_not_lost_to_a_reset() {
    let proxy = common::start_proxy_with("max_message_size = 4096", "").await;
    // A small receive window: most of the reply waits in the proxy's socket.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(proxy.addr).await.unwrap();
    let mut conn = RawConn::from_stream(stream);
    raw::startup_trust(&mut conn, APP_TRUST_USER, "postgres").await;
    let (mut reader, writer) = conn.split();
    // A query with a 1 MB reply, then a message over the limit whose body keeps coming.
    async fn keep_writing(mut w: tokio::net::tcp::OwnedWriteHalf) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut first = raw::query("select repeat('x', 1000000)");
        first.extend_from_slice(&[b'Q', 0x00, 0x10, 0x00, 0x00]);
        w.write_all(&first).await?;
        let chunk = vec![b'y'; 16 * 1024];
        loop {
            w.write_all(&chunk).await?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let writing = tokio::spawn(keep_writing(writer));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut tags = Vec::new();
    let mut row_len = 0;
    let mut code = None;
    while let Ok(m) = reader.recv_within(Duration::from_secs(5)).await {
        tags.push(m.tag);
        match m.tag {
            b'D' => row_len = m.data_row()[0].as_ref().map_or(0, String::len),
            b'E' => {
                code = m.sqlstate();
                break;
            }
            _ => {}
        }
    }
    writing.abort();
    assert_eq!(tags, b"TDCZE", "messages received: {tags:?}");
    assert_eq!(row_len, 1_000_000);
    assert_eq!(code.as_deref(), Some("08P01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_message_size_is_enforced() {
    let proxy = common::start_proxy_with("max_message_size = 4096", "").await;
    let client = proxy.connect().await;
    // Under the limit: fine.
    let sql = format!("select length('{}')", "a".repeat(3000));
    let n: i32 = client.query_one(&sql, &[]).await.unwrap().get(0);
    assert_eq!(n, 3000);
    // Over the limit: FATAL 08P01, and the connection is gone.
    let sql = format!("select length('{}')", "a".repeat(10_000));
    let err = client.simple_query(&sql).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::PROTOCOL_VIOLATION), "{err:?}");
    assert!(
        common::eventually(Duration::from_secs(2), || async { client.is_closed() }).await,
        "client connection still open"
    );
    // A bound parameter over the limit.
    let client = proxy.connect().await;
    let err = client
        .query_one("select length($1::text)", &[&"b".repeat(10_000)])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::PROTOCOL_VIOLATION), "{err}");

    // The limit is on what clients send; the replies are not limited by it: big rows and a
    // long error message from the server come through and the session goes on.
    let client = proxy.connect().await;
    let n: i32 = client
        .query_one("select length(repeat('r', 100000))", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 100_000);
    let row: String = client
        .query_one("select repeat('r', 100000)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(row.len(), 100_000);
    let err = client
        .batch_execute("DO $$ BEGIN RAISE EXCEPTION 'long: %', repeat('e', 5000); END $$")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some("P0001"), "{err}");
    assert_eq!(err.as_db_error().unwrap().message().len(), 5006);
    assert_eq!(
        client
            .query_one("select 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

// === protocol versions and encryption requests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_minor_version_is_negotiated_down() {
    let proxy = common::start_proxy().await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(&raw::startup_version(
        3,
        2,
        &[
            ("user", APP_TRUST_USER),
            ("database", "postgres"),
            ("_pq_.foo", "bar"),
        ],
    ))
    .await;
    let msgs = conn.recv_until(b'Z').await;
    assert_eq!(msgs[0].tag, b'v', "{msgs:?}");
    let body = &msgs[0].body;
    let newest_minor = i32::from_be_bytes(body[0..4].try_into().unwrap());
    let count = i32::from_be_bytes(body[4..8].try_into().unwrap());
    assert_eq!(newest_minor, 0);
    assert_eq!(count, 1);
    assert_eq!(&body[8..], b"_pq_.foo\0");
    assert!(msgs.iter().any(|m| m.tag == b'R' && m.int32() == 0));
    let msgs = conn.simple_query("select 'negotiated'").await;
    let row = msgs.iter().find(|m| m.tag == b'D').expect("a row");
    assert_eq!(row.data_row(), vec![Some("negotiated".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_version_2_is_refused_with_an_error() {
    let proxy = common::start_proxy().await;
    for (major, minor) in [(2, 0), (4, 0)] {
        let mut conn = RawConn::connect(proxy.addr).await;
        conn.send(&raw::startup_version(
            major,
            minor,
            &[("user", APP_TRUST_USER)],
        ))
        .await;
        let e = fatal_then_closed(&mut conn).await;
        assert_eq!(e.code, "0A000", "{major}.{minor}: {e:?}");
    }
    still_serves(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_gss_requests_are_declined_then_startup_works() {
    let proxy = common::start_proxy().await;
    for request in [raw::SSL_REQUEST, raw::GSSENC_REQUEST] {
        let mut conn = RawConn::connect(proxy.addr).await;
        conn.send(&request).await;
        assert_eq!(conn.recv_byte().await, b'N');
        let (_, msgs) = raw::startup_trust(&mut conn, APP_TRUST_USER, "postgres").await;
        assert!(msgs.iter().any(|m| m.tag == b'R' && m.int32() == 0));
        let msgs = conn.simple_query("select current_user").await;
        let row = msgs.iter().find(|m| m.tag == b'D').expect("a row");
        assert_eq!(row.data_row(), vec![Some(APP_TRUST_USER.to_owned())]);
    }
    // Both requests in a row (GSS declined, then SSL), as libpq does with gssencmode=prefer.
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(&raw::GSSENC_REQUEST).await;
    assert_eq!(conn.recv_byte().await, b'N');
    conn.send(&raw::SSL_REQUEST).await;
    assert_eq!(conn.recv_byte().await, b'N');
    raw::startup_trust(&mut conn, APP_TRUST_USER, "postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_connections_are_refused() {
    let proxy = common::start_proxy().await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(&raw::startup(&[
        ("user", APP_TRUST_USER),
        ("database", "postgres"),
        ("replication", "database"),
    ]))
    .await;
    assert_eq!(fatal_then_closed(&mut conn).await.code, "0A000");
}

// === databases and limits ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_database_is_3d000_from_the_server() {
    let proxy = common::start_proxy().await;
    let err = proxy
        .connect_as(APP_USER, APP_PASSWORD, "nope_no_such_db")
        .await
        .expect_err("unknown database must be refused");
    assert_eq!(err.code(), Some(&SqlState::INVALID_CATALOG_NAME), "{err}");
    let db = err.as_db_error().unwrap();
    assert!(db.message().contains("nope_no_such_db"), "{}", db.message());
    still_serves(&proxy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_over_max_client_connections_get_53300() {
    let proxy = common::start_proxy_with("max_client_connections = 2", "").await;
    let a = proxy.connect().await;
    let b = proxy.connect().await;
    let err = proxy
        .connect_as(APP_USER, APP_PASSWORD, "postgres")
        .await
        .expect_err("a third client must be refused");
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err}");
    assert_eq!(
        a.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    drop(b);
    // The slot comes back once the session is gone.
    assert!(
        common::eventually(Duration::from_secs(3), || async {
            proxy
                .connect_as(APP_USER, APP_PASSWORD, "postgres")
                .await
                .is_ok()
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_over_their_max_connections_get_53300() {
    let toml = common::config_toml("", "").replacen(
        "auth = \"trust\"\n",
        "auth = \"trust\"\nmax_connections = 2\n",
        1,
    );
    assert!(toml.contains("max_connections = 2"));
    let proxy = common::start_proxy_from(toml).await;
    let a = proxy
        .connect_as(APP_TRUST_USER, "ignored", "postgres")
        .await
        .unwrap();
    let b = proxy
        .connect_as(APP_TRUST_USER, "ignored", "postgres")
        .await
        .unwrap();
    let err = proxy
        .connect_as(APP_TRUST_USER, "ignored", "postgres")
        .await
        .expect_err("a third connection of the user must be refused");
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS), "{err}");
    let message = err.as_db_error().map(|d| d.message().to_owned());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("too many connections for role")),
        "{message:?}"
    );
    // Other users are not limited by it.
    let other = proxy.connect().await;
    assert_eq!(
        other
            .query_one("select 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    assert_eq!(
        a.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    drop(b);
    assert!(
        common::eventually(Duration::from_secs(3), || async {
            proxy
                .connect_as(APP_TRUST_USER, "ignored", "postgres")
                .await
                .is_ok()
        })
        .await,
        "the slot comes back once a session of the user is gone"
    );
}

// === cancel keys ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_needs_the_right_secret() {
    let proxy = common::start_proxy().await;
    let direct = connect_direct(0).await;
    let (mut conn, key) = raw::login_trust(proxy.addr, APP_TRUST_USER, "postgres").await;
    let msgs = conn.simple_query("select pg_backend_pid()").await;
    let row = msgs.iter().find(|m| m.tag == b'D').expect("a row");
    let pid: i32 = row.data_row()[0].as_deref().unwrap().parse().unwrap();

    conn.send(&raw::query("select pg_sleep(1.5), 'survived'"))
        .await;
    assert!(common::wait_backend(&direct, pid, "state = 'active'", Duration::from_secs(5)).await);
    for (p, s) in [
        (key.pid, key.secret.wrapping_add(1)),
        (key.pid.wrapping_add(1), key.secret),
        (pid, key.secret), // the server's pid is not the client's key
    ] {
        let mut c = RawConn::connect(proxy.addr).await;
        c.send(&raw::cancel_request(p, s)).await;
        assert_eq!(
            c.recv_until_closed(Duration::from_secs(3))
                .await
                .unwrap()
                .len(),
            0,
            "a cancel request gets no answer"
        );
    }
    let msgs = conn.recv_until(b'Z').await;
    assert!(
        raw::first_error(&msgs).is_none(),
        "cancelled by a wrong key: {msgs:?}"
    );

    // The right key cancels.
    conn.send(&raw::query("select pg_sleep(20)")).await;
    assert!(common::wait_backend(&direct, pid, "state = 'active'", Duration::from_secs(5)).await);
    let started = Instant::now();
    let mut c = RawConn::connect(proxy.addr).await;
    c.send(&raw::cancel_request(key.pid, key.secret)).await;
    let msgs = conn.recv_until(b'Z').await;
    assert_eq!(
        raw::first_error(&msgs).map(|e| e.code).as_deref(),
        Some("57014")
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        conn.recv_within(Duration::from_millis(200)).await.err(),
        Some(Closed::TimedOut),
        "the session must stay open after a cancel"
    );
}
