//! Dialogs (RFC 3261 §12): the state two user agents share between an INVITE and its BYE.
//!
//! ```text
//!  UAC:  Dialog::uac(Call-ID, From+tag, To, target, route, flow)  ── state Trying (no To tag yet)
//!          │ 1xx with To tag: fork() ─► Early   (one dialog per To tag: forking, §12.1.2)
//!          │ 2xx:             fork() ─► Confirmed (route set from the 2xx's Record-Route, reversed)
//!  UAS:  Dialog::uas(INVITE, our tag, flow) ─► Early ── confirm() when our 2xx goes ─► Confirmed
//!
//!  request(method, …)   a new request in the dialog: CSeq + 1, Request-URI and Route from the
//!                       remote target and the route set (loose or strict routing, §12.2.1.1)
//!  ack(cseq, …)         the ACK for a 2xx (same CSeq as its INVITE, §13.2.2.4), with the
//!                       answer when the 2xx made the offer
//!  receive(request)     §12.2.2: CSeq order (500 when lower) and target refresh
//!  target_refreshed(..) §12.2.1.2: a 2xx to our target refresh updates the remote target
//! ```
//!
//! A dialog does not send anything: it builds requests for the transaction layer. Where they go is
//! the flow the dialog was created over (`peer`), which is how a B2BUA reaches phones behind NAT
//! and over connection-oriented transports (RFC 5626); the Request-URI and Route headers are
//! still those of §12.2.1.1 so proxies on the path route them right.

use rsip::headers::UntypedHeader;
use rsip::{Header, Request, Response, SipMessage};

use crate::message::{self, call_id, cseq, from_value, split_list, tag_of, to_value, uri_of, Framing};
use crate::transaction::Peer;

/// Where a dialog stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogState {
    /// Our initial request is out and no response with a To tag came back (UAC only): not a
    /// dialog yet in RFC terms, but it holds what the requests that start it need.
    Trying,
    /// A provisional response with a To tag created it (§12.1).
    Early,
    /// A 2xx created or confirmed it.
    Confirmed,
}

/// What identifies a dialog (§12): Call-ID and both tags.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DialogId {
    /// The Call-ID.
    pub call_id: String,
    /// Our tag.
    pub local_tag: String,
    /// Their tag (empty while `Trying`).
    pub remote_tag: String,
}

/// Why a message does not fit a dialog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    /// A header the dialog needs is missing or unreadable.
    #[error("missing or malformed {0}")]
    Header(&'static str),
    /// A request's CSeq is lower than one already received (§12.2.2: answer 500).
    #[error("CSeq {got} is lower than {last}, already received")]
    CSeqOutOfOrder {
        /// The request's CSeq.
        got: u32,
        /// The highest CSeq received in this dialog.
        last: u32,
    },
    /// The response has no To tag: it cannot create a dialog.
    #[error("response without To tag")]
    NoRemoteTag,
    /// Our own request text did not parse (a bug, not input).
    #[error("built an unparsable {0}")]
    Build(String),
}

/// One dialog, as this user agent sees it.
#[derive(Debug, Clone)]
pub struct Dialog {
    /// Call-ID.
    pub call_id: String,
    /// Our From (as UAC) or To (as UAS) value, with our tag.
    pub local: String,
    /// Their value, with their tag once known.
    pub remote: String,
    /// Their Contact URI: the Request-URI of requests in the dialog.
    pub target: String,
    /// The route set (§12.1): Record-Route of the request (UAS, in order) or of the response
    /// (UAC, reversed); before a response, the Route the initial request was sent with.
    pub route: Vec<String>,
    /// The flow to them (transport and address) requests are sent over.
    pub peer: Peer,
    /// Our last CSeq number.
    pub local_cseq: u32,
    /// The highest CSeq number received from them.
    pub remote_cseq: Option<u32>,
    /// Trying, early or confirmed.
    pub state: DialogState,
}

impl Dialog {
    /// The dialog-to-be of an initial request we send (UAC): `local` is our From with its tag,
    /// `remote` their To without one, `target` the Request-URI, `route` the Route headers the
    /// request carries (a registered Path, a proxy), `peer` where it goes. Its first
    /// [`request`](Self::request) has CSeq 1.
    pub fn uac(call_id: String, local: String, remote: String, target: String, route: Vec<String>, peer: Peer) -> Self {
        Dialog { call_id, local, remote, target, route, peer, local_cseq: 0, remote_cseq: None, state: DialogState::Trying }
    }

    /// The dialog an INVITE creates at its UAS (§12.1.1), with our `local_tag` in To; early until
    /// [`confirm`](Self::confirm)ed. `peer` is the flow the INVITE came over.
    pub fn uas(request: &Request, local_tag: &str, peer: Peer) -> Result<Self, DialogError> {
        let call_id = call_id(&request.headers).ok_or(DialogError::Header("Call-ID"))?;
        let from = from_value(&request.headers).ok_or(DialogError::Header("From"))?;
        let to = to_value(&request.headers).ok_or(DialogError::Header("To"))?;
        let seq = cseq(&request.headers).map_err(|_| DialogError::Header("CSeq"))?.seq;
        let local = match tag_of(to) {
            Some(_) => to.trim().to_owned(),
            None => format!("{};tag={local_tag}", to.trim()),
        };
        Ok(Dialog {
            call_id: call_id.to_owned(),
            local,
            remote: from.trim().to_owned(),
            target: contact_uri(&request.headers).unwrap_or_else(|| uri_of(from).to_owned()),
            route: record_route(&request.headers),
            peer,
            local_cseq: 0,
            remote_cseq: Some(seq),
            state: DialogState::Early,
        })
    }

    /// The dialog (early or confirmed) a response to our initial request creates (§12.1.2).
    /// Each distinct To tag is its own dialog: a forked INVITE may create several, and this one
    /// stays as it was for the next. A later response for a dialog already made goes to
    /// [`update`](Self::update) instead.
    pub fn fork(&self, response: &Response) -> Result<Dialog, DialogError> {
        let to = to_value(&response.headers).ok_or(DialogError::Header("To"))?;
        if tag_of(to).is_none() {
            return Err(DialogError::NoRemoteTag);
        }
        let mut dialog = self.clone();
        dialog.remote = to.trim().to_owned();
        dialog.state = DialogState::Early;
        dialog.update(response);
        Ok(dialog)
    }

    /// A response to the initial request in this (early) dialog: target and route set from it; a
    /// 2xx confirms the dialog (§12.1.2, §13.2.2.4: the 2xx's route set is the dialog's).
    pub fn update(&mut self, response: &Response) {
        let status = response.status_code.code();
        if self.state == DialogState::Confirmed || !(101..300).contains(&status) {
            return;
        }
        if let Some(target) = contact_uri(&response.headers) {
            self.target = target;
        }
        let recorded = record_route(&response.headers);
        // Without Record-Route the route set is empty (§12.1.2): the Route the request was sent
        // with (a Path) was for reaching the callee, not for the dialog.
        self.route = recorded.into_iter().rev().collect();
        if (200..300).contains(&status) {
            self.state = DialogState::Confirmed;
        }
    }

    /// Our 2xx to the INVITE went out: the UAS's dialog is confirmed.
    pub fn confirm(&mut self) {
        self.state = DialogState::Confirmed;
    }

    /// The dialog's identity.
    pub fn id(&self) -> DialogId {
        DialogId {
            call_id: self.call_id.clone(),
            local_tag: tag_of(&self.local).unwrap_or_default().to_owned(),
            remote_tag: tag_of(&self.remote).unwrap_or_default().to_owned(),
        }
    }

    /// Our tag.
    pub fn local_tag(&self) -> &str {
        tag_of(&self.local).unwrap_or_default()
    }

    /// A request they sent in this dialog (§12.2.2): its CSeq must not be lower than the last
    /// one (else answer 500, [`DialogError::CSeqOutOfOrder`]); a target refresh (re-INVITE,
    /// UPDATE) with a Contact replaces the remote target. ACK and CANCEL carry the CSeq of the
    /// request they belong to and are not checked.
    pub fn receive(&mut self, request: &Request) -> Result<(), DialogError> {
        if matches!(request.method, rsip::Method::Ack | rsip::Method::Cancel) {
            return Ok(());
        }
        let seq = cseq(&request.headers).map_err(|_| DialogError::Header("CSeq"))?.seq;
        if let Some(last) = self.remote_cseq {
            if seq <= last {
                return Err(DialogError::CSeqOutOfOrder { got: seq, last });
            }
        }
        self.remote_cseq = Some(seq);
        if matches!(request.method, rsip::Method::Invite | rsip::Method::Update) {
            if let Some(target) = contact_uri(&request.headers) {
                self.target = target;
            }
        }
        Ok(())
    }

    /// A 2xx to a target refresh we sent (§12.2.1.2): its Contact is the new remote target.
    pub fn target_refreshed(&mut self, response: &Response) {
        if (200..300).contains(&response.status_code.code()) {
            if let Some(target) = contact_uri(&response.headers) {
                self.target = target;
            }
        }
    }

    /// A new request in the dialog (§12.2.1.1) with the next CSeq: `sent_by` is our Via
    /// address, `branch` a fresh branch, `extra` more header lines (each ending in CRLF; a
    /// `Max-Forwards:` there replaces the default 70), `body` its content type and bytes.
    pub fn request(
        &mut self,
        method: &str,
        sent_by: &str,
        branch: &str,
        extra: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<Request, DialogError> {
        self.local_cseq += 1;
        self.build(method, self.local_cseq, sent_by, branch, extra, body)
    }

    /// The ACK for a 2xx to the INVITE with CSeq `cseq` (§13.2.2.4: same number, new branch),
    /// with the answer as `body` when the 2xx carried the offer (§13.2.1).
    pub fn ack(&self, cseq: u32, sent_by: &str, branch: &str, body: Option<(&str, &[u8])>) -> Result<Request, DialogError> {
        self.build("ACK", cseq, sent_by, branch, "", body)
    }

    /// The Request-URI and Route values of a request in this dialog (§12.2.1.1): with a loose
    /// router (`;lr`) first, the remote target and the route set as it is; with a strict router,
    /// that router's URI and the rest of the set followed by the remote target.
    pub fn request_uri_and_route(&self) -> (String, Vec<String>) {
        match self.route.first() {
            Some(first) if !is_loose(first) => {
                let uri = message::without_header_params(uri_of(first)).to_owned();
                let mut route: Vec<String> = self.route.iter().skip(1).cloned().collect();
                route.push(format!("<{}>", self.target));
                (uri, route)
            }
            _ => (self.target.clone(), self.route.clone()),
        }
    }

    fn build(
        &self,
        method: &str,
        cseq: u32,
        sent_by: &str,
        branch: &str,
        extra: &str,
        body: Option<(&str, &[u8])>,
    ) -> Result<Request, DialogError> {
        let (uri, route) = self.request_uri_and_route();
        let max_forwards = if extra.contains("Max-Forwards:") { "" } else { "Max-Forwards: 70\r\n" };
        let routes: String = route.iter().map(|r| format!("Route: {r}\r\n")).collect();
        let transport = match self.peer.transport {
            rsip::Transport::Tcp => "TCP",
            rsip::Transport::Tls => "TLS",
            _ => "UDP",
        };
        let mut text = format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/{transport} {sent_by};branch={branch};rport\r\n\
             {max_forwards}{routes}From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n{extra}",
            from = self.local,
            to = self.remote,
            call_id = self.call_id,
        );
        let mut bytes = Vec::new();
        match body {
            Some((ctype, body)) => {
                text.push_str(&format!("Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n", body.len()));
                bytes.extend_from_slice(text.as_bytes());
                bytes.extend_from_slice(body);
            }
            None => {
                text.push_str("Content-Length: 0\r\n\r\n");
                bytes.extend_from_slice(text.as_bytes());
            }
        }
        match message::parse(&bytes, Framing::Datagram) {
            Ok(SipMessage::Request(r)) => Ok(r),
            _ => Err(DialogError::Build(method.to_owned())),
        }
    }
}

fn is_loose(route: &str) -> bool {
    let uri = uri_of(route);
    uri.split(';').skip(1).any(|p| p.trim().eq_ignore_ascii_case("lr") || p.trim().to_ascii_lowercase().starts_with("lr="))
}

/// The Record-Route entries of a message, top first.
pub fn record_route(headers: &rsip::Headers) -> Vec<String> {
    headers
        .iter()
        .filter_map(|h| match h {
            Header::RecordRoute(rr) => Some(rr.value()),
            _ => None,
        })
        .flat_map(split_list)
        .map(str::to_owned)
        .collect()
}

/// The URI of the first Contact.
pub fn contact_uri(headers: &rsip::Headers) -> Option<String> {
    headers.iter().find_map(|h| match h {
        Header::Contact(c) => Some(uri_of(c.value()).to_owned()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{parse, response_for};
    use std::net::SocketAddr;

    fn peer() -> Peer {
        Peer::udp(SocketAddr::from(([192, 0, 2, 1], 5060)))
    }

    fn request(text: &str) -> Request {
        match parse(text.as_bytes(), Framing::Datagram).expect("parses") {
            SipMessage::Request(r) => r,
            SipMessage::Response(_) => panic!("not a request"),
        }
    }

    const INVITE: &str = "INVITE sip:bob@b.example SIP/2.0\r\nVia: SIP/2.0/UDP a.example;branch=z9hG4bK1\r\n\
        Max-Forwards: 70\r\nRecord-Route: <sip:p1.example;lr>, <sip:p2.example;lr>\r\nFrom: <sip:alice@a.example>;tag=at\r\n\
        To: <sip:bob@b.example>\r\nCall-ID: c1\r\nCSeq: 5 INVITE\r\nContact: <sip:alice@192.0.2.9:5070>\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn uas_dialog_takes_route_set_in_order_and_target_from_contact() {
        let d = Dialog::uas(&request(INVITE), "bt", peer()).expect("dialog");
        assert_eq!(d.route, vec!["<sip:p1.example;lr>", "<sip:p2.example;lr>"]);
        assert_eq!(d.target, "sip:alice@192.0.2.9:5070");
        assert_eq!(d.local_tag(), "bt");
        assert_eq!(d.remote_cseq, Some(5));
        assert_eq!(d.state, DialogState::Early);
        assert_eq!(d.id(), DialogId { call_id: "c1".into(), local_tag: "bt".into(), remote_tag: "at".into() });
    }

    #[test]
    fn requests_in_a_dialog_count_cseq_up_and_route_loosely() {
        let mut d = Dialog::uas(&request(INVITE), "bt", peer()).expect("dialog");
        let bye = d.request("BYE", "192.0.2.2:5060", "z9hG4bKx", "", None).expect("bye");
        assert_eq!(bye.uri.to_string(), "sip:alice@192.0.2.9:5070");
        let text = bye.to_string();
        assert!(text.contains("CSeq: 1 BYE"), "{text}");
        assert!(text.find("Route: <sip:p1.example;lr>") < text.find("Route: <sip:p2.example;lr>"), "{text}");
        assert!(text.contains("From: <sip:bob@b.example>;tag=bt"), "{text}");
        assert!(text.contains("To: <sip:alice@a.example>;tag=at"), "{text}");
        let info = d.request("INFO", "192.0.2.2:5060", "z9hG4bKy", "", Some(("application/dtmf-relay", b"Signal=1"))).expect("info");
        assert!(info.to_string().contains("CSeq: 2 INFO"));
        assert_eq!(info.body, b"Signal=1");
    }

    #[test]
    fn strict_router_first_becomes_the_request_uri_and_target_the_last_route() {
        let mut d = Dialog::uas(&request(&INVITE.replace("<sip:p1.example;lr>", "<sip:p1.example>")), "bt", peer()).expect("dialog");
        let bye = d.request("BYE", "192.0.2.2:5060", "z9hG4bKx", "", None).expect("bye");
        assert_eq!(bye.uri.to_string(), "sip:p1.example");
        let text = bye.to_string();
        assert!(text.contains("Route: <sip:p2.example;lr>\r\n"), "{text}");
        assert!(text.contains("Route: <sip:alice@192.0.2.9:5070>\r\n"), "{text}");
        assert!(!text.contains("Route: <sip:p1.example>"), "{text}");
    }

    #[test]
    fn lower_cseq_is_out_of_order_and_target_refresh_updates_the_target() {
        let mut d = Dialog::uas(&request(INVITE), "bt", peer()).expect("dialog");
        let reinvite = INVITE
            .replace("To: <sip:bob@b.example>", "To: <sip:bob@b.example>;tag=bt")
            .replace("CSeq: 5 INVITE", "CSeq: 6 INVITE")
            .replace("192.0.2.9:5070", "198.51.100.7:5080");
        d.receive(&request(&reinvite)).expect("in order");
        assert_eq!(d.target, "sip:alice@198.51.100.7:5080");
        let old = reinvite.replace("CSeq: 6 INVITE", "CSeq: 4 INVITE");
        assert_eq!(d.receive(&request(&old)), Err(DialogError::CSeqOutOfOrder { got: 4, last: 6 }));
        let ack = reinvite.replacen("INVITE sip", "ACK sip", 1).replace("CSeq: 6 INVITE", "CSeq: 6 ACK");
        assert_eq!(d.receive(&request(&ack)), Ok(()));
    }

    #[test]
    fn uac_responses_with_different_to_tags_make_different_dialogs() {
        let mut trying = Dialog::uac(
            "c2".into(),
            "<sip:alice@a.example>;tag=at".into(),
            "<sip:bob@b.example>".into(),
            "sip:bob@192.0.2.20".into(),
            vec!["<sip:edge.example;lr>".into()],
            peer(),
        );
        let invite = trying.request("INVITE", "192.0.2.2:5060", "z9hG4bKi", "", None).expect("invite");
        assert!(invite.to_string().contains("Route: <sip:edge.example;lr>"));
        assert!(invite.to_string().contains("CSeq: 1 INVITE"));
        let mut ringing = response_for(&invite, 180, None, Some("t1"));
        ringing.headers.push(Header::Contact(rsip::headers::Contact::new("<sip:bob@192.0.2.21>")));
        ringing.headers.push(Header::RecordRoute(rsip::headers::RecordRoute::new("<sip:q1.example;lr>, <sip:q2.example;lr>")));
        let early = trying.fork(&ringing).expect("early");
        assert_eq!(early.state, DialogState::Early);
        assert_eq!(early.target, "sip:bob@192.0.2.21");
        assert_eq!(early.route, vec!["<sip:q2.example;lr>", "<sip:q1.example;lr>"]);
        let mut ok = response_for(&invite, 200, None, Some("t2"));
        ok.headers.push(Header::Contact(rsip::headers::Contact::new("<sip:bob@192.0.2.22>")));
        let confirmed = trying.fork(&ok).expect("confirmed");
        assert_ne!(early.id(), confirmed.id());
        assert_eq!(confirmed.state, DialogState::Confirmed);
        assert!(confirmed.route.is_empty(), "no Record-Route in the 2xx: no route set");
        let ack = confirmed.ack(1, "192.0.2.2:5060", "z9hG4bKa", None).expect("ack");
        assert!(ack.to_string().contains("CSeq: 1 ACK"));
        assert_eq!(ack.uri.to_string(), "sip:bob@192.0.2.22");
        let no_tag = response_for(&invite, 180, None, None);
        assert_eq!(trying.fork(&no_tag).unwrap_err(), DialogError::NoRemoteTag);
    }

    #[test]
    fn a_confirmed_dialog_ignores_later_responses_but_takes_target_refreshes() {
        let mut d = Dialog::uas(&request(INVITE), "bt", peer()).expect("dialog");
        d.confirm();
        let mut reinvite = d.request("INVITE", "192.0.2.2:5060", "z9hG4bKr", "", None).expect("re-INVITE");
        reinvite.headers.push(Header::Contact(rsip::headers::Contact::new("<sip:bob@b2b.example>")));
        let mut ok = response_for(&reinvite, 200, None, None);
        ok.headers.push(Header::Contact(rsip::headers::Contact::new("<sip:alice@203.0.113.5>")));
        d.update(&ok);
        assert_eq!(d.target, "sip:alice@192.0.2.9:5070");
        d.target_refreshed(&ok);
        assert_eq!(d.target, "sip:alice@203.0.113.5");
    }
}
