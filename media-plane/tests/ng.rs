//! rtpengine's ng protocol through the running media plane: calls set up by offer and answer,
//! media both ways, query/list/statistics, delete, resent requests, load limit, bad input.
//! (Kamailio's rtpengine module driving it is tested in `kamailio_ng.rs`.)

use std::net::{SocketAddr, UdpSocket};

use media_codecs::signal::{best_lag, spectral_snr_db, speech_like};
use media_codecs::{CodecKind, CodecParams};
use media_plane::ng::bencode::{frame, unframe, Value};

mod common;
use common::*;

const SLOT_NG_CALL: u16 = 27;
const SLOT_NG_LIMIT: u16 = 28;
const SLOT_NG_BAD: u16 = 29;
const SLOT_NG_TRANSCODE: u16 = 30;
const SLOT_NG_REINVITE: u16 = 31;
const SLOT_NG_MEDIA: u16 = 34;

/// A free UDP port on loopback for the ng listener.
fn free_udp_addr() -> SocketAddr {
    local(&udp())
}

/// A blocking ng client: one socket, cookies numbered.
struct Ng {
    socket: UdpSocket,
    server: SocketAddr,
    seq: u32,
}

impl Ng {
    /// Connects and waits (bounded) until the listener answers `ping`.
    fn connect(server: SocketAddr, mp: &mut MediaPlane) -> Self {
        let socket = udp();
        socket.set_read_timeout(Some(std::time::Duration::from_millis(300))).expect("timeout");
        let mut ng = Self { socket, server, seq: 0 };
        for _ in 0..50 {
            mp.assert_running();
            if ng.try_request(&Value::dict([("command", Value::str("ping"))])).is_some() {
                return ng;
            }
        }
        panic!("the ng listener on {server} did not answer ping; log:\n{}", mp.log());
    }

    /// Sends `msg`, resending it with the same cookie (as rtpengine's clients do) up to five
    /// times while no reply comes.
    fn try_request(&mut self, msg: &Value) -> Option<Value> {
        self.seq += 1;
        let cookie = format!("t{}", self.seq);
        let datagram = frame(&cookie, msg);
        (0..5).find_map(|_| {
            self.send_raw(&datagram);
            self.reply_to(&cookie)
        })
    }

    fn send_raw(&self, datagram: &[u8]) {
        self.socket.send_to(datagram, self.server).expect("send ng");
    }

    /// The reply with `cookie`, if one comes within the read timeout.
    fn reply_to(&self, cookie: &str) -> Option<Value> {
        let mut buf = vec![0u8; 65_535];
        loop {
            let n = self.socket.recv(&mut buf).ok()?;
            let (got, v) = unframe(&buf[..n]).expect("the reply is '<cookie> <bencode>'");
            if got == cookie.as_bytes() {
                return Some(v);
            }
        }
    }

    fn request(&mut self, msg: &Value) -> Value {
        self.try_request(msg).unwrap_or_else(|| panic!("no ng reply to {msg:?}"))
    }

    /// A request whose result must be `ok`.
    fn ok(&mut self, items: Vec<(&str, Value)>) -> Value {
        let msg = Value::dict(items);
        let r = self.request(&msg);
        assert_eq!(text(&r, "result"), "ok", "{msg:?} → {r:?}");
        r
    }
}

fn s(x: &str) -> Value {
    Value::str(x)
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_else(|| panic!("no string {key:?} in {v:?}"))
}

fn int(v: &Value, key: &str) -> i64 {
    match v.get(key) {
        Some(Value::Int(n)) => *n,
        other => panic!("no integer {key:?} in {v:?}: {other:?}"),
    }
}

fn phone_sdp(at: SocketAddr, fmt: &str, attributes: &str) -> String {
    format!(
        "v=0\r\no=- 7 7 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {fmt}\r\n{attributes}",
        ip = at.ip(),
        port = at.port()
    )
}

/// Where a description says media goes (first `m=` line, session `c=`).
fn media_addr(sdp: &str) -> SocketAddr {
    let ip = sdp.lines().find_map(|l| l.strip_prefix("c=IN IP4 ")).unwrap_or_else(|| panic!("no c= in {sdp}"));
    let port = sdp.lines().find_map(|l| l.strip_prefix("m=audio ")).and_then(|r| r.split(' ').next()).expect("m=audio");
    format!("{ip}:{port}").parse().expect("address")
}

fn offer(call: &str, from: &str, sdp: &str, extra: Vec<(&'static str, Value)>) -> Vec<(&'static str, Value)> {
    let mut m = vec![("command", s("offer")), ("call-id", s(call)), ("from-tag", s(from)), ("sdp", s(sdp))];
    m.extend(extra);
    m
}

fn answer(call: &str, from: &str, to: &str, sdp: &str) -> Vec<(&'static str, Value)> {
    vec![("command", s("answer")), ("call-id", s(call)), ("from-tag", s(from)), ("to-tag", s(to)), ("sdp", s(sdp))]
}

#[tokio::test]
async fn an_ng_call_relays_both_ways_shows_in_grpc_and_query_and_delete_frees_its_legs() {
    let addr = free_udp_addr();
    let (mut mp, mut c) = MediaPlane::start_with(SLOT_NG_CALL, &["--ng-listen", &addr.to_string()]).await;
    let mut ng = Ng::connect(addr, &mut mp);
    let (alice, bob) = (udp(), udp());

    let r = ng.ok(offer("call-1", "alice-tag", &phone_sdp(local(&alice), "0", ""), vec![("label", s("caller"))]));
    let to_bob = text(&r, "sdp").to_owned();
    let r = ng.ok(answer("call-1", "alice-tag", "bob-tag", &phone_sdp(local(&bob), "0", "")));
    let to_alice = text(&r, "sdp").to_owned();
    let (bob_sends_to, alice_sends_to) = (media_addr(&to_bob), media_addr(&to_alice));
    for a in [bob_sends_to, alice_sends_to] {
        assert!((mp.ports.0..=mp.ports.1).contains(&a.port()), "anchored in the media plane's range: {a}");
    }
    assert_ne!(bob_sends_to, alice_sends_to);

    // Media both ways (the legs latch, as rtpengine's are symmetric by default).
    for i in 0..10u16 {
        send(&alice, &rtp(i, 0xA, 160), alice_sends_to);
        let (p, from) = recv(&bob, "alice's RTP at bob");
        assert_eq!((seq_of(&p), from), (i, bob_sends_to), "bob hears alice from the address bob sends to");
        send(&bob, &rtp(i, 0xB, 160), bob_sends_to);
        let (p, from) = recv(&alice, "bob's RTP at alice");
        assert_eq!((seq_of(&p), from), (i, alice_sends_to));
    }

    // gRPC sees the ng call's legs.
    let legs = stats(&mut c).await.legs;
    assert_eq!(legs.len(), 2, "{legs:?}");
    assert!(legs.iter().all(|l| l.rtp_packets_in == 10 && l.bridge_id != 0), "{legs:?}");

    let q = ng.ok(vec![("command", s("query")), ("call-id", s("call-1"))]);
    let rtp_totals = q.get("totals").and_then(|t| t.get("RTP")).expect("totals.RTP");
    assert_eq!(int(rtp_totals, "packets"), 20);
    let tags = q.get("tags").expect("tags");
    let caller = tags.get("alice-tag").expect("alice's monologue");
    assert_eq!((text(caller, "label"), text(caller, "in dialogue with")), ("caller", "bob-tag"));
    assert!(tags.get("bob-tag").is_some(), "{q:?}");
    let l = ng.ok(vec![("command", s("list"))]);
    assert_eq!(l.get("calls"), Some(&Value::strs(["call-1"])));
    let st = ng.ok(vec![("command", s("statistics"))]);
    let cur = st.get("statistics").and_then(|s| s.get("currentstatistics")).expect("currentstatistics");
    assert_eq!((int(cur, "sessionsown"), int(cur, "legs")), (1, 2));

    // A resent 200 OK (the same answer again) is answered the same way.
    let again = ng.ok(answer("call-1", "alice-tag", "bob-tag", &phone_sdp(local(&bob), "0", "")));
    assert_eq!(text(&again, "sdp"), to_alice);

    // Delete, then a resend of the same datagram gets the first reply, not a second delete.
    let delete = frame("del-1", &Value::dict([("command", s("delete")), ("call-id", s("call-1")), ("from-tag", s("alice-tag"))]));
    ng.send_raw(&delete);
    let first = ng.reply_to("del-1").expect("delete reply");
    assert_eq!(text(&first, "result"), "ok");
    assert_eq!(int(first.get("totals").and_then(|t| t.get("RTP")).expect("RTP"), "packets"), 20);
    ng.send_raw(&delete);
    assert_eq!(ng.reply_to("del-1").as_ref(), Some(&first), "a resent delete gets the cached reply");
    // A second delete (a resent BYE) is not an error, as with rtpengine, unless asked to be.
    let r = ng.ok(vec![("command", s("delete")), ("call-id", s("call-1"))]);
    assert_eq!(text(&r, "warning"), "Call-ID not found or tags didn't match");
    let r = ng.request(&Value::dict([("command", s("delete")), ("call-id", s("call-1")), ("flags", Value::strs(["fatal"]))]));
    assert_eq!((text(&r, "result"), text(&r, "error-reason")), ("error", "Call-ID not found or tags didn't match"));
    assert!(stats(&mut c).await.legs.is_empty(), "delete leaves no leg behind");
    let l = ng.ok(vec![("command", s("list"))]);
    assert_eq!(l.get("calls"), Some(&Value::List(vec![])));
}

#[tokio::test]
async fn a_reinvite_from_the_callee_reuses_the_calls_legs() {
    let addr = free_udp_addr();
    let (mut mp, mut c) = MediaPlane::start_with(SLOT_NG_REINVITE, &["--ng-listen", &addr.to_string()]).await;
    let mut ng = Ng::connect(addr, &mut mp);
    let (alice, bob) = (udp(), udp());
    let to_bob = media_addr(text(&ng.ok(offer("c", "a", &phone_sdp(local(&alice), "0", ""), vec![])), "sdp"));
    let to_alice = media_addr(text(&ng.ok(answer("c", "a", "b", &phone_sdp(local(&bob), "0", ""))), "sdp"));
    // Bob re-INVITEs (hold): From is bob's tag, To alice's.
    let hold = phone_sdp(local(&bob), "0", "a=sendonly\r\n");
    let r = ng.ok(offer("c", "b", &hold, vec![("to-tag", s("a"))]));
    assert_eq!(media_addr(text(&r, "sdp")), to_alice, "alice keeps sending to the same port");
    assert!(text(&r, "sdp").contains("a=sendonly"), "alice is offered bob's hold: {r:?}");
    let r = ng.ok(answer("c", "b", "a", &phone_sdp(local(&alice), "0", "a=recvonly\r\n")));
    assert_eq!(media_addr(text(&r, "sdp")), to_bob);
    assert_eq!(stats(&mut c).await.legs.len(), 2, "no new legs for the re-INVITE");
    // An answer naming as offerer a party whose offer is not the call's last is refused.
    let r = ng.request(&Value::dict(answer("c", "a", "b", &phone_sdp(local(&bob), "0", ""))));
    assert_eq!((text(&r, "result"), text(&r, "error-reason")), ("error", "No offer from this from-tag to answer"), "{r:?}");
}

#[tokio::test]
async fn the_session_limit_answers_load_limit_to_clients_that_support_it() {
    let addr = free_udp_addr();
    let (mut mp, mut c) = MediaPlane::start_with(SLOT_NG_LIMIT, &["--ng-listen", &addr.to_string(), "--ng-max-sessions", "1"]).await;
    let mut ng = Ng::connect(addr, &mut mp);
    let phone = udp();
    let sdp = phone_sdp(local(&phone), "0", "");
    ng.ok(offer("one", "t", &sdp, vec![]));
    let r = ng.request(&Value::dict(offer("two", "t", &sdp, vec![("supports", Value::strs(["load limit"]))])));
    assert_eq!(text(&r, "result"), "load limit", "{r:?}");
    let r = ng.request(&Value::dict(offer("two", "t", &sdp, vec![])));
    assert_eq!((text(&r, "result"), text(&r, "error-reason")), ("error", "Parallel session limit reached"));
    assert_eq!(stats(&mut c).await.legs.len(), 2, "the refused offers made no legs");
    // An offer the media plane refuses (no address for its stream) leaves nothing either.
    ng.ok(vec![("command", s("delete")), ("call-id", s("one"))]);
    let r = ng.request(&Value::dict(offer("three", "t", "v=0\r\nm=audio 4000 RTP/AVP 0\r\n", vec![])));
    assert_eq!(text(&r, "result"), "error", "{r:?}");
    assert!(stats(&mut c).await.legs.is_empty());
    assert_eq!(ng.ok(vec![("command", s("list"))]).get("calls"), Some(&Value::List(vec![])));
}

#[tokio::test]
async fn malformed_and_unknown_requests_get_errors_and_the_listener_carries_on() {
    let addr = free_udp_addr();
    let (mut mp, _c) = MediaPlane::start_with(SLOT_NG_BAD, &["--ng-listen", &addr.to_string()]).await;
    let mut ng = Ng::connect(addr, &mut mp);
    let cases: Vec<(&[u8], &str)> = vec![
        (b"c1 d7:command", "Could not decode dictionary"),
        (b"c2 i5e", "Could not decode dictionary"),
        (b"c3 d7:command3:flye", "Unrecognized command"),
        (b"c4 d7:command5:offere", "No call-id"),
        (b"c5 d7:command6:answer7:call-id1:x8:from-tag1:y3:sdp3:v=0e", "No to-tag"),
        (b"c6 d7:command5:query7:call-id7:unknowne", "Unknown call-id"),
    ];
    for (datagram, reason) in cases {
        ng.send_raw(datagram);
        let cookie = std::str::from_utf8(&datagram[..2]).expect("cookie");
        let r = ng.reply_to(cookie).unwrap_or_else(|| panic!("no reply to {:?}", String::from_utf8_lossy(datagram)));
        assert_eq!(text(&r, "result"), "error");
        assert!(text(&r, "error-reason").contains(reason), "{r:?} should say {reason:?}");
    }
    let mut deep = b"c7 ".to_vec();
    deep.extend(std::iter::repeat_n(b'l', 100_000));
    ng.send_raw(&deep[..60_000]);
    let r = ng.reply_to("c7").expect("reply to deep nesting");
    assert!(text(&r, "result") == "error" && text(&r, "error-reason").contains("nesting deeper"), "{r:?}");
    // A huge dictionary: thousands of keys the reader does not know, and no command.
    let huge = Value::Dict((0..3000).map(|i| (format!("key-{i:05}").into_bytes(), Value::str("value"))).collect());
    ng.send_raw(&frame("c8", &huge));
    let r = ng.reply_to("c8").expect("reply to a huge dictionary");
    assert_eq!((text(&r, "result"), text(&r, "error-reason")), ("error", "No command given"));
    ng.send_raw(b"no-cookie-at-all");
    ng.send_raw(b"");
    assert_eq!(text(&ng.request(&Value::dict([("command", s("ping"))])), "result"), "pong");
    mp.assert_running();
}

#[tokio::test]
async fn codec_transcode_flags_join_a_pcmu_caller_to_an_opus_callee() {
    let addr = free_udp_addr();
    let (mut mp, _c) = MediaPlane::start_with(SLOT_NG_TRANSCODE, &["--ng-listen", &addr.to_string()]).await;
    let mut ng = Ng::connect(addr, &mut mp);
    let (phone, app) = (udp(), udp());
    // As Kamailio sends `rtpengine_offer("codec-transcode=opus")`.
    let codec = Value::dict([("transcode", Value::strs(["opus"]))]);
    let r = ng.ok(offer("tc", "p", &phone_sdp(local(&phone), "0", ""), vec![("codec", codec)]));
    let to_app = text(&r, "sdp").to_owned();
    let opus_pt: u8 = to_app
        .lines()
        .find_map(|l| l.strip_prefix("a=rtpmap:").filter(|r| r.contains("opus/48000")).and_then(|r| r.split(' ').next()?.parse().ok()))
        .unwrap_or_else(|| panic!("opus offered: {to_app}"));
    let app_sdp = phone_sdp(local(&app), &opus_pt.to_string(), &format!("a=rtpmap:{opus_pt} opus/48000/2\r\n"));
    let to_phone = text(&ng.ok(answer("tc", "p", "a", &app_sdp)), "sdp").to_owned();
    assert!(to_phone.contains("RTP/AVP 0"), "the phone keeps PCMU: {to_phone}");

    let pcmu = CodecParams::new(CodecKind::Pcmu, 8000);
    let opus = CodecParams::new(CodecKind::Opus, 48_000);
    let speech = speech_like(8000, 2.0);
    let mut heard = Vec::new();
    for burst in rtp_packets(pcmu, 0, &speech, 0xC).chunks(10) {
        for p in burst {
            send(&phone, p, media_addr(&to_phone));
        }
        for _ in burst {
            let (p, _) = recv(&app, "transcoded media at the app");
            assert_eq!(p[1] & 0x7f, opus_pt);
            heard.push(p[12..].to_vec());
        }
    }
    let pcm = resample(&decode(opus, &heard), 48_000, 8000);
    let lag = best_lag(&speech, &pcm, 480);
    let snr = spectral_snr_db(&speech[2000..], &pcm[2000..], lag, 8000, 3800.0);
    assert!(snr >= 8.0, "PCMU→Opus over ng: spectral SNR {snr:.1} dB (bound 8 dB)");
}

#[tokio::test]
async fn play_media_and_play_dtmf_reach_the_chosen_party() {
    let dir = temp_path("ng-prompts");
    std::fs::create_dir_all(&dir).expect("prompt dir");
    std::fs::write(dir.join("hello.wav"), tone_wav(600.0, 0.4)).expect("write hello.wav");
    let addr = free_udp_addr();
    let (mut mp, _c) =
        MediaPlane::start_with(SLOT_NG_MEDIA, &["--ng-listen", &addr.to_string(), "--prompt-dir", dir.to_str().expect("utf8")]).await;
    let mut ng = Ng::connect(addr, &mut mp);
    let (alice, bob) = (udp(), udp());
    let events = "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n";
    let to_bob = media_addr(text(&ng.ok(offer("m", "a", &phone_sdp(local(&alice), "0 101", events), vec![])), "sdp"));
    let to_alice = media_addr(text(&ng.ok(answer("m", "a", "b", &phone_sdp(local(&bob), "0 101", events))), "sdp"));
    // Both sides speak once, so both legs have latched.
    send(&alice, &rtp(0, 0xA, 160), to_alice);
    recv(&bob, "alice at bob");
    send(&bob, &rtp(0, 0xB, 160), to_bob);
    recv(&alice, "bob at alice");

    // Bob hears the prompt (from the media plane, with nobody sending).
    let r = ng.ok(vec![("command", s("play media")), ("call-id", s("m")), ("from-tag", s("b")), ("file", s("hello.wav"))]);
    assert!((350..=450).contains(&int(&r, "duration")), "{r:?}");
    for _ in 0..5 {
        let (p, _) = recv(&bob, "the prompt at bob");
        assert_eq!(p[1] & 0x7f, 0, "in bob's codec");
    }
    ng.ok(vec![("command", s("stop media")), ("call-id", s("m")), ("from-tag", s("b"))]);
    // The prompt had 300 ms left: after the stop, at most what was in flight arrives.
    bob.set_read_timeout(Some(std::time::Duration::from_millis(100))).expect("timeout");
    let after = (0..10).filter(|_| bob.recv(&mut [0u8; 512]).is_ok()).count();
    assert!(after <= 2, "{after} packets after stop media");
    bob.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let r =
        ng.request(&Value::dict([("command", s("play media")), ("call-id", s("m")), ("from-tag", s("b")), ("file", s("../etc/passwd"))]));
    assert_eq!(text(&r, "result"), "error", "{r:?}");
    let r =
        ng.request(&Value::dict([("command", s("play media")), ("call-id", s("m")), ("from-tag", s("nobody")), ("file", s("hello.wav"))]));
    assert_eq!(text(&r, "result"), "error", "{r:?}");

    // Alice "presses" 5: bob gets it as a telephone-event.
    ng.ok(vec![("command", s("play DTMF")), ("call-id", s("m")), ("from-tag", s("a")), ("code", s("5")), ("duration", Value::Int(100))]);
    let mut saw = false;
    for _ in 0..40 {
        let (p, _) = recv(&bob, "the digit at bob");
        if p[1] & 0x7f == 101 {
            assert_eq!(p[12], 5, "event 5");
            saw = true;
            break;
        }
    }
    assert!(saw, "bob got a telephone-event for alice's digit");
    let _ = std::fs::remove_dir_all(&dir);
}

const SLOT_NG_ANSWERS: u16 = 39;
const SLOT_NG_TIMEOUT: u16 = 40;

#[tokio::test]
async fn a_second_answer_and_a_delayed_offer_are_answered() {
    let addr = free_udp_addr();
    let (mut mp, mut c) = MediaPlane::start_with(SLOT_NG_ANSWERS, &["--ng-listen", &addr.to_string()]).await;
    let mut ng = Ng::connect(addr, &mut mp);
    let (alice, early, bob) = (udp(), udp(), udp());
    let to_bob = media_addr(text(&ng.ok(offer("f", "a", &phone_sdp(local(&alice), "0", ""), vec![])), "sdp"));
    // A 183 with early media from one fork, then the 200 of another with its own SDP.
    ng.ok(answer("f", "a", "fork-1", &phone_sdp(local(&early), "0", "")));
    let r = ng.ok(answer("f", "a", "fork-2", &phone_sdp(local(&bob), "0", "")));
    let to_alice = media_addr(text(&r, "sdp"));
    send(&alice, &rtp(1, 0xA, 160), to_alice);
    let (p, _) = recv(&bob, "alice at the fork that answered");
    assert_eq!(seq_of(&p), 1);
    send(&bob, &rtp(2, 0xB, 160), to_bob);
    assert_eq!(seq_of(&recv(&alice, "bob at alice").0), 2);
    let q = ng.ok(vec![("command", s("query")), ("call-id", s("f"))]);
    assert!(q.get("tags").and_then(|t| t.get("fork-2")).is_some(), "the answering fork's tag: {q:?}");

    // Delayed offer, as Kamailio sends it: the offer comes in the 200 (from-tag: the callee's,
    // to-tag: the caller's), the answer in the ACK (the same tags).
    let (caller, callee) = (udp(), udp());
    let r = ng.ok(offer("d", "callee", &phone_sdp(local(&callee), "0", ""), vec![("to-tag", s("caller"))]));
    let to_caller = media_addr(text(&r, "sdp"));
    let r = ng.ok(answer("d", "callee", "caller", &phone_sdp(local(&caller), "0", "")));
    let to_callee = media_addr(text(&r, "sdp"));
    send(&caller, &rtp(3, 0xC, 160), to_caller);
    assert_eq!(seq_of(&recv(&callee, "caller at callee").0), 3);
    send(&callee, &rtp(4, 0xD, 160), to_callee);
    assert_eq!(seq_of(&recv(&caller, "callee at caller").0), 4);
    assert_eq!(stats(&mut c).await.legs.len(), 4, "two legs per call, none for the second answer");

    // A call has at most 8 parties.
    for i in 0..7 {
        ng.ok(offer("many", &format!("t{i}"), &phone_sdp(local(&caller), "0", ""), vec![("to-tag", s("x"))]));
    }
    let r = ng.request(&Value::dict(offer("many", "t8", &phone_sdp(local(&caller), "0", ""), vec![("to-tag", s("x"))])));
    assert!(text(&r, "error-reason").contains("Too many parties"), "{r:?}");
}

#[tokio::test]
async fn a_call_without_media_ends_after_the_timeout_and_a_call_with_media_stays() {
    let addr = free_udp_addr();
    let (mut mp, mut c) = MediaPlane::start_with(SLOT_NG_TIMEOUT, &["--ng-listen", &addr.to_string(), "--media-timeout-secs", "1"]).await;
    let mut ng = Ng::connect(addr, &mut mp);
    let (a, b) = (udp(), udp());
    for call in ["quiet", "talking"] {
        ng.ok(offer(call, "a", &phone_sdp(local(&a), "0", ""), vec![]));
        ng.ok(answer(call, "a", "b", &phone_sdp(local(&b), "0", "")));
    }
    let q = ng.ok(vec![("command", s("query")), ("call-id", s("talking"))]);
    let to_b = q.get("tags").and_then(|t| t.get("a")).and_then(|m| m.get("medias")).expect("medias");
    let Value::List(medias) = to_b else { panic!("{to_b:?}") };
    let port = medias[0]
        .get("streams")
        .and_then(|s| if let Value::List(l) = s { l.first() } else { None })
        .map(|st| int(st, "local port"))
        .expect("port");
    let talking_port: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    // "talking" gets a packet every 100 ms for 2.5 s; "quiet" gets nothing.
    for i in 0..25u16 {
        send(&a, &rtp(i, 0xA, 160), talking_port);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let l = ng.ok(vec![("command", s("list"))]);
    assert_eq!(l.get("calls"), Some(&Value::strs(["talking"])), "the quiet call ended after 1 s; the talking one did not");
    let legs = stats(&mut c).await.legs;
    assert_eq!(legs.len(), 2, "the quiet call's legs are deleted: {legs:?}");
    let st = ng.ok(vec![("command", s("statistics"))]);
    assert_eq!(int(st.get("statistics").and_then(|s| s.get("totalstatistics")).expect("totals"), "timeoutsessions"), 1);
}

const SLOT_NG_RECORD: u16 = 41;

#[tokio::test]
async fn record_call_and_start_recording_write_the_call_to_a_stereo_file() {
    let dir = temp_path("ng-recordings");
    std::fs::create_dir_all(&dir).expect("recording dir");
    let addr = free_udp_addr();
    let (mut mp, _c) =
        MediaPlane::start_with(SLOT_NG_RECORD, &["--ng-listen", &addr.to_string(), "--recording-dir", dir.to_str().expect("utf8")]).await;
    let mut ng = Ng::connect(addr, &mut mp);
    let (alice, bob) = (udp(), udp());
    // As Kamailio sends `rtpengine_manage("record-call=yes")`.
    let to_bob = media_addr(text(&ng.ok(offer("rec/1", "a", &phone_sdp(local(&alice), "0", ""), vec![("record-call", s("yes"))])), "sdp"));
    let to_alice = media_addr(text(&ng.ok(answer("rec/1", "a", "b", &phone_sdp(local(&bob), "0", ""))), "sdp"));
    for i in 0..25u16 {
        send(&alice, &rtp(i, 0xA, 160), to_alice);
        send(&bob, &rtp(i, 0xB, 160), to_bob);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    ng.ok(vec![("command", s("delete")), ("call-id", s("rec/1"))]);
    // The file is finished once the call's legs are gone.
    let wav = eventually("the call's recording to be written", POLL_TIMEOUT, || {
        let dir = dir.join("ng");
        async move {
            let name = std::fs::read_dir(&dir)
                .map_err(|e| e.to_string())?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.to_string_lossy().ends_with("-rec_1.wav"));
            let bytes = name.map(std::fs::read).transpose().map_err(|e| e.to_string())?.ok_or("no file yet")?;
            if bytes.len() < 44 {
                return Err(format!("{} bytes: no header yet", bytes.len()));
            }
            let data = u32::from_le_bytes([bytes[40], bytes[41], bytes[42], bytes[43]]) as usize;
            if data > 0 && data == bytes.len() - 44 {
                Ok(bytes)
            } else {
                Err(format!("{} bytes, header says {data}", bytes.len()))
            }
        }
    })
    .await;
    assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 2, "one channel per party");
    assert!(wav.len() > 44 + 4 * 8000 * 4 / 10, "about half a second of both parties: {} bytes", wav.len());

    // start recording / stop recording on another call.
    ng.ok(offer("rec-2", "a", &phone_sdp(local(&alice), "0", ""), vec![]));
    ng.ok(answer("rec-2", "a", "b", &phone_sdp(local(&bob), "0", "")));
    ng.ok(vec![("command", s("start recording")), ("call-id", s("rec-2"))]);
    ng.ok(vec![("command", s("stop recording")), ("call-id", s("rec-2"))]);
    let files = std::fs::read_dir(dir.join("ng")).expect("dir").count();
    assert_eq!(files, 2, "the second call's file exists too");
    let _ = std::fs::remove_dir_all(&dir);
}
