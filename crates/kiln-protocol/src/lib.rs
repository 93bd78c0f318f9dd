//! KServe v2 / Triton wire formats.
//!
//! - [`inference`]: the gRPC messages, server and client of `inference.GRPCInferenceService`,
//!   generated from `proto/` with Triton's field numbers.
//! - [`http`]: the JSON request and response bodies with Triton's binary tensor extension.
//! - [`grpc_convert`]: conversions between gRPC inference messages and [`InferRequest`] /
//!   [`kiln_core::Tensor`].
//! - [`codec`]: the gRPC codec (prost's, with undecodable messages as `INVALID_ARGUMENT`).
//! - [`shm`]: the parameters by which a tensor names a region of Triton's system shared-memory
//!   extension (the registered regions themselves are server state).
//! - [`triton_config`]: Triton's `config.pbtxt` (protobuf text format of `model_config.proto`)
//!   read into Kiln's model configuration.
//!
//! Both front ends decode into the same [`InferRequest`], so the layers above see one request
//! type whatever the transport.

pub mod codec;
pub mod grpc_convert;
pub mod http;
pub mod load_config;
mod request;
pub mod shm;
pub mod triton_config;

/// Messages, server and client of `kiln.admin.v1`: the sparse-model control plane.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod admin {
    tonic::include_proto!("kiln.admin.v1");
}

/// Messages, server and client of the `inference` protobuf package.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod inference {
    tonic::include_proto!("inference");
}

pub use grpc_convert::{request_from_grpc, response_to_grpc};
pub use http::{
    decode_request, encode_response, encode_response_parts, error_body, EncodedResponse,
};
pub use request::{Delivery, InferRequest, RequestedOutput, WireRequest};
