//! Which sysctls a pod may set (`spec.securityContext.sysctls`), as upstream's sysctl
//! admission handler decides it.
//!
//! - The safe set ([`SAFE_SYSCTLS`], upstream v1.34's `SafeSysctlAllowlist`) is always
//!   allowed: each is namespaced and affects only the pod that sets it. A sysctl that a
//!   kernel namespaced only in a later version is left out on an older kernel.
//! - `allowedUnsafeSysctls` (`--allowed-unsafe-sysctls`) adds names or prefix patterns
//!   ending in `*` (`kernel.msg*`). A pattern must name sysctls the kernel namespaces (IPC:
//!   `kernel.sem`, `kernel.shm*`, `kernel.msg*`, `fs.mqueue.*`; network: `net.*`), or the
//!   configuration is refused: a node-wide sysctl set from a pod would change the node.
//! - A network sysctl needs the pod's own network namespace (refused with `hostNetwork`),
//!   an IPC sysctl its own IPC namespace (refused with `hostIPC`).
//!
//! A refused pod is rejected at admission: phase `Failed`, reason [`REASON_FORBIDDEN`],
//! message `Pod was rejected: forbidden sysctl: "kernel.msgmax" not allowlisted`, and a
//! warning event; it never gets a sandbox.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Pod;

/// The reason of a pod rejected for a sysctl (upstream `sysctl.ForbiddenReason`).
pub const REASON_FORBIDDEN: &str = "SysctlForbidden";

/// Upstream v1.34's safe sysctls, each with the kernel version that namespaced it (where
/// that is later than any kernel Kubernetes supports).
pub const SAFE_SYSCTLS: &[(&str, Option<(u32, u32)>)] = &[
    ("kernel.shm_rmid_forced", None),
    ("net.ipv4.ip_local_port_range", None),
    ("net.ipv4.tcp_syncookies", None),
    ("net.ipv4.ping_group_range", None),
    ("net.ipv4.ip_unprivileged_port_start", None),
    ("net.ipv4.ip_local_reserved_ports", Some((3, 16))),
    ("net.ipv4.tcp_keepalive_time", Some((4, 5))),
    ("net.ipv4.tcp_fin_timeout", Some((4, 6))),
    ("net.ipv4.tcp_keepalive_intvl", Some((4, 5))),
    ("net.ipv4.tcp_keepalive_probes", Some((4, 5))),
    ("net.ipv4.tcp_rmem", Some((4, 15))),
    ("net.ipv4.tcp_wmem", Some((4, 15))),
];

/// Longest sysctl name or pattern (upstream `SysctlMaxLength`).
const MAX_LENGTH: usize = 253;

/// The kernel namespace a sysctl belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    Ipc,
    Net,
}

impl Namespace {
    /// The namespace of `name` (dot-separated), `None` when it is not known to be
    /// namespaced (upstream `NamespacedBy`).
    #[must_use]
    pub fn of(name: &str) -> Option<Self> {
        if name == "kernel.sem" {
            return Some(Self::Ipc);
        }
        if ["kernel.shm", "kernel.msg", "fs.mqueue."]
            .iter()
            .any(|p| name.starts_with(p))
        {
            return Some(Self::Ipc);
        }
        name.starts_with("net.").then_some(Self::Net)
    }

    fn host_flag(self) -> &'static str {
        match self {
            Self::Ipc => "ipc",
            Self::Net => "net",
        }
    }
}

/// A bad `allowedUnsafeSysctls` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error(
        "{0:?} is not a sysctl name or pattern: at most {MAX_LENGTH} characters of lowercase letters, digits, '-', '_', separated by '.' or '/', optionally ending in '*'"
    )]
    Invalid(String),
    #[error(
        "{0:?} is not known to be namespaced; only kernel.sem, kernel.shm*, kernel.msg*, fs.mqueue.* and net.* can be allowed"
    )]
    NotNamespaced(String),
}

/// Why a pod's sysctl is refused; the text is upstream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forbidden {
    NotAllowed(String),
    HostNamespace {
        sysctl: String,
        namespace: Namespace,
    },
}

impl fmt::Display for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAllowed(s) => write!(f, "{s:?} not allowlisted"),
            Self::HostNamespace { sysctl, namespace } => write!(
                f,
                "{sysctl:?} not allowed with host {} enabled",
                namespace.host_flag()
            ),
        }
    }
}

/// The allowed sysctls: exact names and prefixes, each with its namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SysctlPolicy {
    names: BTreeMap<String, Namespace>,
    prefixes: BTreeMap<String, Namespace>,
}

impl SysctlPolicy {
    /// The safe set for a kernel of version `kernel` (`None`: unknown, only the sysctls
    /// without a minimum), plus `unsafe_allowed`.
    ///
    /// # Errors
    /// The first bad pattern in `unsafe_allowed`, with its index.
    pub fn new(
        kernel: Option<(u32, u32)>,
        unsafe_allowed: &[String],
    ) -> Result<Self, (usize, PatternError)> {
        let mut policy = Self::default();
        for &(name, min) in SAFE_SYSCTLS {
            if min.is_none_or(|min| kernel.is_some_and(|k| k >= min)) {
                // Every safe sysctl is namespaced.
                if let Some(ns) = Namespace::of(name) {
                    policy.names.insert(name.to_owned(), ns);
                }
            }
        }
        for (i, pattern) in unsafe_allowed.iter().enumerate() {
            policy.allow(pattern).map_err(|e| (i, e))?;
        }
        Ok(policy)
    }

    /// Adds one name or `*` pattern.
    fn allow(&mut self, pattern: &str) -> Result<(), PatternError> {
        if !valid_pattern(pattern) {
            return Err(PatternError::Invalid(pattern.to_owned()));
        }
        let pattern = normalize(pattern);
        let (key, prefix) = match pattern.strip_suffix('*') {
            Some(p) => (p, true),
            None => (pattern.as_str(), false),
        };
        let ns = Namespace::of(key).ok_or_else(|| PatternError::NotNamespaced(pattern.clone()))?;
        let map = if prefix {
            &mut self.prefixes
        } else {
            &mut self.names
        };
        map.insert(key.to_owned(), ns);
        Ok(())
    }

    /// Whether a pod with these host namespaces may set `sysctl` (`/` or `.` separated).
    ///
    /// # Errors
    /// [`Forbidden`] saying why not.
    pub fn check(&self, sysctl: &str, host_network: bool, host_ipc: bool) -> Result<(), Forbidden> {
        let name = normalize(sysctl);
        let ns = self.names.get(&name).copied().or_else(|| {
            self.prefixes
                .iter()
                .find(|(p, _)| name.starts_with(p.as_str()))
                .map(|(_, &ns)| ns)
        });
        match ns {
            None => Err(Forbidden::NotAllowed(name)),
            Some(Namespace::Net) if host_network => Err(Forbidden::HostNamespace {
                sysctl: name,
                namespace: Namespace::Net,
            }),
            Some(Namespace::Ipc) if host_ipc => Err(Forbidden::HostNamespace {
                sysctl: name,
                namespace: Namespace::Ipc,
            }),
            Some(_) => Ok(()),
        }
    }

    /// Admission of `pod`: the first refused sysctl, as the rejection message
    /// (`forbidden sysctl: ...`).
    ///
    /// # Errors
    /// The message of the rejection.
    pub fn admit(&self, pod: &Pod) -> Result<(), String> {
        let Some(spec) = pod.spec.as_ref() else {
            return Ok(());
        };
        let host_network = spec.host_network.unwrap_or(false);
        let host_ipc = spec.host_ipc.unwrap_or(false);
        for s in spec
            .security_context
            .iter()
            .flat_map(|c| c.sysctls.iter().flatten())
        {
            self.check(&s.name, host_network, host_ipc)
                .map_err(|e| format!("forbidden sysctl: {e}"))?;
        }
        Ok(())
    }
}

/// Upstream's sysctl pattern: segments of `[a-z0-9]([-_a-z0-9]*[a-z0-9])?` separated by `.`
/// or `/`; the last may instead be `([a-z0-9][-_a-z0-9]*)?[a-z0-9*]`; at most 253 characters.
fn valid_pattern(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_LENGTH {
        return false;
    }
    let segments: Vec<&str> = s.split(['.', '/']).collect();
    let (last, rest) = segments
        .split_last()
        .expect("split yields one segment at least");
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let inner = |c: u8| alnum(c) || c == b'-' || c == b'_';
    let segment = |seg: &str| {
        let b = seg.as_bytes();
        !b.is_empty() && alnum(b[0]) && alnum(b[b.len() - 1]) && b.iter().all(|&c| inner(c))
    };
    let last_ok = {
        let b = last.as_bytes();
        match b.split_last() {
            None => false,
            Some((&end, head)) => {
                (alnum(end) || end == b'*')
                    && head.first().is_none_or(|&c| alnum(c))
                    && head.iter().all(|&c| inner(c))
            }
        }
    };
    rest.iter().all(|s| segment(s)) && last_ok
}

/// `kernel/shm_rmid_forced` -> `kernel.shm_rmid_forced`; `net/ipv4/conf/eth0.100/x` ->
/// `net.ipv4.conf.eth0/100.x` (a name whose first separator is `/` has `/` and `.` swapped,
/// as upstream's `ConvertSysctlVariableToDotsSeparator`).
#[must_use]
pub fn normalize(name: &str) -> String {
    match name.find(['.', '/']) {
        Some(i) if name.as_bytes()[i] == b'/' => name
            .chars()
            .map(|c| match c {
                '/' => '.',
                '.' => '/',
                c => c,
            })
            .collect(),
        _ => name.to_owned(),
    }
}

/// `major.minor` of a kernel release string such as `6.18.0-1-amd64`.
#[must_use]
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{PodSecurityContext, PodSpec, Sysctl};

    use super::*;

    fn policy(unsafe_allowed: &[&str]) -> SysctlPolicy {
        let allowed: Vec<String> = unsafe_allowed.iter().map(|s| (*s).to_owned()).collect();
        SysctlPolicy::new(Some((6, 18)), &allowed).expect("valid patterns")
    }

    fn pod(sysctls: &[&str], host_network: bool, host_ipc: bool) -> Pod {
        Pod {
            spec: Some(PodSpec {
                host_network: Some(host_network),
                host_ipc: Some(host_ipc),
                security_context: Some(PodSecurityContext {
                    sysctls: Some(
                        sysctls
                            .iter()
                            .map(|n| Sysctl {
                                name: (*n).to_owned(),
                                value: "1".to_owned(),
                            })
                            .collect(),
                    ),
                    ..PodSecurityContext::default()
                }),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn safe_set_is_allowed_and_nothing_else() {
        let p = policy(&[]);
        for (name, _) in SAFE_SYSCTLS {
            assert_eq!(p.check(name, false, false), Ok(()), "{name}");
        }
        for name in [
            "kernel.msgmax",
            "net.core.somaxconn",
            "vm.swappiness",
            "kernel.shmmax",
        ] {
            assert_eq!(
                p.check(name, false, false),
                Err(Forbidden::NotAllowed(name.to_owned())),
                "{name}"
            );
        }
        assert_eq!(
            p.check("kernel.msgmax", false, false)
                .unwrap_err()
                .to_string(),
            r#""kernel.msgmax" not allowlisted"#
        );
    }

    #[test]
    fn an_old_kernel_drops_the_sysctls_it_does_not_namespace() {
        let old = SysctlPolicy::new(Some((4, 4)), &[]).expect("no patterns");
        assert!(
            old.check("net.ipv4.tcp_keepalive_time", false, false)
                .is_err()
        );
        assert!(
            old.check("net.ipv4.ip_local_reserved_ports", false, false)
                .is_ok()
        );
        let unknown = SysctlPolicy::new(None, &[]).expect("no patterns");
        assert!(unknown.check("net.ipv4.tcp_rmem", false, false).is_err());
        assert!(
            unknown
                .check("net.ipv4.tcp_syncookies", false, false)
                .is_ok()
        );
    }

    #[test]
    fn host_namespaces_refuse_their_sysctls() {
        let p = policy(&["kernel.msg*", "kernel.sem"]);
        let net = p.check("net.ipv4.tcp_syncookies", true, false).unwrap_err();
        assert_eq!(
            net.to_string(),
            r#""net.ipv4.tcp_syncookies" not allowed with host net enabled"#
        );
        assert!(p.check("net.ipv4.tcp_syncookies", false, true).is_ok());
        let ipc = p.check("kernel.msgmax", false, true).unwrap_err();
        assert_eq!(
            ipc.to_string(),
            r#""kernel.msgmax" not allowed with host ipc enabled"#
        );
        assert!(p.check("kernel.msgmax", true, false).is_ok());
        assert!(p.check("kernel.sem", true, true).is_err());
        assert!(p.check("kernel.shm_rmid_forced", false, true).is_err());
    }

    #[test]
    fn unsafe_patterns_allow_names_and_prefixes() {
        let p = policy(&["kernel.msg*", "net.core.somaxconn", "fs/mqueue/msg_max"]);
        assert!(p.check("kernel.msgmax", false, false).is_ok());
        assert!(p.check("kernel.msgmnb", false, false).is_ok());
        assert!(p.check("kernel/msgmax", false, false).is_ok());
        assert!(p.check("net.core.somaxconn", false, false).is_ok());
        assert!(p.check("net.core.rmem_max", false, false).is_err());
        assert!(p.check("fs.mqueue.msg_max", false, false).is_ok());
        assert!(p.check("kernel.shmmax", false, false).is_err());
    }

    #[test]
    fn bad_patterns_are_refused() {
        let bad = |patterns: &[&str]| {
            let allowed: Vec<String> = patterns.iter().map(|s| (*s).to_owned()).collect();
            SysctlPolicy::new(Some((6, 18)), &allowed).unwrap_err()
        };
        assert_eq!(
            bad(&["kernel.msg*", "vm.swappiness"]),
            (1, PatternError::NotNamespaced("vm.swappiness".to_owned()))
        );
        assert_eq!(
            bad(&["kernel.*"]),
            (0, PatternError::NotNamespaced("kernel.*".to_owned()))
        );
        assert_eq!(bad(&["*"]).1, PatternError::NotNamespaced("*".to_owned()));
        for invalid in [
            "",
            "Net.core",
            "net..core",
            "net.core.",
            "net.*.x",
            "net.c*re",
            ".net",
        ] {
            assert_eq!(
                bad(&[invalid]).1,
                PatternError::Invalid(invalid.to_owned()),
                "{invalid:?}"
            );
        }
        assert!(valid_pattern("net.ipv4.conf.eth0/100.rp_filter"));
        assert!(valid_pattern("net.*"));
        assert!(valid_pattern(&"a".repeat(253)));
        assert!(!valid_pattern(&"a".repeat(254)));
    }

    #[test]
    fn admission_names_the_first_refused_sysctl() {
        let p = policy(&[]);
        assert_eq!(p.admit(&Pod::default()), Ok(()));
        assert_eq!(
            p.admit(&pod(
                &["kernel.shm_rmid_forced", "net.ipv4.tcp_syncookies"],
                false,
                false
            )),
            Ok(())
        );
        assert_eq!(
            p.admit(&pod(
                &["kernel.shm_rmid_forced", "kernel.msgmax"],
                false,
                false
            )),
            Err(r#"forbidden sysctl: "kernel.msgmax" not allowlisted"#.to_owned())
        );
        assert_eq!(
            p.admit(&pod(&["net.ipv4.ip_local_port_range"], true, false)),
            Err(
                r#"forbidden sysctl: "net.ipv4.ip_local_port_range" not allowed with host net enabled"#
                    .to_owned()
            )
        );
    }

    #[test]
    fn names_are_normalized_like_upstream() {
        assert_eq!(
            normalize("kernel/shm_rmid_forced"),
            "kernel.shm_rmid_forced"
        );
        assert_eq!(
            normalize("net/ipv4/conf/eth0.100/rp_filter"),
            "net.ipv4.conf.eth0/100.rp_filter"
        );
        assert_eq!(
            normalize("net.ipv4.tcp_syncookies"),
            "net.ipv4.tcp_syncookies"
        );
    }

    #[test]
    fn kernel_releases_parse() {
        assert_eq!(parse_kernel_release("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(parse_kernel_release("4.5"), Some((4, 5)));
        assert_eq!(parse_kernel_release("5"), None);
        assert_eq!(parse_kernel_release("x"), None);
    }
}
