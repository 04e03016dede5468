//! The generic http_json provider end to end, on OpenRouter's documented `GET /api/v1/key` response.

use crate::support::{TestApp, assert_golden, manual_clock, normalize, spawn_in, value};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// OpenRouter's documented response for `GET /api/v1/key`.
pub const OPENROUTER: &str = r#"{
  "data": {
    "label": "sk-or-v1-au7...890",
    "limit": 100,
    "limit_remaining": 74.5,
    "limit_reset": "monthly",
    "include_byok_in_limit": false,
    "usage": 25.5,
    "usage_daily": 25.5,
    "usage_weekly": 25.5,
    "usage_monthly": 25.5,
    "byok_usage": 17.38,
    "byok_usage_daily": 17.38,
    "byok_usage_weekly": 17.38,
    "byok_usage_monthly": 17.38,
    "is_free_tier": false,
    "is_provisioning_key": false,
    "is_management_key": false,
    "creator_user_id": "user_2dHFtVWx2n56w6HkM0000000000",
    "expires_at": "2027-12-31T23:59:59Z",
    "rate_limit": { "requests": 1000, "interval": "1h", "note": "This field is deprecated and safe to ignore." }
  }
}"#;

/// The README's OpenRouter example, with the key read from a file and the upstream overridden.
fn config(upstream: &str) -> String {
    format!(
        r#"state_path = "{{dir}}/state.db"
[[account]]
name = "openrouter"
provider = "http_json"
url = "https://openrouter.ai/api/v1/key"
base_url = "{upstream}"
headers = {{ Authorization = {{ file = "{{dir}}/or.key", prefix = "Bearer " }}, X-Title = "creditwatch" }}
unit = "usd"
pool = "key"
remaining = "/data/limit_remaining"
used = "/data/usage_monthly"
limit = "/data/limit"
reset = "monthly"
billing_anchor = "2026-01-01"
interval = "1s"
timeout = "1s"
"#
    )
}

async fn upstream(status: u16, body: &str) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/key"))
        .and(header("authorization", "Bearer sk-or-v1-testkey"))
        .and(header("x-title", "creditwatch"))
        .respond_with(ResponseTemplate::new(status).set_body_string(body))
        .expect(1..)
        .mount(&server)
        .await;
    server
}

async fn start(body: &str, status: u16) -> (TestApp, MockServer) {
    let up = upstream(status, body).await;
    // The key file must exist before the config is read.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("or.key"), "sk-or-v1-testkey\n").unwrap();
    let app = spawn_in(dir, &config(&up.uri()), manual_clock()).await;
    app.wait_polls("openrouter", 1).await;
    (app, up)
}

#[tokio::test]
async fn openrouter_documented_example_gives_the_golden_exposition() {
    let (app, _up) = start(OPENROUTER, 200).await;
    let m = normalize(&app.metrics().await);
    // 25.5 of the month's 100 used on 2026-11-21T12:00Z, 20.5 days into November: the period
    // burn is 25.5 / 1771200 s, and 74.5 left lasts past the reset on Dec 1st.
    assert_eq!(value(&m, "creditwatch_remaining_usd", &[]), Some(74.5));
    assert_eq!(value(&m, "creditwatch_remaining_ratio", &[]), Some(0.745));
    assert_eq!(
        value(&m, "creditwatch_reset_timestamp_seconds", &[]),
        Some(1_796_083_200.0)
    );
    assert_golden("http_json_openrouter.prom", &m);
    app.stop().await;
}

#[tokio::test]
async fn a_key_without_a_limit_is_unlimited_not_zero() {
    let body = OPENROUTER
        .replace("\"limit\": 100", "\"limit\": null")
        .replace("\"limit_remaining\": 74.5", "\"limit_remaining\": null");
    let (app, _up) = start(&body, 200).await;
    let m = app.metrics().await;
    assert_eq!(value(&m, "creditwatch_used_usd", &[]), Some(25.5));
    for absent in [
        "creditwatch_remaining_usd",
        "creditwatch_limit_usd",
        "creditwatch_remaining_ratio",
        "creditwatch_exhaustion_timestamp_seconds",
    ] {
        assert_eq!(value(&m, absent, &[]), None, "{absent}");
    }
    app.stop().await;
}

#[tokio::test]
async fn errors_name_the_pointer_or_carry_the_message() {
    let (app, _up) = start(r#"{"data": {"usage_monthly": 1}}"#, 200).await;
    let err = app.running.state.account("openrouter").unwrap().last_error;
    assert_eq!(
        err.as_deref(),
        Some(
            "invalid response: JSON pointer \"/data/limit_remaining\" (remaining) finds nothing in the response"
        )
    );
    app.stop().await;
    let (app, _up) = start(
        r#"{"error":{"code":401,"message":"No auth credentials found"}}"#,
        401,
    )
    .await;
    let m = app.metrics().await;
    assert_eq!(
        value(&m, "creditwatch_scrape_errors_total", &["reason=\"auth\""]),
        Some(1.0)
    );
    let err = app.running.state.account("openrouter").unwrap().last_error;
    assert_eq!(
        err.as_deref(),
        Some("authentication rejected (HTTP 401): No auth credentials found")
    );
    app.stop().await;
}

#[tokio::test]
async fn the_demo_simulator_speaks_the_same_shape() {
    use creditwatch::demo::openrouter::{Params, Simulator};
    use creditwatch::forecast::schedule::Every;
    let clock = manual_clock();
    let sim = Simulator::new(
        clock.clone(),
        vec![Params {
            token: "sk-or-v1-testkey".into(),
            label: "sk-or-v1-tes...key".into(),
            limit: Some(100.0),
            limit_reset: Some(Every::Month),
            usage: 300.0,
            usage_month: 40.0,
            usd_per_second: 0.0,
        }],
    );
    let server = sim.serve().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("or.key"), "sk-or-v1-testkey").unwrap();
    let app = spawn_in(dir, &config(&server.url()), clock).await;
    app.wait_polls("openrouter", 1).await;
    let m = app.metrics().await;
    assert_eq!(value(&m, "creditwatch_used_usd", &[]), Some(40.0));
    assert_eq!(value(&m, "creditwatch_remaining_usd", &[]), Some(60.0));
    assert_eq!(sim.requests("sk-or-v1-testkey"), 1);
    app.stop().await;
}
