use std::sync::Arc;

use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert;
use super::proto::{self, answer_event::Event, generation_service_server::GenerationService};
use crate::service::{AnswerEvent, AnswerRequest, AnswerSummary, Service};

pub struct GenerationApi {
    pub service: Arc<Service>,
}

type AnswerStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<proto::AnswerEvent, Status>> + Send + 'static>,
>;

#[tonic::async_trait]
impl GenerationService for GenerationApi {
    type AnswerStream = AnswerStream;

    async fn answer(
        &self,
        request: Request<proto::AnswerRequest>,
    ) -> Result<Response<Self::AnswerStream>, Status> {
        let deadline = convert::deadline(&request);
        let request = request.into_inner();
        let events = self
            .service
            .answer(AnswerRequest {
                question: request.question,
                top_k: convert::optional(request.top_k),
                sources: request.sources,
                model: (!request.model.is_empty()).then_some(request.model),
                max_output_tokens: convert::optional(request.max_output_tokens),
                deadline,
            })
            .await
            .map_err(convert::status)?;
        let stream = ReceiverStream::new(events).map(|event| Ok(answer_event(event)));
        Ok(Response::new(Box::pin(stream)))
    }
}

fn answer_event(event: AnswerEvent) -> proto::AnswerEvent {
    let event = match event {
        AnswerEvent::Token(text) => Event::Token(text),
        AnswerEvent::Done(summary) => Event::Done(answer_done(*summary)),
        AnswerEvent::Failed(error) => {
            let status = convert::status(error);
            Event::Error(proto::AnswerError {
                code: format!("{:?}", status.code()),
                message: status.message().to_string(),
            })
        }
    };
    proto::AnswerEvent { event: Some(event) }
}

fn answer_done(summary: AnswerSummary) -> proto::AnswerDone {
    proto::AnswerDone {
        citations: summary
            .citations
            .into_iter()
            .map(|citation| proto::Citation {
                number: citation.number,
                doc_id: citation.doc_id,
                chunk_id: citation.chunk_id,
                title: citation.title,
                object_key: citation.object_key,
                text: citation.text,
            })
            .collect(),
        usage: Some(proto::Usage {
            input_tokens: summary.usage.input_tokens,
            output_tokens: summary.usage.output_tokens,
            cached_input_tokens: summary.usage.cached_input_tokens,
            estimated: summary.usage.estimated,
        }),
        cost: Some(proto::Cost {
            usd: summary.cost_usd,
        }),
        route: Some(proto::Route {
            provider: summary.route.provider,
            model: summary.route.model,
            cloud: summary.route.cloud,
            region: summary.route.region,
            extractive: summary.route.extractive,
            attempts: summary
                .route
                .attempts
                .into_iter()
                .map(|attempt| proto::Attempt {
                    provider: attempt.provider,
                    model: attempt.model,
                    outcome: attempt.outcome,
                    message: attempt.message,
                    took_micros: attempt.took.as_micros() as u64,
                })
                .collect(),
        }),
        finish_reason: summary.finish_reason,
        degraded: summary.degraded,
        sources: summary
            .outcomes
            .into_iter()
            .map(convert::source_outcome)
            .collect(),
    }
}
