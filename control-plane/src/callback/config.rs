//! `[callback]` and `[[callback.did]]` of the configuration file:
//!
//! ```toml
//! [callback]
//! listen = "127.0.0.1:8090"       # HTTP API, webhook and web page (default: none)
//! api_tokens = ["s3cret"]         # Bearer tokens of POST /api/callback (default: none)
//! caller_id = "callback"          # who the customer sees calling (default "callback")
//! retries = 2                     # an unanswered customer is called again (default 2)
//! retry_interval_s = 60           # that far apart (default 60)
//! max_per_account = 2             # callbacks of one account at once (default 2)
//! max_jobs = 1000                 # all accounts (default 1000)
//! requests_per_minute = 10        # per account and per HTTP source (default 10)
//! first_digit_s = 15              # waiting for the destination's first digit (default 15)
//! next_digit_s = 5                # and between digits; # ends it sooner (default 5)
//! prompt_enter = "enter-number.wav"   # prompts in the media plane's prompt_dir
//! prompt_invalid = "invalid-number.wav"
//! prompt_unavailable = "not-available.wav"
//! prompt_goodbye = "goodbye.wav"
//!
//! [[callback.did]]
//! number = "4930555000"           # an access number, as dialled to us
//! mode = "missed-call"            # refused, then the caller called back; or "ivr"
//! delay_s = 10                    # missed call: after this long (default 10)
//! ```

use std::time::Duration;

use serde::Deserialize;

use super::{CallbackConfig, Did, DidMode};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCallback {
    listen: Option<String>,
    api_tokens: Option<Vec<String>>,
    caller_id: Option<String>,
    retries: Option<u32>,
    retry_interval_s: Option<u64>,
    max_per_account: Option<u32>,
    max_jobs: Option<usize>,
    requests_per_minute: Option<u32>,
    first_digit_s: Option<u64>,
    next_digit_s: Option<u64>,
    prompt_enter: Option<String>,
    prompt_invalid: Option<String>,
    prompt_unavailable: Option<String>,
    prompt_goodbye: Option<String>,
    #[serde(default)]
    did: Vec<RawDid>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDid {
    number: String,
    mode: String,
    delay_s: Option<u64>,
}

fn wav(key: &'static str, value: Option<String>, default: String) -> Result<String, (&'static str, String)> {
    let v = value.unwrap_or(default);
    let plain = !v.is_empty() && !v.contains('/') && !v.starts_with('.') && v.ends_with(".wav");
    if plain {
        Ok(v)
    } else {
        Err((key, format!("{v:?} is not a .wav file name (no directories)")))
    }
}

impl RawCallback {
    /// The settings, or the key that is wrong and why.
    pub(crate) fn build(self) -> Result<CallbackConfig, (&'static str, String)> {
        let d = CallbackConfig::default();
        let listen = match self.listen.as_deref() {
            None | Some("") => None,
            Some(l) => Some(l.parse().map_err(|_| ("callback.listen", format!("{l:?} is not an address like 127.0.0.1:8090")))?),
        };
        let api_tokens = self.api_tokens.unwrap_or_default();
        if api_tokens.iter().any(|t| t.len() < 16) {
            return Err(("callback.api_tokens", "tokens must be at least 16 characters".into()));
        }
        let caller_id = self.caller_id.unwrap_or(d.caller_id);
        if caller_id.is_empty()
            || caller_id.len() > 32
            || !caller_id.trim_start_matches('+').chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Err(("callback.caller_id", format!("{caller_id:?} is not a user name or number")));
        }
        let seconds = |key: &'static str, v: Option<u64>, default: Duration, max: u64| match v {
            None => Ok(default),
            Some(s) if (1..=max).contains(&s) => Ok(Duration::from_secs(s)),
            Some(s) => Err((key, format!("{s} is not 1-{max}"))),
        };
        let mut dids = Vec::new();
        for raw in self.did {
            let number = raw.number.trim_start_matches('+').to_owned();
            if number.is_empty() || number.len() > 24 || !number.chars().all(|c| c.is_ascii_digit()) {
                return Err(("callback.did.number", format!("{:?} is not a number", raw.number)));
            }
            let mode = match raw.mode.as_str() {
                "missed-call" => {
                    DidMode::MissedCall { delay: seconds("callback.did.delay_s", raw.delay_s, Duration::from_secs(10), 3600)? }
                }
                "ivr" => DidMode::Ivr,
                other => return Err(("callback.did.mode", format!("{other:?} is not missed-call or ivr"))),
            };
            dids.push(Did { number, mode });
        }
        Ok(CallbackConfig {
            listen,
            api_tokens,
            caller_id,
            retries: self.retries.unwrap_or(d.retries).min(10),
            retry_interval: seconds("callback.retry_interval_s", self.retry_interval_s, d.retry_interval, 86_400)?,
            max_per_account: self.max_per_account.unwrap_or(d.max_per_account).max(1),
            max_jobs: self.max_jobs.unwrap_or(d.max_jobs).clamp(1, 1_000_000),
            requests_per_minute: self.requests_per_minute.unwrap_or(d.requests_per_minute).max(1),
            first_digit: seconds("callback.first_digit_s", self.first_digit_s, d.first_digit, 120)?,
            next_digit: seconds("callback.next_digit_s", self.next_digit_s, d.next_digit, 60)?,
            prompt_enter: wav("callback.prompt_enter", self.prompt_enter, d.prompt_enter)?,
            prompt_invalid: wav("callback.prompt_invalid", self.prompt_invalid, d.prompt_invalid)?,
            prompt_unavailable: wav("callback.prompt_unavailable", self.prompt_unavailable, d.prompt_unavailable)?,
            prompt_goodbye: wav("callback.prompt_goodbye", self.prompt_goodbye, d.prompt_goodbye)?,
            dids,
        })
    }
}
