//! The passage of a chunk that best matches a query, with the query's terms marked:
//! what a pipeline shows or cites instead of the whole chunk.
//!
//! Offsets count chars (Unicode scalar values) of the chunk text, so clients in any
//! language can slice the text they already hold without knowing our byte encoding.

/// How long a passage is, in chars, at most (whole words are kept whole).
pub const SNIPPET_CHARS: usize = 240;

/// A char range of the chunk text, end exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextRange {
    pub start: usize,
    pub end: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snippet {
    /// The chunk's chars from `range.start` to `range.end`.
    pub text: String,
    pub range: TextRange,
    /// The query's terms in the passage, in chunk offsets, in order.
    pub highlights: Vec<TextRange>,
}

/// Function words that match nearly every passage: highlighting them says nothing.
const STOPWORDS: &[&str] = &[
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "how",
    "in", "is", "it", "of", "on", "or", "that", "the", "this", "to", "was", "what", "when",
    "where", "which", "who", "why", "with",
];

/// A word of a text: its char range and its lowercase form.
struct Word {
    range: TextRange,
    lower: String,
}

fn words(text: &str) -> Vec<Word> {
    let mut words = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (index, character) in text.chars().enumerate() {
        if character.is_alphanumeric() {
            let (_, lower) = current.get_or_insert_with(|| (index, String::new()));
            lower.extend(character.to_lowercase());
        } else if let Some((start, lower)) = current.take() {
            words.push(Word {
                range: TextRange { start, end: index },
                lower,
            });
        }
    }
    if let Some((start, lower)) = current {
        let end = text.chars().count();
        words.push(Word {
            range: TextRange { start, end },
            lower,
        });
    }
    words
}

/// The query's terms worth matching, lowercase, without duplicates.
fn query_terms(query: &str) -> Vec<String> {
    let mut terms: Vec<String> = Vec::new();
    for word in words(query) {
        if word.lower.chars().count() < 2 || STOPWORDS.contains(&word.lower.as_str()) {
            continue;
        }
        if !terms.contains(&word.lower) {
            terms.push(word.lower);
        }
    }
    terms
}

/// Which query term a chunk word matches, if any: the same word, or one a prefix of the
/// other when the shorter has 4+ chars, so "archive" finds "archives" (a stemmer per
/// language would do better; this needs none).
fn matching_term(word: &str, terms: &[String]) -> Option<usize> {
    terms.iter().position(|term| {
        if word == term {
            return true;
        }
        let (shorter, longer) = if word.len() < term.len() {
            (word, term.as_str())
        } else {
            (term.as_str(), word)
        };
        shorter.chars().count() >= 4 && longer.starts_with(shorter)
    })
}

/// The window of at most [`SNIPPET_CHARS`] chars of `text` holding the most distinct
/// query terms (then the most matches, then the earliest). Without any match, the
/// chunk's beginning with no highlights.
pub fn best_passage(text: &str, query: &str) -> Snippet {
    let terms = query_terms(query);
    let words = words(text);
    let matches: Vec<Option<usize>> = words
        .iter()
        .map(|word| matching_term(&word.lower, &terms))
        .collect();
    // Slide a window of whole words starting at each word; keep the best.
    let mut best: Option<(usize, usize, (usize, usize))> = None;
    let mut end = 0;
    for start in 0..words.len() {
        end = end.max(start);
        while end + 1 < words.len()
            && words[end + 1].range.end - words[start].range.start <= SNIPPET_CHARS
        {
            end += 1;
        }
        let in_window = &matches[start..=end];
        let mut distinct: Vec<usize> = in_window.iter().flatten().copied().collect();
        let total = distinct.len();
        distinct.sort_unstable();
        distinct.dedup();
        let score = (distinct.len(), total);
        if score.1 > 0 && best.is_none_or(|(_, _, kept)| score > kept) {
            best = Some((start, end, score));
        }
    }
    let total_chars = text.chars().count();
    let range = match best {
        Some((start, end, _)) => TextRange {
            start: words[start].range.start,
            end: words[end].range.end,
        },
        None => {
            // No term in the chunk: its start, cut at a word end.
            let end = words
                .iter()
                .take_while(|word| word.range.end <= SNIPPET_CHARS)
                .last()
                .map_or(total_chars.min(SNIPPET_CHARS), |word| word.range.end);
            TextRange { start: 0, end }
        }
    };
    let highlights = words
        .iter()
        .zip(&matches)
        .filter(|(word, matched)| {
            matched.is_some() && word.range.start >= range.start && word.range.end <= range.end
        })
        .map(|(word, _)| word.range)
        .collect();
    Snippet {
        text: text
            .chars()
            .skip(range.start)
            .take(range.end - range.start)
            .collect(),
        range,
        highlights,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(text: &str, range: TextRange) -> String {
        text.chars()
            .skip(range.start)
            .take(range.end - range.start)
            .collect()
    }

    #[test]
    fn the_passage_with_the_most_query_terms_wins_and_offsets_index_the_chunk() {
        let filler = "Nothing relevant is said in this sentence at all. ".repeat(12);
        let text = format!(
            "{filler}Cold archives are replicated every night to a paired région. {filler}"
        );
        let snippet = best_passage(&text, "where are cold archives replicated?");
        assert_eq!(slice(&text, snippet.range), snippet.text);
        assert!(snippet.text.contains("Cold archives are replicated"));
        assert!(snippet.text.chars().count() <= SNIPPET_CHARS);
        let marked: Vec<String> = snippet
            .highlights
            .iter()
            .map(|range| slice(&text, *range))
            .collect();
        assert_eq!(marked, ["Cold", "archives", "replicated"]);
    }

    #[test]
    fn offsets_count_chars_not_bytes_and_prefixes_match() {
        let text = "Ünïcödé first. The archive holds backups.";
        let snippet = best_passage(text, "archives");
        assert_eq!(snippet.highlights.len(), 1);
        assert_eq!(slice(text, snippet.highlights[0]), "archive");
    }

    #[test]
    fn without_a_match_the_chunk_start_is_shown_unmarked() {
        let text = "word ".repeat(100);
        let snippet = best_passage(&text, "photosynthesis");
        assert_eq!(snippet.range.start, 0);
        assert!(snippet.range.end <= SNIPPET_CHARS && snippet.range.end > 0);
        assert!(snippet.highlights.is_empty());
        assert_eq!(best_passage("", "x y").text, "");
    }
}
