//! A request to upgrade the connection goes to the same routes as any other: the same checks,
//! the same answers. What differs is the end. When its route accepted a WebSocket, the answer is
//! `101 Switching Protocols` carrying a [`HandOver`]: the handshake is written and the connection
//! leaves the HTTP server for the session, which reads and writes it directly. The HTTP server
//! keeps two 8 KiB buffers and its dispatcher for every connection it serves; a session on its
//! own connection keeps none of them. Any other answer is written and the connection closed.

use std::rc::Rc;

use actix_codec::Framed;
use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::h1;
use actix_http::{ConnectionType, Request, Response};
use actix_service::{IntoServiceFactory, Service, ServiceFactory, fn_factory, fn_service};
use actix_web::HttpResponse;
use actix_web::dev::{AppConfig, ServiceResponse};
use futures_util::SinkExt;
use synchub_actors::connection::{ConnSocket, Connection, IpSlot, Upgrade, refuse};
use tokio::io::{AsyncRead, AsyncWrite};

/// What a route that accepted a WebSocket leaves in its `101` answer for the connection.
pub(crate) enum HandOver {
    /// A session of the route's dialect, holding the client address's connection slot.
    Session {
        session: Box<dyn Upgrade>,
        slot: Option<IpSlot>,
    },
    /// A socket opened only to be closed with a code, as clients of some dialects expect
    /// (Pocket's 4001) rather than an HTTP error.
    Refuse { code: u16, reason: &'static str },
}

/// Why an upgrade's connection ended before it was handed over.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("writing the answer to an upgrade: {0}")]
    Write(#[from] std::io::Error),
    #[error("reading the body of the answer to an upgrade: {0}")]
    Body(String),
}

impl From<UpgradeError> for Response<BoxBody> {
    fn from(e: UpgradeError) -> Self {
        // Only reached once the answer was being written: nothing more can reach the client.
        Response::with_body(
            actix_http::StatusCode::INTERNAL_SERVER_ERROR,
            BoxBody::new(e.to_string()),
        )
    }
}

/// Serves the upgrade requests of one worker with its own instance of the app `make_app` builds.
pub fn factory<T, F, I, SF, B>(
    make_app: F,
) -> impl ServiceFactory<
    (Request, Framed<T, h1::Codec>),
    Config = (),
    Response = (),
    Error = UpgradeError,
    InitError = (),
>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
    F: Fn() -> I + 'static,
    I: IntoServiceFactory<SF, Request>,
    SF: ServiceFactory<
            Request,
            Config = AppConfig,
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    SF::Service: 'static,
    B: MessageBody + 'static,
{
    fn_factory(move || {
        let app = make_app().into_factory();
        async move {
            let app = Rc::new(app.new_service(AppConfig::default()).await?);
            Ok(fn_service(move |(req, framed)| {
                serve(app.clone(), req, framed)
            }))
        }
    })
}

async fn serve<T, S, B>(
    app: Rc<S>,
    req: Request,
    mut framed: Framed<T, h1::Codec>,
) -> Result<(), UpgradeError>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    let socket = req.conn_data::<ConnSocket>().copied();
    let mut answer = match app.call(req).await {
        Ok(res) => res.into_parts().1.map_into_boxed_body(),
        Err(e) => HttpResponse::from_error(e),
    };
    let hand_over = answer.extensions_mut().remove::<HandOver>();
    let (mut head, body) = Response::from(answer).into_parts();
    let Some(hand_over) = hand_over.filter(|_| head.status().as_u16() == 101) else {
        head.head_mut().set_connection_type(ConnectionType::Close);
        framed.feed(h1::Message::Item((head, body.size()))).await?;
        // Streamed as it comes: some answers (`/stats/stream`) never end by themselves.
        let mut body = std::pin::pin!(body);
        while let Some(chunk) =
            futures_util::future::poll_fn(|cx| body.as_mut().poll_next(cx)).await
        {
            let chunk = chunk.map_err(|e| UpgradeError::Body(e.to_string()))?;
            framed.send(h1::Message::Chunk(Some(chunk))).await?;
        }
        framed.send(h1::Message::Chunk(None)).await?;
        framed.close().await?;
        return Ok(());
    };
    framed
        .send(h1::Message::Item((head, BodySize::None)))
        .await?;
    let parts = framed.into_parts();
    let conn = Connection {
        io: Box::new(parts.io),
        read: parts.read_buf,
        socket,
    };
    match hand_over {
        HandOver::Session { session, slot } => session.start(conn, slot),
        HandOver::Refuse { code, reason } => refuse(conn, code, reason),
    }
    Ok(())
}
