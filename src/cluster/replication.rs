//! Replication control: pausing and resuming replay, waiting for standbys to catch up,
//! promotion, and turning a node into a standby of another (rebuild from a base backup, or
//! rewind).

use std::{
    fs,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use super::{
    conf::{quote_conf, quote_conninfo, quote_literal},
    poll_until, process, ClusterError, LocalCluster, Lsn, Result, StopMode, COMMAND_TIMEOUT,
    DATABASE, PG_CTL_WAIT_SECS, READY_TIMEOUT, SLOT_RELEASE_TIMEOUT, SUPERUSER,
};

impl LocalCluster {
    /// Asks standby `n` to stop applying WAL (`pg_wal_replay_pause()`). It keeps receiving WAL,
    /// but from the moment this returns no further record is applied, so rows written afterwards
    /// stay invisible there until [`resume_replay`](Self::resume_replay).
    ///
    /// # Errors
    /// As [`psql`](Self::psql); fails on a primary.
    pub fn pause_replay(&self, n: usize) -> Result<()> {
        self.psql(n, "SELECT pg_wal_replay_pause()").map(drop)
    }

    /// Resumes WAL replay on standby `n` (`pg_wal_replay_resume()`).
    ///
    /// # Errors
    /// As [`psql`](Self::psql); fails on a primary.
    pub fn resume_replay(&self, n: usize) -> Result<()> {
        self.psql(n, "SELECT pg_wal_replay_resume()").map(drop)
    }

    /// Waits until standby `n` has replayed up to `target`, polling every 50 ms.
    ///
    /// # Errors
    /// [`ClusterError::Timeout`] after `timeout`; query errors as [`psql`](Self::psql).
    pub fn wait_replayed(&self, n: usize, target: Lsn, timeout: Duration) -> Result<()> {
        let node = self.node(n)?;
        poll_until(
            || format!("{} to replay up to {target}", node.name),
            timeout,
            || {
                Ok(self
                    .replay_lsn(n)?
                    .is_some_and(|lsn| lsn >= target)
                    .then_some(()))
            },
        )
    }

    /// Waits until every running standby has replayed everything its upstream had when this was
    /// called (the primary's `pg_current_wal_lsn()`, or a cascading upstream's replay position),
    /// polling every 50 ms. Standbys whose upstream is stopped are skipped: they cannot catch up.
    ///
    /// # Errors
    /// [`ClusterError::Timeout`] naming the standbys still behind; query errors.
    pub fn wait_caught_up(&self, timeout: Duration) -> Result<()> {
        self.check_live()?;
        let started = Instant::now();
        let pairs: Vec<(usize, usize)> = self
            .state()
            .iter()
            .enumerate()
            .filter_map(|(n, s)| s.upstream.map(|u| (n, u)))
            .collect();
        let mut pending = Vec::new();
        for (n, upstream) in pairs {
            if !self.is_running(n)? || !self.is_running(upstream)? {
                tracing::debug!(node = n, upstream, "not waiting: node or upstream stopped");
                continue;
            }
            if !self.is_in_recovery(n)? {
                continue;
            }
            pending.push((n, self.wal_position(upstream)?));
        }
        poll_until(
            || {
                let behind: Vec<String> = pending
                    .iter()
                    .map(|(n, target)| format!("node{n} to replay up to {target}"))
                    .collect();
                behind.join(", ")
            },
            timeout.saturating_sub(started.elapsed()),
            || {
                let mut still = Vec::new();
                for &(n, target) in &pending {
                    if self.replay_lsn(n)?.is_none_or(|lsn| lsn < target) {
                        still.push((n, target));
                    }
                }
                Ok(still.is_empty().then_some(()))
            },
        )
    }

    /// Waits until node `n` streams from `from`, as `from`'s `pg_stat_replication` shows.
    pub(super) fn wait_streaming(&self, n: usize, from: usize) -> Result<()> {
        let sql = format!(
            "SELECT count(*) FROM pg_stat_replication \
             WHERE application_name = {} AND state = 'streaming'",
            quote_literal(&self.nodes[n].name)
        );
        poll_until(
            || format!("node{n} to stream from node{from}"),
            READY_TIMEOUT,
            || Ok((self.psql(from, &sql)? != "0").then_some(())),
        )
    }

    /// pg_basebackup of `from` into node `n`'s (absent) data directory, configured as a standby
    /// of `from` through slot `standby_<n>`, which it creates.
    pub(super) fn base_backup(&self, n: usize, from: usize) -> Result<()> {
        let from_port = self.port(from)?;
        let mut cmd = self.runner.command(&self.bin.path("pg_basebackup"));
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &from_port.to_string(),
            "-U",
            SUPERUSER,
        ])
        .arg("-D")
        .arg(&self.nodes[n].data)
        .args(["-X", "stream", "-R", "-C", "-S", &slot_name(n)])
        // A spread checkpoint would make the backup wait minutes on an idle server.
        .args(["-c", "fast", "--no-sync", "-w"]);
        process::run_ok(&mut cmd, COMMAND_TIMEOUT)?;
        self.state()[n].upstream = Some(from);
        Ok(())
    }

    /// Drops replication slot `slot` on node `on` once no WAL sender uses it (a standby that was
    /// just stopped may hold it for a moment). Absent slots are fine.
    pub(super) fn drop_slot(&self, on: usize, slot: &str) -> Result<()> {
        let slot = quote_literal(slot);
        let active = format!("SELECT active FROM pg_replication_slots WHERE slot_name = {slot}");
        poll_until(
            || format!("replication slot {slot} on node{on} to be released"),
            SLOT_RELEASE_TIMEOUT,
            || match self.psql(on, &active)?.as_str() {
                "" => Ok(Some(())),
                "f" => {
                    self.psql(on, &format!("SELECT pg_drop_replication_slot({slot})"))?;
                    Ok(Some(()))
                }
                _ => Ok(None),
            },
        )
    }

    /// Prepares node `n` to follow `from`: validates, stops `n`, and frees the slot name on
    /// `from` and (best effort) on `n`'s previous upstream, where it would pin WAL forever.
    pub(super) fn prepare_refollow(&self, n: usize, from: usize, mode: StopMode) -> Result<()> {
        self.node(n)?;
        self.node(from)?;
        if n == from {
            return Err(ClusterError::Invalid(format!(
                "node{n} cannot replicate from itself"
            )));
        }
        if !self.is_running(from)? {
            return Err(ClusterError::Invalid(format!(
                "node{from} must be running to be replicated from"
            )));
        }
        self.stop(n, mode)?;
        let slot = slot_name(n);
        let previous = self.state()[n].upstream;
        if let Some(old) = previous.filter(|&old| old != from) {
            if self.is_running(old).unwrap_or(false) {
                if let Err(e) = self.drop_slot(old, &slot) {
                    tracing::warn!(node = old, %slot, error = %e, "could not drop stale replication slot");
                }
            }
        }
        self.drop_slot(from, &slot)
    }

    /// Turns node `n` into a fresh standby of node `from`: stops it if running, wipes its data
    /// directory, pg_basebackups `from` with a fresh slot `standby_<n>`, starts it and waits until
    /// it streams. Node `n` keeps its port and [`set_conf`](Self::set_conf) lines. This is how a
    /// failover test rejoins the old primary under the new one.
    ///
    /// Other standbys that followed `n` are left pointing at it.
    ///
    /// # Errors
    /// `from` not running or equal to `n`; command failures; no streaming within 60 s.
    pub fn rebuild_standby(&self, n: usize, from: usize) -> Result<()> {
        self.prepare_refollow(n, from, StopMode::Immediate)?;
        let data = &self.nodes[n].data;
        if data.exists() {
            fs::remove_dir_all(data)
                .map_err(ClusterError::io(format!("removing {}", data.display())))?;
        }
        self.base_backup(n, from)?;
        self.write_node_conf(n)?;
        self.pg_ctl_start(n)?;
        self.wait_streaming(n, from)
    }

    /// Like [`rebuild_standby`](Self::rebuild_standby) but keeps node `n`'s data and rewinds it
    /// with `pg_rewind --source-server` to where its timeline forked from `from`'s, which copies
    /// only what changed. Node `n` is stopped cleanly first (`-m fast`); a node that crashed is
    /// recovered by pg_rewind itself. pg_rewind needs node `n`'s WAL back to the last checkpoint
    /// before the fork; every node keeps 128 MB of WAL (`wal_keep_size`), so this fails only if
    /// `n` wrote more than that after the fork. `from` is checkpointed first, so a node promoted
    /// a moment ago works as the source. Then it is configured as a standby of
    /// `from` (`standby.signal`, `primary_conninfo`, slot `standby_<n>`), started, and awaited
    /// until it streams.
    ///
    /// # Errors
    /// As [`rebuild_standby`](Self::rebuild_standby), plus pg_rewind's own refusals (e.g. no
    /// common history with `from`).
    pub fn rewind_standby(&self, n: usize, from: usize) -> Result<()> {
        self.prepare_refollow(n, from, StopMode::Fast)?;
        // pg_rewind (before PostgreSQL 16) takes the source's timeline from its control file,
        // which a promotion updates only at the next checkpoint: right after pg_promote() it
        // would find both on the old timeline, decide no rewind is needed, and the node could
        // then never stream from `from`.
        self.psql(from, "CHECKPOINT")?;
        let slot = quote_literal(&slot_name(n));
        // Reserve WAL on the source before rewinding, so everything after the copied WAL stays
        // available to stream.
        self.psql(
            from,
            &format!("SELECT pg_create_physical_replication_slot({slot}, true)"),
        )?;
        let from_node = &self.nodes[from];
        let source = format!(
            "host={} port={} user={SUPERUSER} dbname={DATABASE}",
            quote_conninfo(&from_node.dir.to_string_lossy()),
            self.port(from)?
        );
        let node = &self.nodes[n];
        let mut cmd = self.runner.command(&self.bin.path("pg_rewind"));
        cmd.arg("-D")
            .arg(&node.data)
            .arg(format!("--source-server={source}"))
            .arg("--no-sync");
        process::run_ok(&mut cmd, COMMAND_TIMEOUT)?;

        // pg_rewind copied `from`'s configuration files, including its causeway.conf and a
        // postgresql.auto.conf that may name `from`'s own old upstream; later lines win.
        self.write_node_conf(n)?;
        let primary_conninfo = format!("host=127.0.0.1 port={} user={SUPERUSER}", self.port(from)?);
        self.runner.append_file(
            &node.data.join("postgresql.auto.conf"),
            &format!(
                "primary_conninfo = {}\nprimary_slot_name = {}\n",
                quote_conf(&primary_conninfo),
                quote_conf(&slot_name(n))
            ),
        )?;
        self.runner
            .write_file(&node.data.join("standby.signal"), "")?;
        self.state()[n].upstream = Some(from);
        self.pg_ctl_start(n)?;
        self.wait_streaming(n, from)
    }

    /// Promotes standby `n` (`pg_ctl promote -w`) and returns once it answers
    /// `pg_is_in_recovery() = false`. Other standbys keep following their old upstream.
    ///
    /// # Errors
    /// Fails if `n` is not a running standby; [`ClusterError::Timeout`] after 60 s.
    pub fn promote(&self, n: usize) -> Result<()> {
        let node = self.node(n)?;
        let mut cmd = self.pg_ctl();
        cmd.arg("promote").arg("-D").arg(&node.data).args([
            "-w",
            "-t",
            &PG_CTL_WAIT_SECS.to_string(),
        ]);
        process::run_ok(&mut cmd, COMMAND_TIMEOUT)?;
        poll_until(
            || format!("{} to leave recovery", node.name),
            READY_TIMEOUT,
            || Ok((!self.is_in_recovery(n)?).then_some(())),
        )?;
        let order = self.promotions.fetch_add(1, Ordering::Relaxed) + 1;
        let mut state = self.state();
        state[n].upstream = None;
        state[n].promoted = order;
        Ok(())
    }
}

/// Replication slot of node `n` on its upstream.
fn slot_name(n: usize) -> String {
    format!("standby_{n}")
}
