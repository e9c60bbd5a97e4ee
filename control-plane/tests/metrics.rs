//! The control plane's Prometheus endpoint, scraped after SIP traffic.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

mod common;
use common::{metric as value, start_control_plane, temp_dir, terminate};

const SIP: &str = "127.0.0.1:27060";
const METRICS: &str = "127.0.0.1:27092";

fn scrape() -> Option<String> {
    common::scrape(METRICS)
}

#[test]
fn metrics_count_sip_requests_by_method_and_responses_by_class() {
    let dir = temp_dir("metrics");
    let config = dir.join("cp.toml");
    std::fs::write(
        &config,
        format!(
            "[sip]\nlisten = [\"udp:{SIP}\"]\ndomains = [\"sip.test\"]\n[metrics]\nlisten = \"{METRICS}\"\n\
             [media]\ngrpc = \"http://127.0.0.1:27090\"\n[store]\npath = \"{}\"\n",
            dir.join("cp.db").display()
        ),
    )
    .expect("config");
    let mut cp = start_control_plane(&dir, &config);
    let deadline = Instant::now() + Duration::from_secs(10);
    while scrape().is_none() {
        assert!(Instant::now() < deadline, "no /metrics: {}", std::fs::read_to_string(dir.join("cp.log")).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Two OPTIONS (200) and a REGISTER without credentials (401).
    let phone = UdpSocket::bind("127.0.0.1:0").expect("bind");
    phone.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let port = phone.local_addr().expect("addr").port();
    for (i, method) in ["OPTIONS", "OPTIONS", "REGISTER"].iter().enumerate() {
        let request = format!(
            "{method} sip:sip.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKm{i}\r\nMax-Forwards: 70\r\n\
             From: <sip:alice@sip.test>;tag=t{i}\r\nTo: <sip:alice@sip.test>\r\nCall-ID: m{i}\r\nCSeq: 1 {method}\r\n\
             Contact: <sip:alice@127.0.0.1:{port}>\r\nContent-Length: 0\r\n\r\n"
        );
        phone.send_to(request.as_bytes(), SIP).expect("send");
        let mut buf = [0u8; 4096];
        phone.recv_from(&mut buf).expect("an answer");
    }
    let body = scrape().expect("scrape");
    assert_eq!(value(&body, "sip_requests_received_total{method=\"OPTIONS\"}"), Some(2), "{body}");
    assert_eq!(value(&body, "sip_requests_received_total{method=\"REGISTER\"}"), Some(1));
    assert_eq!(value(&body, "sip_responses_sent_total{class=\"2xx\"}"), Some(2));
    assert_eq!(value(&body, "sip_responses_sent_total{class=\"4xx\"}"), Some(1));
    assert_eq!(value(&body, "sip_challenges_total"), Some(1));
    assert_eq!(value(&body, "sip_registered_contacts"), Some(0));
    assert_eq!(value(&body, "sip_calls_active"), Some(0));
    assert!(body.ends_with("# EOF\n"));
    // Every series the shipped Grafana dashboard queries exists.
    let dashboard = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/grafana/control-plane.json")).expect("dashboard");
    let mut names: Vec<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("sip_") || w.starts_with("media_plane_"))
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 6, "{names:?}");
    for name in names {
        assert!(body.lines().any(|l| l.starts_with(name)), "the dashboard's {name} is not in the metrics");
    }
    terminate(&mut cp);
    let _ = std::fs::remove_dir_all(&dir);
}
