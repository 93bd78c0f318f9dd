//! Metadata cache: the whole tree of a dataset in one compact, immutable structure.
//!
//! Nodes sit in one `Vec` in breadth-first order so that the children of a directory are contiguous
//! and sorted by name (lookup is a binary search); names live in one string arena. A file costs one
//! 48-byte [`Node`] plus its name bytes; no per-file heap allocation.

use std::collections::BTreeMap;
use std::ops::Range;

use xxhash_rust::xxh3::xxh3_64;

/// One entry of the listing, as the under-storage reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    /// Path relative to the source root, `/`-separated, no leading slash.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification, seconds since the epoch (0 if unknown).
    pub mtime: i64,
    /// ETag or any version string; `None` if the store gives none.
    pub etag: Option<String>,
}

/// A file or directory of the tree. Fixed size, no pointers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Node {
    /// Size in bytes (files) or 0.
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Hash of the ETag (0 when unknown): recorded with every cached block, compared on every hit.
    pub etag: u64,
    /// Cache key of the file: hash of its path. Stable across restarts and refreshes.
    pub key: u64,
    /// Offset of the name in the arena.
    name_off: u32,
    /// Parent index (the root is its own parent).
    pub parent: u32,
    /// Directories: index of the first child. Files: unused.
    first: u32,
    /// Directories: number of children. Files: `u32::MAX`.
    count: u32,
}

impl Node {
    /// Whether this node is a directory.
    pub fn is_dir(&self) -> bool {
        self.count != u32::MAX
    }

    /// Rebuilds a node from its stored fields (snapshot loading): `[name_off, parent, first, count]`.
    pub(crate) fn from_parts(size: u64, mtime: i64, etag: u64, key: u64, d: [u32; 4]) -> Self {
        Self {
            size,
            mtime,
            etag,
            key,
            name_off: d[0],
            parent: d[1],
            first: d[2],
            count: d[3],
        }
    }

    /// The stored index fields `[name_off, parent, first, count]` (snapshot writing).
    pub(crate) fn index_parts(&self) -> [u32; 4] {
        [self.name_off, self.parent, self.first, self.count]
    }
}

/// The immutable tree of one listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaTree {
    /// All nodes; index 0 is the root.
    pub(crate) nodes: Vec<Node>,
    /// Name bytes of all nodes, back to back (a name ends where the next node's name starts).
    pub(crate) names: String,
    /// Number of files.
    pub(crate) files: u64,
    /// Sum of file sizes.
    pub(crate) bytes: u64,
}

enum Tmp {
    Dir(BTreeMap<String, Tmp>),
    File {
        size: u64,
        mtime: i64,
        etag: u64,
        key: u64,
    },
}

/// Inserts a file under its path; a path that runs through a file is ignored.
fn insert(dir: &mut BTreeMap<String, Tmp>, parts: &[&str], file: Tmp) {
    match parts {
        [] => {}
        [last] => {
            dir.entry((*last).to_string()).or_insert(file);
        }
        [first, rest @ ..] => {
            if let Tmp::Dir(m) = dir
                .entry((*first).to_string())
                .or_insert_with(|| Tmp::Dir(BTreeMap::new()))
            {
                insert(m, rest, file);
            }
        }
    }
}

/// Hash of an ETag string as recorded in cached blocks (quotes are ignored).
pub fn etag_hash(etag: Option<&str>) -> u64 {
    match etag {
        Some(e) if !e.is_empty() => xxh3_64(e.trim_matches('"').as_bytes()) | 1,
        _ => 0,
    }
}

/// Cache key of a path relative to the source root.
pub fn path_key(path: &str) -> u64 {
    xxh3_64(path.as_bytes())
}

impl MetaTree {
    /// Builds the tree from a listing. Directories are implied by file paths; empty path parts are skipped.
    pub fn build(entries: impl IntoIterator<Item = RawEntry>) -> Self {
        let mut root = BTreeMap::new();
        for e in entries {
            let parts: Vec<&str> = e
                .path
                .split('/')
                .filter(|p| !p.is_empty() && *p != "." && *p != "..")
                .collect();
            if parts.is_empty() {
                continue;
            }
            let key = path_key(&parts.join("/"));
            let file = Tmp::File {
                size: e.size,
                mtime: e.mtime,
                etag: etag_hash(e.etag.as_deref()),
                key,
            };
            insert(&mut root, &parts, file);
        }
        let mut t = MetaTree::default();
        t.push(
            "",
            Node {
                size: 0,
                mtime: 0,
                etag: 0,
                key: 0,
                name_off: 0,
                parent: 0,
                first: 1,
                count: 0,
            },
        );
        let mut queue: std::collections::VecDeque<(u32, BTreeMap<String, Tmp>)> =
            [(0u32, root)].into();
        while let Some((idx, children)) = queue.pop_front() {
            let first = t.nodes.len() as u32;
            t.nodes[idx as usize].first = first;
            t.nodes[idx as usize].count = children.len() as u32;
            for (name, child) in children {
                let node_idx = t.nodes.len() as u32;
                match child {
                    Tmp::Dir(m) => {
                        let n = Node {
                            size: 0,
                            mtime: 0,
                            etag: 0,
                            key: 0,
                            name_off: 0,
                            parent: idx,
                            first: 0,
                            count: 0,
                        };
                        t.push(&name, n);
                        queue.push_back((node_idx, m));
                    }
                    Tmp::File {
                        size,
                        mtime,
                        etag,
                        key,
                    } => {
                        let n = Node {
                            size,
                            mtime,
                            etag,
                            key,
                            name_off: 0,
                            parent: idx,
                            first: 0,
                            count: u32::MAX,
                        };
                        t.push(&name, n);
                        t.files += 1;
                        t.bytes += size;
                    }
                }
            }
        }
        t.nodes.shrink_to_fit();
        t.names.shrink_to_fit();
        t
    }

    fn push(&mut self, name: &str, mut node: Node) {
        node.name_off = self.names.len() as u32;
        self.names.push_str(name);
        self.nodes.push(node);
    }

    /// Number of nodes (files + directories + root).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree holds no file.
    pub fn is_empty(&self) -> bool {
        self.files == 0
    }

    /// Number of files.
    pub fn file_count(&self) -> u64 {
        self.files
    }

    /// Sum of file sizes in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.bytes
    }

    /// The node at `idx`.
    pub fn node(&self, idx: u32) -> Option<&Node> {
        self.nodes.get(idx as usize)
    }

    /// Name of node `idx` (empty for the root).
    pub fn name(&self, idx: u32) -> &str {
        let i = idx as usize;
        let end = self
            .nodes
            .get(i + 1)
            .map_or(self.names.len(), |n| n.name_off as usize);
        &self.names[self.nodes[i].name_off as usize..end]
    }

    /// Indices of the children of directory `idx` (empty for files).
    pub fn children(&self, idx: u32) -> Range<u32> {
        match self.nodes.get(idx as usize) {
            Some(n) if n.is_dir() => n.first..n.first + n.count,
            _ => 0..0,
        }
    }

    /// Child of directory `dir` named `name`.
    pub fn lookup(&self, dir: u32, name: &[u8]) -> Option<u32> {
        let r = self.children(dir);
        let (mut lo, mut hi) = (r.start, r.end);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.name(mid).as_bytes().cmp(name) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// Node of a `/`-separated path relative to the root.
    pub fn resolve(&self, path: &str) -> Option<u32> {
        let mut cur = 0;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            cur = self.lookup(cur, part.as_bytes())?;
        }
        Some(cur)
    }

    /// Full path of node `idx` relative to the root.
    pub fn path(&self, idx: u32) -> String {
        let mut parts = Vec::new();
        let mut cur = idx;
        while cur != 0 {
            parts.push(self.name(cur));
            cur = self.nodes[cur as usize].parent;
        }
        parts.reverse();
        parts.join("/")
    }

    /// All file indices, in tree order.
    pub fn file_indices(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.nodes.len() as u32).filter(|&i| !self.nodes[i as usize].is_dir())
    }

    /// Heap bytes held by the tree (what one more copy in memory costs).
    pub fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node>() + self.names.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(p: &str, size: u64) -> RawEntry {
        RawEntry {
            path: p.into(),
            size,
            mtime: 1,
            etag: Some(format!("\"{p}\"")),
        }
    }

    #[test]
    fn builds_and_looks_up() {
        let t = MetaTree::build(vec![
            e("b/2.bin", 2),
            e("a/1.bin", 1),
            e("a/sub/3.bin", 3),
            e("top", 4),
        ]);
        assert_eq!(t.file_count(), 4);
        assert_eq!(t.total_bytes(), 10);
        let a = t.lookup(0, b"a").unwrap();
        assert!(t.node(a).unwrap().is_dir());
        let f = t.resolve("a/sub/3.bin").unwrap();
        assert_eq!(t.node(f).unwrap().size, 3);
        assert_eq!(t.path(f), "a/sub/3.bin");
        assert_eq!(t.node(f).unwrap().key, path_key("a/sub/3.bin"));
        let names: Vec<&str> = t.children(0).map(|i| t.name(i)).collect();
        assert_eq!(names, vec!["a", "b", "top"]);
        assert!(t.lookup(0, b"zzz").is_none());
        assert_eq!(t.file_indices().count(), 4);
        assert_eq!(std::mem::size_of::<Node>(), 48);
    }

    #[test]
    fn etag_quotes_ignored() {
        assert_eq!(etag_hash(Some("\"abc\"")), etag_hash(Some("abc")));
        assert_eq!(etag_hash(None), 0);
    }
}
