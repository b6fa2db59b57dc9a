use std::fs::{self, Permissions};
use std::os::unix::fs::{PermissionsExt as _, symlink};

use super::*;

fn refuse(reason: String) -> VolumeError {
    VolumeError::SubPath {
        pod: "p".to_owned(),
        container: "c".to_owned(),
        volume: "v".to_owned(),
        sub_path: "s".to_owned(),
        reason,
    }
}

/// The path `fd` refers to, as the kernel names it.
fn path_of(fd: &OwnedFd) -> PathBuf {
    fs::read_link(proc_fd(fd)).expect("readlink /proc/self/fd")
}

/// A volume root (canonical, mode 0775) and a directory outside it.
fn volume() -> (tempfile::TempDir, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = fs::canonicalize(dir.path()).expect("canonical");
    fs::set_permissions(&root, Permissions::from_mode(0o775)).expect("chmod root");
    let outside = tempfile::tempdir().expect("tempdir");
    (dir, root, outside)
}

fn refusal(root: &Path, sub_path: &str) -> String {
    match open_beneath(root, sub_path, &refuse) {
        Ok(fd) => panic!("{sub_path}: opened {}", path_of(&fd).display()),
        Err(VolumeError::SubPath { reason, .. }) => reason,
        Err(e) => panic!("{sub_path}: not a refusal: {e}"),
    }
}

#[test]
fn components_refuse_what_is_not_inside() {
    assert_eq!(
        components("./a/./b/").expect("relative"),
        [OsStr::new("a"), OsStr::new("b")]
    );
    for bad in ["..", "../etc", "a/../../b", "a/..", "/etc", "/", "", "."] {
        assert!(components(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn missing_directories_are_created_with_the_root_mode() {
    let (_dir, root, _outside) = volume();
    let fd = open_beneath(&root, "logs/app", &refuse).expect("open");
    assert_eq!(path_of(&fd), root.join("logs/app"));
    for d in ["logs", "logs/app"] {
        let meta = fs::symlink_metadata(root.join(d)).expect("created");
        assert!(meta.is_dir(), "{d}");
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            0o775,
            "{d} has the root's mode despite the umask"
        );
    }
    // Again: found, not created twice.
    let again = open_beneath(&root, "./logs/app", &refuse).expect("open again");
    assert_eq!(path_of(&again), root.join("logs/app"));
}

#[test]
fn a_file_may_be_the_last_component() {
    let (_dir, root, _outside) = volume();
    fs::create_dir(root.join("conf")).expect("mkdir");
    fs::write(root.join("conf/app.ini"), "x").expect("write");
    let fd = open_beneath(&root, "conf/app.ini", &refuse).expect("open");
    assert_eq!(path_of(&fd), root.join("conf/app.ini"));
    assert_eq!(
        file_type(&nix::sys::stat::fstat(&fd).expect("fstat")),
        SFlag::S_IFREG
    );
    let reason = refusal(&root, "conf/app.ini/x");
    assert!(
        reason.contains("conf/app.ini is not a directory"),
        "{reason}"
    );
}

#[test]
fn links_that_stay_inside_are_followed() {
    let (_dir, root, _outside) = volume();
    fs::create_dir_all(root.join("real/deep")).expect("mkdir");
    symlink("real", root.join("alias")).expect("symlink");
    symlink("../../real", root.join("real/deep/up")).expect("symlink");
    let fd = open_beneath(&root, "alias/new", &refuse).expect("through alias");
    assert_eq!(path_of(&fd), root.join("real/new"));
    assert!(root.join("real/new").is_dir(), "created behind the link");
    let fd = open_beneath(&root, "real/deep/up/new", &refuse).expect("through ..");
    assert_eq!(path_of(&fd), root.join("real/new"));
    // A link as the last component is followed too.
    let fd = open_beneath(&root, "alias", &refuse).expect("the link itself");
    assert_eq!(path_of(&fd), root.join("real"));
}

#[test]
fn links_that_leave_the_volume_are_refused() {
    let (_dir, root, outside) = volume();
    fs::create_dir(root.join("a")).expect("mkdir");
    symlink(outside.path(), root.join("abs-out")).expect("symlink");
    symlink("../..", root.join("a/climb")).expect("symlink");
    symlink("a/climb/etc", root.join("chain")).expect("symlink");
    // Absolute, even though it names a directory inside the volume on the host.
    symlink(root.join("a"), root.join("abs-in")).expect("symlink");
    symlink("/proc/self/root", root.join("magic")).expect("symlink");
    for sub_path in [
        "abs-out",
        "abs-out/x",
        "a/climb",
        "a/climb/x",
        "chain",
        "abs-in",
        "magic",
    ] {
        let reason = refusal(&root, sub_path);
        assert!(
            reason.contains("leads out of the volume"),
            "{sub_path}: {reason}"
        );
    }
    assert_eq!(
        fs::read_dir(outside.path()).expect("read outside").count(),
        0,
        "nothing was created outside the volume"
    );
}

#[test]
fn dangling_links_and_syntax_are_refused() {
    let (_dir, root, _outside) = volume();
    symlink("nowhere", root.join("dangle")).expect("symlink");
    let reason = refusal(&root, "dangle");
    assert!(reason.contains("symbolic link to nothing"), "{reason}");
    assert!(
        fs::symlink_metadata(root.join("nowhere")).is_err(),
        "the link's target was not created"
    );
    for sub_path in ["../x", "/etc", "a/../../x"] {
        let reason = refusal(&root, sub_path);
        assert!(
            reason.contains("must be a relative path inside the volume"),
            "{sub_path}: {reason}"
        );
    }
}

#[test]
fn a_volume_that_is_a_file_is_refused() {
    let (_dir, root, _outside) = volume();
    fs::write(root.join("file"), "x").expect("write");
    let reason = refusal(&root.join("file"), "x");
    assert!(reason.contains("is not a directory"), "{reason}");
}

#[test]
fn pin_refuses_names_that_are_not_one_component() {
    let (_dir, root, _outside) = volume();
    let fd = open_beneath(&root, "d", &refuse).expect("open");
    for (volume, container) in [("../v", "c"), ("v", "a/b"), ("v", ""), ("v", "..")] {
        assert!(
            matches!(
                pin(&fd, &root, volume, container, 0),
                Err(VolumeError::PinName { .. })
            ),
            "{volume:?} {container:?}"
        );
    }
    assert!(
        !root.join(SUBPATHS_DIR).exists(),
        "nothing created for a bad name"
    );
}
