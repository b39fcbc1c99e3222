"""The guest image: a small initramfs from Debian's busybox-static and dropbear.

Built from the recipe in vm-images/: its /init, and `packages`, the Debian
packages the programs come from (scripts/setup.sh installs the same list);
keyed by the recipe and the binaries' hashes. Each image gets its own SSH client key
(private key 0600, never in git) and dropbear host key; the host's public key
is written to a known_hosts file the client pins. The KVM selftests go in a
second cpio archive per build; the kernel unpacks concatenated archives, so the
base image does not change when only the kernel does.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import paramiko

from . import cache, proc
from .build import BuildResult
from .errors import InfraError, UsageError
from .guest import HOST_ALIAS

log = logging.getLogger("kvm-harness")

RECIPE_DIR = Path(__file__).resolve().parent.parent / "vm-images"
RECIPE_VERSION = 2
BUSYBOX = Path("/bin/busybox")
DROPBEAR = Path("/usr/sbin/dropbear")
DROPBEARKEY = Path("/usr/bin/dropbearkey")
# trace-cmd extract copies the kernel's binary ring buffer into a trace.dat:
# no text formatting in the guest (that cost ~10 s per workload under TCG).
TRACE_CMD = Path("/usr/bin/trace-cmd")


def recipe_packages(packages_file: Path = RECIPE_DIR / "packages") -> dict[Path, str]:
    """vm-images/packages: `<package> <program>...` lines (# comments) -> {program: package}."""
    programs: dict[Path, str] = {}
    for raw in packages_file.read_text().splitlines():
        words = raw.split("#", 1)[0].split()
        for program in words[1:]:
            programs[Path(program)] = words[0]
    return programs


@dataclass
class Image:
    key: str
    dir: Path

    @property
    def base_cpio(self) -> Path:
        return self.dir / "base.cpio.gz"

    @property
    def client_key(self) -> Path:
        return self.dir / "id_ecdsa"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"


def _recipe_inputs() -> dict[str, object]:
    programs = recipe_packages()
    for tool in (BUSYBOX, DROPBEAR, DROPBEARKEY, TRACE_CMD):
        if tool not in programs:
            raise InfraError(f"{tool} is not in {RECIPE_DIR / 'packages'}: the image recipe and image.py disagree")
    for tool, pkg in programs.items():
        if not tool.exists():
            raise UsageError(f"{tool} is missing: install {pkg} (`make setup`)")
    init = RECIPE_DIR / "init"
    return {"recipe": RECIPE_VERSION, "init": cache.sha256_file(init),
            "busybox": cache.sha256_file(BUSYBOX), "dropbear": cache.sha256_file(DROPBEAR),
            "trace-cmd": cache.sha256_file(TRACE_CMD)}


def _busybox_applets() -> list[str]:
    r = proc.run([str(BUSYBOX), "--list-full"])
    if r.returncode != 0:
        raise InfraError(f"busybox --list-full failed: {r.stderr.strip()}")
    return [ln.strip() for ln in r.stdout.splitlines() if ln.strip()]


def _shared_libs(binary: Path) -> list[Path]:
    r = proc.run(["ldd", str(binary)])
    libs = []
    for line in r.stdout.splitlines():
        m = re.search(r"(/\S+) \(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


def _write_cpio(root: Path, out: Path) -> None:
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    listing = "\n".join(["."] + names) + "\n"
    r = proc.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0", "-O", str(out.with_suffix(""))],
                 cwd=root, input_text=listing)
    if r.returncode != 0:
        raise InfraError(f"cpio failed for {root}: {r.stderr.strip()}")
    raw = out.with_suffix("")
    with open(raw, "rb") as fin, gzip.GzipFile(out, "wb", mtime=0) as fout:
        shutil.copyfileobj(fin, fout)
    raw.unlink()


def build_image(root: Path) -> Image:
    inputs = _recipe_inputs()
    key = cache.key_of(inputs)
    final = root / "images" / key
    if (final / "image.json").exists():
        return Image(key, final)
    with cache.locked(root / "images" / f"{key}.lock"):
        if (final / "image.json").exists():
            return Image(key, final)
        log.info("building guest image %s", key)
        with cache.publishing(final) as out:
            stage = out / "stage"
            for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc/dropbear", "root/.ssh", "proc", "sys",
                      "dev", "tmp", "run", "var/log", "lib64"):
                (stage / d).mkdir(parents=True, exist_ok=True)
            shutil.copy2(RECIPE_DIR / "init", stage / "init")
            shutil.copy2(BUSYBOX, stage / "bin/busybox")
            # The applet links are made here, not by `busybox --install` at boot
            # (that costs ~0.1 s of guest time under TCG on every boot).
            for applet in _busybox_applets():
                link = stage / applet.lstrip("/")
                if not link.exists():
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to("/bin/busybox")
            # Debian's dropbear and trace-cmd are dynamically linked: their libraries come along.
            for binary in (DROPBEAR, TRACE_CMD):
                shutil.copy2(binary, stage / str(binary).lstrip("/"))
                for lib in _shared_libs(binary):
                    dest = stage / str(lib).lstrip("/")
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(lib.resolve(), dest)
            (stage / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
            (stage / "etc/group").write_text("root:x:0:\n")
            (stage / "etc/shells").write_text("/bin/sh\n")
            # Host key made here, once per image: the client pins its public half.
            hk = stage / "etc/dropbear/dropbear_ed25519_host_key"
            r = proc.run([str(DROPBEARKEY), "-t", "ed25519", "-f", str(hk)])
            if r.returncode != 0:
                raise InfraError(f"dropbearkey failed: {r.stderr.strip()}")
            pub = next((ln for ln in r.stdout.splitlines() if ln.startswith("ssh-ed25519 ")), None)
            if pub is None:
                raise InfraError(f"dropbearkey printed no public key: {r.stdout!r}")
            keytype, keyb64 = pub.split()[:2]
            (out / "known_hosts").write_text(f"{HOST_ALIAS} {keytype} {keyb64}\n")
            # Client key: private half stays on the host, 0600.
            ck = paramiko.ECDSAKey.generate(bits=256)
            old = os.umask(0o077)
            try:
                ck.write_private_key_file(str(out / "id_ecdsa"))
            finally:
                os.umask(old)
            os.chmod(out / "id_ecdsa", 0o600)
            authorized = f"{ck.get_name()} {ck.get_base64()} kvm-harness\n"
            (out / "id_ecdsa.pub").write_text(authorized)
            (stage / "root/.ssh/authorized_keys").write_text(authorized)
            os.chmod(stage / "root/.ssh", 0o700)
            os.chmod(stage / "root/.ssh/authorized_keys", 0o600)
            os.chmod(stage / "root", 0o700)
            _write_cpio(stage, out / "base.cpio.gz")
            shutil.rmtree(stage)
            cache.write_json(out / "image.json", {"key": key, "inputs": inputs})
    return Image(key, final)


def initrd_for(image: Image, build: BuildResult, root: Path) -> Path:
    """base image + this build's selftests, concatenated (the kernel unpacks both)."""
    path = root / "images" / f"{image.key}+{build.key}.cpio.gz"
    if path.exists():
        return path
    tmp = Path(tempfile.mkdtemp(prefix=".stage-", dir=root / "images"))
    try:
        stage = tmp / "stage"
        (stage / "bin").mkdir(parents=True)
        for t in sorted(build.selftests.iterdir()):
            shutil.copy2(t, stage / "bin" / t.name)
        _write_cpio(stage, tmp / "selftests.cpio.gz")
        part = tmp / "initrd.cpio.gz"
        with open(part, "wb") as f:
            for p in (image.base_cpio, tmp / "selftests.cpio.gz"):
                with open(p, "rb") as src:
                    shutil.copyfileobj(src, f)
        os.replace(part, path)  # atomic: a reader sees the whole file or none
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
