//! The result of `lab check`: the full host × host ping matrix over overlay addresses and, in a
//! lab with pods, the pod probes (pod → pod across hosts, pod → hosts, pod → outside).

use std::fmt;
use std::net::Ipv4Addr;

/// One source → destination probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// The host itself (not probed).
    Own,
    Answered,
    Unanswered,
    /// The destination has no lease yet, so no overlay address to probe.
    NoLease,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub hosts: Vec<String>,
    /// Overlay address per host (its lease's network address), in `hosts` order.
    pub overlay: Vec<Option<Ipv4Addr>>,
    /// `cells[src][dst]`.
    pub cells: Vec<Vec<Cell>>,
    /// Pod probes (empty without pods).
    pub pods: Vec<PodProbe>,
}

/// What a pod probe proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProbeKind {
    /// A pod reaches a pod on another host (through the overlay, or a direct route).
    PodToPod,
    /// A pod reaches a host's overlay address (its own host's and every other's).
    PodToHost,
    /// A pod reaches `NAME-outside`, which has no route to the overlay: only masquerade helps.
    PodToOutside,
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeKind::PodToPod => "pod -> pod",
            ProbeKind::PodToHost => "pod -> host",
            ProbeKind::PodToOutside => "pod -> outside",
        })
    }
}

/// One echo from a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodProbe {
    pub kind: ProbeKind,
    /// The pod's namespace.
    pub from: String,
    /// What was probed, in words (`h2-p1`, `h3`, `outside`).
    pub to: String,
    pub ip: Ipv4Addr,
    pub answered: bool,
}

impl CheckReport {
    /// True if every pair and every pod probe answered.
    pub fn ok(&self) -> bool {
        self.failures().is_empty() && self.pods.iter().all(|p| p.answered)
    }

    /// The pod probes of one kind that got no answer.
    pub fn pod_failures(&self, kind: ProbeKind) -> Vec<&PodProbe> {
        self.pods.iter().filter(|p| p.kind == kind && !p.answered).collect()
    }

    /// `(kind, answered, probed)` per kind present.
    pub fn pod_summary(&self) -> Vec<(ProbeKind, usize, usize)> {
        let mut kinds: Vec<ProbeKind> = self.pods.iter().map(|p| p.kind).collect();
        kinds.sort();
        kinds.dedup();
        kinds
            .into_iter()
            .map(|k| {
                let of_kind = self.pods.iter().filter(|p| p.kind == k);
                let total = of_kind.clone().count();
                (k, of_kind.filter(|p| p.answered).count(), total)
            })
            .collect()
    }

    /// `(src, dst, why)` for every pair that did not answer.
    pub fn failures(&self) -> Vec<(String, String, Cell)> {
        let mut v = Vec::new();
        for (i, row) in self.cells.iter().enumerate() {
            for (j, c) in row.iter().enumerate() {
                if matches!(c, Cell::Unanswered | Cell::NoLease) {
                    v.push((self.hosts[i].clone(), self.hosts[j].clone(), *c));
                }
            }
        }
        v
    }
}

impl fmt::Display for CheckReport {
    /// A matrix (rows: from, columns: to; `.` ok, `X` no answer, `?` no lease, `-` self) for up to
    /// 30 hosts, then the failures in words.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.hosts.len() <= 30 {
            let w = self.hosts.iter().map(String::len).max().unwrap_or(2).max(3);
            let lw = w.max("from\\to".len());
            write!(f, "{:lw$} ", "from\\to")?;
            for h in &self.hosts {
                write!(f, " {h:>w$}")?;
            }
            writeln!(f)?;
            for (i, row) in self.cells.iter().enumerate() {
                write!(f, "{:lw$} ", self.hosts[i])?;
                for c in row {
                    let s = match c {
                        Cell::Own => "-",
                        Cell::Answered => ".",
                        Cell::Unanswered => "X",
                        Cell::NoLease => "?",
                    };
                    write!(f, " {s:>w$}")?;
                }
                writeln!(f)?;
            }
        }
        self.fmt_hosts(f)?;
        for (kind, answered, total) in self.pod_summary() {
            if answered == total {
                writeln!(f, "{kind}: all {total} answer")?;
            } else {
                writeln!(f, "{kind}: {} of {total} fail:", total - answered)?;
                for p in self.pod_failures(kind).iter().take(20) {
                    writeln!(f, "  {} -> {} ({}): no answer", p.from, p.to, p.ip)?;
                }
            }
        }
        Ok(())
    }
}

impl CheckReport {
    /// The host matrix's summary line and failures.
    fn fmt_hosts(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failures = self.failures();
        let pairs = self.hosts.len() * self.hosts.len().saturating_sub(1);
        if failures.is_empty() {
            writeln!(f, "all {pairs} pairs answer")
        } else {
            writeln!(f, "{} of {pairs} pairs fail:", failures.len())?;
            for (src, dst, why) in failures.iter().take(50) {
                let j = self.hosts.iter().position(|h| h == dst).unwrap_or(0);
                match (why, self.overlay.get(j).copied().flatten()) {
                    (Cell::NoLease, _) | (_, None) => writeln!(f, "  {src} -> {dst}: {dst} has no lease")?,
                    (_, Some(ip)) => writeln!(f, "  {src} -> {dst} ({ip}): no answer")?,
                }
            }
            if failures.len() > 50 {
                writeln!(f, "  … and {} more", failures.len() - 50)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_failures() {
        let r = CheckReport {
            hosts: vec!["h1".into(), "h2".into()],
            overlay: vec![Some(Ipv4Addr::new(10, 0, 1, 0)), None],
            cells: vec![vec![Cell::Own, Cell::NoLease], vec![Cell::Unanswered, Cell::Own]],
            pods: Vec::new(),
        };
        assert!(!r.ok());
        let text = r.to_string();
        assert!(text.contains("2 of 2 pairs fail"), "{text}");
        assert!(text.contains("h2 -> h1 (10.0.1.0): no answer"), "{text}");
        assert!(text.contains("h1 -> h2: h2 has no lease"), "{text}");
    }

    #[test]
    fn reports_pod_failures_by_kind() {
        let probe = |kind, to: &str, answered| PodProbe {
            kind,
            from: "w-h1-p1".into(),
            to: to.into(),
            ip: Ipv4Addr::new(198, 19, 255, 10),
            answered,
        };
        let r = CheckReport {
            hosts: vec!["h1".into()],
            overlay: vec![Some(Ipv4Addr::new(10, 0, 1, 0))],
            cells: vec![vec![Cell::Own]],
            pods: vec![
                probe(ProbeKind::PodToPod, "h2-p1", true),
                probe(ProbeKind::PodToOutside, "outside", false),
            ],
        };
        assert!(!r.ok());
        let text = r.to_string();
        assert!(text.contains("pod -> pod: all 1 answer"), "{text}");
        assert!(text.contains("pod -> outside: 1 of 1 fail"), "{text}");
        assert!(text.contains("w-h1-p1 -> outside (198.19.255.10): no answer"), "{text}");
    }
}
