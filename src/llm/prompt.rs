//! The prompt: numbered passages within a token budget, then the question.

use crate::llm::{ChatMessage, ChatRequest, Role};

/// A passage as the model sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Passage {
    pub title: String,
    pub text: String,
}

const SYSTEM_PROMPT: &str = "You answer questions using only the numbered passages provided. \
Cite the passages you use with their numbers in square brackets, like [1] or [2][3]. \
If the passages do not contain the answer, say that you do not know.";

/// Rough token count for budgeting: about four characters a token in English.
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

/// Estimated prompt tokens of a request, for context windows, prices and budgets.
pub fn request_tokens(request: &super::ChatRequest) -> u64 {
    request
        .messages
        .iter()
        .map(|message| estimate_tokens(&message.content) as u64)
        .sum()
}

/// Builds the request and returns how many passages fit the budget: passages are
/// taken in order, and the last one that does not fit whole is cut to fit.
pub fn build_prompt(
    question: &str,
    passages: &[Passage],
    context_budget_tokens: usize,
    max_output_tokens: u32,
) -> (ChatRequest, usize) {
    let mut context = String::new();
    let mut used = 0;
    let mut remaining_chars = context_budget_tokens.saturating_mul(4);
    for (index, passage) in passages.iter().enumerate() {
        let header = if passage.title.is_empty() {
            format!("[{}] ", index + 1)
        } else {
            format!("[{}] {}\n", index + 1, passage.title)
        };
        let needed = header.chars().count() + passage.text.chars().count() + 2;
        if needed <= remaining_chars {
            context.push_str(&header);
            context.push_str(&passage.text);
            context.push_str("\n\n");
            remaining_chars -= needed;
            used += 1;
            continue;
        }
        // Room for the header and a useful part of the text: cut at a char boundary.
        let room_for_text = remaining_chars.saturating_sub(header.chars().count() + 2);
        if room_for_text >= 64 {
            context.push_str(&header);
            context.extend(passage.text.chars().take(room_for_text));
            context.push_str("\n\n");
            used += 1;
        }
        break;
    }
    let request = ChatRequest {
        messages: vec![
            ChatMessage {
                role: Role::System,
                content: SYSTEM_PROMPT.to_string(),
            },
            ChatMessage {
                role: Role::User,
                content: format!("Passages:\n\n{context}Question: {question}"),
            },
        ],
        max_output_tokens,
        temperature: 0.2,
    };
    (request, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passage(text: &str) -> Passage {
        Passage {
            title: "t".into(),
            text: text.into(),
        }
    }

    #[test]
    fn passages_are_numbered_in_order() {
        let (request, used) = build_prompt("why?", &[passage("alpha"), passage("beta")], 1000, 64);
        assert_eq!(used, 2);
        let user = &request.messages[1].content;
        assert!(user.find("[1] t\nalpha").unwrap() < user.find("[2] t\nbeta").unwrap());
        assert!(user.ends_with("Question: why?"));
    }

    #[test]
    fn the_budget_cuts_passages() {
        let long = "word ".repeat(400);
        let (request, used) = build_prompt("q", &[passage(&long), passage(&long)], 300, 64);
        assert_eq!(used, 1, "the first is cut to fit, the second left out");
        assert!(estimate_tokens(&request.messages[1].content) <= 310);
    }

    #[test]
    fn multibyte_text_is_cut_on_char_boundaries() {
        let long = "é".repeat(5000);
        let (_, used) = build_prompt("q", &[passage(&long)], 100, 64);
        assert_eq!(used, 1);
    }
}
