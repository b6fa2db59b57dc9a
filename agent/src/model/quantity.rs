//! Kubernetes resource quantities ("100Mi", "1Gi", "500m", "1.5", "2e3") turned into numbers.
//!
//! `k8s_openapi`'s `Quantity` is only a string carrier, so this module holds the parser.
//! A quantity is kept exactly as thousandths of a unit (milli-units) in a `u128`; the
//! conversions round up like apimachinery's `Value()` and `MilliValue()` do.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// Why a quantity string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("invalid quantity {0:?}")]
    Syntax(String),
    #[error("invalid quantity {0:?}: must not be negative")]
    Negative(String),
    #[error("invalid quantity {0:?}: too large")]
    TooLarge(String),
}

/// A parsed, non-negative quantity, exact to a thousandth of a unit (finer parts round up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct QuantityValue {
    millis: u128,
}

impl QuantityValue {
    pub const ZERO: Self = Self { millis: 0 };

    /// A quantity of whole units (bytes, cores, inodes...).
    #[must_use]
    pub const fn from_units(units: u64) -> Self {
        Self {
            millis: units as u128 * 1000,
        }
    }

    /// A quantity of thousandths (millicores).
    #[must_use]
    pub const fn from_millis(millis: u64) -> Self {
        Self {
            millis: millis as u128,
        }
    }

    /// Whole units, rounded up (apimachinery `Value()`); saturates at `u64::MAX`.
    #[must_use]
    pub fn units(self) -> u64 {
        u64::try_from(self.millis.div_ceil(1000)).unwrap_or(u64::MAX)
    }

    /// Bytes, for memory and storage quantities (same as [`Self::units`]).
    #[must_use]
    pub fn bytes(self) -> u64 {
        self.units()
    }

    /// Thousandths of a unit (apimachinery `MilliValue()`); saturates at `u64::MAX`.
    #[must_use]
    pub fn millis(self) -> u64 {
        u64::try_from(self.millis).unwrap_or(u64::MAX)
    }

    #[must_use]
    pub fn is_zero(self) -> bool {
        self.millis == 0
    }

    #[must_use]
    pub fn saturating_add(self, other: Self) -> Self {
        Self {
            millis: self.millis.saturating_add(other.millis),
        }
    }
}

impl TryFrom<&Quantity> for QuantityValue {
    type Error = QuantityError;

    fn try_from(q: &Quantity) -> Result<Self, Self::Error> {
        parse_quantity(&q.0)
    }
}

impl std::str::FromStr for QuantityValue {
    type Err = QuantityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_quantity(s)
    }
}

/// Parses a quantity in the Kubernetes syntax: `<decimal><suffix>` where the suffix is a
/// binary SI one (`Ki Mi Gi Ti Pi Ei`), a decimal SI one (`n u m "" k M G T P E`) or a
/// decimal exponent (`e3`, `E-2`). Negative quantities are rejected: nothing bpflet reads
/// from a config or a pod spec may be negative.
///
/// # Errors
/// [`QuantityError`] naming the input when the syntax is wrong, the value is negative, or
/// it does not fit.
pub fn parse_quantity(input: &str) -> Result<QuantityValue, QuantityError> {
    let syntax = || QuantityError::Syntax(input.to_owned());
    let too_large = || QuantityError::TooLarge(input.to_owned());

    let (negative, rest) = match input.as_bytes().first() {
        Some(b'-') => (true, &input[1..]),
        Some(b'+') => (false, &input[1..]),
        _ => (false, input),
    };
    let number_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(syntax());
    }
    if fraction.contains('.') {
        return Err(syntax());
    }

    // mantissa = digits as an integer, scaled down by 10^fraction.len()
    let mut mantissa: u128 = 0;
    for d in whole.bytes().chain(fraction.bytes()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(u128::from(d - b'0')))
            .ok_or_else(too_large)?;
    }
    let mut exp10: i32 = -i32::try_from(fraction.len()).map_err(|_| too_large())?;
    let mut binary: u128 = 1;
    match suffix {
        "" => {}
        "Ki" => binary = 1 << 10,
        "Mi" => binary = 1 << 20,
        "Gi" => binary = 1 << 30,
        "Ti" => binary = 1 << 40,
        "Pi" => binary = 1 << 50,
        "Ei" => binary = 1 << 60,
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        s if s.starts_with(['e', 'E']) => {
            let e: i32 = s[1..].parse().map_err(|_| syntax())?;
            if !s[1..]
                .trim_start_matches(['+', '-'])
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                return Err(syntax());
            }
            exp10 = exp10.checked_add(e).ok_or_else(too_large)?;
        }
        _ => return Err(syntax()),
    }
    if negative && mantissa != 0 {
        return Err(QuantityError::Negative(input.to_owned()));
    }

    // value in millis = mantissa * binary * 10^(exp10 + 3), rounded up.
    let scaled = mantissa.checked_mul(binary).ok_or_else(too_large)?;
    let exp = exp10 + 3;
    let millis = if exp >= 0 {
        let factor = 10u128
            .checked_pow(u32::try_from(exp).map_err(|_| too_large())?)
            .ok_or_else(too_large)?;
        scaled.checked_mul(factor).ok_or_else(too_large)?
    } else {
        match 10u128.checked_pow(exp.unsigned_abs()) {
            Some(divisor) => scaled.div_ceil(divisor),
            // 10^39 and beyond exceeds any mantissa: a tiny non-zero value rounds up to 1m.
            None => u128::from(scaled != 0),
        }
    };
    if millis > u128::from(u64::MAX) * 1000 {
        return Err(too_large());
    }
    Ok(QuantityValue { millis })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_quantities() {
        let cases: &[(&str, u128)] = &[
            ("0", 0),
            ("1", 1000),
            ("100Mi", 100 * 1024 * 1024 * 1000),
            ("1Gi", 1024 * 1024 * 1024 * 1000),
            ("1Ki", 1024 * 1000),
            ("1Ei", (1u128 << 60) * 1000),
            ("500m", 500),
            ("0.5", 500),
            (".5", 500),
            ("1.5Gi", 3 * (1u128 << 29) * 1000),
            ("2k", 2_000_000),
            ("1M", 1_000_000_000),
            ("1G", 1_000_000_000_000),
            ("1e3", 1_000_000),
            ("1E3", 1_000_000),
            ("1e-3", 1),
            ("1n", 1),
            ("1u", 1),
            ("1500u", 2),
            ("+3", 3000),
            ("-0", 0),
            ("128974848", 128_974_848_000),
            ("129e6", 129_000_000_000),
            ("123Mi", 123 * 1024 * 1024 * 1000),
        ];
        for &(input, millis) in cases {
            let got = parse_quantity(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(got.millis, millis, "{input}");
        }
    }

    #[test]
    fn rejects_bad_quantities() {
        let cases: &[(&str, QuantityError)] = &[
            ("", QuantityError::Syntax(String::new())),
            ("Mi", QuantityError::Syntax("Mi".into())),
            ("10Zi", QuantityError::Syntax("10Zi".into())),
            ("10 Mi", QuantityError::Syntax("10 Mi".into())),
            ("1.2.3", QuantityError::Syntax("1.2.3".into())),
            ("1e", QuantityError::Syntax("1e".into())),
            ("1e3.5", QuantityError::Syntax("1e3.5".into())),
            ("10mi", QuantityError::Syntax("10mi".into())),
            ("-1", QuantityError::Negative("-1".into())),
            ("-100Mi", QuantityError::Negative("-100Mi".into())),
            ("1e400", QuantityError::TooLarge("1e400".into())),
            (
                "99999999999Ei",
                QuantityError::TooLarge("99999999999Ei".into()),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse_quantity(input).as_ref(), Err(want), "{input}");
        }
    }

    #[test]
    fn conversions_round_up() {
        let q = parse_quantity("1500m").expect("valid");
        assert_eq!(q.units(), 2);
        assert_eq!(q.millis(), 1500);
        assert_eq!(parse_quantity("100Mi").expect("valid").bytes(), 104_857_600);
        assert_eq!(parse_quantity("250m").expect("valid").millis(), 250);
        assert_eq!(QuantityValue::from_units(3).millis(), 3000);
    }
}
