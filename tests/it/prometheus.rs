//! A real Prometheus loads the shipped rules, scrapes the real daemon while a simulator drives a pool into exhaustion, and the alerts go pending.

use crate::external::{eventually, get_json, prometheus};
use crate::support::spawn;
use chrono::{Datelike, Duration as ChronoDuration, NaiveDate, Utc};
use creditwatch::clock::SystemClock;
use creditwatch::demo::fluximage::{Fault, Params, Simulator};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// A billing anchor about ten days back, so no period has just started.
pub fn anchor_ten_days_ago() -> NaiveDate {
    let d = Utc::now().date_naive() - ChronoDuration::days(10);
    NaiveDate::from_ymd_opt(d.year(), d.month(), d.day().min(28)).unwrap()
}

/// A starter account with 400 of its 1000 AI credits left, and a pro account whose unlimited
/// compression burns and whose AI credits are idle.
pub fn accounts(anchor: NaiveDate) -> Vec<Params> {
    let mut short = Params::documented("k-short", anchor);
    short.plan = "starter".into();
    short.compressor_limit = 200.0;
    short.compressor_used = 10.0;
    short.ia_monthly = 1000.0;
    short.ia_used = 600.0;
    short.ia_topup = 0.0;
    short.ai_per_second = 5.0;
    let mut healthy = Params::documented("k-healthy", anchor);
    healthy.compress_per_second = 5.0;
    vec![short, healthy]
}

/// The daemon's config: both accounts polled every second, 10-second burn windows.
pub fn config(sim_url: &str, anchor: NaiveDate) -> String {
    let mut c = String::from(
        "state_path = \"{dir}/state.db\"\n[defaults]\ninterval = \"1s\"\ntimeout = \"1s\"\nburn_windows = [\"10s\"]\nforecast_window = \"10s\"\n",
    );
    for (name, key) in [("short", "k-short"), ("healthy", "k-healthy")] {
        c.push_str(&format!(
            "[[account]]\nname = \"{name}\"\nprovider = \"fluximage\"\napi_key = \"{key}\"\nbase_url = \"{sim_url}\"\nbilling_anchor = \"{anchor}\"\n"
        ));
    }
    c
}

/// Active alerts as (alertname, account, pool, state).
fn alerts(body: &Value) -> BTreeSet<(String, String, String, String)> {
    body["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let l = &a["labels"];
            let s = |v: &Value| v.as_str().unwrap_or("").to_string();
            (
                s(&l["alertname"]),
                s(&l["account"]),
                s(&l["pool"]),
                s(&a["state"]),
            )
        })
        .collect()
}

fn find<'a>(body: &'a Value, alertname: &str) -> &'a Value {
    body["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["alertname"] == alertname)
        .unwrap()
}

fn pending(list: &[(&str, &str, &str)]) -> BTreeSet<(String, String, String, String)> {
    list.iter()
        .map(|(a, acc, p)| {
            (
                a.to_string(),
                acc.to_string(),
                p.to_string(),
                "pending".into(),
            )
        })
        .collect()
}

#[tokio::test]
async fn prometheus_with_the_shipped_rules_sees_alerts_go_pending() {
    let anchor = anchor_ten_days_ago();
    let sim = Simulator::new(Arc::new(SystemClock), accounts(anchor));
    let server = sim.serve().await.unwrap();
    let app = spawn(&config(&server.url(), anchor), Arc::new(SystemClock)).await;
    app.running.wait_ready().await;

    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("alerts/creditwatch.rules.yml");
    let prom = prometheus(&app.running.addr.to_string(), &[&rules]).await;
    let api = format!("{}/api/v1/alerts", prom.url);
    let current = || async { get_json(&api).await };

    // 400 credits left at 5 per second: out in 80 seconds, long before the reset 20 days away,
    // and already under half the allocation.
    let want = pending(&[
        ("CreditsExhaustionBeforeReset", "short", "ai"),
        ("CreditsExhaustionImminent", "short", "ai"),
    ]);
    let body = eventually(
        Duration::from_secs(30),
        || format!("the forecast alerts to go pending\n{}", prom.log()),
        || async {
            let b = current().await;
            (alerts(&b) == want).then_some(b)
        },
    )
    .await;
    let a = find(&body, "CreditsExhaustionImminent");
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(a["labels"]["provider"], "fluximage");
    assert_eq!(a["labels"]["instance"], app.running.addr.to_string());
    let description = a["annotations"]["description"].as_str().unwrap();
    // 5 credits a second is 432k a day. The simulator reports whole credits and the alert can go
    // pending while the 10s window spans only a second or two, so one credit either way moves
    // the measured burn by up to 20%; a wrong unit (per second, per hour) would be far outside.
    let per_day: f64 = description
        .split_once(" credits left, burning ")
        .and_then(|(_, r)| r.split_once("k per day."))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected description: {description}"));
    assert!((340.0..=520.0).contains(&per_day), "{description}");
    assert!(description.starts_with("fluximage account short, pool ai: "));
    // The runbook link resolves on the daemon itself.
    let runbook = a["annotations"]["runbook_url"].as_str().unwrap();
    assert_eq!(
        runbook,
        format!(
            "http://{}/runbook#creditsexhaustionimminent",
            app.running.addr
        )
    );
    let page = reqwest::get(runbook).await.unwrap().text().await.unwrap();
    assert!(page.contains("<h2 id=\"creditsexhaustionimminent\">"));

    // Burn the rest at once: the pool is empty, so it is low and exhausted; Imminent leaves it
    // to CreditsExhausted. The healthy account (idle AI, unlimited compression) never alerts.
    sim.set_burn("k-short", 10_000.0, 0.0);
    let want = pending(&[
        ("CreditsExhaustionBeforeReset", "short", "ai"),
        ("CreditsLow", "short", "ai"),
        ("CreditsExhausted", "short", "ai"),
    ]);
    let body = eventually(
        Duration::from_secs(30),
        || format!("the level alerts to go pending\n{}", prom.log()),
        || async {
            let b = current().await;
            (alerts(&b) == want).then_some(b)
        },
    )
    .await;
    let a = find(&body, "CreditsExhausted");
    assert_eq!(
        a["annotations"]["summary"], "short: pool ai is exhausted",
        "{a}"
    );

    // Every poll of the account fails: CreditwatchAccountDown goes pending.
    sim.set_fault(Some(Fault {
        status: 503,
        body: String::new(),
        count: None,
        delay_ms: 0,
    }));
    eventually(
        Duration::from_secs(30),
        || format!("CreditwatchAccountDown to go pending\n{}", prom.log()),
        || async {
            let b = current().await;
            alerts(&b)
                .iter()
                .any(|(n, acc, _, s)| {
                    n == "CreditwatchAccountDown" && acc == "short" && s == "pending"
                })
                .then_some(())
        },
    )
    .await;
    app.stop().await;
}
