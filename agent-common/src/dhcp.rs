//! DHCPv4 wire constants (RFC 2131, RFC 2132) shared by the responder and the renderer.

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;

pub const BOOTREQUEST: u8 = 1;
pub const BOOTREPLY: u8 = 2;
pub const HTYPE_ETHERNET: u8 = 1;
pub const BROADCAST_FLAG: u16 = 0x8000;
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];

/// Offset of the options field in a BOOTP message (after the magic cookie).
pub const OPTIONS_OFFSET: usize = 240;

// Message types (option 53).
pub const DHCPDISCOVER: u8 = 1;
pub const DHCPOFFER: u8 = 2;
pub const DHCPREQUEST: u8 = 3;
pub const DHCPDECLINE: u8 = 4;
pub const DHCPACK: u8 = 5;
pub const DHCPNAK: u8 = 6;
pub const DHCPRELEASE: u8 = 7;
pub const DHCPINFORM: u8 = 8;

// Option codes.
pub const OPT_PAD: u8 = 0;
pub const OPT_SUBNET_MASK: u8 = 1;
pub const OPT_ROUTER: u8 = 3;
pub const OPT_DNS: u8 = 6;
pub const OPT_HOSTNAME: u8 = 12;
pub const OPT_DOMAIN_NAME: u8 = 15;
pub const OPT_INTERFACE_MTU: u8 = 26;
pub const OPT_NTP: u8 = 42;
pub const OPT_REQUESTED_IP: u8 = 50;
pub const OPT_LEASE_TIME: u8 = 51;
pub const OPT_OVERLOAD: u8 = 52;
pub const OPT_MESSAGE_TYPE: u8 = 53;
pub const OPT_SERVER_ID: u8 = 54;
pub const OPT_PARAM_REQUEST: u8 = 55;
pub const OPT_RENEWAL_TIME: u8 = 58;
pub const OPT_REBINDING_TIME: u8 = 59;
pub const OPT_CLIENT_ID: u8 = 61;
pub const OPT_TFTP_SERVER: u8 = 66;
pub const OPT_BOOTFILE: u8 = 67;
pub const OPT_USER_CLASS: u8 = 77;
pub const OPT_RAPID_COMMIT: u8 = 80;
pub const OPT_CLIENT_ARCH: u8 = 93;
/// iPXE's encapsulated options (its feature flags): present in every iPXE request.
pub const OPT_IPXE_ENCAP: u8 = 175;
pub const OPT_DOMAIN_SEARCH: u8 = 119;
pub const OPT_CLASSLESS_ROUTES: u8 = 121;
pub const OPT_END: u8 = 255;
pub const OPT_BROADCAST: u8 = 28;
pub const OPT_NETBIOS_NAME_SERVERS: u8 = 44;
pub const OPT_NETBIOS_NODE_TYPE: u8 = 46;
pub const OPT_RELAY_AGENT_INFO: u8 = 82;
/// RFC 8925: IPv6-only preferred, sent only to a client that asks for it in option 55.
pub const OPT_IPV6_ONLY_PREFERRED: u8 = 108;
/// RFC 8910: the captive portal API URI.
pub const OPT_CAPTIVE_PORTAL: u8 = 114;
/// Microsoft's classless static routes (the encoding of 121), for Windows before Vista.
pub const OPT_MS_CLASSLESS_ROUTES: u8 = 249;
/// Web proxy auto-discovery (WPAD): the PAC file's URL.
pub const OPT_WPAD: u8 = 252;

/// Where option 108 sits in a binding's options when it has one: right after the lease-time
/// options (51, 58, 59, 18 bytes), a whole 6-byte option on even offsets, so the responder can
/// blank it to pads for a client that did not ask for it and take its three 16-bit words out
/// of the precomputed sum.
pub const V6ONLY_OPT_OFF: usize = 18;
/// Bytes of option 108: code, length, a 32-bit number of seconds.
pub const V6ONLY_OPT_LEN: usize = 6;

/// Length of the fixed option prefix every reply starts with:
/// `53 1 <type>`, `54 4 <server id>`, then `80 0` (rapid commit) or two pads, then one pad so the
/// rendered blob starts on an even offset of the UDP payload (its checksum is precomputed).
pub const FIXED_OPTS_LEN: usize = 12;

/// Offsets of `sname` and `file` in a BOOTP message, and their sizes (RFC 2131 §2).
pub const SNAME_OFFSET: usize = 44;
pub const SNAME_LEN: usize = 64;
pub const FILE_LEN: usize = 128;

/// The user class (option 77) iPXE sends: the four bytes, without RFC 3004's length prefix.
pub const IPXE_USER_CLASS: [u8; 4] = *b"iPXE";

/// Client system architectures (option 93, RFC 4578 §2.1 and the IANA registry).
pub const ARCH_X86_BIOS: u16 = 0;
pub const ARCH_EFI_BC: u16 = 7;
pub const ARCH_EFI_X86_64: u16 = 9;
pub const ARCH_EFI_ARM64: u16 = 11;
