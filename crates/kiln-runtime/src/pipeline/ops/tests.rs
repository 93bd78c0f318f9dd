use super::*;
use proptest::prelude::*;

fn f32s(shape: Vec<i64>, v: &[f32]) -> Tensor {
    Tensor::from_vec("x", shape, v)
}

fn i32s(shape: Vec<i64>, v: &[i32]) -> Tensor {
    Tensor::from_vec("x", shape, v)
}

fn msg(r: Result<impl std::fmt::Debug>) -> String {
    let e = r.expect_err("an error");
    assert_eq!(e.code, kiln_core::ErrorCode::InvalidArgument, "{e}");
    e.to_string()
}

/// Every multi-index of `shape`, row-major.
fn coords(shape: &[i64]) -> Vec<Vec<usize>> {
    let mut out = vec![vec![]];
    for &d in shape {
        out = out
            .into_iter()
            .flat_map(|c| {
                (0..d as usize).map(move |i| {
                    let mut c = c.clone();
                    c.push(i);
                    c
                })
            })
            .collect();
    }
    out
}

fn flat(shape: &[i64], c: &[usize]) -> usize {
    shape
        .iter()
        .zip(c)
        .fold(0, |acc, (&d, &i)| acc * d as usize + i)
}

#[test]
fn topk_orders_descending_ties_by_lower_index_nan_last() {
    let x = f32s(vec![2, 4], &[1.0, 3.0, 3.0, f32::NAN, 0.5, -1.0, 2.0, 2.0]);
    let (ix, v) = topk(&x, 3).unwrap();
    assert_eq!(ix.shape, vec![2, 3]);
    assert_eq!(ix.dtype, DataType::Int64);
    assert!(ix.name.is_empty() && v.name.is_empty());
    assert_eq!(ix.to_vec::<i64>().unwrap(), vec![1, 2, 0, 2, 3, 0]);
    assert_eq!(
        v.to_vec::<f32>().unwrap(),
        vec![3.0, 3.0, 1.0, 2.0, 2.0, 0.5]
    );
    let (ix, _) = topk(&x, 4).unwrap();
    assert_eq!(ix.to_vec::<i64>().unwrap()[..4], [1, 2, 0, 3]);
    let (ix, v) = topk(&x, 0).unwrap();
    assert_eq!((ix.shape, v.shape), (vec![2, 0], vec![2, 0]));
}

#[test]
fn topk_takes_fp16_and_fp64_and_refuses_the_rest() {
    let h: Vec<half::f16> = [1.0f32, 5.0, 2.0]
        .iter()
        .map(|&v| half::f16::from_f32(v))
        .collect();
    let (ix, v) = topk(&Tensor::from_vec("h", vec![3], &h), 2).unwrap();
    assert_eq!(ix.to_vec::<i64>().unwrap(), vec![1, 2]);
    assert_eq!(v.dtype, DataType::Fp16);
    assert_eq!(v.to_vec::<half::f16>().unwrap(), vec![h[1], h[2]]);
    let d = Tensor::from_vec("d", vec![1, 3], &[1.0f64, 1.0 + 1e-12, 0.0]);
    let (ix, _) = topk(&d, 1).unwrap();
    assert_eq!(ix.to_vec::<i64>().unwrap(), vec![1]);
    assert!(msg(topk(&i32s(vec![2], &[1, 2]), 1)).contains("INT32"));
    assert!(msg(topk(&f32s(vec![1, 3], &[1.0; 3]), 4)).contains("k = 4"));
    assert!(msg(topk(&f32s(vec![], &[1.0]), 1)).contains("dimension"));
}

#[test]
fn gather_is_numpy_take_and_names_a_bad_index() {
    let data = i32s(vec![3, 2], &[0, 1, 10, 11, 20, 21]);
    let ix = Tensor::from_vec("i", vec![2, 2], &[2i64, 0, 1, 1]);
    let out = gather(&data, &ix, 0).unwrap();
    assert_eq!(out.shape, vec![2, 2, 2]);
    assert_eq!(
        out.to_vec::<i32>().unwrap(),
        vec![20, 21, 0, 1, 10, 11, 10, 11]
    );
    let out = gather(&data, &i32s(vec![1], &[1]), 1).unwrap();
    assert_eq!(out.shape, vec![3, 1]);
    assert_eq!(out.to_vec::<i32>().unwrap(), vec![1, 11, 21]);
    let bad = Tensor::from_vec("i", vec![4], &[0i64, 1, 2, 1200]);
    assert_eq!(
        msg(gather(&data, &bad, 0)),
        "indices: element 3 is 1200, outside 0..3"
    );
    assert!(msg(gather(&data, &Tensor::from_vec("i", vec![1], &[-1i64]), 0)).contains("-1"));
    assert!(msg(gather(&data, &ix, 2)).contains("axis 2"));
    assert!(msg(gather(&data, &f32s(vec![1], &[0.0]), 0)).contains("INT64 or INT32"));
    let s = Tensor::from_strings("s", vec![1], &["a"]);
    assert!(msg(gather(&s, &ix, 0)).contains("BYTES"));
}

#[test]
fn repeat_tiles_one_row() {
    let x = f32s(vec![1, 2], &[1.0, 2.0]);
    let out = repeat(&x, 3).unwrap();
    assert_eq!(out.shape, vec![3, 2]);
    assert_eq!(
        out.to_vec::<f32>().unwrap(),
        vec![1.0, 2.0, 1.0, 2.0, 1.0, 2.0]
    );
    assert_eq!(repeat(&x, 0).unwrap().shape, vec![0, 2]);
    assert!(msg(repeat(&f32s(vec![2], &[1.0, 2.0]), 2)).contains("one row"));
}

#[test]
fn concat_checks_dtypes_and_shapes() {
    let a = i32s(vec![2, 1], &[1, 2]);
    let b = i32s(vec![2, 2], &[3, 4, 5, 6]);
    let out = concat(&[&a, &b], -1).unwrap();
    assert_eq!(out.shape, vec![2, 3]);
    assert_eq!(out.to_vec::<i32>().unwrap(), vec![1, 3, 4, 2, 5, 6]);
    assert!(msg(concat(&[&a, &b], 0)).contains("input_1"));
    assert!(msg(concat(&[&a, &f32s(vec![2, 1], &[0.0; 2])], 1)).contains("FP32"));
    assert!(msg(concat(&[&a], 2)).contains("axis 2"));
    assert!(msg(concat(&[], 0)).contains("at least one"));
}

#[test]
fn slice_shares_the_buffer_when_contiguous() {
    let x = i32s(vec![1, 4, 2], &[0, 1, 2, 3, 4, 5, 6, 7]);
    let out = slice(&x, 1, 1, Some(3)).unwrap();
    assert_eq!(out.shape, vec![1, 2, 2]);
    assert_eq!(out.to_vec::<i32>().unwrap(), vec![2, 3, 4, 5]);
    assert_eq!(out.data.as_ptr(), x.data[8..].as_ptr());
    let out = slice(&x, 2, -1, None).unwrap();
    assert_eq!(out.to_vec::<i32>().unwrap(), vec![1, 3, 5, 7]);
    let out = slice(&x, 1, 2, Some(100)).unwrap();
    assert_eq!(out.shape, vec![1, 2, 2]);
    assert_eq!(slice(&x, 1, 3, Some(1)).unwrap().shape, vec![1, 0, 2]);
    assert!(msg(slice(&x, 3, 0, None)).contains("axis 3"));
}

#[test]
fn reshape_shares_the_buffer_and_infers_one_dim() {
    let x = i32s(vec![2, 3], &[0, 1, 2, 3, 4, 5]);
    let out = reshape(&x, &[3, -1]).unwrap();
    assert_eq!(out.shape, vec![3, 2]);
    assert_eq!(out.data.as_ptr(), x.data.as_ptr());
    assert!(msg(reshape(&x, &[4, -1])).contains("cannot reshape"));
    assert!(msg(reshape(&x, &[-1, -1])).contains("more than one"));
    assert!(msg(reshape(&x, &[7])).contains("cannot reshape"));
    let s = Tensor::from_strings("s", vec![2], &["a", "bc"]);
    assert_eq!(reshape(&s, &[1, 2]).unwrap().shape, vec![1, 2]);
}

#[test]
fn shapes_are_inferred_with_unknown_dims() {
    assert_eq!(topk_shape(&[-1, 100], 10).unwrap(), vec![-1, 10]);
    assert_eq!(topk_shape(&[-1, -1], 10).unwrap(), vec![-1, 10]);
    assert!(msg(topk_shape(&[-1, 5], 10)).contains("k = 10"));
    assert_eq!(gather_shape(&[-1, 8], &[3, 4], 0).unwrap(), vec![3, 4, 8]);
    assert!(msg(gather_shape(&[4], &[1], 1)).contains("axis 1"));
    assert_eq!(repeat_shape(&[1, 8], 5).unwrap(), vec![5, 8]);
    assert_eq!(repeat_shape(&[-1, 8], -1).unwrap(), vec![-1, 8]);
    assert!(msg(repeat_shape(&[2, 8], 5)).contains("one row"));
    assert_eq!(
        concat_shape(&[vec![-1, 2], vec![4, 3]], 1).unwrap(),
        vec![4, 5]
    );
    assert_eq!(
        concat_shape(&[&[-1, -1][..], &[3, 1]], 1).unwrap(),
        vec![3, -1]
    );
    assert!(msg(concat_shape(&[vec![2, 2], vec![3, 1]], 1)).contains("input_1"));
    assert!(msg(concat_shape(&[vec![2, 2], vec![3]], 0)).contains("rank"));
    assert_eq!(slice_shape(&[-1, 10], 1, 2, Some(-2)).unwrap(), vec![-1, 6]);
    assert_eq!(slice_shape(&[-1, 10], 0, 2, None).unwrap(), vec![-1, 10]);
    assert_eq!(reshape_shape(&[-1, 6], &[-1, 3]).unwrap(), vec![-1, 3]);
    assert_eq!(reshape_shape(&[4, 6], &[-1, 3]).unwrap(), vec![8, 3]);
    assert!(msg(reshape_shape(&[-1, 4], &[3])).contains("cannot reshape"));
    assert!(msg(reshape_shape(&[2], &[-2, 1])).contains("-2"));
}

/// A shape of rank 1..=3 with dims 0..=4, and data for it.
fn shaped() -> impl Strategy<Value = (Vec<i64>, Vec<i32>)> {
    prop::collection::vec(0i64..=4, 1..=3).prop_flat_map(|shape| {
        let n = shape.iter().product::<i64>() as usize;
        (Just(shape), prop::collection::vec(-50i32..50, n))
    })
}

proptest! {
    #[test]
    fn topk_matches_a_full_sort(
        (rows, n) in (1usize..4, 1usize..40),
        seed in prop::collection::vec(0u8..6, 160),
        k in 0usize..40,
    ) {
        let k = k.min(n);
        // few distinct values, so ties are common
        let values: Vec<f32> = (0..rows * n).map(|i| f32::from(seed[i % seed.len()]) / 2.0).collect();
        let (ix, v) = topk(&f32s(vec![rows as i64, n as i64], &values), k).unwrap();
        let (ix, v) = (ix.to_vec::<i64>().unwrap(), v.to_vec::<f32>().unwrap());
        for r in 0..rows {
            let row = &values[r * n..(r + 1) * n];
            let mut all: Vec<usize> = (0..n).collect();
            all.sort_by(|&a, &b| row[b].partial_cmp(&row[a]).unwrap().then(a.cmp(&b)));
            let want: Vec<i64> = all[..k].iter().map(|&p| p as i64).collect();
            prop_assert_eq!(&ix[r * k..(r + 1) * k], &want[..]);
            let want_v: Vec<f32> = all[..k].iter().map(|&p| row[p]).collect();
            prop_assert_eq!(&v[r * k..(r + 1) * k], &want_v[..]);
        }
    }

    #[test]
    fn gather_matches_take((shape, data) in shaped(), axis in 0usize..3, picks in prop::collection::vec(0i64..100, 0..6)) {
        let axis = axis % shape.len();
        let dim = shape[axis];
        prop_assume!(dim > 0);
        let picks: Vec<i64> = picks.iter().map(|p| p % dim).collect();
        let ix_shape = vec![picks.len() as i64];
        let out = gather(&i32s(shape.clone(), &data), &Tensor::from_vec("i", ix_shape.clone(), &picks), axis).unwrap();
        let want_shape = gather_shape(&shape, &ix_shape, axis).unwrap();
        prop_assert_eq!(&out.shape, &want_shape);
        let got = out.to_vec::<i32>().unwrap();
        for c in coords(&want_shape) {
            let mut src = c.clone();
            src[axis] = picks[c[axis]] as usize;
            prop_assert_eq!(got[flat(&want_shape, &c)], data[flat(&shape, &src)]);
        }
    }

    #[test]
    fn concat_matches_reference((shape, data) in shaped(), axis in 0usize..3, extra in 0i64..3, more in prop::collection::vec(-50i32..50, 64)) {
        let axis = axis % shape.len();
        let mut other = shape.clone();
        other[axis] = extra;
        let m = other.iter().product::<i64>() as usize;
        let b = i32s(other.clone(), &more[..m.min(64)]);
        prop_assume!(m <= 64);
        let a = i32s(shape.clone(), &data);
        let out = concat(&[&a, &b], axis as i64 - shape.len() as i64).unwrap();
        let want_shape = concat_shape(&[&shape, &other], axis as i64).unwrap();
        prop_assert_eq!(&out.shape, &want_shape);
        let got = out.to_vec::<i32>().unwrap();
        for c in coords(&want_shape) {
            let v = if (c[axis] as i64) < shape[axis] {
                data[flat(&shape, &c)]
            } else {
                let mut c2 = c.clone();
                c2[axis] -= shape[axis] as usize;
                more[flat(&other, &c2)]
            };
            prop_assert_eq!(got[flat(&want_shape, &c)], v);
        }
    }

    #[test]
    fn slice_matches_reference((shape, data) in shaped(), axis in 0usize..3, start in -6i64..6, end in prop::option::of(-6i64..6)) {
        let axis = axis % shape.len();
        let out = slice(&i32s(shape.clone(), &data), axis, start, end).unwrap();
        let want_shape = slice_shape(&shape, axis, start, end).unwrap();
        prop_assert_eq!(&out.shape, &want_shape);
        let dim = shape[axis];
        let lo = if start < 0 { (start + dim).max(0) } else { start.min(dim) };
        let got = out.to_vec::<i32>().unwrap();
        for c in coords(&want_shape) {
            let mut src = c.clone();
            src[axis] += lo as usize;
            prop_assert_eq!(got[flat(&want_shape, &c)], data[flat(&shape, &src)]);
        }
    }

    #[test]
    fn repeat_and_reshape_keep_the_elements((shape, data) in shaped(), times in 0usize..4) {
        let x = i32s(shape.clone(), &data);
        let flat_out = reshape(&x, &[-1]).unwrap();
        prop_assert_eq!(flat_out.to_vec::<i32>().unwrap(), data.clone());
        let mut one = vec![1];
        one.extend_from_slice(&shape);
        let row = reshape(&x, &one).unwrap();
        let out = repeat(&row, times).unwrap();
        prop_assert_eq!(&out.shape, &repeat_shape(&one, times as i64).unwrap());
        prop_assert_eq!(out.to_vec::<i32>().unwrap(), data.repeat(times));
    }
}
