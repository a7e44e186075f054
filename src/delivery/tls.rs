//! TLS: the root certificates (webpki roots, plus `--ca-file` certificates) and the rustls
//! client configuration every attempt uses.

use std::sync::Arc;

/// Which certificate authorities deliveries trust (issue 5, item 2). The webpki roots
/// (Mozilla's list, compiled in) always; the operating system's store and an operator's
/// PEM file on request. There is deliberately no way to skip verification.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// A PEM file with one or more CA certificates (an internal CA), `--extra-ca-file`.
    pub extra_ca_file: Option<std::path::PathBuf>,
    /// Whether the OS store (as `rustls-native-certs` finds it) is trusted too.
    pub system_roots: bool,
}

/// Why the delivery client's TLS roots could not be set up (the daemon does not start).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The extra CA file could not be read or holds no usable certificate.
    #[error("extra CA file {path}: {reason}")]
    ExtraCaFile {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// `tls_system_roots` is on but the OS store yielded no certificate.
    #[error("the system CA store has no usable certificate: {0}")]
    SystemRoots(String),
    /// rustls refused the protocol versions (cannot happen with the ring provider).
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the rustls client configuration for `settings`: its roots, TLS 1.2 and 1.3 with
/// the ring provider. ALPN (h2, http/1.1) is added by the connector.
///
/// # Errors
/// [`TlsSetupError`] for an unreadable or empty CA file, or an empty system store.
pub fn tls_config(settings: &TlsSettings) -> Result<rustls::ClientConfig, TlsSetupError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if settings.system_roots {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
            return Err(TlsSetupError::SystemRoots(errors.join("; ")));
        }
        tracing::info!(
            certificates = added,
            "trusting the system CA store for deliveries"
        );
    }
    if let Some(path) = &settings.extra_ca_file {
        let err = |reason: String| TlsSetupError::ExtraCaFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        // A private key has no business in a trust file (and may be the receiver's own).
        if text
            .windows(b"PRIVATE KEY-----".len())
            .any(|w| w == b"PRIVATE KEY-----")
        {
            return Err(err(
                "it holds a private key: give only the CA's certificate".to_owned(),
            ));
        }
        let certs = CertificateDer::pem_slice_iter(&text)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| err("malformed PEM (a section is cut short or not base64)".to_owned()))?;
        if certs.is_empty() {
            return Err(err("no PEM certificate in it".to_owned()));
        }
        for (n, cert) in certs.into_iter().enumerate() {
            // webpki takes any certificate as a trust anchor; a leaf (CA:FALSE) put there would
            // let its key vouch for every host name, so only CA certificates are accepted.
            if !is_ca_certificate(&cert) {
                return Err(err(format!(
                    "certificate {} is not a CA certificate (basicConstraints CA:TRUE); to trust a self-signed receiver, give the CA that signed its certificate",
                    n + 1
                )));
            }
            roots
                .add(cert)
                .map_err(|e| err(format!("not a usable CA certificate: {e}")))?;
        }
        tracing::info!(file = %path.display(), "trusting an extra CA file for deliveries");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Whether `cert` says it is a CA (X.509 basicConstraints `cA` true, RFC 5280 §4.2.1.9).
fn is_ca_certificate(cert: &rustls::pki_types::CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(cert)
        .ok()
        .and_then(|(_, parsed)| {
            parsed
                .basic_constraints()
                .ok()
                .flatten()
                .map(|bc| bc.value.ca)
        })
        .unwrap_or(false)
}
