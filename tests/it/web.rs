//! The protected web endpoints: HTTPS with a real TLS client and a real Prometheus, basic auth and bearer tokens right and wrong, credentials and certificates replaced while running.

use crate::external::{eventually, get_json, prometheus_with};
use crate::support::{TestApp, manual_clock, spawn_in};
use crate::upstream::Upstream;
use base64::Engine as _;
use std::path::Path;
use std::time::Duration;

const PASSWORD: &str = "s3cret-Passw0rd";
const TOKEN: &str = "tok_web_0123456789abcdef";

/// Writes a fresh self-signed certificate for 127.0.0.1 to `tls.crt` / `tls.key` in `dir` (the
/// key first, so a reader never pairs the new certificate with the old key for long) and
/// returns the certificate's PEM.
fn new_cert(dir: &Path) -> String {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let pem = ck.cert.pem();
    std::fs::write(dir.join("tls.key"), ck.signing_key.serialize_pem()).unwrap();
    std::fs::write(dir.join("tls.crt"), &pem).unwrap();
    pem
}

/// A client that trusts only `ca_pem`; a new one per call, so no connection is reused.
fn client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap()
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// A daemon on all interfaces with TLS, one basic-auth user and a bearer token.
async fn protected(up: &Upstream) -> (TestApp, String) {
    let dir = tempfile::tempdir().unwrap();
    let pem = new_cert(dir.path());
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    let cfg = format!(
        r#"listen = "0.0.0.0:0"
state_path = "{{dir}}/s.db"
[web]
tls_cert_file = "tls.crt"
tls_key_file = "tls.key"
bearer_token_file = "token"
[web.basic_auth_users]
prometheus = "{hash}"

[[account]]
name = "a"
provider = "fluximage"
api_key = "k"
base_url = "{}"
billing_anchor = "2026-01-15"
interval = "1m"
"#,
        up.base_url("a")
    );
    let app = spawn_in(dir, &cfg, manual_clock()).await;
    (app, pem)
}

fn https(app: &TestApp, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", app.running.addr.port())
}

#[tokio::test]
async fn https_with_basic_auth_or_a_bearer_token_protects_everything_but_the_probes() {
    let up = Upstream::start().await;
    let (app, pem) = protected(&up).await;
    app.wait_polls("a", 1).await;
    let c = client(&pem);
    let get = |path: &str, auth: Option<String>| {
        let mut r = c.get(https(&app, path));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };

    let r = get("/metrics", None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Basic realm=\"creditwatch\", charset=\"UTF-8\""
    );
    for wrong in [
        basic("prometheus", "wrong"),
        basic("prometheus", ""),
        basic("eve", PASSWORD),
        "Bearer tok_web_0123456789abcde".into(),
        "Bearer".into(),
        format!("Basic {PASSWORD}"),
        TOKEN.into(),
    ] {
        let r = get("/metrics", Some(wrong.clone())).await.unwrap();
        assert_eq!(r.status(), 401, "{wrong}");
    }
    for right in [basic("prometheus", PASSWORD), format!("Bearer {TOKEN}")] {
        let r = get("/metrics", Some(right.clone())).await.unwrap();
        assert_eq!(r.status(), 200, "{right}");
        let body = r.text().await.unwrap();
        assert!(
            body.contains("creditwatch_up{provider=\"fluximage\",account=\"a\"} 1"),
            "{body}"
        );
    }
    // Every endpoint but the probes asks for credentials.
    for path in ["/", "/runbook", "/metrics"] {
        assert_eq!(get(path, None).await.unwrap().status(), 401, "{path}");
        let r = get(path, Some(basic("prometheus", PASSWORD)))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    assert_eq!(get("/-/healthy", None).await.unwrap().status(), 200);
    let r = get("/-/ready", None).await.unwrap();
    assert_eq!(r.status(), 200);
    let reload = |auth: Option<String>| {
        let mut r = c.post(https(&app, "/-/reload"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    assert_eq!(reload(None).await.unwrap().status(), 401);
    // On 0.0.0.0, reload is on by default because the endpoints require credentials.
    assert_eq!(
        reload(Some(format!("Bearer {TOKEN}")))
            .await
            .unwrap()
            .status(),
        200
    );

    // Plain HTTP and a client that does not trust the certificate get nothing.
    let plain = reqwest::get(format!(
        "http://127.0.0.1:{}/metrics",
        app.running.addr.port()
    ))
    .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let r = client(&other.cert.pem())
        .get(https(&app, "/-/healthy"))
        .send()
        .await;
    assert!(r.is_err(), "an untrusted certificate was accepted");
    app.stop().await;
}

#[tokio::test]
async fn new_credentials_take_effect_on_reload() {
    let up = Upstream::start().await;
    let (app, pem) = protected(&up).await;
    let c = client(&pem);
    let status = |auth: String| {
        let req = c.get(https(&app, "/metrics")).header("authorization", auth);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(basic("prometheus", PASSWORD)).await, 200);

    let text = std::fs::read_to_string(&app.config_path).unwrap();
    let old_hash = text
        .lines()
        .find_map(|l| l.strip_prefix("prometheus = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    let new_hash = bcrypt::hash("n3w-password", 4).unwrap();
    std::fs::write(&app.config_path, text.replace(&old_hash, &new_hash)).unwrap();
    std::fs::write(
        app.dir.path().join("token"),
        "tok_rotated_fedcba9876543210\n",
    )
    .unwrap();
    let r = c
        .post(https(&app, "/-/reload"))
        .header("authorization", basic("prometheus", PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    assert_eq!(status(basic("prometheus", PASSWORD)).await, 401);
    assert_eq!(status(basic("prometheus", "n3w-password")).await, 200);
    assert_eq!(status(format!("Bearer {TOKEN}")).await, 401);
    assert_eq!(
        status("Bearer tok_rotated_fedcba9876543210".into()).await,
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn the_certificate_is_reloaded_when_its_files_change() {
    let up = Upstream::start().await;
    let (app, first) = protected(&up).await;
    let auth = format!("Bearer {TOKEN}");
    let works = |pem: String| {
        let req = client(&pem)
            .get(https(&app, "/metrics"))
            .header("authorization", auth.clone());
        async move { req.send().await.map(|r| r.status().as_u16()).ok() == Some(200) }
    };
    assert!(works(first.clone()).await);

    // Renewed in place: the next handshake serves the new certificate.
    let second = new_cert(app.dir.path());
    assert!(
        works(second.clone()).await,
        "the renewed certificate is served"
    );
    assert!(!works(first.clone()).await, "the old certificate is gone");

    // A broken file keeps the last good certificate in service.
    std::fs::write(
        app.dir.path().join("tls.crt"),
        "-----BEGIN CERTIFICATE-----\ngarbage\n",
    )
    .unwrap();
    assert!(
        works(second.clone()).await,
        "a broken file keeps the last good certificate"
    );

    // A certificate whose key has not been written yet: still the last good pair, then the
    // new pair once the key follows.
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let third = ck.cert.pem();
    std::fs::write(app.dir.path().join("tls.crt"), &third).unwrap();
    assert!(works(second.clone()).await, "a mismatched pair is not used");
    std::fs::write(
        app.dir.path().join("tls.key"),
        ck.signing_key.serialize_pem(),
    )
    .unwrap();
    assert!(
        works(third).await,
        "the pair is used once both files are written"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_over_https_with_basic_auth() {
    let up = Upstream::start().await;
    let (app, pem) = protected(&up).await;
    app.wait_polls("a", 1).await;
    let target = format!("127.0.0.1:{}", app.running.addr.port());
    let job = |name: &str, password: &str| {
        format!(
            "  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {{dir}}/ca.pem\n    basic_auth:\n      username: prometheus\n      password: {password}\n    static_configs:\n      - targets: [\"{target}\"]\n"
        )
    };
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n{}{}",
        job("right", PASSWORD),
        job("wrong", "guess")
    );
    let prom = prometheus_with(&config, &[("ca.pem", pem)]).await;
    let targets = format!("{}/api/v1/targets", prom.url);
    let health = eventually(
        Duration::from_secs(30),
        || format!("both targets scraped; log:\n{}", prom.log()),
        || async {
            let t = get_json(&targets).await;
            let active = t["data"]["activeTargets"].as_array()?.clone();
            let of = |job: &str| {
                active.iter().find(|a| a["labels"]["job"] == job).map(|a| {
                    (
                        a["health"].as_str().unwrap_or("").to_string(),
                        a["lastError"].as_str().unwrap_or("").to_string(),
                    )
                })
            };
            let (right, wrong) = (of("right")?, of("wrong")?);
            (right.0 != "unknown" && wrong.0 != "unknown").then_some((right, wrong))
        },
    )
    .await;
    assert_eq!(health.0.0, "up", "{:?}", health.0);
    assert_eq!(health.1.0, "down");
    assert!(health.1.1.contains("401"), "{:?}", health.1);
    let q = get_json(&format!(
        "{}/api/v1/query?query=creditwatch_up%7Bjob%3D%22right%22%7D",
        prom.url
    ))
    .await;
    assert_eq!(q["data"]["result"][0]["value"][1], "1", "{q}");
    app.stop().await;
}
