//! What clients trip over: bodies that are not one JSON object, serde's Rust type names in
//! messages, lowercase datatypes, and non-finite numbers (valid JSON out, the same strings in).

use super::*;
use crate::request::Delivery;
use bytes::Bytes;
use kiln_core::{ErrorCode, Tensor};
use serde_json::Value;

fn decode_err(json: &str) -> String {
    let e = decode_request(Bytes::from(json.to_string()), None).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidArgument, "{e}");
    e.message
}

/// No message names a Rust type or serde's words for JSON values.
fn assert_protocol_terms(m: &str) {
    for word in [
        "struct",
        "RequestJson",
        "InputJson",
        "OutputJson",
        "i64",
        "u64",
        "usize",
        "sequence",
        "map,",
    ] {
        assert!(!m.contains(word), "{word:?} in {m:?}");
    }
}

#[test]
fn only_a_json_object_is_a_request() {
    for body in ["[]", "[{}]", r#"[null, {}, [], []]"#, "1", r#""x""#, "null"] {
        let m = decode_err(body);
        assert!(
            m.starts_with("malformed json at line 1 column"),
            "{body}: {m}"
        );
        assert!(m.contains("expected a JSON object"), "{body}: {m}");
        assert_protocol_terms(&m);
    }
    // an input or output given as an array of its fields is not one either
    let m = decode_err(r#"{"inputs":[["x",[1],"FP32",null,[1]]]}"#);
    assert!(
        m.contains("inputs[0]: invalid type: array, expected a JSON object"),
        "{m}"
    );
    let m = decode_err(r#"{"inputs":[],"outputs":[["y"]]}"#);
    assert!(
        m.contains("outputs[0]: invalid type: array, expected a JSON object"),
        "{m}"
    );
}

#[test]
fn messages_never_name_rust_types() {
    for body in [
        r#""inputs""#,
        r#"{"inputs":[5]}"#,
        r#"{"inputs":[{"name":"x","shape":[1.5]}]}"#,
        r#"{"inputs":[{"name":"x","shape":["a"]}]}"#,
        r#"{"inputs":[{"name":"x","shape":{}}]}"#,
        r#"{"inputs":{}}"#,
        r#"{"outputs":[7]}"#,
        r#"{"parameters":[1]}"#,
        r#"{"id":[1]}"#,
    ] {
        let m = decode_err(body);
        assert_protocol_terms(&m);
    }
    let m = decode_err(r#"{"inputs":[{"name":"x","shape":[1.5]}]}"#);
    assert!(
        m.contains("inputs[0].shape[0]: invalid type: floating point `1.5`, expected an integer"),
        "{m}"
    );
    let m = decode_err(r#"{"inputs":5}"#);
    assert!(
        m.contains("inputs: invalid type: integer `5`, expected an array"),
        "{m}"
    );
}

#[test]
fn object_bodies_still_decode_with_their_positions() {
    let r = decode_request(
        Bytes::from_static(br#"{"id":"a","inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1,2]}],"outputs":[{"name":"y"}]}"#),
        None,
    )
    .unwrap();
    assert_eq!(r.request.id.as_deref(), Some("a"));
    assert_eq!(
        r.request.inputs()[0].to_vec::<f32>().unwrap(),
        vec![1.0, 2.0]
    );
    assert_eq!(r.outputs[0].name, "y");
    let m = decode_err(r#"{"inputs":[{"name":"x",}]}"#);
    assert_eq!(
        m,
        "malformed json at line 1 column 24: inputs[0]: trailing comma"
    );
}

#[test]
fn datatypes_are_spelled_in_capitals() {
    for dt in ["fp32", "Fp32", "int64", "bytes", "TYPE_FP32"] {
        let m = decode_err(&format!(
            r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"{dt}","data":[1]}}]}}"#
        ));
        assert!(
            m.starts_with(&format!("input 'x': unknown datatype '{dt}'")),
            "{m}"
        );
    }
    let m = decode_err(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"fp32","data":[1]}]}"#);
    assert!(
        m.ends_with("(datatypes are spelled in capitals: 'FP32')"),
        "{m}"
    );
}

#[test]
fn non_finite_outputs_are_valid_json_and_read_back() {
    let t = Tensor::from_vec(
        "y",
        vec![4],
        &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -0.5],
    );
    let d = Tensor::from_vec("d", vec![2], &[f64::NAN, f64::NEG_INFINITY]);
    let h = Tensor::from_vec("h", vec![1], &[half::f16::INFINITY]);
    let (body, _) = encode_response(
        "m",
        "1",
        None,
        &[
            (t, Delivery::Inline),
            (d, Delivery::Inline),
            (h, Delivery::Inline),
        ],
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&body).expect("strict JSON");
    assert_eq!(
        v["outputs"][0]["data"],
        serde_json::json!(["NaN", "Infinity", "-Infinity", -0.5])
    );
    assert_eq!(
        v["outputs"][1]["data"],
        serde_json::json!(["NaN", "-Infinity"])
    );
    assert_eq!(v["outputs"][2]["data"], serde_json::json!(["Infinity"]));

    // the same strings are accepted on input, for every float type
    for dt in ["FP16", "FP32", "FP64"] {
        let r = decode_request(
            Bytes::from(format!(
                r#"{{"inputs":[{{"name":"x","shape":[4],"datatype":"{dt}","data":["NaN","Infinity","-Infinity",2]}}]}}"#
            )),
            None,
        )
        .unwrap();
        let got: Vec<f64> = match dt {
            "FP16" => r.request.inputs()[0]
                .to_vec::<half::f16>()
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect(),
            "FP32" => r.request.inputs()[0]
                .to_vec::<f32>()
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect(),
            _ => r.request.inputs()[0].to_vec::<f64>().unwrap(),
        };
        assert!(got[0].is_nan(), "{dt}");
        assert_eq!(&got[1..], &[f64::INFINITY, f64::NEG_INFINITY, 2.0], "{dt}");
    }
    // other strings, and the strings on integer inputs, are refused
    let m = decode_err(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["nan"]}]}"#);
    assert!(m.starts_with("input 'x': expected a number"), "{m}");
    let m =
        decode_err(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":["NaN"]}]}"#);
    assert!(m.starts_with("input 'x': expected an integer"), "{m}");
}
