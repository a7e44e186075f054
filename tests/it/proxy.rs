//! The outbound proxy (issue 16): deliveries go through a local CONNECT proxy, which is
//! asked for the address the daemon checked; a host the address policy forbids is refused
//! before the proxy is asked; `--no-proxy` hosts and a webhook's `"proxy": "none"` go direct.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{self, Behaviour, Receiver, SECRET};

/// What the proxy talks over: TCP or TLS.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// A CONNECT proxy on 127.0.0.1: records each CONNECT target and its Proxy-Authorization,
/// then tunnels. Returns its URL and the record.
async fn connect_proxy() -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    connect_proxy_over(None).await
}

/// [`connect_proxy`], over TLS with this acceptor when given (an `https://` proxy).
async fn connect_proxy_over(
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let record = Arc::clone(&record);
            let tls = tls.clone();
            tokio::spawn(async move {
                let mut client: Box<dyn Stream> = match tls {
                    None => Box::new(tcp),
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(tls) => Box::new(tls),
                        Err(_) => return,
                    },
                };
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let Ok(byte) = client.read_u8().await else {
                        return;
                    };
                    head.push(byte);
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let target = text.split_whitespace().nth(1).unwrap_or("").to_owned();
                let auth = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Proxy-Authorization: "))
                    .unwrap_or("")
                    .to_owned();
                record.lock().unwrap().push((target.clone(), auth));
                let Ok(mut upstream) = TcpStream::connect(&target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (url, seen)
}

fn event(id: &str) -> Value {
    json!({"event_type": "ticket.resolved", "organization_id": "org_p", "event_id": id,
           "data": {"ticket_id": "T-1", "resolved_by": "u", "resolution_time_hours": 1}})
}

async fn webhook(daemon: &support::Daemon, url: &str, extra: Value) -> String {
    let mut body =
        json!({"url": url, "events": ["*"], "secret": SECRET, "organization_id": "org_p"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, created) = daemon.call("POST", "/api/webhooks", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_go_through_a_connect_proxy_asked_for_the_checked_address() {
    let (proxy_url, seen) = connect_proxy().await;
    let with_credentials = proxy_url.replace("http://", "http://palo:pr0xy-pass@");
    let daemon = support::start(&[
        "--allow-http",
        "--retry-schedule",
        "1h",
        "--proxy",
        &with_credentials,
        "--no-proxy",
        "direct.invalid,127.0.0.9",
    ]);
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    // A name, resolved by the daemon: the proxy is asked for the address, not the name.
    let port = receiver
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let by_name = format!("http://localhost:{port}/via-proxy");
    let proxied = webhook(&daemon, &by_name, json!({"events": ["ticket.resolved"]})).await;
    let direct = webhook(
        &daemon,
        &receiver.url,
        json!({"proxy": "none", "events": ["ticket.resolved"]}),
    )
    .await;
    daemon
        .call("POST", "/api/events", Some(event("evt_px1")))
        .await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    let tunnels = seen.lock().unwrap().clone();
    assert_eq!(
        tunnels.len(),
        1,
        "only the proxied webhook went through it: {tunnels:?}"
    );
    assert_eq!(
        tunnels[0].0,
        format!("127.0.0.1:{port}"),
        "the checked address, not the name"
    );
    let basic = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        "palo:pr0xy-pass",
    );
    assert_eq!(tunnels[0].1, format!("Basic {basic}"));
    let (_, shown) = daemon
        .call("GET", &format!("/api/webhooks/{direct}"), None)
        .await;
    assert_eq!(shown["proxy"], "none");
    let (_, shown) = daemon
        .call("GET", &format!("/api/webhooks/{proxied}"), None)
        .await;
    assert_eq!(shown["proxy"], Value::Null);
    // A webhook's own proxy URL: shown without its credentials, which stay out of the log.
    let own = webhook(
        &daemon,
        &by_name,
        json!({"proxy": with_credentials, "events": ["system.incident"]}),
    )
    .await;
    let (_, shown) = daemon
        .call("GET", &format!("/api/webhooks/{own}"), None)
        .await;
    assert_eq!(shown["proxy"], proxy_url);
    assert!(!daemon.log_text().contains("pr0xy-pass"));
    // Bad proxies are refused.
    for bad in ["socks5://p:1", "not a url", "http://proxy:3128/path"] {
        let (status, answer) = daemon
            .call(
                "POST",
                "/api/webhooks",
                Some(json!({"url": receiver.url, "events": ["*"], "organization_id": "org_p", "proxy": bad})),
            )
            .await;
        assert_eq!(status, 422, "{bad}: {answer}");
        assert_eq!(answer["error"]["field"], "proxy");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forbidden_address_is_refused_before_the_proxy_is_asked() {
    let (proxy_url, seen) = connect_proxy().await;
    // No loopback allowance: localhost is a forbidden range for deliveries. The proxy
    // itself (on 127.0.0.1) is the operator's choice and is not checked.
    let daemon = support::start_strict(&[
        "--allow-http",
        "--retry-schedule",
        "1h",
        "--proxy",
        &proxy_url,
    ]);
    let id = webhook(&daemon, "http://localhost:9/hook", json!({})).await;
    daemon
        .call("POST", "/api/events", Some(event("evt_px2")))
        .await;
    let detail = daemon.first_attempt_of(&id).await;
    assert_eq!(
        detail["attempts"][0]["error"], "blocked_address",
        "{detail}"
    );
    assert!(seen.lock().unwrap().is_empty(), "the proxy was asked");
}

/// An `https://` proxy: the daemon speaks TLS to the proxy (verified with the delivery
/// roots, here an extra CA), sends CONNECT inside, and the delivery goes through.
#[tokio::test(flavor = "multi_thread")]
async fn deliveries_go_through_an_https_proxy() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let (proxy_url, seen) =
        connect_proxy_over(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await;
    let ca_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca_file.path(), ca.pem()).unwrap();
    let daemon = support::start(&[
        "--allow-http",
        "--retry-schedule",
        "1h",
        "--proxy",
        &proxy_url,
        "--extra-ca-file",
        ca_file.path().to_str().unwrap(),
    ]);
    let receiver = Receiver::start(Behaviour::Status(200)).await;
    webhook(&daemon, &receiver.url, json!({})).await;
    daemon
        .call("POST", "/api/events", Some(event("evt_px3")))
        .await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "the delivery went through the proxy"
    );
}
