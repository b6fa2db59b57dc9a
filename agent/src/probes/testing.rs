//! Test helpers shared by the probe tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::runtime::{ContainerRuntime as _, FakeRuntime, api};

/// Creates and starts a container named `name` in a new sandbox of pod `uid` on the fake
/// runtime; returns its id.
pub async fn start_container(rt: &FakeRuntime, uid: &str, name: &str) -> String {
    // Sandbox names must be unique per runtime.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    rt.add_image("busybox");
    let sandbox_config = api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: format!("pod-{uid}-{name}-{n}"),
            uid: uid.to_owned(),
            namespace: "default".to_owned(),
            attempt: 0,
        }),
        labels: HashMap::new(),
        ..Default::default()
    };
    let sandbox = rt.run_pod_sandbox(&sandbox_config, "").await.unwrap();
    let config = api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.to_owned(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: "busybox".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = rt
        .create_container(&sandbox, &config, &sandbox_config)
        .await
        .unwrap();
    rt.start_container(&id).await.unwrap();
    id
}

/// A fake runtime with one running container; returns (runtime, container id).
pub async fn running_container() -> (FakeRuntime, String) {
    let rt = FakeRuntime::default();
    let id = start_container(&rt, "uid-1", "app").await;
    (rt, id)
}
