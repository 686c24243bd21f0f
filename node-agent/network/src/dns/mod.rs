//! The embedded DNS: one hickory server per network gateway address of this node
//! (`<gateway>:53`, UDP and TCP, sockets bound inside the node's namespace). A
//! container's resolv.conf names its first network's gateway. Names of services on the
//! asker's networks are answered from [`DnsTable`]; everything else is forwarded, over
//! the protocol the query came in on, to the host's resolvers (from /etc/resolv.conf).
//!
//! With a [`keeper::Keeper`], every socket is also handed to the keeper process, and an
//! agent that starts takes the sockets of its predecessor back instead of binding anew:
//! lookups made while the agent restarts wait in the sockets' queues, none is refused.

pub mod keeper;
pub mod table;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use table::DnsTable;

use crate::netns::{self, NetnsError};

/// TTL of skiff's own answers: short, so moved replicas are picked up quickly.
pub const TTL: u32 = 5;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the DNS could not listen.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("binding DNS {proto} socket on {addr}: {err}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        err: std::io::Error,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// The `nameserver` lines of a resolv.conf, on port 53.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then_some(())?;
            let ip: IpAddr = w.next()?.split('%').next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

/// The resolvers of the host, from `path` (usually /etc/resolv.conf).
pub fn host_resolvers(path: &Path) -> Vec<SocketAddr> {
    std::fs::read_to_string(path)
        .map(|t| parse_resolv_conf(&t))
        .unwrap_or_default()
}

/// The resolv.conf a container gets.
pub fn container_resolv_conf(nameserver: Ipv4Addr) -> String {
    format!(
        "# written by skiff: the embedded DNS on this network's gateway\nnameserver {nameserver}\noptions ndots:0\n"
    )
}

#[derive(Clone)]
struct Handler {
    table: Arc<RwLock<DnsTable>>,
    upstreams: Arc<Vec<SocketAddr>>,
}

async fn forward_udp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(std::io::Error::other)?;
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    sock.connect(upstream).await?;
    sock.send(query).await?;
    let mut buf = vec![0u8; 65535];
    let n = sock.recv(&mut buf).await?;
    buf.truncate(n);
    Ok(buf)
}

async fn forward_tcp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(upstream).await?;
    let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    s.write_all(&len.to_be_bytes()).await?;
    s.write_all(query).await?;
    let n = s.read_u16().await?;
    let mut buf = vec![0u8; usize::from(n)];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

impl Handler {
    async fn forward(&self, request: &Request) -> Option<Message> {
        let tcp = request.protocol() == hickory_server::net::xfer::Protocol::Tcp;
        for up in self.upstreams.iter() {
            let fut = async {
                if tcp {
                    forward_tcp(*up, request.as_slice()).await
                } else {
                    forward_udp(*up, request.as_slice()).await
                }
            };
            match tokio::time::timeout(FORWARD_TIMEOUT, fut).await {
                Ok(Ok(bytes)) => match Message::from_vec(&bytes) {
                    Ok(m) => return Some(m),
                    Err(err) => tracing::debug!(%up, ?err, "undecodable answer from upstream"),
                },
                Ok(Err(err)) => tracing::debug!(%up, ?err, "upstream failed"),
                Err(_) => tracing::debug!(%up, "upstream timed out"),
            }
        }
        None
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let fail = |code| {
            let mut m = Metadata::response_from_request(&request.metadata);
            m.response_code = code;
            ResponseInfo::from(hickory_proto::op::Header {
                metadata: m,
                counts: Default::default(),
            })
        };
        let builder = MessageResponseBuilder::from_message_request(request);
        let Ok(info) = request.request_info() else {
            let msg = builder.error_msg(&request.metadata, ResponseCode::FormErr);
            return response
                .send_response(msg)
                .await
                .unwrap_or_else(|_| fail(ResponseCode::ServFail));
        };
        if request.metadata.op_code != OpCode::Query
            || request.metadata.message_type != MessageType::Query
        {
            let msg = builder.error_msg(&request.metadata, ResponseCode::NotImp);
            return response
                .send_response(msg)
                .await
                .unwrap_or_else(|_| fail(ResponseCode::ServFail));
        }
        let name = info.query.name().to_string();
        let qtype = info.query.query_type();
        let local = match info.src.ip() {
            IpAddr::V4(src) => self
                .table
                .read()
                .map(|t| t.lookup(src, &name))
                .unwrap_or(None),
            IpAddr::V6(_) => None,
        };
        let mut meta = Metadata::response_from_request(&request.metadata);
        meta.recursion_available = true;
        if let Some(addrs) = local {
            meta.authoritative = true;
            let owner = info.query.original().name().clone();
            let records: Vec<Record> = if matches!(qtype, RecordType::A | RecordType::ANY) {
                addrs
                    .iter()
                    .map(|ip| Record::from_rdata(owner.clone(), TTL, RData::A(A(*ip))))
                    .collect()
            } else {
                Vec::new()
            };
            let msg = builder.build(meta, records.iter(), [].iter(), [].iter(), [].iter());
            return response
                .send_response(msg)
                .await
                .unwrap_or_else(|_| fail(ResponseCode::ServFail));
        }
        match self.forward(request).await {
            Some(up) => {
                meta.response_code = up.metadata.response_code;
                meta.truncation = up.metadata.truncation;
                meta.authentic_data = up.metadata.authentic_data;
                let msg = builder.build(
                    meta,
                    up.answers.iter(),
                    up.authorities.iter(),
                    [].iter(),
                    up.additionals.iter(),
                );
                response
                    .send_response(msg)
                    .await
                    .unwrap_or_else(|_| fail(ResponseCode::ServFail))
            }
            None => {
                let msg = builder.error_msg(&request.metadata, ResponseCode::ServFail);
                response
                    .send_response(msg)
                    .await
                    .unwrap_or_else(|_| fail(ResponseCode::ServFail))
            }
        }
    }
}

/// The DNS of one node: its names and its listeners.
pub struct Dns {
    ns: Option<PathBuf>,
    port: u16,
    handler: Handler,
    servers: tokio::sync::Mutex<BTreeMap<Ipv4Addr, Server<Handler>>>,
    keeper: Option<keeper::Keeper>,
    /// Sockets the keeper held when this DNS first listened, not yet taken up.
    inherited: tokio::sync::Mutex<Option<Vec<keeper::KeptSocket>>>,
}

/// A gateway's UDP socket and TCP listener, bound or inherited.
type Sockets = (std::net::UdpSocket, std::net::TcpListener);

impl Dns {
    /// `ns`: the node's namespace (listeners are bound there); `port`: 53 except in
    /// tests; `upstreams`: where other names go.
    pub fn new(ns: Option<PathBuf>, port: u16, upstreams: Vec<SocketAddr>) -> Self {
        Self {
            ns,
            port,
            handler: Handler {
                table: Arc::new(RwLock::new(DnsTable::default())),
                upstreams: Arc::new(upstreams),
            },
            servers: tokio::sync::Mutex::new(BTreeMap::new()),
            keeper: None,
            inherited: tokio::sync::Mutex::new(None),
        }
    }

    /// Keeps the sockets open across restarts through the keeper at `keeper`.
    pub fn with_keeper(mut self, keeper: keeper::Keeper) -> Self {
        self.keeper = Some(keeper);
        self
    }

    /// Runs a blocking keeper call off the async threads; failures are logged, never
    /// fatal: without the keeper the DNS still works, only restarts show a gap.
    async fn ask_keeper<T: Send + 'static>(
        &self,
        what: &'static str,
        call: impl FnOnce(&keeper::Keeper) -> Result<T, keeper::KeeperError> + Send + 'static,
    ) -> Option<T> {
        let k = self.keeper.clone()?;
        let result = match tokio::task::spawn_blocking(move || call(&k)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        result
            .inspect_err(|err| tracing::warn!(%err, "DNS socket keeper: {what}"))
            .ok()
    }

    /// Makes the keeper close its copies of the sockets on `addr`.
    async fn forget(&self, addr: SocketAddr) {
        self.ask_keeper("forgetting a socket", move |k| k.forget(addr))
            .await;
    }

    /// The gateway's sockets the previous agent left with the keeper, if both are there.
    async fn take_inherited(&self, addr: SocketAddr) -> Option<Sockets> {
        let mut inherited = self.inherited.lock().await;
        if inherited.is_none() {
            *inherited = Some(
                self.ask_keeper("taking sockets back", |k| k.sockets())
                    .await
                    .unwrap_or_default(),
            );
        }
        let kept = inherited.as_mut()?;
        let mut take = |proto| {
            let i = kept
                .iter()
                .position(|k| k.addr == addr && k.proto == proto)?;
            Some(kept.swap_remove(i).fd)
        };
        let (udp, tcp) = (take(keeper::Proto::Udp), take(keeper::Proto::Tcp));
        let udp = std::net::UdpSocket::from(udp?);
        let tcp = std::net::TcpListener::from(tcp?);
        if udp.set_nonblocking(true).is_err() || tcp.set_nonblocking(true).is_err() {
            return None;
        }
        Some((udp, tcp))
    }

    /// Tells the keeper to let go of the inherited sockets no network wants any more.
    async fn forget_unwanted(&self) {
        let leftovers: Vec<SocketAddr> = {
            let mut inherited = self.inherited.lock().await;
            let Some(kept) = inherited.as_mut() else {
                return;
            };
            kept.drain(..).map(|k| k.addr).collect()
        };
        for addr in leftovers {
            self.forget(addr).await;
        }
    }

    /// Binds a gateway's sockets in the calling thread's namespace.
    fn bind(addr: SocketAddr) -> Result<Sockets, DnsError> {
        let failed = |proto| move |err| DnsError::Bind { proto, addr, err };
        let udp = std::net::UdpSocket::bind(addr).map_err(failed("udp"))?;
        let tcp = std::net::TcpListener::bind(addr).map_err(failed("tcp"))?;
        udp.set_nonblocking(true).map_err(failed("socket"))?;
        tcp.set_nonblocking(true).map_err(failed("socket"))?;
        Ok((udp, tcp))
    }

    /// A gateway's sockets: the predecessor's, taken back from the keeper, or bound
    /// here (in the node's namespace) and handed to the keeper.
    async fn sockets_for(&self, addr: SocketAddr) -> Result<Sockets, DnsError> {
        if let Some(sockets) = self.take_inherited(addr).await {
            tracing::info!(%addr, "embedded DNS sockets taken back from the keeper");
            return Ok(sockets);
        }
        let ns = self.ns.as_deref();
        let bind = || netns::run_in_async(ns, move || Self::bind(addr));
        let sockets = match bind().await? {
            // The keeper may still hold this address for a predecessor whose sockets
            // could not be handed over: let it go and bind again.
            Err(DnsError::Bind { err, .. })
                if err.kind() == std::io::ErrorKind::AddrInUse && self.keeper.is_some() =>
            {
                tracing::warn!(%addr, "DNS address held elsewhere; asking the keeper to let go");
                self.forget(addr).await;
                bind().await??
            }
            other => other?,
        };
        if self.keeper.is_some()
            && let (Ok(udp), Ok(tcp)) = (sockets.0.try_clone(), sockets.1.try_clone())
        {
            self.ask_keeper("keeping sockets", move |k| {
                k.keep(keeper::Proto::Udp, addr, udp.as_fd())?;
                k.keep(keeper::Proto::Tcp, addr, tcp.as_fd())
            })
            .await;
        }
        Ok(sockets)
    }

    pub fn set_table(&self, table: DnsTable) {
        match self.handler.table.write() {
            Ok(mut t) => *t = table,
            Err(poisoned) => *poisoned.into_inner() = table,
        }
    }

    /// Listens on exactly `addrs` (the gateways of this node's networks).
    pub async fn listen_on(&self, addrs: &[Ipv4Addr]) -> Result<(), DnsError> {
        let mut servers = self.servers.lock().await;
        let stale: Vec<Ipv4Addr> = servers
            .keys()
            .filter(|a| !addrs.contains(a))
            .copied()
            .collect();
        for a in stale {
            if let Some(mut s) = servers.remove(&a) {
                let _ = s.shutdown_gracefully().await;
            }
            self.forget(SocketAddr::new(IpAddr::V4(a), self.port)).await;
        }
        for &a in addrs {
            if servers.contains_key(&a) {
                continue;
            }
            let addr = SocketAddr::new(IpAddr::V4(a), self.port);
            let (udp, tcp) = self.sockets_for(addr).await?;
            let bind_err = |proto, err| DnsError::Bind { proto, addr, err };
            let udp = tokio::net::UdpSocket::from_std(udp).map_err(|e| bind_err("udp", e))?;
            let tcp = tokio::net::TcpListener::from_std(tcp).map_err(|e| bind_err("tcp", e))?;
            let mut server = Server::new(self.handler.clone());
            server.register_socket(udp);
            server.register_listener(tcp, Duration::from_secs(10), 65535);
            tracing::info!(%addr, "embedded DNS listening");
            servers.insert(a, server);
        }
        self.forget_unwanted().await;
        Ok(())
    }

    /// Stops every listener (and the keeper's copies).
    pub async fn stop(&self) {
        let _ = self.listen_on(&[]).await;
    }

    /// Stops every listener and the keeper itself (the node leaves).
    pub async fn shut_down(&self) {
        self.stop().await;
        self.ask_keeper("stopping", |k| k.quit()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    use skiff_daemon::test_ports::free_port;

    /// A keeper serving in a thread of this process, for as long as the dir lives.
    fn keeper() -> (tempfile::TempDir, keeper::Keeper) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keeper.sock");
        let serving = path.clone();
        std::thread::spawn(move || keeper::serve(&serving));
        let k = keeper::Keeper::new(&path);
        for _ in 0..200 {
            if k.is_running() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(k.is_running());
        (dir, k)
    }

    fn query(id: u16) -> Vec<u8> {
        let mut msg = Message::query();
        msg.metadata.id = id;
        msg.add_query(Query::query(
            Name::from_ascii("web.").expect("name"),
            RecordType::A,
        ));
        msg.to_vec().expect("encode")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_query_sent_between_two_agents_is_answered_by_the_second() {
        let (_dir, k) = keeper();
        let port = free_port();
        let gw = Ipv4Addr::LOCALHOST;
        let first = Dns::new(None, port, vec![]).with_keeper(k.clone());
        first.listen_on(&[gw]).await.expect("listen");
        assert_eq!(k.sockets().expect("held").len(), 2, "udp and tcp kept");
        drop(first);
        tokio::time::sleep(Duration::from_millis(100)).await;

        // No DNS in this process now; the query waits in the kept socket.
        let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("client");
        client
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        client
            .send_to(&query(4242), (gw, port))
            .expect("send while no DNS runs");

        let second = Dns::new(None, port, vec![]).with_keeper(k.clone());
        second.listen_on(&[gw]).await.expect("listen again");
        let mut buf = [0u8; 512];
        let (n, _) = client
            .recv_from(&mut buf)
            .expect("an answer, not a refusal");
        let answer = Message::from_vec(&buf[..n]).expect("decode");
        assert_eq!(answer.metadata.id, 4242);
        second.shut_down().await;
        assert!(!k.is_running(), "shut_down stops the keeper");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_address_the_keeper_holds_in_vain_is_taken_over() {
        let (_dir, k) = keeper();
        let port = free_port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        // Only half of a predecessor's pair reached the keeper: nothing to take back,
        // and the address is busy.
        let stray = std::net::UdpSocket::bind(addr).expect("stray");
        k.keep(keeper::Proto::Udp, addr, stray.as_fd())
            .expect("keep");
        drop(stray);
        let dns = Dns::new(None, port, vec![]).with_keeper(k.clone());
        dns.listen_on(&[Ipv4Addr::LOCALHOST])
            .await
            .expect("the keeper lets go and the DNS binds");
        let held = k.sockets().expect("held");
        assert_eq!(held.len(), 2, "the new pair is kept: {held:?}");
        dns.shut_down().await;
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# comment\nsearch example\nnameserver 10.9.8.7\nnameserver fe80::1%eth0\nnameserver bogus\noptions edns0\n";
        let got = parse_resolv_conf(text);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], "10.9.8.7:53".parse().expect("addr"));
        assert!(
            container_resolv_conf(Ipv4Addr::new(10, 213, 1, 1)).contains("nameserver 10.213.1.1\n")
        );
    }
}
