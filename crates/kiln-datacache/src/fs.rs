//! The read-only FUSE file system (fuser, multithreaded).
//!
//! `lookup`, `getattr` and `readdir` are answered from the metadata cache only. `open` answers
//! ENOSYS, which makes the kernel skip OPEN/RELEASE for every later file and keep its page cache
//! (the kernel's "no_open" mode implies FOPEN_KEEP_CACHE); attributes and entries get long TTLs.
//! Reads of whole small files in the memory tier are answered without entering the async runtime.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use parking_lot::RwLock;

use crate::cache::{DataCache, FileRef};
use crate::meta::MetaTree;

const GEN_SHIFT: u32 = 40;
const IDX_MASK: u64 = (1 << GEN_SHIFT) - 1;
/// Old metadata generations kept so that inodes handed out before a refresh stay valid.
const KEEP_OLD: usize = 2;

/// The current metadata tree plus the previous generations (for inodes the kernel still holds).
#[derive(Debug)]
pub struct MetaState {
    inner: RwLock<Generations>,
}

#[derive(Debug)]
struct Generations {
    gen: u64,
    current: Arc<MetaTree>,
    loaded_at: Instant,
    old: VecDeque<(u64, Arc<MetaTree>)>,
}

impl MetaState {
    /// Starts at generation 1 with `tree`.
    pub fn new(tree: MetaTree) -> Self {
        let g = Generations {
            gen: 1,
            current: Arc::new(tree),
            loaded_at: Instant::now(),
            old: VecDeque::new(),
        };
        Self {
            inner: RwLock::new(g),
        }
    }

    /// The current tree and its generation.
    pub fn current(&self) -> (u64, Arc<MetaTree>) {
        let g = self.inner.read();
        (g.gen, g.current.clone())
    }

    /// Time since the current tree was installed.
    pub fn age(&self) -> Duration {
        self.inner.read().loaded_at.elapsed()
    }

    /// Installs a new tree; returns its generation.
    pub fn replace(&self, tree: MetaTree) -> u64 {
        let mut g = self.inner.write();
        let old = std::mem::replace(&mut g.current, Arc::new(tree));
        let old_gen = g.gen;
        g.old.push_back((old_gen, old));
        while g.old.len() > KEEP_OLD {
            g.old.pop_front();
        }
        g.gen += 1;
        g.loaded_at = Instant::now();
        g.gen
    }

    /// The tree and node index an inode number refers to.
    pub fn resolve(&self, ino: u64) -> Option<(u64, Arc<MetaTree>, u32)> {
        let g = self.inner.read();
        if ino == INodeNo::ROOT.0 {
            return Some((g.gen, g.current.clone(), 0));
        }
        let (gen, idx) = (ino >> GEN_SHIFT, (ino & IDX_MASK) as u32);
        let tree = if gen == g.gen {
            g.current.clone()
        } else {
            g.old.iter().find(|(x, _)| *x == gen)?.1.clone()
        };
        (tree.node(idx).is_some()).then_some((gen, tree, idx))
    }
}

/// Inode number of node `idx` of generation `gen` (the root is always 1).
pub fn ino_of(gen: u64, idx: u32) -> u64 {
    if idx == 0 {
        INodeNo::ROOT.0
    } else {
        (gen << GEN_SHIFT) | idx as u64
    }
}

/// Kernel-facing settings of the mount.
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// TTL of attributes and directory entries in the kernel.
    pub ttl: Duration,
    /// Owner reported for every file.
    pub uid: u32,
    /// Group reported for every file.
    pub gid: u32,
}

/// The FUSE file system over a [`MetaState`] and a [`DataCache`].
pub struct KilnFs {
    meta: Arc<MetaState>,
    data: DataCache,
    rt: tokio::runtime::Handle,
    opts: FsOptions,
}

impl std::fmt::Debug for KilnFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KilnFs").field("opts", &self.opts).finish()
    }
}

impl KilnFs {
    /// Creates the file system; `rt` runs the cache's async work for the FUSE threads.
    pub fn new(
        meta: Arc<MetaState>,
        data: DataCache,
        rt: tokio::runtime::Handle,
        opts: FsOptions,
    ) -> Self {
        Self {
            meta,
            data,
            rt,
            opts,
        }
    }

    fn attr(&self, tree: &MetaTree, gen: u64, idx: u32) -> FileAttr {
        let n = tree
            .node(idx)
            .copied()
            .unwrap_or_else(|| *tree.node(0).expect("root"));
        let mtime = UNIX_EPOCH + Duration::from_secs(n.mtime.max(0) as u64);
        let dir = n.is_dir();
        FileAttr {
            ino: INodeNo(ino_of(gen, idx)),
            size: n.size,
            blocks: n.size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: if dir { 0o555 } else { 0o444 },
            nlink: if dir { 2 } else { 1 },
            uid: self.opts.uid,
            gid: self.opts.gid,
            rdev: 0,
            blksize: 128 * 1024,
            flags: 0,
        }
    }

    fn kind(tree: &MetaTree, idx: u32) -> FileType {
        if tree.node(idx).is_some_and(|n| n.is_dir()) {
            FileType::Directory
        } else {
            FileType::RegularFile
        }
    }
}

impl Filesystem for KilnFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_NO_OPENDIR_SUPPORT
            | InitFlags::FUSE_NO_OPEN_SUPPORT;
        let available = wanted & config.capabilities();
        let _ = config.add_capabilities(available);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some((gen, tree, dir)) = self.meta.resolve(parent.0) else {
            return reply.error(Errno::ESTALE);
        };
        match tree.lookup(dir, name.as_bytes()) {
            Some(idx) => reply.entry(&self.opts.ttl, &self.attr(&tree, gen, idx), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.meta.resolve(ino.0) {
            Some((gen, tree, idx)) => reply.attr(&self.opts.ttl, &self.attr(&tree, gen, idx)),
            None => reply.error(Errno::ESTALE),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.error(Errno::ENOSYS);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some((_, tree, idx)) = self.meta.resolve(ino.0) else {
            return reply.error(Errno::ESTALE);
        };
        let Some(n) = tree.node(idx).copied() else {
            return reply.error(Errno::ENOENT);
        };
        if n.is_dir() {
            return reply.error(Errno::EISDIR);
        }
        let f = FileRef {
            key: n.key,
            size: n.size,
            etag: n.etag,
        };
        if let Some(b) = self.data.read_memory(&f, offset, size) {
            return reply.data(&b);
        }
        let path = tree.path(idx);
        match self.rt.block_on(self.data.read(&f, &path, offset, size)) {
            Ok(b) => reply.data(&b),
            Err(e) => {
                tracing::warn!(path, offset, size, error = %e, "read failed; answering eio");
                reply.error(Errno::EIO)
            }
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some((gen, tree, dir)) = self.meta.resolve(ino.0) else {
            return reply.error(Errno::ESTALE);
        };
        let parent = tree.node(dir).map_or(0, |n| n.parent);
        let kids = tree.children(dir);
        let total = 2 + kids.len() as u64;
        for off in offset..total {
            let full = match off {
                0 => reply.add(INodeNo(ino_of(gen, dir)), 1, FileType::Directory, "."),
                1 => reply.add(INodeNo(ino_of(gen, parent)), 2, FileType::Directory, ".."),
                _ => {
                    let idx = kids.start + (off - 2) as u32;
                    reply.add(
                        INodeNo(ino_of(gen, idx)),
                        off + 1,
                        Self::kind(&tree, idx),
                        tree.name(idx),
                    )
                }
            };
            if full {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Some((gen, tree, dir)) = self.meta.resolve(ino.0) else {
            return reply.error(Errno::ESTALE);
        };
        let parent = tree.node(dir).map_or(0, |n| n.parent);
        let kids = tree.children(dir);
        let total = 2 + kids.len() as u64;
        let ttl = self.opts.ttl;
        for off in offset..total {
            let (idx, name) = match off {
                0 => (dir, "."),
                1 => (parent, ".."),
                _ => {
                    let idx = kids.start + (off - 2) as u32;
                    (idx, tree.name(idx))
                }
            };
            let attr = self.attr(&tree, gen, idx);
            if reply.add(
                INodeNo(ino_of(gen, idx)),
                off + 1,
                name,
                &ttl,
                &attr,
                Generation(0),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (_, tree) = self.meta.current();
        let blocks = tree.total_bytes().div_ceil(4096);
        reply.statfs(blocks, 0, 0, tree.len() as u64, 0, 4096, 255, 4096);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }
}

/// Seconds since the epoch, for logs and snapshots.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}
