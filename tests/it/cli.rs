//! The `creditwatch` binary: --help, check, once, the shipped example config, and SIGTERM.

use crate::fluximage::DOCUMENTED;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wiremock::matchers::path;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_creditwatch"));
    c.env("RUST_LOG", "warn");
    c
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn help_lists_every_command() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for cmd in ["run", "check", "once", "demo"] {
        assert!(
            text.contains(&format!("  {cmd} ")),
            "--help lacks {cmd}:\n{text}"
        );
    }
    let out = bin().args(["run", "--help"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("--config <FILE>") && text.contains("--listen <ADDR>"),
        "{text}"
    );
}

#[test]
fn check_accepts_a_valid_config() {
    let dir = tempfile::tempdir().unwrap();
    let key = write(dir.path(), "key", "flx_live_fromfile\n");
    let cfg = write(
        dir.path(),
        "ok.toml",
        &format!(
            "[[account]]\nname = \"a\"\nprovider = \"fluximage\"\napi_key_file = \"{}\"\nbilling_anchor = \"2026-01-15\"\n",
            key.display()
        ),
    );
    let out = bin().args(["check", "-c"]).arg(&cfg).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}: OK (1 account(s))\n", cfg.display())
    );
}

#[test]
fn check_reports_every_problem_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "bad.toml",
        r#"listen = "nowhere"
[defaults]
interval = "5m"
colour = "blue"

[[account]]
name = "a"
provider = "fluximage"
api_key_env = "CREDITWATCH_TEST_UNSET_VAR"
billing_anchor = "2026-01-15"
interval = "100ms"
timeout = "50ms"

[[account]]
name = "a"
provider = "fluximage"
api_key = "flx_live_shouldnotprint"
billing_anchor = "2026-01-15"
per_key = true
"#,
    );
    let out = bin()
        .args(["check", "-c"])
        .arg(&cfg)
        .env_remove("CREDITWATCH_TEST_UNSET_VAR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    let f = cfg.display().to_string();
    let expected = [
        format!("{f}:4:1: unknown key `defaults.colour`"),
        format!(
            "{f}:1:10: invalid listen address \"nowhere\": expected IP:PORT such as 127.0.0.1:9477 or :9477"
        ),
        format!("{f}: account \"a\": interval 100ms is shorter than the minimum of 1s"),
        format!("{f}: account \"a\": environment variable CREDITWATCH_TEST_UNSET_VAR is not set"),
        format!("{f}:19:1: unknown key `per_key` for provider fluximage"),
        format!("{f}: account \"a\": duplicate account name: each account needs a unique name"),
    ];
    for line in &expected {
        assert!(
            err.lines().any(|l| l == line),
            "missing {line:?} in:\n{err}"
        );
    }
    assert_eq!(
        err.lines().count(),
        expected.len(),
        "unexpected extra output:\n{err}"
    );
    assert!(!err.contains("shouldnotprint"));
}

#[test]
fn check_reports_provider_key_problems() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "providers.toml",
        r#"[[account]]
name = "design"
provider = "floow"
api_key = "fl_shouldnotprint"
days = 0
monthly_allowance = -5
dayz = 3

[[account]]
name = "router"
provider = "imagerouter"
api_key = "ir_shouldnotprint"
per_key = "yes"

[[account]]
name = "json"
provider = "http_json"
url = "ftp://example.com/x"
unit = "usd"
pool = "p"
used = "data/usage"
reset = "monthly"
headers = { X-Key = { env = "CREDITWATCH_TEST_UNSET_HEADER", prefix = "Key " } }

[[account]]
name = "json2"
provider = "http_json"
url = "https://example.com/x"
unit = "eur"
pool = "p"
used = "/x"
"#,
    );
    let out = bin()
        .args(["check", "-c"])
        .arg(&cfg)
        .env_remove("CREDITWATCH_TEST_UNSET_HEADER")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    let f = cfg.display().to_string();
    let expected = [
        format!("{f}:7:1: unknown key `dayz` for provider floow"),
        format!(
            "{f}: account \"design\": floow reports daily consumption only; used is counted from the billing period start: set billing_anchor = \"YYYY-MM-DD\" (the day the subscription renews)"
        ),
        format!(
            "{f}: account \"design\": days = 0 is outside 1..90, the lookback the Floow usage API accepts"
        ),
        format!(
            "{f}: account \"design\": monthly_allowance = -5 must be a positive number of credits"
        ),
        format!("{f}:13:11: invalid type: string \"yes\", expected a boolean"),
        format!(
            "{f}: account \"json\": headers.X-Key: environment variable CREDITWATCH_TEST_UNSET_HEADER is not set"
        ),
        format!("{f}: account \"json\": url must be http or https, not \"ftp\""),
        format!(
            "{f}: account \"json\": used = \"data/usage\" is not a JSON pointer (RFC 6901): it must start with \"/\""
        ),
        format!(
            "{f}: account \"json\": reset = \"monthly\" needs billing_anchor = \"YYYY-MM-DD\", a day the period started"
        ),
        format!("{f}:29:8: unknown variant `eur`, expected `credits` or `usd`"),
    ];
    assert_eq!(err.lines().collect::<Vec<_>>(), expected, "{err}");
    assert!(!err.contains("shouldnotprint"));
}

#[test]
fn check_of_a_missing_file() {
    let out = bin()
        .args(["check", "-c", "/nonexistent/creditwatch.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.starts_with("/nonexistent/creditwatch.toml: cannot read config file:"),
        "{err}"
    );
}

#[test]
fn the_shipped_example_config_is_valid() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    let mut cmd = bin();
    cmd.args(["check", "-c"]).arg(&example);
    // Every variable the example reads from the environment (`api_key_env = "X"`, and
    // `env = "X"` in http_json headers) gets a dummy value.
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for marker in ["api_key_env = \"", "env = \""] {
            for (i, _) in line.match_indices(marker) {
                let var = line[i + marker.len()..].split('"').next().unwrap();
                cmd.env(var, "dummy-key");
            }
        }
    }
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn once_prints_the_exposition_and_fails_when_an_account_fails() {
    let rt = runtime();
    let (good, bad) = rt.block_on(async {
        let good = MockServer::start().await;
        Mock::given(path("/api/usage"))
            .respond_with(ResponseTemplate::new(200).set_body_string(DOCUMENTED))
            .mount(&good)
            .await;
        let bad = MockServer::start().await;
        Mock::given(path("/api/usage"))
            .respond_with(ResponseTemplate::new(401))
            .mount(&bad)
            .await;
        (good, bad)
    });
    let dir = tempfile::tempdir().unwrap();
    let acc = |name: &str, url: &str| {
        format!(
            "[[account]]\nname = \"{name}\"\nprovider = \"fluximage\"\napi_key_env = \"FLUX_KEY\"\nbase_url = \"{url}\"\nbilling_anchor = \"2026-01-15\"\n"
        )
    };
    let ok = write(dir.path(), "ok.toml", &acc("good", &good.uri()));
    let out = bin()
        .args(["once", "-c"])
        .arg(&ok)
        .env("FLUX_KEY", "k")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("creditwatch_remaining_credits{provider=\"fluximage\",account=\"good\",pool=\"ai\",key=\"\"} 1080\n"), "{text}");
    assert!(
        !dir.path().join("creditwatch.db").exists(),
        "once must not create a store"
    );

    let both = write(
        dir.path(),
        "both.toml",
        &format!("{}{}", acc("good", &good.uri()), acc("bad", &bad.uri())),
    );
    let out = bin()
        .args(["once", "-c"])
        .arg(&both)
        .env("FLUX_KEY", "k")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("creditwatch_up{provider=\"fluximage\",account=\"bad\"} 0"));
    assert!(text.contains("creditwatch_up{provider=\"fluximage\",account=\"good\"} 1"));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("1 account(s) failed: bad")
    );
    drop(rt);
}

#[test]
fn sigterm_drains_and_exits_zero_within_five_seconds() {
    let rt = runtime();
    let up = rt.block_on(async {
        let s = MockServer::start().await;
        Mock::given(path("/api/usage"))
            .respond_with(ResponseTemplate::new(200).set_body_string(DOCUMENTED))
            .mount(&s)
            .await;
        s
    });
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = write(
        dir.path(),
        "c.toml",
        &format!(
            "listen = \"127.0.0.1:{port}\"\nstate_path = \"s.db\"\n[[account]]\nname = \"a\"\nprovider = \"fluximage\"\napi_key = \"k\"\nbase_url = \"{}\"\nbilling_anchor = \"2026-01-15\"\ninterval = \"1s\"\ntimeout = \"1s\"\n",
            up.uri()
        ),
    );
    let mut child = bin()
        .args(["run", "-c"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = rt.block_on(async {
        let url = format!("http://127.0.0.1:{port}/-/ready");
        for _ in 0..200 {
            if let Ok(r) = reqwest::get(&url).await
                && r.status() == 200
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    });
    assert!(ready, "daemon never became ready");
    let started = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still running 5s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    assert!(
        dir.path().join("s.db").exists(),
        "store created next to the config"
    );
    drop(rt);
}
