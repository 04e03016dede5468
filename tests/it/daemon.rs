//! The daemon as a whole: isolation between accounts, restart continuity, readiness, gzip, reload.

use crate::fluximage::DOCUMENTED;
use crate::support::{manual_clock, normalize, series, spawn, spawn_in, value};
use creditwatch::clock::{Clock, ManualClock};
use creditwatch::demo::fluximage::{Params, Simulator};
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, ResponseTemplate};

async fn serving(body: &str, delay: Duration) -> MockServer {
    let s = MockServer::start().await;
    Mock::given(path("/api/usage"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string(body)
                .set_delay(delay),
        )
        .mount(&s)
        .await;
    s
}

fn account(name: &str, url: &str, interval: &str, timeout: &str) -> String {
    format!(
        "[[account]]\nname = \"{name}\"\nprovider = \"fluximage\"\napi_key = \"k\"\nbase_url = \"{url}\"\nbilling_anchor = \"2026-01-15\"\ninterval = \"{interval}\"\ntimeout = \"{timeout}\"\n"
    )
}

#[tokio::test]
async fn a_slow_upstream_never_delays_a_fast_one() {
    // The slow upstream holds every request for a minute; the fast account polls every second.
    let slow = serving(DOCUMENTED, Duration::from_secs(60)).await;
    let fast = serving(DOCUMENTED, Duration::ZERO).await;
    let cfg = format!(
        "state_path = \"{{dir}}/s.db\"\n{}{}",
        account("slow", &slow.uri(), "1m", "1m"),
        account("fast", &fast.uri(), "1s", "1s")
    );
    let app = spawn(&cfg, Arc::new(creditwatch::clock::SystemClock)).await;
    app.wait_polls("fast", 3).await;
    // Three fast polls completed while the slow one is still in flight.
    assert_eq!(app.running.state.account("slow").unwrap().attempts, 0);
    let m = app.metrics().await;
    assert_eq!(
        value(&m, "creditwatch_up", &["account=\"fast\""]),
        Some(1.0)
    );
    assert!(
        series(&m, "creditwatch_up")
            .iter()
            .all(|l| !l.contains("account=\"slow\""))
    );
    // Not ready until every account has been polled once, and it says which one it waits for.
    let (status, body) = app.get("/-/ready").await;
    assert_eq!(
        (status, body.trim()),
        (
            503,
            "Not ready: waiting for the first poll of 1 account(s): slow"
        )
    );
    app.stop().await;
}

#[tokio::test]
async fn restart_with_the_same_store_serves_the_same_exposition() {
    let clock = manual_clock();
    let anchor = chrono::NaiveDate::from_ymd_opt(2026, 1, 15).unwrap();
    let mut p = Params::documented("k", anchor);
    p.ai_per_second = 0.5;
    p.compress_per_second = 2.0;
    let sim = Simulator::new(clock.clone(), vec![p]);
    let server = sim.serve().await.unwrap();
    let cfg = format!(
        "state_path = \"{{dir}}/state.db\"\n[defaults]\nburn_windows = [\"10m\", \"1h\"]\nforecast_window = \"10m\"\n{}",
        account("images", &server.url(), "1s", "1s")
    );
    let app = spawn(&cfg, clock.clone()).await;
    app.wait_polls("images", 1).await;
    // Ten minutes of burn at a known rate, observed by a second poll.
    clock.advance(Duration::from_secs(600));
    let t = clock.now();
    app.running
        .state
        .wait_until(|s| s.account("images").and_then(|a| a.last_success) == Some(t))
        .await;
    let before = normalize(&app.metrics().await);
    assert_eq!(
        value(
            &before,
            "creditwatch_consumed_credits_total",
            &["pool=\"ai\""]
        ),
        Some(300.0)
    );
    assert_eq!(
        value(
            &before,
            "creditwatch_burn_rate_credits_per_second",
            &["pool=\"ai\"", "window=\"10m\""]
        ),
        Some(0.5)
    );
    let dir = app.stop().await;

    let app = spawn_in(dir, &cfg, clock.clone()).await;
    app.wait_polls("images", 1).await;
    let after = normalize(&app.metrics().await);
    assert_eq!(before, after, "exposition changed across a restart");
    app.stop().await;
}

#[tokio::test]
async fn metrics_are_gzipped_when_asked() {
    let up = serving(DOCUMENTED, Duration::ZERO).await;
    let app = spawn(&account("a", &up.uri(), "1m", "15s"), manual_clock()).await;
    app.wait_polls("a", 1).await;
    let plain = app.metrics().await;
    let resp = reqwest::Client::new()
        .get(app.url("/metrics"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let bytes = resp.bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, plain);
    assert!(
        bytes.len() < plain.len() / 3,
        "gzip {} vs plain {}",
        bytes.len(),
        plain.len()
    );
    app.stop().await;
}

#[tokio::test]
async fn landing_health_and_ready_endpoints() {
    let up = serving(DOCUMENTED, Duration::ZERO).await;
    let app = spawn(
        &account("images <prod>", &up.uri(), "1m", "15s"),
        manual_clock(),
    )
    .await;
    app.wait_polls("images <prod>", 1).await;
    assert_eq!(app.get("/-/healthy").await, (200, "Healthy\n".to_string()));
    assert_eq!(app.get("/-/ready").await, (200, "Ready\n".to_string()));
    let (status, page) = app.get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains("href=\"/metrics\""));
    assert!(
        page.contains("images &lt;prod&gt;"),
        "account names are escaped"
    );
    assert!(
        page.contains(
            "<dt>Remaining</dt><dd>1,080 credits <small>of 1,200 credits (90%)</small></dd>"
        ),
        "{page}"
    );
    app.stop().await;
}

/// The cards' `(account, pool)` in page order.
fn card_ids(page: &str) -> Vec<(String, String)> {
    let attr = |tag: &str, name: &str| {
        let start = tag.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        tag[start..][..tag[start..].find('"').unwrap()].to_string()
    };
    page.split("<article class=\"card")
        .skip(1)
        .map(|c| (attr(c, "data-account"), attr(c, "data-pool")))
        .collect()
}

/// The accounts' table rows, in order.
fn table_rows(page: &str) -> Vec<String> {
    page.split("<tr data-account=\"")
        .skip(1)
        .map(|r| r[..r.find('"').unwrap()].to_string())
        .collect()
}

#[tokio::test]
async fn the_status_page_is_paged_and_filtered_by_account() {
    let up = serving(DOCUMENTED, Duration::ZERO).await;
    let broken = MockServer::start().await;
    Mock::given(path("/api/usage"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&broken)
        .await;
    // Five accounts with two pools each, and one that is down (listed last in the config).
    let names = ["a1", "a2", "a3", "a4", "x <y> & \"z\""];
    let mut cfg: String = names
        .iter()
        .map(|n| account(&n.replace('"', "\\\""), &up.uri(), "1m", "15s"))
        .collect();
    cfg.push_str(&account("down", &broken.uri(), "1m", "15s"));
    let app = spawn(&cfg, manual_clock()).await;
    for n in names.iter().chain(&["down"]) {
        app.wait_polls(n, 1).await;
    }

    // Everything fits on the default page: no pager.
    let (status, whole) = app.get("/?refresh=0").await;
    assert_eq!(status, 200);
    let all = card_ids(&whole);
    assert_eq!(all.len(), 10, "{all:?}");
    assert!(!whole.contains("class=\"pager\""));
    assert_eq!(table_rows(&whole).len(), 6);
    assert_eq!(
        table_rows(&whole)[0],
        "down",
        "down accounts are listed first"
    );

    // Three to a page: four pages of pools (and two of accounts), in the same order as the
    // whole page, each pool once.
    let (status, first) = app.get("/?per_page=3&refresh=0").await;
    assert_eq!(status, 200);
    assert!(
        first.contains("Pools 1–3 of 10 · accounts 1–3 of 6 · page 1 of 4"),
        "{first}"
    );
    assert!(
        first.contains("<a rel=\"next\" href=\"/?page=2&amp;per_page=3&amp;refresh=0\">next</a>")
    );
    assert!(
        first.contains("<a rel=\"last\" href=\"/?page=4&amp;per_page=3&amp;refresh=0\">last</a>")
    );
    assert!(!first.contains("rel=\"prev\""));
    assert!(first.contains("1 down"), "the summary counts every account");
    assert_eq!(table_rows(&first), ["down", "a1", "a2"]);
    let mut paged = Vec::new();
    for n in 1..=4 {
        let (status, page) = app.get(&format!("/?page={n}&per_page=3")).await;
        assert_eq!(status, 200);
        let ids = card_ids(&page);
        assert_eq!(ids.len(), if n == 4 { 1 } else { 3 }, "page {n}");
        assert_eq!(
            table_rows(&page).len(),
            match n {
                1 | 2 => 3,
                _ => 0,
            },
            "page {n}"
        );
        paged.extend(ids);
    }
    assert_eq!(paged, all);
    let (status, past) = app.get("/?page=9&per_page=3").await;
    assert_eq!(status, 200);
    assert!(past.contains("Page 9 is past the last page (4)"), "{past}");
    assert!(card_ids(&past).is_empty());

    // One account, by a name that needs escaping in the URL and in HTML.
    let (status, one) = app
        .get("/?account=x%20%3Cy%3E%20%26%20%22z%22&refresh=0")
        .await;
    assert_eq!(status, 200);
    let ids = card_ids(&one);
    assert_eq!(ids.len(), 2);
    assert!(
        ids.iter()
            .all(|(a, _)| a == "x &lt;y&gt; &amp; &quot;z&quot;"),
        "{ids:?}"
    );
    assert_eq!(table_rows(&one), ["x &lt;y&gt; &amp; &quot;z&quot;"]);
    assert!(
        one.contains("<a href=\"/?refresh=0\">every account</a>"),
        "{one}"
    );
    assert!(
        whole.contains("<a href=\"/?account=x+%3Cy%3E+%26+%22z%22&amp;refresh=0\">x &lt;y&gt; &amp; &quot;z&quot;</a>"),
        "each account in the table links to its own page"
    );
    let (status, down) = app.get("/?account=down").await;
    assert_eq!(status, 200);
    assert!(card_ids(&down).is_empty());
    assert!(down.contains("This account has no pool yet"));
    assert_eq!(table_rows(&down), ["down"]);

    // A query that cannot be served says what is wrong with it.
    let (status, body) = app.get("/?account=nope").await;
    assert_eq!(
        (status, body.as_str()),
        (404, "No account is named \"nope\"\n")
    );
    let (status, body) = app.get("/?page=0").await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        "Bad query: page must be 1 or more (pages count from 1)\n"
    );
    let (status, body) = app.get("/?per_page=1001").await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        "Bad query: per_page must be between 1 and 1000, not 1001\n"
    );
    let (status, body) = app.get("/?page=two").await;
    assert_eq!(status, 400);
    assert!(body.contains("page"), "{body}");
    app.stop().await;
}

#[tokio::test]
async fn reload_adds_accounts_and_keeps_the_old_config_when_invalid() {
    let up = serving(DOCUMENTED, Duration::ZERO).await;
    let first = account("one", &up.uri(), "1m", "15s");
    let app = spawn(&first, manual_clock()).await;
    app.wait_polls("one", 1).await;
    let client = reqwest::Client::new();

    std::fs::write(
        &app.config_path,
        format!(
            "listen = \"127.0.0.1:0\"\n{first}{}",
            account("two", &up.uri(), "1m", "15s")
        ),
    )
    .unwrap();
    let r = client.post(app.url("/-/reload")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    app.wait_polls("two", 1).await;
    assert_eq!(
        app.running.state.account("one").unwrap().attempts,
        1,
        "unchanged account kept its state"
    );

    std::fs::write(
        &app.config_path,
        "listen = \"127.0.0.1:0\"\n[[account]]\nname = 3\n",
    )
    .unwrap();
    let r = client.post(app.url("/-/reload")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 500);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("creditwatch.toml:3:8: account #1: invalid type: integer `3`"),
        "{body}"
    );
    let m = app.metrics().await;
    assert_eq!(
        value(&m, "creditwatch_config_last_reload_successful", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(&m, "creditwatch_up", &["account=\"two\""]),
        Some(1.0),
        "old config still in effect"
    );

    std::fs::write(
        &app.config_path,
        format!(
            "listen = \"127.0.0.1:0\"\n{}",
            account("two", &up.uri(), "1m", "15s")
        ),
    )
    .unwrap();
    app.running.reload().await.unwrap();
    let m = app.metrics().await;
    assert_eq!(
        value(&m, "creditwatch_config_last_reload_successful", &[]),
        Some(1.0)
    );
    assert!(
        series(&m, "creditwatch_up")
            .iter()
            .all(|l| !l.contains("account=\"one\"")),
        "removed account vanished"
    );
    app.stop().await;
}

#[tokio::test]
async fn manual_clock_keeps_timestamps_exact() {
    let clock = Arc::new(ManualClock::new(crate::support::fixed_now()));
    let up = serving(DOCUMENTED, Duration::ZERO).await;
    let app = spawn(&account("a", &up.uri(), "1m", "15s"), clock.clone()).await;
    app.wait_polls("a", 1).await;
    let m = app.metrics().await;
    let t = crate::support::fixed_now().timestamp() as f64;
    assert_eq!(
        value(&m, "creditwatch_last_success_timestamp_seconds", &[]),
        Some(t)
    );
    // Anchor 2026-01-15: the period containing 2026-11-21 runs Nov 15 to Dec 15.
    assert_eq!(
        value(
            &m,
            "creditwatch_period_start_timestamp_seconds",
            &["pool=\"ai\""]
        ),
        Some(1_794_700_800.0)
    );
    assert_eq!(
        value(&m, "creditwatch_reset_timestamp_seconds", &["pool=\"ai\""]),
        Some(1_797_292_800.0)
    );
    app.stop().await;
}
