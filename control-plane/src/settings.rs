//! Per-subscriber call settings: forwarding, find-me, screening, the E.164 number and the
//! operator's PSTN fallback. Kept in the store as one JSON document per subscriber, edited with
//! `control-plane settings set alice@sip.test key=value …` (and the same keys over the admin API),
//! validated here so that a wrong value is refused naming its key.
//!
//! | key | value | meaning |
//! |---|---|---|
//! | `e164` | `+4930123456` | the subscriber's public number (PSTN fallback target, caller ID) |
//! | `forward.always` | target | every call goes there (RFC 5359 §2.7) |
//! | `forward.busy` | target | calls that find the subscriber busy (§2.8) |
//! | `forward.no_answer` | target | calls not answered in `forward.no_answer_s` (§2.9) |
//! | `forward.no_answer_s` | 1‥600 | ring time before `forward.no_answer` (default: the server's) |
//! | `forward.unreachable` | target | calls while no contact is registered or every contact fails |
//! | `find_me` | targets, comma-separated | also ring these (RFC 5359 §2.12) after the contacts |
//! | `find_me.mode` | `sequential` \| `parallel` | one after another, or all with the contacts |
//! | `find_me.branch_s` | 1‥600 | sequential: ring time of each (default 15) |
//! | `screen.reject` | caller patterns | incoming calls from these are refused (§2.13) |
//! | `screen.allow` | caller patterns | when set, only these may call |
//! | `screen.status` | `403` \| `603` | what refused callers get (default 603) |
//! | `screen.announcement` | `name.wav` | refused callers hear this instead (a WAV in the media plane's prompt_dir, played once after the media plane answers; then the call is hung up) |
//! | `block` | number prefixes | outgoing calls to these are refused with 403 (§2.14) |
//! | `pstn_fallback` | `true` \| `false` | unanswered, busy or unregistered: out to `e164` through the trunks |
//! | `pstn_fallback.after_s` | 1‥600 | ring time of the app before the fallback (default 20) |
//! | `pickup_group` | group name | subscribers of one group may pick up each other's ringing calls (`*8`, RFC 5359 §2.16); a subscriber's own calls may be picked up by name (`*8bob`) only from inside its group when it has one |
//! | `account` | account name | the billing account (`control-plane account …`) that pays for its calls out through trunks, and for calls forwarded from it to numbers; none: not billed |
//! | `music_on_hold` | `name.wav` | what the other party hears while this subscriber holds it (a WAV in the media plane's prompt_dir; default: the server's `[media] music_on_hold`) |
//!
//! A *target* is a local user (`carol`), a number the `[[route]]`s take (`+4930999`), or a SIP URI
//! of a local domain (`sip:carol@sip.test`). A caller *pattern* is a user or number, with `*` at
//! its end for a prefix (`+1900*`), or `anonymous`.

use serde::{Deserialize, Serialize};

/// Longest list a setting takes (find-me targets, patterns, prefixes).
pub const MAX_LIST: usize = 32;

/// One subscriber's settings; every field is optional, the default is "off".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Public number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e164: Option<String>,
    /// Call forwarding.
    #[serde(skip_serializing_if = "Forwarding::is_empty")]
    pub forward: Forwarding,
    /// Find-me targets.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub find_me: Vec<String>,
    /// Rung in parallel with the contacts rather than after them, one by one.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub find_me_parallel: bool,
    /// Sequential find-me: ring time of each target, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub find_me_branch_s: Option<u32>,
    /// Incoming screening.
    #[serde(skip_serializing_if = "Screening::is_empty")]
    pub screen: Screening,
    /// Outgoing screening: blocked destination prefixes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub block: Vec<String>,
    /// The operator's call mode: the app when it answers, else the PSTN number.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pstn_fallback: bool,
    /// Ring time of the app before the PSTN fallback, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pstn_fallback_after_s: Option<u32>,
    /// What the party this subscriber holds hears.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub music_on_hold: Option<String>,
    /// The billing account its calls out through trunks are paid from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Call pickup group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pickup_group: Option<String>,
}

/// Call forwarding targets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Forwarding {
    /// Unconditional.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub always: Option<String>,
    /// On busy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busy: Option<String>,
    /// On no answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_answer: Option<String>,
    /// Ring time before forwarding on no answer, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_answer_s: Option<u32>,
    /// While unregistered or unreachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreachable: Option<String>,
}

impl Forwarding {
    fn is_empty(&self) -> bool {
        *self == Forwarding::default()
    }
}

/// Incoming screening rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Screening {
    /// Callers refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reject: Vec<String>,
    /// When not empty, the only callers let through.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Status refused callers get: 403 or 603 (default 603 Decline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What refused callers hear instead of a status: a WAV in the media plane's prompt_dir,
    /// played once after the media plane answers, then the call is hung up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announcement: Option<String>,
}

impl Screening {
    fn is_empty(&self) -> bool {
        *self == Screening::default()
    }

    /// Whether a caller (user part or number; `anonymous` for a withheld one) is refused.
    pub fn refuses(&self, caller: &str) -> bool {
        if self.reject.iter().any(|p| matches_pattern(p, caller)) {
            return true;
        }
        !self.allow.is_empty() && !self.allow.iter().any(|p| matches_pattern(p, caller))
    }

    /// What a refused caller gets.
    pub fn refusal_status(&self) -> u16 {
        self.status.unwrap_or(603)
    }
}

impl Settings {
    /// Whether outgoing screening blocks calls to `dialled` (a `block` entry is a prefix, with
    /// or without a trailing `*`).
    pub fn blocks(&self, dialled: &str) -> bool {
        self.block.iter().any(|p| matches_pattern(&format!("{}*", p.trim_end_matches('*')), dialled))
    }
}

/// `pattern` (exact, or a prefix ending in `*`; any case) against `value`.
pub fn matches_pattern(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.len() >= prefix.len() && value.get(..prefix.len()).is_some_and(|v| v.eq_ignore_ascii_case(prefix)),
        None => pattern.eq_ignore_ascii_case(value),
    }
}

/// A setting refused, naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SettingError {
    /// The key (`forward.busy`).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

fn refuse(key: &str, message: impl Into<String>) -> SettingError {
    SettingError { key: key.to_owned(), message: message.into() }
}

/// Every key [`Settings::set`] takes.
pub const KEYS: &[&str] = &[
    "e164",
    "forward.always",
    "forward.busy",
    "forward.no_answer",
    "forward.no_answer_s",
    "forward.unreachable",
    "find_me",
    "find_me.mode",
    "find_me.branch_s",
    "screen.reject",
    "screen.allow",
    "screen.status",
    "screen.announcement",
    "block",
    "pstn_fallback",
    "pstn_fallback.after_s",
    "music_on_hold",
    "account",
    "pickup_group",
];

impl Settings {
    /// Sets `key` to `value`; an empty value clears it. A refused value changes nothing.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), SettingError> {
        let mut next = self.clone();
        next.apply(key, value)?;
        next.check()?;
        *self = next;
        Ok(())
    }

    fn apply(&mut self, key: &str, value: &str) -> Result<(), SettingError> {
        let value = value.trim();
        let clear = value.is_empty();
        match key {
            "e164" => self.e164 = if clear { None } else { Some(e164(key, value)?) },
            "forward.always" => self.forward.always = optional(clear, || target(key, value))?,
            "forward.busy" => self.forward.busy = optional(clear, || target(key, value))?,
            "forward.no_answer" => self.forward.no_answer = optional(clear, || target(key, value))?,
            "forward.no_answer_s" => self.forward.no_answer_s = optional(clear, || seconds(key, value))?,
            "forward.unreachable" => self.forward.unreachable = optional(clear, || target(key, value))?,
            "find_me" => self.find_me = list(key, value, target)?,
            "find_me.mode" => {
                self.find_me_parallel = match value {
                    "" | "sequential" => false,
                    "parallel" => true,
                    other => return Err(refuse(key, format!("{other:?} is not sequential or parallel"))),
                }
            }
            "find_me.branch_s" => self.find_me_branch_s = optional(clear, || seconds(key, value))?,
            "screen.reject" => self.screen.reject = list(key, value, pattern)?,
            "screen.allow" => self.screen.allow = list(key, value, pattern)?,
            "screen.status" => {
                self.screen.status = match value {
                    "" => None,
                    "403" => Some(403),
                    "603" => Some(603),
                    other => return Err(refuse(key, format!("{other:?} is not 403 or 603"))),
                }
            }
            "screen.announcement" => {
                self.screen.announcement = match value {
                    "" => None,
                    file if is_wav_name(file) => Some(file.to_owned()),
                    file => return Err(refuse(key, format!("{file:?} is not a .wav file name (no directories)"))),
                }
            }
            "block" => self.block = list(key, value, prefix)?,
            "pstn_fallback" => {
                self.pstn_fallback = match value {
                    "" | "false" | "off" => false,
                    "true" | "on" => true,
                    other => return Err(refuse(key, format!("{other:?} is not true or false"))),
                }
            }
            "pstn_fallback.after_s" => self.pstn_fallback_after_s = optional(clear, || seconds(key, value))?,
            "music_on_hold" => {
                self.music_on_hold = match value {
                    "" => None,
                    file if is_wav_name(file) => Some(file.to_owned()),
                    file => return Err(refuse(key, format!("{file:?} is not a .wav file name (no directories)"))),
                }
            }
            "account" => {
                self.account = match value {
                    "" => None,
                    id => {
                        crate::billing::prepaid::check_id(id).map_err(|e| refuse(key, e.why))?;
                        Some(id.to_owned())
                    }
                }
            }
            "pickup_group" => self.pickup_group = optional(clear, || group_name(key, value))?,
            other => return Err(refuse(other, format!("unknown key; keys are {}", KEYS.join(", ")))),
        }
        Ok(())
    }

    /// Checks the settings as a whole (a document read from JSON, or after a change).
    pub fn check(&self) -> Result<(), SettingError> {
        if let Some(n) = &self.e164 {
            e164("e164", n)?;
        }
        for (key, value) in [
            ("forward.always", &self.forward.always),
            ("forward.busy", &self.forward.busy),
            ("forward.no_answer", &self.forward.no_answer),
            ("forward.unreachable", &self.forward.unreachable),
        ] {
            if let Some(v) = value {
                target(key, v)?;
            }
        }
        for (key, value) in [
            ("forward.no_answer_s", self.forward.no_answer_s),
            ("find_me.branch_s", self.find_me_branch_s),
            ("pstn_fallback.after_s", self.pstn_fallback_after_s),
        ] {
            if let Some(v) = value {
                seconds(key, &v.to_string())?;
            }
        }
        for (key, items) in [
            ("find_me", &self.find_me),
            ("screen.reject", &self.screen.reject),
            ("screen.allow", &self.screen.allow),
            ("block", &self.block),
        ] {
            if items.len() > MAX_LIST {
                return Err(refuse(key, format!("at most {MAX_LIST} entries")));
            }
        }
        for t in &self.find_me {
            target("find_me", t)?;
        }
        if let Some(s) = self.screen.status {
            if s != 403 && s != 603 {
                return Err(refuse("screen.status", format!("{s} is not 403 or 603")));
            }
        }
        if self.music_on_hold.as_deref().is_some_and(|f| !is_wav_name(f)) {
            return Err(refuse("music_on_hold", "not a .wav file name (no directories)"));
        }
        if self.screen.announcement.as_deref().is_some_and(|f| !is_wav_name(f)) {
            return Err(refuse("screen.announcement", "not a .wav file name (no directories)"));
        }
        if let Some(id) = &self.account {
            crate::billing::prepaid::check_id(id).map_err(|e| refuse("account", e.why))?;
        }
        if let Some(group) = &self.pickup_group {
            group_name("pickup_group", group)?;
        }
        if self.pstn_fallback && self.e164.is_none() {
            return Err(refuse("pstn_fallback", "needs e164, the number to fall back to"));
        }
        Ok(())
    }

    /// The settings as JSON (what the store keeps and `settings show` prints).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_owned())
    }

    /// Settings from JSON, checked.
    pub fn from_json(text: &str) -> Result<Settings, SettingError> {
        let settings: Settings = serde_json::from_str(text).map_err(|e| refuse("settings", e.to_string()))?;
        settings.check()?;
        Ok(settings)
    }
}

/// A file name the media plane's player takes from its prompt_dir: letters, digits, `-_.`,
/// ending in `.wav`, no directories.
pub fn is_wav_name(name: &str) -> bool {
    name.len() <= 64
        && name.len() > 4
        && name.ends_with(".wav")
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn optional<T>(clear: bool, parse: impl FnOnce() -> Result<T, SettingError>) -> Result<Option<T>, SettingError> {
    if clear {
        Ok(None)
    } else {
        parse().map(Some)
    }
}

fn list(key: &str, value: &str, item: fn(&str, &str) -> Result<String, SettingError>) -> Result<Vec<String>, SettingError> {
    let items: Vec<String> = value.split(',').map(str::trim).filter(|v| !v.is_empty()).map(|v| item(key, v)).collect::<Result<_, _>>()?;
    if items.len() > MAX_LIST {
        return Err(refuse(key, format!("at most {MAX_LIST} entries")));
    }
    Ok(items)
}

fn e164(key: &str, value: &str) -> Result<String, SettingError> {
    let digits = value.strip_prefix('+').ok_or_else(|| refuse(key, format!("{value:?} does not start with +")))?;
    if digits.is_empty() || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refuse(key, format!("{value:?} is not + and 1 to 15 digits")));
    }
    Ok(value.to_owned())
}

fn seconds(key: &str, value: &str) -> Result<u32, SettingError> {
    match value.parse::<u32>() {
        Ok(s) if (1..=600).contains(&s) => Ok(s),
        _ => Err(refuse(key, format!("{value:?} is not 1 to 600 seconds"))),
    }
}

/// A pickup group's name: 1 to 32 letters, digits, `-`, `_` or `.`.
fn group_name(key: &str, value: &str) -> Result<String, SettingError> {
    if !value.is_empty() && value.len() <= 32 && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
        Ok(value.to_owned())
    } else {
        Err(refuse(key, format!("{value:?} is not a group name (1 to 32 letters, digits, -_.)")))
    }
}

/// A forwarding or find-me target: a user or number (letters, digits, `+-._`), or a sip: URI.
fn target(key: &str, value: &str) -> Result<String, SettingError> {
    let ok = if let Some(uri) = value.strip_prefix("sip:") {
        rsip::Uri::try_from(value).is_ok() && uri.contains('@')
    } else {
        !value.is_empty() && value.len() <= 64 && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-._".contains(&b))
    };
    if ok {
        Ok(value.to_owned())
    } else {
        Err(refuse(key, format!("{value:?} is not a user, a number or a sip:user@domain URI")))
    }
}

fn pattern(key: &str, value: &str) -> Result<String, SettingError> {
    let body = value.strip_suffix('*').unwrap_or(value);
    if value.len() <= 64 && !body.contains('*') && body.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-._".contains(&b)) {
        Ok(value.to_owned())
    } else {
        Err(refuse(key, format!("{value:?} is not a user or number, with an optional * at its end")))
    }
}

fn prefix(key: &str, value: &str) -> Result<String, SettingError> {
    if value.len() <= 32 && value.bytes().all(|b| b.is_ascii_digit() || b == b'+' || b == b'*' || b == b'#') {
        Ok(value.to_owned())
    } else {
        Err(refuse(key, format!("{value:?} is not a number prefix")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_set_and_clear_and_the_document_round_trips() {
        let mut s = Settings::default();
        s.set("forward.busy", "sip:voicemail@sip.test").expect("busy");
        s.set("forward.no_answer", "carol").expect("no answer");
        s.set("forward.no_answer_s", "12").expect("seconds");
        s.set("e164", "+4930123456").expect("e164");
        s.set("pstn_fallback", "true").expect("fallback");
        s.set("find_me", "carol, +4930999").expect("find me");
        s.set("screen.reject", "+1900*,anonymous").expect("reject");
        s.set("block", "00,+882").expect("block");
        s.set("music_on_hold", "jazz-loop.wav").expect("music");
        s.set("screen.announcement", "not-available.wav").expect("announcement");
        s.set("pickup_group", "sales-2").expect("group");
        assert_eq!(s.pickup_group.as_deref(), Some("sales-2"));
        assert_eq!(s.find_me, vec!["carol", "+4930999"]);
        let back = Settings::from_json(&s.to_json()).expect("round trip");
        assert_eq!(back, s);
        s.set("forward.busy", "").expect("clear");
        assert_eq!(s.forward.busy, None);
        assert_eq!(Settings::from_json("{}").expect("empty"), Settings::default());
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        let mut s = Settings::default();
        assert_eq!(s.set("forward.no_answer_s", "0").unwrap_err().key, "forward.no_answer_s");
        assert_eq!(s.set("forward.busy", "sip:nobody").unwrap_err().key, "forward.busy");
        assert_eq!(s.set("e164", "4930").unwrap_err().key, "e164");
        assert_eq!(s.set("screen.status", "486").unwrap_err().key, "screen.status");
        assert_eq!(s.set("screen.announcement", "../x.wav").unwrap_err().key, "screen.announcement");

        assert_eq!(s.set("screen.reject", "a*b").unwrap_err().key, "screen.reject");
        assert_eq!(s.set("pstn_fallback", "true").unwrap_err().key, "pstn_fallback", "needs e164");
        assert_eq!(s.set("colour", "blue").unwrap_err().key, "colour");
        assert_eq!(s.set("music_on_hold", "../etc/passwd.wav").unwrap_err().key, "music_on_hold");
        assert_eq!(s.set("music_on_hold", "jazz.mp3").unwrap_err().key, "music_on_hold");
        assert_eq!(s.set("pickup_group", "sales floor").unwrap_err().key, "pickup_group");
        assert_eq!(Settings::from_json("{\"colour\":1}").unwrap_err().key, "settings");
        let many = vec!["a"; MAX_LIST + 1].join(",");
        assert_eq!(s.set("find_me", &many).unwrap_err().key, "find_me");
        assert_eq!(s, Settings::default(), "a refused value changes nothing that was checked");
    }

    #[test]
    fn screening_matches_exact_prefix_and_allow_lists() {
        let mut s = Screening { reject: vec!["+1900*".into(), "Anonymous".into()], ..Screening::default() };
        assert!(s.refuses("+19005551234"));
        assert!(s.refuses("anonymous"));
        assert!(!s.refuses("+4930123"));
        s.allow = vec!["alice".into(), "+4930*".into()];
        assert!(!s.refuses("alice"));
        assert!(!s.refuses("+4930123"));
        assert!(s.refuses("bob"));
        assert_eq!(s.refusal_status(), 603);
    }
}
