use std::sync::Arc;

use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::proto::{self, answer_event::Event, generation_service_server::GenerationService};
use super::{convert, redact};
use crate::auth::Credentials;
use crate::llm::{ChatMessage, Role};
use crate::policy::egress::EgressLeg;
use crate::route::{AttemptOutcome, RouteSummary};
use crate::service::{AnswerEvent, AnswerRequest, AnswerSummary, EXTRACTIVE_MODEL, Service};
use crate::telemetry::trace;

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
        let trace = self
            .service
            .traces()
            .grpc_call("skyfuse.v1.GenerationService/Answer", &request);
        let events = match trace::within(trace.as_ref(), self.start_answer(request)).await {
            Ok(events) => events,
            Err(status) => {
                if let Some(trace) = &trace {
                    trace.fail(convert::code_name(status.code()), status.message());
                }
                return Err(status);
            }
        };
        // The stream is polled after this call returns: keep its request id, and the
        // trace, whose span ends when the stream does.
        let request_id = redact::current().unwrap_or_else(redact::generate);
        let stream = ReceiverStream::new(events).map(move |event| {
            if let (Some(trace), AnswerEvent::Failed(error)) = (&trace, &event) {
                trace.fail(
                    convert::code_name(convert::code(error.kind)),
                    &error.message,
                );
            }
            Ok(redact::with_id(&request_id, || answer_event(event)))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn feedback(
        &self,
        request: Request<proto::FeedbackRequest>,
    ) -> Result<Response<proto::FeedbackResponse>, Status> {
        let principal = self
            .service
            .authenticate(&Credentials::from_grpc(&request))
            .await
            .map_err(convert::status)?;
        let request = request.into_inner();
        self.service
            .feedback(&principal, &request.answer_id, request.score)
            .map_err(convert::status)?;
        Ok(Response::new(proto::FeedbackResponse {}))
    }
}

impl GenerationApi {
    /// Authenticates and starts the answer: its events, or why nothing will stream.
    async fn start_answer(
        &self,
        request: Request<proto::AnswerRequest>,
    ) -> Result<tokio::sync::mpsc::Receiver<AnswerEvent>, Status> {
        let deadline = convert::deadline(&request);
        let principal = self
            .service
            .authenticate(&Credentials::from_grpc(&request))
            .await
            .map_err(convert::status)?;
        let request = request.into_inner();
        let messages = request
            .messages
            .into_iter()
            .enumerate()
            .map(|(index, turn)| {
                let role = match turn.role.as_str() {
                    "system" => Role::System,
                    "user" => Role::User,
                    "assistant" => Role::Assistant,
                    other => {
                        return Err(Status::invalid_argument(format!(
                            "messages[{index}].role must be system, user or assistant, not {other:?}"
                        )));
                    }
                };
                Ok(ChatMessage {
                    role,
                    content: turn.content,
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let filter = request
            .filter
            .as_ref()
            .map(convert::filter_request)
            .transpose()
            .map_err(convert::status)?;
        let events = self
            .service
            .answer(
                &principal,
                AnswerRequest {
                    question: request.question,
                    top_k: convert::optional(request.top_k),
                    sources: request.sources,
                    model: (!request.model.is_empty()).then_some(request.model),
                    tier: (!request.tier.is_empty()).then_some(request.tier),
                    allowed_clouds: request.allowed_clouds,
                    allowed_regions: request.allowed_regions,
                    max_output_tokens: convert::optional(request.max_output_tokens),
                    deadline,
                    messages,
                    filter,
                    namespace: request.namespace,
                },
            )
            .await
            .map_err(convert::status)?;
        Ok(events)
    }
}

fn answer_event(event: AnswerEvent) -> proto::AnswerEvent {
    let event = match event {
        AnswerEvent::Token(text) => Event::Token(text),
        AnswerEvent::Done(summary) => Event::Done(answer_done(*summary)),
        AnswerEvent::Failed(error) => Event::Error(proto::AnswerError {
            code: convert::code_name(convert::code(error.kind)).to_string(),
            message: redact::error_text(&error),
        }),
    };
    proto::AnswerEvent { event: Some(event) }
}

fn answer_done(summary: AnswerSummary) -> proto::AnswerDone {
    let cut_short = summary.cut_short();
    let total_usd = summary.total_cost_usd();
    proto::AnswerDone {
        withheld: summary
            .residency
            .withheld
            .into_iter()
            .map(|passage| proto::WithheldPassage {
                chunk_id: passage.chunk_id,
                object_key: passage.object_key,
                cloud: passage.cloud,
                region: passage.region,
                reason: passage.reason,
            })
            .collect(),
        residency_regions: summary.residency.regions,
        overhead_ms: summary.overhead.as_secs_f64() * 1000.0,
        cached: summary.cached,
        cited: summary.cited.cited,
        invalid_citations: summary.cited.invalid,
        cut_short,
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
                chunk_ordinal: citation.chunk_ordinal,
                start_char: citation.span.map(|span| span.start),
                end_char: citation.span.map(|span| span.end),
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
            egress_usd: summary.egress.total_usd(),
            total_usd,
            egress: summary.egress.legs.iter().map(egress_leg).collect(),
        }),
        route: Some(route(summary.route, summary.extractive)),
        finish_reason: summary.finish_reason,
        degraded: summary.degraded,
        answer_id: summary.answer_id,
        sources: summary
            .outcomes
            .into_iter()
            .map(convert::source_outcome)
            .collect(),
    }
}

fn route(route: RouteSummary, extractive: bool) -> proto::Route {
    let failover_count = route.failover_count();
    let (provider, model, deployment, cloud, region, dedicated) = match route.chosen {
        Some(info) if !extractive => {
            let info = std::sync::Arc::unwrap_or_clone(info);
            (
                info.id,
                info.model,
                info.deployment,
                info.cloud,
                info.region,
                info.dedicated,
            )
        }
        _ => (
            EXTRACTIVE_MODEL.to_string(),
            EXTRACTIVE_MODEL.to_string(),
            String::new(),
            "local".to_string(),
            "local".to_string(),
            false,
        ),
    };
    proto::Route {
        provider,
        model,
        cloud,
        region,
        extractive,
        deployment,
        dedicated,
        tier: route.tier.unwrap_or_default(),
        failover_count,
        attempts: route
            .attempts
            .into_iter()
            .map(|attempt| {
                let (outcome, error_kind) = match attempt.outcome {
                    AttemptOutcome::Ok => ("ok", String::new()),
                    AttemptOutcome::Failed(kind) => ("error", kind.as_str().to_string()),
                    AttemptOutcome::Skipped => ("skipped", String::new()),
                };
                proto::Attempt {
                    provider: attempt.provider.to_string(),
                    model: attempt.model.to_string(),
                    outcome: outcome.to_string(),
                    message: redact::attempt_message(
                        &attempt.outcome,
                        &attempt.message,
                        &attempt.deployment,
                    ),
                    took_micros: attempt.took.as_micros() as u64,
                    deployment: attempt.deployment.to_string(),
                    cloud: attempt.cloud.to_string(),
                    region: attempt.region.to_string(),
                    error_kind,
                }
            })
            .collect(),
        candidates: route
            .candidates
            .into_iter()
            .map(|candidate| proto::RouteCandidate {
                deployment: candidate.deployment.to_string(),
                model: candidate.model.to_string(),
                cloud: candidate.cloud.to_string(),
                region: candidate.region.to_string(),
                dedicated: candidate.dedicated,
                max_cost_usd: candidate.max_cost_usd,
                why: candidate.why,
            })
            .collect(),
        skipped: route
            .skipped
            .into_iter()
            .map(|skip| proto::RouteSkip {
                deployment: skip.deployment,
                model: skip.model,
                reason: skip.reason,
            })
            .collect(),
    }
}

fn egress_leg(leg: &EgressLeg) -> proto::EgressLeg {
    proto::EgressLeg {
        from_cloud: leg.from_cloud.clone(),
        to_cloud: leg.to_cloud.clone(),
        bytes: leg.bytes,
        usd: leg.usd,
        link: leg.link.clone().unwrap_or_default(),
        cheaper_via: leg.cheaper_via.clone().unwrap_or_default(),
        saving_usd: leg.saving_usd,
        from_region: leg.from_region.clone(),
        to_region: leg.to_region.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Error, ErrorKind};

    #[test]
    fn a_broken_answer_carries_the_google_rpc_code_name() {
        for (kind, name) in [
            (ErrorKind::Timeout, "DEADLINE_EXCEEDED"),
            (ErrorKind::Throttled, "RESOURCE_EXHAUSTED"),
            (ErrorKind::Unavailable, "UNAVAILABLE"),
            (ErrorKind::ContextLength, "OUT_OF_RANGE"),
        ] {
            let event = answer_event(AnswerEvent::Failed(Error::new(kind, "broke")));
            let Some(Event::Error(error)) = event.event else {
                panic!("an error event");
            };
            assert_eq!(error.code, name);
            // Upstream-ish kinds are withheld; the caller's own errors keep their text.
            let expected = if crate::api::redact::is_upstream_kind(kind) {
                "request id: none"
            } else {
                "broke"
            };
            assert!(error.message.contains(expected), "{}", error.message);
        }
    }
}
