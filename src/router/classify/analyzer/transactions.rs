//! Transaction control: `BEGIN` / `START TRANSACTION` with their modes, `COMMIT`, `ROLLBACK`,
//! two-phase commands, savepoints. A read-only `BEGIN` is what lets a whole transaction run
//! on a standby, so its modes are read as PostgreSQL reads them (any order, last one wins),
//! and `SERIALIZABLE`, which hot standbys refuse, sends it to the primary.

use super::{lower, Analyzer};
use crate::router::classify::{IsolationLevel, RouteClass, Span, StatementKind, TxAccess};
use crate::router::lexer::TokenKind;

impl Analyzer<'_> {
    /// Transaction modes after `BEGIN`, `START TRANSACTION`, `SET TRANSACTION`, `SET SESSION
    /// CHARACTERISTICS AS TRANSACTION`: `ISOLATION LEVEL …`, `READ ONLY`, `READ WRITE`,
    /// `[NOT] DEFERRABLE`, separated by commas or spaces. Later modes override earlier ones,
    /// as in PostgreSQL. `None` if something else is there.
    pub(super) fn transaction_modes(&mut self) -> Option<(TxAccess, Option<IsolationLevel>)> {
        let mut access = TxAccess::Default;
        let mut isolation = None;
        loop {
            if self.at_end() {
                return Some((access, isolation));
            }
            if self.peek_kind() == Some(TokenKind::Comma) {
                self.bump();
                continue;
            }
            let mut buf = [0u8; 24];
            match lower(self.bump(), &mut buf) {
                b"isolation" => {
                    if !self.eat_word("level") {
                        return None;
                    }
                    let mut b2 = [0u8; 24];
                    isolation = Some(match lower(self.bump(), &mut b2) {
                        b"serializable" => IsolationLevel::Serializable,
                        b"repeatable" if self.eat_word("read") => IsolationLevel::RepeatableRead,
                        b"read" if self.eat_word("committed") => IsolationLevel::ReadCommitted,
                        b"read" if self.eat_word("uncommitted") => IsolationLevel::ReadUncommitted,
                        _ => return None,
                    });
                }
                b"read" => {
                    if self.eat_word("only") {
                        access = TxAccess::ReadOnly;
                    } else if self.eat_word("write") {
                        access = TxAccess::ReadWrite;
                    } else {
                        return None;
                    }
                }
                b"not" => {
                    if !self.eat_word("deferrable") {
                        return None;
                    }
                }
                b"deferrable" => {}
                _ => return None,
            }
        }
    }

    /// `BEGIN [WORK | TRANSACTION] [modes]`, `START TRANSACTION [modes]`.
    pub(super) fn begin(&mut self) -> (StatementKind, RouteClass) {
        let Some(first) = self.bump() else {
            return (StatementKind::Unknown, RouteClass::Unknown);
        };
        if first.is_word("start") {
            if !self.eat_word("transaction") {
                return (StatementKind::Unknown, RouteClass::Unknown);
            }
        } else if !self.eat_word("work") {
            self.eat_word("transaction");
        }
        let Some((access, isolation)) = self.transaction_modes() else {
            return (StatementKind::Unknown, RouteClass::Unknown);
        };
        // Hot standbys refuse SERIALIZABLE, even for read-only transactions.
        let route =
            if access == TxAccess::ReadOnly && isolation != Some(IsolationLevel::Serializable) {
                RouteClass::Read
            } else {
                RouteClass::Primary
            };
        (StatementKind::Begin { access, isolation }, route)
    }

    /// `COMMIT`/`END`/`ROLLBACK`/`ABORT [WORK | TRANSACTION] [AND [NO] CHAIN]`, `ROLLBACK
    /// … TO [SAVEPOINT] name`, `COMMIT PREPARED 'gid'`, `ROLLBACK PREPARED 'gid'`.
    pub(super) fn end_transaction(&mut self) -> (StatementKind, RouteClass) {
        use StatementKind as K;
        let Some(first) = self.bump() else {
            return (K::Unknown, RouteClass::Unknown);
        };
        let commit = first.is_word("commit") || first.is_word("end");
        let plain = first.is_word("commit") || first.is_word("rollback");
        if plain && self.peek_is_word("prepared") {
            self.bump();
            if self.peek_kind() != Some(TokenKind::String) {
                return (K::Unknown, RouteClass::Unknown);
            }
            self.bump();
            let kind = if commit {
                K::CommitPrepared
            } else {
                K::RollbackPrepared
            };
            return (kind, RouteClass::Primary);
        }
        if !self.eat_word("work") {
            self.eat_word("transaction");
        }
        if !commit && plain && self.eat_word("to") {
            self.eat_word("savepoint");
            let Some(name) = self.eat_name() else {
                return (K::Unknown, RouteClass::Unknown);
            };
            return (
                K::RollbackToSavepoint {
                    name: Span::of(&name),
                },
                RouteClass::Read,
            );
        }
        let mut chain = false;
        if self.eat_word("and") {
            chain = !self.eat_word("no");
            if !self.eat_word("chain") {
                return (K::Unknown, RouteClass::Unknown);
            }
        }
        let kind = if commit {
            K::Commit { chain }
        } else {
            K::Rollback { chain }
        };
        (kind, RouteClass::Read)
    }

    /// `SAVEPOINT name`, `RELEASE [SAVEPOINT] name`.
    pub(super) fn savepoint(&mut self) -> (StatementKind, RouteClass) {
        let release = self.bump().is_some_and(|t| t.is_word("release"));
        if release {
            self.eat_word("savepoint");
        }
        let Some(name) = self.eat_name() else {
            return (StatementKind::Unknown, RouteClass::Unknown);
        };
        let name = Span::of(&name);
        let kind = if release {
            StatementKind::ReleaseSavepoint { name }
        } else {
            StatementKind::Savepoint { name }
        };
        (kind, RouteClass::Read)
    }
}
