//! Running PostgreSQL's command-line tools: as which OS user, with which environment, and with a
//! deadline.
//!
//! initdb and pg_ctl refuse to run as root, so when this process is root every PostgreSQL binary
//! runs as the `postgres` OS user and every file the harness writes is handed to that user. The
//! environment is scrubbed of `PG*` variables so that a developer's `PGHOST` or `PGPASSWORD` cannot
//! point a command at the wrong server, and every command gets a deadline so that a wedged server
//! turns into an error instead of a hung test.

use std::{
    fs,
    io::{Read, Write},
    os::unix::{
        fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use super::error::{ClusterError, INSTALL_HINT};

/// Shell for [`CLOSE_FDS_AND_EXEC`]; dash cannot close descriptors above 9.
const BASH: &str = "/bin/bash";

/// Closes every descriptor but stdin, stdout and stderr, then runs `"$@"` in its place.
const CLOSE_FDS_AND_EXEC: &str = r#"for fd in /proc/$$/fd/*; do fd=${fd##*/}; case $fd in 0|1|2) ;; *) eval "exec $fd>&-" ;; esac; done; exec "$@""#;

/// An OS account, by numeric ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OsUser {
    /// User id.
    pub(crate) uid: u32,
    /// Primary group id.
    pub(crate) gid: u32,
}

/// The effective uid of this process, read from `/proc/self/status` (no `unsafe` `geteuid`).
pub(crate) fn effective_uid() -> Result<u32, ClusterError> {
    let status = fs::read_to_string("/proc/self/status").map_err(ClusterError::io(
        "reading /proc/self/status to learn the effective uid",
    ))?;
    parse_effective_uid(&status).ok_or_else(|| {
        ClusterError::Invalid("no usable `Uid:` line in /proc/self/status".to_owned())
    })
}

/// The `Uid:` line lists real, effective, saved and file-system uids, in that order.
fn parse_effective_uid(status: &str) -> Option<u32> {
    let rest = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The account PostgreSQL must run as: `None` (this process's own user) unless we are root, in
/// which case the `postgres` user.
pub(crate) fn postgres_account() -> Result<Option<OsUser>, ClusterError> {
    if effective_uid()? != 0 {
        return Ok(None);
    }
    lookup_user("postgres")
        .map(Some)
        .ok_or(ClusterError::NoPostgresUser {
            install_hint: INSTALL_HINT,
        })
}

fn lookup_user(name: &str) -> Option<OsUser> {
    if let Some(user) = fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| parse_passwd(&passwd, name))
    {
        return Some(user);
    }
    // Accounts from NSS (LDAP, sssd) are not in /etc/passwd; getent sees them.
    let out = Command::new("getent")
        .args(["passwd", name])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| parse_passwd(&String::from_utf8_lossy(&out.stdout), name))
        .flatten()
}

/// Finds `name:pw:uid:gid:...` in passwd-format text.
fn parse_passwd(text: &str, name: &str) -> Option<OsUser> {
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some(OsUser { uid, gid })
    })
}

/// Builds commands and files for one cluster: which user they belong to and where they live.
#[derive(Debug, Clone)]
pub(crate) struct Runner {
    /// The account every PostgreSQL binary runs as and every written file belongs to; `None`
    /// means this process's own user.
    user: Option<OsUser>,
    /// Working directory and `$HOME` of every command: the cluster's base directory, which the
    /// account can always enter (root's home usually is not), and which holds no `.pgpass` or
    /// `.psqlrc` of a developer.
    home: PathBuf,
}

impl Runner {
    /// A runner for commands run as `user` (or as ourselves) inside `home`.
    pub(crate) fn new(user: Option<OsUser>, home: PathBuf) -> Self {
        Runner { user, home }
    }

    /// A command for `program` with the scrubbed environment, stdin from /dev/null, and the
    /// cluster's account.
    pub(crate) fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(&key);
            }
        }
        cmd.env("LC_ALL", "C")
            .env("HOME", &self.home)
            // libpq waits forever by default; a node that accepts TCP but never answers must not
            // hang a test.
            .env("PGCONNECT_TIMEOUT", "10")
            .current_dir(&self.home)
            .stdin(Stdio::null());
        if let Some(user) = self.user {
            // std drops supplementary groups too when it changes uid as root.
            cmd.uid(user.uid).gid(user.gid);
        }
        cmd
    }

    /// Like [`command`](Self::command), for programs that leave processes behind (pg_ctl start
    /// and the guardian): they first go through bash, which closes every descriptor above
    /// stderr. Otherwise a descriptor this process inherited without close-on-exec (say, a
    /// CI runner's or an editor's pipe) would be held by the servers or the guardian, and
    /// whoever waits for that pipe's end-of-file would wait for the cluster's cleanup. Without
    /// bash, the plain command.
    pub(crate) fn long_lived_command(&self, program: &Path) -> Command {
        if !Path::new(BASH).exists() {
            return self.command(program);
        }
        let mut cmd = self.command(Path::new(BASH));
        cmd.args(["-c", CLOSE_FDS_AND_EXEC, "causeway-exec"])
            .arg(program);
        cmd
    }

    /// Hands `path` to the cluster's account (no-op when that is ourselves).
    pub(crate) fn chown(&self, path: &Path) -> Result<(), ClusterError> {
        match self.user {
            Some(user) => std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
                .map_err(ClusterError::io(format!("chown {}", path.display()))),
            None => Ok(()),
        }
    }

    /// Creates directory `path` (its parent must exist) with mode 0700, owned by the account.
    pub(crate) fn create_private_dir(&self, path: &Path) -> Result<(), ClusterError> {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(ClusterError::io(format!("creating {}", path.display())))?;
        // The umask can only take bits away, but be explicit: PostgreSQL insists on 0700/0750.
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))
            .map_err(ClusterError::io(format!("chmod 0700 {}", path.display())))?;
        self.chown(path)
    }

    /// Writes `contents` to `path` (replacing it), mode 0600, owned by the account.
    pub(crate) fn write_file(&self, path: &Path, contents: &str) -> Result<(), ClusterError> {
        let context = || format!("writing {}", path.display());
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(ClusterError::io(context()))?;
        file.write_all(contents.as_bytes())
            .map_err(ClusterError::io(context()))?;
        self.chown(path)
    }

    /// Appends `contents` to the existing file `path`.
    pub(crate) fn append_file(&self, path: &Path, contents: &str) -> Result<(), ClusterError> {
        let context = || format!("appending to {}", path.display());
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(ClusterError::io(context()))?;
        file.write_all(contents.as_bytes())
            .map_err(ClusterError::io(context()))
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub(crate) struct Captured {
    /// How it ended.
    pub(crate) status: ExitStatus,
    /// Everything it wrote to stdout (lossy UTF-8).
    pub(crate) stdout: String,
    /// Everything it wrote to stderr (lossy UTF-8).
    pub(crate) stderr: String,
}

impl Captured {
    /// `Ok(stdout)` if the command succeeded, else [`ClusterError::CommandFailed`].
    pub(crate) fn into_stdout(self, cmd: &Command) -> Result<String, ClusterError> {
        if self.status.success() {
            Ok(self.stdout)
        } else {
            Err(ClusterError::CommandFailed {
                command: describe(cmd),
                status: self.status.to_string(),
                stderr: self.stderr.trim().to_owned(),
            })
        }
    }
}

/// The command line for logs and errors (arguments joined by spaces, not re-quoted).
pub(crate) fn describe(cmd: &Command) -> String {
    let mut words: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    // Show what the fd-closing wrapper runs, not the wrapper.
    if words.len() > 4 && words[0] == BASH && words[2] == CLOSE_FDS_AND_EXEC {
        words.drain(..4);
    }
    words.join(" ")
}

/// Runs `cmd` to completion with stdout and stderr captured, killing it if it outlives `timeout`.
/// Does not judge the exit status.
pub(crate) fn run(cmd: &mut Command, timeout: Duration) -> Result<Captured, ClusterError> {
    let line = describe(cmd);
    tracing::debug!(command = %line, "running");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(ClusterError::io(format!("starting `{line}`")))?;
    // Drain both pipes on their own threads: a child that fills one pipe while we wait for it
    // would otherwise block forever.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(ClusterError::io(format!("waiting for `{line}`")))?
        {
            break status;
        }
        if started.elapsed() >= timeout {
            // Our own direct child, by handle: safe to kill.
            let _ = child.kill();
            let _ = child.wait();
            return Err(ClusterError::Timeout {
                what: format!("`{line}` to finish"),
                after: timeout,
            });
        }
        thread::sleep(pause);
        // Most commands finish in milliseconds; back off for the slow ones.
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    // A grandchild that kept our pipes open (it should not: servers log to files) must not hang
    // us; take what arrived and leave the reader thread to finish on its own.
    let collect = |rx: mpsc::Receiver<Vec<u8>>| {
        rx.recv_timeout(Duration::from_secs(2))
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    };
    let captured = Captured {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    };
    tracing::debug!(command = %line, status = %captured.status, "finished");
    Ok(captured)
}

/// Runs `cmd` and returns its stdout, or an error carrying its stderr.
pub(crate) fn run_ok(cmd: &mut Command, timeout: Duration) -> Result<String, ClusterError> {
    run(cmd, timeout)?.into_stdout(cmd)
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            let _ = tx.send(bytes);
        });
    } else {
        let _ = tx.send(Vec::new());
    }
    rx
}

/// Reserves `count` distinct free TCP ports on 127.0.0.1.
///
/// The kernel picks each port; all listeners stay bound until every port is chosen so that the
/// same port cannot come back twice. The ports are free only at that instant: another program
/// may take one before a server binds it, which the caller handles by retrying.
pub(crate) fn free_ports(count: usize) -> Result<Vec<u16>, ClusterError> {
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .map_err(ClusterError::io("binding 127.0.0.1:0 to find a free port"))?;
        listeners.push(listener);
    }
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(ClusterError::io("reading a free port"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_uid_is_the_second_uid_field() {
        let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t5\t5\t5\t5\n";
        assert_eq!(parse_effective_uid(status), Some(0));
        assert_eq!(parse_effective_uid("Name:\tx\n"), None);
    }

    #[test]
    fn passwd_lookup() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nbroken\npostgres:x:101:104:PG:/var/lib/postgresql:/bin/bash\n";
        assert_eq!(
            parse_passwd(passwd, "postgres"),
            Some(OsUser { uid: 101, gid: 104 })
        );
        assert_eq!(parse_passwd(passwd, "nobody"), None);
    }

    #[test]
    fn run_captures_and_times_out() {
        let mut ok = Command::new("/bin/sh");
        ok.args(["-c", "echo out; echo err >&2"]);
        let captured = run(&mut ok, Duration::from_secs(10)).unwrap();
        assert!(captured.status.success());
        assert_eq!(captured.stdout, "out\n");
        assert_eq!(captured.stderr, "err\n");

        let mut fail = Command::new("/bin/sh");
        fail.args(["-c", "echo boom >&2; exit 3"]);
        match run_ok(&mut fail, Duration::from_secs(10)) {
            Err(ClusterError::CommandFailed { stderr, .. }) => assert_eq!(stderr, "boom"),
            other => panic!("unexpected {other:?}"),
        }

        let mut slow = Command::new("/bin/sh");
        slow.args(["-c", "sleep 5"]);
        let started = Instant::now();
        assert!(matches!(
            run(&mut slow, Duration::from_millis(100)),
            Err(ClusterError::Timeout { .. })
        ));
        assert!(started.elapsed() < Duration::from_secs(4));
    }

    #[test]
    fn long_lived_commands_close_inherited_descriptors() {
        if !Path::new(BASH).exists() {
            return;
        }
        // A descriptor without close-on-exec, as a careless parent would pass down.
        let runner = Runner::new(None, std::env::temp_dir());
        let mut cmd = runner.long_lived_command(Path::new("/bin/sh"));
        cmd.args(["-c", "ls /proc/$$/fd"]);
        assert_eq!(describe(&cmd), "/bin/sh -c ls /proc/$$/fd");
        let mut leaky = Command::new(BASH);
        leaky
            .args(["-c", "exec 7</dev/null; exec \"$@\"", "leaky"])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        let out = run_ok(&mut leaky, Duration::from_secs(10)).unwrap();
        let mut fds: Vec<&str> = out.split_whitespace().collect();
        fds.sort_unstable();
        // ls itself opens the directory it lists, so one extra descriptor may show up.
        assert!(!fds.contains(&"7"), "{fds:?}");
        assert!(fds.starts_with(&["0", "1", "2"]), "{fds:?}");
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(4).unwrap();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 4);
    }
}
