//! The sampler: every [`HOUSEKEEPING`] it reads the node, every running pod and container
//! from their cgroups and `/proc` into one [`Snapshot`], which the HTTP handlers render
//! (cAdvisor's housekeeping: requests never read cgroups). CPU rates (`usageNanoCores`)
//! come from the last two readings of a cgroup. Volumes are walked at most once per
//! [`VOLUME_PERIOD`] (upstream's `volumeStatsAggPeriod`), so a scrape never walks files;
//! the walks go through the [`UsageCache`] that eviction's storage meter shares, so a tree
//! the meter walked within the period (a pod with a storage limit, every 10 s) is read from
//! there instead of walked again.
//!
//! The sampler reads the cgroups every [`HOUSEKEEPING`] whether or not anybody scrapes, as
//! cAdvisor's housekeeping does: a CPU rate needs two readings, so a sampler woken by the
//! first scrape would answer it without `usageNanoCores` (metrics-server then skips the pod
//! and `kubectl top` shows nothing) and its numbers would be as old as the last scrape.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;

use crate::cgroups::QosTree;
use crate::eviction::local_storage::{
    FORGET_WALKS_AFTER, MAX_WALK_ENTRIES, Measured, Tree, UsageCache, walk,
};

use super::StatsError;
use super::read::{self, CgroupReader, Interface, Memory};

/// How often the sampler reads every cgroup (cAdvisor's default housekeeping).
pub const HOUSEKEEPING: Duration = Duration::from_secs(10);
/// How often a pod's volumes and logs are walked (upstream `volumeStatsAggPeriod`).
pub const VOLUME_PERIOD: Duration = Duration::from_secs(60);

/// CPU and memory of one cgroup at one time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub at: Timestamp,
    /// Cumulative CPU time, nanoseconds.
    pub cpu_ns: Option<u64>,
    /// CPU rate over the last two readings, in billionths of a core.
    pub nano_cores: Option<u64>,
    pub memory: Option<Memory>,
}

/// A file system's size and use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fs {
    pub at: Option<Timestamp>,
    pub capacity_bytes: Option<u64>,
    pub available_bytes: Option<u64>,
    pub used_bytes: Option<u64>,
    pub inodes: Option<u64>,
    pub inodes_free: Option<u64>,
    pub inodes_used: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub at: Timestamp,
    pub interfaces: Vec<Interface>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSample {
    pub boot_time: Timestamp,
    /// The root cgroup.
    pub usage: Usage,
    pub memory_capacity: u64,
    pub swap_used_bytes: Option<u64>,
    pub network: Option<Network>,
    /// The file system of the agent's root directory.
    pub fs: Option<Fs>,
    /// The runtime's image file system.
    pub image_fs: Option<Fs>,
    /// (`pid_max`, tasks) at `usage.at`.
    pub rlimit: Option<(u64, u64)>,
    /// The `kubepods` cgroup: upstream's `pods` system container.
    pub pods: Option<Usage>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSample {
    pub name: String,
    /// The runtime's id.
    pub id: String,
    pub image: String,
    pub cgroup: String,
    pub start_time: Option<Timestamp>,
    pub usage: Usage,
    pub logs: Option<Fs>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSample {
    pub name: String,
    pub fs: Fs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSample {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub start_time: Option<Timestamp>,
    pub cgroup: String,
    pub usage: Usage,
    pub containers: Vec<ContainerSample>,
    pub network: Option<Network>,
    pub volumes: Vec<VolumeSample>,
    pub process_count: Option<u64>,
}

impl PodSample {
    /// Disk `emptyDir` volumes plus container logs (upstream's ephemeral storage without
    /// the writable layers, which bpflet measures only for pods with a limit).
    #[must_use]
    pub fn ephemeral_storage(&self, nodefs: Option<&Fs>) -> Option<Fs> {
        let parts: Vec<&Fs> = self
            .volumes
            .iter()
            .map(|v| &v.fs)
            .chain(self.containers.iter().filter_map(|c| c.logs.as_ref()))
            .collect();
        let at = parts.iter().filter_map(|f| f.at).max()?;
        let sum = |f: fn(&Fs) -> Option<u64>| parts.iter().filter_map(|p| f(p)).sum::<u64>();
        Some(Fs {
            at: Some(at),
            capacity_bytes: nodefs.and_then(|n| n.capacity_bytes),
            available_bytes: nodefs.and_then(|n| n.available_bytes),
            used_bytes: Some(sum(|f| f.used_bytes)),
            inodes: nodefs.and_then(|n| n.inodes),
            inodes_free: nodefs.and_then(|n| n.inodes_free),
            inodes_used: Some(sum(|f| f.inodes_used)),
        })
    }
}

/// Everything one housekeeping pass read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub node_name: String,
    pub node: NodeSample,
    pub pods: Vec<PodSample>,
    /// What could not be read in this pass (`resource_scrape_error` is 1 when any).
    pub errors: usize,
}

/// The CPU rate between two readings, in billionths of a core; `None` when time did not
/// advance or the counter went back (a cgroup replaced under the same path).
#[must_use]
pub fn nano_cores(prev: (Timestamp, u64), now: (Timestamp, u64)) -> Option<u64> {
    let dt = now.0.as_nanosecond() - prev.0.as_nanosecond();
    let used = now.1.checked_sub(prev.1)?;
    if dt <= 0 {
        return None;
    }
    u64::try_from(i128::from(used) * 1_000_000_000 / dt).ok()
}

/// Where the sampler reads from.
#[derive(Debug, Clone)]
pub struct SamplerRoots {
    pub proc_root: PathBuf,
    /// The agent's root directory (nodefs).
    pub root_dir: PathBuf,
    /// `<root>/pods`: `<uid>/volumes/kubernetes.io~empty-dir/<name>`.
    pub pods_dir: PathBuf,
    /// Pod log directories (`<namespace>_<name>_<uid>/<container>`).
    pub logs_dir: PathBuf,
}

/// Reads snapshots; remembers the previous CPU reading of each cgroup; walks volume and log
/// directories through a [`UsageCache`].
#[derive(Debug)]
pub struct Sampler {
    node_name: String,
    tree: QosTree,
    reader: CgroupReader,
    roots: SamplerRoots,
    image_fs: Option<PathBuf>,
    prev_cpu: HashMap<String, (Timestamp, u64)>,
    walks: UsageCache,
    reported: Vec<String>,
}

impl Sampler {
    #[must_use]
    pub fn new(node_name: String, tree: QosTree, roots: SamplerRoots) -> Self {
        use crate::cgroups::CgroupManager as _;
        let reader = CgroupReader::new(tree.driver().version(), tree.driver().root());
        Self {
            node_name,
            tree,
            reader,
            roots,
            image_fs: None,
            prev_cpu: HashMap::new(),
            walks: UsageCache::new(),
            reported: Vec::new(),
        }
    }

    /// Walks through `cache`, shared with eviction's storage meter (by default the sampler
    /// has a cache of its own).
    pub fn set_usage_cache(&mut self, cache: UsageCache) {
        self.walks = cache;
    }

    /// The runtime's image file system (`runtime.imageFs`), when known.
    pub fn set_image_fs(&mut self, path: Option<PathBuf>) {
        self.image_fs = path;
    }

    /// One pass over the node and `pods` (blocking).
    pub fn sample(&mut self, pods: &[Arc<Pod>]) -> Snapshot {
        let mut errors = Vec::new();
        let mut seen = Vec::new();
        let root = self.usage("/", &mut seen, &mut errors);
        let (memory_capacity, swap) = match read::meminfo(&self.roots.proc_root) {
            Ok((total, swap)) => (total, Some(swap)),
            Err(e) => {
                errors.push(e);
                (0, None)
            }
        };
        let node_net = self.network("self", &mut errors);
        let kubepods = self.tree.kubepods();
        let pods_usage = Some(self.usage(&kubepods, &mut seen, &mut errors));
        let rlimit = read::rlimit(&self.roots.proc_root)
            .map_err(|e| errors.push(e))
            .ok();
        let fs = statvfs(&self.roots.root_dir)
            .map_err(|e| errors.push(e))
            .ok();
        let image_fs = match &self.image_fs {
            Some(p) => statvfs(p).map_err(|e| errors.push(e)).ok(),
            None => fs,
        };
        let node = NodeSample {
            boot_time: boot_time(&self.roots.proc_root).unwrap_or(Timestamp::UNIX_EPOCH),
            usage: root,
            memory_capacity,
            swap_used_bytes: swap,
            network: node_net,
            fs,
            image_fs,
            rlimit,
            pods: pods_usage,
        };
        let mut samples = Vec::new();
        for pod in pods {
            if let Some(p) = self.pod(pod, fs.as_ref(), &mut seen, &mut errors) {
                samples.push(p);
            }
        }
        samples.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        // Forget cgroups that are gone, the walks of pods no longer listed, and walks
        // nobody refreshed (a volume or container gone from a pod).
        self.prev_cpu.retain(|k, _| seen.contains(k));
        self.walks
            .retain_pods(|uid| pods.iter().any(|p| p.metadata.uid.as_deref() == Some(uid)));
        self.walks
            .forget_older_than(FORGET_WALKS_AFTER, Instant::now());
        let texts: Vec<String> = errors.iter().map(|e| crate::error::full_text(e)).collect();
        if texts != self.reported {
            for t in &texts {
                tracing::warn!(error = %t, "stats: cannot read");
            }
            self.reported.clone_from(&texts);
        }
        Snapshot {
            node_name: self.node_name.clone(),
            node,
            pods: samples,
            errors: errors.len(),
        }
    }

    fn usage(
        &mut self,
        cgroup: &str,
        seen: &mut Vec<String>,
        errors: &mut Vec<StatsError>,
    ) -> Usage {
        let at = Timestamp::now();
        let reading = match self.reader.read(cgroup) {
            Ok(r) => r,
            Err(e) => {
                if !e.is_not_found() {
                    errors.push(e);
                }
                return Usage {
                    at,
                    cpu_ns: None,
                    nano_cores: None,
                    memory: None,
                };
            }
        };
        seen.push(cgroup.to_owned());
        let nano = reading.cpu_ns.and_then(|cpu| {
            let prev = self.prev_cpu.insert(cgroup.to_owned(), (at, cpu))?;
            nano_cores(prev, (at, cpu))
        });
        Usage {
            at,
            cpu_ns: reading.cpu_ns,
            nano_cores: nano,
            memory: reading.memory,
        }
    }

    fn network(&self, pid: &str, errors: &mut Vec<StatsError>) -> Option<Network> {
        match read::net_dev(&self.roots.proc_root, pid) {
            Ok(Some(interfaces)) => Some(Network {
                at: Timestamp::now(),
                interfaces,
            }),
            Ok(None) => None,
            Err(e) => {
                errors.push(e);
                None
            }
        }
    }

    fn pod(
        &mut self,
        pod: &Pod,
        nodefs: Option<&Fs>,
        seen: &mut Vec<String>,
        errors: &mut Vec<StatsError>,
    ) -> Option<PodSample> {
        let uid = pod.metadata.uid.as_deref().filter(|u| !u.is_empty())?;
        let status = pod.status.as_ref()?;
        if status.phase.as_deref() != Some("Running") {
            return None;
        }
        let cgroup = self.tree.pod_cgroup(pod).ok()?;
        if !self.reader.exists(&cgroup) {
            return None;
        }
        let usage = self.usage(&cgroup, seen, errors);
        let log_root = crate::pods::cri_config::pod_log_dir(&self.roots.logs_dir, pod);
        let mut containers = Vec::new();
        for c in status.container_statuses.iter().flatten() {
            let Some(running) = c.state.as_ref().and_then(|s| s.running.as_ref()) else {
                continue;
            };
            let Some(id) = c
                .container_id
                .as_deref()
                .map(|id| id.split_once("://").map_or(id, |(_, id)| id))
                .filter(|id| !id.is_empty())
            else {
                continue;
            };
            let cg = crate::cgroups::hierarchy::join(&cgroup, id);
            if !self.reader.exists(&cg) {
                continue;
            }
            let usage = self.usage(&cg, seen, errors);
            let logs = self.walk_cached(
                uid,
                Tree::Logs(c.name.clone()),
                &log_root.join(&c.name),
                errors,
            );
            containers.push(ContainerSample {
                name: c.name.clone(),
                id: id.to_owned(),
                image: c.image.clone(),
                cgroup: cg,
                start_time: running.started_at.as_ref().map(|t| t.0),
                usage,
                logs,
            });
        }
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        let pids = self
            .reader
            .procs_below(&cgroup)
            .map_err(|e| errors.push(e))
            .ok();
        let network = pids
            .as_ref()
            .and_then(|p| p.first())
            .and_then(|pid| self.network(&pid.to_string(), errors));
        let mut volumes = Vec::new();
        let empty_dirs = self
            .roots
            .pods_dir
            .join(uid)
            .join("volumes/kubernetes.io~empty-dir");
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let Some(e) = &v.empty_dir else { continue };
            if e.medium.as_deref() == Some("Memory") {
                continue;
            }
            let path = empty_dirs.join(&v.name);
            if let Some(mut fs) =
                self.walk_cached(uid, Tree::EmptyDir(v.name.clone()), &path, errors)
            {
                if let Some(n) = nodefs {
                    fs.capacity_bytes = n.capacity_bytes;
                    fs.available_bytes = n.available_bytes;
                    fs.inodes = n.inodes;
                    fs.inodes_free = n.inodes_free;
                }
                volumes.push(VolumeSample {
                    name: v.name.clone(),
                    fs,
                });
            }
        }
        Some(PodSample {
            name: pod.metadata.name.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            uid: uid.to_owned(),
            start_time: status.start_time.as_ref().map(|t| t.0),
            cgroup,
            usage,
            containers,
            network,
            volumes,
            process_count: pids.map(|p| p.len() as u64),
        })
    }

    /// The use of `tree` of pod `uid` at `path`, walked again only when the last walk (the
    /// sampler's or the storage meter's) is older than [`VOLUME_PERIOD`].
    fn walk_cached(
        &self,
        uid: &str,
        tree: Tree,
        path: &Path,
        errors: &mut Vec<StatsError>,
    ) -> Option<Fs> {
        match self
            .walks
            .measure(uid, tree, VOLUME_PERIOD, || walk(path, MAX_WALK_ENTRIES))
        {
            Ok(m) => Some(tree_fs(m)),
            Err(source) => {
                errors.push(StatsError::Walk {
                    path: path.to_path_buf(),
                    source: Box::new(source),
                });
                None
            }
        }
    }
}

fn tree_fs(m: Measured) -> Fs {
    Fs {
        at: Some(m.time),
        used_bytes: Some(m.usage.bytes),
        inodes_used: Some(m.usage.inodes),
        ..Fs::default()
    }
}

fn statvfs(path: &Path) -> Result<Fs, StatsError> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|source| StatsError::Statvfs {
        path: path.to_path_buf(),
        source,
    })?;
    let frsize = st.fragment_size();
    let capacity = st.blocks().saturating_mul(frsize);
    let files = st.files();
    Ok(Fs {
        at: Some(Timestamp::now()),
        capacity_bytes: Some(capacity),
        available_bytes: Some(st.blocks_available().saturating_mul(frsize)),
        used_bytes: Some(capacity.saturating_sub(st.blocks_free().saturating_mul(frsize))),
        inodes: (files > 0).then_some(files),
        inodes_free: (files > 0).then_some(st.files_free()),
        inodes_used: (files > 0).then(|| files.saturating_sub(st.files_free())),
    })
}

/// The boot time from `/proc/stat` (`btime`).
fn boot_time(proc_root: &Path) -> Option<Timestamp> {
    let text = std::fs::read_to_string(proc_root.join("stat")).ok()?;
    let secs: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Timestamp::from_second(secs).ok()
}

/// Runs the sampler every [`HOUSEKEEPING`] on a blocking thread, publishing each snapshot,
/// until `cancel` fires.
pub async fn run(
    mut sampler: Sampler,
    pods: crate::status::manager::PodList,
    stats: super::Stats,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(HOUSEKEEPING);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let list = pods.list();
        let result = tokio::task::spawn_blocking(move || {
            let snapshot = sampler.sample(&list);
            (sampler, snapshot)
        })
        .await;
        match result {
            Ok((s, snapshot)) => {
                sampler = s;
                stats.publish(snapshot);
            }
            Err(e) => {
                tracing::warn!(error = %e, "stats sampler stopped");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: i64, nanos: i32) -> Timestamp {
        Timestamp::new(secs, nanos).unwrap()
    }

    #[test]
    fn nano_cores_is_the_rate_between_two_readings() {
        // Half a core: 0.5 s of CPU over 1 s.
        assert_eq!(
            nano_cores((ts(10, 0), 1_000_000_000), (ts(11, 0), 1_500_000_000)),
            Some(500_000_000)
        );
        // Two cores over 250 ms.
        assert_eq!(
            nano_cores((ts(10, 0), 0), (ts(10, 250_000_000), 500_000_000)),
            Some(2_000_000_000)
        );
        // No time passed, or the counter went back (a new cgroup at the same path).
        assert_eq!(nano_cores((ts(10, 0), 5), (ts(10, 0), 9)), None);
        assert_eq!(nano_cores((ts(10, 0), 9), (ts(11, 0), 5)), None);
    }

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A v1 cgroup with these counters (`cg` relative to the hierarchy root).
    fn cgroup(root: &Path, cg: &str, cpu_ns: u64, usage: u64) {
        write(
            root,
            &format!("cpuacct{cg}/cpuacct.usage"),
            &format!("{cpu_ns}\n"),
        );
        write(
            root,
            &format!("memory{cg}/memory.usage_in_bytes"),
            &format!("{usage}\n"),
        );
        write(
            root,
            &format!("memory{cg}/memory.stat"),
            "total_cache 100\ntotal_rss 200\ntotal_inactive_file 100\ntotal_pgfault 1\ntotal_pgmajfault 0\n",
        );
        write(
            root,
            &format!("memory{cg}/memory.limit_in_bytes"),
            "9223372036854771712\n",
        );
        write(root, &format!("memory{cg}/cgroup.procs"), "");
    }

    fn running_pod(uid: &str, container_id: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "default", "uid": uid},
            "spec": {
                "containers": [{"name": "app", "image": "busybox"}],
                "volumes": [{"name": "scratch", "emptyDir": {}}],
            },
            "status": {
                "phase": "Running",
                "containerStatuses": [{
                    "name": "app", "image": "busybox", "imageID": "", "ready": true,
                    "restartCount": 0,
                    "containerID": format!("containerd://{container_id}"),
                    "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
                }],
            },
        }))
        .unwrap()
    }

    /// A v1 cgroup tree under `cg_root` with the root, `kubepods`, one BestEffort pod
    /// (`uid-1`) and its container `abc`, and a sampler over it; returns the pod's cgroup.
    fn one_pod_node(dir: &Path, cg_root: &Path, proc_root: PathBuf) -> (Sampler, &'static str) {
        cgroup(cg_root, "", 1_000, 5000);
        cgroup(cg_root, "/kubepods", 1_000, 4000);
        let pod_cg = "/kubepods/besteffort/poduid-1";
        cgroup(cg_root, pod_cg, 1_000, 3000);
        cgroup(cg_root, &format!("{pod_cg}/abc"), 1_000, 2000);
        let tree = QosTree::new(crate::cgroups::CgroupDriver::v1(cg_root), "/");
        let sampler = Sampler::new(
            "n".into(),
            tree,
            SamplerRoots {
                proc_root,
                root_dir: dir.to_path_buf(),
                pods_dir: dir.join("pods"),
                logs_dir: dir.join("pods"),
            },
        );
        (sampler, pod_cg)
    }

    #[test]
    fn a_pass_maps_pods_to_their_cgroups_and_a_second_gives_rates() {
        let dir = tempfile::tempdir().unwrap();
        let cg_root = dir.path().join("cgroup");
        let proc_root = dir.path().join("proc");
        write(
            &proc_root,
            "meminfo",
            "MemTotal: 1024 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n",
        );
        write(&proc_root, "sys/kernel/pid_max", "32768\n");
        write(&proc_root, "loadavg", "0 0 0 1/10 5\n");
        let (mut sampler, pod_cg) = one_pod_node(dir.path(), &cg_root, proc_root);
        let pods = vec![Arc::new(running_pod("uid-1", "abc"))];
        let scratch = dir
            .path()
            .join("pods/uid-1/volumes/kubernetes.io~empty-dir/scratch");
        write(&scratch, "a", &"x".repeat(64 * 1024));
        let first = sampler.sample(&pods);
        assert_eq!(first.errors, 0, "{first:#?}");
        let pod = &first.pods[0];
        assert_eq!(pod.cgroup, pod_cg);
        assert_eq!(pod.usage.memory.unwrap().working_set_bytes, 2900);
        let c = &pod.containers[0];
        assert_eq!((c.name.as_str(), c.id.as_str()), ("app", "abc"));
        assert_eq!(c.usage.memory.unwrap().working_set_bytes, 1900);
        assert_eq!(c.usage.nano_cores, None, "one reading has no rate");
        assert_eq!(first.node.memory_capacity, 1024 * 1024);
        // The container used CPU meanwhile: the second pass has a rate, from its counter.
        cgroup(&cg_root, &format!("{pod_cg}/abc"), 1_000_000_000, 2000);
        let second = sampler.sample(&pods);
        let c = &second.pods[0].containers[0];
        assert!(c.usage.nano_cores.is_some_and(|n| n > 0), "{c:#?}");
        assert_eq!(second.pods[0].usage.nano_cores, Some(0));
        // Volumes are walked once per VOLUME_PERIOD, not on every pass: a file written
        // since shows at the next walk.
        let used = |s: &Snapshot| s.pods[0].volumes[0].fs.used_bytes.unwrap();
        assert!(used(&first) >= 64 * 1024, "{:?}", first.pods[0].volumes);
        write(&scratch, "b", &"x".repeat(256 * 1024));
        assert_eq!(used(&sampler.sample(&pods)), used(&first));
        // A pod that is not running is not sampled.
        let mut stopped = running_pod("uid-1", "abc");
        stopped.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(sampler.sample(&[Arc::new(stopped)]).pods.is_empty());
    }

    #[test]
    fn volumes_come_from_the_shared_cache_and_gone_pods_leave_it() {
        let dir = tempfile::tempdir().unwrap();
        let cg_root = dir.path().join("cgroup");
        let proc_root = dir.path().join("proc");
        write(&proc_root, "meminfo", "MemTotal: 1024 kB\n");
        let (mut sampler, _) = one_pod_node(dir.path(), &cg_root, proc_root);
        let cache = UsageCache::new();
        sampler.set_usage_cache(cache.clone());
        // Eviction's meter walked the volume a moment ago: the sampler takes that walk, not
        // one of its own (the directory holds nothing).
        let walked_at = Timestamp::now();
        cache.put(
            "uid-1",
            Tree::EmptyDir("scratch".into()),
            Measured {
                at: Instant::now(),
                time: walked_at,
                usage: crate::eviction::local_storage::TreeUsage {
                    bytes: 123 * 4096,
                    inodes: 7,
                    entries: 7,
                    truncated: false,
                },
            },
        );
        let pods = vec![Arc::new(running_pod("uid-1", "abc"))];
        let snapshot = sampler.sample(&pods);
        let fs = snapshot.pods[0].volumes[0].fs;
        assert_eq!(
            (fs.used_bytes, fs.inodes_used, fs.at),
            (Some(123 * 4096), Some(7), Some(walked_at))
        );
        // The sampler's own walk of the logs is in the cache for the meter.
        assert!(
            cache
                .get(
                    "uid-1",
                    &Tree::Logs("app".into()),
                    VOLUME_PERIOD,
                    Instant::now()
                )
                .is_some()
        );
        // A pod no longer listed leaves the cache.
        sampler.sample(&[]);
        assert!(cache.pods().is_empty(), "{:?}", cache.pods());
    }

    #[test]
    fn ephemeral_storage_sums_volumes_and_logs_on_the_node_fs() {
        let at = ts(100, 0);
        let usage = Usage {
            at,
            cpu_ns: None,
            nano_cores: None,
            memory: None,
        };
        let part = |used, inodes| Fs {
            at: Some(at),
            used_bytes: Some(used),
            inodes_used: Some(inodes),
            ..Fs::default()
        };
        let pod = PodSample {
            name: "p".into(),
            namespace: "ns".into(),
            uid: "u".into(),
            start_time: None,
            cgroup: "/kubepods/podu".into(),
            usage,
            containers: vec![ContainerSample {
                name: "c".into(),
                id: "id".into(),
                image: "img".into(),
                cgroup: "/kubepods/podu/id".into(),
                start_time: None,
                usage,
                logs: Some(part(4096, 2)),
            }],
            network: None,
            volumes: vec![VolumeSample {
                name: "scratch".into(),
                fs: part(8192, 3),
            }],
            process_count: None,
        };
        let nodefs = Fs {
            capacity_bytes: Some(1 << 30),
            available_bytes: Some(1 << 29),
            ..Fs::default()
        };
        let e = pod.ephemeral_storage(Some(&nodefs)).unwrap();
        assert_eq!((e.used_bytes, e.inodes_used), (Some(12288), Some(5)));
        assert_eq!(e.capacity_bytes, Some(1 << 30));
        let bare = PodSample {
            containers: vec![],
            volumes: vec![],
            ..pod
        };
        assert_eq!(bare.ephemeral_storage(Some(&nodefs)), None);
    }
}
