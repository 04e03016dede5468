//! A simulated FluxRouter API (costed chat completions, SSE streams without a cost, injectable errors) and demo traffic through the proxy.
//!
//! Built from the provider reference: every non-streaming response carries `X-Flux-Cost-Usd`,
//! `X-Flux-Model` and `X-Flux-Request-Id`; streaming responses carry no cost header. Costs are
//! tokens times the serving lane's input and output rates, exact to the micro-dollar. The
//! simulator keeps what it billed, so tests can compare the proxy's ledger with the truth.

use super::SimServer;
use axum::Router;
use axum::body::Body;
use axum::extract::{Json, State as Extract};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rust_decimal::Decimal;
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A lane: a model and its rates in USD per million tokens.
#[derive(Debug, Clone)]
pub struct Lane {
    pub model: &'static str,
    pub input_per_mtok: Decimal,
    pub output_per_mtok: Decimal,
}

/// The simulated lanes; `flux-auto` routes between them.
pub fn lanes() -> Vec<Lane> {
    vec![
        Lane {
            model: "flux-lite",
            input_per_mtok: Decimal::new(15, 2),
            output_per_mtok: Decimal::new(60, 2),
        },
        Lane {
            model: "flux-pro",
            input_per_mtok: Decimal::new(3, 0),
            output_per_mtok: Decimal::new(15, 0),
        },
    ]
}

/// A canned failure served instead of completions.
#[derive(Debug, Clone, Deserialize)]
pub struct Fault {
    pub status: u16,
    #[serde(default)]
    pub body: String,
    /// How many requests fail; `None` = until cleared.
    pub count: Option<u32>,
}

/// What the simulator billed, priced (non-streaming) and streamed separately.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Billed {
    pub priced: Decimal,
    pub priced_requests: u64,
    pub streamed: Decimal,
    pub streamed_requests: u64,
}

/// The simulator's state, shared by its handlers and the tests that drive it.
pub struct Simulator {
    counter: AtomicU64,
    fault: Mutex<Option<Fault>>,
    billed: Mutex<Billed>,
    /// Pause between SSE events.
    event_gap: Duration,
}

#[derive(Deserialize)]
struct ChatRequest {
    #[serde(default = "auto")]
    model: String,
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    stream: bool,
    max_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: String,
}

fn auto() -> String {
    "flux-auto".into()
}

/// A deterministic spread of numbers from a request counter (no randomness: reproducible demos).
fn spread(n: u64, lo: u64, hi: u64) -> u64 {
    let x = n
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        >> 33;
    lo + x % (hi - lo + 1)
}

fn api_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"message": message, "type": kind}});
    (status, Json(body)).into_response()
}

impl Simulator {
    pub fn new() -> Arc<Self> {
        Arc::new(Simulator {
            counter: AtomicU64::new(0),
            fault: Mutex::new(None),
            billed: Mutex::default(),
            event_gap: Duration::from_millis(20),
        })
    }

    /// Serves `fault` instead of completions until cleared (or `count` requests).
    pub fn set_fault(&self, fault: Option<Fault>) {
        *self.fault.lock().unwrap() = fault;
    }

    /// What has been billed so far.
    pub fn billed(&self) -> Billed {
        self.billed.lock().unwrap().clone()
    }

    /// The HTTP routes: the OpenAI-style API plus `/_sim/fault`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(completions))
            .route("/v1/models", get(models))
            .route("/_sim/fault", post(fault_handler))
            .with_state(self.clone())
    }

    /// Starts the simulator on an ephemeral loopback port.
    pub async fn serve(self: &Arc<Self>) -> std::io::Result<SimServer> {
        SimServer::start(self.router()).await
    }

    fn take_fault(&self) -> Option<Fault> {
        let mut f = self.fault.lock().unwrap();
        let current = f.clone();
        if let Some(fault) = f.as_mut()
            && let Some(n) = fault.count.as_mut()
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                *f = None;
            }
        }
        current
    }
}

async fn models() -> Response {
    let data: Vec<_> = lanes()
        .iter()
        .map(|l| serde_json::json!({"id": l.model, "object": "model", "owned_by": "fluxrouter"}))
        .chain(std::iter::once(
            serde_json::json!({"id": "flux-auto", "object": "model", "owned_by": "fluxrouter"}),
        ))
        .collect();
    Json(serde_json::json!({"object": "list", "data": data})).into_response()
}

async fn completions(
    Extract(sim): Extract<Arc<Simulator>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(f) = sim.take_fault() {
        let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (status, f.body).into_response();
    }
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|k| !k.trim().is_empty());
    if !authorized {
        return api_error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "Missing or invalid API key",
        );
    }
    let req: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("invalid JSON body: {e}"),
            );
        }
    };
    let n = sim.counter.fetch_add(1, Ordering::Relaxed);
    let all = lanes();
    let lane = if req.model == "flux-auto" {
        // Long prompts go to the strong lane, and every third short one too.
        let chars: usize = req.messages.iter().map(|m| m.content.len()).sum();
        if chars > 2000 || n % 3 == 0 {
            all[1].clone()
        } else {
            all[0].clone()
        }
    } else {
        match all.iter().find(|l| l.model == req.model) {
            Some(l) => l.clone(),
            None => {
                return api_error(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    &format!("The model `{}` does not exist", req.model),
                );
            }
        }
    };
    let input: u64 = req
        .messages
        .iter()
        .map(|m| m.content.len() as u64 / 4 + 4)
        .sum::<u64>()
        .max(1);
    let output = spread(n, 40, 600)
        .min(req.max_tokens.unwrap_or(u64::MAX))
        .max(1);
    let cost = ((Decimal::from(input) * lane.input_per_mtok
        + Decimal::from(output) * lane.output_per_mtok)
        / Decimal::from(1_000_000))
    .round_dp(6)
    .max(Decimal::new(1, 6));
    let request_id = format!("req_{:016x}", spread(n, 0, u64::MAX - 1));
    let id = format!("chatcmpl-{n}");
    {
        let mut b = sim.billed.lock().unwrap();
        if req.stream {
            b.streamed += cost;
            b.streamed_requests += 1;
        } else {
            b.priced += cost;
            b.priced_requests += 1;
        }
    }
    let text: Vec<String> = (0..output.min(60))
        .map(|i| ["flux", "router", "says", "hello", "again"][(i % 5) as usize].to_string())
        .collect();
    let mut resp = if req.stream {
        let gap = sim.event_gap;
        let model = lane.model;
        let events = futures_util::stream::unfold(0usize, move |i| {
            let text = text.clone();
            let id = id.clone();
            async move {
                let event = if i < text.len() {
                    serde_json::json!({"id": id, "object": "chat.completion.chunk", "model": model,
                        "choices": [{"index": 0, "delta": {"content": format!("{} ", text[i])}, "finish_reason": null}]})
                    .to_string()
                } else if i == text.len() {
                    serde_json::json!({"id": id, "object": "chat.completion.chunk", "model": model,
                        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
                    .to_string()
                } else if i == text.len() + 1 {
                    "[DONE]".to_string()
                } else {
                    return None;
                };
                if i > 0 {
                    tokio::time::sleep(gap).await;
                }
                Some((
                    Ok::<_, std::io::Error>(bytes::Bytes::from(format!("data: {event}\n\n"))),
                    i + 1,
                ))
            }
        });
        let mut r = Response::new(Body::from_stream(events));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        r
    } else {
        let mut r = Json(serde_json::json!({
            "id": id, "object": "chat.completion", "model": lane.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text.join(" ")}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output}
        }))
        .into_response();
        r.headers_mut().insert(
            "x-flux-cost-usd",
            HeaderValue::from_str(&format!("{cost:.6}")).expect("ASCII"),
        );
        r
    };
    let h = resp.headers_mut();
    h.insert("x-flux-model", HeaderValue::from_static(lane.model));
    h.insert(
        "x-flux-request-id",
        HeaderValue::from_str(&request_id).expect("ASCII"),
    );
    resp
}

async fn fault_handler(
    Extract(sim): Extract<Arc<Simulator>>,
    Json(f): Json<Option<Fault>>,
) -> StatusCode {
    sim.set_fault(f);
    StatusCode::NO_CONTENT
}

/// Demo traffic through a proxy; stops when dropped.
pub struct Traffic {
    cancel: CancellationToken,
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Sends a request through the proxy every `every`: mostly costed completions on every lane, one
/// in five streamed, alternating between `keys`.
pub fn generate(proxy: SocketAddr, keys: Vec<String>, every: Duration) -> Traffic {
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut tick = tokio::time::interval(every);
        for n in 0u64.. {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let model = ["flux-auto", "flux-lite", "flux-pro", "flux-auto"][(n % 4) as usize];
            let stream = n % 5 == 4;
            let prompt = "Summarise the incident timeline for the on-call handover. "
                .repeat(spread(n, 2, 40) as usize);
            let body = serde_json::json!({
                "model": model, "stream": stream,
                "messages": [{"role": "user", "content": prompt}]
            });
            let key = &keys[(n as usize) % keys.len().max(1)];
            let send = client
                .post(format!("http://{proxy}/v1/chat/completions"))
                .bearer_auth(key)
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.to_string())
                .send();
            // Each request runs on its own so a slow stream never holds up the rhythm.
            tokio::spawn(async move {
                match send.await {
                    Ok(r) => {
                        let _ = r.bytes().await;
                    }
                    Err(e) => tracing::debug!(error = %e, "demo traffic request failed"),
                }
            });
        }
    });
    Traffic { cancel }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn completions_are_costed_and_streams_are_not() {
        let sim = Simulator::new();
        let server = sim.serve().await.unwrap();
        let client = reqwest::Client::new();
        let url = format!("{}/v1/chat/completions", server.url());
        let body = |stream| {
            serde_json::json!({"model": "flux-pro", "stream": stream,
                "messages": [{"role": "user", "content": "x".repeat(400)}]})
            .to_string()
        };
        let r = client
            .post(&url)
            .bearer_auth("k")
            .body(body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let cost: Decimal = r.headers()["x-flux-cost-usd"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(r.headers()["x-flux-model"], "flux-pro");
        assert!(
            r.headers()["x-flux-request-id"]
                .to_str()
                .unwrap()
                .starts_with("req_")
        );
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        // 104 input tokens at $3/M and the completion's output tokens at $15/M.
        let out = v["usage"]["completion_tokens"].as_u64().unwrap();
        assert_eq!(v["usage"]["prompt_tokens"], 104);
        let expected =
            (Decimal::from(104 * 3) + Decimal::from(out * 15)) / Decimal::from(1_000_000);
        assert_eq!(cost, expected.round_dp(6));

        let r = client
            .post(&url)
            .bearer_auth("k")
            .body(body(true))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        assert!(r.headers().get("x-flux-cost-usd").is_none());
        let text = String::from_utf8(r.bytes().await.unwrap().to_vec()).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        let b = sim.billed();
        assert_eq!(
            (b.priced, b.priced_requests, b.streamed_requests),
            (cost, 1, 1)
        );

        let r = client.post(&url).body(body(false)).send().await.unwrap();
        assert_eq!(r.status(), 401);
        sim.set_fault(Some(Fault {
            status: 503,
            body: "overloaded".into(),
            count: Some(1),
        }));
        let r = client
            .post(&url)
            .bearer_auth("k")
            .body(body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
        let r = client
            .post(&url)
            .bearer_auth("k")
            .body(body(false))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}
