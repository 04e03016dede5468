//! Upstream faults: each is classified by reason, stays within its own account, is retried with backoff, honours Retry-After, and never costs memory beyond the body cap.

use crate::support::{manual_clock, series, spawn, value};
use crate::upstream::{Reply, Upstream, refused_url};
use creditwatch::clock::{Clock, SystemClock};
use creditwatch::providers::ERROR_REASONS;
use std::sync::Arc;
use std::time::Duration;

fn account(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[account]]\nname = \"{name}\"\nprovider = \"fluximage\"\napi_key = \"k\"\nbase_url = \"{url}\"\nbilling_anchor = \"2026-01-15\"\ninterval = \"1s\"\ntimeout = \"1s\"\n{extra}"
    )
}

#[tokio::test]
async fn every_upstream_fault_gets_its_reason_and_stays_in_its_account() {
    let up = Upstream::start().await;
    // (account, reply, expected reason, start of the expected last error, extra account keys)
    let cases: Vec<(&str, Option<Reply>, &str, &str, &str)> = vec![
        ("refused", None, "connect", "cannot connect", ""),
        (
            "hang",
            Some(Reply::Hang),
            "timeout",
            "no response within 1s",
            "",
        ),
        (
            "s500",
            Some(Reply::Status(500)),
            "http",
            "upstream answered HTTP 500",
            "",
        ),
        (
            "s503",
            Some(Reply::Status(503)),
            "http",
            "upstream answered HTTP 503",
            "",
        ),
        (
            "limited",
            Some(Reply::RateLimited),
            "rate_limited",
            "rate limited (HTTP 429)",
            "",
        ),
        (
            "html",
            Some(Reply::Html),
            "parse",
            "invalid response: body is not valid JSON (expected value at line 1 column 1)",
            "",
        ),
        (
            "truncated",
            Some(Reply::TruncatedJson),
            "parse",
            "invalid response: body is not valid JSON (EOF while parsing",
            "",
        ),
        (
            "cut",
            Some(Reply::CutMidBody),
            "parse",
            "invalid response: body could not be read",
            "",
        ),
        (
            "capped",
            Some(Reply::Oversized(10_000)),
            "parse",
            "invalid response: response body of 10000 bytes is over the 4096-byte cap (max_response_bytes)",
            "max_response_bytes = 4096\n",
        ),
        (
            "huge",
            Some(Reply::Oversized(2 << 20)),
            "parse",
            "invalid response: response body of 2097152 bytes is over the 1048576-byte cap",
            "",
        ),
        (
            "endless",
            Some(Reply::Endless),
            "parse",
            "invalid response: response body is over the 1048576-byte cap (max_response_bytes)",
            "",
        ),
    ];
    let mut cfg = String::from("state_path = \"{dir}/s.db\"\n");
    cfg += &account("healthy", &up.base_url("healthy"), "");
    for (name, reply, _, _, extra) in &cases {
        let url = match reply {
            Some(r) => {
                up.always(name, r.clone());
                up.base_url(name)
            }
            None => refused_url(),
        };
        cfg += &account(name, &url, extra);
    }
    let app = spawn(&cfg, manual_clock()).await;
    for (name, ..) in &cases {
        app.wait_polls(name, 2).await;
    }
    // While every other account failed twice, the healthy one kept its values and its interval.
    app.wait_polls("healthy", 2).await;
    let m = app.metrics().await;
    let healthy = ["account=\"healthy\""];
    assert_eq!(value(&m, "creditwatch_up", &healthy), Some(1.0));
    for reason in ERROR_REASONS {
        let r = format!("reason=\"{reason}\"");
        assert_eq!(
            value(&m, "creditwatch_scrape_errors_total", &[healthy[0], &r]),
            Some(0.0)
        );
    }
    assert_eq!(
        value(
            &m,
            "creditwatch_remaining_credits",
            &[healthy[0], "pool=\"ai\""]
        ),
        Some(1080.0)
    );

    for (name, _, reason, message, _) in &cases {
        let acc = format!("account=\"{name}\"");
        assert_eq!(value(&m, "creditwatch_up", &[&acc]), Some(0.0), "{name}");
        for r in ERROR_REASONS {
            let n = value(
                &m,
                "creditwatch_scrape_errors_total",
                &[&acc, &format!("reason=\"{r}\"")],
            )
            .unwrap();
            if r == *reason {
                assert!(n >= 2.0, "{name}: {n} errors of reason {r}");
            } else {
                assert_eq!(n, 0.0, "{name}: unexpected reason {r}");
            }
        }
        // No value series for an account that never succeeded.
        assert!(
            series(&m, "creditwatch_remaining_credits")
                .iter()
                .all(|l| !l.contains(&acc)),
            "{name}"
        );
        let err = app.running.state.account(name).unwrap().last_error.unwrap();
        assert!(err.starts_with(message), "{name}: {err}");
    }
    app.stop().await;
}

#[tokio::test]
async fn after_a_failure_the_last_good_values_stay_with_up_0_and_their_age() {
    let up = Upstream::start().await;
    up.first_then("a", Reply::Ok, 1, Reply::Status(502));
    let clock = manual_clock();
    let t0 = clock.now().timestamp() as f64;
    let app = spawn(&account("a", &up.base_url("a"), ""), clock.clone()).await;
    app.wait_polls("a", 1).await;
    let before = app.metrics().await;
    clock.advance(Duration::from_secs(90));
    app.wait_polls("a", 2).await;
    let m = app.metrics().await;
    assert_eq!(value(&m, "creditwatch_up", &[]), Some(0.0));
    assert_eq!(
        value(&m, "creditwatch_scrape_errors_total", &["reason=\"http\""]),
        Some(1.0)
    );
    // The values of the last success, unchanged, and when they were read.
    assert_eq!(
        value(&m, "creditwatch_last_success_timestamp_seconds", &[]),
        Some(t0)
    );
    for name in [
        "creditwatch_remaining_credits",
        "creditwatch_used_credits",
        "creditwatch_consumed_credits_total",
    ] {
        assert_eq!(series(&m, name), series(&before, name), "{name}");
        assert!(!series(&m, name).is_empty());
    }
    assert_eq!(
        value(&m, "creditwatch_remaining_credits", &["pool=\"ai\""]),
        Some(1080.0)
    );
    app.stop().await;
}

#[tokio::test]
async fn stale_after_drops_the_last_good_values_and_they_return_with_the_next_success() {
    let up = Upstream::start().await;
    // One success, then failures until request 6, then success again.
    up.script("a", |n| match n {
        0 => Reply::Ok,
        1..6 => Reply::Status(503),
        _ => Reply::Ok,
    });
    let app = spawn(
        &account("a", &up.base_url("a"), "stale_after = \"2s\"\n"),
        Arc::new(SystemClock),
    )
    .await;
    let first = up.wait_for("a", |s| s.ok == 1).await.requests[0];
    app.running
        .state
        .wait_until(|s| {
            s.account("a")
                .is_some_and(|a| a.attempts >= 1 && a.snapshot.is_none())
        })
        .await;
    let expired_after = first.elapsed();
    let m = app.metrics().await;
    assert!(
        expired_after >= Duration::from_secs(2),
        "dropped after {expired_after:?}"
    );
    assert_eq!(value(&m, "creditwatch_up", &[]), Some(0.0));
    assert!(
        value(&m, "creditwatch_last_success_timestamp_seconds", &[]).is_some(),
        "the age of the dropped values is still exported"
    );
    for name in [
        "creditwatch_remaining_credits",
        "creditwatch_used_credits",
        "creditwatch_account_info",
        "creditwatch_consumed_credits_total",
    ] {
        assert!(series(&m, name).is_empty(), "{name} still exported");
    }
    up.wait_for("a", |s| s.ok == 2).await;
    app.running
        .state
        .wait_until(|s| s.account("a").is_some_and(|a| a.up))
        .await;
    let m = app.metrics().await;
    assert_eq!(
        value(&m, "creditwatch_used_credits", &["pool=\"compression\""]),
        Some(46.0)
    );
    app.stop().await;
}

/// The gap between the upstream's first and second request of an account.
async fn retry_gap(up: &Upstream, account: &str) -> Duration {
    let seen = up.wait_for(account, |s| s.requests.len() >= 2).await;
    seen.requests[1] - seen.requests[0]
}

#[tokio::test]
async fn a_failed_poll_is_retried_with_backoff_well_before_the_interval() {
    let up = Upstream::start().await;
    up.first_then("a", Reply::Status(503), 1, Reply::Ok);
    let cfg =
        account("a", &up.base_url("a"), "").replace("interval = \"1s\"", "interval = \"20s\"");
    let app = spawn(&cfg, manual_clock()).await;
    // First retry: interval/16 = 1.25s with jitter in [0.625s, 1.25s], at least 1s.
    let gap = retry_gap(&up, "a").await;
    assert!(
        gap >= Duration::from_secs(1) && gap < Duration::from_secs(10),
        "retried after {gap:?}"
    );
    app.wait_polls("a", 2).await;
    assert!(app.running.state.account("a").unwrap().up);
    app.stop().await;
}

#[tokio::test]
async fn retry_after_in_seconds_is_honoured() {
    let up = Upstream::start().await;
    up.first_then("a", Reply::RetryAfterSecs(3), 1, Reply::Ok);
    let app = spawn(&account("a", &up.base_url("a"), ""), manual_clock()).await;
    let gap = retry_gap(&up, "a").await;
    assert!(gap >= Duration::from_secs(3), "retried after {gap:?}");
    app.wait_polls("a", 1).await;
    let err = app.running.state.account("a").unwrap().errors["rate_limited"];
    assert_eq!(err, 1);
    app.stop().await;
}

#[tokio::test]
async fn retry_after_as_an_http_date_is_honoured() {
    let up = Upstream::start().await;
    // A date 4s ahead, in whole seconds: more than 3s away when it is read.
    up.first_then("a", Reply::RetryAfterDate(4), 1, Reply::Ok);
    let app = spawn(&account("a", &up.base_url("a"), ""), manual_clock()).await;
    let gap = retry_gap(&up, "a").await;
    assert!(gap > Duration::from_secs(3), "retried after {gap:?}");
    app.stop().await;
}
