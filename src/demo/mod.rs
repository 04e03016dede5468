//! `creditwatch demo`: simulated providers on loopback, and the real daemon polling them through the production code path.

pub mod floow;
pub mod fluximage;
pub mod fluxrouter;
pub mod imagerouter;
pub mod openrouter;

pub use fluximage::Fault;

use crate::app::{self, ConfigSource, Options, Running, StartError};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use axum::Router;
use chrono::{Datelike, Duration as ChronoDuration, NaiveDate};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A simulator's HTTP server on an ephemeral loopback port; stops when dropped.
pub struct SimServer {
    pub addr: SocketAddr,
    cancel: CancellationToken,
}

impl SimServer {
    pub async fn start(router: Router) -> std::io::Result<SimServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(c.cancelled_owned())
                .await;
        });
        Ok(SimServer { addr, cancel })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Takes the fault to serve instead of a payload, if one is set, counting it down.
pub(crate) fn take_fault(slot: &std::sync::Mutex<Option<Fault>>) -> Option<Fault> {
    let mut f = slot.lock().unwrap();
    let current = f.clone();
    if let Some(fault) = f.as_mut()
        && let Some(n) = fault.count.as_mut()
    {
        *n = n.saturating_sub(1);
        if *n == 0 {
            *f = None;
        }
    }
    current
}

/// Answers with a canned fault, after its delay.
pub(crate) async fn fault_response(fault: Fault) -> axum::response::Response {
    use axum::response::IntoResponse;
    if fault.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(fault.delay_ms)).await;
    }
    let status = axum::http::StatusCode::from_u16(fault.status)
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        fault.body,
    )
        .into_response()
}

/// The bearer token of a request, or "".
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> &str {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// The running demo: the daemon plus its simulators.
pub struct Demo {
    pub running: Running,
    pub fluximage: Arc<fluximage::Simulator>,
    pub imagerouter: Arc<imagerouter::Simulator>,
    pub floow: Arc<floow::Simulator>,
    pub openrouter: Arc<openrouter::Simulator>,
    pub fluxrouter: Arc<fluxrouter::Simulator>,
    /// Requests sent through the fluxrouter proxy so its spend moves.
    pub traffic: fluxrouter::Traffic,
    /// Each simulator's HTTP server, with the provider it simulates.
    pub servers: Vec<(&'static str, SimServer)>,
}

/// The demo's fluxrouter account: a proxy in front of the simulator, with an allowance that
/// runs out within minutes at the demo's traffic and two keys told apart by their hashes.
fn fluxrouter_account(upstream: &str, anchor: NaiveDate) -> String {
    let hash = |k: &str| {
        crate::proxy::cost::key_hash(&axum::http::HeaderValue::from_str(k).expect("ASCII"))
    };
    format!(
        r#"
[[account]]
name = "llm-router"
provider = "fluxrouter"
proxy_listen = "127.0.0.1:0"
upstream = "{upstream}"
billing_anchor = "{anchor}"
included_usd = 5
spend_ceiling_usd = 25
[account.keys]
{app} = "demo-app"
{batch} = "demo-batch"
"#,
        app = hash(DEMO_ROUTER_KEYS[0]),
        batch = hash(DEMO_ROUTER_KEYS[1]),
    )
}

/// The API keys the demo traffic sends through the fluxrouter proxy.
pub const DEMO_ROUTER_KEYS: [&str; 2] = ["demo-router-app", "demo-router-batch"];

/// The demo's fluxrouter account name.
pub const DEMO_ROUTER_ACCOUNT: &str = "llm-router";

/// A billing anchor `days_ago` days before today, so the demo's resets are a known distance away.
fn anchor_days_ago(clock: &dyn Clock, days_ago: i64) -> NaiveDate {
    let d = clock.now().date_naive() - ChronoDuration::days(days_ago);
    // Keep the day-of-month below 29 so the reset date is the same every month.
    NaiveDate::from_ymd_opt(d.year(), d.month(), d.day().min(28)).expect("valid date")
}

/// Starts the simulators and the daemon polling them every 2 seconds.
pub async fn start(listen: SocketAddr) -> Result<Demo, StartError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let anchor = anchor_days_ago(clock.as_ref(), 18);
    let flux = fluximage::Simulator::new(
        clock.clone(),
        vec![
            fluximage::Params {
                key: "demo-agency".into(),
                plan: "agency".into(),
                billing_anchor: anchor,
                compressor_used: 18_400.0,
                compressor_limit: 99_999.0,
                compress_per_second: 3.0,
                ia_monthly: 10_000.0,
                ia_used: 7_900.0,
                ia_topup: 0.0,
                ai_per_second: 1.5,
                topup_every: Some(Duration::from_secs(600)),
                topup_amount: 500.0,
            },
            fluximage::Params {
                key: "demo-starter".into(),
                plan: "starter".into(),
                billing_anchor: anchor,
                compressor_used: 120.0,
                compressor_limit: 200.0,
                compress_per_second: 0.05,
                ia_monthly: 200.0,
                ia_used: 40.0,
                ia_topup: 0.0,
                ai_per_second: 0.02,
                topup_every: None,
                topup_amount: 0.0,
            },
        ],
    );
    let bind = |source| StartError::Bind {
        addr: "127.0.0.1:0".parse().expect("valid"),
        source,
    };
    let flux_server = flux.serve().await.map_err(bind)?;

    let now = clock.now();
    let router = imagerouter::Simulator::new(clock.clone(), vec![imagerouter_demo(now)]);
    let router_server = router.serve().await.map_err(bind)?;
    let floow_sim = floow::Simulator::new(clock.clone(), vec![floow_demo(now)]);
    let floow_server = floow_sim.serve().await.map_err(bind)?;
    let openrouter_sim = openrouter::Simulator::new(
        clock.clone(),
        vec![openrouter::Params {
            token: "demo-openrouter".into(),
            label: "sk-or-v1-d3m...0a1".into(),
            limit: Some(100.0),
            limit_reset: Some(crate::forecast::schedule::Every::Month),
            usage: 412.0,
            usage_month: 37.5,
            usd_per_second: 0.00005,
        }],
    );
    let openrouter_server = openrouter_sim.serve().await.map_err(bind)?;

    let fluxrouter_sim = fluxrouter::Simulator::new();
    let fluxrouter_server = fluxrouter_sim.serve().await.map_err(bind)?;

    let mut toml = format!(
        r#"
state_path = ":memory:"
[defaults]
interval = "2s"
timeout = "2s"
burn_windows = ["1m", "10m"]
forecast_window = "1m"

[[account]]
name = "images-agency"
provider = "fluximage"
api_key_env = "DEMO_AGENCY"
base_url = "{flux}"
billing_anchor = "{anchor}"

[[account]]
name = "images-starter"
provider = "fluximage"
api_key_env = "DEMO_STARTER"
base_url = "{flux}"
billing_anchor = "{anchor}"

[[account]]
name = "images-router"
provider = "imagerouter"
api_key_env = "DEMO_IMAGEROUTER"
base_url = "{router}"

# Floow's daily series backfills a week of history, so its 7d burn is known at the first poll.
[[account]]
name = "design-floow"
provider = "floow"
api_key_env = "DEMO_FLOOW"
base_url = "{floow}"
billing_anchor = "{anchor}"
monthly_allowance = 1000000
burn_windows = ["10m", "7d"]
forecast_window = "7d"

[[account]]
name = "llm-openrouter"
provider = "http_json"
url = "https://openrouter.ai/api/v1/key"
base_url = "{openrouter}"
headers = {{ Authorization = {{ env = "DEMO_OPENROUTER", prefix = "Bearer " }} }}
unit = "usd"
pool = "key"
remaining = "/data/limit_remaining"
used = "/data/usage_monthly"
limit = "/data/limit"
reset = "monthly"
billing_anchor = "2026-01-01"
"#,
        flux = flux_server.url(),
        router = router_server.url(),
        floow = floow_server.url(),
        openrouter = openrouter_server.url(),
    );
    toml.push_str(&fluxrouter_account(&fluxrouter_server.url(), anchor));
    // Demo keys come from this lookup, not the environment: nothing to set up.
    let env = |name: &str| match name {
        "DEMO_AGENCY" => Some("demo-agency".to_string()),
        "DEMO_STARTER" => Some("demo-starter".to_string()),
        "DEMO_IMAGEROUTER" => Some("demo-imagerouter".to_string()),
        "DEMO_FLOOW" => Some("fl_demo".to_string()),
        "DEMO_OPENROUTER" => Some("demo-openrouter".to_string()),
        _ => None,
    };
    let (mut config, _) = Config::parse(&toml, Path::new("<demo>"), Path::new("."), &env)?;
    config.listen = listen;
    let running = app::start(
        ConfigSource::Fixed(Box::new(config)),
        Options {
            listen: Some(listen),
            clock,
        },
    )
    .await?;
    let proxy = running
        .state
        .proxy(DEMO_ROUTER_ACCOUNT)
        .expect("the demo's fluxrouter proxy runs")
        .addr;
    let traffic = fluxrouter::generate(
        proxy,
        DEMO_ROUTER_KEYS.iter().map(|k| k.to_string()).collect(),
        Duration::from_millis(500),
    );
    Ok(Demo {
        running,
        fluximage: flux,
        imagerouter: router,
        floow: floow_sim,
        openrouter: openrouter_sim,
        fluxrouter: fluxrouter_sim,
        traffic,
        servers: vec![
            ("fluximage", flux_server),
            ("imagerouter", router_server),
            ("floow", floow_server),
            ("http_json (OpenRouter)", openrouter_server),
            ("fluxrouter upstream", fluxrouter_server),
        ],
    })
}

/// An ImageRouter account whose balance burns and gets a deposit every 3 hours, with keys
/// over day, week and month windows, a lifetime cap, two keys sharing a name, one expiring in 5
/// days, and the inactive temp_jwt token.
fn imagerouter_demo(now: chrono::DateTime<chrono::Utc>) -> imagerouter::Params {
    use crate::forecast::schedule::Every;
    use imagerouter::KeyParams;
    let days = ChronoDuration::days;
    imagerouter::Params {
        token: "demo-imagerouter".into(),
        total_deposits: 80.0,
        credit_usage: 30.0,
        keys: vec![
            KeyParams {
                spend_limit: Some(40.0),
                period: Some(Every::Month),
                usd_per_second: 0.00002,
                credit_usage: 21.5,
                period_spend: 14.2,
                total_requests: 9_800,
                created_at: Some(now - days(300)),
                expires_at: Some(now + days(200)),
                ..KeyParams::new("d9eb93dc-56b1-4216-91b5-a44944508bbc", "Production Key")
            },
            KeyParams {
                spend_limit: Some(10.0),
                period: Some(Every::Week),
                usd_per_second: 0.00001,
                credit_usage: 4.1,
                period_spend: 1.3,
                total_requests: 2_100,
                created_at: Some(now - days(40)),
                ..KeyParams::new("5f0c2a71-0d3e-4b8e-9a51-3c1f6e2b7d90", "Production Key")
            },
            KeyParams {
                spend_limit: Some(2.0),
                period: Some(Every::Day),
                usd_per_second: 0.0002,
                credit_usage: 2.4,
                period_spend: 0.5,
                total_requests: 1_250,
                created_at: Some(now - days(60)),
                expires_at: Some(now + days(5)),
                ..KeyParams::new("8a41c6f2-7b1d-4e0a-b2c3-9f8e7d6c5b4a", "Batch worker")
            },
            KeyParams {
                spend_limit: Some(5.0),
                usd_per_second: 0.00005,
                credit_usage: 1.5,
                total_requests: 400,
                ..KeyParams::new("c0ffee00-1111-2222-3333-444455556666", "CI")
            },
            KeyParams::temp_jwt(),
        ],
        deposit_every: Some(Duration::from_secs(3 * 3600)),
        deposit_amount: 2.0,
    }
}

/// A Floow account with 90 days of weekday history and live calls on three endpoints.
fn floow_demo(now: chrono::DateTime<chrono::Utc>) -> floow::Params {
    floow::Params {
        token: "fl_demo".into(),
        keys: vec![
            floow::KeyParams {
                id: "clxyz01abc".into(),
                name: "Production Key".into(),
                endpoints: floow::EndpointParams::documented(40.0),
                history: Default::default(),
            }
            .with_demo_history(now.date_naive(), 90),
        ],
    }
}
