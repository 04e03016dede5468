//! Property-based fuzzing of every parser that reads outside input: provider payloads, the config, the fluxrouter cost header, Retry-After, and label escaping in the exposition.
//!
//! Each target runs a bounded number of cases with `cargo test` (proptest's default of 256, or
//! `PROPTEST_CASES`); run longer with e.g. `PROPTEST_CASES=100000 cargo test --lib fuzz`. The
//! properties are the hardening promises: never a panic, and either the exact input numbers or
//! an error that names the field.

use crate::config::Config;
use crate::providers::{PollError, Reading, floow, fluximage, http_json, imagerouter};
use chrono::NaiveDate;
use proptest::prelude::*;
use std::path::Path;

fn anchor() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 1, 15).unwrap()
}

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339("2026-04-12T14:30:00Z")
        .unwrap()
        .to_utc()
}

/// An http_json account reading OpenRouter's key endpoint.
fn openrouter_settings() -> http_json::Settings {
    toml::from_str(
        r#"
url = "https://openrouter.ai/api/v1/key"
unit = "usd"
pool = "key_limit"
remaining = "/data/limit_remaining"
used = "/data/usage"
limit = "/data/limit"
reset = "monthly"
"#,
    )
    .unwrap()
}

/// What a parse error may say: the field it is about, or that the body is not JSON at all.
fn names_a_field_or_the_body(e: &PollError) -> bool {
    let m = e.to_string();
    e.reason() == "parse"
        && (m.contains("field `")
            || m.starts_with("invalid response: body is not valid JSON")
            || m.contains("missing field")
            || m.contains("invalid type")
            || m.starts_with("invalid response: pool `"))
}

/// A JSON value that a broken or hostile upstream might put where a number is expected.
fn hostile_value() -> impl Strategy<Value = (String, Option<f64>)> {
    prop_oneof![
        // Plausible counts: these must come back exactly.
        (0u32..5_000_000).prop_map(|n| (n.to_string(), Some(n as f64))),
        (0.0f64..1e9).prop_map(|f| (format!("{f:?}"), Some(f))),
        // Any float: accepted exactly when it is a plausible count.
        any::<f64>().prop_map(|f| {
            let ok = (0.0..=1e15).contains(&f);
            (format!("{f:?}"), ok.then_some(f))
        }),
        // Everything else must be refused.
        Just(("NaN".to_string(), None)),
        Just(("Infinity".to_string(), None)),
        Just(("-Infinity".to_string(), None)),
        Just(("1e308".to_string(), None)),
        Just(("1e309".to_string(), None)),
        Just(("-1e-309".to_string(), None)),
        Just(("18446744073709551616".to_string(), None)),
        (1u32..1_000_000).prop_map(|n| (format!("-{n}"), None)),
        (0u32..1000).prop_map(|n| (format!("\"{n}\""), None)),
        Just(("null".to_string(), None)),
        Just(("true".to_string(), None)),
        Just(("[1]".to_string(), None)),
        Just(("{\"value\": 1}".to_string(), None)),
        (1usize..2000).prop_map(|d| (format!("{}1{}", "[".repeat(d), "]".repeat(d)), None)),
        "\\PC{0,12}".prop_map(|s| (serde_json::to_string(&s).unwrap(), None)),
    ]
}

/// Any valid JSON value, deeply nested ones included: in a field the parser does not use, it
/// must change nothing.
fn valid_json() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (-1e300f64..1e300).prop_map(|f| format!("{f:?}")),
        "\\PC{0,12}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        (1usize..5000).prop_map(|d| format!("{}{}", "[".repeat(d), "]".repeat(d))),
        (1usize..5000).prop_map(|d| format!("{}{}", "{\"a\":".repeat(d), "}".repeat(d))),
        Just("null".to_string()),
    ]
}

/// A JSON value where a string or a boolean is expected.
fn hostile_scalar(valid: &'static [&'static str]) -> impl Strategy<Value = (String, bool)> {
    prop_oneof![
        4 => proptest::sample::select(valid).prop_map(|v| (v.to_string(), true)),
        1 => (0u32..100).prop_map(|n| (n.to_string(), false)),
        1 => Just(("null".to_string(), false)),
        1 => Just(("[\"pro\"]".to_string(), false)),
    ]
}

const NUMBER_FIELDS: [&str; 6] = [
    "compressor_used",
    "compressor_limit",
    "ia_credits_used",
    "ia_credits_monthly",
    "ia_topup_credits",
    "ia_credits_remaining",
];

proptest! {
    #[test]
    fn fluximage_parse_never_panics_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Err(e) = fluximage::parse(&body, anchor()) {
            prop_assert!(names_a_field_or_the_body(&e), "{e}");
        }
    }

    #[test]
    fn fluximage_parse_gives_the_exact_numbers_or_names_the_field(
        numbers in proptest::collection::vec(hostile_value(), 6),
        plan in hostile_scalar(&["\"pro\"", "\"starter\"", "\"agency\"", "\"free\"", "\"plän 🚀 \\\"x\\\"\""]),
        flags in proptest::collection::vec(hostile_scalar(&["true", "false"]), 2),
        extra_key in "\\PC{0,10}",
        extra in valid_json(),
    ) {
        let mut fields: Vec<String> = NUMBER_FIELDS
            .iter()
            .zip(&numbers)
            .map(|(k, (v, _))| format!("\"{k}\": {v}"))
            .collect();
        fields.push(format!("\"plan\": {}", plan.0));
        fields.push(format!("\"canCompress\": {}", flags[0].0));
        fields.push(format!("\"canUseIA\": {}", flags[1].0));
        // An unknown key, unicode and all, must change nothing.
        if !NUMBER_FIELDS.contains(&extra_key.as_str())
            && !["plan", "canCompress", "canUseIA"].contains(&extra_key.as_str())
        {
            fields.push(format!("{}: {extra}", serde_json::to_string(&extra_key).unwrap()));
        }
        let body = format!("{{{}}}", fields.join(", "));
        let all_valid = numbers.iter().all(|(_, v)| v.is_some()) && plan.1 && flags.iter().all(|f| f.1);
        match fluximage::parse(body.as_bytes(), anchor()).and_then(Reading::checked) {
            Ok(r) => {
                prop_assert!(all_valid, "accepted a hostile body: {body}");
                let n: Vec<f64> = numbers.iter().map(|(_, v)| v.unwrap()).collect();
                prop_assert_eq!(r.pools[0].used, Some(n[0]));
                if let Some(ai) = r.pools.get(1) {
                    prop_assert_eq!(ai.used, Some(n[2]));
                    prop_assert_eq!(ai.remaining, Some(n[5]));
                }
            }
            Err(e) => {
                prop_assert!(!all_valid, "refused a valid body: {body}: {e}");
                prop_assert!(names_a_field_or_the_body(&e), "{e}");
            }
        }
    }

    #[test]
    fn imagerouter_parse_survives_any_mutated_leaf(pick in any::<usize>(), leaf in hostile_leaf(), per_key in any::<bool>()) {
        let body = mutate(IMAGEROUTER_DOC, pick, leaf.as_deref());
        check_outcome(imagerouter::parse(body.as_bytes(), now(), per_key), &body)?;
    }

    #[test]
    fn floow_parse_survives_any_mutated_leaf(pick in any::<usize>(), leaf in hostile_leaf(), allowance in proptest::option::of(0.0f64..1e6)) {
        let body = mutate(FLOOW_DOC, pick, leaf.as_deref());
        check_outcome(floow::parse(body.as_bytes(), now(), anchor(), allowance), &body)?;
    }

    #[test]
    fn http_json_parse_survives_any_mutated_leaf(pick in any::<usize>(), leaf in hostile_leaf()) {
        let body = mutate(OPENROUTER_DOC, pick, leaf.as_deref());
        check_outcome(http_json::parse(body.as_bytes(), &openrouter_settings(), Some(anchor())), &body)?;
    }

    #[test]
    fn provider_parsers_never_panic_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = imagerouter::parse(&body, now(), true);
        let _ = floow::parse(&body, now(), anchor(), None);
        let _ = http_json::parse(&body, &openrouter_settings(), Some(anchor()));
    }

    #[test]
    fn cost_header_is_exact_or_refused(
        text in prop_oneof![
            "[0-9]{1,12}(\\.[0-9]{1,12})?",
            "\\PC{0,30}",
            "[0-9eE.+ -]{0,20}",
            Just("NaN".to_string()), Just("inf".to_string()), Just("1e3".to_string()),
            Just("-0.5".to_string()), Just("0x10".to_string()), Just("1,5".to_string()),
            Just("99999999999999999999999999999.1".to_string()),
        ],
    ) {
        use rust_decimal::Decimal;
        use std::str::FromStr;
        let plain = {
            let t = text.trim();
            let (i, f) = t.split_once('.').map(|(i, f)| (i, Some(f))).unwrap_or((t, None));
            let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            digits(i) && f.is_none_or(digits)
        };
        match crate::proxy::cost::parse_cost(&text) {
            Ok(d) => {
                prop_assert!(plain, "accepted {text:?}");
                // Exactly the written amount, not a rounding of it.
                prop_assert_eq!(d, Decimal::from_str(text.trim()).unwrap().normalize());
                prop_assert!(d >= Decimal::ZERO);
            }
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }

    #[test]
    fn config_parse_never_panics_on_arbitrary_text(src in "[\\[\\]a-z_=\"'.,{}#0-9 \\n\\t\\\\-]{0,300}") {
        let _ = Config::parse(&src, Path::new("f.toml"), Path::new("."), &|_| Some("k".into()));
    }

    #[test]
    fn config_parse_reports_a_located_problem_for_any_hostile_value(
        line in 0usize..8,
        value in prop_oneof![
            "\\PC{0,20}".prop_map(|s| toml_string(&s)),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|f| format!("{f:?}")),
            Just("nan".to_string()), Just("inf".to_string()), Just("-inf".to_string()),
            Just("[1, \"x\"]".to_string()), Just("{ a = 1 }".to_string()),
            Just("1979-05-27T07:32:00Z".to_string()), Just("true".to_string()),
            Just("\"\"".to_string()), Just("\"\\u0000\"".to_string()),
        ],
    ) {
        let keys = ["name", "provider", "api_key", "base_url", "billing_anchor", "interval", "timeout", "stale_after"];
        let mut lines = vec![
            "[[account]]".to_string(),
            "name = \"a\"".into(),
            "provider = \"fluximage\"".into(),
            "api_key = \"k\"".into(),
            "base_url = \"http://127.0.0.1:1\"".into(),
            "billing_anchor = \"2026-01-15\"".into(),
            "interval = \"1m\"".into(),
            "timeout = \"10s\"".into(),
            "stale_after = \"2h\"".into(),
        ];
        lines[line + 1] = format!("{} = {value}", keys[line]);
        let src = lines.join("\n");
        match Config::parse(&src, Path::new("f.toml"), Path::new("."), &|_| None) {
            Ok((c, _)) => prop_assert_eq!(c.accounts.len(), 1),
            Err(e) => {
                prop_assert!(!e.problems.is_empty());
                for p in &e.problems {
                    let shown = p.to_string();
                    prop_assert!(shown.starts_with("f.toml:") || shown.starts_with("f.toml: "), "{shown}");
                }
            }
        }
    }

    #[test]
    fn retry_after_never_panics(v in "\\PC{0,40}", secs in any::<u64>()) {
        use reqwest::header::HeaderValue;
        let now = chrono::Utc::now();
        for text in [v, secs.to_string()] {
            if let Ok(h) = HeaderValue::from_str(&text) {
                let _ = crate::http::retry_after(Some(&h), now);
            }
        }
    }

    #[test]
    fn label_values_round_trip_through_the_exposition(
        account in "\\PC{1,30}",
        plan in "\\PC{0,30}",
        key in "\\PC{0,30}",
    ) {
        let text = exposition_for(&account, &plan, &key);
        let mut found = false;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, labels, value) = parse_sample(line).unwrap_or_else(|| panic!("unparsable line {line:?}"));
            prop_assert!(value.parse::<f64>().is_ok(), "{line}");
            if name == "creditwatch_account_info" {
                found = true;
                prop_assert_eq!(&labels[1], &("account".to_string(), account.clone()));
                prop_assert_eq!(&labels[2], &("plan".to_string(), crate::providers::label_value(&plan)));
            }
            if name == "creditwatch_remaining_credits" {
                prop_assert_eq!(&labels[3], &("key".to_string(), crate::providers::label_value(&key)));
            }
        }
        prop_assert!(found);
    }
}

/// Documented example bodies (from the provider references) that the mutation targets start from.
const IMAGEROUTER_DOC: &str = r#"{"remaining_credits":"25.5000","credit_usage":"4.5000","total_deposits":"30.0000","usage_by_api_key":[{"api_key_id":"d9eb93dc-56b1-4216-91b5-a44944508bbc","api_key_name":"Production Key","credit_usage":"4.2000","total_requests":150,"created_at":"2023-10-01T12:00:00.000Z","is_active":true,"spend_limit":"5.0000","spend_limit_period":"month","period_spend":"1.2000","period_start":"2026-05-01T00:00:00.000Z","expires_at":"2027-01-01T00:00:00.000Z"},{"api_key_id":"temp_jwt","api_key_name":"Temporary web token (imagerouter.io)","credit_usage":"0.0300","total_requests":45,"created_at":null,"is_active":false,"spend_limit":null,"spend_limit_period":null,"period_spend":"0.0300","period_start":null,"expires_at":null}]}"#;
const FLOOW_DOC: &str = r#"{"period":{"start":"2026-03-13T00:00:00.000Z","end":"2026-04-12T14:30:00.000Z","days":30},"key":{"id":"clxyz01abc","name":"Production Key","lastUsed":"2026-04-12T14:29:00.000Z"},"summary":{"totalCalls":47,"totalCredits":855,"byEndpoint":{"image_to_html":{"calls":20,"credits":600,"label":"Image → HTML"},"code_export":{"calls":18,"credits":270,"label":"Export Code"},"figma_export":{"calls":9,"credits":90,"label":"Figma Export"}}},"daily":[{"date":"2026-04-10","calls":5,"credits":90},{"date":"2026-04-11","calls":12,"credits":225},{"date":"2026-04-12","calls":8,"credits":150}]}"#;
const OPENROUTER_DOC: &str = r#"{"data":{"label":"sk-or-v1-au7...890","limit":100,"limit_remaining":74.5,"limit_reset":"monthly","include_byok_in_limit":false,"usage":25.5,"usage_daily":25.5,"usage_weekly":25.5,"usage_monthly":25.5,"byok_usage":17.38,"is_free_tier":false,"expires_at":"2027-12-31T23:59:59Z"}}"#;

/// Every leaf of a JSON document, as a JSON pointer.
fn leaves(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                leaves(
                    v,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        serde_json::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                leaves(v, format!("{at}/{i}"), out);
            }
        }
        _ => out.push(at),
    }
}

/// `doc` with its `pick`-th leaf replaced by the raw JSON text `raw` (which may be invalid JSON,
/// such as `NaN`), or removed when `raw` is `None`.
fn mutate(doc: &str, pick: usize, raw: Option<&str>) -> String {
    let mut v: serde_json::Value = serde_json::from_str(doc).unwrap();
    let mut all = Vec::new();
    leaves(&v, String::new(), &mut all);
    let ptr = &all[pick % all.len()];
    const HOLE: &str = "\u{1}hole\u{1}";
    match raw {
        Some(_) => *v.pointer_mut(ptr).unwrap() = HOLE.into(),
        None => {
            let (parent, key) = ptr.rsplit_once('/').unwrap();
            match v.pointer_mut(parent).unwrap() {
                serde_json::Value::Object(m) => {
                    m.remove(&key.replace("~1", "/").replace("~0", "~"));
                }
                serde_json::Value::Array(a) => {
                    a.remove(key.parse::<usize>().unwrap());
                }
                _ => unreachable!(),
            }
        }
    }
    let text = v.to_string();
    match raw {
        Some(r) => text.replace(&serde_json::to_string(HOLE).unwrap(), r),
        None => text,
    }
}

/// A hostile replacement for a leaf, or `None` to remove it.
fn hostile_leaf() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        hostile_value().prop_map(|(t, _)| Some(t)),
        valid_json().prop_map(Some),
        Just(None),
    ]
}

/// The outcome every provider parser must have on a mutated document: no panic, and either a
/// reading whose amounts pass the core's check or a short `parse` error.
fn check_outcome(r: Result<Reading, PollError>, body: &str) -> Result<(), TestCaseError> {
    match r.and_then(Reading::checked) {
        Ok(_) => Ok(()),
        Err(e) => {
            let m = e.to_string();
            prop_assert_eq!(e.reason(), "parse", "{}", m);
            // An error names the problem; it never echoes the hostile body back at length.
            prop_assert!(m.len() < 600, "error of {} bytes for {}", m.len(), body);
            Ok(())
        }
    }
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The exposition of one account named `account` whose upstream reported `plan` and a pool key.
pub(crate) fn exposition_for(account: &str, plan: &str, key: &str) -> String {
    use crate::forecast::consumption::ConsumptionRule;
    use crate::forecast::schedule::Schedule;
    use crate::providers::{PoolReading, Unit};
    use crate::state::{PoolState, Snapshot, State};
    let reading = Reading {
        plan: Some(plan.to_string()),
        pools: vec![PoolReading {
            pool: "balance".into(),
            key: key.into(),
            unit: Unit::Credits,
            used: Some(1.0),
            remaining: Some(2.0),
            limit: None,
            available: None,
            schedule: Schedule::Never,
            rule: ConsumptionRule::Used,
            cumulative: None,
        }],
        ..Default::default()
    }
    .checked()
    .unwrap();
    let state = State::new();
    state.add_account(account, "fluximage", true);
    state.record_success(
        account,
        0.1,
        Snapshot {
            at: chrono::Utc::now(),
            plan: reading.plan,
            keys: reading.keys,
            endpoints: reading.endpoints,
            pools: reading
                .pools
                .into_iter()
                .map(|reading| PoolState {
                    reading,
                    consumed_total: 0.0,
                    period: None,
                    forecast: Default::default(),
                })
                .collect(),
        },
    );
    crate::metrics::Exporter::new(state).render()
}

/// One sample line of the text format: name, labels (unescaped) and value.
type Sample = (String, Vec<(String, String)>, String);

/// Parses one sample line of the text format.
pub(crate) fn parse_sample(line: &str) -> Option<Sample> {
    let (name, rest) = match line.find('{') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => {
            let (n, v) = line.split_once(' ')?;
            return Some((n.to_string(), vec![], v.to_string()));
        }
    };
    let mut labels = Vec::new();
    let mut chars = rest.chars();
    loop {
        let mut lname = String::new();
        for c in chars.by_ref() {
            match c {
                '=' => break,
                '}' if lname.is_empty() => {
                    let v: String = chars.collect();
                    return Some((name.to_string(), labels, v.strip_prefix(' ')?.to_string()));
                }
                c => lname.push(c),
            }
        }
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    _ => return None,
                },
                '"' => break,
                '\n' => return None,
                c => value.push(c),
            }
        }
        labels.push((lname, value));
        match chars.next()? {
            ',' => {}
            '}' => {
                let v: String = chars.collect();
                return Some((name.to_string(), labels, v.strip_prefix(' ')?.to_string()));
            }
            _ => return None,
        }
    }
}
