//! Kubernetes attribution of cgroup paths, from kubelet's and the container runtimes' naming.
//!
//! cgroupfs driver: `<root>/kubepods[/burstable|/besteffort]/pod<uid>/<container-id>`.
//! systemd driver: `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope`
//! (also `docker-<id>.scope` and `crio-<id>.scope`; `crio-conmon-<id>.scope` is CRI-O's monitor,
//! not a container). Cgroups a container's processes create below their container cgroup still
//! belong to that container.

use crate::events::{OomScope, PodRef};

/// Pod UID and container id of a cgroup path, when it is a pod's cgroup or below one.
pub fn parse_pod(path: &str) -> Option<PodRef> {
    let found = locate(path)?;
    Some(PodRef {
        pod_uid: found.pod_uid,
        container_id: found.container.map(|(_, id)| id.to_owned()),
    })
}

/// The prefix of `path` that is the pod's cgroup.
pub fn pod_cgroup(path: &str) -> Option<&str> {
    locate(path).map(|found| &path[..found.pod_end])
}

/// The prefix of `path` that is the container's cgroup.
pub fn container_cgroup(path: &str) -> Option<&str> {
    locate(path)?.container.map(|(end, _)| &path[..end])
}

/// Which limit an OOM kill of a process in `victim_cgroup` answered, given the cgroup whose
/// limit was hit (`None` or `"/"` for a node-wide OOM).
pub fn oom_scope(victim_cgroup: &str, limit_cgroup: Option<&str>) -> OomScope {
    let Some(limit) = limit_cgroup.map(|l| l.trim_end_matches('/')) else {
        return OomScope::Node;
    };
    if limit.is_empty() {
        return OomScope::Node;
    }
    let victim = victim_cgroup.trim_end_matches('/');
    if container_cgroup(victim) == Some(limit) {
        OomScope::Container
    } else if pod_cgroup(victim) == Some(limit) {
        OomScope::Pod
    } else {
        OomScope::Cgroup
    }
}

struct Located<'a> {
    pod_uid: String,
    /// Byte offset in the path where the pod's cgroup ends.
    pod_end: usize,
    /// Where the container's cgroup ends, and its id.
    container: Option<(usize, &'a str)>,
}

struct Segment<'a> {
    text: &'a str,
    end: usize,
}

fn segments(path: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    for text in path.split('/') {
        let end = start + text.len();
        if !text.is_empty() {
            out.push(Segment { text, end });
        }
        start = end + 1;
    }
    out
}

fn locate(path: &str) -> Option<Located<'_>> {
    let segs = segments(path);
    let (i, pod_uid) = (0..segs.len()).find_map(|i| pod_segment(&segs, i).map(|uid| (i, uid)))?;
    let container = segs
        .get(i + 1)
        .and_then(|s| container_id(s.text).map(|id| (s.end, id)));
    Some(Located {
        pod_uid,
        pod_end: segs[i].end,
        container,
    })
}

/// The pod UID when segment `i` is a pod cgroup in its proper place.
fn pod_segment(segs: &[Segment<'_>], i: usize) -> Option<String> {
    let text = segs[i].text;
    let parent = |n: usize| i.checked_sub(n).map(|j| segs[j].text);

    if let Some(stem) = text.strip_suffix(".slice") {
        // systemd: `<prefix>-pod<uid_>.slice` inside `<prefix>.slice`, where the prefix is
        // `[...-]kubepods[-burstable|-besteffort]`.
        let (prefix, uid) = stem.rsplit_once("-pod")?;
        let base = prefix
            .strip_suffix("-burstable")
            .or_else(|| prefix.strip_suffix("-besteffort"))
            .unwrap_or(prefix);
        if base != "kubepods" && !base.ends_with("-kubepods") {
            return None;
        }
        if parent(1)? != format!("{prefix}.slice") {
            return None;
        }
        return parse_uid(uid, '_');
    }

    let uid = text.strip_prefix("pod")?;
    let placed = match parent(1)? {
        "kubepods" => true,
        "burstable" | "besteffort" => parent(2) == Some("kubepods"),
        _ => false,
    };
    if !placed {
        return None;
    }
    parse_uid(uid, '-')
}

/// A Kubernetes pod UID: a UUID (`8-4-4-4-12` lowercase hex, with `sep` between the groups) or
/// 32 lowercase hex digits (static pods hash their manifest). Returned with dashes.
fn parse_uid(s: &str, sep: char) -> Option<String> {
    let is_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    let valid = if s.len() == 32 {
        s.chars().all(is_hex)
    } else if s.len() == 36 {
        s.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == sep
            } else {
                is_hex(c)
            }
        })
    } else {
        false
    };
    valid.then(|| s.replace(sep, "-"))
}

/// The container id of a container cgroup's directory name.
fn container_id(name: &str) -> Option<&str> {
    let (name, scope) = match name.strip_suffix(".scope") {
        Some(stem) => (stem, true),
        None => (name, false),
    };
    if name.starts_with("crio-conmon-") {
        return None;
    }
    let id = ["cri-containerd-", "docker-", "crio-"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix));
    let id = match id {
        Some(id) => id,
        // A systemd scope always carries the runtime's prefix; cgroupfs uses the bare id.
        None if scope => return None,
        None => name,
    };
    let valid = id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    valid.then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "8dbc5577-d0e2-4706-8787-57d52c03ddf2";
    const UID_: &str = "8dbc5577_d0e2_4706_8787_57d52c03ddf2";
    const CID: &str = "3f1b9a2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

    fn pod(uid: &str, cid: Option<&str>) -> Option<PodRef> {
        Some(PodRef {
            pod_uid: uid.to_owned(),
            container_id: cid.map(str::to_owned),
        })
    }

    #[test]
    fn parse_pod_table() {
        let static_uid = "5f1a8c2b3d4e5f60718293a4b5c6d7e8";
        let cases: Vec<(String, Option<PodRef>)> = vec![
            // cgroupfs, each QoS class
            (format!("/kubepods/pod{UID}/{CID}"), pod(UID, Some(CID))),
            (
                format!("/kubepods/burstable/pod{UID}/{CID}"),
                pod(UID, Some(CID)),
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/{CID}"),
                pod(UID, Some(CID)),
            ),
            // cgroup root prefix, trailing slash
            (
                format!("/custom/root/kubepods/burstable/pod{UID}/{CID}/"),
                pod(UID, Some(CID)),
            ),
            // the pod cgroup itself
            (format!("/kubepods/burstable/pod{UID}"), pod(UID, None)),
            // nested cgroups below the container
            (
                format!("/kubepods/pod{UID}/{CID}/init.scope/worker"),
                pod(UID, Some(CID)),
            ),
            // static pod UID (hash, no dashes)
            (
                format!("/kubepods/pod{static_uid}/{CID}"),
                pod(static_uid, Some(CID)),
            ),
            // runtime prefixes under cgroupfs
            (
                format!("/kubepods/pod{UID}/crio-{CID}"),
                pod(UID, Some(CID)),
            ),
            // systemd driver
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope"),
                pod(UID, Some(CID)),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope"
                ),
                pod(UID, Some(CID)),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{CID}.scope"
                ),
                pod(UID, Some(CID)),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope/sub"
                ),
                pod(UID, Some(CID)),
            ),
            // cgroup root under systemd: slice names carry the parent's prefix
            (
                format!(
                    "/node.slice/node-kubepods.slice/node-kubepods-burstable.slice/node-kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope"
                ),
                pod(UID, Some(CID)),
            ),
            // CRI-O's conmon is in the pod, not a container
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{CID}.scope"
                ),
                pod(UID, None),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
                ),
                pod(UID, None),
            ),
        ];
        for (path, want) in cases {
            assert_eq!(parse_pod(&path), want, "{path}");
        }
    }

    #[test]
    fn parse_pod_rejects_garbage() {
        let short = &CID[..63];
        let upper = CID.to_uppercase();
        let cases: Vec<String> = vec![
            String::new(),
            "/".into(),
            "/kubepods".into(),
            "/kubepods/burstable".into(),
            "/system.slice/containerd.service".into(),
            // pod dir not under kubepods / a QoS dir
            format!("/other/pod{UID}/{CID}"),
            format!("/burstable/pod{UID}/{CID}"),
            format!("/kubepods/guaranteed/pod{UID}/{CID}"),
            // bad UIDs
            "/kubepods/podnot-a-uid/x".into(),
            format!("/kubepods/pod{}", &UID[..35]),
            format!("/kubepods/pod{}", UID.replace('-', "_")),
            format!("/kubepods/pod{}", UID.to_uppercase()),
            format!("/kubepods/pod{UID}x"),
            // systemd slice outside its parent slice, or with dashes in the uid
            format!(
                "/kubepods.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{CID}.scope"
            ),
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID}.slice"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/notkubepods-burstable-pod{UID_}.slice"
            ),
        ];
        for path in cases {
            assert_eq!(parse_pod(&path), None, "{path}");
        }

        // A pod cgroup with something that is not a container id below it: pod only.
        for child in [
            short.to_owned(),
            upper,
            format!("{CID}0"),
            format!("{CID}.scope"),
            format!("cri-containerd-{short}.scope"),
            format!("podman-{CID}.scope"),
            "garbage".to_owned(),
        ] {
            let path = format!("/kubepods/pod{UID}/{child}");
            assert_eq!(parse_pod(&path), pod(UID, None), "{path}");
            assert_eq!(container_cgroup(&path), None, "{path}");
        }
    }

    #[test]
    fn pod_and_container_cgroups() {
        let path = format!("/root/kubepods/burstable/pod{UID}/{CID}/nested");
        assert_eq!(
            pod_cgroup(&path),
            Some(format!("/root/kubepods/burstable/pod{UID}").as_str())
        );
        assert_eq!(
            container_cgroup(&path),
            Some(format!("/root/kubepods/burstable/pod{UID}/{CID}").as_str())
        );
        let sd = format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope");
        assert_eq!(
            pod_cgroup(&sd),
            Some(format!("/kubepods.slice/kubepods-pod{UID_}.slice").as_str())
        );
        assert_eq!(container_cgroup(&sd), Some(sd.as_str()));
        assert_eq!(pod_cgroup("/kubepods/burstable"), None);
        assert_eq!(container_cgroup(&format!("/kubepods/pod{UID}")), None);
    }

    #[test]
    fn oom_scope_table() {
        let pod_cg = format!("/kubepods/burstable/pod{UID}");
        let ctr = format!("{pod_cg}/{CID}");
        let nested = format!("{ctr}/sub");
        let cases: Vec<(&str, Option<&str>, OomScope)> = vec![
            (&ctr, None, OomScope::Node),
            (&ctr, Some("/"), OomScope::Node),
            (&ctr, Some(&ctr), OomScope::Container),
            (&nested, Some(&ctr), OomScope::Container),
            (&ctr, Some(&pod_cg), OomScope::Pod),
            (&pod_cg, Some(&pod_cg), OomScope::Pod),
            (&nested, Some(&nested), OomScope::Cgroup),
            (&ctr, Some("/kubepods/burstable"), OomScope::Cgroup),
            (&ctr, Some("/kubepods"), OomScope::Cgroup),
            ("/test/x", Some("/test"), OomScope::Cgroup),
            ("/test", Some("/test"), OomScope::Cgroup),
        ];
        for (victim, limit, want) in cases {
            assert_eq!(oom_scope(victim, limit), want, "{victim} {limit:?}");
        }
        let trailing = format!("{ctr}/");
        assert_eq!(oom_scope(&ctr, Some(&trailing)), OomScope::Container);
    }

    /// The upstream kubelet's cgroupfs driver with containerd: `<cgroupRoot>/kubepods`,
    /// the QoS level (none for Guaranteed), `pod<uid>` with dashes, and the bare container
    /// id below it, the sandbox's (pause) container included.
    #[test]
    fn upstream_kubelet_cgroupfs_layout() {
        let sandbox = "a".repeat(64);
        for root in ["", "/kubelet-root", "/a/b"] {
            for qos in ["", "/burstable", "/besteffort"] {
                let pod_cg = format!("{root}/kubepods{qos}/pod{UID}");
                for cid in [CID, sandbox.as_str()] {
                    let path = format!("{pod_cg}/{cid}");
                    assert_eq!(parse_pod(&path), pod(UID, Some(cid)), "{path}");
                    assert_eq!(pod_cgroup(&path), Some(pod_cg.as_str()), "{path}");
                    assert_eq!(oom_scope(&path, Some(&path)), OomScope::Container, "{path}");
                    assert_eq!(oom_scope(&path, Some(&pod_cg)), OomScope::Pod, "{path}");
                }
            }
        }
    }

    /// The upstream kubelet's systemd driver with containerd:
    /// `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid with _>.slice/cri-containerd-<id>.scope`
    /// (Guaranteed pods directly in `kubepods.slice`).
    #[test]
    fn upstream_kubelet_systemd_layout() {
        for qos in ["", "-burstable", "-besteffort"] {
            let parent = if qos.is_empty() {
                "/kubepods.slice".to_owned()
            } else {
                format!("/kubepods.slice/kubepods{qos}.slice")
            };
            let pod_cg = format!("{parent}/kubepods{qos}-pod{UID_}.slice");
            let path = format!("{pod_cg}/cri-containerd-{CID}.scope");
            assert_eq!(parse_pod(&path), pod(UID, Some(CID)), "{path}");
            assert_eq!(pod_cgroup(&path), Some(pod_cg.as_str()), "{path}");
            assert_eq!(container_cgroup(&path), Some(path.as_str()), "{path}");
            assert_eq!(oom_scope(&path, Some(&path)), OomScope::Container, "{path}");
            assert_eq!(oom_scope(&path, Some(&pod_cg)), OomScope::Pod, "{path}");
        }
    }
}
