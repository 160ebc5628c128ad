//! Asking an L2 network's agent over its Unix socket (one request, one reply; see
//! [`crate::l2ipam::protocol`]). Plain blocking I/O: the plugin is a short-lived process.

use super::error::CniError;
use crate::l2ipam::protocol::{Op, Registration, Reply, Request, MAX_REPLY_BYTES};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Longer than the agent's own limit per request (20 s), so its answer arrives first.
const TIMEOUT: Duration = Duration::from_secs(30);

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Add => "ADD",
        Op::Del => "DEL",
        Op::Check => "CHECK",
    }
}

/// Sends `req` to the agent of `network` listening on `socket`; its registration on success.
pub fn call(socket: &Path, network: &str, req: &Request) -> Result<Option<Registration>, CniError> {
    let unreachable = |e: std::io::Error| {
        if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) {
            CniError::TryAgainLater(format!(
                "cannot reach the weft agent of L2 network {network} at {}: {e} — is the weft agent running on this host?",
                socket.display()
            ))
        } else {
            CniError::Io {
                action: "talk to the weft agent on",
                path: socket.into(),
                source: e,
                hint: " — the socket is root's only: the runtime must run CNI plugins as root".into(),
            }
        }
    };
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    let exchange = |stream: &mut UnixStream| -> std::io::Result<Vec<u8>> {
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        stream.write_all(req.to_line().as_bytes())?;
        stream.shutdown(std::net::Shutdown::Write)?;
        let mut buf = Vec::new();
        stream.take(MAX_REPLY_BYTES as u64).read_to_end(&mut buf)?;
        Ok(buf)
    };
    let buf = exchange(&mut stream).map_err(|e| {
        if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
            CniError::TryAgainLater(format!(
                "the weft agent of L2 network {network} did not answer within {TIMEOUT:?}"
            ))
        } else {
            unreachable(e)
        }
    })?;
    let reply = decode(&buf, network)?;
    match reply {
        Reply {
            ok: true, registration, ..
        } => Ok(registration),
        Reply { error, retry, .. } => {
            let msg = error.unwrap_or_else(|| "no reason given".into());
            if retry {
                Err(CniError::TryAgainLater(format!(
                    "the weft agent of L2 network {network} cannot answer {} now: {msg}",
                    op_name(req.op)
                )))
            } else {
                Err(CniError::Refused {
                    network: network.into(),
                    op: op_name(req.op),
                    msg,
                })
            }
        }
    }
}

/// The agent's reply (pure, for tests).
pub fn decode(buf: &[u8], network: &str) -> Result<Reply, CniError> {
    serde_json::from_slice(buf.trim_ascii()).map_err(|e| CniError::Decode {
        what: format!("the reply of the weft agent of L2 network {network}"),
        problem: format!("{e}: {:?}", String::from_utf8_lossy(&buf[..buf.len().min(200)])),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn del() -> Request {
        Request {
            op: Op::Del,
            container: "c".into(),
            ifname: "eth0".into(),
            mac: None,
            ip: None,
        }
    }

    #[test]
    fn no_agent_is_try_again_later_naming_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("l2.sock");
        let e = call(&sock, "l2", &del()).unwrap_err();
        assert_eq!(e.code(), 11);
        assert!(e.to_string().contains("is the weft agent running"), "{e}");
        assert!(e.to_string().contains(&sock.display().to_string()), "{e}");
    }

    #[test]
    fn replies_are_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("l2.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let answers = [
            Reply::failed("10.70.0.5 is already taken", false).to_line(),
            Reply::failed("store down", true).to_line(),
            "garbage".to_string(),
            Reply::done(None).to_line(),
        ];
        let server = std::thread::spawn(move || {
            for a in answers {
                let (mut s, _) = listener.accept().unwrap();
                let mut req = String::new();
                s.read_to_string(&mut req).unwrap();
                assert!(req.ends_with('\n'));
                s.write_all(a.as_bytes()).unwrap();
            }
        });
        let e = call(&sock, "l2", &del()).unwrap_err();
        assert_eq!(
            (e.code(), e.to_string()),
            (
                100,
                "weft agent of L2 network l2 refused DEL: 10.70.0.5 is already taken".into()
            )
        );
        assert_eq!(call(&sock, "l2", &del()).unwrap_err().code(), 11);
        assert_eq!(call(&sock, "l2", &del()).unwrap_err().code(), 6);
        assert_eq!(call(&sock, "l2", &del()).unwrap(), None);
        server.join().unwrap();
    }
}
