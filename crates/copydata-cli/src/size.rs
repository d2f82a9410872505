//! Sizes on the command line, written as people write them: a number of
//! bytes with an optional unit.
//!
//! | unit | multiplier |
//! |---|---|
//! | none, `B` | 1 |
//! | `kB`/`KB`, `MB`, `GB`, `TB` | 1000, 1000², 1000³, 1000⁴ (decimal, SI) |
//! | `KiB`, `MiB`, `GiB`, `TiB` | 1024, 1024², 1024³, 1024⁴ (binary, IEC) |
//! | a bare `k`, `m`, `g`, `t` | 1024, 1024², 1024³, 1024⁴ (binary, as `dd` and `head -c` read them) |
//!
//! Units are matched without regard to case (`kb`, `Kib`, `M`), a space may
//! stand between the number and the unit (`64 KiB`), and the number is a
//! whole number. A size that does not fit in 64 bits is an error.

use std::fmt;

/// Why a size on the command line was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeError {
    /// No whole number of bytes in front of the unit (empty, `1.5MiB`,
    /// `-1`).
    NotANumber {
        /// The argument as given.
        input: String,
    },
    /// A unit that is not one of those in the module's table.
    UnknownUnit {
        /// The argument as given.
        input: String,
        /// The unit part of it.
        unit: String,
    },
    /// The size does not fit in 64 bits.
    TooLarge {
        /// The argument as given.
        input: String,
    },
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeError::NotANumber { input } => {
                write!(
                    f,
                    "{input:?} is not a size: a whole number of bytes with an optional unit (4096, 1kB, 64KiB, 2GiB)"
                )
            }
            SizeError::UnknownUnit { input, unit } => write!(
                f,
                "unknown unit {unit:?} in {input:?}; accepted: B, kB/KB, MB, GB, TB (powers of 1000), \
                 KiB, MiB, GiB, TiB and a bare k, m, g, t (powers of 1024), in any case"
            ),
            SizeError::TooLarge { input } => {
                write!(f, "{input:?} is too large (the largest size is {} bytes)", u64::MAX)
            }
        }
    }
}

impl std::error::Error for SizeError {}

/// The multiplier of a unit, matched without regard to case.
fn multiplier(unit: &str) -> Option<u64> {
    const K: u64 = 1000;
    const KI: u64 = 1024;
    Some(match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => K,
        "mb" => K.pow(2),
        "gb" => K.pow(3),
        "tb" => K.pow(4),
        "k" | "kib" => KI,
        "m" | "mib" => KI.pow(2),
        "g" | "gib" => KI.pow(3),
        "t" | "tib" => KI.pow(4),
        _ => return None,
    })
}

/// Parses a size such as `4096`, `1kB` (1000), `64KiB` or `64k` (65536).
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let unit = unit.trim_start();
    if digits.is_empty() || unit.starts_with(['.', ',']) {
        return Err(SizeError::NotANumber { input: s.to_owned() });
    }
    let Some(multiplier) = multiplier(unit) else {
        return Err(SizeError::UnknownUnit { input: s.to_owned(), unit: unit.to_owned() });
    };
    // Only digits here: a failed parse is a number past u64::MAX.
    let n: u64 = digits.parse().map_err(|_| SizeError::TooLarge { input: s.to_owned() })?;
    n.checked_mul(multiplier).ok_or_else(|| SizeError::TooLarge { input: s.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::{SizeError, parse_size};

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("3k"), Ok(3072));
        assert!(parse_size("").is_err());
        assert!(parse_size("1.5MiB").is_err());
        assert!(parse_size("10XB").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn decimal_units_are_powers_of_1000() {
        assert_eq!(parse_size("1kB"), Ok(1000));
        assert_eq!(parse_size("1KB"), Ok(1000));
        assert_eq!(parse_size("1kb"), Ok(1000));
        assert_eq!(parse_size("5MB"), Ok(5_000_000));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("3TB"), Ok(3_000_000_000_000));
    }

    #[test]
    fn binary_units_are_powers_of_1024() {
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("1kib"), Ok(1024));
        assert_eq!(parse_size("5MiB"), Ok(5 << 20));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        // A bare letter is binary, in any case.
        for (unit, shift) in [("k", 10), ("K", 10), ("m", 20), ("M", 20), ("g", 30), ("G", 30), ("t", 40), ("T", 40)] {
            assert_eq!(parse_size(&format!("7{unit}")), Ok(7 << shift), "{unit}");
        }
    }

    #[test]
    fn bytes_and_spacing() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("12B"), Ok(12));
        assert_eq!(parse_size("12b"), Ok(12));
        assert_eq!(parse_size(" 64 KiB "), Ok(65536));
        assert_eq!(parse_size("007"), Ok(7));
    }

    #[test]
    fn not_numbers() {
        for bad in ["", " ", "KiB", "-1", "+1", "1.5MiB", "1,5MB", "0x10", "1e6", "½k"] {
            let e = parse_size(bad).unwrap_err();
            assert!(matches!(e, SizeError::NotANumber { .. } | SizeError::UnknownUnit { .. }), "{bad:?}: {e:?}");
        }
        assert!(matches!(parse_size("1.5MiB"), Err(SizeError::NotANumber { .. })));
    }

    #[test]
    fn an_unknown_unit_names_the_accepted_ones() {
        let e = parse_size("10XB").unwrap_err();
        assert_eq!(e, SizeError::UnknownUnit { input: "10XB".into(), unit: "XB".into() });
        let text = e.to_string();
        for unit in ["\"XB\"", "kB", "MB", "GB", "KiB", "MiB", "GiB", "bare k, m, g"] {
            assert!(text.contains(unit), "{unit} missing from {text}");
        }
        assert!(matches!(parse_size("1 mebibyte"), Err(SizeError::UnknownUnit { .. })));
        assert!(matches!(parse_size("1KiBB"), Err(SizeError::UnknownUnit { .. })));
    }

    #[test]
    fn overflow_is_an_error() {
        let max = u64::MAX.to_string();
        assert_eq!(parse_size(&max), Ok(u64::MAX));
        assert!(matches!(parse_size(&format!("{max}0")), Err(SizeError::TooLarge { .. })));
        assert!(matches!(parse_size(&format!("{max}B")), Ok(u64::MAX)));
        assert!(matches!(parse_size("99999999999TiB"), Err(SizeError::TooLarge { .. })));
        assert!(matches!(parse_size("18446744073709552kB"), Err(SizeError::TooLarge { .. })));
        assert_eq!(parse_size("18446744073709551kB"), Ok(18_446_744_073_709_551_000));
        assert!(matches!(parse_size("16777216TiB"), Err(SizeError::TooLarge { .. })));
        assert_eq!(parse_size("16777215TiB"), Ok(16_777_215 << 40));
        assert!(
            parse_size("999999999999999999999999999999999999999999").unwrap_err().to_string().contains("too large")
        );
    }
}
