//! The disk tier keeps every entry across a close and reopen when many threads insert at once
//! (foyer's recovery stops reading a block at the first out-of-order sequence number; the
//! `engine` wrapper keeps queue order and numbering equal).

use bytes::Bytes;
use foyer::{
    DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder, HybridCachePolicy, Load,
    RecoverMode,
};
use kiln_datacache::block::{Block, BlockKey};
use kiln_datacache::engine::OrderedEngineConfig;

async fn open(dir: &std::path::Path) -> HybridCache<BlockKey, Block> {
    let device = FsDeviceBuilder::new(dir)
        .with_capacity(256 << 20)
        .build()
        .unwrap();
    HybridCacheBuilder::new()
        .with_policy(HybridCachePolicy::WriteOnInsertion)
        .memory(16 << 20)
        .with_weighter(|_k: &BlockKey, v: &Block| v.data.len() + 96)
        .storage()
        .with_engine_config(OrderedEngineConfig::for_device(device))
        .with_recover_mode(RecoverMode::Quiet)
        .build()
        .await
        .unwrap()
}

async fn on_disk(h: &HybridCache<BlockKey, Block>, writers: u64, per: u32) -> usize {
    let mut n = 0;
    for file in 0..writers {
        for index in 0..per {
            if let Ok(Load::Entry { value, .. }) = h.storage().load(&BlockKey { file, index }).await
            {
                assert_eq!(value.data[0], (index % 251) as u8);
                n += 1;
            }
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_inserts_all_recovered_after_reopen() {
    const WRITERS: u64 = 8;
    const PER: u32 = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let h = open(dir.path()).await;
    let tasks: Vec<_> = (0..WRITERS)
        .map(|file| {
            let h = h.clone();
            tokio::spawn(async move {
                for index in 0..PER {
                    let data = Bytes::from(vec![(index % 251) as u8; 3_000]);
                    let block = Block {
                        etag: 1,
                        file_size: 3_000,
                        checksum: 0,
                        data,
                    };
                    h.insert(BlockKey { file, index }, block);
                    if index % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    h.storage().wait().await;
    let before = on_disk(&h, WRITERS, PER).await;
    h.close().await.unwrap();
    drop(h);
    let h = open(dir.path()).await;
    let after = on_disk(&h, WRITERS, PER).await;
    eprintln!("disk tier: {before} entries before close, {after} after reopen");
    assert_eq!(before, (WRITERS * PER as u64) as usize, "all written");
    assert_eq!(after, before, "all recovered");
    h.close().await.unwrap();
}
