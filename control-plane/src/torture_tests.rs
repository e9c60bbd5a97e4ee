//! RFC 4475 ("SIP Torture Test Messages"): the 49 cases of its section 3, each fed to the whole
//! sans-IO core as a UDP datagram, with the answer the RFC expects of a UAS/registrar.
//!
//! The messages are written here after the RFC's descriptions, addressed to this server's domain
//! (`sip.test`), each exercising the same construct as the RFC's message of that name (line
//! folding, compact forms, escapes, scalar overflows, unknown schemes, …). Where the RFC lets an
//! element choose (a UAS may authenticate before it inspects the content), the comment says
//! what this server does and why; the expected status is then exact.
//!
//! Sources: `192.0.2.77` is an untrusted phone (INVITEs are challenged with 407, REGISTERs with
//! 401); `192.0.2.1` is a trusted trunk (no challenge, so content checks are reached).

use crate::server_tests::World;

const PHONE: &str = "192.0.2.77:5060";
const TRUNK: &str = "192.0.2.1:5060";

/// What the server must do with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Answer with this status (and nothing else).
    Status(u16),
    /// Send nothing (responses that match no transaction, unanswerable garbage); `malformed`
    /// says whether the parse-error counter must move.
    Silent { malformed: bool },
}

/// SDP used as the body of INVITEs.
const SDP: &str =
    "v=0\r\no=alice 53655765 2353687637 IN IP4 192.0.2.77\r\ns=-\r\nc=IN IP4 192.0.2.77\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";

/// `head` (lines separated by `\n`, which become CRLF; continuation lines start with SP/HTAB)
/// followed by an empty line and `body`. `{len}` in the head becomes the body's length.
fn message(head: &str, body: &str) -> Vec<u8> {
    let head = head.trim_start_matches('\n').replace('\n', "\r\n").replace("{len}", &body.len().to_string());
    let mut out = head.into_bytes();
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

/// Feeds `bytes` from `source` to a fresh server and checks the answer.
fn check(name: &str, source: &str, bytes: &[u8], expect: Expect) -> Vec<String> {
    let mut w = World::with_config("");
    let malformed_before = w.core.stats().malformed;
    w.receive_bytes(source, bytes);
    let sent = w.take(source, "");
    let others: Vec<_> = w.sent.drain(..).collect();
    assert!(others.is_empty(), "{name}: sent elsewhere: {others:?}");
    match expect {
        Expect::Status(code) => {
            let statuses: Vec<String> = sent.iter().map(|m| m.lines().next().unwrap_or_default().to_owned()).collect();
            let finals: Vec<&String> = statuses.iter().filter(|s| !s.starts_with("SIP/2.0 100 ")).collect();
            assert!(finals.len() == 1 && finals[0].starts_with(&format!("SIP/2.0 {code} ")), "{name}: expected {code}, got {statuses:?}");
        }
        Expect::Silent { malformed } => {
            assert!(sent.is_empty(), "{name}: expected no answer, got {sent:?}");
            let counted = w.core.stats().malformed > malformed_before;
            assert_eq!(counted, malformed, "{name}: malformed counter moved: {counted}");
        }
    }
    sent
}

macro_rules! torture {
    ($($(#[doc = $doc:literal])* $name:ident: $source:expr, $expect:expr, $bytes:expr;)*) => {
        $(
            $(#[doc = $doc])*
            #[test]
            fn $name() {
                check(stringify!($name), $source, &$bytes, $expect);
            }
        )*
        /// Every case, for the count check.
        const CASES: &[&str] = &[$(stringify!($name)),*];
    };
}

torture! {
    // ---------------- §3.1.1 valid messages: parsed and processed ----------------

    /// 3.1.1.1 wsinv: folding everywhere, LWS around colons and slashes, compact forms, escapes
    /// in quoted strings, an unknown header with odd separators, a cookie-less top branch (RFC
    /// 2543 matching). The To tag makes it in-dialog, and there is no such dialog: 481.
    rfc4475_3_1_1_1_short_tortuous_invite: PHONE, Expect::Status(481), message(r#"
INVITE sip:bob@sip.test;unknownparam SIP/2.0
TO :
 sip:bob@sip.test ;   tag    = 1918181833n
from   : "Alice \"the caller\" Smith"
  <sip:alice@sip.test>
  ;
  tag = 98asjd8
MaX-fOrWaRdS: 0068
Call-ID: wsinv.ndaksdj@192.0.2.77
Content-Length   : {len}
cseq: 0009
  INVITE
Via  : SIP  /   2.0
 /UDP
    192.0.2.77;branch=390skdjuw
s :
NewFangledHeader:   newfangled value
 continued newfangled value
UnknownHeaderWithUnusualValue: ;;,,;;,;
Content-Type: application/sdp
Route:
 <sip:services.sip.test;lr;unknownwith=value;unknown-no-value>
v:  SIP  / 2.0  / TCP     spindle.sip.test   ;
  branch  =   z9hG4bK9ikj8  ,
 SIP  /    2.0   / UDP  192.168.255.111   ; branch=
 z9hG4bK30239
m:"Quoted string \"\"" <sip:alice@192.0.2.77> ; newparam =
      newvalue ;
  secondparam ; q = 0.33"#, SDP);

    /// 3.1.1.2 intmeth: every token character in the method and URI; a method this server does
    /// not know: 501.
    rfc4475_3_1_1_2_wide_range_of_valid_characters: PHONE, Expect::Status(501), message(r#"
!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@sip.test SIP/2.0
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bK-.!%66*_+`'~
To: "BEL:\ NUL:\ DEL:\~" <sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@sip.test>
From: token1~` token2'+_ token3*%!.- <sip:mundane@sip.test>;fromParam''~+*_!.-%="работающий";tag=_token~1'+`*%!-.
Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\/"][?}{
CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~
Max-Forwards: 255
extensionHeader-!.%*+_`'~:﻿大停電
Content-Length: 0"#, "");

    /// 3.1.1.3 esc01: %-escapes in the Request-URI user part and in To; routed as the escaped
    /// user, after authentication: 407.
    rfc4475_3_1_1_3_valid_use_of_percent_escaping: PHONE, Expect::Status(407), message(r#"
INVITE sip:sips%3Auser%40example.com@sip.test;other-param=summit SIP/2.0
To: sip:%62ob@sip.test
From: <sip:I%20have%20spaces@sip.test>;tag=938
Max-Forwards: 87
i: esc01.239409asdfakjkn23onasd0-3234
CSeq: 234234 INVITE
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKkdjuw
C: application/sdp
Contact:
  <sip:cal%6Cer@192.0.2.77;%6C%72;n%61me=v%61lue%25%34%31>
Content-Length: {len}"#, SDP);

    /// 3.1.1.4 escnull: escaped NULs in the user part of To, From and Contact; a valid REGISTER,
    /// challenged: 401.
    rfc4475_3_1_1_4_escaped_nulls_in_uris: PHONE, Expect::Status(401), message(r#"
REGISTER sip:sip.test SIP/2.0
To: sip:null-%00-null@sip.test
From: sip:null-%00-null@sip.test;tag=839923423
Max-Forwards: 70
Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd
CSeq: 14398234 REGISTER
Via: SIP/2.0/UDP 192.0.2.77:5060;branch=z9hG4bKkdjuw
Contact: <sip:%00@192.0.2.77>
Contact: <sip:%00%00@192.0.2.77>
L:0"#, "");

    /// 3.1.1.5 esc02: `%` in a method is not an escape: RE%47IST%45R is not REGISTER: 501.
    rfc4475_3_1_1_5_percent_is_not_an_escape_in_a_method: PHONE, Expect::Status(501), message(r#"
RE%47IST%45R sip:sip.test SIP/2.0
To: "%Z%45" <sip:resource@sip.test>
From: "%Z%45" <sip:resource@sip.test>;tag=f232jadfj23
Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf
Via: SIP/2.0/TCP 192.0.2.77;branch=z9hG4bK209%fzsnel234
CSeq: 29344 RE%47IST%45R
Max-Forwards: 70
Contact: <sip:alias1@192.0.2.77>
C%6Fntact: <sip:alias2@192.0.2.77>
Contact: <sip:alias3@192.0.2.77>
l: 0"#, "");

    /// 3.1.1.6 lwsdisp: no LWS between a display name and `<`; OPTIONS to the server: 200.
    rfc4475_3_1_1_6_no_lws_between_display_name_and_angle_bracket: PHONE, Expect::Status(200), message(r#"
OPTIONS sip:sip.test SIP/2.0
To: sip:sip.test
From: caller<sip:caller@sip.test>;tag=323
Max-Forwards: 70
Call-ID: lwsdisp.1234abcd@funky.sip.test
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKkdjuw
l: 0"#, "");

    /// 3.1.1.7 longreq: very long display name, tag, Call-ID, header value and many Via values:
    /// parsed and challenged: 407.
    rfc4475_3_1_1_7_long_values_in_header_fields: PHONE, Expect::Status(407), {
        let long = "amazinglylongcallid".repeat(40);
        let vias: String = (0..30).map(|i| format!("Via: SIP/2.0/TCP sip{i}.sip.test:5060;branch=z9hG4bK{i}{long}\n")).collect();
        message(&format!(
            "INVITE sip:bob@sip.test SIP/2.0\n\
             To: \"I have a user name of {} proportion\" <sip:bob@sip.test:6000;unknownparam1=verylonguri{}>\n\
             From: sip:alice@sip.test;tag={}\n\
             Call-ID: longreq.{long}\nCSeq: 3882340 INVITE\nMax-Forwards: 70\n\
             Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKlongreq\n{vias}\
             Contact: <sip:alice@192.0.2.77>\nX-Long: {long}\nContent-Type: application/sdp\nContent-Length: {{len}}",
            "extreme".repeat(60), "x".repeat(400), "12982982".repeat(40)), SDP)
    };

    /// 3.1.1.8 dblreq: a REGISTER with Content-Length 0 followed by an INVITE in one datagram;
    /// the bytes after the declared body are discarded (§18.3), the REGISTER is challenged: 401.
    rfc4475_3_1_1_8_extra_trailing_octets_in_a_udp_datagram: PHONE, Expect::Status(401), {
        let mut bytes = message(r#"
REGISTER sip:sip.test SIP/2.0
To: sip:bob@sip.test
From: sip:bob@sip.test;tag=8938asfdsfaj
Max-Forwards: 70
Call-ID: dblreq.0ha0isndaksdj99sdfafnl3lk233412
Contact: sip:bob@192.0.2.77
CSeq: 8 REGISTER
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKdblreq1
Content-Length: 0"#, "");
        bytes.extend_from_slice(&message(r#"
INVITE sip:bob@sip.test SIP/2.0
To: sip:bob@sip.test
From: sip:alice@sip.test;tag=8938asfdsfaj
Max-Forwards: 70
Call-ID: dblreq.0ha0isndaksdj99sdfafnl3lk233413
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKdblreq2
Content-Length: 0"#, ""));
        bytes
    };

    /// 3.1.1.9 semiuri: `;` in the Request-URI's user part (user `user;par=u@example.net`);
    /// OPTIONS to the server's domain: 200.
    rfc4475_3_1_1_9_semicolons_in_the_user_part: PHONE, Expect::Status(200), message(r#"
OPTIONS sip:user;par=u%40example.net@sip.test SIP/2.0
To: sip:j_user@sip.test
From: sip:caller@sip.test;tag=33242
Max-Forwards: 3
Call-ID: semiuri.0ha0isndaksdj
CSeq: 8 OPTIONS
Accept: application/sdp, application/pkcs7-mime,
        multipart/mixed, multipart/signed,
        message/sip, message/sipfrag
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKkdjuw
l: 0"#, "");

    /// 3.1.1.10 transports: SCTP, TLS, UNKNOWN and TCP below the top Via; answered to the top
    /// one: 200.
    rfc4475_3_1_1_10_varied_and_unknown_transports: PHONE, Expect::Status(200), message(r#"
OPTIONS sip:sip.test SIP/2.0
To: sip:user@sip.test
From: <sip:caller@sip.test>;tag=323
Max-Forwards: 70
Call-ID: transports.kijh4akdnaqjkwendsasfdj
Accept: application/sdp
CSeq: 60 OPTIONS
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKkdjuw
Via: SIP/2.0/SCTP t2.sip.test;branch=z9hG4bKklasjdhf
Via: SIP/2.0/TLS t3.sip.test;branch=z9hG4bK2980unddj
Via: SIP/2.0/UNKNOWN t4.sip.test;branch=z9hG4bKasd0f3en
Via: SIP/2.0/TCP t5.sip.test;branch=z9hG4bK0a9idfnee
l: 0"#, "");

    /// 3.1.1.11 mpart01: a multipart/mixed body (SDP plus a signature); parsed, challenged: 407.
    rfc4475_3_1_1_11_multipart_mime_body: PHONE, Expect::Status(407), message(r#"
INVITE sip:bob@sip.test SIP/2.0
To: sip:bob@sip.test
From: sip:alice@sip.test;tag=9jf2jzi
Max-Forwards: 70
Call-ID: mpart01.4ecn9c
CSeq: 2 INVITE
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKmpart01
Contact: <sip:alice@192.0.2.77>
MIME-Version: 1.0
Content-Type: multipart/mixed;boundary=7a9cbec02ceef655
Content-Length: {len}"#, "--7a9cbec02ceef655\r\nContent-Type: application/sdp\r\n\r\nv=0\r\no=- 1 1 IN IP4 192.0.2.77\r\ns=-\r\nc=IN IP4 192.0.2.77\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n\r\n--7a9cbec02ceef655\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n0\x01\x02\x03\r\n--7a9cbec02ceef655--\r\n");

    /// 3.1.1.12 unreason: a response with an unusual (UTF-8, symbol-laden) reason phrase; it
    /// parses, matches no transaction, and is dropped without counting as malformed.
    rfc4475_3_1_1_12_unusual_reason_phrase: PHONE, Expect::Silent { malformed: false }, message(r#"
SIP/2.0 200 = 2**3 * 5**2 но сто девяносто девять - простое
Via: SIP/2.0/UDP 192.0.2.100:5060;branch=z9hG4bK-39234-23523
Call-ID: unreason.1234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@sip.test;tag=11141343
To: sip:user@sip.test;tag=2229
Content-Length: 0
Contact: <sip:user@192.0.2.4>"#, "");

    /// 3.1.1.13 noreason: a response with an empty reason phrase; parsed, stray, dropped.
    rfc4475_3_1_1_13_empty_reason_phrase: PHONE, Expect::Silent { malformed: false }, {
        let mut bytes = b"SIP/2.0 100 \r\n".to_vec();
        bytes.extend_from_slice(&message(r#"
Via: SIP/2.0/UDP 192.0.2.100:5060;branch=z9hG4bK-39234-23523
Call-ID: noreason.asndj203insdf99223ndf
CSeq: 35 INVITE
From: <sip:user@sip.test>;tag=39ansfi3
To: <sip:user@sip.test>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@192.0.2.4>"#, ""));
        bytes
    };

    // ---------------- §3.1.2 invalid messages ----------------

    /// 3.1.2.1 badinv01: extraneous separators (`;;,;,,` in Via, `;;;;` before a tag): 400.
    rfc4475_3_1_2_1_extraneous_header_field_separators: PHONE, Expect::Status(400), message(r#"
INVITE sip:bob@sip.test SIP/2.0
To: sip:bob@sip.test
From: sip:alice@sip.test;;;;tag=ja743ks76zlflH
Max-Forwards: 70
Call-ID: badinv01.2jl2idn29
CSeq: 7 INVITE
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKbadinv01;;,;,,
Contact: <sip:alice@192.0.2.77>
Content-Type: application/sdp
Content-Length: {len}"#, SDP);

    /// 3.1.2.2 clerr: Content-Length larger than the body: 400.
    rfc4475_3_1_2_2_content_length_larger_than_message: PHONE, Expect::Status(400), message(r#"
INVITE sip:bob@sip.test SIP/2.0
Max-Forwards: 80
To: sip:bob@sip.test
From: sip:alice@sip.test;tag=93942939o2
Contact: <sip:alice@192.0.2.77>
Call-ID: clerr.0ha0isndaksdjweiafasdk3
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKkdjuw--clerr
Content-Type: application/sdp
Content-Length: 9999"#, SDP);

    /// 3.1.2.3 ncl: negative Content-Length: 400.
    rfc4475_3_1_2_3_negative_content_length: PHONE, Expect::Status(400), message(r#"
INVITE sip:bob@sip.test SIP/2.0
Max-Forwards: 254
To: sip:bob@sip.test
From: sip:alice@sip.test;tag=32394234
Call-ID: ncl.0ha0isndaksdj2193423r542w35
CSeq: 0 INVITE
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKkdjuw
Contact: <sip:alice@192.0.2.77>
Content-Type: application/sdp
Content-Length: -999"#, SDP);

    /// 3.1.2.4 scalar02: CSeq 2^65, Max-Forwards 300, Expires and a contact's expires beyond
    /// 2^32: 400 (before authentication).
    rfc4475_3_1_2_4_request_scalar_fields_with_overlarge_values: PHONE, Expect::Status(400), message(r#"
REGISTER sip:sip.test SIP/2.0
Via: SIP/2.0/TCP 192.0.2.77:5060;branch=z9hG4bKsxKR0ILuCK0
Max-Forwards: 300
From: sip:bob@sip.test;tag=239232jh3
To: sip:bob@sip.test
Call-ID: scalar02.23o0pd9vanlq3wnrlnewofjas9ui32
CSeq: 36893488147419103232 REGISTER
Contact: <sip:bob@192.0.2.77:5060>;expires=280297596632815
Expires: 10000000000000000000000000000000000000000000000000000000000000000000000000000000000
l: 0"#, "");

    /// 3.1.2.5 scalarlg: a response with overlarge CSeq and Retry-After: dropped and counted.
    rfc4475_3_1_2_5_response_scalar_fields_with_overlarge_values: PHONE, Expect::Silent { malformed: true }, message(r#"
SIP/2.0 503 Service Unavailable
Via: SIP/2.0/TCP 192.0.2.100:5060;branch=z9hG4bKzzxdiwo34sw;received=192.0.2.129
To: <sip:bob@sip.test>
From: <sip:alice@sip.test>;tag=2easdjfejw
CSeq: 9292394834772304023312 OPTIONS
Call-ID: scalarlg.noase0of0234hn2qofoaf0232aewf2394r
Retry-After: 949302838503028349304023988
Warning: 1812 overture "In Progress"
Content-Length: 0"#, "");

    /// 3.1.2.6 quotbal: an unterminated quoted string in a display name: 400.
    rfc4475_3_1_2_6_unterminated_quoted_string_in_display_name: PHONE, Expect::Status(400), message(r#"
INVITE sip:bob@sip.test SIP/2.0
To: "Mr. J. User <sip:bob@sip.test>
From: sip:alice@sip.test;tag=93334
Max-Forwards: 10
Call-ID: quotbal.aksdj
Contact: <sip:alice@192.0.2.77>
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.77:5060;branch=z9hG4bK-quotbal
Content-Type: application/sdp
Content-Length: {len}"#, SDP);

    /// 3.1.2.7 ltgtruri: `<>` around the Request-URI: 400.
    rfc4475_3_1_2_7_angle_brackets_around_the_request_uri: PHONE, Expect::Status(400), message(r#"
INVITE <sip:bob@sip.test> SIP/2.0
To: sip:bob@sip.test
From: sip:alice@sip.test;tag=39291
Max-Forwards: 23
Call-ID: ltgtruri.1@192.0.2.77
CSeq: 1 INVITE
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKltgtruri
Contact: <sip:alice@192.0.2.77>
Content-Type: application/sdp
Content-Length: {len}"#, SDP);

    /// 3.1.2.8 lwsruri: whitespace inside the Request-URI: 400.
    rfc4475_3_1_2_8_embedded_lws_in_the_request_uri: PHONE, Expect::Status(400), message(r#"
INVITE sip:bob@sip.test; lr SIP/2.0
To: sip:bob@sip.test;tag=3xfe-9921883-z9f
From: sip:alice@sip.test;tag=231413434
Max-Forwards: 5
Call-ID: lwsruri.asdfasdoeoi2323-asdfwrn23-asd834rk423
CSeq: 2130706432 INVITE
Via: SIP/2.0/UDP 192.0.2.77:5060;branch=z9hG4bKkdjuw2395
Contact: <sip:alice@192.0.2.77>
Content-Type: application/sdp
Content-Length: {len}"#, SDP);

    /// 3.1.2.9 lwsstart: several SPs between the Request-Line's elements: 400.
    rfc4475_3_1_2_9_multiple_spaces_in_the_request_line: PHONE, Expect::Status(400), message(r#"
INVITE  sip:bob@sip.test  SIP/2.0
Max-Forwards: 8
To: sip:bob@sip.test
From: sip:alice@sip.test;tag=8814
Call-ID: lwsstart.dfknq234oi243099adsdfnawe3@192.0.2.77
CSeq: 1893884 INVITE
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKkdjuw3923
Contact: <sip:alice@192.0.2.77>
Content-Type: application/sdp
Content-Length: {len}"#, SDP);

    /// 3.1.2.10 trws: spaces after the SIP-Version of the Request-Line: 400.
    rfc4475_3_1_2_10_trailing_spaces_after_the_request_line: PHONE, Expect::Status(400), message(
        "OPTIONS sip:sip.test SIP/2.0  \nVia: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKkdjuw\nMax-Forwards: 70\n\
         From: <sip:alice@sip.test>;tag=2323\nTo: <sip:sip.test>\nCall-ID: trws.oiu23zzx9\nCSeq: 1 OPTIONS\nl: 0", "");

    /// 3.1.2.11 escruri: escaped headers in the Request-URI: 400.
    rfc4475_3_1_2_11_escaped_headers_in_the_request_uri: PHONE, Expect::Status(400), message(r#"
INVITE sip:bob@sip.test?Route=%3Csip:example.com%3E SIP/2.0
To: sip:bob@sip.test
From: sip:alice@sip.test;tag=341518
Max-Forwards: 7
Contact: <sip:alice@192.0.2.77>
Call-ID: escruri.23940-asdfhj-aje3br-234q098w-fawerh2q-h4n5
CSeq: 149209342 INVITE
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKkdjuw
Content-Type: application/sdp
Content-Length: {len}"#, SDP);

    /// 3.1.2.12 baddate: a Date with a time zone other than GMT. The RFC lets the element ignore
    /// Date (this server never uses it), so the INVITE is processed: 407.
    rfc4475_3_1_2_12_invalid_time_zone_in_date: PHONE, Expect::Status(407), message(r#"
INVITE sip:bob@sip.test SIP/2.0
To: sip:bob@sip.test
From: sip:alice@sip.test;tag=2234923
Max-Forwards: 70
Call-ID: baddate.239423mnsadf3j23lj42--sedfnm234
CSeq: 1392934 INVITE
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKkdjuw
Date: Fri, 01 Jan 2010 16:00:00 EST
Contact: <sip:alice@192.0.2.77>
Content-Type: application/sdp
Content-Length: {len}"#, SDP);

    /// 3.1.2.13 regbadct: a Contact URI with `?` headers not enclosed in `<>`; refused before
    /// any challenge: 400.
    rfc4475_3_1_2_13_unbracketed_contact_uri_with_headers: PHONE, Expect::Status(400), message(r#"
REGISTER sip:sip.test SIP/2.0
To: sip:bob@sip.test
From: sip:bob@sip.test;tag=998332
Max-Forwards: 70
Call-ID: regbadct.k345asrl3fdbv@192.0.2.77
CSeq: 1 REGISTER
Via: SIP/2.0/UDP 192.0.2.77:5060;branch=z9hG4bKregbadct
Contact: sip:bob@192.0.2.77?Route=%3Csip:sip.example.com%3E
l: 0"#, "");

    /// 3.1.2.14 badaspec: whitespace inside a name-addr's angle brackets: 400.
    rfc4475_3_1_2_14_spaces_within_addr_spec: PHONE, Expect::Status(400), message(r#"
OPTIONS sip:sip.test SIP/2.0
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKkdjuw
Max-Forwards: 70
From: "Bell, Alexander" <sip:a.g.bell@sip.test>;tag=433423
To: "Watson, Thomas" < sip:t.watson@sip.test >
Call-ID: badaspec.sdf0234n2nds0a099u23h3hnnw009cdkne3
Accept: application/sdp
CSeq: 3923239 OPTIONS
l: 0"#, "");

    /// 3.1.2.15 baddn: non-token characters (a comma) in an unquoted display name: 400.
    rfc4475_3_1_2_15_non_token_characters_in_display_name: PHONE, Expect::Status(400), message(r#"
OPTIONS sip:sip.test SIP/2.0
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKkdjuw
Max-Forwards: 70
From: Bell, Alexander <sip:a.g.bell@sip.test>;tag=43
To: Watson, Thomas <sip:t.watson@sip.test>
Call-ID: baddn.31415@c.example.com
Accept: application/sdp
CSeq: 3923239 OPTIONS
l: 0"#, "");

    /// 3.1.2.16 badvers: SIP/7.0: 505.
    rfc4475_3_1_2_16_unknown_protocol_version: PHONE, Expect::Status(505), message(r#"
OPTIONS sip:sip.test SIP/7.0
Via: SIP/7.0/UDP 192.0.2.77;branch=z9hG4bKkdjuw
To: <sip:t.watson@sip.test>
From: <sip:a.g.bell@sip.test>;tag=qweoiqpe
Max-Forwards: 70
Call-ID: badvers.t8m9xc
CSeq: 1 OPTIONS
l: 0"#, "");

    /// 3.1.2.17 mismatch01: the CSeq method is not the request's: 400.
    rfc4475_3_1_2_17_start_line_and_cseq_method_mismatch: PHONE, Expect::Status(400), message(r#"
OPTIONS sip:sip.test SIP/2.0
To: sip:j.user@sip.test
From: sip:caller@sip.test;tag=34525
Max-Forwards: 6
Call-ID: mismatch01.dj0234sxdfl3
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKkdjuw
l: 0"#, "");

    /// 3.1.2.18 mismatch02: an unknown method whose CSeq names another: 400 (the mismatch
    /// outranks 501).
    rfc4475_3_1_2_18_unknown_method_with_cseq_method_mismatch: PHONE, Expect::Status(400), message(r#"
NEWMETHOD sip:sip.test SIP/2.0
To: sip:j.user@sip.test
From: sip:caller@sip.test;tag=34525
Max-Forwards: 6
Call-ID: mismatch02.dj0234sxdfl3
CSeq: 8 INVITE
Contact: <sip:caller@192.0.2.77>
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKkdjuw
Content-Type: application/sdp
l: {len}"#, SDP);

    /// 3.1.2.19 bigcode: a status code of 4294967301 in a response: dropped and counted.
    rfc4475_3_1_2_19_overlarge_response_code: PHONE, Expect::Silent { malformed: true }, message(r#"
SIP/2.0 4294967301 better not break the receiver
Via: SIP/2.0/UDP 192.0.2.100:5060;branch=z9hG4bK-bigcode
Call-ID: bigcode.asdof3uj203asdnf3429uasdhfas3ehjasdfas9i
CSeq: 353494 INVITE
From: <sip:user@sip.test>;tag=39ansfi3
To: <sip:user@sip.test>;tag=902jndnke3
Content-Length: 0
Contact: <sip:user@192.0.2.4>"#, "");

    // ---------------- §3.2 transaction layer ----------------

    /// 3.2.1 badbranch: a branch that is exactly the magic cookie; handled with RFC 2543
    /// matching like any cookie-less branch: 200.
    rfc4475_3_2_1_branch_that_is_only_the_magic_cookie: PHONE, Expect::Status(200), message(r#"
OPTIONS sip:sip.test SIP/2.0
To: sip:user@sip.test
From: sip:caller@sip.test;tag=239232jh3
CSeq: 39234321 OPTIONS
Via: SIP/2.0/UDP 192.0.2.77:5060;branch=z9hG4bK
Max-Forwards: 70
Call-ID: badbranch.sadonfo23i420jv0as0derf3j3n
l: 0"#, "");

    // ---------------- §3.3 application layer ----------------

    /// 3.3.1 insuf: no Call-ID, From or To; answered 400 with the headers that are there.
    rfc4475_3_3_1_missing_required_header_fields: PHONE, Expect::Status(400), message(r#"
INVITE sip:bob@sip.test SIP/2.0
CSeq: 193942 INVITE
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKinsuf
Content-Type: application/sdp
l: {len}"#, SDP);

    /// 3.3.2 unkscm: a Request-URI of an unknown scheme: 416.
    rfc4475_3_3_2_request_uri_with_unknown_scheme: PHONE, Expect::Status(416), message(r#"
OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0
To: sip:user@sip.test
From: sip:caller@sip.test;tag=384
Max-Forwards: 3
Call-ID: unkscm.nasdfasser0q239nwsdfasdkl34
CSeq: 3923423 OPTIONS
Via: SIP/2.0/TCP 192.0.2.77;branch=z9hG4bKunkscm
Content-Length: 0"#, "");

    /// 3.3.3 novelsc: a Request-URI of a known but unusual scheme: 416.
    rfc4475_3_3_3_request_uri_with_atypical_scheme: PHONE, Expect::Status(416), message(r#"
OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0
To: sip:user@sip.test
From: sip:caller@sip.test;tag=384
Max-Forwards: 3
Call-ID: novelsc.asdfasser0q239nwsdfasdkl34
CSeq: 3923423 OPTIONS
Via: SIP/2.0/TCP 192.0.2.77;branch=z9hG4bKnovelsc
Content-Length: 0"#, "");

    /// 3.3.4 unksm2: To, From and Contact with URIs of unknown schemes in a REGISTER; a registrar
    /// cannot bind a non-SIP address-of-record: 400 (before any challenge).
    rfc4475_3_3_4_unknown_uri_schemes_in_header_fields: PHONE, Expect::Status(400), message(r#"
REGISTER sip:sip.test SIP/2.0
To: isbn:2983792873
From: <http://www.example.com>;tag=3234233
Call-ID: unksm2.daksdj@hyphenated-host.example.com
CSeq: 234902 REGISTER
Max-Forwards: 70
Via: SIP/2.0/UDP 192.0.2.77:5060;branch=z9hG4bKunksm2
Contact: <name:John_Smith>
l: 0"#, "");

    /// 3.3.5 bext01: Require with options this server does not support: 420 listing them in
    /// Unsupported (Proxy-Require is for proxies and ignored by a UAS).
    rfc4475_3_3_5_require_with_unknown_extensions: PHONE, Expect::Status(420), message(r#"
OPTIONS sip:sip.test SIP/2.0
To: sip:j_user@sip.test
From: sip:caller@sip.test;tag=242etr
Max-Forwards: 6
Call-ID: bext01.0ha0isndaksdj
Require: nothingSupportsThis, nothingSupportsThisEither
Proxy-Require: noProxiesSupportThis, norDoAnyProxiesSupportThis
CSeq: 8 OPTIONS
Via: SIP/2.0/TLS 192.0.2.77;branch=z9hG4bKkdjuw
Content-Length: 0"#, "");

    /// 3.3.6 invut: an INVITE body of an unknown Content-Type (from a trusted trunk, so no
    /// challenge comes first): 415 with Accept.
    rfc4475_3_3_6_unknown_content_type: TRUNK, Expect::Status(415), message(r#"
INVITE sip:bob@sip.test SIP/2.0
Contact: <sip:caller@192.0.2.1>
To: sip:bob@sip.test
From: sip:caller@sip.test;tag=8392034
Max-Forwards: 70
Call-ID: invut.0ha0isndaksdjadsfij34n23d
CSeq: 235448 INVITE
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkdjuw
Content-Type: application/unknownformat
Content-Length: {len}"#, "<audio>\r\n <pcmu port=\"443\"/>\r\n</audio>\r\n");

    /// 3.3.7 regaut01: an Authorization of an unknown scheme; ignored, challenged: 401.
    rfc4475_3_3_7_unknown_authorization_scheme: PHONE, Expect::Status(401), message(r#"
REGISTER sip:sip.test SIP/2.0
To: sip:bob@sip.test
From: sip:bob@sip.test;tag=2374
Call-ID: regaut01.0ha0isndaksdj
CSeq: 9338 REGISTER
Via: SIP/2.0/TCP 192.0.2.77;branch=z9hG4bKkdjuw
Max-Forwards: 70
Authorization: NoOneKnowsThisScheme opaque-data=here
Content-Length: 0"#, "");

    /// 3.3.8 multi01: several values in single-value headers (Call-ID, To, From, CSeq): 400.
    rfc4475_3_3_8_multiple_values_in_single_value_headers: PHONE, Expect::Status(400), message(r#"
INVITE sip:bob@sip.test SIP/2.0
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKmulti01
Max-Forwards: 70
Call-ID: multi01.98asdh@192.0.2.77
CSeq: 59 INVITE
Call-ID: multi01.98asdh@192.0.2.2
From: sip:alice@sip.test;tag=3413415
To: sip:bob@sip.test
To: sip:carol@sip.test
Contact: <sip:alice@192.0.2.77>
Content-Type: application/sdp
Content-Length: {len}"#, SDP);

    /// 3.3.9 mcl01: two different Content-Length values: 400.
    rfc4475_3_3_9_multiple_content_length_values: PHONE, Expect::Status(400), message(r#"
OPTIONS sip:sip.test SIP/2.0
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKkdjuw
Max-Forwards: 70
From: sip:caller@sip.test;tag=39242
To: sip:sip.test
Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf
CSeq: 15932 OPTIONS
Content-Length: 13
Content-Length: 0"#, "0123456789012");

    /// 3.3.10 bcast: a 200 whose top Via names a broadcast address; it answers nothing this
    /// server sent, so it is dropped (not counted as malformed).
    rfc4475_3_3_10_response_with_broadcast_via: PHONE, Expect::Silent { malformed: false }, message(r#"
SIP/2.0 200 OK
Via: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923
Via: SIP/2.0/UDP 255.255.255.255;branch=z9hG4bK1saber23
Call-ID: bcast.0384840201234ksdfak3j2erwedfsASdf
CSeq: 35 INVITE
From: sip:user@sip.test;tag=11141343
To: sip:user@sip.test;tag=2229
Content-Length: 0
Contact: <sip:user@192.0.2.4>"#, "");

    /// 3.3.11 zeromf: Max-Forwards 0 on an OPTIONS addressed to this server, which answers it
    /// itself (no forwarding involved): 200.
    rfc4475_3_3_11_max_forwards_of_zero: PHONE, Expect::Status(200), message(r#"
OPTIONS sip:sip.test SIP/2.0
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKkdjuw
Max-Forwards: 0
From: sip:caller@sip.test;tag=3ghsd41
To: sip:sip.test
Call-ID: zeromf.jfasdlfnm2o2l43r5u0asdfas
CSeq: 39234321 OPTIONS
l: 0"#, "");

    /// 3.3.12 cparam01: a Contact without `<>` whose parameter belongs to the header, not the
    /// URI; valid, challenged: 401.
    rfc4475_3_3_12_contact_header_parameter_without_brackets: PHONE, Expect::Status(401), message(r#"
REGISTER sip:sip.test SIP/2.0
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKkdjuw
Max-Forwards: 70
From: sip:bob@sip.test;tag=247kjasd
To: sip:bob@sip.test
Call-ID: cparam01.070bgr6
CSeq: 3 REGISTER
Contact: sip:+19725552222@192.0.2.77;unknownparam
l: 0"#, "");

    /// 3.3.13 cparam02: the same parameter inside `<>` (a URI parameter); valid: 401.
    rfc4475_3_3_13_contact_uri_parameter_in_brackets: PHONE, Expect::Status(401), message(r#"
REGISTER sip:sip.test SIP/2.0
Via: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKkdjuw
Max-Forwards: 70
From: sip:bob@sip.test;tag=2485mcpa
To: sip:bob@sip.test
Call-ID: cparam02.0a3ncjt3
CSeq: 3 REGISTER
Contact: <sip:+19725552222@192.0.2.77;unknownparam>
l: 0"#, "");

    /// 3.3.14 regescrt: a bracketed Contact URI with an escaped header; valid: 401.
    rfc4475_3_3_14_register_with_escaped_header_in_contact: PHONE, Expect::Status(401), message(r#"
REGISTER sip:sip.test SIP/2.0
To: sip:bob@sip.test
From: sip:bob@sip.test;tag=8
Max-Forwards: 70
Call-ID: regescrt.k345asrl3fdbv@192.0.2.77
CSeq: 14398234 REGISTER
Via: SIP/2.0/UDP 192.0.2.77:5060;branch=z9hG4bKregescrt
Contact: <sip:bob@192.0.2.77?Route=%3Csip:sip.example.com%3E>
L:0"#, "");

    /// 3.3.15 sdp01: an INVITE whose Accept excludes SDP, the only answer this server can give
    /// (from a trusted trunk, so no challenge first): 406.
    rfc4475_3_3_15_accept_excluding_sdp: TRUNK, Expect::Status(406), message(r#"
INVITE sip:bob@sip.test SIP/2.0
To: sip:bob@sip.test
From: sip:caller@sip.test;tag=234
Max-Forwards: 5
Call-ID: sdp01.ndaksdj9342dasdd
Accept: text/nobodyknowsthis
CSeq: 8 INVITE
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw
Content-Type: application/sdp
Contact: <sip:caller@192.0.2.1>
Content-Length: {len}"#, SDP);

    // ---------------- §3.4 backward compatibility ----------------

    /// 3.4.1 inv2543: RFC 2543 syntax: no branch, no Max-Forwards, no From tag; accepted with RFC
    /// 2543 transaction matching and processed: 407.
    rfc4475_3_4_1_invite_with_rfc2543_syntax: PHONE, Expect::Status(407), message(r#"
INVITE sip:bob@sip.test SIP/2.0
Via: SIP/2.0/UDP 192.0.2.77
From: <sip:alice@sip.test>
To: <sip:bob@sip.test>
Call-ID: inv2543.1717@192.0.2.77
CSeq: 1 INVITE
Contact: <sip:alice@192.0.2.77>
Content-Type: application/sdp
Content-Length: {len}"#, SDP);
}

#[test]
fn all_49_torture_cases_of_rfc4475_section_3_are_covered() {
    assert_eq!(CASES.len(), 49);
}

#[test]
fn unknown_require_is_listed_in_unsupported() {
    let sent = check(
        "bext01",
        PHONE,
        &message(
            "OPTIONS sip:sip.test SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.77;branch=z9hG4bKr1\nMax-Forwards: 70\n\
             From: <sip:c@sip.test>;tag=1\nTo: <sip:sip.test>\nCall-ID: req1\nCSeq: 1 OPTIONS\n\
             Require: nothingSupportsThis, nothingSupportsThisEither\nl: 0",
            "",
        ),
        Expect::Status(420),
    );
    assert!(sent[0].contains("Unsupported: nothingSupportsThis, nothingSupportsThisEither\r\n"), "{}", sent[0]);
}

#[test]
fn rfc2543_retransmission_is_absorbed_by_its_transaction() {
    // Two copies of a cookie-less OPTIONS: one transaction, the 200 re-sent for the copy.
    let bytes = message(
        "OPTIONS sip:sip.test SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.77\nFrom: <sip:c@sip.test>;tag=1\n\
         To: <sip:sip.test>\nCall-ID: old-1\nCSeq: 5 OPTIONS\nl: 0",
        "",
    );
    let mut w = World::with_config("");
    w.receive_bytes(PHONE, &bytes);
    w.receive_bytes(PHONE, &bytes);
    let answers = w.take(PHONE, "SIP/2.0 200");
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0], answers[1], "the retransmission gets the same response");
    assert_eq!(w.core.transaction_stats().server_transactions, 1);
}
