use std::os::unix::fs::PermissionsExt as _;

use super::*;

fn file(data: &str, mode: u32) -> FileProjection {
    FileProjection {
        data: data.as_bytes().to_vec(),
        mode,
    }
}

fn payload(files: &[(&str, &str, u32)]) -> Payload {
    files
        .iter()
        .map(|(p, d, m)| ((*p).to_owned(), file(d, *m)))
        .collect()
}

fn data_target(dir: &Path) -> String {
    fs::read_link(dir.join(DATA_DIR))
        .expect("..data is a link")
        .to_string_lossy()
        .into_owned()
}

fn payload_dirs(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("..") && n != DATA_DIR)
        .collect();
    out.sort();
    out
}

#[test]
fn a_payload_is_linked_through_data_and_swapped_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = payload(&[
        ("a", "1", 0o644),
        ("b", "1", 0o644),
        ("conf/app.yaml", "x: 1", 0o644),
    ]);
    assert!(write(dir.path(), &v1).expect("first write"));
    let first = data_target(dir.path());
    assert_eq!(payload_dirs(dir.path()), std::slice::from_ref(&first));
    for (name, dest) in [
        ("a", "..data/a"),
        ("b", "..data/b"),
        ("conf", "..data/conf"),
    ] {
        let link = fs::read_link(dir.path().join(name)).expect("user-visible link");
        assert_eq!(link, Path::new(dest), "{name}");
    }
    assert_eq!(
        fs::read_to_string(dir.path().join("conf/app.yaml")).unwrap(),
        "x: 1"
    );

    // A reader holding the old directory keeps a whole old set until the swap removes it.
    let v2 = payload(&[
        ("a", "2", 0o644),
        ("c", "2", 0o644),
        ("conf/app.yaml", "x: 2", 0o644),
    ]);
    assert!(write(dir.path(), &v2).expect("second write"));
    let second = data_target(dir.path());
    assert_ne!(first, second, "a fresh payload directory");
    assert_eq!(payload_dirs(dir.path()), [second], "the old one is removed");
    assert_eq!(fs::read_to_string(dir.path().join("a")).unwrap(), "2");
    assert_eq!(fs::read_to_string(dir.path().join("c")).unwrap(), "2");
    assert_eq!(
        fs::read_to_string(dir.path().join("conf/app.yaml")).unwrap(),
        "x: 2"
    );
    assert!(
        fs::symlink_metadata(dir.path().join("b")).is_err(),
        "the link of a key gone is removed"
    );
    assert!(fs::symlink_metadata(dir.path().join(DATA_TMP)).is_err());
}

#[test]
fn nothing_is_written_when_nothing_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = payload(&[("a", "1", 0o644), ("sub/b", "1", 0o600)]);
    assert!(write(dir.path(), &v1).expect("first write"));
    let first = data_target(dir.path());
    assert!(!write(dir.path(), &v1).expect("same payload"), "no write");
    assert_eq!(data_target(dir.path()), first);
    // A changed mode alone is a change.
    let v2 = payload(&[("a", "1", 0o640), ("sub/b", "1", 0o600)]);
    assert!(write(dir.path(), &v2).expect("new mode"));
    assert_ne!(data_target(dir.path()), first);
    // So is a key gone.
    let v3 = payload(&[("a", "1", 0o640)]);
    assert!(write(dir.path(), &v3).expect("key gone"));
    assert!(fs::symlink_metadata(dir.path().join("sub")).is_err());
    // An empty payload empties the volume.
    assert!(write(dir.path(), &Payload::new()).expect("empty"));
    assert!(fs::symlink_metadata(dir.path().join("a")).is_err());
    assert!(!write(dir.path(), &Payload::new()).expect("empty again"));
}

#[test]
fn paths_that_leave_the_volume_or_hide_in_its_names_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    for bad in [
        "../x",
        "/etc/passwd",
        "a/../../x",
        "a/../b",
        "..data",
        "..x",
        "",
        ".",
        "a/..",
    ] {
        let err = write(dir.path(), &payload(&[(bad, "x", 0o644)])).expect_err(bad);
        assert!(
            matches!(err, AtomicError::InvalidPath { ref path, .. } if path == bad),
            "{bad}: {err}"
        );
    }
    let long = "a".repeat(256);
    assert!(write(dir.path(), &payload(&[(&long, "x", 0o644)])).is_err());
    assert!(matches!(
        write(
            dir.path(),
            &payload(&[("a", "x", 0o644), ("a/b", "y", 0o644)])
        ),
        Err(AtomicError::Conflict { .. })
    ));
    assert!(matches!(
        write(dir.path(), &payload(&[("a", "x", 0o1777)])),
        Err(AtomicError::InvalidMode { .. })
    ));
    assert!(
        fs::read_dir(dir.path()).unwrap().next().is_none(),
        "nothing written for a refused payload"
    );
    // `./a` and `a//b` are the plain paths they name.
    assert!(
        write(
            dir.path(),
            &payload(&[("./a", "x", 0o644), ("b//c", "y", 0o644)])
        )
        .unwrap()
    );
    assert_eq!(fs::read_to_string(dir.path().join("b/c")).unwrap(), "y");
}

#[test]
fn file_modes_are_exact_despite_the_umask() {
    let dir = tempfile::tempdir().expect("tempdir");
    let v = payload(&[
        ("secret", "s", 0o400),
        ("open", "o", 0o777),
        ("dir/f", "f", 0o640),
    ]);
    write(dir.path(), &v).expect("write");
    let mode = |p: &str| {
        fs::metadata(dir.path().join(p))
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("secret"), 0o400);
    assert_eq!(mode("open"), 0o777);
    assert_eq!(mode("dir/f"), 0o640);
    assert_eq!(mode("dir"), 0o755);
    assert_eq!(mode(DATA_DIR), 0o755);
}

#[test]
fn a_data_link_pointing_elsewhere_is_not_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    symlink("/etc", dir.path().join(DATA_DIR)).expect("link");
    let err = write(dir.path(), &payload(&[("a", "x", 0o644)])).expect_err("foreign link");
    assert!(err.to_string().contains("..data"), "{err}");
}
