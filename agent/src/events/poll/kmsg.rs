//! The kernel log: reading `/dev/kmsg` and parsing the OOM killer's lines.
//!
//! An OOM kill logs, in order (all but the last are rate-limited together, 10 per 5s, so a
//! crash-looping container soon logs only the last line):
//! ```text
//! 4,344,339400013,-;stress-ng-vm invoked oom-killer: gfp_mask=0x100cca(GFP_HIGHUSER_MOVABLE), order=0, oom_score_adj=1000
//! 4,345,339400069,-;CPU: 0 UID: 0 PID: 8334 Comm: stress-ng-vm Not tainted 6.18.44-fc-v595 #1 PREEMPT(none)
//! ... stack, registers ...
//! 6,385,339403448,-;memory: usage 65536kB, limit 65536kB, failcnt 6795        (memcg OOMs only)
//! ... memcg stats, task list ...
//! 6,436,339403625,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/x,task_memcg=/x,task=stress-ng-vm,pid=8334,uid=0
//! 3,437,339403650,-;Memory cgroup out of memory: Killed process 8334 (stress-ng-vm) total-vm:282112kB, anon-rss:62080kB, file-rss:384kB, shmem-rss:0kB, UID:0 pgtables:476kB oom_score_adj:1000
//! ```
//! (`Out of memory: Killed process ...` for a node-wide OOM.)

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// One `/dev/kmsg` record: `prio,seq,ts_usec,flags[,...];message` (see the kernel's
/// Documentation/ABI/testing/dev-kmsg). Continuation lines (` KEY=value`) are not records.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Record {
    pub seq: u64,
    /// Microseconds since boot (the printk clock).
    pub ts_usec: u64,
    /// With the kernel's `\xNN` escapes decoded.
    pub message: String,
}

pub(super) fn parse_record(line: &str) -> Option<Record> {
    if line.starts_with(' ') {
        return None;
    }
    let (header, message) = line.split_once(';')?;
    let mut fields = header.split(',');
    let _prio: u32 = fields.next()?.parse().ok()?;
    let seq = fields.next()?.parse().ok()?;
    let ts_usec = fields.next()?.parse().ok()?;
    Some(Record {
        seq,
        ts_usec,
        message: unescape(message),
    })
}

/// `/dev/kmsg` escapes non-printable bytes and backslash as `\xNN`.
fn unescape(s: &str) -> String {
    if !s.contains("\\x") {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && bytes.get(i + 1) == Some(&b'x')
            && let Some(hex) = bytes.get(i + 2..i + 4)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `oom-kill:` summary line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct OomSummary {
    /// `CONSTRAINT_NONE` (node), `CONSTRAINT_MEMCG`, `CONSTRAINT_CPUSET`, `CONSTRAINT_MEMORY_POLICY`.
    pub constraint: String,
    /// The memory cgroup whose limit was hit (memcg OOMs only).
    pub oom_memcg: Option<String>,
    /// The victim's memory cgroup.
    pub task_memcg: Option<String>,
    pub task: String,
    pub pid: u32,
    pub uid: u32,
}

impl OomSummary {
    pub fn is_memcg(&self) -> bool {
        self.constraint == "CONSTRAINT_MEMCG"
    }
}

/// Parses from the right, since the comm and the paths are free text: a path containing
/// `,task=` would confuse it, which no real cgroup name does.
pub(super) fn parse_oom_summary(msg: &str) -> Option<OomSummary> {
    let rest = msg.strip_prefix("oom-kill:")?;
    let (rest, uid) = rest.rsplit_once(",uid=")?;
    let (rest, pid) = rest.rsplit_once(",pid=")?;
    let (rest, task) = rest.rsplit_once(",task=")?;
    let (rest, task_memcg) = match rest.rsplit_once(",task_memcg=") {
        Some((rest, memcg)) => (rest, Some(memcg.to_owned())),
        None => (rest, None),
    };
    let oom_memcg = rest
        .rsplit_once(",oom_memcg=")
        .map(|(_, memcg)| memcg.to_owned());
    let constraint = rest.strip_prefix("constraint=")?.split(',').next()?;
    Some(OomSummary {
        constraint: constraint.to_owned(),
        oom_memcg,
        task_memcg,
        task: task.to_owned(),
        pid: pid.parse().ok()?,
        uid: uid.trim().parse().ok()?,
    })
}

/// Which OOM killer logged a `Killed process` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KillContext {
    /// `Memory cgroup out of memory`: a cgroup's limit.
    Memcg,
    /// `Out of memory` (and its variants): the node (or a cpuset/mempolicy) ran out.
    Global,
}

/// The `Killed process` line; sizes in kB, `None` when this kernel does not print them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct OomKilled {
    pub context: KillContext,
    pub pid: u32,
    pub comm: String,
    pub total_vm_kb: Option<u64>,
    pub anon_rss_kb: Option<u64>,
    pub file_rss_kb: Option<u64>,
    pub shmem_rss_kb: Option<u64>,
    pub uid: Option<u32>,
    pub pgtables_kb: Option<u64>,
    pub oom_score_adj: Option<i32>,
}

pub(super) fn parse_oom_killed(msg: &str) -> Option<OomKilled> {
    let (context, rest) = msg.split_once(": Killed process ")?;
    let context = if context.starts_with("Memory cgroup") {
        KillContext::Memcg
    } else if context.starts_with("Out of memory") {
        KillContext::Global
    } else {
        return None;
    };
    let (pid, rest) = rest.split_once(" (")?;
    let (comm, tail) = rest.rsplit_once(") ")?;
    let mut killed = OomKilled {
        context,
        pid: pid.parse().ok()?,
        comm: comm.to_owned(),
        total_vm_kb: None,
        anon_rss_kb: None,
        file_rss_kb: None,
        shmem_rss_kb: None,
        uid: None,
        pgtables_kb: None,
        oom_score_adj: None,
    };
    for token in tail.split_whitespace() {
        let Some((key, value)) = token.trim_end_matches(',').split_once(':') else {
            continue;
        };
        let kb = || value.strip_suffix("kB").and_then(|v| v.parse().ok());
        match key {
            "total-vm" => killed.total_vm_kb = kb(),
            "anon-rss" => killed.anon_rss_kb = kb(),
            "file-rss" => killed.file_rss_kb = kb(),
            "shmem-rss" => killed.shmem_rss_kb = kb(),
            "pgtables" => killed.pgtables_kb = kb(),
            "UID" => killed.uid = value.parse().ok(),
            "oom_score_adj" => killed.oom_score_adj = value.parse().ok(),
            _ => {}
        }
    }
    Some(killed)
}

/// An OOM-killer line that matters to us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum OomLine {
    /// `<comm> invoked oom-killer: ...`: a new OOM report starts.
    Invoked,
    /// `CPU: 0 UID: 0 PID: 8334 Comm: ...`: the allocating task, inside a report.
    InvokerPid(u32),
    /// `memory: usage 65536kB, limit 65536kB, failcnt 6795`: the OOMing memcg.
    MemcgUsage {
        usage_kb: u64,
        limit_kb: u64,
    },
    Summary(OomSummary),
    Killed(OomKilled),
}

pub(super) fn classify(msg: &str) -> Option<OomLine> {
    if msg.starts_with("oom-kill:") {
        return parse_oom_summary(msg).map(OomLine::Summary);
    }
    if msg.contains(": Killed process ") {
        return parse_oom_killed(msg).map(OomLine::Killed);
    }
    if msg.contains(" invoked oom-killer: ") {
        return Some(OomLine::Invoked);
    }
    if let Some(rest) = msg.strip_prefix("CPU: ") {
        let (_, after) = rest.split_once(" PID: ")?;
        let pid = after.split_whitespace().next()?.parse().ok()?;
        return Some(OomLine::InvokerPid(pid));
    }
    if let Some(rest) = msg.strip_prefix("memory: usage ") {
        let (usage, rest) = rest.split_once("kB, limit ")?;
        let (limit, _) = rest.split_once("kB")?;
        return Some(OomLine::MemcgUsage {
            usage_kb: usage.parse().ok()?,
            limit_kb: limit.parse().ok()?,
        });
    }
    None
}

/// A non-blocking reader of `/dev/kmsg` (or of a plain file in tests) positioned at the end
/// when opened, so old kills are not replayed.
pub(super) struct Kmsg {
    path: PathBuf,
    io: Io,
    partial: Vec<u8>,
    buf: Vec<u8>,
}

enum Io {
    /// `/dev/kmsg`: woken by the reactor when a record arrives.
    Polled(AsyncFd<File>),
    /// A regular file (fixtures): read on every tick.
    Plain(File),
}

/// Larger than any kmsg record (a record must fit one read, else EINVAL).
const READ_BUF: usize = 16 * 1024;
/// Bound on one partial line held between reads of a plain file.
const MAX_LINE: usize = 64 * 1024;

impl Kmsg {
    /// Opens and seeks to the end. Must run inside a tokio runtime.
    pub fn open(path: &Path) -> io::Result<Self> {
        let mut file = File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        // /dev/kmsg: SEEK_END moves past every stored record (dev-kmsg ABI).
        file.seek(SeekFrom::End(0))?;
        // SAFETY: `File` owns its descriptor, which stays open and unchanged until the
        // `AsyncFd` (and with it the `File`) is dropped.
        let io = match unsafe { AsyncFd::register_with_interest(file, Interest::READABLE) } {
            Ok(fd) => Io::Polled(fd),
            Err(e) => {
                // epoll refuses regular files (EPERM): read those on every tick instead.
                let (file, err) = e.into_parts();
                tracing::debug!(path = %path.display(), error = %err, "kernel log is not pollable, reading it per tick");
                Io::Plain(file)
            }
        };
        Ok(Kmsg {
            path: path.to_owned(),
            io,
            partial: Vec::new(),
            buf: vec![0; READ_BUF],
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether [`Kmsg::readable`] ever wakes; otherwise drain on each tick.
    pub fn is_polled(&self) -> bool {
        matches!(self.io, Io::Polled(_))
    }

    /// Waits until records may be readable; never returns for a plain file.
    pub async fn readable(&self) -> io::Result<()> {
        match &self.io {
            Io::Polled(fd) => {
                let mut guard = fd.readable().await?;
                // Cleared before draining: a record that arrives after the drain's EAGAIN
                // sets readiness again.
                guard.clear_ready();
                Ok(())
            }
            Io::Plain(_) => std::future::pending().await,
        }
    }

    /// Reads every available complete line.
    pub fn drain(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let read = match &mut self.io {
                Io::Polled(fd) => fd.get_ref().read(&mut self.buf),
                Io::Plain(file) => file.read(&mut self.buf),
            };
            match read {
                Ok(0) => break,
                Ok(n) => {
                    self.partial.extend_from_slice(&self.buf[..n]);
                    self.take_lines(&mut lines);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                    // The ring buffer overwrote records before we read them; the next read
                    // returns the oldest record still there.
                    tracing::warn!(path = %self.path.display(), "kernel log records were lost before they were read");
                }
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "reading the kernel log failed");
                    break;
                }
            }
        }
        lines
    }

    fn take_lines(&mut self, lines: &mut Vec<String>) {
        let mut start = 0;
        while let Some(nl) = self.partial[start..].iter().position(|b| *b == b'\n') {
            lines.push(String::from_utf8_lossy(&self.partial[start..start + nl]).into_owned());
            start += nl + 1;
        }
        self.partial.drain(..start);
        if self.partial.len() > MAX_LINE {
            tracing::warn!(path = %self.path.display(), "dropping an overlong kernel log line");
            self.partial.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUMMARY: &str = "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/bpflet-dev-cgpoll,task_memcg=/bpflet-dev-cgpoll/child,task=stress-ng-vm,pid=8334,uid=0";
    const KILLED: &str = "Memory cgroup out of memory: Killed process 8334 (stress-ng-vm) total-vm:282112kB, anon-rss:62080kB, file-rss:384kB, shmem-rss:0kB, UID:0 pgtables:476kB oom_score_adj:1000";

    #[test]
    fn records() {
        let cases: Vec<(&str, Option<Record>)> = vec![
            (
                "6,436,339403625,-;hello world",
                Some(Record {
                    seq: 436,
                    ts_usec: 339_403_625,
                    message: "hello world".into(),
                }),
            ),
            // extra header fields and a ';' in the message
            (
                "4,1,2,c,extra;a;b",
                Some(Record {
                    seq: 1,
                    ts_usec: 2,
                    message: "a;b".into(),
                }),
            ),
            (
                r"6,7,8,-;comm (a\x5cb\x0a)",
                Some(Record {
                    seq: 7,
                    ts_usec: 8,
                    message: "comm (a\\b\n)".into(),
                }),
            ),
            (" SUBSYSTEM=cgroup", None),
            ("[  341.577612] dmesg style", None),
            ("x,1,2,-;bad prio", None),
            ("", None),
        ];
        for (line, want) in cases {
            assert_eq!(parse_record(line), want, "{line}");
        }
    }

    #[test]
    fn oom_summaries() {
        let s = parse_oom_summary(SUMMARY).expect("memcg summary");
        assert_eq!(
            s,
            OomSummary {
                constraint: "CONSTRAINT_MEMCG".into(),
                oom_memcg: Some("/bpflet-dev-cgpoll".into()),
                task_memcg: Some("/bpflet-dev-cgpoll/child".into()),
                task: "stress-ng-vm".into(),
                pid: 8334,
                uid: 0,
            }
        );
        assert!(s.is_memcg());

        let global = parse_oom_summary(
            "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/kubepods/besteffort/pod1/c,task=python3,pid=1234,uid=1000",
        )
        .expect("global summary");
        assert_eq!(global.constraint, "CONSTRAINT_NONE");
        assert_eq!(global.oom_memcg, None);
        assert_eq!(
            global.task_memcg.as_deref(),
            Some("/kubepods/besteffort/pod1/c")
        );
        assert_eq!((global.pid, global.uid), (1234, 1000));
        assert!(!global.is_memcg());

        // A comm with commas and '=' still parses; cpuset lists with commas too.
        let odd = parse_oom_summary(
            "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=0-1,cpuset=/a,mems_allowed=0-1,oom_memcg=/t,task_memcg=/t,task=a,b=c,pid=9,uid=0",
        )
        .expect("odd comm");
        assert_eq!(odd.task, "a,b=c");
        assert_eq!(odd.oom_memcg.as_deref(), Some("/t"));

        for bad in [
            "oom-kill:constraint=CONSTRAINT_MEMCG,task=x,pid=notanumber,uid=0",
            "oom-kill:garbage",
            "oom_reaper: reaped process 8334 (stress-ng-vm), now anon-rss:0kB",
            "",
        ] {
            assert_eq!(parse_oom_summary(bad), None, "{bad}");
        }
    }

    #[test]
    fn killed_lines() {
        let k = parse_oom_killed(KILLED).expect("memcg kill");
        assert_eq!(
            k,
            OomKilled {
                context: KillContext::Memcg,
                pid: 8334,
                comm: "stress-ng-vm".into(),
                total_vm_kb: Some(282_112),
                anon_rss_kb: Some(62_080),
                file_rss_kb: Some(384),
                shmem_rss_kb: Some(0),
                uid: Some(0),
                pgtables_kb: Some(476),
                oom_score_adj: Some(1000),
            }
        );
        let global = parse_oom_killed(
            "Out of memory: Killed process 77 (my (odd) app) total-vm:10kB, anon-rss:5kB, file-rss:0kB, shmem-rss:0kB, UID:1000 pgtables:4kB oom_score_adj:-998",
        )
        .expect("global kill");
        assert_eq!(global.context, KillContext::Global);
        assert_eq!(global.comm, "my (odd) app");
        assert_eq!(global.oom_score_adj, Some(-998));
        assert_eq!(global.uid, Some(1000));

        // Older kernels print fewer fields.
        let old = parse_oom_killed(
            "Memory cgroup out of memory: Killed process 5 (sh) total-vm:4kB, anon-rss:1kB, file-rss:2kB",
        )
        .expect("old format");
        assert_eq!(
            (old.anon_rss_kb, old.shmem_rss_kb, old.oom_score_adj),
            (Some(1), None, None)
        );

        for bad in [
            "oom_reaper: reaped process 8334 (stress-ng-vm), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB",
            "Something else: Killed process 1 (x) total-vm:1kB",
            "Out of memory: Killed process x (y) total-vm:1kB",
            "Out of memory: Killed process 12",
        ] {
            assert_eq!(parse_oom_killed(bad), None, "{bad}");
        }
    }

    #[test]
    fn classify_report_lines() {
        let cases: Vec<(&str, Option<OomLine>)> = vec![
            (
                "stress-ng-vm invoked oom-killer: gfp_mask=0x100cca(GFP_HIGHUSER_MOVABLE), order=0, oom_score_adj=1000",
                Some(OomLine::Invoked),
            ),
            (
                "CPU: 0 UID: 0 PID: 8334 Comm: stress-ng-vm Not tainted 6.18.44-fc-v595 #1 PREEMPT(none) ",
                Some(OomLine::InvokerPid(8334)),
            ),
            (
                "CPU: 1 PID: 42 Comm: python3 Not tainted 5.15.0 #1",
                Some(OomLine::InvokerPid(42)),
            ),
            (
                "memory: usage 65536kB, limit 65536kB, failcnt 6795",
                Some(OomLine::MemcgUsage {
                    usage_kb: 65536,
                    limit_kb: 65536,
                }),
            ),
            (
                "memory+swap: usage 65536kB, limit 9007199254740988kB, failcnt 0",
                None,
            ),
            ("Memory cgroup stats for /bpflet-dev-cgpoll:", None),
            ("Tasks state (memory values in pages):", None),
            (SUMMARY, parse_oom_summary(SUMMARY).map(OomLine::Summary)),
            (KILLED, parse_oom_killed(KILLED).map(OomLine::Killed)),
            ("EXT4-fs (vda): mounted filesystem", None),
        ];
        for (msg, want) in cases {
            assert_eq!(classify(msg), want, "{msg}");
        }
    }

    #[tokio::test]
    async fn plain_file_reads_only_what_is_appended() {
        use std::io::Write;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kmsg");
        std::fs::write(&path, "6,1,1,-;old line, not replayed\n").expect("write");
        let mut kmsg = Kmsg::open(&path).expect("open");
        assert!(!kmsg.is_polled());
        assert!(kmsg.drain().is_empty());

        let mut f = File::options().append(true).open(&path).expect("append");
        f.write_all(b"6,2,2,-;first\n6,3,3,-;sec").expect("write");
        assert_eq!(kmsg.drain(), ["6,2,2,-;first"]);
        f.write_all(b"ond\n").expect("write");
        assert_eq!(kmsg.drain(), ["6,3,3,-;second"]);
    }
}
