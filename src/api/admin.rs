use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::proto::{self, admin_service_server::AdminService};
use crate::auth::Credentials;
use crate::service::Service;
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
}
