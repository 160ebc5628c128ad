//! TLS with client certificates and username/password against a real etcd on 127.0.0.1: what
//! works works, and what is wrong gives one clear error naming the endpoint and the cause.
//! Certificates are made with the `openssl` CLI in a tempdir.

mod common;

use common::etcd::Etcd;
use std::path::{Path, PathBuf};
use std::process::Command;
use weft::store::etcd::EtcdConfig;
use weft::store::{self, StoreConfig};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, and a certificate `name` signed by it with `san` (e.g. `IP:127.0.0.1`).
fn ca(dir: &Path, ca: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca}"),
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
        ],
    );
}

fn cert(dir: &Path, ca: &str, name: &str, san: &str) -> (PathBuf, PathBuf) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!(
            "subjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
        ),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
    (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")))
}

#[tokio::test]
async fn tls_with_client_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    ca(d, "ca");
    ca(d, "otherca");
    let (server, server_key) = cert(d, "ca", "server", "IP:127.0.0.1");
    let (client, client_key) = cert(d, "ca", "client", "DNS:weft");
    let (stranger, stranger_key) = cert(d, "otherca", "stranger", "DNS:weft");
    let ca_pem = d.join("ca.pem");
    let s = |p: &Path| p.display().to_string();
    let etcd = Etcd::start_with(
        "https",
        vec![
            "--cert-file".into(),
            s(&server),
            "--key-file".into(),
            s(&server_key),
            "--client-cert-auth".into(),
            "--trusted-ca-file".into(),
            s(&ca_pem),
        ],
        Some((ca_pem.clone(), client.clone(), client_key.clone())),
    );
    let cfg = |ca: &Path, cert: &Path, key: &Path| {
        StoreConfig::Etcd(EtcdConfig {
            cafile: Some(ca.to_path_buf()),
            certfile: Some(cert.to_path_buf()),
            keyfile: Some(key.to_path_buf()),
            ..EtcdConfig::from_endpoints(&etcd.endpoint)
        })
    };

    let good = store::open(&cfg(&ca_pem, &client, &client_key)).unwrap();
    good.put("/coreos.com/network/config", "{}")
        .await
        .expect("TLS with a client cert");
    assert_eq!(good.list("/coreos.com/").await.unwrap().entries.len(), 1);

    // A client certificate from a CA the server does not trust.
    let err = store::open(&cfg(&ca_pem, &stranger, &stranger_key))
        .unwrap()
        .list("/")
        .await
        .unwrap_err()
        .to_string();
    eprintln!("untrusted client cert: {err}");
    assert!(err.contains(&etcd.endpoint.replace("https://", "")), "{err}");
    assert!(err.contains("TLS"), "{err}");

    // A server certificate we do not trust (wrong --etcd-cafile).
    let err = store::open(&cfg(&d.join("otherca.pem"), &client, &client_key))
        .unwrap()
        .list("/")
        .await
        .unwrap_err()
        .to_string();
    eprintln!("untrusted server cert: {err}");
    assert!(err.contains(&etcd.endpoint.replace("https://", "")), "{err}");
    assert!(
        err.contains("TLS") && err.to_lowercase().contains("certificate"),
        "{err}"
    );

    // No client certificate at all.
    let no_cert = StoreConfig::Etcd(EtcdConfig {
        cafile: Some(ca_pem.clone()),
        ..EtcdConfig::from_endpoints(&etcd.endpoint)
    });
    let err = store::open(&no_cert).unwrap().list("/").await.unwrap_err().to_string();
    eprintln!("no client cert: {err}");
    assert!(err.contains("TLS"), "{err}");

    // A missing file is named with its flag, before any connection.
    let err = store::open(&cfg(&d.join("nope.pem"), &client, &client_key))
        .err()
        .expect("missing CA file")
        .to_string();
    assert!(err.contains("--etcd-cafile") && err.contains("nope.pem"), "{err}");
}

#[tokio::test]
async fn username_and_password() {
    let etcd = Etcd::start();
    etcd.ctl_ok(&["user", "add", "root:rootpw"]);
    etcd.ctl_ok(&["user", "grant-role", "root", "root"]);
    etcd.ctl_ok(&["auth", "enable"]);
    let with = |user: &str, pw: &str| {
        StoreConfig::Etcd(EtcdConfig {
            username: Some(user.into()),
            password: Some(pw.into()),
            ..EtcdConfig::from_endpoints(&etcd.endpoint)
        })
    };
    let good = store::open(&with("root", "rootpw")).unwrap();
    good.put("/coreos.com/network/config", "{}")
        .await
        .expect("right password");
    good.create(
        "/coreos.com/network/subnets/10.0.1.0-24",
        "{}",
        std::time::Duration::from_secs(30),
    )
    .await
    .unwrap()
    .expect("leases work with auth");

    let err = store::open(&with("root", "wrong"))
        .unwrap()
        .list("/")
        .await
        .unwrap_err()
        .to_string();
    eprintln!("wrong password: {err}");
    assert!(err.contains(&etcd.endpoint), "{err}");
    assert!(err.contains("authentication failed"), "{err}");
    assert!(!err.contains("wrong"), "the password is never shown: {err}");

    // Without credentials at all: refused, and said so.
    let anon = store::open(&StoreConfig::Etcd(EtcdConfig::from_endpoints(&etcd.endpoint))).unwrap();
    let err = anon.put("/x", "1").await.unwrap_err().to_string();
    eprintln!("no credentials: {err}");
    assert!(err.contains(&etcd.endpoint), "{err}");
    assert!(
        err.contains("permission denied") || err.contains("user name is empty"),
        "{err}"
    );
}
