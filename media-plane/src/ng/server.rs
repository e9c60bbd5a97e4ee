//! The ng listener: one UDP socket, one task per datagram (commands of one call are ordered by
//! the call's lock, see [`super::service`]), replies sent back to the datagram's source.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;

use super::service::NgService;

/// Largest datagram taken (an ng offer with a large SDP is a few kilobytes).
const MAX_DATAGRAM: usize = 65_535;
/// Requests running at once; a datagram beyond them is dropped (and counted): the client resends.
const MAX_RUNNING: usize = 1024;

/// Binds `addr` and answers ng requests until `stop` completes.
pub async fn serve(addr: SocketAddr, ng: NgService, stop: impl Future<Output = ()>) -> std::io::Result<()> {
    let socket = Arc::new(UdpSocket::bind(addr).await?);
    tracing::info!(ng = %addr, "ng control protocol listening (UDP)");
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let running = Arc::new(tokio::sync::Semaphore::new(MAX_RUNNING));
    tokio::pin!(stop);
    loop {
        let (n, peer) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                // ICMP errors of earlier replies surface here on some systems: not fatal.
                Err(e) => {
                    tracing::debug!(error = %e, "ng socket receive error");
                    continue;
                }
            },
            () = &mut stop => return Ok(()),
        };
        let Ok(permit) = running.clone().try_acquire_owned() else {
            ng.count_overloaded();
            continue;
        };
        let Some(datagram) = buf.get(..n).map(<[u8]>::to_vec) else { continue };
        let (ng, socket) = (ng.clone(), socket.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(reply) = ng.handle(&datagram, peer, Instant::now()).await {
                if let Err(e) = socket.send_to(&reply, peer).await {
                    tracing::debug!(error = %e, %peer, "ng reply not sent");
                }
            }
        });
    }
}
