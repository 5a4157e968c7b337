//! Console commands that change something: `RELOAD` (as SIGHUP), `PAUSE` / `RESUME`, and
//! `SHUTDOWN` (as SIGTERM).

use bytes::BytesMut;

use crate::protocol::messages::{self, ProxyError};
use crate::protocol::sqlstate::Severity;
use crate::protocol::SqlState;
use crate::session::context::SessionCtx;

/// `RELOAD`: re-reads the configuration file; the answer is `RELOAD`, with a notice naming
/// what changed, or the error (the running configuration then stays).
pub fn reload(ctx: &SessionCtx, b: &mut BytesMut) -> Result<(), ProxyError> {
    match crate::reload::reload(ctx) {
        Ok(r) => {
            let what = if r.changed.is_empty() {
                "nothing changed".to_owned()
            } else {
                format!("changed: {}", r.changed.join(", "))
            };
            let mut notice = ProxyError::error(
                SqlState::SUCCESSFUL_COMPLETION,
                format!("configuration reloaded; {what}"),
            );
            notice.severity = Severity::Notice;
            notice.encode(b);
            messages::command_complete(b, "RELOAD");
            Ok(())
        }
        Err(e) => Err(ProxyError::error(
            SqlState::CONFIG_FILE_ERROR,
            e.to_string(),
        )),
    }
}

/// `SHUTDOWN`: asks whoever runs the proxy to stop it as for SIGTERM (running
/// transactions finish, up to `shutdown_timeout`); this console then ends with the rest.
pub fn shutdown(ctx: &SessionCtx, b: &mut BytesMut) -> Result<(), ProxyError> {
    tracing::info!("admin console: SHUTDOWN");
    ctx.request_stop();
    messages::command_complete(b, "SHUTDOWN");
    Ok(())
}

/// `PAUSE [db]`: holds new transactions (of `db`, or all) and answers once the running ones
/// have ended, as PgBouncer does. Held clients wait as for a full pool, up to `pool_timeout`.
pub async fn pause(
    ctx: &SessionCtx,
    database: Option<&str>,
    b: &mut BytesMut,
) -> Result<(), ProxyError> {
    tracing::info!(database = ?database, "admin console: PAUSE");
    ctx.pools().pause(database).await.map_err(|e| {
        ProxyError::error(SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE, e.to_string())
    })?;
    messages::command_complete(b, "PAUSE");
    Ok(())
}

/// `RESUME [db]`: lets held transactions go.
pub fn resume(
    ctx: &SessionCtx,
    database: Option<&str>,
    b: &mut BytesMut,
) -> Result<(), ProxyError> {
    tracing::info!(database = ?database, "admin console: RESUME");
    ctx.pools().resume(database).map_err(|e| {
        ProxyError::error(SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE, e.to_string())
    })?;
    messages::command_complete(b, "RESUME");
    Ok(())
}
