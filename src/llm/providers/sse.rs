//! Server-sent events, parsed by us (WHATWG "event stream interpretation") over
//! bytes as they arrive: linear in the input (each byte is looked at once), with a
//! cap on a line and on an event's data, a UTF-8 BOM at the start skipped, CR, LF
//! and CRLF line ends, and invalid UTF-8 an error at the line it is in. The core
//! [`SseParser`] is a pure state machine (no I/O) so it can be fuzzed directly;
//! [`events`] runs it over a response body.

use std::borrow::Cow;
use std::collections::VecDeque;

use futures::{Stream, StreamExt};

use crate::error::{Error, Result};

/// The longest line accepted (a field name and its value).
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// The most data one event may gather over its `data:` lines.
pub const MAX_EVENT_BYTES: usize = 4 << 20;

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// One dispatched event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, `"message"` when none was sent (not allocated: most
    /// streams never name their events).
    pub event: Cow<'static, str>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The last `id:` seen so far in the stream.
    pub id: String,
    /// A `retry:` value sent with this event, in milliseconds.
    pub retry: Option<u64>,
}

/// Why a stream cannot be read as server-sent events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// A line grew past the limit before it ended.
    LineTooLong(usize),
    /// An event's data grew past the limit before it was dispatched.
    EventTooLarge(usize),
    /// A line is not UTF-8.
    InvalidUtf8,
}

impl std::fmt::Display for SseError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LineTooLong(limit) => {
                write!(formatter, "upstream SSE line exceeds {limit} bytes")
            }
            Self::EventTooLarge(limit) => {
                write!(formatter, "upstream SSE event exceeds {limit} bytes")
            }
            Self::InvalidUtf8 => write!(formatter, "upstream SSE stream is not valid UTF-8"),
        }
    }
}

impl std::error::Error for SseError {}

/// The incremental parser: feed it byte chunks in order, collect events.
#[derive(Debug)]
pub struct SseParser {
    max_line: usize,
    max_event: usize,
    /// BOM bytes matched at the start; `None` once the start is behind us.
    bom_matched: Option<usize>,
    /// The current line, not yet ended.
    line: Vec<u8>,
    /// The previous chunk ended with CR: an LF first in the next one is its pair.
    after_cr: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    id: String,
    retry: Option<u64>,
    /// A previous call failed: the stream is unusable.
    failed: bool,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::with_limits(MAX_LINE_BYTES, MAX_EVENT_BYTES)
    }
}

impl SseParser {
    /// A parser with the given line and event caps (bytes).
    pub fn with_limits(max_line: usize, max_event: usize) -> Self {
        Self {
            max_line,
            max_event,
            bom_matched: Some(0),
            line: Vec::new(),
            after_cr: false,
            event: None,
            data: String::new(),
            has_data: false,
            id: String::new(),
            retry: None,
            failed: false,
        }
    }

    /// Parses the next chunk, pushing every event it completes onto `out`.
    pub fn feed(&mut self, mut chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if self.failed {
            return Err(SseError::InvalidUtf8);
        }
        chunk = self.skip_bom(chunk);
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        let result = self.feed_lines(chunk, out);
        self.failed = result.is_err();
        result
    }

    /// The body ended: an event not closed by an empty line is dropped (as the
    /// spec says), but a partial BOM or line is still checked.
    pub fn finish(&mut self) -> Result<(), SseError> {
        if let Some(matched) = self.bom_matched.take()
            && matched > 0
        {
            return Err(SseError::InvalidUtf8);
        }
        if std::str::from_utf8(&self.line).is_err() {
            return Err(SseError::InvalidUtf8);
        }
        Ok(())
    }

    fn skip_bom<'a>(&mut self, mut chunk: &'a [u8]) -> &'a [u8] {
        while let Some(matched) = self.bom_matched {
            let Some((&byte, rest)) = chunk.split_first() else {
                return chunk;
            };
            if byte == BOM[matched] {
                chunk = rest;
                self.bom_matched = (matched + 1 < BOM.len()).then_some(matched + 1);
            } else {
                // Not a BOM after all: what matched so far is ordinary (invalid) input.
                self.line.extend_from_slice(&BOM[..matched]);
                self.bom_matched = None;
            }
        }
        chunk
    }

    fn feed_lines(&mut self, mut chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        while let Some(end) = chunk
            .iter()
            .position(|&byte| byte == b'\n' || byte == b'\r')
        {
            self.extend_line(&chunk[..end])?;
            let terminator = chunk[end];
            chunk = &chunk[end + 1..];
            if terminator == b'\r' {
                match chunk.first() {
                    Some(b'\n') => chunk = &chunk[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            let line = std::mem::take(&mut self.line);
            self.process_line(&line, out)?;
            self.line = line;
            self.line.clear();
        }
        self.extend_line(chunk)
    }

    fn extend_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > self.max_line {
            return Err(SseError::LineTooLong(self.max_line));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let line = std::str::from_utf8(line).map_err(|_| SseError::InvalidUtf8)?;
        if line.is_empty() {
            self.dispatch(out);
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(()); // a comment (keep-alive)
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => {
                let added = value.len() + usize::from(self.has_data);
                if self.data.len() + added > self.max_event {
                    return Err(SseError::EventTooLarge(self.max_event));
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.id = value.to_string(),
            "retry" if !value.is_empty() && value.bytes().all(|byte| byte.is_ascii_digit()) => {
                self.retry = value.parse().ok();
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        let event = self.event.take();
        let retry = self.retry.take();
        if !self.has_data {
            self.data.clear();
            return;
        }
        self.has_data = false;
        out.push(SseEvent {
            event: event.map_or(Cow::Borrowed("message"), Cow::Owned),
            data: std::mem::take(&mut self.data),
            id: self.id.clone(),
            retry,
        });
    }
}

/// Parses a whole body given as chunks (the fuzzing entry point).
pub fn parse_chunks<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<SseEvent>, SseError> {
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    for chunk in chunks {
        parser.feed(chunk, &mut events)?;
    }
    parser.finish()?;
    Ok(events)
}

/// The events of a body given as a stream of chunks; a parse error is the
/// service's malformed answer, a body error passes through. Events completed
/// before an error still come first; nothing follows an error.
pub fn events<S>(
    service: &str,
    body: S,
) -> impl Stream<Item = Result<SseEvent>> + Send + Unpin + use<S>
where
    S: Stream<Item = Result<bytes::Bytes>> + Send + Unpin + 'static,
{
    struct State<S> {
        service: String,
        body: Option<S>,
        parser: SseParser,
        ready: VecDeque<SseEvent>,
        error: Option<Error>,
    }
    let state = State {
        service: service.to_string(),
        body: Some(body),
        parser: SseParser::default(),
        ready: VecDeque::new(),
        error: None,
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.ready.pop_front() {
                return Some((Ok(event), state));
            }
            if let Some(error) = state.error.take() {
                return Some((Err(error), state));
            }
            let body = state.body.as_mut()?;
            let parsed = match body.next().await {
                Some(Ok(chunk)) => {
                    let mut out = Vec::new();
                    let fed = state.parser.feed(&chunk, &mut out);
                    state.ready.extend(out);
                    fed
                }
                Some(Err(error)) => {
                    state.body = None;
                    state.error = Some(error);
                    continue;
                }
                None => {
                    state.body = None;
                    state.parser.finish()
                }
            };
            if let Err(error) = parsed {
                state.body = None;
                state.error = Some(malformed(&state.service, error));
            }
        }
    })
    .boxed()
}

fn malformed(service: &str, error: SseError) -> Error {
    crate::cloud::http::malformed(service, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        parse_chunks([body])
    }

    fn data(events: &[SseEvent]) -> Vec<&str> {
        events.iter().map(|event| event.data.as_str()).collect()
    }

    const BODY: &[u8] = b": keep-alive\r\nevent: delta\ndata: {\"a\":1}\r\ndata:two\r\rid: 7\nretry: 30\ndata: three\n\ndata\n\n";

    #[test]
    fn fields_comments_and_every_line_end() {
        let events = parse(BODY).unwrap();
        assert_eq!(data(&events), ["{\"a\":1}\ntwo", "three", ""]);
        assert_eq!(events[0].event, "delta");
        assert_eq!(events[1].event, "message");
        assert_eq!(events[1].id, "7");
        assert_eq!(events[1].retry, Some(30));
        assert_eq!(events[2].id, "7");
    }

    #[test]
    fn the_same_events_whatever_the_chunking() {
        let whole = parse(BODY).unwrap();
        for split in 0..=BODY.len() {
            let (a, b) = BODY.split_at(split);
            assert_eq!(parse_chunks([a, b]).unwrap(), whole, "split at {split}");
        }
        let bytes: Vec<&[u8]> = BODY.chunks(1).collect();
        assert_eq!(parse_chunks(bytes).unwrap(), whole);
    }

    #[test]
    fn a_leading_bom_is_skipped_even_when_split() {
        let body = b"\xEF\xBB\xBFdata: hi\n\n";
        for split in 0..=body.len() {
            let (a, b) = body.split_at(split);
            assert_eq!(
                data(&parse_chunks([a, b]).unwrap()),
                ["hi"],
                "split at {split}"
            );
        }
        // Only at the start: a second BOM is part of the field name.
        let events = parse(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: hi\n\n").unwrap();
        assert!(events.is_empty());
        assert_eq!(parse(b"\xEF\xBB"), Err(SseError::InvalidUtf8));
        assert_eq!(parse(b"\xEF\xBBdata: x\n"), Err(SseError::InvalidUtf8));
    }

    #[test]
    fn an_overlong_line_is_an_error_before_it_is_buffered() {
        let mut parser = SseParser::with_limits(16, 64);
        let mut out = Vec::new();
        parser.feed(b"data: 0123456789", &mut out).unwrap();
        assert_eq!(parser.feed(b"x", &mut out), Err(SseError::LineTooLong(16)));
        assert_eq!(
            SseError::LineTooLong(16).to_string(),
            "upstream SSE line exceeds 16 bytes"
        );
        let mut parser = SseParser::with_limits(16, 8);
        assert_eq!(
            parser.feed(b"data: 12345\ndata: 678\n", &mut out),
            Err(SseError::EventTooLarge(8))
        );
    }

    #[test]
    fn invalid_utf8_fails_at_its_line() {
        assert_eq!(parse(b"data: \xFF\xFE\n\n"), Err(SseError::InvalidUtf8));
        assert_eq!(parse(b"data: ok\n\ndata: \xC3"), Err(SseError::InvalidUtf8));
        // A character split across chunks is fine.
        let events = parse_chunks([b"data: \xC3".as_slice(), b"\xA9\n\n"]).unwrap();
        assert_eq!(data(&events), ["\u{e9}"]);
    }

    #[test]
    fn an_unfinished_event_at_the_end_is_dropped() {
        assert_eq!(data(&parse(b"data: a\n\ndata: b\n").unwrap()), ["a"]);
    }

    #[test]
    fn the_stream_yields_events_then_the_error() {
        let chunks = vec![
            Ok(bytes::Bytes::from_static(b"data: a\n\ndata: ")),
            Ok(bytes::Bytes::from(vec![b'x'; MAX_LINE_BYTES])),
        ];
        let items: Vec<Result<SseEvent>> =
            futures::executor::block_on(events("svc", futures::stream::iter(chunks)).collect());
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].as_ref().unwrap().data, "a");
        let error = items[1].as_ref().unwrap_err();
        assert!(
            error.message.contains("upstream SSE line exceeds"),
            "{}",
            error.message
        );
    }
}
