//! The Grafana dashboards: they parse, use only metrics the daemon exports with the right units, and every panel query runs against a real Prometheus scraping `creditwatch demo`.

use crate::external::{Proc, eventually, get_json, prometheus_with};
use regex::Regex;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Series Prometheus makes itself rather than scraping them from creditwatch.
const PROMETHEUS_SERIES: &[&str] = &[
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "ALERTS",
];

/// Grafana's own variables, expanded by the test the way Grafana would.
const BUILTIN_VARIABLES: &[&str] = &["__rate_interval", "__interval", "__range"];

struct Dashboard {
    file: String,
    json: Value,
}

fn dashboards() -> Vec<Dashboard> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let file = p.file_name().unwrap().to_string_lossy().into_owned();
            let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            Dashboard { file, json }
        })
        .collect()
}

/// Every panel, including those inside rows.
fn panels(list: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in list.as_array().into_iter().flatten() {
        out.push(p);
        out.extend(panels(&p["panels"]));
    }
    out
}

/// One query a dashboard sends to Prometheus.
#[derive(Debug, Clone)]
struct Query {
    /// Panel title, `annotation NAME` or `variable NAME`.
    what: String,
    ref_id: String,
    expr: String,
    instant: bool,
    /// The panel's minimum interval (`$__interval` is at least this).
    min_interval: Option<String>,
    /// Whether the panel overrides the dashboard's time range with a past-only window.
    past_only: bool,
}

fn queries(d: &Dashboard) -> Vec<Query> {
    let mut out = Vec::new();
    for p in panels(&d.json["panels"]) {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(Query {
                what: p["title"].as_str().unwrap_or("").to_string(),
                ref_id: t["refId"].as_str().unwrap_or("").to_string(),
                expr: t["expr"].as_str().expect("prometheus target").to_string(),
                instant: t["instant"].as_bool().unwrap_or(false),
                min_interval: p["interval"].as_str().map(str::to_string),
                past_only: p["timeFrom"].is_string(),
            });
        }
    }
    for a in d.json["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(expr) = a["expr"].as_str() {
            out.push(Query {
                what: format!("annotation {}", a["name"].as_str().unwrap()),
                ref_id: "Anno".into(),
                expr: expr.to_string(),
                instant: false,
                min_interval: a["step"].as_str().map(str::to_string),
                past_only: false,
            });
        }
    }
    out
}

const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "inf",
    "nan",
    "atan2",
];

/// Metric names a PromQL expression selects, and the regexes of its `__name__=~` matchers.
/// Grafana variables must already be expanded.
fn metric_names(expr: &str) -> (BTreeSet<String>, Vec<String>) {
    let chars: Vec<char> = expr.chars().collect();
    let (mut names, mut regexes) = (BTreeSet::new(), Vec::new());
    let mut i = 0;
    let skip_string = |i: &mut usize| {
        let q = chars[*i];
        let start = *i + 1;
        *i += 1;
        while *i < chars.len() && chars[*i] != q {
            if chars[*i] == '\\' {
                *i += 1;
            }
            *i += 1;
        }
        *i += 1;
        chars[start..*i - 1].iter().collect::<String>()
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            skip_string(&mut i);
        } else if c == '{' {
            // Label matchers: only __name__ ones name metrics.
            i += 1;
            while i < chars.len() && chars[i] != '}' {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let label: String = chars[start..i].iter().collect();
                while i < chars.len() && " =~!".contains(chars[i]) {
                    i += 1;
                }
                if i < chars.len() && "\"'`".contains(chars[i]) {
                    let v = skip_string(&mut i);
                    if label == "__name__" {
                        regexes.push(v);
                    }
                } else if i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
            }
            i += 1;
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let is_call = chars.get(j) == Some(&'(');
            if [
                "by",
                "without",
                "on",
                "ignoring",
                "group_left",
                "group_right",
            ]
            .contains(&word.as_str())
                && is_call
            {
                // A label list, not a sub-expression.
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
            } else if !is_call && !KEYWORDS.contains(&word.as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    (names, regexes)
}

/// Replaces `$name` and `${name}` with values, longest names first so `$pool` never eats
/// `$pool_x`.
fn expand(text: &str, values: &BTreeMap<String, String>) -> String {
    let mut keys: Vec<&String> = values.keys().collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
    let mut out = text.to_string();
    for k in keys {
        out = out
            .replace(&format!("${{{k}}}"), &values[k])
            .replace(&format!("${k}"), &values[k]);
    }
    out
}

/// Placeholder values: enough to tokenize an expression without a Prometheus.
fn placeholder_values(d: &Dashboard) -> BTreeMap<String, String> {
    let mut v: BTreeMap<String, String> = d.json["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_string(), ".*".to_string()))
        .collect();
    for b in BUILTIN_VARIABLES {
        v.insert(b.to_string(), "5m".to_string());
    }
    v
}

/// The unit Grafana shows for a query's values: a per-query override, a renamed table column's
/// override, or the panel default.
fn unit_of(panel: &Value, ref_id: &str) -> Option<String> {
    let overrides = panel["fieldConfig"]["overrides"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let by = |id: &str, name: &str| {
        overrides.iter().find_map(|o| {
            (o["matcher"]["id"] == id && o["matcher"]["options"] == name).then(|| {
                o["properties"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["id"] == "unit")
                    .and_then(|p| p["value"].as_str().map(str::to_string))
            })?
        })
    };
    if let Some(u) = by("byFrameRefID", ref_id) {
        return Some(u);
    }
    let column = format!("Value #{ref_id}");
    for t in panel["transformations"].as_array().into_iter().flatten() {
        if let Some(name) = t["options"]["renameByName"][&column].as_str()
            && let Some(u) = by("byName", name)
        {
            return Some(u);
        }
    }
    panel["fieldConfig"]["defaults"]["unit"]
        .as_str()
        .map(str::to_string)
}

#[test]
fn dashboards_parse_and_use_only_exported_metrics() {
    let exported: BTreeSet<String> = creditwatch::metrics::family_names()
        .into_iter()
        .map(str::to_string)
        .collect();
    let all = dashboards();
    let titles: BTreeSet<&str> = all
        .iter()
        .map(|d| d.json["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        titles,
        BTreeSet::from([
            "creditwatch / Overview",
            "creditwatch / Pool detail",
            "creditwatch / Keys and endpoints",
            "creditwatch / Exporter health",
        ])
    );
    let uids: BTreeSet<&str> = all
        .iter()
        .map(|d| d.json["uid"].as_str().unwrap())
        .collect();
    assert_eq!(uids.len(), all.len(), "dashboard uids must be unique");
    let mut used = BTreeSet::new();
    let var_ref = Regex::new(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)").unwrap();

    for d in &all {
        let f = &d.file;
        let j = &d.json;
        assert!(
            j["schemaVersion"].as_i64().unwrap() >= 39,
            "{f}: schemaVersion"
        );
        assert!(
            j["tags"]
                .as_array()
                .unwrap()
                .contains(&"creditwatch".into()),
            "{f}: tag"
        );
        let vars = j["templating"]["list"].as_array().unwrap();
        let var = |name: &str| vars.iter().find(|v| v["name"] == name);
        let ds = var("datasource").unwrap_or_else(|| panic!("{f}: no datasource variable"));
        assert_eq!(ds["type"], "datasource", "{f}");
        assert_eq!(ds["query"], "prometheus", "{f}");
        let mut wanted = vec!["provider", "account"];
        if f.contains("overview") || f.contains("pool") {
            wanted.push("pool");
        }
        for name in wanted {
            let v = var(name).unwrap_or_else(|| panic!("{f}: no {name} variable"));
            assert_eq!(v["type"], "query", "{f}: {name}");
            let def = v["definition"].as_str().unwrap();
            assert!(
                def.starts_with("label_values(") && def.ends_with(&format!(", {name})")),
                "{f}: {name} reads label values: {def}"
            );
            assert_eq!(v["query"]["query"].as_str(), Some(def), "{f}: {name}");
            assert_eq!(v["datasource"]["uid"], "${datasource}", "{f}: {name}");
        }
        // Every variable a query uses exists; nothing is hard-wired to one data source.
        let known: BTreeSet<&str> = vars
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .chain(BUILTIN_VARIABLES.iter().copied())
            .collect();
        let mut ids = BTreeSet::new();
        for p in panels(&j["panels"]) {
            let title = p["title"].as_str().unwrap_or("");
            assert!(
                ids.insert(p["id"].as_i64().unwrap()),
                "{f}: duplicate panel id"
            );
            let g = &p["gridPos"];
            assert!(
                g["x"].as_i64().unwrap() + g["w"].as_i64().unwrap() <= 24,
                "{f}: {title} is wider than the grid"
            );
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{f}: {title}");
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{f}: {title} has no query");
            for t in targets {
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{f}: {title}");
            }
        }
        for q in queries(d) {
            for c in var_ref.captures_iter(&q.expr) {
                assert!(
                    known.contains(&c[1]),
                    "{f}: {}: unknown variable ${}",
                    q.what,
                    &c[1]
                );
            }
        }

        let values = placeholder_values(d);
        let var_exprs = vars.iter().filter_map(|v| {
            let def = v["definition"].as_str()?;
            let sel = def.strip_prefix("label_values(")?.rsplit_once(',')?.0;
            Some((
                format!("variable {}", v["name"].as_str().unwrap()),
                sel.to_string(),
            ))
        });
        let exprs = queries(d)
            .into_iter()
            .map(|q| (q.what, q.expr))
            .chain(var_exprs);
        for (what, expr) in exprs {
            let (names, regexes) = metric_names(&expand(&expr, &values));
            assert!(
                !names.is_empty() || !regexes.is_empty() || expr.contains("vector("),
                "{f}: {what}: no metric found in {expr}"
            );
            for n in &names {
                assert!(
                    exported.contains(n) || PROMETHEUS_SERIES.contains(&n.as_str()),
                    "{f}: {what}: {n} is not a metric creditwatch exports"
                );
                used.insert(n.clone());
            }
            for r in &regexes {
                let re = Regex::new(&format!("^(?:{r})$")).unwrap();
                let hits: Vec<&String> = exported.iter().filter(|n| re.is_match(n)).collect();
                assert!(
                    !hits.is_empty(),
                    "{f}: {what}: __name__=~{r:?} matches no exported metric"
                );
                used.extend(hits.into_iter().cloned());
            }
        }

        // Units: money in USD, credits as credits, timestamps as dates, time left as a duration.
        for p in panels(&j["panels"]) {
            for t in p["targets"].as_array().into_iter().flatten() {
                let ref_id = t["refId"].as_str().unwrap();
                let expr = t["expr"].as_str().unwrap();
                let title = p["title"].as_str().unwrap();
                let (names, _) = metric_names(&expand(expr, &values));
                let unit =
                    unit_of(p, ref_id).unwrap_or_else(|| panic!("{f}: {title} {ref_id}: no unit"));
                let usd = names.iter().any(|n| n.contains("_usd"));
                let credits = names.iter().any(|n| n.contains("_credits"));
                assert!(
                    !(usd && credits),
                    "{f}: {title} {ref_id} mixes USD and credits"
                );
                let what = format!("{f}: {title} {ref_id} ({expr})");
                let timestamp = expr.contains("_timestamp_seconds");
                if timestamp && expr.trim_end().ends_with("* 1000") {
                    assert!(
                        unit.starts_with("dateTime"),
                        "{what}: a date needs a dateTime unit, not {unit}"
                    );
                } else if unit == "percentunit" {
                    assert!(
                        expr.contains('/') || names.contains("creditwatch_remaining_ratio"),
                        "{what}: percent of what?"
                    );
                } else if usd {
                    assert_eq!(unit, "currencyUSD", "{what}");
                } else if credits {
                    assert_eq!(unit, "suffix: credits", "{what}");
                } else if timestamp && expr.contains("time()") && !expr.contains("count(") {
                    assert_eq!(unit, "s", "{what}: time left is a duration");
                }
            }
        }
    }

    // The dashboards cover what the daemon is for.
    for m in [
        "creditwatch_remaining_credits",
        "creditwatch_remaining_usd",
        "creditwatch_remaining_ratio",
        "creditwatch_exhaustion_timestamp_seconds",
        "creditwatch_reset_timestamp_seconds",
        "creditwatch_exhausts_before_reset",
        "creditwatch_consumed_credits_total",
        "creditwatch_key_expiry_timestamp_seconds",
        "creditwatch_endpoint_credits",
        "creditwatch_proxy_cost_usd_total",
        "creditwatch_proxy_unpriced_requests_total",
        "creditwatch_scrape_errors_total",
        "creditwatch_config_last_reload_successful",
        "ALERTS",
    ] {
        assert!(used.contains(m), "no dashboard shows {m}");
    }
}

#[test]
fn promql_metric_names_are_found() {
    let (n, r) = metric_names(
        r#"86400 * max without (window) (a_b{x="y", window="1m"} or ignoring (window) c{z=~"q"}) / on (p) group_left () sum by (k) (rate(d_total[5m] offset 1h)) and {__name__=~"e_(f|g)"}"#,
    );
    assert_eq!(
        n,
        BTreeSet::from(["a_b".into(), "c".into(), "d_total".into()])
    );
    assert_eq!(r, vec!["e_(f|g)".to_string()]);
    let (n, _) = metric_names("count((m - time()) < 7 * 86400) or vector(0)");
    assert_eq!(n, BTreeSet::from(["m".into()]));
}

/// `creditwatch demo`, the real binary, on a free port; killed when dropped.
struct Demo {
    child: Child,
    addr: String,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_demo() -> Demo {
    let mut child = Command::new(env!("CARGO_BIN_EXE_creditwatch"))
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("creditwatch demo starts");
    // The demo prints its URLs once it listens; the metrics line names the bound port.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("demo printed its URLs before exiting")
            .unwrap();
        if let Some(url) = line.trim().strip_prefix("metrics") {
            break url
                .trim()
                .trim_start_matches("http://")
                .trim_end_matches("/metrics")
                .to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Demo { child, addr }
}

/// deploy/prometheus.yml as shipped, with the rules beside it, pointed at the demo and made
/// to scrape and evaluate every second.
async fn prometheus_for(target: &str) -> Proc {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut config = std::fs::read_to_string(root.join("deploy/prometheus.yml")).unwrap();
    for (from, to) in [
        ("scrape_interval: 60s", "scrape_interval: 1s"),
        ("evaluation_interval: 60s", "evaluation_interval: 1s"),
        ("creditwatch.example.internal:9477", target),
        // Nothing listens here: alerts go nowhere, quickly.
        ("localhost:9093", "127.0.0.1:1"),
    ] {
        assert!(
            config.contains(from),
            "deploy/prometheus.yml no longer has {from:?}"
        );
        config = config.replace(from, to);
    }
    let rules = std::fs::read_to_string(root.join("alerts/creditwatch.rules.yml")).unwrap();
    prometheus_with(&config, &[("rules/creditwatch.rules.yml", rules)]).await
}

fn api_url(base: &str, path: &str, params: &[(&str, String)]) -> String {
    reqwest::Url::parse_with_params(&format!("{base}{path}"), params)
        .unwrap()
        .to_string()
}

/// `GET` a Prometheus API URL, returning the JSON whatever the status (errors are JSON too).
async fn api(url: &str) -> Value {
    let r = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    serde_json::from_str(&r.text().await.unwrap()).unwrap()
}

/// Resolves a dashboard's variables against Prometheus the way Grafana does on load: multi-value
/// variables take "All" (their allValue), single ones their saved value if it exists, else the
/// first option in sort order.
async fn resolve(
    prom: &str,
    d: &Dashboard,
    now: f64,
) -> (
    BTreeMap<String, String>,
    Vec<(String, Result<usize, String>)>,
) {
    let mut values = BTreeMap::new();
    let mut results = Vec::new();
    let re = Regex::new(r"(?s)^label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\)$").unwrap();
    for v in d.json["templating"]["list"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap().to_string();
        if v["type"] != "query" {
            continue;
        }
        let def = expand(v["definition"].as_str().unwrap(), &values);
        let c = re
            .captures(&def)
            .unwrap_or_else(|| panic!("{}: {name}: {def}", d.file));
        let url = api_url(
            prom,
            "/api/v1/series",
            &[
                ("match[]", c[1].to_string()),
                ("start", format!("{}", now - 300.0)),
                ("end", format!("{now}")),
            ],
        );
        let body = api(&url).await;
        let mut options: Vec<String> = body["data"]
            .as_array()
            .map(|series| {
                series
                    .iter()
                    .filter_map(|s| s[&c[2]].as_str().map(str::to_string))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect()
            })
            .unwrap_or_default();
        options.sort();
        results.push((
            format!("variable {name}"),
            if body["status"] == "success" {
                Ok(options.len())
            } else {
                Err(body["error"].to_string())
            },
        ));
        let value = if v["multi"].as_bool().unwrap_or(false) {
            v["allValue"].as_str().unwrap_or(".*").to_string()
        } else {
            let saved = v["current"]["value"].as_str().unwrap_or("");
            if options.iter().any(|o| o == saved) {
                saved.to_string()
            } else {
                options.first().cloned().unwrap_or_default()
            }
        };
        values.insert(name, value);
    }
    (values, results)
}

/// Everything a query returned: (labels, points) per series.
type Series = Vec<(Value, Vec<(f64, f64)>)>;

fn series_of(body: &Value) -> Series {
    body["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let pts: Vec<(f64, f64)> = if let Some(vs) = s["values"].as_array() {
                vs.iter()
                    .map(|p| {
                        (
                            p[0].as_f64().unwrap(),
                            p[1].as_str().unwrap().parse().unwrap(),
                        )
                    })
                    .collect()
            } else {
                let p = &s["value"];
                vec![(
                    p[0].as_f64().unwrap(),
                    p[1].as_str().unwrap().parse().unwrap(),
                )]
            };
            (s["metric"].clone(), pts)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_runs_against_a_real_prometheus_scraping_the_demo() {
    let demo = start_demo();
    let prom = prometheus_for(&demo.addr).await;
    let base = prom.url.clone();

    // Rates and 1-minute burn windows need history: wait until Prometheus holds 15 scrapes of
    // every account (and so 15 rule evaluations).
    let ready = api_url(
        &base,
        "/api/v1/query",
        &[(
            "query",
            "min(count_over_time(creditwatch_up[1m])) >= 15".into(),
        )],
    );
    eventually(
        Duration::from_secs(90),
        || format!("15 scrapes of the demo\n{}", prom.log()),
        || async {
            (get_json(&ready).await["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty()))
            .then_some(())
        },
    )
    .await;

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        .floor();
    let step = 15.0;
    let mut report: Vec<(String, String, Result<usize, String>)> = Vec::new();
    let mut projection: Option<Series> = None;
    let mut resets: Option<Series> = None;
    for d in dashboards() {
        let (mut values, var_results) = resolve(&base, &d, now).await;
        for (what, r) in var_results {
            report.push((d.file.clone(), what, r));
        }
        // A dashboard whose range reaches into the future (Pool detail) is queried an hour ahead.
        let future = d.json["time"]["to"]
            .as_str()
            .is_some_and(|t| t.starts_with("now+"));
        for q in queries(&d) {
            let start = now - 180.0;
            let end = if future && !q.past_only {
                now + 3600.0
            } else {
                now
            };
            let interval = q
                .min_interval
                .as_deref()
                .map(|i| humantime::parse_duration(i).unwrap().as_secs_f64())
                .unwrap_or(0.0)
                .max(step);
            // Grafana's defaults with a 15s data source scrape interval.
            values.insert("__interval".into(), format!("{interval}s"));
            values.insert("__rate_interval".into(), "1m".into());
            values.insert("__range".into(), format!("{}s", end - start));
            let expr = expand(&q.expr, &values);
            let url = if q.instant {
                api_url(
                    &base,
                    "/api/v1/query",
                    &[("query", expr.clone()), ("time", format!("{now}"))],
                )
            } else {
                api_url(
                    &base,
                    "/api/v1/query_range",
                    &[
                        ("query", expr.clone()),
                        ("start", format!("{start}")),
                        ("end", format!("{end}")),
                        ("step", format!("{step}")),
                    ],
                )
            };
            let body = api(&url).await;
            let result = if body["status"] == "success" {
                let s = series_of(&body);
                if q.what.starts_with("Remaining, and projected") && q.ref_id == "C" {
                    projection = Some(s.clone());
                }
                if q.what == "annotation Resets" {
                    resets = Some(s.clone());
                }
                Ok(s.len())
            } else {
                Err(format!("{}: {}", body["errorType"], body["error"]))
            };
            report.push((d.file.clone(), format!("{} [{}]", q.what, q.ref_id), result));
        }
    }

    let total = report.len();
    let errors: Vec<_> = report.iter().filter(|(_, _, r)| r.is_err()).collect();
    let empty: Vec<_> = report.iter().filter(|(_, _, r)| r == &Ok(0)).collect();
    let summary: String = report
        .iter()
        .map(|(f, w, r)| {
            format!(
                "  {f}: {w}: {}\n",
                match r {
                    Ok(0) => "NO DATA".to_string(),
                    Ok(n) => format!("{n} series"),
                    Err(e) => format!("ERROR {e}"),
                }
            )
        })
        .collect();
    eprintln!("{total} queries, {} without data:\n{summary}", empty.len());
    assert!(
        errors.is_empty(),
        "queries Prometheus rejected:\n{errors:#?}"
    );
    let with_data = total - empty.len();
    assert!(
        with_data * 10 >= total * 9,
        "only {with_data} of {total} queries returned data:\n{summary}"
    );

    // The projection is drawn ahead of now, falls toward the reset, and stops there.
    let projection = projection.expect("the projection query ran");
    let resets = resets.expect("the reset annotation ran");
    let reset_ms: BTreeMap<String, f64> = resets
        .iter()
        .map(|(m, pts)| {
            (
                format!("{}/{}/{}", m["account"], m["pool"], m["key"]),
                pts.last().unwrap().1,
            )
        })
        .collect();
    assert!(!projection.is_empty());
    for (m, pts) in &projection {
        let id = format!("{}/{}/{}", m["account"], m["pool"], m["key"]);
        let reset = reset_ms[&id] / 1000.0;
        assert!(reset > now, "{id}: reset {reset} is not ahead");
        assert!(
            pts.iter().all(|(t, _)| *t > now && *t < reset),
            "{id}: projection outside (now, reset): {pts:?}"
        );
        assert!(
            pts.last().unwrap().0 >= now + 3000.0,
            "{id}: projection does not reach ahead: {pts:?}"
        );
        assert!(
            pts.windows(2).all(|w| w[1].1 <= w[0].1 + 1e-9),
            "{id}: projection rises: {pts:?}"
        );
    }
    drop(prom);
    drop(demo);
}

#[test]
fn provisioning_examples_are_well_formed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/provisioning");
    let read = |p: &str| -> serde_yaml_ng::Value {
        serde_yaml_ng::from_str(&std::fs::read_to_string(root.join(p)).unwrap())
            .unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    let ds = read("datasources/creditwatch.yml");
    assert_eq!(ds["apiVersion"].as_i64(), Some(1));
    let d = &ds["datasources"][0];
    assert_eq!(d["type"].as_str(), Some("prometheus"));
    assert!(d["url"].as_str().is_some_and(|u| u.starts_with("http")));
    let dash = read("dashboards/creditwatch.yml");
    assert_eq!(dash["apiVersion"].as_i64(), Some(1));
    let p = &dash["providers"][0];
    assert_eq!(p["type"].as_str(), Some("file"));
    assert!(
        p["options"]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with('/'))
    );
}
