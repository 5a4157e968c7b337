//! Networking: the accept loop and connection limits.

pub mod listener;
