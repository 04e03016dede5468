//! What one upstream response is worth: the `X-Flux-*` headers read into a cost, a model and a request id, and the key hash.
//!
//! Pure functions of headers, so every rule is unit-tested: a cost is added only when it is a
//! plain non-negative decimal; anything else is counted as unpriced and reported, never guessed.

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use rust_decimal::Decimal;
use std::str::FromStr;

/// The exact cost of a request in USD (non-streaming responses only).
pub const COST_HEADER: &str = "x-flux-cost-usd";
/// The model that actually served the request.
pub const MODEL_HEADER: &str = "x-flux-model";
/// The identifier to quote to support.
pub const REQUEST_ID_HEADER: &str = "x-flux-request-id";

/// The `model` label when the response names no model.
pub const UNKNOWN_MODEL: &str = "unknown";

/// A single request costing more than this is not believed: the header is treated as malformed.
const MAX_COST_USD: i64 = 1_000_000;
/// Label values and ids longer than this are cut, so an odd upstream cannot bloat series or rows.
const MAX_LABEL_CHARS: usize = 128;

/// How a response counts against spend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pricing {
    /// The response carried a valid cost.
    Priced(Decimal),
    /// A successful response whose cost cannot be known from it (streaming, or no cost header).
    Unpriced(Unpriced),
    /// An error response without a cost header: FluxRouter bills served requests, not errors.
    Unbilled,
}

/// Why a request could not be priced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unpriced {
    /// A streaming (`text/event-stream`) response: its cost is not known when headers are sent.
    Streaming,
    /// A successful response without a cost header.
    Missing,
    /// A cost header that is not a plain non-negative decimal (the value and why).
    Malformed { value: String, reason: String },
}

impl Unpriced {
    /// A short description for the request log.
    pub fn note(&self) -> String {
        match self {
            Unpriced::Streaming => "streaming response: no cost header".into(),
            Unpriced::Missing => "no cost header".into(),
            Unpriced::Malformed { value, reason } => {
                format!("malformed {COST_HEADER} {value:?}: {reason}")
            }
        }
    }
}

/// Reads the cost of a response from its status and headers.
pub fn pricing(status: StatusCode, headers: &HeaderMap) -> Pricing {
    let mut values = headers.get_all(COST_HEADER).iter();
    let first = values.next();
    if values.next().is_some() {
        return Pricing::Unpriced(Unpriced::Malformed {
            value: join_values(headers),
            reason: "the header is repeated".into(),
        });
    }
    match first {
        Some(v) => match v.to_str().map_err(|_| "not ASCII text".to_string()) {
            Ok(text) => match parse_cost(text) {
                Ok(c) => Pricing::Priced(c),
                Err(reason) => Pricing::Unpriced(Unpriced::Malformed {
                    value: clip(text),
                    reason,
                }),
            },
            Err(reason) => Pricing::Unpriced(Unpriced::Malformed {
                value: clip(&String::from_utf8_lossy(v.as_bytes())),
                reason,
            }),
        },
        None if !status.is_success() => Pricing::Unbilled,
        None if is_event_stream(headers) => Pricing::Unpriced(Unpriced::Streaming),
        None => Pricing::Unpriced(Unpriced::Missing),
    }
}

fn join_values(headers: &HeaderMap) -> String {
    let all: Vec<String> = headers
        .get_all(COST_HEADER)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    clip(&all.join(", "))
}

fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// Parses a cost such as `0.000412`: digits with an optional fraction, nothing else (no sign,
/// exponent, comma or unit), at most 28 significant digits, below a sanity cap.
pub fn parse_cost(text: &str) -> Result<Decimal, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty".into());
    }
    let (int, frac) = match t.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (t, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || frac.is_some_and(|f| !digits(f)) {
        return Err("expected a plain decimal number such as 0.000412".into());
    }
    let d = Decimal::from_str(t).map_err(|e| format!("not representable: {e}"))?;
    // `from_str` rounds what does not fit in 28 digits; a rounded cost is not the cost.
    let written = frac.map(|f| f.trim_end_matches('0').len()).unwrap_or(0);
    if (d.scale() as usize) < written {
        return Err("too many digits to hold exactly".into());
    }
    if d > Decimal::from(MAX_COST_USD) {
        return Err(format!("implausibly large (over {MAX_COST_USD} USD)"));
    }
    Ok(d.normalize())
}

/// A header value made safe for a label or a log: printable, trimmed and short.
pub fn label_value(v: &HeaderValue) -> Option<String> {
    let s = clip(&String::from_utf8_lossy(v.as_bytes()));
    (!s.is_empty()).then_some(s)
}

fn clip(s: &str) -> String {
    crate::http::sanitize(s)
        .chars()
        .take(MAX_LABEL_CHARS)
        .collect()
}

/// The served model named by the response, or [`UNKNOWN_MODEL`].
pub fn model(headers: &HeaderMap) -> String {
    headers
        .get(MODEL_HEADER)
        .and_then(label_value)
        .unwrap_or_else(|| UNKNOWN_MODEL.to_string())
}

/// The response's request id, if any.
pub fn request_id(headers: &HeaderMap) -> Option<String> {
    headers.get(REQUEST_ID_HEADER).and_then(label_value)
}

/// Hex characters of a key hash.
pub const KEY_HASH_LEN: usize = 12;

/// The short hash that attributes spend to a key without storing it: the first 12 hex
/// characters of the SHA-256 of the credential (the Authorization value without its `Bearer `
/// scheme). `printf %s "$KEY" | sha256sum | cut -c1-12` computes the same.
pub fn key_hash(authorization: &HeaderValue) -> String {
    let raw = authorization.as_bytes();
    let credential = match raw.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => &raw[7..],
        _ => raw,
    };
    let credential = credential.trim_ascii();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, credential);
    let mut out = String::with_capacity(KEY_HASH_LEN);
    for b in digest.as_ref() {
        out.push_str(&format!("{b:02x}"));
        if out.len() >= KEY_HASH_LEN {
            break;
        }
    }
    out.truncate(KEY_HASH_LEN);
    out
}

/// Whether `s` looks like a key hash (12 lowercase hex characters).
pub fn is_key_hash(s: &str) -> bool {
    s.len() == KEY_HASH_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn costs_parse_exactly() {
        assert_eq!(parse_cost("0.000412").unwrap().to_string(), "0.000412");
        assert_eq!(parse_cost(" 12 ").unwrap().to_string(), "12");
        assert_eq!(parse_cost("0.50").unwrap().to_string(), "0.5");
        assert_eq!(parse_cost("0").unwrap(), Decimal::ZERO);
        for bad in [
            "", "-0.1", "+0.1", "1e-3", "0,000412", "$0.01", ".5", "5.", "NaN", "inf", "0.1 USD",
            "1.2.3",
        ] {
            assert!(parse_cost(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            parse_cost("2000000")
                .unwrap_err()
                .contains("implausibly large")
        );
        assert_eq!(
            parse_cost("0.00000000000000000000000000001").unwrap_err(),
            "too many digits to hold exactly"
        );
        assert!(parse_cost("123456.1234567890123456789012345678").is_err());
    }

    #[test]
    fn pricing_by_status_and_headers() {
        let ok = StatusCode::OK;
        assert_eq!(
            pricing(ok, &headers(&[("x-flux-cost-usd", "0.000412")])),
            Pricing::Priced("0.000412".parse().unwrap())
        );
        assert_eq!(
            pricing(
                ok,
                &headers(&[("content-type", "text/event-stream; charset=utf-8")])
            ),
            Pricing::Unpriced(Unpriced::Streaming)
        );
        assert_eq!(
            pricing(ok, &headers(&[("content-type", "application/json")])),
            Pricing::Unpriced(Unpriced::Missing)
        );
        assert_eq!(
            pricing(StatusCode::TOO_MANY_REQUESTS, &headers(&[])),
            Pricing::Unbilled
        );
        // A cost on an error response is still a cost.
        assert_eq!(
            pricing(
                StatusCode::BAD_REQUEST,
                &headers(&[("x-flux-cost-usd", "0.0001")])
            ),
            Pricing::Priced("0.0001".parse().unwrap())
        );
        match pricing(ok, &headers(&[("x-flux-cost-usd", "0,000412")])) {
            Pricing::Unpriced(Unpriced::Malformed { value, .. }) => assert_eq!(value, "0,000412"),
            other => panic!("{other:?}"),
        }
        match pricing(
            ok,
            &headers(&[("x-flux-cost-usd", "0.1"), ("x-flux-cost-usd", "0.2")]),
        ) {
            Pricing::Unpriced(Unpriced::Malformed { value, reason }) => {
                assert_eq!(
                    (value.as_str(), reason.as_str()),
                    ("0.1, 0.2", "the header is repeated")
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn model_and_request_id_are_clipped_and_defaulted() {
        assert_eq!(model(&headers(&[])), "unknown");
        assert_eq!(
            model(&headers(&[("x-flux-model", " flux-lite ")])),
            "flux-lite"
        );
        let long = "m".repeat(500);
        assert_eq!(model(&headers(&[("x-flux-model", &long)])).len(), 128);
        assert_eq!(
            request_id(&headers(&[("x-flux-request-id", "req_1")])).as_deref(),
            Some("req_1")
        );
    }

    #[test]
    fn key_hash_matches_sha256sum_of_the_bare_key() {
        // `printf %s sk-test-123 | sha256sum | cut -c1-12`; the scheme's case does not matter.
        let h = key_hash(&HeaderValue::from_static("Bearer sk-test-123"));
        assert_eq!(h, "e0dbaa0c6455");
        assert_eq!(h, key_hash(&HeaderValue::from_static("bearer sk-test-123")));
        assert_eq!(h, key_hash(&HeaderValue::from_static("sk-test-123")));
        assert!(is_key_hash(&h));
        assert_ne!(h, key_hash(&HeaderValue::from_static("Bearer sk-test-124")));
    }
}
