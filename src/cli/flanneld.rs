//! flanneld's command line, as it is: a flanneld systemd unit or manifest keeps working when
//! `flanneld` becomes `weft-agent`. flanneld's own flags that weft names the same way are weft's
//! flags already (`--etcd-endpoints`, `--iface`, `--ip-masq`, …). Here are the rest:
//! each is mapped onto weft's equivalent, accepted with a warning where there is nothing for weft
//! to do, or refused with what to use instead. flanneld parses with Go's `flag` package, which
//! also takes `-name=value` with one dash; [`go_style_args`] turns those into `--name=value`.
//! Its `FLANNELD_*` environment variables are read as well ([`take_flanneld_env`]).

use anyhow::{bail, Result};
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "flanneld's flags (for a flanneld command line used as is)")]
pub struct FlanneldArgs {
    /// flanneld's --healthz-ip: with --healthz-port, the address to serve on (default 0.0.0.0).
    #[arg(long, value_name = "IP", env = "FLANNELD_HEALTHZ_IP")]
    pub healthz_ip: Option<IpAddr>,

    /// flanneld's --healthz-port: serve /healthz (and /readyz, /metrics, /status) on this port;
    /// 0, flanneld's default, serves nothing. Same as --healthz-addr IP:PORT.
    #[arg(long, value_name = "PORT", env = "FLANNELD_HEALTHZ_PORT")]
    pub healthz_port: Option<u16>,

    /// flanneld's --subnet-lease-renew-margin: renew the lease this many minutes before it
    /// expires (at most half its lifetime before).
    #[arg(
        long,
        value_name = "MINUTES",
        default_value_t = 60,
        env = "FLANNELD_SUBNET_LEASE_RENEW_MARGIN"
    )]
    pub subnet_lease_renew_margin: u64,

    /// flanneld's (klog's) -v: 0 logs at info, 1–4 at debug, 5 and more at trace; --log-level
    /// takes precedence.
    #[arg(short = 'v', long = "v", value_name = "LEVEL", env = "FLANNELD_V")]
    pub verbosity: Option<u8>,

    /// flanneld's --iptables-resync: accepted and ignored. weft's rules are one nft table,
    /// checked at every --resync-interval and rewritten at once when changed by hand.
    #[arg(long, value_name = "SECONDS", env = "FLANNELD_IPTABLES_RESYNC")]
    pub iptables_resync: Option<u64>,

    /// flanneld's --iptables-forward-rules: accepted. weft writes no iptables rules; where the
    /// FORWARD policy is DROP (Docker, ufw), add flannel's two accepts yourself (operator guide).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true",
          env = "FLANNELD_IPTABLES_FORWARD_RULES")]
    pub iptables_forward_rules: Option<bool>,

    /// flanneld's --kube-subnet-mgr: refused; weft keeps leases in etcd or its embedded store.
    #[arg(long, env = "FLANNELD_KUBE_SUBNET_MGR",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub kube_subnet_mgr: bool,

    /// flanneld's Kubernetes subnet manager's config file: refused, as --kube-subnet-mgr.
    #[arg(long, value_name = "PATH", env = "FLANNELD_NET_CONFIG_PATH")]
    pub net_config_path: Option<String>,

    /// flanneld's IPv6 public address: refused; weft's overlay runs over IPv4.
    #[arg(long, value_name = "IP", env = "FLANNELD_PUBLIC_IPV6")]
    pub public_ipv6: Option<String>,
}

/// What flanneld's flags set in weft's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// From --healthz-ip/--healthz-port, when the port is not 0.
    pub healthz_addr: Option<SocketAddr>,
    pub renew_margin: Duration,
    /// From -v, for when --log-level is not given.
    pub log_level: Option<&'static str>,
    /// To log once logging is set up: flags accepted but without effect.
    pub warnings: Vec<String>,
}

impl FlanneldArgs {
    /// Maps the flags, or refuses them. `healthz_addr` is weft's own --healthz-addr.
    pub fn map(&self, healthz_addr: Option<SocketAddr>) -> Result<Mapped> {
        if self.kube_subnet_mgr || self.net_config_path.is_some() {
            bail!(
                "flanneld's Kubernetes subnet manager (--kube-subnet-mgr, --net-config-path) is not \
                 part of weft: give the network's etcd with --etcd-endpoints (the network config at \
                 <--etcd-prefix>/config, flannel's JSON), or use the embedded store (--store)"
            );
        }
        if let Some(ip) = &self.public_ipv6 {
            bail!("--public-ipv6 {ip}: weft's overlay runs over IPv4 only");
        }
        let mut warnings = Vec::new();
        let from_port = match (self.healthz_port, self.healthz_ip) {
            (Some(port), ip) if port != 0 => {
                if let Some(addr) = healthz_addr {
                    bail!("--healthz-addr {addr} and flanneld's --healthz-port {port}: give one of them");
                }
                Some(SocketAddr::new(ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), port))
            }
            (_, Some(ip)) => {
                warnings.push(format!(
                    "--healthz-ip {ip} has no effect without --healthz-port (as in flanneld)"
                ));
                None
            }
            _ => None,
        };
        if self.subnet_lease_renew_margin == 0 {
            bail!("--subnet-lease-renew-margin must be at least 1 minute");
        }
        if let Some(secs) = self.iptables_resync {
            warnings.push(format!(
                "--iptables-resync {secs} ignored: weft's nft table is checked at every resync \
                 (--resync-interval) and when the kernel reports a change"
            ));
        }
        if self.iptables_forward_rules == Some(true) {
            warnings.push(
                "--iptables-forward-rules: weft adds no iptables FORWARD rules; where the FORWARD \
                 policy is DROP (Docker, ufw), pods on other hosts are unreachable until you add \
                 flannel's two accepts (operator guide, Troubleshooting)"
                    .into(),
            );
        }
        Ok(Mapped {
            healthz_addr: from_port,
            renew_margin: Duration::from_secs(self.subnet_lease_renew_margin.saturating_mul(60)),
            log_level: self.verbosity.map(|v| match v {
                0 => "info",
                1..=4 => "debug",
                _ => "trace",
            }),
            warnings,
        })
    }
}

/// flanneld reads every flag from `FLANNELD_<NAME>` too (`FLANNELD_ETCD_ENDPOINTS`). For the
/// flags weft shares with it, such a variable stands in for weft's own (`WEFT_ETCD_ENDPOINTS`)
/// when that is not set; flanneld's other flags read theirs directly. Call before parsing, while
/// the process has one thread.
pub fn take_flanneld_env(cmd: &clap::Command) {
    for arg in cmd.get_arguments() {
        let (Some(long), Some(ours)) = (arg.get_long(), arg.get_env()) else {
            continue;
        };
        let theirs = format!("FLANNELD_{}", long.to_ascii_uppercase().replace('-', "_"));
        if ours == theirs.as_str() || std::env::var_os(ours).is_some() {
            continue;
        }
        if let Some(value) = std::env::var_os(&theirs) {
            std::env::set_var(ours, value);
        }
    }
}

/// Go's `flag` package takes `-etcd-endpoints=URL` as well as `--etcd-endpoints=URL`, and
/// flanneld units use both. Rewrites a word of one dash and a name of two or more letters into
/// the double-dash form; one-letter flags (`-v`, `-h`, `-V`) and everything after `--` stay.
pub fn go_style_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut rest = false;
    for arg in args {
        let rewritten = match arg.to_str() {
            _ if rest => None,
            Some("--") => {
                rest = true;
                None
            }
            Some(s) if is_go_long_flag(s) => Some(OsString::from(format!("-{s}"))),
            _ => None,
        };
        out.push(rewritten.unwrap_or(arg));
    }
    out
}

fn is_go_long_flag(s: &str) -> bool {
    let Some(body) = s.strip_prefix('-') else {
        return false;
    };
    let name = body.split('=').next().unwrap_or("");
    !body.starts_with('-')
        && name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        f: FlanneldArgs,
    }

    fn parse(words: &[&str]) -> Result<FlanneldArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("weft-agent").chain(words.iter().copied())).map(|c| c.f)
    }

    fn os(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn healthz_port_and_ip_become_the_healthz_address() {
        let m = parse(&["--healthz-ip=127.0.0.1", "--healthz-port", "8471"])
            .unwrap()
            .map(None)
            .unwrap();
        assert_eq!(m.healthz_addr, Some("127.0.0.1:8471".parse().unwrap()));
        // flanneld's default address is every address.
        let m = parse(&["--healthz-port=8471"]).unwrap().map(None).unwrap();
        assert_eq!(m.healthz_addr, Some("0.0.0.0:8471".parse().unwrap()));
        // Port 0 (flanneld's default) serves nothing; an address alone says so.
        let m = parse(&["--healthz-port=0", "--healthz-ip=127.0.0.1"])
            .unwrap()
            .map(None)
            .unwrap();
        assert_eq!(m.healthz_addr, None);
        assert!(
            m.warnings[0].contains("no effect without --healthz-port"),
            "{:?}",
            m.warnings
        );
        // weft's own flag and flanneld's together are ambiguous.
        let e = parse(&["--healthz-port=8471"])
            .unwrap()
            .map(Some("127.0.0.1:9102".parse().unwrap()))
            .unwrap_err();
        assert!(e.to_string().contains("give one of them"), "{e}");
    }

    #[test]
    fn renew_margin_is_in_minutes() {
        assert_eq!(
            parse(&[]).unwrap().map(None).unwrap().renew_margin,
            Duration::from_secs(3600)
        );
        let m = parse(&["--subnet-lease-renew-margin", "5"]).unwrap().map(None).unwrap();
        assert_eq!(m.renew_margin, Duration::from_secs(300));
        assert!(parse(&["--subnet-lease-renew-margin=0"]).unwrap().map(None).is_err());
        assert!(parse(&["--subnet-lease-renew-margin=-3"]).is_err());
    }

    #[test]
    fn klog_verbosity_maps_to_a_log_level() {
        let level = |w: &[&str]| parse(w).unwrap().map(None).unwrap().log_level;
        assert_eq!(level(&[]), None);
        assert_eq!(level(&["-v=0"]), Some("info"));
        assert_eq!(level(&["-v", "2"]), Some("debug"));
        assert_eq!(level(&["--v=4"]), Some("debug"));
        assert_eq!(level(&["-v=10"]), Some("trace"));
    }

    #[test]
    fn iptables_flags_are_accepted_with_a_warning_where_they_would_matter() {
        let m = parse(&["--iptables-resync=5", "--iptables-forward-rules"])
            .unwrap()
            .map(None)
            .unwrap();
        assert_eq!(m.warnings.len(), 2, "{:?}", m.warnings);
        assert!(m.warnings[1].contains("FORWARD"));
        let m = parse(&["--iptables-forward-rules=false"]).unwrap().map(None).unwrap();
        assert!(m.warnings.is_empty());
    }

    #[test]
    fn what_weft_cannot_do_is_refused_with_what_to_use() {
        let e = parse(&["--kube-subnet-mgr"]).unwrap().map(None).unwrap_err();
        assert!(e.to_string().contains("--etcd-endpoints"), "{e}");
        let e = parse(&["--net-config-path=/etc/kube-flannel/net-conf.json"])
            .unwrap()
            .map(None)
            .unwrap_err();
        assert!(e.to_string().contains("Kubernetes subnet manager"), "{e}");
        let e = parse(&["--public-ipv6=2001:db8::1"]).unwrap().map(None).unwrap_err();
        assert!(e.to_string().contains("IPv4 only"), "{e}");
    }

    #[test]
    fn go_style_single_dash_flags_get_two_dashes() {
        // (word, as clap gets it)
        let words = [
            (
                "-etcd-endpoints=http://192.0.2.2:2379",
                "--etcd-endpoints=http://192.0.2.2:2379",
            ),
            ("-iface", "--iface"),
            ("eth0", "eth0"),
            ("-ip-masq", "--ip-masq"),
            ("-v=2", "-v=2"),
            ("-h", "-h"),
            ("--public-ip=192.0.2.10", "--public-ip=192.0.2.10"),
            ("-", "-"),
            ("--", "--"),
            ("-literal", "-literal"),
        ];
        let (given, wanted): (Vec<&str>, Vec<&str>) = words.into_iter().unzip();
        assert_eq!(go_style_args(os(&given)), os(&wanted));
        // Not names of long flags: a negative number, a one-letter flag, a capital.
        assert_eq!(go_style_args(os(&["-1", "-V", "-Etcd"])), os(&["-1", "-V", "-Etcd"]));
    }
}
