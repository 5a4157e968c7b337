//! Deciding where a batch goes, and answering `causeway.*` statements.
//!
//! A batch is classified as a whole (every Query text, every Parse, and for a Bind of a named
//! statement the statement's text), through the shared classifier cache. A read stays a read
//! only if every function it calls is known not to write (`pg_proc` volatility, the built-in
//! lists, the configuration's overrides) and no standby ever refused it. The session's routing
//! state (forced route, lag limit, read-your-writes position) and the topology snapshot then go
//! to the pure [`crate::router::route`].

use std::hash::{Hash, Hasher};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::Session;
use crate::backend::statements::StatementDef;
use crate::config::{Consistency, Route};
use crate::protocol::frontend::{self, tag as ftag, Target as DescribeTarget};
use crate::protocol::messages::{self, command_complete, row_description, ProxyError};
use crate::protocol::{Frame, Lsn, SqlState};
use crate::router::classify::{
    OwnedAnalysis, PinReason, ProxyCommand, ProxyError as CmdError, ProxySetting, RouteClass,
    StatementKind, TxAccess,
};
use crate::router::functions::is_read_only_call;
use crate::router::{self, Class, Decision, Reason, RouteContext, Target};

/// The session's routing state, changed by `SET causeway.*`.
#[derive(Debug, Clone)]
pub struct RouteState {
    /// Default route from the user's or database's configuration, or the read-only alias.
    pub default_route: Option<Route>,
    /// `SET causeway.route`.
    pub route: Option<Route>,
    /// `SET causeway.max_lag`.
    pub max_lag: Option<Duration>,
    /// Read-your-writes: reads must see at least this WAL position.
    pub min_lsn: Option<Lsn>,
    /// Default consistency from the configuration.
    pub default_consistency: Consistency,
    /// `SET causeway.consistency`.
    pub consistency: Option<Consistency>,
}

impl RouteState {
    /// The consistency in force.
    pub fn consistency(&self) -> Consistency {
        self.consistency.unwrap_or(self.default_consistency)
    }
}

/// What the classifier says about a whole batch.
#[derive(Debug, Default)]
pub struct BatchClass {
    /// Where it may run, before the router.
    pub class: Option<Class>,
    /// Why the client must keep its server connection afterwards.
    pub pin: Option<&'static str>,
    /// A `/* causeway:... */` route hint.
    pub hint: Option<Route>,
    /// A `/* causeway:max_lag=... */` hint.
    pub max_lag: Option<Duration>,
    /// The batch may change session parameters in a way no CommandComplete tag shows
    /// (`set_config`): read them back afterwards.
    pub params_may_change: bool,
    /// Key of the batch's text for misroute learning.
    pub learn_key: u64,
    /// Every statement is a `causeway.*` command (answered by the proxy).
    pub all_proxy: bool,
    /// Some statement is a `causeway.*` command.
    pub any_proxy: bool,
    /// Some statement is `COMMIT` / `END` (a transaction's writes become visible).
    pub commits: bool,
    /// Some statement is `COPY ... FROM` (the server will wait for data: nothing may be sent
    /// behind the request).
    pub copies_in: bool,
}

/// How the decision came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Send it there.
    Go {
        /// Primary or a node.
        target: Target,
        /// Why (for metrics).
        reason: Reason,
    },
    /// It must run on a standby and none is eligible.
    NoStandby,
}

/// Key of a statement text in the learned-writes set. FxHash: this runs for every request,
/// and a collision only sends a read to the primary.
fn text_key(text: &[u8]) -> u64 {
    let mut h = rustc_hash::FxHasher::default();
    text.hash(&mut h);
    h.finish()
}

fn pin_name(p: PinReason) -> &'static str {
    match p {
        PinReason::Listen => "LISTEN",
        PinReason::TempObject => "temporary object",
        PinReason::AdvisoryLock => "session advisory lock",
        PinReason::HoldCursor => "WITH HOLD cursor",
        PinReason::Load => "LOAD",
        PinReason::Role => "SET ROLE",
        PinReason::SetConfig => "set_config",
    }
}

impl Session {
    /// Classifies the current batch.
    pub(super) fn classify_batch(&self) -> BatchClass {
        let settings = self.app.settings();
        let catalog = self.catalog.load();
        let mut out = BatchClass {
            all_proxy: true,
            ..BatchClass::default()
        };
        let mut class = Class::Read;
        let mut statements = 0usize;
        let mut parsed_unnamed = false;
        let mut first_key = None;
        let mut consider =
            |a: &OwnedAnalysis, key: u64, out: &mut BatchClass, class: &mut Class| {
                first_key.get_or_insert(key);
                statements += a.statements().len();
                let this = self.class_of(a, key, &settings, &catalog);
                *class = combine(*class, this);
                for s in a.statements() {
                    match s.kind {
                        StatementKind::Proxy(_) => out.any_proxy = true,
                        StatementKind::Commit { .. } => {
                            out.commits = true;
                            out.all_proxy = false;
                        }
                        StatementKind::CopyFrom => {
                            out.copies_in = true;
                            out.all_proxy = false;
                        }
                        StatementKind::Prepare { .. } => {
                            // SQL PREPARE pins the client to the connection it runs on (its
                            // statement cannot be replayed elsewhere): that must be the primary's.
                            *class = Class::Write;
                            out.all_proxy = false;
                        }
                        _ => out.all_proxy = false,
                    }
                }
                match a.pin() {
                    Some(PinReason::SetConfig) => out.params_may_change = true,
                    Some(p) => {
                        out.pin.get_or_insert(pin_name(p));
                    }
                    None => {}
                }
                if let Some(h) = a.hint() {
                    out.hint = Some(match (out.hint, h) {
                        (Some(Route::Primary), _) | (_, Route::Primary) => Route::Primary,
                        _ => h,
                    });
                }
                if let Some(l) = a.max_lag() {
                    out.max_lag = Some(out.max_lag.map_or(l, |o: Duration| o.min(l)));
                }
            };
        for f in &self.batch {
            let body = f.body();
            match f.tag() {
                ftag::QUERY => match frontend::query_text(body) {
                    Ok(t) => {
                        let a = self.app.classifier().analyze(t);
                        consider(&a, text_key(t), &mut out, &mut class)
                    }
                    Err(_) => class = Class::Write,
                },
                ftag::PARSE => match frontend::parse(body) {
                    Ok(p) => {
                        parsed_unnamed |= p.name.is_empty();
                        let a = self.app.classifier().analyze(p.query);
                        consider(&a, text_key(p.query), &mut out, &mut class)
                    }
                    Err(_) => class = Class::Write,
                },
                ftag::BIND => match frontend::bind(body) {
                    Ok(b) if b.statement.is_empty() => {
                        if !parsed_unnamed {
                            // The unnamed statement was parsed in an earlier request: its
                            // text is unknown here.
                            class = Class::Write;
                        }
                    }
                    Ok(b) => {
                        let named_here = self.batch.iter().any(|p| {
                            p.tag() == ftag::PARSE
                                && frontend::parse(p.body()).is_ok_and(|v| v.name == b.statement)
                        });
                        if !named_here {
                            match self.state.statements.get(b.statement) {
                                Some(def) => {
                                    let (a, key) = def.route_info.get_or_init(|| {
                                        let query =
                                            def.body.split(|&c| c == 0).next().unwrap_or(&[]);
                                        (self.app.classifier().analyze(query), text_key(query))
                                    });
                                    consider(a, *key, &mut out, &mut class)
                                }
                                None => class = Class::Write,
                            }
                        }
                    }
                    Err(_) => class = Class::Write,
                },
                ftag::FUNCTION_CALL => class = Class::Write,
                _ => {}
            }
        }
        if statements == 0 {
            out.all_proxy = false;
        }
        if out.pin.is_some() {
            // A pinned session keeps its connection for everything that follows, writes
            // included: it must be the primary's.
            class = Class::Write;
        }
        out.learn_key = first_key.unwrap_or(0);
        out.class = Some(class);
        out
    }

    /// The class of one analysed text.
    fn class_of(
        &self,
        a: &OwnedAnalysis,
        key: u64,
        settings: &crate::app::Settings,
        catalog: &crate::router::functions::FunctionCatalog,
    ) -> Class {
        if a.route().needs_primary() {
            // A plain BEGIN in a session that made transactions read-only by default.
            if a.route() == RouteClass::Primary && a.statements().len() == 1 {
                if let StatementKind::Begin {
                    access: TxAccess::Default,
                    isolation,
                } = a.statements()[0].kind
                {
                    let serializable = matches!(
                        isolation,
                        Some(crate::router::classify::IsolationLevel::Serializable)
                    );
                    if self.default_read_only() && !serializable {
                        return Class::ReadOnlyBegin;
                    }
                }
            }
            return Class::Write;
        }
        if self.app.is_learned_write(key) {
            return Class::Write;
        }
        for f in a.functions() {
            let name = f.to_string();
            if !is_read_only_call(&name, catalog, &settings.function_overrides) {
                return Class::Write;
            }
        }
        match a.statements().first().map(|s| s.kind) {
            Some(StatementKind::Begin { .. }) => Class::ReadOnlyBegin,
            _ => Class::Read,
        }
    }

    /// Whether the session's transactions are read-only by default.
    fn default_read_only(&self) -> bool {
        self.state
            .params
            .get("default_transaction_read_only")
            .is_some_and(|v| matches!(v.as_str(), "on" | "true" | "yes" | "1"))
    }

    /// Decides where a classified batch goes.
    /// Standbys to ask for their replay position when the session's writes keep a read off
    /// every standby the snapshot knows of (see [`router::causal_candidates`]).
    pub(super) fn causal_candidates(&self, batch: &BatchClass) -> Vec<usize> {
        let ctx = RouteContext {
            route: batch.hint.or(self.route.route).or(self.route.default_route),
            max_lag: batch.max_lag.or(self.route.max_lag),
            min_lsn: None,
        };
        let topology = self.app.topology().load();
        router::causal_candidates(&ctx, &topology, &self.app.settings().policy)
    }

    pub(super) fn plan(&self, batch: &BatchClass) -> Plan {
        self.plan_excluding(batch, &[])
    }

    /// Decides where a classified batch goes, treating the `excluded` nodes as down (they
    /// could not be reached for this batch).
    pub(super) fn plan_excluding(&self, batch: &BatchClass, excluded: &[usize]) -> Plan {
        let class = batch.class.unwrap_or(Class::Write);
        let settings = self.app.settings();
        let current = self.app.topology().load();
        let modified;
        let topology: &crate::topology::Topology = if excluded.is_empty() {
            &current
        } else {
            let mut t = (**current).clone();
            for n in t.nodes.iter_mut().filter(|n| excluded.contains(&n.id)) {
                n.healthy = false;
            }
            modified = t;
            &modified
        };
        let ctx = RouteContext {
            route: batch.hint.or(self.route.route).or(self.route.default_route),
            max_lag: batch.max_lag.or(self.route.max_lag),
            min_lsn: match self.route.consistency() {
                Consistency::Session => self.route.min_lsn,
                Consistency::Eventual => None,
            },
        };
        let outstanding = self.app.outstanding();
        let (decision, reason) = router::route(
            class,
            &ctx,
            topology,
            &settings.policy,
            &outstanding,
            self.app.next_tick(),
            rand::random(),
        );
        match decision {
            Decision::Primary => Plan::Go {
                target: Target::Primary,
                reason,
            },
            Decision::Node(n) => Plan::Go {
                target: Target::Node(n),
                reason,
            },
            Decision::NoStandby => Plan::NoStandby,
        }
    }

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
        self.server
            .as_deref()
            .is_some_and(|s| !s.pending.is_empty() || s.track.unsynced)
    }

    /// Answers the `causeway.*` batches held back by [`Self::answer_proxy_batch`] once the
    /// server has answered everything before them.
    pub(super) fn answer_deferred(&mut self) {
        while !self.deferred.is_empty() && !self.owes_replies() {
            let batch = self.deferred.remove(0);
            self.answer_proxy_frames(&batch);
        }
    }

    fn answer_proxy_frames(&mut self, batch: &[Frame]) {
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
                        let a = self.app.classifier().analyze(t);
                        if let Err(e) = self.run_proxy_statements(&a, &mut out, true) {
                            e.encode(&mut out);
                        }
                    }
                    messages::ready_for_query(&mut out, self.tx_status);
                }
                ftag::PARSE => {
                    if let Ok(p) = frontend::parse(body) {
                        last = Some(self.app.classifier().analyze(p.query));
                        if !p.name.is_empty() {
                            // A named statement the client will Bind later, on its own: it
                            // must exist for the client (and be answered here again).
                            let tail = f.raw().slice(5 + p.name.len() + 1..);
                            self.state
                                .statements
                                .insert(Bytes::copy_from_slice(p.name), StatementDef::new(tail));
                        }
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

    /// The analysis of the client's named statement `name` (none for the unnamed one).
    fn named_analysis(&self, name: &[u8]) -> Option<std::sync::Arc<OwnedAnalysis>> {
        if name.is_empty() {
            return None;
        }
        let def = self.state.statements.get(name)?;
        let query = def.body.split(|&c| c == 0).next().unwrap_or(&[]);
        Some(self.app.classifier().analyze(query))
    }

    /// Whether the batch only closes statements or portals and syncs: nothing to run, so
    /// nothing to route (the proxy answers it, see [`Session::answer_proxy_batch`]).
    pub(super) fn batch_only_closes(&self) -> bool {
        self.batch.iter().any(|f| f.tag() == ftag::SYNC)
            && self
                .batch
                .iter()
                .all(|f| matches!(f.tag(), ftag::CLOSE | ftag::SYNC))
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
                    let l = Lsn::from(l);
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
                None => match self.app.settings().config.routing.max_lag {
                    Some(d) => format!("{}ms", d.as_millis()),
                    None => "0".to_owned(),
                },
            },
            ProxySetting::MinLsn => self.route.min_lsn.unwrap_or(Lsn::ZERO).to_string(),
            ProxySetting::Consistency => self.route.consistency().as_str().to_owned(),
        }
    }
}

fn combine(a: Class, b: Class) -> Class {
    match (a, b) {
        (Class::Write, _) | (_, Class::Write) => Class::Write,
        (Class::ReadOnlyBegin, _) | (_, Class::ReadOnlyBegin) => Class::ReadOnlyBegin,
        _ => Class::Read,
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

/// A read sent to a standby, kept until the standby clearly answers it, so that a misroute
/// refusal can be re-run on the primary without the client seeing it.
#[derive(Debug)]
pub struct MisrouteGuard {
    /// The request's frames, to send again.
    pub frames: super::Batch,
    /// The request ended with Sync (extended protocol) rather than being a simple Query.
    pub term_is_sync: bool,
    /// Key of its text, learned as a write after a 25006.
    pub learn_key: u64,
    /// Replies held back so far (ParseComplete, BindComplete, ...).
    pub held: smallvec::SmallVec<[bytes::BytesMut; 2]>,
    /// The standby refused it: swallow the rest of its reply.
    pub discarding: bool,
    /// The refusal's SQLSTATE.
    pub code: String,
    /// Why the request is guarded: a read sent to a standby (any misroute is retried), or a
    /// request that binds prepared statements (only a stale cached plan is retried).
    pub standby: bool,
    /// The error being discarded (a stale plan), sent to the client after all if the request
    /// cannot be re-run (the client pipelined more requests behind it).
    pub error: Option<bytes::BytesMut>,
}
