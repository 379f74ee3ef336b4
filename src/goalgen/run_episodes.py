"""``goalgen-episodes``: NAMO episodes in MuJoCo physics (:mod:`goalgen.eval.episodes`), goal
strategies side by side on the same scenes and seeds, here or as a Slurm array; one JSON and
one table.

    goalgen-episodes planner --xml SCENE.xml [--state STATE.json] --json OUT.json
    goalgen-episodes planner heldout/maze heldout/rooms --strategy proposals,random_local \\
        --json episodes.json --png-dir strips/
    goalgen-episodes planner heldout/maze --slurm --parts 8 --partition cpu --time 60 \\
        --json episodes.json                # an array of 8 elements; waits, then the table
    goalgen-episodes planner heldout/maze --merge --json episodes.json      # parts so far

RUN is a run dir, a checkpoint, a weights file or ``planner`` (loaded only for ``proposals``
and ``raw``). Episodes are written as they finish to ``OUT.parts/part_<i>.jsonl``
(:mod:`goalgen.eval.episode_runs`): a command run again, or an array element Slurm requeues
(preemption, time limit: submitit's ``checkpoint`` resubmits the element), goes on where it
stopped with the same seeds, so the table is the same.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from goalgen.cli import (
    RUN_HELP,
    USER_ERRORS,
    OneLineParser,
    one_line,
    want_traceback,
    warnings_as_lines,
)
from goalgen.eval.episode_runs import EpisodeOptions, report, run_part, scene_paths, table
from goalgen.eval.episodes import BUDGET, STRATEGIES
from goalgen.infer.propose_scene import CLEARANCE
from goalgen.io import atomic_write_text
from goalgen.launch import add_cluster_arguments, check_cluster_arguments, make_executor
from goalgen.train.entry import set_threads

PROG = "goalgen-episodes"


class EpisodesPart:
    """The callable an array element runs: part ``index`` of ``count`` (resumes its file)."""

    def __init__(self, options: EpisodeOptions, parts: str, count: int):
        self.options, self.parts, self.count = options, parts, count

    def __call__(self, index: int) -> int:
        set_threads(1)  # the element's own cores, not the node's (pitfalls: threads)
        return len(run_part(self.options, Path(self.parts), index, self.count))

    def checkpoint(self, index: int) -> Any:
        """Called by submitit on preemption or time-out: run the same part again (it skips
        the episodes its file holds)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, index)


def parts_folder(json_path: Path) -> Path:
    return json_path.with_name(json_path.stem + ".parts")


def _parser() -> OneLineParser:
    parser = OneLineParser(
        prog=PROG,
        description="NAMO episodes in MuJoCo physics: the robot pushes boxes until its goal is "
        "reachable; goal strategies side by side on the same scenes and seeds.",
    )
    parser.add_argument("run_dir", help=RUN_HELP)
    parser.add_argument("scenes", nargs="*", help=".npz scene files or folders of them")
    parser.add_argument("--xml", type=Path, help="MuJoCo scene XML (namo_cpp naming)")
    parser.add_argument("--state", type=Path, help="the planner's JSON state (with --xml)")
    parser.add_argument(
        "--strategy", default="proposals", help=f"comma-separated, of {','.join(STRATEGIES)}"
    )
    parser.add_argument("--seed", type=int, default=0, help="episode seed (0)")
    parser.add_argument("--budget", type=int, default=BUDGET, help=f"pushes per episode ({BUDGET})")
    parser.add_argument("--samples", type=int, default=32, help="samples per draw (32)")
    parser.add_argument("--top", type=int, default=8, help="proposals ranked per call (8)")
    parser.add_argument("--clearance", type=float, default=CLEARANCE, help=f"m ({CLEARANCE})")
    parser.add_argument("--checkpoint", default="best", help="best (default), last or a path")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--json", required=True, type=Path, help="output JSON file")
    parser.add_argument(
        "--png-dir", type=Path, help="a PNG strip per episode: FAMILY_SCENE_STRATEGY.png"
    )
    parser.add_argument("--merge", action="store_true", help="only read the parts into --json")
    slurm = parser.add_argument_group("Slurm (an array job through submitit)")
    slurm.add_argument("--slurm", action="store_true", help="run the parts as an array job")
    slurm.add_argument("--parts", type=int, default=4, help="array elements (4)")
    slurm.add_argument(
        "--no-wait", action="store_true", help="submit and return; --merge reads the parts later"
    )
    add_cluster_arguments(slurm, parallel=False, gpus_per_node=0, cpus_per_task=2, time=60)
    return parser


def _options(args: argparse.Namespace, parser: OneLineParser) -> EpisodeOptions:
    if bool(args.scenes) == (args.xml is not None):
        parser.error("give scenes: SCENE.npz files or folders, or --xml SCENE.xml")
    if args.state is not None and args.xml is None:
        parser.error("--state goes with --xml")
    strategies = [s.strip() for s in args.strategy.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        parser.error(f"--strategy: unknown {unknown}; choose from {', '.join(STRATEGIES)}")
    for name in ("budget", "samples", "top", "parts"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if not args.clearance >= 0:
        parser.error(f"--clearance must be a distance >= 0 in metres, got {args.clearance}")
    if args.xml is not None:
        scenes, families = [str(args.xml)], [args.xml.parent.name or "."]
    else:
        scenes, families = scene_paths(args.scenes)
    return EpisodeOptions(
        run=str(args.run_dir),
        scenes=[str(Path(s).absolute()) for s in scenes],
        strategies=strategies,
        state=None if args.state is None else str(args.state.absolute()),
        seed=args.seed,
        budget=args.budget,
        samples=args.samples,
        top=args.top,
        clearance=args.clearance,
        checkpoint=args.checkpoint,
        device=args.device,
        png_dir=None if args.png_dir is None else str(args.png_dir.absolute()),
        families=families,
    )


def _submit(args: argparse.Namespace, options: EpisodeOptions, parts: Path) -> list[Any]:
    check_cluster_arguments(args)
    args.name = PROG
    executor = make_executor(args, str(parts / "submitit"), PROG)
    if args.cluster == "slurm":
        executor.update_parameters(slurm_array_parallelism=args.parts)
    count = min(args.parts, len(options.scenes))
    jobs = executor.map_array(EpisodesPart(options, str(parts), count), list(range(count)))
    print(f"submitted {count} parts: {', '.join(j.job_id for j in jobs)} ({parts})", flush=True)
    return jobs


def main(argv: list[str] | None = None) -> int:
    """``goalgen-episodes``: see the module docstring."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        options = _options(args, parser)
        parts = parts_folder(args.json.absolute())
        with warnings_as_lines(PROG):
            if args.slurm and not args.merge:
                jobs = _submit(args, options, parts)
                if args.no_wait:
                    return 0
                for index, job in enumerate(jobs):
                    try:
                        job.result()
                    except Exception as error:  # submitit's, with the element's traceback
                        raise RuntimeError(
                            f"part {index} (job {job.job_id}) failed: {one_line(error)}"
                        ) from error
            elif not args.merge:

                def say(record: dict[str, Any]) -> None:
                    outcome = "opened" if record["success"] else record["failure"]
                    print(
                        f"{Path(record['scene']).name} {record['strategy']}: {outcome} in "
                        f"{record['num_pushes']} pushes, {record['wall_seconds']:.2f} s",
                        flush=True,
                    )

                run_part(options, parts, on_episode=say)
            result = report(options, parts)
            atomic_write_text(args.json, json.dumps(result, indent=1, allow_nan=False) + "\n")
    except (*USER_ERRORS, RuntimeError) as error:
        if want_traceback():
            raise
        print(f"{PROG}: error: {one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(table(result["summary"]))
    print(f"-> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
