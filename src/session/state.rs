//! What a client did to its session, kept by the proxy so that any server connection can be made
//! to look like the client's own: session parameters and named prepared statements.
//!
//! Server connections are shared (transaction pooling) and spread over nodes (routing), so the
//! proxy cannot leave this state on one server. Instead:
//! - parameters: the client's desired values live here; before a server connection serves the
//!   client, the differences are applied (`set_config` / `RESET`) in the same round trip as the
//!   client's request. After a request that changed parameters (`SET`, `RESET`, `DISCARD`), the
//!   proxy reads the server's session-level settings back, so it never has to interpret `SET`
//!   syntax itself.
//! - prepared statements: the client's names map to definitions here; see
//!   [`crate::backend::statements`] for the server side.

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::Arc;

/// The client's session state.
#[derive(Debug, Default)]
pub struct ClientState {
    /// Session parameters the client expects, as raw values `set_config` accepts: sorted by
    /// lower-case name, names unique. A sorted list, not a map: a client has a few, and a
    /// `BTreeMap` takes a 544-byte node for even one (issue 17). Shared with
    /// `startup_params` until the client changes a parameter: most never do, and keep one
    /// copy.
    pub params: Arc<[(String, String)]>,
    /// Parameters from the startup packet, in the same form: what `RESET`/`DISCARD ALL`
    /// return to.
    startup_params: Arc<[(String, String)]>,
    /// Fingerprint of `params`, kept with them: a server connection last brought in line with
    /// the same fingerprint needs no comparison. Never 0 (a connection's "unknown"). Made
    /// with the proxy's keyed hasher (`App::params_hasher`: the same for every session, so
    /// equal parameters give equal fingerprints; random per proxy, so they cannot be forged).
    params_id: u64,
    /// Named prepared statements by the client's name.
    pub statements: crate::backend::statements::ClientStatements,
    /// The client's unnamed statement, from its last unnamed Parse until a simple Query or a
    /// Close of it: prepared again where a later Bind of it lands.
    pub unnamed: crate::backend::statements::UnnamedStatement,
}

impl ClientState {
    /// Starts from the startup packet's parameters (names in any case; of a name given twice
    /// the last value counts); `hasher` is the proxy's (see `App::params_hasher`).
    pub fn new(startup: Vec<(String, String)>, hasher: &RandomState) -> ClientState {
        let mut startup: Vec<(String, String)> = startup
            .into_iter()
            .rev()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        // Stable: of equal names the last given comes first, and is the one kept.
        startup.sort_by(|a, b| a.0.cmp(&b.0));
        startup.dedup_by(|later, kept| later.0 == kept.0);
        let startup_params: Arc<[(String, String)]> = startup.into();
        ClientState {
            params_id: fingerprint(&startup_params, hasher),
            params: startup_params.clone(),
            startup_params,
            statements: Default::default(),
            unnamed: None,
        }
    }

    /// The value the client expects for parameter `name` (lower case), if it set one.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| self.params[i].1.as_str())
    }

    /// The fingerprint of the current parameters.
    pub fn params_id(&self) -> u64 {
        self.params_id
    }

    /// Replaces the parameters with what a server reported as session-level after the client
    /// changed them. A startup parameter the server no longer reports was reset to the
    /// server default, while on a connection of its own the client would be back at its
    /// startup value; so startup values fill the gaps (and get applied again).
    pub fn refresh_params(
        &mut self,
        session_level: BTreeMap<String, String>,
        hasher: &RandomState,
    ) {
        let mut params = session_level;
        for (k, v) in self.startup_params.iter() {
            params.entry(k.clone()).or_insert_with(|| v.clone());
        }
        self.params = params.into_iter().collect();
        self.params_id = fingerprint(&self.params, hasher);
    }
}

/// The fingerprint of a parameter list (see `ClientState::params_id`).
fn fingerprint(params: &[(String, String)], hasher: &RandomState) -> u64 {
    hasher.hash_one(params).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_keeps_startup_values_the_server_forgot() {
        let mut c = ClientState::new(
            vec![("Application_Name".into(), "x".into())],
            &RandomState::new(),
        );
        assert_eq!(c.param("application_name"), Some("x"));
        let mut reported = BTreeMap::new();
        reported.insert("search_path".to_owned(), "a".to_owned());
        c.refresh_params(reported, &RandomState::new());
        assert_eq!(c.params.len(), 2);
        assert_eq!(c.param("search_path"), Some("a"));
        assert_eq!(c.param("application_name"), Some("x"));
    }

    #[test]
    fn startup_params_sorted_lower_case_last_one_counts() {
        let c = ClientState::new(
            vec![
                ("TimeZone".into(), "UTC".into()),
                ("application_name".into(), "a".into()),
                ("timezone".into(), "CET".into()),
            ],
            &RandomState::new(),
        );
        assert_eq!(
            *c.params,
            [
                ("application_name".to_owned(), "a".to_owned()),
                ("timezone".to_owned(), "CET".to_owned())
            ]
        );
        assert_eq!(c.param("timezone"), Some("CET"));
        assert_eq!(c.param("search_path"), None);
    }
}
