//! A scriptable fake Fluximage upstream that injects faults: every account gets its own path, its own script and its own counters.
//!
//! Each account's `base_url` is `{url}/{account}`; the n-th request of that account (from 0) is
//! answered as its script says. A successful answer is the documented payload with
//! `compressor_used` raised by one per success, so every successful poll is a distinct sample.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How one request is answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// 200 with the documented payload (`compressor_used` = 45 + successes so far).
    Ok,
    /// That status with a short text body.
    Status(u16),
    /// 429 with `Retry-After` in seconds.
    RetryAfterSecs(u64),
    /// 429 with `Retry-After` as an HTTP date this many seconds from now.
    RetryAfterDate(u64),
    /// 429 with no `Retry-After`.
    RateLimited,
    /// Never answers.
    Hang,
    /// 200 with an HTML error page.
    Html,
    /// 200 with JSON cut off in the middle (a complete HTTP response).
    TruncatedJson,
    /// 200, some of the body, then the connection is dropped.
    CutMidBody,
    /// 200 with a body of this many bytes, with a Content-Length header.
    Oversized(usize),
    /// 200 with a chunked body that never ends.
    Endless,
    /// 200 with this body.
    Body(String),
    /// This status with this JSON body.
    Error(u16, String),
}

/// The documented `/api/usage` payload with the given `compressor_used`.
pub fn usage_body(compressor_used: u64) -> String {
    format!(
        r#"{{"plan":"pro","compressor_used":{compressor_used},"compressor_limit":99999,"ia_credits_used":120,"ia_credits_monthly":1000,"ia_topup_credits":200,"ia_credits_remaining":1080,"canCompress":true,"canUseIA":true,"topups":{{"small":"...","medium":"...","large":"..."}}}}"#
    )
}

type Script = Arc<dyn Fn(u64) -> Reply + Send + Sync>;

/// What one account's upstream saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// When each request arrived.
    pub requests: Vec<Instant>,
    /// Successful (200, valid payload) answers sent in full.
    pub ok: u64,
    /// The bearer token of the last request.
    pub last_key: Option<String>,
}

#[derive(Default)]
struct Inner {
    scripts: HashMap<String, Script>,
    /// Accounts whose requests must carry this key, else 401.
    keys: HashMap<String, String>,
    seen: HashMap<String, Seen>,
}

/// The running fake; stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    changed: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    changed: Arc<tokio::sync::Notify>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let changed = Arc::new(tokio::sync::Notify::new());
        let shared = Shared {
            inner: inner.clone(),
            changed: changed.clone(),
        };
        let app = Router::new()
            .route("/{account}/api/usage", get(usage))
            // Other providers' paths under the account's prefix get the same script.
            .route("/{account}/{*rest}", get(other))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(c.cancelled_owned())
                .await;
        });
        Upstream {
            addr,
            inner,
            changed,
            cancel,
        }
    }

    /// The `base_url` of an account.
    pub fn base_url(&self, account: &str) -> String {
        format!("http://{}/{account}", self.addr)
    }

    /// Answers the account's n-th request with `script(n)`.
    pub fn script(&self, account: &str, script: impl Fn(u64) -> Reply + Send + Sync + 'static) {
        self.inner
            .lock()
            .unwrap()
            .scripts
            .insert(account.to_string(), Arc::new(script));
    }

    /// Answers every request of the account with `reply`.
    pub fn always(&self, account: &str, reply: Reply) {
        self.script(account, move |_| reply.clone());
    }

    /// Answers the first `n` requests with `first`, then `then` for ever.
    pub fn first_then(&self, account: &str, first: Reply, n: u64, then: Reply) {
        self.script(
            account,
            move |i| if i < n { first.clone() } else { then.clone() },
        );
    }

    /// Requires `key` as the account's bearer token; other keys get 401.
    pub fn require_key(&self, account: &str, key: &str) {
        self.inner
            .lock()
            .unwrap()
            .keys
            .insert(account.to_string(), key.to_string());
    }

    pub fn seen(&self, account: &str) -> Seen {
        self.inner
            .lock()
            .unwrap()
            .seen
            .get(account)
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `cond` holds for the account's counters, re-checking on every request.
    pub async fn wait_for(&self, account: &str, cond: impl Fn(&Seen) -> bool) -> Seen {
        loop {
            let notified = self.changed.notified();
            let seen = self.seen(account);
            if cond(&seen) {
                return seen;
            }
            notified.await;
        }
    }
}

async fn other(
    state: State<Shared>,
    Path((account, _)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    usage(state, Path(account), headers).await
}

async fn usage(
    State(s): State<Shared>,
    Path(account): Path<String>,
    headers: HeaderMap,
) -> Response {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let (reply, successes, wrong_key) = {
        let mut inner = s.inner.lock().unwrap();
        let wrong_key = match inner.keys.get(&account) {
            Some(k) => key.as_deref() != Some(k.as_str()),
            None => false,
        };
        let script = inner.scripts.get(&account).cloned();
        let seen = inner.seen.entry(account.clone()).or_default();
        let n = seen.requests.len() as u64;
        seen.requests.push(Instant::now());
        seen.last_key = key;
        let reply = script.map(|f| f(n)).unwrap_or(Reply::Ok);
        let successes = seen.ok;
        if reply == Reply::Ok && !wrong_key {
            seen.ok += 1;
        }
        (reply, successes, wrong_key)
    };
    s.changed.notify_waiters();
    if wrong_key {
        return (StatusCode::UNAUTHORIZED, "{\"message\":\"invalid key\"}").into_response();
    }
    match reply {
        Reply::Ok => (
            [(header::CONTENT_TYPE, "application/json")],
            usage_body(45 + successes),
        )
            .into_response(),
        Reply::Status(code) => (
            StatusCode::from_u16(code).unwrap(),
            "upstream trouble, try later",
        )
            .into_response(),
        Reply::RetryAfterSecs(secs) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, secs.to_string())],
            "slow down",
        )
            .into_response(),
        Reply::RetryAfterDate(secs) => {
            // Whole seconds, as HTTP dates have; rounded up so the wait is at least `secs - 1`.
            let at = chrono::Utc::now() + chrono::Duration::seconds(secs as i64);
            let date = at.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, date)],
                "slow down",
            )
                .into_response()
        }
        Reply::RateLimited => (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response(),
        Reply::Hang => std::future::pending().await,
        Reply::Html => (
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
        )
            .into_response(),
        Reply::TruncatedJson => (
            [(header::CONTENT_TYPE, "application/json")],
            usage_body(45)[..60].to_string(),
        )
            .into_response(),
        Reply::CutMidBody => {
            let head = Bytes::from(usage_body(45)[..40].to_string());
            // The error comes after a pause, so the status line and the first bytes are sent.
            let stream = futures_util::stream::unfold(Some(head), |head| async move {
                match head {
                    Some(h) => Some((Ok(h), None)),
                    None => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Some((Err(std::io::Error::other("connection dropped")), None))
                    }
                }
            });
            Response::new(Body::from_stream(stream))
        }
        Reply::Oversized(n) => {
            // Valid JSON of the given size: a parser that read it all would accept it.
            let mut body = usage_body(45);
            body.pop();
            body.push_str(",\"pad\":\"");
            while body.len() < n.saturating_sub(2) {
                body.push('x');
            }
            body.push_str("\"}");
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Reply::Endless => {
            let chunk = Bytes::from(vec![b' '; 64 * 1024]);
            let stream = futures_util::stream::unfold(chunk, |c| async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                Some((Ok::<_, std::io::Error>(c.clone()), c))
            });
            Response::new(Body::from_stream(stream))
        }
        Reply::Body(b) => ([(header::CONTENT_TYPE, "application/json")], b).into_response(),
        Reply::Error(code, b) => (
            StatusCode::from_u16(code).unwrap(),
            [(header::CONTENT_TYPE, "application/json")],
            b,
        )
            .into_response(),
    }
}

/// A loopback port with nothing listening on it: connecting is refused.
pub fn refused_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}
