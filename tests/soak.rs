//! The soak in the test suite (issue 16): the code of `examples/soak` run for 2 minutes
//! (`CAUSEWAY_SOAK_SECS` changes it) against a fresh cluster and the real `causeway` binary,
//! with mixed work, a standby's replay paused and resumed, and one switchover. Once the work
//! has stopped and every client is gone, causeway's descriptors and server connections must
//! come back to where they were before it began, no transaction may be left open on any
//! node, no error may have happened outside the switchover window, and no operation may have
//! been left without an answer. `CAUSEWAY_SOAK_PROXY_LOG=<file>` keeps causeway's log,
//! `CAUSEWAY_SOAK_RUST_LOG` sets its filter (default `warn`).

// The report's CSV and a few fields are only the example's.
#[allow(dead_code)]
#[path = "../examples/soak/soak.rs"]
mod soak;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_work_under_chaos_leaks_no_descriptor_connection_or_transaction() {
    let secs: u64 = std::env::var("CAUSEWAY_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let opts = soak::Options {
        duration: Duration::from_secs(secs),
        clients: 14,
        sample_every: Duration::from_secs(5),
        pause_every: Duration::from_secs(20),
        pause_for: Duration::from_secs(5),
        // One switchover, at 45 s (the next would leave less than 30 s of work after it).
        switchover_every: Duration::from_secs(45),
        user: causeway::cluster::APP_TRUST_USER.to_owned(),
        launcher: Box::new(|config| {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_causeway"));
            cmd.arg("--config").arg(config).env(
                "RUST_LOG",
                std::env::var("CAUSEWAY_SOAK_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            );
            cmd
        }),
        // Kept when named (it is removed with the cluster otherwise).
        proxy_log: std::env::var_os("CAUSEWAY_SOAK_PROXY_LOG").map(std::path::PathBuf::from),
        progress: true,
    };
    let report = soak::run(opts).await.expect("the soak runs");
    let text = report.render();
    eprintln!("{text}");

    for (kind, ok) in &report.ok {
        assert!(*ok > 0, "some {kind} operations succeeded\n{text}");
    }
    assert!(report.pauses >= 1, "a standby's replay was paused\n{text}");
    if secs >= 75 {
        assert_eq!(report.switchovers.len(), 1, "one switchover\n{text}");
    }
    assert!(
        report.chaos_errors.is_empty(),
        "every chaos step worked\n{text}"
    );
    // The leaks first.
    assert_eq!(
        report.end.idle_in_tx, 0,
        "no transaction left open on any node\n{text}"
    );
    assert!(
        report.end.server_conns <= report.start.server_conns,
        "server connections back to their start\n{text}"
    );
    assert!(
        report.end.fds <= report.start.fds + soak::FD_SLACK,
        "descriptors back to their start\n{text}"
    );
    assert!(
        report.settled,
        "back to the start within the deadline\n{text}"
    );
    let (hangs, errors): (Vec<_>, Vec<_>) =
        report.unexpected.iter().partition(|f| f.code == "timeout");
    assert!(
        errors.is_empty(),
        "no error outside the switchover window\n{text}"
    );
    assert!(
        hangs.is_empty(),
        "every operation got an answer (see the finding in docs/SOAK.md)\n{text}"
    );
}
