//! Consumption between two readings of a pool: what was spent, never confused with resets, top-ups or deposits.
//!
//! A reset is read from the provider's own numbers (`used` going down), not from the configured
//! schedule. The schedule gives the day; the provider decides the instant, which may be hours
//! away from 00:00 UTC (the time of day the subscription started, another time zone). Treating
//! the scheduled instant as a reset while the provider still reports the old period's `used`
//! would count that whole period's usage again, as one huge interval of burn.

/// The parts of a reading that consumption is computed from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    pub used: Option<f64>,
    pub remaining: Option<f64>,
    /// Start of the scheduled period the reading was taken in (ms since the epoch), when the pool
    /// resets. Recorded with every sample for the history; resets are not inferred from it (see
    /// the module documentation).
    pub period_start_ms: Option<i64>,
}

/// Which fields of successive readings reveal consumption. Chosen per pool by its provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumptionRule {
    /// `used` grows with consumption and drops only at a reset (falls back to remaining when
    /// `used` is not reported).
    Used,
    /// Consumption shows in `used` or, once an allocation is exhausted, only as `remaining`
    /// going down (Fluximage AI credits drawing on top-ups): take the larger of the two.
    UsedOrRemainingDrop,
    /// Only `remaining` is known: a drop is consumption, a rise is a top-up.
    RemainingDrop,
}

/// Consumption between `prev` and `cur`, never negative and never more than was really spent.
///
/// - A reset (`used` went down) counts only what `cur` shows as used since the reset. What was
///   consumed after `prev` but before the reset is unknown and not invented, so an interval that
///   contains a reset undercounts by at most that interval's pre-reset part.
/// - A rise in `remaining` (a top-up, a deposit, the refill at a reset) is never negative
///   consumption. When a top-up is bought in the same interval as top-up credits are consumed,
///   the two cancel out in `remaining` and the consumption is not seen (an undercount).
/// - If the schedule says a period began but `used` did not go down, the provider has not reset
///   yet (or the new period's usage already exceeds the old one's, after a long gap): the growth
///   of `used` is counted, which never overcounts.
pub fn consumed_between(prev: &Observation, cur: &Observation, rule: ConsumptionRule) -> f64 {
    let reset = matches!((prev.used, cur.used), (Some(a), Some(b)) if b < a);

    let by_used = match (prev.used, cur.used) {
        (_, Some(b)) if reset => Some(b),
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    // At a reset `remaining` is refilled, so its change says nothing about consumption.
    let by_remaining = match (prev.remaining, cur.remaining) {
        (Some(a), Some(b)) if !reset => Some((a - b).max(0.0)),
        _ => None,
    };
    let c = match rule {
        ConsumptionRule::Used => by_used.or(by_remaining),
        ConsumptionRule::UsedOrRemainingDrop => match (by_used, by_remaining) {
            (Some(u), Some(r)) => Some(u.max(r)),
            (u, r) => u.or(r),
        },
        ConsumptionRule::RemainingDrop => by_remaining,
    };
    // NaN (never produced by checked provider amounts) must not poison the running total.
    match c {
        Some(c) if c > 0.0 => c,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConsumptionRule::*;

    fn o(used: Option<f64>, remaining: Option<f64>, period: Option<i64>) -> Observation {
        Observation {
            used,
            remaining,
            period_start_ms: period,
        }
    }

    /// (what happened, previous reading, current reading, rule, consumption computed by hand).
    #[test]
    fn table() {
        let u = |u: f64, r: f64, p: i64| o(Some(u), Some(r), Some(p));
        let cases: &[(&str, Observation, Observation, ConsumptionRule, f64)] = &[
            // 15 - 10 = 5.
            (
                "plain growth of used",
                u(10.0, 90.0, 1),
                u(15.0, 85.0, 1),
                Used,
                5.0,
            ),
            // Reset between the readings: 3 used since; the old 900 are not subtracted.
            (
                "reset, used 900 -> 3",
                u(900.0, 100.0, 1),
                u(3.0, 997.0, 2),
                Used,
                3.0,
            ),
            // Same reset seen without a schedule (rolling key window, unknown period).
            (
                "reset without a period",
                o(Some(900.0), None, None),
                o(Some(3.0), None, None),
                Used,
                3.0,
            ),
            // The schedule says a new period began, the provider has not reset yet: 905 - 900 = 5,
            // not 905 (which would count the whole old period again).
            (
                "provider resets after the scheduled instant",
                u(900.0, 100.0, 1),
                u(905.0, 95.0, 2),
                Used,
                5.0,
            ),
            // The provider reset before the scheduled instant: used 900 -> 2 within period 1.
            (
                "provider resets before the scheduled instant",
                u(900.0, 100.0, 1),
                u(2.0, 998.0, 1),
                Used,
                2.0,
            ),
            // Fluximage AI: used +5 while 200 top-up credits were bought (remaining 900 -> 1095):
            // max(105 - 100, max(900 - 1095, 0)) = max(5, 0) = 5.
            (
                "top-up purchase",
                u(100.0, 900.0, 1),
                u(105.0, 1095.0, 1),
                UsedOrRemainingDrop,
                5.0,
            ),
            // Monthly allocation used up (used stays 1000), top-ups 200 -> 150: max(0, 50) = 50.
            (
                "consumption from top-ups",
                u(1000.0, 200.0, 1),
                u(1000.0, 150.0, 1),
                UsedOrRemainingDrop,
                50.0,
            ),
            // 20 from the monthly part (980 -> 1000) then 30 from top-ups (remaining 220 -> 170):
            // max(20, 50) = 50.
            (
                "allocation runs out mid-interval",
                u(980.0, 220.0, 1),
                u(1000.0, 170.0, 1),
                UsedOrRemainingDrop,
                50.0,
            ),
            // Reset with top-ups carried over: used 1000 -> 4, remaining 150 -> 1146 (refill):
            // 4 used since the reset; the refill is not consumption.
            (
                "AI reset with top-ups carried over",
                u(1000.0, 150.0, 1),
                u(4.0, 1146.0, 2),
                UsedOrRemainingDrop,
                4.0,
            ),
            // Blind spot: 50 consumed from top-ups while 100 were bought: remaining 150 -> 200,
            // used stays 1000, so max(0, max(150 - 200, 0)) = 0 is all that can be seen.
            (
                "purchase and top-up consumption cancel",
                u(1000.0, 150.0, 1),
                u(1000.0, 200.0, 1),
                UsedOrRemainingDrop,
                0.0,
            ),
            // ImageRouter balance: all-time usage 4.5 -> 5.25 while 20 USD were deposited.
            (
                "deposit with all-time usage",
                o(Some(4.5), Some(25.5), None),
                o(Some(5.25), Some(45.0), None),
                Used,
                0.75,
            ),
            // Remaining-only pools: 10 -> 4 is 6 consumed; 10 -> 50 is a top-up, 0 consumed.
            (
                "remaining drop",
                o(None, Some(10.0), None),
                o(None, Some(4.0), None),
                RemainingDrop,
                6.0,
            ),
            (
                "remaining rise",
                o(None, Some(10.0), None),
                o(None, Some(50.0), None),
                RemainingDrop,
                0.0,
            ),
            // `used` not reported: the Used rule falls back to the drop in remaining, 80 - 70 = 10.
            (
                "used missing",
                o(None, Some(80.0), None),
                o(None, Some(70.0), None),
                Used,
                10.0,
            ),
            // Nothing comparable: 0, never a guess.
            (
                "nothing known",
                o(None, None, None),
                o(Some(7.0), None, None),
                RemainingDrop,
                0.0,
            ),
        ];
        for (what, prev, cur, rule, want) in cases {
            let got = consumed_between(prev, cur, *rule);
            assert!((got - want).abs() < 1e-12, "{what}: got {got}, want {want}");
        }
    }
}
