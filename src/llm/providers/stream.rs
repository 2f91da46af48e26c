//! The one state machine behind every provider's stream: decoded units in (SSE
//! events, event-stream messages), text deltas and exactly one `Finish` out, or an
//! error and nothing after it.

use futures::stream::{BoxStream, Stream, StreamExt};

use crate::error::{Error, Result};
use crate::llm::{ChatEvent, FinishReason, Usage};

/// What a protocol decoder has learned so far about the end of the answer.
#[derive(Debug, Default)]
pub struct Progress {
    /// The model's finish reason, once it was sent.
    pub finish: Option<FinishReason>,
    /// The latest usage (providers that repeat it send running totals).
    pub usage: Option<Usage>,
    /// The protocol said nothing more will come (`[DONE]`, `message_stop`, Bedrock's
    /// `metadata`): finish now instead of waiting for the connection to close.
    pub complete: bool,
}

/// Runs `decode` over every unit; it returns the text of that unit (maybe empty)
/// and records the finish reason and usage in [`Progress`]. `Finish` is emitted when
/// the decoder says the answer is complete, or when the units end after a finish
/// reason (usage or not); units that end before one are an `Unavailable` error. A
/// broken transport after the finish reason still finishes (the text is whole); a
/// service error the decoder reports is an error wherever it comes.
pub fn drive<S, U, F>(service: &str, units: S, decode: F) -> BoxStream<'static, Result<ChatEvent>>
where
    S: Stream<Item = Result<U>> + Send + Unpin + 'static,
    U: Send + 'static,
    F: FnMut(U, &mut Progress) -> Result<String> + Send + 'static,
{
    struct State<S, F> {
        service: String,
        units: S,
        decode: F,
        progress: Progress,
        done: bool,
    }
    let state = State {
        service: service.to_string(),
        units,
        decode,
        progress: Progress::default(),
        done: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        loop {
            if state.progress.complete
                && let Some(reason) = state.progress.finish.take()
            {
                state.done = true;
                let finish = ChatEvent::Finish {
                    reason,
                    usage: state.progress.usage,
                };
                return Some((Ok(finish), state));
            }
            let Some(unit) = state.units.next().await else {
                state.done = true;
                let event = match state.progress.finish.take() {
                    Some(reason) => Ok(ChatEvent::Finish {
                        reason,
                        usage: state.progress.usage,
                    }),
                    None => Err(Error::unavailable(format!(
                        "{}: the stream ended before the model finished",
                        state.service
                    ))),
                };
                return Some((event, state));
            };
            let unit = match unit {
                Ok(unit) => unit,
                // The answer was whole when the transport broke: only the usage
                // that would have followed is lost.
                Err(_) if state.progress.finish.is_some() => {
                    state.progress.complete = true;
                    continue;
                }
                Err(error) => {
                    state.done = true;
                    return Some((Err(error), state));
                }
            };
            let text = match (state.decode)(unit, &mut state.progress) {
                Ok(text) => text,
                Err(error) => {
                    state.done = true;
                    return Some((Err(error), state));
                }
            };
            if !text.is_empty() {
                return Some((Ok(ChatEvent::Delta(text)), state));
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn run(units: Vec<Result<&'static str>>) -> Vec<Result<ChatEvent>> {
        let units = futures::stream::iter(units);
        let stream = drive("test", units, |unit: &str, progress| {
            match unit {
                "stop" => progress.finish = Some(FinishReason::Stop),
                "usage" => {
                    progress.usage = Some(Usage {
                        input_tokens: 3,
                        output_tokens: 2,
                        ..Usage::default()
                    })
                }
                "done" => progress.complete = true,
                text => return Ok(text.to_string()),
            }
            Ok(String::new())
        });
        futures::executor::block_on(stream.collect())
    }

    #[test]
    fn deltas_then_one_finish_with_the_usage_that_came_after_it() {
        let events = run(vec![
            Ok("a"),
            Ok("b"),
            Ok("stop"),
            Ok("usage"),
            Ok("done"),
            Ok("late"),
        ]);
        let events: Vec<ChatEvent> = events.into_iter().map(Result::unwrap).collect();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0], ChatEvent::Delta("a".into()));
        match &events[2] {
            ChatEvent::Finish { reason, usage } => {
                assert_eq!(*reason, FinishReason::Stop);
                assert_eq!(usage.unwrap().input_tokens, 3);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_finish_without_usage_still_finishes_at_the_end() {
        let events = run(vec![Ok("a"), Ok("stop")]);
        assert!(matches!(
            events.last(),
            Some(Ok(ChatEvent::Finish { usage: None, .. }))
        ));
    }

    #[test]
    fn an_end_without_finish_or_a_broken_unit_is_an_error_and_the_last_event() {
        let events = run(vec![Ok("a")]);
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].as_ref().unwrap_err().kind, ErrorKind::Unavailable);
        let events = run(vec![
            Ok("a"),
            Err(Error::timeout("stalled")),
            Ok("b"),
            Ok("stop"),
        ]);
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].as_ref().unwrap_err().kind, ErrorKind::Timeout);
    }

    #[test]
    fn a_transport_break_after_the_finish_reason_still_finishes() {
        let events = run(vec![
            Ok("a"),
            Ok("stop"),
            Err(Error::unavailable("connection reset")),
        ]);
        assert_eq!(events.len(), 2);
        assert!(matches!(
            events[1],
            Ok(ChatEvent::Finish {
                reason: FinishReason::Stop,
                usage: None
            })
        ));
    }
}
