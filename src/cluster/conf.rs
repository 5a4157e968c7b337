//! The text the harness writes into a cluster: per-node server settings, `pg_hba.conf`, the role
//! set-up SQL, and the quoting each of those formats needs.
//!
//! Each node's settings live in `causeway.conf` in its data directory, included from the end of
//! `postgresql.conf`. pg_basebackup and pg_rewind copy the source's copy along with everything
//! else, so the harness rewrites the file whole for the receiving node afterwards; keeping the
//! settings in a file of their own makes that a plain overwrite instead of an edit.

use std::path::Path;

use super::{
    APP_MD5_PASSWORD, APP_MD5_USER, APP_PASSWORD, APP_TRUST_USER, APP_USER, MONITOR_PASSWORD,
    MONITOR_USER,
};

/// Name of the per-node settings file inside each data directory.
pub(crate) const NODE_CONF_FILE: &str = "causeway.conf";

/// Appended to the `postgresql.conf` initdb writes; later settings win, so ours override its.
pub(crate) const INCLUDE_LINE: &str =
    "\n# Added by causeway's cluster harness.\ninclude 'causeway.conf'\n";

/// The whole `pg_hba.conf` of every node.
///
/// Replication is trusted from loopback so standbys and pg_basebackup need no password; the
/// `app_trust` and `app_md5` roles exist to exercise those client authentication methods through
/// the proxy; everyone else authenticates with SCRAM over TCP. Unix sockets live in per-node
/// directories only the cluster's OS account can enter, hence trust there.
pub(crate) const PG_HBA: &str = "\
# Written by causeway's cluster harness.
# TYPE  DATABASE     USER       ADDRESS        METHOD
local   all          all                       trust
host    replication  all        127.0.0.1/32   trust
host    all          app_trust  127.0.0.1/32   trust
host    all          app_md5    127.0.0.1/32   md5
host    all          all        127.0.0.1/32   scram-sha-256
";

/// Everything that goes into one node's `causeway.conf`.
#[derive(Debug)]
pub(crate) struct NodeConf<'a> {
    /// `cluster_name`, which is also the `application_name` its WAL receiver reports upstream.
    pub(crate) name: &'a str,
    /// TCP port on 127.0.0.1.
    pub(crate) port: u16,
    /// Directory for the Unix socket.
    pub(crate) socket_dir: &'a Path,
    /// `max_connections`; must be the same on every node (a hot standby refuses to run with
    /// less than its primary).
    pub(crate) max_connections: u32,
    /// `ClusterOptions::extra_conf`, common to all nodes.
    pub(crate) extra: &'a [String],
    /// Lines added to this node by `LocalCluster::set_conf`, in order.
    pub(crate) node_lines: &'a [String],
}

/// Renders `causeway.conf`; later lines win, so the order is: harness defaults, the cluster's
/// extra lines, the node's own lines.
pub(crate) fn render_node_conf(conf: &NodeConf<'_>) -> String {
    let mut text = format!(
        "# Written by causeway's cluster harness and rewritten on every change; use\n\
         # LocalCluster::set_conf instead of editing.\n\
         listen_addresses = '127.0.0.1'\n\
         port = {port}\n\
         unix_socket_directories = {socket_dir}\n\
         cluster_name = {name}\n\
         max_connections = {max_connections}\n\
         shared_buffers = 32MB\n\
         wal_level = replica\n\
         max_wal_senders = 10\n\
         max_replication_slots = 10\n\
         hot_standby = on\n\
         hot_standby_feedback = on\n\
         wal_receiver_status_interval = 1s\n\
         # pg_rewind needs hint bits WAL-logged, full-page images, and the target's WAL back\n\
         # to the last checkpoint before the fork, which later checkpoints would recycle.\n\
         wal_log_hints = on\n\
         full_page_writes = on\n\
         wal_keep_size = 128MB\n\
         # Throwaway data: durability buys nothing, speed does.\n\
         fsync = off\n\
         synchronous_commit = on\n\
         password_encryption = 'scram-sha-256'\n\
         logging_collector = off\n\
         log_line_prefix = '%m [%p] %q%u@%d '\n",
        port = conf.port,
        socket_dir = quote_conf(&conf.socket_dir.to_string_lossy()),
        name = quote_conf(conf.name),
        max_connections = conf.max_connections,
    );
    for line in conf.extra.iter().chain(conf.node_lines) {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// The SQL that creates the documented roles on a fresh primary.
///
/// `app_md5`'s password is hashed as md5 by switching `password_encryption` for that one
/// statement; the others get SCRAM verifiers.
pub(crate) fn roles_sql() -> String {
    let app_roles = format!("{APP_USER}, {APP_MD5_USER}, {APP_TRUST_USER}");
    format!(
        "CREATE ROLE {MONITOR_USER} LOGIN PASSWORD {monitor_pw} IN ROLE pg_monitor;\n\
         CREATE ROLE {APP_USER} LOGIN CREATEDB PASSWORD {app_pw};\n\
         SET password_encryption = 'md5';\n\
         CREATE ROLE {APP_MD5_USER} LOGIN CREATEDB PASSWORD {md5_pw};\n\
         RESET password_encryption;\n\
         CREATE ROLE {APP_TRUST_USER} LOGIN CREATEDB;\n\
         GRANT CREATE ON DATABASE postgres TO {app_roles};\n\
         GRANT ALL ON SCHEMA public TO {app_roles};\n",
        monitor_pw = quote_literal(MONITOR_PASSWORD),
        app_pw = quote_literal(APP_PASSWORD),
        md5_pw = quote_literal(APP_MD5_PASSWORD),
    )
}

/// A single-quoted string for postgresql.conf, where both `'` and `\` are special.
pub(crate) fn quote_conf(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// A single-quoted SQL string literal (standard_conforming_strings is on by default, so only `'`
/// is special).
pub(crate) fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A libpq connection-string value: bare when that is unambiguous, else single-quoted with `\`
/// and `'` escaped by backslashes.
pub(crate) fn quote_conninfo(value: &str) -> String {
    let bare = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\' || c == '=');
    if bare {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_conf(r"a'b\c"), r"'a''b\\c'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_conninfo("app"), "app");
        assert_eq!(quote_conninfo(""), "''");
        assert_eq!(quote_conninfo(r"p w'\"), r"'p w\'\\'");
    }

    #[test]
    fn node_conf_puts_node_lines_last() {
        let extra = vec!["work_mem = '4MB'".to_owned()];
        let node = vec!["work_mem = '8MB'".to_owned()];
        let text = render_node_conf(&NodeConf {
            name: "node1",
            port: 5999,
            socket_dir: Path::new("/tmp/x y"),
            max_connections: 300,
            extra: &extra,
            node_lines: &node,
        });
        assert!(text.contains("port = 5999\n"));
        assert!(text.contains("unix_socket_directories = '/tmp/x y'\n"));
        assert!(text.contains("cluster_name = 'node1'\n"));
        assert!(text.find("'4MB'").unwrap() < text.find("'8MB'").unwrap());
        assert!(text.ends_with("work_mem = '8MB'\n"));
    }
}
