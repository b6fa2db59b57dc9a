//! Upstream's eviction message, byte for byte, and the canonical quantity strings it
//! contains (apimachinery `Quantity.String()`).
//!
//! ```text
//! The node was low on resource: memory. Threshold quantity: 100Mi, available: 86528Ki. Container app was using 812Mi, request is 100Mi, has larger consumption of memory.
//! ```
//!
//! - `Threshold quantity: ..., available: ... ` appears only for a threshold given as a
//!   quantity (not a percentage), as upstream.
//! - One `Container <name> was using <usage>, request is <request>, has larger consumption
//!   of <resource>. ` fragment per app container whose usage exceeds its request; only for
//!   memory (bpflet has no per-container disk statistics, and upstream prints nothing for a
//!   container without statistics either).
//! - Memory and disk bytes print in binary SI (`86528Ki`), inodes and pids in decimal SI.
//! - The threshold's own spelling is lost by the config parser; it prints in whichever
//!   canonical form is shorter (`100Mi`, `500M`, `2G`), which is how it was written unless it
//!   was written in a non-canonical way.

use crate::config::eviction::{Signal, ThresholdValue};
use crate::model::quantity::{QuantityValue, parse_quantity};

use super::pod::PodUsage;
use super::rank::Resource;
use super::signals::Observation;

/// apimachinery's quantity formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `Ki Mi Gi Ti Pi Ei`.
    BinarySi,
    /// `k M G T P E`.
    DecimalSi,
    /// `e3`, `e6`, ...
    DecimalExponent,
}

const DECIMAL_SUFFIXES: [&str; 7] = ["", "k", "M", "G", "T", "P", "E"];
const BINARY_SUFFIXES: [&str; 7] = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

/// `Quantity.String()` of a whole, non-negative amount in the given format.
#[must_use]
pub fn format_quantity(value: u64, format: Format) -> String {
    let (mantissa, step) = match format {
        // Upstream prints amounts below 1024 in decimal to avoid confusion.
        Format::BinarySi if value >= 1024 => remove_factors(value, 1024),
        _ => remove_factors(value, 1000),
    };
    match format {
        Format::BinarySi if value >= 1024 => format!("{mantissa}{}", BINARY_SUFFIXES[step]),
        Format::DecimalExponent if step > 0 => format!("{mantissa}e{}", step * 3),
        _ => format!("{mantissa}{}", DECIMAL_SUFFIXES[step]),
    }
}

/// Divides out `factor` as often as it goes, at most 6 times (the largest suffix).
fn remove_factors(mut value: u64, factor: u64) -> (u64, usize) {
    let mut step = 0;
    while value != 0 && value.is_multiple_of(factor) && step < 6 {
        value /= factor;
        step += 1;
    }
    (value, step)
}

/// How a quantity string prints once parsed: canonical, in the format of its suffix.
/// Unparseable strings print as given; the manifest validator keeps them out anyway.
#[must_use]
pub fn canonical(quantity: &str) -> String {
    let Ok(parsed) = parse_quantity(quantity) else {
        return quantity.to_owned();
    };
    format_quantity(parsed.units(), quantity_format(quantity))
}

/// The format a quantity string is written in, from its suffix (as apimachinery keeps it).
#[must_use]
pub fn quantity_format(quantity: &str) -> Format {
    let suffix = quantity.trim_start_matches(|c: char| c.is_ascii_digit() || "+-.".contains(c));
    if BINARY_SUFFIXES[1..].contains(&suffix) {
        Format::BinarySi
    } else if suffix.starts_with(['e', 'E']) {
        Format::DecimalExponent
    } else {
        Format::DecimalSi
    }
}

/// The resource a threshold's quantities are in decides their format.
fn signal_format(signal: Signal) -> Format {
    match signal {
        Signal::NodeFsInodesFree
        | Signal::ImageFsInodesFree
        | Signal::ContainerFsInodesFree
        | Signal::PidAvailable => Format::DecimalSi,
        _ => Format::BinarySi,
    }
}

/// A configured threshold amount, in the shorter of its two canonical forms (ties: the
/// signal's own format).
fn threshold_quantity(value: u64, signal: Signal) -> String {
    let own = format_quantity(value, signal_format(signal));
    let other = format_quantity(
        value,
        match signal_format(signal) {
            Format::BinarySi => Format::DecimalSi,
            _ => Format::BinarySi,
        },
    );
    if other.len() < own.len() { other } else { own }
}

/// A container that used more than it requested, for the message and the annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offender {
    pub container: String,
    /// Canonical usage, e.g. `812Mi`.
    pub usage: String,
}

/// Builds upstream's eviction message for `pod`, evicted because `signal` fell below
/// `value` with `observed` available; also returns the containers named in it.
#[must_use]
pub fn eviction_message(
    resource: Resource,
    signal: Signal,
    value: ThresholdValue,
    observed: Option<Observation>,
    pod: &PodUsage,
) -> (String, Vec<Offender>) {
    let mut message = format!("The node was low on resource: {}. ", resource.as_str());
    if let (ThresholdValue::Quantity(q), Some(observed)) = (value, observed) {
        message.push_str(&format!(
            "Threshold quantity: {}, available: {}. ",
            threshold_quantity(q.units(), signal),
            format_quantity(observed.available, signal_format(signal)),
        ));
    }
    let mut offenders = Vec::new();
    if resource == Resource::Memory {
        for c in &pod.containers {
            let Some(usage) = c.memory_working_set else {
                continue;
            };
            let request = c
                .memory_request
                .as_deref()
                .and_then(|r| parse_quantity(r).ok())
                .map_or(0, QuantityValue::bytes);
            if usage > request {
                let usage = format_quantity(usage, Format::BinarySi);
                let request = c
                    .memory_request
                    .as_deref()
                    .map_or_else(|| "0".to_owned(), canonical);
                message.push_str(&format!(
                    "Container {} was using {usage}, request is {request}, has larger consumption of {}. ",
                    c.name,
                    resource.as_str(),
                ));
                offenders.push(Offender {
                    container: c.name.clone(),
                    usage,
                });
            }
        }
    }
    (message, offenders)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::eviction::pod::ContainerUsage;
    use crate::model::qos::QosClass;

    const MI: u64 = 1 << 20;

    #[test]
    fn quantities_print_canonically() {
        let cases: &[(u64, Format, &str)] = &[
            (0, Format::BinarySi, "0"),
            (512, Format::BinarySi, "512"),
            (1000, Format::BinarySi, "1k"),
            (1024, Format::BinarySi, "1Ki"),
            (100 * MI, Format::BinarySi, "100Mi"),
            (88_604_672, Format::BinarySi, "86528Ki"),
            (52_428_800, Format::BinarySi, "50Mi"),
            (1 << 30, Format::BinarySi, "1Gi"),
            (1_048_576_001, Format::BinarySi, "1048576001"),
            (1 << 60, Format::BinarySi, "1Ei"),
            (1 << 63, Format::BinarySi, "8Ei"),
            (0, Format::DecimalSi, "0"),
            (999, Format::DecimalSi, "999"),
            (1000, Format::DecimalSi, "1k"),
            (1200, Format::DecimalSi, "1200"),
            (5_000_000, Format::DecimalSi, "5M"),
            (32_768, Format::DecimalSi, "32768"),
            (128_000_000, Format::DecimalExponent, "128e6"),
            (17, Format::DecimalExponent, "17"),
        ];
        for &(value, format, want) in cases {
            assert_eq!(format_quantity(value, format), want, "{value} {format:?}");
        }
    }

    #[test]
    fn request_strings_print_canonically() {
        for (input, want) in [
            ("100Mi", "100Mi"),
            ("0.5Gi", "512Mi"),
            ("1024Mi", "1Gi"),
            ("1000Mi", "1000Mi"),
            ("128M", "128M"),
            ("1000M", "1G"),
            ("1.5G", "1500M"),
            ("1e3", "1e3"),
            ("1000", "1k"),
            ("512", "512"),
            ("bogus", "bogus"),
        ] {
            assert_eq!(canonical(input), want, "{input}");
        }
    }

    #[test]
    fn thresholds_print_in_the_shorter_form() {
        for (value, signal, want) in [
            (100 * MI, Signal::MemoryAvailable, "100Mi"),
            (500_000_000, Signal::MemoryAvailable, "500M"),
            (2_000_000_000, Signal::MemoryAvailable, "2G"),
            (65_536, Signal::MemoryAvailable, "64Ki"),
            (5000, Signal::PidAvailable, "5k"),
            (4096, Signal::NodeFsInodesFree, "4Ki"),
            (1000, Signal::NodeFsInodesFree, "1k"),
        ] {
            assert_eq!(threshold_quantity(value, signal), want, "{value}");
        }
    }

    fn usage(containers: &[(&str, Option<&str>, Option<u64>)]) -> PodUsage {
        PodUsage {
            uid: "u".into(),
            name: "default/p".into(),
            qos: QosClass::Burstable,
            priority: 0,
            critical: false,
            grace_period: Duration::from_secs(30),
            memory_request: 0,
            memory_working_set: None,
            storage_request: 0,
            disk_bytes: None,
            inodes: None,
            processes: None,
            containers: containers
                .iter()
                .map(|&(name, request, ws)| ContainerUsage {
                    name: name.into(),
                    memory_request: request.map(str::to_owned),
                    memory_working_set: ws,
                })
                .collect(),
        }
    }

    /// (name, resource, signal, threshold, observation, pod, message)
    type Case = (
        &'static str,
        Resource,
        Signal,
        ThresholdValue,
        Option<Observation>,
        PodUsage,
        &'static str,
    );

    #[test]
    fn messages_match_upstream() {
        let mi100 = ThresholdValue::Quantity(QuantityValue::from_units(100 * MI));
        let observed = Some(Observation {
            available: 51_200 * 1024 + 4096,
            capacity: 8 << 30,
        });
        let cases: Vec<Case> = vec![
            (
                "one container over its request, one under, one without stats",
                Resource::Memory,
                Signal::MemoryAvailable,
                mi100,
                observed,
                usage(&[
                    ("app", Some("100Mi"), Some(812 * MI)),
                    ("side", Some("64Mi"), Some(10 * MI)),
                    ("gone", None, None),
                ]),
                "The node was low on resource: memory. Threshold quantity: 100Mi, available: 51204Ki. \
                 Container app was using 812Mi, request is 100Mi, has larger consumption of memory. ",
            ),
            (
                "no request prints 0",
                Resource::Memory,
                Signal::AllocatableMemoryAvailable,
                mi100,
                Some(Observation {
                    available: 3 * MI,
                    capacity: 300 * MI,
                }),
                usage(&[("hog", None, Some(250 * MI + 512))]),
                "The node was low on resource: memory. Threshold quantity: 100Mi, available: 3Mi. \
                 Container hog was using 262144512, request is 0, has larger consumption of memory. ",
            ),
            (
                "percentage thresholds print no quantity",
                Resource::EphemeralStorage,
                Signal::NodeFsAvailable,
                ThresholdValue::Percentage(10.0),
                observed,
                usage(&[("app", Some("1Mi"), Some(812 * MI))]),
                "The node was low on resource: ephemeral-storage. ",
            ),
            (
                "pids in decimal",
                Resource::Pids,
                Signal::PidAvailable,
                ThresholdValue::Quantity(QuantityValue::from_units(1000)),
                Some(Observation {
                    available: 800,
                    capacity: 32_768,
                }),
                usage(&[]),
                "The node was low on resource: pids. Threshold quantity: 1k, available: 800. ",
            ),
            (
                "no observation, no quantity",
                Resource::Inodes,
                Signal::NodeFsInodesFree,
                ThresholdValue::Quantity(QuantityValue::from_units(1000)),
                None,
                usage(&[]),
                "The node was low on resource: inodes. ",
            ),
        ];
        for (name, resource, signal, value, observed, pod, want) in cases {
            let (message, _) = eviction_message(resource, signal, value, observed, &pod);
            assert_eq!(message, want, "{name}");
        }
    }

    #[test]
    fn offenders_are_reported() {
        let pod = usage(&[
            ("a", Some("1Mi"), Some(2 * MI)),
            ("b", Some("1Gi"), Some(2 * MI)),
            ("c", None, Some(1)),
        ]);
        let (_, offenders) = eviction_message(
            Resource::Memory,
            Signal::MemoryAvailable,
            ThresholdValue::Percentage(5.0),
            None,
            &pod,
        );
        assert_eq!(
            offenders,
            [
                Offender {
                    container: "a".into(),
                    usage: "2Mi".into()
                },
                Offender {
                    container: "c".into(),
                    usage: "1".into()
                },
            ]
        );
    }
}
