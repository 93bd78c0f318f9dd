//! The raw-id-to-key contract of `kiln_recsys::features`, pinned: the keys below were computed by
//! the serving path before it moved into this module, and anything that writes table rows
//! (an online learner, a delta publisher) must produce exactly these keys. A change here means
//! every trained row lands where serving no longer looks.

use kiln_core::{DataType, Tensor};
use kiln_embed::{MultiHot, Pooling};
use kiln_recsys::features::{bytes_key, int_key, key_of, FeatureIds, Hashing, RawId, PADDING};
use kiln_recsys::spec::{Part, SparseFeature};

const INTS: [i64; 11] = [
    0,
    1,
    7,
    42,
    1000,
    123_456_789,
    9_000_000_001,
    i64::MAX,
    i64::MIN,
    -2,
    -1,
];

/// Keys of [`INTS`] under each `(hash, buckets)`.
const INT_KEYS: [(Hashing, Option<u64>, [u64; 11]); 5] = [
    (
        Hashing::None,
        None,
        [
            0,
            1,
            7,
            42,
            1000,
            123456789,
            9000000001,
            9223372036854775807,
            9223372036854775808,
            18446744073709551614,
            PADDING,
        ],
    ),
    (
        Hashing::None,
        Some(1000),
        [0, 1, 7, 42, 0, 789, 1, 807, 808, 614, PADDING],
    ),
    (
        Hashing::Xxh3,
        None,
        [
            14374147212387527897,
            3439722301264460078,
            9324454920402081455,
            15395265915043915720,
            10021228461726049677,
            2817400364357085909,
            17115523833114658200,
            11687913294787043142,
            9407778237848358495,
            8645101703549425753,
            PADDING,
        ],
    ),
    (
        Hashing::Xxh3,
        Some(1000),
        [897, 78, 455, 720, 677, 909, 200, 142, 495, 753, PADDING],
    ),
    (
        Hashing::Xxh3,
        Some(50),
        [47, 28, 5, 20, 27, 9, 0, 42, 45, 3, PADDING],
    ),
];

fn strings() -> Vec<Vec<u8>> {
    vec![
        b"".to_vec(),
        b"alice".to_vec(),
        b"bob".to_vec(),
        b"0".to_vec(),
        b"user:12345".to_vec(),
        "ünï".as_bytes().to_vec(),
        b"\0".to_vec(),
        vec![b'x'; 100],
    ]
}

/// Keys of [`strings`] under each `buckets` (BYTES ids are always xxh3-hashed).
const BYTES_KEYS: [(Option<u64>, [u64; 8]); 3] = [
    (
        None,
        [
            PADDING,
            5593767425381308080,
            1442208253991303397,
            1838281907459330133,
            17180631047042164147,
            6574230039953973664,
            14144645293874801883,
            14486255910912052802,
        ],
    ),
    (Some(100), [PADDING, 80, 97, 33, 47, 64, 83, 2]),
    (Some(1000), [PADDING, 80, 397, 133, 147, 664, 883, 802]),
];

#[test]
fn int64_keys_are_pinned() {
    for (hash, buckets, want) in INT_KEYS {
        let got: Vec<u64> = INTS
            .iter()
            .map(|&i| key_of(RawId::Int(i), hash, buckets))
            .collect();
        assert_eq!(got, want, "hash {hash:?}, buckets {buckets:?}");
        let raw: Vec<u64> = INTS
            .iter()
            .map(|&i| int_key(i as u64, hash, buckets))
            .collect();
        assert_eq!(raw, want, "int_key, hash {hash:?}, buckets {buckets:?}");
    }
}

#[test]
fn bytes_keys_are_pinned() {
    let ids = strings();
    for (buckets, want) in BYTES_KEYS {
        let got: Vec<u64> = ids
            .iter()
            .map(|b| key_of(RawId::Bytes(b), Hashing::Xxh3, buckets))
            .collect();
        assert_eq!(got, want, "buckets {buckets:?}");
        let direct: Vec<u64> = ids.iter().map(|b| bytes_key(b, buckets)).collect();
        assert_eq!(direct, want, "bytes_key, buckets {buckets:?}");
    }
    assert_eq!(key_of(RawId::Bytes(b""), Hashing::Xxh3, Some(7)), PADDING);
}

fn feature(
    hash: Hashing,
    buckets: Option<u64>,
    data_type: DataType,
    ragged: bool,
) -> SparseFeature {
    SparseFeature {
        name: "f".into(),
        table: 0,
        max_ids: 3,
        pooling: Pooling::Sum,
        hash,
        buckets,
        data_type,
        ragged,
        part: Part::Deep,
        cross: Vec::new(),
    }
}

fn padded(m: MultiHot<'_>) -> (Vec<u64>, usize) {
    match m {
        MultiHot::Padded {
            ids,
            width,
            padding,
        } => {
            assert_eq!(padding, Some(PADDING));
            (ids.to_vec(), width)
        }
        MultiHot::Ragged { .. } => panic!("padded ids expected"),
    }
}

/// Decoding a request's tensors and taking a row range's keys gives the pinned keys, whatever
/// the input form (padded INT64, BYTES, ragged INT64).
#[test]
fn decoded_inputs_give_the_pinned_keys() {
    // padded INT64, [3, 3] taken from INTS (the first 9), rows 1..3
    let (hash, buckets, want) = INT_KEYS[3];
    let t = Tensor::from_vec("f", vec![3, 3], &INTS[..9]);
    let f = feature(hash, buckets, DataType::Int64, false);
    let ids = FeatureIds::decode(&f, &t, None).unwrap();
    let mut scratch = Vec::new();
    let (keys, width) = padded(ids.keys(&f, 1, 2, &mut scratch));
    assert_eq!((keys.as_slice(), width), (&want[3..9], 3));

    // unhashed INT64 ids pass through, -1 as the padding key
    let t = Tensor::from_vec("f", vec![1, 3], &[5i64, -1, 9]);
    let f = feature(Hashing::None, None, DataType::Int64, false);
    let ids = FeatureIds::decode(&f, &t, None).unwrap();
    let (keys, _) = padded(ids.keys(&f, 0, 1, &mut scratch));
    assert_eq!(keys, [5, PADDING, 9]);

    // BYTES, [2, 3] over the first six strings, rows 0..2
    let (buckets, want) = BYTES_KEYS[1];
    let s = strings();
    let t = Tensor::from_strings("f", vec![2, 3], &s[..6]);
    let f = feature(Hashing::Xxh3, buckets, DataType::Bytes, false);
    let ids = FeatureIds::decode(&f, &t, None).unwrap();
    let (keys, _) = padded(ids.keys(&f, 0, 2, &mut scratch));
    assert_eq!(keys, &want[..6]);

    // ragged INT64: rows of 2, 0 and 3 ids, rows 1..3
    let (hash, buckets, want) = INT_KEYS[2];
    let values = Tensor::from_vec("f_values", vec![5], &INTS[..5]);
    let lengths = Tensor::from_vec("f_lengths", vec![3], &[2i32, 0, 3]);
    let f = feature(hash, buckets, DataType::Int64, true);
    let ids = FeatureIds::decode(&f, &values, Some(&lengths)).unwrap();
    match ids.keys(&f, 1, 2, &mut scratch) {
        MultiHot::Ragged {
            values,
            lengths,
            padding,
        } => {
            assert_eq!(values, &want[2..5]);
            assert_eq!(lengths, [0, 3]);
            assert_eq!(padding, Some(PADDING));
        }
        MultiHot::Padded { .. } => panic!("ragged ids expected"),
    }
}

#[test]
fn decode_errors_name_the_input() {
    let f = feature(Hashing::None, None, DataType::Int64, true);
    let values = Tensor::from_vec("f_values", vec![2], &[1i64, 2]);
    let lengths = Tensor::from_vec("f_lengths", vec![2], &[1i32, 4]);
    let e = FeatureIds::decode(&f, &values, Some(&lengths)).unwrap_err();
    assert!(
        e.message.contains("f_lengths") && e.message.contains("0..=3"),
        "{e}"
    );
    let lengths = Tensor::from_vec("f_lengths", vec![2], &[1i32, 2]);
    let e = FeatureIds::decode(&f, &values, Some(&lengths)).unwrap_err();
    assert!(
        e.message.contains("f_values") && e.message.contains("add up to 3"),
        "{e}"
    );
    let e = FeatureIds::decode(&f, &values, None).unwrap_err();
    assert!(e.message.contains("f_lengths"), "{e}");
}
