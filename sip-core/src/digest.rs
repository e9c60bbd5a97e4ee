//! HTTP Digest authentication for SIP (RFC 7616 as profiled for SIP by RFC 8760; RFC 3261 §22.4).
//!
//! Written here because `rsip` 0.4 rejects `algorithm=SHA-256` and parses `nc` as a decimal
//! `u8`. What this module does:
//!
//! - **Parse** `Authorization` / `Proxy-Authorization` values ([`parse_credentials`]) and
//!   challenges ([`parse_challenge`]): `name=token` and `name="quoted string"` pairs with
//!   backslash escapes, duplicate parameters refused, `nc` exactly 8 hex digits. Nothing panics
//!   on any input (property-tested).
//! - **Challenge** ([`Authenticator::challenges_for`]): one `WWW-Authenticate` /
//!   `Proxy-Authenticate` value per algorithm asked for (SHA-512-256, SHA-256, MD5, each
//!   optionally `-sess`), `qop="auth"`, the same nonce in each (RFC 8760 §2.4). Which algorithms a
//!   request is offered is [`policy`](super::policy)'s choice (one, by default).
//! - **Stateless nonces**: `base64(timestamp ‖ random ‖ HMAC-SHA-256(secret, timestamp ‖ random))`.
//!   Any instance holding the secret can check a nonce without shared state; a nonce older than
//!   the TTL whose response is otherwise right yields [`DigestError::StaleNonce`] so the
//!   registrar answers with `stale=true` (RFC 7616 §3.3) and the phone retries without prompting.
//! - **Replay protection**: the highest `nc` seen per nonce is kept in a bounded map; a request
//!   must carry a higher `nc`. When the map is full the oldest nonce is evicted and every nonce
//!   as old or older is from then on treated as stale, so eviction can never reopen a replay.
//! - **Constant-time comparison** of the response (`subtle`) and of the nonce MAC (`hmac`).
//! - **Stored credentials are HA1** per hash (`H(username:realm:password)`), so the subscriber
//!   store never holds a password ([`ha1`]).
//!
//! Deviations, on purpose: `qop` is required (RFC 2069-style responses without `qop`, `nc` and
//! `cnonce` are refused: they have no replay protection); `qop=auth-int` and `userhash=true` are
//! refused (never offered); the digest `uri` must equal the Request-URI exactly.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use sha2::{Digest, Sha256, Sha512_256};
use subtle::ConstantTimeEq;

/// Longest header value parsed; real ones are a few hundred bytes.
const MAX_HEADER_LEN: usize = 4096;
/// Most parameters accepted in one header value.
const MAX_PARAMS: usize = 32;
/// Clock skew tolerated for nonces minted by another instance "in the future".
const MAX_SKEW: Duration = Duration::from_secs(60);
/// Nonce layout: 8-byte big-endian UNIX seconds, 16 random bytes, 32-byte HMAC-SHA-256.
const NONCE_TS: usize = 8;
const NONCE_RANDOM: usize = 16;
const NONCE_MAC: usize = 32;
const NONCE_LEN: usize = NONCE_TS + NONCE_RANDOM + NONCE_MAC;
/// A nonce's random part: what the replay table keys on (the nonce is authenticated first).
type NonceKey = [u8; NONCE_RANDOM];

/// The hash function under an algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashFn {
    /// MD5 (RFC 1321), 32 hex digits. Kept for the phones that know nothing else.
    Md5,
    /// SHA-256, 64 hex digits.
    Sha256,
    /// SHA-512/256 (FIPS 180-4), 64 hex digits.
    Sha512_256,
}

impl HashFn {
    /// Lower-case hex of H(parts joined by ':').
    pub fn hex(self, parts: &[&[u8]]) -> String {
        fn run<D: Digest>(parts: &[&[u8]]) -> String {
            let mut hasher = D::new();
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    hasher.update(b":");
                }
                hasher.update(part);
            }
            to_hex(hasher.finalize().as_slice())
        }
        match self {
            HashFn::Md5 => run::<Md5>(parts),
            HashFn::Sha256 => run::<Sha256>(parts),
            HashFn::Sha512_256 => run::<Sha512_256>(parts),
        }
    }

    /// Output length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            HashFn::Md5 => 16,
            HashFn::Sha256 | HashFn::Sha512_256 => 32,
        }
    }
}

/// A digest algorithm (RFC 7616 §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5`.
    Md5,
    /// `MD5-sess`.
    Md5Sess,
    /// `SHA-256`.
    Sha256,
    /// `SHA-256-sess`.
    Sha256Sess,
    /// `SHA-512-256`.
    Sha512_256,
    /// `SHA-512-256-sess`.
    Sha512_256Sess,
}

impl Algorithm {
    /// Every algorithm, MD5 first.
    pub const ALL: [Algorithm; 6] =
        [Algorithm::Md5, Algorithm::Md5Sess, Algorithm::Sha256, Algorithm::Sha256Sess, Algorithm::Sha512_256, Algorithm::Sha512_256Sess];

    /// The token written in headers.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
            Algorithm::Sha512_256 => "SHA-512-256",
            Algorithm::Sha512_256Sess => "SHA-512-256-sess",
        }
    }

    /// Parses a token, case-insensitively.
    pub fn from_token(token: &str) -> Option<Self> {
        Algorithm::ALL.into_iter().find(|a| a.name().eq_ignore_ascii_case(token))
    }

    /// The hash function.
    pub fn hash(self) -> HashFn {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => HashFn::Md5,
            Algorithm::Sha256 | Algorithm::Sha256Sess => HashFn::Sha256,
            Algorithm::Sha512_256 | Algorithm::Sha512_256Sess => HashFn::Sha512_256,
        }
    }

    /// Whether this is a `-sess` variant (HA1 bound to nonce and cnonce).
    pub fn is_session(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess | Algorithm::Sha512_256Sess)
    }
}

/// The stored credential: hex `H(username:realm:password)` (RFC 7616 §3.4.2).
pub fn ha1(hash: HashFn, username: &str, realm: &str, password: &str) -> String {
    hash.hex(&[username.as_bytes(), realm.as_bytes(), password.as_bytes()])
}

/// The `userhash` of RFC 7616 §3.4.4: hex `H(username:realm)`.
pub fn userhash(hash: HashFn, username: &str, realm: &str) -> String {
    hash.hex(&[username.as_bytes(), realm.as_bytes()])
}

/// The request-digest for `qop=auth` (RFC 7616 §3.4.1), from a stored HA1.
pub fn compute_response(algorithm: Algorithm, stored_ha1: &str, nonce: &str, nc: u32, cnonce: &str, method: &str, uri: &str) -> String {
    let hash = algorithm.hash();
    let ha1 = if algorithm.is_session() {
        hash.hex(&[stored_ha1.as_bytes(), nonce.as_bytes(), cnonce.as_bytes()])
    } else {
        stored_ha1.to_owned()
    };
    let ha2 = hash.hex(&[method.as_bytes(), uri.as_bytes()]);
    let nc = format!("{nc:08x}");
    hash.hex(&[ha1.as_bytes(), nonce.as_bytes(), nc.as_bytes(), cnonce.as_bytes(), b"auth", ha2.as_bytes()])
}

/// Why credentials were refused.
///
/// Grouped by cause. The caller's answer: for the *malformed* group, 400; for *policy* and
/// *authentication* failures, a fresh challenge (401/407), or 403 after repeated
/// [`WrongResponse`](Self::WrongResponse); for [`StaleNonce`](Self::StaleNonce), a fresh
/// challenge with `stale=true`. Treat [`UnknownUser`](Self::UnknownUser) exactly like
/// `WrongResponse` on the wire so users cannot be enumerated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    // ---- malformed header (peer sent garbage) ----
    /// Not `Digest` credentials.
    #[error("not Digest credentials")]
    NotDigest,
    /// Broken syntax.
    #[error("malformed digest parameters: {0}")]
    Malformed(&'static str),
    /// A parameter the scheme requires is absent.
    #[error("missing digest parameter {0}")]
    MissingParameter(&'static str),
    /// The same parameter twice.
    #[error("digest parameter given twice")]
    DuplicateParameter,
    /// `nc` is not exactly 8 hex digits, or is zero.
    #[error("nc must be 8 hex digits and not zero")]
    BadNonceCount,

    // ---- policy: well-formed but not acceptable here ----
    /// Unknown algorithm, or one this server did not offer.
    #[error("algorithm not offered")]
    AlgorithmNotOffered,
    /// `qop` absent (RFC 2069 style) or not `auth`.
    #[error("qop must be auth")]
    UnsupportedQop,
    /// `userhash=true` is not supported.
    #[error("userhash is not supported")]
    UserhashUnsupported,
    /// Credentials for another realm.
    #[error("realm does not match")]
    RealmMismatch,
    /// The digest `uri` is not the Request-URI (RFC 3261 §22.4).
    #[error("digest uri does not match the Request-URI")]
    UriMismatch,

    // ---- authentication failed ----
    /// The nonce was not minted with our secret, or was altered.
    #[error("nonce is not ours or was altered")]
    InvalidNonce,
    /// No HA1 for this user, realm and hash.
    #[error("unknown user")]
    UnknownUser,
    /// The response does not match (wrong password).
    #[error("response does not match")]
    WrongResponse,
    /// Right password, but the nonce expired (or is too old to check for replay): re-challenge
    /// with `stale=true`.
    #[error("nonce is stale")]
    StaleNonce,
    /// `nc` not above the highest already accepted for this nonce.
    #[error("nonce count replayed")]
    Replay,
}

impl DigestError {
    /// Whether the request deserves a 400 rather than a challenge.
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            DigestError::NotDigest
                | DigestError::Malformed(_)
                | DigestError::MissingParameter(_)
                | DigestError::DuplicateParameter
                | DigestError::BadNonceCount
        )
    }

    /// Counter label.
    pub fn counter_name(&self) -> &'static str {
        match self {
            DigestError::NotDigest => "not_digest",
            DigestError::Malformed(_) => "malformed",
            DigestError::MissingParameter(_) => "missing_parameter",
            DigestError::DuplicateParameter => "duplicate_parameter",
            DigestError::BadNonceCount => "bad_nc",
            DigestError::AlgorithmNotOffered => "algorithm_not_offered",
            DigestError::UnsupportedQop => "unsupported_qop",
            DigestError::UserhashUnsupported => "userhash_unsupported",
            DigestError::RealmMismatch => "realm_mismatch",
            DigestError::UriMismatch => "uri_mismatch",
            DigestError::InvalidNonce => "invalid_nonce",
            DigestError::UnknownUser => "unknown_user",
            DigestError::WrongResponse => "wrong_response",
            DigestError::StaleNonce => "stale_nonce",
            DigestError::Replay => "replay",
        }
    }
}

/// Parsed `Authorization` / `Proxy-Authorization` Digest credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `username` (unescaped).
    pub username: String,
    /// `realm`.
    pub realm: String,
    /// `nonce`.
    pub nonce: String,
    /// `uri` (digest-uri).
    pub uri: String,
    /// `response`, as sent (hex).
    pub response: String,
    /// `algorithm` (MD5 when absent, RFC 7616 §3.4).
    pub algorithm: Algorithm,
    /// `cnonce`.
    pub cnonce: Option<String>,
    /// `nc`.
    pub nc: Option<u32>,
    /// `qop` token as sent.
    pub qop: Option<String>,
    /// `opaque`.
    pub opaque: Option<String>,
    /// `userhash=true`.
    pub userhash: bool,
}

/// A parsed challenge (`WWW-Authenticate` / `Proxy-Authenticate`), for the client side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `realm`.
    pub realm: String,
    /// `nonce`.
    pub nonce: String,
    /// `algorithm` (MD5 when absent).
    pub algorithm: Algorithm,
    /// Whether `auth` is among the offered `qop` values.
    pub qop_auth: bool,
    /// `stale=true`.
    pub stale: bool,
    /// `opaque`.
    pub opaque: Option<String>,
}

/// Splits `Digest k=v, k="v", …` into unescaped (name, value) pairs.
fn parse_params(value: &str) -> Result<Vec<(String, String)>, DigestError> {
    if value.len() > MAX_HEADER_LEN {
        return Err(DigestError::Malformed("header too long"));
    }
    let value = value.trim_start();
    let scheme_end = value.find([' ', '\t']).unwrap_or(value.len());
    let (scheme, mut rest) = value.split_at(scheme_end);
    if !scheme.eq_ignore_ascii_case("Digest") {
        return Err(DigestError::NotDigest);
    }
    let mut params: Vec<(String, String)> = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }
        let name_end = rest.find(|c: char| !is_token_char(c)).unwrap_or(rest.len());
        if name_end == 0 {
            return Err(DigestError::Malformed("expected a parameter name"));
        }
        let (name, after) = rest.split_at(name_end);
        let after = after.trim_start_matches([' ', '\t']);
        let Some(after) = after.strip_prefix('=') else {
            return Err(DigestError::Malformed("expected '=' after a parameter name"));
        };
        let after = after.trim_start_matches([' ', '\t']);
        let (parsed, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, escaped)) => out.push(escaped),
                        None => return Err(DigestError::Malformed("unterminated quoted string")),
                    },
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    '\r' | '\n' => return Err(DigestError::Malformed("line break in quoted string")),
                    c => out.push(c),
                }
            }
            let Some(end) = end else {
                return Err(DigestError::Malformed("unterminated quoted string"));
            };
            (out, quoted.get(end..).unwrap_or_default())
        } else {
            let end = after.find(|c: char| !is_token_char(c)).unwrap_or(after.len());
            if end == 0 {
                return Err(DigestError::Malformed("empty parameter value"));
            }
            let (token, remainder) = after.split_at(end);
            (token.to_owned(), remainder)
        };
        if params.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Err(DigestError::DuplicateParameter);
        }
        if params.len() == MAX_PARAMS {
            return Err(DigestError::Malformed("too many parameters"));
        }
        params.push((name.to_ascii_lowercase(), parsed));
        rest = remainder.trim_start_matches([' ', '\t']);
        if !(rest.is_empty() || rest.starts_with(',')) {
            return Err(DigestError::Malformed("expected ',' between parameters"));
        }
    }
    Ok(params)
}

/// RFC 7230 `tchar`.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fn take(params: &mut Vec<(String, String)>, name: &str) -> Option<String> {
    let index = params.iter().position(|(n, _)| n == name)?;
    Some(params.swap_remove(index).1)
}

/// Parses Digest credentials (the value of `Authorization` or `Proxy-Authorization`).
pub fn parse_credentials(value: &str) -> Result<Credentials, DigestError> {
    let mut params = parse_params(value)?;
    let mut required = |name: &'static str| take(&mut params, name).ok_or(DigestError::MissingParameter(name));
    let username = required("username")?;
    let realm = required("realm")?;
    let nonce = required("nonce")?;
    let uri = required("uri")?;
    let response = required("response")?;
    let algorithm = match take(&mut params, "algorithm") {
        None => Algorithm::Md5,
        Some(token) => Algorithm::from_token(&token).ok_or(DigestError::AlgorithmNotOffered)?,
    };
    let nc = take(&mut params, "nc").map(|nc| parse_nc(&nc)).transpose()?;
    let userhash = take(&mut params, "userhash").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    Ok(Credentials {
        username,
        realm,
        nonce,
        uri,
        response,
        algorithm,
        cnonce: take(&mut params, "cnonce"),
        nc,
        qop: take(&mut params, "qop"),
        opaque: take(&mut params, "opaque"),
        userhash,
    })
}

/// `nc`: exactly 8 hex digits, not zero (RFC 7616 §3.4: `nc-value = 8LHEX`; upper case accepted).
fn parse_nc(text: &str) -> Result<u32, DigestError> {
    if text.len() != 8 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DigestError::BadNonceCount);
    }
    match u32::from_str_radix(text, 16) {
        Ok(0) | Err(_) => Err(DigestError::BadNonceCount),
        Ok(n) => Ok(n),
    }
}

/// Parses a Digest challenge (the value of `WWW-Authenticate` or `Proxy-Authenticate`).
pub fn parse_challenge(value: &str) -> Result<Challenge, DigestError> {
    let mut params = parse_params(value)?;
    let realm = take(&mut params, "realm").ok_or(DigestError::MissingParameter("realm"))?;
    let nonce = take(&mut params, "nonce").ok_or(DigestError::MissingParameter("nonce"))?;
    let algorithm = match take(&mut params, "algorithm") {
        None => Algorithm::Md5,
        Some(token) => Algorithm::from_token(&token).ok_or(DigestError::AlgorithmNotOffered)?,
    };
    let qop_auth = take(&mut params, "qop").is_some_and(|q| q.split(',').any(|t| t.trim().eq_ignore_ascii_case("auth")));
    let stale = take(&mut params, "stale").is_some_and(|s| s.eq_ignore_ascii_case("true"));
    Ok(Challenge { realm, nonce, algorithm, qop_auth, stale, opaque: take(&mut params, "opaque") })
}

/// Writes `value` as a quoted-string, escaping `"` and `\`.
fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Builds the client's `Authorization` value answering `challenge` with `qop=auth` (for the
/// B2BUA authenticating to trunks, and for tests).
pub fn authorization(challenge: &Challenge, username: &str, stored_ha1: &str, method: &str, uri: &str, cnonce: &str, nc: u32) -> String {
    let response = compute_response(challenge.algorithm, stored_ha1, &challenge.nonce, nc, cnonce, method, uri);
    let mut out = format!(
        "Digest username={}, realm={}, nonce={}, uri={}, response={}, algorithm={}, cnonce={}, qop=auth, nc={nc:08x}",
        quote(username),
        quote(&challenge.realm),
        quote(&challenge.nonce),
        quote(uri),
        quote(&response),
        challenge.algorithm.name(),
        quote(cnonce),
    );
    if let Some(opaque) = &challenge.opaque {
        out.push_str(&format!(", opaque={}", quote(opaque)));
    }
    out
}

/// Settings of an [`Authenticator`], validated by [`Authenticator::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestConfig {
    /// `realm`: the SIP domain (no default).
    pub realm: String,
    /// `nonce_ttl`: how long a nonce is accepted (default 300 s, Kamailio's `nonce_expire`).
    pub nonce_ttl: Duration,
    /// `algorithms`: challenges offered, in preference order (default SHA-512-256, SHA-256, MD5).
    pub algorithms: Vec<Algorithm>,
    /// `replay_capacity`: nonces whose highest `nc` is remembered (default 100,000, a few MB).
    pub replay_capacity: usize,
}

impl DigestConfig {
    /// Defaults for `realm`.
    pub fn new(realm: impl Into<String>) -> Self {
        DigestConfig {
            realm: realm.into(),
            nonce_ttl: Duration::from_secs(300),
            algorithms: vec![Algorithm::Sha512_256, Algorithm::Sha256, Algorithm::Md5],
            replay_capacity: 100_000,
        }
    }
}

/// A [`DigestConfig`] that cannot work; names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestConfigError {
    /// `realm` empty or with characters a quoted-string cannot carry.
    #[error("realm must be non-empty printable text")]
    BadRealm,
    /// `nonce_ttl` zero.
    #[error("nonce_ttl must be greater than zero")]
    ZeroNonceTtl,
    /// `algorithms` empty.
    #[error("algorithms must list at least one algorithm")]
    NoAlgorithms,
    /// `replay_capacity` zero.
    #[error("replay_capacity must be greater than zero")]
    ZeroReplayCapacity,
}

/// Who passed, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The authenticated username.
    pub username: String,
    /// The algorithm used.
    pub algorithm: Algorithm,
}

/// Issues challenges and verifies credentials for one realm (see the module documentation).
///
/// Sans-IO: the caller passes the time, the randomness for nonces, and a lookup from
/// (username, realm, hash) to stored HA1.
#[derive(Debug)]
pub struct Authenticator {
    config: DigestConfig,
    secret: [u8; 64],
    /// Nonce (its random part) → (timestamp, highest nc accepted). Sized for `replay_capacity`
    /// at start, so the memory it needs is taken once, not over the first minutes of traffic.
    seen: HashMap<NonceKey, (u64, u32)>,
    /// (timestamp, nonce) in the order nonces were first used, for expiry and eviction. Nonces
    /// are used soon after they are issued, so this is close to timestamp order; eviction keeps
    /// the highest timestamp it dropped (`evicted_floor`), so an early entry left behind a later
    /// one only lives a little longer, never weakens the check.
    by_age: VecDeque<(u64, NonceKey)>,
    /// Highest timestamp of any nonce evicted while still fresh: such nonces and older are stale.
    evicted_floor: Option<u64>,
}

impl Authenticator {
    /// An authenticator for `config.realm`, minting nonces with `secret` (share it between
    /// instances that must accept each other's nonces; 32 random bytes).
    pub fn new(config: DigestConfig, secret: [u8; 32]) -> Result<Self, DigestConfigError> {
        if config.realm.is_empty() || !config.realm.chars().all(|c| !c.is_control()) {
            return Err(DigestConfigError::BadRealm);
        }
        if config.nonce_ttl.is_zero() {
            return Err(DigestConfigError::ZeroNonceTtl);
        }
        if config.algorithms.is_empty() {
            return Err(DigestConfigError::NoAlgorithms);
        }
        if config.replay_capacity == 0 {
            return Err(DigestConfigError::ZeroReplayCapacity);
        }
        // HMAC zero-pads keys to the block size, so this is HMAC with the 32-byte secret.
        let mut key = [0u8; 64];
        key[..32].copy_from_slice(&secret);
        let capacity = config.replay_capacity;
        // Both tables are sized once, so the replay table never reallocates, neither as it fills
        // nor once it is full and churns (an entry out, one in, per nonce): the map gets twice
        // the room it needs, because a hash table whose removals left tombstones grows (doubles)
        // when it is more than half full, and rehashes in place when it is not. The age queue
        // fills front to back, so its pages are touched now (a fresh allocation is not resident
        // until written); the map's slots are hashed, so the first few thousand nonces touch all
        // of its pages anyway. A control plane's memory is then flat from its first minute
        // instead of creeping up over the nonce lifetime. About 11 MB at the default.
        let seen = HashMap::with_capacity(capacity.saturating_mul(2));
        let mut by_age = VecDeque::with_capacity(capacity);
        by_age.resize(capacity, (0, [0; NONCE_RANDOM]));
        by_age.clear();
        Ok(Authenticator { config, secret: key, seen, by_age, evicted_floor: None })
    }

    // ---- getters ----

    /// The realm.
    pub fn realm(&self) -> &str {
        &self.config.realm
    }

    /// Nonces currently tracked for replay protection.
    pub fn tracked_nonces(&self) -> usize {
        self.seen.len()
    }

    /// Makes the replay table resident now (a server calls it once at start): its slots are
    /// hashed, so at a low authentication rate they would otherwise be touched one page at a
    /// time for hours, a slow rise in the server's memory that looks like a leak. Fills the
    /// table with placeholders and empties it (a few ms in an optimised build); forgets nothing
    /// a client may have used, so call it before the first request.
    pub fn prefault(&mut self) {
        if !self.seen.is_empty() {
            return;
        }
        for i in 0..self.config.replay_capacity as u64 {
            let mut key = [0u8; NONCE_RANDOM];
            key[..8].copy_from_slice(&i.to_le_bytes());
            self.seen.insert(key, (0, 0));
        }
        self.seen.clear();
    }

    // ---- commands ----

    /// A fresh nonce for `now`, from 16 caller-supplied random bytes.
    pub fn nonce(&self, now: SystemTime, random: [u8; NONCE_RANDOM]) -> String {
        let mut raw = [0u8; NONCE_LEN];
        raw[..NONCE_TS].copy_from_slice(&unix_secs(now).to_be_bytes());
        raw[NONCE_TS..NONCE_TS + NONCE_RANDOM].copy_from_slice(&random);
        let mac = self.mac(&raw[..NONCE_TS + NONCE_RANDOM]);
        raw[NONCE_TS + NONCE_RANDOM..].copy_from_slice(&mac);
        BASE64.encode(raw)
    }

    /// Challenge header values, one per configured algorithm sharing one nonce, for a
    /// `WWW-Authenticate` (401) or `Proxy-Authenticate` (407) header each.
    pub fn challenges(&self, now: SystemTime, random: [u8; NONCE_RANDOM], stale: bool) -> Vec<String> {
        self.challenges_for(&self.config.algorithms, now, random, stale)
    }

    /// Challenge header values for `algorithms` (chosen per request, see
    /// [`policy`](super::policy)), sharing one nonce.
    pub fn challenges_for(&self, algorithms: &[Algorithm], now: SystemTime, random: [u8; NONCE_RANDOM], stale: bool) -> Vec<String> {
        let nonce = self.nonce(now, random);
        algorithms
            .iter()
            .map(|algorithm| {
                let mut value = format!(
                    "Digest realm={}, nonce={}, algorithm={}, qop=\"auth\"",
                    quote(&self.config.realm),
                    quote(&nonce),
                    algorithm.name()
                );
                if stale {
                    value.push_str(", stale=true");
                }
                value
            })
            .collect()
    }

    /// Checks credentials against a request's method and Request-URI (the digest `uri` must be
    /// exactly `request_uri`).
    ///
    /// `lookup(username, realm, hash)` returns the stored HA1 in hex, if the user exists.
    /// On success the nonce's `nc` is recorded, so the same credentials cannot pass twice.
    pub fn verify(
        &mut self,
        header_value: &str,
        method: &str,
        request_uri: &str,
        now: SystemTime,
        lookup: impl FnOnce(&str, &str, HashFn) -> Option<String>,
    ) -> Result<Verified, DigestError> {
        self.verify_matching(header_value, method, |uri| uri == request_uri, now, lookup)
    }

    /// [`verify`](Self::verify) with the Request-URI check left to `uri_matches`, which is given
    /// the digest `uri`: for a caller holding the Request-URI parsed, where text equality would
    /// depend on how the URI is re-rendered.
    pub fn verify_matching(
        &mut self,
        header_value: &str,
        method: &str,
        uri_matches: impl FnOnce(&str) -> bool,
        now: SystemTime,
        lookup: impl FnOnce(&str, &str, HashFn) -> Option<String>,
    ) -> Result<Verified, DigestError> {
        let credentials = parse_credentials(header_value)?;
        let algorithm = credentials.algorithm;
        if !self.config.algorithms.contains(&algorithm) {
            return Err(DigestError::AlgorithmNotOffered);
        }
        if credentials.userhash {
            return Err(DigestError::UserhashUnsupported);
        }
        match credentials.qop.as_deref() {
            Some(qop) if qop.eq_ignore_ascii_case("auth") => {}
            _ => return Err(DigestError::UnsupportedQop),
        }
        let nc = credentials.nc.ok_or(DigestError::MissingParameter("nc"))?;
        let cnonce = credentials.cnonce.as_deref().ok_or(DigestError::MissingParameter("cnonce"))?;
        if credentials.realm != self.config.realm {
            return Err(DigestError::RealmMismatch);
        }
        if !uri_matches(&credentials.uri) {
            return Err(DigestError::UriMismatch);
        }
        let (issued, nonce_key) = self.check_nonce(&credentials.nonce, now)?;

        let hash = algorithm.hash();
        let stored = lookup(&credentials.username, &credentials.realm, hash).ok_or(DigestError::UnknownUser)?;
        let expected = compute_response(algorithm, &stored, &credentials.nonce, nc, cnonce, method, &credentials.uri);
        let (Some(expected), Some(given)) = (from_hex(&expected), from_hex(&credentials.response)) else {
            return Err(DigestError::WrongResponse);
        };
        if given.len() != hash.output_len() || !bool::from(expected.ct_eq(&given)) {
            return Err(DigestError::WrongResponse);
        }

        let now_secs = unix_secs(now);
        if now_secs.saturating_sub(issued) > self.config.nonce_ttl.as_secs() {
            return Err(DigestError::StaleNonce);
        }
        self.record_nc(nonce_key, issued, nc, now_secs)?;
        Ok(Verified { username: credentials.username, algorithm })
    }

    // ---- internals ----

    fn mac(&self, data: &[u8]) -> [u8; NONCE_MAC] {
        let mut mac = <Hmac<Sha256> as KeyInit>::new(&self.secret.into());
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// Authenticates a nonce and returns its timestamp and its key in the replay table.
    fn check_nonce(&self, nonce: &str, now: SystemTime) -> Result<(u64, NonceKey), DigestError> {
        if nonce.len() > 4 * NONCE_LEN.div_ceil(3) {
            return Err(DigestError::InvalidNonce);
        }
        let raw = BASE64.decode(nonce).map_err(|_| DigestError::InvalidNonce)?;
        if raw.len() != NONCE_LEN {
            return Err(DigestError::InvalidNonce);
        }
        let (data, tag) = raw.split_at(NONCE_TS + NONCE_RANDOM);
        let mut mac = <Hmac<Sha256> as KeyInit>::new(&self.secret.into());
        mac.update(data);
        mac.verify_slice(tag).map_err(|_| DigestError::InvalidNonce)?;
        let mut ts = [0u8; NONCE_TS];
        ts.copy_from_slice(data.get(..NONCE_TS).ok_or(DigestError::InvalidNonce)?);
        let issued = u64::from_be_bytes(ts);
        if issued > unix_secs(now).saturating_add(MAX_SKEW.as_secs()) {
            return Err(DigestError::InvalidNonce);
        }
        let mut key = [0u8; NONCE_RANDOM];
        key.copy_from_slice(data.get(NONCE_TS..).ok_or(DigestError::InvalidNonce)?);
        Ok((issued, key))
    }

    fn record_nc(&mut self, nonce: NonceKey, issued: u64, nc: u32, now_secs: u64) -> Result<(), DigestError> {
        if let Some((_, highest)) = self.seen.get_mut(&nonce) {
            if nc <= *highest {
                return Err(DigestError::Replay);
            }
            *highest = nc;
            return Ok(());
        }
        if self.evicted_floor.is_some_and(|floor| issued <= floor) {
            // Its history may have been evicted: cannot prove this nc is new.
            return Err(DigestError::StaleNonce);
        }
        // Forget nonces that have expired: they fail as stale before reaching this map.
        let ttl = self.config.nonce_ttl.as_secs();
        while let Some((ts, _)) = self.by_age.front() {
            if now_secs.saturating_sub(*ts) <= ttl {
                break;
            }
            if let Some((_, old)) = self.by_age.pop_front() {
                self.seen.remove(&old);
            }
        }
        while self.seen.len() >= self.config.replay_capacity {
            let Some((ts, old)) = self.by_age.pop_front() else { break };
            self.seen.remove(&old);
            self.evicted_floor = Some(self.evicted_floor.map_or(ts, |f| f.max(ts)));
        }
        if self.evicted_floor.is_some_and(|floor| issued <= floor) {
            return Err(DigestError::StaleNonce);
        }
        self.seen.insert(nonce, (issued, nc));
        self.by_age.push_back((issued, nonce));
        Ok(())
    }
}

fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || text.len() > 128 {
        return None;
    }
    let bytes = text.as_bytes();
    bytes
        .chunks(2)
        .map(|pair| {
            let digit = |b: u8| (b as char).to_digit(16);
            Some((digit(*pair.first()?)? * 16 + digit(*pair.get(1)?)?) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // RFC 7616 §3.9.1.
    const RFC_NONCE: &str = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    const RFC_CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
    const RFC_REALM: &str = "http-auth@example.org";

    #[test]
    fn rfc_7616_md5_example_response() {
        let stored = ha1(HashFn::Md5, "Mufasa", RFC_REALM, "Circle of Life");
        let response = compute_response(Algorithm::Md5, &stored, RFC_NONCE, 1, RFC_CNONCE, "GET", "/dir/index.html");
        assert_eq!(response, "8ca523f5e9506fed4657c9700eebdbec");
    }

    #[test]
    fn rfc_7616_sha_256_example_response() {
        let stored = ha1(HashFn::Sha256, "Mufasa", RFC_REALM, "Circle of Life");
        let response = compute_response(Algorithm::Sha256, &stored, RFC_NONCE, 1, RFC_CNONCE, "GET", "/dir/index.html");
        assert_eq!(response, "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1");
    }

    #[test]
    fn rfc_7616_example_authorization_header_parses_to_its_parts() {
        let header = "Digest username=\"Mufasa\", realm=\"http-auth@example.org\", uri=\"/dir/index.html\", \
algorithm=SHA-256, nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", nc=00000001, \
cnonce=\"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ\", qop=auth, \
response=\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\", \
opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";
        let c = parse_credentials(header).unwrap();
        assert_eq!(c.username, "Mufasa");
        assert_eq!(c.algorithm, Algorithm::Sha256);
        assert_eq!(c.nc, Some(1));
        assert_eq!(c.qop.as_deref(), Some("auth"));
        assert_eq!(c.opaque.as_deref(), Some("FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"));
        let stored = ha1(HashFn::Sha256, "Mufasa", RFC_REALM, "Circle of Life");
        let expect = compute_response(c.algorithm, &stored, &c.nonce, c.nc.unwrap(), c.cnonce.as_deref().unwrap(), "GET", &c.uri);
        assert_eq!(expect, c.response);
    }

    #[test]
    fn sha_512_256_is_fips_180_4_sha_512_256() {
        // FIPS 180-4 example "abc" (NIST CSRC SHA512_256.pdf).
        assert_eq!(HashFn::Sha512_256.hex(&[b"abc"]), "53048e2681941ef99b2e29b76b4c7dabe4c2d0c634fc6d46e0e2f13107e7af23");
    }

    #[test]
    fn sha_512_256_digest_matches_an_independent_implementation() {
        // Inputs of RFC 7616 §3.9.2. The RFC's printed userhash and response are disputed
        // (erratum 4897); these values come from OpenSSL's SHA-512/256 via Python's hashlib.
        let user = "J\u{e4}s\u{f8}n Doe";
        assert_eq!(
            userhash(HashFn::Sha512_256, user, "api@example.org"),
            "793263caabb707a56211940d90411ea4a575adeccb7e360aeb624ed06ece9b0b"
        );
        let stored = ha1(HashFn::Sha512_256, user, "api@example.org", "Secret, or not?");
        let response = compute_response(
            Algorithm::Sha512_256,
            &stored,
            "5TsQWLVdgBdmrQ0XsxbDODV+57QdFR34I9HAbC/RVvkK",
            1,
            "NTg6RKcb9boFIAS3KrFK9BGeh+iDa/sm6jUMp2wds69v",
            "GET",
            "/doe.json",
        );
        assert_eq!(response, "3798d4131c277846293534c3edc11bd8a5e4cdcbff78b05db9d95eeb1cec68a5");
    }

    // ---- Authenticator ----

    const REALM: &str = "sip.example.com";
    const URI: &str = "sip:sip.example.com";

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn authenticator() -> Authenticator {
        // A small replay table keeps the property tests fast in debug builds; the default size is
        // checked in `replay_table_is_sized_once_at_start`.
        let mut config = DigestConfig::new(REALM);
        config.replay_capacity = 1_000;
        Authenticator::new(config, [7; 32]).unwrap()
    }

    /// A lookup holding alice's HA1 for every hash.
    fn alice(user: &str, realm: &str, hash: HashFn) -> Option<String> {
        (user == "alice" && realm == REALM).then(|| ha1(hash, "alice", REALM, "wonderland"))
    }

    fn answer(auth: &Authenticator, now: SystemTime, algorithm: Algorithm, password: &str, nc: u32) -> (String, String) {
        let challenges = auth.challenges(now, [9; 16], false);
        let challenge = challenges.iter().map(|c| parse_challenge(c).unwrap()).find(|c| c.algorithm == algorithm).unwrap();
        assert!(challenge.qop_auth);
        let stored = ha1(algorithm.hash(), "alice", REALM, password);
        (authorization(&challenge, "alice", &stored, "REGISTER", URI, "c0ffee", nc), challenge.nonce)
    }

    #[test]
    fn each_offered_algorithm_verifies_with_the_right_password() {
        for algorithm in [Algorithm::Md5, Algorithm::Sha256, Algorithm::Sha512_256] {
            let mut auth = authenticator();
            let (header, _) = answer(&auth, t(0), algorithm, "wonderland", 1);
            let ok = auth.verify(&header, "REGISTER", URI, t(1), alice).unwrap();
            assert_eq!(ok, Verified { username: "alice".into(), algorithm });
        }
    }

    #[test]
    fn session_variants_verify_when_offered() {
        let mut config = DigestConfig::new(REALM);
        config.algorithms = vec![Algorithm::Sha256Sess];
        let mut auth = Authenticator::new(config, [7; 32]).unwrap();
        let (header, _) = answer(&auth, t(0), Algorithm::Sha256Sess, "wonderland", 1);
        assert!(auth.verify(&header, "REGISTER", URI, t(1), alice).is_ok());
    }

    #[test]
    fn challenges_offer_every_algorithm_with_one_nonce_and_qop_auth() {
        let auth = authenticator();
        let values = auth.challenges(t(0), [1; 16], false);
        let parsed: Vec<_> = values.iter().map(|v| parse_challenge(v).unwrap()).collect();
        assert_eq!(parsed.iter().map(|c| c.algorithm).collect::<Vec<_>>(), vec![Algorithm::Sha512_256, Algorithm::Sha256, Algorithm::Md5]);
        assert!(parsed.iter().all(|c| c.nonce == parsed[0].nonce && c.qop_auth && !c.stale && c.realm == REALM));
        assert!(auth.challenges(t(0), [1; 16], true).iter().all(|v| parse_challenge(v).unwrap().stale));
    }

    #[test]
    fn wrong_password_is_wrong_response() {
        let mut auth = authenticator();
        let (header, _) = answer(&auth, t(0), Algorithm::Sha256, "looking-glass", 1);
        assert_eq!(auth.verify(&header, "REGISTER", URI, t(1), alice), Err(DigestError::WrongResponse));
    }

    #[test]
    fn unknown_user_is_reported_as_such() {
        let mut auth = authenticator();
        let (header, _) = answer(&auth, t(0), Algorithm::Md5, "wonderland", 1);
        assert_eq!(auth.verify(&header, "REGISTER", URI, t(1), |_, _, _| None), Err(DigestError::UnknownUser));
    }

    #[test]
    fn expired_nonce_with_right_password_is_stale_and_wrong_password_stays_wrong() {
        let mut auth = authenticator();
        let (good, _) = answer(&auth, t(0), Algorithm::Sha256, "wonderland", 1);
        assert_eq!(auth.verify(&good, "REGISTER", URI, t(301), alice), Err(DigestError::StaleNonce));
        let (bad, _) = answer(&auth, t(0), Algorithm::Sha256, "nope", 1);
        assert_eq!(auth.verify(&bad, "REGISTER", URI, t(301), alice), Err(DigestError::WrongResponse));
        assert_eq!(auth.verify(&good, "REGISTER", URI, t(300), alice).map(|v| v.username), Ok("alice".into()));
    }

    #[test]
    fn replayed_nc_is_refused_and_a_higher_nc_passes() {
        let mut auth = authenticator();
        let (first, _) = answer(&auth, t(0), Algorithm::Sha256, "wonderland", 1);
        auth.verify(&first, "REGISTER", URI, t(1), alice).unwrap();
        assert_eq!(auth.verify(&first, "REGISTER", URI, t(2), alice), Err(DigestError::Replay));
        let (second, _) = answer(&auth, t(0), Algorithm::Sha256, "wonderland", 2);
        assert!(auth.verify(&second, "REGISTER", URI, t(3), alice).is_ok());
        let (lower, _) = answer(&auth, t(0), Algorithm::Sha256, "wonderland", 1);
        assert_eq!(auth.verify(&lower, "REGISTER", URI, t(4), alice), Err(DigestError::Replay));
    }

    #[test]
    fn a_failed_attempt_does_not_advance_nc() {
        let mut auth = authenticator();
        let (bad, _) = answer(&auth, t(0), Algorithm::Sha256, "nope", 9);
        assert_eq!(auth.verify(&bad, "REGISTER", URI, t(1), alice), Err(DigestError::WrongResponse));
        let (good, _) = answer(&auth, t(0), Algorithm::Sha256, "wonderland", 1);
        assert!(auth.verify(&good, "REGISTER", URI, t(1), alice).is_ok());
    }

    #[test]
    fn tampered_or_foreign_nonce_is_invalid() {
        let mut auth = authenticator();
        let (header, nonce) = answer(&auth, t(0), Algorithm::Sha256, "wonderland", 1);
        // Flip one bit of the timestamp (extending its life) and re-encode.
        let mut raw = BASE64.decode(&nonce).unwrap();
        raw[7] ^= 1;
        let forged = BASE64.encode(&raw);
        let tampered = header.replace(&nonce, &forged);
        assert_eq!(auth.verify(&tampered, "REGISTER", URI, t(1), alice), Err(DigestError::InvalidNonce));
        let other = Authenticator::new(DigestConfig::new(REALM), [8; 32]).unwrap();
        let (foreign, _) = answer(&other, t(0), Algorithm::Sha256, "wonderland", 1);
        assert_eq!(auth.verify(&foreign, "REGISTER", URI, t(1), alice), Err(DigestError::InvalidNonce));
        let garbage = header.replace(&nonce, "not base64!");
        assert_eq!(auth.verify(&garbage, "REGISTER", URI, t(1), alice), Err(DigestError::InvalidNonce));
    }

    #[test]
    fn nonce_from_the_future_is_invalid() {
        let mut auth = authenticator();
        let (header, _) = answer(&auth, t(1000), Algorithm::Sha256, "wonderland", 1);
        assert_eq!(auth.verify(&header, "REGISTER", URI, t(0), alice), Err(DigestError::InvalidNonce));
    }

    #[test]
    fn another_instance_with_the_same_secret_accepts_the_nonce() {
        let issuer = authenticator();
        let mut verifier = authenticator();
        let (header, _) = answer(&issuer, t(0), Algorithm::Md5, "wonderland", 1);
        assert!(verifier.verify(&header, "REGISTER", URI, t(1), alice).is_ok());
    }

    #[test]
    fn uri_realm_qop_and_algorithm_policy_is_enforced() {
        let mut auth = authenticator();
        let (header, _) = answer(&auth, t(0), Algorithm::Sha256, "wonderland", 1);
        assert_eq!(auth.verify(&header, "REGISTER", "sip:other.example.com", t(1), alice), Err(DigestError::UriMismatch));
        let realm = header.replace(REALM, "evil.example.com");
        assert_eq!(
            auth.verify(&realm, "REGISTER", URI.replace(REALM, "evil.example.com").as_str(), t(1), alice),
            Err(DigestError::RealmMismatch)
        );
        let no_qop = header.replace(", qop=auth", "");
        assert_eq!(auth.verify(&no_qop, "REGISTER", URI, t(1), alice), Err(DigestError::UnsupportedQop));
        let auth_int = header.replace("qop=auth", "qop=auth-int");
        assert_eq!(auth.verify(&auth_int, "REGISTER", URI, t(1), alice), Err(DigestError::UnsupportedQop));
        let mut md5_only = DigestConfig::new(REALM);
        md5_only.algorithms = vec![Algorithm::Md5];
        let mut strict = Authenticator::new(md5_only, [7; 32]).unwrap();
        assert_eq!(strict.verify(&header, "REGISTER", URI, t(1), alice), Err(DigestError::AlgorithmNotOffered));
        let userhash = format!("{header}, userhash=true");
        assert_eq!(auth.verify(&userhash, "REGISTER", URI, t(1), alice), Err(DigestError::UserhashUnsupported));
    }

    #[test]
    fn eviction_makes_older_nonces_stale_instead_of_replayable() {
        let mut config = DigestConfig::new(REALM);
        config.replay_capacity = 2;
        let mut auth = Authenticator::new(config, [7; 32]).unwrap();
        let header_at = |auth: &Authenticator, issued: u64, nc: u32| {
            let challenge = parse_challenge(&auth.challenges(t(issued), [issued as u8; 16], false)[1]).unwrap();
            authorization(&challenge, "alice", &ha1(HashFn::Sha256, "alice", REALM, "wonderland"), "REGISTER", URI, "c", nc)
        };
        let first = header_at(&auth, 0, 1);
        auth.verify(&first, "REGISTER", URI, t(5), alice).unwrap();
        auth.verify(&header_at(&auth, 1, 1), "REGISTER", URI, t(5), alice).unwrap();
        auth.verify(&header_at(&auth, 2, 1), "REGISTER", URI, t(5), alice).unwrap();
        assert_eq!(auth.tracked_nonces(), 2);
        // The first nonce was evicted: replaying it must not pass.
        assert_eq!(auth.verify(&first, "REGISTER", URI, t(6), alice), Err(DigestError::StaleNonce));
        assert_eq!(auth.verify(&header_at(&auth, 0, 2), "REGISTER", URI, t(6), alice), Err(DigestError::StaleNonce));
    }

    #[test]
    fn expired_nonces_leave_the_replay_map() {
        let mut auth = authenticator();
        let (header, _) = answer(&auth, t(0), Algorithm::Md5, "wonderland", 1);
        auth.verify(&header, "REGISTER", URI, t(1), alice).unwrap();
        let later = Authenticator::nonce(&auth, t(400), [3; 16]);
        let challenge =
            Challenge { realm: REALM.into(), nonce: later, algorithm: Algorithm::Md5, qop_auth: true, stale: false, opaque: None };
        let fresh = authorization(&challenge, "alice", &ha1(HashFn::Md5, "alice", REALM, "wonderland"), "REGISTER", URI, "c", 1);
        auth.verify(&fresh, "REGISTER", URI, t(401), alice).unwrap();
        assert_eq!(auth.tracked_nonces(), 1);
    }

    #[test]
    fn quoted_strings_unescape_and_round_trip() {
        let c = parse_credentials(r#"Digest username="a\"b\\c", realm="r", nonce="n", uri="u", response="00", nc=0000000A"#).unwrap();
        assert_eq!(c.username, "a\"b\\c");
        assert_eq!(c.nc, Some(10));
        let header = authorization(
            &Challenge { realm: "r\"x".into(), nonce: "n".into(), algorithm: Algorithm::Md5, qop_auth: true, stale: false, opaque: None },
            "we\\ird\"name",
            "00",
            "REGISTER",
            "sip:x",
            "c",
            1,
        );
        let parsed = parse_credentials(&header).unwrap();
        assert_eq!(parsed.username, "we\\ird\"name");
        assert_eq!(parsed.realm, "r\"x");
    }

    #[test]
    fn malformed_headers_are_classified() {
        let cases: &[(&str, DigestError)] = &[
            ("Basic dXNlcjpwYXNz", DigestError::NotDigest),
            ("", DigestError::NotDigest),
            ("Digest username=\"alice", DigestError::Malformed("unterminated quoted string")),
            ("Digest username", DigestError::Malformed("expected '=' after a parameter name")),
            ("Digest =x", DigestError::Malformed("expected a parameter name")),
            ("Digest username=", DigestError::Malformed("empty parameter value")),
            ("Digest username=\"a\" realm=\"b\"", DigestError::Malformed("expected ',' between parameters")),
            ("Digest username=\"a\", username=\"b\"", DigestError::DuplicateParameter),
            ("Digest realm=\"r\", nonce=\"n\", uri=\"u\", response=\"r\"", DigestError::MissingParameter("username")),
            ("Digest username=a, realm=r, nonce=n, uri=u, response=r, nc=1", DigestError::BadNonceCount),
            ("Digest username=a, realm=r, nonce=n, uri=u, response=r, nc=0000000g", DigestError::BadNonceCount),
            ("Digest username=a, realm=r, nonce=n, uri=u, response=r, nc=00000000", DigestError::BadNonceCount),
            ("Digest username=a, realm=r, nonce=n, uri=u, response=r, nc=+0000001", DigestError::BadNonceCount),
            ("Digest username=a, realm=r, nonce=n, uri=u, response=r, algorithm=SHA-1", DigestError::AlgorithmNotOffered),
        ];
        for (header, expected) in cases {
            assert_eq!(parse_credentials(header).as_ref(), Err(expected), "{header}");
            assert!(!expected.counter_name().is_empty());
        }
        let long = format!("Digest username=\"{}\"", "a".repeat(MAX_HEADER_LEN));
        assert_eq!(parse_credentials(&long), Err(DigestError::Malformed("header too long")));
        let many = format!("Digest {}", (0..40).map(|i| format!("p{i}=1")).collect::<Vec<_>>().join(", "));
        assert_eq!(parse_credentials(&many), Err(DigestError::Malformed("too many parameters")));
    }

    #[test]
    fn response_of_the_wrong_length_or_not_hex_is_wrong() {
        let mut auth = authenticator();
        let (header, _) = answer(&auth, t(0), Algorithm::Sha256, "wonderland", 1);
        let c = parse_credentials(&header).unwrap();
        for bad in [&c.response[..32], "zz", ""] {
            let h = header.replace(&c.response, bad);
            assert_eq!(auth.verify(&h, "REGISTER", URI, t(1), alice), Err(DigestError::WrongResponse), "{bad}");
        }
    }

    #[test]
    fn invalid_config_names_the_key() {
        let mut c = DigestConfig::new("");
        assert_eq!(Authenticator::new(c.clone(), [0; 32]).err(), Some(DigestConfigError::BadRealm));
        c.realm = "r".into();
        c.nonce_ttl = Duration::ZERO;
        assert_eq!(Authenticator::new(c.clone(), [0; 32]).err(), Some(DigestConfigError::ZeroNonceTtl));
        c.nonce_ttl = Duration::from_secs(1);
        c.algorithms.clear();
        assert_eq!(Authenticator::new(c.clone(), [0; 32]).err(), Some(DigestConfigError::NoAlgorithms));
        c.algorithms = vec![Algorithm::Md5];
        c.replay_capacity = 0;
        assert_eq!(Authenticator::new(c, [0; 32]).err(), Some(DigestConfigError::ZeroReplayCapacity));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_header_values_never_panic(value in ".{0,300}") {
            let _ = parse_credentials(&value);
            let _ = parse_challenge(&value);
            let mut auth = authenticator();
            let _ = auth.verify(&value, "REGISTER", URI, t(0), alice);
        }

        #[test]
        fn digest_shaped_values_never_panic(
            params in prop::collection::vec(("[a-z]{1,9}", "[ -~]{0,20}", any::<bool>()), 0..12),
        ) {
            let body = params
                .iter()
                .map(|(k, v, quoted)| if *quoted { format!("{k}=\"{v}\"") } else { format!("{k}={v}") })
                .collect::<Vec<_>>()
                .join(", ");
            let value = format!("Digest {body}");
            let _ = parse_credentials(&value);
            let mut auth = authenticator();
            let _ = auth.verify(&value, "REGISTER", URI, t(0), alice);
        }

        #[test]
        fn mutated_valid_credentials_never_pass_unless_unchanged(pos in 0usize..400, byte in any::<u8>()) {
            let mut auth = authenticator();
            let (header, _) = answer(&auth, t(0), Algorithm::Sha256, "wonderland", 1);
            let mut bytes = header.clone().into_bytes();
            let pos = pos % bytes.len();
            bytes[pos] = byte;
            if let Ok(mutated) = String::from_utf8(bytes) {
                if let Ok(verified) = auth.verify(&mutated, "REGISTER", URI, t(1), alice) {
                    // Only harmless changes may pass: the parsed credentials are unchanged
                    // (e.g. case of a token, whitespace).
                    prop_assert_eq!(verified.username, "alice");
                    let a = parse_credentials(&mutated).unwrap();
                    let b = parse_credentials(&header).unwrap();
                    prop_assert_eq!((a.nonce, a.response.to_ascii_lowercase(), a.cnonce, a.nc), (b.nonce, b.response, b.cnonce, b.nc));
                }
            }
        }
    }

    #[test]
    fn replay_table_is_sized_once_at_start() {
        let mut auth = Authenticator::new(DigestConfig::new(REALM), [7; 32]).unwrap();
        let (seen, by_age) = (auth.seen.capacity(), auth.by_age.capacity());
        assert!(seen >= 100_000 && by_age >= 100_000, "capacity {seen} / {by_age}");
        for i in 0..2_000u32 {
            let mut random = [0u8; 16];
            random[..4].copy_from_slice(&i.to_le_bytes());
            let nonce = parse_challenge(&auth.challenges(t(0), random, false)[0]).unwrap().nonce;
            let (issued, key) = auth.check_nonce(&nonce, t(1)).unwrap();
            auth.record_nc(key, issued, 1, 1).unwrap();
        }
        assert_eq!(auth.tracked_nonces(), 2_000);
        assert_eq!((auth.seen.capacity(), auth.by_age.capacity()), (seen, by_age), "no reallocation");
    }

    #[test]
    fn prefaulting_the_replay_table_keeps_its_size_and_tracks_nothing() {
        let mut config = DigestConfig::new(REALM);
        config.replay_capacity = 1_000;
        let mut auth = Authenticator::new(config, [7; 32]).unwrap();
        let capacity = auth.seen.capacity();
        auth.prefault();
        assert_eq!((auth.tracked_nonces(), auth.seen.capacity()), (0, capacity));
        let nonce = parse_challenge(&auth.challenges(t(0), [3; 16], false)[0]).unwrap().nonce;
        let (issued, key) = auth.check_nonce(&nonce, t(1)).unwrap();
        auth.record_nc(key, issued, 1, 1).unwrap();
        assert_eq!(auth.record_nc(key, issued, 1, 1), Err(DigestError::Replay), "replay protection works after it");
    }

    #[test]
    fn a_full_replay_table_that_churns_never_grows() {
        let mut config = DigestConfig::new(REALM);
        // Nearly half the table's room (1,792 of 3,584 slots): sized for this capacity alone (the
        // old sizing: 1,792 slots), the table would be 98 % full and double at once.
        config.replay_capacity = 1_750;
        let mut auth = Authenticator::new(config, [7; 32]).unwrap();
        let capacity = auth.seen.capacity();
        // Nearly six times the table's size in fresh nonces: every one past the first 1,750
        // evicts the oldest (a removal in a full run of slots leaves a tombstone).
        for i in 0..10_000u32 {
            let mut random = [0u8; 16];
            random[..4].copy_from_slice(&i.to_le_bytes());
            // Ten nonces a second: the nonce lifetime (300 s) would hold 3,000, the table 1,750.
            let secs = u64::from(i / 10);
            let nonce = parse_challenge(&auth.challenges(t(secs), random, false)[0]).unwrap().nonce;
            let (issued, key) = auth.check_nonce(&nonce, t(secs)).unwrap();
            auth.record_nc(key, issued, 1, secs).unwrap();
        }
        assert_eq!(auth.tracked_nonces(), 1_750);
        // `capacity()` is the room left before a rehash: tombstones lower it a little, a doubling
        // would raise it to twice.
        assert!(auth.seen.capacity() <= capacity, "rehashed in place, never doubled: {} > {capacity}", auth.seen.capacity());
    }
}
