//! Eviction signals and thresholds: the `evictionHard` / `evictionSoft` map syntax of
//! KubeletConfiguration and the `--eviction-hard` flag syntax (`memory.available<100Mi,...`).

use std::fmt;
use std::time::Duration;

use crate::model::quantity::{QuantityError, QuantityValue, parse_quantity};

/// An eviction signal, by its upstream name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Signal {
    /// `memory.available`: node capacity minus the root cgroup's working set.
    MemoryAvailable,
    /// `allocatableMemory.available`: the kubepods cgroup's limit minus its working set.
    AllocatableMemoryAvailable,
    NodeFsAvailable,
    NodeFsInodesFree,
    ImageFsAvailable,
    ImageFsInodesFree,
    ContainerFsAvailable,
    ContainerFsInodesFree,
    PidAvailable,
}

impl Signal {
    pub const ALL: [Self; 9] = [
        Self::MemoryAvailable,
        Self::AllocatableMemoryAvailable,
        Self::NodeFsAvailable,
        Self::NodeFsInodesFree,
        Self::ImageFsAvailable,
        Self::ImageFsInodesFree,
        Self::ContainerFsAvailable,
        Self::ContainerFsInodesFree,
        Self::PidAvailable,
    ];

    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MemoryAvailable => "memory.available",
            Self::AllocatableMemoryAvailable => "allocatableMemory.available",
            Self::NodeFsAvailable => "nodefs.available",
            Self::NodeFsInodesFree => "nodefs.inodesFree",
            Self::ImageFsAvailable => "imagefs.available",
            Self::ImageFsInodesFree => "imagefs.inodesFree",
            Self::ContainerFsAvailable => "containerfs.available",
            Self::ContainerFsInodesFree => "containerfs.inodesFree",
            Self::PidAvailable => "pid.available",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Signal {
    type Err = ThresholdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|signal| signal.as_str() == s)
            .ok_or_else(|| ThresholdError::UnknownSignal(s.to_owned()))
    }
}

/// How much of a resource must stay available: an absolute quantity (bytes, inodes, pids)
/// or a percentage of capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThresholdValue {
    Quantity(QuantityValue),
    /// A percentage in `(0, 100]`.
    Percentage(f64),
}

impl ThresholdValue {
    /// The absolute amount for a resource of the given capacity (percentages round down).
    #[must_use]
    pub fn amount(self, capacity: u64) -> u64 {
        match self {
            Self::Quantity(q) => q.units(),
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss,
                reason = "a percentage of a u64 capacity fits in u64; sub-unit precision is irrelevant"
            )]
            Self::Percentage(p) => (capacity as f64 * p / 100.0) as u64,
        }
    }

    /// `0` and `0%` disable a threshold, as upstream allows.
    #[must_use]
    pub fn is_zero(self) -> bool {
        match self {
            Self::Quantity(q) => q.is_zero(),
            Self::Percentage(p) => p == 0.0,
        }
    }
}

/// One eviction threshold: `signal < value`, held for `grace_period` (zero for hard ones).
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub signal: Signal,
    pub value: ThresholdValue,
    pub grace_period: Duration,
    /// `evictionMinimumReclaim` for this signal: reclaim this much beyond the threshold.
    pub min_reclaim: Option<ThresholdValue>,
}

/// Why a threshold was rejected. The caller adds the field path and the origin.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ThresholdError {
    #[error("unknown eviction signal {0:?}")]
    UnknownSignal(String),
    #[error("{0:?}: only the \"<\" operator is supported")]
    Operator(String),
    #[error("{0:?}: expected signal<value")]
    Syntax(String),
    #[error("invalid percentage {0:?}: must be a number in [0%, 100%]")]
    Percentage(String),
    #[error(transparent)]
    Quantity(#[from] QuantityError),
}

/// Parses a threshold value: `10%`, `12.5%` or a quantity (`100Mi`, `5k`).
/// `0` and `0%` are accepted: they mean "no threshold" (see [`ThresholdValue::is_zero`]).
///
/// # Errors
/// [`ThresholdError`] when the value is neither a valid percentage nor a quantity.
pub fn parse_threshold_value(value: &str) -> Result<ThresholdValue, ThresholdError> {
    if let Some(percent) = value.strip_suffix('%') {
        let p: f64 = percent
            .parse()
            .map_err(|_| ThresholdError::Percentage(value.to_owned()))?;
        if !(0.0..=100.0).contains(&p) || !percent.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        {
            return Err(ThresholdError::Percentage(value.to_owned()));
        }
        return Ok(ThresholdValue::Percentage(p));
    }
    Ok(ThresholdValue::Quantity(parse_quantity(value)?))
}

/// Splits the `--eviction-hard` / `--eviction-soft` flag syntax
/// (`memory.available<100Mi,nodefs.available<10%`) into (signal, value) string pairs.
///
/// # Errors
/// [`ThresholdError`] naming the malformed entry.
pub fn split_threshold_flag(flag: &str) -> Result<Vec<(String, String)>, ThresholdError> {
    let mut out = Vec::new();
    for entry in flag.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if entry.contains(['>', '=']) && !entry.contains('<') {
            return Err(ThresholdError::Operator(entry.to_owned()));
        }
        let (signal, value) = entry
            .split_once('<')
            .ok_or_else(|| ThresholdError::Syntax(entry.to_owned()))?;
        if value.starts_with('=') {
            return Err(ThresholdError::Operator(entry.to_owned()));
        }
        out.push((signal.trim().to_owned(), value.trim().to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_values() {
        let mi100 = ThresholdValue::Quantity(parse_quantity("100Mi").expect("valid"));
        let cases: &[(&str, Result<ThresholdValue, ThresholdError>)] = &[
            ("100Mi", Ok(mi100)),
            ("10%", Ok(ThresholdValue::Percentage(10.0))),
            ("12.5%", Ok(ThresholdValue::Percentage(12.5))),
            ("0%", Ok(ThresholdValue::Percentage(0.0))),
            ("101%", Err(ThresholdError::Percentage("101%".into()))),
            ("-5%", Err(ThresholdError::Percentage("-5%".into()))),
            ("abc%", Err(ThresholdError::Percentage("abc%".into()))),
            ("inf%", Err(ThresholdError::Percentage("inf%".into()))),
            (
                "10Zi",
                Err(ThresholdError::Quantity(QuantityError::Syntax(
                    "10Zi".into(),
                ))),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&parse_threshold_value(input), want, "{input}");
        }
    }

    #[test]
    fn flag_syntax() {
        assert_eq!(
            split_threshold_flag("memory.available<100Mi, nodefs.available<10%").expect("valid"),
            vec![
                ("memory.available".to_owned(), "100Mi".to_owned()),
                ("nodefs.available".to_owned(), "10%".to_owned()),
            ]
        );
        assert_eq!(
            split_threshold_flag("memory.available>100Mi"),
            Err(ThresholdError::Operator("memory.available>100Mi".into()))
        );
        assert_eq!(
            split_threshold_flag("memory.available<=100Mi"),
            Err(ThresholdError::Operator("memory.available<=100Mi".into()))
        );
        assert_eq!(
            split_threshold_flag("memory.available"),
            Err(ThresholdError::Syntax("memory.available".into()))
        );
        assert_eq!(split_threshold_flag("").expect("empty is valid"), vec![]);
    }

    #[test]
    fn signals_round_trip() {
        for signal in Signal::ALL {
            assert_eq!(signal.as_str().parse::<Signal>(), Ok(signal));
        }
        assert_eq!(
            "memory.free".parse::<Signal>(),
            Err(ThresholdError::UnknownSignal("memory.free".into()))
        );
    }

    #[test]
    fn amounts() {
        assert_eq!(ThresholdValue::Percentage(10.0).amount(1000), 100);
        let q = ThresholdValue::Quantity(QuantityValue::from_units(42));
        assert_eq!(q.amount(1000), 42);
    }
}
