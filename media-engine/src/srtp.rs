//! SRTP and SRTCP (RFC 3711; AEAD AES-GCM, RFC 7714) for one leg, keyed by SDES (RFC 4568).
//!
//! The cryptography is libsrtp2's, the reference implementation (through the `srtp` bindings):
//! key derivation, the rollover counter, the replay window (128 packets) and libsrtp's own key
//! usage limit. This module adds what SDES says on top: the suites by their SDP names, the
//! `inline:` key format and the key lifetime (`|2^31`), after which the key is not used again.
//!
//! A leg keeps two sessions: *inbound* with the endpoint's key (what it sends is checked and
//! decrypted) and *outbound* with the media plane's key (what is sent to it is encrypted).

use std::fmt;

use base64::Engine as _;

/// SDES crypto suites the media plane speaks (RFC 4568 §6.2, RFC 7714 §14.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpSuite {
    /// AES-128 counter mode, HMAC-SHA1 80-bit tag: the one every SRTP phone has.
    AesCm128HmacSha1_80,
    /// The same with a 32-bit RTP tag (SRTCP keeps 80 bits).
    AesCm128HmacSha1_32,
    /// AES-128-GCM, 16-byte tag.
    AeadAes128Gcm,
}

impl SrtpSuite {
    /// Every suite, in the order the media plane offers them.
    pub const ALL: [SrtpSuite; 3] = [SrtpSuite::AesCm128HmacSha1_80, SrtpSuite::AesCm128HmacSha1_32, SrtpSuite::AeadAes128Gcm];

    /// The suite's name in `a=crypto`.
    pub fn sdes_name(self) -> &'static str {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            SrtpSuite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            SrtpSuite::AeadAes128Gcm => "AEAD_AES_128_GCM",
        }
    }

    pub fn from_sdes_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.sdes_name() == name)
    }

    /// Master key plus master salt, in bytes (what `inline:` carries).
    pub fn key_len(self) -> usize {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 | SrtpSuite::AesCm128HmacSha1_32 => 30,
            SrtpSuite::AeadAes128Gcm => 28,
        }
    }

    fn policies(self) -> (srtp::CryptoPolicy, srtp::CryptoPolicy) {
        use srtp::CryptoPolicy as P;
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => (P::aes_cm_128_hmac_sha1_80(), P::aes_cm_128_hmac_sha1_80()),
            SrtpSuite::AesCm128HmacSha1_32 => (P::aes_cm_128_hmac_sha1_32(), P::aes_cm_128_hmac_sha1_80()),
            SrtpSuite::AeadAes128Gcm => (P::aes_gcm_128_16_auth(), P::aes_gcm_128_16_auth()),
        }
    }
}

/// One `a=crypto` line's key: suite, master key and salt, lifetime in packets.
#[derive(Clone, PartialEq, Eq)]
pub struct SdesKey {
    pub tag: u32,
    pub suite: SrtpSuite,
    pub key: Vec<u8>,
    /// Packets the key may protect (`|2^31` or `|1048576`); `None`: libsrtp's own limit.
    pub lifetime: Option<u64>,
}

impl fmt::Debug for SdesKey {
    // The key itself is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SdesKey")
            .field("tag", &self.tag)
            .field("suite", &self.suite)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// Why an `a=crypto` line is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdesError {
    #[error("a=crypto:{0}: not \"tag suite inline:key\"")]
    Syntax(String),
    #[error("a=crypto: unsupported suite {0}")]
    Suite(String),
    #[error("a=crypto: the key is not base64 of {0} bytes")]
    Key(usize),
    #[error("a=crypto: a master key index (MKI) is not supported")]
    Mki,
    #[error("a=crypto: bad lifetime {0:?}")]
    Lifetime(String),
}

impl SdesKey {
    /// Parses the value of an `a=crypto` attribute (RFC 4568 §9.1); session parameters are
    /// ignored, one key per line.
    pub fn parse(value: &str) -> Result<Self, SdesError> {
        let syntax = || SdesError::Syntax(value.to_owned());
        let mut parts = value.split_ascii_whitespace();
        let tag = parts.next().and_then(|t| t.parse().ok()).ok_or_else(syntax)?;
        let suite_name = parts.next().ok_or_else(syntax)?;
        let suite = SrtpSuite::from_sdes_name(suite_name).ok_or_else(|| SdesError::Suite(suite_name.to_owned()))?;
        let params = parts.next().and_then(|p| p.strip_prefix("inline:")).ok_or_else(syntax)?;
        let mut fields = params.split('|');
        let key = base64::engine::general_purpose::STANDARD
            .decode(fields.next().unwrap_or_default())
            .ok()
            .filter(|k| k.len() == suite.key_len())
            .ok_or(SdesError::Key(suite.key_len()))?;
        let mut lifetime = None;
        for field in fields {
            if field.contains(':') {
                return Err(SdesError::Mki);
            }
            let bad = || SdesError::Lifetime(field.to_owned());
            lifetime = Some(match field.strip_prefix("2^") {
                Some(exp) => exp.parse::<u32>().ok().filter(|e| *e < 64).map(|e| 1u64 << e).ok_or_else(bad)?,
                None => field.parse::<u64>().map_err(|_| bad())?,
            });
        }
        Ok(SdesKey { tag, suite, key, lifetime })
    }

    /// A fresh key for `suite`, from `random` (the caller's randomness; the engine has none).
    pub fn generate(tag: u32, suite: SrtpSuite, random: &mut dyn FnMut(&mut [u8])) -> Self {
        let mut key = vec![0; suite.key_len()];
        random(&mut key);
        SdesKey { tag, suite, key, lifetime: None }
    }

    /// The value of an `a=crypto` attribute for this key.
    pub fn to_attribute(&self) -> String {
        let key = base64::engine::general_purpose::STANDARD.encode(&self.key);
        format!("{} {} inline:{key}", self.tag, self.suite.sdes_name())
    }
}

/// The keys of an SRTP leg: the endpoint's (to check and decrypt what it sends) and the media
/// plane's (to encrypt what is sent to it), of one suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrtpKeys {
    pub remote: SdesKey,
    pub local: SdesKey,
}

/// Why a packet was not protected or unprotected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpFailure {
    /// The authentication tag does not match (tampered, or the wrong key).
    Auth,
    /// Replayed, or older than the replay window.
    Replay,
    /// The key's lifetime is used up.
    KeyExpired,
    /// Too short to be SRTP, or refused otherwise.
    Invalid,
}

/// A leg's SRTP state.
pub struct SrtpContext {
    keys: SrtpKeys,
    inbound: srtp::Session,
    outbound: srtp::Session,
    /// Packets received and sent under the current keys (for their lifetimes).
    unprotected: u64,
    protected: u64,
}

impl fmt::Debug for SrtpContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpContext")
            .field("keys", &self.keys)
            .field("unprotected", &self.unprotected)
            .field("protected", &self.protected)
            .finish_non_exhaustive()
    }
}

/// Why libsrtp refused the keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SRTP session: {0}")]
pub struct SrtpSetupError(String);

impl SrtpContext {
    pub fn new(keys: SrtpKeys) -> Result<Self, SrtpSetupError> {
        if keys.remote.suite != keys.local.suite {
            return Err(SrtpSetupError("the two keys are of different suites".into()));
        }
        Ok(SrtpContext {
            inbound: session(&keys.remote, true)?,
            outbound: session(&keys.local, false)?,
            keys,
            unprotected: 0,
            protected: 0,
        })
    }

    pub fn keys(&self) -> &SrtpKeys {
        &self.keys
    }

    /// Takes new keys (a new offer/answer): the inbound session, with its rollover counter and
    /// replay window, stays when the endpoint's key is the same, the outbound one when ours is.
    /// Nothing changes if libsrtp refuses a key.
    pub fn rekey(&mut self, keys: SrtpKeys) -> Result<(), SrtpSetupError> {
        if keys.remote.suite != keys.local.suite {
            return Err(SrtpSetupError("the two keys are of different suites".into()));
        }
        let inbound = (keys.remote != self.keys.remote).then(|| session(&keys.remote, true)).transpose()?;
        let outbound = (keys.local != self.keys.local).then(|| session(&keys.local, false)).transpose()?;
        if let Some(s) = inbound {
            self.inbound = s;
            self.unprotected = 0;
        }
        if let Some(s) = outbound {
            self.outbound = s;
            self.protected = 0;
        }
        self.keys = keys;
        Ok(())
    }

    /// Checks and decrypts an SRTP (or SRTCP) packet in place.
    pub fn unprotect(&mut self, packet: &mut Vec<u8>, rtcp: bool) -> Result<(), SrtpFailure> {
        if self.keys.remote.lifetime.is_some_and(|l| self.unprotected >= l) {
            return Err(SrtpFailure::KeyExpired);
        }
        let done = if rtcp { self.inbound.unprotect_rtcp(packet) } else { self.inbound.unprotect(packet) };
        done.map_err(failure)?;
        self.unprotected += 1;
        Ok(())
    }

    /// Encrypts and signs an RTP (or RTCP) packet in place (it grows by the tag).
    pub fn protect(&mut self, packet: &mut Vec<u8>, rtcp: bool) -> Result<(), SrtpFailure> {
        if self.keys.local.lifetime.is_some_and(|l| self.protected >= l) {
            return Err(SrtpFailure::KeyExpired);
        }
        let done = if rtcp { self.outbound.protect_rtcp(packet) } else { self.outbound.protect(packet) };
        done.map_err(failure)?;
        self.protected += 1;
        Ok(())
    }
}

/// A libsrtp session for `key`: inbound (any SSRC the endpoint uses) or outbound.
fn session(key: &SdesKey, inbound: bool) -> Result<srtp::Session, SrtpSetupError> {
    let (rtp, rtcp) = key.suite.policies();
    let policy = srtp::StreamPolicy { rtp, rtcp, key: &key.key, window_size: 128, ..Default::default() };
    let made = if inbound { srtp::Session::with_inbound_template(policy) } else { srtp::Session::with_outbound_template(policy) };
    made.map_err(|e| SrtpSetupError(e.to_string()))
}

fn failure(e: srtp::Error) -> SrtpFailure {
    if e == srtp::Error::AUTH_FAIL {
        SrtpFailure::Auth
    } else if e == srtp::Error::REPLAY_FAIL || e == srtp::Error::REPLAY_OLD || e == srtp::Error::PKT_IDX_OLD {
        SrtpFailure::Replay
    } else if e == srtp::Error::KEY_EXPIRED {
        SrtpFailure::KeyExpired
    } else {
        SrtpFailure::Invalid
    }
}

#[cfg(test)]
mod tests;
