//! `SET`, `SHOW`, `RESET` and `DISCARD`: the statements that read or change the server
//! session's settings. They are reads (harmless on any node), but the session must replay
//! what they change on every server connection it uses, so each reports the parameter it
//! touches, the changes to `default_transaction_read_only` the router needs, the pins (`SET
//! ROLE`), and turns `causeway.*` names into proxy commands.

use super::{lower, Analyzer};
use crate::router::classify::command::{
    parse_bool, proxy_set, proxy_target, simple_value, ProxyCommand, ProxyError,
};
use crate::router::classify::names::ident_is;
use crate::router::classify::{
    DefaultReadOnly, DiscardTarget, ParamName, PinReason, RouteClass, SetScope, StatementKind,
    TxAccess,
};
use crate::router::lexer::{Token, TokenKind};

impl Analyzer<'_> {
    /// `SHOW name | ALL | TIME ZONE | TRANSACTION ISOLATION LEVEL | SESSION AUTHORIZATION`.
    pub(super) fn show(&mut self) -> (StatementKind, RouteClass) {
        self.bump();
        let name = match self.special_param_name() {
            Some(name) => name,
            None => {
                if self.eat_word("all") {
                    ParamName::Builtin("all")
                } else {
                    let Some((span, parts, n)) = self.eat_dotted_name() else {
                        return (StatementKind::Unknown, RouteClass::Unknown);
                    };
                    if let Some(cmd) = proxy_target(span, &parts, n) {
                        let cmd = match cmd {
                            Ok(setting) => ProxyCommand::Show(setting),
                            Err(invalid) => invalid,
                        };
                        return (StatementKind::Proxy(cmd), RouteClass::Read);
                    }
                    ParamName::Written(span)
                }
            }
        };
        (StatementKind::Show { name }, RouteClass::Read)
    }

    /// The multi-word parameter names shared by `SHOW` and `RESET`.
    fn special_param_name(&mut self) -> Option<ParamName> {
        let next = self.peek_at(1);
        let name = if self.peek_is_word("time") && next.is_some_and(|t| t.is_word("zone")) {
            self.bump();
            "timezone"
        } else if self.peek_is_word("session") && next.is_some_and(|t| t.is_word("authorization")) {
            self.bump();
            "session_authorization"
        } else if self.peek_is_word("transaction")
            && next.is_some_and(|t| t.is_word("isolation"))
            && self.peek_at(2).is_some_and(|t| t.is_word("level"))
        {
            self.bump();
            self.bump();
            "transaction_isolation"
        } else {
            return None;
        };
        self.bump();
        Some(ParamName::Builtin(name))
    }

    /// `RESET name | ALL | TIME ZONE | SESSION AUTHORIZATION | TRANSACTION ISOLATION LEVEL`.
    pub(super) fn reset(&mut self) -> (StatementKind, RouteClass) {
        self.bump();
        if let Some(name) = self.special_param_name() {
            return (StatementKind::Reset { name: Some(name) }, RouteClass::Read);
        }
        if self.eat_word("all") {
            self.default_read_only = Some(DefaultReadOnly::Reset);
            return (StatementKind::Reset { name: None }, RouteClass::Read);
        }
        let Some((span, parts, n)) = self.eat_dotted_name() else {
            return (StatementKind::Unknown, RouteClass::Unknown);
        };
        if let Some(cmd) = proxy_target(span, &parts, n) {
            let cmd = match cmd {
                Ok(setting) => ProxyCommand::Reset(setting),
                Err(invalid) => invalid,
            };
            return (StatementKind::Proxy(cmd), RouteClass::Read);
        }
        if n == 1 && parts[0].is_some_and(|p| ident_is(&p, "default_transaction_read_only")) {
            self.default_read_only = Some(DefaultReadOnly::Reset);
        }
        let name = Some(ParamName::Written(span));
        (StatementKind::Reset { name }, RouteClass::Read)
    }

    /// `SET …` in all its forms.
    pub(super) fn set(&mut self) -> (StatementKind, RouteClass) {
        self.bump(); // SET
        let next = self.peek_at(1);
        if self.peek_is_word("session") && next.is_some_and(|t| t.is_word("characteristics")) {
            self.bump();
            self.bump();
            return self.set_session_characteristics();
        }
        let scope = if self.peek_is_word("local") {
            self.bump();
            SetScope::Local
        } else {
            if self.peek_is_word("session") && !next.is_some_and(|t| t.is_word("authorization")) {
                self.bump();
            }
            SetScope::Session
        };
        match self.set_special(scope) {
            Some(statement) => statement,
            None => self.set_written(scope),
        }
    }

    /// After `SET SESSION CHARACTERISTICS`: `AS TRANSACTION modes`, a change of the session's
    /// defaults.
    fn set_session_characteristics(&mut self) -> (StatementKind, RouteClass) {
        use StatementKind as K;
        if !(self.eat_word("as") && self.eat_word("transaction")) {
            return (K::Unknown, RouteClass::Unknown);
        }
        let Some((access, _)) = self.transaction_modes() else {
            return (K::Unknown, RouteClass::Unknown);
        };
        match access {
            TxAccess::ReadOnly => self.default_read_only = Some(DefaultReadOnly::On),
            TxAccess::ReadWrite => self.default_read_only = Some(DefaultReadOnly::Off),
            TxAccess::Default => {}
        }
        (K::SetSessionCharacteristics, RouteClass::Read)
    }

    /// After `SET [LOCAL | SESSION]`: the forms that are not `name = value`
    /// (`TRANSACTION …`, `CONSTRAINTS …`) or that imply the parameter's name (`TIME ZONE`,
    /// `SESSION AUTHORIZATION`, `XML OPTION`, `SCHEMA`, `NAMES`, `ROLE`). `None`, having
    /// consumed nothing, for a written name.
    fn set_special(&mut self, scope: SetScope) -> Option<(StatementKind, RouteClass)> {
        use StatementKind as K;
        let next = self.peek_at(1);
        let mut buf = [0u8; 24];
        let name = match lower(self.peek(), &mut buf) {
            b"transaction" => {
                self.bump();
                if self.eat_word("snapshot") {
                    self.skip_rest();
                } else if self.transaction_modes().is_none() {
                    return Some((K::Unknown, RouteClass::Unknown));
                }
                return Some((K::SetTransaction, RouteClass::Read));
            }
            b"constraints" => {
                self.skip_rest();
                return Some((K::SetConstraints, RouteClass::Read));
            }
            b"time" if next.is_some_and(|t| t.is_word("zone")) => {
                self.bump();
                "timezone"
            }
            b"session" if next.is_some_and(|t| t.is_word("authorization")) => {
                self.bump();
                "session_authorization"
            }
            b"xml" if next.is_some_and(|t| t.is_word("option")) => {
                self.bump();
                "xmloption"
            }
            b"schema" => "search_path",
            b"names" => "client_encoding",
            b"role" if !next.is_some_and(|t| t.is_word("to") || t.text == b"=") => "role",
            _ => return None,
        };
        self.bump();
        let value = self.skip_rest();
        if value.is_empty() && name != "client_encoding" {
            return Some((K::Unknown, RouteClass::Unknown));
        }
        if scope == SetScope::Session && matches!(name, "role" | "session_authorization") {
            self.pin(PinReason::Role);
        }
        let name = ParamName::Builtin(name);
        Some((K::Set { scope, name, value }, RouteClass::Read))
    }

    /// `SET [LOCAL | SESSION] name {= | TO} value`, including `causeway.*` settings.
    fn set_written(&mut self, scope: SetScope) -> (StatementKind, RouteClass) {
        use StatementKind as K;
        let Some((span, parts, n)) = self.eat_dotted_name() else {
            return (K::Unknown, RouteClass::Unknown);
        };
        let assigns = self
            .peek()
            .is_some_and(|t| t.is_word("to") || (t.kind == TokenKind::Operator && t.text == b"="));
        if !assigns {
            return (K::Unknown, RouteClass::Unknown);
        }
        self.bump();
        let value = self.skip_rest();
        if value.is_empty() {
            return (K::Unknown, RouteClass::Unknown);
        }
        let sql = self.sql;
        let value_text = &sql[value.range()];
        if let Some(target) = proxy_target(span, &parts, n) {
            let cmd = match target {
                Err(invalid) => invalid,
                Ok(setting) if scope == SetScope::Local => ProxyCommand::Invalid {
                    name: span,
                    error: ProxyError::LocalScope(setting),
                },
                Ok(setting) => proxy_set(setting, span, value_text),
            };
            return (K::Proxy(cmd), RouteClass::Read);
        }
        if n == 1 && scope == SetScope::Session {
            if let Some(p) = parts[0] {
                self.session_setting(p, value_text);
            }
        }
        let name = ParamName::Written(span);
        (K::Set { scope, name, value }, RouteClass::Read)
    }

    /// A session-level `SET name = value` of a setting the classifier reports on:
    /// `default_transaction_read_only` (a read-only change) and `role` /
    /// `session_authorization` (a pin).
    fn session_setting(&mut self, name: Token<'_>, value_text: &[u8]) {
        if ident_is(&name, "default_transaction_read_only") {
            self.default_read_only = if value_text.eq_ignore_ascii_case(b"default") {
                Some(DefaultReadOnly::Reset)
            } else {
                match simple_value(value_text).and_then(parse_bool) {
                    Some(true) => Some(DefaultReadOnly::On),
                    Some(false) => Some(DefaultReadOnly::Off),
                    None => self.default_read_only, // the server will refuse it
                }
            };
        } else if ident_is(&name, "role") || ident_is(&name, "session_authorization") {
            self.pin(PinReason::Role);
        }
    }

    /// `DISCARD ALL | PLANS | SEQUENCES | TEMP | TEMPORARY`.
    pub(super) fn discard(&mut self) -> (StatementKind, RouteClass) {
        self.bump();
        let mut buf = [0u8; 24];
        let target = match lower(self.bump(), &mut buf) {
            b"all" => {
                self.default_read_only = Some(DefaultReadOnly::Reset);
                DiscardTarget::All
            }
            b"plans" => DiscardTarget::Plans,
            b"sequences" => DiscardTarget::Sequences,
            b"temp" | b"temporary" => DiscardTarget::Temp,
            _ => return (StatementKind::Unknown, RouteClass::Unknown),
        };
        (StatementKind::Discard(target), RouteClass::Read)
    }
}
