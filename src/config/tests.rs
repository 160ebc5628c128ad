use super::*;
use proptest::prelude::*;

fn parse(s: &str) -> Result<NetworkConfig, ConfigError> {
    NetworkConfig::parse(s)
}

fn field_of(s: &str) -> &'static str {
    match parse(s) {
        Err(ConfigError::Invalid { field, .. }) => field,
        other => panic!("expected Invalid for {s}, got {other:?}"),
    }
}

#[test]
fn flannel_defaults() {
    let c = parse(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
    assert_eq!(c.network, "10.0.0.0/16".parse().unwrap());
    assert_eq!(c.subnet_len, 24);
    assert_eq!(c.subnet_min, "10.0.1.0".parse::<Ipv4Addr>().unwrap());
    assert_eq!(c.subnet_max, "10.0.255.0".parse::<Ipv4Addr>().unwrap());
    assert_eq!(
        c.backend,
        VxlanBackend {
            vni: 1,
            port: 8472,
            mtu: None,
            gbp: false,
            learning: false,
            direct_routing: false
        }
    );
    assert_eq!(c.subnet_count(), 255);
}

#[test]
fn small_network_gets_longer_subnets() {
    let c = parse(r#"{"Network":"10.0.0.0/23"}"#).unwrap();
    assert_eq!(c.subnet_len, 24);
    let c = parse(r#"{"Network":"10.0.0.0/24","SubnetLen":25}"#).unwrap();
    assert_eq!(
        (c.subnet_min, c.subnet_max),
        ("10.0.0.128".parse().unwrap(), "10.0.0.128".parse().unwrap())
    );
    assert_eq!(c.subnet_count(), 1);
}

#[test]
fn explicit_values() {
    let c = parse(
        r#"{"Network":"10.1.0.0/16","SubnetLen":26,"SubnetMin":"10.1.4.0","SubnetMax":"10.1.8.192",
            "EnableIPv4":true,"Backend":{"Type":"vxlan","VNI":4096,"Port":4789,"MTU":1400,"DirectRouting":true,"Foo":1},"Other":"ignored"}"#,
    )
    .unwrap();
    assert_eq!(c.subnet_len, 26);
    assert_eq!(c.backend.vni, 4096);
    assert_eq!(c.backend.port, 4789);
    assert_eq!(c.backend.mtu, Some(1400));
    assert!(c.backend.direct_routing);
}

#[test]
fn every_error_names_its_field() {
    let cases = [
        (r#"{"Network":"10.0.0.0/33"}"#, "Network"),
        (r#"{"Network":"banana"}"#, "Network"),
        (r#"{"Network":"10.0.0.1/16"}"#, "Network"),
        (r#"{"Network":42}"#, "Network"),
        (r#"{"Network":"10.0.0.0/16","SubnetLen":8}"#, "SubnetLen"),
        (r#"{"Network":"10.0.0.0/16","SubnetLen":31}"#, "SubnetLen"),
        (r#"{"Network":"10.0.0.0/16","SubnetLen":-1}"#, "SubnetLen"),
        (r#"{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0"}"#, "SubnetMin"),
        (r#"{"Network":"10.0.0.0/16","SubnetMax":"192.0.2.0"}"#, "SubnetMax"),
        (r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.1.5"}"#, "SubnetMin"),
        (
            r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.9.0","SubnetMax":"10.0.3.0"}"#,
            "SubnetMin",
        ),
        (r#"{"Network":"10.0.0.0/16","Backend":{"Type":"udp"}}"#, "Backend.Type"),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":0}}"#,
            "Backend.VNI",
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
            "Backend.VNI",
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","Port":70000}}"#,
            "Backend.Port",
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","Port":"x"}}"#,
            "Backend.Port",
        ),
        (
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","MTU":500}}"#,
            "Backend.MTU",
        ),
        (r#"{"Network":"10.0.0.0/16","Backend":"vxlan"}"#, "Backend"),
        (r#"{"Network":"10.0.0.0/16","EnableIPv6":true}"#, "EnableIPv6"),
    ];
    for (json, field) in cases {
        assert_eq!(field_of(json), field, "{json}");
        let msg = parse(json).unwrap_err().to_string();
        assert!(msg.contains(field), "{msg}");
    }
    assert_eq!(parse("{}"), Err(ConfigError::Missing { field: "Network" }));
    assert!(matches!(parse("not json"), Err(ConfigError::NotJson(_))));
    assert_eq!(parse("[1]"), Err(ConfigError::NotObject));
    assert!(matches!(
        parse(&" ".repeat(MAX_CONFIG_BYTES + 1)),
        Err(ConfigError::NotJson(_))
    ));
}

#[test]
fn error_message_is_readable() {
    let e = parse(r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":0}}"#).unwrap_err();
    assert_eq!(
        e.to_string(),
        "network config: Backend.VNI = 0: must be between 1 and 16777215"
    );
}

#[test]
fn mtu_against_interface() {
    let c = parse(r#"{"Network":"10.0.0.0/16"}"#).unwrap();
    assert_eq!(c.device_mtu("eth0", 1500), Ok(1450));
    assert_eq!(c.device_mtu("eth0", 9000), Ok(8950));
    let c = parse(r#"{"Network":"10.0.0.0/16","Backend":{"MTU":1400}}"#).unwrap();
    assert_eq!(c.device_mtu("eth0", 1500), Ok(1400));
    let c = parse(r#"{"Network":"10.0.0.0/16","Backend":{"MTU":9000}}"#).unwrap();
    let e = c.device_mtu("eth0", 1500).unwrap_err().to_string();
    assert!(
        e.contains("Backend.MTU") && e.contains("eth0") && e.contains("1500"),
        "{e}"
    );
}

proptest! {
    /// Any accepted config describes a non-empty, aligned range inside the network.
    #[test]
    fn accepted_configs_are_consistent(a in any::<u32>(), plen in 8u8..=30, slen in 0u8..=32, vni in 0u32..20_000_000) {
        let net = Ipv4Net::new(Ipv4Addr::from(a), plen).unwrap().trunc();
        let json = format!(r#"{{"Network":"{net}","SubnetLen":{slen},"Backend":{{"VNI":{vni}}}}}"#);
        if let Ok(c) = parse(&json) {
            prop_assert!(c.subnet_len >= plen && c.subnet_len <= 30);
            prop_assert!(net.contains(&c.subnet_min) && net.contains(&c.subnet_max));
            prop_assert!(c.subnet_min <= c.subnet_max);
            prop_assert!(c.subnet_count() >= 1);
            prop_assert!((1..=MAX_VNI).contains(&c.backend.vni));
        }
    }

    /// Arbitrary text never panics the parser.
    #[test]
    fn never_panics(s in ".{0,200}") {
        let _ = parse(&s);
    }
}
