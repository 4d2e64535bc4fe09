//! The admin endpoint on `admin.address`: `/healthz`, `/readyz` and
//! `/metrics`, over HTTP/1.1.
//!
//! Three fixed routes need no router, so this is hyper's own HTTP/1
//! connection with a `service_fn`, not a framework: hyper and hyper-util are
//! already in the build through the Kubernetes client, and nothing else is
//! added to maintain.

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::{metrics, server::Shared};

/// Admin connections served at once; more wait to be accepted. Scrapers and
/// probes need a handful.
const MAX_CONNECTIONS: usize = 64;

/// Time a client has to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

const TEXT: &str = "text/plain; charset=utf-8";

/// Serves the admin endpoint on `listener` until `shutdown` resolves.
///
/// The proxy runs it for its whole life, draining included: `/readyz`
/// answers 503 while draining, and `/metrics` keeps counting the sessions
/// that finish.
pub async fn serve_admin(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let response = respond(&request, &shared);
                async move { Ok::<_, Infallible>(response) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// The answer to one admin request.
fn respond<B>(request: &Request<B>, shared: &Shared) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz or /metrics\n",
        );
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/healthz" => plain(StatusCode::OK, "ok\n"),
        "/readyz" if shared.is_ready() => plain(StatusCode::OK, "ready\n"),
        "/readyz" => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the listener is not serving yet, or the proxy is draining\n",
        ),
        _ => {
            let metrics = shared.metrics();
            metrics.set_parse_cache_entries(shared.cache_stats().entries);
            with_type(StatusCode::OK, metrics::CONTENT_TYPE, metrics.render())
        }
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(status, TEXT, body)
}

fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::ProxyConfig, server::Runtime};

    fn shared() -> Arc<Shared> {
        let config = ProxyConfig::from_yaml(include_str!("../../config/proxy/standalone.yaml")).unwrap();
        Shared::new(Runtime::new(config).unwrap())
    }

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    fn content_type(response: &Response<Full<Bytes>>) -> &str {
        response.headers()[header::CONTENT_TYPE].to_str().unwrap()
    }

    #[test]
    fn readiness_waits_for_the_listener_and_fails_while_draining() {
        let shared = shared();
        assert_eq!(respond(&get("/healthz"), &shared).status(), StatusCode::OK);
        assert_eq!(
            respond(&get("/readyz"), &shared).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        shared.mark_listening();
        assert_eq!(respond(&get("/readyz"), &shared).status(), StatusCode::OK);
        shared.start_draining();
        assert_eq!(
            respond(&get("/readyz"), &shared).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        // Alive all along.
        assert_eq!(respond(&get("/healthz"), &shared).status(), StatusCode::OK);
    }

    #[test]
    fn metrics_are_openmetrics_text() {
        let shared = shared();
        let response = respond(&get("/metrics"), &shared);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(content_type(&response), metrics::CONTENT_TYPE);
        assert!(content_type(&response).starts_with("application/openmetrics-text; version=1.0.0"));
    }

    #[test]
    fn other_paths_and_methods_are_refused() {
        let shared = shared();
        assert_eq!(respond(&get("/"), &shared).status(), StatusCode::NOT_FOUND);
        assert_eq!(
            respond(&get("/metrics/x"), &shared).status(),
            StatusCode::NOT_FOUND
        );
        let post = Request::post("/metrics").body(()).unwrap();
        let response = respond(&post, &shared);
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
        assert_eq!(content_type(&response), TEXT);
    }
}
