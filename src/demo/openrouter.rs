//! A simulated OpenRouter-style key endpoint (`GET /api/v1/key`) for the generic `http_json` provider.
//!
//! It serves the shape OpenRouter documents: `data.limit`, `data.limit_remaining`,
//! `data.limit_reset`, `data.usage` (all time) and `data.usage_daily|weekly|monthly`, all in USD
//! as JSON numbers. Usage windows reset at 00:00 UTC, on Mondays and on the 1st, as OpenRouter's
//! do. Spend accrues lazily from the simulator's clock and stops at the limit.

use super::imagerouter::window_start;
use super::{Fault, SimServer, bearer, fault_response, take_fault};
use crate::clock::Clock;
use crate::forecast::schedule::Every;
use axum::Router;
use axum::extract::{Json, State as Extract};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One simulated key.
#[derive(Debug, Clone)]
pub struct Params {
    pub token: String,
    pub label: String,
    /// USD cap per `limit_reset` window (all time when that is `None`); `None` = no cap.
    pub limit: Option<f64>,
    pub limit_reset: Option<Every>,
    /// All-time usage at the start; the current day, week and month start from `usage_month`.
    pub usage: f64,
    pub usage_month: f64,
    pub usd_per_second: f64,
}

struct Key {
    p: Params,
    /// Usage in the current day, week and month, and the starts of those windows.
    windows: [(Every, DateTime<Utc>, f64); 3],
    last: DateTime<Utc>,
    requests: u64,
}

fn next_boundary(every: Every, start: DateTime<Utc>) -> DateTime<Utc> {
    match every {
        Every::Day => start + ChronoDuration::days(1),
        Every::Week => start + ChronoDuration::weeks(1),
        Every::Month => crate::forecast::schedule::add_months_clamped(start.date_naive(), 1)
            .and_time(chrono::NaiveTime::MIN)
            .and_utc(),
    }
}

impl Key {
    fn in_window(&self, every: Every) -> f64 {
        self.windows
            .iter()
            .find(|w| w.0 == every)
            .map(|w| w.2)
            .unwrap_or(0.0)
    }

    /// Usage counted against the limit.
    fn limited_usage(&self) -> f64 {
        match self.p.limit_reset {
            Some(e) => self.in_window(e),
            None => self.p.usage,
        }
    }

    fn advance(&mut self, now: DateTime<Utc>) {
        while self.last < now {
            let until = self
                .windows
                .iter()
                .map(|w| next_boundary(w.0, w.1))
                .fold(now, |a, b| a.min(b));
            let dt = (until - self.last).num_milliseconds() as f64 / 1000.0;
            let mut spend = self.p.usd_per_second * dt;
            if let Some(limit) = self.p.limit {
                spend = spend.min((limit - self.limited_usage()).max(0.0));
            }
            self.p.usage += spend;
            for w in &mut self.windows {
                w.2 += spend;
            }
            self.last = until;
            for w in &mut self.windows {
                if until >= next_boundary(w.0, w.1) {
                    w.1 = window_start(w.0, until);
                    w.2 = 0.0;
                }
            }
        }
    }

    fn payload(&self) -> serde_json::Value {
        let r = |x: f64| (x * 1e6).round() / 1e6;
        let remaining = self.p.limit.map(|l| r((l - self.limited_usage()).max(0.0)));
        serde_json::json!({
            "data": {
                "label": self.p.label,
                "limit": self.p.limit,
                "limit_remaining": remaining,
                "limit_reset": self.p.limit_reset.map(|e| match e {
                    Every::Day => "daily",
                    Every::Week => "weekly",
                    Every::Month => "monthly",
                }),
                "include_byok_in_limit": false,
                "usage": r(self.p.usage),
                "usage_daily": r(self.in_window(Every::Day)),
                "usage_weekly": r(self.in_window(Every::Week)),
                "usage_monthly": r(self.in_window(Every::Month)),
                "byok_usage": 0,
                "byok_usage_daily": 0,
                "byok_usage_weekly": 0,
                "byok_usage_monthly": 0,
                "is_free_tier": false,
                "is_provisioning_key": false,
                "is_management_key": false,
                "expires_at": null,
            }
        })
    }
}

/// The simulator's state, shared by its HTTP handlers and the tests that drive it.
pub struct Simulator {
    clock: Arc<dyn Clock>,
    keys: Mutex<BTreeMap<String, Key>>,
    fault: Mutex<Option<Fault>>,
}

impl Simulator {
    pub fn new(clock: Arc<dyn Clock>, keys: Vec<Params>) -> Arc<Self> {
        let now = clock.now();
        let keys = keys
            .into_iter()
            .map(|p| {
                // Spread the month's usage evenly back to the window starts, so day and week
                // usage look plausible from the start.
                let month_start = window_start(Every::Month, now);
                let per_sec = p.usage_month / ((now - month_start).num_seconds().max(1) as f64);
                let windows = [Every::Day, Every::Week, Every::Month].map(|e| {
                    let s = window_start(e, now).max(month_start);
                    (
                        e,
                        window_start(e, now),
                        per_sec * (now - s).num_seconds() as f64,
                    )
                });
                (
                    p.token.clone(),
                    Key {
                        p,
                        windows,
                        last: now,
                        requests: 0,
                    },
                )
            })
            .collect();
        Arc::new(Simulator {
            clock,
            keys: Mutex::new(keys),
            fault: Mutex::new(None),
        })
    }

    /// The key's document now.
    pub fn payload(&self, token: &str) -> Option<serde_json::Value> {
        let now = self.clock.now();
        let mut keys = self.keys.lock().unwrap();
        let k = keys.get_mut(token)?;
        k.advance(now);
        Some(k.payload())
    }

    /// Serves `fault` instead of payloads until cleared (or `count` requests).
    pub fn set_fault(&self, fault: Option<Fault>) {
        *self.fault.lock().unwrap() = fault;
    }

    /// Requests served for the key `token`.
    pub fn requests(&self, token: &str) -> u64 {
        self.keys
            .lock()
            .unwrap()
            .get(token)
            .map(|k| k.requests)
            .unwrap_or(0)
    }

    /// The HTTP routes: `/api/v1/key` plus `/_sim/fault`.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/api/v1/key", get(key))
            .route("/_sim/fault", post(fault_handler))
            .with_state(self.clone())
    }

    /// Starts the simulator on an ephemeral loopback port.
    pub async fn serve(self: &Arc<Self>) -> std::io::Result<SimServer> {
        SimServer::start(self.router()).await
    }
}

async fn key(Extract(sim): Extract<Arc<Simulator>>, headers: HeaderMap) -> Response {
    if let Some(f) = take_fault(&sim.fault) {
        return fault_response(f).await;
    }
    let now = sim.clock.now();
    let mut keys = sim.keys.lock().unwrap();
    match keys.get_mut(bearer(&headers)) {
        Some(k) => {
            k.advance(now);
            k.requests += 1;
            Json(k.payload()).into_response()
        }
        None => (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({
                "error": { "code": 401, "message": "No auth credentials found" }
            })),
        )
            .into_response(),
    }
}

async fn fault_handler(
    Extract(sim): Extract<Arc<Simulator>>,
    Json(f): Json<Option<Fault>>,
) -> StatusCode {
    sim.set_fault(f);
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::time::Duration;

    #[test]
    fn monthly_usage_resets_on_the_first_and_stops_at_the_limit() {
        let start = DateTime::parse_from_rfc3339("2026-05-31T23:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let clock = Arc::new(ManualClock::new(start));
        let sim = Simulator::new(
            clock.clone(),
            vec![Params {
                token: "t".into(),
                label: "sk-or-v1-abc...123".into(),
                limit: Some(100.0),
                limit_reset: Some(Every::Month),
                usage: 500.0,
                usage_month: 99.0,
                usd_per_second: 0.001,
            }],
        );
        // 1000 s to reach the limit, then nothing until the month resets at midnight.
        clock.advance(Duration::from_secs(1800));
        let d = &sim.payload("t").unwrap()["data"];
        assert_eq!(
            (d["usage_monthly"].as_f64(), d["limit_remaining"].as_f64()),
            (Some(100.0), Some(0.0))
        );
        assert_eq!(d["usage"].as_f64(), Some(501.0));
        clock.advance(Duration::from_secs(3600));
        let d = &sim.payload("t").unwrap()["data"];
        // 00:00 to 00:30 on June 1st: 1.8 USD.
        assert_eq!(d["usage_monthly"].as_f64(), Some(1.8));
        assert_eq!(d["limit_remaining"].as_f64(), Some(98.2));
        assert_eq!(d["usage"].as_f64(), Some(502.8));
    }
}
