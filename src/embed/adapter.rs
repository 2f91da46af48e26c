//! Linear adapters between embedding spaces: a map fitted on documents embedded in
//! both, so a query embedded in one space can search stores of the other when that
//! store's own model is unavailable. Approximate by nature: search says when it used one.
//!
//! Two fits: ridge least squares (any two sizes) and orthogonal Procrustes (equal sizes;
//! a rotation, so it keeps distances and cannot overfit a small sample).

use std::path::{Path, PathBuf};

use nalgebra::DMatrix;
use ndarray::{Array1, Array2, ArrayView1};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FitMethod {
    LeastSquares,
    Procrustes,
}

/// `to ≈ from · weights`, with `weights` of shape `[from_dims, to_dims]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinearAdapter {
    pub from: String,
    pub to: String,
    pub method: FitMethod,
    /// Documents it was fitted on.
    pub sample: usize,
    weights: Array2<f32>,
}

impl LinearAdapter {
    /// Fits on paired rows: `from[i]` and `to[i]` embed the same text.
    pub fn fit(
        from_space: &str,
        to_space: &str,
        from: &[Vec<f32>],
        to: &[Vec<f32>],
        method: FitMethod,
    ) -> Result<Self> {
        if from.len() != to.len() || from.is_empty() {
            return Err(Error::invalid(format!(
                "an adapter needs the same texts in both spaces, got {} and {}",
                from.len(),
                to.len()
            )));
        }
        let x = matrix(from)?;
        let y = matrix(to)?;
        let (from_dims, to_dims) = (x.ncols(), y.ncols());
        let weights = match method {
            FitMethod::LeastSquares => {
                // Ridge: XᵀX is singular when the sample is smaller than the dimension.
                let mut gram = x.transpose() * &x;
                let ridge = 1e-3 * gram.trace() / from_dims as f64;
                for i in 0..from_dims {
                    gram[(i, i)] += ridge.max(1e-9);
                }
                let cholesky = gram.cholesky().ok_or_else(|| {
                    Error::invalid("the sample's vectors are degenerate; use a larger sample")
                })?;
                cholesky.solve(&(x.transpose() * &y))
            }
            FitMethod::Procrustes => {
                if from_dims != to_dims {
                    return Err(Error::invalid(format!(
                        "procrustes maps equal sizes; {from_space} has {from_dims} dimensions, {to_space} {to_dims}: use least squares"
                    )));
                }
                let svd = (x.transpose() * &y).svd(true, true);
                let (Some(u), Some(v_t)) = (svd.u, svd.v_t) else {
                    return Err(Error::internal("the SVD did not converge"));
                };
                u * v_t
            }
        };
        Ok(Self {
            from: from_space.to_string(),
            to: to_space.to_string(),
            method,
            sample: from.len(),
            weights: Array2::from_shape_fn((from_dims, to_dims), |(i, j)| weights[(i, j)] as f32),
        })
    }

    pub fn from_dims(&self) -> usize {
        self.weights.nrows()
    }

    pub fn to_dims(&self) -> usize {
        self.weights.ncols()
    }

    /// Maps a vector of the `from` space into the `to` space (not normalized).
    pub fn apply(&self, vector: &[f32]) -> Result<Vec<f32>> {
        if vector.len() != self.from_dims() {
            return Err(Error::invalid(format!(
                "adapter {} -> {} takes {} dimensions, got {}",
                self.from,
                self.to,
                self.from_dims(),
                vector.len()
            )));
        }
        let mapped: Array1<f32> = ArrayView1::from(vector).dot(&self.weights);
        Ok(mapped.to_vec())
    }

    /// Where the adapter from `from` to `to` is kept, beside the indexes.
    pub fn path(data_dir: &Path, from: &str, to: &str) -> PathBuf {
        data_dir.join("adapters").join(format!("{from}--{to}.json"))
    }

    pub fn save(&self, data_dir: &Path) -> Result<PathBuf> {
        let path = Self::path(data_dir, &self.from, &self.to);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let json = serde_json::to_vec(self)
            .map_err(|error| Error::internal(format!("cannot serialize the adapter: {error}")))?;
        // Write then rename: a reader never sees half a file.
        let temporary = path.with_extension("json.tmp");
        std::fs::write(&temporary, json)?;
        std::fs::rename(&temporary, &path)?;
        Ok(path)
    }

    /// Every adapter under `data_dir/adapters`, each checked against the sizes of its
    /// spaces by the caller.
    pub fn load_all(data_dir: &Path) -> Result<Vec<Self>> {
        let dir = data_dir.join("adapters");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut adapters = Vec::new();
        for entry in entries {
            let path = entry?.path();
            if path
                .extension()
                .is_some_and(|extension| extension == "json")
            {
                let bytes = std::fs::read(&path)?;
                let adapter: Self = serde_json::from_slice(&bytes).map_err(|error| {
                    Error::config(format!("adapter {} is malformed: {error}", path.display()))
                })?;
                adapters.push(adapter);
            }
        }
        Ok(adapters)
    }
}

fn matrix(rows: &[Vec<f32>]) -> Result<DMatrix<f64>> {
    let dims = rows[0].len();
    if rows.iter().any(|row| row.len() != dims) || dims == 0 {
        return Err(Error::invalid("vectors of one space differ in size"));
    }
    Ok(DMatrix::from_fn(rows.len(), dims, |i, j| rows[i][j] as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random stream, so the tests need no RNG crate.
    fn noise(seed: u64) -> impl FnMut() -> f32 {
        let mut state = seed;
        move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        }
    }

    fn vectors(n: usize, dims: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut next = noise(seed);
        (0..n)
            .map(|_| (0..dims).map(|_| next()).collect())
            .collect()
    }

    /// A rotation from Gram-Schmidt on random vectors.
    fn rotation(dims: usize) -> DMatrix<f64> {
        let random = vectors(dims, dims, 7);
        DMatrix::from_fn(dims, dims, |i, j| random[i][j] as f64)
            .qr()
            .q()
    }

    fn rotate(rows: &[Vec<f32>], rotation: &DMatrix<f64>, keep: usize) -> Vec<Vec<f32>> {
        rows.iter()
            .map(|row| {
                (0..keep)
                    .map(|j| {
                        (0..row.len())
                            .map(|i| row[i] as f64 * rotation[(i, j)])
                            .sum::<f64>() as f32
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn procrustes_recovers_a_rotation_exactly() {
        let dims = 16;
        let rotation = rotation(dims);
        let from = vectors(200, dims, 1);
        let to = rotate(&from, &rotation, dims);
        let adapter = LinearAdapter::fit("a", "b", &from, &to, FitMethod::Procrustes).unwrap();
        let unseen = vectors(5, dims, 99);
        let expected = rotate(&unseen, &rotation, dims);
        for (vector, expected) in unseen.iter().zip(&expected) {
            let mapped = adapter.apply(vector).unwrap();
            for (got, want) in mapped.iter().zip(expected) {
                assert!((got - want).abs() < 1e-4, "{got} vs {want}");
            }
        }
    }

    #[test]
    fn least_squares_maps_into_a_smaller_rotated_space() {
        let dims = 16;
        let rotation = rotation(dims);
        let from = vectors(300, dims, 2);
        let to = rotate(&from, &rotation, 8);
        let adapter = LinearAdapter::fit("a", "b", &from, &to, FitMethod::LeastSquares).unwrap();
        assert_eq!((adapter.from_dims(), adapter.to_dims()), (16, 8));
        let unseen = vectors(1, dims, 5);
        let mapped = adapter.apply(&unseen[0]).unwrap();
        let expected = &rotate(&unseen, &rotation, 8)[0];
        let error: f32 = mapped
            .iter()
            .zip(expected)
            .map(|(a, b)| (a - b).abs())
            .sum();
        assert!(error < 0.01, "total error {error}");
        assert!(
            LinearAdapter::fit("a", "b", &from, &to, FitMethod::Procrustes).is_err(),
            "procrustes needs equal sizes"
        );
    }

    #[test]
    fn saved_adapters_load_back_and_a_wrong_size_is_refused() {
        let from = vectors(50, 4, 3);
        let adapter = LinearAdapter::fit("a", "b", &from, &from, FitMethod::Procrustes).unwrap();
        let dir = tempfile::TempDir::new().unwrap();
        adapter.save(dir.path()).unwrap();
        let loaded = LinearAdapter::load_all(dir.path()).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(
            loaded[0].apply(&from[0]).unwrap(),
            adapter.apply(&from[0]).unwrap()
        );
        assert!(adapter.apply(&[1.0]).is_err());
    }
}
