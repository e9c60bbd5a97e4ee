//! The whole SIP core (transactions, digest, registrar, B2BUA) takes any datagram or stream
//! message without panicking: each input is split at 0xff bytes into messages from two peers,
//! with time advancing between them.
#![no_main]
use std::sync::Arc;
use std::time::Duration;

use control_plane::config::Config;
use control_plane::now::Now;
use control_plane::server::ControlPlane;
use sip_core::transaction::Peer;
use control_plane::store::{MemoryStore, Store, Subscriber};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let config = Config::parse(
        "[sip]\nlisten = [\"udp:192.0.2.100:5060\"]\ndomains = [\"sip.test\"]\ntrusted = [\"192.0.2.1\"]\n",
    )
    .unwrap();
    let mut core = ControlPlane::new(Arc::new(config), Some([1; 32]), [2; 32]).unwrap();
    let mut store = MemoryStore::default();
    store.add_subscriber(&Subscriber::with_password("bob", "sip.test", "sip.test", "pw")).unwrap();
    let mut now = Now::system();
    let peers = [Peer::udp("192.0.2.1:5060".parse().unwrap()), Peer::tcp("192.0.2.2:5060".parse().unwrap())];
    for (i, message) in data.split(|&b| b == 0xff).enumerate() {
        let peer = peers[i % 2];
        if i % 2 == 0 {
            core.handle_datagram(message, peer, now, &mut store);
        } else {
            core.handle_stream_message(message, peer, now, &mut store);
        }
        while core.poll_transmit().is_some() {}
        while core.poll_media().is_some() {}
        now = now.plus(Duration::from_millis(700));
        core.handle_timeout(now, &mut store);
    }
});
