use bytes::Bytes;
use std::time::Instant;
fn main() {
    let n = 1_000_000;
    let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.001).collect();
    let json = serde_json::json!({"inputs":[{"name":"x","shape":[n],"datatype":"FP32","data":data}]});
    let body = Bytes::from(serde_json::to_vec(&json).unwrap());
    let t = Instant::now();
    for _ in 0..5 { let r = kiln_protocol::decode_request(body.clone(), None).unwrap(); assert_eq!(r.inputs[0].data.len(), n*4); }
    println!("decode {} MB json: {:?}/iter", body.len()/1_000_000, t.elapsed()/5);
    let t = Instant::now();
    for _ in 0..5 { let _: serde_json::Value = serde_json::from_slice(&body).unwrap(); }
    println!("serde_json::Value: {:?}/iter", t.elapsed()/5);
    let t = Instant::now();
    for _ in 0..5 { let _: serde::de::IgnoredAny = serde_json::from_slice(&body).unwrap(); }
    println!("IgnoredAny: {:?}/iter", t.elapsed()/5);
    let ints: Vec<i64> = (0..n as i64).collect();
    let json = serde_json::json!({"inputs":[{"name":"x","shape":[n],"datatype":"INT64","data":ints}]});
    let body = Bytes::from(serde_json::to_vec(&json).unwrap());
    let t = Instant::now();
    for _ in 0..5 { let r = kiln_protocol::decode_request(body.clone(), None).unwrap(); assert_eq!(r.inputs[0].data.len(), n*8); }
    println!("decode int64 {} MB json: {:?}/iter", body.len()/1_000_000, t.elapsed()/5);
    let tensor = kiln_core::Tensor::from_vec("y", vec![n as i64], &data);
    let t = Instant::now();
    for _ in 0..5 { let _ = kiln_protocol::encode_response("m","1",None,&[(tensor.clone(), false)]).unwrap(); }
    println!("encode: {:?}/iter", t.elapsed()/5);
}
