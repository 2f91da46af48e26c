//! `skyfuse calibrate`: fit an adapter between two embedding spaces.

use std::path::PathBuf;

use anyhow::Result;

use skyfuse::client::load_config;
use skyfuse::config::process_env;
use skyfuse::embed::adapter::FitMethod;
use skyfuse::service::Service;

use crate::Fit;

pub async fn run_calibrate(
    config: Option<PathBuf>,
    from: &str,
    to: &str,
    sample: usize,
    method: Fit,
) -> Result<()> {
    let config = load_config(config.as_deref())?;
    let service = Service::build(config, &process_env()).await?;
    let method = match method {
        Fit::LeastSquares => FitMethod::LeastSquares,
        Fit::Procrustes => FitMethod::Procrustes,
    };
    let report = service.calibrate(from, to, sample, method).await?;
    println!(
        "adapter {from} -> {to}: fitted on {} chunks in {:.1}s; mean cosine to the native vectors of {} held-out chunks {:.4}\nsaved to {}",
        report.fitted_on,
        report.took.as_secs_f64(),
        report.held_out,
        report.held_out_cosine,
        report.path.display()
    );
    Ok(())
}
