//! Property tests of the whole pipeline from readings to burn: simulated pools with resets, top-ups, deposits and gaps.
//!
//! A model pool is driven by a random schedule of consumption and events and read the way each
//! kind of provider reports it. The readings go through [`consumed_between`] (as the poller does
//! against the ledger) into a cumulative history, and [`burn_rate`] is evaluated on it.

use super::consumption::{ConsumptionRule, Observation, consumed_between};
use super::{Point, burn_rate};
use proptest::prelude::*;

/// How a provider reports a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `used` in the period against a fixed allocation; `used` drops to 0 at each reset.
    Plain,
    /// Fluximage AI: a monthly allocation used first, then purchased top-ups that survive resets.
    Topups,
    /// A prepaid balance seen only as `remaining`; deposits raise it; it never resets.
    Balance,
    /// ImageRouter balance: all-time `used` plus a `remaining` balance that deposits raise.
    Deposits,
}

const KINDS: [Kind; 4] = [Kind::Plain, Kind::Topups, Kind::Balance, Kind::Deposits];

/// The true state of a pool, advanced by the test.
#[derive(Debug, Clone)]
struct Pool {
    kind: Kind,
    /// `used` as the provider counts it (in the period, or all-time for `Deposits`).
    used: f64,
    /// The allocation per period (`Plain`, `Topups`).
    allocation: f64,
    /// Top-up credits held (`Topups`) or the balance (`Balance`, `Deposits`).
    extra: f64,
    /// The scheduled period the daemon believes it is in. It turns at the scheduled instant,
    /// which need not be when the provider resets.
    period: i64,
}

impl Pool {
    fn new(kind: Kind, allocation: f64, extra: f64) -> Pool {
        Pool {
            kind,
            used: 0.0,
            allocation,
            extra,
            period: 0,
        }
    }

    fn rule(&self) -> ConsumptionRule {
        match self.kind {
            Kind::Plain | Kind::Deposits => ConsumptionRule::Used,
            Kind::Topups => ConsumptionRule::UsedOrRemainingDrop,
            Kind::Balance => ConsumptionRule::RemainingDrop,
        }
    }

    fn resets(&self) -> bool {
        matches!(self.kind, Kind::Plain | Kind::Topups)
    }

    fn consume(&mut self, c: f64) {
        match self.kind {
            Kind::Plain => self.used += c,
            Kind::Topups => {
                let from_allocation = c.min((self.allocation - self.used).max(0.0));
                self.used += from_allocation;
                self.extra -= c - from_allocation;
            }
            Kind::Balance => self.extra -= c,
            Kind::Deposits => {
                self.used += c;
                self.extra -= c;
            }
        }
    }

    fn reset(&mut self) {
        if self.resets() {
            self.used = 0.0;
        }
    }

    /// A top-up purchase or a deposit.
    fn buy(&mut self, amount: f64) {
        if self.kind != Kind::Plain {
            self.extra += amount;
        }
    }

    /// The reading, with amounts rounded down to whole units when `whole` (as Fluximage does).
    fn observe(&self, whole: bool) -> Observation {
        let r = |x: f64| if whole { x.floor() } else { x };
        let (used, remaining) = match self.kind {
            Kind::Plain => (Some(r(self.used)), Some(self.allocation - r(self.used))),
            Kind::Topups => (
                Some(r(self.used)),
                Some((self.allocation - r(self.used)).max(0.0) + r(self.extra)),
            ),
            Kind::Balance => (None, Some(r(self.extra))),
            Kind::Deposits => (Some(r(self.used)), Some(r(self.extra))),
        };
        Observation {
            used,
            remaining,
            period_start_ms: self.resets().then_some(self.period),
        }
    }
}

/// One poll interval: how long it lasts, what is consumed in it, and what happens during it.
#[derive(Debug, Clone)]
struct Step {
    dt: f64,
    consumed: f64,
    /// A reset at this fraction of the interval: consumption before it belongs to the old period.
    reset_at: Option<f64>,
    /// A purchase or deposit during the interval.
    buy: Option<f64>,
    /// The schedule says a new period began during the interval (whether or not the provider
    /// has reset).
    period_turns: bool,
}

/// Runs `steps` through the pipeline. Returns the history of cumulative consumption and the true
/// total consumption, checking at every reading that consumption is never negative.
fn run(pool: &mut Pool, steps: &[Step], whole: bool) -> (Vec<Point>, f64) {
    let mut t = 0.0;
    let mut total = 0.0;
    let mut truth = 0.0;
    let mut prev = pool.observe(whole);
    let mut points = vec![Point { t, consumed: 0.0 }];
    for s in steps {
        match s.reset_at {
            Some(f) => {
                pool.consume(s.consumed * f);
                pool.reset();
                pool.consume(s.consumed * (1.0 - f));
            }
            None => pool.consume(s.consumed),
        }
        if let Some(a) = s.buy {
            pool.buy(a);
        }
        if s.period_turns {
            pool.period += 1;
        }
        truth += s.consumed;
        t += s.dt;
        let cur = pool.observe(whole);
        let c = consumed_between(&prev, &cur, pool.rule());
        assert!(c >= 0.0, "negative consumption {c} at t={t}");
        total += c;
        points.push(Point { t, consumed: total });
        prev = cur;
    }
    (points, truth)
}

fn any_step() -> impl Strategy<Value = Step> {
    (
        // Mostly ordinary intervals, sometimes a long gap while the daemon was down.
        prop_oneof![9 => 0.5..120.0f64, 1 => 120.0..100_000.0f64],
        // Bursts, idle intervals and everything between.
        prop_oneof![1 => Just(0.0), 4 => 0.0..50.0f64, 1 => 50.0..5_000.0f64],
        prop::option::weighted(0.15, 0.0..1.0f64),
        prop::option::weighted(0.15, 1.0..10_000.0f64),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(dt, consumed, reset_at, buy, period_turns)| Step {
            dt,
            consumed,
            reset_at,
            buy,
            period_turns,
        })
}

proptest! {
    /// For any sequence of readings with resets, top-ups, deposits and gaps: consumption is never
    /// negative (checked in `run`), `consumed_total` never decreases and never exceeds what was
    /// really consumed, and every burn rate is non-negative.
    #[test]
    fn burn_is_never_negative_and_the_total_never_decreases(
        kind in prop::sample::select(KINDS.to_vec()),
        allocation in 100.0..100_000.0f64,
        steps in prop::collection::vec(any_step(), 1..150),
    ) {
        // Enough top-up credits or balance that the pool never runs dry (a dry pool cannot burn).
        let mut pool = Pool::new(kind, allocation, 1e9);
        let (points, truth) = run(&mut pool, &steps, false);
        for w in points.windows(2) {
            prop_assert!(w[1].consumed >= w[0].consumed, "consumed_total decreased: {w:?}");
        }
        let total = points.last().unwrap().consumed;
        prop_assert!(total <= truth * (1.0 + 1e-9) + 1e-6, "counted {total} > consumed {truth}");
        let end = points.last().unwrap().t;
        for window in [1.0, 60.0, 3600.0, 86_400.0] {
            for p in &points {
                for now in [p.t, p.t + window / 3.0] {
                    if let Some(b) = burn_rate(&points, window, now) {
                        prop_assert!(b >= 0.0 && b.is_finite(), "burn {b} over {window}s at {now}");
                    }
                }
            }
            if let Some(b) = burn_rate(&points, window, end) {
                prop_assert!(b >= 0.0);
            }
        }
    }
}

/// A constant burn with everything that can disturb it: jittered poll times, whole-unit readings,
/// resets at a fixed period, and purchases or deposits now and then.
#[derive(Debug, Clone)]
struct Constant {
    kind: Kind,
    rate: f64,
    /// Mean poll interval, seconds.
    interval: f64,
    /// The window, in mean intervals.
    window_intervals: usize,
    /// Each interval's length as a fraction of the mean, 0.5..1.5.
    jitter: Vec<f64>,
    /// Reset period as a multiple of the window, and where in it the history starts.
    period_windows: f64,
    phase: f64,
    /// Purchases: (position in the history as a fraction, amount).
    buys: Vec<(f64, f64)>,
}

fn constant() -> impl Strategy<Value = Constant> {
    (
        prop::sample::select(KINDS.to_vec()),
        0.01..1000.0f64,
        1.0..600.0f64,
        1000usize..2000,
        1.0..20.0f64,
        0.0..1.0f64,
        prop::collection::vec((0.0..1.0f64, 1.0..1e6f64), 0..3),
    )
        .prop_flat_map(
            |(kind, rate, interval, window_intervals, period_windows, phase, buys)| {
                // History: one and a half windows, so the window's start is interpolated.
                let n = window_intervals * 3 / 2;
                prop::collection::vec(0.5..1.5f64, n).prop_map(move |jitter| Constant {
                    kind,
                    rate,
                    interval,
                    window_intervals,
                    jitter,
                    period_windows,
                    phase,
                    buys: buys.clone(),
                })
            },
        )
        // Whole-unit readings need enough consumption per window for rounding to stay small:
        // at least 2000 units per window keeps it under 0.2%.
        .prop_filter("enough consumption per window", |c| {
            c.rate * c.interval * c.window_intervals as f64 >= 2000.0
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A constant true burn is recovered within 1% by every window.
    ///
    /// What cannot be seen is bounded: a reset loses at most the pre-reset part of one interval,
    /// a purchase in an interval where top-up credits are consumed hides at most that interval,
    /// and rounding to whole units moves each end by less than one unit. With at least 1000
    /// intervals per window, at most two resets and two purchases per window, and 2000 units per
    /// window, that is under (4 * 1.5) / 1000 + 2 / 2000 = 0.7%.
    #[test]
    fn a_constant_burn_is_recovered_within_one_percent(c in constant()) {
        let window = c.interval * c.window_intervals as f64;
        let period = window * c.period_windows;
        let total_time: f64 = c.jitter.iter().map(|j| j * c.interval).sum();
        // Enough allocation for a whole period, top-ups for the whole history, so nothing blocks.
        let allocation = (c.rate * period * 2.0).ceil();
        let mut pool = Pool::new(c.kind, allocation, (c.rate * total_time * 2.0).ceil());
        let mut t = 0.0;
        let mut next_reset = period * (1.0 - c.phase);
        let mut buys = c.buys.clone();
        let steps: Vec<Step> = c
            .jitter
            .iter()
            .map(|j| {
                let dt = j * c.interval;
                // The schedule and the provider agree here; a reset is both.
                let reset_at = (next_reset < t + dt).then(|| {
                    let f = (next_reset - t) / dt;
                    next_reset += period;
                    f
                });
                let buy: f64 = buys
                    .iter()
                    .filter(|(at, _)| *at * total_time >= t && *at * total_time < t + dt)
                    .map(|(_, a)| *a)
                    .sum();
                buys.retain(|(at, _)| *at * total_time >= t + dt);
                t += dt;
                Step {
                    dt,
                    consumed: c.rate * dt,
                    reset_at,
                    buy: (buy > 0.0).then_some(buy),
                    period_turns: reset_at.is_some(),
                }
            })
            .collect();
        let (points, _) = run(&mut pool, &steps, true);
        let end = points.last().unwrap().t;
        let b = burn_rate(&points, window, end).expect("a full window of history");
        prop_assert!(
            (b - c.rate).abs() <= 0.01 * c.rate,
            "burn {b} vs true {} ({:.3}% off)", c.rate, (b / c.rate - 1.0) * 100.0
        );
    }
}
