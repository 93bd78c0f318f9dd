//! Under-storage: a source URL (`s3://`, `http(s)://`, `webhdfs://`, `file://`) turned into an
//! OpenDAL [`Operator`] with per-attempt timeouts and retries with exponential backoff.

use std::fmt;
use std::time::Duration;

use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::{services, Operator};

use crate::error::{DatacacheError, Result};

/// Kind of under-storage named by the source URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `s3://bucket/prefix` (any S3-compatible store; `--endpoint` for non-AWS).
    S3,
    /// `http://host/path` or `https://...`: read-only, no listing (needs a manifest).
    Http,
    /// `webhdfs://namenode:port/path` (HDFS through its REST gateway).
    Webhdfs,
    /// `file:///abs/path` (local or NFS directory; also used by tests).
    Fs,
}

/// A parsed source URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    /// Which service.
    pub scheme: Scheme,
    /// Bucket (S3) or `scheme://host[:port]` (HTTP, WebHDFS); empty for `file://`.
    pub authority: String,
    /// Root path inside the bucket or host, always starting and ending with `/`.
    pub root: String,
}

impl SourceSpec {
    /// Parses `s3://bucket/prefix`, `http(s)://host/path`, `webhdfs://host:port/path`, `file:///path`.
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |reason: &str| DatacacheError::InvalidSource {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected scheme://..."))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if host.contains('@') {
            return Err(bad(
                "credentials in the URL are not accepted; use flags or env",
            ));
        }
        let mut root = path.trim_end_matches('/').to_string();
        root.push('/');
        let (scheme, authority) = match scheme {
            "s3" => {
                if host.is_empty() {
                    return Err(bad("missing bucket"));
                }
                (Scheme::S3, host.to_string())
            }
            "http" | "https" => {
                if host.is_empty() {
                    return Err(bad("missing host"));
                }
                (Scheme::Http, format!("{scheme}://{host}"))
            }
            "webhdfs" => {
                if host.is_empty() {
                    return Err(bad("missing namenode host"));
                }
                (Scheme::Webhdfs, format!("http://{host}"))
            }
            "file" => {
                if !host.is_empty() {
                    return Err(bad("file URLs must be file:///absolute/path"));
                }
                (Scheme::Fs, String::new())
            }
            _ => return Err(bad("unsupported scheme (s3, http, https, webhdfs, file)")),
        };
        Ok(Self {
            scheme,
            authority,
            root,
        })
    }

    /// The URL without credentials, for logs and the snapshot identity.
    pub fn display(&self) -> String {
        match self.scheme {
            Scheme::S3 => format!("s3://{}{}", self.authority, self.root),
            Scheme::Fs => format!("file://{}", self.root),
            Scheme::Webhdfs => format!(
                "webhdfs://{}{}",
                self.authority.trim_start_matches("http://"),
                self.root
            ),
            Scheme::Http => format!("{}{}", self.authority, self.root),
        }
    }
}

/// Secret material for the under-storage. `Debug` never prints the values.
#[derive(Clone, Default)]
pub struct Credentials {
    /// S3 access key id.
    pub access_key_id: Option<String>,
    /// S3 secret access key.
    pub secret_access_key: Option<String>,
    /// S3 session token (temporary credentials).
    pub session_token: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = |o: &Option<String>| if o.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("Credentials")
            .field("access_key_id", &mark(&self.access_key_id))
            .field("secret_access_key", &mark(&self.secret_access_key))
            .field("session_token", &mark(&self.session_token))
            .finish()
    }
}

/// Everything needed to reach the under-storage.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Parsed source URL.
    pub spec: SourceSpec,
    /// S3 endpoint URL (`http://127.0.0.1:9000`); `None` means AWS.
    pub endpoint: Option<String>,
    /// S3 region.
    pub region: String,
    /// Access keys; absent keys mean OpenDAL's default chain (env, profile, instance metadata).
    pub credentials: Credentials,
    /// Bound on one remote request attempt.
    pub request_timeout: Duration,
    /// Retries of transient errors, with exponential backoff and jitter.
    pub retries: usize,
    /// WebHDFS user name.
    pub hdfs_user: Option<String>,
}

/// Installs the process-wide TLS crypto provider (ring) and OpenDAL's HTTP transport (reqwest,
/// pooled keep-alive connections, TCP_NODELAY) once; later calls are no-ops.
pub fn install_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(256)
            .pool_idle_timeout(Duration::from_secs(90))
            .build();
        match client {
            Ok(c) => opendal::HttpTransporter::install_default(opendal_http_transport_reqwest::ReqwestTransport::new(c)),
            Err(e) => tracing::warn!(error = %e, "could not build the http client; http sources will fail"),
        }
    });
}

/// Builds the OpenDAL operator with timeout and retry layers.
pub fn build_operator(cfg: &SourceConfig) -> Result<Operator> {
    install_tls_provider();
    let spec = &cfg.spec;
    let invalid = |e: opendal::Error| DatacacheError::InvalidSource {
        url: spec.display(),
        reason: e.to_string(),
    };
    let op = match spec.scheme {
        Scheme::S3 => {
            let mut b = services::S3::default()
                .bucket(&spec.authority)
                .root(&spec.root)
                .region(&cfg.region);
            if let Some(ep) = &cfg.endpoint {
                b = b.endpoint(ep);
            }
            let c = &cfg.credentials;
            if let (Some(ak), Some(sk)) = (&c.access_key_id, &c.secret_access_key) {
                b = b
                    .access_key_id(ak)
                    .secret_access_key(sk)
                    .disable_config_load()
                    .disable_ec2_metadata();
                if let Some(t) = &c.session_token {
                    b = b.session_token(t);
                }
            }
            Operator::new(b).map_err(invalid)?
        }
        Scheme::Http => Operator::new(
            services::Http::default()
                .endpoint(&spec.authority)
                .root(&spec.root),
        )
        .map_err(invalid)?,
        Scheme::Webhdfs => {
            let mut b = services::Webhdfs::default()
                .endpoint(&spec.authority)
                .root(&spec.root);
            if let Some(u) = &cfg.hdfs_user {
                b = b.user_name(u);
            }
            Operator::new(b).map_err(invalid)?
        }
        Scheme::Fs => Operator::new(services::Fs::default().root(&spec.root)).map_err(invalid)?,
    };
    let op = op
        .layer(
            TimeoutLayer::new()
                .with_timeout(cfg.request_timeout)
                .with_io_timeout(cfg.request_timeout),
        )
        .layer(
            RetryLayer::new()
                .with_max_times(cfg.retries)
                .with_min_delay(Duration::from_millis(50))
                .with_max_delay(Duration::from_secs(2))
                .with_factor(2.0)
                .with_jitter(),
        );
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_schemes() {
        let s = SourceSpec::parse("s3://bucket/a/b/").unwrap();
        assert_eq!(
            (s.scheme, s.authority.as_str(), s.root.as_str()),
            (Scheme::S3, "bucket", "/a/b/")
        );
        let s = SourceSpec::parse("s3://bucket").unwrap();
        assert_eq!(s.root, "/");
        let s = SourceSpec::parse("webhdfs://nn:9870/data").unwrap();
        assert_eq!(
            (s.authority.as_str(), s.root.as_str()),
            ("http://nn:9870", "/data/")
        );
        let s = SourceSpec::parse("file:///tmp/x").unwrap();
        assert_eq!((s.scheme, s.root.as_str()), (Scheme::Fs, "/tmp/x/"));
        let s = SourceSpec::parse("https://host/p").unwrap();
        assert_eq!(s.authority, "https://host");
        assert!(SourceSpec::parse("ftp://x/y").is_err());
        assert!(SourceSpec::parse("s3://key:secret@bucket/x").is_err());
    }

    #[test]
    fn credentials_are_redacted() {
        let c = Credentials {
            access_key_id: Some("AKIA".into()),
            secret_access_key: Some("s3cr3t".into()),
            session_token: None,
        };
        let s = format!("{c:?}");
        assert!(!s.contains("s3cr3t") && !s.contains("AKIA"), "{s}");
    }
}
