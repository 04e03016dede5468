//! Fluximage end to end: documented payloads served by a fake upstream, numbers read back from /metrics.

use crate::support::{assert_golden, manual_clock, normalize, series, spawn, value};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The documented example response, byte for byte.
pub const DOCUMENTED: &str = r#"{
  "plan": "pro",
  "compressor_used": 45,
  "compressor_limit": 99999,
  "ia_credits_used": 120,
  "ia_credits_monthly": 1000,
  "ia_topup_credits": 200,
  "ia_credits_remaining": 1080,
  "canCompress": true,
  "canUseIA": true,
  "topups": { "small": "...", "medium": "...", "large": "..." }
}"#;

pub fn config(upstream: &str) -> String {
    format!(
        r#"state_path = "{{dir}}/state.db"
[[account]]
name = "images-prod"
provider = "fluximage"
api_key = "flx_live_testkey"
base_url = "{upstream}"
billing_anchor = "2026-01-15"
interval = "1m"
"#
    )
}

async fn upstream(status: u16, body: &str) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/usage"))
        .and(header("authorization", "Bearer flx_live_testkey"))
        .respond_with(ResponseTemplate::new(status).set_body_string(body))
        .expect(1..)
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn documented_example_gives_the_golden_exposition() {
    let up = upstream(200, DOCUMENTED).await;
    let app = spawn(&config(&up.uri()), manual_clock()).await;
    app.wait_polls("images-prod", 1).await;
    assert_golden(
        "fluximage_documented.prom",
        &normalize(&app.metrics().await),
    );
    app.stop().await;
}

fn body(
    plan: &str,
    c_used: u64,
    c_limit: u64,
    ia_used: u64,
    ia_monthly: u64,
    topup: u64,
) -> String {
    let remaining = ia_monthly.saturating_sub(ia_used) + topup;
    format!(
        r#"{{"plan":"{plan}","compressor_used":{c_used},"compressor_limit":{c_limit},"ia_credits_used":{ia_used},
        "ia_credits_monthly":{ia_monthly},"ia_topup_credits":{topup},"ia_credits_remaining":{remaining},
        "canCompress":{},"canUseIA":{},"topups":{{}}}}"#,
        c_used < c_limit,
        plan != "free" && remaining > 0
    )
}

#[tokio::test]
async fn starter_plan_has_limited_compression_and_ai() {
    let up = upstream(200, &body("starter", 150, 200, 180, 200, 50)).await;
    let app = spawn(&config(&up.uri()), manual_clock()).await;
    app.wait_polls("images-prod", 1).await;
    let m = app.metrics().await;
    let c = ["pool=\"compression\""];
    assert_eq!(value(&m, "creditwatch_remaining_credits", &c), Some(50.0));
    assert_eq!(value(&m, "creditwatch_limit_credits", &c), Some(200.0));
    assert_eq!(value(&m, "creditwatch_remaining_ratio", &c), Some(0.25));
    let ai = ["pool=\"ai\""];
    // 20 of the monthly 200 left plus 50 top-up credits; limit = used + remaining.
    assert_eq!(value(&m, "creditwatch_remaining_credits", &ai), Some(70.0));
    assert_eq!(value(&m, "creditwatch_limit_credits", &ai), Some(250.0));
    assert_eq!(value(&m, "creditwatch_remaining_ratio", &ai), Some(0.28));
    assert_eq!(
        value(&m, "creditwatch_account_info", &["plan=\"starter\""]),
        Some(1.0)
    );
    app.stop().await;
}

#[tokio::test]
async fn pro_plan_compression_is_unlimited() {
    let up = upstream(200, &body("pro", 5000, 99999, 10, 1000, 0)).await;
    let app = spawn(&config(&up.uri()), manual_clock()).await;
    app.wait_polls("images-prod", 1).await;
    let m = app.metrics().await;
    let c = ["pool=\"compression\""];
    assert_eq!(value(&m, "creditwatch_used_credits", &c), Some(5000.0));
    for absent in [
        "creditwatch_remaining_credits",
        "creditwatch_limit_credits",
        "creditwatch_remaining_ratio",
        "creditwatch_exhaustion_timestamp_seconds",
        "creditwatch_exhausts_before_reset",
        "creditwatch_projected_remaining_at_reset_credits",
    ] {
        assert_eq!(
            value(&m, absent, &c),
            None,
            "{absent} must be absent for unlimited compression"
        );
    }
    assert_eq!(value(&m, "creditwatch_pool_available", &c), Some(1.0));
    assert_eq!(
        value(&m, "creditwatch_remaining_credits", &["pool=\"ai\""]),
        Some(990.0)
    );
    app.stop().await;
}

#[tokio::test]
async fn free_plan_has_compression_only() {
    let up = upstream(200, &body("free", 20, 20, 0, 0, 0)).await;
    let app = spawn(&config(&up.uri()), manual_clock()).await;
    app.wait_polls("images-prod", 1).await;
    let m = app.metrics().await;
    assert_eq!(
        value(
            &m,
            "creditwatch_remaining_credits",
            &["pool=\"compression\""]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(&m, "creditwatch_pool_available", &["pool=\"compression\""]),
        Some(0.0)
    );
    assert!(
        series(&m, "creditwatch_used_credits")
            .iter()
            .all(|l| !l.contains("pool=\"ai\""))
    );
    assert_eq!(
        value(&m, "creditwatch_account_info", &["plan=\"free\""]),
        Some(1.0)
    );
    app.stop().await;
}

/// A failed poll exports `up 0` and the error counter, and no value that could read as a balance.
async fn failing(status: u16, body: &str, reason: &str) -> String {
    let up = upstream(status, body).await;
    let app = spawn(&config(&up.uri()), manual_clock()).await;
    app.wait_polls("images-prod", 1).await;
    let m = app.metrics().await;
    assert_eq!(
        value(&m, "creditwatch_up", &["account=\"images-prod\""]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &m,
            "creditwatch_scrape_errors_total",
            &[&format!("reason=\"{reason}\"")]
        ),
        Some(1.0)
    );
    for absent in [
        "creditwatch_remaining_credits",
        "creditwatch_used_credits",
        "creditwatch_last_success_timestamp_seconds",
        "creditwatch_account_info",
    ] {
        assert!(
            series(&m, absent).is_empty(),
            "{absent} exported before a successful poll"
        );
    }
    let err = app
        .running
        .state
        .account("images-prod")
        .unwrap()
        .last_error
        .unwrap();
    assert!(!err.contains("flx_live_testkey"), "secret in error: {err}");
    app.stop().await;
    err
}

#[tokio::test]
async fn unauthorized_is_reason_auth() {
    let err = failing(401, "{\"message\":\"bad key\"}", "auth").await;
    assert_eq!(err, "authentication rejected (HTTP 401)");
}

#[tokio::test]
async fn server_error_is_reason_http() {
    let err = failing(503, "busy", "http").await;
    assert_eq!(err, "upstream answered HTTP 503");
}

#[tokio::test]
async fn a_body_that_is_not_json_is_reason_parse() {
    let err = failing(
        200,
        "<html><body>Service Unavailable</body></html>",
        "parse",
    )
    .await;
    assert!(
        err.starts_with("invalid response: body is not valid JSON"),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_field_is_named() {
    let body = DOCUMENTED.replace("  \"ia_credits_remaining\": 1080,\n", "");
    let err = failing(200, &body, "parse").await;
    assert!(
        err.contains("missing field `ia_credits_remaining`"),
        "{err}"
    );
}
