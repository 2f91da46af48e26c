//! Every chat provider against an in-process server on 127.0.0.1 that speaks its
//! documented protocol and checks what arrives (path, query, headers, body, and
//! the credentials: SigV4 recomputed, OCI signatures verified, Google tokens from a
//! local token endpoint or metadata server), with faults injected: error statuses,
//! a slow first byte, a stall, a malformed frame, an error inside a 200 stream, a
//! dropped connection, an end without finish. Live tests run only when their
//! environment variables name a real endpoint.

mod azure_openai;
mod bedrock;
mod oci;
mod openai_compat;
mod support;
mod vertex;

use std::sync::Arc;
use std::time::{Duration, Instant};

use skyfuse::error::ErrorKind;
use skyfuse::llm::{ChatProvider, FinishReason};
use support::*;

/// How one provider's stream looks on the wire, for the shared fault tests.
pub struct Wire {
    pub content_type: &'static str,
    /// What carries one text delta.
    pub delta: fn(&str) -> Vec<u8>,
    /// Whatever finishes the answer: the finish reason, usage, an end marker.
    pub finish: fn() -> Vec<u8>,
    /// A unit that breaks the protocol (bad JSON, a bad checksum).
    pub malformed: Vec<u8>,
    /// An error the service reports inside the 200 stream, and its kind.
    pub in_band_error: Vec<u8>,
    pub in_band_kind: ErrorKind,
}

/// A provider at `base_url`.
pub type Make = Arc<dyn Fn(&str) -> Arc<dyn ChatProvider> + Send + Sync>;

/// A server that answers every request with the same stream.
async fn streaming(content_type: &'static str, parts: Vec<Part>) -> TestServer {
    serve(move |_| Ok(Reply::stream(content_type, parts.clone()))).await
}

/// The stream faults every provider must surface the same way.
pub async fn stream_faults(wire: Wire, make: Make) {
    let delta = wire.delta;
    let kind = wire.content_type;

    // The connection drops after two deltas: an error after them, not an end.
    let server = streaming(
        kind,
        vec![
            Part::Bytes(delta("They")),
            Part::Bytes(delta(" are")),
            Part::Cut,
        ],
    )
    .await;
    let outcome = drain(make(&server.base_url).as_ref(), soon(5000))
        .await
        .unwrap();
    assert_broken(&outcome, &["They", " are"], ErrorKind::Unavailable);

    // A clean end of the body without a finish is still an error.
    let server = streaming(kind, vec![Part::Bytes(delta("They"))]).await;
    let outcome = drain(make(&server.base_url).as_ref(), soon(5000))
        .await
        .unwrap();
    let error = assert_broken(&outcome, &["They"], ErrorKind::Unavailable);
    assert!(error.message.contains("finished"), "{}", error.message);

    // A stall after the first delta ends at the deadline, as a timeout.
    let server = streaming(
        kind,
        vec![
            Part::Bytes(delta("They")),
            Part::Pause(Duration::from_secs(3)),
            Part::Bytes((wire.finish)()),
        ],
    )
    .await;
    let started = Instant::now();
    let outcome = drain(make(&server.base_url).as_ref(), soon(600))
        .await
        .unwrap();
    assert_broken(&outcome, &["They"], ErrorKind::Timeout);
    assert!(started.elapsed() < Duration::from_millis(2000));

    // A unit that breaks the protocol ends the stream with an error.
    let server = streaming(
        kind,
        vec![
            Part::Bytes(delta("They")),
            Part::Bytes(wire.malformed.clone()),
            Part::Bytes((wire.finish)()),
        ],
    )
    .await;
    let outcome = drain(make(&server.base_url).as_ref(), soon(5000))
        .await
        .unwrap();
    assert_broken(&outcome, &["They"], ErrorKind::Unavailable);

    // The service's own error inside the 200 answer, with its kind.
    let server = streaming(
        kind,
        vec![
            Part::Bytes(delta("They")),
            Part::Bytes(wire.in_band_error.clone()),
            Part::Bytes((wire.finish)()),
        ],
    )
    .await;
    let outcome = drain(make(&server.base_url).as_ref(), soon(5000))
        .await
        .unwrap();
    assert_broken(&outcome, &["They"], wire.in_band_kind);

    // Headers later than the deadline: `chat_stream` itself fails, in time.
    let parts = vec![Part::Bytes(delta("late")), Part::Bytes((wire.finish)())];
    let server = serve(move |_| {
        Ok(Reply::Delayed(
            Duration::from_secs(2),
            Box::new(Reply::stream(kind, parts.clone())),
        ))
    })
    .await;
    let started = Instant::now();
    let error = drain(make(&server.base_url).as_ref(), soon(400))
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::Timeout, "{}", error.message);
    assert!(started.elapsed() < Duration::from_millis(1500));

    // Nobody listening: unavailable.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let error = drain(make(&closed).as_ref(), soon(2000)).await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Unavailable, "{}", error.message);

    // And the same wire, whole, finishes.
    let server = streaming(
        kind,
        vec![Part::Bytes(delta("They")), Part::Bytes((wire.finish)())],
    )
    .await;
    let outcome = drain(make(&server.base_url).as_ref(), soon(5000))
        .await
        .unwrap();
    assert_eq!(outcome.deltas, ["They"]);
    assert!(outcome.end.is_ok(), "{:?}", outcome.end);
}

/// An error status the provider must map, and what it must become.
pub struct StatusCase {
    pub name: &'static str,
    pub reply: fn() -> Reply,
    pub kind: ErrorKind,
    pub retry_after: Option<Duration>,
}

/// Every case through `chat_stream` (the answer path) and the first through `chat`.
pub async fn status_faults(cases: Vec<StatusCase>, make: Make) {
    for (index, case) in cases.into_iter().enumerate() {
        let reply = case.reply;
        let server = serve(move |_| Ok(reply())).await;
        let provider = make(&server.base_url);
        let error = drain(provider.as_ref(), soon(5000)).await.unwrap_err();
        assert_eq!(error.kind, case.kind, "{}: {}", case.name, error.message);
        assert_eq!(error.retry_after, case.retry_after, "{}", case.name);
        assert!(
            error.message.contains(&provider.info().id),
            "{}: {}",
            case.name,
            error.message
        );
        if index == 0 {
            let error = provider.chat(&request(), soon(5000)).await.unwrap_err();
            assert_eq!(error.kind, case.kind, "{}: {}", case.name, error.message);
        }
    }
}

/// The status cases every HTTP API has, in each one's own error shape.
pub fn common_statuses(
    throttle: fn() -> Reply,
    throttle_with_wait: fn() -> Reply,
    wait: Duration,
    unavailable: fn() -> Reply,
    context_length: fn() -> Reply,
    unauthorized: fn() -> Reply,
) -> Vec<StatusCase> {
    vec![
        StatusCase {
            name: "429 with retry-after",
            reply: throttle_with_wait,
            kind: ErrorKind::Throttled,
            retry_after: Some(wait),
        },
        StatusCase {
            name: "429",
            reply: throttle,
            kind: ErrorKind::Throttled,
            retry_after: None,
        },
        StatusCase {
            name: "503",
            reply: unavailable,
            kind: ErrorKind::Unavailable,
            retry_after: None,
        },
        StatusCase {
            name: "400 context length",
            reply: context_length,
            kind: ErrorKind::ContextLength,
            retry_after: None,
        },
        StatusCase {
            name: "401",
            reply: unauthorized,
            kind: ErrorKind::Auth,
            retry_after: None,
        },
    ]
}

/// What a live endpoint must do: stream some text and finish, and answer whole.
pub async fn live_check(provider: &dyn ChatProvider) {
    let outcome = drain(provider, soon(60_000)).await.unwrap();
    let (reason, usage) = outcome.end.unwrap();
    assert!(!outcome.deltas.concat().trim().is_empty());
    assert!(matches!(reason, FinishReason::Stop | FinishReason::Length));
    if let Some(usage) = usage {
        assert!(usage.input_tokens > 0 && usage.output_tokens > 0);
    }
    let whole = provider.chat(&request(), soon(60_000)).await.unwrap();
    assert!(!whole.text.trim().is_empty());
}
