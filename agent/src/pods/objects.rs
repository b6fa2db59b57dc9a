//! What a pod may read from the API server: configMaps and secrets, behind [`PodObjects`].
//!
//! Cluster mode implements it (`cluster::objects`: one watch per object a registered pod
//! refers to, as upstream's `configMapAndSecretChangeDetectionStrategy: Watch`); standalone
//! mode has none, and every field that needs it is refused by name. This module is the core
//! side: the trait, which objects a pod refers to ([`referenced_objects`]), the registration
//! a worker holds while its pod lives ([`PodRegistration`]), and the objects one container's
//! environment needs, read before its config is built ([`EnvObjects`]), so that building the
//! config stays pure.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvFromSource, EnvVar, Pod, Secret};

/// The kinds of object a pod reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    ConfigMap,
    Secret,
}

impl ObjectKind {
    /// The kind as the API names it (`ConfigMap`), as upstream writes it in "couldn't find
    /// key" messages.
    #[must_use]
    pub fn api_name(self) -> &'static str {
        match self {
            Self::ConfigMap => "ConfigMap",
            Self::Secret => "Secret",
        }
    }
}

/// Lower case (`configmap`), as upstream's not-found messages name it.
impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ConfigMap => "configmap",
            Self::Secret => "secret",
        })
    }
}

/// One object: kind, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    #[must_use]
    pub fn new(kind: ObjectKind, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// The cause of a failed read, from the layer that read (the API client).
pub type ObjectSource = Arc<dyn std::error::Error + Send + Sync>;

/// Why an object could not be read. A missing object is not an error (`Ok(None)`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ObjectError {
    #[error("couldn't get {kind} {namespace}/{name} from the API server")]
    Get {
        kind: ObjectKind,
        namespace: String,
        name: String,
        #[source]
        source: ObjectSource,
    },
    #[error(
        "couldn't get {kind} {namespace}/{name}: the API server did not answer within {after:?}"
    )]
    Timeout {
        kind: ObjectKind,
        namespace: String,
        name: String,
        after: Duration,
    },
}

/// What a pod may read from the API server. Standalone mode has none: the worker context
/// holds `Option<Arc<dyn PodObjects>>`, and every field that needs it is refused by name
/// when `None`.
pub trait PodObjects: Send + Sync {
    /// `Ok(None)`: the object does not exist (the caller decides with `optional`).
    fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> BoxFuture<'static, Result<Option<Arc<ConfigMap>>, ObjectError>>;
    fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> BoxFuture<'static, Result<Option<Arc<Secret>>, ObjectError>>;
    /// The pod now refers to these objects / no longer does (for watches); may be no-ops.
    fn register_pod(&self, pod: &Pod);
    fn unregister_pod(&self, pod: &Pod);
}

/// Every configMap and secret `pod` refers to, as upstream's kubelet registers them: its
/// `imagePullSecrets`, the `env` (`configMapKeyRef`, `secretKeyRef`) and `envFrom` of every
/// container (init and ephemeral ones included), and its `configMap`, `secret` and
/// `projected` volumes. Empty names are left out.
#[must_use]
pub fn referenced_objects(pod: &Pod) -> BTreeSet<ObjectKey> {
    let mut out = BTreeSet::new();
    let Some(spec) = pod.spec.as_ref() else {
        return out;
    };
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let mut add = |kind, name: &str| {
        if !name.is_empty() {
            out.insert(ObjectKey::new(kind, namespace, name));
        }
    };
    for secret in spec.image_pull_secrets.iter().flatten() {
        add(ObjectKind::Secret, &secret.name);
    }
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(|c| env_references(c.env.as_deref(), c.env_from.as_deref()));
    let ephemeral = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|c| env_references(c.env.as_deref(), c.env_from.as_deref()));
    for (kind, name) in containers.chain(ephemeral).flatten() {
        add(kind, name);
    }
    for volume in spec.volumes.iter().flatten() {
        if let Some(cm) = &volume.config_map {
            add(ObjectKind::ConfigMap, &cm.name);
        }
        if let Some(s) = &volume.secret {
            add(
                ObjectKind::Secret,
                s.secret_name.as_deref().unwrap_or_default(),
            );
        }
        for source in volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
        {
            if let Some(cm) = &source.config_map {
                add(ObjectKind::ConfigMap, &cm.name);
            }
            if let Some(s) = &source.secret {
                add(ObjectKind::Secret, &s.name);
            }
        }
    }
    out
}

/// The configMaps and secrets a container's environment names, each once, in spec order
/// (`envFrom`, then `env`); empty names left out.
fn env_references<'a>(
    env: Option<&'a [EnvVar]>,
    env_from: Option<&'a [EnvFromSource]>,
) -> Vec<(ObjectKind, &'a str)> {
    let from_env_from = env_from.unwrap_or_default().iter().flat_map(|from| {
        [
            from.config_map_ref
                .as_ref()
                .map(|r| (ObjectKind::ConfigMap, r.name.as_str())),
            from.secret_ref
                .as_ref()
                .map(|r| (ObjectKind::Secret, r.name.as_str())),
        ]
    });
    let from_env = env
        .unwrap_or_default()
        .iter()
        .filter_map(|var| var.value_from.as_ref())
        .flat_map(|from| {
            [
                from.config_map_key_ref
                    .as_ref()
                    .map(|r| (ObjectKind::ConfigMap, r.name.as_str())),
                from.secret_key_ref
                    .as_ref()
                    .map(|r| (ObjectKind::Secret, r.name.as_str())),
            ]
        });
    let mut out: Vec<(ObjectKind, &str)> = Vec::new();
    for (kind, name) in from_env_from.chain(from_env).flatten() {
        if !name.is_empty() && !out.contains(&(kind, name)) {
            out.push((kind, name));
        }
    }
    out
}

/// A pod's registration with a [`PodObjects`], held by its worker: registered when made,
/// again when the pod's spec changes ([`Self::update`]), unregistered when dropped (the
/// worker ends once the pod is gone).
pub struct PodRegistration {
    objects: Arc<dyn PodObjects>,
    pod: Arc<Pod>,
}

impl PodRegistration {
    #[must_use]
    pub fn new(objects: Arc<dyn PodObjects>, pod: Arc<Pod>) -> Self {
        objects.register_pod(&pod);
        Self { objects, pod }
    }

    /// Registers `pod` again when it is another version than the one registered.
    pub fn update(&mut self, pod: &Arc<Pod>) {
        if !Arc::ptr_eq(&self.pod, pod) && *self.pod != **pod {
            self.objects.register_pod(pod);
        }
        self.pod = Arc::clone(pod);
    }
}

impl Drop for PodRegistration {
    fn drop(&mut self) {
        self.objects.unregister_pod(&self.pod);
    }
}

impl fmt::Debug for PodRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodRegistration")
            .field("pod", &crate::model::format_pod(&self.pod))
            .finish_non_exhaustive()
    }
}

/// The objects one container's environment names, as read just before its config is built:
/// `None` for one that does not exist.
#[derive(Debug, Clone, Default)]
pub struct EnvObjects {
    pub config_maps: BTreeMap<String, Option<Arc<ConfigMap>>>,
    pub secrets: BTreeMap<String, Option<Arc<Secret>>>,
}

impl EnvObjects {
    /// Reads every configMap and secret `container`'s `env` and `envFrom` name, in
    /// `namespace`, each once.
    ///
    /// # Errors
    /// The first object that could not be read (a missing one is not an error).
    pub async fn fetch(
        objects: &dyn PodObjects,
        namespace: &str,
        container: &Container,
    ) -> Result<Self, ObjectError> {
        let mut out = Self::default();
        for (kind, name) in env_references(container.env.as_deref(), container.env_from.as_deref())
        {
            match kind {
                ObjectKind::ConfigMap => {
                    let cm = objects.config_map(namespace, name).await?;
                    out.config_maps.insert(name.to_owned(), cm);
                }
                ObjectKind::Secret => {
                    let s = objects.secret(namespace, name).await?;
                    out.secrets.insert(name.to_owned(), s);
                }
            }
        }
        Ok(out)
    }
}

/// configMaps and secrets held in memory (keyed `<namespace>/<name>`), as an API server would
/// serve them, recording which pods registered: for unit tests.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct FakeObjects {
    pub(crate) config_maps: std::sync::Mutex<BTreeMap<String, ConfigMap>>,
    pub(crate) secrets: std::sync::Mutex<BTreeMap<String, Secret>>,
    pub(crate) registrations: std::sync::Mutex<Vec<String>>,
}

#[cfg(test)]
impl PodObjects for FakeObjects {
    fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> BoxFuture<'static, Result<Option<Arc<ConfigMap>>, ObjectError>> {
        let found = self
            .config_maps
            .lock()
            .expect("lock")
            .get(&format!("{namespace}/{name}"))
            .cloned()
            .map(Arc::new);
        Box::pin(async move { Ok(found) })
    }

    fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> BoxFuture<'static, Result<Option<Arc<Secret>>, ObjectError>> {
        let found = self
            .secrets
            .lock()
            .expect("lock")
            .get(&format!("{namespace}/{name}"))
            .cloned()
            .map(Arc::new);
        Box::pin(async move { Ok(found) })
    }

    fn register_pod(&self, pod: &Pod) {
        let names: Vec<String> = referenced_objects(pod)
            .iter()
            .map(ToString::to_string)
            .collect();
        self.registrations
            .lock()
            .expect("lock")
            .push(format!("register {}", names.join(",")));
    }

    fn unregister_pod(&self, pod: &Pod) {
        self.registrations
            .lock()
            .expect("lock")
            .push(format!("unregister {}", crate::model::pod_uid(pod)));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[expect(clippy::needless_pass_by_value)] // json! values are built for the call
    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": spec,
        }))
        .expect("pod")
    }

    fn keys(pod: &Pod) -> Vec<String> {
        referenced_objects(pod)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_pod_refers_to_its_pull_secrets_env_sources_and_volumes() {
        let p = pod(serde_json::json!({
            "imagePullSecrets": [{"name": "pull"}, {"name": ""}],
            "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init-s"}}]}],
            "containers": [{
                "name": "c",
                "envFrom": [{"configMapRef": {"name": "all"}, "prefix": "P_"}],
                "env": [
                    {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "a"}}},
                    {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "b"}}},
                    {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "c"}}},
                    {"name": "D", "value": "plain"},
                ],
            }],
            "ephemeralContainers": [{"name": "e", "envFrom": [{"configMapRef": {"name": "eph"}}]}],
            "volumes": [
                {"name": "v1", "configMap": {"name": "vol-cm"}},
                {"name": "v2", "secret": {"secretName": "vol-s"}},
                {"name": "v3", "projected": {"sources": [
                    {"configMap": {"name": "kube-root-ca.crt"}},
                    {"secret": {"name": "proj-s"}},
                    {"serviceAccountToken": {"path": "token"}},
                ]}},
                {"name": "v4", "emptyDir": {}},
            ],
        }));
        assert_eq!(
            keys(&p),
            [
                "configmap ns/all",
                "configmap ns/cm",
                "configmap ns/eph",
                "configmap ns/kube-root-ca.crt",
                "configmap ns/vol-cm",
                "secret ns/init-s",
                "secret ns/proj-s",
                "secret ns/pull",
                "secret ns/s",
                "secret ns/vol-s",
            ]
        );
        assert!(keys(&pod(serde_json::json!({"containers": [{"name": "c"}]}))).is_empty());
    }

    /// Records registrations; answers reads from maps and counts them.
    #[derive(Default)]
    struct Recording {
        calls: Mutex<Vec<String>>,
        config_maps: BTreeMap<String, ConfigMap>,
    }

    impl PodObjects for Recording {
        fn config_map(
            &self,
            namespace: &str,
            name: &str,
        ) -> BoxFuture<'static, Result<Option<Arc<ConfigMap>>, ObjectError>> {
            self.calls
                .lock()
                .expect("lock")
                .push(format!("get configmap {namespace}/{name}"));
            let found = self.config_maps.get(name).cloned().map(Arc::new);
            Box::pin(async move { Ok(found) })
        }

        fn secret(
            &self,
            namespace: &str,
            name: &str,
        ) -> BoxFuture<'static, Result<Option<Arc<Secret>>, ObjectError>> {
            self.calls
                .lock()
                .expect("lock")
                .push(format!("get secret {namespace}/{name}"));
            let (namespace, name) = (namespace.to_owned(), name.to_owned());
            Box::pin(async move {
                Err(ObjectError::Timeout {
                    kind: ObjectKind::Secret,
                    namespace,
                    name,
                    after: Duration::from_secs(1),
                })
            })
        }

        fn register_pod(&self, pod: &Pod) {
            let image = pod.spec.as_ref().expect("spec").containers[0].image.clone();
            self.calls
                .lock()
                .expect("lock")
                .push(format!("register {}", image.unwrap_or_default()));
        }

        fn unregister_pod(&self, pod: &Pod) {
            let image = pod.spec.as_ref().expect("spec").containers[0].image.clone();
            self.calls
                .lock()
                .expect("lock")
                .push(format!("unregister {}", image.unwrap_or_default()));
        }
    }

    #[test]
    fn a_registration_follows_the_pods_versions_and_ends_with_it() {
        let objects = Arc::new(Recording::default());
        let v1 = Arc::new(pod(
            serde_json::json!({"containers": [{"name": "c", "image": "v1"}]}),
        ));
        let mut registration =
            PodRegistration::new(Arc::clone(&objects) as Arc<dyn PodObjects>, Arc::clone(&v1));
        registration.update(&v1);
        registration.update(&Arc::new((*v1).clone()));
        let v2 = Arc::new(pod(
            serde_json::json!({"containers": [{"name": "c", "image": "v2"}]}),
        ));
        registration.update(&v2);
        drop(registration);
        assert_eq!(
            *objects.calls.lock().expect("lock"),
            ["register v1", "register v2", "unregister v2"],
            "the same pod again (or an equal copy) is not registered twice"
        );
    }

    #[tokio::test]
    async fn a_containers_env_objects_are_read_once_each_and_a_failed_read_fails() {
        let mut objects = Recording::default();
        objects
            .config_maps
            .insert("cm".to_owned(), ConfigMap::default());
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "envFrom": [{"configMapRef": {"name": "cm"}}],
            "env": [
                {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "a"}}},
                {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "b"}}},
            ],
        }))
        .expect("container");
        let env = EnvObjects::fetch(&objects, "ns", &c).await.expect("read");
        assert!(env.config_maps["cm"].is_some());
        assert!(env.config_maps["gone"].is_none(), "missing is not an error");
        assert_eq!(
            *objects.calls.lock().expect("lock"),
            ["get configmap ns/cm", "get configmap ns/gone"]
        );
        let with_secret: Container = serde_json::from_value(serde_json::json!({
            "name": "c",
            "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        }))
        .expect("container");
        let e = EnvObjects::fetch(&objects, "ns", &with_secret)
            .await
            .expect_err("the read failed");
        assert_eq!(
            e.to_string(),
            "couldn't get secret ns/s: the API server did not answer within 1s"
        );
    }
}
