//! A session's WebSocket once the handshake is answered: the connection handed over by the HTTP
//! layer, the frames read from it and the frames written to it.
//!
//! The session's own actor task does both. Nothing here holds a buffer while the connection is
//! idle: bytes are read into the stack and kept only while they make a partial frame, and what
//! the session writes waits in a buffer that is dropped once the socket took it. An idle
//! connection so costs its socket and its session, not the 16 KiB of buffers the HTTP server
//! keeps for a connection it serves (see the README's memory figures).

use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_http::ws::{CloseReason, Codec, Frame, Message, ProtocolError};
use bytes::BytesMut;
use bytestring::ByteString;
use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::codec::{Decoder, Encoder};

use crate::outbound::{ConnSocket, Outbound};

/// What a WebSocket runs over: a TCP stream, or a TLS stream over one.
pub trait Io: AsyncRead + AsyncWrite + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + 'static> Io for T {}

/// A connection whose handshake the HTTP layer has answered, handed to the session that takes
/// it over.
pub struct Connection {
    pub io: Box<dyn Io>,
    /// Bytes the client sent after its handshake, read along with it: the start of its first
    /// frames.
    pub read: BytesMut,
    /// The connection's socket, for cutting off a client that stopped reading.
    pub socket: Option<ConnSocket>,
}

/// How much one read takes off the socket. Reads land on the stack, so this costs an idle
/// connection nothing.
const READ_CHUNK: usize = 8 * 1024;

/// How long a closing connection may take to accept the last bytes written to it (its close
/// frame among them) before it is dropped anyway.
const CLOSE_FLUSH: Duration = Duration::from_secs(5);

type Shared = Rc<RefCell<Box<dyn Io>>>;

/// The client's messages, as the connection brings them.
pub struct Reader {
    io: Shared,
    buf: BytesMut,
    codec: Codec,
    ended: bool,
}

/// What the session has written and the socket has not taken yet.
pub struct Writer {
    io: Shared,
    buf: BytesMut,
    codec: Codec,
    out: Arc<Outbound>,
    failed: bool,
    /// A close frame was queued: nothing may follow it (RFC 6455 5.5.1).
    closed: bool,
}

/// Splits `conn` into the client's messages and the session's side. `max` bounds one frame's
/// payload, as the session's settings have it.
pub fn split(conn: Connection, max: usize, out: Arc<Outbound>) -> (Reader, Writer) {
    let io: Shared = Rc::new(RefCell::new(conn.io));
    let codec = Codec::new().max_size(max);
    // The HTTP server's read buffer comes along, 8 KiB however little of it is used.
    let buf = if conn.read.is_empty() {
        BytesMut::new()
    } else {
        conn.read
    };
    let reader = Reader {
        io: io.clone(),
        buf,
        codec: codec.clone(),
        ended: false,
    };
    let writer = Writer {
        io,
        buf: BytesMut::new(),
        codec,
        out,
        failed: false,
        closed: false,
    };
    (reader, writer)
}

/// Closes a connection just handed over with `code`: a socket opened only to be refused, as
/// clients of some dialects expect (Pocket's 4001) rather than an HTTP error.
pub fn refuse(conn: Connection, code: u16, reason: &str) {
    let (_, mut writer) = split(conn, 0, Outbound::new(usize::MAX, None));
    writer.send(Message::Close(Some(CloseReason {
        code: code.into(),
        description: Some(reason.to_owned()),
    })));
    writer.close();
}

impl Reader {
    fn decode(&mut self) -> Result<Option<Message>, ProtocolError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let frame = self.codec.decode(&mut self.buf)?;
        if self.buf.is_empty() {
            // What remains of the allocation belongs to the frames just decoded.
            self.buf = BytesMut::new();
        }
        frame.map(message).transpose()
    }
}

impl Stream for Reader {
    type Item = Result<Message, ProtocolError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.decode() {
                Ok(Some(msg)) => return Poll::Ready(Some(Ok(msg))),
                Ok(None) => {}
                Err(e) => {
                    this.ended = true;
                    this.buf = BytesMut::new();
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if this.ended {
                return Poll::Ready(None);
            }
            // Not zeroed: the reader is polled at every wake-up of the session, mostly to find
            // nothing to read.
            let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut read = ReadBuf::uninit(&mut chunk);
            let polled = {
                let mut io = this.io.borrow_mut();
                Pin::new(&mut **io).poll_read(cx, &mut read)
            };
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(ProtocolError::Io(e))));
                }
                Poll::Ready(Ok(())) if read.filled().is_empty() => this.ended = true,
                Poll::Ready(Ok(())) => this.buf.extend_from_slice(read.filled()),
            }
        }
    }
}

/// A frame as the session handles it. A text frame that is not UTF-8 is an error of kind
/// `InvalidData` (RFC 6455 asks for close code 1007).
fn message(frame: Frame) -> Result<Message, ProtocolError> {
    Ok(match frame {
        Frame::Text(data) => Message::Text(ByteString::try_from(data).map_err(|_| {
            ProtocolError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                "a text frame that is not UTF-8",
            ))
        })?),
        Frame::Binary(data) => Message::Binary(data),
        Frame::Continuation(item) => Message::Continuation(item),
        Frame::Ping(data) => Message::Ping(data),
        Frame::Pong(data) => Message::Pong(data),
        Frame::Close(reason) => Message::Close(reason),
    })
}

impl Writer {
    /// Queues `msg`; true when the queue was empty, so a flush must be scheduled.
    pub fn send(&mut self, msg: Message) -> bool {
        if self.failed || self.closed {
            return false;
        }
        self.closed = matches!(msg, Message::Close(_));
        let was_empty = self.buf.is_empty();
        if let Err(e) = self.codec.encode(msg, &mut self.buf) {
            log::debug!("a frame could not be encoded: {e}");
        }
        was_empty && !self.buf.is_empty()
    }

    /// Bytes written and not taken by the socket yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Writes what is queued. Ready(Ok) once the socket took all of it; Ready(Err) when the
    /// connection failed, after which nothing more is written.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.failed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let mut io = self.io.borrow_mut();
        while !self.buf.is_empty() {
            match Pin::new(&mut **io).poll_write(cx, &self.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => {
                    self.failed = true;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    let _ = self.buf.split_to(n);
                    self.out.sent(n);
                }
                Poll::Ready(Err(e)) => {
                    self.failed = true;
                    return Poll::Ready(Err(e));
                }
            }
        }
        // An idle connection keeps no buffer.
        self.buf = BytesMut::new();
        // A TLS stream holds what it encrypted until flushed.
        Pin::new(&mut **io).poll_flush(cx).map_err(|e| {
            self.failed = true;
            e
        })
    }

    /// Writes what is left, then closes the connection: on a task of its own, as the session
    /// that wrote it has stopped. Bounded by [`CLOSE_FLUSH`] for a client that reads nothing.
    pub fn close(mut self) {
        if self.failed {
            return;
        }
        actix::spawn(async move {
            let finish = async {
                futures_util::future::poll_fn(|cx| self.poll_flush(cx)).await?;
                futures_util::future::poll_fn(|cx| {
                    let mut io = self.io.borrow_mut();
                    Pin::new(&mut **io).poll_shutdown(cx)
                })
                .await
            };
            match tokio::time::timeout(CLOSE_FLUSH, finish).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => log::debug!("closing a connection: {e}"),
                Err(_) => log::debug!("a closing connection took nothing for {CLOSE_FLUSH:?}"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn client_frame(msg: Message) -> BytesMut {
        let mut buf = BytesMut::new();
        Codec::new()
            .client_mode()
            .encode(msg, &mut buf)
            .expect("encodes");
        buf
    }

    /// The server's end of an in-memory pipe as a handed-over connection; `read` is what came
    /// with the handshake.
    fn connection(server: DuplexStream, read: BytesMut) -> Connection {
        Connection {
            io: Box::new(server),
            read,
            socket: None,
        }
    }

    #[actix_rt::test]
    async fn reads_frames_split_anywhere_and_what_came_with_the_handshake() {
        let (client, server) = tokio::io::duplex(64);
        let mut first = client_frame(Message::Text("hello".into()));
        let rest = first.split_off(3);
        let conn = connection(server, first);
        let (mut reader, _writer) = split(conn, 1024, Outbound::new(usize::MAX, None));
        let mut client = client;
        client.write_all(&rest).await.expect("writes");
        let second = client_frame(Message::Binary(Bytes::from_static(b"\x01\x02")));
        for byte in second.iter() {
            client.write_all(&[*byte]).await.expect("writes");
        }
        drop(client);
        let got: Vec<_> = reader.by_ref().collect().await;
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(matches!(&got[0], Ok(Message::Text(t)) if t == "hello"));
        assert!(matches!(&got[1], Ok(Message::Binary(b)) if b.as_ref() == b"\x01\x02"));
        assert!(reader.buf.capacity() == 0, "nothing kept between messages");
    }

    #[actix_rt::test]
    async fn an_idle_connection_keeps_no_read_buffer() {
        let (_client, server) = tokio::io::duplex(64);
        let conn = connection(server, BytesMut::with_capacity(8192));
        let (reader, _writer) = split(conn, 1024, Outbound::new(usize::MAX, None));
        assert_eq!(reader.buf.capacity(), 0);
    }

    #[actix_rt::test]
    async fn text_that_is_not_utf8_is_invalid_data() {
        let (mut client, server) = tokio::io::duplex(64);
        let conn = connection(server, BytesMut::new());
        let (mut reader, _writer) = split(conn, 1024, Outbound::new(usize::MAX, None));
        // A text frame carrying 0xff, masked as a client must.
        let mut frame = client_frame(Message::Binary(Bytes::from_static(b"\xff")));
        frame[0] = 0x81;
        client.write_all(&frame).await.expect("writes");
        match reader.next().await {
            Some(Err(ProtocolError::Io(e))) => assert_eq!(e.kind(), io::ErrorKind::InvalidData),
            other => panic!("{other:?}"),
        }
    }

    #[actix_rt::test]
    async fn writes_count_off_the_queue_and_keep_no_buffer() {
        let (mut client, server) = tokio::io::duplex(1024);
        let out = Outbound::new(usize::MAX, None);
        let conn = connection(server, BytesMut::new());
        let (_reader, mut writer) = split(conn, 1024, out.clone());
        out.add(7);
        assert!(
            writer.send(Message::Text("hello".into())),
            "the first frame schedules a flush"
        );
        assert!(
            !writer.send(Message::Text(ByteString::new())),
            "the second waits with it"
        );
        out.add(2);
        futures_util::future::poll_fn(|cx| writer.poll_flush(cx))
            .await
            .expect("flushes");
        assert_eq!(out.queued(), 0);
        assert_eq!(out.bytes_out(), 9);
        assert_eq!(writer.buf.capacity(), 0);
        let mut got = [0u8; 9];
        client.read_exact(&mut got).await.expect("reads");
        assert_eq!(&got[..7], b"\x81\x05hello");
        assert_eq!(&got[7..], b"\x81\x00");
    }
}
