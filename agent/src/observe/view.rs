//! The runtime as the observer sees it: [`RuntimeView`], list and status calls only.

use crate::runtime::{self, Container, ContainerRuntime, PodSandbox, VersionInfo};

/// A container runtime reduced to what an observer may ask: its version and the list of
/// sandboxes and containers. The runtime client inside is private and the view offers no
/// method that creates, starts, stops, removes or changes anything, so code that holds a
/// `RuntimeView` (the whole observer) cannot disturb another client's pods:
///
/// ```
/// # async fn observe(view: bpflet::observe::RuntimeView<bpflet::runtime::CriRuntime>) {
/// let _ = view.list_pod_sandboxes().await;
/// let _ = view.list_containers().await;
/// # }
/// ```
///
/// ```compile_fail
/// # async fn observe(view: bpflet::observe::RuntimeView<bpflet::runtime::CriRuntime>) {
/// use bpflet::runtime::ContainerRuntime as _;
/// let _ = view.stop_pod_sandbox("id").await; // no such method: the view cannot stop
/// # }
/// ```
///
/// ```compile_fail
/// # fn unwrap(view: bpflet::observe::RuntimeView<bpflet::runtime::CriRuntime>) {
/// let _runtime = view.inner; // private: the full client cannot be taken back out
/// # }
/// ```
#[derive(Debug)]
pub struct RuntimeView<R> {
    inner: R,
}

impl<R: ContainerRuntime> RuntimeView<R> {
    /// The view of `runtime`; the runtime itself is not reachable through it.
    pub fn new(runtime: R) -> Self {
        Self { inner: runtime }
    }

    /// CRI `Version`.
    ///
    /// # Errors
    /// The runtime's.
    pub async fn version(&self) -> runtime::Result<VersionInfo> {
        self.inner.version().await
    }

    /// CRI `ListPodSandbox`, every sandbox of every client.
    ///
    /// # Errors
    /// The runtime's.
    pub async fn list_pod_sandboxes(&self) -> runtime::Result<Vec<PodSandbox>> {
        self.inner.list_pod_sandboxes(None).await
    }

    /// CRI `ListContainers`, every container of every client.
    ///
    /// # Errors
    /// The runtime's.
    pub async fn list_containers(&self) -> runtime::Result<Vec<Container>> {
        self.inner.list_containers(None).await
    }
}
