//! Read-your-writes (`consistency = "session"`): after a request that may have written on the
//! primary, the primary's WAL position is captured on the same connection; later reads go only
//! to standbys that have replayed it, and when the snapshot knows of none, the standbys are
//! asked directly before the read falls back to the primary.

use std::time::Duration;

use super::route::BatchClass;
use super::Session;
use crate::backend::Lease;
use crate::config::{Consistency, Route};
use crate::protocol::backend::TxStatus;
use crate::protocol::Lsn;
use crate::router::{Class, Target};
use crate::topology::Role;

/// What [`Session::ask_causal_standby`] asks a standby.
const REPLAY_SQL: &str = "SELECT pg_catalog.pg_last_wal_replay_lsn()";

/// The session's read-your-writes bookkeeping.
#[derive(Debug, Default)]
pub(super) struct CausalState {
    /// A request that may have written ran on the primary since the last captured position.
    wrote: bool,
    /// Send the probe once the current request's ReadyForQuery is in (the request was a COPY
    /// FROM, behind which nothing may be queued).
    probe_after_reply: bool,
}

impl Session {
    /// Right behind a request that may have written and may end outside a transaction, asks
    /// for the primary's WAL position on the same connection, in the same write; the reply is
    /// swallowed and the position kept if the request did end outside a transaction.
    pub(super) fn probe_after_request(&mut self, batch: &BatchClass) {
        let on_primary = self.server_role == Role::Primary;
        if batch.class == Some(Class::Write) && on_primary {
            self.causal.wrote = true;
        }
        let may_end = !self.tx_status.is_in_transaction() || batch.commits;
        // A session whose reads all go to the primary anyway needs no position.
        let reads_on_primary =
            self.route.route.or(self.route.default_route) == Some(Route::Primary);
        if !(on_primary
            && self.causal.wrote
            && may_end
            && !reads_on_primary
            && self.route.consistency() == Consistency::Session)
        {
            return;
        }
        if batch.copies_in {
            // A COPY FROM makes the server wait for data: anything sent behind it would break
            // the protocol. Probe once its ReadyForQuery is in.
            self.causal.probe_after_reply = true;
        } else if let Some(conn) = self.server.as_deref_mut() {
            conn.send_lsn_probe();
        }
    }

    /// The probe a COPY FROM put off, once its reply is in.
    pub(super) fn probe_after_reply(&mut self, status: TxStatus) {
        if !std::mem::take(&mut self.causal.probe_after_reply) || status != TxStatus::Idle {
            return;
        }
        if let Some(conn) = self.server.as_deref_mut() {
            if conn.replies_done() {
                conn.send_lsn_probe();
            }
        }
    }

    /// The probe answered: if the request ended outside a transaction, reads must see this
    /// position from now on.
    pub(super) fn lsn_captured(&mut self, lsn: Lsn) {
        if self.tx_status.is_in_transaction() {
            return;
        }
        self.causal.wrote = false;
        self.ctx.metrics().lsn_captures.inc();
        self.route.min_lsn = Some(self.route.min_lsn.map_or(lsn, |m| m.max(lsn)));
    }

    /// Read-your-writes, fresh: the watcher (which looks every `check_interval`) has not seen
    /// any standby replay the session's writes yet, but one usually has by now. Ask the
    /// standby the router would pick without the position, on the very connection the read
    /// would use: if its replay position has reached `min_lsn`, the read goes there (replay
    /// only moves forward, so the read sees the writes). Costs one round trip to the standby,
    /// only for reads that would otherwise go to the primary because of causality. With
    /// `causal_wait` above zero, a standby still behind is asked again (every 2 ms) until it
    /// catches up or the wait is over, then the read goes to the primary.
    pub(super) async fn ask_causal_standby(
        &mut self,
        batch_class: &BatchClass,
    ) -> Option<(usize, Lease)> {
        let min = self.route.min_lsn?;
        // The standby the balancer would pick without the position first, then the others,
        // most replayed first; at most two are asked.
        let (plan, _) = self.plan(batch_class, &[], true, &self.ctx.settings());
        let mut order = self.causal_candidates(batch_class);
        if let crate::router::Decision::Node(n) = plan {
            if let Some(i) = order.iter().position(|&c| c == n) {
                order.remove(i);
                order.insert(0, n);
            }
        }
        order.truncate(2);
        let settings = self.ctx.settings();
        let timeout = settings.config.monitor.query_timeout;
        let causal_wait = settings.config.routing.causal_wait;
        drop(settings);
        let started = tokio::time::Instant::now();
        // The most replayed standby asked so far, kept for polling while `causal_wait` lasts.
        let mut best: Option<(Lsn, usize, Lease)> = None;
        for n in order {
            self.ctx.metrics().causal_asks.inc();
            let Ok(mut lease) = self.acquire(Target::Node(n), false).await else {
                continue;
            };
            // Only the chosen one becomes the client's: a candidate checked back in must not
            // look as if a cancel were on its way to it.
            self.cancel.slot().set(None);
            match ask_replay(&mut lease, timeout).await {
                Some(r) if r >= min => {
                    if let Some((_, _, other)) = best.take() {
                        other.pool().clone().checkin(other);
                    }
                    self.ctx.metrics().causal_ask_hits.inc();
                    self.cancel.slot().set(Some(lease.cancel_target()));
                    return Some((n, lease));
                }
                Some(r) if best.as_ref().is_none_or(|b| r > b.0) => {
                    if let Some((_, _, other)) = best.replace((r, n, lease)) {
                        other.pool().clone().checkin(other);
                    }
                }
                _ => lease.pool().clone().checkin(lease),
            }
        }
        let found = match best {
            Some((_, n, lease)) if !causal_wait.is_zero() => {
                self.wait_for_replay(n, lease, min, started, started + causal_wait, timeout)
                    .await
            }
            Some((_, _, lease)) => {
                lease.pool().clone().checkin(lease);
                None
            }
            None => None,
        };
        if found.is_none() {
            self.in_flight = None;
            self.cancel.slot().set(None);
        }
        found
    }

    /// Polls the most replayed standby (node `n`, on `lease`) every 2 ms until it has replayed
    /// `min` or `deadline` passes.
    async fn wait_for_replay(
        &mut self,
        n: usize,
        mut lease: Lease,
        min: Lsn,
        started: tokio::time::Instant,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Option<(usize, Lease)> {
        self.ctx.metrics().causal_waits.inc();
        let mut found = false;
        while tokio::time::Instant::now() < deadline {
            let left = deadline - tokio::time::Instant::now();
            tokio::time::sleep(left.min(Duration::from_millis(2))).await;
            match ask_replay(&mut lease, timeout).await {
                Some(r) if r >= min => {
                    found = true;
                    break;
                }
                Some(_) => {}
                None => break,
            }
        }
        self.ctx
            .metrics()
            .causal_wait_seconds
            .inc_by(started.elapsed().as_secs_f64());
        if !found {
            lease.pool().clone().checkin(lease);
            return None;
        }
        self.ctx.metrics().causal_ask_hits.inc();
        // `acquire` of another candidate may have moved the in-flight count.
        self.in_flight = Some(self.ctx.in_flight(n));
        self.server_role = Role::Standby;
        self.cancel.slot().set(Some(lease.cancel_target()));
        Some((n, lease))
    }
}

/// Asks an idle standby connection how far it has replayed.
async fn ask_replay(lease: &mut Lease, timeout: Duration) -> Option<Lsn> {
    let mut replayed = None;
    match lease
        .query_internal(REPLAY_SQL, timeout, |row| {
            replayed = crate::backend::replies::parse_lsn_row(row)
        })
        .await
    {
        Ok(Ok(())) => replayed,
        _ => None,
    }
}
