//! SDP offer/answer (RFC 3264) for anchored media: what the media plane tells each side, and
//! which codec each of its legs speaks.
//!
//! The media plane sits between two endpoints. An offer from one (the *offerer*) is rewritten for
//! the other (the *answerer*) with the media plane's address and the answerer-facing leg's port;
//! the answer is rewritten back with the offerer-facing leg's port. On the way, a per-leg
//! [`CodecPolicy`] (in the spirit of rtpengine's codec flags) removes codecs and adds codecs the
//! media plane can transcode to, so two endpoints with no codec in common still connect:
//!
//! ```text
//!  offerer ── offer: PCMU 101(te/8000) ──► offer() ── PCMU opus te/8000 te/48000 ──► answerer
//!                                            │ OfferState (what was offered, what was added)
//!  offerer ◄── answer: PCMU te/8000 ──────── answer() ◄── answer: opus te/48000 ──── answerer
//!                                            └─► Negotiated: offerer leg PCMU, answerer leg opus
//! ```
//!
//! When the answerer picks a codec the offerer offered, both legs get the same codec and the
//! bridge relays without touching the payload; when it picks one the media plane added, the
//! offerer leg gets the offerer's first codec the media plane can decode and the bridge
//! transcodes. RFC 4733 telephone-events are offered at each codec's clock and carried across;
//! on a transcoded stream the offerer keeps its events even when the answerer has none (they
//! become in-band tones, and tones become events).
//!
//! Parsing and writing are the `sdp-types` crate's (RFC 8866, lax about line order, never
//! panics); this module only reads and rewrites its structures: `c=` and `o=` addresses, `m=`
//! ports and format lists, `a=rtpmap`/`a=fmtp`/`a=rtcp-fb` of removed formats, `a=rtcp`,
//! `a=rtcp-mux`, `a=ptime`, and ICE attributes (removed: the media plane is the only candidate).
//! Every other line passes through as the endpoint wrote it.

use std::net::{IpAddr, SocketAddr};

use media_codecs::{CodecKind, CodecParams, OpusSettings};
use sdp_types::{Attribute, Connection, Media, Session};

use crate::engine::direction::Direction;
use crate::engine::transcode::LegCodec;
use crate::srtp::{SdesError, SdesKey, SrtpKeys, SrtpSuite};

/// Longest SDP body accepted.
pub const MAX_SDP: usize = 16 * 1024;

/// Why a description or a policy cannot be used. The text names the line, stream or field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// Larger than [`MAX_SDP`].
    #[error("larger than {MAX_SDP} bytes")]
    TooLarge,
    /// Not SDP (the parser's reason, with its line number).
    #[error("{0}")]
    Syntax(String),
    /// One `m=` section is unusable.
    #[error("stream {stream}: {why}")]
    Stream { stream: usize, why: String },
    /// The answer does not have the offer's `m=` sections.
    #[error("the answer has {answer} m= lines, the offer had {offer}")]
    StreamCount { offer: usize, answer: usize },
    /// A codec named in a [`CodecPolicy`] that cannot be parsed or made.
    #[error("codec policy: {0}")]
    Policy(String),
}

fn stream_error(stream: usize, why: impl Into<String>) -> SdpError {
    SdpError::Stream { stream, why: why.into() }
}

/// A payload format of an `m=` line: its number and its `a=rtpmap`/`a=fmtp` (or the RFC 3551
/// static assignment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub pt: u8,
    /// Encoding name as written (compared without case).
    pub name: String,
    /// RTP clock rate.
    pub clock: u32,
    /// Channels (1 unless the rtpmap says otherwise).
    pub channels: u8,
    /// `a=fmtp` parameters, if any.
    pub fmtp: Option<String>,
}

impl Format {
    fn named(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    /// RFC 4733 `telephone-event`.
    pub fn is_telephone_event(&self) -> bool {
        self.named("telephone-event")
    }

    /// Audio codecs, as opposed to telephone-event and comfort noise.
    fn is_codec(&self) -> bool {
        !self.is_telephone_event() && !self.named("CN")
    }

    /// The media plane's codec for this format, if it can decode and encode it.
    pub fn kind(&self) -> Option<CodecKind> {
        let kind = CodecKind::from_name(&self.name)?;
        let fits = match kind {
            CodecKind::Pcmu | CodecKind::Pcma | CodecKind::G722 | CodecKind::G729 => self.clock == 8000 && self.channels == 1,
            CodecKind::Opus => self.clock == 48_000,
            CodecKind::L16 => matches!(self.clock, 8000 | 16_000 | 48_000) && self.channels <= 2,
        };
        fits.then_some(kind)
    }

    fn fmtp_param(&self, key: &str) -> Option<&str> {
        self.fmtp.as_deref()?.split(';').find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim().eq_ignore_ascii_case(key).then(|| v.trim())
        })
    }

    fn rtpmap(&self) -> String {
        match self.channels {
            1 => format!("{} {}/{}", self.pt, self.name, self.clock),
            n => format!("{} {}/{}/{}", self.pt, self.name, self.clock, n),
        }
    }

    fn same_codec(&self, other: &Format) -> bool {
        self.named(&other.name) && self.clock == other.clock && self.channels == other.channels
    }
}

/// RFC 3551's static payload types (those a phone may use without an rtpmap).
fn static_format(pt: u8) -> Option<(&'static str, u32)> {
    Some(match pt {
        0 => ("PCMU", 8000),
        3 => ("GSM", 8000),
        4 => ("G723", 8000),
        8 => ("PCMA", 8000),
        9 => ("G722", 8000),
        13 => ("CN", 8000),
        18 => ("G729", 8000),
        _ => return None,
    })
}

/// A codec named in a policy: `name[/clock[/channels]]`, or `all`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CodecSpec {
    name: String,
    clock: Option<u32>,
    channels: Option<u8>,
}

impl CodecSpec {
    fn parse(s: &str) -> Result<Self, SdpError> {
        let bad = || SdpError::Policy(format!("{s:?} is not name[/clock[/channels]]"));
        let mut parts = s.trim().split('/');
        let name = parts.next().filter(|n| !n.is_empty()).ok_or_else(bad)?.to_owned();
        let clock = parts.next().map(|c| c.parse().map_err(|_| bad())).transpose()?;
        let channels = parts.next().map(|c| c.parse().map_err(|_| bad())).transpose()?;
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(CodecSpec { name, clock, channels })
    }

    fn matches(&self, f: &Format) -> bool {
        (self.name.eq_ignore_ascii_case("all") && f.is_codec())
            || (f.named(&self.name) && self.clock.is_none_or(|c| c == f.clock) && self.channels.is_none_or(|c| c == f.channels))
    }

    /// The format the media plane offers for this codec (payload type filled in later).
    fn to_format(&self) -> Result<Format, SdpError> {
        let kind = CodecKind::from_name(&self.name).ok_or_else(|| {
            SdpError::Policy(format!(
                "{:?} is not a codec this media plane makes (PCMU, PCMA, G722, L16, opus; G729 when built with it)",
                self.name
            ))
        })?;
        let (clock, channels, fmtp) = match kind {
            CodecKind::Pcmu | CodecKind::Pcma | CodecKind::G722 => (8000, 1, None),
            // Annex B (VAD/CNG) is not made: the encoder sends every frame.
            CodecKind::G729 => (8000, 1, Some("annexb=no".to_owned())),
            // RFC 7587: always opus/48000/2; FEC asked of the far encoder.
            CodecKind::Opus => (48_000, 2, Some("useinbandfec=1".to_owned())),
            CodecKind::L16 => (self.clock.unwrap_or(16_000), self.channels.unwrap_or(1), None),
        };
        let format = Format { pt: 0, name: kind.name().to_owned(), clock, channels, fmtp };
        format
            .kind()
            .map(|_| format)
            .ok_or_else(|| SdpError::Policy(format!("{:?} has a clock or channel count the media plane does not make", self.name)))
    }
}

/// What a leg does to the codecs of an offer it forwards (names are `name[/clock[/channels]]`,
/// case-insensitive; `all` matches every codec but telephone-event and comfort noise).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodecPolicy {
    /// Removed from the offer: neither side uses them.
    pub strip: Vec<String>,
    /// Hidden from the answerer, but the offerer may still send them: the media plane transcodes.
    pub mask: Vec<String>,
    /// Added to the offer (if absent): if the answerer picks one, the media plane transcodes.
    /// `mask: ["all"]` with `transcode: [X]` forces transcoding to X.
    pub transcode: Vec<String>,
    /// Never stripped: with `strip: ["all"]`, only these are kept (rtpengine's codec `offer` and
    /// `except`).
    pub keep: Vec<String>,
}

struct ParsedPolicy {
    strip: Vec<CodecSpec>,
    keep: Vec<CodecSpec>,
    mask: Vec<CodecSpec>,
    transcode: Vec<Format>,
}

impl CodecPolicy {
    fn parse(&self) -> Result<ParsedPolicy, SdpError> {
        let specs = |names: &[String]| names.iter().map(|n| CodecSpec::parse(n)).collect::<Result<Vec<_>, _>>();
        Ok(ParsedPolicy {
            strip: specs(&self.strip)?,
            keep: specs(&self.keep)?,
            mask: specs(&self.mask)?,
            transcode: specs(&self.transcode)?.iter().map(CodecSpec::to_format).collect::<Result<_, _>>()?,
        })
    }
}

/// Where the media plane receives, for the description it writes: its address and, per `m=`
/// line in order, the facing leg's port (`None`: the stream is refused, port 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub ip: IpAddr,
    pub ports: Vec<Option<u16>>,
}

/// What one endpoint's description says about its stream: where it receives and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// RTP address (`None`: held with `c=0.0.0.0`, or no address).
    pub rtp: Option<SocketAddr>,
    /// RTCP address (`a=rtcp`, else RTP port + 1; `None` with rtcp-mux).
    pub rtcp: Option<SocketAddr>,
    pub rtcp_mux: bool,
    pub direction: Direction,
    /// `a=ptime`, or 20.
    pub ptime_ms: u16,
    /// SDES-SRTP keys of the leg facing this endpoint: its own (from its `a=crypto`) and the
    /// media plane's (sent back to it); `None` for plain RTP.
    pub srtp: Option<SrtpKeys>,
}

/// One offered stream, kept for its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Offered {
    /// The offerer's formats that survived `strip` (masked ones included: it may send them).
    usable: Vec<Format>,
    /// What went to the answerer.
    sent: Vec<Format>,
    /// Payload types in `sent` the media plane added (answering with one means transcoding).
    added: Vec<u8>,
    /// The offerer's side of the stream.
    offerer: Endpoint,
    /// Not an RTP stream (e.g. T.38 over UDPTL): relayed, formats untouched.
    opaque: bool,
    /// The offerer's transport protocol (`RTP/AVP`, `RTP/SAVP`, ...), used in its answer.
    offerer_proto: String,
    /// The media plane's keys offered to the answerer, one per suite (empty: plain RTP offered).
    answerer_keys: Vec<SdesKey>,
}

/// The offer as the media plane rewrote it, kept until the answer comes (an answer may come
/// more than once: 183 then 200).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferState {
    streams: Vec<Option<Offered>>,
}

impl OfferState {
    /// The offerer's side of each stream (`None`: refused or disabled).
    pub fn offerer(&self) -> impl Iterator<Item = Option<&Endpoint>> {
        self.streams.iter().map(|s| s.as_ref().map(|o| &o.offerer))
    }
}

/// An offer kept with the legs it was made for, until its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingOffer {
    /// Per `m=` line: (offerer-facing leg, answerer-facing leg).
    pub legs: Vec<(u64, u64)>,
    pub state: OfferState,
}

/// The result of [`offer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrittenOffer {
    /// The description for the answerer.
    pub sdp: String,
    pub state: OfferState,
}

/// One negotiated stream: each leg's endpoint and codec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub offerer: Endpoint,
    pub answerer: Endpoint,
    /// Codec of the offerer-facing leg (`None`: a format the media plane does not decode,
    /// relayed as it is).
    pub offerer_codec: Option<LegCodec>,
    /// Codec of the answerer-facing leg.
    pub answerer_codec: Option<LegCodec>,
    /// The legs' codecs differ: the bridge transcodes.
    pub transcoded: bool,
}

/// The result of [`answer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewrittenAnswer {
    /// The description for the offerer.
    pub sdp: String,
    /// Per `m=` line: the negotiated stream, or `None` when refused.
    pub streams: Vec<Option<Negotiated>>,
}

/// The transport the answerer is offered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transport {
    /// What the offerer uses.
    #[default]
    Same,
    /// Plain RTP (`RTP/AVP`): SRTP from the offerer is ended in the media plane.
    Rtp,
    /// SDES-SRTP (`RTP/SAVP`) with the media plane's own keys.
    Srtp,
}

impl Transport {
    /// From an rtpengine-style `transport-protocol` value (`RTP/AVP`, `RTP/SAVP`, `RTP/AVPF`,
    /// `RTP/SAVPF`; empty: [`Transport::Same`]).
    pub fn from_protocol(p: &str) -> Result<Self, SdpError> {
        match p.to_ascii_uppercase().as_str() {
            "" => Ok(Transport::Same),
            "RTP/AVP" | "RTP/AVPF" => Ok(Transport::Rtp),
            "RTP/SAVP" | "RTP/SAVPF" => Ok(Transport::Srtp),
            _ => Err(SdpError::Policy(format!("transport {p:?} is not RTP/AVP(F) or RTP/SAVP(F)"))),
        }
    }
}

/// Whether a transport protocol is SRTP; DTLS-SRTP is refused (SDES only).
fn is_secure(index: usize, proto: &str) -> Result<bool, SdpError> {
    let upper = proto.to_ascii_uppercase();
    if upper.contains("TLS") {
        return Err(stream_error(index, format!("{proto} (DTLS-SRTP) is not supported; SDES-SRTP is")));
    }
    Ok(upper.contains("SAVP"))
}

/// `proto` with its SRTP profile turned on or off (`RTP/AVP` ⇄ `RTP/SAVP`, keeping the `F`).
fn with_security(proto: &str, secure: bool) -> String {
    let feedback = proto.to_ascii_uppercase().ends_with('F');
    let base = if secure { "RTP/SAVP" } else { "RTP/AVP" };
    if feedback {
        format!("{base}F")
    } else {
        base.to_owned()
    }
}

/// The usable SDES keys of a stream, in its order (lines of unknown suites are skipped; a line of
/// a known suite that does not parse is an error).
fn sdes_keys(m: &Media, index: usize) -> Result<Vec<SdesKey>, SdpError> {
    let mut keys = Vec::new();
    for a in m.attributes.iter().filter(|a| a.attribute.eq_ignore_ascii_case("crypto")) {
        match SdesKey::parse(a.value.as_deref().unwrap_or("")) {
            Ok(k) => keys.push(k),
            Err(SdesError::Suite(_)) => {}
            Err(e) => return Err(stream_error(index, e.to_string())),
        }
    }
    Ok(keys)
}

fn set_crypto(m: &mut Media, keys: &[SdesKey]) {
    m.attributes.retain(|a| !a.attribute.eq_ignore_ascii_case("crypto"));
    for k in keys {
        m.attributes.push(Attribute { attribute: "crypto".into(), value: Some(k.to_attribute()) });
    }
}

/// Parses a body (at most [`MAX_SDP`] bytes).
pub fn parse(body: &[u8]) -> Result<Session, SdpError> {
    if body.len() > MAX_SDP {
        return Err(SdpError::TooLarge);
    }
    Session::parse(body).map_err(|e| SdpError::Syntax(e.to_string()))
}

/// Per `m=` line of a description: whether it is active (port not 0).
pub fn active_streams(body: &[u8]) -> Result<Vec<bool>, SdpError> {
    Ok(parse(body)?.medias.iter().map(|m| m.port != 0).collect())
}

fn write(session: &Session) -> String {
    session.to_string()
}

fn is_rtp(m: &Media) -> bool {
    m.proto.to_ascii_uppercase().contains("RTP/")
}

/// The formats of an RTP `m=` line in its order (tokens that are not payload types are skipped).
pub fn formats(m: &Media) -> Vec<Format> {
    let mut out = Vec::new();
    for token in m.fmt.split_ascii_whitespace() {
        let Some(pt) = token.parse::<u8>().ok().filter(|pt| *pt < 128) else { continue };
        let mut format = match static_format(pt) {
            Some((name, clock)) => Format { pt, name: name.to_owned(), clock, channels: 1, fmtp: None },
            None => Format { pt, name: String::new(), clock: 0, channels: 1, fmtp: None },
        };
        for a in &m.attributes {
            let Some(value) = a.value.as_deref() else { continue };
            let Some((apt, rest)) = value.split_once(' ') else { continue };
            if apt.trim().parse::<u8>().ok() != Some(pt) {
                continue;
            }
            if a.attribute.eq_ignore_ascii_case("rtpmap") {
                let mut enc = rest.trim().split('/');
                let (Some(name), Some(clock)) = (enc.next(), enc.next().and_then(|c| c.parse().ok())) else { continue };
                format.name = name.to_owned();
                format.clock = clock;
                format.channels = enc.next().and_then(|c| c.parse().ok()).filter(|c| *c > 0).unwrap_or(1);
            } else if a.attribute.eq_ignore_ascii_case("fmtp") {
                format.fmtp = Some(rest.trim().to_owned());
            }
        }
        out.push(format);
    }
    out
}

fn direction_of(attributes: &[Attribute]) -> Option<Direction> {
    attributes.iter().rev().find_map(|a| match a.attribute.as_str() {
        "sendrecv" => Some(Direction::SendRecv),
        "sendonly" => Some(Direction::SendOnly),
        "recvonly" => Some(Direction::RecvOnly),
        "inactive" => Some(Direction::Inactive),
        _ => None,
    })
}

fn attribute<'a>(m: &'a Media, name: &str) -> Option<&'a str> {
    m.attributes.iter().find(|a| a.attribute.eq_ignore_ascii_case(name)).map(|a| a.value.as_deref().unwrap_or(""))
}

fn connection_ip(c: &Connection) -> Option<IpAddr> {
    c.connection_address.split('/').next()?.parse().ok()
}

/// The endpoint side of stream `index` of `session`.
fn endpoint(session: &Session, m: &Media, index: usize) -> Result<Endpoint, SdpError> {
    let connection = m.connections.first().or(session.connection.as_ref());
    let ip = match connection {
        Some(c) => Some(
            connection_ip(c).ok_or_else(|| stream_error(index, format!("c= address {:?} is not an IP address", c.connection_address)))?,
        ),
        None => return Err(stream_error(index, "no c= line for the stream or the session")),
    };
    // RFC 3264 §8.4: 0.0.0.0 is the old way to put a stream on hold; no address to send to.
    let ip = ip.filter(|ip| !ip.is_unspecified());
    let rtcp_mux = attribute(m, "rtcp-mux").is_some();
    let rtcp_port = match attribute(m, "rtcp") {
        Some(v) => Some(
            v.split_ascii_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .ok_or_else(|| stream_error(index, format!("a=rtcp:{v} has no port")))?,
        ),
        None => m.port.checked_add(1),
    };
    let rtcp_ip = attribute(m, "rtcp").and_then(|v| v.split_ascii_whitespace().nth(3)).and_then(|a| a.parse().ok());
    let ptime_ms =
        attribute(m, "ptime").and_then(|p| p.trim().parse::<u16>().ok()).filter(|p| matches!(p, 10 | 20 | 30 | 40 | 60)).unwrap_or(20);
    Ok(Endpoint {
        rtp: ip.map(|ip| SocketAddr::new(ip, m.port)),
        rtcp: if rtcp_mux { None } else { rtcp_port.and_then(|p| Some(SocketAddr::new(rtcp_ip.or(ip)?, p))) },
        rtcp_mux,
        direction: direction_of(&m.attributes).or(direction_of(&session.attributes)).unwrap_or_default(),
        ptime_ms,
        srtp: None,
    })
}

fn is_ice(name: &str) -> bool {
    matches!(name, "candidate" | "end-of-candidates" | "remote-candidates") || name.starts_with("ice-")
}

fn addrtype(ip: IpAddr) -> sdp_types::AddrType {
    if ip.is_ipv4() {
        sdp_types::AddrType::Ip4
    } else {
        sdp_types::AddrType::Ip6
    }
}

/// Puts the media plane's address in `o=` and the session-level `c=`.
fn anchor_session(session: &mut Session, ip: IpAddr) {
    session.origin.unicast_address = ip.to_string();
    session.origin.addrtype = addrtype(ip);
    if session.connection.is_some() {
        session.connection = Some(Connection::from_ip_addr(ip));
    }
    session.attributes.retain(|a| !is_ice(&a.attribute));
}

/// Points stream `m` at `port` (0: refused) on `ip`, and sets its formats to `formats` (`None`:
/// untouched), dropping the lines of removed payload types and adding those of new ones.
fn anchor_media(m: &mut Media, ip: IpAddr, port: Option<u16>, formats: Option<&[Format]>) {
    m.port = port.unwrap_or(0);
    m.num_ports = None;
    m.connections = vec![Connection::from_ip_addr(ip)];
    m.attributes.retain(|a| !is_ice(&a.attribute));
    for a in &mut m.attributes {
        if a.attribute.eq_ignore_ascii_case("rtcp") {
            a.value = Some(u32::from(m.port).saturating_add(1).to_string());
        }
    }
    let Some(formats) = formats else { return };
    m.fmt = formats.iter().map(|f| f.pt.to_string()).collect::<Vec<_>>().join(" ");
    let keep = |a: &Attribute| {
        let per_pt = ["rtpmap", "fmtp", "rtcp-fb"].iter().any(|n| a.attribute.eq_ignore_ascii_case(n));
        let pt = a.value.as_deref().and_then(|v| v.split_ascii_whitespace().next()).and_then(|p| p.parse::<u8>().ok());
        !per_pt || pt.is_some_and(|pt| formats.iter().any(|f| f.pt == pt))
    };
    m.attributes.retain(keep);
    // Every kept or added format gets its rtpmap (and fmtp) so the far side needs no table.
    let mut at = m
        .attributes
        .iter()
        .position(|a| !a.attribute.eq_ignore_ascii_case("rtpmap") && !a.attribute.eq_ignore_ascii_case("fmtp"))
        .unwrap_or(m.attributes.len());
    for f in formats {
        if f.clock == 0 {
            continue;
        }
        let pt = f.pt.to_string();
        let has = |attributes: &[Attribute], name: &str| {
            attributes.iter().any(|a| {
                a.attribute.eq_ignore_ascii_case(name)
                    && a.value.as_deref().and_then(|v| v.split_ascii_whitespace().next()) == Some(pt.as_str())
            })
        };
        if !has(&m.attributes, "rtpmap") {
            m.attributes.insert(at.min(m.attributes.len()), Attribute { attribute: "rtpmap".into(), value: Some(f.rtpmap()) });
            at += 1;
        }
        if let (Some(fmtp), false) = (&f.fmtp, has(&m.attributes, "fmtp")) {
            m.attributes
                .insert(at.min(m.attributes.len()), Attribute { attribute: "fmtp".into(), value: Some(format!("{} {fmtp}", f.pt)) });
            at += 1;
        }
    }
}

fn set_attribute(m: &mut Media, name: &str, value: Option<String>, present: bool) {
    m.attributes.retain(|a| !a.attribute.eq_ignore_ascii_case(name));
    if present {
        m.attributes.push(Attribute { attribute: name.to_owned(), value });
    }
}

/// The lowest dynamic payload type (96–127) not in `used`.
fn free_pt(used: &[Format]) -> Option<u8> {
    (96..128).find(|pt| !used.iter().any(|f| f.pt == *pt))
}

/// Adds `f` to `list` with its static payload type or a free dynamic one; false if none is free.
fn add_format(list: &mut Vec<Format>, mut f: Format) -> bool {
    let static_pt = (0..35u8).find(|pt| static_format(*pt).is_some_and(|(n, c)| f.name.eq_ignore_ascii_case(n) && f.clock == c));
    let pt = match static_pt {
        Some(pt) if !list.iter().any(|x| x.pt == pt) => Some(pt),
        _ => free_pt(list),
    };
    let Some(pt) = pt else { return false };
    f.pt = pt;
    list.push(f);
    true
}

/// Rewrites an offer for the answerer (see the module documentation). `transport` is what the
/// answerer is offered; SRTP keys are drawn from `random`.
pub fn offer(
    body: &[u8],
    policy: &CodecPolicy,
    transport: Transport,
    to_answerer: &Anchor,
    random: &mut dyn FnMut(&mut [u8]),
) -> Result<RewrittenOffer, SdpError> {
    let policy = policy.parse()?;
    let mut session = parse(body)?;
    let mut streams = Vec::with_capacity(session.medias.len());
    let original = session.clone();
    for (index, m) in session.medias.iter_mut().enumerate() {
        let port = to_answerer.ports.get(index).copied().flatten();
        if m.port == 0 || port.is_none() {
            anchor_media(m, to_answerer.ip, None, None);
            streams.push(None);
            continue;
        }
        let mut offerer = endpoint(&original, &original.medias[index], index)?;
        let offerer_proto = m.proto.clone();
        if !is_rtp(m) {
            anchor_media(m, to_answerer.ip, port, None);
            let opaque = Offered {
                usable: Vec::new(),
                sent: Vec::new(),
                added: Vec::new(),
                offerer,
                opaque: true,
                offerer_proto,
                answerer_keys: Vec::new(),
            };
            streams.push(Some(opaque));
            continue;
        }
        // SRTP: the offerer's first key of a suite the media plane speaks, answered later with a
        // key of the media plane's own of that suite and tag.
        let offerer_secure = is_secure(index, &m.proto)?;
        let offerer_keys = if offerer_secure { sdes_keys(m, index)? } else { Vec::new() };
        if offerer_secure {
            let Some(theirs) = offerer_keys.first().cloned() else {
                return Err(stream_error(
                    index,
                    "SRTP without an a=crypto line of a supported suite (AES_CM_128_HMAC_SHA1_80/32, AEAD_AES_128_GCM)",
                ));
            };
            let ours = SdesKey::generate(theirs.tag, theirs.suite, random);
            offerer.srtp = Some(SrtpKeys { remote: theirs, local: ours });
        }
        let answerer_secure = match transport {
            Transport::Same => offerer_secure,
            Transport::Rtp => false,
            Transport::Srtp => true,
        };
        let answerer_keys: Vec<SdesKey> = if answerer_secure {
            let suites: Vec<SrtpSuite> =
                if offerer_keys.is_empty() { SrtpSuite::ALL.to_vec() } else { offerer_keys.iter().map(|k| k.suite).collect() };
            suites.into_iter().enumerate().map(|(i, suite)| SdesKey::generate(i as u32 + 1, suite, random)).collect()
        } else {
            Vec::new()
        };
        m.proto = with_security(&m.proto, answerer_secure);
        set_crypto(m, &answerer_keys);
        let all = formats(m);
        let stripped = |f: &Format| policy.strip.iter().any(|s| s.matches(f)) && !policy.keep.iter().any(|k| k.matches(f));
        let usable: Vec<Format> = all.iter().filter(|f| !stripped(f)).cloned().collect();
        let mut sent: Vec<Format> = usable.iter().filter(|f| !policy.mask.iter().any(|s| s.matches(f))).cloned().collect();
        let mut added = Vec::new();
        // Transcoding needs a codec of the offerer's the media plane can decode.
        if usable.iter().any(|f| f.is_codec() && f.kind().is_some()) {
            let offerer_events = usable.iter().any(Format::is_telephone_event);
            for f in &policy.transcode {
                if sent.iter().any(|s| s.same_codec(f)) {
                    continue;
                }
                let clock = f.clock;
                if add_format(&mut sent, f.clone()) {
                    added.extend(sent.last().map(|f| f.pt));
                }
                // DTMF crosses at the added codec's clock if the offerer sends telephone-events.
                let has_events = sent.iter().any(|s| s.is_telephone_event() && s.clock == clock);
                if offerer_events && !has_events {
                    let te = Format { pt: 0, name: "telephone-event".into(), clock, channels: 1, fmtp: Some("0-16".into()) };
                    if add_format(&mut sent, te) {
                        added.extend(sent.last().map(|f| f.pt));
                    }
                }
            }
        }
        if !sent.iter().any(Format::is_codec) && !all.is_empty() {
            return Err(stream_error(index, "no codec left to offer after the codec policy"));
        }
        anchor_media(m, to_answerer.ip, port, Some(&sent));
        streams.push(Some(Offered { usable, sent, added, offerer, opaque: false, offerer_proto, answerer_keys }));
    }
    anchor_session(&mut session, to_answerer.ip);
    Ok(RewrittenOffer { sdp: write(&session), state: OfferState { streams } })
}

/// The leg codec for format `f` of an endpoint sending every `ptime_ms`, with its
/// telephone-event payload type; `pcm_rate` is the PCM rate Opus decodes to and encodes from.
fn leg_codec(f: &Format, ptime_ms: u16, events: Option<u8>, pcm_rate: u32) -> Option<LegCodec> {
    let kind = f.kind()?;
    let mut params = CodecParams::new(kind, if kind == CodecKind::L16 { f.clock } else { pcm_rate });
    params.channels = if kind == CodecKind::L16 { f.channels } else { 1 };
    if kind == CodecKind::Opus {
        // Mono whatever `stereo=1` asks: libopus decodes a stereo stream to mono and a mono
        // stream is valid Opus for any receiver, so the leg transcodes to and from G.711 and the
        // rest (the media plane mixes and transcodes in mono).
        params.channels = 1;
        params.opus = OpusSettings {
            bitrate: f.fmtp_param("maxaveragebitrate").and_then(|b| b.parse().ok()).filter(|b| (6000..=510_000).contains(b)),
            fec: f.fmtp_param("useinbandfec") == Some("1"),
            dtx: f.fmtp_param("usedtx") == Some("1"),
            ..OpusSettings::default()
        };
    }
    Some(LegCodec { payload_type: f.pt, params, ptime_ms, telephone_event: events })
}

/// The PCM rate a codec decodes to (what Opus on the other side is run at).
fn pcm_rate(f: &Format) -> u32 {
    match f.kind() {
        Some(CodecKind::Pcmu | CodecKind::Pcma | CodecKind::G729) => 8000,
        Some(CodecKind::G722) => 16_000,
        Some(CodecKind::L16) => f.clock,
        _ => 48_000,
    }
}

fn events_at(list: &[Format], clock: u32) -> Option<&Format> {
    list.iter().find(|f| f.is_telephone_event() && f.clock == clock)
}

/// The SRTP keys of the answerer's leg: its `a=crypto` line, matched by tag and suite to the key
/// the media plane offered it; `None` when plain RTP was offered (and answered).
fn answer_keys(offered: &Offered, m: &Media, index: usize) -> Result<Option<SrtpKeys>, SdpError> {
    if offered.answerer_keys.is_empty() {
        return if is_secure(index, &m.proto)? {
            Err(stream_error(index, "the answer is SRTP but plain RTP was offered"))
        } else {
            Ok(None)
        };
    }
    let refused = || stream_error(index, "the answer refuses the SRTP it was offered");
    if !is_secure(index, &m.proto)? {
        return Err(refused());
    }
    let theirs = sdes_keys(m, index)?.into_iter().next().ok_or_else(refused)?;
    let ours = offered
        .answerer_keys
        .iter()
        .find(|k| k.tag == theirs.tag && k.suite == theirs.suite)
        .cloned()
        .ok_or_else(|| stream_error(index, format!("a=crypto tag {} was not offered with that suite", theirs.tag)))?;
    Ok(Some(SrtpKeys { remote: theirs, local: ours }))
}

/// What an answer settles for one stream.
struct Choice {
    /// The formats the offerer is answered with.
    answer_formats: Vec<Format>,
    offerer_codec: Option<LegCodec>,
    answerer_codec: Option<LegCodec>,
    /// The answerer took one of the offerer's codecs.
    relayed: bool,
}

/// Each leg's codec from the answerer's `answered` formats (see the module documentation).
fn choose(offered: &Offered, answered: &[Format], answerer_ptime: u16, index: usize) -> Result<Choice, SdpError> {
    // The answerer's formats, matched to what it was offered (by payload type, else by codec).
    let answered: Vec<Format> = answered
        .iter()
        .filter_map(|f| {
            let same = |s: &&Format| s.pt == f.pt && (f.clock == 0 || s.same_codec(f));
            let sent = offered.sent.iter().find(same).or_else(|| offered.sent.iter().find(|s| s.same_codec(f)));
            // The answerer's own fmtp (its Opus bitrate, DTX, FEC) sets how it is sent to.
            sent.map(|s| Format { pt: f.pt, fmtp: f.fmtp.clone().or_else(|| s.fmtp.clone()), ..s.clone() })
        })
        .collect();
    let chosen = answered.iter().find(|f| f.is_codec()).ok_or_else(|| stream_error(index, "the answer names no codec that was offered"))?;
    let added = |f: &Format| offered.sent.iter().any(|s| s.same_codec(f) && offered.added.contains(&s.pt));
    let relayed = !added(chosen);
    let (offerer_format, answer_formats): (Format, Vec<Format>) = if relayed {
        let offerer_format = offered.usable.iter().find(|u| u.same_codec(chosen)).cloned().unwrap_or_else(|| chosen.clone());
        // What the answerer accepted of the offerer's own formats, in its order.
        let formats =
            answered.iter().filter(|f| !added(f)).filter_map(|f| offered.usable.iter().find(|u| u.same_codec(f)).cloned()).collect();
        (offerer_format, formats)
    } else {
        let offerer_format = offered
            .usable
            .iter()
            .find(|u| u.is_codec() && u.kind().is_some())
            .cloned()
            .ok_or_else(|| stream_error(index, "the offerer has no codec the media plane decodes"))?;
        // The offerer keeps its telephone-events even if the answerer has none: the transcoder
        // turns them into tones and tones into them.
        let mut formats = vec![offerer_format.clone()];
        formats.extend(events_at(&offered.usable, offerer_format.clock).cloned());
        (offerer_format, formats)
    };
    let offerer_events = events_at(&answer_formats, offerer_format.clock).map(|f| f.pt);
    let answerer_events = events_at(&answered, chosen.clock).map(|f| f.pt);
    let offerer_ptime = offered.offerer.ptime_ms;
    let (mut offerer_codec, mut answerer_codec) = if relayed {
        // One codec on both legs: the bridge relays (telephone-events pass as they are).
        let codec = leg_codec(chosen, offerer_ptime, answerer_events.filter(|pt| Some(*pt) == offerer_events), 48_000);
        (codec.map(|c| LegCodec { payload_type: offerer_format.pt, ..c }), codec)
    } else {
        (
            leg_codec(&offerer_format, offerer_ptime, offerer_events, pcm_rate(chosen)),
            leg_codec(chosen, answerer_ptime, answerer_events, pcm_rate(&offerer_format)),
        )
    };
    if relayed && offerer_codec != answerer_codec {
        // The answerer renumbered the codec: the media plane rewrites, so both need a codec.
        offerer_codec = leg_codec(&offerer_format, offerer_ptime, offerer_events, 48_000);
        answerer_codec = leg_codec(chosen, answerer_ptime, answerer_events, 48_000);
    }
    Ok(Choice { answer_formats, offerer_codec, answerer_codec, relayed })
}

/// Rewrites the answer to `state`'s offer for the offerer, and says which codec each leg speaks.
pub fn answer(state: &OfferState, body: &[u8], to_offerer: &Anchor) -> Result<RewrittenAnswer, SdpError> {
    let mut session = parse(body)?;
    if session.medias.len() != state.streams.len() {
        return Err(SdpError::StreamCount { offer: state.streams.len(), answer: session.medias.len() });
    }
    let original = session.clone();
    let mut out = Vec::with_capacity(state.streams.len());
    for (index, m) in session.medias.iter_mut().enumerate() {
        let port = to_offerer.ports.get(index).copied().flatten();
        let Some(offered) = state.streams.get(index).and_then(Option::as_ref).filter(|_| m.port != 0 && port.is_some()) else {
            anchor_media(m, to_offerer.ip, None, None);
            out.push(None);
            continue;
        };
        let mut answerer = endpoint(&original, &original.medias[index], index)?;
        if offered.opaque || !is_rtp(m) {
            anchor_media(m, to_offerer.ip, port, None);
            out.push(Some(Negotiated {
                offerer: offered.offerer.clone(),
                answerer,
                offerer_codec: None,
                answerer_codec: None,
                transcoded: false,
            }));
            continue;
        }
        answerer.srtp = answer_keys(offered, m, index)?;
        m.proto.clone_from(&offered.offerer_proto);
        let ours: Vec<SdesKey> = offered.offerer.srtp.iter().map(|k| k.local.clone()).collect();
        set_crypto(m, &ours);
        let Choice { answer_formats, offerer_codec, answerer_codec, relayed } = choose(offered, &formats(m), answerer.ptime_ms, index)?;
        anchor_media(m, to_offerer.ip, port, Some(&answer_formats));
        set_attribute(m, "rtcp-mux", None, offered.offerer.rtcp_mux);
        if !relayed {
            let ptime = attribute(&original.medias[index], "ptime").is_some().then(|| offered.offerer.ptime_ms.to_string());
            let has_ptime = ptime.is_some();
            set_attribute(m, "ptime", ptime, has_ptime);
        }
        let transcoded = offerer_codec != answerer_codec;
        out.push(Some(Negotiated { offerer: offered.offerer.clone(), answerer, offerer_codec, answerer_codec, transcoded }));
    }
    anchor_session(&mut session, to_offerer.ip);
    Ok(RewrittenAnswer { sdp: write(&session), streams: out })
}

#[cfg(test)]
mod tests;
