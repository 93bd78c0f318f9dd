//! Kiln core types shared by every layer: tensors and data types, model configuration,
//! the [`Backend`] trait that engines implement, and the [`ErrorCode`] that maps one error
//! kind to both an HTTP status and a gRPC code.
//!
//! This crate has no heavy dependencies on purpose: protocol, backends, runtime and server all
//! build on it, and nothing here imports anything above it.

pub mod backend;
pub mod classification;
pub mod config;
pub mod dtype;
pub mod error;
pub mod gather;
pub mod request;
pub mod tensor;
pub mod texts;
pub mod warmup;

pub use backend::{
    Backend, DeltaAck, LoadedModel, ModelInstance, ModelIo, SparseParameters, SparseTableInfo,
};
pub use config::{
    ModelConfig, ResponseCacheConfig, RollbackPolicy, TensorSpec, VersionPolicy, PIPELINE_BACKEND,
};
pub use dtype::DataType;
pub use error::{Error, ErrorCode, Result};
pub use request::InferRequest;
pub use tensor::Tensor;
