//! Parsing of human durations such as `30s`, `500ms` or `2m` for the CLI.

use std::time::Duration;

/// Parses `<integer><unit>` with unit `ms`, `s`, `m` or `h` (e.g. `500ms`, `30s`, `2m`).
///
/// A bare number is refused rather than guessed: `--duration 30` could mean
/// seconds or milliseconds, and a load test run for the wrong length wastes time.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit; write e.g. 500ms, 30s, 2m or 1h"))?;
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!("`{text}` does not start with a number"));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{digits}` is too large"))?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{text}`; use ms, s, m or h"
            ))
        }
    };
    n.checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 2s "), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn refuses_ambiguous_or_malformed_input() {
        for bad in [
            "30", "", "s", "ms", "1.5s", "-1s", "10 s", "3d", "5sec", "1s2",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn refuses_overflow() {
        assert!(parse_duration("99999999999999999999s").is_err());
        assert!(parse_duration(&format!("{}h", u64::MAX / 1000)).is_err());
    }
}
