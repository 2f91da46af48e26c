//! Chunking: split a document into overlapping windows of words, preferring to end a window
//! at a sentence or paragraph boundary. Chunk text is a slice of the original text, so line
//! breaks and punctuation survive.
//!
//! Words are not enough of a bound: a document without whitespace is one "word". So every
//! window is also cut to at most `max_bytes` (at whitespace when there is some in its second
//! half, else at a char boundary), and titles are cut to [`MAX_TITLE_BYTES`]: a cited chunk
//! must fit a gRPC message and an embedding request whatever the document looks like.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::document::{CharSpan, Chunk};
use crate::error::{Error, Result};
use crate::ingest::extract::ExtractedDoc;

/// The longest title a chunk carries, in bytes (cut at a char boundary).
pub const MAX_TITLE_BYTES: usize = 1024;

/// The default byte bound of a chunk: a cited chunk fits a 4 MiB gRPC message many times
/// over, and an embedding request of any provider.
pub const DEFAULT_CHUNK_MAX_BYTES: usize = 8 * 1024;

/// Chunk sizes, in whitespace-separated words and in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChunkingConfig {
    pub max_words: usize,
    /// Words shared by consecutive chunks, so a sentence cut at a boundary is whole in one.
    pub overlap_words: usize,
    /// No chunk's text is longer than this, whatever its word count.
    pub max_bytes: usize,
}

impl Default for ChunkingConfig {
    fn default() -> Self {
        Self {
            max_words: 200,
            overlap_words: 40,
            max_bytes: DEFAULT_CHUNK_MAX_BYTES,
        }
    }
}

impl ChunkingConfig {
    pub fn validate(&self) -> Result<()> {
        if self.max_words == 0 {
            return Err(Error::config("chunking max_words must be at least 1"));
        }
        if self.overlap_words >= self.max_words {
            return Err(Error::config(format!(
                "chunking overlap_words ({}) must be smaller than max_words ({})",
                self.overlap_words, self.max_words
            )));
        }
        if self.max_bytes < MIN_CHUNK_MAX_BYTES {
            return Err(Error::config(format!(
                "chunking max_bytes must be at least {MIN_CHUNK_MAX_BYTES}"
            )));
        }
        Ok(())
    }

    /// Sizes that cannot loop forever even when [`Self::validate`] was skipped.
    fn clamped(&self) -> (usize, usize) {
        let max_words = self.max_words.max(1);
        (max_words, self.overlap_words.min(max_words - 1))
    }
}

/// The smallest byte bound accepted: room for any char and a few words.
pub const MIN_CHUNK_MAX_BYTES: usize = 64;

/// One chunk's place in its text: which words, and the bytes they span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WordWindow {
    /// Indexes into the text's words, end exclusive.
    pub words: Range<usize>,
    /// From the first byte of the first word to the last byte of the last word.
    pub bytes: Range<usize>,
}

/// The chunks of one document, ids `{doc_id}#{ordinal}`. Whitespace-only text has none.
pub fn chunk_document(
    object_key: &str,
    document: &ExtractedDoc,
    config: &ChunkingConfig,
) -> Vec<Chunk> {
    chunks_of_document(object_key, document, config).collect()
}

/// [`chunk_document`] as an iterator, so a caller can stop after as many chunks as it allows.
pub fn chunks_of_document<'a>(
    object_key: &'a str,
    document: &'a ExtractedDoc,
    config: &ChunkingConfig,
) -> impl Iterator<Item = Chunk> + 'a {
    let max_bytes = config.max_bytes.max(MIN_CHUNK_MAX_BYTES);
    let title = prefix_within(&document.title, MAX_TITLE_BYTES);
    // Starts and ends each only grow (windows overlap, so an end passes the next start).
    let (mut starts, mut ends) = (CharCounter::default(), CharCounter::default());
    word_windows(&document.text, config)
        .into_iter()
        .flat_map(move |window| byte_bounded_pieces(&document.text, window.bytes, max_bytes))
        .enumerate()
        .map(move |(ordinal, bytes)| {
            let span = CharSpan {
                start: starts.at(&document.text, bytes.start),
                end: ends.at(&document.text, bytes.end),
            };
            // u32 chunks of at least one byte each cannot overflow for objects under 4 GiB.
            let ordinal = u32::try_from(ordinal).unwrap_or(u32::MAX);
            Chunk {
                chunk_id: Chunk::make_id(&document.doc_id, ordinal),
                doc_id: document.doc_id.clone(),
                object_key: object_key.to_owned(),
                title: title.into(),
                text: document.text[bytes].into(),
                ordinal,
                // The pipeline stamps the bucket's location on every chunk.
                cloud: String::new(),
                region: String::new(),
                metadata: Default::default(),
                span: Some(span),
            }
        })
}

/// Char offsets of growing byte offsets, counted on from the last one asked for, so a
/// document is scanned once, not once per chunk.
#[derive(Debug, Default)]
struct CharCounter {
    byte: usize,
    chars: u64,
}

impl CharCounter {
    /// The char offset of `byte` (a char boundary) in `text`.
    fn at(&mut self, text: &str, byte: usize) -> u64 {
        if byte < self.byte {
            *self = Self::default();
        }
        self.chars += text[self.byte..byte].chars().count() as u64;
        self.byte = byte;
        self.chars
    }
}

/// The longest prefix of `text` of at most `max_bytes` bytes that ends on a char boundary.
fn prefix_within(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `range` of `text` cut into pieces of at most `max_bytes` bytes (`max_bytes` >= 4, so every
/// piece holds at least one char): at the last whitespace of a piece's second half when there
/// is one, else at a char boundary. Whitespace at a cut is dropped, so no piece is blank.
fn byte_bounded_pieces(text: &str, range: Range<usize>, max_bytes: usize) -> Vec<Range<usize>> {
    let mut pieces = Vec::new();
    let mut start = range.start;
    while start < range.end {
        if range.end - start <= max_bytes {
            pieces.push(start..range.end);
            break;
        }
        let hard_end = start + prefix_within(&text[start..range.end], max_bytes).len();
        let candidate = &text[start..hard_end];
        let end = candidate
            .rfind(char::is_whitespace)
            .filter(|&offset| offset >= max_bytes / 2)
            .map_or(hard_end, |offset| start + offset);
        pieces.push(start..end);
        // Skip the whitespace at the cut so the next piece starts on a word.
        start = end
            + text[end..range.end]
                .find(|character: char| !character.is_whitespace())
                .unwrap_or(range.end - end);
    }
    pieces
}

/// The windows covering every word of `text`, each at most `max_words` long, consecutive
/// windows sharing exactly `overlap_words` words.
pub fn word_windows(text: &str, config: &ChunkingConfig) -> Vec<WordWindow> {
    let (max_words, overlap_words) = config.clamped();
    let word_spans = word_byte_spans(text);
    let word_count = word_spans.len();
    let mut windows = Vec::new();
    let mut start = 0;
    while start < word_count {
        let end = if word_count - start <= max_words {
            word_count
        } else {
            window_end(text, &word_spans, start, max_words, overlap_words)
        };
        windows.push(WordWindow {
            words: start..end,
            bytes: word_spans[start].start..word_spans[end - 1].end,
        });
        if end == word_count {
            break;
        }
        // `end - start > overlap_words` (see `window_end`), so this always moves forward.
        start = end - overlap_words;
    }
    windows
}

/// Where a full window starting at `start` should end (exclusive): the last sentence or
/// paragraph boundary in its second half, else exactly `max_words` words.
fn window_end(
    text: &str,
    word_spans: &[Range<usize>],
    start: usize,
    max_words: usize,
    overlap_words: usize,
) -> usize {
    let hard_end = start + max_words;
    // Long enough to be worth a chunk, and longer than the overlap so the next starts later.
    let shortest = (overlap_words + 1).max(max_words / 2).min(max_words);
    (start + shortest..=hard_end)
        .rev()
        .find(|&end| ends_at_boundary(text, word_spans, end - 1))
        .unwrap_or(hard_end)
}

/// Whether a sentence ends with word `index`, or a blank line follows it.
fn ends_at_boundary(text: &str, word_spans: &[Range<usize>], index: usize) -> bool {
    let word = &text[word_spans[index].clone()];
    let without_closers = word.trim_end_matches(['"', '\'', ')', ']', '\u{201d}', '\u{2019}']);
    if without_closers.ends_with(['.', '!', '?', '\u{3002}', '\u{ff01}', '\u{ff1f}']) {
        return true;
    }
    let Some(next_word) = word_spans.get(index + 1) else {
        return true;
    };
    text[word_spans[index].end..next_word.start]
        .matches('\n')
        .count()
        >= 2
}

/// Byte spans of the whitespace-separated words, the same words `split_whitespace` yields.
fn word_byte_spans(text: &str) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut word_start = None;
    for (offset, character) in text.char_indices() {
        match (character.is_whitespace(), word_start) {
            (true, Some(start)) => {
                spans.push(start..offset);
                word_start = None;
            }
            (false, None) => word_start = Some(offset),
            _ => {}
        }
    }
    if let Some(start) = word_start {
        spans.push(start..text.len());
    }
    spans
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn config(max_words: usize, overlap_words: usize) -> ChunkingConfig {
        ChunkingConfig {
            max_words,
            overlap_words,
            ..ChunkingConfig::default()
        }
    }

    #[test]
    fn a_document_without_whitespace_becomes_many_bounded_chunks() {
        let text = "é".repeat(5_000_000 / 2);
        let chunking = ChunkingConfig::default();
        let chunks = chunk_document("k", &document(&text), &chunking);
        assert!(
            chunks.len() >= text.len() / chunking.max_bytes,
            "{}",
            chunks.len()
        );
        assert!(
            chunks
                .iter()
                .all(|chunk| chunk.text.len() <= chunking.max_bytes)
        );
        let rejoined: String = chunks.iter().map(|chunk| &*chunk.text).collect();
        assert_eq!(rejoined, text);
        let ordinals: Vec<u32> = chunks.iter().map(|chunk| chunk.ordinal).collect();
        assert!(
            ordinals
                .iter()
                .enumerate()
                .all(|(index, &ordinal)| index as u32 == ordinal)
        );
    }

    #[test]
    fn long_windows_are_cut_at_whitespace_and_titles_are_bounded() {
        let chunking = ChunkingConfig {
            max_words: 1000,
            overlap_words: 0,
            max_bytes: 64,
        };
        let text = "abcdefghi ".repeat(40);
        let mut long_title = document(&text);
        long_title.title = "t".repeat(5000);
        let chunks = chunk_document("k", &long_title, &chunking);
        assert!(chunks.len() > 1);
        for chunk in &chunks {
            assert!(chunk.text.len() <= 64, "{:?}", chunk.text);
            assert!(
                chunk
                    .text
                    .split_whitespace()
                    .all(|word| word == "abcdefghi")
            );
            assert_eq!(chunk.title.len(), MAX_TITLE_BYTES);
        }
        let words: usize = chunks
            .iter()
            .map(|c| c.text.split_whitespace().count())
            .sum();
        assert_eq!(words, 40);
        assert!(config(10, 2).validate().is_ok());
        let too_small = ChunkingConfig {
            max_bytes: 8,
            ..ChunkingConfig::default()
        };
        assert!(too_small.validate().is_err());
    }

    fn document(text: &str) -> ExtractedDoc {
        ExtractedDoc {
            doc_id: "doc".to_owned(),
            title: "Title".to_owned(),
            text: text.to_owned(),
            id_from_record: false,
            fields: Default::default(),
        }
    }

    #[test]
    fn validate_rejects_zero_and_overlap_not_below_max() {
        assert!(ChunkingConfig::default().validate().is_ok());
        assert!(config(0, 0).validate().is_err());
        assert!(config(10, 10).validate().is_err());
        assert!(config(10, 9).validate().is_ok());
    }

    #[test]
    fn whitespace_only_text_has_no_chunks() {
        assert!(chunk_document("k", &document(" \n\t "), &ChunkingConfig::default()).is_empty());
        assert!(chunk_document("k", &document(""), &ChunkingConfig::default()).is_empty());
    }

    #[test]
    fn short_text_is_one_chunk_with_its_formatting() {
        let chunks = chunk_document("obj", &document("  line one\n\nline two  "), &config(10, 2));
        assert_eq!(chunks.len(), 1);
        assert_eq!(&*chunks[0].text, "line one\n\nline two");
        assert_eq!(chunks[0].chunk_id, "doc#0");
        assert_eq!(chunks[0].object_key, "obj");
        assert_eq!(&*chunks[0].title, "Title");
        assert_eq!(chunks[0].span, Some(CharSpan { start: 2, end: 20 }));
    }

    #[test]
    fn spans_count_chars_and_locate_every_chunk_in_its_document() {
        let text = "Café crème brûlée. ".repeat(40);
        let chunks = chunk_document("obj", &document(&text), &config(12, 3));
        assert!(chunks.len() > 2);
        for chunk in &chunks {
            let span = chunk.span.unwrap();
            let located: String = text
                .chars()
                .skip(span.start as usize)
                .take((span.end - span.start) as usize)
                .collect();
            assert_eq!(located, &*chunk.text, "{span:?}");
        }
    }

    #[test]
    fn windows_prefer_sentence_ends() {
        // max 6: the window [0, 6) would cut "four five." in half; it ends after "three." instead.
        let text = "one two three. four five. six seven eight nine ten";
        let chunks = chunk_document("k", &document(text), &config(6, 1));
        let texts: Vec<_> = chunks.iter().map(|chunk| &*chunk.text).collect();
        assert_eq!(
            texts,
            [
                "one two three. four five.",
                "five. six seven eight nine ten"
            ]
        );
        let ordinals: Vec<_> = chunks.iter().map(|chunk| chunk.ordinal).collect();
        assert_eq!(ordinals, [0, 1]);
        assert_eq!(chunks[1].chunk_id, "doc#1");
    }

    #[test]
    fn text_without_boundaries_is_cut_at_max_words() {
        let text = (0..10)
            .map(|n| format!("w{n}"))
            .collect::<Vec<_>>()
            .join(" ");
        let windows = word_windows(&text, &config(4, 1));
        let ranges: Vec<_> = windows.iter().map(|window| window.words.clone()).collect();
        assert_eq!(ranges, [0..4, 3..7, 6..10]);
    }

    #[test]
    fn invalid_config_still_terminates() {
        let windows = word_windows("a b c d e", &config(2, 5));
        assert_eq!(windows.last().map(|window| window.words.end), Some(5));
    }

    fn words_text() -> impl Strategy<Value = String> {
        let word = prop_oneof![
            "[a-zé]{1,8}",
            "[a-z]{1,6}[.!?]",
            Just("\u{201c}quoted.\u{201d}".to_owned()),
        ];
        let separator = prop_oneof![Just(" "), Just("  "), Just("\n"), Just("\n\n"), Just("\t")];
        prop::collection::vec((word, separator), 0..300).prop_map(|pieces| {
            pieces
                .into_iter()
                .map(|(word, separator)| format!("{word}{separator}"))
                .collect()
        })
    }

    fn sizes() -> impl Strategy<Value = ChunkingConfig> {
        (1usize..40).prop_flat_map(|max_words| {
            (0..max_words).prop_map(move |overlap_words| config(max_words, overlap_words))
        })
    }

    proptest! {
        #[test]
        fn every_word_is_in_some_chunk(text in words_text(), chunking in sizes()) {
            let chunks = chunk_document("k", &document(&text), &chunking);
            let all_words: Vec<&str> = text.split_whitespace().collect();
            let mut covered = vec![false; all_words.len()];
            for window in word_windows(&text, &chunking) {
                for index in window.words {
                    covered[index] = true;
                }
            }
            prop_assert!(covered.iter().all(|&is_covered| is_covered));
            let chunk_words: Vec<&str> =
                chunks.iter().flat_map(|chunk| chunk.text.split_whitespace()).collect();
            for word in &all_words {
                prop_assert!(chunk_words.contains(word));
            }
            prop_assert_eq!(chunks.is_empty(), all_words.is_empty());
        }

        #[test]
        fn chunks_respect_max_bytes_and_keep_every_word(
            text in words_text(),
            max_words in 1usize..40,
            max_bytes in 64usize..200,
        ) {
            let chunking = ChunkingConfig { max_words, overlap_words: 0, max_bytes };
            let chunks = chunk_document("k", &document(&text), &chunking);
            for chunk in &chunks {
                prop_assert!(!chunk.text.is_empty() && chunk.text.len() <= max_bytes);
            }
            let chunk_words: Vec<&str> =
                chunks.iter().flat_map(|chunk| chunk.text.split_whitespace()).collect();
            let all_words: Vec<&str> = text.split_whitespace().collect();
            prop_assert_eq!(chunk_words, all_words);
        }

        #[test]
        fn chunks_respect_max_words(text in words_text(), chunking in sizes()) {
            for chunk in chunk_document("k", &document(&text), &chunking) {
                let word_count = chunk.text.split_whitespace().count();
                prop_assert!(word_count >= 1 && word_count <= chunking.max_words);
            }
        }

        #[test]
        fn consecutive_chunks_overlap_by_the_configured_amount(
            text in words_text(),
            chunking in sizes(),
        ) {
            let windows = word_windows(&text, &chunking);
            let chunks = chunk_document("k", &document(&text), &chunking);
            prop_assert_eq!(windows.len(), chunks.len());
            for (ordinal, pair) in chunks.windows(2).enumerate() {
                let previous: Vec<&str> = pair[0].text.split_whitespace().collect();
                let next: Vec<&str> = pair[1].text.split_whitespace().collect();
                let overlap = chunking.overlap_words;
                prop_assert_eq!(&previous[previous.len() - overlap..], &next[..overlap]);
                prop_assert_eq!(windows[ordinal + 1].words.start, windows[ordinal].words.end - overlap);
            }
            if let Some(first) = windows.first() {
                prop_assert_eq!(first.words.start, 0);
            }
            if let Some(last) = windows.last() {
                prop_assert_eq!(last.words.end, text.split_whitespace().count());
            }
        }
    }
}
