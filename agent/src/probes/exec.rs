//! The `exec` handler: a command in the container through CRI `ExecSync`.

use std::time::Duration;

use super::describe;
use super::threshold::Outcome;
use crate::config::duration::format_duration;
use crate::runtime::ContainerRuntime;

/// How much of a command's output a probe keeps (upstream: 10 KiB).
pub const MAX_OUTPUT: usize = 10 * 1024;

/// How long past its timeout an `ExecSync` may take before the probe stops waiting: the
/// runtime kills the command at the timeout and needs a moment to say so.
const EXEC_GRACE: Duration = Duration::from_secs(2);

/// Runs `command` in the container with the probe's timeout. Exit 0 passes; any other exit
/// fails with the command's output; a command that outlives the timeout fails (as upstream
/// since 1.20); a runtime error (container gone, runtime down) is an `Error`.
pub async fn probe_exec<R: ContainerRuntime>(
    runtime: &R,
    container_id: &str,
    command: &[String],
    timeout: Duration,
) -> Outcome {
    let timed_out = || {
        Outcome::Failure(format!(
            "command {command:?} timed out after {}",
            format_duration(timeout)
        ))
    };
    let call = runtime.exec_sync(container_id, command, timeout);
    match tokio::time::timeout(timeout + EXEC_GRACE, call).await {
        Err(_) => timed_out(),
        Ok(Err(e)) if e.is_timeout() => timed_out(),
        Ok(Err(e)) => Outcome::Error(describe(&e)),
        Ok(Ok(out)) => {
            let mut combined = out.stdout;
            combined.extend_from_slice(&out.stderr);
            let output = truncated(&combined, MAX_OUTPUT);
            if out.exit_code == 0 {
                Outcome::Success(output)
            } else if output.trim().is_empty() {
                Outcome::Failure(format!(
                    "command {command:?} exited with code {}",
                    out.exit_code
                ))
            } else {
                Outcome::Failure(output)
            }
        }
    }
}

/// At most `limit` bytes of `bytes` as text (invalid UTF-8 replaced).
pub fn truncated(bytes: &[u8], limit: usize) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(limit)]).into_owned()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::probes::testing::running_container;
    use crate::runtime::{ExecOutput, Fault, Method};

    fn cmd(args: &[&str]) -> Vec<String> {
        args.iter().map(|&a| a.to_owned()).collect()
    }

    #[tokio::test]
    async fn exit_zero_passes_and_other_exits_fail_with_their_output() {
        let (rt, id) = running_container().await;
        rt.set_exec_handler(Arc::new(|_, cmd: &[String]| match cmd[0].as_str() {
            "ok" => ExecOutput {
                stdout: b"fine\n".to_vec(),
                ..ExecOutput::default()
            },
            "loud" => ExecOutput {
                stdout: b"out ".to_vec(),
                stderr: b"no such file".to_vec(),
                exit_code: 1,
            },
            _ => ExecOutput {
                exit_code: 3,
                ..ExecOutput::default()
            },
        }));
        let second = Duration::from_secs(1);
        assert_eq!(
            probe_exec(&rt, &id, &cmd(&["ok"]), second).await,
            Outcome::Success("fine\n".to_owned())
        );
        assert_eq!(
            probe_exec(&rt, &id, &cmd(&["loud"]), second).await,
            Outcome::Failure("out no such file".to_owned())
        );
        assert_eq!(
            probe_exec(&rt, &id, &cmd(&["quiet"]), second).await,
            Outcome::Failure("command [\"quiet\"] exited with code 3".to_owned())
        );
    }

    #[tokio::test]
    async fn output_is_limited() {
        let (rt, id) = running_container().await;
        rt.set_exec_handler(Arc::new(|_, _: &[String]| ExecOutput {
            stdout: vec![b'x'; 3 * MAX_OUTPUT],
            ..ExecOutput::default()
        }));
        let Outcome::Success(out) =
            probe_exec(&rt, &id, &cmd(&["x"]), Duration::from_secs(1)).await
        else {
            panic!("expected success");
        };
        assert_eq!(out.len(), MAX_OUTPUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_command_that_outlives_its_timeout_fails() {
        let (rt, id) = running_container().await;
        // The runtime never answers: the probe gives up after timeout + grace.
        rt.inject(Method::ExecSync, Fault::Hang);
        let out = probe_exec(&rt, &id, &cmd(&["sleep", "60"]), Duration::from_secs(1)).await;
        assert_eq!(
            out,
            Outcome::Failure("command [\"sleep\", \"60\"] timed out after 1s".to_owned())
        );
        // The runtime says the deadline passed (containerd's answer): also a failure.
        rt.clear_faults();
        rt.inject(Method::ExecSync, Fault::Timeout);
        let out = probe_exec(&rt, &id, &cmd(&["sleep", "60"]), Duration::from_secs(1)).await;
        assert!(matches!(out, Outcome::Failure(m) if m.contains("timed out")));
    }

    #[tokio::test]
    async fn runtime_errors_are_not_verdicts() {
        let (rt, id) = running_container().await;
        rt.inject(Method::ExecSync, Fault::Error(tonic::Code::Unavailable));
        let out = probe_exec(&rt, &id, &cmd(&["true"]), Duration::from_secs(1)).await;
        assert!(
            matches!(&out, Outcome::Error(m) if m.contains("ExecSync")),
            "{out:?}"
        );
        rt.clear_faults();
        let out = probe_exec(
            &rt,
            "no-such-container",
            &cmd(&["true"]),
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(out, Outcome::Error(_)), "{out:?}");
    }
}
