//! holdfast: a statically stable DHCP and VPC data plane for the VMs of one hypervisor.
//!
//! Data flows one way: an IPAM source ([`ipam`]) delivers documents, [`model`] validates them,
//! [`render`] turns them into the entries this host must hold, [`dataplane`] writes those into
//! pinned BPF maps. The XDP programs answer from those maps whether or not the agent runs.
//! [`daemon`] wires it together for `holdfast run`; [`cli`] is the command line.

pub mod anchor;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod decap;
pub mod fault;
pub mod ipam;
pub mod links;
pub mod metrics;
pub mod model;
pub mod ports;
pub mod ra;
pub mod render;
pub mod snapshot;
pub mod watchdog;
