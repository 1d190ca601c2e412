//! TLS termination in the proxy ([`ProxyTls`]): a certificate of the user's (PEM files), or
//! one issued for `localhost` by a local certificate authority kept in a directory
//! ([`LocalCa`]), as Caddy and mkcert do; clients trust the CA's `ca.pem` once.
//!
//! ```
//! # fn main() -> deploykit_core::Result<()> {
//! use deploykit_local::proxy::{LocalCa, ProxyTls};
//! let dir = tempfile::tempdir().unwrap();
//! let ca = LocalCa::open_or_create(dir.path())?;
//! let tls = ProxyTls::issued_by(&ca, &["web.localhost".into()])?; // and localhost, 127.0.0.1, ::1
//! assert!(dir.path().join("ca.pem").exists());
//! # let _ = tls; Ok(()) }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use deploykit_core::{Error, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What the proxy presents to clients: a certificate chain and its key, as a rustls server
/// configuration (HTTP/1.1 over TLS 1.2 and 1.3).
#[derive(Clone)]
pub struct ProxyTls {
    pub(crate) config: Arc<rustls::ServerConfig>,
    /// What a client trusts to reach this proxy (PEM), when known.
    trust: Option<Arc<str>>,
}

impl fmt::Debug for ProxyTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProxyTls { .. }")
    }
}

impl ProxyTls {
    /// The certificate chain in `cert` (PEM, leaf first) and the private key in `key` (PEM).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .and_then(|iter| iter.collect())
            .map_err(|e| pem_error(cert, "certificates", &e))?;
        if certs.is_empty() {
            return Err(Error::invalid(
                cert.display().to_string(),
                "holds no PEM certificate",
            ));
        }
        let key =
            PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, "a private key", &e))?;
        // The chain's last certificate: its issuer's end, which a client can trust.
        let text =
            std::fs::read_to_string(cert).map_err(|e| pem_error(cert, "certificates", &e))?;
        let trust = text.rfind("-----BEGIN CERTIFICATE-----").and_then(|start| {
            let end = start + text[start..].find("-----END CERTIFICATE-----")?;
            Some(format!("{}-----END CERTIFICATE-----\n", &text[start..end]))
        });
        Ok(Self::new(certs, key)?.trusted_as(trust))
    }

    /// A certificate for `localhost`, `127.0.0.1`, `::1` and each of `hosts` (e.g.
    /// `web.localhost`: clients refuse a wildcard directly under `localhost`, so every host is
    /// named), issued now by `ca`.
    pub fn issued_by(ca: &LocalCa, hosts: &[String]) -> Result<Self> {
        let mut names: Vec<&str> = vec!["localhost", "127.0.0.1", "::1"];
        names.extend(hosts.iter().map(String::as_str));
        let (cert, key) = ca.issue(&names)?;
        let trust = std::fs::read_to_string(ca.cert_path()).map_err(|e| {
            Error::backend(format!("read {}", ca.cert_path().display()), e.to_string())
        })?;
        Ok(Self::new(vec![cert], key)?.trusted_as(Some(trust)))
    }

    fn trusted_as(mut self, trust: Option<String>) -> Self {
        self.trust = trust.map(Into::into);
        self
    }

    /// The certificate (PEM) a client trusts to reach this proxy: the local CA's, or the last
    /// certificate of the user's chain (its CA's end). Another environment's proxy forwarding
    /// here after a failover trusts it ([`UpstreamTls::trusting`]).
    pub fn trust_pem(&self) -> Option<&str> {
        self.trust.as_deref()
    }

    fn new(certs: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::invalid("tls", e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                Error::invalid(
                    "tls",
                    format!("the certificate and key do not make a server identity: {e}"),
                )
            })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ProxyTls {
            config: Arc::new(config),
            trust: None,
        })
    }

    /// A TLS acceptor for the proxy's connections.
    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }
}

/// TLS to an upstream (another environment's proxy that serves TLS): the certificates it is
/// trusted by, as a rustls client configuration. Its address is its name: the local CA's
/// certificates name `127.0.0.1` and `::1`.
#[derive(Clone)]
pub struct UpstreamTls {
    trust: Arc<str>,
    pub(crate) config: Arc<rustls::ClientConfig>,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.trust == other.trust
    }
}

impl Eq for UpstreamTls {}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UpstreamTls { .. }")
    }
}

impl UpstreamTls {
    /// Trust the certificates in `pem` (and nothing else).
    pub fn trusting(pem: &str) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| {
                Error::invalid("forward.trust", format!("is not PEM certificates: {e}"))
            })?;
            roots.add(cert).map_err(|e| {
                Error::invalid("forward.trust", format!("holds a bad certificate: {e}"))
            })?;
        }
        if roots.is_empty() {
            return Err(Error::invalid("forward.trust", "holds no PEM certificate"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // No ALPN here: the connector offers http/1.1 itself.
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::invalid("forward.trust", e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(UpstreamTls {
            trust: pem.into(),
            config: Arc::new(config),
        })
    }

    /// The trusted certificates, as given.
    pub fn trust_pem(&self) -> &str {
        &self.trust
    }
}

fn pem_error(path: &Path, what: &str, e: &dyn fmt::Display) -> Error {
    Error::invalid(
        path.display().to_string(),
        format!("cannot read {what} from it as PEM: {e}"),
    )
}

/// A certificate authority for this machine, in a directory: `ca.pem` (the certificate to
/// trust) and `ca-key.pem` (its key, owner-only). Created on first use, reused after.
pub struct LocalCa {
    dir: PathBuf,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCa")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The CA's subject: the same each time it is rebuilt from its key, so certificates it issues
/// name the issuer that `ca.pem` is.
fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
    params
        .distinguished_name
        .push(DnType::OrganizationName, "deploykit");
    params
        .distinguished_name
        .push(DnType::CommonName, "deploykit local CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn rcgen_error(e: rcgen::Error) -> Error {
    Error::backend("make a certificate", e.to_string())
}

impl LocalCa {
    /// The CA in `dir`, made there (with the directory) if it has none.
    pub fn open_or_create(dir: &Path) -> Result<Self> {
        let io = |what: &str, path: &Path, e: std::io::Error| {
            Error::backend(format!("{what} {}", path.display()), e.to_string())
        };
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca-key.pem");
        let key = if key_path.exists() {
            let pem = std::fs::read_to_string(&key_path).map_err(|e| io("read", &key_path, e))?;
            KeyPair::from_pem(&pem).map_err(|e| {
                Error::invalid(
                    key_path.display().to_string(),
                    format!("is not a private key in PEM: {e}"),
                )
            })?
        } else {
            std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
            let key = KeyPair::generate().map_err(rcgen_error)?;
            write_private(&key_path, key.serialize_pem().as_bytes())
                .map_err(|e| io("write", &key_path, e))?;
            key
        };
        let cert = ca_params()?.self_signed(&key).map_err(rcgen_error)?;
        if !cert_path.exists() {
            std::fs::write(&cert_path, cert.pem()).map_err(|e| io("write", &cert_path, e))?;
        }
        Ok(LocalCa {
            dir: dir.to_path_buf(),
            cert,
            key,
        })
    }

    /// Where clients find the certificate to trust.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A leaf certificate for `names` (host names or IP addresses) and its key.
    fn issue(&self, names: &[&str]) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_string()).collect::<Vec<_>>())
                .map_err(rcgen_error)?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("localhost"),
        );
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(rcgen_error)?;
        let key = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| Error::backend("make a certificate", e.to_string()))?;
        Ok((cert.der().clone(), key))
    }
}

/// Write `data` to `path`, readable by its owner only.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(data)
}
