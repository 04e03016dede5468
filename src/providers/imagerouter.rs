//! ImageRouter (`GET /v1/credits`): the prepaid USD `balance` and one `key_spend` pool per API key with a spend limit.
//!
//! Facts that shape the parsing (see the provider reference):
//! - Money arrives as decimal strings. They are parsed exactly with `rust_decimal`, and
//!   `remaining = spend_limit − period_spend` is computed in decimal, so "5.0000" − "1.2000" exports
//!   as 3.8, not 3.8000000000000003. NaN, infinities, negatives and anything else that is not a
//!   plain decimal fail the poll with reason `parse` and the field named.
//! - The balance never resets: deposits raise `remaining_credits` and `total_deposits`, never
//!   `credit_usage`, so consumption is read from `credit_usage` alone and a deposit is never
//!   negative spend.
//! - A key's window starts at `period_start` and lasts a day, a week or a calendar month. A null
//!   period is a lifetime cap that never resets. A null `period_start` with a period set means the
//!   key has not spent in the current window: used is 0, and since the window's start is unknown
//!   until the first spend opens it, such a key exports no period-start or reset time until then.
//!   A `period_start` whose window has already ended is stale: the window has rolled over, so used
//!   is 0 in the current one.
//! - Key names label series, so two keys with the same name get the first 8 characters of their
//!   id appended (`"Production Key (d9eb93dc)"`), or the whole id when those collide. The suffix
//!   depends only on the ids, never on the order the API lists keys in.

use super::{
    KeyInfo, KeyNeed, PollContext, PollError, PoolReading, Reading, Unit, decimal_to_f64,
    parse_decimal, parse_json,
};
use crate::config::AccountConfig;
use crate::forecast::consumption::ConsumptionRule;
use crate::forecast::schedule::{Every, Schedule};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

/// Where the API lives unless `base_url` says otherwise.
pub const DEFAULT_BASE_URL: &str = "https://api.imagerouter.io";

/// ImageRouter's own account keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Settings {
    /// Ask for the per-key breakdown (`by_api_key=true`): key series and `key_spend` pools.
    #[serde(default = "default_per_key")]
    pub per_key: bool,
}

fn default_per_key() -> bool {
    true
}

impl Default for Settings {
    fn default() -> Self {
        Settings { per_key: true }
    }
}

impl Settings {
    pub fn validate(&self, account: &AccountConfig) -> Vec<String> {
        let mut v = Vec::new();
        if account.billing_anchor.is_some() {
            v.push(
                "imagerouter has no billing period: the balance never resets and each key's spend window comes from the API; remove billing_anchor"
                    .to_string(),
            );
        }
        v
    }

    pub fn key_need(&self) -> KeyNeed {
        KeyNeed::Required
    }

    pub async fn poll(&self, ctx: &PollContext<'_>) -> Result<Reading, PollError> {
        let base = ctx.account.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL);
        let url = if self.per_key {
            format!("{base}/v1/credits?by_api_key=true")
        } else {
            format!("{base}/v1/credits")
        };
        let mut req = ctx.http.client.get(url);
        if let Some(key) = &ctx.account.key {
            req = req.bearer_auth(key.expose());
        }
        let resp = crate::http::fetch(req, ctx.account.max_response_bytes).await?;
        resp.check_status(error_detail)?;
        parse(&resp.body, ctx.now, self.per_key)
    }
}

/// The documented error body: `{"error": {"message": "...", "type": "..."}}`.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorInner,
}

#[derive(Deserialize)]
struct ErrorInner {
    message: String,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// The message of an error body, with its type: `Failed to fetch credit information (internal_error)`.
pub fn error_detail(body: &[u8]) -> Option<String> {
    let e: ErrorBody = serde_json::from_slice(body).ok()?;
    Some(match e.error.kind {
        Some(k) if !k.is_empty() => format!("{} ({k})", e.error.message),
        _ => e.error.message,
    })
}

// Strings are borrowed from the body unless they hold escapes: a 10,000-key body otherwise
// costs some 80,000 small allocations, most of its parse.
#[derive(Deserialize)]
struct Credits<'a> {
    #[serde(borrow)]
    remaining_credits: Cow<'a, str>,
    #[serde(borrow)]
    credit_usage: Cow<'a, str>,
    #[serde(borrow)]
    total_deposits: Cow<'a, str>,
    #[serde(borrow)]
    usage_by_api_key: Option<Vec<KeyUsage<'a>>>,
}

#[derive(Deserialize)]
struct KeyUsage<'a> {
    #[serde(borrow)]
    api_key_id: Cow<'a, str>,
    #[serde(borrow)]
    api_key_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    credit_usage: Cow<'a, str>,
    total_requests: u64,
    is_active: bool,
    #[serde(borrow)]
    spend_limit: Option<Cow<'a, str>>,
    #[serde(borrow)]
    spend_limit_period: Option<Cow<'a, str>>,
    #[serde(borrow)]
    period_spend: Option<Cow<'a, str>>,
    #[serde(borrow)]
    period_start: Option<Cow<'a, str>>,
    #[serde(borrow)]
    expires_at: Option<Cow<'a, str>>,
}

fn timestamp(field: impl std::fmt::Display, s: &str) -> Result<DateTime<Utc>, PollError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            PollError::parse(format!(
                "field `{field}` is not an RFC 3339 time ({:?}: {e})",
                crate::http::sanitize(s)
            ))
        })
}

/// Parses a `/v1/credits` body taken at `now` into the balance pool, the key pools and the key
/// list. Pure: no I/O, no clock.
pub fn parse(body: &[u8], now: DateTime<Utc>, per_key: bool) -> Result<Reading, PollError> {
    let c: Credits = match parse_json(body) {
        Ok(c) => c,
        // A 200 carrying the documented error object is still an error, and its message says why.
        Err(e) => {
            return Err(match error_detail(body) {
                Some(d) => {
                    PollError::parse(format!("upstream error: {}", crate::http::sanitize(&d)))
                }
                None => e,
            });
        }
    };
    let remaining = parse_decimal("remaining_credits", &c.remaining_credits)?;
    let used = parse_decimal("credit_usage", &c.credit_usage)?;
    let deposits = parse_decimal("total_deposits", &c.total_deposits)?;
    let n = c.usage_by_api_key.as_ref().map_or(0, Vec::len);
    let mut pools = Vec::with_capacity(1 + n);
    pools.push(PoolReading {
        pool: "balance".into(),
        key: String::new(),
        unit: Unit::Usd,
        used: Some(decimal_to_f64(used)),
        remaining: Some(decimal_to_f64(remaining)),
        limit: Some(decimal_to_f64(deposits)),
        available: None,
        schedule: Schedule::Never,
        rule: ConsumptionRule::Used,
        cumulative: None,
    });
    let mut keys = Vec::with_capacity(n);
    if per_key {
        let list = c.usage_by_api_key.ok_or_else(|| {
            PollError::parse(
                "missing field `usage_by_api_key` (asked for with by_api_key=true; set per_key = false if the account cannot list keys)",
            )
        })?;
        let names = unique_names(&list);
        for (i, (k, name)) in list.iter().zip(names).enumerate() {
            // Field names are formatted only when an error needs one: a 10,000-key body has
            // tens of thousands of fields.
            let f = |field: &'static str| Field(i, field);
            let spent = parse_decimal(f("credit_usage"), &k.credit_usage)?;
            let expires_at = match &k.expires_at {
                Some(s) => Some(timestamp(f("expires_at"), s)?),
                None => None,
            };
            if let Some(limit) = &k.spend_limit {
                let limit = parse_decimal(f("spend_limit"), limit)?;
                pools.push(key_pool(k, &name, limit, now, i)?);
            }
            keys.push(KeyInfo {
                key: name,
                active: k.is_active,
                expires_at,
                requests: k.total_requests as f64,
                spent_usd: Some(decimal_to_f64(spent)),
            });
        }
    }
    Ok(Reading {
        plan: None,
        pools,
        keys,
        ..Reading::default()
    })
}

/// The path of a field of the `i`th key, `usage_by_api_key[i].field`, for error messages.
#[derive(Clone, Copy)]
struct Field(usize, &'static str);

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "usage_by_api_key[{}].{}", self.0, self.1)
    }
}

/// The `key_spend` pool of a key with a spend limit.
fn key_pool(
    k: &KeyUsage,
    name: &str,
    limit: Decimal,
    now: DateTime<Utc>,
    i: usize,
) -> Result<PoolReading, PollError> {
    let f = |field: &'static str| Field(i, field);
    let period_spend = match &k.period_spend {
        Some(s) => parse_decimal(f("period_spend"), s)?,
        None => Decimal::ZERO,
    };
    let every = match k.spend_limit_period.as_deref() {
        None => None,
        Some("day") => Some(Every::Day),
        Some("week") => Some(Every::Week),
        Some("month") => Some(Every::Month),
        Some(other) => {
            return Err(PollError::parse(format!(
                "field `{}` is {:?}; expected \"day\", \"week\", \"month\" or null",
                f("spend_limit_period"),
                crate::http::sanitize(other)
            )));
        }
    };
    let start = match &k.period_start {
        Some(s) => Some(timestamp(f("period_start"), s)?),
        None => None,
    };
    let (used, schedule) = match (every, start) {
        // A lifetime cap: period_spend is all-time spend.
        (None, _) => (period_spend, Schedule::Never),
        // Nothing spent in the current window yet; its start is unknown until the first spend.
        (Some(_), None) => (Decimal::ZERO, Schedule::Never),
        (Some(every), Some(start)) => {
            let schedule = Schedule::Rolling { start, every };
            let stale = schedule.period_at(now).is_some_and(|p| p.start > start);
            let used = if stale { Decimal::ZERO } else { period_spend };
            (used, schedule)
        }
    };
    let remaining = (limit - used).max(Decimal::ZERO);
    Ok(PoolReading {
        pool: "key_spend".into(),
        key: name.to_string(),
        unit: Unit::Usd,
        used: Some(decimal_to_f64(used)),
        remaining: Some(decimal_to_f64(remaining)),
        limit: Some(decimal_to_f64(limit)),
        available: Some(k.is_active),
        schedule,
        rule: ConsumptionRule::Used,
        cumulative: None,
    })
}

/// Label-safe, unique key names: the key's name, or its id when the name is blank; duplicates
/// get a suffix derived from their ids only, so the result does not depend on the list's order.
fn unique_names(keys: &[KeyUsage]) -> Vec<String> {
    let base: Vec<&str> = keys
        .iter()
        .map(|k| {
            let n = k.api_key_name.as_deref().unwrap_or("").trim();
            if n.is_empty() { &k.api_key_id } else { n }
        })
        .collect();
    // Names are nearly always unique already: then they are the answer.
    if super::distinct(base.iter()) {
        return base.into_iter().map(str::to_string).collect();
    }
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, b) in base.iter().enumerate() {
        groups.entry(b).or_default().push(i);
    }
    let mut out: Vec<Option<String>> = vec![None; keys.len()];
    let mut taken: BTreeSet<String> = groups
        .iter()
        .filter(|(_, v)| v.len() == 1)
        .map(|(b, _)| b.to_string())
        .collect();
    for (b, members) in &groups {
        if members.len() == 1 {
            out[members[0]] = Some(b.to_string());
            continue;
        }
        let short = |i: usize| keys[i].api_key_id.chars().take(8).collect::<String>();
        let shorts: BTreeSet<String> = members.iter().map(|&i| short(i)).collect();
        let use_short = shorts.len() == members.len();
        for &i in members {
            let id = if use_short {
                short(i)
            } else {
                keys[i].api_key_id.to_string()
            };
            let mut cand = format!("{b} ({id})");
            // Only a pathological list (repeated ids) gets here; number the repeats.
            let mut n = 2;
            while !taken.insert(cand.clone()) {
                cand = format!("{b} ({id}) #{n}");
                n += 1;
            }
            out[i] = Some(cand);
        }
    }
    out.into_iter()
        .map(|n| n.expect("every key named"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    pub const DOC: &str = r#"{
      "remaining_credits": "25.5000",
      "credit_usage": "4.5000",
      "total_deposits": "30.0000",
      "usage_by_api_key": [
        {
          "api_key_id": "d9eb93dc-56b1-4216-91b5-a44944508bbc",
          "api_key_name": "Production Key",
          "credit_usage": "4.2000",
          "total_requests": 150,
          "created_at": "2023-10-01T12:00:00.000Z",
          "is_active": true,
          "spend_limit": "5.0000",
          "spend_limit_period": "month",
          "period_spend": "1.2000",
          "period_start": "2026-05-01T00:00:00.000Z",
          "expires_at": "2027-01-01T00:00:00.000Z"
        },
        {
          "api_key_id": "temp_jwt",
          "api_key_name": "Temporary web token (imagerouter.io)",
          "credit_usage": "0.0300",
          "total_requests": 45,
          "created_at": null,
          "is_active": false,
          "spend_limit": null,
          "spend_limit_period": null,
          "period_spend": "0.0300",
          "period_start": null,
          "expires_at": null
        }
      ]
    }"#;

    fn key(
        name: &str,
        limit: Option<&str>,
        period: Option<&str>,
        spend: &str,
        start: Option<&str>,
    ) -> String {
        let q = |o: Option<&str>| o.map(|s| format!("\"{s}\"")).unwrap_or("null".into());
        format!(
            r#"{{"api_key_id":"id-{name}","api_key_name":"{name}","credit_usage":"9.0000","total_requests":1,"created_at":null,
            "is_active":true,"spend_limit":{},"spend_limit_period":{},"period_spend":"{spend}","period_start":{},"expires_at":null}}"#,
            q(limit),
            q(period),
            q(start)
        )
    }

    fn with_keys(keys: &[String]) -> String {
        format!(
            r#"{{"remaining_credits":"1","credit_usage":"1","total_deposits":"2","usage_by_api_key":[{}]}}"#,
            keys.join(",")
        )
    }

    #[test]
    fn documented_example() {
        let r = parse(DOC.as_bytes(), t("2026-05-20T12:00:00Z"), true).unwrap();
        let b = &r.pools[0];
        assert_eq!(
            (b.pool.as_str(), b.used, b.remaining, b.limit, b.schedule),
            (
                "balance",
                Some(4.5),
                Some(25.5),
                Some(30.0),
                Schedule::Never
            )
        );
        assert_eq!(r.pools.len(), 2, "temp_jwt has no spend limit, so no pool");
        let k = &r.pools[1];
        assert_eq!(
            (
                k.pool.as_str(),
                k.key.as_str(),
                k.used,
                k.remaining,
                k.limit
            ),
            (
                "key_spend",
                "Production Key",
                Some(1.2),
                Some(3.8),
                Some(5.0)
            )
        );
        let p = k.schedule.period_at(t("2026-05-20T12:00:00Z")).unwrap();
        assert_eq!(
            (p.start, p.end),
            (t("2026-05-01T00:00:00Z"), t("2026-06-01T00:00:00Z"))
        );
        assert_eq!(r.keys.len(), 2);
        assert_eq!(r.keys[0].expires_at, Some(t("2027-01-01T00:00:00Z")));
        let jwt = &r.keys[1];
        assert_eq!(
            (
                jwt.key.as_str(),
                jwt.active,
                jwt.expires_at,
                jwt.requests,
                jwt.spent_usd
            ),
            (
                "Temporary web token (imagerouter.io)",
                false,
                None,
                45.0,
                Some(0.03)
            )
        );
    }

    #[test]
    fn without_per_key_only_the_balance() {
        let body = r#"{ "remaining_credits": "25.5000", "credit_usage": "4.5000", "total_deposits": "30.0000" }"#;
        let r = parse(body.as_bytes(), t("2026-05-20T12:00:00Z"), false).unwrap();
        assert_eq!((r.pools.len(), r.keys.len()), (1, 0));
        let e = parse(body.as_bytes(), t("2026-05-20T12:00:00Z"), true).unwrap_err();
        assert!(
            e.to_string().contains("missing field `usage_by_api_key`"),
            "{e}"
        );
    }

    #[test]
    fn money_with_zero_one_and_four_decimals_is_exact() {
        for (text, v) in [
            ("25", 25.0),
            ("25.5", 25.5),
            ("25.5000", 25.5),
            ("0", 0.0),
            ("0.0001", 0.0001),
        ] {
            assert_eq!(
                decimal_to_f64(parse_decimal("f", text).unwrap()),
                v,
                "{text}"
            );
        }
        // Decimal arithmetic: 5 − 1.2 is exactly the f64 nearest 3.8.
        let body = with_keys(&[key("k", Some("5"), None, "1.2", None)]);
        let r = parse(body.as_bytes(), t("2026-05-20T12:00:00Z"), true).unwrap();
        assert_eq!(r.pools[1].remaining, Some(3.8));
        let body = with_keys(&[key("k", Some("0.3"), None, "0.1000", None)]);
        let r = parse(body.as_bytes(), t("2026-05-20T12:00:00Z"), true).unwrap();
        assert_eq!(r.pools[1].remaining, Some(0.2), "not 0.19999999999999998");
    }

    #[test]
    fn bad_money_never_becomes_a_value() {
        for (text, why) in [
            ("NaN", "not a decimal number"),
            ("inf", "not a decimal number"),
            ("-Infinity", "not a decimal number"),
            ("-1.5000", "negative"),
            ("12abc", "not a decimal number"),
            ("", "not a decimal number"),
            ("1e3", "not a decimal number"),
            (" 1.0", "not a decimal number"),
            ("1_000", "not a decimal number"),
            (".5", "not a decimal number"),
        ] {
            let body = DOC.replace("\"25.5000\"", &format!("{text:?}"));
            let e = parse(body.as_bytes(), t("2026-05-20T12:00:00Z"), true).unwrap_err();
            assert_eq!(e.reason(), "parse");
            assert!(
                e.to_string().starts_with(&format!(
                    "invalid response: field `remaining_credits` is {why}"
                )),
                "{text}: {e}"
            );
        }
        let body = DOC.replace("\"1.2000\"", "\"-0.5\"");
        let e = parse(body.as_bytes(), t("2026-05-20T12:00:00Z"), true).unwrap_err();
        assert!(
            e.to_string()
                .contains("field `usage_by_api_key[0].period_spend` is negative"),
            "{e}"
        );
        // A JSON number where a decimal string belongs is refused with the field named.
        let body = DOC.replace("\"30.0000\"", "30.0");
        let e = parse(body.as_bytes(), t("2026-05-20T12:00:00Z"), true).unwrap_err();
        assert!(
            e.to_string().contains(
                "field `total_deposits`: invalid type: floating point `30.0`, expected a string"
            ),
            "{e}"
        );
    }

    #[test]
    fn windows_across_month_ends_and_leap_years() {
        let now_and_expect = [
            // A day window starting on Dec 31 resets on Jan 1 of the next year.
            (
                "day",
                "2026-12-31T00:00:00Z",
                "2026-12-31T18:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
            // A week across Feb 29 in a leap year.
            (
                "week",
                "2028-02-26T00:00:00Z",
                "2028-03-01T00:00:00Z",
                "2028-03-04T00:00:00Z",
            ),
            // A week across Feb 28 in a common year.
            (
                "week",
                "2027-02-26T00:00:00Z",
                "2027-03-01T00:00:00Z",
                "2027-03-05T00:00:00Z",
            ),
            // A month from Jan 31 ends on Feb 29 in a leap year, Feb 28 otherwise.
            (
                "month",
                "2028-01-31T00:00:00Z",
                "2028-02-15T00:00:00Z",
                "2028-02-29T00:00:00Z",
            ),
            (
                "month",
                "2027-01-31T00:00:00Z",
                "2027-02-15T00:00:00Z",
                "2027-02-28T00:00:00Z",
            ),
            // A month from Dec 15 crosses the year.
            (
                "month",
                "2026-12-15T08:30:00Z",
                "2027-01-01T00:00:00Z",
                "2027-01-15T08:30:00Z",
            ),
        ];
        for (period, start, now, reset) in now_and_expect {
            let body = with_keys(&[key("k", Some("5"), Some(period), "1", Some(start))]);
            let r = parse(body.as_bytes(), t(now), true).unwrap();
            let p = r.pools[1].schedule.period_at(t(now)).unwrap();
            assert_eq!(
                (p.start, p.end),
                (t(start), t(reset)),
                "{period} from {start}"
            );
            assert_eq!(r.pools[1].used, Some(1.0));
        }
    }

    #[test]
    fn null_period_start_means_nothing_spent_yet() {
        let body = with_keys(&[key("k", Some("5"), Some("day"), "3.0000", None)]);
        let r = parse(body.as_bytes(), t("2026-05-20T12:00:00Z"), true).unwrap();
        let k = &r.pools[1];
        assert_eq!(
            (k.used, k.remaining, k.limit),
            (Some(0.0), Some(5.0), Some(5.0))
        );
        assert_eq!(k.schedule, Schedule::Never);
    }

    #[test]
    fn a_stale_window_has_rolled_over() {
        // The window began May 1 and lasted a day; on May 20 the current window has spent nothing.
        let body = with_keys(&[key(
            "k",
            Some("5"),
            Some("day"),
            "3",
            Some("2026-05-01T00:00:00Z"),
        )]);
        let r = parse(body.as_bytes(), t("2026-05-20T12:00:00Z"), true).unwrap();
        let k = &r.pools[1];
        assert_eq!((k.used, k.remaining), (Some(0.0), Some(5.0)));
        let p = k.schedule.period_at(t("2026-05-20T12:00:00Z")).unwrap();
        assert_eq!(p.end, t("2026-05-21T00:00:00Z"));
    }

    #[test]
    fn lifetime_cap_never_resets_and_overspend_is_zero_remaining() {
        let body = with_keys(&[key("k", Some("2"), None, "2.5", None)]);
        let r = parse(body.as_bytes(), t("2026-05-20T12:00:00Z"), true).unwrap();
        let k = &r.pools[1];
        assert_eq!(
            (k.used, k.remaining, k.schedule),
            (Some(2.5), Some(0.0), Schedule::Never)
        );
    }

    #[test]
    fn duplicate_names_are_made_unique_from_ids() {
        let mk = |id: &str, name: &str| {
            format!(
                r#"{{"api_key_id":"{id}","api_key_name":"{name}","credit_usage":"0","total_requests":0,"is_active":true,
                "spend_limit":null,"spend_limit_period":null,"period_spend":"0","period_start":null,"expires_at":null}}"#
            )
        };
        let a = mk("aaaaaaaa-1111", "Prod");
        let b = mk("bbbbbbbb-2222", "Prod");
        let c = mk("cccccccc", "Other");
        let d = mk("dddd", "  ");
        let names = |keys: &[String]| {
            parse(with_keys(keys).as_bytes(), t("2026-05-20T12:00:00Z"), true)
                .unwrap()
                .keys
                .into_iter()
                .map(|k| k.key)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&[a.clone(), b.clone(), c.clone(), d.clone()]),
            ["Prod (aaaaaaaa)", "Prod (bbbbbbbb)", "Other", "dddd"]
        );
        // Order does not matter.
        assert_eq!(
            names(&[b.clone(), a.clone()]),
            ["Prod (bbbbbbbb)", "Prod (aaaaaaaa)"]
        );
        // Ids that share their first 8 characters use the whole id.
        let e = mk("aaaaaaaa-9999", "Prod");
        assert_eq!(
            names(&[a.clone(), e]),
            ["Prod (aaaaaaaa-1111)", "Prod (aaaaaaaa-9999)"]
        );
        // The same key listed twice is still two distinct labels.
        assert_eq!(
            names(&[c.clone(), c.clone()]),
            ["Other (cccccccc)", "Other (cccccccc) #2"]
        );
    }

    /// A body that is not UTF-8 is refused with the field it broke, not taken in part.
    #[test]
    fn a_body_that_is_not_utf8_names_the_field() {
        let mut body = br#"{"remaining_credits":"25.5000","credit_usage":"4.5"#.to_vec();
        body.push(0xff);
        body.extend_from_slice(br#"","total_deposits":"30.0000"}"#);
        let err = parse(&body, t("2026-11-20T00:00:00Z"), false).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, PollError::Parse(_)), "{msg}");
        assert!(
            msg.contains("not valid JSON at field `credit_usage`"),
            "{msg}"
        );
    }

    #[test]
    fn error_bodies_are_surfaced() {
        let body = br#"{ "error": { "message": "Failed to fetch credit information", "type": "internal_error" } }"#;
        assert_eq!(
            error_detail(body).as_deref(),
            Some("Failed to fetch credit information (internal_error)")
        );
        let e = parse(body, t("2026-05-20T12:00:00Z"), true).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid response: upstream error: Failed to fetch credit information (internal_error)"
        );
        assert_eq!(error_detail(b"<html>"), None);
    }
}
