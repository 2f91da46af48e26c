//! The worker's side: `skyfuse extract-worker` reads requests on stdin and answers on
//! stdout until stdin closes. It runs no async runtime and no other thread, so its address
//! space is the binary and the object at hand.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::fd::FromRawFd;

use super::frame::{HANDSHAKE, MAX_REQUEST_BYTES, decode_request, read_frame, write_frame};
use super::limits::limit_cpu_for_next_object;
use crate::ingest::extract::{ExtractError, Extraction, extract_with_problems};

/// Runs the worker on this process's stdin and stdout. A parser that prints to stdout
/// would corrupt the frames, so the frames go to a private copy of stdout and fd 1 is
/// pointed at stderr, which the server keeps the tail of for its crash reports.
pub fn run_worker_process(cpu_seconds_per_object: u64) -> io::Result<()> {
    // SAFETY: dup and dup2 on the standard descriptors, which this process owns; the new
    // descriptor is owned by the File from here on.
    let frames = unsafe {
        let frames = libc::dup(1);
        if frames < 0 || libc::dup2(2, 1) < 0 {
            return Err(io::Error::last_os_error());
        }
        File::from_raw_fd(frames)
    };
    let input = BufReader::new(io::stdin().lock());
    serve(input, BufWriter::new(frames), Some(cpu_seconds_per_object))
}

/// Answers every request on `input` until it closes; `None`: no CPU limit (tests, where
/// the process is the test harness).
fn serve(
    mut input: impl Read,
    mut output: impl Write,
    cpu_seconds_per_object: Option<u64>,
) -> io::Result<()> {
    write_frame(&mut output, HANDSHAKE)?;
    while let Some(request) = read_frame(&mut input, MAX_REQUEST_BYTES)? {
        if let Some(seconds) = cpu_seconds_per_object {
            limit_cpu_for_next_object(seconds)?;
        }
        let reply: Result<Extraction, ExtractError> = match decode_request(&request) {
            Some((object_key, bytes)) => extract_with_problems(object_key, bytes),
            None => Err(ExtractError::WorkerUnavailable {
                reason: "malformed request".to_owned(),
            }),
        };
        drop(request);
        let encoded = serde_json::to_vec(&reply).map_err(io::Error::other)?;
        write_frame(&mut output, &encoded)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::isolate::frame::write_request;

    #[tokio::test]
    async fn the_worker_greets_then_answers_each_request() {
        let mut requests = Vec::new();
        write_request(&mut requests, "a.txt", b"hello there")
            .await
            .unwrap();
        write_request(&mut requests, "b.pdf", b"%PDF-1.5 nonsense")
            .await
            .unwrap();
        let mut replies = Vec::new();
        serve(requests.as_slice(), &mut replies, None).unwrap();
        let mut replies = replies.as_slice();
        let limit = u64::MAX;
        assert_eq!(read_frame(&mut replies, limit).unwrap().unwrap(), HANDSHAKE);
        let first: Result<Extraction, ExtractError> =
            serde_json::from_slice(&read_frame(&mut replies, limit).unwrap().unwrap()).unwrap();
        assert_eq!(first.unwrap().documents[0].text, "hello there");
        let second: Result<Extraction, ExtractError> =
            serde_json::from_slice(&read_frame(&mut replies, limit).unwrap().unwrap()).unwrap();
        assert!(
            matches!(second, Err(ExtractError::Pdf { .. })),
            "{second:?}"
        );
        assert!(read_frame(&mut replies, limit).unwrap().is_none());
    }
}
