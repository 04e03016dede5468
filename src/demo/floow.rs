//! A simulated Floow usage API: real HTTP, documented payloads, calls logged per endpoint and per UTC day, with weeks of history.
//!
//! Each account is selected by its bearer token and owns one or more keys; `keyId` reports on
//! another key of the same account. Calls accrue lazily from the simulator's clock at each
//! endpoint's rate and land in the UTC day they happen in. `daily` lists every day of the window,
//! zero-activity days included, and `days` outside 1..90 is refused as the real API does.

use super::{Fault, SimServer, bearer, fault_response, take_fault};
use crate::clock::Clock;
use axum::Router;
use axum::extract::{Json, Query, State as Extract};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Datelike, Duration as ChronoDuration, NaiveDate, NaiveTime, Utc, Weekday};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// One billed action.
#[derive(Debug, Clone)]
pub struct EndpointParams {
    pub name: String,
    pub label: String,
    pub credits_per_call: u64,
    pub calls_per_hour: f64,
}

impl EndpointParams {
    pub fn new(name: &str, label: &str, credits_per_call: u64, calls_per_hour: f64) -> Self {
        EndpointParams {
            name: name.into(),
            label: label.into(),
            credits_per_call,
            calls_per_hour,
        }
    }

    /// The three documented actions at the documented prices (600/20, 270/18, 90/9 credits).
    pub fn documented(calls_per_hour: f64) -> Vec<Self> {
        vec![
            EndpointParams::new("image_to_html", "Image → HTML", 30, calls_per_hour),
            EndpointParams::new("code_export", "Export Code", 15, calls_per_hour),
            EndpointParams::new("figma_export", "Figma Export", 10, calls_per_hour / 2.0),
        ]
    }
}

/// One API key of an account.
#[derive(Debug, Clone)]
pub struct KeyParams {
    pub id: String,
    pub name: String,
    pub endpoints: Vec<EndpointParams>,
    /// Calls already logged, by UTC day and endpoint name.
    pub history: BTreeMap<NaiveDate, BTreeMap<String, u64>>,
}

impl KeyParams {
    /// Plausible history for the `days` days before `today`: weekdays only, with a quiet day
    /// now and then. Today's calls accrue at the live rates from 00:00.
    pub fn with_demo_history(mut self, today: NaiveDate, days: i64) -> Self {
        for back in 1..=days {
            let date = today - ChronoDuration::days(back);
            let weekend = matches!(date.weekday(), Weekday::Sat | Weekday::Sun);
            let quiet = date.ordinal().is_multiple_of(11);
            if weekend || quiet {
                continue;
            }
            let entry = self.history.entry(date).or_default();
            for (i, e) in self.endpoints.iter().enumerate() {
                let calls = (e.calls_per_hour * 8.0) as u64
                    + (date.ordinal() as u64 * 7 + i as u64 * 3) % 5;
                if calls > 0 {
                    entry.insert(e.name.clone(), calls);
                }
            }
        }
        self
    }
}

/// One simulated account: its token belongs to the first key.
#[derive(Debug, Clone)]
pub struct Params {
    pub token: String,
    pub keys: Vec<KeyParams>,
}

struct Key {
    p: KeyParams,
    frac: Vec<f64>,
    last_used: Option<DateTime<Utc>>,
}

impl Key {
    fn credits_per_call(&self, endpoint: &str) -> u64 {
        self.p
            .endpoints
            .iter()
            .find(|e| e.name == endpoint)
            .map(|e| e.credits_per_call)
            .unwrap_or(1)
    }

    fn label(&self, endpoint: &str) -> String {
        self.p
            .endpoints
            .iter()
            .find(|e| e.name == endpoint)
            .map(|e| e.label.clone())
            .unwrap_or_else(|| endpoint.to_string())
    }
}

struct Account {
    keys: Vec<Key>,
    last: DateTime<Utc>,
    requests: u64,
}

fn midnight(d: NaiveDate) -> DateTime<Utc> {
    d.and_time(NaiveTime::MIN).and_utc()
}

fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

impl Account {
    /// Logs the calls made up to `now`, each in the UTC day it happened in.
    fn advance(&mut self, now: DateTime<Utc>) {
        while self.last < now {
            let day = self.last.date_naive();
            let until = now.min(midnight(day + ChronoDuration::days(1)));
            let hours = (until - self.last).num_milliseconds() as f64 / 3_600_000.0;
            for k in &mut self.keys {
                for (i, e) in k.p.endpoints.iter().enumerate() {
                    k.frac[i] += e.calls_per_hour * hours;
                    let whole = k.frac[i].floor();
                    if whole >= 1.0 {
                        k.frac[i] -= whole;
                        *k.p.history
                            .entry(day)
                            .or_default()
                            .entry(e.name.clone())
                            .or_insert(0) += whole as u64;
                        k.last_used = Some(until);
                    }
                }
            }
            self.last = until;
        }
    }

    fn payload(&self, key: &Key, days: i64, now: DateTime<Utc>) -> serde_json::Value {
        let today = now.date_naive();
        let first = today - ChronoDuration::days(days);
        let mut by_endpoint: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        let mut daily = Vec::new();
        let mut date = first;
        while date <= today {
            let (mut calls, mut credits) = (0, 0);
            if let Some(e) = key.p.history.get(&date) {
                for (name, n) in e {
                    let c = n * key.credits_per_call(name);
                    calls += n;
                    credits += c;
                    let t = by_endpoint.entry(name.clone()).or_default();
                    t.0 += n;
                    t.1 += c;
                }
            }
            daily.push(serde_json::json!({
                "date": date.format("%Y-%m-%d").to_string(),
                "calls": calls,
                "credits": credits,
            }));
            date = date.succ_opt().expect("valid date");
        }
        let endpoints: serde_json::Map<String, serde_json::Value> = by_endpoint
            .iter()
            .filter(|(_, (calls, _))| *calls > 0)
            .map(|(name, (calls, credits))| {
                (
                    name.clone(),
                    serde_json::json!({ "calls": calls, "credits": credits, "label": key.label(name) }),
                )
            })
            .collect();
        serde_json::json!({
            "period": { "start": stamp(midnight(first)), "end": stamp(now), "days": days },
            "key": { "id": key.p.id, "name": key.p.name, "lastUsed": key.last_used.map(stamp) },
            "summary": {
                "totalCalls": by_endpoint.values().map(|v| v.0).sum::<u64>(),
                "totalCredits": by_endpoint.values().map(|v| v.1).sum::<u64>(),
                "byEndpoint": endpoints,
            },
            "daily": daily,
        })
    }
}

/// The simulator's state, shared by its HTTP handlers and the tests that drive it.
pub struct Simulator {
    clock: Arc<dyn Clock>,
    accounts: Mutex<BTreeMap<String, Account>>,
    fault: Mutex<Option<Fault>>,
    /// The query of the last request: `days` and `keyId`.
    last_query: Mutex<Option<(String, Option<String>)>>,
}

impl Simulator {
    pub fn new(clock: Arc<dyn Clock>, accounts: Vec<Params>) -> Arc<Self> {
        let now = clock.now();
        let accounts = accounts
            .into_iter()
            .map(|p| {
                let keys = p
                    .keys
                    .into_iter()
                    .map(|k| Key {
                        frac: vec![0.0; k.endpoints.len()],
                        last_used: k
                            .history
                            .keys()
                            .next_back()
                            .map(|d| midnight(*d) + ChronoDuration::hours(17)),
                        p: k,
                    })
                    .collect();
                (
                    p.token,
                    Account {
                        keys,
                        // Today's calls so far happened at the live rates.
                        last: midnight(now.date_naive()),
                        requests: 0,
                    },
                )
            })
            .collect();
        Arc::new(Simulator {
            clock,
            accounts: Mutex::new(accounts),
            fault: Mutex::new(None),
            last_query: Mutex::new(None),
        })
    }

    /// Logs `calls` calls of `endpoint` now, on the token's own key.
    pub fn log_calls(&self, token: &str, endpoint: &str, calls: u64) {
        let now = self.clock.now();
        if let Some(a) = self.accounts.lock().unwrap().get_mut(token) {
            a.advance(now);
            let k = &mut a.keys[0];
            *k.p.history
                .entry(now.date_naive())
                .or_default()
                .entry(endpoint.to_string())
                .or_insert(0) += calls;
            k.last_used = Some(now);
        }
    }

    /// Credits logged so far on the token's own key, by UTC day.
    pub fn daily_credits(&self, token: &str) -> BTreeMap<NaiveDate, u64> {
        let now = self.clock.now();
        let mut accounts = self.accounts.lock().unwrap();
        let Some(a) = accounts.get_mut(token) else {
            return BTreeMap::new();
        };
        a.advance(now);
        let k = &a.keys[0];
        k.p.history
            .iter()
            .map(|(d, e)| (*d, e.iter().map(|(n, c)| c * k.credits_per_call(n)).sum()))
            .collect()
    }

    /// The `days` and `keyId` of the last request.
    pub fn last_query(&self) -> Option<(String, Option<String>)> {
        self.last_query.lock().unwrap().clone()
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

    /// The HTTP routes: the documented usage endpoint plus `/_sim/*` controls.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/api/v1/usage", get(usage))
            .route("/_sim/fault", post(fault_handler))
            .with_state(self.clone())
    }

    /// Starts the simulator on an ephemeral loopback port.
    pub async fn serve(self: &Arc<Self>) -> std::io::Result<SimServer> {
        SimServer::start(self.router()).await
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn usage(
    Extract(sim): Extract<Arc<Simulator>>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(f) = take_fault(&sim.fault) {
        return fault_response(f).await;
    }
    let days_text = q.get("days").cloned().unwrap_or_else(|| "30".into());
    let key_id = q.get("keyId").cloned();
    *sim.last_query.lock().unwrap() = Some((days_text.clone(), key_id.clone()));
    let now = sim.clock.now();
    let mut accounts = sim.accounts.lock().unwrap();
    let Some(a) = accounts.get_mut(bearer(&headers)) else {
        return error(StatusCode::UNAUTHORIZED, "Invalid API key");
    };
    let days = match days_text.parse::<i64>() {
        Ok(d) if (1..=90).contains(&d) => d,
        _ => return error(StatusCode::BAD_REQUEST, "days must be between 1 and 90"),
    };
    a.advance(now);
    a.requests += 1;
    let key = match &key_id {
        None => &a.keys[0],
        Some(id) => match a.keys.iter().find(|k| &k.p.id == id) {
            Some(k) => k,
            None => return error(StatusCode::NOT_FOUND, "API key not found"),
        },
    };
    Json(a.payload(key, days, now)).into_response()
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

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn calls_land_in_the_day_they_happen_in() {
        let clock = Arc::new(ManualClock::new(at("2026-04-12T23:30:00Z")));
        let key = KeyParams {
            id: "k1".into(),
            name: "Production Key".into(),
            endpoints: vec![EndpointParams::new(
                "image_to_html",
                "Image → HTML",
                30,
                4.0,
            )],
            history: BTreeMap::new(),
        };
        let sim = Simulator::new(
            clock.clone(),
            vec![Params {
                token: "t".into(),
                keys: vec![key],
            }],
        );
        clock.advance(Duration::from_secs(3600));
        let d = sim.daily_credits("t");
        let day = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        // 4 calls an hour from 00:00 on the 12th (96 calls), and 2 after midnight; 30 credits each.
        assert_eq!(d[&day("2026-04-12")], 96 * 30);
        assert_eq!(d[&day("2026-04-13")], 60);
    }
}
