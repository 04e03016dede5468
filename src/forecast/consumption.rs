//! Consumption between two readings of a pool: what was spent, never confused with resets, top-ups or deposits.

/// The parts of a reading that consumption is computed from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    pub used: Option<f64>,
    pub remaining: Option<f64>,
    /// Start of the period the reading belongs to (ms since the epoch), when the pool resets.
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

/// Consumption between `prev` and `cur`, never negative.
///
/// - A reset (the period changed, or `used` went down) counts only what `cur` shows as used since
///   the reset; the part consumed before the reset but after `prev` is unknown and not invented.
/// - A rise in `remaining` (a top-up or deposit) is never negative consumption.
pub fn consumed_between(prev: &Observation, cur: &Observation, rule: ConsumptionRule) -> f64 {
    let period_changed = matches!(
        (prev.period_start_ms, cur.period_start_ms),
        (Some(a), Some(b)) if a != b
    );
    let used_dropped = matches!((prev.used, cur.used), (Some(a), Some(b)) if b < a);
    let reset = period_changed || used_dropped;

    let by_used = match (prev.used, cur.used) {
        (Some(a), Some(b)) if !reset => Some(b - a),
        (_, Some(b)) if reset => Some(b),
        _ => None,
    };
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
    c.unwrap_or(0.0).max(0.0)
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

    #[test]
    fn plain_consumption_within_a_period() {
        assert_eq!(
            consumed_between(
                &o(Some(10.0), Some(90.0), Some(1)),
                &o(Some(15.0), Some(85.0), Some(1)),
                Used
            ),
            5.0
        );
    }

    #[test]
    fn reset_counts_only_what_is_used_since() {
        // used 900 -> 3 across a period change: 3 consumed since the reset, not -897.
        assert_eq!(
            consumed_between(
                &o(Some(900.0), Some(100.0), Some(1)),
                &o(Some(3.0), Some(997.0), Some(2)),
                Used
            ),
            3.0
        );
        // Same, detected from used dropping when the period is unknown.
        assert_eq!(
            consumed_between(&o(Some(900.0), None, None), &o(Some(3.0), None, None), Used),
            3.0
        );
    }

    #[test]
    fn top_up_is_not_negative_consumption() {
        // Fluximage AI: 5 used from the monthly part while 200 top-up credits were bought.
        let prev = o(Some(100.0), Some(900.0), Some(1));
        let cur = o(Some(105.0), Some(1095.0), Some(1));
        assert_eq!(consumed_between(&prev, &cur, UsedOrRemainingDrop), 5.0);
        // Remaining-only pools: a rise is a top-up.
        assert_eq!(
            consumed_between(
                &o(None, Some(10.0), None),
                &o(None, Some(50.0), None),
                RemainingDrop
            ),
            0.0
        );
    }

    #[test]
    fn consumption_from_top_ups_after_the_allocation_is_used_up_counts() {
        // Monthly allocation exhausted (used stays 1000); top-ups go from 200 to 150.
        let prev = o(Some(1000.0), Some(200.0), Some(1));
        let cur = o(Some(1000.0), Some(150.0), Some(1));
        assert_eq!(consumed_between(&prev, &cur, UsedOrRemainingDrop), 50.0);
        // The allocation runs out mid-interval: 20 from monthly, then 30 from top-ups.
        let prev = o(Some(980.0), Some(220.0), Some(1));
        let cur = o(Some(1000.0), Some(170.0), Some(1));
        assert_eq!(consumed_between(&prev, &cur, UsedOrRemainingDrop), 50.0);
    }

    #[test]
    fn deposit_with_all_time_usage() {
        // ImageRouter balance: usage 4.5 -> 5.0 while 20 USD were deposited.
        let prev = o(Some(4.5), Some(25.5), None);
        let cur = o(Some(5.0), Some(45.0), None);
        assert!((consumed_between(&prev, &cur, Used) - 0.5).abs() < 1e-12);
    }
}
