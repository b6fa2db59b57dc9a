//! The `bpflet` agent as a child process, for every harness that runs the real binary: the
//! root tests' node (`bpflet_tests::node`) and the benches' node (`cargo xtask bench`). Both
//! put it on a [`crate::containerd::PrivateContainerd`]; what differs (the configuration,
//! what "started" means beyond serving `/pods`) stays with them.
//!
//! The agent's standard output and error go to a log file (appended: a restarted agent
//! continues it), it runs in a process group of its own (a Ctrl-C reaches the harness, which
//! stops it in order) and gets SIGTERM if the harness dies first.

use std::ffi::OsString;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How often a wait for the agent looks again.
const POLL: Duration = Duration::from_millis(50);

/// How to run the agent.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// The `bpflet` binary.
    pub bin: PathBuf,
    /// `--config`.
    pub config: PathBuf,
    /// `--root-dir`.
    pub root_dir: PathBuf,
    /// `--hostname-override`: static pods are named `<name>-<node>`.
    pub node_name: String,
    /// Where its standard output and error go (appended).
    pub log: PathBuf,
    /// Further arguments (`--log-format json`, `--v=2`, ...).
    pub args: Vec<OsString>,
    /// Extra environment.
    pub env: Vec<(OsString, OsString)>,
    /// A program the agent runs under, the agent's command line appended to it: e.g.
    /// `prlimit --nofile=1024:1024 --`, which execs the agent with the same pid.
    pub wrapper: Vec<OsString>,
}

impl AgentSpec {
    /// The command line, without the process settings [`Agent::spawn`] adds.
    #[must_use]
    pub fn command(&self) -> Command {
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&self.bin);
                cmd
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--root-dir")
            .arg(&self.root_dir)
            .arg("--hostname-override")
            .arg(&self.node_name)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    /// Starts the agent as `spec` says.
    ///
    /// # Errors
    /// When the log cannot be opened or the process not started.
    pub fn spawn(spec: &AgentSpec) -> Result<Self> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("opening {}", spec.log.display()))?;
        let mut cmd = spec.command();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file handle")?)
            .stderr(log)
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec and makes one
        // async-signal-safe system call (prctl), touching no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", spec.bin.display()))?;
        Ok(Self {
            child,
            log: spec.log.clone(),
        })
    }

    /// Its process id.
    #[must_use]
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The process.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Its exit status, once it has exited.
    ///
    /// # Errors
    /// When the process cannot be waited for.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        self.child.try_wait().context("checking on bpflet")
    }

    /// Waits until `ready` holds, looking every 50 ms.
    ///
    /// # Errors
    /// When the agent exits first, `timeout` passes or `ready` fails; each with the tail of
    /// the agent's log.
    pub fn wait_ready(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> Result<bool>,
    ) -> Result<()> {
        self.poll(what, timeout, |agent| {
            if let Some(status) = agent.exited()? {
                bail!(
                    "bpflet exited ({status}) before it would {what}; last lines of {}:\n{}",
                    agent.log.display(),
                    agent.log_tail(40)
                );
            }
            Ok(ready()?.then_some(()))
        })
    }

    /// Waits for the agent to exit by itself (a refused configuration, a fatal start-up
    /// error): its exit status.
    ///
    /// # Errors
    /// When it still runs after `timeout` (it is left running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.poll("exit", timeout, Self::exited)
    }

    /// Looks every 50 ms until `step` gives a value.
    fn poll<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut step: impl FnMut(&mut Self) -> Result<Option<T>>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = step(self)? {
                return Ok(value);
            }
            if Instant::now() >= deadline {
                bail!(
                    "bpflet did not {what} within {timeout:?}; last lines of {}:\n{}",
                    self.log.display(),
                    self.log_tail(40)
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Sends `signal` and waits up to `grace` for the agent to exit, then kills it. Its exit
    /// status, when it exited by itself. An agent that has already exited gets no signal
    /// (its pid may belong to another process by now).
    pub fn stop(mut self, signal: Signal, grace: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), signal);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(None) => thread::sleep(POLL.min(Duration::from_millis(20))),
                Ok(Some(status)) => return Some(status),
                Err(_) => return None,
            }
        }
        eprintln!(
            "bpflet ignored {signal} for {grace:?}; killing it (log: {})",
            self.log.display()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    /// The last `lines` lines of the agent's log.
    #[must_use]
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&fs::read_to_string(&self.log).unwrap_or_default(), lines)
    }
}

/// The last `n` lines of `s`.
#[must_use]
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A free TCP port on 127.0.0.1 (bound, then released) for the agent's read-only API.
///
/// # Errors
/// When no port can be bound.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// `GET path` on 127.0.0.1:`port` (HTTP/1.0, 5 s read timeout): the status code and the
/// body; `None` when nothing answers.
#[must_use]
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

/// Whether the agent's read-only API on `port` answers `/pods`.
#[must_use]
pub fn serves_pods(port: u16) -> bool {
    http_get(port, "/pods").is_some_and(|(code, _)| code == 200)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn the_command_line_carries_the_wrapper_and_the_spec() {
        let spec = AgentSpec {
            bin: "/b/bpflet".into(),
            config: "/n/config.yaml".into(),
            root_dir: "/n/root".into(),
            node_name: "testnode".into(),
            log: "/n/agent.log".into(),
            args: vec!["--v=2".into()],
            env: vec![("A".into(), "1".into())],
            wrapper: vec!["prlimit".into(), "--nofile=64:64".into(), "--".into()],
        };
        let cmd = spec.command();
        assert_eq!(cmd.get_program(), "prlimit");
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--nofile=64:64",
                "--",
                "/b/bpflet",
                "--config",
                "/n/config.yaml",
                "--root-dir",
                "/n/root",
                "--hostname-override",
                "testnode",
                "--v=2"
            ]
        );
        let plain = AgentSpec {
            wrapper: vec![],
            ..spec
        };
        assert_eq!(plain.command().get_program(), "/b/bpflet");
    }

    /// An "agent" that is `sh -c script` (the bpflet arguments become the script's `$0...`).
    fn shell_agent(dir: &Path, script: &str) -> AgentSpec {
        AgentSpec {
            bin: "/bin/sh".into(),
            config: "/dev/null".into(),
            root_dir: dir.into(),
            node_name: "n".into(),
            log: dir.join("log"),
            args: vec![],
            env: vec![],
            wrapper: vec!["/bin/sh".into(), "-c".into(), script.into()],
        }
    }

    #[test]
    fn an_agent_that_exits_is_not_waited_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut agent = Agent::spawn(&shell_agent(dir.path(), "echo gone; exit 3")).expect("spawn");
        let err = agent
            .wait_ready("serve /pods", Duration::from_secs(60), || Ok(false))
            .expect_err("exited");
        let text = format!("{err:#}");
        assert!(
            text.contains("exit status: 3") && text.contains("gone"),
            "{text}"
        );
    }

    #[test]
    fn stopping_an_agent_that_exited_reports_its_own_exit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut agent = Agent::spawn(&shell_agent(dir.path(), "exit 7")).expect("spawn");
        let exited = agent.wait_exit(Duration::from_secs(60)).expect("exits");
        assert_eq!(exited.code(), Some(7));
        let status = agent
            .stop(Signal::SIGKILL, Duration::from_secs(60))
            .expect("no signal: it had exited");
        assert_eq!(status.code(), Some(7));
    }

    #[test]
    fn stop_signals_and_reports_the_exit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = Agent::spawn(&shell_agent(dir.path(), "exec sleep 600")).expect("spawn");
        let status = agent
            .stop(Signal::SIGTERM, Duration::from_secs(60))
            .expect("exits on SIGTERM");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGTERM)
        );
    }
}
