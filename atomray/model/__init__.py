"""Operators that map one molecular state to P future positions (paper §3.2) and baselines.

Read leaf to root: time_encoding → lifting → canonical → dropout_attention → attention → atom;
egnn → egno;
registry. Importing this package imports torch and e3nn but never Ray.
"""

from atomray.model.atom import ATOM
from atomray.model.egnn import EGNNRollout, EGNNSequential
from atomray.model.egno import EGNO
from atomray.model.registry import MODEL_INPUTS, MODELS, build_model, count_parameters, model_inputs

__all__ = ["ATOM", "EGNO", "EGNNRollout", "EGNNSequential", "MODEL_INPUTS", "MODELS", "build_model", "count_parameters",
           "model_inputs"]
