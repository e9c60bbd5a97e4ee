//! The media plane's Prometheus endpoint, scraped over plain HTTP while it relays.

use std::io::{Read, Write};
use std::net::TcpStream;

use proto::v1;

mod common;
use common::*;

const SLOT_METRICS: u16 = 26;

/// `GET /metrics` from `addr`: the status line and the body.
fn scrape(addr: std::net::SocketAddr) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to /metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").expect("request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

/// The sum over cores of `metric` (with any further label filter `with`).
fn total(body: &str, metric: &str, with: &str) -> u64 {
    body.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(with))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn metrics_count_legs_bridges_packets_and_drops_by_reason() {
    let addr = free_tcp_addr();
    let ng = local(&udp());
    let (_mp, mut c) = MediaPlane::start_with(SLOT_METRICS, &["--metrics-listen", &addr.to_string(), "--ng-listen", &ng.to_string()]).await;
    let (a_sock, b_sock) = (udp(), udp());
    let a = simple_leg(&mut c, "m", Some(local(&a_sock))).await;
    let b = simple_leg(&mut c, "m", Some(local(&b_sock))).await;
    bridge(&mut c, &a, &b).await;
    for seq in 0..10 {
        send(&a_sock, &rtp(seq, 0xA, 160), a.local);
        recv(&b_sock, "relayed");
    }
    // From a stranger: a wrong-source drop.
    send(&udp(), &rtp(1, 0xC, 160), a.local);
    // An ng ping (once the listener is up) and a datagram that is not ng at all.
    let ng_client = udp();
    let pong = eventually("the ng listener to answer ping", POLL_TIMEOUT, || {
        let ng_client = ng_client.try_clone().expect("clone");
        async move {
            send(&ng_client, b"p1 d7:command4:pinge", ng);
            let mut buf = [0u8; 64];
            match ng_client.recv(&mut buf) {
                Ok(n) => Ok(buf[..n].to_vec()),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await;
    assert_eq!(pong, b"p1 d6:result4:ponge");
    send(&ng_client, b"not-ng", ng);
    let _ = c.create_conference(v1::CreateConferenceRequest { group: "g".into(), rate: 8000 }).await.expect("conference");
    let body = eventually("the metrics to count it all", POLL_TIMEOUT, || async {
        let (status, body) = tokio::task::spawn_blocking(move || scrape(addr)).await.expect("scrape");
        assert!(status.contains("200"), "{status}");
        if total(&body, "media_drops_total", "reason=\"wrong_source\"") == 1
            && total(&body, "media_ng_total", "counter=\"undecodable\"") == 1
        {
            Ok(body)
        } else {
            Err("no wrong-source drop yet".to_owned())
        }
    })
    .await;
    assert_eq!(total(&body, "media_legs", ""), 2, "{body}");
    assert_eq!(total(&body, "media_bridges", ""), 1);
    assert_eq!(total(&body, "media_conferences", ""), 1);
    assert!(total(&body, "media_packets_in_total", "") >= 11);
    assert!(total(&body, "media_packets_forwarded_total", "") >= 10);
    assert!(total(&body, "media_ng_total", "counter=\"requests\"") >= 1, "{body}");
    assert!(body.lines().any(|l| l == "media_ng_calls 0"), "{body}");
    assert!(body.contains("# TYPE media_drops counter") && body.ends_with("# EOF\n"), "OpenMetrics text: {body}");
    // The gRPC API's latency, by method: two CreateLegs and a CreateBridge were timed.
    assert_eq!(total(&body, "grpc_request_duration_seconds_count", "method=\"CreateLeg\""), 2, "{body}");
    assert_eq!(total(&body, "grpc_request_duration_seconds_count", "method=\"CreateBridge\""), 1, "{body}");
    // Every series the shipped Grafana dashboard queries exists.
    let dashboard = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/grafana/media-plane.json")).expect("dashboard");
    let mut names: Vec<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("media_") || w.starts_with("grpc_"))
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 8, "{names:?}");
    for name in names {
        let series = |l: &str| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' ']));
        assert!(body.lines().any(series), "the dashboard's {name} is not in the metrics");
    }
}
