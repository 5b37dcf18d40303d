//! Network boot answers: for a NIC with a boot file, one entry per client variant (BIOS, UEFI,
//! iPXE...) with `siaddr`, `sname` and `file` and the options 66 and 67, their checksums
//! precomputed. XDP picks the variant by what the request says (options 93, 77, 175).

use agent_common::{
    BOOT_OPTS_MAX, BootEntry, BootVariant, be32, csum_partial,
    dhcp::{FILE_LEN, OPT_BOOTFILE, OPT_TFTP_SERVER, SNAME_LEN},
};

use crate::model::{Boot, Network, Nic};

/// The boot answers of `nic` on `net`: its boot fields over its network's, one entry per
/// variant with a file. Fields that would not fit (validation refuses them) leave no entry.
pub fn render(net: &Network, nic: &Nic) -> Vec<(BootVariant, BootEntry)> {
    let Some(boot) = Boot::merged(net.boot.as_ref(), nic.boot.as_deref()) else {
        return Vec::new();
    };
    boot.files()
        .into_iter()
        .filter_map(|(variant, file)| Some((variant, entry(&boot, file?)?)))
        .collect()
}

fn entry(boot: &Boot, file: &str) -> Option<BootEntry> {
    let name = boot.server_name.as_deref().unwrap_or_default();
    // Each field keeps a terminating NUL (RFC 2131 §2: "null terminated string").
    if name.len() >= SNAME_LEN || file.is_empty() || file.len() >= FILE_LEN {
        return None;
    }
    let mut fields = [0u8; SNAME_LEN + FILE_LEN];
    fields[..name.len()].copy_from_slice(name.as_bytes());
    fields[SNAME_LEN..SNAME_LEN + file.len()].copy_from_slice(file.as_bytes());
    // RFC 2132 §9.4 and §9.5: the same name and file as options, for a client that asks.
    let mut opts = Vec::with_capacity(BOOT_OPTS_MAX);
    if !name.is_empty() {
        opts.extend_from_slice(&[OPT_TFTP_SERVER, name.len() as u8]);
        opts.extend_from_slice(name.as_bytes());
    }
    opts.extend_from_slice(&[OPT_BOOTFILE, file.len() as u8]);
    opts.extend_from_slice(file.as_bytes());
    // Even, so that what follows keeps the word alignment its precomputed sum assumes.
    if opts.len() % 2 != 0 {
        opts.push(0);
    }
    let mut o = [0u8; BOOT_OPTS_MAX];
    o.get_mut(..opts.len())?.copy_from_slice(&opts);
    Some(BootEntry {
        siaddr: boot.next_server.map(be32).unwrap_or(0),
        fields_csum: csum_partial(&fields),
        opts_len: opts.len() as u16,
        _pad: 0,
        opts_csum: csum_partial(&opts),
        fields,
        opts: o,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Parsed from JSON, as IPAM says it: the fields others add keep their defaults.
    fn net() -> Network {
        serde_json::from_value(json!({"id": "blue", "vni": 1001, "subnet": "10.10.0.0/24",
                                      "gateway": "10.10.0.1"}))
        .unwrap()
    }

    fn nic() -> Nic {
        serde_json::from_value(json!({"mac": "02:00:00:00:00:01", "network": "blue",
                                      "ip": "10.10.0.11", "node": "hv-1"}))
        .unwrap()
    }

    fn boot() -> Boot {
        Boot {
            next_server: Some("10.10.0.5".parse().unwrap()),
            server_name: Some("tftp.blue".into()),
            bios: Some("undionly.kpxe".into()),
            uefi: Some("ipxe.efi".into()),
            arm64: None,
            ipxe: Some("boot.ipxe".into()),
        }
    }

    #[test]
    fn one_entry_per_variant_with_a_file() {
        let mut net = net();
        net.boot = Some(boot());
        let nic = nic();
        let out = render(&net, &nic);
        let variants: Vec<BootVariant> = out.iter().map(|(v, _)| *v).collect();
        assert_eq!(
            variants,
            [BootVariant::Bios, BootVariant::UefiX64, BootVariant::Ipxe]
        );
        let (_, bios) = &out[0];
        assert_eq!(bios.siaddr, u32::from_ne_bytes([10, 10, 0, 5]));
        assert_eq!(&bios.fields[..10], b"tftp.blue\0");
        assert_eq!(&bios.fields[64..78], b"undionly.kpxe\0");
        assert!(bios.fields[78..].iter().all(|b| *b == 0));
        let opts: &[u8] = &[
            66, 9, b't', b'f', b't', b'p', b'.', b'b', b'l', b'u', b'e', //
            67, 13, b'u', b'n', b'd', b'i', b'o', b'n', b'l', b'y', b'.', b'k', b'p', b'x', b'e',
        ];
        assert_eq!(&bios.opts[..usize::from(bios.opts_len)], opts);
        assert_eq!(bios.opts_csum, csum_partial(opts));
        // An odd length is padded to an even one.
        let (_, uefi) = &out[1];
        assert_eq!(uefi.opts_len, 2 + 9 + 2 + 8 + 1);
        assert_eq!(&uefi.opts[11..22], b"\x43\x08ipxe.efi\0");
        assert_eq!(bios.fields_csum, csum_partial(&bios.fields));
        assert_eq!(&out[2].1.fields[64..74], b"boot.ipxe\0");
    }

    #[test]
    fn the_nics_fields_win_field_by_field() {
        let mut net = net();
        net.boot = Some(boot());
        let mut nic = nic();
        nic.boot = Some(Box::new(Boot {
            ipxe: Some("http://10.10.0.5/vm-1.ipxe".into()),
            next_server: Some("10.10.0.6".parse().unwrap()),
            ..Boot::default()
        }));
        let out = render(&net, &nic);
        assert_eq!(out.len(), 3);
        let (v, ipxe) = &out[2];
        assert_eq!(*v, BootVariant::Ipxe);
        assert_eq!(&ipxe.fields[64..91], b"http://10.10.0.5/vm-1.ipxe\0");
        assert_eq!(ipxe.siaddr, u32::from_ne_bytes([10, 10, 0, 6]));
        // The network's BIOS file and server name stay.
        assert_eq!(&out[0].1.fields[64..78], b"undionly.kpxe\0");
        assert_eq!(&out[0].1.fields[..9], b"tftp.blue");
    }

    #[test]
    fn no_boot_no_entries() {
        let net = net();
        let nic = nic();
        assert!(render(&net, &nic).is_empty());
        // Without a server name, option 67 alone.
        let mut net = net;
        net.boot = Some(Boot {
            bios: Some("pxelinux.0".into()),
            ..Boot::default()
        });
        let out = render(&net, &nic);
        let e = &out[0].1;
        assert_eq!(e.siaddr, 0);
        assert_eq!(
            &e.opts[..usize::from(e.opts_len)],
            &[
                67, 10, b'p', b'x', b'e', b'l', b'i', b'n', b'u', b'x', b'.', b'0'
            ]
        );
    }
}
