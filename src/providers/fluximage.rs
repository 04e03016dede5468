//! Fluximage (`GET /api/usage`): the `compression` and `ai` credit pools, reset monthly from the billing anchor.
//!
//! Facts that shape the parsing (see the provider reference):
//! - Compression on pro and agency is unlimited; the large `compressor_limit` there (99999) is a
//!   sentinel, not an allocation, so the pool exports no remaining or limit.
//! - `ia_credits_remaining` already includes purchased top-ups, which survive the reset; the AI
//!   pool's limit is `used + remaining` so the ratio stays within 0..1.
//! - AI consumption continues from top-ups after the monthly part is used up, visible only as
//!   remaining going down, hence [`ConsumptionRule::UsedOrRemainingDrop`].
//! - The free plan includes no AI credits and cannot use AI at all, so it has no `ai` pool.

use super::{
    KeyNeed, PollContext, PollError, PoolReading, Reading, Unit, checked_amount, parse_json,
};
use crate::config::AccountConfig;
use crate::forecast::consumption::ConsumptionRule;
use crate::forecast::schedule::Schedule;
use chrono::NaiveDate;
use serde::Deserialize;

/// Where the API lives unless `base_url` says otherwise.
pub const DEFAULT_BASE_URL: &str = "https://fluximage.app";

/// `compressor_limit` at or above this means "effectively unlimited" whatever the plan is called.
pub const UNLIMITED_SENTINEL: f64 = 99_999.0;

/// Fluximage takes no settings beyond the common account keys.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Settings {}

impl Settings {
    pub fn validate(&self, account: &AccountConfig) -> Vec<String> {
        let mut v = Vec::new();
        if account.billing_anchor.is_none() {
            v.push(
                "fluximage credits reset monthly on the day the subscription started: set billing_anchor = \"YYYY-MM-DD\""
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
        let mut req = ctx.http.client.get(format!("{base}/api/usage"));
        if let Some(key) = &ctx.account.key {
            req = req.bearer_auth(key.expose());
        }
        let resp = crate::http::fetch(req, ctx.account.max_response_bytes).await?;
        // The 401 body is undocumented: report the status only.
        resp.check_status(|_| None)?;
        let anchor = ctx
            .account
            .billing_anchor
            .expect("validated: fluximage accounts have a billing anchor");
        parse(&resp.body, anchor)
    }
}

#[derive(Deserialize)]
struct Usage {
    plan: String,
    compressor_used: f64,
    compressor_limit: f64,
    ia_credits_used: f64,
    ia_credits_monthly: f64,
    ia_topup_credits: f64,
    ia_credits_remaining: f64,
    #[serde(rename = "canCompress")]
    can_compress: bool,
    #[serde(rename = "canUseIA")]
    can_use_ia: bool,
}

/// Parses a `/api/usage` body into the account's pools. Pure: no I/O, no clock.
pub fn parse(body: &[u8], billing_anchor: NaiveDate) -> Result<Reading, PollError> {
    let u: Usage = parse_json(body)?;
    let compressor_used = checked_amount("compressor_used", u.compressor_used)?;
    let compressor_limit = checked_amount("compressor_limit", u.compressor_limit)?;
    let ia_used = checked_amount("ia_credits_used", u.ia_credits_used)?;
    let ia_monthly = checked_amount("ia_credits_monthly", u.ia_credits_monthly)?;
    checked_amount("ia_topup_credits", u.ia_topup_credits)?;
    let ia_remaining = checked_amount("ia_credits_remaining", u.ia_credits_remaining)?;
    let plan = u.plan.trim().to_string();
    if plan.is_empty() {
        return Err(PollError::parse("field `plan` is empty"));
    }
    let schedule = Schedule::Monthly {
        anchor: billing_anchor,
    };

    let unlimited =
        matches!(plan.as_str(), "pro" | "agency") || compressor_limit >= UNLIMITED_SENTINEL;
    let (remaining, limit) = if unlimited {
        (None, None)
    } else {
        (
            Some((compressor_limit - compressor_used).max(0.0)),
            Some(compressor_limit),
        )
    };
    let mut pools = vec![PoolReading {
        pool: "compression".into(),
        key: String::new(),
        unit: Unit::Credits,
        used: Some(compressor_used),
        remaining,
        limit,
        available: Some(u.can_compress),
        schedule,
        rule: ConsumptionRule::Used,
        cumulative: None,
    }];
    if plan != "free" || ia_monthly > 0.0 {
        pools.push(PoolReading {
            pool: "ai".into(),
            key: String::new(),
            unit: Unit::Credits,
            used: Some(ia_used),
            remaining: Some(ia_remaining),
            limit: Some(ia_used + ia_remaining),
            available: Some(u.can_use_ia),
            schedule,
            rule: ConsumptionRule::UsedOrRemainingDrop,
            cumulative: None,
        });
    }
    Ok(Reading {
        plan: Some(plan),
        pools,
        ..Reading::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchor() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 1, 15).unwrap()
    }

    const DOC: &str = r#"{
      "plan": "pro", "compressor_used": 45, "compressor_limit": 99999,
      "ia_credits_used": 120, "ia_credits_monthly": 1000, "ia_topup_credits": 200,
      "ia_credits_remaining": 1080, "canCompress": true, "canUseIA": true,
      "topups": { "small": "...", "medium": "...", "large": "..." }
    }"#;

    #[test]
    fn documented_example() {
        let r = parse(DOC.as_bytes(), anchor()).unwrap();
        assert_eq!(r.plan.as_deref(), Some("pro"));
        let c = &r.pools[0];
        assert_eq!(
            (c.pool.as_str(), c.used, c.remaining, c.limit),
            ("compression", Some(45.0), None, None)
        );
        assert!(c.is_unlimited());
        let ai = &r.pools[1];
        assert_eq!(
            (ai.used, ai.remaining, ai.limit),
            (Some(120.0), Some(1080.0), Some(1200.0))
        );
        assert_eq!(ai.available, Some(true));
    }

    #[test]
    fn starter_has_a_compression_limit() {
        let body = r#"{"plan":"starter","compressor_used":150,"compressor_limit":200,"ia_credits_used":50,
            "ia_credits_monthly":200,"ia_topup_credits":0,"ia_credits_remaining":150,"canCompress":true,"canUseIA":true}"#;
        let r = parse(body.as_bytes(), anchor()).unwrap();
        assert_eq!(
            (r.pools[0].remaining, r.pools[0].limit),
            (Some(50.0), Some(200.0))
        );
        assert_eq!(r.pools[1].limit, Some(200.0));
    }

    #[test]
    fn free_plan_has_no_ai_pool() {
        let body = r#"{"plan":"free","compressor_used":20,"compressor_limit":20,"ia_credits_used":0,
            "ia_credits_monthly":0,"ia_topup_credits":0,"ia_credits_remaining":0,"canCompress":false,"canUseIA":false}"#;
        let r = parse(body.as_bytes(), anchor()).unwrap();
        assert_eq!(r.pools.len(), 1);
        assert_eq!(
            (r.pools[0].remaining, r.pools[0].available),
            (Some(0.0), Some(false))
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse(
            DOC.replace("\"ia_credits_used\": 120,", "").as_bytes(),
            anchor(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("missing field `ia_credits_used`"),
            "{e}"
        );
        let e = parse(
            DOC.replace("\"compressor_used\": 45", "\"compressor_used\": \"45\"")
                .as_bytes(),
            anchor(),
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid response: field `compressor_used`: invalid type: string"),
            "{e}"
        );
        let e = parse(
            DOC.replace("\"ia_topup_credits\": 200", "\"ia_topup_credits\": -5")
                .as_bytes(),
            anchor(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid response: field `ia_topup_credits` is negative (-5)"
        );
        let e = parse(b"<html>502 Bad Gateway</html>", anchor()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid response: body is not valid JSON"),
            "{e}"
        );
        assert_eq!(e.reason(), "parse");
    }
}
