use super::*;
use crate::inference::model_infer_request::InferRequestedOutputTensor;
use crate::inference::{InferParameter, InferTensorContents, ModelInferRequest};
use half::f16;
use prost::Message;

fn input(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: shape.to_vec(),
        ..Default::default()
    }
}

fn typed(name: &str, datatype: &str, shape: &[i64], c: InferTensorContents) -> InferInputTensor {
    InferInputTensor {
        contents: Some(c),
        ..input(name, datatype, shape)
    }
}

fn uint(v: u64) -> InferParameter {
    InferParameter {
        parameter_choice: Some(ParameterChoice::Uint64Param(v)),
    }
}

#[test]
fn raw_inputs_are_zero_copy() {
    let x = Tensor::from_vec("x", vec![1, 3], &[1.0f32, 2.0, 3.0]);
    let h = Tensor::from_vec("h", vec![2], &[f16::from_f32(0.5), f16::from_f32(-1.0)]);
    let s = Tensor::from_strings("s", vec![2], &["ab", ""]);
    let req = ModelInferRequest {
        model_name: "m".into(),
        id: "7".into(),
        inputs: vec![
            input("x", "FP32", &[1, 3]),
            input("h", "FP16", &[2]),
            input("s", "BYTES", &[2]),
        ],
        outputs: vec![InferRequestedOutputTensor {
            name: "y".into(),
            ..Default::default()
        }],
        raw_input_contents: vec![x.data.clone(), h.data.clone(), s.data.clone()],
        ..Default::default()
    };
    let r = request_from_grpc(req).unwrap();
    assert_eq!(r.request.inputs(), vec![x.clone(), h, s]);
    assert_eq!(
        r.request.inputs()[0].data.as_ptr(),
        x.data.as_ptr(),
        "raw data are shared"
    );
    assert_eq!(r.request.id.as_deref(), Some("7"));
    assert_eq!(
        r.outputs,
        vec![RequestedOutput {
            name: "y".into(),
            binary_data: None,
            shared_memory: None,
            classification: None,
        }]
    );
    assert_eq!(
        (
            r.request.priority,
            r.request.timeout.map(|t| t.as_micros() as u64),
            r.binary_data_output
        ),
        (None, None, false)
    );
}

#[test]
fn raw_inputs_survive_the_wire() {
    let x = Tensor::from_vec("x", vec![4], &[1i64, -2, 3, -4]);
    let req = ModelInferRequest {
        inputs: vec![input("x", "INT64", &[4])],
        raw_input_contents: vec![x.data.clone()],
        ..Default::default()
    };
    let wire = Bytes::from(req.encode_to_vec());
    let decoded = ModelInferRequest::decode(wire.clone()).unwrap();
    let r = request_from_grpc(decoded).unwrap();
    assert_eq!(r.request.inputs(), vec![x]);
    assert!(
        wire.as_ptr_range()
            .contains(&r.request.inputs()[0].data.as_ptr()),
        "decoded without a copy"
    );
}

#[test]
fn typed_contents_of_every_type() {
    let c = |f: fn(&mut InferTensorContents)| {
        let mut c = InferTensorContents::default();
        f(&mut c);
        c
    };
    let cases: Vec<(InferInputTensor, Tensor)> = vec![
        (
            typed(
                "a",
                "BOOL",
                &[2],
                c(|c| c.bool_contents = vec![true, false]),
            ),
            Tensor::from_vec("a", vec![2], &[true, false]),
        ),
        (
            typed("a", "UINT8", &[2], c(|c| c.uint_contents = vec![0, 255])),
            Tensor::from_vec("a", vec![2], &[0u8, 255]),
        ),
        (
            typed("a", "UINT16", &[1], c(|c| c.uint_contents = vec![65535])),
            Tensor::from_vec("a", vec![1], &[65535u16]),
        ),
        (
            typed("a", "UINT32", &[1], c(|c| c.uint_contents = vec![u32::MAX])),
            Tensor::from_vec("a", vec![1], &[u32::MAX]),
        ),
        (
            typed(
                "a",
                "UINT64",
                &[1],
                c(|c| c.uint64_contents = vec![u64::MAX]),
            ),
            Tensor::from_vec("a", vec![1], &[u64::MAX]),
        ),
        (
            typed("a", "INT8", &[2], c(|c| c.int_contents = vec![-128, 127])),
            Tensor::from_vec("a", vec![2], &[-128i8, 127]),
        ),
        (
            typed("a", "INT16", &[1], c(|c| c.int_contents = vec![-32768])),
            Tensor::from_vec("a", vec![1], &[-32768i16]),
        ),
        (
            typed("a", "INT32", &[1], c(|c| c.int_contents = vec![i32::MIN])),
            Tensor::from_vec("a", vec![1], &[i32::MIN]),
        ),
        (
            typed("a", "INT64", &[1], c(|c| c.int64_contents = vec![i64::MIN])),
            Tensor::from_vec("a", vec![1], &[i64::MIN]),
        ),
        (
            typed(
                "a",
                "FP32",
                &[2, 1],
                c(|c| c.fp32_contents = vec![0.1, -2.0]),
            ),
            Tensor::from_vec("a", vec![2, 1], &[0.1f32, -2.0]),
        ),
        (
            typed("a", "FP64", &[1], c(|c| c.fp64_contents = vec![1e300])),
            Tensor::from_vec("a", vec![1], &[1e300f64]),
        ),
        (
            typed(
                "a",
                "BYTES",
                &[2],
                c(|c| c.bytes_contents = vec![b"xy".to_vec(), vec![0xff]]),
            ),
            Tensor::from_strings("a", vec![2], &[&b"xy"[..], &[0xff]]),
        ),
    ];
    for (inp, want) in cases {
        let req = ModelInferRequest {
            inputs: vec![inp],
            ..Default::default()
        };
        let r = request_from_grpc(req).unwrap();
        assert_eq!(r.request.inputs(), vec![want.clone()], "{}", want.dtype);
    }
}

fn err(req: ModelInferRequest) -> String {
    request_from_grpc(req).unwrap_err().message
}

#[test]
fn typed_content_errors_name_the_input() {
    let fp32 = |n: usize| InferTensorContents {
        fp32_contents: vec![0.0; n],
        ..Default::default()
    };
    let m = err(ModelInferRequest {
        inputs: vec![typed("x", "FP32", &[1, 256], fp32(255))],
        ..Default::default()
    });
    assert_eq!(
        m,
        "expected 256 elements for inference input 'x', got 255 (shape [1,256]) in contents.fp32_contents"
    );
    let m = err(ModelInferRequest {
        inputs: vec![input("x", "FP32", &[2])],
        ..Default::default()
    });
    assert_eq!(
        m,
        "expected 2 elements for inference input 'x', got 0 (shape [2]) in contents.fp32_contents"
    );
    let m = err(ModelInferRequest {
        inputs: vec![typed("h", "FP16", &[1], fp32(1))],
        ..Default::default()
    });
    assert_eq!(m, "input 'h': FP16 data must be sent in raw_input_contents");
    let m = err(ModelInferRequest {
        inputs: vec![typed(
            "i",
            "INT8",
            &[1],
            InferTensorContents {
                int_contents: vec![300],
                ..Default::default()
            },
        )],
        ..Default::default()
    });
    assert_eq!(m, "input 'i': value 300 is out of range for INT8");
    let m = err(ModelInferRequest {
        inputs: vec![input("x", "FLOAT", &[1])],
        ..Default::default()
    });
    assert_eq!(m, "input 'x': unknown datatype 'FLOAT'");
}

#[test]
fn raw_content_errors_name_the_input() {
    let raw = Bytes::from(vec![0u8; 12]);
    let m = err(ModelInferRequest {
        inputs: vec![input("x", "FP32", &[4])],
        raw_input_contents: vec![raw.clone()],
        ..Default::default()
    });
    assert_eq!(
        m,
        "input byte size mismatch for input 'x'. Expected 16, got 12 (raw_input_contents, shape [4] of FP32)"
    );
    let m = err(ModelInferRequest {
        inputs: vec![input("x", "FP32", &[3]), input("y", "FP32", &[3])],
        raw_input_contents: vec![raw.clone()],
        ..Default::default()
    });
    assert_eq!(m, "raw_input_contents has 1 entries for 2 inputs");
    let mixed = typed(
        "x",
        "FP32",
        &[3],
        InferTensorContents {
            fp32_contents: vec![1.0, 2.0, 3.0],
            ..Default::default()
        },
    );
    let m = err(ModelInferRequest {
        inputs: vec![mixed],
        raw_input_contents: vec![raw],
        ..Default::default()
    });
    assert!(
        m.starts_with("contents field must not be specified when using raw_input_contents for 'x' for model '"),
        "{m}"
    );
    let m = err(ModelInferRequest {
        inputs: vec![input("s", "BYTES", &[2])],
        raw_input_contents: vec![Tensor::from_strings("s", vec![1], &["a"]).data],
        ..Default::default()
    });
    assert_eq!(
        m,
        "expected 2 string elements for inference input 's', got 1 (shape [2])"
    );
}

#[test]
fn priority_and_timeout_parameters() {
    let mut req = ModelInferRequest::default();
    req.parameters.insert("priority".into(), uint(3));
    req.parameters.insert(
        "timeout".into(),
        InferParameter {
            parameter_choice: Some(ParameterChoice::Int64Param(2500)),
        },
    );
    req.parameters.insert(
        "unknown".into(),
        InferParameter {
            parameter_choice: Some(ParameterChoice::StringParam("x".into())),
        },
    );
    let r = request_from_grpc(req.clone()).unwrap();
    assert_eq!(
        (
            r.request.priority,
            r.request.timeout.map(|t| t.as_micros() as u64)
        ),
        (Some(3), Some(2500))
    );

    req.parameters.insert("priority".into(), uint(0));
    assert_eq!(
        request_from_grpc(req.clone()).unwrap().request.priority,
        None
    );

    req.parameters.insert(
        "priority".into(),
        InferParameter {
            parameter_choice: Some(ParameterChoice::StringParam("high".into())),
        },
    );
    assert_eq!(
        err(req.clone()),
        "parameters.priority: expected a non-negative int64_param or uint64_param, got string_param \"high\""
    );
    req.parameters.insert(
        "priority".into(),
        InferParameter {
            parameter_choice: Some(ParameterChoice::Int64Param(-1)),
        },
    );
    assert!(err(req).starts_with("parameters.priority: "));
}

#[test]
fn response_uses_raw_output_contents() {
    let y = Tensor::from_vec("y", vec![1, 2], &[0.5f32, 1.5]);
    let s = Tensor::from_strings("s", vec![1], &["z"]);
    let resp = response_to_grpc(
        "m",
        "3",
        Some("id-1"),
        &[(y.clone(), Delivery::Inline), (s.clone(), Delivery::Inline)],
    );
    assert_eq!(
        (
            resp.model_name.as_str(),
            resp.model_version.as_str(),
            resp.id.as_str()
        ),
        ("m", "3", "id-1")
    );
    assert_eq!(resp.outputs.len(), 2);
    assert_eq!(resp.outputs[0].name, "y");
    assert_eq!(resp.outputs[0].datatype, "FP32");
    assert_eq!(resp.outputs[0].shape, vec![1, 2]);
    assert!(resp.outputs[0].contents.is_none());
    assert_eq!(resp.outputs[1].datatype, "BYTES");
    assert_eq!(resp.raw_output_contents, vec![y.data.clone(), s.data]);
    assert_eq!(resp.raw_output_contents[0].as_ptr(), y.data.as_ptr());
    let none = response_to_grpc("m", "1", None, &[]);
    assert_eq!(none.id, "");
}

#[test]
fn field_numbers_match_the_protocol() {
    // Tag bytes are (field number << 3) | wire type.
    let p = uint(5).encode_to_vec();
    assert_eq!(p, vec![5 << 3, 5], "InferParameter.uint64_param = 5");
    let d = InferParameter {
        parameter_choice: Some(ParameterChoice::DoubleParam(0.0)),
    };
    assert_eq!(
        d.encode_to_vec()[0],
        4 << 3 | 1,
        "InferParameter.double_param = 4"
    );
    let req = ModelInferRequest {
        raw_input_contents: vec![Bytes::from_static(b"a")],
        ..Default::default()
    };
    assert_eq!(
        req.encode_to_vec(),
        vec![7 << 3 | 2, 1, b'a'],
        "raw_input_contents = 7"
    );
    let resp = pb::ModelInferResponse {
        raw_output_contents: vec![Bytes::new()],
        ..Default::default()
    };
    assert_eq!(
        resp.encode_to_vec(),
        vec![6 << 3 | 2, 0],
        "raw_output_contents = 6"
    );
    let cfg = pb::ModelConfig {
        backend: "b".into(),
        ..Default::default()
    };
    assert_eq!(
        cfg.encode_to_vec(),
        vec![0x8a, 0x01, 1, b'b'],
        "ModelConfig.backend = 17"
    );
    let st = pb::ModelStatistics {
        inference_stats: Some(Default::default()),
        ..Default::default()
    };
    assert_eq!(
        st.encode_to_vec(),
        vec![6 << 3 | 2, 0],
        "ModelStatistics.inference_stats = 6"
    );
    let db = pb::ModelDynamicBatching {
        default_priority_level: 1,
        ..Default::default()
    };
    assert_eq!(
        db.encode_to_vec(),
        vec![5 << 3, 1],
        "default_priority_level = 5"
    );
    assert_eq!(pb::DataType::TypeString as i32, 13);
    assert_eq!(pb::DataType::TypeBf16 as i32, 14);
}

/// The generated server and client carry the names the server crate and tests use.
#[allow(dead_code)]
fn generated_service_names<T>()
where
    T: crate::inference::grpc_inference_service_server::GrpcInferenceService,
{
    use crate::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
    use crate::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
    let _ = GrpcInferenceServiceServer::<T>::new;
    let _ = GrpcInferenceServiceClient::<tonic::transport::Channel>::connect::<String>;
}
