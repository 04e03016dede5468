//! The HTTP server: `/metrics` (gzip when asked), `/-/healthy`, `/-/ready`, `POST /-/reload`, `/runbook`, and the `/` status page.

use crate::clock::Clock;
use crate::metrics::Exporter;
use crate::state::State;
use crate::status;
use crate::store::Store;
use crate::web::Auth;
use axum::Router;
use axum::extract::{Query, State as Extract};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{mpsc, oneshot};
use tower_http::compression::CompressionLayer;

/// A request to reload the config; the answer is `Err(reason)` when the new config is invalid.
pub type ReloadRequest = oneshot::Sender<Result<(), String>>;

/// What the handlers share.
pub struct Web {
    pub state: Arc<State>,
    pub exporter: Exporter,
    /// History for the status page's charts.
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub enable_reload: AtomicBool,
    pub reload: mpsc::Sender<ReloadRequest>,
    /// The credentials requests must carry (`[web]`), swapped on reload.
    pub auth: Arc<RwLock<Arc<Auth>>>,
}

/// The router, built from shared state so tests can drive it with `oneshot`.
pub fn router(web: Arc<Web>) -> Router {
    Router::new()
        .route("/", get(landing))
        .route("/metrics", get(metrics))
        .route("/-/healthy", get(|| async { "Healthy\n" }))
        .route("/-/ready", get(ready))
        .route("/-/reload", post(reload))
        .route(
            "/runbook",
            get(|| async { Html(crate::runbook::html_page()) }),
        )
        // gzip at its fastest level: at 10,000 accounts the exposition is about 40 MB, which the
        // default level took about 400 ms of CPU to compress on every scrape; the fastest takes
        // a third of that for a body about a quarter larger (2.8 instead of 2.2 MB).
        .layer(
            CompressionLayer::new()
                .gzip(true)
                .quality(tower_http::CompressionLevel::Fastest),
        )
        .layer(axum::middleware::from_fn_with_state(
            web.auth.clone(),
            crate::web::require_auth,
        ))
        .with_state(web)
}

/// Streams the exposition as it is written on the blocking pool, so a large one is never held
/// whole in memory and gzip (when asked) compresses it as it goes.
async fn metrics(Extract(web): Extract<Arc<Web>>) -> Response {
    // Two chunks in flight: the writer stays just ahead of the client.
    let (tx, rx) = mpsc::channel::<bytes::Bytes>(2);
    let exporter = web.exporter.clone();
    tokio::task::spawn_blocking(move || exporter.stream(|chunk| tx.blocking_send(chunk).is_ok()));
    // Fused: the compression layer may poll again after the end.
    let chunks =
        futures_util::StreamExt::fuse(futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), rx))
        }));
    (
        [(header::CONTENT_TYPE, Exporter::content_type())],
        axum::body::Body::from_stream(chunks),
    )
        .into_response()
}

async fn ready(Extract(web): Extract<Arc<Web>>) -> Response {
    if web.state.is_ready() {
        (StatusCode::OK, "Ready\n").into_response()
    } else if web.auth.read().unwrap().required() {
        // Served without credentials: it names no accounts then.
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "Not ready: waiting for the first poll of every account\n",
        )
            .into_response()
    } else {
        let pending = web.state.pending();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "Not ready: waiting for the first poll of {} account(s): {}\n",
                pending.len(),
                pending.join(", ")
            ),
        )
            .into_response()
    }
}

async fn reload(Extract(web): Extract<Arc<Web>>) -> Response {
    if !web.enable_reload.load(Ordering::Relaxed) {
        return (
            StatusCode::FORBIDDEN,
            "Reload over HTTP is disabled: set enable_reload = true, or send SIGHUP\n",
        )
            .into_response();
    }
    let (tx, rx) = oneshot::channel();
    if web.reload.send(tx).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "Shutting down\n").into_response();
    }
    match rx.await {
        Ok(Ok(())) => (StatusCode::OK, "Config reloaded\n").into_response(),
        Ok(Err(reason)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Config not reloaded; the previous config stays in effect:\n{reason}\n"),
        )
            .into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "Shutting down\n").into_response(),
    }
}

/// The status page's Content-Security-Policy: inline styles only.
pub const STATUS_PAGE_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Query parameters of the status page.
#[derive(Debug, Default, serde::Deserialize)]
pub struct PageQuery {
    /// Reload every this many seconds instead of every poll interval; 0 turns reloading off.
    refresh: Option<u64>,
    /// Which page of pools and accounts, from 1.
    page: Option<usize>,
    /// How many pools and accounts a page shows.
    per_page: Option<usize>,
    /// Only this account.
    account: Option<String>,
}

impl PageQuery {
    /// The view asked for, or what is wrong with the query.
    fn view(self) -> Result<status::View, String> {
        let page = self.page.unwrap_or(1);
        if page == 0 {
            return Err("Bad query: page must be 1 or more (pages count from 1)\n".into());
        }
        let per_page = self.per_page.unwrap_or(status::DEFAULT_PER_PAGE);
        if !(1..=status::MAX_PER_PAGE).contains(&per_page) {
            return Err(format!(
                "Bad query: per_page must be between 1 and {}, not {per_page}\n",
                status::MAX_PER_PAGE
            ));
        }
        Ok(status::View {
            page,
            per_page,
            account: self.account,
            refresh: self.refresh,
        })
    }
}

async fn landing(Extract(web): Extract<Arc<Web>>, Query(query): Query<PageQuery>) -> Response {
    let accounts = web.state.accounts();
    let refresh = match query.refresh {
        Some(0) => None,
        Some(n) => Some(n),
        None => Some(status::refresh_seconds(&accounts)),
    };
    let view = match query.view() {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    if let Some(name) = &view.account
        && !accounts.iter().any(|a| *a.name == **name)
    {
        // Not escaped for HTML: the answer is plain text.
        return (
            StatusCode::NOT_FOUND,
            format!("No account is named {name:?}\n"),
        )
            .into_response();
    }
    let now = web.clock.now();
    let store = web.store.clone();
    // History reads are blocking SQLite queries; the page is cheap enough to build on the
    // blocking pool too.
    let page = tokio::task::spawn_blocking(move || {
        let page = status::select(&accounts, view);
        let histories = status::gather(&store, &page).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "status page: cannot read chart history");
            Default::default()
        });
        status::render(&page, &histories, now, refresh, crate::metrics::VERSION)
    })
    .await;
    match page {
        Ok(html) => (
            [
                (header::CACHE_CONTROL, "no-store"),
                // The page needs nothing but its own inline styles: a browser refuses any script
                // or outside fetch, even if a name slipped past escaping.
                (header::CONTENT_SECURITY_POLICY, STATUS_PAGE_CSP),
            ],
            Html(html),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("status page failed: {e}\n"),
        )
            .into_response(),
    }
}
