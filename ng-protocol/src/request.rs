//! An ng request dictionary read into what the media plane acts on. Pure: no I/O, no state.
//!
//! Keys and flags follow rtpengine's ng protocol as Kamailio's and OpenSIPS's rtpengine modules
//! send them: the module turns `rtpengine_manage("replace-origin codec-strip=PCMA ICE=remove
//! SIP-source-address")` into `replace: [origin]`, `codec: {strip: [PCMA]}`, `ICE: remove` and
//! `flags: [SIP-source-address]`. Flags the media plane does not act on are ignored, as rtpengine
//! ignores flags it does not know (the compatibility table in `docs/ng-protocol.md` says which).

use std::net::IpAddr;

use super::bencode::Value;

/// The commands the media plane answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Ping,
    Offer,
    Answer,
    Delete,
    Query,
    List,
    Statistics,
    PlayMedia,
    StopMedia,
    PlayDtmf,
    StartRecording,
    StopRecording,
}

impl Command {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::Offer => "offer",
            Self::Answer => "answer",
            Self::Delete => "delete",
            Self::Query => "query",
            Self::List => "list",
            Self::Statistics => "statistics",
            Self::PlayMedia => "play media",
            Self::StopMedia => "stop media",
            Self::PlayDtmf => "play DTMF",
            Self::StartRecording => "start recording",
            Self::StopRecording => "stop recording",
        }
    }
}

/// Why a request cannot be carried out; the text is the `error-reason` of the reply (rtpengine's
/// wording where it has one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("Could not decode dictionary: the message is not a dictionary")]
    NotDictionary,
    #[error("No command given")]
    NoCommand,
    #[error("Unrecognized command: {0:?}")]
    UnknownCommand(String),
    #[error("No call-id in message")]
    NoCallId,
    #[error("No from-tag in message")]
    NoFromTag,
    #[error("No to-tag in message")]
    NoToTag,
    #[error("No SDP body in message")]
    NoSdp,
    #[error("{key}: {why}")]
    BadValue { key: &'static str, why: String },
}

/// rtpengine's codec manipulations (`codec: {strip: [..], offer: [..], ...}`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodecFlags {
    pub strip: Vec<String>,
    /// `offer` and `except`: kept when `strip` removes them.
    pub keep: Vec<String>,
    pub transcode: Vec<String>,
    pub mask: Vec<String>,
}

/// The flags of an offer or answer the media plane acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    /// `SIP-source-address`: media goes to the address the SIP message came from, not the SDP's.
    pub sip_source_address: bool,
    /// `asymmetric` (no latching) was asked for; the media plane's legs latch all the same.
    pub asymmetric: bool,
    /// `ICE: remove` or absent (the media plane never offers ICE); `force` is refused.
    pub ice_force: bool,
    pub codec: CodecFlags,
    /// `transport-protocol` (RTP/AVP, RTP/SAVP, RTP/AVPF, RTP/SAVPF); empty keeps the offer's.
    pub transport_protocol: String,
    /// `SDES: [off]` / `no-SDES`: no SDES keys towards the answerer. The media plane offers SRTP
    /// only when `transport-protocol` asks for it, so this changes nothing and is accepted.
    pub sdes_off: bool,
    /// `label`: a name for the offerer's side of the call, shown by `query`.
    pub label: Option<String>,
    /// `record-call: yes` / `record-call` flag: record the call (from its answer on).
    pub record_call: bool,
}

/// One request, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    pub call_id: String,
    pub from_tag: String,
    pub to_tag: Option<String>,
    pub via_branch: Option<String>,
    pub sdp: Option<String>,
    /// The address the SIP message came from (`received-from: [IP4, 192.0.2.1]`).
    pub received_from: Option<IpAddr>,
    /// `supports: [load limit]`: a request refused for load gets `result: load limit`, so the
    /// client tries another media plane.
    pub load_limit: bool,
    pub flags: Flags,
    /// `list`'s `limit` (default 32).
    pub limit: usize,
    /// `delete`'s `fatal` flag: an unknown call is an error (else a warning).
    pub fatal: bool,
    /// `play media`, `stop media`, `play DTMF`: to (or from) every party (`all` flag) rather than
    /// the one `from-tag` names.
    pub all: bool,
    /// `play media`'s `file` (a path under the media plane's prompt directory) and `repeat-times`.
    pub file: Option<String>,
    pub repeat_times: i64,
    /// `play DTMF`'s `code` (or `digit`) as a digit, `duration` and `pause` (ms; 0: default).
    pub digit: Option<char>,
    pub duration_ms: u32,
    pub pause_ms: u32,
}

/// The DTMF digits by event code (RFC 4733: 0-9, `*`, `#`, A-D).
const DIGITS: &[u8; 16] = b"0123456789*#ABCD";

/// Default and largest `limit` of `list`.
pub const LIST_DEFAULT: usize = 32;
pub const LIST_MAX: usize = 10_000;

/// Longest call-id, tag, label or via-branch taken (SIP allows long ones; these bound memory).
const MAX_ID: usize = 256;

impl Request {
    /// Reads a decoded ng message.
    pub fn parse(msg: &Value) -> Result<Self, RequestError> {
        let Value::Dict(_) = msg else { return Err(RequestError::NotDictionary) };
        let command = match msg.get("command") {
            None => return Err(RequestError::NoCommand),
            Some(v) => match v.as_str() {
                Some("ping") => Command::Ping,
                Some("offer") => Command::Offer,
                Some("answer") => Command::Answer,
                Some("delete") => Command::Delete,
                Some("query") => Command::Query,
                Some("list") => Command::List,
                Some("statistics") => Command::Statistics,
                Some("play media") => Command::PlayMedia,
                Some("stop media") => Command::StopMedia,
                Some("play DTMF") => Command::PlayDtmf,
                Some("start recording") => Command::StartRecording,
                Some("stop recording") => Command::StopRecording,
                Some(other) => return Err(RequestError::UnknownCommand(other.chars().take(64).collect())),
                None => return Err(RequestError::UnknownCommand(String::from_utf8_lossy(v.as_bytes().unwrap_or_default()).into())),
            },
        };
        let call_id = id(msg, "call-id")?;
        let from_tag = id(msg, "from-tag")?;
        let needs_call = !matches!(command, Command::Ping | Command::List | Command::Statistics);
        let call_id = match (call_id, needs_call) {
            (Some(c), _) => c,
            (None, true) => return Err(RequestError::NoCallId),
            (None, false) => String::new(),
        };
        let from_tag = match (from_tag, command) {
            (Some(t), _) => t,
            (None, Command::Offer | Command::Answer) => return Err(RequestError::NoFromTag),
            (None, _) => String::new(),
        };
        let to_tag = id(msg, "to-tag")?;
        if command == Command::Answer && to_tag.is_none() {
            return Err(RequestError::NoToTag);
        }
        let sdp = match msg.get("sdp") {
            None => None,
            Some(v) => Some(text(v, "sdp")?.to_owned()),
        };
        if matches!(command, Command::Offer | Command::Answer) && sdp.as_deref().is_none_or(str::is_empty) {
            return Err(RequestError::NoSdp);
        }
        let received_from = match msg.get("received-from") {
            None => None,
            Some(Value::List(items)) => match items.as_slice() {
                [_, addr] => Some(text(addr, "received-from")?.parse().map_err(|_| bad("received-from", "not an IP address"))?),
                _ => return Err(bad("received-from", "expected [family, address]")),
            },
            Some(_) => return Err(bad("received-from", "expected a list")),
        };
        let load_limit = strings(msg, "supports")?.iter().any(|s| s == "load limit");
        let limit = match msg.get("limit") {
            None => LIST_DEFAULT,
            Some(Value::Int(n)) => usize::try_from(*n).map_err(|_| bad("limit", "negative"))?.min(LIST_MAX),
            Some(v) => text(v, "limit")?.trim().parse::<usize>().map_err(|_| bad("limit", "not a number"))?.min(LIST_MAX),
        };
        let fatal = strings(msg, "flags")?.iter().any(|f| f.eq_ignore_ascii_case("fatal"));
        let all = strings(msg, "flags")?.iter().any(|f| f.eq_ignore_ascii_case("all"))
            || msg.get("all").and_then(Value::as_str).is_some_and(|v| !v.eq_ignore_ascii_case("none"));
        let file = id_long(msg, "file")?;
        let repeat_times = number(msg, "repeat-times")?.unwrap_or(1);
        let digit = match msg.get("code").or_else(|| msg.get("digit")) {
            None => None,
            Some(Value::Int(n)) => {
                Some(usize::try_from(*n).ok().and_then(|i| DIGITS.get(i)).map(|d| char::from(*d)).ok_or_else(|| bad("code", "not 0-15"))?)
            }
            Some(v) => {
                let t = text(v, "code")?;
                let mut chars = t.chars();
                match (chars.next().map(|c| c.to_ascii_uppercase()), chars.next()) {
                    (Some(c), None) if c.is_ascii() && DIGITS.contains(&(c as u8)) => Some(c),
                    _ => match t.parse::<usize>().ok().and_then(|i| DIGITS.get(i)) {
                        Some(d) => Some(char::from(*d)),
                        None => return Err(bad("code", "not a DTMF digit (0-9, *, #, A-D) or event code 0-15")),
                    },
                }
            }
        };
        if command == Command::PlayDtmf && digit.is_none() {
            return Err(bad("code", "missing: play DTMF needs the digit"));
        }
        let ms = |key: &'static str| -> Result<u32, RequestError> {
            match number(msg, key)? {
                None => Ok(0),
                Some(n) => u32::try_from(n).map_err(|_| bad(key, "not a duration in ms")),
            }
        };
        let (duration_ms, pause_ms) = (ms("duration")?, ms("pause")?);
        Ok(Self {
            fatal,
            all,
            file,
            repeat_times,
            digit,
            duration_ms,
            pause_ms,
            command,
            call_id,
            from_tag,
            to_tag,
            via_branch: id(msg, "via-branch")?,
            sdp,
            received_from,
            load_limit,
            flags: parse_flags(msg)?,
            limit,
        })
    }
}

fn bad(key: &'static str, why: &str) -> RequestError {
    RequestError::BadValue { key, why: why.to_owned() }
}

fn text<'a>(v: &'a Value, key: &'static str) -> Result<&'a str, RequestError> {
    v.as_str().ok_or_else(|| bad(key, "expected a UTF-8 string"))
}

/// A call-id, tag or similar: a non-empty string of at most [`MAX_ID`] bytes (empty is absent).
fn id(msg: &Value, key: &'static str) -> Result<Option<String>, RequestError> {
    match msg.get(key) {
        None => Ok(None),
        Some(v) => {
            let s = text(v, key)?;
            if s.len() > MAX_ID {
                return Err(bad(key, "longer than 256 bytes"));
            }
            Ok((!s.is_empty()).then(|| s.to_owned()))
        }
    }
}

/// A longer string (a file path: at most 4096 bytes).
fn id_long(msg: &Value, key: &'static str) -> Result<Option<String>, RequestError> {
    match msg.get(key) {
        None => Ok(None),
        Some(v) => {
            let s = text(v, key)?;
            if s.len() > 4096 {
                return Err(bad(key, "longer than 4096 bytes"));
            }
            Ok((!s.is_empty()).then(|| s.to_owned()))
        }
    }
}

/// An integer, given as one or as a decimal string (as Kamailio sends `key=value` flags).
fn number(msg: &Value, key: &'static str) -> Result<Option<i64>, RequestError> {
    match msg.get(key) {
        None => Ok(None),
        Some(Value::Int(n)) => Ok(Some(*n)),
        Some(v) => text(v, key)?.trim().parse().map(Some).map_err(|_| bad(key, "not a number")),
    }
}

/// A list of strings (a lone string counts as a list of one, as rtpengine takes it).
fn strings(v: &Value, key: &'static str) -> Result<Vec<String>, RequestError> {
    match v.get(key) {
        None => Ok(Vec::new()),
        Some(Value::List(items)) => items.iter().map(|i| text(i, key).map(str::to_owned)).collect(),
        Some(other) => Ok(vec![text(other, key)?.to_owned()]),
    }
}

fn parse_flags(msg: &Value) -> Result<Flags, RequestError> {
    let mut f = Flags::default();
    // Bare flags: rtpengine compares them case-insensitively with '-', '_' and ' ' alike.
    for flag in strings(msg, "flags")? {
        let norm: String = flag.chars().map(|c| if c == '_' || c == ' ' { '-' } else { c.to_ascii_lowercase() }).collect();
        match norm.as_str() {
            "sip-source-address" => f.sip_source_address = true,
            "trust-address" => f.sip_source_address = false,
            "asymmetric" => f.asymmetric = true,
            "symmetric" => f.asymmetric = false,
            "record-call" => f.record_call = true,
            "no-sdes" | "sdes-off" => f.sdes_off = true,
            _ => {
                // Flat codec flags (`codec-strip-PCMA`, `codec-offer-opus`, ...), as OpenSIPS
                // and older modules send them.
                if let Some((op, codec)) = norm.strip_prefix("codec-").and_then(|r| r.split_once('-')) {
                    // The codec keeps its case (rtpengine matches names case-insensitively).
                    let codec = flag.get(flag.len() - codec.len()..).unwrap_or(codec).to_owned();
                    codec_op(&mut f.codec, op, codec);
                }
            }
        }
    }
    if let Some(codec) = msg.get("codec") {
        let Value::Dict(ops) = codec else { return Err(bad("codec", "expected a dictionary")) };
        for op in ops.keys() {
            let name = std::str::from_utf8(op).map_err(|_| bad("codec", "a key is not UTF-8"))?;
            let list = match ops.get(op) {
                Some(Value::List(items)) => items.iter().map(|i| text(i, "codec").map(str::to_owned)).collect::<Result<Vec<_>, _>>()?,
                Some(v) => vec![text(v, "codec")?.to_owned()],
                None => Vec::new(),
            };
            for c in list {
                codec_op(&mut f.codec, name, c);
            }
        }
    }
    match msg.get("ICE").map(|v| text(v, "ICE")).transpose()?.map(str::to_ascii_lowercase).as_deref() {
        None | Some("remove") | Some("default") | Some("optional") => {}
        Some("force") | Some("force-relay") | Some("force_relay") => f.ice_force = true,
        Some(_) => {}
    }
    if let Some(p) = msg.get("transport-protocol") {
        f.transport_protocol = text(p, "transport-protocol")?.to_owned();
    }
    if strings(msg, "SDES")?.iter().any(|s| s.eq_ignore_ascii_case("off") || s.eq_ignore_ascii_case("no")) {
        f.sdes_off = true;
    }
    if let Some(label) = id(msg, "label")? {
        f.label = Some(label);
    }
    match msg.get("record-call").map(|v| text(v, "record-call")).transpose()? {
        Some(v) if v.eq_ignore_ascii_case("yes") || v.eq_ignore_ascii_case("on") => f.record_call = true,
        _ => {}
    }
    Ok(f)
}

fn codec_op(c: &mut CodecFlags, op: &str, codec: String) {
    match op.to_ascii_lowercase().as_str() {
        "strip" => c.strip.push(codec),
        "offer" | "except" => c.keep.push(codec),
        "transcode" => c.transcode.push(codec),
        "mask" => c.mask.push(codec),
        // accept, consume, set, ignore: not acted on (see the compatibility table).
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Value {
        Value::str(x)
    }

    /// An offer as Kamailio 5.6's rtpengine module sends it for
    /// `rtpengine_manage("replace-origin replace-session-connection SIP-source-address ICE=remove codec-strip=PCMA codec-transcode=opus")`.
    fn kamailio_offer() -> Value {
        Value::dict([
            ("supports", Value::strs(["load limit"])),
            ("sdp", s("v=0\r\n")),
            ("ICE", s("remove")),
            ("flags", Value::strs(["SIP-source-address"])),
            ("replace", Value::strs(["origin", "session-connection"])),
            ("codec", Value::dict([("strip", Value::strs(["PCMA"])), ("transcode", Value::strs(["opus"]))])),
            ("call-id", s("c1@host")),
            ("received-from", Value::strs(["IP4", "192.0.2.10"])),
            ("from-tag", s("ft")),
            ("command", s("offer")),
        ])
    }

    #[test]
    fn kamailios_offer_is_read_with_its_flags() {
        let r = Request::parse(&kamailio_offer()).unwrap();
        assert_eq!(r.command, Command::Offer);
        assert_eq!((r.call_id.as_str(), r.from_tag.as_str(), r.to_tag.as_deref()), ("c1@host", "ft", None));
        assert!(r.load_limit);
        assert_eq!(r.received_from, Some("192.0.2.10".parse().unwrap()));
        assert!(r.flags.sip_source_address && !r.flags.asymmetric && !r.flags.ice_force);
        assert_eq!(r.flags.codec, CodecFlags { strip: vec!["PCMA".into()], transcode: vec!["opus".into()], ..Default::default() });
        assert_eq!(r.sdp.as_deref(), Some("v=0\r\n"));
    }

    #[test]
    fn flat_codec_flags_and_flag_spellings_are_understood() {
        let msg = Value::dict([
            ("command", s("offer")),
            ("call-id", s("c")),
            ("from-tag", s("f")),
            ("sdp", s("v=0")),
            (
                "flags",
                Value::strs(["codec-strip-all", "codec-offer-PCMU", "codec-except-G722", "Asymmetric", "record_call", "no-such-flag"]),
            ),
            ("record-call", s("no")),
            ("label", s("caller")),
            ("ICE", s("force")),
            ("transport-protocol", s("RTP/SAVP")),
        ]);
        let r = Request::parse(&msg).unwrap();
        assert_eq!(r.flags.codec.strip, ["all"]);
        assert_eq!(r.flags.codec.keep, ["PCMU", "G722"]);
        assert!(r.flags.asymmetric && r.flags.record_call && r.flags.ice_force);
        assert_eq!(r.flags.label.as_deref(), Some("caller"));
        assert_eq!(r.flags.transport_protocol, "RTP/SAVP");
        assert!(!r.load_limit);
    }

    #[test]
    fn missing_and_malformed_fields_are_named() {
        let cases: Vec<(Value, RequestError)> = vec![
            (Value::Int(1), RequestError::NotDictionary),
            (Value::dict([("call-id", s("c"))]), RequestError::NoCommand),
            (Value::dict([("command", s("fly"))]), RequestError::UnknownCommand("fly".into())),
            (Value::dict([("command", s("offer")), ("from-tag", s("f")), ("sdp", s("v=0"))]), RequestError::NoCallId),
            (Value::dict([("command", s("offer")), ("call-id", s("c")), ("sdp", s("v=0"))]), RequestError::NoFromTag),
            (Value::dict([("command", s("offer")), ("call-id", s("c")), ("from-tag", s("f"))]), RequestError::NoSdp),
            (Value::dict([("command", s("answer")), ("call-id", s("c")), ("from-tag", s("f")), ("sdp", s("v=0"))]), RequestError::NoToTag),
            (Value::dict([("command", s("delete")), ("call-id", Value::Int(3))]), bad("call-id", "expected a UTF-8 string")),
            (Value::dict([("command", s("query")), ("call-id", s(&"x".repeat(300)))]), bad("call-id", "longer than 256 bytes")),
            (
                Value::dict([("command", s("delete")), ("call-id", s("c")), ("received-from", Value::strs(["IP4", "nope"]))]),
                bad("received-from", "not an IP address"),
            ),
            (Value::dict([("command", s("list")), ("limit", Value::Int(-1))]), bad("limit", "negative")),
            (Value::dict([("command", s("delete")), ("call-id", s("c")), ("codec", s("PCMA"))]), bad("codec", "expected a dictionary")),
            (
                Value::dict([("command", s("delete")), ("call-id", s("c")), ("flags", Value::List(vec![Value::Int(1)]))]),
                bad("flags", "expected a UTF-8 string"),
            ),
        ];
        for (msg, want) in cases {
            assert_eq!(Request::parse(&msg), Err(want.clone()), "{msg:?}");
        }
    }

    #[test]
    fn media_commands_read_their_file_and_digit() {
        let r = Request::parse(&Value::dict([
            ("command", s("play media")),
            ("call-id", s("c")),
            ("from-tag", s("f")),
            ("file", s("moh.wav")),
            ("repeat-times", s("1")),
        ]))
        .unwrap();
        assert_eq!((r.command, r.file.as_deref(), r.repeat_times, r.all), (Command::PlayMedia, Some("moh.wav"), 1, false));
        for (code, want) in [(Value::Int(10), '*'), (s("#"), '#'), (s("11"), '#'), (s("d"), 'D')] {
            let r = Request::parse(&Value::dict([
                ("command", s("play DTMF")),
                ("call-id", s("c")),
                ("code", code),
                ("duration", Value::Int(200)),
                ("flags", Value::strs(["all"])),
            ]))
            .unwrap();
            assert_eq!((r.digit, r.duration_ms, r.all), (Some(want), 200, true));
        }
        let no_digit = Value::dict([("command", s("play DTMF")), ("call-id", s("c"))]);
        assert_eq!(Request::parse(&no_digit), Err(bad("code", "missing: play DTMF needs the digit")));
        let bad_code = Value::dict([("command", s("play DTMF")), ("call-id", s("c")), ("code", Value::Int(16))]);
        assert_eq!(Request::parse(&bad_code), Err(bad("code", "not 0-15")));
        let no_call = Value::dict([("command", s("stop media"))]);
        assert_eq!(Request::parse(&no_call), Err(RequestError::NoCallId));
    }

    #[test]
    fn commands_without_a_call_need_no_call_id() {
        for (cmd, want) in [("ping", Command::Ping), ("list", Command::List), ("statistics", Command::Statistics)] {
            let r = Request::parse(&Value::dict([("command", s(cmd))])).unwrap();
            assert_eq!(r.command, want);
            assert_eq!(r.limit, LIST_DEFAULT);
        }
        let r = Request::parse(&Value::dict([("command", s("list")), ("limit", s("5"))])).unwrap();
        assert_eq!(r.limit, 5);
        let r = Request::parse(&Value::dict([("command", s("delete")), ("call-id", s("c"))])).unwrap();
        assert_eq!((r.command, r.from_tag.as_str()), (Command::Delete, ""));
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Bencode values shaped like ng messages: dictionaries whose keys are the ones the reader
    /// looks at, or others, holding any values.
    fn value() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("command"),
            Just("call-id"),
            Just("from-tag"),
            Just("to-tag"),
            Just("sdp"),
            Just("flags"),
            Just("codec"),
            Just("received-from"),
            Just("supports"),
            Just("limit"),
            Just("ICE"),
            Just("label"),
            Just("record-call"),
            Just("SDES"),
            Just("strip"),
            Just("transcode"),
            Just("x"),
        ];
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::Int),
            prop_oneof![
                Just("offer".to_owned()),
                Just("answer".to_owned()),
                Just("delete".to_owned()),
                Just("list".to_owned()),
                Just("codec-strip-all".to_owned()),
                Just("IP4".to_owned()),
                Just("::1".to_owned()),
                ".{0,8}"
            ]
            .prop_map(|s: String| Value::str(&s)),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(3, 32, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
                proptest::collection::vec((key.clone(), inner), 0..8)
                    .prop_map(|kv| Value::Dict(kv.into_iter().map(|(k, v)| (k.as_bytes().to_vec(), v)).collect())),
            ]
        })
    }

    proptest! {
        /// Any message is read or refused with a reason; never a panic, and a read request keeps
        /// its bounds.
        #[test]
        fn any_message_is_read_or_refused(msg in value()) {
            if let Ok(r) = Request::parse(&msg) {
                prop_assert!(r.limit <= LIST_MAX);
                prop_assert!(r.call_id.len() <= 256 && r.from_tag.len() <= 256);
            }
        }
    }
}
