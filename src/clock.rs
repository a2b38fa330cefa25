//! Times as stored (unix microseconds) and as shown (RFC 3339).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds since the epoch, the unit of every time column.
pub fn micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

pub fn now_micros() -> i64 {
    micros(SystemTime::now())
}

pub fn from_micros(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us.max(0) as u64)
}

/// RFC 3339 in UTC with second precision, e.g. `2026-11-29T10:15:00Z`.
/// Times before the epoch show as the epoch and times past the year 9999 as
/// its last second, which is as far as RFC 3339 goes (humantime's formatter
/// fails, and `to_string` would panic, on either).
pub fn rfc3339(t: SystemTime) -> String {
    let t = t.clamp(UNIX_EPOCH, last_rfc3339_second());
    humantime::format_rfc3339_seconds(t).to_string()
}

/// 9999-12-31T23:59:59Z, the last time RFC 3339 can write.
pub fn last_rfc3339_second() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(LAST_RFC3339_SECOND)
}
const LAST_RFC3339_SECOND: u64 = 253_402_300_799;

pub fn rfc3339_micros(us: i64) -> String {
    rfc3339(from_micros(us))
}

/// Parse a time given on the command line: RFC 3339 (`2026-11-29T10:00:00Z`),
/// a date (`2026-11-29`, midnight UTC), or an age (`90m`, `2d`: that long ago).
pub fn parse_time_arg(s: &str, now: SystemTime) -> Result<SystemTime, String> {
    let s = s.trim();
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    if s.len() == 10
        && let Ok(t) = humantime::parse_rfc3339_weak(&format!("{s} 00:00:00"))
    {
        return Ok(t);
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return now
            .checked_sub(d)
            .ok_or_else(|| format!("{s:?} reaches back before 1970"));
    }
    Err(format!(
        "{s:?} is not a time: use RFC 3339 (2026-11-29T10:00:00Z), a date (2026-11-29) or an age (90m, 2d)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_clamps_what_it_cannot_write() {
        let secs = |s| UNIX_EPOCH + Duration::from_secs(s);
        assert_eq!(rfc3339(secs(0)), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
        assert_eq!(rfc3339(secs(253_402_300_799)), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(secs(253_402_300_800)), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(secs(i64::MAX as u64 / 2)), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn time_args() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(
            parse_time_arg("1h", now).unwrap(),
            now - Duration::from_secs(3600)
        );
        assert_eq!(
            rfc3339(parse_time_arg("2026-11-29", now).unwrap()),
            "2026-11-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339(parse_time_arg("2026-11-29T10:15:00Z", now).unwrap()),
            "2026-11-29T10:15:00Z"
        );
        assert!(parse_time_arg("yesterday", now).is_err());
        assert_eq!(micros(from_micros(1_234_567)), 1_234_567);
    }
}
