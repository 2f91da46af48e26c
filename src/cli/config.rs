//! `skyfuse config check`: validates a config as `serve` would, without starting
//! anything, and prints what it would serve.

use std::path::PathBuf;

use anyhow::Result;

use skyfuse::client::load_config;
use skyfuse::service::config_check::summarize_config;

/// Without `--config` (or `SKYFUSE_CONFIG`), checks the embedded default, as `serve` runs it.
pub fn run_check(config: Option<PathBuf>) -> Result<()> {
    let name = config.as_ref().map_or_else(
        || "the embedded default".to_owned(),
        |path| path.display().to_string(),
    );
    let summary = summarize_config(&load_config(config.as_deref())?)?;
    println!("{name}: ok");
    println!("{summary}");
    Ok(())
}
