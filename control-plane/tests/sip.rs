//! End-to-end tests of the real `control-plane` binary (and the real `media-plane` for calls):
//! digest registration from our own SHA-256 client and from sipp (MD5), calls between two sipp
//! instances with RTP relayed by the media plane, failure paths (busy, cancel, not registered,
//! unknown), and malformed SIP.
//!
//! sipp tests skip with a message when `sipp` is not installed, unless `REQUIRE_SIPP=1` (CI sets
//! it, after `scripts/setup.sh` installed sip-tester), in which case they fail.
//! Every test uses its own "slot" of ports (SIP 21000+, RTP 22000+, sipp 24000+), so they run in
//! parallel.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sip_core::digest::{authorization, ha1, parse_challenge, Algorithm};

mod common;
use common::stack::{exchange, register_callee, request, sipp, sipp_available, spawn_sipp, udp_socket, wait_bounded, Stack};
use common::{counter, repo_root, self_signed, start_control_plane, temp_dir, terminate, ProcGroup, BIN, IO_TIMEOUT};

fn status(response: &str) -> u16 {
    response.get(8..11).and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn header_values<'a>(response: &'a str, name: &str) -> Vec<&'a str> {
    response.lines().filter_map(|l| l.split_once(':')).filter(|(n, _)| n.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()).collect()
}

/// REGISTERs alice with `password`, answering the one challenge, which must be of `algorithm`;
/// returns the status and the final response.
fn register_with(stack: &Stack, algorithm: Algorithm, password: &str, call_id: &str) -> (u16, String) {
    let socket = udp_socket();
    let contact = format!("Contact: <sip:alice@{}>\r\nExpires: 600\r\n", socket.local_addr().expect("addr"));
    let first = exchange(&socket, stack.sip, &request("REGISTER", "sip:sip.test", &socket, call_id, 1, &contact));
    assert_eq!(status(&first), 401, "unauthenticated REGISTER: {first}");
    let challenges: Vec<_> = header_values(&first, "WWW-Authenticate").into_iter().filter_map(|v| parse_challenge(v).ok()).collect();
    assert_eq!(challenges.len(), 1, "one challenge per 401: {first}");
    let challenge = &challenges[0];
    assert_eq!(challenge.algorithm, algorithm, "{first}");
    let stored = ha1(algorithm.hash(), "alice", &challenge.realm, password);
    let credentials = authorization(challenge, "alice", &stored, "REGISTER", "sip:sip.test", "0a4f113b", 1);
    let extra = format!("{contact}Authorization: {credentials}\r\n");
    let second = exchange(&socket, stack.sip, &request("REGISTER", "sip:sip.test", &socket, call_id, 2, &extra));
    (status(&second), second)
}

/// Runs `control-plane subscriber …` against the stack's store.
fn subscriber_cli(stack: &Stack, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["--config", stack.config.to_str().expect("utf8 path"), "subscriber"])
        .args(args)
        .output()
        .expect("run control-plane subscriber")
}

#[test]
fn md5_is_challenged_by_default_and_a_subscriber_set_to_sha256_registers_with_sha256_own_client() {
    // sipp 3.6.1 computes MD5 only, so SHA-256 is exercised with our own client.
    let stack = Stack::start(0, false);
    let (code, response) = register_with(&stack, Algorithm::Md5, "secret", "md5ok");
    assert_eq!(code, 200, "{response}");
    assert!(header_values(&response, "Contact").iter().any(|c| c.contains("expires=600")), "{response}");

    let out = subscriber_cli(&stack, &["set-auth", "--user", "alice", "--domain", "sip.test", "--algorithm", "SHA-256"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list = subscriber_cli(&stack, &["list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("alice@sip.test\tSHA-256"), "{list:?}");
    let (code, response) = register_with(&stack, Algorithm::Sha256, "secret", "sha256ok");
    assert_eq!(code, 200, "{response}");
    let (code, response) = register_with(&stack, Algorithm::Sha256, "wrong", "sha256bad");
    assert_eq!(code, 403, "{response}");
    let out = subscriber_cli(&stack, &["set-auth", "--user", "nobody", "--domain", "sip.test", "--algorithm", "MD5"]);
    assert_eq!(out.status.code(), Some(2), "unknown subscriber");
}

#[test]
fn register_over_tcp_is_challenged_on_the_same_connection() {
    use std::io::{Read, Write};
    let stack = Stack::start(1, false);
    let mut stream = std::net::TcpStream::connect(stack.sip).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let local = stream.local_addr().expect("addr");
    let message = format!(
        "REGISTER sip:sip.test SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bKtcp1\r\nMax-Forwards: 70\r\n\
         From: <sip:bob@sip.test>;tag=1\r\nTo: <sip:bob@sip.test>\r\nCall-ID: tcp1\r\nCSeq: 1 REGISTER\r\n\
         Contact: <sip:bob@{local};transport=tcp>\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(message.as_bytes()).expect("write");
    let mut buf = vec![0u8; 8192];
    let n = stream.read(&mut buf).expect("read a response over the same connection");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("SIP/2.0 401"), "{text}");
    // RFC 5626 keep-alive: a double-CRLF ping gets a CRLF pong on the same connection.
    stream.write_all(b"\r\n\r\n").expect("ping");
    let n = stream.read(&mut buf).expect("pong");
    assert_eq!(&buf[..n], b"\r\n");
}

#[test]
fn expires_below_minimum_gets_423_with_min_expires() {
    let stack = Stack::start(2, false);
    let socket = udp_socket();
    let contact = "Contact: <sip:alice@127.0.0.1:9>\r\nExpires: 5\r\n";
    let first = exchange(&socket, stack.sip, &request("REGISTER", "sip:sip.test", &socket, "brief", 1, contact));
    let challenge = header_values(&first, "WWW-Authenticate").into_iter().find_map(|v| parse_challenge(v).ok()).expect("a challenge");
    let stored = ha1(challenge.algorithm.hash(), "alice", &challenge.realm, "secret");
    let credentials = authorization(&challenge, "alice", &stored, "REGISTER", "sip:sip.test", "c", 1);
    let extra = format!("{contact}Authorization: {credentials}\r\n");
    let second = exchange(&socket, stack.sip, &request("REGISTER", "sip:sip.test", &socket, "brief", 2, &extra));
    assert_eq!(status(&second), 423, "{second}");
    assert_eq!(header_values(&second, "Min-Expires"), vec!["60"]);
}

#[test]
fn malformed_sip_is_answered_400_or_dropped_and_the_server_keeps_serving() {
    let mut stack = Stack::start(3, false);
    let socket = udp_socket();
    socket.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
    let local = socket.local_addr().expect("addr");
    let via = format!("Via: SIP/2.0/UDP {local};branch=z9hG4bKbad");
    // (message, whether a 400 is expected: a request with Via, From, To, Call-ID and CSeq to copy;
    // without them no valid response can be built, so it is dropped and counted)
    let cases: Vec<(String, bool)> = vec![
        (format!("OPTIONS sip:sip.test SIP/2.0\r\n{via}1\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"), false),
        (format!("OPTIONS sip:sip.test SIP/2.0\r\n{via}2\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 999\r\n\r\n"), true),
        (format!("OPTIONS sip:sip.test SIP/2.0\r\n{via}3\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: abc OPTIONS\r\nContent-Length: 0\r\n\r\n"), true),
        (format!("OPTIONS sip:sip.test SIP/2.0\r\n{via}4\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"), true),
        ("garbage\r\n\r\n".to_owned(), false),
        ("\u{0}\u{1}\u{2}\u{ff}".to_owned(), false),
        ("SIP/2.0 200 OK\r\n\r\n".to_owned(), false),
        (format!("INVITE sip:bob@sip.test SIP/2.0\r\n{via}5\r\n{}\r\n\r\n", "X: y\r\n".repeat(2000)), false),
    ];
    let mut answered = 0;
    for (message, expect_400) in &cases {
        socket.send_to(message.as_bytes(), stack.sip).expect("send");
        let mut buf = vec![0u8; 65_535];
        match socket.recv_from(&mut buf) {
            Ok((n, _)) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(text.starts_with("SIP/2.0 400"), "unexpected answer to {message:?}: {text}");
                answered += 1;
            }
            Err(_) => assert!(!expect_400, "no 400 for {message:?}"),
        }
    }
    assert!(answered >= 3, "only {answered} 400s");
    // Still serving.
    let options = request("OPTIONS", "sip:sip.test", &socket, "after", 1, "");
    socket.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    assert_eq!(status(&exchange(&socket, stack.sip, &options)), 200);
    let counters = stack.stop();
    let malformed = counter(&counters, "malformed");
    assert!(malformed >= cases.len() as u64 - 1, "malformed counter {malformed} in {counters}");
}

// ---- sipp ----

#[test]
fn sipp_registers_with_md5_digest_and_a_wrong_password_is_refused() {
    if !sipp_available() {
        return;
    }
    let stack = Stack::start(4, false);
    register_callee(&stack, "csv/alice.csv", 24_040);
    let status = sipp(
        &stack,
        &["-sf", "register-wrong-password.xml", "-inf", "csv/alice-wrong-password.csv", "-auth_uri", "sip.test", "-p", "24041", "-m", "1"],
        Duration::from_secs(20),
    );
    assert!(status.success(), "register-wrong-password.xml expected 401/403: {status:?}");
}

#[test]
fn sipp_call_relays_rtp_both_ways_through_the_media_plane_and_releases_its_legs() {
    if !sipp_available() {
        return;
    }
    let mut stack = Stack::start(5, true);
    register_callee(&stack, "csv/bob.csv", 24_050);
    let mut uas = spawn_sipp(&stack, &["-sf", "uas-answer.xml", "-p", "24050", "-mp", "24052", "-rtp_echo", "-m", "1"]);
    std::thread::sleep(Duration::from_millis(300));
    let uac = sipp(
        &stack,
        &[
            "-sf",
            "uac-call.xml",
            "-inf",
            "csv/alice-calls-bob.csv",
            "-auth_uri",
            "bob@sip.test",
            "-p",
            "24051",
            "-mp",
            "24056",
            "-d",
            "2000",
            "-m",
            "1",
        ],
        Duration::from_secs(40),
    );
    let uas = wait_bounded(&mut uas, Duration::from_secs(20));
    assert!(uac.success() && uas.success(), "caller {uac:?}, callee {uas:?}; log: {}", stack.log());
    let (legs, forwarded) = stack.media_totals();
    assert!(forwarded >= 100, "the media plane forwarded only {forwarded} packets for a 2 s call");
    assert_eq!(legs, 0, "legs left in the media plane after the call");
    let counters = stack.stop();
    assert!(counters.contains("\"calls_completed\":1"), "{counters}");
    assert!(counters.contains("\"media_allocations\":1,\"media_allocation_failures\":0,\"media_releases\":1"), "{counters}");
}

#[test]
fn busy_cancelled_unregistered_and_unknown_callees_fail_cleanly_without_leaking_legs() {
    if !sipp_available() {
        return;
    }
    let mut stack = Stack::start(6, true);
    register_callee(&stack, "csv/bob.csv", 24_060);

    // Busy: 486 relayed.
    let mut uas = spawn_sipp(&stack, &["-sf", "uas-busy.xml", "-p", "24060", "-m", "1"]);
    std::thread::sleep(Duration::from_millis(300));
    let uac = sipp(
        &stack,
        &[
            "-sf",
            "uac-call-fail.xml",
            "-inf",
            "csv/alice-calls-bob.csv",
            "-auth_uri",
            "bob@sip.test",
            "-set",
            "expect",
            "486",
            "-p",
            "24061",
            "-m",
            "1",
        ],
        Duration::from_secs(30),
    );
    assert!(uac.success() && wait_bounded(&mut uas, Duration::from_secs(20)).success(), "busy; log: {}", stack.log());

    // Cancel while ringing: 487, and the callee sees the CANCEL.
    let mut uas = spawn_sipp(&stack, &["-sf", "uas-noanswer.xml", "-p", "24060", "-m", "1"]);
    std::thread::sleep(Duration::from_millis(300));
    let uac = sipp(
        &stack,
        &["-sf", "uac-cancel.xml", "-inf", "csv/alice-calls-bob.csv", "-auth_uri", "bob@sip.test", "-d", "500", "-p", "24062", "-m", "1"],
        Duration::from_secs(30),
    );
    assert!(uac.success() && wait_bounded(&mut uas, Duration::from_secs(20)).success(), "cancel; log: {}", stack.log());

    // carol is a subscriber but not registered: 480. nobody is unknown: 404.
    for (csv, uri, code) in
        [("csv/alice-calls-carol.csv", "carol@sip.test", "480"), ("csv/alice-calls-nobody.csv", "nobody@sip.test", "404")]
    {
        let uac = sipp(
            &stack,
            &["-sf", "uac-call-fail.xml", "-inf", csv, "-auth_uri", uri, "-set", "expect", code, "-p", "24063", "-m", "1"],
            Duration::from_secs(30),
        );
        assert!(uac.success(), "{uri} expected {code}; log: {}", stack.log());
    }

    let (legs, _) = stack.media_totals();
    assert_eq!(legs, 0, "legs left in the media plane");
    let counters = stack.stop();
    assert!(counters.contains("\"media_allocations\":2,\"media_allocation_failures\":0,\"media_releases\":2"), "{counters}");
    assert!(counters.contains("\"calls_cancelled\":1"), "{counters}");
    let _ = &stack.config;
}

#[test]
fn a_bad_configuration_value_stops_the_start_with_exit_2_naming_the_key() {
    let dir = temp_dir("7");
    let config = dir.join("bad.toml");
    std::fs::write(&config, "[sip]\ndomains = [\"sip.test\"]\n[registrar]\nmin_expires = 600\nmax_expires = 60\n").expect("write");
    let out = Command::new(BIN).args(["--config", config.to_str().expect("utf8 path")]).output().expect("run control-plane");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("registrar.max_expires"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- TLS ----

#[test]
fn register_over_tls_is_challenged_and_accepted_on_the_same_connection() {
    use std::io::{Read, Write};
    let dir = temp_dir("tls");
    let (cert, key) = self_signed(&dir);
    let sip: SocketAddr = "127.0.0.1:21095".parse().expect("addr");
    let config = dir.join("cp.toml");
    std::fs::write(
        &config,
        format!(
            "[sip]\nlisten = [\"udp:127.0.0.1:21094\", \"tls:{sip}\"]\ndomains = [\"sip.test\"]\n\
             [sip.tls]\ncertificate = \"{}\"\nkey = \"{}\"\n[store]\npath = \"{}\"\n",
            cert.display(),
            key.display(),
            dir.join("cp.db").display()
        ),
    )
    .expect("write config");
    let add = Command::new(BIN)
        .args([
            "--config",
            config.to_str().expect("utf8"),
            "subscriber",
            "add",
            "--user",
            "alice",
            "--domain",
            "sip.test",
            "--password",
            "secret",
        ])
        .output()
        .expect("subscriber add");
    assert!(add.status.success());
    let mut cp = start_control_plane(&dir, &config);
    // A client that trusts only the server's certificate.
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read_to_string(&cert).expect("read cert");
    let der: Vec<u8> = {
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64_decode(&b64)
    };
    roots.add(rustls::pki_types::CertificateDer::from(der)).expect("add root");
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name").to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    let tcp = loop {
        match std::net::TcpStream::connect(sip) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("connect {sip}: {e}; log: {}", std::fs::read_to_string(dir.join("cp.log")).unwrap_or_default()),
        }
    };
    tcp.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let local = tcp.local_addr().expect("addr");
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(client), server_name).expect("client");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let register = |cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:sip.test SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bKtls{cseq}\r\nMax-Forwards: 70\r\n\
             From: <sips:alice@sip.test>;tag=1\r\nTo: <sips:alice@sip.test>\r\nCall-ID: tls1\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sips:alice@{local};transport=tls>\r\nExpires: 600\r\n{auth}Content-Length: 0\r\n\r\n"
        )
    };
    let read_response = |tls: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>| {
        let mut buf = vec![0u8; 8192];
        let n = tls.read(&mut buf).expect("a response over the TLS connection");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    tls.write_all(register(1, "").as_bytes()).expect("write");
    let first = read_response(&mut tls);
    assert!(first.starts_with("SIP/2.0 401"), "{first}");
    let challenge = header_values(&first, "WWW-Authenticate").into_iter().find_map(|v| parse_challenge(v).ok()).expect("challenge");
    let stored = ha1(challenge.algorithm.hash(), "alice", &challenge.realm, "secret");
    let credentials = authorization(&challenge, "alice", &stored, "REGISTER", "sip:sip.test", "0a4f113b", 1);
    tls.write_all(register(2, &format!("Authorization: {credentials}\r\n")).as_bytes()).expect("write");
    let second = read_response(&mut tls);
    assert!(second.starts_with("SIP/2.0 200"), "{second}");
    terminate(&mut cp);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Standard base64 (the certificate's PEM body), for the test's trust store.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = text.bytes().filter(|&c| c != b'=' && !c.is_ascii_whitespace()).map(value).collect();
    bytes
        .chunks(4)
        .flat_map(|c| {
            let n = c.iter().enumerate().fold(0u32, |acc, (i, &v)| acc | (u32::from(v) << (18 - 6 * i)));
            let out = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.into_iter().take(c.len().saturating_sub(1))
        })
        .collect()
}

// ---- an edge proxy in front of the registrar (RFC 3327 Path) ----

/// Kamailio is needed for this test; it skips with a message when missing, unless
/// `REQUIRE_KAMAILIO=1`.
fn kamailio_available() -> bool {
    common::tool_available("kamailio", "-v", "REQUIRE_KAMAILIO", "apt-get install kamailio, or bash scripts/setup.sh")
}

#[test]
fn phone_registered_through_a_kamailio_edge_proxy_is_called_through_it_by_its_path() {
    if !sipp_available() || !kamailio_available() {
        return;
    }
    let mut stack = Stack::start(7, true);
    let edge = "127.0.0.1:24090";
    let run_dir = stack.dir.join("kamailio");
    std::fs::create_dir_all(&run_dir).expect("run dir");
    let mut kamailio = ProcGroup::spawn(
        Command::new("kamailio")
            .args(["-f", repo_root().join("scripts/kamailio/edge.cfg").to_str().expect("utf8"), "-DD", "-E", "-m", "32", "-M", "8"])
            .args(["-Y", run_dir.to_str().expect("utf8"), "-w", run_dir.to_str().expect("utf8")])
            .args(["-l", &format!("udp:{edge}"), "-A", &format!("REGISTRAR=\"sip:{}\"", stack.sip)])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(stack.dir.join("kamailio.log")).expect("log file")),
    )
    .expect("start kamailio");
    let edge_log = || std::fs::read_to_string(stack.dir.join("kamailio.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Its UDP socket is bound once it has sized the receive buffer.
    while !edge_log().contains("SO_RCVBUF is finally") {
        assert!(kamailio.child.try_wait().expect("wait kamailio").is_none(), "kamailio stopped: {}", edge_log());
        assert!(Instant::now() < deadline, "kamailio did not start within 10 s: {}", edge_log());
        std::thread::sleep(Duration::from_millis(50));
    }

    // bob registers through the edge proxy, which adds itself in Path.
    let status = wait_bounded(
        &mut Command::new("sipp")
            .arg(edge)
            .args(["-sf", "register.xml", "-inf", "csv/bob.csv", "-auth_uri", "sip.test", "-p", "24091", "-m", "1"])
            .args(["-nostdin", "-timeout", "20s", "-timeout_error"])
            .current_dir(repo_root().join("scripts/sipp"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sipp"),
        Duration::from_secs(25),
    );
    assert!(status.success(), "bob's REGISTER through the edge: {status:?}; edge log: {}", edge_log());

    // alice calls bob at the control plane; the edge refuses any initial request that does not
    // carry a Route naming it, so the call connects only if the registrar routed it by the Path.
    let mut uas = Command::new("sipp")
        .arg(edge)
        .args(["-sf", "uas-answer.xml", "-p", "24091", "-mp", "24094", "-rtp_echo", "-m", "1"])
        .args(["-nostdin", "-timeout", "40s", "-timeout_error"])
        .current_dir(repo_root().join("scripts/sipp"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sipp");
    std::thread::sleep(Duration::from_millis(300));
    let uac = sipp(
        &stack,
        &[
            "-sf",
            "uac-call.xml",
            "-inf",
            "csv/alice-calls-bob.csv",
            "-auth_uri",
            "bob@sip.test",
            "-p",
            "24092",
            "-mp",
            "24084",
            "-d",
            "2000",
            "-m",
            "1",
        ],
        Duration::from_secs(40),
    );
    let uas = wait_bounded(&mut uas, Duration::from_secs(20));
    let log = edge_log();
    assert!(uac.success() && uas.success(), "caller {uac:?}, callee {uas:?}; control plane: {}; edge: {log}", stack.log());
    assert!(log.contains("edge: INVITE routed via Path"), "the INVITE did not come through the edge's Path route: {log}");
    assert!(!log.contains("without Route refused"), "{log}");
    let (legs, forwarded) = stack.media_totals();
    assert!(forwarded >= 100, "the media plane forwarded only {forwarded} packets for a 2 s call");
    assert_eq!(legs, 0, "legs left in the media plane after the call");
    let counters = stack.stop();
    assert!(counters.contains("\"calls_completed\":1"), "{counters}");
}

// ---- abuse limits ----

/// CPU seconds (user + system) of process `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

#[test]
fn a_register_flood_from_one_source_is_cut_off_while_another_sources_call_succeeds() {
    if !sipp_available() {
        return;
    }
    // Nothing exempt: the phones below are limited like anyone, at their own modest rate.
    let mut stack = Stack::start_with(8, true, "[limits]\nexempt = []\n");
    let cp_pid = stack.cp.as_ref().map(|p| p.child.id()).expect("control plane");

    // 20,000 REGISTER/s for 2 s from 127.0.0.2 (bounded: 40,000 messages), counting answers.
    let flooder = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    flooder.set_read_timeout(Some(Duration::from_millis(50))).expect("timeout");
    let target = stack.sip;
    let receiver = flooder.try_clone().expect("clone");
    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let answers = {
        let flooding = flooding.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut answers = 0u64;
            while flooding.load(std::sync::atomic::Ordering::Relaxed) {
                if receiver.recv_from(&mut buf).is_ok() {
                    answers += 1;
                }
            }
            answers
        })
    };
    let cpu_before = cpu_seconds(cp_pid);
    let flood = std::thread::spawn(move || {
        let start = Instant::now();
        let mut sent = 0u32;
        while sent < 40_000 && start.elapsed() < Duration::from_secs(4) {
            // 200 every 10 ms.
            for _ in 0..200 {
                let register = format!(
                    "REGISTER sip:sip.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5999;branch=z9hG4bKflood{sent}\r\n\
                     Max-Forwards: 70\r\nFrom: <sip:alice@sip.test>;tag=f\r\nTo: <sip:alice@sip.test>\r\n\
                     Call-ID: flood-{sent}\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@127.0.0.2:5999>\r\n\
                     Content-Length: 0\r\n\r\n"
                );
                let _ = flooder.send_to(register.as_bytes(), target);
                sent += 1;
            }
            let next = start + Duration::from_millis(u64::from(sent / 200) * 10);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        (sent, start.elapsed())
    });

    // Meanwhile bob registers from 127.0.0.3 and alice calls him from 127.0.0.4.
    let status = sipp(
        &stack,
        &["-sf", "register.xml", "-inf", "csv/bob.csv", "-auth_uri", "sip.test", "-i", "127.0.0.3", "-p", "24080", "-m", "1"],
        Duration::from_secs(20),
    );
    assert!(status.success(), "bob's REGISTER during the flood: {status:?}");
    let mut uas = spawn_sipp(&stack, &["-sf", "uas-answer.xml", "-i", "127.0.0.3", "-p", "24080", "-mp", "24082", "-rtp_echo", "-m", "1"]);
    std::thread::sleep(Duration::from_millis(300));
    let uac = sipp(
        &stack,
        &[
            "-sf",
            "uac-call.xml",
            "-inf",
            "csv/alice-calls-bob.csv",
            "-auth_uri",
            "bob@sip.test",
            "-i",
            "127.0.0.4",
            "-p",
            "24081",
            "-mp",
            "24086",
            "-d",
            "1000",
            "-m",
            "1",
        ],
        Duration::from_secs(40),
    );
    let uas = wait_bounded(&mut uas, Duration::from_secs(20));
    let (sent, elapsed) = flood.join().expect("flood thread");
    let cpu = cpu_seconds(cp_pid) - cpu_before;
    std::thread::sleep(Duration::from_millis(200));
    flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    let answered = answers.join().expect("receiver thread");
    assert!(uac.success() && uas.success(), "the call during the flood: caller {uac:?}, callee {uas:?}; log: {}", stack.log());
    let counters = stack.stop();
    eprintln!(
        "flood: {sent} REGISTERs in {:.2} s ({:.0}/s), {answered} answered; control plane CPU {cpu:.2} s; {counters}",
        elapsed.as_secs_f64(),
        f64::from(sent) / elapsed.as_secs_f64()
    );
    // The burst (200) is answered (401), then nothing: the source is banned.
    assert!(answered <= 250, "{answered} of the flood's {sent} REGISTERs were answered");
    let number = |key: &str| counter(&counters, key);
    assert!(number("rate_limited") + 250 >= u64::from(sent), "{counters}");
    assert_eq!(number("sources_banned"), 1, "only the flooder is banned: {counters}");
    assert!(counters.contains("\"calls_completed\":1"), "{counters}");
}
