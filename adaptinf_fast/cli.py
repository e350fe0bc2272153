"""The ``adaptinf-fast`` command."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import platform
import sys
from pathlib import Path


# Packages that only some commands import (inside the command, so that `info` runs without them):
# top-level module -> (what needs it, how to install it). A missing one ends that command with this
# message instead of a traceback.
_NEEDED_FOR = {
    **dict.fromkeys(("pydantic", "pydantic_core", "annotated_types", "typing_inspection"),
                    ("the config schema (run, demo, merge and the pool commands)",
                     "pip install pydantic, or carry the wheels from bench/gpu_wheels.sh")),
    "matplotlib": ("plots", "pip install matplotlib"),
    "sklearn": ("the demo's digits task", "pip install scikit-learn"),
    "yaml": ("YAML configs", "pip install pyyaml"),
    **dict.fromkeys(("flwr", "ray"), ("federated runs on Flower (demo-federated)",
                                     "pip install 'adaptinf-fast[federated]' (flwr[simulation])")),
}


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def model_info(folder: Path) -> int:
    from .lifelong.models import describe

    d = describe(folder)
    print(f"model         {folder}")
    print(f"family        {d['family']} ({d['model']})")
    print(f"processor     {d['processor'] or 'none'}")
    print(f"image tokens  {d['image_tokens']}")
    vision = d["vision_layers_targeted"]
    print(f"LoRA targets  {d['lora_targets']!s}: {d['lora_layers']} linear layers, e.g. {', '.join(d['lora_examples'])}"
          + (f"; {vision} of them in the vision tower" if vision else ""))
    return 0


def info() -> int:
    import torch

    from . import __version__
    from .backends import (_REGISTRY, SHAPE_CLASSES, auto_choice, available_backends, cuda_extension, cuda_jit,
                           cuda_jit_forced, implemented_backends, triton_interpreting)

    print(f"adaptinf-fast {__version__}  (Python {platform.python_version()}, {platform.machine()})")
    print(f"torch         {torch.__version__}  (built with CUDA {torch.version.cuda or 'none'})")
    print(f"triton        {_version('triton')}{'  [TRITON_INTERPRET=1]' if triton_interpreting() else ''}")
    ext = cuda_extension()
    jit = cuda_jit()
    if ext is None and jit is not None:
        import cupy

        print(f"_C            not built; the CUDA kernels compile at first use through CuPy {cupy.__version__} "
              f"(NVRTC, cached on disk), {jit.cuda_device_count()} device(s)")
    elif ext is None:
        print("_C            not built (no CUDA compiler at install time) and no CuPy: CUDA kernels unavailable")
    else:
        rt = ext.cuda_runtime_version()
        print(f"_C            built, CUDA runtime {rt // 1000}.{rt % 1000 // 10}, sees {ext.cuda_device_count()} device(s)"
              + ("; ADAPTINF_CUDA_JIT=1: launching through CuPy/NVRTC instead" if cuda_jit_forced() and jit else ""))
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"device {i}      {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB"
                  + (f"; CUDA kernels on 16-bit rows: {_pipeline_path(ext or jit, i)}" if ext or jit else ""))
    else:
        print("devices       no CUDA device visible to torch")
    cpu = available_backends("cpu")
    gpu = available_backends("cuda") if torch.cuda.is_available() else None
    print("\nop                      implemented           usable on CPU tensors   usable on CUDA tensors")
    for op in _REGISTRY:
        g = ", ".join(gpu[op]) if gpu is not None else "(no GPU)"
        print(f"{op:<23} {', '.join(implemented_backends(op)):<21} {', '.join(cpu[op]):<23} {g}")
    print("\nbackend=\"auto\" takes, and why:")
    devices = [torch.device("cpu")] + [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    for op in _REGISTRY:
        for dev in devices:
            for cls in (SHAPE_CLASSES if dev.type == "cuda" else ("any",)):
                work = None if cls != "small" else 1
                name, why = auto_choice(op, dev, work=work)
                print(f"  {op:<23} {str(dev):<7} {cls:<6} -> {name}: {why}")
    if not torch.cuda.is_available():
        print("  (no GPU visible: on CUDA tensors auto takes a measured backend where MEASURED lists one, "
              "else the first usable of triton > cuda > torch)")
    return 0


def _pipeline_path(kernels, device: int) -> str:
    """Which CUDA kernels a 16-bit launch with aligned rows takes on ``device`` (kernels/pipe.cuh)."""
    arch = kernels.pipeline_arch(2, 0, 8, device)  # bf16, an aligned pointer, 16-byte rows
    return {90: "wgmma pipeline (sm_90a)", 80: "mma.sync pipeline (sm_80 path)"}.get(
        arch, "WMMA tiles (no pipeline: set off, or too little shared memory per block)")


def _quiet_transformers() -> None:
    """The demo's own progress is enough: no weight-loading bars or deprecation chatter."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")


def _demo(args) -> int:
    from .demo.lifelong import DemoConfig, run_demo

    _quiet_transformers()
    flags = dict(out=args.out, tasks=tuple(args.tasks.split(",")) if args.tasks is not None else None,
                 n_train=args.n_train, n_test=args.n_test, pretrain_epochs=args.pretrain_epochs, epochs=args.epochs,
                 budget=args.budget, pool_budget=args.pool_budget, k=args.k, out_dim=args.out_dim, seed=args.seed,
                 compare=tuple(m for m in (args.compare or "").split(",") if m), progress=not args.no_progress,
                 device=args.device, seeds=args.seeds, scenario=args.scenario)
    run_demo(DemoConfig(**{k: v for k, v in flags.items() if v is not None}))  # a flag not given: DemoConfig's default
    return 0


def _run(args) -> int:
    from .lifelong.run import LifelongRun, format_matrix
    from .lifelong.config import load_run_config
    from .lifelong.models import base_loader

    out, tasks, cfg, model = load_run_config(args.config)
    out = args.out or out
    _quiet_transformers()
    baselines = {}
    for item in args.baseline:
        name, sep, folder = item.partition("=")
        if not sep:
            raise ValueError(f"--baseline takes NAME=RUN_FOLDER; got {item!r}")
        baselines[name] = Path(folder)
    res = LifelongRun(out, tasks, cfg, base_loader(model), adapter=model.get("adapter"), baselines=baselines,
                      progress=not args.no_progress, model_info=dict(model)).run()
    if not res:  # under torchrun: rank 0 reports
        return 0
    print(format_matrix(res))
    for name, gain in res["relative_gain"].items():
        print(f"relative gain vs {name}: {gain:.1f} (100 = its final scores)")
    print(f"wrote {out / 'summary.json'}, {out / 'accuracy.json'}, {out / 'accuracy.png'} and {out / 'plots'}")
    return 0


def _federated(args) -> int:
    from .federated.config import FederatedRunConfig, FederatedRunFile
    from .federated.fcit import FederatedRun
    from .lifelong.config import load_run_config
    from .lifelong.run import format_matrix

    out, tasks, cfg, model = load_run_config(args.config, FederatedRunFile, FederatedRunConfig)
    out = args.out or out
    _quiet_transformers()
    make = lambda: FederatedRun(out, tasks, cfg, dict(model), progress=not args.no_progress)
    if args.engine == "local":
        res = make().run()
    else:
        from .federated.apps import simulate

        simulate(make, cfg.federated.clients, cpus_per_client=args.cpus_per_client, gpus_per_client=args.gpus_per_client)
        import json

        res = json.loads((Path(out) / "summary.json").read_text())
    print(format_matrix(res))
    print(f"wrote {Path(out) / 'summary.json'} and {Path(out) / 'accuracy.json'}")
    return 0


def _merge(args) -> int:
    from .lifelong.models import base_loader
    from .lifelong.reapply import reapply_merge
    from .lifelong.run import format_matrix

    _quiet_transformers()
    load = base_loader({"base": str(args.base)}) if args.base else None
    res = reapply_merge(args.run, args.method, load, density=args.density, lam=args.lam, keep=args.keep,
                        clamp=args.clamp, out=args.out, progress=not args.no_progress)
    print(format_matrix(res))
    print(f"wrote {args.out or Path(args.run) / f'merge-{args.method}'}/summary.json and accuracy.json")
    return 0


def _federated_demo(args) -> int:
    from .demo.federated import FederatedDemoConfig, run_federated_demo

    _quiet_transformers()
    flags = dict(out=args.out, tasks=tuple(args.tasks.split(",")) if args.tasks else None, n_train=args.n_train,
                 n_test=args.n_test, clients=args.clients, per_round=args.per_round, rounds=args.rounds,
                 local_epochs=args.local_epochs, beta=args.beta, seed=args.seed, engine=args.engine,
                 compare=tuple(args.compare.split(",")) if args.compare else None,
                 pilora=False if args.no_pilora else None, progress=not args.no_progress)
    run_federated_demo(FederatedDemoConfig(**{k: v for k, v in flags.items() if v is not None}))
    return 0


def _ops_demo(args) -> int:
    from .demo.ops import DemoConfig, run

    budget = args.budget if args.budget is not None else (args.n + args.duplicates) * 5 // 8
    cfg = DemoConfig(n_unique=args.n, n_duplicates=args.duplicates, in_dim=args.in_dim, out_dim=args.out_dim,
                     n_skills=args.clusters, eps=args.eps, pool_budget=budget, seed=args.seed)
    run(cfg, args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="adaptinf-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info_p = sub.add_parser("info", help="package, torch, triton, CUDA, _C and the backends per op; with --model, "
                            "what a model folder is (family, processor, image tokens, LoRA targets)")
    info_p.add_argument("--model", type=Path, default=None, help="a local model folder to describe")
    # The demo's defaults live in one place, DemoConfig (pydantic): a flag left out stays None here and
    # DemoConfig fills it in, so building this parser imports neither pydantic nor the demo.
    demo = sub.add_parser("demo", help="the whole lifelong loop on a built-in tiny LLaVA and built-in tasks (no network)")
    demo.add_argument("--out", type=Path, help="output folder (default ./adaptinf-demo)")
    demo.add_argument("--compare", default="", help="baselines and strategies to run on the same data, e.g. "
                      "random,full,merge:average,merge:ties,hide")
    demo.add_argument("--tasks", help="comma-separated tasks, one stage each")
    demo.add_argument("--n-train", type=int, help="training records per task")
    demo.add_argument("--n-test", type=int, help="test records per task")
    demo.add_argument("--pretrain-epochs", type=int, help="stage-0 epochs over the captions")
    demo.add_argument("--epochs", type=int, help="LoRA epochs per stage over the selected subset")
    demo.add_argument("--budget", type=int, help="training samples selected per stage")
    demo.add_argument("--pool-budget", type=int, help="pool size kept after pruning")
    demo.add_argument("--k", type=int, help="pseudo-skill clusters")
    demo.add_argument("--out-dim", type=int, help="gradient projection width")
    demo.add_argument("--seed", type=int)
    demo.add_argument("--seeds", type=int, help="independent runs at seeds seed, seed+1, ... (each in out/seed-S): "
                      "the comparison as mean ± std, the relative gain with its 95%% interval")
    demo.add_argument("--scenario", choices=["default", "imbalanced"],
                      help="imbalanced: three small tasks of distinct answer formats, then a large redundant one "
                           "(yes/no in three phrasings), budgets well below the pool")
    demo.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where the model trains and generates "
                      "(default auto: the GPU when one is visible, with bf16 autocast)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    run = sub.add_parser("run", help="a real lifelong run from a YAML/TOML config (see the README)")
    run.add_argument("--config", required=True, type=Path)
    run.add_argument("--out", type=Path, default=None, help="output folder (default: the config's 'out')")
    run.add_argument("--baseline", action="append", default=[], metavar="NAME=RUN_FOLDER",
                     help="a finished run of the same tasks to report the relative gain against (repeatable)")
    run.add_argument("--no-progress", action="store_true")
    fedrun = sub.add_parser("federated", help="a federated continual run (FCIT: FedAvg or DISCO, optionally Adapt-inf "
                            "selection on every client) from a run config with a 'federated' section, on Flower")
    fedrun.add_argument("--config", required=True, type=Path)
    fedrun.add_argument("--out", type=Path, default=None, help="output folder (default: the config's 'out')")
    fedrun.add_argument("--engine", choices=["flower", "local"], default="flower",
                        help="flower: Flower's simulation engine (Ray), one virtual SuperNode per client; "
                             "local: every client in this process")
    fedrun.add_argument("--cpus-per-client", type=float, default=1.0, help="Ray resources per simulated client")
    fedrun.add_argument("--gpus-per-client", type=float, default=0.0,
                        help="GPUs per simulated client (e.g. 0.25: four share one; 0: clients train on the CPU)")
    fedrun.add_argument("--no-progress", action="store_true")
    merge = sub.add_parser("merge", help="re-apply a training-free merge of a finished run's per-stage adapters")
    merge.add_argument("run", type=Path, help="a finished run folder (from run or demo)")
    merge.add_argument("--method", required=True, choices=["average", "ties", "copa"],
                       help="average, ties or copa (CoPA-Merging as its official code computes it)")
    merge.add_argument("--density", type=float, default=0.2, help="ties: fraction of each update's entries kept")
    merge.add_argument("--keep", type=float, default=0.2, help="copa: fraction of each A and B kept by magnitude")
    merge.add_argument("--clamp", type=float, default=0.2,
                       help="copa: share of each task's largest scaling coefficients left distinct")
    merge.add_argument("--lam", type=float, default=None, help="ties: scale of the merged update (default 1.0); "
                       "copa: the fuse weight (default 2.0)")
    merge.add_argument("--base", type=Path, default=None, help="base model folder (default: the one in run.json)")
    merge.add_argument("--out", type=Path, default=None, help="output folder (default RUN/merge-METHOD)")
    merge.add_argument("--no-progress", action="store_true")
    ops = sub.add_parser("demo-ops", help="the three kernels on built-in synthetic gradients with planted duplicates")
    ops.add_argument("--out", type=Path, default=Path("adaptinf-demo-ops"), help="output folder (summary.json)")
    ops.add_argument("--n", type=int, default=3000, help="unique samples")
    ops.add_argument("--duplicates", type=int, default=1000, help="planted near-duplicates")
    ops.add_argument("--in-dim", type=int, default=32768, help="length of each synthetic gradient")
    ops.add_argument("--out-dim", type=int, default=512, help="projection width")
    ops.add_argument("--clusters", type=int, default=8, help="pseudo-skills K")
    ops.add_argument("--eps", type=float, default=0.05, help="SemDeDup threshold eps")
    ops.add_argument("--budget", type=int, default=None, help="pool size after pruning (default 5/8 of the pool)")
    ops.add_argument("--seed", type=int, default=0)
    fed = sub.add_parser("demo-federated", help="a scaled-down FCIT on the built-in tasks under Flower's simulation "
                         "(FedAvg, DISCO, DISCO + Adapt-inf selection on every client), then PILoRA (no network)")
    fed.add_argument("--out", type=Path, help="output folder (default ./adaptinf-demo-federated)")
    fed.add_argument("--tasks", help="comma-separated tasks, one stage each")
    fed.add_argument("--n-train", type=int, help="training records per task (split over the clients)")
    fed.add_argument("--n-test", type=int, help="test records per task")
    fed.add_argument("--clients", type=int, help="clients (default 10)")
    fed.add_argument("--per-round", type=int, help="clients sampled per round (default 3)")
    fed.add_argument("--rounds", type=int, help="rounds per stage (default 2)")
    fed.add_argument("--local-epochs", type=int, help="epochs per client per round (default 10)")
    fed.add_argument("--beta", type=float, help="Dirichlet concentration of the split (default 1.0)")
    fed.add_argument("--compare", help="runs among fedavg,disco,disco+adaptinf (default all three)")
    fed.add_argument("--engine", choices=["flower", "local"], help="flower (default): Flower's simulation engine; "
                     "local: the same rounds in this process")
    fed.add_argument("--no-pilora", action="store_true", help="skip the PILoRA class-incremental run")
    fed.add_argument("--seed", type=int)
    fed.add_argument("--no-progress", action="store_true")
    from .lifelong.cli import add_parsers, run as run_pool_command

    add_parsers(sub)
    args = parser.parse_args(argv)
    commands = {"info": lambda a: model_info(a.model) if a.model else info(), "demo": _demo, "run": _run, "merge": _merge, "demo-ops": _ops_demo,
                "demo-federated": _federated_demo, "federated": _federated}
    try:
        return commands.get(args.command, run_pool_command)(args)
    except (ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"adaptinf-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # an optional dependency the command imports is absent
        top = (exc.name or "").partition(".")[0]
        if top not in _NEEDED_FOR:
            raise
        what, install = _NEEDED_FOR[top]
        print(f"adaptinf-fast {args.command}: error: {exc.name} is needed for {what} but is not installed: {install}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
