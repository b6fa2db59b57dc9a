//! Offline container images: OCI image layout archives built here, since no image registry
//! is reachable from these machines; they are imported into containerd with
//! `ctr images import`.
//!
//! - [`build`] writes `bpflet-images.tar` from Debian's busybox-static:
//!   [`BUSYBOX_IMAGE`], the test image (`/bin/busybox`, a symlink per applet (`sh`,
//!   `sleep`, `httpd`, `nc`, ...), `/etc/passwd`, `/etc/group`, `/tmp`; default command
//!   `sh`), and [`PAUSE_IMAGE`], the sandbox image: the same layer, running a shell loop that
//!   sleeps and exits on SIGTERM. Both share one layer.
//! - [`build_bpflet`] writes `bpflet.tar`: [`BPFLET_IMAGE`], the agent's own image
//!   (`cargo xtask image`): the `bpflet` binary at [`BPFLET_PATH`] (the BPF object is
//!   embedded in it), the shared libraries `ldd` resolves for it, copied from the host at
//!   the paths the dynamic loader looks them up (Debian's glibc, `libgcc_s`), a minimal
//!   `/etc` and `/tmp`; entrypoint `bpflet`.
//!
//! Everything is deterministic (fixed mtimes, owners, order), so the digests only change
//! when an input file does and a re-import is a no-op.

use std::fs;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// The image tests run their containers from. Not `:latest`: a pod that names a `:latest`
/// image without a pull policy gets `Always` (upstream's default), and this image is in no
/// registry, so every start would fail to pull it.
pub const BUSYBOX_IMAGE: &str = "bpflet.local/busybox:offline";
/// The pod sandbox ("pause") image; containerd's `sandbox_image`.
pub const PAUSE_IMAGE: &str = "bpflet.local/pause:latest";
/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX_BINARY: &str = "/bin/busybox";
/// The archive's file name inside the output directory.
pub const ARCHIVE_NAME: &str = "bpflet-images.tar";
/// The agent's image, tagged with the workspace's version.
pub const BPFLET_IMAGE: &str = concat!("bpflet.local/bpflet:", env!("CARGO_PKG_VERSION"));
/// Where the agent's image holds the binary (its entrypoint).
pub const BPFLET_PATH: &str = "/usr/local/bin/bpflet";
/// The agent image archive's file name inside the output directory.
pub const BPFLET_ARCHIVE_NAME: &str = "bpflet.tar";

/// Every file in the images and archive carries this mtime (2024-01-01T00:00:00Z).
const EPOCH: u64 = 1_704_067_200;
const CREATED: &str = "2024-01-01T00:00:00Z";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// PID 1 of a sandbox: sleeps forever, reaps whatever gets reparented to it, and exits
/// on SIGTERM (PID 1 ignores signals it has no handler for).
const PAUSE_SCRIPT: &str = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";

const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// One image in the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltImage {
    /// Full reference, e.g. `bpflet.local/busybox:offline`.
    pub name: String,
    /// `sha256:<hex>` of the manifest.
    pub manifest_digest: String,
    /// `sha256:<hex>` of the config: the image id containerd's CRI reports.
    pub id: String,
}

/// The archive and what it holds.
#[derive(Clone, Debug)]
pub struct ImageArchive {
    pub path: PathBuf,
    pub images: Vec<BuiltImage>,
}

/// Builds (or confirms up to date) `<out_dir>/bpflet-images.tar` from [`BUSYBOX_BINARY`].
pub fn build(out_dir: &Path) -> Result<ImageArchive> {
    build_from(Path::new(BUSYBOX_BINARY), out_dir)
}

/// Like [`build`], with another static busybox binary.
pub fn build_from(busybox: &Path, out_dir: &Path) -> Result<ImageArchive> {
    let layer_blob = busybox_layer(busybox)?;
    let shell = ["sh".to_owned()];
    let pause = ["sh".to_owned(), "-c".to_owned(), PAUSE_SCRIPT.to_owned()];
    write_archive(
        &out_dir.join(ARCHIVE_NAME),
        &[
            ImageDef {
                name: BUSYBOX_IMAGE,
                layers: vec![&layer_blob],
                entrypoint: &[],
                cmd: &shell,
                created_by: BUSYBOX_CREATED_BY,
            },
            ImageDef {
                name: PAUSE_IMAGE,
                layers: vec![&layer_blob],
                entrypoint: &[],
                cmd: &pause,
                created_by: BUSYBOX_CREATED_BY,
            },
        ],
    )
}

/// An archive (`<out_dir>/<name with / and : as _>.tar`) of one image `name`: the busybox
/// layer of [`build`] and a second layer holding `/filler`, `mib` MiB derived from `name`
/// (so no two such images share it), default command `sh`. For tests that need images of
/// a known size; deterministic like [`build`].
pub fn build_filler(out_dir: &Path, name: &str, mib: u32) -> Result<ImageArchive> {
    let base = busybox_layer(Path::new(BUSYBOX_BINARY))?;
    let mut filler = Vec::with_capacity(usize::try_from(mib).unwrap_or(0) << 20);
    let mut counter: u64 = 0;
    while filler.len() < (usize::try_from(mib).unwrap_or(0) << 20) {
        let mut h = Sha256::new();
        h.update(name.as_bytes());
        h.update(counter.to_le_bytes());
        filler.extend_from_slice(&h.finalize());
        counter += 1;
    }
    let mut tar = TarWriter::new();
    tar.file("filler", &filler, 0o644)
        .context("building the filler layer")?;
    let filler_blob = Blob::new(MEDIA_LAYER, tar.finish()?);
    let file = format!("{}.tar", name.replace(['/', ':'], "_"));
    write_archive(
        &out_dir.join(file),
        &[ImageDef {
            name,
            layers: vec![&base, &filler_blob],
            entrypoint: &[],
            cmd: &["sh".to_owned()],
            created_by: BUSYBOX_CREATED_BY,
        }],
    )
}

/// The busybox layer, from the static binary at `busybox`.
fn busybox_layer(busybox: &Path) -> Result<Blob> {
    let binary = fs::read(busybox).with_context(|| {
        format!(
            "reading {} (install Debian's busybox-static: `cargo xtask setup`)",
            busybox.display()
        )
    })?;
    ensure_static(busybox)?;
    let applets = applets(busybox)?;
    let layer = layer_tar(&binary, &applets)
        .with_context(|| format!("building the image layer from {}", busybox.display()))?;
    Ok(Blob::new(MEDIA_LAYER, layer))
}

/// Builds (or confirms up to date) `<out_dir>/bpflet.tar`: [`BPFLET_IMAGE`] holding
/// `binary` at [`BPFLET_PATH`] and the shared libraries `ldd` names for it.
pub fn build_bpflet(binary: &Path, out_dir: &Path) -> Result<ImageArchive> {
    let data = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let ldd = crate::command_output(Command::new("ldd").arg(binary))
        .or_else(|e| {
            // ldd exits 1 for a static binary, saying so.
            if format!("{e:#}").contains("not a dynamic executable") {
                Ok(String::new())
            } else {
                Err(e)
            }
        })
        .with_context(|| format!("listing the shared libraries of {}", binary.display()))?;
    let libraries = shared_libraries(&ldd)
        .with_context(|| format!("`ldd {}` names a library it cannot find", binary.display()))?;
    let mut files = vec![(BPFLET_PATH.to_owned(), data, 0o755)];
    for library in &libraries {
        let bytes = fs::read(library).with_context(|| format!("reading {}", library.display()))?;
        files.push((library.display().to_string(), bytes, 0o755));
    }
    let layer = files_layer(&files)
        .with_context(|| format!("building the image layer from {}", binary.display()))?;
    let layer_blob = Blob::new(MEDIA_LAYER, layer);
    write_archive(
        &out_dir.join(BPFLET_ARCHIVE_NAME),
        &[ImageDef {
            name: BPFLET_IMAGE,
            layers: vec![&layer_blob],
            entrypoint: &[BPFLET_PATH.to_owned()],
            cmd: &[],
            created_by: "cargo xtask image: bpflet and its shared libraries",
        }],
    )
}

/// The absolute paths of the shared libraries in `ldd`'s output (the dynamic loader
/// included; the kernel's vDSO, which has no file, left out), in its order.
///
/// # Errors
/// A library `ldd` reports `not found`.
pub fn shared_libraries(ldd: &str) -> Result<Vec<PathBuf>> {
    let mut paths = vec![];
    for line in ldd.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    bail!("{} is not found", name.trim());
                }
                target
            }
            None => line,
        };
        let path = target
            .split_once(" (")
            .map_or(target, |(path, _)| path)
            .trim();
        if path.starts_with('/') {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

/// `created_by` of the busybox layer's history (part of its images' digests).
const BUSYBOX_CREATED_BY: &str = "cargo xtask: busybox-static layer";

/// One image of an archive: its name, its one layer and the process it runs.
struct ImageDef<'a> {
    name: &'a str,
    layers: Vec<&'a Blob>,
    entrypoint: &'a [String],
    cmd: &'a [String],
    created_by: &'a str,
}

/// Writes an OCI image layout archive holding `images` to `path` (unless it holds exactly
/// that already).
fn write_archive(path: &Path, images: &[ImageDef<'_>]) -> Result<ImageArchive> {
    let mut blobs = vec![];
    let mut manifests = vec![];
    let mut built = vec![];
    for image in images {
        let config = Blob::json(
            MEDIA_CONFIG,
            &image_config(
                &image
                    .layers
                    .iter()
                    .map(|l| l.digest.as_str())
                    .collect::<Vec<_>>(),
                image.entrypoint,
                image.cmd,
                image.created_by,
            ),
        )?;
        let manifest = Blob::json(
            MEDIA_MANIFEST,
            &json!({
                "schemaVersion": 2,
                "mediaType": MEDIA_MANIFEST,
                "config": config.descriptor(),
                "layers": image.layers.iter().map(|l| l.descriptor()).collect::<Vec<_>>(),
            }),
        )?;
        let mut descriptor = manifest.descriptor();
        descriptor["platform"] = json!({ "architecture": oci_arch(), "os": "linux" });
        // containerd names imported images after this annotation.
        descriptor["annotations"] = json!({
            "io.containerd.image.name": image.name,
            "org.opencontainers.image.ref.name": image.name,
        });
        manifests.push(descriptor);
        built.push(BuiltImage {
            name: image.name.to_owned(),
            manifest_digest: manifest.digest.clone(),
            id: config.digest.clone(),
        });
        blobs.push(config);
        blobs.push(manifest);
    }
    let mut blobs: Vec<&Blob> = blobs
        .iter()
        .chain(images.iter().flat_map(|i| i.layers.iter().copied()))
        .collect();
    blobs.sort_by(|a, b| a.digest.cmp(&b.digest));
    blobs.dedup_by(|a, b| a.digest == b.digest);

    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": manifests,
    }))?;
    let mut archive = TarWriter::new();
    archive.dir("blobs/")?;
    archive.dir("blobs/sha256/")?;
    for blob in &blobs {
        let hex = blob.digest.trim_start_matches("sha256:");
        archive.file(&format!("blobs/sha256/{hex}"), &blob.data, 0o644)?;
    }
    archive.file("index.json", &index, 0o644)?;
    archive.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644)?;
    let bytes = archive.finish()?;

    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_if_changed(path, &bytes)?;
    Ok(ImageArchive {
        path: path.to_owned(),
        images: built,
    })
}

/// The image config: what a container runs when its spec does not say.
fn image_config(
    diff_ids: &[&str],
    entrypoint: &[String],
    cmd: &[String],
    created_by: &str,
) -> Value {
    let mut process = json!({
        "Env": [PATH_ENV],
        "WorkingDir": "/",
    });
    if !entrypoint.is_empty() {
        process["Entrypoint"] = json!(entrypoint);
    }
    if !cmd.is_empty() {
        process["Cmd"] = json!(cmd);
    }
    json!({
        "created": CREATED,
        "architecture": oci_arch(),
        "os": "linux",
        "config": process,
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": diff_ids
            .iter()
            .map(|_| json!({ "created": CREATED, "created_by": created_by }))
            .collect::<Vec<_>>(),
    })
}

/// The OCI name of this machine's architecture.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The applets this busybox provides, from `busybox --list`.
fn applets(busybox: &Path) -> Result<Vec<String>> {
    let out = Command::new(busybox)
        .arg("--list")
        .output()
        .with_context(|| format!("running `{} --list`", busybox.display()))?;
    if !out.status.success() {
        bail!("`{} --list` failed: {}", busybox.display(), out.status);
    }
    let mut applets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(str::to_owned)
        .collect();
    applets.sort();
    applets.dedup();
    for needed in ["sh", "sleep", "cat", "echo", "httpd", "nc", "wget"] {
        if !applets.iter().any(|a| a == needed) {
            bail!("{} has no `{needed}` applet", busybox.display());
        }
    }
    Ok(applets)
}

/// Fails unless `path` is a statically linked ELF file (no `PT_INTERP` program header):
/// a dynamic busybox would not run in an image that holds nothing else.
fn ensure_static(path: &Path) -> Result<()> {
    const PT_INTERP: u32 = 3;
    let fail = || format!("reading the ELF headers of {}", path.display());
    let mut file = fs::File::open(path).with_context(fail)?;
    let mut ehdr = [0u8; 64];
    file.read_exact(&mut ehdr).with_context(fail)?;
    if &ehdr[..4] != b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        bail!("{} is not a 64-bit little-endian ELF file", path.display());
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let phoff = u64::from_le_bytes(ehdr[32..40].try_into().expect("8 bytes"));
    let phentsize = u64::from(u16_at(&ehdr, 54));
    let phnum = u64::from(u16_at(&ehdr, 56));
    let mut phdr = [0u8; 4];
    for i in 0..phnum {
        file.seek(SeekFrom::Start(phoff + i * phentsize))
            .with_context(fail)?;
        file.read_exact(&mut phdr).with_context(fail)?;
        if u32::from_le_bytes(phdr) == PT_INTERP {
            bail!(
                "{} is dynamically linked; the images need busybox-static",
                path.display()
            );
        }
    }
    Ok(())
}

/// The single layer: busybox, its applet links, a minimal /etc, /tmp and /root.
fn layer_tar(busybox: &[u8], applets: &[String]) -> io::Result<Vec<u8>> {
    let mut tar = TarWriter::new();
    tar.dir("bin/")?;
    tar.file("bin/busybox", busybox, 0o755)?;
    for applet in applets {
        tar.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    tar.dir("etc/")?;
    tar.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644)?;
    tar.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    )?;
    tar.dir_mode("root/", 0o700)?;
    tar.dir_mode("tmp/", 0o1777)?;
    tar.finish()
}

/// A layer of `files` (path without or with its leading `/`, contents, mode), with every
/// directory above them (0755), a minimal `/etc` (root and nobody) and `/tmp`.
fn files_layer(files: &[(String, Vec<u8>, u32)]) -> io::Result<Vec<u8>> {
    let mut tar = TarWriter::new();
    let mut dirs = std::collections::BTreeSet::new();
    for (path, _, _) in files {
        let path = path.trim_start_matches('/');
        let mut at = 0;
        while let Some(slash) = path[at..].find('/') {
            at += slash + 1;
            dirs.insert(path[..at].to_owned());
        }
    }
    dirs.insert("etc/".to_owned());
    for dir in &dirs {
        tar.dir(dir)?;
    }
    let mut sorted: Vec<_> = files.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, data, mode) in sorted {
        tar.file(path.trim_start_matches('/'), data, *mode)?;
    }
    tar.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644)?;
    tar.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n",
        0o644,
    )?;
    tar.dir_mode("tmp/", 0o1777)?;
    tar.finish()
}

/// A content-addressed blob of the layout.
struct Blob {
    media_type: &'static str,
    digest: String,
    data: Vec<u8>,
}

impl Blob {
    fn new(media_type: &'static str, data: Vec<u8>) -> Self {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
        Blob {
            media_type,
            digest,
            data,
        }
    }

    fn json(media_type: &'static str, value: &Value) -> Result<Self> {
        Ok(Self::new(media_type, serde_json::to_vec(value)?))
    }

    fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.data.len() })
    }
}

/// A tar writer whose entries carry nothing of the machine: root-owned, fixed mtime.
struct TarWriter(tar::Builder<Vec<u8>>);

impl TarWriter {
    fn new() -> Self {
        let mut builder = tar::Builder::new(Vec::new());
        builder.mode(tar::HeaderMode::Deterministic);
        TarWriter(builder)
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_mtime(EPOCH);
        header.set_uid(0);
        header.set_gid(0);
        header
    }

    fn dir(&mut self, path: &str) -> io::Result<()> {
        self.dir_mode(path, 0o755)
    }

    fn dir_mode(&mut self, path: &str, mode: u32) -> io::Result<()> {
        let mut header = Self::header(tar::EntryType::Directory, mode, 0);
        self.0.append_data(&mut header, path, io::empty())
    }

    fn file(&mut self, path: &str, data: &[u8], mode: u32) -> io::Result<()> {
        let size = u64::try_from(data.len()).expect("a file fits in u64");
        let mut header = Self::header(tar::EntryType::Regular, mode, size);
        self.0.append_data(&mut header, path, data)
    }

    fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let mut header = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.0.append_link(&mut header, path, target)
    }

    fn finish(self) -> io::Result<Vec<u8>> {
        self.0.into_inner()
    }
}

/// Writes `bytes` to `path` unless it already holds exactly them (keeps mtimes stable).
fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<()> {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let tmp = path.with_extension("tar.tmp");
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", tmp.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(archive: &[u8]) -> Vec<(String, tar::EntryType, Vec<u8>)> {
        let mut out = vec![];
        let mut tar = tar::Archive::new(archive);
        for entry in tar.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let kind = entry.header().entry_type();
            let mut data = vec![];
            entry.read_to_end(&mut data).unwrap();
            out.push((path, kind, data));
        }
        out
    }

    fn blob<'a>(files: &'a [(String, tar::EntryType, Vec<u8>)], digest: &str) -> &'a [u8] {
        let name = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
        &files
            .iter()
            .find(|(p, _, _)| *p == name)
            .unwrap_or_else(|| panic!("no blob {name}"))
            .2
    }

    #[test]
    fn archive_is_a_deterministic_oci_layout_with_both_images() {
        let dir = tempfile::tempdir().unwrap();
        let first = build(dir.path()).unwrap();
        let bytes = fs::read(&first.path).unwrap();
        let again = build(&dir.path().join("again")).unwrap();
        assert_eq!(bytes, fs::read(&again.path).unwrap(), "two builds differ");
        assert_eq!(first.images, again.images);

        let files = entries(&bytes);
        let layout = &files.iter().find(|(p, _, _)| p == "oci-layout").unwrap().2;
        assert_eq!(layout.as_slice(), br#"{"imageLayoutVersion":"1.0.0"}"#);
        let index: Value =
            serde_json::from_slice(&files.iter().find(|(p, _, _)| p == "index.json").unwrap().2)
                .unwrap();
        let names: Vec<&str> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                m["annotations"]["io.containerd.image.name"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(names, [BUSYBOX_IMAGE, PAUSE_IMAGE]);

        for (image, want_cmd) in first
            .images
            .iter()
            .zip([json!(["sh"]), json!(["sh", "-c", PAUSE_SCRIPT])])
        {
            let manifest_bytes = blob(&files, &image.manifest_digest);
            assert_eq!(
                format!("sha256:{}", hex::encode(Sha256::digest(manifest_bytes))),
                image.manifest_digest
            );
            let manifest: Value = serde_json::from_slice(manifest_bytes).unwrap();
            assert_eq!(manifest["config"]["digest"], image.id);
            let config: Value = serde_json::from_slice(blob(&files, &image.id)).unwrap();
            assert_eq!(config["config"]["Cmd"], want_cmd);
            assert_eq!(config["config"]["Env"][0], PATH_ENV);
            let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
            assert_eq!(config["rootfs"]["diff_ids"][0], layer_digest);
        }
    }

    #[test]
    fn layer_holds_busybox_applets_and_a_minimal_etc() {
        let dir = tempfile::tempdir().unwrap();
        let archive = build(dir.path()).unwrap();
        let files = entries(&fs::read(&archive.path).unwrap());
        let manifest: Value =
            serde_json::from_slice(blob(&files, &archive.images[0].manifest_digest)).unwrap();
        let layer = entries(blob(
            &files,
            manifest["layers"][0]["digest"].as_str().unwrap(),
        ));

        let find = |path: &str| {
            layer
                .iter()
                .find(|(p, _, _)| p == path)
                .unwrap_or_else(|| panic!("{path} missing from the layer"))
        };
        assert_eq!(find("bin/busybox").2, fs::read(BUSYBOX_BINARY).unwrap());
        for applet in [
            "sh", "sleep", "cat", "echo", "ls", "httpd", "nc", "kill", "dd",
        ] {
            assert_eq!(find(&format!("bin/{applet}")).1, tar::EntryType::Symlink);
        }
        assert!(find("etc/passwd").2.starts_with(b"root:x:0:0:"));
        assert!(find("etc/group").2.starts_with(b"root:x:0:"));
        assert_eq!(find("tmp/").1, tar::EntryType::Directory);
        let mut tar = tar::Archive::new(blob(
            &files,
            manifest["layers"][0]["digest"].as_str().unwrap(),
        ));
        for entry in tar.entries().unwrap() {
            let header = entry.unwrap().header().clone();
            assert_eq!(header.mtime().unwrap(), EPOCH);
            assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (0, 0));
        }
    }

    #[test]
    fn filler_images_have_the_busybox_layer_and_a_filler_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let a = build_filler(dir.path(), "bpflet.local/filler-a:v1", 2).unwrap();
        let b = build_filler(dir.path(), "bpflet.local/filler-b:v1", 2).unwrap();
        assert_eq!(a.path, dir.path().join("bpflet.local_filler-a_v1.tar"));
        assert_ne!(a.images[0].id, b.images[0].id);
        let base = build(&dir.path().join("base")).unwrap();
        let files = entries(&fs::read(&a.path).unwrap());
        let manifest: Value =
            serde_json::from_slice(blob(&files, &a.images[0].manifest_digest)).unwrap();
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2);
        let base_files = entries(&fs::read(&base.path).unwrap());
        let base_manifest: Value =
            serde_json::from_slice(blob(&base_files, &base.images[0].manifest_digest)).unwrap();
        assert_eq!(
            layers[0], base_manifest["layers"][0],
            "the busybox layer is shared"
        );
        let filler = entries(blob(&files, layers[1]["digest"].as_str().unwrap()));
        assert_eq!(filler.len(), 1);
        assert_eq!(filler[0].0, "filler");
        assert_eq!(filler[0].2.len(), 2 << 20);
        let config: Value = serde_json::from_slice(blob(&files, &a.images[0].id)).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
        // Deterministic.
        let again = build_filler(&dir.path().join("again"), "bpflet.local/filler-a:v1", 2).unwrap();
        assert_eq!(fs::read(&a.path).unwrap(), fs::read(&again.path).unwrap());
    }

    #[test]
    fn a_dynamic_binary_is_refused() {
        // Any dynamically linked system binary will do.
        let err = ensure_static(Path::new("/bin/ls")).unwrap_err();
        assert!(err.to_string().contains("dynamically linked"), "{err:#}");
        ensure_static(Path::new(BUSYBOX_BINARY)).unwrap();
    }

    #[test]
    fn ldd_output_gives_the_library_paths_and_a_missing_one_fails() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffbbcc1f000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007ffbbb1e0000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007ffbbaf1e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007ffbbcc21000)
";
        assert_eq!(
            shared_libraries(ldd).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(shared_libraries("").unwrap().is_empty(), "a static binary");
        let err = shared_libraries("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(err.to_string().contains("libfoo.so.1"), "{err:#}");
    }

    #[test]
    fn the_bpflet_image_holds_the_binary_and_what_it_links() {
        // Any dynamically linked binary stands in for bpflet.
        let binary = Path::new("/bin/ls");
        let dir = tempfile::tempdir().unwrap();
        let archive = build_bpflet(binary, dir.path()).unwrap();
        assert_eq!(archive.path, dir.path().join(BPFLET_ARCHIVE_NAME));
        let again = build_bpflet(binary, &dir.path().join("again")).unwrap();
        assert_eq!(archive.images, again.images, "two builds differ");
        let [image] = archive.images.as_slice() else {
            panic!("one image: {:?}", archive.images);
        };
        assert_eq!(image.name, BPFLET_IMAGE);

        let files = entries(&fs::read(&archive.path).unwrap());
        let manifest: Value = serde_json::from_slice(blob(&files, &image.manifest_digest)).unwrap();
        let config: Value = serde_json::from_slice(blob(&files, &image.id)).unwrap();
        assert_eq!(config["config"]["Entrypoint"], json!([BPFLET_PATH]));
        assert!(config["config"].get("Cmd").is_none(), "{config}");
        let layer = entries(blob(
            &files,
            manifest["layers"][0]["digest"].as_str().unwrap(),
        ));
        let find = |path: &str| {
            layer
                .iter()
                .find(|(p, _, _)| p == path)
                .unwrap_or_else(|| panic!("{path} missing from the layer"))
        };
        assert_eq!(
            find(BPFLET_PATH.trim_start_matches('/')).2,
            fs::read(binary).unwrap()
        );
        let ldd = crate::command_output(Command::new("ldd").arg(binary)).unwrap();
        let libraries = shared_libraries(&ldd).unwrap();
        assert!(
            libraries.iter().any(|l| l.ends_with("libc.so.6")),
            "{libraries:?}"
        );
        for library in &libraries {
            let path = library.display().to_string();
            assert_eq!(
                find(path.trim_start_matches('/')).2,
                fs::read(library).unwrap(),
                "{path}"
            );
        }
        assert_eq!(find("usr/local/bin/").1, tar::EntryType::Directory);
        assert!(find("etc/passwd").2.starts_with(b"root:x:0:0:"));
    }

    #[test]
    fn the_busybox_images_keep_their_digests() {
        // The generalised writer must not change the test images (containerd re-imports
        // nothing when they are unchanged): their configs are the ones written before it.
        let dir = tempfile::tempdir().unwrap();
        let archive = build(dir.path()).unwrap();
        let files = entries(&fs::read(&archive.path).unwrap());
        for (image, cmd) in archive
            .images
            .iter()
            .zip([json!(["sh"]), json!(["sh", "-c", PAUSE_SCRIPT])])
        {
            let manifest: Value =
                serde_json::from_slice(blob(&files, &image.manifest_digest)).unwrap();
            let before = json!({
                "created": CREATED,
                "architecture": oci_arch(),
                "os": "linux",
                "config": { "Env": [PATH_ENV], "Cmd": cmd, "WorkingDir": "/" },
                "rootfs": { "type": "layers", "diff_ids": [manifest["layers"][0]["digest"]] },
                "history": [{ "created": CREATED, "created_by": "cargo xtask: busybox-static layer" }],
            });
            let digest = format!(
                "sha256:{}",
                hex::encode(Sha256::digest(serde_json::to_vec(&before).unwrap()))
            );
            assert_eq!(image.id, digest, "{}", image.name);
        }
    }
}
