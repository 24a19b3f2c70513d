//! SIZE arguments: "4GiB", "512M", "1.5GB", "1048576", "25%".
//!
//! Kept apart from the CLI so it can be property-tested on its own: the parser must
//! reject anything odd with a message, never panic or overflow.

use std::fmt;

/// A size as the user wrote it: absolute bytes or a share of something measured at mount time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SizeSpec {
    Bytes(u64),
    /// Percent in (0, 100].
    Percent(f64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeError {
    pub input: String,
    pub reason: &'static str,
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid size '{}': {}", self.input, self.reason)
    }
}

const UNITS: &[(&str, u64)] = &[
    ("", 1),
    ("b", 1),
    ("k", 1 << 10),
    ("kib", 1 << 10),
    ("kb", 1_000),
    ("m", 1 << 20),
    ("mib", 1 << 20),
    ("mb", 1_000_000),
    ("g", 1 << 30),
    ("gib", 1 << 30),
    ("gb", 1_000_000_000),
    ("t", 1 << 40),
    ("tib", 1 << 40),
    ("tb", 1_000_000_000_000),
];

/// Parses a SIZE argument. `allow_percent` is false where a share makes no sense (chunk size).
pub fn parse_size(input: &str, allow_percent: bool) -> Result<SizeSpec, SizeError> {
    let err = |reason| SizeError {
        input: input.to_string(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    if let Some(num) = s.strip_suffix('%') {
        if !allow_percent {
            return Err(err("a percentage is not allowed here"));
        }
        let pct = parse_number(num.trim()).ok_or_else(|| err("expected a number before '%'"))?;
        if pct <= 0.0 || pct > 100.0 {
            return Err(err("a percentage must be more than 0% and at most 100%"));
        }
        return Ok(SizeSpec::Percent(pct));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value = parse_number(num).ok_or_else(|| {
        err("expected a number with an optional unit, e.g. 512MiB, 4G, 1.5GB or 25%")
    })?;
    let unit = unit.trim().to_ascii_lowercase();
    let mult = UNITS
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, m)| *m)
        .ok_or_else(|| err("unknown unit (use K, M, G, T, KiB..TiB, KB..TB or B)"))?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(err("too large"));
    }
    Ok(SizeSpec::Bytes(bytes.round() as u64))
}

/// A plain non-negative decimal: digits with at most one '.', no sign, no exponent.
fn parse_number(s: &str) -> Option<f64> {
    if s.is_empty() || s == "." || s.matches('.').count() > 1 {
        return None;
    }
    if !s.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

impl SizeSpec {
    /// Resolves against the quantity a percentage refers to.
    pub fn resolve(self, whole: u64) -> u64 {
        match self {
            SizeSpec::Bytes(b) => b,
            SizeSpec::Percent(p) => (whole as f64 * p / 100.0) as u64,
        }
    }
}

/// "1.5 GiB"-style rendering for messages.
pub fn human(bytes: u64) -> String {
    const STEPS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < STEPS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", STEPS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: &str) -> u64 {
        match parse_size(s, true).unwrap() {
            SizeSpec::Bytes(b) => b,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn units() {
        assert_eq!(bytes("0"), 0);
        assert_eq!(bytes("1048576"), 1 << 20);
        assert_eq!(bytes("512B"), 512);
        assert_eq!(bytes("4K"), 4096);
        assert_eq!(bytes("4KiB"), 4096);
        assert_eq!(bytes("4kb"), 4000);
        assert_eq!(bytes("512M"), 512 << 20);
        assert_eq!(bytes("1.5GiB"), 3 << 29);
        assert_eq!(bytes("2GB"), 2_000_000_000);
        assert_eq!(bytes("1T"), 1 << 40);
        assert_eq!(bytes(" 64 MiB "), 64 << 20);
    }

    #[test]
    fn percentages() {
        assert_eq!(parse_size("25%", true), Ok(SizeSpec::Percent(25.0)));
        assert_eq!(parse_size("100%", true), Ok(SizeSpec::Percent(100.0)));
        assert_eq!(SizeSpec::Percent(50.0).resolve(1000), 500);
        assert!(parse_size("25%", false).is_err());
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "12XB",
            "-5",
            "150%",
            "0%",
            "-1%",
            "1e3",
            "1..2",
            ".",
            "MiB",
            "1.2.3G",
            "nan",
            "inf",
            "5 %%",
            "99999999999999999999T",
            "+5",
        ] {
            let e = parse_size(bad, true).expect_err(bad);
            assert!(e.to_string().contains(bad.trim()), "{e}");
        }
    }

    /// Property: any string at all parses or fails, never panics; accepted byte sizes round-trip.
    #[test]
    fn never_panics_on_arbitrary_input() {
        let alphabet: Vec<char> = "0123456789.%-+ eEkKmMgGtTiIbB\u{e9}xX\0".chars().collect();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 12) as usize;
            let s: String = (0..len)
                .map(|i| alphabet[((state >> (i * 5)) as usize) % alphabet.len()])
                .collect();
            let _ = parse_size(&s, true);
        }
        for n in [0u64, 1, 4095, 1 << 30, u32::MAX as u64] {
            assert_eq!(bytes(&n.to_string()), n);
        }
    }
}
