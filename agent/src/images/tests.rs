use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::runtime::Method;

/// A registry that takes `delay` per pull, accepts only `password` (when set), and
/// counts pulls and how many ran at once.
#[derive(Default)]
struct Registry {
    delay: Duration,
    password: Option<String>,
    pulls: AtomicUsize,
    running: AtomicUsize,
    most_at_once: AtomicUsize,
    auths: Mutex<Vec<Option<String>>>,
}

impl ImageService for Registry {
    async fn pull_image(
        &self,
        image: &str,
        auth: Option<&api::AuthConfig>,
        _sandbox: Option<&api::PodSandboxConfig>,
    ) -> Result<String, RuntimeError> {
        self.auths
            .lock()
            .unwrap()
            .push(auth.map(|a| a.password.clone()));
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.pulls.fetch_add(1, Ordering::SeqCst);
        match &self.password {
            Some(p) if auth.map(|a| &a.password) != Some(p) => Err(RuntimeError::Call {
                method: Method::PullImage,
                socket: PathBuf::from("/fake"),
                source: tonic::Status::unknown(format!("pull {image}: 401 Unauthorized")),
            }),
            _ => Ok(format!("sha256:{image}")),
        }
    }

    async fn image_size(&self, _image: &str) -> Option<u64> {
        Some(4 * MIB)
    }
}

fn manager(settings: PullSettings) -> (ImageManager, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let m = ImageManager::new(settings, NodeCredentials::default(), &registry).unwrap();
    (m, registry)
}

fn cred(password: &str) -> Credential {
    Credential {
        username: "u".into(),
        password: password.into(),
    }
}

#[test]
fn settings_are_validated_as_upstream() {
    assert_eq!(PullSettings::new(true, None).unwrap().max_parallel, Some(1));
    assert_eq!(
        PullSettings::new(true, Some(1)).unwrap().max_parallel,
        Some(1)
    );
    assert_eq!(PullSettings::new(false, None).unwrap().max_parallel, None);
    assert_eq!(
        PullSettings::new(false, Some(3)).unwrap().max_parallel,
        Some(3)
    );
    let (field, why) = PullSettings::new(true, Some(2)).unwrap_err();
    assert_eq!(field, "maxParallelImagePulls");
    assert!(why.contains("serializeImagePulls is true"), "{why}");
    let (field, why) = PullSettings::new(false, Some(0)).unwrap_err();
    assert_eq!(field, "maxParallelImagePulls");
    assert!(why.contains("positive"), "{why}");
}

#[test]
fn sizes_get_upstreams_labels() {
    assert_eq!(size_bucket(0), "N/A");
    assert_eq!(size_bucket(1), "0-10MB");
    assert_eq!(size_bucket(10 * MIB), "0-10MB");
    assert_eq!(size_bucket(10 * MIB + 1), "10MB-100MB");
    assert_eq!(size_bucket(500 * MIB + 1), "500MB-1GB");
    assert_eq!(size_bucket(15 * GIB), "10GB-20GB");
    assert_eq!(size_bucket(200 * GIB), "GT100GB");
}

#[tokio::test(start_paused = true)]
async fn serialized_pulls_run_one_at_a_time() {
    let (m, _) = manager(PullSettings::default());
    let reg = Registry {
        delay: Duration::from_secs(2),
        ..Registry::default()
    };
    let images = ["a:1", "b:1", "c:1"];
    let results =
        futures::future::join_all(images.iter().map(|i| m.pull(&reg, i, &[], None))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(reg.most_at_once.load(Ordering::SeqCst), 1);
    let waited: Vec<u64> = results
        .iter()
        .map(|r| r.as_ref().unwrap().total.as_secs())
        .collect();
    assert_eq!(waited, [2, 4, 6], "each waits for the ones before it");
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().unwrap().pull == Duration::from_secs(2)),
        "the pull itself excludes the wait"
    );
}

#[tokio::test(start_paused = true)]
async fn parallel_pulls_are_capped_by_max_parallel() {
    for (settings, want) in [
        (PullSettings::new(false, Some(2)).unwrap(), 2),
        (PullSettings::new(false, None).unwrap(), 5),
    ] {
        let (m, _) = manager(settings);
        let reg = Registry {
            delay: Duration::from_secs(1),
            ..Registry::default()
        };
        let images: Vec<String> = (0..5).map(|i| format!("img{i}:1")).collect();
        let results =
            futures::future::join_all(images.iter().map(|i| m.pull(&reg, i, &[], None))).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(
            reg.most_at_once.load(Ordering::SeqCst),
            want,
            "{settings:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn overlapping_pulls_of_one_image_share_one_call_unless_credentials_differ() {
    let (m, _) = manager(PullSettings::new(false, None).unwrap());
    let reg = Registry {
        delay: Duration::from_secs(1),
        ..Registry::default()
    };
    let same = [cred("x")];
    let other = [cred("y")];
    let (a, b, c) = tokio::join!(
        m.pull(&reg, "app:1", &same, None),
        m.pull(&reg, "app:1", &same, None),
        m.pull(&reg, "app:1", &other, None),
    );
    assert_eq!(a.unwrap().image_ref, "sha256:app:1");
    assert_eq!(b.unwrap().image_ref, "sha256:app:1");
    assert!(c.is_ok());
    assert_eq!(
        reg.pulls.load(Ordering::SeqCst),
        2,
        "the two with the same credentials shared a pull"
    );
    // Once done, the next pull is a new one (Always pulls again).
    m.pull(&reg, "app:1", &same, None).await.unwrap();
    assert_eq!(reg.pulls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn each_credential_is_tried_until_one_works() {
    let (m, _) = manager(PullSettings::default());
    let reg = Registry {
        password: Some("good".into()),
        ..Registry::default()
    };
    m.pull(
        &reg,
        "app:1",
        &[cred("bad"), cred("good"), cred("never")],
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        *reg.auths.lock().unwrap(),
        [Some("bad".to_owned()), Some("good".to_owned())]
    );

    let e = m.pull(&reg, "app:1", &[], None).await.unwrap_err();
    assert!(matches!(e, PullError::Runtime { .. }), "{e:?}");
    assert!(
        e.runtime_error().unwrap().to_string().contains("PullImage")
            || crate::error::error_chain(&e).contains("401"),
        "{e}: {}",
        crate::error::error_chain(&e)
    );
    let e = m
        .pull(&reg, "app:1", &[cred("a"), cred("b")], None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, PullError::EveryCredential { tried: 2, .. }),
        "{e:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_pull_is_observed_by_size_bucket() {
    let (m, registry) = manager(PullSettings::default());
    let reg = Registry {
        delay: Duration::from_secs(3),
        ..Registry::default()
    };
    m.pull(&reg, "app:1", &[], None).await.unwrap();
    let families = registry.gather();
    let family = families
        .iter()
        .find(|f| f.name() == "kubelet_image_pull_duration_seconds")
        .expect("registered");
    let metric = &family.get_metric()[0];
    assert_eq!(metric.get_label()[0].name(), "image_size_in_bytes");
    assert_eq!(metric.get_label()[0].value(), "0-10MB");
    let h = metric.get_histogram();
    assert_eq!(h.get_sample_count(), 1);
    assert!((h.get_sample_sum() - 3.0).abs() < 1e-6);
}
