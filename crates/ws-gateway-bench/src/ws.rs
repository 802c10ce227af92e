//! A minimal WebSocket client, lean on purpose: the load generator shares the machine's cores
//! with the server under test, so its receive path must cost little. It upgrades by hand,
//! sends masked text frames, and parses unfragmented server frames in place.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// The source address for the `i`-th connection: spread over 127.1.0.0/16 (250 connections
/// per address) so that repeated runs never run out of ephemeral ports, even with the
/// previous run's sockets still in TIME_WAIT.
pub fn source_for(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, (i / 250 % 250) as u8, (i % 250 + 1) as u8)
}

/// Appends one masked client frame to `frame`.
fn encode_frame(frame: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    frame.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

#[derive(Debug)]
pub struct WsClient {
    stream: TcpStream,
    buf: BytesMut,
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

impl WsClient {
    /// Connects from `source` and upgrades on `path`.
    pub async fn connect(server: SocketAddr, source: Ipv4Addr, path: &str) -> io::Result<WsClient> {
        let socket = TcpSocket::new_v4()?;
        socket.bind((source, 0).into())?;
        let mut stream = socket.connect(server).await?;
        stream.set_nodelay(true)?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = BytesMut::with_capacity(1024);
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(bad("closed during the upgrade"));
            }
        };
        if !buf.starts_with(b"HTTP/1.1 101") {
            let head = String::from_utf8_lossy(&buf[..end.min(64)]).into_owned();
            return Err(bad(&format!("upgrade refused: {head}")));
        }
        buf.advance(end);
        Ok(WsClient { stream, buf })
    }

    async fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut frame = Vec::with_capacity(payload.len() + 14);
        encode_frame(&mut frame, opcode, payload);
        self.stream.write_all(&frame).await
    }

    /// Sends several text messages in one write, as a client that has them ready at once can.
    pub async fn send_texts(&mut self, texts: &[String]) -> io::Result<()> {
        let mut frames = Vec::with_capacity(texts.iter().map(|t| t.len() + 14).sum());
        for text in texts {
            encode_frame(&mut frames, OP_TEXT, text.as_bytes());
        }
        self.stream.write_all(&frames).await
    }

    /// The next text or binary payload; `None` when the server closes. Pings are answered.
    pub async fn next_message(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if let Some((opcode, payload)) = self.parse()? {
                match opcode {
                    OP_TEXT | OP_BINARY => return Ok(Some(payload)),
                    OP_PING => self.send_frame(OP_PONG, &payload).await?,
                    OP_CLOSE => return Ok(None),
                    _ => {}
                }
                continue;
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// One complete frame from the buffer, if there is one.
    fn parse(&mut self) -> io::Result<Option<(u8, Bytes)>> {
        let buf = &self.buf;
        if buf.len() < 2 {
            return Ok(None);
        }
        if buf[1] & 0x80 != 0 {
            return Err(bad("a masked server frame"));
        }
        let (len, header) = match buf[1] & 0x7f {
            126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 if buf.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            126 | 127 => return Ok(None),
            n => (usize::from(n), 2),
        };
        if buf.len() < header + len {
            self.buf.reserve(header + len - buf.len());
            return Ok(None);
        }
        let opcode = buf[0] & 0x0f;
        self.buf.advance(header);
        Ok(Some((opcode, self.buf.split_to(len).freeze())))
    }
}
