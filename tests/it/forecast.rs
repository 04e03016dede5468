//! The forecast end to end: the daemon polls a simulator burning a known rate; burn, exhaustion and verdict are read back from /metrics through a top-up, a restart and a reset.

use crate::support::{TestApp, spawn, spawn_in, value};
use chrono::{DateTime, Utc};
use creditwatch::clock::ManualClock;
use creditwatch::demo::fluximage::{Params, Simulator};
use std::sync::Arc;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn config(url: &str) -> String {
    format!(
        r#"state_path = "{{dir}}/state.db"
[defaults]
burn_windows = ["10s"]
forecast_window = "10s"
[[account]]
name = "images"
provider = "fluximage"
api_key = "k"
base_url = "{url}"
billing_anchor = "2026-01-15"
interval = "1s"
timeout = "1s"
"#
    )
}

/// Moves the shared clock to `t` and waits for the poll that reads the simulator at `t`; returns
/// the exposition served after it.
async fn poll_at(app: &TestApp, clock: &ManualClock, t: DateTime<Utc>) -> String {
    clock.set(t);
    app.running
        .state
        .wait_until(|s| s.account("images").and_then(|a| a.last_success) == Some(t))
        .await;
    app.metrics().await
}

/// The AI pool's forecast figures in one exposition.
#[derive(Debug)]
struct Ai {
    remaining: Option<f64>,
    consumed: Option<f64>,
    burn: Option<f64>,
    burn_period: Option<f64>,
    exhaustion: Option<f64>,
    projected: Option<f64>,
    verdict: Option<f64>,
    period_start: Option<f64>,
    reset: Option<f64>,
}

fn ai(m: &str) -> Ai {
    let v = |name: &str, extra: &[&str]| {
        let mut matchers = vec!["pool=\"ai\""];
        matchers.extend_from_slice(extra);
        value(m, name, &matchers)
    };
    Ai {
        remaining: v("creditwatch_remaining_credits", &[]),
        consumed: v("creditwatch_consumed_credits_total", &[]),
        burn: v(
            "creditwatch_burn_rate_credits_per_second",
            &["window=\"10s\""],
        ),
        burn_period: v(
            "creditwatch_burn_rate_credits_per_second",
            &["window=\"period\""],
        ),
        exhaustion: v("creditwatch_exhaustion_timestamp_seconds", &[]),
        projected: v("creditwatch_projected_remaining_at_reset_credits", &[]),
        verdict: v("creditwatch_exhausts_before_reset", &[]),
        period_start: v("creditwatch_period_start_timestamp_seconds", &[]),
        reset: v("creditwatch_reset_timestamp_seconds", &[]),
    }
}

#[track_caller]
fn approx(got: Option<f64>, want: f64) {
    let g = got.unwrap_or_else(|| panic!("missing series, want {want}"));
    assert!(
        (g - want).abs() <= 1e-9 * want.abs().max(1.0),
        "got {g}, want {want}"
    );
}

/// Reset R = 2026-12-15T00:00:00Z (anchor Jan 15), 1,797,292,800. The test starts 600 s before
/// it, T = R - 600, with 120 of the 1000 monthly AI credits used and 200 top-up credits held, and
/// the simulator burning 2 credits a second. Every expected number is computed by hand below.
#[tokio::test]
async fn burn_exhaustion_and_verdict_through_a_top_up_a_restart_and_a_reset() {
    let r = 1_797_292_800.0;
    let t0 = at("2026-12-14T23:50:00Z");
    let t = |s: i64| t0 + chrono::Duration::seconds(s);
    let clock = Arc::new(ManualClock::new(t0));
    let mut p = Params::documented("k", chrono::NaiveDate::from_ymd_opt(2026, 1, 15).unwrap());
    p.ai_per_second = 2.0;
    let sim = Simulator::new(clock.clone(), vec![p]);
    let server = sim.serve().await.unwrap();
    let cfg = config(&server.url());
    let app = spawn(&cfg, clock.clone()).await;

    // T: one sample, so the 10s window has nothing yet. The projections fall back to the period
    // average: 120 used over the 2,592,000 - 600 = 2,591,400 s since Nov 15. At that rate the
    // 1080 left last 1080 / (120 / 2,591,400) = 23,322,600 s, well past the reset.
    let a = ai(&poll_at(&app, &clock, t0).await);
    assert_eq!(a.burn, None, "one sample is not a burn rate");
    approx(a.remaining, 1080.0);
    approx(a.burn_period, 120.0 / 2_591_400.0);
    approx(a.exhaustion, r - 600.0 + 23_322_600.0);
    approx(a.projected, 1080.0 - 120.0 / 2_591_400.0 * 600.0);
    approx(a.verdict, 0.0);
    approx(a.consumed, 0.0);
    approx(a.period_start, 1_794_700_800.0);
    approx(a.reset, r);

    // T+1: 2 consumed in 1 s, 10% of the window: the window's burn appears and drives the
    // projections. 1078 left: exhaustion T + 1 + 1078 / 2 = T + 540 = R - 60; at the reset
    // (599 s away) 1078 - 2 * 599 = -120: it runs out first.
    let a = ai(&poll_at(&app, &clock, t(1)).await);
    approx(a.burn, 2.0);
    approx(a.exhaustion, r - 60.0);
    approx(a.projected, -120.0);
    approx(a.verdict, 1.0);

    // T+10: the full window, (20 - 0) / 10 = 2. 1060 left: T + 10 + 530 = R - 60 again,
    // 1060 - 2 * 590 = -120.
    let a = ai(&poll_at(&app, &clock, t(10)).await);
    approx(a.consumed, 20.0);
    approx(a.burn, 2.0);
    approx(a.exhaustion, r - 60.0);
    approx(a.projected, -120.0);
    approx(a.verdict, 1.0);

    // A top-up of 300 credits, then T+11: remaining 1060 - 2 + 300 = 1358. It is not negative
    // consumption: 2 more consumed (used 140 -> 142), and the burn over [T+1, T+11] is
    // (22 - 2) / 10 = 2. Exhaustion T + 11 + 1358 / 2 = T + 690 = R + 90, after the reset;
    // 1358 - 2 * 589 = 180 left at it: the verdict flips to 0.
    sim.top_up("k", 300.0);
    let a = ai(&poll_at(&app, &clock, t(11)).await);
    approx(a.remaining, 1358.0);
    approx(a.consumed, 22.0);
    approx(a.burn, 2.0);
    approx(a.exhaustion, r + 90.0);
    approx(a.projected, 180.0);
    approx(a.verdict, 0.0);

    // Down for 20 s, twice the window, while 40 more are consumed; the first poll after the
    // restart is at T+31. The total continues from the store: 22 + 40 = 62. The window [T+21,
    // T+31] lies inside the gap: its start is interpolated between the samples at T+11 (22) and
    // T+31 (62), 22 + 40 * 10/20 = 42, so the burn is (62 - 42) / 10 = 2 from the first poll,
    // not missing and not 0. 1318 left: T + 31 + 659 = R + 90; 1318 - 2 * 569 = 180.
    let dir = app.stop().await;
    clock.set(t(31));
    let app = spawn_in(dir, &cfg, clock.clone()).await;
    let a = ai(&poll_at(&app, &clock, t(31)).await);
    assert_eq!(
        app.running.state.account("images").unwrap().attempts,
        1,
        "first poll after the restart"
    );
    approx(a.remaining, 1318.0);
    approx(a.consumed, 62.0);
    approx(a.burn, 2.0);
    approx(a.exhaustion, r + 90.0);
    approx(a.projected, 180.0);
    approx(a.verdict, 0.0);

    // R-1: 568 s at 2/s = 1136 consumed, 818 from the monthly part (used 182 -> 1000) and 318
    // from top-ups (500 -> 182), visible only as remaining going 1318 -> 182. Total 62 + 1136 =
    // 1198. 182 left last until R + 90; at the reset 182 - 2 * 1 = 180.
    let a = ai(&poll_at(&app, &clock, t(599)).await);
    approx(a.remaining, 182.0);
    approx(a.consumed, 1198.0);
    approx(a.burn, 2.0);
    approx(a.projected, 180.0);
    approx(a.verdict, 0.0);
    approx(a.reset, r);

    // R: the monthly part refills, the 180 top-up credits left carry over: 1180. The forecast is
    // in the new period at once: it started at R and resets on Jan 15 (R + 31 days =
    // 1,799,971,200), and the period average is not exported a second into it. used went
    // 1000 -> 0, a reset: 0 used since it. The 2 credits of the second before the reset cannot
    // be seen, so the total stays 1198 and the burn over [R-10, R] is (1198 - 1180) / 10 = 1.8,
    // where 1180 = 62 + 1136 * 559/568 is the interpolated start. At 1.8/s the 1180 last
    // 655.6 s, so the December allocation is projected to run out:
    // 1180 - 1.8 * 2,678,400 = -4,819,940.
    let a = ai(&poll_at(&app, &clock, t(600)).await);
    approx(a.remaining, 1180.0);
    approx(a.consumed, 1198.0);
    approx(a.period_start, r);
    approx(a.reset, 1_799_971_200.0);
    assert_eq!(a.burn_period, None);
    approx(a.burn, 1.8);
    approx(a.exhaustion, r + 1180.0 / 1.8);
    approx(a.projected, -4_819_940.0);
    approx(a.verdict, 1.0);
    app.stop().await;
    drop(server);
}
