"""The trainer every variant shares: one function, every knob from ``TrainParams``.

AdamW with discriminative learning rates (backbone / ``classifier.*`` head), a per-step cosine
schedule without warmup by default, focal or cross-entropy loss, SpecAugment and MixUp, optional
class-balanced sampling, gradient clipping, mixed precision, gradient accumulation, early stopping
on a validation metric, and the best epoch's weights as the result. Every epoch leaves a resume
state under ``<out>/state/``; a killed run re-run with the same params and data continues from its
last completed epoch and ends with the same weights as an uninterrupted run. The same code runs
on one process or under ``torchrun`` (DDP, see ``birdops.train.distributed``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from dvclive.live import Live
from torch import nn
from torch.amp.grad_scaler import GradScaler
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from birdops import metrics
from birdops.config import TrainParams
from birdops.contracts import ClassifierInfo
from birdops.models.checkpoint import save_classifier
from birdops.models.factory import build_model
from birdops.models.pretrained import load_pretrained
from birdops.train.augment import mixup, spec_augment
from birdops.train.data import (
    EpochSampler,
    FeatureDataset,
    MixingSampler,
    TrainData,
    data_fingerprint,
    training_set,
)
from birdops.train.distributed import DistContext, all_gather_1d, all_reduce_sum, barrier, distributed
from birdops.train.losses import LossFn, make_loss
from birdops.train.optim import Schedule, make_optimizer
from birdops.train.state import Snapshot, TrainState, derive_seed, hash_text, load_state, save_state

log = logging.getLogger(__name__)

STATE_DIR = "state"
# early-stopping metric -> (history key, whether larger is better)
STOP_METRICS: dict[str, tuple[str, bool]] = {
    "val_accuracy": ("val/accuracy", True),
    "val_f1_macro": ("val/f1_macro", True),
    "val_loss": ("val/loss", False),
}
# transformer parameters that are not weights of a linear map: no weight decay (timm does the same)


@dataclass(frozen=True)
class TrainResult:
    info: ClassifierInfo  # what was saved in the output directory
    history: list[dict[str, float]]  # one row of metrics per epoch run
    resumed_epochs: int  # epochs restored from a resume state (0: a fresh run)


def train(
    params: TrainParams, data: TrainData, out_dir: str | Path, live_dir: str | Path | None, variant: str
) -> TrainResult:
    """Train one variant on ``data``; write ``model.safetensors`` + ``config.json`` to ``out_dir``
    and the per-epoch curves to the dvclive folder ``live_dir`` (rank 0 only)."""
    with distributed() as ctx, deterministic_mode(params.deterministic, ctx.device):
        return _train(params, data, Path(out_dir), None if live_dir is None else Path(live_dir), variant, ctx)


def _train(
    params: TrainParams, data: TrainData, out_dir: Path, live_dir: Path | None, variant: str, ctx: DistContext
) -> TrainResult:
    run = start_run(params, data, ctx)
    model, optimizer, recipe = run.model, run.optimizer, run.recipe
    train_sampler, train_loader, val_loader = run.train_sampler, run.train_loader, run.val_loader

    state_dir = out_dir / STATE_DIR
    fingerprint = run_fingerprint(params, data, variant, ctx.world_size)
    state, best_weights = TrainState(fingerprint=fingerprint), cpu_copy(model.state_dict())
    snapshot = load_state(state_dir, fingerprint)
    if snapshot is not None:
        state, best_weights = restore(snapshot, model, optimizer, recipe.scaler)
        log.info("resuming %s after epoch %d of %d (from %s)", variant, state.epoch, params.epochs, state_dir)
    resumed = state.epoch
    if ctx.is_main:
        log_run(variant, model, data, recipe, ctx)
    live = open_live(live_dir, state.history) if ctx.is_main and live_dir is not None else None
    net = training_net(model, params, ctx)
    key, larger_is_better = STOP_METRICS[params.early_stopping.metric]

    while state.epoch < params.epochs and state.bad_epochs < params.early_stopping.patience:
        started = time.monotonic()
        # every random draw of the epoch follows from (seed, epoch, rank): nothing to restore on resume
        torch.manual_seed(derive_seed(params.seed, state.epoch, ctx.rank))
        generator = torch.Generator().manual_seed(derive_seed(params.seed, state.epoch, ctx.rank, 1))
        train_sampler.set_epoch(state.epoch)
        desc = f"{variant} epoch {state.epoch + 1}/{params.epochs}"
        train_metrics, state.step = train_epoch(net, train_loader, recipe, generator, ctx, state.step, desc)
        val_metrics = evaluate(model, val_loader, recipe.loss_fn, ctx, recipe.dtype)
        row = {**train_metrics, **val_metrics, **learning_rates(optimizer)}
        state.history.append(row)
        state.epoch += 1
        if improved(row[key], state.best_value, larger_is_better):
            state.best_value, state.best_epoch, state.bad_epochs = row[key], state.epoch, 0
            best_weights = cpu_copy(model.state_dict())
        else:
            state.bad_epochs += 1
        state.scaler = recipe.scaler.state_dict() if recipe.scaler.is_enabled() else {}
        if ctx.is_main:
            log_epoch(state, row, params.epochs, time.monotonic() - started)
            if live is not None:
                log_row(live, row)
            save_state(state_dir, state, model.state_dict(), best_weights, optimizer.state_dict())
            if state.bad_epochs >= params.early_stopping.patience:
                log.info("early stop: no %s improvement for %d epochs", key, state.bad_epochs)
        barrier(ctx)

    model.load_state_dict(best_weights)
    info = ClassifierInfo(
        variant=variant,
        model=params.model.model_dump(),
        labels=data.labels,
        feature_preset=data.preset,
        feature_spec=data.spec,
        clip_seconds=data.clip_seconds,
        best_epoch=state.best_epoch,
        best_metric=params.early_stopping.metric,
        best_value=state.best_value,
        epochs_run=state.epoch,
        activation=params.loss.activation,
    )
    if ctx.is_main:
        finish(out_dir, model, info, live)
    barrier(ctx)
    return TrainResult(info=info, history=state.history, resumed_epochs=resumed)


@dataclass(frozen=True)
class Run:
    """What a run trains and steps through, as it starts: the model, its optimizer and recipe, and
    this rank's loaders."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    recipe: Recipe
    train_sampler: EpochSampler
    train_loader: DataLoader[Batch]
    val_loader: DataLoader[Batch]


def start_run(params: TrainParams, data: TrainData, ctx: DistContext) -> Run:
    """The seeded model on ``ctx.device`` (:func:`build_training_model`), its AdamW, the loaders of
    :func:`make_loaders` and the recipe: what :func:`train` sets up before its epochs (and what
    ``birdops bench`` times :func:`train_epoch` with)."""
    num_classes = len(data.labels)
    model = build_training_model(params, num_classes, *data.shape.features, ctx)
    optimizer = make_optimizer(model, params.optim, fused=use_fused_adamw(params, ctx.device))
    train_sampler, train_loader, val_loader = make_loaders(data, params, ctx)
    recipe = make_recipe(params, optimizer, num_classes, len(train_loader), ctx)
    return Run(model, optimizer, recipe, train_sampler, train_loader, val_loader)


def finish(out_dir: Path, model: nn.Module, info: ClassifierInfo, live: Live | None) -> None:
    """Write the kept model and drop the resume state (the run is complete, and the state is large)."""
    save_classifier(out_dir, model, info)
    shutil.rmtree(out_dir / STATE_DIR, ignore_errors=True)
    if live is not None:
        close_live(live, info)
    log.info(
        "%s: kept epoch %s (%s %s) -> %s",
        info.variant,
        info.best_epoch,
        info.best_metric,
        info.best_value,
        out_dir,
    )


# --------------------------------------------------------------------------------------- the model
def build_training_model(
    params: TrainParams, num_classes: int, n_bins: int, n_frames: int, ctx: DistContext
) -> nn.Module:
    """The model to train, on ``ctx.device``: seeded (the same initial weights on every rank and every
    re-run), with ``params.attention``'s kernel, filled from ``model.pretrained`` when it names one."""
    torch.manual_seed(params.seed)
    model = build_model(params.model, num_classes, n_bins, n_frames, attention=params.attention)
    if params.model.pretrained:
        load_pretrained(model, params.model.pretrained)
    return model.to(ctx.device)


def training_net(model: nn.Module, params: TrainParams, ctx: DistContext) -> nn.Module:
    """What the training steps call: ``model`` in DDP under torchrun, compiled when
    ``compile_model`` is set. It shares ``model``'s parameters; evaluation, checkpoints and the resume
    state use ``model`` itself (no ``_orig_mod.`` or ``module.`` prefixes in the saved names)."""
    net: nn.Module = model
    if ctx.is_distributed:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=device_ids)
    if params.compile_model:
        # compiling the DDP module lets dynamo split the graph at DDP's gradient buckets
        net = torch.compile(net)  # type: ignore[assignment]
    return net


def ddp_module(net: nn.Module) -> DistributedDataParallel | None:
    """The DDP module inside ``net`` (compiled or not), or None on one process."""
    inner = getattr(net, "_orig_mod", net)  # torch.compile's wrapper keeps the module it compiled
    return inner if isinstance(inner, DistributedDataParallel) else None


# ------------------------------------------------------------------------------------ optimization
def use_fused_adamw(params: TrainParams, device: torch.device) -> bool:
    """``fused_adamw``: ``auto`` fuses on CUDA only, so CPU runs keep the results they had."""
    if params.fused_adamw == "auto":
        return device.type == "cuda"
    return params.fused_adamw == "on"


def accumulation_steps(params: TrainParams, world_size: int) -> int:
    """Micro-batches per optimizer step so that one step sees ``effective_batch_size`` clips."""
    if params.effective_batch_size is None:
        return 1
    per_step = params.batch_size * world_size
    if params.effective_batch_size % per_step:
        raise ValueError(
            f"effective_batch_size {params.effective_batch_size} is not a multiple of batch_size "
            f"{params.batch_size} x {world_size} processes"
        )
    return params.effective_batch_size // per_step


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (None: full fp32). ``auto``: bf16 on CUDA, fp32 on CPU."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[object]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# -------------------------------------------------------------------------------------- the epochs
def make_recipe(
    params: TrainParams,
    optimizer: torch.optim.Optimizer,
    num_classes: int,
    batches_per_epoch: int,
    ctx: DistContext,
) -> Recipe:
    """Loss, schedule (in optimizer steps), accumulation and precision of a run."""
    accumulation = accumulation_steps(params, ctx.world_size)
    steps_per_epoch = math.ceil(batches_per_epoch / accumulation)
    dtype = autocast_dtype(params.precision, ctx.device)
    return Recipe(
        params=params,
        optimizer=optimizer,
        scaler=GradScaler(ctx.device.type, enabled=dtype == torch.float16),
        loss_fn=make_loss(params.loss),
        schedule=Schedule(
            total_steps=params.epochs * steps_per_epoch,
            warmup_steps=round(params.schedule.warmup_epochs * steps_per_epoch),
            params=params.schedule,
        ),
        num_classes=num_classes,
        accumulation=accumulation,
        dtype=dtype,
    )


@dataclass(frozen=True)
class Recipe:
    """Everything a training step uses besides the batch."""

    params: TrainParams
    optimizer: torch.optim.Optimizer
    scaler: GradScaler
    loss_fn: LossFn
    schedule: Schedule
    num_classes: int
    accumulation: int  # micro-batches per optimizer step
    dtype: torch.dtype | None  # autocast dtype; None: fp32


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # features (B, F, T), labels (B,), weights (B, C)


def presence(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B,)`` label indices -> ``(B, C)`` float32 one-hot rows; a background clip (-1) is all zeros."""
    return F.one_hot(labels.clamp(min=0), num_classes).float() * (labels >= 0).unsqueeze(1).float()


def train_epoch(
    net: nn.Module,
    loader: DataLoader[Batch],
    recipe: Recipe,
    generator: torch.Generator,
    ctx: DistContext,
    step: int,
    desc: str,
) -> tuple[dict[str, float], int]:
    """One pass over the training split from optimizer step ``step``; returns ``train/loss``,
    ``train/accuracy`` and the step reached.

    The one long function of the package: augmentation, forward under autocast, accumulation (no
    DDP gradient sync before the last micro-batch of a step), clipping, the optimizer step.
    Accuracy compares the argmax with the clip's own label, also when the clip was mixed; background
    clips (no label) are left out of it. A MixUp pair's class weights are the smaller of the two (a
    class left out of either clip's loss is left out of the mix's).
    """
    params, optimizer, scaler = recipe.params, recipe.optimizer, recipe.scaler
    net.train()
    n_batches = len(loader)
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    correct = torch.zeros((), dtype=torch.float64, device=ctx.device)
    count = 0
    ddp = ddp_module(net)
    optimizer.zero_grad(set_to_none=True)
    labelled = 0
    for index, (features, labels, weights) in enumerate(
        tqdm(loader, desc=desc, disable=None if ctx.is_main else True, leave=False)
    ):
        features = features.to(ctx.device, non_blocking=True)  # (B, F, T)
        labels = labels.to(ctx.device, non_blocking=True)  # (B,)
        weights = weights.to(ctx.device, non_blocking=True)  # (B, C)
        features = spec_augment(features, params.augment.spec_augment, generator)
        targets = presence(labels, recipe.num_classes)  # (B, C)
        mixed = mixup(features, targets, params.augment.mixup, generator)
        weights = torch.minimum(weights, weights[mixed.perm.to(weights.device)])
        group_start = index - index % recipe.accumulation
        group_size = min(recipe.accumulation, n_batches - group_start)
        last_in_group = index == group_start + group_size - 1
        sync = ddp.no_sync() if ddp is not None and not last_in_group else contextlib.nullcontext()
        with sync:
            with autocast(ctx.device, recipe.dtype):
                logits = net(mixed.inputs)  # (B, C)
                loss = recipe.loss_fn(logits, mixed.targets, weights)
            scaler.scale(loss / group_size).backward()
        if last_in_group:
            recipe.schedule.apply(optimizer, step)
            if params.grad_clip_norm is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(net.parameters(), params.grad_clip_norm)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
        loss_sum += loss.detach().double() * len(labels)
        correct += ((logits.detach().argmax(dim=-1) == labels) & (labels >= 0)).sum()
        count += len(labels)
        labelled += int((labels >= 0).sum())
    as_tensor = [torch.tensor(float(n), dtype=torch.float64, device=ctx.device) for n in (count, labelled)]
    totals = all_reduce_sum(torch.stack([loss_sum, correct, *as_tensor]), ctx)
    loss_total, correct_total, count_total, labelled_total = totals.tolist()
    accuracy = correct_total / labelled_total if labelled_total else math.nan
    return {"train/loss": loss_total / count_total, "train/accuracy": accuracy}, step


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader[Batch],
    loss_fn: LossFn,
    ctx: DistContext,
    dtype: torch.dtype | None,
) -> dict[str, float]:
    """``val/loss``, ``val/accuracy`` and ``val/f1_macro`` over the whole split (all ranks' shards)."""
    model.eval()
    predictions, truth, loss_sum = [], [], torch.zeros(1, dtype=torch.float64, device=ctx.device)
    for features, labels, weights in loader:
        features, labels, weights = features.to(ctx.device), labels.to(ctx.device), weights.to(ctx.device)
        with autocast(ctx.device, dtype):
            logits = model(features)  # (B, C)
        loss_sum += loss_fn(logits, labels, weights).double() * len(labels)
        predictions.append(logits.argmax(dim=-1))
        truth.append(labels)
    empty = torch.zeros(0, dtype=torch.int64, device=ctx.device)
    predicted = all_gather_1d(torch.cat(predictions) if predictions else empty, ctx).cpu().numpy()
    actual = all_gather_1d(torch.cat(truth) if truth else empty, ctx).cpu().numpy()
    loss = float(all_reduce_sum(loss_sum, ctx)) / len(actual)
    return {
        "val/loss": loss,
        "val/accuracy": metrics.accuracy_of_predictions(predicted, actual),
        "val/f1_macro": metrics.f1_macro_of_predictions(predicted, actual),
    }


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``lr/backbone`` and ``lr/head`` as used by the last step."""
    return {
        f"lr/{g['name']}": float(g["lr"]) for g in optimizer.param_groups if g["name"] in {"backbone", "head"}
    }


def improved(value: float, best: float | None, larger_is_better: bool) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value > best if larger_is_better else value < best


# ---------------------------------------------------------------------------------- data & state
def make_loaders(
    data: TrainData, params: TrainParams, ctx: DistContext
) -> tuple[EpochSampler, DataLoader[Batch], DataLoader[Batch]]:
    """This rank's shard of the training items (reshuffled each epoch: train clips, read as their
    noisy copies with ``augment.background_mix.prob``, and background clips) and of the validation
    split (its species clips: the early-stopping metrics are the report's)."""
    items = training_set(data)
    mix = params.augment.background_mix
    train_sampler = MixingSampler(
        items,
        params.seed,
        mix.prob if mix.enabled else 0.0,
        params.background_share,
        shuffle=True,
        balanced=params.balanced_sampling,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    val_sampler = EpochSampler(
        data.val.labels, params.seed, shuffle=False, even=False, rank=ctx.rank, world_size=ctx.world_size
    )
    train_loader = make_loader(items.dataset, train_sampler, params, ctx)
    val_set = FeatureDataset([data.val], len(data.labels))
    return train_sampler, train_loader, make_loader(val_set, val_sampler, params, ctx)


def make_loader(
    dataset: FeatureDataset, sampler: EpochSampler, params: TrainParams, ctx: DistContext
) -> DataLoader[Batch]:
    """Batches of ``batch_size`` clips in the sampler's order. On CUDA they come in pinned memory, so
    the step's ``non_blocking`` copies overlap; with ``num_workers`` > 0 the workers live for the
    whole run (not restarted each epoch) and each keeps ``prefetch_factor`` batches ready."""
    workers = params.num_workers
    return DataLoader(
        dataset,
        batch_size=params.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=ctx.device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=params.prefetch_factor if workers > 0 else None,
    )


def run_fingerprint(params: TrainParams, data: TrainData, variant: str, world_size: int) -> str:
    """Identity of a run: a resume state from any other params, data or world size is stale."""
    return f"{variant}:{world_size}:{hash_text(params.model_dump_json())}:{data_fingerprint(data)}"


def restore(
    snapshot: Snapshot, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: GradScaler
) -> tuple[TrainState, dict[str, torch.Tensor]]:
    """Put a saved state back into the model, optimizer and scaler; returns it and the best weights."""
    model.load_state_dict(snapshot.model)
    optimizer.load_state_dict(snapshot.optimizer)
    if snapshot.state.scaler:
        scaler.load_state_dict(snapshot.state.scaler)
    return snapshot.state, snapshot.best


def cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


@contextlib.contextmanager
def deterministic_mode(enabled: bool, device: torch.device) -> Iterator[None]:
    """``torch.use_deterministic_algorithms`` for the run, restored afterwards. On CUDA, ops with
    no deterministic kernel only warn, and cuBLAS gets the workspace setting it needs. Filling new
    tensors with NaN (a debugging aid of deterministic mode) is off: results never read them, and
    it costs about 10% of a CPU epoch."""
    previous, previous_warn = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    previous_fill = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    if enabled:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)
        torch.utils.deterministic.fill_uninitialized_memory = previous_fill  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------ logging
class CurveLog(Live):
    """dvclive without its DVC-repository hooks: ``metrics.json`` and ``plots/metrics/*.tsv`` are
    outputs that ``dvc.yaml`` already declares. The hooks would name an experiment, ``dvc init`` a
    plain git repository, and crash in a git repository without commits (dvclive 3.49 reads HEAD
    before checking for commits; treeverse/dvclive#522)."""

    def _init_dvc(self) -> None:
        """Skip the repository hooks (see the class docstring)."""


def open_live(live_dir: Path, history: list[dict[str, float]]) -> Live:
    """A fresh dvclive run in ``live_dir`` (no dvc.yaml, no experiment), with ``history`` replayed so
    that a resumed run's curves have each epoch exactly once."""
    live = CurveLog(str(live_dir), resume=False, dvcyaml=None, save_dvc_exp=False, report=None)
    for row in history:
        log_row(live, row)
    return live


def log_row(live: Live, row: dict[str, float]) -> None:
    for name, value in row.items():
        live.log_metric(name, value)
    live.next_step()


def close_live(live: Live, info: ClassifierInfo) -> None:
    """Finish the dvclive run; ``metrics.json`` also names the kept epoch and its metric."""
    live.summary["best"] = {"epoch": info.best_epoch, str(info.best_metric): info.best_value}
    live.end()


def log_run(variant: str, model: nn.Module, data: TrainData, recipe: Recipe, ctx: DistContext) -> None:
    params = recipe.params
    log.info(
        "%s: %s/%s with %d parameters; %d train (+ %d background) / %d val clips of (%d, %d), %d classes "
        "(%s); batch %d x %d accumulation x %d ranks; %s on %s",
        variant,
        params.model.arch,
        params.model.size,
        sum(p.numel() for p in model.parameters()),
        len(data.train.labels),
        len(data.background.labels) if data.background is not None else 0,
        len(data.val.labels),
        *data.shape.features,
        len(data.labels),
        params.loss.activation,
        params.batch_size,
        recipe.accumulation,
        ctx.world_size,
        recipe.dtype or torch.float32,
        ctx.device,
    )


def log_epoch(state: TrainState, row: dict[str, float], epochs: int, seconds: float) -> None:
    marker = " *" if state.best_epoch == state.epoch else ""  # a new best epoch
    log.info(
        "epoch %d/%d  train loss %.4f acc %.3f | val loss %.4f acc %.3f f1 %.3f | lr %.2e/%.2e | %.1f s%s",
        state.epoch,
        epochs,
        row["train/loss"],
        row["train/accuracy"],
        row["val/loss"],
        row["val/accuracy"],
        row["val/f1_macro"],
        row.get("lr/backbone", math.nan),
        row.get("lr/head", math.nan),
        seconds,
        marker,
    )
