//! `featureGates` (and `--feature-gates`): upstream's kubelet knows a fixed set of gates,
//! each with a default, and refuses a name it does not know and a locked gate set against its
//! lock. bpflet knows the same set ([`KNOWN`], upstream v1.34.4's kubelet) and accepts a gate
//! set to its default; a gate set to anything else asks for a behaviour bpflet does not have
//! and is refused naming the gate.

mod known;

pub use self::known::KNOWN;

/// One of upstream's feature gates as the kubelet v1.34.4 registers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gate {
    pub name: &'static str,
    pub default: bool,
    /// `ALPHA`, `BETA`, `GA` or `DEPRECATED` (empty for `AllAlpha` / `AllBeta`).
    pub stage: &'static str,
    /// Locked to its default: upstream refuses any other value.
    pub locked: bool,
}

/// The gate named `name`, if upstream's kubelet knows it.
#[must_use]
pub fn find(name: &str) -> Option<&'static Gate> {
    KNOWN
        .binary_search_by(|g| g.name.cmp(name))
        .ok()
        .map(|i| &KNOWN[i])
}

/// Whether `name=value` is accepted; the reason when it is not.
///
/// # Errors
/// The gate is unknown (upstream's `unrecognized feature gate`), locked to the other value
/// (upstream's message), or set to a value other than its default.
pub fn check(name: &str, value: bool) -> Result<(), String> {
    let Some(gate) = find(name) else {
        return Err(format!(
            "unrecognized feature gate: {name} (not a gate of the kubelet v1.34.4)"
        ));
    };
    if value == gate.default {
        return Ok(());
    }
    if gate.locked {
        return Err(format!(
            "cannot set feature gate {name} to {value}, feature is locked to {}",
            gate.default
        ));
    }
    let stage = if gate.stage.is_empty() {
        String::new()
    } else {
        format!("{} gate, ", gate.stage)
    };
    Err(format!(
        "{value} is not supported ({stage}{} by default): bpflet implements the default \
         behaviour only; remove it or set it to {}",
        gate.default, gate.default
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_has_no_duplicates() {
        assert!(KNOWN.len() > 100, "{} gates", KNOWN.len());
        for pair in KNOWN.windows(2) {
            assert!(pair[0].name < pair[1].name, "{:?} / {:?}", pair[0], pair[1]);
        }
    }

    #[test]
    fn gates_at_their_defaults_are_accepted_others_refused_naming_why() {
        for gate in KNOWN {
            assert_eq!(check(gate.name, gate.default), Ok(()), "{gate:?}");
            let err = check(gate.name, !gate.default).expect_err(gate.name);
            if gate.locked {
                assert!(err.contains("is locked to"), "{err}");
            } else {
                assert!(err.contains("bpflet implements the default"), "{err}");
            }
        }
        let err = check("NoSuchGate", true).expect_err("unknown");
        assert!(
            err.starts_with("unrecognized feature gate: NoSuchGate"),
            "{err}"
        );
        // Names are case-sensitive, as upstream's.
        let first = KNOWN[0].name.to_lowercase();
        assert!(check(&first, KNOWN[0].default).is_err());
    }
}
