//! Which events a `Watch` subscriber gets: kinds, namespace, pod name, label selector and
//! cgroup prefix. Pure, so the matching rules are unit-tested.

use std::collections::{BTreeMap, HashSet};

use super::PodIdentity;
use crate::events::{Event, Kind};
use crate::trace::Filter as TraceFilter;

/// One requirement of an equality-based label selector (`kubectl -l`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` or `key==value`.
    Equals(String, String),
    /// `key!=value`: also true when the label is absent, as upstream.
    NotEquals(String, String),
    /// `key`.
    Exists(String),
    /// `!key`.
    Absent(String),
}

/// A label selector that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("label selector {selector:?}: {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

/// An equality-based label selector: every requirement must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

impl Selector {
    /// Parses `a=b,c!=d,e,!f`. Set-based forms (`in`, `notin`) are refused by name.
    pub fn parse(selector: &str) -> Result<Self, SelectorError> {
        let err = |reason: String| SelectorError {
            selector: selector.to_owned(),
            reason,
        };
        let mut reqs = Vec::new();
        for part in selector.split(',').map(str::trim) {
            if part.is_empty() {
                if selector.trim().is_empty() {
                    continue;
                }
                return Err(err("empty requirement".to_owned()));
            }
            if part.contains('(') || part.contains(" in ") || part.contains(" notin ") {
                return Err(err(format!(
                    "{part:?}: set-based requirements (in, notin) are not supported; use key=value, key!=value, key or !key"
                )));
            }
            let key_ok = |k: &str| {
                !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
            };
            let req = if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("==") {
                Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = part.split_once('=') {
                Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some(k) = part.strip_prefix('!') {
                Requirement::Absent(k.trim().to_owned())
            } else {
                Requirement::Exists(part.to_owned())
            };
            let (key, value) = match &req {
                Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => (k, Some(v)),
                Requirement::Exists(k) | Requirement::Absent(k) => (k, None),
            };
            if !key_ok(key) {
                return Err(err(format!("{part:?}: invalid label key {key:?}")));
            }
            if let Some(v) = value
                && v.contains(['=', '!', ' '])
            {
                return Err(err(format!("{part:?}: invalid label value {v:?}")));
            }
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    #[must_use]
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
        })
    }
}

/// A subscriber's filter. Events about no pod pass only when no pod field is set; losses
/// (`events_lost`) concern every subscriber and pass whenever their kind is asked for.
#[derive(Clone, Debug, Default)]
pub struct WatchFilter {
    pub kinds: HashSet<Kind>,
    pub cgroup: TraceFilter,
    pub namespace: Option<String>,
    pub pod_name: Option<String>,
    pub selector: Selector,
}

impl WatchFilter {
    /// `kinds` empty: all; `None` or empty strings: no constraint.
    pub fn new(
        kinds: &[Kind],
        cgroup_prefix: &str,
        namespace: &str,
        pod_name: &str,
        label_selector: &str,
    ) -> Result<Self, SelectorError> {
        let prefixes = if cgroup_prefix.is_empty() {
            Vec::new()
        } else {
            vec![cgroup_prefix.to_owned()]
        };
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Ok(Self {
            kinds: kinds.iter().copied().collect(),
            cgroup: TraceFilter::new(&[], &prefixes),
            namespace: some(namespace),
            pod_name: some(pod_name),
            selector: Selector::parse(label_selector)?,
        })
    }

    fn wants_pod(&self) -> bool {
        self.namespace.is_some() || self.pod_name.is_some() || !self.selector.is_empty()
    }

    #[must_use]
    pub fn matches(&self, ev: &Event, pod: Option<&PodIdentity>) -> bool {
        if !self.kinds.is_empty() && !self.kinds.contains(&ev.kind()) {
            return false;
        }
        if ev.kind() == Kind::EventsLost {
            return true;
        }
        if !self.cgroup.matches(ev) {
            return false;
        }
        if !self.wants_pod() {
            return true;
        }
        let Some(pod) = pod else { return false };
        self.namespace.as_ref().is_none_or(|n| *n == pod.namespace)
            && self.pod_name.as_ref().is_none_or(|n| *n == pod.name)
            && self.selector.matches(&pod.labels)
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::events::{Detail, ExitStatus, PodRef, Source};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn exit(cgroup: &str) -> Event {
        Event {
            time: SystemTime::UNIX_EPOCH,
            kernel_ns: None,
            source: Source::Bpf,
            pid: 7,
            comm: "sh".into(),
            cgroup_id: None,
            cgroup: cgroup.into(),
            pod: Some(PodRef {
                pod_uid: "u1".into(),
                container_id: None,
            }),
            detail: Detail::Exit {
                status: ExitStatus::Code(0),
                pidns_init: false,
            },
        }
    }

    fn pod(ns: &str, name: &str, l: &[(&str, &str)]) -> PodIdentity {
        PodIdentity {
            namespace: ns.into(),
            name: name.into(),
            uid: "u1".into(),
            container_name: None,
            labels: labels(l),
        }
    }

    #[test]
    fn selectors_parse_as_kubectl_spells_them() {
        let s = Selector::parse("app=web, tier==front,env!=prod,canary,!legacy").unwrap();
        assert_eq!(
            s.0,
            vec![
                Requirement::Equals("app".into(), "web".into()),
                Requirement::Equals("tier".into(), "front".into()),
                Requirement::NotEquals("env".into(), "prod".into()),
                Requirement::Exists("canary".into()),
                Requirement::Absent("legacy".into()),
            ]
        );
        assert!(Selector::parse("").unwrap().is_empty());
        let e = Selector::parse("env in (a,b)").unwrap_err();
        assert!(e.to_string().contains("set-based"), "{e}");
        let e = Selector::parse("a=b,,c").unwrap_err();
        assert!(e.to_string().contains("empty requirement"), "{e}");
        let e = Selector::parse("a b=c").unwrap_err();
        assert!(e.to_string().contains("invalid label key"), "{e}");
    }

    #[test]
    fn selectors_match_as_upstream() {
        let s = Selector::parse("app=web,env!=prod,canary,!legacy").unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("canary", "")])));
        assert!(s.matches(&labels(&[("app", "web"), ("canary", "1"), ("env", "dev")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("canary", ""), ("env", "prod")])));
        assert!(!s.matches(&labels(&[("app", "web")])), "canary missing");
        assert!(!s.matches(&labels(&[("app", "web"), ("canary", ""), ("legacy", "")])));
        assert!(!s.matches(&labels(&[("app", "db"), ("canary", "")])));
    }

    #[test]
    fn filters_combine_kind_pod_namespace_labels_and_cgroup() {
        let ev = exit("/kubepods/podu1/c1");
        let a = pod("team-a", "web", &[("app", "web")]);
        let all = WatchFilter::default();
        assert!(all.matches(&ev, None) && all.matches(&ev, Some(&a)));

        let f = WatchFilter::new(&[Kind::Exit], "", "team-a", "web", "app=web").unwrap();
        assert!(f.matches(&ev, Some(&a)));
        assert!(!f.matches(&ev, None), "a pod filter drops events of no pod");
        assert!(!f.matches(&ev, Some(&pod("team-b", "web", &[("app", "web")]))));
        assert!(!f.matches(&ev, Some(&pod("team-a", "db", &[("app", "web")]))));
        assert!(!f.matches(&ev, Some(&pod("team-a", "web", &[("app", "db")]))));

        let f = WatchFilter::new(&[Kind::OomKill], "", "", "", "").unwrap();
        assert!(!f.matches(&ev, Some(&a)));

        let f = WatchFilter::new(&[], "/kubepods", "", "", "").unwrap();
        assert!(f.matches(&ev, None));
        assert!(!f.matches(&exit("/system.slice/x"), None));

        let lost = Event {
            pod: None,
            detail: Detail::EventsLost {
                kernel: 3,
                userspace: 0,
            },
            ..exit("")
        };
        let f = WatchFilter::new(&[], "/kubepods", "team-a", "", "").unwrap();
        assert!(f.matches(&lost, None), "losses reach every subscriber");
        let f = WatchFilter::new(&[Kind::Exit], "", "", "", "").unwrap();
        assert!(
            !f.matches(&lost, None),
            "unless it asked for other kinds only"
        );
    }
}
