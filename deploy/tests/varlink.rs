//! `serve --varlink`: an independent client (a raw JSON-over-unix-socket
//! exchange from python3's stdlib; Debian 12's systemd has no varlinkctl)
//! lists a pulled image with the digests its layout holds.

use std::process::Command;
use std::time::{Duration, Instant};

use cfs_tests::oci_layout::{tar_archive, write_layout, ImageSpec, LayerBlob, LayerSpec};
use common::{ok, ours};

mod common;

const CLIENT: &str = r#"
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(json.dumps({"method": sys.argv[2], "parameters": json.loads(sys.argv[3])}).encode() + b"\0")
buf = b""
while not buf.endswith(b"\0"):
    chunk = s.recv(65536)
    if not chunk:
        sys.exit("connection closed before a reply")
    buf += chunk
print(buf[:-1].decode())
"#;

fn call(socket: &std::path::Path, method: &str, parameters: &str) -> serde_json::Value {
    let text = ok(Command::new("python3")
        .args(["-c", CLIENT])
        .arg(socket)
        .args([method, parameters]));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn list_reports_the_pulled_image() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let tar = tar_archive(&[("usr/", b""), ("etc/", b""), ("etc/hostname", b"demo")]);
    let layers = vec![LayerSpec {
        tar,
        blob: LayerBlob::Gzip,
    }];
    write_layout(&layout, "v1", &[ImageSpec::linux("amd64", layers)]).unwrap();
    let repo = work.path().join("repo");
    ok(ours(&repo).args(["repo", "init", "--insecure"]));
    ok(ours(&repo).args([
        "image",
        "pull",
        &format!("oci:{}:v1", layout.display()),
        "--name",
        "one",
    ]));

    // The layout's own index and manifest give the expected digests.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let blob = layout
        .join("blobs/sha256")
        .join(manifest_digest.strip_prefix("sha256:").unwrap());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob).unwrap()).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap();

    let socket = work.path().join("images.sock");
    let mut server = ours(&repo)
        .arg("serve")
        .arg("--varlink")
        .arg(&socket)
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !socket.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "no socket");
        std::thread::sleep(Duration::from_millis(50));
    }
    let reply = call(&socket, "org.cfsdeploy.Images.List", "{}");
    let described = call(
        &socket,
        "org.varlink.service.GetInterfaceDescription",
        r#"{"interface":"org.cfsdeploy.Images"}"#,
    );
    server.kill().unwrap();
    server.wait().unwrap();

    let images = reply["parameters"]["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "{reply}");
    assert_eq!(images[0]["name"], "one");
    assert_eq!(images[0]["manifest_digest"], manifest_digest.as_str());
    assert_eq!(images[0]["config_digest"], config_digest);
    let image_id = images[0]["image_id"].as_str().unwrap();
    assert!(matches!(image_id.len(), 64 | 128) && image_id.bytes().all(|b| b.is_ascii_hexdigit()));
    let description = described["parameters"]["description"].as_str().unwrap();
    assert!(description.contains("method List("), "{description}");
}
