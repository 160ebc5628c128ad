//! etcd-client errors → `StoreError`, with the cause spelled out: a TLS or credentials problem is
//! named as such (with the endpoints), rather than left as a bare "transport error".

use crate::store::StoreError;
use std::error::Error as _;
use tonic::Code;

/// What went wrong, for the one message an operator reads. `tls`: whether we speak TLS — with
/// TLS 1.3 a server that refuses our client certificate (or its absence) just closes the
/// connection after the handshake, and the client sees nothing more telling than that.
pub(super) fn store_error(store: &str, what: &str, e: &etcd_client::Error, tls: bool) -> StoreError {
    let cause = chain(e);
    let lower = cause.to_ascii_lowercase();
    let unavailable = |message: String| StoreError::Unavailable {
        store: store.to_string(),
        message,
    };
    let backend = |message: String| StoreError::Backend {
        store: store.to_string(),
        message,
    };
    if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
        return unavailable(format!("{what}: TLS failed: {cause}"));
    }
    // With TLS 1.3 the refusal arrives after the handshake; depending on timing the client sees
    // it as a closed connection, a closed stream or a broken pipe.
    let refused = ["connection closed", "stream closed", "broken pipe", "connection reset"];
    if tls && refused.iter().any(|r| lower.contains(r)) {
        return unavailable(format!(
            "{what}: TLS failed: the server closed the connection after the handshake, which is how \
             etcd refuses a missing or untrusted client certificate (check --etcd-certfile, \
             --etcd-keyfile and the server's --trusted-ca-file): {cause}"
        ));
    }
    if lower.contains("authentication failed") || lower.contains("invalid auth token") {
        return backend(format!(
            "{what}: authentication failed (check --etcd-username/--etcd-password): {cause}"
        ));
    }
    if lower.contains("user name is empty") {
        return backend(format!(
            "{what}: etcd requires authentication (give --etcd-username/--etcd-password): {cause}"
        ));
    }
    match e {
        etcd_client::Error::GRpcStatus(s) => match s.code() {
            Code::Unauthenticated | Code::PermissionDenied => backend(format!("{what}: permission denied: {cause}")),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::Aborted => {
                unavailable(format!("{what}: {cause}"))
            }
            _ => backend(format!("{what}: {cause}")),
        },
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            unavailable(format!("{what}: {cause}"))
        }
        _ => backend(format!("{what}: {cause}")),
    }
}

/// `outer: inner: innermost`, skipping repeats (tonic nests the same text more than once).
/// etcd-client's own error does not expose its source, so the walk starts at what it wraps.
fn chain(e: &etcd_client::Error) -> String {
    let (top, mut src): (String, Option<&(dyn std::error::Error + 'static)>) = match e {
        // A status's Display is a debug dump; its message is what matters.
        etcd_client::Error::GRpcStatus(s) => (s.message().to_string(), s.source()),
        etcd_client::Error::TransportError(t) => (t.to_string(), t.source()),
        etcd_client::Error::IoError(io) => (io.to_string(), io.source()),
        other => (other.to_string(), None),
    };
    let mut parts = vec![top];
    while let Some(s) = src {
        let text = s.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        src = s.source();
    }
    parts.retain(|p| !p.is_empty());
    if parts.is_empty() {
        "unknown error".into()
    } else {
        parts.join(": ")
    }
}

/// Whether a page read was refused for a reason paging handles: the response was larger than
/// the client accepts (tonic: `OutOfRange`, "decoded message length too large"), or the revision
/// it was pinned to was compacted (etcd: `OutOfRange`, "required revision has been compacted").
pub(super) fn refused_page(e: &etcd_client::Error) -> Option<super::paging::Refused> {
    use super::paging::Refused;
    let etcd_client::Error::GRpcStatus(s) = e else {
        return None;
    };
    let message = s.message();
    if message.contains("required revision has been compacted") {
        Some(Refused::Compacted)
    } else if s.code() == Code::OutOfRange && message.contains("message length too large") {
        Some(Refused::TooLarge)
    } else {
        None
    }
}

/// An operation that did not answer in time: the store is as good as unreachable.
pub(super) fn timed_out(store: &str, what: &str, after: std::time::Duration) -> StoreError {
    StoreError::Unavailable {
        store: store.to_string(),
        message: format!("{what}: no answer within {after:?}"),
    }
}
