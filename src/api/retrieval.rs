use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::proto::{self, retrieval_service_server::RetrievalService};
use crate::auth::Credentials;
use crate::service::{SearchParams, Service};

pub struct RetrievalApi {
    pub service: Arc<Service>,
}

#[tonic::async_trait]
impl RetrievalService for RetrievalApi {
    async fn search(
        &self,
        request: Request<proto::SearchRequest>,
    ) -> Result<Response<proto::SearchResponse>, Status> {
        let deadline = convert::deadline(&request);
        let principal = self
            .service
            .authenticate(&Credentials::from_grpc(&request))
            .await
            .map_err(convert::status)?;
        let request = request.into_inner();
        let params = SearchParams {
            query: request.query,
            top_k: convert::optional(request.top_k),
            sources: request.sources,
            fusion: convert::fusion_method(request.fusion)?,
            deadline,
            adapter_from: (!request.adapter_from.is_empty()).then_some(request.adapter_from),
        };
        let result = self
            .service
            .search(&principal, params)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(convert::search_response(
            result,
            request.include_text,
        )))
    }
}
