//! Kiln dataset cache (`kiln cache`): a read-through cache of S3 / HTTP / WebHDFS / local datasets
//! for training jobs, optimized for millions of small files.
//!
//! Layers, bottom up: [`source`] (OpenDAL under-storage with timeouts and retries), [`meta`] and
//! [`listing`] (the metadata cache and its on-disk snapshot), [`cache`] (foyer hybrid memory + disk
//! block cache with integrity checks, on the [`engine`] wrapper), [`fs`] (the read-only FUSE file system), [`warmup`],
//! [`admin`] (Prometheus `/metrics`, stats, refresh), and [`mount`] (the daemon). The library
//! takes typed configurations ([`service::ServiceConfig`], [`mount::MountConfig`],
//! [`warmup::Selection`]) and returns [`DatacacheError`]; the command line (`kiln cache`) is the
//! binary's (`crates/kiln/src/cache.rs`).

#![warn(missing_docs)]

pub mod admin;
pub mod block;
pub mod cache;
pub mod engine;
pub mod error;
pub mod fs;
pub mod listing;
pub mod meta;
pub mod metrics;
pub mod mount;
pub mod service;
pub mod source;
pub mod warmup;

pub use error::{DatacacheError, Result};
