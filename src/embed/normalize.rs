//! Vector hygiene between a provider and a store: size checks, Matryoshka truncation,
//! L2 normalization.

use crate::error::{Error, Result};

/// Scales `vector` to unit length in place. A zero vector is an error: it has no
/// direction, and a store would rank it arbitrarily.
pub fn l2_normalize(vector: &mut [f32]) -> Result<()> {
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return Err(Error::internal(format!(
            "cannot normalize a vector of norm {norm}"
        )));
    }
    vector.iter_mut().for_each(|x| *x /= norm);
    Ok(())
}

/// Brings a provider's vector to a space's shape: truncated to `dims` when the model is
/// Matryoshka (its leading components carry the meaning), normalized when asked.
/// Anything else of the wrong size is the provider's error, never silently reshaped.
pub fn shape_vector(
    mut vector: Vec<f32>,
    dims: usize,
    truncatable: bool,
    normalize: bool,
) -> Result<Vec<f32>> {
    if vector.len() > dims && truncatable {
        vector.truncate(dims);
    }
    if vector.len() != dims {
        return Err(Error::unavailable(format!(
            "the provider returned a {}-dimensional vector for a {dims}-dimensional space",
            vector.len()
        )));
    }
    if vector.iter().any(|x| !x.is_finite()) {
        return Err(Error::unavailable(
            "the provider returned a vector with a non-finite component",
        ));
    }
    if normalize {
        l2_normalize(&mut vector)?;
    }
    Ok(vector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_leading_components_and_renormalizes() {
        let shaped = shape_vector(vec![3.0, 4.0, 12.0], 2, true, true).unwrap();
        assert!((shaped[0] - 0.6).abs() < 1e-6 && (shaped[1] - 0.8).abs() < 1e-6);
    }

    #[test]
    fn a_wrong_size_is_refused_unless_the_model_is_matryoshka() {
        assert!(shape_vector(vec![1.0, 2.0, 3.0], 2, false, true).is_err());
        assert!(shape_vector(vec![1.0], 2, true, true).is_err());
    }

    #[test]
    fn dot_spaces_keep_the_magnitude_and_bad_values_are_refused() {
        assert_eq!(
            shape_vector(vec![3.0, 4.0], 2, false, false).unwrap(),
            vec![3.0, 4.0]
        );
        assert!(shape_vector(vec![f32::NAN, 1.0], 2, false, false).is_err());
        assert!(shape_vector(vec![0.0, 0.0], 2, false, true).is_err());
    }
}
