//! A lease as the store holds it: the input is `KEY\nVALUE` (split at the first newline), so the
//! seeds are plain flannel leases. Checks that a key names a subnet in exactly one spelling, and
//! that an accepted lease survives weft's own writer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft::lease::{lease_key, parse_subnet_key, subnet_key_suffix, vxlan_lease_value, Lease};
use weft::store::Entry;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (key, value) = text.split_once('\n').unwrap_or((text, ""));

    if let Some(net) = parse_subnet_key(key) {
        // One subnet, one key: were `10.0.0.0-08` accepted next to `10.0.0.0-8`, two store keys
        // could lease the same subnet to two hosts.
        let last = key.rsplit('/').next().unwrap_or(key);
        assert_eq!(subnet_key_suffix(net), last, "non-canonical subnet key accepted");
        assert_eq!(parse_subnet_key(&lease_key("/coreos.com/network", net)), Some(net));
    }

    let entry = Entry {
        key: key.to_string(),
        value: value.to_string(),
        create_revision: 1,
        mod_revision: value.len() as i64,
        expires_at: None,
    };
    match Lease::from_entry(&entry) {
        Ok(lease) => {
            assert_eq!(Some(lease.subnet), parse_subnet_key(key));
            assert_eq!(lease.backend_type, "vxlan");
            assert_eq!(lease.revision, entry.mod_revision);
            // What weft writes for the same lease reads back as the same lease.
            let again = Entry {
                value: vxlan_lease_value(lease.public_ip, lease.vni, lease.vtep_mac),
                ..entry.clone()
            };
            assert_eq!(Lease::from_entry(&again).as_ref(), Ok(&lease));
        }
        Err(e) => {
            let _ = (e.to_string(), e.reason());
        }
    }
});
