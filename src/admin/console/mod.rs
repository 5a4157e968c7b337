//! The admin console: `psql -U <admin user> causeway` through the proxy's own port. A client
//! whose startup names the database [`DATABASE`] is served here instead of by a session:
//! after the usual authentication, only users listed in `proxy.admin_users` get in (others
//! get FATAL 28000), and their simple queries are console commands (`SHOW NODES`, `RELOAD`,
//! ...) answered with result sets psql renders. Column names follow PgBouncer's `SHOW` where
//! the meaning is the same, so PgBouncer dashboards and `pgbouncer_exporter` read them.
//!
//! The console is reached once per connection, from `session::run`, by comparing the
//! database name: the proxied query path never sees it. One module per concern: command
//! parsing (`command`), the result-set builder (`table`), the views (`nodes`, `pools`,
//! `clients`, `stats`, `settings`) and the commands that change something (`control`).

mod clients;
mod command;
mod control;
mod nodes;
mod pools;
mod settings;
mod stats;
mod table;

use bytes::BytesMut;

use crate::protocol::backend::TxStatus;
use crate::protocol::frontend::tag as ftag;
use crate::protocol::messages::{self, ProxyError};
use crate::protocol::startup::CancelKey;
use crate::protocol::{decode_frame, SqlState};
use crate::session::cancel::{ClientInfo, Stop};
use crate::session::client::ClientConn;
use crate::session::context::SessionCtx;
use crate::session::startup::Accepted;
use crate::session::SessionError;
use command::Command;

/// The database name that opens the console instead of a proxied session.
pub const DATABASE: &str = "causeway";

/// Largest query text the console reads (its commands are a few words).
const MAX_COMMAND_LEN: usize = 64 * 1024;

/// Serves one console connection from after authentication to close.
pub async fn serve(ctx: SessionCtx, mut client: ClientConn, accepted: Accepted) {
    let is_admin = ctx
        .settings()
        .config
        .proxy
        .admin_users
        .iter()
        .any(|a| *a == *accepted.user);
    if !is_admin {
        let e = ProxyError::fatal(
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            format!(
                "user \"{}\" may not use the admin console (not in proxy.admin_users)",
                accepted.user
            ),
        );
        crate::session::report_and_close(&mut client, SessionError::Fatal(e), ctx.metrics()).await;
        return;
    }
    let key = CancelKey {
        pid: ctx.next_client_pid(),
        secret: rand::random(),
    };
    let info = ClientInfo::of(&accepted, client.peer(), true);
    let registration = ctx.cancels().register(key, info);
    if ctx.shutdown_token().is_cancelled() {
        registration.slot().signal(Stop::Drain);
    }
    welcome(&mut client, key);
    let slot = registration.slot().clone();
    let result = tokio::select! {
        r = Box::pin(run(&ctx, &mut client, key.pid)) => r,
        _ = std::future::poll_fn(|cx| slot.poll_stop(cx, Stop::Drain)) => {
            Err(SessionError::Fatal(ProxyError::fatal(
                SqlState::ADMIN_SHUTDOWN,
                "terminating connection due to administrator command",
            )))
        }
    };
    if let Err(e) = result {
        crate::session::report_and_close(&mut client, e, ctx.metrics()).await;
    }
}

/// What a console client learns at startup: the parameters psql looks at, its key,
/// ReadyForQuery.
fn welcome(client: &mut ClientConn, key: CancelKey) {
    let mut b = BytesMut::with_capacity(256);
    for (name, value) in [
        ("server_version", "15.0 (causeway console)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    ] {
        messages::parameter_status(&mut b, name, value);
    }
    messages::backend_key_data(&mut b, key);
    messages::ready_for_query(&mut b, TxStatus::Idle);
    client.push(b);
}

/// Reads and answers commands until the client leaves.
async fn run(ctx: &SessionCtx, client: &mut ClientConn, own_pid: i32) -> Result<(), SessionError> {
    // After an extended-protocol message: everything up to Sync is ignored, then ReadyForQuery.
    let mut skip_until_sync = false;
    loop {
        client.flush().await?;
        let frame = loop {
            if let Some(f) = decode_frame(&mut client.rbuf, MAX_COMMAND_LEN)? {
                break f;
            }
            if client.read_some().await? == 0 {
                return Ok(());
            }
        };
        let mut b = BytesMut::new();
        match frame.tag() {
            ftag::TERMINATE => return Ok(()),
            ftag::QUERY => {
                let text = frame.body().strip_suffix(b"\0").unwrap_or(frame.body());
                let text = String::from_utf8_lossy(text);
                answer(ctx, &text, own_pid, &mut b).await;
                messages::ready_for_query(&mut b, TxStatus::Idle);
                client.push(b);
            }
            ftag::SYNC if skip_until_sync => {
                skip_until_sync = false;
                messages::ready_for_query(&mut b, TxStatus::Idle);
                client.push(b);
            }
            _ if skip_until_sync => {}
            _ => {
                skip_until_sync = true;
                let e = ProxyError::error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "the admin console answers simple queries only (no extended protocol)",
                );
                ctx.metrics().count_proxy_error(&e);
                e.encode(&mut b);
                client.push(b);
            }
        }
    }
}

/// Runs every statement of one query string, in order, stopping at the first error (as
/// PostgreSQL does with a multi-statement simple query).
async fn answer(ctx: &SessionCtx, text: &str, own_pid: i32, b: &mut BytesMut) {
    let statements: Vec<&str> = text
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if statements.is_empty() {
        messages::empty_query_response(b);
        return;
    }
    for statement in statements {
        let result = match command::parse(statement) {
            Ok(c) => execute(ctx, c, own_pid, b).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            ctx.metrics().count_proxy_error(&e);
            e.encode(b);
            break;
        }
    }
}

/// Runs one command, appending its answer.
async fn execute(
    ctx: &SessionCtx,
    command: Command,
    own_pid: i32,
    b: &mut BytesMut,
) -> Result<(), ProxyError> {
    use command::Show;
    let table = match command {
        Command::Show(Show::Nodes) => nodes::show_nodes(ctx),
        Command::Show(Show::Databases) => nodes::show_databases(ctx),
        Command::Show(Show::Pools) => pools::show_pools(ctx),
        Command::Show(Show::Servers) => pools::show_servers(ctx),
        Command::Show(Show::Lists) => pools::show_lists(ctx),
        Command::Show(Show::Clients) => clients::show_clients(ctx),
        Command::Show(Show::Stats) => stats::show_stats(ctx),
        Command::Show(Show::StatsTotals) => stats::show_stats_totals(ctx),
        Command::Show(Show::Config) => settings::show_config(ctx),
        Command::Show(Show::Version) => settings::show_version(),
        Command::Show(Show::Help) => settings::show_help(),
        Command::Kill(pid) => return clients::kill(ctx, pid, own_pid, b),
        Command::Reload => return control::reload(ctx, b),
        Command::Shutdown => return control::shutdown(ctx, b),
        Command::Pause(db) => return control::pause(ctx, db.as_deref(), b).await,
        Command::Resume(db) => return control::resume(ctx, db.as_deref(), b),
    };
    table.encode(b, "SHOW");
    Ok(())
}
