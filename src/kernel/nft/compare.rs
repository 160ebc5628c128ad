//! Semantic comparison of our table as `nft -j list table` prints it with the table we render.
//!
//! Both sides become plain JSON values with what the kernel adds stripped (handles, counter
//! values, metainfo) and what has no order sorted (set elements, flags). Rules keep their order:
//! it matters. A false "different" only costs one atomic rewrite; a false "equal" would leave a
//! hand edit in place, so nothing else is ignored.

use serde_json::Value;

/// A table reduced to what weft decides: everything but the peers set's elements, which are
/// kept apart so a change of peers alone can be applied without rewriting the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Canonical {
    /// Tables, chains, sets (without elements) and counters, sorted.
    pub objects: Vec<String>,
    /// Rules in listing order (grouped by chain, in chain order, as nft lists them).
    pub rules: Vec<String>,
    /// Elements of every set, by set name, sorted.
    pub elements: Vec<(String, Vec<String>)>,
}

/// Canonical form of a list of ruleset objects (`{"table": {...}}`, `{"rule": {...}}`, …).
pub(super) fn canonical<'a>(objects: impl IntoIterator<Item = &'a Value>) -> Canonical {
    let mut c = Canonical {
        objects: Vec::new(),
        rules: Vec::new(),
        elements: Vec::new(),
    };
    for obj in objects {
        let Some((kind, body)) = obj.as_object().and_then(|m| m.iter().next()) else {
            continue;
        };
        let mut body = body.clone();
        normalize(&mut body);
        if let Some(m) = body.as_object_mut() {
            // `"bytes": null` from the crate's types is absent in listings. Only at this level:
            // inside rules, `{"accept": null}` is meaningful.
            m.retain(|_, x| !x.is_null());
            m.remove("handle");
            if kind == "counter" {
                m.remove("packets");
                m.remove("bytes");
            }
            if kind == "set" {
                let name = m.get("name").map(|n| n.to_string()).unwrap_or_default();
                let mut elems: Vec<String> = match m.remove("elem") {
                    Some(Value::Array(a)) => a.iter().map(|e| e.to_string()).collect(),
                    Some(single) => vec![single.to_string()],
                    None => Vec::new(),
                };
                elems.sort();
                c.elements.push((name, elems));
            }
        }
        let line = format!("{kind} {body}");
        match kind.as_str() {
            "metainfo" => {}
            "rule" => c.rules.push(line),
            _ => c.objects.push(line),
        }
    }
    c.objects.sort();
    c.elements.sort();
    c
}

/// Recursively turns `flags` into a sorted array (nft prints a single flag as a string, the
/// crate serializes a set).
fn normalize(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(flags) = m.get_mut("flags") {
                let mut list: Vec<Value> = match flags.take() {
                    Value::Array(a) => a,
                    other => vec![other],
                };
                list.sort_by_key(|f| f.to_string());
                *flags = Value::Array(list);
            }
            m.values_mut().for_each(normalize);
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use serde_json::json;

    #[test]
    fn ignores_kernel_additions_and_order() {
        let listed = [
            json!({"metainfo": {"version": "1.0.6"}}),
            json!({"table": {"family": "ip", "name": "weft", "handle": 3}}),
            json!({"counter": {"family": "ip", "name": "c", "table": "weft", "handle": 4, "packets": 9, "bytes": 900}}),
            json!({"set": {"family": "ip", "name": "peers", "table": "weft", "type": "ipv4_addr", "handle": 5, "elem": ["192.0.2.10", "198.51.100.10"]}}),
            json!({"rule": {"family": "ip", "table": "weft", "chain": "x", "handle": 7, "expr": [{"masquerade": {"flags": "fully-random"}}]}}),
        ];
        let rendered = [
            json!({"table": {"family": "ip", "name": "weft"}}),
            json!({"set": {"family": "ip", "table": "weft", "name": "peers", "type": "ipv4_addr", "elem": ["198.51.100.10", "192.0.2.10"]}}),
            json!({"counter": {"family": "ip", "table": "weft", "name": "c", "bytes": null}}),
            json!({"rule": {"family": "ip", "table": "weft", "chain": "x", "expr": [{"masquerade": {"flags": ["fully-random"]}}]}}),
        ];
        assert_eq!(canonical(&listed), canonical(&rendered));
    }

    #[test]
    fn sees_rule_changes_and_order() {
        let a = json!({"rule": {"chain": "x", "expr": [{"accept": null}]}});
        let b = json!({"rule": {"chain": "x", "expr": [{"drop": null}]}});
        assert_ne!(canonical([&a]), canonical([&b]));
        assert_ne!(canonical([&a, &b]), canonical([&b, &a]));
        assert_ne!(canonical([&a, &b]), canonical([&a]));
    }

    #[test]
    fn elements_apart() {
        let a = json!({"set": {"name": "peers", "elem": ["192.0.2.10"]}});
        let b = json!({"set": {"name": "peers"}});
        let (ca, cb) = (canonical([&a]), canonical([&b]));
        assert_eq!(ca.objects, cb.objects);
        assert_ne!(ca.elements, cb.elements);
    }
}
