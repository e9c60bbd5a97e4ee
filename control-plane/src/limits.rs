//! Abuse limits, sans-IO: what stands between the SIP server and the scanners and password
//! guessers every public SIP port receives.
//!
//! - **Request rate per source IP** (like Kamailio's pike): a token bucket of `burst` messages
//!   refilled at `requests_per_second`. A source that empties it is banned for `ban`: everything
//!   it sends is dropped unanswered (an answer would only confirm a SIP server is here).
//! - **Password guessing**: `auth_failures_per_source` refused credentials (403) from one IP
//!   within `auth_window` ban that IP for `lockout`; `auth_failures_per_user` refused credentials
//!   for one user lock that user for `lockout` (every credential for it is refused with 403
//!   without being checked, so guessing stops paying off even from many addresses).
//! - **Scanners**: requests whose `User-Agent` contains one of `drop_user_agents`
//!   (case-insensitive) are dropped unanswered.
//!
//! Sources in `exempt` (and the configured trunks) are never limited. The tables are bounded
//! (`max_sources`, the same for users): when full, newcomers are admitted untracked (counted)
//! rather than evicting a tracked abuser; [`Limits::sweep`] frees idle entries. Time is passed in.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The limits' settings (`[limits]` in the configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Messages per second per source IP (0: no rate limit).
    pub requests_per_second: u32,
    /// Messages a source may send at once above the rate.
    pub burst: u32,
    /// How long a source that exceeded the rate is ignored.
    pub ban: Duration,
    /// Refused credentials from one IP within `auth_window` that ban it (0: off).
    pub auth_failures_per_source: u32,
    /// Refused credentials for one user within `auth_window` that lock it (0: off).
    pub auth_failures_per_user: u32,
    /// The window the failures above are counted in.
    pub auth_window: Duration,
    /// How long a source is banned or a user locked after too many failures.
    pub lockout: Duration,
    /// Sources never limited.
    pub exempt: HashSet<IpAddr>,
    /// Lower-case `User-Agent` fragments whose requests are dropped.
    pub drop_user_agents: Vec<String>,
    /// Most sources (and users) tracked at once.
    pub max_sources: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            requests_per_second: 100,
            burst: 200,
            ban: Duration::from_secs(60),
            auth_failures_per_source: 20,
            auth_failures_per_user: 50,
            auth_window: Duration::from_secs(300),
            lockout: Duration::from_secs(300),
            exempt: ["127.0.0.1", "::1"].iter().filter_map(|a| a.parse().ok()).collect(),
            drop_user_agents: DEFAULT_SCANNERS.iter().map(|s| (*s).to_owned()).collect(),
            max_sources: 100_000,
        }
    }
}

/// `User-Agent` fragments of common SIP scanners (SIPVicious and its forks, sipcli, sip-scan).
pub const DEFAULT_SCANNERS: &[&str] = &["friendly-scanner", "sipvicious", "sipcli", "sip-scan", "vaxsipuseragent"];

/// Counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LimitStats {
    /// Messages dropped because their source was over its rate or banned.
    pub rate_limited: u64,
    /// Sources banned (rate or password guessing).
    pub sources_banned: u64,
    /// Requests dropped for a scanner's User-Agent.
    pub scanners_dropped: u64,
    /// Users locked after too many refused credentials.
    pub users_locked: u64,
    /// Credentials refused because their user was locked.
    pub locked_out: u64,
    /// Sources or users admitted without tracking because the tables were full.
    pub untracked: u64,
}

#[derive(Debug)]
struct Source {
    tokens: f64,
    refilled: Instant,
    banned_until: Option<Instant>,
    failures: Failures,
}

#[derive(Debug, Default)]
struct Failures {
    count: u32,
    since: Option<Instant>,
}

impl Failures {
    /// Counts one failure at `now`; whether `threshold` is reached within `window`.
    fn add(&mut self, now: Instant, window: Duration, threshold: u32) -> bool {
        if self.since.is_none_or(|s| now.saturating_duration_since(s) > window) {
            *self = Failures { count: 0, since: Some(now) };
        }
        self.count += 1;
        threshold > 0 && self.count >= threshold
    }
}

#[derive(Debug, Default)]
struct User {
    failures: Failures,
    locked_until: Option<Instant>,
}

/// The limits' state.
#[derive(Debug)]
pub struct Limits {
    config: LimitsConfig,
    sources: HashMap<IpAddr, Source>,
    users: HashMap<String, User>,
    stats: LimitStats,
}

impl Limits {
    /// Empty tables.
    pub fn new(config: LimitsConfig) -> Self {
        Limits { config, sources: HashMap::new(), users: HashMap::new(), stats: LimitStats::default() }
    }

    /// Counters.
    pub fn stats(&self) -> LimitStats {
        self.stats
    }

    /// Whether a message from `ip` arriving at `now` may be processed (counts it against the
    /// source's rate; a source that runs out is banned).
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.config.exempt.contains(&ip) {
            return true;
        }
        let (rate, burst, ban) = (f64::from(self.config.requests_per_second), f64::from(self.config.burst.max(1)), self.config.ban);
        let Some(source) = tracked(&mut self.sources, &mut self.stats, self.config.max_sources, burst, ip, now) else {
            return true;
        };
        if let Some(until) = source.banned_until {
            if now < until {
                self.stats.rate_limited += 1;
                return false;
            }
            source.banned_until = None;
            source.tokens = burst;
            source.refilled = now;
        }
        if rate == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(source.refilled).as_secs_f64();
        source.tokens = (source.tokens + elapsed * rate).min(burst);
        source.refilled = now;
        if source.tokens >= 1.0 {
            source.tokens -= 1.0;
            return true;
        }
        source.banned_until = Some(now + ban);
        self.stats.sources_banned += 1;
        self.stats.rate_limited += 1;
        tracing::warn!(%ip, ban_s = ban.as_secs(), "source over its request rate: banned");
        false
    }

    /// Whether a request with this `User-Agent` is a scanner's (then it is counted and should be
    /// dropped).
    pub fn is_scanner(&mut self, user_agent: &str) -> bool {
        let agent = user_agent.as_bytes();
        // The fragments are lower case (config); compared without allocating per request.
        let hit = self
            .config
            .drop_user_agents
            .iter()
            .any(|s| !s.is_empty() && agent.windows(s.len()).any(|w| w.eq_ignore_ascii_case(s.as_bytes())));
        if hit {
            self.stats.scanners_dropped += 1;
        }
        hit
    }

    /// Whether `user` (`user@domain`) is locked at `now` (then its credentials are refused
    /// unchecked, counted).
    pub fn user_locked(&mut self, user: &str, now: Instant) -> bool {
        let locked = self.users.get(user).and_then(|u| u.locked_until).is_some_and(|until| now < until);
        if locked {
            self.stats.locked_out += 1;
        }
        locked
    }

    /// Credentials for `user` from `ip` were refused at `now`: counts towards banning the source
    /// and locking the user.
    pub fn auth_failed(&mut self, ip: IpAddr, user: &str, now: Instant) {
        let (window, lockout) = (self.config.auth_window, self.config.lockout);
        if !self.config.exempt.contains(&ip) {
            let (threshold, burst) = (self.config.auth_failures_per_source, f64::from(self.config.burst.max(1)));
            if let Some(source) = tracked(&mut self.sources, &mut self.stats, self.config.max_sources, burst, ip, now) {
                if source.failures.add(now, window, threshold) && source.banned_until.is_none_or(|u| u <= now) {
                    source.banned_until = Some(now + lockout);
                    self.stats.sources_banned += 1;
                    tracing::warn!(%ip, lockout_s = lockout.as_secs(), "source guessing passwords: banned");
                }
            }
        }
        let threshold = self.config.auth_failures_per_user;
        if threshold == 0 {
            return;
        }
        if !self.users.contains_key(user) && self.users.len() >= self.config.max_sources {
            self.stats.untracked += 1;
            return;
        }
        let entry = self.users.entry(user.to_owned()).or_default();
        if entry.failures.add(now, window, threshold) && entry.locked_until.is_none_or(|u| u <= now) {
            entry.locked_until = Some(now + lockout);
            self.stats.users_locked += 1;
            tracing::warn!(user, lockout_s = lockout.as_secs(), "too many refused credentials: user locked");
        }
    }

    /// Forgets sources and users with nothing pending at `now` (full bucket, no ban, no recent
    /// failures).
    pub fn sweep(&mut self, now: Instant) {
        let (window, rate, burst) =
            (self.config.auth_window, f64::from(self.config.requests_per_second), f64::from(self.config.burst.max(1)));
        let recent = |f: &Failures| f.since.is_some_and(|s| now.saturating_duration_since(s) <= window);
        self.sources.retain(|_, s| {
            let refilled = s.tokens + now.saturating_duration_since(s.refilled).as_secs_f64() * rate >= burst;
            s.banned_until.is_some_and(|u| now < u) || recent(&s.failures) || !refilled
        });
        self.users.retain(|_, u| u.locked_until.is_some_and(|until| now < until) || recent(&u.failures));
    }

    /// Sources tracked now.
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }
}

/// The entry of `ip`, made (with a full bucket) if there is room; `None` when the table is full.
fn tracked<'a>(
    sources: &'a mut HashMap<IpAddr, Source>,
    stats: &mut LimitStats,
    max: usize,
    burst: f64,
    ip: IpAddr,
    now: Instant,
) -> Option<&'a mut Source> {
    if !sources.contains_key(&ip) && sources.len() >= max {
        stats.untracked += 1;
        return None;
    }
    Some(sources.entry(ip).or_insert_with(|| Source { tokens: burst, refilled: now, banned_until: None, failures: Failures::default() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    fn limits(rate: u32, burst: u32) -> Limits {
        Limits::new(LimitsConfig { requests_per_second: rate, burst, ..LimitsConfig::default() })
    }

    #[test]
    fn a_source_over_its_rate_is_banned_for_the_ban_time_and_others_are_untouched() {
        let mut l = limits(10, 20);
        let t0 = Instant::now();
        let admitted = (0..100).filter(|_| l.admit(ip(1), t0)).count();
        assert_eq!(admitted, 20, "the burst passes, the rest is dropped");
        assert_eq!(l.stats().sources_banned, 1);
        assert!(l.admit(ip(2), t0), "another source is not affected");
        // Still banned just before the ban ends, even though the bucket would have refilled.
        assert!(!l.admit(ip(1), t0 + Duration::from_secs(59)));
        assert!(l.admit(ip(1), t0 + Duration::from_secs(60)), "the ban ends");
        assert_eq!(l.stats().rate_limited, 81);
    }

    #[test]
    fn a_source_at_its_rate_is_never_banned() {
        let mut l = limits(10, 5);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            assert!(l.admit(ip(1), t0 + Duration::from_millis(u64::from(i) * 100)), "message {i}");
        }
        assert_eq!(l.stats().sources_banned, 0);
    }

    #[test]
    fn exempt_sources_and_a_zero_rate_are_not_limited() {
        let mut l = limits(1, 1);
        let t0 = Instant::now();
        assert!((0..100).all(|_| l.admit("127.0.0.1".parse().unwrap(), t0)));
        let mut off = limits(0, 1);
        assert!((0..100).all(|_| off.admit(ip(1), t0)));
    }

    #[test]
    fn password_guessing_bans_the_source_and_locks_the_user() {
        let mut l = Limits::new(LimitsConfig { auth_failures_per_source: 3, auth_failures_per_user: 5, ..LimitsConfig::default() });
        let t0 = Instant::now();
        for _ in 0..3 {
            l.auth_failed(ip(1), "alice@sip.test", t0);
        }
        assert!(!l.admit(ip(1), t0), "3 failures from one source ban it");
        assert!(!l.user_locked("alice@sip.test", t0), "not yet locked");
        // Two more from other addresses: the user is locked, whoever asks.
        l.auth_failed(ip(2), "alice@sip.test", t0);
        l.auth_failed(ip(3), "alice@sip.test", t0);
        assert!(l.user_locked("alice@sip.test", t0 + Duration::from_secs(299)));
        assert!(!l.user_locked("bob@sip.test", t0));
        assert!(!l.user_locked("alice@sip.test", t0 + Duration::from_secs(300)), "the lock ends");
        assert_eq!((l.stats().users_locked, l.stats().sources_banned), (1, 1));
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let mut l = Limits::new(LimitsConfig { auth_failures_per_source: 3, ..LimitsConfig::default() });
        let t0 = Instant::now();
        for i in 0..10u64 {
            l.auth_failed(ip(1), "alice@sip.test", t0 + Duration::from_secs(i * 200));
        }
        assert_eq!(l.stats().sources_banned, 0);
    }

    #[test]
    fn scanners_are_recognised_by_user_agent_in_any_case() {
        let mut l = limits(10, 10);
        assert!(l.is_scanner("friendly-scanner"));
        assert!(l.is_scanner("SIPVicious 0.3.4"));
        assert!(!l.is_scanner("baresip v1.0.0 (x86_64/linux)"));
        assert_eq!(l.stats().scanners_dropped, 2);
    }

    #[test]
    fn tables_are_bounded_and_sweep_frees_idle_sources() {
        let mut l = Limits::new(LimitsConfig { max_sources: 10, ..LimitsConfig::default() });
        let t0 = Instant::now();
        for i in 0..20u8 {
            assert!(l.admit(ip(i), t0));
        }
        assert_eq!(l.tracked_sources(), 10);
        assert_eq!(l.stats().untracked, 10);
        l.sweep(t0 + Duration::from_secs(10));
        assert_eq!(l.tracked_sources(), 0, "refilled buckets are forgotten");
    }
}
