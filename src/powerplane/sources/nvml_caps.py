"""GPU power caps through NVML: the actuator half of the NVML adapter.

:class:`NvmlPowerCapper` writes the board power limit (``nvmlDeviceSetPowerManagementLimit``, which needs root)
clipped to the device's own constraints (``nvmlDeviceGetPowerManagementLimitConstraints``), so it can never ask
for more, or less, than the GPU allows. Before it first changes a GPU it records that GPU's limit, and
:meth:`NvmlPowerCapper.restore` (called on :meth:`~NvmlPowerCapper.close` and when a ``with`` block exits) puts
every changed GPU back. A GPU whose current limit cannot be read is never changed, since it could not be restored.

Indices are NVML device indices, which are the GPU indices of :class:`~powerplane.sources.nvml.NvmlSource`'s
one-node topology.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from powerplane.core.commands import Command, CommandResult, GpuPowerCap
from powerplane.core.errors import ActuatorError
from powerplane.sources.nvml import error_name, load_pynvml, nvml_init, nvml_shutdown

CapResult = tuple[int, float, bool]  # (GPU index, applied cap [W] or NaN when NVML refused, clipped)


class NvmlPowerCapper:
    """Set and restore NVML power limits of this node's GPUs. Use as a context manager.

    ``set_caps(indices, cap_w)`` takes one cap [W] or one per index; NaN means the device's default limit.

    >>> from powerplane.sources.fake_nvml import FakeGpu, FakeNvml
    >>> nv = FakeNvml([FakeGpu(), FakeGpu()])
    >>> with NvmlPowerCapper(nvml=nv) as capper:
    ...     capper.set_caps([0, 1], [450.0, 900.0])
    [(0, 450.0, False), (1, 700.0, True)]
    >>> [g.limit_w for g in nv.gpus]  # restored on exit
    [700.0, 700.0]
    """

    name = "nvml-caps"

    def __init__(self, nvml: Any = None) -> None:
        self._nvml = load_pynvml() if nvml is None else nvml
        nvml_init(self._nvml, ActuatorError)
        self._closed = False
        try:
            self.n_gpus = int(self._nvml.nvmlDeviceGetCount())
        except self._nvml.NVMLError as exc:
            nvml_shutdown(self._nvml)
            raise ActuatorError(f"NVML failed to count GPUs: {error_name(self._nvml, exc)}") from exc
        self._handles: dict[int, Any] = {}
        self.original_mw: dict[int, int] = {}  # limit each changed GPU had before we first touched it
        self.errors: Counter[str] = Counter()
        self.failures: dict[int, str] = {}  # GPU index -> NVML error name, from the last set_caps call

    def _handle(self, index: int) -> Any:
        if index not in self._handles:
            self._handles[index] = self._nvml.nvmlDeviceGetHandleByIndex(index)
        return self._handles[index]

    def limits_w(self, index: int) -> tuple[float, float]:
        """The (min, max) power limit GPU ``index`` accepts [W]."""
        lo, hi = self._nvml.nvmlDeviceGetPowerManagementLimitConstraints(self._handle(index))
        return lo / 1e3, hi / 1e3

    def set_caps(self, indices: Sequence[int] | ArrayLike, cap_w: float | ArrayLike) -> list[CapResult]:
        """Cap GPUs ``indices`` at ``cap_w`` [W], clipped to each device's constraints.

        Returns ``(index, applied_w, clipped)`` per index. A GPU NVML refuses gets ``applied_w`` NaN, its error
        name in :attr:`failures` and :attr:`errors`; when every GPU is refused (typically ``NO_PERMISSION``: not
        root) it raises :class:`ActuatorError` instead, since nothing was done.
        """
        if self._closed:
            raise ActuatorError("the NVML power capper is closed")
        idx = np.atleast_1d(np.asarray(indices, dtype=np.int64))
        try:
            want_w = np.broadcast_to(np.asarray(cap_w, dtype=np.float64), idx.shape)
        except ValueError as exc:
            raise ActuatorError(f"{np.size(cap_w)} caps given for {idx.size} GPUs") from exc
        bad = idx[(idx < 0) | (idx >= self.n_gpus)]
        if bad.size:
            raise ActuatorError(f"GPU index {int(bad[0])} out of range: this node has {self.n_gpus} GPUs")
        self.failures = {}
        out: list[CapResult] = []
        for i, w in zip(idx.tolist(), want_w.tolist(), strict=True):
            try:
                out.append((i, *self._set_one(i, w)))
            except self._nvml.NVMLError as exc:
                name = error_name(self._nvml, exc)
                self.errors[name] += 1
                self.failures[i] = name
                out.append((i, math.nan, False))
        if out and len(self.failures) == len(out):
            names = ", ".join(sorted(set(self.failures.values())))
            hint = " (setting power limits needs root)" if "NO_PERMISSION" in names else ""
            raise ActuatorError(f"NVML refused the power limit on all {len(out)} GPUs: {names}{hint}")
        return out

    def _set_one(self, index: int, want_w: float) -> tuple[float, bool]:
        nv = self._nvml
        h = self._handle(index)
        lo_mw, hi_mw = nv.nvmlDeviceGetPowerManagementLimitConstraints(h)
        original = self.original_mw.get(index)
        if original is None:
            original = int(nv.nvmlDeviceGetPowerManagementLimit(h))  # raises before anything changes
        if math.isnan(want_w):
            try:
                target_mw = float(nv.nvmlDeviceGetPowerManagementDefaultLimit(h))
            except nv.NVMLError:
                target_mw = float(original)
        else:
            target_mw = want_w * 1e3
        applied_mw = round(min(max(target_mw, float(lo_mw)), float(hi_mw)))
        nv.nvmlDeviceSetPowerManagementLimit(h, applied_mw)
        self.original_mw.setdefault(index, original)
        return applied_mw / 1e3, abs(applied_mw - target_mw) > 0.5

    def apply(self, commands: list[Command]) -> list[CommandResult]:
        """Apply :class:`GpuPowerCap` commands (GPU indices are NVML indices); others are refused."""
        results = []
        for c in commands:
            if not isinstance(c, GpuPowerCap):
                results.append(CommandResult(c, False, detail=f"unsupported command {type(c).__name__}"))
                continue
            try:
                done = self.set_caps(c.gpus, c.cap_w)
            except ActuatorError as exc:
                results.append(CommandResult(c, False, detail=str(exc)))
                continue
            applied = [w for _, w, _ in done if not math.isnan(w)]
            detail = f"{len(applied)} GPUs capped to {min(applied):.0f}-{max(applied):.0f} W" if applied else "no GPUs"
            if self.failures:
                detail += f"; refused on GPUs {sorted(self.failures)}"
            results.append(CommandResult(c, not self.failures, any(cl for _, _, cl in done), detail))
        return results

    def restore(self) -> None:
        """Put every GPU this capper changed back to the limit it had before; raises ActuatorError for any that
        could not be restored (after trying them all)."""
        failed: dict[int, str] = {}
        for index, limit_mw in list(self.original_mw.items()):
            try:
                self._nvml.nvmlDeviceSetPowerManagementLimit(self._handle(index), limit_mw)
            except self._nvml.NVMLError as exc:
                failed[index] = error_name(self._nvml, exc)
                self.errors[failed[index]] += 1
                continue
            del self.original_mw[index]
        if failed:
            raise ActuatorError(f"could not restore the power limit of GPUs {failed}")

    def close(self) -> None:
        """Restore the original limits, then release NVML; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self.restore()
        finally:
            nvml_shutdown(self._nvml)

    def __enter__(self) -> NvmlPowerCapper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
