//! The upstream kubelet as a column of `bench pleg`: started on the bench's [`Node`] (its
//! static pod directory, its read-only port, its node name) and its private containerd 2,
//! so the bench reads the kubelet's `/pods` through the same `Node::pods` as bpflet's, and
//! its JSON log (`logging: {format: json}` in its config, the flag's non-deprecated form)
//! as records.
//!
//! Same limits as bpflet: the kubelet gets `enforceNodeAllocatable: [pods]` and a
//! `systemReserved` memory of `MemTotal` minus [`up::KUBEPODS_MEMORY`], so its kubepods
//! cgroup is limited to the 512 MiB of bpflet's (`capacity - systemReserved - kubeReserved`,
//! `getNodeAllocatableAbsolute`; [`start`] checks the limit it wrote), and the
//! `evictionHard: memory.available: 100Mi` of `KubeletSpec::config_yaml`, which with
//! `enforceNodeAllocatable: [pods]` also applies as `allocatableMemory.available` to that
//! cgroup (`addAllocatableThresholds`). Its cgroup root is `<bench root>/kubelet`, below
//! the bench's own, so the bench's teardown removes it.
//!
//! How v1.34.4 observes memory (pkg/kubelet/eviction): every 10 s (`evictionMonitoringPeriod`)
//! `synchronize` asks the summary provider for fresh cAdvisor stats of the kubepods cgroup
//! (`updateStats`), and `allocatableMemory.available` is that cgroup's limit minus its working
//! set (usage minus `total_inactive_file`). With `kernelMemcgNotification: true` it also arms
//! a cgroup v1 usage-threshold eventfd on kubepods' `memory.usage_in_bytes` at `capacity -
//! 100Mi + inactive_file` (re-armed at most every 10 s, from the same stats), and a crossing
//! runs `synchronize` at once. Default: `false`.
//!
//! The kubelet never evicts a static pod: `evictPod` refuses every pod
//! `kubelettypes.IsCriticalPod` calls critical, which includes every static pod, and logs
//! `Eviction manager: cannot evict a critical pod`. Standalone, every pod is static, so its
//! eviction decisions are refusals; the bench takes that record as the decision's moment.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, ensure};
use serde_json::{Map, Value};
use xtask::containerd::PrivateContainerd;
use xtask::peer::{self, Kubelet, KubeletSpec};

use super::pods::{NODE, Node, sleep_checked};
use crate::{output, up};

/// The v1 memory hierarchy.
const MEMORY_V1: &str = "/sys/fs/cgroup/memory";
/// Upper bound for the kubelet to limit its kubepods cgroup once it serves `/pods`.
const KUBEPODS_TIMEOUT: Duration = Duration::from_secs(60);

/// What differs between the kubelet columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Setup {
    /// `featureGates: {EventedPLEG: true}`: CRI container events (containerd 2.x).
    pub(crate) evented_pleg: bool,
    /// `kernelMemcgNotification: true`.
    pub(crate) kernel_memcg_notification: bool,
}

/// The kubelet's `cgroupRoot` below the bench's cgroup root.
pub(crate) fn cgroup_root(bench_root: &str) -> String {
    format!("{bench_root}/kubelet")
}

/// The kubepods cgroup (cgroupfs path) of a kubelet with `cgroup_root`.
pub(crate) fn kubepods(cgroup_root: &str) -> String {
    format!("{cgroup_root}/kubepods")
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

/// The `KubeletConfiguration` lines added to `KubeletSpec::config_yaml`'s (which already
/// sets `evictionHard: memory.available: 100Mi`).
pub(crate) fn extra_config(system_reserved: u64, setup: Setup) -> String {
    let mut text = format!(
        "# kubepods gets MemTotal - systemReserved, as bpflet's bench config.\n\
         enforceNodeAllocatable: [pods]\n\
         systemReserved:\n  memory: {}Ki\n\
         kernelMemcgNotification: {}\n\
         logging:\n  format: json\n",
        system_reserved / 1024,
        setup.kernel_memcg_notification
    );
    if setup.evented_pleg {
        text.push_str("featureGates:\n  EventedPLEG: true\n");
    }
    text
}

/// Starts the kubelet for the column `tag` on `node`'s static pod directory and read-only
/// port (bpflet must be stopped), with its work directory `kubelet-<tag>` made afresh, and
/// checks that its kubepods cgroup has bpflet's limit.
pub(crate) fn start(
    node: &Node,
    ctd: &PrivateContainerd,
    tag: &str,
    setup: Setup,
) -> Result<Kubelet> {
    let work_dir = node.work_dir.join(format!("kubelet-{tag}"));
    if work_dir.exists() {
        // A crashed run may have left the kubelet's root directory mounted.
        up::unmount_under(&work_dir)?;
        fs::remove_dir_all(&work_dir)
            .with_context(|| format!("removing {}", work_dir.display()))?;
    }
    let mut spec = KubeletSpec::new(work_dir, ctd, node.manifests.clone(), node.port);
    spec.cgroup_root = cgroup_root(&node.cgroup_root);
    spec.node_name = NODE.to_owned();
    spec.extra_config = extra_config(
        system_reserved(up::mem_total()?, up::KUBEPODS_MEMORY)?,
        setup,
    );
    // `--v=2` for the sync loop's PLEG records; the JSON format is set in the config.
    spec.args = vec!["--v=2".to_owned()];
    let kubepods = kubepods(&spec.cgroup_root);
    eprintln!(
        "bench pleg: kubelet `{tag}` in {}, cgroup root {}",
        spec.work_dir.display(),
        spec.cgroup_root
    );
    let kubelet = Kubelet::start(spec)?;
    // The read-only API may answer before the container manager has made kubepods.
    let limit_file = Path::new(MEMORY_V1)
        .join(kubepods.trim_start_matches('/'))
        .join("memory.limit_in_bytes");
    let deadline = Instant::now() + KUBEPODS_TIMEOUT;
    loop {
        let limit = fs::read_to_string(&limit_file).unwrap_or_default();
        if limit.trim().parse::<u64>().ok() == Some(up::KUBEPODS_MEMORY) {
            return Ok(kubelet);
        }
        ensure!(
            Instant::now() < deadline,
            "after {KUBEPODS_TIMEOUT:?} the kubelet's {} holds {:?}, not bpflet's limit {} \
             (MemTotal as the kubelet reads it differs?); last lines of its log:\n{}",
            limit_file.display(),
            limit.trim(),
            up::KUBEPODS_MEMORY,
            kubelet.log_tail(20)
        );
        sleep_checked(Duration::from_millis(100))?;
    }
}

/// `kubelet v1.34.4, runc 1.4.4` from the peer binaries.
pub(crate) fn versions() -> Result<String> {
    let bin = peer::bin_dir();
    let kubelet = output(Command::new(bin.join("kubelet")).arg("--version"))?;
    let runc = output(Command::new(bin.join("runc")).arg("--version"))?;
    Ok(format!(
        "kubelet {}, runc {}",
        kubelet.split_whitespace().last().unwrap_or_default(),
        runc.lines()
            .next()
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or_default()
    ))
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
        (ms.is_finite() && ms >= 0.0).then(|| Self {
            at: UNIX_EPOCH + Duration::from_secs_f64(ms / 1e3),
            msg,
            fields,
        })
    }

    /// The record's `pod` as `<namespace>/<name>`: klog writes `klog.KObj` as an object
    /// with `name` and `namespace` in JSON, as that string in text.
    pub(crate) fn pod(&self) -> Option<String> {
        match self.fields.get("pod")? {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => Some(format!(
                "{}/{}",
                o.get("namespace")?.as_str()?,
                o.get("name")?.as_str()?
            )),
            _ => None,
        }
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

/// `default/<manifest name>-<node>`: a static pod as the kubelet names it.
fn pod_key(name: &str) -> String {
    format!("default/{name}-{NODE}")
}

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

/// Whether Evented PLEG ran, from the kubelet's `/metrics`: at least one CRI event stream
/// was opened, and fewer errors than the 5 retries after which it falls back to the generic
/// PLEG (`eventedPlegMaxStreamRetries`). `Err` says why not.
pub(crate) fn evented_pleg_ran(metrics: &str) -> std::result::Result<(), String> {
    let value = |name: &str| {
        metrics.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = rest.strip_prefix(' ')?;
            rest.trim().parse::<f64>().ok()
        })
    };
    let opened = value("kubelet_evented_pleg_connection_success_count");
    let errors = value("kubelet_evented_pleg_connection_error_count").unwrap_or(0.0);
    match opened {
        None => Err(
            "the kubelet's /metrics has no kubelet_evented_pleg_connection_success_count"
                .to_owned(),
        ),
        Some(n) if n < 1.0 => Err(format!(
            "the kubelet never opened containerd's CRI event stream ({errors} errors)"
        )),
        Some(_) if errors >= 5.0 => Err(format!(
            "containerd's CRI event stream failed {errors} times: the kubelet fell back to the \
             generic PLEG"
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = r#"I1207 10:00:00.000000   1 flags.go:64] FLAG: --v="2"
{"ts":1796637600123.456,"caller":"kubelet/kubelet.go:2546","msg":"SyncLoop (PLEG): event for pod","v":2,"pod":{"name":"exit-kl-01-benchnode","namespace":"default"},"event":{"ID":"abc","Type":"ContainerStarted","Data":"c1"}}
{"ts":1796637601000,"caller":"kubelet/kubelet.go:2546","msg":"SyncLoop (PLEG): event for pod","v":2,"pod":{"name":"exit-kl-01-benchnode","namespace":"default"},"event":{"ID":"abc","Type":"ContainerDied","Data":"c1"}}
{"ts":1796637602000,"caller":"kubelet/kubelet.go:2546","msg":"SyncLoop (PLEG): event for pod","v":2,"pod":{"name":"exit-kl-01-benchnode","namespace":"default"},"event":{"ID":"abc","Type":"ContainerDied","Data":"sandbox"}}
{"ts":1796637603000,"caller":"eviction/eviction_manager.go:106","msg":"Eviction manager: created memoryThresholdNotifier","v":0,"notifier":"hard allocatable memory eviction threshold"}
{"ts":1796637604000,"caller":"eviction/eviction_manager.go:186","msg":"eviction manager: hard allocatable memory eviction threshold crossed","v":0}
{"ts":1796637604250,"caller":"eviction/eviction_manager.go:610","msg":"Eviction manager: cannot evict a critical pod","pod":{"name":"ramp-kl-00-benchnode","namespace":"default"}}
{"ts":1796637605000,"caller":"eviction/eviction_manager.go:629","msg":"Eviction manager: pod is evicted successfully","v":0,"pod":"default/ramp-kl-01-benchnode"}
"#;

    fn log() -> Vec<Record> {
        LOG.lines().filter_map(Record::parse).collect()
    }

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn records_parse_with_millisecond_times_and_either_pod_form() {
        let log = log();
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
        let log = log();
        assert_eq!(pleg_died(&log, "exit-kl-01"), Some(at(1_796_637_601_000)));
        assert_eq!(pleg_died(&log, "exit-kl-0"), None);
        assert_eq!(pleg_died(&log, "ramp-kl-00"), None);
    }

    #[test]
    fn evictions_and_refusals_are_told_apart() {
        let log = log();
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
        let log = log();
        assert_eq!(notifier_fired(&log), vec![at(1_796_637_604_000)]);
        assert_eq!(notifier_logged(&log), (true, false));
        assert_eq!(notifier_logged(&log[..3]), (false, false));
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
    fn config_enforces_allocatable_and_sets_the_columns_switches() {
        let plain = extra_config(
            1 << 30,
            Setup {
                evented_pleg: false,
                kernel_memcg_notification: false,
            },
        );
        for line in [
            "enforceNodeAllocatable: [pods]",
            "systemReserved:",
            "  memory: 1048576Ki",
            "kernelMemcgNotification: false",
            "logging:",
            "  format: json",
        ] {
            assert!(plain.lines().any(|l| l == line), "{line:?} in\n{plain}");
        }
        assert!(!plain.contains("featureGates"), "{plain}");
        // Never a field the base config sets: the kubelet refuses duplicates.
        assert!(!plain.contains("evictionHard"), "{plain}");
        let both = extra_config(
            1 << 30,
            Setup {
                evented_pleg: true,
                kernel_memcg_notification: true,
            },
        );
        assert!(both.contains("kernelMemcgNotification: true\n"), "{both}");
        assert!(
            both.ends_with("featureGates:\n  EventedPLEG: true\n"),
            "{both}"
        );
    }

    #[test]
    fn evented_pleg_is_judged_from_its_counters() {
        let ok = "# HELP x\nkubelet_evented_pleg_connection_success_count 1\n\
                  kubelet_evented_pleg_connection_error_count 0\n";
        assert_eq!(evented_pleg_ran(ok), Ok(()));
        let fell_back = "kubelet_evented_pleg_connection_success_count 2\n\
                         kubelet_evented_pleg_connection_error_count 5\n";
        assert!(
            evented_pleg_ran(fell_back)
                .unwrap_err()
                .contains("fell back")
        );
        let never = "kubelet_evented_pleg_connection_success_count 0\n";
        assert!(
            evented_pleg_ran(never)
                .unwrap_err()
                .contains("never opened")
        );
        let off = "kubelet_evented_pleg_connection_latency_seconds_count 0\n";
        assert!(evented_pleg_ran(off).unwrap_err().contains("has no"));
    }
}
