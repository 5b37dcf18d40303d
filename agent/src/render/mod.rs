//! Rendering: from the validated model to the entries the data plane's maps must hold.
//!
//! Everything here is a pure function of the model, this node, the router MAC and the
//! interfaces present: nothing touches BPF, the network or the clock. Data flows one way:
//! the model ([`crate::model`]) is rendered here into a [`Desired`](crate::dataplane::Desired)
//! state, which [`crate::dataplane`] writes into the maps.
//!
//! - [`options`]: a NIC's DHCP options as the bytes XDP copies into each reply.
//! - [`boot`]: a NIC's network boot answers, one per client variant.
//! - [`leases`]: which NICs this host serves DHCP for, each on its interface.
//! - [`ra6`]: a network's router advertisement as the bytes the programs send.
//! - [`dhcp6`]: the options of a network's DHCPv6 replies, as the programs send them.
//! - [`vpc`]: the forwarding state (FDB, ARP answers, VTEPs) of the networks this host carries.
//! - [`desired`]: all of it as map entries, built whole or patched for some networks.

pub mod boot;
pub mod desired;
pub mod dhcp6;
pub mod leases;
pub mod options;
pub mod ra6;
pub mod vpc;
