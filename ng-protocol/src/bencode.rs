//! Bencode (the encoding of rtpengine's ng protocol) and the ng datagram framing,
//! `<cookie> <bencoded dictionary>`. Shared by the media plane's ng listener and the load tools'
//! ng client.
//!
//! Written here rather than taken from a crate: `serde_bencode` has no nesting limit (about a
//! kilobyte of `l` bytes overflows a worker thread's stack, which aborts the process, and the ng
//! port takes datagrams from the network), and `bendy` refuses dictionaries whose keys are not
//! sorted, which is what Kamailio's rtpengine module and rtpengine itself send. This decoder
//! bounds nesting, accepts unsorted keys, refuses duplicate keys and never panics (tested below,
//! and fuzzed by `ng-protocol/fuzz`'s `ng_request`).

use std::collections::BTreeMap;

/// Nesting limit of the decoder: ng messages are at most three deep; the limit keeps malformed
/// input from exhausting the stack.
const MAX_DEPTH: usize = 32;

/// A bencoded value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Dict(BTreeMap<Vec<u8>, Value>),
}

/// Why bencoded input could not be decoded; `at` is the byte offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BencodeError {
    #[error("input ends inside a value")]
    Eof,
    #[error("unexpected byte {byte:#04x} at {at}")]
    Unexpected { byte: u8, at: usize },
    #[error("bad integer at {at}")]
    BadInt { at: usize },
    #[error("bad string length at {at}")]
    BadLength { at: usize },
    #[error("nesting deeper than {MAX_DEPTH} at {at}")]
    TooDeep { at: usize },
    #[error("duplicate dictionary key at {at}")]
    DuplicateKey { at: usize },
    #[error("trailing bytes after the value at {at}")]
    Trailing { at: usize },
}

impl Value {
    pub fn str(s: &str) -> Self {
        Self::Bytes(s.as_bytes().to_vec())
    }

    /// A dictionary from `(key, value)` pairs.
    pub fn dict<'a>(items: impl IntoIterator<Item = (&'a str, Value)>) -> Self {
        Self::Dict(items.into_iter().map(|(k, v)| (k.as_bytes().to_vec(), v)).collect())
    }

    /// A list of strings.
    pub fn strs<'a>(items: impl IntoIterator<Item = &'a str>) -> Self {
        Self::List(items.into_iter().map(Self::str).collect())
    }

    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Bytes(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        self.as_bytes().and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The value under `key` if this is a dictionary.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Self::Dict(d) => d.get(key.as_bytes()),
            _ => None,
        }
    }

    /// Appends the encoding (dictionary keys in sorted order, as bencode requires).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Self::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(i.to_string().as_bytes());
                out.push(b'e');
            }
            Self::Bytes(b) => encode_bytes(b, out),
            Self::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode_into(out);
                }
                out.push(b'e');
            }
            Self::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    encode_bytes(k, out);
                    v.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Decodes exactly one value that spans the whole input.
    pub fn decode(input: &[u8]) -> Result<Self, BencodeError> {
        let mut d = Decoder { input, pos: 0 };
        let v = d.value(0)?;
        if d.pos != input.len() {
            return Err(BencodeError::Trailing { at: d.pos });
        }
        Ok(v)
    }
}

fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Decoder<'_> {
    fn peek(&self) -> Result<u8, BencodeError> {
        self.input.get(self.pos).copied().ok_or(BencodeError::Eof)
    }

    fn value(&mut self, depth: usize) -> Result<Value, BencodeError> {
        if depth > MAX_DEPTH {
            return Err(BencodeError::TooDeep { at: self.pos });
        }
        match self.peek()? {
            b'i' => self.int().map(Value::Int),
            b'0'..=b'9' => self.bytes().map(Value::Bytes),
            b'l' => {
                self.pos += 1;
                let mut list = Vec::new();
                while self.peek()? != b'e' {
                    list.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(list))
            }
            b'd' => {
                self.pos += 1;
                let mut dict = BTreeMap::new();
                // Keys need not be sorted: rtpengine does not sort the keys of its replies.
                while self.peek()? != b'e' {
                    let at = self.pos;
                    if !self.peek()?.is_ascii_digit() {
                        return Err(BencodeError::Unexpected { byte: self.peek()?, at });
                    }
                    let key = self.bytes()?;
                    let value = self.value(depth + 1)?;
                    if dict.insert(key, value).is_some() {
                        return Err(BencodeError::DuplicateKey { at });
                    }
                }
                self.pos += 1;
                Ok(Value::Dict(dict))
            }
            byte => Err(BencodeError::Unexpected { byte, at: self.pos }),
        }
    }

    /// Digits up to `end`, as a decimal without leading zeros (a lone `0` is fine).
    fn digits(&mut self, end: u8) -> Result<Option<u64>, BencodeError> {
        let start = self.pos;
        let mut n: u64 = 0;
        loop {
            let c = self.peek()?;
            if c == end {
                break;
            }
            if !c.is_ascii_digit() {
                return Ok(None);
            }
            n = match n.checked_mul(10).and_then(|n| n.checked_add(u64::from(c - b'0'))) {
                Some(n) => n,
                None => return Ok(None),
            };
            self.pos += 1;
        }
        let len = self.pos - start;
        if len == 0 || (len > 1 && self.input.get(start) == Some(&b'0')) {
            return Ok(None);
        }
        self.pos += 1; // `end`
        Ok(Some(n))
    }

    fn int(&mut self) -> Result<i64, BencodeError> {
        let at = self.pos;
        self.pos += 1; // 'i'
        let negative = self.peek()? == b'-';
        if negative {
            self.pos += 1;
        }
        let magnitude = self.digits(b'e')?.ok_or(BencodeError::BadInt { at })?;
        if negative {
            // `i-0e` is not canonical; the magnitude of i64::MIN is one more than i64::MAX.
            if magnitude == 0 || magnitude > i64::MAX as u64 + 1 {
                return Err(BencodeError::BadInt { at });
            }
            Ok((magnitude as i64).wrapping_neg())
        } else {
            i64::try_from(magnitude).map_err(|_| BencodeError::BadInt { at })
        }
    }

    fn bytes(&mut self) -> Result<Vec<u8>, BencodeError> {
        let at = self.pos;
        let len = self.digits(b':')?.ok_or(BencodeError::BadLength { at })?;
        let len = usize::try_from(len).map_err(|_| BencodeError::BadLength { at })?;
        let end = self.pos.checked_add(len).ok_or(BencodeError::BadLength { at })?;
        let b = self.input.get(self.pos..end).ok_or(BencodeError::Eof)?;
        self.pos = end;
        Ok(b.to_vec())
    }
}

// ---------------------------------------------------------------------------------------------
// Framing

/// `<cookie> <bencoded message>`.
pub fn frame(cookie: &str, msg: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(cookie.len() + 256);
    out.extend_from_slice(cookie.as_bytes());
    out.push(b' ');
    msg.encode_into(&mut out);
    out
}

/// Splits a datagram into its cookie and decoded message.
pub fn unframe(datagram: &[u8]) -> Result<(&[u8], Value), FrameError> {
    let sp = datagram.iter().position(|&b| b == b' ').ok_or(FrameError::NoCookie)?;
    let (cookie, rest) = datagram.split_at(sp);
    if cookie.is_empty() {
        return Err(FrameError::NoCookie);
    }
    let msg = Value::decode(rest.get(1..).unwrap_or_default())?;
    Ok((cookie, msg))
}

/// Why a datagram is not an ng message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("ng datagram is not '<cookie> <bencode>'")]
    NoCookie,
    #[error("ng message: {0}")]
    Bencode(#[from] BencodeError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Value {
        Value::str(s)
    }

    #[test]
    fn encodes_canonically() {
        let v = Value::dict([("z", Value::Int(-3)), ("a", Value::List(vec![b("x"), Value::Int(0)])), ("m", b(""))]);
        assert_eq!(v.encode(), b"d1:al1:xi0ee1:m0:1:zi-3ee");
        assert_eq!(Value::decode(&v.encode()), Ok(v));
    }

    #[test]
    fn decodes_rtpengine_reply_with_unsorted_keys() {
        let reply = b"d3:sdp5:v=0\r\n6:result2:oke";
        let v = Value::decode(reply).unwrap();
        assert_eq!(v.get("result").and_then(Value::as_str), Some("ok"));
        assert_eq!(v.get("sdp").and_then(Value::as_str), Some("v=0\r\n"));
    }

    #[test]
    fn integer_edges() {
        assert_eq!(Value::decode(b"i9223372036854775807e"), Ok(Value::Int(i64::MAX)));
        assert_eq!(Value::decode(b"i-9223372036854775808e"), Ok(Value::Int(i64::MIN)));
        let bad_ints: [&[u8]; 8] =
            [b"i9223372036854775808e", b"i-9223372036854775809e", b"i-0e", b"i03e", b"ie", b"i-e", b"i1x2e", b"i99999999999999999999999e"];
        for bad in bad_ints {
            assert!(matches!(Value::decode(bad), Err(BencodeError::BadInt { .. })), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(Value::Int(i64::MIN).encode(), b"i-9223372036854775808e");
    }

    #[test]
    fn rejects_malformed() {
        let cases: &[(&[u8], BencodeError)] = &[
            (b"", BencodeError::Eof),
            (b"l", BencodeError::Eof),
            (b"d3:abc", BencodeError::Eof),
            (b"5:abc", BencodeError::Eof),
            (b"x", BencodeError::Unexpected { byte: b'x', at: 0 }),
            (b"di1ei2ee", BencodeError::Unexpected { byte: b'i', at: 1 }),
            (b"01:a", BencodeError::BadLength { at: 0 }),
            (b"99999999999999999999999:a", BencodeError::BadLength { at: 0 }),
            (b"18446744073709551615:a", BencodeError::BadLength { at: 0 }),
            (b"d1:ai1e1:ai2ee", BencodeError::DuplicateKey { at: 7 }),
            (b"i1ei2e", BencodeError::Trailing { at: 3 }),
        ];
        for (input, want) in cases {
            assert_eq!(Value::decode(input).as_ref(), Err(want), "{:?}", String::from_utf8_lossy(input));
        }
        let deep: Vec<u8> = std::iter::repeat_n(b'l', 100_000).chain(std::iter::repeat_n(b'e', 100_000)).collect();
        assert!(matches!(Value::decode(&deep), Err(BencodeError::TooDeep { .. })));
        let ok_depth: Vec<u8> = std::iter::repeat_n(b'l', MAX_DEPTH).chain(std::iter::repeat_n(b'e', MAX_DEPTH)).collect();
        assert!(Value::decode(&ok_depth).is_ok());
    }

    /// Every prefix and many random mutations of valid messages decode or fail, never panic, and
    /// whatever decodes re-encodes to something that decodes to the same value.
    #[test]
    fn malformed_input_never_panics() {
        let seeds: Vec<Vec<u8>> = vec![
            frame(
                "c1",
                &Value::dict([
                    ("command", b("offer")),
                    ("sdp", b("v=0\r\no=- 7 7 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n")),
                    ("replace", Value::strs(["origin", "session-connection"])),
                    ("n", Value::Int(-42)),
                ]),
            ),
            b"d6:result5:error12:error-reason14:Unknown call-ide".to_vec(),
            b"li1el1:aee".to_vec(),
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet = b"0123456789ilde:-x ";
        let check = |data: &[u8]| {
            let _ = unframe(data);
            if let Ok(v) = Value::decode(data) {
                assert_eq!(Value::decode(&v.encode()).as_ref(), Ok(&v));
            }
        };
        for seed in &seeds {
            for cut in 0..=seed.len() {
                check(&seed[..cut]);
            }
            for _ in 0..20_000 {
                let mut m = seed.clone();
                for _ in 0..=(rnd() % 4) {
                    let i = (rnd() as usize) % m.len();
                    match rnd() % 3 {
                        0 => m[i] = alphabet[(rnd() as usize) % alphabet.len()],
                        1 => {
                            m.remove(i);
                        }
                        _ => m.insert(i, alphabet[(rnd() as usize) % alphabet.len()]),
                    }
                    if m.is_empty() {
                        break;
                    }
                }
                check(&m);
            }
        }
        for _ in 0..20_000 {
            let len = (rnd() % 40) as usize;
            let data: Vec<u8> = (0..len).map(|_| alphabet[(rnd() as usize) % alphabet.len()]).collect();
            check(&data);
        }
    }

    #[test]
    fn framing() {
        let msg = Value::dict([("command", b("ping"))]);
        let d = frame("abc.1", &msg);
        assert_eq!(d, b"abc.1 d7:command4:pinge");
        let (cookie, v) = unframe(&d).unwrap();
        assert_eq!((cookie, v), (&b"abc.1"[..], msg));
        assert!(matches!(unframe(b"nospace"), Err(FrameError::NoCookie)));
        assert!(matches!(unframe(b" d1:ai1ee"), Err(FrameError::NoCookie)));
        assert!(matches!(unframe(b"c "), Err(FrameError::Bencode(BencodeError::Eof))));
    }
}
