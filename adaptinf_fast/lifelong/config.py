"""One configuration schema for a stage, a lifelong run and the demo (pydantic, unknown keys refused).

A config file (YAML, or TOML on Python >= 3.11) has the same sections for ``stage --config`` and
``run --config``::

    seed:      0
    features:  {layers, out_dim, batch_size, max_length}
    selection: {method, k, budget, pool_budget, prune, eps, scores, rules}
    stages:    [...]                           # one entry per stage

``run --config`` adds ``out``, ``model``, ``lora``, ``train`` and ``eval``, and each stage is
``{name, train, test, images}`` plus per-stage ``selection`` keys. ``stage --config`` adds ``pool``
and each stage is ``{stage, data, source, features_from | model, image_root}`` plus per-stage
``features`` and ``selection`` keys. Every error (unknown key, bad value, missing file) is reported with its location
in the file, all at once, before any work starts. The old flat ``stage --config`` format (every key
at the top level) still loads, with a deprecation note.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

log = logging.getLogger("adaptinf_fast")
METHODS = ("adaptinf", "random", "full", "semdedup")  # and "score:<name>"
SCORE_NAMES = ("ppl", "el2n", "entropy", "grand", "ig")
Layers = Union[Literal["last", "all"], list[int]]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def error_lines(exc: ValidationError, prefix: str = "") -> list[str]:
    """'location: message' for every error pydantic found."""
    out = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        msg = e["msg"].removeprefix("Value error, ")
        out.append(f"{loc}: {msg}" if loc else msg)
    return out


def _problems(errors: list[str]) -> None:
    if errors:
        raise ValueError("; ".join(errors))


class FeatureSettings(Strict):
    """``dtype``: how features are stored on disk (16-bit; read through a memory map, never loaded
    whole); ``rows_in_memory``: feature rows resident at once in the cluster and prune steps (k-means
    chunks, pruning groups; default: 256 MiB of float32 rows per k-means chunk, 512 MiB per group; a
    cluster tiled out of core holds at least 512 + 4096 rows, the reference's tiles)."""

    layers: Layers = "last"
    out_dim: int = Field(8192, ge=1)
    batch_size: int = Field(8, ge=1)
    max_length: Optional[int] = Field(None, ge=1)
    dtype: Literal["float16", "bfloat16"] = "float16"
    rows_in_memory: Optional[int] = Field(None, ge=64)


class SelectionSettings(Strict):
    """``budget``: training samples per stage; ``pool_budget``: pool size after pruning (``None``:
    no pruning); ``prune``: ``budget`` (default with a pool budget), ``threshold`` (SemDeDup at
    ``eps``) or ``none``; ``rules``: ours or the release's (README: where we differ)."""

    method: str = "adaptinf"
    # K of the pseudo-skill clusters; "auto" or a list of candidates: chosen per stage on a sample
    # (lifelong/choose_k.py: largest silhouette, the smallest K within 0.02 of it)
    k: Union[Annotated[int, Field(ge=1)], Literal["auto"], Annotated[list[Annotated[int, Field(ge=2)]], Field(min_length=1)]] = 10
    budget: int = Field(1000, ge=0)
    pool_budget: Optional[int] = Field(None, ge=0)
    prune: Optional[Literal["budget", "threshold", "none"]] = None
    eps: float = Field(0.05, gt=0, lt=2)
    scores: list[str] = Field(default_factory=lambda: list(SCORE_NAMES), min_length=1)
    rules: Literal["adaptinf", "release"] = "adaptinf"

    @model_validator(mode="after")
    def _check(self):
        errors = []
        if self.method not in METHODS and not (self.method.startswith("score:") and self.method[6:] in SCORE_NAMES):
            errors.append(f"method is {self.method!r}; expected one of {METHODS} or score:<{'|'.join(SCORE_NAMES)}>")
        unknown = set(self.scores) - set(SCORE_NAMES)
        if unknown:
            errors.append(f"scores must be a subset of {SCORE_NAMES}; got {self.scores}")
        if self.prune == "budget" and self.pool_budget is None:
            errors.append("prune='budget' needs pool_budget")
        if self.rules == "release" and self.prune == "threshold":
            errors.append("rules='release' prunes only to a pool budget: the release has no threshold mode")
        _problems(errors)
        return self

    @property
    def prune_mode(self) -> str:
        return self.prune or ("budget" if self.pool_budget is not None else "none")


class StageConfig(SelectionSettings, FeatureSettings):
    """What one stage does on a pool: where its data and features come from, plus the feature and
    selection settings above (``batch_size``: the feature pass's)."""

    stage: int = Field(ge=1)
    data: Optional[str] = None
    source: Optional[str] = None
    features_from: Optional[str] = None  # .npz with ids, features (N, k), score_<name>
    model: Optional[str] = None  # a saved PEFT adapter folder: features by GradientFeaturizer
    image_root: Optional[str] = None
    seed: int = 0

    @model_validator(mode="after")
    def _files(self):
        errors = []
        if self.data is not None and not Path(self.data).exists():
            errors.append(f"data file {self.data} does not exist")
        if self.data is not None and not self.source:
            errors.append("data needs a source name")
        if self.features_from is not None and not Path(self.features_from).exists():
            errors.append(f"features file {self.features_from} does not exist")
        if self.model is not None and not (Path(self.model) / "adapter_config.json").exists():
            errors.append(f"model {self.model} is not a saved PEFT adapter folder (no adapter_config.json)")
        if self.model is not None and self.features_from is not None:
            errors.append("give either features_from or model, not both")
        _problems(errors)
        return self

    @property
    def needs_features(self) -> bool:
        """False for the baselines that look at no feature: random or full selection without pruning."""
        return self.method not in ("random", "full") or self.prune_mode != "none"


class LoraSettings(Strict):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: Any = None  # default: the language model's attention and MLP projections (models.py)

    def peft_config(self, model, experts: int = 1, projections: tuple[str, ...] | None = None):
        """PEFT's LoraConfig; with ``experts`` E, one adapter of rank E·r read as E experts of rank r
        (``lifelong/experts.py``), alpha scaled alike so each expert keeps the scale alpha / r.
        ``projections``: the language model's projections a strategy targets by default (e.g. DISCO's
        MLP); ``target_modules``, when set, wins."""
        from peft import LoraConfig

        from .models import LLM_PROJECTIONS, default_lora_targets

        targets = (self.target_modules if self.target_modules is not None
                   else default_lora_targets(model, projections or LLM_PROJECTIONS))
        return LoraConfig(r=self.r * experts, lora_alpha=self.alpha * experts, lora_dropout=self.dropout,
                          target_modules=targets, task_type=None)


class TrainConfig(Strict):
    """The PEFT LoRA loop of a stage (``train.py``): AdamW, warm-up + cosine, accumulation, clipping."""

    lr: float = Field(2e-4, gt=0)
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)  # per optimizer micro-step, over all processes together
    grad_accum: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 0
    save_every: int = Field(50, ge=1)
    pad_token_id: int = 0
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"  # mixed precision on GPU (none on CPU)
    gradient_checkpointing: bool = False
    log: Literal["auto", "tensorboard", "none"] = "auto"  # auto: TensorBoard when installed


class EvalSettings(Strict):
    scorer: str = "exact_match"  # the default task metric (scoring.METRICS); a task's own `metric` wins
    max_new_tokens: int = Field(16, ge=1)
    limit: Optional[int] = Field(None, ge=1)  # test records per task
    batch_size: int = Field(16, ge=1)  # prompts per batched greedy generate


class ModelSettings(Strict):
    base: str
    tokenizer: Optional[str] = None
    adapter: Optional[str] = None
    dtype: Optional[Literal["float32", "bfloat16", "float16"]] = None  # default: bf16 on GPU, fp32 on CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _folders(self):
        from .models import check_loadable

        errors = []
        if not (Path(self.base) / "config.json").exists():
            errors.append(f"base is {self.base!r}; expected a local model folder with a config.json")
        else:
            try:
                check_loadable(self.base)
            except ValueError as exc:
                errors.append(str(exc))
        for key in ("tokenizer", "adapter"):
            if getattr(self, key) is not None and not Path(getattr(self, key)).is_dir():
                errors.append(f"{key} {getattr(self, key)!r} is not a folder")
        _problems(errors)
        return self


class MergeSettings(Strict):
    """``strategy: merge:*`` (lifelong/strategies/merge.py). TIES keeps ``density`` of each task's
    update entries; CoPA keeps ``keep`` of each A and B by magnitude and lets the top ``clamp``
    share of each task's scaling coefficients stay distinct; ``lam`` scales the merge (default:
    1.0 for TIES, 2.0 for CoPA, the official codes' values)."""

    density: float = Field(0.2, gt=0, le=1)
    lam: Optional[float] = Field(None, gt=0)
    keep: float = Field(0.2, gt=0, le=1)
    clamp: float = Field(0.2, ge=0, le=1)


class HideSettings(Strict):
    """``strategy: hide`` (lifelong/strategies/hide.py): one LoRA of ``experts`` × lora.r ranks, one
    expert per task (default: as many as the run has tasks); ``specific_layers`` (decoder-layer
    indices, negative from the last) mix the experts by the router's weights, every other layer
    sums them. ``init_std``: each expert's A ~ N(0, init_std), B = 0. ``probe``: training prompts of
    the stage's task for the CKA report (hidden states with the new expert against the previous)."""

    experts: Optional[int] = Field(None, ge=1)
    specific_layers: list[int] = Field(default_factory=lambda: [-1])
    init_std: float = Field(0.01, gt=0)
    probe: int = Field(32, ge=2)


class DiscoSettings(Strict):
    """``strategy: disco`` (lifelong/strategies/disco.py; DISCO as MCITlib's centralised port): one
    LoRA of ``experts`` × lora.r ranks (default: one subspace per task), on the language model's MLP
    projections (``targets: mlp``, FCIT's choice; ``all``: every projection, as MCITlib's port);
    inference weights softmax(cos(text, prototype_i) / ``temperature``) over the learned subspaces."""

    experts: Optional[int] = Field(None, ge=1)
    targets: Literal["mlp", "all"] = "mlp"
    temperature: float = Field(0.05, gt=0)
    init_std: float = Field(0.01, gt=0)


class ModalPromptSettings(Strict):
    """``strategy: modalprompt`` (lifelong/strategies/modalprompt.py): ``length`` prompt vectors per
    task, the top ``top_k`` tasks' prompts fused at the input (K = 3, the official code's; MCITlib 1)."""

    length: int = Field(10, ge=1)
    top_k: int = Field(3, ge=1)


class RouterSettings(Strict):
    """The task router (lifelong/routing.py): features from the CLIP model folder ``clip`` (None:
    the model's own), compared over ``modalities``, softmax at ``temperature``."""

    clip: Optional[str] = None
    temperature: float = Field(0.1, gt=0)
    modalities: list[Literal["image", "text"]] = Field(default_factory=lambda: ["image", "text"])

    @model_validator(mode="after")
    def _clip(self):
        if self.clip is not None and not (Path(self.clip) / "config.json").exists():
            raise ValueError(f"router.clip is {self.clip!r}; expected a local CLIP model folder with a config.json")
        if not self.modalities:
            raise ValueError("router.modalities must name image, text or both")
        return self


class RunConfig(Strict):
    """Everything a lifelong run decides, section by section (the run file without its paths)."""

    seed: int = 0
    strategy: str = "sequential"
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    merge: MergeSettings = Field(default_factory=MergeSettings)
    hide: HideSettings = Field(default_factory=HideSettings)
    disco: DiscoSettings = Field(default_factory=DiscoSettings)
    modalprompt: ModalPromptSettings = Field(default_factory=ModalPromptSettings)
    router: RouterSettings = Field(default_factory=RouterSettings)

    @model_validator(mode="after")
    def _scorer(self):
        from .scoring import METRICS
        from .strategies import check

        if self.eval.scorer not in METRICS:
            raise ValueError(f"eval.scorer is {self.eval.scorer!r}; expected one of {list(METRICS)}")
        check(self.strategy)
        if self.strategy in ("hide", "disco") and self.train.weight_decay > 0:
            raise ValueError(f"strategy {self.strategy} trains one expert of a shared adapter per stage: weight decay "
                             "would shrink the other experts (the official code trains with none); set "
                             "train.weight_decay to 0")
        return self

    def stage_config(self, t: int, source: str, data: Path | str | None, overrides: dict | None = None) -> StageConfig:
        """Stage ``t``'s StageConfig: the run's features and selection, then ``overrides`` (selection keys)."""
        unknown = set(overrides or {}) - set(SelectionSettings.model_fields)
        if unknown:
            raise ValueError(f"stage {t} ({source}): unknown selection keys {sorted(unknown)} "
                             f"(known: {sorted(SelectionSettings.model_fields)})")
        return StageConfig(stage=t, data=None if data is None else str(data), source=source, seed=self.seed,
                           **self.features.model_dump(), **{**self.selection.model_dump(), **(overrides or {})})


# -- files -------------------------------------------------------------------------------------------

class RunTask(Strict):
    name: str
    train: str
    test: str
    images: Optional[str] = None
    metric: Optional[str] = None  # this task's evaluation metric (scoring.METRICS; default eval.scorer)
    selection: dict = Field(default_factory=dict)  # per-stage selection keys

    @model_validator(mode="after")
    def _files(self):
        from .scoring import METRICS

        errors = [f"{key} file {getattr(self, key)} does not exist" for key in ("train", "test")
                  if not Path(getattr(self, key)).is_file()]
        if self.metric is not None and self.metric not in METRICS:
            errors.append(f"metric is {self.metric!r}; expected one of {list(METRICS)}")
        if self.images and not Path(self.images).is_dir():
            errors.append(f"images folder {self.images} does not exist")
        _problems(errors)
        return self


class RunFile(RunConfig):
    out: str = "adaptinf-run"
    model: ModelSettings
    stages: list[RunTask] = Field(min_length=1)


class StageEntry(Strict):
    stage: int = Field(ge=1)
    data: Optional[str] = None
    source: Optional[str] = None
    features_from: Optional[str] = None
    model: Optional[str] = None
    image_root: Optional[str] = None
    features: dict = Field(default_factory=dict)  # per-stage feature keys
    selection: dict = Field(default_factory=dict)  # per-stage selection keys


class StageFile(Strict):
    pool: Optional[str] = None
    seed: int = 0
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    stages: list[StageEntry] = Field(min_length=1)


def read_config(path: str | Path) -> dict:
    """The raw document of a YAML (.yaml/.yml) or TOML (.toml) config file."""
    p = Path(path)
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        import yaml

        doc = yaml.safe_load(text)
    elif p.suffix == ".toml":
        import tomllib

        doc = tomllib.loads(text)
    else:
        raise ValueError(f"{p}: expected a .yaml, .yml or .toml config")
    if not isinstance(doc, dict):
        raise ValueError(f"{p}: expected a mapping at the top level")
    return doc


def _fail(path, errors: list[str]):
    raise ValueError(f"invalid config {path}:\n  - " + "\n  - ".join(errors))


FLAT_SECTIONS = {"features": ("layers", "out_dim", "max_length", "dtype", "rows_in_memory"), "selection": tuple(SelectionSettings.model_fields)}
FLAT_STAGE = ("data", "source", "features_from", "model", "image_root")


def convert_flat(doc: dict) -> dict:
    """The old flat stage format (every StageConfig key at the top level or in a stage) as sections."""
    def split(d: dict) -> tuple[dict, dict, dict]:
        feats = {k: d.pop(k) for k in list(d) if k in FLAT_SECTIONS["features"]}
        if "feature_batch_size" in d:
            feats["batch_size"] = d.pop("feature_batch_size")
        sel = {k: d.pop(k) for k in list(d) if k in FLAT_SECTIONS["selection"]}
        return feats, sel, d

    top = dict(doc)
    stages = top.pop("stages", [])
    feats, sel, rest = split(top)
    out = {**rest, "features": feats, "selection": sel, "stages": []}
    stage_defaults = {k: out.pop(k) for k in FLAT_STAGE if k in out}
    for s in stages if isinstance(stages, list) else []:
        s = {**stage_defaults, **s} if isinstance(s, dict) else s
        if isinstance(s, dict):
            f2, s2, r2 = split(dict(s))
            if f2:
                r2["features"] = f2
            out["stages"].append({**r2, "selection": s2})
        else:
            out["stages"].append(s)
    return out


def load_stage_config(path: str | Path) -> tuple[str | None, list[StageConfig]]:
    """(pool folder or None, the validated StageConfig of every stage) from a stage config file."""
    doc = read_config(path)
    flat_keys = set(FLAT_SECTIONS["features"]) | set(FLAT_SECTIONS["selection"]) | {"feature_batch_size"}
    stage_keys = {k for st in doc.get("stages") or [] if isinstance(st, dict) for k in st}
    if (set(doc) & (flat_keys | set(FLAT_STAGE))) or (stage_keys & flat_keys):
        warnings.warn(f"{path}: the flat stage config format is deprecated; put feature keys under 'features:' "
                      "and selection keys under 'selection:' (see adaptinf_fast/lifelong/config.py)",
                      DeprecationWarning, stacklevel=2)
        log.warning("%s: flat stage config format (deprecated): read as sections", path)
        doc = convert_flat(doc)
    try:
        spec = StageFile.model_validate(doc)
    except ValidationError as exc:
        _fail(path, error_lines(exc))
    errors, cfgs = [], []
    for i, s in enumerate(spec.stages):
        entry = s.model_dump(exclude={"selection", "features"}, exclude_none=True)
        try:
            cfgs.append(StageConfig(seed=spec.seed, **{**spec.features.model_dump(), **s.features},
                                    **{**spec.selection.model_dump(), **s.selection}, **entry))
        except ValidationError as exc:
            errors += error_lines(exc, f"stages.{i}")
    if errors:
        _fail(path, errors)
    return spec.pool, cfgs


def load_run_config(path: str | Path, file_schema: type = None, config_schema: type = None) -> tuple[Path, list, RunConfig, dict]:
    """(out folder, tasks, RunConfig, model settings) from a run config file, all errors at once
    (``file_schema`` / ``config_schema``: a federated run's, ``federated/config.py``)."""
    from .run import Task

    file_schema, config_schema = file_schema or RunFile, config_schema or RunConfig
    doc = read_config(path)
    try:
        spec = file_schema.model_validate(doc)
    except ValidationError as exc:
        _fail(path, error_lines(exc))
    cfg = config_schema(**spec.model_dump(include=set(config_schema.model_fields)))
    errors, tasks = [], []
    for t, s in enumerate(spec.stages, 1):
        try:
            cfg.stage_config(t, s.name, None, s.selection)
        except ValidationError as exc:
            errors += error_lines(exc, f"stages.{t - 1}.selection")
        except ValueError as exc:
            errors.append(f"stages.{t - 1}.selection: {exc}")
        tasks.append(Task(s.name, s.train, s.test, s.images, s.selection, metric=s.metric))
    if errors:
        _fail(path, errors)
    return Path(spec.out), tasks, cfg, spec.model.model_dump()
