//! A minimal WebDriver client for Debian's chromedriver and headless Chromium, enough to load a page with JavaScript off and inspect it.

use base64::Engine as _;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// WebDriver's key for an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// One headless Chromium session driven through chromedriver; both stop when dropped.
pub struct Browser {
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
    base: String,
    http: reqwest::Client,
}

/// An element's position and size in CSS pixels.
#[derive(Debug, Clone, Copy)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
}

impl Browser {
    /// Starts chromedriver on a free port and opens a session. With `javascript` false, the
    /// profile blocks scripts on every page. Panics (never skips) when Chromium is missing.
    pub async fn start(javascript: bool, width: u32, height: u32) -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: install Debian's chromium and chromium-driver (scripts/test does)"
            );
        }
        let mut driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
        // chromedriver picks the port and says which on stdout.
        let port = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("chromedriver output") {
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    return rest.trim_end_matches('.').parse::<u16>().expect("port");
                }
            }
            panic!("chromedriver exited before announcing its port");
        })
        .await
        .expect("chromedriver announced its port within 30s");
        // Keep draining its output so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let profile = tempfile::tempdir().unwrap();
        let mut browser = Browser {
            _driver: driver,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            _profile: profile,
        };
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--hide-scrollbars".into(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let prefs = if javascript {
            json!({})
        } else {
            json!({"profile.managed_default_content_settings.javascript": 2})
        };
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": CHROMIUM, "args": args, "prefs": prefs
        }}}});
        let v = browser.call(reqwest::Method::POST, "/session", caps).await;
        let id = v["sessionId"].as_str().expect("session id").to_string();
        browser.base = format!("{}/session/{id}", browser.base);
        browser
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if !body.is_null() {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let r = req.send().await.expect("chromedriver answers");
        let status = r.status();
        let v: Value =
            serde_json::from_str(&r.text().await.expect("body")).expect("WebDriver JSON");
        assert!(status.is_success(), "WebDriver {path}: {status} {v}");
        v["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", json!({"url": url}))
            .await;
    }

    pub async fn title(&self) -> String {
        let v = self.call(reqwest::Method::GET, "/title", Value::Null).await;
        v.as_str().unwrap_or_default().to_string()
    }

    /// The serialized DOM as the browser holds it.
    pub async fn source(&self) -> String {
        let v = self
            .call(reqwest::Method::GET, "/source", Value::Null)
            .await;
        v.as_str().expect("source").to_string()
    }

    /// Every element matching the CSS selector, in document order.
    pub async fn find_all(&self, css: &str) -> Vec<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/elements",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v.as_array()
            .expect("elements")
            .iter()
            .map(|e| e[ELEMENT].as_str().expect("element id").to_string())
            .collect()
    }

    pub async fn attr(&self, element: &str, name: &str) -> Option<String> {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/element/{element}/attribute/{name}"),
                Value::Null,
            )
            .await;
        v.as_str().map(str::to_string)
    }

    pub async fn rect(&self, element: &str) -> Rect {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/element/{element}/rect"),
                Value::Null,
            )
            .await;
        let f = |k: &str| v[k].as_f64().expect("rect field");
        Rect {
            x: f("x"),
            y: f("y"),
            width: f("width"),
            height: f("height"),
        }
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        let v = self
            .call(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 PNG"))
            .expect("valid base64")
    }

    /// Ends the session, closing Chromium.
    pub async fn quit(self) {
        self.call(reqwest::Method::DELETE, "", Value::Null).await;
    }
}
