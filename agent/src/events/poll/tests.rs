use std::os::unix::fs::MetadataExt;

use super::*;
use crate::events::Kind;

const UID: &str = "8dbc5577-d0e2-4706-8787-57d52c03ddf2";
const CID: &str = "3f1b9a2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
const CID2: &str = "aaaa9a2c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

fn pod() -> String {
    format!("/kubepods/burstable/pod{UID}")
}
fn ctr() -> String {
    format!("{}/{CID}", pod())
}
fn ctr2() -> String {
    format!("{}/{CID2}", pod())
}

/// A fake cgroup mount and proc root in a temp dir.
struct Fixture {
    _dir: tempfile::TempDir,
    h: Hierarchy,
    proc: PathBuf,
}

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
    }
    fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

impl Fixture {
    fn new(v2: bool) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mount = dir.path().join("cgroup");
        let proc = dir.path().join("proc");
        fs::create_dir_all(&mount).expect("mkdir mount");
        write(
            &proc.join("pressure/memory"),
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        );
        let h = if v2 {
            Hierarchy::v2(&mount)
        } else {
            Hierarchy::v1(&mount, 4)
        };
        let f = Fixture { _dir: dir, h, proc };
        f.cgroup("/");
        f
    }

    fn v2(&self) -> bool {
        self.h.version == crate::cgroups::CgroupVersion::V2
    }

    /// Creates a cgroup (and its parents) with zeroed counter files.
    fn cgroup(&self, rel: &str) {
        let mut at = "/".to_owned();
        for part in rel
            .split('/')
            .filter(|p| !p.is_empty())
            .map(Some)
            .chain([None])
        {
            let dir = self.h.path_of(&at);
            if !dir.join("cgroup.procs").exists() {
                write(&dir.join("cgroup.procs"), "");
                if self.v2() {
                    write(
                        &dir.join("memory.events"),
                        "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
                    );
                    write(
                        &dir.join("memory.events.local"),
                        "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
                    );
                    write(
                        &dir.join("memory.pressure"),
                        "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
                    );
                } else {
                    write(
                        &dir.join("memory.oom_control"),
                        "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
                    );
                    write(&dir.join("memory.failcnt"), "0\n");
                }
            }
            if let Some(part) = part {
                at = crate::cgroups::hierarchy::join(&at, part);
            }
        }
    }

    fn ino(&self, rel: &str) -> u64 {
        fs::metadata(self.h.path_of(rel)).expect("stat").ino()
    }

    fn procs(&self, rel: &str, pids: &[u32]) {
        let text: String = pids.iter().map(|p| format!("{p}\n")).collect();
        write(&self.h.path_of(rel).join("cgroup.procs"), &text);
    }

    /// A process in `cgroup` as /proc shows it.
    fn process(&self, pid: u32, comm: &str, cgroup: &str, state: char, start: u64) {
        let dir = self.proc.join(pid.to_string());
        write(&dir.join("comm"), &format!("{comm}\n"));
        write(
            &dir.join("stat"),
            &format!(
                "{pid} ({comm}) {state} 1 {pid} {pid} 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 {start} 1000 100 0"
            ),
        );
        let line = if self.v2() {
            format!("0::{cgroup}\n")
        } else {
            format!("4:memory:{cgroup}\n1:cpu:/\n0::/\n")
        };
        write(&dir.join("cgroup"), &line);
    }

    fn reap(&self, pid: u32) {
        fs::remove_dir_all(self.proc.join(pid.to_string())).expect("remove proc dir");
    }

    fn v1_counters(&self, rel: &str, oom_kill: u64, failcnt: u64) {
        let dir = self.h.path_of(rel);
        write(
            &dir.join("memory.oom_control"),
            &format!("oom_kill_disable 0\nunder_oom 0\noom_kill {oom_kill}\n"),
        );
        write(&dir.join("memory.failcnt"), &format!("{failcnt}\n"));
    }

    fn v2_events(&self, rel: &str, file: &str, max: u64, oom: u64, oom_kill: u64) {
        write(
            &self.h.path_of(rel).join(file),
            &format!("low 0\nhigh 0\nmax {max}\noom {oom}\noom_kill {oom_kill}\n"),
        );
    }

    fn poller(&self, roots: &[&str], kmsg: bool) -> Poller {
        Poller::new(
            self.h.clone(),
            roots.iter().map(|r| (*r).to_owned()).collect(),
            self.proc.clone(),
            Duration::from_secs(1),
            !kmsg,
        )
    }
}

fn tick(p: &mut Poller) -> Vec<Event> {
    p.tick(Instant::now(), SystemTime::now())
}

fn kmsg_lines(messages: &[&str]) -> Vec<String> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| format!("6,{},{},-;{m}", 1000 + i, 5_000_000 + i))
        .collect()
}

fn oom(ev: &Event) -> &OomKill {
    match &ev.detail {
        Detail::OomKill(o) => o,
        other => panic!("not an OOM kill: {other:?}"),
    }
}

fn kinds(events: &[Event]) -> Vec<(Kind, String)> {
    events
        .iter()
        .map(|e| (e.kind(), e.cgroup.clone()))
        .collect()
}

/// The lines of one memcg OOM report, as this kernel prints them.
fn report(invoker: u32, limit: &str, victim: &str, pid: u32, comm: &str) -> Vec<String> {
    kmsg_lines(&[
        &format!(
            "{comm} invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=1000"
        ),
        &format!(
            "CPU: 1 UID: 0 PID: {invoker} Comm: {comm} Not tainted 6.18.44-fc-v595 #1 PREEMPT(none) "
        ),
        "Call Trace:",
        " <TASK>",
        "memory: usage 65536kB, limit 65536kB, failcnt 6795",
        "memory+swap: usage 65536kB, limit 9007199254740988kB, failcnt 0",
        &format!("Memory cgroup stats for {limit}:"),
        "Tasks state (memory values in pages):",
        &format!(
            "[   {pid}]     0  {pid}    70528    15616    15520       96         0   487424        0          1000 {comm}"
        ),
        &format!(
            "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg={limit},task_memcg={victim},task={comm},pid={pid},uid=0"
        ),
        &format!(
            "Memory cgroup out of memory: Killed process {pid} ({comm}) total-vm:282112kB, anon-rss:62080kB, file-rss:384kB, shmem-rss:0kB, UID:0 pgtables:476kB oom_score_adj:1000"
        ),
        &format!(
            "oom_reaper: reaped process {pid} ({comm}), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB"
        ),
    ])
}

#[test]
fn exits_migrations_zombies_and_reuse() {
    let f = Fixture::new(false);
    f.cgroup(&ctr());
    f.cgroup(&ctr2());
    f.cgroup("/other");
    f.procs(&ctr(), &[100, 101, 102, 103, 104, 105]);
    for (pid, comm) in [
        (100, "app"),
        (101, "worker"),
        (102, "mover"),
        (103, "leaver"),
        (104, "zombie"),
        (105, "old"),
    ] {
        f.process(pid, comm, &ctr(), 'S', 1000 + u64::from(pid));
    }
    let mut p = f.poller(&["/kubepods"], true);
    assert_eq!(
        kinds(&tick(&mut p)),
        [],
        "the first poll only records state"
    );

    f.reap(101); // exited and reaped
    f.procs(&ctr2(), &[102]); // moved to another watched cgroup
    f.procs("/other", &[103]); // moved out of the watched tree, still running
    f.process(104, "zombie", &ctr(), 'Z', 1104); // exited, not reaped
    f.process(105, "new", &ctr(), 'S', 99_999); // pid reused by another process
    f.procs(&ctr(), &[100]);
    let events = tick(&mut p);
    let exits: Vec<(u32, &str, &str, Option<u64>)> = events
        .iter()
        .map(|e| {
            assert_eq!(
                e.detail,
                Detail::Exit {
                    status: ExitStatus::Unknown,
                    pidns_init: false,
                }
            );
            assert_eq!(e.source, Source::Poll);
            (e.pid, e.comm.as_str(), e.cgroup.as_str(), e.cgroup_id)
        })
        .collect();
    let id = Some(f.ino(&ctr()));
    assert_eq!(
        exits,
        [
            (101, "worker", ctr().as_str(), id),
            (104, "zombie", ctr().as_str(), id),
            (105, "old", ctr().as_str(), id)
        ]
    );
    // The mover is tracked in its new cgroup.
    f.reap(102);
    f.procs(&ctr2(), &[]);
    let events = tick(&mut p);
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].pid, events[0].cgroup.as_str()),
        (102, ctr2().as_str())
    );
}

#[test]
fn cgroups_created_and_removed() {
    let f = Fixture::new(false);
    f.cgroup(&ctr());
    f.cgroup("/system.slice");
    let mut p = f.poller(&["/kubepods"], true);
    assert_eq!(kinds(&tick(&mut p)), []);

    let old_id = f.ino(&ctr());
    fs::remove_dir_all(f.h.path_of(&ctr())).expect("rmdir");
    f.cgroup(&format!("{}/new/sub", pod()));
    f.cgroup("/system.slice/ignored");
    let events = tick(&mut p);
    let got: Vec<(Detail, String, Option<u64>)> = events
        .iter()
        .map(|e| (e.detail.clone(), e.cgroup.clone(), e.cgroup_id))
        .collect();
    let new = format!("{}/new", pod());
    let sub = format!("{new}/sub");
    assert_eq!(
        got,
        [
            (
                Detail::CgroupCreated { level: 4 },
                new.clone(),
                Some(f.ino(&new))
            ),
            (
                Detail::CgroupCreated { level: 5 },
                sub.clone(),
                Some(f.ino(&sub))
            ),
            (Detail::CgroupRemoved { level: 4 }, ctr(), Some(old_id)),
        ]
    );
    assert_eq!(kinds(&tick(&mut p)), [], "nothing changed");
}

#[test]
fn kmsg_report_becomes_one_oom_kill() {
    let f = Fixture::new(false);
    f.cgroup(&ctr());
    f.procs(&ctr(), &[4242]);
    f.process(4242, "python3", &ctr(), 'R', 777);
    let mut p = f.poller(&["/kubepods"], true);
    tick(&mut p);

    let events = p.on_kmsg_lines(
        &report(4243, &pod(), &ctr(), 4242, "python3"),
        Instant::now(),
    );
    assert_eq!(events.len(), 1, "{events:?}");
    let ev = &events[0];
    assert_eq!(
        (ev.pid, ev.comm.as_str(), ev.cgroup.as_str()),
        (4242, "python3", ctr().as_str())
    );
    assert_eq!(ev.cgroup_id, Some(f.ino(&ctr())));
    assert_eq!(ev.source, Source::Poll);
    assert_eq!(
        *oom(ev),
        OomKill {
            scope: OomScope::Pod,
            limit_cgroup_id: Some(f.ino(&pod())),
            limit_cgroup: Some(pod()),
            limit_bytes: Some(65536 * 1024),
            usage_bytes: Some(65536 * 1024),
            anon_rss_bytes: Some(62080 * 1024),
            file_rss_bytes: Some(384 * 1024),
            shmem_rss_bytes: Some(0),
            total_vm_bytes: Some(282_112 * 1024),
            oom_score_adj: Some(1000),
            invoker_pid: 4243,
        }
    );

    // Its exit, seen at the next poll, is the SIGKILL.
    f.reap(4242);
    f.procs(&ctr(), &[]);
    let events = tick(&mut p);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        events[0].detail,
        Detail::Exit {
            status: ExitStatus::Signal {
                signal: 9,
                core_dumped: false
            },
            pidns_init: false,
        }
    );
    assert_eq!(events[0].pid, 4242);
}

#[test]
fn kmsg_kills_outside_roots_are_ignored_and_global_ooms_are_node_scope() {
    let f = Fixture::new(false);
    f.cgroup(&ctr());
    f.cgroup("/test/x");
    let mut p = f.poller(&["/kubepods"], true);
    tick(&mut p);
    let events = p.on_kmsg_lines(&report(1, "/test", "/test/x", 1234, "hog"), Instant::now());
    assert_eq!(kinds(&events), []);

    let global = kmsg_lines(&[
        "app invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=0",
        "CPU: 0 UID: 0 PID: 77 Comm: app Not tainted 6.18.44-fc-v595 #1",
        &format!(
            "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg={},task=app,pid=77,uid=0",
            ctr()
        ),
        "Out of memory: Killed process 77 (app) total-vm:9000kB, anon-rss:8000kB, file-rss:4kB, shmem-rss:0kB, UID:0 pgtables:40kB oom_score_adj:999",
    ]);
    let events = p.on_kmsg_lines(&global, Instant::now());
    assert_eq!(events.len(), 1, "{events:?}");
    let o = oom(&events[0]);
    assert_eq!(
        (o.scope, o.limit_cgroup.as_deref(), o.limit_bytes),
        (OomScope::Node, None, None)
    );
    assert_eq!(
        (events[0].pid, events[0].cgroup.as_str()),
        (77, ctr().as_str())
    );
    assert_eq!(o.invoker_pid, 77);

    // A node-wide kill is reported wherever its victim ran (the BPF source does the same).
    let outside = kmsg_lines(&[
        "hog invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, oom_score_adj=0",
        "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/test/x,task=hog,pid=88,uid=0",
        "Out of memory: Killed process 88 (hog) total-vm:9000kB, anon-rss:8000kB, file-rss:4kB, shmem-rss:0kB, UID:0 pgtables:40kB oom_score_adj:0",
        // Its report rate-limited away: the victim's cgroup is unknown, the kill still counts.
        "Out of memory: Killed process 89 (hog2) total-vm:9000kB, anon-rss:8000kB, file-rss:4kB, shmem-rss:0kB, UID:0 pgtables:40kB oom_score_adj:0",
    ]);
    let mut events = p.on_kmsg_lines(&outside, Instant::now());
    // The bare kill waits one tick for counters that could place it.
    events.extend(tick(&mut p));
    let got: Vec<(u32, &str, OomScope)> = events
        .iter()
        .map(|e| (e.pid, e.cgroup.as_str(), oom(e).scope))
        .collect();
    assert_eq!(
        got,
        [(88, "/test/x", OomScope::Node), (89, "", OomScope::Node)]
    );
}

#[test]
fn rate_limited_kill_reuses_the_recent_report() {
    let f = Fixture::new(false);
    f.cgroup(&ctr());
    let mut p = f.poller(&["/kubepods"], true);
    tick(&mut p);
    let events = p.on_kmsg_lines(&report(200, &ctr(), &ctr(), 200, "hog"), Instant::now());
    assert_eq!(oom(&events[0]).scope, OomScope::Container);

    // The kernel printed only the last line for the next kill; the process is still in
    // /proc (dying).
    f.process(201, "hog", &ctr(), 'R', 5);
    let bare = kmsg_lines(&[
        "Memory cgroup out of memory: Killed process 201 (hog) total-vm:282112kB, anon-rss:61824kB, file-rss:384kB, shmem-rss:0kB, UID:0 pgtables:476kB oom_score_adj:1000",
    ]);
    let events = p.on_kmsg_lines(&bare, Instant::now());
    assert_eq!(events.len(), 1, "{events:?}");
    let o = oom(&events[0]);
    assert_eq!(
        (o.scope, o.limit_cgroup.clone()),
        (OomScope::Container, Some(ctr()))
    );
    assert_eq!((o.limit_bytes, o.invoker_pid), (None, 0));
    assert_eq!(
        (events[0].pid, events[0].cgroup.as_str()),
        (201, ctr().as_str())
    );
}

#[test]
fn bare_kill_takes_its_limit_from_counters_v1() {
    let f = Fixture::new(false);
    f.cgroup(&ctr());
    f.procs(&ctr(), &[300]);
    f.process(300, "hog", &ctr(), 'R', 5);
    let mut p = f.poller(&["/kubepods"], true);
    tick(&mut p);
    // Gone from /proc already: the cgroup comes from the last poll.
    f.reap(300);
    let bare = kmsg_lines(&[
        "Memory cgroup out of memory: Killed process 300 (hog) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0",
    ]);
    assert_eq!(
        kinds(&p.on_kmsg_lines(&bare, Instant::now())),
        [],
        "held until the counters are read"
    );

    f.v1_counters(&pod(), 0, 12); // the pod's limit was hit
    f.v1_counters(&ctr(), 1, 0);
    f.procs(&ctr(), &[]);
    let events = tick(&mut p);
    let kills: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind() == Kind::OomKill)
        .collect();
    assert_eq!(kills.len(), 1, "{events:?}");
    assert_eq!(
        (kills[0].pid, kills[0].cgroup.as_str()),
        (300, ctr().as_str())
    );
    assert_eq!(
        (oom(kills[0]).scope, oom(kills[0]).limit_cgroup.clone()),
        (OomScope::Pod, Some(pod()))
    );
    // The exit of the victim, as SIGKILL, and the pod's limit hits as pressure.
    let exit = events
        .iter()
        .find(|e| e.kind() == Kind::Exit)
        .expect("exit");
    assert_eq!(
        exit.detail,
        Detail::Exit {
            status: ExitStatus::Signal {
                signal: 9,
                core_dumped: false
            },
            pidns_init: false,
        }
    );
    let pressure = events
        .iter()
        .find(|e| e.kind() == Kind::MemoryPressure)
        .expect("pressure");
    assert_eq!(pressure.cgroup, pod());
}

#[test]
fn bare_kill_with_unknown_limit_is_cgroup_scope() {
    let f = Fixture::new(true);
    f.cgroup(&ctr());
    let mut p = f.poller(&["/kubepods"], true);
    tick(&mut p);
    f.process(301, "hog", &ctr(), 'R', 5);
    let bare = kmsg_lines(&[
        "Memory cgroup out of memory: Killed process 301 (hog) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0",
    ]);
    p.on_kmsg_lines(&bare, Instant::now());
    let events = tick(&mut p);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (
            oom(&events[0]).scope,
            oom(&events[0]).limit_cgroup.as_deref()
        ),
        (OomScope::Cgroup, None)
    );
}

#[test]
fn gone_victim_is_placed_by_unexplained_counters() {
    let f = Fixture::new(false);
    f.cgroup(&ctr());
    f.cgroup(&ctr2());
    let mut p = f.poller(&["/kubepods"], true);
    tick(&mut p);

    // One kill with its full report, in the second container...
    let mut lines = report(500, &ctr2(), &ctr2(), 500, "a");
    // ...then bare lines for processes that are gone: after exit, cgroup v1 shows a process
    // in the root memory cgroup.
    f.process(501, "b", "/", 'Z', 5);
    lines.extend(kmsg_lines(&[
        "Memory cgroup out of memory: Killed process 501 (b) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0",
        "Memory cgroup out of memory: Killed process 502 (c) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0",
        "Memory cgroup out of memory: Killed process 503 (d) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0",
    ]));
    let events = p.on_kmsg_lines(&lines, Instant::now());
    assert_eq!(events.iter().map(|e| e.pid).collect::<Vec<_>>(), [500]);

    // The counters: two kills in ctr2 (one explained), one in ctr at its own limit.
    f.v1_counters(&ctr2(), 2, 3);
    f.v1_counters(&ctr(), 1, 7);
    let events = tick(&mut p);
    let kills: Vec<(u32, &str, OomScope, Option<String>)> = events
        .iter()
        .filter(|e| e.kind() == Kind::OomKill)
        .map(|e| {
            (
                e.pid,
                e.cgroup.as_str(),
                oom(e).scope,
                oom(e).limit_cgroup.clone(),
            )
        })
        .collect();
    // 503 matches no unexplained kill and is dropped.
    assert_eq!(
        kills,
        [
            (501, ctr().as_str(), OomScope::Container, Some(ctr())),
            (502, ctr2().as_str(), OomScope::Container, Some(ctr2())),
        ]
    );
}

#[test]
fn counters_report_kills_without_kmsg_v1() {
    let f = Fixture::new(false);
    f.cgroup(&ctr());
    let mut p = f.poller(&["/kubepods"], false);
    tick(&mut p);
    f.v1_counters(&ctr(), 2, 40);
    let events = tick(&mut p);
    let kills: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind() == Kind::OomKill)
        .collect();
    assert_eq!(kills.len(), 2, "{events:?}");
    for k in kills {
        assert_eq!(
            (k.pid, k.comm.as_str(), k.cgroup.as_str()),
            (0, "", ctr().as_str())
        );
        assert_eq!(k.cgroup_id, Some(f.ino(&ctr())));
        let o = oom(k);
        assert_eq!(
            (o.scope, o.limit_cgroup.clone()),
            (OomScope::Container, Some(ctr()))
        );
        assert_eq!(o.limit_cgroup_id, Some(f.ino(&ctr())));
    }
    // No rise: nothing more.
    assert!(tick(&mut p).iter().all(|e| e.kind() != Kind::OomKill));
}

#[test]
fn counters_report_kills_without_kmsg_v2_hierarchical() {
    let f = Fixture::new(true);
    f.cgroup(&ctr());
    // Kernels without memory.events.local: counters include descendants.
    for rel in ["/", "/kubepods", "/kubepods/burstable", &pod(), &ctr()] {
        fs::remove_file(f.h.path_of(rel).join("memory.events.local")).expect("rm");
    }
    let mut p = f.poller(&["/kubepods"], false);
    tick(&mut p);
    // One kill in the container, at the pod's limit (so `oom` rose in the pod and above).
    f.v2_events(&ctr(), "memory.events", 0, 0, 1);
    f.v2_events(&pod(), "memory.events", 3, 1, 1);
    f.v2_events("/kubepods/burstable", "memory.events", 3, 1, 1);
    f.v2_events("/kubepods", "memory.events", 3, 1, 1);
    let events = tick(&mut p);
    let kills: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind() == Kind::OomKill)
        .collect();
    assert_eq!(kills.len(), 1, "{events:?}");
    assert_eq!(kills[0].cgroup, ctr());
    assert_eq!(
        (oom(kills[0]).scope, oom(kills[0]).limit_cgroup.clone()),
        (OomScope::Pod, Some(pod()))
    );
}

#[test]
fn counters_without_a_limit_hit_mean_a_node_oom() {
    let f = Fixture::new(true);
    f.cgroup(&ctr());
    let mut p = f.poller(&["/kubepods"], false);
    tick(&mut p);
    f.v2_events(&ctr(), "memory.events.local", 0, 0, 1);
    let events = tick(&mut p);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (
            oom(&events[0]).scope,
            oom(&events[0]).limit_cgroup.as_deref()
        ),
        (OomScope::Node, None)
    );
}

#[test]
fn limit_above_the_watched_root_is_found() {
    let f = Fixture::new(false);
    f.cgroup(&ctr());
    let mut p = f.poller(&[&pod()], false);
    tick(&mut p);
    f.v1_counters("/kubepods", 0, 9);
    f.v1_counters(&ctr(), 1, 0);
    let events = tick(&mut p);
    let kill = events
        .iter()
        .find(|e| e.kind() == Kind::OomKill)
        .expect("kill");
    assert_eq!(
        (oom(kill).scope, oom(kill).limit_cgroup.as_deref()),
        (OomScope::Cgroup, Some("/kubepods"))
    );
}

#[test]
fn pressure_from_failcnt_psi_and_node() {
    let f = Fixture::new(false);
    f.cgroup(&ctr());
    let mut p = f.poller(&["/"], true);
    assert_eq!(kinds(&tick(&mut p)), []);
    f.v1_counters(&ctr(), 0, 5);
    write(
        &f.proc.join("pressure/memory"),
        "some avg10=1.50 avg60=0.30 avg300=0.00 total=1234\nfull avg10=0.50 avg60=0.00 avg300=0.00 total=100\n",
    );
    let events = tick(&mut p);
    let got: Vec<(String, Detail)> = events
        .iter()
        .map(|e| (e.cgroup.clone(), e.detail.clone()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "/".to_owned(),
                Detail::MemoryPressure(MemoryPressure {
                    window_ms: got_window(&events[0]),
                    psi_some_avg10: Some(1.5),
                    ..MemoryPressure::default()
                })
            ),
            (
                ctr(),
                Detail::MemoryPressure(MemoryPressure {
                    window_ms: got_window(&events[1]),
                    memcg_reclaims: 5,
                    ..MemoryPressure::default()
                })
            ),
        ]
    );
}

fn got_window(ev: &Event) -> u64 {
    match &ev.detail {
        Detail::MemoryPressure(m) => m.window_ms,
        other => panic!("not pressure: {other:?}"),
    }
}

#[test]
fn pressure_v2_one_event_per_cgroup() {
    let f = Fixture::new(true);
    f.cgroup(&ctr());
    let mut p = f.poller(&["/kubepods"], true);
    tick(&mut p);
    f.v2_events(&ctr(), "memory.events.local", 4, 0, 0);
    write(
        &f.h.path_of(&ctr()).join("memory.pressure"),
        "some avg10=3.25 avg60=0.00 avg300=0.00 total=5\nfull avg10=1.00 avg60=0.00 avg300=0.00 total=2\n",
    );
    let events = tick(&mut p);
    assert_eq!(events.len(), 1, "{events:?}");
    match &events[0].detail {
        Detail::MemoryPressure(m) => {
            assert_eq!((m.memcg_reclaims, m.psi_some_avg10), (4, Some(3.25)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(events[0].cgroup, ctr());
}

/// On tokio's paused clock, time moves only when every task waits and no blocking read
/// runs: a virtual sleep shorter than the interval returns once the first poll (taken at
/// once) has finished.
#[tokio::test(start_paused = true)]
async fn run_reports_from_fixture_files() {
    let f = Fixture::new(false);
    f.cgroup(&ctr());
    let kmsg = f.proc.join("kmsg");
    write(&kmsg, &report(1, &ctr(), &ctr(), 9, "old").join("\n"));
    let cfg = PollConfig {
        hierarchy: f.h.clone(),
        roots: vec!["/kubepods".into()],
        interval: Duration::from_millis(20),
        proc_root: f.proc.clone(),
        kmsg: Some(kmsg.clone()),
    };
    let (tx, mut rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(PollSource::new(cfg).run(tx, cancel.clone()));

    // The first poll has recorded the state; then change things.
    tokio::time::sleep(Duration::from_millis(10)).await;
    f.cgroup(&ctr2());
    let mut lines = report(2, &pod(), &ctr(), 10, "new").join("\n");
    lines.push('\n');
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(&kmsg)
        .expect("open kmsg");
    std::io::Write::write_all(&mut file, lines.as_bytes()).expect("append kmsg");

    let mut got = Vec::new();
    while got.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("events within 10s")
            .expect("source running");
        got.push(ev);
    }
    got.sort_by_key(|e| e.kind().as_str());
    assert_eq!(got[0].detail, Detail::CgroupCreated { level: 4 });
    assert_eq!(got[0].cgroup, ctr2());
    assert_eq!(
        (got[1].pid, got[1].comm.as_str()),
        (10, "new"),
        "the old report is not replayed"
    );
    assert_eq!(oom(&got[1]).scope, OomScope::Pod);

    cancel.cancel();
    task.await.expect("join").expect("run ends cleanly");
}

#[tokio::test]
async fn run_rejects_bad_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = PollConfig::new(Hierarchy::v2(dir.path()), vec!["/".into()]);
    cfg.interval = Duration::ZERO;
    let (tx, _rx) = mpsc::channel(1);
    let err = PollSource::new(cfg.clone())
        .run(tx.clone(), CancellationToken::new())
        .await;
    assert!(matches!(err, Err(PollError::ZeroInterval)), "{err:?}");
    cfg.interval = Duration::from_secs(1);
    cfg.roots.clear();
    let err = PollSource::new(cfg).run(tx, CancellationToken::new()).await;
    assert!(matches!(err, Err(PollError::NoRoots)), "{err:?}");
}

/// Against the real hierarchy and /proc: a child of this test process exits and the
/// source reports it. Needs no privileges (only reads this process's own cgroup). On the
/// paused clock, as above.
#[tokio::test(start_paused = true)]
async fn real_exit_in_own_cgroup() {
    let proc_root = PathBuf::from("/proc");
    let h = Hierarchy::detect(&proc_root).expect("detect the host's memory hierarchy");
    let own = h
        .cgroup_of_pid(&proc_root, std::process::id())
        .expect("own cgroup");
    let mut child = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .expect("spawn sleep");
    let pid = child.id();

    let cfg = PollConfig {
        interval: Duration::from_millis(50),
        kmsg: None,
        ..PollConfig::new(h, vec![own.clone()])
    };
    let (tx, mut rx) = mpsc::channel(1024);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(PollSource::new(cfg).run(tx, cancel.clone()));
    // Half an interval of virtual time: the first poll has seen the child.
    tokio::time::sleep(Duration::from_millis(25)).await;
    child.kill().expect("kill sleep");
    child.wait().expect("reap sleep");

    let exit = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let ev = rx.recv().await.expect("source running");
            if ev.kind() == Kind::Exit && ev.pid == pid {
                return ev;
            }
        }
    })
    .await
    .expect("the exit is reported within 10s");
    assert_eq!(exit.comm, "sleep");
    assert_eq!(exit.cgroup, own);
    assert_eq!(
        exit.detail,
        Detail::Exit {
            status: ExitStatus::Unknown,
            pidns_init: false,
        }
    );
    cancel.cancel();
    task.await.expect("join").expect("run ends cleanly");
}
