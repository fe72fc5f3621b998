"""What this machine can run, checked for real: the facts behind ``rtk doctor``.

Every check does the thing it reports on where it can: a matrix product on each GPU in fp16
and bf16, a convolution through cuDNN, a one-node ONNX model run on each ONNX Runtime provider
(a provider that falls back to the CPU is ``failed``: ORT itself only logs it). Missing
things are findings, not errors: the report is what a bug report quotes.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from toolkit import __version__

Status = Literal["ok", "missing", "failed"]
MATMUL_SIZE = 2048  # the ceiling's matrix size everywhere in rtk (analysis.latency)
MATMUL_REPEATS = 2  # keeps the measurement under a second on two AVX2 cores


@dataclass(frozen=True)
class Check:
    section: str  # cpu, torch, onnxruntime, openvino, view, data
    name: str  # unique within a report
    status: Status
    detail: str


@dataclass(frozen=True)
class DoctorReport:
    rtk_version: str
    python: str
    platform: str
    checks: list[Check]


def diagnose() -> DoctorReport:
    """Run every check; none raises: a check that breaks is reported as ``failed``."""
    groups: list[tuple[str, Callable[[], list[Check]]]] = [
        ("cpu", cpu_checks),
        ("torch", torch_checks),
        ("onnxruntime", onnxruntime_checks),
        ("openvino", openvino_checks),
        ("view", view_checks),
        ("data", data_checks),
    ]
    checks: list[Check] = []
    for section, run in groups:
        try:
            checks += run()
        except Exception as exc:  # one broken library must not hide the other rows
            checks.append(Check(section, section, "failed", f"{type(exc).__name__}: {exc}"))
    return DoctorReport(
        rtk_version=__version__,
        python=sys.version.split()[0],
        platform=platform.platform(),
        checks=checks,
    )


# --- CPU -------------------------------------------------------------------------------------


def cpu_checks() -> list[Check]:
    import torch

    from analysis.latency import matmul_gflops
    from toolkit.training import device
    from toolkit.training.device import cpu_bf16_support, cpu_description, cpu_flags

    cpuinfo_path = device.CPUINFO
    cpuinfo = cpuinfo_path.read_text() if cpuinfo_path.is_file() else ""
    flags = cpu_flags(cpuinfo)
    checks = [Check("cpu", "CPU", "ok", cpu_description())]
    checks.append(
        Check("cpu", "AVX2", "ok", "yes")
        if "avx2" in flags
        else Check("cpu", "AVX2", "missing", "no AVX2 in the CPU flags")
    )
    if "avx512f" in flags:
        extras = {"VNNI": "avx512_vnni", "BF16": "avx512_bf16", "AMX": "amx_tile"}
        have = ", ".join(
            f"{label} {'yes' if flag in flags else 'no'}" for label, flag in extras.items()
        )
        checks.append(Check("cpu", "AVX-512", "ok", f"yes ({have})"))
    else:
        vnni = "AVX-VNNI yes" if "avx_vnni" in flags else "no VNNI either: INT8 gains less"
        checks.append(Check("cpu", "AVX-512", "missing", f"no ({vnni})"))
    omp = os.environ.get("OMP_NUM_THREADS", "unset")
    checks.append(
        Check(
            "cpu",
            "torch threads",
            "ok",
            f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op "
            f"(OMP_NUM_THREADS {omp})",
        )
    )
    bf16 = cpu_bf16_support()
    checks.append(
        Check(
            "cpu",
            "native bf16",
            "ok" if bf16.native else "missing",
            f"{'yes' if bf16.native else 'no'} ({bf16.source}): "
            + (
                "--amp and the fast recipe train in bf16"
                if bf16.native
                else "training stays fp32 (--amp refused)"
            ),
        )
    )
    fp32 = matmul_gflops(MATMUL_SIZE, MATMUL_REPEATS)
    rates = [("fp32 matmul", fp32, "compare only within this machine")]
    if bf16.native:  # emulated bf16 is slow, and rtk never trains in it
        rate = matmul_gflops(MATMUL_SIZE, MATMUL_REPEATS, dtype=torch.bfloat16)
        rates.append(("bf16 matmul", rate, f"{rate / fp32:.2f}x fp32"))
    for name, rate, note in rates:
        checks.append(
            Check(
                "cpu",
                name,
                "ok",
                f"{rate:,.0f} GFLOP/s ({MATMUL_SIZE}x{MATMUL_SIZE}, best of {MATMUL_REPEATS}; "
                f"{note})",
            )
        )
    return checks


# --- PyTorch and CUDA ------------------------------------------------------------------------


def _nvidia_driver() -> str | None:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.split()
    return lines[0] if out.returncode == 0 and lines else None


def _why_no_cuda(torch: Any) -> str:
    """torch.cuda.is_available() says only False; initialising CUDA says why."""
    try:
        torch.cuda.init()
    except Exception as exc:
        text = str(exc).strip()
        # The first sentence names the cause ("Found no NVIDIA driver on your system").
        return text.split(". ")[0].splitlines()[0] if text else type(exc).__name__
    return "torch.cuda.is_available() is False"


def _gpu_check(torch: Any, index: int) -> Check:
    props = torch.cuda.get_device_properties(index)
    with torch.cuda.device(index):
        # Native only: emulated bf16 runs, but slower than fp16 (what AMP must not pick).
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    dtypes = [torch.float16] + ([torch.bfloat16] if bf16 else [])
    try:
        for dtype in dtypes:
            a = torch.ones(64, 64, device=f"cuda:{index}", dtype=dtype)
            if float((a @ a)[0, 0]) != 64.0:
                raise RuntimeError(f"a {dtype} matrix product gave a wrong result")
    except Exception as exc:
        return Check("torch", f"GPU {index}", "failed", f"{props.name}: {exc}")
    ran = "/".join(str(d).removeprefix("torch.") for d in dtypes)
    tensor_cores = "tensor cores" if props.major >= 7 else "no tensor cores"
    return Check(
        "torch",
        f"GPU {index}",
        "ok",
        f"{props.name}, sm_{props.major}{props.minor}, {props.total_memory / 2**30:.1f} GiB; "
        f"bf16 {'native' if bf16 else 'not native (sm < 80)'}; fp16 with {tensor_cores}; "
        f"ran a {ran} matrix product",
    )


def _cudnn_check(torch: Any, cuda: bool) -> Check:
    if not torch.backends.cudnn.is_available():
        return Check("torch", "cuDNN", "missing", "this torch build has no cuDNN")
    raw = torch.backends.cudnn.version()
    version = f"{raw // 10000}.{raw % 10000 // 100}.{raw % 100}" if raw else "unknown"
    if not cuda:
        return Check("torch", "cuDNN", "ok", f"{version} (the library loads; no GPU to run it on)")
    try:
        x = torch.ones(1, 3, 8, 8, device="cuda:0")
        torch.nn.functional.conv2d(x, torch.ones(4, 3, 3, 3, device="cuda:0"))
        torch.cuda.synchronize()
    except Exception as exc:
        return Check("torch", "cuDNN", "failed", f"{version}: a convolution failed: {exc}")
    return Check("torch", "cuDNN", "ok", f"{version}, ran a convolution on cuda:0")


def torch_checks() -> list[Check]:
    import torch

    built = torch.version.cuda
    build = f"built for CUDA {built}" if built else "CPU-only build"
    checks = [Check("torch", "PyTorch", "ok", f"{torch.__version__} ({build})")]
    cuda = built is not None and torch.cuda.is_available()
    if built is None:
        checks.append(Check("torch", "CUDA", "missing", "this torch build has no CUDA"))
    elif not cuda:
        checks.append(Check("torch", "CUDA", "missing", f"no CUDA device: {_why_no_cuda(torch)}"))
    else:
        driver = _nvidia_driver()
        count = torch.cuda.device_count()
        checks.append(
            Check(
                "torch",
                "CUDA",
                "ok",
                f"runtime {built}, driver {driver or 'unknown (no nvidia-smi)'}, "
                f"{count} GPU{'s' if count != 1 else ''} visible",
            )
        )
        checks += [_gpu_check(torch, index) for index in range(count)]
    checks.append(_cudnn_check(torch, cuda))
    return checks


# --- ONNX Runtime and TensorRT ---------------------------------------------------------------

# The TensorRT libraries the ORT provider links against, by soname (ldd's first column).
_TRT_LIB = re.compile(r"lib(?:nvinfer|nvonnxparser)\w*\.so[.\d]*")


def _tensorrt_check(ort: Any) -> Check:
    provider_lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_tensorrt.so"
    if not provider_lib.is_file():
        return Check(
            "onnxruntime",
            "TensorRT libraries",
            "missing",
            "this ORT build has no TensorRT provider",
        )
    ldd = shutil.which("ldd")
    listing = ""
    if ldd:
        listing = subprocess.run(
            [ldd, str(provider_lib)], capture_output=True, text=True, timeout=20
        ).stdout
    # "libnvinfer.so.10 => not found" or "=> /path/libnvinfer.so.10.x.y (0x...)": the soname
    # is what the loader looks up, whatever file it resolves to.
    sonames = (line.split()[0] for line in listing.splitlines() if line.strip())
    needed = sorted({name for name in sonames if _TRT_LIB.fullmatch(name)})
    if not needed:
        return Check(
            "onnxruntime", "TensorRT libraries", "failed", f"cannot read what {provider_lib} needs"
        )
    absent = []
    for soname in needed:
        try:
            ctypes.CDLL(soname)
        except OSError:
            absent.append(soname)
    if absent:
        return Check(
            "onnxruntime",
            "TensorRT libraries",
            "missing",
            f"{', '.join(absent)} not found by the loader (install TensorRT and add its lib/ "
            "to LD_LIBRARY_PATH)",
        )
    return Check("onnxruntime", "TensorRT libraries", "ok", f"{', '.join(needed)} load")


def onnxruntime_checks() -> list[Check]:
    import onnxruntime as ort

    from exporters.runtime import PROVIDERS, probe_provider

    listed = ort.get_available_providers()
    checks = [
        Check(
            "onnxruntime",
            "ONNX Runtime",
            "ok",
            f"{ort.__version__} ({ort.get_device()} build), lists {', '.join(listed)}",
        )
    ]
    # rtk's own providers always get a row (a CPU-only build's missing CUDA is a finding),
    # then whatever else this build lists.
    names = list(PROVIDERS.values()) + [p for p in listed if p not in PROVIDERS.values()]
    for name in names:
        probe = probe_provider(name)
        if probe.ran:
            status: Status = "ok"
            detail = "took and ran a one-node model"
        else:
            status = "failed" if probe.listed else "missing"
            detail = probe.reason
        checks.append(Check("onnxruntime", f"ORT {name}", status, detail))
    checks.append(_tensorrt_check(ort))
    return checks


OPENVINO_PRECISIONS = ("FP32", "BF16", "INT8")  # what `rtk bench --runtime openvino` can time


def openvino_checks() -> list[Check]:
    """OpenVINO's CPU plugin and the precisions it says this CPU computes natively: a bf16 row
    of `rtk bench --runtime openvino --bf16` is refused where BF16 is missing."""
    from exporters.openvino import cpu_capabilities, version

    listed = cpu_capabilities()
    checks = [
        Check("openvino", "OpenVINO", "ok", f"{version()}, CPU plugin lists {', '.join(listed)}")
    ]
    for precision in OPENVINO_PRECISIONS:
        there = precision in listed
        detail = "native on this CPU" if there else "not listed for this CPU"
        if precision == "BF16" and not there:
            detail += ": rtk bench refuses OpenVINO bf16 rows (an emulation slower than fp32)"
        checks.append(
            Check("openvino", f"OpenVINO {precision}", "ok" if there else "missing", detail)
        )
    return checks


# --- netron and the browser for rtk view -----------------------------------------------------


def view_checks() -> list[Check]:
    from exporters.view import find_browser, has_display

    try:
        import netron
    except ImportError:
        checks = [Check("view", "netron", "missing", "not installed: rtk view needs it")]
    else:
        checks = [Check("view", "netron", "ok", str(getattr(netron, "__version__", "installed")))]
    browser = find_browser()
    if browser is not None:
        checks.append(Check("view", "browser", "ok", f"rtk view opens {browser.name}"))
    elif not has_display():
        checks.append(
            Check(
                "view",
                "browser",
                "missing",
                "no display (DISPLAY, WAYLAND_DISPLAY unset): rtk view prints the URL to open",
            )
        )
    else:
        checks.append(
            Check("view", "browser", "missing", "a display but no browser found; set $BROWSER")
        )
    return checks


# --- data ------------------------------------------------------------------------------------


def _size(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        try:
            total += path.stat().st_size
        except FileNotFoundError:  # removed meanwhile (rtk data clean, a finished writer)
            continue
    return total


def data_checks() -> list[Check]:
    from toolkit.data import default_cache_dir
    from toolkit.data.dataset import cache_file_for, cache_files
    from toolkit.data.sources import detect, lookup
    from toolkit.errors import DataError

    path, origin = lookup(None)
    source = None
    if origin == "download":
        data = Check(
            "data",
            "data path",
            "missing",
            f"none found (RTK_DATA unset, {path} empty): rtk would download CIFAR-10 into {path}",
        )
    else:
        try:
            source = detect(path, origin=origin)
        except DataError as exc:
            data = Check("data", "data path", "failed", str(exc))
        else:
            data = Check(
                "data", "data path", "ok", f"{source.path} ({source.format}, from {origin})"
            )
    directory = default_cache_dir()
    if directory.exists() and not directory.is_dir():
        detail = f"{directory} is a file, not a folder; point RTK_CACHE_DIR at a folder"
        return [data, Check("data", "data cache", "failed", detail)]
    if not directory.is_dir():
        writable = next((p for p in directory.parents if p.is_dir()), None)
        status: Status = "ok" if writable and os.access(writable, os.W_OK) else "failed"
        return [data, Check("data", "data cache", status, f"{directory} (created on first load)")]
    files = cache_files(directory)
    held = source is not None and cache_file_for(source, directory).is_file()
    detail = (
        f"{directory}: {len(files)} file{'s' if len(files) != 1 else ''}, "
        f"{_size(files) / 2**20:,.1f} MiB; "
        + ("holds this data's decoded copy" if held else "no decoded copy of this data yet")
    )
    if not os.access(directory, os.W_OK):
        return [data, Check("data", "data cache", "failed", f"{detail}; not writable")]
    return [data, Check("data", "data cache", "ok", detail)]
