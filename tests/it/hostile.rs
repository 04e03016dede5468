//! Hostile payloads through the real daemon: each refused with the field named and no value exported; unicode and quotes in labels escaped so promtool accepts the exposition.

use crate::support::{manual_clock, series, spawn, tool, value};
use crate::upstream::{Reply, Upstream, usage_body};
use std::io::Write;
use std::process::{Command, Stdio};

fn account(name: &str, url: &str) -> String {
    format!(
        "[[account]]\nname = {}\nprovider = \"fluximage\"\napi_key = \"k\"\nbase_url = \"{url}\"\nbilling_anchor = \"2026-01-15\"\ninterval = \"1m\"\n",
        toml_str(name)
    )
}

fn toml_str(s: &str) -> String {
    format!("{s:?}")
}

/// The documented body with `field`'s value replaced by `raw` JSON text.
fn with(field: &str, raw: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(&usage_body(45)).unwrap();
    let mut text = String::from("{");
    for (i, (k, val)) in v.as_object().unwrap().iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        let shown = if k == field {
            raw.to_string()
        } else {
            val.to_string()
        };
        text.push_str(&format!("{k:?}:{shown}"));
    }
    text + "}"
}

/// Runs `promtool check metrics` on an exposition and returns its verdict.
pub fn promtool_check(exposition: &str) -> (bool, String) {
    let mut child = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn hostile_values_are_refused_naming_the_field_and_never_exported() {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "nan",
            with("compressor_used", "NaN"),
            "invalid response: body is not valid JSON at field `compressor_used` (expected value",
        ),
        (
            "infinity",
            with("ia_credits_remaining", "Infinity"),
            "invalid response: body is not valid JSON at field `ia_credits_remaining` (expected value",
        ),
        (
            "negative",
            with("compressor_used", "-5"),
            "invalid response: field `compressor_used` is negative (-5)",
        ),
        (
            "string-for-number",
            with("ia_credits_used", "\"120\""),
            "invalid response: field `ia_credits_used`: invalid type: string \"120\", expected f64",
        ),
        (
            "number-for-string",
            with("plan", "5"),
            "invalid response: field `plan`: invalid type: integer `5`, expected a string",
        ),
        (
            "number-for-bool",
            with("canUseIA", "1"),
            "invalid response: field `canUseIA`: invalid type: integer `1`, expected a boolean",
        ),
        (
            "huge",
            with("ia_credits_remaining", "1e308"),
            "invalid response: field `ia_credits_remaining` is implausibly large (1e308)",
        ),
        (
            "overflow",
            with("compressor_limit", "1e309"),
            "invalid response: body is not valid JSON at field `compressor_limit` (number out of range",
        ),
        (
            "null",
            with("ia_topup_credits", "null"),
            "invalid response: field `ia_topup_credits`: invalid type: null, expected f64",
        ),
        (
            "deep-in-a-field",
            with("plan", &deep),
            "invalid response: field `plan`: invalid type: sequence, expected a string",
        ),
        (
            "duplicate",
            usage_body(45).replacen('{', "{\"compressor_used\":999,", 1),
            "invalid response: duplicate field `compressor_used`",
        ),
    ];
    let up = Upstream::start().await;
    let mut cfg = String::from("state_path = \"{dir}/s.db\"\n");
    for (name, body, _) in &cases {
        up.always(name, Reply::Body(body.clone()));
        cfg += &account(name, &up.base_url(name));
    }
    let app = spawn(&cfg, manual_clock()).await;
    app.running.wait_ready().await;
    let m = app.metrics().await;
    for (name, _, message) in &cases {
        let acc = format!("account=\"{name}\"");
        assert_eq!(value(&m, "creditwatch_up", &[&acc]), Some(0.0), "{name}");
        assert_eq!(
            value(
                &m,
                "creditwatch_scrape_errors_total",
                &[&acc, "reason=\"parse\""]
            ),
            Some(1.0),
            "{name}"
        );
        for family in [
            "creditwatch_used_credits",
            "creditwatch_remaining_credits",
            "creditwatch_account_info",
        ] {
            assert!(
                series(&m, family).iter().all(|l| !l.contains(&acc)),
                "{name}: {family} exported"
            );
        }
        let err = app.running.state.account(name).unwrap().last_error.unwrap();
        assert!(err.starts_with(message), "{name}: {err}");
    }
    let (ok, out) = promtool_check(&m);
    assert!(ok, "promtool: {out}");
    app.stop().await;
}

#[tokio::test]
async fn unicode_and_quotes_in_names_are_escaped_and_nesting_where_unused_is_harmless() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    // The plan is a label value chosen by the upstream: quotes, a backslash, a newline, unicode.
    let mut v: serde_json::Value = serde_json::from_str(&usage_body(45)).unwrap();
    v["plan"] = "gold \"tier\" \\ 2\nplän 🚀".into();
    v.as_object_mut().unwrap().remove("topups");
    // Unknown keys in unicode, and 100,000 levels of nesting where the parser does not look.
    let body = v.to_string().replacen(
        '{',
        &format!("{{\"topups\":{deep},\"schlüssel ✓\":{{\"ключ\":1}},"),
        1,
    );
    let up = Upstream::start().await;
    let name = "bilder \"prod\" \\ ü 🚀";
    up.always("u", Reply::Body(body));
    let app = spawn(&account(name, &up.base_url("u")), manual_clock()).await;
    app.running.wait_ready().await;
    let m = app.metrics().await;
    let line = series(&m, "creditwatch_account_info")[0];
    assert_eq!(
        line,
        r#"creditwatch_account_info{provider="fluximage",account="bilder \"prod\" \\ ü 🚀",plan="gold \"tier\" \\ 2 plän 🚀"} 1"#
    );
    assert_eq!(
        value(&m, "creditwatch_used_credits", &["pool=\"compression\""]),
        Some(45.0),
        "unused nested fields change nothing"
    );
    let (ok, out) = promtool_check(&m);
    assert!(ok, "promtool: {out}\n{m}");
    // The status page escapes the same names.
    let (status, page) = app.get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains("bilder &quot;prod&quot; \\ ü 🚀"), "{page}");
    assert!(!page.contains(name), "unescaped name on the status page");
    app.stop().await;
}
