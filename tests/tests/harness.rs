//! The harness itself against the real cgroup hierarchy (root).

use std::fs;
use std::os::unix::process::ExitStatusExt as _;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use bpflet_tests::{CgroupVersion, TestCgroup, bpflet_bin, require_root};

const LIMIT: u64 = 64 << 20;

#[test]
fn test_cgroup_is_limited_holds_its_processes_and_cleans_up() {
    require_root();

    let cg = TestCgroup::new("harness").with_memory_limit(LIMIT);
    let nested = cg.child("nested");
    let path = cg.path().to_path_buf();
    let nested_path = nested.path().to_path_buf();
    assert!(path.is_dir(), "{} was not created", path.display());
    assert!(
        cg.rel_path().starts_with("/bpflet-test-"),
        "{}",
        cg.rel_path()
    );
    assert!(path.ends_with(cg.rel_path().trim_start_matches('/')));
    assert_eq!(nested.rel_path(), format!("{}/nested", cg.rel_path()));

    let limit_file = match cg.version() {
        CgroupVersion::V1 => "memory.limit_in_bytes",
        CgroupVersion::V2 => "memory.max",
    };
    assert_eq!(cg.read(limit_file).trim(), LIMIT.to_string());
    if cg.version() == CgroupVersion::V1 {
        assert_eq!(cg.read("memory.swappiness").trim(), "0");
        if cg.path().join("memory.memsw.limit_in_bytes").exists() {
            assert_eq!(
                cg.read("memory.memsw.limit_in_bytes").trim(),
                LIMIT.to_string()
            );
        }
    }

    // The inode is what the memcg tracepoints report: it must match the directory's.
    assert_ne!(cg.inode(), nested.inode());

    let mut sleeper = cg.spawn(Command::new("sleep").arg("30"));
    let mut nested_sleeper = nested.spawn(Command::new("sleep").arg("30"));
    let pid = i32::try_from(sleeper.id()).expect("pid fits i32");
    let nested_pid = i32::try_from(nested_sleeper.id()).expect("pid fits i32");
    assert_eq!(cg.procs(), [pid]);
    assert_eq!(nested.procs(), [nested_pid]);

    // /proc/<pid>/cgroup names the same cgroup on the memory line.
    let proc_cgroup =
        fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read /proc/pid/cgroup");
    let memory_line = proc_cgroup
        .lines()
        .find(|l| match cg.version() {
            CgroupVersion::V1 => l
                .split(':')
                .nth(1)
                .is_some_and(|c| c.split(',').any(|c| c == "memory")),
            CgroupVersion::V2 => l.starts_with("0::"),
        })
        .unwrap_or_else(|| panic!("no memory line in /proc/{pid}/cgroup:\n{proc_cgroup}"));
    assert!(
        memory_line.ends_with(&format!(":{}", cg.rel_path())),
        "{memory_line}"
    );

    // Dropping the parent kills both sleepers and removes both directories, child first;
    // dropping the child afterwards finds nothing left to do.
    drop(cg);
    assert!(!path.exists(), "{} survived drop", path.display());
    assert!(
        !nested_path.exists(),
        "{} survived drop",
        nested_path.display()
    );
    drop(nested);

    for child in [&mut sleeper, &mut nested_sleeper] {
        let status = child.wait().expect("wait for sleeper");
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    }
}

#[test]
fn memory_limit_ends_in_an_oom_kill_inside_the_cgroup() {
    require_root();

    // `tail /dev/zero` buffers an endless line: it grows until the 32 MiB limit stops it.
    let cg = TestCgroup::new("oom").with_memory_limit(32 << 20);
    let mut hog = cg.spawn(Command::new("tail").arg("/dev/zero"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = hog.try_wait().expect("try_wait on tail") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "tail /dev/zero outlived its 32 MiB limit for 60 s"
        );
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");

    let (file, key) = match cg.version() {
        CgroupVersion::V1 => ("memory.oom_control", "oom_kill"),
        CgroupVersion::V2 => ("memory.events", "oom_kill"),
    };
    let counters = cg.read(file);
    let kills: u64 = counters
        .lines()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {file}:\n{counters}"));
    assert_eq!(kills, 1, "{file}:\n{counters}");
}

#[test]
fn bpflet_bin_is_built_once_and_is_executable() {
    use std::os::unix::fs::PermissionsExt as _;

    let bin = bpflet_bin();
    let mode = fs::metadata(&bin)
        .unwrap_or_else(|e| panic!("stat {}: {e}", bin.display()))
        .permissions()
        .mode();
    assert!(mode & 0o111 != 0, "{} is not executable", bin.display());
    assert!(bin.ends_with("debug/bpflet"), "{}", bin.display());
    assert_eq!(bpflet_bin(), bin);
}
