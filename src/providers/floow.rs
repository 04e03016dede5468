//! Floow (`GET /api/v1/usage`): the `credits` pool from the daily consumption series, usage by endpoint, and the series as history.
//!
//! Facts that shape the parsing (see the provider reference):
//! - The API reports consumption only. `used` is the sum of the `daily` credits from the current
//!   billing period's start (from `billing_anchor`); limit and remaining exist only when
//!   `monthly_allowance` says what the plan includes.
//! - The window is rolling and may be shorter than the period, so every request asks for at
//!   least 31 days (the longest billing period) and enough for the longest burn window, at most
//!   90. A response whose window does not reach back to the period start is refused rather than
//!   exported as a too-small `used`.
//! - Daily buckets are UTC days (the API's window starts at 00:00Z) and a day's credits were
//!   consumed during that day. So the series becomes one past sample at the start of each day,
//!   carrying what was consumed from then until now; today's partial bucket is the consumption
//!   between today's 00:00 and the poll. The core anchors those samples to the pool's running
//!   total, so burn rates are known from the first poll.
//! - `byEndpoint` becomes the endpoint series: the internal action name and its display label,
//!   over the request's lookback window.

use super::{
    EndpointUsage, KeyNeed, PastSample, PollContext, PollError, PoolHistory, PoolReading, Reading,
    Unit, checked_amount, parse_json,
};
use crate::config::AccountConfig;
use crate::forecast::consumption::ConsumptionRule;
use crate::forecast::schedule::Schedule;
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Where the API lives unless `base_url` says otherwise.
pub const DEFAULT_BASE_URL: &str = "https://www.floow.design";
/// The API's largest lookback.
pub const MAX_DAYS: i64 = 90;
/// Every request covers at least the longest billing period (31 days).
pub const MIN_REQUEST_DAYS: i64 = 31;

/// Floow's own account keys.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Settings {
    /// The least lookback to ask for, 1..=90 (more is asked for when the period needs it).
    pub days: Option<i64>,
    /// Report on another key of the same account (`keyId`).
    pub key_id: Option<String>,
    /// Credits the plan includes per billing period: gives the pool a limit and a remaining.
    pub monthly_allowance: Option<f64>,
}

impl Settings {
    pub fn validate(&self, account: &AccountConfig) -> Vec<String> {
        let mut v = Vec::new();
        if account.billing_anchor.is_none() {
            v.push(
                "floow reports daily consumption only; used is counted from the billing period start: set billing_anchor = \"YYYY-MM-DD\" (the day the subscription renews)"
                    .to_string(),
            );
        }
        if let Some(d) = self.days
            && !(1..=MAX_DAYS).contains(&d)
        {
            v.push(format!(
                "days = {d} is outside 1..90, the lookback the Floow usage API accepts"
            ));
        }
        if let Some(k) = &self.key_id
            && k.trim().is_empty()
        {
            v.push("key_id is empty: remove it to report on the key used, or name a key".into());
        }
        if let Some(a) = self.monthly_allowance
            && !(a.is_finite() && a > 0.0)
        {
            v.push(format!(
                "monthly_allowance = {a} must be a positive number of credits"
            ));
        }
        v
    }

    pub fn warnings(&self, account: &AccountConfig) -> Vec<String> {
        match self.days {
            Some(d) if (1..=MAX_DAYS).contains(&d) && d < needed_days(account) => vec![format!(
                "days = {d} is raised to {} so the daily series covers the whole billing period and the burn windows",
                needed_days(account)
            )],
            _ => Vec::new(),
        }
    }

    pub fn key_need(&self) -> KeyNeed {
        KeyNeed::Required
    }

    /// The `days` a request asks for: `days` when set, raised to cover the longest billing
    /// period and the longest burn window, at most 90. Constant for a config, so the endpoint
    /// series always cover the same lookback.
    pub fn request_days(&self, account: &AccountConfig) -> i64 {
        self.days
            .unwrap_or(0)
            .max(needed_days(account))
            .min(MAX_DAYS)
    }

    pub async fn poll(&self, ctx: &PollContext<'_>) -> Result<Reading, PollError> {
        let base = ctx.account.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        let mut url = reqwest::Url::parse(&format!("{base}/api/v1/usage"))
            .map_err(|e| PollError::Connect(format!("invalid URL: {e}")))?;
        url.query_pairs_mut()
            .append_pair("days", &self.request_days(ctx.account).to_string());
        if let Some(k) = &self.key_id {
            url.query_pairs_mut().append_pair("keyId", k.trim());
        }
        let mut req = ctx.http.client.get(url);
        if let Some(key) = &ctx.account.key {
            req = req.bearer_auth(key.expose());
        }
        let resp = crate::http::fetch(req, ctx.account.max_response_bytes).await?;
        resp.check_status(error_detail)?;
        let anchor = ctx
            .account
            .billing_anchor
            .expect("validated: floow accounts have a billing anchor");
        parse(&resp.body, ctx.now, anchor, self.monthly_allowance)
    }
}

/// Days that cover the longest billing period and the longest burn window, at most 90.
fn needed_days(account: &AccountConfig) -> i64 {
    let longest = account
        .all_windows()
        .iter()
        .map(|w| w.duration.as_secs())
        .max()
        .unwrap_or(0);
    // One more day than the window spans, since the window starts mid-day.
    let for_windows = longest.div_ceil(86_400) as i64 + 1;
    MIN_REQUEST_DAYS.max(for_windows).min(MAX_DAYS)
}

/// The documented error body: `{"error": "<message>"}`.
pub fn error_detail(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct E {
        error: String,
    }
    serde_json::from_slice::<E>(body).ok().map(|e| e.error)
}

#[derive(Deserialize)]
struct Usage {
    period: Window,
    summary: Summary,
    daily: Vec<Day>,
}

#[derive(Deserialize)]
struct Window {
    start: String,
}

#[derive(Deserialize)]
struct Summary {
    #[serde(rename = "byEndpoint")]
    by_endpoint: BTreeMap<String, Endpoint>,
}

#[derive(Deserialize)]
struct Endpoint {
    calls: f64,
    credits: f64,
    label: Option<String>,
}

#[derive(Deserialize)]
struct Day {
    date: String,
    credits: f64,
}

fn midnight(d: NaiveDate) -> DateTime<Utc> {
    d.and_time(NaiveTime::MIN).and_utc()
}

/// Parses a `/api/v1/usage` body taken at `now` into the `credits` pool, its history and the
/// endpoint series. Pure: no I/O, no clock.
pub fn parse(
    body: &[u8],
    now: DateTime<Utc>,
    billing_anchor: NaiveDate,
    allowance: Option<f64>,
) -> Result<Reading, PollError> {
    let u: Usage = match parse_json(body) {
        Ok(u) => u,
        Err(e) => {
            return Err(match error_detail(body) {
                Some(d) => {
                    PollError::parse(format!("upstream error: {}", crate::http::sanitize(&d)))
                }
                None => e,
            });
        }
    };
    let window_start = DateTime::parse_from_rfc3339(&u.period.start)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            PollError::parse(format!(
                "field `period.start` is not an RFC 3339 time ({:?}: {e})",
                crate::http::sanitize(&u.period.start)
            ))
        })?;

    // Credits by UTC day, sorted.
    let mut days: BTreeMap<NaiveDate, f64> = BTreeMap::new();
    for (i, d) in u.daily.iter().enumerate() {
        // `NaiveDate`'s own ISO 8601 parser: a format string is interpreted again per call.
        let date = d.date.parse::<NaiveDate>().map_err(|e| {
            PollError::parse(format!(
                "field `daily[{i}].date` is not a YYYY-MM-DD date ({:?}: {e})",
                crate::http::sanitize(&d.date)
            ))
        })?;
        let credits = checked_amount(format_args!("daily[{i}].credits"), d.credits)?;
        if days.insert(date, credits).is_some() {
            return Err(PollError::parse(format!(
                "field `daily` lists {date} twice"
            )));
        }
    }

    let schedule = Schedule::Monthly {
        anchor: billing_anchor,
    };
    let period = schedule.period_at(now).expect("monthly has periods");
    if window_start > period.start {
        return Err(PollError::parse(format!(
            "the response covers usage from {} only, after the billing period start {}: used cannot be counted",
            window_start.format("%Y-%m-%dT%H:%M:%SZ"),
            period.start.format("%Y-%m-%d")
        )));
    }
    let sum_between = |from: NaiveDate, to: Option<NaiveDate>| -> f64 {
        days.range(from..)
            .take_while(|(d, _)| to.is_none_or(|to| **d < to))
            .map(|(_, c)| c)
            .sum()
    };
    let used = sum_between(period.start.date_naive(), None);
    let remaining_of = |used: f64| allowance.map(|a| (a - used).max(0.0));

    let mut samples = Vec::new();
    for &date in days.keys() {
        let at = midnight(date);
        if at >= now {
            continue;
        }
        // Most days fall in the current period; working out another day's costs a few
        // calendar computations, a tenth of a poll when done for every day.
        let p = if at >= period.start {
            period
        } else {
            schedule.period_at(at).expect("monthly has periods")
        };
        // Used at that instant, where the series covers that instant's period from its start.
        let used_then =
            (p.start >= window_start).then(|| sum_between(p.start.date_naive(), Some(date)));
        samples.push(PastSample {
            at,
            consumed_after: sum_between(date, None),
            used: used_then,
            remaining: used_then.and_then(remaining_of),
            limit: allowance,
        });
    }

    let mut endpoints = Vec::with_capacity(u.summary.by_endpoint.len());
    for (name, e) in &u.summary.by_endpoint {
        endpoints.push(EndpointUsage {
            endpoint: name.clone(),
            label: e
                .label
                .as_deref()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .unwrap_or(name)
                .to_string(),
            calls: checked_amount(format_args!("summary.byEndpoint.{name}.calls"), e.calls)?,
            credits: checked_amount(format_args!("summary.byEndpoint.{name}.credits"), e.credits)?,
        });
    }

    Ok(Reading {
        plan: None,
        pools: vec![PoolReading {
            pool: "credits".into(),
            key: String::new(),
            unit: Unit::Credits,
            used: Some(used),
            remaining: remaining_of(used),
            limit: allowance,
            available: None,
            schedule,
            rule: ConsumptionRule::Used,
            cumulative: None,
        }],
        endpoints,
        history: vec![PoolHistory {
            pool: "credits".into(),
            key: String::new(),
            samples,
        }],
        ..Reading::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }
    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    const DOC: &str = r#"{
      "period": { "start": "2026-03-13T00:00:00.000Z", "end": "2026-04-12T14:30:00.000Z", "days": 30 },
      "key": { "id": "clxyz01abc", "name": "Production Key", "lastUsed": "2026-04-12T14:29:00.000Z" },
      "summary": {
        "totalCalls": 47,
        "totalCredits": 855,
        "byEndpoint": {
          "image_to_html": { "calls": 20, "credits": 600, "label": "Image → HTML" },
          "code_export":   { "calls": 18, "credits": 270, "label": "Export Code" },
          "figma_export":  { "calls": 9,  "credits": 90,  "label": "Figma Export" }
        }
      },
      "daily": [
        { "date": "2026-04-10", "calls": 5,  "credits": 90 },
        { "date": "2026-04-11", "calls": 12, "credits": 225 },
        { "date": "2026-04-12", "calls": 8,  "credits": 150 }
      ]
    }"#;

    #[test]
    fn documented_example() {
        let now = t("2026-04-12T14:30:00Z");
        let r = parse(DOC.as_bytes(), now, d(2026, 1, 15), Some(1000.0)).unwrap();
        let p = &r.pools[0];
        // The period began on 2026-03-15: the three listed days are all in it.
        assert_eq!(
            (p.used, p.remaining, p.limit),
            (Some(465.0), Some(535.0), Some(1000.0))
        );
        let h = &r.history[0].samples;
        assert_eq!(
            h.iter()
                .map(|s| (s.at, s.consumed_after, s.used))
                .collect::<Vec<_>>(),
            vec![
                (t("2026-04-10T00:00:00Z"), 465.0, Some(0.0)),
                (t("2026-04-11T00:00:00Z"), 375.0, Some(90.0)),
                (t("2026-04-12T00:00:00Z"), 150.0, Some(315.0)),
            ]
        );
        assert_eq!(h[2].remaining, Some(685.0));
        assert_eq!(
            r.endpoints
                .iter()
                .map(|e| (e.endpoint.as_str(), e.label.as_str(), e.calls, e.credits))
                .collect::<Vec<_>>(),
            vec![
                ("code_export", "Export Code", 18.0, 270.0),
                ("figma_export", "Figma Export", 9.0, 90.0),
                ("image_to_html", "Image → HTML", 20.0, 600.0),
            ]
        );
        // Without an allowance: used and burn only.
        let r = parse(DOC.as_bytes(), now, d(2026, 1, 15), None).unwrap();
        assert_eq!(
            (r.pools[0].used, r.pools[0].remaining, r.pools[0].limit),
            (Some(465.0), None, None)
        );
    }

    fn body(start: &str, daily: &[(&str, u64)]) -> String {
        let days: Vec<String> = daily
            .iter()
            .map(|(date, c)| format!(r#"{{"date":"{date}","calls":{},"credits":{c}}}"#, c / 10))
            .collect();
        format!(
            r#"{{"period":{{"start":"{start}","end":"x","days":31}},"summary":{{"totalCalls":0,"totalCredits":0,"byEndpoint":{{}}}},"daily":[{}]}}"#,
            days.join(",")
        )
    }

    #[test]
    fn zero_activity_days_and_the_period_boundary() {
        // Anchor on the 11th: the period began 2026-04-11, so the 10th belongs to the last one.
        let b = body(
            "2026-04-09T00:00:00Z",
            &[
                ("2026-04-09", 40),
                ("2026-04-10", 0),
                ("2026-04-11", 0),
                ("2026-04-12", 30),
                ("2026-04-13", 0),
            ],
        );
        let now = t("2026-04-13T06:00:00Z");
        let r = parse(b.as_bytes(), now, d(2026, 2, 11), Some(100.0)).unwrap();
        assert_eq!(r.pools[0].used, Some(30.0));
        assert_eq!(r.pools[0].remaining, Some(70.0));
        let h = &r.history[0].samples;
        assert_eq!(
            h.iter()
                .map(|s| (s.consumed_after, s.used))
                .collect::<Vec<_>>(),
            vec![
                // Apr 9 and 10 belong to the period that began Mar 11, before the window: unknown.
                (70.0, None),
                (30.0, None),
                // Apr 11 starts the current period with nothing used.
                (30.0, Some(0.0)),
                (30.0, Some(0.0)),
                (0.0, Some(30.0)),
            ]
        );
    }

    #[test]
    fn a_31_day_period_counts_its_first_day() {
        // Period 2026-07-15 .. 2026-08-15 is 31 days; on its last day the first day still counts.
        let mut daily = Vec::new();
        let mut date = d(2026, 7, 14);
        let mut names = Vec::new();
        while date <= d(2026, 8, 14) {
            names.push(date.format("%Y-%m-%d").to_string());
            date = date.succ_opt().unwrap();
        }
        for (i, n) in names.iter().enumerate() {
            daily.push((n.as_str(), if i == 0 { 1000 } else { 10 }));
        }
        let b = body("2026-07-14T00:00:00Z", &daily);
        let now = t("2026-08-14T23:00:00Z");
        let r = parse(b.as_bytes(), now, d(2026, 1, 15), None).unwrap();
        // 31 days of 10 credits; the 14th (1000) belongs to the previous period.
        assert_eq!(r.pools[0].used, Some(310.0));
    }

    #[test]
    fn a_window_that_misses_the_period_start_is_refused() {
        let b = body("2026-04-12T00:00:00Z", &[("2026-04-12", 5)]);
        let e = parse(b.as_bytes(), t("2026-04-12T10:00:00Z"), d(2026, 1, 1), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid response: the response covers usage from 2026-04-12T00:00:00Z only, after the billing period start 2026-04-01: used cannot be counted"
        );
    }

    #[test]
    fn bad_bodies_name_the_field() {
        let now = t("2026-04-12T14:30:00Z");
        let e = parse(
            DOC.replace("\"credits\": 225", "\"credits\": -225")
                .as_bytes(),
            now,
            d(2026, 1, 15),
            None,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid response: field `daily[1].credits` is negative (-225)"
        );
        let e = parse(
            DOC.replace("2026-04-11", "2026-04-10").as_bytes(),
            now,
            d(2026, 1, 15),
            None,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid response: field `daily` lists 2026-04-10 twice"
        );
        let e = parse(
            DOC.replace("\"2026-04-12\"", "\"12/04/2026\"").as_bytes(),
            now,
            d(2026, 1, 15),
            None,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid response: field `daily[2].date` is not a YYYY-MM-DD date"),
            "{e}"
        );
        let e = parse(
            br#"{"error": "Invalid API key"}"#,
            now,
            d(2026, 1, 15),
            None,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid response: upstream error: Invalid API key"
        );
        assert_eq!(
            error_detail(br#"{"error": "days must be between 1 and 90"}"#).as_deref(),
            Some("days must be between 1 and 90")
        );
    }
}
