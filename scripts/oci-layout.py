#!/usr/bin/env python3
"""Writes an OCI image layout from directories, one gzip layer each.

Usage: oci-layout.py LAYOUT TAG DIR... [-- TAG DIR...]... [--gzip-level N]
Adds each image to LAYOUT/index.json under its TAG (replacing an old TAG)
and prints its manifest digest. Layers are reproducible tars (sorted,
owner 0, the files' own mtimes); a directory named by several images is
archived once, so images built on one base layer cost one base.
"""
import hashlib, json, os, subprocess, sys, tempfile

def main():
    args = sys.argv[1:]
    level = "6"
    if "--gzip-level" in args:
        i = args.index("--gzip-level")
        level = args[i + 1]
        del args[i:i + 2]
    layout, rest = args[0], args[1:]
    images = []
    while rest:
        group = rest[:rest.index("--")] if "--" in rest else rest
        rest = rest[len(group) + 1:]
        images.append((group[0], group[1:]))
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def blob(data):
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        return {"digest": "sha256:" + digest, "size": len(data)}

    made = {}
    def layer_of(d):
        if d in made:
            return made[d]
        with tempfile.TemporaryFile() as tar:
            subprocess.run(["tar", "-C", d, "--sort=name", "--owner=0", "--group=0",
                            "--numeric-owner", "--xattrs", "--format=pax", "-cf", "-", "."],
                           stdout=tar, check=True)
            tar.seek(0)
            data = tar.read()
        diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
        gz = subprocess.run(["gzip", "-n", "-" + level, "-c"], input=data,
                            stdout=subprocess.PIPE, check=True).stdout
        layer = blob(gz)
        layer["mediaType"] = "application/vnd.oci.image.layer.v1.tar+gzip"
        made[d] = (diff_id, layer)
        return made[d]

    for tag, dirs in images:
        add_image(layout, tag, [layer_of(d) for d in dirs], blob)

def add_image(layout, tag, layers, blob):
    diff_ids = [diff_id for diff_id, _ in layers]
    layers = [layer for _, layer in layers]
    config = blob(json.dumps({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids}, "config": {}}).encode())
    config["mediaType"] = "application/vnd.oci.image.config.v1+json"
    manifest = blob(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": layers}).encode())
    manifest["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
    manifest["annotations"] = {"org.opencontainers.image.ref.name": tag}
    index_path = os.path.join(layout, "index.json")
    index = {"schemaVersion": 2, "manifests": []}
    if os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
    index["manifests"] = [m for m in index["manifests"]
                          if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag]
    index["manifests"].append(manifest)
    with open(index_path, "w") as f:
        json.dump(index, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    print(manifest["digest"])

main()
