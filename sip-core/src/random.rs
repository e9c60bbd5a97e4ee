//! Randomness for SIP identifiers, from a seed the caller draws: tags (RFC 3261 §19.3), branch
//! IDs (§8.1.1.7), Call-IDs (§8.1.1.4) and nonce salts.
//!
//! The core never reads the operating system's randomness itself: the driver seeds a
//! [`Random`] from `getrandom` once at start, tests seed it with a constant and get the same
//! identifiers on every run. ChaCha20 keeps the output unpredictable to anyone who does not know
//! the seed, which is what tags and branches need to resist spoofing.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::message::BRANCH_COOKIE;

/// A seeded generator of SIP identifiers.
#[derive(Debug, Clone)]
pub struct Random {
    rng: ChaCha20Rng,
}

impl Random {
    /// A generator for `seed` (32 bytes from the operating system in production).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Random { rng: ChaCha20Rng::from_seed(seed) }
    }

    /// A second, independent generator drawn from this one (for another state machine).
    pub fn split(&mut self) -> Self {
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        Random::from_seed(seed)
    }

    /// Fills `out` with random bytes.
    pub fn fill(&mut self, out: &mut [u8]) {
        self.rng.fill_bytes(out);
    }

    /// Random bytes.
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        self.rng.fill_bytes(&mut out);
        out
    }

    /// A From/To tag: 64 random bits in hex (§19.3 asks for at least 32).
    pub fn tag(&mut self) -> String {
        hex(&self.bytes::<8>())
    }

    /// A branch ID: the RFC 3261 magic cookie and 96 random bits.
    pub fn branch(&mut self) -> String {
        format!("{BRANCH_COOKIE}{}", hex(&self.bytes::<12>()))
    }

    /// A Call-ID: 128 random bits in hex (globally unique without naming a host).
    pub fn call_id(&mut self) -> String {
        hex(&self.bytes::<16>())
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_gives_same_identifiers_and_split_generators_differ() {
        let (mut a, mut b) = (Random::from_seed([3; 32]), Random::from_seed([3; 32]));
        assert_eq!(a.tag(), b.tag());
        assert_eq!(a.branch(), b.branch());
        let mut c = a.split();
        assert_ne!(a.call_id(), c.call_id());
    }

    #[test]
    fn identifiers_have_their_rfc_forms() {
        let mut r = Random::from_seed([9; 32]);
        let branch = r.branch();
        assert!(branch.starts_with("z9hG4bK") && branch.len() == 7 + 24);
        assert_eq!(r.tag().len(), 16);
        assert_eq!(r.call_id().len(), 32);
        let tags: std::collections::HashSet<String> = (0..1000).map(|_| r.tag()).collect();
        assert_eq!(tags.len(), 1000);
    }
}
