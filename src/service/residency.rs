//! Residency at `Answer`: the retrieved passages decide where the prompt may go
//! (`policy::residency`), before the route is planned. At `Search`: the request's
//! and the caller's restrictions make the search's zone (`policy::search_zone`).

use super::Service;
use super::chat::ChatCall;
use crate::auth::Principal;
use crate::config::Glob;
use crate::error::{Error, Result};
use crate::policy::residency::{Decision, Place};
use crate::policy::search_zone::{Limit, SearchZone};
use crate::retrieve::FusedHit;

/// A passage kept out of the prompt, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct WithheldPassage {
    pub chunk_id: String,
    pub object_key: String,
    pub cloud: String,
    pub region: String,
    pub reason: String,
}

/// What residency did to an answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResidencyOutcome {
    /// The regions the prompt was kept to; empty when nothing restricted it.
    pub regions: Vec<String>,
    pub withheld: Vec<WithheldPassage>,
}

impl Service {
    /// Keeps the prompt of `call` in the regions every passage in `hits` may be
    /// processed in: narrows `call.allowed_regions` to them, and takes out of `hits`
    /// the passages no such region may see (or refuses, as `[residency_policy]` says).
    pub(super) fn apply_residency(
        &self,
        principal: &Principal,
        call: &mut ChatCall,
        hits: &mut Vec<FusedHit>,
    ) -> Result<ResidencyOutcome> {
        if self.residency.is_open() || hits.is_empty() {
            return Ok(ResidencyOutcome::default());
        }
        let endpoints = self.candidate_endpoints(principal, call)?;
        let places: Vec<Place> = hits
            .iter()
            .map(|hit| Place {
                cloud: &hit.hit.cloud,
                region: &hit.hit.region,
                classes: &hit.hit.classes,
            })
            .collect();
        match self.residency.decide(&places, &endpoints) {
            Decision::Unrestricted => Ok(ResidencyOutcome::default()),
            Decision::Refused(why) => Err(Error::forbidden(why)),
            Decision::Restricted {
                regions,
                kept,
                withheld,
            } => {
                let withheld = withheld
                    .into_iter()
                    .map(|(index, reason)| {
                        let hit = &hits[index].hit;
                        WithheldPassage {
                            chunk_id: hit.chunk_id.clone(),
                            object_key: hit.object_key.clone(),
                            cloud: hit.cloud.clone(),
                            region: hit.region.clone(),
                            reason,
                        }
                    })
                    .collect();
                let mut index = 0;
                hits.retain(|_| {
                    let keep = kept.contains(&index);
                    index += 1;
                    keep
                });
                call.allowed_regions = regions.clone();
                Ok(ResidencyOutcome { regions, withheld })
            }
        }
    }
}

impl Service {
    /// The zone a search request asks for: its own clouds, region globs and classes,
    /// with the policy's crossing classes. A bad glob is the caller's error.
    pub(super) fn request_zone(
        &self,
        clouds: &[String],
        regions: &[String],
        classes: Vec<String>,
    ) -> Result<SearchZone> {
        let regions = Glob::all(regions).map_err(|error| error.context("regions"))?;
        let mut limits = Vec::new();
        if !clouds.is_empty() || !regions.is_empty() {
            limits.push(Limit {
                by: "the request".into(),
                clouds: clouds.to_vec(),
                regions,
            });
        }
        Ok(SearchZone {
            limits,
            classes,
            cross_region_allowed: self.config.residency_policy.cross_region_allowed.clone(),
        })
    }

    /// Adds the caller's configured clouds and regions (`[[caller]]`, its roles) to a
    /// search's zone: data residency per caller holds at Search as at Answer.
    pub(super) fn add_caller_limit(&self, principal: &Principal, zone: &mut SearchZone) {
        // A caller granted no chat has no clouds or regions configured for it.
        let Ok(caller) = principal.permissions().chat_caller(principal.id()) else {
            return;
        };
        if caller.clouds.is_empty() && caller.regions.is_empty() {
            return;
        }
        zone.limits.push(Limit {
            by: format!("caller {:?}", caller.id),
            clouds: caller.clouds,
            regions: caller.regions,
        });
    }
}
