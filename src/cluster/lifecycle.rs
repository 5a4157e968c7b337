//! Node lifecycle and configuration: whether a node runs, starting, stopping and restarting it,
//! and changing its settings at run time.

use std::{fs, path::Path, process::Command};

use super::{
    conf::{self, NodeConf},
    poll_until, process, ClusterError, LocalCluster, Result, StopMode, COMMAND_TIMEOUT,
    PG_CTL_WAIT_SECS, READY_TIMEOUT,
};

impl LocalCluster {
    /// Whether node `n`'s server is running (`pg_ctl status`).
    ///
    /// # Errors
    /// Unexpected pg_ctl failures.
    pub fn is_running(&self, n: usize) -> Result<bool> {
        let node = self.node(n)?;
        let mut cmd = self.pg_ctl();
        cmd.arg("status").arg("-D").arg(&node.data);
        let captured = process::run(&mut cmd, COMMAND_TIMEOUT)?;
        // pg_ctl status: 0 running, 3 not running, 4 no usable data directory.
        match captured.status.code() {
            Some(0) => Ok(true),
            Some(3 | 4) => Ok(false),
            _ => captured.into_stdout(&cmd).map(|_| false),
        }
    }

    /// Starts node `n` (`pg_ctl start -w`) if it is not running, returning once it accepts
    /// connections (for a standby: once it is consistent and read-only queries work). It keeps
    /// its role: a stopped old primary comes back as a primary.
    ///
    /// # Errors
    /// [`ClusterError::CommandFailed`] with pg_ctl's stderr and the new server log lines.
    pub fn start_node(&self, n: usize) -> Result<()> {
        self.node(n)?;
        if self.is_running(n)? {
            return Ok(());
        }
        self.pg_ctl_start(n)
    }

    /// Stops node `n` if it is running, waiting until it is down.
    ///
    /// # Errors
    /// pg_ctl failures.
    pub fn stop(&self, n: usize, mode: StopMode) -> Result<()> {
        let node = self.node(n)?;
        if !self.is_running(n)? {
            return Ok(());
        }
        let mut cmd = self.pg_ctl();
        cmd.arg("stop")
            .arg("-D")
            .arg(&node.data)
            .args(["-m", mode.as_pg_ctl_arg(), "-w", "-t"])
            .arg(PG_CTL_WAIT_SECS.to_string());
        process::run_ok(&mut cmd, COMMAND_TIMEOUT).map(drop)
    }

    /// Stops node `n` cleanly (`-m fast`) and starts it again; needed for settings that only
    /// take effect at server start.
    ///
    /// # Errors
    /// As [`stop`](Self::stop) and [`start_node`](Self::start_node).
    pub fn restart_node(&self, n: usize) -> Result<()> {
        self.stop(n, StopMode::Fast)?;
        self.pg_ctl_start(n)
    }

    /// Adds one `postgresql.conf` line to node `n` only (e.g. `recovery_min_apply_delay =
    /// '50ms'` on a standby) and, if the node runs, reloads it and waits until the server has
    /// re-read its configuration. Settings that need a restart take effect at the next
    /// [`restart_node`](Self::restart_node). The line survives restarts, `rebuild_standby` and
    /// `rewind_standby`.
    ///
    /// # Errors
    /// [`ClusterError::Invalid`] if the line is not a single line or the server reports an
    /// error in it (the line is then removed again); query failures.
    pub fn set_conf(&self, n: usize, line: &str) -> Result<()> {
        self.node(n)?;
        if line.contains(['\n', '\r']) {
            return Err(ClusterError::Invalid(format!(
                "configuration must be one line: {line:?}"
            )));
        }
        self.state()[n].conf_lines.push(line.to_owned());
        self.write_node_conf(n)?;
        if !self.is_running(n)? {
            return Ok(());
        }
        // pg_file_settings parses the files as they are now and tries each value without
        // applying it. It says "setting could not be applied" both for a bad value and for a
        // good one that needs a restart; only the latter is acceptable here.
        let problems = self.psql(
            n,
            "SELECT coalesce(string_agg(format('%s line %s: %s = %s: %s', f.sourcefile, \
             f.sourceline, f.name, f.setting, f.error), '; '), '') \
             FROM pg_file_settings f LEFT JOIN pg_settings s ON s.name = f.name \
             WHERE f.error IS NOT NULL \
             AND NOT (f.error = 'setting could not be applied' AND s.context = 'postmaster')",
        )?;
        if !problems.is_empty() {
            self.state()[n].conf_lines.pop();
            self.write_node_conf(n)?;
            return Err(ClusterError::Invalid(format!(
                "node{n} rejects {line:?}: {problems}"
            )));
        }
        let load_time = "SELECT pg_conf_load_time()";
        let before = self.psql(n, load_time)?;
        self.psql(n, "SELECT pg_reload_conf()")?;
        // A new session inherits the postmaster's reload time, which moves once it processed
        // the SIGHUP.
        poll_until(
            || format!("node{n} to reload its configuration"),
            READY_TIMEOUT,
            || Ok((self.psql(n, load_time)? != before).then_some(())),
        )
    }

    /// Turns TLS on at every node with the given PEM certificate (chain) and key: the files go
    /// into each node's directory (mode 0600, owned by the account PostgreSQL runs as, which
    /// is what PostgreSQL demands of a key file), then `ssl = on` and the file settings are
    /// added with [`set_conf`](Self::set_conf) (TLS settings need only a reload). The lines
    /// survive restarts; the files live until the cluster is shut down.
    ///
    /// # Errors
    /// Write failures; a node that rejects the certificate or key.
    pub fn enable_ssl(&self, cert_pem: &str, key_pem: &str) -> Result<()> {
        for n in 0..self.node_count() {
            let dir = self.node(n)?.dir.clone();
            let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
            self.runner.write_file(&cert, cert_pem)?;
            self.runner.write_file(&key, key_pem)?;
            let path = |p: &Path| conf::quote_conf(&p.display().to_string());
            self.set_conf(n, &format!("ssl_cert_file = {}", path(&cert)))?;
            self.set_conf(n, &format!("ssl_key_file = {}", path(&key)))?;
            self.set_conf(n, "ssl = on")?;
        }
        Ok(())
    }

    /// Rewrites node `n`'s causeway.conf from the cluster options and its state.
    pub(super) fn write_node_conf(&self, n: usize) -> Result<()> {
        let node = &self.nodes[n];
        let (port, lines) = {
            let state = self.state();
            (state[n].port, state[n].conf_lines.clone())
        };
        let text = conf::render_node_conf(&NodeConf {
            name: &node.name,
            port,
            socket_dir: &node.dir,
            max_connections: self.max_connections,
            extra: &self.extra_conf,
            node_lines: &lines,
        });
        self.runner
            .write_file(&node.data.join(conf::NODE_CONF_FILE), &text)
    }

    pub(super) fn pg_ctl(&self) -> Command {
        self.runner.command(&self.bin.path("pg_ctl"))
    }

    /// `pg_ctl start -w`; on failure the error carries what the server logged meanwhile, which
    /// is where the actual reason is.
    pub(super) fn pg_ctl_start(&self, n: usize) -> Result<()> {
        let node = &self.nodes[n];
        let log_start = fs::metadata(&node.log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = self.runner.long_lived_command(&self.bin.path("pg_ctl"));
        cmd.arg("start")
            .arg("-D")
            .arg(&node.data)
            .arg("-l")
            .arg(&node.log)
            .args(["-w", "-s", "-t", &PG_CTL_WAIT_SECS.to_string()]);
        let captured = process::run(&mut cmd, COMMAND_TIMEOUT)?;
        if captured.status.success() {
            return Ok(());
        }
        let log = read_from(&node.log, log_start);
        Err(ClusterError::CommandFailed {
            command: process::describe(&cmd),
            status: captured.status.to_string(),
            stderr: format!(
                "{}\n--- {} ---\n{}",
                captured.stderr.trim(),
                node.log.display(),
                log.trim()
            ),
        })
    }
}

/// The last few KiB of `path` written after byte `offset`.
fn read_from(path: &Path, offset: u64) -> String {
    const MAX: usize = 4096;
    let bytes = fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let new = &bytes[start..];
    let tail = &new[new.len().saturating_sub(MAX)..];
    String::from_utf8_lossy(tail).into_owned()
}
