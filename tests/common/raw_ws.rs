//! A WebSocket client that writes frames byte by byte: for frames a well-behaved library will not
//! send (broken UTF-8, oversized control frames), and for a client that stops reading.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{TIMEOUT, within};

pub struct RawWs {
    pub tcp: TcpStream,
    /// Bytes read past the handshake, not yet parsed.
    buf: Vec<u8>,
}

/// What the server sent, frame by frame.
#[derive(Debug, PartialEq)]
pub enum RawFrame {
    Text(String),
    Binary(Vec<u8>),
    Close(u16),
    Other(u8),
}

impl RawWs {
    /// Upgrades `path` on `addr`; panics unless the server switches protocols.
    pub async fn connect(addr: SocketAddr, path: &str) -> RawWs {
        RawWs::connect_with_buffer(addr, path, None).await
    }

    /// As [`RawWs::connect`], with the socket's receive buffer set to `recv_buffer` bytes: a
    /// client that stops reading then holds little in its kernel, so what the server sends it
    /// backs up in the server soon.
    pub async fn connect_with_buffer(
        addr: SocketAddr,
        path: &str,
        recv_buffer: Option<u32>,
    ) -> RawWs {
        RawWs::open(addr, path, recv_buffer, &[]).await
    }

    /// As [`RawWs::connect`], with `frames` written in the same write as the handshake, before
    /// the server answered it (as a client that does not wait for the answer sends them).
    pub async fn connect_sending(addr: SocketAddr, path: &str, frames: &[u8]) -> RawWs {
        RawWs::open(addr, path, None, frames).await
    }

    async fn open(addr: SocketAddr, path: &str, recv_buffer: Option<u32>, frames: &[u8]) -> RawWs {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let mut tcp = within("connect", socket.connect(addr))
            .await
            .expect("connect");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let mut request = request.into_bytes();
        request.extend_from_slice(frames);
        within("send the upgrade", tcp.write_all(&request))
            .await
            .expect("send upgrade");
        let mut buf = Vec::new();
        let end = loop {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(TIMEOUT, tcp.read(&mut chunk))
                .await
                .expect("handshake in time")
                .expect("read handshake");
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
        RawWs {
            tcp,
            buf: buf[end..].to_vec(),
        }
    }

    /// Sends one masked frame ([`masked_frame`]).
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        let frame = masked_frame(opcode, payload);
        within("send a frame", self.tcp.write_all(&frame))
            .await
            .expect("send frame");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(0x1, text.as_bytes()).await;
    }

    /// The next frame, `None` once the connection has ended (closed or reset).
    pub async fn next_frame(&mut self, wait: Duration) -> Option<RawFrame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some((frame, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = match tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk)).await {
                Ok(Ok(n)) => n,
                Ok(Err(_)) => return None,
                Err(_) => panic!("no frame within {wait:?}"),
            };
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads until the server closes: its close code, or `None` if the connection ended
    /// without a close frame.
    pub async fn close_code(&mut self, wait: Duration) -> Option<u16> {
        loop {
            match self.next_frame(wait).await? {
                RawFrame::Close(code) => return Some(code),
                _ => continue,
            }
        }
    }
}

/// A client's frame: final, masked (the mask is fixed: it is there because clients must mask,
/// not for secrecy).
pub fn masked_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut frame = vec![0x80 | opcode];
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
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// One unmasked server frame from the start of `buf`, and the bytes it took.
fn parse(buf: &[u8]) -> Option<(RawFrame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => {
            let b: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (n as usize, 2),
    };
    let payload = buf.get(at..at + len)?.to_vec();
    at += len;
    let frame = match opcode {
        0x1 => RawFrame::Text(String::from_utf8_lossy(&payload).into_owned()),
        0x2 => RawFrame::Binary(payload),
        0x8 => RawFrame::Close(match payload.as_slice() {
            [a, b, ..] => u16::from_be_bytes([*a, *b]),
            _ => 1005,
        }),
        other => RawFrame::Other(other),
    };
    Some((frame, at))
}
