//! HTTPS deliveries (issue 5, item 2): certificates are verified, failures are logged as
//! `tls` with the reason, an operator CA file is trusted on request, and a receiver that
//! speaks only HTTP/2 over TLS gets its delivery. Real TLS receivers on 127.0.0.1 with
//! certificates made here by a test CA (rcgen).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::support;

fn event(id: &str) -> Value {
    json!({"event_type": "ticket.resolved", "organization_id": "org_a", "event_id": id,
           "data": {"ticket_id": "T-1", "resolved_by": "u", "resolution_time_hours": 1}})
}

fn test_ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "palo-webhooks test CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A server certificate for `names`, signed by `ca`; `expired` makes it end yesterday.
fn leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    expired: bool,
) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    if expired {
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(30);
        params.not_after = now - time::Duration::days(1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

/// What a TLS receiver got: the HTTP version and body of each request.
type Seen = Arc<Mutex<Vec<(Version, Bytes)>>>;

/// A TLS receiver on 127.0.0.1 answering 200; `h2_only` offers only `h2` by ALPN and
/// speaks only HTTP/2. Returns its URL and what it received.
async fn tls_receiver(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    h2_only: bool,
) -> (String, Seen) {
    tls_receiver_asking(cert, key, h2_only, None).await
}

/// [`tls_receiver`] that, given `client_ca`, requires a client certificate it signed
/// (mutual TLS).
async fn tls_receiver_asking(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    h2_only: bool,
    client_ca: Option<CertificateDer<'static>>,
) -> (String, Seen) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(vec![cert], key).unwrap();
    config.alpn_protocols = if h2_only {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/hook", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let sink = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let sink = Arc::clone(&sink);
            tokio::spawn(async move {
                // A refused handshake (the client rejecting our certificate) ends here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let sink = Arc::clone(&sink);
                    async move {
                        let version = request.version();
                        let body = request.into_body().collect().await?.to_bytes();
                        sink.lock().unwrap().push((version, body));
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let io = TokioIo::new(tls);
                if h2_only {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                }
            });
        }
    });
    (url, seen)
}

/// Without the CA, a certificate from an unknown CA is refused as `tls` ("unknown issuer")
/// and nothing is sent; trusting the CA with `--extra-ca-file` makes the same receiver
/// work, over HTTP/1.1 and to an h2-only receiver; an expired certificate or one for
/// another name is still refused, with its reason.
#[tokio::test(flavor = "multi_thread")]
async fn certificates_are_verified_and_an_extra_ca_file_is_trusted() {
    let ca = test_ca();
    let (cert, key) = leaf(&ca, &["127.0.0.1"], false);
    let (url, seen) = tls_receiver(cert.clone(), key.clone_key(), false).await;

    let strict = support::start(&["--retry-schedule", "1h"]);
    let delivery = strict.after_first_attempt(&url, event("evt_tls_1")).await;
    let attempt = &delivery["attempts"][0];
    assert_eq!(attempt["error"], "tls", "{delivery}");
    assert!(
        attempt["error_detail"]
            .as_str()
            .unwrap()
            .contains("unknown issuer"),
        "{attempt}"
    );
    assert!(seen.lock().unwrap().is_empty(), "nothing was sent");
    assert!(
        strict.log_text().contains("TLS handshake failed"),
        "the daemon's log names the TLS failure"
    );
    drop(strict);

    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), ca.pem()).unwrap();
    let ca_path = ca_file.path().to_str().unwrap().to_owned();
    let trusting = support::start(&["--retry-schedule", "1h", "--extra-ca-file", &ca_path]);

    let delivery = trusting.after_first_attempt(&url, event("evt_tls_2")).await;
    assert_eq!(delivery["status"], "succeeded", "{delivery}");
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(seen.lock().unwrap()[0].0, Version::HTTP_11);

    let (h2_url, h2_seen) = tls_receiver(cert, key, true).await;
    let delivery = trusting
        .after_first_attempt(&h2_url, event("evt_tls_3"))
        .await;
    assert_eq!(delivery["status"], "succeeded", "{delivery}");
    let got = h2_seen.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].0,
        Version::HTTP_2,
        "an h2-only receiver is spoken to in h2"
    );
    assert!(String::from_utf8_lossy(&got[0].1).contains("evt_tls_3"));

    for (names, expired, reason) in [
        (
            &["other.example"][..],
            false,
            "not valid for this host name",
        ),
        (&["127.0.0.1"][..], true, "certificate expired"),
    ] {
        let (cert, key) = leaf(&ca, names, expired);
        let (bad_url, bad_seen) = tls_receiver(cert, key, false).await;
        let delivery = trusting
            .after_first_attempt(
                &bad_url,
                event(&format!("evt_tls_{reason}").replace(' ', "_")),
            )
            .await;
        let attempt = &delivery["attempts"][0];
        assert_eq!(attempt["error"], "tls", "{delivery}");
        assert!(
            attempt["error_detail"].as_str().unwrap().contains(reason),
            "{attempt}"
        );
        assert!(bad_seen.lock().unwrap().is_empty());
    }
}

file_only! {
/// A CA file that cannot be read or holds no certificate stops the daemon at start, with
/// the file named.
#[test]
fn an_unusable_extra_ca_file_stops_the_daemon_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    // A leaf (CA:FALSE) as a trust anchor would let its key vouch for any name; a file with
    // a private key is a mistake too.
    let ca = test_ca();
    let key = KeyPair::generate().unwrap();
    let leaf_cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let leaf = dir.path().join("leaf.pem");
    std::fs::write(&leaf, leaf_cert.pem()).unwrap();
    let with_key = dir.path().join("with-key.pem");
    std::fs::write(&with_key, format!("{}{}", ca.pem(), key.serialize_pem())).unwrap();
    for (file, reason) in [
        (dir.path().join("missing.pem"), "extra CA file"),
        (empty, "no PEM certificate"),
        (leaf, "not a CA certificate"),
        (with_key, "private key"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_palo-webhooks"))
            .args([
                "serve",
                "--db",
                dir.path().join("db.redb").to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
                "--extra-ca-file",
                file.to_str().unwrap(),
            ])
            .env("PALO_WEBHOOKS_ADMIN_TOKEN", support::ADMIN_TOKEN)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{stderr}");
        assert!(stderr.contains("extra CA file"), "{stderr}");
        assert!(stderr.contains(reason), "{reason}: {stderr}");
    }
}
}

/// A receiver that answers 200 without Content-Length and ends the body by closing the
/// connection without a TLS close_notify (as Python's http.server over ssl does) has
/// received the delivery: the attempt succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn a_close_delimited_answer_without_close_notify_is_a_success() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let ca = test_ca();
    let (cert, key) = leaf(&ca, &["127.0.0.1"], false);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/hook", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(0usize));
    let count = Arc::clone(&got);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(n) = tls.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            *count.lock().unwrap() += 1;
            let _ = tls
                .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nthanks")
                .await;
            let _ = tls.flush().await;
            // Close the TCP connection under TLS: no close_notify.
            let (tcp, _) = tls.into_inner();
            drop(tcp);
        }
    });
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), ca.pem()).unwrap();
    let daemon = support::start(&[
        "--retry-schedule",
        "1h",
        "--extra-ca-file",
        ca_file.path().to_str().unwrap(),
    ]);
    let delivery = daemon.after_first_attempt(&url, event("evt_eof_1")).await;
    assert_eq!(delivery["status"], "succeeded", "{delivery}");
    assert_eq!(delivery["attempts"][0]["response_body"], "thanks");
    assert_eq!(*got.lock().unwrap(), 1);
}

/// A client certificate signed by `ca` (PEM chain, PEM key); `expired` makes it end
/// yesterday.
fn client_pem(ca: &CertifiedIssuer<'static, KeyPair>, expired: bool) -> (String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "palo-webhooks client");
    if expired {
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(30);
        params.not_after = now - time::Duration::days(1);
    }
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Mutual TLS (issue 16): a receiver that requires a client certificate from its own CA
/// gets the delivery of a webhook that presents one; a certificate from another CA fails as
/// `tls`; a key of another certificate and an expired certificate are refused at creation;
/// the key never appears in an answer or the log.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_reaches_a_receiver_that_requires_one() {
    let server_ca = test_ca();
    let client_ca = test_ca();
    let stranger_ca = test_ca();
    let (cert, key) = leaf(&server_ca, &["127.0.0.1"], false);
    let (url, seen) = tls_receiver_asking(cert, key, false, Some(client_ca.der().clone())).await;
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), server_ca.pem()).unwrap();
    let daemon = support::start(&[
        "--retry-schedule",
        "1h",
        "--extra-ca-file",
        ca_file.path().to_str().unwrap(),
    ]);
    let create = |cert: (String, String), url: String| {
        let daemon = &daemon;
        async move {
            daemon
                .call(
                    "POST",
                    "/api/webhooks",
                    Some(json!({"url": url, "events": ["*"], "organization_id": "org_a",
                                "secret": support::SECRET,
                                "client_certificate": {"certificate": cert.0, "private_key": cert.1}})),
                )
                .await
        }
    };
    let good = client_pem(&client_ca, false);
    let (status, created) = create(good.clone(), format!("{url}/good")).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["client_certificate"]["configured"], true);
    assert!(created["client_certificate"]["subject"]
        .as_str()
        .unwrap()
        .contains("palo-webhooks client"));
    let (status, answer) = daemon
        .call("POST", "/api/events", Some(event("evt_mtls_1")))
        .await;
    assert_eq!(status, 202, "{answer}");
    let id = created["id"].as_str().unwrap();
    let delivered = daemon
        .wait_until(
            &format!("/api/webhooks/{id}/deliveries"),
            std::time::Duration::from_secs(10),
            |b| b["data"][0]["status"] == "succeeded",
        )
        .await;
    assert_eq!(delivered["data"][0]["status"], "succeeded", "{delivered}");
    assert_eq!(seen.lock().unwrap().len(), 1);

    // A certificate the receiver's CA did not sign: the handshake fails, as `tls`.
    let stranger = client_pem(&stranger_ca, false);
    let (status, created) = create(stranger, format!("{url}/stranger")).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let (status, answer) = daemon
        .call("POST", "/api/events", Some(event("evt_mtls_2")))
        .await;
    assert_eq!(status, 202, "{answer}");
    let detail = daemon.first_attempt_of(id).await;
    assert_eq!(detail["attempts"][0]["error"], "tls", "{detail}");
    // The receiver got evt_mtls_2 once: from the first webhook, not from this one.
    let second = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, body)| String::from_utf8_lossy(body).contains("evt_mtls_2"))
        .count();
    assert!(second <= 1, "the stranger's request reached the receiver");

    // Refused at creation: an expired certificate, a key of another certificate, no PEM.
    let other = client_pem(&client_ca, false);
    for (cert, reason) in [
        (client_pem(&client_ca, true), "expired"),
        ((good.0.clone(), other.1), "does not belong"),
        (("nope".to_owned(), good.1.clone()), "certificate"),
    ] {
        let (status, answer) = create(cert, format!("{url}/bad")).await;
        assert_eq!(status, 422, "{answer}");
        assert_eq!(answer["error"]["field"], "client_certificate", "{answer}");
        assert!(answer.to_string().contains(reason), "{answer}");
    }
    // The key is write-only.
    let (_, list) = daemon.call("GET", "/api/webhooks", None).await;
    let key_body: String = good.1.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!list.to_string().contains(&key_body[..40]));
    assert!(!daemon.log_text().contains(&key_body[..40]));
}
