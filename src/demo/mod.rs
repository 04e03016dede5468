//! `creditwatch demo`: simulated providers on loopback, and the real daemon polling them through the production code path.

pub mod fluximage;

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

/// The running demo: the daemon plus its simulators.
pub struct Demo {
    pub running: Running,
    pub fluximage: Arc<fluximage::Simulator>,
    pub servers: Vec<SimServer>,
}

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
    let flux_server = flux.serve().await.map_err(|source| StartError::Bind {
        addr: "127.0.0.1:0".parse().expect("valid"),
        source,
    })?;

    let toml = format!(
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
"#,
        flux = flux_server.url(),
    );
    // Demo keys come from this lookup, not the environment: nothing to set up.
    let env = |name: &str| match name {
        "DEMO_AGENCY" => Some("demo-agency".to_string()),
        "DEMO_STARTER" => Some("demo-starter".to_string()),
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
    Ok(Demo {
        running,
        fluximage: flux,
        servers: vec![flux_server],
    })
}
