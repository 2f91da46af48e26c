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

/// The prompt for `question` over `passages`: the passages that fit
/// `context_budget_tokens`, numbered from 1, and how many of them it holds.
pub fn build_prompt(
    question: &str,
    passages: &[Passage],
    context_budget_tokens: usize,
    max_output_tokens: u32,
) -> (ChatRequest, usize) {
    let conversation = [ChatMessage {
        role: Role::User,
        content: question.to_string(),
    }];
    build_conversation_prompt(
        &conversation,
        passages,
        context_budget_tokens,
        max_output_tokens,
    )
}

/// The prompt for a conversation whose last turn is the user's: our instructions
/// first (the application's system turns after them), the earlier turns as they
/// were (the oldest left out beyond `context_budget_tokens`), and the passages beside
/// the last turn. Returns how many passages it holds.
pub fn build_conversation_prompt(
    conversation: &[ChatMessage],
    passages: &[Passage],
    context_budget_tokens: usize,
    max_output_tokens: u32,
) -> (ChatRequest, usize) {
    let (context, used) = numbered_passages(passages, context_budget_tokens);
    let (question, earlier) = match conversation.split_last() {
        Some((last, earlier)) => (last.content.as_str(), earlier),
        None => ("", &[][..]),
    };
    let mut system = SYSTEM_PROMPT.to_string();
    for turn in earlier.iter().filter(|turn| turn.role == Role::System) {
        system.push_str("\n\n");
        system.push_str(&turn.content);
    }
    let mut room = context_budget_tokens.saturating_mul(4);
    let mut history: Vec<ChatMessage> = earlier
        .iter()
        .rev()
        .filter(|turn| turn.role != Role::System)
        .take_while(|turn| {
            let needed = turn.content.chars().count();
            let fits = needed <= room;
            room = room.saturating_sub(needed);
            fits
        })
        .cloned()
        .collect();
    history.reverse();
    let mut messages = Vec::with_capacity(history.len() + 2);
    messages.push(ChatMessage {
        role: Role::System,
        content: system,
    });
    messages.extend(history);
    messages.push(ChatMessage {
        role: Role::User,
        content: format!("Passages:\n\n{context}Question: {question}"),
    });
    let request = ChatRequest {
        messages,
        max_output_tokens,
        temperature: 0.2,
        stop: Vec::new(),
    };
    (request, used)
}

/// The passages that fit the budget, each headed `[n] title`; the last one may be
/// cut to fit (when at least 64 characters of it do).
fn numbered_passages(passages: &[Passage], context_budget_tokens: usize) -> (String, usize) {
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
        let room_for_text = remaining_chars.saturating_sub(header.chars().count() + 2);
        if room_for_text >= 64 {
            context.push_str(&header);
            context.extend(passage.text.chars().take(room_for_text));
            context.push_str("\n\n");
            used += 1;
        }
        break;
    }
    (context, used)
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

    #[test]
    fn a_conversation_keeps_its_turns_and_puts_the_passages_beside_the_last() {
        let turn = |role, content: &str| ChatMessage {
            role,
            content: content.into(),
        };
        let conversation = [
            turn(Role::System, "Answer in French."),
            turn(Role::User, "Where are cold archives kept?"),
            turn(Role::Assistant, "In Dublin [1]."),
            turn(Role::User, "And their replicas?"),
        ];
        let (request, used) =
            build_conversation_prompt(&conversation, &[passage("paired region")], 1000, 64);
        assert_eq!(used, 1);
        let roles: Vec<Role> = request.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            vec![Role::System, Role::User, Role::Assistant, Role::User]
        );
        assert!(request.messages[0].content.starts_with(SYSTEM_PROMPT));
        assert!(request.messages[0].content.ends_with("Answer in French."));
        assert_eq!(request.messages[2].content, "In Dublin [1].");
        let last = &request.messages[3].content;
        assert!(last.contains("[1] t\npaired region"));
        assert!(last.ends_with("Question: And their replicas?"));
    }

    #[test]
    fn the_oldest_turns_are_left_out_beyond_the_budget() {
        let turn = |role, content: String| ChatMessage { role, content };
        let long = "word ".repeat(100);
        let conversation = [
            turn(Role::User, format!("first {long}")),
            turn(Role::Assistant, format!("second {long}")),
            turn(Role::User, "third".into()),
        ];
        let (request, _) = build_conversation_prompt(&conversation, &[], 150, 64);
        let contents: Vec<&str> = request
            .messages
            .iter()
            .map(|m| m.content.as_str())
            .collect();
        assert_eq!(
            contents.len(),
            3,
            "system, the newest earlier turn, the question"
        );
        assert!(contents[1].starts_with("second"));
    }
}
