//! SPDY/3.1 frames (the subset Kubernetes streaming uses) and the zlib-compressed header blocks
//! with the SPDY/3 dictionary. Written from the SPDY/3.1 draft; server side only needs to parse
//! every frame type and to write replies, data, resets, pings and GOAWAY.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The protocol version carried in every control frame.
pub const VERSION: u16 = 3;
/// FIN flag on SYN_STREAM, SYN_REPLY, HEADERS and DATA.
pub const FLAG_FIN: u8 = 0x01;
/// Largest payload a frame can carry (24-bit length).
pub const MAX_PAYLOAD: usize = 0x00ff_ffff;
/// Largest frame we accept from a peer; header blocks and data chunks from kubectl are small.
pub const MAX_ACCEPTED: usize = 4 * 1024 * 1024;

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes used here.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_CANCEL: u32 = 5;

/// Header name/value pairs; SPDY joins repeated values with NUL, split again on decode.
pub type Headers = Vec<(String, String)>;

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_id: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame of a type this implementation does not know (must be ignored).
    Unknown {
        kind: u16,
    },
}

/// Framing or header-compression errors; all of them end the session.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("frame of {0} bytes is too large")]
    TooLarge(usize),
    #[error("malformed {0} frame")]
    Malformed(&'static str),
    #[error("header block: {0}")]
    Compression(String),
}

/// The zlib dictionary of SPDY/3 (draft 3, section 2.6.10.1): length-prefixed header words
/// followed by a run of common values.
pub fn dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &[&str] = &[
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
        "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
        "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    ];
    let mut out = Vec::with_capacity(1424);
    for w in WORDS {
        out.extend_from_slice(&(w.len() as u32).to_be_bytes());
        out.extend_from_slice(w.as_bytes());
    }
    for t in TAIL {
        out.extend_from_slice(t.as_bytes());
    }
    out
}

/// Header-block compression state; one per direction per session (SPDY shares the zlib
/// stream across all frames of a session).
pub struct HeaderCodec {
    compress: Compress,
    decompress: Decompress,
    dictionary: Vec<u8>,
}

impl Default for HeaderCodec {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderCodec {
    pub fn new() -> HeaderCodec {
        let dictionary = dictionary();
        let mut compress = Compress::new(Compression::default(), true);
        // Must precede the first deflate call; only fails on a broken zlib state.
        let _ = compress.set_dictionary(&dictionary);
        HeaderCodec {
            compress,
            decompress: Decompress::new(true),
            dictionary,
        }
    }

    /// Serialises and compresses a header block (sync-flushed, as SPDY requires).
    pub fn encode(&mut self, headers: &[(String, String)]) -> Result<Vec<u8>, FrameError> {
        let mut raw = Vec::new();
        raw.put_u32(headers.len() as u32);
        for (name, value) in headers {
            raw.put_u32(name.len() as u32);
            raw.extend_from_slice(name.to_ascii_lowercase().as_bytes());
            raw.put_u32(value.len() as u32);
            raw.extend_from_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            out.reserve(256);
            let before_in = self.compress.total_in();
            self.compress
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| FrameError::Compression(e.to_string()))?;
            let used = (self.compress.total_in() - before_in) as usize;
            input = &input[used..];
            // A sync flush is complete when input is consumed and zlib left spare output room.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }

    /// Decompresses and parses a header block.
    pub fn decode(&mut self, block: &[u8]) -> Result<Headers, FrameError> {
        let err = |m: &str| FrameError::Compression(m.to_string());
        let mut raw: Vec<u8> = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        let mut rounds = 0;
        loop {
            rounds += 1;
            if rounds > 10_000 {
                return Err(err("header block does not end"));
            }
            raw.reserve(1024);
            let before_in = self.decompress.total_in();
            let result = self
                .decompress
                .decompress_vec(input, &mut raw, FlushDecompress::Sync);
            let used = (self.decompress.total_in() - before_in) as usize;
            input = &input[used..];
            match result {
                Ok(Status::Ok) | Ok(Status::BufError) => {
                    if input.is_empty() && raw.len() < raw.capacity() {
                        break;
                    }
                }
                Ok(Status::StreamEnd) => break,
                Err(e) if e.needs_dictionary().is_some() => {
                    self.decompress
                        .set_dictionary(&self.dictionary)
                        .map_err(|e| FrameError::Compression(e.to_string()))?;
                }
                Err(e) => return Err(FrameError::Compression(e.to_string())),
            }
        }
        parse_header_block(&raw)
    }
}

fn parse_header_block(mut raw: &[u8]) -> Result<Headers, FrameError> {
    let bad = || FrameError::Malformed("header block");
    let take = |raw: &mut &[u8]| -> Result<String, FrameError> {
        if raw.remaining() < 4 {
            return Err(bad());
        }
        let len = raw.get_u32() as usize;
        if raw.remaining() < len {
            return Err(bad());
        }
        let s = String::from_utf8_lossy(&raw[..len]).into_owned();
        raw.advance(len);
        Ok(s)
    };
    if raw.remaining() < 4 {
        return Err(bad());
    }
    let count = raw.get_u32() as usize;
    let mut out = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = take(&mut raw)?;
        let value = take(&mut raw)?;
        for v in value.split('\0') {
            out.push((name.clone(), v.to_string()));
        }
    }
    Ok(out)
}

/// First value of header `name` (names are lower case on the wire).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Splits one whole frame off the front of `buf`, or returns None when more bytes are needed.
pub fn decode_frame(
    buf: &mut BytesMut,
    codec: &mut HeaderCodec,
) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 8 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
    if len > MAX_ACCEPTED {
        return Err(FrameError::TooLarge(len));
    }
    if buf.len() < 8 + len {
        return Ok(None);
    }
    let head = buf.split_to(8);
    let mut body = buf.split_to(len).freeze();
    let flags = head[4];
    if head[0] & 0x80 == 0 {
        let stream_id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
        return Ok(Some(Frame::Data {
            stream_id,
            flags,
            data: body,
        }));
    }
    let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let kind = u16::from_be_bytes([head[2], head[3]]);
    let need = |body: &Bytes, n: usize, what: &'static str| {
        if body.len() < n {
            Err(FrameError::Malformed(what))
        } else {
            Ok(())
        }
    };
    let frame = match kind {
        SYN_STREAM => {
            need(&body, 10, "SYN_STREAM")?;
            let stream_id = body.get_u32() & 0x7fff_ffff;
            let associated_id = body.get_u32() & 0x7fff_ffff;
            let priority = body.get_u8() >> 5;
            body.advance(1);
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                flags,
                headers: codec.decode(&body)?,
            }
        }
        SYN_REPLY | HEADERS => {
            need(&body, 4, "SYN_REPLY")?;
            let stream_id = body.get_u32() & 0x7fff_ffff;
            let headers = codec.decode(&body)?;
            if kind == SYN_REPLY {
                Frame::SynReply {
                    stream_id,
                    flags,
                    headers,
                }
            } else {
                Frame::Headers {
                    stream_id,
                    flags,
                    headers,
                }
            }
        }
        RST_STREAM => {
            need(&body, 8, "RST_STREAM")?;
            Frame::RstStream {
                stream_id: body.get_u32() & 0x7fff_ffff,
                status: body.get_u32(),
            }
        }
        SETTINGS => {
            need(&body, 4, "SETTINGS")?;
            let n = body.get_u32() as usize;
            need(&body, n.saturating_mul(8), "SETTINGS")?;
            let entries = (0..n)
                .map(|_| {
                    let w = body.get_u32();
                    ((w >> 24) as u8, w & 0x00ff_ffff, body.get_u32())
                })
                .collect();
            Frame::Settings { flags, entries }
        }
        PING => {
            need(&body, 4, "PING")?;
            Frame::Ping { id: body.get_u32() }
        }
        GOAWAY => {
            need(&body, 4, "GOAWAY")?;
            let last_good_stream_id = body.get_u32() & 0x7fff_ffff;
            let status = if body.len() >= 4 { body.get_u32() } else { 0 };
            Frame::GoAway {
                last_good_stream_id,
                status,
            }
        }
        WINDOW_UPDATE => {
            need(&body, 8, "WINDOW_UPDATE")?;
            Frame::WindowUpdate {
                stream_id: body.get_u32() & 0x7fff_ffff,
                delta: body.get_u32() & 0x7fff_ffff,
            }
        }
        kind => Frame::Unknown { kind },
    };
    Ok(Some(frame))
}

fn control(out: &mut BytesMut, kind: u16, flags: u8, payload: &[u8]) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u32(((flags as u32) << 24) | payload.len() as u32);
    out.extend_from_slice(payload);
}

/// Appends the wire form of `frame` to `out`. Data longer than [`MAX_PAYLOAD`] must be split by
/// the caller.
pub fn encode_frame(
    frame: &Frame,
    codec: &mut HeaderCodec,
    out: &mut BytesMut,
) -> Result<(), FrameError> {
    let mut p = Vec::new();
    match frame {
        Frame::Data {
            stream_id,
            flags,
            data,
        } => {
            if data.len() > MAX_PAYLOAD {
                return Err(FrameError::TooLarge(data.len()));
            }
            out.put_u32(stream_id & 0x7fff_ffff);
            out.put_u32(((*flags as u32) << 24) | data.len() as u32);
            out.extend_from_slice(data);
            return Ok(());
        }
        Frame::SynStream {
            stream_id,
            associated_id,
            priority,
            flags,
            headers,
        } => {
            p.put_u32(*stream_id);
            p.put_u32(*associated_id);
            p.put_u8(priority << 5);
            p.put_u8(0);
            p.extend_from_slice(&codec.encode(headers)?);
            control(out, SYN_STREAM, *flags, &p);
        }
        Frame::SynReply {
            stream_id,
            flags,
            headers,
        }
        | Frame::Headers {
            stream_id,
            flags,
            headers,
        } => {
            p.put_u32(*stream_id);
            p.extend_from_slice(&codec.encode(headers)?);
            let kind = if matches!(frame, Frame::SynReply { .. }) {
                SYN_REPLY
            } else {
                HEADERS
            };
            control(out, kind, *flags, &p);
        }
        Frame::RstStream { stream_id, status } => {
            p.put_u32(*stream_id);
            p.put_u32(*status);
            control(out, RST_STREAM, 0, &p);
        }
        Frame::Settings { flags, entries } => {
            p.put_u32(entries.len() as u32);
            for (f, id, value) in entries {
                p.put_u32(((*f as u32) << 24) | (id & 0x00ff_ffff));
                p.put_u32(*value);
            }
            control(out, SETTINGS, *flags, &p);
        }
        Frame::Ping { id } => control(out, PING, 0, &id.to_be_bytes()),
        Frame::GoAway {
            last_good_stream_id,
            status,
        } => {
            p.put_u32(*last_good_stream_id);
            p.put_u32(*status);
            control(out, GOAWAY, 0, &p);
        }
        Frame::WindowUpdate { stream_id, delta } => {
            p.put_u32(*stream_id);
            p.put_u32(*delta);
            control(out, WINDOW_UPDATE, 0, &p);
        }
        Frame::Unknown { kind } => control(out, *kind, 0, &[]),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn dictionary_has_the_spec_length_and_ends() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b"utf-,*,enq=0."));
    }

    #[test]
    fn every_frame_round_trips_through_one_session_codec() {
        // Two codecs play the two ends: the sender's compressor feeds the receiver's decompressor.
        let mut tx = HeaderCodec::new();
        let mut rx = HeaderCodec::new();
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_id: 0,
                priority: 3,
                flags: 0,
                headers: h(&[("streamtype", "error"), ("port", "80")]),
            },
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: vec![],
            },
            Frame::SynStream {
                stream_id: 3,
                associated_id: 0,
                priority: 0,
                flags: FLAG_FIN,
                headers: h(&[("streamtype", "stdout")]),
            },
            Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"hello"),
            },
            Frame::RstStream {
                stream_id: 3,
                status: RST_CANCEL,
            },
            Frame::Settings {
                flags: 0,
                entries: vec![(0, 7, 65536)],
            },
            Frame::Ping { id: 7 },
            Frame::GoAway {
                last_good_stream_id: 3,
                status: 0,
            },
            Frame::Headers {
                stream_id: 1,
                flags: 0,
                headers: h(&[("a", "b")]),
            },
            Frame::WindowUpdate {
                stream_id: 0,
                delta: 1000,
            },
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            encode_frame(f, &mut tx, &mut wire).unwrap();
        }
        // Feed the bytes in small pieces to exercise partial-frame buffering.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in wire.chunks(5) {
            buf.extend_from_slice(chunk);
            while let Some(f) = decode_frame(&mut buf, &mut rx).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn header_block_uses_the_dictionary_and_splits_nul_values() {
        let mut tx = HeaderCodec::new();
        let block = tx
            .encode(&h(&[("streamtype", "data"), ("x", "a\0b")]))
            .unwrap();
        // zlib header with FDICT set, followed by the dictionary's Adler-32.
        assert_eq!(block[0], 0x78);
        assert_ne!(block[1] & 0x20, 0, "FDICT flag");
        let mut rx = HeaderCodec::new();
        let got = rx.decode(&block).unwrap();
        assert_eq!(got, h(&[("streamtype", "data"), ("x", "a"), ("x", "b")]));
        assert_eq!(header(&got, "StreamType"), Some("data"));
        // A decoder without the dictionary cannot read it.
        let mut plain = Decompress::new(true);
        let mut out = Vec::with_capacity(4096);
        let e = plain
            .decompress_vec(&block, &mut out, FlushDecompress::Sync)
            .unwrap_err();
        assert!(e.needs_dictionary().is_some());
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut rx = HeaderCodec::new();
        let mut buf = BytesMut::from(&[0x80, 0x02, 0x00, 0x01, 0, 0, 0, 0][..]);
        assert_eq!(decode_frame(&mut buf, &mut rx), Err(FrameError::Version(2)));
        let mut buf = BytesMut::from(&[0x80, 0x03, 0x00, 0x06, 0, 0, 0, 2, 0, 0][..]);
        assert_eq!(
            decode_frame(&mut buf, &mut rx),
            Err(FrameError::Malformed("PING"))
        );
        let mut buf = BytesMut::from(&[0x00, 0x00, 0x00, 0x01, 0, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decode_frame(&mut buf, &mut rx),
            Err(FrameError::TooLarge(_))
        ));
    }
}
