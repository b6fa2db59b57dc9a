use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::pods::labels::{CONTAINER_NAME_LABEL, POD_UID_LABEL};
use crate::runtime::{FakeRuntime, Fault, api};

const MIB: u64 = 1 << 20;
const SECOND: Duration = Duration::from_secs(1);

#[test]
fn policies_are_validated_as_upstream() {
    let min = Duration::from_secs(120);
    let p = GcPolicy::new(85, 80, min, Duration::ZERO).unwrap();
    assert_eq!(p, GcPolicy::default());
    assert!(p.periodic());
    assert_eq!(
        GcPolicy::new(90, 10, min, Duration::from_secs(600))
            .unwrap()
            .max_age,
        Some(Duration::from_secs(600))
    );
    // High 100 without a maximum age turns the periodic GC off; with one it stays.
    assert!(
        !GcPolicy::new(100, 80, min, Duration::ZERO)
            .unwrap()
            .periodic()
    );
    assert!(
        GcPolicy::new(100, 80, min, Duration::from_secs(300))
            .unwrap()
            .periodic()
    );
    for (high, low, max, field, why) in [
        (
            101,
            80,
            0,
            "imageGCHighThresholdPercent",
            "between 0 and 100",
        ),
        (
            -1,
            80,
            0,
            "imageGCHighThresholdPercent",
            "between 0 and 100",
        ),
        (85, -5, 0, "imageGCLowThresholdPercent", "between 0 and 100"),
        (80, 80, 0, "imageGCLowThresholdPercent", "must be less than"),
        (70, 80, 0, "imageGCLowThresholdPercent", "must be less than"),
        (
            85,
            80,
            120,
            "imageMaximumGCAge",
            "greater than imageMinimumGCAge",
        ),
        (
            85,
            80,
            60,
            "imageMaximumGCAge",
            "greater than imageMinimumGCAge",
        ),
    ] {
        let (f, w) = GcPolicy::new(high, low, min, Duration::from_secs(max)).unwrap_err();
        assert_eq!(f, field, "{high} {low} {max}");
        assert!(w.contains(why), "{w}");
    }
}

#[test]
fn bytes_to_free_follow_upstreams_arithmetic() {
    let p = GcPolicy::default();
    // 84 % used: below the high threshold.
    assert_eq!(p.bytes_to_free(100, 16), None);
    // 85 %: free down to 80 %, i.e. to 20 bytes available.
    assert_eq!(p.bytes_to_free(100, 15), Some(5));
    assert_eq!(p.bytes_to_free(1000, 1), Some(199));
    // Available beyond capacity counts as capacity; no capacity, nothing to say.
    assert_eq!(p.bytes_to_free(100, 500), None);
    assert_eq!(p.bytes_to_free(0, 0), None);
    // Usage rounds as upstream's integer arithmetic: 100 - floor(available * 100 / capacity).
    assert_eq!(GcPolicy::usage_percent(1000, 151), 85);
    assert_eq!(p.bytes_to_free(1000, 151), Some(49));
    assert_eq!(GcPolicy::usage_percent(0, 0), 100);
}

#[test]
fn references_normalize() {
    for (input, want) in [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        (
            "docker.io/library/busybox:latest",
            "docker.io/library/busybox:latest",
        ),
        ("user/app:v1", "docker.io/user/app:v1"),
        ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
        ("localhost:5000/app", "localhost:5000/app:latest"),
        ("localhost/app", "localhost/app:latest"),
        ("bpflet.local/busybox:latest", "bpflet.local/busybox:latest"),
        ("busybox@sha256:abc", "docker.io/library/busybox@sha256:abc"),
        ("sha256:0123", "sha256:0123"),
    ] {
        assert_eq!(normalize_reference(input), want, "{input}");
    }
}

fn image(name: &str, size: u64, pinned: bool) -> Image {
    Image {
        id: format!("sha256:{name}"),
        repo_tags: vec![format!("registry.test/{name}:v1")],
        repo_digests: vec![format!("registry.test/{name}@sha256:d{name}")],
        size_bytes: size,
        uid: None,
        username: String::new(),
        pinned,
    }
}

fn ids(candidates: &[Candidate]) -> Vec<&str> {
    candidates.iter().map(|c| c.id.as_str()).collect()
}

#[test]
fn in_use_matches_ids_references_and_wanted_names() {
    let mut c = Container {
        id: "c1".into(),
        pod_sandbox_id: "s1".into(),
        metadata: crate::runtime::ContainerMetadata {
            name: "app".into(),
            attempt: 0,
        },
        image: "registry.test/a:v1".into(),
        image_ref: "sha256:a".into(),
        state: crate::runtime::ContainerState::Exited,
        created_at: jiff::Timestamp::UNIX_EPOCH,
        labels: HashMap::new(),
        annotations: HashMap::new(),
    };
    let by_container = InUse::new([&c], []);
    assert!(by_container.contains(&image("a", 1, false)));
    assert!(!by_container.contains(&image("b", 1, false)));
    // A container that names the image by digest only still holds it.
    c.image = "registry.test/b@sha256:db".into();
    c.image_ref = String::new();
    assert!(InUse::new([&c], []).contains(&image("b", 1, false)));
    // Wanted names compare normalized: `busybox` is docker.io/library/busybox:latest.
    let mut busybox = image("busybox", 1, false);
    busybox.repo_tags = vec!["docker.io/library/busybox:latest".into()];
    assert!(InUse::new([], ["busybox"]).contains(&busybox));
    assert!(!InUse::new([], ["busybox:1.36"]).contains(&busybox));
}

#[tokio::test(start_paused = true)]
async fn candidates_are_unused_unpinned_and_oldest_use_first() {
    let t0 = Instant::now();
    let mut records = Records::default();
    let mut a_in_use = Container {
        id: "c1".into(),
        pod_sandbox_id: "s1".into(),
        metadata: crate::runtime::ContainerMetadata {
            name: "app".into(),
            attempt: 0,
        },
        image: "registry.test/a:v1".into(),
        image_ref: "sha256:a".into(),
        state: crate::runtime::ContainerState::Running,
        created_at: jiff::Timestamp::UNIX_EPOCH,
        labels: HashMap::new(),
        annotations: HashMap::new(),
    };
    let mut images = vec![
        image("a", MIB, false),
        image("b", MIB, false),
        image("p", MIB, true),
    ];
    let c = records.detect(&images, &InUse::new([&a_in_use], []), t0);
    assert_eq!(ids(&c), ["sha256:b"], "in use and pinned are no candidates");

    // A minute later: c appears, a is no longer used (last used at t0).
    let t1 = t0 + 60 * SECOND;
    images.push(image("c", MIB, false));
    a_in_use.image_ref = "sha256:z".into();
    a_in_use.image = "registry.test/z:v1".into();
    let c = records.detect(&images, &InUse::new([&a_in_use], []), t1);
    // Never used first (b seen before c), then a (last used at t0).
    assert_eq!(ids(&c), ["sha256:b", "sha256:c", "sha256:a"]);
    assert_eq!(c[0].record.first_detected, t0);
    assert_eq!(c[1].record.first_detected, t1);
    assert_eq!(c[2].record.last_used, Some(t0));
    assert_eq!(c[2].unused_since(), t0);
    assert_eq!(c[1].unused_since(), t1);

    // An image that is gone is forgotten; one that comes back is new.
    images.retain(|i| i.id != "sha256:b");
    let t2 = t1 + SECOND;
    records.detect(&images, &InUse::default(), t2);
    assert!(records.get("sha256:b").is_none());
    images.push(image("b", MIB, false));
    records.detect(&images, &InUse::default(), t2);
    assert_eq!(records.get("sha256:b").unwrap().first_detected, t2);
}

#[tokio::test(start_paused = true)]
async fn maximum_and_minimum_ages() {
    let began = Instant::now();
    let policy = GcPolicy::new(85, 80, 120 * SECOND, 300 * SECOND).unwrap();
    let candidate = |id: &str, first: u32, last: Option<u32>| Candidate {
        id: id.into(),
        record: Record {
            first_detected: began + first * SECOND,
            last_used: last.map(|l| began + l * SECOND),
            size: MIB,
            pinned: false,
        },
    };
    let c = [
        candidate("never-used", 0, None),
        candidate("used-long-ago", 0, Some(10)),
        candidate("used-lately", 0, Some(200)),
        candidate("new", 250, None),
    ];
    // Not before the agent has run for the maximum age.
    assert!(expired(&c, &policy, began, began + 300 * SECOND).is_empty());
    assert_eq!(
        ids(&expired(&c, &policy, began, began + 320 * SECOND)),
        ["never-used", "used-long-ago"]
    );
    assert_eq!(
        ids(&expired(&c, &policy, began, began + 551 * SECOND)),
        ["never-used", "used-long-ago", "used-lately", "new"]
    );
    assert!(expired(&c, &GcPolicy::default(), began, began + 10_000 * SECOND).is_empty());
    // The minimum age counts from first detection.
    assert_eq!(
        ids(&old_enough(&c, &policy, began + 300 * SECOND)),
        ["never-used", "used-long-ago", "used-lately"]
    );
    assert_eq!(ids(&old_enough(&c, &policy, began + 370 * SECOND)).len(), 4);
}

/// A fake runtime's image filesystem of `capacity` with `used` bytes used, set by the test.
fn fake_fs(capacity: u64, used: &Arc<AtomicU64>) -> FsStat {
    let used = Arc::clone(used);
    Arc::new(move |path: &Path| -> io::Result<FsUsage> {
        assert_eq!(path, Path::new("/var/lib/fake-runtime/images"));
        Ok(FsUsage {
            capacity,
            available: capacity.saturating_sub(used.load(Ordering::SeqCst)),
        })
    })
}

async fn run_container(rt: &FakeRuntime, uid: &str, image: &str) -> String {
    let sandbox_config = api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: format!("pod-{uid}"),
            uid: uid.to_owned(),
            namespace: "default".to_owned(),
            attempt: 0,
        }),
        labels: HashMap::from([(POD_UID_LABEL.to_owned(), uid.to_owned())]),
        ..Default::default()
    };
    let sandbox = rt.run_pod_sandbox(&sandbox_config, "").await.unwrap();
    let config = api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: "app".to_owned(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: image.to_owned(),
            ..Default::default()
        }),
        labels: HashMap::from([
            (POD_UID_LABEL.to_owned(), uid.to_owned()),
            (CONTAINER_NAME_LABEL.to_owned(), "app".to_owned()),
        ]),
        ..Default::default()
    };
    let id = rt
        .create_container(&sandbox, &config, &sandbox_config)
        .await
        .unwrap();
    rt.start_container(&id).await.unwrap();
    id
}

async fn tags(rt: &FakeRuntime) -> Vec<String> {
    let mut tags: Vec<String> = rt
        .list_images()
        .await
        .unwrap()
        .into_iter()
        .flat_map(|i| i.repo_tags)
        .collect();
    tags.sort();
    tags
}

fn counted(metrics: &ImageGcMetrics, reason: &str) -> u64 {
    metrics.collected.with_label_values(&[reason]).get()
}

#[tokio::test(start_paused = true)]
async fn above_the_high_threshold_unused_images_go_oldest_first_down_to_the_low_one() {
    let rt = FakeRuntime::new();
    let used = Arc::new(AtomicU64::new(0));
    let recorder = Recorder::new("node-a");
    let registry = Registry::new();
    let metrics = ImageGcMetrics::register(&registry).unwrap();
    let gc = ImageGc::new(Arc::new(rt.clone()), GcPolicy::default())
        .with_stat(fake_fs(100 * MIB, &used))
        .with_recorder(recorder.clone(), "node-a")
        .with_metrics(metrics.clone());
    for name in ["old", "older", "running", "wanted"] {
        rt.set_image(&format!("registry.test/{name}:v1"), 10 * MIB, false);
    }
    rt.set_image("registry.test/pinned:v1", 10 * MIB, true);
    let wanted = ["registry.test/wanted:v1".to_owned()];
    // `old` is used by a container at the first pass; `older` never.
    let old_user = run_container(&rt, "u1", "registry.test/old:v1").await;
    run_container(&rt, "u2", "registry.test/running:v1").await;
    used.store(50 * MIB, Ordering::SeqCst);
    assert_eq!(gc.collect(&wanted).await.unwrap(), Freed::default());

    tokio::time::advance(60 * SECOND).await;
    rt.remove_container(&old_user).await.unwrap();
    rt.set_image("registry.test/young:v1", 10 * MIB, false);
    assert_eq!(gc.collect(&wanted).await.unwrap(), Freed::default());

    // Two minutes after the first pass: 86 % used, 6 MiB to free; `older` (never used)
    // goes first and is enough.
    tokio::time::advance(60 * SECOND).await;
    used.store(86 * MIB, Ordering::SeqCst);
    let freed = gc.collect(&wanted).await.unwrap();
    assert_eq!(freed.bytes, 10 * MIB);
    assert_eq!(
        tags(&rt).await,
        [
            "registry.test/old:v1",
            "registry.test/pinned:v1",
            "registry.test/running:v1",
            "registry.test/wanted:v1",
            "registry.test/young:v1",
        ]
    );
    assert_eq!(counted(&metrics, REASON_SPACE), 1);

    // 95 %: 15 MiB to free; `old` goes, `young` is younger than the minimum age, and
    // nothing else may go: FreeDiskSpaceFailed.
    used.store(95 * MIB, Ordering::SeqCst);
    let e = gc.collect(&wanted).await.unwrap_err();
    assert!(
        matches!(
            e,
            ImageGcError::NotEnough {
                wanted,
                freed
            } if wanted == 15 * MIB && freed == 10 * MIB
        ),
        "{e:?}"
    );
    assert_eq!(
        tags(&rt).await,
        [
            "registry.test/pinned:v1",
            "registry.test/running:v1",
            "registry.test/wanted:v1",
            "registry.test/young:v1",
        ]
    );
    let events = recorder.events().list();
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("FreeDiskSpaceFailed"))
        .collect();
    assert_eq!(failed.len(), 1, "{events:?}");
    assert_eq!(
        failed[0].message.as_deref(),
        Some(
            "Failed to garbage collect required amount of images. Attempted to free 15728640 bytes, but only found 10485760 bytes eligible to free."
        )
    );
    assert_eq!(failed[0].type_.as_deref(), Some("Warning"));
    assert_eq!(failed[0].involved_object.kind.as_deref(), Some("Node"));
    assert_eq!(counted(&metrics, REASON_SPACE), 2);
}

#[tokio::test(start_paused = true)]
async fn the_maximum_age_removes_unused_images_whatever_the_usage() {
    let rt = FakeRuntime::new();
    let used = Arc::new(AtomicU64::new(10 * MIB));
    let registry = Registry::new();
    let metrics = ImageGcMetrics::register(&registry).unwrap();
    let policy = GcPolicy::new(85, 80, 60 * SECOND, 180 * SECOND).unwrap();
    let gc = ImageGc::new(Arc::new(rt.clone()), policy)
        .with_stat(fake_fs(100 * MIB, &used))
        .with_metrics(metrics.clone());
    rt.set_image("registry.test/stale:v1", MIB, false);
    rt.set_image("registry.test/running:v1", MIB, false);
    run_container(&rt, "u1", "registry.test/running:v1").await;
    gc.collect(&[]).await.unwrap();
    tokio::time::advance(120 * SECOND).await;
    rt.set_image("registry.test/fresh:v1", MIB, false);
    gc.collect(&[]).await.unwrap();
    tokio::time::advance(61 * SECOND).await;
    // The agent has run 181 s: `stale` (unused since it was first seen) goes; `fresh`
    // (seen 61 s ago) stays, and so does the image in use.
    let freed = gc.collect(&[]).await.unwrap();
    assert_eq!(freed.images.len(), 1);
    assert_eq!(
        tags(&rt).await,
        ["registry.test/fresh:v1", "registry.test/running:v1"]
    );
    assert_eq!(counted(&metrics, REASON_AGE), 1);
    assert_eq!(counted(&metrics, REASON_SPACE), 0);
}

#[tokio::test(start_paused = true)]
async fn delete_unused_removes_every_candidate_past_the_minimum_age_and_reports_failures() {
    let rt = FakeRuntime::new();
    let gc = ImageGc::new(Arc::new(rt.clone()), GcPolicy::default());
    for name in ["a", "b", "c", "wanted"] {
        rt.set_image(&format!("registry.test/{name}:v1"), MIB, false);
    }
    rt.set_image("registry.test/pinned:v1", MIB, true);
    let wanted = ["registry.test/wanted:v1".to_owned()];
    // Nothing is old enough yet.
    let (freed, errors) = gc.delete_unused(&wanted).await;
    assert!(freed.images.is_empty() && errors.is_empty());
    tokio::time::advance(120 * SECOND).await;
    rt.inject_once(Method::RemoveImage, Fault::Error(tonic::Code::Unavailable));
    let (freed, errors) = gc.delete_unused(&wanted).await;
    assert_eq!(freed.images.len(), 2);
    assert_eq!(freed.bytes, 2 * MIB);
    assert_eq!(errors.len(), 1);
    assert!(
        matches!(&errors[0], ImageGcError::Remove { size, .. } if *size == MIB),
        "{errors:?}"
    );
    assert_eq!(tags(&rt).await.len(), 3, "{:?}", tags(&rt).await);
    // The one that failed goes next time.
    let (freed, errors) = gc.delete_unused(&wanted).await;
    assert_eq!((freed.images.len(), errors.len()), (1, 0));
    assert_eq!(
        tags(&rt).await,
        ["registry.test/pinned:v1", "registry.test/wanted:v1"]
    );

    // The runtime not answering is an error, nothing removed.
    rt.inject_once(Method::ListImages, Fault::Error(tonic::Code::Unavailable));
    let (freed, errors) = gc.delete_unused(&[]).await;
    assert!(freed.images.is_empty());
    assert_eq!(
        errors[0].to_string(),
        "runtime call ListImages for image garbage collection"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unmeasurable_image_filesystem_is_an_error() {
    let rt = FakeRuntime::new();
    let zero = Arc::new(AtomicU64::new(0));
    let recorder = Recorder::new("node-a");
    let gc = ImageGc::new(Arc::new(rt.clone()), GcPolicy::default())
        .with_stat(fake_fs(0, &zero))
        .with_recorder(recorder.clone(), "node-a");
    let e = gc.collect(&[]).await.unwrap_err();
    assert!(matches!(e, ImageGcError::ZeroCapacity { .. }), "{e:?}");
    assert!(
        recorder
            .events()
            .list()
            .iter()
            .any(|e| e.reason.as_deref() == Some("InvalidDiskCapacity"))
    );
    let gc = ImageGc::new(Arc::new(rt.clone()), GcPolicy::default()).with_stat(Arc::new(
        |p: &Path| -> io::Result<FsUsage> {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}", p.display()),
            ))
        },
    ));
    let e = gc.collect(&[]).await.unwrap_err();
    assert!(
        e.to_string()
            .starts_with("statvfs /var/lib/fake-runtime/images"),
        "{e}"
    );
}
