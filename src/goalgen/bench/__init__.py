"""``goalgen-bench``: training throughput and MFU, data loader, sampler and checkpoint costs,
the synthetic generator's speed and the cost of ranked, verified proposals.

    goalgen-bench [train|data|sample|checkpoint|synth|propose|all ...] [hydra overrides ...]
                  [--config-name NAME] [--json OUT] [--quick] [--repeats N] [...]

Runs on CUDA when present, else on the CPU, with the real Hydra config (``--config-name``,
default ``train_fb_flow_matching``, plus overrides). Every figure is the median of ``--repeats``
timed runs after ``--warmup`` untimed ones; CUDA is synchronised before every clock read. The
load average is recorded next to each section (timings on a shared machine need it).

``synth`` times :func:`goalgen.data.synthetic.benchmark` (scenes/s per family on one core,
rejected layouts and why; ``--synth-scenes``); ``propose`` times 32 proposals per scene
(``--propose-samples``) split into sampling and post-processing, with ``--ckpt``/``--run``
weights or the config's untrained network (see :mod:`goalgen.bench.propose`).

``--json OUT`` writes one object per section (``train``, ``data``, ``sample``, ``checkpoint``,
``synth``, ``propose``)
with raw figures (``*_per_s``, ``*_ms``, ``mfu``, ``peak_*``) and, wherever two ways are
compared, a ``speedup`` = throughput of the named way / throughput of the baseline (equal to
baseline_ms / other_ms), plus ``device`` and ``versions``. ``--quick`` (CI) runs a tiny model,
few repeats, a small data set and ``torch.compile(backend="aot_eager")`` (Dynamo and
AOTAutograd, no C++ code generation) so the benchmark cannot rot; its figures mean nothing.
"""
