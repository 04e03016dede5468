//! The HTTP server: `/metrics` (gzip when asked), `/-/healthy`, `/-/ready`, `POST /-/reload`, `/runbook`, and the `/` landing page.

use crate::metrics::Exporter;
use crate::state::State;
use axum::Router;
use axum::extract::State as Extract;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{mpsc, oneshot};
use tower_http::compression::CompressionLayer;

/// A request to reload the config; the answer is `Err(reason)` when the new config is invalid.
pub type ReloadRequest = oneshot::Sender<Result<(), String>>;

/// What the handlers share.
pub struct Web {
    pub state: Arc<State>,
    pub exporter: Exporter,
    pub enable_reload: AtomicBool,
    pub reload: mpsc::Sender<ReloadRequest>,
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
        .layer(CompressionLayer::new().gzip(true))
        .with_state(web)
}

async fn metrics(Extract(web): Extract<Arc<Web>>) -> Response {
    let body = web.exporter.render();
    ([(header::CONTENT_TYPE, Exporter::content_type())], body).into_response()
}

async fn ready(Extract(web): Extract<Arc<Web>>) -> Response {
    if web.state.is_ready() {
        (StatusCode::OK, "Ready\n").into_response()
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

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

async fn landing(Extract(web): Extract<Arc<Web>>) -> Html<String> {
    let accounts = web.state.accounts();
    let mut rows = String::new();
    for (name, a) in &accounts {
        let status = match (a.attempts, a.up) {
            (0, _) => "waiting for first poll",
            (_, true) => "up",
            (_, false) => "down",
        };
        let last = a
            .last_success
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_else(|| "never".into());
        let pools = a
            .snapshot
            .as_ref()
            .map(|s| {
                s.pools
                    .iter()
                    .map(|p| {
                        let r = &p.reading;
                        let name = if r.key.is_empty() {
                            r.pool.clone()
                        } else {
                            format!("{}/{}", r.pool, r.key)
                        };
                        match r.remaining {
                            Some(v) => format!("{name}: {v} {} left", r.unit.as_str()),
                            None => format!("{name}: unlimited"),
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            esc(a.provider),
            if a.up { "up" } else { "down" },
            status,
            esc(&last),
            esc(&pools),
            esc(a.last_error.as_deref().unwrap_or("")),
        );
    }
    Html(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>creditwatch</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.up{{color:#070}}.down{{color:#b00}}</style>
</head><body>
<h1>creditwatch</h1>
<p>Watches paid-API credits and forecasts when they run out. Version {version}.</p>
<ul>
<li><a href="/metrics">/metrics</a> — Prometheus exposition</li>
<li><a href="/-/healthy">/-/healthy</a> — liveness</li>
<li><a href="/-/ready">/-/ready</a> — readiness (after the first poll of every account)</li>
<li><a href="/runbook">/runbook</a> — what to do when an alert fires</li>
</ul>
<h2>Accounts</h2>
<table><tr><th>account</th><th>provider</th><th>status</th><th>last success</th><th>pools</th><th>last error</th></tr>
{rows}</table>
</body></html>
"#,
        version = crate::metrics::VERSION,
    ))
}
