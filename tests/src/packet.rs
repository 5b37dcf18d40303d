//! DHCP frames for tests: a request builder and a strict reply parser, written independently
//! of the agent's renderer so the two check each other.

use std::net::Ipv4Addr;

pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// RFC 1071 checksum over `data` (big-endian words).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn udp_checksum(src: Ipv4Addr, dst: Ipv4Addr, udp: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(12 + udp.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(udp);
    checksum(&pseudo)
}

/// A client message, with every field a test may want to get wrong.
#[derive(Clone, Debug)]
pub struct Request {
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub ip_src: Ipv4Addr,
    pub ip_dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub op: u8,
    pub htype: u8,
    pub hlen: u8,
    pub xid: u32,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 6],
    /// Options in order, END appended by `frame`.
    pub options: Vec<(u8, Vec<u8>)>,
    /// Bytes after END (clients pad to the 300-byte BOOTP minimum).
    pub pad_to: usize,
}

impl Request {
    pub fn new(mac: [u8; 6], msg_type: u8) -> Self {
        Self {
            eth_src: mac,
            eth_dst: BROADCAST_MAC,
            ip_src: Ipv4Addr::UNSPECIFIED,
            ip_dst: Ipv4Addr::BROADCAST,
            src_port: 68,
            dst_port: 67,
            op: 1,
            htype: 1,
            hlen: 6,
            xid: 0x1234_5678,
            flags: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr: mac,
            options: vec![
                (53, vec![msg_type]),
                (55, vec![1, 3, 6, 15, 26, 28, 51, 54, 58, 59, 119, 121]),
            ],
            pad_to: 300,
        }
    }

    pub fn discover(mac: [u8; 6]) -> Self {
        Self::new(mac, 1)
    }

    pub fn selecting(mac: [u8; 6], server: Ipv4Addr, requested: Ipv4Addr) -> Self {
        Self::new(mac, 3)
            .with(54, &server.octets())
            .with(50, &requested.octets())
    }

    pub fn init_reboot(mac: [u8; 6], requested: Ipv4Addr) -> Self {
        Self::new(mac, 3).with(50, &requested.octets())
    }

    /// Unicast to the server from the leased address.
    pub fn renewing(mac: [u8; 6], ciaddr: Ipv4Addr, server: Ipv4Addr, server_mac: [u8; 6]) -> Self {
        let mut r = Self::new(mac, 3);
        r.ciaddr = ciaddr;
        r.ip_src = ciaddr;
        r.ip_dst = server;
        r.eth_dst = server_mac;
        r
    }

    /// Broadcast from the leased address.
    pub fn rebinding(mac: [u8; 6], ciaddr: Ipv4Addr) -> Self {
        let mut r = Self::new(mac, 3);
        r.ciaddr = ciaddr;
        r.ip_src = ciaddr;
        r
    }

    pub fn inform(mac: [u8; 6], ciaddr: Ipv4Addr) -> Self {
        let mut r = Self::new(mac, 8);
        r.ciaddr = ciaddr;
        r.ip_src = ciaddr;
        r
    }

    pub fn with(mut self, code: u8, value: &[u8]) -> Self {
        self.options.push((code, value.to_vec()));
        self
    }

    pub fn broadcast(mut self) -> Self {
        self.flags |= 0x8000;
        self
    }

    /// A network boot client of architecture `arch` (option 93, RFC 4578), asking for the
    /// boot options 66 and 67 when `ask`.
    pub fn pxe(mut self, arch: u16, ask: bool) -> Self {
        if ask && let Some((_, prl)) = self.options.iter_mut().find(|(c, _)| *c == 55) {
            prl.extend_from_slice(&[66, 67]);
        }
        self.with(93, &arch.to_be_bytes())
    }

    /// iPXE, as it identifies itself: user class "iPXE" (77) and its options (175).
    pub fn ipxe(self) -> Self {
        self.with(77, b"iPXE")
            .with(175, &[177, 5, 1, 0x1a, 0xf4, 0x10, 0])
    }

    /// The options field bytes: TLVs then END.
    pub fn options_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (code, value) in &self.options {
            out.push(*code);
            if *code != 0 && *code != 255 {
                out.push(value.len() as u8);
                out.extend_from_slice(value);
            }
        }
        out.push(255);
        out
    }

    /// The BOOTP message (op through options, padded).
    pub fn bootp(&self) -> Vec<u8> {
        let mut b = vec![0u8; 236];
        b[0] = self.op;
        b[1] = self.htype;
        b[2] = self.hlen;
        b[4..8].copy_from_slice(&self.xid.to_be_bytes());
        b[10..12].copy_from_slice(&self.flags.to_be_bytes());
        b[12..16].copy_from_slice(&self.ciaddr.octets());
        b[24..28].copy_from_slice(&self.giaddr.octets());
        b[28..34].copy_from_slice(&self.chaddr);
        b.extend_from_slice(&[99, 130, 83, 99]);
        b.extend_from_slice(&self.options_bytes());
        if b.len() < self.pad_to {
            b.resize(self.pad_to, 0);
        }
        b
    }

    /// The whole Ethernet frame with valid checksums.
    pub fn frame(&self) -> Vec<u8> {
        frame_with_bootp(self, &self.bootp())
    }
}

/// An Ethernet/IPv4/UDP frame around `payload`, addressed as `r` says.
pub fn frame_with_bootp(r: &Request, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&r.src_port.to_be_bytes());
    udp.extend_from_slice(&r.dst_port.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let c = udp_checksum(r.ip_src, r.ip_dst, &udp);
    udp[6..8].copy_from_slice(&c.to_be_bytes());

    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip.extend_from_slice(&r.ip_src.octets());
    ip.extend_from_slice(&r.ip_dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());

    let mut f = Vec::with_capacity(14 + ip.len() + udp.len());
    f.extend_from_slice(&r.eth_dst);
    f.extend_from_slice(&r.eth_src);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&udp);
    f
}

/// A reply as a client sees it, after every check a strict client makes.
#[derive(Clone, Debug)]
pub struct Reply {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub ip_src: Ipv4Addr,
    pub ip_dst: Ipv4Addr,
    pub ip_len: usize,
    /// The IPv4 header's identification, and its flags and fragment offset.
    pub ip_id: u16,
    pub ip_frag: u16,
    pub udp_checksum: u16,
    pub xid: u32,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    /// `sname` and `file` up to their terminating NUL.
    pub sname: Vec<u8>,
    pub file: Vec<u8>,
    pub options: Vec<(u8, Vec<u8>)>,
}

impl Reply {
    pub fn option(&self, code: u8) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_slice())
    }

    pub fn msg_type(&self) -> Option<u8> {
        self.option(53).and_then(|v| v.first().copied())
    }

    pub fn codes(&self) -> Vec<u8> {
        self.options.iter().map(|(c, _)| *c).collect()
    }
}

fn ip(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

/// Parses and checks a server reply: lengths, both checksums, BOOTP fields, option TLVs up to
/// END, no duplicate options (consecutive instances of one are one long option, RFC 3396).
pub fn parse_reply(f: &[u8]) -> Result<Reply, String> {
    if f.len() < 14 + 20 + 8 + 240 {
        return Err(format!("frame of {} bytes is too short", f.len()));
    }
    if f[12..14] != [0x08, 0x00] {
        return Err("not IPv4".into());
    }
    let iph = &f[14..34];
    if iph[0] != 0x45 {
        return Err(format!("ver/ihl {:#x}", iph[0]));
    }
    if checksum(iph) != 0 {
        return Err("bad IPv4 header checksum".into());
    }
    let ip_len = u16::from_be_bytes([iph[2], iph[3]]) as usize;
    if 14 + ip_len != f.len() {
        return Err(format!("IP length {ip_len} but frame {}", f.len()));
    }
    if iph[9] != 17 {
        return Err("not UDP".into());
    }
    if ip_len > 576 {
        return Err(format!("IP datagram of {ip_len} bytes exceeds 576"));
    }
    let (src, dst) = (ip(&iph[12..16]), ip(&iph[16..20]));
    let udp = &f[34..];
    let udp_len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    if udp_len != udp.len() {
        return Err(format!("UDP length {udp_len} but {} bytes", udp.len()));
    }
    if udp[0..4] != [0, 67, 0, 68] {
        return Err(format!("ports {:?}", &udp[0..4]));
    }
    let udp_csum = u16::from_be_bytes([udp[6], udp[7]]);
    if udp_csum == 0 {
        return Err("UDP checksum is zero (absent)".into());
    }
    if udp_checksum(src, dst, udp) != 0 {
        return Err("bad UDP checksum".into());
    }
    let b = &udp[8..];
    if b.len() < 300 {
        return Err(format!("BOOTP message of {} bytes is under 300", b.len()));
    }
    if b[0] != 2 || b[1] != 1 || b[2] != 6 || b[3] != 0 {
        return Err(format!("op/htype/hlen/hops {:?}", &b[0..4]));
    }
    // `sname` and `file`: strings with a terminating NUL and nothing after it.
    let field = |f: &[u8]| -> Result<Vec<u8>, String> {
        let end = f
            .iter()
            .position(|x| *x == 0)
            .ok_or("sname/file without a terminating NUL")?;
        if f[end..].iter().any(|x| *x != 0) {
            return Err("bytes after the NUL of sname/file".into());
        }
        Ok(f[..end].to_vec())
    };
    let (sname, file) = (field(&b[44..108])?, field(&b[108..236])?);
    if b[236..240] != [99, 130, 83, 99] {
        return Err("bad magic cookie".into());
    }
    let mut options: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut i = 240;
    loop {
        let Some(&code) = b.get(i) else {
            return Err("options end without END".into());
        };
        match code {
            0 => i += 1,
            255 => break,
            _ => {
                let len = *b.get(i + 1).ok_or("option without length")? as usize;
                let v = b
                    .get(i + 2..i + 2 + len)
                    .ok_or("option runs past the end")?;
                if let Some((c, value)) = options.last_mut()
                    && *c == code
                {
                    // RFC 3396: consecutive instances of an option are one long option.
                    value.extend_from_slice(v);
                } else if options.iter().any(|(c, _)| *c == code) {
                    return Err(format!("option {code} twice"));
                } else {
                    options.push((code, v.to_vec()));
                }
                i += 2 + len;
            }
        }
    }
    let mut chaddr = [0u8; 16];
    chaddr.copy_from_slice(&b[28..44]);
    Ok(Reply {
        eth_dst: f[0..6].try_into().map_err(|_| "eth")?,
        eth_src: f[6..12].try_into().map_err(|_| "eth")?,
        ip_src: src,
        ip_dst: dst,
        ip_len,
        ip_id: u16::from_be_bytes([iph[4], iph[5]]),
        ip_frag: u16::from_be_bytes([iph[6], iph[7]]),
        udp_checksum: udp_csum,
        xid: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        flags: u16::from_be_bytes([b[10], b[11]]),
        ciaddr: ip(&b[12..16]),
        yiaddr: ip(&b[16..20]),
        siaddr: ip(&b[20..24]),
        giaddr: ip(&b[24..28]),
        chaddr,
        sname,
        file,
        options,
    })
}

/// An ARP request frame.
pub fn arp_request(mac: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&BROADCAST_MAC);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa.octets());
    f
}

/// An Ethernet/IPv4/UDP frame with `payload`, checksums complete (or, with `partial`, the UDP
/// checksum left as checksum offload leaves it: the pseudo-header sum only).
#[allow(clippy::too_many_arguments)]
pub fn udp_frame(
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    ip_src: Ipv4Addr,
    ip_dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
    partial: bool,
) -> Vec<u8> {
    let r = Request {
        eth_src,
        eth_dst,
        ip_src,
        ip_dst,
        src_port: sport,
        dst_port: dport,
        ..Request::new(eth_src, 1)
    };
    let mut f = frame_with_bootp(&r, payload);
    if partial {
        let udp_len = 8 + payload.len() as u16;
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&ip_src.octets());
        pseudo.extend_from_slice(&ip_dst.octets());
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&udp_len.to_be_bytes());
        // What the kernel leaves with CHECKSUM_PARTIAL: the folded pseudo-header sum.
        let seed = !checksum(&pseudo);
        f[40..42].copy_from_slice(&seed.to_be_bytes());
    }
    f
}

/// Whether the UDP checksum of the IPv4 frame `f` (Ethernet at 0, 20-byte IP header) is right.
pub fn udp_checksum_ok(f: &[u8]) -> bool {
    let src = Ipv4Addr::new(f[26], f[27], f[28], f[29]);
    let dst = Ipv4Addr::new(f[30], f[31], f[32], f[33]);
    let tot = u16::from_be_bytes([f[16], f[17]]) as usize;
    udp_checksum(src, dst, &f[34..14 + tot]) == 0
}
