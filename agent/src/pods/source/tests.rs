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
    let (pods, errors) = source.scan(now());
    assert!(pods.is_empty() && errors.is_empty());

    let web = dir.path().join("web.yaml");
    write(&web, &manifest("web", "busybox:1"));
    let (pods, errors) = source.scan(now());
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
    let (again, _) = source.scan(later);
    assert_eq!(again, pods);

    write(&web, &manifest("web", "busybox:2"));
    let (pods, _) = source.scan(later);
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
    let (pods, errors) = source.scan(now());
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
    let (pods, errors) = source.scan(now());
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
    let (pods, errors) = source.scan(now());
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
    assert_eq!(names(&source.scan(now()).0), ["only-node-a"]);

    let mut missing = FileSource::new(
        dir.path().join("nope"),
        NODE.to_owned(),
        Duration::from_secs(20),
    );
    let (pods, errors) = missing.scan(now());
    assert!(pods.is_empty());
    assert!(
        matches!(&errors[..], [ManifestError::Read { .. }]),
        "{errors:?}"
    );

    write(
        &dir.path().join("zz-copy.yaml"),
        &manifest("only", "busybox:2"),
    );
    let mut source = file_source(dir.path(), Duration::from_secs(20));
    let (pods, errors) = source.scan(now());
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
/// debounce), so a writer that pauses mid-file is not reported as malformed.
#[tokio::test]
async fn a_file_being_written_is_read_once_closed() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut running = Running::start(file_source(dir.path(), Duration::from_secs(3600))).await;

    let text = manifest("web", "busybox");
    let (head, tail) = text.split_at(text.len() / 2);
    let mut file = fs::File::create(dir.path().join("web.yaml")).expect("create");
    file.write_all(head.as_bytes()).expect("write");
    file.flush().expect("flush");
    // Shorter than the debounce: the writer is still at it.
    tokio::time::sleep(DEBOUNCE / 2).await;
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

#[tokio::test]
async fn rescan_is_the_backstop_without_inotify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = file_source(dir.path(), Duration::from_millis(100)).with_inotify(false);
    let mut running = Running::start(source).await;
    write(&dir.path().join("web.yaml"), &manifest("web", "busybox"));
    assert_eq!(
        names(&next_snapshot(&mut running.rx).await.0),
        ["web-node-a"]
    );
    // Nothing changes: no more snapshots.
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

    let (pods, errors) = source.fetch_once(now()).await;
    assert_eq!(names(&pods), ["web-node-a"]);
    let annotations = pods[0]
        .pod
        .metadata
        .annotations
        .as_ref()
        .expect("annotations");
    assert_eq!(
        annotations[super::super::manifest::CONFIG_SOURCE_ANNOTATION],
        "http"
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].origin().to_string().ends_with("#items[1]"));

    let (kept, errors) = source.fetch_once(now()).await;
    assert_eq!(kept, pods, "a failed fetch keeps the last pods");
    let text = error_text(&errors[0]);
    assert!(text.contains(&url) && text.contains("500"), "{text}");

    let (pods, errors) = source.fetch_once(now()).await;
    assert!(
        pods.is_empty() && errors.is_empty(),
        "an empty answer means no pods"
    );

    // Nobody listens any more.
    let (_, errors) = source.fetch_once(now()).await;
    assert!(
        matches!(
            &errors[..],
            [ManifestError::Fetch {
                source: FetchError::Connect { .. },
                ..
            }]
        ),
        "{errors:?}"
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

fn unchanged(source: &FileSource) -> bool {
    source.unchanged(&source.list())
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
    assert!(!unchanged(&source), "nothing scanned yet");
    let web = dir.path().join("web.yaml");
    write(&web, &manifest("web", "busybox:1"));
    source.scan(now());
    assert!(
        !unchanged(&source),
        "written just now: a same-size write could keep the stat"
    );
    source.scan(later());
    assert!(unchanged(&source));

    // Same size, other bytes: the write moves ctime (and mtime).
    write(&web, &manifest("web", "busybox:2"));
    assert!(!unchanged(&source), "rewritten in place");
    let (pods, _) = source.scan(later());
    assert!(unchanged(&source));
    assert_eq!(
        pods[0].pod.spec.as_ref().expect("spec").containers[0]
            .image
            .as_deref(),
        Some("busybox:2")
    );

    let db = dir.path().join("db.yaml");
    write(&db, &manifest("db", "busybox:1"));
    assert!(!unchanged(&source), "file added");
    source.scan(later());
    assert!(unchanged(&source));

    fs::remove_file(&db).expect("remove");
    assert!(!unchanged(&source), "file removed");
    source.scan(later());
    assert!(unchanged(&source));

    let bad = dir.path().join("bad.yaml");
    write(&bad, "kind: [");
    assert!(!unchanged(&source), "file added");
    let (_, errors) = source.scan(later());
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        !unchanged(&source),
        "an unusable file is read on every rescan"
    );
}
