//! The upstream kubelet as a bench column: started standalone on the bench's containerd 2,
//! under a cgroup root of the bench's making, with bpflet's bench limits, and read through
//! the same read-only API (`/pods`, `/metrics`, `/metrics/resource`) as bpflet.
//!
//! What makes a kubelet column comparable with bpflet's (`up::render_config` is bpflet's
//! bench config):
//! - **kubepods memory limit.** Both configs carry `enforceNodeAllocatable: [pods]` and
//!   `systemReserved.memory = MemTotal - up::KUBEPODS_MEMORY` (in Ki). The kubelet limits
//!   `kubepods` to capacity (cAdvisor's `MemTotal`) minus `systemReserved` (the hard
//!   eviction threshold is not subtracted from the cgroup limit), which is 512 MiB as for
//!   bpflet. [`kubepods_memory_limit`] reads the limit back so a bench can show it.
//! - **eviction threshold.** `evictionHard: memory.available: 100Mi` in both (the kubelet's
//!   comes from `KubeletSpec::config_yaml`).
//! - **cgroup root scheme.** Each agent gets its own cgroup root, `<root>/kubepods/...`
//!   below it, with the cgroupfs driver. A kubelet's root is a child of the bench node's
//!   root (see [`cgroup_root_for`]), so the node's teardown removes it with the rest.
//! - **static pods.** The same directory, the same node name (`--hostname-override`), so
//!   pods are named `<manifest name>-<node>` by both. `fileCheckFrequency` stays at the
//!   upstream default, 20 s, as in bpflet's config; both also watch the directory with
//!   inotify.
//!
//! Deviations from upstream defaults beyond `KubeletSpec`'s (standalone, cgroupfs, image GC
//! thresholds): `logging.format: json` (benches read records, never prose), `--v=2` (for
//! the `SyncLoop ADD` record), and for [`KubeletPleg::Evented`]
//! `featureGates: {EventedPLEG: true}`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use xtask::containerd::PrivateContainerd;
use xtask::peer::{self, Kubelet, KubeletSpec};

use crate::{output, up};

/// Which PLEG the kubelet runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KubeletPleg {
    /// Upstream's default: relist every second.
    Generic,
    /// Feature gate `EventedPLEG` (alpha): CRI container events, relist every 300 s.
    Evented,
}

impl KubeletPleg {
    /// The column's name in bench reports.
    pub(crate) fn column(self) -> &'static str {
        match self {
            KubeletPleg::Generic => "kubelet",
            KubeletPleg::Evented => "kubelet-evented",
        }
    }
}

/// Upstream's `eventedPlegMaxStreamRetries` (`pkg/kubelet/kubelet.go`): after this many
/// failed `GetContainerEvents` streams the kubelet falls back to the generic PLEG.
const EVENTED_MAX_STREAM_RETRIES: f64 = 5.0;
const EVENTED_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

/// Where and how a bench's kubelet runs.
#[derive(Clone, Debug)]
pub(crate) struct BenchKubeletSpec {
    /// The kubelet's own directory (config, `--root-dir`, log).
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
    pub(crate) pleg: KubeletPleg,
}

/// The cgroup root of the kubelet of `pleg` on a bench node whose root is `node_root`.
pub(crate) fn cgroup_root_for(node_root: &str, pleg: KubeletPleg) -> String {
    format!("{}/{}", node_root.trim_end_matches('/'), pleg.column())
}

/// The `KubeletConfiguration` lines a bench adds to `KubeletSpec`'s: the kubepods limit,
/// JSON logs and the PLEG. `system_reserved` is in bytes (written in Ki, rounded down, as
/// bpflet's).
pub(crate) fn extra_config(system_reserved: u64, pleg: KubeletPleg) -> String {
    let mut text = format!(
        "# kubepods gets capacity (MemTotal) - systemReserved, as in bpflet's bench config.
enforceNodeAllocatable: [pods]
systemReserved:
  memory: {}Ki
# Benches read records, never prose (the --logging-format flag is deprecated).
logging:
  format: json
",
        system_reserved / 1024
    );
    if pleg == KubeletPleg::Evented {
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
            "{} missing from {}: run `cargo xtask build-peer`",
            missing.join(", "),
            dir.display()
        );
    }
    Ok(())
}

/// The peer's versions as their binaries report them: `kubelet --version`,
/// `containerd --version`, `runc --version` (first line each).
pub(crate) fn versions() -> Result<String> {
    let dir = peer::bin_dir();
    let first_line = |name: &str| -> Result<String> {
        let text = output(Command::new(dir.join(name)).arg("--version"))?;
        Ok(text.lines().next().unwrap_or_default().trim().to_owned())
    };
    Ok(format!(
        "{}; {}; {}",
        first_line("kubelet")?,
        first_line("containerd")?,
        first_line("runc")?
    ))
}

/// A kubelet started for a bench.
pub(crate) struct BenchKubelet {
    kubelet: Kubelet,
    pleg: KubeletPleg,
}

impl BenchKubelet {
    /// Starts the kubelet on `ctd` and waits until it serves `/pods`; for
    /// [`KubeletPleg::Evented`], also until its CRI event stream is connected (an evented
    /// kubelet that cannot get one falls back to the generic PLEG: an error here, with the
    /// reason).
    pub(crate) fn start(spec: &BenchKubeletSpec, ctd: &PrivateContainerd) -> Result<Self> {
        require_built()?;
        let mem_total = up::mem_total()?;
        let system_reserved = mem_total
            .checked_sub(spec.kubepods_memory)
            .with_context(|| {
                format!(
                    "MemTotal ({mem_total} B) is below the kubepods limit ({} B)",
                    spec.kubepods_memory
                )
            })?;
        let mut kspec = KubeletSpec::new(
            spec.work_dir.clone(),
            ctd,
            spec.manifests.clone(),
            spec.read_only_port,
        );
        kspec.cgroup_root.clone_from(&spec.cgroup_root);
        kspec.node_name.clone_from(&spec.node_name);
        kspec.extra_config = extra_config(system_reserved, spec.pleg);
        // `--v=2` for the `SyncLoop ADD` record.
        kspec.args = vec!["--v=2".to_owned()];
        // A log of an earlier run would hold records of pods with the same names.
        let log = spec.work_dir.join("kubelet.log");
        match fs::remove_file(&log) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", log.display()));
            }
            _ => {}
        }
        let kubelet = Kubelet::start(kspec)
            .with_context(|| format!("starting the {} column", spec.pleg.column()))?;
        let started = Self {
            kubelet,
            pleg: spec.pleg,
        };
        if spec.pleg == KubeletPleg::Evented {
            started.wait_evented_connected()?;
        }
        Ok(started)
    }

    pub(crate) fn pleg(&self) -> KubeletPleg {
        self.pleg
    }

    /// The kubelet's pid (`unshare` execs it: one pid).
    pub(crate) fn pid(&self) -> Result<u32> {
        self.kubelet.pid().context("the kubelet is not running")
    }

    pub(crate) fn log_path(&self) -> &Path {
        self.kubelet.log_path()
    }

    pub(crate) fn log_tail(&self, lines: usize) -> String {
        self.kubelet.log_tail(lines)
    }

    /// The value of the unlabelled series `name` on its `/metrics`.
    pub(crate) fn metric(&self, name: &str) -> Result<Option<f64>> {
        let port = self.kubelet.read_only_port();
        let (code, body) = xtask::agent::http_get(port, "/metrics")
            .with_context(|| format!("GET /metrics on 127.0.0.1:{port}: no answer"))?;
        if code != 200 {
            bail!("GET /metrics on 127.0.0.1:{port}: status {code}");
        }
        Ok(metric_value(&body, name))
    }

    /// Whether the evented PLEG is still in use: an event stream was connected and fewer
    /// streams failed than make the kubelet fall back. `Err` says why not.
    pub(crate) fn check_evented(&self) -> Result<()> {
        let (ok, errors) = self.evented_counts()?;
        if ok < 1.0 {
            bail!(
                "the kubelet never connected a CRI container event stream \
                 (kubelet_evented_pleg_connection_success_count is {ok}, errors {errors})"
            );
        }
        if errors >= EVENTED_MAX_STREAM_RETRIES {
            bail!(
                "{errors} CRI container event streams failed \
                 (kubelet_evented_pleg_connection_error_count): after \
                 {EVENTED_MAX_STREAM_RETRIES} the kubelet falls back to the generic PLEG"
            );
        }
        Ok(())
    }

    fn evented_counts(&self) -> Result<(f64, f64)> {
        Ok((
            self.metric("kubelet_evented_pleg_connection_success_count")?
                .unwrap_or(0.0),
            self.metric("kubelet_evented_pleg_connection_error_count")?
                .unwrap_or(0.0),
        ))
    }

    fn wait_evented_connected(&self) -> Result<()> {
        let deadline = Instant::now() + EVENTED_CONNECT_TIMEOUT;
        loop {
            let (ok, errors) = self.evented_counts()?;
            if ok >= 1.0 || errors >= EVENTED_MAX_STREAM_RETRIES || Instant::now() >= deadline {
                return self.check_evented().with_context(|| {
                    format!(
                        "the EventedPLEG kubelet is not using CRI events; last lines of {}:\n{}",
                        self.log_path().display(),
                        self.log_tail(20)
                    )
                });
            }
            thread::sleep(POLL);
        }
    }

    /// Stops the kubelet and undoes its mounts; its cgroup root stays for the node's
    /// teardown. Pods it left run on until containerd's teardown.
    pub(crate) fn stop(self) -> Result<()> {
        self.kubelet.stop()
    }
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

/// When the kubelet's JSON log first shows pod `pod` (`<name>-<node>`, namespace `default`)
/// in a `SyncLoop ADD` record: the moment its config sources handed the pod to the sync
/// loop. Records are `{"ts": <ms since the epoch>, "msg": ..., "pods": [...]}`, a pod as
/// `{"name", "namespace"}` or as `namespace/name`.
pub(crate) fn sync_loop_add_at(log: &str, pod: &str) -> Option<SystemTime> {
    let names_pod = |v: &Value| match v {
        Value::String(s) => s == pod || s.strip_prefix("default/") == Some(pod),
        Value::Object(_) => v.get("name").and_then(Value::as_str) == Some(pod),
        _ => false,
    };
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|r| {
            r.get("msg").and_then(Value::as_str) == Some("SyncLoop ADD")
                && r.get("pods")
                    .and_then(Value::as_array)
                    .is_some_and(|pods| pods.iter().any(names_pod))
        })
        .and_then(|r| r.get("ts")?.as_f64())
        .filter(|ms| ms.is_finite() && *ms >= 0.0 && *ms < 1e15)
        .map(|ms| {
            // Whole milliseconds and the rest apart: f64 seconds would lose microseconds.
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "0 <= ms < 1e15, and the fraction's nanoseconds are below 1e6"
            )]
            let (whole, nanos) = (ms.trunc() as u64, (ms.fract() * 1e6).round() as u64);
            UNIX_EPOCH + Duration::from_millis(whole) + Duration::from_nanos(nanos)
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_config_reserves_the_rest_of_memory_and_gates_evented_pleg() {
        let reserved = (8u64 << 30) - (512 << 20);
        let generic = extra_config(reserved, KubeletPleg::Generic);
        assert!(
            generic.contains("enforceNodeAllocatable: [pods]\n"),
            "{generic}"
        );
        assert!(
            generic.contains("systemReserved:\n  memory: 7864320Ki\n"),
            "{generic}"
        );
        assert!(generic.contains("logging:\n  format: json\n"), "{generic}");
        assert!(!generic.contains("featureGates"), "{generic}");
        let evented = extra_config(reserved, KubeletPleg::Evented);
        assert!(
            evented.ends_with("featureGates:\n  EventedPLEG: true\n"),
            "{evented}"
        );
        // Ki rounds down, as bpflet's config does: never more kubepods than bpflet's.
        assert!(extra_config(2047, KubeletPleg::Generic).contains("memory: 1Ki\n"));
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
        let text = extra_config(1 << 30, KubeletPleg::Evented);
        for line in text.lines().filter(|l| !l.starts_with([' ', '#'])) {
            let field = line.split(':').next().unwrap();
            assert!(!spec_fields.contains(&field), "{field} is set twice");
        }
    }

    #[test]
    fn each_kubelet_column_has_its_own_root_below_the_node_root() {
        assert_eq!(
            cgroup_root_for("/bpflet-up-abc/", KubeletPleg::Generic),
            "/bpflet-up-abc/kubelet"
        );
        assert_eq!(
            cgroup_root_for("/bpflet-up-abc", KubeletPleg::Evented),
            "/bpflet-up-abc/kubelet-evented"
        );
    }

    #[test]
    fn metric_values_are_read_from_unlabelled_series_only() {
        let text = "# HELP kubelet_evented_pleg_connection_success_count x\n\
                    # TYPE kubelet_evented_pleg_connection_success_count counter\n\
                    kubelet_evented_pleg_connection_success_count 1\n\
                    kubelet_evented_pleg_connection_error_count_x 9\n\
                    kubelet_evented_pleg_connection_error_count{a=\"b\"} 7\n\
                    kubelet_running_pods 3 1700000000000\n";
        assert_eq!(
            metric_value(text, "kubelet_evented_pleg_connection_success_count"),
            Some(1.0)
        );
        assert_eq!(
            metric_value(text, "kubelet_evented_pleg_connection_error_count"),
            None
        );
        assert_eq!(metric_value(text, "kubelet_running_pods"), Some(3.0));
    }

    #[test]
    fn sync_loop_add_is_found_by_pod_in_both_forms() {
        let log = r#"{"ts":1765100000000.5,"caller":"kubelet/kubelet.go:2515","msg":"SyncLoop ADD","v":2,"source":"file","pods":[{"name":"lat1-kubelet-0-benchnode","namespace":"default"}]}
not json
{"ts":1765100001000,"msg":"SyncLoop REMOVE","v":2,"source":"file","pods":[{"name":"lat1-kubelet-1-benchnode","namespace":"default"}]}
{"ts":1765100002250,"msg":"SyncLoop ADD","v":2,"source":"file","pods":["default/lat1-kubelet-1-benchnode"]}
{"ts":1765100003000,"msg":"SyncLoop ADD","v":2,"source":"file","pods":["default/lat1-kubelet-10-benchnode"]}
"#;
        assert_eq!(
            sync_loop_add_at(log, "lat1-kubelet-0-benchnode"),
            Some(UNIX_EPOCH + Duration::from_micros(1_765_100_000_000_500))
        );
        assert_eq!(
            sync_loop_add_at(log, "lat1-kubelet-1-benchnode"),
            Some(UNIX_EPOCH + Duration::from_millis(1_765_100_002_250))
        );
        assert_eq!(sync_loop_add_at(log, "lat1-kubelet-2-benchnode"), None);
        assert_eq!(sync_loop_add_at(log, "lat1-kubelet"), None);
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
}
