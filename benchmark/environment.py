"""What a run's numbers depend on besides its configuration, and the names the published files go by — one place
for the facts every run records and every results folder publishes.

The environment fingerprint: float results are bit-for-bit reproducible only on the same CPU instruction set, the
same math libraries (MKL, oneDNN) at the same thread count, the same torch, and on a GPU the same device, CUDA,
cuDNN and TF32 settings. `fingerprint` records those (and the git commit and whether the tree was dirty, which
name the code); `FLOAT_KEYS`' values hash into the tag `fingerprint`, so "same fingerprint" reads "same floats
expected", and a published value that differs there is a failure rather than another machine's rounding.
"""

import functools
import hashlib
import json
import platform
import re
import subprocess
from pathlib import Path

import torch

from benchmark.config import Config

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "results"  # what `report --out` there publishes must come from committed code
CELLS_FILE = "cells.csv"  # a results folder's per-cell values: written by report, read by verify
PROTOCOL_SUFFIX = ".toml"  # a protocol that is not shipped is published beside its cells as <protocol>.toml

# the folders the benchmark writes its outputs to: changes there do not make the code dirty (protocol files there
# do: results/*/<protocol>.toml are inputs)
OUTPUT_DIRS = ("mlruns/", "report/", "results/")
# the highest instruction-set level the CPU offers, by its /proc/cpuinfo flag (x86 `flags`, Arm `Features`):
# which kernels oneDNN and MKL dispatch to, and so the rounding of every matrix product
ISA_LEVELS = (("amx_tile", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse4_2", "SSE4.2"),
              ("sve2", "SVE2"), ("sve", "SVE"), ("asimd", "NEON"))
# what determines the floats: the tags hashed into `fingerprint` (the device's from device_tags; absent on a CPU)
FLOAT_KEYS = ("cpu", "isa", "cpu_capability", "threads", "torch", "mkl", "onednn", "device_name", "cuda_version",
              "cudnn_version", "tf32_matmul", "tf32_cudnn")
# every tag `fingerprint` returns, in the order cells.csv has them
FINGERPRINT_KEYS = (*FLOAT_KEYS, "git_commit", "git_dirty", "fingerprint")


def git_commit(directory: Path = REPO_ROOT) -> str:
    return (_git(["rev-parse", "HEAD"], directory) or "").strip() or "unknown"


def git_dirty(directory: Path = REPO_ROOT) -> str:
    """"True" if the working tree has changes a commit does not hold — tracked files changed, files not ignored and
    not yet added — outside the benchmark's output folders; "False"; "unknown" outside a git checkout."""
    status = _git(["status", "--porcelain", "--untracked-files=all"], directory)
    if status is None:
        return "unknown"
    paths = [line[3:].split(" -> ")[-1].strip('"') for line in status.splitlines()]
    changed = [p for p in paths if not p.startswith(OUTPUT_DIRS) or p.endswith(PROTOCOL_SUFFIX)]
    return str(bool(changed))


def _git(arguments: list[str], directory: Path) -> str | None:
    try:
        out = subprocess.run(["git", *arguments], cwd=directory, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    # not stripped: the first column of `git status --porcelain` is a space for a change not staged (" M path")
    return out.stdout if out.returncode == 0 else None


def device_tags(device: torch.device) -> dict[str, str]:
    """What a cell's numbers depend on on its device: the device and, on a GPU, CUDA, cuDNN and TF32."""
    if device.type != "cuda":
        return {"device_name": platform.processor() or platform.machine()}
    return {"device_name": torch.cuda.get_device_name(device), "cuda_version": str(torch.version.cuda),
            "cudnn_version": str(torch.backends.cudnn.version()),
            "tf32_matmul": str(torch.backends.cuda.matmul.allow_tf32),
            "tf32_cudnn": str(torch.backends.cudnn.allow_tf32)}


@functools.cache
def _cpuinfo() -> tuple[str, str]:
    """/proc/cpuinfo's first model name and flags line ("", "" where there is none: not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", ""

    def first(*keys: str) -> str:
        for key in keys:
            found = re.search(rf"^{key}\s*:\s*(.*)$", text, re.MULTILINE)
            if found:
                return found.group(1).strip()
        return ""

    return first("model name", "Model", "cpu model"), first("flags", "Features")


def isa_level(flags: str) -> str:
    """The highest ISA_LEVELS level among a cpuinfo flags line's flags, "unknown" if none."""
    present = set(flags.split())
    return next((name for flag, name in ISA_LEVELS if flag in present), "unknown")


def library_versions(build_config: str) -> dict[str, str]:
    """MKL's and oneDNN's versions from torch.__config__.show() (torch reports them nowhere else); "none" for a
    build without them."""
    mkl = re.search(r"Math Kernel Library Version (\S+?)(?:-Product)?\s", build_config)
    onednn = re.search(r"(?:MKL-DNN|oneDNN) v(\S+)", build_config)
    return {"mkl": mkl.group(1) if mkl else "none", "onednn": onednn.group(1) if onednn else "none"}


def fingerprint_hash(tags: dict[str, str]) -> str:
    """16 hex digits over the FLOAT_KEYS among tags: equal for two runs whose floats should be equal."""
    same = {key: str(tags[key]) for key in FLOAT_KEYS if key in tags}
    return hashlib.sha256(json.dumps(same, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(device: torch.device) -> dict[str, str]:
    """Every FINGERPRINT_KEYS tag of a run on `device` in this process, as strings (MLflow tags)."""
    model, flags = _cpuinfo()
    libraries = library_versions(torch.__config__.show())
    if not torch.backends.mkldnn.enabled:  # switched off, oneDNN's kernels give way to ATen's: other roundings
        libraries["onednn"] += " (disabled)"
    tags = {"cpu": model or platform.processor() or platform.machine(),
            "isa": isa_level(flags) if flags else "unknown",
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # ATen's own kernels (ATEN_CPU_CAPABILITY)
            "threads": str(torch.get_num_threads()), "torch": torch.__version__, **libraries, **device_tags(device),
            "git_commit": git_commit(), "git_dirty": git_dirty()}
    return {**tags, "fingerprint": fingerprint_hash(tags)}


def differing(a: dict, b: dict) -> list[str]:
    """The FLOAT_KEYS two fingerprints (tags, or rows of cells.csv) disagree on."""
    return [key for key in FLOAT_KEYS if str(a.get(key, "")) != str(b.get(key, ""))]


def inside_results(path: str | Path) -> bool:
    """Whether `path` lies in this checkout's results/ folder (what the repository publishes)."""
    return Path(path).resolve().is_relative_to(RESULTS_DIR.resolve())


def experiment_name(config: Config) -> str:
    d = config.data
    if d.sequence == "permuted":
        return f"p{d.dataset}-{config.protocol}"  # pmnist-paper, pfashion-mnist-quick, …
    if d.sequence == "sequence":
        return f"sequence-{config.protocol}"  # sequence-conv: the datasets are the protocol's
    return f"{d.sequence}-{d.dataset}-{config.protocol}"  # rotated-mnist-rotated-quick, split-mnist-split-quick
