//! A streamed answer as server-sent events, turned into text as the client's
//! connection polls for them: no task or channel of its own between the answer's
//! events and the socket. What waits for a slow client is the answer's producer,
//! which gives up after `routing.stream_send_timeout_ms` on a full channel
//! (`Started::into_events`, `service::answer`); dropping the body (the client went
//! away) drops the events, which cancels upstream.

use std::convert::Infallible;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt, stream};

/// The events of `events` as an SSE response. `frames` turns each event into the
/// data of zero or more server-sent events and says whether more follow; it is
/// called with `None` once if `events` ends before `frames` said it was done. Held
/// by the body, `frames` (and what it owns, such as the call's trace span) is
/// dropped with the stream.
pub(super) fn sse_response<E, F>(
    events: impl Stream<Item = E> + Send + 'static,
    frames: F,
) -> Response
where
    E: Send + 'static,
    F: FnMut(Option<E>) -> (Vec<String>, bool) + Send + 'static,
{
    let state = Some((Box::pin(events), frames));
    let data = stream::unfold(state, |state| async move {
        let (mut events, mut frames) = state?;
        let (data, more) = frames(events.next().await);
        Some((data, more.then_some((events, frames))))
    });
    let body = data.flat_map(|data| {
        stream::iter(
            data.into_iter()
                .map(|data| Ok::<_, Infallible>(Event::default().data(data))),
        )
    });
    Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response()
}
