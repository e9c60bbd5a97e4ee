//! The XDP program attached to dut's veth in the gen ↔ dut ↔ sink topology (`scripts/netns.sh`):
//! what reaches the kernel, what is steered, exact counters, modes and clean detach.
//! Root only; without privileges each test prints `skipped: …` and returns.

mod common;

use std::time::Duration;

use common::*;
use ebpf::{AttachedMode, SteerError, Steering, XdpMode};
use socket2::{Domain, Socket, Type};

const N: u32 = 200;

#[test]
fn auto_mode_on_veth_attaches_natively_and_dropping_detaches() {
    let Some(topo) = Topology::up("a") else {
        return;
    };
    let Some(steering) = attach(&topo, XdpMode::Auto) else {
        return;
    };
    println!("auto mode on veth: {:?}, fallback: {:?}", steering.mode(), steering.fallback_reason());
    assert_eq!(steering.mode(), AttachedMode::Native);
    assert_eq!(steering.fallback_reason(), None);
    assert_eq!(topo.dut_xdp(), Some("xdp"));

    drop(steering);
    assert_eq!(wait_detached(&topo), None, "program still attached after drop");
}

#[test]
fn ping_and_arp_reach_the_kernel_while_attached() {
    let Some(topo) = Topology::up("b") else {
        return;
    };
    let Some(steering) = attach(&topo, XdpMode::Auto) else {
        return;
    };
    // Both neighbour caches empty: the pings below must resolve through ARP and ND first.
    topo.ip(&topo.gen(), &["neigh", "flush", "all"]);
    topo.ip(&topo.dut(), &["neigh", "flush", "all"]);

    for (family, dst) in [("-4", DUT_V4), ("-6", DUT_V6)] {
        let out = topo.exec(&topo.gen(), "ping", &[family, "-c", "3", "-i", "0.2", "-W", "1", dst]);
        assert!(out.status.success(), "ping {dst} through the attached program failed: {}", String::from_utf8_lossy(&out.stdout));
    }
    let neigh = topo.ip(&topo.gen(), &["neigh", "show", DUT_V4]);
    assert!(neigh.contains("lladdr"), "ARP did not resolve {DUT_V4}: {neigh:?}");

    let stats = steering.stats().unwrap();
    // 6 echo requests plus at least one ARP request and one neighbour solicitation, all passed.
    assert!(stats.passed_not_udp >= 8, "{stats:?}");
    assert_eq!(stats.redirected + stats.passed_no_xsk + stats.malformed, 0, "{stats:?}");
}

#[test]
fn udp_to_a_non_media_port_reaches_the_kernel_socket() {
    let Some(topo) = Topology::up("c") else {
        return;
    };
    topo.pin_neighbours();
    let Some(steering) = attach(&topo, XdpMode::Auto) else {
        return;
    };
    let sip4 = udp_socket(&topo.dut(), &format!("{DUT_V4}:{SIP_PORT}"));
    let sip6 = udp_socket(&topo.dut(), &format!("[{DUT_V6}]:{SIP_PORT}"));
    let gen4 = udp_socket(&topo.gen(), &format!("{GEN_V4}:0"));
    let gen6 = udp_socket(&topo.gen(), &format!("[{GEN_V6}]:0"));

    send_numbered(&gen4, &format!("{DUT_V4}:{SIP_PORT}"), N);
    send_numbered(&gen6, &format!("[{DUT_V6}]:{SIP_PORT}"), N);

    // Every datagram, in order: the program passed them untouched.
    assert_eq!(receive_up_to(&sip4, N as usize), (0..N).collect::<Vec<_>>());
    assert_eq!(receive_up_to(&sip6, N as usize), (0..N).collect::<Vec<_>>());
    let stats = stats_when(&steering, |s| s.passed_other_port >= u64::from(2 * N));
    assert_eq!(stats.passed_other_port, u64::from(2 * N), "{stats:?}");
    assert_eq!(stats.redirected + stats.passed_no_xsk + stats.malformed, 0, "{stats:?}");
}

#[test]
fn media_udp_without_a_registered_socket_falls_back_to_the_kernel() {
    let Some(topo) = Topology::up("d") else {
        return;
    };
    topo.pin_neighbours();
    let Some(steering) = attach(&topo, XdpMode::Auto) else {
        return;
    };
    // Both ends of the range, IPv4 and IPv6: every datagram passed and counted once.
    let mut expected = 0u64;
    for port in [MEDIA_MIN, MEDIA_MAX] {
        for (dut, gen) in [(DUT_V4.to_owned(), GEN_V4.to_owned()), (format!("[{DUT_V6}]"), format!("[{GEN_V6}]"))] {
            let kernel = udp_socket(&topo.dut(), &format!("{dut}:{port}"));
            let sender = udp_socket(&topo.gen(), &format!("{gen}:0"));
            send_numbered(&sender, &format!("{dut}:{port}"), N);
            assert_eq!(receive_up_to(&kernel, N as usize).len(), N as usize, "{dut}:{port}");
            expected += u64::from(N);
        }
    }
    let stats = stats_when(&steering, |s| s.passed_no_xsk >= expected);
    assert_eq!(stats.passed_no_xsk, expected, "{stats:?}");
    assert_eq!(stats.redirected + stats.passed_other_port + stats.malformed, 0, "{stats:?}");
}

#[test]
fn media_udp_goes_to_the_registered_socket_until_it_is_unregistered() {
    let Some(topo) = Topology::up("e") else {
        return;
    };
    topo.pin_neighbours();
    let Some(steering) = attach(&topo, XdpMode::Auto) else {
        return;
    };
    let kernel = udp_socket(&topo.dut(), &format!("{DUT_V4}:{MEDIA_MIN}"));
    let sender = udp_socket(&topo.gen(), &format!("{GEN_V4}:0"));
    let to = format!("{DUT_V4}:{MEDIA_MIN}");

    // An AF_XDP socket that is not bound to a queue: the program redirects to it and the kernel then
    // drops the frame (no rings), so the counter proves the redirect and the kernel socket sees none.
    let xsk = Socket::new(Domain::from(nix::libc::AF_XDP), Type::from(nix::libc::SOCK_RAW), None).expect("AF_XDP socket");
    for queue in 0..2 {
        steering.register_xsk(queue, &xsk).expect("register the socket for the queue");
    }
    send_numbered(&sender, &to, N);
    let stats = stats_when(&steering, |s| s.redirected >= u64::from(N));
    assert_eq!(stats.redirected, u64::from(N), "{stats:?}");
    assert_eq!(stats.passed_no_xsk, 0, "{stats:?}");
    assert_eq!(receive_for(&kernel, Duration::from_millis(300)), 0, "redirected packets reached the kernel");

    for queue in 0..2 {
        steering.unregister_xsk(queue).expect("unregister");
    }
    send_numbered(&sender, &to, N);
    assert_eq!(receive_up_to(&kernel, N as usize), (0..N).collect::<Vec<_>>());
    let stats = stats_when(&steering, |s| s.passed_no_xsk >= u64::from(N));
    assert_eq!((stats.redirected, stats.passed_no_xsk), (u64::from(N), u64::from(N)), "{stats:?}");
}

#[test]
fn registering_something_other_than_an_af_xdp_socket_is_refused() {
    let Some(topo) = Topology::up("f") else {
        return;
    };
    let Some(steering) = attach(&topo, XdpMode::Auto) else {
        return;
    };
    let udp = udp_socket(&topo.dut(), &format!("{DUT_V4}:0"));
    let err = steering.register_xsk(0, &udp).unwrap_err();
    assert!(matches!(err, SteerError::Map { map: "xsks", .. }), "{err}");
    let err = steering.register_xsk(ebpf::MAX_QUEUES, &udp).unwrap_err();
    assert!(matches!(err, SteerError::QueueOutOfRange { .. }), "{err}");
}

#[test]
fn a_second_program_on_the_same_interface_is_refused_and_the_first_keeps_working() {
    let Some(topo) = Topology::up("g") else {
        return;
    };
    topo.pin_neighbours();
    let Some(first) = attach(&topo, XdpMode::Auto) else {
        return;
    };
    let second = {
        let _ns = enter(&topo.dut());
        Steering::attach(&topo.dut_if(), MEDIA_MIN..=MEDIA_MAX, XdpMode::Auto)
    };
    let err = second.unwrap_err();
    assert!(matches!(err, SteerError::AlreadyAttached { .. }), "{err}");
    println!("second attach: {err}");
    assert_eq!(topo.dut_xdp(), Some("xdp"));

    let kernel = udp_socket(&topo.dut(), &format!("{DUT_V4}:{SIP_PORT}"));
    let sender = udp_socket(&topo.gen(), &format!("{GEN_V4}:0"));
    send_numbered(&sender, &format!("{DUT_V4}:{SIP_PORT}"), N);
    assert_eq!(receive_up_to(&kernel, N as usize).len(), N as usize);
    let stats = stats_when(&first, |s| s.passed_other_port >= u64::from(N));
    assert_eq!(stats.passed_other_port, u64::from(N), "{stats:?}");
}

#[test]
fn auto_mode_falls_back_to_generic_when_the_driver_refuses_native() {
    let Some(topo) = Topology::up("h") else {
        return;
    };
    topo.pin_neighbours();
    // veth refuses native XDP (ERANGE) for a program without multi-buffer support when the peer's
    // MTU does not fit one page.
    topo.ip(&topo.gen(), &["link", "set", "dev", &topo.gen_if(), "mtu", "9000"]);
    topo.ip(&topo.dut(), &["link", "set", "dev", &topo.dut_if(), "mtu", "9000"]);

    let native = {
        let _ns = enter(&topo.dut());
        Steering::attach(&topo.dut_if(), MEDIA_MIN..=MEDIA_MAX, XdpMode::Native)
    };
    let err = native.unwrap_err();
    assert!(matches!(err, SteerError::Attach { mode: AttachedMode::Native, .. }), "{err}");
    assert_eq!(topo.dut_xdp(), None);

    let Some(steering) = attach(&topo, XdpMode::Auto) else {
        return;
    };
    let reason = steering.fallback_reason().unwrap_or_default().to_owned();
    println!("auto mode with MTU 9000: {:?}, fallback: {reason}", steering.mode());
    assert_eq!(steering.mode(), AttachedMode::Generic);
    assert!(reason.contains("MTU") && reason.contains("XDP_FLAGS_DRV_MODE"), "{reason}");
    assert_eq!(topo.dut_xdp(), Some("xdpgeneric"));

    // Generic mode steers the same way: media to the kernel (no socket), counted exactly.
    let kernel = udp_socket(&topo.dut(), &format!("{DUT_V4}:{MEDIA_MAX}"));
    let sender = udp_socket(&topo.gen(), &format!("{GEN_V4}:0"));
    send_numbered(&sender, &format!("{DUT_V4}:{MEDIA_MAX}"), N);
    assert_eq!(receive_up_to(&kernel, N as usize).len(), N as usize);
    let stats = stats_when(&steering, |s| s.passed_no_xsk >= u64::from(N));
    assert_eq!(stats.passed_no_xsk, u64::from(N), "{stats:?}");

    drop(steering);
    assert_eq!(wait_detached(&topo), None);
}

#[test]
fn generic_mode_is_used_when_asked_for() {
    let Some(topo) = Topology::up("i") else {
        return;
    };
    let Some(steering) = attach(&topo, XdpMode::Generic) else {
        return;
    };
    assert_eq!(steering.mode(), AttachedMode::Generic);
    assert_eq!(steering.fallback_reason(), None);
    assert_eq!(topo.dut_xdp(), Some("xdpgeneric"));
    drop(steering);
    assert_eq!(wait_detached(&topo), None);
}
