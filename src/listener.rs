//! The listening socket. When a hub restarts, or a load balancer moves its clients over, every
//! client reconnects within the same second. Past the listen backlog the kernel drops their
//! SYNs, and each dropped client waits a whole retransmission timeout (1 s, then 3 s, then 7 s)
//! before it tries again. The standard library listens with a backlog of 128; the hub asks
//! for [`BACKLOG`], which the kernel caps at `net.core.somaxconn` (4096 by default since
//! Linux 5.4).

use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Socket, Type};

/// Connections the kernel completes for the hub before it accepts them.
pub const BACKLOG: i32 = 4096;

/// Binds `addr` and listens with [`BACKLOG`], reusing the address as the standard library
/// does, so a restarted hub binds while its old connections are in TIME_WAIT.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;
    use std::time::Duration;

    use super::*;

    /// What the kernel allows of the backlog asked for.
    fn allowed_backlog() -> usize {
        std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .map_or(BACKLOG as usize, |max| max.min(BACKLOG as usize))
    }

    /// A listener nobody accepts from still completes as many connections as its backlog holds;
    /// past it the kernel drops the SYNs and a connect times out. With the standard library's
    /// 128 this fails after 129 connections.
    #[test]
    fn the_backlog_holds_a_crowd_of_reconnecting_clients() {
        let listener = listen("127.0.0.1:0".parse().expect("an address")).expect("listen");
        let addr = listener.local_addr().expect("its address");
        let crowd = allowed_backlog().min(1000);
        let mut held = Vec::with_capacity(crowd);
        for i in 0..crowd {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(s) => held.push(s),
                Err(e) => panic!("connection {i} of {crowd} not completed: {e}"),
            }
        }
        assert_eq!(held.len(), crowd);
    }
}
