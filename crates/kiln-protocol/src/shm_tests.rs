//! Unit tests of the shared-memory parameters: they come in pairs, and inputs read from a
//! region are checked against their shape.

use super::*;
use kiln_core::{DataType, Tensor};

fn at(region: &str, offset: u64, byte_size: u64) -> ShmRef {
    ShmRef {
        region: region.into(),
        offset,
        byte_size,
    }
}

#[test]
fn parameters_come_in_pairs() {
    let none = |_: &str| Ok(None::<String>);
    let no_int = |_: &str| Ok(None::<u64>);
    assert_eq!(
        ShmRef::from_params("input 'x'", none, no_int).unwrap(),
        None
    );
    let r = ShmRef::from_params(
        "input 'x'",
        |_| Ok(Some("r".to_string())),
        |k| Ok((k == "shared_memory_byte_size").then_some(16)),
    )
    .unwrap();
    assert_eq!(r, Some(at("r", 0, 16)));
    let e = ShmRef::from_params("input 'x'", |_| Ok(Some("r".to_string())), no_int).unwrap_err();
    assert!(
        e.message
            .contains("needs parameters.shared_memory_byte_size"),
        "{e}"
    );
    let e = ShmRef::from_params("output 'y'", none, |_| Ok(Some(4))).unwrap_err();
    assert!(e
        .message
        .starts_with("output 'y': parameters.shared_memory_byte_size needs"));
}

#[test]
fn filled_inputs_are_checked_against_their_shape() {
    let input = |name: &str| Tensor {
        name: name.into(),
        dtype: DataType::Fp32,
        shape: vec![2],
        data: Bytes::new(),
    };
    let mut req = WireRequest::with_capacity(2, 0);
    req.request
        .push_input(Tensor::from_vec("a", vec![2], &[1f32, 2.0]), "data")
        .unwrap();
    let b = req.request.push_unfilled(input("b"));
    req.shm_inputs.push((b, at("r", 8, 8)));
    let mut asked = Vec::new();
    req.fill_shm_inputs(|r, what| {
        asked.push((r.clone(), what.to_string()));
        Ok(Bytes::from(vec![1u8; r.byte_size as usize]))
    })
    .unwrap();
    assert_eq!(asked, vec![(at("r", 8, 8), "input 'b'".to_string())]);
    assert_eq!(req.request.inputs()[1].data.len(), 8);
    assert!(req.shm_inputs.is_empty());

    let mut req = WireRequest::with_capacity(1, 0);
    let a = req.request.push_unfilled(input("a"));
    req.shm_inputs.push((a, at("r", 0, 4)));
    let e = req
        .fill_shm_inputs(|r, _| Ok(Bytes::from(vec![0u8; r.byte_size as usize])))
        .unwrap_err();
    assert!(
        e.message.contains(
            "input byte size mismatch for input 'a'. Expected 8, got 4 (shared_memory_byte_size"
        ),
        "{e}"
    );
}
