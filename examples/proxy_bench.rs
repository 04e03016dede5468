//! Benchmark fixture for `scripts/bench-proxy`: a fast fake FluxRouter upstream and a daemon whose fluxrouter proxy fronts it.
//!
//! Prints `UPSTREAM=<url>`, `PROXY=<url>` and `METRICS=<url>` on stdout, then serves until
//! killed. The upstream answers every request at once with a small costed JSON body, so what
//! wrk measures through the proxy beyond the direct numbers is the proxy's own cost: forwarding,
//! metering, and the SQLite commit of each cost before its response is released. The store is a
//! real file (in a temp dir), as in production.

use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use creditwatch::app::{self, ConfigSource, Options};
use creditwatch::clock::SystemClock;
use creditwatch::config::Config;
use std::path::Path;
use std::sync::Arc;

const BODY: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"flux-lite","choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}"#;

/// `POST /nocost/...` answers the same body without a cost header (metered as unpriced, which
/// is booked without waiting for a commit): the forwarding overhead alone.
async fn completion(uri: axum::http::Uri) -> Response {
    let priced = !uri.path().starts_with("/nocost");
    let mut r = (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        BODY,
    )
        .into_response();
    let h = r.headers_mut();
    if priced {
        h.insert("x-flux-cost-usd", HeaderValue::from_static("0.000412"));
    }
    h.insert("x-flux-model", HeaderValue::from_static("flux-lite"));
    h.insert("x-flux-request-id", HeaderValue::from_static("req_bench"));
    r
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let router = axum::Router::new().fallback(completion);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let upstream = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });

    let dir = tempfile::tempdir()?;
    let toml = format!(
        r#"
listen = "127.0.0.1:0"
state_path = "{state}"
[[account]]
name = "bench"
provider = "fluxrouter"
proxy_listen = "127.0.0.1:0"
upstream = "http://{upstream}"
billing_anchor = "2026-01-15"
included_usd = 1000000
interval = "10s"
timeout = "5s"
"#,
        state = dir.path().join("bench.db").display(),
    );
    let (config, _) = Config::parse(&toml, Path::new("<bench>"), Path::new("."), &|_| None)?;
    let mut signals = app::Signals::register()?;
    let running = app::start(
        ConfigSource::Fixed(Box::new(config)),
        Options {
            listen: None,
            clock: Arc::new(SystemClock),
        },
    )
    .await?;
    let proxy = running.state.proxy("bench").expect("proxy running").addr;
    println!("UPSTREAM=http://{upstream}");
    println!("PROXY=http://{proxy}");
    println!("METRICS=http://{}/metrics", running.addr);
    while signals.recv().await != app::SignalRequest::Stop {}
    running.shutdown().await;
    Ok(())
}
