//! The answer when no LLM is configured: the sentences of the top passages that
//! share the most words with the question, each cited. Labelled extractive in
//! the route so no one mistakes it for generated text.

use std::collections::HashSet;

use crate::llm::prompt::Passage;

/// Sentences taken from each passage, at most.
const SENTENCES_PER_PASSAGE: usize = 2;
/// Passages quoted, at most.
const PASSAGES_QUOTED: usize = 3;

/// Builds the extractive answer; empty when there are no passages.
pub fn extractive_answer(question: &str, passages: &[Passage]) -> String {
    let question_words = content_words(question);
    let mut parts = Vec::new();
    for (index, passage) in passages.iter().take(PASSAGES_QUOTED).enumerate() {
        let sentences = best_sentences(&passage.text, &question_words, SENTENCES_PER_PASSAGE);
        if sentences.is_empty() {
            continue;
        }
        parts.push(format!("{} [{}]", sentences.join(" "), index + 1));
    }
    parts.join("\n")
}

/// The `count` sentences with the most question words, in document order.
fn best_sentences<'a>(
    text: &'a str,
    question_words: &HashSet<String>,
    count: usize,
) -> Vec<&'a str> {
    let all = split_sentences(text);
    // Quote prose, not code blocks, tables or headings, unless that is all there is.
    let prose: Vec<&str> = all
        .iter()
        .copied()
        .filter(|sentence| is_prose(sentence))
        .collect();
    let sentences = if prose.is_empty() { all } else { prose };
    let mut scored: Vec<(usize, usize)> = sentences
        .iter()
        .enumerate()
        .map(|(position, sentence)| {
            let overlap = content_words(sentence).intersection(question_words).count();
            (position, overlap)
        })
        .collect();
    // Most overlap first; earlier sentences win ties (they tend to be the topic).
    scored.sort_by(|left, right| right.1.cmp(&left.1).then(left.0.cmp(&right.0)));
    let mut chosen: Vec<usize> = scored
        .iter()
        .take(count)
        .map(|(position, _)| *position)
        .collect();
    chosen.sort_unstable();
    chosen
        .into_iter()
        .map(|position| sentences[position])
        .collect()
}

/// Sentences, never across a blank line: a paragraph break (or the end of a code
/// block) also ends a sentence.
fn split_sentences(text: &str) -> Vec<&str> {
    text.split("\n\n").flat_map(split_paragraph).collect()
}

fn split_paragraph(text: &str) -> Vec<&str> {
    let mut sentences = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for (index, character) in text.char_indices() {
        let ends_sentence = matches!(character, '.' | '!' | '?')
            && bytes
                .get(index + 1)
                .is_none_or(|next| next.is_ascii_whitespace());
        if ends_sentence {
            push_trimmed(&mut sentences, &text[start..=index]);
            start = index + 1;
        }
    }
    push_trimmed(&mut sentences, &text[start..]);
    sentences
}

fn push_trimmed<'a>(sentences: &mut Vec<&'a str>, sentence: &'a str) {
    let sentence = sentence.trim();
    if !sentence.is_empty() {
        sentences.push(sentence);
    }
}

/// Reads like a sentence: several words, mostly letters, no code-fence, arrow or
/// table syntax (chunks of markdown carry all three).
fn is_prose(sentence: &str) -> bool {
    let visible: Vec<char> = sentence.chars().filter(|c| !c.is_whitespace()).collect();
    let letters = visible.iter().filter(|c| c.is_alphabetic()).count();
    sentence.split_whitespace().count() >= 4
        && letters * 10 >= visible.len() * 7
        && !sentence.contains("```")
        && !sentence.contains("->")
        && !sentence.trim_start().starts_with('|')
}

/// Lowercased words of three letters or more: crude, but enough to rank sentences.
fn content_words(text: &str) -> HashSet<String> {
    text.split(|character: char| !character.is_alphanumeric())
        .filter(|word| word.chars().count() >= 3)
        .map(str::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_sentences_that_answer_and_cites_them() {
        let passages = [
            Passage {
                title: "Archives".into(),
                text: "Storage is cheap. Cold archives are replicated to a paired region. The end."
                    .into(),
            },
            Passage {
                title: "Other".into(),
                text: "Nothing relevant here".into(),
            },
        ];
        let answer = extractive_answer("Where are cold archives replicated?", &passages);
        let first_line = answer.lines().next().unwrap();
        assert!(
            first_line.contains("Cold archives are replicated to a paired region."),
            "{answer}"
        );
        assert!(first_line.ends_with("[1]"), "{answer}");
        assert!(answer.contains("[2]"));
    }

    #[test]
    fn code_blocks_and_tables_are_not_quoted_when_prose_answers() {
        let passages = [Passage {
            title: "Architecture".into(),
            text: "```\nIndex: url -> list -> fetch -> embed -> upsert -> manifest\n```\n\n\
                   | index | crash | safe |\n\n\
                   The manifest is written after the stores commit, which makes indexing crash safe."
                .into(),
        }];
        let answer = extractive_answer("How is indexing crash safe?", &passages);
        assert_eq!(
            answer,
            "The manifest is written after the stores commit, which makes indexing crash safe. [1]"
        );
    }

    #[test]
    fn no_passages_no_answer() {
        assert!(extractive_answer("anything?", &[]).is_empty());
    }

    #[test]
    fn decimals_do_not_split_sentences() {
        assert_eq!(
            split_sentences("It rose 3.5 percent. Then fell."),
            vec!["It rose 3.5 percent.", "Then fell."]
        );
    }
}
