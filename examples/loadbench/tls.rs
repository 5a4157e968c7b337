//! The certificate the TLS rows use: one self-signed ECDSA P-256 certificate for `localhost`
//! and 127.0.0.1 (rcgen), shared by causeway's `[client_tls]` and PgBouncer's
//! `client_tls_*_file`, so both proxies do the same handshake work.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{CertificateParams, DnType, KeyPair};

use crate::proxies::OsUser;

/// Where the certificate and its key are.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes `server.crt` (mode 0644) and `server.key` (mode 0600, owned by `owner` so PgBouncer,
/// which runs as `postgres`, can read it; causeway runs as root or as the same user) in `dir`.
pub fn write_self_signed(dir: &Path, owner: Option<OsUser>) -> Result<CertFiles, String> {
    let err = |e: &dyn std::fmt::Display| format!("making the TLS certificate: {e}");
    let key = KeyPair::generate().map_err(|e| err(&e))?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .map_err(|e| err(&e))?;
    params
        .distinguished_name
        .push(DnType::CommonName, "causeway loadbench");
    let cert = params.self_signed(&key).map_err(|e| err(&e))?;
    let files = CertFiles {
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    };
    fs::write(&files.cert, cert.pem()).map_err(|e| err(&e))?;
    fs::set_permissions(&files.cert, fs::Permissions::from_mode(0o644)).map_err(|e| err(&e))?;
    fs::write(&files.key, key.serialize_pem()).map_err(|e| err(&e))?;
    fs::set_permissions(&files.key, fs::Permissions::from_mode(0o600)).map_err(|e| err(&e))?;
    if let Some(u) = owner {
        std::os::unix::fs::chown(&files.key, Some(u.uid), Some(u.gid)).map_err(|e| err(&e))?;
    }
    Ok(files)
}
