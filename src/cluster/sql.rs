//! Talking SQL to the nodes: psql as the superuser or as any role, and the few facts the
//! harness reads back (recovery state, WAL positions).
//!
//! psql rather than a client library keeps the harness synchronous and dependency-free, and
//! exercises the same authentication paths a user's tools take.

use std::process::Command;

use super::{
    process, ClusterError, LocalCluster, Lsn, Result, COMMAND_TIMEOUT, DATABASE, SUPERUSER,
};

impl LocalCluster {
    /// Runs `sql` on node `n` as the superuser over its Unix socket (`psql -X -A -t -q -v
    /// ON_ERROR_STOP=1 -c`) and returns stdout, trimmed: one line per row, columns separated by
    /// `|`, nothing for statements without rows. Several statements may be given at once; they
    /// run in one implicit transaction.
    ///
    /// # Errors
    /// [`ClusterError::CommandFailed`] with psql's stderr when the SQL fails or the node is down.
    pub fn psql(&self, n: usize, sql: &str) -> Result<String> {
        let node = self.node(n)?;
        let port = self.port(n)?;
        let mut cmd = self.psql_command(node.dir.as_os_str(), port, SUPERUSER, sql);
        Ok(process::run_ok(&mut cmd, COMMAND_TIMEOUT)?
            .trim()
            .to_owned())
    }

    /// Like [`psql`](Self::psql) but over TCP (127.0.0.1) as `user`, so `pg_hba.conf` and
    /// password authentication apply; with `password`, passed through `PGPASSWORD`.
    ///
    /// # Errors
    /// [`ClusterError::CommandFailed`] with psql's stderr, e.g. on a wrong password.
    pub fn psql_as(
        &self,
        n: usize,
        user: &str,
        password: Option<&str>,
        sql: &str,
    ) -> Result<String> {
        let port = self.port(n)?;
        let mut cmd = self.psql_command("127.0.0.1".as_ref(), port, user, sql);
        if let Some(password) = password {
            cmd.env("PGPASSWORD", password);
        }
        Ok(process::run_ok(&mut cmd, COMMAND_TIMEOUT)?
            .trim()
            .to_owned())
    }

    pub(super) fn psql_command(
        &self,
        host: &std::ffi::OsStr,
        port: u16,
        user: &str,
        sql: &str,
    ) -> Command {
        let mut cmd = self.runner.command(&self.bin.path("psql"));
        // -w: never prompt for a password (psql would read it from the terminal, not stdin).
        cmd.args(["-X", "-A", "-t", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(host)
            .args([
                "-p",
                &port.to_string(),
                "-U",
                user,
                "-d",
                DATABASE,
                "-c",
                sql,
            ]);
        cmd
    }

    /// `pg_is_in_recovery()` of node `n`: true for a standby.
    ///
    /// # Errors
    /// As [`psql`](Self::psql).
    pub fn is_in_recovery(&self, n: usize) -> Result<bool> {
        parse_bool(&self.psql(n, "SELECT pg_is_in_recovery()")?)
    }

    /// `pg_last_wal_replay_lsn()` of node `n`: how far a standby has replayed (`None` on a node
    /// that never replayed anything, such as a primary that was never a standby).
    ///
    /// # Errors
    /// As [`psql`](Self::psql).
    pub fn replay_lsn(&self, n: usize) -> Result<Option<Lsn>> {
        let text = self.psql(n, "SELECT pg_last_wal_replay_lsn()")?;
        if text.is_empty() {
            Ok(None)
        } else {
            parse_lsn(&text).map(Some)
        }
    }

    /// `pg_current_wal_lsn()` of node `n`, which must be a primary.
    ///
    /// # Errors
    /// As [`psql`](Self::psql); fails on a standby.
    pub fn current_lsn(&self, n: usize) -> Result<Lsn> {
        parse_lsn(&self.psql(n, "SELECT pg_current_wal_lsn()")?)
    }

    /// What node `n` has: written WAL on a primary, replayed WAL on a standby (0 if none yet).
    pub(super) fn wal_position(&self, n: usize) -> Result<Lsn> {
        let text = self.psql(
            n,
            "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() \
             ELSE pg_current_wal_lsn() END",
        )?;
        if text.is_empty() {
            Ok(Lsn::ZERO)
        } else {
            parse_lsn(&text)
        }
    }
}

/// A WAL position as psql prints it.
fn parse_lsn(text: &str) -> Result<Lsn> {
    text.parse()
        .map_err(|_| ClusterError::Invalid(format!("not a WAL position: {text:?}")))
}

pub(super) fn parse_bool(text: &str) -> Result<bool> {
    match text {
        "t" => Ok(true),
        "f" => Ok(false),
        other => Err(ClusterError::Invalid(format!(
            "expected a boolean from psql, got {other:?}"
        ))),
    }
}
