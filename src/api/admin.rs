use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::ingestion::{final_message, progress_message};
use super::proto::{self, admin_service_server::AdminService};
use crate::auth::Credentials;
use crate::policy::placement::Requirements;
use crate::service::{IndexRunState, Service};
use crate::stores::StoreKind;

pub struct AdminApi {
    pub service: Arc<Service>,
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn list_sources(
        &self,
        request: Request<proto::ListSourcesRequest>,
    ) -> Result<Response<proto::ListSourcesResponse>, Status> {
        let principal = self
            .service
            .authenticate(&Credentials::from_grpc(&request))
            .await
            .map_err(convert::status)?;
        let sources = self
            .service
            .list_sources(&principal)
            .await
            .map_err(convert::status)?
            .into_iter()
            .map(|source| proto::SourceDescription {
                id: source.info.id,
                backend: source.info.backend,
                kind: match source.info.kind {
                    StoreKind::Lexical => "lexical",
                    StoreKind::Dense => "dense",
                }
                .into(),
                space: source.info.space.unwrap_or_default(),
                dims: source.info.dims.unwrap_or(0) as u32,
                cloud: source.info.cloud,
                region: source.info.region,
                weight: source.weight,
                chunks: source.chunks,
            })
            .collect();
        Ok(Response::new(proto::ListSourcesResponse { sources }))
    }

    async fn list_indexes(
        &self,
        request: Request<proto::ListIndexesRequest>,
    ) -> Result<Response<proto::ListIndexesResponse>, Status> {
        let principal = self
            .service
            .authenticate(&Credentials::from_grpc(&request))
            .await
            .map_err(convert::status)?;
        let indexes = self
            .service
            .list_indexes(&principal)
            .map_err(convert::status)?
            .into_iter()
            .map(|index| proto::IndexDescription {
                id: index.id.clone(),
                sources: index.sources.clone(),
                space: self.service.index_space(index).unwrap_or_default(),
                chunk_max_words: index.chunk_max_words as u32,
                chunk_overlap_words: index.chunk_overlap_words as u32,
            })
            .collect();
        Ok(Response::new(proto::ListIndexesResponse { indexes }))
    }

    async fn placement(
        &self,
        request: Request<proto::PlacementRequest>,
    ) -> Result<Response<proto::PlacementResponse>, Status> {
        let principal = self
            .service
            .authenticate(&Credentials::from_grpc(&request))
            .await
            .map_err(convert::status)?;
        let asked = request.into_inner();
        let text = |value: String| Some(value).filter(|value| !value.is_empty());
        let requirements = Requirements {
            model: text(asked.model),
            sovereignty: asked.sovereignty,
            predictable_cost: asked.predictable_cost,
            fine_tuning: asked.fine_tuning,
            lowest_latency: asked.lowest_latency,
            multi_model: asked.multi_model,
            ecosystem: text(asked.ecosystem),
            embedding_dims: Some(asked.embedding_dims).filter(|dims| *dims > 0),
            data_cloud: text(asked.data_cloud),
            data_region: text(asked.data_region),
        };
        let clouds = self
            .service
            .placement(&principal, &requirements)
            .map_err(convert::status)?
            .into_iter()
            .map(|verdict| proto::CloudRecommendation {
                cloud: verdict.cloud,
                service: verdict.service,
                fits: verdict.fits,
                score: verdict.score,
                reasons_for: verdict.reasons_for,
                reasons_against: verdict.reasons_against,
                deployments: verdict.deployments,
            })
            .collect();
        Ok(Response::new(proto::PlacementResponse { clouds }))
    }

    async fn get_index_run(
        &self,
        request: Request<proto::GetIndexRunRequest>,
    ) -> Result<Response<proto::IndexRunStatus>, Status> {
        let principal = self
            .service
            .authenticate(&Credentials::from_grpc(&request))
            .await
            .map_err(convert::status)?;
        let run_id = request.into_inner().run_id;
        // Unknown, forgotten and other callers' ids read alike.
        let run = self
            .service
            .index_runs()
            .get(&run_id)
            .filter(|run| run.owner == principal.id() || principal.permissions().may_admin());
        let run = run.ok_or_else(|| {
            Status::not_found(format!(
                "no index run {run_id:?} (finished runs are kept for a while)"
            ))
        })?;
        let (state, progress, error) = match run.state {
            IndexRunState::Running(progress) => {
                ("running", progress_message(&progress), String::new())
            }
            IndexRunState::Succeeded(report) => {
                ("succeeded", final_message(*report), String::new())
            }
            IndexRunState::Failed(error) => {
                let status = convert::status(error);
                (
                    "failed",
                    proto::IndexProgress {
                        done: true,
                        ..Default::default()
                    },
                    status.message().to_owned(),
                )
            }
        };
        Ok(Response::new(proto::IndexRunStatus {
            run_id: run.run_id,
            state: state.to_owned(),
            url: run.url,
            index: run.index,
            progress: Some(progress),
            error,
        }))
    }
}
