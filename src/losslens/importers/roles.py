"""Metric names → roles: training loss, validation loss, learning rate, accuracy.

Frameworks and users name the same quantity differently (``loss``,
``train_loss``, ``train/loss``, ``epoch_loss``; ``val_loss``, ``valid_loss``,
``eval_loss``, ``validation/epoch_loss``). :func:`assign_roles` picks one name
per role, in this order:

1. the name the user gave (``--train-loss`` / ``--val-loss``), which must exist;
2. the first match (case-insensitive) in :data:`TRAIN_LOSS_NAMES` /
   :data:`VAL_LOSS_NAMES`, the names the frameworks write by default;
3. the only loss-like name of that role (contains ``loss``; a validation name
   starts with a validation prefix such as ``val_``, ``eval_``, ``validation/``;
   names with a test prefix are never used);
4. among several, the one whose suffix pairs with the other role's
   (``train_elbo_loss`` ↔ ``val_elbo_loss``), else the only one with an
   aggregate word (``total``, ``elbo``, ``objective``, ``overall``, ``mean``,
   ``sum``, ``combined``, ``full``), which is how multi-term objectives name
   their sum.

Anything still ambiguous is refused with the candidates listed, never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..record import LOSSLENS_LOG_NAMES
from ._common import LogFormatError

__all__ = ["Roles", "assign_roles", "TRAIN_LOSS_NAMES", "VAL_LOSS_NAMES", "VAL_PREFIXES", "is_lr", "is_accuracy"]

TRAIN_LOSS_NAMES = (
    "loss", "train_loss", "training_loss", "train/loss", "train_loss_epoch", "epoch_loss", "train/epoch_loss",
    "loss/train", "train/loss_epoch", "trn_loss", "batch_loss", "train/batch_loss",
)
VAL_LOSS_NAMES = (
    "val_loss", "valid_loss", "validation_loss", "eval_loss", "val/loss", "valid/loss", "validation/loss",
    "eval/loss", "validation/epoch_loss", "loss/val", "loss/valid", "loss/validation", "val_loss_epoch",
    "val/loss_epoch", "dev_loss", "validation/evaluation_loss_vs_iterations",
)
VAL_PREFIXES = ("val_", "val/", "valid_", "valid/", "validation_", "validation/", "eval_", "eval/", "evaluation_",
                "dev_", "dev/")
TEST_PREFIXES = ("test_", "test/", "test-")
TRAIN_PREFIXES = ("train_", "train/", "training_", "training/", "trn_")
AGGREGATE_WORDS = ("total", "elbo", "objective", "overall", "mean", "sum", "combined", "full")
#: Single values written once at the end of training (HF ``train/train_loss``), never a curve.
SUMMARY_NAMES = ("train/train_loss", "train_loss_final")


def _low(n: str) -> str:
    return n.lower()


def is_val_name(name: str) -> bool:
    n = _low(name)
    return n.startswith(VAL_PREFIXES) or any(s in n for s in ("/val", "/valid", "/eval", "/validation"))


def is_test_name(name: str) -> bool:
    n = _low(name)
    return n.startswith(TEST_PREFIXES) or "/test" in n


def is_lr(name: str) -> bool:
    """Learning-rate names: ``lr``, ``learning_rate``, ``lr-Adam`` (Lightning LearningRateMonitor), ``epoch_lr``."""
    n = _low(name).split("/")[-1]
    return n in ("lr", "learning_rate", "epoch_lr", "epoch_learning_rate") or n.startswith(("lr-", "lr_"))


def is_accuracy(name: str) -> bool:
    """Accuracy names: ``acc``, ``accuracy`` with any prefix (``val_acc``, ``eval_accuracy``, ``train/acc``)."""
    n = _low(name).split("/")[-1]
    return bool(re.search(r"(^|_)(acc|accuracy)$", n))


def _suffix(name: str) -> str:
    n = _low(name)
    for p in VAL_PREFIXES + TRAIN_PREFIXES:
        if n.startswith(p):
            return n[len(p):]
    return n


@dataclass
class Roles:
    """The names chosen for each role (None when absent) and the alternatives not chosen."""

    train_loss: str | None
    val_loss: str | None
    lr: str | None = None
    accuracy: list[str] = field(default_factory=list)
    other_losses: list[str] = field(default_factory=list)
    other_val_losses: list[str] = field(default_factory=list)
    quantities_differ: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"train_loss": self.train_loss, "val_loss": self.val_loss, "learning_rate": self.lr,
                "accuracy": self.accuracy, "other_losses": self.other_losses,
                "other_val_losses": self.other_val_losses, "quantities_differ": self.quantities_differ}


#: Words that name what a loss measures; a training and a validation loss naming different ones are not one
#: quantity (e.g. ``train_nll_loss`` with ``val_rmse_loss``), so their difference is not a gap.
QUANTITY_WORDS = {
    "nll": "negative log-likelihood", "ce": "cross-entropy", "xent": "cross-entropy",
    "crossentropy": "cross-entropy", "bce": "binary cross-entropy", "mse": "squared error", "rmse": "root mean "
    "squared error", "mae": "absolute error", "l1": "absolute error", "l2": "squared error", "huber": "Huber",
    "dice": "Dice", "iou": "IoU", "kl": "KL divergence", "elbo": "ELBO", "ppl": "perplexity",
    "perplexity": "perplexity", "ctc": "CTC", "focal": "focal",
}


def loss_quantity(name: str) -> str | None:
    """What a loss name says it measures (:data:`QUANTITY_WORDS`), or None."""
    words = [w for w in re.split(r"[_/\-. ]", _low(name)) if w]
    found = {QUANTITY_WORDS[w] for w in words if w in QUANTITY_WORDS}
    return found.pop() if len(found) == 1 else None


#: Hugging Face ``Trainer`` with several evaluation datasets logs ``eval_<name>_loss`` for each.
_HF_EVAL_SET = re.compile(r"^eval_(.+)_loss$")


def _pick(cands: list[str], preferred: Iterable[str], partner: str | None, path: Any, role: str) -> str | None:
    low = {_low(c): c for c in cands}
    for p in preferred:
        if p in low:
            return low[p]
    if not cands:
        return None
    if len(cands) == 1:
        return cands[0]
    if partner is not None:
        paired = [c for c in cands if _suffix(c) == _suffix(partner)]
        if len(paired) == 1:
            return paired[0]
    agg = [c for c in cands if any(w in re.split(r"[_/\-. ]", _low(c)) for w in AGGREGATE_WORDS)]
    if len(agg) == 1:
        return agg[0]
    flag = "--train-loss" if role == "training" else "--val-loss"
    raise LogFormatError(path, f"several {role} loss columns and none is a standard name: "
                               f"{', '.join(sorted(cands))}; choose one with {flag} NAME")


def assign_roles(names: Iterable[str], path: Any, train_loss: str | None = None,
                 val_loss: str | None = None, preferred_val: str | None = None) -> Roles:
    """Choose the training-loss, validation-loss, learning-rate and accuracy names.

    Parameters
    ----------
    names : iterable of str
        The metric names in the log (columns, keys or tags).
    path : path-like
        The log, for error messages.
    train_loss, val_loss : str, optional
        The user's choice (must be one of ``names``).
    preferred_val : str, optional
        The validation loss the log itself says the user optimises (``metric_for_best_model`` of a
        ``trainer_state.json``), used among several evaluation sets.

    Returns
    -------
    Roles

    Raises
    ------
    LogFormatError
        If a requested name is absent, if the choice is ambiguous, or if the
        log has no loss at all.
    """
    names = [n for n in dict.fromkeys(names)]
    for want, flag in ((train_loss, "--train-loss"), (val_loss, "--val-loss")):
        if want is not None and want not in names:
            raise LogFormatError(path, f"{flag} {want!r} is not in the log; available: {', '.join(names)}")
    # the losslens callbacks' own columns are its measurements, never the training loop's losses
    own = LOSSLENS_LOG_NAMES
    losses = [n for n in names if "loss" in _low(n) and _low(n) not in SUMMARY_NAMES and not is_test_name(n)
              and n.split("/")[-1] not in own]
    val_c = [n for n in losses if is_val_name(n)]
    train_c = [n for n in losses if not is_val_name(n)]
    tr = train_loss
    va = val_loss
    other_val: list[str] = []
    sets = [n for n in val_c if _HF_EVAL_SET.match(n)]
    if va is None and len(sets) > 1 and len(sets) == len(val_c):
        # several evaluation datasets (eval_<name>_loss each): the user's metric_for_best_model, else the first
        pref = preferred_val if preferred_val in sets else (f"eval_{preferred_val}" if preferred_val and
                                                            f"eval_{preferred_val}" in sets else None)
        va = pref or sets[0]
        other_val = [n for n in sets if n != va]
    if tr is None and va is None:
        # decide the training loss first unless only the validation side is standard
        try:
            tr = _pick(train_c, TRAIN_LOSS_NAMES, None, path, "training")
        except LogFormatError:
            va = _pick(val_c, VAL_LOSS_NAMES, None, path, "validation")
            tr = _pick(train_c, TRAIN_LOSS_NAMES, va, path, "training")
        if va is None:
            va = _pick(val_c, VAL_LOSS_NAMES, tr, path, "validation")
    elif tr is None:
        tr = _pick([c for c in train_c if c != va], TRAIN_LOSS_NAMES, va, path, "training")
    elif va is None:
        va = _pick([c for c in val_c if c != tr], VAL_LOSS_NAMES, tr, path, "validation")
    if tr is None and va is None:
        raise LogFormatError(path, "no loss in the log (no name containing 'loss'); available: "
                                   f"{', '.join(names) or 'none'}; name one with --train-loss/--val-loss")
    lr = next((n for n in names if is_lr(n)), None)
    acc = [n for n in names if is_accuracy(n)]
    other = [n for n in losses if n not in (tr, va) and n not in other_val]
    differ = None
    if tr is not None and va is not None:
        qt, qv = loss_quantity(_suffix(tr)), loss_quantity(_suffix(va))
        if qt and qv and qt != qv:
            differ = f"{tr} ({qt}) vs {va} ({qv})"
    return Roles(tr, va, lr, acc, other, other_val, differ)
