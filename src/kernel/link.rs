//! Links: dump/get, VXLAN creation, delete, up, MTU.

use super::{errno_of, ignore_errnos, nl_error, Kernel, KernelError, LinkInfo, VxlanInfo, VxlanSpec};
use crate::mac::Mac;
use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage, State,
};
use rtnetlink::{LinkUnspec, LinkVxlan};

impl Kernel {
    /// All links in the namespace (one dump).
    pub async fn links(&self) -> Result<Vec<LinkInfo>, KernelError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_error("dump links", "all", e))?;
        Ok(msgs.iter().map(parse_link).collect())
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, KernelError> {
        let req = self.handle.link().get().match_name(name);
        first_link(req.execute(), name).await
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>, KernelError> {
        let req = self.handle.link().get().match_index(index);
        first_link(req.execute(), index).await
    }

    /// `ip link add NAME mtu MTU type vxlan id VNI local LOCAL dev LINK dstport PORT [no]learning
    /// [gbp]`, then reads the device back. Fails with EEXIST if the name is taken: whether an
    /// existing device is good enough is the caller's decision.
    pub async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<LinkInfo, KernelError> {
        let mut builder = LinkVxlan::new(&spec.name, spec.vni)
            .local(spec.local)
            .dev(spec.link)
            .port(spec.port)
            .learning(spec.learning)
            .mtu(spec.mtu);
        if spec.gbp {
            builder = builder.gbp();
        }
        let object = format!("vxlan {} id {} dev {}", spec.name, spec.vni, spec.link);
        self.handle
            .link()
            .add(builder.build())
            .execute()
            .await
            .map_err(|e| nl_error("add link", &object, e))?;
        self.link_by_name(&spec.name)
            .await?
            .ok_or_else(|| KernelError::NoSuchLink(spec.name.clone()))
    }

    /// Deletes a link; a link that is already gone is success.
    pub async fn delete_link(&self, index: u32) -> Result<(), KernelError> {
        let res = self.handle.link().del(index).execute().await;
        ignore_errnos(res, &[libc::ENODEV], "delete link", index)
    }

    pub async fn set_up(&self, index: u32) -> Result<(), KernelError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.set_link(msg, "set link up", index).await
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), KernelError> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.set_link(msg, "set link mtu", index).await
    }

    async fn set_link(&self, msg: LinkMessage, op: &'static str, index: u32) -> Result<(), KernelError> {
        match self.handle.link().set(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Err(KernelError::NoSuchLink(index.to_string())),
            Err(e) => Err(nl_error(op, index, e)),
        }
    }
}

/// The single answer of a link get; ENODEV means "no such link", not a failure.
async fn first_link(
    stream: impl futures::Stream<Item = Result<LinkMessage, rtnetlink::Error>>,
    object: impl std::fmt::Display,
) -> Result<Option<LinkInfo>, KernelError> {
    futures::pin_mut!(stream);
    match stream.try_next().await {
        Ok(msg) => Ok(msg.as_ref().map(parse_link)),
        Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(nl_error("get link", object, e)),
    }
}

pub(super) fn parse_link(msg: &LinkMessage) -> LinkInfo {
    let flags = msg.header.flags;
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        mtu: 0,
        mac: None,
        up: flags.contains(LinkFlags::Up),
        running: flags.contains(LinkFlags::LowerUp),
        kind: None,
        vxlan: None,
        master: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => info.name = n.clone(),
            LinkAttribute::Mtu(m) => info.mtu = *m,
            LinkAttribute::Controller(m) => info.master = Some(*m),
            LinkAttribute::Address(a) => info.mac = Mac::from_slice(a),
            LinkAttribute::OperState(State::Up | State::Unknown) if info.up => info.running = true,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        NlLinkInfo::Kind(k) => info.kind = Some(k.to_string()),
                        NlLinkInfo::Data(InfoData::Vxlan(v)) => info.vxlan = Some(parse_vxlan(v)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    info
}

fn parse_vxlan(attrs: &[InfoVxlan]) -> VxlanInfo {
    // The kernel omits LINK and LOCAL when unset and sends GBP only as a flag when on.
    let mut v = VxlanInfo {
        vni: 0,
        local: None,
        link: None,
        port: 0,
        learning: false,
        gbp: false,
    };
    for a in attrs {
        match a {
            InfoVxlan::Id(id) => v.vni = *id,
            InfoVxlan::Local(ip) => v.local = Some(*ip),
            InfoVxlan::Link(l) => v.link = Some(*l),
            InfoVxlan::Port(p) => v.port = *p,
            InfoVxlan::Learning(l) => v.learning = *l,
            InfoVxlan::Gbp => v.gbp = true,
            _ => {}
        }
    }
    v
}
