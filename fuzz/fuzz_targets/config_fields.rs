//! The network config built field by field: random bytes rarely form JSON whose `Network`,
//! `SubnetLen`, `SubnetMin` and `SubnetMax` fit together, so this target writes flannel's fields
//! with values drawn near the edges the validation cares about (prefix lengths, subnet
//! boundaries, VNI and MTU limits), and values of the wrong JSON type now and then.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

mod common;

#[derive(Debug, Arbitrary)]
enum Field {
    Absent,
    Null,
    Bool(bool),
    Small(u8),
    Uint(u64),
    Int(i64),
    Float(f64),
    Text(String),
    /// An IPv4 address, as text.
    Addr(u32),
    /// A CIDR, as text: the prefix length is taken modulo 40, so /33../39 come up too.
    Cidr(u32, u8),
    Array(Vec<u8>),
}

impl Field {
    fn value(&self) -> Option<Value> {
        Some(match self {
            Field::Absent => return None,
            Field::Null => Value::Null,
            Field::Bool(b) => json!(b),
            Field::Small(n) => json!(n),
            Field::Uint(n) => json!(n),
            Field::Int(n) => json!(n),
            // NaN and the infinities are not JSON; serde_json writes them as null.
            Field::Float(f) => json!(f),
            Field::Text(s) => json!(s),
            Field::Addr(a) => json!(std::net::Ipv4Addr::from(*a).to_string()),
            Field::Cidr(a, len) => json!(format!("{}/{}", std::net::Ipv4Addr::from(*a), len % 40)),
            Field::Array(v) => json!(v),
        })
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    /// Network as a CIDR whose host bits are cleared most of the time, so validation goes on.
    network: u32,
    prefix: u8,
    keep_host_bits: bool,
    subnet_len: Field,
    subnet_min: Bound,
    subnet_max: Bound,
    enable_ipv4: Field,
    enable_ipv6: Field,
    backend: Option<Backend>,
    extra: Vec<(String, Field)>,
}

/// A subnet bound: an offset in subnets from the network's start (mostly valid), or any field.
#[derive(Debug, Arbitrary)]
enum Bound {
    Subnet(u16),
    Other(Field),
}

#[derive(Debug, Arbitrary)]
struct Backend {
    /// `None`: "vxlan", the one accepted value, which random text would hardly ever hit.
    ty: Option<Field>,
    vni: Field,
    port: Field,
    mtu: Field,
    gbp: Field,
    learning: Field,
    direct_routing: Field,
    not_an_object: Option<Field>,
}

fn put(obj: &mut Map<String, Value>, key: &str, field: &Field) {
    if let Some(v) = field.value() {
        obj.insert(key.into(), v);
    }
}

fuzz_target!(|input: Input| {
    let prefix = u32::from(input.prefix % 33);
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    let network = if input.keep_host_bits {
        input.network
    } else {
        input.network & mask
    };
    let network_addr = std::net::Ipv4Addr::from(network);

    let mut obj = Map::new();
    obj.insert("Network".into(), json!(format!("{network_addr}/{prefix}")));
    put(&mut obj, "SubnetLen", &input.subnet_len);
    // A subnet's size, guessed the way the parser defaults it, to land bounds on boundaries.
    let subnet_len = match &input.subnet_len {
        Field::Small(n) => u32::from(*n).min(32),
        _ if prefix <= 22 => 24,
        _ => (prefix + 1).min(32),
    };
    let size = 1u32.checked_shl(32 - subnet_len).unwrap_or(0);
    for (key, bound) in [("SubnetMin", &input.subnet_min), ("SubnetMax", &input.subnet_max)] {
        match bound {
            Bound::Subnet(k) => {
                let addr = network.wrapping_add(size.wrapping_mul(u32::from(*k)));
                obj.insert(key.into(), json!(std::net::Ipv4Addr::from(addr).to_string()));
            }
            Bound::Other(f) => put(&mut obj, key, f),
        }
    }
    put(&mut obj, "EnableIPv4", &input.enable_ipv4);
    put(&mut obj, "EnableIPv6", &input.enable_ipv6);
    if let Some(b) = &input.backend {
        let backend = match b.not_an_object.as_ref().and_then(Field::value) {
            Some(v) => v,
            None => {
                let mut m = Map::new();
                match &b.ty {
                    None => drop(m.insert("Type".into(), json!("vxlan"))),
                    Some(f) => put(&mut m, "Type", f),
                }
                put(&mut m, "VNI", &b.vni);
                put(&mut m, "Port", &b.port);
                put(&mut m, "MTU", &b.mtu);
                put(&mut m, "GBP", &b.gbp);
                put(&mut m, "Learning", &b.learning);
                put(&mut m, "DirectRouting", &b.direct_routing);
                Value::Object(m)
            }
        };
        obj.insert("Backend".into(), backend);
    }
    for (k, f) in &input.extra {
        // Unknown keys are ignored; known ones are overwritten here, which is fine too.
        put(&mut obj, k, f);
    }
    common::check_config(&Value::Object(obj).to_string());
});
