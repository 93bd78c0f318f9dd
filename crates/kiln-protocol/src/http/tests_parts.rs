//! The response body in parts: large binary outputs are shared, not copied, and the parts
//! joined are byte for byte the one-buffer body.

use super::*;
use crate::request::Delivery;
use kiln_core::{DataType, Tensor};

fn fp32(name: &str, n: usize) -> Tensor {
    let values: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let t = Tensor::from_vec(name, vec![n as i64], &values);
    assert_eq!(t.dtype, DataType::Fp32);
    t
}

#[test]
fn large_binary_outputs_share_the_tensors_memory() {
    // small, large, small, inline: the small one after the large one stays in order
    let outputs = vec![
        (fp32("a", 4), Delivery::Binary),
        (fp32("b", 8192), Delivery::Binary),
        (fp32("c", 2), Delivery::Binary),
        (fp32("d", 3), Delivery::Inline),
    ];
    let parts = encode_response_parts("m", "1", Some("r"), &outputs).unwrap();
    assert_eq!(
        parts.tail.len(),
        2,
        "the large output and every binary one after it"
    );
    assert_eq!(
        parts.tail[0].as_ptr(),
        outputs[1].0.data.as_ptr(),
        "the large output is not copied"
    );
    let json_len = parts
        .json_len
        .expect("binary outputs announce the JSON length");
    assert_eq!(
        &parts.head[json_len..],
        &outputs[0].0.data[..],
        "the small leading output follows the JSON"
    );

    let (joined, header) = encode_response("m", "1", Some("r"), &outputs).unwrap();
    assert_eq!(header, Some(json_len));
    assert_eq!(parts.len(), joined.len());
    assert_eq!(parts.clone().into_bytes(), joined);
    let mut want = joined[..json_len].to_vec();
    for i in [0, 1, 2] {
        want.extend_from_slice(&outputs[i].0.data);
    }
    assert_eq!(
        &joined[..],
        &want[..],
        "binary outputs in output order after the JSON"
    );
}

#[test]
fn json_only_and_small_responses_are_one_buffer() {
    let inline = [(fp32("y", 3), Delivery::Inline)];
    let parts = encode_response_parts("m", "1", None, &inline).unwrap();
    assert!(parts.tail.is_empty() && parts.json_len.is_none());

    let small = [(fp32("y", 64), Delivery::Binary)];
    let parts = encode_response_parts("m", "1", None, &small).unwrap();
    assert!(parts.tail.is_empty());
    assert_eq!(parts.len(), parts.json_len.unwrap() + 256);
}
