//! The fast fake upstream: documented payloads of Fluximage, ImageRouter, Floow and FluxRouter, computed from the clock, with a configurable added latency.
//!
//! Every polled account has its own path prefix (`base_url = "http://HOST/a/{index}"`), so one
//! server tells thousands of accounts apart without per-account state: each payload is a pure
//! function of the account index and the time. Values burn steadily, so forecasts have something
//! to work on. The same functions produce the bodies the history simulation feeds to the
//! providers' parsers ([`crate::sim`]), so simulated and live history agree.

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration as ChronoDuration, NaiveDate, Utc};
use creditwatch::demo::imagerouter::window_start;
use creditwatch::forecast::schedule::{Every, Schedule};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What the fake upstream serves and how slowly.
#[derive(Debug, Clone)]
pub struct Options {
    /// Added before every answer, like a remote API's round trip.
    pub latency: Duration,
    /// API keys listed for every ImageRouter account.
    pub imagerouter_keys: usize,
}

/// A running fake upstream. Stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

struct Shared {
    opts: Options,
    /// Usage requests answered (polls), all accounts.
    polls: AtomicU64,
    /// When the first usage request arrived since the last [`Upstream::reset`].
    first: Mutex<Option<Instant>>,
    /// Proxied completions answered.
    completions: AtomicU64,
}

impl Upstream {
    pub async fn start(opts: Options) -> std::io::Result<Upstream> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            opts,
            polls: AtomicU64::new(0),
            first: Mutex::new(None),
            completions: AtomicU64::new(0),
        });
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(c.cancelled_owned())
                .await;
        });
        Ok(Upstream {
            addr,
            shared,
            cancel,
        })
    }

    /// The `base_url` of account `index`.
    pub fn base_url(&self, index: usize) -> String {
        format!("http://{}/a/{index}", self.addr)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Usage requests answered since the last reset.
    pub fn polls(&self) -> u64 {
        self.shared.polls.load(Ordering::Relaxed)
    }

    /// When the first usage request since the last reset arrived.
    pub fn first_request(&self) -> Option<Instant> {
        *self.shared.first.lock().unwrap()
    }

    /// Starts counting afresh (between the daemon's run and the baseline's).
    pub fn reset(&self) {
        self.shared.polls.store(0, Ordering::Relaxed);
        *self.shared.first.lock().unwrap() = None;
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn handle(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if path == "/v1/chat/completions" {
        return completion(&s, req).await;
    }
    if req.headers().get(header::AUTHORIZATION).is_none() {
        return (StatusCode::UNAUTHORIZED, "missing key").into_response();
    }
    s.first.lock().unwrap().get_or_insert_with(Instant::now);
    let Some((index, rest)) = path
        .strip_prefix("/a/")
        .and_then(|p| p.split_once('/'))
        .and_then(|(i, rest)| Some((i.parse::<usize>().ok()?, rest)))
    else {
        return (StatusCode::NOT_FOUND, "no such account").into_response();
    };
    // The answer is due `latency` after the request came in, so the time the fake takes to
    // write a large body (10 ms for 10,000 keys) is spent within it, not added to it: the round's
    // latency-bound limit assumes every answer takes `latency`.
    let due = tokio::time::Instant::now() + s.opts.latency;
    let now = Utc::now() + s.opts.latency;
    let body = match rest {
        "api/usage" => fluximage(index, now),
        "v1/credits" => imagerouter(
            index,
            now,
            query.contains("by_api_key=true"),
            s.opts.imagerouter_keys,
        ),
        "api/v1/usage" => {
            let days = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("days="))
                .and_then(|d| d.parse().ok())
                .unwrap_or(30);
            floow(index, now, days)
        }
        _ => return (StatusCode::NOT_FOUND, "no such endpoint").into_response(),
    };
    tokio::time::sleep_until(due).await;
    s.polls.fetch_add(1, Ordering::Relaxed);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A FluxRouter chat completion: a small JSON answer with the documented cost headers.
async fn completion(s: &Shared, req: Request) -> Response {
    // Read the request body like a real upstream would.
    let _ = axum::body::to_bytes(req.into_body(), 1 << 20).await;
    let n = s.completions.fetch_add(1, Ordering::Relaxed);
    let mut resp = Response::new(Body::from(
        r#"{"id":"cmpl","object":"chat.completion","model":"flux-lite","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":1,"total_tokens":13}}"#,
    ));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert("x-flux-cost-usd", HeaderValue::from_static("0.000412"));
    h.insert("x-flux-model", HeaderValue::from_static("flux-lite"));
    if let Ok(v) = HeaderValue::from_str(&format!("req_{n}")) {
        h.insert("x-flux-request-id", v);
    }
    resp
}

/// When the simulated accounts started spending.
pub fn epoch() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(2026, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
}

/// The provider of account `index`: the three polled providers in turn.
pub fn provider_of(index: usize) -> &'static str {
    ["fluximage", "imagerouter", "floow"][index % 3]
}

/// The `billing_anchor` of account `index` (a day from the 1st to the 28th).
pub fn billing_anchor(index: usize) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 1, 1 + (index % 28) as u32).unwrap()
}

/// Floow's `monthly_allowance` in the generated configs.
pub const FLOOW_ALLOWANCE: f64 = 3000.0;

fn hours(d: ChronoDuration) -> f64 {
    d.num_milliseconds() as f64 / 3_600_000.0
}

/// `GET /api/usage` of Fluximage account `index` at `now`.
pub fn fluximage(index: usize, now: DateTime<Utc>) -> String {
    let plan = ["starter", "pro", "agency"][index / 3 % 3];
    let (comp_limit, ai_monthly): (f64, f64) = match plan {
        "starter" => (200.0, 200.0),
        "pro" => (99_999.0, 1000.0),
        _ => (99_999.0, 10_000.0),
    };
    let period = Schedule::Monthly {
        anchor: billing_anchor(index),
    }
    .period_at(now)
    .expect("monthly schedules have periods");
    let elapsed = hours(now - period.start);
    // Enough to use 50% to 110% of the allocation in a 30-day period.
    let share = 0.5 + (index % 7) as f64 / 10.0;
    let ai_burn = ai_monthly * share * elapsed / 720.0;
    let ai_used = ai_burn.min(ai_monthly).floor();
    let topup_held: f64 = 50.0 * (index % 4) as f64;
    let topup = (topup_held - (ai_burn - ai_monthly).max(0.0))
        .max(0.0)
        .floor();
    let ai_remaining = ai_monthly - ai_used + topup;
    let comp_used = (comp_limit.min(400.0) * share * elapsed / 720.0)
        .floor()
        .min(comp_limit);
    format!(
        r#"{{"plan":"{plan}","compressor_used":{comp_used},"compressor_limit":{comp_limit},"ia_credits_used":{ai_used},"ia_credits_monthly":{ai_monthly},"ia_topup_credits":{topup},"ia_credits_remaining":{ai_remaining},"canCompress":{},"canUseIA":{},"topups":{{"small":"tp_small","medium":"tp_medium","large":"tp_large"}}}}"#,
        comp_used < comp_limit,
        ai_remaining > 0.0
    )
}

/// `GET /v1/credits` of ImageRouter account `index` at `now`, with `keys` keys when `by_key`.
pub fn imagerouter(index: usize, now: DateTime<Utc>, by_key: bool, keys: usize) -> String {
    let since = hours(now - epoch()).max(0.0);
    let usage = 0.01 * (1 + index % 5) as f64 * since;
    // A deposit of 100 USD whenever the balance would fall under 20.
    let deposits = 100.0 * ((usage + 20.0) / 100.0).ceil();
    let mut out = String::with_capacity(128 + if by_key { keys * 330 } else { 0 });
    let _ = write!(
        out,
        r#"{{"remaining_credits":"{:.4}","credit_usage":"{:.4}","total_deposits":"{:.4}""#,
        deposits - usage,
        usage,
        deposits
    );
    if by_key {
        out.push_str(r#","usage_by_api_key":["#);
        for j in 0..keys {
            if j > 0 {
                out.push(',');
            }
            key_entry(&mut out, index, j, now, since);
        }
        out.push(']');
    }
    out.push('}');
    out
}

fn key_entry(out: &mut String, index: usize, j: usize, now: DateTime<Utc>, since: f64) {
    let rate = 0.0005 * (1 + j % 7) as f64;
    let spent = rate * since;
    let requests = (spent * 100.0) as u64;
    let id = format!("{index:08x}-5e7c-4a1b-9f3d-{j:012x}");
    let expires = if j.is_multiple_of(5) {
        r#""2027-06-01T00:00:00.000Z""#
    } else {
        "null"
    };
    let _ = write!(
        out,
        r#"{{"api_key_id":"{id}","api_key_name":"key-{j}","credit_usage":"{spent:.4}","total_requests":{requests},"created_at":"2025-12-01T00:00:00.000Z","is_active":true,"#
    );
    let every = match j % 4 {
        0 => Some(("day", Every::Day)),
        1 => Some(("week", Every::Week)),
        2 => Some(("month", Every::Month)),
        _ => None,
    };
    match every {
        Some((name, every)) => {
            let start = window_start(every, now);
            let limit = 5.0 * (1 + j % 3) as f64;
            let period_spend = (rate * hours(now - start)).min(limit);
            let _ = write!(
                out,
                r#""spend_limit":"{limit:.4}","spend_limit_period":"{name}","period_spend":"{period_spend:.4}","period_start":"{}","expires_at":{expires}}}"#,
                start.format("%Y-%m-%dT%H:%M:%S%.3fZ")
            );
        }
        None => {
            let _ = write!(
                out,
                r#""spend_limit":null,"spend_limit_period":null,"period_spend":"{spent:.4}","period_start":null,"expires_at":{expires}}}"#
            );
        }
    }
}

/// `GET /api/v1/usage?days=N` of Floow account `index` at `now`: a steady number of credits a
/// day, today's bucket holding what was consumed since 00:00.
pub fn floow(index: usize, now: DateTime<Utc>, days: i64) -> String {
    let per_day = 50.0 + (index % 50) as f64;
    let today = now.date_naive();
    let start = today - ChronoDuration::days(days - 1);
    let today_frac = hours(now - today.and_hms_opt(0, 0, 0).unwrap().and_utc()) / 24.0;
    let today_credits = (per_day * today_frac).floor();
    let mut daily = String::with_capacity(days as usize * 48);
    let mut total = 0.0;
    for k in 0..days {
        let d = start + ChronoDuration::days(k);
        let credits = if d == today { today_credits } else { per_day };
        total += credits;
        if k > 0 {
            daily.push(',');
        }
        let _ = write!(
            daily,
            r#"{{"date":"{}","calls":{},"credits":{credits}}}"#,
            d.format("%Y-%m-%d"),
            (credits / 10.0).floor()
        );
    }
    let (html, code) = ((total * 0.6).floor(), (total * 0.3).floor());
    let figma = total - html - code;
    format!(
        r#"{{"period":{{"start":"{}T00:00:00.000Z","end":"{}","days":{days}}},"summary":{{"totalCalls":{},"totalCredits":{total},"byEndpoint":{{"image_to_html":{{"calls":{},"credits":{html},"label":"Image → HTML"}},"code_export":{{"calls":{},"credits":{code},"label":"Export Code"}},"figma_export":{{"calls":{},"credits":{figma},"label":"Figma Export"}}}}}},"daily":[{daily}]}}"#,
        start.format("%Y-%m-%d"),
        now.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        (total / 10.0).floor(),
        (html / 30.0).floor(),
        (code / 15.0).floor(),
        (figma / 10.0).floor(),
    )
}
