//! TLS towards clients: `[client_tls]` loaded from PEM files into a rustls `ServerConfig`, the
//! handshake, and the TLS stream behind [`super::stream::ClientStream::Tls`].
//!
//! The stream keeps the promise [`super::stream::ClientStream::try_write`] makes: bytes it
//! reports written need no further call. rustls encrypts into its own buffer and a full socket
//! can leave records there; the relay never flushes (a TCP socket has nothing to flush), so
//! such bytes are not reported written until their records are on the socket. They are
//! remembered in `accepted`, and the next write of the same queue (the caller's queue has not
//! moved, since nothing was reported) sends the records first and then reports them.
//!
//! One crypto provider (ring), named explicitly: with two enabled in the build, rustls'
//! default builders panic.

use std::fmt;
use std::io::{self, IoSlice, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::{ClientCertMode, ClientTlsConfig, ClientTlsMode};

/// The ALPN protocol name PostgreSQL 17 clients send (required for direct TLS).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// The first byte of a TLS record carrying a handshake (a ClientHello sent without an
/// SSLRequest first: PostgreSQL 17's `sslnegotiation=direct`).
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Why `[client_tls]` cannot be loaded. Names the key and the file; never the key's bytes.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or holds nothing usable.
    #[error("client_tls.{key}: {path}: {reason}")]
    File {
        /// The config key that names the file (`cert`, `key`, `ca`).
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the certificate, the key or the CA set (a key that does not match the
    /// certificate, an unsupported key type).
    #[error("client_tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// TLS towards clients as the running proxy uses it.
pub struct ClientTls {
    /// `allow` or `require` (a `disable` config builds no `ClientTls`).
    pub mode: ClientTlsMode,
    /// What a client certificate must prove (`client_tls.client_cert`); `None` when no
    /// `client_tls.ca` is set and no certificate is asked for.
    pub client_cert: Option<ClientCertMode>,
    /// The handshake configuration (certificate, key, client verifier, ALPN).
    pub config: Arc<ServerConfig>,
    /// `tls-server-end-point` channel binding data (RFC 5929): the hash of the leaf
    /// certificate, for SCRAM-SHA-256-PLUS; `None` for a certificate signed with EdDSA, which
    /// has no hash to use (clients cannot bind to it either, so PLUS is not offered).
    pub end_point: Option<Vec<u8>>,
    /// SHA-256 over the certificates read (chain, then CA set): a reload compares it to tell
    /// whether the files under the same names changed.
    pub certs_digest: [u8; 32],
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads the files `[client_tls]` names; `None` when the mode is `disable`.
    pub fn load(client_tls: &ClientTlsConfig) -> Result<Option<ClientTls>, TlsError> {
        let (Some(cert), Some(key)) = (&client_tls.cert, &client_tls.key) else {
            // Validation requires both unless the mode is disable.
            return Ok(None);
        };
        if client_tls.mode == ClientTlsMode::Disable {
            return Ok(None);
        }
        let chain = read_certs("cert", cert)?;
        let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
            key: "key",
            path: key.clone(),
            reason: e.to_string(),
        })?;
        // Deprecated in 0.23.48 only to point at aws-lc's post-quantum key exchange; ring is
        // the provider chosen for build time (DEPENDENCIES.md: 3-8 s against 35-62 s).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let mut digest = sha2::Sha256::new();
        for c in &chain {
            digest.update(c.as_ref());
        }
        let builder = match &client_tls.ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in read_certs("ca", ca)? {
                    digest.update(c.as_ref());
                    roots.add(c)?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| TlsError::File {
                            key: "ca",
                            path: ca.clone(),
                            reason: e.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let end_point = end_point_hash(&chain[0]);
        let mut config = builder.with_single_cert(chain, private_key)?;
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(Some(ClientTls {
            mode: client_tls.mode,
            client_cert: client_tls.ca.as_ref().map(|_| client_tls.client_cert),
            config: Arc::new(config),
            end_point,
            certs_digest: digest.finalize().into(),
        }))
    }
}

/// Every certificate in a PEM file; at least one.
fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::File {
        key,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in the file".to_owned()));
    }
    Ok(certs)
}

/// RFC 5929 `tls-server-end-point`: the certificate hashed with its signature's hash function,
/// SHA-256 when that is MD5 or SHA-1 (and for anything this does not recognize: the
/// certificates in use are signed with SHA-256); `None` for EdDSA, which has no such hash.
pub fn end_point_hash(cert: &[u8]) -> Option<Vec<u8>> {
    Some(match signature_hash(cert) {
        Some(SigHash::Sha384) => sha2::Sha384::digest(cert).to_vec(),
        Some(SigHash::Sha512) => sha2::Sha512::digest(cert).to_vec(),
        Some(SigHash::None) => return None,
        None => sha2::Sha256::digest(cert).to_vec(),
    })
}

/// A signature hash that is not SHA-256.
#[derive(Debug, PartialEq, Eq)]
enum SigHash {
    Sha384,
    Sha512,
    /// Ed25519 or Ed448: the signature hashes internally, there is no hash to name.
    None,
}

/// The hash of an X.509 certificate's `signatureAlgorithm` when it is not SHA-256 (or one
/// hashed with SHA-256 for binding). Reads just enough DER: Certificate ::= SEQUENCE { tbs,
/// AlgorithmIdentifier, .. }.
fn signature_hash(cert: &[u8]) -> Option<SigHash> {
    let (_, body, _) = der_item(cert)?;
    let (_, _, rest) = der_item(body)?; // tbsCertificate
    let (_, alg, _) = der_item(rest)?; // AlgorithmIdentifier
    let (tag, oid, _) = der_item(alg)?;
    if tag != 0x06 {
        return None;
    }
    // DER bodies of the OIDs: sha{384,512}WithRSAEncryption (1.2.840.113549.1.1.12/13),
    // ecdsa-with-SHA{384,512} (1.2.840.10045.4.3.3/4).
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    // id-Ed25519 (1.3.101.112) and id-Ed448 (1.3.101.113).
    const EDDSA: &[u8] = &[0x2b, 0x65];
    match oid.split_last()? {
        (0x70 | 0x71, p) if p == EDDSA => Some(SigHash::None),
        (12, p) if p == RSA => Some(SigHash::Sha384),
        (13, p) if p == RSA => Some(SigHash::Sha512),
        (3, p) if p == ECDSA => Some(SigHash::Sha384),
        (4, p) if p == ECDSA => Some(SigHash::Sha512),
        _ => None,
    }
}

/// The subject's common name (CN) of a DER X.509 certificate, as PostgreSQL's `cert`
/// authentication and `clientcert=verify-full` read it: the first CN attribute, as text.
/// `None` when the certificate has no CN, or one that is not a string type, not valid text, or
/// holds a NUL (PostgreSQL refuses those too).
pub fn subject_common_name(cert: &[u8]) -> Option<String> {
    let (_, body, _) = der_item(cert)?;
    let (_, tbs, _) = der_item(body)?;
    // TBSCertificate: [0] version (optional), serialNumber, signature, issuer, validity,
    // subject, ...
    let mut rest = tbs;
    let (tag, _, after) = der_item(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    for _ in 0..4 {
        rest = der_item(rest)?.2;
    }
    let (tag, mut rdns, _) = der_item(rest)?;
    if tag != 0x30 {
        return None;
    }
    // Name ::= SEQUENCE OF SET OF AttributeTypeAndValue ::= SEQUENCE { OID, value }.
    const CN: &[u8] = &[0x55, 0x04, 0x03]; // 2.5.4.3
    while !rdns.is_empty() {
        let (_, mut set, next) = der_item(rdns)?;
        rdns = next;
        while !set.is_empty() {
            let (_, atv, next) = der_item(set)?;
            set = next;
            let (tag, oid, value) = der_item(atv)?;
            if tag != 0x06 || oid != CN {
                continue;
            }
            let (tag, text, _) = der_item(value)?;
            let name = match tag {
                // UTF8String, PrintableString, TeletexString (ASCII in practice), IA5String.
                0x0c | 0x13 | 0x14 | 0x16 => String::from_utf8(text.to_vec()).ok()?,
                // BMPString: UTF-16BE.
                0x1e if text.len() % 2 == 0 => {
                    let units = text.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    char::decode_utf16(units)
                        .collect::<Result<String, _>>()
                        .ok()?
                }
                _ => return None,
            };
            return (!name.contains('\0')).then_some(name);
        }
    }
    None
}

/// One DER item: its tag, its contents, and what follows it.
fn der_item(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)?;
    let (len, head) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let bytes = b.get(2..2 + n)?;
        let len = bytes.iter().fold(0usize, |a, &x| (a << 8) | usize::from(x));
        (len, 2 + n)
    };
    let end = head.checked_add(len)?;
    Some((tag, b.get(head..end)?, b.get(end..)?))
}

/// A client connection after its TLS handshake.
pub struct TlsClientStream {
    /// The TLS session over the client's socket.
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    /// Plaintext bytes taken into the TLS session whose records are not all on the socket
    /// yet; reported written once they are (see the module doc).
    accepted: usize,
}

impl fmt::Debug for TlsClientStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClientStream")
            .field("socket", self.inner.get_ref().0)
            .finish_non_exhaustive()
    }
}

/// The socket as a blocking-free [`Write`] for rustls: `WouldBlock` when it is full.
struct Sock<'a>(&'a TcpStream);

impl Write for Sock<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sends the session's pending records while the socket takes them; true when none is left.
fn send_records(tcp: &TcpStream, conn: &mut ServerConnection) -> io::Result<bool> {
    while conn.wants_write() {
        match conn.write_tls(&mut Sock(tcp)) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

impl TlsClientStream {
    /// Wraps a completed handshake.
    pub fn new(inner: tokio_rustls::server::TlsStream<TcpStream>) -> TlsClientStream {
        TlsClientStream { inner, accepted: 0 }
    }

    /// The TCP socket under the session.
    pub fn socket(&self) -> &TcpStream {
        self.inner.get_ref().0
    }

    /// The negotiated ALPN protocol, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.inner.get_ref().1.alpn_protocol()
    }

    /// The client's certificate (its leaf), when it sent one; only ever one that
    /// `client_tls.ca` verified, since the handshake fails otherwise.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        let certs = self.inner.get_ref().1.peer_certificates()?;
        certs.first().map(|c| c.as_ref())
    }

    /// [`super::stream::ClientStream::try_write`] through TLS: encrypts, and reports the bytes
    /// written only if their records went out too.
    pub fn try_write_with(
        &mut self,
        write: impl FnOnce(&mut rustls::Writer<'_>) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let (tcp, conn) = self.inner.get_mut();
        if !send_records(tcp, conn)? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if self.accepted > 0 {
            return Ok(std::mem::take(&mut self.accepted));
        }
        let n = write(&mut conn.writer())?;
        if n == 0 {
            // The session's buffer is full: the polled path waits for room.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if send_records(tcp, conn)? {
            Ok(n)
        } else {
            self.accepted = n;
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    /// A write through `write` (plain or vectored) that reports bytes only once their records
    /// are on the socket.
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(
            Pin<&mut tokio_rustls::server::TlsStream<TcpStream>>,
            &mut Context<'_>,
        ) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if self.accepted == 0 {
            let n = ready!(write(Pin::new(&mut self.inner), cx))?;
            if !self.inner.get_ref().1.wants_write() {
                return Poll::Ready(Ok(n));
            }
            self.accepted = n;
        }
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        Poll::Ready(Ok(std::mem::take(&mut self.accepted)))
    }
}

impl AsyncRead for TlsClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::stream::ClientStream;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn subject_common_name_reads_the_first_cn_and_refuses_what_pg_refuses() {
        use rcgen::{CertificateParams, DnType, DnValue, KeyPair};
        let cert = |dn: &[(DnType, DnValue)]| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name = rcgen::DistinguishedName::new();
            for (t, v) in dn {
                p.distinguished_name.push(t.clone(), v.clone());
            }
            p.self_signed(&KeyPair::generate().unwrap())
                .unwrap()
                .der()
                .to_vec()
        };
        let utf8 = |s: &str| DnValue::Utf8String(s.to_owned());
        let c = cert(&[
            (DnType::OrganizationName, utf8("Acme")),
            (DnType::CommonName, utf8("app")),
        ]);
        assert_eq!(subject_common_name(&c).as_deref(), Some("app"));
        let c = cert(&[(
            DnType::CommonName,
            DnValue::PrintableString("report".try_into().unwrap()),
        )]);
        assert_eq!(subject_common_name(&c).as_deref(), Some("report"));
        let c = cert(&[(DnType::CommonName, utf8("név"))]);
        assert_eq!(subject_common_name(&c).as_deref(), Some("név"));
        assert_eq!(
            subject_common_name(&cert(&[(DnType::OrganizationName, utf8("Acme"))])),
            None
        );
        assert_eq!(
            subject_common_name(&cert(&[(DnType::CommonName, utf8("a\0b"))])),
            None
        );
        assert_eq!(subject_common_name(b"\x30\x03\x02\x01"), None);
    }

    /// A server and a client configuration over a fresh CA and a `localhost` leaf.
    fn configs() -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// What the relay relies on: bytes `try_write` reports written reach the client with no
    /// further call on the stream, even when the socket fills up and rustls still holds
    /// records; the bytes it took but could not send are reported by the next write of the
    /// same queue, once they are out.
    #[tokio::test]
    async fn reported_writes_need_no_flush_and_held_records_are_reported_later() {
        let (server_config, client_config) = configs();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap());
        let (tcp, accepted) = tokio::join!(tcp, listener.accept());
        let mut stream = ClientStream::from(accepted.unwrap().0);
        let connector = tokio_rustls::TlsConnector::from(client_config);
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let (client, started) = tokio::join!(
            connector.connect(name, tcp.unwrap()),
            stream.start_tls(server_config)
        );
        started.unwrap();
        let mut client = client.unwrap();
        assert!(stream.is_tls());

        // Fill the socket: the client is not reading.
        let chunk = vec![7u8; 16 * 1024];
        let mut reported = 0usize;
        loop {
            match stream.try_write(&chunk) {
                Ok(n) => reported += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(reported > 0);
        // Everything reported arrives while the proxy's side does nothing at all.
        let mut got = vec![0u8; reported];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_exact(&mut got),
        )
        .await
        .expect("reported bytes arrive without a flush")
        .unwrap();
        // The same queue again (the caller's queue did not move): whatever the last call took
        // in is reported now, and follows.
        let more = tokio::time::timeout(std::time::Duration::from_secs(5), stream.write(&chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(more > 0 && more <= chunk.len());
        let mut got = vec![0u8; more];
        client.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|&b| b == 7));
        // And the other way.
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
    }

    #[test]
    fn der_items_are_read_with_short_and_long_lengths() {
        assert_eq!(
            der_item(&[0x30, 0x01, 0xaa, 0xbb]),
            Some((0x30, &[0xaa][..], &[0xbb][..]))
        );
        let mut long = vec![0x04, 0x81, 0x80];
        long.extend([7u8; 128]);
        let (tag, body, rest) = der_item(&long).unwrap();
        assert_eq!((tag, body.len(), rest.len()), (0x04, 128, 0));
        assert_eq!(der_item(&[0x30, 0x05, 0x00]), None, "length past the end");
        assert_eq!(
            der_item(&[0x30, 0x85, 1, 1, 1, 1, 1]),
            None,
            "5-byte length"
        );
    }

    #[test]
    fn sha384_signatures_are_recognized_and_anything_else_hashes_with_sha256() {
        // SEQUENCE { SEQUENCE {} (tbs), SEQUENCE { OID ecdsa-with-SHA384 } }
        let oid = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
        let mut alg = vec![0x30, oid.len() as u8];
        alg.extend(oid);
        let mut body = vec![0x30, 0x00];
        body.extend(&alg);
        let mut cert = vec![0x30, body.len() as u8];
        cert.extend(&body);
        assert_eq!(signature_hash(&cert), Some(SigHash::Sha384));
        assert_eq!(end_point_hash(&cert).map(|h| h.len()), Some(48));
        assert_eq!(
            end_point_hash(b"not a certificate").map(|h| h.len()),
            Some(32)
        );
    }
}
