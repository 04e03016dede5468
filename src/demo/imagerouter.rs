//! A simulated ImageRouter credits API: real HTTP, documented payloads, keys spending against their windows, deposits.
//!
//! Each account is selected by its bearer token. State advances lazily from the simulator's clock
//! on every request: each active key spends at its own rate until its window's spend limit or the
//! balance runs out; windows restart at 00:00 UTC (day), Monday 00:00 UTC (week) or the 1st of the
//! month; scheduled deposits arrive. Money is served as decimal strings with 4 decimals, and
//! `credit_usage = total_deposits − remaining_credits` holds exactly, as the reference says.

use super::{Fault, SimServer, bearer, fault_response, take_fault};
use crate::clock::Clock;
use crate::forecast::schedule::Every;
use axum::Router;
use axum::extract::{Json, Query, State as Extract};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Datelike, Duration as ChronoDuration, NaiveDate, NaiveTime, Utc};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One simulated API key.
#[derive(Debug, Clone)]
pub struct KeyParams {
    pub id: String,
    pub name: String,
    pub active: bool,
    /// USD cap per window (or lifetime when `period` is `None`); `None` = no cap.
    pub spend_limit: Option<f64>,
    pub period: Option<Every>,
    pub usd_per_second: f64,
    /// Average cost of one request, to count requests from spend.
    pub usd_per_request: f64,
    /// Spent all time, at the start.
    pub credit_usage: f64,
    /// Spent in the current window, at the start.
    pub period_spend: f64,
    pub total_requests: u64,
    pub created_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl KeyParams {
    /// A key with nothing spent, no cap and no burn.
    pub fn new(id: &str, name: &str) -> Self {
        KeyParams {
            id: id.into(),
            name: name.into(),
            active: true,
            spend_limit: None,
            period: None,
            usd_per_second: 0.0,
            usd_per_request: 0.01,
            credit_usage: 0.0,
            period_spend: 0.0,
            total_requests: 0,
            created_at: None,
            expires_at: None,
        }
    }

    /// The inactive temporary web token every account lists.
    pub fn temp_jwt() -> Self {
        KeyParams {
            active: false,
            credit_usage: 0.03,
            period_spend: 0.03,
            total_requests: 45,
            ..KeyParams::new("temp_jwt", "Temporary web token (imagerouter.io)")
        }
    }
}

/// One simulated account.
#[derive(Debug, Clone)]
pub struct Params {
    pub token: String,
    pub total_deposits: f64,
    /// Spent all time, at the start (may exceed the keys' sum: deleted keys spent too).
    pub credit_usage: f64,
    pub keys: Vec<KeyParams>,
    /// A deposit of `deposit_amount` arrives this often.
    pub deposit_every: Option<Duration>,
    pub deposit_amount: f64,
}

impl Params {
    /// The documented example at `now`: the Production Key in a month window that began on the
    /// 1st, and the temp_jwt key. Nothing burns.
    pub fn documented(token: &str, now: DateTime<Utc>) -> Self {
        Params {
            token: token.into(),
            total_deposits: 30.0,
            credit_usage: 4.5,
            keys: vec![
                KeyParams {
                    spend_limit: Some(5.0),
                    period: Some(Every::Month),
                    credit_usage: 4.2,
                    period_spend: 1.2,
                    total_requests: 150,
                    created_at: Some(now - ChronoDuration::days(200)),
                    expires_at: Some(now + ChronoDuration::days(200)),
                    ..KeyParams::new("d9eb93dc-56b1-4216-91b5-a44944508bbc", "Production Key")
                },
                KeyParams::temp_jwt(),
            ],
            deposit_every: None,
            deposit_amount: 0.0,
        }
    }
}

/// Start of the window containing `t`: 00:00 UTC, Monday 00:00 UTC, or the 1st 00:00 UTC.
pub fn window_start(every: Every, t: DateTime<Utc>) -> DateTime<Utc> {
    let d = t.date_naive();
    let day = match every {
        Every::Day => d,
        Every::Week => d - ChronoDuration::days(d.weekday().num_days_from_monday() as i64),
        Every::Month => NaiveDate::from_ymd_opt(d.year(), d.month(), 1).expect("valid date"),
    };
    day.and_time(NaiveTime::MIN).and_utc()
}

fn window_end(every: Every, start: DateTime<Utc>) -> DateTime<Utc> {
    match every {
        Every::Day => start + ChronoDuration::days(1),
        Every::Week => start + ChronoDuration::weeks(1),
        Every::Month => {
            let d = crate::forecast::schedule::add_months_clamped(start.date_naive(), 1);
            d.and_time(NaiveTime::MIN).and_utc()
        }
    }
}

struct Key {
    p: KeyParams,
    /// Start of the window `period_spend` belongs to.
    window: Option<DateTime<Utc>>,
    request_frac: f64,
}

struct Account {
    p: Params,
    keys: Vec<Key>,
    last: DateTime<Utc>,
    next_deposit: Option<DateTime<Utc>>,
    requests: u64,
}

impl Account {
    fn balance(&self) -> f64 {
        (self.p.total_deposits - self.p.credit_usage).max(0.0)
    }

    /// Moves the account forward to `now`, split at window boundaries and deposits.
    fn advance(&mut self, now: DateTime<Utc>) {
        while self.last < now {
            let mut until = now;
            for k in &self.keys {
                if let (Some(every), Some(w)) = (k.p.period, k.window) {
                    until = until.min(window_end(every, w));
                }
            }
            if let Some(t) = self.next_deposit {
                until = until.min(t.max(self.last));
            }
            let dt = (until - self.last).num_milliseconds() as f64 / 1000.0;
            for i in 0..self.keys.len() {
                let balance = self.balance();
                let k = &mut self.keys[i];
                let expired = k.p.expires_at.is_some_and(|e| e <= self.last);
                if !k.p.active || expired || k.p.usd_per_second <= 0.0 {
                    continue;
                }
                let mut spend = (k.p.usd_per_second * dt).min(balance);
                if let Some(limit) = k.p.spend_limit {
                    let so_far = if k.p.period.is_some() {
                        k.p.period_spend
                    } else {
                        k.p.credit_usage
                    };
                    spend = spend.min((limit - so_far).max(0.0));
                }
                if spend <= 0.0 {
                    continue;
                }
                k.p.credit_usage += spend;
                k.p.period_spend += spend;
                k.request_frac += spend / k.p.usd_per_request;
                let whole = k.request_frac.floor();
                k.p.total_requests += whole as u64;
                k.request_frac -= whole;
                self.p.credit_usage += spend;
            }
            self.last = until;
            for k in &mut self.keys {
                if let (Some(every), Some(w)) = (k.p.period, k.window)
                    && until >= window_end(every, w)
                {
                    k.window = Some(window_start(every, until));
                    k.p.period_spend = 0.0;
                }
            }
            if let (Some(t), Some(every)) = (self.next_deposit, self.p.deposit_every)
                && until >= t
            {
                self.p.total_deposits += self.p.deposit_amount;
                self.next_deposit = Some(t + ChronoDuration::from_std(every).expect("in range"));
            }
        }
    }

    fn payload(&self, by_key: bool) -> serde_json::Value {
        let units = |x: f64| (x * 10_000.0).round() as i64;
        let money = |u: i64| format!("{}.{:04}", u / 10_000, u % 10_000);
        let deposits = units(self.p.total_deposits);
        let usage = units(self.p.credit_usage).min(deposits);
        let mut v = serde_json::json!({
            "remaining_credits": money(deposits - usage),
            "credit_usage": money(usage),
            "total_deposits": money(deposits),
        });
        if by_key {
            let ts = |t: Option<DateTime<Utc>>| {
                t.map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
            };
            let keys: Vec<serde_json::Value> = self
                .keys
                .iter()
                .map(|k| {
                    let period_spend = units(k.p.period_spend);
                    let (period_spend, period_start) = match k.p.period {
                        // A lifetime cap, or no cap: period_spend is all-time spend.
                        None => (units(k.p.credit_usage), None),
                        // The window shows only once the key has spent in it.
                        Some(_) if period_spend > 0 => (period_spend, k.window),
                        Some(_) => (0, None),
                    };
                    serde_json::json!({
                        "api_key_id": k.p.id,
                        "api_key_name": k.p.name,
                        "credit_usage": money(units(k.p.credit_usage)),
                        "total_requests": k.p.total_requests,
                        "created_at": ts(k.p.created_at),
                        "is_active": k.p.active,
                        "spend_limit": k.p.spend_limit.map(|l| money(units(l))),
                        "spend_limit_period": k.p.period.map(|e| match e {
                            Every::Day => "day",
                            Every::Week => "week",
                            Every::Month => "month",
                        }),
                        "period_spend": money(period_spend),
                        "period_start": ts(period_start),
                        "expires_at": ts(k.p.expires_at),
                    })
                })
                .collect();
            v["usage_by_api_key"] = serde_json::Value::Array(keys);
        }
        v
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
                let keys = p
                    .keys
                    .iter()
                    .map(|k| Key {
                        window: k.period.map(|e| window_start(e, now)),
                        p: k.clone(),
                        request_frac: 0.0,
                    })
                    .collect();
                let next_deposit = p
                    .deposit_every
                    .map(|e| now + ChronoDuration::from_std(e).expect("in range"));
                (
                    p.token.clone(),
                    Account {
                        p,
                        keys,
                        last: now,
                        next_deposit,
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

    fn with<T>(&self, token: &str, f: impl FnOnce(&mut Account) -> T) -> Option<T> {
        let now = self.clock.now();
        let mut accounts = self.accounts.lock().unwrap();
        let a = accounts.get_mut(token)?;
        a.advance(now);
        Some(f(a))
    }

    /// Adds a completed deposit.
    pub fn deposit(&self, token: &str, usd: f64) {
        self.with(token, |a| a.p.total_deposits += usd);
    }

    /// Deletes a key: it disappears from the listing.
    pub fn remove_key(&self, token: &str, id: &str) {
        self.with(token, |a| a.keys.retain(|k| k.p.id != id));
    }

    /// Adds a key (starting its window now when it has one).
    pub fn add_key(&self, token: &str, key: KeyParams) {
        let now = self.clock.now();
        self.with(token, |a| {
            a.keys.push(Key {
                window: key.period.map(|e| window_start(e, now)),
                p: key,
                request_frac: 0.0,
            })
        });
    }

    /// Changes a key's spend rate from now on.
    pub fn set_rate(&self, token: &str, id: &str, usd_per_second: f64) {
        self.with(token, |a| {
            for k in a.keys.iter_mut().filter(|k| k.p.id == id) {
                k.p.usd_per_second = usd_per_second;
            }
        });
    }

    /// The account's numbers now, as served with `by_api_key=true`.
    pub fn payload(&self, token: &str) -> Option<serde_json::Value> {
        self.with(token, |a| a.payload(true))
    }

    /// Serves `fault` instead of payloads until cleared (or `count` requests).
    pub fn set_fault(&self, fault: Option<Fault>) {
        *self.fault.lock().unwrap() = fault;
    }

    /// Requests served for the account with `token`.
    pub fn requests(&self, token: &str) -> u64 {
        self.accounts
            .lock()
            .unwrap()
            .get(token)
            .map(|a| a.requests)
            .unwrap_or(0)
    }

    /// The HTTP routes: the documented credits endpoint plus `/_sim/*` controls.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/credits", get(credits))
            .route("/_sim/deposit", post(deposit_handler))
            .route("/_sim/fault", post(fault_handler))
            .with_state(self.clone())
    }

    /// Starts the simulator on an ephemeral loopback port.
    pub async fn serve(self: &Arc<Self>) -> std::io::Result<SimServer> {
        SimServer::start(self.router()).await
    }
}

#[derive(Deserialize)]
struct CreditsQuery {
    by_api_key: Option<String>,
}

async fn credits(
    Extract(sim): Extract<Arc<Simulator>>,
    Query(q): Query<CreditsQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(f) = take_fault(&sim.fault) {
        return fault_response(f).await;
    }
    let by_key = q.by_api_key.as_deref() == Some("true");
    let token = bearer(&headers).to_string();
    let served = sim.with(&token, |a| {
        a.requests += 1;
        a.payload(by_key)
    });
    match served {
        Some(v) => Json(v).into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({
                "error": { "message": "Invalid API key", "type": "authentication_error" }
            })),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct Deposit {
    token: String,
    usd: f64,
}

async fn deposit_handler(
    Extract(sim): Extract<Arc<Simulator>>,
    Json(d): Json<Deposit>,
) -> StatusCode {
    sim.deposit(&d.token, d.usd);
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
    fn keys_spend_until_their_window_limit_then_the_window_resets() {
        let clock = Arc::new(ManualClock::new(at("2026-05-20T23:00:00Z")));
        let key = KeyParams {
            spend_limit: Some(1.0),
            period: Some(Every::Day),
            usd_per_second: 0.001,
            ..KeyParams::new("k1", "Batch")
        };
        let p = Params {
            token: "t".into(),
            total_deposits: 100.0,
            credit_usage: 0.0,
            keys: vec![key, KeyParams::temp_jwt()],
            deposit_every: Some(Duration::from_secs(7200)),
            deposit_amount: 10.0,
        };
        let sim = Simulator::new(clock.clone(), vec![p]);
        let v = sim.payload("t").unwrap();
        assert_eq!(
            v["usage_by_api_key"][0]["period_start"],
            serde_json::Value::Null
        );
        // 30 minutes at 0.001/s = 1.8, capped at the daily limit of 1.
        clock.advance(Duration::from_secs(1800));
        let v = sim.payload("t").unwrap();
        let k = &v["usage_by_api_key"][0];
        assert_eq!(k["period_spend"], "1.0000");
        assert_eq!(k["period_start"], "2026-05-20T00:00:00.000Z");
        assert_eq!(v["credit_usage"], "1.0000");
        assert_eq!(v["remaining_credits"], "99.0000");
        // At midnight the window restarts and 1 more USD is spent by 00:16:40. A deposit of 10
        // arrives at 01:00.
        clock.advance(Duration::from_secs(7200));
        let v = sim.payload("t").unwrap();
        let k = &v["usage_by_api_key"][0];
        assert_eq!(k["period_spend"], "1.0000");
        assert_eq!(k["period_start"], "2026-05-21T00:00:00.000Z");
        assert_eq!(k["credit_usage"], "2.0000");
        assert_eq!(v["total_deposits"], "110.0000");
        assert_eq!(v["remaining_credits"], "108.0000");
        assert_eq!(v["usage_by_api_key"][1]["is_active"], false);
        assert_eq!(
            v["usage_by_api_key"][1]["period_start"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn window_starts() {
        assert_eq!(
            window_start(Every::Week, at("2028-03-01T10:00:00Z")),
            at("2028-02-28T00:00:00Z")
        );
        assert_eq!(
            window_end(Every::Month, at("2028-02-01T00:00:00Z")),
            at("2028-03-01T00:00:00Z")
        );
    }
}
