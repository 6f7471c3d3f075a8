//! A fast, non-cryptographic hasher for the models' small integer keys (channel states,
//! transitions): the standard library's SipHash guards against crafted keys, which these are
//! not (they are indices the models make themselves), and costs several times more per
//! lookup on the hot path of the Markov chain. Written here rather than taken from a crate:
//! it is the few lines of the well-known multiply-rotate scheme (as in rustc's `FxHasher`).
//!
//! Invariant: used only for keys made by this crate, never for text from outside.

use std::hash::{BuildHasherDefault, Hasher};

#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(SEED);
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FxMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FxHasher>>;
