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
    tls_config_of(&Arc::new(tls_roots(settings)?))
}

/// The client configuration over `roots`, without a client certificate.
///
/// # Errors
/// [`TlsSetupError::Rustls`] (cannot happen with the ring provider).
pub fn tls_config_of(
    roots: &Arc<rustls::RootCertStore>,
) -> Result<rustls::ClientConfig, TlsSetupError> {
    let roots = Arc::clone(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The trusted roots of `settings` (see [`tls_config`]).
///
/// # Errors
/// [`TlsSetupError`] for an unreadable or empty CA file, or an empty system store.
pub fn tls_roots(settings: &TlsSettings) -> Result<rustls::RootCertStore, TlsSetupError> {
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
    Ok(roots)
}

/// A webhook's client certificate for mTLS (issue 16), parsed and checked.
#[derive(Debug)]
pub struct ClientIdentity {
    /// The chain, end-entity certificate first.
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Its private key.
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
    /// The end-entity certificate's subject, as text (`CN=...`).
    pub subject: String,
    /// When the end-entity certificate expires, seconds since the epoch.
    pub not_after_s: i64,
}

/// Parses a PEM certificate chain (end-entity first) and a PEM private key (PKCS#8, PKCS#1
/// or SEC1), and checks what a handshake would otherwise find late: the key belongs to the
/// first certificate, and that certificate is valid at `now_s` (seconds since the epoch;
/// `None` skips the dates).
///
/// # Errors
/// A sentence saying what is wrong (no certificate, unreadable key, key of another
/// certificate, expired or not yet valid). It never quotes the key.
pub fn client_identity(
    certificate_pem: &str,
    private_key_pem: &str,
    now_s: Option<i64>,
) -> Result<ClientIdentity, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let chain = CertificateDer::pem_slice_iter(certificate_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "the certificate is not valid PEM".to_owned())?;
    let Some(leaf) = chain.first() else {
        return Err("no PEM certificate in \"certificate\"".to_owned());
    };
    let key = PrivateKeyDer::from_pem_slice(private_key_pem.as_bytes()).map_err(|_| {
        "the private key is not a PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned()
    })?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(
        |e| match e {
            rustls::Error::InconsistentKeys(_) => {
                "the private key does not belong to the first certificate".to_owned()
            }
            _ => "the private key cannot sign (an unsupported key type)".to_owned(),
        },
    )?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|_| "the first certificate does not parse as X.509".to_owned())?;
    let validity = parsed.validity();
    if now_s.is_some_and(|now| validity.not_after.timestamp() <= now) {
        return Err(format!("the certificate expired ({})", validity.not_after));
    }
    if now_s.is_some_and(|now| validity.not_before.timestamp() > now) {
        return Err(format!(
            "the certificate is not valid yet ({})",
            validity.not_before
        ));
    }
    Ok(ClientIdentity {
        subject: parsed.subject().to_string(),
        not_after_s: validity.not_after.timestamp(),
        chain,
        key,
    })
}

/// The client configuration of `base` (its roots and versions) that also presents
/// `identity` to a receiver that asks for a client certificate.
///
/// # Errors
/// [`TlsSetupError::Rustls`] when rustls refuses the identity (checked at creation, so
/// only for a key type it cannot sign with).
pub fn with_client_identity(
    roots: &Arc<rustls::RootCertStore>,
    identity: ClientIdentity,
) -> Result<rustls::ClientConfig, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(Arc::clone(roots))
        .with_client_auth_cert(identity.chain, identity.key)?)
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
