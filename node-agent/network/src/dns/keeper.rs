//! Keeps the embedded DNS's sockets open while the agent restarts.
//!
//! The DNS lives in the agent, so without help its listening sockets close when the
//! agent exits, and a container's lookup in the gap gets "port unreachable" at once. The
//! keeper is a tiny process of its own (`skiff-agent keep-dns-sockets`, outliving the
//! agent as the shims do) that holds a duplicate of each socket. While no agent runs,
//! queries wait in the UDP socket's receive queue and connections in the TCP backlog;
//! the next agent takes the sockets back and answers them.
//!
//! ```text
//!  agent ──PUT udp 10.213.1.1:53 + fd──► keeper   (after each bind)
//!  agent ──DROP 10.213.1.1:53─────────► keeper   (a network left the node)
//!  agent ──GET──► keeper ──"udp 10.213.1.1:53" + fd … END──► agent   (at start)
//!  agent ──QUIT──► keeper exits   (the node leaves the cluster)
//! ```
//!
//! One request per connection over a `SOCK_SEQPACKET` unix socket (message boundaries
//! kept, the fd travels as `SCM_RIGHTS` with its message).
#![allow(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr, accept4, bind, connect, listen, recvmsg, sendmsg, socket,
};

/// Longest message either side sends.
const MAX_MSG: usize = 256;

/// Which of a gateway's two DNS sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Proto {
    Udp,
    Tcp,
}

impl Proto {
    fn as_str(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "udp" => Some(Proto::Udp),
            "tcp" => Some(Proto::Tcp),
            _ => None,
        }
    }
}

/// What went wrong talking to (or being) the keeper.
#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("DNS socket keeper at {path}: {op}: {err}")]
    Io {
        path: PathBuf,
        op: &'static str,
        err: nix::Error,
    },
    #[error("DNS socket keeper at {path}: unexpected answer {answer:?}")]
    Protocol { path: PathBuf, answer: String },
}

/// A socket handed back by the keeper.
#[derive(Debug)]
pub struct KeptSocket {
    pub proto: Proto,
    pub addr: SocketAddr,
    pub fd: OwnedFd,
}

/// Talks to the keeper listening at a path.
#[derive(Clone, Debug)]
pub struct Keeper {
    path: PathBuf,
}

impl Keeper {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Keeper { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, op: &'static str) -> impl Fn(nix::Error) -> KeeperError + '_ {
        move |err| KeeperError::Io {
            path: self.path.clone(),
            op,
            err,
        }
    }

    fn connect(&self) -> Result<OwnedFd, KeeperError> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(self.err("socket"))?;
        let addr = UnixAddr::new(&self.path).map_err(self.err("address"))?;
        connect(fd.as_raw_fd(), &addr).map_err(self.err("connect"))?;
        Ok(fd)
    }

    /// Whether a keeper answers at the path.
    pub fn is_running(&self) -> bool {
        self.request("PING", None)
            .is_ok_and(|(answer, _)| answer == "OK")
    }

    fn request(
        &self,
        msg: &str,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(String, Option<OwnedFd>), KeeperError> {
        let conn = self.connect()?;
        send(conn.as_fd(), msg, fd).map_err(self.err("send"))?;
        recv(conn.as_fd()).map_err(self.err("receive"))
    }

    /// Hands the keeper a duplicate of `fd`, the `proto` socket bound on `addr`.
    pub fn keep(
        &self,
        proto: Proto,
        addr: SocketAddr,
        fd: BorrowedFd<'_>,
    ) -> Result<(), KeeperError> {
        self.expect_ok(&format!("PUT {} {addr}", proto.as_str()), Some(fd))
    }

    /// Makes the keeper close its sockets on `addr`.
    pub fn forget(&self, addr: SocketAddr) -> Result<(), KeeperError> {
        self.expect_ok(&format!("DROP {addr}"), None)
    }

    /// Makes the keeper close everything and exit.
    pub fn quit(&self) -> Result<(), KeeperError> {
        self.expect_ok("QUIT", None)
    }

    fn expect_ok(&self, msg: &str, fd: Option<BorrowedFd<'_>>) -> Result<(), KeeperError> {
        match self.request(msg, fd)? {
            (answer, _) if answer == "OK" => Ok(()),
            (answer, _) => Err(KeeperError::Protocol {
                path: self.path.clone(),
                answer,
            }),
        }
    }

    /// Duplicates of every socket the keeper holds (it keeps its own).
    pub fn sockets(&self) -> Result<Vec<KeptSocket>, KeeperError> {
        let conn = self.connect()?;
        send(conn.as_fd(), "GET", None).map_err(self.err("send"))?;
        let mut out = Vec::new();
        loop {
            let (msg, fd) = recv(conn.as_fd()).map_err(self.err("receive"))?;
            if msg == "END" {
                return Ok(out);
            }
            let bad = || KeeperError::Protocol {
                path: self.path.clone(),
                answer: msg.clone(),
            };
            let (proto, addr) = msg.split_once(' ').ok_or_else(bad)?;
            out.push(KeptSocket {
                proto: Proto::parse(proto).ok_or_else(bad)?,
                addr: addr.parse().map_err(|_| bad())?,
                fd: fd.ok_or_else(bad)?,
            });
        }
    }
}

fn send(conn: BorrowedFd<'_>, msg: &str, fd: Option<BorrowedFd<'_>>) -> nix::Result<()> {
    let iov = [IoSlice::new(msg.as_bytes())];
    let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
        vec![]
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    sendmsg::<()>(conn.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None).map(drop)
}

/// One message and the fd that came with it, if any.
fn recv(conn: BorrowedFd<'_>) -> nix::Result<(String, Option<OwnedFd>)> {
    let mut buf = [0u8; MAX_MSG];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let (len, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                fds.extend(received);
            }
        }
        (msg.bytes, fds)
    };
    // SAFETY: SCM_RIGHTS installed these descriptors in this process for us alone;
    // nothing else refers to them, so each becomes owned exactly once here.
    let mut owned: Vec<OwnedFd> = fds
        .into_iter()
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    let text = String::from_utf8_lossy(&buf[..len]).into_owned();
    Ok((text, owned.pop()))
}

/// The keeper process: serves requests at `path` until QUIT. Blocking.
pub fn serve(path: &Path) -> Result<(), KeeperError> {
    let err = |op| {
        move |err| KeeperError::Io {
            path: path.to_owned(),
            op,
            err,
        }
    };
    // A stale socket file of a keeper that died is in the way.
    let _ = std::fs::remove_file(path);
    let listener = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err("socket"))?;
    let addr = UnixAddr::new(path).map_err(err("address"))?;
    bind(listener.as_raw_fd(), &addr).map_err(err("bind"))?;
    listen(&listener, Backlog::new(64).map_err(err("listen"))?).map_err(err("listen"))?;
    let mut held: BTreeMap<(SocketAddr, Proto), OwnedFd> = BTreeMap::new();
    loop {
        let raw = match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            Ok(fd) => fd,
            Err(nix::Error::EINTR | nix::Error::ECONNABORTED) => continue,
            Err(e) => return Err(err("accept")(e)),
        };
        // SAFETY: accept4 returned a new descriptor that nothing else owns.
        let conn = unsafe { OwnedFd::from_raw_fd(raw) };
        // A client that misbehaves or goes away only loses its own request.
        if let Ok(Quit(true)) = handle(conn.as_fd(), &mut held) {
            let _ = std::fs::remove_file(path);
            return Ok(());
        }
    }
}

struct Quit(bool);

fn handle(
    conn: BorrowedFd<'_>,
    held: &mut BTreeMap<(SocketAddr, Proto), OwnedFd>,
) -> nix::Result<Quit> {
    let (msg, fd) = recv(conn)?;
    let mut words = msg.split(' ');
    match (words.next(), words.next(), words.next(), fd) {
        (Some("PING"), None, None, None) => send(conn, "OK", None)?,
        (Some("PUT"), Some(proto), Some(addr), Some(fd)) => {
            match (Proto::parse(proto), addr.parse::<SocketAddr>()) {
                (Some(proto), Ok(addr)) => {
                    held.insert((addr, proto), fd);
                    send(conn, "OK", None)?;
                }
                _ => send(conn, "ERR bad PUT", None)?,
            }
        }
        (Some("DROP"), Some(addr), None, None) => match addr.parse::<SocketAddr>() {
            Ok(addr) => {
                held.retain(|(a, _), _| *a != addr);
                send(conn, "OK", None)?;
            }
            Err(_) => send(conn, "ERR bad DROP", None)?,
        },
        (Some("GET"), None, None, None) => {
            for ((addr, proto), fd) in held.iter() {
                send(
                    conn,
                    &format!("{} {addr}", proto.as_str()),
                    Some(fd.as_fd()),
                )?;
            }
            send(conn, "END", None)?;
        }
        (Some("QUIT"), None, None, None) => {
            send(conn, "OK", None)?;
            return Ok(Quit(true));
        }
        _ => send(conn, "ERR unknown request", None)?,
    }
    Ok(Quit(false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    fn keeper() -> (tempfile::TempDir, Keeper, std::thread::JoinHandle<()>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keeper.sock");
        let serving = path.clone();
        let thread = std::thread::spawn(move || serve(&serving).expect("serve"));
        let k = Keeper::new(&path);
        for _ in 0..200 {
            if k.is_running() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(k.is_running(), "keeper up");
        (dir, k, thread)
    }

    #[test]
    fn a_kept_socket_queues_datagrams_while_nobody_holds_it_and_hands_them_over() {
        let (_dir, k, thread) = keeper();
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let addr = sock.local_addr().expect("addr");
        k.keep(Proto::Udp, addr, sock.as_fd()).expect("keep");
        drop(sock);

        // Nobody in this process holds the socket now; a query still lands in its queue.
        let client = UdpSocket::bind("127.0.0.1:0").expect("client");
        client.send_to(b"who is web?", addr).expect("send");

        let kept = k.sockets().expect("sockets");
        assert_eq!(kept.len(), 1);
        assert_eq!((kept[0].proto, kept[0].addr), (Proto::Udp, addr));
        let back = UdpSocket::from(kept.into_iter().next().expect("one").fd);
        back.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        let (n, from) = back.recv_from(&mut buf).expect("the queued query");
        assert_eq!(&buf[..n], b"who is web?");
        assert_eq!(from, client.local_addr().expect("client addr"));

        // Still held after a GET; DROP closes the keeper's copy.
        assert_eq!(k.sockets().expect("again").len(), 1);
        k.forget(addr).expect("forget");
        assert!(k.sockets().expect("after drop").is_empty());

        k.quit().expect("quit");
        thread.join().expect("keeper thread");
        assert!(!k.is_running());
        assert!(!k.path().exists(), "socket file removed");
    }

    #[test]
    fn bad_requests_get_an_error_and_the_keeper_keeps_serving() {
        let (_dir, k, thread) = keeper();
        let err = k
            .expect_ok("PUT udp 127.0.0.1:53", None)
            .expect_err("no fd");
        assert!(err.to_string().contains("ERR"), "{err}");
        let err = k.forget("127.0.0.1:53".parse().expect("addr"));
        assert!(err.is_ok(), "dropping what is not held is fine");
        assert!(matches!(
            k.expect_ok("HELLO", None),
            Err(KeeperError::Protocol { .. })
        ));
        assert!(k.is_running());
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("tcp");
        let addr = tcp.local_addr().expect("addr");
        k.keep(Proto::Tcp, addr, tcp.as_fd()).expect("keep tcp");
        drop(tcp);
        // The listener lives on in the keeper: a connection completes into its backlog.
        std::net::TcpStream::connect(addr).expect("connect while only the keeper holds it");
        let kept = k.sockets().expect("sockets");
        assert_eq!((kept[0].proto, kept[0].addr), (Proto::Tcp, addr));
        let listener = std::net::TcpListener::from(kept.into_iter().next().expect("one").fd);
        listener.accept().expect("the queued connection");
        k.quit().expect("quit");
        thread.join().expect("keeper thread");
    }
}
