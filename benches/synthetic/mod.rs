//! Deterministic synthetic text for the store benches (`local_search`, `dense_scale`):
//! a Zipf-like vocabulary of pronounceable words, so tokenizing and stemming do real work.

/// Distinct words in the synthetic vocabulary.
pub const VOCABULARY_SIZE: usize = 30_000;

/// splitmix64: deterministic, dependency-free randomness for synthetic data.
pub struct SyntheticRandom(pub u64);

impl SyntheticRandom {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        mixed ^ (mixed >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Roughly normal (sum of uniforms), enough to spread vectors over the sphere.
    pub fn next_gaussian(&mut self) -> f32 {
        ((0..4).map(|_| self.next_unit()).sum::<f64>() - 2.0) as f32
    }

    /// Uniform in [0, bound).
    #[allow(
        dead_code,
        reason = "not every bench including this module draws indexes"
    )]
    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound as u64) as usize
    }

    /// A word rank with a Zipf-like (log-uniform) distribution, like real text.
    fn next_word_rank(&mut self) -> usize {
        let rank = (VOCABULARY_SIZE as f64).powf(self.next_unit()) as usize;
        rank.saturating_sub(1).min(VOCABULARY_SIZE - 1)
    }
}

/// Every word of the vocabulary, by rank.
pub fn vocabulary() -> Vec<String> {
    (0..VOCABULARY_SIZE).map(word).collect()
}

/// A pronounceable, distinct word per rank, so the stemmer has real work to do.
fn word(rank: usize) -> String {
    const SYLLABLES: [&str; 24] = [
        "ka", "lo", "mi", "ne", "ru", "ta", "shi", "vo", "pe", "da", "gu", "zo", "bri", "tem",
        "sol", "ark", "ing", "er", "ous", "ment", "ly", "ra", "ex", "on",
    ];
    let mut remaining = rank + SYLLABLES.len();
    let mut built = String::new();
    while remaining > 0 {
        built.push_str(SYLLABLES[remaining % SYLLABLES.len()]);
        remaining /= SYLLABLES.len();
    }
    built
}

/// `words` words drawn from `vocabulary`, separated by spaces.
pub fn sentence(random: &mut SyntheticRandom, vocabulary: &[String], words: usize) -> String {
    let mut text = String::with_capacity(words * 8);
    for index in 0..words {
        if index > 0 {
            text.push(' ');
        }
        text.push_str(&vocabulary[random.next_word_rank()]);
    }
    text
}
