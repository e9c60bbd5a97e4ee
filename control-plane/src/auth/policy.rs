//! Which digest algorithms a request is challenged with and may answer with.
//!
//! Phones differ: baresip 1.0 and many desk phones give up when a 401 carries a challenge they
//! cannot compute (they do not skip to the next one, as RFC 8760 §2.4 asks), and sipp 3.6.1 reads
//! only the first. So by default a challenge carries **one** algorithm, chosen in this order:
//!
//! 1. the subscriber's own setting (`subscriber set-auth`), which is then also the only algorithm
//!    accepted from that subscriber, so a SHA-256 account cannot be downgraded to MD5;
//! 2. else the domain's setting (`[auth.domains]`), with the same meaning;
//! 3. else the algorithm of credentials the request already carries, when it is one of
//!    `[auth] algorithms` (a client answering SHA-256 shows it can do SHA-256: it is re-challenged,
//!    after a stale nonce say, in SHA-256);
//! 4. else the first of `[auth] algorithms` (MD5 by default, which every phone computes).
//!
//! With `[auth] challenge = "all"`, cases 3 and 4 instead offer every algorithm of the list, one
//! header each, for deployments whose clients all scan the challenges.

use sip_core::digest::Algorithm;

/// How many challenges a 401/407 carries when no setting pins the algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChallengeMode {
    /// One challenge (see the module documentation for which).
    #[default]
    One,
    /// One challenge per configured algorithm, in order (RFC 8760 §2.4).
    All,
}

/// What a request is offered and what it may answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// Algorithms to challenge with, one header each, in order.
    pub challenge: Vec<Algorithm>,
    /// Algorithms whose credentials are checked; others are re-challenged.
    pub accept: Vec<Algorithm>,
}

/// The server's algorithm settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthPolicy {
    /// Accepted algorithms, preferred first (`[auth] algorithms`).
    pub algorithms: Vec<Algorithm>,
    /// `[auth] challenge`.
    pub mode: ChallengeMode,
    /// `[auth.domains]`: domain (lower case) → its only algorithm.
    pub domains: Vec<(String, Algorithm)>,
}

impl AuthPolicy {
    /// The offer for a request from a subscriber of `domain` whose own setting is `subscriber`
    /// (`None` when unset or unknown), carrying credentials in `answered` (if any).
    pub fn offer(&self, domain: &str, subscriber: Option<Algorithm>, answered: Option<Algorithm>) -> Offer {
        let pinned =
            subscriber.or_else(|| self.domains.iter().find(|(d, _)| d.eq_ignore_ascii_case(domain)).map(|(_, algorithm)| *algorithm));
        if let Some(algorithm) = pinned {
            return Offer { challenge: vec![algorithm], accept: vec![algorithm] };
        }
        let challenge = match self.mode {
            ChallengeMode::All => self.algorithms.clone(),
            ChallengeMode::One => {
                let shown = answered.filter(|a| self.algorithms.contains(a));
                shown.or_else(|| self.algorithms.first().copied()).into_iter().collect()
            }
        };
        Offer { challenge, accept: self.algorithms.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: ChallengeMode) -> AuthPolicy {
        AuthPolicy {
            algorithms: vec![Algorithm::Md5, Algorithm::Sha256],
            mode,
            domains: vec![("secure.test".into(), Algorithm::Sha512_256)],
        }
    }

    #[test]
    fn a_fresh_client_gets_one_md5_challenge_by_default() {
        let offer = policy(ChallengeMode::One).offer("sip.test", None, None);
        assert_eq!(offer.challenge, vec![Algorithm::Md5]);
        assert_eq!(offer.accept, vec![Algorithm::Md5, Algorithm::Sha256]);
    }

    #[test]
    fn a_client_that_answered_sha256_is_challenged_in_sha256() {
        let offer = policy(ChallengeMode::One).offer("sip.test", None, Some(Algorithm::Sha256));
        assert_eq!(offer.challenge, vec![Algorithm::Sha256]);
        // An algorithm the server does not accept is not echoed back.
        let offer = policy(ChallengeMode::One).offer("sip.test", None, Some(Algorithm::Md5Sess));
        assert_eq!(offer.challenge, vec![Algorithm::Md5]);
    }

    #[test]
    fn subscriber_setting_pins_challenge_and_accepted_algorithm() {
        let offer = policy(ChallengeMode::All).offer("secure.test", Some(Algorithm::Sha256), Some(Algorithm::Md5));
        assert_eq!(offer, Offer { challenge: vec![Algorithm::Sha256], accept: vec![Algorithm::Sha256] });
    }

    #[test]
    fn domain_setting_applies_when_the_subscriber_has_none() {
        let offer = policy(ChallengeMode::One).offer("SECURE.test", None, Some(Algorithm::Md5));
        assert_eq!(offer, Offer { challenge: vec![Algorithm::Sha512_256], accept: vec![Algorithm::Sha512_256] });
    }

    #[test]
    fn challenge_all_offers_every_algorithm_in_order() {
        let offer = policy(ChallengeMode::All).offer("sip.test", None, Some(Algorithm::Sha256));
        assert_eq!(offer.challenge, vec![Algorithm::Md5, Algorithm::Sha256]);
    }
}
