//! # causeway: a replication-aware PostgreSQL proxy
//!
//! Applications connect to causeway exactly as they would to PostgreSQL. causeway speaks the v3
//! wire protocol on both sides, sends writes and transactions to the primary, spreads plain reads
//! over hot standbys within a lag limit, follows promotions by itself, and pools server
//! connections.
//!
//! ## Layout (follows the data flow)
//!
//! ```text
//! client ─bytes─▶ net::listener ─spawn─▶ session::Session (one task per client)
//!   protocol::codec ─Frame─▶ session (batch up to Sync / Query / Flush)
//!   ─▶ router::route(&request, &session state, &topology) ─Target─▶ backend::pool (checkout)
//!   ─▶ session relay (forward bytes) ◀─ReplyScanner─ server bytes ─▶ client
//!   session state ◀─ ReadyForQuery status (I/T/E)
//! topology::watcher ──ArcSwap<Topology>──▶ router, backend
//! ```
//!
//! - [`protocol`]: sans-I/O wire layer. Frame headers, length limits, zero-copy frames, startup
//!   packets, the few messages the proxy must understand, SQLSTATE constants.
//! - [`config`]: typed, validated configuration loaded from `proxy.toml` plus `CAUSEWAY_*`
//!   environment overrides.
//! - [`settings`]: what the running proxy derives from the configuration (user secrets, routing
//!   policy, pool, watcher and catalog settings), built in one place.
//! - [`auth`]: client-facing authentication (SCRAM-SHA-256, md5, trust) and the pass-through
//!   secrets that log in to servers for clients, sans-I/O.
//! - [`auth_query`]: users not in the configuration, looked up on the primary and cached.
//! - [`net`]: the accept loop and connection limits.
//! - [`session`]: one task per client: startup, authentication, then the request/reply relay.
//! - [`router`]: pure routing decisions.
//! - [`backend`]: server connections (connect, authenticate) and pools of them.
//! - [`catalog`]: function volatility read from the primary's `pg_proc`, per database.
//! - [`topology`]: watches every node's role and publishes an immutable snapshot.
//! - [`cluster`]: a throwaway local primary + standbys built from the machine's PostgreSQL
//!   binaries; powers `causeway demo` and the integration tests.
//! - [`demo`]: `causeway demo`, the cluster harness plus the proxy.
//! - [`metrics`]: counters and latency histograms, Prometheus text format.
//! - [`admin`]: HTTP endpoints (`/metrics`, `/live`, `/ready`, `/topology`) and the admin
//!   console (`psql ... causeway`).
//! - [`reload`]: SIGHUP and the console's `RELOAD`: read, validate, build, one swap.
//! - [`app`]: the `App` handle that owns config, topology, pools and shutdown, passed down to
//!   every task (there are no global statics).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod auth_query;
pub mod backend;
pub mod catalog;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod net;
pub mod protocol;
pub mod reload;
pub mod router;
pub mod session;
pub mod settings;
pub mod topology;
