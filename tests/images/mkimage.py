#!/usr/bin/env python3
"""mkimage.py NAME:TAG OUT.tar ROOTFS_DIR ENTRYPOINT_JSON [CMD_JSON] [USER]

Writes a one-layer OCI image archive of ROOTFS_DIR that `ctr images import` takes (the
io.containerd.image.name annotation names it): no registry and no image builder needed.
CMD_JSON may be empty (no CMD). USER is the image's user (uid[:gid]), default root.
The archive is reproducible: sorted entries, owner root, mtime 0.
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile


def layer_of(rootfs):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for root, dirs, files in os.walk(rootfs):
            dirs.sort()
            files.sort()
            for name in dirs + files:
                path = os.path.join(root, name)
                info = tar.gettarinfo(path, os.path.relpath(path, rootfs))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mtime = 0
                if info.isfile():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return buf.getvalue()


def main():
    if len(sys.argv) < 5:
        sys.exit(__doc__)
    name, out, rootfs, entrypoint = sys.argv[1:5]
    cmd = sys.argv[5] if len(sys.argv) > 5 else ""
    user = sys.argv[6] if len(sys.argv) > 6 else ""
    if ":" not in name.rsplit("/", 1)[-1]:
        sys.exit(f"image name {name!r} has no tag")
    layer_tar = layer_of(rootfs)
    layer = gzip.compress(layer_tar, compresslevel=1, mtime=0)
    config = {
        "Entrypoint": json.loads(entrypoint),
        "Env": ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"],
        "WorkingDir": "/",
    }
    if cmd:
        config["Cmd"] = json.loads(cmd)
    if user:
        config["User"] = user
    image_config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
    }).encode()
    blobs = {}

    def blob(data, media_type):
        digest = hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media_type, "digest": "sha256:" + digest, "size": len(data)}

    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob(image_config, "application/vnd.oci.image.config.v1+json"),
        "layers": [blob(layer, "application/vnd.oci.image.layer.v1.tar+gzip")],
    }).encode()
    manifest_desc = blob(manifest, "application/vnd.oci.image.manifest.v1+json")
    manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
    manifest_desc["annotations"] = {
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
    }
    index = json.dumps({"schemaVersion": 2, "manifests": [manifest_desc]}).encode()
    with tarfile.open(out, "w") as tar:
        def add(path, data):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", index)
        for digest, data in blobs.items():
            add("blobs/sha256/" + digest, data)
    print(out, name, manifest_desc["digest"])


if __name__ == "__main__":
    main()
