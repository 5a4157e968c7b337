//! The smallest end-to-end check: a query through the proxy runs on the primary.
mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_query_runs_on_the_primary() {
    let proxy = common::start_proxy().await;
    let client = proxy.connect().await;
    let row = client
        .query_one("select inet_server_port(), pg_is_in_recovery()", &[])
        .await
        .unwrap();
    let port: i32 = row.get(0);
    let in_recovery: bool = row.get(1);
    assert_eq!(port as u16, common::cluster().port(0).unwrap());
    assert!(!in_recovery);
}
