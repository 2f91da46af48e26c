//! `skyfuse keys hash | new`: API keys for `[[caller]]`s, whose config holds only
//! `api_key_sha256`.

use std::io::Read;

use anyhow::{Result, bail};
use base64::Engine;

use skyfuse::auth::hash_key_hex;

/// Reads a key from stdin (one line; the newline is not part of it) and prints its sha256 hex.
pub fn run_hash() -> Result<()> {
    let mut input = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut input)?;
    let key = input.trim_end_matches(['\n', '\r']);
    if key.trim().is_empty() {
        bail!("no key on stdin: `printf %s \"$KEY\" | skyfuse keys hash`");
    }
    println!("{}", hash_key_hex(key));
    Ok(())
}

/// Prints a fresh random key (256 bits) and, below it, the line for the config.
pub fn run_new() -> Result<()> {
    let key = new_key()?;
    println!("key: {key}");
    println!("api_key_sha256 = \"{}\"", hash_key_hex(&key));
    Ok(())
}

fn new_key() -> Result<String> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| anyhow::anyhow!("no random bytes"))?;
    Ok(format!(
        "skf_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}
