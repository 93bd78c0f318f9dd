//! The disk tier's engine: foyer's block engine, with the order of queued writes made to match
//! the order of their sequence numbers.
//!
//! foyer's block engine numbers an entry when it is queued and hands it to a flusher over a
//! channel; on open, recovery reads each 16 MiB block only as far as the sequence numbers in it
//! keep rising. Two threads queueing at once can take numbers in one order and reach the channel
//! in the other, and then everything after the first inversion in that block is lost on the next
//! open (a reproduction with 8 concurrent writers kept 2k to 6k of 16k entries). Taking one lock
//! across "number + send" keeps both orders equal. The lock covers a counter increment and an
//! unbounded channel send, never I/O.

use std::sync::Arc;

use foyer::{
    BlockEngineConfig, Device, Engine, EngineBuildContext, EngineConfig, HybridCacheProperties,
    Load, PieceRef, StorageFilterResult,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use parking_lot::Mutex;

use crate::block::{Block, BlockKey};

type Props = HybridCacheProperties;

/// foyer's block (region) size in the disk tier; a cached block must fit in one.
pub const ENGINE_BLOCK: usize = 16 << 20;

/// Builds foyer's block engine wrapped in [`OrderedEngine`].
#[derive(Debug)]
pub struct OrderedEngineConfig(pub BlockEngineConfig<BlockKey, Block, Props>);

impl OrderedEngineConfig {
    /// The data cache's disk engine on `device`: 16 MiB blocks, two flushers, a 64 MiB write
    /// buffer and a 256 MiB submit queue.
    pub fn for_device(device: Arc<dyn Device>) -> Self {
        OrderedEngineConfig(
            BlockEngineConfig::new(device)
                .with_block_size(ENGINE_BLOCK)
                .with_flushers(2)
                .with_buffer_pool_size(64 << 20)
                .with_submit_queue_size_threshold(256 << 20),
        )
    }
}

impl EngineConfig<BlockKey, Block, Props> for OrderedEngineConfig {
    fn build(
        self: Box<Self>,
        ctx: EngineBuildContext,
    ) -> BoxFuture<'static, foyer::Result<Arc<dyn Engine<BlockKey, Block, Props>>>> {
        let inner = Box::new(self.0);
        async move {
            let inner = EngineConfig::build(inner, ctx).await?;
            Ok(Arc::new(OrderedEngine {
                inner,
                queue: Mutex::new(()),
            }) as Arc<dyn Engine<BlockKey, Block, Props>>)
        }
        .boxed()
    }
}

impl From<OrderedEngineConfig> for Box<dyn EngineConfig<BlockKey, Block, Props>> {
    fn from(c: OrderedEngineConfig) -> Self {
        Box::new(c)
    }
}

/// A block engine whose `enqueue` calls never interleave.
#[derive(Debug)]
pub struct OrderedEngine {
    inner: Arc<dyn Engine<BlockKey, Block, Props>>,
    queue: Mutex<()>,
}

impl Engine<BlockKey, Block, Props> for OrderedEngine {
    fn device(&self) -> &Arc<dyn Device> {
        self.inner.device()
    }

    fn filter(&self, hash: u64, estimated_size: usize) -> StorageFilterResult {
        self.inner.filter(hash, estimated_size)
    }

    fn enqueue(&self, piece: PieceRef<BlockKey, Block, Props>, estimated_size: usize) {
        let _order = self.queue.lock();
        self.inner.enqueue(piece, estimated_size);
    }

    fn load(&self, hash: u64) -> BoxFuture<'static, foyer::Result<Load<BlockKey, Block, Props>>> {
        self.inner.load(hash)
    }

    fn delete(&self, hash: u64) {
        // a tombstone takes a sequence number too
        let _order = self.queue.lock();
        self.inner.delete(hash);
    }

    fn may_contains(&self, hash: u64) -> bool {
        self.inner.may_contains(hash)
    }

    fn destroy(&self) -> BoxFuture<'static, foyer::Result<()>> {
        self.inner.destroy()
    }

    fn wait(&self) -> BoxFuture<'static, ()> {
        self.inner.wait()
    }

    fn close(&self) -> BoxFuture<'static, foyer::Result<()>> {
        self.inner.close()
    }
}
