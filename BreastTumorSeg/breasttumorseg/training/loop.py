"""The training loop: data, patches, optimiser steps, validation and checkpoints, on one or more processes.

AdamW (weight decay from the config), linear warm-up over the first 5 % of the steps, then
cosine decay to 2 % of the learning rate. Seeds: ``torch.manual_seed`` and a
``numpy.random.Generator``, both from ``seed``; mixed precision (bfloat16) on CUDA. Under
torchrun (``WORLD_SIZE`` > 1, :mod:`.distributed`) DistributedDataParallel: each process
samples ``batch_size`` patches from its own generator (the learning rate is not scaled);
only rank 0 logs, validates and writes. The weights with the best validation median Dice
are kept.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable

import numpy as np

from ..core.errors import BreastTumorSegError, Cancelled, InputError, OutputError
from ..core.progress import CancelToken, ProgressCallback, report, scaled
from .cases import prepare_cases, prepare_real_cases
from .checkpoints import CHECKPOINT_FILE, check_resumable, load_checkpoint, save_checkpoint, settings_for_checkpoint
from .config import TrainingConfig
from .datasets import open_dataset
from .distributed import distributed_session, write_rank_digest
from .losses import segmentation_loss
from .publishing import TrainingResult, provisional_card, publish, result_from_outputs
from .sampling import sample_batch
from .validation import validate_cases


def train_on_phantom(config: TrainingConfig, *, progress: ProgressCallback | None = None,
                     cancel: CancelToken | None = None, log: Callable = print, resume: bool = False) -> TrainingResult:
    """Train, validate and write ``<name>.safetensors``, ``<name>.json`` and ``<name>.md`` into ``config.output``.

    Trains on the data set of ``config.dataset`` (phantoms by default; the name is kept
    from when phantoms were the only data). With ``resume`` the run continues from
    ``config.output/checkpoint.safetensors`` (whose settings must match ``config``;
    ``steps`` may be raised). Without it an output folder that already holds a run is
    refused unless ``config.overwrite``. Bad input (settings, data set) is refused before
    anything is written. On cancellation a checkpoint is written and :class:`Cancelled` is
    raised. Under torchrun (``WORLD_SIZE`` > 1) every process calls this; see
    :mod:`breasttumorseg.training.distributed`. Every process returns the same result.
    """

    config.validate()
    with distributed_session(config.device) as context:
        return _train(config, context, progress, cancel, log, resume)


#: the same function under a name that does not suggest phantoms only
train_model = train_on_phantom


def _train(config: TrainingConfig, context, progress, cancel, log, resume) -> TrainingResult:
    import torch  # torch waits: this module imports without it (Slicer installs torch on first use)

    from ..segmentation.networks import build_network

    if not context.is_main:
        log, progress = (lambda *a, **k: None), None
    output = config.output
    checkpoint_path = output / CHECKPOINT_FILE
    _check_output(config, resume)
    if config.threads:
        torch.set_num_threads(int(config.threads))
    device = context.device

    torch.manual_seed(config.seed)
    network = build_network(config.architecture, **config.hyperparameters)
    hyperparameters = network.hyperparameters() if hasattr(network, "hyperparameters") else config.hyperparameters
    divisor = int(getattr(network, "size_divisor", 1))
    for option, size in (("--patch", config.patch_size), ("--window", config.window_size)):
        if any(p % divisor for p in size):
            raise InputError(f"{option} {' '.join(map(str, size))}: every size must be a multiple of "
                             f"{divisor} for this network (depth {hyperparameters.get('depth')})")
    card = provisional_card(config, hyperparameters)
    split = open_dataset(config.dataset, card, seeds=config.seeds())
    network.to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    # one process: the generator of the single-process recipe; several: one stream per rank
    rng = np.random.default_rng([config.seed, 1] if not context.enabled else [config.seed, 1, context.rank])

    step, history, best_state, best_dice, best_step = 0, [], None, -1.0, 0
    if resume:
        best_state, scalars = load_checkpoint(checkpoint_path, network, optimizer, rank=context.rank)
        config = settings_for_checkpoint(config, scalars, log)
        check_resumable(config, scalars, split, context, checkpoint_path)
        step, history = int(scalars["step"]), list(scalars["history"])
        best_dice, best_step = float(scalars["best_dice"]), int(scalars["best_step"])
        states = scalars.get("numpy_rng_ranks") or [scalars["numpy_rng"]]
        rng.bit_generator.state = states[context.rank]
        network.to(device)
        log(f"resuming from step {step} of {config.steps} (best validation median Dice {best_dice:.3f} "
            f"at step {best_step})")

    started = time.perf_counter()
    preparing = scaled(progress, 0.0, 0.15, "preparing the data")
    if split.is_phantom:
        train_seeds, val_seeds = split.train, split.val
        log(f"preparing {len(train_seeds)} training phantoms (seeds {train_seeds[0]}-{train_seeds[-1]}) and "
            f"{len(val_seeds)} validation phantoms (seeds {val_seeds[0]}-{val_seeds[-1]}) on a "
            f"{'x'.join(f'{s:g}' for s in config.working_spacing_mm)} mm grid")
        cases = prepare_cases(train_seeds + val_seeds, card, workers=config.workers, progress=preparing,
                              cancel=cancel, randomize=config.dataset.domain_randomization,
                              cache=config.dataset.cache)
    else:
        log(f"preparing the {split.description} on a {'x'.join(f'{s:g}' for s in config.working_spacing_mm)} "
            f"mm grid{'' if config.dataset.cache is None else f' (cache {config.dataset.cache})'}")
        cases = prepare_real_cases(split.train + split.val, card, workers=config.workers, cache=config.dataset.cache,
                                   shard=(context.rank, context.world_size), barrier=context.barrier,
                                   progress=preparing, cancel=cancel)
    train_cases, val_cases = cases[:len(split.train)], cases[len(split.train):]
    megabytes = sum(c.inputs.nbytes + c.body.nbytes + c.target.nbytes for c in cases
                    if not isinstance(c.inputs, np.memmap)) / 2 ** 20
    log(f"data ready in {time.perf_counter() - started:.0f} s ({megabytes:.0f} MB in memory)")
    if context.is_main:
        output.mkdir(parents=True, exist_ok=True)
    model = context.wrap(network)
    if context.enabled:
        log(f"training on {context.world_size} processes ({context.backend}): effective batch "
            f"{config.batch_size} x {context.world_size} = {config.batch_size * context.world_size} patches per step")

    def checkpoint() -> None:
        states = context.gather((rng.bit_generator.state, torch.get_rng_state()))
        if not context.is_main:
            return
        scalars = {"step": step, "history": history, "best_dice": best_dice, "best_step": best_step,
                   "numpy_rng": states[0][0], "fingerprint": config.fingerprint(), "world_size": context.world_size,
                   "dataset_cases": split.case_digest}
        if context.enabled:
            scalars["numpy_rng_ranks"] = [state for state, _ in states]
        save_checkpoint(checkpoint_path, network, optimizer, best_state, scalars,
                        torch_rng_states=[state for _, state in states] if context.enabled else None)

    use_amp = device.type == "cuda" and torch.cuda.is_bf16_supported()
    augmentation = config.augmentation()
    hard_negative_channel = (list(config.inputs).index("enhancement_peak") if config.hard_negative_fraction
                             else None)
    train_progress = scaled(progress, 0.15, 0.95, "training")
    log_every = max(1, min(50, config.steps // 20))
    losses: list[float] = []
    network.train()
    started = time.perf_counter()
    try:
        while step < config.steps:
            report(train_progress, "training", step / config.steps, cancel)
            lr = learning_rate_at(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = sample_batch(train_cases, rng, config.batch_size, config.patch_size, config.foreground_fraction,
                                 augment=config.augment, phase_series=config.takes_phase_series,
                                 phase_dropout=config.phase_dropout, time_jitter_s=config.time_jitter_s,
                                 augmentation=augmentation, hard_negative_fraction=config.hard_negative_fraction,
                                 hard_negative_channel=hard_negative_channel)
            images = torch.from_numpy(batch.images).to(device)
            labels = torch.from_numpy(batch.labels).to(device)
            extra = (() if batch.times_s is None else
                     (torch.from_numpy(batch.times_s).to(device), torch.from_numpy(batch.valid).to(device)))
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = model(images, *extra)
            loss = segmentation_loss(logits, labels, config.loss)
            if not context.all_true(bool(torch.isfinite(loss))):
                raise BreastTumorSegError(f"training diverged at step {step + 1} (loss {loss.item()}); "
                                          f"try a lower --learning-rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(float(loss.item()))
            if step % log_every == 0 or step == config.steps:
                mean_loss = context.mean(float(np.mean(losses)))
                history.append({"step": step, "loss": round(mean_loss, 5), "lr": lr,
                                "elapsed_s": round(time.perf_counter() - started, 1)})
                log(f"step {step}/{config.steps}: loss {mean_loss:.4f}, lr {lr:.2e}")
                losses = []
            if step % config.validate_every == 0 or step == config.steps:
                if context.is_main:
                    scores = validate_cases(network, val_cases, card, device, cancel=cancel)
                    median = float(np.median(scores))
                    history.append({"step": step, "val_dice_median": round(median, 4),
                                    "val_dice_mean": round(float(np.mean(scores)), 4),
                                    "val_dice": [round(s, 4) for s in scores]})
                    if median > best_dice:
                        best_dice, best_step = median, step
                        best_state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
                    log(f"step {step}: validation median Dice {median:.3f} (best {best_dice:.3f} at step "
                        f"{best_step})")
                    network.train()
                context.barrier()
            if step % config.checkpoint_every == 0 or step == config.steps:
                checkpoint()
    except Cancelled:
        if step > 0:
            checkpoint()
            log(f"cancelled at step {step}; resume with --resume")
        raise

    context.sync_buffers(network)
    write_rank_digest(context, network, step)
    result = None
    if context.is_main:
        if best_state is not None:
            network.load_state_dict(best_state)
        network.eval()
        result = publish(config, card, network, history, best_step, split, context, device,
                         scaled(progress, 0.95, 1.0, "final evaluation"), cancel, log, checkpoint_path)
    context.barrier()
    return result if result is not None else result_from_outputs(config, checkpoint_path)


def learning_rate_at(step: int, config: TrainingConfig) -> float:
    """Linear warm-up over 5 % of the steps, then cosine decay to 2 % of the peak."""
    warmup = max(1, int(0.05 * config.steps))
    if step < warmup:
        return config.learning_rate * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, config.steps - warmup))
    floor = 0.02
    return config.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def _check_output(config: TrainingConfig, resume: bool) -> None:
    """Refuse an output that cannot take this run; creates nothing (the folder is made
    once the data are ready, so that bad input leaves nothing behind)."""
    output = config.output
    if output.exists() and not output.is_dir():
        raise OutputError("exists and is not a folder", output)
    checkpoint_path = output / CHECKPOINT_FILE
    if resume:
        if not checkpoint_path.is_file():
            raise OutputError(f"no {CHECKPOINT_FILE} to resume from", output)
        return
    existing = [p.name for p in (checkpoint_path, output / f"{config.name}.safetensors") if p.exists()]
    if existing and not config.overwrite:
        raise OutputError(f"already holds a training run ({', '.join(existing)}); use --resume to continue it "
                          f"or choose another folder", output)
    parent = output
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise OutputError(f"cannot be created ({parent} is not writable)", output)
