//! Every frame a client sends, counted as it is read: messages, fragments, pings, pongs and
//! close frames, before and after auth.
//!
//! tungstenite reassembles fragments and answers pings itself, so neither reaches the
//! connection's code; a client could send them without end. [`Metered`] sits under tungstenite,
//! between it and the socket, and reads the WebSocket frame headers out of the bytes on their
//! way up ([`FrameMeter`], free of I/O and of clocks): each frame takes a token from the
//! connection's bucket (`limits.max_messages_per_s`, `limits.message_burst`), and each frame
//! and message must fit the size limit of the moment: `limits.max_auth_message_bytes` for the
//! first (auth) message, `limits.max_message_bytes` after it. A read that breaks a limit fails
//! with an [`Exceeded`] inside the I/O error, which the connection turns into its close code.
//!
//! The meter does not check what tungstenite checks (masking, reserved bits, opcodes, control
//! frame sizes), and it never looks at payloads: it skips them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use super::liveness::RateLimit;
use crate::config::Limits;

/// A limit a client's frames broke; carried to the connection inside an [`io::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Exceeded {
    /// More frames than the rate limit allows: the connection closes with 4429.
    #[error("too many frames")]
    Rate,
    /// A frame or a message larger than the limit of the moment: the connection closes with
    /// 1009.
    #[error("message too big")]
    Size,
}

impl Exceeded {
    /// The limit behind a failed read, if the meter failed it.
    pub(crate) fn of(err: &io::Error) -> Option<Exceeded> {
        err.get_ref()?.downcast_ref::<Exceeded>().copied()
    }
}

/// The header fields the meter needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    fin: bool,
    opcode: u8,
    len: u64,
}

impl Header {
    /// Text, binary, continuation (and the reserved data opcodes): part of a message.
    fn is_data(self) -> bool {
        self.opcode < 8
    }
}

/// What the parser found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// The first byte of a frame.
    Start,
    /// The frame's header is complete up to its length (the mask may follow).
    Header(Header),
}

/// Where the parser is within a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Byte 0: FIN, RSV, opcode.
    First,
    /// Byte 1: MASK, 7-bit length.
    Second,
    /// `left` bytes of a 16- or 64-bit length still to come.
    Length { left: u8 },
    /// `left` bytes of the masking key still to come.
    Mask { left: u8 },
    /// `Parser::len` bytes of payload still to skip.
    Payload,
}

/// Finds frame headers in a byte stream cut anywhere (RFC 6455 §5.2).
#[derive(Debug, Clone)]
struct Parser {
    /// The frame's length while it is read, then the payload bytes still to skip.
    len: u64,
    stage: Stage,
    /// Byte 0 of the frame being read.
    first: u8,
    masked: bool,
}

impl Parser {
    fn new() -> Self {
        Parser {
            len: 0,
            stage: Stage::First,
            first: 0,
            masked: false,
        }
    }

    /// Reads `bytes` up to and including the next event. Returns the bytes used and the event;
    /// `None` once all of `bytes` is used without one.
    fn advance(&mut self, bytes: &[u8]) -> (usize, Option<Event>) {
        let mut used = 0;
        while used < bytes.len() {
            if self.stage == Stage::Payload {
                let rest = &bytes[used..];
                let skip = usize::try_from(self.len).map_or(rest.len(), |len| len.min(rest.len()));
                used += skip;
                self.len -= skip as u64;
                if self.len == 0 {
                    self.stage = Stage::First;
                }
                continue;
            }
            let byte = bytes[used];
            used += 1;
            match self.stage {
                Stage::First => {
                    self.first = byte;
                    self.stage = Stage::Second;
                    return (used, Some(Event::Start));
                }
                Stage::Second => {
                    self.masked = byte & 0x80 != 0;
                    match byte & 0x7f {
                        126 => self.length(2),
                        127 => self.length(8),
                        len => {
                            self.len = u64::from(len);
                            return (used, Some(self.header()));
                        }
                    }
                }
                Stage::Length { left } => {
                    self.len = (self.len << 8) | u64::from(byte);
                    if left == 1 {
                        return (used, Some(self.header()));
                    }
                    self.stage = Stage::Length { left: left - 1 };
                }
                Stage::Mask { left } => {
                    self.stage = if left > 1 {
                        Stage::Mask { left: left - 1 }
                    } else {
                        self.payload()
                    };
                }
                Stage::Payload => unreachable!("handled above"),
            }
        }
        (used, None)
    }

    fn length(&mut self, bytes: u8) {
        self.len = 0;
        self.stage = Stage::Length { left: bytes };
    }

    /// The length is complete: the header as far as the meter cares.
    fn header(&mut self) -> Event {
        self.stage = if self.masked {
            Stage::Mask { left: 4 }
        } else {
            self.payload()
        };
        Event::Header(Header {
            fin: self.first & 0x80 != 0,
            opcode: self.first & 0x0f,
            len: self.len,
        })
    }

    fn payload(&self) -> Stage {
        if self.len > 0 {
            Stage::Payload
        } else {
            Stage::First
        }
    }
}

/// One connection's frame accounting: the rate limit and the size limits, over the bytes read
/// from the client. Time is passed in.
#[derive(Debug, Clone)]
pub(crate) struct FrameMeter {
    parser: Parser,
    rate: RateLimit,
    /// The payload bytes of the data message being received, over its fragments so far.
    /// (`u32`s, saturating: a few bytes less per connection; no limit is near 4 GiB.)
    message_bytes: u32,
    /// The largest frame or message accepted now: the auth limit until the first message has
    /// ended, then `max_message_bytes`.
    max_bytes: u32,
    max_message_bytes: u32,
    /// Once set, every later read fails the same way.
    refused: Option<Exceeded>,
}

impl FrameMeter {
    /// A meter for a connection upgraded at `now`; the bucket starts full.
    pub(crate) fn new(now: Instant, limits: &Limits) -> Self {
        let bytes = |limit: usize| u32::try_from(limit).unwrap_or(u32::MAX);
        FrameMeter {
            parser: Parser::new(),
            rate: RateLimit::new(now, limits.max_messages_per_s, limits.message_burst),
            message_bytes: 0,
            max_bytes: bytes(limits.max_auth_message_bytes),
            max_message_bytes: bytes(limits.max_message_bytes),
            refused: None,
        }
    }

    /// Accounts for `pipelined`, the bytes that arrived with the upgrade request (tungstenite
    /// gets them directly, not through [`Metered`]): they are cut after their last frame within
    /// the limits, and a limit they break fails the first read.
    pub(crate) fn read_pipelined(&mut self, now: Instant, pipelined: &mut Vec<u8>) {
        if let Err((keep, _)) = self.read(now, pipelined) {
            pipelined.truncate(keep);
        }
    }

    /// The limit broken, once one has been.
    pub(crate) fn refused(&self) -> Option<Exceeded> {
        self.refused
    }

    /// Accounts for `bytes`, just read from the client at `now`. On a broken limit, returns
    /// how many leading bytes of `bytes` still hold only frames within the limits (they may be
    /// handed on), and the limit.
    pub(crate) fn read(&mut self, now: Instant, bytes: &[u8]) -> Result<(), (usize, Exceeded)> {
        if let Some(why) = self.refused {
            return Err((0, why));
        }
        let mut at = 0;
        // Where the frame being read began in `bytes`; 0 when it began in an earlier read.
        let mut frame_start = 0;
        while at < bytes.len() {
            let (used, event) = self.parser.advance(&bytes[at..]);
            at += used;
            let verdict = match event {
                None => Ok(()),
                Some(Event::Start) => {
                    frame_start = at - 1;
                    if self.rate.allow(now) {
                        Ok(())
                    } else {
                        Err(Exceeded::Rate)
                    }
                }
                Some(Event::Header(header)) => self.check_size(header),
            };
            if let Err(why) = verdict {
                self.refused = Some(why);
                return Err((frame_start, why));
            }
        }
        Ok(())
    }

    fn check_size(&mut self, header: Header) -> Result<(), Exceeded> {
        let len = u32::try_from(header.len).unwrap_or(u32::MAX);
        let size = if header.is_data() {
            self.message_bytes = match header.opcode {
                0 => self.message_bytes.saturating_add(len),
                _ => len,
            };
            self.message_bytes
        } else {
            len
        };
        if size > self.max_bytes {
            return Err(Exceeded::Size);
        }
        if header.is_data() && header.fin {
            // The first message (auth) is complete; the next ones are plain client messages.
            self.max_bytes = self.max_message_bytes;
        }
        Ok(())
    }
}

/// A connection's byte stream with its [`FrameMeter`] on the read side; writes pass through.
#[derive(Debug)]
pub(crate) struct Metered<I> {
    io: I,
    meter: FrameMeter,
}

impl<I> Metered<I> {
    /// Meters what is read from `io` from now on.
    pub(crate) fn new(io: I, meter: FrameMeter) -> Self {
        Metered { io, meter }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> Metered<I> {
    /// Once the close frame is written after a failed read (a refusal, a bad frame): ends the
    /// sending side, then reads and drops what the client still sends until it closes too.
    /// Closing a socket with unread bytes resets the connection, and a client busy sending
    /// can lose the close frame to that reset before it reads it. The caller bounds the wait.
    pub(crate) async fn linger(&mut self) {
        if self.io.shutdown().await.is_ok() {
            // One buffer (8 KiB, on the heap) for the whole wait, only on this rare path.
            let _ = tokio::io::copy(&mut self.io, &mut tokio::io::sink()).await;
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Metered<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(why) = this.meter.refused() {
            return Poll::Ready(Err(io::Error::other(why)));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        if read.is_empty() {
            return Poll::Ready(Ok(()));
        }
        match this.meter.read(Instant::now(), read) {
            Ok(()) => Poll::Ready(Ok(())),
            // The frames before the refused one go up; the next read fails.
            Err((keep, _)) if keep > 0 => {
                buf.set_filled(before + keep);
                Poll::Ready(Ok(()))
            }
            Err((_, why)) => {
                buf.set_filled(before);
                Poll::Ready(Err(io::Error::other(why)))
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Metered<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const TEXT: u8 = 0x1;
    const CONTINUATION: u8 = 0x0;
    const PING: u8 = 0x9;
    const PONG: u8 = 0xa;

    /// A masked client frame with a `len`-byte payload, its length in the shortest form.
    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut bytes = vec![(u8::from(fin) << 7) | opcode];
        match len {
            0..=125 => bytes.push(0x80 | len as u8),
            126..=0xffff => {
                bytes.push(0x80 | 126);
                bytes.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                bytes.push(0x80 | 127);
                bytes.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        bytes.extend_from_slice(&[1, 2, 3, 4]); // the mask
        bytes.extend(std::iter::repeat_n(b'x', len));
        bytes
    }

    fn header(fin: bool, opcode: u8, len: u64) -> Header {
        Header { fin, opcode, len }
    }

    /// Every header `parser` finds in `chunks`, read one after the other.
    fn headers<'a>(parser: &mut Parser, chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<Header> {
        let mut found = Vec::new();
        let mut starts = 0;
        for mut chunk in chunks {
            while !chunk.is_empty() {
                let (used, event) = parser.advance(chunk);
                assert!(used > 0, "progress");
                chunk = &chunk[used..];
                match event {
                    Some(Event::Start) => starts += 1,
                    Some(Event::Header(header)) => found.push(header),
                    None => assert!(chunk.is_empty()),
                }
            }
        }
        assert_eq!(starts, found.len(), "one start per header");
        found
    }

    fn stream() -> (Vec<u8>, Vec<Header>) {
        let frames = [
            (false, TEXT, 3),
            (false, CONTINUATION, 0),
            (true, PING, 125),
            (false, CONTINUATION, 126),
            (true, PONG, 0),
            (false, CONTINUATION, 300),
            (true, CONTINUATION, 0x1_0000), // the 64-bit length
            (true, TEXT, 0xffff),
        ];
        let bytes = frames
            .iter()
            .flat_map(|&(f, o, l)| frame(f, o, l))
            .collect();
        let expected = frames
            .iter()
            .map(|&(f, o, l)| header(f, o, l as u64))
            .collect();
        (bytes, expected)
    }

    #[test]
    fn headers_are_found_in_one_read() {
        let (bytes, expected) = stream();
        assert_eq!(headers(&mut Parser::new(), [&bytes[..]]), expected);
    }

    #[test]
    fn headers_are_found_wherever_the_reads_are_cut() {
        let (bytes, expected) = stream();
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(
                headers(&mut Parser::new(), [a, b]),
                expected,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn headers_are_found_byte_by_byte() {
        let (bytes, expected) = stream();
        assert_eq!(headers(&mut Parser::new(), bytes.chunks(1)), expected);
    }

    #[test]
    fn unmasked_frames_are_parsed_too() {
        // tungstenite refuses them; the parser must still not lose its place.
        let bytes = b"\x81\x05hello\x89\x00\x82\x7e\x00\x80";
        let mut parser = Parser::new();
        let mut found = headers(&mut parser, [&bytes[..]]);
        found.extend(headers(&mut parser, [&[0u8; 0x80][..]]));
        assert_eq!(
            found,
            [
                header(true, TEXT, 5),
                header(true, PING, 0),
                header(true, 2, 0x80)
            ]
        );
    }

    fn limits(burst: u32, auth_bytes: usize, message_bytes: usize) -> Limits {
        Limits {
            max_messages_per_s: 10,
            message_burst: burst,
            max_auth_message_bytes: auth_bytes,
            max_message_bytes: message_bytes,
            ..Limits::default()
        }
    }

    #[test]
    fn a_flood_of_empty_continuations_is_refused_after_the_burst() {
        let t0 = Instant::now();
        let mut meter = FrameMeter::new(t0, &limits(5, 100, 100));
        let mut bytes = frame(false, TEXT, 1);
        let continuation = frame(false, CONTINUATION, 0);
        for _ in 0..100 {
            bytes.extend_from_slice(&continuation);
        }
        // The text frame and four continuations pass; the fifth is where the bytes are cut.
        let keep = frame(false, TEXT, 1).len() + 4 * continuation.len();
        assert_eq!(meter.read(t0, &bytes), Err((keep, Exceeded::Rate)));
        assert_eq!(meter.refused(), Some(Exceeded::Rate));
        assert_eq!(
            meter.read(t0 + Duration::from_secs(60), &[]),
            Err((0, Exceeded::Rate))
        );
    }

    #[test]
    fn pings_count_and_the_rate_refills() {
        let t0 = Instant::now();
        let mut meter = FrameMeter::new(t0, &limits(3, 100, 100));
        let ping = frame(true, PING, 4);
        for _ in 0..3 {
            assert_eq!(meter.read(t0, &ping), Ok(()));
        }
        // 100 ms later (10 a second), one more.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(meter.read(t1, &ping), Ok(()));
        // A frame refused at the start of a read keeps nothing of it.
        assert_eq!(meter.read(t1, &ping), Err((0, Exceeded::Rate)));
    }

    #[test]
    fn a_frame_split_over_reads_costs_one_token() {
        let t0 = Instant::now();
        let mut meter = FrameMeter::new(t0, &limits(2, 1000, 1000));
        let bytes = [frame(true, TEXT, 300), frame(true, PONG, 0)].concat();
        for byte in bytes.chunks(1) {
            assert_eq!(meter.read(t0, byte), Ok(()));
        }
        assert_eq!(
            meter.read(t0, &frame(true, PONG, 0)),
            Err((0, Exceeded::Rate))
        );
    }

    #[test]
    fn the_first_message_has_the_auth_limit_and_later_ones_the_message_limit() {
        let t0 = Instant::now();
        let meter = || FrameMeter::new(t0, &limits(100, 10_000, 100));
        // A 10 KB auth message passes, also in fragments and with a ping in between.
        let auth = frame(true, TEXT, 10_000);
        assert_eq!(meter().read(t0, &auth), Ok(()));
        let fragmented = [
            frame(false, TEXT, 5_000),
            frame(true, PING, 0),
            frame(true, CONTINUATION, 5_000),
        ]
        .concat();
        assert_eq!(meter().read(t0, &fragmented), Ok(()));
        // One byte more does not, and neither does a larger frame of a later message.
        assert_eq!(
            meter().read(t0, &frame(true, TEXT, 10_001)),
            Err((0, Exceeded::Size))
        );
        let mut after_auth = meter();
        assert_eq!(after_auth.read(t0, &auth), Ok(()));
        assert_eq!(after_auth.read(t0, &frame(true, TEXT, 100)), Ok(()));
        let big = [frame(true, TEXT, 100), frame(true, TEXT, 101)].concat();
        assert_eq!(
            after_auth.read(t0, &big),
            Err((frame(true, TEXT, 100).len(), Exceeded::Size))
        );
    }

    #[test]
    fn fragments_add_up_to_the_message_limit() {
        let t0 = Instant::now();
        let mut meter = FrameMeter::new(t0, &limits(100, 10_000, 100));
        assert_eq!(meter.read(t0, &frame(true, TEXT, 10)), Ok(()));
        let message = [frame(false, TEXT, 60), frame(true, CONTINUATION, 41)].concat();
        // Refused at the second fragment's header, before its payload arrives.
        let header_end = frame(false, TEXT, 60).len() + 2;
        assert_eq!(
            meter.read(t0, &message[..header_end]),
            Err((frame(false, TEXT, 60).len(), Exceeded::Size))
        );
    }

    #[test]
    fn a_huge_length_is_refused_from_the_header_alone() {
        let t0 = Instant::now();
        let mut meter = FrameMeter::new(t0, &limits(100, 100, 100));
        let header = [0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(meter.read(t0, &header), Err((0, Exceeded::Size)));
    }

    #[test]
    fn the_meter_state_is_small() {
        // Per connection, beside tungstenite's buffers: 16 for the parser, 40 for the bucket
        // (which the connection task held before), 16 for the size limits.
        assert_eq!(std::mem::size_of::<FrameMeter>(), 72);
        assert_eq!(
            std::mem::size_of::<Metered<tokio::net::TcpStream>>(),
            std::mem::size_of::<tokio::net::TcpStream>() + 72
        );
    }
}
