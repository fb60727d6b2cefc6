//! Serving connections with limits a slow or stuck client cannot get around.
//!
//! `axum::serve` sets no timer on hyper, so hyper's header read timeout never applies, has no
//! connection limit, and waits for every open connection at shutdown. This loop is the same
//! hyper (HTTP/1.1 and HTTP/2 through `hyper_util`'s auto builder) with:
//! - a connection cap ([`HttpConfig::max_connections`]): one connection more is answered
//!   `503` with `Retry-After` and a JSON body, then closed, never left waiting unanswered;
//! - a header read timeout (hyper's, with a timer: 30 s for a request's headers to arrive);
//! - a bounded shutdown: once `shutdown` resolves, no new connection is accepted, open ones are
//!   told to finish (graceful shutdown, keep-alive ends), and those still open after
//!   [`HttpConfig::shutdown_grace`] (a long NDJSON stream, a client that never reads) are cut,
//!   so the spool flush that follows is not held up.
//!
//! Request and body timeouts are middleware in [`super::app`]'s stack (see [`request_timeout`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

use crate::config::HttpConfig;
use crate::intake::ApiError;

/// Seconds a client refused for the connection cap should wait.
const BUSY_RETRY_AFTER_SECS: u64 = 1;

/// The whole answer to a connection over the cap (sent before reading anything).
fn busy_response(max: usize) -> Vec<u8> {
    let body = format!(
        r#"{{"error":"too_many_connections","field":"connection","message":"connection: the server has {max} connections open, its limit (http.max_connections); retry in {BUSY_RETRY_AFTER_SECS} s"}}"#
    );
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: {BUSY_RETRY_AFTER_SECS}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves `router` on `listener` until `shutdown`, then for at most `shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    cfg: &HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(cfg.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (mut stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: not this server's end.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let max = cfg.max_connections;
            tokio::spawn(async move {
                // Best effort: the client is told, whatever it does next.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    stream.write_all(&busy_response(max)).await?;
                    stream.shutdown().await
                })
                .await;
            });
            tracing::debug!(%peer, "refused a connection over http.max_connections");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(req)
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let grace = cfg.shutdown_grace.0;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace = ?grace,
            open = cfg.max_connections - permits.available_permits(),
            "connections still open after http.shutdown_grace; cutting them to flush the spool"
        );
    }
    Ok(())
}

/// A request that is not answered within `limit` (body read included) gets 408 naming the limit.
/// Streamed answers are timed until their headers.
pub async fn request_timeout(limit: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::Timeout {
            code: "request_timeout",
            field: "request",
            message: format!(
                "request: not answered within http.request_timeout ({} ms); a slow body or a slow database",
                limit.as_millis()
            ),
        }
        .into_response(),
    }
}

/// The peer address, for handlers that log or truncate it.
pub type Peer = ConnectInfo<SocketAddr>;
