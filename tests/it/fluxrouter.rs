//! The fluxrouter metering proxy end to end: a fake upstream with costed, streaming and failing responses, read back through `/metrics` and the store.

use crate::support::{TestApp, manual_clock, series, spawn, spawn_in, value};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use creditwatch::clock::{Clock, ManualClock, SystemClock};
use creditwatch::demo::SimServer;
use futures_util::StreamExt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, watch};

/// A request as the fake upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
}

/// A fake FluxRouter built from the provider reference: non-streaming responses carry
/// `X-Flux-Cost-Usd` / `X-Flux-Model` / `X-Flux-Request-Id`, streams carry no cost, errors are
/// plain statuses. Tests steer it with `x-test-*` request headers and watch it through channels.
pub struct Upstream {
    pub seen: Mutex<Vec<Seen>>,
    counter: AtomicU64,
    /// Bytes `/echo` has received so far (all requests).
    pub received: watch::Sender<usize>,
    /// `/hang` requests that arrived, and those whose handler was dropped (the caller left).
    pub hang_arrived: watch::Sender<u32>,
    pub hang_dropped: watch::Sender<u32>,
    /// `/sse-forever` streams dropped by the proxy.
    pub stream_dropped: watch::Sender<u32>,
    /// Lets `/sse` send the rest of its events.
    pub sse_release: Notify,
    /// `/sse` streams that sent their last event.
    pub sse_finished: watch::Sender<u32>,
}

struct OnDrop(Arc<Upstream>, fn(&Upstream));

impl Drop for OnDrop {
    fn drop(&mut self) {
        (self.1)(&self.0);
    }
}

impl Upstream {
    pub async fn start() -> (Arc<Upstream>, SimServer) {
        let up = Arc::new(Upstream {
            seen: Mutex::default(),
            counter: AtomicU64::new(0),
            received: watch::channel(0).0,
            hang_arrived: watch::channel(0).0,
            hang_dropped: watch::channel(0).0,
            stream_dropped: watch::channel(0).0,
            sse_release: Notify::new(),
            sse_finished: watch::channel(0).0,
        });
        let router = axum::Router::new().fallback(fake).with_state(up.clone());
        let server = SimServer::start(router).await.unwrap();
        (up, server)
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

fn set(resp: &mut Response, name: &'static str, value: &str) {
    resp.headers_mut()
        .append(name, HeaderValue::from_str(value).unwrap());
}

pub const SSE_FIRST: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n";
pub const SSE_REST: &str =
    "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\ndata: [DONE]\n\n";

async fn fake(State(up): State<Arc<Upstream>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    up.seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect(),
    });
    let test = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let path = parts.uri.path().to_string();
    match path.as_str() {
        "/v1/chat/completions" => {
            let n = up.counter.fetch_add(1, Ordering::Relaxed);
            let model = test("x-test-model").unwrap_or_else(|| "flux-lite".into());
            let mut resp = axum::Json(serde_json::json!({
                "id": format!("cmpl-{n}"), "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13}
            }))
            .into_response();
            if let Some(c) = test("x-test-cost") {
                set(&mut resp, "x-flux-cost-usd", &c);
            }
            set(&mut resp, "x-flux-model", &model);
            set(&mut resp, "x-flux-request-id", &format!("req-{n}"));
            resp
        }
        "/echo" => {
            let counter = up.clone();
            let stream = body.into_data_stream().map(move |chunk| {
                if let Ok(c) = &chunk {
                    counter.received.send_modify(|n| *n += c.len());
                }
                chunk
            });
            let mut resp = Response::new(Body::from_stream(stream));
            if let Some(len) = parts.headers.get(header::CONTENT_LENGTH) {
                resp.headers_mut()
                    .insert(header::CONTENT_LENGTH, len.clone());
            }
            set(&mut resp, "content-type", "application/octet-stream");
            set(&mut resp, "set-cookie", "a=1; Path=/");
            set(&mut resp, "set-cookie", "b=2; Path=/");
            set(&mut resp, "x-custom", "Mixed Case,  spaced ; value");
            set(&mut resp, "x-flux-model", "flux-echo");
            set(&mut resp, "x-flux-request-id", "req-echo");
            if let Some(c) = test("x-test-cost") {
                set(&mut resp, "x-flux-cost-usd", &c);
            }
            // Hop-by-hop headers the proxy must not forward.
            set(&mut resp, "connection", "x-hop");
            set(&mut resp, "x-hop", "1");
            set(&mut resp, "keep-alive", "timeout=5");
            resp
        }
        "/sse" => {
            let up2 = up.clone();
            let events = async_stream(move |tx| async move {
                let _ = tx.send(Ok(SSE_FIRST.into())).await;
                up2.sse_release.notified().await;
                let _ = tx.send(Ok(SSE_REST.into())).await;
                up2.sse_finished.send_modify(|n| *n += 1);
            });
            let mut resp = Response::new(Body::from_stream(events));
            set(&mut resp, "content-type", "text/event-stream");
            set(&mut resp, "cache-control", "no-cache");
            set(&mut resp, "x-flux-model", "flux-stream");
            resp
        }
        "/sse-forever" => {
            let guard = OnDrop(up.clone(), |u| u.stream_dropped.send_modify(|n| *n += 1));
            let events = futures_util::stream::repeat_with(move || {
                let _keep = &guard;
                Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"data: {\"tick\":1}\n\n"))
            });
            let mut resp = Response::new(Body::from_stream(events));
            set(&mut resp, "content-type", "text/event-stream");
            resp
        }
        "/hang" => {
            let _guard = OnDrop(up.clone(), |u| u.hang_dropped.send_modify(|n| *n += 1));
            up.hang_arrived.send_modify(|n| *n += 1);
            std::future::pending::<Response>().await
        }
        "/rate-limited" => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "7"), ("content-type", "application/json")],
            "{\"error\":{\"message\":\"Rate limit reached\",\"type\":\"rate_limit\"}}",
        )
            .into_response(),
        "/malformed" => {
            let mut resp = axum::Json(serde_json::json!({"id": "cmpl-x"})).into_response();
            set(&mut resp, "x-flux-cost-usd", "0,000412");
            set(&mut resp, "x-flux-model", "flux-lite");
            set(&mut resp, "x-flux-request-id", "req-malformed");
            resp
        }
        _ => (StatusCode::NOT_FOUND, "no such fake route").into_response(),
    }
}

/// A body stream fed by a task, so a handler can pause between chunks.
fn async_stream<F, Fut>(
    f: F,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<bytes::Bytes, std::io::Error>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    tokio_stream(rx)
}

fn tokio_stream<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

/// Fails the test instead of hanging when an awaited event never comes. Not a timing
/// assertion: the bound is far above any healthy run.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A fluxrouter account on an ephemeral proxy port; `extra` goes last (it may open a table).
pub fn account(name: &str, upstream: &str, extra: &str) -> String {
    format!(
        r#"[[account]]
name = "{name}"
provider = "fluxrouter"
proxy_listen = "127.0.0.1:0"
upstream = "{upstream}"
billing_anchor = "2026-01-15"
included_usd = 1
spend_ceiling_usd = "2.50"
interval = "1s"
timeout = "1s"
upstream_timeout = "2s"
{extra}"#
    )
}

/// A daemon config with one fluxrouter account "llm" and a store in the test's dir.
pub fn config(upstream: &str, extra: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\nstate_path = \"{{dir}}/state.db\"\n{}",
        account("llm", upstream, extra)
    )
}

fn proxy(app: &TestApp) -> String {
    format!(
        "http://{}",
        app.running.state.proxy("llm").expect("proxy running").addr
    )
}

async fn wait_used(app: &TestApp, pool: &str, used: f64) {
    within(&format!("{pool} used = {used}"), async {
        app.running
            .state
            .wait_until(|s| {
                s.account("llm")
                    .and_then(|a| a.snapshot)
                    .is_some_and(|snap| {
                        snap.pools
                            .iter()
                            .any(|p| p.reading.pool == pool && p.reading.used == Some(used))
                    })
            })
            .await
    })
    .await;
}

/// The exposition line of one series, for exact-text comparisons.
fn line<'a>(m: &'a str, name: &str, matchers: &[&str]) -> &'a str {
    let hits: Vec<&str> = series(m, name)
        .into_iter()
        .filter(|l| matchers.iter().all(|x| l.contains(x)))
        .collect();
    assert_eq!(hits.len(), 1, "{name} {matchers:?}:\n{m}");
    hits[0]
}

async fn chat(client: &reqwest::Client, base: &str, model: &str, cost: &str) -> reqwest::Response {
    let r = client
        .post(format!("{base}/v1/chat/completions"))
        .header("authorization", "Bearer sk-test-123")
        .header("x-test-model", model)
        .header("x-test-cost", cost)
        .body(r#"{"model":"flux-auto","messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r
}

/// A response read off a raw socket, exactly as the proxy wrote it.
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn get_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Sends raw request bytes and reads the whole response (the request asks to close).
async fn raw(addr: &str, request: &[u8]) -> Raw {
    let mut s = tokio::net::TcpStream::connect(addr.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.to_string(), v.trim().to_string())
        })
        .collect();
    Raw {
        status,
        headers,
        body: buf[end + 4..].to_vec(),
    }
}

#[tokio::test]
async fn headers_and_bodies_pass_through_byte_exact() {
    let (up, server) = Upstream::start().await;
    let app = spawn(&config(&server.url(), ""), manual_clock()).await;
    let base = proxy(&app);
    let body: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let mut req = format!(
        "POST /echo?b=%2F&a=1 HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer sk-test-123\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nX-Custom-Thing: Keep  This , exactly\r\nX-Multi: one\r\nX-Multi: two\r\nUser-Agent: openai-python/1.50\r\nConnection: close, x-conn-only\r\nX-Conn-Only: dropped\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nX-Test-Cost: 0.000412\r\n\r\n",
        base.trim_start_matches("http://"),
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let r = raw(&base, &req).await;
    assert_eq!(r.status, 200);
    assert!(r.body == body, "body changed on the way back");

    // The upstream saw the client's end-to-end headers exactly, and nothing else but its own Host.
    let seen = up.last();
    assert_eq!(
        (seen.method.as_str(), seen.uri.as_str()),
        ("POST", "/echo?b=%2F&a=1")
    );
    let mut got = seen.headers.clone();
    got.sort();
    let mut want: Vec<(String, String)> = [
        ("host", server.addr.to_string().as_str()),
        ("authorization", "Bearer sk-test-123"),
        ("content-type", "application/octet-stream"),
        ("content-length", "70000"),
        ("x-custom-thing", "Keep  This , exactly"),
        ("x-multi", "one"),
        ("x-multi", "two"),
        ("user-agent", "openai-python/1.50"),
        ("x-test-cost", "0.000412"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    want.sort();
    assert_eq!(got, want);

    // The client saw the upstream's end-to-end headers exactly, hop-by-hop ones dropped.
    assert_eq!(r.get_all("set-cookie"), ["a=1; Path=/", "b=2; Path=/"]);
    assert_eq!(r.get_all("x-custom"), ["Mixed Case,  spaced ; value"]);
    assert_eq!(r.get_all("x-flux-cost-usd"), ["0.000412"]);
    assert_eq!(r.get_all("x-flux-model"), ["flux-echo"]);
    assert_eq!(r.get_all("x-flux-request-id"), ["req-echo"]);
    assert_eq!(r.get_all("content-length"), ["70000"]);
    for hop in ["x-hop", "keep-alive", "transfer-encoding"] {
        assert!(r.get_all(hop).is_empty(), "{hop} was forwarded");
    }
    let mut names: Vec<String> = r.headers.iter().map(|(k, _)| k.to_lowercase()).collect();
    names.sort();
    names.dedup();
    assert_eq!(
        names,
        [
            "connection", // this hop's own `close`, answering the client's
            "content-length",
            "content-type",
            "date",
            "set-cookie",
            "x-custom",
            "x-flux-cost-usd",
            "x-flux-model",
            "x-flux-request-id"
        ]
    );
    assert_eq!(r.get_all("connection"), ["close"]);

    // An absolute-form target naming another host still goes to the configured upstream.
    let r = raw(
        &base,
        b"GET http://example.com/v1/models?x=1 HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 404, "answered by the fake upstream");
    assert_eq!(up.last().uri, "/v1/models?x=1");
    let r = raw(
        &base,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(
        up.seen.lock().unwrap().len(),
        2,
        "CONNECT never went upstream"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_5_mb_upload_streams_through_without_buffering() {
    let (up, server) = Upstream::start().await;
    let app = spawn(&config(&server.url(), ""), manual_clock()).await;
    let base = proxy(&app);
    const MB: usize = 1024 * 1024;
    let data: Vec<u8> = (0..5 * MB).map(|i| (i * 7 % 251) as u8).collect();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(8);
    let first = bytes::Bytes::copy_from_slice(&data[..MB]);
    let rest = bytes::Bytes::copy_from_slice(&data[MB..]);
    let mut received = up.received.subscribe();
    let sender = tokio::spawn(async move {
        tx.send(Ok(first)).await.unwrap();
        // The rest is sent only once the upstream has the first megabyte: a proxy that buffered
        // the whole upload would never pass it on, and this would time out.
        within(
            "the first megabyte at the upstream",
            received.wait_for(|n| *n >= MB),
        )
        .await
        .unwrap();
        for chunk in rest.chunks(256 * 1024) {
            tx.send(Ok(bytes::Bytes::copy_from_slice(chunk)))
                .await
                .unwrap();
        }
    });
    let resp = reqwest::Client::new()
        .post(format!("{base}/echo"))
        .header("content-length", data.len())
        .body(reqwest::Body::wrap_stream(tokio_stream(rx)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let back = resp.bytes().await.unwrap();
    sender.await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back[..] == data[..], "5 MB body changed");
    let seen = up.last();
    let h = |n: &str| {
        seen.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(h("content-length").as_deref(), Some("5242880"));
    assert_eq!(h("transfer-encoding"), None, "length kept, not re-chunked");
    app.stop().await;
}

#[tokio::test]
async fn sse_events_reach_the_client_before_the_stream_ends() {
    let (up, server) = Upstream::start().await;
    let app = spawn(&config(&server.url(), ""), manual_clock()).await;
    let base = proxy(&app);
    let resp = reqwest::Client::new()
        .post(format!("{base}/sse"))
        .header("authorization", "Bearer sk-test-123")
        .body(r#"{"model":"flux-auto","stream":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    while got.len() < SSE_FIRST.len() {
        let chunk = within("the first event", stream.next())
            .await
            .unwrap()
            .unwrap();
        got.extend_from_slice(&chunk);
    }
    assert_eq!(String::from_utf8_lossy(&got), SSE_FIRST);
    // The first event is here while the upstream is still holding the rest back.
    assert_eq!(*up.sse_finished.borrow(), 0);
    up.sse_release.notify_one();
    while let Some(chunk) = within("the rest of the stream", stream.next()).await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(
        String::from_utf8_lossy(&got),
        format!("{SSE_FIRST}{SSE_REST}")
    );

    // A stream has no cost: counted as unpriced for its model, nothing added.
    let m = app.metrics().await;
    let model = ["model=\"flux-stream\""];
    assert_eq!(
        value(&m, "creditwatch_proxy_unpriced_requests_total", &model),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "creditwatch_proxy_cost_usd_total", &model),
        Some(0.0)
    );
    assert_eq!(
        value(
            &m,
            "creditwatch_proxy_requests_total",
            &[model[0], "code=\"200\""]
        ),
        Some(1.0)
    );
    app.stop().await;
}

#[tokio::test]
async fn costs_add_up_exactly_by_model_into_the_pools() {
    let (up, server) = Upstream::start().await;
    let clock = manual_clock();
    let app = spawn(&config(&server.url(), ""), clock.clone()).await;
    let base = proxy(&app);
    let client = reqwest::Client::new();
    // 500 requests at 0.000412 from 10 concurrent clients: 0.206 exactly, where adding floats
    // would drift.
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (client, base) = (client.clone(), base.clone());
            tokio::spawn(async move {
                for _ in 0..50 {
                    let r = chat(&client, &base, "flux-lite", "0.000412").await;
                    assert_eq!(r.headers()["x-flux-cost-usd"], "0.000412");
                    r.bytes().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_ne!((0..500).map(|_| 0.000412_f64).sum::<f64>(), 0.206);
    chat(&client, &base, "flux-pro", "0.1").await;
    chat(&client, &base, "flux-pro", "0.2").await;
    assert_eq!(up.seen.lock().unwrap().len(), 502);

    let m = app.metrics().await;
    assert_eq!(
        line(
            &m,
            "creditwatch_proxy_cost_usd_total",
            &["model=\"flux-lite\""]
        ),
        "creditwatch_proxy_cost_usd_total{provider=\"fluxrouter\",account=\"llm\",model=\"flux-lite\"} 0.206"
    );
    assert_eq!(
        line(
            &m,
            "creditwatch_proxy_cost_usd_total",
            &["model=\"flux-pro\""]
        ),
        "creditwatch_proxy_cost_usd_total{provider=\"fluxrouter\",account=\"llm\",model=\"flux-pro\"} 0.3"
    );
    assert_eq!(
        line(
            &m,
            "creditwatch_proxy_requests_total",
            &["model=\"flux-lite\""]
        ),
        "creditwatch_proxy_requests_total{provider=\"fluxrouter\",account=\"llm\",model=\"flux-lite\",code=\"200\"} 500"
    );
    assert!(m.contains("# TYPE creditwatch_proxy_requests_total counter\n"));
    assert!(m.contains("# TYPE creditwatch_proxy_cost_usd_total counter\n"));
    assert!(m.contains("# TYPE creditwatch_proxy_unpriced_requests_total counter\n"));
    assert_eq!(
        value(
            &m,
            "creditwatch_proxy_unpriced_requests_total",
            &["model=\"flux-lite\""]
        ),
        Some(0.0)
    );

    // The next poll books the period's 0.506 against the allowance (1) and the ceiling (2.50).
    wait_used(&app, "ceiling", 0.506).await;
    let m = app.metrics().await;
    let pool = |p: &'static str| [format!("pool=\"{p}\"")];
    let v = |name: &str, p: &'static str| value(&m, name, &[pool(p)[0].as_str()]);
    assert_eq!(v("creditwatch_used_usd", "included"), Some(0.506));
    assert_eq!(v("creditwatch_remaining_usd", "included"), Some(0.494));
    assert_eq!(v("creditwatch_limit_usd", "included"), Some(1.0));
    assert_eq!(v("creditwatch_remaining_usd", "ceiling"), Some(1.994));
    assert_eq!(v("creditwatch_limit_usd", "ceiling"), Some(2.5));
    assert_eq!(v("creditwatch_consumed_usd_total", "ceiling"), Some(0.506));
    assert_eq!(v("creditwatch_remaining_ratio", "included"), Some(0.494));
    // Anchor 2026-01-15, now 2026-11-21: the period runs Nov 15 to Dec 15.
    assert_eq!(
        v("creditwatch_reset_timestamp_seconds", "included"),
        Some(1_797_292_800.0)
    );
    assert_eq!(
        value(
            &m,
            "creditwatch_up",
            &["account=\"llm\"", "provider=\"fluxrouter\""]
        ),
        Some(1.0)
    );

    // Every priced request is in the request log with its id and exact cost.
    let log = app.running.store.proxy_log("llm", 0).unwrap();
    assert_eq!(log.len(), 502);
    assert!(log.iter().all(|r| {
        r.request_id
            .as_deref()
            .is_some_and(|id| id.starts_with("req-"))
    }));
    let total: rust_decimal::Decimal = log.iter().filter_map(|r| r.cost).sum();
    assert_eq!(total.normalize().to_string(), "0.506");
    assert!(
        log.iter()
            .all(|r| r.ts_ms == clock.now().timestamp_millis())
    );
    app.stop().await;
}

#[tokio::test]
async fn a_malformed_cost_is_unpriced_and_never_added() {
    let (_up, server) = Upstream::start().await;
    let app = spawn(&config(&server.url(), ""), manual_clock()).await;
    let base = proxy(&app);
    let client = reqwest::Client::new();
    chat(&client, &base, "flux-lite", "0.25").await;
    let r = client
        .post(format!("{base}/malformed"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-flux-cost-usd"],
        "0,000412",
        "passed through untouched"
    );
    let m = app.metrics().await;
    let model = ["model=\"flux-lite\""];
    assert_eq!(
        value(&m, "creditwatch_proxy_cost_usd_total", &model),
        Some(0.25)
    );
    assert_eq!(
        value(&m, "creditwatch_proxy_unpriced_requests_total", &model),
        Some(1.0)
    );
    assert_eq!(
        value(
            &m,
            "creditwatch_proxy_requests_total",
            &[model[0], "code=\"200\""]
        ),
        Some(2.0)
    );
    let log = app.running.store.proxy_log("llm", 0).unwrap();
    let bad = log
        .iter()
        .find(|r| r.request_id.as_deref() == Some("req-malformed"))
        .unwrap();
    assert_eq!(bad.cost, None);
    assert!(
        bad.note
            .as_deref()
            .unwrap()
            .contains("malformed x-flux-cost-usd \"0,000412\""),
        "{bad:?}"
    );
    wait_used(&app, "included", 0.25).await;
    app.stop().await;
}

#[tokio::test]
async fn upstream_errors_reach_the_client_as_they_are_or_as_502_and_504() {
    let (_up, server) = Upstream::start().await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = format!(
        "{}{}",
        config(&server.url(), ""),
        account("down", &format!("http://{closed}"), "")
    );
    let app = spawn(&cfg, manual_clock()).await;
    let base = proxy(&app);
    let client = reqwest::Client::new();

    let r = client
        .get(format!("{base}/rate-limited"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    assert_eq!(
        r.text().await.unwrap(),
        "{\"error\":{\"message\":\"Rate limit reached\",\"type\":\"rate_limit\"}}"
    );

    let r = client.get(format!("{base}/hang")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "upstream_timeout");
    assert_eq!(
        body["error"]["message"],
        "creditwatch proxy: the upstream sent no response within 2s (upstream_timeout)"
    );

    let down = format!("http://{}", app.running.state.proxy("down").unwrap().addr);
    let r = client
        .post(format!("{down}/v1/chat/completions"))
        .header("authorization", "Bearer sk-test-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "upstream_unreachable");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with(&format!(
            "creditwatch proxy: cannot reach the upstream http://{closed}: "
        )),
        "{msg}"
    );

    let m = app.metrics().await;
    let n = |acc: &str, code: &str| {
        value(
            &m,
            "creditwatch_proxy_requests_total",
            &[&format!("account=\"{acc}\""), &format!("code=\"{code}\"")],
        )
    };
    assert_eq!(n("llm", "429"), Some(1.0));
    assert_eq!(n("llm", "504"), Some(1.0));
    assert_eq!(n("down", "502"), Some(1.0));
    // Errors are not unpriced spend.
    assert_eq!(
        value(
            &m,
            "creditwatch_proxy_unpriced_requests_total",
            &["account=\"llm\""]
        ),
        Some(0.0)
    );
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_is_dropped_upstream_too() {
    let (up, server) = Upstream::start().await;
    let cfg =
        config(&server.url(), "").replace("upstream_timeout = \"2s\"", "upstream_timeout = \"1m\"");
    let app = spawn(&cfg, manual_clock()).await;
    let base = proxy(&app);

    // Leaves while the upstream is still working on the response.
    let mut s = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(b"POST /hang HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        .await
        .unwrap();
    within(
        "the request at the upstream",
        up.hang_arrived.subscribe().wait_for(|n| *n == 1),
    )
    .await
    .unwrap();
    drop(s);
    within(
        "the upstream request to be dropped",
        up.hang_dropped.subscribe().wait_for(|n| *n == 1),
    )
    .await
    .unwrap();

    // Leaves in the middle of an endless stream.
    let resp = reqwest::get(format!("{base}/sse-forever")).await.unwrap();
    let mut stream = resp.bytes_stream();
    within("a tick", stream.next()).await.unwrap().unwrap();
    drop(stream);
    within(
        "the upstream stream to be dropped",
        up.stream_dropped.subscribe().wait_for(|n| *n == 1),
    )
    .await
    .unwrap();
    app.stop().await;
}

#[tokio::test]
async fn spend_rolls_over_at_the_billing_anchor_and_survives_a_restart() {
    let (_up, server) = Upstream::start().await;
    let clock = Arc::new(ManualClock::new(
        chrono::DateTime::parse_from_rfc3339("2026-12-14T23:59:00Z")
            .unwrap()
            .to_utc(),
    ));
    let cfg = config(&server.url(), "").replace("included_usd = 1", "included_usd = 10");
    let app = spawn(&cfg, clock.clone()).await;
    let base = proxy(&app);
    let client = reqwest::Client::new();
    for _ in 0..3 {
        chat(&client, &base, "flux-pro", "1.25").await;
    }
    wait_used(&app, "included", 3.75).await;
    let m = app.metrics().await;
    let inc = ["pool=\"included\""];
    assert_eq!(value(&m, "creditwatch_remaining_usd", &inc), Some(6.25));
    // Nov 15 to Dec 15, 2026.
    assert_eq!(
        value(&m, "creditwatch_period_start_timestamp_seconds", &inc),
        Some(1_794_700_800.0)
    );

    // Past the reset at 2026-12-15T00:00Z: a new period starts from zero.
    clock.advance(Duration::from_secs(90));
    chat(&client, &base, "flux-pro", "0.5").await;
    chat(&client, &base, "flux-lite", "0.5").await;
    wait_used(&app, "included", 1.0).await;
    let m = app.metrics().await;
    assert_eq!(value(&m, "creditwatch_remaining_usd", &inc), Some(9.0));
    assert_eq!(
        value(&m, "creditwatch_period_start_timestamp_seconds", &inc),
        Some(1_797_292_800.0)
    );
    assert_eq!(
        value(&m, "creditwatch_reset_timestamp_seconds", &inc),
        Some(1_799_971_200.0)
    );
    // The running totals count both periods; nothing spent before the reset is lost.
    assert_eq!(
        value(&m, "creditwatch_consumed_usd_total", &inc),
        Some(4.75)
    );
    assert_eq!(
        value(
            &m,
            "creditwatch_proxy_cost_usd_total",
            &["model=\"flux-pro\""]
        ),
        Some(4.25)
    );
    let before: Vec<String> = m
        .lines()
        .filter(|l| l.starts_with("creditwatch_proxy_") || l.starts_with("creditwatch_used_usd"))
        .map(String::from)
        .collect();
    let dir = app.stop().await;

    let app = spawn_in(dir, &cfg, clock.clone()).await;
    wait_used(&app, "included", 1.0).await;
    let m = app.metrics().await;
    let after: Vec<String> = m
        .lines()
        .filter(|l| l.starts_with("creditwatch_proxy_") || l.starts_with("creditwatch_used_usd"))
        .map(String::from)
        .collect();
    assert_eq!(before, after, "totals changed across a restart");
    app.stop().await;
}

#[tokio::test]
async fn reload_keeps_an_unchanged_proxy_and_moves_a_changed_one() {
    let (_up, server) = Upstream::start().await;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (a, b) = (free(), free());
    let cfg = |listen: std::net::SocketAddr, interval: &str| {
        config(&server.url(), "")
            .replace(
                "proxy_listen = \"127.0.0.1:0\"",
                &format!("proxy_listen = \"{listen}\""),
            )
            .replace("interval = \"1s\"", &format!("interval = \"{interval}\""))
            .replace("{dir}", "STATE_DIR")
    };
    let app = spawn(&cfg(a, "1s").replace("STATE_DIR", "{dir}"), manual_clock()).await;
    let dir = app.dir.path().display().to_string();
    assert_eq!(app.running.state.proxy("llm").unwrap().addr, a);
    let client = reqwest::Client::new();
    chat(&client, &format!("http://{a}"), "flux-lite", "0.5").await;

    // A change elsewhere in the account keeps the same listener.
    std::fs::write(&app.config_path, cfg(a, "2s").replace("STATE_DIR", &dir)).unwrap();
    app.running.reload().await.unwrap();
    assert_eq!(app.running.state.proxy("llm").unwrap().addr, a);
    chat(&client, &format!("http://{a}"), "flux-lite", "0.5").await;

    // A new proxy_listen moves the proxy; the ledger comes along.
    std::fs::write(&app.config_path, cfg(b, "2s").replace("STATE_DIR", &dir)).unwrap();
    app.running.reload().await.unwrap();
    assert_eq!(app.running.state.proxy("llm").unwrap().addr, b);
    chat(&client, &format!("http://{b}"), "flux-lite", "0.5").await;
    assert!(
        reqwest::Client::new()
            .get(format!("http://{a}/v1/models"))
            .header("connection", "close")
            .send()
            .await
            .is_err(),
        "the old address still answers"
    );
    let m = app.metrics().await;
    assert_eq!(
        value(&m, "creditwatch_proxy_cost_usd_total", &[]),
        Some(1.5)
    );

    // An address that is taken fails the reload and keeps the proxy where it was.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std::fs::write(
        &app.config_path,
        cfg(taken.local_addr().unwrap(), "2s").replace("STATE_DIR", &dir),
    )
    .unwrap();
    let e = app.running.reload().await.unwrap_err();
    assert!(e.starts_with("account \"llm\": cannot listen on"), "{e}");
    assert_eq!(app.running.state.proxy("llm").unwrap().addr, b);
    app.stop().await;
}

#[tokio::test]
async fn spend_is_attributed_per_key_by_hash() {
    let (_up, server) = Upstream::start().await;
    // printf %s sk-test-123 | sha256sum | cut -c1-12
    let app = spawn(
        &config(
            &server.url(),
            "[account.keys]\ne0dbaa0c6455 = \"search-team\"\n",
        ),
        manual_clock(),
    )
    .await;
    let base = proxy(&app);
    let client = reqwest::Client::new();
    chat(&client, &base, "flux-lite", "0.125").await;
    chat(&client, &base, "flux-pro", "0.5").await;
    let r = client
        .post(format!("{base}/v1/chat/completions"))
        .header("authorization", "Bearer sk-other-key")
        .header("x-test-cost", "0.25")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m = app.metrics().await;
    let k = |key: &str| [format!("key=\"{key}\"")];
    assert_eq!(
        value(
            &m,
            "creditwatch_proxy_key_cost_usd_total",
            &[k("search-team")[0].as_str()]
        ),
        Some(0.625)
    );
    assert_eq!(
        value(
            &m,
            "creditwatch_proxy_key_requests_total",
            &[k("search-team")[0].as_str()]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &m,
            "creditwatch_proxy_key_cost_usd_total",
            &[k("unmapped")[0].as_str()]
        ),
        Some(0.25)
    );
    let log = app.running.store.proxy_log("llm", 0).unwrap();
    assert_eq!(log[0].key.key, "search-team");
    assert_eq!(log[0].key_hash.as_deref(), Some("e0dbaa0c6455"));
    assert_eq!(log[2].key.key, "unmapped");
    app.stop().await;
}

/// Free ports for a daemon started as a separate process.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_http_ok(url: &str) {
    within(url, async {
        loop {
            if let Ok(r) = reqwest::get(url).await
                && r.status() == 200
            {
                return;
            }
            // Polling a process we do not control: nothing to subscribe to.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[test]
fn kill_9_loses_no_served_cost_and_never_keeps_the_key() {
    const SECRET: &str = "sk-live-DO-NOT-LEAK-7f3a9c";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_up, server) = rt.block_on(Upstream::start());
    let dir = tempfile::tempdir().unwrap();
    let (listen, proxy_port) = (free_port(), free_port());
    let hash = {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, SECRET.as_bytes());
        d.as_ref()[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        config(&server.url(), &format!("[account.keys]\n{hash} = \"ci\"\n"))
            .replace("{dir}/state.db", "state.db")
            .replace(
                "proxy_listen = \"127.0.0.1:0\"",
                &format!("proxy_listen = \"127.0.0.1:{proxy_port}\""),
            )
            .replacen(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{listen}\""),
                1,
            ),
    )
    .unwrap();
    let start = |log: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_creditwatch"))
            .args(["run", "-c"])
            .arg(&cfg)
            .env("RUST_LOG", "debug")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(log)).unwrap())
            .spawn()
            .unwrap()
    };
    let metrics = format!("http://127.0.0.1:{listen}/metrics");
    let base = format!("http://127.0.0.1:{proxy_port}");

    let mut child = start("first.log");
    rt.block_on(wait_http_ok(&format!("http://127.0.0.1:{listen}/-/ready")));
    let served = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let (served, stop, base) = (served.clone(), stop.clone(), base.clone());
            rt.spawn(async move {
                let client = reqwest::Client::new();
                let _ = client
                    .post(format!("{base}/malformed"))
                    .header("authorization", format!("Bearer {SECRET}"))
                    .send()
                    .await;
                while !stop.load(Ordering::Relaxed) {
                    let r = client
                        .post(format!("{base}/v1/chat/completions"))
                        .header("authorization", format!("Bearer {SECRET}"))
                        .header("x-test-cost", "0.000412")
                        .send()
                        .await;
                    // Counted only once the whole response has arrived.
                    let Ok(r) = r else { return };
                    if r.status() != 200 || r.bytes().await.is_err() {
                        return;
                    }
                    served.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    rt.block_on(within("200 served requests", async {
        while served.load(Ordering::SeqCst) < 200 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }));
    // SIGKILL while requests are in flight. A response written just before the kill may still be
    // read from the socket afterwards; it counts as served, and its cost must have been booked.
    let killed = std::process::Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        rt.block_on(l).unwrap();
    }
    let served = served.load(Ordering::SeqCst);

    let mut child = start("second.log");
    rt.block_on(wait_http_ok(&format!("http://127.0.0.1:{listen}/-/ready")));
    let m = rt.block_on(async { reqwest::get(&metrics).await.unwrap().text().await.unwrap() });
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();

    // Every served cost survived; at most the 4 requests in flight at the kill were booked
    // without reaching their client.
    let unit: rust_decimal::Decimal = "0.000412".parse().unwrap();
    let booked = line(
        &m,
        "creditwatch_proxy_cost_usd_total",
        &["model=\"flux-lite\""],
    )
    .rsplit_once(' ')
    .unwrap()
    .1
    .parse::<rust_decimal::Decimal>()
    .unwrap();
    let n = booked / unit;
    assert!(
        n.fract().is_zero(),
        "booked {booked} is not a whole number of requests"
    );
    assert!(
        n >= rust_decimal::Decimal::from(served) && n <= rust_decimal::Decimal::from(served + 4),
        "served {served}, booked {n} requests"
    );
    assert_eq!(
        value(&m, "creditwatch_proxy_key_cost_usd_total", &["key=\"ci\""]),
        Some(booked.to_string().parse().unwrap())
    );
    assert!(
        value(
            &m,
            "creditwatch_proxy_unpriced_requests_total",
            &["model=\"flux-lite\""]
        )
        .unwrap()
            >= 1.0
    );

    // The key never reached the logs or the store; the malformed header was logged.
    let mut logs = String::new();
    for f in ["first.log", "second.log"] {
        logs += &std::fs::read_to_string(dir.path().join(f)).unwrap();
    }
    assert!(
        logs.contains("proxied"),
        "debug request logs are on:\n{logs}"
    );
    assert!(
        logs.contains("malformed x-flux-cost-usd \\\"0,000412\\\"")
            || logs.contains("malformed x-flux-cost-usd \"0,000412\""),
        "{logs}"
    );
    assert!(
        !logs.contains(SECRET) && !logs.contains("DO-NOT-LEAK"),
        "the key is in the logs"
    );
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let f = f.unwrap().path();
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(11).any(|w| w == b"DO-NOT-LEAK"),
            "the key is in {}",
            f.display()
        );
    }
    let db = std::fs::read(dir.path().join("state.db")).unwrap();
    let wal = std::fs::read(dir.path().join("state.db-wal")).unwrap_or_default();
    assert!(
        [db, wal]
            .iter()
            .any(|b| b.windows(12).any(|w| w == hash.as_bytes())),
        "the key hash is kept for attribution"
    );
    drop(rt);
}

#[tokio::test]
async fn once_explains_that_spend_needs_the_proxy() {
    let (_up, server) = Upstream::start().await;
    let (cfg, _) = creditwatch::config::Config::parse(
        &config(&server.url(), "").replace("{dir}/state.db", ":memory:"),
        std::path::Path::new("c.toml"),
        std::path::Path::new("."),
        &|_| None,
    )
    .unwrap();
    let out = creditwatch::once::run(&cfg, Arc::new(SystemClock))
        .await
        .unwrap();
    assert_eq!(out.failed, ["llm"]);
    assert!(out.exposition.contains(
        "creditwatch_scrape_errors_total{provider=\"fluxrouter\",account=\"llm\",reason=\"connect\"} 1"
    ));
}

#[tokio::test]
async fn the_demo_shows_spend_moving_through_its_proxy() {
    let demo = creditwatch::demo::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let account = creditwatch::demo::DEMO_ROUTER_ACCOUNT;
    let used = |s: &creditwatch::state::State| {
        s.account(account)
            .and_then(|a| a.snapshot)
            .and_then(|snap| {
                snap.pools
                    .iter()
                    .find(|p| p.reading.pool == "ceiling")
                    .and_then(|p| p.reading.used)
            })
            .unwrap_or(0.0)
    };
    let state = demo.running.state.clone();
    within("spend in the demo", state.wait_until(|s| used(s) > 0.0)).await;
    let first = used(&state);
    within("spend to move on", state.wait_until(|s| used(s) > first)).await;
    // A streamed request (one in five) is counted as unpriced.
    within(
        "an unpriced stream",
        state.wait_until(|s| {
            s.proxy(account)
                .is_some_and(|p| p.meter.counters().unpriced.values().sum::<u64>() > 0)
        }),
    )
    .await;
    let m = reqwest::get(format!("http://{}/metrics", demo.running.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for key in ["demo-app", "demo-batch"] {
        assert!(
            value(
                &m,
                "creditwatch_proxy_key_cost_usd_total",
                &[&format!("key=\"{key}\"")]
            )
            .is_some_and(|v| v > 0.0),
            "no spend for {key}:\n{m}"
        );
    }
    // Never more than the simulator billed for the requests that carried a cost.
    let booked = demo
        .running
        .state
        .proxy(account)
        .unwrap()
        .meter
        .lifetime_cost();
    assert!(booked > rust_decimal::Decimal::ZERO);
    assert!(booked <= demo.fluxrouter.billed().priced);
    let servers = demo.servers;
    demo.running.shutdown().await;
    drop(servers);
}

/// The value of an instant query, by the given label, as `(label value, value)` pairs.
async fn query(prom: &str, q: &str, by: &str) -> Vec<(String, f64)> {
    let url = format!(
        "{prom}/api/v1/query?query={}",
        q.replace('%', "%25")
            .replace(' ', "%20")
            .replace('"', "%22")
            .replace('{', "%7B")
            .replace('}', "%7D")
            .replace('+', "%2B")
    );
    let body = crate::external::get_json(&url).await;
    let mut out: Vec<(String, f64)> = body["data"]["result"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        r["metric"][by].as_str().unwrap_or("").to_string(),
                        r["value"][1].as_str().unwrap().parse().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[tokio::test]
async fn prometheus_adds_up_the_replicas() {
    let (_up, server) = Upstream::start().await;
    // Two replicas of the same account behind a load balancer, each with its own store.
    let a = spawn(&config(&server.url(), ""), manual_clock()).await;
    let b = spawn(&config(&server.url(), ""), manual_clock()).await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        chat(&client, &proxy(&a), "flux-lite", "0.25").await;
    }
    for _ in 0..4 {
        chat(&client, &proxy(&b), "flux-pro", "0.5").await;
    }
    wait_used(&a, "ceiling", 0.75).await;
    wait_used(&b, "ceiling", 2.0).await;

    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/prometheus/fluxrouter-replicas.rules.yml");
    let targets = [a.running.addr.to_string(), b.running.addr.to_string()];
    let prom = crate::external::prometheus_scraping(
        &[targets[0].as_str(), targets[1].as_str()],
        &[rules.as_path()],
    )
    .await;
    let url = prom.url.clone();
    // Neither replica alone is past 90% of the 2.50 ceiling; together they are (2.75).
    let used = crate::external::eventually(
        Duration::from_secs(30),
        || format!("both replicas summed in Prometheus:\n{}", prom.log()),
        || async {
            let v = query(&url, "account_pool:creditwatch_used_usd:sum", "pool").await;
            (v.len() == 2 && v[0].1 == 2.75).then_some(v)
        },
    )
    .await;
    assert_eq!(
        used,
        [
            ("ceiling".to_string(), 2.75),
            ("included".to_string(), 2.75)
        ]
    );
    assert_eq!(
        query(&url, "account_pool:creditwatch_remaining_usd:sum", "pool").await,
        [
            ("ceiling".to_string(), -0.25),
            ("included".to_string(), -1.75)
        ]
    );
    assert_eq!(
        query(
            &url,
            "sum by (model) (creditwatch_proxy_cost_usd_total)",
            "model"
        )
        .await,
        [
            ("flux-lite".to_string(), 0.75),
            ("flux-pro".to_string(), 2.0)
        ]
    );
    let alerts = crate::external::eventually(
        Duration::from_secs(30),
        || "FluxRouterSpendNearLimit pending".to_string(),
        || async {
            let body = crate::external::get_json(&format!("{url}/api/v1/alerts")).await;
            let mut pools: Vec<String> = body["data"]["alerts"]
                .as_array()?
                .iter()
                .filter(|a| a["labels"]["alertname"] == "FluxRouterSpendNearLimit")
                .map(|a| {
                    format!(
                        "{}/{}",
                        a["labels"]["pool"].as_str().unwrap(),
                        a["state"].as_str().unwrap()
                    )
                })
                .collect();
            pools.sort();
            (pools.len() == 2).then_some(pools)
        },
    )
    .await;
    assert_eq!(alerts, ["ceiling/pending", "included/pending"]);
    drop(prom);
    a.stop().await;
    b.stop().await;
}
