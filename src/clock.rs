//! Wall-clock time as a dependency: the system clock in production, a manual clock in tests.

use chrono::{DateTime, Utc};
use std::sync::Mutex;
use std::time::Duration;

/// Where "now" comes from. Only `app.rs` and the poller ask for it; everything below takes time
/// as an argument, so forecasts are pure functions that tests can pin to an exact instant.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        ManualClock(Mutex::new(start))
    }

    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().unwrap() = t;
    }

    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap();
        *t += chrono::Duration::from_std(d).expect("duration in range");
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

/// Wall time that follows tokio's clock, so a test that pauses and advances tokio time moves the
/// wall clock by the same amount and intervals and timestamps stay consistent.
#[derive(Debug)]
pub struct TokioClock {
    base_wall: DateTime<Utc>,
    base: tokio::time::Instant,
}

impl TokioClock {
    pub fn starting_at(base_wall: DateTime<Utc>) -> Self {
        TokioClock {
            base_wall,
            base: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now() - self.base;
        self.base_wall + chrono::Duration::from_std(elapsed).expect("duration in range")
    }
}
