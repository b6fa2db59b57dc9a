//! The upstream peer on this machine: containerd 2 (with runc and crictl, built here from
//! `tests/runtime`) run privately, bpflet on it, and the upstream kubelet (built from
//! `tests/k8s`) in standalone mode on it. Needs root and `cargo xtask build-peer`; run with
//! `--test-threads=1`.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use bpflet_tests::node::{
    IMAGE, Node, NodeConfig, WAIT, container_status, crictl, crictl_json, kubelet_pod, phase,
    pod_yaml, running, sleeping_pod,
};
use bpflet_tests::require_root;
use xtask::containerd::{Binaries, Options, PrivateContainerd};
use xtask::peer::{self, Kubelet, KubeletSpec};

/// A private containerd 2 under `dir`.
fn containerd2(dir: &Path) -> PrivateContainerd {
    require_root();
    assert!(
        peer::is_built().unwrap_or_else(|e| panic!("{e:#}")),
        "the upstream peer is not built (or not from the current pins): run `cargo xtask build-peer`"
    );
    let options = Options {
        binaries: Binaries::containerd2(),
        ..Options::default()
    };
    PrivateContainerd::start_with(&dir.join("ctd"), &options)
        .unwrap_or_else(|e| panic!("starting a private containerd 2: {e:#}"))
}

/// Polls `cond` every 100 ms until it gives a value; panics naming `what` after [`WAIT`].
fn wait_for<T>(what: &str, mut cond: impl FnMut() -> Option<T>, context: impl Fn() -> String) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}\n{}",
            context()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The executables of the processes whose command line contains `needle`.
fn exes_of_processes_naming(needle: &str) -> Vec<PathBuf> {
    let mut exes = vec![];
    for entry in fs::read_dir("/proc").expect("list /proc").flatten() {
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(needle)
            && let Ok(exe) = fs::read_link(entry.path().join("exe"))
        {
            exes.push(exe);
        }
    }
    exes
}

/// The line of `/proc/<pid>/cgroup` for the v1 memory controller.
fn memory_cgroup_of(pid: u64) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read /proc/pid/cgroup");
    text.lines()
        .find(|l| {
            l.split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|c| c == "memory"))
        })
        .or_else(|| text.lines().find(|l| l.starts_with("0::")))
        .unwrap_or_else(|| panic!("no memory cgroup in {text}"))
        .to_owned()
}

/// containerd 2 runs privately: its CRI answers with its version and with runtime and
/// network ready; crictl runs a pod (CNI address, cgroup under the private parent) whose
/// container runs under the default seccomp profile through the shim and runc built here.
#[test]
fn containerd2_runs_privately_and_crictl_runs_a_pod() {
    let dir = tempfile::Builder::new()
        .prefix("bpflet-peer-ctd-")
        .tempdir()
        .expect("temp dir");
    let ctd = containerd2(dir.path());

    let version = crictl(&ctd, &["version"]);
    assert!(version.contains("RuntimeName:  containerd"), "{version}");
    assert!(
        version.contains(&format!("RuntimeVersion:  {}", peer::CONTAINERD_VERSION)),
        "{version}"
    );
    assert!(version.contains("RuntimeApiVersion:  v1"), "{version}");

    let info = crictl_json(&ctd, &["info", "-o", "json"]);
    for kind in ["RuntimeReady", "NetworkReady"] {
        let condition = info["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == kind))
            .unwrap_or_else(|| panic!("no {kind} in {info:#}"));
        assert_eq!(condition["status"], true, "{info:#}");
    }
    let images = crictl(&ctd, &["images", "-q"]);
    assert_eq!(
        images.lines().count(),
        2,
        "busybox and the pause image: {images}"
    );

    let parent = format!("{}/peer-crictl", ctd.cgroup_parent);
    let pod_config = dir.path().join("pod.json");
    fs::write(
        &pod_config,
        serde_json::json!({
            "metadata": {"name": "crictl-pod", "namespace": "default", "uid": "peer-crictl-1"},
            "log_directory": ctd.pod_log_dir.join("crictl-pod"),
            "linux": {"cgroup_parent": parent},
        })
        .to_string(),
    )
    .expect("write pod.json");
    let container_config = dir.path().join("container.json");
    fs::write(
        &container_config,
        serde_json::json!({
            "metadata": {"name": "sleeper"},
            "image": {"image": IMAGE},
            "command": ["sleep", "3600"],
            "log_path": "sleeper.log",
            // RuntimeDefault: runc must have been built with libseccomp.
            "linux": {"security_context": {"seccomp": {"profile_type": 0}}},
        })
        .to_string(),
    )
    .expect("write container.json");
    let pod = crictl(&ctd, &["runp", &pod_config.to_string_lossy()]);
    let pod = pod.trim();
    let container = crictl(
        &ctd,
        &[
            "create",
            pod,
            &container_config.to_string_lossy(),
            &pod_config.to_string_lossy(),
        ],
    );
    let container = container.trim();
    let _ = crictl(&ctd, &["start", container]);

    let inspect = crictl_json(&ctd, &["inspect", "-o", "json", container]);
    assert_eq!(
        inspect["status"]["state"], "CONTAINER_RUNNING",
        "{inspect:#}"
    );
    let pid = inspect["info"]["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid in {inspect:#}"));
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    assert!(
        status.lines().any(|l| l == "Seccomp:\t2"),
        "the container runs without a seccomp filter:\n{status}"
    );
    let cgroup = memory_cgroup_of(pid);
    assert!(cgroup.contains(&format!("{parent}/")), "{cgroup}");

    let sandbox = crictl_json(&ctd, &["inspectp", "-o", "json", pod]);
    let ip = sandbox["status"]["network"]["ip"]
        .as_str()
        .unwrap_or_default();
    assert!(ip.starts_with("10.88."), "no CNI address: {sandbox:#}");

    // The shim serving it is the one built here, not Debian's.
    let shims = exes_of_processes_naming(&ctd.socket.to_string_lossy());
    let ours = peer::bin_dir().join("containerd-shim-runc-v2");
    assert!(
        shims.contains(&ours),
        "no shim {} serves this containerd: {shims:?}",
        ours.display()
    );
    assert!(
        shims.iter().all(|e| !e.starts_with("/usr")),
        "a Debian binary serves containerd 2: {shims:?}"
    );

    ctd.stop().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        !Path::new("/sys/fs/cgroup/memory")
            .join(parent.trim_start_matches('/'))
            .exists(),
        "teardown left the pod's cgroup"
    );
}

/// bpflet runs static pods on containerd 2 as on 1.6: one to Running, one to its exit code.
#[test]
fn bpflet_runs_static_pods_on_containerd2() {
    let node = Node::start_with(NodeConfig {
        containerd: Binaries::containerd2(),
        dir_prefix: "bpflet-peer-node-",
        ..NodeConfig::pleg("event")
    });
    node.write_manifest("sleeper.yaml", &sleeping_pod("sleeper"));
    node.write_manifest(
        "exits.yaml",
        &pod_yaml(
            "exits",
            "Never",
            &format!(
                "  containers:\n  - name: c\n    image: {IMAGE}\n    command: [sh, -c, 'exit 3']\n"
            ),
        ),
    );
    let pod = node.wait_pod("sleeper", "its container running", |p| running(p, "c"));
    assert_eq!(phase(&pod), "Running", "{pod:#}");
    let pod = node.wait_pod("exits", "Failed", |p| phase(p) == "Failed");
    assert_eq!(
        container_status(&pod, "c")["state"]["terminated"]["exitCode"],
        3,
        "{pod:#}"
    );
}

/// The upstream kubelet, standalone on containerd 2, runs a busybox static pod to Running as
/// its read-only `/pods` shows, with its pod cgroup under the test's cgroup root, and leaves
/// the machine's kernel settings as they were.
#[test]
fn upstream_kubelet_runs_a_static_pod_on_containerd2() {
    let dir = tempfile::Builder::new()
        .prefix("bpflet-peer-kubelet-")
        .tempdir()
        .expect("temp dir");
    let ctd = containerd2(dir.path());
    let tunables_before: Vec<String> = peer::KERNEL_TUNABLES
        .iter()
        .map(|(path, _)| fs::read_to_string(Path::new("/proc/sys").join(path)).unwrap())
        .collect();
    // The kubelet's fixed paths are covered in its own mount namespace: nothing lands here.
    let fixed_existed: Vec<bool> = ["/var/lib/kubelet", "/var/log/containers"]
        .iter()
        .map(|p| Path::new(p).exists())
        .collect();

    let manifests = dir.path().join("manifests");
    let mut spec = KubeletSpec::new(
        dir.path().join("kubelet"),
        &ctd,
        manifests.clone(),
        bpflet_tests::node::free_port(),
    );
    spec.extra_config = "fileCheckFrequency: 2s\n".to_owned();
    let kubelet = Kubelet::start(spec).unwrap_or_else(|e| panic!("{e:#}"));
    let log = || format!("kubelet log:\n{}", kubelet.log_tail(40));

    // The kubelet's image pull policy for `:latest` is Always; the offline image cannot be
    // pulled, so the manifest says Never.
    fs::write(
        manifests.join("sleeper.yaml"),
        pod_yaml(
            "sleeper",
            "Always",
            &format!(
                "  containers:\n  - name: c\n    image: {IMAGE}\n    imagePullPolicy: Never\n    command: [sleep, '3600']\n"
            ),
        ),
    )
    .expect("write manifest");

    let pod = wait_for(
        "the kubelet's /pods to show sleeper-testnode Running",
        || kubelet_pod(&kubelet, "sleeper").filter(|p| phase(p) == "Running" && running(p, "c")),
        log,
    );
    let uid = pod["metadata"]["uid"].as_str().expect("uid").to_owned();
    assert_eq!(
        pod["metadata"]["annotations"]["kubernetes.io/config.source"], "file",
        "{pod:#}"
    );

    // The container runs in the kubelet's pod cgroup below the test's cgroup root.
    let containers = crictl_json(
        &ctd,
        &[
            "ps",
            "-o",
            "json",
            "--label",
            &format!("io.kubernetes.pod.uid={uid}"),
        ],
    );
    let id = containers["containers"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no container of pod {uid}: {containers:#}"))
        .to_owned();
    let inspect = crictl_json(&ctd, &["inspect", "-o", "json", &id]);
    let pid = inspect["info"]["pid"].as_u64().expect("pid");
    let cgroup = memory_cgroup_of(pid);
    assert!(
        cgroup.contains(&format!(
            "{}/kubepods/besteffort/pod{uid}/",
            ctd.cgroup_parent
        )),
        "{cgroup}"
    );

    let tunables_after: Vec<String> = peer::KERNEL_TUNABLES
        .iter()
        .map(|(path, _)| fs::read_to_string(Path::new("/proc/sys").join(path)).unwrap())
        .collect();
    assert_eq!(
        tunables_before, tunables_after,
        "the kubelet changed kernel settings"
    );

    kubelet.stop().unwrap_or_else(|e| panic!("{e:#}"));
    for (path, existed) in ["/var/lib/kubelet", "/var/log/containers"]
        .iter()
        .zip(fixed_existed)
    {
        assert!(existed || !Path::new(path).exists(), "teardown left {path}");
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    let kubelet_dir = dir.path().join("kubelet");
    assert!(
        !mountinfo.contains(&*kubelet_dir.to_string_lossy()),
        "teardown left mounts under {}:\n{mountinfo}",
        kubelet_dir.display()
    );
    ctd.stop().unwrap_or_else(|e| panic!("{e:#}"));
}
