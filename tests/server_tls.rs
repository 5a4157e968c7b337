//! TLS between causeway and PostgreSQL (`[server_tls]`) against real servers: the cluster of
//! this test binary runs with `ssl = on` and a certificate for the DNS name `localhost` made
//! here (rcgen), and each mode is checked the way an operator would check it, by asking the
//! server whether the connection it serves is encrypted (`pg_stat_ssl`), for the pools'
//! connections and the topology watcher's alike. The refusals: `verify-full` against a name
//! the certificate does not carry, `verify-ca` against another CA, and `require` against a
//! server without TLS (a second, plaintext cluster).
mod common;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use causeway::backend::connection::{ConnectTarget, ServerAuth, ServerConn};
use causeway::backend::BackendError;
use causeway::cluster::{
    ClusterOptions, LocalCluster, APP_PASSWORD, APP_USER, MONITOR_PASSWORD, MONITOR_USER, SUPERUSER,
};
use causeway::config::{Config, ServerTlsConfig, ServerTlsMode};
use causeway::net::server_tls::ServerTls;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// The CA files of this binary: the one the cluster's certificate chains to, and another.
struct Cas {
    /// Signed the nodes' certificate.
    ca: PathBuf,
    /// Signed nothing the nodes present.
    other: PathBuf,
}

/// A self-signed test CA.
fn make_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// The shared cluster with TLS on (once per binary), and the CA files.
fn ssl_cluster() -> &'static Cas {
    static CAS: OnceLock<Cas> = OnceLock::new();
    CAS.get_or_init(|| {
        let c = common::cluster();
        let ca = make_ca("causeway server test CA");
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        let leaf = leaf.signed_by(&key, &ca).unwrap();
        c.enable_ssl(&leaf.pem(), &key.serialize_pem())
            .expect("turn TLS on at every node");
        // In the cluster's directory, so that it goes with the cluster.
        let cas = Cas {
            ca: c.base_dir().join("test-ca.crt"),
            other: c.base_dir().join("other-ca.crt"),
        };
        std::fs::write(&cas.ca, ca.pem()).unwrap();
        std::fs::write(&cas.other, make_ca("another CA").pem()).unwrap();
        cas
    })
}

/// The base test configuration with `[server_tls]` set as given, the nodes named by `host`
/// (`localhost` or `127.0.0.1`; the certificate names only `localhost`).
fn config(tls: &str, host: &str) -> String {
    common::config_toml("", &format!("\n[server_tls]\n{tls}\n"))
        .replace("address = \"127.0.0.1:", &format!("address = \"{host}:"))
}

/// Whether the server connection behind a client of `proxy` is TLS, as the server sees it.
async fn served_over_tls(proxy: &common::Proxy) -> bool {
    let client = proxy.connect().await;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("pg_stat_ssl through causeway");
    row.get(0)
}

/// Whether every watcher connection to the primary is TLS, asked on the primary directly.
async fn monitor_over_tls() -> Option<bool> {
    let c = common::cluster();
    let direct = common::connect_direct(c.primary().unwrap()).await;
    let row = direct
        .query_one(
            "SELECT bool_and(s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.usename = $1 AND a.application_name = 'causeway-monitor'",
            &[&MONITOR_USER],
        )
        .await
        .unwrap();
    row.get(0)
}

/// Connects one server connection straight through [`ServerConn`] to the primary of `c`.
async fn server_conn(
    c: &LocalCluster,
    host: &str,
    tls: ServerTlsConfig,
) -> Result<ServerConn, BackendError> {
    let target = ConnectTarget {
        node: 0,
        host: host.to_owned(),
        port: c.port(c.primary().unwrap()).unwrap(),
        user: APP_USER.to_owned(),
        database: "postgres".to_owned(),
        auth: ServerAuth::Password(APP_PASSWORD.to_owned()),
        nodelay: true,
        keepalive: None,
        tls: Arc::new(ServerTls::load(&tls, &[]).expect("load [server_tls]")),
    };
    ServerConn::connect(&target, Duration::from_secs(10)).await
}

fn tls(mode: ServerTlsMode, ca: Option<&PathBuf>) -> ServerTlsConfig {
    ServerTlsConfig {
        mode,
        ca: ca.cloned(),
        allow_cleartext_without_tls: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mode_reaches_a_tls_cluster_as_it_promises() {
    let cas = tokio::task::block_in_place(ssl_cluster);
    let ca = cas.ca.display();
    let cases = [
        ("mode = \"disable\"".to_owned(), "127.0.0.1", false),
        ("mode = \"prefer\"".to_owned(), "127.0.0.1", true),
        ("mode = \"require\"".to_owned(), "127.0.0.1", true),
        // verify-ca checks the chain, not the name: an address the certificate lacks passes.
        (
            format!("mode = \"verify-ca\"\nca = \"{ca}\""),
            "127.0.0.1",
            true,
        ),
        (
            format!("mode = \"verify-full\"\nca = \"{ca}\""),
            "localhost",
            true,
        ),
    ];
    for (section, host, encrypted) in cases {
        let proxy = common::start_proxy_from(config(&section, host)).await;
        assert_eq!(
            served_over_tls(&proxy).await,
            encrypted,
            "server connection with {section:?} to {host}"
        );
        // The watcher found the primary (start_proxy_from waited for it) with the same
        // settings; the server says how it is connected.
        assert_eq!(
            monitor_over_tls().await,
            Some(encrypted),
            "watcher connections with {section:?}"
        );
        proxy.app.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_refuses_a_wrong_name_and_verify_ca_another_ca() {
    let cas = tokio::task::block_in_place(ssl_cluster);
    let c = common::cluster();
    let full = tls(ServerTlsMode::VerifyFull, Some(&cas.ca));
    let conn = server_conn(c, "localhost", full.clone()).await;
    assert!(conn.is_ok(), "the right name: {:?}", conn.err());

    // The certificate names `localhost`, not 127.0.0.1.
    let err = server_conn(c, "127.0.0.1", full)
        .await
        .expect_err("verify-full to a name the certificate lacks");
    assert!(matches!(err, BackendError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("not valid for name"), "{err}");

    let err = server_conn(
        c,
        "localhost",
        tls(ServerTlsMode::VerifyCa, Some(&cas.other)),
    )
    .await
    .expect_err("verify-ca against a CA that signed nothing here");
    assert!(matches!(err, BackendError::Tls { .. }), "{err}");

    // The whole proxy: its watcher cannot verify the nodes either, so it never sees a primary.
    let toml = config(
        &format!("mode = \"verify-full\"\nca = \"{}\"", cas.ca.display()),
        "127.0.0.1",
    );
    let loaded = Config::from_toml(&toml, "test", &|_| None).unwrap();
    let app = causeway::app::App::new(loaded.config).unwrap();
    app.start().await.unwrap();
    assert!(
        app.topology()
            .wait_for_primary(Duration::from_secs(2))
            .await
            .is_none(),
        "no node passes verify-full under a name its certificate lacks"
    );
    app.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_refuses_a_server_without_tls_and_prefer_falls_back() {
    let plain = tokio::task::spawn_blocking(|| {
        LocalCluster::start(ClusterOptions {
            standbys: 0,
            ..ClusterOptions::default()
        })
        .expect("start a cluster without TLS")
    })
    .await
    .unwrap();
    let err = server_conn(&plain, "127.0.0.1", tls(ServerTlsMode::Require, None))
        .await
        .expect_err("require against a server without TLS");
    assert!(err.to_string().contains("does not accept TLS"), "{err}");

    let conn = server_conn(&plain, "127.0.0.1", tls(ServerTlsMode::Prefer, None)).await;
    assert!(
        conn.is_ok(),
        "prefer goes on in clear text: {:?}",
        conn.err()
    );
    tokio::task::spawn_blocking(move || plain.shutdown())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_puts_new_server_tls_settings_in_force() {
    tokio::task::block_in_place(ssl_cluster);
    let proxy = common::start_proxy_from(config("mode = \"disable\"", "127.0.0.1")).await;
    assert!(
        !served_over_tls(&proxy).await,
        "plaintext before the reload"
    );

    let toml = config("mode = \"require\"", "127.0.0.1");
    let loaded = Config::from_toml(&toml, "test", &|_| None).unwrap();
    causeway::reload::apply(proxy.app.ctx(), loaded.config).expect("reload");
    assert!(
        served_over_tls(&proxy).await,
        "the pool made before the reload is retired; its successor uses TLS"
    );
    let watcher_follows = common::eventually(Duration::from_secs(10), || async {
        monitor_over_tls().await == Some(true)
    })
    .await;
    assert!(watcher_follows, "the watcher reconnects with TLS");
    proxy.app.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reads_a_changed_ca_file_under_the_same_name() {
    let cas = tokio::task::block_in_place(ssl_cluster);
    // A CA file of this test's own, first holding the CA the nodes' certificate chains to.
    let live = cas
        .ca
        .with_file_name(format!("live-ca-{}.crt", std::process::id()));
    std::fs::copy(&cas.ca, &live).unwrap();
    let toml = config(
        &format!("mode = \"verify-full\"\nca = \"{}\"", live.display()),
        "localhost",
    );
    let proxy = common::start_proxy_from(toml.clone()).await;
    // A pooled server connection, verified with the first file, left idle in its pool.
    let client = proxy.connect().await;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    drop(client);

    // New contents under the same name (both CAs now): the configuration text is the same,
    // the file is not. The watcher keeps verifying (the nodes' CA is still in the file).
    let both = format!(
        "{}{}",
        std::fs::read_to_string(&cas.ca).unwrap(),
        std::fs::read_to_string(&cas.other).unwrap()
    );
    std::fs::write(&live, both).unwrap();
    let loaded = Config::from_toml(&toml, "test", &|_| None).unwrap();
    let changed = causeway::reload::apply(proxy.app.ctx(), loaded.config).expect("reload");
    assert!(
        changed
            .changed
            .iter()
            .any(|k| k.starts_with("server_tls.ca")),
        "{changed:?}"
    );
    // The pool made with the old file is retired: its idle connection is closed, and the
    // next client is served by a connection made (and verified) with the new file.
    let direct = common::connect_direct(common::cluster().primary().unwrap()).await;
    assert!(
        common::wait_backend_not(&direct, pid, "true", Duration::from_secs(10)).await,
        "the server connection verified with the old CA file is still open"
    );
    assert!(served_over_tls(&proxy).await, "served with the new file");
    proxy.app.shutdown(Duration::from_secs(1)).await;
    let _ = std::fs::remove_file(&live);
}

/// `config` with `lines` added to the `[[nodes]]` entry of each node whose port `pick` takes.
fn with_node_lines(toml: &str, pick: impl Fn(u16) -> bool, lines: &str) -> String {
    let c = common::cluster();
    let mut out = toml.to_owned();
    for n in 0..c.node_count() {
        let port = c.port(n).unwrap();
        if pick(port) {
            let address = format!("address = \"127.0.0.1:{port}\"\n");
            assert!(out.contains(&address), "node {port} in the config");
            out = out.replacen(&address, &format!("{address}{lines}"), 1);
        }
    }
    out
}

/// `toml` with the watcher logging in as the superuser, so that its connections are told
/// apart from those of proxies other tests of this binary run at the same time.
fn own_monitor(toml: &str) -> String {
    let c = common::cluster();
    let monitor = format!("user = \"{MONITOR_USER}\"\npassword = \"{MONITOR_PASSWORD}\"\n");
    assert!(toml.contains(&monitor), "the base config's [monitor]");
    toml.replacen(
        &monitor,
        &format!(
            "user = \"{SUPERUSER}\"\npassword = \"{}\"\n",
            c.superuser_password()
        ),
        1,
    )
}

/// Whether the watcher's connections to node `n` are all TLS, asked on that node directly
/// (the watcher of [`own_monitor`]).
async fn monitor_over_tls_at(n: usize) -> Option<bool> {
    let direct = common::connect_direct(n).await;
    let row = direct
        .query_one(
            "SELECT bool_and(s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.usename = $1 AND a.application_name = 'causeway-monitor'",
            &[&SUPERUSER],
        )
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_overrides_of_server_tls_take_precedence_for_their_node() {
    let cas = tokio::task::block_in_place(ssl_cluster);
    let c = common::cluster();
    // Globally verify-full against a CA that signed nothing here, and by address (which the
    // certificate lacks): no node could pass. Each node's own CA and name make them pass.
    let global = format!("mode = \"verify-full\"\nca = \"{}\"", cas.other.display());
    let toml = with_node_lines(
        &config(&global, "127.0.0.1"),
        |_| true,
        &format!(
            "tls_ca = \"{}\"\ntls_server_name = \"localhost\"\n",
            cas.ca.display()
        ),
    );
    let proxy = common::start_proxy_from(own_monitor(&toml)).await;
    assert!(served_over_tls(&proxy).await, "pool connection, verified");
    let primary = c.primary().unwrap();
    assert_eq!(
        monitor_over_tls_at(primary).await,
        Some(true),
        "watcher, verified"
    );
    proxy.app.shutdown(Duration::from_secs(1)).await;

    // Globally require; the primary alone says disable: the server sees which is which.
    let primary_port = c.port(primary).unwrap();
    let toml = with_node_lines(
        &config("mode = \"require\"", "127.0.0.1"),
        |p| p == primary_port,
        "tls_mode = \"disable\"\n",
    );
    let proxy = common::start_proxy_from(own_monitor(&toml)).await;
    let ok = common::eventually(Duration::from_secs(30), || async {
        let mut all = true;
        for n in 0..c.node_count() {
            all &= monitor_over_tls_at(n).await == Some(n != primary);
        }
        all
    })
    .await;
    assert!(
        ok,
        "watcher: plaintext to the primary only, TLS to the standbys"
    );
    let client = proxy.connect().await;
    for _ in 0..4 {
        let row = client
            .query_one(
                "SELECT inet_server_port(), ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .expect("pg_stat_ssl through causeway");
        let (port, ssl): (i32, bool) = (row.get(0), row.get(1));
        assert_eq!(
            ssl,
            port != i32::from(primary_port),
            "pool connection to port {port}"
        );
    }
    proxy.app.shutdown(Duration::from_secs(1)).await;
}
