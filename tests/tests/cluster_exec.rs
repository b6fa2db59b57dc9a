//! `kubectl exec`, `attach` and `port-forward` through the real API server (tests/k8s): the
//! API server opens the stream on bpflet's authenticated port with its kubelet client
//! certificate, bpflet asks containerd (CRI `Exec`, `Attach`, `PortForward`) for a URL on
//! its streaming server and proxies the upgraded connection there.
//!
//! Needs root (the node runs a private containerd and real pods).
use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bpflet_tests::cluster::{
    PodYaml, WAIT, joined_node, running_and_ready, wait_for, wait_for_default_service_account,
};
use bpflet_tests::node::{Node, free_port, tail};
use xtask::cluster::ControlPlane;

/// `kubectl <args>` as the cluster admin, stdin fed `input` (then closed).
fn kubectl(cp: &ControlPlane, args: &[&str], input: &[u8]) -> Output {
    let mut child = cp
        .kubectl(&cp.layout.admin_kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")));
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("feed kubectl's stdin");
    drop(stdin);
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")))
}

/// `kubectl <args>` as the cluster admin, left running with its stdout piped and its
/// stderr in `<control plane dir>/kubectl-<args[0]>.err`.
fn kubectl_spawn(cp: &ControlPlane, args: &[&str]) -> Child {
    let err = cp.layout.work_dir.join(format!("kubectl-{}.err", args[0]));
    let err =
        std::fs::File::create(&err).unwrap_or_else(|e| panic!("create {}: {e}", err.display()));
    cp.kubectl(&cp.layout.admin_kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")))
}

/// The first line `child` writes to stdout, within [`WAIT`] (the rest is drained); kills
/// it and panics (naming `what` and the agent's log tail) when none comes.
fn first_line(node: &Node, child: &mut Child, what: &str) -> String {
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = BufReader::new(out);
        let mut line = String::new();
        let _ = tx.send(out.read_line(&mut line).map(|_| line));
        // Drained until kubectl exits: a closed pipe would kill it at its next line
        // (`Handling connection for ...`).
        let _ = std::io::copy(&mut out, &mut std::io::sink());
    });
    match rx.recv_timeout(WAIT) {
        Ok(Ok(line)) if !line.is_empty() => line,
        other => {
            let _ = child.kill();
            panic!(
                "{what}: no line in time ({other:?})\n--- agent log ---\n{}",
                tail(&node.agent_log(), 40)
            );
        }
    }
}

fn stop(mut child: Child) {
    child.kill().expect("kill kubectl");
    let _ = child.wait();
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn kubectl_exec_attach_and_port_forward_through_the_api_server() {
    let (_dir, cp, node) = joined_node("bpflet-exec-", &[]);
    wait_for_default_service_account(&cp, &node);
    PodYaml::new("box").bound().apply(&cp);
    PodYaml::new("ticker")
        .bound()
        .sh("while true; do echo tick; sleep 0.2; done")
        .apply(&cp);
    PodYaml::new("echo")
        .bound()
        .sh("exec cat")
        .container("    stdin: true\n")
        .apply(&cp);
    PodYaml::new("web")
        .bound()
        .sh(
            "mkdir -p /tmp/www && echo hello from the pod > /tmp/www/index.html \
             && exec httpd -f -p 8080 -h /tmp/www",
        )
        // Ready once httpd listens, so the forward below does not race its start.
        .container("    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}\n")
        .apply(&cp);
    for pod in ["box", "ticker", "echo", "web"] {
        wait_for(
            &node,
            &format!("pod {pod} running and ready"),
            running_and_ready(&cp, pod),
        );
    }
    let agent_log = || tail(&node.agent_log(), 40);

    // exec: stdout and stderr apart, as written, and the command's exit code.
    let out = kubectl(
        &cp,
        &[
            "exec",
            "box",
            "-c",
            "c",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
        b"",
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout {stdout:?}, stderr {stderr:?}\n--- agent log ---\n{}",
        agent_log()
    );
    assert_eq!(stdout, "out\n", "stderr {stderr:?}");
    assert!(stderr.starts_with("err\n"), "stderr {stderr:?}");

    // exec -i: the bytes fed to stdin come back through cat.
    let input = b"one line\nand \x00 binary \xff bytes\n";
    let out = kubectl(&cp, &["exec", "-i", "box", "-c", "c", "--", "cat"], input);
    assert!(out.status.success(), "stderr {:?}", text(&out.stderr));
    assert_eq!(out.stdout, input);

    // exec -it: a terminal inside (kubectl needs one on its side too: `script` gives it).
    let line = format!(
        "{} --kubeconfig {} exec -it box -c c -- tty",
        cp.kubectl.display(),
        cp.layout.admin_kubeconfig.display()
    );
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("script");
    let seen = text(&out.stdout);
    assert!(out.status.success(), "{seen:?} {:?}", text(&out.stderr));
    // The terminal may echo a control character (`^@`) before the answer.
    let answer = seen.split("/dev/pts/").nth(1).unwrap_or_default();
    assert!(
        answer.starts_with(|c: char| c.is_ascii_digit()) && answer.ends_with("\r\n"),
        "tty said {seen:?}"
    );

    // attach: the running container's output.
    let mut attach = kubectl_spawn(&cp, &["attach", "ticker", "-c", "c"]);
    assert_eq!(first_line(&node, &mut attach, "kubectl attach"), "tick\n");
    stop(attach);

    // attach -i: what goes in comes back from cat.
    let mut attach = kubectl_spawn(&cp, &["attach", "-i", "echo", "-c", "c"]);
    let mut stdin = attach.stdin.take().expect("stdin");
    // Written until the echo arrives: attach's stream may open after the first write.
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let writer = std::thread::spawn(move || {
        while let Err(mpsc::RecvTimeoutError::Timeout) =
            stop_rx.recv_timeout(Duration::from_millis(200))
        {
            if stdin.write_all(b"ping\n").is_err() {
                break;
            }
        }
    });
    assert_eq!(
        first_line(&node, &mut attach, "kubectl attach -i"),
        "ping\n"
    );
    drop(stop_tx);
    writer.join().expect("writer");
    stop(attach);

    // port-forward: a client on 127.0.0.1 gets the pod's web server.
    let local = free_port();
    let mut forward = kubectl_spawn(
        &cp,
        &[
            "port-forward",
            "web",
            &format!("{local}:8080"),
            "--address",
            "127.0.0.1",
        ],
    );
    let ready = first_line(&node, &mut forward, "kubectl port-forward");
    assert!(ready.starts_with("Forwarding from 127.0.0.1"), "{ready:?}");
    let mut conn = TcpStream::connect(("127.0.0.1", local)).expect("connect to the forward");
    conn.set_read_timeout(Some(WAIT)).expect("read timeout");
    conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .expect("send a request");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap_or_else(|e| {
        let err = cp.layout.work_dir.join("kubectl-port-forward.err");
        panic!(
            "read the answer: {e}; so far {answer:?}\n--- kubectl's stderr ---\n{}\n\
                 --- agent log ---\n{}",
            std::fs::read_to_string(err).unwrap_or_default(),
            agent_log()
        )
    });
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
    assert!(
        answer.ends_with("\r\n\r\nhello from the pod\n"),
        "{answer:?}"
    );
    stop(forward);
}
