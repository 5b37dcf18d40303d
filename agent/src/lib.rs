//! holdfast: a statically stable DHCP and VPC data plane for the VMs of one hypervisor.
//!
//! Data flows one way: an IPAM source ([`ipam`]) delivers documents, [`model`] validates them,
//! [`leases`] renders what this host serves, [`dataplane`] writes it into pinned BPF maps. The
//! XDP programs answer from those maps whether or not the agent runs.

pub mod agent;
pub mod anchor;
pub mod config;
pub mod dataplane;
pub mod fault;
pub mod ipam;
pub mod leases;
pub mod links;
pub mod metrics;
pub mod model;
pub mod state;
pub mod vpc;
pub mod watchdog;
