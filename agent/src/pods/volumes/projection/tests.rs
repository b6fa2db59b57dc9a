use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    Container, DownwardAPIProjection, ObjectFieldSelector, PodSpec, ResourceFieldSelector,
    ResourceRequirements, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;

fn config_map_object(name: &str, data: &[(&str, &str)]) -> Arc<ConfigMap> {
    Arc::new(ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        binary_data: Some([("bin".to_owned(), ByteString(vec![0, 1, 2]))].into()),
        ..ConfigMap::default()
    })
}

fn api_with(cms: &[(&str, Option<Arc<ConfigMap>>)]) -> ApiData {
    ApiData {
        config_maps: cms
            .iter()
            .map(|(n, c)| ((*n).to_owned(), c.clone()))
            .collect(),
        ..ApiData::default()
    }
}

fn item(key: &str, path: &str, mode: Option<i32>) -> KeyToPath {
    KeyToPath {
        key: key.to_owned(),
        path: path.to_owned(),
        mode,
    }
}

fn files(p: &Payload) -> Vec<(String, String, u32)> {
    p.iter()
        .map(|(k, f)| {
            (
                k.clone(),
                String::from_utf8_lossy(&f.data).into_owned(),
                f.mode,
            )
        })
        .collect()
}

fn owned(v: &[(&str, &str, u32)]) -> Vec<(String, String, u32)> {
    v.iter()
        .map(|(a, b, m)| ((*a).to_owned(), (*b).to_owned(), *m))
        .collect()
}

#[test]
fn a_config_map_is_every_key_or_its_items_with_their_modes() {
    let api = api_with(&[(
        "cfg",
        Some(config_map_object("cfg", &[("a", "1"), ("b", "2")])),
    )]);
    let all = config_map(
        &ConfigMapVolumeSource {
            name: "cfg".to_owned(),
            ..ConfigMapVolumeSource::default()
        },
        &api,
    )
    .expect("every key");
    assert_eq!(
        files(&all),
        owned(&[
            ("a", "1", 0o644),
            ("b", "2", 0o644),
            ("bin", "\u{0}\u{1}\u{2}", 0o644)
        ])
    );
    let some = config_map(
        &ConfigMapVolumeSource {
            name: "cfg".to_owned(),
            default_mode: Some(0o600),
            items: Some(vec![
                item("a", "conf/a.txt", None),
                item("bin", "b", Some(0o400)),
            ]),
            ..ConfigMapVolumeSource::default()
        },
        &api,
    )
    .expect("items");
    assert_eq!(
        files(&some),
        owned(&[("b", "\u{0}\u{1}\u{2}", 0o400), ("conf/a.txt", "1", 0o600)])
    );
}

#[test]
fn missing_config_maps_and_keys_fail_the_mount_unless_optional() {
    let api = api_with(&[
        ("cfg", Some(config_map_object("cfg", &[("a", "1")]))),
        ("gone", None),
    ]);
    let src =
        |name: &str, items: Option<Vec<KeyToPath>>, optional: Option<bool>| ConfigMapVolumeSource {
            name: name.to_owned(),
            items,
            optional,
            ..ConfigMapVolumeSource::default()
        };
    assert_eq!(
        config_map(&src("gone", None, None), &api).expect_err("missing"),
        "configmap \"gone\" not found"
    );
    assert!(
        config_map(&src("gone", None, Some(true)), &api)
            .expect("optional")
            .is_empty()
    );
    let missing_key = Some(vec![item("a", "a", None), item("zz", "zz", None)]);
    assert_eq!(
        config_map(&src("cfg", missing_key.clone(), None), &api).expect_err("key"),
        "configmap references non-existent config key: zz"
    );
    assert_eq!(
        files(&config_map(&src("cfg", missing_key, Some(true)), &api).expect("optional key")),
        owned(&[("a", "1", 0o644)])
    );
    let bad_mode = ConfigMapVolumeSource {
        default_mode: Some(0o1777),
        ..src("cfg", None, None)
    };
    assert!(config_map(&bad_mode, &api).is_err());
}

#[test]
fn a_secret_is_its_decoded_data() {
    let api = ApiData {
        secrets: [(
            "creds".to_owned(),
            Some(Arc::new(Secret {
                data: Some([("password".to_owned(), ByteString(b"hunter2".to_vec()))].into()),
                ..Secret::default()
            })),
        )]
        .into(),
        ..ApiData::default()
    };
    let src = SecretVolumeSource {
        secret_name: Some("creds".to_owned()),
        default_mode: Some(0o400),
        ..SecretVolumeSource::default()
    };
    assert_eq!(
        files(&secret(&src, &api).expect("secret")),
        owned(&[("password", "hunter2", 0o400)])
    );
    let missing = SecretVolumeSource {
        secret_name: Some("nope".to_owned()),
        ..SecretVolumeSource::default()
    };
    assert_eq!(
        secret(&missing, &api).expect_err("missing"),
        "secret \"nope\" not found"
    );
    let key = SecretVolumeSource {
        items: Some(vec![item("user", "user", None)]),
        ..src
    };
    assert_eq!(
        secret(&key, &api).expect_err("missing key"),
        "references non-existent secret key: user"
    );
}

fn pod() -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("web".to_owned()),
            namespace: Some("prod".to_owned()),
            uid: Some("u-1".to_owned()),
            labels: Some(
                [("tier", "front"), ("app", "web")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            ),
            annotations: Some([("note".to_owned(), "say \"hi\"".to_owned())].into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![
                Container {
                    name: "app".to_owned(),
                    resources: Some(ResourceRequirements {
                        limits: Some([("memory".to_owned(), Quantity("64Mi".to_owned()))].into()),
                        requests: Some([("cpu".to_owned(), Quantity("250m".to_owned()))].into()),
                        ..ResourceRequirements::default()
                    }),
                    ..Container::default()
                },
                Container {
                    name: "free".to_owned(),
                    ..Container::default()
                },
            ],
            ..PodSpec::default()
        }),
        status: None,
    }
}

fn field(path: &str, field_path: &str) -> DownwardAPIVolumeFile {
    DownwardAPIVolumeFile {
        path: path.to_owned(),
        field_ref: Some(ObjectFieldSelector {
            field_path: field_path.to_owned(),
            api_version: None,
        }),
        ..DownwardAPIVolumeFile::default()
    }
}

fn resource(
    path: &str,
    container: &str,
    resource: &str,
    divisor: Option<&str>,
) -> DownwardAPIVolumeFile {
    DownwardAPIVolumeFile {
        path: path.to_owned(),
        resource_field_ref: Some(ResourceFieldSelector {
            container_name: Some(container.to_owned()),
            resource: resource.to_owned(),
            divisor: divisor.map(|d| Quantity(d.to_owned())),
        }),
        mode: Some(0o400),
        ..DownwardAPIVolumeFile::default()
    }
}

#[test]
fn downward_api_files_are_metadata_and_resources_as_upstream_writes_them() {
    let allocatable = Allocatable {
        cpu_millis: 2000,
        memory_bytes: 8 << 30,
        ephemeral_storage_bytes: 0,
    };
    let items = [
        field("labels", "metadata.labels"),
        field("annotations", "metadata.annotations"),
        field("name", "metadata.name"),
        field("ns", "metadata.namespace"),
        field("uid", "metadata.uid"),
        field("tier", "metadata.labels['tier']"),
        resource("mem", "app", "limits.memory", Some("1Mi")),
        resource("cpu", "app", "requests.cpu", Some("1m")),
        resource("free-mem", "free", "limits.memory", None),
    ];
    let out = downward_api(&items, 0o644, &pod(), &allocatable).expect("downward");
    assert_eq!(
        files(&out),
        owned(&[
            ("annotations", "note=\"say \\\"hi\\\"\"", 0o644),
            ("cpu", "250", 0o400),
            ("free-mem", "8589934592", 0o400),
            ("labels", "app=\"web\"\ntier=\"front\"", 0o644),
            ("mem", "64", 0o400),
            ("name", "web", 0o644),
            ("ns", "prod", 0o644),
            ("tier", "front", 0o644),
            ("uid", "u-1", 0o644),
        ])
    );
    // Env-only paths are not volume paths, and a volume's resourceFieldRef names its container.
    let err = downward_api(&[field("ip", "status.podIP")], 0o644, &pod(), &allocatable)
        .expect_err("podIP");
    assert!(
        err.starts_with("items \"ip\": fieldRef \"status.podIP\" is not supported"),
        "{err}"
    );
    let mut anonymous = resource("m", "app", "limits.memory", None);
    if let Some(r) = anonymous.resource_field_ref.as_mut() {
        r.container_name = None;
    }
    assert!(downward_api(&[anonymous], 0o644, &pod(), &allocatable).is_err());
}

#[test]
fn projected_sources_merge_with_the_default_mode_and_errors_add_up() {
    let key = TokenKey {
        audience: String::new(),
        expiration_seconds: 3607,
    };
    let api = ApiData {
        config_maps: [(
            "kube-root-ca.crt".to_owned(),
            Some(config_map_object("kube-root-ca.crt", &[("ca.crt", "PEM")])),
        )]
        .into(),
        tokens: [(key.clone(), "jwt".to_owned())].into(),
        ..ApiData::default()
    };
    // The ServiceAccount admission plugin's kube-api-access volume.
    let access = ProjectedVolumeSource {
        default_mode: Some(0o644),
        sources: Some(vec![
            VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: None,
                    expiration_seconds: Some(3607),
                    path: "token".to_owned(),
                }),
                ..VolumeProjection::default()
            },
            VolumeProjection {
                config_map: Some(ConfigMapProjection {
                    name: "kube-root-ca.crt".to_owned(),
                    items: Some(vec![item("ca.crt", "ca.crt", None)]),
                    optional: None,
                }),
                ..VolumeProjection::default()
            },
            VolumeProjection {
                downward_api: Some(DownwardAPIProjection {
                    items: Some(vec![field("namespace", "metadata.namespace")]),
                }),
                ..VolumeProjection::default()
            },
        ]),
    };
    let out = projected(&access, &pod(), &api, &Allocatable::default()).expect("projected");
    assert_eq!(
        files(&out),
        owned(&[
            ("ca.crt", "PEM", 0o644),
            ("namespace", "prod", 0o644),
            ("token", "jwt", 0o644)
        ])
    );

    let broken = ProjectedVolumeSource {
        default_mode: None,
        sources: Some(vec![
            VolumeProjection {
                secret: Some(SecretProjection {
                    name: "nope".to_owned(),
                    items: None,
                    optional: None,
                }),
                ..VolumeProjection::default()
            },
            VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some("vault".to_owned()),
                    expiration_seconds: None,
                    path: "vault-token".to_owned(),
                }),
                ..VolumeProjection::default()
            },
        ]),
    };
    assert_eq!(
        projected(&broken, &pod(), &api, &Allocatable::default()).expect_err("two errors"),
        "[secret \"nope\" not found, failed to fetch token: no token was requested]"
    );
}
