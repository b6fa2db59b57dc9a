//! Whether a container's image is pulled before it starts (upstream's `shouldPullImage`).

/// A container's `imagePullPolicy` (defaulted by `model::defaults`: `Always` for a
/// `:latest` or untagged image, `IfNotPresent` otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull at every start, even when the image is present (the registry decides what
    /// "latest" is; an unchanged image costs a manifest round trip).
    Always,
    IfNotPresent,
    /// Never pull: a missing image is `ErrImageNeverPull`.
    Never,
}

impl PullPolicy {
    /// The policy a container names; `None` for a value upstream's validation refuses
    /// (`model::validation` refuses those before a pod gets here). Unset is
    /// `IfNotPresent`, as for a pod that skipped defaulting.
    #[must_use]
    pub fn parse(value: Option<&str>) -> Option<Self> {
        match value {
            Some("Always") => Some(Self::Always),
            None | Some("IfNotPresent") => Some(Self::IfNotPresent),
            Some("Never") => Some(Self::Never),
            Some(_) => None,
        }
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// What to do about a container's image before creating the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The image is present and the policy lets it be used as it is (`Pulled`: "already
    /// present on machine").
    UsePresent,
    /// Ask the runtime to pull it.
    Pull,
    /// Missing under `Never`: `ErrImageNeverPull`.
    NeverPull,
}

/// The decision for `policy` when the runtime has the image (`present`) or not.
#[must_use]
pub fn decide(policy: PullPolicy, present: bool) -> Decision {
    match (policy, present) {
        (PullPolicy::Always, _) | (PullPolicy::IfNotPresent, false) => Decision::Pull,
        (PullPolicy::IfNotPresent | PullPolicy::Never, true) => Decision::UsePresent,
        (PullPolicy::Never, false) => Decision::NeverPull,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_match_upstream_for_every_policy() {
        let table = [
            (PullPolicy::Always, true, Decision::Pull),
            (PullPolicy::Always, false, Decision::Pull),
            (PullPolicy::IfNotPresent, true, Decision::UsePresent),
            (PullPolicy::IfNotPresent, false, Decision::Pull),
            (PullPolicy::Never, true, Decision::UsePresent),
            (PullPolicy::Never, false, Decision::NeverPull),
        ];
        for (policy, present, want) in table {
            assert_eq!(
                decide(policy, present),
                want,
                "{policy:?}, present {present}"
            );
        }
    }

    #[test]
    fn policies_parse_as_spelled_and_unset_is_if_not_present() {
        assert_eq!(PullPolicy::parse(Some("Always")), Some(PullPolicy::Always));
        assert_eq!(PullPolicy::parse(Some("Never")), Some(PullPolicy::Never));
        assert_eq!(
            PullPolicy::parse(Some("IfNotPresent")),
            Some(PullPolicy::IfNotPresent)
        );
        assert_eq!(PullPolicy::parse(None), Some(PullPolicy::IfNotPresent));
        assert_eq!(PullPolicy::parse(Some("always")), None);
        for p in [
            PullPolicy::Always,
            PullPolicy::IfNotPresent,
            PullPolicy::Never,
        ] {
            assert_eq!(PullPolicy::parse(Some(p.as_str())), Some(p));
        }
    }
}
