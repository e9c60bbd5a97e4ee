//! Configuration: a TOML file, validated once at start into [`Config`]. Every key, its default and
//! its meaning:
//!
//! ```toml
//! [sip]
//! listen = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]  # transports and addresses (default: these two);
//!                                 # "tls:IP:PORT" adds SIP over TLS (needs [sip.tls])
//! domains = ["sip.test"]          # domains this server is registrar for (required, at least one)
//! realm = "sip.test"              # digest realm (default: the first domain)
//! advertise = "127.0.0.1:5060"    # host:port written in our Via/Contact (default: first listen address)
//! trusted = ["192.0.2.10"]        # sources (trunks) whose INVITEs are not challenged (default: none)
//! no_answer_timeout_s = 120       # a callee that rings this long gets CANCEL; caller gets 408 (default 120)
//! symmetric_responses = true      # answer UDP requests at their source address and port even
//!                                 # without ;rport (default true: phones behind NAT, whose Via names
//!                                 # a private port, get their responses; false: RFC 3261 §18.2.2
//!                                 # to the letter, responses to the Via port)
//!
//! [sip.tls]                       # required by a tls: listener
//! certificate = "/etc/control-plane/cert.pem"  # PEM certificate chain, leaf first
//! key = "/etc/control-plane/key.pem"           # PEM private key (PKCS#8, PKCS#1 or SEC1)
//!                                 # Only connections phones and trunks open are served: requests
//!                                 # to a TLS contact go over the connection it registered on.
//!
//! [auth]
//! algorithms = ["MD5", "SHA-256"] # algorithms accepted, preferred first (default: this). Any of MD5,
//!                                 # SHA-256, SHA-512-256, optionally -sess.
//! challenge = "one"               # "one" (default): each 401/407 carries a single challenge: the
//!                                 # algorithm of the credentials the client already sent if it is
//!                                 # accepted, else the first above. baresip, sipp 3.6.1 and many
//!                                 # phones fail on a challenge they cannot compute instead of
//!                                 # skipping it. "all": one challenge per algorithm (RFC 8760).
//! nonce_ttl_s = 300               # nonces older than this get stale=true (default 300)
//!
//! [auth.domains]                  # per-domain algorithm: the only one challenged and accepted for
//! "secure.example.net" = "SHA-256" # that domain's subscribers (default: none). A subscriber's own
//!                                 # setting (`subscriber set-auth`) takes precedence over it.
//!
//! [registrar]
//! min_expires = 60                # shorter Expires get 423 Interval Too Brief (default 60)
//! max_expires = 3600              # longer Expires are cut to this (default 3600)
//! default_expires = 3600          # when the REGISTER gives none (default 3600)
//! max_contacts = 10               # contacts per address-of-record (default 10)
//!
//! [media]
//! grpc = "http://127.0.0.1:9090"  # media plane gRPC endpoint (default: the media plane's own default),
//!                                 # or a list of media planes: each new call goes to the least loaded
//!                                 # that answers its health check (legs, read every second), and all of
//!                                 # a call's legs stay on its plane. A plane that restarted has its calls
//!                                 # ended (BYE both sides, CDR cause "media"); so has one unreachable
//! lost_after_s = 10               # this long (0: never; default 10 with several planes, 0 with one)
//! media_timeout_ms = 60000        # legs without RTP this long are deleted by the media plane (default 60000)
//! rpc_timeout_ms = 2000           # a media-plane call slower than this fails the call with 503 (default 2000)
//! # Codecs of the offers the media plane passes on (names "opus", "PCMA", "L16/16000"; "all"):
//! transcode = ["PCMU", "PCMA"]    # added to every offer: a callee with none of the caller's codecs
//!                                 # is transcoded to (default: G.711, which every gateway has)
//! strip = []                      # removed from offers (default none)
//! mask = []                       # hidden from callees, still accepted from callers (default none)
//! music_on_hold = "music-on-hold.wav"  # what a held party hears: a WAV in the media plane's
//!                                 # prompt_dir, looped from the holder's sendonly/inactive re-INVITE
//!                                 # until it resumes; a subscriber's setting music_on_hold wins;
//!                                 # "" is silence (default: the shipped music-on-hold.wav)
//! transport = ""                  # "RTP/AVP" (SRTP ends in the media plane), "RTP/SAVP" (SDES-SRTP
//!                                 # to callees) or "" (as the caller offers; default)
//!
//! [routing]
//! fork = "parallel"               # a subscriber's registered contacts: "parallel" (all ring; the first
//!                                 # to answer wins, the others get CANCEL) or "sequential" (one at a
//!                                 # time, best q first; a busy or failed one moves on) (default parallel)
//! branch_timeout_s = 15           # sequential: how long each contact but the last rings (default 15)
//! refer = "subscribers"           # who may transfer a call with REFER: "subscribers" (a subscriber
//!                                 # of ours, its outgoing screening applied to the target), "any"
//!                                 # side of any call, or "off" (REFER gets 403) (default subscribers)
//! max_forwards = 5                # call forwards (settings forward.*) one call may take; more get
//!                                 # 483, and a forward back to a subscriber already rung gets 482 (default 5)
//!
//! [api]
//! listen = "127.0.0.1:9093"       # control.v1 gRPC (originate, hang up, list and watch calls,
//!                                 # subscriber settings); no authentication: keep it on a
//!                                 # management address; "" turns it off (default 127.0.0.1:9093)
//!
//! [metrics]
//! listen = "127.0.0.1:9092"       # GET /metrics (Prometheus); "" turns it off (default 127.0.0.1:9092)
//!
//! [store]
//! path = "control-plane.db"       # SQLite file for subscribers and registrations (default: this)
//! postgres = "host=db1 user=cp dbname=cp password=…"   # or PostgreSQL (several hosts share it)
//! shared = true                   # registrations are read from the store at each lookup and before
//!                                 # each REGISTER, so control planes sharing it (behind a dispatcher)
//!                                 # reach phones registered at another one; costs a store round trip
//!                                 # per call (default: true with postgres, false with SQLite)
//!
//! [billing]
//! rates = "rates.csv"             # rate table the calls' detail records are rated with (CSV: prefix,
//!                                 # per_minute,connect_fee,initial,increment,period,description;
//!                                 # see crate::billing::rating); default: none (records unrated)
//! currency = "EUR"                # the rate table's currency (default EUR)
//! international_prefix = "00"     # removed, like "+", from dialled numbers and the table's
//!                                 # prefixes before rating ("011" in North America; default 00)
//! node = "cp1"                    # this control plane's name on the credit it holds for calls in
//!                                 # progress, settled when it restarts (default: the host name)
//! max_call_s = 14400              # longest call an account may place (default 4 h)
//! warning_s = 60                  # the caller hears warning_tone this long before its credit
//!                                 # runs out (default 60; 0: no warning)
//! warning_tone = "warning"        # a media-plane tone name (default: three beeps)
//!
//! [limits]                        # abuse limits (see crate::limits); sip.trusted is always exempt
//! requests_per_second = 100       # messages per second per source IP; 0 = no limit (default 100)
//! burst = 200                     # messages at once above that rate (default 200)
//! ban_s = 60                      # a source over its rate is ignored this long (default 60)
//! auth_failures_per_source = 20   # refused credentials from one IP that ban it; 0 = off (default 20)
//! auth_failures_per_user = 50     # refused credentials for one user that lock it; 0 = off (default 50)
//! auth_window_s = 300             # window the failures are counted in (default 300)
//! lockout_s = 300                 # ban / lock time after too many failures (default 300)
//! exempt = ["127.0.0.1", "::1"]   # sources never limited (default: these, for local tools such as sipp)
//! drop_user_agents = ["friendly-scanner", "sipvicious", "sipcli", "sip-scan", "VaxSIPUserAgent"]
//!                                 # requests whose User-Agent contains one of these (any case) are
//!                                 # dropped unanswered (default: these; [] keeps all)
//! max_sources = 100000            # sources (and users) tracked at once (default 100000)
//!
//! [features]                      # call pickup and park (see crate::features)
//! pickup = "*8"                   # group pickup "*8", directed "*8bob"; "" off (default "*8")
//! park_orbits = "700-719"         # REFER to an orbit (or "park") parks; dialling it retrieves
//! park_timeout_s = 300            # then the parker is rung back; 0: never (default 300)
//!
//! [[route]]                       # dialled numbers not owned by a local subscriber; longest prefix wins
//! prefix = "00"                   # matched against the Request-URI user part ("" matches all)
//! destination = "sip:192.0.2.20:5060"      # "local" (a registered subscriber) or a trunk: a sip: URI whose
//!                                 # host is an IP address (names are not resolved); ;transport=tcp for TCP
//! strip = 2                       # leading characters removed before sending (default 0)
//! prepend = "+"                   # text put in front after stripping (default "")
//! caller_id = "passthrough"       # passthrough | assert | strip (default passthrough)
//! username = "acct1"              # trunk only: digest credentials for a trunk that answers our
//! password = "secret"             # INVITE with 401/407 (default none: the caller gets 403)
//! ```
//!
//! Calls to a user of a local domain who is a subscriber always go to that subscriber's
//! registrations (policy `passthrough`); routes are for everything else.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::auth::policy::{AuthPolicy, ChallengeMode};
use crate::media::CodecPolicy;
use sip_core::digest::Algorithm;

/// A configuration error; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, or a value of the wrong type.
    #[error("{0}")]
    Syntax(String),
    /// A value of the right type that is not allowed.
    #[error("{key}: {message}")]
    Invalid {
        /// The key, dotted (`registrar.min_expires`).
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Where the media plane's gRPC API listens when neither side is configured (its `grpc_listen`
/// default), so the two binaries work together out of the box.
pub const DEFAULT_MEDIA_GRPC: &str = "http://127.0.0.1:9090";

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    sip: RawSip,
    #[serde(default)]
    auth: RawAuth,
    #[serde(default)]
    registrar: RawRegistrar,
    #[serde(default)]
    media: RawMedia,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    metrics: RawListen,
    #[serde(default)]
    api: RawListen,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    routing: RawRouting,
    #[serde(default)]
    billing: RawBilling,
    #[serde(default)]
    callback: crate::callback::config::RawCallback,
    #[serde(default)]
    radius: crate::billing::radius::RawRadius,
    #[serde(default)]
    features: crate::features::RawFeatures,
    #[serde(default)]
    route: Vec<RawRoute>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBilling {
    rates: Option<PathBuf>,
    currency: Option<String>,
    international_prefix: Option<String>,
    node: Option<String>,
    max_call_s: Option<u64>,
    warning_s: Option<u64>,
    warning_tone: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouting {
    fork: Option<String>,
    branch_timeout_s: Option<u64>,
    max_forwards: Option<u8>,
    refer: Option<String>,
}

/// Who may transfer calls with REFER.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReferPolicy {
    /// A subscriber of ours, whose outgoing screening applies to the target.
    #[default]
    Subscribers,
    /// Either side of any call (a trunk's callee too).
    Any,
    /// Nobody: REFER gets 403.
    Off,
}

/// How a subscriber's registered contacts are rung.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForkMode {
    /// All at once; the first 2xx wins and the others are cancelled.
    #[default]
    Parallel,
    /// One after another by q-value.
    Sequential,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    requests_per_second: Option<u32>,
    burst: Option<u32>,
    ban_s: Option<u64>,
    auth_failures_per_source: Option<u32>,
    auth_failures_per_user: Option<u32>,
    auth_window_s: Option<u64>,
    lockout_s: Option<u64>,
    exempt: Option<Vec<String>>,
    drop_user_agents: Option<Vec<String>>,
    max_sources: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSip {
    listen: Option<Vec<String>>,
    domains: Option<Vec<String>>,
    realm: Option<String>,
    advertise: Option<String>,
    trusted: Option<Vec<String>>,
    no_answer_timeout_s: Option<u64>,
    symmetric_responses: Option<bool>,
    tls: Option<RawTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    certificate: PathBuf,
    key: PathBuf,
}

/// The TLS listener's certificate and key files (checked readable and parsable at load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub certificate: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The chain and key, parsed; errors name the key.
    pub fn load(&self) -> Result<(Vec<rustls_pki_types::CertificateDer<'static>>, rustls_pki_types::PrivateKeyDer<'static>), ConfigError> {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(&self.certificate)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| invalid("sip.tls.certificate", format!("{}: {e}", self.certificate.display())))?;
        if certs.is_empty() {
            return Err(invalid("sip.tls.certificate", format!("{}: no certificate in it", self.certificate.display())));
        }
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| invalid("sip.tls.key", format!("{}: {e}", self.key.display())))?;
        Ok((certs, key))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    algorithms: Option<Vec<String>>,
    challenge: Option<String>,
    nonce_ttl_s: Option<u64>,
    domains: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistrar {
    min_expires: Option<u32>,
    max_expires: Option<u32>,
    default_expires: Option<u32>,
    max_contacts: Option<usize>,
}

/// One string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMedia {
    grpc: Option<OneOrMany>,
    lost_after_s: Option<u64>,
    media_timeout_ms: Option<u32>,
    rpc_timeout_ms: Option<u64>,
    transcode: Option<Vec<String>>,
    strip: Option<Vec<String>>,
    mask: Option<Vec<String>>,
    transport: Option<String>,
    music_on_hold: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: Option<PathBuf>,
    postgres: Option<String>,
    shared: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    prefix: String,
    destination: String,
    strip: Option<usize>,
    prepend: Option<String>,
    caller_id: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// What the server answers a trunk's digest challenge (401/407) with.
#[derive(Clone, PartialEq, Eq)]
pub struct TrunkCredentials {
    /// Digest username.
    pub username: String,
    /// Digest password.
    pub password: String,
}

impl std::fmt::Debug for TrunkCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrunkCredentials").field("username", &self.username).finish_non_exhaustive()
    }
}

/// A transport and address to listen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    /// UDP or TCP.
    pub transport: rsip::Transport,
    /// Address.
    pub addr: SocketAddr,
}

/// What the B2BUA does with the caller's identity on the outgoing leg (seed: 主叫号码透传,
/// caller-ID passthrough).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CallerIdPolicy {
    /// From display name and user, P-Asserted-Identity and Remote-Party-ID copied as received.
    #[default]
    Passthrough,
    /// As passthrough, and P-Asserted-Identity set to the authenticated subscriber (network
    /// asserted identity, RFC 3325) replacing whatever the caller sent.
    Assert,
    /// Anonymous: From becomes `"Anonymous" <sip:anonymous@anonymous.invalid>`, P-Asserted-Identity
    /// and Remote-Party-ID removed.
    Strip,
}

/// Where a route sends calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A registered subscriber of the first local domain.
    Local,
    /// A trunk: the request goes to this URI's host and port with the (rewritten) user.
    Trunk(rsip::Uri),
}

/// A dialled-prefix route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Prefix of the Request-URI user part.
    pub prefix: String,
    /// Where matching calls go.
    pub destination: Destination,
    /// Characters removed from the front of the user part.
    pub strip: usize,
    /// Text put in front after stripping.
    pub prepend: String,
    /// Caller-ID handling.
    pub caller_id: CallerIdPolicy,
    /// Credentials for a trunk that challenges.
    pub credentials: Option<TrunkCredentials>,
}

impl Route {
    /// The user part to send for `dialled`.
    pub fn rewrite(&self, dialled: &str) -> String {
        let rest = dialled.get(self.strip.min(dialled.len())..).unwrap_or_default();
        format!("{}{}", self.prepend, rest)
    }
}

/// Registrar limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistrarConfig {
    /// Shortest accepted expiry, seconds.
    pub min_expires: u32,
    /// Longest granted expiry, seconds.
    pub max_expires: u32,
    /// Expiry when the request gives none.
    pub default_expires: u32,
    /// Contacts per address-of-record.
    pub max_contacts: usize,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig { min_expires: 60, max_expires: 3600, default_expires: 3600, max_contacts: 10 }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listening transports.
    pub listen: Vec<Listen>,
    /// Certificate and key of the TLS listener(s).
    pub tls: Option<TlsFiles>,
    /// Local domains (lower case).
    pub domains: Vec<String>,
    /// Digest realm.
    pub realm: String,
    /// host:port for our Via and Contact headers.
    pub advertise: String,
    /// Sources whose INVITEs are not challenged.
    pub trusted: HashSet<IpAddr>,
    /// How long a callee may ring.
    pub no_answer_timeout: Duration,
    /// How a subscriber's contacts are rung.
    pub fork: ForkMode,
    /// Sequential forking: how long each contact but the last rings.
    pub branch_timeout: Duration,
    /// Call forwards one call may take.
    pub max_forwards: u8,
    /// Who may transfer calls.
    pub refer: ReferPolicy,
    /// UDP responses to the source port even without rport.
    pub symmetric_responses: bool,
    /// Digest algorithms: accepted, challenged, per domain.
    pub auth: AuthPolicy,
    /// Nonce lifetime.
    pub nonce_ttl: Duration,
    /// Registrar limits.
    pub registrar: RegistrarConfig,
    /// Media planes' gRPC endpoints (one or more).
    pub media_grpc: Vec<String>,
    /// How long a media plane may stay unreachable before its calls are ended (`None`: never).
    pub media_lost_after: Option<Duration>,
    /// Media timeout given to each leg.
    pub media_timeout_ms: u32,
    /// Deadline of each media-plane RPC.
    pub rpc_timeout: Duration,
    /// What the media plane does to the codecs and transport of offers.
    pub codec_policy: CodecPolicy,
    /// What a held party hears (a WAV under the media plane's prompt_dir), unless the holder's
    /// settings name another; `None`: silence.
    pub music_on_hold: Option<String>,
    /// Where GET /metrics is served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Where the control.v1 API is served, if anywhere.
    pub api_listen: Option<SocketAddr>,
    /// SQLite file.
    pub store_path: PathBuf,
    /// PostgreSQL connection parameters (`host=… user=… dbname=…`): the store is there rather
    /// than in `store_path`.
    pub store_postgres: Option<String>,
    /// Registrations are read from the store at each lookup (several control planes share it).
    pub store_shared: bool,
    /// Routes, longest prefix first.
    pub routes: Vec<Route>,
    /// Abuse limits (trusted sources included in `exempt`).
    pub limits: crate::limits::LimitsConfig,
    /// The rate table calls are rated with for their detail records (empty: none), and its
    /// currency.
    pub rates: crate::billing::rating::RateTable,
    pub currency: String,
    /// What dialled numbers start with for an international call (`00`); removed, like `+`,
    /// from numbers and from the rate table's prefixes before rating.
    pub international_prefix: String,
    /// Prepaid: this node's name on its holds, the longest call, the warning before the end.
    pub billing: crate::billing::BillingConfig,
    /// The callback engine (see [`crate::callback::config`]).
    pub callback: crate::callback::CallbackConfig,
    /// RADIUS accounting (see [`crate::billing::radius`]); `None`: off.
    pub radius: Option<crate::billing::radius::RadiusConfig>,
    /// Feature codes and park orbits (see [`crate::features`]).
    pub features: crate::features::Features,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Config::parse(&text)
    }

    /// Validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
        Config::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        let listen_text = raw.sip.listen.unwrap_or_else(|| vec!["udp:127.0.0.1:5060".into(), "tcp:127.0.0.1:5060".into()]);
        if listen_text.is_empty() {
            return Err(invalid("sip.listen", "needs at least one address"));
        }
        let mut listen = Vec::new();
        for text in &listen_text {
            let (transport, addr) = text
                .split_once(':')
                .ok_or_else(|| invalid("sip.listen", format!("{text:?}: expected udp:IP:PORT, tcp:IP:PORT or tls:IP:PORT")))?;
            let transport = match transport.to_ascii_lowercase().as_str() {
                "udp" => rsip::Transport::Udp,
                "tcp" => rsip::Transport::Tcp,
                "tls" => rsip::Transport::Tls,
                other => return Err(invalid("sip.listen", format!("{text:?}: transport {other:?} is not udp, tcp or tls"))),
            };
            let addr: SocketAddr = addr.parse().map_err(|_| invalid("sip.listen", format!("{text:?}: {addr:?} is not IP:PORT")))?;
            listen.push(Listen { transport, addr });
        }
        let tls = raw.sip.tls.map(|t| TlsFiles { certificate: t.certificate, key: t.key });
        match &tls {
            Some(files) => {
                files.load()?;
            }
            None if listen.iter().any(|l| l.transport == rsip::Transport::Tls) => {
                return Err(invalid("sip.tls", "a tls: listener needs [sip.tls] certificate and key"));
            }
            None => {}
        }
        let domains: Vec<String> = raw.sip.domains.unwrap_or_default().iter().map(|d| d.to_ascii_lowercase()).collect();
        if domains.is_empty() {
            return Err(invalid("sip.domains", "needs at least one domain"));
        }
        if let Some(bad) = domains.iter().find(|d| d.is_empty() || d.contains(|c: char| c.is_whitespace() || c == '@')) {
            return Err(invalid("sip.domains", format!("{bad:?} is not a domain")));
        }
        let realm = raw.sip.realm.unwrap_or_else(|| domains[0].clone());
        if realm.is_empty() || realm.contains('"') {
            return Err(invalid("sip.realm", "must be non-empty and without quotes"));
        }
        let advertise = match raw.sip.advertise {
            Some(a) if a.is_empty() || a.contains(|c: char| c.is_whitespace()) => {
                return Err(invalid("sip.advertise", format!("{a:?} is not host:port")))
            }
            Some(a) => a,
            None => listen[0].addr.to_string(),
        };
        let mut trusted = HashSet::new();
        for ip in raw.sip.trusted.unwrap_or_default() {
            trusted.insert(ip.parse().map_err(|_| invalid("sip.trusted", format!("{ip:?} is not an IP address")))?);
        }
        let no_answer_timeout_s = raw.sip.no_answer_timeout_s.unwrap_or(120);
        if no_answer_timeout_s == 0 {
            return Err(invalid("sip.no_answer_timeout_s", "must be greater than 0"));
        }

        let mut algorithms = Vec::new();
        for name in raw.auth.algorithms.unwrap_or_else(|| vec!["MD5".into(), "SHA-256".into()]) {
            let algorithm = Algorithm::from_token(&name)
                .ok_or_else(|| invalid("auth.algorithms", format!("{name:?} is not MD5, SHA-256 or SHA-512-256 (optionally -sess)")))?;
            if !algorithms.contains(&algorithm) {
                algorithms.push(algorithm);
            }
        }
        if algorithms.is_empty() {
            return Err(invalid("auth.algorithms", "needs at least one algorithm"));
        }
        let mode = match raw.auth.challenge.as_deref().unwrap_or("one") {
            "one" => ChallengeMode::One,
            "all" => ChallengeMode::All,
            other => return Err(invalid("auth.challenge", format!("{other:?} is not \"one\" or \"all\""))),
        };
        let mut per_domain = Vec::new();
        for (domain, name) in raw.auth.domains.unwrap_or_default() {
            let key = format!("auth.domains.{domain}");
            let domain = domain.to_ascii_lowercase();
            if !domains.contains(&domain) {
                return Err(invalid(key, "is not one of sip.domains"));
            }
            let algorithm = Algorithm::from_token(&name)
                .ok_or_else(|| invalid(key, format!("{name:?} is not MD5, SHA-256 or SHA-512-256 (optionally -sess)")))?;
            per_domain.push((domain, algorithm));
        }
        let auth = AuthPolicy { algorithms, mode, domains: per_domain };
        let nonce_ttl_s = raw.auth.nonce_ttl_s.unwrap_or(300);
        if nonce_ttl_s == 0 {
            return Err(invalid("auth.nonce_ttl_s", "must be greater than 0"));
        }

        let d = RegistrarConfig::default();
        let registrar = RegistrarConfig {
            min_expires: raw.registrar.min_expires.unwrap_or(d.min_expires),
            max_expires: raw.registrar.max_expires.unwrap_or(d.max_expires),
            default_expires: raw.registrar.default_expires.unwrap_or(d.default_expires),
            max_contacts: raw.registrar.max_contacts.unwrap_or(d.max_contacts),
        };
        if registrar.min_expires == 0 {
            return Err(invalid("registrar.min_expires", "must be greater than 0"));
        }
        if registrar.max_expires < registrar.min_expires {
            return Err(invalid("registrar.max_expires", "must be at least registrar.min_expires"));
        }
        if !(registrar.min_expires..=registrar.max_expires).contains(&registrar.default_expires) {
            return Err(invalid("registrar.default_expires", "must lie between min_expires and max_expires"));
        }
        if registrar.max_contacts == 0 {
            return Err(invalid("registrar.max_contacts", "must be greater than 0"));
        }

        let media_grpc = match raw.media.grpc {
            None => vec![DEFAULT_MEDIA_GRPC.to_owned()],
            Some(OneOrMany::One(uri)) => vec![uri],
            Some(OneOrMany::Many(uris)) => uris,
        };
        if media_grpc.is_empty() || media_grpc.len() > 256 {
            return Err(invalid("media.grpc", format!("{} media planes: give 1 to 256", media_grpc.len())));
        }
        for uri in &media_grpc {
            if !(uri.starts_with("http://") || uri.starts_with("https://")) {
                return Err(invalid("media.grpc", format!("{uri:?} must start with http:// or https://")));
            }
        }
        if let Some(dup) = media_grpc.iter().enumerate().find_map(|(i, u)| media_grpc[..i].contains(u).then_some(u)) {
            return Err(invalid("media.grpc", format!("{dup:?} is listed twice")));
        }
        // One media plane has nowhere to move calls to, and its RTP may well still flow while
        // its gRPC API does not answer: by default only its restart ends them.
        let default_lost_after = if media_grpc.len() > 1 { 10 } else { 0 };
        let media_lost_after = match raw.media.lost_after_s.unwrap_or(default_lost_after) {
            0 => None,
            s if s > 86_400 => return Err(invalid("media.lost_after_s", "must be at most 86400 (0: never)")),
            s => Some(Duration::from_secs(s)),
        };
        let rpc_timeout_ms = raw.media.rpc_timeout_ms.unwrap_or(2000);
        if rpc_timeout_ms == 0 {
            return Err(invalid("media.rpc_timeout_ms", "must be greater than 0"));
        }
        let transport = raw.media.transport.unwrap_or_default();
        if !["", "RTP/AVP", "RTP/SAVP", "RTP/AVPF", "RTP/SAVPF"].contains(&transport.to_ascii_uppercase().as_str()) {
            return Err(invalid("media.transport", format!("{transport:?} is not \"RTP/AVP\", \"RTP/SAVP\" or \"\"")));
        }
        for (key, names) in [("media.transcode", &raw.media.transcode), ("media.strip", &raw.media.strip), ("media.mask", &raw.media.mask)]
        {
            if let Some(bad) = names.iter().flatten().find(|n| n.trim().is_empty() || n.split('/').count() > 3) {
                return Err(invalid(key, format!("{bad:?} is not name[/clock[/channels]]")));
            }
        }
        let metrics_listen = match raw.metrics.listen.as_deref().unwrap_or("127.0.0.1:9092") {
            "" => None,
            a => Some(a.parse::<SocketAddr>().map_err(|_| invalid("metrics.listen", format!("{a:?} is not IP:port (or \"\" for none)")))?),
        };
        let music_on_hold = match raw.media.music_on_hold.as_deref().unwrap_or("music-on-hold.wav") {
            "" => None,
            file if crate::settings::is_wav_name(file) => Some(file.to_owned()),
            file => return Err(invalid("media.music_on_hold", format!("{file:?} is not a .wav file name (no directories)"))),
        };
        let api_listen = match raw.api.listen.as_deref().unwrap_or("127.0.0.1:9093") {
            "" => None,
            a => Some(a.parse::<SocketAddr>().map_err(|_| invalid("api.listen", format!("{a:?} is not IP:port (or \"\" for none)")))?),
        };
        let codec_policy = CodecPolicy {
            transcode: raw.media.transcode.unwrap_or_else(|| vec!["PCMU".into(), "PCMA".into()]),
            strip: raw.media.strip.unwrap_or_default(),
            mask: raw.media.mask.unwrap_or_default(),
            transport,
        };

        let mut routes = Vec::new();
        for (i, r) in raw.route.into_iter().enumerate() {
            let key = |k: &str| format!("route[{i}].{k}");
            let destination = if r.destination.eq_ignore_ascii_case("local") {
                Destination::Local
            } else {
                let bad =
                    || invalid(key("destination"), format!("{:?} is not \"local\" or a sip: URI with an IP address host", r.destination));
                if !r.destination.to_ascii_lowercase().starts_with("sip:") {
                    return Err(bad());
                }
                let uri = rsip::Uri::try_from(r.destination.as_str()).map_err(|_| bad())?;
                if !matches!(uri.host_with_port.host, rsip::Host::IpAddr(_)) {
                    return Err(bad());
                }
                Destination::Trunk(uri)
            };
            let caller_id = match r.caller_id.as_deref().unwrap_or("passthrough") {
                "passthrough" => CallerIdPolicy::Passthrough,
                "assert" => CallerIdPolicy::Assert,
                "strip" => CallerIdPolicy::Strip,
                other => return Err(invalid(key("caller_id"), format!("{other:?} is not passthrough, assert or strip"))),
            };
            let credentials = match (r.username, r.password) {
                (None, None) => None,
                (Some(username), Some(password)) if matches!(destination, Destination::Trunk(_)) && !username.is_empty() => {
                    Some(TrunkCredentials { username, password })
                }
                (Some(_), Some(_)) => return Err(invalid(key("username"), "credentials are for trunk routes, with a non-empty username")),
                _ => return Err(invalid(key("password"), "username and password go together")),
            };
            routes.push(Route {
                prefix: r.prefix,
                destination,
                strip: r.strip.unwrap_or(0),
                prepend: r.prepend.unwrap_or_default(),
                caller_id,
                credentials,
            });
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));

        let limits = Config::limits(raw.limits, &trusted)?;
        let fork = match raw.routing.fork.as_deref() {
            None | Some("parallel") => ForkMode::Parallel,
            Some("sequential") => ForkMode::Sequential,
            Some(other) => return Err(invalid("routing.fork", format!("{other:?} is not parallel or sequential"))),
        };
        let refer = match raw.routing.refer.as_deref() {
            None | Some("subscribers") => ReferPolicy::Subscribers,
            Some("any") => ReferPolicy::Any,
            Some("off") => ReferPolicy::Off,
            Some(other) => return Err(invalid("routing.refer", format!("{other:?} is not subscribers, any or off"))),
        };
        let branch_timeout_s = raw.routing.branch_timeout_s.unwrap_or(15);
        if branch_timeout_s == 0 {
            return Err(invalid("routing.branch_timeout_s", "must be greater than 0"));
        }
        let rates = match &raw.billing.rates {
            None => crate::billing::rating::RateTable::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| invalid("billing.rates", format!("{}: {e}", path.display())))?;
                crate::billing::rating::RateTable::from_csv(&text)
                    .map_err(|e| invalid("billing.rates", format!("{}: {e}", path.display())))?
            }
        };
        let international_prefix = raw.billing.international_prefix.clone().unwrap_or_else(|| "00".into());
        if international_prefix.len() > 4 || !international_prefix.chars().all(|c| c.is_ascii_digit()) {
            return Err(invalid("billing.international_prefix", format!("{international_prefix:?} is not up to 4 digits (e.g. 00, 011)")));
        }
        let mut rates = rates;
        rates.normalise(&international_prefix);
        let currency = raw.billing.currency.clone().unwrap_or_else(|| "EUR".into());
        if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(invalid("billing.currency", format!("{currency:?} is not a three-letter code such as EUR")));
        }
        let node = match raw.billing.node.clone() {
            Some(n) => n,
            None => std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default(),
        };
        if node.is_empty() || node.len() > 64 || node.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(invalid("billing.node", format!("{node:?} is not 1-64 printable characters without spaces")));
        }
        let max_call_s = raw.billing.max_call_s.unwrap_or(14_400);
        if !(1..=86_400).contains(&max_call_s) {
            return Err(invalid("billing.max_call_s", format!("{max_call_s} is not 1-86400")));
        }
        let warning_s = raw.billing.warning_s.unwrap_or(60);
        if warning_s > 3_600 {
            return Err(invalid("billing.warning_s", format!("{warning_s} is not 0-3600")));
        }
        let warning_tone = raw.billing.warning_tone.clone().unwrap_or_else(|| "warning".into());
        let billing = crate::billing::BillingConfig { node, max_call_s, warning: Duration::from_secs(warning_s), warning_tone };
        let callback = raw.callback.build().map_err(|(key, why)| invalid(key, why))?;
        let radius = raw.radius.build(&billing.node).map_err(|(key, why)| invalid(key, why))?;
        let features = crate::features::Features::from_raw(raw.features)?;

        Ok(Config {
            listen,
            tls,
            domains,
            realm,
            advertise,
            trusted,
            no_answer_timeout: Duration::from_secs(no_answer_timeout_s),
            fork,
            branch_timeout: Duration::from_secs(branch_timeout_s),
            max_forwards: raw.routing.max_forwards.unwrap_or(5),
            refer,
            symmetric_responses: raw.sip.symmetric_responses.unwrap_or(true),
            auth,
            nonce_ttl: Duration::from_secs(nonce_ttl_s),
            registrar,
            media_grpc,
            media_lost_after,
            media_timeout_ms: raw.media.media_timeout_ms.unwrap_or(60_000),
            codec_policy,
            music_on_hold,
            metrics_listen,
            api_listen,
            rpc_timeout: Duration::from_millis(rpc_timeout_ms),
            store_path: raw.store.path.unwrap_or_else(|| PathBuf::from("control-plane.db")),
            store_shared: raw.store.shared.unwrap_or_else(|| raw.store.postgres.as_ref().is_some_and(|p| !p.trim().is_empty())),
            store_postgres: raw.store.postgres.filter(|p| !p.trim().is_empty()),
            routes,
            limits,
            rates,
            currency,
            international_prefix,
            billing,
            callback,
            radius,
            features,
        })
    }

    fn limits(raw: RawLimits, trusted: &HashSet<IpAddr>) -> Result<crate::limits::LimitsConfig, ConfigError> {
        let defaults = crate::limits::LimitsConfig::default();
        let mut exempt = match raw.exempt {
            None => defaults.exempt,
            Some(list) => list
                .iter()
                .map(|ip| ip.parse().map_err(|_| invalid("limits.exempt", format!("{ip:?} is not an IP address"))))
                .collect::<Result<HashSet<IpAddr>, _>>()?,
        };
        exempt.extend(trusted.iter().copied());
        let burst = raw.burst.unwrap_or(defaults.burst);
        if burst == 0 {
            return Err(invalid("limits.burst", "must be greater than 0"));
        }
        let max_sources = raw.max_sources.unwrap_or(defaults.max_sources);
        if max_sources == 0 {
            return Err(invalid("limits.max_sources", "must be greater than 0"));
        }
        let seconds = |v: Option<u64>, d: Duration, key: &str| match v {
            Some(0) => Err(invalid(key, "must be greater than 0")),
            Some(s) => Ok(Duration::from_secs(s)),
            None => Ok(d),
        };
        Ok(crate::limits::LimitsConfig {
            requests_per_second: raw.requests_per_second.unwrap_or(defaults.requests_per_second),
            burst,
            ban: seconds(raw.ban_s, defaults.ban, "limits.ban_s")?,
            auth_failures_per_source: raw.auth_failures_per_source.unwrap_or(defaults.auth_failures_per_source),
            auth_failures_per_user: raw.auth_failures_per_user.unwrap_or(defaults.auth_failures_per_user),
            auth_window: seconds(raw.auth_window_s, defaults.auth_window, "limits.auth_window_s")?,
            lockout: seconds(raw.lockout_s, defaults.lockout, "limits.lockout_s")?,
            exempt,
            drop_user_agents: raw
                .drop_user_agents
                .map(|v| v.iter().map(|s| s.to_ascii_lowercase()).collect())
                .unwrap_or(defaults.drop_user_agents),
            max_sources,
        })
    }

    /// host:port to write in our Via and Contact for messages on `transport`: the advertised
    /// host, with the port of our listener of that transport (phones answer a TLS dialog at the
    /// TLS port, not at the advertised UDP one); the advertised port when no listener of that
    /// transport exists.
    pub fn advertise_for(&self, transport: rsip::Transport) -> String {
        let host = self.advertise.rsplit_once(':').map_or(self.advertise.as_str(), |(h, _)| h);
        match self.listen.iter().find(|l| l.transport == transport) {
            Some(l) if self.listen.first().is_some_and(|first| first.transport != transport) => format!("{host}:{}", l.addr.port()),
            _ => self.advertise.clone(),
        }
    }

    /// Whether `domain` is one of ours.
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// Whether a URI's `host` is this server: a local domain, or the host it advertises.
    pub fn is_ours(&self, host: &str) -> bool {
        let advertised = self.advertise.rsplit_once(':').map_or(self.advertise.as_str(), |(h, _)| h);
        let unbracket = |h: &str| h.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        self.is_local_domain(host) || unbracket(advertised) == unbracket(host)
    }

    /// The longest-prefix route for a dialled user part.
    pub fn route_for(&self, user: &str) -> Option<&Route> {
        self.routes.iter().find(|r| user.starts_with(&r.prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::parse("[sip]\ndomains = [\"SIP.test\"]\n").unwrap();
        assert_eq!(c.domains, vec!["sip.test"]);
        assert_eq!(c.realm, "sip.test");
        assert_eq!(c.listen.len(), 2);
        assert_eq!(c.advertise, "127.0.0.1:5060");
        assert_eq!(c.auth.algorithms, vec![Algorithm::Md5, Algorithm::Sha256]);
        assert_eq!(c.auth.mode, ChallengeMode::One);
        assert!(c.auth.domains.is_empty());
        assert_eq!(c.registrar, RegistrarConfig::default());
        assert_eq!(c.media_grpc, ["http://127.0.0.1:9090"]);
        assert_eq!(c.media_lost_after, None, "one plane: only a restart ends its calls");
        let two = Config::parse("[sip]\ndomains = [\"a\"]\n[media]\ngrpc = [\"http://a:1\", \"http://b:1\"]\n").unwrap();
        assert_eq!(two.media_lost_after, Some(Duration::from_secs(10)));
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let cases = [
            ("[sip]\ndomains = []", "sip.domains"),
            ("[sip]\ndomains = [\"a\"]\nlisten = [\"sctp:1.2.3.4:5\"]", "sip.listen"),
            ("[sip]\ndomains = [\"a\"]\ntrusted = [\"x\"]", "sip.trusted"),
            ("[sip]\ndomains = [\"a\"]\n[limits]\nexempt = [\"nope\"]", "limits.exempt"),
            ("[sip]\ndomains = [\"a\"]\n[limits]\nburst = 0", "limits.burst"),
            ("[sip]\ndomains = [\"a\"]\n[limits]\nban_s = 0", "limits.ban_s"),
            ("[sip]\ndomains = [\"a\"]\nlisten = [\"tls:127.0.0.1:5061\"]", "sip.tls"),
            ("[sip]\ndomains = [\"a\"]\n[sip.tls]\ncertificate = \"/nonexistent.pem\"\nkey = \"/nonexistent.pem\"", "sip.tls.certificate"),
            ("[sip]\ndomains = [\"a\"]\n[auth]\nalgorithms = [\"SHA-1\"]", "auth.algorithms"),
            ("[sip]\ndomains = [\"a\"]\n[auth]\nchallenge = \"some\"", "auth.challenge"),
            ("[sip]\ndomains = [\"a\"]\n[auth.domains]\nb = \"SHA-256\"", "auth.domains.b"),
            ("[sip]\ndomains = [\"a\"]\n[auth.domains]\na = \"SHA-1\"", "auth.domains.a"),
            ("[sip]\ndomains = [\"a\"]\n[registrar]\nmin_expires = 100\nmax_expires = 50", "registrar.max_expires"),
            ("[sip]\ndomains = [\"a\"]\n[media]\ngrpc = \"127.0.0.1:9190\"", "media.grpc"),
            ("[sip]\ndomains = [\"a\"]\n[media]\ngrpc = [\"http://a:1\", \"b:2\"]", "media.grpc"),
            ("[sip]\ndomains = [\"a\"]\n[media]\ngrpc = []", "media.grpc"),
            ("[sip]\ndomains = [\"a\"]\n[media]\ngrpc = [\"http://a:1\", \"http://a:1\"]", "media.grpc"),
            ("[sip]\ndomains = [\"a\"]\n[media]\nlost_after_s = 100000", "media.lost_after_s"),
            ("[sip]\ndomains = [\"a\"]\n[[route]]\nprefix = \"0\"\ndestination = \"nonsense uri\"", "route[0].destination"),
            ("[sip]\ndomains = [\"a\"]\n[[route]]\nprefix = \"0\"\ndestination = \"local\"\ncaller_id = \"x\"", "route[0].caller_id"),
        ];
        for (text, key) in cases {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?} gave {err:?}, expected it to name {key}");
        }
        let err = Config::parse("[sip]\ndomains = [\"a\"]\nlisen = []").unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn contact_for_a_transport_uses_that_listeners_port() {
        let c = Config::parse(
            "[sip]\ndomains = [\"a\"]\nlisten = [\"udp:0.0.0.0:5060\", \"tcp:0.0.0.0:5060\"]\nadvertise = \"203.0.113.5:5060\"\n",
        )
        .unwrap();
        assert_eq!(c.advertise_for(rsip::Transport::Udp), "203.0.113.5:5060");
        assert_eq!(c.advertise_for(rsip::Transport::Tcp), "203.0.113.5:5060");
        let mut c = c;
        c.listen.push(Listen { transport: rsip::Transport::Tls, addr: "0.0.0.0:5061".parse().unwrap() });
        assert_eq!(c.advertise_for(rsip::Transport::Tls), "203.0.113.5:5061");
    }

    #[test]
    fn longest_prefix_route_wins_and_rewrites_the_user() {
        let c = Config::parse(
            "[sip]\ndomains = [\"a\"]\n[[route]]\nprefix = \"0\"\ndestination = \"sip:192.0.2.1\"\n\
             [[route]]\nprefix = \"00\"\ndestination = \"sip:192.0.2.2:5070\"\nstrip = 2\nprepend = \"+\"\n",
        )
        .unwrap();
        let r = c.route_for("0049301234").unwrap();
        assert_eq!(r.rewrite("0049301234"), "+49301234");
        assert!(matches!(&r.destination, Destination::Trunk(u) if u.to_string().contains("192.0.2.2")));
        assert!(c.route_for("12345").is_none());
    }
}
