//! Wall-clock time as integer milliseconds since the Unix epoch, and its RFC 3339 text form.
//!
//! Owner's rule: stored times are `u64` ms since the epoch (UTC); text appears only at the
//! edges (API, envelope), always in RFC 3339 with a `Z` offset. Policy code takes `now`
//! as an argument instead of calling [`now_ms`], so it can be tested exactly.

use std::time::{SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// The current wall-clock time in ms since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Formats ms since the epoch as RFC 3339 in UTC with millisecond precision,
/// e.g. `2026-02-19T10:30:00.123Z`.
/// Always three fraction digits, so times line up in lists.
pub fn format_ms(ms: u64) -> String {
    let seconds = format_seconds(ms);
    format!("{}.{:03}Z", seconds.trim_end_matches('Z'), ms % 1000)
}

/// Formats ms since the epoch as RFC 3339 in UTC truncated to whole seconds,
/// e.g. `2026-02-19T10:30:00Z` (the spec's envelope `timestamp` form).
pub fn format_seconds(ms: u64) -> String {
    let seconds = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    match OffsetDateTime::from_unix_timestamp(seconds) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => "1970-01-01T00:00:00Z".to_owned(),
    }
}

/// Parses an RFC 3339 timestamp with any offset and returns it normalized to UTC (`Z`),
/// keeping the sub-second digits given, plus its value in ms since the epoch.
///
/// # Errors
/// `None` when the text is not RFC 3339 or lies before 1970.
pub fn normalize_rfc3339(text: &str) -> Option<(String, u64)> {
    parse_rfc3339(text).ok()
}

/// Like [`normalize_rfc3339`], with what is wrong in words for an API error: the text is not
/// an RFC 3339 date-time, or it is one before the Unix epoch (which ms since the epoch
/// cannot hold).
///
/// # Errors
/// The reason, to follow the field's name (`must be an RFC 3339 date-time, ...`).
pub fn parse_rfc3339(text: &str) -> Result<(String, u64), &'static str> {
    const NOT_RFC3339: &str = "must be an RFC 3339 date-time, e.g. 2026-02-19T10:30:00Z";
    let parsed = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| NOT_RFC3339)?;
    let utc = parsed.to_offset(UtcOffset::UTC);
    let ms = u64::try_from(utc.unix_timestamp_nanos() / 1_000_000).map_err(|_| {
        "is before 1970-01-01T00:00:00Z (the Unix epoch): earlier dates are not accepted"
    })?;
    Ok((utc.format(&Rfc3339).map_err(|_| NOT_RFC3339)?, ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_normalized_to_utc_with_z() {
        let (text, ms) = normalize_rfc3339("2026-02-19T12:30:00+02:00").unwrap();
        assert_eq!(text, "2026-02-19T10:30:00Z");
        assert_eq!(format_seconds(ms), "2026-02-19T10:30:00Z");
        assert_eq!(
            normalize_rfc3339("2026-02-19T10:30:00.250Z").unwrap().0,
            "2026-02-19T10:30:00.25Z"
        );
        assert!(normalize_rfc3339("2026-02-19 10:30").is_none());
        assert!(parse_rfc3339("1969-12-31T23:59:59Z")
            .unwrap_err()
            .contains("before 1970"));
        assert!(parse_rfc3339("yesterday").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn ms_format_keeps_three_fraction_digits() {
        assert_eq!(format_ms(1_771_497_000_123), "2026-02-19T10:30:00.123Z");
        assert_eq!(format_ms(1_771_497_000_750), "2026-02-19T10:30:00.750Z");
        assert_eq!(format_ms(1_771_497_000_000), "2026-02-19T10:30:00.000Z");
        assert_eq!(format_seconds(1_771_497_000_999), "2026-02-19T10:30:00Z");
    }
}
