//! `subnet.env`, read by the CNI plugin (and written by flannel, or by weft): any text parses
//! to a value or `None`, and what weft writes reads back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft::subnet_env::SubnetEnv;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Some(env) = SubnetEnv::parse(&text) else {
        return;
    };
    assert_eq!(env.subnet, env.subnet.trunc());
    // The file names the subnet by its first host address, which only exists below /32; the
    // agent writes subnets of /30 or larger (config::NetworkConfig), so only /32 is exempt.
    if env.subnet.prefix_len() < 32 {
        assert_eq!(
            SubnetEnv::parse(&env.render()),
            Some(env.clone()),
            "render/parse round trip"
        );
    }
});
