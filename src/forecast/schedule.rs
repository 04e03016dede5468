//! Reset schedules: monthly from a billing anchor, rolling day/week/month windows, or never. All UTC.

use chrono::{DateTime, Datelike, Duration as ChronoDuration, NaiveDate, NaiveTime, Utc};

/// When a pool's allocation resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// A balance that never resets (a prepaid balance, a lifetime cap).
    Never,
    /// Monthly from a billing anchor date at 00:00 UTC. An anchor late in the month is clamped to
    /// the end of shorter months (Jan 31 resets on Feb 28 or 29, then Mar 31 again).
    Monthly { anchor: NaiveDate },
    /// A window that starts at `start` and repeats every `every` (a key's spend window).
    Rolling { start: DateTime<Utc>, every: Every },
}

/// Length of a rolling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Every {
    Day,
    Week,
    /// A calendar month, clamped to the month's end like a billing anchor.
    Month,
}

/// One billing period: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Schedule {
    /// The period containing `now`, or `None` for a pool that never resets.
    /// At the reset instant itself the new period has begun.
    pub fn period_at(&self, now: DateTime<Utc>) -> Option<Period> {
        match *self {
            Schedule::Never => None,
            Schedule::Monthly { anchor } => Some(monthly_period(midnight(anchor), now)),
            Schedule::Rolling { start, every } => {
                let len = match every {
                    Every::Day => ChronoDuration::days(1),
                    Every::Week => ChronoDuration::weeks(1),
                    Every::Month => return Some(monthly_period(start, now)),
                };
                // Whole windows elapsed since `start`, rounded down (negative before it).
                let n = (now - start)
                    .num_milliseconds()
                    .div_euclid(len.num_milliseconds());
                let s = start + len * (n as i32);
                Some(Period {
                    start: s,
                    end: s + len,
                })
            }
        }
    }
}

/// The calendar-month period containing `now` of a schedule that started at `start`: each
/// period starts on `start`'s day of the month (clamped to shorter months) at `start`'s time.
fn monthly_period(start: DateTime<Utc>, now: DateTime<Utc>) -> Period {
    let at = |k: i64| {
        add_months_clamped(start.date_naive(), k)
            .and_time(start.time())
            .and_utc()
    };
    let mut k = months_between(start.date_naive(), now.date_naive());
    while at(k) > now {
        k -= 1;
    }
    while at(k + 1) <= now {
        k += 1;
    }
    Period {
        start: at(k),
        end: at(k + 1),
    }
}

fn midnight(d: NaiveDate) -> DateTime<Utc> {
    d.and_time(NaiveTime::MIN).and_utc()
}

fn months_between(from: NaiveDate, to: NaiveDate) -> i64 {
    (to.year() as i64 - from.year() as i64) * 12 + (to.month() as i64 - from.month() as i64)
}

/// `date` moved by `months`, with the day clamped to the target month's length. Always computed
/// from the original date, so Jan 31 → Feb 28 → Mar 31, never drifting to the 28th.
pub fn add_months_clamped(date: NaiveDate, months: i64) -> NaiveDate {
    let total = date.year() as i64 * 12 + (date.month0() as i64) + months;
    let year = total.div_euclid(12) as i32;
    let month = total.rem_euclid(12) as u32 + 1;
    let last = last_day_of_month(year, month);
    NaiveDate::from_ymd_opt(year, month, date.day().min(last)).expect("valid clamped date")
}

fn last_day_of_month(year: i32, month: u32) -> u32 {
    let (ny, nm) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    NaiveDate::from_ymd_opt(ny, nm, 1)
        .expect("valid date")
        .pred_opt()
        .expect("valid date")
        .day()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }
    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn monthly_anchor_is_clamped_to_month_end() {
        let s = Schedule::Monthly {
            anchor: d(2026, 1, 31),
        };
        let p = s.period_at(t("2026-02-15T12:00:00Z")).unwrap();
        assert_eq!(p.start, t("2026-01-31T00:00:00Z"));
        assert_eq!(p.end, t("2026-02-28T00:00:00Z"));
        let p = s.period_at(t("2026-03-01T00:00:00Z")).unwrap();
        assert_eq!(
            (p.start, p.end),
            (t("2026-02-28T00:00:00Z"), t("2026-03-31T00:00:00Z"))
        );
        // Leap year: Feb 29.
        let p = s.period_at(t("2028-02-10T00:00:00Z")).unwrap();
        assert_eq!(p.end, t("2028-02-29T00:00:00Z"));
    }

    #[test]
    fn monthly_switches_exactly_at_the_reset_instant() {
        let s = Schedule::Monthly {
            anchor: d(2026, 1, 15),
        };
        let before = s.period_at(t("2026-11-14T23:59:59Z")).unwrap();
        let at = s.period_at(t("2026-11-15T00:00:00Z")).unwrap();
        assert_eq!(before.end, t("2026-11-15T00:00:00Z"));
        assert_eq!(at.start, t("2026-11-15T00:00:00Z"));
        assert_eq!(at.end, t("2026-12-15T00:00:00Z"));
    }

    #[test]
    fn monthly_works_before_the_anchor_too() {
        let s = Schedule::Monthly {
            anchor: d(2026, 6, 10),
        };
        let p = s.period_at(t("2026-03-20T00:00:00Z")).unwrap();
        assert_eq!(
            (p.start, p.end),
            (t("2026-03-10T00:00:00Z"), t("2026-04-10T00:00:00Z"))
        );
    }

    #[test]
    fn rolling_day_week_month() {
        let start = t("2026-05-01T00:00:00Z");
        let day = Schedule::Rolling {
            start,
            every: Every::Day,
        };
        assert_eq!(
            day.period_at(t("2026-05-01T13:00:00Z")).unwrap().end,
            t("2026-05-02T00:00:00Z")
        );
        // A stale window start rolls forward: three days later the window is the 4th.
        assert_eq!(
            day.period_at(t("2026-05-04T01:00:00Z")).unwrap().start,
            t("2026-05-04T00:00:00Z")
        );
        let week = Schedule::Rolling {
            start,
            every: Every::Week,
        };
        assert_eq!(
            week.period_at(t("2026-05-03T00:00:00Z")).unwrap().end,
            t("2026-05-08T00:00:00Z")
        );
        let month = Schedule::Rolling {
            start: t("2026-01-31T06:00:00Z"),
            every: Every::Month,
        };
        let p = month.period_at(t("2026-02-20T00:00:00Z")).unwrap();
        assert_eq!(
            (p.start, p.end),
            (t("2026-01-31T06:00:00Z"), t("2026-02-28T06:00:00Z"))
        );
        assert_eq!(Schedule::Never.period_at(start), None);
    }

    /// At the reset instant the new period has begun; a millisecond before, the old one is
    /// still current. (schedule, reset instant, the period after it, computed by hand.)
    #[test]
    fn every_schedule_switches_at_the_reset_instant() {
        let ms = chrono::Duration::milliseconds(1);
        let cases = [
            (
                Schedule::Monthly {
                    anchor: d(2026, 1, 31),
                },
                "2026-04-30T00:00:00Z",
                "2026-05-31T00:00:00Z",
            ),
            (
                Schedule::Rolling {
                    start: t("2026-05-01T06:30:00Z"),
                    every: Every::Day,
                },
                "2026-05-09T06:30:00Z",
                "2026-05-10T06:30:00Z",
            ),
            (
                // 2026-05-01 + 7 * 7 days = 2026-06-19.
                Schedule::Rolling {
                    start: t("2026-05-01T00:00:00Z"),
                    every: Every::Week,
                },
                "2026-06-19T00:00:00Z",
                "2026-06-26T00:00:00Z",
            ),
            (
                Schedule::Rolling {
                    start: t("2026-01-31T12:00:00Z"),
                    every: Every::Month,
                },
                "2026-02-28T12:00:00Z",
                "2026-03-31T12:00:00Z",
            ),
        ];
        for (s, reset, next) in cases {
            let (reset, next) = (t(reset), t(next));
            let before = s.period_at(reset - ms).unwrap();
            assert_eq!(before.end, reset, "{s:?}");
            let at = s.period_at(reset).unwrap();
            assert_eq!((at.start, at.end), (reset, next), "{s:?}");
        }
    }

    #[test]
    fn add_months_never_drifts() {
        assert_eq!(add_months_clamped(d(2026, 1, 31), 1), d(2026, 2, 28));
        assert_eq!(add_months_clamped(d(2026, 1, 31), 2), d(2026, 3, 31));
        assert_eq!(add_months_clamped(d(2024, 1, 31), 1), d(2024, 2, 29));
        assert_eq!(add_months_clamped(d(2026, 3, 31), -1), d(2026, 2, 28));
        assert_eq!(add_months_clamped(d(2026, 12, 15), 1), d(2027, 1, 15));
    }
}
