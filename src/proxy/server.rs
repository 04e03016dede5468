//! The proxy's HTTP side: accept any method and path, stream the request to the upstream and the response back, meter it.
//!
//! Bodies are never buffered: the client's request body is handed to the upstream connection as
//! a stream (its length, when known, is kept) and the upstream's response body is handed back the
//! same way, so SSE events pass one by one and backpressure flows both ways. When the client goes
//! away, its request future and body are dropped, which drops the upstream request or response
//! and closes that upstream connection. Only hop-by-hop headers are dropped; the
//! `Authorization` value passes through and is never logged or stored.

use super::ProxyConfig;
use super::cost::{self, Pricing, Unpriced};
use super::meter::{Meter, Metered};
use crate::clock::Clock;
use crate::store::ProxyKey;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State as Extract};
use axum::http::header::{self, HeaderMap, HeaderName};
use axum::http::{Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long connecting to the upstream (TCP and TLS) may take before the client gets a 502.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The `key` label of requests whose key hash is not in the `keys` map.
pub const UNMAPPED_KEY: &str = "unmapped";
/// Distinct unmapped key hashes reported in the log (each once); more are not reported.
const MAX_REPORTED_UNMAPPED: usize = 1024;

type UpstreamClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Why a proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up TLS for the upstream: {0}")]
    Tls(String),
}

struct Shared {
    config: RwLock<Arc<ProxyConfig>>,
    meter: Arc<Meter>,
    client: UpstreamClient,
    clock: Arc<dyn Clock>,
    unmapped_reported: Mutex<BTreeSet<String>>,
}

impl Shared {
    fn config(&self) -> Arc<ProxyConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A running proxy for one fluxrouter account.
pub struct ProxyServer {
    /// The address actually bound (differs from the config when it asked for port 0).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// Binds the proxy's listening socket; done before anything else changes so a reload can fail
/// cleanly when the address is taken.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ProxyError> {
    let l =
        std::net::TcpListener::bind(addr).map_err(|source| ProxyError::Bind { addr, source })?;
    l.set_nonblocking(true)
        .map_err(|source| ProxyError::Bind { addr, source })?;
    Ok(l)
}

/// The HTTP client for the upstream: rustls with the platform's roots, HTTP/2 when the upstream
/// offers it, no default headers (unlike reqwest, it adds nothing to what the client sent), no
/// redirects followed (a 3xx goes back to the client as is).
fn upstream_client() -> Result<UpstreamClient, ProxyError> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ProxyError::Tls(e.to_string()))?
        .with_platform_verifier()
        .map_err(|e| ProxyError::Tls(e.to_string()))?
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(https))
}

impl ProxyServer {
    /// Starts serving on a bound listener. Must be called within a tokio runtime.
    pub fn start(
        listener: std::net::TcpListener,
        config: ProxyConfig,
        meter: Arc<Meter>,
        clock: Arc<dyn Clock>,
    ) -> Result<ProxyServer, ProxyError> {
        let configured = config.listen;
        let bind_err = |source| ProxyError::Bind {
            addr: configured,
            source,
        };
        let listener = tokio::net::TcpListener::from_std(listener).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        let shared = Arc::new(Shared {
            config: RwLock::new(Arc::new(config)),
            meter,
            client: upstream_client()?,
            clock,
            unmapped_reported: Mutex::default(),
        });
        let router = Router::new().fallback(forward).with_state(shared.clone());
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        let listener = listener.tap_io(|tcp| {
            // Small responses must not wait for Nagle's algorithm.
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::error!(%addr, error = %e, "proxy server failed");
            }
        });
        Ok(ProxyServer {
            addr,
            shared,
            cancel,
            task,
        })
    }

    /// The configuration in effect.
    pub fn config(&self) -> Arc<ProxyConfig> {
        self.shared.config()
    }

    /// Applies a new configuration to requests that start from now on (the listener stays).
    pub fn update(&self, config: ProxyConfig) {
        *self
            .shared
            .config
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }

    /// Stops accepting connections; requests in flight run to completion and are still metered.
    /// The returned task ends when they have.
    pub fn shutdown(self) -> JoinHandle<()> {
        self.cancel.cancel();
        self.task
    }
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Drops hop-by-hop headers, including any that `Connection` names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(*n);
    }
}

/// An error the proxy itself answers, in the OpenAI-style shape clients already parse.
fn proxy_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "error": {
            "message": format!("creditwatch proxy: {message}"),
            "type": "proxy_error",
            "code": code,
        }
    });
    (status, axum::Json(body)).into_response()
}

/// The error and its sources on one line, for a 502 body and the log.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let m = src.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = src.source();
    }
    s
}

/// The `key` label and hash of a request, when per-key attribution is on.
fn attribute(sh: &Shared, cfg: &ProxyConfig, headers: &HeaderMap) -> (String, Option<String>) {
    if cfg.keys.is_empty() {
        return (String::new(), None);
    }
    let Some(auth) = headers.get(header::AUTHORIZATION) else {
        return (UNMAPPED_KEY.to_string(), None);
    };
    let hash = cost::key_hash(auth);
    match cfg.keys.get(&hash) {
        Some(name) => (name.clone(), Some(hash)),
        None => {
            let mut seen = sh
                .unmapped_reported
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if seen.len() < MAX_REPORTED_UNMAPPED && seen.insert(hash.clone()) {
                tracing::info!(account = %cfg.account, key_hash = %hash, "request with a key not in `keys`; its spend is attributed to key=\"unmapped\" (add the hash to `keys` to name it)");
            }
            (UNMAPPED_KEY.to_string(), Some(hash))
        }
    }
}

async fn forward(Extract(sh): Extract<Arc<Shared>>, req: Request) -> Response {
    let cfg = sh.config();
    if req.method() == Method::CONNECT {
        return proxy_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "CONNECT is not supported: this is a reverse proxy for one upstream",
        );
    }
    let (mut parts, body) = req.into_parts();
    let uri = match cfg.upstream.uri_for(parts.uri.path_and_query()) {
        Ok(u) => u,
        Err(m) => return proxy_error(StatusCode::BAD_REQUEST, "bad_request_target", &m),
    };
    let path = parts.uri.path().to_string();
    let (key, key_hash) = attribute(&sh, &cfg, &parts.headers);
    strip_hop_by_hop(&mut parts.headers);
    // The client already got its 100 Continue from this hop; the upstream sets its own Host.
    parts.headers.remove(header::EXPECT);
    parts.headers.remove(header::HOST);
    let mut up = axum::http::Request::new(body);
    *up.method_mut() = parts.method.clone();
    *up.uri_mut() = uri;
    *up.headers_mut() = parts.headers;

    let started = Instant::now();
    let outcome = tokio::time::timeout(cfg.upstream_timeout, sh.client.request(up)).await;
    let now = sh.clock.now();
    let period_start_ms = cfg
        .schedule
        .period_at(now)
        .map(|p| p.start.timestamp_millis())
        .unwrap_or(0);
    let metered = |model: String, code: StatusCode, pricing, request_id| Metered {
        ts_ms: now.timestamp_millis(),
        key: ProxyKey {
            period_start_ms,
            model,
            code: code.as_u16(),
            key: key.clone(),
        },
        pricing,
        request_id,
        key_hash: key_hash.clone(),
    };
    let resp = match outcome {
        Err(_) => {
            let status = StatusCode::GATEWAY_TIMEOUT;
            let wait = humantime::format_duration(cfg.upstream_timeout);
            tracing::warn!(account = %cfg.account, method = %parts.method, %path, "upstream sent no response within {wait}; answered 504");
            sh.meter.record_detached(metered(
                cost::UNKNOWN_MODEL.into(),
                status,
                Pricing::Unbilled,
                None,
            ));
            return proxy_error(
                status,
                "upstream_timeout",
                &format!("the upstream sent no response within {wait} (upstream_timeout)"),
            );
        }
        Ok(Err(e)) => {
            let status = StatusCode::BAD_GATEWAY;
            let reason = chain(&e);
            tracing::warn!(account = %cfg.account, method = %parts.method, %path, error = %reason, "upstream request failed; answered 502");
            sh.meter.record_detached(metered(
                cost::UNKNOWN_MODEL.into(),
                status,
                Pricing::Unbilled,
                None,
            ));
            return proxy_error(
                status,
                "upstream_unreachable",
                &format!("cannot reach the upstream {}: {reason}", cfg.upstream),
            );
        }
        Ok(Ok(r)) => r,
    };

    let (mut rp, body) = resp.into_parts();
    let model = cost::model(&rp.headers);
    let request_id = cost::request_id(&rp.headers);
    let pricing = cost::pricing(rp.status, &rp.headers);
    if let Pricing::Unpriced(u @ Unpriced::Malformed { .. }) = &pricing {
        tracing::warn!(account = %cfg.account, %model, request_id = request_id.as_deref().unwrap_or(""), "{}; counted as unpriced, nothing added to spend", u.note());
    }
    tracing::debug!(account = %cfg.account, method = %parts.method, %path, status = rp.status.as_u16(), %model, request_id = request_id.as_deref().unwrap_or(""), pricing = ?pricing, elapsed_ms = started.elapsed().as_millis() as u64, "proxied");
    let m = metered(model, rp.status, pricing, request_id);
    if matches!(m.pricing, Pricing::Priced(_)) {
        // The cost is committed before a byte of the response leaves, so a crash can never lose
        // spend a client has seen. If the store fails the writer keeps the cost in memory,
        // retries, and logs; the client still gets the response it was charged for.
        let _ = sh.meter.record(m).await;
    } else {
        sh.meter.record_detached(m);
    }
    strip_hop_by_hop(&mut rp.headers);
    // hyper writes the version of the client's connection; an HTTP/2 upstream must not leak into
    // an HTTP/1.1 response line.
    rp.version = Version::HTTP_11;
    Response::from_parts(rp, Body::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn hop_by_hop_headers_go_end_to_end_headers_stay() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-conn-only"),
            ("keep-alive", "timeout=5"),
            ("x-conn-only", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic abc"),
            ("authorization", "Bearer sk-1"),
            ("content-length", "42"),
            ("x-flux-cost-usd", "0.1"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["authorization", "content-length", "x-flux-cost-usd"]);
    }
}
