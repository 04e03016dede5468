//! Forecasts as pure functions of (history, schedule, now): burn rates, exhaustion, shortfall at reset.
//!
//! History is the pool's cumulative consumption (`consumed_total` at each sample), so resets,
//! top-ups and deposits have already been taken out by [`consumption::consumed_between`]. The burn
//! over a window is the consumption between the first and last samples inside it divided by the
//! time between them. A gap while the daemon was down is spanned by the consumption recorded when
//! polling resumed, so it reads as the average burn over the gap, never as zero.

pub mod consumption;
pub mod schedule;

use crate::config::Window;
use chrono::{DateTime, Utc};
use schedule::Period;

/// A window exports nothing until its samples span at least this fraction of it.
pub const MIN_WINDOW_COVERAGE: f64 = 0.1;

/// One point of a pool's history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Unix time in seconds.
    pub t: f64,
    /// Cumulative consumption at `t`.
    pub consumed: f64,
}

/// Burn rate (units per second) over the `window` seconds before `now`, from `points` sorted by
/// time. `None` until there are two samples spanning at least 10% of the window.
pub fn burn_rate(points: &[Point], window_secs: f64, now: f64) -> Option<f64> {
    let from = now - window_secs;
    let first = points.iter().find(|p| p.t >= from && p.t <= now)?;
    let last = points.iter().rev().find(|p| p.t >= from && p.t <= now)?;
    let span = last.t - first.t;
    if span <= 0.0 || span < MIN_WINDOW_COVERAGE * window_secs {
        return None;
    }
    Some(((last.consumed - first.consumed) / span).max(0.0))
}

/// Average burn since the period start: used-in-period over elapsed time.
pub fn period_burn_rate(
    used: Option<f64>,
    period: Option<Period>,
    now: DateTime<Utc>,
) -> Option<f64> {
    let used = used?;
    let period = period?;
    let elapsed = (now - period.start).num_milliseconds() as f64 / 1000.0;
    if elapsed <= 0.0 {
        return None;
    }
    Some((used / elapsed).max(0.0))
}

/// Everything the forecast families export for one pool.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Forecast {
    /// Burn per configured window label, where the window has enough data.
    pub burn: Vec<(String, f64)>,
    /// Average burn since the period start.
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

/// Computes every forecast figure for one pool.
pub fn forecast(input: &ForecastInput<'_>) -> Forecast {
    let now = input.now.timestamp_millis() as f64 / 1000.0;
    let burn: Vec<(String, f64)> = input
        .windows
        .iter()
        .filter_map(|w| {
            burn_rate(input.points, w.duration.as_secs_f64(), now).map(|b| (w.label.clone(), b))
        })
        .collect();
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
    let reset = input
        .period
        .map(|p| p.end.timestamp_millis() as f64 / 1000.0);
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

    fn line(rate: f64, from: f64, to: f64, step: f64) -> Vec<Point> {
        let mut v = Vec::new();
        let mut t = from;
        while t <= to {
            v.push(Point {
                t,
                consumed: rate * (t - from),
            });
            t += step;
        }
        v
    }

    #[test]
    fn constant_burn_is_recovered() {
        let pts = line(0.5, 0.0, 7200.0, 60.0);
        assert_eq!(burn_rate(&pts, 3600.0, 7200.0), Some(0.5));
    }

    #[test]
    fn window_needs_two_samples_and_ten_percent_coverage() {
        let pts = line(1.0, 0.0, 300.0, 60.0); // 5 minutes of a 1h window: 8%
        assert_eq!(burn_rate(&pts, 3600.0, 300.0), None);
        let pts = line(1.0, 0.0, 360.0, 60.0); // 6 minutes: exactly 10%
        assert_eq!(burn_rate(&pts, 3600.0, 360.0), Some(1.0));
        assert_eq!(
            burn_rate(
                &[Point {
                    t: 0.0,
                    consumed: 0.0
                }],
                10.0,
                5.0
            ),
            None
        );
    }

    #[test]
    fn a_gap_is_averaged_not_zero() {
        // 10/s until t=100, daemon down until t=1000 while 5000 were consumed, then 10/s again.
        let mut pts = line(10.0, 0.0, 100.0, 10.0);
        pts.push(Point {
            t: 1000.0,
            consumed: 1000.0 + 5000.0,
        });
        pts.push(Point {
            t: 1010.0,
            consumed: 6100.0,
        });
        let b = burn_rate(&pts, 2000.0, 1010.0).unwrap();
        assert!((b - 6100.0 / 1010.0).abs() < 1e-9);
    }

    #[test]
    fn projections_hand_computed() {
        // 1000 left, burning 1/s over the last hour, reset in 2000s: exhausts in 1000s, -1000 at reset.
        let now = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        let n = now.timestamp() as f64;
        let pts = line(1.0, n - 3600.0, n, 60.0);
        let period = Period {
            start: now - chrono::Duration::seconds(86_400),
            end: now + chrono::Duration::seconds(2000),
        };
        let f = forecast(&ForecastInput {
            points: &pts,
            windows: &[w("1h", 3600)],
            forecast_window: &w("1h", 3600),
            used: Some(43_200.0),
            remaining: Some(1000.0),
            period: Some(period),
            now,
        });
        assert_eq!(f.burn, vec![("1h".to_string(), 1.0)]);
        assert_eq!(f.burn_period, Some(0.5));
        assert_eq!(f.exhaustion, Some(n + 1000.0));
        assert_eq!(f.projected_remaining_at_reset, Some(-1000.0));
        assert_eq!(f.exhausts_before_reset, Some(true));
    }

    #[test]
    fn period_average_is_the_fallback_and_never_reset_is_false() {
        let now = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        let period = Period {
            start: now - chrono::Duration::seconds(1000),
            end: now + chrono::Duration::seconds(1000),
        };
        let f = forecast(&ForecastInput {
            points: &[],
            windows: &[w("1h", 3600)],
            forecast_window: &w("1h", 3600),
            used: Some(100.0),
            remaining: Some(500.0),
            period: Some(period),
            now,
        });
        assert!(f.burn.is_empty());
        assert_eq!(f.burn_forecast, Some(0.1));
        assert_eq!(f.projected_remaining_at_reset, Some(400.0));
        assert_eq!(f.exhausts_before_reset, Some(false));

        let f = forecast(&ForecastInput {
            period: None,
            used: None,
            ..ForecastInput {
                points: &[],
                windows: &[],
                forecast_window: &w("1h", 3600),
                used: None,
                remaining: Some(1.0),
                period: None,
                now,
            }
        });
        assert_eq!(f.exhausts_before_reset, Some(false));
        assert_eq!(f.exhaustion, None);
    }

    #[test]
    fn unlimited_pools_get_no_projection() {
        let now = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
        let n = now.timestamp() as f64;
        let pts = line(1.0, n - 3600.0, n, 60.0);
        let f = forecast(&ForecastInput {
            points: &pts,
            windows: &[w("1h", 3600)],
            forecast_window: &w("1h", 3600),
            used: Some(5.0),
            remaining: None,
            period: None,
            now,
        });
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
}
