//! i8 copies of a small store's rows, which the exact scan reads instead of the f32
//! rows. Scoring every f32 row was bound by memory bandwidth, not arithmetic (7.8k x
//! 384 f32 is 12 MB read per query); the i8 rows are a quarter of that and fit in
//! the CPU's caches. The scan only proposes candidates: the store rescores them with
//! their f32 rows, as it does the HNSW index's, so scores stay exact cosines.
//!
//! Rows are quantized like the index's ([`super::ann::quantize`]: scaled so the
//! largest component is +-127) and each row's scale is kept, so that an i8 dot
//! product divided by it estimates the cosine times the query's own scale, which is
//! the same for every row and so leaves the order unchanged.

use ndarray::ArrayView2;
use rayon::prelude::*;

use super::ann;

/// Rows estimated by one rayon task (16384 x 384 i8 values are 6 MiB, about 0.1 ms).
/// A store of at most this many rows is scanned on the calling thread: handing so
/// little work to the pool and waiting for it costs more than it saves under load.
pub(super) const ROWS_PER_TASK: usize = 16_384;

/// Candidates the scan proposes for `top_k` results, all rescored in f32. Rescoring
/// reads each candidate's f32 row from memory (1.5 KiB at 384 dims), which was an
/// eighth of a cached SciFact search at four candidates a result. An estimate is
/// off by a small fraction of the gaps between neighbouring rows' cosines, so twice
/// the results, plus a margin for near-ties at small `top_k`, keeps the exact top
/// (tests check it against scoring every f32 row).
pub(super) fn candidate_count(top_k: usize) -> usize {
    top_k.saturating_mul(2).saturating_add(16)
}

pub(super) struct QuantizedRows {
    dims: usize,
    /// Row-major, `dims` values a row.
    values: Vec<i8>,
    /// One over each row's scale.
    inverse_scales: Vec<f32>,
}

impl std::fmt::Debug for QuantizedRows {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("QuantizedRows")
            .field("rows", &self.inverse_scales.len())
            .field("dims", &self.dims)
            .finish()
    }
}

impl QuantizedRows {
    /// The i8 copy of every row of `matrix`.
    pub(super) fn of(matrix: ArrayView2<'_, f32>) -> Self {
        let dims = matrix.ncols();
        let mut values = vec![0i8; matrix.nrows() * dims];
        let mut inverse_scales = vec![0f32; matrix.nrows()];
        values
            .par_chunks_mut(dims.max(1))
            .zip(inverse_scales.par_iter_mut())
            .enumerate()
            .for_each_init(
                || (Vec::with_capacity(dims), Vec::with_capacity(dims)),
                |(quantized, row_buffer): &mut (Vec<i8>, Vec<f32>), (row, (output, inverse))| {
                    row_buffer.clear();
                    row_buffer.extend(matrix.row(row).iter().copied());
                    let scale = ann::quantize(row_buffer, quantized);
                    output.copy_from_slice(quantized);
                    *inverse = if scale > 0.0 { scale.recip() } else { 0.0 };
                },
            );
        Self {
            dims,
            values,
            inverse_scales,
        }
    }

    pub(super) fn rows(&self) -> usize {
        self.inverse_scales.len()
    }

    /// Bytes held on the heap.
    pub(super) fn bytes(&self) -> usize {
        self.values.len() + self.inverse_scales.len() * 4
    }

    /// The query in the rows' form, which is also the HNSW index's: for
    /// [`QuantizedRows::estimate`] and the index's search.
    pub(super) fn query(query: &[f32]) -> Vec<i8> {
        let mut quantized = Vec::with_capacity(query.len());
        ann::quantize(query, &mut quantized);
        quantized
    }

    /// The `count` rows of highest estimate for `query` (from [`QuantizedRows::query`]),
    /// in no order. Every row is estimated, then the best selected in linear time: a
    /// heap kept while scanning spent more on its upkeep than on the dot products.
    pub(super) fn candidates(&self, query: &[i8], count: usize) -> Vec<usize> {
        if count == 0 {
            return Vec::new();
        }
        let estimate = |row| (self.estimate(row, query), row);
        let mut estimates: Vec<(f32, usize)> = if self.rows() <= ROWS_PER_TASK {
            (0..self.rows()).map(estimate).collect()
        } else {
            (0..self.rows())
                .into_par_iter()
                .with_min_len(ROWS_PER_TASK)
                .map(estimate)
                .collect()
        };
        if count < estimates.len() {
            estimates.select_nth_unstable_by(count, |left, right| right.0.total_cmp(&left.0));
            estimates.truncate(count);
        }
        estimates.into_iter().map(|(_, row)| row).collect()
    }

    /// `row`'s cosine with the query, times a factor common to all rows.
    fn estimate(&self, row: usize, query: &[i8]) -> f32 {
        let start = row * self.dims;
        let Some(values) = self.values.get(start..start + self.dims) else {
            return f32::NEG_INFINITY;
        };
        let dot = <i8 as numkong::Dot>::dot(values, query).unwrap_or(0);
        dot as f32 * self.inverse_scales[row]
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;

    use super::*;

    #[test]
    fn estimates_order_rows_as_their_cosines_do() {
        // Three unit rows at falling cosines with the query (1, 0, 0, 0).
        let matrix = Array2::from_shape_vec(
            (3, 4),
            vec![
                0.6, 0.8, 0.0, 0.0, // cosine 0.6
                1.0, 0.0, 0.0, 0.0, // cosine 1
                0.0, 0.0, 0.6, 0.8, // cosine 0
            ],
        )
        .unwrap();
        let rows = QuantizedRows::of(matrix.view());
        let query = QuantizedRows::query(&[1.0, 0.0, 0.0, 0.0]);
        let estimates: Vec<f32> = (0..3).map(|row| rows.estimate(row, &query)).collect();
        assert!(estimates[1] > estimates[0] && estimates[0] > estimates[2]);
        // Up to the query's scale (127 here) the estimates are the cosines.
        assert!((estimates[1] / 127.0 - 1.0).abs() < 0.01);
        assert!((estimates[0] / 127.0 - 0.6).abs() < 0.01);
        assert_eq!(rows.rows(), 3);
        let mut best_two = rows.candidates(&query, 2);
        best_two.sort_unstable();
        assert_eq!(best_two, [0, 1]);
        assert_eq!(rows.candidates(&query, 5).len(), 3);
        assert!(rows.candidates(&query, 0).is_empty());
        assert_eq!(rows.bytes(), 3 * 4 + 3 * 4);
    }

    #[test]
    fn a_store_beyond_one_task_selects_the_same_best_rows_in_parallel() {
        let rows = ROWS_PER_TASK * 2 + 7;
        // Deterministic rows spread over the unit circle of the first two dimensions.
        let matrix = Array2::from_shape_fn((rows, 4), |(row, column)| {
            let angle = row as f32 * 0.618;
            match column {
                0 => angle.cos(),
                1 => angle.sin(),
                _ => 0.0,
            }
        });
        let quantized = QuantizedRows::of(matrix.view());
        let query = QuantizedRows::query(&[1.0, 0.0, 0.0, 0.0]);
        let mut found = quantized.candidates(&query, 25);
        found.sort_unstable();
        let mut by_estimate: Vec<usize> = (0..rows).collect();
        by_estimate.sort_by(|&left, &right| {
            quantized
                .estimate(right, &query)
                .total_cmp(&quantized.estimate(left, &query))
        });
        let lowest_kept = quantized.estimate(by_estimate[24], &query);
        assert_eq!(found.len(), 25);
        for row in found {
            assert!(quantized.estimate(row, &query) >= lowest_kept);
        }
    }
}
