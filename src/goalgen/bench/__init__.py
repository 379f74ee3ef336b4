"""``goalgen-bench``: training throughput and MFU, data loader, sampler and checkpoint costs.

    goalgen-bench [train|data|sample|checkpoint|all ...] [hydra overrides ...]
                  [--config-name NAME] [--json OUT] [--quick] [--repeats N] [...]

Runs on CUDA when present, else on the CPU, with the real Hydra config (``--config-name``,
default ``train_fb_flow_matching``, plus overrides). Every figure is the median of ``--repeats``
timed runs after ``--warmup`` untimed ones; CUDA is synchronised before every clock read. The
load average is recorded next to each section (timings on a shared machine need it).

``--json OUT`` writes one object per section (``train``, ``data``, ``sample``, ``checkpoint``)
with raw figures (``*_per_s``, ``*_ms``, ``mfu``, ``peak_*``) and, wherever two ways are
compared, a ``speedup`` = throughput of the named way / throughput of the baseline (equal to
baseline_ms / other_ms), plus ``device`` and ``versions``. ``--quick`` (CI) runs a tiny model,
few repeats, a small data set and ``torch.compile(backend="aot_eager")`` (Dynamo and
AOTAutograd, no C++ code generation) so the benchmark cannot rot; its figures mean nothing.
"""
