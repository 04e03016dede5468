//! Forecasts as pure functions of (history, schedule, now): burn rates, exhaustion, shortfall at reset.
//!
//! History is the pool's cumulative consumption (`consumed_total` at each sample), so resets,
//! top-ups and deposits have already been taken out by [`consumption::consumed_between`]. The burn
//! over a window is the consumption from the window's start to the last sample, divided by the
//! time between them. The consumption at the window's start is interpolated linearly between the
//! samples on either side of it, so a window always covers its full length once history reaches
//! back that far. A gap while the daemon was down is spanned by the consumption recorded when
//! polling resumed, so it reads as the average burn over the gap, never as zero or as missing.

pub mod consumption;
#[cfg(test)]
mod proptests;
pub mod schedule;

use crate::config::Window;
use chrono::{DateTime, Utc};
use schedule::Period;
use std::sync::Arc;

/// A window (or a period) exports nothing until its samples span at least this fraction of it.
pub const MIN_WINDOW_COVERAGE: f64 = 0.1;

/// One point of a pool's history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Unix time in seconds.
    pub t: f64,
    /// Cumulative consumption at `t`.
    pub consumed: f64,
}

/// Burn rate (units per second) over the `window_secs` before `now`, from `points` sorted by
/// time. Points after `now` are ignored, and so is a point before the window except the last one,
/// which anchors the interpolation at the window's start.
///
/// `None` until two samples span at least [`MIN_WINDOW_COVERAGE`] of the window, or when no
/// sample lies inside the window (nothing seen recently: unknown, not zero).
pub fn burn_rate(points: &[Point], window_secs: f64, now: f64) -> Option<f64> {
    let from = now - window_secs;
    let points = &points[..points.partition_point(|p| p.t <= now)];
    let last = *points.last()?;
    if last.t < from {
        return None;
    }
    // First sample inside the window, and the consumption at the window's start.
    let i = points.partition_point(|p| p.t < from);
    let start = match i.checked_sub(1).map(|j| points[j]) {
        Some(before) => {
            let after = points[i];
            let f = (from - before.t) / (after.t - before.t);
            Point {
                t: from,
                consumed: before.consumed + f * (after.consumed - before.consumed),
            }
        }
        // History begins inside the window.
        None => points[0],
    };
    let span = last.t - start.t;
    if span <= 0.0 || span < MIN_WINDOW_COVERAGE * window_secs {
        return None;
    }
    Some(((last.consumed - start.consumed) / span).max(0.0))
}

/// Average burn since the period start: used-in-period over elapsed time. `None` until at least
/// [`MIN_WINDOW_COVERAGE`] of the period has elapsed, so the first minutes after a reset do not
/// export a few credits divided by a few seconds.
pub fn period_burn_rate(
    used: Option<f64>,
    period: Option<Period>,
    now: DateTime<Utc>,
) -> Option<f64> {
    let used = used?;
    let period = period?;
    let elapsed = secs(now) - secs(period.start);
    let length = secs(period.end) - secs(period.start);
    if elapsed <= 0.0 || elapsed < MIN_WINDOW_COVERAGE * length {
        return None;
    }
    Some((used / elapsed).max(0.0))
}

fn secs(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// Everything the forecast families export for one pool.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Forecast {
    /// Burn per configured window label, where the window has enough data. The label is the
    /// config's own text, shared rather than copied into every pool's forecast.
    pub burn: Vec<(Arc<str>, f64)>,
    /// Average burn since the period start, once 10% of the period has elapsed.
    pub burn_period: Option<f64>,
    /// The burn that drives projections: the forecast window's, else the period average.
    pub burn_forecast: Option<f64>,
    /// Unix seconds when remaining reaches 0 at the forecast burn.
    pub exhaustion: Option<f64>,
    /// Remaining at the next reset at the forecast burn; negative is a shortfall.
    pub projected_remaining_at_reset: Option<f64>,
    /// Whether exhaustion comes before the next reset (always false for pools that never reset).
    pub exhausts_before_reset: Option<bool>,
}

/// The inputs of [`forecast`].
#[derive(Debug, Clone, Copy)]
pub struct ForecastInput<'a> {
    pub points: &'a [Point],
    pub windows: &'a [Window],
    pub forecast_window: &'a Window,
    pub used: Option<f64>,
    pub remaining: Option<f64>,
    /// The current period; `None` for pools that never reset.
    pub period: Option<Period>,
    pub now: DateTime<Utc>,
}

/// Computes every forecast figure for one pool, as of `now` (the time of the reading).
///
/// The projection is a straight line from `remaining` at the forecast burn, up to the next reset
/// and no further. Everything in `remaining` counts as available until then, including purchased
/// top-ups (Fluximage AI: the monthly part plus the top-ups). What happens at the reset is not
/// modelled: the refill of the allocation (and the top-ups that carry over) appear in
/// `remaining` at the first reading after it, and the projection starts again from there. So
/// `exhaustion` ignores refills: for a resetting pool a value beyond the reset means "does not run
/// out this period", and `exhausts_before_reset` is the verdict to alert on.
pub fn forecast(input: &ForecastInput<'_>) -> Forecast {
    let now = secs(input.now);
    // Sized to the windows: every pool of every account keeps one until its next poll.
    let mut burn = Vec::with_capacity(input.windows.len());
    burn.extend(input.windows.iter().filter_map(|w| {
        burn_rate(input.points, w.duration.as_secs_f64(), now).map(|b| (w.label.clone(), b))
    }));
    let burn_period = period_burn_rate(input.used, input.period, input.now);
    let burn_forecast = burn_rate(
        input.points,
        input.forecast_window.duration.as_secs_f64(),
        now,
    )
    .or(burn_period);

    let mut f = Forecast {
        burn,
        burn_period,
        burn_forecast,
        ..Forecast::default()
    };
    // Unlimited or unknown remaining: nothing to run out of, so no projections.
    let Some(remaining) = input.remaining else {
        return f;
    };
    let reset = input.period.map(|p| secs(p.end));
    if remaining <= 0.0 {
        f.exhaustion = Some(now);
        f.exhausts_before_reset = Some(reset.is_some());
        f.projected_remaining_at_reset = reset
            .and(burn_forecast)
            .map(|b| remaining - b * (reset.expect("checked") - now));
        return f;
    }
    let Some(b) = burn_forecast else {
        // Burn unknown: a non-resetting pool still cannot run out "before its reset".
        if reset.is_none() {
            f.exhausts_before_reset = Some(false);
        }
        return f;
    };
    if b > 0.0 {
        f.exhaustion = Some(now + remaining / b);
    }
    match reset {
        Some(r) => {
            let projected = remaining - b * (r - now);
            f.projected_remaining_at_reset = Some(projected);
            f.exhausts_before_reset = Some(projected < 0.0);
        }
        None => f.exhausts_before_reset = Some(false),
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::time::Duration;

    fn w(label: &str, secs: u64) -> Window {
        Window {
            label: label.into(),
            duration: Duration::from_secs(secs),
        }
    }

    fn p(t: f64, consumed: f64) -> Point {
        Point { t, consumed }
    }

    /// Samples every `step` seconds from `from` to `to` of a constant `rate`, starting at 0.
    fn line(rate: f64, from: f64, to: f64, step: f64) -> Vec<Point> {
        let mut v = Vec::new();
        let mut t = from;
        while t <= to {
            v.push(p(t, rate * (t - from)));
            t += step;
        }
        v
    }

    fn close(a: Option<f64>, b: Option<f64>) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * b.abs().max(1.0),
            (a, b) => a == b,
        }
    }

    /// (what, points, window seconds, now, burn computed by hand).
    type BurnCase = (&'static str, Vec<Point>, f64, f64, Option<f64>);

    #[test]
    fn burn_rate_table() {
        let cases: Vec<BurnCase> = vec![
            // 0.5/s sampled every minute for 2h; the 1h window is [3600, 7200]: (3600 - 1800) / 3600.
            (
                "constant burn",
                line(0.5, 0.0, 7200.0, 60.0),
                3600.0,
                7200.0,
                Some(0.5),
            ),
            // 5 minutes of a 1h window is 8.3% < 10%: nothing yet.
            (
                "8% coverage",
                line(1.0, 0.0, 300.0, 60.0),
                3600.0,
                300.0,
                None,
            ),
            // 6 minutes is exactly 10%: 360 / 360.
            (
                "10% coverage",
                line(1.0, 0.0, 360.0, 60.0),
                3600.0,
                360.0,
                Some(1.0),
            ),
            ("one sample", vec![p(0.0, 0.0)], 10.0, 5.0, None),
            ("no samples", vec![], 10.0, 5.0, None),
            // The last sample is older than the window: nothing seen recently is unknown, not 0.
            (
                "stale history",
                line(1.0, 0.0, 100.0, 10.0),
                10.0,
                200.0,
                None,
            ),
            // Samples at 0, 40, 80 with 0, 40, 200 consumed; window [30, 80]. At 30 the consumption
            // is interpolated between 0 and 40: 0 + 30/40 * 40 = 30. (200 - 30) / (80 - 30) = 3.4.
            (
                "interpolated window start",
                vec![p(0.0, 0.0), p(40.0, 40.0), p(80.0, 200.0)],
                50.0,
                80.0,
                Some(3.4),
            ),
            // Samples after `now` are ignored: window [50, 100] over 0.5/s, the point at 150 is not
            // seen. (50 - 25) / 50.
            (
                "points after now",
                line(0.5, 0.0, 150.0, 50.0),
                50.0,
                100.0,
                Some(0.5),
            ),
            // A flat history is a real zero burn.
            (
                "no consumption",
                vec![p(0.0, 7.0), p(60.0, 7.0)],
                60.0,
                60.0,
                Some(0.0),
            ),
            // Daemon down from 100 to 1000 while 4500 were consumed (5/s); window [910, 1010] sits
            // almost entirely in the gap. Start: interpolated between (100, 1000) and (1000, 5500):
            // 1000 + (810 / 900) * 4500 = 5050. End (1010, 5550). (5550 - 5050) / 100 = 5.
            (
                "a gap is the average over the gap",
                {
                    let mut v = line(10.0, 0.0, 100.0, 10.0);
                    v.push(p(1000.0, 5500.0));
                    v.push(p(1010.0, 5550.0));
                    v
                },
                100.0,
                1010.0,
                Some(5.0),
            ),
            // First poll after a restart that followed a gap longer than the window: the window
            // [990, 1000] lies inside the gap. (5500 - 5450) / 10 = 5, where
            // 5450 = 1000 + (890 / 900) * 4500.
            (
                "first poll after a long gap",
                {
                    let mut v = line(10.0, 0.0, 100.0, 10.0);
                    v.push(p(1000.0, 5500.0));
                    v
                },
                10.0,
                1000.0,
                Some(5.0),
            ),
        ];
        for (what, pts, window, now, want) in cases {
            let got = burn_rate(&pts, window, now);
            assert!(close(got, want), "{what}: got {got:?}, want {want:?}");
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn period_average_waits_for_ten_percent_of_the_period() {
        // November 15 to December 15: 30 days = 2,592,000 s; 10% = 259,200 s = 3 days.
        let period = Period {
            start: at("2026-11-15T00:00:00Z"),
            end: at("2026-12-15T00:00:00Z"),
        };
        // One second after the reset, 3 credits used: not 3/s, nothing.
        assert_eq!(
            period_burn_rate(Some(3.0), Some(period), at("2026-11-15T00:00:01Z")),
            None
        );
        // 2d 23h 59m 59s in: still under 3 days.
        assert_eq!(
            period_burn_rate(Some(3.0), Some(period), at("2026-11-17T23:59:59Z")),
            None
        );
        // Exactly 3 days: 25,920 / 259,200 = 0.1.
        assert_eq!(
            period_burn_rate(Some(25_920.0), Some(period), at("2026-11-18T00:00:00Z")),
            Some(0.1)
        );
        assert_eq!(
            period_burn_rate(None, Some(period), at("2026-11-18T00:00:00Z")),
            None
        );
        assert_eq!(
            period_burn_rate(Some(1.0), None, at("2026-11-18T00:00:00Z")),
            None
        );
    }

    fn input<'a>(
        points: &'a [Point],
        window: &'a [Window],
        used: Option<f64>,
        remaining: Option<f64>,
        period: Option<Period>,
        now: DateTime<Utc>,
    ) -> ForecastInput<'a> {
        ForecastInput {
            points,
            windows: window,
            forecast_window: &window[0],
            used,
            remaining,
            period,
            now,
        }
    }

    #[test]
    fn projections_hand_computed() {
        // 1000 left, burning 1/s over the last hour, reset in 2000 s: exhausts 1000 s from now,
        // 1000 - 1 * 2000 = -1000 at the reset. The period began a day ago (10% of its 86,400 +
        // 2000 s is 8,840 s), 43,200 used: 43,200 / 86,400 = 0.5/s.
        let now = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        let n = 1_800_000_000.0;
        let pts = line(1.0, n - 3600.0, n, 60.0);
        let period = Period {
            start: now - chrono::Duration::seconds(86_400),
            end: now + chrono::Duration::seconds(2000),
        };
        let win = [w("1h", 3600)];
        let f = forecast(&input(
            &pts,
            &win,
            Some(43_200.0),
            Some(1000.0),
            Some(period),
            now,
        ));
        assert_eq!(f.burn, vec![("1h".into(), 1.0)]);
        assert_eq!(f.burn_period, Some(0.5));
        assert_eq!(f.burn_forecast, Some(1.0));
        assert_eq!(f.exhaustion, Some(n + 1000.0));
        assert_eq!(f.projected_remaining_at_reset, Some(-1000.0));
        assert_eq!(f.exhausts_before_reset, Some(true));

        // 3000 left at the same burn: exhausts at +3000, after the reset; 3000 - 2000 = 1000 left.
        let f = forecast(&input(
            &pts,
            &win,
            Some(43_200.0),
            Some(3000.0),
            Some(period),
            now,
        ));
        assert_eq!(f.exhaustion, Some(n + 3000.0));
        assert_eq!(f.projected_remaining_at_reset, Some(1000.0));
        assert_eq!(f.exhausts_before_reset, Some(false));

        // Exactly 2000 left: runs out at the reset instant, not before it.
        let f = forecast(&input(
            &pts,
            &win,
            Some(43_200.0),
            Some(2000.0),
            Some(period),
            now,
        ));
        assert_eq!(f.projected_remaining_at_reset, Some(0.0));
        assert_eq!(f.exhausts_before_reset, Some(false));
    }

    #[test]
    fn period_average_is_the_fallback_and_never_reset_is_false() {
        // No history; the period average is 100 / 1000 = 0.1/s (1000 s of a 2000 s period):
        // 500 - 0.1 * 1000 = 400 at the reset, exhaustion at +500 / 0.1 = +5000.
        let now = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        let period = Period {
            start: now - chrono::Duration::seconds(1000),
            end: now + chrono::Duration::seconds(1000),
        };
        let win = [w("1h", 3600)];
        let f = forecast(&input(
            &[],
            &win,
            Some(100.0),
            Some(500.0),
            Some(period),
            now,
        ));
        assert!(f.burn.is_empty());
        assert_eq!(f.burn_forecast, Some(0.1));
        assert_eq!(f.exhaustion, Some(1_800_005_000.0));
        assert_eq!(f.projected_remaining_at_reset, Some(400.0));
        assert_eq!(f.exhausts_before_reset, Some(false));

        // A balance that never resets and has no burn yet: no exhaustion, verdict 0, no reset.
        let f = forecast(&input(&[], &win, None, Some(1.0), None, now));
        assert_eq!(f.exhausts_before_reset, Some(false));
        assert_eq!((f.exhaustion, f.projected_remaining_at_reset), (None, None));

        // Resetting pool, burn unknown: nothing projected, no verdict.
        let f = forecast(&input(&[], &win, None, Some(1.0), Some(period), now));
        assert_eq!(
            (
                f.exhaustion,
                f.projected_remaining_at_reset,
                f.exhausts_before_reset
            ),
            (None, None, None)
        );
    }

    #[test]
    fn zero_burn_has_no_exhaustion() {
        let now = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        let pts = [p(1_799_999_000.0, 5.0), p(1_800_000_000.0, 5.0)];
        let win = [w("1h", 3600)];
        let period = Period {
            start: now - chrono::Duration::seconds(100),
            end: now + chrono::Duration::seconds(100),
        };
        let f = forecast(&input(&pts, &win, Some(5.0), Some(50.0), Some(period), now));
        assert_eq!(f.burn_forecast, Some(0.0));
        assert_eq!(f.exhaustion, None);
        assert_eq!(f.projected_remaining_at_reset, Some(50.0));
        assert_eq!(f.exhausts_before_reset, Some(false));
    }

    #[test]
    fn exhausted_pool() {
        // Nothing left: exhausted now, before the reset, and 0 - 1 * 100 = -100 short at it.
        let now = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        let n = 1_800_000_000.0;
        let pts = line(1.0, n - 3600.0, n, 60.0);
        let win = [w("1h", 3600)];
        let period = Period {
            start: now - chrono::Duration::seconds(10_000),
            end: now + chrono::Duration::seconds(100),
        };
        let f = forecast(&input(&pts, &win, Some(1.0), Some(0.0), Some(period), now));
        assert_eq!(f.exhaustion, Some(n));
        assert_eq!(f.projected_remaining_at_reset, Some(-100.0));
        assert_eq!(f.exhausts_before_reset, Some(true));
        // A balance that never resets is exhausted too, but never "before its reset".
        let f = forecast(&input(&pts, &win, None, Some(0.0), None, now));
        assert_eq!(
            (f.exhaustion, f.exhausts_before_reset),
            (Some(n), Some(false))
        );
    }

    #[test]
    fn unlimited_pools_get_no_projection() {
        let now = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        let n = 1_800_000_000.0;
        let pts = line(1.0, n - 3600.0, n, 60.0);
        let win = [w("1h", 3600)];
        let f = forecast(&input(&pts, &win, Some(5.0), None, None, now));
        assert_eq!(f.burn.len(), 1);
        assert_eq!(
            (
                f.exhaustion,
                f.projected_remaining_at_reset,
                f.exhausts_before_reset
            ),
            (None, None, None)
        );
    }

    #[test]
    fn the_forecast_switches_periods_at_the_reset_instant() {
        // Anchor Jan 15: the reset is 2026-12-15T00:00:00Z = 1,797,292,800. 2/s over the last
        // 10 s in both readings (consumption is continuous across the reset).
        let schedule = schedule::Schedule::Monthly {
            anchor: chrono::NaiveDate::from_ymd_opt(2026, 1, 15).unwrap(),
        };
        let reset = 1_797_292_800.0;
        let win = [w("10s", 10)];
        let pts = line(2.0, reset - 20.0, reset, 1.0);

        // One second before: 182 left (top-ups only), reset in 1 s: 182 - 2 * 1 = 180 left at it.
        let before = at("2026-12-14T23:59:59Z");
        let f = forecast(&input(
            &pts[..20],
            &win,
            Some(1000.0),
            Some(182.0),
            schedule.period_at(before),
            before,
        ));
        assert_eq!(f.burn_forecast, Some(2.0));
        assert_eq!(f.projected_remaining_at_reset, Some(180.0));
        assert_eq!(f.exhausts_before_reset, Some(false));
        // The November period's average: 1000 used over 29 days 23:59:59 = 2,591,999 s.
        assert!(close(f.burn_period, Some(1000.0 / 2_591_999.0)));

        // At the instant: the December period has begun, its average is not yet meaningful, and
        // the projection runs to January 15 (31 days = 2,678,400 s): 1180 - 2 * 2,678,400.
        let at_reset = at("2026-12-15T00:00:00Z");
        let period = schedule.period_at(at_reset).unwrap();
        assert_eq!(period.start, at_reset);
        assert_eq!(period.end, at("2027-01-15T00:00:00Z"));
        let f = forecast(&input(
            &pts,
            &win,
            Some(0.0),
            Some(1180.0),
            Some(period),
            at_reset,
        ));
        assert_eq!(f.burn_forecast, Some(2.0));
        assert_eq!(f.burn_period, None);
        assert_eq!(f.exhaustion, Some(reset + 590.0));
        assert_eq!(
            f.projected_remaining_at_reset,
            Some(1180.0 - 2.0 * 2_678_400.0)
        );
        assert_eq!(f.exhausts_before_reset, Some(true));
    }
}
