"""Pack an installed collection back into the tarball Galaxy would have served.

Galaxy cannot be reached from the lab, but the `ansible` package on PyPI ships the
releases of the collections dicomsec.hardening needs, installed with their
MANIFEST.json and FILES.json. A collection tarball is those two files plus the files
FILES.json lists, so packing them again gives an artifact `ansible-galaxy collection
install` takes. The `ansible` package leaves out the release's tests, docs and CI files:
FILES.json is written again without them (ansible-galaxy checks each file against its
entry there, and nothing checks FILES.json itself). Every file that is packed is checked
against the SHA-256 the release's FILES.json records: a copy changed after install is
refused instead of being shipped under the release's name.

    python3 repack_collection.py INSTALLED_COLLECTION_DIR OUTPUT.tar.gz
"""

import hashlib
import io
import json
import os
import sys
import tarfile


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def _normalized(info):
    # Owner and mode as ansible-galaxy writes them, so the tarball does not carry the
    # build machine's user.
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
    return info


def repack(src, out):
    with open(os.path.join(src, "MANIFEST.json"), "rb") as handle:
        manifest = json.load(handle)
    with open(os.path.join(src, "FILES.json"), "rb") as handle:
        files = json.load(handle)["files"]
    info = manifest["collection_info"]
    files = [entry for entry in files if entry["name"] not in (".", "") and os.path.lexists(os.path.join(src, entry["name"]))]
    bad = [
        entry["name"]
        for entry in files
        if entry["ftype"] == "file" and _sha256(os.path.join(src, entry["name"])) != entry["chksum_sha256"]
    ]
    if bad:
        raise SystemExit(
            "%s.%s %s in %s differs from its FILES.json (%s): refusing to pack it"
            % (info["namespace"], info["name"], info["version"], src, ", ".join(bad[:5]))
        )
    with tarfile.open(out, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        tar.add(os.path.join(src, "MANIFEST.json"), arcname="MANIFEST.json", filter=_normalized)
        listing = json.dumps({"files": [{"name": ".", "ftype": "dir", "chksum_type": None,
                                         "chksum_sha256": None, "format": 1}] + files,
                              "format": 1}, indent=4).encode()
        member = _normalized(tarfile.TarInfo("FILES.json"))
        member.size = len(listing)
        tar.addfile(member, io.BytesIO(listing))
        for entry in files:
            tar.add(os.path.join(src, entry["name"]), arcname=entry["name"], recursive=False, filter=_normalized)
    return "%s.%s %s" % (info["namespace"], info["name"], info["version"])


def main(argv):
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    print("repacked %s into %s" % (repack(argv[1], argv[2]), argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
