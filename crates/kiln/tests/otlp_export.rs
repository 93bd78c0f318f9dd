//! `kiln serve --otlp-endpoint` exports each request's span, carrying the request id, model
//! and version, and the span of the batch that computed it, linked to the request's: received
//! here by an OTLP trace receiver (a tonic `TraceService`) started in the test on port 0.

mod common;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The string attribute `key` of `span`.
fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
}

/// The request span with the id `id`, and a batch span linked to it, once both have arrived.
fn request_and_batch(spans: &[Span], id: &str) -> Option<(Span, Span)> {
    let request = spans
        .iter()
        .find(|s| s.name == "request" && attr(s, "id") == Some(id))?;
    let batch = spans.iter().find(|s| {
        s.name == "batch"
            && s.links
                .iter()
                .any(|l| l.trace_id == request.trace_id && l.span_id == request.span_id)
    })?;
    Some((request.clone(), batch.clone()))
}

#[test]
fn request_and_batch_spans_reach_the_otlp_endpoint_linked() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let receiver = Receiver::default();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    // export every 100 ms rather than every 5 s (the batch span processor's own setting)
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
    let tmp = tempfile::tempdir().unwrap();
    let endpoint = format!("http://127.0.0.1:{port}");
    let models = repo_root().join("examples/models");
    let server = serve(
        &models,
        tmp.path(),
        &[
            "--model-control-mode",
            "explicit",
            "--load-model",
            "mlp",
            "--default-onnx-backend",
            "tract",
            "--otlp-endpoint",
            &endpoint,
        ],
    );
    let x = vec!["0.5"; 256].join(",");
    for id in ["otel-1", "otel-2"] {
        let body = format!(
            r#"{{"id":"{id}","inputs":[{{"name":"x","datatype":"FP32","shape":[1,256],"data":[{x}]}}]}}"#
        );
        let (status, out) = http(server.http, "POST", "/v2/models/mlp/infer", &body);
        assert_eq!(status, 200, "{out}");
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    let found = loop {
        let got = {
            let spans = receiver.spans.lock().unwrap();
            ["otel-1", "otel-2"]
                .iter()
                .map(|id| request_and_batch(&spans, id))
                .collect::<Option<Vec<_>>>()
        };
        if let Some(found) = got {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "spans received: {:?}",
            receiver
                .spans
                .lock()
                .unwrap()
                .iter()
                .map(|s| (&s.name, &s.attributes))
                .collect::<Vec<_>>()
        );
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
    };
    for (request, batch) in &found {
        assert_eq!(attr(request, "model"), Some("mlp"));
        assert_eq!(attr(request, "protocol"), Some("http"));
        assert_eq!(attr(batch, "model"), Some("model 'mlp' version 1"));
    }
    drop(server);
}
