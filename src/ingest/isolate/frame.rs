//! The wire between the server and an extraction worker: frames of an 8-byte little-endian
//! length and that many bytes. The worker first sends [`HANDSHAKE`]; then each request is
//! one frame (`u32` key length, key, object bytes) and each reply one frame (JSON of
//! `Result<Extraction, ExtractError>`).

use std::io::{self, Read, Write};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What a worker says first: it is one, and speaks this version of the protocol.
pub(super) const HANDSHAKE: &[u8] = b"skyfuse-extract-worker/1";

/// The largest request a worker accepts (larger objects are skipped long before).
pub(super) const MAX_REQUEST_BYTES: u64 = 4 << 30;

fn too_long(length: u64, limit: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("frame of {length} bytes, the limit is {limit}"),
    )
}

/// One frame from `input`; `None` when it closed cleanly before a frame started.
pub(super) fn read_frame(input: &mut impl Read, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; 8];
    match input.read_exact(&mut header) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let length = u64::from_le_bytes(header);
    if length > limit {
        return Err(too_long(length, limit));
    }
    // Read through `take` rather than allocating `length` up front.
    let mut payload = Vec::new();
    input.take(length).read_to_end(&mut payload)?;
    if payload.len() as u64 != length {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some(payload))
}

pub(super) fn write_frame(output: &mut impl Write, payload: &[u8]) -> io::Result<()> {
    output.write_all(&(payload.len() as u64).to_le_bytes())?;
    output.write_all(payload)?;
    output.flush()
}

/// The request payload: key length, key, object bytes.
pub(super) fn decode_request(payload: &[u8]) -> Option<(&str, &[u8])> {
    let (length, rest) = payload.split_at_checked(4)?;
    let key_length = u32::from_le_bytes(length.try_into().ok()?) as usize;
    let (key, bytes) = rest.split_at_checked(key_length)?;
    Some((std::str::from_utf8(key).ok()?, bytes))
}

pub(super) async fn write_request(
    output: &mut (impl AsyncWrite + Unpin),
    object_key: &str,
    bytes: &[u8],
) -> io::Result<()> {
    let key_length = u32::try_from(object_key.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "object key too long"))?;
    let length = 4 + object_key.len() as u64 + bytes.len() as u64;
    output.write_all(&length.to_le_bytes()).await?;
    output.write_all(&key_length.to_le_bytes()).await?;
    output.write_all(object_key.as_bytes()).await?;
    output.write_all(bytes).await?;
    output.flush().await
}

pub(super) async fn read_frame_async(
    input: &mut (impl AsyncRead + Unpin),
    limit: u64,
) -> io::Result<Vec<u8>> {
    let mut header = [0u8; 8];
    input.read_exact(&mut header).await?;
    let length = u64::from_le_bytes(header);
    if length > limit {
        return Err(too_long(length, limit));
    }
    let mut payload = Vec::new();
    input.take(length).read_to_end(&mut payload).await?;
    if payload.len() as u64 != length {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_written_async_is_read_and_decoded() {
        let mut wire = Vec::new();
        write_request(&mut wire, "docs/a.pdf", b"%PDF-1.5")
            .await
            .unwrap();
        let mut input = wire.as_slice();
        let payload = read_frame(&mut input, MAX_REQUEST_BYTES).unwrap().unwrap();
        assert_eq!(
            decode_request(&payload),
            Some(("docs/a.pdf", &b"%PDF-1.5"[..]))
        );
        assert!(read_frame(&mut input, MAX_REQUEST_BYTES).unwrap().is_none());
        assert_eq!(decode_request(&[9, 0, 0, 0, b'a']), None);
    }

    #[tokio::test]
    async fn frames_over_the_limit_or_cut_short_are_errors() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"0123456789").unwrap();
        assert!(read_frame_async(&mut wire.as_slice(), 9).await.is_err());
        assert_eq!(
            read_frame_async(&mut wire.as_slice(), 10).await.unwrap(),
            b"0123456789"
        );
        assert!(read_frame(&mut &wire[..12], 100).is_err());
    }
}
