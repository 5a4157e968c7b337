//! `causeway.*` statements (`SET`/`SHOW`/`RESET causeway.route`, `max_lag`, `consistency`,
//! `min_lsn`): answered by the session itself, never sent to a server. When the server still
//! owes replies to earlier requests, the answer waits until they are in, so that replies keep
//! the order of requests and `SHOW causeway.min_lsn` reports the position of the write just
//! before it.

use bytes::{Bytes, BytesMut};

use super::Session;
use crate::backend::statements::StatementDef;
use crate::config::Route;
use crate::protocol::frontend::{self, tag as ftag, Target as DescribeTarget};
use crate::protocol::messages::{self, command_complete, row_description, ProxyError};
use crate::protocol::{Batch, FrameRef, Lsn, SqlState};
use crate::router::classify::{
    OwnedAnalysis, ProxyCommand, ProxyError as CmdError, ProxySetting, StatementKind,
};

impl Session {
    /// Answers a batch made only of `causeway.*` statements (or only of Close and Sync)
    /// without any server.
    pub(super) fn answer_proxy_batch(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        self.batch_len = 0;
        // Replies to earlier requests (and the proxy's own read-your-writes probe, whose
        // position `SHOW causeway.min_lsn` must report) may still be on their way: answer
        // once they are in, keeping the order.
        if self.owes_replies() || !self.deferred.is_empty() {
            self.deferred.push(batch);
            return;
        }
        self.answer_proxy_frames(&batch);
    }

    /// Whether the server connection still owes replies to earlier requests.
    fn owes_replies(&self) -> bool {
        self.server.as_deref().is_some_and(|s| s.owes_replies())
    }

    /// Answers the `causeway.*` batches held back by [`Self::answer_proxy_batch`] once the
    /// server has answered everything before them.
    pub(super) fn answer_deferred(&mut self) {
        while !self.deferred.is_empty() && !self.owes_replies() {
            let batch = self.deferred.remove(0);
            self.answer_proxy_frames(&batch);
        }
    }

    fn answer_proxy_frames(&mut self, batch: &Batch) {
        let mut out = BytesMut::new();
        let mut last: Option<std::sync::Arc<OwnedAnalysis>> = None;
        // After an error, the rest of an extended batch is skipped up to its Sync.
        let mut skipping = false;
        for f in batch {
            if skipping && f.tag() != ftag::SYNC {
                continue;
            }
            let body = f.body();
            match f.tag() {
                ftag::QUERY => {
                    if let Ok(t) = frontend::query_text(body) {
                        let a = self.ctx.classifier().analyze(t);
                        if let Err(e) = self.run_proxy_statements(&a, &mut out, true) {
                            self.ctx.metrics().count_proxy_error(&e);
                            e.encode(&mut out);
                        }
                    }
                    messages::ready_for_query(&mut out, self.tx_status);
                }
                ftag::PARSE => {
                    if let Ok(p) = frontend::parse(body) {
                        last = Some(self.ctx.classifier().analyze(p.query));
                        self.remember_parsed_here(f, p.name);
                    }
                    messages::parse_complete(&mut out);
                }
                ftag::BIND => {
                    if let Ok(b) = frontend::bind(body) {
                        if let Some(a) = self.named_analysis(b.statement) {
                            last = Some(a);
                        }
                    }
                    messages::bind_complete(&mut out)
                }
                ftag::DESCRIBE => {
                    if let Ok(DescribeTarget::Statement(name)) = frontend::describe_or_close(body) {
                        if let Some(a) = self.named_analysis(name) {
                            last = Some(a);
                        }
                        messages::parameter_description(&mut out, &[]);
                    }
                    match last.as_deref().and_then(show_of) {
                        Some(setting) => row_description(&mut out, &[setting.as_str()]),
                        None => messages::no_data(&mut out),
                    }
                }
                ftag::EXECUTE => {
                    if let Some(a) = last.clone() {
                        if let Err(e) = self.run_proxy_statements(&a, &mut out, false) {
                            self.ctx.metrics().count_proxy_error(&e);
                            e.encode(&mut out);
                            skipping = true;
                        }
                    }
                }
                ftag::CLOSE => {
                    // Closing a statement only forgets the client's name (server-side
                    // statements are shared); a portal does not outlive its transaction.
                    if let Ok(DescribeTarget::Statement(name)) = frontend::describe_or_close(body) {
                        if !name.is_empty() {
                            self.state.statements.remove(name);
                        }
                    }
                    messages::close_complete(&mut out)
                }
                ftag::SYNC => {
                    skipping = false;
                    messages::ready_for_query(&mut out, self.tx_status);
                }
                _ => {}
            }
        }
        self.client.push(out);
    }

    /// A named statement parsed in a batch the proxy answers itself: the client will Bind it
    /// later, on its own, so it must exist for the client (and be prepared on a server then).
    pub(super) fn remember_parsed_here(&mut self, parse: FrameRef<'_>, name: &[u8]) {
        if !name.is_empty() {
            let tail = parse.bytes_from(5 + name.len() + 1);
            self.state
                .statements
                .insert(Bytes::copy_from_slice(name), StatementDef::new(tail));
        }
    }

    /// The analysis of the client's named statement `name` (none for the unnamed one).
    fn named_analysis(&self, name: &[u8]) -> Option<std::sync::Arc<OwnedAnalysis>> {
        if name.is_empty() {
            return None;
        }
        let def = self.state.statements.get(name)?;
        let query = def.body.split(|&c| c == 0).next().unwrap_or(&[]);
        Some(self.ctx.classifier().analyze(query))
    }

    /// Whether the batch only closes statements or portals and syncs: nothing to run, so
    /// nothing to route (the proxy answers it, see [`Session::answer_proxy_batch`]).
    pub(super) fn batch_only_closes(&self) -> bool {
        // The test that fails at the first frame of any other batch first.
        self.batch
            .iter()
            .all(|f| matches!(f.tag(), ftag::CLOSE | ftag::SYNC))
            && self.batch.iter().any(|f| f.tag() == ftag::SYNC)
    }

    /// Carries out the `causeway.*` statements of one text, writing their replies.
    fn run_proxy_statements(
        &mut self,
        a: &OwnedAnalysis,
        out: &mut BytesMut,
        describe_rows: bool,
    ) -> Result<(), ProxyError> {
        for s in a.statements() {
            let StatementKind::Proxy(cmd) = s.kind else {
                continue;
            };
            match cmd {
                ProxyCommand::SetRoute(r) => {
                    self.route.route = Some(r);
                    command_complete(out, "SET");
                }
                ProxyCommand::SetMaxLag(d) => {
                    self.route.max_lag = Some(d);
                    command_complete(out, "SET");
                }
                ProxyCommand::SetMinLsn(l) => {
                    self.route.min_lsn = Some(self.route.min_lsn.map_or(l, |m| m.max(l)));
                    command_complete(out, "SET");
                }
                ProxyCommand::SetConsistency(c) => {
                    self.route.consistency = Some(c);
                    command_complete(out, "SET");
                }
                ProxyCommand::Reset(setting) => {
                    match setting {
                        ProxySetting::Route => self.route.route = None,
                        ProxySetting::MaxLag => self.route.max_lag = None,
                        ProxySetting::MinLsn => self.route.min_lsn = None,
                        ProxySetting::Consistency => self.route.consistency = None,
                    }
                    command_complete(out, "RESET");
                }
                ProxyCommand::Show(setting) => {
                    if describe_rows {
                        row_description(out, &[setting.as_str()]);
                    }
                    let value = self.show_value(setting);
                    messages::data_row(out, &[Some(value.as_bytes())]);
                    command_complete(out, "SHOW");
                }
                ProxyCommand::Invalid { name, error } => {
                    let name = String::from_utf8_lossy(a.text(name)).into_owned();
                    return Err(match error {
                        CmdError::UnknownSetting => ProxyError::error(
                            SqlState::UNDEFINED_OBJECT,
                            format!("unrecognized configuration parameter \"{name}\""),
                        ),
                        CmdError::InvalidValue(s) => ProxyError::error(
                            SqlState::INVALID_PARAMETER_VALUE,
                            format!("invalid value for parameter \"{}\"", s.as_str()),
                        )
                        .with_hint(valid_values(s)),
                        CmdError::LocalScope(s) => ProxyError::error(
                            SqlState::FEATURE_NOT_SUPPORTED,
                            format!(
                                "\"{}\" is a session setting; SET LOCAL is not supported",
                                s.as_str()
                            ),
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    fn show_value(&self, setting: ProxySetting) -> String {
        match setting {
            ProxySetting::Route => self
                .route
                .route
                .or(self.route.default_route)
                .unwrap_or(Route::Auto)
                .as_str()
                .to_owned(),
            ProxySetting::MaxLag => match self.route.max_lag {
                Some(d) => format!("{}ms", d.as_millis()),
                None => match self.ctx.settings().config.routing.max_lag {
                    Some(d) => format!("{}ms", d.as_millis()),
                    None => "0".to_owned(),
                },
            },
            ProxySetting::MinLsn => self.route.min_lsn.unwrap_or(Lsn::ZERO).to_string(),
            ProxySetting::Consistency => self.route.consistency().as_str().to_owned(),
        }
    }
}

fn show_of(a: &OwnedAnalysis) -> Option<ProxySetting> {
    a.statements().iter().find_map(|s| match s.kind {
        StatementKind::Proxy(ProxyCommand::Show(p)) => Some(p),
        _ => None,
    })
}

fn valid_values(s: ProxySetting) -> &'static str {
    match s {
        ProxySetting::Route => "Valid values are \"primary\", \"standby\" and \"auto\".",
        ProxySetting::MaxLag => "A duration such as '200ms' or '2s'.",
        ProxySetting::MinLsn => "A WAL position such as '0/3000060' (from SHOW causeway.min_lsn).",
        ProxySetting::Consistency => "Valid values are \"session\" and \"eventual\".",
    }
}
