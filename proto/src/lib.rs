//! bpflet's own gRPC API (package `bpflet.v1`): the kernel event schema shared by
//! `bpflet trace --json` and the `EventService` stream.

pub mod v1 {
    #![expect(
        clippy::allow_attributes,
        reason = "prost and tonic put #[allow] on the code they generate"
    )]
    tonic::include_proto!("bpflet.v1");
}
