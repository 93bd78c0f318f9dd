use super::*;
use crate::request::Delivery;
use bytes::Bytes;
use half::f16;
use kiln_core::{DataType, ErrorCode, Tensor};
use serde_json::{json, Value};

fn decode(json: &str) -> kiln_core::Result<WireRequest> {
    decode_request(Bytes::from(json.to_string()), None)
}

fn decode_err(json: &str) -> String {
    let e = decode(json).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
    e.message
}

/// A body of `json` followed by `bin`, and the JSON length.
fn with_binary(json: &Value, bin: &[u8]) -> (Bytes, usize) {
    let mut body = serde_json::to_vec(json).unwrap();
    let n = body.len();
    body.extend_from_slice(bin);
    (Bytes::from(body), n)
}

fn binary_err(json: &Value, bin: &[u8]) -> String {
    let (body, n) = with_binary(json, bin);
    decode_request(body, Some(n)).unwrap_err().message
}

/// One tensor of every data type, with extreme values where the type has them.
fn samples() -> Vec<Tensor> {
    let h = |v: f32| f16::from_f32(v);
    vec![
        Tensor::from_vec("bool", vec![3], &[true, false, true]),
        Tensor::from_vec("u8", vec![3], &[0u8, 255, 7]),
        Tensor::from_vec("u16", vec![2], &[0u16, u16::MAX]),
        Tensor::from_vec("u32", vec![2], &[0u32, u32::MAX]),
        Tensor::from_vec("u64", vec![2], &[0u64, u64::MAX]),
        Tensor::from_vec("i8", vec![2], &[i8::MIN, i8::MAX]),
        Tensor::from_vec("i16", vec![2], &[i16::MIN, i16::MAX]),
        Tensor::from_vec("i32", vec![2], &[i32::MIN, i32::MAX]),
        Tensor::from_vec("i64", vec![2], &[i64::MIN, i64::MAX]),
        Tensor::from_vec("f16", vec![4], &[h(0.1), h(-2.5), h(65504.0), h(6e-8)]),
        Tensor::from_vec("f32", vec![2, 2], &[0.1f32, -1e-30, 3.4e38, 1.0]),
        Tensor::from_vec("f64", vec![3], &[0.1f64, 1e300, -5e-324]),
        Tensor::from_strings("bytes", vec![3], &["a", "", "h\u{e9}llo \"q\"\n\u{1}"]),
    ]
}

/// Turns a response body's JSON into a request carrying its outputs as inputs.
fn response_to_request(body: &[u8], header_len: Option<usize>) -> (Bytes, Option<usize>) {
    let n = header_len.unwrap_or(body.len());
    let mut v: Value = serde_json::from_slice(&body[..n]).unwrap();
    let outputs = v["outputs"].take();
    let (body, n2) = with_binary(&json!({ "inputs": outputs }), &body[n..]);
    (body, header_len.map(|_| n2))
}

#[test]
fn flat_and_nested_json_agree() {
    let flat = decode(
        r#"{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","data":[1,2,3,4,5,6.5]}]}"#,
    )
    .unwrap();
    let nested = decode(
        r#"{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","data":[[1,2,3],[4,5,6.5]]}]}"#,
    )
    .unwrap();
    assert_eq!(flat.request.inputs(), nested.request.inputs());
    let t = &flat.request.inputs()[0];
    assert_eq!(
        t.to_vec::<f32>().unwrap(),
        vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5]
    );
    assert_eq!(flat.request.id, None);
    assert!(flat.outputs.is_empty());
}

#[test]
fn every_dtype_round_trips_through_json() {
    for t in samples() {
        let (body, header) =
            encode_response("m", "1", None, &[(t.clone(), Delivery::Inline)]).unwrap();
        assert_eq!(header, None);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["outputs"][0].get("parameters").is_none(), "{v}");
        let (req_body, _) = response_to_request(&body, None);
        let got = decode_request(req_body, None).unwrap();
        assert_eq!(got.request.inputs(), vec![t.clone()], "{}", t.dtype);
    }
}

#[test]
fn every_dtype_round_trips_through_binary() {
    let outputs: Vec<(Tensor, Delivery)> = samples()
        .into_iter()
        .map(|t| (t, Delivery::Binary))
        .collect();
    let (body, header) = encode_response("m", "1", Some("r1"), &outputs).unwrap();
    let n = header.unwrap();
    let bin: Vec<u8> = outputs.iter().flat_map(|(t, _)| t.data.to_vec()).collect();
    assert_eq!(
        &body[n..],
        &bin[..],
        "the header length points at the binary part"
    );
    let v: Value = serde_json::from_slice(&body[..n]).unwrap();
    assert_eq!(v["id"], "r1");
    assert_eq!(
        v["outputs"][0]["parameters"],
        json!({"binary_data_size": 3})
    );
    assert!(v["outputs"][0].get("data").is_none());

    let (req_body, header) = response_to_request(&body, header);
    let got = decode_request(req_body.clone(), header).unwrap();
    let want: Vec<Tensor> = outputs.into_iter().map(|(t, _)| t).collect();
    assert_eq!(got.request.inputs(), want);
    let range = req_body.as_ptr_range();
    for t in got.request.inputs() {
        assert!(
            range.contains(&t.data.as_ptr()),
            "{} is a slice of the body",
            t.name
        );
    }
}

#[test]
fn binary_inputs_mixed_with_json_inputs() {
    let a = Tensor::from_vec("a", vec![2], &[1.5f32, -2.0]);
    let c = Tensor::from_strings("c", vec![2], &["xy", "z"]);
    let json = json!({
        "id": "42",
        "parameters": {"priority": 2, "timeout": 1500, "binary_data_output": true, "other": "x"},
        "inputs": [
            {"name": "a", "shape": [2], "datatype": "FP32",
             "parameters": {"binary_data_size": 8}},
            {"name": "b", "shape": [1, 2], "datatype": "INT64", "data": [[7, -8]]},
            {"name": "c", "shape": [2], "datatype": "BYTES",
             "parameters": {"binary_data_size": c.data.len()}},
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": false}}, {"name": "z"}],
    });
    let mut bin = a.data.to_vec();
    bin.extend_from_slice(&c.data);
    let (body, n) = with_binary(&json, &bin);
    let r = decode_request(body, Some(n)).unwrap();
    assert_eq!(r.request.id.as_deref(), Some("42"));
    assert_eq!(r.request.priority, Some(2));
    assert_eq!(r.request.timeout.map(|t| t.as_micros() as u64), Some(1500));
    assert!(r.binary_data_output);
    assert_eq!(r.request.inputs()[0], a);
    assert_eq!(
        r.request.inputs()[1],
        Tensor::from_vec("b", vec![1, 2], &[7i64, -8])
    );
    assert_eq!(r.request.inputs()[2], c);
    assert_eq!(
        r.outputs,
        vec![
            RequestedOutput {
                name: "y".into(),
                binary_data: Some(false),
                shared_memory: None,
                classification: None,
            },
            RequestedOutput {
                name: "z".into(),
                binary_data: None,
                shared_memory: None,
                classification: None,
            },
        ]
    );
    assert!(!r.output_is_binary("y"));
    assert!(r.output_is_binary("z"));
}

#[test]
fn bytes_from_json_strings() {
    let r = decode(
        r#"{"inputs":[{"name":"s","shape":[2],"datatype":"BYTES","data":["ab","\u00e9"]}]}"#,
    )
    .unwrap();
    assert_eq!(
        r.request.inputs()[0],
        Tensor::from_strings("s", vec![2], &["ab", "\u{e9}"])
    );
}

#[test]
fn fp16_from_json_numbers() {
    let r = decode(r#"{"inputs":[{"name":"h","shape":[3],"datatype":"FP16","data":[0.5,-1,2]}]}"#)
        .unwrap();
    let want: Vec<f16> = [0.5f32, -1.0, 2.0]
        .iter()
        .map(|&v| f16::from_f32(v))
        .collect();
    assert_eq!(r.request.inputs()[0].to_vec::<f16>().unwrap(), want);
}

#[test]
fn zero_priority_and_timeout_mean_defaults() {
    let r = decode(r#"{"parameters":{"priority":0,"timeout":0},"inputs":[]}"#).unwrap();
    assert_eq!(
        (
            r.request.priority,
            r.request.timeout.map(|t| t.as_micros() as u64)
        ),
        (None, None)
    );
}

#[test]
fn element_count_errors_name_the_input() {
    let data: Vec<f32> = vec![0.0; 255];
    let json =
        json!({"inputs": [{"name": "x", "shape": [1, 256], "datatype": "FP32", "data": data}]});
    let m = decode_err(&json.to_string());
    assert_eq!(
        m,
        "expected 256 elements for inference input 'x', got 255 (shape [1,256])"
    );
    let m = decode_err(
        r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"INT32","data":[[1,2],[3]]}]}"#,
    );
    assert_eq!(
        m,
        "expected 4 elements for inference input 'x', got 3 (shape [2,2])"
    );
    let m = decode_err(r#"{"inputs":[{"name":"x","shape":[-1],"datatype":"INT32","data":[1]}]}"#);
    assert!(m.contains("input 'x'") && m.contains("negative"), "{m}");
}

#[test]
fn value_errors_name_the_input() {
    let cases = [
        (
            "INT8",
            "[300]",
            "input 'x': value 300 is out of range for INT8",
        ),
        (
            "UINT8",
            "[-1]",
            "input 'x': value -1 is out of range for UINT8",
        ),
        (
            "INT32",
            "[1.5]",
            "input 'x': expected an integer for INT32, got 1.5",
        ),
        (
            "INT64",
            "[true]",
            "input 'x': expected an integer for INT64, got true",
        ),
        (
            "FP32",
            "[\"1\"]",
            "input 'x': expected a number for FP32, got a string (the strings a float takes \
             are \"NaN\", \"Infinity\" and \"-Infinity\")",
        ),
        (
            "FP32",
            "[1e300]",
            "input 'x': value 1e300 is out of range for FP32",
        ),
        (
            "FP16",
            "[70000]",
            "input 'x': value 70000 is out of range for FP16",
        ),
        (
            "BOOL",
            "[1]",
            "input 'x': expected true or false for BOOL, got 1",
        ),
        (
            "BYTES",
            "[1]",
            "input 'x': expected a string for BYTES, got 1",
        ),
        (
            "FP64",
            "[null]",
            "input 'x': expected a number for FP64, got null",
        ),
        (
            "FP64",
            "[{}]",
            "input 'x': expected a number for FP64, got an object",
        ),
    ];
    for (dtype, data, want) in cases {
        let json = format!(
            r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"{dtype}","data":{data}}}]}}"#
        );
        assert_eq!(decode_err(&json), want, "{dtype} {data}");
    }
}

#[test]
fn malformed_json_reports_the_position() {
    let m = decode_err(r#"{"inputs":[{"name":"x",}]}"#);
    assert_eq!(
        m,
        "malformed json at line 1 column 24: inputs[0]: trailing comma"
    );
    let m = decode_err(r#"{"id": 5, "inputs": []}"#);
    assert!(
        m.starts_with("malformed json at line 1 column 8: id: invalid type"),
        "{m}"
    );
    let m = decode_err(r#"{"inputs":[{"name":"x","shape":[1.5]}]}"#);
    assert!(m.contains("inputs[0].shape[0]: invalid type"), "{m}");
    let m = decode_err(r#"{"inputs":[]} x"#);
    assert!(
        m.starts_with("malformed json at line 1 column 15: trailing characters"),
        "{m}"
    );
    let m = decode_err("");
    assert!(m.starts_with("malformed json at line 1 column 0"), "{m}");
}

#[test]
fn missing_and_unknown_fields() {
    let m = decode_err(r#"{"inputs":[{"shape":[1],"datatype":"FP32","data":[1]}]}"#);
    assert_eq!(m, "inputs[0]: missing 'name'");
    let m = decode_err(r#"{"inputs":[{"name":"x","shape":[1],"data":[1]}]}"#);
    assert_eq!(m, "input 'x': missing 'datatype'");
    let m = decode_err(r#"{"inputs":[{"name":"x","datatype":"FP32","data":[1]}]}"#);
    assert_eq!(m, "input 'x': missing 'shape'");
    let m = decode_err(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FLOAT","data":[1]}]}"#);
    assert_eq!(m, "input 'x': unknown datatype 'FLOAT'");
    let m = decode_err(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#);
    assert_eq!(
        m,
        "input 'x': has neither 'data' nor parameters.binary_data_size"
    );
    let m = decode_err(
        r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]},
                      {"name":"x","shape":[1],"datatype":"FP32","data":[2]}]}"#,
    );
    assert_eq!(m, "input 'x' appears twice");
    // Unknown fields and parameters are ignored, as Triton ignores them.
    decode(r#"{"extra":1,"parameters":{"sequence_id":3},"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1],"junk":{}}]}"#)
        .unwrap();
}

#[test]
fn parameter_type_errors_name_the_parameter() {
    let m = decode_err(r#"{"parameters":{"priority":"high"},"inputs":[]}"#);
    assert_eq!(
        m,
        "parameters.priority: expected an unsigned integer, got \"high\""
    );
    let m = decode_err(r#"{"parameters":{"timeout":-5},"inputs":[]}"#);
    assert_eq!(
        m,
        "parameters.timeout: expected an unsigned integer, got -5"
    );
    let m = decode_err(r#"{"parameters":{"binary_data_output":1},"inputs":[]}"#);
    assert_eq!(
        m,
        "parameters.binary_data_output: expected true or false, got 1"
    );
    let m =
        decode_err(r#"{"inputs":[],"outputs":[{"name":"y","parameters":{"binary_data":"yes"}}]}"#);
    assert_eq!(
        m,
        "output 'y': parameters.binary_data: expected true or false, got \"yes\""
    );
    let r = decode(r#"{"inputs":[],"outputs":[{"name":"y","parameters":{"classification":3}}]}"#)
        .unwrap();
    assert_eq!(r.outputs[0].classification, Some(3));
    let m =
        decode_err(r#"{"inputs":[],"outputs":[{"name":"y","parameters":{"classification":-1}}]}"#);
    assert_eq!(
        m,
        "output 'y': parameters.classification: expected an unsigned integer, got -1"
    );
}

#[test]
fn binary_part_errors() {
    let x = |size: u64| {
        json!({"inputs": [{"name": "x", "shape": [256], "datatype": "FP32",
                           "parameters": {"binary_data_size": size}}]})
    };
    assert_eq!(
        binary_err(&x(1024), &[0; 512]),
        "input 'x': binary_data_size 1024 runs past the end of the body (512 bytes remain)"
    );
    assert_eq!(
        binary_err(&x(1024), &[0; 1028]),
        "binary data: 4 bytes follow the last binary input"
    );
    assert_eq!(
        binary_err(&x(8), &[0; 8]),
        "input byte size mismatch for input 'x'. Expected 1024, got 8 (binary_data_size, shape [256] of FP32)"
    );
    let (body, n) = with_binary(&x(1024), &[0; 1024]);
    assert!(decode_request(body.clone(), Some(n)).is_ok());
    let m = decode_request(body.clone(), Some(body.len() + 1))
        .unwrap_err()
        .message;
    assert!(m.starts_with("inference-header-content-length"), "{m}");
    let m = decode_request(body, None).unwrap_err().message;
    assert!(m.starts_with("malformed json"), "{m}");
    let m = decode_err(&x(0).to_string());
    assert!(
        m.contains("input 'x': parameters.binary_data_size is set but the request has no"),
        "{m}"
    );

    let both = json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1],
                                  "parameters": {"binary_data_size": 4}}]});
    assert_eq!(
        binary_err(&both, &[0; 4]),
        "input 'x': has both 'data' and parameters.binary_data_size"
    );
    let bad_size = json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                                      "parameters": {"binary_data_size": "4"}}]});
    assert_eq!(
        binary_err(&bad_size, &[0; 4]),
        "input 'x': parameters.binary_data_size: expected an unsigned integer, got \"4\""
    );
    // A body with the header and no binary inputs at all must end with the JSON.
    let none = json!({"inputs": []});
    assert_eq!(
        binary_err(&none, &[1]),
        "binary data: 1 bytes follow the last binary input"
    );
}

#[test]
fn binary_bytes_inputs_are_checked() {
    let s = |size: usize| {
        json!({"inputs": [{"name": "s", "shape": [2], "datatype": "BYTES",
                           "parameters": {"binary_data_size": size}}]})
    };
    let one = Tensor::from_strings("s", vec![1], &["abc"]);
    assert_eq!(
        binary_err(&s(one.data.len()), &one.data),
        "expected 2 string elements for inference input 's', got 1 (shape [2])"
    );
    let m = binary_err(&s(5), b"\x09\0\0\0a");
    assert!(
        m.starts_with("input 's': binary_data_size is not a sequence"),
        "{m}"
    );
}

#[test]
fn response_json_shape() {
    let t = Tensor::from_vec("y", vec![1, 3], &[1.0f32, f32::NAN, f32::NEG_INFINITY]);
    let (body, header) = encode_response("m\"1", "2", None, &[(t, Delivery::Inline)]).unwrap();
    assert_eq!(header, None);
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        r#"{"model_name":"m\"1","model_version":"2","outputs":[{"name":"y","datatype":"FP32","shape":[1,3],"data":[1.0,"NaN","-Infinity"]}]}"#
    );
}

#[test]
fn response_with_json_and_binary_outputs() {
    let a = Tensor::from_vec("a", vec![2], &[1i32, 2]);
    let b = Tensor::from_vec("b", vec![3], &[0.25f64, 0.5, 0.75]);
    let c = Tensor::from_strings("c", vec![1], &[b"\xff\xfe"]);
    let outputs = [
        (a, Delivery::Inline),
        (b.clone(), Delivery::Binary),
        (c.clone(), Delivery::Binary),
    ];
    let (body, header) = encode_response("m", "1", Some("id"), &outputs).unwrap();
    let n = header.unwrap();
    let v: Value = serde_json::from_slice(&body[..n]).unwrap();
    assert_eq!(v["outputs"][0]["data"], json!([1, 2]));
    assert!(v["outputs"][0].get("parameters").is_none());
    assert_eq!(v["outputs"][1]["parameters"]["binary_data_size"], 24);
    assert_eq!(v["outputs"][2]["parameters"]["binary_data_size"], 6);
    assert_eq!(&body[n..n + 24], &b.data[..]);
    assert_eq!(&body[n + 24..], &c.data[..]);
}

#[test]
fn non_utf8_bytes_need_binary_data() {
    let c = Tensor::from_strings("c", vec![2], &[&b"ok"[..], b"\xff"]);
    let e = encode_response("m", "1", None, &[(c, Delivery::Inline)]).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(
        e.message
            .starts_with("output 'c': element 1 is not valid UTF-8"),
        "{e}"
    );
    assert!(e.message.contains("binary_data"), "{e}");
}

#[test]
fn malformed_outputs_are_internal_errors() {
    let mut t = Tensor::from_vec("y", vec![2], &[1.0f32, 2.0]);
    t.shape = vec![3];
    let e = encode_response("m", "1", None, &[(t, Delivery::Inline)]).unwrap_err();
    assert_eq!(e.code, ErrorCode::Internal);
    assert_eq!(
        e.message,
        "output 'y': 8 bytes do not fit shape [3] of FP32"
    );
}

#[test]
fn error_body_is_escaped_json() {
    let b = error_body("input 'x': bad \"value\"\n");
    let v: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v, json!({"error": "input 'x': bad \"value\"\n"}));
}

#[test]
fn datatype_names() {
    assert_eq!(DataType::Bytes.as_str(), "BYTES");
    let r = decode(
        r#"{"inputs":[{"name":"x","shape":[],"datatype":"UINT64","data":18446744073709551615}]}"#,
    )
    .unwrap();
    assert_eq!(
        r.request.inputs()[0].to_vec::<u64>().unwrap(),
        vec![u64::MAX]
    );
}

#[test]
fn floats_round_trip_exactly() {
    // A simple generator spreads bit patterns over the whole range of finite values.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let f64s: Vec<f64> = (0..2000)
        .map(|_| f64::from_bits(next()))
        .filter(|v| v.is_finite())
        .chain([0.1 + 0.2, f64::MAX, f64::MIN_POSITIVE, 5e-324, -0.0])
        .collect();
    let f32s: Vec<f32> = (0..2000)
        .map(|_| f32::from_bits(next() as u32))
        .filter(|v| v.is_finite())
        .chain([f32::MAX, f32::MIN_POSITIVE, 1e-45])
        .collect();
    for t in [
        Tensor::from_vec("d", vec![f64s.len() as i64], &f64s),
        Tensor::from_vec("f", vec![f32s.len() as i64], &f32s),
    ] {
        let (body, _) = encode_response("m", "1", None, &[(t.clone(), Delivery::Inline)]).unwrap();
        let (req_body, _) = response_to_request(&body, None);
        let got = decode_request(req_body, None).unwrap();
        assert!(
            got.request.inputs()[0] == t,
            "{} values differ after a json round trip",
            t.dtype
        );
    }
}
