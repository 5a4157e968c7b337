//! Server connections against scripted servers: authentication, TLS negotiation, replies.

use super::*;

/// A fake server that starts SCRAM, answers the client-first with `server_first_tail`
/// appended to the nonce, and then says AuthenticationOk without a server signature.
async fn lying_server(server_first_tail: &'static str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let len = s.read_i32().await.unwrap();
        let mut startup = vec![0u8; len as usize - 4];
        s.read_exact(&mut startup).await.unwrap();
        let r = |code: i32, payload: &[u8]| {
            let mut m = vec![b'R'];
            m.extend((8 + payload.len() as i32).to_be_bytes());
            m.extend(code.to_be_bytes());
            m.extend(payload);
            m
        };
        s.write_all(&r(10, b"SCRAM-SHA-256\0\0")).await.unwrap();
        let mut body = Vec::new();
        assert_eq!(s.read_u8().await.unwrap(), b'p');
        let len = s.read_i32().await.unwrap();
        body.resize(len as usize - 4, 0);
        s.read_exact(&mut body).await.unwrap();
        let text = String::from_utf8_lossy(&body).into_owned();
        let nonce = text.split("r=").nth(1).unwrap().to_owned();
        let first = format!("r={nonce}srv{server_first_tail}");
        s.write_all(&r(11, first.as_bytes())).await.unwrap();
        if s.read_u8().await.is_ok() {
            let len = s.read_i32().await.unwrap();
            body.resize(len as usize - 4, 0);
            s.read_exact(&mut body).await.unwrap();
            s.write_all(&r(0, b"")).await.unwrap();
        }
        let _ = s.read_u8().await;
    });
    port
}

fn target(port: u16) -> ConnectTarget {
    ConnectTarget {
        node: 0,
        host: "127.0.0.1".to_owned(),
        port,
        user: "u".to_owned(),
        database: "d".to_owned(),
        auth: ServerAuth::Password("pw".to_owned()),
        nodelay: true,
        keepalive: None,
        tls: Arc::new(ServerTls::disabled()),
    }
}

/// A server whose pg_hba method is `password`: it asks for a cleartext password and
/// reports what it got (`None`: the client hung up instead), then lets the client in.
async fn cleartext_server() -> (u16, tokio::sync::oneshot::Receiver<Option<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let len = s.read_i32().await.unwrap();
        let mut startup = vec![0u8; len as usize - 4];
        s.read_exact(&mut startup).await.unwrap();
        s.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await.unwrap();
        if s.read_u8().await.ok() != Some(b'p') {
            let _ = tx.send(None);
            return;
        }
        let len = s.read_i32().await.unwrap();
        let mut body = vec![0u8; len as usize - 4];
        s.read_exact(&mut body).await.unwrap();
        let _ = tx.send(Some(body));
        s.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 0, b'Z', 0, 0, 0, 5, b'I'])
            .await
            .unwrap();
        let _ = s.read_u8().await;
    });
    (port, rx)
}

#[tokio::test]
async fn a_cleartext_password_is_not_sent_over_plaintext_unless_allowed() {
    let (port, got) = cleartext_server().await;
    let Err(err) = ServerConn::connect(&target(port), Duration::from_secs(5)).await else {
        panic!("a cleartext password request over plaintext must be refused");
    };
    assert!(matches!(err, BackendError::UnsupportedAuth { .. }), "{err}");
    assert!(
        err.to_string().contains("allow_cleartext_without_tls"),
        "{err}"
    );
    assert_eq!(got.await.unwrap(), None, "the password never left causeway");

    let (port, got) = cleartext_server().await;
    let mut allowed = target(port);
    allowed.tls = Arc::new(ServerTls {
        allow_cleartext_without_tls: true,
        ..ServerTls::disabled()
    });
    let conn = ServerConn::connect(&allowed, Duration::from_secs(5)).await;
    assert!(conn.is_ok(), "{:?}", conn.err());
    assert_eq!(got.await.unwrap().as_deref(), Some(&b"pw\0"[..]));
}

#[tokio::test]
async fn a_server_that_skips_its_scram_signature_is_refused() {
    let port = lying_server(",s=c2FsdA==,i=4096").await;
    let Err(err) = ServerConn::connect(&target(port), Duration::from_secs(5)).await else {
        panic!("AuthenticationOk without a server signature must be refused");
    };
    assert!(err.to_string().contains("final signature"), "{err}");
}

#[tokio::test]
async fn a_server_asking_for_too_many_iterations_is_refused() {
    let port = lying_server(",s=c2FsdA==,i=2000000000").await;
    let Err(err) = ServerConn::connect(&target(port), Duration::from_secs(5)).await else {
        panic!("an iteration count above the bound must be refused");
    };
    assert!(err.to_string().contains("PBKDF2 iterations"), "{err}");
}

#[tokio::test]
async fn tcp_nodelay_reaches_the_server_socket() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    for nodelay in [true, false] {
        let target = ConnectTarget {
            node: 0,
            host: "127.0.0.1".to_owned(),
            port,
            user: "u".to_owned(),
            database: "d".to_owned(),
            auth: ServerAuth::None,
            nodelay,
            keepalive: nodelay.then_some(std::time::Duration::from_secs(20)),
            tls: Arc::new(ServerTls::disabled()),
        };
        let stream = open_socket(&target).await.unwrap();
        assert_eq!(stream.nodelay().unwrap(), nodelay);
        let keepalive = socket2::SockRef::from(&stream).keepalive().unwrap();
        assert_eq!(keepalive, nodelay, "proxy.tcp_keepalive reaches it too");
    }
}
