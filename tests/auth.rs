//! Users without plaintext passwords in the configuration, through the proxy in front of a real
//! cluster: SCRAM and md5 pass-through for configured users that only have a verifier or hash,
//! and `[auth_query]` users looked up on the primary (created, dropped, password changed while
//! the proxy runs), the lookup made as its own role.
mod common;

use std::sync::OnceLock;
use std::time::Duration;

use causeway::cluster::{self, APP_MD5_PASSWORD, APP_MD5_USER, APP_PASSWORD, APP_USER};
use common::{cluster, connect_direct, eventually, Proxy};
use tokio_postgres::error::SqlState;

/// The role the lookup logs in as, and its password.
const LOOKUP_USER: &str = "causeway_auth";
const LOOKUP_PASSWORD: &str = "lookup-pw";

/// The query the tests configure: the SECURITY DEFINER function docs/SECURITY.md recommends.
const LOOKUP_QUERY: &str = "SELECT uname, secret FROM causeway_auth.user_secret($1)";

/// Creates the lookup role and its function on the primary, once per test binary.
fn lookup_role() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let c = cluster();
        let sql = format!(
            "CREATE ROLE {LOOKUP_USER} LOGIN PASSWORD '{LOOKUP_PASSWORD}';
             CREATE SCHEMA causeway_auth;
             CREATE FUNCTION causeway_auth.user_secret(p_user text)
               RETURNS TABLE (uname text, secret text)
               LANGUAGE sql STABLE SECURITY DEFINER
               SET search_path = pg_catalog, pg_temp
               AS $$ SELECT usename::text, passwd::text FROM pg_catalog.pg_shadow
                     WHERE usename = p_user AND NOT usesuper $$;
             REVOKE ALL ON FUNCTION causeway_auth.user_secret(text) FROM PUBLIC;
             GRANT USAGE ON SCHEMA causeway_auth TO {LOOKUP_USER};
             GRANT EXECUTE ON FUNCTION causeway_auth.user_secret(text) TO {LOOKUP_USER};"
        );
        c.psql(c.primary().unwrap(), &sql)
            .expect("create the lookup role and function");
    });
}

/// Runs `sql` on the primary as the superuser.
async fn on_primary(sql: &str) {
    let client = connect_direct(cluster().primary().unwrap()).await;
    client.batch_execute(sql).await.unwrap();
}

/// Ends every server session of `role` on every node, so the proxy's next requests need new
/// server connections (which log in again).
async fn end_server_sessions(role: &str) {
    for n in 0..cluster().node_count() {
        let client = connect_direct(n).await;
        client
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                &[&role],
            )
            .await
            .unwrap();
    }
}

/// `[auth_query]` with the test's role and function, and these cache times.
fn auth_query_section(cache_ttl: &str, negative_ttl: &str) -> String {
    format!(
        "[auth_query]\nuser = \"{LOOKUP_USER}\"\npassword = \"{LOOKUP_PASSWORD}\"\n\
         query = \"{LOOKUP_QUERY}\"\ncache_ttl = \"{cache_ttl}\"\nnegative_ttl = \"{negative_ttl}\"\n"
    )
}

/// A proxy with read/write splitting and `[auth_query]` on.
async fn auth_query_proxy(cache_ttl: &str, negative_ttl: &str) -> Proxy {
    lookup_role();
    common::start_routing_proxy("", &auth_query_section(cache_ttl, negative_ttl)).await
}

/// The role's stored secret (`pg_authid.rolpassword`) on the primary.
async fn stored_secret(role: &str) -> String {
    let client = connect_direct(cluster().primary().unwrap()).await;
    client
        .query_one(
            "SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1",
            &[&role],
        )
        .await
        .unwrap()
        .get(0)
}

/// Logs in as `user` and checks who the servers think it is, on the primary and on a standby
/// (each node's pool logs in on its own, so both use the pass-through secret).
async fn runs_on_primary_and_standby(proxy: &Proxy, user: &str, password: &str) {
    let client = proxy
        .connect_as(user, password, "postgres")
        .await
        .unwrap_or_else(|e| panic!("{user} cannot log in: {e}"));
    for (hint, standby) in [("primary", false), ("standby", true)] {
        let sql = format!(
            "/* causeway:{hint} */ SELECT current_user::text, pg_is_in_recovery(), \
             inet_server_port()"
        );
        let row = client
            .query_one(&sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{user} on the {hint}: {e}"));
        assert_eq!(row.get::<_, &str>(0), user);
        assert_eq!(row.get::<_, bool>(1), standby, "{hint}");
        let port = u16::try_from(row.get::<_, i32>(2)).unwrap();
        let c = cluster();
        assert_eq!(port == c.primary_port().unwrap(), !standby, "{hint}");
    }
}

/// The SQLSTATE of a refused login.
async fn refused(proxy: &Proxy, user: &str, password: &str) -> Option<SqlState> {
    match proxy.connect_as(user, password, "postgres").await {
        Ok(client) => match client.simple_query("SELECT 1").await {
            Ok(_) => None,
            Err(e) => e.code().cloned(),
        },
        Err(e) => e.code().cloned(),
    }
}

// === pass-through for configured users ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_verifier_or_hash_without_server_password_logs_in_by_pass_through() {
    let scram = stored_secret(APP_USER).await;
    let md5 = stored_secret(APP_MD5_USER).await;
    assert!(scram.starts_with("SCRAM-SHA-256$"), "app has a verifier");
    assert!(md5.starts_with("md5"), "app_md5 has an md5 hash");
    let c = cluster();
    let toml = format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
[routing]
check_interval = "100ms"
[monitor]
user = "{monitor}"
password = "{monitor_password}"
{nodes}
[[users]]
name = "{APP_USER}"
password = "{scram}"
[[users]]
name = "{APP_MD5_USER}"
auth = "md5"
password = "{md5}"
"#,
        monitor = cluster::MONITOR_USER,
        monitor_password = cluster::MONITOR_PASSWORD,
        nodes = c.nodes_toml().unwrap(),
    );
    let proxy = common::start_proxy_from(toml).await;
    let ok = eventually(Duration::from_secs(10), || async {
        proxy.app.topology().load().eligible_standbys() == 2
    })
    .await;
    assert!(ok, "both standbys become eligible for reads");

    runs_on_primary_and_standby(&proxy, APP_USER, APP_PASSWORD).await;
    runs_on_primary_and_standby(&proxy, APP_MD5_USER, APP_MD5_PASSWORD).await;
    // Several clients at once share the pools the first one's keys opened.
    let clients: Vec<_> = futures_util::future::join_all(
        (0..4).map(|_| proxy.connect_as(APP_USER, APP_PASSWORD, "postgres")),
    )
    .await;
    for client in clients {
        let n: i32 = client
            .unwrap()
            .query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
    }
    assert_eq!(
        refused(&proxy, APP_USER, "wrong").await,
        Some(SqlState::INVALID_PASSWORD)
    );
    assert_eq!(
        refused(&proxy, APP_MD5_USER, "wrong").await,
        Some(SqlState::INVALID_PASSWORD)
    );
}

// === auth_query ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_created_after_start_logs_in_and_the_lookup_runs_as_its_own_role() {
    let proxy = auth_query_proxy("60s", "300ms").await;
    let user = "aq_created";
    // Not there yet: exactly what an unknown user gets.
    assert_eq!(
        refused(&proxy, user, "pw1").await,
        Some(SqlState::INVALID_PASSWORD)
    );
    on_primary(&format!("CREATE ROLE {user} LOGIN PASSWORD 'pw1'")).await;
    // Once the negative entry expired (and the standbys replayed the role, for their pools).
    let logged_in = eventually(Duration::from_secs(10), || async {
        refused(&proxy, user, "pw1").await.is_none()
    })
    .await;
    assert!(logged_in, "a user created after start logs in");
    let ok = eventually(Duration::from_secs(10), || async {
        let t = proxy.app.topology().load();
        t.nodes.iter().all(|n| n.lag_bytes.unwrap_or(0) == 0)
    })
    .await;
    assert!(ok, "standbys caught up");
    runs_on_primary_and_standby(&proxy, user, "pw1").await;
    assert_eq!(
        refused(&proxy, user, "wrong").await,
        Some(SqlState::INVALID_PASSWORD)
    );

    // The lookup connection is the dedicated role's, never the client's.
    let primary = connect_direct(cluster().primary().unwrap()).await;
    let rows = primary
        .query(
            "SELECT usename::text FROM pg_stat_activity WHERE application_name = $1",
            &[&causeway::auth_query::APPLICATION_NAME],
        )
        .await
        .unwrap();
    let users: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert!(!users.is_empty(), "the lookup connection is open");
    assert!(users.iter().all(|u| u == LOOKUP_USER), "{users:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_name_fails_like_a_wrong_password_and_is_looked_up_once() {
    let proxy = auth_query_proxy("60s", "60s").await;
    for _ in 0..5 {
        assert_eq!(
            refused(&proxy, "aq_nobody", "whatever").await,
            Some(SqlState::INVALID_PASSWORD)
        );
    }
    // Same answer as a configured user's wrong password.
    assert_eq!(
        refused(&proxy, APP_USER, "whatever").await,
        Some(SqlState::INVALID_PASSWORD)
    );
    // Configured users never cost a lookup.
    let _ = proxy.connect().await;
    let settings = proxy.app.ctx().settings_full();
    let auth_query = settings.auth_query.as_ref().unwrap();
    assert_eq!(auth_query.lookups(), 1, "one lookup for five attempts");
    assert_eq!(auth_query.cached(), (0, 1));
    // Logins of one name at the same time share one lookup.
    let codes = futures_util::future::join_all(
        (0..6).map(|_| refused(&proxy, "aq_nobody_either", "whatever")),
    )
    .await;
    assert!(
        codes.iter().all(|c| *c == Some(SqlState::INVALID_PASSWORD)),
        "{codes:?}"
    );
    assert_eq!(
        auth_query.lookups(),
        2,
        "one more lookup for six logins at once"
    );
    // A superuser is not served by the function: not found either.
    let su = cluster::SUPERUSER;
    let su_password = cluster().superuser_password().to_owned();
    let toml = common::routing_config_toml("", &auth_query_section("60s", "60s"))
        .replace(&format!("name = \"{su}\""), "name = \"someone_else\"");
    let proxy = common::start_proxy_from(toml).await;
    assert_eq!(
        refused(&proxy, su, &su_password).await,
        Some(SqlState::INVALID_PASSWORD)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_user_is_refused_once_its_entry_expires() {
    let proxy = auth_query_proxy("300ms", "300ms").await;
    let user = "aq_dropped";
    on_primary(&format!("CREATE ROLE {user} LOGIN PASSWORD 'pw'")).await;
    let logged_in = eventually(Duration::from_secs(10), || async {
        refused(&proxy, user, "pw").await.is_none()
    })
    .await;
    assert!(logged_in);
    on_primary(&format!("DROP ROLE {user}")).await;
    let gone = eventually(Duration::from_secs(10), || async {
        refused(&proxy, user, "pw").await == Some(SqlState::INVALID_PASSWORD)
    })
    .await;
    assert!(gone, "a dropped user is refused with 28P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_changed_on_the_server_takes_effect_after_a_refresh() {
    let proxy = auth_query_proxy("300ms", "300ms").await;
    let user = "aq_changed";
    on_primary(&format!("CREATE ROLE {user} LOGIN PASSWORD 'one'")).await;
    let logged_in = eventually(Duration::from_secs(10), || async {
        refused(&proxy, user, "one").await.is_none()
    })
    .await;
    assert!(logged_in);
    // A session that stays across the change.
    let old = proxy.connect_as(user, "one", "postgres").await.unwrap();
    on_primary(&format!("ALTER ROLE {user} PASSWORD 'two'")).await;
    let changed = eventually(Duration::from_secs(10), || async {
        refused(&proxy, user, "two").await.is_none()
    })
    .await;
    assert!(changed, "the new password works after the refresh");
    assert_eq!(
        refused(&proxy, user, "one").await,
        Some(SqlState::INVALID_PASSWORD),
        "the old password is refused"
    );
    // New server connections log in with what the new password's login revealed (not what
    // the old one's did), on the primary and on the standbys.
    end_server_sessions(user).await;
    let ok = eventually(Duration::from_secs(10), || async {
        let t = proxy.app.topology().load();
        t.nodes.iter().all(|n| n.lag_bytes.unwrap_or(0) == 0)
    })
    .await;
    assert!(ok, "standbys caught up");
    runs_on_primary_and_standby(&proxy, user, "two").await;
    let n: i32 = old.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 1, "a session from before the change goes on");
}

/// Also the default query (PgBouncer's, over `pg_shadow`), with a role that may read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_md5_user_found_by_auth_query_logs_in_by_md5_pass_through() {
    let section = format!(
        "[auth_query]\nuser = \"{su}\"\npassword = \"{pw}\"\n",
        su = cluster::SUPERUSER,
        pw = cluster().superuser_password()
    );
    let toml = common::routing_config_toml("", &section).replace(
        &format!("name = \"{APP_MD5_USER}\""),
        "name = \"not_app_md5\"",
    );
    let proxy = common::start_proxy_from(toml).await;
    let ok = eventually(Duration::from_secs(10), || async {
        proxy.app.topology().load().eligible_standbys() == 2
    })
    .await;
    assert!(ok);
    runs_on_primary_and_standby(&proxy, APP_MD5_USER, APP_MD5_PASSWORD).await;
    assert_eq!(
        refused(&proxy, APP_MD5_USER, "wrong").await,
        Some(SqlState::INVALID_PASSWORD)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_lookup_refuses_the_login_with_08006_and_configured_users_go_on() {
    lookup_role();
    let section = auth_query_section("60s", "60s").replace(LOOKUP_PASSWORD, "not-the-password");
    let proxy = common::start_proxy_with("", &section).await;
    for _ in 0..2 {
        let code = refused(&proxy, "aq_whoever", "pw").await;
        assert_eq!(code, Some(SqlState::CONNECTION_FAILURE));
    }
    let settings = proxy.app.ctx().settings_full();
    assert_eq!(
        settings.auth_query.as_ref().unwrap().cached(),
        (0, 0),
        "a failure is not cached as \"not found\""
    );
    let client = proxy.connect().await;
    let n: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_auth_query_sessions_while_auth_query_stays_on() {
    lookup_role();
    let user = "aq_reloaded";
    on_primary(&format!("CREATE ROLE {user} LOGIN PASSWORD 'pw'")).await;
    let with = common::routing_config_toml("", &auth_query_section("60s", "200ms"));
    let proxy = common::start_proxy_from(with.clone()).await;
    let logged_in = eventually(Duration::from_secs(10), || async {
        refused(&proxy, user, "pw").await.is_none()
    })
    .await;
    assert!(logged_in);
    let client = proxy.connect_as(user, "pw", "postgres").await.unwrap();
    let config = |toml: &str| {
        causeway::config::Config::from_toml(toml, "test", &|_| None)
            .unwrap()
            .config
    };
    causeway::reload::apply(proxy.app.ctx(), config(&with)).expect("reload");
    let n: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(
        n, 1,
        "the session of an auth_query user survives the reload"
    );
    // With [auth_query] gone, that user is no longer known: its idle session ends.
    let without = common::routing_config_toml("", "");
    causeway::reload::apply(proxy.app.ctx(), config(&without)).expect("reload");
    let ended = eventually(Duration::from_secs(5), || async {
        client.simple_query("SELECT 1").await.is_err()
    })
    .await;
    assert!(ended, "the session ends once auth_query is off");
    assert_eq!(
        refused(&proxy, user, "pw").await,
        Some(SqlState::INVALID_PASSWORD)
    );
}
