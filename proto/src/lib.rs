//! bpflet's own gRPC API (package `bpflet.v1`): the kernel event schema shared by
//! `bpflet trace --json` and the `EventService` stream.

pub mod v1 {
    #![expect(
        clippy::allow_attributes,
        reason = "prost and tonic put #[allow] on the code they generate"
    )]
    tonic::include_proto!("bpflet.v1");
}

/// The encoded `FileDescriptorSet` of `bpflet.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("bpflet_descriptor");
