//! Times on the command line, in recordings and in the approvals table.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A `--since`/`--until` TIME: RFC 3339 in UTC (`2026-11-28T17:00:00Z`;
/// the `Z` may be left out) or a duration before `now` (`2h`, `30m`,
/// `1day 6h`).
pub fn parse(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    let text = text.trim();
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        return Ok(at);
    }
    match humantime::parse_duration(text) {
        Ok(ago) => now
            .checked_sub(ago)
            .filter(|at| *at >= UNIX_EPOCH)
            .ok_or_else(|| format!("{text} ago is before 1970")),
        Err(_) => Err(format!(
            "{text:?} is neither an RFC 3339 UTC time (2026-11-28T17:00:00Z) nor a duration before now (2h, 30m, 1day)"
        )),
    }
}

/// [`parse`] relative to the current time, for clap.
pub fn parse_arg(text: &str) -> Result<SystemTime, String> {
    parse(text, SystemTime::now())
}

/// A recorded time (RFC 3339 UTC, as the format writes it).
pub fn recorded(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text).ok()
}

/// The start of a session from its id (`20261128T175300Z-...`).
pub fn from_session_id(session: &str) -> Option<SystemTime> {
    let stamp = session.get(..16)?;
    let b = stamp.as_bytes();
    let shaped = b[8] == b'T' && b[15] == b'Z' && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit);
    if !shaped {
        return None;
    }
    let at = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &stamp[0..4],
        &stamp[4..6],
        &stamp[6..8],
        &stamp[9..11],
        &stamp[11..13],
        &stamp[13..15]
    );
    humantime::parse_rfc3339(&at).ok()
}

/// A time to the second, RFC 3339 UTC.
pub fn seconds(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A duration in microseconds, short: `850 us`, `12.3 ms`, `4.20 s`.
pub fn micros(us: u64) -> String {
    let d = Duration::from_micros(us);
    if us < 1_000 {
        format!("{us} us")
    } else if us < 1_000_000 {
        format!("{:.1} ms", d.as_secs_f64() * 1_000.0)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// A duration as kubectl shows ages, to the second and in its two largest
/// units: `45s`, `4m12s`, `2h5m`, `3d4h`.
pub fn short(d: Duration) -> String {
    let s = d.as_secs();
    let (days, hours, minutes, seconds) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    let pair = |big: u64, big_unit: &str, small: u64, small_unit: &str| {
        if small == 0 {
            format!("{big}{big_unit}")
        } else {
            format!("{big}{big_unit}{small}{small_unit}")
        }
    };
    if days > 0 {
        pair(days, "d", hours, "h")
    } else if hours > 0 {
        pair(hours, "h", minutes, "m")
    } else if minutes > 0 {
        pair(minutes, "m", seconds, "s")
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).unwrap()
    }

    #[test]
    fn times_are_rfc3339_or_a_duration_ago() {
        let now = at("2026-11-28T19:00:00Z");
        assert_eq!(parse("2026-11-28T17:00:00Z", now), Ok(at("2026-11-28T17:00:00Z")));
        assert_eq!(parse("2026-11-28T17:00:00", now), Ok(at("2026-11-28T17:00:00Z")));
        assert_eq!(parse("2h", now), Ok(at("2026-11-28T17:00:00Z")));
        assert_eq!(parse("1day 30m", now), Ok(at("2026-11-27T18:30:00Z")));
        let e = parse("yesterday", now).unwrap_err();
        assert!(e.contains("neither an RFC 3339"), "{e}");
        assert!(parse("100000years", now).is_err());
    }

    #[test]
    fn session_ids_carry_their_start() {
        assert_eq!(
            from_session_id("20261128T175300Z-0011223344556677"),
            Some(at("2026-11-28T17:53:00Z"))
        );
        assert_eq!(from_session_id("not-a-session-id-at-all"), None);
        assert_eq!(from_session_id("20261128X175300Z-00"), None);
        assert_eq!(from_session_id("short"), None);
    }

    #[test]
    fn durations_read_short() {
        assert_eq!(micros(850), "850 us");
        assert_eq!(micros(12_340), "12.3 ms");
        assert_eq!(micros(4_200_000), "4.20 s");
    }

    #[test]
    fn short_durations_read_like_kubectl_ages() {
        let s = Duration::from_secs;
        assert_eq!(short(s(0)), "0s");
        assert_eq!(short(s(45)), "45s");
        assert_eq!(short(s(252)), "4m12s");
        assert_eq!(short(s(300)), "5m");
        assert_eq!(short(s(2 * 3_600 + 5 * 60 + 59)), "2h5m");
        assert_eq!(short(s(3 * 86_400 + 4 * 3_600 + 7)), "3d4h");
        assert_eq!(short(s(86_400)), "1d");
    }
}
