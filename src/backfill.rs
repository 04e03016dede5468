//! Provider-reported history (Floow's daily series) turned into samples anchored to each pool's running total.
//!
//! A past sample says how much was consumed between it and the reading. The store's history is
//! cumulative consumption, which only matters through differences, so a past sample is recorded
//! at `consumed_now − consumed_after`. On the first poll of a pool its running total starts at 0
//! (`consumed_total` counts from when the exporter first saw the pool), so the history sits at
//! negative values that end at 0: burn rates are known at once and the counter is not inflated.
//! Later polls add only samples newer than the pool's last recorded one (so a restart fills the
//! gap with the real daily shape), never below the total already recorded, and never replace a
//! sample: nothing is counted twice.

use crate::providers::Reading;
use crate::store::{Ledger, PoolId, SampleRow};

/// Sample rows for the history in `reading`. `rows` are the live rows about to be recorded
/// (their `consumed` is each pool's running total now), `ledger` finds what the store held
/// for a pool before this poll. Of the samples older than `since_ms` (the start of the longest window) only the
/// newest is kept: it anchors the interpolation at that window's start.
pub fn rows<'a>(
    reading: &Reading,
    rows: &[SampleRow],
    ledger: impl Fn(&PoolId) -> Option<&'a Ledger>,
    now_ms: i64,
    since_ms: i64,
) -> Vec<SampleRow> {
    let mut out = Vec::new();
    for h in &reading.history {
        let id = PoolId {
            pool: h.pool.clone(),
            key: h.key.clone(),
        };
        let (Some(live), Some(pool)) = (
            rows.iter().find(|r| r.id == id),
            reading
                .pools
                .iter()
                .find(|p| p.pool == id.pool && p.key == id.key),
        ) else {
            continue;
        };
        let ledger = ledger(&id);
        let after_ms = ledger.map(|l| l.last_ts_ms).unwrap_or(i64::MIN);
        let floor = ledger.map(|l| l.consumed).unwrap_or(f64::NEG_INFINITY);
        let baseline = h
            .samples
            .iter()
            .map(|s| s.at.timestamp_millis())
            .filter(|&t| t < since_ms)
            .max();
        for s in &h.samples {
            let ts_ms = s.at.timestamp_millis();
            let useful = ts_ms >= since_ms || Some(ts_ms) == baseline;
            if ts_ms <= after_ms || !useful || ts_ms >= now_ms {
                continue;
            }
            out.push(SampleRow {
                id: id.clone(),
                unit: live.unit.clone(),
                ts_ms,
                used: s.used,
                remaining: s.remaining,
                limit: s.limit,
                period_start_ms: pool
                    .schedule
                    .period_at(s.at)
                    .map(|p| p.start.timestamp_millis()),
                consumed: (live.consumed - s.consumed_after).max(floor),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::consumption::{ConsumptionRule, Observation};
    use crate::forecast::schedule::Schedule;
    use crate::providers::{PastSample, PoolHistory, PoolReading, Unit};
    use chrono::{DateTime, Utc};

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn id() -> PoolId {
        PoolId {
            pool: "credits".into(),
            key: String::new(),
        }
    }

    fn reading(samples: &[(&str, f64)]) -> Reading {
        Reading {
            pools: vec![PoolReading {
                pool: "credits".into(),
                key: String::new(),
                unit: Unit::Credits,
                used: Some(0.0),
                remaining: None,
                limit: None,
                available: None,
                schedule: Schedule::Never,
                rule: ConsumptionRule::Used,
                cumulative: None,
            }],
            history: vec![PoolHistory {
                pool: "credits".into(),
                key: String::new(),
                samples: samples
                    .iter()
                    .map(|(at, after)| PastSample {
                        at: t(at),
                        consumed_after: *after,
                        used: None,
                        remaining: None,
                        limit: None,
                    })
                    .collect(),
            }],
            ..Reading::default()
        }
    }

    fn live(ts: &str, consumed: f64) -> SampleRow {
        SampleRow {
            id: id(),
            unit: "credits".into(),
            ts_ms: t(ts).timestamp_millis(),
            used: None,
            remaining: None,
            limit: None,
            period_start_ms: None,
            consumed,
        }
    }

    fn got(out: &[SampleRow]) -> Vec<(i64, f64)> {
        out.iter().map(|r| (r.ts_ms / 1000, r.consumed)).collect()
    }

    #[test]
    fn first_poll_ends_at_zero() {
        let r = reading(&[
            ("2026-04-10T00:00:00Z", 465.0),
            ("2026-04-11T00:00:00Z", 375.0),
            ("2026-04-12T00:00:00Z", 150.0),
        ]);
        let now = t("2026-04-12T14:30:00Z").timestamp_millis();
        let out = rows(&r, &[live("2026-04-12T14:30:00Z", 0.0)], |_| None, now, 0);
        assert_eq!(
            got(&out),
            vec![
                (t("2026-04-10T00:00:00Z").timestamp(), -465.0),
                (t("2026-04-11T00:00:00Z").timestamp(), -375.0),
                (t("2026-04-12T00:00:00Z").timestamp(), -150.0),
            ]
        );
        // Only what a window can use: the samples inside it and the one before its start.
        let since = t("2026-04-11T14:30:00Z").timestamp_millis();
        let out = rows(
            &r,
            &[live("2026-04-12T14:30:00Z", 0.0)],
            |_| None,
            now,
            since,
        );
        assert_eq!(
            got(&out),
            vec![
                (t("2026-04-11T00:00:00Z").timestamp(), -375.0),
                (t("2026-04-12T00:00:00Z").timestamp(), -150.0),
            ]
        );
    }

    #[test]
    fn later_polls_add_only_newer_samples_never_below_the_total() {
        let r = reading(&[
            ("2026-04-11T00:00:00Z", 375.0),
            ("2026-04-12T00:00:00Z", 150.0),
        ]);
        let ledger = Ledger {
            unit: "credits".into(),
            first_seen_ms: 0,
            last_ts_ms: t("2026-04-11T20:00:00Z").timestamp_millis(),
            consumed: 100.0,
            last: Observation {
                used: None,
                remaining: None,
                period_start_ms: None,
            },
        };
        let ledgers = std::collections::BTreeMap::from([(id(), ledger)]);
        let now = t("2026-04-12T14:30:00Z").timestamp_millis();
        // 200 consumed since the last poll by the used-based ledger; the midnight sample sits 150
        // below the live total.
        let out = rows(
            &r,
            &[live("2026-04-12T14:30:00Z", 300.0)],
            |i| ledgers.get(i),
            now,
            0,
        );
        assert_eq!(
            got(&out),
            vec![(t("2026-04-12T00:00:00Z").timestamp(), 150.0)]
        );
        // A series that disagrees with the ledger is clamped to it: history never goes back.
        let out = rows(
            &r,
            &[live("2026-04-12T14:30:00Z", 120.0)],
            |i| ledgers.get(i),
            now,
            0,
        );
        assert_eq!(
            got(&out),
            vec![(t("2026-04-12T00:00:00Z").timestamp(), 100.0)]
        );
    }
}
