//! A frame ready for the socket, cheap to share between the sessions that send the same bytes.

use actix_web::web::Bytes;
use bytestring::ByteString;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutFrame {
    Text(ByteString),
    Binary(Bytes),
}

impl OutFrame {
    pub fn text(s: String) -> OutFrame {
        OutFrame::Text(ByteString::from(s))
    }

    pub fn binary(b: Vec<u8>) -> OutFrame {
        OutFrame::Binary(Bytes::from(b))
    }
}
