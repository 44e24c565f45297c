//! TLS served by the gateway itself, for a single node without a proxy in
//! front: the certificate chain and key of `tls_cert_file` and
//! `tls_key_file`, loaded once at start into a rustls acceptor (ring
//! provider, TLS 1.2 and 1.3, ALPN `http/1.1` only).
//!
//! The handshake itself runs per connection in `server.rs`, after any PROXY
//! header and within the first-request deadline.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Why the TLS files cannot be used; each names the file at fault, since
/// the operator has to go and fix that file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// The certificate file cannot be read or holds no PEM certificate.
    #[error("tls_cert_file {path}: {reason}")]
    Cert {
        /// The file as configured.
        path: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The key file cannot be read or holds no PEM private key.
    #[error("tls_key_file {path}: {reason}")]
    Key {
        /// The file as configured.
        path: String,
        /// What was wrong with it.
        reason: String,
    },
    /// One of the two is set without the other.
    #[error("{missing} must be set when {given} is")]
    Half {
        /// The empty setting.
        missing: &'static str,
        /// The one that is set.
        given: &'static str,
    },
    /// The files parse, but rustls refuses them together (the key does not
    /// match the certificate, say).
    #[error("tls_cert_file {cert} with tls_key_file {key}: {reason}")]
    Pair {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// What rustls said.
        reason: String,
    },
}

/// The acceptor for `cert_file` and `key_file`, or `None` when both are
/// empty (plain TCP). Settings validation already refuses one without the
/// other; `Settings` built in code skip that, so it is refused here too
/// rather than guessed to mean plain TCP.
pub(crate) fn acceptor(cert_file: &str, key_file: &str) -> Result<Option<TlsAcceptor>, TlsError> {
    match (cert_file.is_empty(), key_file.is_empty()) {
        (true, true) => return Ok(None),
        (true, false) => {
            return Err(TlsError::Half {
                missing: "tls_cert_file",
                given: "tls_key_file",
            })
        }
        (false, true) => {
            return Err(TlsError::Half {
                missing: "tls_key_file",
                given: "tls_cert_file",
            })
        }
        (false, false) => {}
    }
    let cert_err = |reason: String| TlsError::Cert {
        path: cert_file.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no PEM certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsError::Key {
        path: key_file.to_owned(),
        reason: e.to_string(),
    })?;
    let pair_err = |e: rustls::Error| TlsError::Pair {
        cert: cert_file.to_owned(),
        key: key_file.to_owned(),
        reason: e.to_string(),
    };
    // The ring provider explicitly: the build has no aws-lc-rs, and no
    // process-wide default provider is installed.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(pair_err)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(pair_err)?;
    // hyper here speaks HTTP/1.1 only, and WebSocket upgrades need it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_files_mean_plain_tcp() {
        assert!(matches!(acceptor("", ""), Ok(None)));
    }

    #[test]
    fn half_a_setup_names_the_missing_key() {
        let err = acceptor("cert.pem", "").err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("tls_key_file must be set when tls_cert_file is")
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = acceptor("/nonexistent/cert.pem", "/nonexistent/key.pem")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.starts_with("tls_cert_file /nonexistent/cert.pem"),
            "{err}"
        );
    }
}
