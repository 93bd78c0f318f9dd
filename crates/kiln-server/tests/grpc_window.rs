//! The gRPC listener's HTTP/2 flow-control windows are the configured ones
//! ([`Limits::grpc_stream_window`], [`Limits::grpc_connection_window`]): the server's SETTINGS
//! frame carries the stream window and a WINDOW_UPDATE on the connection raises its window to
//! the connection one. By default both hold a request of a 64-row mlp batch (64 KiB of tensor,
//! over HTTP/2's 65,535-byte initial window), so it is not held up by flow-control round
//! trips; with both windows at the protocol's minimum such a request still arrives whole.

mod common;

use common::*;
use kiln_server::Limits;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// HTTP/2's initial window (RFC 9113, 6.9.2).
const DEFAULT_WINDOW: u32 = 65_535;

/// What the server announces on a new connection: its `SETTINGS_INITIAL_WINDOW_SIZE` (`None`:
/// not sent, so the protocol's default) and the connection window once a WINDOW_UPDATE on
/// stream 0 has raised it. Reads frames until both have arrived: the server sends its SETTINGS
/// first, and the connection's WINDOW_UPDATE when it next polls the connection (the client's
/// SETTINGS acknowledgement and a PING make it do so); a server that never sends one fails
/// the test after [`PATIENCE`].
async fn announced_windows(addr: SocketAddr) -> (Option<u32>, u32) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // the client preface and an empty SETTINGS frame
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    s.write_all(&hello).await.expect("preface");
    let (mut stream_window, mut conn_window) = (None, DEFAULT_WINDOW);
    let (mut got_settings, mut got_update) = (false, false);
    let read = async {
        while !(got_settings && got_update) {
            let mut head = [0u8; 9];
            s.read_exact(&mut head).await.expect("frame header");
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await.expect("frame payload");
            match kind {
                0x4 if flags & 0x1 == 0 => {
                    got_settings = true;
                    for p in payload.chunks_exact(6) {
                        if u16::from_be_bytes([p[0], p[1]]) == 0x4 {
                            stream_window = Some(u32::from_be_bytes([p[2], p[3], p[4], p[5]]));
                        }
                    }
                    // acknowledge them, and ping
                    let mut reply = vec![0, 0, 0, 0x4, 0x1, 0, 0, 0, 0];
                    reply.extend_from_slice(&[0, 0, 8, 0x6, 0, 0, 0, 0, 0]);
                    reply.extend_from_slice(&[7; 8]);
                    s.write_all(&reply).await.expect("settings ack and ping");
                }
                0x8 if stream == 0 => {
                    got_update = true;
                    let inc = u32::from_be_bytes(payload[..4].try_into().unwrap()) & 0x7fff_ffff;
                    conn_window += inc;
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(PATIENCE, read)
        .await
        .expect("the server's SETTINGS and a WINDOW_UPDATE of the connection");
    (stream_window, conn_window)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_windows_hold_a_64_row_request() {
    let limits = Limits::default();
    let request = grpc_mlp(&(0..64).map(row).collect::<Vec<_>>(), "w");
    // the tensor alone; the message around it adds a few dozen bytes
    let bytes = request.raw_input_contents[0].len() as u32 + 1024;
    assert!(limits.grpc_stream_window >= bytes && limits.grpc_connection_window >= bytes);
    let s = TestServer::examples().await;
    let (stream, conn) = announced_windows(s.grpc_addr).await;
    assert_eq!(stream, Some(limits.grpc_stream_window));
    assert_eq!(conn, limits.grpc_connection_window);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_windows_are_announced() {
    let opts = Options {
        limits: Limits {
            grpc_stream_window: 300_000,
            grpc_connection_window: 700_000,
            ..Limits::default()
        },
        ..Options::default()
    };
    let s = TestServer::start_at(examples(), None, opts).await;
    assert_eq!(
        announced_windows(s.grpc_addr).await,
        (Some(300_000), 700_000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_smallest_windows_arrives_whole() {
    let opts = Options {
        limits: Limits {
            grpc_stream_window: DEFAULT_WINDOW,
            grpc_connection_window: DEFAULT_WINDOW,
            ..Limits::default()
        },
        ..Options::default()
    };
    let s = TestServer::start_at(examples(), None, opts).await;
    let rows: Vec<Vec<f32>> = (0..64).map(row).collect();
    let request = grpc_mlp(&rows, "big");
    assert!(request.raw_input_contents[0].len() > DEFAULT_WINDOW as usize);
    let mut c = s.grpc().await;
    let big = c.model_infer(request).await.expect("64 rows").into_inner();
    let big = grpc_floats(&big, 0);
    assert_eq!(big.len(), 64);
    // each row answered as when sent alone
    for (i, r) in rows.iter().enumerate().step_by(21) {
        let one = c
            .model_infer(grpc_mlp(std::slice::from_ref(r), "one"))
            .await
            .expect("1 row")
            .into_inner();
        let one = grpc_floats(&one, 0);
        assert!(
            (one[0] - big[i]).abs() < 1e-5,
            "row {i}: {} vs {}",
            one[0],
            big[i]
        );
    }
}
