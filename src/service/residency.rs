//! Residency at `Answer`: the retrieved passages decide where the prompt may go
//! (`policy::residency`), before the route is planned.

use super::Service;
use super::chat::ChatCall;
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::policy::residency::{Decision, Place};
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
