//! Secrets never leak: the real binary at RUST_LOG=trace, polling with keys from a file, the environment, the config and a header, failing, echoing keys back, proxying, reloading; then logs, /metrics, the status page, reload answers and `check` are searched for every key.

use crate::reload::{Daemon, free_port};
use crate::support::value;
use crate::upstream::{Reply, Upstream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const FILE_KEY: &str = "flx_live_FILEKEY_aaaa1111";
const ROTATED_KEY: &str = "flx_live_ROTATED_bbbb2222";
const ENV_KEY: &str = "flx_live_ENVKEY_cccc3333";
const LITERAL_KEY: &str = "flx_live_LITERAL_dddd4444";
const ECHOED_KEY: &str = "ir_ECHOKEY_eeee5555";
const HEADER_KEY: &str = "sk-or-v1-HEADERKEY_ffff6666";
const CLIENT_KEY: &str = "flux_CLIENTKEY_gggg7777";
const INVALID_CONFIG_KEY: &str = "flx_live_INVALIDCFG_hhhh8888";
const ALL: [&str; 8] = [
    FILE_KEY,
    ROTATED_KEY,
    ENV_KEY,
    LITERAL_KEY,
    ECHOED_KEY,
    HEADER_KEY,
    CLIENT_KEY,
    INVALID_CONFIG_KEY,
];

fn assert_no_secret(what: &str, text: &str) {
    for k in ALL {
        // The distinctive tail of each key too, so a key cut short is caught.
        let tail = k.rsplit('_').next().unwrap();
        for needle in [k, tail] {
            assert!(
                !text.contains(needle),
                "{what} contains a secret ({needle}):\n{}",
                text.lines()
                    .filter(|l| l.contains(needle))
                    .take(5)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

fn write_key(path: &Path, key: &str, mode: u32) {
    std::fs::write(path, format!("{key}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn check(cfg: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_creditwatch"))
        .args(["check", "-c"])
        .arg(cfg)
        .env("CW_SECRET_TEST_ENV", ENV_KEY)
        .env("CW_SECRET_TEST_HEADER", HEADER_KEY)
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_appears_in_logs_metrics_pages_errors_or_check_output() {
    let up = Upstream::start().await;
    up.require_key("file-key", FILE_KEY);
    up.always("env-key", Reply::Status(401));
    up.always("literal", Reply::Status(503));
    up.always(
        "echo",
        Reply::Error(
            401,
            format!(
                "{{\"error\":{{\"message\":\"Invalid API key {ECHOED_KEY}\",\"type\":\"auth\"}}}}"
            ),
        ),
    );
    up.require_key("header", HEADER_KEY);
    up.always(
        "header",
        Reply::Body(
            r#"{"data":{"label":"x","limit":100,"limit_remaining":74.5,"usage":25.5}}"#.into(),
        ),
    );
    let (flux, flux_server) = crate::fluxrouter::Upstream::start().await;

    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("flux.key");
    write_key(&key_file, FILE_KEY, 0o600);
    let cfg = dir.path().join("c.toml");
    let proxy_port = free_port();
    let text = format!(
        r#"listen = "127.0.0.1:{port}"
state_path = "s.db"
[defaults]
interval = "1s"
timeout = "1s"

[[account]]
name = "file-key"
provider = "fluximage"
api_key_file = "{key_file}"
base_url = "{file_url}"
billing_anchor = "2026-01-15"

[[account]]
name = "env-key"
provider = "fluximage"
api_key_env = "CW_SECRET_TEST_ENV"
base_url = "{env_url}"
billing_anchor = "2026-01-15"

[[account]]
name = "literal"
provider = "fluximage"
api_key = "{LITERAL_KEY}"
base_url = "{literal_url}"
billing_anchor = "2026-01-15"

[[account]]
name = "echo"
provider = "imagerouter"
api_key = "{ECHOED_KEY}"
base_url = "{echo_url}"

[[account]]
name = "header"
provider = "http_json"
url = "{header_url}/api/v1/key"
unit = "usd"
pool = "key_limit"
remaining = "/data/limit_remaining"
used = "/data/usage"
limit = "/data/limit"
headers = {{ Authorization = {{ env = "CW_SECRET_TEST_HEADER", prefix = "Bearer " }} }}

[[account]]
name = "llm"
provider = "fluxrouter"
proxy_listen = "127.0.0.1:{proxy_port}"
upstream = "{flux_url}"
billing_anchor = "2026-01-15"
included_usd = 1
spend_ceiling_usd = 2
"#,
        port = free_port(),
        key_file = key_file.display(),
        file_url = up.base_url("file-key"),
        env_url = up.base_url("env-key"),
        literal_url = up.base_url("literal"),
        echo_url = up.base_url("echo"),
        header_url = up.base_url("header"),
        flux_url = flux_server.url(),
    );
    std::fs::write(&cfg, &text).unwrap();

    // `check` of a valid config warns about the literal key without printing it.
    let (code, out) = check(&cfg);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("api_key is written in the config file"),
        "{out}"
    );
    assert_no_secret("check output", &out);

    let mut cmd_env = std::collections::HashMap::new();
    cmd_env.insert("CW_SECRET_TEST_ENV", ENV_KEY);
    cmd_env.insert("CW_SECRET_TEST_HEADER", HEADER_KEY);
    let mut d = Daemon::start_with_env(&cfg, "trace", &cmd_env);
    let m = d
        .wait_metrics("every account polled", |m| {
            let up_of = |a: &str| value(m, "creditwatch_up", &[&format!("account=\"{a}\"")]);
            up_of("file-key") == Some(1.0)
                && up_of("header") == Some(1.0)
                && up_of("llm") == Some(1.0)
                && up_of("env-key") == Some(0.0)
                && up_of("literal") == Some(0.0)
                && up_of("echo") == Some(0.0)
        })
        .await;
    assert_eq!(
        value(
            &m,
            "creditwatch_scrape_errors_total",
            &["account=\"echo\"", "reason=\"auth\""]
        )
        .map(|n| n >= 1.0),
        Some(true)
    );

    // A client's own key through the metering proxy.
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{proxy_port}/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("x-test-cost", "0.0125")
        .body("{\"model\":\"flux-lite\",\"messages\":[]}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        flux.last()
            .headers
            .iter()
            .any(|(k, v)| k == "authorization" && v.contains(CLIENT_KEY)),
        "the client's key reached the upstream"
    );

    // Rotate the key file and reload over HTTP.
    up.require_key("file-key", ROTATED_KEY);
    write_key(&key_file, ROTATED_KEY, 0o600);
    let client = reqwest::Client::new();
    let r = client.post(d.url("/-/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    up.wait_for("file-key", |s| s.last_key.as_deref() == Some(ROTATED_KEY))
        .await;

    // An invalid config holding a key: refused over HTTP and on SIGHUP.
    let invalid = format!(
        "{text}\n[[account]]\nname = \"bad\"\nprovider = \"fluximage\"\napi_key = \"{INVALID_CONFIG_KEY}\"\nbilling_anchor = \"2026-01-15\"\ncolour = \"{INVALID_CONFIG_KEY}\"\n"
    );
    std::fs::write(&cfg, &invalid).unwrap();
    let r = client.post(d.url("/-/reload")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    let body = r.text().await.unwrap();
    assert!(body.contains("unknown key `colour`"), "{body}");
    assert_no_secret("reload answer", &body);
    d.signal("HUP");
    d.wait_metrics("the failed reload", |m| {
        value(m, "creditwatch_config_last_reload_successful", &[]) == Some(0.0)
    })
    .await;
    let (code, out) = check(&cfg);
    assert_eq!(code, Some(1));
    assert_no_secret("check output of an invalid config", &out);

    // More failing polls with the keys in use, then everything the daemon shows.
    let before = up.seen("echo").requests.len();
    up.wait_for("echo", |s| s.requests.len() >= before + 2)
        .await;
    for path in ["/metrics", "/", "/-/ready", "/-/healthy"] {
        let page = reqwest::get(d.url(path))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_no_secret(path, &page);
    }
    let page = reqwest::get(d.url("/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("authentication rejected (HTTP 401): Invalid API key ***"),
        "the echoed key is scrubbed from the error shown"
    );
    d.signal("TERM");
    assert_eq!(d.wait_exit(), Some(0));

    let log = d.log();
    assert!(
        log.lines().filter(|l| l.contains(" TRACE ")).count() > 20,
        "trace logging was on:\n{log}"
    );
    assert!(log.contains("Invalid API key ***"), "{log}");
    assert_no_secret("the trace log", &log);
    drop(flux_server);
}

#[test]
fn a_world_readable_key_file_is_warned_about_without_printing_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    write_key(&key, FILE_KEY, 0o644);
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[account]]\nname = \"a\"\nprovider = \"fluximage\"\napi_key_file = \"{}\"\nbilling_anchor = \"2026-01-15\"\n",
            key.display()
        ),
    )
    .unwrap();
    let (code, out) = check(&cfg);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "warning: account \"a\": key file {} is readable by every user; chmod 600 it",
            key.display()
        )),
        "{out}"
    );
    assert_no_secret("check output", &out);
    write_key(&key, FILE_KEY, 0o600);
    let (_, out) = check(&cfg);
    assert!(!out.contains("readable by every user"), "{out}");
}
