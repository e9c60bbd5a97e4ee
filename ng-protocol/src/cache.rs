//! Replies kept by cookie, so that a request the client resends (its reply was lost, or it gave up
//! waiting) is answered with the first reply instead of running twice: a second `offer` would
//! be harmless, a second `delete` of a call set up again in between would not.
//!
//! Pure: time is passed in. Entries live [`TTL`]; the cache holds at most `capacity` of them and
//! `max_bytes` of replies, and a request that finds it full is run without its reply being
//! remembered (and counted).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a reply is kept (rtpengine keeps its replies 30 s).
pub const TTL: Duration = Duration::from_secs(30);

/// What the cache knows of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Not seen: run it (and [`ReplyCache::finish`] it).
    New,
    /// Being run: drop the resend, the reply is on its way.
    Running,
    /// Answered: send this again.
    Done(Arc<[u8]>),
}

type Key = (SocketAddr, Vec<u8>);

#[derive(Debug)]
pub struct ReplyCache {
    entries: HashMap<Key, Option<Arc<[u8]>>>,
    /// Keys in the order they came, with when: expiry pops from the front.
    order: VecDeque<(Instant, Key)>,
    capacity: usize,
    /// Bytes of the replies kept, and the most there may be.
    bytes: usize,
    max_bytes: usize,
    /// Requests run without being remembered because the cache was full.
    pub full: u64,
}

impl ReplyCache {
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        Self { entries: HashMap::new(), order: VecDeque::new(), capacity, bytes: 0, max_bytes, full: 0 }
    }

    /// Looks the request up, remembering a new one as running.
    pub fn begin(&mut self, peer: SocketAddr, cookie: &[u8], now: Instant) -> Lookup {
        self.expire(now);
        let key = (peer, cookie.to_vec());
        match self.entries.get(&key) {
            Some(Some(reply)) => Lookup::Done(reply.clone()),
            Some(None) => Lookup::Running,
            None => {
                if self.entries.len() >= self.capacity {
                    self.full += 1;
                } else {
                    self.entries.insert(key.clone(), None);
                    self.order.push_back((now, key));
                }
                Lookup::New
            }
        }
    }

    /// Keeps the reply of a request [`begin`](Self::begin) found new (if there is room: else
    /// the request is forgotten, and a resend runs again).
    pub fn finish(&mut self, peer: SocketAddr, cookie: &[u8], reply: Arc<[u8]>) {
        let key = (peer, cookie.to_vec());
        if self.bytes + reply.len() > self.max_bytes {
            if self.entries.remove(&key).is_some() {
                self.full += 1;
            }
            return;
        }
        if let Some(slot) = self.entries.get_mut(&key) {
            self.bytes += reply.len();
            *slot = Some(reply);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < TTL {
                break;
            }
            if let Some((_, key)) = self.order.pop_front() {
                if let Some(Some(reply)) = self.entries.remove(&key) {
                    self.bytes -= reply.len();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_resent_request_gets_the_first_reply_until_it_expires() {
        let t0 = Instant::now();
        let mut c = ReplyCache::new(10, 1000);
        assert_eq!(c.begin(peer(1), b"k1", t0), Lookup::New);
        assert_eq!(c.begin(peer(1), b"k1", t0), Lookup::Running);
        // The same cookie from another client is another request.
        assert_eq!(c.begin(peer(2), b"k1", t0), Lookup::New);
        let reply: Arc<[u8]> = Arc::from(&b"k1 d6:result2:oke"[..]);
        c.finish(peer(1), b"k1", reply.clone());
        assert_eq!(c.begin(peer(1), b"k1", t0 + Duration::from_secs(29)), Lookup::Done(reply));
        assert_eq!(c.begin(peer(1), b"k1", t0 + TTL), Lookup::New);
    }

    #[test]
    fn a_full_cache_runs_requests_without_remembering_them() {
        let t0 = Instant::now();
        let mut c = ReplyCache::new(2, 1000);
        assert_eq!(c.begin(peer(1), b"a", t0), Lookup::New);
        assert_eq!(c.begin(peer(1), b"b", t0), Lookup::New);
        assert_eq!(c.begin(peer(1), b"c", t0), Lookup::New);
        assert_eq!(c.begin(peer(1), b"c", t0), Lookup::New);
        assert_eq!((c.len(), c.full), (2, 2));
        // Expiry makes room again.
        assert_eq!(c.begin(peer(1), b"c", t0 + TTL), Lookup::New);
        assert_eq!(c.begin(peer(1), b"c", t0 + TTL), Lookup::Running);
    }

    #[test]
    fn replies_beyond_the_byte_bound_are_not_kept() {
        let t0 = Instant::now();
        let mut c = ReplyCache::new(10, 100);
        let big: Arc<[u8]> = vec![b'x'; 80].into();
        assert_eq!(c.begin(peer(1), b"a", t0), Lookup::New);
        c.finish(peer(1), b"a", big.clone());
        assert_eq!(c.begin(peer(1), b"b", t0), Lookup::New);
        c.finish(peer(1), b"b", big.clone());
        assert_eq!((c.len(), c.full), (1, 1), "the second reply did not fit");
        assert_eq!(c.begin(peer(1), b"b", t0), Lookup::New, "so its resend runs again");
        // Expiry frees the bytes.
        assert_eq!(c.begin(peer(1), b"c", t0 + TTL), Lookup::New);
        c.finish(peer(1), b"c", big);
        assert_eq!(c.begin(peer(1), b"c", t0 + TTL), Lookup::Done(vec![b'x'; 80].into()));
    }
}
