//! Floow end to end: the documented payload, the daily series as history, long periods, zero days and error bodies.

use crate::support::{TestApp, assert_golden, normalize, spawn, value};
use chrono::{DateTime, NaiveDate, Utc};
use creditwatch::clock::{Clock, ManualClock};
use creditwatch::demo::floow::{EndpointParams, KeyParams, Params, Simulator};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use wiremock::matchers::{header, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// The documented example response, byte for byte (its `daily` is abridged to three days).
pub const DOCUMENTED: &str = r#"{
  "period": { "start": "2026-03-13T00:00:00.000Z", "end": "2026-04-12T14:30:00.000Z", "days": 30 },
  "key": { "id": "clxyz01abc", "name": "Production Key", "lastUsed": "2026-04-12T14:29:00.000Z" },
  "summary": {
    "totalCalls": 47,
    "totalCredits": 855,
    "byEndpoint": {
      "image_to_html": { "calls": 20, "credits": 600, "label": "Image → HTML" },
      "code_export":   { "calls": 18, "credits": 270, "label": "Export Code" },
      "figma_export":  { "calls": 9,  "credits": 90,  "label": "Figma Export" }
    }
  },
  "daily": [
    { "date": "2026-04-10", "calls": 5,  "credits": 90 },
    { "date": "2026-04-11", "calls": 12, "credits": 225 },
    { "date": "2026-04-12", "calls": 8,  "credits": 150 }
  ]
}"#;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn day(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

fn config(upstream: &str, extra: &str) -> String {
    format!(
        r#"state_path = "{{dir}}/state.db"
[[account]]
name = "design"
provider = "floow"
api_key = "fl_testkey"
base_url = "{upstream}"
billing_anchor = "2026-01-15"
interval = "1s"
timeout = "1s"
{extra}"#
    )
}

async fn upstream(status: u16, body: &str) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/usage"))
        .and(header("authorization", "Bearer fl_testkey"))
        // Default burn windows (1h, 24h): the longest billing period, 31 days, decides.
        .and(query_param("days", "31"))
        .and(query_param_is_missing("keyId"))
        .respond_with(ResponseTemplate::new(status).set_body_string(body))
        .expect(1..)
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn documented_example_gives_the_golden_exposition() {
    let up = upstream(200, DOCUMENTED).await;
    let clock = Arc::new(ManualClock::new(t("2026-04-12T14:30:00Z")));
    let app = spawn(&config(&up.uri(), "monthly_allowance = 1000\n"), clock).await;
    app.wait_polls("design", 1).await;
    let m = normalize(&app.metrics().await);
    // The period began 2026-03-15 (anchor the 15th): used = 90 + 225 + 150 = 465 of 1000.
    assert_eq!(value(&m, "creditwatch_used_credits", &[]), Some(465.0));
    assert_eq!(value(&m, "creditwatch_remaining_credits", &[]), Some(535.0));
    // History from the first poll: the 24h window starts yesterday at 14:30, 9.5 hours before
    // the end of yesterday's 225 credits, and today's 150 follow. The 1h window starts inside
    // today's bucket, so it reads today's average: 150 credits over the 52200 s since 00:00.
    let burn = (150.0 + 225.0 * 9.5 / 24.0) / 86_400.0;
    let b24 = value(
        &m,
        "creditwatch_burn_rate_credits_per_second",
        &["window=\"24h\""],
    )
    .unwrap();
    assert!((b24 - burn).abs() < 1e-15, "{b24} vs {burn}");
    let b1 = value(
        &m,
        "creditwatch_burn_rate_credits_per_second",
        &["window=\"1h\""],
    )
    .unwrap();
    assert!((b1 - 150.0 / 52_200.0).abs() < 1e-15, "{b1}");
    // 535 / (239.0625 / 86400) = 193355.3 s: 2026-04-14T20:12:35Z, before the reset on the 15th.
    let exhaustion = value(&m, "creditwatch_exhaustion_timestamp_seconds", &[]).unwrap();
    let expected = t("2026-04-12T14:30:00Z").timestamp() as f64 + 535.0 / burn;
    assert!((exhaustion - expected).abs() < 1e-3, "{exhaustion}");
    assert_eq!(
        exhaustion.floor(),
        t("2026-04-14T20:12:35Z").timestamp() as f64
    );
    assert_eq!(
        value(&m, "creditwatch_exhausts_before_reset", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "creditwatch_consumed_credits_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &m,
            "creditwatch_endpoint_credits",
            &["endpoint=\"image_to_html\"", "label=\"Image → HTML\""]
        ),
        Some(600.0)
    );
    assert_golden("floow_documented.prom", &m);
    app.stop().await;
}

async fn failing(status: u16, body: &str, reason: &str) -> String {
    let up = upstream(status, body).await;
    let clock = Arc::new(ManualClock::new(t("2026-04-12T14:30:00Z")));
    let app = spawn(&config(&up.uri(), ""), clock).await;
    app.wait_polls("design", 1).await;
    let m = app.metrics().await;
    assert_eq!(
        value(
            &m,
            "creditwatch_scrape_errors_total",
            &[&format!("reason=\"{reason}\"")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&m, "creditwatch_used_credits", &[]), None);
    assert_eq!(value(&m, "creditwatch_endpoint_calls", &[]), None);
    let err = app
        .running
        .state
        .account("design")
        .unwrap()
        .last_error
        .unwrap();
    app.stop().await;
    err
}

#[tokio::test]
async fn error_bodies_reach_the_error_message() {
    assert_eq!(
        failing(401, r#"{ "error": "Invalid API key" }"#, "auth").await,
        "authentication rejected (HTTP 401): Invalid API key"
    );
    assert_eq!(
        failing(
            400,
            r#"{ "error": "days must be between 1 and 90" }"#,
            "http"
        )
        .await,
        "upstream answered HTTP 400: days must be between 1 and 90"
    );
    assert_eq!(
        failing(429, r#"{ "error": "Too many requests" }"#, "rate_limited").await,
        "rate limited (HTTP 429): Too many requests"
    );
}

/// Waits for a successful poll taken at the clock's current time.
async fn poll_at(app: &TestApp, clock: &ManualClock) {
    let now = clock.now();
    app.running
        .state
        .wait_until(|s| s.account("design").and_then(|a| a.last_success) == Some(now))
        .await;
}

fn key(history: &[(&str, &str, u64)]) -> KeyParams {
    let mut h: BTreeMap<NaiveDate, BTreeMap<String, u64>> = BTreeMap::new();
    for (d, e, calls) in history {
        h.entry(day(d)).or_default().insert(e.to_string(), *calls);
    }
    KeyParams {
        id: "clxyz01abc".into(),
        name: "Production Key".into(),
        // Documented prices, no calls of their own: the test logs every call.
        endpoints: EndpointParams::documented(0.0),
        history: h,
    }
}

#[tokio::test]
async fn history_gives_burn_at_once_and_is_never_counted_twice() {
    // Zero-activity days around a busy one: Apr 10 had 4 image_to_html calls (120 credits), the
    // 11th nothing, and today (the 12th) 2 code_export calls (30 credits) by 06:00.
    let clock = Arc::new(ManualClock::new(t("2026-04-12T06:00:00Z")));
    let sim = Simulator::new(
        clock.clone(),
        vec![Params {
            token: "fl_testkey".into(),
            keys: vec![key(&[
                ("2026-04-10", "image_to_html", 4),
                ("2026-04-12", "code_export", 2),
            ])],
        }],
    );
    let server = sim.serve().await.unwrap();
    let cfg = config(
        &server.url(),
        "monthly_allowance = 1000\nburn_windows = [\"24h\", \"48h\"]\nforecast_window = \"24h\"\n",
    );
    let app = spawn(&cfg, clock.clone()).await;
    app.wait_polls("design", 1).await;
    assert_eq!(sim.last_query(), Some(("31".to_string(), None)));
    let burn = |m: &str, w: &str| {
        value(
            m,
            "creditwatch_burn_rate_credits_per_second",
            &[&format!("window=\"{w}\"")],
        )
    };
    let m = app.metrics().await;
    // Used since the period start (2026-03-15): 120 + 30.
    assert_eq!(value(&m, "creditwatch_used_credits", &[]), Some(150.0));
    assert_eq!(
        value(&m, "creditwatch_consumed_credits_total", &[]),
        Some(0.0)
    );
    // 24h: from the 11th's 06:00 (an idle day, so 30 before now) to now: 30 / 86400 s.
    assert_eq!(burn(&m, "24h"), Some(30.0 / 86_400.0));
    // 48h: from the 10th's 06:00, after a quarter of that day's 120: 90 + 30 over 172800 s.
    assert_eq!(burn(&m, "48h"), Some(120.0 / 172_800.0));

    // Ten minutes and 3 image_to_html calls (90 credits) later.
    clock.advance(Duration::from_secs(600));
    sim.log_calls("fl_testkey", "image_to_html", 3);
    poll_at(&app, &clock).await;
    let m = app.metrics().await;
    assert_eq!(value(&m, "creditwatch_used_credits", &[]), Some(240.0));
    assert_eq!(value(&m, "creditwatch_remaining_credits", &[]), Some(760.0));
    // Only the new 90 count: the history of the first poll is not added again.
    assert_eq!(
        value(&m, "creditwatch_consumed_credits_total", &[]),
        Some(90.0)
    );
    assert_eq!(burn(&m, "24h"), Some(120.0 / 86_400.0));
    assert_eq!(
        app.running.store.sample_count("design").unwrap(),
        5,
        "two live samples and three days of history"
    );

    // The next day: midnight's sample joins the history exactly once.
    clock.set(t("2026-04-13T07:00:00Z"));
    poll_at(&app, &clock).await;
    let m = app.metrics().await;
    assert_eq!(
        value(&m, "creditwatch_consumed_credits_total", &[]),
        Some(90.0)
    );
    // 24h: from the 12th's 07:00 (90 in the total since 06:10) to now (90): nothing burned.
    assert_eq!(burn(&m, "24h"), Some(0.0));
    assert_eq!(
        value(&m, "creditwatch_exhaustion_timestamp_seconds", &[]),
        None
    );
    assert_eq!(app.running.store.sample_count("design").unwrap(), 7);
    app.stop().await;
}

#[tokio::test]
async fn a_31_day_period_asks_for_enough_days_and_counts_its_first_day() {
    // The period 2026-07-15 .. 2026-08-15 is 31 days long. On its last day, 10 credits a day
    // since the 15th, and 1000 on the 14th, which belongs to the previous period.
    let mut history = vec![("2026-07-14".to_string(), 100u64)];
    let mut d = day("2026-07-15");
    while d <= day("2026-08-14") {
        history.push((d.format("%Y-%m-%d").to_string(), 1));
        d = d.succ_opt().unwrap();
    }
    let h: Vec<(&str, &str, u64)> = history
        .iter()
        .map(|(d, n)| (d.as_str(), "figma_export", *n))
        .collect();
    let clock = Arc::new(ManualClock::new(t("2026-08-14T23:00:00Z")));
    let sim = Simulator::new(
        clock.clone(),
        vec![Params {
            token: "fl_testkey".into(),
            keys: vec![
                key(&[]),
                KeyParams {
                    id: "clother".into(),
                    ..key(&h)
                },
            ],
        }],
    );
    let server = sim.serve().await.unwrap();
    let cfg = config(
        &server.url(),
        "monthly_allowance = 400\nkey_id = \"clother\"\ndays = 7\n",
    );
    let app = spawn(&cfg, clock.clone()).await;
    app.wait_polls("design", 1).await;
    // days = 7 is raised to 31, and key_id is sent as keyId.
    assert_eq!(
        sim.last_query(),
        Some(("31".to_string(), Some("clother".to_string())))
    );
    let m = app.metrics().await;
    assert_eq!(value(&m, "creditwatch_used_credits", &[]), Some(310.0));
    assert_eq!(value(&m, "creditwatch_remaining_credits", &[]), Some(90.0));
    assert_eq!(
        value(&m, "creditwatch_period_start_timestamp_seconds", &[]),
        Some(t("2026-07-15T00:00:00Z").timestamp() as f64)
    );
    assert_eq!(
        value(&m, "creditwatch_reset_timestamp_seconds", &[]),
        Some(t("2026-08-15T00:00:00Z").timestamp() as f64)
    );
    assert_eq!(
        value(
            &m,
            "creditwatch_endpoint_calls",
            &["endpoint=\"figma_export\""]
        ),
        Some(131.0),
        "the lookback covers 2026-07-14 .. 2026-08-14"
    );
    app.stop().await;
}
