//! The guardian: a tiny shell child that tears a cluster down once this process is gone.
//!
//! `Drop` covers normal exits and panics, but not `static` clusters (statics are never dropped),
//! `std::process::exit`, SIGKILL, or a Ctrl-C'd `causeway demo`. The servers are daemons, not our
//! children, so nothing would stop them. The guardian closes that gap without polling PIDs: its
//! stdin is a pipe whose only write end this process holds (std opens pipes close-on-exec, so no
//! server or other child inherits it). When this process ends, however it ends, the kernel closes
//! the write end, the guardian's `read` sees end-of-file, and it stops every server with
//! `pg_ctl stop -m immediate` and deletes the base directory.
//!
//! After an orderly [`LocalCluster::shutdown`](super::LocalCluster::shutdown) the base directory is
//! already gone, so the guardian finds nothing to do and exits quietly.

use std::{
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Stdio},
    thread,
    time::{Duration, Instant},
};

use std::os::unix::process::CommandExt;

use super::{error::ClusterError, process::Runner};

/// Positional parameters: `$1` base directory, `$2` pg_ctl, then one data directory each.
///
/// SIGINT and SIGHUP are ignored (on top of running in its own process group) so that the Ctrl-C
/// that kills `causeway demo` does not kill the guardian before it cleans up.
const SCRIPT: &str = r#"
trap '' INT HUP
while read -r _; do :; done
base=$1
pg_ctl=$2
shift 2
if [ -z "$base" ] || [ ! -d "$base" ]; then exit 0; fi
for data in "$@"; do
  if [ -f "$data/postmaster.pid" ]; then "$pg_ctl" stop -D "$data" -m immediate -w -t 30; fi
done
rm -rf -- "$base"
exit 0
"#;

/// A running guardian.
///
/// Invariant: `stdin` is the only write end of the guardian's stdin pipe while it is `Some`;
/// dropping it is what tells the guardian to act.
#[derive(Debug)]
pub(crate) struct Guardian {
    /// The `sh` process.
    child: Child,
    /// Write end of its stdin; never written to, only closed.
    stdin: Option<ChildStdin>,
}

impl Guardian {
    /// Starts a guardian for the cluster in `base` whose servers use `data_dirs`.
    ///
    /// It runs as the cluster's account because pg_ctl refuses root, with output to /dev/null and
    /// no other inherited descriptors so it never holds the terminal or `cargo test`'s pipes
    /// open, and in its own process group so a terminal's Ctrl-C does not reach it.
    pub(crate) fn spawn(
        runner: &Runner,
        base: &Path,
        pg_ctl: &Path,
        data_dirs: &[PathBuf],
    ) -> Result<Self, ClusterError> {
        let mut cmd = runner.long_lived_command(Path::new("/bin/sh"));
        cmd.arg("-c")
            .arg(SCRIPT)
            .arg("causeway-cluster-guardian")
            .arg(base)
            .arg(pg_ctl)
            .args(data_dirs)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(ClusterError::io("starting the cluster guardian (/bin/sh)"))?;
        let stdin = child.stdin.take();
        tracing::debug!(pid = child.id(), base = %base.display(), "cluster guardian started");
        Ok(Guardian { child, stdin })
    }

    /// Releases the guardian after the cluster was cleaned up: closes its pipe, then reaps it
    /// (killing it if it has not exited within `timeout`), so that no zombie is left behind.
    pub(crate) fn dismiss(mut self, timeout: Duration) {
        drop(self.stdin.take());
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if started.elapsed() >= timeout => {
                    tracing::warn!(
                        pid = self.child.id(),
                        "cluster guardian did not exit; killing it"
                    );
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    return;
                }
                Ok(None) => {
                    thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        }
    }
}
