//! `skyfuse placement`: where a workload should run and why, from the seed's
//! capability tables and this config's deployments, residency rules and egress prices.

use std::path::PathBuf;

use anyhow::Result;

use skyfuse::client::load_config;
use skyfuse::policy::placement::{Landscape, Requirements, advise};

pub fn placement(config: Option<PathBuf>, requirements: Requirements) -> Result<()> {
    let config = load_config(config.as_deref())?;
    let advice = advise(&Landscape::from_config(&config), &requirements);
    println!("{}:", describe(&requirements));
    let mut rank = 0;
    for verdict in advice.iter().filter(|verdict| verdict.fits) {
        rank += 1;
        println!(
            "{rank}. {} ({}), score {}",
            verdict.cloud, verdict.service, verdict.score
        );
        for why in &verdict.reasons_for {
            println!("   + {why}");
        }
        for why in &verdict.reasons_against {
            println!("   - {why}");
        }
    }
    if rank == 0 {
        println!("  no cloud meets every requirement");
    }
    let unfit: Vec<_> = advice.iter().filter(|verdict| !verdict.fits).collect();
    if !unfit.is_empty() {
        println!("not a fit:");
        for verdict in unfit {
            println!(
                "   {} ({}): {}",
                verdict.cloud,
                verdict.service,
                verdict.reasons_against.join("; ")
            );
        }
    }
    Ok(())
}

/// The requirements in words, for the heading.
fn describe(requirements: &Requirements) -> String {
    let mut asked = Vec::new();
    if let Some(model) = &requirements.model {
        asked.push(format!("model {model}"));
    }
    for (wanted, words) in [
        (requirements.sovereignty, "data sovereignty"),
        (requirements.predictable_cost, "predictable cost"),
        (requirements.fine_tuning, "fine-tuning"),
        (requirements.lowest_latency, "lowest latency"),
        (requirements.multi_model, "many models"),
    ] {
        if wanted {
            asked.push(words.to_string());
        }
    }
    if let Some(ecosystem) = &requirements.ecosystem {
        asked.push(format!("the {ecosystem} ecosystem"));
    }
    if let Some(dims) = requirements.embedding_dims {
        asked.push(format!("{dims}-dimension embeddings"));
    }
    match (&requirements.data_cloud, &requirements.data_region) {
        (Some(cloud), Some(region)) => asked.push(format!("data in {cloud}/{region}")),
        (Some(cloud), None) => asked.push(format!("data in {cloud}")),
        _ => {}
    }
    if asked.is_empty() {
        "where to run (no requirement given)".to_string()
    } else {
        format!("where to run: {}", asked.join(", "))
    }
}
