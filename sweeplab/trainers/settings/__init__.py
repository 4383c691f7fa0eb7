"""What each built-in task accepts, without its trainer: one module per task holding its
``DEFAULTS`` (every parameter and its default value, whose type is the type ``--set`` must give),
``LIMITS`` (what each parameter accepts, :class:`~sweeplab.core.Limit`) and ``USED_WHEN`` (the
parameters one model family or input only uses, with the values of the parameter that picks it:
``{"heads": {"model": ("scratch",)}}``; a trial of another family does not record them, see
:meth:`sweeplab.sweeps.space.Space.inactive`) and ``METRICS`` (the validation metrics each
evaluation reports, which ``--metric`` may name).

The trainers import these, so there is one copy of each. They live apart from the trainers
because a trainer imports torch and transformers (seconds), while ``sweep run`` checks a
mistyped ``--set`` against these (:func:`sweeplab.tasks.check_before_loading`) before it loads
anything. Nothing here may import more than :mod:`sweeplab.core`.
"""


#: What each evaluation of a classification task reports (:func:`sweeplab.trainers.metrics.classification_metrics`).
CLASSIFICATION_METRICS = ("val_accuracy", "val_f1_macro", "val_roc_auc", "val_loss")
