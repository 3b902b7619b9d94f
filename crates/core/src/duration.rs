//! Human durations (`90s`, `15m`, `1h30m`, `2d`) as used on the CLI, in config and in the API.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::CoreError;

/// A whole number of seconds, written and read in the `1h30m` style.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Ttl(u64);

/// The longest duration accepted anywhere (10 years); beyond it arithmetic on timestamps
/// could overflow, and no credential should live that long.
pub const MAX_SECONDS: u64 = 10 * 365 * 24 * 3600;

impl Ttl {
    pub const fn from_secs(secs: u64) -> Self {
        Ttl(secs)
    }
    pub const fn as_secs(self) -> u64 {
        self.0
    }
    pub fn as_time(self) -> time::Duration {
        time::Duration::seconds(self.0 as i64)
    }
    pub fn min(self, other: Ttl) -> Ttl {
        Ttl(self.0.min(other.0))
    }
}

impl FromStr for Ttl {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| CoreError::invalid("ttl", reason.to_string());
        let s = s.trim();
        if s.is_empty() {
            return Err(bad("empty duration; use e.g. 90s, 15m, 1h"));
        }
        if s.starts_with('-') {
            return Err(bad("duration must not be negative"));
        }
        // A bare number means seconds, as in most tools that take durations.
        if s.bytes().all(|b| b.is_ascii_digit()) {
            let n: u64 = s.parse().map_err(|_| bad("number too large"))?;
            return Ttl::checked(n).ok_or_else(|| bad("duration too long (max 10 years)"));
        }
        let mut total: u64 = 0;
        let mut digits = String::new();
        for c in s.chars() {
            if c.is_ascii_digit() {
                digits.push(c);
                continue;
            }
            let unit = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                _ => return Err(bad(&format!("unknown unit {c:?}; use s, m, h or d"))),
            };
            if digits.is_empty() {
                return Err(bad("a unit must follow a number, e.g. 15m"));
            }
            let n: u64 = digits.parse().map_err(|_| bad("number too large"))?;
            digits.clear();
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| bad("duration too long (max 10 years)"))?;
        }
        if !digits.is_empty() {
            return Err(bad("number without a unit at the end; use e.g. 1h30m"));
        }
        Ttl::checked(total).ok_or_else(|| bad("duration too long (max 10 years)"))
    }
}

impl Ttl {
    fn checked(secs: u64) -> Option<Ttl> {
        (secs <= MAX_SECONDS).then_some(Ttl(secs))
    }
}

impl fmt::Display for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        if rest == 0 {
            return write!(f, "0s");
        }
        for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
            if rest >= size {
                write!(f, "{}{}", rest / size, unit)?;
                rest %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for Ttl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Accept "15m" and plain integer seconds; reject negatives and floats explicitly.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Secs(i64),
            Float(#[allow(dead_code)] f64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
            Raw::Secs(n) if n < 0 => Err(serde::de::Error::custom("duration must not be negative")),
            Raw::Secs(n) => Ttl::checked(n as u64)
                .ok_or_else(|| serde::de::Error::custom("duration too long (max 10 years)")),
            Raw::Float(_) => Err(serde::de::Error::custom(
                "duration must be whole seconds or a string like \"15m\"",
            )),
        }
    }
}

impl utoipa::PartialSchema for Ttl {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "Duration such as `90s`, `15m`, `1h30m`, `2d` (integer seconds also accepted)",
            ))
            .examples([serde_json::json!("15m")])
            .into()
    }
}
impl utoipa::ToSchema for Ttl {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        for (text, secs) in [
            ("90s", 90),
            ("15m", 900),
            ("1h", 3600),
            ("1h30m", 5400),
            ("2d", 172_800),
            ("0s", 0),
            ("45", 45),
        ] {
            assert_eq!(text.parse::<Ttl>().map(Ttl::as_secs), Ok(secs), "{text}");
        }
    }

    #[test]
    fn rejects_bad_forms_with_a_reason() {
        for text in [
            "",
            "-5m",
            "m",
            "15x",
            "1h30",
            "1.5h",
            "99999999999999999999s",
            "4000d",
        ] {
            let parsed = text.parse::<Ttl>();
            assert!(parsed.is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn display_round_trips() {
        for secs in [0, 1, 59, 60, 61, 3599, 3600, 5400, 86_400, 90_061] {
            let t = Ttl::from_secs(secs);
            assert_eq!(t.to_string().parse::<Ttl>(), Ok(t));
        }
    }

    #[test]
    fn json_accepts_strings_and_integers_rejects_negatives_and_floats() {
        assert_eq!(
            serde_json::from_str::<Ttl>("\"15m\"").ok(),
            Some(Ttl::from_secs(900))
        );
        assert_eq!(
            serde_json::from_str::<Ttl>("900").ok(),
            Some(Ttl::from_secs(900))
        );
        assert!(serde_json::from_str::<Ttl>("-1").is_err());
        assert!(serde_json::from_str::<Ttl>("1.5").is_err());
        assert!(serde_json::from_str::<Ttl>("\"-1m\"").is_err());
    }
}
