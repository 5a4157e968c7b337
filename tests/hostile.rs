//! Hostile clients and faults (issue 16), through the proxy in front of a real cluster: state a
//! client can make the proxy create is bounded and goes away, and what such a client gets is
//! PostgreSQL's own error.
mod common;

use std::time::Duration;

use causeway::cluster::APP_TRUST_USER;
use common::eventually;

/// Lines of node `n`'s server log that contain `needle`.
fn log_lines_with(n: usize, needle: &str) -> usize {
    let path = common::cluster().log_file(n).unwrap();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonexistent_databases_leave_no_state_and_no_reconnects() {
    let proxy = common::start_proxy().await;
    let primary = common::cluster().primary().unwrap();
    // A prefix no other test uses, so that the primary's log lines are this test's.
    let prefix = format!("cw_nodb_{}", rand::random::<u32>());
    for i in 0..30 {
        let db = format!("{prefix}_{i}");
        let err = proxy
            .connect_as(APP_TRUST_USER, "unused", &db)
            .await
            .err()
            .unwrap_or_else(|| panic!("database {db} does not exist"));
        assert_eq!(common::sqlstate(&err), Some("3D000"), "{err}");
    }
    // The clients have left: no pool or catalog is kept for a database that does not exist.
    let gone = eventually(Duration::from_secs(5), || async {
        let pools = proxy.app.pools().all();
        let catalogs = proxy.app.catalog_databases();
        !pools.iter().any(|p| p.key().database.starts_with(&prefix))
            && !catalogs.iter().any(|d| d.starts_with(&prefix))
    })
    .await;
    assert!(
        gone,
        "pools: {:?}, catalogs: {:?}",
        proxy.app.pools().all(),
        proxy.app.catalog_databases()
    );
    // And nothing connects to the primary on their behalf any more: its log of refused
    // connections to these names stops growing.
    let before = log_lines_with(primary, &prefix);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = log_lines_with(primary, &prefix);
    assert_eq!(
        before, after,
        "connections to nonexistent databases went on after the clients left"
    );
    // A database that exists still gets its catalog.
    let client = proxy.connect().await;
    client.simple_query("select 1").await.unwrap();
    let loaded = eventually(Duration::from_secs(5), || async {
        proxy
            .app
            .catalog_databases()
            .iter()
            .any(|d| d == "postgres")
    })
    .await;
    assert!(loaded, "catalog of an existing database");
}
