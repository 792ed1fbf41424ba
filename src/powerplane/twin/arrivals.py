"""Job specs for the twin, drawn from the site's workload mix and the real traces (Alibaba sizes and lifetimes)."""

from __future__ import annotations

import numpy as np

from powerplane.config.schema import TrainingMix, WorkloadConfig
from powerplane.twin import traces
from powerplane.twin.jobs import ACT_COLLECTIVE, ACT_COMPUTE, JobSpec, Kind, Priority


class JobFactory:
    """Makes job specs; shares the workload's random generator so a seed fixes the whole run."""

    def __init__(self, cfg: WorkloadConfig, n_gpus: int, gpus_per_node_max: int, rng: np.random.Generator) -> None:
        self.cfg = cfg
        self.n_gpus = n_gpus
        self.gpus_per_node_max = gpus_per_node_max
        self.rng = rng
        self._counter = 0
        pods = traces.alibaba_gpu_pods()
        self._pods = pods
        self._pod_num_gpu = pods["num_gpu"].to_numpy()
        self._pod_duration_s = pods["duration_s"].to_numpy()
        self._pod_best_effort = (pods["qos"] == "BE").to_numpy()
        self._pod_gpu_fraction = pods["gpu_fraction"].to_numpy()

    def name(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}-{self._counter:05d}"

    def training(self, mix: TrainingMix, kind: Kind, priority: Priority, warm: bool) -> JobSpec:
        rng = self.rng
        lo, hi = mix.gpus
        if kind == Kind.PRETRAIN:
            n = int(round(rng.uniform(lo, hi) / 8.0) * 8) if hi > lo else lo
        else:  # powers of two between the bounds, log-uniform
            exps = np.arange(int(np.ceil(np.log2(lo))), int(np.floor(np.log2(hi))) + 1)
            n = int(2 ** rng.choice(exps)) if exps.size else lo
        n = max(1, min(n, self.n_gpus))
        if kind == Kind.PRETRAIN:
            work = rng.uniform(*mix.duration_h) * 3600.0
        else:
            work = float(traces.sample_durations_mapped(rng, 1, mix.duration_h[0] * 3600, mix.duration_h[1] * 3600)[0])
        return JobSpec(
            name=self.name("pt" if kind == Kind.PRETRAIN else "ft"),
            kind=kind,
            priority=priority,
            n_gpus=n,
            work_s=work,
            work_done_s=rng.uniform(0.1, 0.8) * work if warm else 0.0,
            iteration_s=float(np.exp(rng.uniform(np.log(mix.iteration_s[0]), np.log(mix.iteration_s[1])))),
            compute_fraction=rng.uniform(*mix.compute_fraction),
            act_compute=rng.uniform(*ACT_COMPUTE),
            act_collective=rng.uniform(*ACT_COLLECTIVE),
            checkpoint_interval_s=rng.uniform(*mix.checkpoint_interval_min) * 60.0,
            checkpoint_duration_s=rng.uniform(*mix.checkpoint_duration_s),
            startup_s=rng.uniform(*mix.startup_s),
            deferrable=priority == Priority.LOW,
        )

    def finetune_priority(self) -> Priority:
        shares = self.cfg.priority_shares
        normal, low = shares.get("normal", 0.5), shares.get("low", 0.5)
        return Priority.NORMAL if self.rng.uniform() < normal / max(normal + low, 1e-9) else Priority.LOW

    def batch(self, warm: bool) -> JobSpec:
        """A pod of the Alibaba trace: its GPU count, lifetime, QoS class and GPU share."""
        i = int(self.rng.integers(self._pod_num_gpu.size))
        duration = float(np.clip(self._pod_duration_s[i], 60.0, 86_400.0))
        priority = Priority.LOW if self._pod_best_effort[i] else Priority.NORMAL
        n = int(min(self._pod_num_gpu[i], self.gpus_per_node_max))
        return JobSpec(
            name=self.name("bt"),
            kind=Kind.BATCH,
            priority=priority,
            n_gpus=n,
            work_s=duration,
            work_done_s=self.rng.uniform(0.0, 0.8) * duration if warm else 0.0,
            level=float(self._pod_gpu_fraction[i]) * self.rng.uniform(0.6, 0.95),
            startup_s=self.rng.uniform(5.0, 30.0),
            deferrable=priority == Priority.LOW,
        )

    def inference(self, n_gpus: int) -> JobSpec:
        return JobSpec(
            name=self.name("inf"),
            kind=Kind.INFERENCE,
            priority=Priority.CORE,
            n_gpus=n_gpus,
            work_s=np.inf,
            level=self.rng.uniform(0.85, 1.0),
            startup_s=60.0,
        )

    def arrival_rates(self) -> dict[Kind, float]:
        """Arrivals per second by kind; by default enough to keep the configured mix busy (Little's law)."""
        cfg = self.cfg
        rates: dict[Kind, float] = {}
        ft = cfg.finetune
        if ft.arrivals_per_day is not None:
            rates[Kind.FINETUNE] = ft.arrivals_per_day / 86_400.0
        else:  # keep `count` jobs running on average
            mean_work = float(
                traces.sample_durations_mapped(
                    np.random.default_rng(0), 4000, ft.duration_h[0] * 3600, ft.duration_h[1] * 3600
                ).mean()
            )
            rates[Kind.FINETUNE] = ft.count / mean_work
        b = cfg.batch
        if b.arrivals_per_hour is not None:
            rates[Kind.BATCH] = b.arrivals_per_hour / 3600.0
        else:
            pods = self._pods
            mean_gpu_s = float((np.clip(pods["duration_s"], 60, 86_400) * np.minimum(pods["num_gpu"], 8)).mean())
            rates[Kind.BATCH] = b.share_of_gpus * self.n_gpus / mean_gpu_s
        rates[Kind.PRETRAIN] = (cfg.pretraining.arrivals_per_day or 0.0) / 86_400.0
        return rates
