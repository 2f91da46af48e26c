//! `skyfuse route explain`: where a chat request would go, from the config alone.

use std::path::PathBuf;

use anyhow::{Result, bail};

use skyfuse::client::load_config;
use skyfuse::policy::egress::EgressPrices;
use skyfuse::policy::residency::Residency;
use skyfuse::route::explain::{PassageSpec, egress_by_place, explain};
use skyfuse::service::Service;

pub fn route_explain(
    config: Option<PathBuf>,
    mut request: skyfuse::route::RouteRequest,
    caller: Option<&str>,
    passages: &[String],
) -> Result<()> {
    let passages = passages
        .iter()
        .map(|text| PassageSpec::parse(text))
        .collect::<std::result::Result<Vec<_>, String>>()
        .map_err(anyhow::Error::msg)?;
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
    let prices = EgressPrices::from_config(&config.egress);
    request.egress_usd_by_cloud = egress_by_place(
        &prices,
        &passages,
        router
            .deployments()
            .iter()
            .map(|d| (d.info().cloud.as_str(), d.info().region.as_str())),
    );
    let plan = router.plan(&caller, &request)?;
    let residency = Residency::new(config.residency.clone(), config.residency_policy.clone());
    let explained = explain(&plan, &residency, &passages);
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
    if !passages.is_empty() {
        println!("residency: {}", explained.residency);
    }
    for (rank, view) in explained.candidates.iter().enumerate() {
        let tokens = view.token_usd.map_or("price unknown".to_string(), |cost| {
            format!("tokens at most ${cost:.5}")
        });
        println!(
            "  {}. {:<40} {:<8} {:<14} {:<10} {tokens}, egress ${:.7}",
            rank + 1,
            view.label,
            view.cloud,
            view.regions.join("+"),
            view.capacity,
            view.egress_usd,
        );
        if let Some(quota) = &view.quota {
            println!("       quota: {quota}");
        }
        for (passage, refusal) in &view.verdicts {
            match refusal {
                None => println!("       {passage}: allowed"),
                Some(why) => println!("       {passage}: refused: {why}"),
            }
        }
        println!("       {}", view.outcome);
    }
    if !plan.skipped.is_empty() {
        println!("skipped:");
        for skip in &plan.skipped {
            println!("  {:<40} {}", skip.deployment, skip.reason);
        }
    }
    Ok(())
}
