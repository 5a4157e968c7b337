//! Operating the proxy: the HTTP endpoints (`/metrics`, `/live`, `/ready`, `/topology`) on their
//! own port.

pub mod http;
