//! Networking: the accept loop and connection limits, and the client stream type that sessions
//! read and write their clients through (plain TCP today, TLS as one more variant).

pub mod keepalive;
pub mod listener;
pub mod server_tls;
pub mod stream;
pub mod tls;
