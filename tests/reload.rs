//! Reload against the real cluster: SIGHUP to the binary, and the console's RELOAD for each
//! kind of change it applies (users, pool sizes, routing, lag limits), plus what it refuses.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use causeway::app::App;
use causeway::cluster::{APP_PASSWORD, APP_USER, SUPERUSER};
use causeway::config::Config;
use common::{cluster, config_toml, eventually, routing_config_toml, sqlstate, Proxy};

/// A role that exists in PostgreSQL (password `pw1`) but not, at first, in the proxy.
const ROLE: &str = "reload_role";

/// Creates [`ROLE`] on the primary if it is not there yet (two tests may race to create it:
/// the loser sees a unique violation rather than duplicate_object).
async fn create_role() {
    let db = common::connect_direct(cluster().primary().unwrap()).await;
    db.batch_execute(&format!(
        "DO $$ BEGIN CREATE ROLE {ROLE} LOGIN PASSWORD 'pw1'; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
    ))
    .await
    .unwrap();
}

/// A `[[users]]` entry for [`ROLE`] with client password `password` (the server's stays `pw1`).
fn role_entry(password: &str) -> String {
    format!(
        "[[users]]\nname = \"{ROLE}\"\npassword = \"{password}\"\nserver_password = \"pw1\"\n\
         default_route = \"primary\"\n"
    )
}

/// A file of its own for one test's configuration.
fn config_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "causeway-reload-{}-{name}.toml",
        std::process::id()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts an in-process proxy from a file (so that RELOAD has something to read).
async fn start_from_file(path: &Path) -> Proxy {
    let loaded = Config::load(path).expect("valid test config");
    let app = App::new(loaded.config).expect("build proxy");
    app.set_config_path(path.to_owned());
    let addr = app.start().await.expect("start proxy");
    app.topology()
        .wait_for_primary(Duration::from_secs(10))
        .await
        .expect("proxy finds the primary");
    Proxy { addr, app }
}

/// Opens the admin console.
async fn console(p: &Proxy) -> tokio_postgres::Client {
    p.connect_as(SUPERUSER, cluster().superuser_password(), "causeway")
        .await
        .expect("open the console")
}

/// Rewrites the file and reloads through the console.
async fn reload_with(p: &Proxy, path: &Path, text: &str) -> Result<(), tokio_postgres::Error> {
    std::fs::write(path, text).unwrap();
    console(p).await.simple_query("RELOAD").await.map(|_| ())
}

/// `text` with the admin line added to its `[proxy]` table.
fn with_admin(text: String) -> String {
    text.replacen("[proxy]\n", &format!("[proxy]\n{}\n", admin()), 1)
}

/// The message of an error the proxy reported.
fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), |d| d.message().to_owned())
}

/// The admin line for `[proxy]`.
fn admin() -> String {
    format!("admin_users = [\"{SUPERUSER}\"]")
}

#[tokio::test]
async fn users_are_added_repassworded_and_removed() {
    create_role().await;
    let base = config_toml(&admin(), "");
    let path = config_file("users", &base);
    let p = start_from_file(&path).await;
    let e = p
        .connect_as(ROLE, "pw1", "postgres")
        .await
        .expect_err("unknown user");
    assert_eq!(sqlstate(&e), Some("28P01"), "{e}");

    // Added.
    reload_with(&p, &path, &config_toml(&admin(), &role_entry("pw1")))
        .await
        .unwrap();
    let first = p
        .connect_as(ROLE, "pw1", "postgres")
        .await
        .expect("added user logs in");
    first.simple_query("SELECT 1").await.unwrap();

    // Re-passworded: the old password is refused, the new one works, sessions already in go on.
    reload_with(&p, &path, &config_toml(&admin(), &role_entry("pw2")))
        .await
        .unwrap();
    let e = p
        .connect_as(ROLE, "pw1", "postgres")
        .await
        .expect_err("old password");
    assert_eq!(sqlstate(&e), Some("28P01"), "{e}");
    let idle = p
        .connect_as(ROLE, "pw2", "postgres")
        .await
        .expect("new password");
    idle.simple_query("SELECT 1").await.unwrap();
    first.simple_query("SELECT 1").await.unwrap();

    // Removed: no new logins; an idle session ends (57P01); a transaction is not cut.
    let busy = p.connect_as(ROLE, "pw2", "postgres").await.unwrap();
    busy.batch_execute("BEGIN; SELECT 1").await.unwrap();
    reload_with(&p, &path, &base).await.unwrap();
    let e = p
        .connect_as(ROLE, "pw2", "postgres")
        .await
        .expect_err("removed user");
    assert_eq!(sqlstate(&e), Some("28P01"), "{e}");
    let ended = eventually(Duration::from_secs(5), || async { idle.is_closed() }).await;
    assert!(ended, "the removed user's idle session ends");
    let e = idle
        .simple_query("SELECT 1")
        .await
        .expect_err("ended session");
    assert!(sqlstate(&e) == Some("57P01") || e.is_closed(), "{e}");
    busy.simple_query("SELECT 2")
        .await
        .expect("the open transaction goes on");
    busy.batch_execute("COMMIT").await.expect("and commits");
    let ended = eventually(Duration::from_secs(5), || async { busy.is_closed() }).await;
    assert!(ended, "then the session ends");
    // Other users are untouched.
    p.connect().await.simple_query("SELECT 1").await.unwrap();
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn pool_size_grows_without_cutting_a_transaction() {
    let section = |size: usize| {
        format!(
            "{}\n[pool]\npool_size = {size}\npool_timeout = \"300ms\"",
            admin()
        )
    };
    let path = config_file("pool", &config_toml(&section(1), ""));
    let p = start_from_file(&path).await;
    let a = p.connect().await;
    let b = p.connect().await;
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let e = b
        .simple_query("SELECT 1")
        .await
        .expect_err("pool of 1 is taken");
    assert_eq!(sqlstate(&e), Some("53300"), "{e}");

    reload_with(&p, &path, &config_toml(&section(2), ""))
        .await
        .unwrap();
    b.simple_query("SELECT 1")
        .await
        .expect("a second connection now");
    a.simple_query("SELECT 2")
        .await
        .expect("the open transaction was not cut");
    a.batch_execute("COMMIT").await.unwrap();
    let pools = p.app.pools().all();
    assert!(
        pools.iter().all(|pool| pool.pool_size() == 2),
        "the pools in use have the new size"
    );
    let _ = std::fs::remove_file(&path);
}

/// The port of the node that answers `sql`'s `inet_server_port()`.
async fn port_of(c: &tokio_postgres::Client, sql: &str) -> u16 {
    let rows = c.simple_query(sql).await.unwrap();
    let port = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap();
    port.parse().unwrap()
}

#[tokio::test]
async fn routing_settings_change_on_reload() {
    let text = |ro: &str| {
        with_admin(routing_config_toml(
            &format!("read_only_transactions = \"{ro}\""),
            "",
        ))
    };
    let path = config_file("routing", &text("primary"));
    let p = start_from_file(&path).await;
    let ok = eventually(Duration::from_secs(10), || async {
        p.app.topology().load().eligible_standbys() == 2
    })
    .await;
    assert!(ok, "both standbys eligible");
    let c = p.connect().await;
    let sql = "BEGIN READ ONLY; SELECT inet_server_port(); COMMIT";
    let primary = cluster().primary_port().unwrap();
    assert_eq!(port_of(&c, sql).await, primary);

    reload_with(&p, &path, &text("standby")).await.unwrap();
    let c = p.connect().await;
    let port = port_of(&c, sql).await;
    assert!(
        cluster().standby_ports().contains(&port),
        "read-only transaction on a standby: {port}"
    );
    let _ = std::fs::remove_file(&path);
}

/// Resumes a standby's replay when dropped.
struct Resume(usize);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = cluster().resume_replay(self.0);
    }
}

#[tokio::test]
async fn lag_limits_change_on_reload() {
    let text =
        |bytes: u64| with_admin(routing_config_toml(&format!("max_lag_bytes = {bytes}"), ""));
    let path = config_file("lag", &text(1 << 30));
    let p = start_from_file(&path).await;
    let standby = cluster().standby_ports()[0];
    let node = (0..3)
        .find(|&n| cluster().port(n).unwrap() == standby)
        .unwrap();
    tokio::task::spawn_blocking(move || cluster().pause_replay(node).unwrap())
        .await
        .unwrap();
    let _resume = Resume(node);
    let db = common::connect_direct(cluster().primary().unwrap()).await;
    db.batch_execute(
        "CREATE TABLE IF NOT EXISTS reload_lag (id int); INSERT INTO reload_lag VALUES (1)",
    )
    .await
    .unwrap();
    let lagging = eventually(Duration::from_secs(10), || async {
        let t = p.app.topology().load();
        let n = &t.nodes[node];
        n.lag_bytes.is_some_and(|b| b > 0) && n.is_eligible_standby()
    })
    .await;
    assert!(lagging, "the paused standby lags, within a 1 GiB limit");

    reload_with(&p, &path, &text(1)).await.unwrap();
    let out = eventually(Duration::from_secs(10), || async {
        !p.app.topology().load().nodes[node].is_eligible_standby()
    })
    .await;
    assert!(
        out,
        "with max_lag_bytes = 1 the lagging standby gets no reads"
    );
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn bad_files_and_restart_only_changes_are_refused() {
    let base = config_toml(&admin(), "");
    let path = config_file("refused", &base);
    let p = start_from_file(&path).await;

    let e = reload_with(
        &p,
        &path,
        &format!("{base}\n[[databases]]\nname = \"d\"\nmax_lagg = 1\n"),
    )
    .await
    .expect_err("an invalid file is refused");
    assert_eq!(sqlstate(&e), Some("F0000"), "{e}");
    assert!(message(&e).contains("max_lagg"), "{}", message(&e));

    let moved = base.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"");
    assert_ne!(moved, base);
    let e = reload_with(&p, &path, &moved)
        .await
        .expect_err("a new listen address is refused");
    let m = message(&e);
    assert!(m.contains("proxy.listen") && m.contains("restart"), "{m}");

    // The running configuration stays: logins work, SHOW CONFIG is unchanged.
    p.connect_as(APP_USER, APP_PASSWORD, "postgres")
        .await
        .unwrap();
    assert_eq!(p.app.settings().config.proxy.listen.port(), 0);
    let _ = std::fs::remove_file(&path);
}

/// A free loopback port (bound then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child process when dropped (a failing test leaves nothing running).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `signal` (`HUP`, `TERM`) to a process.
fn send_signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sighup_reloads_the_binary_instead_of_ending_it() {
    create_role().await;
    let port = free_port();
    let base = config_toml("", "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let path = config_file("sighup", &base);
    let mut child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_causeway"))
            .args(["--config", path.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start causeway"),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let login = |user: &'static str, password: &'static str| async move {
        let info = format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname=postgres",
            addr.port()
        );
        let (client, conn) = tokio_postgres::connect(&info, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client.simple_query("SELECT 1").await.map(|_| ())
    };
    let up = eventually(Duration::from_secs(15), || async {
        login(APP_USER, APP_PASSWORD).await.is_ok()
    })
    .await;
    assert!(up, "causeway serves");
    let e = login(ROLE, "pw1").await.expect_err("not configured yet");
    assert_eq!(sqlstate(&e), Some("28P01"), "{e}");

    std::fs::write(&path, format!("{base}\n{}", role_entry("pw1"))).unwrap();
    send_signal(child.0.id(), "HUP");
    let reloaded = eventually(Duration::from_secs(10), || async {
        login(ROLE, "pw1").await.is_ok()
    })
    .await;
    assert!(reloaded, "SIGHUP applied the new user");
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the process is still running"
    );

    // A bad file on SIGHUP is logged and changes nothing; the next good one applies (signals
    // are handled in order, so this also shows the bad one did not end the process).
    std::fs::write(&path, "this is not toml [").unwrap();
    send_signal(child.0.id(), "HUP");
    login(ROLE, "pw1")
        .await
        .expect("the running configuration stays");
    std::fs::write(&path, &base).unwrap();
    send_signal(child.0.id(), "HUP");
    let removed = eventually(Duration::from_secs(10), || async {
        login(ROLE, "pw1")
            .await
            .is_err_and(|e| sqlstate(&e) == Some("28P01"))
    })
    .await;
    assert!(removed, "the next good file applies");
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the process is still running"
    );

    send_signal(child.0.id(), "TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.0.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGTERM still stops it"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_file(&path);
}

/// Starts the binary on `port` with the configuration in `path`, its stderr going to `log`
/// (a file, as a supervisor would have it), and waits until it serves.
async fn start_binary(path: &Path, port: u16, log: &Path) -> Child {
    let stderr = std::fs::File::create(log).unwrap();
    let child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_causeway"))
            .args(["--config", path.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start causeway"),
    );
    let up = eventually(Duration::from_secs(15), || async {
        let info = format!(
            "host=127.0.0.1 port={port} user={APP_USER} password={APP_PASSWORD} dbname=postgres"
        );
        tokio_postgres::connect(&info, tokio_postgres::NoTls)
            .await
            .is_ok()
    })
    .await;
    assert!(up, "causeway serves");
    child
}

/// The `[proxy]` lines for a binary on `port` with these log settings.
fn logging_config(port: u16, level: &str, format: &str) -> String {
    config_toml(
        &format!("log_level = \"{level}\"\nlog_format = \"{format}\""),
        "",
    )
    .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
}

#[tokio::test]
async fn log_level_reloads_and_a_log_file_gets_no_colour() {
    let port = free_port();
    let path = config_file("loglevel", &logging_config(port, "warn", "text"));
    let log = path.with_extension("log");
    let child = start_binary(&path, port, &log).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("causeway listening"),
        "no info lines at warn: {text}"
    );

    std::fs::write(&path, logging_config(port, "info", "text")).unwrap();
    send_signal(child.0.id(), "HUP");
    let logged = eventually(Duration::from_secs(10), || async {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("reload: configuration applied")
    })
    .await;
    assert!(logged, "the reload applied the info level");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("INFO"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "no ANSI escape codes in a file: {text:?}"
    );
    drop(child);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&log);
}

#[tokio::test]
async fn json_log_format_writes_one_object_per_line_without_passwords() {
    let port = free_port();
    let path = config_file("logjson", &logging_config(port, "info", "json"));
    let log = path.with_extension("log");
    let child = start_binary(&path, port, &log).await;
    let listening = eventually(Duration::from_secs(10), || async {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("causeway listening")
    })
    .await;
    assert!(listening, "the start is logged");
    drop(child);
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("fields").is_some(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines > 0);
    assert!(
        !text.contains(cluster().superuser_password()),
        "a password in the log"
    );
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_file(&log);
}
