//! ImageRouter end to end: documented payloads from a fake upstream, keys, windows and errors read back from /metrics.

use crate::support::{assert_golden, normalize, series, spawn, value};
use chrono::{DateTime, Utc};
use creditwatch::clock::{Clock, ManualClock};
use creditwatch::demo::imagerouter::{KeyParams, Params, Simulator};
use creditwatch::forecast::schedule::Every;
use std::sync::Arc;
use std::time::Duration;
use wiremock::matchers::{header, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The documented plain response, byte for byte.
pub const DOCUMENTED: &str =
    r#"{ "remaining_credits": "25.5000", "credit_usage": "4.5000", "total_deposits": "30.0000" }"#;

/// The documented `by_api_key=true` response, byte for byte.
pub const DOCUMENTED_BY_KEY: &str = r#"{
  "remaining_credits": "25.5000",
  "credit_usage": "4.5000",
  "total_deposits": "30.0000",
  "usage_by_api_key": [
    {
      "api_key_id": "d9eb93dc-56b1-4216-91b5-a44944508bbc",
      "api_key_name": "Production Key",
      "credit_usage": "4.2000",
      "total_requests": 150,
      "created_at": "2023-10-01T12:00:00.000Z",
      "is_active": true,
      "spend_limit": "5.0000",
      "spend_limit_period": "month",
      "period_spend": "1.2000",
      "period_start": "2026-05-01T00:00:00.000Z",
      "expires_at": "2027-01-01T00:00:00.000Z"
    },
    {
      "api_key_id": "temp_jwt",
      "api_key_name": "Temporary web token (imagerouter.io)",
      "credit_usage": "0.0300",
      "total_requests": 45,
      "created_at": null,
      "is_active": false,
      "spend_limit": null,
      "spend_limit_period": null,
      "period_spend": "0.0300",
      "period_start": null,
      "expires_at": null
    }
  ]
}"#;

const ERROR_BODY: &str =
    r#"{ "error": { "message": "Failed to fetch credit information", "type": "internal_error" } }"#;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn config(upstream: &str, per_key: bool) -> String {
    format!(
        r#"state_path = "{{dir}}/state.db"
[[account]]
name = "router"
provider = "imagerouter"
api_key = "ir_testkey"
base_url = "{upstream}"
per_key = {per_key}
interval = "1s"
timeout = "1s"
"#
    )
}

async fn upstream(status: u16, body: &str, per_key: bool) -> MockServer {
    let server = MockServer::start().await;
    let m = Mock::given(method("GET"))
        .and(path("/v1/credits"))
        .and(header("authorization", "Bearer ir_testkey"));
    let m = if per_key {
        m.and(query_param("by_api_key", "true"))
    } else {
        m.and(query_param_is_missing("by_api_key"))
    };
    m.respond_with(ResponseTemplate::new(status).set_body_string(body))
        .expect(1..)
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn documented_balance_gives_the_golden_exposition() {
    let up = upstream(200, DOCUMENTED, false).await;
    let clock = Arc::new(ManualClock::new(t("2026-05-20T12:00:00Z")));
    let app = spawn(&config(&up.uri(), false), clock).await;
    app.wait_polls("router", 1).await;
    // Balance 25.5 of 30 deposited: ratio 0.85; it never resets, so no reset series and
    // exhausts_before_reset 0; no burn is known yet.
    assert_golden(
        "imagerouter_balance_documented.prom",
        &normalize(&app.metrics().await),
    );
    app.stop().await;
}

#[tokio::test]
async fn documented_keys_give_the_golden_exposition() {
    let up = upstream(200, DOCUMENTED_BY_KEY, true).await;
    let clock = Arc::new(ManualClock::new(t("2026-05-20T12:00:00Z")));
    let app = spawn(&config(&up.uri(), true), clock).await;
    app.wait_polls("router", 1).await;
    let m = normalize(&app.metrics().await);
    // The Production Key: 1.2 of 5 spent since 2026-05-01 (1777593600); the month window resets
    // 2026-06-01 (1780272000). Period burn 1.2 / 1684800 s; at that burn the 3.8 left last
    // 5335200 s, past the reset (993600 s away), leaving 3.8 − 0.70769… = 3.0923… at the reset.
    let k = ["key=\"Production Key\""];
    assert_eq!(value(&m, "creditwatch_remaining_usd", &k), Some(3.8));
    assert_eq!(
        value(&m, "creditwatch_reset_timestamp_seconds", &k),
        Some(1_780_272_000.0)
    );
    assert_eq!(
        value(&m, "creditwatch_key_expiry_timestamp_seconds", &k),
        Some(1_798_761_600.0)
    );
    // The temp_jwt key: inactive, no expiry, no spend limit and so no pool.
    let jwt = ["key=\"Temporary web token (imagerouter.io)\""];
    assert_eq!(value(&m, "creditwatch_key_active", &jwt), Some(0.0));
    assert_eq!(
        value(&m, "creditwatch_key_requests_total", &jwt),
        Some(45.0)
    );
    assert_eq!(
        value(&m, "creditwatch_key_expiry_timestamp_seconds", &jwt),
        None
    );
    assert_eq!(value(&m, "creditwatch_used_usd", &jwt), None);
    assert_golden("imagerouter_keys_documented.prom", &m);
    app.stop().await;
}

async fn failing(status: u16, body: &str, reason: &str) -> String {
    let up = upstream(status, body, true).await;
    let clock = Arc::new(ManualClock::new(t("2026-05-20T12:00:00Z")));
    let app = spawn(&config(&up.uri(), true), clock).await;
    app.wait_polls("router", 1).await;
    let m = app.metrics().await;
    assert_eq!(value(&m, "creditwatch_up", &[]), Some(0.0));
    assert_eq!(
        value(
            &m,
            "creditwatch_scrape_errors_total",
            &[&format!("reason=\"{reason}\"")]
        ),
        Some(1.0)
    );
    for absent in [
        "creditwatch_remaining_usd",
        "creditwatch_used_usd",
        "creditwatch_key_active",
    ] {
        assert!(series(&m, absent).is_empty(), "{absent} exported");
    }
    let err = app
        .running
        .state
        .account("router")
        .unwrap()
        .last_error
        .unwrap();
    assert!(!err.contains("ir_testkey"), "secret in error: {err}");
    app.stop().await;
    err
}

#[tokio::test]
async fn the_documented_error_body_reaches_the_error_message() {
    let err = failing(500, ERROR_BODY, "http").await;
    assert_eq!(
        err,
        "upstream answered HTTP 500: Failed to fetch credit information (internal_error)"
    );
    let err = failing(
        401,
        r#"{"error":{"message":"Invalid API key","type":"authentication_error"}}"#,
        "auth",
    )
    .await;
    assert_eq!(
        err,
        "authentication rejected (HTTP 401): Invalid API key (authentication_error)"
    );
}

#[tokio::test]
async fn nan_money_never_becomes_a_value() {
    let body = DOCUMENTED_BY_KEY.replacen("\"25.5000\"", "\"NaN\"", 1);
    let err = failing(200, &body, "parse").await;
    assert_eq!(
        err,
        "invalid response: field `remaining_credits` is not a decimal number (\"NaN\"); expected a decimal string like \"25.5000\""
    );
    let body = DOCUMENTED_BY_KEY.replacen("\"0.0300\"", "\"-0.0300\"", 1);
    let err = failing(200, &body, "parse").await;
    assert!(
        err.starts_with("invalid response: field `usage_by_api_key[1].credit_usage` is negative"),
        "{err}"
    );
}

/// Waits for a successful poll taken at the clock's current time.
async fn poll_at(app: &crate::support::TestApp, clock: &ManualClock, account: &str) {
    let now = clock.now();
    app.running
        .state
        .wait_until(|s| s.account(account).and_then(|a| a.last_success) == Some(now))
        .await;
}

fn sim_config(url: &str) -> String {
    format!(
        "state_path = \"{{dir}}/state.db\"\n[defaults]\nburn_windows = [\"10m\"]\nforecast_window = \"10m\"\n[[account]]\nname = \"router\"\nprovider = \"imagerouter\"\napi_key = \"tok\"\nbase_url = \"{url}\"\ninterval = \"1s\"\ntimeout = \"1s\"\n"
    )
}

#[tokio::test]
async fn keys_that_vanish_upstream_vanish_from_metrics() {
    let clock = Arc::new(ManualClock::new(t("2026-05-20T12:00:00Z")));
    let mut p = Params::documented("tok", clock.now());
    p.keys.push(KeyParams {
        spend_limit: Some(3.0),
        period: Some(Every::Week),
        ..KeyParams::new("0b7e-staging", "Staging")
    });
    let sim = Simulator::new(clock.clone(), vec![p]);
    let server = sim.serve().await.unwrap();
    let app = spawn(&sim_config(&server.url()), clock.clone()).await;
    app.wait_polls("router", 1).await;
    let m = app.metrics().await;
    let staging = ["key=\"Staging\""];
    assert_eq!(value(&m, "creditwatch_key_active", &staging), Some(1.0));
    assert_eq!(value(&m, "creditwatch_limit_usd", &staging), Some(3.0));
    // Nothing spent this week: used 0, remaining the whole limit, no reset time yet.
    assert_eq!(value(&m, "creditwatch_used_usd", &staging), Some(0.0));
    assert_eq!(
        value(&m, "creditwatch_reset_timestamp_seconds", &staging),
        None
    );

    sim.remove_key("tok", "0b7e-staging");
    clock.advance(Duration::from_secs(60));
    poll_at(&app, &clock, "router").await;
    let m = app.metrics().await;
    assert!(
        !m.contains("key=\"Staging\""),
        "a deleted key is still exported:\n{m}"
    );
    assert_eq!(
        value(&m, "creditwatch_key_active", &["key=\"Production Key\""]),
        Some(1.0)
    );
    app.stop().await;
}

#[tokio::test]
async fn a_month_window_rolls_over_at_the_end_of_a_leap_february() {
    // 10 minutes before March 2028: a key spending 0.001 USD/s in a month window.
    let clock = Arc::new(ManualClock::new(t("2028-02-29T23:50:00Z")));
    let key = KeyParams {
        spend_limit: Some(50.0),
        period: Some(Every::Month),
        usd_per_second: 0.001,
        period_spend: 20.0,
        credit_usage: 20.0,
        ..KeyParams::new("k-prod", "Prod")
    };
    let sim = Simulator::new(
        clock.clone(),
        vec![Params {
            token: "tok".into(),
            total_deposits: 100.0,
            credit_usage: 20.0,
            keys: vec![key],
            deposit_every: None,
            deposit_amount: 0.0,
        }],
    );
    let server = sim.serve().await.unwrap();
    let app = spawn(&sim_config(&server.url()), clock.clone()).await;
    app.wait_polls("router", 1).await;
    let k = ["key=\"Prod\""];
    let m = app.metrics().await;
    assert_eq!(
        value(&m, "creditwatch_period_start_timestamp_seconds", &k),
        Some(t("2028-02-01T00:00:00Z").timestamp() as f64)
    );
    assert_eq!(
        value(&m, "creditwatch_reset_timestamp_seconds", &k),
        Some(t("2028-03-01T00:00:00Z").timestamp() as f64)
    );

    // Five minutes later, still in February: 0.3 USD more.
    clock.advance(Duration::from_secs(300));
    poll_at(&app, &clock, "router").await;
    let m = app.metrics().await;
    assert_eq!(value(&m, "creditwatch_used_usd", &k), Some(20.3));
    assert_eq!(
        value(&m, "creditwatch_consumed_usd_total", &k),
        Some(0.3000000000000007)
    );
    assert_eq!(
        value(
            &m,
            "creditwatch_burn_rate_usd_per_second",
            &["key=\"Prod\"", "window=\"10m\""]
        ),
        Some(0.0010000000000000024)
    );

    // Ten minutes later it is 00:05 on March 1st: the window restarted at midnight with 0.3
    // spent since. The 0.3 spent in February's last five minutes fell before the reset and is
    // not seen; what is counted never goes negative.
    clock.advance(Duration::from_secs(600));
    poll_at(&app, &clock, "router").await;
    let m = app.metrics().await;
    assert_eq!(value(&m, "creditwatch_used_usd", &k), Some(0.3));
    assert_eq!(value(&m, "creditwatch_remaining_usd", &k), Some(49.7));
    assert_eq!(
        value(&m, "creditwatch_period_start_timestamp_seconds", &k),
        Some(t("2028-03-01T00:00:00Z").timestamp() as f64)
    );
    assert_eq!(
        value(&m, "creditwatch_reset_timestamp_seconds", &k),
        Some(t("2028-04-01T00:00:00Z").timestamp() as f64)
    );
    assert_eq!(
        value(&m, "creditwatch_consumed_usd_total", &k),
        Some(0.6000000000000007)
    );
    // The balance never resets: it saw all 0.9 USD.
    let b = ["pool=\"balance\""];
    assert_eq!(value(&m, "creditwatch_used_usd", &b), Some(20.9));
    assert_eq!(value(&m, "creditwatch_remaining_usd", &b), Some(79.1));
    app.stop().await;
}

#[tokio::test]
async fn money_with_zero_one_and_four_decimals() {
    let up = upstream(
        200,
        r#"{ "remaining_credits": "25", "credit_usage": "4.5", "total_deposits": "29.5000" }"#,
        false,
    )
    .await;
    let clock = Arc::new(ManualClock::new(t("2026-05-20T12:00:00Z")));
    let app = spawn(&config(&up.uri(), false), clock).await;
    app.wait_polls("router", 1).await;
    let m = app.metrics().await;
    assert_eq!(value(&m, "creditwatch_remaining_usd", &[]), Some(25.0));
    assert_eq!(value(&m, "creditwatch_used_usd", &[]), Some(4.5));
    assert_eq!(value(&m, "creditwatch_limit_usd", &[]), Some(29.5));
    assert!(m.contains(
        "creditwatch_used_usd{provider=\"imagerouter\",account=\"router\",pool=\"balance\",key=\"\"} 4.5\n"
    ));
    app.stop().await;
}
