//! `SHOW CLIENTS` (each client connection, the console's own included) and `KILL <pid>`
//! (end one client's session as a shutdown would: FATAL 57P01, its running request
//! cancelled or its transaction rolled back on the server).

use bytes::BytesMut;

use super::table::{cell, timestamp, Kind, Table};
use crate::protocol::messages::{self, ProxyError};
use crate::protocol::SqlState;
use crate::session::cancel::Stop;
use crate::session::context::SessionCtx;

/// `SHOW CLIENTS`. `id` is the pid the client got in BackendKeyData (what `KILL` takes);
/// `state` is `active` while the client holds a server connection, `idle` otherwise, and
/// `admin` for console connections; `remote_pid` is the server process serving it.
pub fn show_clients(ctx: &SessionCtx) -> Table {
    let mut t = Table::new(&[
        ("type", Kind::Text),
        ("user", Kind::Text),
        ("database", Kind::Text),
        ("state", Kind::Text),
        ("addr", Kind::Text),
        ("port", Kind::Int),
        ("connect_time", Kind::Text),
        ("remote_pid", Kind::Int),
        ("application_name", Kind::Text),
        ("id", Kind::Int),
    ]);
    for (pid, slot) in ctx.cancels().clients() {
        let info = slot.info();
        let target = slot.target();
        let state = match (&target, info.console) {
            (_, true) => "admin",
            (Some(_), false) => "active",
            (None, false) => "idle",
        };
        t.push(vec![
            cell("C"),
            cell(&info.user),
            cell(&info.database),
            cell(state),
            cell(info.peer.ip()),
            cell(info.peer.port()),
            cell(timestamp(info.connected)),
            target.map(|t| t.key.pid.to_string()),
            info.application_name.clone(),
            cell(pid),
        ]);
    }
    t
}

/// `KILL <pid>`: ends that client's session now.
pub fn kill(ctx: &SessionCtx, pid: i32, own_pid: i32, b: &mut BytesMut) -> Result<(), ProxyError> {
    if pid == own_pid {
        return Err(ProxyError::error(
            SqlState::INVALID_PARAMETER_VALUE,
            "KILL of the console's own connection: disconnect instead",
        ));
    }
    if !ctx.cancels().signal_pid(pid, Stop::Kill) {
        return Err(ProxyError::error(
            SqlState::UNDEFINED_OBJECT,
            format!("no client with id {pid} (see SHOW CLIENTS)"),
        ));
    }
    tracing::info!(client = pid, "admin console: KILL");
    messages::command_complete(b, "KILL");
    Ok(())
}
