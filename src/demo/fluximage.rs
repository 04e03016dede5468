//! A simulated Fluximage usage API: real HTTP, documented payloads, credits burning over time, top-ups and resets.
//!
//! Each account is selected by its bearer key. State advances lazily from the simulator's clock
//! on every request: AI credits come from the monthly allocation first, then from top-ups;
//! compression stops at its limit; the billing period resets from the anchor; scheduled top-ups
//! arrive. Tests control it directly or over `POST /_sim/...`.

use super::SimServer;
use crate::clock::Clock;
use crate::forecast::schedule::Schedule;
use axum::Router;
use axum::extract::{Json, State as Extract};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One simulated account.
#[derive(Debug, Clone)]
pub struct Params {
    pub key: String,
    pub plan: String,
    pub billing_anchor: NaiveDate,
    pub compressor_used: f64,
    /// The compression allowance (99999 on pro and agency, as the real API reports).
    pub compressor_limit: f64,
    pub compress_per_second: f64,
    pub ia_monthly: f64,
    pub ia_used: f64,
    pub ia_topup: f64,
    pub ai_per_second: f64,
    /// A top-up of `topup_amount` arrives this often.
    pub topup_every: Option<Duration>,
    pub topup_amount: f64,
}

impl Params {
    /// A pro account with the documented example's numbers and no burn.
    pub fn documented(key: &str, billing_anchor: NaiveDate) -> Self {
        Params {
            key: key.into(),
            plan: "pro".into(),
            billing_anchor,
            compressor_used: 45.0,
            compressor_limit: 99_999.0,
            compress_per_second: 0.0,
            ia_monthly: 1000.0,
            ia_used: 120.0,
            ia_topup: 200.0,
            ai_per_second: 0.0,
            topup_every: None,
            topup_amount: 0.0,
        }
    }
}

/// A canned failure served instead of the payload.
#[derive(Debug, Clone, Deserialize)]
pub struct Fault {
    pub status: u16,
    #[serde(default)]
    pub body: String,
    /// How many requests fail; `None` = until cleared.
    pub count: Option<u32>,
    /// Delay before answering, in milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
}

struct Account {
    p: Params,
    last: DateTime<Utc>,
    period_start: Option<DateTime<Utc>>,
    next_topup: Option<DateTime<Utc>>,
    requests: u64,
}

impl Account {
    fn unlimited(&self) -> bool {
        matches!(self.p.plan.as_str(), "pro" | "agency") || self.p.compressor_limit >= 99_999.0
    }

    /// Moves the account forward to `now`.
    fn advance(&mut self, now: DateTime<Utc>) {
        if now <= self.last {
            return;
        }
        // Split the elapsed time at reset and top-up instants so each piece is burned in order.
        loop {
            let schedule = Schedule::Monthly {
                anchor: self.p.billing_anchor,
            };
            let period = schedule.period_at(self.last).expect("monthly has periods");
            let mut until = now.min(period.end);
            if let Some(t) = self.next_topup {
                until = until.min(t.max(self.last));
            }
            let dt = (until - self.last).num_milliseconds() as f64 / 1000.0;
            self.burn(dt);
            self.last = until;
            if until == period.end {
                self.p.compressor_used = 0.0;
                self.p.ia_used = 0.0;
                self.period_start = Some(period.end);
            }
            if let (Some(t), Some(every)) = (self.next_topup, self.p.topup_every)
                && until >= t
            {
                self.p.ia_topup += self.p.topup_amount;
                self.next_topup = Some(t + chrono::Duration::from_std(every).expect("in range"));
            }
            if self.last >= now {
                break;
            }
        }
    }

    fn burn(&mut self, dt: f64) {
        if dt <= 0.0 {
            return;
        }
        let mut ai = self.p.ai_per_second * dt;
        if self.p.plan != "free" {
            let from_monthly = ai.min((self.p.ia_monthly - self.p.ia_used).max(0.0));
            self.p.ia_used += from_monthly;
            ai -= from_monthly;
            let from_topup = ai.min(self.p.ia_topup);
            self.p.ia_topup -= from_topup;
        }
        let c = self.p.compress_per_second * dt;
        self.p.compressor_used = if self.unlimited() {
            self.p.compressor_used + c
        } else {
            (self.p.compressor_used + c).min(self.p.compressor_limit)
        };
    }

    fn payload(&self) -> serde_json::Value {
        // The real API reports whole credits.
        let used = self.p.compressor_used.floor();
        let ia_used = self.p.ia_used.floor();
        let topup = self.p.ia_topup.floor();
        let monthly = self.p.ia_monthly;
        let remaining = (monthly - ia_used).max(0.0) + topup;
        let can_compress = self.unlimited() || used < self.p.compressor_limit;
        serde_json::json!({
            "plan": self.p.plan,
            "compressor_used": used as u64,
            "compressor_limit": self.p.compressor_limit as u64,
            "ia_credits_used": ia_used as u64,
            "ia_credits_monthly": monthly as u64,
            "ia_topup_credits": topup as u64,
            "ia_credits_remaining": remaining as u64,
            "canCompress": can_compress,
            "canUseIA": self.p.plan != "free" && remaining >= 1.0,
            "topups": { "small": "topup_small_100", "medium": "topup_medium_500", "large": "topup_large_2000" }
        })
    }
}

/// The simulator's state, shared by its HTTP handlers and the tests that drive it.
pub struct Simulator {
    clock: Arc<dyn Clock>,
    accounts: Mutex<BTreeMap<String, Account>>,
    fault: Mutex<Option<Fault>>,
}

impl Simulator {
    pub fn new(clock: Arc<dyn Clock>, accounts: Vec<Params>) -> Arc<Self> {
        let now = clock.now();
        let accounts = accounts
            .into_iter()
            .map(|p| {
                let next_topup = p
                    .topup_every
                    .map(|e| now + chrono::Duration::from_std(e).expect("in range"));
                (
                    p.key.clone(),
                    Account {
                        p,
                        last: now,
                        period_start: None,
                        next_topup,
                        requests: 0,
                    },
                )
            })
            .collect();
        Arc::new(Simulator {
            clock,
            accounts: Mutex::new(accounts),
            fault: Mutex::new(None),
        })
    }

    /// Adds purchased AI top-up credits to the account with `key`.
    pub fn top_up(&self, key: &str, amount: f64) {
        let now = self.clock.now();
        if let Some(a) = self.accounts.lock().unwrap().get_mut(key) {
            a.advance(now);
            a.p.ia_topup += amount;
        }
    }

    /// Changes an account's burn rates from now on.
    pub fn set_burn(&self, key: &str, ai_per_second: f64, compress_per_second: f64) {
        let now = self.clock.now();
        if let Some(a) = self.accounts.lock().unwrap().get_mut(key) {
            a.advance(now);
            a.p.ai_per_second = ai_per_second;
            a.p.compress_per_second = compress_per_second;
        }
    }

    /// Serves `fault` instead of payloads until cleared (or `count` requests).
    pub fn set_fault(&self, fault: Option<Fault>) {
        *self.fault.lock().unwrap() = fault;
    }

    /// The account's current parameters, advanced to now.
    pub fn params(&self, key: &str) -> Option<Params> {
        let now = self.clock.now();
        let mut accounts = self.accounts.lock().unwrap();
        let a = accounts.get_mut(key)?;
        a.advance(now);
        Some(a.p.clone())
    }

    /// Requests served for the account with `key`.
    pub fn requests(&self, key: &str) -> u64 {
        self.accounts
            .lock()
            .unwrap()
            .get(key)
            .map(|a| a.requests)
            .unwrap_or(0)
    }

    /// The HTTP routes: the documented usage endpoint plus `/_sim/*` controls.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/api/usage", get(usage))
            .route("/_sim/topup", post(topup_handler))
            .route("/_sim/fault", post(fault_handler))
            .with_state(self.clone())
    }

    /// Starts the simulator on an ephemeral loopback port.
    pub async fn serve(self: &Arc<Self>) -> std::io::Result<SimServer> {
        SimServer::start(self.router()).await
    }
}

async fn usage(Extract(sim): Extract<Arc<Simulator>>, headers: HeaderMap) -> Response {
    let fault = {
        let mut f = sim.fault.lock().unwrap();
        let current = f.clone();
        if let Some(fault) = f.as_mut()
            && let Some(n) = fault.count.as_mut()
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                *f = None;
            }
        }
        current
    };
    if let Some(fault) = fault {
        if fault.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(fault.delay_ms)).await;
        }
        let status =
            StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (status, fault.body).into_response();
    }
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let now = sim.clock.now();
    let mut accounts = sim.accounts.lock().unwrap();
    match accounts.get_mut(key) {
        Some(a) => {
            a.advance(now);
            a.requests += 1;
            Json(a.payload()).into_response()
        }
        // The real API's 401 body is undocumented; any body will do.
        None => (StatusCode::UNAUTHORIZED, "Unauthorized").into_response(),
    }
}

#[derive(Deserialize)]
struct TopUp {
    key: String,
    amount: f64,
}

async fn topup_handler(Extract(sim): Extract<Arc<Simulator>>, Json(t): Json<TopUp>) -> StatusCode {
    sim.top_up(&t.key, t.amount);
    StatusCode::NO_CONTENT
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

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn ai_burns_monthly_then_top_ups_and_resets() {
        let clock = Arc::new(ManualClock::new(at("2026-11-14T23:00:00Z")));
        let mut p = Params::documented("k", NaiveDate::from_ymd_opt(2026, 1, 15).unwrap());
        p.ia_used = 990.0;
        p.ai_per_second = 1.0;
        let sim = Simulator::new(clock.clone(), vec![p]);
        clock.advance(Duration::from_secs(30));
        let p = sim.params("k").unwrap();
        assert_eq!((p.ia_used, p.ia_topup), (1000.0, 180.0));
        // The 180 top-up credits drain by 23:03:30; the reset at 2026-11-15T00:00Z restores the
        // allocation, and 30s later 30 credits of the new period are used.
        clock.advance(Duration::from_secs(3600));
        let p = sim.params("k").unwrap();
        assert_eq!((p.ia_used, p.ia_topup), (30.0, 0.0));
    }
}
