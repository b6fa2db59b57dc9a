fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=proto/bpflet/v1/events.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/bpflet/v1/events.proto"], &["proto"])?;
    Ok(())
}
