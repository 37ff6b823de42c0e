//! HTTPS: the certificate and key of `--tls-cert`/`--tls-key`, offered with ALPN `h2` and
//! `http/1.1`, and read again on `SIGHUP` without touching the connections already open.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;

/// Why the certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Only one of `--tls-cert` and `--tls-key` was given.
    #[error("--tls-cert and --tls-key go together: give both or neither")]
    Unpaired,
    /// A file could not be read or holds no PEM item of the kind expected.
    #[error("cannot read the {what} {path:?}: {reason}")]
    File {
        /// "certificate" or "private key".
        what: &'static str,
        /// The file named.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the pair (a key that does not match the certificate, say).
    #[error("cannot use the certificate and key: {0}")]
    Refused(#[from] rustls::Error),
}

/// The server's TLS settings, replaced whole on reload: a handshake uses the settings current
/// when it starts.
#[derive(Debug)]
pub(crate) struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// The settings from `config`: `None` without `--tls-cert`/`--tls-key`.
    pub(crate) fn from_config(config: &Config) -> Result<Option<Tls>, TlsError> {
        match (&config.tls_cert, &config.tls_key) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => {
                let current = RwLock::new(Arc::new(load(cert, key)?));
                Ok(Some(Tls { cert: cert.clone(), key: key.clone(), current }))
            }
            _ => Err(TlsError::Unpaired),
        }
    }

    /// An acceptor with the current settings.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Reads the certificate and key again; on failure the old ones stay in use.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(load(&self.cert, &self.key)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

/// Reads a PEM certificate chain and private key into settings offering `h2` and `http/1.1`.
fn load(cert: &Path, key: &Path) -> Result<ServerConfig, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|items| items.collect::<Result<_, _>>())
        .map_err(|e| TlsError::File { what: "certificate", path: cert.to_owned(), reason: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::File {
            what: "certificate",
            path: cert.to_owned(),
            reason: "it holds no PEM certificate".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
        what: "private key",
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Reloads `tls` on each `SIGHUP` until dropped (the server aborts it when it stops). A failed
/// reload is logged and keeps the old certificate.
pub(crate) async fn reload_on_hangup(tls: Arc<Tls>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP: the certificate will not be reloaded");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            match tls.reload() {
                Ok(()) => tracing::info!(cert = ?tls.cert, "certificate reloaded"),
                Err(e) => tracing::error!(error = %e, "certificate not reloaded: the old one stays in use"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tls;
}
