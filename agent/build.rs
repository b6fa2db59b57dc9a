//! Embeds the BPF object built by `cargo xtask build-ebpf`.
use std::path::PathBuf;

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let target_dir = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| manifest.join("../target"));
    let object = target_dir.join("bpfel-unknown-none/release/bpflet-ebpf");
    println!("cargo:rerun-if-changed={}", object.display());
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    if !object.is_file() {
        println!(
            "cargo::error=the BPF object {} is missing: run `cargo xtask build-ebpf` first (`cargo xtask setup` installs what it needs)",
            object.display()
        );
        return;
    }
    println!("cargo:rustc-env=BPFLET_EBPF_OBJECT={}", object.display());
}
