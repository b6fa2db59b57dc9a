//! `kubectl logs` through the real API server (tests/k8s): the API server reaches bpflet's
//! authenticated port on the node's InternalIP with its kubelet client certificate, bpflet
//! checks it and asks the API server (SubjectAccessReview) whether that user may read
//! `nodes/proxy`, then serves `/containerLogs` from the container's CRI log file.
//!
//! Needs root (the node runs a private containerd and real pods).
use std::io::Read as _;
use std::process::{Command, Stdio};

use bpflet_tests::cluster::{
    PodYaml, WAIT, joined_node, wait_for, wait_for_default_service_account,
};

#[test]
fn kubectl_logs_reads_bpflets_container_logs_through_the_api_server() {
    let (_dir, cp, node) = joined_node("bpflet-logs-", &[]);
    wait_for_default_service_account(&cp, &node);
    // Three lines, then a crash: the second instance says `again` and stays up.
    PodYaml::new("talk")
        .bound()
        .sh("if [ -e /tmp/ran ]; then echo again; exec sleep 3600; fi; \
             touch /tmp/ran; echo one; echo two; echo three; exit 3")
        .spec("  volumes:\n  - name: tmp\n    emptyDir: {}\n")
        .container("    volumeMounts:\n    - {name: tmp, mountPath: /tmp}\n")
        .apply(&cp);

    let logs = |args: &[&str]| -> Result<String, String> {
        let mut all = vec!["logs", "talk", "-c", "c"];
        all.extend_from_slice(args);
        cp.kubectl_admin(&all).map_err(|e| format!("{e:#}"))
    };
    wait_for(&node, "kubectl logs of the second instance", || {
        logs(&[]).and_then(|out| {
            if out == "again\n" {
                Ok(())
            } else {
                Err(format!("kubectl logs: {out:?}"))
            }
        })
    });
    assert_eq!(
        logs(&["--previous"]).expect("kubectl logs --previous"),
        "one\ntwo\nthree\n"
    );
    assert_eq!(
        logs(&["--previous", "--tail", "2"]).expect("kubectl logs --previous --tail 2"),
        "two\nthree\n"
    );
    let stamped = logs(&["--timestamps"]).expect("kubectl logs --timestamps");
    let (stamp, text) = stamped.trim_end().split_once(' ').expect("a timestamp");
    assert_eq!(text, "again", "{stamped:?}");
    assert!(
        stamp.parse::<jiff::Timestamp>().is_ok(),
        "not an RFC 3339 timestamp: {stamp:?}"
    );

    // `-f` keeps the stream open through the API server: the first line arrives, and the
    // command is still running (it would exit at the end of a plain read).
    let mut follow = Command::new(&cp.kubectl)
        .arg("--kubeconfig")
        .arg(&cp.layout.admin_kubeconfig)
        .args(["logs", "-f", "talk", "-c", "c"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl logs -f");
    let mut out = follow.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = [0u8; 6];
        let _ = tx.send(out.read_exact(&mut first).map(|()| first));
    });
    let first = rx.recv_timeout(WAIT);
    if first.is_err() {
        let _ = follow.kill();
    }
    let first = first
        .expect("the first line through kubectl logs -f in time")
        .expect("reading kubectl logs -f");
    assert_eq!(&first, b"again\n");
    assert!(
        follow.try_wait().expect("try_wait").is_none(),
        "kubectl logs -f ended while the container runs"
    );
    follow.kill().expect("kill kubectl logs -f");
    let _ = follow.wait();
}
