//! The one error type of the local-cluster harness.
//!
//! Every failure carries enough text to act on without reading the code: which binary is missing
//! and what to install, which command failed with its stderr (and the server log when a server
//! did not start), or what the harness was waiting for when a deadline passed.

use std::{io, time::Duration};

/// The package to install on Debian and Ubuntu when PostgreSQL is missing; quoted by errors.
pub(crate) const INSTALL_HINT: &str =
    "apt-get install -y postgresql (Debian/Ubuntu; elsewhere your distribution's PostgreSQL server package)";

/// Everything that can go wrong while starting, driving or stopping a [`LocalCluster`].
///
/// [`LocalCluster`]: super::LocalCluster
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// No directory with the PostgreSQL server binaries (`initdb`, `pg_ctl`, `pg_basebackup`) was
    /// found.
    #[error("PostgreSQL server binaries not found ({detail}); install them: {install_hint}")]
    BinariesMissing {
        /// Where the harness looked, or what was wrong with what it found.
        detail: String,
        /// The install command to run.
        install_hint: &'static str,
    },

    /// The process runs as root, so PostgreSQL must run as the `postgres` OS user (initdb refuses
    /// root), but that user does not exist.
    #[error(
        "running as root, but there is no `postgres` OS user to run PostgreSQL as (initdb refuses \
         root); install PostgreSQL, which creates it: {install_hint}"
    )]
    NoPostgresUser {
        /// The install command to run.
        install_hint: &'static str,
    },

    /// The binaries found are older than the harness supports.
    #[error(
        "PostgreSQL {found} is too old: the cluster harness needs PostgreSQL {required} or newer"
    )]
    UnsupportedVersion {
        /// Major version of the binaries found.
        found: u32,
        /// Lowest supported major version.
        required: u32,
    },

    /// A command ran but exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line, for humans (arguments joined by spaces, not re-quoted).
        command: String,
        /// How it ended, e.g. `exit status: 1`.
        status: String,
        /// Its trimmed stderr; for a server that did not start, followed by the new lines of the
        /// server log.
        stderr: String,
    },

    /// A deadline passed before a condition held or a command finished.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the harness waited.
        after: Duration,
    },

    /// A file-system or process-spawning operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A node index outside `0..node_count()`.
    #[error("node {node} does not exist: the cluster has nodes 0..{count}")]
    NoSuchNode {
        /// The index asked for.
        node: usize,
        /// How many nodes the cluster has.
        count: usize,
    },

    /// The request cannot be carried out as asked (bad option, bad configuration line, a node in
    /// the wrong state, unexpected output).
    #[error("{0}")]
    Invalid(String),

    /// [`LocalCluster::shutdown`](super::LocalCluster::shutdown) already ran.
    #[error("the local cluster has been shut down")]
    ShutDown,
}

impl ClusterError {
    /// Wraps an I/O error with what the harness was doing; for `map_err`.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> ClusterError {
        let context = context.into();
        move |source| ClusterError::Io { context, source }
    }
}
