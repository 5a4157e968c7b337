//! Finding the machine's PostgreSQL server binaries.
//!
//! Debian splits them: `/usr/bin` holds only `pg_wrapper` links for client tools (psql,
//! pg_basebackup) and no `initdb`, while the real binaries live in `/usr/lib/postgresql/<major>/bin`.
//! So a directory counts only if it holds `initdb`, `pg_ctl` and `pg_basebackup` together, and
//! every binary is then taken from that one directory, so that all of them are of one version.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use super::{
    error::{ClusterError, INSTALL_HINT},
    process,
};

/// Binaries a directory must hold to be chosen.
const REQUIRED: [&str; 3] = ["initdb", "pg_ctl", "pg_basebackup"];

/// A directory of PostgreSQL server binaries of one major version.
///
/// Invariant: `bindir` held executable `initdb`, `pg_ctl` and `pg_basebackup` when this was
/// built, and `version` is the major version `pg_ctl --version` reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    /// The directory holding the binaries.
    bindir: PathBuf,
    /// Major version, e.g. 15.
    version: u32,
}

impl PgBinaries {
    /// Finds the first directory holding `initdb`, `pg_ctl` and `pg_basebackup` among, in order:
    /// the `PATH` entries, `pg_config --bindir`, and `/usr/lib/postgresql/*/bin` (highest version
    /// first).
    ///
    /// # Errors
    /// [`ClusterError::BinariesMissing`] naming the package to install when none qualifies.
    pub fn discover() -> Result<Self, ClusterError> {
        let found = candidates().into_iter().find(|dir| has_required(dir));
        match found {
            Some(dir) => Self::from_dir(dir),
            None => Err(ClusterError::BinariesMissing {
                detail: format!(
                    "no directory holds {} together; searched PATH, `pg_config --bindir` and \
                     /usr/lib/postgresql/*/bin",
                    REQUIRED.join(", ")
                ),
                install_hint: INSTALL_HINT,
            }),
        }
    }

    /// Uses the binaries in `dir`, checking that the required ones are there and reading their
    /// version.
    ///
    /// # Errors
    /// [`ClusterError::BinariesMissing`] if a required binary is missing or `pg_ctl --version`
    /// cannot be understood.
    pub fn from_dir(dir: impl Into<PathBuf>) -> Result<Self, ClusterError> {
        let bindir = dir.into();
        if !has_required(&bindir) {
            return Err(ClusterError::BinariesMissing {
                detail: format!(
                    "{} does not hold all of {}",
                    bindir.display(),
                    REQUIRED.join(", ")
                ),
                install_hint: INSTALL_HINT,
            });
        }
        // `--version` is answered before pg_ctl's refusal to run as root, so no account switch.
        let mut cmd = Command::new(bindir.join("pg_ctl"));
        cmd.arg("--version").stdin(Stdio::null());
        let text = process::run_ok(&mut cmd, Duration::from_secs(30))?;
        let version = parse_major(&text).ok_or_else(|| ClusterError::BinariesMissing {
            detail: format!("cannot read a version from `pg_ctl --version`: {text:?}"),
            install_hint: INSTALL_HINT,
        })?;
        Ok(PgBinaries { bindir, version })
    }

    /// The directory holding the binaries.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The major version (e.g. 15).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The path of binary `name` (`psql`, `pgbench`, `pg_rewind`, ...) in [`bindir`](Self::bindir).
    /// Not checked: the client tools ship in the same package on every distribution we know.
    pub fn path(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
}

/// Candidate directories in search order, without duplicates.
fn candidates() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    let mut pg_config = Command::new("pg_config");
    pg_config.arg("--bindir").stdin(Stdio::null());
    if let Ok(out) = process::run_ok(&mut pg_config, Duration::from_secs(10)) {
        let dir = out.trim();
        if !dir.is_empty() {
            dirs.push(PathBuf::from(dir));
        }
    }
    dirs.extend(versioned_dirs(Path::new("/usr/lib/postgresql")));
    let mut seen = Vec::new();
    dirs.retain(|d| {
        let new = !seen.contains(d);
        seen.push(d.clone());
        new
    });
    dirs
}

/// `<root>/<version>/bin`, highest version first (`15` before `9.6`).
fn versioned_dirs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(root) else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let key = name
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((key, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

fn has_required(dir: &Path) -> bool {
    REQUIRED.iter().all(|name| is_executable(&dir.join(name)))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The major version from `pg_ctl (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` (→ 15), or from
/// a pre-10 `9.6.24` (→ 9).
fn parse_major(text: &str) -> Option<u32> {
    let after = text.split_once("(PostgreSQL)")?.1.trim_start();
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn major_version() {
        assert_eq!(
            parse_major("pg_ctl (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(15)
        );
        assert_eq!(parse_major("pg_ctl (PostgreSQL) 17beta1"), Some(17));
        assert_eq!(parse_major("pg_ctl (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(parse_major("something else"), None);
    }

    #[test]
    fn missing_binaries_say_what_to_install() {
        let err = PgBinaries::from_dir("/nonexistent/causeway").unwrap_err();
        assert!(matches!(err, ClusterError::BinariesMissing { .. }));
        assert!(
            err.to_string().contains("apt-get install -y postgresql"),
            "{err}"
        );
    }

    #[test]
    fn versioned_dirs_sort_highest_first() {
        let root = std::env::temp_dir().join(format!("causeway-bin-test-{}", std::process::id()));
        for v in ["9.6", "15", "12", "notaversion"] {
            fs::create_dir_all(root.join(v).join("bin")).unwrap();
        }
        let dirs = versioned_dirs(&root);
        let names: Vec<_> = dirs
            .iter()
            .map(|d| d.parent().unwrap().file_name().unwrap().to_str().unwrap())
            .collect();
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(names, ["15", "12", "9.6"]);
    }
}
