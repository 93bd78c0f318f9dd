//! Shared test support: deterministic datasets (from the test kit) and the service
//! configuration of a test cache.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use kiln_datacache::cache::CacheConfig;
use kiln_datacache::service::ServiceConfig;
use kiln_datacache::source::{Credentials, SourceConfig, SourceSpec};

pub use kiln_testkit::dataset::{content, make_dataset, write};

/// Access key of the test configurations (the file source ignores it; moto accepts any).
pub const KEY: &str = "kiln-test";
/// Secret of the test configurations.
pub const SECRET: &str = "kiln-test-secret";

/// Service configuration for `source` with small test sizes.
pub fn service_config(
    source: &str,
    endpoint: Option<&str>,
    dir: &Path,
    block_size: u64,
) -> ServiceConfig {
    ServiceConfig {
        source: SourceConfig {
            spec: SourceSpec::parse(source).expect("source"),
            endpoint: endpoint.map(str::to_string),
            region: "us-east-1".into(),
            credentials: Credentials {
                access_key_id: Some(KEY.into()),
                secret_access_key: Some(SECRET.into()),
                session_token: None,
            },
            request_timeout: Duration::from_secs(2),
            retries: 2,
            hdfs_user: None,
        },
        cache: CacheConfig {
            dir: dir.to_path_buf(),
            memory_bytes: 64 << 20,
            disk_bytes: 512 << 20,
            block_size,
            readahead_blocks: 2,
            read_timeout: Duration::from_secs(4),
        },
        manifest: None,
        meta_ttl: Duration::from_secs(3600),
    }
}
