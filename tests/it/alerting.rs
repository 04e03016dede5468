//! The built-in alerter end to end: the daemon, driven into exhaustion by the simulator, pages a webhook, Slack and a real Alertmanager; it resolves, and restarts never page again.

use crate::external::alertmanager;
use crate::prometheus::anchor_ten_days_ago;
use crate::support::{spawn_in, value};
use axum::Router;
use axum::extract::{Json, Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use creditwatch::clock::SystemClock;
use creditwatch::demo::SimServer;
use creditwatch::demo::fluximage::{Params, Simulator};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// A fake receiver: records every POST by path; `/broken` answers 500.
#[derive(Clone)]
struct Hook {
    got: Arc<Mutex<Vec<(String, Value)>>>,
    count: watch::Sender<usize>,
}

impl Hook {
    async fn start() -> (Hook, SimServer) {
        let hook = Hook {
            got: Arc::default(),
            count: watch::channel(0).0,
        };
        let router = Router::new()
            .route("/{*path}", post(receive))
            .with_state(hook.clone());
        (hook, SimServer::start(router).await.unwrap())
    }

    fn bodies(&self, path: &str) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// Waits (on each delivery) until `path` has received `n` requests; returns them.
    async fn wait(&self, path: &str, n: usize) -> Vec<Value> {
        let mut rx = self.count.subscribe();
        let within = Duration::from_secs(60);
        let r = tokio::time::timeout(within, async {
            loop {
                let b = self.bodies(path);
                if b.len() >= n {
                    return b;
                }
                rx.changed().await.unwrap();
            }
        })
        .await;
        r.unwrap_or_else(|_| {
            panic!(
                "{path} did not receive {n} notifications within {within:?}: {:#?}",
                self.got.lock().unwrap()
            )
        })
    }
}

async fn receive(
    State(hook): State<Hook>,
    Path(path): Path<String>,
    Json(body): Json<Value>,
) -> StatusCode {
    hook.got.lock().unwrap().push((path.clone(), body));
    hook.count.send_modify(|n| *n += 1);
    if path == "broken" {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

fn alertmanager_config(hook: &str) -> String {
    format!(
        "route:\n  receiver: hook\n  group_by: [alertname]\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\n\
         receivers:\n  - name: hook\n    webhook_configs:\n      - url: {hook}/am\n        send_resolved: true\n"
    )
}

#[tokio::test]
async fn the_daemon_pages_by_itself_resolves_and_never_pages_twice() {
    let (hook, hook_server) = Hook::start().await;
    let am = alertmanager(&alertmanager_config(&hook_server.url())).await;

    // 10 AI credits left, burning 20 a second: empty at once.
    let anchor = anchor_ten_days_ago();
    let mut p = Params::documented("k-short", anchor);
    p.ia_monthly = 1000.0;
    p.ia_used = 990.0;
    p.ia_topup = 0.0;
    p.ai_per_second = 20.0;
    let sim = Simulator::new(Arc::new(SystemClock), vec![p]);
    let sim_server = sim.serve().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let slack = format!("{}/slack", hook_server.url());
    std::fs::write(dir.path().join("slack-url"), &slack).unwrap();
    let config = format!(
        r#"state_path = "{{dir}}/state.db"
[defaults]
interval = "1s"
timeout = "1s"
burn_windows = ["10s"]
forecast_window = "10s"
[[account]]
name = "short"
provider = "fluximage"
api_key = "k-short"
base_url = "{sim}"
billing_anchor = "{anchor}"
[alerting]
evaluation_interval = "1s"
[alerting.rules.CreditsExhausted]
for = "2s"
[[alerting.receiver]]
name = "direct"
type = "webhook"
url = "{hook}/direct"
[[alerting.receiver]]
name = "chat"
type = "slack"
url_file = "slack-url"
[[alerting.receiver]]
name = "am"
type = "alertmanager"
url = "{am}"
[[alerting.receiver]]
name = "broken"
type = "webhook"
url = "{hook}/broken"
"#,
        sim = sim_server.url(),
        hook = hook_server.url(),
        am = am.url,
    );
    let app = spawn_in(dir, &config, Arc::new(SystemClock)).await;
    let addr = app.running.addr;

    // The webhook receiver gets an Alertmanager v4 payload.
    let direct = hook.wait("direct", 1).await;
    let n = &direct[0];
    assert_eq!(n["version"], "4");
    assert_eq!(n["status"], "firing");
    assert_eq!(n["receiver"], "direct");
    assert_eq!(n["groupKey"], "{}:{alertname=\"CreditsExhausted\"}");
    assert_eq!(n["groupLabels"]["alertname"], "CreditsExhausted");
    assert_eq!(n["externalURL"], format!("http://{addr}"));
    assert_eq!(n["commonLabels"]["severity"], "critical");
    let alert = &n["alerts"][0];
    assert_eq!(n["alerts"].as_array().unwrap().len(), 1, "{n}");
    assert_eq!(
        alert["labels"],
        serde_json::json!({"alertname": "CreditsExhausted", "severity": "critical",
            "provider": "fluximage", "account": "short", "pool": "ai"})
    );
    assert_eq!(alert["status"], "firing");
    assert_eq!(alert["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(
        alert["annotations"]["summary"],
        "short: pool ai is exhausted"
    );
    assert!(
        alert["annotations"]["description"]
            .as_str()
            .unwrap()
            .starts_with("fluximage account short, pool ai: 0 left; requests that need it are failing now until it resets on "),
        "{alert}"
    );
    assert_eq!(
        alert["annotations"]["runbook_url"],
        format!("http://{addr}/runbook#creditsexhausted")
    );
    let fingerprint = alert["fingerprint"].as_str().unwrap().to_string();
    assert_eq!(fingerprint.len(), 16);
    let starts_at = alert["startsAt"].as_str().unwrap().to_string();
    chrono::DateTime::parse_from_rfc3339(&starts_at).unwrap();

    // Through the real Alertmanager to its webhook: the same alert, the same fingerprint.
    let via_am = hook.wait("am", 1).await;
    let am_alert = &via_am[0]["alerts"][0];
    assert_eq!(via_am[0]["status"], "firing");
    assert_eq!(am_alert["labels"], alert["labels"]);
    assert_eq!(am_alert["annotations"], alert["annotations"]);
    assert_eq!(
        am_alert["fingerprint"],
        fingerprint.as_str(),
        "Alertmanager's fingerprint"
    );

    // Slack: a message with text and a red attachment.
    let chat = hook.wait("slack", 1).await;
    assert_eq!(chat[0]["text"], "[FIRING:1] CreditsExhausted");
    assert_eq!(chat[0]["attachments"][0]["color"], "danger");
    assert_eq!(
        chat[0]["attachments"][0]["title"],
        "short: pool ai is exhausted"
    );

    // The failing receiver is retried and counted, and never held the others back.
    app.running
        .state
        .wait_until(|s| {
            s.alerting()
                .notifications
                .get("broken")
                .is_some_and(|c| c.1 >= 3)
        })
        .await;
    let m = app.metrics().await;
    let count = |r: &str, result: &str| {
        value(
            &m,
            "creditwatch_notifications_total",
            &[
                &format!("receiver=\"{r}\""),
                &format!("result=\"{result}\""),
            ],
        )
    };
    assert_eq!(count("direct", "success"), Some(1.0));
    assert_eq!(count("direct", "failure"), Some(0.0));
    assert!(count("broken", "failure").unwrap() >= 3.0);
    assert_eq!(count("broken", "success"), Some(0.0));
    assert_eq!(
        value(
            &m,
            "creditwatch_alerts",
            &["alertname=\"CreditsExhausted\"", "state=\"firing\""]
        ),
        Some(1.0)
    );

    // Restart while firing: the alert is remembered and nobody is paged again.
    let dir = app.stop().await;
    let app = spawn_in(dir, &config, Arc::new(SystemClock)).await;
    wait_rounds(&app, "direct", 4).await;
    wait_rounds(&app, "chat", 4).await;
    assert_eq!(hook.bodies("direct").len(), 1, "re-paged after a restart");
    assert_eq!(hook.bodies("slack").len(), 1, "re-paged after a restart");
    assert_eq!(
        value(
            &app.metrics().await,
            "creditwatch_alerts",
            &["alertname=\"CreditsExhausted\"", "state=\"firing\""]
        ),
        Some(1.0),
        "the firing alert survived the restart"
    );

    // A top-up resolves it: one resolved notification everywhere, same alert, same start.
    sim.set_burn("k-short", 0.0, 0.0);
    sim.top_up("k-short", 5000.0);
    let direct = hook.wait("direct", 2).await;
    let resolved = &direct[1];
    assert_eq!(resolved["status"], "resolved");
    assert_eq!(resolved["alerts"][0]["status"], "resolved");
    assert_eq!(resolved["alerts"][0]["fingerprint"], fingerprint.as_str());
    assert_eq!(resolved["alerts"][0]["startsAt"], starts_at.as_str());
    assert_ne!(resolved["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    let chat = hook.wait("slack", 2).await;
    assert_eq!(chat[1]["text"], "[RESOLVED] CreditsExhausted");
    assert_eq!(chat[1]["attachments"][0]["color"], "good");
    // Alertmanager saw one firing notification and then the resolution: the restart, and the
    // re-sends of the firing alert, never paged through it again.
    let via_am = hook.wait("am", 2).await;
    let statuses: Vec<&str> = via_am
        .iter()
        .map(|b| b["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["firing", "resolved"]);
    assert_eq!(via_am[1]["alerts"][0]["fingerprint"], fingerprint.as_str());

    // Restart once more: resolved stays resolved, and nothing is sent.
    let dir = app.stop().await;
    let app = spawn_in(dir, &config, Arc::new(SystemClock)).await;
    wait_rounds(&app, "direct", 4).await;
    wait_rounds(&app, "chat", 4).await;
    assert_eq!(hook.bodies("direct").len(), 2);
    assert_eq!(hook.bodies("slack").len(), 2);
    app.stop().await;
    drop(am);
}

/// Waits until `receiver` has processed `n` evaluations of this process.
async fn wait_rounds(app: &crate::support::TestApp, receiver: &str, n: u64) {
    app.running
        .state
        .wait_until(|s| s.alerting().rounds.get(receiver).is_some_and(|r| *r >= n))
        .await;
}

#[test]
fn the_example_alerting_block_is_valid_once_uncommented() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let start = text
        .find("\n# [alerting]\n")
        .expect("the example has an [alerting] block");
    let block: String = text[start..]
        .lines()
        .filter(|l| !l.starts_with("##"))
        .map(|l| l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#')))
        .map(|l| l.split("##").next().unwrap().trim_end().to_string() + "\n")
        .collect();
    let full = format!("{}{block}", &text[..start]);
    let env = |k: &str| {
        Some(match k {
            "SLACK_WEBHOOK_URL" => "https://hooks.slack.test/services/T/B/x".to_string(),
            _ => "dummy-key".to_string(),
        })
    };
    let (config, _) =
        creditwatch::config::Config::parse(&full, &path, path.parent().unwrap(), &env)
            .unwrap_or_else(|e| panic!("{e}\n---\n{block}"));
    let alerting = config.alerting.expect("alerting is on");
    let names: Vec<&str> = alerting.receivers.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["oncall", "chat", "alertmanager"]);
}
