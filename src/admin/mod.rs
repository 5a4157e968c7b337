//! Operating the proxy: the HTTP endpoints (`/metrics`, `/live`, `/ready`, `/topology`) on their
//! own port, and the admin console (`psql ... causeway`) on the proxy's own.

pub mod console;
pub mod http;
