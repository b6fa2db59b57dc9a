use std::fs;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const NODE: &str = "node-a";

fn manifest(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\n\
         spec:\n  containers:\n  - {{name: app, image: {image}}}\n"
    )
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn names(pods: &[StaticPod]) -> Vec<&str> {
    pods.iter()
        .map(|p| p.pod.metadata.name.as_deref().unwrap_or_default())
        .collect()
}

fn now() -> Timestamp {
    Timestamp::now()
}

#[test]
fn scan_add_edit_remove() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut source = file_source(dir.path(), Duration::from_secs(20));
    let (pods, errors) = source.scan(now()).expect("listed");
    assert!(pods.is_empty() && errors.is_empty());

    let web = dir.path().join("web.yaml");
    write(&web, &manifest("web", "busybox:1"));
    let (pods, errors) = source.scan(now()).expect("listed");
    assert_eq!(names(&pods), ["web-node-a"]);
    assert!(errors.is_empty(), "{errors:?}");
    let uid = pods[0].uid.clone();
    let seen = pods[0]
        .pod
        .metadata
        .annotations
        .as_ref()
        .expect("annotations")[CONFIG_SEEN_ANNOTATION]
        .clone();

    // Rescanning an unchanged file yields the identical pod (same seen time).
    let later = now() + jiff::SignedDuration::from_secs(30);
    let (again, _) = source.scan(later).expect("listed");
    assert_eq!(again, pods);

    write(&web, &manifest("web", "busybox:2"));
    let (pods, _) = source.scan(later).expect("listed");
    assert_eq!(names(&pods), ["web-node-a"]);
    assert_ne!(pods[0].uid, uid, "an edited manifest is a new pod");
    assert_ne!(
        pods[0]
            .pod
            .metadata
            .annotations
            .as_ref()
            .expect("annotations")[CONFIG_SEEN_ANNOTATION],
        seen
    );

    fs::remove_file(&web).expect("remove");
    let (pods, errors) = source.scan(now()).expect("listed");
    assert!(pods.is_empty() && errors.is_empty());
}

#[test]
fn malformed_beside_healthy_hidden_ignored_and_fixing_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(&dir.path().join("a.yaml"), &manifest("a", "busybox"));
    write(
        &dir.path().join("b.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: b}\nspec: {containers: []}\n",
    );
    write(&dir.path().join("c.json"), "{ not json");
    write(&dir.path().join(".hidden.yaml"), "garbage: [");
    write(&dir.path().join(".d.swp"), &manifest("swap", "busybox"));
    fs::create_dir(dir.path().join("subdir")).expect("mkdir");
    write(&dir.path().join("subdir/e.yaml"), &manifest("e", "busybox"));

    let mut source = file_source(dir.path(), Duration::from_secs(20));
    let (pods, errors) = source.scan(now()).expect("listed");
    assert_eq!(
        names(&pods),
        ["a-node-a"],
        "hidden files and subdirectories are ignored"
    );
    let origins: Vec<String> = errors.iter().map(|e| e.origin().to_string()).collect();
    assert_eq!(
        origins,
        [
            dir.path().join("b.yaml").display().to_string(),
            dir.path().join("c.json").display().to_string()
        ]
    );
    assert!(
        error_text(&errors[0]).contains("at least one container"),
        "{}",
        error_text(&errors[0])
    );

    write(&dir.path().join("b.yaml"), &manifest("b", "busybox"));
    let (pods, errors) = source.scan(now()).expect("listed");
    assert_eq!(
        names(&pods),
        ["a-node-a", "b-node-a"],
        "fixing the file yields its pod"
    );
    assert_eq!(errors.len(), 1);
}

#[test]
fn single_file_missing_path_and_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("only.yaml");
    write(&file, &manifest("only", "busybox"));
    let mut source = FileSource::new(file.clone(), NODE.to_owned(), Duration::from_secs(20));
    assert_eq!(
        names(&source.scan(now()).expect("listed").0),
        ["only-node-a"]
    );

    let mut missing = FileSource::new(
        dir.path().join("nope"),
        NODE.to_owned(),
        Duration::from_secs(20),
    );
    let (pods, errors) = missing.scan(now()).expect("listed");
    assert!(
        pods.is_empty() && errors.is_empty(),
        "a path that never existed has no pods, as upstream: {errors:?}"
    );
    // A single file removed from its directory: its pod is gone.
    fs::remove_file(&file).expect("remove");
    let (pods, errors) = source.scan(now()).expect("listed");
    assert!(pods.is_empty() && errors.is_empty(), "{errors:?}");
    write(&file, &manifest("only", "busybox"));

    write(
        &dir.path().join("zz-copy.yaml"),
        &manifest("only", "busybox:2"),
    );
    let mut source = file_source(dir.path(), Duration::from_secs(20));
    let (pods, errors) = source.scan(now()).expect("listed");
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].origin, ManifestOrigin::File(file));
    assert!(
        matches!(&errors[..], [ManifestError::Duplicate { .. }]),
        "{errors:?}"
    );
}

async fn next_snapshot(rx: &mut mpsc::Receiver<PodUpdate>) -> (Vec<StaticPod>, Vec<ManifestError>) {
    match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        Ok(Some(PodUpdate::Snapshot {
            source,
            pods,
            errors,
        })) => {
            assert_eq!(source, SourceKind::File);
            (pods, errors)
        }
        Ok(None) => panic!("source stopped"),
        Err(_) => panic!("no snapshot within 5s"),
    }
}

/// A file source on `dir` running in the background, past its (empty) initial snapshot.
struct Running {
    rx: mpsc::Receiver<PodUpdate>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(source: FileSource) -> Self {
        let (tx, mut rx) = mpsc::channel(8);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(source.run(tx, cancel.clone()));
        assert!(
            next_snapshot(&mut rx).await.0.is_empty(),
            "initial snapshot"
        );
        Self { rx, cancel, task }
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("stops on cancel")
            .expect("task");
    }
}

fn file_source(dir: &Path, rescan: Duration) -> FileSource {
    FileSource::new(dir.to_owned(), NODE.to_owned(), rescan)
}

#[tokio::test]
async fn inotify_notices_changes_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A rescan period far beyond the test: only inotify can explain the snapshots.
    let mut running = Running::start(file_source(dir.path(), Duration::from_secs(3600))).await;
    let rx = &mut running.rx;

    write(&dir.path().join("web.yaml"), &manifest("web", "busybox"));
    let (pods, errors) = next_snapshot(rx).await;
    assert_eq!(names(&pods), ["web-node-a"]);
    assert!(
        errors.is_empty(),
        "a complete write is not reported half-written: {errors:?}"
    );

    // Replace by rename, as editors do.
    let tmp = dir.path().join(".web.yaml.tmp");
    write(&tmp, &manifest("web", "busybox:2"));
    fs::rename(&tmp, dir.path().join("web.yaml")).expect("rename");
    let (edited, _) = next_snapshot(rx).await;
    assert_ne!(edited[0].uid, pods[0].uid);

    fs::remove_file(dir.path().join("web.yaml")).expect("remove");
    assert!(next_snapshot(rx).await.0.is_empty());

    running.stop().await;
}

/// A file still open for writing holds the rescan until it is closed (or quiet for the
/// debounce), so a writer that pauses mid-file is not reported as malformed. On the paused
/// clock, so the writer's pause is exactly half the debounce however busy the machine is.
#[tokio::test(start_paused = true)]
async fn a_file_being_written_is_read_once_closed() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut running = Running::start(file_source(dir.path(), Duration::from_secs(3600))).await;

    let text = manifest("web", "busybox");
    let (head, tail) = text.split_at(text.len() / 2);
    let mut file = fs::File::create(dir.path().join("web.yaml")).expect("create");
    file.write_all(head.as_bytes()).expect("write");
    file.flush().expect("flush");
    // Shorter than the debounce: the writer is still at it. Virtual time moves only when
    // every task waits, and the inotify events are already queued, so the first step lets
    // the source take them (and, were there no debounce, read the half-written file: its
    // blocking read holds the clock) before the second step ends the pause.
    tokio::time::sleep(DEBOUNCE / 4).await;
    tokio::time::sleep(DEBOUNCE / 4).await;
    file.write_all(tail.as_bytes()).expect("write");
    drop(file);
    let (pods, errors) = next_snapshot(&mut running.rx).await;
    assert!(errors.is_empty(), "read half-written: {errors:?}");
    assert_eq!(names(&pods), ["web-node-a"]);

    running.stop().await;
}

#[test]
fn open_writes_follow_create_modify_and_close() {
    use inotify::EventMask;
    let name = |n: &str| Some(std::ffi::OsString::from(n));
    let mut writes = OpenWrites::default();
    writes.note(EventMask::CREATE, name("web.yaml").as_deref());
    writes.note(EventMask::MODIFY, name("web.yaml").as_deref());
    assert!(!writes.is_empty());
    writes.note(EventMask::CLOSE_WRITE, name("web.yaml").as_deref());
    assert!(writes.is_empty(), "closed");
    writes.note(EventMask::MOVED_TO, name("db.yaml").as_deref());
    assert!(writes.is_empty(), "renamed into place: complete");
    writes.note(EventMask::CREATE, name(".web.yaml.swp").as_deref());
    assert!(writes.is_empty(), "hidden files are not manifests");
    writes.note(EventMask::MODIFY, name("db.yaml").as_deref());
    writes.note(EventMask::DELETE, name("db.yaml").as_deref());
    assert!(writes.is_empty(), "deleted while open");
    writes.note(EventMask::CREATE, None);
    assert!(writes.is_empty(), "an event on the directory itself");
}

/// On the paused clock: the quiet wait below spans exactly four rescans.
#[tokio::test(start_paused = true)]
async fn rescan_is_the_backstop_without_inotify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = file_source(dir.path(), Duration::from_millis(100)).with_inotify(false);
    let mut running = Running::start(source).await;
    write(&dir.path().join("web.yaml"), &manifest("web", "busybox"));
    assert_eq!(
        names(&next_snapshot(&mut running.rx).await.0),
        ["web-node-a"]
    );
    // Nothing changes: four rescans, no more snapshots.
    assert!(
        tokio::time::timeout(Duration::from_millis(400), running.rx.recv())
            .await
            .is_err()
    );
    running.stop().await;
}

/// Serves `responses` in order, one per connection, on 127.0.0.1; returns the URL.
async fn serve(responses: Vec<(u16, String)>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        for (status, body) in responses {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut request = vec![0; 4096];
            let _ = stream.read(&mut request).await;
            let response = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    });
    format!("http://{address}/pods")
}

#[tokio::test]
async fn http_fetches_pods_and_keeps_them_when_the_server_fails() {
    let list = format!(
        "apiVersion: v1\nkind: List\nitems:\n- {}\n- {{apiVersion: v1, kind: Pod, metadata: {{name: bad}}, spec: {{containers: []}}}}\n",
        serde_json::to_string(&serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]}
        }))
        .expect("json")
    );
    let url = serve(vec![
        (200, list),
        (500, "oops".to_owned()),
        (200, String::new()),
    ])
    .await;
    let mut source = HttpSource::new(
        url.clone(),
        NODE.to_owned(),
        Duration::from_secs(20),
        Duration::from_secs(5),
    );

    let (pods, errors) = source.fetch_once(now()).await.expect("fetched");
    assert_eq!(names(&pods), ["web-node-a"]);
    let annotations = pods[0]
        .pod
        .metadata
        .annotations
        .as_ref()
        .expect("annotations");
    assert_eq!(annotations[crate::model::CONFIG_SOURCE_ANNOTATION], "http");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].origin().to_string().ends_with("#items[1]"));

    let failed = source.fetch_once(now()).await.expect_err("500");
    let text = error_text(&failed);
    assert!(text.contains(&url) && text.contains("500"), "{text}");

    let (pods, errors) = source.fetch_once(now()).await.expect("fetched");
    assert!(
        pods.is_empty() && errors.is_empty(),
        "an empty answer means no pods"
    );

    // Nobody listens any more.
    let failed = source.fetch_once(now()).await.expect_err("nobody listens");
    assert!(
        matches!(
            failed,
            ManifestError::Fetch {
                source: FetchError::Connect { .. },
                ..
            }
        ),
        "{failed:?}"
    );
}

#[tokio::test]
async fn http_run_sends_snapshots_on_change_only() {
    let pod = manifest("web", "busybox");
    let url = serve(vec![
        (200, pod.clone()),
        (200, pod),
        (200, manifest("web", "busybox:2")),
    ])
    .await;
    let source = HttpSource::new(
        url,
        NODE.to_owned(),
        Duration::from_millis(50),
        Duration::from_secs(5),
    );
    let (tx, mut rx) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(source.run(tx, cancel.clone()));
    let mut uids = Vec::new();
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(PodUpdate::Snapshot { source, pods, .. })) => {
                assert_eq!(source, SourceKind::Http);
                uids.push(pods[0].uid.clone());
            }
            other => panic!("expected a snapshot, got {other:?}"),
        }
    }
    assert_ne!(
        uids[0], uids[1],
        "the unchanged second answer sent nothing; the third did"
    );
    cancel.cancel();
    task.await.expect("task");
}

#[test]
fn unsupported_urls() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for url in ["https://127.0.0.1/x", "127.0.0.1/x", "http://"] {
        let err = rt.block_on(get(url)).expect_err(url);
        assert!(
            matches!(err, FetchError::UnsupportedUrl | FetchError::Url(_)),
            "{url}: {err:?}"
        );
    }
}

fn unchanged(source: &mut FileSource) -> bool {
    let listing = source.list().expect("listed");
    source.unchanged(&listing)
}

/// A rescan that would find what the last one found is skipped on a stat per file; any
/// write, new file, removal or unusable file makes the next rescan read again, and so does
/// a file written too recently for its stat to tell one write from the next.
#[test]
fn unchanged_directory_is_known_from_stats_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut source = file_source(dir.path(), Duration::from_secs(20));
    // Scans "later": the files' stats have settled.
    let later = || now() + jiff::SignedDuration::from_secs(30);
    assert!(!unchanged(&mut source), "nothing scanned yet");
    let web = dir.path().join("web.yaml");
    write(&web, &manifest("web", "busybox:1"));
    source.scan(now()).expect("listed");
    assert!(
        !unchanged(&mut source),
        "written just now: a same-size write could keep the stat"
    );
    source.scan(later()).expect("listed");
    assert!(unchanged(&mut source));

    // Same size, other bytes: the write moves ctime (and mtime).
    write(&web, &manifest("web", "busybox:2"));
    assert!(!unchanged(&mut source), "rewritten in place");
    let (pods, _) = source.scan(later()).expect("listed");
    assert!(unchanged(&mut source));
    assert_eq!(
        pods[0].pod.spec.as_ref().expect("spec").containers[0]
            .image
            .as_deref(),
        Some("busybox:2")
    );

    let db = dir.path().join("db.yaml");
    write(&db, &manifest("db", "busybox:1"));
    assert!(!unchanged(&mut source), "file added");
    source.scan(later()).expect("listed");
    assert!(unchanged(&mut source));

    fs::remove_file(&db).expect("remove");
    assert!(!unchanged(&mut source), "file removed");
    source.scan(later()).expect("listed");
    assert!(unchanged(&mut source));

    let bad = dir.path().join("bad.yaml");
    write(&bad, "kind: [");
    assert!(!unchanged(&mut source), "file added");
    let (_, errors) = source.scan(later()).expect("listed");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        !unchanged(&mut source),
        "an unusable file is read on every rescan"
    );
}

/// A directory that cannot be listed says nothing about its pods: `step` reports it
/// unavailable (the run loop then sends nothing) and picks up once it is back. Removing
/// files (or every file) is what removes pods.
#[test]
fn unlistable_directory_is_unavailable_not_empty() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("manifests");
    fs::create_dir(&dir).expect("mkdir");
    write(&dir.join("web.yaml"), &manifest("web", "busybox"));
    let mut source = file_source(&dir, Duration::from_secs(20));
    assert!(matches!(source.step(now()), Scan::Complete { pods, .. } if pods.len() == 1));

    let away = root.path().join("away");
    fs::rename(&dir, &away).expect("rename away");
    match source.step(now()) {
        Scan::Unavailable(e) => assert!(
            error_text(&e).contains("manifests: cannot read"),
            "{}",
            error_text(&e)
        ),
        other => panic!("expected unavailable, got {other:?}"),
    }
    fs::rename(&away, &dir).expect("rename back");
    assert!(matches!(source.step(now()), Scan::Complete { pods, .. } if pods.len() == 1));
    fs::remove_file(dir.join("web.yaml")).expect("remove");
    assert!(
        matches!(source.step(now()), Scan::Complete { pods, errors } if pods.is_empty() && errors.is_empty())
    );
}

/// A file that cannot be read (not its content: the I/O) keeps the pod it gave; one whose
/// content became invalid, or that turned into something else than a regular file, does
/// not.
#[test]
fn unreadable_file_keeps_its_pod_broken_or_replaced_file_does_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let web = dir.path().join("web.yaml");
    write(&web, &manifest("web", "busybox"));
    let mut source = file_source(dir.path(), Duration::from_secs(20));
    let (pods, _) = source.scan(now()).expect("listed");
    assert_eq!(names(&pods), ["web-node-a"]);

    // A name that cannot be resolved (ELOOP): an I/O error, not content.
    fs::remove_file(&web).expect("remove");
    std::os::unix::fs::symlink(&web, &web).expect("self-referencing symlink");
    let (pods, errors) = source.scan(now()).expect("listed");
    assert_eq!(names(&pods), ["web-node-a"], "kept: {errors:?}");
    assert!(
        matches!(&errors[..], [ManifestError::Read { .. }]),
        "{errors:?}"
    );

    fs::remove_file(&web).expect("remove link");
    nix::unistd::mkfifo(&web, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let (pods, errors) = source.scan(now()).expect("listed");
    assert!(pods.is_empty(), "a FIFO is no manifest");
    let text = error_text(&errors[0]);
    assert!(
        text.contains("web.yaml: not a regular file (FIFO)"),
        "{text}"
    );
}

/// Opening a FIFO would wait for a writer: the reader opens without blocking and refuses
/// anything that is not a regular file, as the single manifest path too.
#[test]
fn fifo_as_the_manifest_path_is_refused_without_blocking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("pod.yaml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let origin = ManifestOrigin::File(fifo.clone());
    let err = read_manifest(&fifo, &origin).expect_err("a FIFO");
    assert!(
        matches!(err, ManifestError::NotRegular { kind: "FIFO", .. }),
        "{err}"
    );
    let mut source = FileSource::new(fifo, NODE.to_owned(), Duration::from_secs(20));
    let (pods, errors) = source.scan(now()).expect("listed");
    assert!(pods.is_empty());
    assert!(
        error_text(&errors[0]).contains("not a regular file (FIFO)"),
        "{errors:?}"
    );
}

#[test]
fn manifests_over_the_size_limit_are_refused_unread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("big.yaml");
    let file = fs::File::create(&big).expect("create");
    file.set_len(MAX_MANIFEST_BYTES + 1).expect("sparse file");
    let origin = ManifestOrigin::File(big.clone());
    let err = read_manifest(&big, &origin).expect_err("too large");
    assert_eq!(
        error_text(&err),
        format!("{}: larger than the limit of 3145728 bytes", big.display())
    );
    file.set_len(MAX_MANIFEST_BYTES).expect("shrink");
    assert_eq!(
        read_manifest(&big, &origin)
            .expect("at the limit")
            .map(|d| d.len() as u64),
        Some(MAX_MANIFEST_BYTES)
    );
}

/// Two manifests with one UID: the one already running keeps it even when the other sorts
/// first; the other is refused naming both files. With no pod running yet, the first in
/// order wins.
#[test]
fn same_uid_twice_keeps_the_running_pod() {
    let dir = tempfile::tempdir().expect("tempdir");
    let with_uid = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, uid: shared-1}}\nspec: {{containers: [{{name: c, image: busybox}}]}}\n"
        )
    };
    write(&dir.path().join("b-first.yaml"), &with_uid("first"));
    let mut source = file_source(dir.path(), Duration::from_secs(20));
    let (pods, _) = source.scan(now()).expect("listed");
    assert_eq!(names(&pods), ["first-node-a"]);

    write(&dir.path().join("a-second.yaml"), &with_uid("second"));
    let (pods, errors) = source.scan(now()).expect("listed");
    assert_eq!(
        names(&pods),
        ["first-node-a"],
        "the running pod keeps its UID"
    );
    let text = error_text(&errors[0]);
    assert!(
        text.contains("a-second.yaml: pod UID \"shared-1\" is already used by")
            && text.contains("b-first.yaml"),
        "{text}"
    );

    // A fresh source (the agent restarted): the first in file order.
    let mut fresh = file_source(dir.path(), Duration::from_secs(20));
    let (pods, errors) = fresh.scan(now()).expect("listed");
    assert_eq!(names(&pods), ["second-node-a"]);
    assert_eq!(errors.len(), 1, "{errors:?}");
}

#[test]
fn outage_is_logged_at_once_then_every_period() {
    let start = tokio::time::Instant::now();
    let mut outage = Outage::default();
    assert_eq!(outage.recovered(start), None, "no outage to end");
    assert!(outage.failed(start));
    assert!(!outage.failed(start + Duration::from_secs(1)));
    assert!(!outage.failed(start + OUTAGE_LOG_EVERY - Duration::from_millis(1)));
    assert!(outage.failed(start + OUTAGE_LOG_EVERY));
    assert_eq!(
        outage.recovered(start + Duration::from_secs(90)),
        Some(Duration::from_secs(90))
    );
    assert!(
        outage.failed(start + Duration::from_secs(91)),
        "a new outage logs at once"
    );
}

/// A `--manifest-url` body over the limit is refused whether its length is announced or
/// not (read until the limit, then dropped), and the fetch fails as a whole: pods unknown.
#[tokio::test]
async fn http_bodies_over_the_limit_are_refused() {
    let too_big = "#".repeat(usize::try_from(MAX_MANIFEST_BYTES).expect("fits") + 1);
    let announced = serve(vec![(200, too_big.clone())]).await;
    // No Content-Length: the body ends when the server closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let streamed = format!("http://{}/pods", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let mut request = vec![0; 4096];
        let _ = stream.read(&mut request).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            .await;
        let _ = stream.write_all(too_big.as_bytes()).await;
        let _ = stream.shutdown().await;
    });
    for url in [announced, streamed] {
        let mut source = HttpSource::new(
            url.clone(),
            NODE.to_owned(),
            Duration::from_secs(20),
            Duration::from_secs(5),
        );
        let err = source.fetch_once(now()).await.expect_err("too large");
        assert_eq!(
            error_text(&err),
            format!("{url}: cannot fetch: the body is larger than the limit of 3145728 bytes")
        );
    }
}
