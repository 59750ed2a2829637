"""PyTorch adapter: record a plain training loop with :class:`LossLens`.

A user adds at most four lines to an ordinary PyTorch loop::

    from losslens.torch import LossLens

    lens = LossLens(model, loss_fn, train_data=train_ds_clean, val_data=val_ds, train_augmented=train_ds_aug,
                    run="digits-mlp", store="losslens.db")
    for epoch in range(n_epochs):
        for x, y in loader:
            opt.zero_grad(); loss = loss_fn(model(x), y); loss.backward(); opt.step()
            lens.step(loss, batch_size=len(y))      # keeps loss.detach() on the device: no sync
        lens.end_epoch()                             # probe passes, validation, one store commit
    losslens.report(lens.run).print()                # the diagnosis

What is measured (DESIGN.md, "The measurement protocol"), all losses per sample, data part only:

``R``
    reported training loss: batch-size weighted mean over the epoch of (step loss − step penalty), read from
    the device once per epoch.
``Ω``
    batch-size weighted mean penalty included in the optimised loss.
``T`` (:data:`~losslens.record.TRAIN_MODE`)
    end-of-epoch weights, train mode (dropout on, batch norm on batch statistics), augmented probe inputs, in
    batches of the training batch size.
``A`` (:data:`~losslens.record.EVAL_AUGMENTED`)
    eval mode on the very same augmented batches as ``T`` (paired).
``C`` (:data:`~losslens.record.EVAL_CLEAN`)
    eval mode on the clean probe inputs: the eval-mode training loss.
``V`` (:data:`~losslens.record.VALIDATION`)
    eval mode on the validation set.

Recording never changes training: the passes run under ``torch.no_grad()`` inside ``torch.random.fork_rng``
(CPU and the CUDA devices the model uses), with numpy's and Python's global RNG states saved and restored,
every module's ``training`` flag restored, and every buffer (batch-norm running statistics,
``num_batches_tracked``) restored after the train-mode pass. The user's ``DataLoader`` is never iterated; the
adapter indexes its ``dataset``.

The package is the only part of losslens that imports torch (with the Lightning and Hugging Face callbacks
built on it): :mod:`._data` (batches, per-sample losses), :mod:`._guard` (the protected context),
:mod:`._dist` (torch.distributed), :mod:`._lens` (the recorder); the rest is :mod:`losslens.recording`.
"""

from ._data import Source, batch_len, default_forward, default_unpack, per_sample_loss_fn, weight_decay_of
from ._lens import Lens, LossLens

__all__ = ["LossLens", "Lens", "per_sample_loss_fn", "default_unpack", "default_forward", "weight_decay_of",
           "batch_len", "Source"]
