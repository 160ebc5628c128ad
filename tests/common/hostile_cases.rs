//! Hostile and malformed lease entries (issue #7, part 2), as plain strings so that the planner's
//! unit tests (`src/planner/hostile_tests.rs`) and the lab test (`tests/hostile_leases.rs`) plant
//! exactly the same inputs. Network: `10.0.0.0/16`, `SubnetLen` 24, VNI 1.

/// One entry to plant at `<prefix>/subnets/<key>` and the reason it must be refused with.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: &'static str,
    /// What follows `<prefix>/subnets/`.
    pub key: String,
    pub value: String,
    /// The `weft_leases_rejected_total{reason}` label.
    pub reason: &'static str,
}

/// Where the cases are aimed.
pub struct Target<'a> {
    /// Third octets of /24s that nobody leases: each hostile entry gets its own. At least
    /// [`FREE_NEEDED`].
    pub free: &'a [u8],
    /// A host that holds a lease, and the lease: third octet, public IP, VTEP MAC.
    pub victim_third: u8,
    pub victim_ip: &'a str,
    pub victim_mac: &'a str,
}

/// How many free /24s [`cases`] uses.
pub const FREE_NEEDED: usize = 80;

/// A flannel lease value.
pub fn value(ip: &str, vni: i64, mac: &str) -> String {
    format!(
        r#"{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":{vni},"VtepMAC":"{mac}"}}}}"#
    )
}

/// Every case. The public IPs and MACs of entries that are hostile for another reason are
/// valid and unused (198.18.200.0/24, locally administered MACs), so each entry has exactly one
/// thing wrong with it.
pub fn cases(t: &Target) -> Vec<Case> {
    assert!(t.free.len() >= FREE_NEEDED, "need {FREE_NEEDED} free /24s");
    // Each case has its own subnet, public IP and MAC, so all can be planted at once.
    let free = std::cell::Cell::new(0usize);
    let next = || {
        let i = free.get();
        free.set(i + 1);
        i
    };
    let f = |_: usize| t.free[next()];
    let ok_ip = |i: usize| format!("198.18.200.{}", 10 + i);
    let ok_mac = |i: usize| format!("0a:58:00:00:c8:{:02x}", 10 + i);
    let good = |i: usize| value(&ok_ip(i), 1, &ok_mac(i));
    let key = |i: usize| format!("10.0.{}.0-24", f(i));
    let mut out = Vec::new();
    let mut add = |name, key: String, value: String, reason| {
        out.push(Case {
            name,
            key,
            value,
            reason,
        })
    };

    // Where the subnet is.
    add(
        "subnet outside the network",
        format!("10.1.{}.0-24", f(0)),
        good(0),
        "outside_network",
    );
    add(
        "subnet outside, wrapping",
        "192.0.2.0-24".into(),
        good(0),
        "outside_network",
    );
    add(
        "subnet of the wrong length (/25)",
        format!("10.0.{}.0-25", f(0)),
        good(0),
        "wrong_length",
    );
    add(
        "whole network as one lease",
        "10.0.0.0-16".into(),
        good(1),
        "wrong_length",
    );
    add(
        "shorter key overlapping a lease (/23)",
        format!("10.0.{}.0-23", t.victim_third & !1),
        good(1),
        "wrong_length",
    );
    add(
        "longer key inside a lease (/25)",
        format!("10.0.{}.128-25", t.victim_third),
        good(2),
        "wrong_length",
    );
    add(
        "key and value disagreeing (Subnet field)",
        key(1),
        format!(
            r#"{{"PublicIP":"{}","BackendType":"vxlan","Subnet":"10.0.{}.0/24","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
            ok_ip(3),
            t.victim_third,
            ok_mac(3)
        ),
        "key_value_mismatch",
    );
    add(
        "key and value disagreeing (Subnet not a subnet)",
        key(1),
        format!(
            r#"{{"PublicIP":"{}","BackendType":"vxlan","subnet":42,"BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
            ok_ip(3),
            ok_mac(3)
        ),
        "key_value_mismatch",
    );

    // Public IP.
    for (name, ip) in [
        ("public IP unspecified", "0.0.0.0"),
        ("public IP in 0.0.0.0/8", "0.1.2.3"),
        ("public IP loopback", "127.0.0.1"),
        ("public IP loopback (not .1)", "127.9.9.9"),
        ("public IP multicast", "224.0.0.5"),
        ("public IP broadcast", "255.255.255.255"),
        ("public IP reserved 240/4", "240.0.0.1"),
        ("public IP link-local", "169.254.10.1"),
        ("public IP inside the overlay", "10.0.9.9"),
    ] {
        add(name, key(2), value(ip, 1, &ok_mac(4)), "bad_public_ip");
    }
    // Own: for the victim host `own_public_ip`, for every other host `duplicate_public_ip`.
    add(
        "public IP our own",
        key(3),
        value(t.victim_ip, 1, &ok_mac(5)),
        "own_public_ip",
    );

    // VTEP MAC.
    for (name, mac) in [
        ("VTEP MAC multicast", "01:00:5e:00:00:01"),
        ("VTEP MAC broadcast", "ff:ff:ff:ff:ff:ff"),
        ("VTEP MAC all zeros", "00:00:00:00:00:00"),
    ] {
        add(name, key(4), value(&ok_ip(6), 1, mac), "bad_vtep_mac");
    }
    add(
        "VTEP MAC of another lease",
        key(4),
        value(&ok_ip(6), 1, t.victim_mac),
        "duplicate_vtep_mac",
    );

    // VNI and backend.
    add("VNI 2", key(5), value(&ok_ip(7), 2, &ok_mac(7)), "vni_mismatch");
    add("VNI 0", key(5), value(&ok_ip(7), 0, &ok_mac(7)), "vni_mismatch");
    add(
        "VNI over 24 bits",
        key(5),
        value(&ok_ip(7), 1 << 24 | 1, &ok_mac(7)),
        "vni_mismatch",
    );
    for (name, backend) in [
        ("backend udp", "udp"),
        ("backend host-gw", "host-gw"),
        ("backend VXLAN (case)", "VXLAN"),
        ("backend empty", ""),
    ] {
        let v = good(8).replace(r#""BackendType":"vxlan""#, &format!(r#""BackendType":"{backend}""#));
        add(name, key(5), v, "unsupported_backend");
    }

    // Not a lease at all.
    for (name, v) in [
        ("value not JSON", "not json".to_string()),
        ("value empty", String::new()),
        ("value JSON null", "null".into()),
        ("value JSON array", "[1,2]".into()),
        ("value empty object", "{}".into()),
        ("value with trailing junk", format!("{}junk", good(9))),
        ("value truncated", good(9)[..40].to_string()),
        (
            "value with a field twice",
            good(9).replace(r#""PublicIPv6":null"#, r#""PublicIP":"198.18.200.99""#),
        ),
        ("public IP not an IP", good(9).replace(&ok_ip(9), "not-an-ip")),
        (
            "public IP a number",
            good(9).replace(&format!("\"{}\"", ok_ip(9)), "3325256714"),
        ),
        ("public IPv6 malformed", good(9).replace("null", "\"::zz\"")),
        ("VTEP MAC malformed", good(9).replace(&ok_mac(9), "zz:zz")),
        ("VNI negative", value(&ok_ip(9), -1, &ok_mac(9))),
        ("VNI huge", value(&ok_ip(9), i64::MAX, &ok_mac(9))),
        (
            "BackendData missing",
            format!(r#"{{"PublicIP":"{}","BackendType":"vxlan"}}"#, ok_ip(9)),
        ),
        ("deeply nested", format!("{}{}", "[".repeat(2000), "]".repeat(2000))),
    ] {
        add(name, key(6), v, "bad_json");
    }
    add(
        "value just over 4 KiB",
        key(6),
        good(9).replacen('{', &format!(r#"{{"Pad":"{}","#, "x".repeat(4096)), 1),
        "too_large",
    );
    add(
        "value of 1 MB",
        key(6),
        format!(r#"{{"PublicIP":"{}","#, "9".repeat(1 << 20)),
        "too_large",
    );

    // Keys with junk in them.
    for (name, k) in [
        ("key with host bits", format!("10.0.{}.5-24", f(0))),
        ("key without length", format!("10.0.{}.0-", f(0))),
        ("key with length 33", format!("10.0.{}.0-33", f(0))),
        ("key with length 024", format!("10.0.{}.0-024", f(0))),
        ("key not an address", "x-24".to_string()),
        ("key with trailing junk", format!("10.0.{}.0-24junk", f(0))),
        ("key with trailing slash", format!("10.0.{}.0-24/", f(0))),
        ("key nested one level", format!("junk/10.0.{}.0-24", f(0))),
        ("key with leading zero", format!("10.0.0{}.0-24", f(0))),
        ("key with leading space", format!(" 10.0.{}.0-24", f(0))),
        ("key with newline", format!("10.0.{}.0-24\n", f(0))),
        ("key with NUL", format!("10.0.{}.0-24\0", f(0))),
        ("key with unicode digit", format!("10.0.{}.0-２4", f(0))),
        ("key of 100 KB", format!("10.0.{}.0-24{}", f(0), "x".repeat(100 * 1024))),
        ("key empty", String::new()),
    ] {
        add(name, k, good(10), "bad_key");
    }
    out
}
