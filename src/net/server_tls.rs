//! TLS towards PostgreSQL servers: `[server_tls]` turned into a rustls `ClientConfig` whose
//! certificate check matches the mode (libpq's `sslmode` meanings), and the one place the
//! tokio-postgres monitoring connections (topology watcher, catalog loader) get the same
//! settings.
//!
//! `require` encrypts without checking who answers (as libpq's `require` does without a root
//! certificate); `verify-ca` checks the chain against `server_tls.ca` but not the name;
//! `verify-full` checks both, the name being the node's host as written in `[[nodes]]` (sent
//! as SNI when it is a name, matched against an IP SAN when it is an address).
//!
//! A `[[nodes]]` entry may override the mode and the CA, and name the host its certificate
//! carries (`tls_mode`, `tls_ca`, `tls_server_name`); [`ServerTls::for_node`] is where a
//! node's settings are resolved, for every kind of connection.
//!
//! One crypto provider (ring), named explicitly, as on the client side ([`super::tls`]).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::Digest;
use tokio_postgres::config::SslMode;
use tokio_postgres::NoTls;

use crate::config::{NodeConfig, ServerTlsConfig, ServerTlsMode};

/// Why `[server_tls]` cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    /// The CA file cannot be read or holds no certificate.
    #[error("server_tls.ca: {path}: {reason}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the CA set or the configuration.
    #[error("server_tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// TLS towards servers as the running proxy uses it (one per settings generation, shared by
/// every connect target, the watcher and the catalog loader).
pub struct ServerTls {
    /// The configured mode.
    pub mode: ServerTlsMode,
    /// The handshake configuration; `None` when the mode is `disable`.
    pub config: Option<Arc<ClientConfig>>,
    /// `server_tls.allow_cleartext_without_tls`.
    pub allow_cleartext_without_tls: bool,
    /// SHA-256 over the CA certificates read (`verify-ca`, `verify-full`): a reload compares
    /// it to tell whether the file under the same name changed.
    pub ca_digest: Option<[u8; 32]>,
    /// The name certificates are checked against (and sent as SNI) instead of the node's host
    /// (a node's `tls_server_name`); `None` in the global settings.
    pub server_name: Option<String>,
    /// Nodes with overrides in `[[nodes]]` (`tls_mode`, `tls_ca`, `tls_server_name`), by
    /// host and port, with their own settings; every other node uses these.
    pub nodes: Vec<((String, u16), Arc<ServerTls>)>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .field(
                "allow_cleartext_without_tls",
                &self.allow_cleartext_without_tls,
            )
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// No TLS and no cleartext passwords over plaintext (unit tests, fake servers).
    pub fn disabled() -> ServerTls {
        ServerTls {
            mode: ServerTlsMode::Disable,
            config: None,
            allow_cleartext_without_tls: false,
            ca_digest: None,
            server_name: None,
            nodes: Vec::new(),
        }
    }

    /// The settings for the node at `host`:`port`: its own when `[[nodes]]` overrides
    /// `[server_tls]` for it, else these. The one place a node's TLS settings are resolved
    /// (pools through `ConnectTarget`, the watcher, the catalog loader and `auth_query`
    /// through [`ServerTls::connect_monitor`]).
    pub fn for_node(&self, host: &str, port: u16) -> &ServerTls {
        self.nodes
            .iter()
            .find(|((h, p), _)| *p == port && h.eq_ignore_ascii_case(host))
            .map_or(self, |(_, tls)| tls)
    }

    /// Builds `[server_tls]` and the overrides of the `nodes` that have some, reading the CA
    /// files. The CA digest covers every CA file read, so a reload sees a change in any.
    pub fn load(
        server_tls: &ServerTlsConfig,
        nodes: &[NodeConfig],
    ) -> Result<ServerTls, ServerTlsError> {
        let mut global = ServerTls::load_one(server_tls)?;
        let mut digest = sha2::Sha256::new();
        let mut any_ca = global.ca_digest.is_some();
        digest.update(global.ca_digest.unwrap_or_default());
        for node in nodes.iter().filter(|n| n.tls.is_set()) {
            let config = ServerTlsConfig {
                mode: node.tls.mode.unwrap_or(server_tls.mode),
                ca: node.tls.ca.clone().or_else(|| server_tls.ca.clone()),
                allow_cleartext_without_tls: server_tls.allow_cleartext_without_tls,
            };
            let mut tls = ServerTls::load_one(&config)?;
            if let Some(name) = &node.tls.server_name {
                ServerTls::server_name(name).map_err(|reason| ServerTlsError::Ca {
                    path: PathBuf::from(node.address()),
                    reason: format!("tls_server_name: {reason}"),
                })?;
                tls.server_name = Some(name.clone());
            }
            any_ca |= tls.ca_digest.is_some();
            digest.update(node.address().as_bytes());
            digest.update(tls.ca_digest.unwrap_or_default());
            global
                .nodes
                .push(((node.host.clone(), node.port), Arc::new(tls)));
        }
        if any_ca {
            global.ca_digest = Some(digest.finalize().into());
        }
        Ok(global)
    }

    /// Builds the handshake configuration one set of settings describes, reading its CA file.
    fn load_one(server_tls: &ServerTlsConfig) -> Result<ServerTls, ServerTlsError> {
        let mode = server_tls.mode;
        let allow_cleartext_without_tls = server_tls.allow_cleartext_without_tls;
        if mode == ServerTlsMode::Disable {
            return Ok(ServerTls {
                allow_cleartext_without_tls,
                ..ServerTls::disabled()
            });
        }
        // Deprecated in 0.23.48 only to point at aws-lc (see `super::tls`).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let mut ca_digest = None;
        let verifier: Arc<dyn ServerCertVerifier> = match (mode, &server_tls.ca) {
            (ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull, Some(ca)) => {
                let (roots, digest) = read_roots(ca)?;
                ca_digest = Some(digest);
                let roots = Arc::new(roots);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                if mode == ServerTlsMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(AnyName(webpki))
                }
            }
            (ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull, None) => {
                // Validation requires `ca` for these modes; refuse rather than weaken.
                return Err(ServerTlsError::Ca {
                    path: PathBuf::new(),
                    reason: format!("server_tls.mode = \"{}\" needs a CA", mode.as_str()),
                });
            }
            // `prefer` and `require` check no certificate, so the CA is not read.
            _ => Arc::new(NoCheck(provider)),
        };
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(ServerTls {
            mode,
            config: Some(Arc::new(config)),
            allow_cleartext_without_tls,
            ca_digest,
            server_name: None,
            nodes: Vec::new(),
        })
    }

    /// The server name a handshake with `host` verifies (and sends as SNI when it is a name).
    pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
        ServerName::try_from(host.to_owned())
            .map_err(|e| format!("{host:?} cannot be used as a TLS server name: {e}"))
    }

    /// Connects a tokio-postgres client (topology watcher, catalog loader, `auth_query`) with
    /// the settings of the node `cfg` names (its first host and port; see
    /// [`ServerTls::for_node`]) and spawns its connection task.
    pub async fn connect_monitor(
        &self,
        cfg: &mut tokio_postgres::Config,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => String::new(),
        };
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        let this = self.for_node(&host, port);
        let Some(config) = &this.config else {
            cfg.ssl_mode(SslMode::Disable);
            let (client, conn) = cfg.connect(NoTls).await?;
            return Ok((client, tokio::spawn(async move { drop(conn.await) })));
        };
        cfg.ssl_mode(if this.mode == ServerTlsMode::Prefer {
            SslMode::Prefer
        } else {
            SslMode::Require
        });
        let tls = Named {
            inner: tokio_postgres_rustls::MakeRustlsConnect::new(ClientConfig::clone(config)),
            name: this.server_name.clone(),
        };
        let (client, conn) = cfg.connect(tls).await?;
        Ok((client, tokio::spawn(async move { drop(conn.await) })))
    }
}

/// tokio-postgres' TLS maker with a node's `tls_server_name` in place of the host it connects
/// to (the name checked by `verify-full` and sent as SNI).
struct Named {
    /// The maker.
    inner: tokio_postgres_rustls::MakeRustlsConnect,
    /// The name to use instead of the host, if any.
    name: Option<String>,
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for Named
where
    tokio_postgres_rustls::MakeRustlsConnect: tokio_postgres::tls::MakeTlsConnect<S>,
{
    type Stream = <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<S>>::Stream;
    type TlsConnect = <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<S>>::TlsConnect;
    type Error =
        <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<S>>::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Self::TlsConnect, Self::Error> {
        let domain = self.name.as_deref().unwrap_or(domain);
        tokio_postgres::tls::MakeTlsConnect::<S>::make_tls_connect(&mut self.inner, domain)
    }
}

/// Every certificate in the CA file, as trust anchors, and the SHA-256 of their DER.
fn read_roots(path: &std::path::Path) -> Result<(RootCertStore, [u8; 32]), ServerTlsError> {
    let err = |reason: String| ServerTlsError::Ca {
        path: path.to_owned(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    let mut digest = sha2::Sha256::new();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
        let cert = cert.map_err(|e| err(e.to_string()))?;
        digest.update(cert.as_ref());
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(err("no PEM certificate in the file".to_owned()));
    }
    Ok((roots, digest.finalize().into()))
}

/// `verify-ca`: the full WebPKI check, except that a certificate for another name passes.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            // The name is checked after the chain, so this error means the chain is good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require`: any certificate (encryption against passive listeners only). The
/// handshake signature is still checked, so the peer holds the key of the certificate it sent.
#[derive(Debug)]
struct NoCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
