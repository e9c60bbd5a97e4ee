//! A party its transferor held is taken off hold before it is parked or moved into a
//! conference room: its phone answered the hold with `recvonly` (or `inactive`) and would stay
//! silent with whoever takes it next. The B2BUA re-INVITEs it with the media plane's rewrite of
//! the holder's last offer made `sendrecv`, then parks it or moves it.
//!
//! ```text
//!  REFER to an orbit or room, the referred party held by the transferor
//!    Offer(the holder's SDP, sendrecv; holder's legs → held party's) ─► re-INVITE held party
//!    … 200 (answer) ─► ACK, Answer ─► parked (music) / into the room
//!  491 (its own re-INVITE crossed ours): sent again once after 2.1 s (RFC 3261 §14.1)
//!  refused, failed, or no answer within 10 s: parked / moved all the same (a late 2xx is ACKed)
//! ```

use super::*;

/// How long a resume may take before what waits for it goes ahead without it.
const GIVE_UP: Duration = Duration::from_secs(10);
/// The wait before a re-INVITE refused with 491 is sent again (RFC 3261 §14.1, the owner of
/// the Call-ID's range).
const GLARE_WAIT: Duration = Duration::from_millis(2100);

/// What follows once the held party is taken off hold.
#[derive(Debug)]
pub(super) enum After {
    /// It is parked, hearing `music`.
    Park { music: Option<String> },
    /// It goes into the call's room.
    Room,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The media plane is writing the offer.
    Offering,
    /// Our re-INVITE is out.
    Inviting,
    /// The media plane takes its answer.
    Answering,
}

/// A held party being taken off hold.
#[derive(Debug)]
pub(super) struct Resuming {
    /// The held party's side.
    held: Side,
    phase: Phase,
    then: After,
    /// The media plane's offer (sent again after a 491, once), and when to send it.
    offer: Option<String>,
    retry_at: Option<Instant>,
    retried: bool,
    /// When what waits for it goes ahead anyway.
    give_up: Instant,
}

impl Resuming {
    /// Whether `at` is one of its deadlines.
    pub(super) fn holds(&self, at: Instant) -> bool {
        self.give_up == at || self.retry_at == Some(at)
    }
}

impl B2bua {
    /// When call `id`'s other party is held by `holder` (leaving it), takes it off hold and then
    /// does `then`; whether it did (else the caller does `then` at once).
    pub(super) fn resume_then(&mut self, id: u64, holder: Side, then: After, now: Now) -> bool {
        let Some(call) = self.calls.get_mut(&id) else { return false };
        let (Some(media), Some(sdp)) = (call.media.as_ref(), call.last_sdp[holder as usize].as_deref()) else { return false };
        if call.held_by != Some(holder) || call.negotiating || call.reinvite_pending {
            return false;
        }
        let legs = media.legs(holder == Side::A);
        let sdp = sendrecv(sdp);
        let give_up = now.instant + GIVE_UP;
        call.resuming =
            Some(Resuming { held: holder.other(), phase: Phase::Offering, then, offer: None, retry_at: None, retried: false, give_up });
        call.negotiating = true;
        let policy = self.config.codec_policy.clone();
        self.media_request(id, MediaRequest::Offer { legs, sdp, policy });
        self.schedule(give_up, id);
        true
    }

    /// Call `id`'s resume timers due at `now`: the 491 retry, or giving up.
    pub(super) fn resume_due(&mut self, id: u64, now: Now) {
        let Some(r) = self.calls.get_mut(&id).and_then(|c| c.resuming.as_mut()) else { return };
        if r.give_up <= now.instant {
            tracing::info!(call = id, "a held party was not taken off hold in time: going on without it");
            if let Some(call) = self.calls.get_mut(&id) {
                call.reinvite_pending = false;
            }
            self.resumed(id);
            return;
        }
        if r.retry_at.is_some_and(|at| at <= now.instant) {
            r.retry_at = None;
            if let Some(sdp) = r.offer.clone() {
                self.send_resume(id, sdp, now);
            }
        }
    }

    fn send_resume(&mut self, id: u64, sdp: String, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(held) = call.resuming.as_ref().map(|r| r.held) else { return };
        call.reinvite_pending = true;
        let extra = format!("Contact: {}\r\n", our_contact(&self.config, &call.dialog(held).peer));
        self.send_in_dialog(id, held, "INVITE", &extra, Some(("application/sdp", sdp.as_bytes())), Purpose::Resume { side: held }, now);
    }

    /// Whether call `id` waits for the media plane on a resume (its Offered or Answered reply
    /// is the resume's).
    pub(super) fn resume_waits(&self, id: u64) -> bool {
        self.calls.get(&id).and_then(|c| c.resuming.as_ref()).is_some_and(|r| r.phase != Phase::Inviting)
    }

    /// The media plane's reply to the resume's Offer or Answer.
    pub(super) fn resume_media(&mut self, id: u64, result: Result<String, MediaError>, now: Now) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(r) = call.resuming.as_mut() else { return };
        match (r.phase, result) {
            (Phase::Offering, Ok(sdp)) => {
                r.phase = Phase::Inviting;
                r.offer = Some(sdp.clone());
                call.negotiating = false;
                self.send_resume(id, sdp, now);
            }
            (_, result) => {
                if let Err(error) = result {
                    tracing::info!(call = id, %error, "taking a held party off hold: the media plane refused");
                }
                self.resumed(id);
            }
        }
    }

    /// The held party answered our re-INVITE (from `side`).
    pub(super) fn resume_answered(&mut self, id: u64, side: Side, response: Response, now: Now) {
        let status = response.status_code.code();
        if status < 200 {
            return;
        }
        if (200..300).contains(&status) {
            // ACKed even when the resume went ahead without it (a late answer).
            self.ack_renegotiated(id, side, &response);
        }
        let Some(call) = self.calls.get_mut(&id) else { return };
        call.reinvite_pending = false;
        let Some(r) = call.resuming.as_mut().filter(|r| r.phase == Phase::Inviting) else { return };
        let (held, holder) = (r.held, r.held.other());
        if status == 491 && !r.retried {
            // Its own re-INVITE crossed ours: ours goes again, once.
            r.retried = true;
            let at = now.instant + GLARE_WAIT;
            r.retry_at = Some(at);
            self.schedule(at, id);
            return;
        }
        if !(200..300).contains(&status) {
            tracing::info!(call = id, status, "a held party refused to be taken off hold");
            self.resumed(id);
            return;
        }
        let Some(call) = self.calls.get_mut(&id) else { return };
        let legs = call.media.as_ref().map(|m| m.legs(holder == Side::A));
        match (legs, is_sdp(&response.headers, &response.body)) {
            (Some(legs), true) => {
                let sdp = String::from_utf8_lossy(&response.body).into_owned();
                call.last_sdp[held as usize] = Some(sdp.clone());
                call.negotiating = true;
                if let Some(r) = call.resuming.as_mut() {
                    r.phase = Phase::Answering;
                }
                self.media_request(id, MediaRequest::Answer { legs, sdp });
            }
            _ => self.resumed(id),
        }
    }

    /// The resume is over (done or not): what waited for it follows.
    pub(super) fn resumed(&mut self, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else { return };
        let Some(r) = call.resuming.take() else { return };
        call.negotiating = false;
        call.held_by = None;
        match r.then {
            After::Park { music } => self.park_media(id, music),
            After::Room => self.room_move(id),
        }
    }
}

/// `sdp` with every direction attribute made `sendrecv`.
fn sendrecv(sdp: &str) -> String {
    sdp.split_inclusive('\n')
        .map(|line| {
            let trimmed = line.trim_end();
            if matches!(trimmed, "a=sendonly" | "a=recvonly" | "a=inactive") {
                line.replacen(trimmed, "a=sendrecv", 1)
            } else {
                line.to_owned()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_direction_becomes_sendrecv() {
        let sdp = "v=0\r\nm=audio 4000 RTP/AVP 0\r\na=sendonly\r\nm=video 0 RTP/AVP 96\r\na=inactive\r\na=rtpmap:0 PCMU/8000\r\n";
        assert_eq!(
            super::sendrecv(sdp),
            "v=0\r\nm=audio 4000 RTP/AVP 0\r\na=sendrecv\r\nm=video 0 RTP/AVP 96\r\na=sendrecv\r\na=rtpmap:0 PCMU/8000\r\n"
        );
    }
}
