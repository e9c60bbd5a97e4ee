//! A small client of rtpengine's ng control protocol, so `rtp-load` can set up the same calls on
//! rtpengine as on the media plane and compare the two.
//!
//! The protocol: one UDP datagram per request and per reply, `<cookie> <bencoded dictionary>`. The
//! reply carries the request's cookie; rtpengine caches replies by cookie, so a request resent
//! with the same cookie (after a lost datagram) gets the same reply rather than running twice.
//! Every request has a `command` (`ping`, `offer`, `answer`, `delete`, …); every reply a `result`
//! (`pong`, `ok`, `error` with an `error-reason`).
//!
//! A call is an offer (caller's SDP in, SDP for the callee out) and an answer (callee's SDP in, SDP
//! for the caller out): see [`NgClient::setup_call`] for how the two map onto a [`Call`].

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use ng_protocol::bencode::{frame, unframe, BencodeError, FrameError, Value};

use crate::traffic::Call;

/// Largest datagram read (an ng reply with an SDP body is well under this).
const MAX_DATAGRAM: usize = 65_535;

// ---------------------------------------------------------------------------------------------
// SDP

/// A one-stream audio SDP (PCMU, the payload type `rtp-load` sends) with its media at `addr`.
pub fn audio_sdp(addr: SocketAddr, session_id: u64) -> String {
    let (family, ip) = match addr.ip() {
        IpAddr::V4(ip) => ("IP4", ip.to_string()),
        IpAddr::V6(ip) => ("IP6", ip.to_string()),
    };
    let mut s = String::with_capacity(200);
    let _ = write!(
        s,
        "v=0\r\no=- {session_id} 1 IN {family} {ip}\r\ns=rtp-load\r\nc=IN {family} {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
        port = addr.port()
    );
    s
}

/// An audio SDP offering one codec: payload type `pt` with `a=rtpmap:pt rtpmap`.
pub fn codec_sdp(addr: SocketAddr, pt: u8, rtpmap: &str, session_id: u64) -> String {
    let (family, ip) = match addr.ip() {
        IpAddr::V4(ip) => ("IP4", ip.to_string()),
        IpAddr::V6(ip) => ("IP6", ip.to_string()),
    };
    format!(
        "v=0\r\no=- {session_id} 1 IN {family} {ip}\r\ns=rtp-load\r\nc=IN {family} {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {pt}\r\na=rtpmap:{pt} {rtpmap}\r\na=ptime:20\r\na=sendrecv\r\n",
        port = addr.port()
    )
}

/// The media address of the first `m=audio` stream: its port, and the `c=` line of that media
/// section or, failing that, of the session.
pub fn sdp_audio_addr(sdp: &str) -> Result<SocketAddr, NgError> {
    let bad = |why: &str| NgError::Sdp(why.to_string());
    let parse_c = |rest: &str| -> Result<IpAddr, NgError> {
        // c=IN IP4 203.0.113.1 (an optional /ttl follows multicast addresses)
        let mut f = rest.split_whitespace();
        let (net, _family, addr) = (f.next(), f.next(), f.next());
        if net != Some("IN") {
            return Err(bad("c= is not IN"));
        }
        let addr = addr.ok_or_else(|| bad("c= without an address"))?;
        let addr = addr.split('/').next().unwrap_or(addr);
        addr.parse().map_err(|_| bad("c= address is not an IP address"))
    };
    let mut session_c = None;
    let mut audio: Option<(u16, Option<IpAddr>)> = None;
    let mut in_audio = false;
    let mut seen_media = false;
    for line in sdp.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("m=") {
            if audio.is_some() {
                break; // only the first audio stream
            }
            seen_media = true;
            let mut f = rest.split_whitespace();
            in_audio = f.next() == Some("audio");
            if in_audio {
                let port: u16 = f.next().and_then(|p| p.split('/').next()?.parse().ok()).ok_or_else(|| bad("m=audio without a port"))?;
                if port == 0 {
                    return Err(bad("audio stream rejected (port 0)"));
                }
                audio = Some((port, None));
            }
        } else if let Some(rest) = line.strip_prefix("c=") {
            if !seen_media {
                session_c = Some(parse_c(rest)?);
            } else if in_audio {
                if let Some((_, c)) = audio.as_mut() {
                    *c = Some(parse_c(rest)?);
                }
            }
        }
    }
    let (port, media_c) = audio.ok_or_else(|| bad("no m=audio"))?;
    let ip = media_c.or(session_c).ok_or_else(|| bad("no c= for the audio stream"))?;
    Ok(SocketAddr::new(ip, port))
}

// ---------------------------------------------------------------------------------------------
// Client

#[derive(Debug, thiserror::Error)]
pub enum NgError {
    #[error("ng socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("no reply to '{command}' from {server} after {tries} tries of {per_try:?}{}", refused_hint(*.refused))]
    Timeout { command: String, server: SocketAddr, tries: u32, per_try: Duration, refused: bool },
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("ng reply to '{0}' is not a dictionary with a result")]
    BadReply(String),
    #[error("rtpengine refused '{command}': {result}: {reason}")]
    Server { command: String, result: String, reason: String },
    #[error("SDP: {0}")]
    Sdp(String),
}

/// A blocking ng client on one UDP socket: one request in flight, each try bounded by a read
/// timeout, lost datagrams retried with the same cookie.
#[derive(Debug)]
pub struct NgClient {
    socket: UdpSocket,
    server: SocketAddr,
    per_try: Duration,
    tries: u32,
    /// Unique to this client (rtpengine's reply cache is keyed by cookie alone, across clients).
    cookie_prefix: String,
    seq: u64,
    buf: Vec<u8>,
}

impl NgClient {
    /// A client of the ng listener at `server`; 1 s per try, 3 tries.
    pub fn new(server: SocketAddr) -> Result<Self, NgError> {
        let bind: SocketAddr = match server {
            SocketAddr::V4(_) => (IpAddr::from([0, 0, 0, 0]), 0).into(),
            SocketAddr::V6(_) => (IpAddr::from([0u16; 8]), 0).into(),
        };
        let socket = UdpSocket::bind(bind)?;
        // Connected: only the server's datagrams are received, and an ICMP port-unreachable shows
        // up as ConnectionRefused.
        socket.connect(server)?;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let cookie_prefix = format!("{:x}.{:x}.{}", std::process::id(), nanos, socket.local_addr()?.port());
        Ok(Self { socket, server, per_try: Duration::from_secs(1), tries: 3, cookie_prefix, seq: 0, buf: vec![0; MAX_DATAGRAM] })
    }

    /// Per-try reply timeout and number of tries (at least one).
    pub fn with_retries(mut self, per_try: Duration, tries: u32) -> Self {
        self.per_try = per_try.max(Duration::from_millis(1));
        self.tries = tries.max(1);
        self
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Sends `msg` (a dictionary with a `command`) and returns the reply dictionary if its result
    /// is `ok` or `pong`; any other result is an [`NgError::Server`].
    pub fn request(&mut self, msg: &Value) -> Result<Value, NgError> {
        let command = msg.get("command").and_then(Value::as_str).unwrap_or("?").to_string();
        self.seq += 1;
        let cookie = format!("{}.{}", self.cookie_prefix, self.seq);
        let datagram = frame(&cookie, msg);
        let mut refused = false;
        for _ in 0..self.tries {
            let deadline = Instant::now() + self.per_try;
            match self.socket.send(&datagram) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused = true,
                Err(e) => return Err(e.into()),
            }
            while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
                self.socket.set_read_timeout(Some(left))?;
                let n = match self.socket.recv(&mut self.buf) {
                    Ok(n) => n,
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        // Nothing listens (yet): wait out this try rather than spinning.
                        refused = true;
                        std::thread::sleep(left);
                        break;
                    }
                    Err(e) => return Err(e.into()),
                };
                let Some(datagram) = self.buf.get(..n) else { continue };
                // A late reply to an earlier request (or garbage) is skipped.
                let Ok((got, reply)) = unframe(datagram) else { continue };
                if got != cookie.as_bytes() {
                    continue;
                }
                return check_result(&command, reply);
            }
        }
        Err(NgError::Timeout { command, server: self.server, tries: self.tries, per_try: self.per_try, refused })
    }

    pub fn ping(&mut self) -> Result<(), NgError> {
        let reply = self.request(&Value::dict([("command", Value::str("ping"))]))?;
        match reply.get("result").and_then(Value::as_str) {
            Some("pong") => Ok(()),
            _ => Err(NgError::BadReply("ping".into())),
        }
    }

    /// `offer`: the caller's SDP in, the SDP for the callee (rtpengine's side facing it) out.
    pub fn offer(&mut self, call_id: &str, from_tag: &str, sdp: &str) -> Result<String, NgError> {
        self.sdp_command("offer", call_id, from_tag, None, sdp)
    }

    /// `answer`: the callee's SDP in, the SDP for the caller out.
    pub fn answer(&mut self, call_id: &str, from_tag: &str, to_tag: &str, sdp: &str) -> Result<String, NgError> {
        self.sdp_command("answer", call_id, from_tag, Some(to_tag), sdp)
    }

    /// `delete`: the whole call.
    pub fn delete(&mut self, call_id: &str, from_tag: &str) -> Result<(), NgError> {
        let msg = Value::dict([("command", Value::str("delete")), ("call-id", Value::str(call_id)), ("from-tag", Value::str(from_tag))]);
        self.request(&msg).map(drop)
    }

    fn sdp_command(&mut self, command: &str, call_id: &str, from_tag: &str, to_tag: Option<&str>, sdp: &str) -> Result<String, NgError> {
        self.sdp_command_with(command, call_id, from_tag, to_tag, sdp, &[])
    }

    fn sdp_command_with(
        &mut self,
        command: &str,
        call_id: &str,
        from_tag: &str,
        to_tag: Option<&str>,
        sdp: &str,
        extra: &[(&str, Value)],
    ) -> Result<String, NgError> {
        let mut items = vec![
            ("command", Value::str(command)),
            ("call-id", Value::str(call_id)),
            ("from-tag", Value::str(from_tag)),
            ("sdp", Value::str(sdp)),
            ("ICE", Value::str("remove")),
            ("replace", Value::strs(["origin", "session-connection"])),
        ];
        if let Some(t) = to_tag {
            items.push(("to-tag", Value::str(t)));
        }
        items.extend(extra.iter().cloned());
        let reply = self.request(&Value::dict(items))?;
        reply.get("sdp").and_then(Value::as_str).map(str::to_string).ok_or_else(|| NgError::BadReply(command.to_string()))
    }

    /// Sets up one call whose caller (side A) has its media at `a_remote` and callee (side B) at
    /// `b_remote`, and returns where each side must send.
    ///
    /// The offer carries A's address; its reply is the SDP B receives, so its address is where B
    /// sends: `b_local`. The answer carries B's address; its reply is the SDP A receives: `a_local`.
    /// rtpengine is symmetric by default, so it also sends to B from `b_local` and to A from
    /// `a_local`, which is what the traffic sink checks.
    pub fn setup_call(&mut self, call_id: &str, a_remote: SocketAddr, b_remote: SocketAddr, session_id: u64) -> Result<Call, NgError> {
        let (from_tag, to_tag) = ("rtp-load-a", "rtp-load-b");
        let to_b = self.offer(call_id, from_tag, &audio_sdp(a_remote, session_id))?;
        let b_local = sdp_audio_addr(&to_b)?;
        let to_a = self.answer(call_id, from_tag, to_tag, &audio_sdp(b_remote, session_id))?;
        let a_local = sdp_audio_addr(&to_a)?;
        Ok(Call { a_local, b_local })
    }

    /// A transcoded call: side A offers only its codec (`(address, payload type, rtpmap)`) and
    /// asks rtpengine to add B's (`codec: {transcode: [B]}`); B answers with its codec alone, so
    /// rtpengine transcodes between them.
    pub fn setup_transcoded_call(
        &mut self,
        call_id: &str,
        a: (SocketAddr, u8, &str),
        b: (SocketAddr, u8, &str),
        session_id: u64,
    ) -> Result<Call, NgError> {
        let (from_tag, to_tag) = ("rtp-load-a", "rtp-load-b");
        let b_name = b.2.split('/').next().unwrap_or_default();
        let flags = [("codec", Value::dict([("transcode", Value::strs([b_name]))]))];
        let to_b = self.sdp_command_with("offer", call_id, from_tag, None, &codec_sdp(a.0, a.1, a.2, session_id), &flags)?;
        let b_local = sdp_audio_addr(&to_b)?;
        let to_a = self.sdp_command_with("answer", call_id, from_tag, Some(to_tag), &codec_sdp(b.0, b.1, b.2, session_id), &[])?;
        let a_local = sdp_audio_addr(&to_a)?;
        Ok(Call { a_local, b_local })
    }

    /// Deletes a call made by [`setup_call`](Self::setup_call).
    pub fn delete_call(&mut self, call_id: &str) -> Result<(), NgError> {
        self.delete(call_id, "rtp-load-a")
    }
}

fn refused_hint(refused: bool) -> &'static str {
    if refused {
        " (connection refused: is it listening?)"
    } else {
        ""
    }
}

fn check_result(command: &str, reply: Value) -> Result<Value, NgError> {
    let result = reply.get("result").and_then(Value::as_str).ok_or_else(|| NgError::BadReply(command.to_string()))?;
    match result {
        "ok" | "pong" => Ok(reply),
        other => Err(NgError::Server {
            command: command.to_string(),
            result: other.to_string(),
            reason: reply.get("error-reason").and_then(Value::as_str).unwrap_or("").to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdp_round_trip_and_rtpengine_reply() {
        let a: SocketAddr = "127.0.0.1:5004".parse().unwrap();
        assert_eq!(sdp_audio_addr(&audio_sdp(a, 1)).unwrap(), a);
        let v6: SocketAddr = "[::1]:5006".parse().unwrap();
        assert_eq!(sdp_audio_addr(&audio_sdp(v6, 1)).unwrap(), v6);
        // As rtpengine 10.5 returns it.
        let reply = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                     m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\na=rtcp:40001\r\n";
        assert_eq!(sdp_audio_addr(reply).unwrap(), "127.0.0.1:40000".parse().unwrap());
    }

    #[test]
    fn sdp_media_level_connection_and_errors() {
        let sdp = "v=0\nc=IN IP4 10.0.0.1\nm=video 6000 RTP/AVP 96\nc=IN IP4 10.0.0.2\n\
                   m=audio 7000 RTP/AVP 0\nc=IN IP4 10.0.0.3/127\nm=audio 8000 RTP/AVP 0\nc=IN IP4 10.0.0.4\n";
        assert_eq!(sdp_audio_addr(sdp).unwrap(), "10.0.0.3:7000".parse().unwrap());
        assert_eq!(sdp_audio_addr("v=0\nc=IN IP4 10.0.0.1\nm=audio 7000 RTP/AVP 0\n").unwrap(), "10.0.0.1:7000".parse().unwrap());
        let bad_sdps = [
            "",
            "v=0\nc=IN IP4 10.0.0.1\n",                // no m=audio
            "m=audio 7000 RTP/AVP 0\n",                // no c=
            "c=IN IP4 1.2.3.4\nm=audio 0 RTP/AVP 0\n", // rejected stream
            "c=IN IP4 1.2.3.4\nm=audio x RTP/AVP 0\n", // bad port
            "c=IN IP4 nope\nm=audio 5 RTP/AVP 0\n",    // bad address
            "c=XX IP4 1.2.3.4\nm=audio 5 RTP/AVP 0\n", // bad network type
        ];
        for bad in bad_sdps {
            assert!(matches!(sdp_audio_addr(bad), Err(NgError::Sdp(_))), "{bad:?}");
        }
    }

    /// A scripted ng server on loopback: drops the first datagram, answers a stale cookie first,
    /// then the right one; the client must retry and skip the stale reply.
    #[test]
    fn client_retries_and_matches_cookies() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            let (n, _) = server.recv_from(&mut buf).unwrap(); // dropped
            let first = buf[..n].to_vec();
            let (n, peer) = server.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &first[..], "a retry resends the same datagram, cookie included");
            let (cookie, msg) = unframe(&buf[..n]).unwrap();
            assert_eq!(msg.get("command").and_then(Value::as_str), Some("ping"));
            server.send_to(b"stale d6:result5:errore", peer).unwrap();
            let mut reply = cookie.to_vec();
            reply.extend_from_slice(b" d6:result4:ponge");
            server.send_to(&reply, peer).unwrap();
            // Then an error reply for the next request.
            let (n, peer) = server.recv_from(&mut buf).unwrap();
            let (cookie, _) = unframe(&buf[..n]).unwrap();
            let mut reply = cookie.to_vec();
            reply.extend_from_slice(b" d6:result5:error12:error-reason12:Unknown calle");
            server.send_to(&reply, peer).unwrap();
        });
        let mut c = NgClient::new(addr).unwrap().with_retries(Duration::from_millis(200), 3);
        c.ping().unwrap();
        match c.delete("x", "y") {
            Err(NgError::Server { result, reason, .. }) => assert_eq!((result.as_str(), reason.as_str()), ("error", "Unknown call")),
            other => panic!("{other:?}"),
        }
        t.join().unwrap();
    }

    #[test]
    fn client_times_out() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut c = NgClient::new(silent.local_addr().unwrap()).unwrap().with_retries(Duration::from_millis(30), 2);
        let t = Instant::now();
        assert!(matches!(c.ping(), Err(NgError::Timeout { tries: 2, .. })));
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
