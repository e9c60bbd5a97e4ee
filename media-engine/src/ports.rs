//! The media port range, split between cores so a port's owner is computed, not looked up.
//!
//! Pair `k` of the range (RTP port `port_min + 2k`, RTCP port above it) belongs to core `k % cores`.
//! Each core hands out its own pairs first-in first-out, so a port just released is the last to be
//! reused: stray packets of an ended call rarely reach a new one.

use std::collections::VecDeque;

/// Which core owns RTP or RTCP `port`, or `None` outside the range.
pub fn owner(port: u16, port_min: u16, port_max: u16, cores: usize) -> Option<usize> {
    if port < port_min || port > port_max || cores == 0 {
        return None;
    }
    Some(usize::from((port - port_min) / 2) % cores)
}

/// The free RTP ports of one core.
#[derive(Debug)]
pub struct PortPool {
    free: VecDeque<u16>,
}

impl PortPool {
    /// The pairs of `[port_min, port_max]` owned by `core` of `cores`.
    pub fn for_core(port_min: u16, port_max: u16, core: usize, cores: usize) -> Self {
        let free = (port_min..port_max).step_by(2).filter(|&p| owner(p, port_min, port_max, cores) == Some(core)).collect();
        Self { free }
    }

    /// Takes the least recently released RTP port.
    pub fn take(&mut self) -> Option<u16> {
        self.free.pop_front()
    }

    /// Returns a port to the back of the queue.
    pub fn release(&mut self, rtp_port: u16) {
        self.free.push_back(rtp_port);
    }

    pub fn free(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_share_the_range_without_overlap() {
        let pools: Vec<_> = (0..3).map(|c| PortPool::for_core(30000, 30019, c, 3)).collect();
        let mut all: Vec<u16> = pools.iter().flat_map(|p| p.free.iter().copied()).collect();
        all.sort_unstable();
        assert_eq!(all, (30000..30020).step_by(2).collect::<Vec<_>>());
        for (c, p) in pools.iter().enumerate() {
            assert!(p.free.iter().all(|&port| owner(port, 30000, 30019, 3) == Some(c) && owner(port + 1, 30000, 30019, 3) == Some(c)));
        }
        assert_eq!(owner(29999, 30000, 30019, 3), None);
        assert_eq!(owner(30020, 30000, 30019, 3), None);
    }

    #[test]
    fn released_ports_are_reused_last() {
        let mut p = PortPool::for_core(30000, 30005, 0, 1);
        let a = p.take().unwrap();
        p.release(a);
        assert_eq!(p.take(), Some(30002));
        assert_eq!(p.take(), Some(30004));
        assert_eq!(p.take(), Some(a));
        assert_eq!(p.take(), None);
    }
}
