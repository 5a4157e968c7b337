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

use super::Session;
use crate::config::{Consistency, Route};
use crate::protocol::frontend::{self, tag as ftag};
use crate::protocol::Lsn;
use crate::router::classify::{OwnedAnalysis, PinReason, RouteClass, StatementKind, TxAccess};
use crate::router::functions::is_read_only_call;
use crate::router::{self, Class, Decision, Reason, RouteContext};
use crate::settings::Settings;

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
    /// The routing state a client starts with: its user's and database's defaults, or the
    /// read-only alias. A client of `<db>_ro` (the configured suffix) is a client of `<db>`
    /// that reads from standbys only: its database name is rewritten here.
    pub fn for_client(
        settings: &crate::settings::Settings,
        accepted: &mut super::startup::Accepted,
    ) -> RouteState {
        let user_cfg = settings.users.get(&*accepted.user).map(|u| &u.config);
        let readonly_alias = match &settings.config.routing.readonly_database_suffix {
            Some(sfx)
                if accepted.database.len() > sfx.len()
                    && accepted.database.ends_with(sfx.as_str()) =>
            {
                let base = accepted.database[..accepted.database.len() - sfx.len()].to_owned();
                accepted.database = base.into();
                true
            }
            _ => false,
        };
        let db_cfg = settings.config.database(&accepted.database);
        RouteState {
            default_route: if readonly_alias {
                Some(Route::Standby)
            } else {
                user_cfg
                    .and_then(|u| u.default_route)
                    .or(db_cfg.and_then(|d| d.default_route))
            },
            default_consistency: user_cfg
                .and_then(|u| u.consistency)
                .or(db_cfg.and_then(|d| d.consistency))
                .unwrap_or(settings.config.routing.consistency),
            route: None,
            max_lag: None,
            min_lsn: None,
            consistency: None,
        }
    }

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
    /// Some statement is `COMMIT` / `END` or `ROLLBACK` / `ABORT`: the client's transaction
    /// ends with this request.
    pub ends_transaction: bool,
    /// Some statement is `COPY ... FROM` (the server will wait for data: nothing may be sent
    /// behind the request).
    pub copies_in: bool,
    /// The batch runs something (a Query or an Execute): it counts as a request its node
    /// served (a Sync or Describe sent on its own does not).
    pub executes: bool,
    /// Some Bind names one of the client's prepared statements that exists before the batch
    /// (a request the stale-plan guard may watch).
    pub binds_named: bool,
}

impl BatchClass {
    /// Folds one analysed text of the batch in: what its statements are, a pin, hints. A SQL
    /// PREPARE makes `class` a write.
    fn add(&mut self, a: &OwnedAnalysis, class: &mut Class) {
        for s in a.statements() {
            match s.kind {
                StatementKind::Proxy(_) => self.any_proxy = true,
                StatementKind::Commit { .. } => {
                    self.commits = true;
                    self.ends_transaction = true;
                    self.all_proxy = false;
                }
                StatementKind::Rollback { .. } => {
                    self.ends_transaction = true;
                    self.all_proxy = false;
                }
                StatementKind::CopyFrom => {
                    self.copies_in = true;
                    self.all_proxy = false;
                }
                StatementKind::Prepare { .. } => {
                    // SQL PREPARE pins the client to the connection it runs on (its
                    // statement cannot be replayed elsewhere): that must be the primary's.
                    *class = Class::Write;
                    self.all_proxy = false;
                }
                _ => self.all_proxy = false,
            }
        }
        match a.pin() {
            Some(PinReason::SetConfig) => self.params_may_change = true,
            Some(p) => {
                self.pin.get_or_insert(pin_name(p));
            }
            None => {}
        }
        if let Some(h) = a.hint() {
            self.hint = Some(match (self.hint, h) {
                (Some(Route::Primary), _) | (_, Route::Primary) => Route::Primary,
                _ => h,
            });
        }
        if let Some(l) = a.max_lag() {
            self.max_lag = Some(self.max_lag.map_or(l, |o: Duration| o.min(l)));
        }
    }
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
    pub(super) fn classify_batch(&self, settings: &Settings) -> BatchClass {
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
                let this = self.class_of(a, key, settings, &catalog);
                *class = combine(*class, this);
                out.add(a, class);
            };
        for f in &self.batch {
            let body = f.body();
            match f.tag() {
                ftag::QUERY => match frontend::query_text(body) {
                    Ok(t) => {
                        out.executes = true;
                        let a = self.ctx.classifier().analyze_for_routing(t);
                        consider(&a, text_key(t), &mut out, &mut class)
                    }
                    Err(_) => class = Class::Write,
                },
                ftag::PARSE => match frontend::parse(body) {
                    Ok(p) => {
                        parsed_unnamed |= p.name.is_empty();
                        let a = self.ctx.classifier().analyze_for_routing(p.query);
                        consider(&a, text_key(p.query), &mut out, &mut class)
                    }
                    Err(_) => class = Class::Write,
                },
                ftag::BIND => match frontend::bind(body) {
                    Ok(b) if b.statement.is_empty() => {
                        if !parsed_unnamed {
                            // The unnamed statement was parsed in an earlier request: its
                            // text is the client's last unnamed Parse (unknown: a write).
                            match unnamed_query(&self.state.unnamed) {
                                Some(q) => {
                                    let a = self.ctx.classifier().analyze_for_routing(q);
                                    consider(&a, text_key(q), &mut out, &mut class)
                                }
                                None => class = Class::Write,
                            }
                        }
                    }
                    Ok(b) => {
                        let named_here = self.batch.iter().any(|p| {
                            p.tag() == ftag::PARSE
                                && frontend::parse(p.body()).is_ok_and(|v| v.name == b.statement)
                        });
                        if named_here {
                            out.binds_named |= self.state.statements.contains_key(b.statement);
                        } else {
                            match self.state.statements.get(b.statement) {
                                Some(def) => {
                                    out.binds_named = true;
                                    let (a, key) = def.route_info.get_or_init(|| {
                                        let query =
                                            def.body.split(|&c| c == 0).next().unwrap_or(&[]);
                                        (
                                            self.ctx.classifier().analyze_for_routing(query),
                                            text_key(query),
                                        )
                                    });
                                    consider(a, *key, &mut out, &mut class)
                                }
                                None => class = Class::Write,
                            }
                        }
                    }
                    Err(_) => class = Class::Write,
                },
                ftag::FUNCTION_CALL => {
                    out.executes = true;
                    class = Class::Write;
                }
                ftag::EXECUTE => out.executes = true,
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
        settings: &crate::settings::Settings,
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
        if self.ctx.is_learned_write(key) {
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
            .param("default_transaction_read_only")
            .is_some_and(|v| matches!(v, "on" | "true" | "yes" | "1"))
    }

    /// The routing context of a classified batch: hints and `causeway.*` settings over the
    /// configured defaults, and the read-your-writes position when the session keeps one.
    fn route_context<'a>(&self, batch: &BatchClass, excluded: &'a [usize]) -> RouteContext<'a> {
        RouteContext {
            route: batch.hint.or(self.route.route).or(self.route.default_route),
            max_lag: batch.max_lag.or(self.route.max_lag),
            min_lsn: match self.route.consistency() {
                Consistency::Session => self.route.min_lsn,
                Consistency::Eventual => None,
            },
            excluded,
        }
    }

    /// Standbys to ask for their replay position when the session's writes keep a read off
    /// every standby the snapshot knows of (see [`router::causal_candidates`]).
    pub(super) fn causal_candidates(&self, batch: &BatchClass) -> Vec<usize> {
        let ctx = RouteContext {
            min_lsn: None,
            ..self.route_context(batch, &[])
        };
        let topology = self.ctx.topology().load();
        router::causal_candidates(&ctx, &topology)
    }

    /// Decides where a classified batch goes, without a read-your-writes position when
    /// `ignore_min_lsn` (to learn which standby the balancer would pick), and treating the
    /// `excluded` nodes as unable to serve it (they could not be reached for this batch).
    pub(super) fn plan(
        &self,
        batch: &BatchClass,
        excluded: &[usize],
        ignore_min_lsn: bool,
        settings: &Settings,
    ) -> (Decision, Reason) {
        let class = batch.class.unwrap_or(Class::Write);
        let mut ctx = self.route_context(batch, excluded);
        if ignore_min_lsn {
            ctx.min_lsn = None;
        }
        router::route(
            class,
            &ctx,
            &self.ctx.topology().load(),
            &settings.policy,
            &**self.ctx.feedback(),
        )
    }
}

fn combine(a: Class, b: Class) -> Class {
    match (a, b) {
        (Class::Write, _) | (_, Class::Write) => Class::Write,
        (Class::ReadOnlyBegin, _) | (_, Class::ReadOnlyBegin) => Class::ReadOnlyBegin,
        _ => Class::Read,
    }
}

/// The query text of the client's unnamed statement, if it has one.
fn unnamed_query(unnamed: &crate::backend::statements::UnnamedStatement) -> Option<&[u8]> {
    let tail = unnamed.as_ref()?;
    tail.split(|&c| c == 0).next()
}
