//! The upstream kubelet as a bench column, one set-up for every bench that has kubelet
//! columns (`pods`, `pleg`, `cluster`): started on the bench's private containerd 2 (the
//! peer's v2.2 and runc from `cargo xtask build-peer`), on the bench's [`Node`] (its node
//! name, static pod directory and read-only port), under a cgroup root below the bench's,
//! with bpflet's bench limits, and read through the same harness as bpflet: its read-only
//! API (`/pods`, `/metrics`) and its JSON log as records.
//!
//! What makes a kubelet column comparable with bpflet's (`up::render_config` is bpflet's
//! bench config):
//! - **kubepods memory limit.** Both configs carry `enforceNodeAllocatable: [pods]` and
//!   `systemReserved.memory = MemTotal - up::KUBEPODS_MEMORY` (whole Ki, rounded down; see
//!   [`system_reserved`]). The kubelet limits `kubepods` to capacity (cAdvisor's `MemTotal`)
//!   minus `systemReserved` (`getNodeAllocatableAbsolute`; the hard eviction threshold is
//!   not subtracted from the cgroup limit), which is 512 MiB as for bpflet.
//!   [`BenchKubelet::start`] waits until the kubelet has written that limit and fails if it
//!   does not; [`kubepods_memory_limit`] reads it back for a report.
//! - **eviction threshold.** `evictionHard: memory.available: 100Mi` in both (the kubelet's
//!   comes from `KubeletSpec::config_yaml`); with `enforceNodeAllocatable: [pods]` the
//!   kubelet also applies it as `allocatableMemory.available` to kubepods
//!   (`addAllocatableThresholds`).
//! - **cgroup root scheme.** Each agent gets its own cgroup root, `<root>/kubepods/...`
//!   below it, with the cgroupfs driver. A kubelet column's root is `<node root>/<column>`
//!   (see [`cgroup_root_for`]), so the node's teardown removes it with the rest.
//! - **static pods.** The same directory, the same node name (`--hostname-override`), so
//!   pods are named `<manifest name>-<node>` by both. `fileCheckFrequency` stays at the
//!   upstream default, 20 s, as in bpflet's config; both also watch the directory with
//!   inotify. With [`BenchKubeletSpec::cluster`] (bench `cluster`) it joins the control
//!   plane as the node instead.
//!
//! Deviations from upstream defaults beyond `KubeletSpec`'s (standalone, cgroupfs, image GC
//! thresholds): `logging.format: json` in its config (benches read records, never prose;
//! the `--logging-format` flag is deprecated), `--v=2` (for the sync loop's `SyncLoop ADD`
//! and PLEG records), and the column's [`Switches`]: `featureGates: {EventedPLEG: true}`,
//! `kernelMemcgNotification`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::{Map, Value};
use xtask::containerd::PrivateContainerd;
use xtask::peer::{self, ClusterAccess, Kubelet, KubeletSpec};

use super::pods::{NODE, Node, sleep_checked};
use crate::{output, up};

/// Upstream's `eventedPlegMaxStreamRetries` (`pkg/kubelet/kubelet.go`): after this many
/// failed `GetContainerEvents` streams the kubelet falls back to the generic PLEG.
const EVENTED_MAX_STREAM_RETRIES: f64 = 5.0;
/// Upper bounds for the kubelet to connect its CRI event stream, and to limit kubepods,
/// once it serves `/pods`.
const EVENTED_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const KUBEPODS_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);

/// What differs between kubelet columns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Switches {
    /// `featureGates: {EventedPLEG: true}` (alpha): CRI container events (containerd 2.x),
    /// relist every 300 s.
    pub(crate) evented_pleg: bool,
    /// `kernelMemcgNotification: true`.
    pub(crate) kernel_memcg_notification: bool,
}

impl Switches {
    /// Upstream's defaults: the generic PLEG (relist every second), no memcg notifier.
    pub(crate) const GENERIC: Self = Self {
        evented_pleg: false,
        kernel_memcg_notification: false,
    };
    pub(crate) const EVENTED: Self = Self {
        evented_pleg: true,
        kernel_memcg_notification: false,
    };
}

/// Where and how a bench's kubelet runs.
#[derive(Clone, Debug)]
pub(crate) struct BenchKubeletSpec {
    /// The column's name in the report (`kubelet`, `kubelet-evented`, ...).
    pub(crate) column: String,
    /// The kubelet's own directory (config, `--root-dir`, log), made afresh by
    /// [`BenchKubelet::start`].
    pub(crate) work_dir: PathBuf,
    /// `staticPodPath`.
    pub(crate) manifests: PathBuf,
    pub(crate) node_name: String,
    /// Its cgroup root (see [`cgroup_root_for`]).
    pub(crate) cgroup_root: String,
    /// The read-only API's port on 127.0.0.1.
    pub(crate) read_only_port: u16,
    /// What `kubepods` is limited to (bpflet's bench: `up::KUBEPODS_MEMORY`).
    pub(crate) kubepods_memory: u64,
    pub(crate) switches: Switches,
    /// Join this control plane as the node (`KubeletSpec::cluster`) instead of standalone.
    pub(crate) cluster: Option<ClusterAccess>,
}

impl BenchKubeletSpec {
    /// The kubelet of `column` on `node`, in bpflet's place: work directory
    /// `<node work dir>/<column>`, the node's static pod directory, read-only port and name,
    /// cgroup root `<node root>/<column>`, bpflet's kubepods limit; standalone.
    pub(crate) fn on_node(node: &Node, column: &str, switches: Switches) -> Self {
        Self {
            column: column.to_owned(),
            work_dir: node.work_dir.join(column),
            manifests: node.manifests.clone(),
            node_name: NODE.to_owned(),
            cgroup_root: cgroup_root_for(&node.cgroup_root, column),
            read_only_port: node.port,
            kubepods_memory: up::KUBEPODS_MEMORY,
            switches,
            cluster: None,
        }
    }

    /// `xtask::peer`'s spec for this kubelet on `ctd`, on a machine with `mem_total` bytes.
    fn kubelet_spec(&self, ctd: &PrivateContainerd, mem_total: u64) -> Result<KubeletSpec> {
        let mut spec = KubeletSpec::new(
            self.work_dir.clone(),
            ctd,
            self.manifests.clone(),
            self.read_only_port,
        );
        spec.cgroup_root.clone_from(&self.cgroup_root);
        spec.node_name.clone_from(&self.node_name);
        spec.cluster.clone_from(&self.cluster);
        spec.extra_config = extra_config(
            system_reserved(mem_total, self.kubepods_memory)?,
            self.switches,
        );
        // `--v=2` for the sync loop's records; the JSON format is set in the config.
        spec.args = vec!["--v=2".to_owned()];
        Ok(spec)
    }
}

/// The cgroup root of the kubelet column `column` on a bench node whose root is
/// `node_root`.
pub(crate) fn cgroup_root_for(node_root: &str, column: &str) -> String {
    format!("{}/{column}", node_root.trim_end_matches('/'))
}

/// `systemReserved` memory that leaves `kubepods` bytes to the pods of a machine with
/// `mem_total` bytes, in whole KiB (how both configs write it).
pub(crate) fn system_reserved(mem_total: u64, kubepods: u64) -> Result<u64> {
    ensure!(
        mem_total > kubepods,
        "MemTotal {} MiB is not above the kubepods limit {} MiB",
        mem_total >> 20,
        kubepods >> 20
    );
    Ok((mem_total - kubepods) / 1024 * 1024)
}

/// The `KubeletConfiguration` lines a bench adds to `KubeletSpec::config_yaml`'s (which
/// already sets `evictionHard: memory.available: 100Mi`): the kubepods limit, JSON logs and
/// the column's switches. `system_reserved` is in bytes (written in Ki, rounded down, as
/// bpflet's).
pub(crate) fn extra_config(system_reserved: u64, switches: Switches) -> String {
    let mut text = format!(
        "# kubepods gets capacity (MemTotal) - systemReserved, as in bpflet's bench config.
enforceNodeAllocatable: [pods]
systemReserved:
  memory: {}Ki
kernelMemcgNotification: {}
# Benches read records, never prose (the --logging-format flag is deprecated).
logging:
  format: json
",
        system_reserved / 1024,
        switches.kernel_memcg_notification
    );
    if switches.evented_pleg {
        text.push_str("featureGates:\n  EventedPLEG: true\n");
    }
    text
}

/// Fails, naming the command that builds them, when a peer binary is missing.
pub(crate) fn require_built() -> Result<()> {
    let dir = peer::bin_dir();
    let missing: Vec<&str> = peer::programs()
        .filter(|p| !dir.join(p).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} missing from {}: run `cargo xtask build-peer` (the kubelet columns run the \
             upstream kubelet on containerd 2 and its runc from there)",
            missing.join(", "),
            dir.display()
        );
    }
    Ok(())
}

/// `kubelet v1.34.4, containerd v2.2.10, runc 1.4.4`, as the peer's binaries report them,
/// for a report's header.
pub(crate) fn versions() -> Result<String> {
    let dir = peer::bin_dir();
    let version = |name: &str| output(Command::new(dir.join(name)).arg("--version"));
    Ok(format_versions(
        &version("kubelet")?,
        &version("containerd")?,
        &version("runc")?,
    ))
}

/// [`versions`] from the `--version` outputs: `Kubernetes v1.34.4`, `containerd
/// github.com/containerd/containerd/v2 v2.2.10 <commit>`, `runc version 1.4.4\n...`.
fn format_versions(kubelet: &str, containerd: &str, runc: &str) -> String {
    let last_word = |text: &str| {
        text.lines()
            .next()
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or_default()
            .to_owned()
    };
    format!(
        "kubelet {}, containerd {}, runc {}",
        last_word(kubelet),
        containerd.split_whitespace().nth(2).unwrap_or_default(),
        last_word(runc)
    )
}

/// A kubelet started for a bench.
pub(crate) struct BenchKubelet {
    kubelet: Kubelet,
    spec: BenchKubeletSpec,
}

impl BenchKubelet {
    /// Starts the kubelet of `spec` on `ctd` in a fresh work directory and waits until it
    /// serves `/pods` and has limited kubepods to `spec.kubepods_memory` (an error
    /// otherwise); with Evented PLEG, also until its CRI event stream is connected or has
    /// failed for good ([`Self::check_evented`] tells which).
    pub(crate) fn start(spec: &BenchKubeletSpec, ctd: &PrivateContainerd) -> Result<Self> {
        require_built()?;
        let dir = &spec.work_dir;
        if dir.exists() {
            // A crashed run's mounts first: never delete through a mount. A log of an
            // earlier run would hold records of pods with the same names.
            up::unmount_under(dir)?;
            fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        let kspec = spec.kubelet_spec(ctd, up::mem_total()?)?;
        eprintln!(
            "bench: starting the {} column (kubelet in {}, cgroup root {})",
            spec.column,
            dir.display(),
            spec.cgroup_root
        );
        let kubelet = Kubelet::start(kspec)
            .with_context(|| format!("starting the {} column", spec.column))?;
        let started = Self {
            kubelet,
            spec: spec.clone(),
        };
        started.wait_kubepods_limit()?;
        if spec.switches.evented_pleg {
            started.wait_evented_settled()?;
        }
        Ok(started)
    }

    /// The read-only API may answer before the container manager has made kubepods.
    fn wait_kubepods_limit(&self) -> Result<()> {
        let deadline = Instant::now() + KUBEPODS_TIMEOUT;
        loop {
            let limit = kubepods_memory_limit(&self.spec.cgroup_root)?;
            if limit == Some(self.spec.kubepods_memory) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "after {KUBEPODS_TIMEOUT:?} the kubelet's {} is limited to {limit:?} B, not \
                 bpflet's {} B (MemTotal as the kubelet reads it differs?); last lines of {}:\n{}",
                self.kubepods_cgroup(),
                self.spec.kubepods_memory,
                self.log_path().display(),
                self.log_tail(20)
            );
            sleep_checked(POLL)?;
        }
    }

    fn wait_evented_settled(&self) -> Result<()> {
        let deadline = Instant::now() + EVENTED_CONNECT_TIMEOUT;
        loop {
            // No series yet reads as no stream yet.
            let s = self.evented_streams().unwrap_or(EventedStreams {
                opened: 0.0,
                failed: 0.0,
            });
            if s.opened >= 1.0 || s.failed >= EVENTED_MAX_STREAM_RETRIES {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Ok(());
            }
            sleep_checked(POLL)?;
        }
    }

    /// The kubelet's pid (`unshare` execs it: one pid).
    pub(crate) fn pid(&self) -> Result<u32> {
        self.kubelet.pid().context("the kubelet is not running")
    }

    /// Its `kubepods` cgroup (a cgroupfs path below the hierarchies' roots).
    pub(crate) fn kubepods_cgroup(&self) -> String {
        format!("{}/kubepods", self.spec.cgroup_root)
    }

    pub(crate) fn log_path(&self) -> &Path {
        self.kubelet.log_path()
    }

    pub(crate) fn log_tail(&self, lines: usize) -> String {
        self.kubelet.log_tail(lines)
    }

    /// Its JSON log, as records.
    pub(crate) fn log(&self) -> Result<Vec<Record>> {
        read_log(self.log_path())
    }

    /// The body of its `/metrics`.
    pub(crate) fn metrics(&self) -> Result<String> {
        let port = self.kubelet.read_only_port();
        let (code, body) = xtask::agent::http_get(port, "/metrics")
            .with_context(|| format!("GET /metrics on 127.0.0.1:{port}: no answer"))?;
        ensure!(
            code == 200,
            "GET /metrics on 127.0.0.1:{port}: status {code}"
        );
        Ok(body)
    }

    /// The CRI event streams its evented PLEG opened and failed to open.
    pub(crate) fn evented_streams(&self) -> Result<EventedStreams> {
        EventedStreams::from_metrics(&self.metrics()?).map_err(anyhow::Error::msg)
    }

    /// Whether the evented PLEG runs; `Err` says why not (the kubelet's numbers are then
    /// the generic PLEG's).
    pub(crate) fn check_evented(&self) -> std::result::Result<(), String> {
        self.metrics()
            .map_err(|e| format!("{e:#}"))
            .and_then(|m| EventedStreams::from_metrics(&m))
            .and_then(EventedStreams::check)
    }

    /// Stops the kubelet and undoes its mounts; its cgroup root stays for the node's
    /// teardown. Pods it left run on until containerd's teardown.
    pub(crate) fn stop(self) -> Result<()> {
        self.kubelet.stop()
    }
}

/// `kubelet_evented_pleg_connection_{success,error}_count` from the kubelet's `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct EventedStreams {
    pub(crate) opened: f64,
    pub(crate) failed: f64,
}

impl EventedStreams {
    /// The counters in Prometheus text; `Err` when the kubelet has none (no Evented PLEG).
    pub(crate) fn from_metrics(metrics: &str) -> std::result::Result<Self, String> {
        const OPENED: &str = "kubelet_evented_pleg_connection_success_count";
        let opened = metric_value(metrics, OPENED)
            .ok_or_else(|| format!("the kubelet's /metrics has no {OPENED}: is EventedPLEG on?"))?;
        Ok(Self {
            opened,
            failed: metric_value(metrics, "kubelet_evented_pleg_connection_error_count")
                .unwrap_or(0.0),
        })
    }

    /// Whether Evented PLEG ran: at least one CRI event stream was opened, and fewer failed
    /// than make the kubelet fall back to the generic PLEG. `Err` says why not.
    pub(crate) fn check(self) -> std::result::Result<(), String> {
        let Self { opened, failed } = self;
        if opened < 1.0 {
            return Err(format!(
                "the kubelet never opened containerd's CRI event stream ({failed} errors)"
            ));
        }
        if failed >= EVENTED_MAX_STREAM_RETRIES {
            return Err(format!(
                "containerd's CRI event stream failed {failed} times: after \
                 {EVENTED_MAX_STREAM_RETRIES} the kubelet fell back to the generic PLEG"
            ));
        }
        Ok(())
    }
}

/// The value of the series `name` without labels in Prometheus text.
pub(crate) fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (series, value) = l.split_once(' ')?;
            (series == name).then_some(value)
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The memory limit of `<cgroup_root>/kubepods` (v1 `memory.limit_in_bytes`, v2
/// `memory.max`); `None` when the cgroup does not exist or has no limit.
pub(crate) fn kubepods_memory_limit(cgroup_root: &str) -> Result<Option<u64>> {
    let mount = up::memory_hierarchy(&up::mounts()?).context("no memory cgroup hierarchy")?;
    let dir = mount
        .join(cgroup_root.trim_start_matches('/'))
        .join("kubepods");
    for file in ["memory.limit_in_bytes", "memory.max"] {
        let path = dir.join(file);
        match fs::read_to_string(&path) {
            Ok(text) => return Ok(parse_memory_limit(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    Ok(None)
}

/// A cgroup memory limit file's value; `None` for no limit (`max`, or v1's page-rounded
/// `i64::MAX`).
fn parse_memory_limit(text: &str) -> Option<u64> {
    let value: u64 = text.trim().parse().ok()?;
    (value < 1 << 62).then_some(value)
}

/// `kubepods memory limit: event 512 MiB, ...` for a report.
pub(crate) fn describe_limits(limits: &[(String, Option<u64>)]) -> String {
    let mut text = String::new();
    for (i, (column, limit)) in limits.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let value = limit.map_or_else(
            || "none".to_owned(),
            |b| format!("{:.0} MiB", b as f64 / f64::from(1 << 20)),
        );
        let _ = write!(text, "{sep}{column} {value}");
    }
    text
}

/// How many pod sandboxes of `ctd` are ready (`crictl pods --state ready`): zero once every
/// pod an agent removed is down in the runtime too.
pub(crate) fn ready_sandboxes(ctd: &PrivateContainerd) -> Result<usize> {
    let endpoint = format!("unix://{}", ctd.socket.display());
    let text = output(
        Command::new(peer::bin_dir().join("crictl"))
            .args(["--runtime-endpoint", &endpoint])
            .args(["--timeout", "10s", "pods", "--state", "ready", "-q"]),
    )?;
    Ok(text.lines().filter(|l| !l.trim().is_empty()).count())
}

// ---------------------------------------------------------------------------------------------
// The kubelet's JSON log (component-base's zap encoder: `ts` in ms since the epoch, `msg`)

/// One record of the kubelet's JSON log.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Record {
    pub(crate) at: SystemTime,
    pub(crate) msg: String,
    pub(crate) fields: Map<String, Value>,
}

impl Record {
    /// A log line as a record; `None` for anything else (klog's text lines before the
    /// logger is set up, Go panics).
    pub(crate) fn parse(line: &str) -> Option<Self> {
        let Value::Object(mut fields) = serde_json::from_str(line).ok()? else {
            return None;
        };
        let ms = fields.remove("ts")?.as_f64()?;
        let msg = match fields.remove("msg")? {
            Value::String(m) => m,
            _ => return None,
        };
        if !(ms.is_finite() && (0.0..1e15).contains(&ms)) {
            return None;
        }
        // Whole milliseconds and the rest apart: f64 seconds would lose microseconds.
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "0 <= ms < 1e15, and the fraction's nanoseconds are below 1e6"
        )]
        let (whole, nanos) = (ms.trunc() as u64, (ms.fract() * 1e6).round() as u64);
        Some(Self {
            at: UNIX_EPOCH + Duration::from_millis(whole) + Duration::from_nanos(nanos),
            msg,
            fields,
        })
    }

    /// The record's `pod` as `<namespace>/<name>`: klog writes `klog.KObj` as an object
    /// with `name` and `namespace` in JSON, as that string in text.
    pub(crate) fn pod(&self) -> Option<String> {
        self.fields.get("pod").and_then(pod_of)
    }

    /// Whether the record is about pod `key` (`<namespace>/<name>`), in its `pod` field or
    /// among its `pods` (`klog.KObjSlice`).
    pub(crate) fn names_pod(&self, key: &str) -> bool {
        self.pod().as_deref() == Some(key)
            || self
                .fields
                .get("pods")
                .and_then(Value::as_array)
                .is_some_and(|pods| pods.iter().any(|p| pod_of(p).as_deref() == Some(key)))
    }
}

/// A `klog.KObj` value as `<namespace>/<name>`.
fn pod_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => Some(format!(
            "{}/{}",
            o.get("namespace")?.as_str()?,
            o.get("name")?.as_str()?
        )),
        _ => None,
    }
}

/// Every record of the log file at `path`.
pub(crate) fn read_log(path: &Path) -> Result<Vec<Record>> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(Record::parse)
        .collect())
}

/// `default/<manifest name>-<node>`: a bench pod as the kubelet names it.
pub(crate) fn pod_key(name: &str) -> String {
    format!("default/{name}-{NODE}")
}

/// When the log first has a record with the message `msg` (about pod `pod`,
/// `<namespace>/<name>`, when given).
pub(crate) fn first_logged(log: &[Record], msg: &str, pod: Option<&str>) -> Option<SystemTime> {
    log.iter()
        .find(|r| r.msg == msg && pod.is_none_or(|p| r.names_pod(p)))
        .map(|r| r.at)
}

// ---------------------------------------------------------------------------------------------
// Records the pleg bench reads

/// When the sync loop took the PLEG's `ContainerDied` event of manifest `name`'s pod (its
/// `SyncLoop (PLEG): event for pod` record, `--v=2`): the kubelet's counterpart of bpflet's
/// `PLEG: container state changed` record.
pub(crate) fn pleg_died(log: &[Record], name: &str) -> Option<SystemTime> {
    let pod = pod_key(name);
    log.iter()
        .find(|r| {
            r.msg == "SyncLoop (PLEG): event for pod"
                && r.pod().as_deref() == Some(pod.as_str())
                && r.fields
                    .get("event")
                    .and_then(|e| e.get("Type"))
                    .and_then(Value::as_str)
                    == Some("ContainerDied")
        })
        .map(|r| r.at)
}

/// The eviction manager's first decision about manifest `name`'s pod: when, and whether it
/// refused (a static pod) rather than evicted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Eviction {
    pub(crate) at: SystemTime,
    pub(crate) refused: bool,
}

pub(crate) fn eviction(log: &[Record], name: &str) -> Option<Eviction> {
    let pod = pod_key(name);
    log.iter().find_map(|r| {
        let refused = match r.msg.as_str() {
            "Eviction manager: cannot evict a critical pod" => true,
            "Eviction manager: pod is evicted successfully" => false,
            _ => return None,
        };
        (r.pod().as_deref() == Some(pod.as_str())).then_some(Eviction { at: r.at, refused })
    })
}

/// When the memory threshold notifier fired (`eviction manager: <description> crossed`,
/// logged just before the `synchronize` it runs).
pub(crate) fn notifier_fired(log: &[Record]) -> Vec<SystemTime> {
    log.iter()
        .filter(|r| {
            r.msg.starts_with("eviction manager: ")
                && r.msg.ends_with("memory eviction threshold crossed")
        })
        .map(|r| r.at)
        .collect()
}

/// Whether the eviction manager created its memory threshold notifiers, and whether it
/// logged failing to.
pub(crate) fn notifier_logged(log: &[Record]) -> (bool, bool) {
    (
        log.iter()
            .any(|r| r.msg == "Eviction manager: created memoryThresholdNotifier"),
        log.iter()
            .any(|r| r.msg == "Eviction manager: failed to create memory threshold notifier"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn kubepods_gets_bpflets_limit() {
        let total = 8_148_492 * 1024;
        let reserved = system_reserved(total, 512 << 20).unwrap();
        assert_eq!(total - reserved, 512 << 20);
        // MemTotal is in kB, so the reservation is whole KiB; a total that is not leaves
        // the pods less than a KiB more, never less.
        let odd = system_reserved((8 << 30) + 100, 512 << 20).unwrap();
        assert_eq!(odd % 1024, 0);
        assert!((8 << 30) + 100 - odd - (512 << 20) < 1024);
        assert!(system_reserved(256 << 20, 512 << 20).is_err());
    }

    #[test]
    fn extra_config_reserves_the_rest_of_memory_and_sets_the_columns_switches() {
        // 8 GiB of MemTotal: 7.5 GiB reserved, 512 MiB left for kubepods.
        let reserved = system_reserved(8 << 30, up::KUBEPODS_MEMORY).unwrap();
        let generic = extra_config(reserved, Switches::GENERIC);
        assert!(
            generic
                .contains("enforceNodeAllocatable: [pods]\nsystemReserved:\n  memory: 7864320Ki\n"),
            "{generic}"
        );
        for line in [
            "kernelMemcgNotification: false",
            "logging:",
            "  format: json",
        ] {
            assert!(generic.lines().any(|l| l == line), "{line:?} in\n{generic}");
        }
        assert!(!generic.contains("featureGates"), "{generic}");
        let evented = extra_config(reserved, Switches::EVENTED);
        assert!(
            evented.ends_with("featureGates:\n  EventedPLEG: true\n"),
            "{evented}"
        );
        let both = extra_config(
            1 << 30,
            Switches {
                evented_pleg: true,
                kernel_memcg_notification: true,
            },
        );
        assert!(both.contains("  memory: 1048576Ki\n"), "{both}");
        assert!(both.contains("kernelMemcgNotification: true\n"), "{both}");
        assert!(
            both.ends_with("featureGates:\n  EventedPLEG: true\n"),
            "{both}"
        );
        // Ki rounds down, as bpflet's config does: never more kubepods than bpflet's.
        assert!(extra_config(2047, Switches::GENERIC).contains("memory: 1Ki\n"));
    }

    #[test]
    fn extra_config_fields_are_not_those_kubelet_spec_sets() {
        // The kubelet refuses a config with a field twice.
        let spec_fields = [
            "staticPodPath",
            "cgroupRoot",
            "evictionHard",
            "readOnlyPort",
            "fileCheckFrequency",
        ];
        let text = extra_config(1 << 30, Switches::EVENTED);
        for line in text.lines().filter(|l| !l.starts_with([' ', '#'])) {
            let field = line.split(':').next().unwrap();
            assert!(!spec_fields.contains(&field), "{field} is set twice");
        }
    }

    #[test]
    fn each_kubelet_column_has_its_own_root_below_the_node_root() {
        assert_eq!(
            cgroup_root_for("/bpflet-up-abc/", "kubelet"),
            "/bpflet-up-abc/kubelet"
        );
        assert_eq!(
            cgroup_root_for("/bpflet-up-abc", "kubelet-evented"),
            "/bpflet-up-abc/kubelet-evented"
        );
    }

    #[test]
    fn versions_are_read_from_each_binarys_version_output() {
        assert_eq!(
            format_versions(
                "Kubernetes v1.34.4\n",
                "containerd github.com/containerd/containerd/v2 v2.2.10 abcdef\n",
                "runc version 1.4.4\ncommit: v1.4.4-0-g1234\nspec: 1.2.1\n"
            ),
            "kubelet v1.34.4, containerd v2.2.10, runc 1.4.4"
        );
    }

    #[test]
    fn metric_values_are_read_from_unlabelled_series_only() {
        let text = "# HELP kubelet_evented_pleg_connection_success_count x\n\
                    # TYPE kubelet_evented_pleg_connection_success_count counter\n\
                    kubelet_evented_pleg_connection_success_count 1\n\
                    kubelet_evented_pleg_connection_error_count_x 9\n\
                    kubelet_evented_pleg_connection_error_count{a=\"b\"} 7\n\
                    kubelet_evented_pleg_connection_latency_seconds_bucket{le=\"0.005\"} 1\n\
                    kubelet_running_pods 3 1700000000000\n\
                    kubelet_restarted_pods_total 0\n";
        assert_eq!(
            metric_value(text, "kubelet_evented_pleg_connection_success_count"),
            Some(1.0)
        );
        assert_eq!(
            metric_value(text, "kubelet_evented_pleg_connection_error_count"),
            None
        );
        assert_eq!(metric_value(text, "kubelet_evented_pleg_connection"), None);
        assert_eq!(metric_value(text, "kubelet_running_pods"), Some(3.0));
        assert_eq!(
            metric_value(text, "kubelet_restarted_pods_total"),
            Some(0.0)
        );
        assert_eq!(metric_value("x one\n", "x"), None);
    }

    #[test]
    fn evented_pleg_is_judged_from_its_counters() {
        let judge = |metrics: &str| EventedStreams::from_metrics(metrics)?.check();
        let ok = "# HELP x\nkubelet_evented_pleg_connection_success_count 1\n\
                  kubelet_evented_pleg_connection_error_count 0\n";
        assert_eq!(judge(ok), Ok(()));
        assert_eq!(
            EventedStreams::from_metrics(ok),
            Ok(EventedStreams {
                opened: 1.0,
                failed: 0.0
            })
        );
        let fell_back = "kubelet_evented_pleg_connection_success_count 2\n\
                         kubelet_evented_pleg_connection_error_count 5\n";
        assert!(judge(fell_back).unwrap_err().contains("fell back"));
        let never = "kubelet_evented_pleg_connection_success_count 0\n";
        assert!(judge(never).unwrap_err().contains("never opened"));
        let off = "kubelet_evented_pleg_connection_latency_seconds_count 0\n";
        assert!(judge(off).unwrap_err().contains("has no"));
    }

    #[test]
    fn memory_limits_read_none_for_unlimited() {
        assert_eq!(parse_memory_limit("536870912\n"), Some(512 << 20));
        assert_eq!(parse_memory_limit("9223372036854771712\n"), None);
        assert_eq!(parse_memory_limit("max\n"), None);
        assert_eq!(
            describe_limits(&[
                ("event".to_owned(), Some(512 << 20)),
                ("kubelet".to_owned(), None)
            ]),
            "event 512 MiB, kubelet none"
        );
    }

    fn records(text: &str) -> Vec<Record> {
        text.lines().filter_map(Record::parse).collect()
    }

    #[test]
    fn a_record_is_found_by_message() {
        let log = records(concat!(
            "{\"ts\":1000000000000.5,\"caller\":\"x.go:1\",\"msg\":\"Attempting to register node\",\"v\":0}\n",
            "not json\n",
            "{\"ts\":1000001250.0,\"caller\":\"kubelet/kubelet_node_status.go:78\",\"msg\":\"Successfully registered node\",\"v\":0,\"node\":{\"name\":\"benchnode\"}}\n",
            "{\"ts\":1000009000.0,\"msg\":\"Successfully registered node\"}\n",
        ));
        assert_eq!(
            first_logged(&log, "Successfully registered node", None),
            Some(at(1_000_001_250))
        );
        assert_eq!(first_logged(&log, "Node became not ready", None), None);
        assert_eq!(Record::parse("{\"msg\":\"m\"}"), None);
        assert_eq!(first_logged(&records("{\"msg\":\"m\"}"), "m", None), None);
    }

    #[test]
    fn sync_loop_add_is_found_by_pod_in_both_forms() {
        let log = records(
            r#"{"ts":1765100000000.5,"caller":"kubelet/kubelet.go:2515","msg":"SyncLoop ADD","v":2,"source":"file","pods":[{"name":"lat1-kubelet-0-benchnode","namespace":"default"}]}
not json
{"ts":1765100001000,"msg":"SyncLoop REMOVE","v":2,"source":"file","pods":[{"name":"lat1-kubelet-1-benchnode","namespace":"default"}]}
{"ts":1765100002250,"msg":"SyncLoop ADD","v":2,"source":"file","pods":["default/lat1-kubelet-1-benchnode"]}
{"ts":1765100003000,"msg":"SyncLoop ADD","v":2,"source":"file","pods":["default/lat1-kubelet-10-benchnode"]}
"#,
        );
        let added = |name: &str| first_logged(&log, "SyncLoop ADD", Some(&pod_key(name)));
        assert_eq!(
            added("lat1-kubelet-0"),
            Some(UNIX_EPOCH + Duration::from_micros(1_765_100_000_000_500))
        );
        assert_eq!(added("lat1-kubelet-1"), Some(at(1_765_100_002_250)));
        assert_eq!(added("lat1-kubelet-2"), None);
        assert_eq!(
            first_logged(&log, "SyncLoop ADD", Some("default/lat1-kubelet")),
            None
        );
    }

    const PLEG_LOG: &str = r#"I1207 10:00:00.000000   1 flags.go:64] FLAG: --v="2"
{"ts":1796637600123.456,"caller":"kubelet/kubelet.go:2546","msg":"SyncLoop (PLEG): event for pod","v":2,"pod":{"name":"exit-kl-01-benchnode","namespace":"default"},"event":{"ID":"abc","Type":"ContainerStarted","Data":"c1"}}
{"ts":1796637601000,"caller":"kubelet/kubelet.go:2546","msg":"SyncLoop (PLEG): event for pod","v":2,"pod":{"name":"exit-kl-01-benchnode","namespace":"default"},"event":{"ID":"abc","Type":"ContainerDied","Data":"c1"}}
{"ts":1796637602000,"caller":"kubelet/kubelet.go:2546","msg":"SyncLoop (PLEG): event for pod","v":2,"pod":{"name":"exit-kl-01-benchnode","namespace":"default"},"event":{"ID":"abc","Type":"ContainerDied","Data":"sandbox"}}
{"ts":1796637603000,"caller":"eviction/eviction_manager.go:106","msg":"Eviction manager: created memoryThresholdNotifier","v":0,"notifier":"hard allocatable memory eviction threshold"}
{"ts":1796637604000,"caller":"eviction/eviction_manager.go:186","msg":"eviction manager: hard allocatable memory eviction threshold crossed","v":0}
{"ts":1796637604250,"caller":"eviction/eviction_manager.go:610","msg":"Eviction manager: cannot evict a critical pod","pod":{"name":"ramp-kl-00-benchnode","namespace":"default"}}
{"ts":1796637605000,"caller":"eviction/eviction_manager.go:629","msg":"Eviction manager: pod is evicted successfully","v":0,"pod":"default/ramp-kl-01-benchnode"}
"#;

    #[test]
    fn records_parse_with_millisecond_times_and_either_pod_form() {
        let log = records(PLEG_LOG);
        assert_eq!(log.len(), 7, "the klog text line is left out");
        let first = log[0].at.duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(first.as_secs(), 1_796_637_600);
        assert!(first.subsec_micros().abs_diff(123_456) <= 1, "{first:?}");
        assert_eq!(
            log[0].pod().as_deref(),
            Some("default/exit-kl-01-benchnode")
        );
        assert_eq!(
            log[6].pod().as_deref(),
            Some("default/ramp-kl-01-benchnode")
        );
        assert_eq!(log[3].pod(), None);
        assert_eq!(Record::parse(r#"{"msg":"no time"}"#), None);
        assert_eq!(Record::parse(r#"{"ts":-1,"msg":"x"}"#), None);
    }

    #[test]
    fn the_pleg_event_is_the_first_container_died() {
        let log = records(PLEG_LOG);
        assert_eq!(pleg_died(&log, "exit-kl-01"), Some(at(1_796_637_601_000)));
        assert_eq!(pleg_died(&log, "exit-kl-0"), None);
        assert_eq!(pleg_died(&log, "ramp-kl-00"), None);
    }

    #[test]
    fn evictions_and_refusals_are_told_apart() {
        let log = records(PLEG_LOG);
        assert_eq!(
            eviction(&log, "ramp-kl-00"),
            Some(Eviction {
                at: at(1_796_637_604_250),
                refused: true
            })
        );
        assert_eq!(
            eviction(&log, "ramp-kl-01"),
            Some(Eviction {
                at: at(1_796_637_605_000),
                refused: false
            })
        );
        assert_eq!(eviction(&log, "ramp-kl-0"), None);
    }

    #[test]
    fn the_notifier_records_are_found() {
        let log = records(PLEG_LOG);
        assert_eq!(notifier_fired(&log), vec![at(1_796_637_604_000)]);
        assert_eq!(notifier_logged(&log), (true, false));
        assert_eq!(notifier_logged(&log[..3]), (false, false));
    }
}
