//! DHCPv6 wire constants (RFC 8415) shared by the responder and the renderer.

pub const CLIENT_PORT: u16 = 546;
pub const SERVER_PORT: u16 = 547;

// Message types (RFC 8415 §7.3).
pub const SOLICIT: u8 = 1;
pub const ADVERTISE: u8 = 2;
pub const REQUEST: u8 = 3;
pub const CONFIRM: u8 = 4;
pub const RENEW: u8 = 5;
pub const REBIND: u8 = 6;
pub const REPLY: u8 = 7;
pub const RELEASE: u8 = 8;
pub const DECLINE: u8 = 9;
pub const INFORMATION_REQUEST: u8 = 11;
pub const RELAY_FORW: u8 = 12;

// Option codes (RFC 8415 §21, RFC 3646).
pub const OPT_CLIENTID: u16 = 1;
pub const OPT_SERVERID: u16 = 2;
pub const OPT_IA_NA: u16 = 3;
pub const OPT_IAADDR: u16 = 5;
pub const OPT_STATUS_CODE: u16 = 13;
pub const OPT_RAPID_COMMIT: u16 = 14;
pub const OPT_DNS_SERVERS: u16 = 23;
pub const OPT_DOMAIN_LIST: u16 = 24;

// Status codes (RFC 8415 §21.13).
pub const STATUS_SUCCESS: u16 = 0;
pub const STATUS_NOT_ON_LINK: u16 = 4;

/// Added to a DHCPv6 message type in a `DhcpEvent`'s kind: the RELEASE and DECLINE of
/// DHCPv6 clients, reported like their DHCPv4 twins (their address is the NIC's `ip6`, which
/// the agent knows; `addr` is 0).
pub const EVENT_DHCP6: u32 = 0x100;

/// The longest client identifier option value: a DUID of at most 130 bytes, type included
/// (RFC 8415 §11.1).
pub const DUID_MAX: usize = 130;

/// The server identifier option holding the server's DUID: a DUID-LL (type 3, RFC 8415
/// §11.4) of the router MAC, hardware type Ethernet. The same on every host, so a client's
/// REQUEST or RENEW is answered wherever it lands (a migrated VM, a restarted agent).
pub const fn server_id_option(router_mac: [u8; 6]) -> [u8; SERVER_ID_LEN] {
    let m = router_mac;
    [0, 2, 0, 10, 0, 3, 0, 1, m[0], m[1], m[2], m[3], m[4], m[5]]
}

/// Length of [`server_id_option`]'s TLV.
pub const SERVER_ID_LEN: usize = 14;

/// Room for the options every reply of a network carries after the ones the program builds:
/// the server identifier (14 bytes), DNS recursive name servers (23: 4 + 16 per server) and the
/// domain search list (24: 4 + the names in wire format). A network whose router
/// advertisement fits (`ra_too_long`) fits here too.
pub const TAIL_MAX: usize = 256;
