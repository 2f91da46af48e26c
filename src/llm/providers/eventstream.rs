//! The `application/vnd.amazon.eventstream` framing Bedrock streams in, decoded
//! incrementally as bytes arrive. A frame, all integers big-endian:
//!
//! ```text
//! total_length u32 | headers_length u32 | prelude_crc u32 (CRC-32 of the 8 bytes before)
//! headers (headers_length bytes) | payload | message_crc u32 (CRC-32 of all bytes before)
//! header: name_len u8 | name | value_type u8 | value
//! ```
//!
//! Both checksums are verified; a bad one, a truncated frame or an impossible
//! length is an error, never a shorter answer.

use bytes::{Buf, Bytes, BytesMut};
use futures::stream::{Stream, StreamExt};

use crate::cloud::http::malformed;
use crate::error::Result;

const PRELUDE_LENGTH: usize = 12;
/// Prelude and message checksum.
const MINIMUM_FRAME: usize = 16;
/// AWS caps event-stream messages at 16 MiB.
const MAXIMUM_FRAME: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub enum HeaderValue {
    Bool(bool),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    Bytes(Vec<u8>),
    String(String),
    Timestamp(i64),
    Uuid([u8; 16]),
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub headers: Vec<(String, HeaderValue)>,
    pub payload: Bytes,
}

impl Message {
    /// A string header's value (`:message-type`, `:event-type`, `:exception-type`).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|(header, value)| match value {
            HeaderValue::String(text) if header == name => Some(text.as_str()),
            _ => None,
        })
    }
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(pub String);

/// Bytes in, whole frames out.
#[derive(Debug, Default)]
pub struct Decoder {
    buffer: BytesMut,
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Bytes received that do not yet make a frame.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }

    /// The next whole frame, `None` until its last byte arrived.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        if self.buffer.len() < PRELUDE_LENGTH {
            return Ok(None);
        }
        let total = u32::from_be_bytes(self.buffer[0..4].try_into().unwrap_or_default()) as usize;
        let headers_length =
            u32::from_be_bytes(self.buffer[4..8].try_into().unwrap_or_default()) as usize;
        let prelude_crc = u32::from_be_bytes(self.buffer[8..12].try_into().unwrap_or_default());
        // Checked before waiting for the rest: a corrupt length must not make us
        // wait for (or buffer) megabytes that are not coming.
        if crc32fast::hash(&self.buffer[0..8]) != prelude_crc {
            return Err(FrameError("prelude checksum does not match".into()));
        }
        if !(MINIMUM_FRAME..=MAXIMUM_FRAME).contains(&total)
            || headers_length > total - MINIMUM_FRAME
        {
            return Err(FrameError(format!(
                "impossible lengths: frame {total}, headers {headers_length}"
            )));
        }
        if self.buffer.len() < total {
            return Ok(None);
        }
        let frame = self.buffer.split_to(total).freeze();
        let message_crc = u32::from_be_bytes(frame[total - 4..].try_into().unwrap_or_default());
        if crc32fast::hash(&frame[..total - 4]) != message_crc {
            return Err(FrameError("message checksum does not match".into()));
        }
        let headers = parse_headers(&frame[PRELUDE_LENGTH..PRELUDE_LENGTH + headers_length])?;
        let payload = frame.slice(PRELUDE_LENGTH + headers_length..total - 4);
        Ok(Some(Message { headers, payload }))
    }
}

fn parse_headers(mut bytes: &[u8]) -> Result<Vec<(String, HeaderValue)>, FrameError> {
    let short = || FrameError("a header runs past its section".into());
    let mut headers = Vec::new();
    while bytes.has_remaining() {
        let name_length = bytes.try_get_u8().map_err(|_| short())? as usize;
        if bytes.remaining() < name_length {
            return Err(short());
        }
        let name = String::from_utf8(bytes[..name_length].to_vec())
            .map_err(|_| FrameError("a header name is not UTF-8".into()))?;
        bytes.advance(name_length);
        let value = match bytes.try_get_u8().map_err(|_| short())? {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => HeaderValue::Byte(bytes.try_get_i8().map_err(|_| short())?),
            3 => HeaderValue::Short(bytes.try_get_i16().map_err(|_| short())?),
            4 => HeaderValue::Int(bytes.try_get_i32().map_err(|_| short())?),
            5 => HeaderValue::Long(bytes.try_get_i64().map_err(|_| short())?),
            kind @ (6 | 7) => {
                let length = bytes.try_get_u16().map_err(|_| short())? as usize;
                if bytes.remaining() < length {
                    return Err(short());
                }
                let data = bytes[..length].to_vec();
                bytes.advance(length);
                if kind == 6 {
                    HeaderValue::Bytes(data)
                } else {
                    HeaderValue::String(
                        String::from_utf8(data)
                            .map_err(|_| FrameError(format!("header {name:?} is not UTF-8")))?,
                    )
                }
            }
            8 => HeaderValue::Timestamp(bytes.try_get_i64().map_err(|_| short())?),
            9 => {
                if bytes.remaining() < 16 {
                    return Err(short());
                }
                let mut uuid = [0u8; 16];
                bytes.copy_to_slice(&mut uuid);
                HeaderValue::Uuid(uuid)
            }
            other => return Err(FrameError(format!("unknown header value type {other}"))),
        };
        headers.push((name, value));
    }
    Ok(headers)
}

/// The frames of a byte stream, each as soon as its last byte arrived. A broken
/// frame, or bytes left over when the stream ends, is an error and the end.
pub fn messages<S>(
    service: &str,
    bytes: S,
) -> impl Stream<Item = Result<Message>> + Send + Unpin + use<S>
where
    S: Stream<Item = Result<Bytes>> + Send + Unpin + 'static,
{
    struct State<S> {
        service: String,
        bytes: S,
        decoder: Decoder,
        done: bool,
    }
    let state = State {
        service: service.to_string(),
        bytes,
        decoder: Decoder::default(),
        done: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        loop {
            match state.decoder.next_message() {
                Ok(Some(message)) => return Some((Ok(message), state)),
                Ok(None) => {}
                Err(FrameError(why)) => {
                    state.done = true;
                    let error = malformed(&state.service, format!("bad event-stream frame: {why}"));
                    return Some((Err(error), state));
                }
            }
            match state.bytes.next().await {
                Some(Ok(chunk)) => state.decoder.push(&chunk),
                Some(Err(error)) => {
                    state.done = true;
                    return Some((Err(error), state));
                }
                None if state.decoder.pending() > 0 => {
                    state.done = true;
                    let error = malformed(
                        &state.service,
                        format!(
                            "the stream ended inside a frame ({} bytes)",
                            state.decoder.pending()
                        ),
                    );
                    return Some((Err(error), state));
                }
                None => return None,
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked frame of the protocol reference (round-tripped through botocore).
    const REFERENCE_FRAME: &str = concat!(
        "0000009400000057b4ab9aee",
        "0b3a6576656e742d74797065",
        "07",
        "0011",
        "636f6e74656e74426c6f636b44656c7461",
        "0d3a636f6e74656e742d74797065",
        "07",
        "0010",
        "6170706c69636174696f6e2f6a736f6e",
        "0d3a6d6573736167652d74797065",
        "07",
        "0005",
        "6576656e74",
        "7b22636f6e74656e74426c6f636b496e646578223a302c2264656c7461223a7b2274657874223a224869227d7d",
        "1f944657"
    );

    fn reference() -> Vec<u8> {
        hex::decode(REFERENCE_FRAME).unwrap()
    }

    #[test]
    fn decodes_the_reference_frame() {
        let mut decoder = Decoder::default();
        decoder.push(&reference());
        let message = decoder.next_message().unwrap().unwrap();
        assert_eq!(message.header(":event-type"), Some("contentBlockDelta"));
        assert_eq!(message.header(":message-type"), Some("event"));
        assert_eq!(message.header(":content-type"), Some("application/json"));
        assert_eq!(
            &message.payload[..],
            br#"{"contentBlockIndex":0,"delta":{"text":"Hi"}}"#
        );
        assert_eq!(decoder.pending(), 0);
        assert_eq!(decoder.next_message().unwrap(), None);
    }

    #[test]
    fn frames_split_anywhere_decode_the_same() {
        let two: Vec<u8> = [reference(), reference()].concat();
        for split in 1..two.len() {
            let mut decoder = Decoder::default();
            let mut found = Vec::new();
            for part in [&two[..split], &two[split..]] {
                decoder.push(part);
                while let Some(message) = decoder.next_message().unwrap() {
                    found.push(message);
                }
            }
            assert_eq!(found.len(), 2, "split at {split}");
        }
    }

    #[test]
    fn any_flipped_bit_is_refused() {
        let frame = reference();
        for index in [2, 9, 20, 100, frame.len() - 1] {
            let mut broken = frame.clone();
            broken[index] ^= 0x10;
            let mut decoder = Decoder::default();
            decoder.push(&broken);
            assert!(decoder.next_message().is_err(), "byte {index}");
        }
    }

    #[test]
    fn a_stream_ending_inside_a_frame_is_an_error() {
        let frame = reference();
        let chunks = vec![
            Ok(Bytes::from(frame.clone())),
            Ok(Bytes::from(frame[..50].to_vec())),
        ];
        let results: Vec<_> = futures::executor::block_on(
            messages("test", futures::stream::iter(chunks)).collect::<Vec<_>>(),
        );
        assert_eq!(results.len(), 2);
        assert!(results[0].is_ok());
        assert!(
            results[1]
                .as_ref()
                .unwrap_err()
                .message
                .contains("inside a frame")
        );
    }
}
