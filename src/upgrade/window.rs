//! Maintenance windows: when automatic upgrades may start.
//!
//! A window opens at every start time of a 5-field cron schedule, evaluated in an IANA time zone,
//! and stays open for a fixed duration: it is open at `now` when some start `s` has
//! `s <= now < s + duration`. Daylight-saving gaps and folds follow croner: a fixed-time start
//! that falls into a gap runs at the first instant after it, a repeated wall-clock time starts
//! the window once (at the earlier instant).
//!
//! Everything here is pure: the current time is always a parameter.

use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::civil;
use jiff::tz::TimeZone;

use crate::crd::broker::MaintenanceWindow;

/// Schedules are checked for satisfiability from this fixed date, so that accepting or
/// rejecting a spec never depends on the current date.
const FEASIBILITY_FROM: civil::DateTime = civil::date(2024, 1, 1).at(0, 0, 0, 0);
/// End of the satisfiability check (exclusive): five years, including two February 29ths.
const FEASIBILITY_UNTIL: civil::DateTime = civil::date(2029, 1, 1).at(0, 0, 0, 0);
/// [`current_close`] follows at most this many back-to-back windows before giving up.
const MAX_CHAINED_WINDOWS: usize = 1000;

/// A validated maintenance window.
#[derive(Clone, Debug)]
pub struct Window {
    schedule: String,
    cron: Cron,
    duration: Duration,
    time_zone_name: String,
    time_zone: TimeZone,
}

impl Window {
    /// Validates a `spec.upgrade.maintenanceWindows[]` entry. The error is a user-facing sentence
    /// (for `Ready=False, reason=InvalidSpec`).
    ///
    /// Rejected: a schedule that is not exactly 5 cron fields (minute hour day-of-month month
    /// day-of-week; names such as `SUN` or `JAN` are allowed), a schedule that matches no date in
    /// the five years from 2024-01-01 (such as `0 0 30 2 *` or `0 0 31 4 *`; `0 0 29 2 *` is
    /// fine), a duration that does not parse or is 0, and a time zone that is not a known IANA
    /// name (an empty one means UTC).
    pub fn parse(spec: &MaintenanceWindow) -> Result<Window, String> {
        let schedule = spec.schedule.trim();
        let fields = schedule.split_whitespace().count();
        if fields != 5 {
            return Err(format!(
                "schedule {:?} must have 5 fields (minute hour day-of-month month day-of-week), not {fields}",
                spec.schedule
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(schedule)
            .map_err(|e| format!("schedule {:?} is not a valid cron expression: {e}", spec.schedule))?;
        let duration = spec.duration.parse()?;
        if duration.is_zero() {
            return Err(format!("duration {:?} must be greater than 0", spec.duration.0));
        }
        let time_zone_name = match spec.time_zone.trim() {
            "" => "UTC",
            name => name,
        };
        // UTC needs no time zone database (the operator image may not ship one).
        let time_zone = match time_zone_name {
            "UTC" | "Etc/UTC" => TimeZone::UTC,
            name => TimeZone::get(name).map_err(|e| {
                format!("unknown time zone {name:?} (expected an IANA name such as UTC or Europe/Berlin): {e}")
            })?,
        };
        match cron.find_next_occurrence(&FEASIBILITY_FROM, true) {
            Ok(first) if first < FEASIBILITY_UNTIL => {}
            _ => {
                return Err(format!(
                    "schedule {:?} never opens a window: it matches no date in the 5 years from 2024-01-01 \
                     (check day-of-month against month; e.g. 30 February and 31 April do not exist)",
                    spec.schedule
                ));
            }
        }
        Ok(Window {
            schedule: schedule.to_string(),
            cron,
            duration,
            time_zone_name: time_zone_name.to_string(),
            time_zone,
        })
    }

    /// The cron schedule as written (trimmed).
    pub fn schedule(&self) -> &str {
        &self.schedule
    }

    /// How long the window stays open after each start.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// The IANA time zone the schedule is evaluated in.
    pub fn time_zone(&self) -> &str {
        &self.time_zone_name
    }

    /// The latest start at or before `now`, if any.
    pub fn last_start(&self, now: Timestamp) -> Option<Timestamp> {
        let zoned = now.to_zoned(self.time_zone.clone());
        self.cron.find_previous_occurrence(&zoned, true).ok().map(|z| z.timestamp())
    }

    /// The earliest start at or after `now`, if any.
    pub fn next_start(&self, now: Timestamp) -> Option<Timestamp> {
        let zoned = now.to_zoned(self.time_zone.clone());
        let mut next = self.cron.find_next_occurrence(&zoned, true).ok()?;
        if next.timestamp() < now {
            // `now` has a fraction of a second past a start; cron works in whole seconds.
            next = self.cron.find_next_occurrence(&next, false).ok()?;
        }
        Some(next.timestamp())
    }

    /// When a window that started at `start` closes.
    pub fn end_of(&self, start: Timestamp) -> Timestamp {
        start.checked_add(self.duration).unwrap_or(Timestamp::MAX)
    }

    /// True when this window is open at `now`.
    pub fn contains(&self, now: Timestamp) -> bool {
        self.last_start(now).is_some_and(|start| now < self.end_of(start))
    }
}

/// Validates all windows of a spec; the error names the offending entry
/// (`spec.upgrade.maintenanceWindows[1]: ...`).
pub fn parse_windows(specs: &[MaintenanceWindow]) -> Result<Vec<Window>, String> {
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| Window::parse(spec).map_err(|e| format!("spec.upgrade.maintenanceWindows[{i}]: {e}")))
        .collect()
}

/// True when some window is open at `now`. No windows means "any time": always open.
pub fn is_open(windows: &[Window], now: Timestamp) -> bool {
    windows.is_empty() || windows.iter().any(|w| w.contains(now))
}

/// The first instant at or after `now` at which a window is open: `now` itself when one is open
/// (or there are no windows), otherwise the earliest next start.
pub fn next_open(windows: &[Window], now: Timestamp) -> Option<Timestamp> {
    if is_open(windows, now) {
        return Some(now);
    }
    windows.iter().filter_map(|w| w.next_start(now)).min()
}

/// When the open period around `now` ends: the first instant after `now` at which no window is
/// open, following windows that overlap or start exactly as another closes.
///
/// `None` when no window is open at `now`, when there are no windows (always open), or when the
/// open period chains more than 1000 windows (e.g. `* * * * *` with a 2m duration: it
/// effectively never closes).
pub fn current_close(windows: &[Window], now: Timestamp) -> Option<Timestamp> {
    if windows.is_empty() || !is_open(windows, now) {
        return None;
    }
    let mut close = now;
    for _ in 0..MAX_CHAINED_WINDOWS {
        let later_end = windows
            .iter()
            .filter_map(|w| w.last_start(close).map(|start| w.end_of(start)))
            .filter(|end| *end > close)
            .max();
        match later_end {
            Some(end) => close = end,
            None => return Some(close),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::common::GoDuration;

    fn spec(schedule: &str, duration: &str, tz: &str) -> MaintenanceWindow {
        MaintenanceWindow { schedule: schedule.into(), duration: GoDuration::new(duration), time_zone: tz.into() }
    }

    fn window(schedule: &str, duration: &str, tz: &str) -> Window {
        Window::parse(&spec(schedule, duration, tz)).unwrap_or_else(|e| panic!("{schedule}: {e}"))
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn accepts_common_schedules() {
        let w = window("0 2 * * SUN", "2h", "Europe/Berlin");
        assert_eq!(
            (w.schedule(), w.time_zone(), w.duration()),
            ("0 2 * * SUN", "Europe/Berlin", Duration::from_secs(7200))
        );
        window("30 1 * * mon-fri", "90m", "America/New_York");
        window("0 3 1 JAN,JUL *", "1h30m", "UTC");
        window("*/15 * * * *", "5m", "UTC");
        assert_eq!(window("0 2 * * *", "1h", "").time_zone(), "UTC");
        assert_eq!(window("0 2 * * *", "1h", "Etc/UTC").time_zone(), "Etc/UTC");
    }

    #[test]
    fn a_schedule_that_never_occurs_is_invalid() {
        for never in ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2,4,6,9,11 *", "15 3 30,31 2 *"] {
            let err = Window::parse(&spec(never, "1h", "UTC")).unwrap_err();
            assert!(err.contains("never opens a window"), "{never}: {err}");
            assert!(err.contains(never), "{err}");
        }
        // Day-of-month OR day-of-week (Vixie cron): this one does occur, on Mondays in February.
        window("0 0 30 2 MON", "1h", "UTC");
    }

    #[test]
    fn february_29_is_valid_and_opens_in_leap_years() {
        let w = window("0 0 29 2 *", "1h", "UTC");
        assert_eq!(w.next_start(ts("2025-03-01T00:00:00Z")), Some(ts("2028-02-29T00:00:00Z")));
        assert_eq!(w.last_start(ts("2027-06-01T00:00:00Z")), Some(ts("2024-02-29T00:00:00Z")));
        assert!(w.contains(ts("2028-02-29T00:59:59Z")));
        assert!(!w.contains(ts("2028-02-29T01:00:00Z")));
    }

    #[test]
    fn invalid_specs_say_what_is_wrong() {
        let cases = [
            (spec("0 2 * *", "1h", "UTC"), "must have 5 fields"),
            (spec("0 0 2 * * *", "1h", "UTC"), "must have 5 fields"),
            (spec("@weekly", "1h", "UTC"), "must have 5 fields"),
            (spec("61 2 * * *", "1h", "UTC"), "not a valid cron expression"),
            (spec("0 2 * * FUNDAY", "1h", "UTC"), "not a valid cron expression"),
            (spec("0 2 * * *", "0s", "UTC"), "must be greater than 0"),
            (spec("0 2 * * *", "an hour", "UTC"), "invalid duration"),
            (spec("0 2 * * *", "1h", "Mars/Olympus_Mons"), "unknown time zone \"Mars/Olympus_Mons\""),
        ];
        for (spec, needle) in cases {
            let err = Window::parse(&spec).unwrap_err();
            assert!(err.contains(needle), "{spec:?}: {err}");
        }
        let err = parse_windows(&[spec("0 2 * * *", "1h", "UTC"), spec("0 0 31 4 *", "1h", "UTC")]).unwrap_err();
        assert!(err.starts_with("spec.upgrade.maintenanceWindows[1]: "), "{err}");
        assert_eq!(parse_windows(&[spec("0 2 * * *", "1h", "UTC")]).unwrap().len(), 1);
    }

    #[test]
    fn is_open_across_the_window_boundary() {
        let windows = [window("0 2 * * *", "1h", "UTC")];
        assert!(!is_open(&windows, ts("2026-03-10T01:59:59.999Z")));
        assert!(is_open(&windows, ts("2026-03-10T02:00:00Z")));
        assert!(is_open(&windows, ts("2026-03-10T02:59:59.999999999Z")));
        assert!(!is_open(&windows, ts("2026-03-10T03:00:00Z")), "the end is exclusive");
    }

    #[test]
    fn a_window_may_span_midnight() {
        let windows = [window("0 23 * * SAT", "3h", "UTC")];
        // 2026-03-14 is a Saturday.
        assert!(is_open(&windows, ts("2026-03-15T01:30:00Z")));
        assert!(!is_open(&windows, ts("2026-03-15T02:00:00Z")));
        assert!(!is_open(&windows, ts("2026-03-14T01:30:00Z")), "Friday night is not covered");
    }

    #[test]
    fn is_open_follows_the_time_zone_and_daylight_saving() {
        let berlin = [window("0 2 * * *", "1h", "Europe/Berlin")];
        // Winter: 02:00 CET = 01:00 UTC.
        assert!(is_open(&berlin, ts("2026-01-15T01:00:00Z")));
        assert!(!is_open(&berlin, ts("2026-01-15T02:00:00Z")));
        // Summer: 02:00 CEST = 00:00 UTC.
        assert!(is_open(&berlin, ts("2026-07-15T00:30:00Z")));
        assert!(!is_open(&berlin, ts("2026-07-15T01:00:00Z")));
        // 2026-03-29: 02:00 local does not exist; the window starts at 03:00 CEST (01:00 UTC).
        assert!(!is_open(&berlin, ts("2026-03-29T00:59:59Z")));
        assert!(is_open(&berlin, ts("2026-03-29T01:00:00Z")));

        let new_york = [window("0 2 * * SUN", "2h", "America/New_York")];
        // 2026-01-18 is a Sunday; 02:00 EST = 07:00 UTC.
        assert!(is_open(&new_york, ts("2026-01-18T07:00:00Z")));
        assert!(is_open(&new_york, ts("2026-01-18T08:59:59Z")));
        assert!(!is_open(&new_york, ts("2026-01-18T09:00:00Z")));
        assert!(!is_open(&new_york, ts("2026-01-18T02:00:00Z")), "02:00 UTC is not 02:00 in New York");

        // The same instant is inside a UTC window and outside a Tokyo one.
        let now = ts("2026-05-05T02:30:00Z");
        assert!(is_open(&[window("0 2 * * *", "1h", "UTC")], now));
        assert!(!is_open(&[window("0 2 * * *", "1h", "Asia/Tokyo")], now));
    }

    #[test]
    fn no_windows_means_always_open() {
        let now = ts("2026-05-05T12:00:00Z");
        assert!(is_open(&[], now));
        assert_eq!(next_open(&[], now), Some(now));
        assert_eq!(current_close(&[], now), None);
    }

    #[test]
    fn next_open_and_current_close() {
        let windows =
            [window("0 2 * * *", "1h", "UTC"), window("30 2 * * *", "1h", "UTC"), window("0 12 * * *", "10m", "UTC")];
        // Closed: the next start.
        assert_eq!(next_open(&windows, ts("2026-03-10T05:00:00Z")), Some(ts("2026-03-10T12:00:00Z")));
        assert_eq!(next_open(&windows, ts("2026-03-10T12:10:00Z")), Some(ts("2026-03-11T02:00:00Z")));
        assert_eq!(current_close(&windows, ts("2026-03-10T05:00:00Z")), None);
        // Open: now; the two overlapping windows close together at 03:30.
        assert_eq!(next_open(&windows, ts("2026-03-10T02:10:00Z")), Some(ts("2026-03-10T02:10:00Z")));
        assert_eq!(current_close(&windows, ts("2026-03-10T02:10:00Z")), Some(ts("2026-03-10T03:30:00Z")));
        assert_eq!(current_close(&windows, ts("2026-03-10T12:00:00Z")), Some(ts("2026-03-10T12:10:00Z")));
        // A fraction of a second after a start is still inside; the next start is tomorrow.
        let w = &windows[0];
        assert_eq!(w.next_start(ts("2026-03-10T02:00:00.5Z")), Some(ts("2026-03-11T02:00:00Z")));
        assert_eq!(w.next_start(ts("2026-03-10T02:00:00Z")), Some(ts("2026-03-10T02:00:00Z")));

        // Back-to-back windows chain; one that never closes gives None.
        let hourly = [window("0 * * * *", "1h", "UTC")];
        assert!(is_open(&hourly, ts("2026-03-10T05:59:59Z")));
        assert_eq!(current_close(&hourly, ts("2026-03-10T05:00:00Z")), None);
    }
}
