fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=proto/bpflet/v1/events.proto");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // For server reflection (`bpflet_proto::FILE_DESCRIPTOR_SET`).
        .file_descriptor_set_path(out.join("bpflet_descriptor.bin"))
        .compile_protos(&["proto/bpflet/v1/events.proto"], &["proto"])?;
    Ok(())
}
