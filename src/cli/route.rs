//! `skyfuse route explain`: where a chat request would go, from the config alone.

use std::path::PathBuf;

use anyhow::{Result, bail};

use skyfuse::client::load_config;
use skyfuse::service::Service;

pub fn route_explain(
    config: Option<PathBuf>,
    request: skyfuse::route::RouteRequest,
    caller: Option<&str>,
) -> Result<()> {
    let config = load_config(config.as_deref())?;
    let Some(router) = Service::planning_router(&config)? else {
        bail!("no chat model is configured: add [[deployment]]s or answer.provider");
    };
    let caller = match caller {
        None => skyfuse::route::Caller::anonymous(),
        Some(id) => match config.callers.iter().find(|known| known.id == id) {
            Some(known) => skyfuse::route::Caller::from_config(known),
            None => bail!("no [[caller]] has id {id:?}"),
        },
    };
    let plan = router.plan(&caller, &request)?;
    let asked = match (&request.model, &plan.tier) {
        (Some(model), _) => format!("model {model}"),
        (None, Some(tier)) => format!("tier {tier}"),
        (None, None) => "the default model".to_string(),
    };
    println!(
        "{asked}, ~{} prompt + {} output tokens, caller {}:",
        request.input_tokens, request.max_output_tokens, caller.id
    );
    if plan.candidates.is_empty() {
        println!("  no candidate");
    }
    for (rank, candidate) in plan.candidates.iter().enumerate() {
        let info = candidate.deployment.info();
        let cost = candidate
            .max_cost_usd
            .map_or("price unknown".to_string(), |cost| {
                format!("at most ${cost:.5}")
            });
        println!(
            "  {}. {:<40} {:<8} {:<14} {cost:<18} {}",
            rank + 1,
            candidate.deployment.label(),
            info.cloud,
            info.region,
            candidate.why
        );
    }
    if !plan.skipped.is_empty() {
        println!("skipped:");
        for skip in &plan.skipped {
            println!("  {:<40} {}", skip.deployment, skip.reason);
        }
    }
    Ok(())
}
