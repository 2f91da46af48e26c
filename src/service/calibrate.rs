//! `skyfuse calibrate`: fit an adapter from one embedding space to another on a sample of
//! indexed chunks, and report how well it maps chunks it was not fitted on.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::document::embedding_text;
use crate::embed::Purpose;
use crate::embed::adapter::{FitMethod, LinearAdapter};
use crate::error::{Error, Result};
use crate::service::Service;

/// Share of the sample held out to measure the fit.
const HELD_OUT_SHARE: f64 = 0.1;

#[derive(Debug, Clone)]
pub struct CalibrationReport {
    pub path: PathBuf,
    pub fitted_on: usize,
    pub held_out: usize,
    /// Mean cosine between mapped and native vectors of held-out chunks.
    pub held_out_cosine: f64,
    pub took: Duration,
}

impl Service {
    pub async fn calibrate(
        &self,
        from: &str,
        to: &str,
        sample: usize,
        method: FitMethod,
    ) -> Result<CalibrationReport> {
        let started = Instant::now();
        let embedder = |space: &str| {
            self.embedders
                .get(space)
                .cloned()
                .ok_or_else(|| Error::not_found(format!("unknown space {space:?}")))
        };
        let (from_embedder, to_embedder) = (embedder(from)?, embedder(to)?);
        if from == to {
            return Err(Error::invalid(
                "an adapter maps between two different spaces",
            ));
        }
        let texts = self.sample_texts(sample).await?;
        if texts.len() < 20 {
            return Err(Error::invalid(format!(
                "only {} chunks are indexed; index more documents before calibrating",
                texts.len()
            )));
        }
        let x = from_embedder.embed(&texts, Purpose::Document).await?;
        let y = to_embedder.embed(&texts, Purpose::Document).await?;
        let held_out = ((texts.len() as f64 * HELD_OUT_SHARE).ceil() as usize).max(1);
        let fitted_on = texts.len() - held_out;
        let adapter = LinearAdapter::fit(from, to, &x[..fitted_on], &y[..fitted_on], method)?;
        let mut cosine_sum = 0.0;
        for (source, target) in x[fitted_on..].iter().zip(&y[fitted_on..]) {
            cosine_sum += cosine(&adapter.apply(source)?, target);
        }
        let path = adapter.save(&self.config.server.data_dir)?;
        Ok(CalibrationReport {
            path,
            fitted_on,
            held_out,
            held_out_cosine: cosine_sum / held_out as f64,
            took: started.elapsed(),
        })
    }

    /// Chunk texts from the first source that keeps them.
    async fn sample_texts(&self, sample: usize) -> Result<Vec<String>> {
        let mut reasons = Vec::new();
        for source in self.retriever.sources() {
            match source.backend.sample_texts(sample).await {
                Ok(chunks) if !chunks.is_empty() => {
                    return Ok(chunks
                        .iter()
                        .map(|(title, text)| embedding_text(title, text))
                        .collect());
                }
                Ok(_) => reasons.push(format!("{} is empty", source.id())),
                Err(error) => reasons.push(error.message),
            }
        }
        Err(Error::invalid(format!(
            "no source can give chunks to calibrate on ({})",
            reasons.join("; ")
        )))
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x * y)).sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(x * x)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b)).max(f64::MIN_POSITIVE)
}
