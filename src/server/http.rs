//! The API's HTTP/1.1 server: hyper with a header read timeout, a connection cap and a
//! graceful drain. It serves whatever router it is given (`api::router`).

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Limits of the API's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time to send a request's head (hyper's header read timeout, which also closes an idle
    /// keep-alive connection); the body then has as long again (`api::guard`).
    pub read_timeout: std::time::Duration,
    /// Most connections served at once; more wait in the kernel's listen backlog.
    pub max_connections: usize,
}

/// Largest request head hyper buffers (256 KiB); beyond, it answers a bare 431 and closes.
/// Smaller limits with JSON answers are checked in `api::guard`.
const MAX_HEAD_BUFFER: usize = 256 * 1024;

/// Most header fields hyper parses in one request (256); beyond, it answers a bare 431.
const MAX_HEADER_FIELDS: usize = 256;

/// Serves `app` over HTTP/1.1 on `listener` until `stop` is cancelled, then waits for the
/// open connections to finish their requests (the caller bounds that wait). Each connection
/// holds one of `limits.max_connections` slots; a client that sends its head slower than
/// `limits.read_timeout` (slowloris) is disconnected, so it cannot hold the API.
///
/// # Errors
/// None today: accept errors (EMFILE, a reset before accept) are logged and the loop goes on.
pub async fn serve_api(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    stop: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .max_buf_size(MAX_HEAD_BUFFER)
        .max_headers(MAX_HEADER_FIELDS)
        .keep_alive(true);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = stop.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE/ENFILE and aborted handshakes: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        // The peer's address goes in each request's extensions (for the failed-token budget);
        // the router itself is shared, not rebuilt per connection.
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
            request
                .extensions_mut()
                .insert(crate::api::guard::PeerAddr(peer));
            tower::ServiceExt::oneshot(app.clone(), request)
        });
        let connection = graceful.watch(builder.serve_connection(
            TokioIo::new(super::parse_errors::JsonParseErrors::new(stream)),
            service,
        ));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "API connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
