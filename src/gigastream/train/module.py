"""The one training engine: a LightningModule for MIL models of slides and bags.

:class:`MILClassifier` trains any model that keeps the :class:`MILModel` contract (one
input - a whole slide, streamed, or a bag of instances - gives class logits and attention
over instances; the model defines its own loss) with PyTorch Lightning: the ``Trainer``
owns the loop, checkpoints, loggers, precision, devices and gradient accumulation over
slides (``accumulate_grad_batches``). One step is one slide or bag. A classifier has a
softmax over its classes; a regression run (class names ``["value"]``) has one linear
output, trained with the MSE or Huber loss of its standardised target
(:class:`~gigastream.train.config.TargetConfig`) and reported in the target's own units
(Spearman, Pearson, MAE, RMSE, R²; the best checkpoint has the highest validation
Spearman). StreamingMIL on
whole slides (``gigastream train``, ``gigastream demo``), PatchMIL on the slides' bags of
tissue patches (``gigastream train --model-kind patches``) and the MNIST-bags experiment
run through it.

A training epoch in which no slide was usable, or a validation in which none was, stops
the run with a :class:`~gigastream.train.files.RunError` naming every skipped slide and
why, before a checkpoint of that epoch is written (an untrained ``best.ckpt`` would look
like a result).

Exactness of a resumed run: every epoch reseeds torch, numpy and ``random`` from
``(seed, epoch)`` and visits the examples in an order seeded the same way
(:class:`~gigastream.train.data.EpochSampler`), so resuming from the checkpoint of a
finished epoch repeats the remaining epochs bit for bit.

Example:
    >>> import lightning as L  # doctest: +SKIP
    >>> module = MILClassifier(model, ["negative", "positive"], OptimConfig(lr=1e-4))  # doctest: +SKIP
    >>> L.Trainer(max_epochs=3).fit(module, train_loader, val_loader)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gigastream.train.config import DataConfig, OptimConfig, TargetConfig
from gigastream.train.files import RunError, jsonable
from gigastream.train.metrics import classification_metrics, regression_metrics
from gigastream.train.selection import is_regression

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the slide and the epoch."""


@runtime_checkable
class MILModel(Protocol):
    """What the engine needs of a model.

    ``model(x, label=y)`` returns an object with ``logits`` ``(num_classes,)`` and
    ``attention`` ``(N,)`` (optionally ``attention_map`` ``(h, w)`` and ``instances``
    ``(h, w)`` for slides); ``model.loss(out, y)`` is the training loss;
    ``model.parameter_groups()`` maps ``"trunk"`` and ``"head"`` to their parameters
    (they get ``lr`` and ``head_lr``).
    """

    def __call__(self, x: Any, label: Any = None) -> Any: ...

    def loss(self, out: Any, label: Any) -> Tensor: ...

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]: ...


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch`` of a run seeded ``seed``."""
    return int(np.random.SeedSequence([seed, epoch, 7]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    """Seed torch (all devices), numpy and ``random``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_lambda(warmup_steps: int, total_steps: int, schedule: str):
    """Multiplier of the base learning rate at optimiser step ``s`` (warm-up, then cosine)."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant" or total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class MILClassifier(L.LightningModule):
    """Lightning module around a :class:`MILModel` (see the module docstring).

    Args:
        model: the model.
        class_names: class names in index order.
        optim: optimiser settings.
        data: how slides are read (used to open lazy slide inputs); ``None`` for bags.
        seed: the run's seed (per-epoch reseeding).
        run_config: the resolved run configuration stored in every checkpoint.
        target: how a regression run's value is trained and mapped back (``class_names``
            ``["value"]``; default :class:`~gigastream.train.config.TargetConfig`).

    Attributes:
        skipped: slide id -> reason, for slides that could not be used.
        epoch_log: per-epoch metrics (train loss, validation loss/AUC/accuracy).
        last_validation: the latest validation's per-slide results.
    """

    def __init__(
        self,
        model: nn.Module,
        class_names: Sequence[str],
        optim: OptimConfig | None = None,
        data: DataConfig | None = None,
        seed: int = 0,
        run_config: dict[str, Any] | None = None,
        target: TargetConfig | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.class_names = list(class_names)
        self.regression = is_regression(self.class_names)
        self.target = target or TargetConfig()
        self.optim = optim or OptimConfig()
        self.data = data or DataConfig()
        self.seed = seed
        self.run_config = run_config or {}
        self.skipped: dict[str, str] = {}
        self._train_losses: list[float] = []
        self._train_skipped: dict[str, str] = {}  # this epoch's
        self._val_skipped: dict[str, str] = {}  # this validation's
        self._val: list[dict[str, Any]] = []
        self.epoch_log: list[dict[str, Any]] = []
        self.last_validation: list[dict[str, Any]] = []
        self._open_input: Any = None  # a lazy slide kept open for its backward pass

    # ------------------------------------------------------------------ inputs
    def transfer_batch_to_device(
        self, batch: Any, device: torch.device, dataloader_idx: int
    ) -> Any:
        return batch  # examples are opened on the device in the step (lazy slides)

    def _skip(self, example: Any, stage: str) -> None:
        if example.slide_id not in self.skipped:
            logger.warning("skipping %s (%s): %s", example.slide_id, stage, example.error)
        self.skipped[example.slide_id] = example.error
        if stage == "train":
            self._train_skipped[example.slide_id] = example.error
        elif stage == "validation":
            self._val_skipped[example.slide_id] = example.error

    def _all_ranks(self, value: Any) -> list[Any]:
        """``value`` of every DDP rank (``[value]`` in a single process)."""
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            everything: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(everything, value)
            return everything
        return [value]

    def _none_usable(self, stage: str, used: int, skipped: dict[str, str]) -> None:
        """RunError naming the skipped slides when no slide of ``stage`` was usable."""
        from gigastream.train.data import describe_skipped

        if used or not skipped:
            return
        raise RunError(
            f"no usable {stage} slide in epoch {self.current_epoch + 1}: all {len(skipped)} "
            f"were skipped: {describe_skipped(skipped)}; fix or replace the slide files (or "
            "their rows of the manifest)"
        )

    def _forward(self, example: Any, keep_open: bool = False) -> tuple[Any, Tensor | None]:
        """``(output, loss)`` of one example (loss ``None`` without a label).

        Args:
            example: the slide or bag.
            keep_open: leave a lazy slide open: the streamed backward pass re-reads its
                tiles after the training step returns (:meth:`on_train_batch_end` closes it).
        """
        from gigastream.wsi.reader import SlideError

        self._close_input()
        opened = example.open(self.data, self.device)
        augments = getattr(self.model, "augments_bags", True)  # not a frozen encoder's bags
        if self.training and self.data.augment and augments and hasattr(opened.x, "augmented"):
            opened.x = opened.x.augmented()  # seeded by the per-epoch RNG: resumable
        try:
            label = example.label
            if self.regression:  # no class for a head's instance loss: the value's loss only
                out = self.model(opened.x, label=None)
                loss = None if label is None else self._regression_loss(out.logits, label, out)
            else:
                out = self.model(opened.x, label=label)
                loss = None if label is None else self.model.loss(out, label)
        except SlideError as exc:  # a read error mid-stream
            opened.close()
            example.error = str(exc)
            return None, None
        except BaseException:
            opened.close()
            raise
        if keep_open:
            self._open_input = opened
        else:
            opened.close()
        return out, loss

    def _regression_loss(self, output: Tensor, value: float, out: Any = None) -> Tensor:
        """The loss of a regression output against the slide's value, both standardised;
        with ``target.instance_weight``, plus that times the mean loss of the instances'
        own scores (``out``'s head output's ``instance_logits``): against the same value, or
        (``instance_target: positive``) the binary cross-entropy of whether the slide's value
        is above ``positive_above``, and ``presence_weight`` times that of the mean of the
        ``presence_k`` highest scores."""
        mean, std = self.target.scale()
        loss = self._value_loss(output.reshape(-1)[:1], (float(value) - mean) / std)
        if self.target.instance_weight:
            head = getattr(out, "head_output", out)
            scores = getattr(head, "instance_logits", None)
            if scores is None:
                raise RunError(
                    "target.instance_weight needs a head with per-instance scores (head mean "
                    "or fraction)"
                )
            if self.target.instance_target == "positive":
                positive = float(float(value) > self.target.positive_above)
                flat = scores.reshape(-1)
                instances = F.binary_cross_entropy_with_logits(
                    flat, torch.full_like(flat, positive)
                )
                if self.target.presence_weight:  # the top-k scores: the slide's presence
                    top = flat.topk(min(self.target.presence_k, flat.numel())).values.mean()
                    presence = F.binary_cross_entropy_with_logits(
                        top, torch.full_like(top, positive)
                    )
                    loss = loss + self.target.presence_weight * presence
            else:
                instances = self._value_loss(scores.reshape(-1), (float(value) - mean) / std)
            loss = loss + self.target.instance_weight * instances
        return loss

    def _value_loss(self, prediction: Tensor, target: float) -> Tensor:
        """MSE or Huber loss of ``prediction`` against the (standardised) ``target``."""
        target_tensor = torch.full_like(prediction, target)
        if self.target.loss == "huber":
            return F.huber_loss(prediction, target_tensor, delta=self.target.huber_delta)
        return F.mse_loss(prediction, target_tensor)

    def predicted_value(self, output: Tensor) -> float:
        """A regression output in the target's own units."""
        mean, std = self.target.scale()
        return float(output.detach().double().reshape(-1)[0]) * std + mean

    def _close_input(self) -> None:
        opened, self._open_input = self._open_input, None
        if opened is not None:
            opened.close()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._close_input()  # the backward pass of this slide is done

    def teardown(self, stage: str) -> None:
        self._close_input()

    def _zero_loss(self) -> Tensor:
        """A zero loss touching every parameter (keeps DDP ranks in step on a skipped slide)."""
        return sum((p.sum() * 0.0 for p in self.parameters() if p.requires_grad), torch.zeros(()))

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self) -> None:
        seed_everything(epoch_seed(self.seed, self.current_epoch))
        self._train_losses = []
        self._train_skipped = {}

    def training_step(self, example: Any, batch_idx: int) -> Tensor | None:
        distributed = self.trainer.world_size > 1
        # every step's randomness (dropout, augmentation) from (seed, epoch, step) alone:
        # whatever else drew from the global RNG (loader start-up), a resumed run repeats it
        torch.manual_seed(epoch_seed(self.seed, self.current_epoch * 1_000_003 + batch_idx))
        if example.error is None:
            out, loss = self._forward(example, keep_open=True)
        if example.error is not None:
            self._skip(example, "train")
            return self._zero_loss() if distributed else None
        if not torch.isfinite(loss.detach()):
            self._close_input()
            raise NonFiniteLossError(
                f"the training loss is {float(loss.detach())} on slide {example.slide_id!r} in epoch "
                f"{self.current_epoch + 1}: lower optim.lr / optim.head_lr, set optim.grad_clip, "
                "or check the slide; the last good checkpoint is kept"
            )
        self._train_losses.append(float(loss.detach()))
        self.log("train_loss", loss.detach(), on_step=True, on_epoch=True, batch_size=1)
        return loss

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val = []
        self._val_skipped = {}
        if self.trainer.sanity_checking or self.trainer.state.fn != "fit":
            return
        # the training epoch before this validation: stop before its checkpoint is written
        parts = self._all_ranks((len(self._train_losses), self._train_skipped))
        skipped = {k: v for _, part in parts for k, v in part.items()}
        self._none_usable("training", sum(n for n, _ in parts), skipped)

    def _record(self, example: Any, out: Any, loss: Tensor | None) -> dict[str, Any]:
        record = {
            "slide_id": example.slide_id,
            "label": example.label,
            "loss": None if loss is None else float(loss.detach()),
        }
        if self.regression:
            record["prediction"] = self.predicted_value(out.logits)
        else:
            probs = torch.softmax(out.logits.detach().double(), dim=-1).cpu().numpy()
            record["probs"] = probs
        attention_map = getattr(out, "attention_map", None)
        if attention_map is not None:
            instances = out.instances.cpu().numpy()
            attention = attention_map.detach().double().cpu().numpy()
            record["attention_map"] = np.where(instances, attention, np.nan)
            record["instances"] = int(instances.sum())
        return record

    def validation_step(self, example: Any, batch_idx: int) -> None:
        if example.error is None:
            out, loss = self._forward(example)
        if example.error is not None:
            self._skip(example, "validation")
            return
        record = self._record(example, out, loss)
        record.pop("attention_map", None)  # not kept for every epoch
        self._val.append(record)

    def _gather(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            everything: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(everything, records)
            seen: dict[str, dict[str, Any]] = {}
            for part in everything:
                for rec in part:
                    seen.setdefault(rec["slide_id"], rec)  # DistributedSampler pads
            return list(seen.values())
        return records

    def on_validation_epoch_end(self) -> None:
        records = self._gather(self._val)
        if not self.trainer.sanity_checking:  # before the checkpoint callbacks run
            skipped = {k: v for part in self._all_ranks(self._val_skipped) for k, v in part.items()}
            self._none_usable("validation", len(records), skipped)
        self.last_validation = records
        labelled = [r for r in records if r["label"] is not None]
        val_loss = float(np.mean([r["loss"] for r in labelled])) if labelled else math.nan
        metrics = self._validation_metrics(labelled)
        primary = metrics["spearman" if self.regression else "auc"]
        for name, value in metrics.items():  # an undefined AUC (one class) is logged as -1
            undefined = name == "auc" and not math.isfinite(value)
            self.log(f"val_{name}", -1.0 if undefined else value, batch_size=1)
        # the best checkpoint: highest AUC (regression: Spearman), ties broken by the lower
        # loss (better calibrated); the monitor needs a number: -1 when it is undefined
        score = (primary if math.isfinite(primary) else -1.0) - 1e-3 * (
            val_loss if math.isfinite(val_loss) else 1e3
        )
        self.log("val_score", score, batch_size=1)
        self.log("val_loss", val_loss, batch_size=1)
        if self.trainer.sanity_checking:
            return
        train_loss = float(np.mean(self._train_losses)) if self._train_losses else math.nan
        epoch = {
            "epoch": self.current_epoch + 1,
            "train_loss": train_loss,
            "train_slide_losses": list(self._train_losses),
            "val_loss": val_loss,
            "val_auc": None if self.regression else metrics["auc"],
            "val_accuracy": None if self.regression else metrics["accuracy"],
        }
        if self.regression:
            epoch.update({f"val_{name}": value for name, value in metrics.items()})
        epoch["val_slides"] = len(labelled)
        epoch["lr"] = (
            [g["lr"] for g in self.optimizers().optimizer.param_groups]
            if self.trainer.optimizers
            else None
        )
        self.epoch_log.append(epoch)

    def _validation_metrics(self, labelled: list[dict[str, Any]]) -> dict[str, float]:
        """AUC and accuracy of a classifier, or the regression metrics, of the labelled
        validation slides (NaN without any)."""
        if self.regression:
            return regression_metrics(
                [r["label"] for r in labelled], [r["prediction"] for r in labelled]
            )
        if not labelled:
            return {"auc": math.nan, "accuracy": math.nan}
        return classification_metrics(
            [r["label"] for r in labelled], np.stack([r["probs"] for r in labelled])
        )

    # ------------------------------------------------------------------ prediction
    def predict_step(self, example: Any, batch_idx: int) -> dict[str, Any]:
        if example.error is None:
            with torch.no_grad():
                out, loss = self._forward(example)
        if example.error is not None:
            self._skip(example, "predict")
            return {"slide_id": example.slide_id, "label": example.label, "error": example.error}
        return self._record(example, out, loss)

    # ------------------------------------------------------------------ optimiser
    def configure_optimizers(self):
        groups = self.model.parameter_groups()
        head_lr = self.optim.head_lr or self.optim.lr
        param_groups = [
            {"params": [p for p in groups["trunk"] if p.requires_grad], "lr": self.optim.lr},
            {"params": [p for p in groups["head"] if p.requires_grad], "lr": head_lr},
        ]
        param_groups = [g for g in param_groups if g["params"]]
        optimizer = torch.optim.AdamW(param_groups, weight_decay=self.optim.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        factor = lr_lambda(self.optim.warmup_steps, total, self.optim.schedule)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from gigastream import __version__

        checkpoint["gigastream"] = {
            "version": __version__,
            "config": self.run_config,
            "class_names": self.class_names,
            "epoch_log": jsonable(self.epoch_log),  # weights_only-loadable
            "skipped": dict(self.skipped),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("gigastream", {})
        self.epoch_log = list(saved.get("epoch_log", []))
        self.skipped.update(saved.get("skipped", {}))


__all__ = ["MILClassifier", "MILModel", "NonFiniteLossError", "epoch_seed", "lr_lambda"]
