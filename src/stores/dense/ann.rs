//! The HNSW index a dense store searches at and above `ann_min_rows` rows
//! (usearch, cosine over i8 vectors).
//!
//! The index holds i8 copies only: it proposes candidates, and the store rescores
//! them exactly with the f32 rows of its memory-mapped `dense.bin`, so scores stay
//! true cosines and the order among candidates is exact. Each vector is scaled by
//! `127 / max |component|` before rounding: cosine ignores a vector's length, so the
//! scale needs no storage, and the whole i8 range is used (usearch's own cast scales
//! by `127 / norm`, which leaves a 384-d unit vector's components at about +-6).
//!
//! Keys are the store's stable row keys, never row numbers, so deletes that
//! compact the rows do not touch the graph. Updates happen in place under a lock:
//! `reserve` and `remove` take it for writing (usearch's `reserve` reallocates
//! under concurrent readers), searches and `add` for reading (usearch adds and
//! searches concurrently). A search can therefore meet keys a newer commit added;
//! the store drops keys its snapshot does not hold.
//!
//! The file is `dense.<generation>.hnsw`, the generation of the `dense.bin` it was
//! built for: a file of another generation is stale and never loaded, and a loaded
//! one must hold exactly the snapshot's keys, else the store rebuilds it.

use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use ndarray::ArrayView2;
use rayon::prelude::*;
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use crate::error::{Error, Result};

/// Graph degree (usearch doubles it on the base layer). usearch stores a node as
/// its key and level (10 bytes) then per layer a count and neighbour slots (4 bytes
/// each), rounded up to 64 bytes: at 14 a base-layer node is 10 + 4 + 28 * 4 = 126
/// bytes, one 128-byte block; at 16 it is 142, which takes 192.
pub(super) const DEFAULT_CONNECTIVITY: usize = 14;
/// Candidate list while inserting; usearch's default.
const EXPANSION_ADD: usize = 128;
/// Candidates fetched per result wanted before exact rescoring.
pub(super) const OVERSAMPLING: usize = 4;
const INDEX_FILE_PREFIX: &str = "dense.";
const INDEX_FILE_SUFFIX: &str = ".hnsw";

/// usearch gives each concurrent call a thread context and fails a call that finds
/// none free, so keep enough for the blocking pool's searches plus rayon's adds
/// (each is a visited-set of capacity / 8 bytes: 125 KB at 1M rows).
fn thread_contexts() -> usize {
    (rayon::current_num_threads() * 4).max(64)
}

fn hnsw_error(what: &str, error: impl std::fmt::Display) -> Error {
    Error::internal(format!("hnsw index: cannot {what}: {error}"))
}

/// The file of the index built for `generation`.
pub(super) fn index_path(directory: &Path, generation: u64) -> PathBuf {
    directory.join(format!(
        "{INDEX_FILE_PREFIX}{generation}{INDEX_FILE_SUFFIX}"
    ))
}

fn path_text(path: &Path) -> Result<&str> {
    path.to_str().ok_or_else(|| {
        Error::config(format!(
            "the hnsw index path {} is not UTF-8",
            path.display()
        ))
    })
}

/// A unit vector as i8, scaled so its largest component is +-127; returns the scale
/// (0 for a zero vector).
pub(super) fn quantize(vector: &[f32], output: &mut Vec<i8>) -> f32 {
    let largest = vector
        .iter()
        .fold(0.0f32, |largest, value| largest.max(value.abs()));
    let scale = if largest > 0.0 { 127.0 / largest } else { 0.0 };
    output.clear();
    // `as` saturates, and no value exceeds 127 after scaling anyway.
    output.extend(vector.iter().map(|value| (value * scale).round() as i8));
    scale
}

pub(super) struct AnnIndex {
    index: RwLock<Index>,
}

impl std::fmt::Debug for AnnIndex {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AnnIndex")
            .field("size", &self.read().size())
            .finish()
    }
}

impl AnnIndex {
    fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new index over every row of `matrix`, `keys[row]` naming each.
    pub(super) fn build(
        matrix: ArrayView2<'_, f32>,
        keys: &[u64],
        options: super::DenseOptions,
    ) -> Result<Self> {
        let options = IndexOptions {
            dimensions: matrix.ncols(),
            metric: MetricKind::Cos,
            quantization: ScalarKind::I8,
            connectivity: options.ann_connectivity,
            expansion_add: EXPANSION_ADD,
            expansion_search: options.ann_expansion,
            multi: false,
        };
        let index = Index::new(&options).map_err(|error| hnsw_error("create", error))?;
        let ann = Self {
            index: RwLock::new(index),
        };
        let rows: Vec<(u64, usize)> = keys.iter().copied().zip(0..matrix.nrows()).collect();
        ann.add_rows(matrix, &rows)?;
        Ok(ann)
    }

    /// Add `(key, row of matrix)` pairs, in parallel on rayon's pool.
    fn add_rows(&self, matrix: ArrayView2<'_, f32>, rows: &[(u64, usize)]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        {
            let index = self.write();
            let capacity = index.size() + rows.len();
            index
                .reserve_capacity_and_threads(capacity, thread_contexts())
                .map_err(|error| hnsw_error("reserve memory", error))?;
        }
        let index = self.read();
        rows.par_iter().try_for_each_init(
            || (Vec::with_capacity(matrix.ncols()), Vec::new()),
            |(quantized, row_buffer): &mut (Vec<i8>, Vec<f32>), &(key, row)| {
                let values = matrix.row(row);
                let values = match values.as_slice() {
                    Some(values) => values,
                    None => {
                        row_buffer.clear();
                        row_buffer.extend(values.iter().copied());
                        row_buffer.as_slice()
                    }
                };
                quantize(values, quantized);
                index
                    .add(key, quantized.as_slice())
                    .map_err(|error| hnsw_error("add a vector", error))
            },
        )
    }

    /// Apply one commit: drop `removed` keys, then add `added` `(key, row)` pairs
    /// from `matrix` (a replaced row is in both, under the same key).
    pub(super) fn update(
        &self,
        removed: &[u64],
        matrix: ArrayView2<'_, f32>,
        added: &[(u64, usize)],
    ) -> Result<()> {
        {
            let index = self.write();
            for &key in removed {
                index
                    .remove(key)
                    .map_err(|error| hnsw_error("remove a vector", error))?;
            }
        }
        self.add_rows(matrix, added)
    }

    /// Keys of about the `count` nearest i8 vectors, nearest first.
    pub(super) fn search(&self, query: &[i8], count: usize) -> Result<Vec<u64>> {
        let matches = self
            .read()
            .search(query, count)
            .map_err(|error| hnsw_error("search", error))?;
        Ok(matches.keys)
    }

    /// The search breadth, also the fewest candidates a search asks for.
    pub(super) fn expansion(&self) -> usize {
        self.read().expansion_search()
    }

    pub(super) fn len(&self) -> usize {
        self.read().size()
    }

    /// Bytes the index holds in memory (graph and i8 vectors).
    pub(super) fn memory_bytes(&self) -> usize {
        self.read().memory_usage()
    }

    /// Bytes the graph and the vectors take from usearch's arenas, without the
    /// reserved but untouched end of the last arena of each.
    pub(super) fn tape_bytes(&self) -> (usize, usize) {
        let stats = self.read().memory_stats();
        (
            stats.graph_allocated.saturating_sub(stats.graph_reserved),
            stats
                .vectors_allocated
                .saturating_sub(stats.vectors_reserved),
        )
    }

    /// Write the index for `generation` crash-safely (temporary file, fsync,
    /// rename, fsync the directory), then remove the files of other generations.
    pub(super) fn save(&self, directory: &Path, generation: u64) -> Result<()> {
        let final_path = index_path(directory, generation);
        let temporary_path = final_path.with_extension("hnsw.tmp");
        let context = |error: std::io::Error| {
            Error::from(error).context(format!("cannot write {}", final_path.display()))
        };
        self.read()
            .save(path_text(&temporary_path)?)
            .map_err(|error| hnsw_error("save", error))?;
        std::fs::File::open(&temporary_path)
            .and_then(|file| file.sync_all())
            .map_err(context)?;
        std::fs::rename(&temporary_path, &final_path).map_err(context)?;
        super::sync_directory(directory).map_err(context)?;
        remove_index_files(directory, Some(generation));
        Ok(())
    }

    /// The saved index for `generation` if it exists and holds exactly `keys`;
    /// `None` when it is missing or does not match (the caller rebuilds it).
    pub(super) fn load(
        directory: &Path,
        generation: u64,
        dims: usize,
        keys: &[u64],
        expansion_search: usize,
    ) -> Option<Self> {
        let path = index_path(directory, generation);
        if !path.exists() {
            return None;
        }
        let loaded = path_text(&path)
            .and_then(|text| Index::restore(text).map_err(|error| hnsw_error("load", error)));
        let index = match loaded {
            Ok(index) => index,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "rebuilding the dense store's hnsw index");
                return None;
            }
        };
        let matches = index.dimensions() == dims
            && index.scalar_kind() == ScalarKind::I8
            && index.metric_kind() == MetricKind::Cos
            && index.size() == keys.len()
            && keys.iter().all(|&key| index.contains(key));
        if !matches {
            tracing::warn!(path = %path.display(), "the dense store's hnsw index does not match its vectors; rebuilding it");
            return None;
        }
        index.change_expansion_search(expansion_search);
        if let Err(error) = index.reserve_capacity_and_threads(index.size(), thread_contexts()) {
            tracing::warn!(path = %path.display(), %error, "rebuilding the dense store's hnsw index");
            return None;
        }
        Some(Self {
            index: RwLock::new(index),
        })
    }
}

/// Remove index files, all of them or all but `keep`'s generation, and any
/// unfinished temporary ones. Best effort: a leftover file is never loaded, since
/// its generation is not the data file's.
pub(super) fn remove_index_files(directory: &Path, keep: Option<u64>) {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return;
    };
    let kept_name =
        keep.map(|generation| format!("{INDEX_FILE_PREFIX}{generation}{INDEX_FILE_SUFFIX}"));
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let is_index = name.starts_with(INDEX_FILE_PREFIX)
            && (name.ends_with(INDEX_FILE_SUFFIX) || name.ends_with(".hnsw.tmp"));
        if is_index && Some(name) != kept_name.as_deref() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
