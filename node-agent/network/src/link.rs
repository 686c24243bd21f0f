//! Thin netlink shell over rtnetlink: links, addresses, routes, neighbour and FDB
//! entries, in whatever namespace the handle's socket was opened in. No policy here:
//! `overlay` and `attach` decide what should exist.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use futures::TryStreamExt;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
    NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::RouteType;
use rtnetlink::packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcAttribute, TcBpfFlags, TcFilterBpf, TcFilterBpfOption,
    TcFilterU32, TcFilterU32Option, TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption,
    TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth, LinkVxlan,
    RouteMessageBuilder,
};

/// tc priority of skiff's filters: on a VXLAN device the redirects on its ingress and
/// the flow hash program on its egress; on a task veth's host end the send shortcut.
pub const REDIRECT_PRIORITY: u16 = 16;

/// Where on a device a tc program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcHook {
    Ingress,
    Egress,
}

/// A tc filter header's `info` for a filter of skiff at [`REDIRECT_PRIORITY`] matching
/// `protocol` (an `ETH_P_*`): the priority in the upper half, the protocol in network
/// byte order below.
fn filter_info(protocol: libc::c_int) -> u32 {
    (u32::from(REDIRECT_PRIORITY) << 16) | u32::from((protocol as u16).to_be())
}

/// A netlink request that failed.
#[derive(Debug, thiserror::Error)]
#[error("netlink: {op} {what}: {err}")]
pub struct LinkError {
    pub op: &'static str,
    pub what: String,
    pub err: rtnetlink::Error,
}

impl LinkError {
    /// The errno the kernel answered with, if it answered with one.
    pub fn errno(&self) -> Option<i32> {
        match &self.err {
            rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, LinkError>;

fn fail(op: &'static str, what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let what = what.into();
    move |err| LinkError { op, what, err }
}

/// What skiff reads back about a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub controller: Option<u32>,
    pub alias: Option<String>,
    pub mtu: u32,
    pub up: bool,
    /// VNI, local address and UDP port of a VXLAN device.
    pub vxlan: Option<(u32, Option<Ipv4Addr>, u16)>,
    /// How many transmit and receive queues the device was made with.
    pub queues: (u32, u32),
}

fn parse_link(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        kind: None,
        controller: None,
        alias: None,
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        vxlan: None,
        queues: (0, 0),
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name.clone_from(n),
            LinkAttribute::IfAlias(a) => link.alias = Some(a.clone()),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Controller(c) => link.controller = Some(*c),
            LinkAttribute::NumTxQueues(n) => link.queues.0 = *n,
            LinkAttribute::NumRxQueues(n) => link.queues.1 = *n,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(vx)) => {
                            let (mut vni, mut local, mut port) = (0, None, 0);
                            for v in vx {
                                match v {
                                    InfoVxlan::Id(i) => vni = *i,
                                    InfoVxlan::Local(l) => local = Some(*l),
                                    InfoVxlan::Port(p) => port = *p,
                                    _ => {}
                                }
                            }
                            link.vxlan = Some((vni, local, port));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// The host end of a task's veth pair (see [`Links::add_veth_into`]).
#[derive(Clone, Copy, Debug)]
pub struct VethHost<'a> {
    pub name: &'a str,
    /// Index of the bridge it becomes a port of.
    pub bridge: u32,
    pub mtu: u32,
}

/// The task end of a veth pair, made inside the task's namespace.
#[derive(Clone, Copy, Debug)]
pub struct VethPeer<'a> {
    pub name: &'a str,
    pub mac: [u8; 6],
    pub ns_fd: std::os::fd::RawFd,
}

/// A VXLAN forwarding entry: frames for `mac` go to the VTEP `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    pub dst: Ipv4Addr,
}

/// A permanent IPv4 neighbour entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    pub mac: [u8; 6],
}

fn mac6(v: &[u8]) -> Option<[u8; 6]> {
    v.try_into().ok()
}

/// Netlink operations on one namespace.
#[derive(Clone)]
pub struct Links {
    handle: Handle,
}

impl Links {
    pub fn new(handle: Handle) -> Self {
        Self { handle }
    }

    pub async fn list(&self) -> Result<Vec<Link>> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(fail("dump", "links"))?;
        Ok(msgs.iter().map(parse_link).collect())
    }

    pub async fn by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut stream = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match stream.try_next().await {
            Ok(Some(msg)) => Ok(Some(parse_link(&msg))),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code().abs() == libc::ENODEV => {
                Ok(None)
            }
            Err(err) => Err(LinkError {
                op: "get link",
                what: name.to_owned(),
                err,
            }),
        }
    }

    pub async fn require(&self, name: &str) -> Result<Link> {
        self.by_name(name).await?.ok_or_else(|| LinkError {
            op: "get link",
            what: name.to_owned(),
            err: rtnetlink::Error::RequestFailed,
        })
    }

    async fn add(&self, msg: LinkMessage, what: &str) -> Result<()> {
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(fail("add link", what))
    }

    async fn set(&self, msg: LinkMessage, what: &str) -> Result<()> {
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(fail("set link", what))
    }

    /// Deletes a link; one that is already gone is fine.
    pub async fn delete(&self, link: &Link) -> Result<()> {
        match self.handle.link().del(link.index).execute().await {
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code().abs() == libc::ENODEV => Ok(()),
            other => other.map_err(fail("delete link", link.name.clone())),
        }
    }

    pub async fn add_bridge(&self, name: &str, mac: [u8; 6], mtu: u32, alias: &str) -> Result<()> {
        let msg = LinkBridge::new(name)
            .mcast_snooping(false)
            .address(mac.to_vec())
            .mtu(mtu)
            .build();
        self.add(msg, name).await?;
        self.alias_new(name, alias).await
    }

    /// Sets the alias of a link just made: the kernel ignores `IFLA_IFALIAS` in a
    /// create request.
    async fn alias_new(&self, name: &str, alias: &str) -> Result<()> {
        let link = self.require(name).await?;
        self.set_alias(&link, alias).await
    }

    pub async fn add_vxlan(
        &self,
        name: &str,
        vni: u32,
        local: Ipv4Addr,
        port: u16,
        mtu: u32,
        alias: &str,
    ) -> Result<()> {
        let msg = LinkVxlan::new(name, vni)
            .local(local)
            .port(port)
            .learning(false)
            .mtu(mtu)
            .build();
        self.add(msg, name).await?;
        self.alias_new(name, alias).await
    }

    /// A veth pair whose both ends start in this namespace.
    pub async fn add_veth(&self, name: &str, peer: &str, mtu: u32) -> Result<()> {
        let msg = LinkVeth::new(name, peer).mtu(mtu).build();
        self.add(msg, name).await
    }

    pub async fn set_up(&self, link: &Link) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(link.index).up().build(),
            &link.name,
        )
        .await
    }

    pub async fn set_alias(&self, link: &Link, alias: &str) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(link.index).alias(alias).build(),
            &link.name,
        )
        .await
    }

    pub async fn set_mtu(&self, link: &Link, mtu: u32) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(link.index).mtu(mtu).build(),
            &link.name,
        )
        .await
    }

    pub async fn set_controller(&self, link: &Link, bridge: u32) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(link.index)
                .controller(bridge)
                .build(),
            &link.name,
        )
        .await
    }

    /// Sets the bridge-port options of the VXLAN port: ARP/ND suppression, so that ARP
    /// for the gateway (the same address on every node) and for tasks whose neighbour
    /// entries are known never crosses the overlay.
    pub async fn set_vxlan_port_options(&self, link: &Link) -> Result<()> {
        let msg = LinkBridgePort::new(link.index).neigh_suppress(true).build();
        self.handle
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(fail("set bridge port", link.name.clone()))
    }

    /// A veth pair made in one request: `host` here, up, a port of bridge `bridge`
    /// (its alias is set afterwards: the kernel ignores one given at creation); its peer
    /// `peer` made directly in the namespace open at `ns_fd` with `peer_mac`, down (the
    /// kernel opens the peer before the pair is joined, and veth refuses that with
    /// ENOTCONN: set it up afterwards).
    ///
    /// No step waits for an RCU grace period under the rtnl lock, where a hundred tasks
    /// set up at once would queue behind each other: nothing moves between namespaces
    /// afterwards, and both ends are made with one transmit and one receive queue. Left
    /// unsaid, veth allocates one queue per possible CPU and then cuts the device down
    /// to one in use (`veth_init_queues`), and that cut waits for an expedited grace
    /// period (`synchronize_net`), once per end: 100 pairs made with the counts given
    /// spent 45 % less time in `rtnl_newlink` (perf, this 2-vCPU VM).
    pub async fn add_veth_into(&self, host: VethHost<'_>, peer: VethPeer<'_>) -> Result<()> {
        let peer_msg = LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.name.to_owned())
            .mtu(host.mtu)
            .address(peer.mac.to_vec())
            .setns_by_fd(peer.ns_fd)
            .append_extra_attribute(LinkAttribute::NumTxQueues(1))
            .append_extra_attribute(LinkAttribute::NumRxQueues(1))
            .build();
        let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.name.to_owned())
            .mtu(host.mtu)
            .controller(host.bridge)
            .append_extra_attribute(LinkAttribute::NumTxQueues(1))
            .append_extra_attribute(LinkAttribute::NumRxQueues(1))
            .up()
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.add(msg, host.name).await
    }

    /// Moves a link into the namespace open at `fd`.
    pub async fn move_to_netns(&self, link: &Link, fd: std::os::fd::RawFd) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(link.index)
                .setns_by_fd(fd)
                .build(),
            &link.name,
        )
        .await
    }

    pub async fn rename_and_set(&self, link: &Link, name: &str, mac: [u8; 6]) -> Result<()> {
        self.set(
            LinkUnspec::new_with_index(link.index)
                .name(name.to_owned())
                .address(mac.to_vec())
                .build(),
            &link.name,
        )
        .await
    }

    pub async fn addresses(&self, link: &Link) -> Result<Vec<(Ipv4Addr, u8)>> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute()
            .try_collect()
            .await
            .map_err(fail("dump addresses of", link.name.clone()))?;
        let mut out = Vec::new();
        for m in msgs {
            for a in &m.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                    out.push((*ip, m.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// Makes `ip/prefix` the link's only IPv4 address.
    pub async fn ensure_address(&self, link: &Link, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        let have = self.addresses(link).await?;
        if have == [(ip, prefix)] {
            return Ok(());
        }
        let what = format!("{ip}/{prefix} on {}", link.name);
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .execute()
            .try_collect()
            .await
            .map_err(fail("dump addresses of", link.name.clone()))?;
        for m in msgs {
            let v4 = m.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(x)) if (*x, m.header.prefix_len) != (ip, prefix)));
            if v4 {
                self.handle
                    .address()
                    .del(m)
                    .execute()
                    .await
                    .map_err(fail("delete address", what.clone()))?;
            }
        }
        if !have.contains(&(ip, prefix)) {
            self.handle
                .address()
                .add(link.index, IpAddr::V4(ip), prefix)
                .execute()
                .await
                .map_err(fail("add address", what))?;
        }
        Ok(())
    }

    pub async fn add_default_route(&self, gateway: Ipv4Addr) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .build();
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(fail("add default route via", gateway.to_string()))
    }

    /// VXLAN forwarding entries of a device (those with a remote VTEP).
    pub async fn fdb(&self, link: &Link) -> Result<Vec<FdbEntry>> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(fail("dump fdb of", link.name.clone()))?;
        let mut out = Vec::new();
        for m in msgs.iter().filter(|m| m.header.ifindex == link.index) {
            let mut mac = None;
            let mut dst = None;
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::LinkLayerAddress(l) => mac = mac6(l),
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => dst = Some(*ip),
                    // AF_BRIDGE dumps carry NDA_DST unparsed.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        dst = <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from);
                    }
                    _ => {}
                }
            }
            if let (Some(mac), Some(dst)) = (mac, dst) {
                out.push(FdbEntry { mac, dst });
            }
        }
        Ok(out)
    }

    fn fdb_message(link: &Link, e: FdbEntry) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Bridge;
        m.header.ifindex = link.index;
        m.header.state = NeighbourState::Permanent;
        m.header.flags = NeighbourFlags::Own;
        m.header.kind = RouteType::Unspec;
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(e.mac.to_vec()));
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                e.dst,
            )));
        m
    }

    /// Gives `link` a fresh `clsact` qdisc (tc hooks on ingress and egress): an old
    /// `clsact` or `ingress` qdisc goes, with every filter on it.
    pub async fn reset_clsact(&self, link: &Link) -> Result<()> {
        let mut del = TcMessage::with_index(link.index as i32);
        del.header.parent = TcHandle::INGRESS;
        del.header.handle = TcHandle::from(0xffff_0000);
        let gone = self
            .ack_request(
                RouteNetlinkMessage::DelQueueDiscipline(del),
                0,
                "delete ingress qdisc",
                &link.name,
            )
            .await;
        match gone {
            Err(e) if matches!(e.errno(), Some(libc::ENOENT | libc::EINVAL)) => {}
            other => other?,
        }
        self.ensure_clsact(link).await
    }

    /// Gives `link` a `clsact` qdisc unless it has one (its filters stay).
    pub async fn ensure_clsact(&self, link: &Link) -> Result<()> {
        let mut add = TcMessage::with_index(link.index as i32);
        add.header.parent = TcHandle::INGRESS;
        add.header.handle = TcHandle::from(0xffff_0000);
        add.attributes.push(TcAttribute::Kind("clsact".into()));
        match self
            .ack_request(
                RouteNetlinkMessage::NewQueueDiscipline(add),
                NLM_F_CREATE | NLM_F_EXCL,
                "add clsact qdisc",
                &link.name,
            )
            .await
        {
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// Puts the eBPF program `prog` (a loaded `SCHED_CLS` program's fd, see `bpf.rs`)
    /// on `link`'s `hook` as a direct-action `bpf` filter, replacing skiff's filter
    /// there. Needs a `clsact` qdisc ([`Self::reset_clsact`], [`Self::ensure_clsact`]).
    pub async fn set_program(
        &self,
        link: &Link,
        hook: TcHook,
        prog: BorrowedFd<'_>,
        name: &str,
    ) -> Result<()> {
        let mut msg = TcMessage::with_index(link.index as i32);
        msg.header.parent = TcHandle {
            major: 0xffff,
            minor: match hook {
                TcHook::Ingress => TcHandle::MIN_INGRESS,
                TcHook::Egress => TcHandle::MIN_EGRESS,
            },
        };
        msg.header.handle = TcHandle::from(1);
        msg.header.info = filter_info(libc::ETH_P_ALL);
        msg.attributes
            .push(TcAttribute::Kind(TcFilterBpf::KIND.into()));
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(prog.as_raw_fd() as u32)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(name.into())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]));
        // The fd must stay open until the kernel has taken its reference.
        self.ack_request(
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            "set tc program",
            &format!("{name} on {} {hook:?}", link.name),
        )
        .await
    }

    /// Adds or replaces the ingress filter `node` (1..=0xfff) on `link`: IPv4 packets
    /// for `dst` leave through the device with index `target` (tc u32 + mirred egress
    /// redirect), skipping whatever `link` is enslaved to. Needs [`Self::reset_clsact`]
    /// first (the filters live in hash table 800: of a fresh qdisc).
    pub async fn set_redirect(
        &self,
        link: &Link,
        node: u32,
        dst: Ipv4Addr,
        target: u32,
    ) -> Result<()> {
        let mut msg = Self::u32_filter(link, node);
        let mut key = TcU32Key::default();
        key.mask = u32::MAX;
        key.val = u32::from(dst);
        key.off = 16; // the destination address in the IPv4 header
        let mut selector = TcU32Selector::default();
        selector.flags = TcU32SelectorFlags::Terminal;
        selector.nkeys = 1;
        selector.keys = vec![key];
        let mut mirror = TcMirror::default();
        mirror.generic = TcActionGeneric::default();
        mirror.generic.action = TcActionType::Stolen;
        mirror.eaction = TcMirrorActionType::EgressRedir;
        mirror.ifindex = target;
        let mut action = TcAction::default();
        action.attributes = vec![
            TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror,
            ))]),
        ];
        msg.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]));
        self.ack_request(
            RouteNetlinkMessage::NewTrafficFilter(msg),
            NLM_F_CREATE,
            "set redirect filter",
            &format!("{dst} → ifindex {target} on {}", link.name),
        )
        .await
    }

    /// Deletes the ingress filter `node` from `link` (missing is fine).
    pub async fn delete_redirect(&self, link: &Link, node: u32) -> Result<()> {
        let msg = Self::u32_filter(link, node);
        match self
            .ack_request(
                RouteNetlinkMessage::DelTrafficFilter(msg),
                0,
                "delete redirect filter",
                &format!("{node:#x} on {}", link.name),
            )
            .await
        {
            Err(e) if matches!(e.errno(), Some(libc::ENOENT | libc::EINVAL)) => Ok(()),
            other => other,
        }
    }

    /// The node ids of the redirect filters on `link`'s ingress, sorted.
    pub async fn redirect_nodes(&self, link: &Link) -> Result<Vec<u32>> {
        let msgs: Vec<TcMessage> = self
            .handle
            .traffic_filter(link.index as i32)
            .get()
            .ingress()
            .execute()
            .try_collect()
            .await
            .map_err(fail("list filters", link.name.clone()))?;
        let mut nodes: Vec<u32> = msgs
            .iter()
            .map(|m| u32::from(m.header.handle))
            .filter(|h| h & 0xfff != 0)
            .map(|h| h & 0xfff)
            .collect();
        nodes.sort_unstable();
        Ok(nodes)
    }

    /// The u32 filter `800::<node>` at [`REDIRECT_PRIORITY`], IPv4, on `link`'s ingress.
    fn u32_filter(link: &Link, node: u32) -> TcMessage {
        let mut msg = TcMessage::with_index(link.index as i32);
        msg.header.parent = TcHandle {
            major: 0xffff,
            minor: TcHandle::MIN_INGRESS,
        };
        msg.header.handle = TcHandle::from(0x8000_0000 | (node & 0xfff));
        msg.header.info = filter_info(libc::ETH_P_IP);
        msg.attributes
            .push(TcAttribute::Kind(TcFilterU32::KIND.into()));
        msg
    }

    /// Sends one request and waits for the kernel's acknowledgement (for messages
    /// rtnetlink's builders do not make).
    async fn ack_request(
        &self,
        body: RouteNetlinkMessage,
        flags: u16,
        op: &'static str,
        what: &str,
    ) -> Result<()> {
        let mut req = NetlinkMessage::from(body);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut handle = self.handle.clone();
        let mut resp = handle.request(req).map_err(fail(op, what))?;
        while let Some(msg) = futures::StreamExt::next(&mut resp).await {
            if let NetlinkPayload::Error(err) = msg.payload {
                return Err(LinkError {
                    op,
                    what: what.to_owned(),
                    err: rtnetlink::Error::NetlinkError(err),
                });
            }
        }
        Ok(())
    }

    /// `bridge fdb append <mac> dev <vxlan> dst <ip>`: append, because the all-zero MAC
    /// has one entry per peer (head-end replication of broadcast and unknown frames).
    pub async fn fdb_append(&self, link: &Link, e: FdbEntry) -> Result<()> {
        let what = format!(
            "{} dst {} on {}",
            crate::names::format_mac(&e.mac),
            e.dst,
            link.name
        );
        match self
            .ack_request(
                RouteNetlinkMessage::NewNeighbour(Self::fdb_message(link, e)),
                NLM_F_CREATE | NLM_F_APPEND,
                "append fdb",
                &what,
            )
            .await
        {
            Err(err) if err.errno() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    pub async fn fdb_delete(&self, link: &Link, e: FdbEntry) -> Result<()> {
        let what = format!(
            "{} dst {} on {}",
            crate::names::format_mac(&e.mac),
            e.dst,
            link.name
        );
        match self
            .handle
            .neighbours()
            .del(Self::fdb_message(link, e))
            .execute()
            .await
        {
            Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code().abs() == libc::ENOENT => Ok(()),
            other => other.map_err(fail("delete fdb", what)),
        }
    }

    /// Permanent IPv4 neighbour entries on a link (the ones skiff programs; entries the
    /// kernel learnt by ARP are never permanent).
    pub async fn permanent_neighbours(&self, link: &Link) -> Result<Vec<Neighbour>> {
        let msgs: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute()
            .try_collect()
            .await
            .map_err(fail("dump neighbours of", link.name.clone()))?;
        let mut out = Vec::new();
        for m in msgs.iter().filter(|m| {
            m.header.ifindex == link.index && m.header.state == NeighbourState::Permanent
        }) {
            let mut mac = None;
            let mut ip = None;
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::LinkLayerAddress(l) => mac = mac6(l),
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(i)) => ip = Some(*i),
                    _ => {}
                }
            }
            if let (Some(mac), Some(ip)) = (mac, ip) {
                out.push(Neighbour { ip, mac });
            }
        }
        Ok(out)
    }

    pub async fn neighbour_replace(&self, link: &Link, n: Neighbour) -> Result<()> {
        self.handle
            .neighbours()
            .add(link.index, IpAddr::V4(n.ip))
            .link_layer_address(&n.mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(fail(
                "replace neighbour",
                format!("{} on {}", n.ip, link.name),
            ))
    }

    pub async fn neighbour_delete(&self, link: &Link, n: Neighbour) -> Result<()> {
        let mut m = NeighbourMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.ifindex = link.index;
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
                n.ip,
            )));
        match self.handle.neighbours().del(m).execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENOENT => Ok(()),
            other => other.map_err(fail(
                "delete neighbour",
                format!("{} on {}", n.ip, link.name),
            )),
        }
    }

    /// The link holding `ip`, for the underlay MTU.
    pub async fn link_with_address(&self, ip: Ipv4Addr) -> Result<Option<Link>> {
        for link in self.list().await? {
            if self.addresses(&link).await?.iter().any(|(a, _)| *a == ip) {
                return Ok(Some(link));
            }
        }
        Ok(None)
    }
}

/// Kind name of a bridge as the kernel reports it.
pub fn is_kind(link: &Link, kind: InfoKind) -> bool {
    link.kind.as_deref() == Some(kind.to_string().as_str())
}
