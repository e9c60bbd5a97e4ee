//! The media plane's gRPC API, package `media.v1`, generated from `proto/media/v1/media.proto`.
//!
//! Both planes depend on this crate and on nothing else of each other: the `.proto` file is the
//! contract. [`FILE_DESCRIPTOR_SET`] feeds gRPC server reflection so generic clients (grpcurl,
//! Python grpcio) can discover the service.
#![forbid(unsafe_code)]

/// `media.v1`: messages and the `MediaPlane` client and server.
#[allow(missing_debug_implementations, clippy::all)]
pub mod media {
    pub mod v1 {
        tonic::include_proto!("media.v1");
    }
}

pub use media::v1;

/// Encoded `FileDescriptorSet` of the API, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("media_v1_descriptor");
