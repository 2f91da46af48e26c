//! The embedded dense store: cosine search over L2-normalized vectors persisted to
//! one memory-mapped file, exact below `ann_min_rows` rows and through an HNSW index
//! with exact rescoring at and above it.
//!
//! Vectors are re-normalized on the way in (stored and query vectors alike), so
//! cosine similarity is a plain dot product and scores are true cosines whatever
//! the embedder returned. Zero, non-finite or wrongly sized vectors are rejected.
//!
//! Small stores are scanned whole, through i8 copies of the rows ([`quantized`]): a
//! quarter of the bytes of the f32 rows, whose scan was bound by memory bandwidth.
//! The scan proposes `2 * top_k + 16` candidates, rescored with their f32 rows: scores are
//! exact cosines, and with that margin the top `top_k` are those of scoring every f32
//! row (a test checks it). A search asking for most of the store scores the f32 rows
//! in blocks on rayon's pool instead, each block keeping a bounded min-heap. Either
//! scan is linear in the rows (~40 ms at 1M in f32), so from
//! [`DenseOptions::ann_min_rows`] rows (50k by default) the store keeps
//! an HNSW index ([`ann`]: usearch, i8 vectors) that proposes
//! `max(top_k * 4, ann_expansion)` candidates; they are rescored with their f32
//! rows, so scores stay exact cosines and only recall is approximate (>= 0.95
//! recall@10, see `benches/dense_scale.rs` and docs/benchmarks.md). A search whose
//! `top_k * 4` covers the store falls back to the exact scan, and so does a
//! filtered search (over the matching rows only, as before: usearch's filtered
//! graph search lost matching rows in tests, which a pre-filter must not).
//!
//! The f32 vectors are not copied to the heap: `dense.bin` is memory-mapped and
//! searches read its rows in place, so at 1M x 384 the process holds the i8 index
//! (~0.5 GB) and the page cache holds what rescoring touches. A commit writes a
//! new file and maps it; searches still holding the old snapshot keep the old
//! mapping, which stays valid after the rename. Nothing but this store may
//! rewrite the file in place (`stores::lock` keeps other writers out).
//!
//! Write semantics (the same as the BM25 store): upserts and deletes are queued
//! and only become visible to searches and to `count` on [`SearchBackend::commit`],
//! which applies them to a copy of the published snapshot, writes it to disk, and
//! then swaps it in. Searches hold an `Arc` to an immutable snapshot, so they never
//! see a half-applied commit (the HNSW index is updated in place, but a search
//! only returns keys its own snapshot holds and scores them from its own vectors).
//! Uncommitted writes are lost when the process stops.
//! A failed commit puts its writes back for the next commit once, and drops those
//! it had put back already, so the queue stays bounded however often commits fail.
//! Only one process writes a data dir (`stores::lock`): a second writer would
//! overwrite this snapshot with its own older one.
//!
//! ## On-disk format
//!
//! One file, `dense.bin`, so that a single rename publishes vectors and metadata
//! together (two files would need a second pointer file to switch atomically):
//!
//! ```text
//! offset 0   magic          8 bytes  "SKYFDNS1"
//! offset 8   format version u32 LE   2 (version 1 files, without the next three
//!                                    fields, are still read: keys 0..rows, generation 0)
//! offset 12  dims           u32 LE
//! offset 16  rows           u64 LE
//! offset 24  metadata bytes u64 LE
//! offset 32  generation     u64 LE   one more at every commit: names the matching index file
//! offset 40  next key       u64 LE   the key the next new row gets
//! offset 48  vectors        rows * dims f32 LE, row-major
//! then       keys           rows * u64 LE, strictly increasing: each row's stable HNSW key
//! then       metadata       JSON array of `Chunk` (chunk_id, doc_id, object_key, title, text, ordinal,
//!                           cloud, region), one per row
//! ```
//!
//! Vectors are raw little-endian f32: 4 bytes a dimension, no parsing, and the
//! block starts 16-byte aligned so the mapped bytes are read as `f32` in place.
//! Row keys survive compaction (a delete moves rows, not keys) and a re-upsert
//! keeps its row and key, so the keys stay sorted and a key finds its row by binary
//! search. Metadata is JSON because it is mostly UTF-8 text, where a binary
//! encoding would save little, and it stays inspectable with ordinary tools. A
//! commit writes `dense.bin.tmp`, fsyncs it, renames it over `dense.bin` and fsyncs
//! the directory: a crash at any point leaves either the previous or the new file
//! whole. The file length is checked against the header on open, so a truncated
//! file is refused, not misread.
//!
//! The HNSW index is derived data, saved the same crash-safe way beside it as
//! `dense.<generation>.hnsw` after the data file. It is loaded on open only if its
//! generation is the data file's and it holds exactly the file's keys; otherwise
//! (missing, stale, damaged) it is rebuilt from the vectors, which at 1M rows
//! takes minutes.

mod ann;
mod quantized;

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use async_trait::async_trait;
use memmap2::Mmap;
use ndarray::{Array2, ArrayView1, ArrayView2};
use rayon::prelude::*;

use self::ann::AnnIndex;
use self::quantized::QuantizedRows;
use crate::document::{Chunk, EmbeddedChunk, Hit};
use crate::error::{Error, Result};
use crate::stores::filter::{Filter, Pushdown};
use crate::stores::{SearchBackend, SourceInfo, StoreQuery};

const DATA_FILE_NAME: &str = "dense.bin";
const TEMPORARY_FILE_NAME: &str = "dense.bin.tmp";
const FILE_MAGIC: &[u8; 8] = b"SKYFDNS1";
const FORMAT_VERSION: u32 = 2;
/// Version 1 files: no generation or next key, no keys section.
const FORMAT_VERSION_WITHOUT_KEYS: u32 = 1;
const HEADER_BYTES: usize = 48;
const HEADER_BYTES_WITHOUT_KEYS: usize = 32;
/// Rows encoded per write call when persisting.
const ROWS_PER_WRITE: usize = 1024;

/// Rows scored by one rayon task. Big enough that task overhead is noise (4096 x
/// 384 x 4 bytes = 6 MiB a block), small enough that 100k rows split into ~25
/// tasks and balance across cores.
const ROWS_PER_BLOCK: usize = 4096;

/// A vector whose length is this close to 1 is already normalized; dividing
/// anyway would only add rounding noise.
const NORM_TOLERANCE: f32 = 1e-6;

/// Below this many rows exact search is fast enough (<= ~2 ms at 384 dims) and
/// keeps perfect recall, so small corpora such as SciFact (7.8k chunks) rank exactly.
pub const DEFAULT_ANN_MIN_ROWS: usize = 50_000;
/// HNSW search breadth (usearch's `expansion_search`), also the fewest candidates
/// rescored: recall@10 >= 0.95 at 1M in `benches/dense_scale.rs`.
pub const DEFAULT_ANN_EXPANSION: usize = 128;

/// How a dense store searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenseOptions {
    /// Exact search below this many rows, the HNSW index at and above it;
    /// `usize::MAX` keeps every search exact.
    pub ann_min_rows: usize,
    /// Candidates the HNSW search keeps in its beam, and the fewest it returns
    /// for exact rescoring.
    pub ann_expansion: usize,
    /// HNSW graph degree of a newly built index (an index loaded from disk keeps
    /// the degree it was built with).
    pub ann_connectivity: usize,
}

impl Default for DenseOptions {
    fn default() -> Self {
        Self {
            ann_min_rows: DEFAULT_ANN_MIN_ROWS,
            ann_expansion: DEFAULT_ANN_EXPANSION,
            ann_connectivity: ann::DEFAULT_CONNECTIVITY,
        }
    }
}

/// An embedded cosine-similarity store over one embedding space.
pub struct DenseStore {
    info: SourceInfo,
    inner: Arc<DenseInner>,
}

/// The f32 rows of a snapshot: none yet, or the vector block of a mapped `dense.bin`.
#[derive(Debug)]
enum StoredVectors {
    Empty,
    Mapped {
        map: Mmap,
        /// The vector block's first byte in the map.
        offset: usize,
        rows: usize,
    },
}

/// What searches read: immutable once published.
#[derive(Debug)]
struct DenseSnapshot {
    dims: usize,
    /// One L2-normalized row per chunk, in standard (row-major) layout.
    vectors: StoredVectors,
    /// 0 x dims: what an empty store searches.
    no_rows: Array2<f32>,
    /// `keys[row]`: the row's stable key in the HNSW index, strictly increasing.
    keys: Vec<u64>,
    /// The key the next new row gets.
    next_key: u64,
    /// Commits since the store was created (0 for version 1 files).
    generation: u64,
    /// `chunks[row]` describes `vectors.row(row)`.
    chunks: Vec<Chunk>,
    /// Present at and above `ann_min_rows` rows.
    ann: Option<Arc<AnnIndex>>,
    /// i8 copies of the rows for the exact scan, below `ann_min_rows` rows.
    quantized: Option<QuantizedRows>,
}

impl DenseSnapshot {
    fn empty(dims: usize) -> Self {
        Self {
            dims,
            vectors: StoredVectors::Empty,
            no_rows: Array2::zeros((0, dims)),
            keys: Vec::new(),
            next_key: 0,
            generation: 0,
            chunks: Vec::new(),
            ann: None,
            quantized: None,
        }
    }

    /// The vectors as a matrix, read in place from the mapped file. The block was
    /// checked for length and alignment when mapped, so the fallback to no rows
    /// never happens.
    fn matrix(&self) -> ArrayView2<'_, f32> {
        match &self.vectors {
            StoredVectors::Empty => self.no_rows.view(),
            StoredVectors::Mapped { map, offset, rows } => {
                mapped_matrix(map, *offset, *rows, self.dims).unwrap_or_else(|| self.no_rows.view())
            }
        }
    }

    /// The row of `key`, if this snapshot holds it.
    fn row_of_key(&self, key: u64) -> Option<usize> {
        self.keys.binary_search(&key).ok()
    }
}

/// The exact scan's i8 copy of a snapshot's rows; none for an empty store.
fn scan_copy(snapshot: &DenseSnapshot) -> Option<QuantizedRows> {
    (!snapshot.chunks.is_empty()).then(|| QuantizedRows::of(snapshot.matrix()))
}

/// `rows` x `dims` f32 values at `offset` of `map`, if they fit and are aligned.
fn mapped_matrix(
    map: &Mmap,
    offset: usize,
    rows: usize,
    dims: usize,
) -> Option<ArrayView2<'_, f32>> {
    let length = rows.checked_mul(dims)?.checked_mul(4)?;
    let bytes = map.get(offset..offset.checked_add(length)?)?;
    let values = bytemuck::try_cast_slice::<u8, f32>(bytes).ok()?;
    ArrayView2::from_shape((rows, dims), values).ok()
}

/// A write waiting for the next commit. Kept in arrival order because order
/// matters: an upsert after a delete of the same object survives it.
enum PendingWrite {
    Upsert(Vec<(Chunk, Vec<f32>)>),
    DeleteObjects(Vec<String>),
}

/// A write in the queue, and whether a failed commit already put it back once.
struct QueuedWrite {
    write: PendingWrite,
    requeued: bool,
}

impl QueuedWrite {
    fn new(write: PendingWrite) -> Self {
        Self {
            write,
            requeued: false,
        }
    }
}

struct DenseInner {
    dimensions: usize,
    options: DenseOptions,
    directory: PathBuf,
    published: RwLock<Arc<DenseSnapshot>>,
    pending: Mutex<Vec<QueuedWrite>>,
    /// Serializes commits: each one builds on the snapshot the previous published.
    commit_lock: Mutex<()>,
}

/// Recover the guard from a poisoned lock. Every critical section here either
/// swaps a whole value or pushes one element, so the data is consistent even if a
/// holder panicked, and refusing all further work would help nobody.
fn lock_ignoring_poison<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How much memory a store's search structures hold, for benchmarks and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenseMemory {
    pub rows: usize,
    /// Bytes of the f32 vectors in the mapped file (page cache, not heap).
    pub mapped_vector_bytes: usize,
    /// Bytes the HNSW index holds (i8 vectors and graph); 0 below `ann_min_rows`.
    pub ann_index_bytes: usize,
    /// Of `ann_index_bytes`: the graph's and the i8 vectors' memory handed out by
    /// usearch's arenas (what it touches; the rest of an arena stays unbacked).
    pub ann_graph_bytes: usize,
    pub ann_vector_bytes: usize,
    /// Bytes of the row keys.
    pub key_bytes: usize,
    /// Bytes of the i8 rows the exact scan reads; 0 at and above `ann_min_rows`.
    pub scan_bytes: usize,
}

impl DenseStore {
    /// Open the store in `directory` with vectors of `dims` dimensions and the
    /// default [`DenseOptions`].
    pub fn open(info: SourceInfo, dims: usize, directory: &Path) -> Result<Self> {
        Self::open_with_options(info, dims, directory, DenseOptions::default())
    }

    /// Open the store in `directory` with vectors of `dims` dimensions, creating the
    /// directory if needed and loading the last committed state if there is one
    /// (and its HNSW index, rebuilt if it is missing or stale).
    pub fn open_with_options(
        info: SourceInfo,
        dims: usize,
        directory: &Path,
        options: DenseOptions,
    ) -> Result<Self> {
        if dims == 0 {
            return Err(Error::config("a dense store needs at least one dimension"));
        }
        if u32::try_from(dims).is_err() {
            return Err(Error::config(format!(
                "a dense store cannot hold {dims} dimensions"
            )));
        }
        if cfg!(target_endian = "big") {
            return Err(Error::config(
                "the dense store reads its little-endian file in place and needs a little-endian machine",
            ));
        }
        std::fs::create_dir_all(directory).map_err(|error| {
            Error::from(error).context(format!(
                "cannot create dense store directory {}",
                directory.display()
            ))
        })?;
        // A temporary file is a commit that never finished; the data file beside
        // it is still the last complete one.
        let temporary_path = directory.join(TEMPORARY_FILE_NAME);
        if temporary_path.exists() {
            std::fs::remove_file(&temporary_path).map_err(|error| {
                Error::from(error).context(format!(
                    "cannot remove unfinished commit {}",
                    temporary_path.display()
                ))
            })?;
        }
        let mut snapshot = load_snapshot(&directory.join(DATA_FILE_NAME), dims)?;
        if snapshot.chunks.len() >= options.ann_min_rows {
            let loaded = AnnIndex::load(
                directory,
                snapshot.generation,
                dims,
                &snapshot.keys,
                options.ann_expansion,
            );
            let ann = match loaded {
                Some(ann) => ann,
                None => {
                    let ann = AnnIndex::build(snapshot.matrix(), &snapshot.keys, options).map_err(
                        |error| {
                            error.context(format!(
                                "cannot index dense store {}",
                                directory.display()
                            ))
                        },
                    )?;
                    // An index that cannot be saved still serves this process.
                    if let Err(error) = ann.save(directory, snapshot.generation) {
                        tracing::warn!(directory = %directory.display(), %error, "cannot save the dense store's hnsw index");
                    }
                    ann
                }
            };
            snapshot.ann = Some(Arc::new(ann));
        } else {
            snapshot.quantized = scan_copy(&snapshot);
        }
        let inner = DenseInner {
            dimensions: dims,
            options,
            directory: directory.to_path_buf(),
            published: RwLock::new(Arc::new(snapshot)),
            pending: Mutex::new(Vec::new()),
            commit_lock: Mutex::new(()),
        };
        Ok(Self {
            info,
            inner: Arc::new(inner),
        })
    }

    /// Where the store's file lives.
    pub fn directory(&self) -> &Path {
        &self.inner.directory
    }

    pub fn dimensions(&self) -> usize {
        self.inner.dimensions
    }

    /// Whether searches of the committed state go through the HNSW index.
    pub fn uses_ann(&self) -> bool {
        self.inner.current_snapshot().ann.is_some()
    }

    /// What the committed state's search structures hold.
    pub fn memory(&self) -> DenseMemory {
        let snapshot = self.inner.current_snapshot();
        let (ann_graph_bytes, ann_vector_bytes) =
            snapshot.ann.as_ref().map_or((0, 0), |ann| ann.tape_bytes());
        DenseMemory {
            rows: snapshot.chunks.len(),
            mapped_vector_bytes: snapshot.chunks.len() * snapshot.dims * 4,
            ann_index_bytes: snapshot.ann.as_ref().map_or(0, |ann| ann.memory_bytes()),
            ann_graph_bytes,
            ann_vector_bytes,
            key_bytes: snapshot.keys.len() * 8,
            scan_bytes: snapshot.quantized.as_ref().map_or(0, QuantizedRows::bytes),
        }
    }
}

impl DenseInner {
    fn current_snapshot(&self) -> Arc<DenseSnapshot> {
        let published = self
            .published
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(&published)
    }

    fn commit_blocking(&self) -> Result<()> {
        let _commit_guard = lock_ignoring_poison(&self.commit_lock);
        let pending_writes = std::mem::take(&mut *lock_ignoring_poison(&self.pending));
        if pending_writes.is_empty() {
            return Ok(());
        }
        let base = self.current_snapshot();
        let next = apply_writes(&base, &pending_writes, self.dimensions).and_then(|plan| {
            let changed_rows = plan.changed_rows();
            self.persist(&base, &pending_writes, plan)
                .map(|next| (next, changed_rows))
        });
        let (mut next, changed_rows) = match next {
            Ok(next) => next,
            Err(error) => {
                // Put the writes back once, in front of any that arrived meanwhile:
                // a run sharing this store may still commit them. Writes a failed
                // commit already put back are dropped, so the queue cannot grow run
                // after failed run (a full disk under `--watch`). Dropping is safe:
                // a run records objects in its manifest only after its commit
                // succeeds, so a failed run's objects are redone by the next run.
                let mut pending = lock_ignoring_poison(&self.pending);
                let arrived_meanwhile = std::mem::take(&mut *pending);
                *pending = pending_writes
                    .into_iter()
                    .filter(|queued| !queued.requeued)
                    .map(|queued| QueuedWrite {
                        requeued: true,
                        ..queued
                    })
                    .collect();
                pending.extend(arrived_meanwhile);
                return Err(error);
            }
        };
        // The data file is durable now, so the commit has happened whatever becomes
        // of the index: an index that cannot be updated is dropped, searches scan
        // exactly, and the next commit or open rebuilds it.
        next.ann = match self.next_index(&base, &next, &changed_rows) {
            Ok(ann) => ann,
            Err(error) => {
                tracing::warn!(directory = %self.directory.display(), %error, "dense store searches exactly until its hnsw index is rebuilt");
                ann::remove_index_files(&self.directory, None);
                None
            }
        };
        if next.chunks.len() < self.options.ann_min_rows {
            next.quantized = scan_copy(&next);
        }
        let mut published = self
            .published
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *published = Arc::new(next);
        Ok(())
    }

    /// The index for the committed `next` snapshot: the base's, updated in place
    /// with what changed, or a new one when the store just reached `ann_min_rows`;
    /// none below it. Saved for `next`'s generation.
    fn next_index(
        &self,
        base: &DenseSnapshot,
        next: &DenseSnapshot,
        changed_rows: &[usize],
    ) -> Result<Option<Arc<AnnIndex>>> {
        if next.chunks.len() < self.options.ann_min_rows {
            if base.ann.is_some() {
                ann::remove_index_files(&self.directory, None);
            }
            return Ok(None);
        }
        let ann = match &base.ann {
            Some(ann) => {
                let (removed, added) = changed_keys(base, next, changed_rows);
                ann.update(&removed, next.matrix(), &added)?;
                if ann.len() != next.keys.len() {
                    return Err(Error::internal(format!(
                        "hnsw index holds {} vectors after the commit, the store {}",
                        ann.len(),
                        next.keys.len()
                    )));
                }
                Arc::clone(ann)
            }
            None => Arc::new(AnnIndex::build(next.matrix(), &next.keys, self.options)?),
        };
        ann.save(&self.directory, next.generation)?;
        Ok(Some(ann))
    }

    /// Write the planned rows to a new `dense.bin` and map it.
    fn persist(
        &self,
        base: &DenseSnapshot,
        writes: &[QueuedWrite],
        plan: NextRows,
    ) -> Result<DenseSnapshot> {
        let temporary_path = self.directory.join(TEMPORARY_FILE_NAME);
        let data_path = self.directory.join(DATA_FILE_NAME);
        let context = |error: std::io::Error| {
            Error::from(error).context(format!("cannot write dense store {}", data_path.display()))
        };
        let metadata = serde_json::to_vec(&plan.chunks).map_err(|error| {
            Error::internal(format!("cannot encode dense store metadata: {error}"))
        })?;
        let generation = base.generation + 1;
        let file = std::fs::File::create(&temporary_path).map_err(context)?;
        let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
        writer.write_all(FILE_MAGIC).map_err(context)?;
        writer
            .write_all(&FORMAT_VERSION.to_le_bytes())
            .map_err(context)?;
        // Checked at open: dims fits in u32.
        let dims_header = u32::try_from(self.dimensions).unwrap_or(u32::MAX);
        writer
            .write_all(&dims_header.to_le_bytes())
            .map_err(context)?;
        writer
            .write_all(&(plan.chunks.len() as u64).to_le_bytes())
            .map_err(context)?;
        writer
            .write_all(&(metadata.len() as u64).to_le_bytes())
            .map_err(context)?;
        writer
            .write_all(&generation.to_le_bytes())
            .map_err(context)?;
        writer
            .write_all(&plan.next_key.to_le_bytes())
            .map_err(context)?;
        let base_matrix = base.matrix();
        let mut missing_row = false;
        // Rows are copied from the old mapping or the queued writes, never gathered
        // into one matrix: at 1M x 384 that would be 1.5 GB on the heap per commit.
        for sources in plan.sources.chunks(ROWS_PER_WRITE) {
            for source in sources {
                let row = match *source {
                    RowSource::Base(row) => base_matrix.row(row).to_slice(),
                    RowSource::Pending { write, item } => {
                        match writes.get(write).map(|queued| &queued.write) {
                            Some(PendingWrite::Upsert(items)) => {
                                items.get(item).map(|(_, vector)| vector.as_slice())
                            }
                            _ => None,
                        }
                    }
                };
                match row {
                    Some(values) if values.len() == self.dimensions => {
                        writer
                            .write_all(bytemuck::cast_slice(values))
                            .map_err(context)?;
                    }
                    _ => missing_row = true,
                }
            }
            if missing_row {
                // Every source comes from `apply_writes` over these same inputs.
                return Err(Error::internal("dense commit planned a row it cannot find"));
            }
        }
        for key in &plan.keys {
            writer.write_all(&key.to_le_bytes()).map_err(context)?;
        }
        writer.write_all(&metadata).map_err(context)?;
        let file = writer
            .into_inner()
            .map_err(|error| context(error.into_error()))?;
        file.sync_all().map_err(context)?;
        drop(file);
        std::fs::rename(&temporary_path, &data_path).map_err(context)?;
        sync_directory(&self.directory).map_err(context)?;
        let map = map_file(&data_path)?;
        let rows = plan.chunks.len();
        if mapped_matrix(&map, HEADER_BYTES, rows, self.dimensions).is_none() {
            return Err(Error::internal(format!(
                "the dense store {} just written cannot be mapped",
                data_path.display()
            )));
        }
        Ok(DenseSnapshot {
            dims: self.dimensions,
            vectors: StoredVectors::Mapped {
                map,
                offset: HEADER_BYTES,
                rows,
            },
            no_rows: Array2::zeros((0, self.dimensions)),
            keys: plan.keys,
            next_key: plan.next_key,
            generation,
            chunks: plan.chunks,
            ann: None,
            quantized: None,
        })
    }
}

/// Keys the index must drop and `(key, row)` pairs it must add to go from `base`
/// to `next`: deleted rows, and `changed_rows` (new rows, and replaced ones, which
/// keep their key and are dropped first). Both key lists are sorted, so one merge
/// walk finds the deleted keys.
fn changed_keys(
    base: &DenseSnapshot,
    next: &DenseSnapshot,
    changed_rows: &[usize],
) -> (Vec<u64>, Vec<(u64, usize)>) {
    let mut removed = Vec::new();
    let mut next_keys = next.keys.iter().peekable();
    for &key in &base.keys {
        while next_keys.next_if(|&&next_key| next_key < key).is_some() {}
        if next_keys.peek() != Some(&&key) {
            removed.push(key);
        }
    }
    let mut added = Vec::with_capacity(changed_rows.len());
    for &row in changed_rows {
        let Some(&key) = next.keys.get(row) else {
            continue;
        };
        if base.row_of_key(key).is_some() {
            removed.push(key);
        }
        added.push((key, row));
    }
    removed.sort_unstable();
    (removed, added)
}

/// Make the rename itself durable. Directories cannot be opened for syncing on
/// Windows, where the rename is as durable as the file system makes it.
fn sync_directory(directory: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(directory)?.sync_all()?;
    }
    #[cfg(not(unix))]
    {
        let _ = directory;
    }
    Ok(())
}

fn map_file(data_path: &Path) -> Result<Mmap> {
    let file = std::fs::File::open(data_path).map_err(|error| {
        Error::from(error).context(format!("cannot read dense store {}", data_path.display()))
    })?;
    // SAFETY: the map is only read, and the file is never modified in place: commits
    // write a new file and rename it over this one, which leaves this mapping on the
    // old contents. Only this store writes its directory (`stores::lock`).
    let map = unsafe { Mmap::map(&file) }.map_err(|error| {
        Error::from(error).context(format!("cannot map dense store {}", data_path.display()))
    })?;
    // Rescoring reads a few scattered rows per search: without the hint a fault on
    // pages not yet cached also reads ahead the file around them. (Pages already
    // cached are still mapped around a fault: the hint does not stop fault-around.)
    // Only a hint, so best effort.
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::Random);
    Ok(map)
}

/// Unmap the resident pages of `map[start..]` (keys and metadata, decoded to the heap
/// at open): they would otherwise stay in the process's resident set for nothing.
/// The file stays cached and a later read faults the pages back in.
fn release_decoded_tail(map: &Mmap, start: usize) {
    #[cfg(unix)]
    if let Some(length) = map.len().checked_sub(start).filter(|&length| length > 0) {
        // SAFETY: the map is a read-only shared mapping of a file nobody rewrites in
        // place, so dropping its pages loses nothing: they are read again on access.
        let _ = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, length)
        };
    }
    #[cfg(not(unix))]
    let _ = (map, start);
}

fn load_snapshot(data_path: &Path, dims: usize) -> Result<DenseSnapshot> {
    if !data_path.exists() {
        return Ok(DenseSnapshot::empty(dims));
    }
    let map = map_file(data_path)?;
    decode_snapshot(map, dims)
        .map_err(|error| error.context(format!("cannot load dense store {}", data_path.display())))
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut buffer = [0u8; 4];
    buffer.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(buffer)
}

fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut buffer = [0u8; 8];
    buffer.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(buffer)
}

fn decode_snapshot(map: Mmap, dims: usize) -> Result<DenseSnapshot> {
    let corrupt = |what: &str| Error::internal(format!("the file is corrupt: {what}"));
    let bytes: &[u8] = &map;
    if bytes.len() < HEADER_BYTES_WITHOUT_KEYS || &bytes[..8] != FILE_MAGIC {
        return Err(corrupt("not a dense store file"));
    }
    let format_version = read_u32(bytes, 8);
    let header_bytes = match format_version {
        FORMAT_VERSION => HEADER_BYTES,
        FORMAT_VERSION_WITHOUT_KEYS => HEADER_BYTES_WITHOUT_KEYS,
        _ => {
            return Err(Error::config(format!(
                "format version {format_version} is not supported (expected {FORMAT_VERSION})"
            )));
        }
    };
    if bytes.len() < header_bytes {
        return Err(corrupt("header"));
    }
    let file_dims = read_u32(bytes, 12) as usize;
    if file_dims != dims {
        return Err(Error::config(format!(
            "it holds vectors of {file_dims} dimensions but the source is configured with {dims}; \
             fix the config or reindex"
        )));
    }
    let rows = usize::try_from(read_u64(bytes, 16)).map_err(|_| corrupt("row count"))?;
    let metadata_bytes =
        usize::try_from(read_u64(bytes, 24)).map_err(|_| corrupt("metadata length"))?;
    let has_keys = format_version == FORMAT_VERSION;
    let (generation, next_key) = if has_keys {
        (read_u64(bytes, 32), read_u64(bytes, 40))
    } else {
        (0, rows as u64)
    };
    let vector_bytes = rows
        .checked_mul(dims)
        .and_then(|values| values.checked_mul(4))
        .ok_or_else(|| corrupt("row count"))?;
    let key_bytes = if has_keys {
        rows.checked_mul(8).ok_or_else(|| corrupt("row count"))?
    } else {
        0
    };
    let expected_length = header_bytes
        .checked_add(vector_bytes)
        .and_then(|length| length.checked_add(key_bytes))
        .and_then(|length| length.checked_add(metadata_bytes))
        .ok_or_else(|| corrupt("lengths"))?;
    if bytes.len() != expected_length {
        return Err(corrupt(&format!(
            "expected {expected_length} bytes, found {}",
            bytes.len()
        )));
    }
    if mapped_matrix(&map, header_bytes, rows, dims).is_none() {
        return Err(corrupt("the vector block is not aligned"));
    }
    let keys_start = header_bytes + vector_bytes;
    let keys: Vec<u64> = if has_keys {
        bytes[keys_start..keys_start + key_bytes]
            .chunks_exact(8)
            .map(|key_bytes| {
                let mut buffer = [0u8; 8];
                buffer.copy_from_slice(key_bytes);
                u64::from_le_bytes(buffer)
            })
            .collect()
    } else {
        (0..rows as u64).collect()
    };
    // Binary search by key relies on this; `next_key` must stay above them all.
    let sorted = keys.windows(2).all(|pair| pair[0] < pair[1]);
    if !sorted || keys.last().is_some_and(|&last| last >= next_key) {
        return Err(corrupt("row keys are out of order"));
    }
    let chunks: Vec<Chunk> = serde_json::from_slice(&bytes[keys_start + key_bytes..])
        .map_err(|error| corrupt(&format!("metadata: {error}")))?;
    if chunks.len() != rows {
        return Err(corrupt(&format!(
            "{rows} vectors but {} metadata entries",
            chunks.len()
        )));
    }
    release_decoded_tail(&map, keys_start);
    Ok(DenseSnapshot {
        dims,
        vectors: StoredVectors::Mapped {
            map,
            offset: header_bytes,
            rows,
        },
        no_rows: Array2::zeros((0, dims)),
        keys,
        next_key,
        generation,
        chunks,
        ann: None,
        quantized: None,
    })
}

/// Where a row of the next snapshot takes its vector from.
#[derive(Debug, Clone, Copy)]
enum RowSource {
    /// That row of the base snapshot.
    Base(usize),
    /// Item `item` of the upsert at `write` in the commit's queue.
    Pending { write: usize, item: usize },
}

/// The next snapshot's rows, before their vectors are written.
struct NextRows {
    chunks: Vec<Chunk>,
    keys: Vec<u64>,
    sources: Vec<RowSource>,
    next_key: u64,
}

impl NextRows {
    /// Rows whose vector this commit wrote.
    fn changed_rows(&self) -> Vec<usize> {
        self.sources
            .iter()
            .enumerate()
            .filter(|(_, source)| matches!(source, RowSource::Pending { .. }))
            .map(|(row, _)| row)
            .collect()
    }
}

/// Plan the next snapshot: the base plus the pending writes, in order.
fn apply_writes(base: &DenseSnapshot, writes: &[QueuedWrite], dims: usize) -> Result<NextRows> {
    let mut chunks = base.chunks.clone();
    let mut keys = base.keys.clone();
    let mut sources: Vec<RowSource> = (0..chunks.len()).map(RowSource::Base).collect();
    let mut next_key = base.next_key;
    let mut row_by_chunk_id: HashMap<String, usize> = chunks
        .iter()
        .enumerate()
        .map(|(row, chunk)| (chunk.chunk_id.clone(), row))
        .collect();
    for (write_index, write) in writes.iter().enumerate() {
        match &write.write {
            PendingWrite::Upsert(items) => {
                for (item, (chunk, vector)) in items.iter().enumerate() {
                    if vector.len() != dims {
                        return Err(Error::internal("a queued vector has the wrong size"));
                    }
                    let source = RowSource::Pending {
                        write: write_index,
                        item,
                    };
                    // Replace in place so a re-upsert keeps its row, key and the count.
                    if let Some(&row) = row_by_chunk_id.get(&chunk.chunk_id) {
                        sources[row] = source;
                        chunks[row] = chunk.clone();
                        continue;
                    }
                    row_by_chunk_id.insert(chunk.chunk_id.clone(), chunks.len());
                    chunks.push(chunk.clone());
                    sources.push(source);
                    keys.push(next_key);
                    next_key += 1;
                }
            }
            PendingWrite::DeleteObjects(object_keys) => {
                let doomed: HashSet<&str> = object_keys.iter().map(String::as_str).collect();
                if !chunks
                    .iter()
                    .any(|chunk| doomed.contains(chunk.object_key.as_str()))
                {
                    continue;
                }
                // Compact the survivors to the front, keeping their order (and so
                // the keys' order).
                let mut kept_rows = 0;
                for row in 0..chunks.len() {
                    if doomed.contains(chunks[row].object_key.as_str()) {
                        continue;
                    }
                    if kept_rows != row {
                        chunks.swap(kept_rows, row);
                        sources.swap(kept_rows, row);
                        keys.swap(kept_rows, row);
                    }
                    kept_rows += 1;
                }
                chunks.truncate(kept_rows);
                sources.truncate(kept_rows);
                keys.truncate(kept_rows);
                row_by_chunk_id = chunks
                    .iter()
                    .enumerate()
                    .map(|(row, chunk)| (chunk.chunk_id.clone(), row))
                    .collect();
            }
        }
    }
    Ok(NextRows {
        chunks,
        keys,
        sources,
        next_key,
    })
}

/// Check a vector's size and values and return it L2-normalized.
fn normalized_vector(vector: &[f32], dims: usize, what: &str) -> Result<Vec<f32>> {
    if vector.len() != dims {
        return Err(Error::invalid(format!(
            "{what} has {} dimensions but the store holds {dims}",
            vector.len()
        )));
    }
    if vector.iter().any(|value| !value.is_finite()) {
        return Err(Error::invalid(format!("{what} has a non-finite value")));
    }
    // Accumulate in f64: 384+ squares of small f32 values lose precision otherwise.
    let norm = vector
        .iter()
        .map(|&value| f64::from(value) * f64::from(value))
        .sum::<f64>()
        .sqrt() as f32;
    if norm == 0.0 || !norm.is_finite() {
        return Err(Error::invalid(format!(
            "{what} has zero length and no direction"
        )));
    }
    if (norm - 1.0).abs() <= NORM_TOLERANCE {
        return Ok(vector.to_vec());
    }
    Ok(vector.iter().map(|&value| value / norm).collect())
}

/// A row with its score, ordered best first: higher score, then lower row index,
/// so results are deterministic when scores tie.
#[derive(Debug, Clone, Copy)]
struct ScoredRow {
    score: f32,
    row: usize,
}

impl PartialEq for ScoredRow {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for ScoredRow {}

impl PartialOrd for ScoredRow {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ScoredRow {
    /// Greater means better.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.row.cmp(&self.row))
    }
}

/// The score of one row against the query: both unit length, so the cosine.
///
/// Through numkong's dot product, which picks AVX-512 / AVX2 / NEON kernels at run time:
/// this crate is compiled for the baseline x86-64, where ndarray's dot is SSE at best and
/// was a quarter of the CPU of a cached-query search load over 7.8k rows.
fn row_score(row: ArrayView1<'_, f32>, query: ArrayView1<'_, f32>) -> f32 {
    match (row.as_slice(), query.as_slice()) {
        (Some(row), Some(query)) if row.len() == query.len() => {
            <f32 as numkong::Dot>::dot(row, query).map_or(0.0, |score| score as f32)
        }
        _ => row.dot(&query),
    }
}

/// The best `top_k` rows of `vectors` for `query`, best first, scoring blocks of
/// `rows_per_block` rows in parallel.
fn top_rows(
    vectors: ArrayView2<'_, f32>,
    query: ArrayView1<'_, f32>,
    top_k: usize,
    rows_per_block: usize,
) -> Vec<ScoredRow> {
    let row_count = vectors.nrows();
    let top_k = top_k.min(row_count);
    if top_k == 0 || vectors.ncols() != query.len() {
        return Vec::new();
    }
    let rows_per_block = rows_per_block.max(1);
    let block_count = row_count.div_ceil(rows_per_block);
    let mut winners: Vec<ScoredRow> = (0..block_count)
        .into_par_iter()
        .flat_map_iter(|block_index| {
            let first_row = block_index * rows_per_block;
            let end_row = (first_row + rows_per_block).min(row_count);
            let heap_capacity = top_k.min(end_row - first_row);
            // A min-heap of the best rows so far: its top is the worst kept row.
            let mut best: BinaryHeap<Reverse<ScoredRow>> = BinaryHeap::with_capacity(heap_capacity);
            for row in first_row..end_row {
                let candidate = ScoredRow {
                    score: row_score(vectors.row(row), query),
                    row,
                };
                if best.len() < top_k {
                    best.push(Reverse(candidate));
                    continue;
                }
                if let Some(mut worst_kept) = best.peek_mut()
                    && candidate > worst_kept.0
                {
                    *worst_kept = Reverse(candidate);
                }
            }
            best.into_iter().map(|Reverse(scored_row)| scored_row)
        })
        .collect();
    winners.sort_unstable_by(|left, right| right.cmp(left));
    winners.truncate(top_k);
    winners
}

fn search_snapshot(
    snapshot: &DenseSnapshot,
    query_vector: &[f32],
    top_k: usize,
    filter: Option<&Filter>,
) -> Vec<Hit> {
    let query = ArrayView1::from(query_vector);
    let candidate_count = top_k.saturating_mul(ann::OVERSAMPLING);
    // Filtered searches scan the matching rows exactly: usearch's filtered graph
    // search missed matching neighbours in tests (a filter keeping 1 row in 7, with
    // a beam wider than the matches), and a pre-filter must not lose rows.
    let ann_top_rows = match (&snapshot.ann, filter) {
        // A failed graph search (usearch out of thread contexts under a burst)
        // still has an answer: the exact scan.
        (Some(ann), None) if candidate_count < snapshot.chunks.len() => {
            approximate_top_rows(snapshot, ann, query_vector, top_k).unwrap_or_else(|error| {
                tracing::warn!(%error, "dense store falls back to the exact scan");
                None
            })
        }
        _ => None,
    };
    let scored_rows = match (ann_top_rows, filter, &snapshot.quantized) {
        (Some(scored_rows), _, _) => scored_rows,
        (None, None, Some(quantized)) if quantized::candidate_count(top_k) < quantized.rows() => {
            quantized_top_rows(snapshot, quantized, query_vector, top_k)
        }
        (None, None, _) => top_rows(snapshot.matrix(), query, top_k, ROWS_PER_BLOCK),
        (None, Some(filter), _) => filtered_top_rows(snapshot, query, top_k, filter),
    };
    scored_rows
        .into_iter()
        .filter_map(|scored_row| {
            let chunk = snapshot.chunks.get(scored_row.row)?;
            Some(Hit {
                chunk_id: chunk.chunk_id.clone(),
                doc_id: chunk.doc_id.clone(),
                object_key: chunk.object_key.clone(),
                title: chunk.title.clone(),
                text: chunk.text.clone(),
                cloud: chunk.cloud.clone(),
                region: chunk.region.clone(),
                classes: Vec::new(),
                score: scored_row.score,
                span: chunk.span,
            })
        })
        .collect()
}

/// The best `top_k` of the HNSW index's candidates, rescored exactly from the f32
/// rows; `None` when the graph returned fewer than `top_k` rows this snapshot holds
/// (a commit racing this search), so the caller scans exactly.
fn approximate_top_rows(
    snapshot: &DenseSnapshot,
    ann: &AnnIndex,
    query_vector: &[f32],
    top_k: usize,
) -> Result<Option<Vec<ScoredRow>>> {
    let quantized = QuantizedRows::query(query_vector);
    let candidate_count = top_k.saturating_mul(ann::OVERSAMPLING).max(ann.expansion());
    let keys = ann.search(&quantized, candidate_count)?;
    let scored_rows = rescored(
        snapshot,
        keys.into_iter().filter_map(|key| snapshot.row_of_key(key)),
        query_vector,
        top_k,
    );
    Ok((scored_rows.len() == top_k).then_some(scored_rows))
}

/// The best `top_k` rows of a store below `ann_min_rows`: the i8 rows propose
/// [`quantized::candidate_count`] candidates, rescored exactly from the f32 rows.
fn quantized_top_rows(
    snapshot: &DenseSnapshot,
    quantized: &QuantizedRows,
    query_vector: &[f32],
    top_k: usize,
) -> Vec<ScoredRow> {
    let query = QuantizedRows::query(query_vector);
    let candidates = quantized.candidates(&query, quantized::candidate_count(top_k));
    rescored(snapshot, candidates.into_iter(), query_vector, top_k)
}

/// The best `top_k` of `rows` by their exact f32 score, best first, each row once.
fn rescored(
    snapshot: &DenseSnapshot,
    rows: impl Iterator<Item = usize>,
    query_vector: &[f32],
    top_k: usize,
) -> Vec<ScoredRow> {
    let matrix = snapshot.matrix();
    let query = ArrayView1::from(query_vector);
    let mut scored_rows: Vec<ScoredRow> = rows
        .map(|row| ScoredRow {
            score: row_score(matrix.row(row), query),
            row,
        })
        .collect();
    scored_rows.sort_unstable_by(|left, right| right.cmp(left));
    scored_rows.dedup_by_key(|scored_row| scored_row.row);
    scored_rows.truncate(top_k);
    scored_rows
}

/// The best `top_k` of the rows whose chunk passes `filter`, which is checked before a
/// row is scored (a pre-filter: the top_k are the best matching rows, never fewer
/// because unmatched rows took their places). A filter usually keeps a few rows, so
/// they are scored one by one rather than in parallel blocks.
fn filtered_top_rows(
    snapshot: &DenseSnapshot,
    query: ArrayView1<'_, f32>,
    top_k: usize,
    filter: &Filter,
) -> Vec<ScoredRow> {
    let matrix = snapshot.matrix();
    let mut scored_rows: Vec<ScoredRow> = snapshot
        .chunks
        .iter()
        .enumerate()
        .filter(|(_, chunk)| filter.matches(chunk))
        .map(|(row, _)| ScoredRow {
            score: row_score(matrix.row(row), query),
            row,
        })
        .collect();
    scored_rows.sort_unstable_by(|left, right| right.cmp(left));
    scored_rows.truncate(top_k);
    scored_rows
}

/// Run CPU- or disk-heavy work on tokio's blocking pool, not on an async worker.
async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| Error::internal(format!("dense store task failed: {error}")))?
}

#[async_trait]
impl SearchBackend for DenseStore {
    fn describe(&self) -> &SourceInfo {
        &self.info
    }

    async fn search(&self, query: &StoreQuery) -> Result<Vec<Hit>> {
        if query.top_k == 0 {
            return Ok(Vec::new());
        }
        let Some(query_vector) = query.vector.as_ref() else {
            return Err(Error::invalid(format!(
                "source {} is a dense store and needs a query vector",
                self.info.id
            )));
        };
        let query_vector =
            normalized_vector(query_vector, self.inner.dimensions, "the query vector")?;
        let snapshot = self.inner.current_snapshot();
        if snapshot.chunks.is_empty() {
            return Ok(Vec::new());
        }
        let top_k = query.top_k;
        let filter = match query
            .filter
            .as_ref()
            .map(|filter| filter.for_source(&self.info.id))
        {
            None | Some(Pushdown::All) => None,
            Some(Pushdown::Nothing) => return Ok(Vec::new()),
            Some(Pushdown::Only(filter)) => Some(filter),
        };
        // A store the i8 scan covers on one thread is searched in place (about 0.1 ms
        // at SciFact's 7.8k rows): the blocking pool would add two thread wake-ups.
        let in_place = snapshot.ann.is_none() && snapshot.chunks.len() <= quantized::ROWS_PER_TASK;
        let search = move || search_snapshot(&snapshot, &query_vector, top_k, filter.as_ref());
        if in_place {
            return Ok(search());
        }
        run_blocking(move || Ok(search())).await
    }

    async fn upsert(&self, chunks: &[EmbeddedChunk]) -> Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        // Validate the whole batch before queueing any of it.
        let mut items = Vec::with_capacity(chunks.len());
        for embedded_chunk in chunks {
            let chunk = &embedded_chunk.chunk;
            if chunk.chunk_id.is_empty() {
                return Err(Error::invalid("a chunk has an empty chunk id"));
            }
            let vector = normalized_vector(
                &embedded_chunk.vector,
                self.inner.dimensions,
                &format!("the vector of chunk {}", chunk.chunk_id),
            )?;
            items.push((chunk.clone(), vector));
        }
        lock_ignoring_poison(&self.inner.pending)
            .push(QueuedWrite::new(PendingWrite::Upsert(items)));
        Ok(())
    }

    async fn delete_objects(&self, object_keys: &[String]) -> Result<()> {
        if object_keys.is_empty() {
            return Ok(());
        }
        lock_ignoring_poison(&self.inner.pending).push(QueuedWrite::new(
            PendingWrite::DeleteObjects(object_keys.to_vec()),
        ));
        Ok(())
    }

    async fn commit(&self) -> Result<()> {
        let inner = Arc::clone(&self.inner);
        run_blocking(move || inner.commit_blocking()).await
    }

    /// Committed chunks only: uncommitted writes are not counted.
    async fn count(&self) -> Result<u64> {
        Ok(self.inner.current_snapshot().chunks.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use ndarray::Axis;
    use proptest::prelude::*;

    use super::*;
    use crate::error::ErrorKind;
    use crate::stores::StoreKind;

    const DIMS: usize = 4;

    fn source_info() -> SourceInfo {
        SourceInfo {
            id: "local-dense".to_string(),
            backend: "dense".to_string(),
            kind: StoreKind::Dense,
            space: Some("test".to_string()),
            dims: Some(DIMS),
            cloud: "local".to_string(),
            region: "local".to_string(),
        }
    }

    fn chunk(doc_id: &str, ordinal: u32, object_key: &str, vector: [f32; DIMS]) -> EmbeddedChunk {
        EmbeddedChunk {
            chunk: Chunk {
                chunk_id: Chunk::make_id(doc_id, ordinal),
                doc_id: doc_id.to_string(),
                object_key: object_key.to_string(),
                title: format!("title of {doc_id}").into(),
                text: format!("text of {doc_id} part {ordinal}").into(),
                ordinal,
                cloud: "azure".to_string(),
                region: "westeurope".to_string(),
                metadata: Default::default(),
                span: None,
            },
            vector: vector.to_vec(),
        }
    }

    fn query(vector: &[f32], top_k: usize) -> StoreQuery {
        StoreQuery {
            text: String::new(),
            vector: Some(Arc::new(vector.to_vec())),
            top_k,
            deadline: Instant::now() + Duration::from_secs(10),
            filter: None,
        }
    }

    fn sample_chunks() -> Vec<EmbeddedChunk> {
        vec![
            chunk("east", 0, "compass/east", [1.0, 0.0, 0.0, 0.0]),
            chunk("north", 0, "compass/north", [0.0, 1.0, 0.0, 0.0]),
            chunk("north", 1, "compass/north", [0.0, 0.8, 0.6, 0.0]),
            chunk("up", 0, "compass/up", [0.0, 0.0, 0.0, 1.0]),
        ]
    }

    async fn store_with_samples(directory: &Path) -> DenseStore {
        let store = DenseStore::open(source_info(), DIMS, directory).expect("open");
        store.upsert(&sample_chunks()).await.expect("upsert");
        store.commit().await.expect("commit");
        store
    }

    fn chunk_ids(hits: &[Hit]) -> Vec<&str> {
        hits.iter().map(|hit| hit.chunk_id.as_str()).collect()
    }

    #[tokio::test]
    async fn nearest_comes_first_with_whole_chunks() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = store_with_samples(directory.path()).await;
        let hits = store
            .search(&query(&[0.0, 1.0, 0.1, 0.0], 3))
            .await
            .expect("search");
        assert_eq!(chunk_ids(&hits), ["north#0", "north#1", "east#0"]);
        assert_eq!(hits[0].doc_id, "north");
        assert_eq!(hits[0].object_key, "compass/north");
        assert_eq!(&*hits[0].title, "title of north");
        assert_eq!(&*hits[0].text, "text of north part 0");
        assert_eq!(
            (hits[0].cloud.as_str(), hits[0].region.as_str()),
            ("azure", "westeurope")
        );
        // The query was re-normalized, so the score is the cosine.
        let expected_cosine = 1.0 / (1.0f32 + 0.01).sqrt();
        assert!((hits[0].score - expected_cosine).abs() < 1e-6);
        assert_eq!(store.describe(), &source_info());
    }

    #[tokio::test]
    async fn stored_vectors_are_renormalized() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = DenseStore::open(source_info(), DIMS, directory.path()).expect("open");
        store
            .upsert(&[chunk("long", 0, "long", [3.0, 4.0, 0.0, 0.0])])
            .await
            .expect("upsert");
        store.commit().await.expect("commit");
        let hits = store
            .search(&query(&[0.6, 0.8, 0.0, 0.0], 1))
            .await
            .expect("search");
        assert!((hits[0].score - 1.0).abs() < 1e-6);
    }

    #[tokio::test]
    async fn bad_vectors_are_rejected_and_nothing_of_the_batch_is_queued() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = DenseStore::open(source_info(), DIMS, directory.path()).expect("open");
        let mut wrong_size = chunk("wrong", 0, "wrong", [1.0, 0.0, 0.0, 0.0]);
        wrong_size.vector.push(0.0);
        let error = store
            .upsert(&[chunk("fine", 0, "fine", [1.0, 0.0, 0.0, 0.0]), wrong_size])
            .await
            .expect_err("wrong dimension");
        assert_eq!(error.kind, ErrorKind::InvalidArgument);
        assert!(
            error.message.contains('5') && error.message.contains('4'),
            "{error}"
        );
        assert!(error.message.contains("wrong#0"), "{error}");

        for vector in [
            [0.0, 0.0, 0.0, 0.0],
            [f32::NAN, 0.0, 0.0, 1.0],
            [f32::INFINITY, 0.0, 0.0, 1.0],
        ] {
            let error = store
                .upsert(&[chunk("bad", 0, "bad", vector)])
                .await
                .expect_err("bad vector");
            assert_eq!(error.kind, ErrorKind::InvalidArgument);
        }
        store.commit().await.expect("commit");
        assert_eq!(store.count().await.expect("count"), 0);
    }

    #[tokio::test]
    async fn bad_queries_are_rejected_and_top_k_zero_is_empty() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = store_with_samples(directory.path()).await;
        let error = store
            .search(&query(&[1.0, 0.0], 3))
            .await
            .expect_err("wrong dimension");
        assert_eq!(error.kind, ErrorKind::InvalidArgument);
        assert!(error.message.contains("2 dimensions") && error.message.contains('4'));
        let mut without_vector = query(&[1.0, 0.0, 0.0, 0.0], 3);
        without_vector.vector = None;
        let error = store.search(&without_vector).await.expect_err("no vector");
        assert_eq!(error.kind, ErrorKind::InvalidArgument);
        assert!(
            store
                .search(&query(&[1.0, 0.0, 0.0, 0.0], 0))
                .await
                .expect("top_k zero")
                .is_empty()
        );
        let everything = store
            .search(&query(&[1.0, 0.0, 0.0, 0.0], usize::MAX))
            .await
            .expect("huge top_k");
        assert_eq!(everything.len(), 4);
    }

    #[tokio::test]
    async fn re_upserting_is_idempotent_and_replaces_in_place() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = store_with_samples(directory.path()).await;
        store.upsert(&sample_chunks()).await.expect("upsert");
        store.commit().await.expect("commit");
        assert_eq!(store.count().await.expect("count"), 4);

        // East now points up; the last of two upserts in one batch wins.
        let moved = chunk("east", 0, "compass/east", [0.0, 0.0, 0.0, 1.0]);
        let mut moved_again = moved.clone();
        moved_again.chunk.text = "moved twice".into();
        store.upsert(&[moved, moved_again]).await.expect("upsert");
        store.commit().await.expect("commit");
        assert_eq!(store.count().await.expect("count"), 4);
        let hits = store
            .search(&query(&[0.0, 0.0, 0.0, 1.0], 2))
            .await
            .expect("search");
        assert_eq!(chunk_ids(&hits), ["east#0", "up#0"]);
        assert_eq!(&*hits[0].text, "moved twice");
    }

    #[tokio::test]
    async fn delete_objects_removes_exactly_their_chunks_in_write_order() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = store_with_samples(directory.path()).await;
        store
            .delete_objects(&["compass/north".to_string(), "never/indexed".to_string()])
            .await
            .expect("delete");
        store.commit().await.expect("commit");
        let hits = store
            .search(&query(&[0.0, 1.0, 0.0, 0.0], 10))
            .await
            .expect("search");
        let mut remaining = chunk_ids(&hits);
        remaining.sort_unstable();
        assert_eq!(remaining, ["east#0", "up#0"]);

        // Delete then upsert in one commit: the upsert survives. Upsert then
        // delete: it does not.
        store
            .delete_objects(&["compass/east".to_string()])
            .await
            .expect("delete");
        store
            .upsert(&[chunk("east", 0, "compass/east", [1.0, 0.0, 0.0, 0.0])])
            .await
            .expect("upsert");
        store
            .upsert(&[chunk("west", 0, "compass/west", [-1.0, 0.0, 0.0, 0.0])])
            .await
            .expect("upsert");
        store
            .delete_objects(&["compass/west".to_string()])
            .await
            .expect("delete");
        store.commit().await.expect("commit");
        let hits = store
            .search(&query(&[1.0, 0.0, 0.0, 0.0], 10))
            .await
            .expect("search");
        let mut remaining = chunk_ids(&hits);
        remaining.sort_unstable();
        assert_eq!(remaining, ["east#0", "up#0"]);
    }

    #[tokio::test]
    async fn writes_are_invisible_until_commit() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = store_with_samples(directory.path()).await;
        store
            .upsert(&[chunk("west", 0, "compass/west", [-1.0, 0.0, 0.0, 0.0])])
            .await
            .expect("upsert");
        store
            .delete_objects(&["compass/up".to_string()])
            .await
            .expect("delete");
        let west = [-1.0, 0.0, 0.0, 0.0];
        assert_eq!(store.count().await.expect("count"), 4);
        let hits = store.search(&query(&west, 10)).await.expect("search");
        assert!(!chunk_ids(&hits).contains(&"west#0"));
        assert!(chunk_ids(&hits).contains(&"up#0"));
        store.commit().await.expect("commit");
        let hits = store.search(&query(&west, 1)).await.expect("search");
        assert_eq!(chunk_ids(&hits), ["west#0"]);
        assert_eq!(store.count().await.expect("count"), 4);
    }

    #[tokio::test]
    async fn reopen_restores_the_last_commit_exactly_and_drops_uncommitted_writes() {
        let directory = tempfile::tempdir().expect("tempdir");
        let probe = [0.3, 0.5, 0.2, 0.1];
        let before = {
            let store = store_with_samples(directory.path()).await;
            let before = store.search(&query(&probe, 10)).await.expect("search");
            store
                .upsert(&[chunk("west", 0, "compass/west", [-1.0, 0.0, 0.0, 0.0])])
                .await
                .expect("upsert");
            store
                .delete_objects(&["compass/east".to_string()])
                .await
                .expect("delete");
            // Dropped without commit: as if the process had stopped here.
            before
        };
        let store = DenseStore::open(source_info(), DIMS, directory.path()).expect("reopen");
        assert_eq!(store.count().await.expect("count"), 4);
        let after = store.search(&query(&probe, 10)).await.expect("search");
        assert_eq!(before, after);
    }

    #[tokio::test]
    async fn reopen_refuses_other_dimensions_and_damaged_files() {
        let directory = tempfile::tempdir().expect("tempdir");
        drop(store_with_samples(directory.path()).await);
        let error = DenseStore::open(source_info(), 8, directory.path())
            .err()
            .expect("dimension mismatch");
        assert_eq!(error.kind, ErrorKind::Config);
        assert!(
            error.message.contains('8') && error.message.contains('4'),
            "{error}"
        );

        let data_path = directory.path().join(DATA_FILE_NAME);
        let bytes = std::fs::read(&data_path).expect("read");
        std::fs::write(&data_path, &bytes[..bytes.len() - 3]).expect("truncate");
        let error = DenseStore::open(source_info(), DIMS, directory.path())
            .err()
            .expect("truncated");
        assert!(error.message.contains("corrupt"), "{error}");
        std::fs::write(&data_path, b"not a dense file at all, just some bytes").expect("write");
        assert!(DenseStore::open(source_info(), DIMS, directory.path()).is_err());
    }

    #[tokio::test]
    async fn an_unfinished_commit_leaves_the_previous_state_readable() {
        let directory = tempfile::tempdir().expect("tempdir");
        drop(store_with_samples(directory.path()).await);
        // A crash between creating the temporary file and the rename.
        std::fs::write(directory.path().join(TEMPORARY_FILE_NAME), b"half writ").expect("write");
        let store = DenseStore::open(source_info(), DIMS, directory.path()).expect("reopen");
        assert_eq!(store.count().await.expect("count"), 4);
        assert!(!directory.path().join(TEMPORARY_FILE_NAME).exists());
    }

    #[tokio::test]
    async fn a_failed_commit_keeps_its_writes_for_the_next_one() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store_directory = directory.path().join("store");
        let store = store_with_samples(&store_directory).await;
        store
            .upsert(&[chunk("west", 0, "compass/west", [-1.0, 0.0, 0.0, 0.0])])
            .await
            .expect("upsert");
        std::fs::remove_dir_all(&store_directory).expect("remove");
        store.commit().await.expect_err("nowhere to write");
        assert_eq!(store.count().await.expect("count"), 4);
        std::fs::create_dir_all(&store_directory).expect("recreate");
        store.commit().await.expect("commit");
        assert_eq!(store.count().await.expect("count"), 5);
        let reopened = DenseStore::open(source_info(), DIMS, &store_directory).expect("reopen");
        assert_eq!(reopened.count().await.expect("count"), 5);
    }

    #[tokio::test]
    async fn failed_commits_put_writes_back_once_so_the_queue_does_not_grow() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store_directory = directory.path().join("store");
        let store = store_with_samples(&store_directory).await;
        std::fs::remove_dir_all(&store_directory).expect("remove");
        // Three runs on a disk that refuses every commit, each writing its chunk.
        for run in ["west", "south", "down"] {
            store
                .upsert(&[chunk(run, 0, run, [-1.0, 0.0, 0.0, 0.0])])
                .await
                .expect("upsert");
            store.commit().await.expect_err("nowhere to write");
            assert!(
                lock_ignoring_poison(&store.inner.pending).len() <= 2,
                "at most this run's writes and the last failed run's"
            );
        }
        std::fs::create_dir_all(&store_directory).expect("recreate");
        store.commit().await.expect("commit");
        let hits = store
            .search(&query(&[-1.0, 0.0, 0.0, 0.0], 10))
            .await
            .expect("search");
        let mut committed: Vec<&str> = chunk_ids(&hits)
            .into_iter()
            .filter(|id| !["east#0", "north#0", "north#1", "up#0"].contains(id))
            .collect();
        committed.sort_unstable();
        // West and south failed two commits each and were dropped (their runs
        // redo them); down failed one and is still queued.
        assert_eq!(committed, ["down#0"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn searches_see_whole_snapshots_while_commits_run() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store =
            Arc::new(DenseStore::open(source_info(), DIMS, directory.path()).expect("open"));
        let batch_size = 50;
        let writer_store = Arc::clone(&store);
        let writer = tokio::spawn(async move {
            for batch in 0..20 {
                let chunks: Vec<EmbeddedChunk> = (0..batch_size)
                    .map(|index| {
                        let angle = (batch * batch_size + index) as f32 * 0.01;
                        chunk(
                            &format!("doc{batch}"),
                            index as u32,
                            &format!("object{batch}"),
                            [angle.cos(), angle.sin(), 0.0, 0.0],
                        )
                    })
                    .collect();
                writer_store.upsert(&chunks).await.expect("upsert");
                writer_store.commit().await.expect("commit");
            }
        });
        while !writer.is_finished() {
            let hits = store
                .search(&query(&[1.0, 0.0, 0.0, 0.0], usize::MAX))
                .await
                .expect("search");
            // Each commit adds a whole batch: a search sees all of it or none.
            assert_eq!(hits.len() % batch_size as usize, 0);
        }
        writer.await.expect("writer");
        assert_eq!(store.count().await.expect("count"), 1000);
    }

    const ANN_DIMS: usize = 16;

    fn ann_source_info() -> SourceInfo {
        SourceInfo {
            dims: Some(ANN_DIMS),
            ..source_info()
        }
    }

    fn pseudo_random_vector(seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..ANN_DIMS)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
            })
            .collect()
    }

    fn ann_chunk(index: u64) -> EmbeddedChunk {
        let doc_id = format!("doc{index}");
        EmbeddedChunk {
            chunk: Chunk {
                chunk_id: Chunk::make_id(&doc_id, 0),
                doc_id,
                object_key: format!("group{}/object{}", index % 7, index / 10),
                title: "".into(),
                text: format!("chunk {index}").into(),
                ordinal: 0,
                cloud: "local".to_string(),
                region: "local".to_string(),
                metadata: Default::default(),
                span: None,
            },
            vector: pseudo_random_vector(index),
        }
    }

    const EXACT: DenseOptions = DenseOptions {
        ann_min_rows: usize::MAX,
        ann_expansion: DEFAULT_ANN_EXPANSION,
        ann_connectivity: ann::DEFAULT_CONNECTIVITY,
    };
    /// HNSW from 100 rows, with a beam wide enough that 1,500 rows rank exactly.
    const FORCED_ANN: DenseOptions = DenseOptions {
        ann_min_rows: 100,
        ann_expansion: 512,
        ann_connectivity: ann::DEFAULT_CONNECTIVITY,
    };

    /// A store of `rows` deterministic pseudo-random chunks: chunk `i` is in object
    /// `group{i % 7}/object{i / 10}`.
    async fn ann_store(directory: &Path, options: DenseOptions, rows: u64) -> DenseStore {
        let store = DenseStore::open_with_options(ann_source_info(), ANN_DIMS, directory, options)
            .expect("open");
        let chunks: Vec<EmbeddedChunk> = (0..rows).map(ann_chunk).collect();
        store.upsert(&chunks).await.expect("upsert");
        store.commit().await.expect("commit");
        store
    }

    fn probes() -> Vec<Vec<f32>> {
        (0..40)
            .map(|probe| pseudo_random_vector(1_000_000 + probe))
            .collect()
    }

    /// HNSW is approximate, and its graph depends on insertion order and threads
    /// (rows are added in parallel): the hits must share at least half of the
    /// reference top 10 (a broken graph fails this), each with its exact cosine
    /// (rescored), and no hit outside the reference may beat the reference's last.
    /// Returns how many of the reference it found: callers with many probes hold the
    /// mean to [`MEAN_RECALL`], which one unlucky probe cannot sink.
    fn assert_near(hits: &[Hit], reference: &[Hit]) -> usize {
        assert_eq!(hits.len(), reference.len(), "{hits:?}");
        let shared = hits
            .iter()
            .filter(|hit| reference.iter().any(|kept| kept.chunk_id == hit.chunk_id))
            .count();
        assert!(shared * 2 >= reference.len(), "{hits:?} vs {reference:?}");
        let floor = reference.last().map_or(f32::MIN, |last| last.score);
        for hit in hits {
            match reference.iter().find(|kept| kept.chunk_id == hit.chunk_id) {
                Some(kept) => assert!((kept.score - hit.score).abs() < 1e-6, "{hit:?}"),
                None => assert!(hit.score <= floor + 1e-6, "{hit:?} beats {floor}"),
            }
        }
        shared
    }

    /// Recall@10 over many probes, as `benches/dense_scale.rs` holds the index to at 1M.
    const MEAN_RECALL: f64 = 0.95;

    fn assert_mean_recall(found: usize, probes: usize) {
        let recall = found as f64 / (probes * 10) as f64;
        assert!(
            recall >= MEAN_RECALL,
            "recall@10 {recall:.3} over {probes} probes"
        );
    }

    async fn top10(store: &DenseStore, probe: &[f32], filter: Option<Filter>) -> Vec<Hit> {
        let mut request = query(probe, 10);
        request.filter = filter;
        store.search(&request).await.expect("search")
    }

    fn index_files(directory: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(directory)
            .expect("read dir")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|name| name.ends_with(".hnsw"))
            .collect();
        names.sort();
        names
    }

    /// The best `count` rows by scoring every row's f32 vector, as (chunk id, cosine).
    fn brute_force_top(rows: u64, probe: &[f32], count: usize) -> Vec<(String, f32)> {
        let query = normalized_vector(probe, ANN_DIMS, "probe").expect("probe");
        let mut scored: Vec<(String, f32)> = (0..rows)
            .map(ann_chunk)
            .map(|embedded| {
                let vector = normalized_vector(&embedded.vector, ANN_DIMS, "row").expect("row");
                let score = row_score(ArrayView1::from(&vector), ArrayView1::from(&query));
                (embedded.chunk.chunk_id, score)
            })
            .collect();
        scored.sort_by(|left, right| right.1.total_cmp(&left.1));
        scored.truncate(count);
        scored
    }

    #[tokio::test]
    async fn the_i8_scan_ranks_like_scoring_every_f32_row_and_after_reopen() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = ann_store(directory.path(), DenseOptions::default(), 1500).await;
        assert!(!store.uses_ann());
        assert_eq!(store.memory().scan_bytes, 1500 * (ANN_DIMS + 4));
        // Random 384-d rows are a hard case: their cosines crowd around zero, so
        // neighbouring ranks differ by little more than the i8 estimates' error.
        let check = |hits: Vec<Hit>, probe: &[f32]| {
            let found: Vec<(String, f32)> = hits
                .into_iter()
                .map(|hit| (hit.chunk_id, hit.score))
                .collect();
            let expected = brute_force_top(1500, probe, found.len());
            let ids =
                |list: &[(String, f32)]| list.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
            assert_eq!(ids(&found), ids(&expected));
            for ((_, score), (_, exact)) in found.iter().zip(&expected) {
                assert!((score - exact).abs() < 1e-6, "{score} vs {exact}");
            }
        };
        for probe in probes() {
            check(top10(&store, &probe, None).await, &probe);
            let top100 = store.search(&query(&probe, 100)).await.expect("search");
            assert_eq!(top100.len(), 100);
            check(top100, &probe);
        }
        drop(store);
        let reopened =
            DenseStore::open(ann_source_info(), ANN_DIMS, directory.path()).expect("reopen");
        assert!(reopened.memory().scan_bytes > 0);
        let probe = &probes()[0];
        check(top10(&reopened, probe, None).await, probe);
    }

    #[tokio::test]
    async fn hnsw_results_equal_exact_results_and_survive_reopen() {
        let exact_directory = tempfile::tempdir().expect("tempdir");
        let ann_directory = tempfile::tempdir().expect("tempdir");
        let exact = ann_store(exact_directory.path(), EXACT, 1500).await;
        let approximate = ann_store(ann_directory.path(), FORCED_ANN, 1500).await;
        assert!(!exact.uses_ann());
        assert!(approximate.uses_ann());
        assert_eq!(index_files(ann_directory.path()), ["dense.1.hnsw"]);
        assert!(index_files(exact_directory.path()).is_empty());
        let mut found = 0;
        for probe in probes() {
            let expected = top10(&exact, &probe, None).await;
            found += assert_near(&top10(&approximate, &probe, None).await, &expected);
        }
        assert_mean_recall(found, probes().len());
        let first_probe = &probes()[0];
        let before = top10(&approximate, first_probe, None).await;
        drop(approximate);
        let reopened = DenseStore::open_with_options(
            ann_source_info(),
            ANN_DIMS,
            ann_directory.path(),
            FORCED_ANN,
        )
        .expect("reopen");
        assert!(reopened.uses_ann());
        assert_eq!(top10(&reopened, first_probe, None).await, before);
        let memory = reopened.memory();
        assert!(memory.ann_index_bytes > 0);
        // One i8 copy of each row, and a graph.
        assert!(memory.ann_vector_bytes >= 1500 * ANN_DIMS);
        assert!(memory.ann_graph_bytes > 0);
    }

    #[tokio::test]
    async fn a_stale_or_damaged_index_is_rebuilt_not_trusted() {
        let directory = tempfile::tempdir().expect("tempdir");
        let probe = &probes()[1];
        let before = {
            let store = ann_store(directory.path(), FORCED_ANN, 1500).await;
            top10(&store, probe, None).await
        };
        // An index of another generation (a crash between the data file's rename
        // and the index's) is never loaded, and gets replaced.
        let current = directory.path().join("dense.1.hnsw");
        std::fs::rename(&current, directory.path().join("dense.0.hnsw")).expect("rename");
        let store = DenseStore::open_with_options(
            ann_source_info(),
            ANN_DIMS,
            directory.path(),
            FORCED_ANN,
        )
        .expect("reopen");
        assert!(store.uses_ann());
        assert_near(&top10(&store, probe, None).await, &before);
        assert_eq!(index_files(directory.path()), ["dense.1.hnsw"]);
        drop(store);
        std::fs::write(&current, b"not an index").expect("damage");
        let store = DenseStore::open_with_options(
            ann_source_info(),
            ANN_DIMS,
            directory.path(),
            FORCED_ANN,
        )
        .expect("reopen");
        assert_near(&top10(&store, probe, None).await, &before);
    }

    #[tokio::test]
    async fn deleted_objects_never_come_back_and_upserts_replace_in_the_index() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = ann_store(directory.path(), FORCED_ANN, 1500).await;
        // Delete every chunk of group 3, move chunk 5 onto a probe, add new rows.
        let doomed: Vec<String> = (0..150u64)
            .map(|object| format!("group{}/object{object}", 3))
            .collect();
        store.delete_objects(&doomed).await.expect("delete");
        let probe = probes()[2].clone();
        let mut moved = ann_chunk(5);
        moved.vector = probe.clone();
        store.upsert(&[moved]).await.expect("upsert");
        let added: Vec<EmbeddedChunk> = (1500..1600).map(ann_chunk).collect();
        store.upsert(&added).await.expect("upsert");
        store.commit().await.expect("commit");
        // Group 3's rows below 1500 are gone; the new rows were upserted after the
        // delete, so group 3's new ones stay.
        let survives = |index: &u64| *index >= 1500 || index % 7 != 3;
        let expected_rows = (0..1600u64).filter(survives).count() as u64;
        assert_eq!(store.count().await.expect("count"), expected_rows);
        assert!(store.uses_ann());

        let exact_directory = tempfile::tempdir().expect("tempdir");
        let exact = DenseStore::open_with_options(
            ann_source_info(),
            ANN_DIMS,
            exact_directory.path(),
            EXACT,
        )
        .expect("open");
        let mut survivors: Vec<EmbeddedChunk> = (0..1600).filter(survives).map(ann_chunk).collect();
        if let Some(chunk) = survivors
            .iter_mut()
            .find(|chunk| chunk.chunk.chunk_id == "doc5#0")
        {
            chunk.vector = probe.clone();
        }
        exact.upsert(&survivors).await.expect("upsert");
        exact.commit().await.expect("commit");

        let reopened = DenseStore::open_with_options(
            ann_source_info(),
            ANN_DIMS,
            directory.path(),
            FORCED_ANN,
        )
        .expect("reopen");
        for store in [&store, &reopened] {
            assert_eq!(top10(store, &probe, None).await[0].chunk_id, "doc5#0");
            let mut found = 0;
            for index in (3..1500u64).step_by(7).take(30) {
                let hits = top10(store, &pseudo_random_vector(index), None).await;
                let deleted = |hit: &Hit| {
                    hit.doc_id
                        .strip_prefix("doc")
                        .and_then(|number| number.parse::<u64>().ok())
                        .is_some_and(|number| !survives(&number))
                };
                assert!(
                    !hits.iter().any(deleted),
                    "a deleted chunk came back: {hits:?}"
                );
                found += assert_near(
                    &hits,
                    &top10(&exact, &pseudo_random_vector(index), None).await,
                );
            }
            assert_mean_recall(found, 30);
        }
    }

    #[tokio::test]
    async fn filters_still_apply_with_the_index() {
        let exact_directory = tempfile::tempdir().expect("tempdir");
        let ann_directory = tempfile::tempdir().expect("tempdir");
        let exact = ann_store(exact_directory.path(), EXACT, 1500).await;
        let approximate = ann_store(ann_directory.path(), FORCED_ANN, 1500).await;
        let group = |prefix: &str| {
            Filter::Condition(crate::stores::filter::Condition::ObjectKeyPrefix(
                prefix.to_string(),
            ))
        };
        // Filtered searches scan the matching rows exactly, broad or selective.
        for filter in [group("group2/"), group("group4/object11")] {
            for probe in probes().iter().take(10) {
                let hits = top10(&approximate, probe, Some(filter.clone())).await;
                assert!(hits.iter().all(|hit| filter.matches(&Chunk {
                    object_key: hit.object_key.clone(),
                    ..ann_chunk(0).chunk
                })));
                assert_eq!(hits, top10(&exact, probe, Some(filter.clone())).await);
            }
        }
    }

    #[tokio::test]
    async fn shrinking_below_the_threshold_drops_the_index() {
        let directory = tempfile::tempdir().expect("tempdir");
        let store = ann_store(directory.path(), FORCED_ANN, 150).await;
        assert!(store.uses_ann());
        // Objects 0 to 5 of every group hold rows 0 to 59.
        let doomed: Vec<String> = (0..6u64)
            .flat_map(|object| (0..7).map(move |group| format!("group{group}/object{object}")))
            .collect();
        store.delete_objects(&doomed).await.expect("delete");
        store.commit().await.expect("commit");
        assert!(store.count().await.expect("count") < 100);
        assert!(!store.uses_ann());
        assert!(index_files(directory.path()).is_empty());
    }

    fn brute_force_top_rows(
        vectors: ArrayView2<'_, f32>,
        query: ArrayView1<'_, f32>,
        top_k: usize,
    ) -> Vec<ScoredRow> {
        let mut all: Vec<ScoredRow> = vectors
            .axis_iter(Axis(0))
            .enumerate()
            .map(|(row, values)| ScoredRow {
                score: row_score(values, query),
                row,
            })
            .collect();
        all.sort_by(|left, right| {
            right
                .score
                .total_cmp(&left.score)
                .then(left.row.cmp(&right.row))
        });
        all.truncate(top_k);
        all
    }

    /// Values from a tiny set make exact ties common, which is where block
    /// merging could go wrong.
    fn matrix_value() -> impl Strategy<Value = f32> {
        prop_oneof![-1.0f32..1.0, (-2i8..=2).prop_map(f32::from)]
    }

    proptest! {
        #[test]
        fn block_top_k_equals_a_brute_force_sort(
            (rows, dims, values) in (0usize..300, 1usize..12).prop_flat_map(|(rows, dims)| {
                (Just(rows), Just(dims), proptest::collection::vec(matrix_value(), rows * dims))
            }),
            query_seed in proptest::collection::vec(matrix_value(), 12),
            top_k in 0usize..320,
            rows_per_block in 1usize..70,
        ) {
            let vectors = Array2::from_shape_vec((rows, dims), values).expect("shape");
            let query = ArrayView1::from(&query_seed[..dims]);
            let parallel = top_rows(vectors.view(), query, top_k, rows_per_block);
            let expected = brute_force_top_rows(vectors.view(), query, top_k);
            let parallel_pairs: Vec<(usize, u32)> =
                parallel.iter().map(|scored| (scored.row, scored.score.to_bits())).collect();
            let expected_pairs: Vec<(usize, u32)> =
                expected.iter().map(|scored| (scored.row, scored.score.to_bits())).collect();
            prop_assert_eq!(parallel_pairs, expected_pairs);
        }
    }
}
