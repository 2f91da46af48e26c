//! Gzip-compressed objects (`notes.md.gz`): decompressed with a ceiling, so a small
//! compressed object cannot expand into gigabytes in memory.

use std::io::Read;

use flate2::read::MultiGzDecoder;

/// Largest decompressed size accepted.
pub const MAX_DECOMPRESSED_BYTES: u64 = 256 * 1024 * 1024;

/// The key without its `.gz` suffix (any case), when it has one.
pub fn strip_gzip_suffix(object_key: &str) -> Option<&str> {
    let cut = object_key.len().checked_sub(3)?;
    let (stem, suffix) = object_key.split_at_checked(cut)?;
    (suffix.eq_ignore_ascii_case(".gz") && !stem.is_empty() && !stem.ends_with('/')).then_some(stem)
}

/// Decompresses every gzip member; a truncated or corrupt stream is an error naming why.
pub fn gunzip(bytes: &[u8], limit: u64) -> Result<Vec<u8>, String> {
    let mut output = Vec::new();
    // Reading one byte past the limit tells "exactly at the limit" from "over it".
    MultiGzDecoder::new(bytes)
        .take(limit + 1)
        .read_to_end(&mut output)
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::UnexpectedEof => "truncated gzip: the stream ends early".to_owned(),
            _ => format!("corrupt gzip: {error}"),
        })?;
    if output.len() as u64 > limit {
        return Err(format!("gzip expands beyond {limit} bytes"));
    }
    Ok(output)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn suffix_is_stripped_case_insensitively() {
        assert_eq!(strip_gzip_suffix("a/notes.md.gz"), Some("a/notes.md"));
        assert_eq!(strip_gzip_suffix("LOG.TXT.GZ"), Some("LOG.TXT"));
        assert_eq!(strip_gzip_suffix("notes.md"), None);
        assert_eq!(strip_gzip_suffix(".gz"), None);
        assert_eq!(strip_gzip_suffix("dir/.gz"), None);
    }

    #[test]
    fn round_trip_truncation_and_bombs() {
        let original = "hello ".repeat(1000);
        let compressed = gzip(original.as_bytes());
        assert_eq!(gunzip(&compressed, 1 << 20).unwrap(), original.as_bytes());
        let truncated = gunzip(&compressed[..compressed.len() / 2], 1 << 20).unwrap_err();
        assert!(truncated.contains("truncated gzip"), "{truncated}");
        let corrupt = gunzip(b"\x1f\x8bnot gzip at all", 1 << 20).unwrap_err();
        assert!(corrupt.contains("gzip"), "{corrupt}");
        let bomb = gunzip(&gzip(&vec![b'a'; 10_000]), 9_999).unwrap_err();
        assert!(bomb.contains("expands beyond 9999"), "{bomb}");
        assert_eq!(
            gunzip(&gzip(&vec![b'a'; 10_000]), 10_000).unwrap().len(),
            10_000
        );
    }
}
