//! Unguessable ids for things a caller refers back to: request ids, index runs, answers.

use std::cell::RefCell;

/// 128 random bits as 32 hex digits.
pub fn random_id() -> String {
    prefixed_random_id("")
}

/// `prefix` then 128 random bits as 32 hex digits, in one allocation.
pub fn prefixed_random_id(prefix: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = random_bytes();
    let mut id = String::with_capacity(prefix.len() + 2 * bytes.len());
    id.push_str(prefix);
    for byte in bytes {
        id.push(char::from(HEX[usize::from(byte >> 4)]));
        id.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    id
}

/// Random bytes drawn from the system's generator a few ids at a time: each draw
/// has a fixed cost (the generator's lock, reseed check and hardware entropy) that
/// was most of an id's, and every request takes two.
const POOL_BYTES: usize = 512;

struct RandomPool {
    bytes: [u8; POOL_BYTES],
    taken: usize,
}

thread_local! {
    static POOL: RefCell<RandomPool> = const {
        RefCell::new(RandomPool { bytes: [0; POOL_BYTES], taken: POOL_BYTES })
    };
}

fn random_bytes() -> [u8; 16] {
    POOL.with_borrow_mut(|pool| {
        if pool.taken + 16 > POOL_BYTES {
            if aws_lc_rs::rand::fill(&mut pool.bytes).is_err() {
                // Never expected; a time-based id is still unique enough, only guessable.
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos();
                return nanos.to_le_bytes();
            }
            pool.taken = 0;
        }
        let range = pool.taken..pool.taken + 16;
        pool.taken += 16;
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&pool.bytes[range.clone()]);
        // An id handed out is not left behind in memory.
        pool.bytes[range].fill(0);
        bytes
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    #[test]
    fn ids_are_32_hex_digits_and_differ() {
        let (a, b) = (super::random_id(), super::random_id());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|byte| byte.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn ids_stay_distinct_across_pool_refills() {
        // Several pools' worth: a refill that repeated or zeroed bytes would collide.
        let ids: HashSet<String> = (0..1000).map(|_| super::random_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id != &"0".repeat(32)));
    }

    #[test]
    fn a_prefix_goes_first() {
        let id = super::prefixed_random_id("chatcmpl-");
        assert_eq!(id.len(), 9 + 32);
        assert!(id.starts_with("chatcmpl-"));
        assert!(id[9..].bytes().all(|byte| byte.is_ascii_hexdigit()));
    }
}
