//! The status page at `/`, loaded by real headless Chromium with JavaScript off: cards, order, charts, escaping, no external assets.

use crate::browser::Browser;
use crate::support::{fixed_now, manual_clock, spawn};
use creditwatch::clock::Clock;
use creditwatch::demo::fluximage::{Params, Simulator};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Every card's opening tag, in page order.
fn cards(dom: &str) -> Vec<&str> {
    dom.match_indices("<article ")
        .map(|(i, _)| {
            let end = dom[i..].find('>').unwrap();
            &dom[i..i + end]
        })
        .collect()
}

/// The text of the card with `needle` in its opening tag, up to its closing tag.
fn card<'a>(dom: &'a str, needle: &str) -> &'a str {
    let start = dom
        .match_indices("<article ")
        .map(|(i, _)| i)
        .find(|i| dom[*i..].split('>').next().unwrap().contains(needle))
        .unwrap_or_else(|| panic!("no card with {needle}"));
    let end = dom[start..].find("</article>").unwrap();
    &dom[start..start + end]
}

fn attr<'a>(tag: &'a str, name: &str) -> &'a str {
    let key = format!(" {name}=\"");
    let i = tag.find(&key).unwrap_or_else(|| panic!("{name} in {tag}")) + key.len();
    &tag[i..i + tag[i..].find('"').unwrap()]
}

#[tokio::test]
async fn status_page_in_headless_chromium() {
    let clock = manual_clock();
    let anchor = chrono::NaiveDate::from_ymd_opt(2026, 11, 15).unwrap();
    let starter = |key: &str, ia_monthly: f64, ai_per_second: f64| Params {
        key: key.into(),
        plan: "starter".into(),
        billing_anchor: anchor,
        compressor_used: 0.0,
        compressor_limit: 5000.0,
        compress_per_second: 0.0,
        ia_monthly,
        ia_used: 0.0,
        ia_topup: 0.0,
        ai_per_second,
        topup_every: None,
        topup_amount: 0.0,
    };
    let mut idle = Params::documented("kc", anchor);
    idle.compress_per_second = 1.0;
    let sim = Simulator::new(
        clock.clone(),
        vec![
            starter("ka", 1000.0, 0.5),
            starter("kb", 10_000.0, 0.5),
            idle,
        ],
    );
    let server = sim.serve().await.unwrap();
    let evil = r#"alpha <script>alert("x")</script>"#;
    let account = |name: &str, key: &str, url: &str| {
        format!(
            "[[account]]\nname = '{name}'\nprovider = \"fluximage\"\napi_key = \"{key}\"\n\
             base_url = \"{url}\"\nbilling_anchor = \"2026-11-15\"\ninterval = \"1s\"\ntimeout = \"1s\"\n"
        )
    };
    let cfg = format!(
        "state_path = \"{{dir}}/state.db\"\n[defaults]\nburn_windows = [\"1h\"]\nforecast_window = \"1h\"\n{}{}{}{}",
        account(evil, "ka", &server.url()),
        account("beta & co", "kb", &server.url()),
        account("gamma", "kc", &server.url()),
        // Nothing listens on the discard port: this account is down from its first poll.
        account("delta-down", "kd", "http://127.0.0.1:9"),
    );
    let app = spawn(&cfg, clock.clone()).await;
    app.running.wait_ready().await;
    // Ten minutes, then three five-minute steps, each observed by a poll of every account.
    for step in [600, 300, 300, 300] {
        clock.advance(Duration::from_secs(step));
        let t = clock.now();
        app.running
            .state
            .wait_until(|s| {
                [evil, "beta & co", "gamma"]
                    .iter()
                    .all(|a| s.account(a).and_then(|a| a.last_success) == Some(t))
            })
            .await;
    }
    let now = fixed_now() + chrono::Duration::seconds(1500);
    assert_eq!(clock.now(), now);

    let r = reqwest::get(app.url("/")).await.unwrap();
    assert_eq!(
        r.headers()["content-security-policy"],
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    // It reloads itself at the shortest poll interval (1s here), no faster than every 5s.
    let served = r.text().await.unwrap();
    assert!(served.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
    assert!(served.contains("refreshes every 5s"));
    // The browser gets a page that holds still, so a reload never swaps the DOM mid-check.
    let url = app.url("/?refresh=0");

    let browser = Browser::start(false, 1280, 1200).await;
    // The profile really runs no scripts: this page would retitle itself if it could.
    browser
        .goto("data:text/html,<title>off</title><script>document.title='on'</script>")
        .await;
    assert_eq!(browser.title().await, "off", "JavaScript is not off");
    browser.goto(&url).await;
    assert_eq!(browser.title().await, "creditwatch status");
    let dom = browser.source().await;

    // One card per pool, soonest exhaustion first, then the rest by account and pool.
    let order: Vec<(String, String)> = cards(&dom)
        .iter()
        .map(|c| {
            (
                attr(c, "data-account").to_string(),
                attr(c, "data-pool").to_string(),
            )
        })
        .collect();
    let evil_attr = evil.replace('"', "&quot;");
    let evil_attr = evil_attr.as_str();
    let expect = |a: &str, p: &str| (a.to_string(), p.to_string());
    // Browsers serialize `<` and `>` in attribute values either raw or escaped; accept both.
    let order: Vec<(String, String)> = order
        .into_iter()
        .map(|(a, p)| (a.replace("&lt;", "<").replace("&gt;", ">"), p))
        .collect();
    assert_eq!(
        order,
        vec![
            // 1000 − 0.5/s × 1500 s = 250 left: runs out 500 s from now.
            expect(evil_attr, "ai"),
            // 10000 − 750 = 9250 left: 18500 s from now.
            expect("beta &amp; co", "ai"),
            expect(evil_attr, "compression"),
            expect("beta &amp; co", "compression"),
            expect("gamma", "ai"),
            expect("gamma", "compression"),
        ],
        "cards in the wrong order:\n{dom}"
    );
    let first = card(&dom, "data-pool=\"ai\"");
    assert_eq!(
        attr(first, "data-exhaustion"),
        (now.timestamp() + 500).to_string()
    );
    assert!(first.contains("class=\"card bad\""), "{first}");
    for text in [
        "Runs out before reset",
        "<dt>Remaining</dt><dd>250 credits <small>of 1,000 credits (25%)</small></dd>",
        "<dt>Burn</dt><dd>43,200 credits/day <small>(1h window)</small></dd>",
        "<dt>Runs out</dt><dd class=\"runs-out\">2026-11-21 12:33 UTC <small>(in 8m)</small></dd>",
        // 250 − 0.5 × (Dec 15 00:00 − Nov 21 12:25 = 2,028,900 s) = −1,014,200.
        "2026-12-15 00:00 UTC <small>(in 23d 11h)</small><br><small>1,014,200 credits short at reset</small>",
    ] {
        assert!(first.contains(text), "missing {text:?} in\n{first}");
    }

    // Account names are text, never markup: there are no scripts at all, nor handlers.
    assert!(
        dom.contains(
            r#"<span class="account">alpha &lt;script&gt;alert("x")&lt;/script&gt;</span>"#
        ),
        "escaped account name missing:\n{dom}"
    );
    assert!(!dom.contains("<script"), "a script element got in:\n{dom}");
    assert!(!dom.contains(" onload=") && !dom.contains(" onclick="));
    assert!(dom.contains("beta &amp; co"));

    // Every pool with a remaining has a chart with history, projection and the reset marked;
    // the unlimited pool has none.
    for c in cards(&dom) {
        let body = card(&dom, c);
        let unlimited = attr(c, "data-account") == "gamma" && attr(c, "data-pool") == "compression";
        assert_eq!(
            body.contains("<svg"),
            !unlimited,
            "chart presence in {body}"
        );
        if !unlimited {
            for part in [
                "class=\"history\"",
                "class=\"projection\"",
                "class=\"reset\"",
            ] {
                assert!(body.contains(part), "{part} missing in {body}");
            }
        }
    }
    // The first card's projection reaches zero before the reset, and says so on the chart.
    assert!(first.contains("<circle class=\"exhausted\""), "{first}");

    // Self-contained: nothing is fetched from anywhere, and it refreshes itself.
    for banned in [
        "src=", "<link", "<img", "<iframe", "@import", "url(", "http://", "https://", "//",
    ] {
        let hits: Vec<_> = dom.match_indices(banned).take(3).collect();
        // `//` appears only in URLs (there are none); check for it outside of the SVG text.
        assert!(hits.is_empty(), "{banned} found in the page: {hits:?}");
    }
    assert!(
        !dom.contains("http-equiv"),
        "?refresh=0 turns reloading off"
    );
    assert!(dom.contains("auto-refresh off"));

    // The down account is listed, without cards.
    assert!(dom.contains("<tr data-account=\"delta-down\">"));
    assert!(dom.contains("<td class=\"down\">down</td>"));
    assert!(!dom.contains("data-account=\"delta-down\" data-pool"));

    // Laid out as read: cards visible, in rows, in page order; every chart drawn at a usable size.
    let els = browser.find_all("article.card").await;
    assert_eq!(els.len(), 6);
    let mut rects = Vec::new();
    for e in &els {
        let r = browser.rect(e).await;
        assert!(r.width > 300.0 && r.height > 100.0, "card too small: {r:?}");
        rects.push(r);
    }
    for pair in rects.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        assert!(
            b.y > a.y + 1.0 || (b.y - a.y).abs() < 1.0 && b.x > a.x,
            "cards out of reading order: {a:?} then {b:?}"
        );
    }
    let charts = browser.find_all("article.card svg.chart").await;
    assert_eq!(charts.len(), 5);
    for c in &charts {
        let r = browser.rect(c).await;
        assert!(r.width > 250.0 && r.height > 60.0, "chart too small: {r:?}");
    }
    assert_eq!(
        browser.attr(&els[0], "data-pool").await.as_deref(),
        Some("ai")
    );

    // A screenshot for people to look at; the test checks it is a real, non-trivial PNG.
    let png = browser.screenshot().await;
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    assert!(
        png.len() > 20_000,
        "screenshot suspiciously small: {} bytes",
        png.len()
    );
    std::fs::write(screenshot_path(), &png).unwrap();
    browser.quit().await;
    app.stop().await;
}

/// Where the screenshot goes: beside the build output, so it survives the test for inspection.
fn screenshot_path() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(dir).unwrap();
    dir.join("status-page.png")
}
