//! Restart without refusing a connection, against the real cluster and the real binary: a
//! second causeway starts on the same port (`SO_REUSEPORT`) while clients connect and query in
//! a loop, the first gets SIGTERM, and no client sees an error.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use causeway::cluster::APP_TRUST_USER;
use common::{config_toml, eventually};

/// Kills the child process when dropped (a failing test leaves nothing running).
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free at the time of asking.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A file of this test process's own.
fn temp_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("causeway-restart-{}-{name}", std::process::id()))
}

/// Starts the binary with the configuration in `path`, its log going to `log`, and waits until
/// it says it listens and knows the primary (another process may already answer on the port,
/// so connecting proves nothing).
async fn start_binary(path: &Path, log: &Path) -> Child {
    let stderr = std::fs::File::create(log).unwrap();
    let child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_causeway"))
            .args(["--config", path.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start causeway"),
    );
    let up = eventually(Duration::from_secs(15), || async {
        std::fs::read_to_string(log)
            .is_ok_and(|t| t.contains("causeway listening") && t.contains("primary is now"))
    })
    .await;
    assert!(
        up,
        "causeway listens: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    child
}

/// Waits up to `limit` for the process to exit; its exit status.
async fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.0.try_wait().unwrap() {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    /// Transactions that succeeded.
    ok: AtomicUsize,
    /// Every failure: connecting or querying.
    errors: parking_lot::Mutex<Vec<String>>,
}

/// One client: a new connection per transaction (as `pgbench -C`) until `stop`. The trust
/// user: SCRAM in a debug build would make each connection slow enough to hide the race.
async fn client_loop(port: u16, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let info = format!(
        "host=127.0.0.1 port={port} user={APP_TRUST_USER} dbname=postgres connect_timeout=10"
    );
    while !stop.load(Ordering::Relaxed) {
        let result = async {
            let (client, conn) = tokio_postgres::connect(&info, tokio_postgres::NoTls).await?;
            let conn = tokio::spawn(conn);
            // One request per connection, as pgbench -C sends its transaction (simple
            // protocol): a drained session ends at its first idle point after it.
            let rows = client.simple_query("SELECT 41 + 1").await?;
            drop(client);
            let _ = conn.await;
            let answer = rows.iter().find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            });
            Ok::<_, tokio_postgres::Error>(answer)
        }
        .await;
        match result {
            Ok(Some(a)) if a == "42" => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(other) => tally.errors.lock().push(format!("wrong answer {other:?}")),
            Err(e) => tally.errors.lock().push(format!("{e:?}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_process_takes_over_the_port_and_no_client_fails() {
    let port = free_port();
    let config = temp_file("proxy.toml");
    std::fs::write(
        &config,
        config_toml("shutdown_timeout = \"20s\"", "")
            .replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let (log_old, log_new) = (temp_file("old.log"), temp_file("new.log"));
    let mut old = start_binary(&config, &log_old).await;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..8)
        .map(|_| tokio::spawn(client_loop(port, stop.clone(), tally.clone())))
        .collect();
    let served = eventually(Duration::from_secs(30), || async {
        tally.ok.load(Ordering::Relaxed) >= 20
    })
    .await;
    assert!(served, "the old process serves the load: {:?}", {
        let e = tally.errors.lock();
        e[..e.len().min(3)].to_vec()
    });

    let _new = start_binary(&config, &log_new).await;
    let before_term = tally.ok.load(Ordering::Relaxed);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &old.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = wait_exit(&mut old, Duration::from_secs(30)).await;
    assert!(
        exited.is_some_and(|s| s.success()),
        "the old process drains and exits cleanly: {exited:?}\n{}",
        std::fs::read_to_string(&log_old).unwrap_or_default()
    );
    let at_exit = tally.ok.load(Ordering::Relaxed);
    // The new process alone now serves.
    let goes_on = eventually(Duration::from_secs(30), || async {
        tally.ok.load(Ordering::Relaxed) >= at_exit + 20
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert!(goes_on, "the new process serves after the old one left");
    let errors = tally.errors.lock();
    assert!(
        errors.is_empty(),
        "{} of {} transactions failed (SIGTERM after {before_term}): {:?}",
        errors.len(),
        errors.len() + tally.ok.load(Ordering::Relaxed),
        &errors[..errors.len().min(5)]
    );
    let _ = std::fs::remove_file(&config);
}
