//! TLS between clients and the proxy, with real clients: psql (libpq) with each `sslmode` a user
//! would set, tokio-postgres over rustls, PostgreSQL 17's direct TLS (ALPN `postgresql`) from a
//! rustls client, and the refusals: plaintext under `require`, bytes smuggled behind an
//! SSLRequest, a second SSLRequest inside TLS; a TLS-only user under `allow`; new certificate
//! files taken by a reload.
//!
//! Each test makes its own CA and leaf certificate (rcgen) in a fresh directory.
mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use causeway::cluster::{APP_PASSWORD, APP_TRUST_USER, APP_USER, SUPERUSER};
use common::raw::{self, RawConn};
use common::Proxy;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncWriteExt;

/// Certificate files of one test.
struct Certs {
    /// The directory holding them.
    dir: PathBuf,
    /// The CA that signed the leaf (what clients trust).
    ca: PathBuf,
    /// The proxy's certificate (leaf, for `localhost` and 127.0.0.1's name only).
    cert: PathBuf,
    /// Its key.
    key: PathBuf,
    /// A client certificate for `app`, signed by the same CA.
    client_cert: PathBuf,
    /// Its key (mode 0600, as libpq demands).
    client_key: PathBuf,
    /// A client certificate for `app_trust` (another user), signed by the same CA.
    other_cert: PathBuf,
    /// Its key.
    other_key: PathBuf,
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A test CA and a leaf certificate for the DNS name `localhost` (no IP address), as PEM files.
fn make_certs() -> Certs {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "causeway-tls-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "causeway test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    client_params
        .distinguished_name
        .push(DnType::CommonName, APP_USER);
    let client = client_params.signed_by(&client_key, &ca).unwrap();
    let other_key = KeyPair::generate().unwrap();
    let mut other_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    other_params
        .distinguished_name
        .push(DnType::CommonName, APP_TRUST_USER);
    let other = other_params.signed_by(&other_key, &ca).unwrap();
    let certs = Certs {
        other_cert: dir.join("other.crt"),
        other_key: dir.join("other.key"),
        ca: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
        client_cert: dir.join("client.crt"),
        client_key: dir.join("client.key"),
        dir,
    };
    std::fs::write(&certs.ca, ca.pem()).unwrap();
    std::fs::write(&certs.cert, leaf.pem()).unwrap();
    std::fs::write(&certs.key, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&certs.client_cert, client.pem()).unwrap();
    std::fs::write(&certs.client_key, client_key.serialize_pem()).unwrap();
    std::fs::write(&certs.other_cert, other.pem()).unwrap();
    std::fs::write(&certs.other_key, other_key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&certs.client_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&certs.other_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    certs
}

/// A proxy with `[client_tls]` in `mode`.
async fn start_tls_proxy(certs: &Certs, mode: &str) -> Proxy {
    let tls = format!(
        "\n[client_tls]\nmode = \"{mode}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        certs.cert.display(),
        certs.key.display()
    );
    common::start_proxy_with("", &tls).await
}

/// The psql binary: the cluster's (same libpq as the machine's) or the one on PATH.
fn psql() -> PathBuf {
    let bin = Path::new("/usr/lib/postgresql/15/bin/psql");
    if bin.exists() {
        bin.to_owned()
    } else {
        PathBuf::from("psql")
    }
}

/// Runs `select` through psql with `conninfo` (libpq keywords); its stdout, or its stderr as
/// the error.
async fn psql_query(conninfo: &str, sql: &str) -> Result<String, String> {
    psql_query_with(conninfo, sql, Some(APP_PASSWORD)).await
}

/// [`psql_query`] with `password` in PGPASSWORD, or none at all (and no password file).
async fn psql_query_with(
    conninfo: &str,
    sql: &str,
    password: Option<&str>,
) -> Result<String, String> {
    let mut command = tokio::process::Command::new(psql());
    match password {
        Some(p) => command.env("PGPASSWORD", p),
        None => command
            .env_remove("PGPASSWORD")
            .env("PGPASSFILE", "/nonexistent"),
    };
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        command
            .arg(conninfo)
            .args(["-XAtq", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGSSLMODE")
            .env_remove("PGCHANNELBINDING")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("psql finishes")
    .expect("run psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// libpq connection keywords for the proxy, connecting to its address and naming `host`
/// (what verify-full checks the certificate against).
fn libpq(proxy: &Proxy, host: &str, extra: &str) -> String {
    format!(
        "host={host} hostaddr={} port={} user={APP_USER} dbname=postgres {extra}",
        proxy.addr.ip(),
        proxy.addr.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_connects_with_sslmode_require_and_verify_full() {
    let certs = make_certs();
    let proxy = start_tls_proxy(&certs, "require").await;
    let got = psql_query(
        &libpq(&proxy, "localhost", "sslmode=require"),
        "select 41 + 1",
    )
    .await;
    assert_eq!(got.as_deref(), Ok("42"));

    let verify = format!("sslmode=verify-full sslrootcert={}", certs.ca.display());
    let got = psql_query(&libpq(&proxy, "localhost", &verify), "select current_user").await;
    assert_eq!(
        got.as_deref(),
        Ok(APP_USER),
        "verify-full with the right name"
    );

    let err = psql_query(&libpq(&proxy, "wrong.example", &verify), "select 1")
        .await
        .expect_err("verify-full against a name the certificate does not carry");
    assert!(err.contains("does not match host name"), "{err}");

    // A CA the certificate does not chain to: verify-ca refuses as well.
    let other = make_certs();
    let wrong_ca = format!("sslmode=verify-ca sslrootcert={}", other.ca.display());
    let err = psql_query(&libpq(&proxy, "localhost", &wrong_ca), "select 1")
        .await
        .expect_err("verify-ca against another CA");
    // Both CAs carry the same name: OpenSSL finds the issuer by name and the signature check
    // fails ("EVP lib"); with another name it says "certificate verify failed".
    assert!(
        err.contains("certificate verify failed") || err.contains("SSL error"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_with_channel_binding_require_logs_in_with_scram_plus() {
    let certs = make_certs();
    let proxy = start_tls_proxy(&certs, "allow").await;
    let got = psql_query(
        &libpq(
            &proxy,
            "localhost",
            "sslmode=require channel_binding=require",
        ),
        "select current_user",
    )
    .await;
    assert_eq!(got.as_deref(), Ok(APP_USER), "SCRAM-SHA-256-PLUS over TLS");
    // Without TLS there is nothing to bind to: libpq refuses to go on.
    let err = psql_query(
        &libpq(
            &proxy,
            "localhost",
            "sslmode=disable channel_binding=require",
        ),
        "select 1",
    )
    .await
    .expect_err("channel_binding=require without TLS");
    assert!(err.contains("channel binding"), "{err}");
    // A wrong password is still 28P01 through the PLUS exchange.
    let err = tokio::process::Command::new(psql())
        .arg(libpq(
            &proxy,
            "localhost",
            "sslmode=require channel_binding=require",
        ))
        .args(["-XAtqc", "select 1"])
        .env("PGPASSWORD", "not-the-password")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&err.stderr);
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_client_tls_ca_a_client_certificate_is_required() {
    let certs = make_certs();
    let tls = format!(
        "\n[client_tls]\nmode = \"require\"\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
        certs.cert.display(),
        certs.key.display(),
        certs.ca.display()
    );
    let proxy = common::start_proxy_with("", &tls).await;
    let with_cert = format!(
        "sslmode=require sslcert={} sslkey={}",
        certs.client_cert.display(),
        certs.client_key.display()
    );
    let got = psql_query(&libpq(&proxy, "localhost", &with_cert), "select 1").await;
    assert_eq!(got.as_deref(), Ok("1"), "a client certificate from the CA");
    // No certificate (sslcert pointing nowhere, so ~/.postgresql is not used either).
    let none = "sslmode=require sslcert=/nonexistent sslkey=/nonexistent";
    let err = psql_query(&libpq(&proxy, "localhost", none), "select 1")
        .await
        .expect_err("no client certificate");
    assert!(err.contains("certificate"), "{err}");
    // A certificate from another CA.
    let other = make_certs();
    let foreign = format!(
        "sslmode=require sslcert={} sslkey={}",
        other.client_cert.display(),
        other.client_key.display()
    );
    psql_query(&libpq(&proxy, "localhost", &foreign), "select 1")
        .await
        .expect_err("a client certificate from another CA");
}

#[test]
fn an_unreadable_certificate_file_stops_the_start_naming_the_file() {
    let certs = make_certs();
    let missing = certs.dir.join("missing.crt");
    let tls = format!(
        "\n[client_tls]\nmode = \"require\"\ncert = \"{}\"\nkey = \"{}\"\n",
        missing.display(),
        certs.key.display()
    );
    let toml = common::config_toml("", &tls);
    let loaded = causeway::config::Config::from_toml(&toml, "test", &|_| None).unwrap();
    let err = causeway::app::Settings::new(loaded.config).expect_err("missing certificate");
    let text = err.to_string();
    assert!(
        text.contains("client_tls.cert") && text.contains("missing.crt"),
        "{text}"
    );
    // A key that is not a key.
    let tls = format!(
        "\n[client_tls]\nmode = \"allow\"\ncert = \"{}\"\nkey = \"{}\"\n",
        certs.cert.display(),
        certs.cert.display()
    );
    let loaded =
        causeway::config::Config::from_toml(&common::config_toml("", &tls), "test", &|_| None)
            .unwrap();
    let text = causeway::app::Settings::new(loaded.config)
        .expect_err("no key")
        .to_string();
    assert!(text.contains("client_tls.key"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_clients_are_refused_under_require_and_served_under_allow() {
    let certs = make_certs();
    let proxy = start_tls_proxy(&certs, "require").await;
    let err = psql_query(&libpq(&proxy, "localhost", "sslmode=disable"), "select 1")
        .await
        .expect_err("plaintext under require");
    assert!(err.contains("requires TLS"), "{err}");
    let err = proxy
        .connect_as(APP_USER, APP_PASSWORD, "postgres")
        .await
        .expect_err("tokio-postgres without TLS under require");
    assert_eq!(common::sqlstate(&err), Some("28000"), "{err}");

    let proxy = start_tls_proxy(&certs, "allow").await;
    let got = psql_query(&libpq(&proxy, "localhost", "sslmode=disable"), "select 1").await;
    assert_eq!(got.as_deref(), Ok("1"), "plaintext under allow");
    let got = psql_query(&libpq(&proxy, "localhost", "sslmode=require"), "select 2").await;
    assert_eq!(got.as_deref(), Ok("2"), "TLS under allow");
}

/// A rustls client configuration trusting the test CA, with ALPN `alpn` if given.
fn client_config(certs: &Certs, alpn: Option<&[u8]>) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&certs.ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.into_iter().map(<[u8]>::to_vec).collect();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_over_rustls_gets_large_replies_intact() {
    let certs = make_certs();
    let proxy = start_tls_proxy(&certs, "require").await;
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(client_config(&certs, None));
    let conninfo = format!(
        "host=localhost port={} user={APP_USER} password={APP_PASSWORD} dbname=postgres \
         sslmode=require channel_binding=require",
        proxy.addr.port()
    );
    let (client, conn) = tokio_postgres::connect(&conninfo, tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // Replies far larger than a socket buffer and a TLS session's buffer: every byte arrives.
    let rows = client
        .query(
            "select g, repeat('x', 1000) from generate_series(1, 20000) g",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 20000);
    assert_eq!(rows[19999].get::<_, i32>(0), 20000);
    assert!(rows.iter().all(|r| r.get::<_, &str>(1).len() == 1000));
    // A large request the other way.
    let big = "y".repeat(3_000_000);
    let n: i32 = client
        .query_one("select length($1::text)", &[&big])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3_000_000);
}

/// Opens a TLS session to the proxy the way PostgreSQL 17's `sslnegotiation=direct` does: a
/// ClientHello as the first bytes, no SSLRequest.
async fn direct_tls(
    proxy: &Proxy,
    certs: &Certs,
    alpn: Option<&[u8]>,
) -> RawConn<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(certs, alpn)));
    let name = ServerName::try_from("localhost").unwrap();
    RawConn::wrap(connector.connect(name, tcp).await.expect("TLS handshake"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_with_alpn_postgresql_is_accepted_and_without_it_refused() {
    let certs = make_certs();
    let proxy = start_tls_proxy(&certs, "require").await;
    let mut conn = direct_tls(&proxy, &certs, Some(b"postgresql")).await;
    conn.send(&raw::startup(&[
        ("user", APP_TRUST_USER),
        ("database", "postgres"),
    ]))
    .await;
    let msgs = conn.recv_until(b'Z').await;
    assert!(
        msgs.iter().any(|m| m.tag == b'R' && m.int32() == 0),
        "{msgs:?}"
    );
    conn.send(&raw::query("select current_user")).await;
    let msgs = conn.recv_until(b'Z').await;
    let row = msgs.iter().find(|m| m.tag == b'D').expect("a row");
    assert_eq!(row.data_row(), vec![Some(APP_TRUST_USER.to_owned())]);

    // No ALPN: refused with PostgreSQL's message, inside TLS.
    let mut conn = direct_tls(&proxy, &certs, None).await;
    let msgs = conn
        .recv_until_closed(Duration::from_secs(3))
        .await
        .expect("closed");
    let e = raw::first_error(&msgs).expect("an ErrorResponse");
    assert_eq!(e.code, "08P01", "{e:?}");
    assert!(e.message.contains("ALPN"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_behind_an_sslrequest_and_a_second_sslrequest_are_refused() {
    let certs = make_certs();
    let proxy = start_tls_proxy(&certs, "allow").await;
    // A StartupMessage in the same packet as the SSLRequest, before any 'S': it was sent in
    // clear text and must not be taken as if it came through TLS (CVE-2021-23214).
    let mut conn = RawConn::connect(proxy.addr).await;
    let mut smuggled = raw::SSL_REQUEST.to_vec();
    smuggled.extend(raw::startup(&[("user", APP_TRUST_USER)]));
    conn.send(&smuggled).await;
    let msgs = conn
        .recv_until_closed(Duration::from_secs(3))
        .await
        .expect("closed");
    let e = raw::first_error(&msgs).expect("an ErrorResponse");
    assert_eq!(e.code, "08P01", "{e:?}");
    assert!(e.message.contains("unencrypted data"), "{e:?}");

    // SSLRequest, 'S', TLS, then another SSLRequest inside TLS.
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(&raw::SSL_REQUEST).await;
    assert_eq!(conn.recv_byte().await, b'S');
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(&certs, None)));
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, conn.stream).await.unwrap();
    tls.write_all(&raw::SSL_REQUEST).await.unwrap();
    let mut conn = RawConn::wrap(tls);
    let msgs = conn
        .recv_until_closed(Duration::from_secs(3))
        .await
        .expect("closed");
    let e = raw::first_error(&msgs).expect("an ErrorResponse");
    assert_eq!(e.code, "08P01", "{e:?}");

    // GSSENCRequest is still declined, and the proxy still serves TLS clients.
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(&raw::GSSENC_REQUEST).await;
    assert_eq!(conn.recv_byte().await, b'N');
    let got = psql_query(&libpq(&proxy, "localhost", "sslmode=require"), "select 3").await;
    assert_eq!(got.as_deref(), Ok("3"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_only_user_is_refused_over_plaintext_before_any_password_exchange() {
    let certs = make_certs();
    let tls = format!(
        "\n[client_tls]\nmode = \"allow\"\ncert = \"{}\"\nkey = \"{}\"\n",
        certs.cert.display(),
        certs.key.display()
    );
    // `app` must use TLS; the other users need not.
    let name_line = format!("name = \"{APP_USER}\"\n");
    let toml = common::config_toml("", &tls).replacen(
        &name_line,
        &format!("{name_line}require_tls = true\n"),
        1,
    );
    let proxy = common::start_proxy_from(toml).await;

    // psql in clear text: refused, with the reason.
    let err = psql_query(&libpq(&proxy, "localhost", "sslmode=disable"), "select 1")
        .await
        .expect_err("a TLS-only user over plaintext");
    assert!(
        err.contains("requires TLS") && err.contains(APP_USER),
        "{err}"
    );
    let err = proxy
        .connect_as(APP_USER, APP_PASSWORD, "postgres")
        .await
        .expect_err("tokio-postgres without TLS");
    assert_eq!(common::sqlstate(&err), Some("28000"), "{err}");
    // The refusal comes straight after the StartupMessage: no authentication request first.
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(&raw::startup(&[
        ("user", APP_USER),
        ("database", "postgres"),
    ]))
    .await;
    let msgs = conn
        .recv_until_closed(Duration::from_secs(5))
        .await
        .expect("closed");
    assert_eq!(msgs.first().map(|m| m.tag), Some(b'E'), "{msgs:?}");
    assert_eq!(raw::first_error(&msgs).expect("an error").code, "28000");

    // Over TLS the same user logs in (and PLUS binding works as usual).
    let got = psql_query(
        &libpq(&proxy, "localhost", "sslmode=require"),
        "select current_user",
    )
    .await;
    assert_eq!(got.as_deref(), Ok(APP_USER), "TLS-only user over TLS");
    // Other users are served in clear text under `allow`.
    let out = tokio::process::Command::new(psql())
        .arg(format!(
            "host=localhost hostaddr={} port={} user={APP_TRUST_USER} dbname=postgres \
             sslmode=disable",
            proxy.addr.ip(),
            proxy.addr.port()
        ))
        .args(["-XAtqc", "select current_user"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        APP_TRUST_USER,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An unknown name in clear text is not told apart: the mock exchange, then 28P01.
    let err = proxy
        .connect_as("nobody_here", "whatever", "postgres")
        .await
        .expect_err("unknown user");
    assert_eq!(common::sqlstate(&err), Some("28P01"), "{err}");
}

/// Copies a certificate and its key to the names the proxy's configuration uses.
fn install_cert(from: &Certs, cert: &Path, key: &Path) {
    std::fs::copy(&from.cert, cert).unwrap();
    std::fs::copy(&from.key, key).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_takes_new_certificate_files_and_keeps_tls_clients_connected() {
    let (a, b) = (make_certs(), make_certs());
    // The proxy's files live in A's directory under names of their own, first with A's leaf.
    let (cert, key) = (a.dir.join("live.crt"), a.dir.join("live.key"));
    install_cert(&a, &cert, &key);
    let tls = format!(
        "\n[client_tls]\nmode = \"allow\"\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let path = a.dir.join("proxy.toml");
    std::fs::write(
        &path,
        common::config_toml(&format!("admin_users = [\"{SUPERUSER}\"]"), &tls),
    )
    .unwrap();
    let loaded = causeway::config::Config::load(&path).expect("valid test config");
    let app = causeway::app::App::new(loaded.config).expect("build proxy");
    app.set_config_path(path.clone());
    let addr = app.start().await.expect("start proxy");
    app.topology()
        .wait_for_primary(Duration::from_secs(10))
        .await
        .expect("proxy finds the primary");
    let proxy = Proxy { addr, app };
    let verify = |c: &Certs| format!("sslmode=verify-full sslrootcert={}", c.ca.display());

    // A client over TLS, verified against CA A, stays connected through the reload.
    let tls_a = tokio_postgres_rustls::MakeRustlsConnect::new(client_config(&a, None));
    let conninfo = format!(
        "host=localhost port={} user={APP_USER} password={APP_PASSWORD} dbname=postgres \
         sslmode=require",
        proxy.addr.port()
    );
    let (old, conn) = tokio_postgres::connect(&conninfo, tls_a).await.unwrap();
    let old_conn = tokio::spawn(conn);
    old.simple_query("select 1").await.unwrap();
    let got = psql_query(&libpq(&proxy, "localhost", &verify(&a)), "select 1").await;
    assert_eq!(got.as_deref(), Ok("1"), "CA A before the reload");
    psql_query(&libpq(&proxy, "localhost", &verify(&b)), "select 1")
        .await
        .expect_err("CA B before the reload");

    // B's certificate and key under the same names, then RELOAD.
    install_cert(&b, &cert, &key);
    let console = proxy
        .connect_as(
            SUPERUSER,
            common::cluster().superuser_password(),
            "causeway",
        )
        .await
        .expect("open the console");
    console.simple_query("RELOAD").await.expect("RELOAD");

    let got = psql_query(&libpq(&proxy, "localhost", &verify(&b)), "select 2").await;
    assert_eq!(got.as_deref(), Ok("2"), "CA B after the reload");
    let err = psql_query(&libpq(&proxy, "localhost", &verify(&a)), "select 1")
        .await
        .expect_err("CA A after the reload");
    assert!(
        err.contains("certificate verify failed") || err.contains("SSL error"),
        "{err}"
    );
    // The client from before: not dropped, still served.
    let rows = old.simple_query("select 3").await.expect("old TLS client");
    assert!(
        rows.iter().any(
            |m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("3"))
        ),
        "{rows:?}"
    );
    assert!(!old_conn.is_finished());
    drop(b);
}

/// libpq keywords for TLS with a client certificate and key.
fn with_cert(cert: &Path, key: &Path) -> String {
    format!(
        "sslmode=require sslcert={} sslkey={}",
        cert.display(),
        key.display()
    )
}

/// libpq keywords for the proxy as `user` (see [`libpq`]).
fn libpq_as(proxy: &Proxy, user: &str, extra: &str) -> String {
    format!(
        "host=localhost hostaddr={} port={} user={user} dbname=postgres {extra}",
        proxy.addr.ip(),
        proxy.addr.port()
    )
}

/// [`client_config`] (ALPN `postgresql`, for direct TLS) presenting a client certificate.
fn client_config_with_cert(certs: &Certs, cert: &Path, key: &Path) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&certs.ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    config
}

/// Direct TLS with `config`, then a StartupMessage for `user`.
async fn tls_startup(
    addr: std::net::SocketAddr,
    config: rustls::ClientConfig,
    user: &str,
) -> RawConn<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = RawConn::wrap(connector.connect(name, tcp).await.expect("TLS handshake"));
    conn.send(&raw::startup(&[("user", user), ("database", "postgres")]))
        .await;
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_maps_the_client_certificate_to_the_user_by_its_cn() {
    let certs = make_certs();
    let tls = format!(
        "\n[client_tls]\nmode = \"require\"\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n\
         client_cert = \"verify-full\"\n",
        certs.cert.display(),
        certs.key.display(),
        certs.ca.display()
    );
    let proxy = common::start_proxy_with("", &tls).await;
    let app_cert = with_cert(&certs.client_cert, &certs.client_key);
    // CN=app logs in as app (and the password exchange still runs: PGPASSWORD is needed).
    let got = psql_query(
        &libpq_as(&proxy, APP_USER, &app_cert),
        "select current_user",
    )
    .await;
    assert_eq!(got.as_deref(), Ok(APP_USER), "CN = user name");
    let err = psql_query_with(&libpq_as(&proxy, APP_USER, &app_cert), "select 1", None)
        .await
        .expect_err("verify-full does not replace the password");
    assert!(err.contains("password"), "{err}");
    // The same certificate for another user: 28000 before any password exchange.
    let err = psql_query(&libpq_as(&proxy, APP_TRUST_USER, &app_cert), "select 1")
        .await
        .expect_err("CN = app, user = app_trust");
    assert!(
        err.contains("certificate authentication failed for user \"app_trust\""),
        "{err}"
    );
    // That user's own certificate lets it in (a trust user: no password at all).
    let trust_cert = with_cert(&certs.other_cert, &certs.other_key);
    let got = psql_query_with(
        &libpq_as(&proxy, APP_TRUST_USER, &trust_cert),
        "select current_user",
        None,
    )
    .await;
    assert_eq!(got.as_deref(), Ok(APP_TRUST_USER));
    // An unknown name with a certificate for someone else gets the same answer as a known
    // one: the check tells nothing about which users exist.
    let err = psql_query(&libpq_as(&proxy, "nobody_here", &app_cert), "select 1")
        .await
        .expect_err("unknown name");
    assert!(
        err.contains("certificate authentication failed for user \"nobody_here\""),
        "{err}"
    );
    // The SQLSTATE, and that no authentication request came first.
    let config = client_config_with_cert(&certs, &certs.client_cert, &certs.client_key);
    let mut conn = tls_startup(proxy.addr, config, APP_TRUST_USER).await;
    let msgs = conn
        .recv_until_closed(Duration::from_secs(5))
        .await
        .expect("closed");
    assert_eq!(msgs.first().map(|m| m.tag), Some(b'E'), "{msgs:?}");
    assert_eq!(raw::first_error(&msgs).expect("an error").code, "28000");
    // No certificate: the handshake is refused.
    let none = "sslmode=require sslcert=/nonexistent sslkey=/nonexistent";
    let err = psql_query(&libpq_as(&proxy, APP_USER, none), "select 1")
        .await
        .expect_err("no client certificate");
    assert!(err.contains("certificate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cert_user_logs_in_with_its_certificate_and_no_password() {
    let certs = make_certs();
    let tls = format!(
        "\n[client_tls]\nmode = \"allow\"\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
        certs.cert.display(),
        certs.key.display(),
        certs.ca.display()
    );
    // `app` logs in with its certificate; the proxy logs in to PostgreSQL with its password.
    let entry = format!("name = \"{APP_USER}\"\npassword = \"{APP_PASSWORD}\"\n");
    let toml = common::config_toml("", &tls);
    assert!(toml.contains(&entry), "the base config's app entry");
    let toml = toml.replacen(
        &entry,
        &format!("name = \"{APP_USER}\"\nauth = \"cert\"\nserver_password = \"{APP_PASSWORD}\"\n"),
        1,
    );
    let proxy = common::start_proxy_from(toml).await;
    let app_cert = with_cert(&certs.client_cert, &certs.client_key);
    // No PGPASSWORD, no password file: the certificate is the credential.
    let got = psql_query_with(
        &libpq_as(&proxy, APP_USER, &app_cert),
        "select current_user",
        None,
    )
    .await;
    assert_eq!(
        got.as_deref(),
        Ok(APP_USER),
        "cert user with its certificate"
    );
    // Another user's certificate: refused, even with the right password at hand.
    let trust_cert = with_cert(&certs.other_cert, &certs.other_key);
    let err = psql_query(&libpq_as(&proxy, APP_USER, &trust_cert), "select 1")
        .await
        .expect_err("CN = app_trust");
    assert!(
        err.contains("certificate authentication failed for user \"app\""),
        "{err}"
    );
    // Plaintext (allowed for others under `allow`): no certificate, 28000.
    let err = proxy
        .connect_as(APP_USER, APP_PASSWORD, "postgres")
        .await
        .expect_err("a cert user without TLS");
    assert_eq!(common::sqlstate(&err), Some("28000"), "{err}");
    let err = psql_query(&libpq_as(&proxy, APP_USER, "sslmode=disable"), "select 1")
        .await
        .expect_err("a cert user without TLS");
    assert!(err.contains("certificate authentication failed"), "{err}");
    // TLS without a certificate: the handshake is refused (the CA makes one mandatory).
    let none = "sslmode=require sslcert=/nonexistent sslkey=/nonexistent";
    psql_query_with(&libpq_as(&proxy, APP_USER, none), "select 1", None)
        .await
        .expect_err("no client certificate");
}
