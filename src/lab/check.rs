//! The result of `lab check`: the full host × host ping matrix over overlay addresses.

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
}

impl CheckReport {
    /// True if every pair answered.
    pub fn ok(&self) -> bool {
        self.failures().is_empty()
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
        };
        assert!(!r.ok());
        let text = r.to_string();
        assert!(text.contains("2 of 2 pairs fail"), "{text}");
        assert!(text.contains("h2 -> h1 (10.0.1.0): no answer"), "{text}");
        assert!(text.contains("h1 -> h2: h2 has no lease"), "{text}");
    }
}
