//! API tokens: how they are made, stored and checked.
//!
//! A token is `fm_` and 64 hex digits of operating-system randomness (256 bits). The store
//! keeps only its SHA-256: with that much entropy a plain hash cannot be reversed, and a
//! password hash (argon2) would only slow every request down.
//!
//! Invariant: a token's text never reaches the store, a log or a response after creation.

use sha2::{Digest, Sha256};

/// A new token's text.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("fm_{}", hex(&bytes)))
}

/// The hex SHA-256 under which a token is stored and looked up.
pub fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without stopping at the first difference, so timing tells nothing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_hash_to_hex() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert_eq!((a.len(), &a[..3]), (67, "fm_"));
        assert_eq!(token_hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
