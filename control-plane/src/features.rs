//! Feature codes and park orbits (RFC 5359 §2.15 call park, §2.16 call pickup): what a dialled
//! number means before routing sees it. Configured in `[features]`:
//!
//! ```toml
//! [features]
//! pickup = "*8"            # "*8" picks up the oldest call ringing a subscriber of the caller's
//!                          # pickup_group; "*8bob" (or "*8" and a number) the call ringing bob;
//!                          # "" turns pickup off (default "*8")
//! park_orbits = "700-719"  # park orbits: a REFER to one (or to "park": the first free one)
//!                          # parks the other party, who hears music on hold; dialling the orbit
//!                          # takes the call back; "" turns parking off (default "700-719")
//! park_timeout_s = 300     # a parked call nobody takes back rings its parker after this long
//!                          # (it ends if the parker does not answer); 0: it waits until its
//!                          # party hangs up (default 300)
//! conference = "conf"      # conference rooms in the media plane: "conf-NAME" is room NAME
//!                          # (made when its first party arrives, gone when its last leaves),
//!                          # "conf" a new room of its own; "" turns them off (default "conf")
//! ```

use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;

/// `[features]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeatures {
    pickup: Option<String>,
    park_orbits: Option<String>,
    park_timeout_s: Option<u64>,
    conference: Option<String>,
}

/// Feature codes and park orbits, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    /// The pickup code (`*8`); `None`: off.
    pub pickup: Option<String>,
    /// Park orbits, first and last (inclusive); `None`: off.
    pub park_orbits: Option<(u32, u32)>,
    /// A parked call rings its parker back after this long; `None`: never.
    pub park_timeout: Option<Duration>,
    /// The conference prefix (`conf`); `None`: off.
    pub conference: Option<String>,
}

impl Default for Features {
    fn default() -> Self {
        Features {
            pickup: Some("*8".into()),
            park_orbits: Some((700, 719)),
            park_timeout: Some(Duration::from_secs(300)),
            conference: Some("conf".into()),
        }
    }
}

/// Most orbits a server keeps.
const MAX_ORBITS: u32 = 1000;

/// What a dialled user part asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeatureCall {
    /// Pick up a call ringing in the caller's pickup group.
    GroupPickup,
    /// Pick up the call ringing this user.
    DirectedPickup(String),
    /// A park orbit: take back the call parked there.
    Orbit(String),
    /// A conference room (its full name, `conf-NAME`), or `None`: a new room.
    Conference(Option<String>),
}

impl Features {
    /// From `[features]`; errors name the key.
    pub fn from_raw(raw: RawFeatures) -> Result<Features, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid { key: format!("features.{key}"), message };
        let pickup = match raw.pickup.as_deref() {
            None => Some("*8".to_owned()),
            Some("") => None,
            Some(code) if code.len() <= 8 && code.bytes().all(|b| b.is_ascii_digit() || b == b'*' || b == b'#') => Some(code.to_owned()),
            Some(code) => return Err(invalid("pickup", format!("{code:?} is not a feature code (up to 8 of 0-9, *, #)"))),
        };
        let park_orbits = match raw.park_orbits.as_deref() {
            None => Some((700, 719)),
            Some("") => None,
            Some(range) => {
                let (first, last) = range.split_once('-').unwrap_or((range, range));
                match (first.trim().parse::<u32>(), last.trim().parse::<u32>()) {
                    (Ok(first), Ok(last)) if first <= last && last - first < MAX_ORBITS => Some((first, last)),
                    _ => {
                        return Err(invalid(
                            "park_orbits",
                            format!("{range:?} is not a range of numbers such as \"700-719\" (at most {MAX_ORBITS})"),
                        ))
                    }
                }
            }
        };
        let park_timeout = match raw.park_timeout_s {
            None => Some(Duration::from_secs(300)),
            Some(0) => None,
            Some(s) if s <= 3600 => Some(Duration::from_secs(s)),
            Some(s) => return Err(invalid("park_timeout_s", format!("{s} is more than 3600"))),
        };
        let conference = match raw.conference.as_deref() {
            None => Some("conf".to_owned()),
            Some("") => None,
            Some(p) if p.len() <= 16 && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'*' || b == b'#') => Some(p.to_owned()),
            Some(p) => return Err(invalid("conference", format!("{p:?} is not a prefix (up to 16 letters, digits, * or #)"))),
        };
        Ok(Features { pickup, park_orbits, park_timeout, conference })
    }

    /// What dialling `user` (a Request-URI's user part) asks for, if a feature.
    pub fn dialled(&self, user: &str) -> Option<FeatureCall> {
        if let Some(rest) = self.pickup.as_deref().and_then(|code| user.strip_prefix(code)) {
            return Some(if rest.is_empty() { FeatureCall::GroupPickup } else { FeatureCall::DirectedPickup(rest.to_owned()) });
        }
        if let Some(room) = self.room(user) {
            return Some(FeatureCall::Conference(room));
        }
        self.orbit(user).map(FeatureCall::Orbit)
    }

    /// `user` as a conference room: `Some(Some(room))` for `conf-NAME` (NAME: 1 to 32 letters,
    /// digits, `-_.`), `Some(None)` for the prefix alone (a new room), `None`: not a room.
    pub fn room(&self, user: &str) -> Option<Option<String>> {
        let prefix = self.conference.as_deref()?;
        let rest = user.strip_prefix(prefix)?;
        if rest.is_empty() {
            return Some(None);
        }
        let name = rest.strip_prefix('-')?;
        let ok = !name.is_empty() && name.len() <= 32 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        ok.then(|| Some(user.to_owned()))
    }

    /// `target` (a user part) as a park orbit, if it is one.
    pub fn orbit(&self, target: &str) -> Option<String> {
        let (first, last) = self.park_orbits?;
        let n: u32 = target.parse().ok().filter(|_| !target.starts_with('+') && !target.starts_with('0'))?;
        (first..=last).contains(&n).then(|| n.to_string())
    }

    /// Where a REFER to `target` parks its call: that orbit, or for `park` the first one
    /// `taken` does not hold. `None`: not a park request. `Some(Err(()))`: every orbit is taken.
    pub fn park_target(&self, target: &str, taken: impl Fn(&str) -> bool) -> Option<Result<String, ()>> {
        let (first, last) = self.park_orbits?;
        if target.eq_ignore_ascii_case("park") {
            return Some((first..=last).map(|n| n.to_string()).find(|o| !taken(o)).ok_or(()));
        }
        self.orbit(target).map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Features, ConfigError> {
        let raw: RawFeatures = toml::from_str(text).expect("toml");
        Features::from_raw(raw)
    }

    #[test]
    fn defaults_are_star_8_and_orbits_700_to_719_for_five_minutes() {
        assert_eq!(parse("").expect("ok"), Features::default());
        let f = Features::default();
        assert_eq!(f.dialled("*8"), Some(FeatureCall::GroupPickup));
        assert_eq!(f.dialled("*8bob"), Some(FeatureCall::DirectedPickup("bob".into())));
        assert_eq!(f.dialled("705"), Some(FeatureCall::Orbit("705".into())));
        assert_eq!(f.dialled("720"), None);
        assert_eq!(f.dialled("0705"), None, "a number with a leading zero is a number, not an orbit");
        assert_eq!(f.dialled("bob"), None);
        assert_eq!(f.dialled("conf"), Some(FeatureCall::Conference(None)));
        assert_eq!(f.dialled("conf-sales"), Some(FeatureCall::Conference(Some("conf-sales".into()))));
        assert_eq!(f.dialled("conf-a b"), None);
        assert_eq!(f.dialled("confident"), None, "the prefix, then a dash");
    }

    #[test]
    fn park_takes_the_named_orbit_or_the_first_free_one() {
        let f = parse("park_orbits = \"70-72\"").expect("ok");
        assert_eq!(f.park_target("71", |_| false), Some(Ok("71".into())));
        assert_eq!(f.park_target("park", |o| o == "70"), Some(Ok("71".into())));
        assert_eq!(f.park_target("PARK", |_| true), Some(Err(())));
        assert_eq!(f.park_target("carol", |_| false), None);
    }

    #[test]
    fn features_can_be_turned_off_and_bad_values_name_their_key() {
        let off = parse("pickup = \"\"\npark_orbits = \"\"\npark_timeout_s = 0\nconference = \"\"").expect("ok");
        assert_eq!(off.dialled("conf-x"), None);
        assert_eq!(off.dialled("*8"), None);
        assert_eq!(off.park_target("park", |_| false), None);
        assert_eq!(off.park_timeout, None);
        for (text, key) in [
            ("pickup = \"pick\"", "features.pickup"),
            ("park_orbits = \"9-1\"", "features.park_orbits"),
            ("park_orbits = \"1-5000\"", "features.park_orbits"),
            ("park_timeout_s = 99999", "features.park_timeout_s"),
        ] {
            match parse(text) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
